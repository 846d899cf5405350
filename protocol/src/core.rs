//! The sans-IO membership core: one `Core` per node.
//!
//! Inputs come in through `handle_*` methods, each with the current time; outputs are
//! drained with [`Core::poll_effect`] (messages to send, events to report) and
//! [`Core::poll_timeout`] (when to call [`Core::handle_timeout`] next). The node and
//! the simulator drive the same `Core`; neither the clock nor the network is touched
//! here.
//!
//! Time is a `Duration` since an origin the driver picks (process start for the node,
//! zero for the simulator). It must never go backwards.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use nohash_hasher::BuildNoHashHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use foca::{BroadcastHandler, Codec, Foca, Invalidates, OwnedNotification, PostcardCodec, Timer};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::digest::{self, Digest};
use crate::identity::{NodeId, NodeName};
use crate::lifeguard::{self, Detector, Health, Suspicions};
use crate::profile::{self, Profile};
use crate::stats::{CoreStats, ProbeCycle, ProbeOutcome, ProbeReply};

/// Probe round-trip times kept for the node between two calls (one probe per period
/// is answered, so a node that takes them after every call never reaches this).
const MAX_PROBE_RTTS: usize = 64;
use crate::wire::{self, Body, DecodeError};

type Swim = Foca<NodeId, PostcardCodec, ChaCha8Rng, GossipRelay>;

/// How a member is seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    /// Failed a probe; will be declared down unless it refutes in time.
    Suspect,
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

impl From<foca::State> for MemberState {
    fn from(state: foca::State) -> Self {
        match state {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        }
    }
}

/// One row of the membership view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub state: MemberState,
    /// SWIM incarnation: bumped by the member each time it refutes a suspicion.
    pub incarnation: u16,
    /// Down because it left on purpose (graceful shutdown), not because it failed.
    pub left: bool,
    /// This row is the local node.
    pub is_local: bool,
    /// Core time of the last change of `state` (or of the first sighting).
    pub since: Duration,
}

/// Where the local node stands with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalState {
    /// Started, never heard back from any member.
    Joining,
    /// Known to at least one live member.
    Active,
    /// Was active, now knows no live member (partition or everyone else gone). Keeps
    /// announcing to seeds and to the members it last knew.
    Isolated,
    /// Left the cluster on purpose.
    Left,
}

/// A change the core reports. The node numbers them and streams them to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member became known and alive.
    MemberJoined { member: NodeId },
    /// A member failed a probe (ours or someone else's).
    MemberSuspected { member: NodeId, incarnation: u16 },
    /// A suspected member proved it is alive.
    MemberRefuted { member: NodeId, incarnation: u16 },
    /// A member was declared down after its suspicion timed out.
    MemberDown { member: NodeId },
    /// A member left on purpose. May follow `MemberDown` for the same member when the
    /// leave notice arrives after the down update.
    MemberLeft { member: NodeId },
    /// A member came back as a new generation (restart or automatic rejoin).
    MemberRestarted {
        member: NodeId,
        previous_generation: u64,
    },
    /// The local node is now known to the cluster.
    LocalActive { identity: NodeId },
    /// The local node knows no live member any more.
    LocalIsolated,
    /// The cluster declared the local node down; it rejoined as a new generation.
    LocalRejoined {
        identity: NodeId,
        previous_generation: u64,
    },
    /// The cluster declared the local node down and it could not renew its identity.
    LocalDefunct,
    /// Two distinct node names share a 64-bit name key, so SWIM takes them for one
    /// node. One of them must be renamed.
    NameKeyCollision { first: NodeId, second: NodeId },
}

impl Event {
    /// The event's stable name (`member_down`, `local_active`, ...), as in the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MemberJoined { .. } => "member_joined",
            Event::MemberSuspected { .. } => "member_suspected",
            Event::MemberRefuted { .. } => "member_refuted",
            Event::MemberDown { .. } => "member_down",
            Event::MemberLeft { .. } => "member_left",
            Event::MemberRestarted { .. } => "member_restarted",
            Event::LocalActive { .. } => "local_active",
            Event::LocalIsolated => "local_isolated",
            Event::LocalRejoined { .. } => "local_rejoined",
            Event::LocalDefunct => "local_defunct",
            Event::NameKeyCollision { .. } => "name_key_collision",
        }
    }

    /// The node the event is about (the local node for `LocalActive` and
    /// `LocalRejoined`), if the event names one.
    pub fn member(&self) -> Option<&NodeId> {
        match self {
            Event::MemberJoined { member }
            | Event::MemberSuspected { member, .. }
            | Event::MemberRefuted { member, .. }
            | Event::MemberDown { member }
            | Event::MemberLeft { member }
            | Event::MemberRestarted { member, .. } => Some(member),
            Event::LocalActive { identity } | Event::LocalRejoined { identity, .. } => {
                Some(identity)
            }
            Event::NameKeyCollision { second, .. } => Some(second),
            Event::LocalIsolated | Event::LocalDefunct => None,
        }
    }

    /// The member's incarnation, for suspicion and refutation.
    pub fn incarnation(&self) -> Option<u16> {
        match self {
            Event::MemberSuspected { incarnation, .. }
            | Event::MemberRefuted { incarnation, .. } => Some(*incarnation),
            _ => None,
        }
    }

    /// The generation replaced, for restarts and rejoins.
    pub fn previous_generation(&self) -> Option<u64> {
        match self {
            Event::MemberRestarted {
                previous_generation,
                ..
            }
            | Event::LocalRejoined {
                previous_generation,
                ..
            } => Some(*previous_generation),
            _ => None,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Deliver `envelope` (an encoded [`wire`] envelope) to `to`, best effort.
    Send {
        to: NodeId,
        envelope: Bytes,
    },
    Event(Event),
}

/// A message from the network that was refused or failed part-way.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The envelope could not be decoded. Nothing changed.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The SWIM header could not be decoded. Nothing changed.
    #[error("undecodable SWIM header: {0}")]
    SwimHeader(postcard::Error),
    /// The sender claims a name other than the one its certificate proves. Nothing
    /// changed: the message never reached the membership state.
    #[error("sender claims to be {claimed:?} but its certificate names {authenticated:?}")]
    SenderMismatch {
        claimed: NodeName,
        authenticated: NodeName,
    },
    /// foca refused or partly processed the packet. The error says whether foca's
    /// state may have changed; effects produced before the failure are still queued.
    #[error("SWIM: {0}")]
    Swim(#[from] foca::Error),
    /// A replication message reached the membership core (a datagram, or a stream the
    /// driver did not route to the replicator). Nothing changed.
    #[error("a {kind} message is not a membership message")]
    NotMembership { kind: &'static str },
}

impl InputError {
    /// A short stable label, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            InputError::Decode(e) => e.kind(),
            InputError::SwimHeader(_) => "swim_header",
            InputError::SenderMismatch { .. } => "sender_mismatch",
            InputError::Swim(e) => swim_error_kind(e),
            InputError::NotMembership { .. } => "not_membership",
        }
    }
}

/// The name a message's SWIM header claims as its sender, without processing it.
///
/// For drivers with no authenticated channel (the plain-UDP benchmark baseline):
/// the claim is unproven. The QUIC node never needs this; its transport knows the
/// sender from the certificate and [`Core::handle_datagram`] checks the claim.
pub fn peek_sender(bytes: &[u8]) -> Result<NodeName, InputError> {
    match wire::decode(bytes, wire::MAX_STREAM_FRAME_LEN)? {
        Body::Swim { packet, .. } => {
            let header: foca::Header<NodeId> = PostcardCodec
                .decode_header(packet)
                .map_err(InputError::SwimHeader)?;
            Ok(header.src.name)
        }
        Body::Pull { requester, .. } => Ok(requester.name),
        Body::State { sender, .. } | Body::Suspicion { sender, .. } => Ok(sender),
        body @ Body::Repl(_) => Err(InputError::NotMembership { kind: body.kind() }),
    }
}

/// What the core reads from a SWIM packet before foca handles it.
struct PacketNews {
    /// The members it can change: its sender and the members in its updates.
    /// Anything undecodable makes the whole view suspect (foca will refuse it anyway).
    touched: Touched,
    /// An answer to a probe (foca's probe record is private; see `stats`).
    reply: Option<ProbeReply>,
    /// One of its updates says `me` is suspect: foca will refute by raising our
    /// incarnation.
    suspects_me: bool,
}

