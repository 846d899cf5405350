//! The campaign checker: reads a [`History`] and reports what broke the guarantees
//! users rely on (docs/API.md, "Agents and snapshots"): an acknowledged snapshot lost,
//! two owners accepting writes at once, epochs or seqs going backwards, and a cluster
//! that does not settle once the faults stop.
//!
//! [`check`] is a pure function: no IO, no clock, and the same history always gives
//! the same report, in the same order (agents in name order, each agent's anomalies
//! in rule order, then the cluster-wide ones).
//!
//! Every rule names the legal behaviour it must not flag; the guiding one is that the
//! history only holds *acknowledged* puts. A put that failed or got no answer is not
//! in it, yet it may have consumed a seq, and may or may not survive. So the rules
//! only ever compare acknowledged puts with each other, with events, and with reads;
//! they never expect seqs to be contiguous. Times compare with strict inequalities:
//! stamps are whole milliseconds, and two stamps in the same millisecond say nothing
//! about which came first.
//!
//! The rules assume the workload puts with the default acknowledgement (`quorum`):
//! with `ack=local` an acknowledged put may legally be lost with its owner.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::history::{
    AckedPut, AgentEvent, AgentEventKind, EndState, History, NodeExit, ReadBack, ReadSnapshot,
};

#[cfg(test)]
mod tests;

/// How many entries of a long list (unsettled agents, failed reads, RTO figures) the
/// [`Display`](fmt::Display) of a report prints; the data keeps them all.
pub const DISPLAY_CAP: usize = 10;

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub seed: u64,
    pub summary: Summary,
    /// Empty: the history shows none of the anomalies the checker looks for.
    pub anomalies: Vec<Anomaly>,
    /// Reads that failed for an agent that other reads returned (not an anomaly: a
    /// node may not reach the copies in time). An agent whose every read failed is
    /// an [`Anomaly::Unreadable`] instead.
    pub failed_reads: Vec<FailedRead>,
    /// Recovery time of each adoption that a fault on the previous owner explains.
    pub rto: Vec<AdoptionRto>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// Counts over the whole history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub nodes: usize,
    /// Registered agents (and any agent a put or an event names besides).
    pub agents: usize,
    pub puts_acknowledged: usize,
    /// `agent_adopted` events (exact duplicates counted once, as everywhere).
    pub adoptions: usize,
    pub fences: usize,
    pub unfences: usize,
    /// Node restarts seen in the events: a node's distinct generations, minus one.
    pub restarts: usize,
    pub faults: usize,
    /// Faults by kind: the first word of their description (`kill`, `SIGSTOP`,
    /// `partition`, `one-way`, `link`, `disk`).
    #[serde(default)]
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Successful and failed reads at the end (0 and 0 if the campaign did not get
    /// there).
    pub reads_ok: usize,
    pub reads_failed: usize,
    /// Over [`Report::rto`]; `None` if no adoption was attributable.
    pub rto_ms: Option<Spread>,
}

/// Min, median (the lower one of an even count) and max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    pub count: usize,
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

