//! The versioned wire envelope every vigil message travels in.
//!
//! ```text
//! version 1 datagram:  'V' 'G' 1  body:postcard(Body)
//! version 2 datagram:  'V' 'G' 2  body:postcard(Body)  extensions:postcard(Vec<Extension>)
//! stream frame:        len:u32 big-endian  envelope
//! ```
//!
//! The three header bytes are fixed so that a later version can change the body
//! freely: a receiver checks magic and version before it tries to decode anything
//! else. Every decode is bounded by a caller-given maximum and fails with a typed
//! [`DecodeError`]; nothing here panics on input. docs/PROTOCOL.md is the reference.
//!
//! Versions. A node speaks a range of versions ([`WireVersions`]); each connection
//! speaks the highest version both ends have (negotiated by the transport, TLS ALPN
//! `vigil/N`). A node encodes at its highest version and [`transcode`]s down for a
//! peer that speaks an older one; [`decode`] reads every version this code knows.
//! Version 2 ([`NEXT_WIRE_VERSION`]) exists so far only as the compatibility fixture
//! the upgrade tests run against (a hidden node setting turns it on): version 1 plus
//! an extension list after the body, which a version-1 node cannot decode.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;

/// First two bytes of every envelope.
pub const MAGIC: [u8; 2] = *b"VG";
/// The oldest wire version this build speaks.
pub const MIN_WIRE_VERSION: u8 = 1;
/// The wire version this build speaks by default (and the newest it is released with).
pub const WIRE_VERSION: u8 = 1;
/// The next wire version: decodable by this build, spoken only when a node is told to
/// (the upgrade tests' compatibility fixture, see the module docs).
pub const NEXT_WIRE_VERSION: u8 = 2;
/// Magic plus version.
pub const HEADER_LEN: usize = 3;
/// The largest datagram a node accepts. QUIC datagrams cannot be larger than the path
/// MTU allows (at most 1452 bytes of payload with a 1500-byte Ethernet MTU), so this
/// also bounds what a peer can make us decode per packet.
pub const MAX_DATAGRAM_LEN: usize = 1452;
/// The largest envelope accepted on a stream (length prefix excluded).
pub const MAX_STREAM_FRAME_LEN: usize = 64 * 1024;
/// Bytes the envelope adds around a SWIM packet: header, variant tag, digest, a
/// length prefix of at most two bytes (SWIM packets are smaller than 16 KiB), and in
/// version 2 the one byte of an empty extension list.
pub const SWIM_OVERHEAD: usize = HEADER_LEN + 1 + 8 + 2 + 1;

/// The wire versions a node speaks: every version from `min` to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireVersions {
    min: u8,
    max: u8,
}

impl WireVersions {
    /// What a node speaks unless told otherwise.
    pub const DEFAULT: WireVersions = WireVersions {
        min: MIN_WIRE_VERSION,
        max: WIRE_VERSION,
    };
    /// The default range plus [`NEXT_WIRE_VERSION`]: a node of "the next release".
    pub const WITH_NEXT: WireVersions = WireVersions {
        min: MIN_WIRE_VERSION,
        max: NEXT_WIRE_VERSION,
    };

    /// `min..=max`, if this code knows every version in it.
    pub fn new(min: u8, max: u8) -> Option<WireVersions> {
        (MIN_WIRE_VERSION <= min && min <= max && max <= NEXT_WIRE_VERSION)
            .then_some(WireVersions { min, max })
    }

    pub fn min(self) -> u8 {
        self.min
    }

    /// The version this node encodes at.
    pub fn max(self) -> u8 {
        self.max
    }

    pub fn contains(self, version: u8) -> bool {
        (self.min..=self.max).contains(&version)
    }

    /// Newest first, the order in which a node offers them.
    pub fn newest_first(self) -> impl Iterator<Item = u8> {
        (self.min..=self.max).rev()
    }
}

impl Default for WireVersions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for WireVersions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

/// An optional addition to a version-2 envelope. A receiver skips tags it does not
/// know, so new extensions need no new version (docs/PROTOCOL.md, "Versioning").
/// No tag is defined yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension<'a> {
    pub tag: u16,
    #[serde(borrow)]
    pub value: &'a [u8],
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub version: u8,
    pub body: Body<'a>,
    /// Always empty in version 1.
    pub extensions: Vec<Extension<'a>>,
}

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
    #[error(
        "wire version {found} is not supported here (this build decodes versions {MIN_WIRE_VERSION} to {NEXT_WIRE_VERSION}, and a connection only the version it negotiated or older)"
    )]
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
/// chosen limit (the caller decides whether to fall back to a stream), or for a
/// caller's mistake about versions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("serialization failed: {0}")]
    Serialize(postcard::Error),
    #[error("wire version {version} is not one this build can encode")]
    UnknownVersion { version: u8 },
    #[error("wire version {version} has no extensions")]
    NoExtensions { version: u8 },
    #[error("cannot re-encode a message that does not decode: {0}")]
    Undecodable(DecodeError),
}

