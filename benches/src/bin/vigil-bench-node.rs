//! The `vigil` binary under another name, built inside this package so its bench and
//! test targets can run it (Cargo gives them its path as
//! `CARGO_BIN_EXE_vigil-bench-node`). A `vigil` bin here would collide with node/'s.

fn main() -> std::process::ExitCode {
    vigil::cmd::main_entry()
}
