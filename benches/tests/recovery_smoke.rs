#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! The recovery benchmark's measuring code on a tiny cluster: the killed host's
//! agents must all run again elsewhere with their last acknowledged snapshot, every
//! phase must be measured for each of them, and the report must say so. Structure
//! only; timings belong to the benchmark itself.

use vigil_benches::recovery::{Params, run_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_agents_all_run_again_with_their_last_acknowledged_snapshot() {
    let params = Params {
        runs: 1,
        nodes: 4,
        agents: 8,
        settle_secs: 2,
        ..Params::default()
    };
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-bench-node"));
    let report = run_bench(&params, &bin).await;
    let markdown = report.markdown();
    assert!(!report.failed(), "{markdown}");

    let [run] = report.runs.as_slice() else {
        panic!("one run: {markdown}");
    };
    // Run 1 kills n1, which owns agent-000 and agent-004.
    assert_eq!(run.victim, "n1");
    let ids: Vec<&str> = run.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["agent-000", "agent-004"], "{markdown}");
    assert_eq!((run.detected_by, run.survivors), (3, 3), "{markdown}");
    for a in &run.agents {
        let host = a.new_host.as_deref().unwrap();
        assert_ne!(host, "n1", "{markdown}");
        assert!(a.epoch.unwrap() >= 2, "{markdown}");
        assert!(a.acked_seq > 0, "{markdown}");
        assert_eq!(a.lost(), Some(0), "{markdown}");
        assert!(a.acked_count.is_some(), "{markdown}");
        assert!(a.starts >= 1, "{markdown}");
        assert_eq!(a.resume_problem(), None, "{markdown}");
        assert!(a.adopted_seq.unwrap() >= a.acked_seq, "{markdown}");
        assert!(a.restored_seq.unwrap() >= a.acked_seq, "{markdown}");
        // The phases follow each other on one clock (event times in whole ms).
        let times =
            [run.detection_ms, a.elected_ms, a.adopted_ms, a.running_ms].map(Option::unwrap);
        assert!(times.is_sorted(), "{times:?}\n{markdown}");
        assert!(a.proposers >= 1, "{markdown}");
        let election = [
            a.coordinator_down_ms,
            a.coordinator_proposed_ms,
            a.elected_ms,
        ];
        assert!(election.map(Option::unwrap).is_sorted(), "{markdown}");
    }
    assert_eq!(report.snapshots_lost(), 0);

    let phases = report.phases();
    let counts: Vec<(&str, usize)> = phases.iter().map(|p| (p.name, p.samples.len())).collect();
    assert_eq!(counts.len(), 8, "{counts:?}");
    assert_eq!(counts[0], ("detection", 1));
    assert!(counts[1..].iter().all(|(_, n)| *n == 2), "{counts:?}");
    assert!(
        markdown.contains("## Recovery time (RTO), real processes"),
        "{markdown}"
    );
    assert!(markdown.contains("| RTO p99 ≤ 5 s |"), "{markdown}");
    assert!(
        markdown.contains("0 acknowledged snapshots lost"),
        "{markdown}"
    );
    assert!(markdown.contains("cited, not measured"), "{markdown}");

    let dir = tempfile::tempdir().unwrap();
    let path = report
        .write_json(Some(&dir.path().join("out.json")))
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(json["runs"][0]["agents"].as_array().unwrap().len(), 2);
}
