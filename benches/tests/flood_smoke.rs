#![allow(clippy::unwrap_used)] // a failed unwrap in a test harness is a failed test

//! The flood benchmark's measuring code on a tiny cluster: every phase measures
//! probe round trips, the connection flood makes the flooded node refuse with the
//! handshake gate's reasons, its memory stays bounded, and nobody is declared
//! down. Structure and bounds only; timings belong to the benchmark itself.

use std::time::Duration;

use vigil_benches::flood::{DEFAULT_SOURCE, Params, PhaseKind, run_bench};

/// A bound on memory, far above a node's tens of MiB: a flood must not grow it.
const RSS_BOUND: u64 = 512 * 1024 * 1024;
/// Junk packets per second.
const JUNK_PPS: u64 = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_refused_probes_keep_being_measured_and_nobody_goes_down() {
    if let Err(e) = std::net::UdpSocket::bind((DEFAULT_SOURCE, 0)) {
        eprintln!("SKIPPED: cannot bind {DEFAULT_SOURCE} to flood from ({e})");
        return;
    }
    let params = Params {
        nodes: 3,
        window: Duration::from_secs(3),
        settle: Some(Duration::from_secs(1)),
        // Capped: this test checks bounds and bookkeeping on an unoptimized build
        // that shares the machine with other tests; the bench floods at full speed.
        junk_pps: Some(JUNK_PPS),
        ..Params::default()
    };
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_vigil-bench-node"));
    let report = run_bench(&params, &bin).await;
    let markdown = report.markdown();
    assert!(!report.failed(), "{markdown}");

    let [run] = report.runs.as_slice() else {
        panic!("one run: {markdown}");
    };
    assert_eq!(run.flooded, "n2");
    let kinds: Vec<PhaseKind> = run.phases.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, params.phases, "{markdown}");
    for phase in &run.phases {
        let label = &phase.label;
        assert_eq!(phase.nodes.len(), 3, "{label}: {markdown}");
        let rtts: u64 = phase.nodes.iter().map(|n| n.probe_rtt.count).sum();
        assert!(
            rtts > 0,
            "{label}: no probe round trip measured\n{markdown}"
        );
        let flooded = phase.flooded().unwrap();
        assert_eq!(flooded.name, "n2");
        assert!(
            flooded.rss_peak_bytes > 0 && flooded.rss_peak_bytes < RSS_BOUND,
            "{label}: RSS {}\n{markdown}",
            flooded.rss_peak_bytes
        );
        assert_eq!(phase.downs(), 0, "{label}: {:?}", phase.false_positives);
        match phase.kind {
            PhaseKind::Junk => {
                let junk = phase.junk.unwrap();
                assert!(junk.packets > 0 && junk.initial_shaped > 0, "{junk:?}");
                assert!(flooded.udp_rx_packets > 0, "{label}: {markdown}");
            }
            PhaseKind::Handshakes => {
                let hs = phase.handshakes.unwrap();
                assert!(hs.attempts > 0, "{hs:?}");
                assert_eq!(hs.accepted, 0, "{hs:?}");
                let gate: u64 = ["address_throttled", "too_many_handshakes_from_address"]
                    .iter()
                    .filter_map(|r| flooded.refusals.get(*r))
                    .sum();
                assert!(
                    gate > 0,
                    "{label}: no refusal by the handshake gate: {:?}\n{markdown}",
                    flooded.refusals
                );
            }
            PhaseKind::Baseline => assert!(phase.junk.is_none() && phase.handshakes.is_none()),
        }
    }
    let downs_outside = run
        .false_positives_outside
        .iter()
        .filter(|f| f.kind == "member_down")
        .count();
    assert_eq!(downs_outside, 0, "{:?}", run.false_positives_outside);
    assert!(
        markdown.contains("## Floods: junk datagrams and connection attempts"),
        "{markdown}"
    );
    assert!(markdown.contains("| connection attempts |"), "{markdown}");

    let dir = tempfile::tempdir().unwrap();
    let path = report
        .write_json(Some(&dir.path().join("out.json")))
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(json["runs"][0]["phases"].as_array().unwrap().len(), 4);
}
