//! Runs: a scenario on a world, and the figures it produced. Also the swarm: many
//! seeds, each drawing its own cluster size, network and faults.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use vigil_protocol::Profile;

use crate::world::{FalsePositive, Fault, HostId, NetConfig, Violation, World, WorldConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Bootstrap and steady state only.
    Steady,
    /// Crash hosts one after another and measure detection.
    Crash,
    /// Cut one zone off from the others, then heal.
    Partition,
    /// Stall hosts (as under CPU starvation) and count who gets declared down.
    Stall,
    /// Crash and restart hosts continuously.
    Churn,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "steady" => Ok(Scenario::Steady),
            "crash" => Ok(Scenario::Crash),
            "partition" => Ok(Scenario::Partition),
            "stall" => Ok(Scenario::Stall),
            "churn" => Ok(Scenario::Churn),
            other => Err(format!(
                "unknown scenario {other:?}; use steady, crash, partition, stall or churn"
            )),
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub nodes: u32,
    pub seed: u64,
    pub profile: Profile,
    pub scenario: Scenario,
    pub net: NetConfig,
    /// Length of the steady-state measurement window.
    pub window: Duration,
    /// Crashes (crash scenario) or stalls (stall scenario) to inject.
    pub faults: u32,
    /// Time between injected faults.
    pub fault_spacing: Duration,
    /// How long every live host's view may take to match the truth after the faults.
    pub convergence_bound: Duration,
    pub check_views_every: u64,
}

impl RunSpec {
    pub fn new(nodes: u32, seed: u64, scenario: Scenario) -> Self {
        RunSpec {
            nodes,
            seed,
            profile: Profile::Lan,
            scenario,
            net: NetConfig::default(),
            window: Duration::from_secs(30),
            faults: 5,
            fault_spacing: Duration::from_secs(20),
            convergence_bound: Duration::from_secs(60),
            check_views_every: 0,
        }
    }
}

