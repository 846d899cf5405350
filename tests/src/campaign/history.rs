//! What a campaign records, and what the checker reads: every acknowledged put, the
//! agent events of every node's event stream, the faults with their times, and the
//! state read back after the faults stopped.
//!
//! All times are milliseconds since the Unix epoch on the one machine that runs the
//! campaign: the nodes stamp their events (`time_ms`) with the same clock the
//! campaign stamps its requests with, so they can be compared directly.
//!
//! The history is written as JSON next to the campaign's logs, so that a failure can
//! be re-checked (`campaign check FILE`) and read without running anything again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One campaign's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub seed: u64,
    /// Node names, in host order.
    pub nodes: Vec<String>,
    /// Every agent the workload registered.
    pub agents: Vec<String>,
    /// Holders each agent should have once settled (the owner's own copy not
    /// counted, as `vigil agents` lists holders).
    pub copies: usize,
    /// Every acknowledged put, in the order the workload recorded the acks.
    pub puts: Vec<AckedPut>,
    /// Agent events from every node's event stream (adopted, fenced, unfenced, owned).
    pub events: Vec<AgentEvent>,
    /// Every fault injected, in start order.
    pub faults: Vec<FaultRecord>,
    /// Read back after the faults stopped; `None` if the campaign did not get there.
    pub end: Option<EndState>,
    /// Why the campaign stopped injecting faults early (a step could not be
    /// injected or undone, e.g. a node that would not restart on its data dir).
    #[serde(default)]
    pub aborted: Option<String>,
    /// Nodes that exited without the campaign killing them (a crash).
    #[serde(default)]
    pub node_exits: Vec<NodeExit>,
}

/// A node found exited that the campaign had not killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeExit {
    pub node: String,
    /// When the campaign noticed (it looks before and after every fault and at the
    /// end).
    pub noticed_ms: u64,
    pub status: String,
}

/// A put the owner acknowledged (HTTP 200 on the socket API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedPut {
    pub agent: String,
    /// The node the put was sent to (which acknowledged it as the agent's owner).
    pub node: String,
    pub epoch: u64,
    pub seq: u64,
    /// Unique per put of this agent (the workload's counter): written into the body,
    /// so a read can tell which put it returns.
    pub nonce: u64,
    /// Just before the request was sent.
    pub sent_ms: u64,
    /// Just after the acknowledgement arrived.
    pub acked_ms: u64,
}

/// An agent event from a node's event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// The reporting node.
    pub node: String,
    /// The reporting node's generation (a restarted node has a new one).
    pub generation: u64,
    /// The node's own timestamp.
    pub time_ms: u64,
    pub agent: String,
    pub epoch: u64,
    pub kind: AgentEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEventKind {
    /// `agent_owned`: the node took ownership at registration (epoch 1) or again
    /// after a restart.
    Owned,
    /// `agent_adopted`: the node adopted the agent at `epoch`, restoring `seq`.
    Adopted { seq: u64, previous: String },
    /// `agent_fenced`: the owner lost its holders' lease and must stop.
    Fenced,
    /// `agent_unfenced`: the lease is back and nobody took the agent.
    Unfenced,
}

/// One fault, as injected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What was done, e.g. `kill -9 n3, restart on its data dir`,
    /// `partition {n1,n2} | {n3,n4,n5}` (`schedule::Described`).
    pub what: String,
    pub start_ms: u64,
    /// When it was undone (healed, resumed, restarted); `None`: never undone
    /// (e.g. a kill whose node stays down).
    pub end_ms: Option<u64>,
}

/// What the campaign read back once the faults had stopped and every node it means
/// to keep was running again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndState {
    /// When the last fault was undone.
    pub quiet_ms: u64,
    /// The bound the campaign states for converging and settling after `quiet_ms`.
    pub bound_ms: u64,
    /// Nodes running at the end.
    pub live: Vec<String>,
    /// When every live node first saw every live node alive; `None`: not within the
    /// bound.
    pub converged_ms: Option<u64>,
    /// When every agent first had exactly one owner, not fenced, whose record lists
    /// `copies` holders that each have the owner's latest seq on disk; `None`: not
    /// within the bound.
    pub settled_ms: Option<u64>,
    /// Per agent: why it was not settled when the bound ran out (empty if settled).
    pub unsettled: BTreeMap<String, String>,
    /// Per agent: the latest snapshot as read back through every live node (each
    /// node's GET asks the holders), or the error it gave.
    pub reads: BTreeMap<String, Vec<ReadBack>>,
    /// Per agent: the live nodes that report it `owned_here`, with their epoch.
    pub owners: BTreeMap<String, Vec<(String, u64)>>,
}

/// One read of an agent's latest snapshot through one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadBack {
    pub via: String,
    pub result: Result<ReadSnapshot, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadSnapshot {
    pub epoch: u64,
    pub seq: u64,
    /// The nonce found in the body; `None` if the body is not one the workload wrote.
    pub nonce: Option<u64>,
}