impl Spread {
    fn of(mut values: Vec<u64>) -> Option<Spread> {
        values.sort_unstable();
        Some(Spread {
            count: values.len(),
            min: *values.first()?,
            median: values[(values.len() - 1) / 2],
            max: *values.last()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRead {
    pub agent: String,
    pub via: String,
    pub error: String,
}

/// From the start of the fault that hit an agent's previous owner to the agent's
/// adoption elsewhere.
///
/// Attributable means: the latest fault that names the previous owner (in its
/// description, as a whole word), started after the agent's adoption before this one
/// (if any) and no later than this adoption, and was still in effect when the
/// adoption happened (not undone yet, or undone at the same time or later). An
/// adoption with no such fault (the owner was isolated, re-registered elsewhere, or
/// its fault ended first) has no figure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptionRto {
    pub agent: String,
    pub epoch: u64,
    pub node: String,
    pub previous: String,
    pub fault: String,
    pub fault_start_ms: u64,
    pub adopted_ms: u64,
    pub rto_ms: u64,
}

/// One node's claim to own an agent at an epoch: the first time it acknowledged a put
/// or adopted the agent at that epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerClaim {
    pub node: String,
    /// `"put"` (an acknowledged put: `time_ms` is its `acked_ms`) or `"adopted"`.
    pub how: String,
    pub time_ms: u64,
}

/// Something the history shows that the guarantees rule out. Each variant carries
/// what a person needs to find it in the history and the nodes' logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Anomaly {
    /// The campaign stopped injecting faults early: a step could not be injected or
    /// undone (e.g. a node did not come back on its data dir).
    CampaignAborted { error: String },
    /// A node exited without the campaign killing it.
    NodeExited { exit: NodeExit },
    /// After the cluster settled, a read through a node failed (every node must serve
    /// every agent's latest snapshot once everything is quiet).
    ReadFailedAfterSettle { read: FailedRead },
    /// The history has no end state: the campaign stopped before reading back, so
    /// the end-state rules (reads, owners, settling) could not be checked.
    CampaignDidNotFinish {
        /// The latest time anywhere in the history, to tell where it stopped.
        last_record_ms: Option<u64>,
    },
    /// Rule 1: a read at the end returned a seq below the agent's latest
    /// acknowledged put.
    LostAcknowledged {
        agent: String,
        acked: AckedPut,
        via: String,
        read: ReadSnapshot,
    },
    /// Rule 1: a read at the end returned the latest acknowledged seq with other
    /// content (another nonce, or a body the workload did not write).
    ReplacedAcknowledged {
        agent: String,
        acked: AckedPut,
        via: String,
        read: ReadSnapshot,
    },
    /// Rule 1: a read above the latest acknowledged seq that is not an
    /// unacknowledged put of the workload: its body is not one the workload wrote
    /// (`same_nonce` None), or it is the body of an acknowledged put with another
    /// seq (`same_nonce`).
    UnexplainedRead {
        agent: String,
        acked: AckedPut,
        via: String,
        read: ReadSnapshot,
        same_nonce: Option<AckedPut>,
    },
    /// Rule 1: an agent with acknowledged puts that no read at the end returned
    /// (every read failed, or none was made).
    Unreadable {
        agent: String,
        acked: AckedPut,
        errors: Vec<FailedRead>,
    },
    /// Rule 2: an adoption restored a seq below a put acknowledged at an older epoch.
    AdoptionBehindAck {
        agent: String,
        adoption: AgentEvent,
        restored_seq: u64,
        acked: AckedPut,
    },
    /// Rule 2: the adopter acknowledged a put at the adopted epoch whose seq is not
    /// above the seq it restored (so two different snapshots carry that seq).
    PutNotAboveRestored {
        agent: String,
        adoption: AgentEvent,
        restored_seq: u64,
        put: AckedPut,
    },
    /// Rule 3a: two nodes acknowledged puts, or adopted, at the same agent epoch.
    TwoOwnersInEpoch {
        agent: String,
        epoch: u64,
        claims: Vec<OwnerClaim>,
    },
    /// Rules 3b and 4: a put at an older epoch was sent after a put at a newer epoch
    /// had been acknowledged, and was acknowledged too: two owners accepted writes
    /// at once, and the agent's epoch went backwards in real time.
    OlderEpochAckedAfterNewer {
        agent: String,
        newer: AckedPut,
        older: AckedPut,
    },
    /// Rule 3c: a node acknowledged a put sent after it fenced the agent at that
    /// epoch, with nothing lifting the fence before the acknowledgement.
    AckedWhileFenced {
        agent: String,
        fence: AgentEvent,
        put: AckedPut,
    },
    /// Rule 3d: more than one live node reports owning the agent at the end.
    OwnersAtEnd {
        agent: String,
        owners: Vec<(String, u64)>,
    },
    /// Rule 4: a put sent after another one was acknowledged got a seq that is not
    /// higher (epochs in order; see [`Anomaly::OlderEpochAckedAfterNewer`]).
    SeqNotIncreasing {
        agent: String,
        earlier: AckedPut,
        later: AckedPut,
    },
    /// Rule 4: acknowledged puts with the same epoch and seq but different content.
    ConflictingAcks {
        agent: String,
        epoch: u64,
        seq: u64,
        puts: Vec<AckedPut>,
    },
    /// Rule 4: an adoption at a lower epoch than an earlier adoption of the agent.
    AdoptionEpochWentBackwards {
        agent: String,
        earlier: AgentEvent,
        later: AgentEvent,
    },
    /// Rule 4: a read at the end returned an epoch below the agent's highest
    /// acknowledged one.
    ReadEpochBehind {
        agent: String,
        acked: AckedPut,
        via: String,
        read: ReadSnapshot,
    },
    /// Rule 5: the live nodes did not converge within the bound after the faults.
    NotConverged {
        quiet_ms: u64,
        bound_ms: u64,
        converged_ms: Option<u64>,
    },
    /// Rule 5: the agents did not settle (one live owner, all copies) within the
    /// bound after the faults.
    NotSettled {
        quiet_ms: u64,
        bound_ms: u64,
        settled_ms: Option<u64>,
        unsettled: BTreeMap<String, String>,
    },
}

impl Anomaly {
    /// The variant's name as serialized (`"lost_acknowledged"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Anomaly::CampaignDidNotFinish { .. } => "campaign_did_not_finish",
            Anomaly::CampaignAborted { .. } => "campaign_aborted",
            Anomaly::NodeExited { .. } => "node_exited",
            Anomaly::ReadFailedAfterSettle { .. } => "read_failed_after_settle",
            Anomaly::LostAcknowledged { .. } => "lost_acknowledged",
            Anomaly::ReplacedAcknowledged { .. } => "replaced_acknowledged",
            Anomaly::UnexplainedRead { .. } => "unexplained_read",
            Anomaly::Unreadable { .. } => "unreadable",
            Anomaly::AdoptionBehindAck { .. } => "adoption_behind_ack",
            Anomaly::PutNotAboveRestored { .. } => "put_not_above_restored",
            Anomaly::TwoOwnersInEpoch { .. } => "two_owners_in_epoch",
            Anomaly::OlderEpochAckedAfterNewer { .. } => "older_epoch_acked_after_newer",
            Anomaly::AckedWhileFenced { .. } => "acked_while_fenced",
            Anomaly::OwnersAtEnd { .. } => "owners_at_end",
            Anomaly::SeqNotIncreasing { .. } => "seq_not_increasing",
            Anomaly::ConflictingAcks { .. } => "conflicting_acks",
            Anomaly::AdoptionEpochWentBackwards { .. } => "adoption_epoch_went_backwards",
            Anomaly::ReadEpochBehind { .. } => "read_epoch_behind",
            Anomaly::NotConverged { .. } => "not_converged",
            Anomaly::NotSettled { .. } => "not_settled",
        }
    }

    /// The agent it concerns; `None` for the cluster-wide ones.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Anomaly::LostAcknowledged { agent, .. }
            | Anomaly::ReplacedAcknowledged { agent, .. }
            | Anomaly::UnexplainedRead { agent, .. }
            | Anomaly::Unreadable { agent, .. }
            | Anomaly::AdoptionBehindAck { agent, .. }
            | Anomaly::PutNotAboveRestored { agent, .. }
            | Anomaly::TwoOwnersInEpoch { agent, .. }
            | Anomaly::OlderEpochAckedAfterNewer { agent, .. }
            | Anomaly::AckedWhileFenced { agent, .. }
            | Anomaly::OwnersAtEnd { agent, .. }
            | Anomaly::SeqNotIncreasing { agent, .. }
            | Anomaly::ConflictingAcks { agent, .. }
            | Anomaly::AdoptionEpochWentBackwards { agent, .. }
            | Anomaly::ReadEpochBehind { agent, .. } => Some(agent),
            Anomaly::ReadFailedAfterSettle { read } => Some(&read.agent),
            Anomaly::CampaignAborted { .. }
            | Anomaly::NodeExited { .. }
            | Anomaly::CampaignDidNotFinish { .. }
            | Anomaly::NotConverged { .. }
            | Anomaly::NotSettled { .. } => None,
        }
    }
}

