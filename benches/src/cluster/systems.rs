//! The systems under test, behind one small interface: real `vigil agent`
//! processes (QUIC + mutual TLS), and processes that print udp-node's NDJSON lines
//! on stdout: `udp-node` (the same core over plain UDP) and the peer binaries
//! (`foca-lan`, `chitchat-node`, `memberlist-node`). All report into the same
//! [`Observer`] channel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use vigil::client;
use vigil::events::EventRecord;
use vigil::harness::{LocalCluster, follow_events};

use super::observe::{Item, Observed, Observer, Traffic};

/// How long one node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node told to stop may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for udp-node's first counters after a window boundary (it
/// reports every second).
const STATS_LAG: Duration = Duration::from_secs(5);

pub const ZONES: [&str; 3] = ["az1", "az2", "az3"];

/// Unix time now, in (fractional) milliseconds.
pub fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Unix time now, in whole milliseconds, truncated as the nodes truncate theirs.
pub fn unix_ms() -> u64 {
    to_unix_ms(SystemTime::now())
}

pub use vigil::harness::to_unix_ms;

/// A running cluster of one system.
pub(crate) trait BenchCluster {
    /// Starts `names` one after the other (zones round robin, the first seeds the
    /// rest), each once the previous one is ready, with its reports flowing to `tx`.
    async fn start_all(
        &mut self,
        names: &[String],
        tx: &mpsc::Sender<Observed>,
    ) -> Result<(), String>;

    /// Running nodes and their process ids.
    fn pids(&self) -> Vec<(String, u32)>;

    /// Marks the start of the warm-up: the last node became ready at `unix_ms`
    /// (vigil: reads the counters now).
    async fn mark_ready(&mut self, unix_ms: u64) -> Result<(), String>;

    /// Every node's cumulative counters as the last node became ready, as far as
    /// they are known. Asked after the window, when udp-node's lines about that
    /// moment have surely arrived.
    fn at_ready(&self, obs: &Observer) -> BTreeMap<String, Traffic>;

    /// Marks the start of a measurement window (vigil: reads the counters now).
    async fn window_start(&mut self, obs: &mut Observer) -> Result<(), String>;

    /// Ends the window now: every running node's cumulative traffic counters at the
    /// window's start and end, each stamped with when it was read. `obs` holds what
    /// the nodes have reported (udp-node's counters arrive on its stdout).
    async fn traffic(
        &mut self,
        obs: &mut Observer,
    ) -> Result<BTreeMap<String, (Traffic, Traffic)>, String>;

    /// SIGKILL; returns the Unix ms taken just before the signal.
    async fn kill(&mut self, name: &str) -> Result<u64, String>;

    /// Stops every running node gracefully, killing the ones that do not exit.
    async fn stop_all(&mut self);
}

// ---------------------------------------------------------------------------------
// vigil

pub struct VigilCluster {
    cluster: LocalCluster,
    followers: Vec<JoinHandle<()>>,
    at_ready: BTreeMap<String, Traffic>,
    at_start: BTreeMap<String, Traffic>,
}

impl VigilCluster {
    /// Creates the CA and certificates for `names` in a scratch directory (outside
    /// any timing).
    pub fn new(binary: &Path, names: &[String]) -> Result<Self, String> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // VIGIL_BENCH_KEEP=1 keeps every node's data dir and log for a look after the
        // run (e.g. at a false positive); RUST_LOG, when set, replaces the nodes' filter.
        let keep = std::env::var_os("VIGIL_BENCH_KEEP").is_some_and(|v| v == "1");
        let mut cluster = LocalCluster::new(binary.to_path_buf(), &refs, keep)
            .map_err(|e| format!("vigil cluster setup: {e}"))?;
        if keep {
            eprintln!("vigil nodes' logs kept in {}", cluster.root().display());
        }
        if let Ok(filter) = std::env::var("RUST_LOG") {
            cluster.env.retain(|(k, _)| k != "RUST_LOG");
            cluster.env.push(("RUST_LOG".into(), filter));
        }
        Ok(VigilCluster {
            cluster,
            followers: Vec::new(),
            at_ready: BTreeMap::new(),
            at_start: BTreeMap::new(),
        })
    }

    /// The cluster of real processes underneath (sockets, addresses, certificates).
    pub fn local(&self) -> &LocalCluster {
        &self.cluster
    }

    async fn scrape(&self) -> Result<BTreeMap<String, Traffic>, String> {
        let mut out = BTreeMap::new();
        for node in self.cluster.nodes().filter(|n| n.is_running()) {
            // The reading is stamped mid-request: the counters are read somewhere in
            // between, and the request takes about a millisecond.
            let before = unix_ms_f64();
            let reply = client::get(&node.socket, "/metrics")
                .await
                .map_err(|e| format!("{}: GET /metrics: {e}", node.name))?;
            let after = unix_ms_f64();
            let text = String::from_utf8_lossy(&reply.body);
            let counter = |name: &str| {
                prom_value(&text, name)
                    .ok_or_else(|| format!("{}: /metrics has no {name}", node.name))
            };
            out.insert(
                node.name.clone(),
                Traffic {
                    t_ms: (before + after) / 2.0,
                    tx_bytes: counter("vigil_udp_tx_bytes_total")?,
                    tx_packets: counter("vigil_udp_tx_packets_total")?,
                    rx_bytes: counter("vigil_udp_rx_bytes_total")?,
                    rx_packets: counter("vigil_udp_rx_packets_total")?,
                    connections_opened: Some(prom_sum(&text, "vigil_connections_opened_total")),
                    swim_datagrams: Some(counter("vigil_datagrams_sent_total")?),
                },
            );
        }
        Ok(out)
    }
}

