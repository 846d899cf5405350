//! Network-namespace labs: real `vigil agent` processes on separate network stacks,
//! so a test can cut hosts off each other with blackhole routes (the kernel here has
//! no netem; namespaces, veth and bridges are enough for partitions).
//!
//! Layout of one [`NetLab`] with `n` hosts, named `vigil-lab-<pid>-<serial>`:
//!
//! ```text
//!   namespace <lab>-br:  bridge br0, ports p0 .. p(n-1)
//!   namespace <lab>-hK:  lo up, eth0 (veth peer of pK) = 10.213.X.(K+1)/24
//! ```
//!
//! Nothing is created in the root namespace: the host's interfaces and routes are
//! never touched, and two labs (threads of one test binary, or several binaries at
//! once) cannot collide even on the same subnet, since each has its own bridge in its
//! own namespace. Only the namespace names are global; the pid and a per-process
//! serial make them unique, and the pid lets a later run delete what a crashed run
//! left behind.
//!
//! A partition is a pair of blackhole /32 routes per cut link, one in each host's
//! namespace: a blackhole drops what its own namespace *sends* (the sender gets
//! EINVAL, which quinn ignores like any lost datagram), but not what it receives
//! (rp_filter is off in a fresh namespace), so both sides are needed to cut a link
//! both ways. A /32 is more specific than the connected /24, so nothing else changes
//! and each host still reaches its own address. [`NetLab::reachable`] checks a link
//! with a real datagram.

// HarnessError, shared with vigil::harness, is large; it is returned on cold paths only.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vigil::api::MemberJson;
use vigil::events::EventRecord;
use vigil::harness::{HarnessError, LocalCluster, LocalNode, Placement};

/// Prefix of every namespace a lab creates.
const PREFIX: &str = "vigil-lab-";
/// Set (to anything but `0`) to make [`NetLab::new_or_skip`] fail instead of skipping.
pub const REQUIRE_ENV: &str = "VIGIL_REQUIRE_NETNS";
/// The UDP port every lab node binds (each host has its own port space).
pub const NODE_PORT: u16 = 7946;

