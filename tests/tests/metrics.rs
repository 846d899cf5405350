#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! The metrics of real `vigil agent` processes: the recovery of a killed host moves the
//! counters it must on the survivors; every metric the Grafana dashboard
//! (docs/dashboards/vigil.json) queries is served by a node; `--metrics-bind` serves
//! `/metrics`, and nothing else, over TCP.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use vigil::client;
use vigil::harness::HarnessError;
use vigil_tests::{CONVERGE, DETECT, LocalCluster, cluster};

/// Correctness bound for the recovery (not a performance figure: RTO is in benches/).
const RECOVER: Duration = Duration::from_secs(40);

/// One scrape in the Prometheus text format.
struct Scrape {
    /// (sample name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
    /// Every sample name the `# TYPE` lines allow (`x_total` for a counter `x`, the
    /// `_bucket`, `_sum`, `_count` of a histogram), families without samples yet
    /// included.
    names: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                for s in suffixes {
                    names.insert(format!("{name}{s}"));
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_string(), labels, value.parse().unwrap()));
        }
        Scrape { samples, names }
    }

    /// The sum of `name`'s samples whose labels include every pair of `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

async fn scrape(socket: &Path) -> Scrape {
    let reply = client::get(socket, "/metrics").await.unwrap();
    assert_eq!(reply.status, 200);
    Scrape::parse(&String::from_utf8_lossy(&reply.body))
}

