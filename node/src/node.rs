//! `vigil agent`: one owner task drives the protocol core and executes its effects.
//!
//! Data path: network (transport tasks) or socket (API handlers) -> this task ->
//! `Core::handle_*` -> effects (send, event) -> executed here. Nothing else touches
//! the core or the event log, so there are no locks around membership state.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rand::RngExt;
use std::collections::BTreeMap;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use vigil_protocol::replication::{
    AgentView, GetError, LoadError, PutError, PutOutcome, SnapMeta, StoredVersion,
};
use vigil_protocol::{
    AgentId, AgentRecord, Core, Effect, Event, LocalState, MemberInfo, NodeId, ReplEffect,
    ReplEvent, Replicator, Zone, wire,
};

use crate::agents::{self, Supervisor};
use crate::api::{
    self, AgentJson, ApiFailure, ApiRequest, HealthJson, HeartbeatJson, HolderJson, MemberJson,
    NodeIsolationJson, PutJson, SnapshotReply,
};
use crate::config::AgentConfig;
use crate::datadir::{self, DataDir, DataDirError};
use crate::events::AgentRef;
use crate::events::{self, EventLog};
use crate::launcher::{LaunchEvent, LaunchSpec, Launcher, LauncherConfig};
use crate::logging::LogControl;
use crate::metrics::{Metrics, TypeLabel};
use crate::runtime::{self, Patch, RuntimeConfig, SettingsJson};
use crate::signals::Signals;
use crate::store::{SnapshotStore, StoreError, VersionMeta};
use crate::systemd::Notifier;
use crate::tls;
use crate::transport::{
    self, Inbound, LogLimiter, SeedOutcome, SnapshotBudget, StreamLimits, Transport,
    TransportConfig, TransportError,
};

mod tls_reload;

/// First wait between join attempts; doubles up to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a leaving node waits for handshakes to peers it must tell, and for its
/// queued datagrams to go out.
const LEAVE_GRACE: Duration = Duration::from_millis(500);
/// Requests from the API waiting for the owner.
const API_QUEUE: usize = 256;

/// Disk operations finished on the blocking pool, reported back to the owner.
const DISK_QUEUE: usize = 1024;
/// The snapshot store's directory inside the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// Restored snapshots handed to launched agents (`ID/snapshot-SEQ`), and their logs
/// (`ID.log`), under the data directory.
pub const AGENTS_DIR: &str = "agents";
/// Agent exits waiting for the owner task.
const LAUNCH_QUEUE: usize = 256;
/// How long a launched agent has between SIGTERM and SIGKILL.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(2);

enum DiskDone {
    /// `runtime.toml` was written (or not) for a `PUT /v1/config`.
    ConfigSaved {
        next: runtime::Overrides,
        changes: Vec<runtime::Change>,
        reply: oneshot::Sender<Result<SettingsJson, ApiFailure>>,
        result: Result<(), String>,
    },
    Persisted {
        op: u64,
        result: Result<(), String>,
    },
    Loaded {
        op: u64,
        result: Result<(SnapMeta, Bytes), LoadError>,
    },
    /// The PKI directory was read again for a TLS reload.
    TlsLoaded {
        trigger: &'static str,
        result: Result<tls::NodeTls, tls::TlsError>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("snapshot store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Socket(#[from] api::SocketError),
    #[error(transparent)]
    Launch(#[from] crate::launcher::LaunchError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error(
        "cannot serve /metrics on {addr} (--metrics-bind): {source}. Fix: pick a free port and an address of this host, or leave --metrics-bind unset"
    )]
    MetricsBind { addr: SocketAddr, source: io::Error },
}

/// The line `vigil agent` prints on stdout once it serves (for supervisors and tests).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadyLine {
    pub ready: bool,
    pub name: String,
    /// The advertised address (what peers dial).
    pub addr: String,
    /// The address the UDP socket is bound to: the same as `addr` unless `--advertise`
    /// names another (a NAT, or a fault proxy in front of the node, which the tests
    /// must point at this real socket). Absent in lines from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<String>,
    pub socket: String,
    pub generation: u64,
    pub pid: u32,
    /// The TCP address `/metrics` is served on (`--metrics-bind`), port resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Runs a node until SIGTERM or SIGINT. `runtime` holds the live settings (already
/// read from the data directory's runtime.toml); `log` changes the log filter.
pub async fn run_agent(
    config: AgentConfig,
    runtime: RuntimeConfig,
    log: LogControl,
) -> Result<(), AgentError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let generation = data_dir.next_generation()?;
    let node_tls =
        tls::load_node_tls(&config.pki, &config.name)?.with_wire_versions(config.wire_versions);
    let (metrics, registry) = Metrics::new();
    metrics
        .tls_certificate_expiry
        .set(node_tls.summary().certificate.not_after_unix);
    let repl = config.replication.clone();
    let budget = SnapshotBudget::new(repl.memory, &metrics);
    let opened = SnapshotStore::open(
        &config.data_dir.join(SNAPSHOT_DIR),
        repl.keep,
        repl.max_snapshot,
    )?;
    let initial_rtt = match config.profile {
        vigil_protocol::Profile::Lan => Duration::from_millis(20),
        vigil_protocol::Profile::Wan => Duration::from_millis(300),
    };
    let (transport, inbound) = Transport::bind(
        TransportConfig {
            bind: config.bind,
            cache_capacity: config.connection_cache,
            idle_timeout: config.idle_timeout,
            dial_timeout: Duration::from_secs(5),
            initial_rtt,
        },
        &node_tls,
        config.name.clone(),
        Arc::clone(&metrics),
        StreamLimits {
            max_payload: repl.max_snapshot,
            budget: budget.clone(),
            frames: SnapshotBudget::with_gauge(
                transport::FRAME_MEMORY,
                metrics.stream_frame_memory_bytes.clone(),
            ),
        },
    )?;
    let bound = transport.local_addr().map_err(|source| AgentError::Io {
        context: "reading the bound address",
        source,
    })?;
    let advertise = match config.advertise {
        None => bound,
        Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
        Some(a) => a,
    };
    let identity = NodeId::new(
        config.name.clone(),
        advertise,
        config.zone.clone(),
        generation,
    );

