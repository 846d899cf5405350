//! Summaries of the runs, the targets from the issue, the Markdown section for
//! docs/BENCHMARKS.md and the raw JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::systems::unix_ms;
use super::{IP_UDP_HEADER_BYTES, Params, RunResult, SETTLE_MARGIN, System};
use crate::procstat::{Summary, summarize};

/// Targets from the issue. Reported next to the figures, never asserted.
pub const TARGET_BYTES_RATIO: f64 = 1.5;
pub const TARGET_CPU_PERCENT: f64 = 1.0;
pub const TARGET_RSS_MIB: f64 = 30.0;
pub const TARGET_CONVERGENCE_MS: f64 = 3000.0;
/// The cluster size the CPU, RSS and convergence targets are stated for.
pub const TARGET_N: usize = 50;
/// Issue 6: vigil detects at least this many times faster than the fastest peer...
pub const TARGET_PEER_DETECTION_SPEEDUP: f64 = 2.0;
/// ... at no more false positives, and at most this many times its bandwidth.
pub const TARGET_PEER_BYTES_RATIO: f64 = 1.5;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub kernel: Option<String>,
}

impl Machine {
    /// The heading, command, date, machine and commit lines every report starts with.
    pub fn write_provenance(
        &self,
        md: &mut String,
        title: &str,
        command: &str,
        date: &str,
        git: Option<&str>,
    ) {
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(md, "Command (from the workspace root):\n");
        let _ = writeln!(md, "```sh\n{command}\n```\n");
        let _ = writeln!(md, "- Date: {date}");
        let _ = writeln!(
            md,
            "- Machine: {} CPUs (nproc), {}, Linux {}",
            self.nproc,
            self.cpu_model.as_deref().unwrap_or("unknown CPU"),
            self.kernel.as_deref().unwrap_or("unknown")
        );
        let _ = writeln!(md, "- Commit: {}", git.unwrap_or("unknown (no git)"));
    }

    pub fn probe() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel,
        }
    }
}

/// How a bench ran: its command line, when, on which machine and commit, and the
/// machine's load before and after.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub command: String,
    pub date: String,
    pub unix_ms: u64,
    pub machine: Machine,
    pub git: Option<String>,
    pub load_average_before: Option<String>,
    pub load_average_after: Option<String>,
}

impl Provenance {
    /// Now, before the bench runs `command`.
    pub fn begin(command: String) -> Provenance {
        let now = unix_ms();
        Provenance {
            command,
            date: vigil::events::format_unix_ms(now),
            unix_ms: now,
            machine: Machine::probe(),
            git: git_revision(),
            load_average_before: load_average(),
            load_average_after: None,
        }
    }

    /// After the bench ran.
    pub fn finish(&mut self) {
        self.load_average_after = load_average();
    }

    /// The heading, command, date, machine, commit and load lines of a report.
    pub fn write(&self, md: &mut String, title: &str) {
        self.machine
            .write_provenance(md, title, &self.command, &self.date, self.git.as_deref());
        let _ = writeln!(
            md,
            "- Load average (1/5/15 min) before: {}; after: {}",
            self.load_average_before.as_deref().unwrap_or("?"),
            self.load_average_after.as_deref().unwrap_or("?")
        );
    }
}

