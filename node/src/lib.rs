//! The vigil node: the IO shell around `vigil_protocol::Core`.
//!
//! - [`node`]: the owner task of `vigil agent` (drives the core, executes effects).
//! - [`transport`]: QUIC endpoint, connection cache, datagrams and streams.
//! - [`tls`]: the cluster CA, node certificates, mutual TLS configuration and its
//!   reload; [`pki`]: the trusted CAs and revocation lists (`vigil cert trust|revoke`).
//! - [`api`] and [`client`]: the HTTP/JSON API on the Unix socket, and its client;
//!   [`listener`]: who may connect to it (and to the metrics listener), and the
//!   limits of each client.
//! - [`events`]: the indexed, resumable event log.
//! - [`config`] and [`cli`]: settings from flags, environment and TOML;
//!   [`runtime`]: the settings that change while the node runs (`/v1/config`);
//!   [`check`]: `vigil config check`.
//! - [`logging`]: tracing with a reloadable filter (optional OTLP export);
//!   [`systemd`]: `Type=notify` readiness and watchdog.
//! - [`metrics`]: Prometheus metrics.
//! - [`signals`]: metrics that follow the owner task's state, and capacity events.
//! - [`store`]: the durable on-disk snapshot store of a replica host.
//! - [`harness`] and [`demo`]: local clusters of child processes (demo, tests, benches).

// Errors here are returned on cold paths (startup, a refused request) and carry the
// paths and names an operator needs; their size costs nothing measurable.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod agents;
pub mod api;
pub mod check;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod events;
pub mod example_agent;
#[doc(hidden)]
pub mod fuzzing;
pub mod harness;
pub mod launcher;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod pki;
pub mod runtime;
pub mod signals;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod transport;

/// The git commit the binary was built from, when the build could tell (node/build.rs).
pub const GIT_COMMIT: Option<&str> = option_env!("VIGIL_GIT_COMMIT");

/// `vigil --version`: the build, the wire protocol versions it speaks (`wire protocol
/// 1`, or `wire protocol 1 to 2` for a build that speaks two) and, when known, the
/// commit. Nodes of different builds interoperate as long as their wire versions
/// overlap (docs/OPERATIONS.md, "Upgrades").
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        let commit = GIT_COMMIT.map_or(String::new(), |c| format!(", commit {c}"));
        format!(
            "{} (wire protocol {}{commit})",
            env!("CARGO_PKG_VERSION"),
            vigil_protocol::wire::WireVersions::DEFAULT
        )
    })
}
