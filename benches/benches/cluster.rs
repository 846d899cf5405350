//! Whole-cluster benchmark: vigil (SWIM over QUIC with mutual TLS) side by side with
//! udp-node (the same core over plain UDP). See `vigil_benches::cluster`.
//!
//! ```sh
//! cargo bench -p vigil-benches --bench cluster -- --sizes 10,50 --runs 3
//! ```
//!
//! Prints progress on stderr and a Markdown section for docs/BENCHMARKS.md on
//! stdout; writes the raw numbers as JSON (`--out`).

use std::process::ExitCode;

use vigil_benches::cluster::{Binaries, Params, USAGE, run_bench};

fn main() -> ExitCode {
    vigil_benches::bench_main(Params::parse, USAGE, |params, runtime| {
        let bins = Binaries {
            vigil: env!("CARGO_BIN_EXE_vigil-bench-node").into(),
            udp_node: env!("CARGO_BIN_EXE_udp-node").into(),
        };
        let report = runtime.block_on(run_bench(&params, &bins));
        let written = report.write_json(params.out.as_deref());
        vigil_benches::bench_finish(&report.markdown(), written, false)
    })
}