/// `git rev-parse --short HEAD` of the workspace, marked when the tree has changes.
pub fn git_revision() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    })
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Writes a bench's raw results as JSON to `path` (relative paths from the workspace
/// root), by default `bench-results/NAME-UNIXSECS.json`, creating the directory.
/// Returns the path written.
pub fn write_results(
    results: &impl Serialize,
    name: &str,
    unix_ms: u64,
    path: Option<&Path>,
) -> std::io::Result<PathBuf> {
    let root = workspace_root();
    let path = match path {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => root.join(p),
        None => root
            .join("bench-results")
            .join(format!("{name}-{}.json", unix_ms / 1000)),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(results).map_err(std::io::Error::other)?;
    std::fs::write(&path, json)?;
    Ok(path)
}

/// The workspace root (this package's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Figures of one system at one size, over all its runs.
#[derive(Debug, Clone, Serialize)]
pub struct SystemSummary {
    pub system: System,
    pub n: usize,
    pub runs: usize,
    /// Runs that recorded any failure.
    pub failed_runs: usize,
    pub convergence_failures: usize,
    pub convergence_from_last_ready_ms: Option<Summary>,
    pub convergence_from_first_start_ms: Option<Summary>,
    /// Over all observers of all runs.
    pub detection_ms: Option<Summary>,
    /// Over the observers of each run.
    pub detection_per_run_ms: Vec<Option<Summary>>,
    /// Survivors that never declared the victim down, summed over runs.
    pub undetected: usize,
    pub first_suspicion_ms: Option<Summary>,
    /// Per node, pooled over runs.
    pub tx_bytes_per_s: Option<Summary>,
    pub tx_packets_per_s: Option<Summary>,
    pub rx_bytes_per_s: Option<Summary>,
    pub rx_packets_per_s: Option<Summary>,
    /// Payload plus IPv4 and UDP headers.
    pub wire_tx_bytes_per_s: Option<Summary>,
    pub cpu_percent: Option<Summary>,
    pub rss_mib: Option<Summary>,
    /// QUIC connections opened per node during the window (vigil only).
    pub connections_opened: Option<Summary>,
    /// SWIM datagrams sent per second per node (vigil only).
    pub swim_datagrams_per_s: Option<Summary>,
    /// Per node, from the last node's ready line to the window's start: seconds
    /// covered, UDP payload bytes and packets sent, QUIC connections opened (vigil
    /// only).
    pub warmup_secs: Option<Summary>,
    pub warmup_tx_bytes: Option<Summary>,
    pub warmup_tx_packets: Option<Summary>,
    pub warmup_connections_opened: Option<Summary>,
    pub false_positives: usize,
}

fn summary_of(values: impl Iterator<Item = f64>) -> Option<Summary> {
    let mut v: Vec<f64> = values.collect();
    summarize(&mut v)
}

impl SystemSummary {
    fn of(system: System, n: usize, runs: &[&RunResult]) -> SystemSummary {
        let nodes = || runs.iter().flat_map(|r| r.nodes.iter());
        let warmups = || nodes().filter_map(|n| n.warmup.as_ref());
        SystemSummary {
            system,
            n,
            runs: runs.len(),
            failed_runs: runs.iter().filter(|r| !r.failures.is_empty()).count(),
            convergence_failures: runs.iter().filter(|r| r.converged_at_ms.is_none()).count(),
            convergence_from_last_ready_ms: summary_of(
                runs.iter()
                    .filter_map(|r| r.convergence_from_last_ready_ms)
                    .map(|v| v as f64),
            ),
            convergence_from_first_start_ms: summary_of(
                runs.iter()
                    .filter_map(|r| r.convergence_from_first_start_ms)
                    .map(|v| v as f64),
            ),
            detection_ms: summary_of(
                runs.iter()
                    .flat_map(|r| r.detection_ms.values())
                    .map(|&v| v as f64),
            ),
            detection_per_run_ms: runs
                .iter()
                .map(|r| summary_of(r.detection_ms.values().map(|&v| v as f64)))
                .collect(),
            undetected: runs.iter().map(|r| r.undetected_by.len()).sum(),
            first_suspicion_ms: summary_of(
                runs.iter()
                    .filter_map(|r| r.first_suspicion_ms)
                    .map(|v| v as f64),
            ),
            tx_bytes_per_s: summary_of(nodes().map(|n| n.tx_bytes_per_s)),
            tx_packets_per_s: summary_of(nodes().map(|n| n.tx_packets_per_s)),
            rx_bytes_per_s: summary_of(nodes().map(|n| n.rx_bytes_per_s)),
            rx_packets_per_s: summary_of(nodes().map(|n| n.rx_packets_per_s)),
            wire_tx_bytes_per_s: summary_of(nodes().map(|n| n.wire_tx_bytes_per_s)),
            cpu_percent: summary_of(nodes().map(|n| n.cpu_fraction * 100.0)),
            rss_mib: summary_of(nodes().map(|n| n.rss_bytes as f64 / MIB)),
            connections_opened: summary_of(
                nodes().filter_map(|n| n.connections_opened.map(|c| c as f64)),
            ),
            swim_datagrams_per_s: summary_of(nodes().filter_map(|n| n.swim_datagrams_per_s)),
            warmup_secs: summary_of(warmups().map(|w| w.secs)),
            warmup_tx_bytes: summary_of(warmups().map(|w| w.tx_bytes as f64)),
            warmup_tx_packets: summary_of(warmups().map(|w| w.tx_packets as f64)),
            warmup_connections_opened: summary_of(
                warmups().filter_map(|w| w.connections_opened.map(|c| c as f64)),
            ),
            false_positives: runs.iter().map(|r| r.false_positives.len()).sum(),
        }
    }
}

/// vigil's median over udp-node's, per figure.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub tx_bytes_per_s: Option<f64>,
    pub wire_tx_bytes_per_s: Option<f64>,
    pub tx_packets_per_s: Option<f64>,
    pub warmup_tx_bytes: Option<f64>,
    pub cpu: Option<f64>,
    pub rss: Option<f64>,
    pub detection: Option<f64>,
}

fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    let (a, b) = (a?.median, b?.median);
    (b > 0.0).then(|| a / b)
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub measured: String,
    /// `None` when there is nothing to judge (the size was not run).
    pub met: Option<bool>,
}

impl Ratios {
    /// `a`'s medians over `b`'s.
    fn of(a: &SystemSummary, b: &SystemSummary) -> Ratios {
        Ratios {
            tx_bytes_per_s: ratio(a.tx_bytes_per_s, b.tx_bytes_per_s),
            wire_tx_bytes_per_s: ratio(a.wire_tx_bytes_per_s, b.wire_tx_bytes_per_s),
            tx_packets_per_s: ratio(a.tx_packets_per_s, b.tx_packets_per_s),
            warmup_tx_bytes: ratio(a.warmup_tx_bytes, b.warmup_tx_bytes),
            cpu: ratio(a.cpu_percent, b.cpu_percent),
            rss: ratio(a.rss_mib, b.rss_mib),
            detection: ratio(a.detection_ms, b.detection_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeSummary {
    pub n: usize,
    pub vigil: SystemSummary,
    pub udp_node: SystemSummary,
    /// vigil over udp-node.
    pub ratios: Ratios,
    /// The peers that ran at this size, each with vigil's medians over its own.
    pub peers: Vec<PeerComparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerComparison {
    pub peer: SystemSummary,
    /// vigil over this peer (medians).
    pub ratios: Ratios,
}

/// The whole benchmark: how it was run, every run's raw figures, the summaries.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub params: Params,
    pub runs: Vec<RunResult>,
    pub summaries: Vec<SizeSummary>,
    pub targets: Vec<Target>,
    /// Issue 6's target against the fastest peer, per size.
    pub peer_targets: Vec<Target>,
}

impl Report {
    pub fn begin(params: &Params) -> Report {
        Report {
            provenance: Provenance::begin(params.command_line()),
            params: params.clone(),
            runs: Vec::new(),
            summaries: Vec::new(),
            targets: Vec::new(),
            peer_targets: Vec::new(),
        }
    }

    /// Computes the summaries and targets from the runs.
    pub fn finish(&mut self) {
        self.provenance.finish();
        let mut sizes: Vec<usize> = Vec::new();
        for r in &self.runs {
            if !sizes.contains(&r.n) {
                sizes.push(r.n);
            }
        }
        self.summaries = sizes
            .into_iter()
            .map(|n| {
                let of = |system| {
                    let runs: Vec<&RunResult> = self
                        .runs
                        .iter()
                        .filter(|r| r.n == n && r.system == system)
                        .collect();
                    SystemSummary::of(system, n, &runs)
                };
                let vigil = of(System::Vigil);
                let udp = of(System::UdpNode);
                let ratios = Ratios::of(&vigil, &udp);
                let peers = self
                    .params
                    .systems
                    .iter()
                    .filter(|s| s.is_peer())
                    .map(|&system| {
                        let peer = of(system);
                        PeerComparison {
                            ratios: Ratios::of(&vigil, &peer),
                            peer,
                        }
                    })
                    .collect();
                SizeSummary {
                    n,
                    vigil,
                    udp_node: udp,
                    ratios,
                    peers,
                }
            })
            .collect();
        self.targets = targets(&self.summaries);
        self.peer_targets = self.summaries.iter().filter_map(peer_target).collect();
    }

    /// Writes the raw numbers as JSON to `path` (relative paths from the workspace
    /// root), creating its directory. Returns the path written.
    pub fn write_json(&self, path: Option<&Path>) -> std::io::Result<PathBuf> {
        write_results(self, "cluster", self.provenance.unix_ms, path)
    }

    /// How long the runs settled after convergence.
    fn settle_text(&self) -> String {
        if let Some(settle) = self.params.settle {
            return format!("Settle {} s after convergence", settle.as_secs());
        }
        let period = vigil_protocol::profile::probe_period(vigil_protocol::Profile::Lan);
        let each: Vec<String> = self
            .params
            .sizes
            .iter()
            .map(|&n| format!("{} s at N={n}", self.params.settle_for(n).as_secs_f64()))
            .collect();
        format!(
            "Settle N × {} s (the LAN probe period) + {} s after convergence ({}), so that \
             vigil's mesh warm-up, one connection to each peer during its first probe round, \
             is over before the window",
            period.as_secs_f64(),
            SETTLE_MARGIN.as_secs(),
            each.join(", ")
        )
    }

    /// A section ready to paste into docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let ran = |system| self.params.systems.contains(&system);
        let peers_ran = self.params.systems.iter().any(|s| s.is_peer());
        let title = if peers_ran {
            "Peers side by side: foca, chitchat, memberlist"
        } else {
            "Whole cluster: vigil vs. the same core over plain UDP"
        };
        self.provenance.write(&mut md, title);
        let order: Vec<&str> = self.params.systems.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            md,
            "- Setup: N nodes on 127.0.0.1, zones az1/az2/az3 round robin (only vigil and \
             udp-node use zones), the first node seeds the others, started one after the other. \
             The systems never run at the same time: for each run r, {} in this order. {}, then \
             a {} s window; then SIGKILL of node n{{N/2+1}} (never the seed).",
            order.join(", then "),
            self.settle_text(),
            self.params.window.as_secs()
        );
        let _ = writeln!(
            md,
            "- vigil: `vigil agent` processes (QUIC datagrams, mutual TLS, RUST_LOG=info), \
             `vigil_protocol` profile \"lan\". \
             udp-node: `benches/src/bin/udp-node.rs`, the same core and profile, each envelope one \
             plain UDP datagram (identical payload, no encryption, no authentication)."
        );
        if peers_ran {
            let _ = writeln!(md, "{PEER_SETUP}");
        }
        let _ = writeln!(md);

        for s in self.summaries.iter().filter(|_| ran(System::UdpNode)) {
            let _ = writeln!(md, "### N = {}\n", s.n);
            let _ = writeln!(
                md,
                "| figure | vigil min / median / max | udp-node min / median / max | vigil / udp-node (medians) |"
            );
            let _ = writeln!(md, "|---|---|---|---|");
            let (v, u, r) = (&s.vigil, &s.udp_node, &s.ratios);
            let mut row = |what: &str,
                           a: Option<Summary>,
                           b: Option<Summary>,
                           digits: usize,
                           ratio: Option<f64>| {
                let _ = writeln!(
                    md,
                    "| {what} | {} | {} | {} |",
                    fmt_summary(a, digits),
                    fmt_summary(b, digits),
                    ratio.map_or("–".to_string(), |x| format!("{x:.2}×"))
                );
            };
            row(
                "join convergence after the last node was ready (ms), over runs",
                v.convergence_from_last_ready_ms,
                u.convergence_from_last_ready_ms,
                0,
                ratio(
                    v.convergence_from_last_ready_ms,
                    u.convergence_from_last_ready_ms,
                ),
            );
            row(
                "join convergence after the first start (ms), over runs",
                v.convergence_from_first_start_ms,
                u.convergence_from_first_start_ms,
                0,
                ratio(
                    v.convergence_from_first_start_ms,
                    u.convergence_from_first_start_ms,
                ),
            );
            row(
                "detection: kill → member_down (ms), all observers of all runs",
                v.detection_ms,
                u.detection_ms,
                0,
                r.detection,
            );
            row(
                "kill → first member_suspected (ms), over runs",
                v.first_suspicion_ms,
                u.first_suspicion_ms,
                0,
                ratio(v.first_suspicion_ms, u.first_suspicion_ms),
            );
            row(
                "UDP bytes/s sent per node (payload)",
                v.tx_bytes_per_s,
                u.tx_bytes_per_s,
                0,
                r.tx_bytes_per_s,
            );
            row(
                "UDP bytes/s sent per node on the wire (payload + 28 B IPv4+UDP header per packet)",
                v.wire_tx_bytes_per_s,
                u.wire_tx_bytes_per_s,
                0,
                r.wire_tx_bytes_per_s,
            );
            row(
                "UDP packets/s sent per node",
                v.tx_packets_per_s,
                u.tx_packets_per_s,
                1,
                r.tx_packets_per_s,
            );
            row(
                "… of which SWIM messages (vigil: QUIC datagrams; the rest are ACK-only packets, handshakes, QUIC housekeeping)",
                v.swim_datagrams_per_s,
                u.tx_packets_per_s,
                1,
                ratio(v.swim_datagrams_per_s, u.tx_packets_per_s),
            );
            row(
                "UDP bytes/s received per node",
                v.rx_bytes_per_s,
                u.rx_bytes_per_s,
                0,
                ratio(v.rx_bytes_per_s, u.rx_bytes_per_s),
            );
            row(
                "UDP packets/s received per node",
                v.rx_packets_per_s,
                u.rx_packets_per_s,
                1,
                ratio(v.rx_packets_per_s, u.rx_packets_per_s),
            );
            row(
                "CPU, % of one core per node",
                v.cpu_percent,
                u.cpu_percent,
                2,
                r.cpu,
            );
            row("RSS per node (MiB)", v.rss_mib, u.rss_mib, 1, r.rss);
            row(
                "QUIC connections opened per node during the window (handshakes in the traffic)",
                v.connections_opened,
                None,
                0,
                None,
            );
            row(
                "warm-up: bytes sent per node (last ready → window start)",
                v.warmup_tx_bytes,
                u.warmup_tx_bytes,
                0,
                r.warmup_tx_bytes,
            );
            row(
                "warm-up: QUIC connections opened per node",
                v.warmup_connections_opened,
                None,
                0,
                None,
            );
            let _ = writeln!(
                md,
                "| false positives (suspected/down about a live node), all runs | {} | {} | |",
                v.false_positives, u.false_positives
            );
            let _ = writeln!(
                md,
                "| runs with a failure / runs | {} / {} | {} / {} | |\n",
                v.failed_runs, v.runs, u.failed_runs, u.runs
            );
        }

        if peers_ran {
            self.peers_markdown(&mut md);
        }

        let _ = writeln!(md, "Per run (detection over the survivors of that run):\n");
        let _ = writeln!(
            md,
            "| N | system | run | convergence after last ready / after first start (ms) | detection min / median / max (ms) | first suspicion (ms) | false positives | failures |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for r in &self.runs {
            let conv = match (
                r.convergence_from_last_ready_ms,
                r.convergence_from_first_start_ms,
            ) {
                (Some(a), Some(b)) => format!("{a} / {b}"),
                _ => "not converged".to_string(),
            };
            let det = summary_of(r.detection_ms.values().map(|&v| v as f64));
            let mut det = fmt_summary(det, 0);
            if !r.undetected_by.is_empty() {
                let _ = write!(det, " ({} survivors never detected)", r.undetected_by.len());
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.n,
                r.system.as_str(),
                r.run,
                conv,
                det,
                r.first_suspicion_ms
                    .map_or("–".to_string(), |v| v.to_string()),
                r.false_positives.len(),
                if r.failures.is_empty() {
                    "–".to_string()
                } else {
                    r.failures.join("; ").replace('|', "\\|")
                }
            );
        }
        let _ = writeln!(md);

        if peers_ran {
            let _ = writeln!(
                md,
                "Target of issue 6 (reported, not asserted): vigil detects at least \
                 {TARGET_PEER_DETECTION_SPEEDUP}× faster than the fastest peer (lowest median \
                 detection) at equal or fewer false positives and at most \
                 {TARGET_PEER_BYTES_RATIO}× its bandwidth (bytes/s sent per node, medians, \
                 payload and on the wire).\n"
            );
            let _ = writeln!(md, "| target | measured | verdict |");
            let _ = writeln!(md, "|---|---|---|");
            for t in &self.peer_targets {
                let _ = writeln!(md, "| {} | {} | {} |", t.what, t.measured, verdict(t.met));
            }
            let _ = writeln!(md);
        }

        let udp_targets = if ran(System::UdpNode) {
            &self.targets[..]
        } else {
            &[]
        };
        if !udp_targets.is_empty() {
            let _ = writeln!(md, "Targets from issue 2 (reported, not asserted):\n");
            let _ = writeln!(md, "| target | measured (vigil) | verdict |");
            let _ = writeln!(md, "|---|---|---|");
        }
        for t in udp_targets {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "not measured",
            };
            let _ = writeln!(md, "| {} | {} | {verdict} |", t.what, t.measured);
        }
        if !udp_targets.is_empty() {
            let _ = writeln!(md);
        }
        let _ = writeln!(
            md,
            "How to read: traffic is UDP payload (vigil: counted at the QUIC endpoint's socket, \
             so QUIC headers, encryption overhead, ACKs and handshakes are included; udp-node: its \
             datagrams, which are the bare envelopes); \"on the wire\" adds {IP_UDP_HEADER_BYTES:.0} \
             bytes of IPv4 and UDP header per packet (no link layer), which weighs more on \
             udp-node's small datagrams. The warm-up is everything a node sent from the moment \
             the last node was ready until the window started (join, then vigil's first probe \
             round, which opens a connection to every peer); udp-node's figures come from its \
             last counters at or before each end. CPU is user+system time from /proc over \
             the window. Per-node figures pool every node of every run. Detection and suspicion \
             times are the observing node's event timestamp minus the harness's clock just \
             before SIGKILL (one host, one clock). Convergence is the latest of the events that \
             gave each node a complete view, minus the harness's clock when the last node \
             reported ready (or before the first node was started)."
        );
        md
    }
}

fn targets(summaries: &[SizeSummary]) -> Vec<Target> {
    let mut out = Vec::new();
    for s in summaries {
        for (what, ratio) in [
            ("payload", s.ratios.tx_bytes_per_s),
            ("on the wire", s.ratios.wire_tx_bytes_per_s),
        ] {
            out.push(Target {
                what: format!(
                    "N={}: UDP bytes/s per node ≤ {TARGET_BYTES_RATIO}× plain UDP, {what} (medians)",
                    s.n
                ),
                measured: ratio.map_or("–".to_string(), |r| format!("{r:.2}×")),
                met: ratio.map(|r| r <= TARGET_BYTES_RATIO),
            });
        }
    }
    let at = summaries.iter().find(|s| s.n == TARGET_N).map(|s| &s.vigil);
    let cpu = at.and_then(|v| v.cpu_percent);
    out.push(Target {
        what: format!(
            "N={TARGET_N}: idle CPU ≤ {TARGET_CPU_PERCENT}% of a core per node (judged on the median node)"
        ),
        measured: cpu.map_or("–".to_string(), |c| {
            format!("median {:.2}%, max {:.2}%", c.median, c.max)
        }),
        met: cpu.map(|c| c.median <= TARGET_CPU_PERCENT),
    });
    let rss = at.and_then(|v| v.rss_mib);
    out.push(Target {
        what: format!(
            "N={TARGET_N}: RSS ≤ {TARGET_RSS_MIB} MiB per node (judged on the largest node)"
        ),
        measured: rss.map_or("–".to_string(), |r| {
            format!("median {:.1} MiB, max {:.1} MiB", r.median, r.max)
        }),
        met: rss.map(|r| r.max <= TARGET_RSS_MIB),
    });
    let conv = at.and_then(|v| v.convergence_from_last_ready_ms);
    let conv_failures = at.map_or(0, |v| v.convergence_failures);
    out.push(Target {
        what: format!(
            "N={TARGET_N}: join convergence ≤ {} s after the last node is ready (judged on the median run)",
            TARGET_CONVERGENCE_MS / 1000.0
        ),
        measured: conv.map_or("–".to_string(), |c| {
            let mut s = format!("median {:.0} ms, max {:.0} ms", c.median, c.max);
            if conv_failures > 0 {
                let _ = write!(s, ", {conv_failures} runs never converged");
            }
            s
        }),
        met: at.map(|_| {
            conv_failures == 0 && conv.is_some_and(|c| c.median <= TARGET_CONVERGENCE_MS)
        }),
    });
    out
}

fn fmt_summary(s: Option<Summary>, digits: usize) -> String {
    s.map_or("–".into(), |s| s.min_median_max(digits))
}

/// A one-line account of a run, for progress output.
pub fn one_line(r: &RunResult) -> String {
    let conv = match (r.convergence_from_last_ready_ms, &r.converged_last) {
        (Some(c), Some(last)) => format!("converged {c} ms after last ready (last: {last})"),
        (Some(c), None) => format!("converged {c} ms after last ready"),
        (None, _) => "not converged".to_string(),
    };
    let det = summary_of(r.detection_ms.values().map(|&v| v as f64))
        .map_or("no detection".to_string(), |s| {
            format!("detected in {:.0}/{:.0}/{:.0} ms", s.min, s.median, s.max)
        });
    let tx = summary_of(r.nodes.iter().map(|n| n.tx_bytes_per_s))
        .map_or("no traffic figures".to_string(), |s| {
            format!("median {:.0} B/s sent per node", s.median)
        });
    let cpu = summary_of(r.nodes.iter().map(|n| n.cpu_fraction * 100.0))
        .map_or(String::new(), |s| format!(", median CPU {:.2}%", s.median));
    let conns = summary_of(
        r.nodes
            .iter()
            .filter_map(|n| n.connections_opened.map(|c| c as f64)),
    )
    .map_or(String::new(), |s| {
        format!(
            ", median {:.0} connections opened per node in the window",
            s.median
        )
    });
    let warmup = summary_of(
        r.nodes
            .iter()
            .filter_map(|n| n.warmup.as_ref().map(|w| w.tx_bytes as f64)),
    )
    .map_or(String::new(), |s| {
        format!(
            "; warm-up ({:.0} s settle): median {:.0} B sent per node",
            r.settle_secs.as_secs_f64(),
            s.median
        )
    });
    let warmup_conns = summary_of(r.nodes.iter().filter_map(|n| {
        n.warmup
            .as_ref()
            .and_then(|w| w.connections_opened.map(|c| c as f64))
    }))
    .map_or(String::new(), |s| {
        format!(", {:.0} connections opened", s.median)
    });
    let mut line = format!(
        "{conv}; {det}; {tx}{cpu}{conns}{warmup}{warmup_conns}; {} false positives",
        r.false_positives.len()
    );
    for f in &r.failures {
        let _ = write!(line, "\n  FAILURE: {f}");
    }
    line
}

/// How the peers were set up, for the report.
const PEER_SETUP: &str = "\
- foca-lan: `benches/src/bin/foca-lan.rs`, plain foca over plain UDP with its stock \
`foca::Config::new_lan(N)` (N = the cluster size started), postcard codec, one message \
per datagram, no custom broadcasts; suspicion read from foca's membership state after \
every call into foca.
- chitchat: `benches/src/bin/chitchat-node.rs`, chitchat over its own UDP transport with \
the values of its own `Default` config (gossip every 1 s, `FailureDetectorConfig::default()`: \
phi threshold 8, window 1000, max interval 10 s, initial interval 5 s; protocol V0); only \
the node id, listen address and seeds are set. No suspected state: a node leaving the \
live set is `member_down`, so its suspicion row is empty.
- memberlist: `benches/src/bin/memberlist-node.rs`, the Rust memberlist port with \
`Options::lan()` over its net transport (UDP packets, TCP push/pull every 30 s and \
fallback pings) on tokio; `member_suspected` is the prober's \"suspecting has failed\" \
line, one per failed probe round (suspicions learned by gossip are not seen).
- Every peer process runs a current-thread tokio runtime, as udp-node does. Traffic: \
foca-lan and chitchat count every UDP datagram they send and receive (payload bytes); \
memberlist counts UDP datagrams both ways plus the payload it writes to TCP streams \
(sent side only, no packet count: segments are not seen; TCP bytes read are not \
counted, so its received figures miss the push/pull replies).";

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    }
}

