#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! The UDP fault proxy (`vigil_tests::faultproxy`): its fault decisions on plain UDP
//! echo traffic, and a real vigil cluster whose every node sits behind one.
//!
//! Counts are exact where the proxy decides them; the only statistical check (30 %
//! loss) has a band of about seven standard deviations. Waits are bounded only to
//! stop a broken build from hanging; no assertion depends on how fast anything is,
//! except that latency delays by at least what the rule says.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use vigil::harness::Placement;
use vigil_tests::faultproxy::{
    FaultProxy, Faults, Link, Party, ProxyConfig, ProxyError, Rule, loopback_sockets,
};
use vigil_tests::netns::NsCluster;
use vigil_tests::{CONVERGE, DETECT, LocalCluster, cluster, vigil_bin};

/// Bounds a wait for datagrams that should arrive (over loopback, in microseconds).
const ARRIVE: Duration = Duration::from_secs(10);
/// What the echo server reads as "report how many data datagrams you got".
const BARRIER: &[u8] = b"barrier";
const LOCALHOST: &str = "127.0.0.1:0";

/// An echo server behind a proxy, a client `a` and a barrier sender `c`, each a named
/// node. Rules on `a -> b` decide what reaches the server; `c -> b` stays clean, and
/// since the proxy handles what arrives on its listener in order and sends without
/// delay, the server sees `c`'s barrier after everything of `a`'s sent before it
/// that the proxy let through at once.
struct Bench {
    faults: Faults,
    proxy: FaultProxy,
    a: UdpSocket,
    c: UdpSocket,
    /// Per barrier: the data datagrams (their payloads) the server got since the last.
    rounds: mpsc::UnboundedReceiver<Vec<Vec<u8>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Bench {
    async fn new(seed: u64) -> Bench {
        Self::with_config(seed, |_| {}).await
    }

    async fn with_config(seed: u64, tune: impl FnOnce(&mut ProxyConfig)) -> Bench {
        let server = UdpSocket::bind(LOCALHOST).await.unwrap();
        let target = server.local_addr().unwrap();
        let (tx, rounds) = mpsc::unbounded_channel();
        let server = tokio::spawn(echo(server, tx));
        let a = UdpSocket::bind(LOCALHOST).await.unwrap();
        let c = UdpSocket::bind(LOCALHOST).await.unwrap();
        let faults = Faults::new();
        faults.register(a.local_addr().unwrap(), "a");
        faults.register(c.local_addr().unwrap(), "c");
        faults.register(target, "b");
        let mut config = ProxyConfig::new("b", target, seed);
        tune(&mut config);
        let listener = StdUdpSocket::bind(LOCALHOST).unwrap();
        let proxy = FaultProxy::spawn(
            listener,
            loopback_sockets([127, 0, 0, 1].into()),
            config,
            &faults,
        )
        .unwrap();
        Bench {
            faults,
            proxy,
            a,
            c,
            rounds,
            _server: server,
        }
    }

    /// Sends `payloads` from `a` through the proxy, then a barrier from `c`, and
    /// returns what reached the server.
    async fn round(&mut self, payloads: impl IntoIterator<Item = Vec<u8>>) -> Vec<Vec<u8>> {
        let to = self.proxy.local_addr();
        for p in payloads {
            self.a.send_to(&p, to).await.unwrap();
        }
        self.c.send_to(BARRIER, to).await.unwrap();
        match timeout(ARRIVE, self.rounds.recv()).await {
            Ok(r) => r.unwrap(),
            Err(_) => panic!(
                "the barrier did not reach the server: {:?}",
                self.proxy.stats().await
            ),
        }
    }

    /// Receives `n` echoes at `a`.
    async fn echoes(&self, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < n {
            let (len, from) = timeout(ARRIVE, self.a.recv_from(&mut buf))
                .await
                .expect("an echo arrives")
                .unwrap();
            assert_eq!(from, self.proxy.local_addr(), "echoes come from the proxy");
            got.push(buf[..len].to_vec());
        }
        got
    }
}

/// Echoes data datagrams to their sender; on a barrier, reports the data datagrams
/// since the previous one.
async fn echo(socket: UdpSocket, rounds: mpsc::UnboundedSender<Vec<Vec<u8>>>) {
    let mut buf = vec![0u8; 65_536];
    let mut got = Vec::new();
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if &buf[..n] == BARRIER {
            let _ = rounds.send(std::mem::take(&mut got));
        } else {
            let _ = socket.send_to(&buf[..n], from).await;
            got.push(buf[..n].to_vec());
        }
    }
}