    let registry = Arc::new(registry);
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::MetricsBind { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|source| AgentError::Io {
            context: "reading the metrics address",
            source,
        })?),
        None => None,
    };
    let listener = api::bind_socket(&config.socket, &config.api)?;
    let (api_tx, api_rx) = mpsc::channel(API_QUEUE);
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let metrics_task = metrics_listener.map(|l| {
        tokio::spawn(crate::metrics::serve_tcp(
            l,
            Arc::clone(&registry),
            Arc::clone(&metrics),
            crate::listener::Timeouts::of(&config.api),
            async move {
                let _ = metrics_stopped.await;
            },
        ))
    });
    let api_task = tokio::spawn(api::serve(
        listener,
        api::ApiLimits {
            max_snapshot: repl.max_snapshot,
            budget,
            put_wait: repl.protocol_config().put_timeout + Duration::from_secs(2),
        },
        config.api.clone(),
        api_tx,
        Arc::clone(&metrics),
        registry,
        async move {
            let _ = api_stopped.await;
        },
    ));

    let mut core = Core::new(identity.clone(), config.profile, rand::random());
    core.set_wire_versions(config.wire_versions);
    let mut protocol_config = repl.protocol_config();
    protocol_config.lease = config.recovery.lease;
    let mut replicator = Replicator::new(identity.clone(), protocol_config, rand::random());
    let live = runtime.effective();
    replicator.set_node_settings(live.standby, live.capacity);
    let mut startup_problems = Vec::new();
    let versions = opened
        .versions
        .iter()
        .filter_map(|v| {
            let agent = AgentId::new(&v.agent).ok()?;
            Some(StoredVersion {
                agent,
                snap: SnapMeta {
                    epoch: v.epoch,
                    seq: v.seq,
                    len: v.len,
                    checksum: v.checksum,
                },
            })
        })
        .collect();
    let mut records = Vec::new();
    for (agent, bytes) in &opened.records {
        match serde_json::from_slice::<AgentRecord>(bytes) {
            Ok(r) if r.agent.as_str() == agent => records.push(r),
            _ => startup_problems.push(format!("unreadable catalog record of agent {agent}")),
        }
    }
    for p in &opened.problems {
        startup_problems.push(format!("{}: {}", p.path.display(), p.reason));
    }
    let mut acceptors = Vec::new();
    for (agent, bytes) in &opened.acceptors {
        match (AgentId::new(agent), serde_json::from_slice(bytes)) {
            (Ok(a), Ok(state)) => acceptors.push((a, state)),
            _ => startup_problems.push(format!("unreadable election state of agent {agent}")),
        }
    }
    let stored = opened.versions.len();
    replicator.load(versions, records);
    replicator.load_acceptors(acceptors);
    let (launch_tx, launch_rx) = mpsc::channel(LAUNCH_QUEUE);
    let launcher = match &config.recovery.agent_command {
        Some(command) => Some(Launcher::new(
            LauncherConfig {
                command: command.clone(),
                socket: config.socket.clone(),
                node: config.name.to_string(),
                log_dir: config.data_dir.join(AGENTS_DIR),
                stop_grace: AGENT_STOP_GRACE,
            },
            launch_tx,
        )?),
        None => None,
    };
    let supervisor = Supervisor::new(
        live.heartbeat_timeout,
        live.agent_restarts,
        launcher.is_some(),
    );
    let (disk_tx, disk_rx) = mpsc::channel(DISK_QUEUE);
    let mut owner = Owner {
        replicator,
        supervisor,
        launcher,
        launch_gets: BTreeMap::new(),
        store: Arc::new(opened.store),
        disk_tx,
        config_saving: false,
        tls_reloads: tls_reload::TlsReloads::default(),
        pending: PendingApi::default(),
        core,
        transport,
        events: EventLog::new(&identity),
        signals: Signals::new(Arc::clone(&metrics)),
        metrics,
        start: Instant::now(),
        wall_start: SystemTime::now(),
        join: JoinState {
            next_attempt: (!config.seeds.is_empty()).then(Instant::now),
            backoff: JOIN_BACKOFF_MIN,
        },
        log_limit: LogLimiter::default(),
        data_dir,
        config,
        advertise,
        runtime,
        log,
        notify: Notifier::from_env(),
    };
    owner.events.push_local("local_started", None);
    let changed = owner.runtime.overrides().to_json();
    if !changed.is_empty() {
        tracing::info!(
            file = %owner.runtime.path().display(),
            "runtime settings win over the config file: {}",
            serde_json::Value::Object(changed)
        );
    }
    for problem in startup_problems {
        tracing::warn!("snapshot store: {problem}");
        owner.events.push_local("store_problem", Some(problem));
    }
    tracing::info!(
        versions = stored,
        agents = owner.replicator.known_count(),
        "snapshot store opened"
    );
    tracing::info!(
        name = %identity.name, zone = %identity.zone, addr = %advertise, generation,
        profile = owner.config.profile.as_str(), socket = %owner.config.socket.display(),
        "vigil node started"
    );
    if let Some(addr) = metrics_addr {
        tracing::info!(%addr, "serving /metrics over TCP");
    }
    print_ready(&identity, bound, &owner.config.socket, metrics_addr)?;

    let result = owner.run(inbound, api_rx, disk_rx, launch_rx).await;
    let _ = stop_api.send(());
    let _ = stop_metrics.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let _ = std::fs::remove_file(&owner.config.socket);
    tracing::info!("vigil node stopped");
    result
}

fn put_json(out: PutOutcome) -> PutJson {
    let holder = |h: vigil_protocol::replication::Holder| HolderJson {
        name: h.name.to_string(),
        zone: h.zone.to_string(),
    };
    let mut zones: Vec<String> = out.stored_on.iter().map(|h| h.zone.to_string()).collect();
    zones.sort();
    zones.dedup();
    PutJson {
        agent: out.agent.to_string(),
        epoch: out.epoch,
        seq: out.seq,
        stored_on: out.stored_on.into_iter().map(holder).collect(),
        pending: out.pending.into_iter().map(holder).collect(),
        zones,
        degraded: out.degraded.map(|d| d.to_string()),
    }
}

fn put_failure(e: &PutError) -> ApiFailure {
    let status = match e {
        PutError::UnknownAgent { .. } => 404,
        PutError::NotOwner { .. }
        | PutError::Fenced { .. }
        | PutError::LeaseLost { .. }
        | PutError::Isolated { .. } => 409,
        PutError::NotAcknowledged { .. } | PutError::RegisterAgain { .. } => 503,
        PutError::LocalWrite { .. } => 507,
    };
    ApiFailure {
        status,
        code: e.code().into(),
        error: e.to_string(),
    }
}

fn get_failure(e: &GetError) -> ApiFailure {
    let status = match e {
        GetError::UnknownAgent { .. } | GetError::NotFound { .. } => 404,
        GetError::Unavailable { .. } => 503,
    };
    ApiFailure {
        status,
        code: e.code().into(),
        error: e.to_string(),
    }
}

fn print_ready(
    identity: &NodeId,
    bound: SocketAddr,
    socket: &std::path::Path,
    metrics: Option<SocketAddr>,
) -> Result<(), AgentError> {
    let line = ReadyLine {
        ready: true,
        name: identity.name.to_string(),
        addr: identity.addr.to_string(),
        bound: Some(bound.to_string()),
        socket: socket.display().to_string(),
        generation: identity.generation,
        pid: std::process::id(),
        metrics: metrics.map(|a| a.to_string()),
    };
    let mut out = io::stdout().lock();
    let io_err = |source| AgentError::Io {
        context: "writing the ready line to stdout",
        source,
    };
    serde_json::to_writer(&mut out, &line).map_err(|e| io_err(io::Error::other(e)))?;
    writeln!(out).map_err(io_err)?;
    out.flush().map_err(io_err)
}

struct JoinState {
    /// When to try the seeds (and known members) next; `None` while joined.
    next_attempt: Option<Instant>,
    backoff: Duration,
}

/// API requests waiting for the replicator's answer.
#[derive(Default)]
struct PendingApi {
    registers: BTreeMap<u64, oneshot::Sender<Result<AgentJson, ApiFailure>>>,
    puts: BTreeMap<u64, (Instant, oneshot::Sender<Result<PutJson, ApiFailure>>)>,
    gets: BTreeMap<u64, oneshot::Sender<Result<SnapshotReply, ApiFailure>>>,
}

