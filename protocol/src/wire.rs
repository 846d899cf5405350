//! The versioned wire envelope every vigil message travels in.
//!
//! ```text
//! datagram:      'V' 'G' version:u8  body:postcard(Body)
//! stream frame:  len:u32 big-endian  'V' 'G' version:u8  body:postcard(Body)
//! ```
//!
//! The three header bytes are fixed so that a future version can change the body
//! freely: a receiver checks magic and version before it tries to decode anything
//! else. Every decode is bounded by a caller-given maximum and fails with a typed
//! [`DecodeError`]; nothing here panics on input. docs/PROTOCOL.md is the reference.

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"VG";
/// The wire protocol version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Magic plus version.
pub const HEADER_LEN: usize = 3;
/// The largest datagram a node accepts. QUIC datagrams cannot be larger than the path
/// MTU allows (at most 1452 bytes of payload with a 1500-byte Ethernet MTU), so this
/// also bounds what a peer can make us decode per packet.
pub const MAX_DATAGRAM_LEN: usize = 1452;
/// The largest envelope accepted on a stream (length prefix excluded).
pub const MAX_STREAM_FRAME_LEN: usize = 64 * 1024;
/// Bytes the envelope adds around a SWIM packet: header, variant tag, digest and a
/// length prefix of at most two bytes (SWIM packets are smaller than 16 KiB).
pub const SWIM_OVERHEAD: usize = HEADER_LEN + 1 + 8 + 2;

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body<'a> {
    /// One foca (SWIM) packet, opaque at this layer, with the digest of the sender's
    /// live membership view (little-endian u64, see `digest`).
    Swim {
        digest: [u8; 8],
        #[serde(borrow)]
        packet: &'a [u8],
    },
    /// "Send me the members of the buckets where our digests differ." `buckets` holds
    /// the requester's 64 bucket digests (little-endian u64 each); `requester` lets
    /// the answer be addressed before the requester is in the answering node's view,
    /// and its name must be the name the transport authenticated.
    Pull {
        requester: NodeId,
        buckets: Vec<[u8; 8]>,
    },
    /// Members, in answer to a pull, from `sender`, whose name must be the name the
    /// transport authenticated. A large answer comes in several parts, each applied
    /// on its own.
    State {
        sender: crate::identity::NodeName,
        members: Vec<foca::Member<NodeId>>,
    },
    /// "I hold you (`about`) as suspect at `incarnation`": sent straight to a member
    /// whose suspicion would otherwise reach it only by gossip, so it can refute at
    /// once. `sender` must be the name the transport authenticated.
    Suspicion {
        sender: crate::identity::NodeName,
        about: NodeId,
        incarnation: u16,
    },
    /// A snapshot replication message (streams only). `Store` and a found
    /// `FetchReply` are followed on the same stream by `payload_len()` raw bytes.
    Repl(crate::replication::ReplMsg),
}

impl Body<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Swim { .. } => "swim",
            Body::Pull { .. } => "pull",
            Body::State { .. } => "state",
            Body::Suspicion { .. } => "suspicion",
            Body::Repl(_) => "repl",
        }
    }
}

/// Why bytes from the network were refused. None of these change any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("message of {len} bytes is shorter than the {HEADER_LEN}-byte envelope header")]
    Truncated { len: usize },
    #[error("bad magic bytes {found:02x?}: not a vigil message")]
    BadMagic { found: [u8; 2] },
    #[error("wire version {found} is not supported (this node speaks version {WIRE_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("malformed body: {0}")]
    Malformed(postcard::Error),
    #[error("{extra} unexpected bytes after the body")]
    TrailingBytes { extra: usize },
}

impl DecodeError {
    /// A short stable label, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
        }
    }
}

/// Why a message could not be encoded. Only happens for bodies too large for the
/// chosen limit; the caller decides whether to fall back to a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("serialization failed: {0}")]
    Serialize(postcard::Error),
}

