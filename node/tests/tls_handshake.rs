//! Mutual TLS over real quinn endpoints on loopback: who may connect to whom, what each
//! side learns about the other, and what a handshake costs (printed, never asserted).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::server::StoresServerSessions;
use rustls::{AlertDescription, NamedGroup};
use rustls_pki_types::ServerName;
use tokio::sync::Notify;
use vigil::tls::{
    self, NodeTls, SEED_SERVER_NAME, init_ca, issue_node_cert, load_node_tls, peer_node_name,
};
use vigil_protocol::NodeName;
use vigil_protocol::wire::WireVersions;

fn name(n: &str) -> NodeName {
    NodeName::new(n).unwrap()
}

/// A PKI directory holding a fresh CA and certificates for `nodes`.
fn pki(nodes: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_ca(dir.path(), false).unwrap();
    for n in nodes {
        issue_node_cert(dir.path(), &name(n), dir.path(), 30, false).unwrap();
    }
    dir
}

/// A PKI directory for node `node` whose certificate comes from `cert_from`'s CA while
/// `ca.crt` trusts the CAs of all of `trusted`.
fn mixed_pki(node: &str, cert_from: &Path, trusted: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cas = Vec::new();
    for t in trusted {
        cas.extend(fs::read(t.join(tls::CA_CERT_FILE)).unwrap());
    }
    fs::write(dir.path().join(tls::CA_CERT_FILE), cas).unwrap();
    issue_node_cert(cert_from, &name(node), dir.path(), 30, false).unwrap();
    dir
}

struct Node {
    tls: NodeTls,
    endpoint: Endpoint,
}

impl Node {
    fn start(pki: &Path, n: &str) -> Self {
        Self::from_tls(load_node_tls(pki, &name(n)).unwrap())
    }

    /// A node that speaks `versions` of the wire protocol.
    fn speaking(pki: &Path, n: &str, versions: WireVersions) -> Self {
        Self::from_tls(
            load_node_tls(pki, &name(n))
                .unwrap()
                .with_wire_versions(versions),
        )
    }

    fn from_tls(tls: NodeTls) -> Self {
        let mut endpoint = Endpoint::server(
            tls.quinn_server_config().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        endpoint.set_default_client_config(tls.quinn_client_config().unwrap());
        Self { tls, endpoint }
    }

    /// Like `start`, with the listener's session cache counting resumed sessions.
    fn start_counting_resumptions(pki: &Path, n: &str) -> (Self, Arc<ResumptionCounter>) {
        let node = Self::start(pki, n);
        let mut server = (*node.tls.server).clone();
        let counter = Arc::new(ResumptionCounter {
            inner: server.session_storage.clone(),
            resumed: AtomicUsize::new(0),
        });
        server.session_storage = counter.clone();
        let crypto = QuicServerConfig::try_from(Arc::new(server)).unwrap();
        node.endpoint
            .set_server_config(Some(quinn::ServerConfig::with_crypto(Arc::new(crypto))));
        (node, counter)
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }
}

/// Dials `to` from `from` and returns (dialer's result, listener's result).
async fn dial(
    from: &Node,
    to: &Node,
    server_name: &str,
) -> (
    Result<Connection, ConnectionError>,
    Result<Connection, ConnectionError>,
) {
    let connecting = from.endpoint.connect(to.addr(), server_name).unwrap();
    let accepting = async { to.endpoint.accept().await.unwrap().await };
    tokio::join!(connecting, accepting)
}

fn crypto_alert(error: &ConnectionError) -> Option<AlertDescription> {
    match error {
        ConnectionError::TransportError(e) => {
            let code = u64::from(e.code);
            (0x100..0x200)
                .contains(&code)
                .then(|| AlertDescription::from(code as u8))
        }
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..0x200)
                .contains(&code)
                .then(|| AlertDescription::from(code as u8))
        }
        _ => None,
    }
}

