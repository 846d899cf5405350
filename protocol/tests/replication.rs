#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! Several replicators exchanging messages by hand under simulated time, each with a
//! map for a disk. Membership is given (no SWIM here: the simulator runs both).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use vigil_protocol::replication::{
    AcceptorState, GetError, LoadError, PutError, PutOutcome, ReplEffect, ReplEvent, ReplMsg,
    SnapMeta, StoredVersion, ZoneCapacity,
};
use vigil_protocol::{
    AckMode, AgentId, NodeId, NodeName, ReplicationConfig, Replicator, Zone, placement,
};

const LATENCY: Duration = Duration::from_millis(1);
const DISK: Duration = Duration::from_millis(2);

fn name(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

fn agent(a: &str) -> AgentId {
    AgentId::new(a).unwrap()
}

fn node_id(n: &str, zone: &str, port: u16) -> NodeId {
    NodeId::new(
        name(n),
        ([127, 0, 0, 1], port).into(),
        Zone::new(zone).unwrap(),
        1,
    )
}

enum Work {
    Deliver {
        from: NodeName,
        msg: ReplMsg,
        payload: Option<Bytes>,
    },
    Persisted {
        op: u64,
        agent: AgentId,
        snap: SnapMeta,
        body: Bytes,
    },
    Loaded {
        op: u64,
        agent: AgentId,
        seq: u64,
    },
    AcceptorPersisted {
        op: u64,
        agent: AgentId,
        state: AcceptorState,
    },
}

#[derive(Default)]
struct Disk {
    versions: BTreeMap<(AgentId, u64), (SnapMeta, Bytes)>,
    corrupt: BTreeSet<(AgentId, u64)>,
    acceptors: BTreeMap<AgentId, AcceptorState>,
}

struct Cluster {
    now: Duration,
    ids: BTreeMap<NodeName, NodeId>,
    nodes: BTreeMap<NodeName, Replicator>,
    disks: BTreeMap<NodeName, Disk>,
    down: BTreeSet<NodeName>,
    queue: BTreeMap<(Duration, u64), (NodeName, Work)>,
    seq: u64,
    puts: BTreeMap<(NodeName, u64), Result<PutOutcome, PutError>>,
    gets: BTreeMap<(NodeName, u64), Result<(SnapMeta, Bytes), GetError>>,
    events: Vec<(NodeName, ReplEvent)>,
    registered: BTreeSet<(NodeName, u64)>,
    /// Nodes that messages carrying records do not reach (a partial partition).
    deaf_to_records: BTreeSet<NodeName>,
    /// This many of the next `Adopt` messages are lost.
    adopts_to_lose: u32,
    /// `Adopt` messages to this node are held back (in `held_adopts`, with their
    /// sender) instead of being delivered: a stream stuck behind a partition.
    hold_adopts_to: Option<NodeName>,
    held_adopts: Vec<(NodeName, ReplMsg)>,
    /// Nodes cut off from all others (alive, timers running, no messages either way).
    cut_off: BTreeSet<NodeName>,
    /// Nodes whose snapshot writes fail (a disk that refuses writes).
    failing_writes: BTreeSet<NodeName>,
    config: ReplicationConfig,
}

impl Cluster {
    /// `nodes`: (name, zone).
    fn new(nodes: &[(&str, &str)], config: ReplicationConfig) -> Self {
        let mut c = Cluster {
            now: Duration::ZERO,
            ids: BTreeMap::new(),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            down: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            puts: BTreeMap::new(),
            gets: BTreeMap::new(),
            events: Vec::new(),
            registered: BTreeSet::new(),
            deaf_to_records: BTreeSet::new(),
            adopts_to_lose: 0,
            hold_adopts_to: None,
            held_adopts: Vec::new(),
            cut_off: BTreeSet::new(),
            failing_writes: BTreeSet::new(),
            config,
        };
        for (i, (n, z)) in nodes.iter().enumerate() {
            let id = node_id(n, z, 7000 + i as u16);
            c.ids.insert(name(n), id.clone());
            c.nodes
                .insert(name(n), Replicator::new(id, c.config.clone(), i as u64 + 1));
            c.disks.insert(name(n), Disk::default());
        }
        let ids: Vec<NodeId> = c.ids.values().cloned().collect();
        for n in c.nodes.keys().cloned().collect::<Vec<_>>() {
            for id in &ids {
                c.nodes
                    .get_mut(&n)
                    .unwrap()
                    .member_up(Duration::ZERO, id.clone());
            }
        }
        c.drain_all();
        c
    }

    fn node(&mut self, n: &str) -> &mut Replicator {
        self.nodes.get_mut(&name(n)).unwrap()
    }

    fn schedule(&mut self, after: Duration, to: NodeName, work: Work) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), (to, work));
    }

    fn drain_all(&mut self) {
        let names: Vec<NodeName> = self.nodes.keys().cloned().collect();
        for n in names {
            self.drain(&n);
        }
    }

    fn drain(&mut self, n: &NodeName) {
        loop {
            let Some(effect) = self.nodes.get_mut(n).unwrap().poll_effect() else {
                return;
            };
            match effect {
                ReplEffect::Send { to, msg, payload } => {
                    assert_eq!(
                        msg.payload_len(),
                        payload.as_ref().map_or(0, |p| p.len() as u64)
                    );
                    self.schedule(
                        LATENCY,
                        to.name,
                        Work::Deliver {
                            from: n.clone(),
                            msg,
                            payload,
                        },
                    );
                }
                ReplEffect::Persist {
                    op,
                    agent,
                    snap,
                    body,
                } => self.schedule(
                    DISK,
                    n.clone(),
                    Work::Persisted {
                        op,
                        agent,
                        snap,
                        body,
                    },
                ),
                ReplEffect::Load { op, agent, seq } => {
                    self.schedule(DISK, n.clone(), Work::Loaded { op, agent, seq })
                }
                ReplEffect::PersistRecord { .. } => {}
                ReplEffect::DropAgent { agent } => {
                    let disk = self.disks.get_mut(n).unwrap();
                    disk.versions.retain(|(a, _), _| a != &agent);
                }
                ReplEffect::RegisterDone { reg, .. } => {
                    self.registered.insert((n.clone(), reg));
                }
                ReplEffect::RegisterFailed { reg, reason } => {
                    panic!("registration {reg} on {n} failed: {reason}");
                }
                ReplEffect::PersistAcceptor { op, agent, state } => self.schedule(
                    DISK,
                    n.clone(),
                    Work::AcceptorPersisted { op, agent, state },
                ),
                ReplEffect::PutDone { put, result } => {
                    self.puts.insert((n.clone(), put), result);
                }
                ReplEffect::GetDone { get, result } => {
                    self.gets.insert((n.clone(), get), result);
                }
                ReplEffect::Event(e) => self.events.push((n.clone(), e)),
            }
        }
    }

    fn step_until(&mut self, until: Duration) {
        loop {
            let next_work = self.queue.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .filter(|(n, _)| !self.down.contains(*n))
                .filter_map(|(n, r)| r.poll_timeout().map(|t| (t, n.clone())))
                .min();
            let at = match (next_work, &next_timer) {
                (Some(w), Some((t, _))) => w.min(*t),
                (Some(w), None) => w,
                (None, Some((t, _))) => *t,
                (None, None) => break,
            };
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            if next_timer.as_ref().is_some_and(|(t, _)| *t <= at)
                && next_work.is_none_or(|w| w > at || next_timer.as_ref().unwrap().0 < w)
            {
                let (_, n) = next_timer.unwrap();
                let now = self.now;
                self.nodes.get_mut(&n).unwrap().handle_timeout(now);
                self.drain(&n);
                continue;
            }
            let (_, (to, work)) = self.queue.pop_first().unwrap();
            if self.down.contains(&to) {
                continue;
            }
            let now = self.now;
            match work {
                Work::Deliver { from, msg, payload } => {
                    // Across the partition (one end cut off, the other not).
                    if self.down.contains(&from)
                        || self.cut_off.contains(&from) != self.cut_off.contains(&to)
                    {
                        continue;
                    }
                    let catalog = matches!(
                        msg,
                        ReplMsg::Records { .. }
                            | ReplMsg::CatalogDigest { .. }
                            | ReplMsg::Store { .. }
                    );
                    if catalog && self.deaf_to_records.contains(&to) {
                        continue;
                    }
                    if matches!(msg, ReplMsg::Adopt { .. })
                        && self.hold_adopts_to.as_ref() == Some(&to)
                    {
                        self.held_adopts.push((from, msg));
                        continue;
                    }
                    if matches!(msg, ReplMsg::Adopt { .. }) && self.adopts_to_lose > 0 {
                        self.adopts_to_lose -= 1;
                        continue;
                    }
                    self.nodes
                        .get_mut(&to)
                        .unwrap()
                        .handle_message(now, &from, msg, payload);
                }
                Work::Persisted {
                    op,
                    agent,
                    snap,
                    body,
                } => {
                    if self.failing_writes.contains(&to) {
                        self.nodes.get_mut(&to).unwrap().on_persisted(
                            now,
                            op,
                            Err("injected write failure".into()),
                        );
                        self.drain(&to);
                        continue;
                    }
                    let disk = self.disks.get_mut(&to).unwrap();
                    disk.versions
                        .insert((agent.clone(), snap.seq), (snap, body));
                    disk.corrupt.remove(&(agent.clone(), snap.seq));
                    let keep = self.config.keep;
                    let seqs: Vec<u64> = disk
                        .versions
                        .keys()
                        .filter(|(a, _)| a == &agent)
                        .map(|(_, s)| *s)
                        .collect();
                    for s in seqs.iter().take(seqs.len().saturating_sub(keep)) {
                        disk.versions.remove(&(agent.clone(), *s));
                    }
                    self.nodes
                        .get_mut(&to)
                        .unwrap()
                        .on_persisted(now, op, Ok(()));
                }
                Work::Loaded { op, agent, seq } => {
                    let disk = self.disks.get_mut(&to).unwrap();
                    let key = (agent, seq);
                    let result = if disk.corrupt.contains(&key) {
                        disk.versions.remove(&key);
                        Err(LoadError::Corrupt("checksum mismatch".into()))
                    } else {
                        disk.versions.get(&key).cloned().ok_or(LoadError::Missing)
                    };
                    self.nodes.get_mut(&to).unwrap().on_loaded(now, op, result);
                }
                Work::AcceptorPersisted { op, agent, state } => {
                    let disk = self.disks.get_mut(&to).unwrap();
                    disk.acceptors.insert(agent, state);
                    self.nodes
                        .get_mut(&to)
                        .unwrap()
                        .on_persisted(now, op, Ok(()));
                }
            }
            self.drain(&to);
        }
        self.now = self.now.max(until);
    }

    fn run(&mut self, d: Duration) {
        let until = self.now + d;
        self.step_until(until);
    }

    fn register(&mut self, n: &str, a: &str) {
        let now = self.now;
        let reg = self
            .node(n)
            .register(now, agent(a), "{}".into(), None)
            .unwrap();
        self.drain(&name(n));
        for _ in 0..10_000 {
            if self.registered.remove(&(name(n), reg)) {
                return;
            }
            self.run(Duration::from_millis(1));
        }
        panic!("register never answered");
    }

    fn put(
        &mut self,
        n: &str,
        a: &str,
        body: &[u8],
        ack: Option<AckMode>,
    ) -> Result<PutOutcome, PutError> {
        let now = self.now;
        let put = self
            .node(n)
            .put(now, &agent(a), Bytes::copy_from_slice(body), ack)?;
        self.drain(&name(n));
        for _ in 0..10_000 {
            if let Some(r) = self.puts.remove(&(name(n), put)) {
                return r;
            }
            self.run(Duration::from_millis(1));
        }
        panic!("put never answered");
    }

    fn get(&mut self, n: &str, a: &str, seq: Option<u64>) -> Result<(SnapMeta, Bytes), GetError> {
        let now = self.now;
        let get = self.node(n).get(now, &agent(a), seq)?;
        self.drain(&name(n));
        for _ in 0..10_000 {
            if let Some(r) = self.gets.remove(&(name(n), get)) {
                return r;
            }
            self.run(Duration::from_millis(1));
        }
        panic!("get never answered");
    }

    /// Crash: no more messages to or from it; the others declare it down.
    fn kill(&mut self, n: &str) {
        self.down.insert(name(n));
        let now = self.now;
        for (other, r) in self.nodes.iter_mut() {
            if !self.down.contains(other) {
                r.member_down(now, &name(n));
            }
        }
        self.drain_all();
    }

    /// Partition: `n` keeps running but no message reaches it or leaves it; after
    /// `detect` both sides declare the other down.
    fn cut(&mut self, n: &str, detect: Duration) {
        self.split(&[n], detect);
    }

    /// Partition: `group` keeps talking within itself, nothing crosses to the rest;
    /// after `detect` each side declares the other down.
    fn split(&mut self, group: &[&str], detect: Duration) {
        self.cut_off.extend(group.iter().map(|n| name(n)));
        self.run(detect);
        let now = self.now;
        let (inside, outside): (Vec<NodeName>, Vec<NodeName>) = self
            .nodes
            .keys()
            .filter(|n| !self.down.contains(*n))
            .cloned()
            .partition(|n| self.cut_off.contains(n));
        for i in &inside {
            for o in &outside {
                self.nodes.get_mut(o).unwrap().member_down(now, i);
                self.nodes.get_mut(i).unwrap().member_down(now, o);
            }
        }
        self.drain_all();
    }

    /// The owner of `a` as every live node not cut off sees it.
    fn owners(&self, a: &str) -> BTreeSet<(String, u64)> {
        self.nodes
            .iter()
            .filter(|(n, _)| !self.down.contains(*n) && !self.cut_off.contains(*n))
            .filter_map(|(_, r)| r.agent(&agent(a)))
            .map(|v| (v.record.owner.to_string(), v.record.epoch))
            .collect()
    }

    /// Nodes that own `a` (locally) right now, with the epoch.
    fn local_owners(&self, a: &str) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .filter(|(n, _)| !self.down.contains(*n))
            .filter_map(|(n, r)| {
                r.agent(&agent(a))
                    .filter(|v| v.local_owner && !r.is_fenced(&agent(a)))
                    .map(|v| (n.to_string(), v.record.epoch))
            })
            .collect()
    }

    /// The holders of `a` as `seen_by`'s record lists them.
    fn holders(&self, seen_by: &str, a: &str) -> Vec<String> {
        self.nodes[&name(seen_by)]
            .agent(&agent(a))
            .unwrap()
            .record
            .holders
            .iter()
            .map(|h| h.name.to_string())
            .collect()
    }

    fn events_of(&self, kind: &str) -> Vec<(String, ReplEvent)> {
        self.events
            .iter()
            .filter(|(_, e)| e.kind() == kind)
            .map(|(n, e)| (n.to_string(), e.clone()))
            .collect()
    }

    /// Holders (nodes with a copy on disk) of `a` seq `seq`, live ones only.
    fn live_copies(&self, a: &str, seq: u64) -> Vec<String> {
        self.disks
            .iter()
            .filter(|(n, _)| !self.down.contains(*n))
            .filter(|(_, d)| d.versions.contains_key(&(agent(a), seq)))
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// What `n`'s disk holds, as a restarted node's store would report it.
    fn disk_versions(&self, n: &str) -> Vec<StoredVersion> {
        self.disks[&name(n)]
            .versions
            .iter()
            .map(|((a, _), (m, _))| StoredVersion {
                agent: a.clone(),
                snap: *m,
            })
            .collect()
    }

    /// `n` restarts on its disk: a fresh replicator that knows only what the disk
    /// holds (its records as the node last persisted them), and the live members.
    fn restart_from_disk(&mut self, n: &str, seed: u64) {
        let records: Vec<vigil_protocol::AgentRecord> = self.nodes[&name(n)]
            .agents()
            .into_iter()
            .map(|v| v.record)
            .collect();
        let mut fresh = Replicator::new(self.ids[&name(n)].clone(), self.config.clone(), seed);
        fresh.load(self.disk_versions(n), records);
        let acceptors = self.disks[&name(n)]
            .acceptors
            .iter()
            .map(|(a, s)| (a.clone(), s.clone()))
            .collect();
        fresh.load_acceptors(acceptors);
        for (other, id) in &self.ids {
            if !self.down.contains(other) {
                fresh.member_up(self.now, id.clone());
            }
        }
        self.nodes.insert(name(n), fresh);
        self.drain(&name(n));
    }

    fn zone_of(&self, n: &str) -> String {
        self.ids[&name(n)].zone.to_string()
    }
}

