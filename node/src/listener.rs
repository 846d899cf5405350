//! The accept loops of the socket API and of the `--metrics-bind` listener: who may
//! talk, and how much one client may hold.
//!
//! axum's own `serve` offers no hook before a connection is served and no way to set
//! hyper's timeouts, so each connection is served here with hyper's HTTP/1.1
//! connection builder:
//!
//! - at accept, before any byte of HTTP is read: the caller's uid (SO_PEERCRED) is
//!   checked against `allow_uids`, then the connection caps (all clients together,
//!   then per uid). A refused caller gets a fixed JSON answer (403, 503 or 429 with
//!   a code) and the connection is closed; the refusal is counted in
//!   `vigil_api_refused_total{listener, reason}` and logged, rate-limited;
//! - a request head must arrive within `api_header_timeout` of connecting or of the
//!   previous answer (hyper's header read timeout, so it is also the idle timeout);
//! - a write that makes no progress for `api_io_timeout` closes the connection
//!   ([`SendTimeout`]), so a client that stops reading (an event stream, a large
//!   snapshot) does not hold its connection and the answer's memory for ever.
//!
//! Body limits and the body timeout are per route, in crate::api.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::time::Sleep;

use crate::api::ErrorJson;
use crate::config::ApiAccess;
use crate::metrics::Metrics;
use crate::transport::LogLimiter;

/// Connections of the `--metrics-bind` listener at once: a few scrapers.
pub const METRICS_MAX_CONNECTIONS: usize = 16;
/// Refused connections being answered at once; beyond it a refused connection is
/// closed without an answer (still counted), so a flood costs no more tasks.
const MAX_ANSWERING: usize = 64;
/// How long a refused connection's request head is waited for (a silent client gets
/// the answer when it runs out), and then how long writing the answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of a refused client's request read (and dropped).
const ANSWER_DRAIN: usize = 16 * 1024;
/// Largest request head (hyper's read buffer; bodies are read through it in chunks).
const MAX_BUF: usize = 64 * 1024;
/// Most header lines in one request.
const MAX_HEADERS: usize = 64;
/// A failed accept (e.g. out of file descriptors) is retried after this pause
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which listener a connection came to (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The API's Unix socket.
    Socket,
    /// The `--metrics-bind` TCP listener.
    Metrics,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Socket => "socket",
            Listener::Metrics => "metrics",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Listener::Socket => "socket API",
            Listener::Metrics => "metrics listener",
        }
    }
}

/// Why a connection or request was refused or closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The caller's uid is not in `allow_uids`.
    UidNotAllowed,
    /// The kernel did not tell the caller's uid.
    NoPeerCredentials,
    /// Every connection of the listener is in use.
    TooManyConnections,
    /// The caller's uid holds `api_max_connections_per_uid` connections.
    TooManyClientConnections,
    /// The caller's uid holds `api_max_streams_per_uid` event streams.
    TooManyStreams,
    /// No complete request head within `api_header_timeout` of connecting (or a
    /// request head begun and not finished in that time). A kept-alive connection
    /// closed after its answers for being idle that long is not counted.
    HeaderTimeout,
    /// A request body did not arrive whole within `api_io_timeout`.
    BodyTimeout,
    /// An answer could not be written for `api_io_timeout` (the client stopped reading).
    SendTimeout,
    /// Malformed HTTP, or a request head over the size limits.
    BadHttp,
}

