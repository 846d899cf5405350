//! Entry points of the node's fuzz targets (`tests/fuzz/`) and of the regression
//! tests that replay their corpora (`node/tests/fuzz_regressions.rs`), so the two
//! cannot drift. Each runs the node's own code on bytes from outside: a stream as a
//! peer sends it, a connection to the API socket, the config file, `runtime.toml`.
//! A panic anywhere is a bug. Not part of the API.

use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use vigil_protocol::fuzzing::{ReplHarness, Setup, feed_core, roster};

use crate::api::{
    self, AgentJson, ApiFailure, ApiLimits, ApiRequest, HealthJson, HeartbeatJson, HolderJson,
    MemberJson, NodeIsolationJson, PutJson, SnapshotReply,
};
use crate::cli::{Cli, Command};
use crate::config::{self, AgentConfig, ApiAccess};
use crate::events::EventLog;
use crate::listener::{Gate, Listener};
use crate::metrics::Metrics;
use crate::runtime::{self, LiveValues, RuntimeConfig, SettingsJson};
use crate::transport::{self, Inbound, SnapshotBudget, StreamLimits};

/// Streams read from one `stream_frame` input at most (each one frame and its payload).
const MAX_STREAMS: usize = 8;
/// Where the fuzzed files claim to live (errors name them; nothing is read there).
const CONFIG_PATH: &str = "/fuzz/vigil.toml";
const DATA_DIR: &str = "/fuzz/data";
/// Bytes of the API's answers kept per input (their status lines are read back).
const OUTPUT_KEPT: usize = 64 * 1024;

/// What every input shares: a current-thread runtime (the node's tasks run on tokio;
/// here one thread runs one input to its end) and the metrics the node would count in.
struct Shared {
    runtime: Runtime,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    budget: SnapshotBudget,
    frames: SnapshotBudget,
    /// The node configuration the owner side answers from (`vigil agent --name h0
    /// --bind 127.0.0.1:7946`).
    config: AgentConfig,
}

thread_local! {
    static SHARED: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

fn with_shared<T>(f: impl FnOnce(&Shared) -> T) -> T {
    SHARED.with(|cell| {
        let mut slot = cell.borrow_mut();
        let shared = slot.get_or_insert_with(|| {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => panic!("cannot start a tokio runtime: {e}"),
            };
            let (metrics, registry) = Metrics::new();
            let budget = SnapshotBudget::new(config::DEFAULT_SNAPSHOT_MEMORY, &metrics);
            let frames = SnapshotBudget::with_gauge(
                transport::FRAME_MEMORY,
                metrics.stream_frame_memory_bytes.clone(),
            );
            let config = match resolve(&["--name", "h0", "--bind", "127.0.0.1:7946"], "") {
                Ok(c) => c,
                Err(e) => panic!("the harness's own node settings do not resolve: {e:?}"),
            };
            Shared {
                runtime,
                metrics,
                registry: Arc::new(registry),
                budget,
                frames,
                config,
            }
        });
        f(shared)
    })
}

thread_local! {
    /// Parsed command lines by their flags: clap builds the whole command tree for
    /// each parse, which would be most of the config target's time.
    static MATCHES: RefCell<Vec<(Vec<&'static str>, ArgMatches)>> = const { RefCell::new(Vec::new()) };
}

/// `vigil agent --config CONFIG_PATH FLAGS` with the file's text given.
fn resolve(flags: &[&'static str], text: &str) -> Result<AgentConfig, Vec<config::ConfigError>> {
    let matches = MATCHES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, m)) = cache.iter().find(|(f, _)| f == flags) {
            return m.clone();
        }
        let mut argv = vec!["vigil", "agent", "--config", CONFIG_PATH];
        argv.extend_from_slice(flags);
        let m = match Cli::command().try_get_matches_from(argv) {
            Ok(m) => m,
            Err(e) => panic!("the harness's arguments do not parse: {e}"),
        };
        cache.push((flags.to_vec(), m.clone()));
        m
    });
    let Some(sub) = matches.subcommand_matches("agent").cloned() else {
        unreachable!("the agent subcommand was given")
    };
    let args = match Cli::from_arg_matches(&matches).map(|c| c.command) {
        Ok(Command::Agent(args)) => args,
        _ => unreachable!("the agent subcommand was given"),
    };
    AgentConfig::resolve_text(args, &sub, text)
}

