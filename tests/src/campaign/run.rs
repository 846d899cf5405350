//! Runs one campaign: sets up the hosts, starts the nodes and the workload, injects
//! the schedule's faults, waits for the cluster to settle, reads everything back and
//! hands the history to the checker.

// HarnessError, shared with vigil::harness, is large; it is returned on cold paths only.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vigil::client;
use vigil::harness::{HarnessError, LocalCluster, Placement};

use super::checker::{self, Report};
use super::disk::DataDisks;
use super::history::{EndState, FaultRecord, History, NodeExit, ReadBack, ReadSnapshot};
use super::schedule::{self, Abilities, Described, Fault, Shape};
use super::workload::{NodeRef, Workload, lock, nonce_of, now_ms};
use crate::faultproxy::{
    FaultProxy, Faults, ProxyConfig, ProxyError, ProxyStats, Rule, loopback_sockets,
};
use crate::netns::{LabError, NODE_PORT, NetLab};

/// Where the hosts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Network namespaces if this machine has them, else loopback.
    Auto,
    /// One network namespace per host (root and iproute2).
    Netns,
    /// Every node on 127.0.0.1; partitions and one-way cuts are made by the fault
    /// proxies instead of blackhole routes, and there are no disk faults unless the
    /// data disks can be mounted (root).
    Loopback,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// How long faults are injected (the settle and read-back come after).
    pub duration: Duration,
    pub nodes: usize,
    pub agents_per_node: usize,
    pub mode: Mode,
    /// Bound for membership convergence and for every agent to have one owner and
    /// its copies, counted from the moment the last fault was undone.
    pub bound: Duration,
    /// The `vigil` binary to run the nodes with.
    pub binary: PathBuf,
    /// Node directories (logs, data), `history.json` and `report.txt` go here.
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("{0}")]
    Harness(#[from] HarnessError),
    #[error("network lab: {0}")]
    Lab(#[from] LabError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("client: {0}")]
    Client(#[from] client::ClientError),
    #[error("fault proxy: {0}")]
    Proxy(#[from] ProxyError),
    #[error("{0}")]
    Setup(String),
}

/// The outcome: the history, the checker's report, and the schedule that ran.
pub struct Outcome {
    pub history: History,
    pub report: Report,
    pub schedule: Vec<String>,
    pub mode: Mode,
    /// Puts that failed, by reason (expected during faults).
    pub put_errors: BTreeMap<String, u64>,
    /// What the fault proxies did, all links together.
    pub proxies: ProxyStats,
}

const ZONES: [&str; 3] = ["az1", "az2", "az3"];

/// The hosts and the processes on them. Field order is drop order: processes first,
/// then the proxies, the data file systems, the namespaces.
struct Hosts {
    cluster: LocalCluster,
    /// One per node, in front of it: peers reach node `k` only through `proxies[k]`.
    proxies: Vec<FaultProxy>,
    faults: Faults,
    disks: Option<DataDisks>,
    lab: Option<NetLab>,
    names: Vec<String>,
    zones: Vec<String>,
    /// Every node's advertised address (its proxy's), for the seeds of a restarted
    /// node.
    addrs: Vec<SocketAddr>,
}

/// The port a node binds in its namespace; its proxy listens on [`NODE_PORT`].
const REAL_PORT: u16 = NODE_PORT + 1;

impl Hosts {
    /// Where node `k` binds: a private address only its proxy sends to.
    fn placement(&self, k: usize) -> Placement {
        match &self.lab {
            Some(lab) => Placement {
                wrapper: lab.exec_prefix(k),
                bind: SocketAddrV4::new(lab.addr(k), REAL_PORT).to_string(),
            },
            None => Placement {
                wrapper: Vec::new(),
                bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_port(k)).to_string(),
            },
        }
    }

    /// Starts node `k` behind its proxy (started with the node's first start, kept
    /// across restarts: the node binds the same address again).
    async fn start(
        &mut self,
        k: usize,
        seeds: &[SocketAddr],
        seed: u64,
    ) -> Result<(), CampaignError> {
        let listener = match &self.lab {
            Some(lab) => lab.udp_socket(k, NODE_PORT)?,
            None => std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
        };
        let advertised = listener.local_addr()?;
        let upstream = match &self.lab {
            Some(lab) => Box::new(lab.udp_socket_factory(k)?),
            None => loopback_sockets(Ipv4Addr::LOCALHOST.into()),
        };
        let placement = self.placement(k);
        let extra = ["--advertise".to_string(), advertised.to_string()];
        let node = self
            .cluster
            .start_placed(&self.names[k], &self.zones[k], seeds, &extra, &placement)
            .await?;
        let bound = node.bound;
        self.faults.register(bound, &self.names[k]);
        // Each proxy draws its own fault decisions, seeded from the campaign seed.
        let config = ProxyConfig::new(&self.names[k], bound, seed.wrapping_add(k as u64));
        self.proxies
            .push(FaultProxy::spawn(listener, upstream, config, &self.faults)?);
        self.addrs.push(advertised);
        Ok(())
    }

    /// Restarts node `k` on its data directory (same address, same proxy), seeded
    /// by every other node.
    async fn restart(&mut self, k: usize) -> Result<(), CampaignError> {
        let seeds: Vec<SocketAddr> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .map(|(_, a)| *a)
            .collect();
        let placement = self.placement(k);
        let extra = ["--advertise".to_string(), self.addrs[k].to_string()];
        self.cluster
            .start_placed(&self.names[k], &self.zones[k], &seeds, &extra, &placement)
            .await?;
        Ok(())
    }

    /// Drops what `from` sends to `to`: a blackhole route in network-namespace
    /// mode, the proxy otherwise.
    fn cut_one_way(&mut self, from: usize, to: usize) -> Result<(), CampaignError> {
        match self.lab.as_mut() {
            Some(lab) => lab.cut_one_way(from, to)?,
            None => self
                .faults
                .set_link(&self.names[from], &self.names[to], Rule::CUT)?,
        }
        Ok(())
    }

    /// Undoes every cut and link fault.
    fn heal(&mut self) -> Result<(), CampaignError> {
        self.faults.clear_all();
        if let Some(lab) = self.lab.as_mut() {
            lab.heal_all()?;
        }
        Ok(())
    }
}

/// A loopback port for node `k` that stays the same across its restarts (peers know
/// a node by its address).
fn free_port(k: usize) -> u16 {
    // Well above the ephemeral range's start on most systems would still collide;
    // ask the kernel once per node and remember it.
    static PORTS: std::sync::Mutex<BTreeMap<usize, u16>> = std::sync::Mutex::new(BTreeMap::new());
    let mut ports = PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *ports.entry(k).or_insert_with(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_or(0, |a| a.port())
    })
}

/// Runs the campaign to the end and checks it. `Err` only when the campaign could not
/// run (setup); anomalies are in the report.
pub async fn run(config: &Config) -> Result<Outcome, CampaignError> {
    if config.nodes < 3 {
        return Err(CampaignError::Setup(
            "--nodes must be at least 3 (a partition needs a majority side)".into(),
        ));
    }
    std::fs::create_dir_all(&config.out)?;
    let names: Vec<String> = (1..=config.nodes).map(|i| format!("n{i}")).collect();
    let zones: Vec<String> = (0..config.nodes)
        .map(|k| ZONES[k % ZONES.len()].to_string())
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let lab = match config.mode {
        Mode::Loopback => None,
        Mode::Netns => Some(NetLab::new(config.nodes)?),
        Mode::Auto => match NetLab::new(config.nodes) {
            Ok(lab) => Some(lab),
            Err(LabError::Unavailable(why)) => {
                eprintln!("campaign: network namespaces unavailable ({why}); running on loopback");
                None
            }
            Err(e) => return Err(e.into()),
        },
    };
    let mode = if lab.is_some() {
        Mode::Netns
    } else {
        Mode::Loopback
    };
    let root = config.out.join("nodes");
    // A previous campaign's nodes must not start from its data (same output directory).
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let cluster = LocalCluster::in_dir(config.binary.clone(), &root, &name_refs)?;
    let disks = match DataDisks::mount(&root, &names) {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!("campaign: no disk-full faults: {why}");
            None
        }
    };
    let abilities = Abilities {
        disk_full: disks.is_some(),
    };
    let shape = Shape {
        hosts: config.nodes,
        zones: zones.clone(),
    };
    let steps = schedule::draw(config.seed, &shape, config.duration, abilities);
    let described: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "after {:>5} ms: {} for {} ms",
                s.gap.as_millis(),
                Described {
                    fault: &s.fault,
                    names: &names
                },
                s.hold.as_millis()
            )
        })
        .collect();
    std::fs::write(config.out.join("schedule.txt"), described.join("\n") + "\n")?;

    let mut hosts = Hosts {
        cluster,
        proxies: Vec::new(),
        faults: Faults::new(),
        disks,
        lab,
        names: names.clone(),
        zones,
        addrs: Vec::new(),
    };
    // The first node seeds the others.
    for k in 0..config.nodes {
        let seeds = hosts.addrs.first().copied().into_iter().collect::<Vec<_>>();
        hosts.start(k, &seeds, config.seed).await?;
    }
    hosts
        .cluster
        .wait_converged(Duration::from_secs(60))
        .await?;

    let nodes: Arc<Vec<NodeRef>> = Arc::new(
        names
            .iter()
            .map(|n| -> Result<NodeRef, CampaignError> {
                Ok(NodeRef {
                    name: n.clone(),
                    socket: hosts.cluster.node(n)?.socket.clone(),
                    running: true.into(),
                })
            })
            .collect::<Result<_, _>>()?,
    );
    let mut agents = Vec::new();
    for (k, name) in names.iter().enumerate() {
        for j in 0..config.agents_per_node {
            let agent = format!("a{}-{j}", k + 1);
            client::register(&nodes[k].socket, &agent, "{}").await?;
            agents.push((agent, name.clone()));
        }
    }
    let mut workload = Workload::start(nodes.clone(), &agents);
    let mut faults = Vec::new();
    let mut exits = Vec::new();
    // A step that cannot be injected or undone (a node that does not restart on its
    // data dir is a finding, not a harness problem) ends the schedule; the campaign
    // still heals, settles, reads back and writes its history.
    let mut aborted = None;
    for step in &steps {
        tokio::time::sleep(step.gap).await;
        let what = Described {
            fault: &step.fault,
            names: &names,
        }
        .to_string();
        eprintln!("campaign: {what}");
        notice_exits(&mut hosts, &nodes, &mut exits);
        let start_ms = now_ms();
        let mut result = inject(&mut hosts, &nodes, &step.fault).await;
        if result.is_ok() {
            tokio::time::sleep(step.hold).await;
            notice_exits(&mut hosts, &nodes, &mut exits);
            result = undo(&mut hosts, &nodes, &step.fault).await;
        }
        faults.push(FaultRecord {
            what: what.clone(),
            start_ms,
            end_ms: Some(now_ms()),
        });
        if let Err(e) = result {
            aborted = Some(format!("{what}: {e}"));
            break;
        }
    }
    if aborted.is_some() {
        // Best effort: every node reachable and running again, whatever was injected.
        let _ = hosts.heal();
        if let Some(disks) = hosts.disks.as_mut() {
            for k in 0..names.len() {
                let _ = disks.free(k);
            }
        }
        for (k, node) in nodes.iter().enumerate() {
            let _ = hosts.cluster.signal(&names[k], Signal::SIGCONT);
            if !node.running.load(Ordering::SeqCst) && hosts.restart(k).await.is_ok() {
                node.running.store(true, Ordering::SeqCst);
            }
        }
    }
    let quiet_ms = now_ms();
    workload.stop_writers().await;
    let end = settle(&hosts, &nodes, &agents, config.bound, quiet_ms).await;
    notice_exits(&mut hosts, &nodes, &mut exits);
    workload.stop_recorders().await;
    hosts.cluster.stop_all().await;
    let mut proxies = ProxyStats::default();
    for proxy in hosts.proxies.drain(..) {
        if let Ok(stats) = proxy.shutdown().await {
            proxies.merge(&stats);
        }
    }

    let record = std::mem::take(&mut *lock(&workload.record));
    let history = History {
        seed: config.seed,
        nodes: names,
        agents: agents.iter().map(|(a, _)| a.clone()).collect(),
        copies: vigil::config::DEFAULT_COPIES,
        puts: record.puts,
        events: record.events,
        faults,
        end: Some(end),
        aborted,
        node_exits: exits,
    };
    let report = checker::check(&history);
    let json = serde_json::to_vec_pretty(&history).map_err(std::io::Error::other)?;
    std::fs::write(config.out.join("history.json"), json)?;
    std::fs::write(config.out.join("report.txt"), report.to_string())?;
    Ok(Outcome {
        history,
        report,
        schedule: described,
        mode,
        put_errors: record.put_errors,
        proxies,
    })
}

