#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Certificate rotation and revocation on a running cluster of real processes, each
//! node with its own PKI directory, as on real hosts.
//!
//! The rotation: every node trusts the old and the new CA (reload), every node is
//! re-issued from the new CA (reload), the old CA is removed (reload). Across it no
//! node suspects or declares down a healthy member and no probe fails. Then a node
//! whose certificate comes from the old CA is refused, and a revoked node is taken out
//! of the cluster.
//!
//! The steps are paced by a node of a foreign CA that tries to join all along: each
//! step waits for its next refused attempt (its join backoff doubles from 200 ms), so
//! the cluster probes for a while between steps, and the test never sleeps.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use vigil::api::TlsReloadJson;
use vigil::client::{self, ClientError};
use vigil::harness::EventWatch;
use vigil::pki::{self, CaSelector};
use vigil::tls;
use vigil_protocol::NodeName;
use vigil_tests::{CONVERGE, DETECT, LocalCluster, cluster, vigil_bin};

const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];
const ZONES: [&str; 4] = ["az1", "az2", "az3", "az1"];

fn name(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

/// The PKI directory of node `n` (what /etc/vigil/pki is on its host).
fn pki_dir(c: &LocalCluster, n: &str) -> PathBuf {
    c.root().join(format!("pki-{n}"))
}

/// Runs the vigil CLI, which must succeed; returns its stdout.
fn vigil(args: &[&str]) -> String {
    let out = Command::new(vigil_bin!()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "vigil {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One series of a node's /metrics: the sum of the samples of `name` whose labels
/// include `label` (`outcome="failed"`), or all of them when `label` is empty.
async fn metric(c: &LocalCluster, node: &str, name: &str, label: &str) -> f64 {
    let socket = &c.node(node).unwrap().socket;
    let reply = client::get(socket, "/metrics").await.unwrap();
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| label.is_empty() || l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn reload(c: &LocalCluster, node: &str) -> TlsReloadJson {
    client::tls_reload(&c.node(node).unwrap().socket)
        .await
        .unwrap_or_else(|e| panic!("reload {node}: {e}"))
}

/// What the nodes in `healthy` reported about each other since the last call: any
/// suspicion, refutation, down or leave.
async fn alarms(
    c: &LocalCluster,
    watch: &mut EventWatch,
    healthy: &[&str],
) -> Vec<(String, String, String)> {
    watch
        .catch_up(c, CONVERGE)
        .await
        .unwrap()
        .into_iter()
        .filter(|(node, e)| {
            healthy.contains(&node.as_str())
                && matches!(
                    e.kind.as_str(),
                    "member_suspected" | "member_refuted" | "member_down" | "member_left"
                )
                && e.member.as_deref().is_some_and(|m| healthy.contains(&m))
        })
        .map(|(node, e)| (node, e.kind, e.member.unwrap_or_default()))
        .collect()
}

/// Waits for `node`'s next `join_failed` event after index `after`; returns its index.
async fn next_join_failure(c: &LocalCluster, node: &str, after: u64) -> u64 {
    c.wait_event(node, DETECT, |e| e.kind == "join_failed" && e.index > after)
        .await
        .unwrap_or_else(|e| panic!("{node} retries its join: {e}"))
        .index
}

/// Waits until the seed `seed` has counted a handshake refusal of `node` with
/// `reason`: re-reads the counter after each failed join attempt of `node` (the seed
/// counts when its side of the handshake ends, which may be just after `node` sees
/// the refusal, so the next attempt is the one to look after).
async fn refusal_counted(c: &LocalCluster, seed: &str, node: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    let mut last = 0;
    for _ in 0..5 {
        last = next_join_failure(c, node, last).await;
        let refused = metric(c, seed, "vigil_tls_rejected_total", &label).await;
        if refused >= 1.0 {
            return refused;
        }
    }
    panic!("{seed} never counted a {reason} refusal of {node}'s join attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_rotates_its_ca_then_a_revoked_node_is_taken_out() {
    // The harness's CA (c.pki()) is the old one; each node gets its own directory.
    let mut c = cluster!(&[]);
    let old_ca = c.pki().to_path_buf();
    let new_ca = c.root().join("ca-2026");
    for n in NODES {
        let dir = pki_dir(&c, n);
        pki::trust_add(&dir, &old_ca.join(tls::CA_CERT_FILE)).unwrap();
        tls::issue_node_cert(&old_ca, &name(n), &dir, 30, false).unwrap();
    }
    let mut seed = Vec::new();
    for (n, zone) in NODES.iter().zip(ZONES) {
        let dir = pki_dir(&c, n);
        let addr = c.start_with_pki(n, zone, &seed, &dir).await.unwrap().addr;
        if seed.is_empty() {
            seed.push(addr);
        }
    }
    c.wait_converged(CONVERGE).await.expect("converge");
    let mut watch = c.watch(&NODES).await.unwrap();

    // The pace: a well-formed node of another cluster, refused at every step.
    let foreign = c.root().join("foreign-ca");
    tls::init_ca(&foreign, false).unwrap();
    tls::issue_node_cert(&foreign, &name("x1"), &foreign, 30, false).unwrap();
    c.start_with_pki("x1", "az3", &seed, &foreign)
        .await
        .unwrap();
    let mut paced = next_join_failure(&c, "x1", 0).await;
    let mut failed_before = Vec::new();
    let mut acks_before = Vec::new();
    for n in NODES {
        failed_before.push(metric(&c, n, "vigil_probes_total", "outcome=\"failed\"").await);
        acks_before.push(metric(&c, n, "vigil_probes_total", "outcome=\"ack_").await);
    }

    // A bad file set is refused and changes nothing: n1's bundle replaced by a CA
    // that did not sign its certificate.
    let n1_dir = pki_dir(&c, "n1");
    let bundle = std::fs::read(n1_dir.join(tls::CA_CERT_FILE)).unwrap();
    vigil(&["cert", "init", "--out", path(&new_ca)]);
    std::fs::copy(
        new_ca.join(tls::CA_CERT_FILE),
        n1_dir.join(tls::CA_CERT_FILE),
    )
    .unwrap();
    let refused = client::tls_reload(&c.node("n1").unwrap().socket).await;
    match refused {
        Err(ClientError::Api {
            status,
            code,
            error,
        }) => {
            assert_eq!((status, code.as_str()), (422, "tls_reload_failed"));
            assert!(error.contains("not signed by any CA"), "{error}");
            assert!(error.contains("keeps its current certificates"), "{error}");
        }
        other => panic!("a reload with a foreign CA only: {other:?}"),
    }
    std::fs::write(n1_dir.join(tls::CA_CERT_FILE), bundle).unwrap();

    // 1. Every node trusts the old and the new CA. n1 through the CLI, as an operator.
    paced = next_join_failure(&c, "x1", paced).await;
    vigil(&[
        "cert",
        "trust",
        "add",
        "--pki",
        path(&n1_dir),
        path(&new_ca.join(tls::CA_CERT_FILE)),
    ]);
    let out = vigil(&[
        "cert",
        "reload",
        "--socket",
        path(&c.node("n1").unwrap().socket),
    ]);
    assert!(out.contains("trusting 2 CA(s)"), "{out}");
    for n in &NODES[1..] {
        pki::trust_add(&pki_dir(&c, n), &new_ca.join(tls::CA_CERT_FILE)).unwrap();
        let r = reload(&c, n).await;
        assert_eq!(r.loaded.trusted.len(), 2, "{n}: {r:?}");
        assert!(r.connections.closed.is_empty(), "{n}: {r:?}");
        assert_eq!(r.connections.renewed, 0, "{n}: same certificate, {r:?}");
    }

    // 2. Every node is re-issued from the new CA. n3 reloads on SIGHUP.
    paced = next_join_failure(&c, "x1", paced).await;
    let new_subject = {
        let listing = pki::trust_list(&new_ca).unwrap();
        listing.cas[0].summary.subject.clone()
    };
    for n in NODES {
        tls::issue_node_cert(&new_ca, &name(n), &pki_dir(&c, n), 30, true).unwrap();
        if n == "n3" {
            let since = client::health(&c.node(n).unwrap().socket)
                .await
                .unwrap()
                .last_event_index;
            c.signal(n, Signal::SIGHUP).unwrap();
            let reloaded = c
                .wait_event(n, CONVERGE, |e| {
                    e.index > since && e.kind.starts_with("tls_reload")
                })
                .await
                .unwrap();
            assert_eq!(reloaded.kind, "tls_reloaded", "{reloaded:?}");
            assert!(
                reloaded.detail.as_deref().unwrap().contains(&new_subject),
                "{reloaded:?}"
            );
            continue;
        }
        let r = reload(&c, n).await;
        assert_eq!(r.loaded.certificate.issuer, new_subject, "{n}");
        assert!(r.connections.closed.is_empty(), "{n}: {r:?}");
        assert!(
            r.connections.renewed >= 1,
            "{n} presents its new certificate: {r:?}"
        );
    }

    // 3. The old CA is removed everywhere. What a reload closes now are connections
    // made with an old certificate; each peer has a newer one.
    paced = next_join_failure(&c, "x1", paced).await;
    vigil(&[
        "cert",
        "trust",
        "remove",
        "--pki",
        path(&n1_dir),
        "--ca",
        path(&old_ca.join(tls::CA_CERT_FILE)),
    ]);
    for n in NODES {
        if n != "n1" {
            pki::trust_remove(
                &pki_dir(&c, n),
                &CaSelector::File(old_ca.join(tls::CA_CERT_FILE)),
                false,
            )
            .unwrap();
        }
        let r = reload(&c, n).await;
        assert_eq!(r.loaded.trusted.len(), 1, "{n}: {r:?}");
        assert_eq!(r.loaded.trusted[0].subject, new_subject, "{n}");
        for closed in &r.connections.closed {
            assert_eq!(closed.reason, "unknown_ca", "{n}: {closed:?}");
        }
    }

    // A node whose certificate comes from the old CA is refused, though it trusts the
    // new CA too (so it is the cluster's check of its certificate that refuses it).
    let n5_dir = c.root().join("pki-n5");
    pki::trust_add(&n5_dir, &old_ca.join(tls::CA_CERT_FILE)).unwrap();
    pki::trust_add(&n5_dir, &new_ca.join(tls::CA_CERT_FILE)).unwrap();
    tls::issue_node_cert(&old_ca, &name("n5"), &n5_dir, 30, false).unwrap();
    c.start_with_pki("n5", "az2", &seed, &n5_dir).await.unwrap();
    refusal_counted(&c, "n1", "n5", "unknown_ca").await;
    next_join_failure(&c, "x1", paced).await;
    for n in NODES {
        let members = client::members(&c.node(n).unwrap().socket).await.unwrap();
        assert!(
            members.iter().all(|m| m.name != "n5" && m.name != "x1"),
            "{n} let a node of another CA in: {members:?}"
        );
    }
    let n5 = client::health(&c.node("n5").unwrap().socket).await.unwrap();
    assert_eq!((n5.status.as_str(), n5.live_members), ("joining", 1));

    // Across the rotation (and the time n5 spent trying): no alarm about a healthy
    // member, no failed probe, and probes did run.
    assert_eq!(alarms(&c, &mut watch, &NODES).await, vec![]);
    for (i, n) in NODES.iter().enumerate() {
        let failed = metric(&c, n, "vigil_probes_total", "outcome=\"failed\"").await;
        assert_eq!(
            failed, failed_before[i],
            "{n}: probes failed during the rotation"
        );
        let acks = metric(&c, n, "vigil_probes_total", "outcome=\"ack_").await;
        assert!(
            acks > acks_before[i],
            "{n} probed nobody during the rotation"
        );
        assert_eq!(
            metric(&c, n, "vigil_tls_reloads_total", "outcome=\"ok\"").await,
            3.0,
            "{n}"
        );
    }
    assert_eq!(
        metric(&c, "n1", "vigil_tls_reloads_total", "outcome=\"failed\"").await,
        1.0
    );
    c.stop("n5").await.unwrap();
    c.stop("x1").await.unwrap();

    // Revocation: n4's certificate is revoked, the list installed and reloaded on the
    // others. They close their connections with n4, refuse its handshakes and declare
    // it down.
    let revoked = vigil(&["cert", "revoke", "--ca", path(&new_ca), "--name", "n4"]);
    assert!(revoked.contains("revoked serial"), "{revoked}");
    let mut closed_with_n4 = 0;
    for n in &NODES[..3] {
        pki::trust_add(&pki_dir(&c, n), &new_ca.join(tls::CRL_FILE)).unwrap();
        let r = reload(&c, n).await;
        assert_eq!(r.loaded.crls.len(), 1, "{n}: {r:?}");
        for closed in &r.connections.closed {
            assert_eq!(
                (closed.peer.as_str(), closed.reason.as_str()),
                ("n4", "revoked"),
                "{n}"
            );
            closed_with_n4 += 1;
        }
    }
    assert!(
        closed_with_n4 >= 1,
        "nobody had a connection with n4 to close"
    );
    for n in &NODES[..3] {
        c.wait_event(n, DETECT, |e| {
            e.kind == "member_down" && e.member.as_deref() == Some("n4")
        })
        .await
        .unwrap_or_else(|e| panic!("{n} declares the revoked n4 down: {e}"));
    }
    // n4 lost everyone; its attempts to join again are refused as revoked.
    refusal_counted(&c, "n1", "n4", "revoked").await;
    for n in &NODES[..3] {
        let members = client::members(&c.node(n).unwrap().socket).await.unwrap();
        let n4 = members.iter().find(|m| m.name == "n4").unwrap();
        assert_eq!(n4.state, "down", "{n}: {members:?}");
    }
    // n4 itself cannot load its revoked certificate: its reload is refused and it
    // keeps running with what it had.
    pki::trust_add(&pki_dir(&c, "n4"), &new_ca.join(tls::CRL_FILE)).unwrap();
    match client::tls_reload(&c.node("n4").unwrap().socket).await {
        Err(ClientError::Api { code, error, .. }) => {
            assert_eq!(code, "tls_reload_failed");
            assert!(error.contains("revoked"), "{error}");
        }
        other => panic!("n4 reloaded its revoked certificate: {other:?}"),
    }
    // The healthy three never suspected each other.
    assert_eq!(alarms(&c, &mut watch, &NODES[..3]).await, vec![]);
    c.stop_all().await;
}
