//! Snapshot replication on a 6-node loopback cluster of real `vigil agent`
//! processes (k = 3, quorum ack), side by side with the same bytes written to the
//! local disk with fsync in the same run: put latency, aggregate throughput with 100
//! agents, repair time after a holder dies. See `vigil_benches::snapshots`.
//!
//! ```sh
//! cargo bench -p vigil-benches --bench snapshots
//! cargo bench -p vigil-benches --bench snapshots -- --only latency --rounds 5
//! ```
//!
//! Progress goes to stderr, the plain-text report to stdout.

use std::process::ExitCode;

use vigil_benches::snapshots::{Params, USAGE, report, run_bench};

fn main() -> ExitCode {
    vigil_benches::bench_main(Params::parse, USAGE, |params, runtime| {
        let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-bench-node"));
        let report = runtime.block_on(run_bench(&params, &bin));
        println!("{}", report::render(&report));
        if report.failures.is_empty() && report.repair.iter().all(|r| r.failures.is_empty()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