/// Records every node that exited although the campaign did not kill it (it is then
/// left down: restarting it would hide the crash's after-effects from the record).
fn notice_exits(hosts: &mut Hosts, nodes: &[NodeRef], exits: &mut Vec<NodeExit>) {
    for node in nodes {
        if !node.running.load(Ordering::SeqCst) {
            continue;
        }
        if let Ok(Some(status)) = hosts.cluster.exited(&node.name) {
            node.running.store(false, Ordering::SeqCst);
            exits.push(NodeExit {
                node: node.name.clone(),
                noticed_ms: now_ms(),
                status: status.to_string(),
            });
        }
    }
}

async fn inject(hosts: &mut Hosts, nodes: &[NodeRef], fault: &Fault) -> Result<(), CampaignError> {
    match fault {
        Fault::Kill { host } => {
            nodes[*host].running.store(false, Ordering::SeqCst);
            hosts.cluster.kill(&hosts.names[*host]).await?;
        }
        Fault::Pause { host } => hosts.cluster.signal(&hosts.names[*host], Signal::SIGSTOP)?,
        Fault::Partition { side } => {
            for a in side {
                for b in (0..hosts.names.len()).filter(|b| !side.contains(b)) {
                    hosts.cut_one_way(*a, b)?;
                    hosts.cut_one_way(b, *a)?;
                }
            }
        }
        Fault::OneWay { from, to } => {
            for b in to {
                hosts.cut_one_way(*from, *b)?;
            }
        }
        Fault::DiskFull { host } => {
            let disks = hosts
                .disks
                .as_mut()
                .ok_or_else(|| CampaignError::Setup("no data disks mounted".into()))?;
            disks.fill(*host)?;
        }
        Fault::Link { hosts: on, link } => {
            let rule = Rule {
                loss: link.loss,
                latency: Duration::from_millis(link.latency_ms),
                jitter: Duration::from_millis(link.jitter_ms),
                duplicate: link.duplicate,
                cut: false,
            };
            for k in on {
                hosts.faults.set_node(&hosts.names[*k], rule)?;
            }
        }
    }
    Ok(())
}