fn read_packet(packet: &[u8], me: &NodeId) -> PacketNews {
    let mut news = PacketNews {
        touched: Touched::Everything,
        reply: None,
        suspects_me: false,
    };
    let mut buf = packet;
    let Ok(header) = Codec::<NodeId>::decode_header(&mut PostcardCodec, &mut buf) else {
        return news;
    };
    let mut touched = Touched::Nothing;
    touched.add(&header.src.name);
    news.reply = match &header.message {
        foca::Message::Ack(number) => Some(ProbeReply::Direct {
            from: header.src.name.clone(),
            number: *number,
        }),
        foca::Message::ForwardedAck {
            origin,
            probe_number,
        } => Some(ProbeReply::Forwarded {
            about: origin.name.clone(),
            number: *probe_number,
        }),
        _ => None,
    };
    if buf.len() >= 2 && header.message != foca::Message::Broadcast {
        let count = u16::from_be_bytes([buf[0], buf[1]]);
        buf = &buf[2..];
        for _ in 0..count {
            match Codec::<NodeId>::decode_member(&mut PostcardCodec, &mut buf) {
                Ok(member) => {
                    news.suspects_me |= suspects(&member, me);
                    touched.add(&member.id().name);
                }
                Err(_) => return news,
            }
        }
    }
    news.touched = touched;
    news
}

/// The header of a SWIM packet (ours or a peer's), if it decodes.
fn decode_header(packet: &[u8]) -> Option<foca::Header<NodeId>> {
    let mut buf = packet;
    Codec::<NodeId>::decode_header(&mut PostcardCodec, &mut buf).ok()
}

/// `member` is an update saying `me` is suspect.
fn suspects(member: &foca::Member<NodeId>, me: &NodeId) -> bool {
    member.state() == foca::State::Suspect && member.id() == me
}

/// A short stable label for a foca error, for metrics.
pub fn swim_error_kind(e: &foca::Error) -> &'static str {
    match e {
        foca::Error::DataTooBig => "swim_too_big",
        foca::Error::NotUndead => "swim_not_undead",
        foca::Error::SameIdentity => "swim_same_identity",
        foca::Error::NotConnected => "swim_not_connected",
        foca::Error::IncompleteProbeCycle => "swim_incomplete_probe",
        foca::Error::DataFromOurselves => "swim_from_ourselves",
        foca::Error::IndirectForOurselves => "swim_indirect_for_ourselves",
        foca::Error::MalformedPacket => "swim_malformed",
        foca::Error::Encode(_) => "swim_encode",
        foca::Error::Decode(_) => "swim_decode",
        foca::Error::CustomBroadcast(_) => "swim_broadcast",
        foca::Error::InvalidConfig => "swim_invalid_config",
    }
}

/// A local command the core could not carry out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot announce to ourselves")]
    AnnounceToSelf,
    #[error("the node has left the cluster")]
    AlreadyLeft,
    #[error("SWIM: {0}")]
    Swim(#[from] foca::Error),
}

/// Items disseminated alongside SWIM updates (foca "custom broadcasts").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum GossipItem {
    /// The named generation left on purpose.
    Left { name: NodeName, generation: u64 },
    /// `by`'s own probe of `member` failed: an independent confirmation of the
    /// suspicion `(member, generation, incarnation)` (Lifeguard).
    Suspected {
        member: NodeName,
        generation: u64,
        incarnation: u16,
        by: NodeName,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GossipKey {
    Left {
        name: NodeName,
        generation: u64,
    },
    Suspected {
        member: NodeName,
        generation: u64,
        incarnation: u16,
        by: NodeName,
    },
}

impl Invalidates for GossipKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                GossipKey::Left { name, generation },
                GossipKey::Left {
                    name: other_name,
                    generation: other_generation,
                },
            ) => name == other_name && generation >= other_generation,
            (
                GossipKey::Suspected {
                    member,
                    generation,
                    incarnation,
                    by: _,
                },
                GossipKey::Suspected {
                    member: m,
                    generation: g,
                    incarnation: i,
                    by: _,
                },
            ) => {
                // One item per suspected member in the queue, the newest accusation
                // (memberlist keeps one suspect message per member the same way).
                // Without this every accuser's item stayed queued at every node:
                // with 10 % of 1 000 hosts stalling, queues grew by ~60 items a second
                // and never drained (docs/ARCHITECTURE.md, "Failure detection").
                member == m && (generation, incarnation) >= (g, i)
            }
            (GossipKey::Left { .. }, GossipKey::Suspected { .. })
            | (GossipKey::Suspected { .. }, GossipKey::Left { .. }) => false,
        }
    }
}

/// Confirmers remembered per suspicion: more than `lifeguard::expected_confirmations`
/// ever asks for.
const MAX_CONFIRMERS: usize = 8;

/// Independent confirmations of one member's current suspicion.
#[derive(Debug, Clone)]
struct Confirmations {
    generation: u64,
    incarnation: u16,
    by: Vec<NodeName>,
}

/// Most names remembered as having left; the oldest generation is forgotten first.
const MAX_LEFT_REMEMBERED: usize = 65_536;

/// What the gossip relay learned. foca owns the relay and offers no accessor to it,
/// so the core and the relay share this; both live inside the one owner of the core,
/// so the lock is never contended.
#[derive(Debug, Default)]
struct GossipState {
    left: BTreeMap<NodeName, u64>,
    /// Members whose "left" flag may have changed since the last view sync.
    touched: Vec<NodeName>,
    /// Confirmations by member key. Entries are dropped when the member stops being
    /// suspect, so this stays within the membership's size.
    confirmations: BTreeMap<u64, Confirmations>,
    /// Members whose confirmations changed since the core last looked.
    confirmed: Vec<NodeName>,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable gossip item: {0}")]
struct GossipError(postcard::Error);

struct GossipRelay {
    state: Arc<Mutex<GossipState>>,
}

impl BroadcastHandler<NodeId> for GossipRelay {
    type Key = GossipKey;
    type Error = GossipError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<GossipKey>, GossipError> {
        let item: GossipItem = postcard::from_bytes(data).map_err(GossipError)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match item {
            GossipItem::Left { name, generation } => {
                if state
                    .left
                    .get(&name)
                    .is_some_and(|seen| *seen >= generation)
                {
                    return Ok(None); // known: stop spreading it
                }
                if state.left.len() >= MAX_LEFT_REMEMBERED && !state.left.contains_key(&name) {
                    let oldest = state
                        .left
                        .iter()
                        .min_by_key(|(n, g)| (**g, (*n).clone()))
                        .map(|(n, _)| n.clone());
                    if let Some(oldest) = oldest {
                        state.left.remove(&oldest);
                    }
                }
                state.left.insert(name.clone(), generation);
                state.touched.push(name.clone());
                Ok(Some(GossipKey::Left { name, generation }))
            }
            GossipItem::Suspected {
                member,
                generation,
                incarnation,
                by,
            } => {
                let entry =
                    state
                        .confirmations
                        .entry(member.key())
                        .or_insert_with(|| Confirmations {
                            generation,
                            incarnation,
                            by: Vec::new(),
                        });
                match (generation, incarnation).cmp(&(entry.generation, entry.incarnation)) {
                    std::cmp::Ordering::Less => return Ok(None), // stale: refuted since
                    std::cmp::Ordering::Greater => {
                        *entry = Confirmations {
                            generation,
                            incarnation,
                            by: Vec::new(),
                        };
                    }
                    std::cmp::Ordering::Equal => {}
                }
                if entry.by.contains(&by) {
                    return Ok(None); // known: stop spreading it
                }
                if entry.by.len() >= MAX_CONFIRMERS {
                    // More confirmations change no timeout (they count up to k <= 3),
                    // and spreading each of the hundreds of accusations a crash
                    // draws would fill every node's gossip queue with them.
                    return Ok(None);
                }
                entry.by.push(by.clone());
                state.confirmed.push(member.clone());
                Ok(Some(GossipKey::Suspected {
                    member,
                    generation,
                    incarnation,
                    by,
                }))
            }
        }
    }
}

/// A timer of the core: foca's, or the core's own.
#[derive(Debug)]
enum CoreTimer {
    /// `postponed`: already delayed once because it fired late (see `lifeguard`).
    Swim {
        timer: Timer<NodeId>,
        postponed: bool,
    },
}

/// Members per `Body::State` part: the largest identities (63-byte name, 64-byte
/// zone, IPv6 address) still fit a 64 KiB stream frame.
const STATE_PART_MEMBERS: usize = 300;

/// Collects what foca asks for during one call.
#[derive(Default)]
struct Collected {
    sends: Vec<(NodeId, Bytes)>,
    timers: Vec<(Duration, Timer<NodeId>)>,
    notifications: Vec<OwnedNotification<NodeId>>,
}

impl foca::Runtime<NodeId> for &mut Collected {
    fn notify(&mut self, notification: foca::Notification<'_, NodeId>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.sends.push((to, Bytes::copy_from_slice(data)));
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        self.timers.push((after, event));
    }
}

#[derive(Debug)]
struct ViewEntry {
    info: MemberInfo,
    /// Generation this entry adds to the digest (live members only).
    in_digest: Option<u64>,
    /// When we last told this member it is suspected (at most once per probe period).
    notified_at: Option<Duration>,
}

/// View entries by `NodeName::key` (already a hash: no rehashing).
type View = HashMap<u64, ViewEntry, BuildNoHashHasher<u64>>;

/// Members a call may have changed in foca's state.
#[derive(Debug, Default)]
enum Touched {
    #[default]
    Nothing,
    /// Names in insertion order (kept deterministic), and the same names as a set.
    Members(Vec<NodeName>, HashSet<NodeName>),
    Everything,
}

impl Touched {
    fn add(&mut self, name: &NodeName) {
        match self {
            Touched::Nothing => {
                *self = Touched::Members(vec![name.clone()], HashSet::from([name.clone()]));
            }
            Touched::Members(names, set) => {
                if set.insert(name.clone()) {
                    names.push(name.clone());
                }
            }
            Touched::Everything => {}
        }
    }