/// Checks `history` against the rules (see each [`Anomaly`] variant and the comments
/// in the rule functions below).
pub fn check(history: &History) -> Report {
    let restarts = restarts(history);
    let all_events = dedup_events(&history.events);
    let mut agents: BTreeSet<&str> = history.agents.iter().map(String::as_str).collect();
    let mut puts: BTreeMap<&str, Vec<&AckedPut>> = BTreeMap::new();
    for p in &history.puts {
        agents.insert(&p.agent);
        puts.entry(&p.agent).or_default().push(p);
    }
    let mut agent_events: BTreeMap<&str, Vec<&AgentEvent>> = BTreeMap::new();
    for e in &all_events {
        agents.insert(&e.agent);
        agent_events.entry(&e.agent).or_default().push(e);
    }

    let mut anomalies = Vec::new();
    let mut failed_reads = Vec::new();
    let (mut reads_ok, mut reads_failed) = (0, 0);
    for &agent in &agents {
        let puts = puts.get(agent).map_or(&[][..], Vec::as_slice);
        let events = agent_events.get(agent).map_or(&[][..], Vec::as_slice);
        if let Some(end) = &history.end {
            let reads = end.reads.get(agent).map_or(&[][..], Vec::as_slice);
            reads_ok += reads.iter().filter(|r| r.result.is_ok()).count();
            reads_failed += reads.iter().filter(|r| r.result.is_err()).count();
            check_reads(agent, puts, reads, &mut anomalies, &mut failed_reads);
        }
        check_adoptions(agent, puts, events, &mut anomalies);
        check_two_owners(agent, puts, events, &mut anomalies);
        check_real_time(agent, puts, &mut anomalies);
        check_fences(agent, puts, &all_events, &restarts, &mut anomalies);
        if let Some(end) = &history.end {
            check_owners_at_end(agent, end.owners.get(agent), &mut anomalies);
        }
        check_conflicting_acks(agent, puts, &mut anomalies);
        check_adoption_order(agent, events, &mut anomalies);
    }
    if let Some(error) = &history.aborted {
        anomalies.push(Anomaly::CampaignAborted {
            error: error.clone(),
        });
    }
    for exit in &history.node_exits {
        anomalies.push(Anomaly::NodeExited { exit: exit.clone() });
    }
    // Once settled, nothing excuses a failed read (during the bound, a read may
    // fail while a node catches up; they are only noted then).
    // An agent none of whose reads succeeded is already `Unreadable`; one without an
    // acknowledged put may legally have nothing to read.
    if history.end.as_ref().is_some_and(|e| e.settled_ms.is_some()) {
        for read in failed_reads
            .iter()
            .filter(|r| puts.contains_key(r.agent.as_str()))
        {
            anomalies.push(Anomaly::ReadFailedAfterSettle { read: read.clone() });
        }
    }
    match &history.end {
        None => anomalies.insert(
            0,
            Anomaly::CampaignDidNotFinish {
                last_record_ms: last_record_ms(history),
            },
        ),
        Some(end) => check_settled(end, &mut anomalies),
    }
    // Agents in name order; within an agent, the order the rules ran in above.
    let rank = |a: &Anomaly| match a {
        Anomaly::CampaignDidNotFinish { .. }
        | Anomaly::CampaignAborted { .. }
        | Anomaly::NodeExited { .. } => 0,
        Anomaly::NotConverged { .. } | Anomaly::NotSettled { .. } => 2,
        _ => 1,
    };
    anomalies.sort_by_key(|a| (rank(a), a.agent().map(str::to_owned)));

    let rto = adoption_rtos(history, &all_events);
    let summary = Summary {
        nodes: node_names(history, &all_events).len(),
        agents: agents.len(),
        puts_acknowledged: history.puts.len(),
        adoptions: all_events.iter().filter(|e| is_adopted(e)).count(),
        fences: all_events
            .iter()
            .filter(|e| e.kind == AgentEventKind::Fenced)
            .count(),
        unfences: all_events
            .iter()
            .filter(|e| e.kind == AgentEventKind::Unfenced)
            .count(),
        restarts: restarts.len(),
        faults: history.faults.len(),
        faults_by_kind: history.faults.iter().fold(BTreeMap::new(), |mut m, f| {
            let kind = f.what.split_whitespace().next().unwrap_or("?");
            *m.entry(kind.to_string()).or_insert(0) += 1;
            m
        }),
        reads_ok,
        reads_failed,
        rto_ms: Spread::of(rto.iter().map(|r| r.rto_ms).collect()),
    };
    Report {
        seed: history.seed,
        summary,
        anomalies,
        failed_reads,
        rto,
    }
}

/// The events with exact repeats dropped (an event stream resumed by index may hand
/// the campaign one twice), in the history's order.
fn dedup_events(events: &[AgentEvent]) -> Vec<&AgentEvent> {
    let mut seen = BTreeSet::new();
    events
        .iter()
        .filter(|e| {
            let kind = match &e.kind {
                AgentEventKind::Owned => (0, 0, ""),
                AgentEventKind::Adopted { seq, previous } => (1, *seq, previous.as_str()),
                AgentEventKind::Fenced => (2, 0, ""),
                AgentEventKind::Unfenced => (3, 0, ""),
            };
            seen.insert((
                e.node.as_str(),
                e.generation,
                e.time_ms,
                e.agent.as_str(),
                e.epoch,
                kind,
            ))
        })
        .collect()
}

fn is_adopted(e: &AgentEvent) -> bool {
    matches!(e.kind, AgentEventKind::Adopted { .. })
}