/// Issue 6's target at one size: vigil against the peer with the lowest median
/// detection time (among peers every survivor of every run saw detect, if any).
fn peer_target(s: &SizeSummary) -> Option<Target> {
    let median = |p: &PeerComparison| p.peer.detection_ms.map(|d| d.median);
    let complete: Vec<&PeerComparison> =
        s.peers.iter().filter(|p| p.peer.undetected == 0).collect();
    let pool: Vec<&PeerComparison> = if complete.iter().any(|p| median(p).is_some()) {
        complete
    } else {
        s.peers.iter().collect()
    };
    let fastest = pool
        .into_iter()
        .filter_map(|p| median(p).map(|m| (m, p)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, p)| p);
    let what = format!(
        "N={}: detection ≥ {TARGET_PEER_DETECTION_SPEEDUP}× faster than the fastest peer, \
         false positives ≤ its, bytes/s ≤ {TARGET_PEER_BYTES_RATIO}× its",
        s.n
    );
    let Some(p) = fastest else {
        return (!s.peers.is_empty()).then(|| Target {
            what,
            measured: "no peer detected the kill".to_string(),
            met: None,
        });
    };
    let vigil_median = s.vigil.detection_ms.map(|d| d.median);
    let speedup = vigil_median
        .zip(median(p))
        .and_then(|(v, m)| (v > 0.0).then(|| m / v));
    let fmt_ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}×"));
    let measured = format!(
        "fastest peer {} (median {} ms); vigil median {} ms, so {} faster; false positives \
         vigil {} vs. {}; bytes/s vigil / {}: {} payload, {} on the wire",
        p.peer.system.as_str(),
        median(p).map_or("–".to_string(), |m| format!("{m:.0}")),
        vigil_median.map_or("–".to_string(), |m| format!("{m:.0}")),
        fmt_ratio(speedup),
        s.vigil.false_positives,
        p.peer.false_positives,
        p.peer.system.as_str(),
        fmt_ratio(p.ratios.tx_bytes_per_s),
        fmt_ratio(p.ratios.wire_tx_bytes_per_s),
    );
    let met = match (
        speedup,
        p.ratios.tx_bytes_per_s,
        p.ratios.wire_tx_bytes_per_s,
    ) {
        (Some(x), Some(b), Some(w)) => Some(
            x >= TARGET_PEER_DETECTION_SPEEDUP
                && s.vigil.false_positives <= p.peer.false_positives
                && s.vigil.undetected == 0
                && b <= TARGET_PEER_BYTES_RATIO
                && w <= TARGET_PEER_BYTES_RATIO,
        ),
        _ => None,
    };
    Some(Target {
        what,
        measured,
        met,
    })
}

