//! What a SWIM probe pays on a cold connection: QUIC + mutual TLS handshakes with
//! vigil's own TLS configurations, against a datagram echo server on loopback.
//!
//! Scenarios, each timed from `connect` to the echo of one probe-sized datagram:
//!
//! - **cold**: a fresh client configuration every time (no session cache), so a full
//!   TLS 1.3 handshake with certificates both ways;
//! - **resumed**: one client configuration for all connections, so its rustls session
//!   cache offers a ticket (PSK resumption; no certificates on the wire);
//! - **0-RTT**: like resumed, but the datagram goes out as early data
//!   (`Connecting::into_0rtt`), against a server that waits for the full handshake
//!   as vigil's listener does, and against one that answers in 0.5-RTT;
//! - **warm**: the datagram echo on an established connection;
//! - **cold with path-MTU discovery on** (quinn's default, which vigil turns off),
//!   for comparison.
//!
//! Both ends use the node's own QUIC settings
//! (`vigil::transport::{quic_transport_config, endpoint_config}`).
//!
//! Client and server run in this process, so the CPU time per operation
//! (`getrusage(RUSAGE_SELF)`) covers both ends.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::resource::{UsageWho, getrusage};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, Endpoint, VarInt};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use vigil::tls::{self, NodeTls};
use vigil_protocol::NodeName;

use crate::cluster::report::{Machine, git_revision};

/// The server's node name; clients dial it by name, as vigil dials known members.
const SERVER: &str = "n1";
const CLIENT: &str = "n2";
/// About the size of a SWIM probe envelope.
const PAYLOAD_LEN: usize = 100;
/// One operation taking longer than this counts as failed (a lost datagram).
const OP_TIMEOUT: Duration = Duration::from_secs(5);
const WARMUP: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("certificates: {0}")]
    Tls(Box<tls::TlsError>),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Quic(String),
}

impl From<tls::TlsError> for HandshakeError {
    fn from(e: tls::TlsError) -> Self {
        HandshakeError::Tls(Box::new(e))
    }
}

fn quic_err(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Quic(e.to_string())
}

/// Min, median, 99th percentile (nearest rank) and max, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub min_us: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(samples: &mut [f64]) -> Option<Latency> {
        if samples.is_empty() || samples.iter().any(|v| v.is_nan()) {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        // Nearest rank: the smallest value with at least 99% of samples at or below.
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        Some(Latency {
            min_us: samples[0],
            median_us: median,
            p99_us: samples[rank - 1],
            max_us: samples[n - 1],
        })
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub iterations: usize,
    /// Operations that failed or timed out (not in the latencies).
    pub failures: usize,
    /// `connect` until the handshake completed (or 0-RTT keys were ready).
    pub handshake: Option<Latency>,
    /// `connect` (or send, for warm) until the echo arrived.
    pub until_echo: Option<Latency>,
    /// Median client UDP bytes sent / received per connection, up to the echo.
    pub client_tx_bytes: Option<f64>,
    pub client_rx_bytes: Option<f64>,
    /// Process CPU time (user + system, client and server) per operation.
    pub cpu_us_per_op: f64,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    pub command: String,
    pub date: String,
    pub machine: Machine,
    pub git: Option<String>,
    pub iterations: usize,
    pub payload_bytes: usize,
    pub scenarios: Vec<Scenario>,
}

/// vigil's QUIC transport settings for the LAN profile: the node's own
/// `quic_transport_config` with the values `run_agent` (node/src/node.rs) passes
/// for `--profile lan`. `mtu_discovery: true` departs from vigil (which turns
/// path-MTU discovery off) back to quinn's default, for the comparison row.
fn transport_config(mtu_discovery: bool) -> Result<Arc<quinn::TransportConfig>, HandshakeError> {
    let lan = vigil::transport::TransportConfig {
        bind: ([127, 0, 0, 1], 0).into(),
        cache_capacity: 256,
        idle_timeout: Duration::from_secs(60),
        dial_timeout: Duration::from_secs(5),
        initial_rtt: Duration::from_millis(20),
    };
    let mut t = vigil::transport::quic_transport_config(&lan).map_err(quic_err)?;
    if mtu_discovery {
        t.mtu_discovery_config(Some(quinn::MtuDiscoveryConfig::default()));
    }
    Ok(Arc::new(t))
}

/// An endpoint on loopback with vigil's endpoint settings
/// (`vigil::transport::endpoint_config`: 4-byte connection IDs); a server if
/// `server` is given.
fn endpoint(server: Option<quinn::ServerConfig>) -> Result<Endpoint, HandshakeError> {
    let socket = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let runtime = quinn::default_runtime().ok_or_else(|| quic_err("no async runtime for quinn"))?;
    Ok(Endpoint::new(
        vigil::transport::endpoint_config(),
        server,
        socket,
        runtime,
    )?)
}

