//! `vigil-sim run` and `vigil-sim swarm`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vigil_protocol::{Detector, Profile};
use vigil_sim::scenario::{self, Quantiles, Report, RunSpec, Scenario};
use vigil_sim::world::ReplSpec;

#[derive(Parser)]
#[command(
    name = "vigil-sim",
    about = "Deterministic simulator for vigil's protocol core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run of a scenario; prints a report.
    Run(RunArgs),
    /// Many seeds, each with its own cluster size, network and faults.
    Swarm(SwarmArgs),
    /// The same runs (same seeds, same faults) with vigil's detector and with plain
    /// foca, side by side with the closed-form SWIM expectation.
    Compare(CompareArgs),
    /// Writes the fuzz targets' seed corpus (tests/fuzz/corpus): messages a simulated
    /// cluster sent, the API requests and config files of the docs.
    FuzzCorpus(FuzzCorpusArgs),
}

#[derive(Args)]
struct FuzzCorpusArgs {
    /// Directory to write, one subdirectory per fuzz target (replaced).
    #[arg(long, default_value = "tests/fuzz/corpus")]
    out: std::path::PathBuf,
    /// The repository's docs directory (config file examples).
    #[arg(long, default_value = "docs")]
    docs: std::path::PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Seeds to run, from --seed on.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
}

/// A duration like 500ms, 2s, 1.5s, 10m or 1h.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 500ms, 30s, 10m or 1h"))?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit in {s:?}; use us, ms, s, m or h")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    #[arg(long, default_value = "crash")]
    scenario: Scenario,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "lan")]
    profile: Profile,
    /// vigil (its profile, with Lifeguard and its other extensions), foca (plain foca
    /// with Config::new_lan) or foca-matched (plain foca with vigil's probe timing and
    /// a fixed suspicion as short as vigil's typically is).
    #[arg(long, default_value = "vigil")]
    detector: String,
    /// Message loss probability (0.01 = 1 %).
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Smallest one-way latency.
    #[arg(long, default_value = "200us", value_parser = parse_duration)]
    latency_min: Duration,
    /// Largest one-way latency.
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    latency_max: Duration,
    /// Availability zones; hosts are assigned to them round robin.
    #[arg(long, default_value_t = 3)]
    zones: u32,
    /// Extra one-way latency between hosts of different zones.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    cross_zone_latency: Duration,
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Steady-state window (the whole run for the steady scenario).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// Crashes or stalls to inject.
    #[arg(long, default_value_t = 5)]
    faults: u32,
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    fault_spacing: Duration,
    /// Check every view against the SWIM state every N events (0: off).
    #[arg(long, default_value_t = 0)]
    check_views_every: u64,
    /// Stall scenario: fraction of hosts that stall.
    #[arg(long, default_value_t = 0.1)]
    stall_fraction: f64,
    /// Stall scenario: length of each stall.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    stall_duration: Duration,
    /// Stall scenario: mean time between two stalls of one host.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stall_every: Duration,
    /// Slow scenario: how long each message waits at a slow host (the slow period
    /// lasts --stall-duration, every --stall-every on average).
    #[arg(long, default_value = "400ms", value_parser = parse_duration)]
    slow_delay: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// How the cluster starts: join (every host joins through the seeds, measured)
    /// or warm (every host starts knowing the others: faster for big clusters).
    #[arg(long, default_value = "join")]
    bootstrap: String,
    /// Snapshot replication: agents registered on hosts spread over the cluster, each
    /// putting a small snapshot every --put-interval from the steady window until the
    /// faults stop (0: replication off).
    #[arg(long, default_value_t = 0)]
    agents: u32,
    /// Copies per agent (k), the owner's own copy not counted.
    #[arg(long, default_value_t = 3)]
    copies: usize,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    put_interval: Duration,
    /// While the faults run, the probability that a disk write fails and that a disk
    /// read finds the file corrupt.
    #[arg(long, default_value_t = 0.0)]
    disk_faults: f64,
    /// Reads per put, each from a random live host.
    #[arg(long, default_value_t = 0.2)]
    get_fraction: f64,
    /// How long after the faults stop repair may take to restore every agent's
    /// copies (invariant I2).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    repl_settle: Duration,
    /// Register an agent on another host once its owner has been down this long
    /// (a stand-in for recovery; default: never).
    #[arg(long, value_parser = parse_duration)]
    takeover_after: Option<Duration>,
    /// With --bootstrap warm: start with every agent already registered (its first
    /// snapshot on its owner and k holders, its record in every catalog) instead of
    /// registering them all at once; large runs need it.
    #[arg(long)]
    preregistered: bool,
}

