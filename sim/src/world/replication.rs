//! Snapshot replication in the simulated world.
//!
//! With [`WorldConfig::replication`](super::WorldConfig) set, every host runs a
//! [`Replicator`] next to its `Core` (same identity, seeded from the run's seed), fed
//! with the core's membership events, and owns a simulated disk that survives its
//! restarts: a restarted host calls [`Replicator::load`] with what its disk holds.
//! Replication messages travel through the same network as SWIM (latency, zones,
//! loss, partitions, stalled and slow hosts; a message and its payload are one
//! delivery, encoded and decoded with the real wire envelope). Disk operations
//! complete after 1 to 5 ms; with disk faults on, a write may fail and a read may find
//! the file corrupt (the file is then gone from that disk, like the node's
//! quarantine).
//!
//! A workload registers agents on hosts spread over the cluster and puts a small
//! snapshot per agent every interval (default acknowledgement: quorum), with reads
//! from random hosts. Invariants:
//!
//! - **I1**, checked every simulated second and at the end: every agent's latest
//!   acknowledged (epoch, seq), or a newer version, is on the disk of a live host
//!   (or on the disks of as many crashed hosts as the agent has copies).
//! - **I2**, after the faults stop: within the settle bound, every agent whose owner is
//!   live has as many copies on distinct live hosts, in as many zones, as
//!   [`placement::place`] over the live hosts allows.
//! - No two different snapshots ever carry the same (agent, epoch, seq), and a read
//!   returns the agent's own bytes.
//!
//! All of it draws from one generator of its own, so turning replication on leaves
//! the membership run (every SWIM message, every figure) exactly as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use vigil_protocol::placement::{self, Candidate};
use vigil_protocol::replication::{
    AcceptorState, GetError, Holder, LoadError, PutError, PutOutcome, ReplEffect, ReplEvent,
    SnapMeta, StoredVersion, checksum,
};
use vigil_protocol::wire::{self, Body, MAX_STREAM_FRAME_LEN};
use vigil_protocol::{
    AgentId, AgentRecord, Event, NodeId, NodeName, ReplicationConfig, Replicator,
};

use super::{Action, Host, HostId, Violation, World};
use crate::scenario::Quantiles;

/// The replication workload and its faults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplSpec {
    /// Agents, registered on hosts spread over the cluster.
    pub agents: u32,
    /// Copies per agent (k), the owner's own copy not counted.
    pub copies: usize,
    /// Each agent puts a snapshot this often (skipped while its previous put runs).
    pub put_interval: Duration,
    /// While faults run: the probability that a disk write fails, and that a disk
    /// read finds the file corrupt.
    pub disk_faults: f64,
    /// Reads per put: a random live host reads a random agent's latest snapshot.
    pub get_fraction: f64,
    /// I2: how long after the faults stop repair may take to restore every agent's
    /// copies (and at least 10 s after the membership views converged).
    pub settle_bound: Duration,
    /// Register an agent on another host once its owner has been down this long
    /// (a stand-in for recovery, which takes the agent over at a higher epoch).
    pub takeover_after: Option<Duration>,
    /// Start as a cluster that has run for a while (with a warm bootstrap only): every
    /// agent registered at epoch 1 on a host of its own, its first snapshot on its
    /// owner and on the k holders placement gives, its record in every host's catalog.
    /// The owners take their agents back as a restarted owner does (asking the
    /// holders), and the workload starts once every agent has an owner. Skips the
    /// registrations, each of which asks every live member and is published to every
    /// live member twice: at 1 000 hosts and 10 000 agents, 50 million messages.
    pub preregistered: bool,
}

impl ReplSpec {
    pub fn new(agents: u32) -> Self {
        ReplSpec {
            agents,
            copies: 3,
            put_interval: Duration::from_secs(1),
            disk_faults: 0.0,
            get_fraction: 0.2,
            settle_bound: Duration::from_secs(30),
            takeover_after: None,
            preregistered: false,
        }
    }
}

/// An agent whose copies fall short of what the live hosts allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortfall {
    pub agent: String,
    pub owner: String,
    pub owner_live: bool,
    /// Live hosts (the owner not counted) whose disk holds the latest acknowledged
    /// version or a newer one.
    pub holders: Vec<String>,
    pub copies: usize,
    pub zones: usize,
    /// What `placement::place` over the live hosts gives.
    pub want_copies: usize,
    pub want_zones: usize,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (owner {}{}): {} copies in {} zones on [{}], want {} in {}",
            self.agent,
            self.owner,
            if self.owner_live { "" } else { ", down" },
            self.copies,
            self.zones,
            self.holders.join(" "),
            self.want_copies,
            self.want_zones
        )
    }
}

/// Replication figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplReport {
    pub spec: Option<ReplSpec>,
    /// Registrations answered (first registrations and takeovers).
    pub registered: u64,
    pub takeovers: u64,
    pub puts_started: u64,
    pub puts_acked: u64,
    /// Failed puts, by error code.
    pub puts_failed: BTreeMap<String, u64>,
    /// Puts whose owner crashed before answering.
    pub puts_unanswered: u64,
    /// Put ticks skipped: owner down, owner stalled, previous put still running.
    pub skipped_owner_down: u64,
    pub skipped_owner_stalled: u64,
    pub skipped_busy: u64,
    /// Put latency (start to acknowledgement), simulated milliseconds.
    pub put_latency_ms: Quantiles,
    pub gets_ok: u64,
    pub gets_failed: BTreeMap<String, u64>,
    /// Reads that returned a version older than the one acknowledged when they began.
    pub stale_reads: u64,
    pub disk_writes: u64,
    pub disk_write_faults: u64,
    pub disk_reads: u64,
    pub disk_corrupt_reads: u64,
    pub disk_missing_reads: u64,
    /// Acknowledged copies (owner or holder named in `stored_on`) not on that disk
    /// when the acknowledgement arrived.
    pub acked_copies_missing: u64,
    /// Replicator events, by kind (repair_done, snapshot_corrupt, snapshot_healed, ...).
    pub events: BTreeMap<String, u64>,
    pub repair_bytes: u64,
    /// Replication messages sent and bytes (envelope and payload), by message kind.
    pub messages: Vec<(String, u64, u64)>,
    pub messages_lost: u64,
    pub input_errors: u64,
    /// Agents never acknowledged once (nothing to check).
    pub never_acked: u32,
    pub i1_checks: u64,
    /// When the faults stopped (simulated seconds since the start).
    pub faults_over_at_secs: Option<f64>,
    /// From the faults stopping to the last repair or heal.
    pub last_repair_after_faults_secs: Option<f64>,
    /// From the faults stopping until I2 held (checked every 250 ms).
    pub copies_restored_after_faults_secs: Option<f64>,
    /// From the faults stopping until every live host's catalog was the same (equal
    /// catalog digests: agents, owners, epochs, versions, holders, priority, isolation).
    pub catalog_agreed_after_faults_secs: Option<f64>,
    /// At the end: agents whose catalog entries differ between live hosts.
    pub catalog_disagreements: usize,
    /// At the end: agents with a live owner short of copies (I2), and those whose
    /// owner is down (not part of I2; reported).
    pub short: Vec<Shortfall>,
    pub short_owner_down: Vec<Shortfall>,
    /// Recovery: adoptions of an agent by a new owner (`AgentAdopted`).
    pub adoptions: u64,
    /// Recovery time: from an owner's crash to the adoption of each of its agents by
    /// a new owner, simulated milliseconds.
    pub rto_ms: Quantiles,
    /// Agents whose owner crashed and that no other host adopted (the owner came back
    /// first, or the run ended).
    pub rto_not_adopted: u64,
    /// R1 checks (one agent's owners compared, at every change that can add an owner)
    /// and full scans of a host's catalog (R2).
    pub r1_checks: u64,
    pub r2_scans: u64,
    /// Not a violation of R1 (which is per epoch), but suspicious: times an owner of
    /// an older epoch was live and unfenced while a newer epoch had an owner too.
    pub stale_unfenced_owners: u64,
    pub stale_unfenced_owner_examples: Vec<String>,
    /// Put ticks skipped because no live host owned the agent unfenced.
    pub skipped_no_owner: u64,
    /// At the end: agents with a live, unfenced owner, and those without one whose
    /// holders are mostly live (R3 violations) or mostly down (not checked).
    pub owned_at_end: usize,
    pub ownerless_at_end: usize,
    pub ownerless_holders_down: usize,
}

#[derive(Debug)]
pub(crate) enum ReplAction {
    Deliver {
        to: HostId,
        from: HostId,
        envelope: Bytes,
        payload: Option<Bytes>,
        delayed: bool,
    },
    Timer {
        host: HostId,
    },
    Disk {
        host: HostId,
        incarnation: u64,
        op: u64,
        work: DiskWork,
    },
    Tick {
        agent: u32,
    },
    Check,
    FaultsOver,
}

#[derive(Debug)]
pub(crate) enum DiskWork {
    Persist {
        agent: AgentId,
        snap: SnapMeta,
        body: Bytes,
    },
    Load {
        agent: AgentId,
        seq: u64,
    },
    Acceptor {
        agent: AgentId,
        state: AcceptorState,
    },
}

/// What `placement::place` over the live hosts gives each agent (copies, zones),
/// computed for the live hosts `live` and the owner named with each.
#[derive(Debug, Default)]
struct WantCache {
    live: Vec<HostId>,
    per_agent: Vec<Option<(HostId, usize, usize)>>,
}

