//! The simulated world: hosts running `vigil_protocol::Core`, a network with latency,
//! loss, duplication, reordering and partitions, and faults on a schedule. With
//! replication on, each host also runs a `vigil_protocol::Replicator` with a
//! simulated disk (see [`replication`]).
//!
//! Everything happens in one queue ordered by (simulated time, sequence number), and
//! every random choice comes from one `ChaCha8Rng` seeded from the run's seed, so a
//! seed and a configuration reproduce a run bit for bit.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use vigil_protocol::wire::{self, Body, MAX_STREAM_FRAME_LEN};
use vigil_protocol::{
    Core, Detector, Effect, Event, LocalState, MemberState, NodeId, NodeName, Profile, Replicator,
    Zone,
};

pub mod replication;

use replication::{ReplAction, ReplInput, ReplState};
pub use replication::{ReplReport, ReplSpec, Shortfall};

pub type HostId = u32;

/// Per-message network behaviour.
#[derive(Debug, Clone, Serialize)]
pub struct NetConfig {
    /// One-way latency, drawn uniformly per message.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Extra one-way latency on links between hosts of different zones (availability
    /// zones of one region are typically a millisecond or so apart).
    pub cross_zone: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back by up to `reorder_delay` extra.
    pub reorder: f64,
    pub reorder_delay: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_min: Duration::from_micros(200),
            latency_max: Duration::from_millis(2),
            cross_zone: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(20),
        }
    }
}

/// Something that happens to hosts or the network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Fault {
    /// The host stops at once (kill -9, power loss).
    Crash(HostId),
    /// A crashed host starts again with a new generation and joins through the seeds.
    Restart(HostId),
    /// The host processes nothing for `duration` (GC pause, SIGSTOP, CPU starvation),
    /// then handles everything that queued up.
    Stall { host: HostId, duration: Duration },
    /// Every message the host receives waits `delay` before it is handled (its
    /// inbound queue backs up, as under CPU exhaustion), while its timers still fire
    /// on time; for `duration`. This is Lifeguard's "slow member".
    Slow {
        host: HostId,
        delay: Duration,
        duration: Duration,
    },
    /// Hosts in different groups cannot reach each other. With `one_way`, only
    /// messages from a lower-numbered group to a higher-numbered one are lost.
    Partition {
        groups: Vec<Vec<HostId>>,
        one_way: bool,
    },
    /// Ends any partition.
    Heal,
    /// Changes the loss probability.
    SetLoss(f64),
}

/// Settings of one run.
#[derive(Debug, Clone, Serialize)]
pub struct WorldConfig {
    pub nodes: u32,
    pub zones: u32,
    pub detector: Detector,
    pub seed: u64,
    pub net: NetConfig,
    /// Hosts every other host joins through.
    pub seeds: u32,
    /// Delay between the starts of consecutive hosts at bootstrap.
    pub start_stagger: Duration,
    /// Check every core's view against foca's state every this many events (0: never).
    pub check_views_every: u64,
    /// Snapshot replication next to every core, with a workload (None: off).
    pub replication: Option<ReplSpec>,
}

impl WorldConfig {
    pub fn new(nodes: u32, seed: u64) -> Self {
        WorldConfig {
            nodes,
            zones: 3,
            detector: Detector::Vigil(Profile::Lan),
            seed,
            net: NetConfig::default(),
            seeds: 3,
            start_stagger: Duration::from_millis(2),
            check_views_every: 0,
            replication: None,
        }
    }
}

/// A broken invariant: the run is wrong, not merely slow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum Violation {
    #[error("at {at:?}: {host}'s view disagrees with its SWIM state: {detail}")]
    ViewInconsistent {
        at: Duration,
        host: String,
        detail: String,
    },
    #[error("{after:?} after the last fault, views still differ from the truth: {detail}")]
    NotConverged { after: Duration, detail: String },
    /// I1: an agent's latest acknowledged snapshot (or a newer one) is on no live
    /// host's disk.
    #[error(
        "at {at:?}: agent {agent}'s acknowledged snapshot epoch {epoch} seq {seq} is on no live host's disk: {detail}"
    )]
    SnapshotLost {
        at: Duration,
        agent: String,
        epoch: u64,
        seq: u64,
        detail: String,
    },
    /// I2: after the faults stopped and the settle bound, agents whose owner is live
    /// lack copies or zone spread that the live hosts allow.
    #[error(
        "{after:?} after the faults stopped, {agents} agents with a live owner still lack copies or zones: {detail}"
    )]
    CopiesNotRestored {
        after: Duration,
        agents: usize,
        detail: String,
    },
    /// Two different snapshots carry the same (agent, epoch, seq), or a read returned
    /// bytes that are not the agent's.
    #[error("at {at:?}: agent {agent}: {detail}")]
    WrongSnapshot {
        at: Duration,
        agent: String,
        detail: String,
    },
    /// R1: two live hosts (a partitioned or stalled one counts) own the same agent in
    /// the same epoch, neither of them fenced.
    #[error("at {at:?}: agent {agent} has two unfenced owners in epoch {epoch}: {hosts}")]
    TwoOwners {
        at: Duration,
        agent: String,
        epoch: u64,
        hosts: String,
    },
    /// R2: the epoch of an agent's record, as one host sees it, went backwards (a
    /// restarted host starts from what its disk held).
    #[error("at {at:?}: {host} saw agent {agent}'s epoch go back from {from} to {to}")]
    EpochWentBack {
        at: Duration,
        host: String,
        agent: String,
        from: u64,
        to: u64,
    },
    /// R3: after the faults stopped and the settle bound, agents whose holders are
    /// mostly live have no live, unfenced owner.
    #[error(
        "{after:?} after the faults stopped, {agents} agents whose holders are mostly live have no live unfenced owner: {detail}"
    )]
    NoOwner {
        after: Duration,
        agents: usize,
        detail: String,
    },
    /// A replicator misbehaved: a message that does not fit a stream frame, or a timer
    /// that stays due at the same instant.
    #[error("at {at:?}: {host}'s replicator: {detail}")]
    Replicator {
        at: Duration,
        host: String,
        detail: String,
    },
}

