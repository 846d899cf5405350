//! Who a node is: name, address, zone and generation.
//!
//! The name is the node's stable identity. It is also the DNS subject alternative
//! name of its TLS certificate, so the transport can tie every message to a name the
//! cluster CA vouched for. The generation changes on every start (and on every
//! automatic rejoin), so a restarted node is a new identity that wins over its
//! previous incarnation instead of waiting for the cluster to forget it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest node name, in bytes. A DNS label is at most 63 bytes, and the name is used
/// as a certificate DNS name, so it must fit one.
pub const MAX_NAME_LEN: usize = 63;
/// Longest zone name, in bytes.
pub const MAX_ZONE_LEN: usize = 64;

/// Why a node or zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error(
        "contains {found:?}; use lowercase letters a-z, digits 0-9 and '-', starting and ending with a letter or digit"
    )]
    InvalidNameChar { found: char },
    #[error("contains {found:?}; use letters, digits, '-', '_' or '.'")]
    InvalidZoneChar { found: char },
}

/// A node's name: 1 to 63 characters of `a-z`, `0-9` and `-`, starting and ending with
/// a letter or digit (a DNS label, because it is also the certificate's DNS name).
///
/// Carries a 64-bit key (a fixed hash of the text) so comparisons of different names
/// usually stop after one integer compare, and so foca can use it as the member's
/// address (see [`NodeId`]'s `foca::Identity`).
#[derive(Clone)]
pub struct NodeName {
    text: Arc<str>,
    key: u64,
}

/// Fixed so every node of every version derives the same key.
const NAME_KEY_SEED: u64 = 0x7669_6769_6c2d_6e6b;

impl NodeName {
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(Self {
            text: Arc::from(name),
            key: xxhash_rust::xxh3::xxh3_64_with_seed(name.as_bytes(), NAME_KEY_SEED),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The name's 64-bit key.
    pub fn key(&self) -> u64 {
        self.key
    }
}

impl PartialEq for NodeName {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.text == other.text
    }
}

impl Eq for NodeName {}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NodeName {
    /// Alphabetical, so listings sort as people expect.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for NodeName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    for (i, c) in name.chars().enumerate() {
        let alnum = c.is_ascii_lowercase() || c.is_ascii_digit();
        let edge = i == 0 || i == name.len() - 1;
        if !(alnum || (c == '-' && !edge)) {
            return Err(NameError::InvalidNameChar { found: c });
        }
    }
    Ok(())
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl std::str::FromStr for NodeName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for NodeName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Borrowing avoids an allocation for names that fail validation; postcard
        // always hands out borrowed strings.
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        NodeName::new(&raw).map_err(serde::de::Error::custom)
    }
}

/// An availability zone label, such as `az1` or `eu-west-1b`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Zone(Arc<str>);

impl Zone {
    pub fn new(zone: &str) -> Result<Self, NameError> {
        if zone.is_empty() {
            return Err(NameError::Empty);
        }
        if zone.len() > MAX_ZONE_LEN {
            return Err(NameError::TooLong {
                len: zone.len(),
                max: MAX_ZONE_LEN,
            });
        }
        if let Some(found) = zone
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(NameError::InvalidZoneChar { found });
        }
        Ok(Self(Arc::from(zone)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for Zone {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Zone::new(&raw).map_err(serde::de::Error::custom)
    }
}

/// The full identity of one running node.
///
/// Two identities with the same name are the same node; the higher generation is the
/// newer life of it and replaces the older one everywhere (foca's "address conflict",
/// with the name as the address).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: NodeName,
    /// Where peers reach this node (the advertised address).
    pub addr: SocketAddr,
    pub zone: Zone,
    /// Chosen by the node at start, strictly larger than any earlier generation of the
    /// same name; bumped by one on an automatic rejoin.
    pub generation: u64,
}

impl NodeId {
    pub fn new(name: NodeName, addr: SocketAddr, zone: Zone, generation: u64) -> Self {
        Self {
            name,
            addr,
            zone,
            generation,
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{}@{}/{}",
            self.name, self.generation, self.addr, self.zone
        )
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl foca::Identity for NodeId {
    /// The name's key. foca compares addresses in linear scans over all members on
    /// every update, so this must be cheap; two distinct names sharing a 64-bit key
    /// (about even odds only at 2^32 names) would look like one node, and the core
    /// reports such a rename as a collision.
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        // Declared down (e.g. during a partition): come back as the next generation,
        // which wins over the one the cluster holds as down.
        let generation = self.generation.checked_add(1)?;
        Some(Self {
            generation,
            ..self.clone()
        })
    }

    fn addr(&self) -> u64 {
        self.name.key()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Higher generation wins. Equal generations with different addresses or zones
        // mean a misconfiguration (two nodes sharing a name and a start instant); break
        // the tie by value so every member picks the same winner.
        (self.generation, self.addr, &self.zone)
            > (adversary.generation, adversary.addr, &adversary.zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn node_names_follow_dns_label_rules() {
        for ok in ["n1", "a", "node-7", "0abc", "a-b-c9"] {
            assert!(NodeName::new(ok).is_ok(), "{ok} should be accepted");
        }
        assert_eq!(NodeName::new(""), Err(NameError::Empty));
        assert_eq!(
            NodeName::new("N1"),
            Err(NameError::InvalidNameChar { found: 'N' })
        );
        assert_eq!(
            NodeName::new("-n"),
            Err(NameError::InvalidNameChar { found: '-' })
        );
        assert_eq!(
            NodeName::new("n-"),
            Err(NameError::InvalidNameChar { found: '-' })
        );
        assert_eq!(
            NodeName::new("a.b"),
            Err(NameError::InvalidNameChar { found: '.' })
        );
        assert!(matches!(
            NodeName::new(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
    }

    #[test]
    fn zones_accept_cloud_style_labels() {
        assert!(Zone::new("eu-west-1b").is_ok());
        assert!(Zone::new("AZ_1.a").is_ok());
        assert_eq!(
            Zone::new("a z"),
            Err(NameError::InvalidZoneChar { found: ' ' })
        );
    }

    #[test]
    fn decoding_rejects_invalid_names() {
        let bytes = postcard::to_allocvec(&"Bad Name").unwrap();
        assert!(postcard::from_bytes::<NodeName>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"good").unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeName>(&bytes).unwrap().as_str(),
            "good"
        );
    }

    #[test]
    fn renewed_identity_wins_over_the_old_one() {
        let id = NodeId::new(
            NodeName::new("n1").unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            Zone::new("z").unwrap(),
            7,
        );
        let renewed = id.renew().unwrap();
        assert_eq!(renewed.generation, 8);
        assert_eq!(renewed.addr(), id.addr());
        assert_ne!(
            NodeName::new("n1").unwrap().key(),
            NodeName::new("n2").unwrap().key()
        );
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
        let last = NodeId {
            generation: u64::MAX,
            ..id
        };
        assert_eq!(last.renew(), None);
    }
}
