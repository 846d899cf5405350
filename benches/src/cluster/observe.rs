//! One owner for everything the nodes report during a run: membership events (with
//! the nodes' own timestamps) and, for udp-node, cumulative traffic counters.
//!
//! The systems' reader tasks forward each line into one channel; the run loop drains
//! it through [`Observer::pump_until`], so all bookkeeping happens in one place and
//! waiting is driven by what the nodes say, not by polling.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Capacity of the channel from the reader tasks. A full channel only delays the
/// readers (they await), and the run loop drains it continuously.
pub const CHANNEL_CAPACITY: usize = 1 << 16;

/// One line reported by one node.
#[derive(Debug, Clone)]
pub struct Observed {
    pub node: String,
    pub item: Item,
}

#[derive(Debug, Clone)]
pub enum Item {
    /// A membership event, stamped by the node that reports it (Unix ms).
    Event {
        time_ms: u64,
        kind: String,
        member: Option<String>,
    },
    /// Cumulative UDP counters (udp-node only; vigil's come from /metrics).
    Stats(Traffic),
    /// The node's output ended (it exited, or its event stream failed).
    Closed(String),
}

/// Cumulative UDP payload counters of one node at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Traffic {
    /// Unix time of the reading, in milliseconds (fractional for harness readings).
    pub t_ms: f64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// QUIC connections established so far, both directions (vigil only).
    pub connections_opened: Option<u64>,
    /// SWIM messages sent as QUIC datagrams so far (vigil only); the rest of the UDP
    /// packets are handshakes, ACK-only packets and other QUIC housekeeping.
    pub swim_datagrams: Option<u64>,
}

/// A suspicion or death declared about a node that had not been killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FalsePositive {
    pub observer: String,
    pub kind: String,
    pub member: String,
    pub time_ms: u64,
}

pub struct Observer {
    rx: mpsc::Receiver<Observed>,
    names: Vec<String>,
    /// Per node: the other nodes it currently believes alive.
    alive: BTreeMap<String, BTreeSet<String>>,
    /// Per node: time of the event that completed its view, and the member it was
    /// about, while the view is complete.
    complete_at: BTreeMap<String, Option<(u64, String)>>,
    /// When, and which node's view completed last (learning about which member).
    converged: Option<(u64, String, String)>,
    victim: String,
    kill_ms: Option<u64>,
    /// Survivor -> time of its `member_down` about the victim.
    down_at: BTreeMap<String, u64>,
    first_suspicion: Option<u64>,
    /// False positives are counted until the run starts stopping its nodes (a node
    /// told to leave may be suspected on the way out; that is not a detector error).
    counting: bool,
    false_positives: Vec<FalsePositive>,
    stats: BTreeMap<String, Vec<Traffic>>,
    closed: BTreeMap<String, String>,
}

