//! The local HTTP/1.1 + JSON API on the node's Unix socket.
//!
//! Handlers hold no membership state: they ask the owner task through a bounded
//! channel and wait for its answer. docs/API.md is the reference.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::extract::{Extension, MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::config::ApiAccess;
use crate::events::{SinceError, Subscription};
use crate::listener::{Gate, Listener, Peer, Reason, UidSlots};
use crate::metrics::{Metrics, RouteLabel};
use crate::runtime::{MAX_PATCH_BODY, Patch, SettingsJson};
use crate::transport::{LogLimiter, SnapshotBudget};
use vigil_protocol::replication::MAX_META_LEN;
use vigil_protocol::{AckMode, AgentId};

/// Longest query string accepted.
const MAX_QUERY_LEN: usize = 1024;
/// Longest time a handler waits for the owner task.
const OWNER_TIMEOUT: Duration = Duration::from_secs(5);

/// One member, as `/v1/members` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    pub name: String,
    pub addr: String,
    pub zone: String,
    /// `alive`, `suspect` or `down`.
    pub state: String,
    pub generation: u64,
    pub incarnation: u16,
    /// Down because it left on purpose.
    pub left: bool,
    /// This row is the node answering.
    pub local: bool,
    /// When this node last saw the state change (RFC 3339).
    pub state_since: String,
}

/// `/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthJson {
    /// `ok` (an active member), `joining`, `isolated` or `left`.
    pub status: String,
    pub name: String,
    pub zone: String,
    pub addr: String,
    pub generation: u64,
    pub profile: String,
    /// Members alive or suspect, this node included.
    pub live_members: usize,
    /// Every member this node knows, down ones included.
    pub known_members: usize,
    pub version: String,
    pub wire_version: u8,
    pub uptime_secs: u64,
    pub last_event_index: u64,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub error: String,
    pub code: String,
    /// The setting a refused `PUT /v1/config` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A copy holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderJson {
    pub name: String,
    pub zone: String,
}

/// One agent, as `/v1/agents` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentJson {
    pub id: String,
    pub owner: String,
    pub owner_zone: String,
    pub epoch: u64,
    /// The latest acknowledged seq as this node knows it (exact on the owner; the
    /// snapshot GET asks the holders).
    pub latest_seq: u64,
    /// Nodes holding copies (the owner's own copy not included).
    pub holders: Vec<HolderJson>,
    pub meta: serde_json::Value,
    /// This node owns the agent.
    pub owned_here: bool,
    /// Seqs of the versions on this node's disk.
    pub local_versions: Vec<u64>,
    /// Why the agent has fewer copies or zones than configured, if it does.
    pub degraded: Option<String>,
    /// Higher priorities are adopted first when standby capacity is short.
    #[serde(default)]
    pub priority: i32,
    /// An operator isolated the agent: no heartbeats, restarts or adoption until
    /// recovered.
    #[serde(default)]
    pub isolated: bool,
    /// `running` (heartbeating on its owner), `starting` (owned, no heartbeat yet),
    /// `fenced` (its owner lost the lease of its holders), `isolated`, `pending` (its
    /// owner is down and no host can adopt it yet), `failed` (stopped heartbeating
    /// and no host could take it), or `remote` (owned elsewhere; this node does not
    /// know more).
    #[serde(default)]
    pub state: String,
}

/// The answer to an agent heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatJson {
    pub id: String,
    pub epoch: u64,
    /// The heartbeat deadline: the next heartbeat must come within this many ms.
    pub deadline_ms: u64,
}

/// The answer to `POST /v1/node/isolate|recover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIsolationJson {
    pub name: String,
    pub isolated: bool,
}

/// The answer to a snapshot put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutJson {
    pub agent: String,
    pub epoch: u64,
    pub seq: u64,
    /// Copies on disk when the put was acknowledged (the owner first, if its copy counts).
    pub stored_on: Vec<HolderJson>,
    /// Holders still writing when the put was acknowledged.
    pub pending: Vec<HolderJson>,
    /// Zones of `stored_on`.
    pub zones: Vec<String>,
    pub degraded: Option<String>,
}

/// A snapshot read.
#[derive(Debug, Clone)]
pub struct SnapshotReply {
    pub epoch: u64,
    pub seq: u64,
    pub checksum: u64,
    pub body: Bytes,
}

/// An error the owner answers with.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub error: String,
}