#[derive(Args)]
struct SwarmArgs {
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    #[arg(long, default_value_t = 40)]
    max_nodes: u32,
    /// Snapshot replication: draw (each seed draws whether it runs, and its agents,
    /// copies, put interval, disk faults and takeovers), on, or off.
    #[arg(long, default_value = "draw")]
    replication: scenario::SwarmReplication,
    #[arg(long)]
    json: bool,
}

fn q(label: &str, q: &Quantiles, unit: &str) -> String {
    if q.n == 0 {
        return format!("  {label:<34} (none)");
    }
    format!(
        "  {label:<34} min {:>8.3}  p50 {:>8.3}  p99 {:>8.3}  max {:>8.3} {unit}  (n={})",
        q.min, q.p50, q.p99, q.max, q.n
    )
}

fn print_report(r: &Report) {
    let s = &r.spec;
    println!(
        "vigil-sim: {} nodes, scenario {:?}, detector {:?}, seed {}",
        s.nodes, s.scenario, s.detector, s.seed
    );
    println!(
        "network: latency {:?}..{:?} (+{:?} between zones), loss {:.2}%, duplicate {:.2}%, reorder {:.2}%",
        s.net.latency_min,
        s.net.latency_max,
        s.net.cross_zone,
        s.net.loss * 100.0,
        s.net.duplicate * 100.0,
        s.net.reorder * 100.0
    );
    match (r.join_convergence_secs, s.warm_start) {
        (_, true) => println!("join: skipped (warm start: every host starts knowing the others)"),
        (Some(t), false) => println!("join: every view complete {t:.2} s after the last start"),
        (None, false) => println!("join: views NOT complete within 300 s"),
    }
    if let Some(t) = r.settle_secs {
        println!("settle: gossip about the joins died down after {t:.1} s");
    }
    println!("steady state ({:?} window):", s.window);
    println!(
        "{}",
        q(
            "bytes sent per host per second",
            &r.steady.bytes_per_host_per_sec,
            "B/s"
        )
    );
    println!(
        "{}",
        q(
            "messages sent per host per second",
            &r.steady.messages_per_host_per_sec,
            "/s"
        )
    );
    for (kind, msgs, bytes) in &r.steady.by_kind {
        println!("    {kind:<10} {msgs:>8.2} messages/s  {bytes:>10.1} B/s per host (mean)");
    }
    let d = &r.detection;
    if d.crashes > 0 {
        println!(
            "detection ({} crashes, seconds after the crash):",
            d.crashes
        );
        println!("{}", q("first suspicion", &d.first_suspicion, "s"));
        println!(
            "{}",
            q("first host to declare it down", &d.first_detector, "s")
        );
        println!("{}", q("every live observer", &d.every_observer, "s"));
        println!("{}", q("last live observer", &d.last_observer, "s"));
        println!("  observers that missed a crash: {}", d.missed);
        println!("spread of a down declaration (seconds after the first):");
        println!("{}", q("to 50 % of hosts", &d.spread_50, "s"));
        println!("{}", q("to 99 % of hosts", &d.spread_99, "s"));
        println!("{}", q("to 99.99 % of hosts", &d.spread_9999, "s"));
    }
    println!(
        "false positives: {} (suspicions of healthy hosts: {})",
        r.false_positives.len(),
        r.suspicions_of_healthy
    );
    for fp in r.false_positives.iter().take(5) {
        println!(
            "  at {:?}: {} declared {} down",
            fp.at, fp.observer, fp.member
        );
    }
    match r.convergence_after_faults_secs {
        Some(t) => println!("after the faults: views match the truth within {t:.2} s"),
        None => println!("after the faults: views did NOT converge"),
    }
    println!(
        "simulated {:.0} s in {:.1} s wall ({:.1} simulated s per wall s, {} events); {} messages lost, {} refused",
        r.simulated_secs,
        r.wall_secs,
        r.sim_secs_per_wall_sec,
        r.events,
        r.messages_lost,
        r.input_errors
    );
    if let Some(rep) = &r.replication {
        print_replication(rep);
    }
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
}

