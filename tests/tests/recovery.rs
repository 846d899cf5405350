#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Real `vigil agent` processes on loopback: a host killed with SIGKILL has its agents
//! adopted elsewhere, once each, from their latest acknowledged snapshot; isolated
//! nodes adopt nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::Signal;
use vigil::api::AgentJson;
use vigil::client;
use vigil_tests::{CONVERGE, LocalCluster, cluster, start_all};

const SIX: [&str; 6] = ["n1", "n2", "n3", "n4", "n5", "n6"];
/// Correctness bound for waits (not a performance figure: RTO is in benches/).
const RECOVER: Duration = Duration::from_secs(40);

fn body(agent: &str, seq: u64) -> Bytes {
    Bytes::from(format!("{agent} state after step {seq} ").repeat(20))
}

fn socket(c: &LocalCluster, name: &str) -> PathBuf {
    c.node(name).unwrap().socket.clone()
}

/// Runs `probe` every 100 ms until it returns `Ok`, for at most [`RECOVER`]; fails with
/// `what` and the last `Err`. For states that no single event announces (catalog
/// views across nodes).
async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + RECOVER;
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(last) => assert!(Instant::now() < deadline, "{what}: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agents_on(socket: &Path) -> BTreeMap<String, AgentJson> {
    client::agents(socket)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect()
}

/// Registers `n` agents on `owner` and puts `puts` snapshots to each; returns the last
/// acknowledged seq of each.
async fn agents_with_snapshots(owner: &Path, n: usize, puts: u64) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let id = format!("worker-{i}");
        client::register(owner, &id, "{}").await.unwrap();
        for seq in 1..=puts {
            let out = client::put_snapshot(owner, &id, body(&id, seq), None)
                .await
                .unwrap();
            acked.insert(id.clone(), out.seq);
        }
    }
    acked
}

/// Waits until `observer` sees every agent of `acked` owned by a live node other than
/// `dead` at a higher epoch, and returns the views.
async fn wait_adopted(
    observer: &Path,
    dead: &str,
    acked: &BTreeMap<String, u64>,
) -> BTreeMap<String, AgentJson> {
    wait_for("agents adopted", async || {
        let view = agents_on(observer).await;
        let done = acked.keys().all(|id| {
            view.get(id)
                .is_some_and(|a| a.owner != dead && a.epoch >= 2)
        });
        if done {
            Ok(view)
        } else {
            Err(format!("{view:#?}"))
        }
    })
    .await
}