fn six() -> Vec<(&'static str, &'static str)> {
    vec![
        ("a1", "za"),
        ("a2", "za"),
        ("b1", "zb"),
        ("b2", "zb"),
        ("c1", "zc"),
        ("c2", "zc"),
    ]
}

/// `agent-1` registered on `a1`, then `puts` acknowledged puts (version `i` is
/// `[i; 100]`).
fn agent_with_puts(c: &mut Cluster, puts: u8) {
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    for i in 1..=puts {
        c.put("a1", "agent-1", &[i; 100], None).unwrap();
    }
}

#[test]
fn a_quorum_put_lands_in_three_zones_and_any_node_reads_it() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    let out = c.put("a1", "agent-1", b"state one", None).unwrap();
    assert_eq!(out.seq, 1);
    assert_eq!(out.epoch, 1);
    assert!(out.stored_on.len() >= 2, "{out:?}");
    assert!(out.degraded.is_none(), "{out:?}");
    c.run(Duration::from_millis(50));
    let copies = c.live_copies("agent-1", 1);
    // The owner's own copy plus three holders, one per zone.
    assert_eq!(copies.len(), 4, "{copies:?}");
    let zones: BTreeSet<String> = copies
        .iter()
        .filter(|n| n.as_str() != "a1")
        .map(|n| c.zone_of(n))
        .collect();
    assert_eq!(zones.len(), 3, "{copies:?}");
    for reader in ["a2", "b1", "c2"] {
        let (meta, bytes) = c.get(reader, "agent-1", None).unwrap();
        assert_eq!(
            (meta.seq, &bytes[..]),
            (1, &b"state one"[..]),
            "from {reader}"
        );
    }
}

