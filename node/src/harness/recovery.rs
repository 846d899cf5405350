//! A host killed together with its agents, and the recovery that follows, on a
//! [`LocalCluster`] whose nodes launch the built-in example agent: used by
//! `vigil demo` and by the recovery benchmark (`cargo bench -p vigil-benches --bench
//! recovery`).
//!
//! 1. [`example_agent_args`]: the `--agent-command` that makes every node launch
//!    `vigil example-agent` for the agents it owns;
//! 2. [`LocalCluster::wait_agents_running`]: every agent heartbeats on its owner;
//! 3. [`LocalCluster::follow`]: the survivors' events from now on;
//! 4. [`LocalCluster::kill_with_agents`]: freeze the host's agent processes, read
//!    what their owner acknowledged, SIGKILL the node and the agents;
//! 5. [`RecoveryWatch`]: from the survivors' events, detection (`member_down`), and
//!    per agent the election (`election_started`, `coordinator_elected`), the
//!    adoption (`agent_adopted` on the new host) and the first heartbeat there
//!    (`agent_running`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{HarnessError, LocalCluster, LocalNode, follow_events, to_unix_ms};
use crate::client;
use crate::events::EventRecord;
use crate::example_agent::Line;
use crate::store::{DEFAULT_MAX_BODY, SnapshotStore};

/// Between two reads of the frozen agents' acknowledged seqs (a quorum put takes a
/// few milliseconds on an idle machine).
pub const QUIESCE: Duration = Duration::from_millis(300);
/// How long the agents stay frozen at most before the kill: below the node's default
/// heartbeat timeout (2 s), after which it would restart them.
pub const QUIESCE_MAX: Duration = Duration::from_millis(1500);

/// Events buffered between the followers and the reader of an [`EventFeed`].
const FEED_CAPACITY: usize = 4096;

/// `--agent-command` for `exe example-agent` (each node launches the agents it owns,
/// restoring from the cluster's latest snapshot), with `agent_flags` appended to the
/// agent's command line (e.g. `--snapshot-ms 500`).
pub fn example_agent_args(exe: &Path, agent_flags: &str) -> Vec<String> {
    let mut command = format!(
        "'{}' example-agent --id {{id}} --socket {{socket}}",
        exe.display()
    );
    if !agent_flags.is_empty() {
        command.push(' ');
        command.push_str(agent_flags);
    }
    vec!["--agent-command".into(), command]
}

/// An agent as its owner knew it just before the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The owner epoch it ran under.
    pub epoch: u64,
    /// The last seq the owner acknowledged (0: none).
    pub seq: u64,
}

/// A host killed with its agents.
#[derive(Debug, Clone)]
pub struct KilledHost {
    pub name: String,
    pub zone: String,
    pub pid: u32,
    /// Taken just before the node's SIGKILL.
    pub killed_at: SystemTime,
    /// Its agents, as it knew them with their processes frozen.
    pub agents: BTreeMap<String, Acked>,
    /// The agents' process ids (from the node's `agent_started` events).
    pub agent_pids: BTreeMap<String, i32>,
    /// The acknowledged seqs stopped changing before the kill and no agent was
    /// restarted meanwhile (false: a put may still have been in flight at the kill,
    /// to be acknowledged by the holders later).
    pub quiet: bool,
}

impl KilledHost {
    /// Unix ms of the kill, in the nodes' clock (the events' `time_ms`).
    pub fn killed_ms(&self) -> u64 {
        to_unix_ms(self.killed_at)
    }
}

/// Events of several nodes from the moment [`LocalCluster::follow`] subscribed, each
/// with the name of the node that reported it. Dropping the feed stops following.
pub struct EventFeed {
    rx: mpsc::Receiver<(String, EventRecord)>,
    tasks: Vec<JoinHandle<()>>,
}

impl EventFeed {
    /// The next event, or `None` once every followed node closed its stream.
    pub async fn recv(&mut self) -> Option<(String, EventRecord)> {
        self.rx.recv().await
    }
}

impl Drop for EventFeed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl LocalCluster {
    /// Waits until every agent of `agents` (id, owner) heartbeats on its owner
    /// (`state` running in the owner's `GET /v1/agents`), re-reading an owner's agents
    /// after each of its events.
    pub async fn wait_agents_running(
        &self,
        agents: &[(String, String)],
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut by_owner: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (id, owner) in agents {
            by_owner.entry(owner).or_default().insert(id);
        }
        for (owner, ids) in by_owner {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.wait_view(owner, "its agents running", left, client::agents, |views| {
                ids.iter().all(|id| {
                    views
                        .iter()
                        .any(|a| a.id == *id && a.owned_here && a.state == "running")
                })
            })
            .await?;
        }
        Ok(())
    }

