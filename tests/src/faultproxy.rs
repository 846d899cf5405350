//! A UDP fault proxy: loss, latency (fixed plus uniform jitter), duplication and
//! one-way cuts between real `vigil agent` processes, which the kernel here cannot
//! inject itself (no netem qdisc).
//!
//! # Topology
//!
//! One [`FaultProxy`] stands in front of each node. The node binds a private address
//! (loopback: `127.0.0.1:<real>`; network namespaces: `<host addr>:<real port>`) and
//! advertises the proxy's listening address (`vigil agent --advertise`), so every
//! peer sends to the proxy. The proxy works like a NAT, one upstream socket per
//! downstream source address:
//!
//! ```text
//!   A-real ──▶ [listener of B's proxy] ─ upstream socket for A-real ─▶ B-real
//!   A-real ◀── [listener of B's proxy] ◀ upstream socket for A-real ── B-real
//! ```
//!
//! so B's replies come back through the proxy too, and reach A from the address A
//! dialed. Each proxy therefore carries the connections that its node *accepts*; a
//! connection the node dials goes through the peer's proxy. A rule for the link
//! A -> B applies wherever A's datagrams to B pass: at B's proxy on the way in, at
//! A's proxy on the way back from A to a connection B dialed. vigil does not care that B sees its peer at an
//! upstream socket's address rather than at A's advertised one: a QUIC connection's
//! peer is identified by its certificate (`tls::peer_node_name`), and the node reads
//! the remote address of an incoming connection only to log it.
//!
//! # Rules
//!
//! A [`Faults`] handle holds the rules, shared by every proxy of a campaign: a
//! default [`Rule`] and rules per directed link (from node, to node), per sender or
//! per receiver. It also maps node *real* addresses to names (a node's datagrams leave
//! from its bound socket), which is how a proxy tells which node a datagram comes
//! from; a source it does not know is [`Party::Unknown`]. Rules change at run time
//! from any task ([`Faults::set_link`] and friends); a proxy reads the current rules
//! for every datagram, so a change applies to the next datagram.
//!
//! Per datagram, in this order: a cut drops it; else it is lost with probability
//! `loss`; else it is sent once, plus once more with probability `duplicate`; each
//! copy waits `latency` plus a uniform draw from `[0, jitter]`, in a timer queue
//! (a later datagram with a shorter delay overtakes an earlier one: jitter reorders,
//! as on a real network).
//!
//! # Determinism
//!
//! Every random decision of one proxy comes from one `ChaCha8Rng` seeded by the
//! caller ([`ProxyConfig::seed`]) and drawn in the proxy's single owner task, in the
//! order datagrams arrive. A campaign seed therefore reproduces the decisions as far
//! as the OS schedules the same datagrams in the same order, which it does not
//! promise for real processes.
//!
//! # Bounds
//!
//! At most [`ProxyConfig::max_upstreams`] upstream sockets (the least recently used
//! is closed to make room; the source gets a new one on its next datagram, and the
//! node sees its peer move to a new port, which QUIC treats as a migration),
//! datagrams up to [`MAX_DATAGRAM`] bytes, at most [`ProxyConfig::max_queued`]
//! datagrams and [`ProxyConfig::max_queued_bytes`] bytes waiting in the delay queue
//! (a copy that does not fit is dropped and counted), a bounded channel from the
//! upstream readers (a full one holds the reader back and the kernel drops, as it
//! would). Every outcome is counted per link
//! ([`LinkCounters`]); nothing in the datapath panics or ends the proxy.
//!
//! # Sockets
//!
//! The caller creates the sockets, so that in network-namespace mode they live in
//! the right namespace: [`FaultProxy::spawn`] takes the bound listening socket and a
//! factory for upstream sockets ([`loopback_sockets`], or
//! [`NetLab::udp_socket_factory`](crate::netns::NetLab::udp_socket_factory) for a lab
//! host). The upstream sockets of B's proxy must be in B's namespace, where B-real
//! is reached locally.
//!
//! # Lifetime
//!
//! Dropping a [`FaultProxy`] aborts its owner task, which drops the upstream
//! sockets and aborts their readers; [`FaultProxy::shutdown`] does the same after
//! returning the final counters.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The largest datagram forwarded (the UDP length field's limit); a longer one
/// (possible only over IPv6 jumbograms) is dropped and counted.
pub const MAX_DATAGRAM: usize = 65_535;