impl Reason {
    /// The reasons each listener can count (their series start at 0).
    pub const SOCKET: [Reason; 9] = [
        Reason::UidNotAllowed,
        Reason::NoPeerCredentials,
        Reason::TooManyConnections,
        Reason::TooManyClientConnections,
        Reason::TooManyStreams,
        Reason::HeaderTimeout,
        Reason::BodyTimeout,
        Reason::SendTimeout,
        Reason::BadHttp,
    ];
    pub const METRICS: [Reason; 4] = [
        Reason::TooManyConnections,
        Reason::HeaderTimeout,
        Reason::SendTimeout,
        Reason::BadHttp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UidNotAllowed => "uid_not_allowed",
            Reason::NoPeerCredentials => "no_peer_credentials",
            Reason::TooManyConnections => "too_many_connections",
            Reason::TooManyClientConnections => "too_many_client_connections",
            Reason::TooManyStreams => "too_many_streams",
            Reason::HeaderTimeout => "header_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::SendTimeout => "send_timeout",
            Reason::BadHttp => "bad_http",
        }
    }

    /// The rate limiter's key: one log line per listener and reason per interval.
    fn log_key(self, listener: Listener) -> &'static str {
        match (listener, self) {
            (Listener::Socket, r) => r.as_str(),
            (Listener::Metrics, Reason::TooManyConnections) => "metrics_too_many_connections",
            (Listener::Metrics, Reason::HeaderTimeout) => "metrics_header_timeout",
            (Listener::Metrics, Reason::SendTimeout) => "metrics_send_timeout",
            (Listener::Metrics, Reason::BadHttp) => "metrics_bad_http",
            (
                Listener::Metrics,
                Reason::UidNotAllowed
                | Reason::NoPeerCredentials
                | Reason::TooManyClientConnections
                | Reason::TooManyStreams
                | Reason::BodyTimeout,
            ) => "metrics_other",
        }
    }
}

/// The client at the other end of a socket connection, from SO_PEERCRED. Handlers
/// find it in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "uid {} (pid {pid})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// Counts what each uid holds (connections, or event streams) against one limit.
/// A [`UidSlot`] gives its place back when dropped.
#[derive(Debug)]
pub struct UidSlots {
    limit: usize,
    held: Mutex<HashMap<u32, usize>>,
}

impl UidSlots {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for `uid`, or `None` when it holds `limit` already.
    pub fn try_take(self: &Arc<Self>, uid: u32) -> Option<UidSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(uid).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            slots: Arc::clone(self),
            uid,
        })
    }

    /// What `uid` holds now.
    pub fn held(&self, uid: u32) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&uid).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct UidSlot {
    slots: Arc<UidSlots>,
    uid: u32,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Uids that hold nothing take no memory.
                held.remove(&self.uid);
            }
        }
    }
}

/// Counting, logging and answering refusals of one listener.
#[derive(Clone)]
pub struct Gate {
    listener: Listener,
    metrics: Arc<Metrics>,
    log: Arc<LogLimiter>,
    answering: Arc<Semaphore>,
}

impl Gate {
    pub fn new(listener: Listener, metrics: Arc<Metrics>) -> Self {
        Self {
            listener,
            metrics,
            log: Arc::new(LogLimiter::default()),
            answering: Arc::new(Semaphore::new(MAX_ANSWERING)),
        }
    }

    /// Counts a refusal and logs it (at most one line per reason per 10 s; the
    /// counter has them all).
    pub fn count(&self, reason: Reason, peer: Option<Peer>, why: &str) {
        self.metrics
            .count_api_refused(self.listener.as_str(), reason.as_str());
        let who = peer.map_or_else(String::new, |p| format!(" from {p}"));
        self.log.warn(
            reason.log_key(self.listener),
            format_args!(
                "refused a {} client{who}: {why} (reason {}; vigil_api_refused_total counts every refusal, this line is written at most every 10 s per reason)",
                self.listener.what(),
                reason.as_str()
            ),
        );
    }

    /// Refuses a connection before any HTTP is read: counts and logs it, then
    /// answers `status` with a JSON error and closes.
    fn refuse<S>(
        &self,
        stream: S,
        reason: Reason,
        peer: Option<Peer>,
        status: StatusCode,
        error: String,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.count(reason, peer, &error);
        let Ok(permit) = Arc::clone(&self.answering).try_acquire_owned() else {
            // Too many refusals in flight: close without an answer.
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            answer(stream, status, reason.as_str(), error).await;
        });
    }
}

