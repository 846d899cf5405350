//! The fault schedule: drawn from the campaign's seed before anything starts, so the
//! whole schedule is known (and printed) up front and the same seed gives the same
//! faults at the same offsets.
//!
//! One fault is active at a time: each step waits a quiet gap, injects its fault,
//! holds it, then undoes it (heal, SIGCONT, restart, free the disk, clear the link
//! rules). Overlapping faults would test more combinations but make a failure much
//! harder to attribute; a longer campaign covers combinations over time through the
//! faults' after-effects (a restarted node still catching up when the next fault
//! hits).

use std::fmt;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Loss, latency and duplication on every datagram to and from some hosts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkFault {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    pub latency_ms: u64,
    /// Each datagram is delayed by `latency_ms` plus a uniform 0..=jitter_ms.
    pub jitter_ms: u64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
}

/// One fault. Hosts are indices into the campaign's node list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL; undone by restarting the node on the same data directory.
    Kill { host: usize },
    /// SIGSTOP; undone by SIGCONT. The process keeps its sockets but answers nothing,
    /// like a host stalled by the hypervisor or a long GC pause.
    Pause { host: usize },
    /// `side` cannot reach the other hosts and the other hosts cannot reach `side`.
    Partition { side: Vec<usize> },
    /// Datagrams from `from` to each of `to` are dropped; the other way still works.
    OneWay { from: usize, to: Vec<usize> },
    /// The host's data file system is filled up (every write fails with ENOSPC).
    DiskFull { host: usize },
    /// Every datagram to and from `hosts` goes through `link`.
    Link { hosts: Vec<usize>, link: LinkFault },
}

/// One step of the schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Quiet time before the fault.
    pub gap: Duration,
    pub fault: Fault,
    /// How long the fault stays before it is undone.
    pub hold: Duration,
}

/// Which faults this machine can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abilities {
    /// Loop-mounted data file systems (root, loop devices, mkfs.ext4).
    pub disk_full: bool,
}

/// The cluster the schedule is for.
#[derive(Debug, Clone)]
pub struct Shape {
    pub hosts: usize,
    /// Zone of each host.
    pub zones: Vec<String>,
}

/// Steps until `duration` is used up (the last step may end a little after it). No
/// steps for fewer than 3 hosts (a partition needs a majority side).
pub fn draw(seed: u64, shape: &Shape, duration: Duration, abilities: Abilities) -> Vec<Step> {
    if shape.hosts < 3 {
        return Vec::new();
    }
    // A stream of its own, so that the proxies' and the workload's randomness (seeded
    // from the same campaign seed) do not shift the schedule.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5c4e_d01e);
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    while total < duration {
        let gap = Duration::from_millis(rng.random_range(2_000..=6_000));
        let fault = draw_fault(&mut rng, shape, abilities);
        let hold = match fault {
            // Long enough for the cluster to declare the host down and adopt its
            // agents (seconds), short enough to also catch restarts mid-recovery.
            Fault::Kill { .. } => Duration::from_millis(rng.random_range(1_000..=8_000)),
            _ => Duration::from_millis(rng.random_range(2_000..=10_000)),
        };
        total += gap + hold;
        steps.push(Step { gap, fault, hold });
    }
    steps
}

