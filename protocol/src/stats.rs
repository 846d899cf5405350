//! Counters of what the membership core saw, for the node's metrics.
//!
//! foca reports neither probe outcomes nor refutations, so the core works them out
//! from what passes through it (see [`crate::core::Core::stats`]): plain counters, no
//! clock, no IO. They only ever grow over a core's life; the node turns them into
//! Prometheus counters.

use std::time::Duration;

use crate::identity::NodeName;

/// What this node's membership core counted since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreStats {
    /// Probes of this node answered by the probed member itself (`Ack`).
    pub probes_acked_direct: u64,
    /// Probes answered only through another member's indirect probe (`ForwardedAck`):
    /// the member is alive but this node could not reach it directly in time.
    pub probes_acked_indirect: u64,
    /// Probes answered by nobody in time: foca makes the member suspect (unless it
    /// already was).
    pub probes_failed: u64,
    /// Failed probes of this node that turned an alive member suspect (the suspicions
    /// this node raised; the others it learns by gossip).
    pub suspicions_raised: u64,
    /// Times this node raised its own incarnation because it was told it is suspect:
    /// refutations of suspicions about itself.
    pub refutations: u64,
    /// Members this node held as suspect that proved alive at a higher incarnation
    /// (false alarms, whoever raised them).
    pub false_alarms_refuted: u64,
}

/// How one probe ended, as foca judges it when the next probe starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    AckedDirect,
    AckedIndirect,
    Failed,
}

impl ProbeOutcome {
    pub const ALL: [ProbeOutcome; 3] = [
        ProbeOutcome::AckedDirect,
        ProbeOutcome::AckedIndirect,
        ProbeOutcome::Failed,
    ];

    /// A stable label, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeOutcome::AckedDirect => "ack_direct",
            ProbeOutcome::AckedIndirect => "ack_indirect",
            ProbeOutcome::Failed => "failed",
        }
    }
}

impl CoreStats {
    pub(crate) fn count_probe(&mut self, outcome: ProbeOutcome) {
        let n = match outcome {
            ProbeOutcome::AckedDirect => &mut self.probes_acked_direct,
            ProbeOutcome::AckedIndirect => &mut self.probes_acked_indirect,
            ProbeOutcome::Failed => &mut self.probes_failed,
        };
        *n = n.saturating_add(1);
    }

    /// The probe counters by outcome.
    pub fn probes(&self) -> [(ProbeOutcome, u64); 3] {
        [
            (ProbeOutcome::AckedDirect, self.probes_acked_direct),
            (ProbeOutcome::AckedIndirect, self.probes_acked_indirect),
            (ProbeOutcome::Failed, self.probes_failed),
        ]
    }
}

/// An answer to one of our probes, read from an incoming SWIM header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeReply {
    /// `Ack(number)` from the probed member.
    Direct { from: NodeName, number: u8 },
    /// `ForwardedAck { origin, number }`: a helper reached `origin` for us.
    Forwarded { about: NodeName, number: u8 },
}

/// The probe foca is running, as far as the core can follow it: foca's own record is
/// private. Started when foca asks for the probe's indirect-stage timer (right after
/// sending the `Ping`), judged when foca starts the next probe.
#[derive(Debug, Clone)]
pub(crate) struct ProbeCycle {
    pub target: NodeName,
    /// The probe number of our `Ping`; `None` if it could not be read, in which case
    /// any answer from the target counts (foca checks the number; this is a metric).
    pub number: Option<u8>,
    /// When the `Ping` went out (the time of the call that sent it).
    started: Duration,
    direct: bool,
    indirect: bool,
}

impl ProbeCycle {
    pub fn new(target: NodeName, number: Option<u8>, started: Duration) -> Self {
        Self {
            target,
            number,
            started,
            direct: false,
            indirect: false,
        }
    }

