//! The built-in example agent (`vigil example-agent`), used by `vigil demo` and the
//! tests, and a reference for writing agents in other languages.
//!
//! It keeps a counter. It learns its agent from the local node (registering it if the
//! node does not know it, refusing to run if another node owns it), restores the
//! counter from `--snapshot FILE` or from the cluster's latest snapshot, then every
//! `--snapshot-ms` adds one and puts a snapshot `{"agent": ID, "count": N}`, and every
//! `--heartbeat-ms` heartbeats (the first one at once: the node times the first
//! heartbeat after a restart or adoption). Heartbeats and puts run concurrently, so a
//! put waiting for its acknowledgement does not delay a heartbeat.
//!
//! It prints NDJSON to stdout ([`Line`]): `started`, every 25th `snapshot`, and
//! `stopping`. It stops, with exit status 0, when the node says the agent must not run
//! here (a 409 with one of [`STOP_CODES`]) or on SIGTERM / SIGINT. A node that cannot
//! be reached, or refuses every request, for [`ExampleAgentConfig::give_up_after`]
//! (30 s) in a row makes it exit with status 1; each failure goes to stderr.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{self, ClientError};

/// Error codes (on a 409) that mean the agent must stop running on this node: another
/// node owns it (`not_owner`, or `stale_epoch` when the put discovered that), its
/// owner lost the lease of its holders (`agent_fenced`), or an operator isolated it
/// (`agent_isolated`).
pub const STOP_CODES: [&str; 4] = ["not_owner", "stale_epoch", "agent_fenced", "agent_isolated"];

/// A `snapshot` line is printed for every this many acknowledged puts.
const SNAPSHOT_LINE_EVERY: u64 = 25;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct ExampleAgentConfig {
    /// The node's API socket.
    pub socket: PathBuf,
    pub id: String,
    /// A file holding the snapshot to restore (as the launcher's `{snapshot}`); an
    /// empty path or an empty file means "ask the cluster".
    pub snapshot: Option<PathBuf>,
    pub snapshot_every: Duration,
    pub heartbeat_every: Duration,
    /// JSON metadata for the registration.
    pub meta: String,
    /// Adoption priority for the registration.
    pub priority: Option<i32>,
    /// How long the node may fail every request before the agent gives up.
    pub give_up_after: Duration,
}

impl ExampleAgentConfig {
    pub const DEFAULT_GIVE_UP: Duration = Duration::from_secs(30);
}

/// The state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    pub agent: String,
    pub count: u64,
}

/// One line of the agent's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    Started {
        agent: String,
        count: u64,
        /// The seq of the snapshot restored from the cluster; `null` when starting
        /// from 0 or from a `--snapshot` file.
        restored_seq: Option<u64>,
        pid: u32,
    },
    Snapshot {
        seq: u64,
        count: u64,
    },
    Stopping {
        /// The node's error code, or `signal`.
        reason: String,
    },
}

/// How a run ended without error (exit status 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The node said the agent must stop here; the error code.
    Told(String),
    /// SIGTERM or SIGINT (the `shutdown` future of [`run`]).
    Signal,
}

#[derive(Debug, thiserror::Error)]
pub enum ExampleAgentError {
    #[error("agent {agent} is owned by node {owner}; start it there")]
    OwnedElsewhere { agent: String, owner: String },
    #[error("invalid --id {id:?}: {reason}")]
    BadId { id: String, reason: String },
    #[error(
        "invalid --meta {meta:?}: {reason}. Fix: pass a JSON object, e.g. '{{\"role\":\"demo\"}}'"
    )]
    BadMeta { meta: String, reason: String },
    #[error("cannot restore agent {agent} from {from}: {reason}")]
    BadSnapshot {
        agent: String,
        from: String,
        reason: String,
    },
    #[error("agent {agent}: the node refused to {what}: {source}")]
    Refused {
        agent: String,
        what: &'static str,
        source: ClientError,
    },
    #[error(
        "agent {agent}: no request to the node succeeded for {after:?}; giving up. Last error: {last}"
    )]
    Unreachable {
        agent: String,
        after: Duration,
        last: ClientError,
    },
    #[error("cannot write to stdout: {0}")]
    Output(#[from] io::Error),
}

impl ExampleAgentError {
    /// 2 for a usage problem or an agent owned elsewhere (starting it again here will
    /// not help), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::OwnedElsewhere { .. } | Self::BadId { .. } | Self::BadMeta { .. } => 2,
            _ => 1,
        }
    }
}