/// Target `stream_frame`: one setup byte (receiver and sender, see
/// [`vigil_protocol::fuzzing::Setup`]), then the bytes of streams from one peer, one
/// after the other, each read by the node's stream reader
/// (`transport::read_stream_from`: length prefix, envelope, payload) and handed on as
/// the owner task hands it: replication messages to a `Replicator`, the rest to a
/// `Core`.
pub fn stream_frame(data: &[u8]) {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let setup = Setup::from_byte(setup);
    let from = roster()[setup.from].name.clone();
    with_shared(|shared| {
        let limits = StreamLimits {
            max_payload: config::DEFAULT_MAX_SNAPSHOT,
            budget: shared.budget.clone(),
            frames: shared.frames.clone(),
        };
        shared.runtime.block_on(async {
            let mut repl: Option<ReplHarness> = None;
            for _ in 0..MAX_STREAMS {
                if rest.is_empty() {
                    break;
                }
                let read = transport::read_stream_from(
                    &mut rest,
                    from.clone(),
                    // Every version this build can decode (a connection that
                    // negotiated the newest refuses nothing for its version).
                    vigil_protocol::wire::NEXT_WIRE_VERSION,
                    &limits,
                    &shared.metrics,
                )
                .await;
                match read {
                    Ok(Inbound::Repl { from, msg, payload }) => {
                        // The owner task's check (node.rs, `on_inbound`).
                        if msg.payload_len() != payload.as_ref().map_or(0, |p| p.len() as u64) {
                            panic!("the stream reader returned a payload of the wrong length");
                        }
                        repl.get_or_insert_with(|| ReplHarness::new(setup))
                            .message(&from, msg, payload);
                    }
                    Ok(Inbound::Message { bytes, .. }) => feed_core(setup, &bytes),
                    Ok(_) => unreachable!("the stream reader reports messages only"),
                    Err(_) => break,
                }
            }
        });
    });
}

/// Target `api_request`: one byte that decides how the owner side answers (two bits
/// per request: answer, fail, or drop the reply as a node shutting down does), then
/// the bytes a client writes on the API socket. They go through the same hyper
/// connection builder `axum::serve` uses and the node's router; the answers are
/// written to their end. Returns the status of each answer (for the seed tests).
pub fn api_request(data: &[u8]) -> Vec<u16> {
    let Some((&answers, request)) = data.split_first() else {
        return Vec::new();
    };
    let written = Arc::new(Mutex::new(Vec::new()));
    with_shared(|shared| {
        shared.runtime.block_on(async {
            let (owner_tx, owner_rx) = mpsc::channel(16);
            let limits = ApiLimits {
                max_snapshot: config::DEFAULT_MAX_SNAPSHOT,
                budget: shared.budget.clone(),
                put_wait: Duration::from_secs(5),
            };
            let router = api::app(
                limits,
                &ApiAccess::default(),
                owner_tx,
                Arc::clone(&shared.metrics),
                Arc::clone(&shared.registry),
                Gate::new(Listener::Socket, Arc::clone(&shared.metrics)),
            );
            let owner = tokio::spawn(owner(owner_rx, answers, shared.config.clone()));
            // The router takes hyper's request body as it is (wrapping it as
            // `axum::serve` does).
            let service = TowerToHyperService::new(router);
            // hyper wants an owned connection.
            let input = std::io::Cursor::new(request.to_vec());
            let output = Written(Arc::clone(&written));
            let io = TokioIo::new(tokio::io::join(input, output));
            let mut builder = Builder::new(TokioExecutor::new());
            // The input ends where a client would wait for its answers: serve what
            // was sent (the node's default drops a request whose client closed).
            builder.http1().half_close(true);
            let _ = builder.serve_connection_with_upgrades(io, service).await;
            // The router (and with it the owner's channel) is gone: the owner ends.
            let _ = owner.await;
        });
    });
    let written = written.lock().unwrap_or_else(PoisonError::into_inner);
    statuses(&written)
}