fn numbered(range: std::ops::Range<u32>) -> impl Iterator<Item = Vec<u8>> {
    range.map(|i| i.to_be_bytes().to_vec())
}

#[tokio::test]
async fn without_faults_every_datagram_is_echoed_through_the_proxy() {
    let mut bench = Bench::new(1).await;
    let sent: Vec<_> = numbered(0..100).collect();
    let reached = bench.round(sent.clone()).await;
    assert_eq!(reached, sent, "all, in order");
    let mut echoed = bench.echoes(100).await;
    echoed.sort();
    assert_eq!(echoed, sent);

    let stats = bench.proxy.stats().await.unwrap();
    let there = stats.link("a", "b");
    let back = stats.link("b", "a");
    for c in [there, back] {
        assert_eq!((c.received, c.forwarded), (100, 100), "{stats:?}");
        assert_eq!(c.received, c.passed());
    }
    assert_eq!(stats.link("c", "b").forwarded, 1, "the barrier");
    assert_eq!(stats.upstreams, 2, "one per source (a and c)");
    assert_eq!(stats.total().dropped_loss + stats.total().dropped_cut, 0);
}

#[tokio::test]
async fn total_loss_or_a_cut_lets_nothing_through() {
    let mut bench = Bench::new(2).await;
    bench.faults.set_link("a", "b", Rule::loss(1.0)).unwrap();
    assert!(bench.round(numbered(0..50)).await.is_empty());
    bench.faults.set_link("a", "b", Rule::CUT).unwrap();
    assert!(bench.round(numbered(0..50)).await.is_empty());

    let ab = bench.proxy.stats().await.unwrap().link("a", "b");
    assert_eq!(ab.received, 100);
    assert_eq!((ab.dropped_loss, ab.dropped_cut, ab.forwarded), (50, 50, 0));

    // The rule is per direction: the reverse link is untouched, and clearing it
    // restores the forward one at once.
    assert_eq!(
        bench.faults.rule(&Party::node("b"), &Party::node("a")),
        Rule::CLEAN
    );
    bench.faults.clear_link("a", "b");
    assert_eq!(bench.round(numbered(0..5)).await.len(), 5);
}

#[tokio::test]
async fn thirty_percent_loss_delivers_about_seventy_percent() {
    let mut bench = Bench::new(3).await;
    bench.faults.set_link("a", "b", Rule::loss(0.3)).unwrap();
    let mut delivered = 0;
    // In rounds of 100 so that no socket buffer overflows (a loss the proxy did not
    // decide).
    for r in 0..20 {
        delivered += bench.round(numbered(r * 100..(r + 1) * 100)).await.len() as u64;
    }
    let ab = bench.proxy.stats().await.unwrap().link("a", "b");
    assert_eq!(ab.received, 2000);
    assert_eq!(
        ab.forwarded, delivered,
        "the server got what the proxy passed"
    );
    assert_eq!(ab.dropped_loss + ab.forwarded, 2000);
    // Binomial(2000, 0.7): mean 1400, standard deviation 20.5.
    assert!(
        (1250..=1550).contains(&delivered),
        "delivered {delivered} of 2000"
    );
}