/// A replication input that reached a stalled host, handled when the stall ends.
#[derive(Debug)]
pub(crate) enum ReplInput {
    Message {
        from: HostId,
        envelope: Bytes,
        payload: Option<Bytes>,
    },
    Disk {
        op: u64,
        work: DiskWork,
    },
}

/// One host's disk: versions per agent (the last `keep` by seq) and the records
/// stored next to them. It outlives crashes; it counts as live while the host runs.
#[derive(Debug, Default)]
struct Disk {
    versions: BTreeMap<AgentId, BTreeMap<u64, (SnapMeta, Bytes)>>,
    records: BTreeMap<AgentId, AgentRecord>,
    /// Election state of the agents this host is an acceptor for.
    acceptors: BTreeMap<AgentId, AcceptorState>,
}

impl Disk {
    /// The newest (epoch, seq) of `agent` on this disk.
    fn newest(&self, agent: &AgentId) -> Option<(u64, u64)> {
        self.versions
            .get(agent)
            .and_then(|v| v.values().map(|(m, _)| (m.epoch, m.seq)).max())
    }
}

#[derive(Debug)]
struct AgentSim {
    id: AgentId,
    /// Where the workload first registers it.
    planned: Option<HostId>,
    /// The host it is registered with (its owner).
    home: Option<HostId>,
    registering: bool,
    /// A put is in flight.
    busy: bool,
    counter: u64,
    /// The latest acknowledged (epoch, seq).
    acked: Option<(u64, u64)>,
    owner_down_since: Option<Duration>,
}

#[derive(Debug)]
struct PendingPut {
    agent: u32,
    started: Duration,
    checksum: u64,
}

#[derive(Debug)]
struct PendingGet {
    agent: u32,
    acked_then: Option<(u64, u64)>,
}

pub(crate) struct ReplState {
    spec: ReplSpec,
    config: ReplicationConfig,
    rng: ChaCha8Rng,
    disks: Vec<Disk>,
    agents: Vec<AgentSim>,
    puts: BTreeMap<(HostId, u64), PendingPut>,
    gets: BTreeMap<(HostId, u64), PendingGet>,
    regs: BTreeMap<(HostId, u64), u32>,
    /// Every (agent, epoch, seq) ever written anywhere, with its checksum.
    written: BTreeMap<(u32, u64, u64), u64>,
    /// Versions already reported as written with two different contents.
    conflicts: BTreeSet<(u32, u64, u64)>,
    /// Acknowledged (agent, epoch, seq) with the checksum of the bytes put.
    acked_sums: BTreeMap<(u32, u64, u64), u64>,
    started: bool,
    workload_on: bool,
    disk_faults_on: bool,
    check_scheduled: bool,
    faults_over_at: Option<Duration>,
    copies_restored_at: Option<Duration>,
    catalog_agreed_at: Option<Duration>,
    last_repair_at: Option<Duration>,
    /// Agents already reported under I1 (one violation per agent).
    lost_reported: BTreeSet<u32>,
    /// Timer entries handled at one instant, per host (a replicator whose timer never
    /// moves on would otherwise spin the simulation).
    timer_spin: BTreeMap<HostId, (Duration, u32)>,
    latencies_ms: Vec<f64>,
    sent_by_kind: BTreeMap<&'static str, (u64, u64)>,
    report: ReplReport,
    /// `VIGIL_SIM_TRACE=<agent id>`: print every effect, message and disk result
    /// that mentions that agent (to stderr), for debugging one agent's history.
    trace: Option<String>,
    /// R1: hosts that owned each agent (by index) at some point and may still; a host
    /// leaves the set once it neither runs nor owns the agent.
    owner_candidates: BTreeMap<u32, BTreeSet<HostId>>,
    /// R2: the highest epoch each host saw for each agent, plus one (0: none yet),
    /// indexed by host then agent (reset to its disk's records when it restarts).
    seen_epoch: Vec<Vec<u64>>,
    r1_reported: BTreeSet<(u32, u64)>,
    stale_owner_reported: BTreeSet<(u32, u64)>,
    r2_reported: BTreeSet<(HostId, u32)>,
    /// RTO: agents whose owner crashed, and when.
    owner_crashed_at: BTreeMap<u32, Duration>,
    rto_ms: Vec<f64>,
    /// The next host whose whole catalog the periodic R2 scan reads, and when.
    scan_cursor: u32,
    next_catalog_scan: Duration,
    /// I2: what placement wants for each agent, kept while the live hosts stay.
    want_cache: WantCache,
    /// Pre-registered agents: the catalog every host starts with at the warm
    /// bootstrap (taken when it is over).
    warm_catalog: Vec<AgentRecord>,
}

impl ReplState {
    pub(crate) fn new(spec: ReplSpec, seed: u64, nodes: u32) -> Self {
        let config = ReplicationConfig {
            copies: spec.copies,
            ..ReplicationConfig::default()
        };
        let mut agents = Vec::new();
        for i in 0..spec.agents {
            let id = AgentId::new(&format!("agent-{i}"))
                .unwrap_or_else(|_| unreachable!("agent-<digits> is a valid id"));
            agents.push(AgentSim {
                id,
                planned: None,
                home: None,
                registering: false,
                busy: false,
                counter: 0,
                acked: None,
                owner_down_since: None,
            });
        }
        ReplState {
            config,
            // Its own generator: the membership run stays exactly as without
            // replication.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5245_504c_4943_4154),
            disks: (0..nodes).map(|_| Disk::default()).collect(),
            agents,
            puts: BTreeMap::new(),
            gets: BTreeMap::new(),
            regs: BTreeMap::new(),
            written: BTreeMap::new(),
            conflicts: BTreeSet::new(),
            acked_sums: BTreeMap::new(),
            started: false,
            workload_on: false,
            disk_faults_on: false,
            check_scheduled: false,
            faults_over_at: None,
            copies_restored_at: None,
            catalog_agreed_at: None,
            last_repair_at: None,
            lost_reported: BTreeSet::new(),
            timer_spin: BTreeMap::new(),
            latencies_ms: Vec::new(),
            sent_by_kind: BTreeMap::new(),
            report: ReplReport {
                spec: Some(spec.clone()),
                ..ReplReport::default()
            },
            spec,
            trace: std::env::var("VIGIL_SIM_TRACE")
                .ok()
                .map(|a| format!("{a:?}")),
            owner_candidates: BTreeMap::new(),
            seen_epoch: vec![Vec::new(); nodes as usize],
            r1_reported: BTreeSet::new(),
            stale_owner_reported: BTreeSet::new(),
            r2_reported: BTreeSet::new(),
            owner_crashed_at: BTreeMap::new(),
            rto_ms: Vec::new(),
            scan_cursor: 0,
            next_catalog_scan: Duration::ZERO,
            want_cache: WantCache::default(),
            warm_catalog: Vec::new(),
        }
    }

    /// The index of agent `id` (the workload names them `agent-<index>`).
    fn index_of(&self, id: &AgentId) -> Option<u32> {
        let i: u32 = id.as_str().strip_prefix("agent-")?.parse().ok()?;
        (self.agents.get(i as usize)?.id == *id).then_some(i)
    }

    fn disk_fault(&mut self) -> bool {
        self.disk_faults_on
            && self.spec.disk_faults > 0.0
            && self.rng.random_bool(self.spec.disk_faults.clamp(0.0, 1.0))
    }
}

/// Removes the entries of `host` from a map keyed by (host, id).
fn take_host<V>(map: &mut BTreeMap<(HostId, u64), V>, host: HostId) -> Vec<V> {
    let keys: Vec<(HostId, u64)> = map
        .range((host, 0)..=(host, u64::MAX))
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter().filter_map(|k| map.remove(&k)).collect()
}

/// A small snapshot: agent index, the agent's own counter, filler.
fn snapshot_body(agent: u32, counter: u64, rng: &mut ChaCha8Rng) -> Bytes {
    let len = rng.random_range(16..=64usize);
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&agent.to_le_bytes());
    body.extend_from_slice(&counter.to_le_bytes());
    while body.len() < len {
        body.push(rng.random::<u8>());
    }
    Bytes::from(body)
}

/// `among` but `except`, as placement candidates.
fn candidates(hosts: &[Host], among: &[HostId], except: HostId) -> Vec<Candidate> {
    among
        .iter()
        .filter(|h| **h != except)
        .map(|h| Candidate {
            name: hosts[*h as usize].name.clone(),
            zone: hosts[*h as usize].zone.clone(),
        })
        .collect()
}

impl World {
    fn repl_state(&mut self) -> Option<&mut ReplState> {
        self.repl.as_deref_mut()
    }

    // ---- hosts: start, crash, stall ------------------------------------------------

