//! The whole-cluster benchmark: vigil (SWIM over QUIC with mutual TLS) side by side
//! with udp-node (the same core, the same LAN profile, over plain UDP) and, with the
//! `peers` feature, with peer libraries at their stock LAN settings (issue 6):
//! foca over plain UDP (`foca-lan`), chitchat (`chitchat`) and the Rust memberlist
//! port (`memberlist`), each as its own process (see `benches/src/bin/`).
//!
//! For each cluster size and run, each system in turn (never two at once):
//!
//! 1. start N nodes on loopback, zones az1/az2/az3 round robin, the first seeding
//!    the rest, one after the other;
//! 2. follow every node's events from its first one and time join convergence: the
//!    latest of the events that completed each node's view (all N-1 others alive),
//!    stamped by the nodes themselves;
//! 3. after a settle time long enough for vigil's mesh warm-up (each node dials every
//!    peer during its first probe round: N probe periods, plus a margin), measure a
//!    steady-state window per node: UDP payload bytes and packets per second
//!    (vigil: `/metrics` at both ends; udp-node: its own cumulative counters), the
//!    same on the wire (plus IPv4 and UDP headers), CPU share of one core and RSS
//!    (from `/proc`); the warm-up (last node ready → window start) is recorded
//!    separately: bytes and packets sent and, for vigil, QUIC connections opened;
//! 4. SIGKILL one node (not the seed) and time each survivor's `member_down` for it
//!    and the first `member_suspected`; count every suspicion or death declared about
//!    a node that was not killed as a false positive;
//! 5. stop everything.
//!
//! The bench target (`benches/cluster.rs`) runs [`run_bench`] and prints
//! [`Report::markdown`]; the smoke test runs it with tiny parameters.

pub mod observe;
pub mod report;
pub mod systems;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::observe::{CHANNEL_CAPACITY, FalsePositive, Observer, Traffic};
pub use self::report::Report;
use self::systems::{BenchCluster, UdpCluster, VigilCluster, unix_ms};
use crate::{args, procstat};

/// How long join convergence and detection may take before the run records a failure.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Margin added to the mesh warm-up in the default settle time.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(5);