/// rustls's in-memory session cache, counting the tickets handed out for
/// resumption, so the report can show that "resumed" connections offered one.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    taken: AtomicUsize,
    /// Tickets received so far.
    inserted: watch::Sender<usize>,
}

impl CountingStore {
    fn new() -> Arc<Self> {
        Arc::new(CountingStore {
            inner: ClientSessionMemoryCache::new(256),
            taken: AtomicUsize::new(0),
            inserted: watch::Sender::new(0),
        })
    }

    fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    fn inserted(&self) -> usize {
        *self.inserted.borrow()
    }

    /// Resolves once more than `count` tickets have been received.
    async fn ticket_after(&self, count: usize) {
        let mut rx = self.inserted.subscribe();
        let _ = rx.wait_for(|n| *n > count).await;
    }
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
        self.inserted.send_modify(|n| *n += 1);
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(server_name);
        if ticket.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        ticket
    }
}

/// A client configuration with vigil's TLS settings and its own session cache
/// (`store`) or none.
fn client_config(
    tls: &NodeTls,
    transport: &Arc<quinn::TransportConfig>,
    store: Option<Arc<CountingStore>>,
) -> Result<quinn::ClientConfig, HandshakeError> {
    let mut crypto = (*tls.client).clone();
    // A clone shares the session store; replace it so nothing carries over.
    crypto.resumption = match store {
        Some(store) => rustls::client::Resumption::store(store),
        None => rustls::client::Resumption::disabled(),
    };
    let crypto = QuicClientConfig::try_from(Arc::new(crypto)).map_err(quic_err)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::clone(transport));
    Ok(config)
}

/// Echoes every datagram. `half_rtt`: answer 0-RTT data before the handshake
/// completes; otherwise wait for it and check the client's name, as vigil does.
async fn echo_server(endpoint: Endpoint, half_rtt: bool) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let conn = if half_rtt {
                let Ok(connecting) = incoming.accept() else {
                    return;
                };
                match connecting.into_0rtt() {
                    Ok((conn, _)) => conn,
                    Err(connecting) => match connecting.await {
                        Ok(conn) => conn,
                        Err(_) => return,
                    },
                }
            } else {
                let Ok(conn) = incoming.await else { return };
                if tls::peer_node_name(conn.peer_identity()).is_err() {
                    return;
                }
                conn
            };
            while let Ok(datagram) = conn.read_datagram().await {
                if conn.send_datagram(datagram).is_err() {
                    break;
                }
            }
        });
    }
}

fn cpu_time() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        // getrusage(RUSAGE_SELF) cannot fail on Linux; a zero makes the CPU column
        // read 0 rather than aborting the latency figures.
        Err(_) => Duration::ZERO,
    }
}

/// How one connection attempt went.
struct Attempt {
    handshake: Duration,
    until_echo: Duration,
    tx_bytes: u64,
    rx_bytes: u64,
    /// For 0-RTT attempts: whether early data was possible and accepted.
    zero_rtt: Option<bool>,
}

async fn echo(conn: &Connection, payload: &Bytes) -> Result<(), HandshakeError> {
    conn.send_datagram(payload.clone()).map_err(quic_err)?;
    let echoed = conn.read_datagram().await.map_err(quic_err)?;
    if echoed.len() != payload.len() {
        return Err(quic_err("echo of a different length"));
    }
    Ok(())
}

fn close(conn: &Connection) {
    conn.close(VarInt::from_u32(0), b"done");
}

/// How long to wait, after an attempt, for the server's session tickets.
const TICKET_WAIT: Duration = Duration::from_secs(1);

