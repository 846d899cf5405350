//! `vigil demo`: five nodes in three zones on loopback running example agents; the
//! busiest host is killed with its agents, and the timeline shows detection, election,
//! adoption and each agent's first heartbeat on its new host (RTO), and the restored
//! seq against the last acknowledged one (RPO).

use std::time::{Duration, Instant};

use crate::cli::DemoArgs;
use crate::client;
use crate::harness::recovery::{RecoveryWatch, example_agent_args};
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
    // Each node launches the agents it owns with the built-in example agent.
    let exe = std::env::current_exe()?;
    cluster
        .start_seeded(&NODES, &example_agent_args(&exe, ""))
        .await?;
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
    let mut agents: Vec<(String, String)> = Vec::new();
    for i in 1..=AGENTS_ON_VICTIM {
        agents.push((format!("worker-{i}"), VICTIM.into()));
    }
    agents.push(("planner".into(), "n1".into()));
    agents.push(("critic".into(), "n2".into()));
    for (id, owner) in &agents {
        client::register(&cluster.node(owner)?.socket, id, r#"{"kind":"example"}"#).await?;
    }
    println!(
        "registered {} example agents ({} on {VICTIM}); each counts, snapshots every 200 ms and heartbeats (`{} example-agent`)",
        agents.len(),
        AGENTS_ON_VICTIM,
        exe.display()
    );
    cluster.wait_agents_running(&agents, timeout).await?;
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
        .filter(|(_, o)| o == VICTIM)
        .map(|(a, _)| a.clone())
        .collect();
    let mut feed = cluster.follow(&survivors).await?;

    // The host dies with its agents.
    let killed = cluster.kill_with_agents(VICTIM, &victims, timeout).await?;
    let t0 = killed.killed_ms() as i64;
    println!();
    println!("timeline (relative to the kill):");
    println!(
        "  {}  SIGKILL {VICTIM} ({}, pid {}) and its {} agents",
        secs(0),
        killed.zone,
        killed.pid,
        victims.len()
    );

    let mut watch = RecoveryWatch::new(&killed);
    watch.collect(&mut feed, timeout).await;
    drop(feed);
    let mut lines: Vec<(i64, String)> = watch
        .events
        .iter()
        .map(|(name, e)| {
            let agent = e.agent.as_deref().unwrap_or_default();
            let what = match e.kind.as_str() {
                "member_down" => format!("{name} declares {VICTIM} down"),
                "member_suspected" => format!("{name} suspects {VICTIM}"),
                "coordinator_elected" => format!("{name} elected coordinator of {agent}"),
                "agent_adopted" => format!(
                    "{name} adopts {agent} (epoch {}, seq {})",
                    e.epoch.unwrap_or(0),
                    e.seq.unwrap_or(0)
                ),
                _ => format!("{agent} heartbeats on {name}"),
            };
            (e.time_ms as i64 - t0, what)
        })
        .collect();
    lines.sort();
    for (at, what) in &lines {
        println!("  {}  {what}", secs(*at));
    }
    println!();
    let mut downs: Vec<i64> = watch.downs.values().map(|t| *t as i64 - t0).collect();
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
    let ms = |t: Option<u64>| {
        t.map_or("-".to_string(), |t| {
            format!("{:.3} s", (t as i64 - t0) as f64 / 1000.0)
        })
    };
    let mut failures = Vec::new();
    let mut rtos = Vec::new();
    for (id, r) in &watch.agents {
        let last = killed.agents.get(id).map_or(0, |a| a.seq);
        let restored = r.adopted().map(|(_, seq)| *seq);
        let rpo = restored.map(|s| last.saturating_sub(s));
        let running = r.running.as_ref().map(|(s, _)| s);
        println!(
            "  {id:<10} {:<9} {:<9} {:<9} {:<14} {:<13} {:<15} {}",
            running.map_or("-", |s| s.node.as_str()),
            ms(r.elected().map(|s| s.at_ms)),
            ms(r.adopted().map(|(s, _)| s.at_ms)),
            ms(running.map(|s| s.at_ms)),
            restored.map_or("-".into(), |s| s.to_string()),
            last,
            rpo.map_or("-".into(), |n| format!("{n} snapshots lost"))
        );
        match (running, rpo) {
            (Some(s), Some(0)) => rtos.push(s.at_ms as i64 - t0),
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
