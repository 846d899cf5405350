#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Real `vigil agent` processes in separate network namespaces, cut off from each
//! other with blackhole routes (root only; skipped, with the reason printed, where
//! network namespaces are unavailable, unless VIGIL_REQUIRE_NETNS is set).

use std::time::Duration;

use vigil_tests::netns::{NetLab, NsCluster};
use vigil_tests::{CONVERGE, DETECT, vigil_bin};

/// A datagram on an open link arrives in microseconds; a blackholed sender fails at
/// once. This only bounds the wait for one that is (wrongly) still in flight.
const PROBE: Duration = Duration::from_secs(2);

#[test]
fn a_partition_drops_datagrams_both_ways_until_healed() {
    let Some(mut lab) = NetLab::new_or_skip(3) else {
        return;
    };
    let all_pairs = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)];
    for (a, b) in all_pairs {
        assert!(lab.reachable(a, b, PROBE).unwrap(), "{a} -> {b} before");
    }
    lab.partition(2).unwrap();
    assert_eq!(lab.cuts().collect::<Vec<_>>(), [(0, 2), (1, 2)]);
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        assert!(
            !lab.reachable(a, b, PROBE).unwrap(),
            "{a} -> {b} partitioned"
        );
    }
    for (a, b) in [(0, 1), (1, 0), (2, 2)] {
        assert!(lab.reachable(a, b, PROBE).unwrap(), "{a} -> {b} unaffected");
    }
    lab.heal(2).unwrap();
    assert_eq!(lab.cuts().count(), 0);
    for (a, b) in all_pairs {
        assert!(lab.reachable(a, b, PROBE).unwrap(), "{a} -> {b} healed");
    }
    for k in 0..3 {
        let routes = lab.ip_in(k, &["route", "show"]).unwrap();
        assert!(!routes.contains("blackhole"), "host {k}: {routes}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_is_declared_down_and_rejoins_when_healed() {
    let names = ["n1", "n2", "n3"];
    let Some(mut c) = NsCluster::new_or_skip(vigil_bin!(), &names) else {
        return;
    };
    let seed = c.start("n1", "az1", &[]).await.expect("start n1").addr;
    c.start("n2", "az2", &[seed]).await.expect("start n2");
    c.start("n3", "az3", &[seed]).await.expect("start n3");
    c.wait_converged(CONVERGE).await.expect("converge");
    for node in c.nodes() {
        assert_eq!(
            node.addr.ip(),
            c.lab().addr(c.host(&node.name).unwrap()),
            "{}",
            node.name
        );
    }

    c.partition("n3").expect("partition n3");
    for survivor in ["n1", "n2"] {
        let down = c
            .wait_event(survivor, DETECT, |e| {
                e.kind == "member_down" && e.member.as_deref() == Some("n3")
            })
            .await
            .expect("n3 declared down by the majority side");
        assert_eq!(down.member_zone.as_deref(), Some("az3"));
    }
    for lost in ["n1", "n2"] {
        c.wait_event("n3", DETECT, |e| {
            e.kind == "member_down" && e.member.as_deref() == Some(lost)
        })
        .await
        .expect("the cut-off node declares the others down");
    }
    let members = c
        .wait_members("n3", "n1 and n2 down", DETECT, |ms| {
            ms.iter().filter(|m| !m.local).all(|m| m.state == "down")
        })
        .await
        .expect("n3's view");
    assert_eq!(members.len(), 3, "{members:?}");

    c.heal("n3").expect("heal n3");
    // No operator action: n3 finds the others again (perhaps as a new generation)
    // and every view agrees.
    c.wait_converged(CONVERGE)
        .await
        .expect("converge after heal");
    for node in c.nodes() {
        let members = vigil::client::members(&node.socket).await.expect("members");
        let alive = members.iter().filter(|m| m.state == "alive").count();
        assert_eq!(alive, 3, "{}: {members:?}", node.name);
    }
    c.stop_all().await;
}