struct Owner {
    core: Core,
    replicator: Replicator,
    supervisor: Supervisor,
    launcher: Option<Launcher>,
    /// Snapshot reads for agents about to be launched: get id -> (agent, epoch).
    launch_gets: BTreeMap<u64, (AgentId, u64)>,
    store: Arc<SnapshotStore>,
    disk_tx: mpsc::Sender<DiskDone>,
    /// A `PUT /v1/config` is being written to `runtime.toml`.
    config_saving: bool,
    tls_reloads: tls_reload::TlsReloads,
    pending: PendingApi,
    transport: Transport,
    events: EventLog,
    /// Metrics that follow the core and the replicator, and the capacity events.
    signals: Signals,
    metrics: Arc<Metrics>,
    start: Instant,
    wall_start: SystemTime,
    join: JoinState,
    log_limit: LogLimiter,
    data_dir: DataDir,
    config: AgentConfig,
    advertise: SocketAddr,
    runtime: RuntimeConfig,
    log: LogControl,
    notify: Notifier,
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Owner {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut api_rx: mpsc::Receiver<ApiRequest>,
        mut disk_rx: mpsc::Receiver<DiskDone>,
        mut launch_rx: mpsc::Receiver<LaunchEvent>,
    ) -> Result<(), AgentError> {
        let signal_err = |source| AgentError::Io {
            context: "installing signal handlers",
            source,
        };
        let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err)?;
        // `systemctl reload vigil`: reload the certificates (see tls_reload).
        let mut sighup = signal(SignalKind::hangup()).map_err(signal_err)?;
        let (resolved_tx, mut resolved_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
        self.update_member_gauges();
        if self.config.seeds.is_empty() {
            // A founding node is ready at once: others join through it.
            self.notify
                .ready("founding node (no seeds): serving, waiting for members to join");
        } else {
            let status = format!("joining through {} seed(s)", self.config.seeds.len());
            self.notify.status(&status);
        }
        loop {
            let ping_at = self.notify.next_ping();
            let timer_at = self.core.poll_timeout().map(|t| self.start + t);
            let repl_at = self.replicator.poll_timeout().map(|t| self.start + t);
            let join_at = self.join.next_attempt;
            let deadline_at = self.supervisor.next_deadline();
            tokio::select! {
                Some(event) = launch_rx.recv() => self.on_launch(event),
                () = sleep_until_opt(deadline_at) => {
                    let actions = self.supervisor.tick(Instant::now());
                    self.act(actions);
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                _ = sighup.recv() => self.reload_tls("sighup", None),
                // In this loop on purpose: if it wedges, the pings stop and systemd
                // restarts the node (WatchdogSec=).
                () = sleep_until_opt(ping_at) => {
                    self.notify.ping();
                    if self.notify.is_ready() && self.core.local_state() == LocalState::Active {
                        let status = format!(
                            "member of the cluster ({} live members)",
                            self.core.live_count()
                        );
                        self.notify.refresh_status(&status);
                    }
                }
                Some(event) = inbound.recv() => self.on_inbound(event),
                Some(request) = api_rx.recv() => self.on_api(request),
                Some(done) = disk_rx.recv() => self.on_disk(done),
                () = sleep_until_opt(repl_at) => {
                    self.replicator.handle_timeout(self.now());
                    self.drain_repl();
                }
                Some(addrs) = resolved_rx.recv() => {
                    if !addrs.is_empty()
                        && addrs.iter().all(|a| *a == self.advertise)
                        && !self.notify.is_ready()
                    {
                        // A shared config whose only seed is this host: it founds the
                        // cluster, as a node without seeds does, or systemd would wait
                        // for a join that only another node can make happen.
                        self.notify.ready(
                            "founding node (its only seed is itself): serving, waiting for members to join",
                        );
                    }
                    for addr in addrs {
                        if addr != self.advertise {
                            self.transport.dial_seed(addr);
                        }
                    }
                }
                () = sleep_until_opt(timer_at) => {
                    let errors = self.core.handle_timeout(self.now());
                    for e in errors {
                        self.metrics.timer_errors.inc();
                        self.log_limit.warn("timer", format_args!("SWIM timer error: {e}"));
                    }
                    self.drain();
                }
                () = sleep_until_opt(join_at) => self.join_attempt(&resolved_tx),
            }
        }
        self.notify.stopping();
        if let Some(launcher) = self.launcher.as_mut() {
            launcher.stop_all(AGENT_STOP_GRACE).await;
        }
        self.leave(&mut inbound).await;
        Ok(())
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Repl { from, msg, payload } => {
                if msg.payload_len() != payload.as_ref().map_or(0, |p| p.len() as u64) {
                    self.metrics.count_input_error("payload_length");
                    return;
                }
                let now = self.now();
                self.replicator.handle_message(now, &from, msg, payload);
                self.drain_repl();
            }
            Inbound::Message { from, bytes } => {
                let now = self.now();
                if let Err(e) = self.core.handle_datagram(now, &from, &bytes) {
                    self.metrics.count_input_error(e.kind());
                    self.log_limit
                        .warn("input", format_args!("refused a message from {from}: {e}"));
                }
                self.drain();
            }
            other => {
                let handshake_ended = match &other {
                    Inbound::Connected { name, .. } | Inbound::DialFailed { name, .. } => {
                        Some(name.clone())
                    }
                    _ => None,
                };
                let outcome = self.transport.on_inbound(other);
                if let Some(peer) = handshake_ended {
                    let now = self.now();
                    self.core.peer_connected(now, &peer);
                }
                self.on_seed_outcome(outcome);
            }
        }
    }

    fn on_seed_outcome(&mut self, outcome: Option<SeedOutcome>) {
        match outcome {
            Some(SeedOutcome::Reached { addr, name }) => {
                if self.core.local_state() == LocalState::Active {
                    return;
                }
                // Zone and generation are placeholders: foca only needs the name
                // to address the announce; the reply carries the real identity.
                let Ok(zone) = Zone::new("unknown") else {
                    return;
                };
                let seed = NodeId::new(name.clone(), addr, zone, 0);
                let now = self.now();
                if let Err(e) = self.core.announce(now, seed) {
                    tracing::debug!("announce to {name} at {addr}: {e}");
                }
                self.drain();
            }
            Some(SeedOutcome::Failed { addr, error }) => {
                let detail = format!("seed {addr}: {error}");
                if !self.notify.is_ready() {
                    self.notify.status(&format!("joining: {detail}"));
                }
                self.events.push_local("join_failed", Some(detail));
            }
            None => {}
        }
    }

