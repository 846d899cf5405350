#![allow(clippy::unwrap_used)] // a failed unwrap in a test is a failed test

//! The simulator itself: reproducibility, detection, and a short swarm.

use std::time::Duration;

use vigil_sim::scenario::{self, RunSpec, Scenario};

fn small_crash_run(seed: u64) -> RunSpec {
    let mut spec = RunSpec::new(20, seed, Scenario::Crash);
    spec.window = Duration::from_secs(5);
    spec.faults = 2;
    spec.fault_spacing = Duration::from_secs(10);
    spec.check_views_every = 31;
    spec
}

/// The report without wall-clock figures, which differ between runs by nature.
fn comparable(report: &scenario::Report) -> serde_json::Value {
    let mut v = serde_json::to_value(report).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("wall_secs");
    o.remove("sim_secs_per_wall_sec");
    v
}

#[test]
fn the_same_seed_reproduces_the_run_bit_for_bit() {
    let a = scenario::run(&small_crash_run(7));
    let b = scenario::run(&small_crash_run(7));
    assert_eq!(comparable(&a), comparable(&b));
    let c = scenario::run(&small_crash_run(8));
    assert_ne!(
        comparable(&a),
        comparable(&c),
        "another seed must give another run"
    );
}

#[test]
fn every_live_host_sees_each_crash() {
    let r = scenario::run(&small_crash_run(3));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!(r.detection.crashes, 2);
    assert_eq!(r.detection.missed, 0);
    assert_eq!(r.detection.every_observer.n, 2 * 18);
    assert!(r.join_convergence_secs.is_some());
    assert_eq!(r.convergence_after_faults_secs, Some(0.0));
}

#[test]
fn a_short_swarm_keeps_every_invariant() {
    for seed in 1..=6 {
        let outcome = scenario::swarm_one(seed, 12);
        assert!(
            !outcome.failed(),
            "seed {seed} failed: {outcome:?}\nreplay: {}",
            scenario::replay_command(seed, 12)
        );
    }
}

/// Lifeguard's point, on the same faults: hosts that turn slow (every message they
/// handle waits 400 ms) make plain foca with vigil's short timing accuse healthy
/// members, while vigil's detector, just as fast, accuses nobody. foca's own LAN
/// defaults accuse nobody either, but take several times as long to see a crash.
#[test]
fn slow_hosts_make_plain_foca_accuse_healthy_members_but_not_vigil() {
    use vigil_protocol::{Detector, Profile};
    let run = |detector| {
        let mut spec = RunSpec::new(40, 1, Scenario::Slow);
        spec.detector = detector;
        spec.window = Duration::from_secs(30);
        scenario::run(&spec)
    };
    let vigil = run(Detector::Vigil(Profile::Lan));
    let matched = run(Detector::PlainFocaMatched(Profile::Lan));
    let lan = run(Detector::PlainFocaLan);
    assert!(vigil.violations.is_empty(), "{:?}", vigil.violations);
    assert_eq!(
        vigil.false_positives.len(),
        0,
        "{:?}",
        vigil.false_positives
    );
    assert!(
        !matched.false_positives.is_empty(),
        "plain foca with short timing was expected to accuse a slow host's targets"
    );
    assert_eq!(lan.false_positives.len(), 0);
    let (v, l) = (
        vigil.detection.every_observer.p50,
        lan.detection.every_observer.p50,
    );
    assert!(
        v * 3.0 < l,
        "vigil's median detection {v:.2} s should be far below foca new_lan's {l:.2} s"
    );
}