fn print_replication(r: &vigil_sim::world::ReplReport) {
    let Some(spec) = &r.spec else { return };
    println!(
        "replication: {} agents, k={}, a put every {:?} (quorum), disk faults {:.2}%, {:.2} reads per put{}",
        spec.agents,
        spec.copies,
        spec.put_interval,
        spec.disk_faults * 100.0,
        spec.get_fraction,
        spec.takeover_after
            .map_or(String::new(), |d| format!(", takeover after {d:?}"))
    );
    let failed: u64 = r.puts_failed.values().sum();
    println!(
        "  puts: {} started, {} acknowledged, {} failed {:?}, {} unanswered (owner crashed); skipped: {} owner down, {} owner stalled, {} previous put running",
        r.puts_started,
        r.puts_acked,
        failed,
        r.puts_failed,
        r.puts_unanswered,
        r.skipped_owner_down,
        r.skipped_owner_stalled,
        r.skipped_busy
    );
    println!("{}", q("put latency (simulated)", &r.put_latency_ms, "ms"));
    let gets_failed: u64 = r.gets_failed.values().sum();
    println!(
        "  gets: {} ok, {} failed {:?}, {} older than the version acknowledged when they began",
        r.gets_ok, gets_failed, r.gets_failed, r.stale_reads
    );
    println!(
        "  disk: {} writes ({} failed), {} reads ({} corrupt, {} missing); acknowledged copies not on disk at the ack: {}",
        r.disk_writes,
        r.disk_write_faults,
        r.disk_reads,
        r.disk_corrupt_reads,
        r.disk_missing_reads,
        r.acked_copies_missing
    );
    println!(
        "  registrations: {} ({} takeovers)",
        r.registered, r.takeovers
    );
    println!("  replicator events: {:?}", r.events);
    println!(
        "  recovery: {} adoptions; {} agents of crashed owners not adopted (owner back first or run over); {} put ticks without a live unfenced owner",
        r.adoptions, r.rto_not_adopted, r.skipped_no_owner
    );
    println!("{}", q("owner crash to adoption (RTO)", &r.rto_ms, "ms"));
    println!(
        "  owners at the end: {} agents owned, {} ownerless with most holders live (R3), {} ownerless with most holders down; R1 checks {}, R2 catalog scans {}",
        r.owned_at_end, r.ownerless_at_end, r.ownerless_holders_down, r.r1_checks, r.r2_scans
    );
    if r.stale_unfenced_owners > 0 {
        println!(
            "  SUSPICIOUS: {} times an older epoch's owner was unfenced while a newer epoch had an owner: {:?}",
            r.stale_unfenced_owners, r.stale_unfenced_owner_examples
        );
    }
    println!("  repair: {} bytes copied", r.repair_bytes);
    let (msgs, bytes) = r
        .messages
        .iter()
        .fold((0, 0), |(m, b), (_, mm, bb)| (m + mm, b + bb));
    println!(
        "  messages: {msgs} ({bytes} bytes), {} lost, {} refused",
        r.messages_lost, r.input_errors
    );
    for (kind, m, b) in &r.messages {
        println!("    {kind:<14} {m:>9} messages {b:>12} bytes");
    }
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.2} s"));
    println!(
        "  after the faults stopped (at {}): last repair or heal {}, every agent with a live owner had its copies {}, catalogs agreed {}",
        secs(r.faults_over_at_secs),
        secs(r.last_repair_after_faults_secs),
        secs(r.copies_restored_after_faults_secs),
        secs(r.catalog_agreed_after_faults_secs)
    );
    println!(
        "  at the end: {} agents short of copies (live owner), {} (owner down, not part of I2), {} catalog disagreements, {} agents never acknowledged; I1 checked {} times",
        r.short.len(),
        r.short_owner_down.len(),
        r.catalog_disagreements,
        r.never_acked,
        r.i1_checks
    );
    for s in r.short.iter().chain(&r.short_owner_down).take(5) {
        println!("    short: {s}");
    }
}