/// The dialer's view of a handshake the listener refused: QUIC lets the client finish
/// its side before the server has checked the client certificate, so the refusal shows
/// up either as a failed handshake or as the connection closing right after.
async fn refusal_seen_by_dialer(result: Result<Connection, ConnectionError>) -> ConnectionError {
    match result {
        Err(e) => e,
        Ok(conn) => conn.closed().await,
    }
}

#[tokio::test]
async fn nodes_from_the_same_ca_connect_both_ways_and_learn_each_others_name() {
    let dir = pki(&["n1", "n2"]);
    let n1 = Node::start(dir.path(), "n1");
    let n2 = Node::start(dir.path(), "n2");

    let (dialer, listener) = dial(&n1, &n2, "n2").await;
    let (dialer, listener) = (dialer.unwrap(), listener.unwrap());
    assert_eq!(peer_node_name(dialer.peer_identity()).unwrap(), name("n2"));
    assert_eq!(
        peer_node_name(listener.peer_identity()).unwrap(),
        name("n1")
    );
    let alpn = dialer
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap()
        .protocol;
    assert_eq!(alpn.as_deref(), Some(tls::ALPN));

    let (dialer, listener) = dial(&n2, &n1, "n1").await;
    assert_eq!(
        peer_node_name(dialer.unwrap().peer_identity()).unwrap(),
        name("n1")
    );
    assert_eq!(
        peer_node_name(listener.unwrap().peer_identity()).unwrap(),
        name("n2")
    );
}

/// What a completed handshake chose, as the dialer and the listener each see it.
fn versions_chosen(dialer: &Connection, listener: &Connection) -> (Option<u8>, Option<u8>) {
    (
        tls::negotiated_wire_version(dialer.handshake_data()),
        tls::negotiated_wire_version(listener.handshake_data()),
    )
}

#[tokio::test]
async fn a_connection_speaks_the_newest_wire_version_both_nodes_have() {
    let dir = pki(&["old", "new", "new2"]);
    let old = Node::speaking(dir.path(), "old", WireVersions::DEFAULT);
    let new = Node::speaking(dir.path(), "new", WireVersions::WITH_NEXT);
    let new2 = Node::speaking(dir.path(), "new2", WireVersions::WITH_NEXT);

    // Either side may dial: the listener picks from its own list, newest first.
    for (from, to, server, expected) in [
        (&old, &new, "new", 1),
        (&new, &old, "old", 1),
        (&new, &new2, "new2", 2),
        (&new2, &new, SEED_SERVER_NAME, 2),
        (&old, &old, "old", 1),
    ] {
        let (dialer, listener) = dial(from, to, server).await;
        let (dialer, listener) = (dialer.unwrap(), listener.unwrap());
        assert_eq!(
            versions_chosen(&dialer, &listener),
            (Some(expected), Some(expected)),
            "{:?} dialing {:?}",
            from.tls.wire_versions,
            to.tls.wire_versions
        );
    }
}

#[tokio::test]
async fn nodes_with_no_wire_version_in_common_are_refused_with_no_application_protocol() {
    let dir = pki(&["old", "v2only"]);
    let old = Node::speaking(dir.path(), "old", WireVersions::DEFAULT);
    // A build that dropped version 1 (what a release two steps ahead would be).
    let v2_only = Node::speaking(dir.path(), "v2only", WireVersions::new(2, 2).unwrap());
    for (from, to, server) in [(&old, &v2_only, "v2only"), (&v2_only, &old, "old")] {
        let (dialer, listener) = dial(from, to, server).await;
        let listener_error = listener.unwrap_err();
        assert_eq!(
            crypto_alert(&listener_error),
            Some(AlertDescription::NoApplicationProtocol),
            "{listener_error:?}"
        );
        let dialer_error = refusal_seen_by_dialer(dialer).await;
        assert_eq!(
            crypto_alert(&dialer_error),
            Some(AlertDescription::NoApplicationProtocol),
            "{dialer_error:?}"
        );
    }
}