impl Report {
    /// Per size: vigil and every peer side by side, then vigil's ratios to each.
    fn peers_markdown(&self, md: &mut String) {
        for s in &self.summaries {
            if s.peers.is_empty() {
                continue;
            }
            let _ = writeln!(md, "### N = {}: vigil and the peers\n", s.n);
            let mut columns: Vec<&SystemSummary> = vec![&s.vigil];
            columns.extend(s.peers.iter().map(|p| &p.peer));
            let names: Vec<&str> = columns.iter().map(|c| c.system.as_str()).collect();
            let _ = writeln!(
                md,
                "| figure (min / median / max) | {} |",
                names.join(" | ")
            );
            let _ = writeln!(md, "|---|{}", "---|".repeat(columns.len()));
            let mut row = |what: &str, f: &dyn Fn(&SystemSummary) -> String| {
                let cells: Vec<String> = columns.iter().map(|c| f(c)).collect();
                let _ = writeln!(md, "| {what} | {} |", cells.join(" | "));
            };
            row(
                "join convergence after the last node was ready (ms), over runs",
                &|c| fmt_summary(c.convergence_from_last_ready_ms, 0),
            );
            row(
                "join convergence after the first start (ms), over runs",
                &|c| fmt_summary(c.convergence_from_first_start_ms, 0),
            );
            row(
                "detection: kill → member_down (ms), all survivors of all runs",
                &|c| fmt_summary(c.detection_ms, 0),
            );
            row(
                "survivors that never declared the victim down, all runs",
                &|c| c.undetected.to_string(),
            );
            row("kill → first member_suspected (ms), over runs", &|c| {
                if c.system == System::Chitchat {
                    "no suspected state".to_string()
                } else {
                    fmt_summary(c.first_suspicion_ms, 0)
                }
            });
            row(
                "false positives (suspected/down about a live node), all runs",
                &|c| c.false_positives.to_string(),
            );
            row("UDP bytes/s sent per node (payload)", &|c| {
                fmt_summary(c.tx_bytes_per_s, 0)
            });
            row(
                "bytes/s sent per node on the wire (payload + 28 B IPv4+UDP header per packet)",
                &|c| fmt_summary(c.wire_tx_bytes_per_s, 0),
            );
            row("UDP packets/s sent per node", &|c| {
                fmt_summary(c.tx_packets_per_s, 1)
            });
            row("bytes/s received per node", &|c| {
                fmt_summary(c.rx_bytes_per_s, 0)
            });
            row("CPU, % of one core per node", &|c| {
                fmt_summary(c.cpu_percent, 2)
            });
            row("RSS per node (MiB)", &|c| fmt_summary(c.rss_mib, 1));
            row(
                "warm-up: bytes sent per node (last ready → window start)",
                &|c| fmt_summary(c.warmup_tx_bytes, 0),
            );
            row("runs with a failure / runs", &|c| {
                format!("{} / {}", c.failed_runs, c.runs)
            });
            let _ = writeln!(md);

            let peer_names: Vec<&str> = s.peers.iter().map(|p| p.peer.system.as_str()).collect();
            let _ = writeln!(
                md,
                "| vigil / peer (medians; below 1 means vigil is faster or smaller) | {} |",
                peer_names.join(" | ")
            );
            let _ = writeln!(md, "|---|{}", "---|".repeat(s.peers.len()));
            let mut ratio_row = |what: &str, f: &dyn Fn(&Ratios) -> Option<f64>| {
                let cells: Vec<String> = s
                    .peers
                    .iter()
                    .map(|p| f(&p.ratios).map_or("–".to_string(), |x| format!("{x:.2}×")))
                    .collect();
                let _ = writeln!(md, "| {what} | {} |", cells.join(" | "));
            };
            ratio_row("detection time", &|r| r.detection);
            ratio_row("bytes/s sent (payload)", &|r| r.tx_bytes_per_s);
            ratio_row("bytes/s sent (on the wire)", &|r| r.wire_tx_bytes_per_s);
            ratio_row("packets/s sent", &|r| r.tx_packets_per_s);
            ratio_row("CPU", &|r| r.cpu);
            ratio_row("RSS", &|r| r.rss);
            let _ = writeln!(md);
        }
    }
}
