//! What the owner task reports besides the events themselves: the metrics that follow
//! the core's and the replicator's state (members by state and zone, the core's
//! probe counters, recovery counters, the recovery time), and the capacity signals
//! for autoscalers (free capacity per zone, pending agents) as gauges and as
//! rate-limited events.
//!
//! Owned by the owner task, fed after each call into the core or the replicator; time
//! is the owner's clock (`Duration` since the node started), passed in, so the logic
//! is tested without a runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use vigil_protocol::replication::ElectionKind;
use vigil_protocol::{Core, CoreStats, Event, MemberState, NodeId, ReplEvent, Replicator};

use crate::metrics::{KindLabel, MemberLabel, Metrics, OutcomeLabel, ZoneLabel};

/// How often the capacity gauges are recomputed (a pass over the live members).
const CAPACITY_CHECK: Duration = Duration::from_millis(500);
/// At most one capacity event per zone (and one pending event) in this time; a change
/// that comes sooner is reported when it has passed, if it still holds.
pub const EVENT_SPACING: Duration = Duration::from_secs(10);
/// A failure is kept for the recovery time this long after the member came back as a
/// new generation: adoptions already under way may still complete meanwhile.
const RETURN_GRACE: Duration = Duration::from_secs(60);
/// Failures older than this are forgotten (bounds the memory when names churn); as
/// long as foca remembers a down member.
const FAILURE_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// A capacity event for the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityEvent {
    /// `standby_capacity_exhausted`, `standby_capacity_available`, `agents_pending`,
    /// `agents_pending_cleared`.
    pub kind: &'static str,
    /// The zone, for standby capacity events.
    pub zone: Option<String>,
    /// Free standby capacity of the zone (agents), or agents pending.
    pub count: u64,
    pub detail: String,
}

pub struct Signals {
    metrics: Arc<Metrics>,
    core_stats: CoreStats,
    /// Every zone a member was seen in, so a zone's gauges drop to 0 instead of going
    /// stale when its last member goes.
    member_zones: BTreeSet<String>,
    failures: Failures,
    capacity_zones: BTreeSet<String>,
    standby_edges: BTreeMap<String, Edge>,
    pending_edge: Edge,
    next_capacity_check: Duration,
}