/// The longest delay a rule may ask for (latency plus jitter): far beyond anything a
/// campaign needs, and it keeps `Instant` arithmetic from overflowing.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

/// Datagrams from the upstream readers to the owner task.
const UPSTREAM_CHANNEL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("fault rule: {field} must be a probability in [0, 1], not {value}")]
    Probability { field: &'static str, value: f64 },
    #[error("fault rule: latency {latency:?} + jitter {jitter:?} exceeds {MAX_DELAY:?}")]
    DelayTooLong { latency: Duration, jitter: Duration },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("the proxy task has stopped")]
    Stopped,
}

/// What happens to datagrams on one directed link. `Rule::default()` is a clean link.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Rule {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Fixed delay added to every datagram.
    pub latency: Duration,
    /// Up to this much more delay, uniform, drawn per copy.
    pub jitter: Duration,
    /// Probability that a datagram (not lost) is sent twice.
    pub duplicate: f64,
    /// Drop everything (an asymmetric cut when set on one direction only).
    pub cut: bool,
}

impl Rule {
    /// A clean link.
    pub const CLEAN: Rule = Rule {
        loss: 0.0,
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        duplicate: 0.0,
        cut: false,
    };

    /// Drops everything.
    pub const CUT: Rule = Rule {
        cut: true,
        ..Rule::CLEAN
    };

    /// Loses each datagram with probability `p`.
    pub fn loss(p: f64) -> Rule {
        Rule {
            loss: p,
            ..Rule::CLEAN
        }
    }

    /// Delays each datagram by `latency` plus up to `jitter`.
    pub fn latency(latency: Duration, jitter: Duration) -> Rule {
        Rule {
            latency,
            jitter,
            ..Rule::CLEAN
        }
    }

    /// Sends each datagram a second time with probability `p`.
    pub fn duplicate(p: f64) -> Rule {
        Rule {
            duplicate: p,
            ..Rule::CLEAN
        }
    }

    /// Checks the probabilities and the delay bound (the proxy's RNG would panic on a
    /// probability outside [0, 1], so a rule is checked before it is stored).
    pub fn validate(&self) -> Result<(), ProxyError> {
        for (field, value) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ProxyError::Probability { field, value });
            }
        }
        if self.latency.saturating_add(self.jitter) > MAX_DELAY {
            return Err(ProxyError::DelayTooLong {
                latency: self.latency,
                jitter: self.jitter,
            });
        }
        Ok(())
    }
}

/// One end of a link: a node the [`Faults`] know by name, or a source address they
/// do not (all such sources count as one party, so the counters stay bounded).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub enum Party {
    Node(String),
    Unknown,
}

impl Party {
    pub fn node(name: &str) -> Party {
        Party::Node(name.to_string())
    }

    fn name(&self) -> Option<&str> {
        match self {
            Party::Node(n) => Some(n),
            Party::Unknown => None,
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Node(n) => f.write_str(n),
            Party::Unknown => f.write_str("?"),
        }
    }
}

impl From<Party> for String {
    fn from(p: Party) -> String {
        p.to_string()
    }
}

/// A directed link; serialized (e.g. as a JSON map key) as `from->to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Link {
    pub from: Party,
    pub to: Party,
}

impl Link {
    pub fn new(from: &str, to: &str) -> Link {
        Link {
            from: Party::node(from),
            to: Party::node(to),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from, self.to)
    }
}

impl From<Link> for String {
    fn from(l: Link) -> String {
        l.to_string()
    }
}

/// The rules and the address map, as the proxies read them.
#[derive(Debug, Clone, Default)]
struct FaultPlan {
    default: Rule,
    /// Keyed by (sender, receiver); `None` matches any.
    rules: BTreeMap<(Option<String>, Option<String>), Rule>,
    names: HashMap<SocketAddr, String>,
}

impl FaultPlan {
    /// The most specific rule: the link's own, else the sender's, else the
    /// receiver's, else the default.
    fn rule(&self, from: &Party, to: &Party) -> Rule {
        let (from, to) = (from.name(), to.name());
        let key = |f: Option<&str>, t: Option<&str>| (f.map(str::to_string), t.map(str::to_string));
        let candidates = [
            from.zip(to).map(|(f, t)| key(Some(f), Some(t))),
            from.map(|f| key(Some(f), None)),
            to.map(|t| key(None, Some(t))),
        ];
        candidates
            .into_iter()
            .flatten()
            .find_map(|k| self.rules.get(&k).copied())
            .unwrap_or(self.default)
    }

