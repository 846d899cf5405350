//! The plain-text report of the snapshot benchmark: every figure next to its
//! baseline from the same run, ratios, min/median/max over rounds, and the issue's
//! targets (reported, never asserted).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::disk::{KEEP, Recipe};
use super::stats::{Dist, dist};
use super::{
    COPIES, LatencyRound, MIB, QUORUM, RepairRun, Report, SIZES, ThroughputRun, Writer, size_name,
};
use crate::procstat::{Summary, summarize};

/// Targets from the issue.
pub const TARGET_P99_MS: f64 = 10.0;
pub const TARGET_P99_SIZE: usize = 64 * 1024;
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.5;
pub const TARGET_THROUGHPUT_SIZE: usize = MIB;
/// The baseline the targets are judged against.
pub const LOCAL_FSYNC: Recipe = Recipe::Fsync;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn f(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".into(),
    }
}

fn ms(x: Option<i64>) -> String {
    x.map_or("-".into(), |v| v.to_string())
}

fn mmm(s: Option<Summary>, digits: usize) -> String {
    s.map_or("-".into(), |s| s.min_median_max(digits))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn summary_of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    summarize(&mut v)
}

fn dist_row(out: &mut String, lead: &str, d: Option<Dist>, errors: usize) {
    dist_row_with(out, lead, d, errors, "");
}

fn dist_row_with(out: &mut String, lead: &str, d: Option<Dist>, errors: usize, tail: &str) {
    match d {
        Some(d) => {
            let _ = writeln!(
                out,
                "{lead}{:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6}{tail}",
                d.n, d.min, d.median, d.p99, d.max, errors
            );
        }
        None => {
            let _ = writeln!(out, "{lead}    0 (no samples) errors {errors}");
        }
    }
}

/// One line per throughput run, for progress output.
pub fn throughput_line(r: &ThroughputRun) -> String {
    let d = dist(&r.latencies_ms);
    let errors: usize = r.errors.values().sum();
    format!(
        "{} {}: {:.1} MiB/s ({:.1} ops/s), p50 {} ms, p99 {} ms, {errors} errors",
        r.writer.name(),
        size_name(r.size),
        r.mib_per_s(),
        r.ops_per_s(),
        f(d.map(|d| d.median), 1),
        f(d.map(|d| d.p99), 1),
    )
}

/// One line per repair run, for progress output.
pub fn repair_line(r: &RepairRun) -> String {
    if !r.failures.is_empty() && r.all_repaired_ms.is_none() {
        return format!("failed: {}", r.failures.join("; "));
    }
    format!(
        "{} agents affected, {:.0} MiB repaired; down after {} ms, all back at {COPIES} holders after {} ms",
        r.affected,
        r.repaired_total() as f64 / MIB as f64,
        ms(r.owners_down_ms),
        ms(r.all_repaired_ms),
    )
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    header(&mut out, r);
    if !r.latency.is_empty() {
        latency(&mut out, &r.latency, r.params.rounds);
    }
    if !r.throughput.is_empty() {
        throughput(&mut out, &r.throughput);
    }
    if !r.repair.is_empty() {
        repair(&mut out, &r.repair);
    }
    targets(&mut out, r);
    if !r.failures.is_empty() {
        let _ = writeln!(out, "\nPROBLEMS (figures missing because of them)");
        for e in &r.failures {
            let _ = writeln!(out, "  - {e}");
        }
    }
    out
}

