//! The QUIC transport: one endpoint on one UDP port, a bounded connection cache, SWIM
//! messages as datagrams and anything larger on unidirectional streams.
//!
//! The owner task holds the [`Transport`] and calls it synchronously; handshakes and
//! reads run in spawned tasks that report back through one bounded channel
//! ([`Inbound`]). Every connection is mutually authenticated; the peer's node name is
//! taken from its certificate and attached to everything it sends.
//!
//! Connection policy (see docs/ARCHITECTURE.md): at most `cache_capacity` peers hold
//! connections; the least recently used peer is closed to make room; a connection
//! with no traffic for `idle_timeout` closes itself. A send to a peer without a
//! connection dials it and queues (boundedly) until the handshake completes. Each
//! peer may have two live connections (one dialed by each side when both dial at
//! once); sends use the newest, and an unused one idles out. Nothing is closed as a
//! "duplicate", so two nodes that dial each other at the same moment never tear down
//! both connections.
//!
//! TLS reload ([`Transport::set_tls`]): new handshakes use the new configurations at
//! once (listener and dialer), and every open connection's peer certificate is checked
//! again against the new trust: those that no longer verify are closed
//! (`close_code::UNTRUSTED`), the others stay. Each connection carries the trust
//! generation it was verified under, so one whose handshake raced with a reload is
//! checked when it is installed.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Connection, ConnectionError, SendDatagramError, UdpPoller, VarInt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Semaphore, mpsc, watch};
use vigil_protocol::wire::{self, WireVersions};
use vigil_protocol::{NodeId, NodeName};

use crate::admission::{Admission, GateLimits, HandshakeGate};
use crate::metrics::{DirectionLabel, Metrics};
use crate::tls::{self, NodeTls};

mod reload;
pub use reload::{ClosedConnection, Reverified};

/// QUIC application close codes.
pub mod close_code {
    pub const SHUTDOWN: u32 = 0;
    pub const EVICTED: u32 = 1;
    pub const REFUSED: u32 = 2;
    pub const SUPERSEDED: u32 = 3;
    /// After a TLS reload, the peer's certificate no longer verifies (revoked, or its
    /// CA no longer trusted); the reason says which.
    pub const UNTRUSTED: u32 = 4;
}

/// Datagrams queued per peer while its handshake runs. Beyond this the oldest is
/// dropped: SWIM tolerates loss, and a peer that cannot be reached must not grow
/// memory.
const DIAL_QUEUE_LIMIT: usize = 32;
/// Stream sends allowed at once; more are dropped and counted.
const MAX_CONCURRENT_STREAM_SENDS: usize = 64;
/// Live connections kept per peer.
const CONNECTIONS_PER_PEER: usize = 2;
/// Datagram buffer per connection and direction.
const DATAGRAM_BUFFER: usize = 64 * 1024;
/// How long a single stream frame may take to arrive or leave.
const STREAM_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub bind: SocketAddr,
    /// Peers that may hold a connection at once.
    pub cache_capacity: usize,
    /// A connection with no traffic for this long closes itself.
    pub idle_timeout: Duration,
    /// Give up on a handshake after this long.
    pub dial_timeout: Duration,
    /// First round-trip estimate, before any sample (handshake retransmission timer).
    pub initial_rtt: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "cannot bind UDP socket {addr}: {source}; check that the address belongs to this host and the port is free (bind)"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("TLS setup: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("QUIC setup: {0}")]
    Setup(String),
}

/// Limits on what replication streams may bring in.
#[derive(Clone)]
pub struct StreamLimits {
    /// Largest snapshot payload accepted after a replication message.
    pub max_payload: u64,
    /// Snapshot bytes held in memory at once, node-wide.
    pub budget: SnapshotBudget,
    /// Stream frame bytes (messages, not payloads) held in memory at once,
    /// node-wide: a frame is read only once its length fits, and the share is
    /// returned when the owner task is done with the message.
    pub frames: SnapshotBudget,
}

/// Stream frame memory, node-wide ([`StreamLimits::frames`]): 128 frames of the
/// largest size, far more than membership and replication keep in flight.
pub const FRAME_MEMORY: u64 = 128 * wire::MAX_STREAM_FRAME_LEN as u64;

/// Snapshot bytes in memory, node-wide: puts waiting for their copies and replicas
/// being received take a share before they read a byte, and give it back when the
/// last reference to the bytes is dropped (after the disk write and every send).
/// When it is used up, the API waits before reading a put's body and stream readers
/// wait before reading a payload, so QUIC flow control slows the senders down instead
/// of memory growing.
#[derive(Clone)]
pub struct SnapshotBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

/// Budget accounting unit (bytes per permit), so a u32 of permits covers terabytes.
const BUDGET_UNIT: u64 = 1024;

impl SnapshotBudget {
    pub fn new(bytes: u64, metrics: &Metrics) -> Self {
        Self::with_gauge(bytes, metrics.snapshot_memory_bytes.clone())
    }

    /// A budget of `bytes` whose use is shown in `gauge`.
    pub fn with_gauge(bytes: u64, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
            gauge,
        }
    }

    /// Waits for room for `len` bytes. A request larger than the whole budget waits
    /// for all of it (one such snapshot at a time).
    pub async fn reserve(&self, len: u64) -> Option<Reservation> {
        let units = u32::try_from(len.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total_units);
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(units)
            .await
            .ok()?;
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        self.gauge.inc_by(len);
        Some(Reservation {
            _permit: permit,
            len,
            gauge: self.gauge.clone(),
        })
    }
}

/// A share of the [`SnapshotBudget`], returned when dropped.
pub struct Reservation {
    _permit: tokio::sync::OwnedSemaphorePermit,
    len: i64,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.dec_by(self.len);
    }
}

impl Reservation {
    /// Ties the reservation to `bytes`: it is returned when the last clone of the
    /// result is dropped.
    pub fn attach(self, bytes: Vec<u8>) -> Bytes {
        Bytes::from_owner(Held {
            bytes,
            _reservation: self,
        })
    }
}

