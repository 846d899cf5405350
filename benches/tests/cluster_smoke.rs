#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! The cluster benchmark's measuring code on a tiny cluster of each system: it must
//! reach convergence, see the victim detected by every survivor, and read non-zero
//! counters. Structure only; timings belong to the benchmark itself.

use std::time::Duration;

use vigil_benches::cluster::{Binaries, Params, System, run_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_systems_converge_detect_and_count_on_three_nodes() {
    let params = Params {
        sizes: vec![3],
        runs: 1,
        window: Duration::from_secs(2),
        settle: Some(Duration::from_secs(1)),
        out: None,
        ..Params::default()
    };
    let bins = Binaries {
        vigil: env!("CARGO_BIN_EXE_vigil-bench-node").into(),
        udp_node: env!("CARGO_BIN_EXE_udp-node").into(),
        foca_lan: None,
        chitchat: None,
        memberlist: None,
    };
    let report = run_bench(&params, &bins).await;
    let markdown = report.markdown();

    let systems: Vec<System> = report.runs.iter().map(|r| r.system).collect();
    assert_eq!(systems, vec![System::Vigil, System::UdpNode]);
    for run in &report.runs {
        let system = run.system.as_str();
        assert!(
            run.failures.is_empty(),
            "{system}: {:?}\n{markdown}",
            run.failures
        );
        assert!(run.converged_at_ms.is_some(), "{system}: no convergence");
        assert_eq!(run.victim, "n2");
        let observers: Vec<&str> = run.detection_ms.keys().map(String::as_str).collect();
        assert_eq!(observers, vec!["n1", "n3"], "{system}: detected by");
        assert!(run.undetected_by.is_empty());
        assert!(run.first_suspicion_ms.is_some(), "{system}: no suspicion");
        assert_eq!(run.nodes.len(), 3, "{system}: steady-state figures");
        for node in &run.nodes {
            assert!(
                node.tx_bytes_per_s > 0.0,
                "{system} {}: tx bytes",
                node.name
            );
            assert!(node.tx_packets_per_s > 0.0, "{system} {}: tx", node.name);
            assert!(
                node.rx_bytes_per_s > 0.0,
                "{system} {}: rx bytes",
                node.name
            );
            assert!(node.rx_packets_per_s > 0.0, "{system} {}: rx", node.name);
            assert!(
                node.wire_tx_bytes_per_s > node.tx_bytes_per_s,
                "{system} {}: wire bytes",
                node.name
            );
            // udp-node's warm-up runs between two of its once-a-second lines, which
            // a 1 s settle may not separate; vigil's counters are read on the spot.
            let warmup = node.warmup.as_ref().unwrap();
            if run.system == System::Vigil {
                assert!(warmup.secs > 0.0, "{system} {}: warm-up", node.name);
                assert!(warmup.tx_bytes > 0, "{system} {}: warm-up", node.name);
            }
            assert_eq!(
                warmup.connections_opened.is_some(),
                run.system == System::Vigil,
                "{system} {}: warm-up connections",
                node.name
            );
            assert!(node.rss_bytes > 0, "{system} {}: rss", node.name);
            assert!(node.cpu_fraction.is_finite() && node.cpu_fraction >= 0.0);
        }
    }

    let summary = &report.summaries[0];
    assert_eq!(summary.n, 3);
    assert!(summary.ratios.tx_bytes_per_s.is_some());
    assert!(summary.ratios.wire_tx_bytes_per_s.is_some());
    assert!(markdown.contains("on the wire"), "{markdown}");
    assert!(
        markdown.contains("warm-up: bytes sent per node"),
        "{markdown}"
    );
    assert!(markdown.contains("### N = 3"), "{markdown}");
    assert!(markdown.contains("| 3 | vigil | 1 |"), "{markdown}");
    assert!(markdown.contains("| 3 | udp-node | 1 |"), "{markdown}");
    // The targets for N=50 are reported as not measured, not as missed.
    assert!(markdown.contains("not measured"), "{markdown}");

    let dir = tempfile::tempdir().unwrap();
    let path = report
        .write_json(Some(&dir.path().join("out.json")))
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    assert_eq!(json["runs"][0]["system"], "vigil");
}
