//! What the peer binaries (`foca-lan`, `chitchat-node`, `memberlist-node`) share:
//! the NDJSON lines the cluster bench reads from udp-node, cumulative traffic
//! counters, and the `NAME@ADDR` seed syntax.
//!
//! Lines, one JSON object each, flushed per line (same shape as udp-node's):
//!
//! - `{"type":"ready","name":..,"addr":"ip:port","t_ms":..}` once, after binding;
//! - `{"type":"event","t_ms":..,"event":..,"member":..}` with `event` one of
//!   `member_joined`, `member_suspected`, `member_refuted`, `member_restarted`,
//!   `member_down`, `member_left`;
//! - `{"type":"stats","t_ms":..,"tx_bytes":..,"tx_packets":..,"rx_bytes":..,
//!   "rx_packets":..,"live":..}` every second and once more on exit.
//!
//! `t_ms` is Unix time in milliseconds.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

pub use crate::cluster::systems::unix_ms;

/// The flags every peer binary takes: the harness starts every system with the same
/// ones (`benches/src/cluster/systems.rs`).
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// This node's name (its id, for the peers that have one).
    #[arg(long)]
    pub name: String,
    /// Ignored (accepted so the harness passes every system the same flags).
    #[arg(long, default_value = "default")]
    pub zone: String,
    /// Address to bind; port 0 picks a free port (reported in the `ready` line).
    /// memberlist binds TCP and UDP there.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// A member to join through, as NAME@ADDR (chitchat and memberlist use the
    /// address only). Repeatable.
    #[arg(long = "seed", value_name = "NAME@ADDR", value_parser = parse_seed)]
    pub seeds: Vec<Seed>,
}

impl NodeArgs {
    /// The seeds other than this node (the harness passes every node the same list).
    pub fn other_seeds(&self) -> impl Iterator<Item = &Seed> {
        self.seeds.iter().filter(|s| s.name != self.name)
    }
}

/// Runs a node's main future on one thread, as a vigil node's owner task runs, so
/// CPU figures compare the systems rather than thread-pool overheads.
pub fn block_on_one_thread<T>(
    node: impl std::future::Future<Output = Result<T, Box<dyn std::error::Error>>>,
) -> Result<T, Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(node)
}

/// Writes one line and flushes it, so the harness sees events as they happen.
fn emit(line: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    out.write_all(b"\n")?;
    out.flush()
}

pub fn emit_ready(name: &str, addr: SocketAddr) -> io::Result<()> {
    emit(&json!({"type": "ready", "name": name, "addr": addr, "t_ms": unix_ms()}))
}

/// A membership event about `member`, stamped now.
pub fn emit_event(event: &str, member: &str) -> io::Result<()> {
    emit(&json!({"type": "event", "t_ms": unix_ms(), "event": event, "member": member}))
}

/// Cumulative traffic counters, shared between the tasks that send and receive
/// (the crates under test run their own tasks), hence atomics.
#[derive(Debug, Default)]
pub struct Counters {
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
}

impl Counters {
    /// `packets` may be 0 for bytes written to a stream (segments are not seen).
    pub fn sent(&self, bytes: usize, packets: u64) {
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
    }

    pub fn received(&self, bytes: usize, packets: u64) {
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
    }

    pub fn emit_stats(&self, live: usize) -> io::Result<()> {
        emit(&json!({
            "type": "stats",
            "t_ms": unix_ms(),
            "tx_bytes": self.tx_bytes.load(Ordering::Relaxed),
            "tx_packets": self.tx_packets.load(Ordering::Relaxed),
            "rx_bytes": self.rx_bytes.load(Ordering::Relaxed),
            "rx_packets": self.rx_packets.load(Ordering::Relaxed),
            "live": live,
        }))
    }
}

/// A seed as `NAME@ADDR` (the harness passes every system the same syntax; systems
/// that address members by address alone ignore the name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub name: String,
    pub addr: SocketAddr,
}

pub fn parse_seed(s: &str) -> Result<Seed, String> {
    let (name, addr) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} is not NAME@ADDR"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty name"));
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("seed address {addr:?}: {e}"))?;
    Ok(Seed {
        name: name.to_string(),
        addr,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn seeds_parse_as_name_at_address() {
        let seed = parse_seed("n1@127.0.0.1:7000").unwrap();
        assert_eq!(seed.name, "n1");
        assert_eq!(seed.addr, "127.0.0.1:7000".parse().unwrap());
        assert!(parse_seed("127.0.0.1:7000").is_err());
        assert!(parse_seed("@127.0.0.1:7000").is_err());
        assert!(parse_seed("n1@nowhere").is_err());
    }
}