    /// The process ids of `agents` as `name` launched them (its `agent_started`
    /// events, "agent ID: process PID started"); the latest start of each.
    pub async fn launched_pids(
        &self,
        name: &str,
        agents: &[String],
        timeout: Duration,
    ) -> Result<BTreeMap<String, i32>, HarnessError> {
        let socket = &self.node(name)?.socket;
        let last = client::health(socket).await?.last_event_index;
        let mut pids = BTreeMap::new();
        // Read up to the last event at least, so a restarted agent's latest pid wins.
        let read = follow_events(socket, None, |e| {
            let agent = e.agent.as_ref().filter(|a| agents.contains(a));
            let pid = e
                .detail
                .as_deref()
                .filter(|_| e.kind == "agent_started")
                .and_then(|d| d.split("process ").nth(1))
                .and_then(|d| d.split(' ').next())
                .and_then(|p| p.parse::<i32>().ok());
            if let (Some(agent), Some(pid)) = (agent, pid) {
                pids.insert(agent.clone(), pid);
            }
            std::future::ready((e.index >= last && pids.len() == agents.len()).then_some(()))
        });
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(Some(()))) => Ok(pids),
            Ok(Ok(None)) => Err(self.node(name)?.closed_stream()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(HarnessError::Timeout {
                what: format!(
                    "{name} to report the processes of {} agents (found {})",
                    agents.len(),
                    pids.len()
                ),
                after: timeout,
            }),
        }
    }

    /// Follows the events of `names` from now on, in one feed.
    pub async fn follow(&self, names: &[&str]) -> Result<EventFeed, HarnessError> {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        let mut tasks = Vec::new();
        for name in names {
            let socket = self.node(name)?.socket.clone();
            let since = client::health(&socket).await?.last_event_index;
            let (name, tx) = (name.to_string(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let _ = follow_events(&socket, Some(since), |record| {
                    let (tx, name) = (tx.clone(), name.clone());
                    async move { tx.send((name, record)).await.err().map(drop) }
                })
                .await;
            }));
        }
        Ok(EventFeed { rx, tasks })
    }

    /// The host `name` dies with `agents` (which it owns and launched): their
    /// processes are frozen (SIGSTOP); the owner's acknowledged seqs are read every
    /// [`QUIESCE`] until two reads agree (their puts in flight are answered), for at
    /// most [`QUIESCE_MAX`] in all; then the node gets SIGKILL, and so do the process
    /// groups of the frozen agents and of any other process the node had started.
    /// Every put acknowledged before the kill is in [`KilledHost::agents`] unless
    /// [`KilledHost::quiet`] is false.
    pub async fn kill_with_agents(
        &mut self,
        name: &str,
        agents: &[String],
        timeout: Duration,
    ) -> Result<KilledHost, HarnessError> {
        let agent_pids = self.launched_pids(name, agents, timeout).await?;
        let node = self.node(name)?;
        let (zone, pid, socket) = (node.zone.clone(), node.pid, node.socket.clone());
        let signal_groups = |pids: &BTreeSet<i32>, signal| {
            for pid in pids {
                // Each launched agent leads its own process group.
                let _ = killpg(Pid::from_raw(*pid), signal);
            }
        };
        let frozen: BTreeSet<i32> = agent_pids.values().copied().collect();
        signal_groups(&frozen, Signal::SIGSTOP);
        let deadline = tokio::time::Instant::now() + QUIESCE_MAX;
        let read = async || -> Result<BTreeMap<String, Acked>, HarnessError> {
            let known = client::agents(&socket).await?;
            Ok(agents
                .iter()
                .map(|id| {
                    let a = known.iter().find(|a| &a.id == id);
                    let acked = a.map_or(Acked { epoch: 0, seq: 0 }, |a| Acked {
                        epoch: a.epoch,
                        seq: a.latest_seq,
                    });
                    (id.clone(), acked)
                })
                .collect())
        };
        let mut acked = tokio::time::timeout_at(deadline, read())
            .await
            .map_err(|_| HarnessError::Timeout {
                what: format!("{name}'s agents (frozen)"),
                after: QUIESCE_MAX,
            })??;
        let mut quiet = false;
        while tokio::time::Instant::now() + QUIESCE < deadline {
            tokio::time::sleep(QUIESCE).await;
            let Ok(again) = tokio::time::timeout_at(deadline, read()).await else {
                break;
            };
            let again = again?;
            quiet = again == acked;
            acked = again;
            if quiet {
                break;
            }
        }
        // An agent the node restarted meanwhile (a missed heartbeat) runs unfrozen.
        let mut doomed = children(pid);
        quiet &= doomed.is_subset(&frozen);
        doomed.extend(&frozen);
        let killed_at = self.kill(name).await?;
        signal_groups(&doomed, Signal::SIGKILL);
        Ok(KilledHost {
            name: name.into(),
            zone,
            pid,
            killed_at,
            agents: acked,
            agent_pids,
            quiet,
        })
    }
}