struct Held {
    bytes: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// What the transport's tasks report to the owner task.
pub enum Inbound {
    /// A message (datagram or stream frame) from an authenticated peer.
    Message {
        from: NodeName,
        bytes: Bytes,
    },
    /// A replication message and its payload, from an authenticated peer.
    Repl {
        from: NodeName,
        msg: vigil_protocol::ReplMsg,
        payload: Option<Bytes>,
    },
    /// A connection is up. `seed` is set when it was dialed as a seed, i.e. without
    /// knowing the peer's name in advance.
    Connected {
        name: NodeName,
        conn: Connection,
        dialed_by_us: bool,
        seed: Option<SocketAddr>,
        handshake: Duration,
        /// The trust generation the handshake verified the peer under.
        trust: u64,
        /// The wire version the handshake negotiated (ALPN).
        wire_version: u8,
    },
    DialFailed {
        name: NodeName,
        error: String,
    },
    SeedFailed {
        addr: SocketAddr,
        error: String,
    },
    Closed {
        name: NodeName,
        stable_id: usize,
    },
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inbound::Message { from, bytes } => write!(f, "Message({from}, {} bytes)", bytes.len()),
            Inbound::Repl { from, msg, .. } => write!(f, "Repl({from}, {})", msg.kind()),
            Inbound::Connected { name, seed, .. } => write!(f, "Connected({name}, seed={seed:?})"),
            Inbound::DialFailed { name, error } => write!(f, "DialFailed({name}: {error})"),
            Inbound::SeedFailed { addr, error } => write!(f, "SeedFailed({addr}: {error})"),
            Inbound::Closed { name, .. } => write!(f, "Closed({name})"),
        }
    }
}

/// How a dial to a seed ended.
#[derive(Debug, Clone)]
pub enum SeedOutcome {
    /// The seed answered: announce to it under the name its certificate proves.
    Reached {
        addr: SocketAddr,
        name: NodeName,
    },
    Failed {
        addr: SocketAddr,
        error: String,
    },
}

struct Live {
    conn: Connection,
    dialed_by_us: bool,
    /// What this connection speaks: envelopes of a newer version are transcoded down
    /// before they go out on it.
    wire_version: u8,
    /// Datagram send buffer space with nothing queued (quinn counts some bookkeeping
    /// against the configured size), to tell when everything queued has gone out.
    idle_send_space: usize,
}

enum Peer {
    Dialing { queue: VecDeque<Outgoing> },
    Ready { conns: Vec<Live> },
}

/// A message waiting for a connection.
enum Outgoing {
    /// A SWIM envelope: a datagram when it fits.
    Envelope(Bytes),
    /// A replication message: always its own stream, the frame then the payload.
    Stream {
        frame: Bytes,
        payload: Option<Bytes>,
    },
}

struct Entry {
    peer: Peer,
    last_used: Instant,
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    /// The TLS configurations in use; `trust` counts the reloads.
    tls: NodeTls,
    trust: u64,
    /// What the accept loop hands new incoming connections.
    server_tls: watch::Sender<ServerTls>,
    quic: Arc<quinn::TransportConfig>,
    local_name: NodeName,
    peers: HashMap<NodeName, Entry>,
    config: TransportConfig,
    inbound_tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    stream_sends: Arc<Semaphore>,
    log_limit: Arc<LogLimiter>,
    limits: StreamLimits,
    /// Peers this transport started dialling since the owner last asked
    /// ([`Transport::take_dials_started`]).
    dials_started: Vec<NodeName>,
    wire_versions: WireVersions,
}

/// The listener's configuration and the trust generation it belongs to. Incoming
/// connections are accepted with it explicitly: quinn would otherwise use the
/// configuration of the moment the first packet arrived, possibly one from before a
/// reload.
#[derive(Clone)]
struct ServerTls {
    generation: u64,
    config: Arc<quinn::ServerConfig>,
}

/// Capacity of the channel from the transport's tasks to the owner task.
pub const INBOUND_CAPACITY: usize = 4096;

