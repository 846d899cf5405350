#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! The snapshot benchmark's measuring code on tiny parameters: every part must
//! produce figures (acknowledged puts, baseline writes, a completed repair with its
//! events read) and the report must name them. Structure only; timings belong to the
//! benchmark itself.

use std::time::Duration;

use vigil_benches::snapshots::{Layout, Params, Part, Writer, report, run_bench};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_measures_something_on_a_tiny_run() {
    let params = Params {
        parts: [Part::Latency, Part::Throughput, Part::Repair].into(),
        rounds: 1,
        counts: [3, 3, 2],
        warmup: 1,
        agents: 6,
        tp_sizes: vec![64 * 1024],
        ramp: Duration::ZERO,
        window: Duration::from_millis(500),
        pause: Duration::ZERO,
        idle_sample: Duration::ZERO,
        repair_rounds: 1,
        repair_agents: 4,
        repair_versions: 1,
        repair_size: 64 * 1024,
        repair_layouts: vec![Layout::OneOwner],
        repair_rates: vec![None],
        keep: false,
    };
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-bench-node"));
    let report = run_bench(&params, &bin).await;
    let text = report::render(&report);
    assert!(report.failures.is_empty(), "{text}");
    assert!(report.mount.is_some(), "{text}");

    assert_eq!(report.latency.len(), 3, "{text}");
    for l in &report.latency {
        assert_eq!(
            l.vigil.len(),
            if l.size == 1 << 20 { 2 } else { 3 },
            "{text}"
        );
        assert!(l.vigil_errors.is_empty(), "{text}");
        assert_eq!(l.disk.len(), 2, "{text}");
    }

    let writers: Vec<Writer> = report.throughput.iter().map(|r| r.writer).collect();
    assert_eq!(writers.len(), 3, "{text}");
    for r in &report.throughput {
        assert!(!r.latencies_ms.is_empty(), "{:?}: {text}", r.writer);
    }
    let vigil = &report.throughput[0];
    assert_eq!(vigil.writer, Writer::Vigil);
    assert!(
        vigil.node_disk_bytes_per_s.is_some_and(|b| b > 0.0),
        "{text}"
    );

    let [repair] = report.repair.as_slice() else {
        panic!("one repair run: {text}");
    };
    assert!(repair.failures.is_empty(), "{text}");
    // n4 holds a copy of every agent n1 owns (it is the only other az1 node).
    assert_eq!(repair.affected, 4, "{text}");
    assert_eq!(repair.repair_events, 4, "{text}");
    assert_eq!(repair.repaired_total(), 4 * 64 * 1024, "{text}");
    assert!(repair.all_repaired_ms.is_some() && repair.owners_down_ms.is_some());
    assert!(text.contains("TARGETS FROM THE ISSUE"), "{text}");
}
