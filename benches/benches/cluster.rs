//! Whole-cluster benchmark: vigil (SWIM over QUIC with mutual TLS) side by side with
//! udp-node (the same core over plain UDP) and, with the `peers` feature, with
//! foca, chitchat and memberlist at their stock LAN settings. See
//! `vigil_benches::cluster`.
//!
//! ```sh
//! cargo bench -p vigil-benches --bench cluster -- --sizes 10,50 --runs 3
//! cargo bench -p vigil-benches --features peers --bench cluster -- --sizes 10,50 \
//!     --runs 3 --systems vigil,udp-node,foca-lan,chitchat,memberlist
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
            foca_lan: peer_bin(PEER_BINS[0]),
            chitchat: peer_bin(PEER_BINS[1]),
            memberlist: peer_bin(PEER_BINS[2]),
        };
        let report = runtime.block_on(run_bench(&params, &bins));
        let written = report.write_json(params.out.as_deref());
        vigil_benches::bench_finish(&report.markdown(), written, false)
    })
}

/// The peer binaries' paths, known to Cargo only when the `peers` feature built them.
#[cfg(feature = "peers")]
const PEER_BINS: [Option<&str>; 3] = [
    Some(env!("CARGO_BIN_EXE_foca-lan")),
    Some(env!("CARGO_BIN_EXE_chitchat-node")),
    Some(env!("CARGO_BIN_EXE_memberlist-node")),
];
#[cfg(not(feature = "peers"))]
const PEER_BINS: [Option<&str>; 3] = [None; 3];

fn peer_bin(path: Option<&str>) -> Option<std::path::PathBuf> {
    path.map(Into::into)
}
