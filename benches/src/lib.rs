//! Shared pieces of vigil's benchmarks.
//!
//! - [`procstat`]: CPU time and RSS of a process from `/proc`, and min/median/max.
//! - [`cluster`]: the whole-cluster benchmark (vigil vs. udp-node), used by the
//!   `cluster` bench target and by the smoke test.
//! - [`handshake`]: QUIC + mutual TLS connection costs (the `handshake` bench).

pub mod cluster;
pub mod handshake;
pub mod procstat;