#[tokio::test]
async fn the_seed_decides_which_datagrams_are_lost() {
    async fn survivors(seed: u64) -> Vec<Vec<u8>> {
        let mut bench = Bench::new(seed).await;
        bench.faults.set_link("a", "b", Rule::loss(0.5)).unwrap();
        let mut all = Vec::new();
        for r in 0..4 {
            all.extend(bench.round(numbered(r * 50..(r + 1) * 50)).await);
        }
        all
    }
    let first = survivors(42).await;
    assert_eq!(survivors(42).await, first, "same seed, same datagrams lost");
    // Another seed picking the same 200 coin flips has probability 2^-200.
    assert_ne!(survivors(43).await, first);
}

#[tokio::test]
async fn full_duplication_doubles_every_datagram() {
    let mut bench = Bench::new(4).await;
    bench
        .faults
        .set_link("a", "b", Rule::duplicate(1.0))
        .unwrap();
    let reached = bench.round(numbered(0..50)).await;
    assert_eq!(reached.len(), 100);
    let mut echoed = bench.echoes(100).await;
    echoed.sort();
    let mut twice: Vec<_> = numbered(0..50).chain(numbered(0..50)).collect();
    twice.sort();
    assert_eq!(echoed, twice);

    let stats = bench.proxy.stats().await.unwrap();
    let ab = stats.link("a", "b");
    assert_eq!((ab.received, ab.duplicated, ab.forwarded), (50, 50, 100));
    let ba = stats.link("b", "a");
    assert_eq!((ba.received, ba.duplicated, ba.forwarded), (100, 0, 100));
}

#[tokio::test]
async fn latency_delays_each_datagram_by_at_least_the_rule() {
    let bench = Bench::new(5).await;
    let rule = Rule::latency(Duration::from_millis(200), Duration::from_millis(50));
    bench.faults.set_link("a", "b", rule).unwrap();
    let sent_at = Instant::now();
    for p in numbered(0..10) {
        bench.a.send_to(&p, bench.proxy.local_addr()).await.unwrap();
    }
    let echoed = bench.echoes(10).await;
    assert!(sent_at.elapsed() >= Duration::from_millis(200));
    assert_eq!(echoed.len(), 10);
    let stats = bench.proxy.stats().await.unwrap();
    let ab = stats.link("a", "b");
    assert_eq!((ab.delayed, ab.forwarded), (10, 10));
    assert_eq!(stats.link("b", "a").delayed, 0, "the way back is clean");
    assert_eq!(stats.queued, 0);
}

#[tokio::test]
async fn a_full_delay_queue_drops_and_counts() {
    let mut bench = Bench::with_config(6, |c| c.max_queued = 10).await;
    // Longer than the test: what is queued stays queued.
    let rule = Rule::latency(Duration::from_secs(300), Duration::ZERO);
    bench.faults.set_link("a", "b", rule).unwrap();
    assert!(bench.round(numbered(0..25)).await.is_empty());
    let stats = bench.proxy.stats().await.unwrap();
    let ab = stats.link("a", "b");
    assert_eq!((ab.delayed, ab.queue_overflow, ab.forwarded), (10, 15, 0));
    assert_eq!(stats.queued, 10);
    let final_stats = bench.proxy.shutdown().await.unwrap();
    assert_eq!(final_stats.link("a", "b"), ab);
}