impl Signals {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            core_stats: CoreStats::default(),
            member_zones: BTreeSet::new(),
            failures: Failures::default(),
            capacity_zones: BTreeSet::new(),
            standby_edges: BTreeMap::new(),
            pending_edge: Edge::default(),
            next_capacity_check: Duration::ZERO,
        }
    }

    /// After every call into the core: its counters and local health.
    pub fn after_core(&mut self, core: &mut Core) {
        for rtt in core.take_probe_rtts() {
            self.metrics.probe_rtt_seconds.observe(rtt.as_secs_f64());
        }
        let now = core.stats();
        let before = std::mem::replace(&mut self.core_stats, now);
        let m = &self.metrics;
        for ((outcome, n), (_, was)) in now.probes().into_iter().zip(before.probes()) {
            if n > was {
                m.probes
                    .get_or_create(&OutcomeLabel {
                        outcome: outcome.as_str().into(),
                    })
                    .inc_by(n - was);
            }
        }
        m.suspicions_raised
            .inc_by(now.suspicions_raised - before.suspicions_raised);
        m.refutations.inc_by(now.refutations - before.refutations);
        m.false_alarms_refuted
            .inc_by(now.false_alarms_refuted - before.false_alarms_refuted);
        m.local_health.set(i64::from(core.health_multiplier()));
    }

    /// Members by state and zone (after membership changed).
    pub fn update_members(&mut self, core: &Core) {
        let mut counts: BTreeMap<(MemberState, String), i64> = BTreeMap::new();
        for m in core.members() {
            let zone = m.id.zone.to_string();
            if !self.member_zones.contains(&zone) {
                self.member_zones.insert(zone.clone());
            }
            *counts.entry((m.state, zone)).or_default() += 1;
        }
        for zone in &self.member_zones {
            for state in [MemberState::Alive, MemberState::Suspect, MemberState::Down] {
                let n = counts.get(&(state, zone.clone())).copied().unwrap_or(0);
                self.metrics
                    .members
                    .get_or_create(&MemberLabel {
                        state: state.as_str().into(),
                        zone: zone.clone(),
                    })
                    .set(n);
            }
        }
    }

    /// A membership event: where a failure starts for the recovery time.
    pub fn on_member_event(&mut self, now: Duration, event: &Event) {
        match event {
            Event::MemberSuspected { member, .. } => self.failures.failed(now, member),
            Event::MemberDown { member } | Event::MemberLeft { member } => {
                self.failures.failed(now, member)
            }
            Event::MemberRefuted { member, .. } => self.failures.refuted(member),
            Event::MemberJoined { member } | Event::MemberRestarted { member, .. } => {
                self.failures.back(now, member)
            }
            Event::LocalActive { .. }
            | Event::LocalIsolated
            | Event::LocalRejoined { .. }
            | Event::LocalDefunct
            | Event::NameKeyCollision { .. } => {}
        }
    }

    /// A replication event: recovery counters, and the recovery time of an adoption.
    pub fn on_repl_event(&mut self, now: Duration, event: &ReplEvent) {
        let m = &self.metrics;
        match event {
            ReplEvent::ElectionStarted { kind, .. } => {
                let kind = match kind {
                    ElectionKind::Recover => "recover",
                    ElectionKind::Handoff => "handoff",
                    ElectionKind::Takeover => "takeover",
                };
                m.elections
                    .get_or_create(&KindLabel { kind: kind.into() })
                    .inc();
            }
            ReplEvent::CoordinatorElected { .. } => {
                m.elections_won.inc();
            }
            ReplEvent::AgentAdopted { previous, .. } => {
                m.adoptions.inc();
                if let Some(rto) = self.failures.recovery_time(now, previous.as_str()) {
                    m.rto_seconds.observe(rto.as_secs_f64());
                }
            }
            ReplEvent::AgentFenced { .. } => {
                m.agent_fences.inc();
            }
            _ => {}
        }
    }

    /// After the replicator ran: its gauges, and at most every [`CAPACITY_CHECK`] the
    /// capacity gauges and the capacity events due. No events while this node is not
    /// an active member (`member` false): before it joins it sees only itself, so its
    /// zone would look like it had no standby room and flip as soon as it joined.
    /// Leaving the cluster forgets the zones' states, so a node back from isolation
    /// reports changes from what it finds then, not from what it saw before.
    pub fn after_repl(
        &mut self,
        now: Duration,
        repl: &Replicator,
        member: bool,
    ) -> Vec<CapacityEvent> {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let m = &self.metrics;
        m.agents_known.set(gauge(repl.known_count()));
        m.agents_owned.set(gauge(repl.owned_count()));
        m.agents_degraded.set(gauge(repl.degraded_count()));
        m.repair_backlog.set(gauge(repl.repair_backlog()));
        m.agents_fenced.set(gauge(repl.fenced_count()));
        m.elections_running.set(gauge(repl.elections_running()));
        let pending = repl.pending_count();
        m.agents_pending.set(gauge(pending));
        if now < self.next_capacity_check {
            return Vec::new();
        }
        self.next_capacity_check = now + CAPACITY_CHECK;
        let mut events = Vec::new();
        let zones = repl.free_capacity();
        for zone in zones.keys() {
            if !self.capacity_zones.contains(zone.as_str()) {
                self.capacity_zones.insert(zone.to_string());
            }
        }
        for zone in &self.capacity_zones {
            let room = zones
                .iter()
                .find(|(z, _)| z.as_str() == zone)
                .map(|(_, r)| *r)
                .unwrap_or_default();
            let label = ZoneLabel { zone: zone.clone() };
            let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            m.standby_capacity_free
                .get_or_create(&label)
                .set(clamp(room.standby));
            m.capacity_free.get_or_create(&label).set(clamp(room.all));
            if !member || room.unadvertised > 0 {
                // Not a member, or not every host said what it can take yet: no
                // verdict on the zone.
                continue;
            }
            let edge = self.standby_edges.entry(zone.clone()).or_default();
            if let Some(exhausted) = edge.step(now, room.standby == 0) {
                events.push(CapacityEvent {
                    kind: if exhausted {
                        "standby_capacity_exhausted"
                    } else {
                        "standby_capacity_available"
                    },
                    zone: Some(zone.clone()),
                    count: room.standby,
                    detail: if exhausted {
                        format!("no standby host in zone {zone} has room for another agent")
                    } else {
                        format!(
                            "standby hosts in zone {zone} have room for {} agents",
                            room.standby
                        )
                    },
                });
            }
        }
        if !member {
            self.standby_edges.clear();
            self.pending_edge = Edge::default();
            return events;
        }
        if let Some(any) = self.pending_edge.step(now, pending > 0) {
            events.push(CapacityEvent {
                kind: if any {
                    "agents_pending"
                } else {
                    "agents_pending_cleared"
                },
                zone: None,
                count: u64::try_from(pending).unwrap_or(u64::MAX),
                detail: if any {
                    format!("{pending} agents wait for a live, non-isolated host with room")
                } else {
                    "no agent waits for a host any more".into()
                },
            });
        }
        events
    }
}

/// One yes/no condition reported on edges only, and at most once per
/// [`EVENT_SPACING`].
#[derive(Debug, Default)]
struct Edge {
    /// The state last reported (or first seen, which is not reported: a node that
    /// starts is not news).
    reported: Option<bool>,
    last_event: Option<Duration>,
}

