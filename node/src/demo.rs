//! `vigil demo`: five nodes in three zones on loopback, one killed, a timeline of how
//! the others noticed.

use std::time::{Duration, Instant, SystemTime};

use crate::cli::DemoArgs;
use crate::client::{self, StreamItem};
use crate::events::EventRecord;
use crate::harness::{HarnessError, LocalCluster};

const NODES: [(&str, &str); 5] = [
    ("n1", "az1"),
    ("n2", "az2"),
    ("n3", "az3"),
    ("n4", "az1"),
    ("n5", "az2"),
];
const VICTIM: &str = "n4";

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs(ms: i64) -> String {
    format!("{:+.3}s", ms as f64 / 1000.0)
}

pub async fn run(args: DemoArgs) -> Result<(), HarnessError> {
    let timeout = Duration::from_secs(args.timeout_secs.max(5));
    let binary = std::env::current_exe()?;
    let names: Vec<&str> = NODES.iter().map(|(n, _)| *n).collect();
    let mut cluster = LocalCluster::new(binary, &names, args.keep)?;
    cluster.env = vec![("RUST_LOG".into(), "info".into())];
    println!(
        "vigil demo: {} nodes in 3 zones on 127.0.0.1, LAN profile, mutual TLS (certificates in {})",
        NODES.len(),
        cluster.pki().display()
    );

    let result = run_scenario(&mut cluster, timeout).await;
    println!("stopping the cluster (SIGTERM: each node leaves gracefully)");
    cluster.stop_all().await;
    if args.keep {
        println!("kept {} (logs: */node.log)", cluster.root().display());
    }
    result
}

async fn run_scenario(cluster: &mut LocalCluster, timeout: Duration) -> Result<(), HarnessError> {
    let started = Instant::now();
    let (first, first_zone) = NODES[0];
    let seed = cluster.start(first, first_zone, &[]).await?.addr;
    for (name, zone) in &NODES[1..] {
        cluster.start(name, zone, &[seed]).await?;
    }
    for node in cluster.nodes() {
        println!(
            "  {:<3} {}  {}  pid {}",
            node.name, node.zone, node.addr, node.pid
        );
    }
    let all_started = started.elapsed();
    cluster.wait_converged(timeout).await?;
    println!(
        "all {} nodes see each other alive: {:.2} s after the first start ({:.2} s after the last)",
        NODES.len(),
        started.elapsed().as_secs_f64(),
        (started.elapsed() - all_started).as_secs_f64()
    );

    // Watch every survivor from its current position, so only what follows the
    // kill is collected.
    let survivors: Vec<&str> = NODES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != VICTIM)
        .collect();
    let mut watchers = Vec::new();
    for name in &survivors {
        let node = cluster.node(name)?;
        let socket = node.socket.clone();
        let since = client::health(&socket).await?.last_event_index;
        let mut stream = client::events(&socket, Some(since)).await?;
        let name = name.to_string();
        watchers.push(tokio::spawn(async move {
            let mut seen: Vec<EventRecord> = Vec::new();
            while let Ok(Some(item)) = stream.next().await {
                let StreamItem::Event(record) = item else {
                    break;
                };
                let about_victim = record.member.as_deref() == Some(VICTIM);
                let down =
                    about_victim && matches!(record.kind.as_str(), "member_down" | "member_left");
                if about_victim {
                    seen.push(record);
                }
                if down {
                    break;
                }
            }
            (name, seen)
        }));
    }

    let victim = cluster.node(VICTIM)?;
    let (victim_zone, victim_pid) = (victim.zone.clone(), victim.pid);
    let killed_at = cluster.kill(VICTIM).await?;
    let t0 = unix_ms(killed_at);
    println!();
    println!("timeline (relative to the kill):");
    println!(
        "  {}  SIGKILL {VICTIM} ({victim_zone}, pid {victim_pid})",
        secs(0)
    );

    let mut lines: Vec<(i64, String)> = Vec::new();
    let mut first_suspect: Option<(i64, String)> = None;
    let mut downs: Vec<(i64, String)> = Vec::new();
    let deadline = Instant::now() + timeout;
    for watcher in watchers {
        let left = deadline.saturating_duration_since(Instant::now());
        let (name, seen) = match tokio::time::timeout(left, watcher).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => return Err(HarnessError::Io(std::io::Error::other(e))),
            Err(_) => {
                return Err(HarnessError::Timeout {
                    what: format!("every survivor to declare {VICTIM} down"),
                    after: timeout,
                });
            }
        };
        for record in seen {
            let at = record.time_ms as i64 - t0 as i64;
            let what = match record.kind.as_str() {
                "member_suspected" => {
                    if first_suspect.as_ref().is_none_or(|(t, _)| at < *t) {
                        first_suspect = Some((at, name.clone()));
                    }
                    format!("{name} suspects {VICTIM}")
                }
                "member_down" => {
                    downs.push((at, name.clone()));
                    format!("{name} declares {VICTIM} down")
                }
                "member_refuted" => format!("{name} sees {VICTIM} refute a suspicion"),
                other => format!("{name}: {other} {VICTIM}"),
            };
            lines.push((at, what));
        }
    }
    lines.sort();
    for (at, what) in &lines {
        println!("  {}  {what}", secs(*at));
    }
    println!();
    if downs.len() < survivors.len() {
        return Err(HarnessError::Timeout {
            what: format!("every survivor to declare {VICTIM} down"),
            after: timeout,
        });
    }
    downs.sort();
    let times: Vec<i64> = downs.iter().map(|(t, _)| *t).collect();
    let median = (times[(times.len() - 1) / 2] + times[times.len() / 2]) as f64 / 2.0;
    if let Some((at, by)) = &first_suspect {
        println!("first suspicion: {:.3} s (by {by})", *at as f64 / 1000.0);
    }
    println!(
        "cluster-wide detection: all {} survivors saw {VICTIM} down within {:.3} s (first {:.3} s, median {:.3} s)",
        times.len(),
        times[times.len() - 1] as f64 / 1000.0,
        times[0] as f64 / 1000.0,
        median / 1000.0
    );
    Ok(())
}
