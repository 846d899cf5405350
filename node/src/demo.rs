//! `vigil demo`: five nodes in three zones on loopback running example agents; the
//! busiest host is killed with its agents, and the timeline shows detection, election,
//! adoption and each agent's first heartbeat on its new host (RTO), and the restored
//! seq against the last acknowledged one (RPO).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::DemoArgs;
use crate::client;
use crate::harness::{HarnessError, LocalCluster};

const NODES: [(&str, &str); 5] = [
    ("n1", "az1"),
    ("n2", "az2"),
    ("n3", "az3"),
    ("n4", "az1"),
    ("n5", "az2"),
];
const VICTIM: &str = "n4";
const AGENTS_ON_VICTIM: usize = 4;

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
    // Each node launches the agents it owns with the built-in example agent.
    let command = format!(
        "'{}' example-agent --id {{id}} --socket {{socket}}",
        std::env::current_exe()?.display()
    );
    let extra = vec!["--agent-command".to_string(), command];
    let seed = cluster
        .start_with(first, first_zone, &[], &extra)
        .await?
        .addr;
    for (name, zone) in &NODES[1..] {
        cluster.start_with(name, zone, &[seed], &extra).await?;
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

    // Agents: the victim is the busiest host.
    let exe = std::env::current_exe()?;
    let mut agents: Vec<(String, &str)> = Vec::new();
    for i in 1..=AGENTS_ON_VICTIM {
        agents.push((format!("worker-{i}"), VICTIM));
    }
    agents.push(("planner".into(), "n1"));
    agents.push(("critic".into(), "n2"));
    for (id, owner) in &agents {
        client::register(&cluster.node(owner)?.socket, id, r#"{"kind":"example"}"#).await?;
    }
    println!(
        "registered {} example agents ({} on {VICTIM}); each counts, snapshots every 200 ms and heartbeats (`{} example-agent`)",
        agents.len(),
        AGENTS_ON_VICTIM,
        exe.display()
    );
    wait_running(cluster, &agents, timeout).await?;
    // Let them count for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Watch every survivor from its current position, so only what follows the
    // kill is collected.
    let survivors: Vec<&str> = NODES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != VICTIM)
        .collect();
    let victims: Vec<String> = agents
        .iter()
        .filter(|(_, o)| *o == VICTIM)
        .map(|(a, _)| a.clone())
        .collect();
    let mut watch = cluster.watch(&survivors).await?;

    // The host dies with its agents: freeze them, read what the owner acknowledged,
    // then SIGKILL the node and the agents.
    let victim = cluster.node(VICTIM)?;
    let (victim_zone, victim_pid, victim_socket) =
        (victim.zone.clone(), victim.pid, victim.socket.clone());
    let pids = cluster.agent_pids(VICTIM, &victims, timeout).await?;
    for pid in pids.values() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked: BTreeMap<String, u64> = client::agents(&victim_socket)
        .await?
        .into_iter()
        .filter(|a| victims.contains(&a.id))
        .map(|a| (a.id, a.latest_seq))
        .collect();
    let killed_at = cluster.kill(VICTIM).await?;
    for pid in pids.values() {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let t0 = unix_ms(killed_at) as i64;
    println!();
    println!("timeline (relative to the kill):");
    println!(
        "  {}  SIGKILL {VICTIM} ({victim_zone}, pid {victim_pid}) and its {} agents",
        secs(0),
        victims.len()
    );

    let mut lines: Vec<(i64, String)> = Vec::new();
    let mut downs: Vec<i64> = Vec::new();
    let mut per_agent: BTreeMap<String, Recovery> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while per_agent.values().filter(|r| r.running.is_some()).count() < victims.len() {
        let next = tokio::time::timeout_at(deadline, watch.next()).await;
        let Ok(Some((name, e))) = next else {
            break;
        };
        let at = e.time_ms as i64 - t0;
        let agent = e.agent.clone().unwrap_or_default();
        let about = victims.contains(&agent);
        match e.kind.as_str() {
            "member_down" if e.member.as_deref() == Some(VICTIM) => {
                downs.push(at);
                lines.push((at, format!("{name} declares {VICTIM} down")));
            }
            "member_suspected" if e.member.as_deref() == Some(VICTIM) => {
                lines.push((at, format!("{name} suspects {VICTIM}")));
            }
            "coordinator_elected" if about => {
                per_agent.entry(agent.clone()).or_default().elected = Some(at);
                lines.push((at, format!("{name} elected coordinator of {agent}")));
            }
            "agent_adopted" if about => {
                let r = per_agent.entry(agent.clone()).or_default();
                r.adopted = Some(at);
                r.host = name.clone();
                r.restored = e.seq;
                lines.push((
                    at,
                    format!(
                        "{name} adopts {agent} (epoch {}, seq {})",
                        e.epoch.unwrap_or(0),
                        e.seq.unwrap_or(0)
                    ),
                ));
            }
            "agent_running" if about && e.epoch.unwrap_or(0) >= 2 => {
                per_agent.entry(agent.clone()).or_default().running = Some(at);
                lines.push((at, format!("{agent} heartbeats on {name}")));
            }
            _ => {}
        }
    }
    drop(watch);
    lines.sort();
    for (at, what) in &lines {
        println!("  {}  {what}", secs(*at));
    }
    println!();
    downs.sort();
    if let (Some(first), Some(last)) = (downs.first(), downs.last()) {
        println!(
            "detection: {}/{} survivors declared {VICTIM} down, first {:.3} s, last {:.3} s",
            downs.len(),
            survivors.len(),
            *first as f64 / 1000.0,
            *last as f64 / 1000.0
        );
    }
    println!();
    println!(
        "  agent      new host  elected   adopted   running (RTO)  restored seq  last acked seq  RPO"
    );
    let ms = |t: Option<i64>| t.map_or("-".to_string(), |t| format!("{:.3} s", t as f64 / 1000.0));
    let mut failures = Vec::new();
    let mut rtos = Vec::new();
    for id in &victims {
        let r = per_agent.get(id).cloned().unwrap_or_default();
        let last = acked.get(id).copied().unwrap_or(0);
        let rpo = r.restored.map(|s| last.saturating_sub(s));
        println!(
            "  {id:<10} {:<9} {:<9} {:<9} {:<14} {:<13} {:<15} {}",
            if r.host.is_empty() { "-" } else { &r.host },
            ms(r.elected),
            ms(r.adopted),
            ms(r.running),
            r.restored.map_or("-".into(), |s| s.to_string()),
            last,
            rpo.map_or("-".into(), |n| format!("{n} snapshots lost"))
        );
        match (r.running, rpo) {
            (Some(t), Some(0)) => rtos.push(t),
            (None, _) => failures.push(format!("{id} was not running again within {timeout:?}")),
            (_, _) => failures.push(format!("{id} lost acknowledged snapshots")),
        }
    }
    rtos.sort();
    if let (Some(first), Some(last)) = (rtos.first(), rtos.last()) {
        println!();
        println!(
            "recovered {} of {} agents: RTO min {:.3} s, median {:.3} s, max {:.3} s; RPO 0 (every acknowledged snapshot restored)",
            rtos.len(),
            victims.len(),
            *first as f64 / 1000.0,
            rtos[(rtos.len() - 1) / 2] as f64 / 1000.0,
            *last as f64 / 1000.0
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(HarnessError::Node {
            name: VICTIM.into(),
            message: failures.join("; "),
            log: cluster.root().display().to_string(),
        })
    }
}

#[derive(Debug, Clone, Default)]
struct Recovery {
    host: String,
    elected: Option<i64>,
    adopted: Option<i64>,
    running: Option<i64>,
    restored: Option<u64>,
}

/// Waits until every agent heartbeats on its owner.
async fn wait_running(
    cluster: &LocalCluster,
    agents: &[(String, &str)],
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for (id, owner) in agents {
            let views = client::agents(&cluster.node(owner)?.socket).await?;
            all &= views.iter().any(|a| &a.id == id && a.state == "running");
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(HarnessError::Timeout {
                what: "the example agents to heartbeat".into(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