impl Transport {
    pub fn bind(
        config: TransportConfig,
        tls: &NodeTls,
        local_name: NodeName,
        metrics: Arc<Metrics>,
        limits: StreamLimits,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TransportError> {
        let transport_config = Arc::new(quic_transport_config(&config)?);
        let (server_config, client_config) = quinn_configs(tls, &transport_config)?;
        let (server_tls, accept_tls) = watch::channel(ServerTls {
            generation: 0,
            config: Arc::new(server_config.clone()),
        });

        let socket = bind_udp(config.bind).map_err(|source| TransportError::Bind {
            addr: config.bind,
            source,
        })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Setup("no async runtime found".into()))?;
        let inner = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| TransportError::Bind {
                addr: config.bind,
                source,
            })?;
        let socket = Arc::new(CountingSocket {
            inner,
            metrics: Arc::clone(&metrics),
        });
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config(),
            Some(server_config),
            socket,
            runtime,
        )
        .map_err(|e| TransportError::Setup(e.to_string()))?;

        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let log_limit = Arc::new(LogLimiter::default());
        tokio::spawn(accept_loop(
            endpoint.clone(),
            accept_tls,
            inbound_tx.clone(),
            Arc::clone(&metrics),
            Arc::clone(&log_limit),
            (config.dial_timeout, tls.wire_versions),
            limits.clone(),
        ));
        let transport = Transport {
            endpoint,
            client_config,
            tls: tls.clone(),
            trust: 0,
            server_tls,
            quic: transport_config,
            local_name,
            peers: HashMap::new(),
            config,
            inbound_tx,
            metrics,
            stream_sends: Arc::new(Semaphore::new(MAX_CONCURRENT_STREAM_SENDS)),
            log_limit,
            limits,
            dials_started: Vec::new(),
            wire_versions: tls.wire_versions,
        };
        // The per-version series exist (at 0) before the first connection.
        transport.update_connection_gauge();
        Ok((transport, inbound_rx))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The peers this transport started dialling since the last call; each dial
    /// ends with an [`Inbound::Connected`] or [`Inbound::DialFailed`] naming it.
    pub fn take_dials_started(&mut self) -> Vec<NodeName> {
        std::mem::take(&mut self.dials_started)
    }

    /// Peers currently holding or opening a connection.
    pub fn cached_peers(&self) -> usize {
        self.peers.len()
    }

    /// Sends one envelope to `to`, best effort: over a cached connection, or after a
    /// handshake that this call starts.
    pub fn send(&mut self, to: &NodeId, envelope: Bytes) {
        self.dispatch(to, Outgoing::Envelope(envelope));
    }

    /// Sends a replication message (an encoded, length-prefixed frame) and its
    /// payload on a stream of its own. Waits for stream credit in a task, so a peer
    /// that reads slowly slows its senders down; nothing is dropped for being busy.
    pub fn send_stream(&mut self, to: &NodeId, frame: Bytes, payload: Option<Bytes>) {
        self.dispatch(to, Outgoing::Stream { frame, payload });
    }

    fn dispatch(&mut self, to: &NodeId, out: Outgoing) {
        let now = Instant::now();
        if let Some(entry) = self.peers.get_mut(&to.name) {
            entry.last_used = now;
            match &mut entry.peer {
                Peer::Dialing { queue } => {
                    if queue.len() >= DIAL_QUEUE_LIMIT {
                        queue.pop_front();
                        self.metrics.count_dropped("dial_queue_full");
                    }
                    queue.push_back(out);
                    return;
                }
                Peer::Ready { conns } => {
                    // Newest connection first; drop the ones found dead.
                    while let Some(live) = conns.last() {
                        match send_out(live, &out, &self.metrics, &self.stream_sends) {
                            Ok(()) => return,
                            Err(()) => {
                                conns.pop();
                            }
                        }
                    }
                }
            }
            // Every connection to this peer turned out dead: dial again below.
            self.peers.remove(&to.name);
            self.update_connection_gauge();
        }
        if let Some(why) = self.cannot_reach(to.addr) {
            self.metrics.count_dropped("unreachable_address_family");
            self.log_limit.warn(
                "dial_family",
                format_args!("cannot dial {} at {}: {why}", to.name, to.addr),
            );
            return;
        }
        self.make_room();
        self.peers.insert(
            to.name.clone(),
            Entry {
                peer: Peer::Dialing {
                    queue: VecDeque::from([out]),
                },
                last_used: now,
            },
        );
        let connecting =
            match self
                .endpoint
                .connect_with(self.client_config.clone(), to.addr, to.name.as_str())
            {
                Ok(c) => c,
                Err(e) => {
                    self.peers.remove(&to.name);
                    self.metrics.count_dropped("dial_refused");
                    self.log_limit.warn(
                        "dial",
                        format_args!("cannot dial {} at {}: {e}", to.name, to.addr),
                    );
                    return;
                }
            };
        self.dials_started.push(to.name.clone());
        tokio::spawn(dial(
            connecting,
            Dialed::Node(to.name.clone()),
            self.inbound_tx.clone(),
            Arc::clone(&self.metrics),
            (self.config.dial_timeout, self.trust),
            self.limits.clone(),
            self.wire_versions,
        ));
    }

    /// Dials a seed by address; its name comes from its certificate.
    pub fn dial_seed(&self, addr: SocketAddr) {
        if let Some(error) = self.cannot_reach(addr) {
            let _ = self
                .inbound_tx
                .try_send(Inbound::SeedFailed { addr, error });
            return;
        }
        match self
            .endpoint
            .connect_with(self.client_config.clone(), addr, tls::SEED_SERVER_NAME)
        {
            Ok(connecting) => {
                tokio::spawn(dial(
                    connecting,
                    Dialed::Seed(addr),
                    self.inbound_tx.clone(),
                    Arc::clone(&self.metrics),
                    (self.config.dial_timeout, self.trust),
                    self.limits.clone(),
                    self.wire_versions,
                ));
            }
            Err(e) => {
                let _ = self.inbound_tx.try_send(Inbound::SeedFailed {
                    addr,
                    error: e.to_string(),
                });
            }
        }
    }

    /// Why this node's socket cannot send to `to`, if it cannot: an IPv4 socket
    /// reaches no IPv6 address, and an IPv6 socket bound to a specific address no
    /// IPv4 one (only `[::]` is dual-stack). Said at once, instead of a handshake
    /// that times out.
    fn cannot_reach(&self, to: SocketAddr) -> Option<String> {
        let local = self.endpoint.local_addr().ok()?;
        let is_v4 = |a: SocketAddr| match a {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
        };
        let (family, other) = match (is_v4(local), is_v4(to)) {
            (true, false) => ("IPv4", "IPv6"),
            (false, true) if !local.ip().is_unspecified() => ("IPv6", "IPv4"),
            _ => return None,
        };
        Some(format!(
            "this node is bound to the {family} address {local}, which cannot reach {other} peers; bind [::]:{} to reach both families (docs/OPERATIONS.md, \"IPv6\")",
            local.port()
        ))
    }

    /// Applies a control report from a task. Returns how a seed dial ended, if the
    /// report is about one.
    pub fn on_inbound(&mut self, event: Inbound) -> Option<SeedOutcome> {
        match event {
            Inbound::Message { .. } | Inbound::Repl { .. } => None,
            Inbound::Connected {
                name,
                conn,
                dialed_by_us,
                seed,
                handshake,
                trust,
                wire_version,
            } => {
                let direction = if dialed_by_us { "outbound" } else { "inbound" };
                tracing::debug!(
                    peer = %name,
                    direction,
                    handshake_ms = handshake.as_millis(),
                    wire_version,
                    "connection up"
                );
                self.metrics
                    .connections_opened
                    .get_or_create(&DirectionLabel {
                        direction: direction.into(),
                    })
                    .inc();
                if dialed_by_us {
                    self.metrics
                        .handshake_seconds
                        .observe(handshake.as_secs_f64());
                }
                if name == self.local_name {
                    // A seed list that includes ourselves.
                    conn.close(VarInt::from_u32(close_code::REFUSED), b"self");
                    return None;
                }
                if trust != self.trust
                    && let Err(refusal) =
                        self.tls
                            .verify_peer(conn.peer_identity(), &name, dialed_by_us)
                {
                    // Verified under the trust before a reload that came during the
                    // handshake.
                    self.metrics.count_tls_rejected(refusal.kind());
                    self.log_limit.warn(
                        "reverify_new",
                        format_args!("refused the connection with {name}: {refusal}"),
                    );
                    conn.close(
                        VarInt::from_u32(close_code::UNTRUSTED),
                        refusal.kind().as_bytes(),
                    );
                    let error = refusal.to_string();
                    return seed.map(|addr| SeedOutcome::Failed { addr, error });
                }
                self.install(name.clone(), conn, dialed_by_us, wire_version);
                seed.map(|addr| SeedOutcome::Reached { addr, name })
            }
            Inbound::DialFailed { name, error } => {
                if let Some(Entry {
                    peer: Peer::Dialing { queue },
                    ..
                }) = self.peers.get(&name)
                {
                    for _ in 0..queue.len() {
                        self.metrics.count_dropped("dial_failed");
                    }
                    self.peers.remove(&name);
                }
                self.log_limit.warn(
                    "dial_failed",
                    format_args!("cannot connect to {name}: {error}"),
                );
                None
            }
            Inbound::SeedFailed { addr, error } => {
                self.log_limit.warn(
                    "seed_failed",
                    format_args!("seed {addr} unreachable: {error}"),
                );
                Some(SeedOutcome::Failed { addr, error })
            }
            Inbound::Closed { name, stable_id } => {
                if let Some(entry) = self.peers.get_mut(&name)
                    && let Peer::Ready { conns } = &mut entry.peer
                {
                    conns.retain(|l| l.conn.stable_id() != stable_id);
                    if conns.is_empty() {
                        self.peers.remove(&name);
                    }
                }
                self.update_connection_gauge();
                None
            }
        }
    }

    fn install(&mut self, name: NodeName, conn: Connection, dialed_by_us: bool, wire_version: u8) {
        let idle_send_space = conn.datagram_send_buffer_space();
        let live = Live {
            conn,
            dialed_by_us,
            wire_version,
            idle_send_space,
        };
        match self.peers.get_mut(&name) {
            Some(entry) => {
                entry.last_used = Instant::now();
                match &mut entry.peer {
                    Peer::Dialing { queue } => {
                        let queue = std::mem::take(queue);
                        for out in queue {
                            let _ = send_out(&live, &out, &self.metrics, &self.stream_sends);
                        }
                        entry.peer = Peer::Ready { conns: vec![live] };
                    }
                    Peer::Ready { conns } => {
                        if conns.len() >= CONNECTIONS_PER_PEER {
                            let oldest = conns.remove(0);
                            oldest
                                .conn
                                .close(VarInt::from_u32(close_code::SUPERSEDED), b"superseded");
                        }
                        conns.push(live);
                    }
                }
            }
            None => {
                self.make_room();
                self.peers.insert(
                    name,
                    Entry {
                        peer: Peer::Ready { conns: vec![live] },
                        last_used: Instant::now(),
                    },
                );
            }
        }
        self.update_connection_gauge();
    }

    /// Evicts least recently used peers until one more fits.
    fn make_room(&mut self) {
        while self.peers.len() >= self.config.cache_capacity.max(1) {
            let Some(victim) = self
                .peers
                .iter()
                .min_by(|a, b| (a.1.last_used, a.0).cmp(&(b.1.last_used, b.0)))
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            if let Some(Entry {
                peer: Peer::Ready { conns },
                ..
            }) = self.peers.remove(&victim)
            {
                for live in conns {
                    live.conn
                        .close(VarInt::from_u32(close_code::EVICTED), b"evicted");
                }
            }
            self.metrics.connections_evicted.inc();
        }
    }

    fn update_connection_gauge(&self) {
        let n: usize = self
            .peers
            .values()
            .map(|e| match &e.peer {
                Peer::Ready { conns } => conns.len(),
                Peer::Dialing { .. } => 0,
            })
            .sum();
        self.metrics
            .connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        for version in self.wire_versions.newest_first() {
            let n = self
                .peers
                .values()
                .map(|e| match &e.peer {
                    Peer::Ready { conns } => {
                        conns.iter().filter(|l| l.wire_version == version).count()
                    }
                    Peer::Dialing { .. } => 0,
                })
                .sum::<usize>();
            self.metrics
                .connections_by_wire_version(version)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Whether each cached peer's newest connection was dialed by us (for tests and
    /// diagnostics).
    pub fn peer_directions(&self) -> Vec<(NodeName, bool)> {
        let mut out: Vec<_> = self
            .peers
            .iter()
            .filter_map(|(n, e)| match &e.peer {
                Peer::Ready { conns } => conns.last().map(|l| (n.clone(), l.dialed_by_us)),
                Peer::Dialing { .. } => None,
            })
            .collect();
        out.sort();
        out
    }

    /// No handshake is pending and every connection has sent the datagrams it queued.
    pub fn is_flushed(&self) -> bool {
        self.peers.values().all(|e| match &e.peer {
            Peer::Dialing { .. } => false,
            Peer::Ready { conns } => conns.iter().all(|l| {
                l.conn.close_reason().is_some()
                    || l.conn.datagram_send_buffer_space() >= l.idle_send_space
            }),
        })
    }

    /// Closes every connection and waits (bounded) for the close to reach peers.
    pub async fn shutdown(&mut self, grace: Duration) {
        self.endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        self.peers.clear();
    }
}

/// The endpoint's UDP socket. An IPv6 socket is made dual-stack (IPV6_V6ONLY off,
/// whatever the host's `net.ipv6.bindv6only`), so `[::]:PORT` also serves IPv4 peers
/// (as `::ffff:a.b.c.d`); quinn maps IPv4 destinations the same way when it dials
/// from it.
fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Bounds the connection attempts quinn holds before the accept loop decides on
/// them (quinn's defaults allow 65 536 of them and 100 MiB): the accept loop decides
/// at once (see `admission`), so a short queue is enough, and a flood beyond it is
/// refused by quinn without reaching us.
pub fn limit_incoming(server_config: &mut quinn::ServerConfig) {
    server_config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(MAX_INCOMING as u64 * INCOMING_BUFFER / 8);
}

/// Connection attempts waiting for the accept loop.
const MAX_INCOMING: usize = 1024;
/// Bytes buffered per waiting attempt (its Initial and early packets).
const INCOMING_BUFFER: u64 = 16 * 1024;

/// The listener's and the dialer's quinn configurations. Every setting of either
/// belongs here: a TLS reload rebuilds both from this ([`Transport::set_tls`]).
fn quinn_configs(
    tls: &NodeTls,
    quic: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let mut server = tls.quinn_server_config()?;
    server.transport_config(Arc::clone(quic));
    limit_incoming(&mut server);
    let mut client = tls.quinn_client_config()?;
    client.transport_config(Arc::clone(quic));
    Ok((server, client))
}

/// Endpoint settings: 4-byte connection IDs instead of quinn's 8 save 4 bytes on
/// every packet (a SWIM datagram carries about 60 bytes); a node holds at most a few
/// hundred connections, so 32 random bits keep them apart.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(|| Box::new(quinn_proto::RandomConnectionIdGenerator::new(CID_LEN)));
    config
}