/// The value of an unlabelled counter in Prometheus text format.
pub fn prom_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (metric, value) = l.split_once(' ')?;
            (metric == name).then_some(value)
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        // Counters are whole numbers far below 2^53.
        .map(|v| v as u64)
}

/// The sum of a counter over all its label sets (zero if absent).
pub fn prom_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Forwards one vigil node's event stream (from its first event) to the observer,
/// subscribing again where it left off if the node cuts it off as too slow.
async fn follow_vigil(name: String, socket: PathBuf, tx: mpsc::Sender<Observed>) {
    let forward = |record: EventRecord| {
        let observed = Observed {
            node: name.clone(),
            item: Item::Event {
                time_ms: record.time_ms,
                kind: record.kind,
                member: record.member,
            },
        };
        let tx = tx.clone();
        // Stop once the observer is gone.
        async move { tx.send(observed).await.err().map(drop) }
    };
    let why = match follow_events(&socket, None, forward).await {
        Ok(Some(())) => return,
        Ok(None) => "event stream closed".to_string(),
        Err(e) => e.to_string(),
    };
    let _ = tx
        .send(Observed {
            node: name,
            item: Item::Closed(why),
        })
        .await;
}

impl BenchCluster for VigilCluster {
    async fn start_all(
        &mut self,
        names: &[String],
        tx: &mpsc::Sender<Observed>,
    ) -> Result<(), String> {
        let mut seed: Option<SocketAddr> = None;
        for (i, name) in names.iter().enumerate() {
            let seeds: Vec<SocketAddr> = seed.into_iter().collect();
            let node = self
                .cluster
                .start(name, ZONES[i % ZONES.len()], &seeds)
                .await
                .map_err(|e| format!("start {name}: {e}"))?;
            seed.get_or_insert(node.addr);
            let task = tokio::spawn(follow_vigil(name.clone(), node.socket.clone(), tx.clone()));
            self.followers.push(task);
        }
        Ok(())
    }

    fn pids(&self) -> Vec<(String, u32)> {
        self.cluster
            .nodes()
            .filter(|n| n.is_running())
            .map(|n| (n.name.clone(), n.pid))
            .collect()
    }

    async fn mark_ready(&mut self, _unix_ms: u64) -> Result<(), String> {
        self.at_ready = self.scrape().await?;
        Ok(())
    }

    fn at_ready(&self, _obs: &Observer) -> BTreeMap<String, Traffic> {
        self.at_ready.clone()
    }

    async fn window_start(&mut self, _obs: &mut Observer) -> Result<(), String> {
        self.at_start = self.scrape().await?;
        Ok(())
    }

    async fn traffic(
        &mut self,
        _obs: &mut Observer,
    ) -> Result<BTreeMap<String, (Traffic, Traffic)>, String> {
        let end = self.scrape().await?;
        Ok(end
            .into_iter()
            .filter_map(|(name, e)| Some((name.clone(), (*self.at_start.get(&name)?, e))))
            .collect())
    }

    async fn kill(&mut self, name: &str) -> Result<u64, String> {
        let at = self
            .cluster
            .kill(name)
            .await
            .map_err(|e| format!("kill {name}: {e}"))?;
        Ok(to_unix_ms(at))
    }

    async fn stop_all(&mut self) {
        self.cluster.stop_all().await;
        for task in self.followers.drain(..) {
            task.abort();
        }
    }
}

