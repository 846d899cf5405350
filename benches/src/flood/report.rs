//! The flood benchmark's report: per phase, probe round trips on the flooded node
//! and the others, failed probes, suspicions and false positives, the flooded
//! node's CPU and memory next to the others', refusals by reason, and the ratios to
//! the first baseline; Markdown for docs/BENCHMARKS.md, the raw numbers as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{NodePhase, Params, PhaseKind, PhaseResult, RunResult};
use crate::cluster::report::{Provenance, write_results};
use crate::procstat::summarize;

const MIB: f64 = 1024.0 * 1024.0;

/// The whole benchmark: how it was run and every run's raw figures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub provenance: Provenance,
    pub params: Params,
    pub runs: Vec<RunResult>,
}

impl Report {
    pub fn begin(params: &Params) -> Report {
        Report {
            provenance: Provenance::begin(params.command_line()),
            params: params.clone(),
            runs: Vec::new(),
        }
    }

    pub fn finish(&mut self) {
        self.provenance.finish();
    }

    /// Some run could not be measured, or let a foreign certificate in.
    pub fn failed(&self) -> bool {
        self.runs.iter().any(|r| !r.failures.is_empty())
    }

    /// Writes the raw numbers as JSON (see [`write_results`]).
    pub fn write_json(&self, path: Option<&Path>) -> std::io::Result<PathBuf> {
        write_results(self, "flood", self.provenance.unix_ms, path)
    }

    /// Phase `i` of every run that measured it.
    fn phase(&self, i: usize) -> impl Iterator<Item = (&RunResult, &PhaseResult)> {
        self.runs
            .iter()
            .filter_map(move |r| Some((r, r.phases.iter().find(|p| p.index == i)?)))
    }

    /// A section ready to paste into docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let p = &self.params;
        let mut md = String::new();
        self.provenance
            .write(&mut md, "Floods: junk datagrams and connection attempts");
        let flooded = self.runs.first().map_or("?", |r| r.flooded.as_str());
        let _ = writeln!(
            md,
            "- Setup: {} `vigil agent` processes on 127.0.0.1, LAN profile (probe every 200 ms, 80 ms to answer), zones az1/az2/az3 round robin; {flooded} is flooded from {} by one thread of the bench process on the same machine; phases of {} s each, in this order: {}; {} run(s), each on a fresh cluster, after convergence and {} s of mesh warm-up.",
            p.nodes,
            p.source,
            p.window.as_secs(),
            (0..p.phases.len())
                .map(|i| p.label(i))
                .collect::<Vec<_>>()
                .join(", "),
            self.runs.len(),
            p.settle().as_secs(),
        );
        let junk_rate = p
            .junk_pps
            .map_or("as fast as the thread sends".to_string(), |r| {
                format!("at most {r} packets/s")
            });
        let _ = writeln!(
            md,
            "- Junk datagrams: half random bytes (1–1350 bytes), half shaped like a QUIC v1 Initial (1200 bytes, valid header, random contents), {junk_rate}. Connection attempts: a QUIC client with a certificate from a foreign CA (trusting the cluster CA, so it accepts the node's certificate and sends its own), {} attempts at once, each given up after {} ms without an answer.\n",
            p.concurrency,
            p.attempt_timeout.as_millis()
        );

        let per = if self.runs.len() > 1 {
            "min / median / max over runs"
        } else {
            "one run"
        };
        let _ = writeln!(
            md,
            "Probe round trips (ms; flooded node: {per}; other nodes: min / median / max over nodes{}):\n",
            if self.runs.len() > 1 { " and runs" } else { "" }
        );
        let _ = writeln!(
            md,
            "| phase | load | flooded node p50 | p99 | mean | probes | other nodes p50 | p99 | probes failed, all nodes | suspicions raised | false positives (suspected / down) |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for i in 0..p.phases.len() {
            let _ = writeln!(md, "{}", self.rtt_row(i));
        }