/// Connection ID length, in bytes.
const CID_LEN: usize = 4;

/// The QUIC transport settings of every connection (public for the benchmarks).
pub fn quic_transport_config(
    config: &TransportConfig,
) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| TransportError::Setup(format!("idle timeout: {e}")))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(None)
        .initial_rtt(config.initial_rtt)
        // Bounded per-connection memory: SWIM datagrams are small and frequent; a
        // backlog means the owner is behind, and older datagrams are worth less.
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        // Each replication message is a stream of its own; a sender waits for credit.
        .max_concurrent_uni_streams(VarInt::from_u32(64))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(1024 * 1024))
        .receive_window(VarInt::from_u32(4 * 1024 * 1024))
        .send_window(4 * 1024 * 1024);
    // SWIM packets are capped to fit QUIC's minimum 1200-byte path MTU, so probing for
    // a larger MTU buys nothing; its padded probes were half of a handshake's bytes
    // (docs/BENCHMARKS.md, "what a probe pays on a cold connection").
    t.mtu_discovery_config(None);
    Ok(t)
}

/// Sends one outgoing message on `live`, in its wire version. `Err` means the
/// connection is dead.
fn send_out(
    live: &Live,
    out: &Outgoing,
    metrics: &Arc<Metrics>,
    stream_sends: &Arc<Semaphore>,
) -> Result<(), ()> {
    let conn = &live.conn;
    match out {
        Outgoing::Envelope(envelope) => {
            let Some(envelope) = envelope_for(envelope, live.wire_version) else {
                metrics.count_dropped("not_in_peer_wire_version");
                return Ok(());
            };
            send_on(conn, envelope, metrics, stream_sends)
        }
        Outgoing::Stream { frame, payload } => {
            if conn.close_reason().is_some() {
                return Err(());
            }
            let Some(frame) = frame_for(frame, live.wire_version) else {
                metrics.count_dropped("not_in_peer_wire_version");
                return Ok(());
            };
            let (conn, payload) = (conn.clone(), payload.clone());
            let metrics = Arc::clone(metrics);
            let len = payload.as_ref().map_or(0, |p| p.len() as u64);
            let frame_len = frame.len() as u64;
            tokio::spawn(async move {
                let sent = tokio::time::timeout(payload_timeout(len), async {
                    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
                    stream.write_chunk(frame).await.map_err(|e| e.to_string())?;
                    if let Some(payload) = payload {
                        stream
                            .write_chunk(payload)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    stream.finish().map_err(|e| e.to_string())
                })
                .await;
                match sent {
                    Ok(Ok(())) => {
                        metrics.stream_frames_sent.inc();
                        metrics.stream_bytes_out.inc_by(frame_len + len);
                        metrics
                            .repl_payload_bytes
                            .get_or_create(&DirectionLabel {
                                direction: "out".into(),
                            })
                            .inc_by(len);
                    }
                    Ok(Err(_)) | Err(_) => metrics.count_dropped("replication_send_failed"),
                }
            });
            Ok(())
        }
    }
}

/// `envelope` as a connection of wire version `version` takes it: as it is when it is
/// of that version or older, else transcoded down (`wire::transcode`). `None`: it has
/// no form in that version.
fn envelope_for(envelope: &Bytes, version: u8) -> Option<Bytes> {
    match wire::transcode(envelope, version, wire::MAX_STREAM_FRAME_LEN) {
        Ok(Cow::Borrowed(_)) => Some(envelope.clone()),
        Ok(Cow::Owned(down)) => Some(Bytes::from(down)),
        Err(_) => None,
    }
}

/// [`envelope_for`] for a length-prefixed stream frame.
fn frame_for(frame: &Bytes, version: u8) -> Option<Bytes> {
    match wire::transcode(frame.get(4..)?, version, wire::MAX_STREAM_FRAME_LEN) {
        Ok(Cow::Borrowed(_)) => Some(frame.clone()),
        Ok(Cow::Owned(down)) => wire::frame_for_stream(&down).ok().map(Bytes::from),
        Err(_) => None,
    }
}

/// Time allowed to move a payload of `len` bytes: the frame timeout plus one second
/// per MiB (a link slower than 1 MiB/s is not a link to replicate over).
fn payload_timeout(len: u64) -> Duration {
    STREAM_FRAME_TIMEOUT + Duration::from_secs(len / (1024 * 1024))
}

/// Sends on one connection: a datagram if it fits, else a stream. `Err` means the
/// connection is dead.
fn send_on(
    conn: &Connection,
    envelope: Bytes,
    metrics: &Arc<Metrics>,
    stream_sends: &Arc<Semaphore>,
) -> Result<(), ()> {
    let fits = conn
        .max_datagram_size()
        .is_some_and(|max| envelope.len() <= max);
    if fits {
        let len = envelope.len() as u64;
        match conn.send_datagram(envelope.clone()) {
            Ok(()) => {
                metrics.datagrams_sent.inc();
                metrics.datagram_bytes_out.inc_by(len);
                return Ok(());
            }
            Err(SendDatagramError::ConnectionLost(_)) => return Err(()),
            // Too large after all (the path MTU shrank) or datagrams off: use a stream.
            Err(SendDatagramError::TooLarge)
            | Err(SendDatagramError::UnsupportedByPeer)
            | Err(SendDatagramError::Disabled) => {}
        }
    }
    if conn.close_reason().is_some() {
        return Err(());
    }
    let Ok(permit) = Arc::clone(stream_sends).try_acquire_owned() else {
        metrics.count_dropped("stream_sends_busy");
        return Ok(());
    };
    let frame = match wire::frame_for_stream(&envelope) {
        Ok(f) => f,
        Err(_) => {
            metrics.count_dropped("too_large");
            return Ok(());
        }
    };
    let conn = conn.clone();
    let metrics = Arc::clone(metrics);
    tokio::spawn(async move {
        let _permit = permit;
        let sent = tokio::time::timeout(STREAM_FRAME_TIMEOUT, async {
            let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&frame).await.map_err(|e| e.to_string())?;
            stream.finish().map_err(|e| e.to_string())
        })
        .await;
        match sent {
            Ok(Ok(())) => {
                metrics.stream_frames_sent.inc();
                metrics.stream_bytes_out.inc_by(frame.len() as u64);
            }
            Ok(Err(_)) | Err(_) => metrics.count_dropped("stream_send_failed"),
        }
    });
    Ok(())
}

