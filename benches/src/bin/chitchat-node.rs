//! `chitchat-node`: quickwit's chitchat (scuttlebutt gossip, phi-accrual failure
//! detector) over its own UDP transport, a peer for the cluster bench.
//!
//! Configuration: chitchat's defaults. The crate ships no public `Default` for
//! `ChitchatConfig`; the values here are those of its own (test-only) `Default`
//! impl: gossip every second, `FailureDetectorConfig::default()` (phi threshold 8,
//! window 1000, max interval 10 s, initial interval 5 s, dead grace 24 h), 15 min
//! tombstone grace, protocol version V0 (the crate says it must stay V0 until every
//! node can decode V1). Only the node id, listen address and seeds are set.
//!
//! Membership events: chitchat has no suspicion; its watch of live nodes changes
//! when the failure detector (re-evaluated once per gossip round) adds or drops a
//! node. A node entering the live set is `member_joined` (`member_restarted` under
//! a new generation), one leaving it `member_down`, stamped when this process sees
//! the change.
//!
//! Traffic: the UDP transport is wrapped so every datagram chitchat sends or
//! receives is counted with the byte count chitchat reports for it (payload bytes,
//! one datagram each). Datagrams chitchat's transport drops as undecodable are not
//! counted.
//!
//! Output: the NDJSON lines of [`vigil_benches::peer`]. Diagnostics go to stderr.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;
use vigil_benches::peer::{self, Counters, emit_event, unix_ms};

const STATS_EVERY: Duration = Duration::from_secs(1);
/// The gossip interval of chitchat's own `Default` config.
const GOSSIP_INTERVAL: Duration = Duration::from_secs(1);
/// The tombstone grace period of chitchat's own `Default` config.
const DELETION_GRACE: Duration = Duration::from_secs(15 * 60);
/// How often to try a fresh port if the one picked was taken meanwhile.
const BIND_ATTEMPTS: usize = 5;

#[derive(Parser, Debug)]
#[command(
    name = "chitchat-node",
    about = "chitchat with its default configuration over its UDP transport (benchmark peer)"
)]
struct Args {
    #[command(flatten)]
    node: peer::NodeArgs,
}

/// chitchat's UDP transport, counting what goes through it.
struct CountingTransport {
    counters: Arc<Counters>,
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    counters: Arc<Counters>,
}

#[async_trait]
impl Transport for CountingTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(CountingSocket {
            inner,
            counters: self.counters.clone(),
        }))
    }
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        self.counters.sent(outcome.num_bytes_sent, 1);
        Ok(outcome)
    }

    // Cancellation-safe as the inner `recv` is: counting happens after it returned.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        self.counters.received(outcome.num_bytes_received, 1);
        Ok(outcome)
    }
}

/// A free UDP port on `bind`'s address: chitchat's id must carry the advertised
/// address before its socket is opened, so port 0 cannot be resolved by it.
fn pick_port(bind: SocketAddr) -> std::io::Result<SocketAddr> {
    if bind.port() != 0 {
        return Ok(bind);
    }
    std::net::UdpSocket::bind(bind)?.local_addr()
}

/// Reports the difference between two views (name -> generation) as events.
fn report_changes(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> std::io::Result<()> {
    for (name, generation) in after {
        match before.get(name) {
            None => emit_event("member_joined", name)?,
            Some(g) if g != generation => emit_event("member_restarted", name)?,
            Some(_) => {}
        }
    }
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        emit_event("member_down", name)?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    if args.node.bind.ip().is_unspecified() {
        return Err(format!(
            "{} is a wildcard address; bind a reachable one",
            args.node.bind
        )
        .into());
    }
    let counters = Arc::new(Counters::default());
    let transport = CountingTransport {
        counters: counters.clone(),
    };
    let generation = unix_ms();
    let seed_nodes: Vec<String> = args
        .node
        .other_seeds()
        .map(|s| s.addr.to_string())
        .collect();
    let mut attempt = 0;
    let (handle, addr) = loop {
        attempt += 1;
        let addr = pick_port(args.node.bind)?;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(args.node.name.as_str(), generation, addr),
            cluster_id: "vigil-bench".to_string(),
            gossip_interval: GOSSIP_INTERVAL,
            listen_addr: addr,
            seed_nodes: seed_nodes.clone(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: DELETION_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        match spawn_chitchat(config, Vec::new(), &transport).await {
            Ok(handle) => break (handle, addr),
            // Another process took the port between picking and binding.
            Err(e) if attempt < BIND_ATTEMPTS && args.node.bind.port() == 0 => {
                eprintln!("chitchat-node: {e:#}; trying another port");
            }
            Err(e) => return Err(format!("{e:#}").into()),
        }
    };

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut watcher = handle.chitchat().lock().await.live_nodes_watcher();
    peer::emit_ready(&args.node.name, addr)?;

    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut view: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tokio::select! {
            changed = watcher.changed() => {
                if changed.is_err() {
                    eprintln!("chitchat-node: chitchat stopped");
                    break;
                }
                let next: BTreeMap<String, u64> = watcher
                    .borrow_and_update()
                    .keys()
                    .filter(|id| *id.node_id != *args.node.name)
                    .map(|id| (id.node_id.to_string(), id.generation_id))
                    .collect();
                report_changes(&view, &next)?;
                view = next;
            },
            _ = stats_tick.tick() => counters.emit_stats(view.len() + 1)?,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if let Err(e) = handle.shutdown().await {
        eprintln!("chitchat-node: shutdown: {e:#}");
    }
    counters.emit_stats(view.len() + 1)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    // chitchat's server and this loop share the one thread.
    peer::block_on_one_thread(run(Args::parse()))
}