    /// The host's core just started: start its replicator with what its disk holds.
    pub(super) fn repl_start(&mut self, h: HostId) {
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let seed = state.rng.next_u64();
        let host = &self.hosts[h as usize];
        let id = NodeId::new(
            host.name.clone(),
            host.addr,
            host.zone.clone(),
            host.generation,
        );
        let mut r = Replicator::new(id, state.config.clone(), seed);
        let disk = &state.disks[h as usize];
        let versions: Vec<StoredVersion> = disk
            .versions
            .iter()
            .flat_map(|(agent, vs)| {
                vs.values().map(|(snap, _)| StoredVersion {
                    agent: agent.clone(),
                    snap: *snap,
                })
            })
            .collect();
        let mut records: Vec<AgentRecord> = disk.records.values().cloned().collect();
        // A host of a pre-registered cluster knows every record, not only those it keeps.
        records.extend(state.warm_catalog.iter().cloned());
        r.load(versions, records);
        r.load_acceptors(
            disk.acceptors
                .iter()
                .map(|(a, s)| (a.clone(), s.clone()))
                .collect(),
        );
        let host = &mut self.hosts[h as usize];
        host.repl = Some(r);
        host.repl_timer_at = None;
        host.repl_backlog.clear();
        // R2 starts again from what the disk holds; RTO: an agent whose owner is back
        // before anyone adopted it is not a recovery.
        if let Some(state) = self.repl.as_deref_mut() {
            let disk_epochs: Vec<(u32, u64)> = state.disks[h as usize]
                .records
                .values()
                .filter_map(|r| state.index_of(&r.agent).map(|i| (i, r.epoch)))
                .collect();
            let seen = &mut state.seen_epoch[h as usize];
            seen.clear();
            for (i, e) in disk_epochs {
                if seen.len() <= i as usize {
                    seen.resize(i as usize + 1, 0);
                }
                seen[i as usize] = e + 1;
            }
            let back: Vec<u32> = state
                .owner_crashed_at
                .keys()
                .copied()
                .filter(|i| state.agents[*i as usize].home == Some(h))
                .collect();
            for i in back {
                state.owner_crashed_at.remove(&i);
                state.report.rto_not_adopted += 1;
            }
        }
        self.scan_host(h);
        self.repl_after(h);
    }

    /// The host crashed: its replicator and whatever it had in flight are gone; its
    /// disk stays (and counts again once it restarts).
    pub(super) fn repl_crash(&mut self, h: HostId) {
        let host = &mut self.hosts[h as usize];
        host.repl = None;
        host.repl_timer_at = None;
        host.repl_backlog.clear();
        host.incarnation += 1;
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        for (i, agent) in state.agents.iter().enumerate() {
            if agent.home == Some(h) {
                state.owner_crashed_at.entry(i as u32).or_insert(now);
            }
        }
        for p in take_host(&mut state.puts, h) {
            state.report.puts_unanswered += 1;
            state.agents[p.agent as usize].busy = false;
        }
        take_host(&mut state.gets, h);
        for agent in take_host(&mut state.regs, h) {
            state.agents[agent as usize].registering = false;
        }
    }

    /// The stall ended: handle the replication inputs that queued up, then the
    /// overdue timer.
    pub(super) fn repl_end_stall(&mut self, h: HostId) {
        if self.repl.is_none() {
            return;
        }
        let backlog = std::mem::take(&mut self.hosts[h as usize].repl_backlog);
        for input in backlog {
            match input {
                ReplInput::Message {
                    from,
                    envelope,
                    payload,
                } => self.repl_input(h, from, &envelope, payload),
                ReplInput::Disk { op, work } => self.repl_disk_now(h, op, work),
            }
            self.repl_drain(h);
        }
        let now = self.now;
        if let Some(r) = self.hosts[h as usize].repl.as_mut() {
            r.handle_timeout(now);
        }
        self.repl_after(h);
    }

    /// Feeds the core's membership events to the replicator of the same host.
    pub(super) fn repl_membership(&mut self, observer: HostId, event: &Event) {
        let now = self.now;
        let Some(r) = self.hosts[observer as usize].repl.as_mut() else {
            return;
        };
        match event {
            Event::MemberJoined { member }
            | Event::MemberRefuted { member, .. }
            | Event::MemberRestarted { member, .. } => r.member_up(now, member.clone()),
            Event::MemberDown { member } | Event::MemberLeft { member } => {
                r.member_down(now, &member.name)
            }
            Event::LocalRejoined { identity, .. } => r.set_identity(identity.clone()),
            Event::MemberSuspected { .. }
            | Event::LocalActive { .. }
            | Event::LocalIsolated
            | Event::LocalDefunct
            | Event::NameKeyCollision { .. } => return,
        }
        self.repl_after(observer);
    }

    // ---- effects -------------------------------------------------------------------

    /// Executes the replicator's effects and re-arms its timer.
    fn repl_after(&mut self, h: HostId) {
        self.repl_drain(h);
        let now = self.now;
        let host = &mut self.hosts[h as usize];
        let Some(r) = host.repl.as_ref() else {
            return;
        };
        if let Some(due) = r.poll_timeout() {
            let due = due.max(now);
            if host.repl_timer_at.is_none_or(|t| due < t) {
                host.repl_timer_at = Some(due);
                self.schedule(due, Action::Repl(ReplAction::Timer { host: h }));
            }
        }
    }

    /// Prints `what` when it mentions the traced agent.
    fn trace(&self, h: HostId, what: &dyn std::fmt::Debug) {
        if let Some(agent) = self.repl.as_deref().and_then(|s| s.trace.as_ref()) {
            let text = format!("{what:?}");
            if text.contains(agent.as_str()) {
                eprintln!(
                    "[{:>10.4}] {}: {text}",
                    self.now.as_secs_f64(),
                    self.name_of(h)
                );
            }
        }
    }

    fn repl_drain(&mut self, h: HostId) {
        loop {
            let effect = match self.hosts[h as usize].repl.as_mut() {
                Some(r) => r.poll_effect(),
                None => None,
            };
            let Some(effect) = effect else { break };
            self.trace(h, &effect);
            match effect {
                ReplEffect::Send { to, msg, payload } => {
                    let kind = msg.kind();
                    match wire::encode(&Body::Repl(msg), MAX_STREAM_FRAME_LEN) {
                        Ok(envelope) => {
                            self.repl_send(h, &to, kind, Bytes::from(envelope), payload)
                        }
                        Err(e) => {
                            let at = self.now;
                            self.violations.push(Violation::Replicator {
                                at,
                                host: self.name_of(h),
                                detail: format!("a {kind} message cannot be sent: {e}"),
                            });
                        }
                    }
                }
                ReplEffect::Persist {
                    op,
                    agent,
                    snap,
                    body,
                } => {
                    self.note_written(&agent, &snap, &body);
                    self.disk_later(h, op, DiskWork::Persist { agent, snap, body });
                }
                ReplEffect::Load { op, agent, seq } => {
                    self.disk_later(h, op, DiskWork::Load { agent, seq });
                }
                ReplEffect::PersistRecord { record } => {
                    self.note_epoch(h, &record.agent, record.epoch);
                    self.note_record(h, &record);
                    if let Some(state) = self.repl_state() {
                        state.disks[h as usize]
                            .records
                            .insert(record.agent.clone(), record);
                    }
                }
                ReplEffect::DropAgent { agent } => {
                    if let Some(state) = self.repl_state() {
                        let disk = &mut state.disks[h as usize];
                        disk.versions.remove(&agent);
                        disk.records.remove(&agent);
                    }
                }
                ReplEffect::RegisterDone { reg, .. } => self.on_register_done(h, reg),
                ReplEffect::RegisterFailed { reg, .. } => self.on_register_failed(h, reg),
                ReplEffect::PersistAcceptor { op, agent, state } => {
                    self.disk_later(h, op, DiskWork::Acceptor { agent, state });
                }
                ReplEffect::PutDone { put, result } => self.on_put_done(h, put, result),
                ReplEffect::GetDone { get, result } => self.on_get_done(h, get, result),
                ReplEffect::Event(event) => self.on_repl_event(h, event),
            }
        }
    }

    /// No two different snapshots may ever share an (agent, epoch, seq).
    fn note_written(&mut self, agent: &AgentId, snap: &SnapMeta, body: &Bytes) {
        let now = self.now;
        let Some(state) = self.repl_state() else {
            return;
        };
        let Some(i) = state.index_of(agent) else {
            return;
        };
        let sum = checksum(body);
        let before = *state
            .written
            .entry((i, snap.epoch, snap.seq))
            .or_insert(sum);
        if before != sum && state.conflicts.insert((i, snap.epoch, snap.seq)) {
            self.violations.push(Violation::WrongSnapshot {
                at: now,
                agent: agent.to_string(),
                detail: format!(
                    "two different snapshots carry epoch {} seq {} (checksums {before:016x} and {sum:016x})",
                    snap.epoch, snap.seq
                ),
            });
        }
    }

    fn repl_send(
        &mut self,
        from: HostId,
        to: &NodeId,
        kind: &'static str,
        envelope: Bytes,
        payload: Option<Bytes>,
    ) {
        let Some(&to_id) = self.by_name.get(&to.name) else {
            return;
        };
        self.tap(from, to_id, &envelope, payload.as_ref());
        let loss = self.loss.clamp(0.0, 1.0);
        let net = &self.config.net;
        let span = net.latency_max.saturating_sub(net.latency_min);
        let (latency_min, cross_zone) = (net.latency_min, net.cross_zone);
        let cross = self.zone_index(from) != self.zone_index(to_id);
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let bytes = envelope.len() + payload.as_ref().map_or(0, |p| p.len());
        let entry = state.sent_by_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += bytes as u64;
        if state.rng.random_bool(loss) {
            state.report.messages_lost += 1;
            return;
        }
        let mut latency = latency_min + span.mul_f64(state.rng.random::<f64>());
        if cross {
            latency += cross_zone;
        }
        let at = self.now + latency;
        self.schedule(
            at,
            Action::Repl(ReplAction::Deliver {
                to: to_id,
                from,
                envelope,
                payload,
                delayed: false,
            }),
        );
    }