/// Whom a dial is for: a node by name, or a seed by address (its name comes from its
/// certificate).
enum Dialed {
    Node(NodeName),
    Seed(SocketAddr),
}

/// `(timeout, trust)`: give up after `timeout`; `connecting` uses the client
/// configuration of trust generation `trust`.
async fn dial(
    connecting: quinn::Connecting,
    target: Dialed,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    (timeout, trust): (Duration, u64),
    limits: StreamLimits,
    versions: WireVersions,
) {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => match tls::peer_node_name(conn.peer_identity()) {
            Ok(name)
                if matches!(&target, Dialed::Node(e) if *e == name)
                    || matches!(target, Dialed::Seed(_)) =>
            {
                match negotiated(&conn, versions) {
                    Ok(version) => Ok((name, conn, version)),
                    Err(error) => {
                        metrics.count_tls_rejected(NO_COMMON_WIRE_VERSION);
                        conn.close(VarInt::from_u32(close_code::REFUSED), b"wire version");
                        Err(error)
                    }
                }
            }
            Ok(name) => {
                // webpki already checked the name; this is a second line of defence.
                metrics.count_tls_rejected("server_name_mismatch");
                conn.close(VarInt::from_u32(close_code::REFUSED), b"name mismatch");
                Err(format!("peer certificate names {name:?}"))
            }
            Err(e) => {
                metrics.count_tls_rejected(e.kind());
                conn.close(VarInt::from_u32(close_code::REFUSED), b"bad certificate");
                Err(e.to_string())
            }
        },
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e, "server");
            metrics.count_tls_rejected(&reason);
            Err(explain_handshake_failure(&e, &reason, versions))
        }
        Err(_) => {
            metrics.count_tls_rejected("handshake_timeout");
            Err(format!("handshake timed out after {timeout:?}"))
        }
    };
    match result {
        Ok((name, conn, wire_version)) => {
            let seed = match target {
                Dialed::Seed(addr) => Some(addr),
                Dialed::Node(_) => None,
            };
            let report = Inbound::Connected {
                name: name.clone(),
                conn: conn.clone(),
                dialed_by_us: true,
                seed,
                handshake: started.elapsed(),
                trust,
                wire_version,
            };
            if inbound.send(report).await.is_ok() {
                read_connection(
                    name.clone(),
                    conn.clone(),
                    wire_version,
                    inbound.clone(),
                    Arc::clone(&metrics),
                    limits,
                )
                .await;
                refused_after_handshake(&conn, name, seed, &inbound, &metrics).await;
            }
        }
        Err(error) => {
            let report = match target {
                Dialed::Seed(addr) => Inbound::SeedFailed { addr, error },
                Dialed::Node(name) => Inbound::DialFailed { name, error },
            };
            let _ = inbound.send(report).await;
        }
    }
}

