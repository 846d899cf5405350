//! A small HTTP/1.1 client for the node's Unix socket, used by the CLI, the demo,
//! the test harness and the benchmarks.

use std::io;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{ErrorJson, HealthJson, MemberJson};
use crate::events::EventRecord;

/// Longest response body read into memory (members of a very large cluster fit).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest single line of the event stream.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {path}: {source}. Fix: start the node (`vigil agent`) or point --socket / VIGIL_SOCKET at its socket"
    )]
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

/// A response: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

async fn request(
    socket: &Path,
    path_and_query: &str,
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
    let req = Request::get(path_and_query)
        .header(hyper::header::HOST, "vigil")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Http {
            path: socket.to_path_buf(),
            message: e.to_string(),
        })?;
    sender.send_request(req).await.map_err(http_err)
}

/// GET, reading the whole body (bounded).
pub async fn get(socket: &Path, path_and_query: &str) -> Result<Reply, ClientError> {
    let response = request(socket, path_and_query).await?;
    let status = response.status().as_u16();
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
        body: out.freeze(),
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
        return Err(api_error(&Reply { status, body }));
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
