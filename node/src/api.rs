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
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::events::{SinceError, Subscription};
use crate::metrics::{Metrics, RouteLabel};

/// Socket file permissions: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;
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
}

/// A question for the owner task.
pub enum ApiRequest {
    Members(oneshot::Sender<Vec<MemberJson>>),
    Health(oneshot::Sender<HealthJson>),
    Subscribe {
        since: Option<u64>,
        reply: oneshot::Sender<Result<Subscription, SinceError>>,
    },
}

#[derive(Clone)]
struct ApiState {
    owner: mpsc::Sender<ApiRequest>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
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
}

/// Binds the API socket. A leftover socket file is removed only after a connection
/// to it was refused, so a live node on the same path makes startup fail instead.
pub fn bind_socket(path: &Path) -> Result<UnixListener, SocketError> {
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
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_err)?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    owner: mpsc::Sender<ApiRequest>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = ApiState {
        owner,
        metrics,
        registry,
    };
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/members", get(members))
        .route("/v1/events", get(events))
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
    };
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/API.md (GET /v1/health, /v1/members, /v1/events, /metrics)",
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
    let unavailable = || {
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the node is shutting down or overloaded; retry shortly",
        )
    };
    let (tx, rx) = oneshot::channel();
    state.owner.try_send(make(tx)).map_err(|_| unavailable())?;
    match tokio::time::timeout(OWNER_TIMEOUT, rx).await {
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

async fn events(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let since = match parse_since(query.as_deref()) {
        Ok(since) => since,
        Err(response) => return response,
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
                    })
                    .unwrap_or_default();
                    line.push(b'\n');
                    line
                }
            };
            std::future::ready(Some(Ok::<Bytes, Infallible>(Bytes::from(line))))
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
        let live = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(bind_socket(&path), Err(SocketError::InUse { .. })));
        drop(live);
        // The file stays behind, as after a crash; nobody listens any more.
        assert!(path.exists());
        let _again = bind_socket(&path).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind_socket(&file),
            Err(SocketError::NotASocket { .. })
        ));
    }
}
