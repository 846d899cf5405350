#![no_main]
// The entry point is shared with protocol/tests/fuzz_regressions.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil_protocol::fuzzing::swim_datagram(data));
