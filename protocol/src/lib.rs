//! vigil-protocol: the sans-IO core of vigil.
//!
//! Everything here is deterministic: no sockets, no tokio, no clock reads, and no
//! randomness but the seeded generator handed in. The `vigil` node drives a [`Core`]
//! with real sockets and time; `vigil-sim` drives the same [`Core`] with simulated ones.
//!
//! - [`identity`]: node names, zones, generations.
//! - [`wire`]: the versioned envelope and its bounded, typed decoding.
//! - [`profile`]: LAN and WAN failure-detection parameters, scaled by cluster size.
//! - [`core`]: the membership core (foca underneath) and its effects and events.
//! - [`placement`]: zone-aware rendezvous placement of snapshot copies.
//! - [`replication`]: agents, owners and epochs, snapshot puts and gets, fencing,
//!   repair and the agent catalog ([`Replicator`], driven next to the [`Core`]).
//! - [`stats`]: what the core counted (probe outcomes, suspicions, refutations).

pub mod core;
pub mod digest;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod lifeguard;
pub mod placement;
pub mod profile;
pub mod replication;
pub mod stats;
pub mod wire;

pub use crate::core::{
    CommandError, Core, Effect, Event, InputError, LocalState, MemberInfo, MemberState, peek_sender,
};
pub use crate::identity::{NameError, NodeId, NodeName, Zone};
pub use crate::lifeguard::Detector;
pub use crate::profile::Profile;
pub use crate::replication::{
    AcceptorState, AckMode, AgentId, AgentRecord, ControlError, ReplEffect, ReplEvent, ReplMsg,
    ReplicationConfig, Replicator,
};
pub use crate::stats::{CoreStats, ProbeOutcome};