fn spec_from(a: &RunArgs, seed: u64) -> Result<RunSpec, ExitCode> {
    let mut spec = RunSpec::new(a.nodes, seed, a.scenario);
    spec.detector = match a.detector.as_str() {
        "vigil" => Detector::Vigil(a.profile),
        "foca" => Detector::PlainFocaLan,
        "foca-matched" => Detector::PlainFocaMatched(a.profile),
        other => {
            eprintln!("vigil-sim: unknown --detector {other:?}; use vigil, foca or foca-matched");
            return Err(ExitCode::from(2));
        }
    };
    spec.net.loss = a.loss;
    spec.net.latency_min = a.latency_min;
    spec.net.latency_max = a.latency_max.max(a.latency_min);
    spec.net.cross_zone = a.cross_zone_latency;
    spec.net.duplicate = a.duplicate;
    spec.net.reorder = a.reorder;
    spec.window = a.window;
    spec.faults = a.faults;
    spec.fault_spacing = a.fault_spacing;
    spec.check_views_every = a.check_views_every;
    spec.stall_fraction = a.stall_fraction;
    spec.stall_duration = a.stall_duration;
    spec.stall_every = a.stall_every;
    spec.slow_delay = a.slow_delay;
    spec.zones = a.zones.max(1);
    if a.agents > 0 {
        let mut repl = ReplSpec::new(a.agents);
        repl.copies = a.copies.max(1);
        repl.put_interval = a.put_interval;
        repl.disk_faults = a.disk_faults.clamp(0.0, 1.0);
        repl.get_fraction = a.get_fraction.clamp(0.0, 1.0);
        repl.settle_bound = a.repl_settle;
        repl.takeover_after = a.takeover_after;
        repl.preregistered = a.preregistered;
        spec.replication = Some(repl);
    }
    if a.preregistered && a.bootstrap != "warm" {
        eprintln!("vigil-sim: --preregistered needs --bootstrap warm");
        return Err(ExitCode::from(2));
    }
    spec.warm_start = match a.bootstrap.as_str() {
        "join" => false,
        "warm" => true,
        other => {
            eprintln!("vigil-sim: unknown --bootstrap {other:?}; use join or warm");
            return Err(ExitCode::from(2));
        }
    };
    Ok(spec)
}

/// Runs both detectors over the same seeds and prints them side by side.
/// One figure per run, summarised over the runs; runs where `figure` is undefined
/// (`None`) are left out.
fn per_run(reports: &[Report], figure: impl Fn(&Report) -> Option<f64>) -> Quantiles {
    Quantiles::of(reports.iter().filter_map(figure).collect())
}

/// `q` if it summarises at least one sample.
fn measured(q: &Quantiles) -> Option<&Quantiles> {
    (q.n > 0).then_some(q)
}