    /// Tries the seeds (resolved off this task) and, when isolated, members we knew.
    fn join_attempt(&mut self, resolved_tx: &mpsc::Sender<Vec<SocketAddr>>) {
        if self.core.local_state() == LocalState::Active
            || self.core.local_state() == LocalState::Left
        {
            self.join.next_attempt = None;
            return;
        }
        let seeds = self.config.seeds.clone();
        if !seeds.is_empty() {
            let tx = resolved_tx.clone();
            tokio::spawn(async move {
                let mut addrs = Vec::new();
                for seed in seeds {
                    let lookup = tokio::net::lookup_host(seed.as_str());
                    match tokio::time::timeout(Duration::from_secs(2), lookup).await {
                        Ok(Ok(found)) => addrs.extend(found),
                        Ok(Err(e)) => tracing::warn!("cannot resolve seed {seed}: {e}"),
                        Err(_) => tracing::warn!("resolving seed {seed} timed out"),
                    }
                }
                addrs.sort();
                addrs.dedup();
                let _ = tx.send(addrs).await;
            });
        }
        if self.core.local_state() == LocalState::Isolated {
            // Members we last knew, most recently changed first: the other side of a
            // healed partition is among them even when no seed is.
            let mut known: Vec<MemberInfo> = self.core.members().filter(|m| !m.is_local).collect();
            known.sort_by(|a, b| {
                b.since
                    .cmp(&a.since)
                    .then_with(|| a.id.name.cmp(&b.id.name))
            });
            let now = self.now();
            for member in known.into_iter().take(3) {
                let _ = self.core.announce(now, member.id);
            }
            self.drain();
        }
        let jitter = rand::rng().random_range(0.8..1.2);
        self.join.next_attempt = Some(Instant::now() + self.join.backoff.mul_f64(jitter));
        self.join.backoff = (self.join.backoff * 2).min(JOIN_BACKOFF_MAX);
    }

