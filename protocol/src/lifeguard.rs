//! Lifeguard-style failure detection on top of foca (Dadgar et al., "Lifeguard: Local
//! Health Awareness for More Accurate Failure Detection", 2018), as far as foca's API
//! allows. See docs/ARCHITECTURE.md, "Failure detection", for the decisions and their
//! evidence.
//!
//! foca's timers all pass through the core, which decides when to deliver them; that is
//! the lever for every piece here, because foca refuses to change its probe timing at
//! runtime and uses one fixed suspicion timeout:
//!
//! - Local health: a multiplier (0..=8) that rises when our own probes fail, when we
//!   are told we are suspected, or when our timers fire late (we were starved), and
//!   falls when our probes succeed. The probe timeout and the probe interval are
//!   stretched by `1 + multiplier`, so a struggling node stops accusing healthy ones.
//! - Dynamic suspicion: a suspicion starts at `max` and shrinks towards `min` as other
//!   members independently confirm it (their own probes failed too), by gossiped
//!   confirmations; `timeout(c) = max(min, max - (max - min) ln(c + 1) / ln(k + 1))`.
//! - Late timers: a probe or suspicion timer that fires much later than it was due
//!   means this node did not run for a while; it is postponed once, so the messages
//!   that queued up meanwhile are handled before anyone is judged.

use std::collections::HashMap;
use std::time::Duration;

use nohash_hasher::BuildNoHashHasher;

use crate::identity::NodeName;
use crate::profile::{self, Profile};

/// Highest local health multiplier (Lifeguard's default).
pub const MAX_HEALTH_MULTIPLIER: u32 = 8;

/// What detects failures: vigil's profiles with its extensions, or foca as it comes
/// (`Config::new_lan`, no extensions), for side-by-side measurements in the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Vigil(Profile),
    /// foca's `Config::new_lan(n)` (memberlist's LAN defaults), rescaled with the
    /// cluster size, and none of vigil's extensions: no local health, no dynamic
    /// suspicion, no suspicion notices, no digest pulls.
    PlainFocaLan,
    /// foca with the profile's probe timing and a fixed suspicion as long as the
    /// profile's typically is once confirmations arrive (so it detects about as fast),
    /// and none of vigil's extensions: what it takes to match vigil's speed without
    /// Lifeguard.
    PlainFocaMatched(Profile),
}

impl Detector {
    pub fn swim_config(self, cluster_size: u32) -> foca::Config {
        match self {
            Detector::Vigil(p) => profile::swim_config(p, cluster_size),
            Detector::PlainFocaLan => {
                let n = std::num::NonZeroU32::new(cluster_size.max(1))
                    .unwrap_or(std::num::NonZeroU32::MIN);
                let mut c = foca::Config::new_lan(n);
                // Same packet budget as vigil, so both fit the same datagrams.
                c.max_packet_size = std::num::NonZeroUsize::new(profile::SWIM_MAX_PACKET)
                    .unwrap_or(std::num::NonZeroUsize::MIN);
                c
            }
            Detector::PlainFocaMatched(p) => {
                let mut c = profile::swim_config(p, cluster_size);
                c.suspect_to_down_after = typical_suspicion(p, cluster_size);
                c
            }
        }
    }

    /// vigil's extensions are on.
    pub fn extended(self) -> bool {
        matches!(self, Detector::Vigil(_))
    }

    /// The profile whose timing this detector uses, if any.
    pub fn profile(self) -> Option<Profile> {
        match self {
            Detector::Vigil(p) | Detector::PlainFocaMatched(p) => Some(p),
            Detector::PlainFocaLan => None,
        }
    }

    pub fn probe_period(self) -> Duration {
        self.swim_config(1).probe_period
    }

    pub fn probe_rtt(self) -> Duration {
        self.swim_config(1).probe_rtt
    }

    /// The longest a suspicion can last (with no confirmation) at `cluster_size`.
    pub fn max_suspicion(self, cluster_size: u32) -> Duration {
        match self {
            Detector::Vigil(p) => profile::suspicion_bounds(p, cluster_size).1,
            Detector::PlainFocaLan | Detector::PlainFocaMatched(_) => {
                self.swim_config(cluster_size).suspect_to_down_after
            }
        }
    }
}

/// How long a suspicion typically lasts under `profile` when the member is really
/// gone: confirmations arrive about one per probe period (the dead member is probed
/// about once per period cluster-wide), so `k` of them take `k` periods, within the
/// bounds.
pub fn typical_suspicion(profile: Profile, cluster_size: u32) -> Duration {
    let (min, max) = profile::suspicion_bounds(profile, cluster_size);
    let k = expected_confirmations(cluster_size);
    (profile::probe_period(profile) * k).clamp(min, max)
}