        let _ = writeln!(
            md,
            "\nRatios to the first baseline of the same run ({per}):\n\n| phase | flooded node p50 × | p99 × | mean × | other nodes' median p50 × | p99 × | flooded node CPU × |\n|---|---|---|---|---|---|---|"
        );
        for i in 0..p.phases.len() {
            if let Some(row) = self.ratio_row(i) {
                let _ = writeln!(md, "{row}");
            }
        }

        let _ = writeln!(
            md,
            "\nCost ({per}; CPU as a share of one core):\n\n| phase | flooded node CPU | other nodes CPU, median | flooded node RSS peak (MiB) | other nodes RSS peak, max (MiB) | UDP packets read by the flooded node /s | kernel UDP receive-buffer drops (machine) | bench process (flooder) cores | machine busy (%) |\n|---|---|---|---|---|---|---|---|---|"
        );
        for i in 0..p.phases.len() {
            let _ = writeln!(md, "{}", self.cost_row(i));
        }

        let _ = writeln!(
            md,
            "\nRefusals on the flooded node (`vigil_tls_rejected_total` by reason, summed over runs):\n\n| phase | reason | refusals | per s |\n|---|---|---|---|"
        );
        for i in 0..p.phases.len() {
            let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
            let mut secs = 0.0;
            for (_, ph) in self.phase(i) {
                secs += ph.secs();
                if let Some(f) = ph.flooded() {
                    for (reason, n) in &f.refusals {
                        *reasons.entry(reason).or_default() += n;
                    }
                }
            }
            if reasons.is_empty() {
                let _ = writeln!(md, "| {} | – | 0 | – |", p.label(i));
            }
            for (reason, n) in reasons {
                let rate = if secs > 0.0 { n as f64 / secs } else { 0.0 };
                let _ = writeln!(md, "| {} | {reason} | {n} | {rate:.0} |", p.label(i));
            }
        }