fn draw_fault(rng: &mut ChaCha8Rng, shape: &Shape, abilities: Abilities) -> Fault {
    let n = shape.hosts;
    let host = rng.random_range(0..n);
    // Draw among the kinds this machine can inject; the kind numbers stay the same
    // whatever is available, so a seed means the same faults where all are.
    let available: Vec<u32> = (0..8)
        .filter(|kind| *kind != 7 || abilities.disk_full)
        .collect();
    match available[rng.random_range(0..available.len())] {
        0 => Fault::Kill { host },
        1 => Fault::Pause { host },
        // A minority, drawn at random: the majority side keeps serving.
        2 => Fault::Partition {
            side: pick(rng, n, (n - 1) / 2),
        },
        3 => Fault::Partition { side: vec![host] },
        4 => {
            let zones: Vec<&String> = dedup(shape.zones.iter());
            let zone = zones[rng.random_range(0..zones.len())];
            let side = (0..n).filter(|k| &shape.zones[*k] == zone).collect();
            Fault::Partition { side }
        }
        5 => {
            let others: Vec<usize> = (0..n).filter(|k| *k != host).collect();
            let count = rng.random_range(1..=others.len());
            let mut to: Vec<usize> = pick(rng, others.len(), count)
                .into_iter()
                .map(|i| others[i])
                .collect();
            to.sort_unstable();
            Fault::OneWay { from: host, to }
        }
        6 => {
            let hosts = if rng.random_bool(0.5) {
                vec![host]
            } else {
                (0..n).collect()
            };
            Fault::Link {
                hosts,
                link: LinkFault {
                    loss: [0.05, 0.2, 0.4][rng.random_range(0..3)],
                    latency_ms: [0, 20, 100][rng.random_range(0..3)],
                    jitter_ms: [0, 10, 50][rng.random_range(0..3)],
                    duplicate: [0.0, 0.05, 0.2][rng.random_range(0..3)],
                },
            }
        }
        _ => Fault::DiskFull { host },
    }
}

/// `count` distinct indices below `n`, sorted.
fn pick(rng: &mut ChaCha8Rng, n: usize, count: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    // Partial Fisher-Yates: the first `count` places are a uniform sample.
    for i in 0..count.min(n) {
        let j = rng.random_range(i..n);
        all.swap(i, j);
    }
    let mut chosen = all[..count.min(n)].to_vec();
    chosen.sort_unstable();
    chosen
}

fn dedup<'a>(items: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut out: Vec<&String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Describes a fault with node names, e.g. `partition {n1} | {n2,n3,n4,n5}`.
pub struct Described<'a> {
    pub fault: &'a Fault,
    pub names: &'a [String],
}

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |k: &usize| self.names.get(*k).map_or("?", String::as_str);
        let set = |hosts: &[usize]| {
            let names: Vec<&str> = hosts.iter().map(name).collect();
            format!("{{{}}}", names.join(","))
        };
        match self.fault {
            Fault::Kill { host } => write!(f, "kill -9 {}, restart on its data dir", name(host)),
            Fault::Pause { host } => write!(f, "SIGSTOP {}, then SIGCONT", name(host)),
            Fault::Partition { side } => {
                let rest: Vec<usize> = (0..self.names.len())
                    .filter(|k| !side.contains(k))
                    .collect();
                write!(f, "partition {} | {}", set(side), set(&rest))
            }
            Fault::OneWay { from, to } => {
                write!(f, "one-way cut {} -/-> {}", name(from), set(to))
            }
            Fault::DiskFull { host } => write!(f, "disk full on {}", name(host)),
            Fault::Link { hosts, link } => write!(
                f,
                "link faults to and from {}: loss {:.0}%, latency {} ms + 0..{} ms, duplicate {:.0}%",
                set(hosts),
                link.loss * 100.0,
                link.latency_ms,
                link.jitter_ms,
                link.duplicate * 100.0
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            hosts: 5,
            zones: ["az1", "az2", "az3", "az1", "az2"]
                .map(String::from)
                .to_vec(),
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_another_seed_another() {
        let abilities = Abilities { disk_full: true };
        let d = Duration::from_secs(300);
        let a = draw(7, &shape(), d, abilities);
        assert_eq!(a, draw(7, &shape(), d, abilities));
        assert_ne!(a, draw(8, &shape(), d, abilities));
        let total: Duration = a.iter().map(|s| s.gap + s.hold).sum();
        assert!(total >= d, "{total:?}");
    }

    #[test]
    fn partitions_leave_a_majority_and_one_way_cuts_never_target_the_sender() {
        let abilities = Abilities { disk_full: false };
        for seed in 0..50 {
            for step in draw(seed, &shape(), Duration::from_secs(600), abilities) {
                match step.fault {
                    Fault::Partition { side } => {
                        assert!(!side.is_empty() && side.len() <= 2, "{side:?}")
                    }
                    Fault::OneWay { from, to } => {
                        assert!(!to.is_empty() && !to.contains(&from), "{from} {to:?}")
                    }
                    Fault::DiskFull { .. } => panic!("disk faults were not allowed"),
                    _ => {}
                }
            }
        }
    }
}
