#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Real `vigil agent` processes over IPv6 loopback (`::1`): bind, advertise and join
//! over IPv6, a dual-stack node (`[::]`) that IPv4 and IPv6 peers join, and
//! zone-scoped addresses refused at start. Skipped, saying so, only on a host
//! without `::1`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

use bytes::Bytes;
use vigil::client;
use vigil::harness::Placement;
use vigil_tests::{CONVERGE, DETECT, LocalCluster, cluster, vigil_bin};

/// Whether this host has IPv6 loopback; when not, says why the test does nothing.
fn ipv6_loopback(test: &str) -> bool {
    match std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIPPED {test}: this host has no IPv6 loopback (binding [::1]:0: {e})");
            false
        }
    }
}

fn bound_to(bind: &str) -> Placement {
    Placement {
        wrapper: Vec::new(),
        bind: bind.into(),
    }
}

async fn start_at(
    c: &mut LocalCluster,
    name: &str,
    zone: &str,
    bind: &str,
    seeds: &[SocketAddr],
    extra: &[&str],
) -> SocketAddr {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    c.start_placed(name, zone, seeds, &extra, &bound_to(bind))
        .await
        .unwrap()
        .addr
}

fn port(addr: SocketAddr) -> u16 {
    addr.port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_ipv6_loopback_converge_and_recover_a_killed_nodes_agent() {
    if !ipv6_loopback("three_nodes_on_ipv6_loopback...") {
        return;
    }
    const THREE: [&str; 3] = ["n1", "n2", "n3"];
    let mut c = cluster!(&THREE);
    let seed = start_at(&mut c, "n1", "az1", "[::1]:0", &[], &[]).await;
    assert_eq!(seed.ip(), Ipv6Addr::LOCALHOST);
    start_at(&mut c, "n2", "az2", "[::1]:0", &[seed], &[]).await;
    start_at(&mut c, "n3", "az3", "[::1]:0", &[seed], &[]).await;
    c.wait_converged(CONVERGE).await.unwrap();

    // Addresses travel in identities and come out of the API and the CLI in
    // brackets, as peers and operators write them.
    for node in c.nodes() {
        let members = client::members(&node.socket).await.unwrap();
        for m in &members {
            let addr: SocketAddr = m.addr.parse().unwrap();
            assert_eq!(addr.ip(), Ipv6Addr::LOCALHOST, "{m:?}");
            assert!(m.addr.starts_with("[::1]:"), "{m:?}");
        }
        let health = client::health(&node.socket).await.unwrap();
        assert_eq!(health.addr, node.addr.to_string());
    }
    let out = Command::new(vigil_bin!())
        .arg("members")
        .arg("--socket")
        .arg(&c.node("n2").unwrap().socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    for node in c.nodes() {
        assert!(
            table.contains(&format!("[::1]:{}", port(node.addr))),
            "{table}"
        );
    }

    // Snapshots replicate over IPv6 streams, and a killed host's agent is adopted.
    let n3 = c.node("n3").unwrap().socket.clone();
    client::register(&n3, "planner", "{}").await.unwrap();
    for seq in 1..=3 {
        let out = client::put_snapshot(&n3, "planner", Bytes::from(format!("step {seq}")), None)
            .await
            .unwrap();
        assert!(!out.stored_on.is_empty());
    }
    let mut watch = c.watch(&["n1", "n2"]).await.unwrap();
    c.kill("n3").await.unwrap();
    let adopter = loop {
        let (name, e) = watch.next().await.expect("events");
        if e.kind == "agent_adopted" && e.agent.as_deref() == Some("planner") {
            break name;
        }
    };
    let snap = client::get_snapshot(&c.node(&adopter).unwrap().socket, "planner", None)
        .await
        .unwrap();
    assert_eq!((snap.seq, snap.body), (3, Bytes::from("step 3")));
    for survivor in ["n1", "n2"] {
        c.wait_members(survivor, "n3 down", DETECT, |ms| {
            ms.iter().any(|m| m.name == "n3" && m.state == "down")
        })
        .await
        .unwrap();
    }

    // The killed host comes back on its data directory and rejoins over IPv6.
    start_at(&mut c, "n3", "az3", "[::1]:0", &[seed], &[]).await;
    c.wait_converged(CONVERGE).await.unwrap();
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_is_joined_by_ipv4_and_ipv6_peers() {
    if !ipv6_loopback("a_dual_stack_node_is_joined_by_ipv4_and_ipv6_peers") {
        return;
    }
    let mut c = cluster!(&["dual", "v4", "v6"]);
    // One socket on every address of both families; advertised to peers by its
    // IPv6 loopback address, reached by its IPv4 one too.
    let dual = start_at(
        &mut c,
        "dual",
        "az1",
        "[::]:0",
        &[],
        &["--advertise", "[::1]:0"],
    )
    .await;
    assert_eq!(dual.ip(), Ipv6Addr::LOCALHOST);
    let bound = c.node("dual").unwrap().bound;
    assert!(bound.ip().is_unspecified() && bound.is_ipv6(), "{bound}");
    let over_v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, dual.port()));
    let v4 = start_at(&mut c, "v4", "az2", "127.0.0.1:0", &[over_v4], &[]).await;
    let v6 = start_at(&mut c, "v6", "az3", "[::1]:0", &[dual], &[]).await;

    let members = c
        .wait_members("dual", "both peers alive", CONVERGE, |ms| {
            ["v4", "v6"]
                .iter()
                .all(|n| ms.iter().any(|m| m.name == *n && m.state == "alive"))
        })
        .await
        .unwrap();
    let addr_of = |n: &str| members.iter().find(|m| m.name == n).unwrap().addr.clone();
    assert_eq!(addr_of("v4"), v4.to_string());
    assert_eq!(addr_of("v6"), v6.to_string());
    for peer in ["v4", "v6"] {
        c.wait_members(peer, "the dual-stack node alive", CONVERGE, |ms| {
            ms.iter().any(|m| m.name == "dual" && m.state == "alive")
        })
        .await
        .unwrap();
    }
    c.stop_all().await;
}

#[test]
fn zone_scoped_ipv6_addresses_are_refused_at_start_naming_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--bind", "[fe80::1%lo]:7946"),
        ("--advertise", "[fe80::1%1]:7946"),
        ("--seed", "[fe80::1%eth0]:7946"),
    ] {
        let mut cmd = Command::new(vigil_bin!());
        cmd.args(["agent", "--name", "n1", "--pki"])
            .arg(dir.path())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"));
        if flag != "--bind" {
            cmd.args(["--bind", "[::1]:0"]);
        }
        let out = cmd
            .args([flag, value])
            .env_remove("VIGIL_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(
            stderr.contains(flag)
                && stderr.contains(value)
                && stderr.contains("zone-scoped")
                && stderr.contains("Fix:"),
            "{flag} {value}: {stderr}"
        );
    }
}
