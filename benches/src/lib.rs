//! Shared pieces of vigil's benchmarks.
//!
//! - [`procstat`]: CPU time and RSS of a process from `/proc`, and min/median/max.
//! - [`cluster`]: the whole-cluster benchmark (vigil vs. udp-node), used by the
//!   `cluster` bench target and by the smoke test.
//! - [`handshake`]: QUIC + mutual TLS connection costs (the `handshake` bench).
//! - [`snapshots`]: snapshot replication latency, throughput and repair against the
//!   local disk with fsync (the `snapshots` bench).
//! - [`recovery`]: RTO and RPO when a host dies with its agents, on real processes
//!   (the `recovery` bench).
//! - [`flood`]: what a flood of junk datagrams or connection attempts from one
//!   address costs a node, and its probes (the `flood` bench).
//! - [`prom`]: `/metrics` read with labels, histogram quantiles.
//! - [`args`]: the benches' command-line flags.
//! - [`peer`]: the output lines and counters of the peer binaries (foca-lan,
//!   chitchat-node, memberlist-node) the cluster bench compares vigil with.

pub mod args;
pub mod cluster;
pub mod flood;
pub mod handshake;
pub mod peer;
pub mod procstat;
pub mod prom;
pub mod recovery;
pub mod snapshots;

use std::process::ExitCode;

/// A bench target's `main`: parses its arguments with `parse` (`--help` prints
/// `usage` and exits 0, a bad argument exits 2), builds the runtime and hands both
/// to `run`.
pub fn bench_main<P>(
    parse: impl FnOnce(std::iter::Skip<std::env::Args>) -> Result<Option<P>, String>,
    usage: &str,
    run: impl FnOnce(P, tokio::runtime::Runtime) -> ExitCode,
) -> ExitCode {
    let params = match parse(std::env::args().skip(1)) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match harness_runtime() {
        Ok(runtime) => run(params, runtime),
        Err(code) => code,
    }
}

/// The benchmark harness's Tokio runtime. The harness only drives the nodes, follows
/// their event streams and scrapes counters; two worker threads keep it from
/// competing with the measured processes more than needed.
pub fn harness_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// What a bench target does last: print its report on stdout, say where its raw
/// results went (or why they could not be written) on stderr, and exit with
/// failure if they could not be written or the bench `failed`.
pub fn bench_finish(
    report: &str,
    written: std::io::Result<std::path::PathBuf>,
    failed: bool,
) -> ExitCode {
    println!("{report}");
    let written = match written {
        Ok(path) => {
            eprintln!("raw results: {}", path.display());
            true
        }
        Err(e) => {
            eprintln!("cannot write the raw results: {e}");
            false
        }
    };
    if written && !failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
