//! Recovery without a control plane: leases, coordinator election and adoption.
//!
//! - **Leases.** An owner renews, every quarter of [`ReplicationConfig::lease`], a
//!   lease on each of its agents with the agents' holders. A holder that granted one
//!   refuses to elect a new owner until it expires (measured from when the holder got
//!   the renewal). The owner counts a lease from when it *sent* the renewal, and only
//!   for three quarters of its length, so it always gives up first: when it has not
//!   had grants from enough of an agent's holders that every election majority
//!   includes one of them, for that long, it reports the agent fenced (its launcher
//!   stops it; puts are refused) before any holder may elect. Only an owner holding
//!   its lease changes the agent's holders (the next epoch's electorate).
//! - **Election.** When an agent's owner is down (or gives the agent up, or another
//!   node takes it over), a single-decree Paxos among the agent's holders (the
//!   acceptors) picks one decree per (agent, new epoch): the target host and the seq to
//!   restore. Any node may propose; holders propose for a dead owner, the best-scoring
//!   first and the others after `rank * election_backoff`. A holder whose acceptor has
//!   just answered another live proposer's ballot for the same epoch holds its own
//!   rounds back while that proposer is at work (see [`Rival`]): proposers that
//!   pre-empt each other's ballots can take seconds to agree. The proposer whose decree
//!   is chosen is the coordinator. Without a majority of holders answering, nothing
//!   happens. Acceptor state is persisted before it is answered, so a restarted holder
//!   keeps its promises.
//! - **Adoption.** The coordinator asks the target to adopt; the target confirms the
//!   epoch with a lease quorum of the holders (one round trip: a late `Adopt` for an
//!   epoch superseded meanwhile is refused), then owns the agent at the new epoch and
//!   publishes the record. A chosen target that is down (or does
//!   not answer) is written into the record as owner anyway: the next election, for the
//!   epoch after, moves the agent on. Accepting a decree raises the holder's epoch, so
//!   the old owner's puts are refused by a majority from then on.
//!
//! Every decree's epoch is one above the record it replaces, and an epoch has one
//! decree, so two owners never share an epoch.

use super::*;

/// Agents per lease message (keeps it far below the stream frame limit).
const LEASE_AGENTS_PER_MESSAGE: usize = 256;
/// How long an adoption may take before the coordinator gives up on the target.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the coordinator sends `Adopt` again until the target answers (adopting
/// is idempotent; a lost message would otherwise cost the whole ADOPT_TIMEOUT).
const ADOPT_RESEND: Duration = Duration::from_millis(250);
/// How long one election round waits for answers.
const ROUND_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often pending agents (no target had room) are tried again.
const PENDING_RETRY: Duration = Duration::from_secs(1);
/// Lease renewal rounds remembered (older answers count for nothing).
const LEASE_ROUNDS_KEPT: usize = 16;

/// A Paxos ballot: higher rounds win, the proposer's name breaks ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeName,
}

/// The value one election decides for (agent, epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decree {
    /// The host that owns the agent from this epoch on.
    pub target: NodeName,
    pub target_zone: Zone,
    /// The latest seq a majority of holders had (every acknowledged put is included).
    pub seq: u64,
    /// The proposer whose decree this is.
    pub coordinator: NodeName,
}

/// What an acceptor remembers of the latest election of one agent (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorState {
    /// The new epoch the election is for.
    pub epoch: u64,
    pub promised: Option<Ballot>,
    pub accepted: Option<(Ballot, Decree)>,
}

/// Why an election runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionKind {
    /// The owner is down.
    Recover,
    /// The owner gives the agent up (its local agent keeps failing).
    Handoff,
    /// An application registered the agent on another node.
    Takeover,
}

/// An acceptor's answer to a prepare or an accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaxosAnswer {
    Ok {
        accepted: Option<(Ballot, Decree)>,
        /// The latest seq on the acceptor's disk.
        latest_seq: u64,
    },
    /// A higher ballot was promised.
    Nack { promised: Ballot },
    /// The owner holds a lease on the agent from this acceptor for this long.
    Leased { remaining_ms: u64 },
    /// The acceptor knows this epoch is taken already.
    Stale { epoch: u64 },
}

/// What a node tells the others about itself (sent on streams, so no size pressure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Prefer this node when adopting agents of failed hosts.
    pub standby: bool,
    /// Agents the node is willing to own.
    pub capacity: u32,
    /// Agents it owns now.
    pub owned: u32,
    /// An operator isolated the node: it adopts nothing.
    pub isolated: bool,
}

/// A node that was given no settings: not standby, no limit, not isolated.
impl Default for NodeInfo {
    fn default() -> Self {
        Self {
            standby: false,
            capacity: u32::MAX,
            owned: 0,
            isolated: false,
        }
    }
}

impl NodeInfo {
    fn free(&self) -> i64 {
        i64::from(self.capacity) - i64::from(self.owned)
    }
}

/// Room for adoptions in one zone, as its live members advertise it (capacity minus
/// agents owned, never below 0, per host), isolated hosts left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ZoneCapacity {
    /// On `--standby` hosts, which targets are chosen from first.
    pub standby: u64,
    /// On every host (standby ones included).
    pub all: u64,
    /// Live hosts whose information has not arrived yet (counted as no room).
    pub unadvertised: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting until `at` to start a round.
    Waiting {
        at: Duration,
    },
    Preparing {
        deadline: Duration,
    },
    Accepting {
        deadline: Duration,
    },
    Adopting {
        deadline: Duration,
        /// When `Adopt` is sent again.
        resend: Duration,
    },
}

#[derive(Debug)]
pub(super) struct Election {
    kind: ElectionKind,
    /// The record whose owner is replaced.
    base: AgentRecord,
    epoch: u64,
    ballot: Ballot,
    acceptors: Vec<NodeName>,
    phase: Phase,
    promises: BTreeMap<NodeName, (Option<(Ballot, Decree)>, u64)>,
    accepted_by: BTreeSet<NodeName>,
    decree: Option<Decree>,
    /// Nodes that must not be the target (the owner giving the agent up).
    exclude: BTreeSet<NodeName>,
    /// The registration waiting for a takeover.
    reg: Option<u64>,
    /// Its metadata and priority.
    register: Option<(String, Option<i32>)>,
    /// How many proposers rank before this node (the back-off multiplier).
    rank: u32,
    pending_reported: bool,
    /// Its last wait was a hold for another proposer (see [`Rival`]).
    held: bool,
    started: Duration,
}

/// An owner's view of its leases.
#[derive(Debug, Default)]
pub(super) struct LeaseState {
    round: u64,
    sent: BTreeMap<u64, Duration>,
    /// agent -> holder -> when the holder's latest grant was asked for.
    acks: BTreeMap<AgentId, BTreeMap<NodeName, Duration>>,
    /// When this node started owning each agent (a fresh owner gets one lease time
    /// to collect grants before it counts as fenced).
    since: BTreeMap<AgentId, Duration>,
    next_renew: Duration,
}

/// Recovery state of one node.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    pub(super) acceptors: BTreeMap<AgentId, AcceptorState>,
    pub(super) elections: BTreeMap<AgentId, Election>,
    /// Leases this node granted as a holder: agent -> (owner, until).
    pub(super) granted: BTreeMap<AgentId, (NodeName, Duration)>,
    pub(super) lease: LeaseState,
    pub(super) fenced: BTreeSet<AgentId>,
    pub(super) infos: BTreeMap<NodeName, NodeInfo>,
    /// This node's settings (`owned` is filled in when announced).
    pub(super) me: NodeInfo,
    pub(super) info_sent: Option<NodeInfo>,
    /// Adoptions each target was chosen for by this coordinator and has not confirmed.
    pub(super) planned: BTreeMap<NodeName, u32>,
    pub(super) next_scan: Duration,
    pub(super) highest_round: BTreeMap<AgentId, u64>,
    /// The latest other proposer this node's acceptor answered, per agent.
    pub(super) rivals: BTreeMap<AgentId, Rival>,
    /// Adoptions this node was asked for and is confirming with the agent's holders.
    pub(super) adopting: BTreeMap<AgentId, PendingAdoption>,
}