/// A down declaration about a host that was up, reachable and running normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FalsePositive {
    pub at: Duration,
    pub observer: String,
    pub member: String,
}

/// What happened after one crash.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub host: String,
    pub crashed_at: Duration,
    /// Delay until each observer (alive through the whole detection) saw the host
    /// down, sorted.
    pub observed_after: Vec<Duration>,
    /// Observers that never saw it down before the run ended.
    pub missed: usize,
    pub first_suspected_after: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct HostStats {
    pub tx_bytes: u64,
    pub tx_messages: u64,
    pub rx_bytes: u64,
    pub rx_messages: u64,
}

#[derive(Debug)]
enum Action {
    Deliver {
        to: HostId,
        from: HostId,
        bytes: Bytes,
        /// Already held back by a slow host once.
        delayed: bool,
    },
    Timer {
        host: HostId,
        /// Already held back by a slow host once.
        delayed: bool,
    },
    StallEnd {
        host: HostId,
    },
    SlowEnd {
        host: HostId,
    },
    Join {
        host: HostId,
    },
    Fault(Fault),
    Repl(ReplAction),
}

/// The event queue: a heap of small (time, sequence, slot) keys, the actions in a
/// slab beside it. Ordered by (time, sequence) like a heap of the actions themselves,
/// but a pop moves 24 bytes per level instead of a whole action (message bytes, disk
/// work): with millions of messages in flight (every host asking every other at once)
/// the heap's moves were most of the simulator's time.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Duration, u64, u32)>>,
    slots: Vec<Option<Action>>,
    free: Vec<u32>,
}

impl Queue {
    fn push(&mut self, at: Duration, seq: u64, action: Action) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(action);
                slot
            }
            None => {
                self.slots.push(Some(action));
                u32::try_from(self.slots.len() - 1)
                    .unwrap_or_else(|_| unreachable!("fewer than 2^32 events in flight"))
            }
        };
        self.heap.push(Reverse((at, seq, slot)));
    }

    fn peek_at(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop(&mut self) -> Option<(Duration, Action)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        let action = self.slots[slot as usize].take()?;
        Some((at, action))
    }
}

/// Same join policy as the node: announce to the seeds, back off from 200 ms to 10 s,
/// and when isolated also to the members known most recently.
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(10);

struct Host {
    name: NodeName,
    zone: Zone,
    addr: SocketAddr,
    generation: u64,
    core: Option<Core>,
    started: bool,
    stalled_until: Option<Duration>,
    slow_delay: Option<Duration>,
    /// Inputs that arrived while stalled, handled in order when the stall ends.
    backlog: Vec<(HostId, Bytes)>,
    /// Due time of the timer entry in the queue, if any.
    timer_at: Option<Duration>,
    join_backoff: Duration,
    join_pending: bool,
    /// Last time the host was impaired (stalled, slowed, restarted): down declarations
    /// about it shortly after are not false positives.
    impaired_until: Duration,
    stats: HostStats,
    /// The replicator next to the core (replication runs only).
    repl: Option<Replicator>,
    /// Raised at every crash: disk completions of an earlier run are dropped.
    incarnation: u64,
    /// Due time of the replicator's timer entry in the queue, if any.
    repl_timer_at: Option<Duration>,
    /// Replication inputs (messages, disk completions) that arrived while stalled.
    repl_backlog: Vec<ReplInput>,
}

/// When one observer first suspected, and first declared down, one generation of a
/// host.
type Sighting = (Option<Duration>, Option<Duration>);