/// The running children of process `pid` (`/proc/PID/task/*/children`): for a
/// node, the agents it launched.
pub fn children(pid: u32) -> BTreeSet<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeSet::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// A node and the Unix ms of its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub node: String,
    pub at_ms: u64,
}

/// What the survivors reported about one agent of the killed host.
#[derive(Debug, Clone, Default)]
pub struct AgentRecovery {
    /// `election_started` by epoch: each proposer's first round.
    pub proposed: BTreeMap<u64, BTreeMap<String, u64>>,
    /// `coordinator_elected` by epoch (the first report of each).
    pub elected: BTreeMap<u64, Stamp>,
    /// `agent_adopted` by epoch, with the seq the new owner restores.
    pub adopted: BTreeMap<u64, (Stamp, u64)>,
    /// The first `agent_running` (first heartbeat) at a later epoch than the killed
    /// host's, and that epoch.
    pub running: Option<(Stamp, u64)>,
}

impl AgentRecovery {
    /// The epoch the agent runs under again.
    pub fn epoch(&self) -> Option<u64> {
        self.running.as_ref().map(|(_, e)| *e)
    }

    /// The election of the epoch it runs under.
    pub fn elected(&self) -> Option<&Stamp> {
        self.elected.get(&self.epoch()?)
    }

    /// When the coordinator of the epoch it runs under started proposing.
    pub fn coordinator_proposed(&self) -> Option<u64> {
        let epoch = self.epoch()?;
        let coordinator = &self.elected.get(&epoch)?.node;
        self.proposed.get(&epoch)?.get(coordinator).copied()
    }

    /// Holders that proposed for the epoch it runs under (more than one: competing
    /// rounds).
    pub fn proposers(&self) -> usize {
        self.epoch()
            .and_then(|e| self.proposed.get(&e))
            .map_or(0, BTreeMap::len)
    }

    /// The adoption (and restored seq) of the epoch it runs under.
    pub fn adopted(&self) -> Option<&(Stamp, u64)> {
        self.adopted.get(&self.epoch()?)
    }
}

/// The recovery of a killed host's agents, assembled from the survivors' events.
#[derive(Debug, Clone)]
pub struct RecoveryWatch {
    pub victim: String,
    pub killed_ms: u64,
    /// Each survivor's first `member_down` about the victim.
    pub downs: BTreeMap<String, u64>,
    /// Each of the victim's agents.
    pub agents: BTreeMap<String, AgentRecovery>,
    /// The events used (the victim suspected or down; elections, adoptions and first
    /// heartbeats of its agents), in arrival order.
    pub events: Vec<(String, EventRecord)>,
    epochs: BTreeMap<String, u64>,
}

impl RecoveryWatch {
    pub fn new(killed: &KilledHost) -> Self {
        RecoveryWatch {
            victim: killed.name.clone(),
            killed_ms: killed.killed_ms(),
            downs: BTreeMap::new(),
            agents: killed
                .agents
                .keys()
                .map(|id| (id.clone(), AgentRecovery::default()))
                .collect(),
            events: Vec::new(),
            epochs: killed
                .agents
                .iter()
                .map(|(id, a)| (id.clone(), a.epoch))
                .collect(),
        }
    }