/// A plain HTTP/1.1 request over TCP: (status, headers, body).
fn http_tcp(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(CONVERGE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: scraper\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

fn socket(c: &LocalCluster, name: &str) -> PathBuf {
    c.node(name).unwrap().socket.clone()
}

/// n1 owns three agents with copies on n2, n3 and n4 (n4, a standby host with room for
/// one agent, shares n1's zone az1). n1 is SIGKILLed; once its agents are adopted the
/// survivors' counters must show it: each agent adopted once (adoptions), at least
/// one election won per agent and no more won than started, a recovery time observed
/// for adoptions (never more than the adoptions of that node), a suspicion raised
/// from a failed probe, n1 counted down in az1 and the others alive in their zones,
/// and n4's standby room used up (gauge 0 and a `standby_capacity_exhausted` event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_recovery_moves_the_survivors_counters() {
    let names = ["n1", "n2", "n3", "n4"];
    let survivors = ["n2", "n3", "n4"];
    let mut c = cluster!(&names);
    let seed = c.start("n1", "az1", &[]).await.unwrap().addr;
    c.start("n2", "az2", &[seed]).await.unwrap();
    c.start("n3", "az3", &[seed]).await.unwrap();
    let standby = ["--standby", "--capacity", "1"].map(String::from);
    c.start_with("n4", "az1", &[seed], &standby).await.unwrap();
    c.wait_converged(CONVERGE).await.expect("converge");

    let owner = socket(&c, "n1");
    let agents = ["a1", "a2", "a3"];
    for id in agents {
        client::register(&owner, id, "{}").await.unwrap();
        for seq in 1..=2u64 {
            let body = Bytes::from(format!("{id} state {seq}"));
            // `all`: answered once every holder wrote it, so each can elect from it.
            let out = client::put_snapshot(&owner, id, body, Some("all"))
                .await
                .unwrap();
            assert_eq!(out.stored_on.len(), 3, "{out:?}");
        }
    }
    let mut before = BTreeMap::new();
    for h in survivors {
        before.insert(h, scrape(&socket(&c, h)).await);
    }

    let mut watch = c.watch(&survivors).await.unwrap();
    c.signal("n1", Signal::SIGKILL).unwrap();
    let mut adopted = BTreeSet::new();
    let all_adopted = async {
        while adopted.len() < agents.len() {
            let (_, e) = watch.next().await.expect("the survivors' events");
            if e.kind == "agent_adopted" {
                adopted.insert(e.agent.clone().unwrap());
            }
        }
    };
    tokio::time::timeout(RECOVER, all_adopted)
        .await
        .expect("every agent adopted");
    for h in survivors {
        c.wait_members(h, "n1 down", DETECT, |m| {
            m.iter().any(|m| m.name == "n1" && m.state == "down")
        })
        .await
        .unwrap();
    }
    // n4 adopted at least one agent (standby hosts come first), which used up its room.
    let exhausted = c
        .wait_event("n4", DETECT, |e| e.kind == "standby_capacity_exhausted")
        .await
        .unwrap();
    assert_eq!(exhausted.zone.as_deref(), Some("az1"), "{exhausted:?}");
    assert_eq!(exhausted.count, Some(0), "{exhausted:?}");

    let mut after = BTreeMap::new();
    for h in survivors {
        after.insert(h, scrape(&socket(&c, h)).await);
    }
    let delta = |h: &str, name: &str, with: &[(&str, &str)]| {
        after[h].sum(name, with) - before[h].sum(name, with)
    };
    let total = |name: &str, with: &[(&str, &str)]| -> f64 {
        survivors.iter().map(|h| delta(h, name, with)).sum()
    };
    let report: Vec<String> = [
        "vigil_adoptions_total",
        "vigil_elections_won_total",
        "vigil_elections_total",
        "vigil_rto_seconds_count",
        "vigil_suspicions_raised_total",
        "vigil_probes_total",
    ]
    .iter()
    .map(|n| {
        let per: Vec<String> = survivors
            .iter()
            .map(|h| format!("{h}={}", delta(h, n, &[])))
            .collect();
        format!("{n}: {}", per.join(" "))
    })
    .collect();
    let report = report.join("\n");
    println!("{report}");

    assert_eq!(total("vigil_adoptions_total", &[]), 3.0, "{report}");
    let won = total("vigil_elections_won_total", &[]);
    let started = total("vigil_elections_total", &[("kind", "recover")]);
    assert!(won >= 3.0 && started >= won, "{report}");
    let mut rto = 0.0;
    for h in survivors {
        let observed = delta(h, "vigil_rto_seconds_count", &[]);
        assert!(
            observed <= delta(h, "vigil_adoptions_total", &[]),
            "{h}: {report}"
        );
        assert_eq!(
            after[h].sum("vigil_rto_seconds_bucket", &[("le", "+Inf")]),
            after[h].sum("vigil_rto_seconds_count", &[]),
            "{h}"
        );
        rto += observed;
    }
    assert!(rto >= 1.0, "{report}");
    assert!(total("vigil_rto_seconds_sum", &[]) > 0.0, "{report}");
    let raised = total("vigil_suspicions_raised_total", &[]);
    assert!(raised >= 1.0, "{report}");
    for h in survivors {
        // A node raises a suspicion only from a probe of its own that failed.
        assert!(
            delta(h, "vigil_probes_total", &[("outcome", "failed")])
                >= delta(h, "vigil_suspicions_raised_total", &[]),
            "{h}: {report}"
        );
        assert_eq!(
            delta(h, "vigil_events_total", &[("type", "member_down")]),
            1.0,
            "{h}"
        );
        let s = &after[h];
        let members =
            |state: &str, zone: &str| s.sum("vigil_members", &[("state", state), ("zone", zone)]);
        assert_eq!(members("down", "az1"), 1.0, "{h}: n1");
        for zone in ["az1", "az2", "az3"] {
            assert_eq!(members("alive", zone), 1.0, "{h}: {zone}");
        }
        assert_eq!(s.sum("vigil_agents_pending", &[]), 0.0, "{h}");
    }
    let n4 = &after["n4"];
    assert_eq!(
        n4.sum("vigil_standby_capacity_free_agents", &[("zone", "az1")]),
        0.0
    );
    assert!(n4.sum("vigil_adoptions_total", &[]) >= 1.0, "{report}");
    c.stop_all().await;
}

/// Every `vigil_*` series name in a query of docs/dashboards/vigil.json, with where it
/// is used.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(map) => {
                let here = map
                    .get("title")
                    .and_then(|t| t.as_str())
                    .map_or(at.to_string(), |t| t.to_string());
                for (k, v) in map {
                    if let ("expr" | "query" | "definition", serde_json::Value::String(q)) =
                        (k.as_str(), v)
                    {
                        for name in names_in(q) {
                            out.entry(name).or_insert_with(|| here.clone());
                        }
                    } else {
                        walk(v, &here, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, at, out)),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(dashboard, "", &mut out);
    out
}

/// The `vigil_[a-z0-9_]*` identifiers in a PromQL query.
fn names_in(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("vigil_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn names_are_found_in_queries() {
    assert_eq!(
        names_in(r#"sum(rate(vigil_probes_total{job=~"$job"}[5m])) / vigil_joined"#),
        ["vigil_probes_total", "vigil_joined"]
    );
    assert!(names_in("not_vigil_x + up").is_empty());
}

/// The dashboard cannot rot: every metric it queries is one a real node serves (a
/// family without series yet still has its `# TYPE` line), and every query is
/// scoped by the `job` and `instance` variables on the `datasource` variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served_by_a_real_node() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboards/vigil.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);

    let mut c = cluster!(&["n1"]);
    let bind = ["--metrics-bind", "127.0.0.1:0"].map(String::from);
    let node = c.start_with("n1", "az1", &[], &bind).await.unwrap();
    let (status, _, body) = http_tcp(node.metrics.unwrap(), "GET", "/metrics");
    assert_eq!(status, 200);
    let served = Scrape::parse(&body).names;

    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 20, "{used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|(name, _)| !served.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "queried by the dashboard but not served: {missing:?}"
    );

    let mut panels = 0;
    for row in dashboard["panels"].as_array().unwrap() {
        for target in row["targets"].as_array().into_iter().flatten() {
            panels += 1;
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{row}");
            let expr = target["expr"].as_str().unwrap();
            for part in expr
                .split("vigil_")
                .skip(1)
                .chain(expr.split("up{").skip(1))
            {
                let selector = part.split('}').next().unwrap();
                assert!(
                    selector.contains(r#"job=~"$job""#)
                        && selector.contains(r#"instance=~"$instance""#),
                    "unscoped selector in {expr}"
                );
            }
        }
    }
    assert!(panels >= 20);
    c.stop_all().await;
}

/// `--metrics-bind` serves `GET /metrics` over plain TCP, the same registry as the
/// socket, and nothing else; an address already taken stops the node at start with
/// an error that names the setting and a fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bind_serves_only_metrics_over_tcp() {
    let mut c = cluster!(&["n1", "n2"]);
    let bind = ["--metrics-bind", "127.0.0.1:0"].map(String::from);
    let node = c.start_with("n1", "az1", &[], &bind).await.unwrap();
    let addr = node
        .metrics
        .expect("the ready line names the metrics address");
    let (status, head, body) = http_tcp(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let over_tcp = Scrape::parse(&body);
    let on_socket = scrape(&socket(&c, "n1")).await;
    assert_eq!(over_tcp.sum("vigil_build_info", &[]), 1.0, "{body}");
    // One registry behind both: the same families.
    assert_eq!(over_tcp.names, on_socket.names);

    let (status, _, _) = http_tcp(addr, "GET", "/v1/health");
    assert_eq!(status, 404, "the socket API is not served over TCP");
    let (status, _, _) = http_tcp(addr, "POST", "/metrics");
    assert_eq!(status, 405);

    // The same address for a second node: refused at start, saying why.
    let taken = vec!["--metrics-bind".to_string(), addr.to_string()];
    let err = match c.start_with("n2", "az2", &[], &taken).await {
        Err(e) => e,
        Ok(_) => panic!("n2 started on a metrics address in use"),
    };
    let HarnessError::Node { log, .. } = &err else {
        panic!("unexpected error {err}");
    };
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("--metrics-bind") && log.contains(&addr.to_string()) && log.contains("Fix:"),
        "{log}"
    );
    c.stop_all().await;
}
