//! Local clusters of real `vigil agent` processes on loopback: certificates in a
//! scratch directory, one child process per node, and event-driven waiting (no
//! polling loops). Used by `vigil demo`, the black-box tests and the benchmarks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use vigil_protocol::NodeName;

use crate::api::MemberJson;
use crate::client::{self, ClientError, StreamItem};
use crate::events::EventRecord;
use crate::node::ReadyLine;
use crate::tls;

pub mod intruder;
pub mod recovery;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("certificates: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("node {name}: {message} (log: {log})")]
    Node {
        name: String,
        message: String,
        log: String,
    },
    #[error("no node named {0}")]
    Unknown(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("client: {0}")]
    Client(#[from] ClientError),
}

/// One running (or stopped) node of a local cluster.
pub struct LocalNode {
    pub name: String,
    pub zone: String,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// The advertised address: what peers (and seeds lists) use.
    pub addr: SocketAddr,
    /// The address the node's UDP socket is bound to; differs from `addr` only when
    /// the node was started with `--advertise` (e.g. behind a fault proxy).
    pub bound: SocketAddr,
    pub generation: u64,
    pub pid: u32,
    /// Where the node serves `/metrics` over TCP, when started with `--metrics-bind`.
    pub metrics: Option<SocketAddr>,
    child: Option<Child>,
    _stdout: Option<ChildStdout>,
}

impl LocalNode {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn closed_stream(&self) -> HarnessError {
        HarnessError::Node {
            name: self.name.clone(),
            message: "closed its event stream".into(),
            log: self.log.display().to_string(),
        }
    }
}

pub struct LocalCluster {
    root: PathBuf,
    _scratch: Option<tempfile::TempDir>,
    pki: PathBuf,
    binary: PathBuf,
    profile: String,
    nodes: BTreeMap<String, LocalNode>,
    /// Extra environment for every node (e.g. RUST_LOG).
    pub env: Vec<(String, String)>,
}

/// Where a node process runs: by default directly, bound to 127.0.0.1 on a free port;
/// a wrapper (e.g. `ip netns exec NS`) runs it elsewhere, bound to `bind`.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Program and arguments the vigil binary is appended to; empty: run it directly.
    pub wrapper: Vec<std::ffi::OsString>,
    pub bind: String,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            wrapper: Vec::new(),
            bind: "127.0.0.1:0".into(),
        }
    }
}