/// The snapshot body for `count`.
pub fn snapshot_body(agent: &str, count: u64) -> Vec<u8> {
    // Serializing two plain fields cannot fail; the fallback keeps it total anyway.
    serde_json::to_vec(&CounterState {
        agent: agent.to_string(),
        count,
    })
    .unwrap_or_default()
}

/// The count in a snapshot body, which must be this agent's.
pub fn parse_snapshot(body: &[u8], agent: &str) -> Result<u64, String> {
    let state: CounterState = serde_json::from_slice(body)
        .map_err(|e| format!("not a counter snapshot ({{\"agent\": ID, \"count\": N}}): {e}"))?;
    if state.agent != agent {
        return Err(format!(
            "it is agent {:?}'s snapshot, not {agent:?}'s",
            state.agent
        ));
    }
    Ok(state.count)
}

/// Where a run starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub count: u64,
    pub seq: Option<u64>,
}

/// A transient failure: the node is down, restarting, busy or cannot reach enough
/// copies; the same request may succeed on the next tick.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::Http { .. } | ClientError::Decode(_) => true,
        ClientError::Api { status, .. } => *status >= 500,
    }
}

fn stop_code(e: &ClientError) -> Option<&str> {
    match e {
        ClientError::Api {
            status: 409, code, ..
        } if STOP_CODES.contains(&code.as_str()) => Some(code),
        _ => None,
    }
}

fn not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, .. })
}

/// Runs the agent until the node tells it to stop, `shutdown` resolves, or it gives
/// up. Lines go to `out`, one flushed write each; failures to stderr.
pub async fn run<W: Write>(
    config: &ExampleAgentConfig,
    shutdown: impl Future<Output = ()>,
    out: &mut W,
) -> Result<Stopped, ExampleAgentError> {
    vigil_protocol::AgentId::new(&config.id).map_err(|e| ExampleAgentError::BadId {
        id: config.id.clone(),
        reason: e.to_string(),
    })?;
    let meta = match serde_json::from_str::<serde_json::Value>(&config.meta) {
        Ok(v) => v.to_string(),
        Err(e) => {
            return Err(ExampleAgentError::BadMeta {
                meta: config.meta.clone(),
                reason: e.to_string(),
            });
        }
    };
    let out = RefCell::new(out);
    let stopped = tokio::select! {
        result = agent_body(config, &meta, &out) => result?,
        () = shutdown => Stopped::Signal,
    };
    let reason = match &stopped {
        Stopped::Told(code) => code.clone(),
        Stopped::Signal => "signal".to_string(),
    };
    print(&out, &Line::Stopping { reason })?;
    Ok(stopped)
}

fn print<W: Write>(out: &RefCell<&mut W>, line: &Line) -> Result<(), ExampleAgentError> {
    let mut text = serde_json::to_vec(line).map_err(io::Error::other)?;
    text.push(b'\n');
    let mut out = out.borrow_mut();
    out.write_all(&text)?;
    out.flush()?;
    Ok(())
}

/// Retries `attempt` every `every` while it fails transiently, for at most
/// `give_up_after`; `Ok(Err(e))` is a definite answer the caller interprets.
async fn until_answered<T, F, Fut>(
    config: &ExampleAgentConfig,
    what: &str,
    every: Duration,
    mut attempt: F,
) -> Result<Result<T, ClientError>, ExampleAgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let since = Instant::now();
    let mut streak = Streak::default();
    loop {
        match attempt().await {
            Err(e) if transient(&e) => {
                if since.elapsed() >= config.give_up_after {
                    return Err(ExampleAgentError::Unreachable {
                        agent: config.id.clone(),
                        after: config.give_up_after,
                        last: e,
                    });
                }
                streak.failed(&config.id, what, &e);
                tokio::time::sleep(every).await;
            }
            answer => {
                streak.succeeded(&config.id, what);
                return Ok(answer);
            }
        }
    }
}

