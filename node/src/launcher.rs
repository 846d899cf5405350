//! The optional agent launcher (`--agent-command`): a dumb process supervisor.
//!
//! The node's owner task decides when an agent runs (first start, restart in place,
//! adoption after a failover, stop when fenced or isolated); the launcher only starts
//! and stops processes and reports every exit. It never restarts anything by itself.
//!
//! - The command is a template split into argv once, at startup ([`LaunchTemplate`],
//!   `shlex` rules, no shell). Inside each argument `{id}`, `{epoch}`, `{snapshot}`
//!   (the restored snapshot file, or the empty string), `{socket}` and `{node}` are
//!   replaced in one pass, so a value that itself contains `{...}` is left alone; any
//!   other braces are literal. The child also gets `VIGIL_SOCKET`, `VIGIL_AGENT_ID`,
//!   `VIGIL_EPOCH`, `VIGIL_NODE` and, when there is one, `VIGIL_SNAPSHOT`.
//! - Each child runs in its own process group (so a stop reaches whatever it forked),
//!   with stdin from /dev/null and stdout and stderr appended to `log_dir/<agent>.log`.
//! - One tokio task per child owns the `Child` and waits for it. It sends exactly one
//!   [`LaunchEvent::Exited`] per started process, with `send().await` on the bounded
//!   channel, so an exit is never dropped. The event carries the pid and epoch, so an
//!   exit reported after the agent was started again names which process it was.
//! - [`Launcher::stop`] does not block: it tells the watcher task, which sends SIGTERM
//!   to the group, waits `stop_grace`, then SIGKILLs the group. Until that exit is
//!   reported, [`Launcher::start`] for the agent refuses with
//!   [`LaunchError::Stopping`], so two copies of one agent never run side by side.
//! - Dropping the [`Launcher`] SIGKILLs every group; children also have
//!   `kill_on_drop`, so a watcher task dropped by a runtime shutting down kills its
//!   child too.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use vigil_protocol::AgentId;

/// What the launcher needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    /// The `--agent-command` template.
    pub command: String,
    /// The node's API socket, for `{socket}` and `VIGIL_SOCKET`.
    pub socket: PathBuf,
    /// The node's name, for `{node}` and `VIGIL_NODE`.
    pub node: String,
    /// Where `<agent>.log` files go (created if missing).
    pub log_dir: PathBuf,
    /// How long a stopped agent has between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

/// One start of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub agent: String,
    /// The owner epoch the agent runs under.
    pub epoch: u64,
    /// The file holding its restored snapshot, if there is one.
    pub snapshot: Option<PathBuf>,
}

/// What the launcher reports to the owner task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchEvent {
    /// A started process ended (sent exactly once per process).
    Exited {
        agent: String,
        pid: u32,
        /// The epoch of the [`LaunchSpec`] it was started with.
        epoch: u64,
        /// `exit code 3`, `killed by SIGKILL`, ...
        status: String,
        /// The launcher had been asked to stop it ([`Launcher::stop`],
        /// [`Launcher::stop_all`] or the launcher was dropped).
        requested: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "--agent-command: {reason} in {command:?}. Fix: give a program and its arguments, quoted as in a POSIX shell (no pipes or redirections; wrap those in `sh -c '...'`), e.g. \"python3 agent.py --id {{id}} --snapshot {{snapshot}}\""
    )]
    BadTemplate { command: String, reason: String },
    #[error("cannot launch agent {agent:?}: {reason}")]
    BadAgent { agent: String, reason: String },
    #[error(
        "agent {agent}: cannot open its log {path}: {source}. Fix: make the log directory writable by the node's user"
    )]
    Log {
        agent: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "agent {agent}: cannot start {program:?}: {source}. Fix: check the program of --agent-command exists and is executable (it is looked up in PATH)"
    )]
    Spawn {
        agent: String,
        program: String,
        source: io::Error,
    },
    #[error(
        "agent {agent}: its previous process (pid {pid}) is still stopping; start it again once its exit is reported"
    )]
    Stopping { agent: String, pid: u32 },
}

/// A parsed `--agent-command`: the argv before substitution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplate {
    argv: Vec<String>,
}