#[tokio::test]
async fn upstream_sockets_are_capped_least_recently_used_first() {
    let bench = Bench::with_config(7, |c| c.max_upstreams = 2).await;
    let sources: Vec<UdpSocket> = vec![
        UdpSocket::bind(LOCALHOST).await.unwrap(),
        UdpSocket::bind(LOCALHOST).await.unwrap(),
        UdpSocket::bind(LOCALHOST).await.unwrap(),
    ];
    let mut buf = [0u8; 64];
    // 0, 1, 2 (evicts 0), then 0 again (evicts 1): each still gets its echo.
    for i in [0, 1, 2, 0] {
        sources[i]
            .send_to(b"ping", bench.proxy.local_addr())
            .await
            .unwrap();
        let (n, from) = timeout(ARRIVE, sources[i].recv_from(&mut buf))
            .await
            .expect("echo")
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], bench.proxy.local_addr()));
    }
    let stats = bench.proxy.stats().await.unwrap();
    assert_eq!(
        (
            stats.upstreams,
            stats.upstreams_opened,
            stats.upstreams_evicted
        ),
        (2, 4, 2)
    );
    // Unregistered sources are one party, so the counters stay bounded.
    let unknown = Link {
        from: Party::Unknown,
        to: Party::node("b"),
    };
    assert_eq!(stats.links[&unknown].forwarded, 4);
}

#[tokio::test]
async fn bad_rules_are_refused_and_shutdown_frees_the_port() {
    let bench = Bench::new(8).await;
    assert!(matches!(
        bench.faults.set_link("a", "b", Rule::loss(1.5)),
        Err(ProxyError::Probability { field: "loss", .. })
    ));
    assert!(matches!(
        bench.faults.set_default(Rule::duplicate(f64::NAN)),
        Err(ProxyError::Probability {
            field: "duplicate",
            ..
        })
    ));
    let too_long = Rule::latency(Duration::from_secs(3600), Duration::ZERO);
    assert!(matches!(
        bench.faults.set_node("a", too_long),
        Err(ProxyError::DelayTooLong { .. })
    ));
    assert_eq!(
        bench.faults.rule(&Party::node("a"), &Party::node("b")),
        Rule::CLEAN,
        "nothing stored"
    );
    let addr = bench.proxy.local_addr();
    bench.proxy.shutdown().await.unwrap();
    StdUdpSocket::bind(addr).expect("the listener is closed");
}

/// A node of a loopback cluster behind its own proxy: the proxy's listener is bound
/// first, the node advertises it and binds 127.0.0.1:0, and the proxy is pointed at
/// the address the node reports as bound.
async fn start_behind_proxy(
    c: &mut LocalCluster,
    faults: &Faults,
    (name, zone): (&str, &str),
    seeds: &[SocketAddr],
    seed: u64,
) -> FaultProxy {
    let listener = StdUdpSocket::bind(LOCALHOST).unwrap();
    let advertised = listener.local_addr().unwrap();
    let extra = ["--advertise".to_string(), advertised.to_string()];
    let node = c
        .start_placed(name, zone, seeds, &extra, &Placement::default())
        .await
        .expect("start a node");
    assert_eq!(node.addr, advertised);
    assert_ne!(node.bound, advertised);
    faults.register(node.bound, name);
    let config = ProxyConfig::new(name, node.bound, seed);
    FaultProxy::spawn(
        listener,
        loopback_sockets([127, 0, 0, 1].into()),
        config,
        faults,
    )
    .unwrap()
}