/// Encodes `body` into a fresh envelope of at most `max` bytes.
pub fn encode(body: &Body<'_>, max: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 16);
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    let out = postcard::to_extend(body, out).map_err(EncodeError::Serialize)?;
    if out.len() > max {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes one envelope of at most `max` bytes. The body borrows from `bytes`.
pub fn decode(bytes: &[u8], max: usize) -> Result<Body<'_>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    if bytes[..2] != MAGIC {
        return Err(DecodeError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: bytes[2] });
    }
    let (body, rest) = postcard::take_from_bytes::<Body<'_>>(&bytes[HEADER_LEN..])
        .map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(body)
}

/// Prefixes an encoded envelope with its length, for sending on a stream.
pub fn frame_for_stream(envelope: &[u8]) -> Result<Vec<u8>, EncodeError> {
    if envelope.len() > MAX_STREAM_FRAME_LEN {
        return Err(EncodeError::TooLarge {
            len: envelope.len(),
            max: MAX_STREAM_FRAME_LEN,
        });
    }
    let len = u32::try_from(envelope.len()).map_err(|_| EncodeError::TooLarge {
        len: envelope.len(),
        max: MAX_STREAM_FRAME_LEN,
    })?;
    let mut out = Vec::with_capacity(4 + envelope.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(envelope);
    Ok(out)
}

/// Reads a stream frame's length prefix and checks it against the limit before the
/// reader allocates anything for the body.
pub fn stream_frame_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    if len > MAX_STREAM_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_STREAM_FRAME_LEN,
        });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn swim_body_round_trips_with_small_overhead() {
        let payload = vec![7u8; 1000];
        let bytes = encode(
            &Body::Swim {
                digest: [1; 8],
                packet: &payload,
            },
            MAX_DATAGRAM_LEN,
        )
        .unwrap();
        assert!(bytes.len() <= payload.len() + SWIM_OVERHEAD);
        assert_eq!(
            decode(&bytes, MAX_DATAGRAM_LEN).unwrap(),
            Body::Swim {
                digest: [1; 8],
                packet: &payload
            }
        );
    }

    #[test]
    fn decode_names_what_is_wrong() {
        assert_eq!(decode(&[], 10), Err(DecodeError::Empty));
        assert_eq!(decode(b"VG", 10), Err(DecodeError::Truncated { len: 2 }));
        assert_eq!(
            decode(b"XX\x01\x00", 10),
            Err(DecodeError::BadMagic { found: *b"XX" })
        );
        assert_eq!(
            decode(b"VG\x09\x00", 10),
            Err(DecodeError::UnsupportedVersion { found: 9 })
        );
        assert_eq!(
            decode(&[0u8; 11], 10),
            Err(DecodeError::TooLarge { len: 11, max: 10 })
        );
        // Variant 0 (Swim): digest, then a packet claiming 5 bytes but carrying 1.
        assert!(matches!(
            decode(b"VG\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05a", 100),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode(b"VG\x01\x07", 100),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode(b"VG\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01ab", 100),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn encode_refuses_bodies_over_the_limit() {
        let payload = vec![0u8; 100];
        assert!(matches!(
            encode(
                &Body::Swim {
                    digest: [1; 8],
                    packet: &payload
                },
                50
            ),
            Err(EncodeError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn stream_frame_length_is_checked_before_allocation() {
        let env = encode(
            &Body::Swim {
                digest: [0; 8],
                packet: b"x",
            },
            MAX_DATAGRAM_LEN,
        )
        .unwrap();
        let framed = frame_for_stream(&env).unwrap();
        let prefix: [u8; 4] = framed[..4].try_into().unwrap();
        assert_eq!(stream_frame_len(prefix), Ok(env.len()));
        assert_eq!(stream_frame_len([0; 4]), Err(DecodeError::Empty));
        assert!(matches!(
            stream_frame_len(u32::MAX.to_be_bytes()),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&bytes, MAX_DATAGRAM_LEN);
        }

        #[test]
        fn decode_of_envelope_header_plus_junk_never_panics(junk in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = b"VG\x01".to_vec();
            bytes.extend_from_slice(&junk);
            let _ = decode(&bytes, MAX_DATAGRAM_LEN);
        }
    }
}