fn header(out: &mut String, r: &Report) {
    let m = &r.machine;
    let _ = writeln!(out, "VIGIL SNAPSHOT REPLICATION BENCHMARK\n");
    let _ = writeln!(out, "command:  {}", r.command);
    let _ = writeln!(out, "date:     {}", r.date);
    let _ = writeln!(
        out,
        "commit:   {}",
        r.git.as_deref().unwrap_or("unknown (no git)")
    );
    let _ = writeln!(
        out,
        "machine:  nproc {}, {}, {} RAM, Linux {}",
        m.nproc,
        m.cpu_model.as_deref().unwrap_or("unknown CPU"),
        r.mem_total.as_deref().unwrap_or("unknown"),
        m.kernel.as_deref().unwrap_or("unknown"),
    );
    let _ = writeln!(
        out,
        "load:     {} before, {} after (1/5/15 min); wall time {:.0} s",
        r.load_before.as_deref().unwrap_or("?"),
        r.load_after.as_deref().unwrap_or("?"),
        r.wall_secs
    );
    if r.idle_node_cores.is_some() {
        let _ = writeln!(
            out,
            "idle:     the six nodes use {} cores with no snapshot traffic (membership only); the rest of the\n          machine used {} cores meanwhile (other processes on this shared box)",
            f(r.idle_node_cores, 2),
            f(r.idle_other_cores, 2)
        );
    }
    match (&r.data_root, &r.mount) {
        (Some(root), Some(mnt)) => {
            let _ = writeln!(
                out,
                "disk:     {} (nodes' data dirs and the baseline files) on mount {}: {} on {}, options {}",
                root.display(),
                mnt.mount_point,
                mnt.fs_type,
                mnt.device,
                mnt.options
            );
        }
        (Some(root), None) => {
            let _ = writeln!(out, "disk:     {} (filesystem unknown)", root.display());
        }
        _ => {}
    }
    let _ = writeln!(
        out,
        "cluster:  6 `vigil agent` processes on 127.0.0.1 (QUIC + mutual TLS), az1 = n1,n4; az2 = n2,n5; az3 = n3,n6;\n          k = {COPIES} copies on non-owner hosts, one per zone (the owner's own copy is extra), ack = quorum\n          ({QUORUM} of {COPIES} written and fsynced), keep 5 versions, lan profile, every other setting default"
    );
    let _ = writeln!(
        out,
        "baseline: the same bytes, same filesystem, same run, each write durable before the next:\n          write+fsync              = create a new file, write, fsync (the issue's \"local disk with fsync\";\n                                     the targets are judged against this one, the stricter of the two)\n          tmp+fsync+rename+dirsync = what each vigil copy costs its holder (node/src/store.rs)\n          each writer keeps its newest {KEEP} files like a holder keeps versions"
    );
}

