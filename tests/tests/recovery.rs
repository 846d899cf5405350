#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! Real `vigil agent` processes on loopback: a host killed with SIGKILL has its agents
//! adopted elsewhere, once each, from their latest acknowledged snapshot, even when the
//! holder coordinating their recovery dies during it; isolated nodes adopt nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vigil::api::AgentJson;
use vigil::client;
use vigil::events::EventRecord;
use vigil::store::{DEFAULT_MAX_BODY, SnapshotStore};
use vigil_protocol::{AcceptorState, AgentId, NodeName, placement};
use vigil_tests::{CONVERGE, LocalCluster, cluster, start_all, start_all_with};

const SIX: [&str; 6] = ["n1", "n2", "n3", "n4", "n5", "n6"];
/// Correctness bound for waits (not a performance figure: RTO is in benches/).
const RECOVER: Duration = Duration::from_secs(40);

/// Snapshot `seq` of `agent`: the example agent's counter state with count = seq (so
/// an adopted `vigil example-agent` resumes from it), padded to a few hundred bytes.
fn body(agent: &str, seq: u64) -> Bytes {
    let state = serde_json::json!({
        "agent": agent,
        "count": seq,
        "note": format!("{agent} state after step {seq} ").repeat(20),
    });
    Bytes::from(state.to_string())
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
    // The survivors' logs follow each recovery from detection to adoption with the
    // same fields: the dead node, then per agent its election, coordinator and
    // adoption in a `recovery` span naming the agent, the epoch and the dead owner.
    let logs: String = SIX[1..]
        .iter()
        .map(|n| std::fs::read_to_string(&c.node(n).unwrap().log).unwrap())
        .collect();
    assert!(
        logs.lines()
            .any(|l| l.contains("member declared down") && l.contains("dead_node=n1")),
        "{logs}"
    );
    for id in acked.keys() {
        for step in ["election_started", "coordinator_elected", "agent_adopted"] {
            assert!(
                logs.lines().any(|l| l.contains(step)
                    && l.contains(&format!("recovery{{agent={id} epoch=2 previous_owner=n1"))),
                "{id} {step}: {logs}"
            );
        }
    }
}

/// The holder that proposes first for `agent` when its owner dies: the best rendezvous
/// score among its live holders (recovery.rs ranks proposers so; the others wait one
/// back-off per better-placed holder).
fn first_proposer<'a>(agent: &str, holders: &'a [String]) -> &'a str {
    let agent = AgentId::new(agent).unwrap();
    holders
        .iter()
        .max_by_key(|h| placement::score(&agent, &NodeName::new(h).unwrap()))
        .unwrap()
}

/// `e` is a `kind` event about `agent`.
fn about(e: &EventRecord, kind: &str, agent: &str) -> bool {
    e.kind == kind && e.agent.as_deref() == Some(agent)
}

/// The target a `coordinator_elected` event names ("... adopted by TARGET (elected
/// in N ms)").
fn elected_target(e: &EventRecord) -> Option<&str> {
    e.detail
        .as_deref()?
        .split("adopted by ")
        .nth(1)?
        .split(' ')
        .next()
}

/// The node that adopted `agent`, once it heartbeats there.
fn running_adopter(events: &[(String, EventRecord)], agent: &str) -> Option<String> {
    events
        .iter()
        .filter(|(_, e)| about(e, "agent_adopted", agent))
        .map(|(host, _)| host)
        .find(|host| {
            events.iter().any(|(n, r)| {
                n == *host && about(r, "agent_running", agent) && r.epoch.unwrap_or(0) >= 2
            })
        })
        .cloned()
}

/// The acceptor (election) state of every agent in a stopped node's data directory.
fn acceptor_states(data_dir: &Path) -> BTreeMap<String, AcceptorState> {
    let opened = SnapshotStore::open(&data_dir.join("snapshots"), 1, DEFAULT_MAX_BODY).unwrap();
    opened
        .acceptors
        .into_iter()
        .map(|(agent, bytes)| (agent, serde_json::from_slice(&bytes).unwrap()))
        .collect()
}