/// Learns (or registers) the agent and restores its state.
pub async fn prepare(
    config: &ExampleAgentConfig,
    meta: &str,
) -> Result<Restored, ExampleAgentError> {
    let socket = config.socket.as_path();
    let id = config.id.as_str();
    let every = config.heartbeat_every;
    let refused = |what, source| ExampleAgentError::Refused {
        agent: id.to_string(),
        what,
        source,
    };
    let agent = match until_answered(config, "the agent lookup", every, || {
        client::agent(socket, id)
    })
    .await?
    {
        Ok(agent) => agent,
        Err(e) if not_found(&e) => until_answered(config, "the registration", every, || {
            client::register_with_priority(socket, id, meta, config.priority)
        })
        .await?
        .map_err(|e| refused("register the agent", e))?,
        Err(e) => return Err(refused("look the agent up", e)),
    };
    if !agent.owned_here {
        return Err(ExampleAgentError::OwnedElsewhere {
            agent: agent.id,
            owner: agent.owner,
        });
    }

    let bad = |from: String, reason: String| ExampleAgentError::BadSnapshot {
        agent: id.to_string(),
        from,
        reason,
    };
    if let Some(path) = config
        .snapshot
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        let body = std::fs::read(path).map_err(|e| {
            bad(
                path.display().to_string(),
                format!("{e}. Fix: pass the file the node restored, or no --snapshot"),
            )
        })?;
        if !body.iter().all(u8::is_ascii_whitespace) {
            let count =
                parse_snapshot(&body, id).map_err(|r| bad(path.display().to_string(), r))?;
            return Ok(Restored { count, seq: None });
        }
    }
    // Starting from 0 after a transient failure would throw the state away, so only a
    // definite "no snapshot" (404) does.
    match until_answered(config, "the snapshot fetch", every, || {
        client::get_snapshot(socket, id, None)
    })
    .await?
    {
        Ok(snap) => {
            let count = parse_snapshot(&snap.body, id)
                .map_err(|r| bad(format!("the cluster's snapshot seq {}", snap.seq), r))?;
            Ok(Restored {
                count,
                seq: Some(snap.seq),
            })
        }
        Err(e) if not_found(&e) => Ok(Restored {
            count: 0,
            seq: None,
        }),
        Err(e) => Err(refused("read the latest snapshot", e)),
    }
}

/// Failures in a row of one kind of request, logged sparingly: the first, then at
/// most one line every [`Streak::LOG_EVERY`], and one when they end.
#[derive(Default)]
struct Streak {
    failures: u64,
    last_logged: Option<Instant>,
}

impl Streak {
    const LOG_EVERY: Duration = Duration::from_secs(5);

    fn failed(&mut self, agent: &str, what: &str, e: &ClientError) {
        self.failures += 1;
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY)
        {
            eprintln!(
                "vigil example-agent {agent}: {what} failed ({} in a row; retrying every tick): {e}",
                self.failures
            );
            self.last_logged = Some(Instant::now());
        }
    }

    fn succeeded(&mut self, agent: &str, what: &str) {
        if self.failures > 0 {
            eprintln!(
                "vigil example-agent {agent}: {what} succeeded again after {} failures",
                self.failures
            );
        }
        *self = Self::default();
    }
}

