//! The campaign's workload and recorder: one writer task per agent that puts snapshots
//! to the agent's current owner and records every acknowledgement, and one task per
//! node that follows its event stream (across restarts) and records the agent events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::task::JoinHandle;
use vigil::client::{self, ClientError};
use vigil::events::EventRecord;

use super::history::{AckedPut, AgentEvent, AgentEventKind};

/// Time between two puts of one agent.
pub const PUT_EVERY: Duration = Duration::from_millis(200);
/// A request to a paused node never answers; past this the writer looks elsewhere.
/// Longer than the node's own wait for a quorum (5 s, then `not_acknowledged`), so a
/// slow acknowledgement is recorded rather than given up on: those are the puts most
/// at risk.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// Milliseconds since the Unix epoch (the clock the nodes stamp their events with).
pub fn now_ms() -> u64 {
    vigil::harness::to_unix_ms(SystemTime::now())
}

/// A node as the workload sees it: where its socket is, and whether the campaign
/// currently has it running (killed nodes are skipped until restarted).
pub struct NodeRef {
    pub name: String,
    pub socket: PathBuf,
    pub running: AtomicBool,
}

/// What the writers and recorders collect.
#[derive(Default)]
pub struct Record {
    pub puts: Vec<AckedPut>,
    pub events: Vec<AgentEvent>,
    /// Failed puts by reason (not anomalies: a put may fail during a fault).
    pub put_errors: BTreeMap<String, u64>,
    /// (node, generation, index) of every event recorded, to drop the repeats a
    /// re-subscription brings.
    seen: BTreeSet<(String, u64, u64)>,
}

/// The body of put `nonce` of `agent`: JSON the checker can read the nonce back from,
/// padded to a few hundred bytes like a small agent state.
pub fn body(agent: &str, nonce: u64) -> Bytes {
    let state = serde_json::json!({
        "agent": agent,
        "nonce": nonce,
        "pad": "x".repeat(256),
    });
    Bytes::from(state.to_string())
}

/// The nonce in a body [`body`] wrote, if it is one.
pub fn nonce_of(agent: &str, body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("agent")?.as_str()? != agent {
        return None;
    }
    v.get("nonce")?.as_u64()
}

/// Runs until `stop` is set.
pub struct Workload {
    pub record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<()>>,
    recorders: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts a writer for each `(agent, first owner)` and a recorder per node.
    pub fn start(nodes: Arc<Vec<NodeRef>>, agents: &[(String, String)]) -> Workload {
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers = agents
            .iter()
            .enumerate()
            .map(|(i, (agent, owner))| {
                let w = Writer {
                    agent: agent.clone(),
                    owner: owner.clone(),
                    nonce: 0,
                    nodes: nodes.clone(),
                    record: record.clone(),
                    stop: stop.clone(),
                };
                // Spread the writers over the period, so puts do not come in bursts.
                let offset = PUT_EVERY * u32::try_from(i).unwrap_or(0)
                    / u32::try_from(agents.len().max(1)).unwrap_or(1);
                tokio::spawn(w.run(offset))
            })
            .collect();
        let recorders = (0..nodes.len())
            .map(|k| tokio::spawn(follow(nodes.clone(), k, record.clone(), stop.clone())))
            .collect();
        Workload {
            record,
            stop,
            writers,
            recorders,
        }
    }

    /// Stops the writers and waits for their last requests (each bounded by
    /// [`REQUEST_TIMEOUT`]); the recorders keep following events.
    pub async fn stop_writers(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers.drain(..) {
            let _ = w.await;
        }
    }

    /// Stops the recorders (after [`Workload::stop_writers`]).
    pub async fn stop_recorders(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for r in self.recorders.drain(..) {
            r.abort();
            let _ = r.await;
        }
    }
}

struct Writer {
    agent: String,
    /// Where the next put goes.
    owner: String,
    nonce: u64,
    nodes: Arc<Vec<NodeRef>>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
}