fn adopted_seq(e: &AgentEvent) -> Option<u64> {
    match e.kind {
        AgentEventKind::Adopted { seq, .. } => Some(seq),
        AgentEventKind::Owned | AgentEventKind::Fenced | AgentEventKind::Unfenced => None,
    }
}

/// The agent's latest acknowledged put: the highest seq (seqs go on across epochs),
/// then the highest epoch and the latest acknowledgement. Two acknowledged puts that
/// tie on seq are an anomaly of their own (rules 2, 4), reported there.
fn latest_acked<'h>(puts: &[&'h AckedPut]) -> Option<&'h AckedPut> {
    puts.iter()
        .copied()
        .max_by_key(|p| (p.seq, p.epoch, p.acked_ms, p.nonce))
}

/// Rule 1, and rule 4's "final reads' epoch".
///
/// Every read that succeeded must return the latest acknowledged put or something
/// newer: a lower seq lost it; the same seq with another nonce replaced it. A higher
/// seq is legal only as a put the workload sent but saw no acknowledgement for
/// (unacknowledged puts may or may not survive, and a failed put may have consumed a
/// seq, so how much higher does not matter). The history does not list unacknowledged
/// puts, so that is checked by what it can tell: the body must be one the workload
/// wrote (a nonce), and not the body of an acknowledged put (nonces are unique per put
/// of an agent, so that put's content would be stored under a second seq).
///
/// A read's epoch below the highest acknowledged epoch returned a snapshot older than
/// the newest owner's acknowledged put; reads return the highest (epoch, seq), so an
/// unacknowledged put of a zombie at an older epoch must not win either.
///
/// One anomaly per read at most (the first that applies, in that order). Reads that
/// failed are only noted, unless none succeeded: then the acknowledged state cannot be
/// read at all. An agent with no acknowledged put has nothing to lose: its reads are
/// not checked (a 404 or an empty snapshot is fine).
fn check_reads(
    agent: &str,
    puts: &[&AckedPut],
    reads: &[ReadBack],
    out: &mut Vec<Anomaly>,
    failed: &mut Vec<FailedRead>,
) {
    let errors: Vec<FailedRead> = reads
        .iter()
        .filter_map(|r| {
            r.result.as_ref().err().map(|e| FailedRead {
                agent: agent.to_owned(),
                via: r.via.clone(),
                error: e.clone(),
            })
        })
        .collect();
    let Some(acked) = latest_acked(puts) else {
        failed.extend(errors);
        return;
    };
    if errors.len() == reads.len() {
        out.push(Anomaly::Unreadable {
            agent: agent.to_owned(),
            acked: acked.clone(),
            errors,
        });
        return;
    }
    failed.extend(errors);
    let highest_epoch = puts
        .iter()
        .copied()
        .max_by_key(|p| (p.epoch, p.seq, p.acked_ms, p.nonce));
    for r in reads {
        let Ok(read) = &r.result else { continue };
        let (agent, via, read) = (agent.to_owned(), r.via.clone(), read.clone());
        let acked = acked.clone();
        if read.seq < acked.seq {
            out.push(Anomaly::LostAcknowledged {
                agent,
                acked,
                via,
                read,
            });
        } else if read.seq == acked.seq && read.nonce != Some(acked.nonce) {
            out.push(Anomaly::ReplacedAcknowledged {
                agent,
                acked,
                via,
                read,
            });
        } else if let Some(h) = highest_epoch.filter(|h| read.epoch < h.epoch) {
            out.push(Anomaly::ReadEpochBehind {
                agent,
                acked: h.clone(),
                via,
                read,
            });
        } else if read.seq > acked.seq {
            let same_nonce = puts
                .iter()
                .find(|p| Some(p.nonce) == read.nonce && p.seq != read.seq)
                .map(|p| (*p).clone());
            if read.nonce.is_none() || same_nonce.is_some() {
                out.push(Anomaly::UnexplainedRead {
                    agent,
                    acked,
                    via,
                    read,
                    same_nonce,
                });
            }
        }
    }
}

/// Rule 2. An adoption at epoch e restores what the holders agreed is the latest
/// snapshot; any put acknowledged at an epoch below e was on a majority of holders
/// before the election for e could complete (a majority of holders had to promise e
/// first, and they refuse older epochs after that), whatever the wall-clock order. So
/// the restored seq is at least every such put's seq. Restoring more is legal (an
/// unacknowledged put that reached the holders); restoring exactly the highest such
/// seq restores that put (the adoption event has no nonce to compare; the reads
/// check content at the end).
///
/// The adopter numbers its puts from the restored seq on: each put it acknowledges at
/// epoch e has a seq above it (restored + 1 for the first, or higher if a failed put
/// consumed one). Puts at e acknowledged by another node are rule 3a's. Only the
/// first offending put per adoption is reported.
fn check_adoptions(
    agent: &str,
    puts: &[&AckedPut],
    events: &[&AgentEvent],
    out: &mut Vec<Anomaly>,
) {
    for e in events {
        let Some(restored_seq) = adopted_seq(e) else {
            continue;
        };
        let behind = puts
            .iter()
            .filter(|p| p.epoch < e.epoch)
            .max_by_key(|p| (p.seq, p.epoch, p.acked_ms, p.nonce))
            .filter(|p| p.seq > restored_seq);
        if let Some(p) = behind {
            out.push(Anomaly::AdoptionBehindAck {
                agent: agent.to_owned(),
                adoption: (*e).clone(),
                restored_seq,
                acked: (*p).clone(),
            });
        }
        let not_above = puts
            .iter()
            .filter(|p| p.epoch == e.epoch && p.node == e.node && p.seq <= restored_seq)
            .min_by_key(|p| (p.seq, p.acked_ms, p.nonce));
        if let Some(p) = not_above {
            out.push(Anomaly::PutNotAboveRestored {
                agent: agent.to_owned(),
                adoption: (*e).clone(),
                restored_seq,
                put: (*p).clone(),
            });
        }
    }
}

