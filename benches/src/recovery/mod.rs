//! The recovery benchmark (issue 5): RTO and RPO when a host dies with its agents, on
//! a loopback cluster of real `vigil agent` processes that launch the built-in example
//! agent (`vigil example-agent`: counts, snapshots, heartbeats) for the agents they
//! own.
//!
//! Each run uses a fresh cluster, so every run starts from the same state (all agents
//! at epoch 1, evenly spread, connections and leases warm, nothing left over from an
//! earlier failover):
//!
//! 1. start N nodes (zones az1/az2/az3 round robin, LAN profile, the first seeding
//!    the rest) and wait until every node sees every other alive;
//! 2. register M agents, agent i on node i mod N, and wait until every agent
//!    heartbeats on its owner; let them run for the settle time (they snapshot and
//!    the holders grant their owners' leases);
//! 3. kill host r mod N of run r (so ten runs of ten nodes kill every host once):
//!    freeze its agent processes, read the owner's last acknowledged seq of each,
//!    SIGKILL the node and its agents (`LocalCluster::kill_with_agents`);
//! 4. from the survivors' event streams, per agent of the killed host: detection
//!    (kill → the first `member_down` of the host on any survivor), election (→ the
//!    `coordinator_elected` of the epoch it runs under), transfer (→ `agent_adopted`
//!    on the new host), start (→ `agent_running`, the first heartbeat on the new
//!    host); RTO = kill → first heartbeat. All times are the nodes' own event times
//!    and the harness's clock before the SIGKILL: one host, one clock;
//! 5. RPO: the snapshot the agent's new process resumed from (the seq the node
//!    handed it, and the count its `started` line reports) against the last
//!    snapshot its old owner acknowledged (seq, and the count in it, read while its
//!    process was frozen); every acknowledged snapshot newer than the one resumed is
//!    a loss, and a resumed count that differs from the acknowledged one fails the
//!    run.
//!
//! The bench target (`benches/recovery.rs`) runs [`run_bench`] and prints
//! [`Report::markdown`]; the smoke test runs it with tiny parameters.

pub mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use vigil::client;
use vigil::example_agent::parse_snapshot;
use vigil::harness::LocalCluster;
use vigil::harness::recovery::{
    RecoveryWatch, children, example_agent_args, resumed, versions_on_disk,
};

pub use self::report::Report;
use crate::cluster::node_names;
use crate::cluster::systems::ZONES;
use crate::snapshots::stats::CpuTimes;
use crate::{args, procstat};

/// Correctness bound for starting, converging and getting every agent to run (not a
/// performance figure).
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub runs: usize,
    pub nodes: usize,
    pub agents: usize,
    /// How long the agents run between all heartbeating and the kill.
    pub settle_secs: u64,
    /// The example agent's `--snapshot-ms` (`None`: its default, 200 ms).
    pub snapshot_ms: Option<u64>,
    /// How long a run waits for every agent to heartbeat again before it fails.
    pub timeout_secs: u64,
    /// Keep each run's scratch directory (certificates, node and agent logs, data).
    pub keep: bool,
    /// Where the raw numbers go; relative paths are taken from the workspace root.
    pub out: Option<PathBuf>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            runs: 10,
            nodes: 10,
            agents: 100,
            settle_secs: 3,
            snapshot_ms: None,
            timeout_secs: 60,
            keep: false,
            out: None,
        }
    }
}

pub const USAGE: &str = "\
usage: cargo bench -p vigil-benches --bench recovery -- [OPTIONS]

  --runs R            runs, each on a fresh cluster (default 10)
  --nodes N           nodes per cluster, zones az1..az3 round robin (default 10, at least 3)
  --agents M          agents, agent i owned by node i mod N (default 100, at least N)
  --settle-secs S     agents run this long before the kill (default 3)
  --snapshot-ms MS    the example agent's snapshot interval (default: its own, 200)
  --timeout-secs S    a run fails if an agent is not running again after this (default 60)
  --keep              keep each run's directory (logs, data) and print it
  --out PATH          raw results as JSON (default bench-results/recovery-<unix>.json,
                      relative to the workspace root)";