/// An event a core reported, with when and where.
#[derive(Debug, Clone)]
pub struct Observed {
    pub at: Duration,
    pub observer: HostId,
    pub event: Event,
}

pub struct World {
    pub config: WorldConfig,
    now: Duration,
    seq: u64,
    queue: Queue,
    rng: ChaCha8Rng,
    hosts: Vec<Host>,
    by_name: BTreeMap<NodeName, HostId>,
    partition: Option<(Vec<u32>, bool)>,
    /// Until when a partition (or its healing) may explain down declarations.
    partition_effect_until: Duration,
    loss: f64,
    events_handled: u64,
    /// Every core event, if recording is on.
    pub observed: Vec<Observed>,
    pub record_events: bool,
    pub false_positives: Vec<FalsePositive>,
    pub suspicions_of_healthy: u64,
    crashes: Vec<(HostId, u64, Duration)>,
    /// (host, generation) -> per observer: first suspect, first down.
    sightings: BTreeMap<(HostId, u64), BTreeMap<HostId, Sighting>>,
    pub violations: Vec<Violation>,
    pub messages_lost: u64,
    pub input_errors: u64,
    /// Messages and bytes sent, by envelope kind (swim, pull, state).
    pub sent_by_kind: BTreeMap<&'static str, (u64, u64)>,
    /// Replication: disks, workload, figures (None: off).
    repl: Option<Box<ReplState>>,
    /// `VIGIL_SIM_PROGRESS=SECS`: where the wall time goes (None: off).
    progress: Option<Progress>,
    /// Messages sent, as the wire carries them, when [`World::capture`] is on.
    tap: Option<Vec<Captured>>,
}

/// One message as the wire carried it (before loss), for the fuzz corpus
/// (`vigil-sim fuzz-corpus`).
#[derive(Debug, Clone)]
pub struct Captured {
    pub from: HostId,
    pub to: HostId,
    /// A `wire` envelope.
    pub envelope: Bytes,
    /// The snapshot bytes after a replication message, if it carries some.
    pub payload: Option<Bytes>,
}

/// Messages [`World::capture`] keeps at most.
const TAP_LIMIT: usize = 500_000;

/// `VIGIL_SIM_PROGRESS=SECS` prints to stderr, every SECS simulated seconds, the
/// simulated and wall time so far and the wall time spent per kind of event
/// (replication messages by kind), for finding what makes a large run slow. It reads
/// the clock around every event, so it is off by default; it changes nothing in the run.
struct Progress {
    started: Instant,
    every: Duration,
    next: Duration,
    by_kind: BTreeMap<&'static str, (u64, Duration)>,
}

impl Progress {
    fn from_env() -> Option<Progress> {
        let secs: f64 = std::env::var("VIGIL_SIM_PROGRESS").ok()?.parse().ok()?;
        (secs.is_finite() && secs > 0.0).then(|| Progress {
            started: Instant::now(),
            every: Duration::from_secs_f64(secs),
            next: Duration::ZERO,
            by_kind: BTreeMap::new(),
        })
    }
}

/// The kind of an event, for [`Progress`].
fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Deliver { .. } => "swim_deliver",
        Action::Timer { .. } => "swim_timer",
        Action::StallEnd { .. } | Action::SlowEnd { .. } => "stall",
        Action::Join { .. } => "join",
        Action::Fault(_) => "fault",
        Action::Repl(r) => match r {
            ReplAction::Deliver { envelope, .. } => {
                match wire::decode(envelope, MAX_STREAM_FRAME_LEN) {
                    Ok(Body::Repl(m)) => m.kind(),
                    _ => "repl_undecodable",
                }
            }
            ReplAction::Timer { .. } => "repl_timer",
            ReplAction::Disk { .. } => "repl_disk",
            ReplAction::Tick { .. } => "repl_tick",
            ReplAction::Check => "repl_check",
            ReplAction::FaultsOver => "faults_over",
        },
    }
}

fn host_name(i: HostId) -> NodeName {
    // Names are the identity everywhere; a fixed format keeps them valid.
    NodeName::new(&format!("h{i}")).unwrap_or_else(|_| unreachable!("h<digits> is a valid name"))
}

fn host_addr(i: HostId) -> SocketAddr {
    let [_, b, c, d] = i.to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, b, c, d), 7946))
}