/// Rule 3a. An epoch has one owner: epochs are raised by one each time another node
/// takes the agent (adoption or registration elsewhere), and only the owner accepts
/// puts (there is no forwarding). A node restarted on its data dir keeps its name, so
/// it is the same claimant. `agent_owned` events are not claims here: a restarted
/// node may report owning a stale epoch for a moment before it learns better, which
/// is harmless while it acknowledges nothing.
fn check_two_owners(
    agent: &str,
    puts: &[&AckedPut],
    events: &[&AgentEvent],
    out: &mut Vec<Anomaly>,
) {
    let mut claims: BTreeMap<u64, BTreeMap<String, OwnerClaim>> = BTreeMap::new();
    let mut claim = |epoch: u64, node: &str, how: &str, time_ms: u64| {
        let c = claims
            .entry(epoch)
            .or_default()
            .entry(node.to_owned())
            .or_insert_with(|| OwnerClaim {
                node: node.to_owned(),
                how: how.to_owned(),
                time_ms,
            });
        if time_ms < c.time_ms {
            *c = OwnerClaim {
                node: node.to_owned(),
                how: how.to_owned(),
                time_ms,
            };
        }
    };
    for p in puts {
        claim(p.epoch, &p.node, "put", p.acked_ms);
    }
    for e in events.iter().filter(|e| is_adopted(e)) {
        claim(e.epoch, &e.node, "adopted", e.time_ms);
    }
    for (epoch, nodes) in claims {
        if nodes.len() > 1 {
            let mut claims: Vec<OwnerClaim> = nodes.into_values().collect();
            claims.sort_by(|a, b| (a.time_ms, &a.node).cmp(&(b.time_ms, &b.node)));
            out.push(Anomaly::TwoOwnersInEpoch {
                agent: agent.to_owned(),
                epoch,
                claims,
            });
        }
    }
}

/// Rules 3b and 4 (real-time order). If P1 was acknowledged before P2 was sent
/// (`P1.acked_ms < P2.sent_ms`, strictly), P2 reached its owner after P1 was on a
/// majority of holders, so:
/// - P2's epoch is not below P1's: the holders refuse older epochs, and a fenced or
///   superseded owner stops (an older epoch acknowledged after a newer one means two
///   owners accepted writes at once);
/// - P2's seq is above P1's: the owner numbers puts upwards, and a newer owner starts
///   above every acknowledged put (rule 2). Gaps are fine (failed puts consume seqs).
///
/// Puts that overlap in time are not ordered and not compared. For each P2 only the
/// strongest witness is reported: the earlier put with the highest epoch if that is
/// above P2's, else the earlier put with the highest seq if that is not below P2's.
fn check_real_time(agent: &str, puts: &[&AckedPut], out: &mut Vec<Anomaly>) {
    let mut by_ack: Vec<&AckedPut> = puts.to_vec();
    by_ack.sort_by_key(|p| (p.acked_ms, p.sent_ms, p.epoch, p.seq, p.nonce));
    // Prefix maxima: the put with the highest epoch / seq among by_ack[..=i].
    let (mut max_epoch, mut max_seq) = (Vec::new(), Vec::new());
    for p in &by_ack {
        let e = match max_epoch.last() {
            Some(&m) if (m as &AckedPut).epoch >= p.epoch => m,
            _ => *p,
        };
        let s = match max_seq.last() {
            Some(&m) if (m as &AckedPut).seq >= p.seq => m,
            _ => *p,
        };
        max_epoch.push(e);
        max_seq.push(s);
    }
    let mut by_sent: Vec<&AckedPut> = puts.to_vec();
    by_sent.sort_by_key(|p| (p.sent_ms, p.acked_ms, p.epoch, p.seq, p.nonce));
    for later in by_sent {
        let n = by_ack.partition_point(|p| p.acked_ms < later.sent_ms);
        let Some(i) = n.checked_sub(1) else { continue };
        let (newer, earlier) = (max_epoch[i], max_seq[i]);
        if newer.epoch > later.epoch {
            out.push(Anomaly::OlderEpochAckedAfterNewer {
                agent: agent.to_owned(),
                newer: newer.clone(),
                older: later.clone(),
            });
        } else if earlier.seq >= later.seq && !std::ptr::eq(earlier, later) {
            out.push(Anomaly::SeqNotIncreasing {
                agent: agent.to_owned(),
                earlier: earlier.clone(),
                later: later.clone(),
            });
        }
    }
}

/// Rule 3c. A node that fenced an agent at epoch e refuses its puts until the fence
/// lifts. What lifts it, all legal: `agent_unfenced` for that agent; the node owning
/// it anew (`agent_owned`, `agent_adopted`); the campaign restarting the node (a
/// `kill -9` fault on it, undone after the fence: fences are not kept across
/// restarts, and a restarted node must reclaim before it accepts puts). A new
/// generation alone does not lift it: a node that rejoins after a pause or a
/// partition takes a new generation in the same process and keeps its fences. A put
/// is flagged only if it was sent
/// strictly after the fence and nothing lifted the fence by the time it was
/// acknowledged: a fence lifted while the put was in flight may have been lifted
/// before the node looked at the put. The node stamps its events with the machine
/// clock the campaign stamps puts with. Events in the same millisecond as the fence
/// count as after it if the history lists them after it.
fn check_fences(
    agent: &str,
    puts: &[&AckedPut],
    all: &[&AgentEvent],
    restarts: &[(&str, u64)],
    out: &mut Vec<Anomaly>,
) {
    let mut flagged = BTreeSet::new();
    for (f, fence) in all.iter().enumerate() {
        if fence.agent != agent || fence.kind != AgentEventKind::Fenced {
            continue;
        }
        let lifted_ms = all
            .iter()
            .enumerate()
            .filter(|(j, e)| {
                e.node == fence.node
                    && (e.time_ms > fence.time_ms || (e.time_ms == fence.time_ms && *j > f))
            })
            .filter(|(_, e)| e.agent == agent && e.kind != AgentEventKind::Fenced)
            .map(|(_, e)| e.time_ms)
            .chain(
                restarts
                    .iter()
                    .filter(|(node, at)| *node == fence.node && *at > fence.time_ms)
                    .map(|(_, at)| *at),
            )
            .min();
        for (i, p) in puts.iter().enumerate() {
            if p.node == fence.node
                && p.epoch == fence.epoch
                && p.sent_ms > fence.time_ms
                && lifted_ms.is_none_or(|t| t > p.acked_ms)
                && flagged.insert(i)
            {
                out.push(Anomaly::AckedWhileFenced {
                    agent: agent.to_owned(),
                    fence: (*fence).clone(),
                    put: (*p).clone(),
                });
            }
        }
    }
}