impl Drop for VigilCluster {
    fn drop(&mut self) {
        // The LocalCluster kills its processes when dropped; the followers must not
        // outlive the run either.
        for task in &self.followers {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------
// udp-node

struct UdpNode {
    child: Option<Child>,
    pid: u32,
    /// Forwards its stdout once it is ready.
    reader: Option<JoinHandle<()>>,
}

/// A cluster of processes speaking udp-node's NDJSON on stdout: udp-node itself
/// or a peer binary.
pub struct UdpCluster {
    binary: PathBuf,
    /// Passed to every node after its name, zone and bind address.
    extra_args: Vec<String>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<String, UdpNode>,
    ready_ms: f64,
    window_start_ms: f64,
}

/// The lines of udp-node's stdout this benchmark reads.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UdpLine {
    Ready {
        addr: SocketAddr,
    },
    Event {
        t_ms: u64,
        event: String,
        #[serde(default)]
        member: Option<String>,
    },
    Stats {
        t_ms: u64,
        tx_bytes: u64,
        tx_packets: u64,
        rx_bytes: u64,
        rx_packets: u64,
    },
}

impl UdpCluster {
    pub fn new(binary: &Path, extra_args: Vec<String>) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("cluster-bench-")
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        Ok(UdpCluster {
            binary: binary.to_path_buf(),
            extra_args,
            dir,
            nodes: BTreeMap::new(),
            ready_ms: 0.0,
            window_start_ms: 0.0,
        })
    }

    async fn start_one(
        &mut self,
        name: &str,
        zone: &str,
        seed: Option<&str>,
        tx: &mpsc::Sender<Observed>,
    ) -> Result<SocketAddr, String> {
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--name", name, "--zone", zone, "--bind", "127.0.0.1:0"])
            .args(&self.extra_args);
        if let Some(seed) = seed {
            cmd.args(["--seed", seed]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        let pid = child.id().ok_or_else(|| format!("{name} exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{name}: no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        // Registered before the ready line is read, so a failure below still leaves
        // the process to the cluster's cleanup.
        self.nodes.insert(
            name.to_string(),
            UdpNode {
                child: Some(child),
                pid,
                reader: None,
            },
        );
        let first = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => match serde_json::from_str::<UdpLine>(&line) {
                Ok(UdpLine::Ready { addr }) => addr,
                _ => return Err(format!("{name}: unexpected first line {line:?}")),
            },
            Ok(Ok(None)) => {
                // The scratch directory goes with the cluster, so quote the log.
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("{name} exited before it was ready: {}", log.trim()));
            }
            Ok(Err(e)) => return Err(format!("{name}: reading stdout: {e}")),
            Err(_) => return Err(format!("{name}: not ready after {READY_TIMEOUT:?}")),
        };
        let reader = tokio::spawn(follow_udp(name.to_string(), lines, tx.clone()));
        if let Some(node) = self.nodes.get_mut(name) {
            node.reader = Some(reader);
        }
        Ok(addr)
    }
}

/// Forwards one udp-node's stdout lines to the observer.
async fn follow_udp(
    name: String,
    mut lines: Lines<BufReader<ChildStdout>>,
    tx: mpsc::Sender<Observed>,
) {
    let why = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break "stdout closed".to_string(),
            Err(e) => break e.to_string(),
        };
        let item = match serde_json::from_str::<UdpLine>(&line) {
            Ok(UdpLine::Event {
                t_ms,
                event,
                member,
            }) => Item::Event {
                time_ms: t_ms,
                kind: event,
                member,
            },
            Ok(UdpLine::Stats {
                t_ms,
                tx_bytes,
                tx_packets,
                rx_bytes,
                rx_packets,
            }) => Item::Stats(Traffic {
                // Unix ms stay far below 2^53, so this is exact.
                t_ms: t_ms as f64,
                tx_bytes,
                tx_packets,
                rx_bytes,
                rx_packets,
                connections_opened: None,
                swim_datagrams: None,
            }),
            // Other lines (a second ready line cannot happen) carry nothing measured.
            Ok(UdpLine::Ready { .. }) | Err(_) => continue,
        };
        let observed = Observed {
            node: name.clone(),
            item,
        };
        if tx.send(observed).await.is_err() {
            return;
        }
    };
    let _ = tx
        .send(Observed {
            node: name,
            item: Item::Closed(why),
        })
        .await;
}

fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // The process may already be gone; that is what we wanted anyway.
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

impl BenchCluster for UdpCluster {
    async fn start_all(
        &mut self,
        names: &[String],
        tx: &mpsc::Sender<Observed>,
    ) -> Result<(), String> {
        let mut seed: Option<String> = None;
        for (i, name) in names.iter().enumerate() {
            let addr = self
                .start_one(name, ZONES[i % ZONES.len()], seed.as_deref(), tx)
                .await?;
            seed.get_or_insert_with(|| format!("{name}@{addr}"));
        }
        Ok(())
    }

    fn pids(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(name, n)| (name.clone(), n.pid))
            .collect()
    }

    async fn mark_ready(&mut self, unix_ms: u64) -> Result<(), String> {
        // Unix ms stay far below 2^53, so this is exact.
        self.ready_ms = unix_ms as f64;
        Ok(())
    }

