#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Real `vigil agent` processes on loopback: join, crash, leave, restart.

use vigil::client;
use vigil_tests::{CONVERGE, DETECT, cluster, start_all};

const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_through_one_seed() {
    let mut c = cluster!(&FIVE);
    start_all(&mut c, &FIVE).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    for node in c.nodes() {
        let members = client::members(&node.socket).await.expect("members");
        assert_eq!(members.len(), 5, "{}: {members:?}", node.name);
        let me = members.iter().find(|m| m.local).expect("local row");
        assert_eq!(me.name, node.name);
        assert_eq!(me.zone, node.zone);
        assert_eq!(me.addr, node.addr.to_string());
        let health = client::health(&node.socket).await.expect("health");
        assert_eq!(health.status, "ok");
        assert_eq!(health.live_members, 5);
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_down_by_every_survivor() {
    let mut c = cluster!(&FIVE);
    start_all(&mut c, &FIVE).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    c.kill("n3").await.expect("kill n3");
    for survivor in ["n1", "n2", "n4", "n5"] {
        let members = c
            .wait_members(survivor, "n3 down", DETECT, |ms| {
                ms.iter().any(|m| m.name == "n3" && m.state == "down")
            })
            .await
            .expect("n3 declared down");
        let n3 = members.iter().find(|m| m.name == "n3").expect("n3 row");
        assert!(!n3.left, "{survivor} thinks a crash was a graceful leave");
        let down = c
            .wait_event(survivor, DETECT, |e| {
                e.kind == "member_down" && e.member.as_deref() == Some("n3")
            })
            .await
            .expect("member_down event");
        assert_eq!(down.member_zone.as_deref(), Some("az3"));
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_seen_leaving_not_failing() {
    let mut c = cluster!(&FIVE);
    start_all(&mut c, &FIVE).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let code = c.stop("n2").await.expect("stop n2");
    assert_eq!(code, Some(0), "SIGTERM must end the node cleanly");
    for survivor in ["n1", "n3", "n4", "n5"] {
        // A leave is announced, not inferred: the event is member_left, never a
        // member_suspected or member_down that a timeout would have produced.
        let left = c
            .wait_event(survivor, DETECT, |e| {
                e.member.as_deref() == Some("n2")
                    && matches!(
                        e.kind.as_str(),
                        "member_left" | "member_down" | "member_suspected"
                    )
            })
            .await
            .expect("n2 reported gone");
        assert_eq!(left.kind, "member_left", "{survivor}: {left:?}");
        let members = client::members(&c.node(survivor).unwrap().socket)
            .await
            .expect("members");
        let n2 = members.iter().find(|m| m.name == "n2").expect("n2 row");
        assert_eq!((n2.state.as_str(), n2.left), ("down", true));
    }
    assert!(
        !c.node("n2").unwrap().socket.exists(),
        "a stopped node removes its socket"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_under_a_new_generation() {
    let mut c = cluster!(&FIVE);
    start_all(&mut c, &FIVE).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let old_generation = c.node("n4").unwrap().generation;
    let seed = c.node("n1").unwrap().addr;
    c.kill("n4").await.expect("kill n4");
    // Same name, same data directory, a new process.
    let restarted = c.start("n4", "az1", &[seed]).await.expect("restart n4");
    let new_generation = restarted.generation;
    assert!(new_generation > old_generation);
    for observer in ["n1", "n2", "n3", "n5"] {
        c.wait_members(observer, "n4 alive in its new generation", CONVERGE, |ms| {
            ms.iter()
                .any(|m| m.name == "n4" && m.state == "alive" && m.generation == new_generation)
        })
        .await
        .expect("n4 back");
    }
    c.wait_converged(CONVERGE).await.expect("converge again");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_until_declared_down_rejoins_by_itself() {
    // SIGSTOP cuts the node off as a partition would; after SIGCONT it must learn it
    // was declared down, come back as a new generation, and the views must agree
    // again with no operator action.
    let mut c = cluster!(&FIVE);
    start_all(&mut c, &FIVE).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let old_generation = c.node("n5").unwrap().generation;
    c.signal("n5", nix::sys::signal::Signal::SIGSTOP).unwrap();
    for observer in ["n1", "n2", "n3", "n4"] {
        c.wait_members(observer, "n5 down", DETECT, |ms| {
            ms.iter().any(|m| m.name == "n5" && m.state == "down")
        })
        .await
        .expect("n5 declared down while paused");
    }
    c.signal("n5", nix::sys::signal::Signal::SIGCONT).unwrap();
    let rejoined = c
        .wait_event("n5", CONVERGE, |e| e.kind == "local_rejoined")
        .await
        .expect("n5 renews its identity");
    let new_generation = rejoined.member_generation.expect("its new generation");
    assert!(new_generation > old_generation);
    for observer in ["n1", "n2", "n3", "n4"] {
        c.wait_members(observer, "n5 alive again", CONVERGE, |ms| {
            ms.iter()
                .any(|m| m.name == "n5" && m.state == "alive" && m.generation == new_generation)
        })
        .await
        .expect("n5 back in every view");
    }
    c.wait_converged(CONVERGE).await.expect("views agree again");
    c.stop_all().await;
}