/// Answers a refused connection: waits (at most [`ANSWER_TIMEOUT`]) for the end of
/// the client's request head, without parsing it, then writes a whole HTTP/1.1
/// error answer, half-closes and reads (bounded) what else the client sends.
/// Clients expect the answer after their request: one that came first would be
/// taken as a broken connection (hyper's client drops it), and a client still
/// writing would see its write fail before it reads the answer.
async fn answer<S>(mut stream: S, status: StatusCode, code: &str, error: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut seen = 0;
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        // The last bytes read, to find "\r\n\r\n" across reads.
        let mut tail = [0u8; 4];
        let mut buf = [0u8; 4096];
        while seen < ANSWER_DRAIN {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            seen += n;
            let mut window = tail.to_vec();
            window.extend_from_slice(&buf[..n]);
            if window.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            let keep = window.len() - 4;
            tail.copy_from_slice(&window[keep..]);
        }
        Ok::<(), io::Error>(())
    })
    .await;
    let body = serde_json::to_vec(&ErrorJson {
        error,
        code: code.to_string(),
        field: None,
    })
    .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        while seen < ANSWER_DRAIN {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            seen += n;
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// The limits of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub io: Duration,
}

impl Timeouts {
    pub fn of(access: &ApiAccess) -> Self {
        Self {
            header: access.header_timeout,
            io: access.io_timeout,
        }
    }
}