    fn party(&self, addr: SocketAddr) -> Party {
        self.names
            .get(&addr)
            .map_or(Party::Unknown, |n| Party::Node(n.clone()))
    }
}

/// The fault rules shared by a campaign's proxies; clone it freely (every clone is
/// the same rules). Setting a rule replaces the one with the same scope.
#[derive(Clone)]
pub struct Faults {
    tx: Arc<watch::Sender<FaultPlan>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.tx.borrow();
        f.debug_struct("Faults")
            .field("default", &plan.default)
            .field("rules", &plan.rules)
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// Clean links everywhere, no node known.
    pub fn new() -> Faults {
        Faults {
            tx: Arc::new(watch::Sender::new(FaultPlan::default())),
        }
    }

    /// Names the node whose socket is bound to `real`: datagrams from `real` are
    /// `name`'s.
    pub fn register(&self, real: SocketAddr, name: &str) {
        self.tx.send_modify(|p| {
            p.names.insert(real, name.to_string());
        });
    }

    /// The rule for links no other rule matches (initially clean).
    pub fn set_default(&self, rule: Rule) -> Result<(), ProxyError> {
        rule.validate()?;
        self.tx.send_modify(|p| p.default = rule);
        Ok(())
    }

    /// The rule for datagrams from `from` to `to`.
    pub fn set_link(&self, from: &str, to: &str, rule: Rule) -> Result<(), ProxyError> {
        self.set(Some(from), Some(to), rule)
    }

    /// The rule for everything `from` sends (unless a link rule says otherwise).
    pub fn set_from(&self, from: &str, rule: Rule) -> Result<(), ProxyError> {
        self.set(Some(from), None, rule)
    }

    /// The rule for everything `to` receives (unless a link or sender rule says
    /// otherwise).
    pub fn set_to(&self, to: &str, rule: Rule) -> Result<(), ProxyError> {
        self.set(None, Some(to), rule)
    }

    /// The rule for everything `node` sends and receives: [`Faults::set_from`] and
    /// [`Faults::set_to`] together (`Rule::loss(1.0)` cuts it off both ways).
    pub fn set_node(&self, node: &str, rule: Rule) -> Result<(), ProxyError> {
        rule.validate()?;
        self.tx.send_modify(|p| {
            p.rules.insert((Some(node.into()), None), rule);
            p.rules.insert((None, Some(node.into())), rule);
        });
        Ok(())
    }

    fn set(&self, from: Option<&str>, to: Option<&str>, rule: Rule) -> Result<(), ProxyError> {
        rule.validate()?;
        let key = (from.map(str::to_string), to.map(str::to_string));
        self.tx.send_modify(|p| {
            p.rules.insert(key, rule);
        });
        Ok(())
    }

    /// Removes the link rule from `from` to `to`.
    pub fn clear_link(&self, from: &str, to: &str) {
        self.clear(Some(from), Some(to));
    }

    /// Removes the sender and receiver rules of `node` (what [`Faults::set_node`]
    /// set; link rules stay).
    pub fn clear_node(&self, node: &str) {
        self.clear(Some(node), None);
        self.clear(None, Some(node));
    }

    fn clear(&self, from: Option<&str>, to: Option<&str>) {
        let key = (from.map(str::to_string), to.map(str::to_string));
        self.tx.send_modify(|p| {
            p.rules.remove(&key);
        });
    }

    /// Removes every rule and makes the default clean (the names stay).
    pub fn clear_all(&self) {
        self.tx.send_modify(|p| {
            p.rules.clear();
            p.default = Rule::CLEAN;
        });
    }

    /// The rule that applies to datagrams from `from` to `to` now.
    pub fn rule(&self, from: &Party, to: &Party) -> Rule {
        self.tx.borrow().rule(from, to)
    }
}

/// What happened to the datagrams of one link (at one proxy, or summed with
/// [`ProxyStats::merge`]). Every datagram received is cut, lost or passed on; every
/// copy passed on (the datagram, and its duplicate if any) is forwarded, dropped as
/// queue overflow, refused by the OS (`send_errors`), or still in the queue:
///
/// `received = dropped_cut + dropped_loss + passed`,
/// `passed + duplicated = forwarded + queue_overflow + send_errors + queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LinkCounters {
    pub received: u64,
    /// Copies sent to their destination (duplicates included).
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub dropped_cut: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Copies that went through the delay queue.
    pub delayed: u64,
    /// Copies dropped because the delay queue was full.
    pub queue_overflow: u64,
    /// Copies the OS refused to send (or no upstream socket could be made for).
    pub send_errors: u64,
}