impl Edge {
    /// `Some(state)` when an event is due for it.
    fn step(&mut self, now: Duration, state: bool) -> Option<bool> {
        let Some(reported) = self.reported else {
            self.reported = Some(state);
            return None;
        };
        if state == reported {
            return None;
        }
        if self
            .last_event
            .is_some_and(|at| now.saturating_sub(at) < EVENT_SPACING)
        {
            return None; // looked at again on a later check
        }
        self.reported = Some(state);
        self.last_event = Some(now);
        Some(state)
    }
}

/// When this node first saw each member fail, for the recovery time of the agents
/// adopted from it.
#[derive(Debug, Default)]
struct Failures {
    by_name: BTreeMap<String, Failure>,
}

#[derive(Debug, Clone)]
struct Failure {
    generation: u64,
    since: Duration,
    /// When the member came back as a newer generation.
    back: Option<Duration>,
}

impl Failures {
    /// `member` was suspected, declared down or left: the failure starts now unless
    /// this generation's failure started earlier.
    fn failed(&mut self, now: Duration, member: &NodeId) {
        self.by_name.retain(|_, f| {
            now.saturating_sub(f.since) < FAILURE_MEMORY
                && f.back.is_none_or(|b| now.saturating_sub(b) < RETURN_GRACE)
        });
        let known = self.by_name.get(member.name.as_str());
        if known.is_none_or(|f| member.generation > f.generation) {
            self.by_name.insert(
                member.name.to_string(),
                Failure {
                    generation: member.generation,
                    since: now,
                    back: None,
                },
            );
        }
    }

    /// A false alarm: the member proved alive; no failure.
    fn refuted(&mut self, member: &NodeId) {
        if self
            .by_name
            .get(member.name.as_str())
            .is_some_and(|f| f.generation == member.generation)
        {
            self.by_name.remove(member.name.as_str());
        }
    }

    /// The member is alive as a newer generation (restarted or rejoined).
    fn back(&mut self, now: Duration, member: &NodeId) {
        if let Some(f) = self.by_name.get_mut(member.name.as_str())
            && member.generation > f.generation
            && f.back.is_none()
        {
            f.back = Some(now);
        }
    }

    /// From the failure of `previous` to now, if this node saw it fail: not for a
    /// handoff or takeover from a live owner, nor long after the owner came back.
    fn recovery_time(&self, now: Duration, previous: &str) -> Option<Duration> {
        let f = self.by_name.get(previous)?;
        if f.back
            .is_some_and(|b| now.saturating_sub(b) >= RETURN_GRACE)
        {
            return None;
        }
        Some(now.saturating_sub(f.since))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vigil_protocol::{NodeName, Zone};

    fn id(name: &str, generation: u64) -> NodeId {
        NodeId::new(
            NodeName::new(name).unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            Zone::new("z").unwrap(),
            generation,
        )
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn an_edge_reports_changes_only_and_at_most_once_per_spacing() {
        let mut e = Edge::default();
        assert_eq!(e.step(s(0), false), None, "the first state is not news");
        assert_eq!(e.step(s(1), false), None);
        assert_eq!(e.step(s(2), true), Some(true));
        // Flapping within the spacing: nothing, and the flap back is not reported.
        assert_eq!(e.step(s(3), false), None);
        assert_eq!(e.step(s(4), true), None);
        // A change that holds past the spacing is reported then.
        assert_eq!(e.step(s(5), false), None);
        assert_eq!(e.step(s(12), false), Some(false));
        assert_eq!(e.step(s(13), false), None);
    }

    #[test]
    fn recovery_time_runs_from_the_first_suspicion_of_the_failed_generation() {
        let mut f = Failures::default();
        f.failed(s(10), &id("a", 1));
        // Declared down later: the suspicion started it.
        f.failed(s(12), &id("a", 1));
        assert_eq!(f.recovery_time(s(13), "a"), Some(s(3)));
        assert_eq!(f.recovery_time(s(13), "b"), None, "never seen failing");
        // Back as generation 2: adoptions under way still count, for a while.
        f.back(s(20), &id("a", 2));
        assert_eq!(f.recovery_time(s(21), "a"), Some(s(11)));
        assert_eq!(f.recovery_time(s(20) + RETURN_GRACE, "a"), None);
        // Generation 2 fails: a new start.
        f.failed(s(100), &id("a", 2));
        assert_eq!(f.recovery_time(s(101), "a"), Some(s(1)));
    }

    #[test]
    fn a_refuted_suspicion_starts_no_recovery_time() {
        let mut f = Failures::default();
        f.failed(s(10), &id("a", 1));
        f.refuted(&id("a", 1));
        assert_eq!(f.recovery_time(s(11), "a"), None);
        // A refutation about an older generation leaves the newer failure alone.
        f.failed(s(20), &id("a", 2));
        f.refuted(&id("a", 1));
        assert_eq!(f.recovery_time(s(21), "a"), Some(s(1)));
    }

    #[test]
    fn old_failures_are_forgotten() {
        let mut f = Failures::default();
        f.failed(s(0), &id("a", 1));
        f.failed(FAILURE_MEMORY + s(1), &id("b", 1));
        assert_eq!(f.by_name.len(), 1);
    }
}