/// Serves `router` on the API socket until `shutdown` resolves, with the access
/// rules and limits of `access`. Handlers find the caller as a [`Peer`] extension.
pub async fn serve_socket(
    listener: UnixListener,
    router: Router,
    access: &ApiAccess,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let own_uid = nix::unistd::geteuid().as_raw();
    let connections = Arc::new(Semaphore::new(access.max_connections));
    let per_uid = UidSlots::new(access.max_connections_per_uid);
    let timeouts = Timeouts::of(access);
    let open = gate
        .metrics
        .api_connections_gauge(Listener::Socket.as_str());
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    gate.log.warn("api_accept", format_args!("socket API accept failed: {e}; retrying"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                pid: cred.pid(),
            },
            Err(e) => {
                gate.refuse(
                    stream,
                    Reason::NoPeerCredentials,
                    None,
                    StatusCode::FORBIDDEN,
                    format!("the node cannot tell who is calling (SO_PEERCRED failed: {e})"),
                );
                continue;
            }
        };
        if !access.allows(peer.uid, own_uid) {
            gate.refuse(
                stream,
                Reason::UidNotAllowed,
                Some(peer),
                StatusCode::FORBIDDEN,
                format!(
                    "uid {} may not use this node's API: it is not in allow_uids. Fix: add it to allow_uids (--allow-uid, VIGIL_ALLOW_UIDS) and restart the node, or call as an allowed user",
                    peer.uid
                ),
            );
            continue;
        }
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            gate.refuse(
                stream,
                Reason::TooManyConnections,
                Some(peer),
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "all {} API connections are in use (api_max_connections); retry shortly, or raise api_max_connections",
                    access.max_connections
                ),
            );
            continue;
        };
        let Some(slot) = per_uid.try_take(peer.uid) else {
            gate.refuse(
                stream,
                Reason::TooManyClientConnections,
                Some(peer),
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "uid {} has {} API connections open, its limit (api_max_connections_per_uid); close some and retry, or raise api_max_connections_per_uid",
                    peer.uid, access.max_connections_per_uid
                ),
            );
            continue;
        };
        let service = RouterService::new(router.clone(), Some(peer));
        let gate = gate.clone();
        let stopped = stopped.clone();
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            serve_connection(stream, service, timeouts, stopped, &gate, None).await;
            drop((permit, slot));
            open.dec();
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection task holds a permit: all returned means all closed.
    let _ = connections
        .acquire_many(u32::try_from(access.max_connections).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// Serves `router` on the `--metrics-bind` TCP listener until `shutdown` resolves:
/// at most [`METRICS_MAX_CONNECTIONS`] connections, with the socket API's timeouts.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let connections = Arc::new(Semaphore::new(METRICS_MAX_CONNECTIONS));
    let open = gate
        .metrics
        .api_connections_gauge(Listener::Metrics.as_str());
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    gate.log.warn("metrics_accept", format_args!("metrics listener accept failed: {e}; retrying"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            gate.refuse(
                stream,
                Reason::TooManyConnections,
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "all {METRICS_MAX_CONNECTIONS} connections of the metrics listener are in use (a scraper from {from} was refused); retry shortly"
                ),
            );
            continue;
        };
        let service = RouterService::new(router.clone(), None);
        let gate = gate.clone();
        let stopped = stopped.clone();
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            let client = format!(" (client {from})");
            serve_connection(stream, service, timeouts, stopped, &gate, Some(&client)).await;
            drop(permit);
            open.dec();
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let _ = connections
        .acquire_many(u32::try_from(METRICS_MAX_CONNECTIONS).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// Serves one connection until it closes, or until `stop` turns true (then the
/// request in progress is finished first), and counts why it ended when that was
/// one of the limits. The count comes before the client sees the connection close:
/// the socket is closed only when this returns ([`SendTimeout`] leaves shutdown to
/// the drop).
async fn serve_connection<S>(
    stream: S,
    service: RouterService,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    gate: &Gate,
    client: Option<&str>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::clone(&service.served);
    let peer = service.peer;
    let io = SendTimeout::new(stream, timeouts.io);
    let client_closed = io.client_closed();
    let client_sent = io.client_sent();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(MAX_BUF)
        .max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = until_stopped(stop) => {
            stopping = true;
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    let outcome = match result {
        Err(e) if e.is_timeout() && served.load(Ordering::Relaxed) => {
            // Idle after its answers: normal for a client that keeps connections.
            tracing::debug!("closed an idle API connection: {e}");
            None
        }
        Err(e) if e.is_timeout() => Some((
            Reason::HeaderTimeout,
            if client_sent.load(Ordering::Relaxed) {
                format!(
                    "a request head begun and not finished within {:?} (api_header_timeout); the connection was closed",
                    timeouts.header
                )
            } else {
                format!(
                    "connected and sent nothing within {:?} (api_header_timeout); the connection was closed",
                    timeouts.header
                )
            },
        )),
        Err(e) if is_send_stall(&e) => Some((
            Reason::SendTimeout,
            format!(
                "the client read nothing of the answer for {:?} (api_io_timeout); the connection was closed",
                timeouts.io
            ),
        )),
        Err(e) if e.is_parse() || e.is_parse_too_large() => Some((
            Reason::BadHttp,
            format!(
                "malformed HTTP, or a request head over {MAX_BUF} bytes or {MAX_HEADERS} headers: {e}"
            ),
        )),
        Err(e) => {
            // The client went away mid-request or mid-answer: nothing to count.
            tracing::debug!("API connection ended: {e}");
            None
        }
        // Should hyper end a connection whose header timeout ran out before any
        // byte came as if it had closed normally, it is one when nobody asked
        // anything, the client did not close, and the listener is not stopping.
        Ok(())
            if !served.load(Ordering::Relaxed)
                && !client_closed.load(Ordering::Relaxed)
                && !stopping =>
        {
            Some((
                Reason::HeaderTimeout,
                format!(
                    "connected and sent no request within {:?} (api_header_timeout); the connection was closed",
                    timeouts.header
                ),
            ))
        }
        Ok(()) => None,
    };
    if let Some((reason, why)) = outcome {
        gate.count(reason, peer, &format!("{why}{}", client.unwrap_or("")));
    }
}

/// Resolves once the listener stops (or is gone).
async fn until_stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await.map(drop);
}

/// Whether hyper's error is a [`SendTimeout`] that fired.
fn is_send_stall(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<SendStalled>())
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The router as a hyper service, adding the caller to each request.
#[derive(Clone)]
struct RouterService {
    router: Router,
    peer: Option<Peer>,
    /// At least one request came in on this connection (an idle close after it is
    /// not a header timeout).
    served: Arc<AtomicBool>,
}

impl RouterService {
    fn new(router: Router, peer: Option<Peer>) -> Self {
        Self {
            router,
            peer,
            served: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for RouterService {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.served.store(true, Ordering::Relaxed);
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        // A Router is always ready (its poll_ready returns Ready at once), so calling
        // it without poll_ready is what axum's own serve does too.
        let mut router = self.router.clone();
        tower_service::Service::call(&mut router, request)
    }
}

/// The error a stalled write ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client read nothing for the write timeout")]
pub struct SendStalled;

/// Wraps a connection so that a write (or flush) that stays pending for
/// `timeout` fails with [`SendStalled`]: a client that stops reading loses its
/// connection instead of holding it, and the answer's memory, for ever. Progress
/// resets the clock; reads are untouched (hyper's header timeout covers them).
///
/// Hand-written: tokio-io-timeout does the same but is one more dependency for
/// thirty lines.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled_since: Option<Pin<Box<Sleep>>>,
    /// A read returned end-of-file: the client closed (or half-closed) its side.
    client_closed: Arc<AtomicBool>,
    /// A read returned data.
    client_sent: Arc<AtomicBool>,
}

impl<S> SendTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled_since: None,
            client_closed: Arc::new(AtomicBool::new(false)),
            client_sent: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Turns true once a read returns data.
    pub fn client_sent(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.client_sent)
    }

    /// Turns true once a read returns end-of-file.
    pub fn client_closed(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.client_closed)
    }

    /// Called when the inner write is pending: arms the timer on the first call and
    /// fails once it has run out.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled_since = None;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, SendStalled)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, ready: io::Result<T>) -> Poll<io::Result<T>> {
        self.stalled_since = None;
        Poll::Ready(ready)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if room && matches!(polled, Poll::Ready(Ok(()))) {
            let flag = if buf.filled().len() == before {
                &self.client_closed
            } else {
                &self.client_sent
            };
            flag.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => this.progress(r),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => this.progress(r),
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => this.progress(r),
            Poll::Pending => this.pending(cx),
        }
    }

    /// Does nothing: the connection is closed when it is dropped, after
    /// `serve_connection` has counted why it ended, so a client never sees the
    /// close of a refused or timed-out connection before the counter moved.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_slots_count_per_uid_and_give_places_back() {
        let slots = UidSlots::new(2);
        let a1 = slots.try_take(1000).unwrap();
        let _a2 = slots.try_take(1000).unwrap();
        assert!(slots.try_take(1000).is_none(), "a third for the same uid");
        let _b = slots
            .try_take(1001)
            .expect("another uid has its own places");
        drop(a1);
        assert_eq!(slots.held(1000), 1);
        assert!(slots.try_take(1000).is_some());
    }

    /// A reader that never reads: the write fills the pipe, stays pending, and fails
    /// once the timeout has passed with no progress (simulated time, no sleep).
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(1024);
        let mut writer = SendTimeout::new(near, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let err = writer.write_all(&[0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().is_some_and(|e| e.is::<SendStalled>()));
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    /// A slow reader that keeps reading never trips the timeout, however long the
    /// whole transfer takes.
    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_timeout() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut writer = SendTimeout::new(near, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut total = 0;
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += far.read(&mut buf).await.unwrap();
            }
            total
        });
        writer.write_all(&[0u8; 16 * 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 16 * 1024);
    }
}