/// The status of every `HTTP/1.1 NNN` in `written`: the answers' status lines (a body
/// that contains the text would count too; the seeds' bodies do not).
fn statuses(written: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(written);
    let mut found = Vec::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("HTTP/1.1 ") {
        let line = &rest[at + 9..];
        if let Some(code) = line.get(..3).and_then(|c| c.parse().ok()) {
            found.push(code);
        }
        rest = line;
    }
    found
}

/// The client's side of the connection: what the node wrote.
struct Written(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for Written {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut out = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the first bytes of each answer matter; a /metrics page need not pile up.
        let room = OUTPUT_KEPT.saturating_sub(out.len());
        out.extend_from_slice(&buf[..buf.len().min(room)]);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Answers the API's requests as the owner task would, in shape; `answers` picks,
/// two bits per request, an answer (0, 3), a refusal (1) or a dropped reply (2).
async fn owner(mut requests: mpsc::Receiver<ApiRequest>, answers: u8, config: AgentConfig) {
    let me = roster()[0].clone();
    let events = event_log(&me);
    let base = LiveValues::from_config(&config, "info".into());
    let mut runtime = RuntimeConfig::without_changes(Path::new(DATA_DIR), base);
    let mut n = 0u32;
    while let Some(request) = requests.recv().await {
        let mode = (answers >> (2 * (n % 4))) & 3;
        n += 1;
        if mode == 2 {
            drop(request);
            continue;
        }
        let refuse = mode == 1;
        let failure = || ApiFailure::unavailable("refused by the fuzz harness");
        let agent_json = |id: &str, meta: &str| AgentJson {
            id: id.to_string(),
            owner: me.name.to_string(),
            owner_zone: me.zone.to_string(),
            epoch: 1,
            latest_seq: 0,
            holders: vec![HolderJson {
                name: "h1".into(),
                zone: "az2".into(),
            }],
            meta: serde_json::from_str(meta).unwrap_or_default(),
            owned_here: true,
            local_versions: Vec::new(),
            degraded: None,
            priority: 0,
            isolated: false,
            state: "running".into(),
        };
        match request {
            ApiRequest::Members(reply) => {
                let _ = reply.send(vec![MemberJson {
                    name: me.name.to_string(),
                    addr: me.addr.to_string(),
                    zone: me.zone.to_string(),
                    state: "alive".into(),
                    generation: me.generation,
                    incarnation: 0,
                    left: false,
                    local: true,
                    state_since: "2025-01-01T00:00:00Z".into(),
                }]);
            }
            ApiRequest::Agents(reply) => {
                let _ = reply.send(vec![agent_json("a1", "{}")]);
            }
            ApiRequest::Agent { agent, reply } => {
                let _ = reply.send((!refuse).then(|| agent_json(agent.as_str(), "{}")));
            }
            ApiRequest::Register {
                agent, meta, reply, ..
            } => {
                let _ = reply.send(if refuse {
                    Err(failure())
                } else {
                    Ok(agent_json(agent.as_str(), &meta))
                });
            }
            ApiRequest::Heartbeat { agent, reply } => {
                let _ = reply.send(if refuse {
                    Err(failure())
                } else {
                    Ok(HeartbeatJson {
                        id: agent.as_str().to_string(),
                        epoch: 1,
                        deadline_ms: 3000,
                    })
                });
            }
            ApiRequest::IsolateAgent { agent, reply, .. } => {
                let _ = reply.send(if refuse {
                    Err(failure())
                } else {
                    Ok(agent_json(agent.as_str(), "{}"))
                });
            }
            ApiRequest::IsolateNode { isolated, reply } => {
                let _ = reply.send(NodeIsolationJson {
                    name: me.name.to_string(),
                    isolated,
                });
            }
            ApiRequest::Put {
                agent, body, reply, ..
            } => {
                let _ = reply.send(if refuse {
                    Err(failure())
                } else {
                    Ok(PutJson {
                        agent: agent.as_str().to_string(),
                        epoch: 1,
                        seq: body.len() as u64,
                        stored_on: Vec::new(),
                        pending: Vec::new(),
                        zones: Vec::new(),
                        degraded: None,
                    })
                });
            }
            ApiRequest::Get { seq, reply, .. } => {
                let body = bytes::Bytes::from_static(b"snapshot");
                let _ = reply.send(if refuse {
                    Err(failure())
                } else {
                    Ok(SnapshotReply {
                        epoch: 1,
                        seq: seq.unwrap_or(1),
                        checksum: vigil_protocol::replication::checksum(&body),
                        body,
                    })
                });
            }
            // A reload's answer carries file paths and certificate details; its
            // failure is the part with input-dependent handling.
            ApiRequest::TlsReload(reply) => {
                let _ = reply.send(Err(failure()));
            }
            ApiRequest::Health(reply) => {
                let _ = reply.send(HealthJson {
                    status: if refuse { "joining" } else { "ok" }.into(),
                    name: me.name.to_string(),
                    zone: me.zone.to_string(),
                    addr: me.addr.to_string(),
                    generation: me.generation,
                    profile: "lan".into(),
                    live_members: 1,
                    known_members: 1,
                    version: env!("CARGO_PKG_VERSION").into(),
                    wire_version: vigil_protocol::wire::WIRE_VERSION,
                    uptime_secs: 1,
                    last_event_index: events.last_index(),
                });
            }
            ApiRequest::Config(reply) => {
                let _ = reply.send(SettingsJson::new(&config, &runtime));
            }
            ApiRequest::SetConfig { patch, reply } => {
                // What the owner task does, but the file stays in memory: the text
                // it would write must read back as exactly the settings it applies,
                // or a restart would run with others.
                let (next, _changes) = runtime.preview(&patch);
                let text = next.file_text();
                match runtime::parse_file(Path::new(DATA_DIR), &text) {
                    Ok(read_back) => assert_eq!(
                        read_back, next,
                        "runtime.toml as written does not read back:\n{text}"
                    ),
                    Err(e) => panic!("runtime.toml as written is refused: {e}\n{text}"),
                }
                runtime.commit(next);
                let _ = reply.send(if refuse {
                    Err(failure())
                } else {
                    Ok(SettingsJson::new(&config, &runtime))
                });
            }
            ApiRequest::Subscribe { since, reply } => {
                // A log of its own, dropped after answering, so the stream ends after
                // the backlog (a node's stays open).
                let _ = reply.send(event_log(&me).subscribe(since));
            }
        }
    }
}

fn event_log(me: &vigil_protocol::NodeId) -> EventLog {
    let mut events = EventLog::new(me);
    events.push_local("started", None);
    events.push_local("join_failed", Some("seed 10.0.0.2:7946: timed out".into()));
    events
}

/// Target `config_file`: the text of a `--config` file through the node's settings
/// resolution and validation (`vigil agent --config FILE --name h0`, so a file
/// without a name still reaches the other checks), then what the node builds from a
/// resolved configuration.
pub fn config_file(data: &[u8]) {
    // The node reads the file with `read_to_string`, which refuses what is not UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for flags in [&[][..], &["--name", "h0"][..]] {
        match resolve(flags, text) {
            Ok(config) => {
                let _ = config.replication.protocol_config();
                let base = LiveValues::from_config(&config, "info".into());
                let runtime = RuntimeConfig::without_changes(Path::new(DATA_DIR), base);
                let settings = SettingsJson::new(&config, &runtime);
                if let Err(e) = toml::to_string(&settings) {
                    panic!("resolved settings do not print as TOML: {e}");
                }
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "a refusal without a reason");
                for e in errors {
                    let _ = e.to_string();
                }
            }
        }
    }
}

/// Target `runtime_file`: the text of `DATA_DIR/runtime.toml` through the node's
/// reader; what it accepts must be written back (as after the next `PUT /v1/config`)
/// as a file that reads the same.
pub fn runtime_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(DATA_DIR).join(runtime::RUNTIME_FILE);
    match runtime::parse_file(&path, text) {
        Ok(overrides) => {
            let written = overrides.file_text();
            match runtime::parse_file(&path, &written) {
                Ok(again) => assert_eq!(
                    again, overrides,
                    "runtime.toml does not round-trip:\n{written}"
                ),
                Err(e) => panic!("runtime.toml as written is refused: {e}\n{written}"),
            }
            with_shared(|shared| {
                let base = LiveValues::from_config(&shared.config, "info".into());
                let mut runtime = RuntimeConfig::without_changes(Path::new(DATA_DIR), base);
                runtime.commit(overrides);
                let _ = runtime.effective();
                let _ = SettingsJson::new(&shared.config, &runtime);
            });
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
