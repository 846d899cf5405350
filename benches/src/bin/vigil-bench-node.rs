//! The `vigil` binary, built inside this package so its bench and test targets can
//! run it (Cargo gives them its path as `CARGO_BIN_EXE_vigil`).

fn main() -> std::process::ExitCode {
    vigil::cmd::main_entry()
}