/// Encodes `body` into a fresh version-[`WIRE_VERSION`] envelope of at most `max`
/// bytes.
pub fn encode(body: &Body<'_>, max: usize) -> Result<Vec<u8>, EncodeError> {
    encode_as(WIRE_VERSION, body, max)
}

/// Encodes `body` at wire `version`, with no extensions.
pub fn encode_as(version: u8, body: &Body<'_>, max: usize) -> Result<Vec<u8>, EncodeError> {
    encode_parts(version, body, &[], max)
}

/// Encodes a whole envelope (version, body, extensions) of at most `max` bytes.
pub fn encode_envelope(envelope: &Envelope<'_>, max: usize) -> Result<Vec<u8>, EncodeError> {
    encode_parts(envelope.version, &envelope.body, &envelope.extensions, max)
}

fn encode_parts(
    version: u8,
    body: &Body<'_>,
    extensions: &[Extension<'_>],
    max: usize,
) -> Result<Vec<u8>, EncodeError> {
    if !(MIN_WIRE_VERSION..=NEXT_WIRE_VERSION).contains(&version) {
        return Err(EncodeError::UnknownVersion { version });
    }
    if version < 2 && !extensions.is_empty() {
        return Err(EncodeError::NoExtensions { version });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 16);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    let mut out = postcard::to_extend(body, out).map_err(EncodeError::Serialize)?;
    if version >= 2 {
        out = postcard::to_extend(extensions, out).map_err(EncodeError::Serialize)?;
    }
    if out.len() > max {
        return Err(EncodeError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// Decodes one envelope of at most `max` bytes, of any version this build knows.
/// The body borrows from `bytes`.
pub fn decode(bytes: &[u8], max: usize) -> Result<Body<'_>, DecodeError> {
    decode_envelope(bytes, max).map(|e| e.body)
}

/// Like [`decode`], keeping the version and the extensions.
pub fn decode_envelope(bytes: &[u8], max: usize) -> Result<Envelope<'_>, DecodeError> {
    let version = version_of(bytes, max)?;
    if !(MIN_WIRE_VERSION..=NEXT_WIRE_VERSION).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (body, rest) = postcard::take_from_bytes::<Body<'_>>(&bytes[HEADER_LEN..])
        .map_err(DecodeError::Malformed)?;
    let (extensions, rest) = if version >= 2 {
        postcard::take_from_bytes::<Vec<Extension<'_>>>(rest).map_err(DecodeError::Malformed)?
    } else {
        (Vec::new(), rest)
    };
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(Envelope {
        version,
        body,
        extensions,
    })
}

/// The version byte of an envelope of at most `max` bytes, after checking its size
/// and magic (and nothing else).
pub fn version_of(bytes: &[u8], max: usize) -> Result<u8, DecodeError> {
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
    Ok(bytes[2])
}

/// `envelope` as a peer that speaks at most version `to` can read it: unchanged when
/// its version is `to` or older, else decoded and encoded again at `to`, without
/// what version `to` cannot carry (extensions are optional by definition).
///
/// When a later version adds a message kind that older ones cannot express, this is
/// where it is refused ([`EncodeError`]), and the sender counts it as dropped.
pub fn transcode(envelope: &[u8], to: u8, max: usize) -> Result<Cow<'_, [u8]>, EncodeError> {
    let version = version_of(envelope, max).map_err(EncodeError::Undecodable)?;
    if version <= to {
        return Ok(Cow::Borrowed(envelope));
    }
    let decoded = decode_envelope(envelope, max).map_err(EncodeError::Undecodable)?;
    encode_as(to, &decoded.body, max).map(Cow::Owned)
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

    fn swim(packet: &[u8]) -> Body<'_> {
        Body::Swim {
            digest: [1; 8],
            packet,
        }
    }

    #[test]
    fn version_1_bytes_are_those_every_version_1_build_sends() {
        // Pinned: a build from before versioning was added sends and expects exactly
        // these bytes, so a change here breaks mixed clusters.
        let bytes = encode(&swim(b"ab"), MAX_DATAGRAM_LEN).unwrap();
        assert_eq!(bytes, b"VG\x01\x00\x01\x01\x01\x01\x01\x01\x01\x01\x02ab");
        assert_eq!(encode_as(1, &swim(b"ab"), MAX_DATAGRAM_LEN).unwrap(), bytes);
    }

    #[test]
    fn version_2_appends_an_extension_list_that_version_1_cannot_read() {
        let v2 = encode_as(2, &swim(b"ab"), MAX_DATAGRAM_LEN).unwrap();
        assert_eq!(v2[2], 2);
        assert_eq!(v2[3..v2.len() - 1], encode(&swim(b"ab"), 100).unwrap()[3..]);
        assert_eq!(*v2.last().unwrap(), 0, "an empty extension list");
        assert_eq!(decode(&v2, MAX_DATAGRAM_LEN).unwrap(), swim(b"ab"));
        // What a version-1 reader makes of it: the same bytes with its own version
        // byte leave the extension list over.
        let mut as_v1 = v2.clone();
        as_v1[2] = 1;
        assert_eq!(
            decode(&as_v1, MAX_DATAGRAM_LEN),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        // And a version-2 header on a version-1 body lacks the list.
        let mut as_v2 = encode(&swim(b"ab"), 100).unwrap();
        as_v2[2] = 2;
        assert!(matches!(
            decode(&as_v2, MAX_DATAGRAM_LEN),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn extensions_round_trip_in_version_2_only() {
        let envelope = Envelope {
            version: 2,
            body: swim(b"x"),
            extensions: vec![
                Extension {
                    tag: 7,
                    value: b"seven",
                },
                Extension {
                    tag: 60_000,
                    value: b"",
                },
            ],
        };
        let bytes = encode_envelope(&envelope, MAX_DATAGRAM_LEN).unwrap();
        // Unknown tags are handed over, not refused: the reader skips what it does
        // not know.
        assert_eq!(decode_envelope(&bytes, MAX_DATAGRAM_LEN).unwrap(), envelope);
        assert_eq!(decode(&bytes, MAX_DATAGRAM_LEN).unwrap(), swim(b"x"));
        let v1 = Envelope {
            version: 1,
            ..envelope
        };
        assert_eq!(
            encode_envelope(&v1, MAX_DATAGRAM_LEN),
            Err(EncodeError::NoExtensions { version: 1 })
        );
    }

    #[test]
    fn only_known_versions_encode_and_decode() {
        for version in [0, 3, 255] {
            assert_eq!(
                encode_as(version, &swim(b""), 100),
                Err(EncodeError::UnknownVersion { version })
            );
            assert_eq!(
                decode(&[b'V', b'G', version, 0], 100),
                Err(DecodeError::UnsupportedVersion { found: version })
            );
        }
        assert_eq!(WireVersions::new(1, 2), Some(WireVersions::WITH_NEXT));
        assert_eq!(WireVersions::new(2, 1), None);
        assert_eq!(WireVersions::new(1, 3), None);
        assert_eq!(WireVersions::new(0, 1), None);
        assert_eq!(
            WireVersions::WITH_NEXT.newest_first().collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert!(!WireVersions::DEFAULT.contains(2));
    }

    #[test]
    fn transcoding_down_drops_extensions_and_keeps_older_envelopes() {
        let v2 = encode_envelope(
            &Envelope {
                version: 2,
                body: swim(b"payload"),
                extensions: vec![Extension {
                    tag: 1,
                    value: b"v",
                }],
            },
            MAX_DATAGRAM_LEN,
        )
        .unwrap();
        let down = transcode(&v2, 1, MAX_DATAGRAM_LEN).unwrap();
        assert_eq!(
            down.as_ref(),
            encode(&swim(b"payload"), MAX_DATAGRAM_LEN).unwrap()
        );
        assert!(matches!(
            transcode(&v2, 2, MAX_DATAGRAM_LEN).unwrap(),
            Cow::Borrowed(_)
        ));
        // A peer on a newer version reads older envelopes as they are.
        assert!(matches!(
            transcode(&down, 2, MAX_DATAGRAM_LEN).unwrap(),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            transcode(b"VG\x02\x07", 1, MAX_DATAGRAM_LEN),
            Err(EncodeError::Undecodable(DecodeError::Malformed(_)))
        ));
        assert!(matches!(
            transcode(b"", 1, MAX_DATAGRAM_LEN),
            Err(EncodeError::Undecodable(DecodeError::Empty))
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&bytes, MAX_DATAGRAM_LEN);
        }

        #[test]
        fn decode_of_envelope_header_plus_junk_never_panics(
            version in 1u8..=2,
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut bytes = vec![b'V', b'G', version];
            bytes.extend_from_slice(&junk);
            let _ = decode(&bytes, MAX_DATAGRAM_LEN);
            let _ = transcode(&bytes, 1, MAX_DATAGRAM_LEN);
        }

        #[test]
        fn what_version_2_encodes_reads_back_at_every_version(
            packet in proptest::collection::vec(any::<u8>(), 0..300),
            tags in proptest::collection::vec(any::<u16>(), 0..4),
        ) {
            let extensions = tags.iter().map(|&tag| Extension { tag, value: &packet[..packet.len().min(3)] }).collect();
            let envelope = Envelope { version: 2, body: swim(&packet), extensions };
            let bytes = encode_envelope(&envelope, MAX_DATAGRAM_LEN).unwrap();
            prop_assert_eq!(decode_envelope(&bytes, MAX_DATAGRAM_LEN).unwrap(), envelope);
            let down = transcode(&bytes, 1, MAX_DATAGRAM_LEN).unwrap();
            prop_assert_eq!(down[2], 1);
            prop_assert_eq!(decode(&down, MAX_DATAGRAM_LEN).unwrap(), swim(&packet));
        }
    }
}