    fn add_all(&mut self, names: Vec<NodeName>) {
        for name in &names {
            self.add(name);
        }
    }
}

/// The membership core of one node.
pub struct Core {
    swim: Swim,
    detector: Detector,
    gossip: Arc<Mutex<GossipState>>,
    /// foca timers by (due time, insertion sequence): all are delivered, in order,
    /// even when the driver calls late.
    timers: BTreeMap<(Duration, u64), CoreTimer>,
    timer_seq: u64,
    effects: VecDeque<Effect>,
    collected: Collected,
    /// The members by name key, as foca identifies them. Iterated only where order
    /// cannot matter or after sorting (no hash order leaks into behaviour).
    view: View,
    /// What the current call may have changed (see `sync_view`).
    touched: Touched,
    /// The member foca is probing: its fate is decided when the next probe starts.
    probe_target: Option<NodeName>,
    local: LocalState,
    local_since: Duration,
    /// Cluster size the current foca configuration was computed for.
    configured_size: u32,
    /// The core's own random choices (pull partners), separate from foca's.
    rng: ChaCha8Rng,
    /// Digest of the live view, the local node included.
    digest: Digest,
    /// Generation of the local node in the digest.
    digest_self: u64,
    /// When this node last pulled (anti-entropy is at most one pull per probe period).
    last_pull: Option<Duration>,
    health: Health,
    suspicions: Suspicions,
    /// Our own probes that failed during the current call: (member, incarnation).
    own_failures: Vec<(NodeId, u16)>,
    /// All of them, ever (to tell a successful probe round from a failed one).
    own_failures_total: u64,
    stats: CoreStats,
    /// The probe foca is running, followed for `stats`.
    probe: Option<ProbeCycle>,
    /// Round-trip times of direct probe answers not yet taken by the node
    /// (`take_probe_rtts`); the oldest are dropped beyond `MAX_PROBE_RTTS`.
    probe_rtts: VecDeque<Duration>,
    /// A message of the current call (or of an earlier one, until this node sent
    /// something) said this node is suspect; the incarnation in its next message tells
    /// whether foca refuted.
    self_suspected: bool,
    /// This node's incarnation as its own messages last carried it.
    own_incarnation: u16,
    /// Peers the node is opening a connection to (a QUIC handshake), since when
    /// ([`Core::peer_connecting`]).
    connecting: BTreeMap<NodeName, Duration>,
    /// The next probe round waits for a handshake with the current probe's target,
    /// at most until then.
    round_held_until: Option<Duration>,
    /// The wire version this core encodes at: the newest its node speaks. The driver
    /// transcodes down for peers that speak an older one (`wire::transcode`).
    wire_version: u8,
}

/// How long a probe round waits, beyond its due time, for the handshake of a
/// connection to the probe's target (a cold connection: a member that just joined,
/// or one evicted from the node's connection cache). The probe's `Ping` waits in the
/// node's queue meanwhile, so judging it on time would blame the member for our own
/// handshake.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);
/// A handshake the node never reported as ended is forgotten after this long.
const CONNECTING_STALE: Duration = Duration::from_secs(10);
/// Handshakes followed at once; beyond this, stale ones are dropped first.
const MAX_CONNECTING: usize = 1024;

impl Core {
    /// A core for `identity`. `rng_seed` feeds every random choice (probe order,
    /// gossip targets); the same seed and inputs give the same outputs.
    pub fn new(identity: NodeId, profile: Profile, rng_seed: u64) -> Self {
        Self::with_detector(identity, Detector::Vigil(profile), rng_seed)
    }

    /// A core with an explicit detector (the simulator compares vigil's with plain
    /// foca's).
    pub fn with_detector(identity: NodeId, detector: Detector, rng_seed: u64) -> Self {
        let gossip = Arc::new(Mutex::new(GossipState::default()));
        let mut digest = Digest::default();
        digest.toggle(&identity.name, identity.generation);
        let digest_self = identity.generation;
        let swim = Foca::with_custom_broadcast(
            identity,
            detector.swim_config(1),
            ChaCha8Rng::seed_from_u64(rng_seed),
            PostcardCodec,
            GossipRelay {
                state: Arc::clone(&gossip),
            },
        );
        Self {
            swim,
            detector,
            gossip,
            timers: BTreeMap::new(),
            timer_seq: 0,
            effects: VecDeque::new(),
            collected: Collected::default(),
            view: View::default(),
            touched: Touched::Nothing,
            probe_target: None,
            local: LocalState::Joining,
            local_since: Duration::ZERO,
            configured_size: 1,
            rng: ChaCha8Rng::seed_from_u64(rng_seed ^ 0x7669_6769_6c00_0001),
            digest,
            digest_self,
            last_pull: None,
            health: Health::default(),
            suspicions: Suspicions::default(),
            own_failures: Vec::new(),
            own_failures_total: 0,
            stats: CoreStats::default(),
            probe: None,
            probe_rtts: VecDeque::new(),
            self_suspected: false,
            own_incarnation: 0,
            connecting: BTreeMap::new(),
            round_held_until: None,
            wire_version: wire::WIRE_VERSION,
        }
    }

    /// Encode at the newest of `versions` from now on (default: [`wire::WIRE_VERSION`]).
    pub fn set_wire_versions(&mut self, versions: wire::WireVersions) {
        self.wire_version = versions.max();
    }

    /// The wire version this core encodes at.
    pub fn wire_version(&self) -> u8 {
        self.wire_version
    }

    /// What this core counted since it started (probe outcomes, suspicions,
    /// refutations); see [`CoreStats`].
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Round-trip times of this node's probes answered directly since the last call,
    /// oldest first: from the call that sent the `Ping` to the call that handled its
    /// `Ack`, in the driver's time.
    pub fn take_probe_rtts(&mut self) -> impl Iterator<Item = Duration> + '_ {
        self.probe_rtts.drain(..)
    }

    pub fn identity(&self) -> &NodeId {
        self.swim.identity()
    }

    /// The profile (for a plain-foca detector, the LAN profile it resembles).
    pub fn profile(&self) -> Profile {
        self.detector.profile().unwrap_or(Profile::Lan)
    }

    pub fn detector(&self) -> Detector {
        self.detector
    }

    /// The local health multiplier: 0 when healthy, up to 8 when this node's own
    /// probes keep failing or its timers fire late.
    pub fn health_multiplier(&self) -> u32 {
        self.health.multiplier()
    }

    pub fn local_state(&self) -> LocalState {
        self.local
    }