    fn disk_later(&mut self, h: HostId, op: u64, work: DiskWork) {
        let incarnation = self.hosts[h as usize].incarnation;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let delay = Duration::from_micros(state.rng.random_range(1_000..=5_000));
        let at = self.now + delay;
        self.schedule(
            at,
            Action::Repl(ReplAction::Disk {
                host: h,
                incarnation,
                op,
                work,
            }),
        );
    }

    // ---- inputs --------------------------------------------------------------------

    pub(super) fn handle_repl(&mut self, action: ReplAction) {
        match action {
            ReplAction::Deliver {
                to,
                from,
                envelope,
                payload,
                delayed,
            } => self.repl_deliver(to, from, envelope, payload, delayed),
            ReplAction::Timer { host } => self.repl_timer(host),
            ReplAction::Disk {
                host,
                incarnation,
                op,
                work,
            } => {
                let h = &mut self.hosts[host as usize];
                if h.incarnation != incarnation || h.repl.is_none() {
                    return; // the host crashed meanwhile: the operation never finished
                }
                if h.stalled_until.is_some_and(|u| self.now < u) {
                    h.repl_backlog.push(ReplInput::Disk { op, work });
                    return;
                }
                self.repl_disk_now(host, op, work);
                self.repl_after(host);
            }
            ReplAction::Tick { agent } => self.agent_tick(agent),
            ReplAction::Check => self.repl_check(),
            ReplAction::FaultsOver => {
                let now = self.now;
                if let Some(state) = self.repl_state() {
                    state.workload_on = false;
                    state.disk_faults_on = false;
                    state.faults_over_at.get_or_insert(now);
                }
            }
        }
    }

    fn repl_deliver(
        &mut self,
        to: HostId,
        from: HostId,
        envelope: Bytes,
        payload: Option<Bytes>,
        delayed: bool,
    ) {
        if self.blocked(from, to) {
            if let Some(state) = self.repl_state() {
                state.report.messages_lost += 1;
            }
            return;
        }
        let now = self.now;
        let host = &mut self.hosts[to as usize];
        if host.repl.is_none() {
            return;
        }
        if host.stalled_until.is_some_and(|u| now < u) {
            host.repl_backlog.push(ReplInput::Message {
                from,
                envelope,
                payload,
            });
            return;
        }
        if let (Some(delay), false) = (host.slow_delay, delayed) {
            self.schedule(
                now + delay,
                Action::Repl(ReplAction::Deliver {
                    to,
                    from,
                    envelope,
                    payload,
                    delayed: true,
                }),
            );
            return;
        }
        self.repl_input(to, from, &envelope, payload);
        self.repl_after(to);
    }

    fn repl_input(&mut self, to: HostId, from: HostId, envelope: &Bytes, payload: Option<Bytes>) {
        let now = self.now;
        let msg = match wire::decode(envelope, MAX_STREAM_FRAME_LEN) {
            Ok(Body::Repl(msg)) => msg,
            Ok(_) | Err(_) => {
                if let Some(state) = self.repl_state() {
                    state.report.input_errors += 1;
                }
                return;
            }
        };
        if msg.payload_len() != payload.as_ref().map_or(0, |p| p.len() as u64) {
            if let Some(state) = self.repl_state() {
                state.report.input_errors += 1;
            }
            return;
        }
        let from_name = self.hosts[from as usize].name.clone();
        self.trace(to, &(format!("from {from_name}"), &msg));
        if let Some(r) = self.hosts[to as usize].repl.as_mut() {
            r.handle_message(now, &from_name, msg, payload);
        }
    }

    fn repl_timer(&mut self, h: HostId) {
        let now = self.now;
        let host = &mut self.hosts[h as usize];
        if host.repl_timer_at != Some(now) {
            return; // superseded
        }
        host.repl_timer_at = None;
        if host.stalled_until.is_some_and(|u| now < u) {
            return; // run when the stall ends
        }
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let spin = state.timer_spin.entry(h).or_insert((now, 0));
        if spin.0 == now {
            spin.1 += 1;
        } else {
            *spin = (now, 1);
        }
        if spin.1 > 10_000 {
            // A timer that never moves on: report once, then leave the host be.
            if spin.1 == 10_001 {
                let host = self.name_of(h);
                self.violations.push(Violation::Replicator {
                    at: now,
                    host,
                    detail: "the replicator's timer stays due at the same instant".into(),
                });
            }
            return;
        }
        if let Some(r) = self.hosts[h as usize].repl.as_mut() {
            r.handle_timeout(now);
        }
        self.repl_after(h);
    }