/// The listener checks the dialer's certificate once the dialer's side of the
/// handshake is complete, so its refusal (another CA, revoked) reaches the dialer as
/// the close of a connection that looked established. Reported like a failed dial:
/// counted, logged, and for a seed a `join_failed` event with the reason.
async fn refused_after_handshake(
    conn: &Connection,
    name: NodeName,
    seed: Option<SocketAddr>,
    inbound: &mpsc::Sender<Inbound>,
    metrics: &Metrics,
) {
    let Some(ConnectionError::ConnectionClosed(close)) = conn.close_reason() else {
        return;
    };
    if !(0x100..=0x1ff).contains(&u64::from(close.error_code)) {
        return;
    }
    let reason =
        handshake_failure_reason(&ConnectionError::ConnectionClosed(close.clone()), "client");
    metrics.count_tls_rejected(&reason);
    let error = format!("{name} refused this node's certificate ({reason}): {close}");
    let report = match seed {
        Some(addr) => Inbound::SeedFailed { addr, error },
        None => Inbound::DialFailed { name, error },
    };
    let _ = inbound.send(report).await;
}

/// TLS alert numbers (RFC 8446, section 6).
const ALERT_CERTIFICATE_REVOKED: u64 = 44;
const ALERT_CERTIFICATE_EXPIRED: u64 = 45;
const ALERT_UNKNOWN_CA: u64 = 48;

/// `vigil_tls_rejected_total` reason of a handshake between nodes with no wire
/// version in common.
pub const NO_COMMON_WIRE_VERSION: &str = "no_common_wire_version";
/// QUIC's code for the TLS alert `no_application_protocol` (0x100 + 120), sent when
/// the two ALPN lists share nothing: here, no wire version in common.
const NO_APPLICATION_PROTOCOL: u64 = 0x178;

/// The wire version a completed handshake chose, which must be one of `versions`.
fn negotiated(conn: &Connection, versions: WireVersions) -> Result<u8, String> {
    match tls::negotiated_wire_version(conn.handshake_data()) {
        Some(v) if versions.contains(v) => Ok(v),
        other => Err(format!(
            "the handshake chose {}, not one of this node's wire versions {versions}",
            other.map_or("no wire version".to_string(), |v| format!(
                "wire version {v}"
            ))
        )),
    }
}

/// A failed handshake in words an operator can act on.
fn explain_handshake_failure(e: &ConnectionError, reason: &str, versions: WireVersions) -> String {
    if reason == NO_COMMON_WIRE_VERSION {
        let offered: Vec<String> = versions
            .newest_first()
            .map(|v| String::from_utf8_lossy(&tls::alpn_id(v)).into_owned())
            .collect();
        format!(
            "{e}: no wire version in common: this node speaks wire versions {versions} (ALPN {}), the peer none of them (or offered no ALPN); run builds whose versions overlap (docs/OPERATIONS.md, \"Upgrades\")",
            offered.join(", ")
        )
    } else {
        format!("{e} ({reason})")
    }
}