/// `timeout(c) = max(min, max - (max - min) ln(c + 1) / ln(k + 1))`: `max` with no
/// confirmation, `min` once `k` independent members confirmed.
pub fn suspicion_timeout(min: Duration, max: Duration, k: u32, confirmations: u32) -> Duration {
    if k == 0 {
        // Too few members for independent confirmations: stay careful.
        return max;
    }
    if confirmations >= k {
        return min;
    }
    let fraction = f64::from(confirmations + 1).ln() / f64::from(k + 1).ln();
    let span = max.saturating_sub(min);
    (max.saturating_sub(span.mul_f64(fraction))).max(min)
}

/// Independent confirmations expected before a suspicion reaches its minimum:
/// three, or fewer in clusters too small to have three other members besides the
/// suspect and the suspecting node.
pub fn expected_confirmations(cluster_size: u32) -> u32 {
    cluster_size.saturating_sub(2).min(3)
}

/// The local health multiplier.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    multiplier: u32,
}

impl Health {
    pub fn multiplier(self) -> u32 {
        self.multiplier
    }

    pub fn worse(&mut self) {
        self.multiplier = (self.multiplier + 1).min(MAX_HEALTH_MULTIPLIER);
    }

    pub fn better(&mut self) {
        self.multiplier = self.multiplier.saturating_sub(1);
    }

    /// `d` stretched by the multiplier.
    pub fn scale(self, d: Duration) -> Duration {
        d * (1 + self.multiplier)
    }
}

/// A suspicion this node is timing: when it started and which timer entries (foca's
/// `ChangeSuspectToDown`) are waiting on it.
#[derive(Debug, Clone)]
pub struct Timing {
    pub generation: u64,
    pub incarnation: u16,
    pub started: Duration,
    /// Keys of the pending timer entries, in the core's timer map.
    pub entries: Vec<(Duration, u64)>,
}

/// Suspicions being timed, by member key.
#[derive(Debug, Default)]
pub struct Suspicions {
    pub timing: HashMap<u64, Timing, BuildNoHashHasher<u64>>,
}

impl Suspicions {
    /// The timing of `(member, generation, incarnation)`, started now if it is new.
    pub fn start(
        &mut self,
        member: &NodeName,
        generation: u64,
        incarnation: u16,
        now: Duration,
    ) -> &mut Timing {
        let entry = self.timing.entry(member.key()).or_insert_with(|| Timing {
            generation,
            incarnation,
            started: now,
            entries: Vec::new(),
        });
        if entry.generation != generation || entry.incarnation != incarnation {
            // A newer suspicion (the member refuted and was suspected again).
            *entry = Timing {
                generation,
                incarnation,
                started: now,
                entries: Vec::new(),
            };
        }
        entry
    }

    /// Drops a timer entry that fired.
    pub fn fired(&mut self, member: &NodeName, key: (Duration, u64)) {
        if let Some(t) = self.timing.get_mut(&member.key()) {
            t.entries.retain(|k| *k != key);
        }
    }

    /// Forgets a member that is no longer suspect.
    pub fn clear(&mut self, member: &NodeName) {
        self.timing.remove(&member.key());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_shrinks_from_max_to_min_with_confirmations() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(6));
        let t: Vec<Duration> = (0..5).map(|c| suspicion_timeout(min, max, 3, c)).collect();
        assert_eq!(t[0], max);
        assert!(t[0] > t[1] && t[1] > t[2] && t[2] > t[3]);
        assert_eq!(t[3], min);
        assert_eq!(t[4], min);
        // ln(2)/ln(4) = 0.5: halfway after one confirmation.
        assert_eq!(t[1], Duration::from_millis(3500));
        assert_eq!(suspicion_timeout(min, max, 0, 5), max);
    }

    #[test]
    fn confirmations_expected_shrink_in_tiny_clusters() {
        assert_eq!(expected_confirmations(2), 0);
        assert_eq!(expected_confirmations(4), 2);
        assert_eq!(expected_confirmations(1000), 3);
    }

    #[test]
    fn health_is_bounded_and_scales_timers() {
        let mut h = Health::default();
        assert_eq!(
            h.scale(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        for _ in 0..20 {
            h.worse();
        }
        assert_eq!(h.multiplier(), MAX_HEALTH_MULTIPLIER);
        assert_eq!(
            h.scale(Duration::from_millis(100)),
            Duration::from_millis(900)
        );
        for _ in 0..20 {
            h.better();
        }
        assert_eq!(h.multiplier(), 0);
    }

    #[test]
    fn a_new_incarnation_restarts_the_timing() {
        let mut s = Suspicions::default();
        let n = NodeName::new("x").unwrap();
        s.start(&n, 1, 0, Duration::from_secs(1))
            .entries
            .push((Duration::from_secs(5), 1));
        assert_eq!(
            s.start(&n, 1, 0, Duration::from_secs(2)).started,
            Duration::from_secs(1)
        );
        let t = s.start(&n, 1, 1, Duration::from_secs(3));
        assert_eq!(t.started, Duration::from_secs(3));
        assert!(t.entries.is_empty());
    }
}
