//! `memberlist-node`: the Rust port of HashiCorp memberlist (crates.io `memberlist`)
//! with `Options::lan()`, over its net transport (UDP for packets, TCP for push/pull
//! and fallback pings) on tokio, a peer for the cluster bench.
//!
//! Nothing is tuned: `Options::lan()` as is (no label, checksum, compression or
//! encryption: the crate's LAN defaults set none), the transport's default
//! options with this node's id and bind address.
//!
//! Membership events: the event delegate's `notify_join` is `member_joined` and
//! `notify_leave` is `member_down` (`member_left` for a node that left). memberlist
//! has a suspect state but no notification for it; the one place a suspicion
//! starts is the prober whose direct and indirect probes all failed, which logs
//! "suspecting has failed, no acks received" (tracing, info) just before it marks
//! the target suspect. A tracing layer turns that line into `member_suspected`, so
//! the first suspicion of a member is seen, while suspicions learned by gossip are
//! not (those are never the first).
//!
//! Traffic: the transport is wrapped. Sent: every UDP datagram (bytes and one
//! packet each) and every message written to a TCP stream (payload bytes, no
//! packets: segments are not seen). Received: every UDP datagram; TCP bytes read
//! are not counted (the core reads the streams directly), so received figures miss
//! the push/pull replies.
//!
//! Output: the NDJSON lines of [`vigil_benches::peer`]. Diagnostics go to stderr.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use memberlist::agnostic_lite::RuntimeLite;
use memberlist::delegate::{CompositeDelegate, EventDelegate};
use memberlist::net::NetTransportOptions;
use memberlist::proto::{MaybeResolvedAddress, NodeState, Payload, State};
use memberlist::transport::{
    AddressResolver, Connection, PacketSubscriber, StreamSubscriber, Transport, packet_stream,
};
use memberlist::{Memberlist, Options};
use smol_str::SmolStr;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use vigil_benches::peer::{self, Counters, emit_event};

type Inner = memberlist::tokio::TokioNetTransport<
    SmolStr,
    memberlist::tokio::TokioSocketAddrResolver,
    memberlist::tokio::TokioTcp,
>;
type Delegate = CompositeDelegate<
    SmolStr,
    SocketAddr,
    memberlist::delegate::VoidDelegate<SmolStr, SocketAddr>,
    memberlist::delegate::VoidDelegate<SmolStr, SocketAddr>,
    Events,
>;

const STATS_EVERY: Duration = Duration::from_secs(1);
const JOIN_RETRY: Duration = Duration::from_secs(1);
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Queue between the transport's packet reader and the memberlist core, as deep
/// as the net transport's own default packet buffer.
const PACKET_QUEUE: usize = 100;
/// The line memberlist logs when a probe failed and it marks the target suspect.
const SUSPECT_LINE: &str = "memberlist.state: suspecting has failed, no acks received";

#[derive(Parser, Debug)]
#[command(
    name = "memberlist-node",
    about = "memberlist (Rust port) with Options::lan() over its TCP/UDP net transport (benchmark peer)"
)]
struct Args {
    #[command(flatten)]
    node: peer::NodeArgs,
}

/// Options of [`Counted`]: the inner transport's, and where to count.
struct CountedOptions<O> {
    inner: O,
    counters: Arc<Counters>,
}

/// A transport that counts what the inner one sends and receives.
struct Counted<T: Transport> {
    inner: T,
    counters: Arc<Counters>,
    packets: PacketSubscriber<T::ResolvedAddress, <T::Runtime as RuntimeLite>::Instant>,
}

impl<T: Transport> Transport for Counted<T> {
    type Error = T::Error;
    type Id = T::Id;
    type Address = T::Address;
    type ResolvedAddress = T::ResolvedAddress;
    type Resolver = T::Resolver;
    type Connection = T::Connection;
    type Runtime = T::Runtime;
    type Options = CountedOptions<T::Options>;

    async fn new(options: Self::Options) -> Result<Self, Self::Error> {
        let inner = T::new(options.inner).await?;
        // Received packets pass through a counting relay on their way to the core.
        let upstream = inner.packet();
        let (producer, packets) = packet_stream::<Self>(PACKET_QUEUE);
        let counters = options.counters.clone();
        tokio::spawn(async move {
            while let Ok(packet) = upstream.recv().await {
                counters.received(packet.payload().len(), 1);
                if producer.send(packet).await.is_err() {
                    break;
                }
            }
        });
        Ok(Counted {
            inner,
            counters: options.counters,
            packets,
        })
    }

    async fn resolve(
        &self,
        addr: &<Self::Resolver as AddressResolver>::Address,
    ) -> Result<Self::ResolvedAddress, Self::Error> {
        self.inner.resolve(addr).await
    }

    fn local_id(&self) -> &Self::Id {
        self.inner.local_id()
    }

    fn local_address(&self) -> &<Self::Resolver as AddressResolver>::Address {
        self.inner.local_address()
    }

    fn advertise_address(&self) -> &Self::ResolvedAddress {
        self.inner.advertise_address()
    }

    fn max_packet_size(&self) -> usize {
        self.inner.max_packet_size()
    }

    fn header_overhead(&self) -> usize {
        self.inner.header_overhead()
    }

    fn blocked_address(&self, addr: &Self::ResolvedAddress) -> Result<(), Self::Error> {
        self.inner.blocked_address(addr)
    }

    async fn read(
        &self,
        from: &Self::ResolvedAddress,
        conn: &mut <Self::Connection as Connection>::Reader,
    ) -> Result<usize, Self::Error> {
        self.inner.read(from, conn).await
    }

