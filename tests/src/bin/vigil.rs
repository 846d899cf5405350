//! The `vigil` binary, built inside this package so its tests can run it.

fn main() -> std::process::ExitCode {
    vigil::cmd::main_entry()
}