impl Params {
    /// Parses the bench's arguments. Arguments it does not know (Cargo passes
    /// `--bench`) are ignored. `Ok(None)` means help was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Params>, String> {
        let mut p = Params::default();
        let with_value = [
            "--runs",
            "--nodes",
            "--agents",
            "--settle-secs",
            "--snapshot-ms",
            "--timeout-secs",
            "--out",
        ];
        let Some(flags) = args::flags(args, &with_value, &["--keep"], USAGE)? else {
            return Ok(None);
        };
        for (flag, value) in flags {
            let positive = || args::positive(&flag, &value, USAGE);
            match flag.as_str() {
                "--keep" => p.keep = true,
                "--runs" => p.runs = positive()?,
                "--nodes" => p.nodes = positive()?,
                "--agents" => p.agents = positive()?,
                "--settle-secs" => p.settle_secs = args::whole(&flag, &value, USAGE)? as u64,
                "--snapshot-ms" => p.snapshot_ms = Some(positive()? as u64),
                "--timeout-secs" => p.timeout_secs = positive()? as u64,
                _ => p.out = Some(PathBuf::from(value)),
            }
        }
        if p.nodes < 3 {
            return Err(format!(
                "--nodes must be at least 3 (a majority of an agent's holders must survive)\n{USAGE}"
            ));
        }
        if p.agents < p.nodes {
            return Err(format!(
                "--agents must be at least --nodes (every host owns an agent)\n{USAGE}"
            ));
        }
        Ok(Some(p))
    }

    /// The command line that reproduces a run with these parameters.
    pub fn command_line(&self) -> String {
        let mut line = format!(
            "cargo bench -p vigil-benches --bench recovery -- --runs {} --nodes {} --agents {} --settle-secs {} --timeout-secs {}",
            self.runs, self.nodes, self.agents, self.settle_secs, self.timeout_secs
        );
        if let Some(ms) = self.snapshot_ms {
            line.push_str(&format!(" --snapshot-ms {ms}"));
        }
        if self.keep {
            line.push_str(" --keep");
        }
        if let Some(out) = &self.out {
            line.push_str(&format!(" --out {}", out.display()));
        }
        line
    }

    /// The example agent's extra flags.
    fn agent_flags(&self) -> String {
        self.snapshot_ms
            .map_or(String::new(), |ms| format!("--snapshot-ms {ms}"))
    }
}

/// One agent of the killed host. Times are ms after the kill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentResult {
    pub id: String,
    /// The last seq its owner acknowledged before the kill.
    pub acked_seq: u64,
    /// The host it runs on again, and the epoch.
    pub new_host: Option<String>,
    pub epoch: Option<u64>,
    /// Elections won for it after the kill (more than one: the agent moved on).
    pub elections: usize,
    pub coordinator: Option<String>,
    /// When the coordinator itself declared the host down, and started proposing.
    pub coordinator_down_ms: Option<i64>,
    pub coordinator_proposed_ms: Option<i64>,
    /// Holders that proposed for the epoch it runs under (more than one: competing
    /// Paxos rounds).
    pub proposers: usize,
    pub elected_ms: Option<i64>,
    pub adopted_ms: Option<i64>,
    /// The seq the new owner took over (its `agent_adopted`).
    pub adopted_seq: Option<u64>,
    /// First heartbeat on the new host: the RTO.
    pub running_ms: Option<i64>,
    /// The seq of the snapshot its new process resumed from (`None`: none).
    pub restored_seq: Option<u64>,
    /// The count in the last acknowledged snapshot, and the count its new process
    /// resumed from (the example agent's state).
    pub acked_count: Option<u64>,
    pub restored_count: Option<u64>,
    /// Processes of it started on the new host (more than one: restarted there).
    pub starts: usize,
}

impl AgentResult {
    /// Acknowledged snapshots newer than the one its new process resumed from;
    /// `None` if it did not start again (or its log says nothing).
    pub fn lost(&self) -> Option<u64> {
        self.restored_count?;
        Some(
            self.acked_seq
                .saturating_sub(self.restored_seq.unwrap_or(0)),
        )
    }

    /// Its new process resumed from a later snapshot than the last one read as
    /// acknowledged: a put still in flight when the seqs were read was acknowledged
    /// (or reached a majority of the holders) afterwards. Not a loss.
    pub fn resumed_newer(&self) -> bool {
        self.restored_seq.is_some_and(|s| s > self.acked_seq)
    }

    /// What is wrong with the state its new process resumed, if anything: a
    /// snapshot older than the last acknowledged one, or a count that does not
    /// match it (the same snapshot must hold the same count; a later one, a higher
    /// count).
    pub fn resume_problem(&self) -> Option<String> {
        let (restored, acked) = (self.restored_count?, self.acked_count?);
        match self.lost()? {
            0 if self.resumed_newer() && restored > acked => None,
            0 if !self.resumed_newer() && restored == acked => None,
            0 => Some(format!(
                "resumed count {restored} from seq {:?}, but the last acknowledged snapshot (seq {}) holds {acked}",
                self.restored_seq, self.acked_seq
            )),
            lost => Some(format!(
                "{lost} acknowledged snapshots lost (acked seq {}, resumed from seq {:?})",
                self.acked_seq, self.restored_seq
            )),
        }
    }
}