#[tokio::test]
async fn a_dialer_that_offers_no_alpn_is_refused() {
    // No vigil build ever dialed without ALPN (the first offered `vigil/1`), so
    // this is a foreign or hand-made client: QUIC requires ALPN (RFC 9001) and
    // rustls refuses it before any vigil code runs.
    let dir = pki(&["n1", "n2"]);
    let n1 = Node::start(dir.path(), "n1");
    let n2 = Node::start(dir.path(), "n2");
    let mut bare = (*n1.tls.client).clone();
    bare.alpn_protocols.clear();
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(Arc::new(bare)).unwrap(),
    ));
    let connecting = n1.endpoint.connect_with(client, n2.addr(), "n2").unwrap();
    let accepting = async { n2.endpoint.accept().await.unwrap().await };
    let (dialer, listener) = tokio::join!(connecting, accepting);
    let listener_error = listener.unwrap_err();
    assert_eq!(
        crypto_alert(&listener_error),
        Some(AlertDescription::NoApplicationProtocol),
        "{listener_error:?}"
    );
    let dialer_error = refusal_seen_by_dialer(dialer).await;
    assert_eq!(
        crypto_alert(&dialer_error),
        Some(AlertDescription::NoApplicationProtocol),
        "{dialer_error:?}"
    );
}

#[tokio::test]
async fn dialing_a_seed_learns_its_name_from_the_certificate() {
    let dir = pki(&["n1", "n2"]);
    let n1 = Node::start(dir.path(), "n1");
    let n2 = Node::start(dir.path(), "n2");

    let (dialer, listener) = dial(&n1, &n2, SEED_SERVER_NAME).await;
    assert_eq!(
        peer_node_name(dialer.unwrap().peer_identity()).unwrap(),
        name("n2")
    );
    assert_eq!(
        peer_node_name(listener.unwrap().peer_identity()).unwrap(),
        name("n1")
    );
}

#[tokio::test]
async fn listener_refuses_a_client_certificate_from_another_ca() {
    let ours = pki(&["n2"]);
    let theirs = pki(&[]);
    // The intruder trusts our CA (so it accepts n2) but its own certificate comes from
    // another CA: only the listener's check can stop it.
    let intruder_pki = mixed_pki("n1", theirs.path(), &[ours.path(), theirs.path()]);
    let intruder = Node::start(intruder_pki.path(), "n1");
    let n2 = Node::start(ours.path(), "n2");

    let (dialer, listener) = dial(&intruder, &n2, "n2").await;
    let listener_error = listener.unwrap_err();
    println!("listener refused the intruder: {listener_error}");
    assert_eq!(
        crypto_alert(&listener_error),
        Some(AlertDescription::UnknownCA),
        "{listener_error:?}"
    );
    let dialer_error = refusal_seen_by_dialer(dialer).await;
    println!("the intruder saw: {dialer_error}");
    assert_eq!(
        crypto_alert(&dialer_error),
        Some(AlertDescription::UnknownCA),
        "{dialer_error:?}"
    );
}

#[tokio::test]
async fn dialing_a_node_name_fails_when_another_node_answers() {
    let dir = pki(&["n1", "n3"]);
    let n1 = Node::start(dir.path(), "n1");
    let n3 = Node::start(dir.path(), "n3");

    let (dialer, listener) = dial(&n1, &n3, "n2").await;
    let dialer_error = dialer.unwrap_err();
    println!("dialing n2, reaching n3: {dialer_error}");
    assert_eq!(
        crypto_alert(&dialer_error),
        Some(AlertDescription::BadCertificate),
        "{dialer_error:?}"
    );
    assert!(listener.is_err());
}

#[tokio::test]
async fn dialer_refuses_a_server_certificate_from_another_ca() {
    let ours = pki(&["n1"]);
    let theirs = pki(&[]);
    // The impostor accepts our client certificate, so only the dialer's check stops it.
    let impostor_pki = mixed_pki("n2", theirs.path(), &[ours.path(), theirs.path()]);
    let impostor = Node::start(impostor_pki.path(), "n2");
    let n1 = Node::start(ours.path(), "n1");

    for server_name in ["n2", SEED_SERVER_NAME] {
        let (dialer, listener) = dial(&n1, &impostor, server_name).await;
        let dialer_error = dialer.unwrap_err();
        println!("dialing {server_name}, reaching an impostor: {dialer_error}");
        assert_eq!(
            crypto_alert(&dialer_error),
            Some(AlertDescription::UnknownCA),
            "{dialer_error:?}"
        );
        assert!(listener.is_err());
    }
}