    /// The foca configuration in force (it follows the cluster size).
    pub fn swim_config(&self) -> foca::Config {
        self.detector.swim_config(self.configured_size)
    }

    /// Updates and notices still waiting to be gossiped. Zero once a change has been
    /// passed on as many times as the profile asks.
    pub fn gossip_backlog(&self) -> usize {
        self.swim.updates_backlog() + self.swim.custom_broadcast_backlog()
    }

    /// Live members (alive or suspect), the local node included.
    pub fn live_count(&self) -> usize {
        self.swim.num_members() + usize::from(self.local != LocalState::Left)
    }

    /// Every member this node knows, the local node first, then by name.
    pub fn members(&self) -> impl Iterator<Item = MemberInfo> + '_ {
        let mut others: Vec<MemberInfo> = self.view.values().map(|e| e.info.clone()).collect();
        others.sort_by(|a, b| a.id.name.cmp(&b.id.name));
        std::iter::once(self.local_info()).chain(others)
    }

    /// One member by name (the local node included).
    pub fn member(&self, name: &NodeName) -> Option<MemberInfo> {
        if name == &self.identity().name {
            return Some(self.local_info());
        }
        self.view_entry(name).map(|e| e.info.clone())
    }

    /// The view entry for `name` (the key matches and so does the name).
    fn view_entry(&self, name: &NodeName) -> Option<&ViewEntry> {
        self.view
            .get(&name.key())
            .filter(|e| e.info.id.name == *name)
    }

    fn local_info(&self) -> MemberInfo {
        MemberInfo {
            id: self.identity().clone(),
            state: if self.local == LocalState::Left {
                MemberState::Down
            } else {
                MemberState::Alive
            },
            incarnation: 0,
            left: self.local == LocalState::Left,
            is_local: true,
            since: self.local_since,
        }
    }

    /// Checks that the view matches foca's state exactly (for simulators and tests;
    /// O(members)). `Err` describes the first difference.
    pub fn check_view(&self) -> Result<(), String> {
        let mut seen = 0usize;
        for member in self.swim.iter_membership_state() {
            let id = member.id();
            if id.name == self.identity().name {
                continue; // an older generation of ourselves, not listed
            }
            let Some(entry) = self.view_entry(&id.name) else {
                return Err(format!("{id:?} is in SWIM state but not in the view"));
            };
            let info = &entry.info;
            let state = MemberState::from(member.state());
            if info.id != *id || info.state != state || info.incarnation != member.incarnation() {
                return Err(format!(
                    "view has {:?} {:?}@{}, SWIM has {id:?} {state:?}@{}",
                    info.id,
                    info.state,
                    info.incarnation,
                    member.incarnation()
                ));
            }
            seen += 1;
        }
        if seen != self.view.len() {
            return Err(format!(
                "view has {} members, SWIM state {seen}",
                self.view.len()
            ));
        }
        let mut expected = Digest::default();
        expected.toggle(&self.identity().name, self.identity().generation);
        for entry in self.view.values() {
            if entry.info.state != MemberState::Down {
                expected.toggle(&entry.info.id.name, entry.info.id.generation);
            }
        }
        if expected != self.digest {
            return Err("the maintained digest differs from the view's".into());
        }
        Ok(())
    }

    /// Starts from a known membership instead of joining: every identity in
    /// `members` is taken as alive, without gossip (for simulations that begin from a
    /// converged cluster; a real node joins through seeds).
    pub fn assume_members(&mut self, now: Duration, members: impl Iterator<Item = NodeId>) {
        let me = self.identity().name.clone();
        let updates = members.filter(|id| id.name != me).map(foca::Member::alive);
        let _ = self.swim.apply_many(updates, false, &mut self.collected);
        self.touched = Touched::Everything;
        self.after_call(now);
    }

    /// Asks `seed` to let us in. The seed's name must be known (the transport learns
    /// it from the seed's certificate); its generation and zone may be placeholders.
    pub fn announce(&mut self, now: Duration, seed: NodeId) -> Result<(), CommandError> {
        if seed.name == self.identity().name {
            return Err(CommandError::AnnounceToSelf);
        }
        if self.local == LocalState::Left {
            return Err(CommandError::AlreadyLeft);
        }
        // An announce only sends; foca's member list is unchanged.
        let result = self.swim.announce(seed, &mut self.collected);
        self.after_call(now);
        result.map_err(CommandError::from)
    }

    /// A datagram (or stream frame) from the peer whose certificate names `from`.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: &NodeName,
        bytes: &[u8],
    ) -> Result<(), InputError> {
        // The sender's claimed identity must be the one its certificate proves, or a
        // member could speak for another. Check before foca sees anything.
        let claimed = peek_sender(bytes)?;
        if &claimed != from {
            return Err(InputError::SenderMismatch {
                claimed,
                authenticated: from.clone(),
            });
        }
        match wire::decode(bytes, wire::MAX_STREAM_FRAME_LEN)? {
            Body::Swim { digest, packet } => {
                let news = read_packet(packet, self.identity());
                self.touched = news.touched;
                self.self_suspected |= news.suspects_me;
                let result = self.swim.handle_data(packet, &mut self.collected);
                if let (Ok(()), Some(reply), Some(probe)) =
                    (&result, news.reply, self.probe.as_mut())
                    && let Some(rtt) = probe.observe(&reply, now)
                {
                    if self.probe_rtts.len() >= MAX_PROBE_RTTS {
                        self.probe_rtts.pop_front();
                    }
                    self.probe_rtts.push_back(rtt);
                }
                self.after_call(now);
                // The sender's view differs from ours even after its news: pull the
                // difference from it.
                if u64::from_le_bytes(digest) != self.digest.summary() {
                    self.pull_from(now, from);
                }
                // A member we hold as suspect just spoke to us, yet did not refute:
                // it may never have heard of the suspicion (gossip about it can run
                // out, e.g. during a partition). Tell it.
                self.notify_if_suspect(now, from);
                result.map_err(InputError::from)
            }
            Body::Pull { requester, buckets } => {
                // `peek_sender` already tied the requester's name to `from`.
                if self.local != LocalState::Left {
                    let theirs: Vec<u64> = buckets.into_iter().map(u64::from_le_bytes).collect();
                    self.answer_pull(requester, &theirs);
                }
                Ok(())
            }
            Body::Suspicion {
                about, incarnation, ..
            } => {
                self.on_suspicion(now, from, about, incarnation);
                Ok(())
            }
            Body::State { members, .. } => {
                for m in &members {
                    self.touched.add(&m.id().name);
                    self.self_suspected |= suspects(m, self.identity());
                }
                // Applied without re-broadcasting: the sender's cluster already knows
                // all of it, and a joiner re-gossiping every member would flood.
                let result = self
                    .swim
                    .apply_many(members.into_iter(), false, &mut self.collected);
                self.after_call(now);
                result.map_err(InputError::from)
            }
            body @ Body::Repl(_) => Err(InputError::NotMembership { kind: body.kind() }),
        }
    }

    /// Sends `to` our members in the buckets where its digest differs from ours (all
    /// of them for a joiner), in parts.
    fn answer_pull(&mut self, to: NodeId, theirs: &[u64]) {
        let differing = self.digest.differing(theirs);
        let mut members: Vec<foca::Member<NodeId>> = self
            .swim
            .iter_membership_state()
            .filter(|m| differing[digest::bucket_of(&m.id().name)])
            .cloned()
            .collect();
        let me = self.identity().clone();
        if differing[digest::bucket_of(&me.name)] {
            // foca keeps no entry for itself; the incarnation is only a floor.
            members.push(foca::Member::new(me, 0, foca::State::Alive));
        }
        let parts: Vec<&[foca::Member<NodeId>]> = if members.is_empty() {
            vec![&[]]
        } else {
            members.chunks(STATE_PART_MEMBERS).collect()
        };
        for part in parts {
            let body = Body::State {
                sender: self.identity().name.clone(),
                members: part.to_vec(),
            };
            match wire::encode_as(self.wire_version, &body, wire::MAX_STREAM_FRAME_LEN) {
                Ok(envelope) => self.effects.push_back(Effect::Send {
                    to: to.clone(),
                    envelope: Bytes::from(envelope),
                }),
                Err(_) => debug_assert!(false, "a state part exceeds a stream frame"),
            }
        }
    }

    /// Sends `name` a suspicion notice if we hold it as suspect, at most once per
    /// probe period.
    fn notify_if_suspect(&mut self, now: Duration, name: &NodeName) {
        if !self.detector.extended() {
            return;
        }
        let interval = self.detector.probe_period();
        let me = self.identity().name.clone();
        let Some(entry) = self.view.get_mut(&name.key()) else {
            return;
        };
        if entry.info.id.name != *name || entry.info.state != MemberState::Suspect {
            return;
        }
        if entry.notified_at.is_some_and(|t| now < t + interval) {
            return;
        }
        entry.notified_at = Some(now);
        let body = Body::Suspicion {
            sender: me,
            about: entry.info.id.clone(),
            incarnation: entry.info.incarnation,
        };
        let to = entry.info.id.clone();
        if let Ok(envelope) = wire::encode_as(self.wire_version, &body, wire::MAX_DATAGRAM_LEN) {
            self.effects.push_back(Effect::Send {
                to,
                envelope: Bytes::from(envelope),
            });
        }
    }

    /// `from` suspects us: refute (foca raises our incarnation and gossips it) and
    /// tell `from` at once, since its own timer may declare us down.
    fn on_suspicion(&mut self, now: Duration, from: &NodeName, about: NodeId, incarnation: u16) {
        if about != *self.identity() || self.local == LocalState::Left || !self.detector.extended()
        {
            return; // about an older generation of ours, or we are gone anyway
        }
        // Someone could not reach us: maybe we are the slow one (Lifeguard).
        self.health.worse();
        self.self_suspected = true;
        let suspect = foca::Member::new(about, incarnation, foca::State::Suspect);
        let _ = self
            .swim
            .apply_many(std::iter::once(suspect), true, &mut self.collected);
        // An announce carries our new incarnation in its header, which is all the
        // suspecting node needs; refutations are rare, so its reply costs little.
        if let Some(entry) = self.view_entry(from) {
            let to = entry.info.id.clone();
            let _ = self.swim.announce(to, &mut self.collected);
        }
        self.after_call(now);
    }

    /// Asks `from` for the members of the buckets where our digests differ, unless
    /// this node pulled less than a probe period ago.
    fn pull_from(&mut self, now: Duration, from: &NodeName) {
        if self.local == LocalState::Left || !self.detector.extended() {
            return;
        }
        let interval = self.detector.probe_period();
        if self.last_pull.is_some_and(|t| now < t + interval) {
            return;
        }
        let Some(entry) = self.view_entry(from) else {
            return;
        };
        let to = entry.info.id.clone();
        self.send_pull(now, to);
    }

    fn send_pull(&mut self, now: Duration, to: NodeId) {
        let body = Body::Pull {
            requester: self.identity().clone(),
            buckets: self
                .digest
                .buckets()
                .iter()
                .map(|b| b.to_le_bytes())
                .collect(),
        };
        if let Ok(envelope) = wire::encode_as(self.wire_version, &body, wire::MAX_DATAGRAM_LEN) {
            self.last_pull = Some(now);
            self.effects.push_back(Effect::Send {
                to,
                envelope: Bytes::from(envelope),
            });
        }
    }

    /// Pulls from a random live member (on joining: the reply to an announce names
    /// only a sample of the members).
    fn pull_from_random(&mut self, now: Duration) {
        if !self.detector.extended() {
            return;
        }
        let mut candidates: Vec<NodeId> = self
            .view
            .values()
            .filter(|e| e.info.state != MemberState::Down)
            .map(|e| e.info.id.clone())
            .collect();
        // Sorted first: the seeded choice must not depend on hash order.
        candidates.sort_by(|a, b| a.name.cmp(&b.name));
        if candidates.is_empty() {
            return;
        }
        let pick = candidates[self.rng.random_range(0..candidates.len())].clone();
        self.send_pull(now, pick);
    }

    /// The node started a handshake with `peer` (it had no connection): messages to
    /// it wait until the handshake ends. A probe of `peer` is then not judged before
    /// the handshake ends (plus the time an answer normally takes), at most
    /// [`HANDSHAKE_GRACE`] after it was due.
    pub fn peer_connecting(&mut self, now: Duration, peer: &NodeName) {
        if self.connecting.len() >= MAX_CONNECTING {
            self.connecting
                .retain(|_, since| now.saturating_sub(*since) < CONNECTING_STALE);
            if self.connecting.len() >= MAX_CONNECTING {
                return;
            }
        }
        self.connecting.entry(peer.clone()).or_insert(now);
    }

    /// The handshake with `peer` ended (a connection is up, or the dial failed). A
    /// probe round held for it runs once an answer sent now could have arrived.
    pub fn peer_connected(&mut self, now: Duration, peer: &NodeName) {
        if self.connecting.remove(peer).is_none() {
            return;
        }
        let Some(held_until) = self.round_held_until else {
            return;
        };
        if self.probe.as_ref().is_none_or(|p| &p.target != peer) {
            return;
        }
        let due = held_until.min(now + self.detector.probe_rtt());
        let round = self.timers.iter().find_map(|(key, t)| match t {
            CoreTimer::Swim {
                timer: Timer::ProbeRandomMember(_),
                ..
            } => Some(*key),
            CoreTimer::Swim { .. } => None,
        });
        if let Some(key) = round
            && key.0 > due
            && let Some(CoreTimer::Swim { timer, .. }) = self.timers.remove(&key)
        {
            self.insert_timer(due, timer, true);
        }
    }

    /// Until when the probe round due at `due` waits for a handshake with the
    /// current probe's target, if it must wait at `now`.
    fn hold_round_for_handshake(&mut self, due: Duration, now: Duration) -> Option<Duration> {
        if !self.detector.extended() {
            return None;
        }
        let probe = self.probe.as_ref()?;
        if probe.answered_directly() {
            return None;
        }
        let since = *self.connecting.get(&probe.target)?;
        if now.saturating_sub(since) >= CONNECTING_STALE {
            self.connecting.remove(&probe.target);
            return None;
        }
        let until = *self.round_held_until.get_or_insert(due + HANDSHAKE_GRACE);
        (now < until).then_some(until)
    }

    /// When [`Core::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.keys().next().map(|(due, _)| *due)
    }

    /// Runs every timer due at or before `now`, in due order. Returns the errors
    /// foca reported (they indicate driver bugs, not network input).
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<foca::Error> {
        let mut errors = Vec::new();
        let late_after = self.detector.probe_rtt() / 2;
        let mut noted_lateness = false;
        while let Some(entry) = self.timers.first_entry() {
            let key = *entry.key();
            if key.0 > now {
                break;
            }
            let CoreTimer::Swim { timer, postponed } = entry.remove();
            let judges = matches!(
                timer,
                Timer::ProbeRandomMember(_)
                    | Timer::SendIndirectProbe { .. }
                    | Timer::ChangeSuspectToDown { .. }
            );
            if self.detector.extended() && judges && !postponed && now > key.0 + late_after {
                // We did not run when this was due (a stall, CPU starvation): what
                // queued up meanwhile may hold the acks and refutations it is about
                // to judge without. Let the driver hand those over first.
                if !noted_lateness {
                    noted_lateness = true;
                    self.health.worse();
                }
                let new_key =
                    self.insert_timer(now + self.detector.probe_rtt(), timer.clone(), true);
                if let Timer::ChangeSuspectToDown { member_id, .. } = &timer {
                    self.suspicions.fired(&member_id.name, key);
                    if let Some(t) = self.suspicions.timing.get_mut(&member_id.name.key()) {
                        t.entries.push(new_key);
                    }
                }
                continue;
            }
            let probe_round = matches!(timer, Timer::ProbeRandomMember(_));
            if probe_round && let Some(indirect_due) = self.pending_indirect_probe() {
                // The current probe's indirect phase was postponed (it came due while
                // we were stalled): foca must run it before judging the probe, or it
                // drops the probe as incomplete. The next round waits for it, and
                // gives the indirect probes the time they normally have.
                let indirect_wait = self
                    .detector
                    .probe_period()
                    .saturating_sub(self.detector.probe_rtt());
                self.insert_timer(indirect_due + indirect_wait, timer, true);
                continue;
            }
            if probe_round {
                if let Some(until) = self.hold_round_for_handshake(key.0, now) {
                    self.insert_timer(until, timer, true);
                    continue;
                }
                self.round_held_until = None;
            }
            match &timer {
                Timer::ChangeSuspectToDown { member_id, .. } => {
                    self.touched.add(&member_id.name);
                    self.suspicions.fired(&member_id.name, key);
                }
                Timer::RemoveDown(id) => self.touched.add(&id.name),
                // The previous probe's target turns suspect if it failed.
                Timer::ProbeRandomMember(_) => {
                    if let Some(target) = self.probe_target.clone() {
                        self.touched.add(&target);
                    }
                }
                Timer::SendIndirectProbe { .. }
                | Timer::PeriodicAnnounce(_)
                | Timer::PeriodicAnnounceDown(_)
                | Timer::PeriodicGossip(_) => {}
            }
            // foca judges the previous probe when it starts the next one.
            let judged = if probe_round { self.probe.take() } else { None };
            let before = judged
                .as_ref()
                .and_then(|p| self.view_entry(&p.target))
                .map(|e| e.info.state);
            let result = self.swim.handle_timer(timer, &mut self.collected);
            let raised = judged.and_then(|p| self.judge_probe(p, &result));
            if let Err(e) = result {
                errors.push(e);
            }
            let failures_before = self.own_failures_total;
            self.after_call(now);
            if let Some(target) = raised {
                let after = self.view_entry(&target).map(|e| e.info.state);
                if before == Some(MemberState::Alive) && after == Some(MemberState::Suspect) {
                    self.stats.suspicions_raised += 1;
                }
            }
            if probe_round && self.detector.extended() && self.own_failures_total == failures_before
            {
                // The previous probe was answered (foca suspects nobody for it).
                self.health.better();
            }
        }
        errors
    }

    /// When the pending `SendIndirectProbe` timer is due, if one is pending.
    fn pending_indirect_probe(&self) -> Option<Duration> {
        self.timers.iter().find_map(|(key, t)| match t {
            CoreTimer::Swim {
                timer: Timer::SendIndirectProbe { .. },
                ..
            } => Some(key.0),
            CoreTimer::Swim { .. } => None,
        })
    }

    /// Counts how the probe `p` ended, once foca handled the `ProbeRandomMember` timer
    /// that judges it (with `result`). Returns the target of a failed probe.
    fn judge_probe(&mut self, p: ProbeCycle, result: &Result<(), foca::Error>) -> Option<NodeName> {
        // foca ran its probe round only if it asked for the next one; otherwise the
        // timer was stale (foca went offline and forgot the probe), and a round that
        // finds the previous probe incomplete discards it unjudged.
        let ran = self
            .collected
            .timers
            .iter()
            .any(|(_, t)| matches!(t, Timer::ProbeRandomMember(_)));
        if !ran || matches!(result, Err(foca::Error::IncompleteProbeCycle)) {
            return None;
        }
        let suspected = self.collected.timers.iter().any(|(_, t)| {
            matches!(t, Timer::ChangeSuspectToDown { member_id, .. } if member_id.name == p.target)
        });
        let outcome = p.outcome(suspected);
        self.stats.count_probe(outcome);
        (outcome == ProbeOutcome::Failed).then_some(p.target)
    }

    /// Follows foca's probes and this node's incarnation from what a call produced
    /// (before the sends are wrapped into envelopes).
    fn observe_own_output(&mut self, now: Duration) {
        for (_, timer) in &self.collected.timers {
            // foca asks for this right after sending the probe's `Ping`.
            if let Timer::SendIndirectProbe { probed_id, .. } = timer {
                let number = self
                    .collected
                    .sends
                    .iter()
                    .filter(|(to, _)| to.name == probed_id.name)
                    .find_map(|(_, packet)| match decode_header(packet)?.message {
                        foca::Message::Ping(n) => Some(n),
                        _ => None,
                    });
                self.probe = Some(ProbeCycle::new(probed_id.name.clone(), number, now));
            }
        }
        if self.self_suspected
            && let Some((_, packet)) = self.collected.sends.first()
        {
            // foca refutes by raising its incarnation and gossiping at once, so the
            // first message after a suspicion of us carries the outcome. Decoded only
            // then: a header decode per message would cost every call.
            self.self_suspected = false;
            if let Some(header) = decode_header(packet)
                && header.src == *self.identity()
                && header.src_incarnation > self.own_incarnation
            {
                self.own_incarnation = header.src_incarnation;
                self.stats.refutations += 1;
            }
        }
    }

    /// Inserts a foca timer due at `due`; returns its key.
    fn insert_timer(
        &mut self,
        due: Duration,
        timer: Timer<NodeId>,
        postponed: bool,
    ) -> (Duration, u64) {
        self.timer_seq += 1;
        let key = (due, self.timer_seq);
        self.timers
            .insert(key, CoreTimer::Swim { timer, postponed });
        key
    }

    /// Independent confirmations of `member`'s current suspicion, ours excluded.
    fn confirmations(&self, member: &NodeId, incarnation: u16) -> u32 {
        let gossip = self.gossip.lock().unwrap_or_else(PoisonError::into_inner);
        gossip
            .confirmations
            .get(&member.name.key())
            .filter(|c| c.generation == member.generation && c.incarnation == incarnation)
            .map_or(0, |c| {
                let mine = &self.identity().name;
                u32::try_from(c.by.iter().filter(|b| *b != mine).count()).unwrap_or(u32::MAX)
            })
    }

    /// When the suspicion of `member` at `incarnation` (started at `started`) ends.
    fn suspicion_due(&self, member: &NodeId, incarnation: u16, started: Duration) -> Duration {
        let n = u32::try_from(self.live_count()).unwrap_or(u32::MAX);
        let Some(profile) = self.detector.profile() else {
            return started + self.detector.max_suspicion(n);
        };
        let (min, max) = profile::suspicion_bounds(profile, n);
        let k = lifeguard::expected_confirmations(n);
        let c = self.confirmations(member, incarnation);
        // A node that knows it is struggling gives accused members longer to refute.
        started
            + self
                .health
                .scale(lifeguard::suspicion_timeout(min, max, k, c))
    }

    /// Schedules foca's `ChangeSuspectToDown` at the Lifeguard deadline instead of
    /// foca's fixed timeout.
    fn schedule_suspicion(&mut self, now: Duration, timer: Timer<NodeId>) {
        let Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = &timer
        else {
            return;
        };
        let (member, incarnation) = (member_id.clone(), *incarnation);
        let started = self
            .suspicions
            .start(&member.name, member.generation, incarnation, now)
            .started;
        let due = self.suspicion_due(&member, incarnation, started).max(now);
        let key = self.insert_timer(due, timer, false);
        if let Some(t) = self.suspicions.timing.get_mut(&member.name.key()) {
            t.entries.push(key);
        }
    }

    /// New confirmations arrived: bring the affected suspicions' deadlines forward.
    fn reschedule_suspicions(&mut self, now: Duration, members: Vec<NodeName>) {
        for name in members {
            let Some(timing) = self.suspicions.timing.get(&name.key()).cloned() else {
                continue;
            };
            let Some(member) = self.view_entry(&name).map(|e| e.info.id.clone()) else {
                continue;
            };
            if member.generation != timing.generation {
                continue;
            }
            let due = self
                .suspicion_due(&member, timing.incarnation, timing.started)
                .max(now);
            let mut entries = Vec::with_capacity(timing.entries.len());
            for key in timing.entries {
                if key.0 <= due {
                    entries.push(key);
                    continue;
                }
                match self.timers.remove(&key) {
                    Some(CoreTimer::Swim { timer, postponed }) => {
                        entries.push(self.insert_timer(due, timer, postponed));
                    }
                    None => {}
                }
            }
            if let Some(t) = self.suspicions.timing.get_mut(&name.key()) {
                t.entries = entries;
            }
        }
    }

    /// Leaves the cluster: tells a few members at once and spreads a notice that this
    /// was a departure, not a failure. The driver should give the resulting sends a
    /// moment to go out before closing the transport.
    pub fn leave(&mut self, now: Duration) -> Result<(), CommandError> {
        if self.local == LocalState::Left {
            return Err(CommandError::AlreadyLeft);
        }
        let id = self.identity().clone();
        let item = GossipItem::Left {
            name: id.name,
            generation: id.generation,
        };
        let data = postcard::to_allocvec(&item)
            .map_err(|e| CommandError::Swim(foca::Error::Encode(Box::new(e))))?;
        self.swim.add_broadcast(&data)?;
        // Left before foca runs: it reports the node "defunct" while leaving, which
        // is not news to anyone here.
        self.set_local(now, LocalState::Left);
        self.probe = None;
        // Leaving changes only the local node's state, which the view does not hold.
        let result = self.swim.leave_cluster(&mut self.collected);
        self.after_call(now);
        result.map_err(CommandError::from)
    }

    /// The next effect to execute, in the order they were produced.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    fn set_local(&mut self, now: Duration, state: LocalState) {
        if self.local != state {
            self.local = state;
            self.local_since = now;
        }
    }

    /// Turns what foca asked for into effects and timers, and the membership change
    /// into events.
    fn after_call(&mut self, now: Duration) {
        self.observe_own_output(now);
        let collected = std::mem::take(&mut self.collected);
        for notification in &collected.notifications {
            match notification {
                OwnedNotification::MemberUp(id) | OwnedNotification::MemberDown(id) => {
                    self.touched.add(&id.name);
                }
                OwnedNotification::Rename(old, new) => {
                    self.touched.add(&old.name);
                    self.touched.add(&new.name);
                    if old.name != new.name {
                        // Distinct names with the same 64-bit key: foca now takes them
                        // for one node. Astronomically unlikely; never silent.
                        self.effects
                            .push_back(Effect::Event(Event::NameKeyCollision {
                                first: old.clone(),
                                second: new.clone(),
                            }));
                    }
                }
                _ => {}
            }
        }
        // The view may have changed during the call: digest after syncing it.
        self.sync_view(now);
        let digest = self.digest.summary().to_le_bytes();
        for (to, packet) in collected.sends {
            let body = Body::Swim {
                digest,
                packet: &packet,
            };
            match wire::encode_as(self.wire_version, &body, wire::MAX_STREAM_FRAME_LEN) {
                Ok(envelope) => self.effects.push_back(Effect::Send {
                    to,
                    envelope: Bytes::from(envelope),
                }),
                // foca bounds packets by SWIM_MAX_PACKET, far below the stream limit.
                Err(_) => debug_assert!(false, "SWIM packet larger than a stream frame"),
            }
        }
        let extended = self.detector.extended();
        for (after, timer) in collected.timers {
            match &timer {
                Timer::SendIndirectProbe { probed_id, .. } => {
                    self.probe_target = Some(probed_id.name.clone());
                    // Lifeguard: a struggling node waits longer for acks...
                    let after = if extended {
                        self.health.scale(after)
                    } else {
                        after
                    };
                    self.insert_timer(now + after, timer, false);
                }
                Timer::ProbeRandomMember(_) => {
                    // ...and probes less often.
                    let after = if extended {
                        self.health.scale(after)
                    } else {
                        after
                    };
                    self.insert_timer(now + after, timer, false);
                }
                Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } => {
                    // foca schedules this only when our own probe failed.
                    self.own_failures.push((member_id.clone(), *incarnation));
                    self.own_failures_total += 1;
                    if extended {
                        self.schedule_suspicion(now, timer);
                    } else {
                        self.insert_timer(now + after, timer, false);
                    }
                }
                Timer::RemoveDown(_)
                | Timer::PeriodicAnnounce(_)
                | Timer::PeriodicAnnounceDown(_)
                | Timer::PeriodicGossip(_) => {
                    self.insert_timer(now + after, timer, false);
                }
            }
        }
        let failures = std::mem::take(&mut self.own_failures);
        if extended {
            for (member, incarnation) in failures {
                self.health.worse();
                // Tell the suspect (it may be alive and only slow or cut off from us)
                // and everyone else (an independent confirmation).
                self.notify_if_suspect(now, &member.name);
                let item = GossipItem::Suspected {
                    member: member.name.clone(),
                    generation: member.generation,
                    incarnation,
                    by: self.identity().name.clone(),
                };
                if let Ok(data) = postcard::to_allocvec(&item) {
                    let _ = self.swim.add_broadcast(&data);
                }
            }
            let confirmed = {
                let mut gossip = self.gossip.lock().unwrap_or_else(PoisonError::into_inner);
                std::mem::take(&mut gossip.confirmed)
            };
            if !confirmed.is_empty() {
                self.reschedule_suspicions(now, confirmed);
            }
        }
        // Member changes (synced above) come before local ones: they are the cause
        // (the last member going down is why the node becomes isolated).
        for notification in collected.notifications {
            match notification {
                OwnedNotification::Active => {
                    self.set_local(now, LocalState::Active);
                    let identity = self.identity().clone();
                    self.effects
                        .push_back(Effect::Event(Event::LocalActive { identity }));
                    // A joiner learns only a sample of the members from the reply to
                    // its announce; pull the rest at once.
                    self.pull_from_random(now);
                }
                OwnedNotification::Idle => {
                    // foca drops its running probe when it goes offline.
                    self.probe = None;
                    if self.local == LocalState::Active {
                        self.set_local(now, LocalState::Isolated);
                        self.effects.push_back(Effect::Event(Event::LocalIsolated));
                    }
                }
                OwnedNotification::Rejoin(identity) => {
                    // A new identity: foca dropped its probe and starts again at
                    // incarnation 0.
                    self.probe = None;
                    self.own_incarnation = 0;
                    let previous_generation = identity.generation.saturating_sub(1);
                    self.digest.toggle(&identity.name, self.digest_self);
                    self.digest.toggle(&identity.name, identity.generation);
                    self.digest_self = identity.generation;
                    self.effects.push_back(Effect::Event(Event::LocalRejoined {
                        identity,
                        previous_generation,
                    }));
                }
                OwnedNotification::Defunct => {
                    self.probe = None;
                    if self.local != LocalState::Left {
                        self.effects.push_back(Effect::Event(Event::LocalDefunct));
                    }
                }
                // Reflected by `sync_view`, which also sees what foca does not notify.
                OwnedNotification::MemberUp(_)
                | OwnedNotification::MemberDown(_)
                | OwnedNotification::Rename(_, _) => {}
            }
        }
        self.retune();
    }

    /// Recomputes suspicion and dissemination for the current cluster size.
    fn retune(&mut self) {
        let size = u32::try_from(self.live_count()).unwrap_or(u32::MAX).max(1);
        if size != self.configured_size {
            // Only probe timing and enabling periodic tasks are refused by foca, and
            // the profile keeps both fixed.
            if self
                .swim
                .set_config(self.detector.swim_config(size))
                .is_ok()
            {
                self.configured_size = size;
            }
        }
    }

    /// Brings the view (and its digest) in step with foca's state for every member
    /// the call may have changed, and emits events for the differences. foca raises
    /// no notification for suspicion, hence the comparison; only touched members are
    /// compared, so a message costs one scan of foca's member list, not a lookup per
    /// member.
    fn sync_view(&mut self, now: Duration) {
        let mut touched = std::mem::take(&mut self.touched);
        let left_items = {
            let mut gossip = self.gossip.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut gossip.touched)
        };
        touched.add_all(left_items);
        match touched {
            Touched::Nothing => {}
            Touched::Everything => {
                let members: Vec<foca::Member<NodeId>> =
                    self.swim.iter_membership_state().cloned().collect();
                // Hash sets here are only queried, never iterated: no order leaks out.
                let present: HashSet<&NodeName> = members.iter().map(|m| &m.id().name).collect();
                self.reconcile_all(&members, now);
                // Forgetting touches only the view and the digest (XOR), so the
                // order of this list does not matter.
                let gone: Vec<NodeName> = self
                    .view
                    .values()
                    .map(|e| &e.info.id.name)
                    .filter(|n| !present.contains(*n))
                    .cloned()
                    .collect();
                for name in gone {
                    self.forget(&name);
                }
            }
            Touched::Members(names, _) => {
                let mut members = Vec::with_capacity(names.len());
                let mut gone = Vec::new();
                for name in names {
                    // A scan of foca's member list (it has no lookup by address). A
                    // vendored foca with an address index made whole simulator runs
                    // only ~1.16x faster at 1 000 and 2 000 members, not worth a fork
                    // (docs/ARCHITECTURE.md, "Simulator performance").
                    let found = self
                        .swim
                        .iter_membership_state()
                        .find(|m| m.id().name.key() == name.key());
                    match found {
                        Some(m) if m.id().name == name => members.push(m.clone()),
                        _ => gone.push(name),
                    }
                }
                self.reconcile_all(&members, now);
                for name in gone {
                    self.forget(&name);
                }
            }
        }
    }

    fn reconcile_all(&mut self, members: &[foca::Member<NodeId>], now: Duration) {
        let left: Vec<bool> = {
            let mut gossip = self.gossip.lock().unwrap_or_else(PoisonError::into_inner);
            for m in members {
                if m.state() != foca::State::Suspect {
                    // The suspicion is over, one way or the other.
                    gossip.confirmations.remove(&m.id().name.key());
                    self.suspicions.clear(&m.id().name);
                }
            }
            members
                .iter()
                .map(|m| {
                    m.state() == foca::State::Down
                        && gossip.left.get(&m.id().name) == Some(&m.id().generation)
                })
                .collect()
        };
        for (member, left) in members.iter().zip(left) {
            self.reconcile(member, left, now);
        }
    }

    /// foca forgot a member (`remove_down_after`); so do we.
    fn forget(&mut self, name: &NodeName) {
        if self.view_entry(name).is_none() {
            return;
        }
        if let Some(entry) = self.view.remove(&name.key())
            && let Some(generation) = entry.in_digest
        {
            self.digest.toggle(name, generation);
        }
    }

    /// Updates one view entry from foca's record of the member.
    fn reconcile(&mut self, member: &foca::Member<NodeId>, left: bool, now: Duration) {
        let id = member.id();
        if id.name == self.identity().name {
            // An older generation of ourselves, which foca keeps as down.
            return;
        }
        let state = MemberState::from(member.state());
        let incarnation = member.incarnation();
        let effects = &mut self.effects;
        let mut emit = |event| effects.push_back(Effect::Event(event));
        let mut refuted = false;
        let entry = match self.view.entry(id.name.key()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                if state != MemberState::Down {
                    emit(Event::MemberJoined { member: id.clone() });
                    if state == MemberState::Suspect {
                        emit(Event::MemberSuspected {
                            member: id.clone(),
                            incarnation,
                        });
                    }
                }
                slot.insert(ViewEntry {
                    info: MemberInfo {
                        id: id.clone(),
                        state,
                        incarnation,
                        left,
                        is_local: false,
                        since: now,
                    },
                    in_digest: None,
                    notified_at: None,
                })
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                let entry = slot.into_mut();
                let info = &mut entry.info;
                if info.id != *id {
                    let previous_generation = info.id.generation;
                    info.id = id.clone();
                    info.left = left;
                    if state != MemberState::Down {
                        emit(Event::MemberRestarted {
                            member: id.clone(),
                            previous_generation,
                        });
                        if state == MemberState::Suspect {
                            emit(Event::MemberSuspected {
                                member: id.clone(),
                                incarnation,
                            });
                        }
                    }
                    info.state = state;
                    info.incarnation = incarnation;
                    info.since = now;
                } else {
                    if info.state != state || info.incarnation != incarnation {
                        match (info.state, state) {
                            (MemberState::Alive | MemberState::Suspect, MemberState::Down) => {
                                emit(if left {
                                    Event::MemberLeft { member: id.clone() }
                                } else {
                                    Event::MemberDown { member: id.clone() }
                                });
                            }
                            (MemberState::Down, MemberState::Alive | MemberState::Suspect) => {
                                emit(Event::MemberJoined { member: id.clone() });
                            }
                            (_, MemberState::Suspect) => emit(Event::MemberSuspected {
                                member: id.clone(),
                                incarnation,
                            }),
                            (MemberState::Suspect, MemberState::Alive) => {
                                refuted = true;
                                emit(Event::MemberRefuted {
                                    member: id.clone(),
                                    incarnation,
                                });
                            }
                            // A newer incarnation we never saw suspected, or a down
                            // member's bookkeeping: nothing a client needs to hear.
                            (MemberState::Alive, MemberState::Alive)
                            | (MemberState::Down, MemberState::Down) => {}
                        }
                        if info.state != state {
                            info.since = now;
                        }
                        info.state = state;
                        info.incarnation = incarnation;
                    }
                    if left && !info.left {
                        // The leave notice arrived after the down update.
                        info.left = true;
                        if info.state == MemberState::Down && info.since != now {
                            emit(Event::MemberLeft { member: id.clone() });
                        }
                    }
                }
                entry
            }
        };
        // Keep the digest in step with the view: live identities only.
        let live = (entry.info.state != MemberState::Down).then_some(entry.info.id.generation);
        if entry.in_digest != live {
            if let Some(old) = entry.in_digest {
                self.digest.toggle(&id.name, old);
            }
            if let Some(new) = live {
                self.digest.toggle(&id.name, new);
            }
            entry.in_digest = live;
        }
        if refuted {
            self.stats.false_alarms_refuted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Zone;

    fn id(name: &str, port: u16) -> NodeId {
        NodeId::new(
            NodeName::new(name).unwrap(),
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Zone::new("z1").unwrap(),
            1,
        )
    }

    #[test]
    fn left_notices_replace_older_generations_only() {
        let a = GossipKey::Left {
            name: NodeName::new("a").unwrap(),
            generation: 2,
        };
        let a_old = GossipKey::Left {
            name: NodeName::new("a").unwrap(),
            generation: 1,
        };
        let b = GossipKey::Left {
            name: NodeName::new("b").unwrap(),
            generation: 9,
        };
        assert!(a.invalidates(&a_old));
        assert!(!a_old.invalidates(&a));
        assert!(!b.invalidates(&a));
    }

    #[test]
    fn relay_spreads_a_left_notice_once() {
        let mut relay = GossipRelay {
            state: Arc::default(),
        };
        let item = postcard::to_allocvec(&GossipItem::Left {
            name: NodeName::new("a").unwrap(),
            generation: 3,
        })
        .unwrap();
        assert!(relay.receive_item(&item, None).unwrap().is_some());
        assert!(relay.receive_item(&item, None).unwrap().is_none());
        assert!(relay.receive_item(b"\xff\xff", None).is_err());
    }

    #[test]
    fn announcing_to_ourselves_is_refused() {
        let mut core = Core::new(id("a", 1), Profile::Lan, 1);
        assert!(matches!(
            core.announce(Duration::ZERO, id("a", 1)),
            Err(CommandError::AnnounceToSelf)
        ));
        assert!(core.poll_effect().is_none());
    }

    #[test]
    fn a_fresh_core_lists_only_itself() {
        let core = Core::new(id("a", 1), Profile::Lan, 1);
        let members: Vec<_> = core.members().collect();
        assert_eq!(members.len(), 1);
        assert!(members[0].is_local);
        assert_eq!(members[0].state, MemberState::Alive);
        assert_eq!(core.local_state(), LocalState::Joining);
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn one_suspicion_item_per_member_stays_queued_and_extra_confirmers_are_not_spread() {
        let name = |n: &str| NodeName::new(n).unwrap();
        let key = |member: &str, incarnation, by: &str| GossipKey::Suspected {
            member: name(member),
            generation: 1,
            incarnation,
            by: name(by),
        };
        // A newer accusation about the same member replaces the queued one, whoever made it...
        assert!(key("x", 2, "b").invalidates(&key("x", 2, "a")));
        assert!(key("x", 3, "a").invalidates(&key("x", 2, "a")));
        // ...but not one about a newer incarnation, nor one about another member.
        assert!(!key("x", 1, "b").invalidates(&key("x", 2, "a")));
        assert!(!key("y", 2, "b").invalidates(&key("x", 2, "a")));

        let mut relay = GossipRelay {
            state: Arc::default(),
        };
        let mut spread = 0;
        for i in 0..MAX_CONFIRMERS + 4 {
            let item = postcard::to_allocvec(&GossipItem::Suspected {
                member: name("x"),
                generation: 1,
                incarnation: 0,
                by: name(&format!("by{i}")),
            })
            .unwrap();
            if relay.receive_item(&item, None).unwrap().is_some() {
                spread += 1;
            }
        }
        assert_eq!(spread, MAX_CONFIRMERS);
        let state = relay.state.lock().unwrap();
        assert_eq!(
            state.confirmations[&name("x").key()].by.len(),
            MAX_CONFIRMERS
        );
    }
}