/// The default wait between join convergence and the measurement window at `n`
/// nodes: N probe periods of the LAN profile plus [`SETTLE_MARGIN`]. A vigil node
/// dials each peer the first time it probes it, so its first probe round (N - 1
/// probes) opens a connection to every peer; those handshakes are a one-time cost
/// and belong before the window, not in it.
pub fn default_settle(n: usize) -> Duration {
    let period = vigil_protocol::profile::probe_period(vigil_protocol::Profile::Lan);
    period * u32::try_from(n).unwrap_or(u32::MAX) + SETTLE_MARGIN
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub sizes: Vec<usize>,
    pub runs: usize,
    #[serde(rename = "window_secs", serialize_with = "secs")]
    pub window: Duration,
    /// `None`: [`default_settle`] for each size; `Some`: this for every size.
    #[serde(rename = "settle_secs", serialize_with = "opt_secs")]
    pub settle: Option<Duration>,
    /// Where the raw numbers go; relative paths are taken from the workspace root.
    pub out: Option<PathBuf>,
    /// The systems to run, in this order within each run.
    pub systems: Vec<System>,
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

impl Default for Params {
    fn default() -> Self {
        Params {
            sizes: vec![10, 50],
            runs: 3,
            window: Duration::from_secs(20),
            settle: None,
            out: None,
            systems: DEFAULT_SYSTEMS.to_vec(),
        }
    }
}

/// What runs when `--systems` is not given: vigil and its own core over UDP.
pub const DEFAULT_SYSTEMS: [System; 2] = [System::Vigil, System::UdpNode];

pub const USAGE: &str = "\
usage: cargo bench -p vigil-benches --bench cluster -- [OPTIONS]

  --sizes N,N,...     cluster sizes (default 10,50; each at least 2)
  --runs R            runs per size and system (default 3)
  --window-secs S     steady-state measurement window (default 20)
  --settle-secs S     wait after convergence before the window, for every size
                      (default N x the LAN probe period + 5 s: vigil's mesh
                      warm-up, one connection to each peer, is over by then)
  --out PATH          raw results as JSON (default bench-results/cluster-<unix>.json,
                      relative to the workspace root)
  --systems S,S,...   systems to run, in this order within each run (default
                      vigil,udp-node); the peers foca-lan, chitchat and memberlist
                      need the peer binaries: cargo bench -p vigil-benches
                      --features peers --bench cluster -- --systems ...";

impl Params {
    /// Parses the bench's arguments. Arguments it does not know (Cargo passes
    /// `--bench`, and filters) are ignored. `Ok(None)` means help was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Params>, String> {
        let mut params = Params::default();
        let known = [
            "--sizes",
            "--runs",
            "--window-secs",
            "--settle-secs",
            "--out",
            "--systems",
        ];
        let Some(flags) = args::flags(args, &known, &[], USAGE)? else {
            return Ok(None);
        };
        for (flag, value) in flags {
            let number = |v: &str| args::whole(&flag, v, USAGE);
            match flag.as_str() {
                "--sizes" => {
                    params.sizes = value.split(',').map(number).collect::<Result<_, _>>()?;
                    if params.sizes.is_empty() || params.sizes.iter().any(|&n| n < 2) {
                        return Err(format!("--sizes: every size must be at least 2\n{USAGE}"));
                    }
                }
                "--runs" => params.runs = args::positive(&flag, &value, USAGE)?,
                "--window-secs" => {
                    let secs = args::positive(&flag, &value, USAGE)?;
                    params.window = Duration::from_secs(secs as u64);
                }
                "--settle-secs" => {
                    params.settle = Some(Duration::from_secs(number(&value)? as u64));
                }
                "--systems" => {
                    let mut systems = Vec::new();
                    for name in value.split(',') {
                        let system = System::parse(name).ok_or_else(|| {
                            format!("--systems: unknown system {name:?}\n{USAGE}")
                        })?;
                        if !systems.contains(&system) {
                            systems.push(system);
                        }
                    }
                    params.systems = systems;
                }
                _ => params.out = Some(PathBuf::from(value)),
            }
        }
        Ok(Some(params))
    }

    /// The settle time used at `n` nodes.
    pub fn settle_for(&self, n: usize) -> Duration {
        self.settle.unwrap_or_else(|| default_settle(n))
    }

    /// The command line that reproduces a run with these parameters.
    pub fn command_line(&self) -> String {
        let sizes: Vec<String> = self.sizes.iter().map(usize::to_string).collect();
        let features = if self.systems.iter().any(|s| s.is_peer()) {
            " --features peers"
        } else {
            ""
        };
        let mut line = format!(
            "cargo bench -p vigil-benches{features} --bench cluster -- --sizes {} --runs {} --window-secs {}",
            sizes.join(","),
            self.runs,
            self.window.as_secs(),
        );
        if self.systems != DEFAULT_SYSTEMS {
            let systems: Vec<&str> = self.systems.iter().map(|s| s.as_str()).collect();
            line.push_str(&format!(" --systems {}", systems.join(",")));
        }
        if let Some(settle) = self.settle {
            line.push_str(&format!(" --settle-secs {}", settle.as_secs()));
        }
        if let Some(out) = &self.out {
            line.push_str(&format!(" --out {}", out.display()));
        }
        line
    }
}

/// The binaries to run (Cargo tells bench and test targets where they are).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub vigil: PathBuf,
    pub udp_node: PathBuf,
    /// The peer binaries, built only with the `peers` feature.
    pub foca_lan: Option<PathBuf>,
    pub chitchat: Option<PathBuf>,
    pub memberlist: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum System {
    #[serde(rename = "vigil")]
    Vigil,
    #[serde(rename = "udp-node")]
    UdpNode,
    /// Plain foca over plain UDP with `Config::new_lan(N)` (`foca-lan`).
    #[serde(rename = "foca-lan")]
    FocaLan,
    /// chitchat with its defaults (`chitchat-node`).
    #[serde(rename = "chitchat")]
    Chitchat,
    /// The Rust memberlist port with `Options::lan()` (`memberlist-node`).
    #[serde(rename = "memberlist")]
    Memberlist,
}