/// Metric label for a failed handshake. A TLS alert means the certificate was
/// refused (by us or by the peer), except `no_application_protocol`, which means the
/// ALPN lists, i.e. the wire versions, have nothing in common; `side` says whose
/// certificate was checked here.
fn handshake_failure_reason(e: &ConnectionError, side: &str) -> String {
    match e {
        ConnectionError::TransportError(t) if u64::from(t.code) == NO_APPLICATION_PROTOCOL => {
            NO_COMMON_WIRE_VERSION.into()
        }
        ConnectionError::ConnectionClosed(c)
            if u64::from(c.error_code) == NO_APPLICATION_PROTOCOL =>
        {
            NO_COMMON_WIRE_VERSION.into()
        }
        // QUIC carries TLS alerts as transport error codes 0x100..=0x1ff; the labels
        // are those of `tls::refusal_kind` where the alert tells.
        ConnectionError::TransportError(t) if (0x100..=0x1ff).contains(&u64::from(t.code)) => {
            match u64::from(t.code) - 0x100 {
                ALERT_CERTIFICATE_REVOKED => "revoked".into(),
                ALERT_CERTIFICATE_EXPIRED => "expired".into(),
                ALERT_UNKNOWN_CA => "unknown_ca".into(),
                _ => format!("bad_{side}_certificate"),
            }
        }
        ConnectionError::ConnectionClosed(c)
            if (0x100..=0x1ff).contains(&u64::from(c.error_code)) =>
        {
            if u64::from(c.error_code) - 0x100 == ALERT_CERTIFICATE_REVOKED {
                "revoked_by_peer".into()
            } else {
                "certificate_refused_by_peer".into()
            }
        }
        ConnectionError::TimedOut => "handshake_timeout".into(),
        ConnectionError::ConnectionClosed(_) | ConnectionError::ApplicationClosed(_) => {
            "closed_by_peer".into()
        }
        ConnectionError::TransportError(_) => "handshake_transport_error".into(),
        ConnectionError::VersionMismatch => "quic_version_mismatch".into(),
        ConnectionError::Reset => "reset".into(),
        ConnectionError::LocallyClosed => "locally_closed".into(),
        ConnectionError::CidsExhausted => "cids_exhausted".into(),
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    server_tls: watch::Receiver<ServerTls>,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    log_limit: Arc<LogLimiter>,
    (timeout, versions): (Duration, WireVersions),
    limits: StreamLimits,
) {
    let gate = HandshakeGate::new(GateLimits::default());
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let ticket = match gate.admit(
            remote.ip(),
            incoming.remote_address_validated(),
            Instant::now(),
        ) {
            Admission::Accept(ticket) => ticket,
            Admission::Retry => {
                // `retry` fails only for an attempt that already answered a Retry,
                // which counts as validated and never gets here.
                if incoming.retry().is_err() {
                    metrics.count_tls_rejected("retry_failed");
                }
                continue;
            }
            Admission::Refuse(reason) => {
                metrics.count_tls_rejected(reason);
                log_limit.warn(
                    "incoming_refused",
                    format_args!("refused connection from {remote}: {reason} (handshake limits, see docs/SECURITY.md)"),
                );
                incoming.refuse();
                continue;
            }
            Admission::Ignore(reason) => {
                metrics.count_tls_rejected(reason);
                log_limit.warn(
                    "incoming_ignored",
                    format_args!("ignoring connection attempts from {remote}: {reason} (handshake limits, see docs/SECURITY.md)"),
                );
                incoming.ignore();
                continue;
            }
        };
        let inbound = inbound.clone();
        let metrics = Arc::clone(&metrics);
        let log_limit = Arc::clone(&log_limit);
        let limits = limits.clone();
        let server = server_tls.borrow().clone();
        tokio::spawn(async move {
            let handshake = async move { incoming.accept_with(server.config)?.await };
            let conn = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    ticket.failed(Instant::now());
                    let reason = handshake_failure_reason(&e, "client");
                    metrics.count_tls_rejected(&reason);
                    log_limit.warn(
                        "incoming_handshake",
                        format_args!(
                            "refused connection from {remote}: {}",
                            explain_handshake_failure(&e, &reason, versions)
                        ),
                    );
                    return;
                }
                Err(_) => {
                    ticket.failed(Instant::now());
                    metrics.count_tls_rejected("handshake_timeout");
                    return;
                }
            };
            let name = match tls::peer_node_name(conn.peer_identity()) {
                Ok(name) => {
                    drop(ticket);
                    name
                }
                Err(e) => {
                    ticket.failed(Instant::now());
                    metrics.count_tls_rejected(e.kind());
                    log_limit.warn(
                        "incoming_name",
                        format_args!("refused connection from {remote}: {e}"),
                    );
                    conn.close(
                        VarInt::from_u32(close_code::REFUSED),
                        b"bad certificate name",
                    );
                    return;
                }
            };
            let wire_version = match negotiated(&conn, versions) {
                Ok(v) => v,
                Err(error) => {
                    metrics.count_tls_rejected(NO_COMMON_WIRE_VERSION);
                    log_limit.warn(
                        "incoming_wire_version",
                        format_args!("refused connection from {name} at {remote}: {error}"),
                    );
                    conn.close(VarInt::from_u32(close_code::REFUSED), b"wire version");
                    return;
                }
            };
            let report = Inbound::Connected {
                name: name.clone(),
                conn: conn.clone(),
                dialed_by_us: false,
                seed: None,
                handshake: Duration::ZERO,
                trust: server.generation,
                wire_version,
            };
            if inbound.send(report).await.is_ok() {
                read_connection(name, conn, wire_version, inbound, metrics, limits).await;
            }
        });
    }
}

