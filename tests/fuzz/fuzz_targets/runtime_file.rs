#![no_main]
// The entry point is shared with node/tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil::fuzzing::runtime_file(data));
