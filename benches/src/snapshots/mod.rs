//! The snapshot replication benchmark: quorum puts on a 6-node loopback cluster of
//! real `vigil agent` processes (two per zone az1..az3, k = 3), side by side with
//! the same bytes written to the local disk with fsync, in the same run and on the
//! same filesystem (the baseline files live in the cluster's scratch directory,
//! next to the nodes' data directories).
//!
//! 1. **Latency.** One agent on n1 per size (1 KiB, 64 KiB, 1 MiB); a few untimed
//!    warm-up puts, then N sequential `?ack=quorum` puts, each timed on the client
//!    from the socket request to the decoded reply. Then the same N writes of the
//!    same bytes to the local disk, once per [`disk::Recipe`]. Repeated in rounds.
//! 2. **Throughput.** 100 agents spread over the six owners push back to back for a
//!    ramp plus a window; the acknowledged bytes completing inside the window give
//!    MiB/s. The baseline: as many threads writing to their own directories with
//!    each recipe for the same ramp and window. 1 MiB and 64 KiB, in rounds.
//! 3. **Repair.** A fresh cluster per run: agents × versions × 1 MiB put with k = 3,
//!    every copy in place, then a holder is SIGKILLed; the time from the kill until
//!    every agent that had a copy on it lists three live holders again (polled on
//!    the owners every 50 ms), with the nodes' own event times for detection and
//!    for each agent's `repair_done`, and the bytes copied. Run with the default
//!    `--repair-rate` and with the others given (default 1GiB).
//!
//! The bench target (`benches/snapshots.rs`) runs [`run_bench`] and prints
//! [`report::render`].

pub mod disk;
pub mod report;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;
use vigil::client::{self, StreamItem};
use vigil::events::EventRecord;
use vigil::harness::LocalCluster;

use self::disk::Recipe;
use self::stats::CpuTimes;
use crate::cluster::report::{Machine, git_revision, load_average};
use crate::cluster::systems::{to_unix_ms, unix_ms};
use crate::{args, procstat};

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;
/// The sizes of the latency part.
pub const SIZES: [usize; 3] = [KIB, 64 * KIB, MIB];
/// The cluster: two nodes per zone.
pub const NODES: [&str; 6] = ["n1", "n2", "n3", "n4", "n5", "n6"];
pub const ZONES: [&str; 3] = ["az1", "az2", "az3"];
/// Copies per agent and the quorum the puts ask for (the node's defaults).
pub const COPIES: usize = 3;
pub const QUORUM: usize = COPIES / 2 + 1;
/// Correctness bounds for waits; a run that hits one records a failure.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
const COPIES_TIMEOUT: Duration = Duration::from_secs(180);
const REPAIR_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the repair part asks the owners for their agents' holders.
pub const REPAIR_POLL: Duration = Duration::from_millis(50);
/// Concurrent pushers while filling a repair cluster.
const FILL_PARALLEL: usize = 8;

pub fn size_name(size: usize) -> String {
    if size >= MIB && size.is_multiple_of(MIB) {
        format!("{} MiB", size / MIB)
    } else if size >= KIB && size.is_multiple_of(KIB) {
        format!("{} KiB", size / KIB)
    } else {
        format!("{size} B")
    }
}

/// Which holder dies in the repair part, and who owns the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    /// Agents owned by n1..n5 in turn; n6 (az3, whose only other node is n3) dies:
    /// it holds the az3 copy of roughly half of them. Five owners repair at once,
    /// each under its own rate limit.
    Spread,
    /// Every agent owned by n1 (az1); n4, the only other az1 node, holds a copy of
    /// every one of them and dies. One owner repairs everything under one limit.
    OneOwner,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Spread => "spread",
            Layout::OneOwner => "one-owner",
        }
    }

    fn parse(s: &str) -> Option<Layout> {
        match s {
            "spread" => Some(Layout::Spread),
            "one-owner" => Some(Layout::OneOwner),
            _ => None,
        }
    }

    pub fn owners(self) -> Vec<String> {
        match self {
            Layout::Spread => NODES[..5].iter().map(|s| s.to_string()).collect(),
            Layout::OneOwner => vec!["n1".into()],
        }
    }

    pub fn victim(self) -> &'static str {
        match self {
            Layout::Spread => "n6",
            Layout::OneOwner => "n4",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Latency,
    Throughput,
    Repair,
}

impl Part {
    fn parse(s: &str) -> Option<Part> {
        match s {
            "latency" => Some(Part::Latency),
            "throughput" => Some(Part::Throughput),
            "repair" => Some(Part::Repair),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Part::Latency => "latency",
            Part::Throughput => "throughput",
            Part::Repair => "repair",
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub parts: BTreeSet<Part>,
    /// Rounds of the latency and throughput parts.
    pub rounds: usize,
    /// Timed puts per round for 1 KiB, 64 KiB, 1 MiB.
    pub counts: [usize; 3],
    /// Untimed puts (and baseline writes) before each size's timed ones.
    pub warmup: usize,
    /// Concurrent agents (and baseline writers) of the throughput part.
    pub agents: usize,
    /// Sizes of the throughput part.
    pub tp_sizes: Vec<usize>,
    pub ramp: Duration,
    pub window: Duration,
    /// Pause between throughput runs, for the last copies and writeback to settle.
    pub pause: Duration,
    /// How long the idle cluster's CPU is sampled before the first measurement
    /// (zero: not sampled).
    pub idle_sample: Duration,
    pub repair_rounds: usize,
    pub repair_agents: usize,
    pub repair_versions: usize,
    pub repair_size: usize,
    pub repair_layouts: Vec<Layout>,
    /// `None`: the node's default.
    pub repair_rates: Vec<Option<String>>,
    /// Keep the scratch directories (node logs, data).
    pub keep: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            parts: [Part::Latency, Part::Throughput, Part::Repair].into(),
            rounds: 3,
            counts: [500, 500, 100],
            warmup: 5,
            agents: 100,
            tp_sizes: vec![MIB, 64 * KIB],
            ramp: Duration::from_secs(2),
            window: Duration::from_secs(10),
            pause: Duration::from_secs(2),
            idle_sample: Duration::from_secs(3),
            repair_rounds: 2,
            repair_agents: 64,
            repair_versions: 4,
            repair_size: MIB,
            repair_layouts: vec![Layout::Spread, Layout::OneOwner],
            repair_rates: vec![None, Some("1GiB".into())],
            keep: false,
        }
    }
}

