//! `vigil agent`: one owner task drives the protocol core and executes its effects.
//!
//! Data path: network (transport tasks) or socket (API handlers) -> this task ->
//! `Core::handle_*` -> effects (send, event) -> executed here. Nothing else touches
//! the core or the event log, so there are no locks around membership state.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::RngExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use vigil_protocol::{Core, Effect, Event, LocalState, MemberInfo, MemberState, NodeId, Zone};

use crate::api::{self, ApiRequest, HealthJson, MemberJson};
use crate::config::AgentConfig;
use crate::datadir::{DataDir, DataDirError};
use crate::events::{self, EventLog};
use crate::metrics::{Metrics, StateLabel, TypeLabel};
use crate::tls;
use crate::transport::{
    Inbound, LogLimiter, SeedOutcome, Transport, TransportConfig, TransportError,
};

/// First wait between join attempts; doubles up to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(200);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a leaving node waits for handshakes to peers it must tell, and for its
/// queued datagrams to go out.
const LEAVE_GRACE: Duration = Duration::from_millis(500);
/// Requests from the API waiting for the owner.
const API_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Socket(#[from] api::SocketError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
}

/// The line `vigil agent` prints on stdout once it serves (for supervisors and tests).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadyLine {
    pub ready: bool,
    pub name: String,
    pub addr: String,
    pub socket: String,
    pub generation: u64,
    pub pid: u32,
}

pub async fn run_agent(config: AgentConfig) -> Result<(), AgentError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let generation = data_dir.next_generation()?;
    let node_tls = tls::load_node_tls(&config.pki, &config.name)?;
    let (metrics, registry) = Metrics::new();
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

    let listener = api::bind_socket(&config.socket)?;
    let (api_tx, api_rx) = mpsc::channel(API_QUEUE);
    let (stop_api, api_stopped) = oneshot::channel::<()>();
    let api_task = tokio::spawn(api::serve(
        listener,
        api_tx,
        Arc::clone(&metrics),
        Arc::new(registry),
        async move {
            let _ = api_stopped.await;
        },
    ));

    let core = Core::new(identity.clone(), config.profile, rand::random());
    let mut owner = Owner {
        core,
        transport,
        events: EventLog::new(&identity),
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
    };
    owner.events.push_local("local_started", None);
    tracing::info!(
        name = %identity.name, zone = %identity.zone, addr = %advertise, generation,
        profile = owner.config.profile.as_str(), socket = %owner.config.socket.display(),
        "vigil node started"
    );
    print_ready(&identity, &owner.config.socket)?;

    let result = owner.run(inbound, api_rx).await;
    let _ = stop_api.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    let _ = std::fs::remove_file(&owner.config.socket);
    tracing::info!("vigil node stopped");
    result
}

fn print_ready(identity: &NodeId, socket: &std::path::Path) -> Result<(), AgentError> {
    let line = ReadyLine {
        ready: true,
        name: identity.name.to_string(),
        addr: identity.addr.to_string(),
        socket: socket.display().to_string(),
        generation: identity.generation,
        pid: std::process::id(),
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

struct Owner {
    core: Core,
    transport: Transport,
    events: EventLog,
    metrics: Arc<Metrics>,
    start: Instant,
    wall_start: SystemTime,
    join: JoinState,
    log_limit: LogLimiter,
    data_dir: DataDir,
    config: AgentConfig,
    advertise: SocketAddr,
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
    ) -> Result<(), AgentError> {
        let signal_err = |source| AgentError::Io {
            context: "installing signal handlers",
            source,
        };
        let mut sigterm = signal(SignalKind::terminate()).map_err(signal_err)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(signal_err)?;
        let (resolved_tx, mut resolved_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
        self.update_member_gauges();
        loop {
            let timer_at = self.core.poll_timeout().map(|t| self.start + t);
            let join_at = self.join.next_attempt;
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                Some(event) = inbound.recv() => self.on_inbound(event),
                Some(request) = api_rx.recv() => self.on_api(request),
                Some(addrs) = resolved_rx.recv() => {
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
        self.leave(&mut inbound).await;
        Ok(())
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Message { from, bytes } => {
                let now = self.now();
                if let Err(e) = self.core.handle_datagram(now, &from, &bytes) {
                    self.metrics.count_input_error(e.kind());
                    self.log_limit
                        .warn("input", format_args!("refused a message from {from}: {e}"));
                }
                self.drain();
            }
            other => match self.transport.on_inbound(other) {
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
                    self.events
                        .push_local("join_failed", Some(format!("seed {addr}: {error}")));
                }
                None => {}
            },
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
        }
        self.metrics
            .local_health
            .set(i64::from(self.core.health_multiplier()));
    }

    fn on_event(&mut self, event: &Event) {
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
            }
            Event::LocalIsolated => {
                tracing::warn!("no live member left in view; trying seeds and known members");
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
                tracing::warn!(member = %member.name, zone = %member.zone, "member declared down")
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

    fn update_member_gauges(&self) {
        let (mut alive, mut suspect, mut down) = (0i64, 0i64, 0i64);
        for m in self.core.members() {
            match m.state {
                MemberState::Alive => alive += 1,
                MemberState::Suspect => suspect += 1,
                MemberState::Down => down += 1,
            }
        }
        for (state, n) in [("alive", alive), ("suspect", suspect), ("down", down)] {
            self.metrics
                .members
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n);
        }
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
            wire_version: vigil_protocol::wire::WIRE_VERSION,
            uptime_secs: self.start.elapsed().as_secs(),
            last_event_index: self.events.last_index(),
        }
    }

    fn on_api(&mut self, request: ApiRequest) {
        match request {
            ApiRequest::Members(reply) => {
                let members = self.core.members().map(|m| self.member_json(&m)).collect();
                let _ = reply.send(members);
            }
            ApiRequest::Health(reply) => {
                let _ = reply.send(self.health());
            }
            ApiRequest::Subscribe { since, reply } => {
                let _ = reply.send(self.events.subscribe(since));
            }
        }
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
