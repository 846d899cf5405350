#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Mixed wire versions on real processes: nodes of "this" release (wire version 1)
//! and of "the next" (versions 1 and 2) in one cluster, and a rolling upgrade from
//! one to the other.
//!
//! No earlier release exists to run against, so "the next release" is this binary
//! with the hidden `--test-wire-versions 1-2`: it encodes at version 2 (an extension
//! list after the body, which a version-1 node cannot decode), negotiates version 2
//! with its likes and version 1 with the others, and transcodes down for those.
//! "This release" is the same binary with its defaults, whose version-1 bytes are
//! pinned by `wire::tests::version_1_bytes_are_those_every_version_1_build_sends`;
//! set `VIGIL_PREVIOUS_BIN` to an earlier build (e.g. one from before wire version
//! negotiation) and the version-1 nodes run that instead: `tests/upgrade-from.sh REV`
//! builds REV and does so.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use vigil::client;
use vigil::events::EventRecord;
use vigil_tests::{CONVERGE, DETECT, LocalCluster, cluster};

/// What makes a node speak the next wire version too.
fn next() -> Vec<String> {
    vec!["--test-wire-versions".into(), "1-2".into()]
}

/// A build from before wire version negotiation, if the caller named one.
fn previous_build() -> Option<PathBuf> {
    std::env::var_os("VIGIL_PREVIOUS_BIN").map(PathBuf::from)
}

/// Starts `name` as a node of this release (the previous build when given).
async fn start_this(c: &mut LocalCluster, name: &str, zone: &str, seeds: &[std::net::SocketAddr]) {
    let swapped = previous_build().map(|old| c.set_binary(old));
    let started = c.start(name, zone, seeds).await.map(|_| ());
    if let Some(ours) = swapped {
        c.set_binary(ours);
    }
    started.expect("start a node of this release");
}

async fn start_next(c: &mut LocalCluster, name: &str, zone: &str, seeds: &[std::net::SocketAddr]) {
    c.start_with(name, zone, seeds, &next())
        .await
        .expect("start a node of the next release");
}

fn socket(c: &LocalCluster, name: &str) -> PathBuf {
    c.node(name).unwrap().socket.clone()
}