/// One run: one fresh cluster, one host killed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub run: usize,
    pub victim: String,
    pub victim_zone: String,
    /// The killed host's agents.
    pub agents: Vec<AgentResult>,
    /// Kill → the first survivor's `member_down`, and the last survivor's.
    pub detection_ms: Option<i64>,
    pub last_detection_ms: Option<i64>,
    pub detected_by: usize,
    pub survivors: usize,
    /// Share of the machine's CPU time busy: for a second before the cluster
    /// started (other processes), while the agents settled, and from the kill until
    /// every agent ran again (or the timeout).
    pub cpu_busy_before: Option<f64>,
    pub cpu_busy_settle: Option<f64>,
    /// Cores the cluster's nodes and agents used while the agents settled.
    pub cluster_cores_settle: Option<f64>,
    pub cpu_busy_recovery: Option<f64>,
    /// The acknowledged seqs stopped changing before the kill and no agent was
    /// restarted meanwhile (no put in flight at the kill).
    pub quiet: bool,
    /// What went wrong (the run counts as failed if any).
    pub failures: Vec<String>,
    /// The kept scratch directory.
    pub kept: Option<String>,
}

/// Runs the benchmark: `params.runs` fresh clusters of `binary`, one after the other.
/// Progress goes to stderr.
pub async fn run_bench(params: &Params, binary: &Path) -> Report {
    let mut report = Report::begin(params);
    for run in 1..=params.runs {
        let result = run_once(params, binary, run).await;
        eprintln!("{}", report::run_line(&result));
        report.runs.push(result);
    }
    report.finish();
    report
}

async fn run_once(params: &Params, binary: &Path, run: usize) -> RunResult {
    let names = node_names(params.nodes);
    let victim = names[(run - 1) % names.len()].clone();
    let mut result = RunResult {
        run,
        victim: victim.clone(),
        ..RunResult::default()
    };
    eprintln!(
        "run {run}/{}: {} nodes, {} agents, killing {victim}",
        params.runs, params.nodes, params.agents
    );
    result.cpu_busy_before = cpu_during(None, Duration::from_secs(1)).await.0;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut cluster = match LocalCluster::new(binary.to_path_buf(), &refs, params.keep) {
        Ok(c) => c,
        Err(e) => {
            result.failures.push(format!("cluster setup: {e}"));
            return result;
        }
    };
    if let Err(e) = measure(&mut cluster, params, binary, &names, &mut result).await {
        result.failures.push(e);
    }
    cluster.stop_all().await;
    if params.keep {
        result.kept = Some(cluster.root().display().to_string());
    }
    result
}