impl Observer {
    /// An observer for nodes `names`; `victim` is the node that will be killed.
    pub fn new(rx: mpsc::Receiver<Observed>, names: Vec<String>, victim: String) -> Self {
        let alive = names.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        let complete_at = names.iter().map(|n| (n.clone(), None)).collect();
        Observer {
            rx,
            names,
            alive,
            complete_at,
            converged: None,
            victim,
            kill_ms: None,
            down_at: BTreeMap::new(),
            first_suspicion: None,
            counting: true,
            false_positives: Vec::new(),
            stats: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }

    /// Applies reports until `done` holds or `deadline` passes; returns whether `done`
    /// holds. Also used to let a settle or measurement window elapse while keeping
    /// the bookkeeping current (`done` = never).
    pub async fn pump_until(&mut self, deadline: Instant, done: impl Fn(&Self) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(observed)) => self.apply(observed),
                // Every sender is gone: nothing more can arrive.
                Ok(None) | Err(_) => return done(self),
            }
        }
    }

    /// Applies whatever has already arrived, without waiting.
    pub fn drain_ready(&mut self) {
        while let Ok(observed) = self.rx.try_recv() {
            self.apply(observed);
        }
    }

    pub fn apply(&mut self, observed: Observed) {
        let Observed { node, item } = observed;
        match item {
            Item::Event {
                time_ms,
                kind,
                member,
            } => {
                if let Some(member) = member {
                    self.on_member_event(&node, time_ms, &kind, member);
                }
            }
            Item::Stats(traffic) => self.stats.entry(node).or_default().push(traffic),
            Item::Closed(why) => {
                self.closed.insert(node, why);
            }
        }
    }

    fn on_member_event(&mut self, node: &str, time_ms: u64, kind: &str, member: String) {
        if !self.alive.contains_key(node) || !self.alive.contains_key(&member) || member == node {
            return;
        }
        let bad_news = matches!(kind, "member_suspected" | "member_down");
        if bad_news && self.counting {
            // Anything said about the victim before it was killed is as false as
            // anything said about a node that was never killed.
            let after_kill = self.kill_ms.is_some_and(|t0| time_ms >= t0);
            if member != self.victim || !after_kill {
                self.false_positives.push(FalsePositive {
                    observer: node.to_string(),
                    kind: kind.to_string(),
                    member: member.clone(),
                    time_ms,
                });
            } else if kind == "member_down" {
                self.down_at.entry(node.to_string()).or_insert(time_ms);
            } else {
                self.first_suspicion =
                    Some(self.first_suspicion.map_or(time_ms, |t| t.min(time_ms)));
            }
        }

        let Some(view) = self.alive.get_mut(node) else {
            return;
        };
        match kind {
            // A suspected member is still a member: SWIM has not given up on it.
            "member_joined" | "member_restarted" | "member_refuted" | "member_suspected" => {
                view.insert(member.clone());
            }
            "member_down" | "member_left" => {
                view.remove(&member);
            }
            _ => {}
        }
        let complete = view.len() + 1 == self.names.len();
        let slot = self.complete_at.entry(node.to_string()).or_default();
        match (complete, slot.is_some()) {
            (true, false) => *slot = Some((time_ms, member)),
            (false, true) => *slot = None,
            _ => {}
        }
        if self.converged.is_none() && self.complete_at.values().all(Option::is_some) {
            self.converged = self
                .complete_at
                .iter()
                .filter_map(|(n, c)| c.as_ref().map(|(t, m)| (*t, n.clone(), m.clone())))
                .max();
        }
    }

    /// The instant (node time, Unix ms) every node first had all others alive: the
    /// latest of the events that completed each node's view.
    pub fn converged_at(&self) -> Option<u64> {
        self.converged.as_ref().map(|(t, _, _)| *t)
    }

    /// The node whose view completed last and the member that completed it.
    pub fn converged_last(&self) -> Option<(&str, &str)> {
        self.converged
            .as_ref()
            .map(|(_, n, m)| (n.as_str(), m.as_str()))
    }

    /// Nodes whose view is not complete right now.
    pub fn incomplete(&self) -> Vec<String> {
        self.complete_at
            .iter()
            .filter(|(_, at)| at.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn set_kill_time(&mut self, t0_ms: u64) {
        self.kill_ms = Some(t0_ms);
    }

    pub fn survivors(&self) -> impl Iterator<Item = &String> {
        self.names.iter().filter(|n| **n != self.victim)
    }

    /// Every survivor has declared the victim down.
    pub fn all_detected(&self) -> bool {
        self.survivors().all(|s| self.down_at.contains_key(s))
    }

    /// Survivor -> `member_down` time about the victim, in ms after the kill.
    pub fn detections(&self) -> BTreeMap<String, u64> {
        let t0 = self.kill_ms.unwrap_or(0);
        self.down_at
            .iter()
            .map(|(n, t)| (n.clone(), t.saturating_sub(t0)))
            .collect()
    }

    pub fn undetected_by(&self) -> Vec<String> {
        self.survivors()
            .filter(|s| !self.down_at.contains_key(*s))
            .cloned()
            .collect()
    }

    /// First `member_suspected` about the victim across survivors, ms after the kill.
    pub fn first_suspicion(&self) -> Option<u64> {
        let t0 = self.kill_ms?;
        self.first_suspicion.map(|t| t.saturating_sub(t0))
    }

    pub fn stop_counting(&mut self) {
        self.drain_ready();
        self.counting = false;
    }

    pub fn false_positives(&self) -> &[FalsePositive] {
        &self.false_positives
    }

    /// The last counters `node` reported at or before `t_ms`.
    pub fn stats_at_or_before(&self, node: &str, t_ms: f64) -> Option<Traffic> {
        self.stats
            .get(node)?
            .iter()
            .rev()
            .find(|s| s.t_ms <= t_ms)
            .copied()
    }

    /// Whether `node` has reported counters later than `t_ms`, or can report no more.
    pub fn stats_after(&self, node: &str, t_ms: f64) -> bool {
        self.closed.contains_key(node)
            || self
                .stats
                .get(node)
                .and_then(|s| s.last())
                .is_some_and(|s| s.t_ms > t_ms)
    }

    /// Why a node's output ended, if it did.
    pub fn closed(&self, node: &str) -> Option<&str> {
        self.closed.get(node).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn observer(n: usize, victim: &str) -> (mpsc::Sender<Observed>, Observer) {
        let (tx, rx) = mpsc::channel(16);
        let names = (1..=n).map(|i| format!("n{i}")).collect();
        (tx, Observer::new(rx, names, victim.into()))
    }

    fn ev(o: &mut Observer, node: &str, t: u64, kind: &str, member: &str) {
        o.apply(Observed {
            node: node.into(),
            item: Item::Event {
                time_ms: t,
                kind: kind.into(),
                member: Some(member.into()),
            },
        });
    }

    #[test]
    fn convergence_is_the_latest_event_completing_a_view() {
        let (_tx, mut o) = observer(3, "n2");
        ev(&mut o, "n1", 10, "member_joined", "n2");
        ev(&mut o, "n1", 20, "member_joined", "n3");
        ev(&mut o, "n2", 15, "member_joined", "n1");
        ev(&mut o, "n2", 40, "member_joined", "n3");
        ev(&mut o, "n3", 12, "member_joined", "n1");
        assert_eq!(o.converged_at(), None);
        assert_eq!(o.incomplete(), vec!["n3".to_string()]);
        ev(&mut o, "n3", 30, "member_joined", "n2");
        assert_eq!(o.converged_at(), Some(40));
        assert_eq!(o.converged_last(), Some(("n2", "n3")));
    }

    #[test]
    fn a_view_that_loses_a_member_completes_again_later() {
        let (_tx, mut o) = observer(2, "n2");
        ev(&mut o, "n1", 10, "member_joined", "n2");
        ev(&mut o, "n1", 20, "member_down", "n2");
        ev(&mut o, "n1", 30, "member_restarted", "n2");
        ev(&mut o, "n2", 25, "member_joined", "n1");
        assert_eq!(o.converged_at(), Some(30));
        // The down about the victim came before any kill: a false positive.
        assert_eq!(o.false_positives().len(), 1);
    }

    #[test]
    fn detection_counts_only_news_about_the_victim_after_the_kill() {
        let (_tx, mut o) = observer(3, "n2");
        for (a, b) in [("n1", "n2"), ("n1", "n3"), ("n2", "n1"), ("n2", "n3")] {
            ev(&mut o, a, 1, "member_joined", b);
        }
        ev(&mut o, "n3", 1, "member_joined", "n1");
        ev(&mut o, "n3", 1, "member_joined", "n2");
        o.set_kill_time(100);
        ev(&mut o, "n1", 150, "member_suspected", "n2");
        ev(&mut o, "n3", 120, "member_suspected", "n2");
        ev(&mut o, "n1", 900, "member_down", "n2");
        assert!(!o.all_detected());
        assert_eq!(o.undetected_by(), vec!["n3".to_string()]);
        ev(&mut o, "n3", 1100, "member_down", "n2");
        ev(&mut o, "n3", 1200, "member_suspected", "n1");
        assert!(o.all_detected());
        assert_eq!(o.first_suspicion(), Some(20));
        assert_eq!(
            o.detections().into_iter().collect::<Vec<_>>(),
            vec![("n1".to_string(), 800), ("n3".to_string(), 1000)]
        );
        assert_eq!(o.false_positives().len(), 1);
        assert_eq!(o.false_positives()[0].member, "n1");
        o.stop_counting();
        ev(&mut o, "n3", 1300, "member_suspected", "n1");
        assert_eq!(o.false_positives().len(), 1);
    }

    #[test]
    fn stats_are_looked_up_by_time() {
        let (_tx, mut o) = observer(2, "n2");
        for t in [1000.0, 2000.0, 3000.0] {
            o.apply(Observed {
                node: "n1".into(),
                item: Item::Stats(Traffic {
                    t_ms: t,
                    tx_bytes: t as u64,
                    ..Traffic::default()
                }),
            });
        }
        assert_eq!(o.stats_at_or_before("n1", 2500.0).unwrap().tx_bytes, 2000);
        assert!(o.stats_at_or_before("n1", 500.0).is_none());
        assert!(o.stats_after("n1", 2500.0));
        assert!(!o.stats_after("n1", 3000.0));
        assert!(!o.stats_after("n2", 0.0));
    }
}
