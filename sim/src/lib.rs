//! vigil-sim: a deterministic simulator for vigil's protocol core.
//!
//! Thousands of `vigil_protocol::Core`s run in one process on a simulated clock and
//! network (latency, loss, duplication, reordering, partitions) with host faults
//! (crash, restart, stall, slow). With `--agents`, every host also runs a
//! `vigil_protocol::Replicator` with a simulated disk (write failures, corrupt reads)
//! under a snapshot workload. One seed reproduces a run bit for bit. Invariants are
//! checked while it runs; figures (detection, dissemination, traffic, false
//! positives, puts, repair) are reported at the end.
//!
//! - [`world`]: the engine: hosts, network, faults, invariants;
//!   [`world::replication`]: replicators, disks, workload, replication invariants.
//! - [`scenario`]: scenarios, reports, and swarm runs over many seeds.

pub mod corpus;
pub mod scenario;
pub mod world;

pub use scenario::{Report, RunSpec, Scenario, SwarmOutcome, run, swarm_one};
pub use world::{Fault, NetConfig, World, WorldConfig};
