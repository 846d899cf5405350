//! Shared pieces of vigil's benchmarks.