impl LinkCounters {
    /// Datagrams neither cut nor lost.
    pub fn passed(&self) -> u64 {
        self.received
            .saturating_sub(self.dropped_cut)
            .saturating_sub(self.dropped_loss)
    }

    fn add(&mut self, o: &LinkCounters) {
        self.received += o.received;
        self.forwarded += o.forwarded;
        self.dropped_loss += o.dropped_loss;
        self.dropped_cut += o.dropped_cut;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.queue_overflow += o.queue_overflow;
        self.send_errors += o.send_errors;
    }
}

/// A proxy's counters ([`FaultProxy::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    pub links: BTreeMap<Link, LinkCounters>,
    /// Upstream sockets open now.
    pub upstreams: usize,
    pub upstreams_opened: u64,
    /// Closed to make room for a new source.
    pub upstreams_evicted: u64,
    /// Failures to create an upstream socket, or upstream sockets that failed.
    pub upstream_errors: u64,
    /// Datagrams longer than [`MAX_DATAGRAM`], dropped.
    pub oversize: u64,
    /// Datagrams arriving at an upstream socket from anyone but the node, dropped.
    pub stray: u64,
    /// Receive errors on the listener (e.g. an ICMP port unreachable reported late).
    pub recv_errors: u64,
    /// Copies in the delay queue now.
    pub queued: usize,
    /// Set when the listener failed for good and the proxy stopped reading it.
    pub listener_failed: Option<String>,
}

impl ProxyStats {
    /// The counters of one link (zero if it carried nothing).
    pub fn link(&self, from: &str, to: &str) -> LinkCounters {
        self.links
            .get(&Link::new(from, to))
            .copied()
            .unwrap_or_default()
    }

    /// All links summed.
    pub fn total(&self) -> LinkCounters {
        let mut sum = LinkCounters::default();
        for c in self.links.values() {
            sum.add(c);
        }
        sum
    }

    /// Adds `other`'s counters to these (a campaign sums over its proxies).
    pub fn merge(&mut self, other: &ProxyStats) {
        for (link, c) in &other.links {
            self.links.entry(link.clone()).or_default().add(c);
        }
        self.upstreams += other.upstreams;
        self.upstreams_opened += other.upstreams_opened;
        self.upstreams_evicted += other.upstreams_evicted;
        self.upstream_errors += other.upstream_errors;
        self.oversize += other.oversize;
        self.stray += other.stray;
        self.recv_errors += other.recv_errors;
        self.queued += other.queued;
        if self.listener_failed.is_none() {
            self.listener_failed.clone_from(&other.listener_failed);
        }
    }
}

/// One proxy's settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The name of the node behind the proxy (the receiver of what arrives at the
    /// listener, the sender of what comes back).
    pub node: String,
    /// The node's real (bound) address.
    pub target: SocketAddr,
    /// Seeds the proxy's RNG; give each proxy of a campaign its own (e.g. the
    /// campaign seed plus the node's index).
    pub seed: u64,
    /// Upstream sockets at most (one per source); the least recently used goes.
    pub max_upstreams: usize,
    /// Copies waiting in the delay queue at most.
    pub max_queued: usize,
    /// Bytes waiting in the delay queue at most.
    pub max_queued_bytes: usize,
}

impl ProxyConfig {
    /// Defaults: 256 upstream sockets, 8192 queued datagrams, 32 MiB queued.
    pub fn new(node: &str, target: SocketAddr, seed: u64) -> ProxyConfig {
        ProxyConfig {
            node: node.to_string(),
            target,
            seed,
            max_upstreams: 256,
            max_queued: 8192,
            max_queued_bytes: 32 << 20,
        }
    }
}

/// Makes one upstream socket (bound, blocking or not: the proxy makes it
/// non-blocking). Called in the proxy's task when a new source appears, so it should
/// be quick.
pub type SocketFactory = Box<dyn FnMut() -> io::Result<std::net::UdpSocket> + Send>;