/// Counts the session tickets the client receives, so a test can wait for one instead
/// of sleeping.
#[derive(Debug)]
struct TicketCounter {
    inner: ClientSessionMemoryCache,
    received: AtomicUsize,
    notify: Notify,
}

impl TicketCounter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: ClientSessionMemoryCache::new(256),
            received: AtomicUsize::new(0),
            notify: Notify::new(),
        })
    }

    async fn wait_for_tickets(&self, at_least: usize) {
        loop {
            let notified = self.notify.notified();
            if self.received.load(Ordering::SeqCst) >= at_least {
                return;
            }
            notified.await;
        }
    }
}

impl ClientSessionStore for TicketCounter {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(server_name, value);
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(server_name, value);
        self.received.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// The listener's session cache, counting the sessions it hands out for resumption
/// (rustls' default cache makes each ticket single-use, so one take = one resumption).
#[derive(Debug)]
struct ResumptionCounter {
    inner: Arc<dyn StoresServerSessions>,
    resumed: AtomicUsize,
}

impl ResumptionCounter {
    fn resumed(&self) -> usize {
        self.resumed.load(Ordering::SeqCst)
    }
}

impl StoresServerSessions for ResumptionCounter {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let value = self.inner.take(key);
        if value.is_some() {
            self.resumed.fetch_add(1, Ordering::SeqCst);
        }
        value
    }
    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// `tls`'s client configuration, unchanged except that its session cache reports
/// arriving tickets.
fn counting_client(tls: &NodeTls) -> (quinn::ClientConfig, Arc<TicketCounter>) {
    let counter = TicketCounter::new();
    let mut client = (*tls.client).clone();
    client.resumption = Resumption::store(counter.clone());
    let crypto = QuicClientConfig::try_from(Arc::new(client)).unwrap();
    (quinn::ClientConfig::new(Arc::new(crypto)), counter)
}

/// Sends one small message on a fresh stream and returns when the listener has read it.
async fn deliver(dialer: &Connection, listener: &Connection) {
    let send = async {
        let mut stream = dialer.open_uni().await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        stream.finish().unwrap();
    };
    let receive = async {
        let mut stream = listener.accept_uni().await.unwrap();
        assert_eq!(stream.read_to_end(16).await.unwrap(), b"ping");
    };
    tokio::join!(send, receive);
}

#[tokio::test]
async fn resumed_and_zero_rtt_connections_keep_both_identities() {
    let dir = pki(&["n1", "n2"]);
    let n1 = Node::start(dir.path(), "n1");
    let (n2, resumptions) = Node::start_counting_resumptions(dir.path(), "n2");
    let (client, tickets) = counting_client(&n1.tls);

    // First contact: nothing to resume, so no 0-RTT either.
    let connecting = n1
        .endpoint
        .connect_with(client.clone(), n2.addr(), "n2")
        .unwrap();
    let Err(connecting) = connecting.into_0rtt() else {
        panic!("0-RTT offered without a ticket");
    };
    let accepting = async { n2.endpoint.accept().await.unwrap().await };
    let (first, _first_listener) = tokio::join!(connecting, accepting);
    // Kept open: the tickets arrive after the handshake, and closing the connection
    // first could lose them.
    let _first = first.unwrap();
    tickets.wait_for_tickets(1).await;
    assert_eq!(resumptions.resumed(), 0);

    // Second connection in 0-RTT: the early data is accepted, and both sides still see
    // each other's name (restored from the resumed session).
    let connecting = n1
        .endpoint
        .connect_with(client.clone(), n2.addr(), "n2")
        .unwrap();
    let (dialer, accepted) = connecting
        .into_0rtt()
        .map_err(|_| "a ticket was received but 0-RTT was not offered")
        .unwrap();
    let listener = n2.endpoint.accept().await.unwrap().await.unwrap();
    deliver(&dialer, &listener).await;
    assert!(accepted.await, "the listener refused the 0-RTT data");
    assert_eq!(resumptions.resumed(), 1);
    assert_eq!(peer_node_name(dialer.peer_identity()).unwrap(), name("n2"));
    assert_eq!(
        peer_node_name(listener.peer_identity()).unwrap(),
        name("n1")
    );

    // Third connection: plain resumption, no early data.
    let connecting = n1
        .endpoint
        .connect_with(client.clone(), n2.addr(), "n2")
        .unwrap();
    let accepting = async { n2.endpoint.accept().await.unwrap().await };
    let (dialer, listener) = tokio::join!(connecting, accepting);
    assert_eq!(resumptions.resumed(), 2);
    assert_eq!(
        peer_node_name(dialer.unwrap().peer_identity()).unwrap(),
        name("n2")
    );
    assert_eq!(
        peer_node_name(listener.unwrap().peer_identity()).unwrap(),
        name("n1")
    );
}

#[tokio::test]
async fn after_a_reload_a_revoked_node_is_refused_both_ways_even_with_a_session_to_resume() {
    let dir = pki(&["n1", "n2"]);
    let mut n1 = Node::start(dir.path(), "n1");
    let n2 = Node::start(dir.path(), "n2");
    // n2 holds a session ticket of n1 from before the revocation.
    let (client, tickets) = counting_client(&n2.tls);
    let connecting = n2
        .endpoint
        .connect_with(client.clone(), n1.addr(), "n1")
        .unwrap();
    let accepting = async { n1.endpoint.accept().await.unwrap().await };
    let (first, _first_listener) = tokio::join!(connecting, accepting);
    let _first = first.unwrap();
    tickets.wait_for_tickets(1).await;

    vigil::pki::revoke(dir.path(), &vigil::pki::RevokeTarget::Name(name("n2")), 30).unwrap();
    // What Transport::set_tls does with a reloaded configuration.
    let reloaded = n1.tls.reload().unwrap();
    n1.endpoint
        .set_server_config(Some(reloaded.quinn_server_config().unwrap()));
    n1.endpoint
        .set_default_client_config(reloaded.quinn_client_config().unwrap());

    // n2 dials with its ticket: the new configuration does not know the session, so
    // the handshake is a full one and the listener refuses the revoked certificate.
    let connecting = n2
        .endpoint
        .connect_with(client.clone(), n1.addr(), "n1")
        .unwrap();
    let accepting = async { n1.endpoint.accept().await.unwrap().await };
    let (dialer, listener) = tokio::join!(connecting, accepting);
    let listener_error = listener.unwrap_err();
    assert_eq!(
        crypto_alert(&listener_error),
        Some(AlertDescription::CertificateRevoked),
        "{listener_error:?}"
    );
    let dialer_error = refusal_seen_by_dialer(dialer).await;
    assert_eq!(
        crypto_alert(&dialer_error),
        Some(AlertDescription::CertificateRevoked),
        "{dialer_error:?}"
    );

    // n1 dials n2, by name and as a seed: its check of n2's certificate refuses it.
    for server_name in ["n2", SEED_SERVER_NAME] {
        let (dialer, listener) = dial(&n1, &n2, server_name).await;
        let dialer_error = dialer.unwrap_err();
        assert_eq!(
            crypto_alert(&dialer_error),
            Some(AlertDescription::CertificateRevoked),
            "{server_name}: {dialer_error:?}"
        );
        assert!(listener.is_err());
    }
}

#[tokio::test]
async fn key_file_loosened_after_start_does_not_affect_running_node() {
    // The mode check is a load-time check: a running node keeps working.
    let dir = pki(&["n1", "n2"]);
    let n1 = Node::start(dir.path(), "n1");
    let n2 = Node::start(dir.path(), "n2");
    fs::set_permissions(dir.path().join("n1.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let (dialer, listener) = dial(&n1, &n2, "n2").await;
    dialer.unwrap();
    listener.unwrap();
    assert!(load_node_tls(dir.path(), &name("n1")).is_err());
}

struct Stats(Vec<Duration>);

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = self.0.clone();
        v.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "n={} min={:.0}us median={:.0}us max={:.0}us",
            v.len(),
            us(v[0]),
            us(v[v.len() / 2]),
            us(v[v.len() - 1])
        )
    }
}