impl System {
    pub const ALL: [System; 5] = [
        System::Vigil,
        System::UdpNode,
        System::FocaLan,
        System::Chitchat,
        System::Memberlist,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            System::Vigil => "vigil",
            System::UdpNode => "udp-node",
            System::FocaLan => "foca-lan",
            System::Chitchat => "chitchat",
            System::Memberlist => "memberlist",
        }
    }

    pub fn parse(name: &str) -> Option<System> {
        System::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A peer library (issue 6), as opposed to vigil and its own core over UDP.
    pub fn is_peer(self) -> bool {
        match self {
            System::Vigil | System::UdpNode => false,
            System::FocaLan | System::Chitchat | System::Memberlist => true,
        }
    }
}

/// Steady-state figures of one node over the measurement window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSteady {
    pub name: String,
    /// Length of the interval the traffic rates cover.
    pub traffic_secs: f64,
    pub tx_bytes_per_s: f64,
    pub tx_packets_per_s: f64,
    pub rx_bytes_per_s: f64,
    pub rx_packets_per_s: f64,
    /// Share of one core (1.0 = one core busy).
    pub cpu_fraction: f64,
    /// Resident set size at the end of the window.
    pub rss_bytes: u64,
    /// UDP bytes per second on the wire: payload plus [`IP_UDP_HEADER_BYTES`] per
    /// packet.
    pub wire_tx_bytes_per_s: f64,
    /// QUIC connections the node established during the window (vigil only): each
    /// one is a handshake inside the traffic figures.
    pub connections_opened: Option<u64>,
    /// SWIM messages sent per second as QUIC datagrams (vigil only; for udp-node
    /// every packet is one).
    pub swim_datagrams_per_s: Option<f64>,
    /// What the node sent between the last node's ready line and the window's start
    /// (the join and, for vigil, the mesh warm-up); `None` when it was not read.
    pub warmup: Option<NodeWarmup>,
}

/// IPv4 (20 bytes, no options) plus UDP (8 bytes) header per packet.
pub const IP_UDP_HEADER_BYTES: f64 = 28.0;

/// Totals of one node between the last node's ready line and the window's start.
#[derive(Debug, Clone, Serialize)]
pub struct NodeWarmup {
    /// Length of the interval the totals cover.
    pub secs: f64,
    /// UDP payload bytes sent.
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// QUIC connections established, both directions (vigil only).
    pub connections_opened: Option<u64>,
}

/// Everything measured in one run of one system.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub system: System,
    pub n: usize,
    /// 1-based.
    pub run: usize,
    /// Unix ms just before the first node was started.
    pub first_start_ms: u64,
    /// Unix ms when the last node's ready line was read.
    pub last_ready_ms: Option<u64>,
    /// The wait between convergence (or giving up on it) and the window.
    #[serde(serialize_with = "secs")]
    pub settle_secs: Duration,
    /// Node time (Unix ms) of join convergence.
    pub converged_at_ms: Option<u64>,
    pub convergence_from_last_ready_ms: Option<i64>,
    pub convergence_from_first_start_ms: Option<i64>,
    /// "A learned of B": the event that completed the last view.
    pub converged_last: Option<String>,
    pub nodes: Vec<NodeSteady>,
    pub victim: String,
    /// Unix ms just before the SIGKILL.
    pub kill_ms: Option<u64>,
    /// Survivor -> ms from the kill to its `member_down` for the victim.
    pub detection_ms: BTreeMap<String, u64>,
    pub undetected_by: Vec<String>,
    /// ms from the kill to the first `member_suspected` for the victim, any survivor.
    pub first_suspicion_ms: Option<u64>,
    pub false_positives: Vec<FalsePositive>,
    /// What went wrong (timeouts, unreadable counters); empty for a clean run.
    pub failures: Vec<String>,
}

