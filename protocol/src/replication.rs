//! Snapshot replication, sans-IO: agents, owners and epochs, placement of copies,
//! acknowledgement, reads from any node, fencing, repair and the cluster-wide agent
//! catalog.
//!
//! The [`Replicator`] does no IO and reads no clock. The driver (the node's owner
//! task, or the simulator) feeds it membership changes, messages from peers, results
//! of disk operations and the time, and executes the [`ReplEffect`]s it returns:
//! sending a message (with an optional payload of snapshot bytes), writing or reading
//! a snapshot version on the local disk, reporting the end of a put or a get.
//!
//! Roles, per agent:
//! - the **owner** (one node, named in the agent's [`AgentRecord`], with an epoch)
//!   assigns seqs, keeps a local copy of every version it puts (counted as one of the
//!   k copies only if configured), sends each version to the holders and answers the
//!   put once the acknowledgement rule is met;
//! - **holders** store versions on disk, refuse versions of an epoch lower than one
//!   they have seen (fencing), answer heads and fetches;
//! - the **writer** of the record is the owner while it is live, else the best-scoring
//!   live holder; only the writer changes the holder set (repair), and it bumps the
//!   record's version when it does. Records spread by a push to every live member on
//!   each change and by periodic anti-entropy (digest, then full exchange).
//!
//! Everything iterates `BTreeMap`s, and the only randomness (the anti-entropy peer) is
//! the injected seeded RNG, so a simulator run is reproducible.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NodeName, Zone};
use crate::placement::{self, Candidate};

mod catalog;
mod inflight;
mod recovery;
pub use recovery::{
    AcceptorState, Ballot, ControlError, Decree, ElectionKind, NodeInfo, PaxosAnswer, ZoneCapacity,
};

/// The longest agent id.
pub const MAX_AGENT_ID_LEN: usize = 128;
/// The largest agent metadata (JSON text).
pub const MAX_META_LEN: usize = 4096;
/// Records per catalog message: a full record is at most about 4.6 KiB (metadata
/// included), so 12 fit the 64 KiB stream frame with room to spare.
const RECORDS_PER_MESSAGE: usize = 12;
/// A newcomer's welcome (our catalog digest and node information) waits a random
/// delay of up to this much per live member, capped at [`WELCOME_SPREAD_MAX`]. A node
/// that joins learns every member at once, and every member learns it at once: sent
/// at once, the welcomes cost the newcomer a QUIC handshake with every member within
/// a few hundred milliseconds (at 50 members its own probes' acks were late enough to
/// have it suspected; docs/BENCHMARKS.md, "False positives during a join"). Spread, a
/// join costs each node about 50 handshakes per second whatever the cluster's size.
const WELCOME_SPREAD_PER_MEMBER: Duration = Duration::from_millis(20);
const WELCOME_SPREAD_MAX: Duration = Duration::from_secs(2);

/// An agent's id: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not `.` or `..`
/// (it names a directory on every holder's disk).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentIdError {
    #[error("agent id is empty")]
    Empty,
    #[error("agent id is {len} characters long; the limit is {MAX_AGENT_ID_LEN}")]
    TooLong { len: usize },
    #[error("agent id {id:?} contains {ch:?}; use only letters, digits, '.', '_' and '-'")]
    BadChar { id: String, ch: char },
    #[error("agent id may not be '.' or '..'")]
    Dots,
}

impl AgentId {
    pub fn new(id: &str) -> Result<Self, AgentIdError> {
        if id.is_empty() {
            return Err(AgentIdError::Empty);
        }
        if id.len() > MAX_AGENT_ID_LEN {
            return Err(AgentIdError::TooLong { len: id.len() });
        }
        if let Some(ch) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(AgentIdError::BadChar {
                id: id.chars().take(MAX_AGENT_ID_LEN).collect(),
                ch,
            });
        }
        if id == "." || id == ".." {
            return Err(AgentIdError::Dots);
        }
        Ok(Self(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl Serialize for AgentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <&str>::deserialize(d)?;
        AgentId::new(s).map_err(serde::de::Error::custom)
    }
}

/// When a put counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// The owner's local copy is on disk.
    Local,
    /// A majority of the copies is on disk (and the owner's local copy).
    Quorum,
    /// Every placed copy is on disk (and the owner's local copy).
    All,
}

impl AckMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Local => "local",
            AckMode::Quorum => "quorum",
            AckMode::All => "all",
        }
    }
}

impl std::str::FromStr for AckMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(AckMode::Local),
            "quorum" => Ok(AckMode::Quorum),
            "all" => Ok(AckMode::All),
            other => Err(format!(
                "unknown ack mode {other:?}; use local, quorum or all"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Copies per agent (k).
    pub copies: usize,
    /// Versions each holder keeps per agent (N).
    pub keep: usize,
    /// Acknowledgement when a put does not name one.
    pub ack: AckMode,
    /// Whether the owner's own disk counts as one of the k copies.
    pub owner_counts_as_copy: bool,
    /// A put not acknowledged by then fails.
    pub put_timeout: Duration,
    /// A get not answered by then fails.
    pub get_timeout: Duration,
    /// Repair copies at most this many bytes per second (token bucket, one second of
    /// burst).
    pub repair_bytes_per_sec: u64,
    /// Repair transfers in flight at once.
    pub repair_parallel: usize,
    /// How often the writer re-checks its agents' holders (also right after every
    /// membership change).
    pub repair_interval: Duration,
    /// How often a node compares its catalog with one random member.
    pub anti_entropy_interval: Duration,
    /// Reads of the local disk for other nodes in flight at once; more are answered
    /// "busy" so a burst of remote reads cannot fill memory.
    pub max_serving: usize,
    /// How long a holder's grant to an owner lasts: the owner stops its agents when it
    /// has no grants from enough holders (2 of 3, 1 of 2) for three quarters of this, and no
    /// holder elects a new owner while its grant runs. Keep it below the failure
    /// detection time, or recovery waits for it.
    pub lease: Duration,
    /// Holders further down an agent's ranking wait this much longer per rank before
    /// proposing themselves as its recovery coordinator.
    pub election_backoff: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            copies: 3,
            keep: 5,
            ack: AckMode::Quorum,
            owner_counts_as_copy: false,
            put_timeout: Duration::from_secs(5),
            get_timeout: Duration::from_secs(5),
            repair_bytes_per_sec: 64 * 1024 * 1024,
            repair_parallel: 4,
            repair_interval: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(5),
            max_serving: 16,
            lease: Duration::from_millis(1000),
            election_backoff: Duration::from_millis(150),
        }
    }
}

/// One version of an agent's snapshot, without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapMeta {
    pub epoch: u64,
    pub seq: u64,
    pub len: u64,
    /// xxh3-64 of the bytes.
    pub checksum: u64,
}

/// How long a single transfer of `len` bytes may take before it counts as lost: one
/// second plus one per MiB (a link slower than 1 MiB/s is not one to replicate over).
fn transfer_time(len: u64) -> Duration {
    Duration::from_secs(1 + len / (1024 * 1024))
}

/// The checksum every snapshot carries.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A copy holder as the catalog names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    pub name: NodeName,
    pub zone: Zone,
}

/// A placed candidate becomes a holder.
impl From<Candidate> for Holder {
    fn from(c: Candidate) -> Self {
        Holder {
            name: c.name,
            zone: c.zone,
        }
    }
}

/// What the cluster knows about one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent: AgentId,
    pub owner: NodeName,
    pub owner_zone: Zone,
    /// Raised by one on every change of owner; holders refuse lower epochs.
    pub epoch: u64,
    /// The highest seq the sender of this record knows to be acknowledged.
    pub seq: u64,
    /// The nodes holding copies (the owner's local copy not included).
    pub holders: Vec<Holder>,
    /// Raised by the record's writer on every change within an epoch.
    pub version: u64,
    /// Agent metadata (JSON text) given at registration.
    pub meta: String,
    /// Higher priorities are adopted first when standby capacity is short.
    #[serde(default)]
    pub priority: i32,
    /// Isolated by an operator: not heartbeated, restarted or adopted until recovered.
    #[serde(default)]
    pub isolated: bool,
}

impl AgentRecord {
    /// Whether `self` replaces `other` (same agent). Equal (epoch, version) with
    /// different content happens when two writers raced (views differ for a moment);
    /// the content order breaks the tie the same way on every node.
    fn supersedes(&self, other: &AgentRecord) -> bool {
        (self.epoch, self.version)
            .cmp(&(other.epoch, other.version))
            .then_with(|| self.holders.cmp(&other.holders))
            .then_with(|| self.owner.cmp(&other.owner))
            .is_gt()
    }

    pub fn is_holder(&self, name: &NodeName) -> bool {
        self.holders.iter().any(|h| &h.name == name)
    }

    /// Folded into the catalog digest: everything but `seq`, which changes on every
    /// put and is learnt from holders when it matters (reads ask them).
    fn digest_into(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        h.update(self.agent.as_str().as_bytes());
        h.update(&self.owner.key().to_le_bytes());
        h.update(&self.epoch.to_le_bytes());
        h.update(&self.version.to_le_bytes());
        for holder in &self.holders {
            h.update(&holder.name.key().to_le_bytes());
        }
        h.update(&self.priority.to_le_bytes());
        h.update(&[u8::from(self.isolated)]);
    }
}

/// How a holder answered a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOutcome {
    Stored,
    /// The holder has seen `epoch` (owned by `owner`, if it knows) for this agent.
    Fenced {
        epoch: u64,
        owner: Option<NodeName>,
    },
    Failed {
        reason: String,
    },
}

/// How a holder answered a fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchOutcome {
    /// The payload follows.
    Found(SnapMeta),
    Missing,
    Busy,
    Failed {
        reason: String,
    },
}

/// Replication messages between nodes. `Store` and `FetchReply(Found)` carry the
/// snapshot bytes as a payload after the message (see [`ReplMsg::payload_len`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplMsg {
    Store {
        op: u64,
        record: AgentRecord,
        snap: SnapMeta,
    },
    Stored {
        op: u64,
        agent: AgentId,
        snap: SnapMeta,
        outcome: StoreOutcome,
    },
    /// "Which version of `agent` do you hold (the latest, or `seq`)?"
    Head {
        op: u64,
        agent: AgentId,
        seq: Option<u64>,
    },
    HeadReply {
        op: u64,
        found: Option<SnapMeta>,
        /// The highest epoch the holder has seen for the agent.
        epoch_seen: u64,
    },
    Fetch {
        op: u64,
        agent: AgentId,
        seq: u64,
    },
    FetchReply {
        op: u64,
        agent: AgentId,
        outcome: FetchOutcome,
    },
    /// Catalog records; `answer` asks the receiver to send back its own when its
    /// catalog still differs after merging.
    Records {
        records: Vec<AgentRecord>,
        answer: bool,
    },
    CatalogDigest {
        digest: u64,
    },
    /// Paxos phase 1 of the election of `agent`'s owner for `epoch`.
    Prepare {
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        kind: ElectionKind,
    },
    Promise {
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        answer: PaxosAnswer,
    },
    /// Paxos phase 2.
    Accept {
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        kind: ElectionKind,
        decree: Decree,
    },
    Accepted {
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        answer: PaxosAnswer,
    },
    /// The coordinator asks the decree's target to own `agent` from `epoch` on;
    /// `record` is the record being replaced.
    Adopt {
        agent: AgentId,
        epoch: u64,
        decree: Box<Decree>,
        record: Box<AgentRecord>,
    },
    Adopted {
        agent: AgentId,
        epoch: u64,
        owned: bool,
    },
    /// An owner renews its lease on these agents (at these epochs) with a holder.
    LeaseRenew {
        round: u64,
        agents: Vec<(AgentId, u64)>,
    },
    /// `refused`: agents the holder knows at a later epoch (with that epoch).
    LeaseReply {
        round: u64,
        granted: Vec<AgentId>,
        refused: Vec<(AgentId, u64)>,
    },
    NodeInfo {
        info: NodeInfo,
    },
    /// Forwarded to the owner: isolate or recover the agent.
    SetIsolated {
        agent: AgentId,
        isolated: bool,
    },
}

impl ReplMsg {
    /// Bytes of snapshot that follow this message on the wire.
    pub fn payload_len(&self) -> u64 {
        match self {
            ReplMsg::Store { snap, .. } => snap.len,
            ReplMsg::FetchReply {
                outcome: FetchOutcome::Found(snap),
                ..
            } => snap.len,
            _ => 0,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ReplMsg::Store { .. } => "store",
            ReplMsg::Stored { .. } => "stored",
            ReplMsg::Head { .. } => "head",
            ReplMsg::HeadReply { .. } => "head_reply",
            ReplMsg::Fetch { .. } => "fetch",
            ReplMsg::FetchReply { .. } => "fetch_reply",
            ReplMsg::Records { .. } => "records",
            ReplMsg::CatalogDigest { .. } => "catalog_digest",
            ReplMsg::Prepare { .. } => "prepare",
            ReplMsg::Promise { .. } => "promise",
            ReplMsg::Accept { .. } => "accept",
            ReplMsg::Accepted { .. } => "accepted",
            ReplMsg::Adopt { .. } => "adopt",
            ReplMsg::Adopted { .. } => "adopted",
            ReplMsg::LeaseRenew { .. } => "lease_renew",
            ReplMsg::LeaseReply { .. } => "lease_reply",
            ReplMsg::NodeInfo { .. } => "node_info",
            ReplMsg::SetIsolated { .. } => "set_isolated",
        }
    }
}

