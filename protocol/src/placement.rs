//! Zone-aware rendezvous placement of an agent's snapshot copies.
//!
//! Every node computes the same answer from the same inputs: a score per (agent,
//! node) from a seeded hash (highest random weight), no clock and no randomness. The
//! rules, in order:
//!
//! 1. One copy per zone until every zone holds one (zones that already hold a copy
//!    first, so a healthy placement does not move), the best-scoring node of each
//!    zone, preferring a node that already holds a copy.
//! 2. Then distinct hosts: current holders first, then by score.
//!
//! Stickiness matters more than the exact rendezvous order: a member joining must not
//! move copies that are already well spread, or every join would start a copy storm.

use std::collections::{BTreeMap, BTreeSet};

use crate::identity::{NodeName, Zone};
use crate::replication::AgentId;

/// The rendezvous score of `node` for `agent`: higher wins.
pub fn score(agent: &AgentId, node: &NodeName) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(agent.as_str().as_bytes(), node.key())
}

/// A node that may hold a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: NodeName,
    pub zone: Zone,
}

/// The chosen copy holders, best first, and how far they fall short of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub holders: Vec<Candidate>,
    /// Distinct zones among the holders (and the pinned copy, if any).
    pub zones: usize,
}

/// Chooses up to `copies` holders for `agent` among `candidates` (live nodes, without
/// the owner unless the owner's copy counts, in which case it is `pinned`: always kept
/// and its zone taken first). `current` are the holders of today, kept where the rules
/// allow.
pub fn place(
    agent: &AgentId,
    candidates: &[Candidate],
    current: &[NodeName],
    pinned: Option<&Candidate>,
    copies: usize,
) -> Placement {
    let current: BTreeSet<&NodeName> = current.iter().collect();
    // Best first: current holders before others, then by score, then by name.
    let mut ranked: Vec<(&Candidate, bool, u64)> = candidates
        .iter()
        .filter(|c| pinned.is_none_or(|p| p.name != c.name))
        .map(|c| (c, current.contains(&c.name), score(agent, &c.name)))
        .collect();
    ranked.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(b.2.cmp(&a.2))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    ranked.dedup_by(|a, b| a.0.name == b.0.name);

    let mut zones_used: BTreeSet<&Zone> = BTreeSet::new();
    let mut remaining = copies;
    if let Some(p) = pinned {
        zones_used.insert(&p.zone);
        remaining = remaining.saturating_sub(1);
    }
    let mut chosen: Vec<usize> = Vec::new();
    // Rule 1: the best node of each zone not yet used, in rank order (which puts zones
    // holding a current copy first).
    let mut best_of_zone: BTreeMap<&Zone, usize> = BTreeMap::new();
    for (i, (c, _, _)) in ranked.iter().enumerate() {
        best_of_zone.entry(&c.zone).or_insert(i);
    }
    let mut firsts: Vec<usize> = best_of_zone
        .into_iter()
        .filter(|(zone, _)| !zones_used.contains(zone))
        .map(|(_, i)| i)
        .collect();
    firsts.sort_unstable();
    for i in firsts {
        if chosen.len() == remaining {
            break;
        }
        zones_used.insert(&ranked[i].0.zone);
        chosen.push(i);
    }
    // Rule 2: distinct hosts, in rank order.
    for i in 0..ranked.len() {
        if chosen.len() == remaining {
            break;
        }
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen.sort_unstable();
    let holders: Vec<Candidate> = chosen.into_iter().map(|i| ranked[i].0.clone()).collect();
    let mut zones: BTreeSet<&Zone> = holders.iter().map(|c| &c.zone).collect();
    if let Some(p) = pinned {
        zones.insert(&p.zone);
    }
    let zones = zones.len();
    Placement { holders, zones }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, zone: &str) -> Candidate {
        Candidate {
            name: NodeName::new(name).expect("name"),
            zone: Zone::new(zone).expect("zone"),
        }
    }

    fn names(p: &Placement) -> Vec<&str> {
        p.holders.iter().map(|c| c.name.as_str()).collect()
    }

    fn six() -> Vec<Candidate> {
        vec![
            cand("a1", "a"),
            cand("a2", "a"),
            cand("b1", "b"),
            cand("b2", "b"),
            cand("c1", "c"),
            cand("c2", "c"),
        ]
    }

    #[test]
    fn one_copy_per_zone_first() {
        for i in 0..50 {
            let agent = AgentId::new(&format!("agent-{i}")).expect("id");
            let p = place(&agent, &six(), &[], None, 3);
            assert_eq!(p.holders.len(), 3);
            assert_eq!(p.zones, 3, "{:?}", names(&p));
        }
    }

    #[test]
    fn same_inputs_same_answer_regardless_of_candidate_order() {
        let agent = AgentId::new("x").expect("id");
        let mut c = six();
        let p1 = place(&agent, &c, &[], None, 3);
        c.reverse();
        let p2 = place(&agent, &c, &[], None, 3);
        assert_eq!(p1, p2);
    }

    #[test]
    fn current_holders_stay_when_spread_is_already_best() {
        let agent = AgentId::new("sticky").expect("id");
        let current: Vec<NodeName> = ["a2", "b2", "c2"]
            .iter()
            .map(|n| NodeName::new(n).expect("name"))
            .collect();
        let p = place(&agent, &six(), &current, None, 3);
        let mut got = names(&p);
        got.sort_unstable();
        assert_eq!(got, ["a2", "b2", "c2"]);
    }

    #[test]
    fn a_zone_coming_back_replaces_a_doubled_zone() {
        let agent = AgentId::new("spread").expect("id");
        let current: Vec<NodeName> = ["a1", "b1", "b2"]
            .iter()
            .map(|n| NodeName::new(n).expect("name"))
            .collect();
        let p = place(&agent, &six(), &current, None, 3);
        assert_eq!(p.zones, 3);
        let got = names(&p);
        assert!(got.contains(&"a1") && got.iter().any(|n| n.starts_with('c')));
        assert_eq!(got.iter().filter(|n| n.starts_with('b')).count(), 1);
    }

    #[test]
    fn fewer_hosts_than_copies_places_what_it_can() {
        let agent = AgentId::new("small").expect("id");
        let p = place(&agent, &[cand("a1", "a"), cand("a2", "a")], &[], None, 3);
        assert_eq!(p.holders.len(), 2);
        assert_eq!(p.zones, 1);
        let p = place(&agent, &[], &[], None, 3);
        assert!(p.holders.is_empty());
    }

    #[test]
    fn a_pinned_copy_takes_its_zone_and_one_slot() {
        let agent = AgentId::new("pinned").expect("id");
        let owner = cand("a1", "a");
        let p = place(&agent, &six(), &[], Some(&owner), 3);
        assert_eq!(p.holders.len(), 2);
        assert_eq!(p.zones, 3);
        assert!(p.holders.iter().all(|c| c.zone.as_str() != "a"));
    }
}
