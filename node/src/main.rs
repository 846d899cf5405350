//! The `vigil` binary. Everything lives in the library so that other packages (the
//! black-box tests, the benchmarks) can build the identical program.

fn main() -> std::process::ExitCode {
    vigil::cmd::main_entry()
}