static SERIAL: AtomicU32 = AtomicU32::new(0);
/// Serializes namespace creation and stale cleanup within this process (concurrent
/// first-time `ip netns add` calls race on mounting /run/netns).
static SETUP: Mutex<bool> = Mutex::new(false);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Network namespaces cannot be used on this machine (not root, no `ip`, no
    /// permission): tests skip.
    #[error("network namespaces unavailable: {0}")]
    Unavailable(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no host {0} in this lab")]
    NoHost(usize),
    #[error("no node named {0} in this cluster")]
    UnknownNode(String),
}

/// A set of network namespaces joined by a bridge; deleted (with every process still
/// inside) on drop, also when a test panics.
pub struct NetLab {
    name: String,
    ip: PathBuf,
    subnet: [u8; 3],
    hosts: usize,
    /// Namespaces created so far (the bridge's first), for a partial setup's cleanup.
    created: Vec<String>,
    /// Cut links, as (lower, higher) host index.
    cuts: BTreeSet<(usize, usize)>,
    /// One-way cuts, as (sender, receiver): what the sender sends to the receiver is
    /// dropped; the other direction works.
    one_way: BTreeSet<(usize, usize)>,
}

impl NetLab {
    /// Why network namespaces cannot be used here, or `None` when they probably can
    /// (root and an `ip` binary; [`NetLab::new`] still reports a refused `ip netns add`
    /// as [`LabError::Unavailable`]).
    pub fn unavailable() -> Option<String> {
        match effective_uid() {
            Some(0) => {}
            Some(uid) => return Some(format!("not root (effective uid {uid})")),
            None => return Some("cannot read the effective uid".into()),
        }
        if find_ip().is_none() {
            return Some("no `ip` binary (install iproute2)".into());
        }
        None
    }

    /// A lab of `hosts` (at most 250) namespaces, each with its own address on one
    /// bridge.
    pub fn new(hosts: usize) -> Result<NetLab, LabError> {
        if hosts > 250 {
            return Err(LabError::NoHost(hosts - 1));
        }
        if let Some(why) = Self::unavailable() {
            return Err(LabError::Unavailable(why));
        }
        let ip = find_ip().ok_or_else(|| LabError::Unavailable("no `ip` binary".into()))?;
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{serial}", std::process::id());
        let mut lab = NetLab {
            name,
            ip,
            // Labs are isolated from each other, so any /24 would do; varying the third
            // octet only keeps logs of concurrent labs apart.
            subnet: [10, 213, (serial % 256) as u8],
            hosts,
            created: Vec::new(),
            cuts: BTreeSet::new(),
            one_way: BTreeSet::new(),
        };
        {
            let mut cleaned = SETUP.lock().unwrap_or_else(|e| e.into_inner());
            if !*cleaned {
                *cleaned = true;
                clean_stale(&lab.ip);
            }
            let bridge = lab.bridge_ns();
            match lab.ip_cmd(None, &["netns", "add", &bridge]) {
                Ok(_) => lab.created.push(bridge),
                Err(LabError::Command { stderr, .. })
                    if stderr.contains("not permitted") || stderr.contains("denied") =>
                {
                    return Err(LabError::Unavailable(stderr));
                }
                Err(e) => return Err(e),
            }
            for k in 0..hosts {
                let ns = lab.host_ns(k);
                lab.ip_cmd(None, &["netns", "add", &ns])?;
                lab.created.push(ns);
            }
        }
        let bridge = lab.bridge_ns();
        let br = Some(bridge.as_str());
        lab.ip_cmd(br, &["link", "add", "br0", "type", "bridge"])?;
        lab.ip_cmd(br, &["link", "set", "br0", "up"])?;
        for k in 0..hosts {
            let ns = lab.host_ns(k);
            let port = format!("p{k}");
            let cidr = format!("{}/24", lab.addr(k));
            lab.ip_cmd(
                br,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            lab.ip_cmd(br, &["link", "set", &port, "master", "br0", "up"])?;
            let h = Some(ns.as_str());
            lab.ip_cmd(h, &["link", "set", "lo", "up"])?;
            lab.ip_cmd(h, &["addr", "add", &cidr, "dev", "eth0"])?;
            lab.ip_cmd(h, &["link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// [`NetLab::new`], or `None` after printing why namespaces are unavailable (the
    /// caller returns: the test passes as skipped). Panics on any other failure, and
    /// also when unavailable if `VIGIL_REQUIRE_NETNS` is set.
    pub fn new_or_skip(hosts: usize) -> Option<NetLab> {
        match NetLab::new(hosts) {
            Ok(lab) => Some(lab),
            Err(LabError::Unavailable(why)) if !required() => {
                eprintln!("skipping: network namespaces unavailable: {why}");
                None
            }
            Err(e) => panic!("cannot set up the network-namespace lab: {e}"),
        }
    }

    /// The lab's name, the prefix of its namespaces.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many hosts the lab has.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// The namespace of host `k` (`<lab>-hK`).
    pub fn host_ns(&self, k: usize) -> String {
        format!("{}-h{k}", self.name)
    }

    /// The namespace holding the bridge.
    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.name)
    }

    /// Host `k`'s address: `10.213.X.(k+1)`.
    pub fn addr(&self, k: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, u8::try_from(k + 1).unwrap_or(255))
    }

    /// A command that runs `program` inside host `k`'s namespace
    /// (`ip netns exec NS program`, which execs it: the child's pid is the program's);
    /// add its arguments, environment and stdio as usual.
    pub fn command(&self, k: usize, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.ip);
        cmd.args(&self.exec_prefix(k)[1..]).arg(program);
        cmd
    }

    /// `ip netns exec NS` for host `k`: what runs a program inside its namespace.
    pub fn exec_prefix(&self, k: usize) -> Vec<OsString> {
        vec![
            self.ip.clone().into_os_string(),
            "netns".into(),
            "exec".into(),
            self.host_ns(k).into(),
        ]
    }

    /// Runs `program args` inside host `k`'s namespace to completion (blocking) and
    /// returns its output, whatever its exit status.
    pub fn run_in(
        &self,
        k: usize,
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Result<Output, LabError> {
        self.check(k)?;
        Ok(std::process::Command::new(&self.ip)
            .args(["netns", "exec"])
            .arg(self.host_ns(k))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs `ip -n <host k's namespace> args` and returns its stdout, e.g.
    /// `lab.ip_in(0, &["route"])`.
    pub fn ip_in(&self, k: usize, args: &[&str]) -> Result<String, LabError> {
        self.check(k)?;
        self.ip_cmd(Some(&self.host_ns(k)), args)
    }

    /// A UDP socket bound to `addr(k):port` inside host `k`'s namespace (a socket stays
    /// in the namespace it was created in, whatever thread uses it later).
    pub fn udp_socket(&self, k: usize, port: u16) -> Result<UdpSocket, LabError> {
        self.check(k)?;
        bind_in_ns(&self.ns_path(k), SocketAddrV4::new(self.addr(k), port)).map_err(LabError::Io)
    }

    /// Opens UDP sockets bound to `addr(k):0` inside host `k`'s namespace, one per
    /// call: the upstream sockets of a fault proxy in front of host `k`'s node
    /// (`faultproxy::FaultProxy::spawn`).
    pub fn udp_socket_factory(
        &self,
        k: usize,
    ) -> Result<impl FnMut() -> std::io::Result<UdpSocket> + Send + 'static, LabError> {
        self.check(k)?;
        let (ns_path, addr) = (self.ns_path(k), SocketAddrV4::new(self.addr(k), 0));
        Ok(move || bind_in_ns(&ns_path, addr))
    }

    fn ns_path(&self, k: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(self.host_ns(k))
    }

    /// Whether a datagram sent from host `from` arrives at host `to` within `timeout`
    /// (one direction; a blackholed sender fails at once).
    pub fn reachable(&self, from: usize, to: usize, timeout: Duration) -> Result<bool, LabError> {
        let receiver = self.udp_socket(to, 0)?;
        let sender = self.udp_socket(from, 0)?;
        let token = format!("{}:{from}->{to}:{:?}", self.name, Instant::now());
        if sender
            .send_to(token.as_bytes(), receiver.local_addr()?)
            .is_err()
        {
            return Ok(false);
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            receiver.set_read_timeout(Some(left))?;
            match receiver.recv_from(&mut buf) {
                Ok((n, _)) if &buf[..n] == token.as_bytes() => return Ok(true),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Cuts the link between hosts `a` and `b` both ways (a blackhole route to the
    /// other's /32 in each namespace). No-op if already cut.
    pub fn cut(&mut self, a: usize, b: usize) -> Result<(), LabError> {
        let key = self.pair(a, b)?;
        if self.cuts.contains(&key) {
            return Ok(());
        }
        let to_b = format!("{}/32", self.addr(b));
        self.ip_cmd(
            Some(&self.host_ns(a)),
            &["route", "add", "blackhole", &to_b],
        )?;
        let to_a = format!("{}/32", self.addr(a));
        if let Err(e) = self.ip_cmd(
            Some(&self.host_ns(b)),
            &["route", "add", "blackhole", &to_a],
        ) {
            let _ = self.ip_cmd(
                Some(&self.host_ns(a)),
                &["route", "del", "blackhole", &to_b],
            );
            return Err(e);
        }
        self.cuts.insert(key);
        Ok(())
    }

    /// Restores the link between `a` and `b` (removes exactly the routes
    /// [`NetLab::cut`] added). No-op if not cut.
    pub fn uncut(&mut self, a: usize, b: usize) -> Result<(), LabError> {
        let key = self.pair(a, b)?;
        if !self.cuts.contains(&key) {
            return Ok(());
        }
        let to_b = format!("{}/32", self.addr(b));
        let to_a = format!("{}/32", self.addr(a));
        let first = self.ip_cmd(
            Some(&self.host_ns(a)),
            &["route", "del", "blackhole", &to_b],
        );
        let second = self.ip_cmd(
            Some(&self.host_ns(b)),
            &["route", "del", "blackhole", &to_a],
        );
        self.cuts.remove(&key);
        first.and(second).map(drop)
    }

    /// Makes host `k` unreachable from every other host and vice versa.
    pub fn partition(&mut self, k: usize) -> Result<(), LabError> {
        self.check(k)?;
        for other in (0..self.hosts).filter(|&o| o != k) {
            self.cut(k, other)?;
        }
        Ok(())
    }

    /// Undoes every cut involving host `k` (whether made by `partition` or `cut`).
    pub fn heal(&mut self, k: usize) -> Result<(), LabError> {
        self.check(k)?;
        let pairs: Vec<_> = self
            .cuts
            .iter()
            .copied()
            .filter(|&(a, b)| a == k || b == k)
            .collect();
        for (a, b) in pairs {
            self.uncut(a, b)?;
        }
        Ok(())
    }

    /// Drops what host `from` sends to host `to` (a blackhole route in `from`'s
    /// namespace only); `to` can still send to `from`. No-op if already cut.
    pub fn cut_one_way(&mut self, from: usize, to: usize) -> Result<(), LabError> {
        self.pair(from, to)?;
        if !self.one_way.insert((from, to)) {
            return Ok(());
        }
        let dest = format!("{}/32", self.addr(to));
        let added = self.ip_cmd(
            Some(&self.host_ns(from)),
            &["route", "add", "blackhole", &dest],
        );
        if added.is_err() {
            self.one_way.remove(&(from, to));
        }
        added.map(drop)
    }

    /// Undoes every cut, both-way and one-way.
    pub fn heal_all(&mut self) -> Result<(), LabError> {
        let pairs: Vec<_> = self.cuts.iter().copied().collect();
        for (a, b) in pairs {
            self.uncut(a, b)?;
        }
        let one_way: Vec<_> = std::mem::take(&mut self.one_way).into_iter().collect();
        let mut result = Ok(());
        for (from, to) in one_way {
            let dest = format!("{}/32", self.addr(to));
            let removed = self.ip_cmd(
                Some(&self.host_ns(from)),
                &["route", "del", "blackhole", &dest],
            );
            result = result.and(removed.map(drop));
        }
        result
    }

    /// The links currently cut, as (lower, higher) host index.
    pub fn cuts(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.cuts.iter().copied()
    }

    fn pair(&self, a: usize, b: usize) -> Result<(usize, usize), LabError> {
        self.check(a)?;
        self.check(b)?;
        if a == b {
            return Err(LabError::NoHost(a));
        }
        Ok((a.min(b), a.max(b)))
    }

    fn check(&self, k: usize) -> Result<(), LabError> {
        if k < self.hosts {
            Ok(())
        } else {
            Err(LabError::NoHost(k))
        }
    }

    /// `ip [-n ns] args`, its stdout on success.
    fn ip_cmd(&self, ns: Option<&str>, args: &[&str]) -> Result<String, LabError> {
        run_ip(&self.ip, ns, args)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Hosts first (their veth ends go with them), the bridge last.
        for ns in self.created.iter().rev() {
            delete_ns(&self.ip, ns);
        }
    }
}

/// Kills what still runs in `ns` (only processes started in this lab's namespaces can
/// be there) and deletes it.
fn delete_ns(ip: &Path, ns: &str) {
    if let Ok(pids) = run_ip(ip, None, &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if let Err(e) = run_ip(ip, None, &["netns", "del", ns]) {
        eprintln!("netns lab: cannot delete namespace {ns}: {e}");
    }
}

/// A UDP socket bound to `addr` in the network namespace at `ns_path`.
fn bind_in_ns(ns_path: &Path, addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let ns_path = ns_path.to_path_buf();
    // setns changes only the calling thread: do it on a throwaway one.
    std::thread::spawn(move || -> std::io::Result<UdpSocket> {
        let ns = std::fs::File::open(&ns_path)?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        UdpSocket::bind(addr)
    })
    .join()
    .map_err(|_| std::io::Error::other("setns thread panicked"))?
}

/// Deletes the namespaces of labs whose process is gone (a crashed or killed run).
fn clean_stale(ip: &Path) {
    let Ok(list) = run_ip(ip, None, &["netns", "list"]) else {
        return;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns lab: deleting {ns}, left over by process {pid}");
            delete_ns(ip, ns);
        }
    }
}

fn run_ip(ip: &Path, ns: Option<&str>, args: &[&str]) -> Result<String, LabError> {
    let mut cmd = std::process::Command::new(ip);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let output = cmd.args(args).stdin(Stdio::null()).output()?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let mut command = ip.display().to_string();
        for a in ns
            .iter()
            .flat_map(|n| ["-n", n])
            .chain(args.iter().copied())
        {
            let _ = write!(command, " {a}");
        }
        Err(LabError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn find_ip() -> Option<PathBuf> {
    let fixed = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .map(PathBuf::from);
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("ip")).collect())
        .unwrap_or_default();
    fixed.chain(on_path).find(|p| p.is_file())
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// VIGIL_REQUIRE_NETNS is set: what needs root must run, not skip.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Real `vigil agent` processes, node `names[k]` in lab host `k`, bound to
/// `addr(k):7946`: a [`LocalCluster`] (certificates, node directories, processes,
/// waits) whose nodes are started through `ip netns exec`. Sockets are on the shared
/// filesystem, so `vigil::client` works on them from the test process.
pub struct NsCluster {
    // Field order is drop order: processes (and files), then namespaces.
    cluster: LocalCluster,
    lab: NetLab,
    names: Vec<String>,
}

impl NsCluster {
    /// A lab with one host per name and certificates for every name, no node started.
    pub fn new(binary: PathBuf, names: &[&str]) -> Result<NsCluster, LabError> {
        let cluster = LocalCluster::new(binary, names, false)
            .map_err(|e| LabError::Io(std::io::Error::other(e.to_string())))?;
        let lab = NetLab::new(names.len())?;
        Ok(NsCluster {
            cluster,
            lab,
            names: names.iter().map(|n| n.to_string()).collect(),
        })
    }

    /// [`NsCluster::new`], or `None` (printing why) when namespaces are unavailable;
    /// see [`NetLab::new_or_skip`].
    pub fn new_or_skip(binary: PathBuf, names: &[&str]) -> Option<NsCluster> {
        match NsCluster::new(binary, names) {
            Ok(c) => Some(c),
            Err(LabError::Unavailable(why)) if !required() => {
                eprintln!("skipping: network namespaces unavailable: {why}");
                None
            }
            Err(e) => panic!("cannot set up the network-namespace cluster: {e}"),
        }
    }

    pub fn lab(&self) -> &NetLab {
        &self.lab
    }

    pub fn lab_mut(&mut self) -> &mut NetLab {
        &mut self.lab
    }

    /// The processes, their directories and the waits on them.
    pub fn cluster(&self) -> &LocalCluster {
        &self.cluster
    }

    pub fn cluster_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }

    /// The lab host of `name`.
    pub fn host(&self, name: &str) -> Result<usize, HarnessError> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| HarnessError::Unknown(name.into()))
    }

    pub fn node(&self, name: &str) -> Result<&LocalNode, HarnessError> {
        self.cluster.node(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &LocalNode> {
        self.cluster.nodes()
    }

    /// Makes `name`'s host unreachable from every other host, both ways.
    pub fn partition(&mut self, name: &str) -> Result<(), LabError> {
        let k = self
            .host(name)
            .map_err(|_| LabError::UnknownNode(name.into()))?;
        self.lab.partition(k)
    }

    /// Undoes every cut involving `name`'s host.
    pub fn heal(&mut self, name: &str) -> Result<(), LabError> {
        let k = self
            .host(name)
            .map_err(|_| LabError::UnknownNode(name.into()))?;
        self.lab.heal(k)
    }

    /// Starts `name` in its host and `zone`, joining through `seeds`, and waits for its
    /// ready line.
    pub async fn start(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
    ) -> Result<&LocalNode, HarnessError> {
        self.start_with(name, zone, seeds, &[]).await
    }

    /// Like [`NsCluster::start`], with extra arguments.
    pub async fn start_with(
        &mut self,
        name: &str,
        zone: &str,
        seeds: &[SocketAddr],
        extra_args: &[String],
    ) -> Result<&LocalNode, HarnessError> {
        let host = self.host(name)?;
        let placement = Placement {
            wrapper: self.lab.exec_prefix(host),
            bind: SocketAddrV4::new(self.lab.addr(host), NODE_PORT).to_string(),
        };
        self.cluster
            .start_placed(name, zone, seeds, extra_args, &placement)
            .await
    }

    /// SIGTERM every running node (graceful leave) and wait for each to exit.
    pub async fn stop_all(&mut self) {
        self.cluster.stop_all().await
    }

    /// See [`LocalCluster::wait_members`].
    pub async fn wait_members(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[MemberJson]) -> bool,
    ) -> Result<Vec<MemberJson>, HarnessError> {
        self.cluster.wait_members(name, what, timeout, check).await
    }

    /// See [`LocalCluster::wait_converged`] (a node may be back under a new generation).
    pub async fn wait_converged(&self, timeout: Duration) -> Result<(), HarnessError> {
        self.cluster.wait_converged(timeout).await
    }

    /// See [`LocalCluster::wait_event`].
    pub async fn wait_event(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&EventRecord) -> bool,
    ) -> Result<EventRecord, HarnessError> {
        self.cluster.wait_event(name, timeout, done).await
    }
}
