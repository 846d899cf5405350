//! `udp-node`: vigil's membership core over plain UDP, for measuring what QUIC and
//! TLS cost.
//!
//! It runs the same `vigil_protocol::Core` with the same profile (and so the same foca
//! configuration) as the `vigil` node, but sends each envelope as one unencrypted,
//! unauthenticated UDP datagram. Only benchmarks should run it.
//!
//! # Framing
//!
//! ```text
//! datagram:  envelope
//! ```
//!
//! Each datagram is exactly the vigil wire envelope the core produced, byte for byte
//! what a vigil node puts into a QUIC datagram, so the two transports carry the same
//! payload and the byte counts compare the transports alone. The receiver learns the
//! claimed sender from the SWIM header inside the envelope
//! ([`vigil_protocol::peek_sender`]) and hands the core that name. The claim is not a
//! proof: without TLS, anyone who can reach the socket can speak for any member.
//!
//! # Output
//!
//! NDJSON on stdout, one object per line, flushed per line:
//!
//! - `{"type":"ready","name":..,"addr":"ip:port","t_ms":..}` once, after binding;
//! - `{"type":"event","t_ms":..,"event":..,"member":..,"generation":..}` for every
//!   core event (`member` is absent for events about the local node; `incarnation`
//!   and `previous_generation` appear where the event has them);
//! - `{"type":"stats","t_ms":..,"tx_bytes":..,...,"live":..}` every second and once
//!   more on exit, with cumulative counters.
//!
//! `t_ms` is Unix time in milliseconds. Diagnostics go to stderr.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};
use vigil_benches::cluster::systems::unix_ms;
use vigil_protocol::wire::MAX_DATAGRAM_LEN;
use vigil_protocol::{
    Core, Effect, Event, LocalState, NodeId, NodeName, Profile, Zone, peek_sender,
};

/// Large enough for the largest acceptable datagram with room to spare, so that a
/// datagram the kernel truncated to this size is recognised as oversized.
const RECV_BUF_LEN: usize = 2048;
const _: () = assert!(MAX_DATAGRAM_LEN < RECV_BUF_LEN);

const JOIN_RETRY: Duration = Duration::from_secs(1);
const STATS_EVERY: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "udp-node",
    about = "vigil's membership core over plain UDP (benchmark baseline; no encryption, no authentication)"
)]
struct Args {
    /// This node's name (a DNS label: a-z, 0-9, '-').
    #[arg(long)]
    name: NodeName,
    /// This node's zone label.
    #[arg(long, default_value = "default")]
    zone: Zone,
    /// Address to bind; port 0 picks a free port (reported in the `ready` line).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Address peers use to reach this node. Defaults to the bound address, which
    /// must then not be a wildcard such as 0.0.0.0.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A member to join through, as NAME@ADDR. Repeatable.
    #[arg(long = "seed", value_name = "NAME@ADDR", value_parser = parse_seed)]
    seeds: Vec<Seed>,
    /// Failure-detection profile.
    #[arg(long, default_value = "lan")]
    profile: Profile,
    /// Seed of the core's random choices; drawn from the OS if absent.
    #[arg(long)]
    rng_seed: Option<u64>,
}

/// A seed member. Its name must be known up front: the core addresses members by
/// name, and without certificates there is no other way to learn it.
#[derive(Debug, Clone)]
struct Seed {
    name: NodeName,
    addr: SocketAddr,
}