async fn connect_and_echo(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    server: SocketAddr,
    payload: &Bytes,
    zero_rtt: bool,
    store: Option<&CountingStore>,
) -> Result<Attempt, HandshakeError> {
    let tickets_before = store.map(CountingStore::inserted);
    let start = Instant::now();
    let connecting = endpoint
        .connect_with(config, server, SERVER)
        .map_err(quic_err)?;
    let early = if zero_rtt {
        connecting.into_0rtt()
    } else {
        Err(connecting)
    };
    let (conn, handshake, accepted, echoed) = match early {
        Ok((conn, accepted)) => {
            // Sent as early data: the echo may come before the handshake ends.
            let handshake = async {
                let ok = accepted.await;
                (start.elapsed(), ok)
            };
            let (echoed, (handshake, accepted)) = tokio::join!(echo(&conn, payload), handshake);
            (conn, handshake, Some(accepted), echoed)
        }
        Err(connecting) => {
            let conn = connecting.await.map_err(quic_err)?;
            let handshake = start.elapsed();
            let echoed = echo(&conn, payload).await;
            (conn, handshake, zero_rtt.then_some(false), echoed)
        }
    };
    let until_echo = start.elapsed();
    let stats = conn.stats();
    // A real connection stays open and receives the server's tickets; wait for one
    // (outside the timings) so the next attempt has a ticket to offer, as it would.
    if let (Some(store), Some(before)) = (store, tickets_before) {
        let _ = tokio::time::timeout(TICKET_WAIT, store.ticket_after(before)).await;
    }
    close(&conn);
    echoed.map(|()| Attempt {
        handshake,
        until_echo,
        tx_bytes: stats.udp_tx.bytes,
        rx_bytes: stats.udp_rx.bytes,
        zero_rtt: accepted,
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> Option<f64> {
    Latency::of(values).map(|l| l.median_us)
}

/// Runs `iterations` connections; `config` makes each one's client configuration.
/// What every scenario shares: the client endpoint, the datagram, the count.
struct Setup<'a> {
    endpoint: &'a Endpoint,
    payload: &'a Bytes,
    iterations: usize,
}

async fn connection_scenario(
    setup: &Setup<'_>,
    name: &str,
    server: SocketAddr,
    zero_rtt: bool,
    store: Option<&CountingStore>,
    mut config: impl FnMut() -> Result<quinn::ClientConfig, HandshakeError>,
) -> Result<Scenario, HandshakeError> {
    let Setup {
        endpoint,
        payload,
        iterations,
    } = *setup;
    for _ in 0..WARMUP {
        let _ = tokio::time::timeout(
            OP_TIMEOUT,
            connect_and_echo(endpoint, config()?, server, payload, zero_rtt, store),
        )
        .await;
    }
    let mut handshake = Vec::with_capacity(iterations);
    let mut until_echo = Vec::with_capacity(iterations);
    let mut tx = Vec::with_capacity(iterations);
    let mut rx = Vec::with_capacity(iterations);
    let mut failures = 0;
    let mut accepted = 0;
    let mut last_error = None;
    let taken_before = store.map_or(0, CountingStore::taken);
    let cpu_before = cpu_time();
    for _ in 0..iterations {
        // Building the configuration is part of what a cold dial costs, so it is
        // inside the CPU figure; it is outside the latency, which starts at connect.
        let config = config()?;
        match tokio::time::timeout(
            OP_TIMEOUT,
            connect_and_echo(endpoint, config, server, payload, zero_rtt, store),
        )
        .await
        {
            Ok(Ok(a)) => {
                handshake.push(us(a.handshake));
                until_echo.push(us(a.until_echo));
                tx.push(a.tx_bytes as f64);
                rx.push(a.rx_bytes as f64);
                accepted += usize::from(a.zero_rtt == Some(true));
            }
            Ok(Err(e)) => {
                failures += 1;
                last_error = Some(e.to_string());
            }
            Err(_) => {
                failures += 1;
                last_error = Some(format!("timed out after {OP_TIMEOUT:?}"));
            }
        }
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let mut notes = Vec::new();
    let tickets = store.map_or(0, CountingStore::taken) - taken_before;
    notes.push(format!(
        "session ticket offered on {tickets} of {iterations}"
    ));
    if zero_rtt {
        notes.push(format!("0-RTT accepted on {accepted} of {iterations}"));
    }
    if let Some(e) = last_error {
        notes.push(format!("last failure: {e}"));
    }
    Ok(Scenario {
        name: name.to_string(),
        iterations,
        failures,
        handshake: Latency::of(&mut handshake),
        until_echo: Latency::of(&mut until_echo),
        client_tx_bytes: median(&mut tx),
        client_rx_bytes: median(&mut rx),
        cpu_us_per_op: us(cpu) / iterations.max(1) as f64,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

/// Whether a resumed client configuration can send 0-RTT at all with vigil's TLS
/// settings: `Some(error)` says why not.
async fn zero_rtt_unavailable(
    endpoint: &Endpoint,
    config: &quinn::ClientConfig,
    store: &CountingStore,
    server: SocketAddr,
    payload: &Bytes,
) -> Result<Option<String>, HandshakeError> {
    // One full connection to obtain a ticket.
    connect_and_echo(
        endpoint,
        config.clone(),
        server,
        payload,
        false,
        Some(store),
    )
    .await?;
    let connecting = endpoint
        .connect_with(config.clone(), server, SERVER)
        .map_err(quic_err)?;
    Ok(match connecting.into_0rtt() {
        Ok((conn, _)) => {
            close(&conn);
            None
        }
        Err(connecting) => {
            if let Ok(conn) = connecting.await {
                close(&conn);
            }
            Some("`into_0rtt()` returned Err: no 0-RTT-capable session ticket".into())
        }
    })
}

/// Runs every scenario with `iterations` operations each.
pub async fn run(iterations: usize) -> Result<HandshakeReport, HandshakeError> {
    let dir = tempfile::Builder::new().prefix("vigil-hs-").tempdir()?;
    let pki = dir.path().join("pki");
    tls::init_ca(&pki, true)?;
    let server_name = NodeName::new(SERVER).map_err(quic_err)?;
    let client_name = NodeName::new(CLIENT).map_err(quic_err)?;
    tls::issue_node_cert(&pki, &server_name, &pki, 30, true)?;
    tls::issue_node_cert(&pki, &client_name, &pki, 30, true)?;
    let server_tls = tls::load_node_tls(&pki, &server_name)?;
    let client_tls = tls::load_node_tls(&pki, &client_name)?;
    let transport = transport_config(false)?;
    let with_pmtud = transport_config(true)?;

    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for (half_rtt, transport) in [
        (false, &transport),
        (true, &transport),
        (false, &with_pmtud),
    ] {
        let mut config = server_tls.quinn_server_config()?;
        config.transport_config(Arc::clone(transport));
        let endpoint = endpoint(Some(config))?;
        addrs.push(endpoint.local_addr()?);
        // The task owns the endpoint; aborting it at the end closes the server.
        servers.push(tokio::spawn(echo_server(endpoint, half_rtt)));
    }
    let (vigil_like, half_rtt, pmtud_on) = (addrs[0], addrs[1], addrs[2]);
    let client = endpoint(None)?;
    let payload = Bytes::from(vec![0x5a; PAYLOAD_LEN]);

    let setup = Setup {
        endpoint: &client,
        payload: &payload,
        iterations,
    };
    let mut scenarios = Vec::new();
    scenarios.push(
        connection_scenario(
            &setup,
            "(a) cold: full handshake, no session cache",
            vigil_like,
            false,
            None,
            || client_config(&client_tls, &transport, None),
        )
        .await?,
    );

    let resume_store = CountingStore::new();
    let resuming = client_config(&client_tls, &transport, Some(Arc::clone(&resume_store)))?;
    scenarios.push(
        connection_scenario(
            &setup,
            "(b) resumed: same client config (session cache)",
            vigil_like,
            false,
            Some(&resume_store),
            || Ok(resuming.clone()),
        )
        .await?,
    );

    let zero_rtt_store = CountingStore::new();
    let zero_rtt_config =
        client_config(&client_tls, &transport, Some(Arc::clone(&zero_rtt_store)))?;
    match zero_rtt_unavailable(
        &client,
        &zero_rtt_config,
        &zero_rtt_store,
        vigil_like,
        &payload,
    )
    .await?
    {
        Some(why) => scenarios.push(Scenario {
            name: "(c) 0-RTT".into(),
            iterations: 0,
            failures: 0,
            handshake: None,
            until_echo: None,
            client_tx_bytes: None,
            client_rx_bytes: None,
            cpu_us_per_op: 0.0,
            note: Some(format!("not available: {why}")),
        }),
        None => {
            scenarios.push(
                connection_scenario(
                    &setup,
                    "(c) 0-RTT datagram, server waits for the handshake (as vigil's listener)",
                    vigil_like,
                    true,
                    Some(&zero_rtt_store),
                    || Ok(zero_rtt_config.clone()),
                )
                .await?,
            );
            scenarios.push(
                connection_scenario(
                    &setup,
                    "(c') 0-RTT datagram, server answers in 0.5-RTT",
                    half_rtt,
                    true,
                    Some(&zero_rtt_store),
                    || Ok(zero_rtt_config.clone()),
                )
                .await?,
            );
        }
    }

    scenarios.push(warm_scenario(iterations, &client, &resuming, vigil_like, &payload).await?);

    scenarios.push(
        connection_scenario(
            &setup,
            "(e) cold, path-MTU discovery ON (quinn's default; for comparison)",
            pmtud_on,
            false,
            None,
            || client_config(&client_tls, &with_pmtud, None),
        )
        .await?,
    );

    client.close(VarInt::from_u32(0), b"done");
    client.wait_idle().await;
    for server in servers {
        server.abort();
    }
    Ok(HandshakeReport {
        command: "cargo bench -p vigil-benches --bench handshake".into(),
        date: vigil::events::format_unix_ms(crate::cluster::systems::unix_ms()),
        machine: Machine::probe(),
        git: git_revision(),
        iterations,
        payload_bytes: PAYLOAD_LEN,
        scenarios,
    })
}

async fn warm_scenario(
    iterations: usize,
    endpoint: &Endpoint,
    config: &quinn::ClientConfig,
    server: SocketAddr,
    payload: &Bytes,
) -> Result<Scenario, HandshakeError> {
    let conn = endpoint
        .connect_with(config.clone(), server, SERVER)
        .map_err(quic_err)?
        .await
        .map_err(quic_err)?;
    for _ in 0..WARMUP {
        let _ = tokio::time::timeout(OP_TIMEOUT, echo(&conn, payload)).await;
    }
    let before = conn.stats();
    let mut samples = Vec::with_capacity(iterations);
    let mut failures = 0;
    let cpu_before = cpu_time();
    for _ in 0..iterations {
        let start = Instant::now();
        match tokio::time::timeout(OP_TIMEOUT, echo(&conn, payload)).await {
            Ok(Ok(())) => samples.push(us(start.elapsed())),
            Ok(Err(_)) | Err(_) => failures += 1,
        }
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let after = conn.stats();
    close(&conn);
    let per_op = |a: u64, b: u64| Some(b.saturating_sub(a) as f64 / iterations.max(1) as f64);
    Ok(Scenario {
        name: "(d) warm: datagram echo on an established connection".into(),
        iterations,
        failures,
        handshake: None,
        until_echo: Latency::of(&mut samples),
        client_tx_bytes: per_op(before.udp_tx.bytes, after.udp_tx.bytes),
        client_rx_bytes: per_op(before.udp_rx.bytes, after.udp_rx.bytes),
        cpu_us_per_op: us(cpu) / iterations.max(1) as f64,
        note: Some("bytes are means per echo (ACKs included)".into()),
    })
}

impl HandshakeReport {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.machine.write_provenance(
            &mut md,
            "QUIC + mutual TLS: what a probe pays on a cold connection",
            &self.command,
            &self.date,
            self.git.as_deref(),
        );
        let _ = writeln!(
            md,
            "- Setup: one process, loopback, vigil's TLS configurations (`vigil::tls::load_node_tls`: \
             TLS 1.3, mutual certificates from a cluster CA, server name = node name), its LAN \
             QUIC transport settings (`vigil::transport::quic_transport_config`: path-MTU \
             discovery off) and endpoint settings (`vigil::transport::endpoint_config`: 4-byte \
             connection IDs) on both sides; quinn with datagrams; a {}-byte datagram echoed by \
             the server; {} operations per scenario after {WARMUP} warm-up ones; tokio with 2 \
             worker threads. CPU is getrusage(RUSAGE_SELF) user+system over the scenario divided \
             by operations (client and server together). Client bytes count every UDP payload \
             the client sent and received until the echo, Initial packets padded to 1200 bytes \
             included; row (e) turns quinn's path-MTU discovery back on (both sides) to show what \
             its padded probes cost. The server's certificate rides in room its first datagram \
             would otherwise pad, so resumption saves CPU and time but no bytes here.\n",
            self.payload_bytes, self.iterations
        );
        let _ = writeln!(
            md,
            "| scenario | handshake min / median / p99 / max (µs) | connect → echo min / median / p99 / max (µs) | client UDP bytes sent / received | CPU per op (µs) | failures | note |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let lat = |l: Option<Latency>| {
            l.map_or("–".to_string(), |l| {
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    l.min_us, l.median_us, l.p99_us, l.max_us
                )
            })
        };
        for s in &self.scenarios {
            let bytes = match (s.client_tx_bytes, s.client_rx_bytes) {
                (Some(t), Some(r)) => format!("{t:.0} / {r:.0}"),
                _ => "–".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {} | {} |",
                s.name,
                lat(s.handshake),
                lat(s.until_echo),
                bytes,
                s.cpu_us_per_op,
                s.failures,
                s.note.as_deref().unwrap_or("")
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=200).map(f64::from).collect();
        let l = Latency::of(&mut v).unwrap();
        assert_eq!(
            (l.min_us, l.median_us, l.p99_us, l.max_us),
            (1.0, 100.5, 198.0, 200.0)
        );
        let l = Latency::of(&mut [5.0]).unwrap();
        assert_eq!((l.p99_us, l.max_us), (5.0, 5.0));
        assert!(Latency::of(&mut []).is_none());
    }
}
