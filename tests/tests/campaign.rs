//! A short fault campaign (tests/src/campaign/) in the test suite: five real nodes in
//! network namespaces (loopback where namespaces are unavailable, unless
//! VIGIL_REQUIRE_NETNS is set), a minute of faults, and the checker's verdict.
//! The seed is fixed so CI is reproducible; VIGIL_CAMPAIGN_SEED picks another, and
//! `cargo run -p vigil-tests --release --bin campaign -- --seed S` runs a longer one.

use std::time::Duration;

use vigil_tests::campaign::run::{Config, Mode, run};
use vigil_tests::netns::{NetLab, REQUIRE_ENV};
use vigil_tests::vigil_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_campaign_finds_no_anomaly() {
    let seed = std::env::var("VIGIL_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let required = std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    let mode = if required || NetLab::unavailable().is_none() {
        Mode::Netns
    } else {
        Mode::Loopback
    };
    let out = tempfile::tempdir().expect("scratch directory");
    let config = Config {
        seed,
        duration: Duration::from_secs(60),
        nodes: 5,
        agents_per_node: 4,
        mode,
        bound: Duration::from_secs(60),
        binary: vigil_bin!(),
        out: out.path().to_path_buf(),
    };
    let outcome = run(&config).await.expect("the campaign runs");
    println!("{}", outcome.report);
    if !outcome.report.is_clean() {
        let kept = out.keep();
        panic!(
            "seed {seed}: {} anomalies (history, logs and report in {}); schedule:\n{}",
            outcome.report.anomalies.len(),
            kept.display(),
            outcome.schedule.join("\n")
        );
    }
    assert!(
        outcome.history.puts.len() > 100,
        "the workload barely ran: {} puts acknowledged ({:?} failed)",
        outcome.history.puts.len(),
        outcome.put_errors
    );
    assert!(!outcome.history.faults.is_empty(), "no fault was injected");
}