fn latency(out: &mut String, rounds: &[LatencyRound], n_rounds: usize) {
    let _ = writeln!(
        out,
        "\n1. PUT LATENCY: one agent on n1, sequential puts, ?ack=quorum, timed by the client from the\n   socket request to the decoded reply (new Unix-socket connection per put, as the client does).\n   CPU while the vigil puts ran: the six nodes, and the rest of the machine (other processes,\n   kernel threads), in cores; \"sys\" = kernel share of the nodes' CPU; \"CPU ms/put\" = node CPU per\n   put, all six nodes (cores x mean put time). \"mean ms client/n1\": the client's mean ms and n1's\n   own mean ms per put (vigil_snapshot_put_seconds: from the owner task taking the put, body\n   already read, to the quorum); the difference is the socket, HTTP and the body upload.\n"
    );
    let _ = writeln!(
        out,
        "{:<7} {:>5}  {:<25} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>4} {:>6} {:>6} {:>11}",
        "size",
        "round",
        "writer (ms)",
        "n",
        "min",
        "median",
        "p99",
        "max",
        "errors",
        "nodes",
        "sys",
        "CPU ms",
        "other",
        "mean ms"
    );
    let _ = writeln!(
        out,
        "{:<7} {:>5}  {:<25} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>4} {:>6} {:>6} {:>11}",
        "", "", "", "", "", "", "", "", "", "cores", "%", "/put", "cores", "client/n1"
    );
    for l in rounds {
        let lead = |w: &str| format!("{:<7} {:>5}  {:<25} ", size_name(l.size), l.round, w);
        dist_row_with(
            out,
            &lead(Writer::Vigil.name()),
            dist(&l.vigil),
            l.vigil_errors.len(),
            &format!(
                " {:>6} {:>4} {:>6} {:>6} {:>5}/{:<5}",
                f(l.vigil_node_cores, 2),
                f(l.node_sys_share.map(|x| x * 100.0), 0),
                f(
                    l.vigil_node_cores
                        .zip(mean(&l.vigil))
                        .map(|(cores, ms)| cores * ms),
                    1
                ),
                f(l.other_cores, 2),
                f(mean(&l.vigil), 1),
                f(l.node_put_mean_ms, 1)
            ),
        );
        for (recipe, v) in &l.disk {
            dist_row(out, &lead(recipe.name()), dist(v), 0);
        }
    }
    let mut pkts = String::new();
    for size in SIZES {
        let p = summary_of(
            rounds
                .iter()
                .filter(|l| l.size == size)
                .filter_map(|l| l.udp_packets_per_put),
        );
        if p.is_some() {
            let _ = write!(pkts, "  {} {};", size_name(size), mmm(p, 0));
        }
    }
    if !pkts.is_empty() {
        let _ = writeln!(
            out,
            "\nUDP packets the six nodes sent per put (min / median / max over rounds):{}",
            pkts.trim_end_matches(';')
        );
    }
    let _ = writeln!(out, "\nPooled over all rounds:\n");
    let _ = writeln!(
        out,
        "{:<7} {:<32} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "size", "writer (ms)", "n", "min", "median", "p99", "max", "errors"
    );
    for size in SIZES {
        let of_size: Vec<&LatencyRound> = rounds.iter().filter(|l| l.size == size).collect();
        if of_size.is_empty() {
            continue;
        }
        let lead = |w: &str| format!("{:<7} {:<32} ", size_name(size), w);
        let v: Vec<f64> = of_size.iter().flat_map(|l| l.vigil.clone()).collect();
        let errors: usize = of_size.iter().map(|l| l.vigil_errors.len()).sum();
        dist_row(out, &lead(Writer::Vigil.name()), dist(&v), errors);
        for recipe in Recipe::ALL {
            let v: Vec<f64> = of_size
                .iter()
                .flat_map(|l| l.disk.get(&recipe).cloned().unwrap_or_default())
                .collect();
            dist_row(out, &lead(recipe.name()), dist(&v), 0);
        }
    }
    let _ = writeln!(
        out,
        "\nOver the {n_rounds} rounds: min / median / max of each round's figure (ratio = vigil / baseline, per round):\n"
    );
    let _ = writeln!(
        out,
        "{:<7} {:<7} {:<22} {:<22} {:<22} {:<20} {:<20}",
        "size",
        "figure",
        "vigil ms",
        "write+fsync ms",
        "tmp+..+dirsync ms",
        "ratio vs write+fsync",
        "ratio vs tmp+..",
    );
    for size in SIZES {
        let of_size: Vec<&LatencyRound> = rounds.iter().filter(|l| l.size == size).collect();
        if of_size.is_empty() {
            continue;
        }
        for (figure, pick) in [
            ("median", (|d: Dist| d.median) as fn(Dist) -> f64),
            ("p99", |d: Dist| d.p99),
            ("max", |d: Dist| d.max),
        ] {
            let vigil: Vec<Option<f64>> =
                of_size.iter().map(|l| dist(&l.vigil).map(pick)).collect();
            let base = |recipe: Recipe| -> Vec<Option<f64>> {
                of_size
                    .iter()
                    .map(|l| l.disk.get(&recipe).and_then(|v| dist(v)).map(pick))
                    .collect()
            };
            let ratio = |b: &[Option<f64>]| {
                summary_of(vigil.iter().zip(b).filter_map(|(v, b)| Some((*v)? / (*b)?)))
            };
            let (plain, durable) = (base(Recipe::Fsync), base(Recipe::Durable));
            let _ = writeln!(
                out,
                "{:<7} {:<7} {:<22} {:<22} {:<22} {:<20} {:<20}",
                size_name(size),
                figure,
                mmm(summary_of(vigil.iter().flatten().copied()), 2),
                mmm(summary_of(plain.iter().flatten().copied()), 2),
                mmm(summary_of(durable.iter().flatten().copied()), 2),
                mmm(ratio(&plain), 1),
                mmm(ratio(&durable), 1),
            );
        }
    }
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for l in rounds {
        for e in &l.vigil_errors {
            *errors.entry(e.as_str()).or_default() += 1;
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(out, "\nFailed puts:");
        for (e, n) in errors {
            let _ = writeln!(out, "  {n} x {e}");
        }
    }
}

fn throughput(out: &mut String, runs: &[ThroughputRun]) {
    let (conc, window) = runs
        .first()
        .map_or((0, 0.0), |r| (r.concurrency, r.window_secs));
    let _ = writeln!(
        out,
        "\n2. AGGREGATE THROUGHPUT: {conc} agents spread over the 6 owners, each pushing back to back (?ack=quorum);\n   baseline: {conc} threads, each writing to its own directory back to back. Counted: operations\n   acknowledged inside a {window:.0} s window that starts after a ramp (load before, during and at\n   the end of the window). MiB/s = acknowledged snapshot bytes; a vigil put writes the body\n   {} times (owner + {COPIES} holders), shown as \"node disk\". CPU in cores over the window: the six\n   nodes, this process (clients or disk writers), and the rest of the machine (other processes,\n   kernel writeback); busy / iowait / steal as shares of all CPUs.\n",
        COPIES + 1
    );
    let _ = writeln!(
        out,
        "{:<7} {:>5}  {:<25} {:>6} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6} {:>9} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5}",
        "size",
        "round",
        "writer",
        "acked",
        "MiB/s",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "node disk",
        "nodes",
        "bench",
        "other",
        "busy",
        "iowait",
        "steal"
    );
    let _ = writeln!(
        out,
        "{:<7} {:>5}  {:<25} {:>6} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6} {:>9} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5}",
        "", "", "", "", "", "", "", "", "", "", "MiB/s", "cores", "cores", "cores", "%", "%", "%"
    );
    for r in runs {
        let d = dist(&r.latencies_ms);
        let errors: usize = r.errors.values().sum();
        let _ = writeln!(
            out,
            "{:<7} {:>5}  {:<25} {:>6} {:>8.1} {:>7.1} {:>7} {:>7} {:>7} {:>6} {:>9} {:>6} {:>6} {:>6} {:>5} {:>6} {:>5}",
            size_name(r.size),
            r.round,
            r.writer.name(),
            r.latencies_ms.len(),
            r.mib_per_s(),
            r.ops_per_s(),
            f(d.map(|d| d.median), 1),
            f(d.map(|d| d.p99), 1),
            f(d.map(|d| d.max), 1),
            errors,
            f(r.node_disk_bytes_per_s.map(|b| b / MIB as f64), 1),
            f(r.node_cpu_cores, 2),
            f(r.bench_cpu_cores, 2),
            f(r.other_cores, 2),
            f(r.machine.map(|m| m.busy * 100.0), 0),
            f(r.machine.map(|m| m.iowait * 100.0), 0),
            f(r.machine.map(|m| m.steal * 100.0), 0),
        );
    }
    let sizes: Vec<usize> = {
        let mut s: Vec<usize> = runs.iter().map(|r| r.size).collect();
        s.sort_unstable_by(|a, b| b.cmp(a));
        s.dedup();
        s
    };
    let _ = writeln!(
        out,
        "\nOver the rounds, min / median / max (ratio = vigil MiB/s / baseline MiB/s of the same round):\n"
    );
    let _ = writeln!(
        out,
        "{:<7} {:<25} {:<26} {:<22} {:<22} {:<20}",
        "size", "writer", "MiB/s", "p50 ms", "p99 ms", "vigil / this"
    );
    for size in sizes {
        let of = |w: Writer| -> Vec<&ThroughputRun> {
            runs.iter()
                .filter(|r| r.size == size && r.writer == w)
                .collect()
        };
        let vigil = of(Writer::Vigil);
        for w in [
            Writer::Vigil,
            Writer::Disk(Recipe::Fsync),
            Writer::Disk(Recipe::Durable),
        ] {
            let these = of(w);
            if these.is_empty() {
                continue;
            }
            let ratio = if w == Writer::Vigil {
                "-".to_string()
            } else {
                mmm(
                    summary_of(these.iter().filter_map(|b| {
                        let v = vigil.iter().find(|v| v.round == b.round)?;
                        Some(v.mib_per_s() / b.mib_per_s())
                    })),
                    2,
                )
            };
            let _ = writeln!(
                out,
                "{:<7} {:<25} {:<26} {:<22} {:<22} {:<20}",
                size_name(size),
                w.name(),
                mmm(summary_of(these.iter().map(|r| r.mib_per_s())), 1),
                mmm(
                    summary_of(
                        these
                            .iter()
                            .filter_map(|r| dist(&r.latencies_ms).map(|d| d.median))
                    ),
                    1
                ),
                mmm(
                    summary_of(
                        these
                            .iter()
                            .filter_map(|r| dist(&r.latencies_ms).map(|d| d.p99))
                    ),
                    1
                ),
                ratio,
            );
        }
        let per_acked_mib = |x: &dyn Fn(&ThroughputRun) -> Option<f64>| {
            summary_of(vigil.iter().filter_map(|v| {
                let acked = v.mib_per_s();
                (acked > 0.0).then_some(x(v)? / acked)
            }))
        };
        let _ = writeln!(
            out,
            "{:<7} vigil, per acknowledged MiB: {} MiB written to disk, {} ms node CPU ({} % in the kernel),\n        {} UDP packets sent, {} us node CPU per packet",
            size_name(size),
            mmm(
                per_acked_mib(&|v| v.node_disk_bytes_per_s.map(|b| b / MIB as f64)),
                2
            ),
            mmm(per_acked_mib(&|v| v.node_cpu_cores.map(|c| c * 1000.0)), 1),
            mmm(
                summary_of(
                    vigil
                        .iter()
                        .filter_map(|v| v.node_sys_share.map(|s| s * 100.0))
                ),
                0
            ),
            mmm(per_acked_mib(&|v| v.node_udp_packets_per_s), 0),
            mmm(
                summary_of(vigil.iter().filter_map(|v| {
                    let p = v.node_udp_packets_per_s?;
                    (p > 0.0).then_some(v.node_cpu_cores? * 1e6 / p)
                })),
                1
            ),
        );
    }
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs {
        for (e, n) in &r.errors {
            *errors
                .entry(format!("{} {}: {e}", r.writer.name(), size_name(r.size)))
                .or_default() += n;
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(out, "\nFailed operations:");
        for (e, n) in errors {
            let _ = writeln!(out, "  {n} x {e}");
        }
    }
}

fn repair(out: &mut String, runs: &[RepairRun]) {
    let _ = writeln!(
        out,
        "\n3. REPAIR AFTER A HOLDER DIES (SIGKILL): a fresh cluster per run, filled with agents x versions x 1 MiB\n   (k = {COPIES}, every copy confirmed on disk first). Times in ms from the kill: \"suspect\"/\"down\" = first\n   survivor's member_suspected/member_down, \"owners down\" = the last repairing owner's member_down,\n   \"first\"/\"last\" = repair_done events (each agent's new holder set published after its copies are\n   fsynced), \"all back\" = the owners' /v1/agents first shows every affected agent with {COPIES} live\n   holders (polled every 50 ms). Copy = \"owners down\" -> \"last\". Floor = what the token bucket allows\n   the busiest owner (1 s of burst, then the rate). Per GiB = time / repaired GiB.\n   Layouts: spread = owners n1..n5, n6 dies (holds the az3 copy of about half the agents; five\n   owners repair in parallel, each under its own limit); one-owner = n1 owns every agent, n4 (the\n   only other az1 node, so a holder of every agent) dies, one owner repairs all under one limit.\n"
    );
    let _ = writeln!(
        out,
        "{:<9} {:<8} {:>3} {:>7} {:>8} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>8} {:>8}",
        "layout",
        "rate",
        "rnd",
        "agents",
        "victim",
        "repaired",
        "payload",
        "suspect",
        "down",
        "owners",
        "first",
        "last",
        "all",
        "copy",
        "copy",
        "floor",
        "s/GiB",
        "s/GiB"
    );
    let _ = writeln!(
        out,
        "{:<9} {:<8} {:>3} {:>7} {:>8} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6} {:>8} {:>8}",
        "",
        "",
        "",
        "hit",
        "MiB",
        "MiB",
        "out MiB",
        "ms",
        "ms",
        "down",
        "ms",
        "ms",
        "back",
        "ms",
        "MiB/s",
        "s",
        "total",
        "copy"
    );
    for r in runs {
        let gib = r.repaired_total() as f64 / GIB;
        let copy_ms = r.last_repair_ms.zip(r.owners_down_ms).map(|(l, d)| l - d);
        let per_gib = |ms: Option<i64>| ms.filter(|_| gib > 0.0).map(|m| m as f64 / 1000.0 / gib);
        let _ = writeln!(
            out,
            "{:<9} {:<8} {:>3} {:>3}/{:<3} {:>8.0} {:>8.0} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>8} {:>6.2} {:>8} {:>8}",
            r.layout.name(),
            r.rate.as_deref().unwrap_or("64MiB*"),
            r.round,
            r.affected,
            r.agents,
            r.victim_bytes as f64 / MIB as f64,
            r.repaired_total() as f64 / MIB as f64,
            f(r.payload_out_bytes.map(|b| b / MIB as f64), 0),
            ms(r.first_suspect_ms),
            ms(r.first_down_ms),
            ms(r.owners_down_ms),
            ms(r.first_repair_ms),
            ms(r.last_repair_ms),
            ms(r.all_repaired_ms),
            ms(copy_ms),
            f(
                copy_ms
                    .filter(|&c| c > 0)
                    .map(|c| r.repaired_total() as f64 / MIB as f64 / (c as f64 / 1000.0)),
                0
            ),
            r.limiter_floor_secs(),
            f(per_gib(r.all_repaired_ms), 1),
            f(per_gib(copy_ms), 1),
        );
    }
    let _ = writeln!(
        out,
        "   (* the node's default --repair-rate, 64 MiB/s per repairing node; fill times: {})",
        runs.iter()
            .map(|r| format!("{:.0} s", r.fill_secs))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut any = false;
    for r in runs {
        for e in &r.failures {
            if !any {
                let _ = writeln!(out, "\nRepair problems:");
                any = true;
            }
            let _ = writeln!(
                out,
                "  {} {} round {}: {e}",
                r.layout.name(),
                r.rate.as_deref().unwrap_or("default"),
                r.round
            );
        }
    }
}

fn targets(out: &mut String, r: &Report) {
    let _ = writeln!(out, "\nTARGETS FROM THE ISSUE (reported, not asserted)\n");
    let of_size: Vec<&LatencyRound> = r
        .latency
        .iter()
        .filter(|l| l.size == TARGET_P99_SIZE)
        .collect();
    if of_size.is_empty() {
        let _ = writeln!(out, "- 64 KiB quorum put p99 <= 10 ms: not measured");
    } else {
        let pooled: Vec<f64> = of_size.iter().flat_map(|l| l.vigil.clone()).collect();
        let pooled = dist(&pooled);
        let per_round = summary_of(of_size.iter().filter_map(|l| dist(&l.vigil).map(|d| d.p99)));
        let rounds_met = of_size
            .iter()
            .filter(|l| dist(&l.vigil).is_some_and(|d| d.p99 <= TARGET_P99_MS))
            .count();
        let verdict = match pooled {
            Some(p) if p.p99 <= TARGET_P99_MS && rounds_met == of_size.len() => {
                "MET (pooled and in every round)".to_string()
            }
            Some(p) if p.p99 <= TARGET_P99_MS => format!(
                "MET pooled, but only in {rounds_met} of {} rounds",
                of_size.len()
            ),
            Some(_) => format!(
                "NOT MET pooled (met in {rounds_met} of {} rounds)",
                of_size.len()
            ),
            None => "not measured".to_string(),
        };
        let _ = writeln!(
            out,
            "- 64 KiB quorum put p99 <= {TARGET_P99_MS} ms on loopback: pooled p99 {} ms over {} puts; per-round p99 {} ms\n  (min / median / max) -> {verdict}",
            f(pooled.map(|p| p.p99), 2),
            pooled.map_or(0, |p| p.n),
            mmm(per_round, 2),
        );
    }
    for recipe in Recipe::ALL {
        let ratios = summary_of(
            r.throughput
                .iter()
                .filter(|b| b.size == TARGET_THROUGHPUT_SIZE && b.writer == Writer::Disk(recipe))
                .filter_map(|b| {
                    let v = r.throughput.iter().find(|v| {
                        v.size == TARGET_THROUGHPUT_SIZE
                            && v.writer == Writer::Vigil
                            && v.round == b.round
                    })?;
                    Some(v.mib_per_s() / b.mib_per_s())
                }),
        );
        let verdict = match ratios {
            Some(s) if s.min >= TARGET_THROUGHPUT_RATIO => "MET in every round",
            Some(s) if s.median >= TARGET_THROUGHPUT_RATIO => {
                "MET by the median, missed in some round"
            }
            Some(_) => "NOT MET",
            None => "not measured",
        };
        let judged = if recipe == LOCAL_FSYNC {
            "the target's baseline"
        } else {
            "like for like with a holder's write, for reference"
        };
        let _ = writeln!(
            out,
            "- 1 MiB throughput >= {:.0}% of local {} ({judged}): vigil / baseline per round {}\n  (min / median / max) -> {verdict}",
            TARGET_THROUGHPUT_RATIO * 100.0,
            recipe.name(),
            mmm(ratios, 2),
        );
    }
}