const NODES: [(&str, &str); 3] = [("n1", "az1"), ("n2", "az2"), ("n3", "az3")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_proxies_detects_a_node_cut_off_by_loss_and_takes_it_back() {
    let mut c = cluster!(&["n1", "n2", "n3"]);
    let faults = Faults::new();
    let mut proxies = Vec::new();
    for (i, node) in NODES.into_iter().enumerate() {
        let seeds: Vec<SocketAddr> = proxies
            .first()
            .map(FaultProxy::local_addr)
            .into_iter()
            .collect();
        proxies.push(start_behind_proxy(&mut c, &faults, node, &seeds, i as u64).await);
    }
    c.wait_converged(CONVERGE)
        .await
        .expect("converge through the proxies");
    for node in c.nodes() {
        let members = vigil::client::members(&node.socket).await.unwrap();
        for m in members {
            let proxy = c.node(&m.name).unwrap().addr;
            assert_eq!(
                m.addr,
                proxy.to_string(),
                "members are known at their proxy"
            );
        }
    }
    let mut before = vigil_tests::faultproxy::ProxyStats::default();
    for p in &proxies {
        before.merge(&p.stats().await.unwrap());
    }
    // Joining goes through the seed n1 (n2 and n3 need not have talked directly yet).
    for (from, to) in [("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")] {
        assert!(
            before.link(from, to).forwarded > 0,
            "{from}->{to}: {before:?}"
        );
    }

    faults.set_node("n3", Rule::loss(1.0)).unwrap();
    for survivor in ["n1", "n2"] {
        c.wait_event(survivor, DETECT, |e| {
            e.kind == "member_down" && e.member.as_deref() == Some("n3")
        })
        .await
        .expect("n3 declared down behind 100% loss");
    }
    let mut cut = vigil_tests::faultproxy::ProxyStats::default();
    for p in &proxies {
        cut.merge(&p.stats().await.unwrap());
    }
    for (from, to) in [("n1", "n3"), ("n3", "n1"), ("n2", "n3"), ("n3", "n2")] {
        assert!(cut.link(from, to).dropped_loss > 0, "{from}->{to}: {cut:?}");
    }

    faults.clear_node("n3");
    c.wait_converged(CONVERGE)
        .await
        .expect("n3 back once the loss stops");
    c.stop_all().await;
    for p in proxies {
        p.shutdown().await.unwrap();
    }
}

/// Network-namespace mode: each node binds `<host>:7947` and advertises
/// `<host>:7946`, where its proxy listens inside the same namespace, its upstream
/// sockets too (root only; skipped otherwise, like tests/netns.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_namespaces_converges_through_proxies_in_each_namespace() {
    let names = ["n1", "n2", "n3"];
    let Some(mut c) = NsCluster::new_or_skip(vigil_bin!(), &names) else {
        return;
    };
    let faults = Faults::new();
    let mut proxies = Vec::new();
    for (k, (name, zone)) in NODES.into_iter().enumerate() {
        let host = c.lab().addr(k);
        let listener = c.lab().udp_socket(k, 7946).unwrap();
        let placement = Placement {
            wrapper: c.lab().exec_prefix(k),
            bind: SocketAddr::from((host, 7947)).to_string(),
        };
        let extra = ["--advertise".to_string(), format!("{host}:7946")];
        let seeds: Vec<SocketAddr> = proxies
            .first()
            .map(FaultProxy::local_addr)
            .into_iter()
            .collect();
        let node = c
            .cluster_mut()
            .start_placed(name, zone, &seeds, &extra, &placement)
            .await
            .expect("start a node");
        faults.register(node.bound, name);
        let config = ProxyConfig::new(name, node.bound, k as u64);
        let sockets = Box::new(c.lab().udp_socket_factory(k).unwrap());
        proxies.push(FaultProxy::spawn(listener, sockets, config, &faults).unwrap());
    }
    c.wait_converged(CONVERGE).await.expect("converge");
    let mut stats = vigil_tests::faultproxy::ProxyStats::default();
    for p in &proxies {
        stats.merge(&p.stats().await.unwrap());
    }
    for (from, to) in [("n2", "n1"), ("n1", "n2"), ("n3", "n1"), ("n1", "n3")] {
        assert!(
            stats.link(from, to).forwarded > 0,
            "{from}->{to}: {stats:?}"
        );
    }

    // A one-way cut: whatever the others send n3 is dropped, what n3 sends still
    // arrives; n3's probes get no answer, so n3 declares the others down.
    faults.set_to("n3", Rule::CUT).unwrap();
    for lost in ["n1", "n2"] {
        c.wait_event("n3", DETECT, |e| {
            e.kind == "member_down" && e.member.as_deref() == Some(lost)
        })
        .await
        .expect("n3 declares the others down");
    }
    faults.clear_all();
    c.wait_converged(CONVERGE).await.expect("converge again");
    c.stop_all().await;
}
