//! The fault campaign against real `vigil` processes (see `vigil_tests::campaign`).
//!
//! `campaign --seed S --duration 300s` runs one campaign and exits 0 when the checker
//! finds no anomaly, 1 when it finds some (the seed and the fault schedule are
//! printed), 2 when the campaign could not run. `campaign check FILE` checks a
//! recorded history again. `campaign agent ...` is `vigil agent ...`: the campaign
//! starts its nodes with its own executable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use vigil_tests::campaign::run::{Config, Mode, run};
use vigil_tests::campaign::{checker, history::History};

#[derive(Parser)]
#[command(about = "Fault campaign against real vigil processes")]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Seed of the fault schedule (and of everything else drawn at random).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long faults are injected, e.g. 300s or 5m.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    agents_per_node: usize,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// After the last fault: bound for membership to converge and every agent to
    /// have one owner and its copies.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    bound: Duration,
    /// Node directories, history.json, schedule.txt and report.txt (default:
    /// target/campaign/seed-S).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Sub {
    /// Checks a recorded history.json again.
    Check { history: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Auto,
    Netns,
    Loopback,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "agent") {
        return vigil::cmd::main_entry();
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Check { history }) => check_file(&history),
        None => campaign(cli),
    }
}

fn check_file(path: &std::path::Path) -> ExitCode {
    let history: History = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("campaign: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let report = checker::check(&history);
    println!("{report}");
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn campaign(cli: Cli) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("campaign: cannot find its own executable: {e}");
            return ExitCode::from(2);
        }
    };
    let config = Config {
        seed: cli.seed,
        duration: cli.duration,
        nodes: cli.nodes,
        agents_per_node: cli.agents_per_node,
        mode: match cli.mode {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Netns => Mode::Netns,
            ModeArg::Loopback => Mode::Loopback,
        },
        bound: cli.bound,
        binary,
        out: cli
            .out
            .unwrap_or_else(|| PathBuf::from(format!("target/campaign/seed-{}", cli.seed))),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("campaign: tokio: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&config)) {
        Ok(outcome) => {
            println!("{}", outcome.report);
            let p = outcome.proxies.total();
            println!(
                "mode {:?}; proxies: {} datagrams forwarded, {} lost, {} cut, {} duplicated, {} delayed; failed puts by reason: {:?}",
                outcome.mode,
                p.forwarded,
                p.dropped_loss,
                p.dropped_cut,
                p.duplicated,
                p.delayed,
                outcome.put_errors
            );
            println!("output: {}", config.out.display());
            if outcome.report.is_clean() {
                ExitCode::SUCCESS
            } else {
                println!("seed {} ({:?}); fault schedule:", config.seed, outcome.mode);
                for line in &outcome.schedule {
                    println!("  {line}");
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("campaign (seed {}): {e}", config.seed);
            ExitCode::from(2)
        }
    }
}