/// Cost of a connection on loopback, printed for the docs (run with `--nocapture`,
/// ideally `--release`). "handshake" = until both ends have an established connection;
/// "first message" = until the listener has read a 4-byte stream from the dialer.
#[tokio::test]
async fn measure_cold_resumed_and_zero_rtt_handshakes() {
    const ROUNDS: usize = 25;
    let dir = pki(&["n1", "n2"]);
    let n1 = Node::start(dir.path(), "n1");
    let (n2, resumptions) = Node::start_counting_resumptions(dir.path(), "n2");

    let mut cold = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // A fresh session cache each time: nothing to resume.
        let (client, _) = counting_client(&n1.tls);
        let start = Instant::now();
        let connecting = n1.endpoint.connect_with(client, n2.addr(), "n2").unwrap();
        let accepting = async { n2.endpoint.accept().await.unwrap().await };
        let (dialer, listener) = tokio::join!(connecting, accepting);
        let (dialer, listener) = (dialer.unwrap(), listener.unwrap());
        cold.0.push(start.elapsed());
        deliver(&dialer, &listener).await;
        cold.1.push(start.elapsed());
        dialer.close(0u32.into(), b"done");
    }

    let (client, tickets) = counting_client(&n1.tls);
    let mut resumed = (Vec::new(), Vec::new());
    let mut zero_rtt = Vec::new();
    let mut zero_rtt_refused = 0;
    let warm = n1
        .endpoint
        .connect_with(client.clone(), n2.addr(), "n2")
        .unwrap();
    let accepting = async { n2.endpoint.accept().await.unwrap().await };
    let (warm, _) = tokio::join!(warm, accepting);
    for round in 0..2 * ROUNDS {
        tickets.wait_for_tickets(round + 1).await;
        let start = Instant::now();
        let connecting = n1
            .endpoint
            .connect_with(client.clone(), n2.addr(), "n2")
            .unwrap();
        if round % 2 == 0 {
            let accepting = async { n2.endpoint.accept().await.unwrap().await };
            let (dialer, listener) = tokio::join!(connecting, accepting);
            let (dialer, listener) = (dialer.unwrap(), listener.unwrap());
            resumed.0.push(start.elapsed());
            deliver(&dialer, &listener).await;
            resumed.1.push(start.elapsed());
            dialer.close(0u32.into(), b"done");
        } else {
            let (dialer, accepted) = connecting.into_0rtt().map_err(|_| ()).unwrap();
            // The listener also goes 0.5-RTT, reading the early data before the
            // handshake completes, as a probe handler would.
            let incoming = n2.endpoint.accept().await.unwrap();
            let (listener, _) = incoming
                .accept()
                .unwrap()
                .into_0rtt()
                .map_err(|_| ())
                .unwrap();
            deliver(&dialer, &listener).await;
            zero_rtt.push(start.elapsed());
            if !accepted.await {
                zero_rtt_refused += 1;
            }
            dialer.close(0u32.into(), b"done");
        }
    }
    drop(warm);
    // Otherwise the "resumed" figures would silently be full handshakes.
    assert_eq!(resumptions.resumed(), 2 * ROUNDS);

    println!("TLS over QUIC on loopback ({ROUNDS} rounds each):");
    println!("  cold full handshake:      {}", Stats(cold.0));
    println!("  resumed handshake:        {}", Stats(resumed.0));
    println!("  cold, first message:      {}", Stats(cold.1));
    println!("  resumed, first message:   {}", Stats(resumed.1));
    println!(
        "  0-RTT, first message:     {} ({zero_rtt_refused} of {ROUNDS} refused early data)",
        Stats(zero_rtt)
    );
}