/// Reads datagrams and stream frames from one connection until it closes. Envelopes
/// of a newer wire version than the connection negotiated are refused here
/// (`unsupported_version`), as a node that speaks only that version would.
async fn read_connection(
    name: NodeName,
    conn: Connection,
    wire_version: u8,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    limits: StreamLimits,
) {
    loop {
        tokio::select! {
            datagram = conn.read_datagram() => {
                let Ok(bytes) = datagram else { break };
                metrics.datagrams_received.inc();
                metrics.datagram_bytes_in.inc_by(bytes.len() as u64);
                if let Err(e) = check_version(&bytes, wire_version) {
                    metrics.count_input_error(e.kind());
                    continue;
                }
                // Never wait on the owner for a datagram: if it is behind, dropping
                // keeps memory bounded and SWIM treats it as loss.
                if inbound.try_send(Inbound::Message { from: name.clone(), bytes }).is_err() {
                    metrics.count_dropped("inbound_queue_full");
                }
            }
            stream = conn.accept_uni() => {
                let Ok(stream) = stream else { break };
                let inbound = inbound.clone();
                let metrics = Arc::clone(&metrics);
                let from = name.clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    match read_stream(stream, from, wire_version, &limits, &metrics).await {
                        Ok(message) => {
                            metrics.stream_frames_received.inc();
                            let _ = inbound.send(message).await;
                        }
                        Err(kind) => metrics.count_input_error(kind),
                    }
                });
            }
        }
    }
    if let Some(ConnectionError::ApplicationClosed(close)) = conn.close_reason()
        && close.error_code == VarInt::from_u32(close_code::UNTRUSTED)
    {
        tracing::warn!(
            peer = %name,
            "{name} closed its connection with this node after reloading its certificates: {}",
            String::from_utf8_lossy(&close.reason)
        );
    }
    let _ = inbound
        .send(Inbound::Closed {
            name,
            stable_id: conn.stable_id(),
        })
        .await;
}

/// Reads one stream (see [`read_stream_from`]); a payload over the limit is refused
/// to the sender at once, so it stops sending.
async fn read_stream(
    mut stream: quinn::RecvStream,
    from: NodeName,
    wire_version: u8,
    limits: &StreamLimits,
    metrics: &Metrics,
) -> Result<Inbound, &'static str> {
    let result = read_stream_from(&mut stream, from, wire_version, limits, metrics).await;
    if let Err("payload_too_large") = result {
        let _ = stream.stop(VarInt::from_u32(close_code::REFUSED));
    }
    result
}

/// Reads one stream: a frame, and for a replication message the payload after it
/// (its length checked against the limit, and memory reserved, before reading).
/// Generic over the reader so the fuzz target (`crate::fuzzing`) runs this very code
/// on bytes in memory; the node hands it a `quinn::RecvStream`.
pub(crate) async fn read_stream_from<R: AsyncRead + Unpin>(
    stream: &mut R,
    from: NodeName,
    wire_version: u8,
    limits: &StreamLimits,
    metrics: &Metrics,
) -> Result<Inbound, &'static str> {
    let frame = tokio::time::timeout(STREAM_FRAME_TIMEOUT, read_frame(stream, &limits.frames))
        .await
        .map_err(|_| "stream_timeout")??;
    // The 4-byte length prefix included, as on the sending side.
    metrics.stream_bytes_in.inc_by(frame.len() as u64 + 4);
    check_version(&frame, wire_version).map_err(|e| e.kind())?;
    let msg = match wire::decode(&frame, wire::MAX_STREAM_FRAME_LEN) {
        Ok(wire::Body::Repl(msg)) => msg,
        // Membership messages (and undecodable ones, which the core reports by kind).
        _ => return Ok(Inbound::Message { from, bytes: frame }),
    };
    let len = msg.payload_len();
    if len == 0 {
        return Ok(Inbound::Repl {
            from,
            msg,
            payload: None,
        });
    }
    if len > limits.max_payload {
        return Err("payload_too_large");
    }
    let size = usize::try_from(len).map_err(|_| "payload_too_large")?;
    let reservation = limits.budget.reserve(len).await.ok_or("budget_closed")?;
    let mut body = vec![0u8; size];
    tokio::time::timeout(payload_timeout(len), stream.read_exact(&mut body))
        .await
        .map_err(|_| "stream_timeout")?
        .map_err(|_| "stream_truncated")?;
    metrics.stream_bytes_in.inc_by(len);
    metrics
        .repl_payload_bytes
        .get_or_create(&DirectionLabel {
            direction: "in".into(),
        })
        .inc_by(len);
    Ok(Inbound::Repl {
        from,
        msg,
        payload: Some(reservation.attach(body)),
    })
}

/// Refuses an envelope of a newer wire version than the connection negotiated.
/// Anything else wrong with it is left to the decoder that reads it.
fn check_version(envelope: &[u8], negotiated: u8) -> Result<(), wire::DecodeError> {
    match wire::version_of(envelope, wire::MAX_STREAM_FRAME_LEN) {
        Ok(found) if found > negotiated => Err(wire::DecodeError::UnsupportedVersion { found }),
        _ => Ok(()),
    }
}

/// Reads one length-prefixed frame; the length is checked, and its memory reserved
/// from `budget`, before the body is read.
async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    budget: &SnapshotBudget,
) -> Result<Bytes, &'static str> {
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|_| "stream_truncated")?;
    let len = wire::stream_frame_len(prefix).map_err(|e| e.kind())?;
    let reservation = budget.reserve(len as u64).await.ok_or("budget_closed")?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| "stream_truncated")?;
    Ok(reservation.attach(body))
}

/// Logs at most one warning per key every ten seconds, so a flood of bad input
/// cannot flood the log.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<HashMap<&'static str, Instant>>,
}

impl LogLimiter {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub fn warn(&self, key: &'static str, message: fmt::Arguments<'_>) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last
            .get(key)
            .is_none_or(|t| now.duration_since(*t) >= Self::INTERVAL);
        if due {
            last.insert(key, now);
            drop(last);
            tracing::warn!("{message}");
        }
    }
}

/// Wraps the endpoint's UDP socket to count bytes and packets (with GSO/GRO, one
/// call may carry several packets).
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)?;
        let len = transmit.contents.len();
        let packets = match transmit.segment_size {
            Some(size) if size > 0 => len.div_ceil(size),
            _ => 1,
        };
        self.metrics.udp_tx_bytes.inc_by(len as u64);
        self.metrics.udp_tx_packets.inc_by(packets as u64);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        for m in meta.iter().take(n) {
            let packets = if m.stride > 0 {
                m.len.div_ceil(m.stride)
            } else {
                1
            };
            self.metrics.udp_rx_bytes.inc_by(m.len as u64);
            self.metrics.udp_rx_packets.inc_by(packets as u64);
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