    async fn write(
        &self,
        conn: &mut <Self::Connection as Connection>::Writer,
        payload: Payload,
    ) -> Result<usize, Self::Error> {
        let n = self.inner.write(conn, payload).await?;
        self.counters.sent(n, 0);
        Ok(n)
    }

    async fn send_to(
        &self,
        addr: &Self::ResolvedAddress,
        packet: Payload,
    ) -> Result<(usize, <Self::Runtime as RuntimeLite>::Instant), Self::Error> {
        let (n, at) = self.inner.send_to(addr, packet).await?;
        self.counters.sent(n, 1);
        Ok((n, at))
    }

    async fn open(
        &self,
        addr: &Self::ResolvedAddress,
        deadline: <Self::Runtime as RuntimeLite>::Instant,
    ) -> Result<Self::Connection, Self::Error> {
        self.inner.open(addr, deadline).await
    }

    fn packet(
        &self,
    ) -> PacketSubscriber<Self::ResolvedAddress, <Self::Runtime as RuntimeLite>::Instant> {
        self.packets.clone()
    }

    fn stream(&self) -> StreamSubscriber<Self::ResolvedAddress, Self::Connection> {
        self.inner.stream()
    }

    fn packet_reliable(&self) -> bool {
        self.inner.packet_reliable()
    }

    fn packet_secure(&self) -> bool {
        self.inner.packet_secure()
    }

    fn stream_secure(&self) -> bool {
        self.inner.stream_secure()
    }

    async fn shutdown(&self) -> Result<(), Self::Error> {
        self.inner.shutdown().await
    }
}

/// memberlist's join and leave notifications as event lines, except those about
/// this node itself (memberlist announces its own join while it is created, before
/// the ready line, which must come first).
struct Events {
    local: SmolStr,
}

impl EventDelegate for Events {
    type Id = SmolStr;
    type Address = SocketAddr;

    async fn notify_join(&self, node: Arc<NodeState<SmolStr, SocketAddr>>) {
        if *node.id() == self.local {
            return;
        }
        if let Err(e) = emit_event("member_joined", node.id()) {
            eprintln!("memberlist-node: stdout: {e}");
        }
    }

    async fn notify_leave(&self, node: Arc<NodeState<SmolStr, SocketAddr>>) {
        if *node.id() == self.local {
            return;
        }
        let kind = if node.state() == State::Left {
            "member_left"
        } else {
            "member_down"
        };
        if let Err(e) = emit_event(kind, node.id()) {
            eprintln!("memberlist-node: stdout: {e}");
        }
    }

    async fn notify_update(&self, _node: Arc<NodeState<SmolStr, SocketAddr>>) {}
}

/// Turns memberlist's "suspecting has failed" log line into `member_suspected`.
struct SuspectLayer;

#[derive(Default)]
struct SuspectFields {
    message: bool,
    remote: Option<String>,
}

impl tracing::field::Visit for SuspectFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" && value == SUSPECT_LINE {
            self.message = true;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message |= format!("{value:?}") == SUSPECT_LINE,
            "remote" => self.remote = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for SuspectLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::INFO || !meta.target().starts_with("memberlist") {
            return;
        }
        let mut fields = SuspectFields::default();
        event.record(&mut fields);
        if let (true, Some(remote)) = (fields.message, fields.remote)
            && let Err(e) = emit_event("member_suspected", remote.trim_matches('"'))
        {
            eprintln!("memberlist-node: stdout: {e}");
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let counters = Arc::new(Counters::default());
    let mut transport = NetTransportOptions::<
        SmolStr,
        memberlist::tokio::TokioSocketAddrResolver,
        memberlist::tokio::TokioTcp,
    >::new(SmolStr::new(&args.node.name));
    transport.add_bind_address(args.node.bind);
    let options = CountedOptions {
        inner: transport,
        counters: counters.clone(),
    };
    let delegate: Delegate = CompositeDelegate::default().with_event_delegate(Events {
        local: SmolStr::new(&args.node.name),
    });
    let memberlist: Memberlist<Counted<Inner>, Delegate> =
        Memberlist::with_delegate(delegate, options, Options::lan())
            .await
            .map_err(|e| format!("memberlist: {e}"))?;
    let addr = *memberlist.advertise_address();
    let seeds: Vec<peer::Seed> = args.node.other_seeds().cloned().collect();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    peer::emit_ready(&args.node.name, addr)?;

    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut join_tick = tokio::time::interval(JOIN_RETRY);
    join_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut joined = seeds.is_empty();
    loop {
        tokio::select! {
            _ = stats_tick.tick() => {
                let live = memberlist.num_online_members().await;
                counters.emit_stats(live)?;
            },
            _ = join_tick.tick(), if !joined => {
                for seed in &seeds {
                    match memberlist.join(MaybeResolvedAddress::Resolved(seed.addr)).await {
                        Ok(_) => joined = true,
                        Err(e) => eprintln!("memberlist-node: join {}: {e}", seed.addr),
                    }
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    if let Err(e) = memberlist.leave(LEAVE_TIMEOUT).await {
        eprintln!("memberlist-node: leave: {e}");
    }
    let live = memberlist.num_online_members().await;
    if let Err(e) = memberlist.shutdown().await {
        eprintln!("memberlist-node: shutdown: {e}");
    }
    counters.emit_stats(live)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    // Warnings and errors to stderr (RUST_LOG overrides); memberlist's info lines
    // reach the suspicion layer whatever the filter says about stderr.
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::registry()
        // Only memberlist's info and more severe lines reach the layer, so its
        // debug and trace lines are not even formatted.
        .with(
            SuspectLayer.with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("memberlist_core", tracing::Level::INFO),
            ),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(stderr_filter),
        )
        .try_init()?;
    peer::block_on_one_thread(run(args))
}
