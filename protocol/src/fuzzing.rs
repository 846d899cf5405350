//! Entry points of the fuzz targets (`tests/fuzz/`) and of the regression tests that
//! replay their corpora (`protocol/tests/fuzz_regressions.rs`), so the two cannot
//! drift. Each takes bytes as a peer could send them and drives the real decoder and
//! the real state machine; a panic anywhere is a bug. Not part of the API.
//!
//! Inputs that drive a state machine start with one setup byte (see [`Setup`]) that
//! picks the receiving node and the authenticated sender from [`roster`], whose names
//! are the simulator's (`h0`..`h4`), so messages recorded from a simulated cluster
//! (`vigil-sim fuzz-corpus`) reach the same names here.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use foca::{Codec, PostcardCodec};

use crate::core::{Core, Effect, peek_sender};
use crate::identity::{NodeId, NodeName, Zone};
use crate::profile::Profile;
use crate::replication::{
    AgentId, LoadError, ReplEffect, ReplMsg, ReplicationConfig, Replicator, SnapMeta,
};
use crate::wire::{self, Body, MAX_DATAGRAM_LEN, MAX_STREAM_FRAME_LEN};

/// Nodes of the fuzzed cluster.
pub const ROSTER_LEN: usize = 5;
/// Timer deadlines handled after each input, so the effects of a message that only
/// show at the next timer (probes, suspicion, elections, repair) run too.
const TIMER_STEPS: usize = 4;
/// Effects drained per call at most; a core that produced more would be a bug worth
/// a look, but not an infinite loop in the harness.
const MAX_EFFECTS: usize = 100_000;

/// The fuzzed cluster: `h0`..`h4` in zones `az1`..`az3`, generation 1, as the
/// simulator names its hosts.
pub fn roster() -> Vec<NodeId> {
    (0..ROSTER_LEN)
        .map(|i| {
            let name = NodeName::new(&format!("h{i}"))
                .unwrap_or_else(|_| unreachable!("h<digit> is a valid name"));
            let zone = Zone::new(&format!("az{}", i % 3 + 1))
                .unwrap_or_else(|_| unreachable!("az<digit> is a valid zone"));
            let octet = u8::try_from(i).unwrap_or(0);
            let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, octet), 7946));
            NodeId::new(name, addr, zone, 1)
        })
        .collect()
}

/// What the first byte of a state-machine input selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Index in [`roster`] of the receiving node (bits 0-2, modulo the roster).
    pub to: usize,
    /// Index in [`roster`] of the sender the transport authenticated (bits 3-5).
    pub from: usize,
    /// Bit 6: the authenticated sender is whoever the message claims to be (when it
    /// names one), as for an honest peer; otherwise `from`, which the core must
    /// refuse when the claim differs.
    pub from_claimed: bool,
    /// Bit 7: the receiver already knows every member of the roster.
    pub populated: bool,
}

impl Setup {
    pub fn from_byte(b: u8) -> Self {
        Self {
            to: usize::from(b & 0x07) % ROSTER_LEN,
            from: usize::from((b >> 3) & 0x07) % ROSTER_LEN,
            from_claimed: b & 0x40 != 0,
            populated: b & 0x80 != 0,
        }
    }

    pub fn to_byte(self) -> u8 {
        // Indexes are below ROSTER_LEN (5), so they fit in three bits.
        (self.to & 0x07) as u8
            | (((self.from & 0x07) as u8) << 3)
            | if self.from_claimed { 0x40 } else { 0 }
            | if self.populated { 0x80 } else { 0 }
    }
}

/// Target `wire_decode`: the envelope decoder under both limits, and what the node
/// asks of a decoded body. A body that decodes must encode again and decode to the
/// same value (the node re-sends members and records it received).
pub fn wire_decode(data: &[u8]) {
    for max in [MAX_DATAGRAM_LEN, MAX_STREAM_FRAME_LEN] {
        let Ok(body) = wire::decode(data, max) else {
            continue;
        };
        let _ = body.kind();
        if let Body::Repl(msg) = &body {
            let _ = (msg.kind(), msg.payload_len());
        }
        let again = match wire::encode(&body, MAX_STREAM_FRAME_LEN) {
            Ok(bytes) => bytes,
            Err(e) => panic!("a decoded {} body does not encode again: {e}", body.kind()),
        };
        assert_eq!(
            wire::decode(&again, MAX_STREAM_FRAME_LEN).as_ref(),
            Ok(&body),
            "a decoded body changed through encode and decode"
        );
    }
    let _ = peek_sender(data);
    if let Some(prefix) = data.first_chunk::<4>() {
        let _ = wire::stream_frame_len(*prefix);
    }
}

/// Target `swim_datagram`: one setup byte, then a datagram as the transport hands it
/// to [`Core::handle_datagram`].
pub fn swim_datagram(data: &[u8]) {
    let Some((&setup, bytes)) = data.split_first() else {
        return;
    };
    feed_core(Setup::from_byte(setup), bytes);
}

