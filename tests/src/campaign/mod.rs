//! The fault campaign: real `vigil agent` processes, one per network namespace (or on
//! loopback where namespaces are unavailable), a workload of agents that put snapshots
//! continuously, faults on a seeded schedule, and a checker that reads the recorded
//! history for lost acknowledged snapshots, two live owners, epochs going backwards,
//! and a cluster that does not settle once the faults stop.

pub mod checker;
pub mod history;