pub const USAGE: &str = "\
usage: cargo bench -p vigil-benches --bench snapshots -- [OPTIONS]

  --only P,P,...          parts to run: latency, throughput, repair (default all)
  --rounds R              rounds of the latency and throughput parts (default 3)
  --counts A,B,C          timed puts per round of 1 KiB, 64 KiB, 1 MiB (default 500,500,100)
  --warmup W              untimed puts before each size (default 5)
  --agents N              concurrent agents / disk writers (default 100)
  --ramp-secs S           throughput: load before the window (default 2)
  --window-secs S         throughput: measurement window (default 10)
  --repair-rounds R       rounds of the repair part (default 2)
  --repair-agents N       agents in a repair cluster (default 64)
  --repair-versions V     1 MiB versions per agent (default 4)
  --repair-layouts L,L    spread (owners n1..n5, n6 dies), one-owner (n1 owns all,
                          n4 dies) (default both)
  --repair-rates R,R      --repair-rate of the nodes; `default` for the node's own
                          (default default,1GiB)
  --keep                  keep the scratch directories (logs, data) and print them";

impl Params {
    /// Parses the bench's arguments. Arguments it does not know (Cargo passes
    /// `--bench`) are ignored. `Ok(None)` means help was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Params>, String> {
        let mut p = Params::default();
        let with_value = [
            "--only",
            "--rounds",
            "--counts",
            "--warmup",
            "--agents",
            "--ramp-secs",
            "--window-secs",
            "--repair-rounds",
            "--repair-agents",
            "--repair-versions",
            "--repair-layouts",
            "--repair-rates",
        ];
        let Some(flags) = args::flags(args, &with_value, &["--keep"], USAGE)? else {
            return Ok(None);
        };
        for (flag, value) in flags {
            let number = |v: &str| args::whole(&flag, v, USAGE);
            let positive = |v: &str| args::positive(&flag, v, USAGE);
            match flag.as_str() {
                "--keep" => p.keep = true,
                "--only" => {
                    p.parts = value
                        .split(',')
                        .map(|s| {
                            Part::parse(s.trim())
                                .ok_or_else(|| format!("--only: unknown part {s:?}\n{USAGE}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--rounds" => p.rounds = positive(&value)?,
                "--counts" => {
                    let v = value
                        .split(',')
                        .map(positive)
                        .collect::<Result<Vec<_>, _>>()?;
                    p.counts = v
                        .try_into()
                        .map_err(|_| format!("--counts needs three numbers\n{USAGE}"))?;
                }
                "--warmup" => p.warmup = number(&value)?,
                "--agents" => p.agents = positive(&value)?,
                "--ramp-secs" => p.ramp = Duration::from_secs(number(&value)? as u64),
                "--window-secs" => p.window = Duration::from_secs(positive(&value)? as u64),
                "--repair-rounds" => p.repair_rounds = positive(&value)?,
                "--repair-agents" => p.repair_agents = positive(&value)?,
                "--repair-versions" => p.repair_versions = positive(&value)?,
                "--repair-layouts" => {
                    p.repair_layouts = value
                        .split(',')
                        .map(|s| {
                            Layout::parse(s.trim()).ok_or_else(|| {
                                format!("--repair-layouts: unknown layout {s:?}\n{USAGE}")
                            })
                        })
                        .collect::<Result<_, _>>()?;
                }
                _ => {
                    p.repair_rates = value
                        .split(',')
                        .map(|s| match s.trim() {
                            "default" => Ok(None),
                            r if vigil::config::parse_size(r).is_some_and(|b| b > 0) => {
                                Ok(Some(r.to_string()))
                            }
                            r => Err(format!("--repair-rates: {r:?} is not a size\n{USAGE}")),
                        })
                        .collect::<Result<_, _>>()?;
                }
            }
        }
        Ok(Some(p))
    }

    /// The command line that reproduces a run with these parameters.
    pub fn command_line(&self) -> String {
        let list = |v: Vec<String>| v.join(",");
        let mut line = format!(
            "cargo bench -p vigil-benches --bench snapshots -- --only {} --rounds {} --counts {} --warmup {} --agents {} --ramp-secs {} --window-secs {} --repair-rounds {} --repair-agents {} --repair-versions {} --repair-layouts {} --repair-rates {}",
            list(self.parts.iter().map(|p| p.name().to_string()).collect()),
            self.rounds,
            list(self.counts.iter().map(usize::to_string).collect()),
            self.warmup,
            self.agents,
            self.ramp.as_secs(),
            self.window.as_secs(),
            self.repair_rounds,
            self.repair_agents,
            self.repair_versions,
            list(
                self.repair_layouts
                    .iter()
                    .map(|l| l.name().to_string())
                    .collect()
            ),
            list(
                self.repair_rates
                    .iter()
                    .map(|r| r.clone().unwrap_or_else(|| "default".into()))
                    .collect()
            ),
        );
        if self.keep {
            line.push_str(" --keep");
        }
        line
    }
}

/// A snapshot body of `size` pseudo-random (incompressible) bytes.
pub fn body(size: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    Bytes::from(out)
}

// ---- results ------------------------------------------------------------------------

/// One round of one size of the latency part.
#[derive(Debug, Clone)]
pub struct LatencyRound {
    pub round: usize,
    pub size: usize,
    /// Client-side ms of the puts acknowledged by a quorum.
    pub vigil: Vec<f64>,
    pub vigil_errors: Vec<String>,
    /// ms per write of each recipe (empty if the baseline failed; see failures).
    pub disk: BTreeMap<Recipe, Vec<f64>>,
    /// CPU of the six nodes, and of the rest of the machine (other processes, kernel
    /// threads), in cores, while the timed vigil puts ran.
    pub vigil_node_cores: Option<f64>,
    pub other_cores: Option<f64>,
    /// Kernel-mode share of the nodes' CPU time during the timed puts.
    pub node_sys_share: Option<f64>,
    /// UDP packets the six nodes sent per timed put.
    pub udp_packets_per_put: Option<f64>,
    /// Mean time n1 itself took per timed put (its `vigil_snapshot_put_seconds`
    /// histogram: from the owner task taking the put, body already read, to the
    /// quorum); the rest of the client's time is the socket, HTTP and the body upload.
    pub node_put_mean_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Writer {
    Vigil,
    Disk(Recipe),
}

impl Writer {
    pub fn name(self) -> &'static str {
        match self {
            Writer::Vigil => "vigil quorum put",
            Writer::Disk(r) => r.name(),
        }
    }
}

/// One throughput measurement.
#[derive(Debug, Clone)]
pub struct ThroughputRun {
    pub round: usize,
    pub size: usize,
    pub writer: Writer,
    pub concurrency: usize,
    pub window_secs: f64,
    /// Latencies (ms) of the operations acknowledged inside the window.
    pub latencies_ms: Vec<f64>,
    /// Failed operations by message (truncated), with counts.
    pub errors: BTreeMap<String, usize>,
    /// vigil: bytes the six nodes wrote durably per second (every copy, the owners'
    /// included), from `vigil_snapshot_bytes_written_total`.
    pub node_disk_bytes_per_s: Option<f64>,
    /// CPU of the six nodes together, in cores.
    pub node_cpu_cores: Option<f64>,
    /// Kernel-mode share of the nodes' CPU time.
    pub node_sys_share: Option<f64>,
    /// UDP packets the six nodes sent per second (QUIC: snapshot streams, acks,
    /// SWIM), from `vigil_udp_tx_packets_total`.
    pub node_udp_packets_per_s: Option<f64>,
    /// CPU of this benchmark process (the clients, or the disk writers), in cores.
    pub bench_cpu_cores: Option<f64>,
    /// Machine-wide shares of CPU time during the window (all CPUs).
    pub machine: Option<stats::CpuShares>,
    /// Busy CPU not used by the nodes or this process (other processes on the
    /// machine, kernel threads such as writeback), in cores.
    pub other_cores: Option<f64>,
}

impl ThroughputRun {
    pub fn mib_per_s(&self) -> f64 {
        self.latencies_ms.len() as f64 * self.size as f64 / MIB as f64 / self.window_secs
    }

    pub fn ops_per_s(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.window_secs
    }
}

/// One repair measurement (one fresh cluster). Times are ms from the SIGKILL;
/// node-reported ones come from the nodes' event records (same machine clock).
#[derive(Debug, Clone)]
pub struct RepairRun {
    pub round: usize,
    pub layout: Layout,
    /// `--repair-rate` given to the nodes; `None` = the node's default (64 MiB/s).
    pub rate: Option<String>,
    pub rate_bytes_per_s: u64,
    pub agents: usize,
    pub versions: usize,
    pub size: usize,
    /// How long filling the cluster took (puts, then every copy confirmed on disk).
    pub fill_secs: f64,
    /// Agents with a copy on the victim.
    pub affected: usize,
    /// Bytes on the victim's disk for those agents (versions × size each).
    pub victim_bytes: u64,
    pub first_suspect_ms: Option<i64>,
    /// First survivor to declare the victim down.
    pub first_down_ms: Option<i64>,
    /// The last owner (of an affected agent) to declare it down.
    pub owners_down_ms: Option<i64>,
    pub first_repair_ms: Option<i64>,
    pub last_repair_ms: Option<i64>,
    /// The poll that first saw every affected agent with three live holders.
    pub all_repaired_ms: Option<i64>,
    pub repair_events: usize,
    /// Sum of the bytes the `repair_done` events report, per owner.
    pub repaired_bytes: BTreeMap<String, u64>,
    /// Increase of the survivors' `vigil_replication_payload_bytes_total{direction="out"}`.
    pub payload_out_bytes: Option<f64>,
    pub failures: Vec<String>,
}

impl RepairRun {
    pub fn repaired_total(&self) -> u64 {
        self.repaired_bytes.values().sum()
    }

    /// The least time the token bucket allows (one second of burst, then the rate)
    /// for the busiest owner's bytes.
    pub fn limiter_floor_secs(&self) -> f64 {
        let rate = self.rate_bytes_per_s as f64;
        self.repaired_bytes
            .values()
            .map(|&b| ((b as f64 - rate) / rate).max(0.0))
            .fold(0.0, f64::max)
    }
}

/// Everything one run of the benchmark measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub git: Option<String>,
    pub machine: Machine,
    pub mem_total: Option<String>,
    pub load_before: Option<String>,
    pub load_after: Option<String>,
    pub data_root: Option<PathBuf>,
    pub mount: Option<stats::MountInfo>,
    /// CPU of the six idle nodes (membership only), and of the rest of the machine,
    /// in cores, over [`Params::idle_sample`] before the first measurement.
    pub idle_node_cores: Option<f64>,
    pub idle_other_cores: Option<f64>,
    pub params: Params,
    pub latency: Vec<LatencyRound>,
    pub throughput: Vec<ThroughputRun>,
    pub repair: Vec<RepairRun>,
    /// Problems that cost a part or a run its figures.
    pub failures: Vec<String>,
    pub wall_secs: f64,
}

fn mem_total() -> Option<String> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
}

// ---- the cluster --------------------------------------------------------------------

/// Starts n1..n6 (zones az1, az2, az3 in turn, n1 seeding the rest) with `extra`
/// flags and waits until every node sees all six alive.
async fn start_cluster(bin: &Path, extra: &[String], keep: bool) -> Result<LocalCluster, String> {
    let mut c = LocalCluster::new(bin.to_path_buf(), &NODES, keep)
        .map_err(|e| format!("cluster setup: {e}"))?;
    let seed = c
        .start_with(NODES[0], ZONES[0], &[], extra)
        .await
        .map_err(|e| format!("start n1: {e}"))?
        .addr;
    for (i, name) in NODES.iter().enumerate().skip(1) {
        c.start_with(name, ZONES[i % ZONES.len()], &[seed], extra)
            .await
            .map_err(|e| format!("start {name}: {e}"))?;
    }
    c.wait_converged(CONVERGE_TIMEOUT)
        .await
        .map_err(|e| format!("convergence: {e}"))?;
    Ok(c)
}

fn socket_of(c: &LocalCluster, name: &str) -> Result<PathBuf, String> {
    c.node(name)
        .map(|n| n.socket.clone())
        .map_err(|e| e.to_string())
}

async fn read_metrics(socket: &Path) -> Result<String, String> {
    let reply = client::get(socket, "/metrics")
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    if reply.status != 200 {
        return Err(format!("GET /metrics: status {}", reply.status));
    }
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

/// Sum of one metric over `nodes`.
async fn cluster_metric(
    c: &LocalCluster,
    nodes: &[&str],
    name: &str,
    labels: &[&str],
) -> Result<f64, String> {
    let mut sum = 0.0;
    for n in nodes {
        let text = read_metrics(&socket_of(c, n)?)
            .await
            .map_err(|e| format!("{n}: {e}"))?;
        sum += stats::metric_sum(&text, name, labels);
    }
    Ok(sum)
}

fn short_error(e: &str) -> String {
    let mut s: String = e.chars().take(160).collect();
    if s.len() < e.len() {
        s.push('…');
    }
    s
}

// ---- latency ------------------------------------------------------------------------

async fn latency_round(
    c: &LocalCluster,
    round: usize,
    params: &Params,
    failures: &mut Vec<String>,
) -> Result<Vec<LatencyRound>, String> {
    let socket = socket_of(c, "n1")?;
    let mut out = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let count = params.counts[i];
        let agent = format!("lat-{}", size / KIB);
        let data = body(size, 0x5eed + i as u64);
        eprintln!(
            "snapshots: latency round {round}/{}: {} x {count}...",
            params.rounds,
            size_name(size)
        );
        for _ in 0..params.warmup {
            if let Err(e) =
                client::put_snapshot(&socket, &agent, data.clone(), Some("quorum")).await
            {
                failures.push(format!("latency warm-up {}: {e}", size_name(size)));
            }
        }
        let mut lat = LatencyRound {
            round,
            size,
            vigil: Vec::with_capacity(count),
            vigil_errors: Vec::new(),
            disk: BTreeMap::new(),
            vigil_node_cores: None,
            other_cores: None,
            node_sys_share: None,
            udp_packets_per_put: None,
            node_put_mean_ms: None,
        };
        let put_seconds = |text: &str| {
            (
                stats::metric_sum(text, "vigil_snapshot_put_seconds_sum", &[]),
                stats::metric_sum(text, "vigil_snapshot_put_seconds_count", &[]),
            )
        };
        let hist_before = read_metrics(&socket).await.map(|t| put_seconds(&t));
        let node_pids: Vec<u32> = c
            .nodes()
            .filter(|n| n.is_running())
            .map(|n| n.pid)
            .collect();
        let mut pids = node_pids.clone();
        pids.push(std::process::id());
        let (a, began) = (sample(Some(c), &pids).await, Instant::now());
        for _ in 0..count {
            let started = Instant::now();
            let r = client::put_snapshot(&socket, &agent, data.clone(), Some("quorum")).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            match r {
                Ok(put) if put.stored_on.len() >= QUORUM => lat.vigil.push(ms),
                Ok(put) => lat.vigil_errors.push(format!(
                    "acknowledged with {} copies: {put:?}",
                    put.stored_on.len()
                )),
                Err(e) => lat.vigil_errors.push(short_error(&e.to_string())),
            }
        }
        let b = sample(Some(c), &pids).await;
        let hist_after = read_metrics(&socket).await.map(|t| put_seconds(&t));
        if let (Ok((s0, n0)), Ok((s1, n1))) = (hist_before, hist_after)
            && n1 > n0
        {
            lat.node_put_mean_ms = Some((s1 - s0) / (n1 - n0) * 1000.0);
        }
        let fig = figures(&a, &b, &node_pids, began.elapsed().as_secs_f64());
        lat.vigil_node_cores = fig.node_cpu_cores;
        lat.other_cores = fig.other_cores;
        lat.node_sys_share = fig.node_sys_share;
        lat.udp_packets_per_put = fig
            .node_udp_packets
            .filter(|_| count > 0)
            .map(|p| p / count as f64);
        for recipe in Recipe::ALL {
            let dir = c
                .root()
                .join("baseline")
                .join(format!("lat-{}k-{recipe:?}-r{round}", size / KIB));
            let data = data.clone();
            let (warmup, n) = (params.warmup, count);
            let r = tokio::task::spawn_blocking(move || {
                disk::sequential(&dir, recipe, &data, warmup, n)
            })
            .await
            .map_err(|e| format!("baseline task: {e}"))?;
            match r {
                Ok(v) => {
                    lat.disk.insert(recipe, v);
                }
                Err(e) => failures.push(format!(
                    "latency baseline {} {}: {e}",
                    recipe.name(),
                    size_name(size)
                )),
            }
        }
        out.push(lat);
    }
    Ok(out)
}

// ---- throughput ---------------------------------------------------------------------

/// Readings at a window boundary.
struct Sample {
    /// Sums over the six nodes of `vigil_snapshot_bytes_written_total` and
    /// `vigil_udp_tx_packets_total` (`None` when not asked for or unreadable).
    disk_bytes: Option<f64>,
    udp_packets: Option<f64>,
    procs: BTreeMap<u32, procstat::ProcSample>,
    cpu: Option<CpuTimes>,
}

async fn sample(c: Option<&LocalCluster>, pids: &[u32]) -> Sample {
    let mut counters = None;
    if let Some(c) = c {
        let mut sums = Some((0.0, 0.0));
        for n in NODES {
            let text = match socket_of(c, n) {
                Ok(socket) => read_metrics(&socket).await.ok(),
                Err(_) => None,
            };
            sums = match (sums, text) {
                (Some((d, u)), Some(t)) => Some((
                    d + stats::metric_sum(&t, "vigil_snapshot_bytes_written_total", &[]),
                    u + stats::metric_sum(&t, "vigil_udp_tx_packets_total", &[]),
                )),
                _ => None,
            };
        }
        counters = sums;
    }
    let procs = pids
        .iter()
        .filter_map(|&p| procstat::sample(p).ok().map(|s| (p, s)))
        .collect();
    Sample {
        disk_bytes: counters.map(|c| c.0),
        udp_packets: counters.map(|c| c.1),
        procs,
        cpu: CpuTimes::read().ok(),
    }
}

struct Figures {
    node_disk_bytes_per_s: Option<f64>,
    /// UDP packets the six nodes sent over the interval (not per second).
    node_udp_packets: Option<f64>,
    node_cpu_cores: Option<f64>,
    /// Kernel-mode share of the nodes' CPU time.
    node_sys_share: Option<f64>,
    bench_cpu_cores: Option<f64>,
    machine: Option<stats::CpuShares>,
    other_cores: Option<f64>,
}

fn figures(a: &Sample, b: &Sample, node_pids: &[u32], window_secs: f64) -> Figures {
    let cpu_of = |pid: u32| {
        let (x, y) = (a.procs.get(&pid)?, b.procs.get(&pid)?);
        Some(procstat::cpu_fraction(x, y))
    };
    let nodes: Option<f64> = if node_pids.is_empty() {
        None
    } else {
        node_pids.iter().map(|&p| cpu_of(p)).sum()
    };
    let ticks: Option<(u64, u64)> = if node_pids.is_empty() {
        None
    } else {
        node_pids
            .iter()
            .map(|p| {
                let (x, y) = (a.procs.get(p)?, b.procs.get(p)?);
                Some((
                    y.utime_ticks.saturating_sub(x.utime_ticks),
                    y.stime_ticks.saturating_sub(x.stime_ticks),
                ))
            })
            .try_fold((0, 0), |acc, t| t.map(|(u, s)| (acc.0 + u, acc.1 + s)))
    };
    let machine = a.cpu.zip(b.cpu).map(|(x, y)| x.shares(&y));
    let bench = cpu_of(std::process::id());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let ours = nodes.unwrap_or(0.0) + bench.unwrap_or(0.0);
    Figures {
        node_disk_bytes_per_s: a
            .disk_bytes
            .zip(b.disk_bytes)
            .map(|(x, y)| (y - x) / window_secs),
        node_udp_packets: a.udp_packets.zip(b.udp_packets).map(|(x, y)| y - x),
        node_cpu_cores: nodes,
        node_sys_share: ticks
            .filter(|(u, s)| u + s > 0)
            .map(|(u, s)| s as f64 / (u + s) as f64),
        bench_cpu_cores: bench,
        machine,
        other_cores: machine.map(|m| (m.busy * cpus - ours).max(0.0)),
    }
}

async fn vigil_throughput(
    c: &LocalCluster,
    agents: &[(String, PathBuf)],
    round: usize,
    size: usize,
    params: &Params,
) -> ThroughputRun {
    let data = body(size, 0x7407 + size as u64);
    let begin = Instant::now();
    let start = begin + params.ramp;
    let end = start + params.window;
    let mut set = JoinSet::new();
    for (agent, socket) in agents {
        let (agent, socket, data) = (agent.clone(), socket.clone(), data.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            while Instant::now() < end {
                let s = Instant::now();
                let r = client::put_snapshot(&socket, &agent, data.clone(), Some("quorum")).await;
                let f = Instant::now();
                match r {
                    Ok(put) if put.stored_on.len() >= QUORUM => {
                        if f >= start && f <= end {
                            lat.push((f - s).as_secs_f64() * 1000.0);
                        }
                    }
                    Ok(put) => {
                        *errors
                            .entry(format!("acknowledged with {} copies", put.stored_on.len()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        *errors.entry(short_error(&e.to_string())).or_default() += 1;
                        // Do not spin on an error that comes back at once.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (lat, errors)
        });
    }
    let node_pids: Vec<u32> = c
        .nodes()
        .filter(|n| n.is_running())
        .map(|n| n.pid)
        .collect();
    let mut pids = node_pids.clone();
    pids.push(std::process::id());
    tokio::time::sleep_until(start.into()).await;
    let a = sample(Some(c), &pids).await;
    tokio::time::sleep_until(end.into()).await;
    let b = sample(Some(c), &pids).await;
    let mut run = ThroughputRun {
        round,
        size,
        writer: Writer::Vigil,
        concurrency: agents.len(),
        window_secs: params.window.as_secs_f64(),
        latencies_ms: Vec::new(),
        errors: BTreeMap::new(),
        node_disk_bytes_per_s: None,
        node_cpu_cores: None,
        node_sys_share: None,
        node_udp_packets_per_s: None,
        bench_cpu_cores: None,
        machine: None,
        other_cores: None,
    };
    let f = figures(&a, &b, &node_pids, run.window_secs);
    run.node_disk_bytes_per_s = f.node_disk_bytes_per_s;
    run.node_sys_share = f.node_sys_share;
    run.node_udp_packets_per_s = f.node_udp_packets.map(|p| p / run.window_secs);
    run.node_cpu_cores = f.node_cpu_cores;
    run.bench_cpu_cores = f.bench_cpu_cores;
    run.machine = f.machine;
    run.other_cores = f.other_cores;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((lat, errors)) => {
                run.latencies_ms.extend(lat);
                for (e, n) in errors {
                    *run.errors.entry(e).or_default() += n;
                }
            }
            Err(e) => *run.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    run
}

async fn disk_throughput(
    c: &LocalCluster,
    round: usize,
    size: usize,
    recipe: Recipe,
    params: &Params,
) -> ThroughputRun {
    let data = body(size, 0xd15c + size as u64);
    let begin = Instant::now();
    let start = begin + params.ramp;
    let end = start + params.window;
    let dir = c
        .root()
        .join("baseline")
        .join(format!("tp-{}k-{recipe:?}-r{round}", size / KIB));
    let writers = params.agents;
    let task = tokio::task::spawn_blocking(move || {
        disk::concurrent(&dir, recipe, &data, writers, start, end)
    });
    let node_pids: Vec<u32> = c
        .nodes()
        .filter(|n| n.is_running())
        .map(|n| n.pid)
        .collect();
    let mut pids = node_pids.clone();
    pids.push(std::process::id());
    tokio::time::sleep_until(start.into()).await;
    let a = sample(None, &pids).await;
    tokio::time::sleep_until(end.into()).await;
    let b = sample(None, &pids).await;
    let window_secs = params.window.as_secs_f64();
    let f = figures(&a, &b, &node_pids, window_secs);
    let mut run = ThroughputRun {
        round,
        size,
        writer: Writer::Disk(recipe),
        concurrency: writers,
        window_secs,
        latencies_ms: Vec::new(),
        errors: BTreeMap::new(),
        node_disk_bytes_per_s: None,
        node_cpu_cores: f.node_cpu_cores,
        node_sys_share: f.node_sys_share,
        node_udp_packets_per_s: None,
        bench_cpu_cores: f.bench_cpu_cores,
        machine: f.machine,
        other_cores: f.other_cores,
    };
    match task.await {
        Ok(Ok(tallies)) => {
            for t in tallies {
                run.latencies_ms.extend(t.latencies_ms);
                for e in t.errors {
                    *run.errors.entry(short_error(&e)).or_default() += 1;
                }
            }
        }
        Ok(Err(e)) => *run.errors.entry(short_error(&e)).or_default() += 1,
        Err(e) => *run.errors.entry(format!("task: {e}")).or_default() += 1,
    }
    run
}

// ---- repair -------------------------------------------------------------------------

/// Follows `socket`'s events from after `since` until told to stop.
fn follow_events(
    socket: PathBuf,
    since: u64,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<Vec<EventRecord>, String>> {
    tokio::spawn(async move {
        let since = (since > 0).then_some(since);
        let mut stream = client::events(&socket, since)
            .await
            .map_err(|e| format!("events: {e}"))?;
        let mut out = Vec::new();
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(out),
                item = stream.next() => match item {
                    Ok(Some(StreamItem::Event(e))) => out.push(e),
                    Ok(Some(StreamItem::Error(e))) => {
                        return Err(format!("event stream cut off: {}", e.error));
                    }
                    Ok(None) => return Ok(out),
                    Err(e) => return Err(format!("events: {e}")),
                },
            }
        }
    })
}

/// Waits until every agent in `ids` has `COPIES` holders on its owner, each with
/// every seq in `1..=versions` on its disk.
async fn wait_all_copies(
    c: &LocalCluster,
    ids: &BTreeMap<String, String>,
    versions: u64,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let deadline = Instant::now() + COPIES_TIMEOUT;
    loop {
        let mut views = BTreeMap::new();
        for n in NODES {
            let agents = client::agents(&socket_of(c, n)?)
                .await
                .map_err(|e| format!("{n}: GET /v1/agents: {e}"))?;
            views.insert(n.to_string(), agents);
        }
        let mut holders = BTreeMap::new();
        let mut missing = Vec::new();
        for (id, owner) in ids {
            let Some(rec) = views
                .get(owner)
                .and_then(|v| v.iter().find(|a| &a.id == id))
            else {
                missing.push(format!("{id}: unknown to its owner"));
                continue;
            };
            let complete = rec.holders.len() == COPIES
                && rec.holders.iter().all(|h| {
                    views
                        .get(&h.name)
                        .and_then(|v| v.iter().find(|a| &a.id == id))
                        .is_some_and(|a| (1..=versions).all(|s| a.local_versions.contains(&s)))
                });
            if complete {
                holders.insert(
                    id.clone(),
                    rec.holders.iter().map(|h| h.name.clone()).collect(),
                );
            } else {
                missing.push(format!("{id}: {:?}", rec.holders));
            }
        }
        if missing.is_empty() {
            return Ok(holders);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "copies incomplete after {COPIES_TIMEOUT:?}: {} agents, e.g. {}",
                missing.len(),
                missing[0]
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn repair_run(
    bin: &Path,
    round: usize,
    layout: Layout,
    rate: Option<String>,
    params: &Params,
) -> RepairRun {
    let default_rate = vigil::config::DEFAULT_REPAIR_RATE;
    let mut run = RepairRun {
        round,
        layout,
        rate: rate.clone(),
        rate_bytes_per_s: rate
            .as_deref()
            .and_then(vigil::config::parse_size)
            .unwrap_or(default_rate),
        agents: params.repair_agents,
        versions: params.repair_versions,
        size: params.repair_size,
        fill_secs: 0.0,
        affected: 0,
        victim_bytes: 0,
        first_suspect_ms: None,
        first_down_ms: None,
        owners_down_ms: None,
        first_repair_ms: None,
        last_repair_ms: None,
        all_repaired_ms: None,
        repair_events: 0,
        repaired_bytes: BTreeMap::new(),
        payload_out_bytes: None,
        failures: Vec::new(),
    };
    let extra: Vec<String> = match &rate {
        Some(r) => vec!["--repair-rate".into(), r.clone()],
        None => Vec::new(),
    };
    let mut c = match start_cluster(bin, &extra, params.keep).await {
        Ok(c) => c,
        Err(e) => {
            run.failures.push(e);
            return run;
        }
    };
    if params.keep {
        eprintln!("  scratch directory: {}", c.root().display());
    }
    if let Err(e) = repair_measure(&mut c, layout, params, &mut run).await {
        run.failures.push(e);
    }
    c.stop_all().await;
    run
}

async fn repair_measure(
    c: &mut LocalCluster,
    layout: Layout,
    params: &Params,
    run: &mut RepairRun,
) -> Result<(), String> {
    let owners = layout.owners();
    let victim = layout.victim();
    // 1. Fill: register, then push every version, FILL_PARALLEL agents at a time.
    let fill_started = Instant::now();
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..params.repair_agents {
        let id = format!("rep-{i:03}");
        let owner = owners[i % owners.len()].clone();
        client::register(&socket_of(c, &owner)?, &id, "{}")
            .await
            .map_err(|e| format!("register {id} on {owner}: {e}"))?;
        ids.insert(id, owner);
    }
    let data = body(params.repair_size, 0x4e9a);
    let jobs: Vec<(String, PathBuf)> = ids
        .iter()
        .map(|(id, owner)| Ok((id.clone(), socket_of(c, owner)?)))
        .collect::<Result<_, String>>()?;
    let jobs = Arc::new(jobs);
    let mut set = JoinSet::new();
    for t in 0..FILL_PARALLEL {
        let (jobs, data, versions) = (Arc::clone(&jobs), data.clone(), params.repair_versions);
        set.spawn(async move {
            for (id, socket) in jobs.iter().skip(t).step_by(FILL_PARALLEL) {
                for _ in 0..versions {
                    client::put_snapshot(socket, id, data.clone(), Some("quorum"))
                        .await
                        .map_err(|e| format!("fill: put {id}: {e}"))?;
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| format!("fill task: {e}"))??;
    }
    let holders = wait_all_copies(c, &ids, params.repair_versions as u64).await?;
    run.fill_secs = fill_started.elapsed().as_secs_f64();
    let affected: BTreeSet<String> = holders
        .iter()
        .filter(|(_, h)| h.iter().any(|n| n == victim))
        .map(|(id, _)| id.clone())
        .collect();
    run.affected = affected.len();
    run.victim_bytes = (affected.len() * params.repair_versions * params.repair_size) as u64;
    if affected.is_empty() {
        return Err(format!("{victim} holds no copies; nothing to repair"));
    }
    // Owners that will repair.
    let repairing: BTreeSet<String> = affected
        .iter()
        .filter_map(|id| ids.get(id).cloned())
        .collect();
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != victim).collect();

    // 2. Follow the survivors' events from now, read the counters, kill.
    let payload = "vigil_replication_payload_bytes_total";
    let out_label = ["direction=\"out\""];
    let payload_before = cluster_metric(c, &survivors, payload, &out_label).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut followers = Vec::new();
    for n in &survivors {
        let socket = socket_of(c, n)?;
        let since = client::health(&socket)
            .await
            .map_err(|e| format!("{n}: health: {e}"))?
            .last_event_index;
        followers.push((n.to_string(), follow_events(socket, since, stop_rx.clone())));
    }
    // Let the subscriptions reach the nodes before the kill.
    tokio::time::sleep(Duration::from_millis(200)).await;
    eprintln!(
        "  {} agents x {} x {}: {} with a copy on {victim}; killing it",
        params.repair_agents,
        params.repair_versions,
        size_name(params.repair_size),
        affected.len()
    );
    let killed_at = c
        .kill(victim)
        .await
        .map_err(|e| format!("kill {victim}: {e}"))?;
    let kill_ms = to_unix_ms(killed_at);
    let since_kill = |t: SystemTime| {
        i64::try_from(t.duration_since(killed_at).map_or(0, |d| d.as_millis())).unwrap_or(i64::MAX)
    };

    // 3. Poll the owners until every affected agent has three live holders.
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    let owner_sockets: Vec<(String, PathBuf)> = repairing
        .iter()
        .map(|o| Ok((o.clone(), socket_of(c, o)?)))
        .collect::<Result<_, String>>()?;
    let mut poll_error = None;
    loop {
        let mut left = affected.len();
        for (owner, socket) in &owner_sockets {
            match client::agents(socket).await {
                Ok(list) => {
                    left -= list
                        .iter()
                        .filter(|a| affected.contains(&a.id) && a.owned_here)
                        .filter(|a| {
                            a.holders.len() == COPIES && a.holders.iter().all(|h| h.name != victim)
                        })
                        .count();
                }
                Err(e) => poll_error = Some(format!("{owner}: GET /v1/agents: {e}")),
            }
        }
        if left == 0 {
            run.all_repaired_ms = Some(since_kill(SystemTime::now()));
            break;
        }
        if Instant::now() > deadline {
            run.failures.push(format!(
                "{left} of {} agents not back at {COPIES} holders after {REPAIR_TIMEOUT:?}{}",
                affected.len(),
                poll_error
                    .as_deref()
                    .map(|e| format!(" (last poll error: {e})"))
                    .unwrap_or_default()
            ));
            break;
        }
        tokio::time::sleep(REPAIR_POLL).await;
    }
    // Events are pushed as they happen; give the last ones a moment to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let mut events: Vec<EventRecord> = Vec::new();
    for (n, h) in followers {
        match h.await {
            Ok(Ok(list)) => events.extend(list),
            Ok(Err(e)) => run.failures.push(format!("{n}: {e}")),
            Err(e) => run.failures.push(format!("{n}: event task: {e}")),
        }
    }
    let payload_after = cluster_metric(c, &survivors, payload, &out_label).await;
    run.payload_out_bytes = match (payload_before, payload_after) {
        (Ok(a), Ok(b)) => Some(b - a),
        (Err(e), _) | (_, Err(e)) => {
            run.failures.push(format!("payload counters: {e}"));
            None
        }
    };

    // 4. Times from the nodes' own event records.
    let rel = |e: &EventRecord| i64::try_from(e.time_ms).unwrap_or(i64::MAX) - kill_ms as i64;
    let about_victim = |e: &&EventRecord| e.member.as_deref() == Some(victim);
    run.first_suspect_ms = events
        .iter()
        .filter(about_victim)
        .filter(|e| e.kind == "member_suspected")
        .map(rel)
        .min();
    let downs: Vec<&EventRecord> = events
        .iter()
        .filter(about_victim)
        .filter(|e| e.kind == "member_down")
        .collect();
    run.first_down_ms = downs.iter().map(|e| rel(e)).min();
    let owners_down: Vec<i64> = repairing
        .iter()
        .filter_map(|o| downs.iter().find(|e| &e.node == o).map(|e| rel(e)))
        .collect();
    if owners_down.len() == repairing.len() {
        run.owners_down_ms = owners_down.into_iter().max();
    } else {
        run.failures.push(format!(
            "not every repairing owner reported {victim} down: {} of {}",
            owners_down.len(),
            repairing.len()
        ));
    }
    let repairs: Vec<&EventRecord> = events.iter().filter(|e| e.kind == "repair_done").collect();
    run.repair_events = repairs.len();
    run.first_repair_ms = repairs.iter().map(|e| rel(e)).min();
    run.last_repair_ms = repairs.iter().map(|e| rel(e)).max();
    for e in &repairs {
        match e.detail.as_deref().and_then(stats::repair_bytes) {
            Some(b) => *run.repaired_bytes.entry(e.node.clone()).or_default() += b,
            None => run
                .failures
                .push(format!("unreadable repair_done detail: {:?}", e.detail)),
        }
    }
    Ok(())
}

// ---- the whole run ------------------------------------------------------------------

/// Runs the parts asked for, in order: latency and throughput on one cluster, then
/// each repair run on a fresh one. Progress goes to stderr.
pub async fn run_bench(params: &Params, bin: &Path) -> Report {
    let begun = Instant::now();
    let mut report = Report {
        command: params.command_line(),
        date: vigil::events::format_unix_ms(unix_ms()),
        git: git_revision(),
        machine: Machine::probe(),
        mem_total: mem_total(),
        load_before: load_average(),
        load_after: None,
        data_root: None,
        mount: None,
        idle_node_cores: None,
        idle_other_cores: None,
        params: params.clone(),
        latency: Vec::new(),
        throughput: Vec::new(),
        repair: Vec::new(),
        failures: Vec::new(),
        wall_secs: 0.0,
    };
    let note_root = |report: &mut Report, root: &Path| {
        if report.data_root.is_none() {
            report.data_root = Some(root.to_path_buf());
            match stats::mount_of(root) {
                Ok(m) => report.mount = Some(m),
                Err(e) => report.failures.push(format!("filesystem: {e}")),
            }
        }
    };

    if params.parts.contains(&Part::Latency) || params.parts.contains(&Part::Throughput) {
        eprintln!("snapshots: starting 6 nodes...");
        match start_cluster(bin, &[], params.keep).await {
            Ok(mut c) => {
                note_root(&mut report, c.root());
                if params.keep {
                    eprintln!("  scratch directory: {}", c.root().display());
                }
                if !params.idle_sample.is_zero() {
                    let node_pids: Vec<u32> = c.nodes().map(|n| n.pid).collect();
                    let mut pids = node_pids.clone();
                    pids.push(std::process::id());
                    let (a, began) = (sample(None, &pids).await, Instant::now());
                    tokio::time::sleep(params.idle_sample).await;
                    let b = sample(None, &pids).await;
                    let fig = figures(&a, &b, &node_pids, began.elapsed().as_secs_f64());
                    report.idle_node_cores = fig.node_cpu_cores;
                    report.idle_other_cores = fig.other_cores;
                }
                if let Err(e) = latency_and_throughput(&c, params, &mut report).await {
                    report.failures.push(e);
                }
                c.stop_all().await;
            }
            Err(e) => report.failures.push(e),
        }
    }

    if params.parts.contains(&Part::Repair) {
        for round in 1..=params.repair_rounds {
            for &layout in &params.repair_layouts {
                for rate in &params.repair_rates {
                    eprintln!(
                        "snapshots: repair round {round}/{}: {} layout, repair rate {}...",
                        params.repair_rounds,
                        layout.name(),
                        rate.as_deref().unwrap_or("default")
                    );
                    let r = repair_run(bin, round, layout, rate.clone(), params).await;
                    eprintln!("  {}", report::repair_line(&r));
                    report.repair.push(r);
                }
            }
        }
        if report.data_root.is_none() {
            // Where the repair clusters lived: the same temp directory.
            let tmp = std::env::temp_dir();
            note_root(&mut report, &tmp);
        }
    }
    report.load_after = load_average();
    report.wall_secs = begun.elapsed().as_secs_f64();
    report
}

async fn latency_and_throughput(
    c: &LocalCluster,
    params: &Params,
    report: &mut Report,
) -> Result<(), String> {
    if params.parts.contains(&Part::Latency) {
        let n1 = socket_of(c, "n1")?;
        for size in SIZES {
            let agent = format!("lat-{}", size / KIB);
            client::register(&n1, &agent, "{}")
                .await
                .map_err(|e| format!("register {agent}: {e}"))?;
        }
        for round in 1..=params.rounds {
            let rounds = latency_round(c, round, params, &mut report.failures).await?;
            report.latency.extend(rounds);
        }
    }
    if params.parts.contains(&Part::Throughput) {
        let mut agents = Vec::with_capacity(params.agents);
        for i in 0..params.agents {
            let owner = NODES[i % NODES.len()];
            let socket = socket_of(c, owner)?;
            let id = format!("tp-{i:03}");
            client::register(&socket, &id, "{}")
                .await
                .map_err(|e| format!("register {id} on {owner}: {e}"))?;
            agents.push((id, socket));
        }
        for round in 1..=params.rounds {
            for &size in &params.tp_sizes {
                for writer in [
                    Writer::Vigil,
                    Writer::Disk(Recipe::Fsync),
                    Writer::Disk(Recipe::Durable),
                ] {
                    eprintln!(
                        "snapshots: throughput round {round}/{}: {} {} x {}...",
                        params.rounds,
                        writer.name(),
                        size_name(size),
                        params.agents
                    );
                    let run = match writer {
                        Writer::Vigil => vigil_throughput(c, &agents, round, size, params).await,
                        Writer::Disk(r) => disk_throughput(c, round, size, r, params).await,
                    };
                    eprintln!("  {}", report::throughput_line(&run));
                    report.throughput.push(run);
                    tokio::time::sleep(params.pause).await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn defaults_follow_the_issue_and_the_command_line_reproduces_them() {
        let p = Params::parse(args("--bench")).unwrap().unwrap();
        assert_eq!(p, Params::default());
        assert_eq!(p.counts, [500, 500, 100]);
        assert_eq!(p.agents, 100);
        let again = Params::parse(
            p.command_line()
                .split_once(" -- ")
                .unwrap()
                .1
                .split_whitespace()
                .map(str::to_string),
        )
        .unwrap()
        .unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn options_are_parsed_and_checked() {
        let p = Params::parse(args(
            "--only=latency,repair --counts 10,20,3 --repair-rates default,512MiB --repair-layouts one-owner --keep",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.parts, [Part::Latency, Part::Repair].into());
        assert_eq!(p.counts, [10, 20, 3]);
        assert_eq!(p.repair_rates, vec![None, Some("512MiB".to_string())]);
        assert_eq!(p.repair_layouts, vec![Layout::OneOwner]);
        assert!(p.keep);
        assert!(Params::parse(args("--counts 1,2")).is_err());
        assert!(Params::parse(args("--rounds 0")).is_err());
        assert!(Params::parse(args("--repair-rates fast")).is_err());
        assert!(Params::parse(args("--only bogus")).is_err());
        assert_eq!(Params::parse(args("--help")).unwrap(), None);
    }

    #[test]
    fn bodies_have_the_size_asked_for_and_differ_by_seed() {
        assert_eq!(body(1000, 1).len(), 1000);
        assert_eq!(body(MIB, 1).len(), MIB);
        assert_ne!(body(64, 1), body(64, 2));
        assert_eq!(size_name(64 * KIB), "64 KiB");
        assert_eq!(size_name(MIB), "1 MiB");
    }

    #[test]
    fn the_limiter_floor_is_the_busiest_owners_bytes_beyond_one_second_of_burst() {
        let mut r = RepairRun {
            round: 1,
            layout: Layout::OneOwner,
            rate: None,
            rate_bytes_per_s: 64 * MIB as u64,
            agents: 64,
            versions: 4,
            size: MIB,
            fill_secs: 0.0,
            affected: 64,
            victim_bytes: 256 * MIB as u64,
            first_suspect_ms: None,
            first_down_ms: None,
            owners_down_ms: None,
            first_repair_ms: None,
            last_repair_ms: None,
            all_repaired_ms: None,
            repair_events: 64,
            repaired_bytes: BTreeMap::new(),
            payload_out_bytes: None,
            failures: Vec::new(),
        };
        r.repaired_bytes.insert("n1".into(), 256 * MIB as u64);
        r.repaired_bytes.insert("n2".into(), 32 * MIB as u64);
        assert_eq!(r.limiter_floor_secs(), 3.0);
        assert_eq!(r.repaired_total(), 288 * MIB as u64);
    }
}