/// Upstream sockets bound to `ip:0` in the calling process's namespace (loopback
/// mode: `127.0.0.1`).
pub fn loopback_sockets(ip: IpAddr) -> SocketFactory {
    Box::new(move || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)))
}

/// A running proxy: the owner task and a way to talk to it. Dropping it stops the
/// proxy.
pub struct FaultProxy {
    local_addr: SocketAddr,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

enum Control {
    Stats(oneshot::Sender<ProxyStats>),
    Stop(oneshot::Sender<ProxyStats>),
}

impl FaultProxy {
    /// Starts a proxy that receives on `listener` (already bound: the address the
    /// node advertises) and forwards to `config.target` through sockets from
    /// `upstream`, applying the rules of `faults`. Must be called within a tokio
    /// runtime.
    pub fn spawn(
        listener: std::net::UdpSocket,
        upstream: SocketFactory,
        config: ProxyConfig,
        faults: &Faults,
    ) -> Result<FaultProxy, ProxyError> {
        let (listener, listener_tx) = split(listener, "making the listening socket async")?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Io {
            context: "reading the listening address",
            source,
        })?;
        let (control, control_rx) = mpsc::channel(16);
        let (from_upstream_tx, from_upstream) = mpsc::channel(UPSTREAM_CHANNEL);
        let owner = Owner {
            node: Party::Node(config.node.clone()),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
            listener,
            listener_tx,
            factory: upstream,
            plan: faults.tx.subscribe(),
            upstreams: HashMap::new(),
            next_upstream: 0,
            use_clock: 0,
            from_upstream_tx,
            queue: BinaryHeap::new(),
            queued_bytes: 0,
            next_seq: 0,
            stats: ProxyStats::default(),
        };
        let task = tokio::spawn(owner.run(control_rx, from_upstream));
        Ok(FaultProxy {
            local_addr,
            control,
            task,
        })
    }