async fn agent_body<W: Write>(
    config: &ExampleAgentConfig,
    meta: &str,
    out: &RefCell<&mut W>,
) -> Result<Stopped, ExampleAgentError> {
    let restored = prepare(config, meta).await?;
    print(
        out,
        &Line::Started {
            agent: config.id.clone(),
            count: restored.count,
            restored_seq: restored.seq,
            pid: std::process::id(),
        },
    )?;
    // Both loops run in this task; one success of either proves the node answers.
    let last_ok = Cell::new(Instant::now());
    let failed = |what: &str, streak: &mut Streak, e: ClientError| {
        if last_ok.get().elapsed() >= config.give_up_after {
            return Err(ExampleAgentError::Unreachable {
                agent: config.id.clone(),
                after: config.give_up_after,
                last: e,
            });
        }
        streak.failed(&config.id, what, &e);
        Ok(())
    };

    let heartbeats = async {
        let mut streak = Streak::default();
        let mut tick = tokio::time::interval(config.heartbeat_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // The first tick is immediate.
            tick.tick().await;
            match client::heartbeat(&config.socket, &config.id).await {
                Ok(_) => {
                    last_ok.set(Instant::now());
                    streak.succeeded(&config.id, "heartbeat");
                }
                Err(e) => match stop_code(&e) {
                    Some(code) => return Ok(Stopped::Told(code.to_string())),
                    None => failed("heartbeat", &mut streak, e)?,
                },
            }
        }
    };

    let snapshots = async {
        let mut count = restored.count;
        let mut puts: u64 = 0;
        let mut streak = Streak::default();
        let start = Instant::now() + config.snapshot_every;
        let mut tick = tokio::time::interval_at(start, config.snapshot_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            count += 1;
            let body = Bytes::from(snapshot_body(&config.id, count));
            match client::put_snapshot(&config.socket, &config.id, body, None).await {
                Ok(put) => {
                    last_ok.set(Instant::now());
                    streak.succeeded(&config.id, "snapshot put");
                    puts += 1;
                    if puts.is_multiple_of(SNAPSHOT_LINE_EVERY) {
                        print(
                            out,
                            &Line::Snapshot {
                                seq: put.seq,
                                count,
                            },
                        )?;
                    }
                }
                Err(e) => match stop_code(&e) {
                    Some(code) => return Ok(Stopped::Told(code.to_string())),
                    None => failed("snapshot put", &mut streak, e)?,
                },
            }
        }
    };

    tokio::select! {
        r = heartbeats => r,
        r = snapshots => r,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Path as UrlPath, RawQuery, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{post, put};
    use serde_json::json;

    use super::*;

    /// Generous: a busy test machine.
    const WAIT: Duration = Duration::from_secs(20);

    /// What the fake node knows and how it answers.
    #[derive(Default)]
    struct Fake {
        /// agent -> owner ("n1" is this node).
        agents: BTreeMap<String, String>,
        priority: Option<String>,
        snapshot: Option<(u64, Vec<u8>)>,
        seq: u64,
        /// Requests in arrival order: "get", "register", "fetch", "hb", "put".
        log: Vec<String>,
        /// After this many heartbeats, answer 409 with `stop_with`.
        stop_after: Option<usize>,
        stop_with: String,
        /// Answer this many puts with 503 first.
        fail_puts: usize,
        /// Notified at the third heartbeat.
        beats: Arc<tokio::sync::Notify>,
    }

    type Shared = Arc<Mutex<Fake>>;

    fn error(status: StatusCode, code: &str) -> Response {
        (
            status,
            axum::Json(json!({"error": format!("fake {code}"), "code": code})),
        )
            .into_response()
    }

    fn agent_json(id: &str, owner: &str) -> serde_json::Value {
        json!({"id": id, "owner": owner, "owner_zone": "az1", "epoch": 1, "latest_seq": 0,
               "holders": [], "meta": {}, "owned_here": owner == "n1",
               "local_versions": [], "degraded": null})
    }

    async fn show(State(s): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
        let mut s = s.lock().unwrap();
        s.log.push("get".into());
        match s.agents.get(&id) {
            Some(owner) => axum::Json(agent_json(&id, owner)).into_response(),
            None => error(StatusCode::NOT_FOUND, "unknown_agent"),
        }
    }

    async fn register(
        State(s): State<Shared>,
        UrlPath(id): UrlPath<String>,
        RawQuery(q): RawQuery,
    ) -> Response {
        let mut s = s.lock().unwrap();
        s.log.push("register".into());
        s.priority = q;
        s.agents.insert(id.clone(), "n1".into());
        axum::Json(agent_json(&id, "n1")).into_response()
    }

    async fn fetch(State(s): State<Shared>) -> Response {
        let mut s = s.lock().unwrap();
        s.log.push("fetch".into());
        match &s.snapshot {
            Some((seq, body)) => (
                [
                    ("x-vigil-epoch", "1".to_string()),
                    ("x-vigil-seq", seq.to_string()),
                ],
                body.clone(),
            )
                .into_response(),
            None => error(StatusCode::NOT_FOUND, "not_found"),
        }
    }

    async fn store(State(s): State<Shared>, UrlPath(id): UrlPath<String>, body: Bytes) -> Response {
        let mut s = s.lock().unwrap();
        s.log.push("put".into());
        if s.fail_puts > 0 {
            s.fail_puts -= 1;
            return error(StatusCode::SERVICE_UNAVAILABLE, "not_acknowledged");
        }
        s.seq += 1;
        let seq = s.seq;
        s.snapshot = Some((seq, body.to_vec()));
        axum::Json(json!({"agent": id, "epoch": 1, "seq": seq, "stored_on": [],
                          "pending": [], "zones": [], "degraded": null}))
        .into_response()
    }

    async fn heartbeat(State(s): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
        let mut s = s.lock().unwrap();
        s.log.push("hb".into());
        let beats = s.log.iter().filter(|l| *l == "hb").count();
        if beats == 3 {
            s.beats.notify_one();
        }
        if s.stop_after.is_some_and(|n| beats > n) {
            let code = s.stop_with.clone();
            return error(StatusCode::CONFLICT, &code);
        }
        axum::Json(json!({"id": id, "epoch": 1, "deadline_ms": 1000})).into_response()
    }

    /// Serves the fake on a socket in `dir`; the server lives as long as the runtime.
    fn serve(dir: &std::path::Path, fake: Fake) -> (PathBuf, Shared) {
        let shared = Arc::new(Mutex::new(fake));
        let app = Router::new()
            .route("/v1/agents/{id}", put(register).get(show))
            .route("/v1/agents/{id}/snapshot", put(store).get(fetch))
            .route("/v1/agents/{id}/heartbeat", post(heartbeat))
            .with_state(shared.clone());
        let socket = dir.join("fake.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (socket, shared)
    }

    fn config(socket: PathBuf) -> ExampleAgentConfig {
        ExampleAgentConfig {
            socket,
            id: "a1".into(),
            snapshot: None,
            snapshot_every: Duration::from_millis(10),
            heartbeat_every: Duration::from_millis(10),
            meta: "{}".into(),
            priority: None,
            give_up_after: ExampleAgentConfig::DEFAULT_GIVE_UP,
        }
    }

    async fn run_to_end(
        config: &ExampleAgentConfig,
    ) -> (Result<Stopped, ExampleAgentError>, Vec<Line>) {
        let mut out = Vec::new();
        let result = tokio::time::timeout(WAIT, run(config, std::future::pending(), &mut out))
            .await
            .expect("the agent did not stop in time");
        let lines = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (result, lines)
    }

    #[test]
    fn snapshots_round_trip_and_someone_elses_is_refused() {
        let body = snapshot_body("a1", 41);
        assert_eq!(body, br#"{"agent":"a1","count":41}"#);
        assert_eq!(parse_snapshot(&body, "a1"), Ok(41));
        assert!(parse_snapshot(&body, "a2").unwrap_err().contains("\"a1\""));
        assert!(parse_snapshot(b"{\"count\": 1}", "a1").is_err());
        assert!(parse_snapshot(b"garbage", "a1").is_err());
    }

    #[test]
    fn lines_are_the_documented_ndjson() {
        let started = Line::Started {
            agent: "a1".into(),
            count: 3,
            restored_seq: None,
            pid: 7,
        };
        assert_eq!(
            serde_json::to_string(&started).unwrap(),
            r#"{"event":"started","agent":"a1","count":3,"restored_seq":null,"pid":7}"#
        );
        let stopping = Line::Stopping {
            reason: "agent_fenced".into(),
        };
        assert_eq!(
            serde_json::to_string(&stopping).unwrap(),
            r#"{"event":"stopping","reason":"agent_fenced"}"#
        );
    }

    #[tokio::test]
    async fn an_unknown_agent_is_registered_heartbeats_first_and_stops_when_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, fake) = serve(
            dir.path(),
            Fake {
                stop_after: Some(80),
                stop_with: "agent_fenced".into(),
                ..Fake::default()
            },
        );
        let mut config = config(socket);
        config.priority = Some(-3);
        // Heartbeats well before the first put, even on a slow machine.
        config.snapshot_every = Duration::from_millis(20);
        let (result, lines) = run_to_end(&config).await;
        assert_eq!(result.unwrap(), Stopped::Told("agent_fenced".into()));
        let fake = fake.lock().unwrap();
        assert_eq!(fake.priority.as_deref(), Some("priority=-3"));
        assert_eq!(fake.log[..4], ["get", "register", "fetch", "hb"]);
        let puts = fake.log.iter().filter(|l| *l == "put").count() as u64;
        assert!(puts > 0, "{:?}", fake.log);
        let (_, body) = fake.snapshot.clone().unwrap();
        // Every tick adds one; the last put carries the last count.
        assert_eq!(parse_snapshot(&body, "a1").unwrap(), puts);
        assert!(matches!(
            &lines[0],
            Line::Started {
                count: 0,
                restored_seq: None,
                ..
            }
        ));
        assert_eq!(
            lines.last().unwrap(),
            &Line::Stopping {
                reason: "agent_fenced".into()
            }
        );
        let snapshot_lines = lines
            .iter()
            .filter(|l| matches!(l, Line::Snapshot { .. }))
            .count() as u64;
        // The last put may have been cut off after the fake took it.
        assert!(
            [puts / SNAPSHOT_LINE_EVERY, (puts - 1) / SNAPSHOT_LINE_EVERY]
                .contains(&snapshot_lines),
            "{snapshot_lines} lines for {puts} puts"
        );
    }

    #[tokio::test]
    async fn the_latest_snapshot_is_restored_and_a_failing_put_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, fake) = serve(
            dir.path(),
            Fake {
                agents: [("a1".to_string(), "n1".to_string())].into(),
                snapshot: Some((9, snapshot_body("a1", 41))),
                seq: 9,
                fail_puts: 2,
                stop_after: Some(20),
                stop_with: "not_owner".into(),
                ..Fake::default()
            },
        );
        let (result, lines) = run_to_end(&config(socket)).await;
        assert_eq!(result.unwrap(), Stopped::Told("not_owner".into()));
        assert!(matches!(
            &lines[0],
            Line::Started {
                count: 41,
                restored_seq: Some(9),
                ..
            }
        ));
        let fake = fake.lock().unwrap();
        assert!(!fake.log.contains(&"register".to_string()));
        let puts = fake.log.iter().filter(|l| *l == "put").count() as u64;
        let (seq, body) = fake.snapshot.clone().unwrap();
        assert!(seq > 9, "no put succeeded: {:?}", fake.log);
        // The two refused puts still advanced the counter.
        assert_eq!(parse_snapshot(&body, "a1").unwrap(), 41 + puts);
    }

    #[tokio::test]
    async fn a_snapshot_file_wins_over_the_cluster_and_an_empty_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, fake) = serve(
            dir.path(),
            Fake {
                snapshot: Some((5, snapshot_body("a1", 10))),
                stop_after: Some(0),
                stop_with: "agent_isolated".into(),
                ..Fake::default()
            },
        );
        let file = dir.path().join("a1.snap");
        std::fs::write(&file, snapshot_body("a1", 77)).unwrap();
        let mut config = config(socket);
        config.snapshot = Some(file.clone());
        let (result, lines) = run_to_end(&config).await;
        assert_eq!(result.unwrap(), Stopped::Told("agent_isolated".into()));
        assert!(matches!(
            &lines[0],
            Line::Started {
                count: 77,
                restored_seq: None,
                ..
            }
        ));
        assert!(!fake.lock().unwrap().log.contains(&"fetch".to_string()));

        std::fs::write(&file, b"").unwrap();
        let (_, lines) = run_to_end(&config).await;
        assert!(matches!(
            &lines[0],
            Line::Started {
                count: 10,
                restored_seq: Some(5),
                ..
            }
        ));

        std::fs::write(&file, snapshot_body("other", 1)).unwrap();
        let err = run_to_end(&config).await.0.unwrap_err();
        assert!(
            matches!(err, ExampleAgentError::BadSnapshot { .. }),
            "{err}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[tokio::test]
    async fn an_agent_owned_elsewhere_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, fake) = serve(
            dir.path(),
            Fake {
                agents: [("a1".to_string(), "n7".to_string())].into(),
                ..Fake::default()
            },
        );
        let err = run_to_end(&config(socket)).await.0.unwrap_err();
        assert_eq!(
            err.to_string(),
            "agent a1 is owned by node n7; start it there"
        );
        assert_eq!(err.exit_code(), 2);
        assert_eq!(fake.lock().unwrap().log, ["get"]);
    }

    #[tokio::test]
    async fn a_signal_stops_it_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, fake) = serve(dir.path(), Fake::default());
        let beats = fake.lock().unwrap().beats.clone();
        let config = config(socket);
        let mut out = Vec::new();
        // The "signal" comes once it runs: at its third heartbeat.
        let signal = async move { beats.notified().await };
        let result = tokio::time::timeout(WAIT, run(&config, signal, &mut out))
            .await
            .unwrap();
        assert_eq!(result.unwrap(), Stopped::Signal);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("{\"event\":\"stopping\",\"reason\":\"signal\"}\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_node_that_never_answers_makes_it_give_up_and_bad_input_is_usage() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path().join("nobody.sock"));
        config.give_up_after = Duration::from_millis(100);
        let err = run_to_end(&config).await.0.unwrap_err();
        assert!(
            matches!(err, ExampleAgentError::Unreachable { .. }),
            "{err}"
        );
        assert_eq!(err.exit_code(), 1);

        config.meta = "{oops".into();
        let err = run_to_end(&config).await.0.unwrap_err();
        assert!(matches!(err, ExampleAgentError::BadMeta { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);
        config.meta = "{}".into();
        config.id = "../x".into();
        assert_eq!(run_to_end(&config).await.0.unwrap_err().exit_code(), 2);
    }
}