/// Rule 3d. The end state lists, per agent, the live nodes reporting it owned here.
/// More than one distinct node is two owners once everything was quiet. (None at all
/// is rule 5's: the agent is not settled.)
fn check_owners_at_end(agent: &str, owners: Option<&Vec<(String, u64)>>, out: &mut Vec<Anomaly>) {
    let Some(owners) = owners else { return };
    let nodes: BTreeSet<&str> = owners.iter().map(|(n, _)| n.as_str()).collect();
    if nodes.len() > 1 {
        out.push(Anomaly::OwnersAtEnd {
            agent: agent.to_owned(),
            owners: owners.clone(),
        });
    }
}

/// Rule 4. One owner numbers an epoch's puts, so an (epoch, seq) names one snapshot:
/// two acknowledged puts with it and different nonces mean two snapshots were
/// acknowledged as the same version. The same put recorded twice (same nonce) is not
/// flagged.
fn check_conflicting_acks(agent: &str, puts: &[&AckedPut], out: &mut Vec<Anomaly>) {
    let mut by_version: BTreeMap<(u64, u64), Vec<&AckedPut>> = BTreeMap::new();
    for p in puts {
        by_version.entry((p.epoch, p.seq)).or_default().push(p);
    }
    for ((epoch, seq), group) in by_version {
        let nonces: BTreeSet<u64> = group.iter().map(|p| p.nonce).collect();
        if nonces.len() > 1 {
            out.push(Anomaly::ConflictingAcks {
                agent: agent.to_owned(),
                epoch,
                seq,
                puts: group.into_iter().cloned().collect(),
            });
        }
    }
}

/// Rule 4. Each adoption raises the epoch, so in time order an agent's adoptions have
/// rising epochs. Compared only across strictly later times (stamps of different
/// nodes in the same millisecond are not ordered); the same epoch adopted twice is
/// rule 3a's if by two nodes, and a repeated report if by one. Each later adoption is
/// reported once, against the earlier adoption with the highest epoch. `agent_owned`
/// events are left out: a restarted node may report a stale epoch for a moment (see
/// rule 3a).
fn check_adoption_order(agent: &str, events: &[&AgentEvent], out: &mut Vec<Anomaly>) {
    let mut adoptions: Vec<&AgentEvent> =
        events.iter().copied().filter(|e| is_adopted(e)).collect();
    adoptions.sort_by_key(|e| e.time_ms);
    let mut highest: Vec<&AgentEvent> = Vec::new();
    for later in &adoptions {
        // The earlier adoptions: strictly before `later`.
        let n = adoptions.partition_point(|e| e.time_ms < later.time_ms);
        while highest.len() < n {
            let next = adoptions[highest.len()];
            let best = match highest.last() {
                Some(&h) if h.epoch >= next.epoch => h,
                _ => next,
            };
            highest.push(best);
        }
        if let Some(earlier) = n.checked_sub(1).map(|i| highest[i])
            && earlier.epoch > later.epoch
        {
            out.push(Anomaly::AdoptionEpochWentBackwards {
                agent: agent.to_owned(),
                earlier: earlier.clone(),
                later: (*later).clone(),
            });
        }
    }
}

/// Rule 5. Once the last fault is undone, the live nodes converge and the agents
/// settle within the bound the campaign states.
fn check_settled(end: &EndState, out: &mut Vec<Anomaly>) {
    let deadline = end.quiet_ms.saturating_add(end.bound_ms);
    if end.converged_ms.is_none_or(|t| t > deadline) {
        out.push(Anomaly::NotConverged {
            quiet_ms: end.quiet_ms,
            bound_ms: end.bound_ms,
            converged_ms: end.converged_ms,
        });
    }
    if end.settled_ms.is_none_or(|t| t > deadline) {
        out.push(Anomaly::NotSettled {
            quiet_ms: end.quiet_ms,
            bound_ms: end.bound_ms,
            settled_ms: end.settled_ms,
            unsettled: end.unsettled.clone(),
        });
    }
}

fn last_record_ms(history: &History) -> Option<u64> {
    let puts = history.puts.iter().map(|p| p.acked_ms);
    let events = history.events.iter().map(|e| e.time_ms);
    let faults = history
        .faults
        .iter()
        .map(|f| f.end_ms.unwrap_or(f.start_ms).max(f.start_ms));
    puts.chain(events).chain(faults).max()
}

