//! The flood benchmark (issue 8, resource bounds): what a flood of junk datagrams
//! or of connection attempts from one address costs a node, and whether it delays
//! the probes of healthy members.
//!
//! Each run, on a fresh loopback cluster of real `vigil agent` processes (LAN
//! profile, zones az1/az2/az3 round robin, the first seeding the rest):
//!
//! 1. start the nodes, follow every node's events from its first one, wait until
//!    every node sees every other alive, and let the mesh warm up (every node has
//!    dialed every peer);
//! 2. run the phases, `--window-secs` each, one after the other (by default:
//!    baseline, junk datagrams, connection attempts, baseline again), the floods
//!    aimed at one node from one other address (127.0.0.2, so that the cluster's
//!    own 127.0.0.1 is not the flooding address; see [`load`]);
//! 3. per phase, from every node's `/metrics` at the phase's start and end: probe
//!    round-trip times (`vigil_probe_rtt_seconds`: count, mean, p50 and p99
//!    estimated from the buckets), probes by outcome, suspicions raised, refusals
//!    by reason (`vigil_tls_rejected_total`), UDP packets read; from `/proc`: each
//!    node's CPU share and RSS (peak sampled every second), the bench process's own
//!    CPU (it runs the flood), the machine's busy share and the kernel's UDP
//!    receive-buffer drops; from the event streams: every `member_suspected` and
//!    `member_down` (no node is stopped, so each is a false positive).
//!
//! The bench target (`benches/flood.rs`) runs [`run_bench`] and prints
//! [`Report::markdown`]; the smoke test runs it with tiny parameters.

pub mod load;
pub mod report;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vigil::client;

use self::load::{HandshakeStats, JunkStats};
pub use self::report::Report;
use crate::cluster::observe::{CHANNEL_CAPACITY, FalsePositive, Observer};
use crate::cluster::systems::{BenchCluster, VigilCluster, unix_ms};
use crate::cluster::{JOIN_TIMEOUT, default_settle, node_names, victim_of};
use crate::prom::{Histogram, Scrape};
use crate::snapshots::stats::CpuTimes;
use crate::{args, procstat};

/// The histogram of probe round trips.
pub const PROBE_RTT: &str = "vigil_probe_rtt_seconds";
/// How often the nodes' RSS is sampled during a phase, for its peak.
const RSS_EVERY: Duration = Duration::from_secs(1);
/// Events stamped inside the last phase may still be on their way when it ends.
const EVENT_GRACE: Duration = Duration::from_secs(1);

/// What a phase does to the flooded node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Nothing: the cluster's own traffic only.
    Baseline,
    /// Junk datagrams at its UDP port.
    Junk,
    /// QUIC connection attempts with a foreign certificate.
    Handshakes,
}

