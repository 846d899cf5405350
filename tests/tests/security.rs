#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Only nodes with a certificate from the cluster CA, naming the node, get in; a
//! stranger whose handshakes keep failing is throttled without disturbing members.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use vigil::client;
use vigil::harness::HarnessError;
use vigil::harness::intruder::{Attempt, Intruder};
use vigil_protocol::NodeName;
use vigil_tests::{CONVERGE, cluster, metric_sum, start_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_never_joins() {
    let mut c = cluster!(&["n1", "n2"]);
    start_all(&mut c, &["n1", "n2"]).await;
    c.wait_converged(CONVERGE).await.expect("converge");

    // A well-formed node with its own CA: everything right but the signature.
    let rogue_pki = c.root().join("rogue-pki");
    vigil::tls::init_ca(&rogue_pki, false).unwrap();
    vigil::tls::issue_node_cert(
        &rogue_pki,
        &NodeName::new("n3").unwrap(),
        &rogue_pki,
        1,
        false,
    )
    .unwrap();
    let seed = c.node("n1").unwrap().addr;
    c.start_with_pki("n3", "az3", &[seed], &rogue_pki)
        .await
        .expect("the rogue node starts");

    // Let it try several times (it retries with backoff), seen from its own side.
    let mut last = 0;
    for attempt in 1..=3 {
        let failed = c
            .wait_event("n3", CONVERGE, |e| {
                e.kind == "join_failed" && e.index > last
            })
            .await
            .unwrap_or_else(|e| panic!("join attempt {attempt} of the rogue: {e}"));
        assert!(
            failed
                .detail
                .as_deref()
                .unwrap_or("")
                .contains(&seed.to_string()),
            "{failed:?}"
        );
        last = failed.index;
    }
    let rogue = client::health(&c.node("n3").unwrap().socket).await.unwrap();
    assert_eq!(rogue.status, "joining");
    assert_eq!(rogue.live_members, 1);

    for member in ["n1", "n2"] {
        let socket = &c.node(member).unwrap().socket;
        let members = client::members(socket).await.unwrap();
        assert!(
            members.iter().all(|m| m.name != "n3"),
            "{member} let the rogue in: {members:?}"
        );
    }
    // The seed refused it during the handshake and counted it.
    let refused = metric_sum(&c.node("n1").unwrap().socket, "vigil_tls_rejected_total").await;
    assert!(refused >= 1.0, "refusals counted on n1: {refused}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_names_another_node_does_not_start() {
    let mut c = cluster!(&["n1", "n2"]);
    let pki = c.pki().to_path_buf();
    // n9 presents n2's certificate and key.
    std::fs::copy(pki.join("n2.crt"), pki.join("n9.crt")).unwrap();
    std::fs::copy(pki.join("n2.key"), pki.join("n9.key")).unwrap();
    let err = match c.start("n9", "az1", &[]).await {
        Err(e) => e,
        Ok(_) => panic!("n9 started with n2's certificate"),
    };
    let HarnessError::Node { log, .. } = &err else {
        panic!("unexpected error {err}");
    };
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("n2") && log.contains("n9"), "log: {log}");
}

/// The intruder's address: loopback, but not the cluster's 127.0.0.1.
const INTRUDER_ADDR: [u8; 4] = [127, 0, 0, 2];
/// Failing handshakes the intruder makes (more than the gate's burst of 32).
const ATTEMPTS: usize = 50;
/// How long the intruder waits for an answer before it counts an attempt as
/// ignored. Not a timing assertion: an attempt given up early is simply made again.
const GIVE_UP: Duration = Duration::from_secs(1);

/// `vigil_tls_rejected_total{reason=REASON}` on a node.
async fn refusals(socket: &Path, reason: &str) -> f64 {
    let reply = client::get(socket, "/metrics").await.expect("GET /metrics");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let series = format!("vigil_tls_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_whose_handshakes_keep_failing_is_throttled_and_members_carry_on() {
    let source = IpAddr::from(INTRUDER_ADDR);
    if let Err(e) = std::net::UdpSocket::bind((source, 0)) {
        eprintln!("SKIPPED: cannot bind {source} for the intruder ({e})");
        return;
    }
    let mut c = cluster!(&["n1", "n2", "n3"]);
    start_all(&mut c, &["n1", "n2"]).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let (target, socket) = {
        let n1 = c.node("n1").unwrap();
        (n1.bound, n1.socket.clone())
    };

    // A client with a foreign CA's certificate, from its own address, making one
    // handshake after the other.
    let intruder = Intruder::new(c.root(), c.pki(), source).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut tally = |a: Attempt| {
        assert_ne!(a, Attempt::Accepted, "n1 let a foreign certificate in");
        *seen.entry(format!("{a:?}")).or_default() += 1;
    };
    for _ in 0..ATTEMPTS {
        tally(intruder.attempt(target, "n1", GIVE_UP).await);
    }
    // The refusals are counted as the attempts arrive; should the machine be slow
    // enough for the last ignored attempt to be given up before n1 counted it,
    // more attempts make sure (each counted by the time the next has failed).
    let mut throttled = refusals(&socket, "address_throttled").await;
    for _ in 0..ATTEMPTS {
        if throttled > 0.0 {
            break;
        }
        tally(intruder.attempt(target, "n1", GIVE_UP).await);
        throttled = refusals(&socket, "address_throttled").await;
    }
    intruder.close();
    assert!(
        throttled > 0.0,
        "n1 never throttled the intruder; attempts ended as {seen:?}"
    );
    // The handshake ran and the certificate was refused until the address ran out
    // of failures; after that n1 ignores its Initials until the address earns a
    // failure back (two a second), so the intruder is slowed, not cut off.
    assert!(seen.contains_key("Rejected"), "{seen:?}");
    // A certificate from a CA n1 does not trust.
    assert!(refusals(&socket, "unknown_ca").await >= 1.0);

    // The members never noticed.
    for (observer, member) in [("n1", "n2"), ("n2", "n1")] {
        let members = client::members(&c.node(observer).unwrap().socket)
            .await
            .unwrap();
        assert!(
            members
                .iter()
                .any(|m| m.name == member && m.state == "alive"),
            "{observer} sees {member} as: {members:?}"
        );
    }
    // A legitimate newcomer (from 127.0.0.1) still joins through n1.
    let seed = c.node("n1").unwrap().addr;
    c.start("n3", "az3", &[seed]).await.expect("start n3");
    c.wait_converged(CONVERGE).await.expect("n3 joins");
    c.stop_all().await;
}