    fn repl_disk_now(&mut self, h: HostId, op: u64, work: DiskWork) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let keep = state.config.keep.max(1);
        match work {
            DiskWork::Persist { agent, snap, body } => {
                state.report.disk_writes += 1;
                let result = if state.disk_fault() {
                    state.report.disk_write_faults += 1;
                    Err("injected write failure (EIO)".to_string())
                } else {
                    let versions = state.disks[h as usize].versions.entry(agent).or_default();
                    versions.insert(snap.seq, (snap, body));
                    while versions.len() > keep {
                        versions.pop_first();
                    }
                    Ok(())
                };
                if let Some(r) = self.hosts[h as usize].repl.as_mut() {
                    r.on_persisted(now, op, result);
                }
            }
            DiskWork::Acceptor {
                agent,
                state: acceptor,
            } => {
                state.disks[h as usize].acceptors.insert(agent, acceptor);
                if let Some(r) = self.hosts[h as usize].repl.as_mut() {
                    r.on_persisted(now, op, Ok(()));
                }
            }
            DiskWork::Load { agent, seq } => {
                state.report.disk_reads += 1;
                let found = state.disks[h as usize]
                    .versions
                    .get(&agent)
                    .and_then(|v| v.get(&seq))
                    .cloned();
                // A corrupt read destroys this copy, so it is injected only while
                // another live disk holds the same version: the faults stay within
                // what k copies tolerate (like VOPR, which never damages every
                // replica of a block), and a loss is the protocol's doing.
                let corrupt = found.is_some() && state.disk_fault();
                let corrupt = corrupt
                    && found
                        .as_ref()
                        .is_some_and(|(m, _)| self.other_live_copy(h, &agent, m));
                let Some(state) = self.repl.as_deref_mut() else {
                    return;
                };
                let result = match found {
                    None => {
                        state.report.disk_missing_reads += 1;
                        Err(LoadError::Missing)
                    }
                    Some(_) if corrupt => {
                        // The checksum fails: the file is moved aside (gone here).
                        state.report.disk_corrupt_reads += 1;
                        let disk = &mut state.disks[h as usize];
                        if let Some(v) = disk.versions.get_mut(&agent) {
                            v.remove(&seq);
                            if v.is_empty() {
                                disk.versions.remove(&agent);
                            }
                        }
                        Err(LoadError::Corrupt("injected: checksum mismatch".into()))
                    }
                    Some(found) => Ok(found),
                };
                if let Some(r) = self.hosts[h as usize].repl.as_mut() {
                    r.on_loaded(now, op, result);
                }
            }
        }
    }

    /// Whether a live host other than `h` holds `agent` version `meta` on its disk.
    fn other_live_copy(&self, h: HostId, agent: &AgentId, meta: &SnapMeta) -> bool {
        let Some(state) = self.repl.as_deref() else {
            return false;
        };
        state.disks.iter().enumerate().any(|(x, d)| {
            x != h as usize
                && self.hosts[x].core.is_some()
                && d.versions
                    .get(agent)
                    .and_then(|v| v.get(&meta.seq))
                    .is_some_and(|(m, _)| m == meta)
        })
    }

    // ---- workload ------------------------------------------------------------------

    /// Pre-registers every agent ([`ReplSpec::preregistered`]) before the hosts start:
    /// owners spread over the hosts in a random order, holders where placement puts
    /// them, the first snapshot on their disks.
    pub(super) fn preregister_agents(&mut self) {
        let hosts: Vec<HostId> = (0..self.config.nodes).collect();
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        if !state.spec.preregistered || hosts.is_empty() {
            return;
        }
        let mut order = hosts.clone();
        for i in (1..order.len()).rev() {
            let j = state.rng.random_range(0..=i);
            order.swap(i, j);
        }
        for i in 0..state.agents.len() {
            let owner = order[i % order.len()];
            let id = state.agents[i].id.clone();
            let candidates = candidates(&self.hosts, &hosts, owner);
            let holders: Vec<Holder> =
                placement::place(&id, &candidates, &[], None, state.spec.copies)
                    .holders
                    .into_iter()
                    .map(Holder::from)
                    .collect();
            let owner_host = &self.hosts[owner as usize];
            let record = AgentRecord {
                agent: id.clone(),
                owner: owner_host.name.clone(),
                owner_zone: owner_host.zone.clone(),
                epoch: 1,
                seq: 1,
                holders,
                version: 1,
                meta: format!("{{\"agent\":{i}}}"),
                priority: 0,
                isolated: false,
            };
            let body = snapshot_body(i as u32, 1, &mut state.rng);
            let sum = checksum(&body);
            let snap = SnapMeta {
                epoch: 1,
                seq: 1,
                len: body.len() as u64,
                checksum: sum,
            };
            let on: Vec<HostId> = std::iter::once(owner)
                .chain(
                    record
                        .holders
                        .iter()
                        .filter_map(|h| self.by_name.get(&h.name).copied()),
                )
                .collect();
            for h in on {
                let disk = &mut state.disks[h as usize];
                disk.versions
                    .entry(id.clone())
                    .or_default()
                    .insert(1, (snap, body.clone()));
                disk.records.insert(id.clone(), record.clone());
            }
            state.written.insert((i as u32, 1, 1), sum);
            state.acked_sums.insert((i as u32, 1, 1), sum);
            let agent = &mut state.agents[i];
            agent.planned = Some(owner);
            agent.home = Some(owner);
            agent.counter = 1;
            agent.acked = Some((1, 1));
            state.report.registered += 1;
            state.warm_catalog.push(record);
        }
    }

    /// The warm bootstrap is over: hosts that start from now on (restarts) know only
    /// what their disk holds.
    pub(super) fn preregistered_started(&mut self) {
        if let Some(state) = self.repl.as_deref_mut() {
            state.warm_catalog = Vec::new();
        }
    }

    /// Whether every registered agent has a live owner (not fenced).
    pub fn every_agent_owned(&mut self) -> bool {
        let n = self.repl.as_deref().map_or(0, |s| s.agents.len() as u32);
        (0..n).all(|i| self.live_owner(i).is_some())
    }

    /// Starts the workload (and the disk faults): agents are registered on the live
    /// hosts in turn, in a random order, each putting on its own random phase. The
    /// invariant checks run every simulated second from now on.
    pub fn start_workload(&mut self) {
        let now = self.now;
        let live = self.live_hosts();
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        if state.started {
            return;
        }
        state.started = true;
        state.workload_on = true;
        state.disk_faults_on = true;
        let mut order = live;
        for i in (1..order.len()).rev() {
            let j = state.rng.random_range(0..=i);
            order.swap(i, j);
        }
        let interval = state.spec.put_interval.max(Duration::from_millis(1));
        let mut ticks = Vec::new();
        for (i, agent) in state.agents.iter_mut().enumerate() {
            // Pre-registered agents have their host already.
            if agent.home.is_none() {
                agent.planned = (!order.is_empty()).then(|| order[i % order.len()]);
            }
            ticks.push((now + interval.mul_f64(state.rng.random::<f64>()), i as u32));
        }
        let check = !state.check_scheduled;
        state.check_scheduled = true;
        for (at, agent) in ticks {
            self.schedule(at, Action::Repl(ReplAction::Tick { agent }));
        }
        if check {
            self.schedule(
                now + Duration::from_secs(1),
                Action::Repl(ReplAction::Check),
            );
        }
    }

    /// From `at` on, the workload and the disk faults stop and repair is measured.
    pub fn schedule_replication_faults_over(&mut self, at: Duration) {
        if self.repl.is_some() {
            self.schedule(at, Action::Repl(ReplAction::FaultsOver));
        }
    }

    fn is_stalled(&self, h: HostId) -> bool {
        self.hosts[h as usize]
            .stalled_until
            .is_some_and(|u| self.now < u)
    }

    /// Live, running hosts, for the workload to use.
    fn usable_hosts(&self) -> Vec<HostId> {
        (0..self.config.nodes)
            .filter(|h| self.is_up(*h) && !self.is_stalled(*h))
            .collect()
    }

    fn agent_tick(&mut self, i: u32) {
        let now = self.now;
        let Some(state) = self.repl.as_deref() else {
            return;
        };
        if !state.workload_on {
            return;
        }
        let interval = state.spec.put_interval.max(Duration::from_millis(1));
        let registered = state.agents[i as usize].home.is_some();
        self.schedule(now + interval, Action::Repl(ReplAction::Tick { agent: i }));
        // Put to whichever live host owns the agent now (recovery moves it).
        let owner = if registered { self.live_owner(i) } else { None };
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        if let Some(o) = owner
            && state.agents[i as usize].home != Some(o)
            && !state.agents[i as usize].registering
        {
            state.agents[i as usize].home = Some(o);
            state.agents[i as usize].owner_down_since = None;
        }
        let Some(state) = self.repl.as_deref() else {
            return;
        };
        let agent = &state.agents[i as usize];
        match agent.home {
            None => {
                if agent.registering {
                    return;
                }
                let target = match agent.planned {
                    Some(p) if self.is_up(p) && !self.is_stalled(p) => Some(p),
                    _ => self.pick_host(None),
                };
                if let Some(t) = target {
                    self.register_agent(i, t);
                }
            }
            Some(home) if !self.is_up(home) => {
                let takeover_after = state.spec.takeover_after;
                let registering = agent.registering;
                let Some(state) = self.repl_state() else {
                    return;
                };
                state.report.skipped_owner_down += 1;
                let since = *state.agents[i as usize].owner_down_since.get_or_insert(now);
                if let Some(after) = takeover_after
                    && now >= since + after
                    && !registering
                    && let Some(t) = self.pick_host(Some(home))
                {
                    self.register_agent(i, t);
                }
            }
            Some(home) => {
                let (busy, registering) = (agent.busy, agent.registering);
                let stalled = self.is_stalled(home);
                let Some(state) = self.repl_state() else {
                    return;
                };
                state.agents[i as usize].owner_down_since = None;
                if registering {
                    return;
                }
                if owner.is_none() {
                    state.report.skipped_no_owner += 1;
                } else if stalled {
                    state.report.skipped_owner_stalled += 1;
                } else if busy {
                    state.report.skipped_busy += 1;
                } else {
                    self.put_agent(i, home);
                }
                self.maybe_get(i);
            }
        }
    }

    /// A random usable host other than `not`.
    fn pick_host(&mut self, not: Option<HostId>) -> Option<HostId> {
        let hosts: Vec<HostId> = self
            .usable_hosts()
            .into_iter()
            .filter(|h| Some(*h) != not)
            .collect();
        let state = self.repl.as_deref_mut()?;
        if hosts.is_empty() {
            return None;
        }
        Some(hosts[state.rng.random_range(0..hosts.len())])
    }

    fn register_agent(&mut self, i: u32, h: HostId) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let id = state.agents[i as usize].id.clone();
        let Some(r) = self.hosts[h as usize].repl.as_mut() else {
            return;
        };
        match r.register(now, id, format!("{{\"agent\":{i}}}"), None) {
            Ok(reg) => {
                state.regs.insert((h, reg), i);
                state.agents[i as usize].registering = true;
            }
            Err(e) => {
                *state
                    .report
                    .puts_failed
                    .entry(format!("register: {e}"))
                    .or_default() += 1;
            }
        }
        self.repl_after(h);
    }

    fn put_agent(&mut self, i: u32, h: HostId) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let agent = &mut state.agents[i as usize];
        agent.counter += 1;
        let (id, counter) = (agent.id.clone(), agent.counter);
        let body = snapshot_body(i, counter, &mut state.rng);
        let sum = checksum(&body);
        let Some(r) = self.hosts[h as usize].repl.as_mut() else {
            return;
        };
        state.report.puts_started += 1;
        match r.put(now, &id, body, None) {
            Ok(put) => {
                state.puts.insert(
                    (h, put),
                    PendingPut {
                        agent: i,
                        started: now,
                        checksum: sum,
                    },
                );
                state.agents[i as usize].busy = true;
            }
            Err(e) => {
                *state
                    .report
                    .puts_failed
                    .entry(e.code().to_string())
                    .or_default() += 1;
            }
        }
        self.repl_after(h);
    }

    fn maybe_get(&mut self, i: u32) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let fraction = state.spec.get_fraction.clamp(0.0, 1.0);
        if fraction <= 0.0 || !state.rng.random_bool(fraction) {
            return;
        }
        let Some(h) = self.pick_host(None) else {
            return;
        };
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let agent = &state.agents[i as usize];
        let (id, acked_then) = (agent.id.clone(), agent.acked);
        let Some(r) = self.hosts[h as usize].repl.as_mut() else {
            return;
        };
        match r.get(now, &id, None) {
            Ok(get) => {
                state.gets.insert(
                    (h, get),
                    PendingGet {
                        agent: i,
                        acked_then,
                    },
                );
            }
            Err(e) => {
                *state
                    .report
                    .gets_failed
                    .entry(e.code().to_string())
                    .or_default() += 1;
            }
        }
        self.repl_after(h);
    }

    /// A takeover that lost its election: the workload tries again later.
    fn on_register_failed(&mut self, h: HostId, reg: u64) {
        let Some(state) = self.repl_state() else {
            return;
        };
        if let Some(i) = state.regs.remove(&(h, reg)) {
            state.agents[i as usize].registering = false;
        }
    }

    fn on_register_done(&mut self, h: HostId, reg: u64) {
        let Some(state) = self.repl_state() else {
            return;
        };
        let Some(i) = state.regs.remove(&(h, reg)) else {
            return;
        };
        let agent = &mut state.agents[i as usize];
        if agent.home.is_some_and(|old| old != h) {
            state.report.takeovers += 1;
        }
        agent.home = Some(h);
        agent.registering = false;
        agent.owner_down_since = None;
        state.report.registered += 1;
    }

    fn on_put_done(&mut self, h: HostId, put: u64, result: Result<PutOutcome, PutError>) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let Some(p) = state.puts.remove(&(h, put)) else {
            return;
        };
        let agent = &mut state.agents[p.agent as usize];
        agent.busy = false;
        match result {
            Ok(out) => {
                state.report.puts_acked += 1;
                let version = (out.epoch, out.seq);
                agent.acked = Some(agent.acked.map_or(version, |a| a.max(version)));
                state
                    .latencies_ms
                    .push((now - p.started).as_secs_f64() * 1e3);
                state
                    .acked_sums
                    .insert((p.agent, out.epoch, out.seq), p.checksum);
                // The copies the answer names are on those disks now.
                let mut on: Vec<HostId> = vec![h];
                on.extend(
                    out.stored_on
                        .iter()
                        .filter_map(|holder| self.by_name.get(&holder.name).copied()),
                );
                for x in on {
                    let held = state.disks[x as usize]
                        .versions
                        .get(&out.agent)
                        .is_some_and(|v| {
                            v.get(&out.seq).is_some_and(|(m, _)| m.epoch == out.epoch)
                        });
                    let live = self.hosts[x as usize].core.is_some();
                    if live && !held {
                        state.report.acked_copies_missing += 1;
                    }
                }
                if let Some(written) = state.written.get(&(p.agent, out.epoch, out.seq))
                    && *written != p.checksum
                {
                    self.violations.push(Violation::WrongSnapshot {
                        at: now,
                        agent: out.agent.to_string(),
                        detail: format!(
                            "put acknowledged as epoch {} seq {}, but that version holds other bytes",
                            out.epoch, out.seq
                        ),
                    });
                }
            }
            Err(e) => {
                *state
                    .report
                    .puts_failed
                    .entry(e.code().to_string())
                    .or_default() += 1;
            }
        }
    }

    fn on_get_done(&mut self, h: HostId, get: u64, result: Result<(SnapMeta, Bytes), GetError>) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let Some(g) = state.gets.remove(&(h, get)) else {
            return;
        };
        match result {
            Ok((meta, body)) => {
                state.report.gets_ok += 1;
                let owner_bytes = body.get(..4).map(|b| b == g.agent.to_le_bytes());
                let acked = state.acked_sums.get(&(g.agent, meta.epoch, meta.seq));
                let wrong = if checksum(&body) != meta.checksum {
                    Some("a read returned bytes that fail their checksum".to_string())
                } else if owner_bytes != Some(true) {
                    Some("a read returned another agent's snapshot".to_string())
                } else if acked.is_some_and(|sum| *sum != meta.checksum) {
                    Some(format!(
                        "a read of epoch {} seq {} returned other bytes than were acknowledged",
                        meta.epoch, meta.seq
                    ))
                } else {
                    None
                };
                if g.acked_then.is_some_and(|a| a > (meta.epoch, meta.seq)) {
                    state.report.stale_reads += 1;
                }
                if let Some(detail) = wrong {
                    let agent = state.agents[g.agent as usize].id.to_string();
                    self.violations.push(Violation::WrongSnapshot {
                        at: now,
                        agent,
                        detail,
                    });
                }
            }
            Err(e) => {
                *state
                    .report
                    .gets_failed
                    .entry(e.code().to_string())
                    .or_default() += 1;
            }
        }
    }

    fn on_repl_event(&mut self, h: HostId, event: ReplEvent) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        // Ownership starts here: R1 compares the new owner with every other.
        if let ReplEvent::AgentOwned { agent, .. }
        | ReplEvent::AgentAdopted { agent, .. }
        | ReplEvent::AgentUnfenced { agent, .. } = &event
            && let Some(i) = state.index_of(agent)
        {
            state.owner_candidates.entry(i).or_default().insert(h);
            let a = &mut state.agents[i as usize];
            if a.home.is_some_and(|old| old != h) && !a.registering {
                a.home = Some(h);
                a.owner_down_since = None;
            } else if a.home.is_none() && !a.registering {
                a.home = Some(h);
            }
            if let ReplEvent::AgentAdopted { .. } = &event {
                state.report.adoptions += 1;
                if let Some(at) = state.owner_crashed_at.remove(&i) {
                    state.rto_ms.push((now - at).as_secs_f64() * 1e3);
                }
            }
            self.check_owners(i);
        }
        let Some(state) = self.repl_state() else {
            return;
        };
        *state
            .report
            .events
            .entry(event.kind().to_string())
            .or_default() += 1;
        match event {
            ReplEvent::RepairDone { bytes, .. } => {
                state.report.repair_bytes += bytes;
                state.last_repair_at = Some(now);
            }
            ReplEvent::SnapshotHealed { .. } => state.last_repair_at = Some(now),
            ReplEvent::AgentOwned { .. }
            | ReplEvent::AgentLost { .. }
            | ReplEvent::AgentDegraded { .. }
            | ReplEvent::AgentRestored { .. }
            | ReplEvent::SnapshotCorrupt { .. }
            | ReplEvent::ElectionStarted { .. }
            | ReplEvent::CoordinatorElected { .. }
            | ReplEvent::AgentAdopted { .. }
            | ReplEvent::AgentPending { .. }
            | ReplEvent::AgentFenced { .. }
            | ReplEvent::AgentUnfenced { .. }
            | ReplEvent::AgentIsolation { .. } => {}
        }
    }

    // ---- invariants ----------------------------------------------------------------

    fn repl_check(&mut self) {
        let now = self.now;
        self.check_snapshots();
        // The catalogs are read at the same pace whether the checks run every second
        // or every 250 ms (after the faults).
        let scan = self
            .repl
            .as_deref()
            .is_some_and(|s| s.next_catalog_scan <= now);
        if let Some(state) = self.repl_state()
            && scan
        {
            state.next_catalog_scan = now + Duration::from_secs(1);
        }
        self.check_recovery(scan);
        let Some(state) = self.repl.as_deref() else {
            return;
        };
        let over = state.faults_over_at.is_some();
        let pending =
            over && (state.copies_restored_at.is_none() || state.catalog_agreed_at.is_none());
        if pending {
            let (restored_at, agreed_at) = (state.copies_restored_at, state.catalog_agreed_at);
            let restored =
                restored_at.is_none() && self.copies_shortfall().iter().all(|s| !s.owner_live);
            let agreed = agreed_at.is_none() && self.catalogs_agree();
            if let Some(state) = self.repl_state() {
                if restored {
                    state.copies_restored_at = Some(now);
                }
                if agreed {
                    state.catalog_agreed_at = Some(now);
                }
            }
        }
        let step = if pending {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        self.schedule(now + step, Action::Repl(ReplAction::Check));
    }

    /// R2: `h` sees `agent` at `epoch`; it must not be below what `h` saw before (or,
    /// since its last restart, what its disk held).
    fn note_epoch(&mut self, h: HostId, agent: &AgentId, epoch: u64) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let Some(i) = state.index_of(agent) else {
            return;
        };
        let seen = &mut state.seen_epoch[h as usize];
        if seen.len() <= i as usize {
            seen.resize(state.agents.len().max(i as usize + 1), 0);
        }
        let seen = &mut seen[i as usize];
        if *seen == 0 {
            *seen = epoch + 1;
        }
        if epoch + 1 < *seen {
            let from = *seen - 1;
            if state.r2_reported.insert((h, i)) {
                let host = self.name_of(h);
                self.violations.push(Violation::EpochWentBack {
                    at: now,
                    host,
                    agent: agent.to_string(),
                    from,
                    to: epoch,
                });
            }
        } else {
            *seen = epoch + 1;
        }
    }

    /// R1 after a change of `h`'s record of an agent (every record an owner changes is
    /// one it keeps on disk, so this sees every change of an owner's epoch): when `h`
    /// owns the agent or is named its owner, its owners are compared again.
    fn note_record(&mut self, h: HostId, record: &AgentRecord) {
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        let Some(i) = state.index_of(&record.agent) else {
            return;
        };
        let named = record.owner == self.hosts[h as usize].name;
        let cands = state.owner_candidates.entry(i).or_default();
        if named {
            cands.insert(h);
        }
        if cands.contains(&h) {
            self.check_owners(i);
        }
    }

    /// Reads `h`'s whole catalog: R2 for every record, and the agents it owns become
    /// R1 candidates (and are checked).
    fn scan_host(&mut self, h: HostId) {
        let Some(r) = self.hosts[h as usize].repl.as_ref() else {
            return;
        };
        let views: Vec<(AgentId, u64, bool)> = r
            .agents()
            .into_iter()
            .map(|v| (v.record.agent, v.record.epoch, v.local_owner))
            .collect();
        if let Some(state) = self.repl_state() {
            state.report.r2_scans += 1;
        }
        let mut owned = Vec::new();
        for (agent, epoch, local_owner) in views {
            self.note_epoch(h, &agent, epoch);
            if local_owner
                && let Some(state) = self.repl.as_deref_mut()
                && let Some(i) = state.index_of(&agent)
                && state.owner_candidates.entry(i).or_default().insert(h)
            {
                owned.push(i);
            }
        }
        for i in owned {
            self.check_owners(i);
        }
    }

    /// The live hosts that own agent `i` unfenced, with the epoch of their record;
    /// hosts that neither run nor own it leave the candidates.
    fn unfenced_owners(&mut self, i: u32) -> Vec<(HostId, u64)> {
        let Some(state) = self.repl.as_deref_mut() else {
            return Vec::new();
        };
        let Some(cands) = state.owner_candidates.get(&i) else {
            return Vec::new();
        };
        let id = &state.agents[i as usize].id;
        let mut still = BTreeSet::new();
        let mut out = Vec::new();
        for &h in cands {
            let Some(r) = self.hosts[h as usize].repl.as_ref() else {
                continue; // crashed: a restart scans its catalog again
            };
            let Some(v) = r.agent(id) else { continue };
            if v.local_owner {
                still.insert(h);
                if !r.is_fenced(id) {
                    out.push((h, v.record.epoch));
                }
            }
        }
        state.owner_candidates.insert(i, still);
        out
    }

    /// R1: no two live hosts own agent `i` unfenced in the same epoch.
    fn check_owners(&mut self, i: u32) {
        let now = self.now;
        let owners = self.unfenced_owners(i);
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        state.report.r1_checks += 1;
        if owners.len() < 2 {
            return;
        }
        // Not R1 but reported: an owner of an older epoch still unfenced while a newer
        // one is (the older one may acknowledge puts the newer epoch supersedes).
        let newest = owners.iter().map(|(_, e)| *e).max().unwrap_or(0);
        for (h, e) in &owners {
            if *e < newest && state.stale_owner_reported.insert((i, *e)) {
                state.report.stale_unfenced_owners += 1;
                if state.report.stale_unfenced_owner_examples.len() < 5 {
                    state.report.stale_unfenced_owner_examples.push(format!(
                        "at {:.3} s: {} owns {} unfenced in epoch {e}, while epoch {newest} has an owner",
                        now.as_secs_f64(),
                        self.hosts[*h as usize].name,
                        state.agents[i as usize].id
                    ));
                }
            }
        }
        let mut by_epoch: BTreeMap<u64, Vec<HostId>> = BTreeMap::new();
        for (h, e) in owners {
            by_epoch.entry(e).or_default().push(h);
        }
        for (epoch, hosts) in by_epoch {
            if hosts.len() > 1 && state.r1_reported.insert((i, epoch)) {
                let agent = state.agents[i as usize].id.to_string();
                let hosts = hosts
                    .iter()
                    .map(|h| self.hosts[*h as usize].name.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.violations.push(Violation::TwoOwners {
                    at: now,
                    agent,
                    epoch,
                    hosts,
                });
            }
        }
    }

    /// With `scan`, R2 (and R1 for owners found there) over the catalogs of a few
    /// hosts in turn (about 200 000 records a simulated second, every host for small
    /// runs). R1 itself is checked at every change of ownership, fencing or an owner's
    /// record, not here.
    fn check_recovery(&mut self, scan: bool) {
        self.refresh_homes();
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        if !scan {
            return;
        }
        let per_check = (200_000 / state.spec.agents.max(1)).clamp(1, self.config.nodes.max(1));
        let first = state.scan_cursor;
        state.scan_cursor = (first + per_check) % self.config.nodes.max(1);
        for k in 0..per_check {
            self.scan_host((first + k) % self.config.nodes.max(1));
        }
    }

    /// Points every registered agent's home at its current owner (the live host that
    /// owns it unfenced in the highest epoch), when it has one.
    fn refresh_homes(&mut self) {
        let Some(state) = self.repl.as_deref() else {
            return;
        };
        let n = state.agents.len() as u32;
        for i in 0..n {
            let Some(state) = self.repl.as_deref() else {
                return;
            };
            let a = &state.agents[i as usize];
            if a.home.is_none() || a.registering {
                continue;
            }
            if let Some(o) = self.live_owner(i)
                && let Some(state) = self.repl.as_deref_mut()
            {
                state.agents[i as usize].home = Some(o);
            }
        }
    }

    /// The live host that owns agent `i` unfenced in the highest epoch.
    fn live_owner(&mut self, i: u32) -> Option<HostId> {
        let state = self.repl.as_deref_mut()?;
        if let Some(home) = state.agents[i as usize].home {
            state.owner_candidates.entry(i).or_default().insert(home);
        }
        self.unfenced_owners(i)
            .into_iter()
            .max_by_key(|(h, e)| (*e, std::cmp::Reverse(*h)))
            .map(|(h, _)| h)
    }

    /// R3's measure: registered agents without a live, unfenced owner, split into
    /// those whose holders (in the newest record a live host has) are mostly live,
    /// and the others.
    pub fn ownerless_agents(&mut self) -> (Vec<String>, usize) {
        let Some(state) = self.repl.as_deref() else {
            return (Vec::new(), 0);
        };
        let registered: Vec<u32> = (0..state.agents.len() as u32)
            .filter(|i| state.agents[*i as usize].home.is_some())
            .collect();
        let live = self.live_hosts();
        let mut out = Vec::new();
        let mut holders_down = 0;
        for i in registered {
            if self.live_owner(i).is_some() {
                continue;
            }
            let Some(state) = self.repl.as_deref() else {
                break;
            };
            let id = &state.agents[i as usize].id;
            let newest = live
                .iter()
                .filter_map(|h| self.hosts[*h as usize].repl.as_ref())
                .filter_map(|r| r.agent(id))
                .max_by_key(|v| v.record.epoch);
            let Some(v) = newest else {
                holders_down += 1;
                continue;
            };
            let holders = &v.record.holders;
            let up = holders
                .iter()
                .filter(|n| self.by_name.get(&n.name).is_some_and(|h| self.is_up(*h)))
                .count();
            if up * 2 > holders.len() {
                out.push(format!(
                    "{} (epoch {}, owner {}, {up} of {} holders live)",
                    id,
                    v.record.epoch,
                    v.record.owner,
                    holders.len()
                ));
            } else {
                holders_down += 1;
            }
        }
        (out, holders_down)
    }

    /// I1: every agent's latest acknowledged (epoch, seq), or a newer version, is on
    /// the disk of a live host. Returns what is broken now; records a violation the
    /// first time per agent.
    pub fn check_snapshots(&mut self) -> Vec<Violation> {
        let now = self.now;
        let live: Vec<HostId> = self.live_hosts();
        let nodes = self.config.nodes as usize;
        let Some(state) = self.repl.as_deref_mut() else {
            return Vec::new();
        };
        state.report.i1_checks += 1;
        // An agent with its acknowledged version on as many crashed hosts as it has
        // copies (its owner and k holders, or every host of a small cluster): no
        // placement could have kept one live, and the disks are kept (a restarted
        // host finds them), so it is unavailable until one is back, not lost. Fewer
        // (say, only on its crashed owner) is a loss.
        let all_copies = (state.spec.copies + 1).min(nodes);
        // The newest version of each agent on a live disk, by agent index.
        let mut best: Vec<Option<(u64, u64)>> = vec![None; state.agents.len()];
        for &h in &live {
            for (agent, versions) in &state.disks[h as usize].versions {
                if let Some(i) = state.index_of(agent)
                    && let Some(v) = versions.values().map(|(m, _)| (m.epoch, m.seq)).max()
                {
                    let b = &mut best[i as usize];
                    *b = Some(b.map_or(v, |b| b.max(v)));
                }
            }
        }
        let mut broken = Vec::new();
        for (i, agent) in state.agents.iter().enumerate() {
            let Some(acked) = agent.acked else { continue };
            if best[i].is_some_and(|b| b >= acked) {
                continue;
            }
            let elsewhere: Vec<String> = state
                .disks
                .iter()
                .enumerate()
                .filter(|(_, d)| d.newest(&agent.id).is_some_and(|v| v >= acked))
                .map(|(h, _)| self.hosts[h].name.to_string())
                .collect();
            if elsewhere.len() >= all_copies {
                continue;
            }
            let detail = format!(
                "newest on a live disk: {}; at least as new on crashed hosts: [{}]; owner {}",
                best[i].map_or("none".to_string(), |(e, s)| format!("epoch {e} seq {s}")),
                elsewhere.join(" "),
                agent
                    .home
                    .map_or("none".to_string(), |h| self.hosts[h as usize]
                        .name
                        .to_string()),
            );
            let v = Violation::SnapshotLost {
                at: now,
                agent: agent.id.to_string(),
                epoch: acked.0,
                seq: acked.1,
                detail,
            };
            if state.lost_reported.insert(i as u32) {
                self.violations.push(v.clone());
            }
            broken.push(v);
        }
        broken
    }

    /// I2's measure: agents (acknowledged at least once, with an owner) whose copies
    /// on live hosts other than the owner, of the latest acknowledged version or a
    /// newer one, are fewer, or in fewer zones, than `placement::place` over the live
    /// hosts gives.
    ///
    /// The disks are read once per call (not once per agent and host), and what
    /// `placement::place` wants for an agent is kept until the live hosts or the
    /// agent's owner change.
    pub fn copies_shortfall(&mut self) -> Vec<Shortfall> {
        let live: Vec<HostId> = self.live_hosts();
        let Some(state) = self.repl.as_deref_mut() else {
            return Vec::new();
        };
        // Live hosts holding each agent, with the newest version on their disk.
        let mut on_disk: Vec<Vec<(HostId, (u64, u64))>> = vec![Vec::new(); state.agents.len()];
        for &h in &live {
            for (agent, versions) in &state.disks[h as usize].versions {
                if let Some(i) = state.index_of(agent)
                    && let Some(v) = versions.values().map(|(m, _)| (m.epoch, m.seq)).max()
                {
                    on_disk[i as usize].push((h, v));
                }
            }
        }
        if state.want_cache.live != live {
            state.want_cache = WantCache {
                live: live.clone(),
                per_agent: vec![None; state.agents.len()],
            };
        }
        let mut out = Vec::new();
        for (i, agent) in state.agents.iter().enumerate() {
            let (Some(acked), Some(owner)) = (agent.acked, agent.home) else {
                continue;
            };
            let want = match state.want_cache.per_agent[i] {
                Some((o, copies, zones)) if o == owner => (copies, zones),
                _ => {
                    let candidates = candidates(&self.hosts, &live, owner);
                    let want =
                        placement::place(&agent.id, &candidates, &[], None, state.spec.copies);
                    let want = (want.holders.len(), want.zones);
                    state.want_cache.per_agent[i] = Some((owner, want.0, want.1));
                    want
                }
            };
            let holders: Vec<HostId> = on_disk[i]
                .iter()
                .filter(|(h, v)| *h != owner && *v >= acked)
                .map(|(h, _)| *h)
                .collect();
            let zones: BTreeSet<&str> = holders
                .iter()
                .map(|h| self.hosts[*h as usize].zone.as_str())
                .collect();
            if holders.len() < want.0 || zones.len() < want.1 {
                out.push(Shortfall {
                    agent: agent.id.to_string(),
                    owner: self.hosts[owner as usize].name.to_string(),
                    owner_live: self.hosts[owner as usize].core.is_some(),
                    holders: holders
                        .iter()
                        .map(|h| self.hosts[*h as usize].name.to_string())
                        .collect(),
                    copies: holders.len(),
                    zones: zones.len(),
                    want_copies: want.0,
                    want_zones: want.1,
                });
            }
        }
        out
    }

    /// Whether every live host's catalog is the same: equal catalog digests (agents,
    /// owners, epochs, versions, holders, priorities, isolation), which implies no
    /// [`World::catalog_disagreements`], at the cost of one digest per host instead of
    /// a copy of every host's catalog.
    pub fn catalogs_agree(&self) -> bool {
        let mut digests = self
            .hosts
            .iter()
            .filter(|h| h.core.is_some())
            .filter_map(|h| h.repl.as_ref())
            .map(|r| r.catalog_digest());
        let first = digests.next();
        digests.all(|d| Some(d) == first)
    }

    /// Agents whose catalog entry (owner, epoch, holders) is not the same on every
    /// live host, or that some live host does not know.
    pub fn catalog_disagreements(&self) -> usize {
        if self.catalogs_agree() {
            return 0;
        }
        type Entry = (NodeName, u64, Vec<NodeName>);
        // Per agent: the first entry seen, whether another differed, how many hosts
        // know it.
        let mut seen: BTreeMap<AgentId, (Entry, bool, usize)> = BTreeMap::new();
        let mut hosts = 0;
        for r in self
            .hosts
            .iter()
            .filter(|h| h.core.is_some())
            .filter_map(|h| h.repl.as_ref())
        {
            hosts += 1;
            for v in r.agents() {
                let mut holders: Vec<NodeName> =
                    v.record.holders.iter().map(|h| h.name.clone()).collect();
                holders.sort();
                let entry = (v.record.owner, v.record.epoch, holders);
                match seen.get_mut(&v.record.agent) {
                    Some((first, differ, known)) => {
                        *differ |= *first != entry;
                        *known += 1;
                    }
                    None => {
                        seen.insert(v.record.agent, (entry, false, 1));
                    }
                }
            }
        }
        seen.values()
            .filter(|(_, differ, known)| *differ || *known < hosts)
            .count()
    }

    /// After the faults: runs until I2 holds (every agent with a live owner has its
    /// copies) or the bound passes (recording a violation), then until the catalogs
    /// agree (a figure), and checks I1 a last time. The bound runs from when the
    /// faults stopped, and lasts at least 10 s from now (the caller waits for the
    /// membership views to converge first).
    pub fn finish_replication(&mut self) {
        let now = self.now;
        let Some(state) = self.repl.as_deref_mut() else {
            return;
        };
        state.workload_on = false;
        state.disk_faults_on = false;
        let over = *state.faults_over_at.get_or_insert(now);
        let deadline = (over + state.spec.settle_bound).max(now + Duration::from_secs(10));
        let step = Duration::from_millis(250);
        loop {
            self.check_snapshots();
            self.refresh_homes();
            let short: Vec<Shortfall> = self
                .copies_shortfall()
                .into_iter()
                .filter(|s| s.owner_live)
                .collect();
            let now = self.now;
            if short.is_empty() {
                if let Some(state) = self.repl_state() {
                    state.copies_restored_at.get_or_insert(now);
                }
                break;
            }
            if now >= deadline {
                let detail = short
                    .iter()
                    .take(5)
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                self.violations.push(Violation::CopiesNotRestored {
                    after: now - over,
                    agents: short.len(),
                    detail,
                });
                break;
            }
            self.run_for(step);
        }
        loop {
            let agreed = self.catalogs_agree();
            let now = self.now;
            if agreed {
                if let Some(state) = self.repl_state() {
                    state.catalog_agreed_at.get_or_insert(now);
                }
                break;
            }
            if now >= deadline {
                break;
            }
            self.run_for(step);
        }
        // R3: every registered agent whose holders are mostly live has a live,
        // unfenced owner.
        loop {
            let (ownerless, _) = self.ownerless_agents();
            let now = self.now;
            if ownerless.is_empty() {
                break;
            }
            if now >= deadline {
                self.violations.push(Violation::NoOwner {
                    after: now - over,
                    agents: ownerless.len(),
                    detail: ownerless
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; "),
                });
                break;
            }
            self.run_for(step);
        }
        self.check_recovery(true);
        self.check_snapshots();
    }

    /// The replication figures so far (None when replication is off).
    pub fn replication_report(&mut self) -> Option<ReplReport> {
        let (ownerless, holders_down) = self.ownerless_agents();
        let state = self.repl.as_deref()?;
        let mut r = state.report.clone();
        r.rto_ms = Quantiles::of(state.rto_ms.clone());
        r.rto_not_adopted += state.owner_crashed_at.len() as u64;
        let registered = state.agents.iter().filter(|a| a.home.is_some()).count();
        r.ownerless_at_end = ownerless.len();
        r.ownerless_holders_down = holders_down;
        r.owned_at_end = registered - ownerless.len() - holders_down;
        r.put_latency_ms = Quantiles::of(state.latencies_ms.clone());
        r.messages = state
            .sent_by_kind
            .iter()
            .map(|(k, (m, b))| (k.to_string(), *m, *b))
            .collect();
        r.never_acked = state.agents.iter().filter(|a| a.acked.is_none()).count() as u32;
        let over = state.faults_over_at;
        let since = |t: Option<Duration>| match (t, over) {
            (Some(t), Some(o)) if t >= o => Some((t - o).as_secs_f64()),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        };
        r.faults_over_at_secs = over.map(|o| o.as_secs_f64());
        r.last_repair_after_faults_secs = match (state.last_repair_at, over) {
            (Some(t), Some(o)) if t >= o => Some((t - o).as_secs_f64()),
            _ => None,
        };
        r.copies_restored_after_faults_secs = since(state.copies_restored_at);
        r.catalog_agreed_after_faults_secs = since(state.catalog_agreed_at);
        r.catalog_disagreements = self.catalog_disagreements();
        let (short, down): (Vec<Shortfall>, Vec<Shortfall>) = self
            .copies_shortfall()
            .into_iter()
            .partition(|s| s.owner_live);
        r.short = short;
        r.short_owner_down = down;
        Some(r)
    }

    // ---- for tests -----------------------------------------------------------------

    /// Hosts whose disk holds any version of `agent`.
    pub fn disk_holders(&self, agent: &str) -> Vec<HostId> {
        let (Some(state), Ok(id)) = (self.repl.as_deref(), AgentId::new(agent)) else {
            return Vec::new();
        };
        (0..self.config.nodes)
            .filter(|h| state.disks[*h as usize].versions.contains_key(&id))
            .collect()
    }

    /// Deletes every version of `agent` from the disks of `hosts`, behind the
    /// replicators' backs (what a lost disk would do).
    pub fn wipe_snapshots(&mut self, agent: &str, hosts: &[HostId]) {
        let Ok(id) = AgentId::new(agent) else {
            return;
        };
        if let Some(state) = self.repl_state() {
            for h in hosts {
                if let Some(d) = state.disks.get_mut(*h as usize) {
                    d.versions.remove(&id);
                }
            }
        }
    }

    /// The host `agent` is registered with (its owner), if any.
    pub fn agent_owner(&self, agent: &str) -> Option<HostId> {
        let state = self.repl.as_deref()?;
        state
            .agents
            .iter()
            .find(|a| a.id.as_str() == agent)
            .and_then(|a| a.home)
    }

    /// Agents with an acknowledged put so far.
    pub fn acked_agents(&self) -> Vec<String> {
        self.repl
            .as_deref()
            .map(|s| {
                s.agents
                    .iter()
                    .filter(|a| a.acked.is_some())
                    .map(|a| a.id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}
