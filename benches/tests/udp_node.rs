#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! Real `udp-node` processes on loopback: they join, notice a crash, and leave
//! gracefully. No sleeps: the test blocks on the nodes' stdout with deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(30);

/// What the reader threads report.
enum Output {
    Json(Value),
    /// A stdout line that is not JSON, or a stderr line: kept for failure messages.
    Text(String),
    Closed,
}

/// The nodes of one test. Kills every child still running when dropped, so a failed
/// assertion leaves no stray processes behind.
struct Cluster {
    children: BTreeMap<String, Child>,
    tx: Sender<(String, Output)>,
    rx: Receiver<(String, Output)>,
    /// Everything read so far, for failure messages.
    log: Vec<String>,
    /// Nodes whose stdout has closed.
    closed: BTreeSet<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    fn new() -> Self {
        let (tx, rx) = channel();
        Cluster {
            children: BTreeMap::new(),
            tx,
            rx,
            log: Vec::new(),
            closed: BTreeSet::new(),
        }
    }

    fn spawn(&mut self, name: &str, seeds: &[String]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_udp-node"));
        cmd.args(["--name", name, "--zone", "z1", "--bind", "127.0.0.1:0"]);
        for seed in seeds {
            cmd.args(["--seed", seed]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        self.children.insert(name.to_owned(), child);
        self.read_lines(name, stdout, true);
        self.read_lines(name, stderr, false);
    }

    fn read_lines(&self, name: &str, pipe: impl Read + Send + 'static, is_stdout: bool) {
        let tx = self.tx.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let out = match serde_json::from_str(&line) {
                    Ok(v) if is_stdout => Output::Json(v),
                    _ => Output::Text(line),
                };
                if tx.send((name.clone(), out)).is_err() {
                    return;
                }
            }
            if is_stdout {
                let _ = tx.send((name, Output::Closed));
            }
        });
    }

    /// Feeds every line to `done` until it returns true; panics with the collected
    /// output if that takes longer than [`TIMEOUT`].
    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&str, &Output) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((name, out)) => {
                    if matches!(out, Output::Closed) {
                        self.closed.insert(name.clone());
                    }
                    self.log.push(match &out {
                        Output::Json(v) => format!("{name}: {v}"),
                        Output::Text(t) => format!("{name} (text): {t}"),
                        Output::Closed => format!("{name}: stdout closed"),
                    });
                    if done(&name, &out) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out after {TIMEOUT:?} waiting for {what}; output so far:\n{}",
                        self.log.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("the cluster holds a sender"),
            }
        }
    }

    fn wait_ready(&mut self, name: &str) -> String {
        let mut addr = None;
        self.wait_for(&format!("{name} ready"), |n, out| {
            if let Output::Json(v) = out
                && n == name
                && v["type"] == "ready"
            {
                addr = v["addr"].as_str().map(str::to_owned);
            }
            addr.is_some()
        });
        addr.unwrap()
    }

    /// Waits until each of `observers` has reported `event` for every one of its
    /// `members`.
    fn wait_events(&mut self, event: &str, expected: &[(&str, &[&str])]) {
        let mut pending: BTreeSet<(String, String)> = expected
            .iter()
            .flat_map(|(o, ms)| ms.iter().map(|m| (o.to_string(), m.to_string())))
            .collect();
        self.wait_for(&format!("{event}: {pending:?}"), |n, out| {
            if let Output::Json(v) = out
                && v["type"] == "event"
                && v["event"] == event
                && let Some(member) = v["member"].as_str()
            {
                pending.remove(&(n.to_owned(), member.to_owned()));
            }
            pending.is_empty()
        });
    }

    fn wait_exit(&mut self, name: &str) -> ExitStatus {
        // The node's last act is to print final stats; stdout then closes. An earlier
        // wait may already have read the close.
        if !self.closed.contains(name) {
            self.wait_for(&format!("{name} to exit"), |n, out| {
                n == name && matches!(out, Output::Closed)
            });
        }
        let mut child = self.children.remove(name).unwrap();
        child.wait().unwrap()
    }

    fn pid(&self, name: &str) -> Pid {
        Pid::from_raw(i32::try_from(self.children[name].id()).unwrap())
    }
}

#[test]
fn three_nodes_join_and_detect_a_crash() {
    let mut cluster = Cluster::new();
    cluster.spawn("n1", &[]);
    let seed = format!("n1@{}", cluster.wait_ready("n1"));
    cluster.spawn("n2", std::slice::from_ref(&seed));
    cluster.spawn("n3", std::slice::from_ref(&seed));

    cluster.wait_events(
        "member_joined",
        &[
            ("n1", &["n2", "n3"]),
            ("n2", &["n1", "n3"]),
            ("n3", &["n1", "n2"]),
        ],
    );

    cluster.children.get_mut("n3").unwrap().kill().unwrap(); // SIGKILL: no goodbye
    cluster.wait_events("member_down", &[("n1", &["n3"]), ("n2", &["n3"])]);
}

#[test]
fn garbage_is_counted_and_sigterm_leaves_gracefully() {
    let mut cluster = Cluster::new();
    cluster.spawn("a1", &[]);
    let a1_addr = cluster.wait_ready("a1");
    cluster.spawn("a2", &[format!("a1@{a1_addr}")]);
    cluster.wait_events("member_joined", &[("a1", &["a2"]), ("a2", &["a1"])]);

    // Not an envelope, an envelope whose SWIM header is garbage, and an oversized
    // datagram: each is counted and dropped, and the node carries on.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(b"XXjunk", &a1_addr).unwrap();
    // Envelope header, `Body::Swim` tag, an 8-byte view digest, then a 3-byte "SWIM
    // packet" whose header cannot decode.
    junk.send_to(b"VG\x01\x00\0\0\0\0\0\0\0\0\x03\xff\xff\xff", &a1_addr)
        .unwrap();
    junk.send_to(&[0u8; 1600], &a1_addr).unwrap();
    let at_least = |v: &Value, n: u64| v.as_u64().is_some_and(|x| x >= n);
    cluster.wait_for("a1 to count the junk", |n, out| {
        matches!(out, Output::Json(v)
            if n == "a1"
                && v["type"] == "stats"
                && at_least(&v["rx_error_kinds"]["bad_magic"], 1)
                && at_least(&v["rx_error_kinds"]["swim_header"], 1)
                && at_least(&v["rx_dropped"], 1))
    });

    kill(cluster.pid("a2"), Signal::SIGTERM).unwrap();
    cluster.wait_events("member_left", &[("a1", &["a2"])]);
    let status = cluster.wait_exit("a2");
    assert!(status.success(), "a2 exited with {status}");
}