impl RunResult {
    /// A run with nothing measured yet.
    fn new(system: System, n: usize, run: usize, victim: String, settle: Duration) -> RunResult {
        RunResult {
            system,
            n,
            run,
            first_start_ms: unix_ms(),
            last_ready_ms: None,
            settle_secs: settle,
            converged_at_ms: None,
            convergence_from_last_ready_ms: None,
            convergence_from_first_start_ms: None,
            converged_last: None,
            nodes: Vec::new(),
            victim,
            kill_ms: None,
            detection_ms: BTreeMap::new(),
            undetected_by: Vec::new(),
            first_suspicion_ms: None,
            false_positives: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// The nodes of a cluster of `n`: n1 (the seed) to nN.
pub fn node_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}")).collect()
}

/// The node a run kills: not the seed, so the survivors keep their common contact.
pub fn victim_of(n: usize) -> String {
    format!("n{}", n / 2 + 1)
}

fn signed_diff(a: u64, b: u64) -> i64 {
    i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
}

/// Runs one system once; the cluster is stopped before this returns.
async fn run_once<C: BenchCluster>(
    cluster: &mut C,
    system: System,
    n: usize,
    run: usize,
    params: &Params,
) -> RunResult {
    let names = node_names(n);
    let victim = victim_of(n);
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut obs = Observer::new(rx, names.clone(), victim.clone());
    let settle = params.settle_for(n);
    let mut result = RunResult::new(system, n, run, victim.clone(), settle);

    // 1. Start.
    if let Err(e) = cluster.start_all(&names, &tx).await {
        result.failures.push(format!("start: {e}"));
        cluster.stop_all().await;
        return result;
    }
    let last_ready = unix_ms();
    result.last_ready_ms = Some(last_ready);
    // The warm-up's start: counters as the last node became ready.
    if let Err(e) = cluster.mark_ready(last_ready).await {
        result.failures.push(format!("warm-up: {e}"));
    }

    // 2. Join convergence.
    let deadline = Instant::now() + JOIN_TIMEOUT;
    obs.pump_until(deadline, |o| o.converged_at().is_some())
        .await;
    match obs.converged_at() {
        Some(at) => {
            result.converged_at_ms = Some(at);
            result.convergence_from_last_ready_ms = Some(signed_diff(at, last_ready));
            result.convergence_from_first_start_ms = Some(signed_diff(at, result.first_start_ms));
            result.converged_last = obs
                .converged_last()
                .map(|(node, member)| format!("{node} learned of {member}"));
        }
        None => result.failures.push(format!(
            "join: not converged after {JOIN_TIMEOUT:?}; incomplete views at {:?}",
            obs.incomplete()
        )),
    }

    // 3. Steady state.
    obs.pump_until(Instant::now() + settle, |_| false).await;
    match measure_window(cluster, &mut obs, params.window).await {
        Ok(nodes) => result.nodes = nodes,
        Err(e) => result.failures.push(format!("steady state: {e}")),
    }

    // 4. Detection. Every node's events have been followed since its start, so
    // nothing the survivors say about the victim can be missed.
    match cluster.kill(&victim).await {
        Ok(t0) => {
            result.kill_ms = Some(t0);
            obs.set_kill_time(t0);
            let deadline = Instant::now() + DETECT_TIMEOUT;
            if !obs.pump_until(deadline, Observer::all_detected).await {
                result.failures.push(format!(
                    "detection: {victim} not declared down after {DETECT_TIMEOUT:?} by {:?}",
                    obs.undetected_by()
                ));
            }
            result.detection_ms = obs.detections();
            result.undetected_by = obs.undetected_by();
            result.first_suspicion_ms = obs.first_suspicion();
        }
        Err(e) => result.failures.push(format!("detection: {e}")),
    }

    // 5. Stop.
    obs.stop_counting();
    result.false_positives = obs.false_positives().to_vec();
    for name in &names {
        if *name != victim
            && let Some(why) = obs.closed(name)
        {
            result
                .failures
                .push(format!("{name} stopped reporting during the run: {why}"));
        }
    }
    cluster.stop_all().await;
    result
}

/// Measures the steady-state window: counters and `/proc` samples at both ends;
/// and the warm-up, from the counters as the last node became ready to the
/// window's start.
async fn measure_window<C: BenchCluster>(
    cluster: &mut C,
    obs: &mut Observer,
    window: Duration,
) -> Result<Vec<NodeSteady>, String> {
    let pids = cluster.pids();
    let sample_all = || {
        pids.iter()
            .map(|(name, pid)| {
                procstat::sample(*pid)
                    .map(|s| (name.clone(), s))
                    .map_err(|e| format!("{name} (pid {pid}): /proc: {e}"))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    let cpu_start = sample_all()?;
    cluster.window_start(obs).await?;
    obs.pump_until(Instant::now() + window, |_| false).await;
    let cpu_end = sample_all()?;
    let traffic = cluster.traffic(obs).await?;
    let at_ready = cluster.at_ready(obs);

    let mut nodes = Vec::new();
    for (name, (a, b)) in traffic {
        let (Some(c0), Some(c1)) = (cpu_start.get(&name), cpu_end.get(&name)) else {
            continue;
        };
        let secs = (b.t_ms - a.t_ms) / 1000.0;
        if secs <= 0.0 {
            return Err(format!("{name}: counters cover no time"));
        }
        let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
        let tx_bytes_per_s = rate(a.tx_bytes, b.tx_bytes);
        let tx_packets_per_s = rate(a.tx_packets, b.tx_packets);
        nodes.push(NodeSteady {
            name: name.clone(),
            traffic_secs: secs,
            tx_bytes_per_s,
            tx_packets_per_s,
            wire_tx_bytes_per_s: tx_bytes_per_s + IP_UDP_HEADER_BYTES * tx_packets_per_s,
            rx_bytes_per_s: rate(a.rx_bytes, b.rx_bytes),
            rx_packets_per_s: rate(a.rx_packets, b.rx_packets),
            cpu_fraction: procstat::cpu_fraction(c0, c1),
            rss_bytes: c1.rss_bytes,
            connections_opened: a
                .connections_opened
                .zip(b.connections_opened)
                .map(|(x, y)| y.saturating_sub(x)),
            swim_datagrams_per_s: a
                .swim_datagrams
                .zip(b.swim_datagrams)
                .map(|(x, y)| rate(x, y)),
            warmup: at_ready.get(&name).map(|r| warmup(r, &a)),
        });
    }
    if nodes.len() != pids.len() {
        return Err(format!(
            "figures for {} of {} nodes only",
            nodes.len(),
            pids.len()
        ));
    }
    Ok(nodes)
}

/// What a node sent between two readings of its counters.
fn warmup(from: &Traffic, to: &Traffic) -> NodeWarmup {
    NodeWarmup {
        secs: (to.t_ms - from.t_ms).max(0.0) / 1000.0,
        tx_bytes: to.tx_bytes.saturating_sub(from.tx_bytes),
        tx_packets: to.tx_packets.saturating_sub(from.tx_packets),
        connections_opened: from
            .connections_opened
            .zip(to.connections_opened)
            .map(|(x, y)| y.saturating_sub(x)),
    }
}

/// One run of `system` with a fresh cluster, dropped (every process gone) before
/// this returns.
pub async fn run_system(
    system: System,
    n: usize,
    run: usize,
    params: &Params,
    bins: &Binaries,
) -> RunResult {
    let names = node_names(n);
    let setup_failure = |e: String| {
        let mut result = RunResult::new(system, n, run, victim_of(n), params.settle_for(n));
        result.failures.push(format!("setup: {e}"));
        result
    };
    match system {
        System::Vigil => match VigilCluster::new(&bins.vigil, &names) {
            Ok(mut c) => run_once(&mut c, system, n, run, params).await,
            Err(e) => setup_failure(e),
        },
        System::UdpNode => {
            let args = ["--profile", "lan"].map(String::from).to_vec();
            match UdpCluster::new(&bins.udp_node, args) {
                Ok(mut c) => run_once(&mut c, system, n, run, params).await,
                Err(e) => setup_failure(e),
            }
        }
        System::FocaLan | System::Chitchat | System::Memberlist => {
            let (binary, args) = match system {
                // `new_lan` takes the cluster size; the bench's N is what an
                // operator would configure.
                System::FocaLan => (&bins.foca_lan, vec!["--cluster-size".into(), n.to_string()]),
                System::Chitchat => (&bins.chitchat, Vec::new()),
                _ => (&bins.memberlist, Vec::new()),
            };
            let Some(binary) = binary else {
                return setup_failure(format!(
                    "no {} binary: build with `--features peers`",
                    system.as_str()
                ));
            };
            match UdpCluster::new(binary, args) {
                Ok(mut c) => run_once(&mut c, system, n, run, params).await,
                Err(e) => setup_failure(e),
            }
        }
    }
}

/// Runs every size and run, interleaving the systems (vigil run r, then udp-node
/// run r, then each peer's run r) so that drift in the machine's load hits all.
pub async fn run_bench(params: &Params, bins: &Binaries) -> Report {
    let mut report = Report::begin(params);
    for &n in &params.sizes {
        for run in 1..=params.runs {
            for &system in &params.systems {
                eprintln!(
                    "cluster bench: N={n} run {run}/{} {}...",
                    params.runs,
                    system.as_str()
                );
                let result = run_system(system, n, run, params, bins).await;
                eprintln!("  {}", report::one_line(&result));
                report.runs.push(result);
            }
        }
    }
    report.finish();
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn settle_defaults_to_n_probe_periods_plus_a_margin_unless_given() {
        let period = vigil_protocol::profile::probe_period(vigil_protocol::Profile::Lan);
        let params = Params::parse(["--sizes".to_string(), "10,50".to_string()])
            .unwrap()
            .unwrap();
        assert_eq!(params.settle, None);
        assert_eq!(params.settle_for(50), period * 50 + SETTLE_MARGIN);
        assert!(!params.command_line().contains("--settle-secs"));

        let params = Params::parse(["--settle-secs=7".to_string()])
            .unwrap()
            .unwrap();
        assert_eq!(params.settle_for(50), Duration::from_secs(7));
        assert_eq!(params.settle_for(10), Duration::from_secs(7));
        assert!(params.command_line().ends_with("--settle-secs 7"));
    }

    #[test]
    fn systems_default_to_vigil_and_udp_node_and_peers_ask_for_the_feature() {
        let params = Params::parse(Vec::<String>::new()).unwrap().unwrap();
        assert_eq!(params.systems, DEFAULT_SYSTEMS);
        assert!(!params.command_line().contains("--systems"));
        assert!(!params.command_line().contains("--features"));

        let params =
            Params::parse(["--systems=vigil,foca-lan,chitchat,memberlist,vigil".to_string()])
                .unwrap()
                .unwrap();
        assert_eq!(
            params.systems,
            vec![
                System::Vigil,
                System::FocaLan,
                System::Chitchat,
                System::Memberlist
            ]
        );
        let line = params.command_line();
        assert!(line.starts_with("cargo bench -p vigil-benches --features peers --bench cluster"));
        assert!(line.ends_with("--systems vigil,foca-lan,chitchat,memberlist"));
        assert!(Params::parse(["--systems=vigil,serf".to_string()]).is_err());
    }

    #[test]
    fn warmup_is_the_difference_of_two_readings() {
        let at = |t_ms: f64, tx_bytes, conns| Traffic {
            t_ms,
            tx_bytes,
            tx_packets: tx_bytes / 100,
            connections_opened: conns,
            ..Traffic::default()
        };
        let w = warmup(&at(1000.0, 500, Some(1)), &at(3500.0, 10_500, Some(9)));
        assert_eq!((w.secs, w.tx_bytes, w.tx_packets), (2.5, 10_000, 100));
        assert_eq!(w.connections_opened, Some(8));
        assert_eq!(
            warmup(&at(0.0, 0, None), &at(1.0, 0, None)).connections_opened,
            None
        );
    }
}