impl Writer {
    async fn run(mut self, offset: Duration) {
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(PUT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stop.load(Ordering::SeqCst) {
            tick.tick().await;
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if let Err(reason) = self.put_once().await {
                *lock(&self.record).put_errors.entry(reason).or_default() += 1;
                self.find_owner().await;
            }
        }
    }

    /// One put to the believed owner; `Err` names why it was not acknowledged.
    async fn put_once(&mut self) -> Result<(), String> {
        let Some(node) = self.nodes.iter().find(|n| n.name == self.owner) else {
            return Err("no owner known".into());
        };
        if !node.running.load(Ordering::SeqCst) {
            return Err("owner not running".into());
        }
        self.nonce += 1;
        let nonce = self.nonce;
        let sent_ms = now_ms();
        let put = client::put_snapshot(&node.socket, &self.agent, body(&self.agent, nonce), None);
        match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            Ok(Ok(out)) => {
                lock(&self.record).puts.push(AckedPut {
                    agent: self.agent.clone(),
                    node: node.name.clone(),
                    epoch: out.epoch,
                    seq: out.seq,
                    nonce,
                    sent_ms,
                    acked_ms: now_ms(),
                });
                Ok(())
            }
            Ok(Err(ClientError::Api { code, .. })) => Err(code),
            Ok(Err(ClientError::Connect { .. })) => Err("connect".into()),
            Ok(Err(ClientError::Http { .. })) => Err("http".into()),
            Ok(Err(ClientError::Decode(_))) => Err("decode".into()),
            Err(_) => Err("timeout".into()),
        }
    }

    /// Asks every running node who owns the agent and follows the highest epoch.
    async fn find_owner(&mut self) {
        let mut best: Option<(u64, String)> = None;
        for node in self.nodes.iter() {
            if !node.running.load(Ordering::SeqCst) {
                continue;
            }
            let view = tokio::time::timeout(
                Duration::from_millis(500),
                client::agent(&node.socket, &self.agent),
            )
            .await;
            if let Ok(Ok(view)) = view
                && best.as_ref().is_none_or(|(e, _)| view.epoch > *e)
            {
                best = Some((view.epoch, view.owner));
            }
        }
        if let Some((_, owner)) = best {
            self.owner = owner;
        }
    }
}

/// Follows node `k`'s events for the whole campaign: re-subscribes when the stream
/// ends (the node was killed or restarted) and records each agent event once.
async fn follow(
    nodes: Arc<Vec<NodeRef>>,
    k: usize,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let node = &nodes[k];
    while !stop.load(Ordering::SeqCst) {
        let record = record.clone();
        // Ends when the node closes the stream (it died); errors (not running yet,
        // or killed) are retried.
        let _ = vigil::harness::follow_events(&node.socket, None, move |e| {
            keep(&record, &e);
            std::future::ready(None::<()>)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn keep(record: &Mutex<Record>, e: &EventRecord) {
    let kind = match e.kind.as_str() {
        "agent_owned" => AgentEventKind::Owned,
        "agent_fenced" => AgentEventKind::Fenced,
        "agent_unfenced" => AgentEventKind::Unfenced,
        "agent_adopted" => AgentEventKind::Adopted {
            seq: e.seq.unwrap_or(0),
            previous: adopted_from(e).unwrap_or_default(),
        },
        _ => return,
    };
    let (Some(agent), Some(epoch)) = (e.agent.clone(), e.epoch) else {
        return;
    };
    let mut r = lock(record);
    if !r.seen.insert((e.node.clone(), e.generation, e.index)) {
        return;
    }
    r.events.push(AgentEvent {
        node: e.node.clone(),
        generation: e.generation,
        time_ms: e.time_ms,
        agent,
        epoch,
        kind,
    });
}

/// The previous owner an `agent_adopted` event names ("... adopted from PREV at
/// epoch ...").
fn adopted_from(e: &EventRecord) -> Option<String> {
    let detail = e.detail.as_deref()?;
    let rest = detail.split(" adopted from ").nth(1)?;
    Some(rest.split(' ').next()?.to_string())
}

/// The record's lock; a writer that panicked mid-push cannot leave it inconsistent
/// (each push is one `Vec::push`), so a poisoned lock is still used.
pub fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
