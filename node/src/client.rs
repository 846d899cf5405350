//! A small HTTP/1.1 client for the node's Unix socket, used by the CLI, the demo,
//! the test harness and the benchmarks.

use std::io;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{AgentJson, ErrorJson, HealthJson, MemberJson, PutJson};
use crate::events::EventRecord;

/// Longest response body read into memory (members of a very large cluster fit).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest single line of the event stream.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}. Fix: {}", connect_fix(.source))]
    Connect { path: PathBuf, source: io::Error },
    #[error("HTTP error talking to {path}: {message}")]
    Http { path: PathBuf, message: String },
    #[error("{status}: {error} ({code})")]
    Api {
        status: u16,
        error: String,
        code: String,
    },
    #[error("unexpected response: {0}")]
    Decode(String),
}

/// What to do about a failed connect.
fn connect_fix(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        "the socket's mode and group (socket_mode, socket_group; 0660 and the node's group by default) do not let this user connect: run as the node's user or a member of the socket's group, and check that every directory on the path is searchable"
    } else {
        "start the node (`vigil agent`) or point --socket / VIGIL_SOCKET at its socket"
    }
}

/// A response: status, headers and body.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

async fn request(
    socket: &Path,
    path_and_query: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    send(socket, Method::GET, path_and_query, Bytes::new()).await
}

async fn send(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Bytes,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
    let http_err = |e: hyper::Error| ClientError::Http {
        path: socket.to_path_buf(),
        message: e.to_string(),
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, "vigil")
        .header(hyper::header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .map_err(|e| ClientError::Http {
            path: socket.to_path_buf(),
            message: e.to_string(),
        })?;
    sender.send_request(req).await.map_err(http_err)
}

/// GET, reading the whole body (bounded).
pub async fn get(socket: &Path, path_and_query: &str) -> Result<Reply, ClientError> {
    call(socket, Method::GET, path_and_query, Bytes::new()).await
}

/// Any request, reading the whole body (bounded).
pub async fn call(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Bytes,
) -> Result<Reply, ClientError> {
    let response = send(socket, method, path_and_query, body).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Http {
            path: socket.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(ClientError::Decode(format!(
                    "body larger than {MAX_BODY} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Reply {
        status,
        headers,
        body: out.freeze(),
    })
}

fn json_reply<T: DeserializeOwned>(reply: &Reply) -> Result<T, ClientError> {
    if !(200..300).contains(&reply.status) {
        return Err(api_error(reply));
    }
    serde_json::from_slice(&reply.body).map_err(|e| ClientError::Decode(e.to_string()))
}

/// Registers `agent` with the node (which becomes its owner); `meta` is JSON text.
pub async fn register(socket: &Path, agent: &str, meta: &str) -> Result<AgentJson, ClientError> {
    let reply = call(
        socket,
        Method::PUT,
        &format!("/v1/agents/{agent}"),
        Bytes::copy_from_slice(meta.as_bytes()),
    )
    .await?;
    json_reply(&reply)
}

pub async fn agents(socket: &Path) -> Result<Vec<AgentJson>, ClientError> {
    get_json(socket, "/v1/agents").await
}

/// Puts a snapshot of `agent` (owned by this node); `ack` is quorum, all or local.
pub async fn put_snapshot(
    socket: &Path,
    agent: &str,
    body: Bytes,
    ack: Option<&str>,
) -> Result<PutJson, ClientError> {
    let path = match ack {
        Some(a) => format!("/v1/agents/{agent}/snapshot?ack={a}"),
        None => format!("/v1/agents/{agent}/snapshot"),
    };
    let reply = call(socket, Method::PUT, &path, body).await?;
    json_reply(&reply)
}

/// A snapshot read back.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub epoch: u64,
    pub seq: u64,
    pub body: Bytes,
}

/// The latest snapshot of `agent` (or version `seq`), from any node's point of view.
pub async fn get_snapshot(
    socket: &Path,
    agent: &str,
    seq: Option<u64>,
) -> Result<Snapshot, ClientError> {
    let path = match seq {
        Some(s) => format!("/v1/agents/{agent}/snapshot?seq={s}"),
        None => format!("/v1/agents/{agent}/snapshot"),
    };
    let reply = get(socket, &path).await?;
    if reply.status != 200 {
        return Err(api_error(&reply));
    }
    let header = |name: &str| -> Result<u64, ClientError> {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Decode(format!("missing or bad {name} header")))
    };
    Ok(Snapshot {
        epoch: header(crate::api::HEADER_EPOCH)?,
        seq: header(crate::api::HEADER_SEQ)?,
        body: reply.body.clone(),
    })
}

fn api_error(reply: &Reply) -> ClientError {
    match serde_json::from_slice::<ErrorJson>(&reply.body) {
        Ok(e) => ClientError::Api {
            status: reply.status,
            error: e.error,
            code: e.code,
        },
        Err(_) => ClientError::Api {
            status: reply.status,
            error: String::from_utf8_lossy(&reply.body).into_owned(),
            code: "unknown".into(),
        },
    }
}

/// GET a JSON document; non-2xx statuses become [`ClientError::Api`].
pub async fn get_json<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, ClientError> {
    let reply = get(socket, path).await?;
    if !(200..300).contains(&reply.status) {
        return Err(api_error(&reply));
    }
    serde_json::from_slice(&reply.body).map_err(|e| ClientError::Decode(e.to_string()))
}

pub async fn members(socket: &Path) -> Result<Vec<MemberJson>, ClientError> {
    get_json(socket, "/v1/members").await
}

/// Health is answered with 503 while the node is not an active member; both carry
/// the same document.
pub async fn health(socket: &Path) -> Result<HealthJson, ClientError> {
    let reply = get(socket, "/v1/health").await?;
    match serde_json::from_slice::<HealthJson>(&reply.body) {
        Ok(h) if reply.status == 200 || reply.status == 503 => Ok(h),
        _ => Err(api_error(&reply)),
    }
}

/// A live `/v1/events` stream.
pub struct EventStream {
    body: hyper::body::Incoming,
    buf: BytesMut,
}

/// One line of the event stream: an event, or the final error line of a stream that
/// was cut off.
#[derive(Debug)]
// Items are consumed one at a time as they arrive; boxing the event would cost an
// allocation per line for no memory saved.
#[allow(clippy::large_enum_variant)]
pub enum StreamItem {
    Event(EventRecord),
    Error(ErrorJson),
}

pub async fn events(socket: &Path, since: Option<u64>) -> Result<EventStream, ClientError> {
    let path = match since {
        Some(s) => format!("/v1/events?since={s}"),
        None => "/v1/events".to_string(),
    };
    let response = request(socket, &path).await?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(api_error(&Reply {
            status,
            headers: hyper::HeaderMap::new(),
            body,
        }));
    }
    Ok(EventStream {
        body: response.into_body(),
        buf: BytesMut::new(),
    })
}