impl ApiFailure {
    pub fn bad_request(code: &str, error: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: code.into(),
            error: error.into(),
        }
    }

    pub fn unavailable(error: impl Into<String>) -> Self {
        Self {
            status: 503,
            code: "unavailable".into(),
            error: error.into(),
        }
    }

    fn response(&self) -> Response {
        error_response(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.code,
            self.error.clone(),
        )
    }
}

/// Limits of the snapshot endpoints.
#[derive(Clone)]
pub struct ApiLimits {
    pub max_snapshot: u64,
    pub budget: SnapshotBudget,
    /// How long a put or get may wait for the owner task's answer.
    pub put_wait: Duration,
}

/// Response headers of a snapshot GET.
pub const HEADER_EPOCH: &str = "x-vigil-epoch";
pub const HEADER_SEQ: &str = "x-vigil-seq";
pub const HEADER_CHECKSUM: &str = "x-vigil-checksum";

/// A question for the owner task.
pub enum ApiRequest {
    Members(oneshot::Sender<Vec<MemberJson>>),
    Agents(oneshot::Sender<Vec<AgentJson>>),
    Agent {
        agent: AgentId,
        reply: oneshot::Sender<Option<AgentJson>>,
    },
    Register {
        agent: AgentId,
        meta: String,
        priority: Option<i32>,
        reply: oneshot::Sender<Result<AgentJson, ApiFailure>>,
    },
    Heartbeat {
        agent: AgentId,
        reply: oneshot::Sender<Result<HeartbeatJson, ApiFailure>>,
    },
    /// Isolate (`true`) or recover an agent.
    IsolateAgent {
        agent: AgentId,
        isolated: bool,
        reply: oneshot::Sender<Result<AgentJson, ApiFailure>>,
    },
    IsolateNode {
        isolated: bool,
        reply: oneshot::Sender<NodeIsolationJson>,
    },
    Put {
        agent: AgentId,
        body: Bytes,
        ack: Option<AckMode>,
        reply: oneshot::Sender<Result<PutJson, ApiFailure>>,
    },
    Get {
        agent: AgentId,
        seq: Option<u64>,
        reply: oneshot::Sender<Result<SnapshotReply, ApiFailure>>,
    },
    Health(oneshot::Sender<HealthJson>),
    /// The effective settings (`GET /v1/config`).
    Config(oneshot::Sender<SettingsJson>),
    /// Change live settings (`PUT /v1/config`), validated already.
    SetConfig {
        patch: Patch,
        reply: oneshot::Sender<Result<SettingsJson, ApiFailure>>,
    },
    Subscribe {
        since: Option<u64>,
        reply: oneshot::Sender<Result<Subscription, SinceError>>,
    },
    /// Reload the PKI directory (`POST /v1/tls/reload`).
    TlsReload(oneshot::Sender<Result<TlsReloadJson, ApiFailure>>),
}

/// The answer of a TLS reload: what was loaded and what happened to the open
/// connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsReloadJson {
    /// What started it: `api` or `sighup`.
    pub trigger: String,
    #[serde(flatten)]
    pub loaded: crate::tls::PkiSummary,
    pub connections: crate::transport::Reverified,
}

#[derive(Clone)]
struct ApiState {
    owner: mpsc::Sender<ApiRequest>,
    limits: ApiLimits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    log_limit: Arc<LogLimiter>,
    /// Counts and logs refusals (`vigil_api_refused_total`).
    gate: Gate,
    /// `/v1/events` streams open per uid.
    streams: Arc<UidSlots>,
    /// A request body must arrive whole within this (`api_io_timeout`).
    body_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another process is serving {path}. Fix: stop the other vigil node, or give this one its own --socket"
    )]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket. Fix: remove it or choose another --socket path")]
    NotASocket { path: PathBuf },
    #[error(
        "cannot create socket {path}: {source}. Fix: check that the directory exists and is writable by this user"
    )]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "cannot give socket {path} to group {group} (socket_group): {source}. Fix: run the node as root or as a member of that group, or leave socket_group unset"
    )]
    Group {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
}