/// One message into a fresh [`Core`], then a few timers. The core's view must agree
/// with foca's state after every call, and everything it sends must decode.
pub fn feed_core(setup: Setup, bytes: &[u8]) {
    let roster = roster();
    // A SWIM packet names its destination: receive it as that node (foca ignores the
    // destination, but a message about "me" only means something to the right
    // generation of me).
    let me = swim_destination(bytes).unwrap_or_else(|| roster[setup.to].clone());
    let from = match (setup.from_claimed, peek_sender(bytes)) {
        (true, Ok(claimed)) => claimed,
        _ => roster[setup.from].name.clone(),
    };
    let mut now = Duration::from_secs(1);
    let mut core = Core::new(me.clone(), Profile::Lan, u64::from(setup.to_byte()));
    if setup.populated {
        core.assume_members(now, roster.iter().filter(|m| m.name != me.name).cloned());
    }
    drain_core(&mut core, "assume_members");
    let _ = core.handle_datagram(now, &from, bytes);
    drain_core(&mut core, "handle_datagram");
    for _ in 0..TIMER_STEPS {
        let Some(at) = core.poll_timeout() else {
            break;
        };
        now = now.max(at);
        let _ = core.handle_timeout(now);
        drain_core(&mut core, "handle_timeout");
    }
}

fn swim_destination(bytes: &[u8]) -> Option<NodeId> {
    let Ok(Body::Swim { packet, .. }) = wire::decode(bytes, MAX_STREAM_FRAME_LEN) else {
        return None;
    };
    let mut buf = packet;
    let header = Codec::<NodeId>::decode_header(&mut PostcardCodec, &mut buf).ok()?;
    Some(header.dst)
}

fn drain_core(core: &mut Core, after: &str) {
    for _ in 0..MAX_EFFECTS {
        match core.poll_effect() {
            Some(Effect::Send { envelope, .. }) => {
                if let Err(e) = wire::decode(&envelope, MAX_STREAM_FRAME_LEN) {
                    panic!("after {after} the core sent an envelope that does not decode: {e}");
                }
            }
            Some(Effect::Event(event)) => {
                let _ = (event.kind(), event.member());
            }
            None => break,
        }
    }
    if let Err(e) = core.check_view() {
        panic!("after {after} the core's view disagrees with foca: {e}");
    }
}

/// A [`Replicator`] of the roster with its disk in memory, as the node drives one.
pub struct ReplHarness {
    pub replicator: Replicator,
    now: Duration,
    disk: BTreeMap<(AgentId, u64), (SnapMeta, Bytes)>,
}

impl ReplHarness {
    /// Node `setup.to` of the roster, every other member alive.
    pub fn new(setup: Setup) -> Self {
        let roster = roster();
        let me = roster[setup.to].clone();
        let mut replicator = Replicator::new(
            me.clone(),
            ReplicationConfig::default(),
            u64::from(setup.to_byte()),
        );
        let now = Duration::from_secs(1);
        for member in roster.into_iter().filter(|m| m.name != me.name) {
            replicator.member_up(now, member);
        }
        let mut harness = Self {
            replicator,
            now,
            disk: BTreeMap::new(),
        };
        harness.drain();
        harness
    }

    /// One message from `from`, as the node's owner task hands it over (the payload
    /// already checked to be `msg.payload_len()` bytes), then a few timers.
    pub fn message(&mut self, from: &NodeName, msg: ReplMsg, payload: Option<Bytes>) {
        self.replicator.handle_message(self.now, from, msg, payload);
        self.drain();
        for _ in 0..TIMER_STEPS {
            let Some(at) = self.replicator.poll_timeout() else {
                break;
            };
            self.now = self.now.max(at);
            self.replicator.handle_timeout(self.now);
            self.drain();
        }
    }

    /// Carries out the effects: disk writes and reads at once against memory, sends
    /// encoded as the node encodes them (they must fit a stream frame).
    fn drain(&mut self) {
        for _ in 0..MAX_EFFECTS {
            let Some(effect) = self.replicator.poll_effect() else {
                return;
            };
            match effect {
                ReplEffect::Send { msg, payload, .. } => {
                    let expected = msg.payload_len();
                    let actual = payload.as_ref().map_or(0, |p| p.len() as u64);
                    assert_eq!(
                        expected,
                        actual,
                        "a {} was sent with a wrong payload",
                        msg.kind()
                    );
                    if let Err(e) = wire::encode(&Body::Repl(msg), MAX_STREAM_FRAME_LEN) {
                        panic!("the replicator sent a message that does not encode: {e}");
                    }
                }
                ReplEffect::Persist {
                    op,
                    agent,
                    snap,
                    body,
                } => {
                    self.disk.insert((agent, snap.seq), (snap, body));
                    self.replicator.on_persisted(self.now, op, Ok(()));
                }
                ReplEffect::PersistAcceptor { op, .. } => {
                    self.replicator.on_persisted(self.now, op, Ok(()));
                }
                ReplEffect::Load { op, agent, seq } => {
                    let found = self.disk.get(&(agent, seq)).cloned();
                    self.replicator
                        .on_loaded(self.now, op, found.ok_or(LoadError::Missing));
                }
                ReplEffect::DropAgent { agent } => {
                    self.disk.retain(|(a, _), _| *a != agent);
                }
                ReplEffect::PersistRecord { .. }
                | ReplEffect::RegisterDone { .. }
                | ReplEffect::RegisterFailed { .. }
                | ReplEffect::PutDone { .. }
                | ReplEffect::GetDone { .. }
                | ReplEffect::Event(_) => {}
            }
        }
    }
}