impl EventStream {
    /// The next line, or `None` when the node closed the stream.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let line = &line[..pos];
                if line.is_empty() {
                    continue;
                }
                return match serde_json::from_slice::<EventRecord>(line) {
                    Ok(event) => Ok(Some(StreamItem::Event(event))),
                    Err(_) => serde_json::from_slice::<ErrorJson>(line)
                        .map(|e| Some(StreamItem::Error(e)))
                        .map_err(|e| ClientError::Decode(e.to_string())),
                };
            }
            if self.buf.len() > MAX_LINE {
                return Err(ClientError::Decode(format!(
                    "event line longer than {MAX_LINE} bytes"
                )));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Decode(e.to_string()));
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}

/// Like [`register`], with the agent's adoption priority (`?priority=N`; higher
/// priorities are adopted first when standby capacity is short). `None` is exactly
/// [`register`].
pub async fn register_with_priority(
    socket: &Path,
    agent: &str,
    meta: &str,
    priority: Option<i32>,
) -> Result<AgentJson, ClientError> {
    let path = match priority {
        Some(p) => format!("/v1/agents/{agent}?priority={p}"),
        None => format!("/v1/agents/{agent}"),
    };
    let reply = call(
        socket,
        Method::PUT,
        &path,
        Bytes::copy_from_slice(meta.as_bytes()),
    )
    .await?;
    json_reply(&reply)
}

/// POST with an empty body, expecting a JSON answer.
async fn post_json<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, ClientError> {
    let reply = call(socket, Method::POST, path, Bytes::new()).await?;
    json_reply(&reply)
}

/// One heartbeat of a local agent. A 409 with code `not_owner`, `agent_fenced` or
/// `agent_isolated` means the agent must stop.
pub async fn heartbeat(
    socket: &Path,
    agent: &str,
) -> Result<crate::api::HeartbeatJson, ClientError> {
    post_json(socket, &format!("/v1/agents/{agent}/heartbeat")).await
}

/// Isolates (quarantines) an agent: no heartbeats, restarts or adoption until recovered.
pub async fn isolate_agent(socket: &Path, agent: &str) -> Result<AgentJson, ClientError> {
    post_json(socket, &format!("/v1/agents/{agent}/isolate")).await
}

/// Ends an agent's isolation.
pub async fn recover_agent(socket: &Path, agent: &str) -> Result<AgentJson, ClientError> {
    post_json(socket, &format!("/v1/agents/{agent}/recover")).await
}

/// Isolates this node.
pub async fn isolate_node(socket: &Path) -> Result<crate::api::NodeIsolationJson, ClientError> {
    post_json(socket, "/v1/node/isolate").await
}

/// Ends this node's isolation.
pub async fn recover_node(socket: &Path) -> Result<crate::api::NodeIsolationJson, ClientError> {
    post_json(socket, "/v1/node/recover").await
}

/// One agent as this node knows it; a 404 (`unknown_agent`) when it knows none.
pub async fn agent(socket: &Path, agent: &str) -> Result<AgentJson, ClientError> {
    get_json(socket, &format!("/v1/agents/{agent}")).await
}

/// The node's effective settings (`GET /v1/config`).
pub async fn config(socket: &Path) -> Result<crate::runtime::SettingsJson, ClientError> {
    get_json(socket, "/v1/config").await
}

/// Changes live settings (`PUT /v1/config`); a refusal is a 400 naming the setting.
pub async fn set_config(
    socket: &Path,
    patch: &serde_json::Value,
) -> Result<crate::runtime::SettingsJson, ClientError> {
    let body = Bytes::from(patch.to_string());
    let reply = call(socket, Method::PUT, "/v1/config", body).await?;
    json_reply(&reply)
}

/// Reloads the node's certificates (`POST /v1/tls/reload`).
pub async fn tls_reload(socket: &Path) -> Result<crate::api::TlsReloadJson, ClientError> {
    let reply = call(socket, Method::POST, "/v1/tls/reload", Bytes::new()).await?;
    json_reply(&reply)
}
