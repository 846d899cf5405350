//! What a flood from one address costs: a loopback cluster of real `vigil agent`
//! processes, one node flooded with junk datagrams and then with QUIC connection
//! attempts carrying a foreign certificate, between two baselines; probe round
//! trips, failed probes, false positives, CPU, memory and refusals per phase. See
//! `vigil_benches::flood`.
//!
//! ```sh
//! cargo bench -p vigil-benches --bench flood
//! cargo bench -p vigil-benches --bench flood -- --nodes 5 --runs 3 --window-secs 20
//! ```
//!
//! Prints progress on stderr and a Markdown section for docs/BENCHMARKS.md on
//! stdout; writes the raw numbers as JSON (`--out`). Exits with failure if a run
//! could not be measured or a foreign certificate got in.

use std::process::ExitCode;

use vigil_benches::flood::{Params, USAGE, run_bench};

fn main() -> ExitCode {
    vigil_benches::bench_main(Params::parse, USAGE, |params, runtime| {
        let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-bench-node"));
        let report = runtime.block_on(run_bench(&params, &bin));
        let written = report.write_json(params.out.as_deref());
        vigil_benches::bench_finish(&report.markdown(), written, report.failed())
    })
}