    /// Executes the core's effects.
    fn drain(&mut self) {
        let mut membership_changed = false;
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Send { to, envelope } => self.transport.send(&to, envelope),
                Effect::Event(event) => {
                    self.on_event(&event);
                    membership_changed = true;
                }
            }
        }
        if membership_changed {
            self.update_member_gauges();
            self.drain_repl();
        }
        self.note_dials();
        self.signals.after_core(&mut self.core);
    }

    fn on_event(&mut self, event: &Event) {
        let now = self.now();
        self.signals.on_member_event(now, event);
        match event {
            Event::MemberJoined { member } | Event::MemberRestarted { member, .. } => {
                self.replicator.member_up(now, member.clone())
            }
            Event::MemberDown { member } | Event::MemberLeft { member } => {
                // A down notice about an older generation of a member that is back
                // already must not take the new one out.
                let newer_live = self
                    .replicator
                    .live_members()
                    .any(|m| m.name == member.name && m.generation > member.generation);
                if !newer_live {
                    self.replicator.member_down(now, &member.name);
                }
            }
            Event::LocalRejoined { identity, .. } => self.replicator.set_identity(identity.clone()),
            _ => {}
        }
        let record = self.events.push_event(event);
        self.metrics
            .events
            .get_or_create(&TypeLabel {
                r#type: record.kind.clone(),
            })
            .inc();
        match event {
            Event::LocalActive { .. } => {
                self.join.next_attempt = None;
                self.join.backoff = JOIN_BACKOFF_MIN;
                tracing::info!(members = self.core.live_count(), "joined the cluster");
                let status = format!(
                    "member of the cluster ({} live members)",
                    self.core.live_count()
                );
                self.notify.ready(&status);
            }
            Event::LocalIsolated => {
                tracing::warn!("no live member left in view; trying seeds and known members");
                self.notify
                    .status("isolated: no live member in view; trying seeds and known members");
                self.join.next_attempt = Some(Instant::now());
            }
            Event::LocalRejoined { identity, .. } => {
                self.events.set_generation(identity.generation);
                if let Err(e) = self.data_dir.persist_generation(identity.generation) {
                    tracing::error!("cannot persist the new generation: {e}");
                }
                tracing::warn!(
                    generation = identity.generation,
                    "the cluster declared this node down; rejoined as a new generation"
                );
            }
            Event::LocalDefunct => {
                tracing::error!(
                    "the cluster declared this node down and it cannot renew its identity; restart it"
                );
            }
            Event::MemberDown { member } => {
                // `dead_node`: the field the recovery lines carry too.
                tracing::warn!(
                    member = %member.name,
                    dead_node = %member.name,
                    zone = %member.zone,
                    generation = member.generation,
                    "member declared down"
                )
            }
            Event::MemberSuspected { member, .. } => {
                tracing::info!(member = %member.name, "member suspected")
            }
            _ => tracing::info!(
                event = record.kind.as_str(),
                member = record.member.as_deref().unwrap_or(""),
                "membership change"
            ),
        }
    }

    fn update_member_gauges(&mut self) {
        self.signals.update_members(&self.core);
        self.metrics
            .joined
            .set(i64::from(self.core.local_state() == LocalState::Active));
    }

    fn member_json(&self, m: &MemberInfo) -> MemberJson {
        let wall = self.wall_start + m.since;
        let ms = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        MemberJson {
            name: m.id.name.to_string(),
            addr: m.id.addr.to_string(),
            zone: m.id.zone.to_string(),
            state: m.state.as_str().to_string(),
            generation: m.id.generation,
            incarnation: m.incarnation,
            left: m.left,
            local: m.is_local,
            state_since: events::format_unix_ms(ms),
        }
    }

    fn health(&self) -> HealthJson {
        let id = self.core.identity();
        let status = match self.core.local_state() {
            LocalState::Active => "ok",
            // A node without seeds founds the cluster: healthy while alone.
            LocalState::Joining if self.config.seeds.is_empty() => "alone",
            LocalState::Joining => "joining",
            LocalState::Isolated => "isolated",
            LocalState::Left => "left",
        };
        HealthJson {
            status: status.into(),
            name: id.name.to_string(),
            zone: id.zone.to_string(),
            addr: id.addr.to_string(),
            generation: id.generation,
            profile: self.core.profile().as_str().into(),
            live_members: self.core.live_count(),
            known_members: self.core.members().count(),
            version: env!("CARGO_PKG_VERSION").into(),
            wire_version: self.core.wire_version(),
            uptime_secs: self.start.elapsed().as_secs(),
            last_event_index: self.events.last_index(),
        }
    }

    fn on_api(&mut self, request: ApiRequest) {
        let now = self.now();
        match request {
            ApiRequest::Agents(reply) => {
                let agents = self
                    .replicator
                    .agents()
                    .iter()
                    .map(|v| self.agent_json(v))
                    .collect();
                let _ = reply.send(agents);
            }
            ApiRequest::Agent { agent, reply } => {
                let found = self.replicator.agent(&agent).map(|v| self.agent_json(&v));
                let _ = reply.send(found);
            }
            ApiRequest::Heartbeat { agent, reply } => {
                let _ = reply.send(self.heartbeat(&agent));
            }
            ApiRequest::IsolateAgent {
                agent,
                isolated,
                reply,
            } => {
                let result = match self.replicator.set_agent_isolated(&agent, isolated) {
                    Ok(()) => {
                        let view = self.replicator.agent(&agent);
                        Ok(view.map(|v| self.agent_json(&v)))
                    }
                    Err(e) => Err(e),
                };
                self.drain_repl();
                let _ = reply.send(match result {
                    Ok(Some(json)) => Ok(json),
                    Ok(None) => Err(ApiFailure::unavailable("the agent vanished; retry")),
                    Err(e @ vigil_protocol::ControlError::UnknownAgent { .. }) => Err(ApiFailure {
                        status: 404,
                        code: "unknown_agent".into(),
                        error: e.to_string(),
                    }),
                    Err(e) => Err(ApiFailure::unavailable(e.to_string())),
                });
            }
            ApiRequest::IsolateNode { isolated, reply } => {
                self.replicator.set_node_isolated(isolated);
                self.events.push_local(
                    if isolated {
                        "node_isolated"
                    } else {
                        "node_recovered"
                    },
                    None,
                );
                self.drain_repl();
                let _ = reply.send(NodeIsolationJson {
                    name: self.config.name.to_string(),
                    isolated,
                });
            }
            ApiRequest::Register {
                agent,
                meta,
                priority,
                reply,
            } => {
                match self.replicator.register(now, agent, meta, priority) {
                    Ok(reg) => {
                        self.pending.registers.insert(reg, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ApiFailure::bad_request(
                            "meta_too_large",
                            e.to_string(),
                        )));
                    }
                }
                self.drain_repl();
            }
            ApiRequest::Put {
                agent,
                body,
                ack,
                reply,
            } => {
                match self.replicator.put(now, &agent, body, ack) {
                    Ok(put) => {
                        self.pending.puts.insert(put, (Instant::now(), reply));
                    }
                    Err(e) => {
                        self.metrics.count_put(e.code());
                        // Refused at once (not the owner, fenced, ...).
                        self.metrics.snapshot_put_failure_seconds.observe(0.0);
                        let _ = reply.send(Err(put_failure(&e)));
                    }
                }
                self.drain_repl();
            }
            ApiRequest::Get { agent, seq, reply } => {
                match self.replicator.get(now, &agent, seq) {
                    Ok(get) => {
                        self.pending.gets.insert(get, reply);
                    }
                    Err(e) => {
                        self.metrics.count_get(e.code());
                        let _ = reply.send(Err(get_failure(&e)));
                    }
                }
                self.drain_repl();
            }
            ApiRequest::Members(reply) => {
                let members = self.core.members().map(|m| self.member_json(&m)).collect();
                let _ = reply.send(members);
            }
            ApiRequest::Health(reply) => {
                let _ = reply.send(self.health());
            }
            ApiRequest::Config(reply) => {
                let _ = reply.send(self.settings());
            }
            ApiRequest::SetConfig { patch, reply } => self.set_config(&patch, reply),
            ApiRequest::TlsReload(reply) => self.reload_tls("api", Some(reply)),
            ApiRequest::Subscribe { since, reply } => {
                let _ = reply.send(self.events.subscribe(since));
            }
        }
    }

    fn settings(&self) -> SettingsJson {
        let mut s = SettingsJson::new(&self.config, &self.runtime);
        s.isolated = Some(self.replicator.node_isolated());
        s
    }

    /// `PUT /v1/config`: persists the new runtime settings first (a node that cannot
    /// save them changes nothing, so what runs and what a restart applies agree), then
    /// applies them and logs each change.
    /// Saves a settings change to `runtime.toml` on a worker thread (an fsync on a
    /// busy disk can take longer than a probe period; this task must keep probing),
    /// then applies it ([`DiskDone::ConfigSaved`]). One change at a time, so they are
    /// saved and applied in the order they came.
    fn set_config(
        &mut self,
        patch: &Patch,
        reply: oneshot::Sender<Result<SettingsJson, ApiFailure>>,
    ) {
        if self.config_saving {
            let _ = reply.send(Err(ApiFailure {
                status: 503,
                code: "unavailable".into(),
                error: "another settings change is being saved; retry".into(),
            }));
            return;
        }
        let (next, changes) = self.runtime.preview(patch);
        if &next == self.runtime.overrides() {
            let _ = reply.send(Ok(self.apply_config(next, changes)));
            return;
        }
        self.config_saving = true;
        let dir = self.data_dir.path().to_path_buf();
        let tx = self.disk_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result =
                datadir::write_file_in(&dir, runtime::RUNTIME_FILE, next.file_text().as_bytes())
                    .map_err(|e| e.to_string());
            let _ = tx.blocking_send(DiskDone::ConfigSaved {
                next,
                changes,
                reply,
                result,
            });
        });
    }

    fn config_saved(
        &mut self,
        next: runtime::Overrides,
        changes: Vec<runtime::Change>,
        reply: oneshot::Sender<Result<SettingsJson, ApiFailure>>,
        result: Result<(), String>,
    ) {
        self.config_saving = false;
        let answer = match result {
            Ok(()) => Ok(self.apply_config(next, changes)),
            Err(e) => {
                tracing::error!("cannot save the runtime settings: {e}");
                Err(ApiFailure {
                    status: 500,
                    code: "not_saved".into(),
                    error: format!("settings not changed: {e}"),
                })
            }
        };
        let _ = reply.send(answer);
    }

    /// Makes a saved settings change take effect, logs it and reports it.
    fn apply_config(
        &mut self,
        next: runtime::Overrides,
        changes: Vec<runtime::Change>,
    ) -> SettingsJson {
        self.runtime.commit(next);
        let live = self.runtime.effective();
        for change in &changes {
            let field = change.field.as_str();
            let detail = format!("{field}: {} -> {}", change.old, change.new);
            if field == "log_filter" {
                // Logged under the more verbose of the two filters: before the switch,
                // and again after it if the old filter hid the line.
                let shown = tracing::enabled!(tracing::Level::INFO);
                tracing::info!(setting = field, old = %change.old, new = %change.new, "runtime setting changed");
                if let Err(e) = self.log.set_filter(&live.log_filter) {
                    tracing::error!("cannot change the log filter: {e}");
                }
                if !shown {
                    tracing::info!(setting = field, old = %change.old, new = %change.new, "runtime setting changed");
                }
            } else {
                tracing::info!(setting = field, old = %change.old, new = %change.new, "runtime setting changed");
            }
            self.events.push_local("config_changed", Some(detail));
        }
        let touched = |f: &str| changes.iter().any(|c| c.field == f);
        if touched("standby") || touched("capacity") {
            // Announced to every member at once.
            self.replicator
                .set_node_settings(live.standby, live.capacity);
            self.drain_repl();
        }
        if touched("heartbeat_timeout") || touched("agent_restarts") {
            self.supervisor
                .set_limits(live.heartbeat_timeout, live.agent_restarts);
        }
        let mut settings = self.settings();
        settings.changed = changes;
        settings
    }

    fn agent_json(&self, v: &AgentView) -> AgentJson {
        let r = &v.record;
        AgentJson {
            id: r.agent.to_string(),
            owner: r.owner.to_string(),
            owner_zone: r.owner_zone.to_string(),
            epoch: r.epoch,
            latest_seq: r.seq,
            holders: r
                .holders
                .iter()
                .map(|h| HolderJson {
                    name: h.name.to_string(),
                    zone: h.zone.to_string(),
                })
                .collect(),
            meta: serde_json::from_str(&r.meta).unwrap_or(serde_json::Value::Null),
            owned_here: v.local_owner,
            local_versions: v.local_versions.clone(),
            degraded: v.degraded.as_ref().map(|d| d.to_string()),
            priority: r.priority,
            isolated: r.isolated,
            state: self.agent_state(v).into(),
        }
    }

    /// Executes the replicator's effects.
    fn drain_repl(&mut self) {
        while let Some(effect) = self.replicator.poll_effect() {
            match effect {
                ReplEffect::Send { to, msg, payload } => {
                    let kind = msg.kind();
                    let body = wire::Body::Repl(msg);
                    match wire::encode_as(
                        self.core.wire_version(),
                        &body,
                        wire::MAX_STREAM_FRAME_LEN,
                    )
                    .and_then(|e| wire::frame_for_stream(&e))
                    {
                        Ok(frame) => self.transport.send_stream(&to, Bytes::from(frame), payload),
                        Err(e) => {
                            self.metrics.count_dropped("replication_encode");
                            self.log_limit.warn(
                                "repl_encode",
                                format_args!("cannot encode a {kind} message: {e}"),
                            );
                        }
                    }
                }
                ReplEffect::Persist {
                    op,
                    agent,
                    snap,
                    body,
                } => self.persist(op, agent, snap, body),
                ReplEffect::Load { op, agent, seq } => self.load(op, agent, seq),
                ReplEffect::PersistRecord { record } => {
                    let store = Arc::clone(&self.store);
                    let metrics = Arc::clone(&self.metrics);
                    let Ok(bytes) = serde_json::to_vec(&record) else {
                        continue;
                    };
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.write_record(record.agent.as_str(), &bytes) {
                            metrics.count_store_error(e.kind());
                            tracing::warn!("cannot save the record of agent {}: {e}", record.agent);
                        }
                    });
                }
                ReplEffect::DropAgent { agent } => {
                    // Moved aside here, in effect order, so that writes for the agent
                    // that later effects start (it may be adopted right after) find
                    // no directory and start a fresh one; deleted in the background.
                    let detached = match self.store.detach_agent(agent.as_str()) {
                        Ok(d) => d,
                        Err(e) => {
                            self.metrics.count_store_error(e.kind());
                            tracing::warn!("cannot remove the copies of agent {agent}: {e}");
                            None
                        }
                    };
                    if let Some(detached) = detached {
                        let store = Arc::clone(&self.store);
                        let metrics = Arc::clone(&self.metrics);
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = store.remove_detached(&detached) {
                                metrics.count_store_error(e.kind());
                                tracing::warn!("cannot remove the copies of agent {agent}: {e}");
                            }
                        });
                    }
                }
                ReplEffect::RegisterFailed { reg, reason } => {
                    if let Some(reply) = self.pending.registers.remove(&reg) {
                        let _ = reply.send(Err(ApiFailure {
                            status: 409,
                            code: "takeover_failed".into(),
                            error: reason,
                        }));
                    }
                }
                ReplEffect::PersistAcceptor { op, agent, state } => {
                    self.persist_acceptor(op, agent, state)
                }
                ReplEffect::RegisterDone { reg, record } => {
                    if let Some(reply) = self.pending.registers.remove(&reg) {
                        let view = self.replicator.agent(&record.agent);
                        let json = view.map(|v| self.agent_json(&v));
                        let _ = reply.send(json.ok_or_else(|| {
                            ApiFailure::unavailable("the agent vanished while registering; retry")
                        }));
                    }
                }
                ReplEffect::PutDone { put, result } => {
                    let Some((started, reply)) = self.pending.puts.remove(&put) else {
                        continue;
                    };
                    match result {
                        Ok(out) => {
                            self.metrics.count_put("acked");
                            self.metrics
                                .snapshot_put_seconds
                                .observe(started.elapsed().as_secs_f64());
                            let _ = reply.send(Ok(put_json(out)));
                        }
                        Err(e) => {
                            self.metrics.count_put(e.code());
                            self.metrics
                                .snapshot_put_failure_seconds
                                .observe(started.elapsed().as_secs_f64());
                            let _ = reply.send(Err(put_failure(&e)));
                        }
                    }
                }
                ReplEffect::GetDone { get, result } => {
                    if let Some((agent, epoch)) = self.launch_gets.remove(&get) {
                        self.launch_with(agent, epoch, result.ok());
                        continue;
                    }
                    let Some(reply) = self.pending.gets.remove(&get) else {
                        continue;
                    };
                    match result {
                        Ok((meta, body)) => {
                            self.metrics.count_get("found");
                            let _ = reply.send(Ok(SnapshotReply {
                                epoch: meta.epoch,
                                seq: meta.seq,
                                checksum: meta.checksum,
                                body,
                            }));
                        }
                        Err(e) => {
                            self.metrics.count_get(e.code());
                            let _ = reply.send(Err(get_failure(&e)));
                        }
                    }
                }
                ReplEffect::Event(e) => self.on_repl_event(e),
            }
        }
        for e in self.signals.after_repl(
            self.now(),
            &self.replicator,
            self.core.local_state() == LocalState::Active,
        ) {
            tracing::info!(event = e.kind, "{}", e.detail);
            let record = self.events.push_capacity(e.kind, e.zone, e.count, e.detail);
            self.count_event(&record.kind);
        }
        self.note_dials();
    }

    /// Tells the core which peers the transport started dialling (a probe of one of
    /// them is not judged before its handshake ends; see `Core::peer_connecting`).
    fn note_dials(&mut self) {
        let now = self.now();
        for peer in self.transport.take_dials_started() {
            self.core.peer_connecting(now, &peer);
        }
    }

    fn count_event(&self, kind: &str) {
        self.metrics
            .events
            .get_or_create(&TypeLabel {
                r#type: kind.to_string(),
            })
            .inc();
    }

    fn on_repl_event(&mut self, e: ReplEvent) {
        self.signals.on_repl_event(self.now(), &e);
        let names = |v: &[vigil_protocol::NodeName]| {
            v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        };
        let (mut epoch, mut seq) = (None, None);
        // The owner an election replaces (the dead node, in a recovery).
        let mut previous_owner = None;
        let detail = match &e {
            ReplEvent::AgentOwned { agent, epoch: ep } => {
                epoch = Some(*ep);
                format!("agent {agent} epoch {ep}")
            }
            ReplEvent::AgentLost {
                agent,
                owner,
                epoch: ep,
            } => {
                epoch = Some(*ep);
                format!(
                    "agent {agent} now owned by {} at epoch {ep}",
                    owner
                        .as_ref()
                        .map_or("another node".into(), |o| o.to_string())
                )
            }
            ReplEvent::AgentDegraded { agent, degraded } => format!("agent {agent}: {degraded}"),
            ReplEvent::AgentRestored { agent, copies } => {
                format!("agent {agent}: {copies} copies in the best zone spread")
            }
            ReplEvent::SnapshotCorrupt {
                agent,
                seq: s,
                reason,
            } => {
                self.metrics.snapshot_corrupt.inc();
                seq = Some(*s);
                format!("agent {agent} seq {s}: {reason}; moved aside, fetching it again")
            }
            ReplEvent::SnapshotHealed {
                agent,
                seq: s,
                from,
            } => {
                seq = Some(*s);
                format!("agent {agent} seq {s} fetched again from {from}")
            }
            ReplEvent::RepairDone {
                agent,
                added,
                removed,
                bytes,
            } => format!(
                "agent {agent}: copies added on [{}], dropped from [{}], {bytes} bytes copied",
                names(added),
                names(removed),
            ),
            ReplEvent::ElectionStarted {
                agent,
                epoch: ep,
                kind,
                previous,
            } => {
                epoch = Some(*ep);
                previous_owner = Some(previous.clone());
                format!("agent {agent}: proposing a new owner for epoch {ep} ({kind:?})")
            }
            ReplEvent::CoordinatorElected {
                agent,
                epoch: ep,
                target,
                previous,
                elapsed,
            } => {
                epoch = Some(*ep);
                previous_owner = Some(previous.clone());
                format!(
                    "agent {agent}: this node coordinates epoch {ep}, adopted by {target} (elected in {} ms)",
                    elapsed.as_millis()
                )
            }
            ReplEvent::AgentAdopted {
                agent,
                epoch: ep,
                seq: s,
                previous,
                coordinator,
            } => {
                epoch = Some(*ep);
                seq = Some(*s);
                previous_owner = Some(previous.clone());
                format!(
                    "agent {agent} adopted from {previous} at epoch {ep}, restoring seq {s} (coordinator {coordinator})"
                )
            }
            ReplEvent::AgentPending {
                agent,
                epoch: ep,
                previous,
                reason,
            } => {
                epoch = Some(*ep);
                previous_owner = Some(previous.clone());
                format!("agent {agent} waits for a host: {reason}")
            }
            ReplEvent::AgentFenced { agent, epoch: ep } => {
                epoch = Some(*ep);
                format!(
                    "agent {agent}: lease lost (no grants from a majority of its holders); stopped here"
                )
            }
            ReplEvent::AgentUnfenced { agent, epoch: ep } => {
                epoch = Some(*ep);
                format!("agent {agent}: lease held again; may run here")
            }
            ReplEvent::AgentIsolation { agent, isolated } => {
                if *isolated {
                    format!("agent {agent} isolated")
                } else {
                    format!("agent {agent} recovered from isolation")
                }
            }
        };
        let agent = e.agent().clone();
        // Every line about an agent carries `agent` and `epoch`; the lines of an
        // election and adoption sit in a `recovery` span that adds the replaced owner,
        // and `dead_node` when this node sees that owner down, as the `member_down`
        // line does: one recovery can be followed from detection to adoption across
        // the nodes' logs (docs/OPERATIONS.md), and the OpenTelemetry export (feature
        // `otel`) gets one span per step.
        let span = match &previous_owner {
            Some(p) => {
                let dead = !self.replicator.live_members().any(|m| &m.name == p);
                tracing::info_span!(
                    "recovery",
                    agent = %agent,
                    epoch,
                    previous_owner = %p,
                    dead_node = dead.then_some(p.as_str()),
                )
            }
            None => tracing::Span::none(),
        };
        let _entered = span.enter();
        let (field_agent, field_epoch) = if previous_owner.is_some() {
            (None, None) // in the span already
        } else {
            (Some(agent.as_str()), epoch)
        };
        match &e {
            ReplEvent::SnapshotCorrupt { .. }
            | ReplEvent::AgentLost { .. }
            | ReplEvent::AgentDegraded { .. }
            | ReplEvent::AgentFenced { .. }
            | ReplEvent::AgentPending { .. } => {
                tracing::warn!(
                    event = e.kind(),
                    agent = field_agent,
                    epoch = field_epoch,
                    "{detail}"
                )
            }
            _ => tracing::info!(
                event = e.kind(),
                agent = field_agent,
                epoch = field_epoch,
                "{detail}"
            ),
        }
        let record = self.agent_event(e.kind(), agent.as_str(), epoch, seq, detail);
        self.metrics
            .events
            .get_or_create(&TypeLabel {
                r#type: record.kind.clone(),
            })
            .inc();
        // What local agents do about it.
        let now = Instant::now();
        let isolated = self
            .replicator
            .agent(&agent)
            .is_some_and(|v| v.record.isolated);
        let actions = match &e {
            ReplEvent::AgentOwned { epoch, .. } if !isolated => {
                self.supervisor.owned(now, agent.as_str(), *epoch)
            }
            ReplEvent::AgentAdopted { epoch, .. } => {
                self.supervisor.owned(now, agent.as_str(), *epoch)
            }
            ReplEvent::AgentLost { .. } => self.supervisor.stop(agent.as_str(), true),
            ReplEvent::AgentFenced { .. } => self.supervisor.stop(agent.as_str(), false),
            ReplEvent::AgentIsolation { isolated: true, .. } => {
                self.supervisor.stop(agent.as_str(), false)
            }
            ReplEvent::AgentUnfenced { .. }
            | ReplEvent::AgentIsolation {
                isolated: false, ..
            } if self.replicator.agent(&agent).is_some_and(|v| v.local_owner) => {
                self.supervisor.resume(now, agent.as_str())
            }
            _ => Vec::new(),
        };
        self.act(actions);
    }

    /// Records an event about one agent.
    fn agent_event(
        &mut self,
        kind: &str,
        agent: &str,
        epoch: Option<u64>,
        seq: Option<u64>,
        detail: String,
    ) -> Arc<events::EventRecord> {
        let agent = Some(agent.to_string());
        self.events
            .push_agent(kind, AgentRef { agent, epoch, seq }, Some(detail))
    }

    /// Carries out the supervisor's decisions.
    fn act(&mut self, actions: Vec<agents::Action>) {
        for action in actions {
            match action {
                agents::Action::Start { agent, epoch } => {
                    let Ok(id) = AgentId::new(&agent) else {
                        continue;
                    };
                    // The latest snapshot first (from any holder), then the process.
                    match self.replicator.get(self.now(), &id, None) {
                        Ok(get) => {
                            self.launch_gets.insert(get, (id, epoch));
                        }
                        Err(_) => self.launch_with(id, epoch, None),
                    }
                }
                agents::Action::Stop { agent } => {
                    if let Some(l) = self.launcher.as_mut() {
                        l.stop(&agent);
                    }
                }
                agents::Action::Handoff { agent } => {
                    let Ok(id) = AgentId::new(&agent) else {
                        continue;
                    };
                    let now = self.now();
                    match self.replicator.handoff(now, &id) {
                        Ok(()) => {
                            self.agent_event(
                                "agent_handoff",
                                &agent,
                                None,
                                None,
                                format!(
                                    "agent {agent}: restarts exhausted; handing it to another host"
                                ),
                            );
                        }
                        Err(e) => {
                            self.supervisor.failed(&agent);
                            tracing::error!("agent {agent} failed: {e}");
                            self.agent_event(
                                "agent_failed",
                                &agent,
                                None,
                                None,
                                format!("agent {agent}: restarts exhausted and {e}"),
                            );
                        }
                    }
                }
                agents::Action::Event {
                    kind,
                    agent,
                    epoch,
                    detail,
                } => {
                    tracing::warn!(event = kind, "agent {agent}: {detail}");
                    self.agent_event(
                        kind,
                        &agent,
                        Some(epoch),
                        None,
                        format!("agent {agent}: {detail}"),
                    );
                }
            }
        }
        self.drain_repl();
    }

    /// Writes the restored snapshot for the agent's process (if any) and starts it.
    fn launch_with(&mut self, agent: AgentId, epoch: u64, snap: Option<(SnapMeta, Bytes)>) {
        let Some(launcher) = self.launcher.as_mut() else {
            return;
        };
        // Still ours, still allowed to run?
        let runs = self
            .replicator
            .agent(&agent)
            .is_some_and(|v| v.local_owner && v.record.epoch == epoch && !v.record.isolated)
            && !self.replicator.is_fenced(&agent);
        if !runs {
            return;
        }
        let mut path = None;
        if let Some((meta, body)) = snap {
            let dir = self.config.data_dir.join(AGENTS_DIR).join(agent.as_str());
            let file = dir.join(format!("snapshot-{}", meta.seq));
            // Small, local and once per start: written on the owner task.
            match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &body)) {
                Ok(()) => path = Some(file),
                Err(e) => tracing::warn!(
                    "cannot write the snapshot of agent {agent} for its process: {e}"
                ),
            }
        }
        let spec = LaunchSpec {
            agent: agent.to_string(),
            epoch,
            snapshot: path,
        };
        match launcher.start(&spec) {
            Ok(pid) => {
                self.agent_event(
                    "agent_started",
                    agent.as_str(),
                    Some(epoch),
                    None,
                    format!("agent {agent}: process {pid} started"),
                );
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.agent_event(
                    "agent_start_failed",
                    agent.as_str(),
                    Some(epoch),
                    None,
                    e.to_string(),
                );
            }
        }
    }

    fn on_launch(&mut self, event: LaunchEvent) {
        let LaunchEvent::Exited {
            agent,
            pid,
            epoch,
            status,
            requested,
        } = event;
        self.agent_event(
            "agent_exited",
            &agent,
            Some(epoch),
            None,
            format!("agent {agent}: process {pid} ended ({status})"),
        );
        let actions = self
            .supervisor
            .exited(Instant::now(), &agent, epoch, &status, requested);
        self.act(actions);
    }

    /// A heartbeat from a local agent.
    fn heartbeat(&mut self, agent: &AgentId) -> Result<HeartbeatJson, ApiFailure> {
        let conflict = |code: &str, error: String| ApiFailure {
            status: 409,
            code: code.into(),
            error,
        };
        let Some(view) = self.replicator.agent(agent) else {
            return Err(ApiFailure {
                status: 404,
                code: "unknown_agent".into(),
                error: format!(
                    "agent {agent} is not registered; register it first (PUT /v1/agents/{agent})"
                ),
            });
        };
        let r = &view.record;
        if !view.local_owner {
            return Err(conflict(
                "not_owner",
                format!(
                    "agent {agent} is owned by {} at epoch {}; stop this copy",
                    r.owner, r.epoch
                ),
            ));
        }
        if r.isolated {
            return Err(conflict(
                "agent_isolated",
                format!("agent {agent} is isolated; stop until it is recovered"),
            ));
        }
        if self.replicator.is_fenced(agent) {
            return Err(conflict(
                "agent_fenced",
                format!("agent {agent} is fenced here (lease lost or being handed off); stop"),
            ));
        }
        let first = self
            .supervisor
            .heartbeat(Instant::now(), agent.as_str(), r.epoch);
        if first {
            self.agent_event(
                "agent_running",
                agent.as_str(),
                Some(r.epoch),
                Some(r.seq),
                format!("agent {agent}: first heartbeat at epoch {}", r.epoch),
            );
        }
        Ok(HeartbeatJson {
            id: agent.to_string(),
            epoch: r.epoch,
            deadline_ms: u64::try_from(self.supervisor.timeout().as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn agent_state(&self, v: &AgentView) -> &'static str {
        let agent = &v.record.agent;
        if v.record.isolated {
            return "isolated";
        }
        if v.local_owner {
            if self.replicator.is_fenced(agent) {
                return "fenced";
            }
            return match self.supervisor.status(agent.as_str()) {
                Some(agents::Status::Running) => "running",
                Some(agents::Status::Failed) => "failed",
                Some(agents::Status::Stopped) => "fenced",
                Some(agents::Status::Starting) | None => "starting",
            };
        }
        if self.replicator.is_pending(agent) {
            return "pending";
        }
        "remote"
    }

    fn persist_acceptor(&self, op: u64, agent: AgentId, state: vigil_protocol::AcceptorState) {
        let store = Arc::clone(&self.store);
        let tx = self.disk_tx.clone();
        let metrics = Arc::clone(&self.metrics);
        tokio::task::spawn_blocking(move || {
            let result = serde_json::to_vec(&state)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    store.write_acceptor(agent.as_str(), &bytes).map_err(|e| {
                        metrics.count_store_error(e.kind());
                        e.to_string()
                    })
                });
            let _ = tx.blocking_send(DiskDone::Persisted { op, result });
        });
    }

    fn persist(&self, op: u64, agent: AgentId, snap: SnapMeta, body: Bytes) {
        let store = Arc::clone(&self.store);
        let tx = self.disk_tx.clone();
        let metrics = Arc::clone(&self.metrics);
        tokio::task::spawn_blocking(move || {
            let meta = VersionMeta {
                agent: agent.to_string(),
                epoch: snap.epoch,
                seq: snap.seq,
                len: snap.len,
                checksum: snap.checksum,
            };
            let result = match store.write(&meta, &body) {
                Ok(_) => {
                    metrics.snapshot_bytes_written.inc_by(snap.len);
                    Ok(())
                }
                Err(e) => {
                    metrics.count_store_error(e.kind());
                    Err(e.to_string())
                }
            };
            // The bytes (and their memory reservation) go before the owner hears back.
            drop(body);
            let _ = tx.blocking_send(DiskDone::Persisted { op, result });
        });
    }

    fn load(&self, op: u64, agent: AgentId, seq: u64) {
        let store = Arc::clone(&self.store);
        let tx = self.disk_tx.clone();
        let metrics = Arc::clone(&self.metrics);
        tokio::task::spawn_blocking(move || {
            let result = match store.read(agent.as_str(), seq) {
                Ok((m, bytes)) => Ok((
                    SnapMeta {
                        epoch: m.epoch,
                        seq: m.seq,
                        len: m.len,
                        checksum: m.checksum,
                    },
                    Bytes::from(bytes),
                )),
                Err(e @ StoreError::Corrupt { .. }) => {
                    metrics.count_store_error(e.kind());
                    // Never served again; kept aside for inspection.
                    if let Err(q) = store.quarantine(agent.as_str(), seq) {
                        tracing::warn!("cannot move corrupt agent {agent} seq {seq} aside: {q}");
                    }
                    Err(LoadError::Corrupt(e.to_string()))
                }
                Err(StoreError::NotFound { .. }) => Err(LoadError::Missing),
                Err(e) => {
                    metrics.count_store_error(e.kind());
                    Err(LoadError::Io(e.to_string()))
                }
            };
            let _ = tx.blocking_send(DiskDone::Loaded { op, result });
        });
    }

    fn on_disk(&mut self, done: DiskDone) {
        let now = self.now();
        match done {
            DiskDone::ConfigSaved {
                next,
                changes,
                reply,
                result,
            } => self.config_saved(next, changes, reply, result),
            DiskDone::Persisted { op, result } => self.replicator.on_persisted(now, op, result),
            DiskDone::Loaded { op, result } => self.replicator.on_loaded(now, op, result),
            DiskDone::TlsLoaded { trigger, result } => self.tls_loaded(trigger, result),
        }
        self.drain_repl();
    }

    /// Graceful leave: tell the cluster, give the messages a moment, close.
    async fn leave(&mut self, inbound: &mut mpsc::Receiver<Inbound>) {
        tracing::info!("leaving the cluster");
        let now = self.now();
        if let Err(e) = self.core.leave(now) {
            tracing::debug!("leave: {e}");
        }
        self.drain();
        self.events.push_local("local_left", None);
        let deadline = Instant::now() + LEAVE_GRACE;
        // Handshakes to peers we had no connection to must finish for the notice to
        // reach them; afterwards quinn must have sent what it queued.
        while Instant::now() < deadline && !self.transport.is_flushed() {
            tokio::select! {
                Some(event) = inbound.recv() => match event {
                    Inbound::Message { .. } => {}
                    other => { self.transport.on_inbound(other); }
                },
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        self.transport.shutdown(Duration::from_secs(1)).await;
    }
}
