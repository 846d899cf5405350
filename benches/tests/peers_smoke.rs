#![cfg(feature = "peers")]
#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! The peer binaries (`--features peers`) on a tiny cluster each, through the
//! cluster benchmark's measuring code: every peer must converge, see the victim
//! declared down by every survivor and report non-zero counters. Structure only;
//! timings belong to the benchmark. chitchat's phi-accrual detector takes 10-20 s
//! to declare a node dead, so this takes about a minute.

use std::time::Duration;

use vigil_benches::cluster::{Binaries, Params, System, run_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_peer_converges_detects_and_counts_on_three_nodes() {
    let params = Params {
        sizes: vec![3],
        runs: 1,
        window: Duration::from_secs(2),
        settle: Some(Duration::from_secs(1)),
        out: None,
        systems: vec![System::FocaLan, System::Chitchat, System::Memberlist],
    };
    let bins = Binaries {
        vigil: env!("CARGO_BIN_EXE_vigil-bench-node").into(),
        udp_node: env!("CARGO_BIN_EXE_udp-node").into(),
        foca_lan: Some(env!("CARGO_BIN_EXE_foca-lan").into()),
        chitchat: Some(env!("CARGO_BIN_EXE_chitchat-node").into()),
        memberlist: Some(env!("CARGO_BIN_EXE_memberlist-node").into()),
    };
    let report = run_bench(&params, &bins).await;
    let markdown = report.markdown();

    let systems: Vec<System> = report.runs.iter().map(|r| r.system).collect();
    assert_eq!(systems, params.systems);
    for run in &report.runs {
        let system = run.system.as_str();
        assert!(
            run.failures.is_empty(),
            "{system}: {:?}\n{markdown}",
            run.failures
        );
        let observers: Vec<&str> = run.detection_ms.keys().map(String::as_str).collect();
        assert_eq!(observers, vec!["n1", "n3"], "{system}: detected by");
        // chitchat has no suspected state.
        assert_eq!(
            run.first_suspicion_ms.is_some(),
            run.system != System::Chitchat,
            "{system}: suspicion"
        );
        assert_eq!(run.nodes.len(), 3, "{system}: steady-state figures");
        for node in &run.nodes {
            assert!(node.tx_bytes_per_s > 0.0, "{system} {}: tx", node.name);
            assert!(node.rx_bytes_per_s > 0.0, "{system} {}: rx", node.name);
            assert!(node.rss_bytes > 0, "{system} {}: rss", node.name);
        }
    }
    assert_eq!(report.summaries[0].peers.len(), 3);
    assert!(
        markdown.contains("### N = 3: vigil and the peers"),
        "{markdown}"
    );
    assert!(markdown.contains("| 3 | chitchat | 1 |"), "{markdown}");
    // vigil did not run, so the peer target has nothing to compare.
    assert_eq!(report.peer_targets.len(), 1);
    assert_eq!(report.peer_targets[0].met, None);
}