/// What the recovery looked like (timing varies from run to run; nothing is asserted
/// on it): the events about the agents and the dead nodes relative to the owner's
/// kill, and how far the frozen coordinator got with the agents it led, from its log
/// (written before an event is published, so complete up to the freeze).
fn report_timeline(
    c: &LocalCluster,
    events: &[(String, EventRecord)],
    killed_at: SystemTime,
    dead: [&str; 2],
    led: &BTreeMap<String, Vec<String>>,
) {
    let [owner, coordinator] = dead;
    let t0 = killed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    const SHOWN: [&str; 6] = [
        "member_down",
        "election_started",
        "coordinator_elected",
        "agent_adopted",
        "agent_fenced",
        "agent_unfenced",
    ];
    let mut timeline: Vec<(i64, String)> = Vec::new();
    for (n, e) in events {
        let about_dead = e.member.as_deref().is_some_and(|m| dead.contains(&m));
        if SHOWN.contains(&e.kind.as_str()) && (e.agent.is_some() || about_dead) {
            let what = e.detail.as_deref().or(e.member.as_deref()).unwrap_or("");
            timeline.push((e.time_ms as i64 - t0, format!("{n}  {}  {what}", e.kind)));
        }
    }
    timeline.sort();
    println!("after SIGKILL {owner}:");
    for (at, line) in &timeline {
        println!("  {at:+6} ms  {line}");
    }
    let log = std::fs::read_to_string(&c.node(coordinator).unwrap().log).unwrap();
    for id in led.keys() {
        let proposed = log.contains(&format!("agent {id}: proposing a new owner"));
        let elected = log.contains(&format!("agent {id}: this node coordinates"));
        println!("{id}: {coordinator} had proposed: {proposed}, had been elected: {elected}");
    }
}

/// The epoch-2 ballots and decrees the holders of the agents `led` were left with,
/// read from their data directories once every node has stopped. A winning round
/// above 1 means a first ballot was refused, normally because the frozen
/// coordinator's prepare had been promised (its name ranks its first ballot above
/// theirs).
fn report_ballots(c: &LocalCluster, led: &BTreeMap<String, Vec<String>>) {
    for (id, holders) in led {
        println!("{id}, epoch 2:");
        for h in holders {
            match acceptor_states(&c.node(h).unwrap().data_dir).remove(id) {
                Some(s) if s.epoch == 2 => println!(
                    "  acceptor {h}: promised {:?}, accepted {:?}",
                    s.promised, s.accepted
                ),
                Some(s) => println!(
                    "  acceptor {h}: overwritten by an election for epoch {} (held while the nodes stopped one by one)",
                    s.epoch
                ),
                None => println!("  acceptor {h}: nothing persisted"),
            }
        }
    }
}