fn parse_seed(s: &str) -> Result<Seed, String> {
    let (name, addr) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} is not NAME@ADDR"))?;
    let name = NodeName::new(name).map_err(|e| format!("seed name {name:?} {e}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("seed address {addr:?}: {e}"))?;
    Ok(Seed { name, addr })
}

/// Cumulative counters, reported in every `stats` line. Byte counts are UDP payload
/// bytes (the envelopes themselves).
#[derive(Debug, Default, Serialize)]
struct Counters {
    tx_bytes: u64,
    tx_packets: u64,
    rx_bytes: u64,
    rx_packets: u64,
    /// Received datagrams refused by the core (or by the sender lookup before it).
    rx_errors: u64,
    /// `rx_errors` by cause (the core's `InputError::kind`).
    rx_error_kinds: BTreeMap<&'static str, u64>,
    /// Received datagrams over the size limit, never decoded.
    rx_dropped: u64,
    /// Envelopes too large for one datagram (vigil would use a stream), not sent.
    tx_dropped: u64,
    /// Failed `send_to` calls.
    tx_errors: u64,
    /// Failed `recv_from` calls.
    recv_errors: u64,
    /// Errors foca reported from timers (a driver bug if ever non-zero).
    timer_errors: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Ready {
        name: &'a str,
        addr: SocketAddr,
        t_ms: u64,
    },
    Event {
        t_ms: u64,
        event: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        member: Option<&'a str>,
        generation: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_generation: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        incarnation: Option<u16>,
    },
    Stats {
        t_ms: u64,
        #[serde(flatten)]
        counters: &'a Counters,
        live: usize,
    },
}

/// Writes one NDJSON line and flushes it, so that a reader sees events as they
/// happen rather than when a buffer fills.
fn emit(line: &Line<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn emit_event(event: &Event, local: &NodeId) -> io::Result<()> {
    // Names come from the protocol, so this node and vigil report the same ones.
    let name = event.kind();
    let member = if name.starts_with("member_") {
        event.member()
    } else {
        None
    };
    let previous_generation = event.previous_generation();
    let incarnation = event.incarnation();
    let generation = match event {
        Event::LocalActive { identity } | Event::LocalRejoined { identity, .. } => {
            identity.generation
        }
        _ => member.map_or(local.generation, |m| m.generation),
    };
    emit(&Line::Event {
        t_ms: unix_ms(),
        event: name,
        member: member.map(|m| m.name.as_str()),
        generation,
        previous_generation,
        incarnation,
    })
}

/// Everything the owner task mutates, apart from the socket and timers.
struct Node {
    core: Core,
    /// Core time zero.
    origin: Instant,
    counters: Counters,
}

impl Node {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn emit_stats(&self) -> io::Result<()> {
        emit(&Line::Stats {
            t_ms: unix_ms(),
            counters: &self.counters,
            live: self.core.live_count(),
        })
    }

    fn count_rx_error(&mut self, kind: &'static str) {
        self.counters.rx_errors += 1;
        *self.counters.rx_error_kinds.entry(kind).or_default() += 1;
    }

    fn on_datagram(&mut self, datagram: &[u8]) {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += datagram.len() as u64;
        if datagram.len() > MAX_DATAGRAM_LEN {
            self.counters.rx_dropped += 1;
            return;
        }
        // Nothing authenticates the sender here, so the core is told whoever the
        // SWIM header claims; `handle_datagram` then finds the claim consistent.
        let from = match peek_sender(datagram) {
            Ok(name) => name,
            Err(e) => {
                self.count_rx_error(e.kind());
                return;
            }
        };
        let now = self.now();
        if let Err(e) = self.core.handle_datagram(now, &from, datagram) {
            self.count_rx_error(e.kind());
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now();
        let errors = self.core.handle_timeout(now);
        self.counters.timer_errors += errors.len() as u64;
    }

    fn announce(&mut self, seeds: &[Seed], zone: &Zone) {
        for seed in seeds {
            // The seed's zone and generation are unknown until it answers; the core
            // accepts placeholders.
            let id = NodeId::new(seed.name.clone(), seed.addr, zone.clone(), 0);
            let now = self.now();
            if let Err(e) = self.core.announce(now, id) {
                eprintln!("udp-node: announce to {}@{}: {e}", seed.name, seed.addr);
            }
        }
    }

    /// Carries out every effect the core has queued. Sends are awaited one by one, so
    /// when this returns every datagram has been handed to the kernel.
    async fn drain(&mut self, socket: &UdpSocket) -> io::Result<()> {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Send { to, envelope } => {
                    if envelope.len() > MAX_DATAGRAM_LEN {
                        self.counters.tx_dropped += 1;
                        continue;
                    }
                    match socket.send_to(&envelope, to.addr).await {
                        Ok(n) => {
                            self.counters.tx_packets += 1;
                            self.counters.tx_bytes += n as u64;
                        }
                        Err(_) => self.counters.tx_errors += 1,
                    }
                }
                Effect::Event(event) => emit_event(&event, self.core.identity())?,
            }
        }
        Ok(())
    }
}

fn os_random_u64() -> Result<u64, Box<dyn Error>> {
    use rand::TryRng;
    Ok(rand::rngs::SysRng.try_next_u64()?)
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let socket = UdpSocket::bind(args.bind).await?;
    let addr = match args.advertise {
        Some(addr) => addr,
        None => {
            let bound = socket.local_addr()?;
            if bound.ip().is_unspecified() {
                return Err(format!(
                    "bound to the wildcard address {bound}; peers cannot reach that, so pass --advertise"
                )
                .into());
            }
            bound
        }
    };
    let rng_seed = match args.rng_seed {
        Some(seed) => seed,
        None => os_random_u64()?,
    };
    let generation = unix_ms();
    let identity = NodeId::new(args.name.clone(), addr, args.zone.clone(), generation);
    let mut node = Node {
        core: Core::new(identity, args.profile, rng_seed),
        origin: Instant::now(),
        counters: Counters::default(),
    };
    // A node listed among its own seeds (one seed list shared by a whole cluster)
    // simply has nobody to announce to there.
    let seeds: Vec<Seed> = args
        .seeds
        .into_iter()
        .filter(|s| s.name != args.name)
        .collect();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    emit(&Line::Ready {
        name: args.name.as_str(),
        addr,
        t_ms: unix_ms(),
    })?;

    let mut buf = vec![0u8; RECV_BUF_LEN];
    let timer = tokio::time::sleep_until(node.origin);
    tokio::pin!(timer);
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut join_tick = tokio::time::interval(JOIN_RETRY);
    join_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    // Re-arming costs a timer-wheel update; skip it when the deadline is unchanged,
    // which it is after most datagrams.
    let mut armed = None;
    loop {
        let deadline = node.core.poll_timeout();
        if let Some(due) = deadline
            && armed != Some(due)
        {
            timer.as_mut().reset(node.origin + due);
            armed = Some(due);
        }
        // An isolated node keeps asking its seeds too: they may be the only members
        // it can still reach after a partition heals.
        let joining = !seeds.is_empty()
            && matches!(
                node.core.local_state(),
                LocalState::Joining | LocalState::Isolated
            );
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, _from)) => node.on_datagram(&buf[..n]),
                Err(_) => node.counters.recv_errors += 1,
            },
            () = &mut timer, if deadline.is_some() => node.on_timeout(),
            _ = stats_tick.tick() => node.emit_stats()?,
            _ = join_tick.tick(), if joining => node.announce(&seeds, &args.zone),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        node.drain(&socket).await?;
    }

    let now = node.now();
    if let Err(e) = node.core.leave(now) {
        eprintln!("udp-node: leave: {e}");
    }
    node.drain(&socket).await?;
    node.emit_stats()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    vigil_benches::peer::block_on_one_thread(run(Args::parse()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_bare_envelopes_that_name_their_sender() {
        // What the core sends is what goes on the wire, and the receiver recovers the
        // sender from it alone.
        let id = |name: &str, port: u16| {
            NodeId::new(
                NodeName::new(name).unwrap(),
                ([127, 0, 0, 1], port).into(),
                Zone::new("z1").unwrap(),
                1,
            )
        };
        let mut core = Core::new(id("n2", 7002), Profile::Lan, 7);
        core.announce(Duration::ZERO, id("n1", 7001)).unwrap();
        let envelope = std::iter::from_fn(|| core.poll_effect())
            .find_map(|e| match e {
                Effect::Send { envelope, .. } => Some(envelope),
                Effect::Event(_) => None,
            })
            .unwrap();
        assert_eq!(&envelope[..2], b"VG");
        assert_eq!(peek_sender(&envelope).unwrap().as_str(), "n2");
    }

    #[test]
    fn seeds_parse_as_name_at_address() {
        let seed = parse_seed("n1@127.0.0.1:7000").unwrap();
        assert_eq!(seed.name.as_str(), "n1");
        assert_eq!(seed.addr, "127.0.0.1:7000".parse().unwrap());
        assert!(parse_seed("127.0.0.1:7000").is_err());
        assert!(parse_seed("N1@127.0.0.1:7000").is_err());
        assert!(parse_seed("n1@nowhere").is_err());
    }

    #[test]
    fn event_lines_have_the_documented_shape() {
        let line = Line::Event {
            t_ms: 5,
            event: "member_joined",
            member: Some("n2"),
            generation: 9,
            previous_generation: None,
            incarnation: None,
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"type":"event","t_ms":5,"event":"member_joined","member":"n2","generation":9}"#
        );
        let counters = Counters::default();
        let stats = serde_json::to_value(Line::Stats {
            t_ms: 1,
            counters: &counters,
            live: 3,
        })
        .unwrap();
        assert_eq!(stats["type"], "stats");
        assert_eq!(stats["live"], 3);
        assert_eq!(stats["tx_bytes"], 0);
        assert!(stats.get("prefix_bytes_tx").is_none());
    }

    #[test]
    fn cli_parses() {
        let args = Args::try_parse_from([
            "udp-node",
            "--name",
            "n2",
            "--zone",
            "az1",
            "--seed",
            "n1@127.0.0.1:7000",
            "--seed",
            "n3@[::1]:7001",
            "--profile",
            "wan",
            "--rng-seed",
            "42",
        ])
        .unwrap();
        assert_eq!(args.seeds.len(), 2);
        assert_eq!(args.profile, Profile::Wan);
        assert_eq!(args.rng_seed, Some(42));
        assert!(Args::try_parse_from(["udp-node", "--name", "n1", "--profile", "x"]).is_err());
    }
}