/// An `Adopt` this node received and has not carried out yet: the epoch may have been
/// superseded while the message was on its way (a stream held up by a partition
/// delivers it after the heal, when another host may have adopted the next epoch),
/// and this node may know nothing of that. So it asks the holders of the agent, with
/// an ordinary lease renewal for the new epoch, and owns the agent only once
/// `lease_quorum` of them granted it: a holder that knows a later epoch or has
/// accepted a decree for one refuses, and one that grants refuses every election for
/// the next epoch while its grant runs, like for any owner. Every election majority
/// includes a granting holder, so no later epoch can be chosen meanwhile.
///
/// A reclaim (a record names this node the owner, but it does not own the agent: it
/// restarted, or a coordinator wrote it into the record while it did not answer) is
/// confirmed the same way, so a node that reaches too few holders never runs an agent
/// that the others may have moved on.
#[derive(Debug)]
pub(super) struct PendingAdoption {
    epoch: u64,
    how: Confirming,
    /// The holders of the new record (the base's, without this node).
    holders: Vec<NodeName>,
    /// Lease rounds sent for it: round -> when.
    rounds: BTreeMap<u64, Duration>,
    /// Holder -> when the round it granted was sent.
    grants: BTreeMap<NodeName, Duration>,
    /// When the holders that have not granted are asked again.
    next_ask: Duration,
    /// Dropped then unless an `Adopt` came again (the coordinator resends until it
    /// gives up, or the next coordinator of the same epoch starts again).
    expires: Duration,
}

#[derive(Debug)]
pub(super) enum Confirming {
    Adopt {
        decree: Decree,
        /// The record being replaced, as the coordinator sent it.
        base: AgentRecord,
        /// Who sent the `Adopt` (answered once adopted or refused).
        coordinator: NodeName,
    },
    /// A registration of the kind `reclaim`, with the record to own.
    Reclaim { reg: u64, record: AgentRecord },
}

/// Another proposer at work on an agent's election, as this node's acceptor saw it.
///
/// Not persisted and not needed for safety (the ballots are): it only keeps two
/// proposers from pre-empting each other round after round. A holder that learns of a
/// death late, or whose back-off ran out while the first proposer waited for fsyncs,
/// would otherwise start a higher ballot and fail the first one's accept phase, which
/// then retries higher still; with three holders this took a median of 651 ms and up
/// to 4.2 s against 77 ms with one proposer (docs/BENCHMARKS.md, "Recovery time").
#[derive(Debug, Clone)]
pub(super) struct Rival {
    epoch: u64,
    node: NodeName,
    /// This node starts no round before then, while `node` is live.
    until: Duration,
}