fn compare(c: &CompareArgs) -> ExitCode {
    let mut rows: Vec<(&str, Vec<Report>)> = Vec::new();
    for (label, detector) in [
        ("vigil", Detector::Vigil(c.run.profile)),
        ("plain foca, Config::new_lan", Detector::PlainFocaLan),
        (
            "plain foca timed like vigil (no Lifeguard)",
            Detector::PlainFocaMatched(c.run.profile),
        ),
    ] {
        let mut reports = Vec::new();
        for seed in c.run.seed..c.run.seed + c.seeds {
            let mut args_spec = match spec_from(&c.run, seed) {
                Ok(s) => s,
                Err(code) => return code,
            };
            args_spec.detector = detector;
            eprintln!("compare: {label}, seed {seed}...");
            reports.push(scenario::run(&args_spec));
        }
        rows.push((label, reports));
    }
    println!(
        "vigil-sim compare: {} nodes, scenario {:?}, seeds {}..{}, loss {:.2}%{}",
        c.run.nodes,
        c.run.scenario,
        c.run.seed,
        c.run.seed + c.seeds - 1,
        c.run.loss * 100.0,
        if c.run.scenario == Scenario::Stall {
            format!(
                ", {:.0}% of hosts stalling for {:?} every {:?} on average",
                c.run.stall_fraction * 100.0,
                c.run.stall_duration,
                c.run.stall_every
            )
        } else {
            String::new()
        }
    );
    let mut vigil_violations = 0;
    for (label, reports) in &rows {
        let detector = reports.first().map(|r| r.spec.detector);
        let fps: usize = reports.iter().map(|r| r.false_positives.len()).sum();
        let suspicions: u64 = reports.iter().map(|r| r.suspicions_of_healthy).sum();
        let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
        if detector.is_some_and(|d| d.extended()) {
            vigil_violations += violations;
        }
        // Every observation of every run, pooled.
        let every = Quantiles::of(
            reports
                .iter()
                .flat_map(|r| r.detection.every_observer_samples.iter().copied())
                .collect(),
        );
        let p99s = per_run(reports, |r| {
            measured(&r.detection.every_observer).map(|q| q.p99)
        });
        let p50s = per_run(reports, |r| {
            measured(&r.detection.every_observer).map(|q| q.p50)
        });
        let first = per_run(reports, |r| {
            measured(&r.detection.first_suspicion).map(|q| q.p50)
        });
        let spread = per_run(reports, |r| {
            measured(&r.detection.spread_9999).map(|q| q.p99)
        });
        let bytes = per_run(reports, |r| Some(r.steady.bytes_per_host_per_sec.p50));
        let msgs = per_run(reports, |r| Some(r.steady.messages_per_host_per_sec.p50));
        let speed = per_run(reports, |r| Some(r.sim_secs_per_wall_sec));
        println!();
        println!("{label}:");
        println!("  false positives: {fps} (suspicions of healthy hosts: {suspicions})");
        if violations > 0 {
            println!("  broken invariants: {violations}");
            for v in reports.iter().flat_map(|r| &r.violations).take(3) {
                println!("    {v}");
            }
        }
        println!("{}", q("detection, every live observer", &every, "s"));
        println!(
            "    per run: p50 {:.3} / {:.3} / {:.3} s, p99 {:.3} / {:.3} / {:.3} s (min/median/max over runs)",
            p50s.min, p50s.p50, p50s.max, p99s.min, p99s.p50, p99s.max
        );
        println!(
            "  first suspicion (median per run): {:.3} / {:.3} / {:.3} s",
            first.min, first.p50, first.max
        );
        println!(
            "  spread to 99.99 % (p99 per run): {:.3} / {:.3} / {:.3} s",
            spread.min, spread.p50, spread.max
        );
        println!(
            "  steady state per host: {:.0} B/s, {:.2} messages/s (median over runs)",
            bytes.p50, msgs.p50
        );
        println!(
            "  simulated s per wall s: {:.1} / {:.1} / {:.1}",
            speed.min, speed.p50, speed.max
        );
        if let Some(d) = detector {
            let e = scenario::expectation(d, c.run.nodes, c.run.loss);
            println!(
                "  SWIM expectation: first suspicion {:.3} s (p99 {:.3} s), suspicion {:.3} s (bounds {:.3}..{:.3}), spread {:.3} s, detection ~{:.3} s; {:.1} messages/s per host; false suspicions {:.2e} per probe, {:.3} per s cluster-wide",
                e.first_suspicion_mean_secs,
                e.first_suspicion_p99_secs,
                e.suspicion_secs,
                e.suspicion_min_secs,
                e.suspicion_max_secs,
                e.spread_secs,
                e.detection_secs,
                e.messages_per_host_per_sec,
                e.false_suspicion_per_probe,
                e.false_suspicions_per_sec
            );
        }
    }
    if vigil_violations > 0 {
        eprintln!("vigil-sim: {vigil_violations} invariant violations in vigil's runs");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::FuzzCorpus(a) => match vigil_sim::corpus::write(&a.out, &a.docs, a.seed) {
            Ok(summary) => {
                for (target, n) in summary {
                    println!("{target}: {n} seeds");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vigil-sim: writing the corpus to {}: {e}", a.out.display());
                ExitCode::FAILURE
            }
        },
        Command::Run(a) => {
            let spec = match spec_from(&a, a.seed) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let report = scenario::run(&spec);
            if a.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("vigil-sim: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print_report(&report);
            }
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                for v in &report.violations {
                    eprintln!("vigil-sim: VIOLATION (seed {}): {v}", a.seed);
                }
                // The exact command line of this run replays it.
                let args: Vec<String> = std::env::args().skip(1).collect();
                eprintln!(
                    "vigil-sim: invariant violated with seed {}; replay with: cargo run -p vigil-sim --release -- {}",
                    a.seed,
                    args.join(" ")
                );
                ExitCode::FAILURE
            }
        }
        Command::Compare(c) => compare(&c),
        Command::Swarm(a) => {
            let mut failures = 0;
            let mut fps = 0;
            let mut replicating = 0;
            for seed in a.first_seed..a.first_seed + a.seeds {
                let outcome = scenario::swarm_one_with(seed, a.max_nodes, a.replication);
                fps += outcome.false_positives;
                replicating += u64::from(outcome.replication.is_some());
                if a.json
                    && let Ok(line) = serde_json::to_string(&outcome)
                {
                    println!("{line}");
                }
                if outcome.failed() {
                    failures += 1;
                    eprintln!(
                        "seed {seed} FAILED ({} nodes): {}{}\n  faults: {:?}\n  replay: {}",
                        outcome.nodes,
                        outcome.panic.as_deref().unwrap_or(""),
                        outcome
                            .violations
                            .iter()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join("; "),
                        outcome.faults,
                        scenario::replay_command_with(seed, a.max_nodes, a.replication)
                    );
                }
            }
            eprintln!(
                "swarm: {} seeds from {} ({replicating} with replication), {failures} failed, {fps} false positives in total",
                a.seeds, a.first_seed
            );
            if failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