    /// Notes an answer if it belongs to this probe (the same checks foca makes: the
    /// right member, the right probe number). Returns the round-trip time of the
    /// first direct answer: from the call that sent the `Ping` to the call that
    /// handles the `Ack`, so it includes the time the ack waited for this node to
    /// read it, which is what the failure detector experiences.
    pub fn observe(&mut self, reply: &ProbeReply, now: Duration) -> Option<Duration> {
        let matches = |name: &NodeName, number: u8| {
            *name == self.target && self.number.is_none_or(|n| n == number)
        };
        match reply {
            ProbeReply::Direct { from, number } if matches(from, *number) => {
                let first = !self.direct;
                self.direct = true;
                first.then(|| now.saturating_sub(self.started))
            }
            ProbeReply::Forwarded { about, number } if matches(about, *number) => {
                self.indirect = true;
                None
            }
            ProbeReply::Direct { .. } | ProbeReply::Forwarded { .. } => None,
        }
    }

    /// The probed member itself answered.
    pub fn answered_directly(&self) -> bool {
        self.direct
    }

    /// The outcome once foca judged the probe. `foca_suspected`: foca asked for a
    /// suspicion timer for the target in that call, which it does only for a failed
    /// probe; it is the authority when the core saw an answer foca did not count (one
    /// from a member foca already holds as down).
    pub fn outcome(&self, foca_suspected: bool) -> ProbeOutcome {
        if foca_suspected {
            ProbeOutcome::Failed
        } else if self.direct {
            ProbeOutcome::AckedDirect
        } else if self.indirect {
            ProbeOutcome::AckedIndirect
        } else {
            // foca judged it failed without a new suspicion timer: the member was
            // suspect already, or went down meanwhile.
            ProbeOutcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn a_direct_ack_beats_an_indirect_one_and_a_suspicion_beats_both() {
        let mut p = ProbeCycle::new(n("b"), Some(7), Duration::from_millis(100));
        assert_eq!(p.outcome(false), ProbeOutcome::Failed);
        let forwarded = ProbeReply::Forwarded {
            about: n("b"),
            number: 7,
        };
        assert_eq!(p.observe(&forwarded, Duration::from_millis(150)), None);
        assert_eq!(p.outcome(false), ProbeOutcome::AckedIndirect);
        let direct = ProbeReply::Direct {
            from: n("b"),
            number: 7,
        };
        assert_eq!(
            p.observe(&direct, Duration::from_millis(160)),
            Some(Duration::from_millis(60)),
            "the first direct ack times the probe"
        );
        assert_eq!(p.observe(&direct, Duration::from_millis(170)), None);
        assert_eq!(p.outcome(false), ProbeOutcome::AckedDirect);
        assert_eq!(p.outcome(true), ProbeOutcome::Failed);
    }

    #[test]
    fn answers_to_another_probe_or_about_another_member_do_not_count() {
        let mut p = ProbeCycle::new(n("b"), Some(7), Duration::ZERO);
        let now = Duration::from_millis(10);
        // A late ack of the previous probe of the same member.
        let late = ProbeReply::Direct {
            from: n("b"),
            number: 6,
        };
        assert_eq!(p.observe(&late, now), None);
        let other = ProbeReply::Direct {
            from: n("c"),
            number: 7,
        };
        assert_eq!(p.observe(&other, now), None);
        p.observe(
            &ProbeReply::Forwarded {
                about: n("c"),
                number: 7,
            },
            now,
        );
        assert_eq!(p.outcome(false), ProbeOutcome::Failed);
    }

    #[test]
    fn counters_add_up_by_outcome() {
        let mut s = CoreStats::default();
        s.count_probe(ProbeOutcome::AckedDirect);
        s.count_probe(ProbeOutcome::AckedDirect);
        s.count_probe(ProbeOutcome::Failed);
        assert_eq!(
            s.probes(),
            [
                (ProbeOutcome::AckedDirect, 2),
                (ProbeOutcome::AckedIndirect, 0),
                (ProbeOutcome::Failed, 1)
            ]
        );
    }
}
