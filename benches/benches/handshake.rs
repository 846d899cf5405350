//! What a SWIM probe pays on a cold connection: QUIC + mutual TLS handshakes (cold,
//! resumed, 0-RTT) and warm datagram round trips, with vigil's TLS configurations.
//! See `vigil_benches::handshake`.
//!
//! ```sh
//! cargo bench -p vigil-benches --bench handshake [-- --iterations 200]
//! ```

use std::process::ExitCode;

const DEFAULT_ITERATIONS: usize = 200;

fn main() -> ExitCode {
    // Cargo passes `--bench` (and any filter); only --iterations means anything here.
    let mut iterations = DEFAULT_ITERATIONS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.split_once('=') {
            Some(("--iterations", v)) => Some(v.to_string()),
            _ if arg == "--iterations" => args.next(),
            _ => continue,
        };
        match value
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
        {
            Some(n) => iterations = n,
            None => {
                eprintln!("--iterations needs a whole number of at least 1");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match vigil_benches::harness_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(vigil_benches::handshake::run(iterations)) {
        Ok(mut report) => {
            if iterations != DEFAULT_ITERATIONS {
                report
                    .command
                    .push_str(&format!(" -- --iterations {iterations}"));
            }
            println!("{}", report.markdown());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("handshake bench: {e}");
            ExitCode::FAILURE
        }
    }
}
