//! Recovery time and point (RTO, RPO) on real processes: a loopback cluster of
//! `vigil agent` processes launching the built-in example agent, one host killed
//! with its agents per run, each agent timed through detection, election, transfer
//! and start on its new host. See `vigil_benches::recovery`.
//!
//! ```sh
//! cargo bench -p vigil-benches --bench recovery
//! cargo bench -p vigil-benches --bench recovery -- --runs 2 --nodes 4 --agents 8
//! ```
//!
//! Prints progress on stderr and a Markdown section for docs/BENCHMARKS.md on
//! stdout; writes the raw numbers as JSON (`--out`). Exits with failure if any agent
//! did not run again or any acknowledged snapshot was lost.

use std::process::ExitCode;

use vigil_benches::recovery::{Params, USAGE, run_bench};

fn main() -> ExitCode {
    vigil_benches::bench_main(Params::parse, USAGE, |params, runtime| {
        let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-bench-node"));
        let report = runtime.block_on(run_bench(&params, &bin));
        let written = report.write_json(params.out.as_deref());
        vigil_benches::bench_finish(&report.markdown(), written, report.failed())
    })
}