    /// Takes one event reported by `node`.
    pub fn apply(&mut self, node: &str, e: EventRecord) {
        let stamp = Stamp {
            node: node.to_string(),
            at_ms: e.time_ms,
        };
        let about_victim = e.member.as_deref() == Some(self.victim.as_str());
        let agent = e
            .agent
            .as_deref()
            .and_then(|a| self.agents.get_mut(a).map(|r| (a, r)));
        let used = match (e.kind.as_str(), agent, e.epoch) {
            ("member_down", _, _) if about_victim => {
                self.downs.entry(stamp.node).or_insert(stamp.at_ms);
                true
            }
            ("member_suspected", _, _) => about_victim,
            ("election_started", Some((_, r)), Some(epoch)) => {
                let by = r.proposed.entry(epoch).or_default();
                by.entry(stamp.node).or_insert(stamp.at_ms);
                false
            }
            ("coordinator_elected", Some((_, r)), Some(epoch)) => {
                r.elected.entry(epoch).or_insert(stamp);
                true
            }
            ("agent_adopted", Some((_, r)), Some(epoch)) => {
                let seq = e.seq.unwrap_or(0);
                r.adopted.entry(epoch).or_insert((stamp, seq));
                true
            }
            ("agent_running", Some((id, r)), Some(epoch))
                if r.running.is_none() && self.epochs.get(id).is_some_and(|old| epoch > *old) =>
            {
                r.running = Some((stamp, epoch));
                true
            }
            _ => false,
        };
        if used {
            self.events.push((node.to_string(), e));
        }
    }

    /// Every agent heartbeats again on a new host.
    pub fn all_running(&self) -> bool {
        self.agents.values().all(|r| r.running.is_some())
    }

    /// Reads `feed` until every agent runs again or `timeout` passes; false on the
    /// timeout (or if every followed node closed its stream first).
    pub async fn collect(&mut self, feed: &mut EventFeed, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.all_running() {
            match tokio::time::timeout_at(deadline, feed.recv()).await {
                Ok(Some((node, e))) => self.apply(&node, e),
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    /// The first `member_down` about the victim on any survivor.
    pub fn first_down_ms(&self) -> Option<u64> {
        self.downs.values().min().copied()
    }
}

/// Where `node` logs the output of its launched agent `agent`.
pub fn agent_log(node: &LocalNode, agent: &str) -> PathBuf {
    node.data_dir
        .join(crate::node::AGENTS_DIR)
        .join(format!("{agent}.log"))
}

/// The state the example agent `agent` resumed when it first started on `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// The count it started from (the first `started` line in its log there).
    pub count: u64,
    /// The seq of the snapshot it restored: the one it fetched itself (that line's
    /// `restored_seq`), else the one the node handed it (the launcher's
    /// `agents/ID/snapshot-SEQ` files: the lowest, the first start's); `None`: neither.
    pub seq: Option<u64>,
    /// `started` lines in its log there: more than one, it was restarted there.
    pub starts: usize,
}

/// What the example agent `agent` resumed on `node`; `None` if it has not printed a
/// `started` line there.
pub fn resumed(node: &LocalNode, agent: &str) -> Option<Resumed> {
    let text = std::fs::read_to_string(agent_log(node, agent)).ok()?;
    let starts: Vec<(u64, Option<u64>)> = text
        .lines()
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(Line::Started {
                count,
                restored_seq,
                ..
            }) => Some((count, restored_seq)),
            _ => None,
        })
        .collect();
    let (count, fetched) = *starts.first()?;
    let handed = || {
        let dir = node.data_dir.join(crate::node::AGENTS_DIR).join(agent);
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?
                    .strip_prefix("snapshot-")?
                    .parse::<u64>()
                    .ok()
            })
            .min()
    };
    Some(Resumed {
        count,
        seq: fetched.or_else(handed),
        starts: starts.len(),
    })
}

/// Version `seq` of each agent of `wanted`, read from the disk of `node`, which must
/// not be running (its store is opened as the node opens it at start). An agent
/// whose version is not there is left out.
pub fn versions_on_disk(
    node: &LocalNode,
    wanted: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, Vec<u8>>, HarnessError> {
    let root = node.data_dir.join(crate::node::SNAPSHOT_DIR);
    let opened =
        SnapshotStore::open(&root, 1, DEFAULT_MAX_BODY).map_err(|e| HarnessError::Node {
            name: node.name.clone(),
            message: e.to_string(),
            log: node.log.display().to_string(),
        })?;
    Ok(wanted
        .iter()
        .filter_map(|(agent, seq)| {
            let (_, body) = opened.store.read(agent, *seq).ok()?;
            Some((agent.clone(), body))
        })
        .collect())
}