#[test]
fn the_latest_acknowledged_version_survives_the_owner_and_a_holder() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    agent_with_puts(&mut c, 7);
    c.run(Duration::from_millis(50));
    let holders: Vec<String> = c
        .live_copies("agent-1", 7)
        .into_iter()
        .filter(|n| n != "a1")
        .collect();
    c.kill("a1");
    c.kill(&holders[0]);
    let reader = c
        .nodes
        .keys()
        .map(|n| n.to_string())
        .find(|n| !c.down.contains(&name(n)) && !holders.contains(n))
        .unwrap();
    let (meta, bytes) = c.get(&reader, "agent-1", None).unwrap();
    assert_eq!(meta.seq, 7);
    assert_eq!(&bytes[..], &[7u8; 100][..]);
    // Only the last five versions are kept.
    assert!(c.get(&reader, "agent-1", Some(2)).is_err());
    assert_eq!(c.get(&reader, "agent-1", Some(3)).unwrap().0.seq, 3);
}

#[test]
fn repair_restores_three_copies_in_three_zones_after_a_holder_dies() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"v1", None).unwrap();
    c.put("a1", "agent-1", b"v2", None).unwrap();
    c.run(Duration::from_millis(50));
    let holders: Vec<String> = c
        .live_copies("agent-1", 2)
        .into_iter()
        .filter(|n| n != "a1")
        .collect();
    assert_eq!(holders.len(), 3);
    // A holder outside the owner's zone, so its zone still has a candidate left.
    let victim = holders
        .iter()
        .find(|n| c.zone_of(n) != "za")
        .unwrap()
        .clone();
    c.kill(&victim);
    c.run(Duration::from_secs(3));
    let now: Vec<String> = c
        .live_copies("agent-1", 2)
        .into_iter()
        .filter(|n| n != "a1")
        .collect();
    assert_eq!(now.len(), 3, "{now:?}");
    let zones: BTreeSet<String> = now.iter().map(|n| c.zone_of(n)).collect();
    assert_eq!(zones.len(), 3, "{now:?}");
    // Older kept versions were copied too.
    assert_eq!(c.live_copies("agent-1", 1).len(), 4);
    assert!(
        c.events
            .iter()
            .any(|(_, e)| matches!(e, ReplEvent::RepairDone { .. }))
    );
    // Every node's catalog agrees on the new holders after anti-entropy.
    c.run(Duration::from_secs(12));
    let views: BTreeSet<Vec<String>> = c
        .nodes
        .iter()
        .filter(|(n, _)| !c.down.contains(*n))
        .map(|(_, r)| {
            let mut h: Vec<String> = r.agents()[0]
                .record
                .holders
                .iter()
                .map(|h| h.name.to_string())
                .collect();
            h.sort();
            h
        })
        .collect();
    assert_eq!(views.len(), 1, "{views:?}");
}

#[test]
fn a_taken_over_agent_fences_its_old_owner() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"old owner", None).unwrap();
    c.run(Duration::from_millis(50));
    // b1 takes the agent over (epoch 2) while a1 has not heard of it yet: cut the
    // record's way to a1 by registering and putting before a1 processes anything.
    c.register("b1", "agent-1");
    let out = c.put("b1", "agent-1", b"new owner", None).unwrap();
    assert_eq!((out.epoch, out.seq), (2, 2));
    // a1 learnt of the takeover from the published record: refused locally.
    let err = c.put("a1", "agent-1", b"stale", None).unwrap_err();
    assert!(
        matches!(
            err,
            PutError::NotOwner { epoch: 2, .. } | PutError::Fenced { seen: 2, .. }
        ),
        "{err:?}"
    );
    let (meta, bytes) = c.get("c1", "agent-1", None).unwrap();
    assert_eq!(
        (meta.epoch, meta.seq, &bytes[..]),
        (2, 2, &b"new owner"[..])
    );
}

#[test]
fn a_holder_refuses_a_lower_epoch_even_when_the_owner_does_not_know() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"one", None).unwrap();
    c.run(Duration::from_millis(50));
    // b1 takes over; no catalog message reaches a1, which still believes it owns the
    // agent at epoch 1.
    c.deaf_to_records.insert(name("a1"));
    c.register("b1", "agent-1");
    c.put("b1", "agent-1", b"two", Some(AckMode::All)).unwrap();
    // a1's put goes out at epoch 1; the holders that stored epoch 2 refuse it.
    let now = c.now;
    let put = c
        .node("a1")
        .put(now, &agent("agent-1"), Bytes::from_static(b"stale"), None)
        .unwrap();
    c.drain(&name("a1"));
    c.run(Duration::from_millis(100));
    let result = c.puts.remove(&(name("a1"), put)).unwrap();
    assert!(
        matches!(
            result,
            Err(PutError::Fenced {
                seen: 2,
                ours: 1,
                ..
            })
        ),
        "{result:?}"
    );
    assert!(
        c.events
            .iter()
            .any(|(n, e)| n.as_str() == "a1" && matches!(e, ReplEvent::AgentLost { epoch: 2, .. }))
    );
    // And the cluster still reads the epoch-2 version.
    let (meta, _) = c.get("c2", "agent-1", None).unwrap();
    assert_eq!((meta.epoch, meta.seq), (2, 2));
}

#[test]
fn an_owner_that_restarts_reclaims_its_agents_and_never_reuses_a_seq() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"one", None).unwrap();
    // Seq 2 reaches the holders but a1 crashes before its own disk has it.
    let now = c.now;
    c.node("a1")
        .put(
            now,
            &agent("agent-1"),
            Bytes::from_static(b"two"),
            Some(AckMode::All),
        )
        .unwrap();
    c.drain(&name("a1"));
    c.queue
        .retain(|_, (to, w)| !(to.as_str() == "a1" && matches!(w, Work::Persisted { .. })));
    c.run(Duration::from_millis(50));
    assert_eq!(c.disk_versions("a1").len(), 1, "only seq 1 on a1's disk");
    c.restart_from_disk("a1", 5);
    // Before it has asked the holders, a put is refused with a clear reason.
    let err = c.put("a1", "agent-1", b"too early", None).unwrap_err();
    assert!(matches!(err, PutError::RegisterAgain { .. }), "{err:?}");
    c.run(Duration::from_secs(8));
    let out = c.put("a1", "agent-1", b"three", None).unwrap();
    assert_eq!(
        (out.epoch, out.seq),
        (1, 3),
        "seq 2 is on the holders: go on from it"
    );
}

