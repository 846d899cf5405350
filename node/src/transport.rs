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
use tokio::sync::{Semaphore, mpsc};
use vigil_protocol::wire;
use vigil_protocol::{NodeId, NodeName};

use crate::metrics::{DirectionLabel, Metrics};
use crate::tls::{self, NodeTls};

/// QUIC application close codes.
pub mod close_code {
    pub const SHUTDOWN: u32 = 0;
    pub const EVICTED: u32 = 1;
    pub const REFUSED: u32 = 2;
    pub const SUPERSEDED: u32 = 3;
}

/// Datagrams queued per peer while its handshake runs. Beyond this the oldest is
/// dropped: SWIM tolerates loss, and a peer that cannot be reached must not grow
/// memory.
const DIAL_QUEUE_LIMIT: usize = 32;
/// Handshakes (incoming) allowed at once; more are refused before any crypto runs.
const MAX_CONCURRENT_HANDSHAKES: usize = 64;
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
}

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
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
            gauge: metrics.snapshot_memory_bytes.clone(),
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
    local_name: NodeName,
    peers: HashMap<NodeName, Entry>,
    config: TransportConfig,
    inbound_tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    stream_sends: Arc<Semaphore>,
    log_limit: Arc<LogLimiter>,
    limits: StreamLimits,
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
        let mut server_config = tls.quinn_server_config()?;
        server_config.transport_config(Arc::clone(&transport_config));
        let mut client_config = tls.quinn_client_config()?;
        client_config.transport_config(transport_config);

        let socket =
            std::net::UdpSocket::bind(config.bind).map_err(|source| TransportError::Bind {
                addr: config.bind,
                source,
            })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| TransportError::Bind {
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
            inbound_tx.clone(),
            Arc::clone(&metrics),
            Arc::clone(&log_limit),
            config.dial_timeout,
            limits.clone(),
        ));
        Ok((
            Transport {
                endpoint,
                client_config,
                local_name,
                peers: HashMap::new(),
                config,
                inbound_tx,
                metrics,
                stream_sends: Arc::new(Semaphore::new(MAX_CONCURRENT_STREAM_SENDS)),
                log_limit,
                limits,
            },
            inbound_rx,
        ))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
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
                        match send_out(&live.conn, &out, &self.metrics, &self.stream_sends) {
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
        tokio::spawn(dial(
            connecting,
            Some(to.name.clone()),
            None,
            self.inbound_tx.clone(),
            Arc::clone(&self.metrics),
            self.config.dial_timeout,
            self.limits.clone(),
        ));
    }

    /// Dials a seed by address; its name comes from its certificate.
    pub fn dial_seed(&self, addr: SocketAddr) {
        match self
            .endpoint
            .connect_with(self.client_config.clone(), addr, tls::SEED_SERVER_NAME)
        {
            Ok(connecting) => {
                tokio::spawn(dial(
                    connecting,
                    None,
                    Some(addr),
                    self.inbound_tx.clone(),
                    Arc::clone(&self.metrics),
                    self.config.dial_timeout,
                    self.limits.clone(),
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
            } => {
                let direction = if dialed_by_us { "outbound" } else { "inbound" };
                tracing::debug!(
                    peer = %name,
                    direction,
                    handshake_ms = handshake.as_millis(),
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
                self.install(name.clone(), conn, dialed_by_us);
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

    fn install(&mut self, name: NodeName, conn: Connection, dialed_by_us: bool) {
        let idle_send_space = conn.datagram_send_buffer_space();
        let live = Live {
            conn,
            dialed_by_us,
            idle_send_space,
        };
        match self.peers.get_mut(&name) {
            Some(entry) => {
                entry.last_used = Instant::now();
                match &mut entry.peer {
                    Peer::Dialing { queue } => {
                        let queue = std::mem::take(queue);
                        for out in queue {
                            let _ = send_out(&live.conn, &out, &self.metrics, &self.stream_sends);
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

/// Sends one outgoing message on `conn`. `Err` means the connection is dead.
fn send_out(
    conn: &Connection,
    out: &Outgoing,
    metrics: &Arc<Metrics>,
    stream_sends: &Arc<Semaphore>,
) -> Result<(), ()> {
    match out {
        Outgoing::Envelope(envelope) => send_on(conn, envelope.clone(), metrics, stream_sends),
        Outgoing::Stream { frame, payload } => {
            if conn.close_reason().is_some() {
                return Err(());
            }
            let (conn, frame, payload) = (conn.clone(), frame.clone(), payload.clone());
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

async fn dial(
    connecting: quinn::Connecting,
    expected: Option<NodeName>,
    seed: Option<SocketAddr>,
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    limits: StreamLimits,
) {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => match tls::peer_node_name(conn.peer_identity()) {
            Ok(name) if expected.as_ref().is_none_or(|e| *e == name) => Ok((name, conn)),
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
            metrics.count_tls_rejected(&handshake_failure_reason(&e, "server"));
            Err(e.to_string())
        }
        Err(_) => {
            metrics.count_tls_rejected("handshake_timeout");
            Err(format!("handshake timed out after {timeout:?}"))
        }
    };
    match result {
        Ok((name, conn)) => {
            let report = Inbound::Connected {
                name: name.clone(),
                conn: conn.clone(),
                dialed_by_us: true,
                seed,
                handshake: started.elapsed(),
            };
            if inbound.send(report).await.is_ok() {
                read_connection(name, conn, inbound, metrics, limits).await;
            }
        }
        Err(error) => {
            let report = match (expected, seed) {
                (_, Some(addr)) => Inbound::SeedFailed { addr, error },
                (Some(name), None) => Inbound::DialFailed { name, error },
                (None, None) => return,
            };
            let _ = inbound.send(report).await;
        }
    }
}

/// Metric label for a failed handshake. A TLS alert means the certificate was
/// refused (by us or by the peer); `side` says whose certificate was checked here.
fn handshake_failure_reason(e: &ConnectionError, side: &str) -> String {
    match e {
        // QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
        ConnectionError::TransportError(t) if (0x100..=0x1ff).contains(&u64::from(t.code)) => {
            format!("bad_{side}_certificate")
        }
        ConnectionError::ConnectionClosed(c)
            if (0x100..=0x1ff).contains(&u64::from(c.error_code)) =>
        {
            "certificate_refused_by_peer".into()
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
    inbound: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    log_limit: Arc<LogLimiter>,
    timeout: Duration,
    limits: StreamLimits,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            metrics.count_tls_rejected("too_many_handshakes");
            incoming.refuse();
            continue;
        };
        let inbound = inbound.clone();
        let metrics = Arc::clone(&metrics);
        let log_limit = Arc::clone(&log_limit);
        let limits = limits.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    let reason = handshake_failure_reason(&e, "client");
                    metrics.count_tls_rejected(&reason);
                    log_limit.warn(
                        "incoming_handshake",
                        format_args!("refused connection from {remote}: {e} ({reason})"),
                    );
                    return;
                }
                Err(_) => {
                    metrics.count_tls_rejected("handshake_timeout");
                    return;
                }
            };
            drop(permit);
            let name = match tls::peer_node_name(conn.peer_identity()) {
                Ok(name) => name,
                Err(e) => {
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
            let report = Inbound::Connected {
                name: name.clone(),
                conn: conn.clone(),
                dialed_by_us: false,
                seed: None,
                handshake: Duration::ZERO,
            };
            if inbound.send(report).await.is_ok() {
                read_connection(name, conn, inbound, metrics, limits).await;
            }
        });
    }
}

/// Reads datagrams and stream frames from one connection until it closes.
async fn read_connection(
    name: NodeName,
    conn: Connection,
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
                    match read_stream(stream, from, &limits, &metrics).await {
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
    limits: &StreamLimits,
    metrics: &Metrics,
) -> Result<Inbound, &'static str> {
    let result = read_stream_from(&mut stream, from, limits, metrics).await;
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
    limits: &StreamLimits,
    metrics: &Metrics,
) -> Result<Inbound, &'static str> {
    let frame = tokio::time::timeout(STREAM_FRAME_TIMEOUT, read_frame(stream))
        .await
        .map_err(|_| "stream_timeout")??;
    // The 4-byte length prefix included, as on the sending side.
    metrics.stream_bytes_in.inc_by(frame.len() as u64 + 4);
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

/// Reads one length-prefixed frame; the length is checked before the body is read.
async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Bytes, &'static str> {
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|_| "stream_truncated")?;
    let len = wire::stream_frame_len(prefix).map_err(|e| e.kind())?;
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| "stream_truncated")?;
    Ok(Bytes::from(body))
}

/// Logs at most one warning per key every ten seconds, so a flood of bad input
/// cannot flood the log.
#[derive(Default)]
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