impl PhaseKind {
    pub const ALL: [PhaseKind; 3] = [PhaseKind::Baseline, PhaseKind::Junk, PhaseKind::Handshakes];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Baseline => "baseline",
            PhaseKind::Junk => "junk",
            PhaseKind::Handshakes => "handshakes",
        }
    }

    pub fn parse(s: &str) -> Option<PhaseKind> {
        PhaseKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_flood(self) -> bool {
        self != PhaseKind::Baseline
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub runs: usize,
    pub nodes: usize,
    #[serde(rename = "window_secs", serialize_with = "secs")]
    pub window: Duration,
    /// `None`: [`default_settle`] (the mesh warm-up).
    #[serde(rename = "settle_secs", serialize_with = "opt_secs")]
    pub settle: Option<Duration>,
    pub phases: Vec<PhaseKind>,
    /// Connection attempts running at once.
    pub concurrency: usize,
    /// An attempt the node does not answer is given up after this.
    #[serde(rename = "attempt_timeout_ms", serialize_with = "millis")]
    pub attempt_timeout: Duration,
    /// Cap on junk packets per second (`None`: as fast as one thread sends).
    pub junk_pps: Option<u64>,
    /// The flooding address.
    pub source: IpAddr,
    /// Where the raw numbers go; relative paths are taken from the workspace root.
    pub out: Option<PathBuf>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// The phases when `--phases` is not given.
pub const DEFAULT_PHASES: [PhaseKind; 4] = [
    PhaseKind::Baseline,
    PhaseKind::Junk,
    PhaseKind::Handshakes,
    PhaseKind::Baseline,
];

/// The flooding address by default: on loopback, but not the cluster's 127.0.0.1.
pub const DEFAULT_SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

impl Default for Params {
    fn default() -> Self {
        Params {
            runs: 1,
            nodes: 5,
            window: Duration::from_secs(20),
            settle: None,
            phases: DEFAULT_PHASES.to_vec(),
            concurrency: 64,
            attempt_timeout: Duration::from_millis(500),
            junk_pps: None,
            source: DEFAULT_SOURCE,
            out: None,
        }
    }
}

pub const USAGE: &str = "\
usage: cargo bench -p vigil-benches --bench flood -- [OPTIONS]

  --nodes N               nodes (default 5, at least 2); node n(N/2+1) is flooded
  --runs R                runs, each on a fresh cluster (default 1)
  --window-secs S         length of each phase (default 20)
  --settle-secs S         wait after convergence before the first phase (default
                          N x the LAN probe period + 5 s: the mesh warm-up)
  --phases P,P,...        phases in order, each baseline, junk or handshakes
                          (default baseline,junk,handshakes,baseline)
  --concurrency C         connection attempts running at once (default 64)
  --attempt-timeout-ms MS an unanswered attempt is given up after this (default 500)
  --junk-pps R            cap on junk packets per second (default: none, as fast as
                          one thread sends)
  --source IP             the flooding address (default 127.0.0.2)
  --out PATH              raw results as JSON (default bench-results/flood-<unix>.json,
                          relative to the workspace root)";

impl Params {
    /// Parses the bench's arguments. Arguments it does not know (Cargo passes
    /// `--bench`) are ignored. `Ok(None)` means help was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Params>, String> {
        let mut p = Params::default();
        let with_value = [
            "--nodes",
            "--runs",
            "--window-secs",
            "--settle-secs",
            "--phases",
            "--concurrency",
            "--attempt-timeout-ms",
            "--junk-pps",
            "--source",
            "--out",
        ];
        let Some(flags) = args::flags(args, &with_value, &[], USAGE)? else {
            return Ok(None);
        };
        for (flag, value) in flags {
            let positive = || args::positive(&flag, &value, USAGE);
            match flag.as_str() {
                "--nodes" => p.nodes = positive()?,
                "--runs" => p.runs = positive()?,
                "--window-secs" => p.window = Duration::from_secs(positive()? as u64),
                "--settle-secs" => {
                    p.settle = Some(Duration::from_secs(
                        args::whole(&flag, &value, USAGE)? as u64
                    ));
                }
                "--phases" => {
                    p.phases = value
                        .split(',')
                        .map(|s| {
                            PhaseKind::parse(s.trim())
                                .ok_or_else(|| format!("--phases: unknown phase {s:?}\n{USAGE}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "--concurrency" => p.concurrency = positive()?,
                "--attempt-timeout-ms" => {
                    p.attempt_timeout = Duration::from_millis(positive()? as u64);
                }
                "--junk-pps" => p.junk_pps = Some(positive()? as u64),
                "--source" => {
                    p.source = value.parse().map_err(|_| {
                        format!("--source: {value:?} is not an IP address\n{USAGE}")
                    })?;
                }
                _ => p.out = Some(PathBuf::from(value)),
            }
        }
        if p.nodes < 2 {
            return Err(format!("--nodes must be at least 2\n{USAGE}"));
        }
        Ok(Some(p))
    }

    /// The settle time used.
    pub fn settle(&self) -> Duration {
        self.settle.unwrap_or_else(|| default_settle(self.nodes))
    }

    /// The command line that reproduces a run with these parameters.
    pub fn command_line(&self) -> String {
        let phases: Vec<&str> = self.phases.iter().map(|k| k.as_str()).collect();
        let mut line = format!(
            "cargo bench -p vigil-benches --bench flood -- --nodes {} --runs {} --window-secs {} --phases {} --concurrency {} --attempt-timeout-ms {} --source {}",
            self.nodes,
            self.runs,
            self.window.as_secs(),
            phases.join(","),
            self.concurrency,
            self.attempt_timeout.as_millis(),
            self.source,
        );
        if let Some(settle) = self.settle {
            line.push_str(&format!(" --settle-secs {}", settle.as_secs()));
        }
        if let Some(pps) = self.junk_pps {
            line.push_str(&format!(" --junk-pps {pps}"));
        }
        if let Some(out) = &self.out {
            line.push_str(&format!(" --out {}", out.display()));
        }
        line
    }

    /// The label of phase `i`: a baseline after another phase is the recovery.
    pub fn label(&self, i: usize) -> String {
        match self.phases.get(i) {
            Some(PhaseKind::Baseline) if i > 0 => "baseline again".into(),
            Some(PhaseKind::Baseline) => "baseline".into(),
            Some(PhaseKind::Junk) => "junk datagrams".into(),
            Some(PhaseKind::Handshakes) => "connection attempts".into(),
            None => format!("phase {i}"),
        }
    }
}

/// Probe round trips of one node in one phase (ms).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rtt {
    pub count: u64,
    pub mean_ms: Option<f64>,
    /// Estimated from the histogram's buckets (factor 2 apart), linear within one.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Rtt {
    fn of(h: &Histogram) -> Rtt {
        let ms = |s: f64| s * 1000.0;
        Rtt {
            // A count of observations, far below 2^53.
            count: h.count as u64,
            mean_ms: h.mean().map(ms),
            p50_ms: h.quantile(0.5).map(ms),
            p99_ms: h.quantile(0.99).map(ms),
        }
    }
}

/// One node in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct NodePhase {
    pub name: String,
    pub flooded: bool,
    pub probe_rtt: Rtt,
    /// Probes this node sent, by outcome (ack_direct, ack_indirect, failed).
    pub probes: BTreeMap<String, u64>,
    pub suspicions_raised: u64,
    /// `vigil_tls_rejected_total` by reason, the reasons that moved.
    pub refusals: BTreeMap<String, u64>,
    /// UDP packets the node's QUIC endpoint read.
    pub udp_rx_packets: u64,
    /// Share of one core.
    pub cpu_fraction: f64,
    pub rss_end_bytes: u64,
    pub rss_peak_bytes: u64,
    /// `vigil_local_health_multiplier` at the phase's end.
    pub local_health_end: f64,
}

impl NodePhase {
    pub fn failed_probes(&self) -> u64 {
        self.probes.get("failed").copied().unwrap_or(0)
    }

    pub fn refusals_total(&self) -> u64 {
        self.refusals.values().sum()
    }
}

/// One phase of one run.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Its position in `--phases` (0-based).
    pub index: usize,
    pub kind: PhaseKind,
    pub label: String,
    /// Harness clock (Unix ms) at the phase's start and end.
    pub start_ms: u64,
    pub end_ms: u64,
    pub nodes: Vec<NodePhase>,
    /// Suspicions and deaths declared during the phase (node time).
    pub false_positives: Vec<FalsePositive>,
    pub junk: Option<JunkStats>,
    pub handshakes: Option<HandshakeStats>,
    /// Cores the bench process used (the floods run in it).
    pub harness_cores: Option<f64>,
    /// Share of the whole machine's CPU time that was busy.
    pub machine_busy: Option<f64>,
    /// Datagrams the kernel dropped for a full UDP receive buffer, machine-wide.
    pub udp_rcvbuf_errors: Option<u64>,
}

impl PhaseResult {
    pub fn secs(&self) -> f64 {
        self.end_ms.saturating_sub(self.start_ms) as f64 / 1000.0
    }

    pub fn flooded(&self) -> Option<&NodePhase> {
        self.nodes.iter().find(|n| n.flooded)
    }

    pub fn others(&self) -> impl Iterator<Item = &NodePhase> {
        self.nodes.iter().filter(|n| !n.flooded)
    }

    pub fn downs(&self) -> usize {
        self.false_positives
            .iter()
            .filter(|f| f.kind == "member_down")
            .count()
    }
}

/// One run: one fresh cluster through every phase.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run: usize,
    pub flooded: String,
    pub flooded_addr: Option<String>,
    pub phases: Vec<PhaseResult>,
    /// Suspicions and deaths declared outside the phases (join and settle).
    pub false_positives_outside: Vec<FalsePositive>,
    /// What went wrong (the run counts as failed if any).
    pub failures: Vec<String>,
}

/// Runs the benchmark: `params.runs` fresh clusters of `binary`, one after the
/// other. Progress goes to stderr.
pub async fn run_bench(params: &Params, binary: &Path) -> Report {
    let mut report = Report::begin(params);
    for run in 1..=params.runs {
        eprintln!(
            "flood bench: run {run}/{}, {} nodes, flooding {}",
            params.runs,
            params.nodes,
            victim_of(params.nodes)
        );
        let result = run_once(params, binary, run).await;
        if !result.failures.is_empty() {
            eprintln!("  FAILED: {}", result.failures.join("; "));
        }
        report.runs.push(result);
    }
    report.finish();
    report
}

async fn run_once(params: &Params, binary: &Path, run: usize) -> RunResult {
    let names = node_names(params.nodes);
    let flooded = victim_of(params.nodes);
    let mut result = RunResult {
        run,
        flooded: flooded.clone(),
        flooded_addr: None,
        phases: Vec::new(),
        false_positives_outside: Vec::new(),
        failures: Vec::new(),
    };
    let mut cluster = match VigilCluster::new(binary, &names) {
        Ok(c) => c,
        Err(e) => {
            result.failures.push(format!("setup: {e}"));
            return result;
        }
    };
    // No node is stopped: every suspicion or death is a false positive (the
    // observer's victim is a name no node has).
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut obs = Observer::new(rx, names.clone(), String::new());
    if let Err(e) = measure(
        &mut cluster,
        &mut obs,
        params,
        &names,
        &flooded,
        &tx,
        &mut result,
    )
    .await
    {
        result.failures.push(e);
    }
    drop(tx);
    obs.pump_until(Instant::now() + EVENT_GRACE, |_| false)
        .await;
    obs.stop_counting();
    let mut outside = Vec::new();
    for fp in obs.false_positives() {
        match result
            .phases
            .iter_mut()
            .find(|p| (p.start_ms..=p.end_ms).contains(&fp.time_ms))
        {
            Some(phase) => phase.false_positives.push(fp.clone()),
            None => outside.push(fp.clone()),
        }
    }
    result.false_positives_outside = outside;
    for name in &names {
        if let Some(why) = obs.closed(name) {
            result
                .failures
                .push(format!("{name} stopped reporting during the run: {why}"));
        }
    }
    cluster.stop_all().await;
    result
}

/// Steps 1 to 3 of a run; `Err` for a step that could not be carried out.
async fn measure(
    cluster: &mut VigilCluster,
    obs: &mut Observer,
    params: &Params,
    names: &[String],
    flooded: &str,
    tx: &mpsc::Sender<crate::cluster::observe::Observed>,
    result: &mut RunResult,
) -> Result<(), String> {
    cluster.start_all(names, tx).await?;
    let converged = obs
        .pump_until(Instant::now() + JOIN_TIMEOUT, |o| {
            o.converged_at().is_some()
        })
        .await;
    if !converged {
        return Err(format!(
            "join: not converged after {JOIN_TIMEOUT:?}; incomplete views at {:?}",
            obs.incomplete()
        ));
    }
    obs.pump_until(Instant::now() + params.settle(), |_| false)
        .await;
    let target = cluster
        .local()
        .node(flooded)
        .map_err(|e| e.to_string())?
        .bound;
    result.flooded_addr = Some(target.to_string());
    let scratch = tempfile::Builder::new()
        .prefix("flood-bench-")
        .tempdir()
        .map_err(|e| format!("scratch directory: {e}"))?;

    for (i, &kind) in params.phases.iter().enumerate() {
        eprintln!(
            "  phase {}: {} for {:?}",
            i + 1,
            params.label(i),
            params.window
        );
        let phase = run_phase(
            cluster,
            obs,
            params,
            i,
            kind,
            flooded,
            target,
            scratch.path(),
        )
        .await;
        match phase {
            Ok(phase) => {
                obs.drain_ready();
                let suspicions = obs
                    .false_positives()
                    .iter()
                    .filter(|f| (phase.start_ms..=phase.end_ms).contains(&f.time_ms))
                    .count();
                eprintln!(
                    "    {}; false positives so far {suspicions}",
                    report::phase_line(&phase)
                );
                if let Some(h) = &phase.handshakes
                    && h.accepted > 0
                {
                    result.failures.push(format!(
                        "{}: {} handshakes with a foreign certificate completed",
                        phase.label, h.accepted
                    ));
                }
                result.phases.push(phase);
            }
            Err(e) => result.failures.push(format!("{}: {e}", params.label(i))),
        }
    }
    Ok(())
}

/// A flood that is running.
enum Running {
    Nothing,
    Junk(load::Flood<JunkStats>),
    Handshakes(load::Flood<HandshakeStats>),
}

#[allow(clippy::too_many_arguments)]
async fn run_phase(
    cluster: &VigilCluster,
    obs: &mut Observer,
    params: &Params,
    i: usize,
    kind: PhaseKind,
    flooded: &str,
    target: std::net::SocketAddr,
    scratch: &Path,
) -> Result<PhaseResult, String> {
    let pids = cluster.pids();
    let before = scrape_all(cluster).await?;
    let cpu_before = sample_all(&pids)?;
    let harness_before = procstat::sample(std::process::id()).ok();
    let machine_before = CpuTimes::read().ok();
    let drops_before = udp_rcvbuf_errors();
    let start_ms = unix_ms();

    let running = match kind {
        PhaseKind::Baseline => Running::Nothing,
        PhaseKind::Junk => Running::Junk(load::junk(params.source, target, params.junk_pps)?),
        PhaseKind::Handshakes => Running::Handshakes(load::handshakes(
            &scratch.join(format!("phase-{i}")),
            cluster.local().pki(),
            params.source,
            target,
            flooded.to_string(),
            params.concurrency,
            params.attempt_timeout,
        )?),
    };
    let mut peak: BTreeMap<String, u64> = BTreeMap::new();
    let end = Instant::now() + params.window;
    while Instant::now() < end {
        obs.pump_until((Instant::now() + RSS_EVERY).min(end), |_| false)
            .await;
        for (name, pid) in &pids {
            if let Ok(s) = procstat::sample(*pid) {
                let p = peak.entry(name.clone()).or_default();
                *p = (*p).max(s.rss_bytes);
            }
        }
    }
    // The end readings are taken while the flood still runs.
    let end_ms = unix_ms();
    let cpu_after = sample_all(&pids);
    let harness_after = procstat::sample(std::process::id()).ok();
    let machine_after = CpuTimes::read().ok();
    let drops_after = udp_rcvbuf_errors();
    let after = scrape_all(cluster).await;
    let (junk, handshakes) = match running {
        Running::Nothing => (None, None),
        Running::Junk(f) => (Some(f.stop()?), None),
        Running::Handshakes(f) => (None, Some(f.stop()?)),
    };
    let (cpu_after, after) = (cpu_after?, after?);

    let mut nodes = Vec::new();
    for (name, _) in &pids {
        let (Some(b), Some(a), Some(c0), Some(c1)) = (
            before.get(name),
            after.get(name),
            cpu_before.get(name),
            cpu_after.get(name),
        ) else {
            return Err(format!("{name}: no readings at both ends of the phase"));
        };
        nodes.push(node_phase(
            name,
            name == flooded,
            b,
            a,
            c0,
            c1,
            peak.get(name),
        ));
    }
    Ok(PhaseResult {
        index: i,
        kind,
        label: params.label(i),
        start_ms,
        end_ms,
        nodes,
        false_positives: Vec::new(),
        junk,
        handshakes,
        harness_cores: harness_before
            .zip(harness_after)
            .map(|(a, b)| procstat::cpu_fraction(&a, &b)),
        machine_busy: machine_before
            .zip(machine_after)
            .map(|(a, b)| a.shares(&b).busy),
        udp_rcvbuf_errors: drops_before
            .zip(drops_after)
            .map(|(a, b)| b.saturating_sub(a)),
    })
}

fn node_phase(
    name: &str,
    flooded: bool,
    before: &Scrape,
    after: &Scrape,
    c0: &procstat::ProcSample,
    c1: &procstat::ProcSample,
    peak: Option<&u64>,
) -> NodePhase {
    let delta = |metric: &str| (after.sum(metric, &[]) - before.sum(metric, &[])).max(0.0) as u64;
    let by = |metric: &str, label: &str| {
        let was = before.by_label(metric, label);
        after
            .by_label(metric, label)
            .into_iter()
            .map(|(k, v)| {
                let d = (v - was.get(&k).copied().unwrap_or(0.0)).max(0.0) as u64;
                (k, d)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let rtt = after
        .histogram(PROBE_RTT)
        .zip(before.histogram(PROBE_RTT))
        .and_then(|(a, b)| a.since(&b))
        .map(|h| Rtt::of(&h))
        .unwrap_or_default();
    let mut refusals = by("vigil_tls_rejected_total", "reason");
    refusals.retain(|_, n| *n > 0);
    NodePhase {
        name: name.to_string(),
        flooded,
        probe_rtt: rtt,
        probes: by("vigil_probes_total", "outcome"),
        suspicions_raised: delta("vigil_suspicions_raised_total"),
        refusals,
        udp_rx_packets: delta("vigil_udp_rx_packets_total"),
        cpu_fraction: procstat::cpu_fraction(c0, c1),
        rss_end_bytes: c1.rss_bytes,
        rss_peak_bytes: peak.copied().unwrap_or(0).max(c1.rss_bytes),
        local_health_end: after.sum("vigil_local_health_multiplier", &[]),
    }
}

/// Every running node's `/metrics`.
async fn scrape_all(cluster: &VigilCluster) -> Result<BTreeMap<String, Scrape>, String> {
    let mut out = BTreeMap::new();
    for node in cluster.local().nodes().filter(|n| n.is_running()) {
        let reply = client::get(&node.socket, "/metrics")
            .await
            .map_err(|e| format!("{}: GET /metrics: {e}", node.name))?;
        let scrape = Scrape::parse(&String::from_utf8_lossy(&reply.body));
        if scrape.histogram(PROBE_RTT).is_none() {
            return Err(format!("{}: /metrics has no {PROBE_RTT}", node.name));
        }
        out.insert(node.name.clone(), scrape);
    }
    Ok(out)
}

fn sample_all(pids: &[(String, u32)]) -> Result<BTreeMap<String, procstat::ProcSample>, String> {
    pids.iter()
        .map(|(name, pid)| {
            procstat::sample(*pid)
                .map(|s| (name.clone(), s))
                .map_err(|e| format!("{name} (pid {pid}): /proc: {e}"))
        })
        .collect()
}

/// `RcvbufErrors` of the `Udp:` lines of `/proc/net/snmp`: datagrams the kernel
/// dropped because a socket's receive buffer was full (all sockets of the
/// machine's network namespace).
pub fn udp_rcvbuf_errors() -> Option<u64> {
    parse_udp_rcvbuf_errors(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (header, values) = (udp.next()?, udp.next()?);
    let column = header
        .split_whitespace()
        .position(|f| f == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(s: &str) -> Result<Option<Params>, String> {
        Params::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn defaults_flags_and_labels() {
        let p = parse("--bench").unwrap().unwrap();
        assert_eq!(p, Params::default());
        assert_eq!(p.phases, DEFAULT_PHASES);
        let labels: Vec<String> = (0..4).map(|i| p.label(i)).collect();
        assert_eq!(
            labels,
            [
                "baseline",
                "junk datagrams",
                "connection attempts",
                "baseline again"
            ]
        );
        assert_eq!(p.settle(), default_settle(5));

        let p = parse("--nodes 3 --window-secs 2 --settle-secs 0 --phases junk,baseline --junk-pps 1000 --source 127.0.0.9 --concurrency 8 --attempt-timeout-ms 100")
            .unwrap()
            .unwrap();
        assert_eq!(p.nodes, 3);
        assert_eq!(p.phases, [PhaseKind::Junk, PhaseKind::Baseline]);
        assert_eq!(p.junk_pps, Some(1000));
        assert_eq!(p.source.to_string(), "127.0.0.9");
        assert_eq!(p.settle(), Duration::ZERO);
        let line = p.command_line();
        assert!(line.contains("--phases junk,baseline"), "{line}");
        assert!(line.contains("--settle-secs 0 --junk-pps 1000"), "{line}");
        // The command line reads back as the same parameters.
        let again = Params::parse(line.split_whitespace().map(String::from))
            .unwrap()
            .unwrap();
        assert_eq!(again, p);

        assert!(parse("--phases baseline,nap").is_err());
        assert!(parse("--nodes 1").is_err());
        assert!(parse("--source localhost").is_err());
        assert_eq!(parse("--help").unwrap(), None);
    }

    #[test]
    fn receive_buffer_drops_are_read_by_column_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 100 2 7 90 5 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 0 0\n";
        assert_eq!(parse_udp_rcvbuf_errors(snmp), Some(5));
        assert_eq!(parse_udp_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
    }
}