/// Why a disk read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The bytes on disk do not match their checksum (or the file is damaged); the
    /// driver has moved the file aside.
    Corrupt(String),
    Missing,
    Io(String),
}

/// The answer to a successful put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub agent: AgentId,
    pub epoch: u64,
    pub seq: u64,
    /// Copies on disk when the put was answered (the owner first if it counts).
    pub stored_on: Vec<Holder>,
    /// Holders still writing when the put was answered.
    pub pending: Vec<Holder>,
    pub degraded: Option<Degraded>,
}

/// Why an agent has fewer copies or zones than configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    pub copies: usize,
    pub zones: usize,
    pub wanted: usize,
}

impl fmt::Display for Degraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} copies in {} zones",
            self.copies, self.wanted, self.zones
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    #[error(
        "agent {agent} is not registered with any node; register it first (PUT /v1/agents/{agent})"
    )]
    UnknownAgent { agent: AgentId },
    #[error(
        "agent {agent} is owned by {owner} at epoch {epoch}, not by this node; register it here to take it over, or put to its owner"
    )]
    NotOwner {
        agent: AgentId,
        owner: NodeName,
        epoch: u64,
    },
    #[error(
        "put of agent {agent} refused: a holder has seen epoch {seen} (owner {owner}), higher than this node's epoch {ours}; this node no longer owns the agent"
    )]
    Fenced {
        agent: AgentId,
        ours: u64,
        seen: u64,
        owner: String,
    },
    #[error(
        "put of agent {agent} seq {seq} not acknowledged in time: {ack} needs {needed} copies, {stored} stored ({stored_on}); failures: {failures}"
    )]
    NotAcknowledged {
        agent: AgentId,
        seq: u64,
        ack: &'static str,
        needed: usize,
        stored: usize,
        stored_on: String,
        failures: String,
    },
    #[error(
        "agent {agent} was owned by this node before it restarted and is being reclaimed (its holders are asked for the latest seq a few seconds after the node joins); retry shortly, or register it again (PUT /v1/agents/{agent})"
    )]
    RegisterAgain { agent: AgentId },
    #[error("the local copy of agent {agent} seq {seq} could not be written: {reason}")]
    LocalWrite {
        agent: AgentId,
        seq: u64,
        reason: String,
    },
    #[error(
        "agent {agent} is fenced on this node: it lost the lease of the agent's holders (cut off from them, or handing the agent to another host); the agent must stop here"
    )]
    LeaseLost { agent: AgentId },
    #[error(
        "agent {agent} is isolated by an operator; recover it first (POST /v1/agents/{agent}/recover)"
    )]
    Isolated { agent: AgentId },
}

impl PutError {
    /// A short stable label, for metrics and the API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            PutError::UnknownAgent { .. } => "unknown_agent",
            PutError::NotOwner { .. } => "not_owner",
            PutError::RegisterAgain { .. } => "register_again",
            PutError::Fenced { .. } => "stale_epoch",
            PutError::NotAcknowledged { .. } => "not_acknowledged",
            PutError::LocalWrite { .. } => "local_write_failed",
            PutError::LeaseLost { .. } => "agent_fenced",
            PutError::Isolated { .. } => "agent_isolated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    #[error("agent {agent} is not known to this node")]
    UnknownAgent { agent: AgentId },
    #[error("agent {agent} has no version {what} on any reachable copy (asked {asked})")]
    NotFound {
        agent: AgentId,
        what: String,
        asked: String,
    },
    #[error(
        "agent {agent}: no reachable copy answered in time (holders {holders}); failures: {failures}"
    )]
    Unavailable {
        agent: AgentId,
        holders: String,
        failures: String,
    },
}

impl GetError {
    pub fn code(&self) -> &'static str {
        match self {
            GetError::UnknownAgent { .. } => "unknown_agent",
            GetError::NotFound { .. } => "not_found",
            GetError::Unavailable { .. } => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("agent metadata is {len} bytes; the limit is {MAX_META_LEN}")]
    MetaTooLarge { len: usize },
}

/// A change the replicator reports (to the event log and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplEvent {
    /// This node now owns the agent.
    AgentOwned { agent: AgentId, epoch: u64 },
    /// Another node took the agent over; this node no longer owns it.
    AgentLost {
        agent: AgentId,
        /// The new owner, when known (a holder's refusal may not name it).
        owner: Option<NodeName>,
        epoch: u64,
    },
    /// The agent has fewer copies or zones than configured.
    AgentDegraded { agent: AgentId, degraded: Degraded },
    /// The agent has all its copies in the best zone spread again.
    AgentRestored { agent: AgentId, copies: usize },
    /// A version on the local disk failed its checksum; it is not served and is being
    /// fetched again from another copy.
    SnapshotCorrupt {
        agent: AgentId,
        seq: u64,
        reason: String,
    },
    /// A corrupt or missing local version was fetched again from `from`.
    SnapshotHealed {
        agent: AgentId,
        seq: u64,
        from: NodeName,
    },
    /// Repair copied versions to new holders and published the new holder set.
    RepairDone {
        agent: AgentId,
        added: Vec<NodeName>,
        removed: Vec<NodeName>,
        bytes: u64,
    },
    /// This node proposes a new owner for the agent (first round only).
    ElectionStarted {
        agent: AgentId,
        epoch: u64,
        kind: ElectionKind,
        /// The owner being replaced (down, for a recovery).
        previous: NodeName,
    },
    /// This node's decree was chosen: it coordinates the adoption by `target`.
    CoordinatorElected {
        agent: AgentId,
        epoch: u64,
        target: NodeName,
        /// The owner being replaced.
        previous: NodeName,
        /// Since this node started the election.
        elapsed: Duration,
    },
    /// This node adopted the agent: it owns it at `epoch`, restoring `seq`.
    AgentAdopted {
        agent: AgentId,
        epoch: u64,
        seq: u64,
        previous: NodeName,
        coordinator: NodeName,
    },
    /// No live, non-isolated host has room for the agent; retried until one has.
    AgentPending {
        agent: AgentId,
        epoch: u64,
        /// The owner being replaced.
        previous: NodeName,
        reason: String,
    },
    /// This node lost the lease of the agent's holders: the agent must
    /// stop here (another host may adopt it).
    AgentFenced { agent: AgentId, epoch: u64 },
    /// The holders grant the lease again and nobody took the agent: it may run again.
    AgentUnfenced { agent: AgentId, epoch: u64 },
    /// The agent was isolated (or recovered, `isolated` false).
    AgentIsolation { agent: AgentId, isolated: bool },
}

impl ReplEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            ReplEvent::AgentOwned { .. } => "agent_owned",
            ReplEvent::AgentLost { .. } => "agent_lost",
            ReplEvent::AgentDegraded { .. } => "agent_degraded",
            ReplEvent::AgentRestored { .. } => "agent_restored",
            ReplEvent::SnapshotCorrupt { .. } => "snapshot_corrupt",
            ReplEvent::SnapshotHealed { .. } => "snapshot_healed",
            ReplEvent::RepairDone { .. } => "repair_done",
            ReplEvent::ElectionStarted { .. } => "election_started",
            ReplEvent::CoordinatorElected { .. } => "coordinator_elected",
            ReplEvent::AgentAdopted { .. } => "agent_adopted",
            ReplEvent::AgentPending { .. } => "agent_pending",
            ReplEvent::AgentFenced { .. } => "agent_fenced",
            ReplEvent::AgentUnfenced { .. } => "agent_unfenced",
            ReplEvent::AgentIsolation { isolated: true, .. } => "agent_isolated",
            ReplEvent::AgentIsolation {
                isolated: false, ..
            } => "agent_recovered",
        }
    }

    pub fn agent(&self) -> &AgentId {
        match self {
            ReplEvent::AgentOwned { agent, .. }
            | ReplEvent::AgentLost { agent, .. }
            | ReplEvent::AgentDegraded { agent, .. }
            | ReplEvent::AgentRestored { agent, .. }
            | ReplEvent::SnapshotCorrupt { agent, .. }
            | ReplEvent::SnapshotHealed { agent, .. }
            | ReplEvent::RepairDone { agent, .. }
            | ReplEvent::ElectionStarted { agent, .. }
            | ReplEvent::CoordinatorElected { agent, .. }
            | ReplEvent::AgentAdopted { agent, .. }
            | ReplEvent::AgentPending { agent, .. }
            | ReplEvent::AgentFenced { agent, .. }
            | ReplEvent::AgentUnfenced { agent, .. }
            | ReplEvent::AgentIsolation { agent, .. } => agent,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplEffect {
    /// Deliver `msg` to `to`, followed by `payload` (exactly `msg.payload_len()` bytes).
    /// Best effort: a message that cannot be delivered is dropped; the sender times out.
    Send {
        to: NodeId,
        msg: ReplMsg,
        payload: Option<Bytes>,
    },
    /// Write one version durably, then call [`Replicator::on_persisted`] with `op`.
    Persist {
        op: u64,
        agent: AgentId,
        snap: SnapMeta,
        body: Bytes,
    },
    /// Read one version (verifying its checksum), then call [`Replicator::on_loaded`].
    Load {
        op: u64,
        agent: AgentId,
        seq: u64,
    },
    /// Write the record next to the agent's versions (so a restart knows it), best
    /// effort.
    PersistRecord {
        record: AgentRecord,
    },
    /// This node no longer holds or owns the agent: remove its versions and record.
    DropAgent {
        agent: AgentId,
    },
    /// The agent is owned here from now on (takeovers answer once the holders told
    /// their latest seq and epoch, or did not answer in time).
    RegisterDone {
        reg: u64,
        record: AgentRecord,
    },
    /// A takeover registration could not be carried out.
    RegisterFailed {
        reg: u64,
        reason: String,
    },
    /// Write an acceptor's election state durably, then call
    /// [`Replicator::on_persisted`] with `op` (its answer goes out only then).
    PersistAcceptor {
        op: u64,
        agent: AgentId,
        state: AcceptorState,
    },
    PutDone {
        put: u64,
        result: Result<PutOutcome, PutError>,
    },
    GetDone {
        get: u64,
        result: Result<(SnapMeta, Bytes), GetError>,
    },
    Event(ReplEvent),
}

/// A version the local disk holds, as reported at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    pub agent: AgentId,
    pub snap: SnapMeta,
}

/// One agent as `GET /v1/agents` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    pub record: AgentRecord,
    pub local_owner: bool,
    /// Versions on this node's disk (seqs, oldest first).
    pub local_versions: Vec<u64>,
    pub degraded: Option<Degraded>,
}

#[derive(Debug, Default)]
struct LocalAgent {
    /// The highest epoch any version or store of this agent carried here.
    max_epoch: u64,
    versions: BTreeMap<u64, SnapMeta>,
}

#[derive(Debug)]
struct Owned {
    next_seq: u64,
    /// Holders that did not acknowledge the latest put; repair brings them up to date.
    behind: BTreeSet<NodeName>,
}

#[derive(Debug)]
struct PendingRegister {
    agent: AgentId,
    meta: String,
    priority: Option<i32>,
    waiting: BTreeSet<NodeName>,
    epoch_seen: u64,
    seq_seen: u64,
    reclaim: bool,
}

#[derive(Debug)]
struct PendingPut {
    agent: AgentId,
    snap: SnapMeta,
    ack: AckMode,
    need: usize,
    local_counts: bool,
    local_done: bool,
    targets: Vec<Holder>,
    acked: Vec<Holder>,
    failures: BTreeMap<NodeName, String>,
    deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Local,
    Remote(NodeName),
}

#[derive(Debug)]
struct PendingGet {
    agent: AgentId,
    seq: Option<u64>,
    waiting: BTreeSet<NodeName>,
    candidates: Vec<(SnapMeta, Source)>,
    fetching: bool,
    asked: Vec<String>,
    failures: Vec<String>,
    deadline: Duration,
}

/// What a local disk operation was for.
#[derive(Debug)]
enum DiskOp {
    PutLocal {
        put: u64,
    },
    ReplicaStore {
        from: NodeName,
        op: u64,
        agent: AgentId,
        snap: SnapMeta,
    },
    Heal {
        agent: AgentId,
        snap: SnapMeta,
        from: NodeName,
    },
    ServeFetch {
        to: NodeName,
        op: u64,
        agent: AgentId,
        seq: u64,
    },
    GetLocal {
        get: u64,
        agent: AgentId,
        seq: u64,
    },
    RepairLoad {
        agent: AgentId,
        to: Holder,
        seq: u64,
    },
    Acceptor {
        to: NodeName,
        reply: Box<ReplMsg>,
    },
}