impl World {
    pub fn new(config: WorldConfig) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let zones: Vec<Zone> = (0..config.zones.max(1))
            .map(|z| Zone::new(&format!("az{}", z + 1)).unwrap_or_else(|_| unreachable!()))
            .collect();
        let mut hosts = Vec::with_capacity(config.nodes as usize);
        let mut by_name = BTreeMap::new();
        for i in 0..config.nodes {
            let name = host_name(i);
            by_name.insert(name.clone(), i);
            hosts.push(Host {
                name,
                zone: zones[(i as usize) % zones.len()].clone(),
                addr: host_addr(i),
                generation: 1 + u64::from(rng.next_u32() % 1000),
                core: None,
                started: false,
                stalled_until: None,
                slow_delay: None,
                backlog: Vec::new(),
                timer_at: None,
                join_backoff: JOIN_BACKOFF_MIN,
                join_pending: false,
                impaired_until: Duration::ZERO,
                stats: HostStats::default(),
                repl: None,
                incarnation: 0,
                repl_timer_at: None,
                repl_backlog: Vec::new(),
            });
        }
        let loss = config.net.loss;
        let repl = config
            .replication
            .clone()
            .map(|spec| Box::new(ReplState::new(spec, config.seed, config.nodes)));
        World {
            config,
            now: Duration::ZERO,
            seq: 0,
            queue: Queue::default(),
            rng,
            hosts,
            by_name,
            partition: None,
            partition_effect_until: Duration::ZERO,
            loss,
            events_handled: 0,
            observed: Vec::new(),
            record_events: false,
            false_positives: Vec::new(),
            suspicions_of_healthy: 0,
            crashes: Vec::new(),
            sightings: BTreeMap::new(),
            violations: Vec::new(),
            messages_lost: 0,
            input_errors: 0,
            sent_by_kind: BTreeMap::new(),
            repl,
            progress: Progress::from_env(),
            tap: None,
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// Keeps every message sent from now on (up to a bound); changes nothing in the run.
    pub fn capture(&mut self) {
        self.tap = Some(Vec::new());
    }

    /// The messages kept since [`World::capture`].
    pub fn captured(&mut self) -> Vec<Captured> {
        self.tap.take().unwrap_or_default()
    }

    fn tap(&mut self, from: HostId, to: HostId, envelope: &Bytes, payload: Option<&Bytes>) {
        if let Some(tap) = self.tap.as_mut()
            && tap.len() < TAP_LIMIT
        {
            tap.push(Captured {
                from,
                to,
                envelope: envelope.clone(),
                payload: payload.cloned(),
            });
        }
    }

    pub fn nodes(&self) -> u32 {
        self.config.nodes
    }

    pub fn events_handled(&self) -> u64 {
        self.events_handled
    }

    fn schedule(&mut self, at: Duration, action: Action) {
        self.seq += 1;
        self.queue.push(at, self.seq, action);
    }

    /// Starts every host, staggered, each joining through the seeds.
    pub fn bootstrap(&mut self) {
        for i in 0..self.config.nodes {
            let at = self.now + self.config.start_stagger * i;
            self.schedule(at, Action::Fault(Fault::Restart(i)));
        }
    }

    /// Starts every host at once with the full membership already known (a converged
    /// cluster), skipping the joins and their gossip.
    pub fn bootstrap_warm(&mut self) {
        self.preregister_agents();
        let now = self.now;
        let mut ids = Vec::with_capacity(self.hosts.len());
        for host in &mut self.hosts {
            host.started = true;
            ids.push(NodeId::new(
                host.name.clone(),
                host.addr,
                host.zone.clone(),
                host.generation,
            ));
        }
        for i in 0..self.hosts.len() {
            let seed = self.rng.next_u64();
            let core = Core::with_detector(ids[i].clone(), self.config.detector, seed);
            self.hosts[i].core = Some(core);
            self.repl_start(i as HostId);
            if let Some(core) = self.hosts[i].core.as_mut() {
                core.assume_members(now, ids.iter().cloned());
            }
            self.after_input(i as HostId);
        }
        self.preregistered_started();
    }

    /// Schedules `fault` at `at`.
    pub fn schedule_fault(&mut self, at: Duration, fault: Fault) {
        self.schedule(at, Action::Fault(fault));
    }

    /// Runs until the queue is empty or simulated time reaches `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(next) = self.queue.peek_at() {
            if next > until {
                break;
            }
            let Some((at, action)) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(at);
            self.events_handled += 1;
            if self.progress.is_some() {
                let kind = action_kind(&action);
                let started = Instant::now();
                self.handle(action);
                self.note_progress(kind, started.elapsed());
            } else {
                self.handle(action);
            }
            let every = self.config.check_views_every;
            if every > 0 && self.events_handled.is_multiple_of(every) {
                self.check_views();
            }
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn note_progress(&mut self, kind: &'static str, took: Duration) {
        let now = self.now;
        let events = self.events_handled;
        let Some(p) = self.progress.as_mut() else {
            return;
        };
        let entry = p.by_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += took;
        if now >= p.next {
            p.next = now + p.every;
            eprintln!(
                "[progress] simulated {:.1} s, wall {:.1} s, {events} events",
                now.as_secs_f64(),
                p.started.elapsed().as_secs_f64(),
            );
            let mut kinds: Vec<_> = p.by_kind.iter().collect();
            kinds.sort_by_key(|(_, (_, spent))| Reverse(*spent));
            for (kind, (n, spent)) in kinds.into_iter().take(12) {
                eprintln!("    {kind:<16} {n:>12} {:>9.2} s", spent.as_secs_f64());
            }
        }
    }

    fn handle(&mut self, action: Action) {
        match action {
            Action::Deliver {
                to,
                from,
                bytes,
                delayed,
            } => self.deliver(to, from, bytes, delayed),
            Action::Timer { host, delayed } => self.fire_timer(host, delayed),
            Action::StallEnd { host } => self.end_stall(host),
            Action::SlowEnd { host } => {
                if let Some(h) = self.hosts.get_mut(host as usize) {
                    h.slow_delay = None;
                    h.impaired_until = self.now;
                }
            }
            Action::Join { host } => self.join_attempt(host),
            Action::Fault(fault) => self.apply_fault(fault),
            Action::Repl(action) => self.handle_repl(action),
        }
    }

    fn is_up(&self, host: HostId) -> bool {
        self.hosts
            .get(host as usize)
            .is_some_and(|h| h.core.is_some())
    }

    fn blocked(&self, from: HostId, to: HostId) -> bool {
        match &self.partition {
            None => false,
            Some((group_of, one_way)) => {
                let (a, b) = (group_of[from as usize], group_of[to as usize]);
                a != b && (!one_way || a < b)
            }
        }
    }

    fn deliver(&mut self, to: HostId, from: HostId, bytes: Bytes, delayed: bool) {
        if self.blocked(from, to) {
            self.messages_lost += 1;
            return;
        }
        let now = self.now;
        let Some(host) = self.hosts.get_mut(to as usize) else {
            return;
        };
        if host.core.is_none() {
            return;
        }
        if let Some(until) = host.stalled_until
            && now < until
        {
            host.backlog.push((from, bytes));
            return;
        }
        if let (Some(delay), false) = (host.slow_delay, delayed) {
            self.schedule(
                now + delay,
                Action::Deliver {
                    to,
                    from,
                    bytes,
                    delayed: true,
                },
            );
            return;
        }
        self.input(to, from, &bytes);
        self.after_input(to);
    }

    fn input(&mut self, to: HostId, from: HostId, bytes: &Bytes) {
        let now = self.now;
        let from_name = self.hosts[from as usize].name.clone();
        let host = &mut self.hosts[to as usize];
        host.stats.rx_bytes += bytes.len() as u64;
        host.stats.rx_messages += 1;
        if let Some(core) = host.core.as_mut()
            && core.handle_datagram(now, &from_name, bytes).is_err()
        {
            self.input_errors += 1;
        }
    }

    fn fire_timer(&mut self, host_id: HostId, delayed: bool) {
        let now = self.now;
        let Some(host) = self.hosts.get_mut(host_id as usize) else {
            return;
        };
        if host.timer_at != Some(now) {
            return; // superseded by an earlier or later timer entry
        }
        let _ = delayed; // timers of a slow host fire on time; only messages wait
        host.timer_at = None;
        if host.stalled_until.is_some_and(|until| now < until) {
            return; // rescheduled when the stall ends
        }
        if let Some(core) = host.core.as_mut() {
            let _ = core.handle_timeout(now);
        }
        self.after_input(host_id);
    }

    fn end_stall(&mut self, host_id: HostId) {
        let now = self.now;
        let Some(host) = self.hosts.get_mut(host_id as usize) else {
            return;
        };
        if host.stalled_until.is_none_or(|until| until > now) {
            return;
        }
        host.stalled_until = None;
        host.impaired_until = now;
        // What queued up and the overdue timers are handled in no particular order,
        // as an event loop waking up would: the core must not depend on it.
        let backlog = std::mem::take(&mut host.backlog);
        let timers_at = self.rng.random_range(0..=backlog.len());
        for (i, (from, bytes)) in backlog.into_iter().enumerate() {
            if i == timers_at {
                self.run_overdue_timers(host_id);
            }
            self.input(host_id, from, &bytes);
            self.drain(host_id);
        }
        self.run_overdue_timers(host_id);
        self.after_input(host_id);
        self.repl_end_stall(host_id);
    }

    fn run_overdue_timers(&mut self, host_id: HostId) {
        let now = self.now;
        if let Some(core) = self.hosts[host_id as usize].core.as_mut() {
            let _ = core.handle_timeout(now);
        }
        self.drain(host_id);
    }

    /// Executes the host's effects and re-arms its timer.
    fn after_input(&mut self, host_id: HostId) {
        self.drain(host_id);
        let now = self.now;
        let host = &mut self.hosts[host_id as usize];
        let Some(core) = host.core.as_ref() else {
            return;
        };
        // One queue entry per host: a later entry, if any, fires harmlessly early and
        // re-arms; an entry whose time no longer matches `timer_at` is stale.
        if let Some(due) = core.poll_timeout() {
            let due = due.max(now);
            if host.timer_at.is_none_or(|t| due < t) {
                host.timer_at = Some(due);
                self.schedule(
                    due,
                    Action::Timer {
                        host: host_id,
                        delayed: false,
                    },
                );
            }
        }
    }

    fn drain(&mut self, host_id: HostId) {
        loop {
            let effect = match self.hosts[host_id as usize].core.as_mut() {
                Some(core) => core.poll_effect(),
                None => None,
            };
            let Some(effect) = effect else { break };
            match effect {
                Effect::Send { to, envelope } => self.send(host_id, &to, envelope),
                Effect::Event(event) => self.observe(host_id, event),
            }
        }
    }

    fn send(&mut self, from: HostId, to: &NodeId, envelope: Bytes) {
        let Some(&to_id) = self.by_name.get(&to.name) else {
            return;
        };
        self.tap(from, to_id, &envelope, None);
        let stats = &mut self.hosts[from as usize].stats;
        stats.tx_bytes += envelope.len() as u64;
        stats.tx_messages += 1;
        let kind =
            wire::decode(&envelope, MAX_STREAM_FRAME_LEN).map_or("undecodable", |b| b.kind());
        let entry = self.sent_by_kind.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += envelope.len() as u64;
        if self.rng.random_bool(self.loss.clamp(0.0, 1.0)) {
            self.messages_lost += 1;
            return;
        }
        let copies = if self
            .rng
            .random_bool(self.config.net.duplicate.clamp(0.0, 1.0))
        {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let net = &self.config.net;
            let span = net.latency_max.saturating_sub(net.latency_min);
            let mut latency = net.latency_min + span.mul_f64(self.rng.random::<f64>());
            if self.zone_index(from) != self.zone_index(to_id) {
                latency += net.cross_zone;
            }
            if self.rng.random_bool(net.reorder.clamp(0.0, 1.0)) {
                latency += net.reorder_delay.mul_f64(self.rng.random::<f64>());
            }
            let at = self.now + latency;
            self.schedule(
                at,
                Action::Deliver {
                    to: to_id,
                    from,
                    bytes: envelope.clone(),
                    delayed: false,
                },
            );
        }
    }

    fn observe(&mut self, observer: HostId, event: Event) {
        let now = self.now;
        match &event {
            Event::MemberDown { member } | Event::MemberLeft { member } => {
                if let Some(&m) = self.by_name.get(&member.name) {
                    self.sighting(m, member.generation, observer, false);
                    if self.is_healthy(m, member.generation) {
                        self.false_positives.push(FalsePositive {
                            at: now,
                            observer: self.hosts[observer as usize].name.to_string(),
                            member: member.name.to_string(),
                        });
                    }
                }
            }
            Event::MemberSuspected { member, .. } => {
                if let Some(&m) = self.by_name.get(&member.name) {
                    self.sighting(m, member.generation, observer, true);
                    if self.is_healthy(m, member.generation) {
                        self.suspicions_of_healthy += 1;
                    }
                }
            }
            Event::LocalActive { .. } => {
                let host = &mut self.hosts[observer as usize];
                host.join_pending = false;
                host.join_backoff = JOIN_BACKOFF_MIN;
            }
            Event::LocalIsolated => {
                let host = &mut self.hosts[observer as usize];
                if !host.join_pending {
                    host.join_pending = true;
                    self.schedule(now, Action::Join { host: observer });
                }
            }
            Event::LocalRejoined { identity, .. } => {
                self.hosts[observer as usize].generation = identity.generation;
            }
            _ => {}
        }
        if self.repl.is_some() {
            self.repl_membership(observer, &event);
        }
        if self.record_events {
            self.observed.push(Observed {
                at: now,
                observer,
                event,
            });
        }
    }

    /// The host runs this generation, has not been impaired recently, and no
    /// partition could explain its absence.
    fn is_healthy(&self, host: HostId, generation: u64) -> bool {
        let Some(h) = self.hosts.get(host as usize) else {
            return false;
        };
        let grace = self.explanation_window();
        h.core.is_some()
            && h.generation == generation
            && h.stalled_until.is_none()
            && h.slow_delay.is_none()
            && self.now >= h.impaired_until + grace
            && self.partition.is_none()
            && self.now >= self.partition_effect_until + grace
    }

    /// How long after an impairment a down declaration may still be explained by it:
    /// the longest suspicion plus a few probe periods.
    fn explanation_window(&self) -> Duration {
        let n = self.config.nodes.max(1);
        self.config.detector.max_suspicion(n) + self.config.detector.probe_period() * 4
    }

    fn sighting(&mut self, host: HostId, generation: u64, observer: HostId, suspect: bool) {
        let now = self.now;
        let entry = self
            .sightings
            .entry((host, generation))
            .or_default()
            .entry(observer)
            .or_insert((None, None));
        if suspect {
            entry.0.get_or_insert(now);
        } else {
            entry.1.get_or_insert(now);
        }
    }

    fn join_attempt(&mut self, host_id: HostId) {
        let now = self.now;
        let seeds: Vec<NodeId> = (0..self.config.seeds.min(self.config.nodes))
            .filter(|s| *s != host_id)
            .map(|s| {
                let h = &self.hosts[s as usize];
                // Like the node, the seed's generation is unknown: a placeholder.
                NodeId::new(h.name.clone(), h.addr, h.zone.clone(), 0)
            })
            .collect();
        let host = &mut self.hosts[host_id as usize];
        let Some(core) = host.core.as_mut() else {
            return;
        };
        match core.local_state() {
            LocalState::Active | LocalState::Left => {
                host.join_pending = false;
                return;
            }
            LocalState::Joining | LocalState::Isolated => {}
        }
        if host.stalled_until.is_some_and(|u| now < u) {
            let at = host.stalled_until.unwrap_or(now);
            self.schedule(at, Action::Join { host: host_id });
            return;
        }
        for seed in seeds {
            let _ = core.announce(now, seed);
        }
        if core.local_state() == LocalState::Isolated {
            let mut known: Vec<_> = core.members().filter(|m| !m.is_local).collect();
            known.sort_by(|a, b| {
                b.since
                    .cmp(&a.since)
                    .then_with(|| a.id.name.cmp(&b.id.name))
            });
            for m in known.into_iter().take(3) {
                let _ = core.announce(now, m.id);
            }
        }
        let jitter = 0.8 + 0.4 * self.rng.random::<f64>();
        let host = &mut self.hosts[host_id as usize];
        let wait = host.join_backoff.mul_f64(jitter);
        host.join_backoff = (host.join_backoff * 2).min(JOIN_BACKOFF_MAX);
        self.schedule(now + wait, Action::Join { host: host_id });
        self.after_input(host_id);
    }

    fn apply_fault(&mut self, fault: Fault) {
        let now = self.now;
        match fault {
            Fault::Crash(h) => {
                let Some(host) = self.hosts.get_mut(h as usize) else {
                    return;
                };
                if host.core.take().is_some() {
                    host.backlog.clear();
                    host.timer_at = None;
                    host.stalled_until = None;
                    host.slow_delay = None;
                    host.join_pending = false;
                    self.crashes.push((h, host.generation, now));
                    self.repl_crash(h);
                }
            }
            Fault::Restart(h) => {
                let seed = self.rng.next_u64();
                let detector = self.config.detector;
                let Some(host) = self.hosts.get_mut(h as usize) else {
                    return;
                };
                if host.core.is_some() {
                    return;
                }
                if host.started {
                    host.generation += 1_000;
                }
                host.started = true;
                let id = NodeId::new(
                    host.name.clone(),
                    host.addr,
                    host.zone.clone(),
                    host.generation,
                );
                host.core = Some(Core::with_detector(id, detector, seed));
                self.repl_start(h);
                let host = &mut self.hosts[h as usize];
                host.impaired_until = now;
                host.join_backoff = JOIN_BACKOFF_MIN;
                // Every host joins through the seeds, like a node with --seed. The very
                // first one finds nobody yet and is found by the others instead.
                host.join_pending = true;
                self.schedule(now, Action::Join { host: h });
            }
            Fault::Stall { host: h, duration } => {
                if let Some(host) = self.hosts.get_mut(h as usize)
                    && host.core.is_some()
                {
                    let until = now + duration;
                    host.stalled_until = Some(host.stalled_until.map_or(until, |u| u.max(until)));
                    self.schedule(until, Action::StallEnd { host: h });
                }
            }
            Fault::Slow {
                host: h,
                delay,
                duration,
            } => {
                if let Some(host) = self.hosts.get_mut(h as usize)
                    && host.core.is_some()
                {
                    host.slow_delay = Some(delay);
                    self.schedule(now + duration, Action::SlowEnd { host: h });
                }
            }
            Fault::Partition { groups, one_way } => {
                let mut group_of = vec![u32::MAX; self.hosts.len()];
                for (g, members) in groups.iter().enumerate() {
                    for &m in members {
                        if let Some(slot) = group_of.get_mut(m as usize) {
                            *slot = g as u32;
                        }
                    }
                }
                self.partition = Some((group_of, one_way));
            }
            Fault::Heal => {
                if self.partition.take().is_some() {
                    self.partition_effect_until = now;
                }
            }
            Fault::SetLoss(p) => self.loss = p,
        }
    }

    /// Compares every live core's view with its SWIM state.
    pub fn check_views(&mut self) {
        let now = self.now;
        for host in &self.hosts {
            if let Some(core) = host.core.as_ref()
                && let Err(detail) = core.check_view()
            {
                self.violations.push(Violation::ViewInconsistent {
                    at: now,
                    host: host.name.to_string(),
                    detail,
                });
            }
        }
    }

    /// Differences between the live hosts' views and the truth (empty when converged):
    /// every live host sees every other live host's current generation alive and no
    /// crashed host alive.
    pub fn divergence(&self, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let live: Vec<&Host> = self.hosts.iter().filter(|h| h.core.is_some()).collect();
        for observer in &live {
            let Some(core) = observer.core.as_ref() else {
                continue;
            };
            if live.len() > 1 && core.local_state() != LocalState::Active {
                out.push(format!("{} is {:?}", observer.name, core.local_state()));
            }
            for other in &self.hosts {
                if other.name == observer.name {
                    continue;
                }
                let seen = core.member(&other.name);
                let ok = match (&other.core, &seen) {
                    (Some(_), Some(m)) => {
                        m.state == MemberState::Alive && m.id.generation == other.generation
                    }
                    (Some(_), None) => false,
                    (None, Some(m)) => m.state == MemberState::Down,
                    (None, None) => true,
                };
                if !ok {
                    out.push(format!(
                        "{} sees {} as {:?}",
                        observer.name,
                        other.name,
                        seen.map(|m| (m.state, m.id.generation))
                    ));
                }
                if out.len() >= limit {
                    return out;
                }
            }
        }
        out
    }

    /// Runs until the views match the truth, checking every `step`, for at most
    /// `bound`. Returns how long it took.
    pub fn run_until_converged(&mut self, bound: Duration, step: Duration) -> Option<Duration> {
        let start = self.now;
        loop {
            if self.divergence(1).is_empty() {
                return Some(self.now - start);
            }
            if self.now - start >= bound {
                return None;
            }
            self.run_for(step);
        }
    }

    /// Like [`World::run_until_converged`], recording a violation on failure.
    pub fn require_convergence(&mut self, bound: Duration) -> Option<Duration> {
        let took = self.run_until_converged(bound, Duration::from_millis(250));
        if took.is_none() {
            let detail = self.divergence(5).join("; ");
            self.violations.push(Violation::NotConverged {
                after: bound,
                detail,
            });
        }
        took
    }

    /// Runs until no live core has updates left to gossip (the wake of a join or a
    /// failure), checking every `step`, for at most `bound`. Returns how long it took.
    pub fn run_until_quiet(&mut self, bound: Duration, step: Duration) -> Option<Duration> {
        let start = self.now;
        loop {
            let busy = self
                .hosts
                .iter()
                .filter_map(|h| h.core.as_ref())
                .any(|c| c.gossip_backlog() > 0);
            if !busy {
                return Some(self.now - start);
            }
            if self.now - start >= bound {
                return None;
            }
            self.run_for(step);
        }
    }

    pub fn live_hosts(&self) -> Vec<HostId> {
        (0..self.config.nodes).filter(|h| self.is_up(*h)).collect()
    }

    pub fn host_stats(&self) -> Vec<HostStats> {
        self.hosts.iter().map(|h| h.stats).collect()
    }

    pub fn name_of(&self, host: HostId) -> String {
        self.hosts
            .get(host as usize)
            .map_or_else(String::new, |h| h.name.to_string())
    }

    /// Picks a random live host other than the seeds, if any.
    pub fn random_live_host(&mut self) -> Option<HostId> {
        let candidates: Vec<HostId> = self
            .live_hosts()
            .into_iter()
            .filter(|h| *h >= self.config.seeds)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..candidates.len());
        Some(candidates[i])
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Detection figures for every crash so far. Observers are the hosts that were up
    /// at the crash and are still up now.
    pub fn detections(&self) -> Vec<Detection> {
        self.crashes
            .iter()
            .map(|&(host, generation, crashed_at)| {
                let seen = self.sightings.get(&(host, generation));
                let mut observed_after = Vec::new();
                let mut missed = 0;
                let mut first_suspected_after: Option<Duration> = None;
                for observer in 0..self.config.nodes {
                    if observer == host || !self.is_up(observer) {
                        continue;
                    }
                    let sighting = seen.and_then(|s| s.get(&observer));
                    if let Some((suspect, _)) = sighting
                        && let Some(t) = suspect
                        && *t >= crashed_at
                    {
                        let d = *t - crashed_at;
                        first_suspected_after = Some(first_suspected_after.map_or(d, |f| f.min(d)));
                    }
                    match sighting.and_then(|s| s.1) {
                        Some(t) if t >= crashed_at => observed_after.push(t - crashed_at),
                        _ => missed += 1,
                    }
                }
                observed_after.sort();
                Detection {
                    host: self.name_of(host),
                    crashed_at,
                    observed_after,
                    missed,
                    first_suspected_after,
                }
            })
            .collect()
    }

    /// Zone of a host, for zone partitions.
    pub fn zone_index(&self, host: HostId) -> u32 {
        host % self.config.zones.max(1)
    }
}