/// Binds the API socket with `access.socket_mode` and `access.socket_group`. A
/// leftover socket file is removed only after a connection to it was refused, so a
/// live node on the same path makes startup fail instead.
pub fn bind_socket(path: &Path, access: &ApiAccess) -> Result<UnixListener, SocketError> {
    let io_err = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    // Created owner-only (the umask applies to bind), then opened up to the
    // configured mode and group: nobody else can connect in between. The umask is
    // the process's, but only for these few instructions at startup, and only ever
    // narrower than the usual one.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = bound.map_err(io_err)?;
    if let Some(group) = &access.socket_group {
        std::os::unix::fs::chown(path, None, Some(group.gid)).map_err(|source| {
            SocketError::Group {
                path: path.to_path_buf(),
                group: group.given.clone(),
                source,
            }
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.socket_mode))
        .map_err(io_err)?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` resolves, admitting the callers
/// and within the limits of `access` (crate::listener).
pub async fn serve(
    listener: UnixListener,
    limits: ApiLimits,
    access: ApiAccess,
    owner: mpsc::Sender<ApiRequest>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let gate = Gate::new(Listener::Socket, Arc::clone(&metrics));
    let app = app(limits, &access, owner, metrics, registry, gate.clone());
    crate::listener::serve_socket(listener, app, &access, gate, shutdown).await
}

/// The router [`serve`] runs (also what the fuzz target drives, `crate::fuzzing`).
pub(crate) fn app(
    limits: ApiLimits,
    access: &ApiAccess,
    owner: mpsc::Sender<ApiRequest>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    gate: Gate,
) -> Router {
    router(ApiState {
        owner,
        limits,
        metrics,
        registry,
        log_limit: Arc::new(LogLimiter::default()),
        gate,
        streams: UidSlots::new(access.max_streams_per_uid),
        body_timeout: access.io_timeout,
    })
}

/// Why a request body was not read.
enum BodyError {
    TooLarge,
    Timeout,
}

/// Reads a request body of at most `limit` bytes, within the body timeout; a body
/// that does not arrive in time is counted and logged as a refusal.
async fn read_body(
    state: &ApiState,
    peer: Option<Peer>,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(BodyError::TooLarge),
        Err(_) => {
            state.gate.count(
                Reason::BodyTimeout,
                peer,
                &format!(
                    "the request body did not arrive within {:?} (api_io_timeout)",
                    state.body_timeout
                ),
            );
            Err(BodyError::Timeout)
        }
    }
}

fn body_timeout_response(state: &ApiState) -> Response {
    let mut response = error_response(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {:?} (api_io_timeout); send it whole, or raise api_io_timeout",
            state.body_timeout
        ),
    );
    // The rest of the body may still come: the connection cannot be reused.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", put(register_agent).get(show_agent))
        .route("/v1/agents/{id}/heartbeat", post(heartbeat))
        .route(
            "/v1/agents/{id}/isolate",
            post(|State(s): State<ApiState>, UrlPath(id): UrlPath<String>| {
                isolate_agent(s, id, true)
            }),
        )
        .route(
            "/v1/agents/{id}/recover",
            post(|State(s): State<ApiState>, UrlPath(id): UrlPath<String>| {
                isolate_agent(s, id, false)
            }),
        )
        .route(
            "/v1/node/isolate",
            post(|State(s): State<ApiState>| isolate_node(s, true)),
        )
        .route(
            "/v1/node/recover",
            post(|State(s): State<ApiState>| isolate_node(s, false)),
        )
        .route(
            "/v1/agents/{id}/snapshot",
            put(put_snapshot).get(get_snapshot),
        )
        .route("/v1/config", get(show_config).put(set_config))
        .route("/v1/tls/reload", post(tls_reload))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .metrics
        .api_requests
        .get_or_create(&RouteLabel {
            route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

pub fn error_response(status: StatusCode, code: &str, error: impl Into<String>) -> Response {
    let body = ErrorJson {
        error: error.into(),
        code: code.into(),
        field: None,
    };
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/API.md (GET /v1/health, /v1/members, /v1/events, /v1/agents, /v1/config, /metrics)",
    )
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

/// Sends a request to the owner and waits (bounded) for the answer.
async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Result<T, Response> {
    ask_within(state, OWNER_TIMEOUT, make).await
}

async fn ask_within<T>(
    state: &ApiState,
    wait: Duration,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Result<T, Response> {
    let unavailable = || {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is shutting down or overloaded; retry shortly",
        )
    };
    let (tx, rx) = oneshot::channel();
    state.owner.try_send(make(tx)).map_err(|_| unavailable())?;
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(unavailable()),
    }
}

async fn health(State(state): State<ApiState>) -> Response {
    match ask(&state, ApiRequest::Health).await {
        Ok(health) => {
            let status = if health.status == "ok" {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(health)).into_response()
        }
        Err(response) => response,
    }
}

async fn members(State(state): State<ApiState>) -> Response {
    match ask(&state, ApiRequest::Members).await {
        Ok(members) => axum::Json(members).into_response(),
        Err(response) => response,
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let body = crate::metrics::encode(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn agent_id(raw: &str) -> Result<AgentId, Response> {
    AgentId::new(raw).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "bad_agent_id",
            format!("invalid agent id: {e}"),
        )
    })
}

async fn list_agents(State(state): State<ApiState>) -> Response {
    match ask(&state, ApiRequest::Agents).await {
        Ok(agents) => axum::Json(agents).into_response(),
        Err(response) => response,
    }
}

async fn show_agent(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> Response {
    let agent = match agent_id(&id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match ask(&state, |reply| ApiRequest::Agent { agent, reply }).await {
        Ok(Some(a)) => axum::Json(a).into_response(),
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            format!("agent {id} is not known to this node"),
        ),
        Err(response) => response,
    }
}

/// `PUT /v1/agents/{id}`: registers the agent here; the body, if any, is its JSON
/// metadata (at most 4 KiB).
async fn register_agent(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<Peer>>,
    body: Body,
) -> Response {
    let agent = match agent_id(&id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let priority = match priority_query(query.as_deref()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let bytes = match read_body(&state, peer.map(|p| p.0), body, MAX_META_LEN).await {
        Ok(bytes) => bytes,
        Err(BodyError::Timeout) => return body_timeout_response(&state),
        Err(BodyError::TooLarge) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "meta_too_large",
                format!("agent metadata is limited to {MAX_META_LEN} bytes of JSON"),
            );
        }
    };
    let meta = if bytes.iter().all(u8::is_ascii_whitespace) {
        "{}".to_string()
    } else {
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => v.to_string(),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_meta",
                    format!("agent metadata must be JSON: {e}"),
                );
            }
        }
    };
    let wait = state.limits.put_wait;
    match ask_within(&state, wait, |reply| ApiRequest::Register {
        agent,
        meta,
        priority,
        reply,
    })
    .await
    {
        Ok(Ok(a)) => axum::Json(a).into_response(),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

/// Parses the registration's query: `priority=N` (a 32-bit signed integer).
fn priority_query(query: Option<&str>) -> Result<Option<i32>, Response> {
    let bad = |msg: String| error_response(StatusCode::BAD_REQUEST, "bad_request", msg);
    let Some(query) = query else {
        return Ok(None);
    };
    if query.len() > MAX_QUERY_LEN {
        return Err(bad(format!(
            "query string longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    let mut priority = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("priority", v)) => {
                priority = Some(v.parse::<i32>().map_err(|_| {
                    bad(format!("priority must be an integer (32-bit), got {v:?}"))
                })?);
            }
            _ => {
                return Err(bad(format!(
                    "unknown query parameter {pair:?}; this endpoint accepts only priority"
                )));
            }
        }
    }
    Ok(priority)
}

/// `POST /v1/agents/{id}/heartbeat`.
async fn heartbeat(State(state): State<ApiState>, UrlPath(id): UrlPath<String>) -> Response {
    let agent = match agent_id(&id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match ask(&state, |reply| ApiRequest::Heartbeat { agent, reply }).await {
        Ok(Ok(a)) => axum::Json(a).into_response(),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

async fn isolate_agent(state: ApiState, id: String, isolated: bool) -> Response {
    let agent = match agent_id(&id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match ask(&state, |reply| ApiRequest::IsolateAgent {
        agent,
        isolated,
        reply,
    })
    .await
    {
        Ok(Ok(a)) => axum::Json(a).into_response(),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

async fn isolate_node(state: ApiState, isolated: bool) -> Response {
    match ask(&state, |reply| ApiRequest::IsolateNode { isolated, reply }).await {
        Ok(a) => axum::Json(a).into_response(),
        Err(response) => response,
    }
}

async fn show_config(State(state): State<ApiState>) -> Response {
    match ask(&state, ApiRequest::Config).await {
        Ok(settings) => axum::Json(settings).into_response(),
        Err(response) => response,
    }
}

/// `PUT /v1/config`: a JSON object of live settings (`null` drops a runtime change).
/// Validated here, whole, before the owner applies and persists it.
async fn set_config(
    State(state): State<ApiState>,
    peer: Option<Extension<Peer>>,
    body: Body,
) -> Response {
    let bytes = match read_body(&state, peer.map(|p| p.0), body, MAX_PATCH_BODY).await {
        Ok(bytes) => bytes,
        Err(BodyError::Timeout) => return body_timeout_response(&state),
        Err(BodyError::TooLarge) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a settings patch is limited to {MAX_PATCH_BODY} bytes"),
            );
        }
    };
    let patch = match Patch::from_json(&bytes) {
        Ok(p) => p,
        Err(e) => {
            state.log_limit.warn(
                "config_patch",
                format_args!("refused a settings change: {e}"),
            );
            let body = ErrorJson {
                error: e.to_string(),
                code: e.code().into(),
                field: e.field().map(str::to_string),
            };
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    match ask(&state, |reply| ApiRequest::SetConfig { patch, reply }).await {
        Ok(Ok(settings)) => axum::Json(settings).into_response(),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

/// `POST /v1/tls/reload`: re-reads the PKI directory; a bad file set changes nothing
/// and is answered with the reason. Reading and checking the files takes a few
/// milliseconds, but a reload queued behind another waits for it.
async fn tls_reload(State(state): State<ApiState>) -> Response {
    match ask(&state, ApiRequest::TlsReload).await {
        Ok(Ok(reloaded)) => axum::Json(reloaded).into_response(),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

/// Parses the snapshot endpoints' query: `ack=` for a put, `seq=` for a get.
fn snapshot_query(
    query: Option<&str>,
    allowed: &str,
) -> Result<(Option<AckMode>, Option<u64>), Response> {
    let bad = |msg: String| error_response(StatusCode::BAD_REQUEST, "bad_request", msg);
    let mut ack = None;
    let mut seq = None;
    let Some(query) = query else {
        return Ok((ack, seq));
    };
    if query.len() > MAX_QUERY_LEN {
        return Err(bad(format!(
            "query string longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "ack" if allowed == "ack" => {
                ack = Some(value.parse::<AckMode>().map_err(bad)?);
            }
            "seq" if allowed == "seq" => {
                seq = Some(value.parse::<u64>().map_err(|_| {
                    bad(format!("seq must be a non-negative integer, got {value:?}"))
                })?);
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}; this endpoint accepts only {allowed}"
                )));
            }
        }
    }
    Ok((ack, seq))
}

/// `PUT /v1/agents/{id}/snapshot`: the raw body is the snapshot.
async fn put_snapshot(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<Peer>>,
    request: Request,
) -> Response {
    let agent = match agent_id(&id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (ack, _) = match snapshot_query(query.as_deref(), "ack") {
        Ok(q) => q,
        Err(r) => return r,
    };
    let max = state.limits.max_snapshot;
    let too_large = |len: String| {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "snapshot_too_large",
            format!("snapshot of {len} bytes exceeds the limit of {max} bytes (max_snapshot)"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > max
    {
        return too_large(len.to_string());
    }
    // Room in memory first (a body of unknown length reserves the limit), so many
    // agents pushing at once wait here instead of filling memory.
    let Some(reservation) = state.limits.budget.reserve(declared.unwrap_or(max)).await else {
        return ApiFailure::unavailable("the node is shutting down").response();
    };
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let body = match read_body(&state, peer.map(|p| p.0), request.into_body(), limit).await {
        Ok(b) => b,
        Err(BodyError::Timeout) => return body_timeout_response(&state),
        Err(BodyError::TooLarge) => return too_large(format!("more than {max}")),
    };
    let body = reservation.attach(body.to_vec());
    let wait = state.limits.put_wait;
    match ask_within(&state, wait, |reply| ApiRequest::Put {
        agent,
        body,
        ack,
        reply,
    })
    .await
    {
        Ok(Ok(out)) => axum::Json(out).into_response(),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

/// `GET /v1/agents/{id}/snapshot[?seq=N]`: the latest version (or `seq`) from
/// whichever copy has it; epoch, seq and checksum in headers.
async fn get_snapshot(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let agent = match agent_id(&id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (_, seq) = match snapshot_query(query.as_deref(), "seq") {
        Ok(q) => q,
        Err(r) => return r,
    };
    let wait = state.limits.put_wait;
    match ask_within(&state, wait, |reply| ApiRequest::Get { agent, seq, reply }).await {
        Ok(Ok(snap)) => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(HEADER_EPOCH, snap.epoch)
            .header(HEADER_SEQ, snap.seq)
            .header(HEADER_CHECKSUM, format!("{:016x}", snap.checksum))
            .body(Body::from(snap.body))
            .unwrap_or_else(|_| {
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "response build failed",
                )
            }),
        Ok(Err(f)) => f.response(),
        Err(response) => response,
    }
}

/// Parses `?since=N`; anything else is refused by name.
fn parse_since(query: Option<&str>) -> Result<Option<u64>, Response> {
    let Some(query) = query else { return Ok(None) };
    if query.len() > MAX_QUERY_LEN {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("query string longer than {MAX_QUERY_LEN} bytes"),
        ));
    }
    let mut since = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                let parsed = value.parse::<u64>().map_err(|_| {
                    error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("since must be a non-negative integer event index, got {value:?}"),
                    )
                })?;
                since = Some(parsed);
            }
            other => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter {other:?}; /v1/events accepts only since"),
                ));
            }
        }
    }
    Ok(since)
}

async fn events(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<Peer>>,
) -> Response {
    let since = match parse_since(query.as_deref()) {
        Ok(since) => since,
        Err(response) => return response,
    };
    // A place among the caller's streams, held until its stream ends. Requests that
    // come without a peer (none do on the socket) are not limited here.
    let slot = match peer {
        Some(Extension(peer)) => match state.streams.try_take(peer.uid) {
            Some(slot) => Some(slot),
            None => {
                let limit = state.streams.limit();
                let error = format!(
                    "uid {} has {limit} event streams open, its limit (api_max_streams_per_uid); close one, or raise api_max_streams_per_uid",
                    peer.uid
                );
                state.gate.count(Reason::TooManyStreams, Some(peer), &error);
                return error_response(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", error);
            }
        },
        None => None,
    };
    let subscription = match ask(&state, |reply| ApiRequest::Subscribe { since, reply }).await {
        Ok(Ok(sub)) => sub,
        Ok(Err(e @ SinceError::Expired { .. })) => {
            return error_response(StatusCode::GONE, "events_expired", e.to_string());
        }
        Ok(Err(e @ SinceError::FromFuture { .. })) => {
            return error_response(StatusCode::GONE, "index_from_future", e.to_string());
        }
        Err(response) => return response,
    };
    let backlog = futures_util::stream::iter(subscription.backlog).map(Ok);
    let live = BroadcastStream::new(subscription.live).map(|item| match item {
        Ok(record) => Ok(record),
        Err(BroadcastStreamRecvError::Lagged(missed)) => Err(missed),
    });
    // A subscriber that falls behind gets a final error line naming what it missed and
    // the stream ends; it resumes with ?since= from the last index it saw.
    let lines = backlog
        .chain(live)
        .scan(false, |ended, item| {
            if *ended {
                return std::future::ready(None);
            }
            let line = match item {
                Ok(record) => {
                    let mut line = serde_json::to_vec(&*record).unwrap_or_default();
                    line.push(b'\n');
                    line
                }
                Err(missed) => {
                    *ended = true;
                    let mut line = serde_json::to_vec(&ErrorJson {
                        error: format!(
                            "this client fell {missed} events behind and was cut off; resume with ?since=<last index seen>"
                        ),
                        code: "lagged".into(),
                        field: None,
                    })
                    .unwrap_or_default();
                    line.push(b'\n');
                    line
                }
            };
            std::future::ready(Some(Ok::<Bytes, Infallible>(Bytes::from(line))))
        })
        .map(move |line| {
            // The stream owns the caller's place; dropping the stream frees it.
            let _held = &slot;
            line
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "response build failed",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_and_refuses_junk_by_name() {
        assert_eq!(parse_since(None).ok(), Some(None));
        assert_eq!(parse_since(Some("since=12")).ok(), Some(Some(12)));
        assert!(parse_since(Some("since=-1")).is_err());
        assert!(parse_since(Some("sinse=1")).is_err());
        assert!(parse_since(Some(&"a".repeat(2000))).is_err());
    }

    #[tokio::test]
    async fn a_live_socket_is_not_replaced_but_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let access = ApiAccess::default();
        let live = bind_socket(&path, &access).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(
            bind_socket(&path, &access),
            Err(SocketError::InUse { .. })
        ));
        drop(live);
        // The file stays behind, as after a crash; nobody listens any more.
        assert!(path.exists());
        let _again = bind_socket(&path, &access).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_socket(&file, &access),
            Err(SocketError::NotASocket { .. })
        ));
    }

    #[tokio::test]
    async fn the_socket_gets_the_configured_mode_and_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        // The process's own group: any user may give its files to it.
        let gid = nix::unistd::getegid().as_raw();
        let access = ApiAccess {
            socket_mode: 0o600,
            socket_group: Some(crate::config::SocketGroup {
                gid,
                given: gid.to_string(),
            }),
            ..ApiAccess::default()
        };
        let _live = bind_socket(&path, &access).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.gid(), gid);
    }
}