/// What a message sent to a peer expects back.
#[derive(Debug)]
enum Request {
    RegisterHead { reg: u64 },
    WriterHead { agent: AgentId },
    PutStore { put: u64 },
    Head { get: u64 },
    GetFetch { get: u64 },
    Heal { agent: AgentId, seq: u64 },
    RepairStore { agent: AgentId },
}

#[derive(Debug)]
struct InFlight {
    request: Request,
    to: NodeName,
    deadline: Duration,
}

#[derive(Debug)]
struct RepairJob {
    /// The record's epoch when the job started: a job outlived by a change of owner
    /// publishes nothing.
    epoch: u64,
    target: Vec<Holder>,
    /// (holder, seq) still to copy, next first.
    todo: VecDeque<(Holder, u64)>,
    /// The newest seq the job copies to each holder: when it is done, only those
    /// holders are no longer behind, and only if no newer put missed them meanwhile.
    newest_copied: BTreeMap<NodeName, u64>,
    in_flight: usize,
    bytes: u64,
    failed: bool,
}

/// One writer sync (see [`Replicator::sync_writer`]): the holders' answers are kept
/// until all are in, because a holder is behind when any other holder has a newer
/// version, not only when this node has: a new owner usually hears its holders'
/// answers before its heal has fetched the newest version from one of them.
#[derive(Debug, Default)]
struct WriterRound {
    /// Each answering holder's latest (epoch, seq); None: it has no version.
    heads: BTreeMap<NodeName, Option<(u64, u64)>>,
    /// Holders asked that have neither answered nor failed.
    waiting: BTreeSet<NodeName>,
}

/// The snapshot replication state machine of one node.
pub struct Replicator {
    me: NodeId,
    config: ReplicationConfig,
    live: BTreeMap<NodeName, NodeId>,
    records: catalog::Catalog,
    owned: BTreeMap<AgentId, Owned>,
    local: BTreeMap<AgentId, LocalAgent>,
    registers: BTreeMap<u64, PendingRegister>,
    puts: BTreeMap<u64, PendingPut>,
    gets: BTreeMap<u64, PendingGet>,
    disk_ops: BTreeMap<u64, DiskOp>,
    requests: inflight::Requests,
    repairs: BTreeMap<AgentId, RepairJob>,
    repair_in_flight: usize,
    /// Repair byte budget (may go negative: one transfer larger than the burst runs,
    /// and the next waits until the debt is paid).
    repair_tokens: i64,
    tokens_at: Duration,
    degraded: BTreeMap<AgentId, Degraded>,
    /// Agents this node owned until a holder refused its epoch: (epoch seen, owner).
    superseded: BTreeMap<AgentId, (u64, Option<NodeName>)>,
    healing: BTreeSet<(AgentId, u64)>,
    /// Sources a heal of (agent, seq) already failed from (missing or corrupt there
    /// too): the next attempt asks another copy.
    heal_tried: BTreeMap<(AgentId, u64), BTreeSet<NodeName>>,
    /// Records whose publication waits for the end of a repair.
    deferred_publish: BTreeSet<AgentId>,
    /// Repair waits until then after this node (re)gains live members, so that a node
    /// back from a restart or a partition learns the current records first instead of
    /// re-placing copies from its stale view (and making holders drop them).
    settled_at: Option<Duration>,
    /// Agents this node writes whose holders it has asked, since the last membership
    /// change, for their latest version: a holder may have one this node missed (the
    /// writer is not the owner), or lack the latest (it dropped or never got it, e.g.
    /// on the other side of a partition). Kept as the live holders' identities: a
    /// holder back under a new generation (a restart) may have lost versions since it
    /// answered, and is asked again.
    writer_synced: BTreeMap<AgentId, Vec<NodeId>>,
    /// Holders found without the writer's latest version; repair sends it.
    stale_holders: BTreeMap<AgentId, BTreeSet<NodeName>>,
    /// The writer syncs under way: what each holder answered so far, and who has not.
    writer_rounds: BTreeMap<AgentId, WriterRound>,
    serving: usize,
    next_op: u64,
    next_repair_scan: Duration,
    next_anti_entropy: Duration,
    /// Newcomers still to be sent our digest and information, by when (see
    /// [`WELCOME_SPREAD_PER_MEMBER`]).
    welcomes: BTreeSet<(Duration, NodeName)>,
    effects: VecDeque<ReplEffect>,
    rng: ChaCha8Rng,
    recovery: recovery::Recovery,
}

impl Replicator {
    pub fn new(me: NodeId, config: ReplicationConfig, rng_seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
        let first_exchange = Duration::from_millis(rng.random_range(0..1000));
        Self {
            me,
            repair_tokens: i64::try_from(config.repair_bytes_per_sec).unwrap_or(i64::MAX),
            config,
            live: BTreeMap::new(),
            records: catalog::Catalog::default(),
            owned: BTreeMap::new(),
            local: BTreeMap::new(),
            registers: BTreeMap::new(),
            puts: BTreeMap::new(),
            gets: BTreeMap::new(),
            disk_ops: BTreeMap::new(),
            requests: inflight::Requests::default(),
            repairs: BTreeMap::new(),
            repair_in_flight: 0,
            tokens_at: Duration::ZERO,
            degraded: BTreeMap::new(),
            superseded: BTreeMap::new(),
            healing: BTreeSet::new(),
            heal_tried: BTreeMap::new(),
            deferred_publish: BTreeSet::new(),
            settled_at: None,
            writer_synced: BTreeMap::new(),
            stale_holders: BTreeMap::new(),
            writer_rounds: BTreeMap::new(),
            serving: 0,
            next_op: 1,
            next_repair_scan: Duration::ZERO,
            next_anti_entropy: first_exchange,
            welcomes: BTreeSet::new(),
            effects: VecDeque::new(),
            rng,
            recovery: recovery::Recovery::default(),
        }
    }

    pub fn config(&self) -> &ReplicationConfig {
        &self.config
    }

    pub fn identity(&self) -> &NodeId {
        &self.me
    }

    /// The node restarted as a new generation (same name, same disk).
    pub fn set_identity(&mut self, me: NodeId) {
        self.me = me;
    }

    fn op(&mut self) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    /// What the local disk held at start, and the records stored next to it.
    pub fn load(&mut self, versions: Vec<StoredVersion>, records: Vec<AgentRecord>) {
        for v in versions {
            let local = self.local.entry(v.agent).or_default();
            local.max_epoch = local.max_epoch.max(v.snap.epoch);
            local.versions.insert(v.snap.seq, v.snap);
        }
        for r in records {
            // Not `merge_record`: at start nothing is published or rewritten.
            match self.records.get(&r.agent) {
                Some(ours) if !r.supersedes(ours) => {}
                _ => {
                    self.records.insert(r.agent.clone(), r);
                }
            }
        }
        let keep = self.config.keep;
        for local in self.local.values_mut() {
            while local.versions.len() > keep {
                local.versions.pop_first();
            }
        }
        // Agents this node owned before the restart are not owned again until they
        // register again: a put may have reached holders but not this disk before the
        // crash, and only the registration's round of heads learns its seq (reusing
        // it would give two snapshots one version).
    }

    /// The newest seq of `agent` on this node's disk, 0 without one.
    fn latest_local_seq(&self, agent: &AgentId) -> u64 {
        self.local
            .get(agent)
            .and_then(|l| l.versions.last_key_value().map(|(s, _)| *s))
            .unwrap_or(0)
    }

    fn own(&mut self, agent: &AgentId) {
        let record_seq = self.records.get(agent).map_or(0, |r| r.seq);
        let local_seq = self.latest_local_seq(agent);
        self.owned.insert(
            agent.clone(),
            Owned {
                next_seq: record_seq.max(local_seq) + 1,
                behind: BTreeSet::new(),
            },
        );
    }

    /// Starts owning `agent` now (lease clock included).
    fn own_at(&mut self, now: Duration, agent: &AgentId) {
        self.own(agent);
        self.lease_start(now, agent);
    }

    // ---- membership -------------------------------------------------------------

