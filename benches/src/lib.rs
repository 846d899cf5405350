//! Shared pieces of vigil's benchmarks.

pub mod procstat;