/// `a`, an agent acknowledged up to `seq` whose owner died, is owned at epoch 2 by
/// exactly one of the `live` nodes, the one the view names; that node serves the last
/// acknowledged snapshot (RPO 0), and its puts continue the seqs under the new epoch.
async fn assert_owned_once_serving_latest(
    c: &LocalCluster,
    live: &[&str],
    a: &AgentJson,
    seq: u64,
) {
    let id = a.id.as_str();
    assert_eq!(a.epoch, 2, "{a:?}");
    let mut owners = Vec::new();
    for n in live {
        if agents_on(&socket(c, n))
            .await
            .get(id)
            .is_some_and(|x| x.owned_here)
        {
            owners.push(n.to_string());
        }
    }
    assert_eq!(owners, vec![a.owner.clone()], "{id}");
    let new_owner = socket(c, &a.owner);
    let snap = client::get_snapshot(&new_owner, id, None).await.unwrap();
    assert_eq!(snap.seq, seq, "{id}");
    assert_eq!(snap.body, body(id, seq), "{id}");
    let out = client::put_snapshot(&new_owner, id, body(id, seq + 1), None)
        .await
        .unwrap();
    assert_eq!((out.epoch, out.seq), (2, seq + 1), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_agents_are_adopted_once_each_from_their_latest_snapshot() {
    let mut c = cluster!(&SIX);
    start_all(&mut c, &SIX).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let owner = c.node("n1").unwrap().socket.clone();
    let acked = agents_with_snapshots(&owner, 6, 3).await;
    // Let the holders learn the owner's lease and the catalog settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.signal("n1", Signal::SIGKILL).unwrap();
    let observer = c.node("n2").unwrap().socket.clone();
    let view = wait_adopted(&observer, "n1", &acked).await;
    for (id, seq) in &acked {
        assert_owned_once_serving_latest(&c, &SIX[1..], &view[id], *seq).await;
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_node_receives_no_adoptions() {
    let mut c = cluster!(&SIX);
    start_all(&mut c, &SIX).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    for n in ["n2", "n3", "n4"] {
        let socket = c.node(n).unwrap().socket.clone();
        let answer = client::isolate_node(&socket).await.unwrap();
        assert!(answer.isolated, "{answer:?}");
    }
    let owner = c.node("n1").unwrap().socket.clone();
    let acked = agents_with_snapshots(&owner, 4, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.signal("n1", Signal::SIGKILL).unwrap();
    let observer = c.node("n5").unwrap().socket.clone();
    let view = wait_adopted(&observer, "n1", &acked).await;
    for id in acked.keys() {
        let owner = view[id].owner.as_str();
        assert!(
            ["n5", "n6"].contains(&owner),
            "{id} adopted by isolated {owner}"
        );
    }
    c.stop_all().await;
}

/// A node cut off by blackhole routes fences its agents, the others adopt them, and
/// after the heal it rejoins without running the old copies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_host_fences_its_agents_and_does_not_resume_them_after_the_heal() {
    use vigil_tests::netns::NsCluster;
    let names = ["n1", "n2", "n3", "n4"];
    let Some(mut c) = NsCluster::new_or_skip(vigil_tests::vigil_bin!(), &names) else {
        return;
    };
    let seed = c.start("n1", "az1", &[]).await.expect("start n1").addr;
    for (n, z) in [("n2", "az2"), ("n3", "az3"), ("n4", "az1")] {
        c.start(n, z, &[seed]).await.expect("start");
    }
    c.wait_converged(CONVERGE).await.expect("converge");
    let owner = c.node("n1").unwrap().socket.clone();
    let acked = agents_with_snapshots(&owner, 3, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.partition("n1").expect("cut n1 off");
    for id in acked.keys() {
        c.wait_event("n1", RECOVER, |e| {
            e.kind == "agent_fenced" && e.agent.as_deref() == Some(id.as_str())
        })
        .await
        .expect("the cut-off owner fences its agent");
    }
    let observer = c.node("n2").unwrap().socket.clone();
    let view = wait_adopted(&observer, "n1", &acked).await;
    // While cut off, n1 refuses its agents' puts (a zombie cannot write).
    for id in acked.keys() {
        let err = client::put_snapshot(&owner, id, body(id, 99), None)
            .await
            .unwrap_err();
        assert!(
            format!("{err}").contains("fenced") || format!("{err}").contains("not_owner"),
            "{err}"
        );
    }
    c.heal("n1").expect("heal");
    c.wait_converged(CONVERGE)
        .await
        .expect("converge after heal");
    // n1 learns the new owners and never owns the agents again.
    wait_for("n1 after the heal", async || {
        let on_n1 = agents_on(&owner).await;
        let settled = acked.keys().all(|id| {
            on_n1
                .get(id)
                .is_some_and(|a| !a.owned_here && a.owner == view[id].owner && a.epoch >= 2)
        });
        if settled {
            Ok(())
        } else {
            Err(format!("{on_n1:#?}"))
        }
    })
    .await;
    for (id, seq) in &acked {
        let new_owner = c.node(&view[id].owner).unwrap().socket.clone();
        let snap = client::get_snapshot(&new_owner, id, None).await.unwrap();
        assert_eq!(snap.seq, *seq, "{id}");
    }
    c.stop_all().await;
}

/// An agent whose process keeps failing is restarted in place, then handed to
/// another host through an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_local_agent_is_restarted_then_moved() {
    let names = ["n1", "n2", "n3", "n4"];
    let mut c = cluster!(&names);
    // Every launch of the agent fails at once (exit code 3).
    let extra: Vec<String> = ["--agent-command", "sh -c 'exit 3'", "--agent-restarts", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let seed = c
        .start_with("n1", "az1", &[], &extra)
        .await
        .expect("start n1")
        .addr;
    for (n, z) in [("n2", "az2"), ("n3", "az3"), ("n4", "az1")] {
        c.start_with(n, z, &[seed], &extra).await.expect("start");
    }
    c.wait_converged(CONVERGE).await.expect("converge");
    let n1 = c.node("n1").unwrap().socket.clone();
    client::register(&n1, "flaky", "{}").await.unwrap();
    let restarted = |e: &vigil::events::EventRecord| {
        e.kind == "agent_restarted" && e.agent.as_deref() == Some("flaky")
    };
    c.wait_event("n1", RECOVER, restarted)
        .await
        .expect("restarted in place");
    c.wait_event("n1", RECOVER, |e| {
        e.kind == "agent_handoff" && e.agent.as_deref() == Some("flaky")
    })
    .await
    .expect("handed off after the restarts");
    let moved = wait_for("flaky to move", async || {
        let a = agents_on(&n1).await.remove("flaky").unwrap();
        if a.owner != "n1" && a.epoch >= 2 {
            Ok(a)
        } else {
            Err(format!("{a:?}"))
        }
    })
    .await;
    assert!(!moved.owned_here, "{moved:?}");
    c.stop_all().await;
}