async fn undo(hosts: &mut Hosts, nodes: &[NodeRef], fault: &Fault) -> Result<(), CampaignError> {
    match fault {
        Fault::Kill { host } => {
            hosts.restart(*host).await?;
            nodes[*host].running.store(true, Ordering::SeqCst);
        }
        Fault::Pause { host } => hosts.cluster.signal(&hosts.names[*host], Signal::SIGCONT)?,
        Fault::Partition { .. } | Fault::OneWay { .. } | Fault::Link { .. } => hosts.heal()?,
        Fault::DiskFull { host } => {
            if let Some(disks) = hosts.disks.as_mut() {
                disks.free(*host)?;
            }
        }
    }
    Ok(())
}

/// Waits (up to `bound`) for membership to converge and every agent to settle, then
/// reads every agent back through every node.
async fn settle(
    hosts: &Hosts,
    nodes: &[NodeRef],
    agents: &[(String, String)],
    bound: Duration,
    quiet_ms: u64,
) -> EndState {
    let deadline = Instant::now() + bound;
    let live: Vec<String> = hosts.names.clone();
    let mut converged_ms = None;
    while Instant::now() < deadline {
        if converged(nodes).await {
            converged_ms = Some(now_ms());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut settled_ms = None;
    let mut unsettled = BTreeMap::new();
    while converged_ms.is_some() {
        unsettled = unsettled_agents(nodes, agents).await;
        if unsettled.is_empty() {
            settled_ms = Some(now_ms());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if converged_ms.is_none() {
        unsettled = unsettled_agents(nodes, agents).await;
    }
    let mut reads = BTreeMap::new();
    let mut owners = BTreeMap::new();
    for (agent, _) in agents {
        let mut agent_reads = Vec::new();
        let mut agent_owners = Vec::new();
        for node in nodes {
            let result = ask(client::get_snapshot(&node.socket, agent, None))
                .await
                .map(|s| ReadSnapshot {
                    epoch: s.epoch,
                    seq: s.seq,
                    nonce: nonce_of(agent, &s.body),
                });
            agent_reads.push(ReadBack {
                via: node.name.clone(),
                result,
            });
            if let Ok(view) = ask(client::agent(&node.socket, agent)).await
                && view.owned_here
            {
                agent_owners.push((node.name.clone(), view.epoch));
            }
        }
        reads.insert(agent.clone(), agent_reads);
        owners.insert(agent.clone(), agent_owners);
    }
    EndState {
        quiet_ms,
        bound_ms: u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
        live,
        converged_ms,
        settled_ms,
        unsettled,
        reads,
        owners,
    }
}

/// A client call bounded in time: a wedged node must not hang the campaign (that is
/// a finding, reported as not converged or not settled, with the history written).
async fn ask<T>(call: impl Future<Output = Result<T, client::ClientError>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(3), call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}

/// Every campaign node sees every campaign node alive. Not
/// `LocalCluster::wait_converged`: that one waits on the nodes still running only,
/// so a node that crashed would not hold convergence back; here it does.
async fn converged(nodes: &[NodeRef]) -> bool {
    for node in nodes {
        let Ok(members) = ask(client::members(&node.socket)).await else {
            return false;
        };
        let all_alive = nodes.iter().all(|n| {
            members
                .iter()
                .any(|m| m.name == n.name && m.state == "alive")
        });
        if !all_alive {
            return false;
        }
    }
    true
}

/// Agents that are not settled, with why. Settled: exactly one node owns it, not
/// fenced (or pending, failed, isolated), and its record lists the configured number
/// of holders, each of which has the owner's latest seq on its disk. (`degraded` is
/// not required to clear: with fewer zones than copies + 1, e.g. 5 nodes in 3 zones,
/// an agent stays "in 2 zones" for good, by design.)
async fn unsettled_agents(
    nodes: &[NodeRef],
    agents: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (agent, _) in agents {
        if let Err(why) = settled(nodes, agent).await {
            out.insert(agent.clone(), why);
        }
    }
    out
}

async fn settled(nodes: &[NodeRef], agent: &str) -> Result<(), String> {
    let mut owners = Vec::new();
    for node in nodes {
        if let Ok(view) = ask(client::agent(&node.socket, agent)).await
            && view.owned_here
        {
            owners.push(view);
        }
    }
    let owner = match owners.as_slice() {
        [] => return Err("no node owns it".into()),
        [one] => one,
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|v| format!("{}@{}", v.owner, v.epoch))
                .collect();
            return Err(format!("{} owners: {}", many.len(), names.join(", ")));
        }
    };
    if matches!(
        owner.state.as_str(),
        "fenced" | "pending" | "failed" | "isolated"
    ) {
        return Err(format!("{} on {}", owner.state, owner.owner));
    }
    if owner.holders.len() < vigil::config::DEFAULT_COPIES {
        return Err(format!(
            "{} holders on {} ({})",
            owner.holders.len(),
            owner.owner,
            owner.degraded.as_deref().unwrap_or("not degraded")
        ));
    }
    for holder in &owner.holders {
        let Some(node) = nodes.iter().find(|n| n.name == holder.name) else {
            return Err(format!("holder {} is not a campaign node", holder.name));
        };
        let view = ask(client::agent(&node.socket, agent))
            .await
            .map_err(|e| format!("holder {}: {e}", holder.name))?;
        if !view.local_versions.contains(&owner.latest_seq) {
            return Err(format!(
                "holder {} lacks seq {} (has {:?})",
                holder.name, owner.latest_seq, view.local_versions
            ));
        }
    }
    Ok(())
}

/// Node `name`'s data directory: the mount point of its data file system.
pub fn data_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name).join("data")
}