    /// The listening address (what the node advertises).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters so far.
    pub async fn stats(&self) -> Result<ProxyStats, ProxyError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Stats(tx))
            .await
            .map_err(|_| ProxyError::Stopped)?;
        rx.await.map_err(|_| ProxyError::Stopped)
    }

    /// Stops the proxy (what is still in the delay queue is dropped) and returns its
    /// final counters. When it returns, the listening socket is closed (the upstream
    /// sockets close as the runtime drops their aborted readers).
    pub async fn shutdown(mut self) -> Result<ProxyStats, ProxyError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Stop(tx))
            .await
            .map_err(|_| ProxyError::Stopped)?;
        let stats = rx.await.map_err(|_| ProxyError::Stopped)?;
        // The owner returns right after replying; once it has, the listener is
        // dropped and the address can be bound again.
        let _ = (&mut self.task).await;
        Ok(stats)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A socket as a tokio socket to receive on and a non-blocking std handle (a `dup`
/// of it) to send from: tokio's `try_send_to` refuses until the reactor has seen the
/// socket writable, which a socket made in this turn of the owner has not, whereas a
/// plain non-blocking send only fails when the send buffer is full.
fn split(
    socket: std::net::UdpSocket,
    context: &'static str,
) -> Result<(UdpSocket, std::net::UdpSocket), ProxyError> {
    let io = |source| ProxyError::Io { context, source };
    socket.set_nonblocking(true).map_err(io)?;
    let sender = socket.try_clone().map_err(io)?;
    let receiver = UdpSocket::from_std(socket).map_err(io)?;
    Ok((receiver, sender))
}

/// The upstream socket of one downstream source.
struct Upstream {
    id: u64,
    /// Sends to the node (the reader task owns the receiving side).
    sender: std::net::UdpSocket,
    last_used: u64,
    reader: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// From an upstream socket's reader task.
enum FromUpstream {
    Datagram {
        /// The downstream source the socket serves.
        source: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Failed {
        source: SocketAddr,
        id: u64,
    },
}

/// Where a copy goes.
#[derive(Clone, Copy)]
enum Hop {
    /// From downstream `source` to the node, through `source`'s upstream socket.
    ToNode { source: SocketAddr },
    /// From the node back to downstream `dest`, from the listener.
    FromNode { dest: SocketAddr },
}

struct Delayed {
    due: Instant,
    seq: u64,
    link: Link,
    hop: Hop,
    bytes: Vec<u8>,
}

// Ordered by due time, then arrival, so equal delays keep their order.
impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// The proxy's one task: owns the sockets, the RNG, the queue and the counters.
struct Owner {
    config: ProxyConfig,
    node: Party,
    listener: UdpSocket,
    /// Sends from the listener's address.
    listener_tx: std::net::UdpSocket,
    factory: SocketFactory,
    plan: watch::Receiver<FaultPlan>,
    rng: ChaCha8Rng,
    upstreams: HashMap<SocketAddr, Upstream>,
    next_upstream: u64,
    use_clock: u64,
    from_upstream_tx: mpsc::Sender<FromUpstream>,
    queue: BinaryHeap<Reverse<Delayed>>,
    queued_bytes: usize,
    next_seq: u64,
    stats: ProxyStats,
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Owner {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut from_upstream: mpsc::Receiver<FromUpstream>,
    ) {
        // One more byte than the largest datagram, to tell a longer one (truncated
        // by the kernel to the buffer) from one that fits.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let next_due = self.queue.peek().map(|Reverse(d)| d.due);
            let listening = self.stats.listener_failed.is_none();
            tokio::select! {
                command = control.recv() => match command {
                    Some(Control::Stats(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Some(Control::Stop(reply)) => {
                        let _ = reply.send(self.snapshot());
                        return;
                    }
                    None => return,
                },
                () = sleep_until_opt(next_due) => self.release_due(),
                Some(message) = from_upstream.recv() => self.on_upstream(message),
                received = self.listener.recv_from(&mut buf), if listening => match received {
                    Ok((n, source)) => {
                        if n > MAX_DATAGRAM {
                            self.stats.oversize += 1;
                        } else {
                            let bytes = buf[..n].to_vec();
                            self.on_downstream(source, bytes);
                        }
                    }
                    Err(e) => self.on_listener_error(e),
                },
            }
        }
    }

    fn snapshot(&self) -> ProxyStats {
        let mut stats = self.stats.clone();
        stats.upstreams = self.upstreams.len();
        stats.queued = self.queue.len();
        stats
    }

    fn on_listener_error(&mut self, e: io::Error) {
        self.stats.recv_errors += 1;
        // Errors an earlier send left behind (ICMP unreachable) are transient; any
        // other would repeat at once, so stop reading rather than spin.
        if !transient(&e) {
            self.stats.listener_failed = Some(e.to_string());
        }
    }

    /// A datagram from downstream `source` for the node.
    fn on_downstream(&mut self, source: SocketAddr, bytes: Vec<u8>) {
        let link = {
            let plan = self.plan.borrow();
            Link {
                from: plan.party(source),
                to: self.node.clone(),
            }
        };
        self.apply(link, Hop::ToNode { source }, bytes);
    }

    fn on_upstream(&mut self, message: FromUpstream) {
        match message {
            FromUpstream::Datagram {
                source,
                from,
                bytes,
            } => {
                if from != self.config.target {
                    self.stats.stray += 1;
                    return;
                }
                if bytes.len() > MAX_DATAGRAM {
                    self.stats.oversize += 1;
                    return;
                }
                let link = Link {
                    from: self.node.clone(),
                    to: self.plan.borrow().party(source),
                };
                self.apply(link, Hop::FromNode { dest: source }, bytes);
            }
            FromUpstream::Failed { source, id } => {
                self.stats.upstream_errors += 1;
                // Only if it is still the socket that failed (not a newer one).
                if self.upstreams.get(&source).is_some_and(|u| u.id == id) {
                    self.upstreams.remove(&source);
                }
            }
        }
    }

    /// Decides a datagram's fate by the current rule of its link.
    fn apply(&mut self, link: Link, hop: Hop, bytes: Vec<u8>) {
        let rule = self.plan.borrow().rule(&link.from, &link.to);
        let counters = self.stats.links.entry(link.clone()).or_default();
        counters.received += 1;
        if rule.cut {
            counters.dropped_cut += 1;
            return;
        }
        // Rules are validated when set, so the probabilities are in [0, 1].
        if rule.loss > 0.0 && self.rng.random_bool(rule.loss) {
            counters.dropped_loss += 1;
            return;
        }
        let twice = rule.duplicate > 0.0 && self.rng.random_bool(rule.duplicate);
        if twice {
            counters.duplicated += 1;
            self.emit(&rule, link.clone(), hop, bytes.clone());
        }
        self.emit(&rule, link, hop, bytes);
    }

    /// Sends one copy now, or queues it for later.
    fn emit(&mut self, rule: &Rule, link: Link, hop: Hop, bytes: Vec<u8>) {
        let delay = self.delay(rule);
        if delay.is_zero() {
            self.send(&link, &hop, &bytes);
            return;
        }
        let counters = self.stats.links.entry(link.clone()).or_default();
        if self.queue.len() >= self.config.max_queued
            || self.queued_bytes.saturating_add(bytes.len()) > self.config.max_queued_bytes
        {
            counters.queue_overflow += 1;
            return;
        }
        counters.delayed += 1;
        let due = Instant::now()
            .checked_add(delay)
            .unwrap_or_else(Instant::now);
        self.queued_bytes += bytes.len();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Delayed {
            due,
            seq,
            link,
            hop,
            bytes,
        }));
    }

    fn delay(&mut self, rule: &Rule) -> Duration {
        let jitter = u64::try_from(rule.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.random_range(0..=jitter)
        };
        rule.latency.saturating_add(Duration::from_nanos(extra))
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(d)) = self.queue.pop() else {
                break;
            };
            self.queued_bytes -= d.bytes.len();
            self.send(&d.link, &d.hop, &d.bytes);
        }
    }

    /// Sends one copy without waiting: a socket that is not writable now drops it,
    /// as a full interface queue would.
    fn send(&mut self, link: &Link, hop: &Hop, bytes: &[u8]) {
        let sent = match *hop {
            Hop::ToNode { source } => {
                let target = self.config.target;
                self.upstream_for(source)
                    .is_some_and(|socket| socket.send_to(bytes, target).is_ok())
            }
            Hop::FromNode { dest } => self.listener_tx.send_to(bytes, dest).is_ok(),
        };
        let counters = self.stats.links.entry(link.clone()).or_default();
        if sent {
            counters.forwarded += 1;
        } else {
            counters.send_errors += 1;
        }
    }

    /// `source`'s upstream socket, opened (and its reader started) if it has none.
    fn upstream_for(&mut self, source: SocketAddr) -> Option<&std::net::UdpSocket> {
        self.use_clock += 1;
        let clock = self.use_clock;
        if self.upstreams.contains_key(&source) {
            let u = self.upstreams.get_mut(&source)?;
            u.last_used = clock;
            return Some(&u.sender);
        }
        while self.upstreams.len() >= self.config.max_upstreams.max(1) {
            let oldest = self
                .upstreams
                .iter()
                .min_by_key(|(_, u)| u.last_used)
                .map(|(addr, _)| *addr)?;
            self.upstreams.remove(&oldest);
            self.stats.upstreams_evicted += 1;
        }
        let socket = match (self.factory)()
            .map_err(|source| ProxyError::Io {
                context: "opening an upstream socket",
                source,
            })
            .and_then(|s| split(s, "making an upstream socket async"))
        {
            Ok(s) => s,
            Err(_) => {
                self.stats.upstream_errors += 1;
                return None;
            }
        };
        let id = self.next_upstream;
        self.next_upstream += 1;
        let (receiver, sender) = socket;
        let reader = tokio::spawn(read_upstream(
            receiver,
            source,
            id,
            self.from_upstream_tx.clone(),
        ));
        self.stats.upstreams_opened += 1;
        let upstream = self.upstreams.entry(source).or_insert(Upstream {
            id,
            sender,
            last_used: clock,
            reader,
        });
        Some(&upstream.sender)
    }
}

/// Errors a UDP receive reports for an earlier send (an ICMP error coming back), not
/// for the socket itself.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Reads what the node sends back on `source`'s upstream socket and hands it to the
/// owner. Waits when the owner's channel is full (the socket's buffer then fills and
/// the kernel drops, like a congested link).
async fn read_upstream(
    socket: UdpSocket,
    source: SocketAddr,
    id: u64,
    to_owner: mpsc::Sender<FromUpstream>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let message = match socket.recv_from(&mut buf).await {
            Ok((n, from)) => FromUpstream::Datagram {
                source,
                from,
                bytes: buf[..n].to_vec(),
            },
            // A killed node makes the kernel answer with port unreachable, which
            // shows up here; the node may come back on the same port.
            Err(e) if transient(&e) => continue,
            Err(_) => {
                let _ = to_owner.send(FromUpstream::Failed { source, id }).await;
                return;
            }
        };
        if to_owner.send(message).await.is_err() {
            return;
        }
    }
}
