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
    let params = match Params::parse(std::env::args().skip(1)) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let bins = Binaries {
        vigil: env!("CARGO_BIN_EXE_vigil-bench-node").into(),
        udp_node: env!("CARGO_BIN_EXE_udp-node").into(),
    };
    let runtime = match vigil_benches::harness_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let report = runtime.block_on(run_bench(&params, &bins));
    let written = report.write_json(params.out.as_deref());
    println!("{}", report.markdown());
    match written {
        Ok(path) => {
            eprintln!("raw results: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write the raw results: {e}");
            ExitCode::FAILURE
        }
    }
}
