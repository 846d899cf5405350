//! The catalog's records, with their digest kept until a record changes: the digest
//! reads every record, and a node computes it for every member that comes up (a node
//! that starts into a cluster of N members with M records read N x M records), for
//! every digest a peer sends and at every anti-entropy round.

use std::collections::BTreeMap;
use std::ops::Deref;

use super::{AgentId, AgentRecord};

/// Records by agent, read like the map (through `Deref`); changed only through
/// `insert` and `get_mut`, which forget the digest.
#[derive(Debug, Default)]
pub(super) struct Catalog {
    records: BTreeMap<AgentId, AgentRecord>,
    digest: Option<u64>,
}

impl Catalog {
    pub(super) fn insert(&mut self, agent: AgentId, record: AgentRecord) -> Option<AgentRecord> {
        self.digest = None;
        self.records.insert(agent, record)
    }

    pub(super) fn get_mut(&mut self, agent: &AgentId) -> Option<&mut AgentRecord> {
        self.digest = None;
        self.records.get_mut(agent)
    }

    /// The digest of every record (without seqs), computed once per change.
    pub(super) fn digest(&mut self) -> u64 {
        match self.digest {
            Some(d) => d,
            None => {
                let d = self.compute_digest();
                self.digest = Some(d);
                d
            }
        }
    }

    /// The digest without keeping it.
    pub(super) fn peek_digest(&self) -> u64 {
        self.digest.unwrap_or_else(|| self.compute_digest())
    }

    fn compute_digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for r in self.records.values() {
            r.digest_into(&mut h);
        }
        h.digest()
    }
}

impl Deref for Catalog {
    type Target = BTreeMap<AgentId, AgentRecord>;

    fn deref(&self) -> &Self::Target {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeName, Zone};

    fn record(agent: &str, version: u64) -> AgentRecord {
        AgentRecord {
            agent: AgentId::new(agent).unwrap_or_else(|_| unreachable!()),
            owner: NodeName::new("a").unwrap_or_else(|_| unreachable!()),
            owner_zone: Zone::new("az1").unwrap_or_else(|_| unreachable!()),
            epoch: 1,
            seq: 1,
            holders: Vec::new(),
            version,
            meta: String::new(),
            priority: 0,
            isolated: false,
        }
    }

    #[test]
    fn the_kept_digest_is_forgotten_on_every_change() {
        let mut c = Catalog::default();
        let empty = c.digest();
        let x = record("x", 1);
        c.insert(x.agent.clone(), x.clone());
        let one = c.digest();
        assert_ne!(one, empty);
        assert_eq!(c.peek_digest(), c.compute_digest());
        if let Some(r) = c.get_mut(&x.agent) {
            r.version = 2;
        }
        assert_ne!(c.digest(), one);
        assert_eq!(c.digest(), c.compute_digest());
        assert_eq!(c.peek_digest(), c.compute_digest());
    }
}