/// Steps 1 to 5 of one run; `Err` for a step that could not be carried out.
async fn measure(
    cluster: &mut LocalCluster,
    params: &Params,
    binary: &Path,
    names: &[String],
    r: &mut RunResult,
) -> Result<(), String> {
    // 1. The cluster, every node launching the example agent.
    let nodes: Vec<(&str, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), ZONES[i % ZONES.len()]))
        .collect();
    let launcher = example_agent_args(binary, &params.agent_flags());
    let step = |what: &'static str| move |e: vigil::harness::HarnessError| format!("{what}: {e}");
    cluster
        .start_seeded(&nodes, &launcher)
        .await
        .map_err(step("start"))?;
    cluster
        .wait_converged(SETUP_TIMEOUT)
        .await
        .map_err(step("convergence"))?;

    // 2. The agents.
    let agents: Vec<(String, String)> = (0..params.agents)
        .map(|i| (format!("agent-{i:03}"), names[i % names.len()].clone()))
        .collect();
    for (id, owner) in &agents {
        let socket = &cluster.node(owner).map_err(step("register"))?.socket;
        client::register(socket, id, r#"{"kind":"example"}"#)
            .await
            .map_err(|e| format!("register {id} on {owner}: {e}"))?;
    }
    cluster
        .wait_agents_running(&agents, SETUP_TIMEOUT)
        .await
        .map_err(step("agents running"))?;
    let settle = Duration::from_secs(params.settle_secs);
    (r.cpu_busy_settle, r.cluster_cores_settle) = cpu_during(Some(cluster), settle).await;

    // 3. The kill, watched by every survivor.
    let survivors: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != r.victim)
        .collect();
    r.survivors = survivors.len();
    let victims: Vec<String> = agents
        .iter()
        .filter(|(_, owner)| *owner == r.victim)
        .map(|(id, _)| id.clone())
        .collect();
    let mut feed = cluster.follow(&survivors).await.map_err(step("follow"))?;
    let killed = cluster
        .kill_with_agents(&r.victim, &victims, SETUP_TIMEOUT)
        .await
        .map_err(step("kill"))?;
    let at_kill = CpuTimes::read().ok();
    r.victim_zone = killed.zone.clone();
    r.quiet = killed.quiet;

    // 4. The recovery.
    let mut watch = RecoveryWatch::new(&killed);
    // An agent not running again by the timeout is recorded as a failure below.
    let _all_running = watch
        .collect(&mut feed, Duration::from_secs(params.timeout_secs))
        .await;
    let recovered = CpuTimes::read().ok();
    r.cpu_busy_recovery = at_kill.zip(recovered).map(|(a, b)| a.shares(&b).busy);
    drop(feed);
    let t0 = killed.killed_ms();
    let since_kill = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX) - t0 as i64;
    r.detection_ms = watch.first_down_ms().map(since_kill);
    r.last_detection_ms = watch.downs.values().max().copied().map(since_kill);
    r.detected_by = watch.downs.len();

    // 5. Per agent, with what its new process restored, against the last
    // acknowledged snapshot on the killed host's disk (its owner wrote it before
    // acknowledging).
    let wanted = killed
        .agents
        .iter()
        .map(|(id, a)| (id.clone(), a.seq))
        .collect();
    let victim = cluster.node(&r.victim).map_err(step("the killed host"))?;
    let acked_bodies = versions_on_disk(victim, &wanted).map_err(step("the killed host's disk"))?;
    for (id, rec) in &watch.agents {
        let running = rec.running.as_ref();
        let new_host = running.map(|(s, _)| s.node.clone());
        let coordinator = rec.elected().map(|s| s.node.clone());
        let acked = killed.agents.get(id);
        let restart = new_host
            .as_ref()
            .and_then(|h| cluster.node(h).ok())
            .and_then(|node| resumed(node, id));
        let agent = AgentResult {
            id: id.clone(),
            acked_seq: acked.map_or(0, |a| a.seq),
            epoch: rec.epoch(),
            elections: rec.elected.len(),
            coordinator_down_ms: coordinator
                .as_ref()
                .and_then(|c| watch.downs.get(c))
                .copied()
                .map(since_kill),
            coordinator_proposed_ms: rec.coordinator_proposed().map(since_kill),
            proposers: rec.proposers(),
            elected_ms: rec.elected().map(|s| since_kill(s.at_ms)),
            adopted_ms: rec.adopted().map(|(s, _)| since_kill(s.at_ms)),
            adopted_seq: rec.adopted().map(|(_, seq)| *seq),
            running_ms: running.map(|(s, _)| since_kill(s.at_ms)),
            restored_seq: restart.and_then(|r| r.seq),
            acked_count: acked_bodies
                .get(id)
                .and_then(|b| parse_snapshot(b, id).ok()),
            restored_count: restart.map(|r| r.count),
            starts: restart.map_or(0, |r| r.starts),
            new_host,
            coordinator,
        };
        if agent.acked_seq == 0 {
            r.failures
                .push(format!("{id}: no acknowledged snapshot before the kill"));
        } else if agent.acked_count.is_none() {
            r.failures.push(format!(
                "{id}: seq {} was acknowledged, but the killed owner's disk has no readable counter snapshot of that seq",
                agent.acked_seq
            ));
        }
        match (agent.running_ms, agent.lost(), agent.resume_problem()) {
            (None, _, _) => r.failures.push(format!(
                "{id}: not running again within {} s",
                params.timeout_secs
            )),
            (Some(_), None, _) => r.failures.push(format!(
                "{id}: no `started` line in its log on {}",
                agent.new_host.as_deref().unwrap_or("?")
            )),
            (Some(_), Some(_), Some(problem)) => r.failures.push(format!("{id}: {problem}")),
            (Some(_), Some(_), None) => {}
        }
        r.agents.push(agent);
    }
    Ok(())
}

/// While waiting `wait`: the share of the machine's CPU time that was busy, and the
/// cores that the processes of `cluster` (its nodes and the agents they launched)
/// used.
async fn cpu_during(cluster: Option<&LocalCluster>, wait: Duration) -> (Option<f64>, Option<f64>) {
    let pids: Vec<u32> = cluster.map_or(Vec::new(), |c| {
        c.nodes()
            .filter(|n| n.is_running())
            .flat_map(|n| {
                let agents = children(n.pid)
                    .into_iter()
                    .filter_map(|p| u32::try_from(p).ok());
                std::iter::once(n.pid).chain(agents)
            })
            .collect()
    });
    let sample_all = || -> Vec<Option<procstat::ProcSample>> {
        pids.iter().map(|p| procstat::sample(*p).ok()).collect()
    };
    let (machine, processes) = (CpuTimes::read().ok(), sample_all());
    tokio::time::sleep(wait).await;
    let (machine_after, processes_after) = (CpuTimes::read().ok(), sample_all());
    let busy = machine.zip(machine_after).map(|(a, b)| a.shares(&b).busy);
    let cores = processes
        .iter()
        .zip(&processes_after)
        .filter_map(|(a, b)| Some(procstat::cpu_fraction(a.as_ref()?, b.as_ref()?)))
        .sum::<f64>();
    (busy, cluster.map(|_| cores))
}