/// min / p50 / p99 / max of a sample, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of a sorted sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Quantiles {
    pub fn of(mut values: Vec<f64>) -> Quantiles {
        values.sort_by(f64::total_cmp);
        if values.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            n: values.len(),
            min: values[0],
            p50: percentile(&values, 50.0),
            p99: percentile(&values, 99.0),
            max: values[values.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// Messages and bytes per host per second, by envelope kind.
    pub by_kind: Vec<(String, f64, f64)>,
    /// Bytes sent per host per second (SWIM envelopes, before QUIC/UDP overhead).
    pub bytes_per_host_per_sec: Quantiles,
    pub messages_per_host_per_sec: Quantiles,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DetectionFigures {
    pub crashes: usize,
    /// Per crash: delay until the first host declared it down.
    pub first_detector: Quantiles,
    /// Per crash and observer: delay until that observer saw it down.
    pub every_observer: Quantiles,
    /// Per crash: delay until the last live observer saw it down.
    pub last_observer: Quantiles,
    /// Per crash: delay until the first suspicion.
    pub first_suspicion: Quantiles,
    /// Observers that never saw a crash before the run ended.
    pub missed: usize,
    /// Per crash: time from the first down declaration until 50 %, 99 % and
    /// 99.99 % of live hosts had it.
    pub spread_50: Quantiles,
    pub spread_99: Quantiles,
    pub spread_9999: Quantiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub spec: RunSpec,
    /// From the last host's start until every view is complete.
    pub join_convergence_secs: Option<f64>,
    pub steady: Traffic,
    pub detection: DetectionFigures,
    pub false_positives: Vec<FalsePositive>,
    pub suspicions_of_healthy: u64,
    /// After the last fault (and heal), until every view matched the truth.
    pub convergence_after_faults_secs: Option<f64>,
    pub violations: Vec<Violation>,
    pub messages_lost: u64,
    pub input_errors: u64,
    pub simulated_secs: f64,
    pub wall_secs: f64,
    pub sim_secs_per_wall_sec: f64,
    pub events: u64,
}

/// Time for a change to reach `fraction` of the observers, from the first one.
fn spread(sorted: &[std::time::Duration], live_observers: usize, fraction: f64) -> Option<f64> {
    let first = sorted.first()?;
    let needed = ((live_observers as f64) * fraction).ceil() as usize;
    let idx = needed.clamp(1, live_observers.max(1)) - 1;
    sorted.get(idx).map(|t| (*t - *first).as_secs_f64())
}

pub fn run(spec: &RunSpec) -> Report {
    let started = Instant::now();
    let mut config = WorldConfig::new(spec.nodes, spec.seed);
    config.profile = spec.profile;
    config.net = spec.net.clone();
    config.check_views_every = spec.check_views_every;
    let stagger_total = config.start_stagger * spec.nodes;
    let mut world = World::new(config);

    world.bootstrap();
    world.run_for(stagger_total);
    let join = world.run_until_converged(Duration::from_secs(300), Duration::from_millis(100));

    // Steady state: traffic per host over the window, no faults.
    let before = world.host_stats();
    let kinds_before = world.sent_by_kind.clone();
    world.run_for(spec.window);
    let after = world.host_stats();
    let secs = spec.window.as_secs_f64().max(1e-9);
    let mut bytes = Vec::new();
    let mut msgs = Vec::new();
    for (a, b) in after.iter().zip(&before) {
        bytes.push((a.tx_bytes - b.tx_bytes) as f64 / secs);
        msgs.push((a.tx_messages - b.tx_messages) as f64 / secs);
    }
    let n = f64::from(spec.nodes.max(1));
    let by_kind = world
        .sent_by_kind
        .iter()
        .map(|(k, (m, b))| {
            let (m0, b0) = kinds_before.get(k).copied().unwrap_or((0, 0));
            (
                k.to_string(),
                (m - m0) as f64 / secs / n,
                (b - b0) as f64 / secs / n,
            )
        })
        .collect();
    let steady = Traffic {
        by_kind,
        bytes_per_host_per_sec: Quantiles::of(bytes),
        messages_per_host_per_sec: Quantiles::of(msgs),
    };

    let quiet_from = inject(&mut world, spec);
    world.run_until(quiet_from);
    let convergence = world.require_convergence(spec.convergence_bound);
    if spec.check_views_every > 0 {
        world.check_views();
    }

    let detection = detection_figures(&world);
    let simulated = world.now();
    let wall = started.elapsed();
    Report {
        spec: spec.clone(),
        join_convergence_secs: join.map(|d| d.as_secs_f64()),
        steady,
        detection,
        false_positives: world.false_positives.clone(),
        suspicions_of_healthy: world.suspicions_of_healthy,
        convergence_after_faults_secs: convergence.map(|d| d.as_secs_f64()),
        violations: world.violations.clone(),
        messages_lost: world.messages_lost,
        input_errors: world.input_errors,
        simulated_secs: simulated.as_secs_f64(),
        wall_secs: wall.as_secs_f64(),
        sim_secs_per_wall_sec: simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        events: world.events_handled(),
    }
}

/// Schedules the scenario's faults; returns when the last of them is over.
fn inject(world: &mut World, spec: &RunSpec) -> Duration {
    let start = world.now();
    let spacing = spec.fault_spacing;
    let settle = spacing.max(Duration::from_secs(10));
    match spec.scenario {
        Scenario::Steady => start,
        Scenario::Crash => {
            let mut at = start;
            for _ in 0..spec.faults {
                // Victims are drawn when the crash happens, among hosts still up.
                world.run_until(at);
                if let Some(victim) = world.random_live_host() {
                    world.schedule_fault(at, Fault::Crash(victim));
                }
                at += spacing;
            }
            at + settle
        }
        Scenario::Partition => {
            let (az1, rest): (Vec<HostId>, Vec<HostId>) =
                (0..spec.nodes).partition(|h| world.zone_index(*h) == 0);
            world.schedule_fault(
                start,
                Fault::Partition {
                    groups: vec![az1, rest],
                    one_way: false,
                },
            );
            let heal = start + spacing.max(Duration::from_secs(15));
            world.schedule_fault(heal, Fault::Heal);
            heal
        }
        Scenario::Stall => {
            let mut at = start;
            for _ in 0..spec.faults {
                world.run_until(at);
                if let Some(victim) = world.random_live_host() {
                    let duration = Duration::from_millis(world.rng().random_range(500..5_000));
                    world.schedule_fault(
                        at,
                        Fault::Stall {
                            host: victim,
                            duration,
                        },
                    );
                }
                at += spacing;
            }
            at + settle
        }
        Scenario::Churn => {
            let mut at = start;
            for _ in 0..spec.faults {
                world.run_until(at);
                if let Some(victim) = world.random_live_host() {
                    world.schedule_fault(at, Fault::Crash(victim));
                    let back = at + Duration::from_millis(world.rng().random_range(1_000..15_000));
                    world.schedule_fault(back, Fault::Restart(victim));
                }
                at += spacing;
            }
            at + settle + Duration::from_secs(15)
        }
    }
}

fn detection_figures(world: &World) -> DetectionFigures {
    let detections = world.detections();
    let mut first = Vec::new();
    let mut every = Vec::new();
    let mut last = Vec::new();
    let mut suspicion = Vec::new();
    let mut s50 = Vec::new();
    let mut s99 = Vec::new();
    let mut s9999 = Vec::new();
    let mut missed = 0;
    for d in &detections {
        missed += d.missed;
        let observers = d.observed_after.len() + d.missed;
        if let Some(f) = d.observed_after.first() {
            first.push(f.as_secs_f64());
        }
        if d.missed == 0
            && let Some(l) = d.observed_after.last()
        {
            last.push(l.as_secs_f64());
        }
        every.extend(d.observed_after.iter().map(|t| t.as_secs_f64()));
        if let Some(s) = d.first_suspected_after {
            suspicion.push(s.as_secs_f64());
        }
        for (fraction, out) in [(0.5, &mut s50), (0.99, &mut s99), (0.9999, &mut s9999)] {
            if let Some(t) = spread(&d.observed_after, observers, fraction) {
                out.push(t);
            }
        }
    }
    DetectionFigures {
        crashes: detections.len(),
        first_detector: Quantiles::of(first),
        every_observer: Quantiles::of(every),
        last_observer: Quantiles::of(last),
        first_suspicion: Quantiles::of(suspicion),
        missed,
        spread_50: Quantiles::of(s50),
        spread_99: Quantiles::of(s99),
        spread_9999: Quantiles::of(s9999),
    }
}

/// What one swarm seed drew, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmOutcome {
    pub seed: u64,
    pub nodes: u32,
    pub faults: Vec<(f64, String)>,
    pub net: NetConfig,
    pub false_positives: usize,
    pub violations: Vec<Violation>,
    pub panic: Option<String>,
    pub convergence_after_faults_secs: Option<f64>,
}

impl SwarmOutcome {
    pub fn failed(&self) -> bool {
        self.panic.is_some() || !self.violations.is_empty()
    }
}

/// One swarm run: the seed decides the cluster size (up to `max_nodes`), the network,
/// and a random mix of crashes, restarts, stalls, slow hosts and partitions (by zone,
/// by random halves, one host cut off, one way or both), all healed at the end. The
/// run fails on a broken invariant or a panic; false positives are counted.
pub fn swarm_one(seed: u64, max_nodes: u32) -> SwarmOutcome {
    let mut draw = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_4152_4d00_0000);
    let nodes = draw.random_range(3..=max_nodes.max(3));
    let net = NetConfig {
        latency_min: Duration::from_micros(draw.random_range(100..1_000)),
        latency_max: Duration::from_micros(draw.random_range(1_000..20_000)),
        loss: [0.0, 0.0, 0.005, 0.01, 0.03, 0.05][draw.random_range(0..6)],
        duplicate: [0.0, 0.01, 0.05][draw.random_range(0..3)],
        reorder: [0.0, 0.02, 0.1][draw.random_range(0..3)],
        reorder_delay: Duration::from_millis(draw.random_range(1..100)),
    };
    let mut config = WorldConfig::new(nodes, seed);
    config.net = net.clone();
    config.check_views_every = 97;
    let stagger_total = config.start_stagger * nodes;
    let outcome = std::panic::catch_unwind(move || {
        let mut world = World::new(config);
        world.bootstrap();
        world.run_for(stagger_total + Duration::from_secs(5));
        let start = world.now();
        let n_faults = draw.random_range(0..=8);
        let mut log = Vec::new();
        let mut last = start;
        for _ in 0..n_faults {
            let at = start + Duration::from_millis(draw.random_range(0..60_000));
            let host: HostId = draw.random_range(0..nodes);
            let fault = match draw.random_range(0..8) {
                0 => Fault::Crash(host),
                1 => Fault::Restart(host),
                2 => Fault::Stall {
                    host,
                    duration: Duration::from_millis(draw.random_range(100..8_000)),
                },
                3 => Fault::Slow {
                    host,
                    delay: Duration::from_millis(draw.random_range(5..300)),
                    duration: Duration::from_millis(draw.random_range(1_000..20_000)),
                },
                4 => {
                    let zones = world.config.zones;
                    let cut = draw.random_range(0..zones);
                    let (a, b): (Vec<HostId>, Vec<HostId>) =
                        (0..nodes).partition(|h| world.zone_index(*h) == cut);
                    Fault::Partition {
                        groups: vec![a, b],
                        one_way: draw.random_bool(0.3),
                    }
                }
                5 => {
                    let (a, b): (Vec<HostId>, Vec<HostId>) =
                        (0..nodes).partition(|_| draw.random_bool(0.5));
                    Fault::Partition {
                        groups: vec![a, b],
                        one_way: draw.random_bool(0.3),
                    }
                }
                6 => Fault::Partition {
                    groups: vec![vec![host], (0..nodes).filter(|h| *h != host).collect()],
                    one_way: draw.random_bool(0.3),
                },
                _ => Fault::Heal,
            };
            log.push(((at - start).as_secs_f64(), format!("{fault:?}")));
            last = last.max(at);
            world.schedule_fault(at, fault);
        }
        // Faults stop: heal, restart whatever is down, and let it settle.
        let quiet = last + Duration::from_secs(10);
        world.schedule_fault(quiet, Fault::Heal);
        for h in 0..nodes {
            world.schedule_fault(quiet, Fault::Restart(h));
        }
        world.schedule_fault(quiet, Fault::SetLoss(0.0));
        world.run_until(quiet);
        let converged = world.require_convergence(Duration::from_secs(90));
        world.check_views();
        (
            log,
            world.false_positives.len(),
            world.violations.clone(),
            converged,
        )
    });
    match outcome {
        Ok((faults, false_positives, violations, converged)) => SwarmOutcome {
            seed,
            nodes,
            faults,
            net,
            false_positives,
            violations,
            panic: None,
            convergence_after_faults_secs: converged.map(|d| d.as_secs_f64()),
        },
        Err(payload) => SwarmOutcome {
            seed,
            nodes,
            faults: Vec::new(),
            net,
            false_positives: 0,
            violations: Vec::new(),
            panic: Some(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()),
            ),
            convergence_after_faults_secs: None,
        },
    }
}

/// The command that replays one swarm seed.
pub fn replay_command(seed: u64, max_nodes: u32) -> String {
    format!(
        "cargo run -p vigil-sim --release -- swarm --first-seed {seed} --seeds 1 --max-nodes {max_nodes}"
    )
}