/// One series of a node's /metrics: `name{labels}` (`labels` as written, e.g.
/// `wire_version="2"`); 0 when absent.
async fn metric(socket: &Path, name: &str, labels: &str) -> f64 {
    let reply = client::get(socket, "/metrics").await.expect("GET /metrics");
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let series = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Every input error a node counted, by kind, for the failure message.
async fn input_errors(socket: &Path) -> Vec<String> {
    let reply = client::get(socket, "/metrics").await.expect("GET /metrics");
    String::from_utf8_lossy(&reply.body)
        .lines()
        .filter(|l| l.starts_with("vigil_input_errors_total{") && !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect()
}

/// Snapshot `seq` of `agent`.
fn body(agent: &str, seq: u64) -> Bytes {
    Bytes::from(format!("{agent} state after step {seq} ").repeat(10))
}

/// Registers `agent` on `owner`, puts snapshots 1..=3 and returns the holders the
/// last put was acknowledged by.
async fn agent_with_snapshots(owner: &Path, agent: &str) -> Vec<String> {
    client::register(owner, agent, "{}").await.unwrap();
    let mut stored_on = Vec::new();
    for seq in 1..=3 {
        let out = client::put_snapshot(owner, agent, body(agent, seq), None)
            .await
            .unwrap();
        assert_eq!(out.seq, seq);
        stored_on = out.stored_on.into_iter().map(|h| h.name).collect();
    }
    stored_on
}

/// A member declared down or suspected, about one of `healthy`.
fn false_positive<'a>(
    events: &'a [(String, EventRecord)],
    healthy: &[&str],
) -> Vec<&'a (String, EventRecord)> {
    events
        .iter()
        .filter(|(_, e)| matches!(e.kind.as_str(), "member_down" | "member_suspected"))
        .filter(|(_, e)| e.member.as_deref().is_some_and(|m| healthy.contains(&m)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_this_and_the_next_wire_version_run_one_cluster() {
    const ALL: [&str; 4] = ["old1", "new1", "old2", "new2"];
    let mut c = cluster!(&ALL);
    start_this(&mut c, "old1", "az1", &[]).await;
    let seed = c.node("old1").unwrap().addr;
    start_next(&mut c, "new1", "az2", &[seed]).await;
    start_this(&mut c, "old2", "az3", &[seed]).await;
    start_next(&mut c, "new2", "az1", &[seed]).await;
    c.wait_converged(CONVERGE)
        .await
        .expect("a mixed cluster converges");
    let mut watch = c.watch(&ALL).await.unwrap();

    // Replication both ways: the three other nodes hold each agent's copies, so any
    // acknowledging majority of them mixes versions.
    let from_old = agent_with_snapshots(&socket(&c, "old1"), "from-old").await;
    assert!(
        from_old.iter().any(|h| h.starts_with("new")),
        "{from_old:?}"
    );
    let from_new = agent_with_snapshots(&socket(&c, "new1"), "from-new").await;
    assert!(
        from_new.iter().any(|h| h.starts_with("old")),
        "{from_new:?}"
    );
    for (reader, agent) in [("new2", "from-old"), ("old2", "from-new")] {
        let snap = client::get_snapshot(&socket(&c, reader), agent, None)
            .await
            .unwrap();
        assert_eq!(
            (snap.seq, snap.body),
            (3, body(agent, 3)),
            "{reader} reads {agent}"
        );
    }

    // What the connections speak: version 2 between next-release nodes (new1 dialed
    // new2 to replicate), version 1 wherever an old node is at one end, and never
    // a version-2 envelope on a version-1 connection.
    let new1 = socket(&c, "new1");
    assert!(
        metric(
            &new1,
            "vigil_connections_by_wire_version",
            "wire_version=\"2\""
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &new1,
            "vigil_connections_by_wire_version",
            "wire_version=\"1\""
        )
        .await
            >= 1.0
    );
    for old in ["old1", "old2"] {
        let s = socket(&c, old);
        assert!(
            metric(
                &s,
                "vigil_connections_by_wire_version",
                "wire_version=\"2\""
            )
            .await
                == 0.0
        );
    }
    for name in ALL {
        let s = socket(&c, name);
        assert_eq!(input_errors(&s).await, Vec::<String>::new(), "{name}");
        assert_eq!(
            metric(
                &s,
                "vigil_messages_dropped_total",
                "reason=\"not_in_peer_wire_version\""
            )
            .await,
            0.0,
            "{name}"
        );
    }

    // A next-release host dies: the agent it owned is elected and adopted among
    // holders of both versions, from its latest snapshot.
    c.kill("new1").await.unwrap();
    let adopter = loop {
        let (name, event) = watch.next().await.expect("events");
        if event.kind == "agent_adopted" && event.agent.as_deref() == Some("from-new") {
            break name;
        }
    };
    let adopted = client::agent(&socket(&c, &adopter), "from-new")
        .await
        .unwrap();
    assert!(adopted.owned_here && adopted.epoch == 2, "{adopted:?}");
    let snap = client::get_snapshot(&socket(&c, &adopter), "from-new", None)
        .await
        .unwrap();
    assert_eq!(
        (snap.seq, snap.body),
        (3, body("from-new", 3)),
        "adopted by {adopter}"
    );
    for survivor in ["old1", "old2", "new2"] {
        c.wait_members(survivor, "new1 down", DETECT, |ms| {
            ms.iter().any(|m| m.name == "new1" && m.state == "down")
        })
        .await
        .unwrap();
    }
    let events = watch.catch_up(&c, CONVERGE).await.unwrap();
    let wrong = false_positive(&events, &["old1", "old2", "new2"]);
    assert!(
        wrong.is_empty(),
        "healthy nodes reported failing: {wrong:#?}"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_to_the_next_wire_version_keeps_the_other_nodes_up() {
    const ALL: [(&str, &str); 3] = [("n1", "az1"), ("n2", "az2"), ("n3", "az3")];
    let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
    let mut c = cluster!(&names);
    start_this(&mut c, "n1", "az1", &[]).await;
    let seed = c.node("n1").unwrap().addr;
    start_this(&mut c, "n2", "az2", &[seed]).await;
    start_this(&mut c, "n3", "az3", &[seed]).await;
    c.wait_converged(CONVERGE).await.unwrap();
    let stored_on = agent_with_snapshots(&socket(&c, "n1"), "planner").await;
    assert!(!stored_on.is_empty());

    for (name, zone) in ALL {
        let others: Vec<&str> = names.iter().copied().filter(|n| *n != name).collect();
        let mut watch = c.watch(&others).await.unwrap();
        assert_eq!(c.stop(name).await.unwrap(), Some(0), "{name} stops cleanly");
        // On its own data directory, through a node that has not restarted yet (or
        // has already), as an operator would.
        let seed = c.node(others[0]).unwrap().addr;
        c.start_with(name, zone, &[seed], &next()).await.unwrap();
        c.wait_converged(CONVERGE).await.unwrap();
        let events = watch.catch_up(&c, CONVERGE).await.unwrap();
        let wrong = false_positive(&events, &others);
        assert!(wrong.is_empty(), "while {name} restarted: {wrong:#?}");
    }

    // Every node now speaks version 2 with every other, and the agent's data came
    // through three restarts of mixed versions.
    for name in &names {
        let s = socket(&c, name);
        assert_eq!(client::health(&s).await.unwrap().wire_version, 2);
        assert!(
            metric(
                &s,
                "vigil_connections_by_wire_version",
                "wire_version=\"2\""
            )
            .await
                >= 1.0
        );
        assert_eq!(
            metric(
                &s,
                "vigil_connections_by_wire_version",
                "wire_version=\"1\""
            )
            .await,
            0.0,
            "{name}"
        );
        assert_eq!(input_errors(&s).await, Vec::<String>::new(), "{name}");
    }
    let n1 = socket(&c, "n1");
    let planner = c
        .wait_view(
            "n1",
            "planner owned, unfenced",
            CONVERGE,
            async |s: &Path| client::agent(s, "planner").await,
            |a| matches!(a.state.as_str(), "running" | "starting" | "remote"),
        )
        .await;
    if planner.is_err() {
        for name in &names {
            eprintln!(
                "{name}: {:?}",
                client::agent(&socket(&c, name), "planner").await
            );
        }
    }
    let planner = planner.unwrap();
    let snap = client::get_snapshot(&n1, "planner", None).await.unwrap();
    assert_eq!(
        (snap.seq, snap.body),
        (3, body("planner", 3)),
        "{planner:?}"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_no_wire_version_in_common_are_refused_with_a_reason() {
    let mut c = cluster!(&["old", "future"]);
    let old = c.start("old", "az1", &[]).await.unwrap().addr;
    // A release that dropped version 1, joining a node that speaks only version 1.
    let only_2 = ["--test-wire-versions".to_string(), "2-2".to_string()];
    c.start_with("future", "az2", &[old], &only_2)
        .await
        .unwrap();

    // The second failed attempt: the first refusal happened a join back-off (at
    // least 200 ms) earlier, so the listener has counted and logged it too.
    let attempts = std::cell::Cell::new(0);
    let refused = c
        .wait_event("future", CONVERGE, |e| {
            if e.kind == "join_failed" {
                attempts.set(attempts.get() + 1);
            }
            attempts.get() == 2
        })
        .await
        .unwrap();
    let detail = refused.detail.unwrap_or_default();
    assert!(
        detail.contains("no wire version in common")
            && detail.contains("vigil/2")
            && detail.contains("Upgrades"),
        "{detail}"
    );
    let future = socket(&c, "future");
    assert_eq!(client::health(&future).await.unwrap().status, "joining");
    for name in ["future", "old"] {
        let refusals = metric(
            &socket(&c, name),
            "vigil_tls_rejected_total",
            "reason=\"no_common_wire_version\"",
        )
        .await;
        assert!(refusals >= 1.0, "{name}: {refusals}");
    }
    let log = std::fs::read_to_string(&c.node("old").unwrap().log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("refused connection") && l.contains("no wire version in common")),
        "{log}"
    );
    c.stop_all().await;
}
