//! Failure-detection profiles: the foca parameters for a LAN or a WAN, scaled with the
//! cluster size.
//!
//! foca's own `Config::new_lan(n)` follows memberlist's LAN defaults (1 s probe period,
//! suspicion 4 x log10(n) probe periods). vigil's LAN profile probes twice as often and
//! bounds the suspicion window by the same log10(n) law, because users want a dead host
//! noticed in seconds. The probe period stays fixed for a profile (foca cannot change
//! it at runtime); dissemination and suspicion are recomputed as the cluster grows or
//! shrinks (see [`crate::Core`]).

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::SWIM_OVERHEAD;

/// The largest SWIM packet foca may produce. With the envelope it stays below 1200
/// bytes minus QUIC's per-packet overhead, so every SWIM message fits one QUIC datagram
/// even before path-MTU discovery raises the limit.
pub const SWIM_MAX_PACKET: usize = 1100;
const _: () = assert!(SWIM_MAX_PACKET + SWIM_OVERHEAD <= 1150);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// One datacenter or region: sub-millisecond to few-millisecond round trips.
    Lan,
    /// Members across regions: round trips up to a few hundred milliseconds.
    Wan,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Lan => "lan",
            Profile::Wan => "wan",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lan" => Ok(Profile::Lan),
            "wan" => Ok(Profile::Wan),
            other => Err(format!("unknown profile {other:?}; use \"lan\" or \"wan\"")),
        }
    }
}

struct Constants {
    probe_period: Duration,
    probe_rtt: Duration,
    /// A fully confirmed suspicion lasts `suspicion_mult * max(1, log10 n)` probe
    /// periods (Lifeguard's minimum)...
    suspicion_mult: f64,
    /// ...and an unconfirmed one this many times longer (Lifeguard's maximum).
    suspicion_max_ratio: f64,
    gossip_every: Duration,
    gossip_fanout: usize,
    announce_every: Duration,
    announce_down_every: Duration,
}

fn constants(profile: Profile) -> Constants {
    match profile {
        Profile::Lan => Constants {
            // A dead member is probed about once per period cluster-wide, so the
            // period bounds how soon anyone notices (p99 of the first probe is about
            // 4.6 periods): 200 ms is what a 3 s p99 detection at 1000 members needs
            // (docs/BENCHMARKS.md, simulator).
            probe_period: Duration::from_millis(200),
            // A LAN round trip plus a QUIC handshake on a cold connection fit well
            // within this; slower nodes stretch it (local health).
            probe_rtt: Duration::from_millis(80),
            suspicion_mult: 1.0,
            suspicion_max_ratio: 6.0,
            gossip_every: Duration::from_millis(100),
            gossip_fanout: 3,
            announce_every: Duration::from_secs(30),
            // How soon two sides of a healed partition find each other again.
            announce_down_every: Duration::from_secs(5),
        },
        Profile::Wan => Constants {
            probe_period: Duration::from_secs(3),
            probe_rtt: Duration::from_millis(1500),
            suspicion_mult: 2.0,
            suspicion_max_ratio: 6.0,
            gossip_every: Duration::from_millis(500),
            gossip_fanout: 4,
            announce_every: Duration::from_secs(60),
            announce_down_every: Duration::from_secs(20),
        },
    }
}

/// Dissemination count: 4 x log10(n + 1), as memberlist's RetransmitMult and foca do.
fn max_transmissions(cluster_size: u32) -> NonZeroU8 {
    let tx = (f64::from(cluster_size.saturating_add(1)).log10() * 4.0).ceil();
    let tx = tx.clamp(1.0, f64::from(u8::MAX)) as u8;
    NonZeroU8::new(tx).unwrap_or(NonZeroU8::MIN)
}

/// The shortest (all confirmations in) and longest (none) suspicion for
/// `cluster_size` members under `profile`. Both grow with log10 of the size, as
/// dissemination does.
pub fn suspicion_bounds(profile: Profile, cluster_size: u32) -> (Duration, Duration) {
    let c = constants(profile);
    let scale = f64::from(cluster_size.max(1)).log10().max(1.0);
    let min = c.probe_period.mul_f64(c.suspicion_mult * scale);
    (min, min.mul_f64(c.suspicion_max_ratio))
}

/// The longest a suspicion can last before the member is declared down.
pub fn max_suspicion_timeout(profile: Profile, cluster_size: u32) -> Duration {
    suspicion_bounds(profile, cluster_size).1
}

/// The probe period of `profile` (fixed for the life of a node).
pub fn probe_period(profile: Profile) -> Duration {
    constants(profile).probe_period
}

/// The full foca configuration for `profile` at `cluster_size` members (self included).
pub fn swim_config(profile: Profile, cluster_size: u32) -> foca::Config {
    let c = constants(profile);
    let periodic = |frequency, num_members: usize| {
        Some(foca::PeriodicParams {
            frequency,
            num_members: NonZeroUsize::new(num_members).unwrap_or(NonZeroUsize::MIN),
        })
    };
    let mut config = foca::Config::simple();
    config.probe_period = c.probe_period;
    config.probe_rtt = c.probe_rtt;
    config.num_indirect_probes = NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN);
    config.max_transmissions = max_transmissions(cluster_size);
    // foca times suspicions with this; the core reschedules each one between the
    // bounds as confirmations arrive (see `lifeguard`).
    config.suspect_to_down_after = suspicion_bounds(profile, cluster_size).1;
    config.max_packet_size = NonZeroUsize::new(SWIM_MAX_PACKET).unwrap_or(NonZeroUsize::MIN);
    // Tell a member we declared down, so it can renew its identity and rejoin at once.
    config.notify_down_members = true;
    config.periodic_announce = periodic(c.announce_every, 1);
    config.periodic_announce_to_down_members = periodic(c.announce_down_every, 2);
    config.periodic_gossip = periodic(c.gossip_every, c.gossip_fanout);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_bounds_grow_with_log_of_cluster_size() {
        let min = |n| suspicion_bounds(Profile::Lan, n).0;
        assert_eq!(min(5), min(10));
        assert_eq!(min(100), min(10) * 2);
        assert_eq!(min(1000), min(10) * 3);
        let (lo, hi) = suspicion_bounds(Profile::Lan, 1000);
        assert_eq!(hi, lo.mul_f64(6.0));
        assert!(suspicion_bounds(Profile::Wan, 10).0 > min(10));
    }

    #[test]
    fn dissemination_count_grows_with_cluster_size() {
        assert_eq!(max_transmissions(1).get(), 2);
        assert_eq!(max_transmissions(9).get(), 4);
        assert_eq!(max_transmissions(999).get(), 12);
        assert_eq!(max_transmissions(u32::MAX).get(), 39);
    }

    #[test]
    fn probe_period_does_not_depend_on_cluster_size() {
        // foca refuses a set_config that changes it.
        for n in [1, 10, 1000, 100_000] {
            assert_eq!(
                swim_config(Profile::Lan, n).probe_period,
                probe_period(Profile::Lan)
            );
        }
    }

    #[test]
    fn profiles_parse_from_their_names() {
        assert_eq!("lan".parse::<Profile>(), Ok(Profile::Lan));
        assert_eq!("wan".parse::<Profile>(), Ok(Profile::Wan));
        assert!("fast".parse::<Profile>().unwrap_err().contains("\"lan\""));
    }
}
