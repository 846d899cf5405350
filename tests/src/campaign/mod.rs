//! The fault campaign: real `vigil agent` processes, one per network namespace (or on
//! loopback where namespaces are unavailable), a workload of agents that put snapshots
//! continuously, faults on a seeded schedule, and a checker that reads the recorded
//! history for lost acknowledged snapshots, two live owners, epochs going backwards,
//! and a cluster that does not settle once the faults stop.
//!
//! `cargo run -p vigil-tests --release --bin campaign -- --seed S --duration 300s`;
//! a short campaign runs in `cargo test` (tests/tests/campaign.rs).

pub mod checker;
pub mod disk;
pub mod history;
pub mod run;
pub mod schedule;
pub mod workload;
