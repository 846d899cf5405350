//! A UDP proxy that injects loss, latency and duplication (being written).