/// How long a node may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl LocalCluster {
    /// A cluster rooted in a fresh scratch directory (deleted on drop unless kept),
    /// with a CA and certificates for `names`.
    pub fn new(binary: PathBuf, names: &[&str], keep: bool) -> Result<Self, HarnessError> {
        let scratch = tempfile::Builder::new().prefix("vigil-").tempdir()?;
        let root = scratch.path().to_path_buf();
        let mut cluster = Self::in_dir(binary, &root, names)?;
        cluster._scratch = if keep {
            let _ = scratch.keep();
            None
        } else {
            Some(scratch)
        };
        Ok(cluster)
    }

    /// A cluster rooted in `root` (kept), with certificates for `names`.
    pub fn in_dir(binary: PathBuf, root: &Path, names: &[&str]) -> Result<Self, HarnessError> {
        let pki = root.join("pki");
        tls::init_ca(&pki, true)?;
        for name in names {
            let name =
                NodeName::new(name).map_err(|e| HarnessError::Unknown(format!("{name}: {e}")))?;
            tls::issue_node_cert(&pki, &name, &pki, 30, true)?;
        }
        Ok(LocalCluster {
            root: root.to_path_buf(),
            _scratch: None,
            pki,
            binary,
            profile: "lan".into(),
            nodes: BTreeMap::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pki(&self) -> &Path {
        &self.pki
    }

    /// Runs the nodes started from now on with `binary` instead (another build, for
    /// mixed-version tests); returns the one it replaces.
    pub fn set_binary(&mut self, binary: PathBuf) -> PathBuf {
        std::mem::replace(&mut self.binary, binary)
    }

    pub fn set_profile(&mut self, profile: &str) {
        self.profile = profile.into();
    }

    pub fn node(&self, name: &str) -> Result<&LocalNode, HarnessError> {
        self.nodes
            .get(name)
            .ok_or_else(|| HarnessError::Unknown(name.into()))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &LocalNode> {
        self.nodes.values()
    }

    /// Starts `name` in `zone`, joining through `seeds`, and waits for its ready line.
    pub async fn start(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
    ) -> Result<&LocalNode, HarnessError> {
        self.start_with(name, zone, seeds, &[]).await
    }

    /// Like [`LocalCluster::start`], with extra arguments.
    pub async fn start_with(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
        extra_args: &[String],
    ) -> Result<&LocalNode, HarnessError> {
        let pki = self.pki.clone();
        self.spawn(name, zone, seeds, &pki, extra_args, &Placement::default())
            .await
    }

    /// Starts `nodes` (name, zone) one after the other, each once the previous one
    /// is ready, the first seeding the rest, each with `extra_args`.
    pub async fn start_seeded(
        &mut self,
        nodes: &[(&str, &str)],
        extra_args: &[String],
    ) -> Result<(), HarnessError> {
        let mut seeds = Vec::new();
        for (name, zone) in nodes {
            let addr = self.start_with(name, zone, &seeds, extra_args).await?.addr;
            if seeds.is_empty() {
                seeds.push(addr);
            }
        }
        Ok(())
    }

    /// Like [`LocalCluster::start_with`], run through `placement` (e.g. in a network
    /// namespace).
    pub async fn start_placed(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
        extra_args: &[String],
        placement: &Placement,
    ) -> Result<&LocalNode, HarnessError> {
        let pki = self.pki.clone();
        self.spawn(name, zone, seeds, &pki, extra_args, placement)
            .await
    }

    /// Like [`LocalCluster::start`], with certificates from another directory (another
    /// CA, a wrong certificate).
    pub async fn start_with_pki(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
        pki: &Path,
    ) -> Result<&LocalNode, HarnessError> {
        self.spawn(name, zone, seeds, pki, &[], &Placement::default())
            .await
    }

    async fn spawn(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
        pki: &Path,
        extra_args: &[String],
        placement: &Placement,
    ) -> Result<&LocalNode, HarnessError> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("vigil.sock");
        let data_dir = dir.join("data");
        let log = dir.join("node.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = match placement.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("agent")
            .args(["--name", name, "--zone", zone, "--bind", &placement.bind])
            .arg("--pki")
            .arg(pki)
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--profile", &self.profile]);
        for seed in seeds {
            cmd.arg("--seed").arg(seed.to_string());
        }
        cmd.args(extra_args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_SEED")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let node_err = |message: String| HarnessError::Node {
            name: name.to_string(),
            message,
            log: log.display().to_string(),
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| node_err("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str::<ReadyLine>(&line)
                .map_err(|e| node_err(format!("unexpected first line {line:?}: {e}")))?,
            Ok(Ok(None)) => {
                let status = child.wait().await.ok();
                return Err(node_err(format!("exited before it was ready ({status:?})")));
            }
            Ok(Err(e)) => return Err(node_err(e.to_string())),
            Err(_) => return Err(node_err(format!("not ready after {START_TIMEOUT:?}"))),
        };
        let addr = ready
            .addr
            .parse()
            .map_err(|_| node_err(format!("bad address {:?}", ready.addr)))?;
        let bound = match &ready.bound {
            Some(b) => b
                .parse()
                .map_err(|_| node_err(format!("bad bound address {b:?}")))?,
            None => addr,
        };
        let node = LocalNode {
            name: name.into(),
            zone: zone.into(),
            socket,
            data_dir,
            log,
            addr,
            bound,
            generation: ready.generation,
            pid: ready.pid,
            metrics: ready.metrics.as_deref().and_then(|m| m.parse().ok()),
            child: Some(child),
            _stdout: Some(lines.into_inner().into_inner()),
        };
        self.nodes.insert(name.into(), node);
        self.node(name)
    }

    /// Whether a node the harness started has exited on its own since (reaped here:
    /// the node counts as stopped afterwards). `None`: still running, or not started.
    pub fn exited(&mut self, name: &str) -> Result<Option<std::process::ExitStatus>, HarnessError> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| HarnessError::Unknown(name.into()))?;
        let Some(child) = node.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            node.child = None;
            node._stdout = None;
        }
        Ok(status)
    }

    /// Sends `signal` to a node without waiting for it.
    pub fn signal(&self, name: &str, signal: Signal) -> Result<(), HarnessError> {
        let node = self.node(name)?;
        let pid = i32::try_from(node.pid).map_err(|_| HarnessError::Unknown(name.into()))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        Ok(())
    }

    /// SIGKILL, then reap. Returns the wall-clock instant the signal was sent.
    pub async fn kill(&mut self, name: &str) -> Result<SystemTime, HarnessError> {
        let at = SystemTime::now();
        self.signal(name, Signal::SIGKILL)?;
        self.reap(name, Duration::from_secs(10)).await?;
        Ok(at)
    }

    /// SIGTERM (graceful leave), then wait for the exit. Returns the exit code.
    pub async fn stop(&mut self, name: &str) -> Result<Option<i32>, HarnessError> {
        self.signal(name, Signal::SIGTERM)?;
        self.reap(name, Duration::from_secs(10)).await
    }

    async fn reap(&mut self, name: &str, timeout: Duration) -> Result<Option<i32>, HarnessError> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| HarnessError::Unknown(name.into()))?;
        let Some(mut child) = node.child.take() else {
            return Ok(None);
        };
        node._stdout = None;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?.code()),
            Err(_) => {
                let _ = child.kill().await;
                Err(HarnessError::Timeout {
                    what: format!("{name} to exit"),
                    after: timeout,
                })
            }
        }
    }

    /// Stops every running node gracefully (in name order).
    pub async fn stop_all(&mut self) {
        let names: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.name.clone())
            .collect();
        for name in names {
            let _ = self.stop(&name).await;
        }
    }

    /// Waits until `check` holds for `name`'s member list. Re-checks after every event
    /// the node reports, so it wakes exactly when the view changes.
    pub async fn wait_members(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[MemberJson]) -> bool,
    ) -> Result<Vec<MemberJson>, HarnessError> {
        self.wait_view(name, what, timeout, client::members, |m| check(m))
            .await
    }

    /// Waits until `check` holds for what `fetch` reads from `name`'s socket, reading
    /// it again after every event the node reports.
    pub async fn wait_view<T>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        fetch: impl AsyncFn(&Path) -> Result<T, ClientError>,
        check: impl Fn(&T) -> bool,
    ) -> Result<T, HarnessError> {
        let node = self.node(name)?;
        let wait = async {
            // Subscribe from the last event before the first read: a change after it
            // is an event that wakes the next read.
            let since = client::health(&node.socket).await?.last_event_index;
            let view = fetch(&node.socket).await?;
            if check(&view) {
                return Ok(view);
            }
            let (fetch, check, socket) = (&fetch, &check, node.socket.as_path());
            let found = follow_events(socket, Some(since), move |_| async move {
                match fetch(socket).await {
                    Ok(view) if check(&view) => Some(Ok(view)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .await?;
            match found {
                Some(view) => Ok(view?),
                None => Err(node.closed_stream()),
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| HarnessError::Timeout {
                what: format!("{name}: {what}"),
                after: timeout,
            })?
    }

    /// Waits until every running node sees exactly the running nodes alive.
    pub async fn wait_converged(&self, timeout: Duration) -> Result<(), HarnessError> {
        let running: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.name.clone())
            .collect();
        let deadline = Instant::now() + timeout;
        for name in &running {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_members(name, "all running nodes alive", left, |members| {
                running
                    .iter()
                    .all(|r| members.iter().any(|m| &m.name == r && m.state == "alive"))
            })
            .await?;
        }
        Ok(())
    }

    /// Collects `name`'s events (from its start) until `done` returns true for one.
    pub async fn wait_event(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&EventRecord) -> bool,
    ) -> Result<EventRecord, HarnessError> {
        let node = self.node(name)?;
        let wait = follow_events(&node.socket, None, |record| {
            std::future::ready(done(&record).then_some(record))
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Some(record))) => Ok(record),
            Ok(Ok(None)) => Err(node.closed_stream()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(HarnessError::Timeout {
                what: format!("an event on {name}"),
                after: timeout,
            }),
        }
    }

    /// Follows the events of `names` from now on (each from its latest event), merged
    /// in the order they arrive. A node's feed ends when the node stops.
    pub async fn watch(&self, names: &[&str]) -> Result<EventWatch, HarnessError> {
        let (tx, rx) = mpsc::channel(4096);
        let mut tasks = Vec::new();
        let mut seen = BTreeMap::new();
        for name in names {
            let socket = self.node(name)?.socket.clone();
            let since = client::health(&socket).await?.last_event_index;
            // Subscribed before returning, so nothing after this call is missed.
            let mut stream = ResumingStream::open(&socket, Some(since)).await?;
            seen.insert(name.to_string(), since);
            let (name, tx) = (name.to_string(), tx.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(record)) = stream.next().await {
                    if tx.send((name.clone(), Some(record))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send((name, None)).await;
            }));
        }
        Ok(EventWatch {
            rx,
            tasks,
            seen,
            ended: BTreeSet::new(),
        })
    }
}

/// Follows the events of the node at `socket` after index `since` (`None`: from the
/// oldest it retains) and hands each to `each` until it returns `Some`. When the node
/// cuts the stream off as too slow (its final error line), subscribes again after
/// the last event seen, so no event is missed. `Ok(None)`: the node closed the
/// stream (it stopped or died).
pub async fn follow_events<T, F: Future<Output = Option<T>>>(
    socket: &Path,
    since: Option<u64>,
    mut each: impl FnMut(EventRecord) -> F,
) -> Result<Option<T>, ClientError> {
    let mut stream = ResumingStream::open(socket, since).await?;
    while let Some(record) = stream.next().await? {
        if let Some(found) = each(record).await {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// A node's event stream that resubscribes after the last event seen when the node
/// cuts it off as too slow.
struct ResumingStream {
    socket: PathBuf,
    last: Option<u64>,
    stream: client::EventStream,
}

impl ResumingStream {
    /// Events after index `since` (all retained ones with `None`).
    async fn open(socket: &Path, since: Option<u64>) -> Result<Self, ClientError> {
        Ok(Self {
            socket: socket.to_path_buf(),
            last: since,
            stream: client::events(socket, since).await?,
        })
    }

    /// The next event, or `None` when the node closed the stream.
    async fn next(&mut self) -> Result<Option<EventRecord>, ClientError> {
        loop {
            match self.stream.next().await? {
                Some(StreamItem::Event(record)) => {
                    self.last = Some(record.index);
                    return Ok(Some(record));
                }
                Some(StreamItem::Error(e)) => {
                    tracing::debug!("event stream: {}", e.error);
                    self.stream = client::events(&self.socket, self.last).await?;
                }
                None => return Ok(None),
            }
        }
    }
}

/// The merged events of some nodes of a local cluster ([`LocalCluster::watch`]).
pub struct EventWatch {
    /// A node's events, then `None` when its feed ends.
    rx: mpsc::Receiver<(String, Option<EventRecord>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The last index received from each node.
    seen: BTreeMap<String, u64>,
    /// Nodes whose feed ended (the node stopped).
    ended: BTreeSet<String>,
}

impl EventWatch {
    /// The next event of any watched node, with the node's name; `None` when every
    /// watched node's feed has ended.
    pub async fn next(&mut self) -> Option<(String, EventRecord)> {
        loop {
            match self.rx.recv().await? {
                (name, Some(record)) => {
                    self.seen.insert(name.clone(), record.index);
                    return Some((name, record));
                }
                (name, None) => {
                    self.ended.insert(name);
                }
            }
        }
    }

    /// Receives every event that the watched nodes have reported up to now: up to
    /// its `last_event_index` for a running node, to the end of its feed for a stopped
    /// one. What was received before and this make a complete record up to this call,
    /// not up to wherever a feed happened to be.
    pub async fn catch_up(
        &mut self,
        cluster: &LocalCluster,
        timeout: Duration,
    ) -> Result<Vec<(String, EventRecord)>, HarnessError> {
        let mut until = BTreeMap::new();
        let mut stopped = Vec::new();
        for name in self.seen.keys() {
            let node = cluster.node(name)?;
            if node.is_running() {
                let last = client::health(&node.socket).await?.last_event_index;
                until.insert(name.to_string(), last);
            } else {
                stopped.push(name.to_string());
            }
        }
        let mut got = Vec::new();
        let read = async {
            while until
                .iter()
                .any(|(n, last)| self.seen.get(n).copied().unwrap_or(0) < *last)
                || stopped.iter().any(|n| !self.ended.contains(n))
            {
                match self.next().await {
                    Some(item) => got.push(item),
                    None => break,
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| HarnessError::Timeout {
                what: format!("the events up to {until:?} and the end of {stopped:?}"),
                after: timeout,
            })?;
        Ok(got)
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // kill_on_drop reaps asynchronously; make sure nothing outlives the harness
        // even when no runtime is left to do it.
        for node in self.nodes.values() {
            if node.child.is_some()
                && let Ok(pid) = i32::try_from(node.pid)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Unix time of `t` in whole milliseconds, truncated like the nodes' event times.
pub fn to_unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `vigil` binary to run: `$VIGIL_BIN`, or a `vigil` next to (or one directory
/// above) the running executable, as Cargo lays out targets.
pub fn find_vigil_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("VIGIL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "vigil") {
        return Ok(exe);
    }
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join("vigil");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    Err(HarnessError::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no vigil binary found; build it with `cargo build -p vigil` or set VIGIL_BIN",
    )))
}