        let outside: usize = self
            .runs
            .iter()
            .map(|r| r.false_positives_outside.len())
            .sum();
        let _ = writeln!(
            md,
            "\nHow to read: probe round trips come from `vigil_probe_rtt_seconds` (each probe a node's core sent and got a direct answer to, from sending the ping to handling the ack, so time the ack waited in the node is included), read at each phase's start and end; p50 and p99 are estimated from the histogram's buckets (factor 2 apart, linear within one), so read them to within a bucket. \"Probes\" counts the round trips measured. Probes failed: `vigil_probes_total{{outcome=\"failed\"}}` (neither the member nor an indirect prober answered). False positives: every `member_suspected` and `member_down` any node reported during the phase (no node is stopped); {outside} more were reported outside the phases (join, warm-up). CPU and RSS from /proc; the flooder runs on the same {} CPUs as the nodes, so its own CPU (bench process cores) competes with theirs. Kernel receive-buffer drops: `RcvbufErrors` of /proc/net/snmp over the phase, for every socket of the machine: datagrams dropped before any process read them.",
            self.provenance.machine.nproc
        );
        let failures: Vec<String> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.failures
                    .iter()
                    .map(move |f| format!("run {}: {f}", r.run))
            })
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(md, "\nFailures:\n");
            for f in failures {
                let _ = writeln!(md, "- {f}");
            }
        }
        md
    }

    fn rtt_row(&self, i: usize) -> String {
        let phases: Vec<&PhaseResult> = self.phase(i).map(|(_, ph)| ph).collect();
        let flooded: Vec<&NodePhase> = phases.iter().filter_map(|ph| ph.flooded()).collect();
        let others: Vec<&NodePhase> = phases.iter().flat_map(|ph| ph.others()).collect();
        let fl = |f: fn(&NodePhase) -> Option<f64>| cell(flooded.iter().filter_map(|n| f(n)), 2);
        let ot = |f: fn(&NodePhase) -> Option<f64>| cell(others.iter().filter_map(|n| f(n)), 2);
        let sum = |f: &dyn Fn(&PhaseResult) -> u64| phases.iter().map(|ph| f(ph)).sum::<u64>();
        let failed = sum(&|ph| ph.nodes.iter().map(NodePhase::failed_probes).sum());
        let suspicions = sum(&|ph| ph.nodes.iter().map(|n| n.suspicions_raised).sum());
        let suspected = sum(&|ph| (ph.false_positives.len() - ph.downs()) as u64);
        let downs = sum(&|ph| ph.downs() as u64);
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {failed} | {suspicions} | {suspected} / {downs} |",
            self.params.label(i),
            load_cell(&phases),
            fl(|n| n.probe_rtt.p50_ms),
            fl(|n| n.probe_rtt.p99_ms),
            fl(|n| n.probe_rtt.mean_ms),
            cell(flooded.iter().map(|n| n.probe_rtt.count as f64), 0),
            ot(|n| n.probe_rtt.p50_ms),
            ot(|n| n.probe_rtt.p99_ms),
        )
    }

    fn ratio_row(&self, i: usize) -> Option<String> {
        let ratios: Vec<[Option<f64>; 6]> = self
            .phase(i)
            .filter_map(|(run, ph)| {
                let base = run.phases.iter().find(|p| p.kind == PhaseKind::Baseline)?;
                Some(ratios(base, ph))
            })
            .collect();
        if ratios.is_empty() {
            return None;
        }
        let col = |k: usize| cell(ratios.iter().filter_map(|r| r[k]), 2);
        Some(format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.params.label(i),
            col(0),
            col(1),
            col(2),
            col(3),
            col(4),
            col(5)
        ))
    }

    fn cost_row(&self, i: usize) -> String {
        let phases: Vec<&PhaseResult> = self.phase(i).map(|(_, ph)| ph).collect();
        let flooded: Vec<&NodePhase> = phases.iter().filter_map(|ph| ph.flooded()).collect();
        let others_median = phases.iter().filter_map(|ph| {
            let mut v: Vec<f64> = ph.others().map(|n| n.cpu_fraction).collect();
            summarize(&mut v).map(|s| s.median)
        });
        let others_rss = phases.iter().filter_map(|ph| {
            ph.others()
                .map(|n| n.rss_peak_bytes)
                .max()
                .map(|b| b as f64 / MIB)
        });
        let read_per_s = phases.iter().filter_map(|ph| {
            let secs = ph.secs();
            ph.flooded()
                .filter(|_| secs > 0.0)
                .map(|n| n.udp_rx_packets as f64 / secs)
        });
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.params.label(i),
            cell(flooded.iter().map(|n| n.cpu_fraction), 2),
            cell(others_median, 2),
            cell(flooded.iter().map(|n| n.rss_peak_bytes as f64 / MIB), 1),
            cell(others_rss, 1),
            cell(read_per_s, 0),
            cell(
                phases
                    .iter()
                    .filter_map(|ph| ph.udp_rcvbuf_errors.map(|d| d as f64)),
                0
            ),
            cell(phases.iter().filter_map(|ph| ph.harness_cores), 2),
            cell(
                phases
                    .iter()
                    .filter_map(|ph| ph.machine_busy.map(|b| b * 100.0)),
                0
            ),
        )
    }
}

/// The phase's figures divided by the baseline's: flooded node p50, p99, mean;
/// the other nodes' median p50 and p99; the flooded node's CPU.
fn ratios(base: &PhaseResult, ph: &PhaseResult) -> [Option<f64>; 6] {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let fl = |p: &PhaseResult, f: fn(&NodePhase) -> Option<f64>| p.flooded().and_then(f);
    let others = |p: &PhaseResult, f: fn(&NodePhase) -> Option<f64>| {
        let mut v: Vec<f64> = p.others().filter_map(f).collect();
        summarize(&mut v).map(|s| s.median)
    };
    [
        div(
            fl(ph, |n| n.probe_rtt.p50_ms),
            fl(base, |n| n.probe_rtt.p50_ms),
        ),
        div(
            fl(ph, |n| n.probe_rtt.p99_ms),
            fl(base, |n| n.probe_rtt.p99_ms),
        ),
        div(
            fl(ph, |n| n.probe_rtt.mean_ms),
            fl(base, |n| n.probe_rtt.mean_ms),
        ),
        div(
            others(ph, |n| n.probe_rtt.p50_ms),
            others(base, |n| n.probe_rtt.p50_ms),
        ),
        div(
            others(ph, |n| n.probe_rtt.p99_ms),
            others(base, |n| n.probe_rtt.p99_ms),
        ),
        div(
            fl(ph, |n| Some(n.cpu_fraction)),
            fl(base, |n| Some(n.cpu_fraction)),
        ),
    ]
}