    fn at_ready(&self, obs: &Observer) -> BTreeMap<String, Traffic> {
        // The last line at or before that moment; a node reports once at its start
        // and then every second, so only a node that had just started may have none
        // yet, and its counters were then (about) zero.
        self.nodes
            .keys()
            .map(|name| {
                let at = obs
                    .stats_at_or_before(name, self.ready_ms)
                    .unwrap_or(Traffic {
                        t_ms: self.ready_ms,
                        ..Traffic::default()
                    });
                (name.clone(), at)
            })
            .collect()
    }

    async fn window_start(&mut self, _obs: &mut Observer) -> Result<(), String> {
        self.window_start_ms = unix_ms_f64();
        Ok(())
    }

    async fn traffic(
        &mut self,
        obs: &mut Observer,
    ) -> Result<BTreeMap<String, (Traffic, Traffic)>, String> {
        let end_ms = unix_ms_f64();
        let running: Vec<String> = self.pids().into_iter().map(|(n, _)| n).collect();
        // The node reports once a second; the line covering the boundary is the last
        // one at or before it, which is known for sure once a later one arrives.
        let deadline = Instant::now() + STATS_LAG;
        obs.pump_until(deadline, |o| {
            running.iter().all(|n| o.stats_after(n, end_ms))
        })
        .await;
        let mut out = BTreeMap::new();
        for name in running {
            let start = obs
                .stats_at_or_before(&name, self.window_start_ms)
                .ok_or_else(|| format!("{name}: no counters before the window"))?;
            let end = obs
                .stats_at_or_before(&name, end_ms)
                .ok_or_else(|| format!("{name}: no counters in the window"))?;
            out.insert(name, (start, end));
        }
        Ok(out)
    }

    async fn kill(&mut self, name: &str) -> Result<u64, String> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| format!("no node {name}"))?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| format!("{name} is not running"))?;
        let t0 = unix_ms();
        signal_pid(node.pid, Signal::SIGKILL);
        child
            .wait()
            .await
            .map_err(|e| format!("reap {name}: {e}"))?;
        Ok(t0)
    }

    async fn stop_all(&mut self) {
        // Everyone is told at once (as the vigil harness's sequential stop would be
        // slower without measuring anything); stragglers are killed.
        let mut children = Vec::new();
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.take() {
                signal_pid(node.pid, Signal::SIGTERM);
                children.push((node.pid, child));
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (pid, mut child) in children {
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                signal_pid(pid, Signal::SIGKILL);
                let _ = child.wait().await;
            }
        }
        for reader in self.nodes.values().filter_map(|n| n.reader.as_ref()) {
            reader.abort();
        }
    }
}

impl Drop for UdpCluster {
    fn drop(&mut self) {
        // kill_on_drop reaps asynchronously and needs a runtime; a panic may have
        // taken it away. Signal directly so no node outlives the benchmark.
        for node in self.nodes.values() {
            if node.child.is_some() {
                signal_pid(node.pid, Signal::SIGKILL);
            }
            if let Some(reader) = &node.reader {
                reader.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn prometheus_counters_are_found_by_exact_name() {
        let text = "# HELP vigil_udp_tx_bytes UDP payload bytes\n\
                    # TYPE vigil_udp_tx_bytes counter\n\
                    vigil_udp_tx_bytes_total 12345\n\
                    vigil_udp_tx_bytes_total_other 7\n\
                    vigil_events_total{type=\"member_joined\"} 3\n";
        assert_eq!(prom_value(text, "vigil_udp_tx_bytes_total"), Some(12345));
        assert_eq!(prom_value(text, "vigil_udp_rx_bytes_total"), None);
        let text = "vigil_connections_opened_total{direction=\"in\"} 4\n\
                    vigil_connections_opened_total{direction=\"out\"} 5\n\
                    vigil_connections_opened_total_x 100\n";
        assert_eq!(prom_sum(text, "vigil_connections_opened_total"), 9);
        assert_eq!(prom_sum(text, "vigil_nothing"), 0);
    }

    #[test]
    fn udp_node_lines_decode() {
        let line = r#"{"type":"stats","t_ms":5,"tx_bytes":1,"tx_packets":2,"rx_bytes":3,"rx_packets":4,"rx_errors":0,"live":3}"#;
        assert!(matches!(
            serde_json::from_str::<UdpLine>(line).unwrap(),
            UdpLine::Stats { rx_packets: 4, .. }
        ));
        let line =
            r#"{"type":"event","t_ms":5,"event":"member_down","member":"n2","generation":9}"#;
        assert!(matches!(
            serde_json::from_str::<UdpLine>(line).unwrap(),
            UdpLine::Event {
                member: Some(_),
                ..
            }
        ));
    }
}