impl LaunchTemplate {
    /// Splits `command` with shell quoting rules (no shell runs it).
    pub fn parse(command: &str) -> Result<Self, LaunchError> {
        let bad = |reason: &str| LaunchError::BadTemplate {
            command: command.to_string(),
            reason: reason.to_string(),
        };
        let argv = shlex::split(command)
            .ok_or_else(|| bad("unbalanced quotes or a trailing backslash"))?;
        match argv.first() {
            None => Err(bad("no program")),
            Some(program) if program.trim().is_empty() => Err(bad("the program is empty")),
            Some(_) => Ok(Self { argv }),
        }
    }

    /// The program as written (before placeholders are replaced).
    pub fn program(&self) -> Option<&str> {
        self.argv.first().map(String::as_str)
    }

    /// The argv for one start: every placeholder replaced in each argument.
    pub fn render(&self, values: &Substitution<'_>) -> Vec<String> {
        self.argv.iter().map(|arg| values.apply(arg)).collect()
    }
}

/// The values of the placeholders for one start.
#[derive(Debug, Clone, Copy)]
pub struct Substitution<'a> {
    pub id: &'a str,
    pub epoch: u64,
    pub snapshot: Option<&'a Path>,
    pub socket: &'a Path,
    pub node: &'a str,
}