/// One value, or "min / median / max" of several; "–" for none.
fn cell(values: impl IntoIterator<Item = f64>, digits: usize) -> String {
    let mut v: Vec<f64> = values.into_iter().collect();
    match (v.len(), summarize(&mut v)) {
        (1, Some(s)) => format!("{:.digits$}", s.min),
        (_, Some(s)) => s.min_median_max(digits),
        _ => "–".into(),
    }
}

/// What the flood sent in the phase (median over runs).
fn load_cell(phases: &[&PhaseResult]) -> String {
    let median = |v: Vec<f64>| {
        let mut v = v;
        summarize(&mut v).map_or(0.0, |s| s.median)
    };
    let junk: Vec<_> = phases.iter().filter_map(|ph| ph.junk).collect();
    let hs: Vec<_> = phases.iter().filter_map(|ph| ph.handshakes).collect();
    if !junk.is_empty() {
        let pps = median(junk.iter().map(|j| j.packets_per_s()).collect());
        let mbps = median(
            junk.iter()
                .map(|j| j.bytes as f64 / j.secs.max(1e-9) / 1e6)
                .collect(),
        );
        return format!("{pps:.0} junk packets/s ({mbps:.0} MB/s)");
    }
    if !hs.is_empty() {
        let rate = median(hs.iter().map(|h| h.attempts_per_s()).collect());
        let share = |f: fn(&super::load::HandshakeStats) -> u64| {
            let total: u64 = hs.iter().map(|h| h.attempts).sum();
            let part: u64 = hs.iter().map(f).sum();
            if total > 0 {
                100.0 * part as f64 / total as f64
            } else {
                0.0
            }
        };
        return format!(
            "{rate:.0} attempts/s: {:.0} % unanswered, {:.0} % refused, {:.0} % certificate rejected",
            share(|h| h.unanswered),
            share(|h| h.refused),
            share(|h| h.rejected)
        );
    }
    "–".into()
}

/// One line per phase, for progress output.
pub fn phase_line(ph: &PhaseResult) -> String {
    let fl = ph.flooded();
    let ms = |x: Option<f64>| x.map_or("–".into(), |v| format!("{v:.2}"));
    let others: Vec<f64> = ph.others().filter_map(|n| n.probe_rtt.p50_ms).collect();
    let mut line = format!(
        "{}: flooded node probe RTT p50 {} ms, p99 {} ms ({} probes), CPU {:.0} %, RSS {:.1} MiB; other nodes' p50 {}; failed probes {}",
        ph.label,
        ms(fl.and_then(|n| n.probe_rtt.p50_ms)),
        ms(fl.and_then(|n| n.probe_rtt.p99_ms)),
        fl.map_or(0, |n| n.probe_rtt.count),
        fl.map_or(0.0, |n| n.cpu_fraction * 100.0),
        fl.map_or(0.0, |n| n.rss_peak_bytes as f64 / MIB),
        cell(others, 2),
        ph.nodes.iter().map(NodePhase::failed_probes).sum::<u64>(),
    );
    if let Some(j) = ph.junk {
        line.push_str(&format!("; sent {:.0} junk packets/s", j.packets_per_s()));
    }
    if let Some(h) = ph.handshakes {
        line.push_str(&format!(
            "; {:.0} attempts/s ({} unanswered, {} refused, {} rejected, {} accepted)",
            h.attempts_per_s(),
            h.unanswered,
            h.refused,
            h.rejected,
            h.accepted
        ));
    }
    if let Some(f) = fl
        && !f.refusals.is_empty()
    {
        let reasons: Vec<String> = f.refusals.iter().map(|(r, n)| format!("{r} {n}")).collect();
        line.push_str(&format!("; refusals: {}", reasons.join(", ")));
    }
    line
}