    /// A member is alive (joined, refuted, or restarted as `id`).
    pub fn member_up(&mut self, now: Duration, id: NodeId) {
        if id.name == self.me.name {
            return;
        }
        if self.live.is_empty() {
            self.settled_at = Some(now + self.config.anti_entropy_interval);
        }
        let previous = self.live.insert(id.name.clone(), id.clone());
        if previous.as_ref() != Some(&id) {
            // New, or back under a new generation (a restart): repair looks at once,
            // and the writers of the agents it holds ask it again what it holds.
            self.next_repair_scan = self.next_repair_scan.min(now);
        }
        if previous.is_none() {
            // A newcomer learns the catalog soon instead of at the next round.
            let spread = WELCOME_SPREAD_PER_MEMBER
                .saturating_mul(u32::try_from(self.live.len()).unwrap_or(u32::MAX))
                .min(WELCOME_SPREAD_MAX);
            let delay = Duration::from_nanos(
                self.rng
                    .random_range(0..=u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX)),
            );
            self.welcomes.insert((now + delay, id.name));
        }
    }

    /// Sends the welcomes due by `now` to the newcomers still live.
    fn send_welcomes(&mut self, now: Duration) {
        while let Some((due, _)) = self.welcomes.first() {
            if *due > now {
                break;
            }
            let Some((_, name)) = self.welcomes.pop_first() else {
                break;
            };
            if let Some(id) = self.live.get(&name).cloned() {
                let digest = self.records.digest();
                self.send(&id, ReplMsg::CatalogDigest { digest }, None);
                self.info_to(&id);
            }
        }
    }

    /// A member was declared down or left.
    pub fn member_down(&mut self, now: Duration, name: &NodeName) {
        if self.live.remove(name).is_none() {
            return;
        }
        self.recovery.infos.remove(name);
        // Orphaned agents are looked at now, not at the next scan.
        self.recovery.next_scan = self.recovery.next_scan.min(now);
        if self.live.is_empty() {
            self.settled_at = None;
        }
        self.next_repair_scan = self.next_repair_scan.min(now);
        // Requests to it will not be answered: fail them now instead of at the timeout.
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| &r.to == name)
            .map(|(op, _)| *op)
            .collect();
        for op in gone {
            if let Some(r) = self.requests.remove(&op) {
                self.request_failed(now, r, "declared down".into());
            }
        }
    }

    pub fn live_members(&self) -> impl Iterator<Item = &NodeId> {
        self.live.values()
    }

    // ---- registration and puts --------------------------------------------------

    /// Registers `agent` with this node, which becomes (or stays) its owner; the
    /// answer comes as [`ReplEffect::RegisterDone`] with the returned id.
    ///
    /// Taking over an agent raises its epoch, which fences the old owner. Before it
    /// answers, a takeover asks the agent's holders (every live member, for an agent
    /// this node has never heard of) for their latest version and the highest epoch
    /// they have seen, so the new epoch is above every earlier one and seqs go on from
    /// the latest stored: seqs of one agent only ever grow, across owners too.
    pub fn register(
        &mut self,
        now: Duration,
        agent: AgentId,
        meta: String,
        priority: Option<i32>,
    ) -> Result<u64, RegisterError> {
        if meta.len() > MAX_META_LEN {
            return Err(RegisterError::MetaTooLarge { len: meta.len() });
        }
        if let Some(r) = self.records.get(&agent).cloned()
            && r.owner != self.me.name
        {
            // Taking over from another owner is an election among the holders, like a
            // recovery, so that it cannot race one into two owners of one epoch.
            let reg = self.op();
            if self.takeover(now, reg, r, meta.clone(), priority) {
                return Ok(reg);
            }
        }
        Ok(self.start_register(now, agent, meta, priority, false))
    }

    /// A registration, or (`reclaim`) the return of an agent this node owned before
    /// it restarted: same round of heads, but the epoch stays unless another node
    /// took the agent over meanwhile, in which case this node lets it go.
    fn start_register(
        &mut self,
        now: Duration,
        agent: AgentId,
        meta: String,
        priority: Option<i32>,
        reclaim: bool,
    ) -> u64 {
        let reg = self.op();
        let record = self.records.get(&agent);
        let sources: Vec<NodeId> = match record {
            Some(r) if r.owner == self.me.name && self.owned.contains_key(&agent) => Vec::new(),
            Some(r) => r
                .holders
                .iter()
                .map(|h| &h.name)
                .chain(std::iter::once(&r.owner))
                .filter_map(|n| self.live.get(n))
                .cloned()
                .collect(),
            None => self.live.values().cloned().collect(),
        };
        let mut waiting = BTreeSet::new();
        for to in sources {
            if !waiting.insert(to.name.clone()) {
                continue;
            }
            let op = self.op();
            self.requests.insert(
                op,
                InFlight {
                    request: Request::RegisterHead { reg },
                    to: to.name.clone(),
                    deadline: now + self.config.get_timeout / 2,
                },
            );
            self.send(
                &to,
                ReplMsg::Head {
                    op,
                    agent: agent.clone(),
                    seq: None,
                },
                None,
            );
        }
        self.registers.insert(
            reg,
            PendingRegister {
                agent,
                meta,
                priority,
                waiting,
                epoch_seen: 0,
                seq_seen: 0,
                reclaim,
            },
        );
        self.finish_register_if_ready(now, reg);
        reg
    }

    fn finish_register_if_ready(&mut self, now: Duration, reg: u64) {
        if self
            .registers
            .get(&reg)
            .is_none_or(|r| !r.waiting.is_empty())
        {
            return;
        }
        let Some(p) = self.registers.remove(&reg) else {
            return;
        };
        let (agent, meta, priority) = (p.agent, p.meta, p.priority);
        let me = self.me.name.clone();
        let local_epoch = self.local.get(&agent).map_or(0, |l| l.max_epoch);
        let local_seq = self.latest_local_seq(&agent);
        let epoch_floor = local_epoch.max(p.epoch_seen);
        let seq_floor = local_seq.max(p.seq_seen);
        if p.reclaim {
            let Some(mut r) = self.records.get(&agent).cloned() else {
                return;
            };
            if r.owner != me || epoch_floor > r.epoch || self.owned.contains_key(&agent) {
                // Taken over while this node was down (or re-registered meanwhile).
                return;
            }
            r.seq = r.seq.max(seq_floor);
            self.records.insert(agent.clone(), r.clone());
            // Owned once enough holders grant the epoch: the node may have been
            // written into the record while it was cut off, and the others may have
            // moved the agent on since.
            let holders = r.holders.iter().map(|h| h.name.clone()).collect();
            let how = recovery::Confirming::Reclaim {
                reg,
                record: r.clone(),
            };
            self.confirm_then_own(now, &agent, r.epoch, holders, how);
            return;
        }
        let record = match self.records.get(&agent).cloned() {
            Some(mut r) if r.owner == me && self.owned.contains_key(&agent) => {
                let priority = priority.unwrap_or(r.priority);
                if r.meta != meta || r.priority != priority {
                    r.meta = meta;
                    r.priority = priority;
                    r.version += 1;
                }
                r
            }
            Some(r) => {
                // The owner's copy is not a holder's: repair places a replacement.
                let holders = r.holders.into_iter().filter(|h| h.name != me).collect();
                AgentRecord {
                    owner: me,
                    owner_zone: self.me.zone.clone(),
                    epoch: r.epoch.max(epoch_floor) + 1,
                    seq: r.seq.max(seq_floor),
                    version: 0,
                    holders,
                    meta,
                    priority: priority.unwrap_or(r.priority),
                    isolated: false,
                    ..r
                }
            }
            None => AgentRecord {
                agent: agent.clone(),
                owner: me,
                owner_zone: self.me.zone.clone(),
                epoch: epoch_floor + 1,
                seq: seq_floor,
                holders: Vec::new(),
                version: 0,
                meta,
                priority: priority.unwrap_or(0),
                isolated: false,
            },
        };
        let changed = self.records.get(&agent) != Some(&record);
        self.superseded.remove(&agent);
        self.records.insert(agent.clone(), record.clone());
        if !self.owned.contains_key(&agent) {
            self.own_at(now, &agent);
            self.emit(ReplEvent::AgentOwned {
                agent: agent.clone(),
                epoch: record.epoch,
            });
        }
        if changed {
            self.publish(&agent);
        }
        // Place the copies now rather than on the first put.
        self.next_repair_scan = self.next_repair_scan.min(now);
        self.effects
            .push_back(ReplEffect::RegisterDone { reg, record });
    }

    /// Starts a put of a new version of `agent`; the answer comes as
    /// [`ReplEffect::PutDone`] with the returned id.
    pub fn put(
        &mut self,
        now: Duration,
        agent: &AgentId,
        body: Bytes,
        ack: Option<AckMode>,
    ) -> Result<u64, PutError> {
        let Some(record) = self.records.get(agent).cloned() else {
            return Err(PutError::UnknownAgent {
                agent: agent.clone(),
            });
        };
        if !self.owned.contains_key(agent)
            && let Some((seen, owner)) = self.superseded.get(agent)
        {
            return Err(PutError::Fenced {
                agent: agent.clone(),
                ours: record.epoch,
                seen: *seen,
                owner: owner.as_ref().map_or("unknown".into(), |o| o.to_string()),
            });
        }
        if record.owner == self.me.name && !self.owned.contains_key(agent) {
            return Err(PutError::RegisterAgain {
                agent: agent.clone(),
            });
        }
        if !self.owned.contains_key(agent) {
            return Err(PutError::NotOwner {
                agent: agent.clone(),
                owner: record.owner,
                epoch: record.epoch,
            });
        }
        if record.isolated {
            return Err(PutError::Isolated {
                agent: agent.clone(),
            });
        }
        if self.recovery.fenced.contains(agent) {
            return Err(PutError::LeaseLost {
                agent: agent.clone(),
            });
        }
        let Some(owned) = self.owned.get_mut(agent) else {
            return Err(PutError::NotOwner {
                agent: agent.clone(),
                owner: record.owner,
                epoch: record.epoch,
            });
        };
        let seq = owned.next_seq;
        owned.next_seq += 1;
        let snap = SnapMeta {
            epoch: record.epoch,
            seq,
            len: body.len() as u64,
            checksum: checksum(&body),
        };
        // Copies go to the holders of the record, or, where one is down, to the
        // placement of now (repair then publishes it).
        // Holders that are down get nothing now (repair brings them up to date).
        let targets: Vec<Holder> = self
            .put_targets(&record)
            .into_iter()
            .filter(|h| self.live.contains_key(&h.name))
            .collect();
        let local_counts = self.config.owner_counts_as_copy;
        let copies = targets.len() + usize::from(local_counts);
        // A quorum is a majority of the k copies wanted, not of those that can be
        // placed now: an owner that sees fewer hosts (isolated, or a small cluster)
        // must not acknowledge what would not survive it.
        let quorum = self.config.copies.max(1) / 2 + 1;
        let ack = ack.unwrap_or(self.config.ack);
        let need = match ack {
            AckMode::Local => 0,
            AckMode::Quorum => quorum,
            AckMode::All => copies.max(quorum),
        };
        let put = self.op();
        for holder in &targets {
            let Some(to) = self.live.get(&holder.name).cloned() else {
                continue;
            };
            let op = self.op();
            self.requests.insert(
                op,
                InFlight {
                    request: Request::PutStore { put },
                    to: to.name.clone(),
                    deadline: now + self.config.put_timeout,
                },
            );
            self.send(
                &to,
                ReplMsg::Store {
                    op,
                    record: record.clone(),
                    snap,
                },
                Some(body.clone()),
            );
        }
        let op = self.op();
        self.disk_ops.insert(op, DiskOp::PutLocal { put });
        self.local.entry(agent.clone()).or_default().max_epoch = record.epoch;
        self.effects.push_back(ReplEffect::Persist {
            op,
            agent: agent.clone(),
            snap,
            body,
        });
        self.puts.insert(
            put,
            PendingPut {
                agent: agent.clone(),
                snap,
                ack,
                need,
                local_counts,
                local_done: false,
                targets,
                acked: Vec::new(),
                failures: BTreeMap::new(),
                deadline: now + self.config.put_timeout,
            },
        );
        Ok(put)
    }

    fn put_targets(&self, record: &AgentRecord) -> Vec<Holder> {
        let all_live = record
            .holders
            .iter()
            .all(|h| self.live.contains_key(&h.name) && h.name != self.me.name);
        if all_live && !record.holders.is_empty() {
            return record.holders.clone();
        }
        self.plan(record)
    }

    /// Where the agent's copies belong now.
    fn plan(&self, record: &AgentRecord) -> Vec<Holder> {
        let pinned = Candidate {
            name: record.owner.clone(),
            zone: record.owner_zone.clone(),
        };
        let owner_live =
            self.owned.contains_key(&record.agent) || self.live.contains_key(&record.owner);
        let pinned = (self.config.owner_counts_as_copy && owner_live).then_some(&pinned);
        let candidates: Vec<Candidate> = self
            .live
            .values()
            .chain(std::iter::once(&self.me))
            .filter(|m| m.name != record.owner)
            .map(|m| Candidate {
                name: m.name.clone(),
                zone: m.zone.clone(),
            })
            .collect();
        let current: Vec<NodeName> = record.holders.iter().map(|h| h.name.clone()).collect();
        let wanted = self
            .config
            .copies
            .saturating_sub(usize::from(pinned.is_some()));
        let mut holders: Vec<Holder> = placement::place(
            &record.agent,
            &candidates,
            &current,
            pinned,
            self.config.copies,
        )
        .holders
        .into_iter()
        .map(Holder::from)
        .collect();
        // Too few live members to replace them: holders that are down stay listed.
        // They may come back with their copies, and a holder dropped from the record
        // deletes its copies, which may be the only ones left of the latest version.
        for h in &record.holders {
            if holders.len() >= wanted {
                break;
            }
            if !holders.contains(h) && h.name != record.owner {
                holders.push(h.clone());
            }
        }
        holders
    }

    fn degraded_of(&self, record: &AgentRecord) -> Option<Degraded> {
        let counts = self.config.owner_counts_as_copy;
        let up: Vec<&Holder> = record
            .holders
            .iter()
            .filter(|h| h.name == self.me.name || self.live.contains_key(&h.name))
            .collect();
        let copies = up.len() + usize::from(counts);
        let mut zones: BTreeSet<&Zone> = up.iter().map(|h| &h.zone).collect();
        if counts {
            zones.insert(&record.owner_zone);
        }
        let wanted = self.config.copies;
        (copies < wanted || zones.len() < wanted).then_some(Degraded {
            copies,
            zones: zones.len(),
            wanted,
        })
    }

    fn finish_put_if_decided(&mut self, put: u64) {
        let Some(p) = self.puts.get(&put) else {
            return;
        };
        let have = p.acked.len() + usize::from(p.local_counts && p.local_done);
        let answered = p.acked.len() + p.failures.len();
        let outstanding = p.targets.len().saturating_sub(answered);
        let reachable = have + outstanding;
        if p.local_done && have >= p.need {
            let Some(p) = self.puts.remove(&put) else {
                return;
            };
            let record = self.records.get(&p.agent);
            let mut stored_on = Vec::new();
            if p.local_counts {
                stored_on.push(Holder {
                    name: self.me.name.clone(),
                    zone: self.me.zone.clone(),
                });
            }
            stored_on.extend(p.acked.iter().cloned());
            let pending: Vec<Holder> = p
                .targets
                .iter()
                .filter(|t| !p.acked.contains(t) && !p.failures.contains_key(&t.name))
                .cloned()
                .collect();
            let degraded = record.and_then(|r| self.degraded_of(r));
            if let Some(r) = self.records.get_mut(&p.agent)
                && r.epoch == p.snap.epoch
            {
                r.seq = r.seq.max(p.snap.seq);
            }
            if let Some(owned) = self.owned.get_mut(&p.agent) {
                owned.behind = p
                    .targets
                    .iter()
                    .filter(|t| !p.acked.contains(t))
                    .map(|t| t.name.clone())
                    .collect();
            }
            self.effects.push_back(ReplEffect::PutDone {
                put,
                result: Ok(PutOutcome {
                    agent: p.agent,
                    epoch: p.snap.epoch,
                    seq: p.snap.seq,
                    stored_on,
                    pending,
                    degraded,
                }),
            });
        } else if reachable < p.need && outstanding == 0 {
            self.fail_put(put);
        }
    }

    fn fail_put(&mut self, put: u64) {
        let Some(p) = self.puts.remove(&put) else {
            return;
        };
        let names = |v: &[Holder]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|h| format!("{} ({})", h.name, h.zone))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut failures: Vec<String> = p
            .failures
            .iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect();
        for t in &p.targets {
            if !p.acked.contains(t) && !p.failures.contains_key(&t.name) {
                failures.push(format!("{}: no answer", t.name));
            }
        }
        if !p.local_done {
            failures.push("local copy: not yet on disk".into());
        }
        let placeable = p.targets.len() + usize::from(p.local_counts);
        if placeable < p.need {
            failures.push(format!(
                "only {placeable} copies can be placed on the live members this node sees; lower --copies or add hosts"
            ));
        }
        let have = p.acked.len() + usize::from(p.local_counts && p.local_done);
        let mut stored_on = names(&p.acked);
        if p.local_done {
            stored_on = format!("{stored_on}; owner's local copy on disk");
        }
        self.effects.push_back(ReplEffect::PutDone {
            put,
            result: Err(PutError::NotAcknowledged {
                agent: p.agent,
                seq: p.snap.seq,
                ack: p.ack.as_str(),
                needed: p.need,
                stored: have,
                stored_on,
                failures: if failures.is_empty() {
                    "none".into()
                } else {
                    failures.join("; ")
                },
            }),
        });
    }

    // ---- reads -------------------------------------------------------------------

    /// Starts a read of the latest version of `agent` (or `seq`) from whichever copy
    /// has it; the answer comes as [`ReplEffect::GetDone`].
    pub fn get(
        &mut self,
        now: Duration,
        agent: &AgentId,
        seq: Option<u64>,
    ) -> Result<u64, GetError> {
        let record = self.records.get(agent).cloned();
        if record.is_none() && self.local.get(agent).is_none_or(|l| l.versions.is_empty()) {
            return Err(GetError::UnknownAgent {
                agent: agent.clone(),
            });
        }
        let get = self.op();
        let local = self.local.get(agent);
        let mut candidates = Vec::new();
        let mut asked = vec![format!("{} (local)", self.me.name)];
        if let Some(local) = local {
            let found = match seq {
                Some(s) => local.versions.get(&s),
                None => local.versions.last_key_value().map(|(_, m)| m),
            };
            if let Some(m) = found {
                candidates.push((*m, Source::Local));
            }
        }
        let mut sources: BTreeSet<NodeName> = BTreeSet::new();
        if let Some(r) = &record {
            sources.extend(r.holders.iter().map(|h| h.name.clone()));
            sources.insert(r.owner.clone());
        }
        sources.remove(&self.me.name);
        let mut waiting = BTreeSet::new();
        for name in sources {
            let Some(to) = self.live.get(&name).cloned() else {
                continue;
            };
            let op = self.op();
            self.requests.insert(
                op,
                InFlight {
                    request: Request::Head { get },
                    to: name.clone(),
                    deadline: now + self.config.get_timeout / 2,
                },
            );
            self.send(
                &to,
                ReplMsg::Head {
                    op,
                    agent: agent.clone(),
                    seq,
                },
                None,
            );
            asked.push(name.to_string());
            waiting.insert(name);
        }
        self.gets.insert(
            get,
            PendingGet {
                agent: agent.clone(),
                seq,
                waiting,
                candidates,
                fetching: false,
                asked,
                failures: Vec::new(),
                deadline: now + self.config.get_timeout,
            },
        );
        self.advance_get(now, get);
        Ok(get)
    }

    /// Once every head is in, fetches from the best candidate, then the next best.
    fn advance_get(&mut self, now: Duration, get: u64) {
        let Some(g) = self.gets.get_mut(&get) else {
            return;
        };
        if !g.waiting.is_empty() || g.fetching {
            return;
        }
        // Highest (epoch, seq) first; among equals the local disk, then by name.
        g.candidates.sort_by(|a, b| {
            (b.0.epoch, b.0.seq)
                .cmp(&(a.0.epoch, a.0.seq))
                .then_with(|| match (&a.1, &b.1) {
                    (Source::Local, Source::Local) => std::cmp::Ordering::Equal,
                    (Source::Local, _) => std::cmp::Ordering::Less,
                    (_, Source::Local) => std::cmp::Ordering::Greater,
                    (Source::Remote(x), Source::Remote(y)) => x.cmp(y),
                })
        });
        if g.candidates.is_empty() {
            let g = self
                .gets
                .remove(&get)
                .map(|g| (g.agent, g.seq, g.asked, g.failures));
            if let Some((agent, seq, asked, failures)) = g {
                let result = if failures.is_empty() {
                    Err(GetError::NotFound {
                        agent,
                        what: seq.map_or("at all".to_string(), |s| format!("seq {s}")),
                        asked: asked.join(", "),
                    })
                } else {
                    Err(GetError::Unavailable {
                        agent,
                        holders: asked.join(", "),
                        failures: failures.join("; "),
                    })
                };
                self.effects.push_back(ReplEffect::GetDone { get, result });
            }
            return;
        }
        g.fetching = true;
        let (snap, source) = g.candidates.remove(0);
        let agent = g.agent.clone();
        match source {
            Source::Local => {
                let op = self.op();
                self.disk_ops.insert(
                    op,
                    DiskOp::GetLocal {
                        get,
                        agent: agent.clone(),
                        seq: snap.seq,
                    },
                );
                self.effects.push_back(ReplEffect::Load {
                    op,
                    agent,
                    seq: snap.seq,
                });
            }
            Source::Remote(name) => {
                let Some(to) = self.live.get(&name).cloned() else {
                    if let Some(g) = self.gets.get_mut(&get) {
                        g.fetching = false;
                        g.failures.push(format!("{name}: down"));
                    }
                    return self.advance_get(now, get);
                };
                let op = self.op();
                self.requests.insert(
                    op,
                    InFlight {
                        request: Request::GetFetch { get },
                        to: name,
                        // One lost answer must leave time to try the next copy.
                        deadline: now + transfer_time(snap.len),
                    },
                );
                self.send(
                    &to,
                    ReplMsg::Fetch {
                        op,
                        agent,
                        seq: snap.seq,
                    },
                    None,
                );
            }
        }
    }

    fn get_failed(&mut self, now: Duration, get: u64, why: String) {
        if let Some(g) = self.gets.get_mut(&get) {
            g.fetching = false;
            g.failures.push(why);
        }
        self.advance_get(now, get);
    }

    // ---- messages from peers -------------------------------------------------------

    /// A message (and its payload, if any) from `from`, whose name the transport
    /// authenticated. `payload` must be `msg.payload_len()` bytes; the driver checks.
    pub fn handle_message(
        &mut self,
        now: Duration,
        from: &NodeName,
        msg: ReplMsg,
        payload: Option<Bytes>,
    ) {
        match msg {
            ReplMsg::Store { op, record, snap } => self.on_store(from, op, record, snap, payload),
            ReplMsg::Stored {
                op,
                agent,
                snap,
                outcome,
            } => self.on_stored_reply(now, from, op, agent, snap, outcome),
            ReplMsg::Head { op, agent, seq } => {
                let local = self.local.get(&agent);
                let found = local.and_then(|l| match seq {
                    Some(s) => l.versions.get(&s).copied(),
                    None => l.versions.last_key_value().map(|(_, m)| *m),
                });
                let epoch_seen = self.epoch_known(&agent);
                if let Some(to) = self.live.get(from).cloned() {
                    self.send(
                        &to,
                        ReplMsg::HeadReply {
                            op,
                            found,
                            epoch_seen,
                        },
                        None,
                    );
                }
            }
            ReplMsg::HeadReply {
                op,
                found,
                epoch_seen,
            } => match self.take_request(op, from) {
                Some(InFlight {
                    request: Request::Head { get },
                    to,
                    ..
                }) => {
                    if let Some(g) = self.gets.get_mut(&get) {
                        g.waiting.remove(&to);
                        if let Some(m) = found {
                            g.candidates.push((m, Source::Remote(to)));
                        }
                    }
                    self.advance_get(now, get);
                }
                Some(InFlight {
                    request: Request::WriterHead { agent },
                    to,
                    ..
                }) => self.writer_head_done(now, &agent, &to, Some(found)),
                Some(InFlight {
                    request: Request::RegisterHead { reg },
                    to,
                    ..
                }) => {
                    if let Some(r) = self.registers.get_mut(&reg) {
                        r.waiting.remove(&to);
                        r.epoch_seen = r.epoch_seen.max(epoch_seen);
                        r.seq_seen = r.seq_seen.max(found.map_or(0, |m| m.seq));
                    }
                    self.finish_register_if_ready(now, reg);
                }
                _ => {}
            },
            ReplMsg::Fetch { op, agent, seq } => self.on_fetch(from, op, agent, seq),
            ReplMsg::FetchReply { op, agent, outcome } => {
                self.on_fetch_reply(now, from, op, agent, outcome, payload)
            }
            ReplMsg::Records { records, answer } => {
                for r in records {
                    self.merge_record(r);
                }
                if answer && let Some(to) = self.live.get(from).cloned() {
                    self.send_catalog(&to, false);
                }
            }
            ReplMsg::CatalogDigest { digest } => {
                if digest != self.records.digest()
                    && let Some(to) = self.live.get(from).cloned()
                {
                    self.send_catalog(&to, true);
                }
            }
            ReplMsg::Prepare {
                agent,
                epoch,
                ballot,
                kind,
            } => self.on_prepare(now, from, agent, epoch, ballot, kind),
            ReplMsg::Promise {
                agent,
                epoch,
                ballot,
                answer,
            } => self.on_promise(now, from, agent, epoch, ballot, answer),
            ReplMsg::Accept {
                agent,
                epoch,
                ballot,
                kind,
                decree,
            } => self.on_accept(now, from, agent, epoch, ballot, (kind, decree)),
            ReplMsg::Accepted {
                agent,
                epoch,
                ballot,
                answer,
            } => self.on_accepted(now, from, agent, epoch, ballot, answer),
            ReplMsg::Adopt {
                agent,
                epoch,
                decree,
                record,
            } => self.on_adopt(now, from, agent, epoch, *decree, *record),
            ReplMsg::Adopted { agent, epoch, .. } => self.on_adopted(from, agent, epoch),
            ReplMsg::LeaseRenew { round, agents } => self.on_lease_renew(now, from, round, agents),
            ReplMsg::LeaseReply {
                round,
                granted,
                refused,
            } => self.on_lease_reply(now, from, round, granted, refused),
            ReplMsg::NodeInfo { info } => {
                // Kept even from a member not seen live yet: it announces when it sees
                // us come up, which may be before we see it, and it announces again
                // only when its settings change. Only live members' information is
                // ever read (targets, free capacity), and `member_down` forgets it.
                self.recovery.infos.insert(from.clone(), info);
            }
            ReplMsg::SetIsolated { agent, isolated } => {
                // Only the owner applies it; a request that raced a change of owner
                // is dropped (the operator sees the agent unchanged and repeats it).
                if self.owned.contains_key(&agent) {
                    let _ = self.set_agent_isolated(&agent, isolated);
                }
            }
        }
    }

    fn take_request(&mut self, op: u64, from: &NodeName) -> Option<InFlight> {
        // Only the node asked may answer.
        if self.requests.get(&op).is_some_and(|r| &r.to == from) {
            self.requests.remove(&op)
        } else {
            None
        }
    }

    fn on_store(
        &mut self,
        from: &NodeName,
        op: u64,
        record: AgentRecord,
        snap: SnapMeta,
        payload: Option<Bytes>,
    ) {
        let agent = record.agent.clone();
        let Some(to) = self.live.get(from).cloned() else {
            // Not (yet) a member we know: its reply address is unknown, and a put from
            // outside the membership is not accepted.
            return;
        };
        // Fencing is about the sender's ownership, the epoch of its record: a repair
        // copies older versions (of older epochs) under the current record.
        let sender_epoch = record.epoch;
        self.merge_record(record);
        let known_epoch = self.records.get(&agent).map_or(0, |r| r.epoch);
        let local = self.local.entry(agent.clone()).or_default();
        let seen = local.max_epoch.max(known_epoch);
        let reply = |outcome| ReplMsg::Stored {
            op,
            agent: agent.clone(),
            snap,
            outcome,
        };
        if sender_epoch < seen || snap.epoch > sender_epoch {
            let owner = self
                .records
                .get(&agent)
                .filter(|r| r.epoch == seen)
                .map(|r| r.owner.clone());
            return self.send(
                &to,
                reply(StoreOutcome::Fenced { epoch: seen, owner }),
                None,
            );
        }
        let Some(body) = payload.filter(|b| b.len() as u64 == snap.len) else {
            return self.send(
                &to,
                reply(StoreOutcome::Failed {
                    reason: "payload length does not match the snapshot".into(),
                }),
                None,
            );
        };
        if let Some((&newest, old)) = local.versions.last_key_value()
            && old.epoch < snap.epoch
            && newest >= snap.seq
        {
            let reason = format!(
                "seq {} of epoch {} is not above seq {newest} stored from epoch {}; a new owner continues the seq",
                snap.seq, snap.epoch, old.epoch
            );
            return self.send(&to, reply(StoreOutcome::Failed { reason }), None);
        }
        local.max_epoch = local.max_epoch.max(sender_epoch);
        let disk = self.op();
        self.disk_ops.insert(
            disk,
            DiskOp::ReplicaStore {
                from: from.clone(),
                op,
                agent: agent.clone(),
                snap,
            },
        );
        self.effects.push_back(ReplEffect::Persist {
            op: disk,
            agent,
            snap,
            body,
        });
    }

    fn on_stored_reply(
        &mut self,
        now: Duration,
        from: &NodeName,
        op: u64,
        agent: AgentId,
        snap: SnapMeta,
        outcome: StoreOutcome,
    ) {
        if outcome == StoreOutcome::Stored
            && let Some(owned) = self.owned.get_mut(&agent)
            && self.records.get(&agent).is_some_and(|r| r.seq <= snap.seq)
        {
            // A late acknowledgement of the latest version: no longer behind.
            owned.behind.remove(from);
        }
        // Refused for an epoch above the one we hold: another node owns the agent.
        if let StoreOutcome::Fenced { epoch, owner } = &outcome
            && self.records.get(&agent).is_none_or(|r| *epoch > r.epoch)
        {
            self.fenced(&agent, *epoch, owner.clone());
        }
        let Some(InFlight { request, .. }) = self.take_request(op, from) else {
            return;
        };
        match request {
            Request::PutStore { put } => {
                if let Some(p) = self.puts.get_mut(&put) {
                    match outcome {
                        StoreOutcome::Stored => {
                            if let Some(h) = p.targets.iter().find(|t| &t.name == from).cloned() {
                                p.acked.push(h);
                            }
                        }
                        StoreOutcome::Fenced { epoch, owner } => {
                            let Some(p) = self.puts.remove(&put) else {
                                return;
                            };
                            self.effects.push_back(ReplEffect::PutDone {
                                put,
                                result: Err(PutError::Fenced {
                                    agent: p.agent,
                                    ours: p.snap.epoch,
                                    seen: epoch,
                                    owner: owner.map_or("unknown".into(), |o| o.to_string()),
                                }),
                            });
                            return;
                        }
                        StoreOutcome::Failed { reason } => {
                            p.failures.insert(from.clone(), reason);
                        }
                    }
                }
                self.finish_put_if_decided(put);
            }
            Request::RepairStore { agent, .. } => {
                let ok = outcome == StoreOutcome::Stored;
                self.repair_transfer_done(now, &agent, ok);
            }
            // A store reply to a request that was not a store: ignored.
            _ => {}
        }
    }

    /// A holder refused our version: another node owns the agent at a higher epoch.
    /// This node stops owning it; a new registration here goes above that epoch.
    fn fenced(&mut self, agent: &AgentId, epoch: u64, owner: Option<NodeName>) {
        let local = self.local.entry(agent.clone()).or_default();
        local.max_epoch = local.max_epoch.max(epoch);
        if self.owned.remove(agent).is_some() {
            self.lease_forget(agent);
            self.superseded
                .insert(agent.clone(), (epoch, owner.clone()));
            self.emit(ReplEvent::AgentLost {
                agent: agent.clone(),
                owner,
                epoch,
            });
        }
    }

    fn on_fetch(&mut self, from: &NodeName, op: u64, agent: AgentId, seq: u64) {
        let Some(to) = self.live.get(from).cloned() else {
            return;
        };
        let has = self
            .local
            .get(&agent)
            .is_some_and(|l| l.versions.contains_key(&seq));
        let outcome = if !has {
            Some(FetchOutcome::Missing)
        } else if self.serving >= self.config.max_serving {
            Some(FetchOutcome::Busy)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            return self.send(&to, ReplMsg::FetchReply { op, agent, outcome }, None);
        }
        self.serving += 1;
        let disk = self.op();
        self.disk_ops.insert(
            disk,
            DiskOp::ServeFetch {
                to: from.clone(),
                op,
                agent: agent.clone(),
                seq,
            },
        );
        self.effects.push_back(ReplEffect::Load {
            op: disk,
            agent,
            seq,
        });
    }

    fn on_fetch_reply(
        &mut self,
        now: Duration,
        from: &NodeName,
        op: u64,
        agent: AgentId,
        outcome: FetchOutcome,
        payload: Option<Bytes>,
    ) {
        let Some(InFlight { request, .. }) = self.take_request(op, from) else {
            return;
        };
        let found = match (&outcome, payload) {
            (FetchOutcome::Found(m), Some(body))
                if body.len() as u64 == m.len && checksum(&body) == m.checksum =>
            {
                Ok((*m, body))
            }
            (FetchOutcome::Found(_), _) => Err("payload does not match its checksum".to_string()),
            (FetchOutcome::Missing, _) => Err("missing".into()),
            (FetchOutcome::Busy, _) => Err("busy".into()),
            (FetchOutcome::Failed { reason }, _) => Err(reason.clone()),
        };
        match request {
            Request::GetFetch { get } => match found {
                Ok((m, body)) => {
                    if self.gets.remove(&get).is_some() {
                        self.effects.push_back(ReplEffect::GetDone {
                            get,
                            result: Ok((m, body)),
                        });
                    }
                }
                Err(why) => self.get_failed(now, get, format!("{from}: {why}")),
            },
            Request::Heal { agent: a, seq } => {
                debug_assert_eq!(a, agent);
                match found {
                    Ok((m, body)) if m.seq == seq => {
                        let disk = self.op();
                        self.disk_ops.insert(
                            disk,
                            DiskOp::Heal {
                                agent: a.clone(),
                                snap: m,
                                from: from.clone(),
                            },
                        );
                        self.effects.push_back(ReplEffect::Persist {
                            op: disk,
                            agent: a,
                            snap: m,
                            body,
                        });
                    }
                    _ => self.heal_failed(now, a, seq, from),
                }
            }
            _ => {}
        }
    }

    // ---- disk results ----------------------------------------------------------------

    /// The result of a [`ReplEffect::Persist`].
    pub fn on_persisted(&mut self, now: Duration, op: u64, result: Result<(), String>) {
        let Some(disk) = self.disk_ops.remove(&op) else {
            return;
        };
        match disk {
            DiskOp::Acceptor { to, reply } => self.acceptor_persisted(now, to, *reply, result),
            DiskOp::PutLocal { put } => {
                let Some(p) = self.puts.get_mut(&put) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        p.local_done = true;
                        let (agent, snap) = (p.agent.clone(), p.snap);
                        self.insert_local(&agent, snap);
                        self.finish_put_if_decided(put);
                    }
                    Err(reason) => {
                        if let Some(p) = self.puts.remove(&put) {
                            self.effects.push_back(ReplEffect::PutDone {
                                put,
                                result: Err(PutError::LocalWrite {
                                    agent: p.agent,
                                    seq: p.snap.seq,
                                    reason,
                                }),
                            });
                        }
                    }
                }
            }
            DiskOp::ReplicaStore {
                from,
                op,
                agent,
                snap,
            } => {
                let outcome = match result {
                    Ok(()) => {
                        self.insert_local(&agent, snap);
                        self.persist_record_if_kept(&agent);
                        StoreOutcome::Stored
                    }
                    Err(reason) => StoreOutcome::Failed { reason },
                };
                if let Some(to) = self.live.get(&from).cloned() {
                    self.send(
                        &to,
                        ReplMsg::Stored {
                            op,
                            agent,
                            snap,
                            outcome,
                        },
                        None,
                    );
                }
            }
            DiskOp::Heal { agent, snap, from } => {
                self.healing.remove(&(agent.clone(), snap.seq));
                self.heal_tried.remove(&(agent.clone(), snap.seq));
                if result.is_ok() {
                    self.insert_local(&agent, snap);
                    // The holders' answers, if this node writes the agent, predate the
                    // heal: the fault that cost this copy may have cost theirs (a
                    // holder healing from this node while its copy was bad got none),
                    // and they were compared with the older latest. They are asked
                    // again.
                    self.writer_synced.remove(&agent);
                    self.next_repair_scan = self.next_repair_scan.min(now);
                    self.emit(ReplEvent::SnapshotHealed {
                        agent,
                        seq: snap.seq,
                        from,
                    });
                }
            }
            _ => {}
        }
    }

    /// The result of a [`ReplEffect::Load`].
    pub fn on_loaded(
        &mut self,
        now: Duration,
        op: u64,
        result: Result<(SnapMeta, Bytes), LoadError>,
    ) {
        let Some(disk) = self.disk_ops.remove(&op) else {
            return;
        };
        match disk {
            DiskOp::ServeFetch { to, op, agent, seq } => {
                self.serving = self.serving.saturating_sub(1);
                let (outcome, payload) = match result {
                    Ok((m, body)) => (FetchOutcome::Found(m), Some(body)),
                    Err(e) => {
                        let reason = self.load_failed(now, &agent, seq, &e);
                        (FetchOutcome::Failed { reason }, None)
                    }
                };
                if let Some(to) = self.live.get(&to).cloned() {
                    self.send(&to, ReplMsg::FetchReply { op, agent, outcome }, payload);
                }
            }
            DiskOp::GetLocal { get, agent, seq } => match result {
                Ok((m, body)) => {
                    if self.gets.remove(&get).is_some() {
                        self.effects.push_back(ReplEffect::GetDone {
                            get,
                            result: Ok((m, body)),
                        });
                    }
                }
                Err(e) => {
                    let why = self.load_failed(now, &agent, seq, &e);
                    self.get_failed(now, get, format!("{} (local): {why}", self.me.name));
                }
            },
            DiskOp::RepairLoad { agent, to, seq } => match result {
                Ok((m, body)) => {
                    let Some(target) = self.live.get(&to.name).cloned() else {
                        return self.repair_transfer_done(now, &agent, false);
                    };
                    let Some(record) = self.records.get(&agent).cloned() else {
                        return self.repair_transfer_done(now, &agent, false);
                    };
                    let op = self.op();
                    self.requests.insert(
                        op,
                        InFlight {
                            request: Request::RepairStore {
                                agent: agent.clone(),
                            },
                            to: to.name,
                            deadline: now + transfer_time(m.len),
                        },
                    );
                    self.send(
                        &target,
                        ReplMsg::Store {
                            op,
                            record,
                            snap: m,
                        },
                        Some(body),
                    );
                }
                Err(e) => {
                    self.load_failed(now, &agent, seq, &e);
                    self.repair_transfer_done(now, &agent, false);
                }
            },
            _ => {}
        }
    }

    /// A local version could not be read: a corrupt or vanished file is forgotten
    /// and fetched again from another copy. Returns the reason, for the requester.
    fn load_failed(&mut self, now: Duration, agent: &AgentId, seq: u64, e: &LoadError) -> String {
        match e {
            LoadError::Corrupt(reason) => {
                self.on_corrupt(now, agent, seq, reason.clone());
                format!("corrupt on disk ({reason})")
            }
            LoadError::Missing => {
                self.on_corrupt(now, agent, seq, "file missing".into());
                "missing on disk".into()
            }
            LoadError::Io(reason) => reason.clone(),
        }
    }

    fn insert_local(&mut self, agent: &AgentId, snap: SnapMeta) {
        let keep = self.config.keep;
        let local = self.local.entry(agent.clone()).or_default();
        local.max_epoch = local.max_epoch.max(snap.epoch);
        local.versions.insert(snap.seq, snap);
        while local.versions.len() > keep {
            local.versions.pop_first();
        }
    }

    /// The driver found `agent` version `seq` corrupt on disk (on a read or by
    /// scrubbing) and moved the file aside: stop serving it and fetch it again.
    pub fn on_corrupt(&mut self, now: Duration, agent: &AgentId, seq: u64, reason: String) {
        let had = self
            .local
            .get_mut(agent)
            .and_then(|l| l.versions.remove(&seq))
            .is_some();
        if had {
            self.emit(ReplEvent::SnapshotCorrupt {
                agent: agent.clone(),
                seq,
                reason,
            });
            self.heal(now, agent, seq);
        }
    }

    /// Fetches `agent` version `seq` from another copy to replace a lost local one.
    fn heal(&mut self, now: Duration, agent: &AgentId, seq: u64) {
        if !self.healing.insert((agent.clone(), seq)) {
            return;
        }
        let Some(record) = self.records.get(agent) else {
            self.healing.remove(&(agent.clone(), seq));
            self.heal_tried.remove(&(agent.clone(), seq));
            return;
        };
        let mut sources: Vec<&NodeName> = record.holders.iter().map(|h| &h.name).collect();
        sources.push(&record.owner);
        let tried = self.heal_tried.get(&(agent.clone(), seq));
        let Some(to) = sources
            .into_iter()
            .filter(|n| tried.is_none_or(|t| !t.contains(*n)))
            .filter_map(|n| self.live.get(n))
            .max_by_key(|m| placement::score(agent, &m.name))
            .cloned()
        else {
            // Every live copy was tried: the next trigger (a read, a repair round)
            // starts over.
            self.healing.remove(&(agent.clone(), seq));
            self.heal_tried.remove(&(agent.clone(), seq));
            return;
        };
        let op = self.op();
        self.requests.insert(
            op,
            InFlight {
                request: Request::Heal {
                    agent: agent.clone(),
                    seq,
                },
                to: to.name.clone(),
                deadline: now + self.config.get_timeout,
            },
        );
        self.send(
            &to,
            ReplMsg::Fetch {
                op,
                agent: agent.clone(),
                seq,
            },
            None,
        );
    }

    /// A heal source did not have a good copy: ask the next one.
    fn heal_failed(&mut self, now: Duration, agent: AgentId, seq: u64, from: &NodeName) {
        self.healing.remove(&(agent.clone(), seq));
        self.heal_tried
            .entry((agent.clone(), seq))
            .or_default()
            .insert(from.clone());
        self.heal(now, &agent, seq);
    }

    // ---- catalog -------------------------------------------------------------------

    /// Merges a record from a peer (or the disk). Returns whether it replaced ours.
    fn merge_record(&mut self, record: AgentRecord) -> bool {
        let agent = record.agent.clone();
        let replaced = match self.records.get_mut(&agent) {
            Some(ours) if !record.supersedes(ours) => {
                if record.epoch == ours.epoch && record.seq > ours.seq {
                    ours.seq = record.seq;
                }
                false
            }
            Some(ours) => {
                let seq = if record.epoch == ours.epoch {
                    ours.seq.max(record.seq)
                } else {
                    record.seq
                };
                *ours = AgentRecord { seq, ..record };
                true
            }
            None => {
                self.records.insert(agent.clone(), record);
                true
            }
        };
        if !replaced {
            return false;
        }
        let Some(r) = self.records.get(&agent).cloned() else {
            return false;
        };
        if r.owner != self.me.name && self.owned.remove(&agent).is_some() {
            self.lease_forget(&agent);
            self.emit(ReplEvent::AgentLost {
                agent: agent.clone(),
                owner: Some(r.owner.clone()),
                epoch: r.epoch,
            });
        }
        if self
            .superseded
            .get(&agent)
            .is_some_and(|(epoch, _)| r.epoch >= *epoch)
        {
            self.superseded.remove(&agent);
        }
        let holds_here = self
            .local
            .get(&agent)
            .is_some_and(|l| !l.versions.is_empty());
        let newest_here = self
            .local
            .get(&agent)
            .and_then(|l| l.versions.last_key_value().map(|(_, m)| (m.epoch, m.seq)));
        // Only when the record's writer knew a version at least as new as ours: copies
        // newer than the record may be the only ones of an acknowledged version
        // (a holder set re-placed on the other side of a partition).
        let covered = newest_here.is_none_or(|newest| newest <= (r.epoch, r.seq));
        // Nor while the record lists fewer copies than wanted: an adoption takes the
        // new owner out of the holders and drops the old owner's copy, and until the
        // new owner (which may be fenced, on the wrong side of a partition) re-places
        // them, the copy here may be one of only two.
        let whole =
            r.holders.len() + usize::from(self.config.owner_counts_as_copy) >= self.config.copies;
        if holds_here
            && covered
            && whole
            && r.owner != self.me.name
            && !r.is_holder(&self.me.name)
            && r.version > 0
        {
            // The writer moved the copies elsewhere (after they were written there).
            self.local.remove(&agent);
            self.effects.push_back(ReplEffect::DropAgent { agent });
        } else {
            self.persist_record_if_kept(&agent);
        }
        true
    }

    fn persist_record_if_kept(&mut self, agent: &AgentId) {
        let Some(r) = self.records.get(agent) else {
            return;
        };
        let kept = r.owner == self.me.name
            || self
                .local
                .get(agent)
                .is_some_and(|l| !l.versions.is_empty());
        if kept {
            self.effects
                .push_back(ReplEffect::PersistRecord { record: r.clone() });
        }
    }

    /// Sends the record of `agent` to every live member. While a repair of the agent
    /// runs, the record waits for the repair's end: a record published meanwhile would
    /// not list the holders being filled, and they would drop their partial copies.
    fn publish(&mut self, agent: &AgentId) {
        if self.repairs.contains_key(agent) {
            self.deferred_publish.insert(agent.clone());
            return;
        }
        let Some(r) = self.records.get(agent).cloned() else {
            return;
        };
        let members: Vec<NodeId> = self.live.values().cloned().collect();
        for to in members {
            self.send(
                &to,
                ReplMsg::Records {
                    records: vec![r.clone()],
                    answer: false,
                },
                None,
            );
        }
        self.persist_record_if_kept(agent);
    }

    fn send_catalog(&mut self, to: &NodeId, answer: bool) {
        let all: Vec<AgentRecord> = self.records.values().cloned().collect();
        if all.is_empty() && answer {
            self.send(
                to,
                ReplMsg::Records {
                    records: Vec::new(),
                    answer,
                },
                None,
            );
        }
        let last = all.len().div_ceil(RECORDS_PER_MESSAGE).saturating_sub(1);
        for (i, chunk) in all.chunks(RECORDS_PER_MESSAGE).enumerate() {
            self.send(
                to,
                ReplMsg::Records {
                    records: chunk.to_vec(),
                    // Asked once per catalog, not once per chunk (that sent the whole
                    // catalog back once per chunk received: quadratic in the agents).
                    answer: answer && i == last,
                },
                None,
            );
        }
    }

    /// A digest of every record (without seqs), order-independent of insertion.
    pub fn catalog_digest(&self) -> u64 {
        self.records.peek_digest()
    }

    // ---- repair --------------------------------------------------------------------

    /// Whether this node changes `record`'s holders: the owner while it is live, else
    /// the best-scoring live holder that has a copy (this node included).
    fn is_writer(&self, record: &AgentRecord) -> bool {
        if self.owned.contains_key(&record.agent) {
            return true;
        }
        // A live owner writes its own record (an owner that restarted and has not
        // registered again counts as gone).
        if self.live.contains_key(&record.owner) {
            return false;
        }
        let has_copy = self
            .local
            .get(&record.agent)
            .is_some_and(|l| !l.versions.is_empty());
        if !has_copy {
            return false;
        }
        let best = record
            .holders
            .iter()
            .filter(|h| h.name == self.me.name || self.live.contains_key(&h.name))
            .max_by_key(|h| placement::score(&record.agent, &h.name));
        best.is_some_and(|h| h.name == self.me.name)
    }

    fn repair_scan(&mut self, now: Duration) {
        if self.live.is_empty() {
            return;
        }
        // An owner's placement of the agents registered in this life is its own; any
        // other writing (for a gone owner, or reclaiming after a restart) waits until
        // this node has been back among live members long enough to have learnt the
        // current records.
        let settled = self.settled_at.is_some_and(|at| now >= at);
        // Only records this node owns, writes or reports degraded have anything to do.
        let agents: Vec<AgentId> = self
            .records
            .values()
            .filter(|r| {
                r.owner == self.me.name || self.degraded.contains_key(&r.agent) || self.is_writer(r)
            })
            .map(|r| r.agent.clone())
            .collect();
        // Once per scan, not once per agent: agents whose holders are being asked, and
        // agents with a version being fetched again.
        let asking: BTreeSet<AgentId> = self
            .requests
            .values()
            .filter_map(|r| match &r.request {
                Request::WriterHead { agent } => Some(agent.clone()),
                _ => None,
            })
            .collect();
        let healing: BTreeSet<AgentId> = self.healing.iter().map(|(a, _)| a.clone()).collect();
        for agent in agents {
            let Some(record) = self.records.get(&agent).cloned() else {
                continue;
            };
            // Degraded or restored, as this node sees it (for metrics and events).
            let degraded = self.degraded_of(&record);
            match (&degraded, self.degraded.contains_key(&agent)) {
                (Some(d), _) if self.degraded.get(&agent) != Some(d) && self.is_writer(&record) => {
                    self.degraded.insert(agent.clone(), d.clone());
                    self.emit(ReplEvent::AgentDegraded {
                        agent: agent.clone(),
                        degraded: d.clone(),
                    });
                }
                (None, true) => {
                    self.degraded.remove(&agent);
                    self.emit(ReplEvent::AgentRestored {
                        agent: agent.clone(),
                        copies: record.holders.len()
                            + usize::from(self.config.owner_counts_as_copy),
                    });
                }
                _ => {}
            }
            if !settled && !self.owned.contains_key(&agent) {
                continue;
            }
            if record.owner == self.me.name && !self.owned.contains_key(&agent) {
                // An adoption being confirmed with the holders is not reclaimed (the
                // coordinator may have written this node into the record meanwhile).
                let reclaiming = self.registers.values().any(|p| p.agent == agent)
                    || self.recovery.adopting.contains_key(&agent);
                if !reclaiming {
                    self.start_register(now, agent.clone(), record.meta.clone(), None, true);
                }
                continue;
            }
            if self.repairs.contains_key(&agent) || !self.is_writer(&record) {
                continue;
            }
            // The holders are the electorate of the agent's next epoch. Its owner
            // changes them only while its lease keeps any election from succeeding;
            // for a gone owner's agent the holders are electing its successor (who
            // re-places the copies then), so they are not changed under it: only an
            // isolated agent, which is not recovered, has its copies re-placed by a
            // holder.
            let owned_here = self.owned.contains_key(&agent);
            if (owned_here && !self.may_change_holders(now, &record))
                || (!owned_here && !record.isolated)
            {
                continue;
            }
            // For a dead owner's agent the holders are also the electorate of its
            // recovery: a minority of them must not re-place the copies and so make
            // itself a majority (it may lack the latest acknowledged version).
            let live_holders = record
                .holders
                .iter()
                .filter(|h| h.name == self.me.name || self.live.contains_key(&h.name))
                .count();
            if !self.owned.contains_key(&agent) && live_holders < record.holders.len() / 2 + 1 {
                continue;
            }
            // Holders are asked again whenever the live ones among them change, a
            // restart (new generation) included. Not while a round is still under
            // way: the holders that round did not ask (one back from a restart or a
            // partition since) would count as asked; the next scan starts a new one.
            let live_holders: Vec<NodeId> = record
                .holders
                .iter()
                .filter_map(|h| self.live.get(&h.name))
                .cloned()
                .collect();
            if self.writer_synced.get(&agent) != Some(&live_holders) && !asking.contains(&agent) {
                self.writer_synced.insert(agent.clone(), live_holders);
                if self.sync_writer(now, &record) {
                    continue;
                }
            }
            if asking.contains(&agent) || healing.contains(&agent) {
                continue;
            }
            let target = self.plan(&record);
            // A writer without the latest acknowledged version (its own copy was found
            // corrupt and not fetched back yet, or a new owner has not fetched it)
            // leaves the holder set alone: the holders it would replace may have the
            // only copies of that version, and a holder dropped from the record
            // deletes its copies. It fetches the version (again: a heal that found no
            // good copy, or whose write failed, is not retried by itself), and a later
            // scan re-places.
            let latest_here = self.latest_local_seq(&agent);
            if latest_here < record.seq && record.holders.iter().any(|h| !target.contains(h)) {
                self.heal(now, &agent, record.seq);
                continue;
            }
            let Some(local) = self.local.get(&agent) else {
                // The writer has nothing to copy yet (no put so far): just publish
                // the placement so puts go there.
                if record.holders != target && record.owner == self.me.name {
                    self.set_holders(&agent, target, Vec::new(), 0);
                }
                continue;
            };
            let versions: Vec<u64> = local.versions.keys().copied().collect();
            if versions.is_empty() {
                if record.holders != target && record.owner == self.me.name {
                    self.set_holders(&agent, target, Vec::new(), 0);
                }
                continue;
            }
            let latest = versions[versions.len() - 1];
            let mut behind: BTreeSet<NodeName> = self
                .owned
                .get(&agent)
                .map(|o| o.behind.clone())
                .unwrap_or_default();
            if let Some(stale) = self.stale_holders.get(&agent) {
                behind.extend(stale.iter().cloned());
            }
            let mut todo = VecDeque::new();
            for h in &target {
                if h.name == self.me.name {
                    continue;
                }
                if !record.is_holder(&h.name) {
                    // A new holder gets every kept version, the latest first.
                    for s in versions.iter().rev() {
                        todo.push_back((h.clone(), *s));
                    }
                } else if behind.contains(&h.name) {
                    todo.push_back((h.clone(), latest));
                }
            }
            if todo.is_empty() {
                self.stale_holders.remove(&agent);
                if record.holders != target {
                    self.set_holders(&agent, target, Vec::new(), 0);
                }
                continue;
            }
            let mut newest_copied: BTreeMap<NodeName, u64> = BTreeMap::new();
            for (h, seq) in &todo {
                let newest = newest_copied.entry(h.name.clone()).or_default();
                *newest = (*newest).max(*seq);
            }
            self.repairs.insert(
                agent,
                RepairJob {
                    epoch: record.epoch,
                    target,
                    todo,
                    newest_copied,
                    in_flight: 0,
                    bytes: 0,
                    failed: false,
                },
            );
        }
        self.pump_repairs(now);
    }

    /// Asks the live holders of an agent this node writes for their latest version:
    /// a newer one than ours is fetched (a writer that is not the owner may have
    /// missed puts), a holder without ours gets it from repair.
    /// Returns whether it asked anyone.
    /// The caller starts no round while one is under way (see [`Replicator::repair_scan`]).
    fn sync_writer(&mut self, now: Duration, record: &AgentRecord) -> bool {
        let holders: Vec<NodeId> = record
            .holders
            .iter()
            .filter_map(|h| self.live.get(&h.name))
            .cloned()
            .collect();
        if holders.is_empty() {
            return false;
        }
        self.writer_rounds.insert(
            record.agent.clone(),
            WriterRound {
                heads: BTreeMap::new(),
                waiting: holders.iter().map(|h| h.name.clone()).collect(),
            },
        );
        for to in holders {
            let op = self.op();
            self.requests.insert(
                op,
                InFlight {
                    request: Request::WriterHead {
                        agent: record.agent.clone(),
                    },
                    to: to.name.clone(),
                    deadline: now + transfer_time(0),
                },
            );
            self.send(
                &to,
                ReplMsg::Head {
                    op,
                    agent: record.agent.clone(),
                    seq: None,
                },
                None,
            );
        }
        true
    }

    fn writer_head_done(
        &mut self,
        now: Duration,
        agent: &AgentId,
        from: &NodeName,
        found: Option<Option<SnapMeta>>,
    ) {
        let ours = self
            .local
            .get(agent)
            .and_then(|l| l.versions.last_key_value().map(|(_, m)| (m.epoch, m.seq)));
        let theirs = found.map(|f| f.map(|m| (m.epoch, m.seq)));
        match (ours, theirs, found) {
            (o, Some(Some(t)), Some(Some(m))) if o.is_none_or(|o| o < t) => {
                self.heal(now, agent, m.seq);
            }
            (Some(o), Some(t), _) if t.is_none_or(|t| t < o) => {
                self.stale_holders
                    .entry(agent.clone())
                    .or_default()
                    .insert(from.clone());
            }
            // No answer in time from a holder still live: what it holds is unknown,
            // and it is not asked again while the live holders stay the same, so it
            // is sent the latest version. A holder just back from a restart or a
            // partition often drops the question (it does not know this node as live
            // yet), and it is exactly the one that missed puts; taking silence for
            // "up to date" left it behind for good once the puts stopped (I2). A
            // holder declared down is not marked (a transfer to it would fail the
            // whole repair job); it is asked again when it comes back.
            (_, None, _) if self.live.contains_key(from) => {
                self.stale_holders
                    .entry(agent.clone())
                    .or_default()
                    .insert(from.clone());
            }
            _ => {}
        }
        let Some(round) = self.writer_rounds.get_mut(agent) else {
            return;
        };
        round.waiting.remove(from);
        if let Some(t) = theirs {
            round.heads.insert(from.clone(), t);
        }
        if !round.waiting.is_empty() {
            return;
        }
        let Some(round) = self.writer_rounds.remove(agent) else {
            return;
        };
        // Each answer was compared with our latest version when it came. Now that all
        // are in, each is also compared with the newest any holder has: this node
        // fetches that one (above), but usually after the answers, so a new owner (no
        // copy yet, or the same old one as the holder) would otherwise take a holder
        // one version behind at the old owner's crash for current, and with no later
        // put nothing would bring it up to date.
        let newest = round.heads.values().copied().max().flatten();
        let behind: Vec<NodeName> = round
            .heads
            .into_iter()
            .filter(|(_, head)| *head < newest)
            .map(|(n, _)| n)
            .collect();
        if !behind.is_empty() {
            self.stale_holders
                .entry(agent.clone())
                .or_default()
                .extend(behind);
        }
    }

    /// Starts repair transfers while the rate and the parallelism allow.
    fn pump_repairs(&mut self, now: Duration) {
        // Integer arithmetic, and the clock of the bucket advances by exactly the time
        // the refill stands for: rounding must never leave a due wake-up with nothing
        // to do (the driver would be woken at the same instant forever).
        let rate = u128::from(self.config.repair_bytes_per_sec.max(1));
        let elapsed = now.saturating_sub(self.tokens_at).as_nanos();
        let refill = elapsed * rate / 1_000_000_000;
        if refill > 0 {
            let burst = i64::try_from(rate).unwrap_or(i64::MAX);
            let added = i64::try_from(refill).unwrap_or(i64::MAX);
            self.repair_tokens = self.repair_tokens.saturating_add(added).min(burst);
            if self.repair_tokens == burst {
                self.tokens_at = now;
            } else {
                let used = u64::try_from(refill * 1_000_000_000 / rate).unwrap_or(u64::MAX);
                self.tokens_at += Duration::from_nanos(used);
            }
        }
        let agents: Vec<AgentId> = self.repairs.keys().cloned().collect();
        for agent in agents {
            while self.repair_in_flight < self.config.repair_parallel.max(1)
                && self.repair_tokens > 0
            {
                let Some(job) = self.repairs.get_mut(&agent) else {
                    break;
                };
                if job.failed {
                    break;
                }
                let Some((to, seq)) = job.todo.pop_front() else {
                    break;
                };
                let len = self
                    .local
                    .get(&agent)
                    .and_then(|l| l.versions.get(&seq))
                    .map(|m| m.len);
                let Some(len) = len else {
                    // Pruned meanwhile: nothing to copy for this seq.
                    continue;
                };
                job.in_flight += 1;
                job.bytes += len;
                self.repair_in_flight += 1;
                self.repair_tokens -= i64::try_from(len).unwrap_or(i64::MAX);
                let op = self.op();
                self.disk_ops.insert(
                    op,
                    DiskOp::RepairLoad {
                        agent: agent.clone(),
                        to,
                        seq,
                    },
                );
                self.effects.push_back(ReplEffect::Load {
                    op,
                    agent: agent.clone(),
                    seq,
                });
            }
            self.finish_repair_if_done(now, &agent);
        }
    }

    fn repair_transfer_done(&mut self, now: Duration, agent: &AgentId, ok: bool) {
        self.repair_in_flight = self.repair_in_flight.saturating_sub(1);
        if let Some(job) = self.repairs.get_mut(agent) {
            job.in_flight = job.in_flight.saturating_sub(1);
            if !ok {
                job.failed = true;
            }
        }
        self.finish_repair_if_done(now, agent);
        self.pump_repairs(now);
    }

    fn finish_repair_if_done(&mut self, now: Duration, agent: &AgentId) {
        let done = self
            .repairs
            .get(agent)
            .is_some_and(|j| j.in_flight == 0 && (j.todo.is_empty() || j.failed));
        if !done {
            return;
        }
        let Some(job) = self.repairs.remove(agent) else {
            return;
        };
        let deferred = self.deferred_publish.remove(agent);
        let Some(record) = self.records.get(agent) else {
            return;
        };
        if record.epoch != job.epoch || !self.is_writer(record) {
            return;
        }
        // Fenced (or no longer leased) while copying: the new holders are not
        // written down (the next scan plans again once the lease is back).
        let failed =
            job.failed || (self.owned.contains_key(agent) && !self.may_change_holders(now, record));
        if failed {
            // The next scan plans again from scratch (the target may have changed).
            if deferred {
                self.publish(agent);
            }
            return;
        }
        // A put that missed a holder while the job ran left it behind again.
        let latest = self.latest_local_seq(agent);
        if let Some(owned) = self.owned.get_mut(agent) {
            owned
                .behind
                .retain(|h| job.newest_copied.get(h).is_none_or(|s| *s < latest));
        }
        self.stale_holders.remove(agent);
        if record.holders == job.target {
            if deferred {
                self.publish(agent);
            }
        } else {
            let before: BTreeSet<NodeName> =
                record.holders.iter().map(|h| h.name.clone()).collect();
            let after: BTreeSet<NodeName> = job.target.iter().map(|h| h.name.clone()).collect();
            let added = after.difference(&before).cloned().collect();
            self.set_holders(agent, job.target, added, job.bytes);
        }
    }

    fn set_holders(
        &mut self,
        agent: &AgentId,
        holders: Vec<Holder>,
        added: Vec<NodeName>,
        bytes: u64,
    ) {
        let Some(r) = self.records.get_mut(agent) else {
            return;
        };
        let removed: Vec<NodeName> = r
            .holders
            .iter()
            .filter(|h| !holders.contains(h))
            .map(|h| h.name.clone())
            .collect();
        r.holders = holders;
        r.version += 1;
        if !added.is_empty() || !removed.is_empty() {
            self.emit(ReplEvent::RepairDone {
                agent: agent.clone(),
                added,
                removed,
                bytes,
            });
        }
        self.publish(agent);
    }

    // ---- time ----------------------------------------------------------------------

    /// The next time [`Replicator::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut next = self
            .next_repair_scan
            .min(self.next_anti_entropy)
            .min(self.recovery_timeout());
        for p in self.puts.values() {
            next = next.min(p.deadline);
        }
        for g in self.gets.values() {
            next = next.min(g.deadline);
        }
        if let Some(deadline) = self.requests.next_deadline() {
            next = next.min(deadline);
        }
        if let Some((due, _)) = self.welcomes.first() {
            next = next.min(*due);
        }
        if !self.repairs.is_empty() && self.repair_tokens <= 0 {
            let rate = u128::from(self.config.repair_bytes_per_sec.max(1));
            let debt = u128::from(self.repair_tokens.unsigned_abs()) + 1;
            // Rounded up: at that instant the refill covers the debt.
            let nanos = (debt * 1_000_000_000).div_ceil(rate);
            let wait = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            next = next.min(self.tokens_at + wait);
        }
        Some(next)
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.send_welcomes(now);
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in expired {
            if let Some(r) = self.requests.remove(&op) {
                self.request_failed(now, r, "no answer in time".into());
            }
        }
        let late_puts: Vec<u64> = self
            .puts
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for put in late_puts {
            self.fail_put(put);
        }
        let late_gets: Vec<u64> = self
            .gets
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for get in late_gets {
            if let Some(g) = self.gets.remove(&get) {
                let mut failures = g.failures;
                failures.push("timed out".into());
                self.effects.push_back(ReplEffect::GetDone {
                    get,
                    result: Err(GetError::Unavailable {
                        agent: g.agent,
                        holders: g.asked.join(", "),
                        failures: failures.join("; "),
                    }),
                });
            }
        }
        if now >= self.next_repair_scan {
            self.next_repair_scan = now + self.config.repair_interval;
            self.repair_scan(now);
        } else {
            self.pump_repairs(now);
        }
        self.recovery_tick(now);
        if now >= self.next_anti_entropy {
            let jitter = self.rng.random_range(0.75..1.25);
            self.next_anti_entropy = now + self.config.anti_entropy_interval.mul_f64(jitter);
            if !self.live.is_empty() {
                let i = self.rng.random_range(0..self.live.len());
                if let Some(to) = self.live.values().nth(i).cloned() {
                    let digest = self.records.digest();
                    self.send(&to, ReplMsg::CatalogDigest { digest }, None);
                }
            }
        }
    }

    fn request_failed(&mut self, now: Duration, r: InFlight, why: String) {
        match r.request {
            Request::WriterHead { agent } => self.writer_head_done(now, &agent, &r.to, None),
            Request::RegisterHead { reg } => {
                // Go ahead without it: a holder that missed the takeover still refuses
                // a seq that does not grow (see `on_store`).
                if let Some(p) = self.registers.get_mut(&reg) {
                    p.waiting.remove(&r.to);
                }
                self.finish_register_if_ready(now, reg);
            }
            Request::PutStore { put } => {
                if let Some(p) = self.puts.get_mut(&put) {
                    p.failures.insert(r.to, why);
                }
                self.finish_put_if_decided(put);
            }
            Request::Head { get } => {
                if let Some(g) = self.gets.get_mut(&get) {
                    g.waiting.remove(&r.to);
                    g.failures.push(format!("{}: {why}", r.to));
                }
                self.advance_get(now, get);
            }
            Request::GetFetch { get } => self.get_failed(now, get, format!("{}: {why}", r.to)),
            Request::Heal { agent, seq } => self.heal_failed(now, agent, seq, &r.to),
            Request::RepairStore { agent, .. } => self.repair_transfer_done(now, &agent, false),
        }
    }

    // ---- output --------------------------------------------------------------------

    fn send(&mut self, to: &NodeId, msg: ReplMsg, payload: Option<Bytes>) {
        self.effects.push_back(ReplEffect::Send {
            to: to.clone(),
            msg,
            payload,
        });
    }

    fn emit(&mut self, event: ReplEvent) {
        self.effects.push_back(ReplEffect::Event(event));
    }

    pub fn poll_effect(&mut self) -> Option<ReplEffect> {
        self.effects.pop_front()
    }

    // ---- views ---------------------------------------------------------------------

    pub fn agents(&self) -> Vec<AgentView> {
        self.records.values().map(|r| self.view(r)).collect()
    }

    pub fn agent(&self, agent: &AgentId) -> Option<AgentView> {
        self.records.get(agent).map(|r| self.view(r))
    }

    fn view(&self, r: &AgentRecord) -> AgentView {
        AgentView {
            record: r.clone(),
            local_owner: self.owned.contains_key(&r.agent),
            local_versions: self
                .local
                .get(&r.agent)
                .map(|l| l.versions.keys().copied().collect())
                .unwrap_or_default(),
            degraded: self.degraded_of(r),
        }
    }

    /// Agents in the catalog.
    pub fn known_count(&self) -> usize {
        self.records.len()
    }

    /// Agents owned by this node.
    pub fn owned_count(&self) -> usize {
        self.owned.len()
    }

    /// Agents whose copies or zones fall short, among those this node writes.
    pub fn degraded_count(&self) -> usize {
        self.degraded.len()
    }

    /// Versions waiting to be copied by repair on this node.
    pub fn repair_backlog(&self) -> usize {
        self.repairs
            .values()
            .map(|j| j.todo.len() + j.in_flight)
            .sum()
    }

    /// The versions this node holds on disk, for invariant checks.
    pub fn local_versions(&self, agent: &AgentId) -> Vec<SnapMeta> {
        self.local
            .get(agent)
            .map(|l| l.versions.values().copied().collect())
            .unwrap_or_default()
    }
}