impl Substitution<'_> {
    fn value(&self, name: &str) -> Option<String> {
        Some(match name {
            "id" => self.id.to_string(),
            "epoch" => self.epoch.to_string(),
            "snapshot" => self
                .snapshot
                .map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
            "socket" => self.socket.to_string_lossy().into_owned(),
            "node" => self.node.to_string(),
            _ => return None,
        })
    }

    /// One left-to-right pass: a substituted value is never scanned again, and braces
    /// that do not name a placeholder (JSON, `${VAR}`) stay as they are.
    fn apply(&self, arg: &str) -> String {
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let known = after
                .find('}')
                .and_then(|close| self.value(&after[..close]).map(|v| (v, close)));
            match known {
                Some((value, close)) => {
                    out.push_str(&value);
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// A running child, as the launcher sees it.
struct Running {
    pid: u32,
    /// `Some(grace)` asks the watcher to stop the child. The watcher drops its
    /// receiver once the child is reaped, which is how the launcher learns it is gone
    /// without waiting for the owner task to process the event.
    stop: watch::Sender<Option<Duration>>,
    stopping: bool,
}

impl Running {
    fn exited(&self) -> bool {
        self.stop.is_closed()
    }
}

/// Starts and stops agent processes; see the module documentation. Dropping it
/// drops every stop channel, and each watcher then SIGKILLs its child's group.
pub struct Launcher {
    template: LaunchTemplate,
    config: LauncherConfig,
    events: mpsc::Sender<LaunchEvent>,
    children: BTreeMap<String, Running>,
}

impl Launcher {
    /// Checks the template; no process starts and no directory is made yet.
    pub fn new(
        config: LauncherConfig,
        events: mpsc::Sender<LaunchEvent>,
    ) -> Result<Self, LaunchError> {
        Ok(Self {
            template: LaunchTemplate::parse(&config.command)?,
            config,
            events,
            children: BTreeMap::new(),
        })
    }

    /// Starts the agent, or returns the pid of its process if it is already running.
    /// Call it within a Tokio runtime: the child's watcher is a task.
    pub fn start(&mut self, spec: &LaunchSpec) -> Result<u32, LaunchError> {
        AgentId::new(&spec.agent).map_err(|e| LaunchError::BadAgent {
            agent: spec.agent.clone(),
            reason: e.to_string(),
        })?;
        if let Some(running) = self.children.get(&spec.agent)
            && !running.exited()
        {
            if running.stopping {
                return Err(LaunchError::Stopping {
                    agent: spec.agent.clone(),
                    pid: running.pid,
                });
            }
            return Ok(running.pid);
        }
        let log_err = |path: &Path, source| LaunchError::Log {
            agent: spec.agent.clone(),
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.config.log_dir)
            .map_err(|e| log_err(&self.config.log_dir, e))?;
        let log_path = self.config.log_dir.join(format!("{}.log", spec.agent));
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| log_err(&log_path, e))?;
        let stderr = stdout.try_clone().map_err(|e| log_err(&log_path, e))?;

        let argv = self.template.render(&Substitution {
            id: &spec.agent,
            epoch: spec.epoch,
            snapshot: spec.snapshot.as_deref(),
            socket: &self.config.socket,
            node: &self.config.node,
        });
        // `parse` refused an empty argv, and rendering keeps the number of arguments.
        let (program, args) = argv.split_first().ok_or_else(|| LaunchError::BadTemplate {
            command: self.config.command.clone(),
            reason: "no program".into(),
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("VIGIL_SOCKET", &self.config.socket)
            .env("VIGIL_AGENT_ID", &spec.agent)
            .env("VIGIL_EPOCH", spec.epoch.to_string())
            .env("VIGIL_NODE", &self.config.node)
            .env_remove("VIGIL_SNAPSHOT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // Its own group: a stop signals everything the agent forked, and a
            // terminal's Ctrl-C aimed at the node does not hit the agents directly.
            .process_group(0)
            .kill_on_drop(true);
        // systemd's notify socket and watchdog are the node's, not the agents'.
        for var in crate::systemd::ENV_VARS {
            cmd.env_remove(var);
        }
        if let Some(snapshot) = &spec.snapshot {
            cmd.env("VIGIL_SNAPSHOT", snapshot);
        }
        let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
            agent: spec.agent.clone(),
            program: program.clone(),
            source,
        })?;
        // A child that was spawned has a pid until it is reaped, and nothing reaped it.
        let pid = child.id().unwrap_or_default();
        let (stop, stop_rx) = watch::channel(None);
        tokio::spawn(watch_child(
            spec.agent.clone(),
            spec.epoch,
            pid,
            child,
            stop_rx,
            self.events.clone(),
        ));
        self.children.insert(
            spec.agent.clone(),
            Running {
                pid,
                stop,
                stopping: false,
            },
        );
        Ok(pid)
    }

    /// Asks the agent's process to stop: SIGTERM to its group now, SIGKILL after the
    /// configured grace. Returns at once; the exit comes as a [`LaunchEvent`].
    pub fn stop(&mut self, agent: &str) {
        let grace = self.config.stop_grace;
        if let Some(running) = self.children.get_mut(agent) {
            request_stop(running, grace);
        }
    }

    /// The pid of the agent's process while it runs (also while it is stopping).
    pub fn running(&self, agent: &str) -> Option<u32> {
        self.children
            .get(agent)
            .filter(|r| !r.exited())
            .map(|r| r.pid)
    }

    /// Every agent with a live process, with its pid.
    pub fn agents(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .filter(|(_, r)| !r.exited())
            .map(|(a, r)| (a.clone(), r.pid))
            .collect()
    }

    /// Stops every agent (SIGTERM, SIGKILL after `grace`) and waits until all are
    /// reaped, for the node's shutdown. Their exit events are still sent, but this
    /// does not wait for the owner task to read them.
    pub async fn stop_all(&mut self, grace: Duration) {
        for running in self.children.values_mut() {
            request_stop(running, grace);
        }
        let children = std::mem::take(&mut self.children);
        // The watcher SIGKILLs at `grace`; the margin covers reaping only.
        let all = futures_util::future::join_all(children.values().map(|r| r.stop.closed()));
        if tokio::time::timeout(grace + Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("some agent processes were not reaped after SIGKILL");
        }
    }
}

fn request_stop(running: &mut Running, grace: Duration) {
    if running.stopping || running.exited() {
        return;
    }
    running.stopping = true;
    // Fails only when the watcher is gone, that is the child already exited.
    let _ = running.stop.send(Some(grace));
}

/// Owns one child: waits for it, stops it when asked, and reports its exit once.
async fn watch_child(
    agent: String,
    epoch: u64,
    pid: u32,
    mut child: Child,
    mut stop: watch::Receiver<Option<Duration>>,
    events: mpsc::Sender<LaunchEvent>,
) {
    let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let (status, requested) = tokio::select! {
        status = child.wait() => (status, false),
        grace = wait_for_stop(&mut stop) => {
            // The child is not reaped yet (its wait future was pending and nothing
            // else polls it), so its pid still names its group.
            let _ = killpg(group, grace.map_or(Signal::SIGKILL, |_| Signal::SIGTERM));
            let status = match grace {
                Some(grace) => match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => kill_and_reap(&mut child, group).await,
                },
                None => child.wait().await,
            };
            (status, true)
        }
    };
    // Whatever the agent forked and left behind goes with it. The group leader was
    // just reaped; its pid is not reused while any member of the group is alive, and
    // with none alive this finds nobody.
    let _ = killpg(group, Signal::SIGKILL);
    // Tells the launcher the process is gone before the event is queued.
    drop(stop);
    let status = match status {
        Ok(status) => describe(status),
        Err(e) => format!("unknown (waiting for it failed: {e})"),
    };
    tracing::debug!(%agent, pid, %status, requested, "agent process exited");
    let _ = events
        .send(LaunchEvent::Exited {
            agent,
            pid,
            epoch,
            status,
            requested,
        })
        .await;
}

/// Resolves with the grace period when a stop is asked, or with `None` (kill now)
/// when the launcher is gone.
async fn wait_for_stop(stop: &mut watch::Receiver<Option<Duration>>) -> Option<Duration> {
    loop {
        if let Some(grace) = *stop.borrow_and_update() {
            return Some(grace);
        }
        if stop.changed().await.is_err() {
            return None;
        }
    }
}

async fn kill_and_reap(child: &mut Child, group: Pid) -> io::Result<ExitStatus> {
    // `try_wait` reaps a child that exited at the last moment, so the group is only
    // signalled while its leader is still unreaped.
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let _ = killpg(group, Signal::SIGKILL);
    child.wait().await
}

/// `exit code 3`, `killed by SIGKILL`.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(signal) => format!("killed by {}", signal.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Generous: these are real processes on a possibly busy test machine.
    const WAIT: Duration = Duration::from_secs(20);

    fn launcher(
        dir: &Path,
        command: &str,
        grace: Duration,
    ) -> (Launcher, mpsc::Receiver<LaunchEvent>) {
        let (tx, rx) = mpsc::channel(8);
        let config = LauncherConfig {
            command: command.into(),
            socket: dir.join("vigil.sock"),
            node: "n1".into(),
            log_dir: dir.join("logs"),
            stop_grace: grace,
        };
        (Launcher::new(config, tx).unwrap(), rx)
    }

    fn spec(agent: &str, epoch: u64, snapshot: Option<PathBuf>) -> LaunchSpec {
        LaunchSpec {
            agent: agent.into(),
            epoch,
            snapshot,
        }
    }

    async fn next(rx: &mut mpsc::Receiver<LaunchEvent>) -> LaunchEvent {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no launch event in time")
            .expect("channel closed")
    }

    #[test]
    fn templates_split_like_a_shell_and_bad_ones_are_refused() {
        let t = LaunchTemplate::parse(r#"python3 "my agent.py" --meta '{"a": 1}'"#).unwrap();
        assert_eq!(t.argv, ["python3", "my agent.py", "--meta", r#"{"a": 1}"#]);
        for bad in ["", "   ", "python3 'unclosed", "\"\" x"] {
            let err = LaunchTemplate::parse(bad).unwrap_err();
            assert!(matches!(err, LaunchError::BadTemplate { .. }), "{bad:?}");
            assert!(err.to_string().starts_with("--agent-command: "), "{err}");
        }
    }

    #[test]
    fn placeholders_are_replaced_once_and_other_braces_kept() {
        let t = LaunchTemplate::parse(
            "run --id={id} -e {epoch} {snapshot} {socket} {node} {nope} '{\"k\":{id}}' {id",
        )
        .unwrap();
        let socket = PathBuf::from("/tmp/{id}/v.sock");
        let values = Substitution {
            id: "a-1",
            epoch: 7,
            snapshot: None,
            socket: &socket,
            node: "n2",
        };
        assert_eq!(
            t.render(&values),
            [
                "run",
                "--id=a-1",
                "-e",
                "7",
                "",
                "/tmp/{id}/v.sock",
                "n2",
                "{nope}",
                "{\"k\":a-1}",
                "{id"
            ]
        );
        let snap = PathBuf::from("/s/a-1.snap");
        let with = Substitution {
            snapshot: Some(&snap),
            ..values
        };
        assert_eq!(t.render(&with)[4], "/s/a-1.snap");
    }

    #[test]
    fn statuses_read_like_a_shell_would_say() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }

    #[tokio::test]
    async fn an_exit_is_reported_once_with_its_code_and_output_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, mut rx) = launcher(
            dir.path(),
            "sh -c 'echo out $VIGIL_AGENT_ID $VIGIL_EPOCH $VIGIL_NODE {id}; echo err >&2; exit 3'",
            Duration::from_secs(5),
        );
        let pid = l.start(&spec("a1", 4, None)).unwrap();
        let LaunchEvent::Exited {
            agent,
            pid: exited,
            epoch,
            status,
            requested,
        } = next(&mut rx).await;
        assert_eq!(
            (agent.as_str(), exited, epoch, status.as_str(), requested),
            ("a1", pid, 4, "exit code 3", false)
        );
        assert_eq!(l.running("a1"), None);
        let log = std::fs::read_to_string(dir.path().join("logs/a1.log")).unwrap();
        assert_eq!(log, "out a1 4 n1 a1\nerr\n");
        // Nothing else is reported for that process.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_snapshot_path_reaches_the_agent_as_argument_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, mut rx) = launcher(
            dir.path(),
            "sh -c 'echo \"[$1] [$VIGIL_SNAPSHOT] [$VIGIL_SOCKET]\"' sh {snapshot}",
            Duration::from_secs(5),
        );
        let snap = dir.path().join("a1.snap");
        l.start(&spec("a1", 1, Some(snap.clone()))).unwrap();
        next(&mut rx).await;
        l.start(&spec("a1", 2, None)).unwrap();
        next(&mut rx).await;
        let log = std::fs::read_to_string(dir.path().join("logs/a1.log")).unwrap();
        let sock = dir.path().join("vigil.sock");
        assert_eq!(
            log,
            format!(
                "[{s}] [{s}] [{k}]\n[] [] [{k}]\n",
                s = snap.display(),
                k = sock.display()
            )
        );
    }

    #[tokio::test]
    async fn a_stop_terminates_the_group_and_says_it_was_requested() {
        let dir = tempfile::tempdir().unwrap();
        // The shell forks a sleep and waits: the group signal reaches both.
        let (mut l, mut rx) = launcher(
            dir.path(),
            "sh -c 'sleep 30; true'",
            Duration::from_secs(10),
        );
        let pid = l.start(&spec("a1", 1, None)).unwrap();
        assert_eq!(
            l.start(&spec("a1", 1, None)).unwrap(),
            pid,
            "already running"
        );
        assert_eq!(l.running("a1"), Some(pid));
        l.stop("a1");
        // The test runtime runs one task at a time: the watcher has not even seen the
        // request yet, so the process is certainly still there.
        assert!(matches!(
            l.start(&spec("a1", 2, None)),
            Err(LaunchError::Stopping { pid: p, .. }) if p == pid
        ));
        assert_eq!(l.running("a1"), Some(pid));
        let LaunchEvent::Exited {
            pid: exited,
            status,
            requested,
            ..
        } = next(&mut rx).await;
        assert_eq!(
            (exited, status.as_str(), requested),
            (pid, "killed by SIGTERM", true)
        );
        assert_eq!(l.running("a1"), None);
        // Started again after the exit was reported.
        let again = l.start(&spec("a1", 2, None)).unwrap();
        assert_ne!(again, pid);
        l.stop_all(Duration::from_secs(5)).await;
        assert_eq!(l.running("a1"), None);
        let LaunchEvent::Exited {
            pid: p, requested, ..
        } = next(&mut rx).await;
        assert_eq!((p, requested), (again, true));
    }

    #[tokio::test]
    async fn a_process_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ready");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (mut l, mut rx) = launcher(
            dir.path(),
            &format!(
                "sh -c 'trap \"\" TERM; echo ready > {}; while :; do sleep 1; done'",
                fifo.display()
            ),
            Duration::from_millis(300),
        );
        let pid = l.start(&spec("stubborn", 1, None)).unwrap();
        // Stop only once the trap is set, or the SIGTERM could land before it: the
        // read of the FIFO returns when the shell has written to it.
        let ready = tokio::task::spawn_blocking(move || std::fs::read_to_string(fifo));
        let ready = tokio::time::timeout(WAIT, ready).await.unwrap().unwrap();
        assert_eq!(ready.unwrap(), "ready\n");
        l.stop("stubborn");
        let LaunchEvent::Exited {
            pid: exited,
            status,
            requested,
            ..
        } = next(&mut rx).await;
        assert_eq!(
            (exited, status.as_str(), requested),
            (pid, "killed by SIGKILL", true)
        );
    }

    #[tokio::test]
    async fn a_missing_program_or_a_bad_agent_id_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, _rx) = launcher(
            dir.path(),
            "/nonexistent/agent {id}",
            Duration::from_secs(1),
        );
        let err = l.start(&spec("a1", 1, None)).unwrap_err();
        assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/agent"), "{err}");
        let err = l.start(&spec("../x", 1, None)).unwrap_err();
        assert!(matches!(err, LaunchError::BadAgent { .. }), "{err}");
        assert_eq!(l.running("a1"), None);
    }
}