#[test]
fn a_corrupt_local_copy_is_never_served_and_is_fetched_again() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"precious", Some(AckMode::All))
        .unwrap();
    c.run(Duration::from_millis(50));
    let holder = c
        .live_copies("agent-1", 1)
        .into_iter()
        .find(|n| n != "a1")
        .unwrap();
    c.disks
        .get_mut(&name(&holder))
        .unwrap()
        .corrupt
        .insert((agent("agent-1"), 1));
    let (meta, bytes) = c.get(&holder, "agent-1", None).unwrap();
    assert_eq!((meta.seq, &bytes[..]), (1, &b"precious"[..]));
    c.run(Duration::from_millis(100));
    assert!(c.events.iter().any(
        |(n, e)| n.as_str() == holder && matches!(e, ReplEvent::SnapshotCorrupt { seq: 1, .. })
    ));
    assert!(c.events.iter().any(
        |(n, e)| n.as_str() == holder && matches!(e, ReplEvent::SnapshotHealed { seq: 1, .. })
    ));
    assert!(
        c.disks[&name(&holder)]
            .versions
            .contains_key(&(agent("agent-1"), 1))
    );
}

#[test]
fn fewer_zones_than_copies_is_reported_degraded_and_heals_when_a_zone_returns() {
    let nodes = [("a1", "za"), ("a2", "za"), ("b1", "zb"), ("b2", "zb")];
    let mut c = Cluster::new(&nodes, ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    let out = c.put("a1", "agent-1", b"x", None).unwrap();
    let degraded = out.degraded.expect("two zones for three copies");
    assert_eq!((degraded.copies, degraded.zones), (3, 2));
    // A node of a third zone joins: one copy moves there.
    let id = node_id("c1", "zc", 7100);
    let mut r = Replicator::new(id.clone(), ReplicationConfig::default(), 7);
    for other in c.ids.values() {
        r.member_up(c.now, other.clone());
    }
    c.ids.insert(name("c1"), id.clone());
    c.nodes.insert(name("c1"), r);
    c.disks.insert(name("c1"), Disk::default());
    let now = c.now;
    for (n, r) in c.nodes.iter_mut() {
        if n.as_str() != "c1" {
            r.member_up(now, id.clone());
        }
    }
    c.drain_all();
    c.run(Duration::from_secs(3));
    let copies: Vec<String> = c
        .live_copies("agent-1", 1)
        .into_iter()
        .filter(|n| n != "a1")
        .collect();
    let zones: BTreeSet<String> = copies.iter().map(|n| c.zone_of(n)).collect();
    assert_eq!((copies.len(), zones.len()), (3, 3), "{copies:?}");
    assert!(
        c.events
            .iter()
            .any(|(_, e)| matches!(e, ReplEvent::AgentRestored { .. }))
    );
}

#[test]
fn a_put_that_cannot_reach_its_quorum_says_what_was_stored() {
    let nodes = [("a1", "za"), ("b1", "zb"), ("c1", "zc"), ("d1", "zd")];
    let mut c = Cluster::new(&nodes, ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"x", None).unwrap();
    // Two holders vanish without being declared down yet: their stores go unanswered.
    c.down.insert(name("b1"));
    c.down.insert(name("c1"));
    let err = c.put("a1", "agent-1", b"y", None).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            PutError::NotAcknowledged {
                needed: 2,
                stored: 1,
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("d1"), "{text}");
    assert!(text.contains("no answer"), "{text}");
}

/// Holders of every agent as `owner` sees them.
fn holders_of(c: &Cluster, owner: &str) -> BTreeMap<String, Vec<String>> {
    c.nodes[&name(owner)]
        .agents()
        .into_iter()
        .map(|v| {
            (
                v.record.agent.to_string(),
                v.record
                    .holders
                    .iter()
                    .map(|h| h.name.to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Five agents of 5 versions x 20 KiB each on a1, then a holder of them dies.
fn slow_repair_setup(rate: u64) -> (Cluster, String, u64) {
    let config = ReplicationConfig {
        repair_bytes_per_sec: rate,
        ..ReplicationConfig::default()
    };
    let mut c = Cluster::new(&six(), config);
    for i in 0..5 {
        c.register("a1", &format!("agent-{i}"));
    }
    c.run(Duration::from_millis(50));
    for i in 0..5 {
        for v in 0..5u8 {
            c.put(
                "a1",
                &format!("agent-{i}"),
                &[v; 20 * 1024],
                Some(AckMode::All),
            )
            .unwrap();
        }
    }
    c.run(Duration::from_millis(50));
    // The holder outside zone a that holds the most agents.
    let mut count: BTreeMap<String, u64> = BTreeMap::new();
    for hs in holders_of(&c, "a1").values() {
        for h in hs {
            if c.zone_of(h) != "za" {
                *count.entry(h.clone()).or_default() += 1;
            }
        }
    }
    let (victim, agents) = count.into_iter().max_by_key(|(_, n)| *n).unwrap();
    let bytes = agents * 5 * 20 * 1024;
    c.kill(&victim);
    (c, victim, bytes)
}

fn repaired(c: &Cluster, victim: &str) -> bool {
    holders_of(c, "a1")
        .values()
        .all(|hs| hs.len() == 3 && !hs.iter().any(|h| h == victim))
}

#[test]
fn repair_copies_no_faster_than_its_rate() {
    let rate = 100 * 1024;
    let (mut c, victim, bytes) = slow_repair_setup(rate);
    let start = c.now;
    while !repaired(&c, &victim) {
        assert!(
            c.now - start < Duration::from_secs(120),
            "repair never finished"
        );
        c.run(Duration::from_millis(100));
    }
    let took = (c.now - start).as_secs_f64();
    // One second of burst plus one transfer started on the last tokens, then the rate.
    let floor = (bytes as f64 - rate as f64 - 20.0 * 1024.0) / rate as f64;
    assert!(
        took >= floor,
        "copied {bytes} bytes in {took:.2} s at {rate} B/s"
    );
    assert!(
        took <= floor + 5.0,
        "copied {bytes} bytes in {took:.2} s at {rate} B/s"
    );
}

#[test]
fn repair_resumes_after_the_owner_restarts_mid_way() {
    let (mut c, victim, _) = slow_repair_setup(40 * 1024);
    c.run(Duration::from_secs(2));
    assert!(!repaired(&c, &victim), "the repair should still be running");
    // a1 restarts on its disk: a fresh replicator knows only what the disk holds.
    c.restart_from_disk("a1", 42);
    let start = c.now;
    while !repaired(&c, &victim) {
        assert!(
            c.now - start < Duration::from_secs(120),
            "repair did not resume"
        );
        c.run(Duration::from_millis(100));
    }
}

/// Regression (swarm seeds 97, 190, 311, 321, 388, 418 and 463 at `--max-nodes 20
/// --replication on`, I2): a
/// holder back from a partition often drops the owner's first question about what it
/// holds, because it does not know the owner as live yet. The owner took that silence
/// for "up to date", did not ask again while the live holders stayed the same, and the
/// holder kept a stale copy for good once the puts stopped. A holder that does not
/// answer is now sent the latest version.
#[test]
fn a_holder_that_does_not_answer_the_owners_question_is_sent_the_latest_version() {
    // Four nodes: the owner and exactly three possible holders, so nothing replaces
    // the one cut off and it stays listed.
    let four = [("a1", "za"), ("a2", "za"), ("b1", "zb"), ("c1", "zc")];
    let mut c = Cluster::new(&four, ReplicationConfig::default());
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", &[1; 100], None).unwrap();
    c.run(Duration::from_millis(500));
    assert!(c.live_copies("agent-1", 1).contains(&"c1".to_string()));
    // c1 is cut off and misses seqs 2 and 3 (acknowledged by a2 and b1).
    c.cut("c1", Duration::from_secs(2));
    for i in 2..=3u8 {
        let out = c.put("a1", "agent-1", &[i; 100], None).unwrap();
        assert_eq!(out.seq, u64::from(i));
    }
    // The owner restarts (so it no longer remembers c1 as behind) and reclaims.
    c.restart_from_disk("a1", 7);
    let now = c.now;
    c.node("a1").member_down(now, &name("c1"));
    c.drain_all();
    c.run(Duration::from_secs(8));
    // The partition heals, and the owner sees c1 before c1 sees the owner: c1 drops
    // the owner's question (it answers only members it knows).
    c.cut_off.clear();
    let now = c.now;
    let c1 = c.ids[&name("c1")].clone();
    c.node("a1").member_up(now, c1.clone());
    c.node("a2").member_up(now, c1.clone());
    c.node("b1").member_up(now, c1);
    c.drain_all();
    // Long enough for every question the owner asks meanwhile to go unanswered.
    c.run(Duration::from_secs(5));
    let now = c.now;
    for other in ["a1", "a2", "b1"] {
        let id = c.ids[&name(other)].clone();
        c.node("c1").member_up(now, id);
    }
    c.drain_all();
    c.run(Duration::from_secs(10));
    let record = c.nodes[&name("a1")]
        .agent(&agent("agent-1"))
        .unwrap()
        .record;
    assert!(record.is_holder(&name("c1")), "{record:?}");
    let with_3 = c.live_copies("agent-1", 3);
    assert!(
        with_3.contains(&"c1".to_string()),
        "c1 never got seq 3 (copies on {with_3:?})"
    );
}

/// A holder that restarts without being declared down (it is back under a new
/// generation before anyone notices it was gone) may have lost versions since it last
/// answered; its owner asks it again.
#[test]
fn a_holder_back_under_a_new_generation_is_asked_again_what_it_holds() {
    let four = [("a1", "za"), ("a2", "za"), ("b1", "zb"), ("c1", "zc")];
    let mut c = Cluster::new(&four, ReplicationConfig::default());
    agent_with_puts(&mut c, 2);
    c.run(Duration::from_secs(2));
    assert!(c.live_copies("agent-1", 2).contains(&"c1".to_string()));
    // c1 restarts on a disk that lost seq 2, under generation 2.
    c.disks
        .get_mut(&name("c1"))
        .unwrap()
        .versions
        .remove(&(agent("agent-1"), 2));
    let old = c.ids[&name("c1")].clone();
    let renewed = NodeId::new(old.name.clone(), old.addr, old.zone.clone(), 2);
    c.ids.insert(name("c1"), renewed.clone());
    c.restart_from_disk("c1", 12);
    let now = c.now;
    for other in ["a1", "a2", "b1"] {
        c.node(other).member_up(now, renewed.clone());
    }
    c.drain_all();
    c.run(Duration::from_secs(10));
    let with_2 = c.live_copies("agent-1", 2);
    assert!(
        with_2.contains(&"c1".to_string()),
        "c1 never got seq 2 back (copies on {with_2:?})"
    );
}

/// Regression (swarm seed 134 at `--max-nodes 20 --replication on`, I1): an owner
/// whose own copy of the latest acknowledged version was gone (found corrupt, and its
/// heal failed) saw two holders that had it declared down and re-placed the copies from
/// what it had, one version older. It published the new holders, the replaced ones
/// (alive) deleted their copies on the new record, and the acknowledged version was on
/// no live disk. Without the latest version the writer now leaves the holders alone.
#[test]
fn an_owner_without_the_latest_version_does_not_replace_the_holders_that_have_it() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    agent_with_puts(&mut c, 3);
    c.run(Duration::from_millis(500));
    let holders = c.holders("a1", "agent-1");
    assert_eq!(holders.len(), 3, "{holders:?}");
    // The owner loses its copy of seq 3 (a corrupt file moved aside) and restarts
    // on what is left; it learns of seq 3 from its holders when it reclaims.
    c.disks
        .get_mut(&name("a1"))
        .unwrap()
        .versions
        .remove(&(agent("agent-1"), 3));
    c.restart_from_disk("a1", 9);
    // Its disk refuses the fetched copy, so it stays without seq 3.
    c.failing_writes.insert(name("a1"));
    c.run(Duration::from_secs(8));
    c.failing_writes.clear();
    assert!(!c.live_copies("agent-1", 3).contains(&"a1".to_string()));
    // Its holders are declared down by the owner alone (they are alive and still
    // hear it) while its lease still stands: there is nobody to fetch seq 3 from.
    let now = c.now;
    for h in &holders {
        c.node("a1").member_down(now, &name(h));
    }
    c.drain_all();
    // Long enough for a new record to reach them through the other nodes.
    c.run(Duration::from_secs(15));
    let with_3 = c.live_copies("agent-1", 3);
    assert!(
        with_3.len() >= 2,
        "seq 3 (acknowledged) left on {with_3:?} only (holders were {holders:?})"
    );
}

// ---- recovery -----------------------------------------------------------------------

/// A cluster where `agent-1` is owned by a1 with seven acknowledged puts.
fn recovery_setup() -> Cluster {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    agent_with_puts(&mut c, 7);
    c.run(Duration::from_millis(500));
    c
}

#[test]
fn a_dead_owners_agent_is_adopted_once_with_its_latest_acknowledged_seq() {
    let mut c = recovery_setup();
    c.kill("a1");
    c.run(Duration::from_secs(5));
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    let (target, event) = &adopted[0];
    let ReplEvent::AgentAdopted { epoch, seq, .. } = event else {
        unreachable!()
    };
    assert_eq!((*epoch, *seq), (2, 7), "{event:?}");
    assert_eq!(c.events_of("coordinator_elected").len(), 1);
    // Every live node agrees, and the new owner's puts continue the seqs.
    assert_eq!(c.owners("agent-1"), BTreeSet::from([(target.clone(), 2)]));
    assert_eq!(c.local_owners("agent-1"), vec![(target.clone(), 2)]);
    let out = c
        .put(target.as_str(), "agent-1", b"after recovery", None)
        .unwrap();
    assert_eq!((out.epoch, out.seq), (2, 8));
}

/// A holder one version behind when the owner dies is brought up to date by the new
/// owner, with no later put. The new owner asks the holders for their latest versions
/// before its own heal has fetched the newest one: the behind holder has to be judged
/// against the newest answer, not against the new owner's copy (none yet).
#[test]
fn a_holder_behind_at_the_owners_crash_is_brought_up_to_date_by_the_new_owner() {
    let mut c = recovery_setup();
    let holders = c.holders("a1", "agent-1");
    // The holder in the owner's zone: the new owner comes from another zone, so it
    // is not the holder that is behind.
    assert!(holders.contains(&"a2".to_string()), "{holders:?}");
    // The new owner holds no copy (a standby host that is not a holder), so it has
    // nothing of its own to compare the holders' answers with.
    let standby = ["b1", "b2", "c1", "c2"]
        .into_iter()
        .find(|n| !holders.contains(&n.to_string()))
        .unwrap();
    c.node(standby).set_node_settings(true, 100);
    c.drain_all();
    c.run(Duration::from_millis(100));
    // a2 misses seq 8 (the put is acknowledged by the other two) and the repair
    // that would re-send it; the owner dies before a2 hears again.
    c.deaf_to_records.insert(name("a2"));
    let out = c.put("a1", "agent-1", &[8u8; 100], None).unwrap();
    assert_eq!(out.seq, 8);
    assert!(!c.live_copies("agent-1", 8).contains(&"a2".to_string()));
    c.kill("a1");
    c.deaf_to_records.clear();
    c.run(Duration::from_secs(10));
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    let (owner, _) = &adopted[0];
    assert_eq!(owner, standby);
    let record = c.nodes[&name(owner)]
        .agent(&agent("agent-1"))
        .unwrap()
        .record;
    assert_eq!(record.holders.len(), 3, "{record:?}");
    let with_8 = c.live_copies("agent-1", 8);
    for h in &record.holders {
        assert!(
            with_8.contains(&h.name.to_string()),
            "holder {} lacks seq 8 (copies on {with_8:?}, holders {:?})",
            h.name,
            record.holders
        );
    }
}

#[test]
fn a_standby_node_outside_the_failed_zone_is_preferred() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    for n in ["a1", "a2", "b1", "b2", "c1"] {
        c.node(n).set_node_settings(false, 100);
    }
    c.node("c2").set_node_settings(true, 100);
    c.drain_all();
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"x", None).unwrap();
    c.run(Duration::from_secs(1));
    c.kill("a1");
    c.run(Duration::from_secs(5));
    assert_eq!(c.owners("agent-1"), BTreeSet::from([("c2".to_string(), 2)]));
}

#[test]
fn an_isolated_node_adopts_nothing() {
    let mut c = recovery_setup();
    for n in ["a2", "b1", "b2", "c1"] {
        c.node(n).set_node_isolated(true);
    }
    c.drain_all();
    c.run(Duration::from_millis(100));
    c.kill("a1");
    c.run(Duration::from_secs(5));
    assert_eq!(c.owners("agent-1"), BTreeSet::from([("c2".to_string(), 2)]));
}

#[test]
fn the_coordinator_dying_mid_way_does_not_stop_the_recovery() {
    let mut c = recovery_setup();
    c.kill("a1");
    // Run until a decree is chosen, then kill the coordinator and the target before
    // the target confirms.
    for _ in 0..5000 {
        if !c.events_of("coordinator_elected").is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    let elected = c.events_of("coordinator_elected");
    assert_eq!(elected.len(), 1, "{elected:?}");
    let (coordinator, ReplEvent::CoordinatorElected { target, .. }) = elected[0].clone() else {
        unreachable!()
    };
    let holders = c.holders("c2", "agent-1");
    c.kill(&coordinator);
    // Also kill the target before it confirms when that leaves a majority of holders
    // (then the decree's epoch is dead and the next election moves the agent on).
    let target_is_holder = holders.contains(&target.to_string());
    if target.as_str() != coordinator
        && !target_is_holder
        && c.events_of("agent_adopted").is_empty()
    {
        c.kill(target.as_str());
    }
    c.run(Duration::from_secs(10));
    let owners = c.owners("agent-1");
    assert_eq!(owners.len(), 1, "{owners:?}");
    let (owner, epoch) = owners.into_iter().next().unwrap();
    assert!(!c.down.contains(&name(&owner)), "owner {owner} is down");
    assert!(epoch >= 2);
    // One owner per epoch across the whole run.
    let mut per_epoch: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (n, e) in c.events_of("agent_adopted") {
        if let ReplEvent::AgentAdopted { epoch, .. } = e {
            per_epoch.entry(epoch).or_default().insert(n);
        }
    }
    assert!(per_epoch.values().all(|o| o.len() == 1), "{per_epoch:?}");
    assert_eq!(c.local_owners("agent-1").len(), 1);
    let (_, bytes) = c.get(&owner, "agent-1", None).unwrap();
    assert_eq!(&bytes[..], &[7u8; 100][..]);
}

#[test]
fn a_holder_that_learns_of_the_death_late_does_not_compete_with_the_running_election() {
    let mut c = recovery_setup();
    let mut holders: Vec<NodeName> = c.holders("a2", "agent-1").iter().map(|h| name(h)).collect();
    assert_eq!(holders.len(), 3);
    // Best-placed proposer first.
    holders.sort_by_key(|h| std::cmp::Reverse(placement::score(&agent("agent-1"), h)));
    let (late, worst) = (holders[..2].to_vec(), holders[2].clone());
    // a1 crashes; every node but the two better-placed holders sees it at once. The
    // worst-placed holder's back-off (two ranks) runs out and it starts the election;
    // the others learn of the death while that round is in flight.
    // As with SWIM's detection times, the leases a1 was granted run out before anyone
    // declares it down.
    c.down.insert(name("a1"));
    c.run(ReplicationConfig::default().lease);
    let now = c.now;
    for (n, r) in c.nodes.iter_mut() {
        if !late.contains(n) && n.as_str() != "a1" {
            r.member_down(now, &name("a1"));
        }
    }
    c.drain_all();
    for _ in 0..10_000 {
        if c.events_of("election_started").len() == 1 {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    let started = c.events_of("election_started");
    assert_eq!(started[0].0, worst.as_str(), "{started:?}");
    c.run(Duration::from_millis(1));
    let now = c.now;
    for n in &late {
        c.node(n.as_str()).member_down(now, &name("a1"));
    }
    c.drain_all();
    c.run(Duration::from_secs(5));
    // One proposer ran, in one round; the late holders held back instead of
    // pre-empting it with better-placed ballots.
    let proposers: BTreeSet<String> = c
        .events_of("election_started")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(proposers, BTreeSet::from([worst.to_string()]));
    let elected = c.events_of("coordinator_elected");
    assert_eq!(elected.len(), 1, "{elected:?}");
    assert_eq!(c.events_of("agent_adopted").len(), 1);
    assert_eq!(c.owners("agent-1").len(), 1);
}

/// Makes one host that holds no copy of `agent-1` the only standby, so that host is
/// the target of its recovery and not the coordinator (a holder); returns it.
fn standby_outside_holders(c: &mut Cluster) -> &'static str {
    let holders: BTreeSet<String> = c.holders("a2", "agent-1").into_iter().collect();
    let standby = ["a2", "b1", "b2", "c1", "c2"]
        .into_iter()
        .find(|n| !holders.contains(*n))
        .unwrap();
    for n in ["a2", "b1", "b2", "c1", "c2"] {
        c.node(n).set_node_settings(n == standby, 100);
    }
    c.drain_all();
    c.run(Duration::from_millis(100));
    standby
}

#[test]
fn a_lost_adopt_message_is_sent_again() {
    let mut c = recovery_setup();
    let standby = standby_outside_holders(&mut c);
    c.adopts_to_lose = 1;
    c.kill("a1");
    for _ in 0..5000 {
        if !c.events_of("coordinator_elected").is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    let elected_at = c.now;
    for _ in 0..5000 {
        if !c.events_of("agent_adopted").is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    // Adopted on the resend, well before the coordinator would give up on the target
    // (3 s) and write it into the record unconfirmed.
    assert_eq!(c.adopts_to_lose, 0, "the first Adopt was not lost");
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0].0, standby);
    assert!(
        c.now - elected_at < Duration::from_secs(1),
        "{:?}",
        c.now - elected_at
    );
    c.run(Duration::from_secs(5));
    assert_eq!(c.events_of("agent_adopted").len(), 1);
    assert_eq!(c.local_owners("agent-1").len(), 1);
}

/// Found by the fault campaign on real processes (`campaign --seed 2`): the target of
/// an epoch's decree was cut off and written into the record unconfirmed, the next
/// epoch went to another host, and then the first epoch's `Adopt` (held in a QUIC
/// stream across the partition) reached the old target, which knew nothing of the
/// later epoch yet. It adopted and started the agent: two live owners until its first
/// lease renewal was refused. The target now confirms the epoch with its holders
/// before it owns the agent, and a holder that knows the later epoch refuses.
#[test]
fn a_late_adopt_for_an_epoch_adopted_elsewhere_since_starts_nothing() {
    let mut c = recovery_setup();
    let standby = standby_outside_holders(&mut c);
    c.hold_adopts_to = Some(name(standby));
    c.kill("a1");
    for _ in 0..5000 {
        if !c.held_adopts.is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    let (coordinator, elected) = c.events_of("coordinator_elected")[0].clone();
    let ReplEvent::CoordinatorElected { epoch, target, .. } = elected else {
        unreachable!()
    };
    assert_eq!((epoch, target.as_str()), (2, standby));
    // The target is cut off and declared down: the coordinator writes it into the
    // record, and the holders elect again (epoch 3) for another host.
    c.cut(standby, Duration::from_millis(200));
    c.run(Duration::from_secs(5));
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    let (second, event) = adopted[0].clone();
    assert!(
        matches!(event, ReplEvent::AgentAdopted { epoch: 3, .. }),
        "{event:?}"
    );
    assert_ne!(second, standby);
    // The partition heals, and the held Adopt for epoch 2 reaches the old target
    // before any record of epoch 3 does.
    c.cut_off.clear();
    let now = c.now;
    let ids: Vec<NodeId> = c.ids.values().cloned().collect();
    for id in &ids {
        for n in ["a2", "b1", "b2", "c1", "c2"] {
            if id.name != name(n) && !c.down.contains(&id.name) {
                c.node(n).member_up(now, id.clone());
            }
        }
    }
    c.hold_adopts_to = None;
    let (from, msg) = c.held_adopts.pop().unwrap();
    assert_eq!(from, name(&coordinator));
    // No record reaches the old target for now: it learns of epoch 3 only from the
    // holders it asks to confirm epoch 2.
    c.deaf_to_records.insert(name(standby));
    c.node(standby).handle_message(now, &from, msg, None);
    c.drain_all();
    c.run(Duration::from_millis(500));
    assert_eq!(c.events_of("agent_adopted").len(), 1, "{:?}", c.events);
    // It was refused with the later epoch, and keeps it.
    let err = c.put(standby, "agent-1", b"zombie", None).unwrap_err();
    assert!(matches!(err, PutError::Fenced { seen: 3, .. }), "{err:?}");
    // Resends of the old Adopt are ignored too.
    for (from, msg) in std::mem::take(&mut c.held_adopts) {
        let now = c.now;
        c.node(standby).handle_message(now, &from, msg, None);
    }
    c.drain_all();
    c.deaf_to_records.clear();
    c.run(Duration::from_secs(5));
    let adopted = c.events_of("agent_adopted");
    assert_eq!(
        adopted.len(),
        1,
        "the late Adopt was carried out: {adopted:?}"
    );
    assert!(
        c.events_of("agent_owned").iter().all(|(n, _)| n != standby),
        "{:?}",
        c.events
    );
    assert_eq!(c.local_owners("agent-1"), vec![(second.clone(), 3)]);
    assert_eq!(c.owners("agent-1"), BTreeSet::from([(second, 3)]));
}

/// The target of an adoption that reaches fewer than a quorum of the agent's holders
/// (here only the coordinator, cut off with it) does not own the agent: the other
/// holders elect another owner, and the target never runs it alongside.
#[test]
fn a_target_cut_off_from_most_holders_does_not_adopt() {
    let mut c = recovery_setup();
    let standby = standby_outside_holders(&mut c);
    c.hold_adopts_to = Some(name(standby));
    c.kill("a1");
    for _ in 0..5000 {
        if !c.held_adopts.is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    let (coordinator, _) = c.events_of("coordinator_elected")[0].clone();
    c.split(&[standby, coordinator.as_str()], Duration::from_millis(200));
    c.hold_adopts_to = None;
    let (from, msg) = c.held_adopts.pop().unwrap();
    let now = c.now;
    c.node(standby).handle_message(now, &from, msg, None);
    c.drain_all();
    c.run(Duration::from_secs(15));
    let on_target: Vec<_> = c
        .events
        .iter()
        .filter(|(n, e)| {
            n.as_str() == standby && matches!(e.kind(), "agent_adopted" | "agent_owned")
        })
        .collect();
    assert!(on_target.is_empty(), "{on_target:?}");
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    let (owner, event) = adopted[0].clone();
    assert!(
        matches!(event, ReplEvent::AgentAdopted { epoch: 3, .. }),
        "{event:?}"
    );
    assert_eq!(c.local_owners("agent-1"), vec![(owner, 3)]);
}

#[test]
fn holders_waiting_for_a_coordinator_go_ahead_once_it_is_declared_down() {
    let mut c = recovery_setup();
    let standby = standby_outside_holders(&mut c);
    c.kill("a1");
    for _ in 0..5000 {
        if !c.events_of("coordinator_elected").is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    // The coordinator's Adopts are lost until it dies; the other holders have accepted
    // its decree and hold their own rounds back for it (up to 4 s) until they see it
    // down.
    c.adopts_to_lose = u32::MAX;
    c.run(Duration::from_millis(500));
    let (coordinator, _) = c.events_of("coordinator_elected")[0].clone();
    c.kill(&coordinator);
    c.adopts_to_lose = 0;
    let killed_at = c.now;
    for _ in 0..10_000 {
        if !c.events_of("agent_adopted").is_empty() {
            break;
        }
        c.run(Duration::from_millis(1));
    }
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0].0, standby);
    // A back-off to notice, the ranks' back-offs, one round: well under the hold.
    assert!(
        c.now - killed_at < Duration::from_millis(600),
        "{:?}",
        c.now - killed_at
    );
}

#[test]
fn without_a_majority_of_holders_nothing_is_adopted() {
    let mut c = recovery_setup();
    let holders = c.holders("a2", "agent-1");
    assert_eq!(holders.len(), 3);
    c.kill("a1");
    c.kill(&holders[0]);
    c.kill(&holders[1]);
    c.run(Duration::from_secs(10));
    assert!(c.events_of("agent_adopted").is_empty());
    assert_eq!(c.owners("agent-1"), BTreeSet::from([("a1".to_string(), 1)]));
}

#[test]
fn a_cut_off_owner_fences_its_agent_before_anyone_adopts_it() {
    let mut c = recovery_setup();
    let cut_at = c.now;
    // Detection takes longer than the lease (as with the LAN profile).
    c.cut("a1", Duration::from_millis(1200));
    c.run(Duration::from_secs(5));
    let fenced = c.events_of("agent_fenced");
    assert_eq!(fenced.len(), 1, "{fenced:?}");
    assert_eq!(fenced[0].0, "a1");
    let adopted = c.events_of("agent_adopted");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    // a1 is fenced (the test checks it through local_owners) and the adopter owns it.
    let owners = c.local_owners("agent-1");
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_ne!(owners[0].0, "a1");
    assert!(c.now > cut_at);
    let err = c.put("a1", "agent-1", b"zombie", None).unwrap_err();
    assert_eq!(err.code(), "agent_fenced", "{err:?}");
}

/// Found by the simulator (swarm seeds 55 and 60): an owner fenced on the minority
/// side of a partition re-placed its copies onto the nodes on its side, which had
/// never seen the election the old holders held, and their leases unfenced it: a
/// second electorate and later two owners in one epoch. A fenced owner leaves its
/// holders as they are.
#[test]
fn a_fenced_owner_on_the_minority_side_does_not_move_its_copies() {
    let mut c = recovery_setup();
    let holders = c
        .node("a1")
        .agent(&agent("agent-1"))
        .unwrap()
        .record
        .holders;
    let holder_names: BTreeSet<String> = holders.iter().map(|h| h.name.to_string()).collect();
    // The owner with one node that holds nothing: room on its side to re-place onto.
    let spare = ["a2", "b1", "b2", "c1", "c2"]
        .into_iter()
        .find(|n| !holder_names.contains(*n))
        .unwrap();
    c.split(&["a1", spare], Duration::from_millis(1200));
    c.run(Duration::from_secs(10));
    let a1_view = c.node("a1").agent(&agent("agent-1")).unwrap();
    assert!(c.node("a1").is_fenced(&agent("agent-1")) || !a1_view.local_owner);
    assert_eq!(
        a1_view.record.holders, holders,
        "the fenced owner re-placed its copies"
    );
    let spare_view = c.node(spare).agent(&agent("agent-1"));
    assert!(
        spare_view
            .as_ref()
            .is_none_or(|v| !v.record.is_holder(&name(spare))),
        "{spare_view:?}"
    );
    // The majority side adopted the agent; only that owner is unfenced.
    let owners = c.local_owners("agent-1");
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].1, 2, "{owners:?}");
}

#[test]
fn a_falsely_declared_down_owner_stops_its_agent_before_it_moves() {
    let mut c = recovery_setup();
    // Everybody but a1 believes a1 died (their SWIM views say so); a1 still reaches
    // them, but holders grant no lease to a member they consider down.
    let now = c.now;
    for n in ["a2", "b1", "b2", "c1", "c2"] {
        c.node(n).member_down(now, &name("a1"));
    }
    c.drain_all();
    c.run(Duration::from_secs(5));
    let position = |kind: &str| c.events.iter().position(|(_, e)| e.kind() == kind);
    let (fenced, adopted) = (position("agent_fenced"), position("agent_adopted"));
    assert!(fenced.is_some() && adopted.is_some(), "{:?}", c.events);
    assert!(fenced < adopted, "{:?}", c.events);
    assert_eq!(c.local_owners("agent-1").len(), 1);
}

#[test]
fn without_room_anywhere_agents_wait_pending_and_are_adopted_when_room_appears() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    let now = c.now;
    for (a, prio) in [("low", 1), ("high", 10)] {
        let reg = c
            .node("a1")
            .register(now, agent(a), "{}".into(), Some(prio))
            .unwrap();
        c.drain(&name("a1"));
        c.run(Duration::from_millis(100));
        assert!(c.registered.remove(&(name("a1"), reg)));
        c.put("a1", a, b"x", None).unwrap();
    }
    for n in ["a2", "b1", "b2", "c1", "c2"] {
        c.node(n).set_node_settings(false, 0);
    }
    c.drain_all();
    c.run(Duration::from_secs(1));
    c.kill("a1");
    c.run(Duration::from_secs(5));
    for a in ["low", "high"] {
        assert_eq!(c.owners(a), BTreeSet::from([("a1".to_string(), 1)]), "{a}");
    }
    assert!(c.events_of("agent_pending").len() >= 2);
    let pending = |c: &mut Cluster| -> usize {
        ["a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|n| c.node(n).pending_count())
            .sum()
    };
    // Each agent is pending on the holder electing it.
    assert!(pending(&mut c) >= 2);
    // Room appears: both are adopted, nothing was dropped.
    c.node("b2").set_node_settings(false, 5);
    c.drain_all();
    c.run(Duration::from_secs(5));
    for a in ["low", "high"] {
        assert_eq!(c.owners(a), BTreeSet::from([("b2".to_string(), 2)]), "{a}");
    }
    assert_eq!(pending(&mut c), 0);
}

/// Found by the node's capacity metrics: a member announces its settings when it sees
/// a peer come up, which can be before that peer sees it; the peer dropped the
/// announcement, never heard it again (it is resent only on change), and so never
/// counted the member as a standby host, or as a target at all.
#[test]
fn settings_announced_before_the_receiver_sees_the_sender_are_kept() {
    let (a, b) = (node_id("a", "za", 1), node_id("b", "zb", 2));
    let config = ReplicationConfig::default();
    let mut ra = Replicator::new(a.clone(), config.clone(), 1);
    let mut rb = Replicator::new(b.clone(), config, 2);
    ra.set_node_settings(true, 5);
    ra.member_up(Duration::ZERO, b.clone());
    // Welcomes wait up to 20 ms per live member (here one).
    let now = Duration::from_millis(20);
    ra.handle_timeout(now);
    let mut infos = Vec::new();
    while let Some(effect) = ra.poll_effect() {
        if let ReplEffect::Send { to, msg, .. } = effect
            && to == b
            && matches!(msg, ReplMsg::NodeInfo { .. })
        {
            infos.push(msg);
        }
    }
    assert_eq!(infos.len(), 1);
    // b has not seen a come up yet.
    for msg in infos {
        rb.handle_message(now, &a.name, msg, None);
    }
    rb.member_up(now, a.clone());
    let info = rb.node_info(&a.name).expect("a's settings");
    assert!(info.standby && info.capacity == 5, "{info:?}");
    assert_eq!(
        rb.free_capacity()[&Zone::new("za").unwrap()],
        ZoneCapacity {
            standby: 5,
            all: 5,
            unadvertised: 0
        }
    );
}

#[test]
fn free_capacity_is_what_live_hosts_advertise_per_zone() {
    let mut c = Cluster::new(&six(), ReplicationConfig::default());
    for n in ["a1", "a2", "b1", "b2", "c1"] {
        c.node(n).set_node_settings(false, 100);
    }
    c.node("c2").set_node_settings(true, 2);
    c.node("b2").set_node_isolated(true);
    c.drain_all();
    c.register("a1", "agent-1");
    c.run(Duration::from_millis(50));
    c.put("a1", "agent-1", b"x", None).unwrap();
    c.run(Duration::from_secs(1));
    let zone = |c: &mut Cluster, observer: &str, z: &str| {
        c.node(observer).free_capacity()[&Zone::new(z).unwrap()]
    };
    // Seen from b1: a1 owns one agent; b2 is isolated; c2 is the only standby.
    assert_eq!(
        zone(&mut c, "b1", "za"),
        ZoneCapacity {
            standby: 0,
            all: 199,
            unadvertised: 0
        }
    );
    assert_eq!(
        zone(&mut c, "b1", "zb"),
        ZoneCapacity {
            standby: 0,
            all: 100,
            unadvertised: 0
        }
    );
    assert_eq!(
        zone(&mut c, "b1", "zc"),
        ZoneCapacity {
            standby: 2,
            all: 102,
            unadvertised: 0
        }
    );
    c.kill("a1");
    c.run(Duration::from_secs(5));
    assert_eq!(c.owners("agent-1"), BTreeSet::from([("c2".to_string(), 2)]));
    // a1 is gone and c2 advertised the agent it adopted.
    assert_eq!(
        zone(&mut c, "b1", "za"),
        ZoneCapacity {
            standby: 0,
            all: 100,
            unadvertised: 0
        }
    );
    assert_eq!(
        zone(&mut c, "b1", "zc"),
        ZoneCapacity {
            standby: 1,
            all: 101,
            unadvertised: 0
        }
    );
}

#[test]
fn an_owner_hands_a_failing_agent_to_another_host() {
    let mut c = recovery_setup();
    let now = c.now;
    c.node("a1").handoff(now, &agent("agent-1")).unwrap();
    c.drain_all();
    c.run(Duration::from_secs(5));
    let owners = c.local_owners("agent-1");
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_ne!(owners[0].0, "a1");
    assert_eq!(owners[0].1, 2);
    assert!(c.events_of("agent_lost").iter().any(|(n, _)| n == "a1"));
}

/// Anti-entropy: a catalog too large for one message goes out in several, and the
/// receiver answers with its own catalog once, not once per message received (which
/// made a mismatch cost the square of the catalog's size).
#[test]
fn a_catalog_sent_in_several_messages_is_answered_once() {
    let (a, b) = (node_id("a", "az1", 1), node_id("b", "az2", 2));
    let config = ReplicationConfig::default();
    let mut ra = Replicator::new(a.clone(), config.clone(), 1);
    let mut rb = Replicator::new(b.clone(), config, 2);
    let records: Vec<vigil_protocol::AgentRecord> = (0..30)
        .map(|i| vigil_protocol::AgentRecord {
            agent: agent(&format!("agent-{i}")),
            owner: a.name.clone(),
            owner_zone: a.zone.clone(),
            epoch: 1,
            seq: 1,
            holders: Vec::new(),
            version: 1,
            meta: String::new(),
            priority: 0,
            isolated: false,
        })
        .collect();
    ra.load(Vec::new(), records);
    ra.member_up(Duration::ZERO, b.clone());
    rb.member_up(Duration::ZERO, a.clone());
    // Welcomes wait up to 20 ms per live member (here one).
    let now = Duration::from_millis(20);
    ra.handle_timeout(now);
    rb.handle_timeout(now);
    let sent = |r: &mut Replicator| {
        let mut out = Vec::new();
        while let Some(e) = r.poll_effect() {
            if let ReplEffect::Send { msg, .. } = e {
                out.push(msg);
            }
        }
        out
    };
    sent(&mut ra);
    // b's digest (of nothing) reaches a, which sends its 30 records and asks back.
    let digest = sent(&mut rb)
        .into_iter()
        .find(|m| matches!(m, ReplMsg::CatalogDigest { .. }))
        .unwrap();
    ra.handle_message(now, &b.name, digest, None);
    let chunks: Vec<ReplMsg> = sent(&mut ra)
        .into_iter()
        .filter(|m| matches!(m, ReplMsg::Records { .. }))
        .collect();
    assert!(chunks.len() > 1, "{} messages", chunks.len());
    let asking = chunks
        .iter()
        .filter(|m| matches!(m, ReplMsg::Records { answer: true, .. }))
        .count();
    assert_eq!(asking, 1);
    let n = chunks.len();
    for m in chunks {
        rb.handle_message(now, &a.name, m, None);
    }
    // b answers once: its catalog (now the same 30 records), not once per chunk.
    let back = sent(&mut rb)
        .into_iter()
        .filter(|m| matches!(m, ReplMsg::Records { .. }))
        .count();
    assert_eq!(back, n);
}