fn node_names<'h>(history: &'h History, events: &[&'h AgentEvent]) -> BTreeSet<&'h str> {
    let mut nodes: BTreeSet<&str> = history.nodes.iter().map(String::as_str).collect();
    nodes.extend(history.puts.iter().map(|p| p.node.as_str()));
    nodes.extend(events.iter().map(|e| e.node.as_str()));
    nodes
}

/// The campaign's restarts: each `kill -9 NODE` fault, undone (the node started
/// again on its data dir) at its end.
fn restarts(history: &History) -> Vec<(&str, u64)> {
    history
        .faults
        .iter()
        .filter_map(|f| {
            let node = f.what.strip_prefix("kill -9 ")?.split([',', ' ']).next()?;
            Some((node, f.end_ms?))
        })
        .collect()
}

/// Whether the fault's description names `node` as a whole word (`kill -9 n3`,
/// `partition {n1,n2} | {n3,n4,n5}`, `loss 20% n2 -> *`): split on everything a node
/// name cannot contain.
fn fault_names(what: &str, node: &str) -> bool {
    what.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .any(|word| word == node)
}

/// The RTO figures (see [`AdoptionRto`] for when an adoption is attributable).
fn adoption_rtos(history: &History, events: &[&AgentEvent]) -> Vec<AdoptionRto> {
    let mut adoptions: Vec<&AgentEvent> =
        events.iter().copied().filter(|e| is_adopted(e)).collect();
    adoptions.sort_by(|a, b| (&a.agent, a.time_ms, a.epoch).cmp(&(&b.agent, b.time_ms, b.epoch)));
    let mut out = Vec::new();
    for (i, e) in adoptions.iter().enumerate() {
        let AgentEventKind::Adopted { previous, .. } = &e.kind else {
            continue;
        };
        let since = adoptions[..i]
            .iter()
            .rev()
            .find(|a| a.agent == e.agent && a.time_ms < e.time_ms)
            .map(|a| a.time_ms);
        let fault = history
            .faults
            .iter()
            .filter(|f| since.is_none_or(|s| f.start_ms > s) && f.start_ms <= e.time_ms)
            .filter(|f| f.end_ms.is_none_or(|end| end >= e.time_ms))
            .filter(|f| fault_names(&f.what, previous))
            .max_by_key(|f| f.start_ms);
        if let Some(f) = fault {
            out.push(AdoptionRto {
                agent: e.agent.clone(),
                epoch: e.epoch,
                node: e.node.clone(),
                previous: previous.clone(),
                fault: f.what.clone(),
                fault_start_ms: f.start_ms,
                adopted_ms: e.time_ms,
                rto_ms: e.time_ms - f.start_ms,
            });
        }
    }
    out
}

fn put(p: &AckedPut) -> String {
    format!(
        "seq {} at epoch {} (nonce {}) on {}, sent {} acked {}",
        p.seq, p.epoch, p.nonce, p.node, p.sent_ms, p.acked_ms
    )
}

fn read(r: &ReadSnapshot) -> String {
    match r.nonce {
        Some(n) => format!("seq {} at epoch {} (nonce {n})", r.seq, r.epoch),
        None => format!(
            "seq {} at epoch {} (a body the workload did not write)",
            r.seq, r.epoch
        ),
    }
}

fn event(e: &AgentEvent) -> String {
    let what = match &e.kind {
        AgentEventKind::Owned => format!("owned it at epoch {}", e.epoch),
        AgentEventKind::Adopted { seq, previous } => format!(
            "adopted it at epoch {} restoring seq {seq} (previous owner {previous})",
            e.epoch
        ),
        AgentEventKind::Fenced => format!("fenced it at epoch {}", e.epoch),
        AgentEventKind::Unfenced => format!("unfenced it at epoch {}", e.epoch),
    };
    format!(
        "{} (generation {}) {what} at {}",
        e.node, e.generation, e.time_ms
    )
}

/// "converged at T, D ms after ... (bound B ms)" or "did not converge within ...".
fn bound(done: &str, not_done: &str, quiet_ms: u64, bound_ms: u64, at: Option<u64>) -> String {
    match at {
        Some(t) => format!(
            "{done} at {t}, {} ms after the faults stopped at {quiet_ms} (bound {bound_ms} ms)",
            t.saturating_sub(quiet_ms)
        ),
        None => format!("{not_done} within {bound_ms} ms of the faults stopping at {quiet_ms}"),
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::CampaignAborted { error } => {
                write!(f, "campaign aborted before its schedule ended: {error}")
            }
            Anomaly::NodeExited { exit } => write!(
                f,
                "node {} exited on its own ({}), noticed at {}",
                exit.node, exit.status, exit.noticed_ms
            ),
            Anomaly::ReadFailedAfterSettle { read } => write!(
                f,
                "read failed after the cluster settled: agent {} via {}: {}",
                read.agent, read.via, read.error
            ),
            Anomaly::CampaignDidNotFinish { last_record_ms } => {
                write!(f, "campaign did not finish: no end state")?;
                match last_record_ms {
                    Some(t) => write!(f, " (last record at {t}); end-state rules not checked"),
                    None => write!(f, " (nothing recorded); end-state rules not checked"),
                }
            }
            Anomaly::LostAcknowledged {
                agent,
                acked,
                via,
                read: r,
            } => write!(
                f,
                "lost acknowledged snapshot: agent {agent}: read via {via} returned {}, below the latest acknowledged put, {}",
                read(r),
                put(acked)
            ),
            Anomaly::ReplacedAcknowledged {
                agent,
                acked,
                via,
                read: r,
            } => write!(
                f,
                "replaced acknowledged snapshot: agent {agent}: read via {via} returned {}, other content than the latest acknowledged put, {}",
                read(r),
                put(acked)
            ),
            Anomaly::UnexplainedRead {
                agent,
                acked,
                via,
                read: r,
                same_nonce,
            } => {
                write!(
                    f,
                    "unexplained read: agent {agent}: read via {via} returned {}, above the latest acknowledged put ({}) but ",
                    read(r),
                    put(acked)
                )?;
                match same_nonce {
                    Some(p) => write!(f, "with the body of the acknowledged put {}", put(p)),
                    None => write!(f, "not a body the workload wrote"),
                }
            }
            Anomaly::Unreadable {
                agent,
                acked,
                errors,
            } => {
                write!(
                    f,
                    "unreadable: agent {agent}: no read returned it (latest acknowledged put {})",
                    put(acked)
                )?;
                if errors.is_empty() {
                    write!(f, "; it was not read at all")?;
                }
                for e in errors {
                    write!(f, "; via {}: {}", e.via, e.error)?;
                }
                Ok(())
            }
            Anomaly::AdoptionBehindAck {
                agent,
                adoption,
                acked,
                ..
            } => write!(
                f,
                "adoption behind an acknowledged put: agent {agent}: {}, behind the put acknowledged at an older epoch: {}",
                event(adoption),
                put(acked)
            ),
            Anomaly::PutNotAboveRestored {
                agent,
                adoption,
                restored_seq,
                put: p,
            } => write!(
                f,
                "put not above the restored seq: agent {agent}: {}, then acknowledged {} (not above {restored_seq})",
                event(adoption),
                put(p)
            ),
            Anomaly::TwoOwnersInEpoch {
                agent,
                epoch,
                claims,
            } => {
                write!(f, "two owners in one epoch: agent {agent} epoch {epoch}:")?;
                for c in claims {
                    write!(f, " {} ({} at {})", c.node, c.how, c.time_ms)?;
                }
                Ok(())
            }
            Anomaly::OlderEpochAckedAfterNewer {
                agent,
                newer,
                older,
            } => write!(
                f,
                "older epoch acknowledged after a newer one: agent {agent}: {} was sent after {} had been acknowledged",
                put(older),
                put(newer)
            ),
            Anomaly::AckedWhileFenced {
                agent,
                fence,
                put: p,
            } => write!(
                f,
                "acknowledged while fenced: agent {agent}: {}, then acknowledged {} with nothing lifting the fence",
                event(fence),
                put(p)
            ),
            Anomaly::OwnersAtEnd { agent, owners } => {
                write!(f, "more than one owner at the end: agent {agent}:")?;
                for (node, epoch) in owners {
                    write!(f, " {node} (epoch {epoch})")?;
                }
                Ok(())
            }
            Anomaly::SeqNotIncreasing {
                agent,
                earlier,
                later,
            } => write!(
                f,
                "seq not increasing: agent {agent}: {} was sent after {} had been acknowledged",
                put(later),
                put(earlier)
            ),
            Anomaly::ConflictingAcks {
                agent,
                epoch,
                seq,
                puts,
            } => {
                write!(
                    f,
                    "conflicting acknowledgements: agent {agent}: epoch {epoch} seq {seq} acknowledged with different content:"
                )?;
                for p in puts {
                    write!(f, " [{}]", put(p))?;
                }
                Ok(())
            }
            Anomaly::AdoptionEpochWentBackwards {
                agent,
                earlier,
                later,
            } => write!(
                f,
                "adoption epoch went backwards: agent {agent}: {} after {}",
                event(later),
                event(earlier)
            ),
            Anomaly::ReadEpochBehind {
                agent,
                acked,
                via,
                read: r,
            } => write!(
                f,
                "read epoch behind: agent {agent}: read via {via} returned {}, below the highest acknowledged epoch, {}",
                read(r),
                put(acked)
            ),
            Anomaly::NotConverged {
                quiet_ms,
                bound_ms,
                converged_ms,
            } => write!(
                f,
                "not converged: the live nodes {}",
                bound(
                    "converged",
                    "did not converge",
                    *quiet_ms,
                    *bound_ms,
                    *converged_ms
                )
            ),
            Anomaly::NotSettled {
                quiet_ms,
                bound_ms,
                settled_ms,
                unsettled,
            } => {
                write!(
                    f,
                    "not settled: the agents {}; {} unsettled",
                    bound(
                        "settled",
                        "did not settle",
                        *quiet_ms,
                        *bound_ms,
                        *settled_ms
                    ),
                    unsettled.len()
                )?;
                for (agent, why) in unsettled.iter().take(DISPLAY_CAP) {
                    write!(f, "\n      {agent}: {why}")?;
                }
                if unsettled.len() > DISPLAY_CAP {
                    write!(f, "\n      ... and {} more", unsettled.len() - DISPLAY_CAP)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(f, "campaign seed {}", self.seed)?;
        writeln!(f, "  nodes              {}", s.nodes)?;
        writeln!(f, "  agents             {}", s.agents)?;
        writeln!(f, "  puts acknowledged  {}", s.puts_acknowledged)?;
        writeln!(f, "  adoptions          {}", s.adoptions)?;
        writeln!(f, "  fences / unfences  {} / {}", s.fences, s.unfences)?;
        writeln!(f, "  node restarts      {}", s.restarts)?;
        let kinds: Vec<String> = s
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        writeln!(
            f,
            "  faults             {} ({})",
            s.faults,
            kinds.join(", ")
        )?;
        writeln!(
            f,
            "  reads at the end   {} ok, {} failed",
            s.reads_ok, s.reads_failed
        )?;
        match s.rto_ms {
            Some(r) => writeln!(
                f,
                "  RTO (fault on the previous owner to adoption, {} of {} adoptions): min {} ms, median {} ms, max {} ms",
                r.count, s.adoptions, r.min, r.median, r.max
            )?,
            None => writeln!(
                f,
                "  RTO                no adoption attributable to a fault"
            )?,
        }
        for r in self.rto.iter().take(DISPLAY_CAP) {
            writeln!(
                f,
                "    {} epoch {} on {} (was {}): {} ms after `{}`",
                r.agent, r.epoch, r.node, r.previous, r.rto_ms, r.fault
            )?;
        }
        if self.rto.len() > DISPLAY_CAP {
            writeln!(f, "    ... and {} more", self.rto.len() - DISPLAY_CAP)?;
        }
        if !self.failed_reads.is_empty() {
            writeln!(f, "failed reads (noted, not anomalies):")?;
            for r in self.failed_reads.iter().take(DISPLAY_CAP) {
                writeln!(f, "    {} via {}: {}", r.agent, r.via, r.error)?;
            }
            if self.failed_reads.len() > DISPLAY_CAP {
                writeln!(
                    f,
                    "    ... and {} more",
                    self.failed_reads.len() - DISPLAY_CAP
                )?;
            }
        }
        if self.anomalies.is_empty() {
            return write!(f, "0 anomalies");
        }
        let n = self.anomalies.len();
        write!(f, "{n} {}:", if n == 1 { "anomaly" } else { "anomalies" })?;
        for (i, a) in self.anomalies.iter().enumerate() {
            write!(f, "\n  {}. {a}", i + 1)?;
        }
        Ok(())
    }
}