/// Why a handoff or an isolation cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("agent {agent} is not known to this node")]
    UnknownAgent { agent: AgentId },
    #[error("agent {agent} is owned by {owner}, not by this node")]
    NotOwner { agent: AgentId, owner: NodeName },
    #[error(
        "agent {agent} is owned by {owner}, which is not reachable; isolate it once the owner is back or recovered elsewhere"
    )]
    OwnerUnreachable { agent: AgentId, owner: NodeName },
    #[error("agent {agent} has no copies on other hosts yet, so no other host can take it")]
    NoHolders { agent: AgentId },
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Grants an owner needs from `n` holders to keep its lease: enough that every
/// election majority includes one of them (n + 1 - majority), so one of two holders
/// is enough (an owner that loses one of its two holders keeps its agent and can
/// re-place the copy) while elections still need both.
fn lease_quorum(n: usize) -> usize {
    n + 1 - majority(n)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Replicator {
    // ---- node settings and information ------------------------------------------

    /// This node's standby role and capacity (announced to every member).
    pub fn set_node_settings(&mut self, standby: bool, capacity: u32) {
        self.recovery.me.standby = standby;
        self.recovery.me.capacity = capacity;
        self.announce_info(true);
    }

    /// Isolates (or recovers) this node: an isolated node adopts nothing.
    pub fn set_node_isolated(&mut self, isolated: bool) {
        self.recovery.me.isolated = isolated;
        self.announce_info(true);
    }

    pub fn node_isolated(&self) -> bool {
        self.recovery.me.isolated
    }

    fn my_info(&self) -> NodeInfo {
        let mut info = self.recovery.me.clone();
        info.owned = u32::try_from(self.owned.len()).unwrap_or(u32::MAX);
        info
    }

    /// Sends this node's information to every live member if it changed (or `force`).
    fn announce_info(&mut self, force: bool) {
        let info = self.my_info();
        if !force && self.recovery.info_sent.as_ref() == Some(&info) {
            return;
        }
        self.recovery.info_sent = Some(info.clone());
        let members: Vec<NodeId> = self.live.values().cloned().collect();
        for to in members {
            self.send(&to, ReplMsg::NodeInfo { info: info.clone() }, None);
        }
    }

    pub(super) fn info_to(&mut self, to: &NodeId) {
        let info = self.my_info();
        self.send(to, ReplMsg::NodeInfo { info }, None);
    }

    /// What this node knows of a member's information.
    pub fn node_info(&self, name: &NodeName) -> Option<NodeInfo> {
        if name == &self.me.name {
            return Some(self.my_info());
        }
        self.recovery.infos.get(name).cloned()
    }

    // ---- agent states -------------------------------------------------------------

    /// Whether this node's lease on `agent` lapsed (its local agent must not run).
    pub fn is_fenced(&self, agent: &AgentId) -> bool {
        self.recovery.fenced.contains(agent)
    }

    /// Free capacity per zone of the live members (this node included), from the
    /// information each one advertises; the input of target selection (without the
    /// adoptions a coordinator has just planned).
    pub fn free_capacity(&self) -> BTreeMap<Zone, ZoneCapacity> {
        let mut zones: BTreeMap<Zone, ZoneCapacity> = BTreeMap::new();
        let me = (self.me.zone.clone(), Some(self.my_info()));
        let others = self
            .live
            .values()
            .map(|id| (id.zone.clone(), self.recovery.infos.get(&id.name).cloned()));
        for (zone, info) in std::iter::once(me).chain(others) {
            let room = zones.entry(zone).or_default();
            let Some(info) = info else {
                room.unadvertised = room.unadvertised.saturating_add(1);
                continue;
            };
            if info.isolated {
                continue;
            }
            let free = u64::try_from(info.free()).unwrap_or(0);
            room.all = room.all.saturating_add(free);
            if info.standby {
                room.standby = room.standby.saturating_add(free);
            }
        }
        zones
    }

    /// Agents whose election on this node found no live, non-isolated host with room
    /// (their state is `pending`); retried every second until a host has room.
    pub fn pending_count(&self) -> usize {
        self.recovery
            .elections
            .values()
            .filter(|e| e.pending_reported)
            .count()
    }

    /// Elections this node runs as proposer (recoveries, handoffs, takeovers).
    pub fn elections_running(&self) -> usize {
        self.recovery.elections.len()
    }

    /// Agents owned here whose lease lapsed (they must not run here).
    pub fn fenced_count(&self) -> usize {
        self.recovery.fenced.len()
    }

    /// Whether an election for `agent` runs here and found no host with room.
    pub fn is_pending(&self, agent: &AgentId) -> bool {
        self.recovery
            .elections
            .get(agent)
            .is_some_and(|e| e.pending_reported)
    }

    /// Isolates or recovers an agent. The owner changes its record; any other node
    /// forwards the request to the owner.
    pub fn set_agent_isolated(
        &mut self,
        agent: &AgentId,
        isolated: bool,
    ) -> Result<(), ControlError> {
        let Some(record) = self.records.get(agent).cloned() else {
            return Err(ControlError::UnknownAgent {
                agent: agent.clone(),
            });
        };
        if self.owned.contains_key(agent) {
            if record.isolated != isolated {
                if let Some(r) = self.records.get_mut(agent) {
                    r.isolated = isolated;
                    r.version += 1;
                }
                self.publish(agent);
            }
            self.emit(ReplEvent::AgentIsolation {
                agent: agent.clone(),
                isolated,
            });
            return Ok(());
        }
        let Some(to) = self.live.get(&record.owner).cloned() else {
            return Err(ControlError::OwnerUnreachable {
                agent: agent.clone(),
                owner: record.owner,
            });
        };
        self.send(
            &to,
            ReplMsg::SetIsolated {
                agent: agent.clone(),
                isolated,
            },
            None,
        );
        Ok(())
    }

    /// The owner gives `agent` up (its local process keeps failing): the holders elect
    /// another host for it. Until then the agent counts as fenced here.
    pub fn handoff(&mut self, now: Duration, agent: &AgentId) -> Result<(), ControlError> {
        let Some(record) = self.records.get(agent).cloned() else {
            return Err(ControlError::UnknownAgent {
                agent: agent.clone(),
            });
        };
        if !self.owned.contains_key(agent) {
            return Err(ControlError::NotOwner {
                agent: agent.clone(),
                owner: record.owner,
            });
        }
        if record.holders.is_empty() {
            return Err(ControlError::NoHolders {
                agent: agent.clone(),
            });
        }
        self.recovery.fenced.insert(agent.clone());
        let exclude = BTreeSet::from([self.me.name.clone()]);
        self.new_election(now, ElectionKind::Handoff, record, exclude, None, 0);
        Ok(())
    }

    /// A takeover registration: elect this node as the agent's owner. Returns false
    /// when the agent has no holders to elect with (the caller registers directly).
    pub(super) fn takeover(
        &mut self,
        now: Duration,
        reg: u64,
        record: AgentRecord,
        meta: String,
        priority: Option<i32>,
    ) -> bool {
        if record.holders.is_empty() {
            return false;
        }
        let agent = record.agent.clone();
        self.new_election(
            now,
            ElectionKind::Takeover,
            record,
            BTreeSet::new(),
            Some(reg),
            0,
        );
        if let Some(e) = self.recovery.elections.get_mut(&agent) {
            e.register = Some((meta, priority));
        }
        true
    }

    fn new_election(
        &mut self,
        now: Duration,
        kind: ElectionKind,
        base: AgentRecord,
        exclude: BTreeSet<NodeName>,
        reg: Option<u64>,
        rank: u32,
    ) {
        let agent = base.agent.clone();
        if let Some(old) = self.recovery.elections.remove(&agent)
            && let Some(r) = old.reg
        {
            self.effects.push_back(ReplEffect::RegisterFailed {
                reg: r,
                reason: "another election for this agent started here".into(),
            });
        }
        let acceptors = base.holders.iter().map(|h| h.name.clone()).collect();
        let at = now + self.config.election_backoff * rank;
        self.recovery.elections.insert(
            agent,
            Election {
                kind,
                epoch: base.epoch + 1,
                base,
                ballot: Ballot {
                    round: 0,
                    node: self.me.name.clone(),
                },
                acceptors,
                phase: Phase::Waiting { at },
                promises: BTreeMap::new(),
                accepted_by: BTreeSet::new(),
                decree: None,
                exclude,
                reg,
                register: None,
                rank,
                pending_reported: false,
                held: false,
                started: now,
            },
        );
    }

    // ---- the periodic work ----------------------------------------------------------

    pub(super) fn recovery_timeout(&self) -> Duration {
        let mut next = self.recovery.next_scan.min(self.recovery.lease.next_renew);
        for e in self.recovery.elections.values() {
            next = next.min(match e.phase {
                Phase::Waiting { at } => at,
                Phase::Preparing { deadline } | Phase::Accepting { deadline } => deadline,
                Phase::Adopting { deadline, resend } => deadline.min(resend),
            });
        }
        for p in self.recovery.adopting.values() {
            next = next.min(p.next_ask.min(p.expires));
        }
        next
    }

    pub(super) fn recovery_tick(&mut self, now: Duration) {
        if now >= self.recovery.lease.next_renew {
            self.recovery.lease.next_renew = now + self.config.lease / 4;
            self.renew_leases(now);
        }
        self.check_fencing(now);
        self.confirm_adoptions(now);
        if now >= self.recovery.next_scan {
            self.recovery.next_scan =
                now + self.config.election_backoff.max(Duration::from_millis(50));
            self.orphan_scan(now);
            self.announce_info(false);
        }
        let due: Vec<AgentId> = self
            .recovery
            .elections
            .iter()
            .filter(|(_, e)| match e.phase {
                Phase::Waiting { at } => at <= now,
                Phase::Preparing { deadline } | Phase::Accepting { deadline } => deadline <= now,
                Phase::Adopting { deadline, resend } => deadline.min(resend) <= now,
            })
            .map(|(a, _)| a.clone())
            .collect();
        for agent in due {
            self.advance_election(now, &agent);
        }
    }

    /// Starts elections for agents whose owner is down, where this node holds a copy;
    /// drops elections that are no longer needed.
    fn orphan_scan(&mut self, now: Duration) {
        // No settle gate here (unlike repair): a node just back with an old view
        // proposes at worst for an agent whose owner is alive, and the holders refuse
        // while the owner's lease runs; a stale epoch is refused as such.
        // Highest priority first, so that when targets run short it is the lower
        // priorities that wait.
        let mut orphans: Vec<(i32, AgentId)> = Vec::new();
        for r in self.records.values() {
            if self.needs_recovery(r) && !self.recovery.elections.contains_key(&r.agent) {
                orphans.push((r.priority, r.agent.clone()));
            }
        }
        orphans.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.recovery.rivals.retain(|_, r| r.until > now);
        self.finish_successions(now);
        {
            for (_, agent) in orphans {
                let Some(record) = self.records.get(&agent).cloned() else {
                    continue;
                };
                // Holders propose in the order of their score for the agent; the others
                // wait one back-off per better-placed live holder.
                let mut proposers: Vec<&Holder> = record
                    .holders
                    .iter()
                    .filter(|h| h.name == self.me.name || self.live.contains_key(&h.name))
                    .collect();
                proposers.sort_by_key(|h| std::cmp::Reverse(placement::score(&agent, &h.name)));
                let rank = proposers
                    .iter()
                    .position(|h| h.name == self.me.name)
                    .unwrap_or(proposers.len());
                let rank = u32::try_from(rank).unwrap_or(u32::MAX);
                self.new_election(
                    now,
                    ElectionKind::Recover,
                    record,
                    BTreeSet::new(),
                    None,
                    rank,
                );
            }
        }
        // Elections whose reason went away.
        let stale: Vec<AgentId> = self
            .recovery
            .elections
            .iter()
            .filter(|(agent, e)| {
                let Some(r) = self.records.get(*agent) else {
                    return true;
                };
                match e.kind {
                    // Moved on (adopted, or a newer record), or the owner is back.
                    ElectionKind::Recover => {
                        r.epoch >= e.epoch
                            || (matches!(e.phase, Phase::Waiting { .. }) && !self.needs_recovery(r))
                    }
                    ElectionKind::Handoff | ElectionKind::Takeover => r.epoch >= e.epoch,
                }
            })
            .map(|(a, _)| a.clone())
            .collect();
        for agent in stale {
            if let Some(e) = self.recovery.elections.remove(&agent)
                && let Some(reg) = e.reg
            {
                self.finish_takeover(reg, &agent);
            }
        }
    }

    /// Agents this node stopped owning because a holder had accepted a decree for a
    /// later epoch, while no record of that epoch arrived: the election that decree
    /// belongs to may have stalled (its proposer stopped once this node, the owner,
    /// was seen alive again, and no holder proposes for a live owner). This node
    /// proposes then, as an owner handing off: phase 1 finds the accepted decree and
    /// carries it out. Later than any holder would (two back-offs), so the usual
    /// coordinator finishes first.
    fn finish_successions(&mut self, now: Duration) {
        let stalled: Vec<AgentRecord> = self
            .superseded
            .iter()
            .filter(|(agent, _)| !self.recovery.elections.contains_key(*agent))
            .filter_map(|(agent, (seen, _))| {
                self.records
                    .get(agent)
                    .filter(|r| r.owner == self.me.name && r.epoch < *seen)
                    .filter(|r| !r.holders.is_empty() && !r.isolated)
                    .cloned()
            })
            .collect();
        for record in stalled {
            let exclude = BTreeSet::from([self.me.name.clone()]);
            self.new_election(now, ElectionKind::Handoff, record, exclude, None, 2);
        }
    }

    fn needs_recovery(&self, r: &AgentRecord) -> bool {
        r.is_holder(&self.me.name)
            && r.owner != self.me.name
            && !r.isolated
            && !self.live.contains_key(&r.owner)
    }

    /// Remembers that this node's acceptor answered `from`'s ballot for (agent, epoch).
    fn note_rival(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: &AgentId,
        epoch: u64,
        hold: Duration,
    ) {
        if from == &self.me.name {
            return;
        }
        self.recovery.rivals.insert(
            agent.clone(),
            Rival {
                epoch,
                node: from.clone(),
                until: now + hold,
            },
        );
    }

    /// Until when this node's next round for `agent` waits for another proposer: one
    /// this node's acceptor answered for the same epoch, recently, that is still live.
    /// A proposer that dies is declared down and stops counting, so the hold never
    /// outlasts detection by more than a round.
    fn rival_hold(&self, now: Duration, agent: &AgentId, epoch: u64) -> Option<Duration> {
        self.recovery
            .rivals
            .get(agent)
            .filter(|r| r.epoch == epoch && r.until > now && self.live.contains_key(&r.node))
            .map(|r| r.until)
    }

    fn advance_election(&mut self, now: Duration, agent: &AgentId) {
        let Some(e) = self.recovery.elections.get(agent) else {
            return;
        };
        match e.phase {
            Phase::Waiting { .. } => {
                let (hold, held, rank) = (self.rival_hold(now, agent, e.epoch), e.held, e.rank);
                let backoff = self.config.election_backoff;
                let Some(e) = self.recovery.elections.get_mut(agent) else {
                    return;
                };
                match hold {
                    // Looked at again every back-off: a rival declared down (or done)
                    // releases the hold at once, not when its window would end.
                    Some(until) => {
                        e.held = true;
                        e.phase = Phase::Waiting {
                            at: until.min(now + backoff),
                        };
                    }
                    // Released: the held holders go in their rank order, as at the
                    // start, rather than all at once.
                    None if held && rank > 0 => {
                        e.held = false;
                        e.phase = Phase::Waiting {
                            at: now + backoff * rank,
                        };
                    }
                    None => {
                        e.held = false;
                        self.start_round(now, agent);
                    }
                }
            }
            Phase::Preparing { .. } | Phase::Accepting { .. } => {
                // No majority in time: try again later with a higher ballot.
                self.retry_later(now, agent, None);
            }
            Phase::Adopting { deadline, .. } if now < deadline => self.send_adopt(now, agent),
            Phase::Adopting { .. } => {
                // The target did not confirm: write it down as the owner; if it is
                // down, the next election (for the next epoch) moves the agent on.
                self.install_decree(agent);
            }
        }
    }

    fn retry_later(&mut self, now: Duration, agent: &AgentId, after: Option<Duration>) {
        let jitter = self.rng.random_range(0.5..1.5);
        let Some(e) = self.recovery.elections.get_mut(agent) else {
            return;
        };
        let backoff = self.config.election_backoff * (e.rank + 1);
        let wait = after
            .unwrap_or(backoff.mul_f64(jitter))
            .max(Duration::from_millis(20));
        e.phase = Phase::Waiting { at: now + wait };
    }

    fn start_round(&mut self, now: Duration, agent: &AgentId) {
        let record = self.records.get(agent).cloned();
        let highest = self.recovery.highest_round.get(agent).copied().unwrap_or(0);
        let Some(e) = self.recovery.elections.get_mut(agent) else {
            return;
        };
        // A newer record (adopted, or holders re-placed) is what to elect from.
        if let Some(r) = record
            && (r.epoch, r.version) > (e.base.epoch, e.base.version)
            && r.epoch + 1 == e.epoch
        {
            e.acceptors = r.holders.iter().map(|h| h.name.clone()).collect();
            e.base = r;
        }
        e.ballot = Ballot {
            round: e.ballot.round.max(highest) + 1,
            node: self.me.name.clone(),
        };
        e.promises.clear();
        e.accepted_by.clear();
        e.decree = None;
        e.phase = Phase::Preparing {
            deadline: now + ROUND_TIMEOUT,
        };
        let msg = ReplMsg::Prepare {
            agent: agent.clone(),
            epoch: e.epoch,
            ballot: e.ballot.clone(),
            kind: e.kind,
        };
        let acceptors = e.acceptors.clone();
        let (kind, epoch, round) = (e.kind, e.epoch, e.ballot.round);
        let previous = e.base.owner.clone();
        if round == 1 || kind != ElectionKind::Recover {
            self.emit(ReplEvent::ElectionStarted {
                agent: agent.clone(),
                epoch,
                kind,
                previous,
            });
        }
        self.recovery.highest_round.insert(agent.clone(), round);
        for a in acceptors {
            self.send_or_local(now, &a, msg.clone());
        }
    }

    /// Sends to a member, or handles the message here when it is for this node.
    fn send_or_local(&mut self, now: Duration, to: &NodeName, msg: ReplMsg) {
        if to == &self.me.name {
            let me = self.me.name.clone();
            self.handle_message(now, &me, msg, None);
        } else if let Some(id) = self.live.get(to).cloned() {
            self.send(&id, msg, None);
        }
    }

    // ---- acceptor ---------------------------------------------------------------------

    /// The epoch `agent` is known to have reached here (records, copies, and decrees
    /// accepted).
    pub(super) fn epoch_known(&self, agent: &AgentId) -> u64 {
        let record = self.records.get(agent).map_or(0, |r| r.epoch);
        let local = self.local.get(agent).map_or(0, |l| l.max_epoch);
        let accepted = self
            .recovery
            .acceptors
            .get(agent)
            .filter(|s| s.accepted.is_some())
            .map_or(0, |s| s.epoch);
        record.max(local).max(accepted)
    }

    fn acceptor_check(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: &AgentId,
        epoch: u64,
        ballot: &Ballot,
        kind: ElectionKind,
    ) -> Result<(), PaxosAnswer> {
        // Taken when a record or a stored version has the epoch (an owner used it);
        // not merely because this acceptor accepted a decree for it, which raised its
        // fencing epoch but may never have been carried out.
        let known = self.records.get(agent).map_or(0, |r| r.epoch);
        let written = self
            .local
            .get(agent)
            .and_then(|l| l.versions.values().map(|m| m.epoch).max())
            .unwrap_or(0);
        if known.max(written) >= epoch {
            return Err(PaxosAnswer::Stale {
                epoch: known.max(written),
            });
        }
        if kind != ElectionKind::Takeover
            && let Some((owner, until)) = self.recovery.granted.get(agent)
            && *until > now
            && owner != from
        {
            return Err(PaxosAnswer::Leased {
                remaining_ms: ms(*until - now).max(1),
            });
        }
        let state = self
            .recovery
            .acceptors
            .entry(agent.clone())
            .or_insert(AcceptorState {
                epoch,
                promised: None,
                accepted: None,
            });
        if state.epoch > epoch {
            return Err(PaxosAnswer::Stale { epoch: state.epoch });
        }
        if state.epoch < epoch {
            *state = AcceptorState {
                epoch,
                promised: None,
                accepted: None,
            };
        }
        if let Some(p) = &state.promised
            && p > ballot
        {
            return Err(PaxosAnswer::Nack {
                promised: p.clone(),
            });
        }
        Ok(())
    }

    pub(super) fn on_prepare(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        kind: ElectionKind,
    ) {
        let answer = match self.acceptor_check(now, from, &agent, epoch, &ballot, kind) {
            Err(refusal) => refusal,
            Ok(()) => {
                let latest_seq = self.latest_local_seq(&agent);
                let Some(state) = self.recovery.acceptors.get_mut(&agent) else {
                    return;
                };
                state.promised = Some(ballot.clone());
                let accepted = state.accepted.clone();
                let state = state.clone();
                // Its accept phase follows within a round. Noted now, not once the
                // promise is on disk: a holder that learns of the death during that
                // fsync would otherwise start a competing round (if the write fails,
                // this node only waits a round for nothing).
                self.note_rival(now, from, &agent, epoch, ROUND_TIMEOUT);
                let reply = ReplMsg::Promise {
                    agent: agent.clone(),
                    epoch,
                    ballot,
                    answer: PaxosAnswer::Ok {
                        accepted,
                        latest_seq,
                    },
                };
                return self.persist_then_reply(now, from, agent, state, reply);
            }
        };
        let reply = ReplMsg::Promise {
            agent,
            epoch,
            ballot,
            answer,
        };
        self.send_or_local(now, from, reply);
    }

    pub(super) fn on_accept(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        (kind, decree): (ElectionKind, Decree),
    ) {
        let answer = match self.acceptor_check(now, from, &agent, epoch, &ballot, kind) {
            Err(refusal) => refusal,
            Ok(()) => {
                let latest_seq = self.latest_local_seq(&agent);
                let Some(state) = self.recovery.acceptors.get_mut(&agent) else {
                    return;
                };
                state.promised = Some(ballot.clone());
                state.accepted = Some((ballot.clone(), decree));
                let state = state.clone();
                // Chosen, most likely: the adoption follows (or times out and is
                // written down) within ADOPT_TIMEOUT.
                self.note_rival(now, from, &agent, epoch, ROUND_TIMEOUT + ADOPT_TIMEOUT);
                // From now on this holder refuses the old owner's puts: the epoch it
                // wrote under is being replaced.
                let local = self.local.entry(agent.clone()).or_default();
                local.max_epoch = local.max_epoch.max(epoch);
                let reply = ReplMsg::Accepted {
                    agent: agent.clone(),
                    epoch,
                    ballot,
                    answer: PaxosAnswer::Ok {
                        accepted: None,
                        latest_seq,
                    },
                };
                return self.persist_then_reply(now, from, agent, state, reply);
            }
        };
        let reply = ReplMsg::Accepted {
            agent,
            epoch,
            ballot,
            answer,
        };
        self.send_or_local(now, from, reply);
    }

    fn persist_then_reply(
        &mut self,
        _now: Duration,
        to: &NodeName,
        agent: AgentId,
        state: AcceptorState,
        reply: ReplMsg,
    ) {
        let op = self.op();
        self.disk_ops.insert(
            op,
            DiskOp::Acceptor {
                to: to.clone(),
                reply: Box::new(reply),
            },
        );
        self.effects
            .push_back(ReplEffect::PersistAcceptor { op, agent, state });
    }

    /// An acceptor state was written: its answer may go out.
    pub(super) fn acceptor_persisted(
        &mut self,
        now: Duration,
        to: NodeName,
        reply: ReplMsg,
        result: Result<(), String>,
    ) {
        // An answer whose promise is not on disk would not survive a restart: the
        // proposer times out and tries again instead.
        if result.is_ok() {
            self.send_or_local(now, &to, reply);
        }
    }

    /// Acceptor states read back at start.
    pub fn load_acceptors(&mut self, states: Vec<(AgentId, AcceptorState)>) {
        for (agent, state) in states {
            self.recovery.acceptors.insert(agent, state);
        }
    }

    // ---- proposer ---------------------------------------------------------------------

    pub(super) fn on_promise(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        answer: PaxosAnswer,
    ) {
        let Some(e) = self.recovery.elections.get_mut(&agent) else {
            return;
        };
        if e.epoch != epoch || e.ballot != ballot || !matches!(e.phase, Phase::Preparing { .. }) {
            return;
        }
        match answer {
            PaxosAnswer::Ok {
                accepted,
                latest_seq,
            } => {
                if e.acceptors.contains(from) {
                    e.promises.insert(from.clone(), (accepted, latest_seq));
                }
            }
            other => return self.refused(now, &agent, other),
        }
        if e.promises.len() < majority(e.acceptors.len()) {
            return;
        }
        // The value: the one accepted under the highest ballot, if any (Paxos), else a
        // new decree from what the majority reported.
        let prior = e
            .promises
            .values()
            .filter_map(|(a, _)| a.clone())
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, d)| d);
        let seq = e
            .promises
            .values()
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
            .max(e.base.seq);
        let decree = match prior {
            Some(d) => d,
            None => {
                let (kind, base, exclude) = (e.kind, e.base.clone(), e.exclude.clone());
                let target = if kind == ElectionKind::Takeover {
                    Some((self.me.name.clone(), self.me.zone.clone()))
                } else {
                    self.select_target(&base, &exclude)
                };
                let Some((target, target_zone)) = target else {
                    return self.no_target(now, &agent);
                };
                Decree {
                    target,
                    target_zone,
                    seq,
                    coordinator: self.me.name.clone(),
                }
            }
        };
        let Some(e) = self.recovery.elections.get_mut(&agent) else {
            return;
        };
        e.decree = Some(decree.clone());
        e.phase = Phase::Accepting {
            deadline: now + ROUND_TIMEOUT,
        };
        let msg = ReplMsg::Accept {
            agent: agent.clone(),
            epoch,
            ballot: e.ballot.clone(),
            kind: e.kind,
            decree,
        };
        let acceptors = e.acceptors.clone();
        for a in acceptors {
            self.send_or_local(now, &a, msg.clone());
        }
    }

    fn no_target(&mut self, now: Duration, agent: &AgentId) {
        let Some(e) = self.recovery.elections.get_mut(agent) else {
            return;
        };
        let first = !e.pending_reported;
        e.pending_reported = true;
        e.phase = Phase::Waiting {
            at: now + PENDING_RETRY,
        };
        let (epoch, reg, previous) = (e.epoch, e.reg, e.base.owner.clone());
        if first {
            self.emit(ReplEvent::AgentPending {
                agent: agent.clone(),
                epoch,
                previous,
                reason: "no live, non-isolated host with free capacity".into(),
            });
        }
        if let Some(reg) = reg {
            self.recovery.elections.remove(agent);
            self.effects.push_back(ReplEffect::RegisterFailed {
                reg,
                reason: "no host can take the agent".into(),
            });
        }
    }

    fn refused(&mut self, now: Duration, agent: &AgentId, answer: PaxosAnswer) {
        match answer {
            PaxosAnswer::Ok { .. } => {}
            PaxosAnswer::Nack { promised } => {
                let h = self
                    .recovery
                    .highest_round
                    .entry(agent.clone())
                    .or_default();
                *h = (*h).max(promised.round);
                self.retry_later(now, agent, None);
            }
            PaxosAnswer::Leased { remaining_ms } => {
                // Every holder refused until about the same expiry (each times it
                // from when it got the owner's renewal): keep the proposers' rank
                // order past it, or they all start at once and pre-empt each other.
                let rank = self.recovery.elections.get(agent).map_or(0, |e| e.rank);
                let wait = Duration::from_millis(remaining_ms)
                    + Duration::from_millis(10)
                    + self.config.election_backoff * rank;
                self.retry_later(now, agent, Some(wait));
            }
            PaxosAnswer::Stale { .. } => {
                // The epoch is taken: the record that says so arrives by gossip; ask
                // the scan to look again then.
                if let Some(e) = self.recovery.elections.remove(agent)
                    && let Some(reg) = e.reg
                {
                    self.effects.push_back(ReplEffect::RegisterFailed {
                        reg,
                        reason: "another node took the agent over at the same time; retry".into(),
                    });
                }
            }
        }
    }

    pub(super) fn on_accepted(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: AgentId,
        epoch: u64,
        ballot: Ballot,
        answer: PaxosAnswer,
    ) {
        let Some(e) = self.recovery.elections.get_mut(&agent) else {
            return;
        };
        if e.epoch != epoch || e.ballot != ballot || !matches!(e.phase, Phase::Accepting { .. }) {
            return;
        }
        match answer {
            PaxosAnswer::Ok { .. } => {
                if e.acceptors.contains(from) {
                    e.accepted_by.insert(from.clone());
                }
            }
            other => return self.refused(now, &agent, other),
        }
        if e.accepted_by.len() < majority(e.acceptors.len()) {
            return;
        }
        let Some(decree) = e.decree.clone() else {
            return;
        };
        // Chosen: this node is the coordinator.
        e.phase = Phase::Adopting {
            deadline: now + ADOPT_TIMEOUT,
            resend: now,
        };
        let elapsed = now.saturating_sub(e.started);
        let previous = e.base.owner.clone();
        *self
            .recovery
            .planned
            .entry(decree.target.clone())
            .or_default() += 1;
        self.emit(ReplEvent::CoordinatorElected {
            agent: agent.clone(),
            epoch,
            target: decree.target.clone(),
            previous,
            elapsed,
        });
        if decree.target != self.me.name && !self.live.contains_key(&decree.target) {
            return self.install_decree(&agent);
        }
        self.send_adopt(now, &agent);
    }

    /// Asks the chosen target to adopt (again, until it answers or ADOPT_TIMEOUT).
    fn send_adopt(&mut self, now: Duration, agent: &AgentId) {
        let Some(e) = self.recovery.elections.get_mut(agent) else {
            return;
        };
        let (Some(decree), Phase::Adopting { deadline, .. }) = (e.decree.clone(), e.phase.clone())
        else {
            return;
        };
        if decree.target != self.me.name && !self.live.contains_key(&decree.target) {
            // Declared down meanwhile: write it down now (the next election moves the
            // agent on) instead of waiting out the deadline.
            return self.install_decree(agent);
        }
        let Some(e) = self.recovery.elections.get_mut(agent) else {
            return;
        };
        e.phase = Phase::Adopting {
            deadline,
            resend: now + ADOPT_RESEND,
        };
        let msg = ReplMsg::Adopt {
            agent: agent.clone(),
            epoch: e.epoch,
            decree: Box::new(decree.clone()),
            record: Box::new(e.base.clone()),
        };
        self.send_or_local(now, &decree.target, msg);
    }

    /// The decree's target becomes the owner in the record, adopted or not.
    fn install_decree(&mut self, agent: &AgentId) {
        let Some(e) = self.recovery.elections.remove(agent) else {
            return;
        };
        let Some(decree) = e.decree else {
            return;
        };
        self.unplan(&decree.target);
        if decree.target == self.me.name {
            if let Some(reg) = e.reg {
                if let Some((meta, priority)) = e.register
                    && self.owned.contains_key(agent)
                    && let Some(r) = self.records.get_mut(agent)
                {
                    let priority = priority.unwrap_or(r.priority);
                    if r.meta != meta || r.priority != priority {
                        r.meta = meta;
                        r.priority = priority;
                        r.version += 1;
                        self.publish(agent);
                    }
                }
                self.finish_takeover(reg, agent);
            }
            return;
        }
        let record = AgentRecord {
            owner: decree.target.clone(),
            owner_zone: decree.target_zone.clone(),
            epoch: e.epoch,
            seq: decree.seq,
            holders: e
                .base
                .holders
                .iter()
                .filter(|h| h.name != decree.target)
                .cloned()
                .collect(),
            version: 0,
            isolated: false,
            ..e.base
        };
        if self.merge_record(record) {
            self.publish(agent);
        }
        if let Some(reg) = e.reg {
            self.finish_takeover(reg, agent);
        }
    }

    fn unplan(&mut self, target: &NodeName) {
        if let Some(n) = self.recovery.planned.get_mut(target) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.recovery.planned.remove(target);
            }
        }
    }

    fn finish_takeover(&mut self, reg: u64, agent: &AgentId) {
        match self.records.get(agent) {
            Some(r) if self.owned.contains_key(agent) => {
                let record = r.clone();
                self.effects
                    .push_back(ReplEffect::RegisterDone { reg, record });
            }
            Some(r) => {
                let reason = format!(
                    "agent {agent} was given to {} at epoch {} instead",
                    r.owner, r.epoch
                );
                self.effects
                    .push_back(ReplEffect::RegisterFailed { reg, reason });
            }
            None => self.effects.push_back(ReplEffect::RegisterFailed {
                reg,
                reason: "the agent vanished".into(),
            }),
        }
    }

    /// The best host to adopt an agent: live, not isolated, with room; standby hosts
    /// first, then hosts outside the failed owner's zone, then the most room, then the
    /// agent's own score (spreads agents of one host over many).
    fn select_target(
        &self,
        record: &AgentRecord,
        exclude: &BTreeSet<NodeName>,
    ) -> Option<(NodeName, Zone)> {
        let mut candidates: Vec<(NodeName, Zone, NodeInfo)> = self
            .live
            .values()
            .filter_map(|id| {
                self.recovery
                    .infos
                    .get(&id.name)
                    .map(|i| (id.name.clone(), id.zone.clone(), i.clone()))
            })
            .collect();
        candidates.push((self.me.name.clone(), self.me.zone.clone(), self.my_info()));
        candidates
            .into_iter()
            .filter(|(name, _, info)| {
                name != &record.owner && !exclude.contains(name) && !info.isolated
            })
            .map(|(name, zone, info)| {
                let planned = i64::from(self.recovery.planned.get(&name).copied().unwrap_or(0));
                let free = info.free() - planned;
                (name, zone, info.standby, free)
            })
            .filter(|(_, _, _, free)| *free > 0)
            .max_by_key(|(name, zone, standby, free)| {
                (
                    *standby,
                    *zone != record.owner_zone,
                    *free,
                    placement::score(&record.agent, name),
                )
            })
            .map(|(name, zone, _, _)| (name, zone))
    }

    // ---- adoption ---------------------------------------------------------------------

    pub(super) fn on_adopt(
        &mut self,
        now: Duration,
        from: &NodeName,
        agent: AgentId,
        epoch: u64,
        decree: Decree,
        base: AgentRecord,
    ) {
        if decree.target != self.me.name || base.agent != agent {
            return;
        }
        if !self.may_adopt(&agent, epoch) {
            let reply = ReplMsg::Adopted {
                owned: self.owned.contains_key(&agent),
                agent,
                epoch,
            };
            return self.send_or_local(now, from, reply);
        }
        // Not owned yet: the holders confirm the epoch first (see `PendingAdoption`).
        let holders: Vec<NodeName> = base
            .holders
            .iter()
            .filter(|h| h.name != self.me.name)
            .map(|h| h.name.clone())
            .collect();
        let how = Confirming::Adopt {
            decree,
            base,
            coordinator: from.clone(),
        };
        self.confirm_then_own(now, &agent, epoch, holders, how);
    }

    /// Owns `agent` at `epoch` once `lease_quorum` of `holders` granted it (at once
    /// without holders); meanwhile the adoption or reclaim is pending.
    pub(super) fn confirm_then_own(
        &mut self,
        now: Duration,
        agent: &AgentId,
        epoch: u64,
        holders: Vec<NodeName>,
        how: Confirming,
    ) {
        match self.recovery.adopting.get_mut(agent) {
            // A resend, or the same decree from the next coordinator of this epoch:
            // the grants collected so far still count.
            Some(p) if p.epoch == epoch && matches!(how, Confirming::Adopt { .. }) => {
                p.how = how;
                p.expires = now + ADOPT_TIMEOUT;
            }
            _ => {
                self.recovery.adopting.insert(
                    agent.clone(),
                    PendingAdoption {
                        epoch,
                        how,
                        holders,
                        rounds: BTreeMap::new(),
                        grants: BTreeMap::new(),
                        next_ask: now,
                        expires: now + ADOPT_TIMEOUT,
                    },
                );
            }
        }
        if self.confirmed(now, agent) {
            return self.finish_adoption(now, agent);
        }
        if self
            .recovery
            .adopting
            .get(agent)
            .is_some_and(|p| p.next_ask <= now)
        {
            self.ask_holders(now, std::slice::from_ref(agent));
        }
    }

    /// Whether an `Adopt` for `epoch` may still be carried out here, as far as this
    /// node knows: not when it knows a later epoch (it lost the agent after adopting
    /// it, accepted a later decree, was refused by a holder that knew one, or is
    /// confirming a later adoption), nor when it owns the epoch already or the epoch
    /// has another owner.
    fn may_adopt(&self, agent: &AgentId, epoch: u64) -> bool {
        let later_known = self
            .superseded
            .get(agent)
            .is_some_and(|(seen, _)| *seen > epoch)
            || self.local.get(agent).is_some_and(|l| l.max_epoch > epoch)
            || self
                .recovery
                .adopting
                .get(agent)
                .is_some_and(|p| p.epoch > epoch);
        let owned_here = self.owned.contains_key(agent);
        !later_known
            && match self.records.get(agent) {
                Some(r) if r.epoch > epoch => false,
                Some(r) if r.epoch == epoch && owned_here => false,
                Some(r) if r.epoch == epoch && r.owner != self.me.name => false,
                _ => true,
            }
    }

    /// Sends one lease round, for the new epoch, to the holders of these pending
    /// adoptions that have not granted it yet.
    fn ask_holders(&mut self, now: Duration, agents: &[AgentId]) {
        let mut by_holder: BTreeMap<NodeName, Vec<(AgentId, u64)>> = BTreeMap::new();
        for agent in agents {
            let Some(p) = self.recovery.adopting.get(agent) else {
                continue;
            };
            for h in &p.holders {
                if !p.grants.contains_key(h) && self.live.contains_key(h) {
                    by_holder
                        .entry(h.clone())
                        .or_default()
                        .push((agent.clone(), p.epoch));
                }
            }
        }
        // Its own round number, but not in the owner's table of rounds (a burst of
        // adoptions must not push the renewals of owned agents out of it).
        self.recovery.lease.round += 1;
        let round = self.recovery.lease.round;
        for agent in agents {
            if let Some(p) = self.recovery.adopting.get_mut(agent) {
                p.rounds.insert(round, now);
                while p.rounds.len() > LEASE_ROUNDS_KEPT {
                    p.rounds.pop_first();
                }
                p.next_ask = now + ADOPT_RESEND;
            }
        }
        self.send_lease_renewals(round, by_holder);
    }

    /// Whether enough holders granted a pending adoption, with grants still valid.
    fn confirmed(&self, now: Duration, agent: &AgentId) -> bool {
        let Some(p) = self.recovery.adopting.get(agent) else {
            return false;
        };
        let valid_for = self.config.lease.mul_f64(0.75);
        let valid = p
            .grants
            .values()
            .filter(|sent| **sent + valid_for > now)
            .count();
        valid >= lease_quorum(p.holders.len())
    }

    /// Re-asks the holders of pending adoptions, and drops the ones that expired or
    /// that this node learnt are superseded.
    fn confirm_adoptions(&mut self, now: Duration) {
        let agents: Vec<(AgentId, u64, Duration, Duration)> = self
            .recovery
            .adopting
            .iter()
            .map(|(a, p)| (a.clone(), p.epoch, p.next_ask, p.expires))
            .collect();
        let mut due = Vec::new();
        for (agent, epoch, next_ask, expires) in agents {
            if expires <= now {
                // The coordinator gave up (and wrote this node into the record
                // unconfirmed), or died: its successor sends the decree again.
                self.recovery.adopting.remove(&agent);
            } else if !self.may_adopt(&agent, epoch) {
                self.drop_adoption(now, &agent, None);
            } else if next_ask <= now {
                due.push(agent);
            }
        }
        if !due.is_empty() {
            self.ask_holders(now, &due);
        }
    }

    /// A pending adoption will not be carried out: a holder knows `later` (recorded,
    /// so that resends of the `Adopt` are ignored too), or this node learnt it is
    /// superseded. The coordinator is told, so that it stops sending.
    fn drop_adoption(&mut self, now: Duration, agent: &AgentId, later: Option<u64>) {
        let Some(p) = self.recovery.adopting.remove(agent) else {
            return;
        };
        if let Some(seen) = later {
            let entry = self.superseded.entry(agent.clone()).or_insert((seen, None));
            entry.0 = entry.0.max(seen);
        }
        if let Confirming::Adopt { coordinator, .. } = p.how {
            let reply = ReplMsg::Adopted {
                agent: agent.clone(),
                epoch: p.epoch,
                owned: false,
            };
            self.send_or_local(now, &coordinator, reply);
        }
    }

    /// A quorum of the holders confirmed a pending adoption: this node owns the agent
    /// from the decree's epoch on, with the lease those grants give.
    fn finish_adoption(&mut self, now: Duration, agent: &AgentId) {
        let Some(epoch) = self.recovery.adopting.get(agent).map(|p| p.epoch) else {
            return;
        };
        if !self.may_adopt(agent, epoch) {
            // A record of a later epoch arrived meanwhile.
            return self.drop_adoption(now, agent, None);
        }
        let Some(p) = self.recovery.adopting.remove(agent) else {
            return;
        };
        let PendingAdoption {
            epoch, how, grants, ..
        } = p;
        // The lease runs from the grants (no grace for a fresh owner is needed): from
        // when the earliest of them was asked for.
        let since = grants.values().min().copied().unwrap_or(now).min(now);
        let (decree, base, from) = match how {
            Confirming::Adopt {
                decree,
                base,
                coordinator,
            } => (decree, base, coordinator),
            Confirming::Reclaim { reg, record } => {
                // The record as it is now (checked above: same epoch, this owner).
                let record = self
                    .records
                    .get(agent)
                    .filter(|r| r.epoch == record.epoch && r.owner == self.me.name)
                    .cloned()
                    .map_or(record.clone(), |mut r| {
                        r.seq = r.seq.max(record.seq);
                        r
                    });
                self.records.insert(agent.clone(), record.clone());
                self.own(agent);
                self.recovery.lease.since.insert(agent.clone(), since);
                self.recovery.lease.acks.insert(agent.clone(), grants);
                self.recovery.lease.next_renew = now;
                self.emit(ReplEvent::AgentOwned {
                    agent: agent.clone(),
                    epoch: record.epoch,
                });
                self.next_repair_scan = self.next_repair_scan.min(now);
                self.effects
                    .push_back(ReplEffect::RegisterDone { reg, record });
                return;
            }
        };
        let current = self.records.get(agent).cloned();
        let seq = decree.seq.max(base.seq).max(
            current
                .as_ref()
                .filter(|r| r.epoch == epoch)
                .map_or(0, |r| r.seq),
        );
        let previous = base.owner.clone();
        let record = AgentRecord {
            agent: agent.clone(),
            owner: self.me.name.clone(),
            owner_zone: self.me.zone.clone(),
            epoch,
            seq,
            holders: base
                .holders
                .iter()
                .filter(|h| h.name != self.me.name)
                .cloned()
                .collect(),
            // Above the version 0 a coordinator installs for a silent target.
            version: 1,
            meta: base.meta.clone(),
            priority: base.priority,
            isolated: false,
        };
        self.superseded.remove(agent);
        self.recovery.fenced.remove(agent);
        self.records.insert(agent.clone(), record);
        let local = self.local.entry(agent.clone()).or_default();
        local.max_epoch = local.max_epoch.max(epoch);
        self.own(agent);
        self.recovery.lease.since.insert(agent.clone(), since);
        self.recovery.lease.acks.insert(agent.clone(), grants);
        self.recovery.lease.next_renew = now;
        self.writer_synced.remove(agent);
        self.next_repair_scan = self.next_repair_scan.min(now);
        self.publish(agent);
        self.emit(ReplEvent::AgentAdopted {
            agent: agent.clone(),
            epoch,
            seq,
            previous,
            coordinator: decree.coordinator.clone(),
        });
        let reply = ReplMsg::Adopted {
            agent: agent.clone(),
            epoch,
            owned: true,
        };
        self.send_or_local(now, &from, reply);
    }

    pub(super) fn on_adopted(&mut self, from: &NodeName, agent: AgentId, epoch: u64) {
        let Some(e) = self.recovery.elections.get(&agent) else {
            return;
        };
        let target_matches = e.decree.as_ref().is_some_and(|d| &d.target == from);
        if e.epoch != epoch || !target_matches || !matches!(e.phase, Phase::Adopting { .. }) {
            return;
        }
        self.install_decree(&agent);
    }

    // ---- leases -----------------------------------------------------------------------

    fn renew_leases(&mut self, now: Duration) {
        let mut by_holder: BTreeMap<NodeName, Vec<(AgentId, u64)>> = BTreeMap::new();
        for agent in self.owned.keys() {
            let Some(r) = self.records.get(agent) else {
                continue;
            };
            if r.isolated {
                continue;
            }
            for h in &r.holders {
                if self.live.contains_key(&h.name) {
                    by_holder
                        .entry(h.name.clone())
                        .or_default()
                        .push((agent.clone(), r.epoch));
                }
            }
        }
        if by_holder.is_empty() {
            return;
        }
        let lease = &mut self.recovery.lease;
        lease.round += 1;
        let round = lease.round;
        lease.sent.insert(round, now);
        while lease.sent.len() > LEASE_ROUNDS_KEPT {
            lease.sent.pop_first();
        }
        self.send_lease_renewals(round, by_holder);
    }

    /// One `LeaseRenew` per live holder (in chunks) for round `round`: the owner's
    /// renewals and a pending adoption's confirmation ask the same way.
    fn send_lease_renewals(
        &mut self,
        round: u64,
        by_holder: BTreeMap<NodeName, Vec<(AgentId, u64)>>,
    ) {
        for (holder, agents) in by_holder {
            let Some(to) = self.live.get(&holder).cloned() else {
                continue;
            };
            for chunk in agents.chunks(LEASE_AGENTS_PER_MESSAGE) {
                self.send(
                    &to,
                    ReplMsg::LeaseRenew {
                        round,
                        agents: chunk.to_vec(),
                    },
                    None,
                );
            }
        }
    }

    pub(super) fn on_lease_renew(
        &mut self,
        now: Duration,
        from: &NodeName,
        round: u64,
        agents: Vec<(AgentId, u64)>,
    ) {
        let Some(to) = self.live.get(from).cloned() else {
            return;
        };
        let mut granted = Vec::new();
        let mut refused = Vec::new();
        for (agent, epoch) in agents.into_iter().take(LEASE_AGENTS_PER_MESSAGE) {
            let seen = self.epoch_known(&agent);
            // A decree accepted for a later epoch: the owner is being replaced.
            let electing = self
                .recovery
                .acceptors
                .get(&agent)
                .is_some_and(|s| s.accepted.is_some() && s.epoch > epoch);
            if seen > epoch || electing {
                refused.push((agent, seen.max(epoch + u64::from(electing))));
            } else {
                self.recovery
                    .granted
                    .insert(agent.clone(), (from.clone(), now + self.config.lease));
                granted.push(agent);
            }
        }
        self.send(
            &to,
            ReplMsg::LeaseReply {
                round,
                granted,
                refused,
            },
            None,
        );
    }

    pub(super) fn on_lease_reply(
        &mut self,
        now: Duration,
        from: &NodeName,
        round: u64,
        granted: Vec<AgentId>,
        refused: Vec<(AgentId, u64)>,
    ) {
        // Answers for pending adoptions (rounds of their own).
        let (mut granted, mut refused) = (granted, refused);
        let mut confirmed = Vec::new();
        granted.retain(|agent| {
            let Some(p) = self.recovery.adopting.get_mut(agent) else {
                return true;
            };
            let Some(&sent) = p.rounds.get(&round) else {
                return true;
            };
            if p.holders.contains(from) {
                let t = p.grants.entry(from.clone()).or_insert(sent);
                *t = (*t).max(sent);
                confirmed.push(agent.clone());
            }
            false
        });
        let mut superseded = Vec::new();
        refused.retain(|(agent, epoch)| match self.recovery.adopting.get(agent) {
            Some(p) if p.rounds.contains_key(&round) => {
                if *epoch > p.epoch {
                    superseded.push((agent.clone(), *epoch));
                }
                false
            }
            _ => true,
        });
        for (agent, epoch) in superseded {
            self.drop_adoption(now, &agent, Some(epoch));
        }
        for agent in confirmed {
            if self.confirmed(now, &agent) {
                self.finish_adoption(now, &agent);
            }
        }
        let Some(&sent) = self.recovery.lease.sent.get(&round) else {
            return;
        };
        for agent in granted {
            if self.owned.contains_key(&agent) {
                let acks = self.recovery.lease.acks.entry(agent).or_default();
                let t = acks.entry(from.clone()).or_insert(sent);
                *t = (*t).max(sent);
            }
        }
        for (agent, epoch) in refused {
            let ours = self.records.get(&agent).map_or(0, |r| r.epoch);
            if epoch > ours && self.owned.remove(&agent).is_some() {
                self.superseded.insert(agent.clone(), (epoch, None));
                self.recovery.fenced.remove(&agent);
                self.emit(ReplEvent::AgentLost {
                    agent,
                    owner: None,
                    epoch,
                });
            }
        }
        self.check_fencing(now);
    }

    /// Fences owned agents whose lease lapsed; lifts the fence when enough
    /// holders grant it again (nobody took the agent over meanwhile).
    fn check_fencing(&mut self, now: Duration) {
        let valid_for = self.config.lease.mul_f64(0.75);
        let mut changes = Vec::new();
        for agent in self.owned.keys() {
            let Some(r) = self.records.get(agent) else {
                continue;
            };
            if r.holders.is_empty() || r.isolated {
                continue;
            }
            let held = self.lease_held(now, r);
            let fenced = self.recovery.fenced.contains(agent);
            let handing_off = self
                .recovery
                .elections
                .get(agent)
                .is_some_and(|e| e.kind == ElectionKind::Handoff);
            let since = self.recovery.lease.since.get(agent).copied().unwrap_or(now);
            if !held && !fenced && now >= since + valid_for {
                changes.push((agent.clone(), r.epoch, true));
            } else if held && fenced && !handing_off {
                changes.push((agent.clone(), r.epoch, false));
            }
        }
        for (agent, epoch, fence) in changes {
            if fence {
                self.recovery.fenced.insert(agent.clone());
                self.emit(ReplEvent::AgentFenced { agent, epoch });
            } else {
                self.recovery.fenced.remove(&agent);
                self.emit(ReplEvent::AgentUnfenced { agent, epoch });
            }
        }
    }

    /// Whether this node holds unexpired grants on `record`'s agent from enough of its
    /// holders that no election for the next epoch can succeed meanwhile.
    fn lease_held(&self, now: Duration, record: &AgentRecord) -> bool {
        let valid_for = self.config.lease.mul_f64(0.75);
        let acks = self.recovery.lease.acks.get(&record.agent);
        let valid = record
            .holders
            .iter()
            .filter(|h| {
                acks.and_then(|a| a.get(&h.name))
                    .is_some_and(|t| *t + valid_for > now)
            })
            .count();
        valid >= lease_quorum(record.holders.len())
    }

    /// Whether this node, as owner, may change `record`'s holders now. The holders
    /// are the electorate of the agent's next epoch, so only an owner whose lease
    /// keeps every election from succeeding may replace them: a fenced owner on the
    /// minority side of a partition that re-placed its copies would hand the agent a
    /// second electorate, unaware of the election the old one may be holding.
    pub(super) fn may_change_holders(&self, now: Duration, record: &AgentRecord) -> bool {
        record.holders.is_empty()
            || (!self.recovery.fenced.contains(&record.agent) && self.lease_held(now, record))
    }

    /// Starts the lease clock of a newly owned agent.
    pub(super) fn lease_start(&mut self, now: Duration, agent: &AgentId) {
        self.recovery.lease.since.insert(agent.clone(), now);
        self.recovery.lease.next_renew = self.recovery.lease.next_renew.min(now);
    }

    /// Forgets the lease state of an agent this node no longer owns.
    pub(super) fn lease_forget(&mut self, agent: &AgentId) {
        self.recovery.lease.acks.remove(agent);
        self.recovery.lease.since.remove(agent);
        self.recovery.fenced.remove(agent);
    }

    /// Agents owned here whose lease lapsed, for views.
    pub fn fenced_agents(&self) -> impl Iterator<Item = &AgentId> {
        self.recovery.fenced.iter()
    }

    /// The acceptor state of an agent (for tests and invariant checks).
    pub fn acceptor_state(&self, agent: &AgentId) -> Option<&AcceptorState> {
        self.recovery.acceptors.get(agent)
    }

    /// Elections running here, for views: (agent, epoch, kind, phase name).
    pub fn elections(&self) -> Vec<(AgentId, u64, ElectionKind, &'static str)> {
        self.recovery
            .elections
            .iter()
            .map(|(a, e)| {
                let phase = match e.phase {
                    Phase::Waiting { .. } if e.pending_reported => "pending",
                    Phase::Waiting { .. } => "waiting",
                    Phase::Preparing { .. } => "preparing",
                    Phase::Accepting { .. } => "accepting",
                    Phase::Adopting { .. } => "adopting",
                };
                (a.clone(), e.epoch, e.kind, phase)
            })
            .collect()
    }
}