/// Issue 5: the holder coordinating the recovery of a dead host's agents dies during
/// it, and the recovery still completes, once per agent.
///
/// n3 owns the agents (n6 owns none) and is SIGKILLed with their processes. n6, its
/// only zone-mate, holds a copy of each (one holder per zone) and is never the chosen
/// target (targets outside the dead owner's zone come first). For the agents where n6
/// has the best rendezvous score among the holders it proposes first, and its name
/// makes its ballot beat the others' first ballots, so a holder that promised it
/// refuses them. At its first `election_started` for one of those (or at the first
/// `coordinator_elected` for one, should n6 be late) n6 is frozen with SIGSTOP, then
/// SIGKILLed, wherever it is: prepares sent or not, promises or accepts persisted at
/// the other holders, elected, adopting. The other two holders (still a majority of
/// three) propose after their back-off, with higher ballots when refused, find any
/// decree n6 got accepted, and finish it. Valid whatever n6 had reached; the output
/// says what that was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_recovery_is_replaced_and_each_agent_is_adopted_once() {
    let (owner_name, coordinator) = ("n3", "n6");
    let dead = [owner_name, coordinator];
    let survivors = ["n1", "n2", "n4", "n5"];
    let mut c = cluster!(&SIX);
    // Every node launches the agents it owns: example agents that restore their count
    // from the latest snapshot and heartbeat, but do not put (one put an hour): the
    // test writes the snapshots, so it knows the last acknowledged seq exactly.
    let agent_command = format!(
        "'{}' example-agent --id {{id}} --socket {{socket}} --snapshot-ms 3600000",
        vigil_tests::vigil_bin!().display()
    );
    start_all_with(&mut c, &SIX, &["--agent-command".into(), agent_command]).await;
    c.wait_converged(CONVERGE).await.expect("converge");
    let owner = socket(&c, owner_name);
    let acked = agents_with_snapshots(&owner, 9, 3).await;
    let ids: Vec<String> = acked.keys().cloned().collect();
    let pids = c.launched_pids(owner_name, &ids, RECOVER).await.unwrap();
    assert_eq!(pids.len(), ids.len(), "launched on {owner_name}: {pids:?}");

    let mut holders = BTreeMap::new();
    for id in &ids {
        let a = client::agent(&owner, id).await.unwrap();
        let names: Vec<String> = a.holders.iter().map(|h| h.name.clone()).collect();
        let ok = names.len() == 3 && names.iter().any(|h| h == coordinator);
        assert!(ok, "{a:?}");
        holders.insert(id.clone(), names);
    }
    let led: BTreeMap<String, Vec<String>> = holders
        .iter()
        .filter(|(id, names)| first_proposer(id, names) == coordinator)
        .map(|(id, names)| (id.clone(), names.clone()))
        .collect();
    assert!(!led.is_empty(), "{coordinator} leads none of {holders:?}");
    wait_for("every holder to store the last snapshot", async || {
        for (id, names) in &holders {
            for h in names {
                let view = agents_on(&socket(&c, h)).await.remove(id);
                let stored = view.as_ref().is_some_and(|a| {
                    a.owner == owner_name && a.local_versions.contains(&acked[id])
                });
                if !stored {
                    return Err(format!("{h}: {view:?}"));
                }
            }
        }
        Ok(())
    })
    .await;

    let mut watch = c
        .watch(&["n1", "n2", "n4", "n5", "n6"])
        .await
        .expect("follow the survivors' events");
    let killed_at = c.kill(owner_name).await.unwrap();
    for pid in pids.values() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let mut events: Vec<(String, EventRecord)> = Vec::new();
    // Freeze n6 at its first election for an agent it leads; or, should n6 be so
    // late in seeing n3 down that another holder is elected for one first, then.
    let leads = |e: &EventRecord| e.agent.as_ref().is_some_and(|a| led.contains_key(a));
    let triggered = tokio::time::timeout(RECOVER, async {
        while let Some((node, e)) = watch.next().await {
            let fire = leads(&e)
                && (e.kind == "coordinator_elected"
                    || (node == coordinator && e.kind == "election_started"));
            events.push((node, e));
            if fire {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(triggered.ok(), Some(true), "no election: {events:#?}");
    c.signal(coordinator, Signal::SIGSTOP).unwrap();
    let (by, trigger) = events.last().cloned().unwrap();
    println!("froze {coordinator} at {} on {by}", trigger.kind);
    c.kill(coordinator).await.unwrap();

    let mut new_owners = BTreeMap::new();
    tokio::time::timeout(RECOVER, async {
        while new_owners.len() < ids.len() {
            let Some(item) = watch.next().await else {
                break;
            };
            events.push(item);
            for id in &ids {
                if let Some(host) = running_adopter(&events, id) {
                    new_owners.insert(id.clone(), host);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not every agent adopted and running: {events:#?}"));
    // The catalogs settle: every survivor names the adopter as the owner, and the
    // adopter runs the agent with live holders only (an adopter that was a holder
    // keeps the other two, n6 among them, and is fenced until repair replaces n6).
    wait_for("the survivors to agree on the owners", async || {
        for n in survivors {
            let view = agents_on(&socket(&c, n)).await;
            for (id, host) in &new_owners {
                let a = view.get(id).ok_or(format!("{n} does not know {id}"))?;
                let live_holders = a.holders.iter().all(|h| !dead.contains(&h.name.as_str()));
                let settled = a.owner == *host
                    && a.epoch >= 2
                    && (n != host || (a.state == "running" && live_holders));
                if !settled {
                    return Err(format!("{n}: {a:?}"));
                }
            }
        }
        Ok(())
    })
    .await;
    events.extend(watch.catch_up(&c, RECOVER).await.unwrap());
    report_timeline(&c, &events, killed_at, dead, &led);

    for (id, seq) in &acked {
        let adoptions: Vec<_> = events
            .iter()
            .filter(|(_, e)| about(e, "agent_adopted", id))
            .collect();
        assert_eq!(adoptions.len(), 1, "{id}: {adoptions:#?}");
        let (host, adopted) = adoptions[0];
        // Epoch 2: one decree per epoch, and its target (alive, outside the dead
        // owner's zone) adopts it. Epoch 3 would mean the epoch-2 target never did.
        assert_eq!(
            (adopted.epoch, adopted.seq),
            (Some(2), Some(*seq)),
            "{id} on {host}: {adopted:?}"
        );
        // One decree: every coordinator elected for it, n6 included, names that target.
        for (n, e) in events
            .iter()
            .filter(|(_, e)| about(e, "coordinator_elected", id))
        {
            assert_eq!(elected_target(e), Some(host.as_str()), "{id}: {n} {e:?}");
        }
        let view = agents_on(&socket(&c, host)).await.remove(id).unwrap();
        assert_owned_once_serving_latest(&c, &survivors, &view, *seq).await;
    }
    c.stop_all().await;
    report_ballots(&c, &led);
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
