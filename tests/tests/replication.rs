#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Real `vigil agent` processes on loopback: snapshots replicated across zones
//! survive killed owners, holders and whole zones; restarts; fencing; corruption.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use vigil::api::AgentJson;
use vigil::client::{self, ClientError};
use vigil_tests::{CONVERGE, cluster, start_all};

const SIX: [&str; 6] = ["n1", "n2", "n3", "n4", "n5", "n6"];
/// Correctness bound for waits (not a performance figure).
const SETTLE: Duration = Duration::from_secs(30);

fn body(agent: &str, seq: u64) -> Bytes {
    Bytes::from(format!("{agent} state after step {seq} ").repeat(50))
}

async fn agent_on(socket: &Path, id: &str) -> Option<AgentJson> {
    client::agents(socket)
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.id == id)
}

/// Waits until every holder of `id` (as `owner` sees them) has `seq` on its disk.
async fn wait_all_copies(
    c: &vigil::harness::LocalCluster,
    owner: &str,
    id: &str,
    seq: u64,
) -> Vec<String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let a = agent_on(&c.node(owner).unwrap().socket, id).await.unwrap();
        let mut all = a.holders.len() == 3;
        for h in &a.holders {
            let on_holder = agent_on(&c.node(&h.name).unwrap().socket, id).await;
            all &= on_holder.is_some_and(|x| x.local_versions.contains(&seq));
        }
        if all {
            return a.holders.iter().map(|h| h.name.clone()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "copies of {id} seq {seq} never complete: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_put_in_three_zones_survives_its_owner_and_a_holder() {
    let mut c = cluster!(&SIX);
    start_all(&mut c, &SIX).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let owner = c.node("n1").unwrap().socket.clone();
    let reg = client::register(&owner, "planner", r#"{"role":"planner"}"#)
        .await
        .unwrap();
    assert_eq!((reg.owner.as_str(), reg.epoch), ("n1", 1));
    let mut last = None;
    for seq in 1..=4 {
        let out = client::put_snapshot(&owner, "planner", body("planner", seq), None)
            .await
            .unwrap();
        assert_eq!((out.seq, out.epoch), (seq, 1));
        assert!(out.stored_on.len() >= 2, "{out:?}");
        assert!(
            out.zones.len() >= 2,
            "quorum copies in distinct zones: {out:?}"
        );
        assert!(out.degraded.is_none(), "{out:?}");
        last = Some(out);
    }
    let holders = wait_all_copies(&c, "n1", "planner", 4).await;
    let zones: std::collections::BTreeSet<String> = holders
        .iter()
        .map(|h| c.node(h).unwrap().zone.clone())
        .collect();
    assert_eq!(zones.len(), 3, "one copy per zone: {holders:?}");
    // Every node lists the agent, with its owner and holders.
    for n in c.nodes() {
        let a = agent_on(&n.socket, "planner")
            .await
            .expect("listed everywhere");
        assert_eq!(a.owner, "n1");
        assert_eq!(a.meta["role"], "planner");
    }

    c.kill("n1").await.unwrap();
    c.kill(&holders[0]).await.unwrap();
    let reader = SIX
        .iter()
        .find(|n| **n != "n1" && !holders.contains(&n.to_string()))
        .unwrap();
    let snap = client::get_snapshot(&c.node(reader).unwrap().socket, "planner", None)
        .await
        .unwrap();
    assert_eq!((snap.epoch, snap.seq), (1, last.unwrap().seq));
    assert_eq!(snap.body, body("planner", 4));
    // An older kept version too.
    let old = client::get_snapshot(&c.node(reader).unwrap().socket, "planner", Some(2))
        .await
        .unwrap();
    assert_eq!(old.body, body("planner", 2));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_snapshot_survives_the_loss_of_a_whole_zone() {
    let mut c = cluster!(&SIX);
    start_all(&mut c, &SIX).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    // Twelve agents, two per node; each pushes a few versions; record the acks.
    let mut acked: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (i, owner) in SIX.iter().enumerate() {
        let socket = c.node(owner).unwrap().socket.clone();
        for j in 0..2 {
            let id = format!("agent-{i}-{j}");
            client::register(&socket, &id, "{}").await.unwrap();
            for seq in 1..=3 {
                let out = client::put_snapshot(&socket, &id, body(&id, seq), None)
                    .await
                    .unwrap();
                acked.insert(id.clone(), (owner.to_string(), out.seq));
            }
        }
    }
    // Zone az2 holds n2 and n5 (start_all assigns az1, az2, az3 in turn).
    let dead: Vec<String> = c
        .nodes()
        .filter(|n| n.zone == "az2")
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(dead, ["n2", "n5"]);
    for n in &dead {
        c.kill(n).await.unwrap();
    }
    let reader = c.node("n3").unwrap().socket.clone();
    for (id, (_, seq)) in &acked {
        let snap = client::get_snapshot(&reader, id, None).await.unwrap();
        assert_eq!(snap.seq, *seq, "{id}");
        assert_eq!(snap.body, body(id, *seq), "{id}");
    }
    // Repair brings every agent whose owner lives back to three copies in the two
    // zones left (degraded: two zones for three copies).
    let deadline = Instant::now() + SETTLE;
    for (id, (owner, _)) in &acked {
        if dead.contains(owner) {
            continue;
        }
        loop {
            let a = agent_on(&c.node(owner).unwrap().socket, id).await.unwrap();
            if a.holders.len() == 3 && a.holders.iter().all(|h| !dead.contains(&h.name)) {
                break;
            }
            assert!(Instant::now() < deadline, "{id} not repaired: {a:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_holder_serves_what_it_stored() {
    let names = ["n1", "n2", "n3", "n4"];
    let mut c = cluster!(&names);
    start_all(&mut c, &names).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let owner = c.node("n1").unwrap().socket.clone();
    client::register(&owner, "solo", "{}").await.unwrap();
    let out = client::put_snapshot(&owner, "solo", body("solo", 1), Some("all"))
        .await
        .unwrap();
    assert_eq!(out.stored_on.len(), 3, "{out:?}");
    let holder = out.stored_on[0].name.clone();
    // The whole cluster goes down; one holder comes back alone on its data dir.
    for n in names {
        c.kill(n).await.unwrap();
    }
    let zone = c.node(&holder).unwrap().zone.clone();
    c.start(&holder, &zone, &[]).await.unwrap();
    let socket = c.node(&holder).unwrap().socket.clone();
    let snap = client::get_snapshot(&socket, "solo", None).await.unwrap();
    assert_eq!((snap.epoch, snap.seq), (1, 1));
    assert_eq!(snap.body, body("solo", 1));
    let listed = agent_on(&socket, "solo").await.unwrap();
    assert_eq!(listed.owner, "n1", "the record was kept on disk too");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_agent_refuses_its_old_owner() {
    let names = ["n1", "n2", "n3", "n4"];
    let mut c = cluster!(&names);
    start_all(&mut c, &names).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let old = c.node("n1").unwrap().socket.clone();
    let new = c.node("n2").unwrap().socket.clone();
    client::register(&old, "mover", "{}").await.unwrap();
    client::put_snapshot(&old, "mover", body("mover", 1), None)
        .await
        .unwrap();
    let taken = client::register(&new, "mover", "{}").await.unwrap();
    assert_eq!((taken.owner.as_str(), taken.epoch), ("n2", 2));
    let out = client::put_snapshot(&new, "mover", body("mover", 2), None)
        .await
        .unwrap();
    assert_eq!((out.epoch, out.seq), (2, 2), "seqs go on across owners");
    let err = client::put_snapshot(&old, "mover", body("mover", 99), None)
        .await
        .unwrap_err();
    let ClientError::Api {
        status,
        code,
        error,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*status, 409, "{err}");
    assert!(code == "not_owner" || code == "stale_epoch", "{err}");
    assert!(error.contains("n2") && error.contains("epoch 2"), "{err}");
    let snap = client::get_snapshot(&c.node("n3").unwrap().socket, "mover", None)
        .await
        .unwrap();
    assert_eq!((snap.epoch, snap.seq), (2, 2));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_file_is_detected_never_served_and_fetched_again() {
    let names = ["n1", "n2", "n3", "n4"];
    let mut c = cluster!(&names);
    start_all(&mut c, &names).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let owner = c.node("n1").unwrap().socket.clone();
    client::register(&owner, "fragile", "{}").await.unwrap();
    let out = client::put_snapshot(&owner, "fragile", body("fragile", 1), Some("all"))
        .await
        .unwrap();
    let holder = out.stored_on[0].name.clone();
    let node = c.node(&holder).unwrap();
    let file = node
        .data_dir
        .join("snapshots/fragile")
        .join(format!("{:020}.snap", 1));
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let socket = node.socket.clone();
    let snap = client::get_snapshot(&socket, "fragile", None)
        .await
        .unwrap();
    assert_eq!(snap.body, body("fragile", 1), "served from a good copy");
    let deadline = Instant::now() + SETTLE;
    loop {
        let healed = agent_on(&socket, "fragile")
            .await
            .is_some_and(|a| a.local_versions.contains(&1));
        if healed && std::fs::read(&file).is_ok_and(|b| b != bytes) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt copy was not fetched again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        vigil_tests::metric_sum(&socket, "vigil_snapshot_corrupt_total").await,
        1.0
    );
    let aside = file.with_extension("snap.corrupt");
    assert!(
        aside.exists(),
        "kept aside for inspection: {}",
        aside.display()
    );
    // The healed copy reads back intact from the holder itself.
    let snap = client::get_snapshot(&socket, "fragile", Some(1))
        .await
        .unwrap();
    assert_eq!(snap.body, body("fragile", 1));
    c.stop_all().await;
}
