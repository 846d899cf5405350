//! Shared pieces of vigil's benchmarks.
//!
//! - [`procstat`]: CPU time and RSS of a process from `/proc`, and min/median/max.
//! - [`cluster`]: the whole-cluster benchmark (vigil vs. udp-node), used by the
//!   `cluster` bench target and by the smoke test.
//! - [`handshake`]: QUIC + mutual TLS connection costs (the `handshake` bench).
//! - [`snapshots`]: snapshot replication latency, throughput and repair against the
//!   local disk with fsync (the `snapshots` bench).

pub mod cluster;
pub mod handshake;
pub mod procstat;
pub mod snapshots;

/// The benchmark harness's Tokio runtime. The harness only drives the nodes, follows
/// their event streams and scrapes counters; two worker threads keep it from
/// competing with the measured processes more than needed.
pub fn harness_runtime() -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        })
}
