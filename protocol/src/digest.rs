//! A digest of a node's live membership view, for anti-entropy.
//!
//! Infection-style dissemination reaches every member only with high probability:
//! with `4 log10(n + 1)` transmissions per update, a burst of joins leaves a few
//! members unaware of a few others until a probe round brings them into direct
//! contact (about `n x probe period`). Every SWIM envelope therefore carries the
//! sender's digest; a receiver whose own differs pulls the members of the buckets
//! that differ (see `Core`). When views agree the cost is the 8 bytes per message.
//!
//! The digest covers live identities only, as `(name, generation)` pairs: suspicion
//! and incarnations are transient and travel by gossip; down members are forgotten at
//! different moments by different nodes, and including them would make views that
//! agree on everything that matters look different forever.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::identity::NodeName;

/// Members are spread over this many buckets by name; a pull asks for the buckets
/// whose digests differ.
pub const BUCKETS: usize = 64;

/// Fixed so that every node, of every version, hashes the same way.
const SEED: u64 = 0x7669_6769_6c2d_6431;

/// The bucket a member's name falls in.
pub fn bucket_of(name: &NodeName) -> usize {
    (xxh3_64_with_seed(name.as_str().as_bytes(), SEED) % BUCKETS as u64) as usize
}

fn contribution(name: &NodeName, generation: u64) -> u64 {
    let mut bytes = Vec::with_capacity(name.as_str().len() + 8);
    bytes.extend_from_slice(name.as_str().as_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    xxh3_64_with_seed(&bytes, SEED)
}

/// XOR of member contributions, per bucket. XOR makes adding and removing a member
/// the same cheap operation and the result independent of order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    buckets: [u64; BUCKETS],
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            buckets: [0; BUCKETS],
        }
    }
}

impl Digest {
    /// Adds a live identity, or removes it if it is already in.
    pub fn toggle(&mut self, name: &NodeName, generation: u64) {
        self.buckets[bucket_of(name)] ^= contribution(name, generation);
    }

    /// One number for the whole view.
    pub fn summary(&self) -> u64 {
        self.buckets.iter().fold(0, |acc, b| acc ^ b)
    }

    pub fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// Buckets where `other` differs from this digest. A wrong-sized `other` differs
    /// everywhere.
    pub fn differing(&self, other: &[u64]) -> [bool; BUCKETS] {
        let mut out = [true; BUCKETS];
        if other.len() == BUCKETS {
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = self.buckets[i] != other[i];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn the_same_members_in_any_order_give_the_same_digest() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        a.toggle(&n("x"), 1);
        a.toggle(&n("y"), 2);
        b.toggle(&n("y"), 2);
        b.toggle(&n("x"), 1);
        assert_eq!(a, b);
        assert_ne!(a.summary(), 0);
        a.toggle(&n("x"), 1);
        a.toggle(&n("y"), 2);
        assert_eq!(a, Digest::default());
    }

    #[test]
    fn a_new_generation_changes_one_bucket() {
        let mut a = Digest::default();
        a.toggle(&n("x"), 1);
        let mut b = a.clone();
        b.toggle(&n("x"), 1);
        b.toggle(&n("x"), 2);
        let diff = a.differing(b.buckets());
        assert_eq!(diff.iter().filter(|d| **d).count(), 1);
        assert!(diff[bucket_of(&n("x"))]);
        assert!(a.differing(&[0; 3]).iter().all(|d| *d));
    }
}
