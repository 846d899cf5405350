//! Runs: a scenario on a world, and the figures it produced. Also the swarm: many
//! seeds, each drawing its own cluster size, network and faults.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use vigil_protocol::{Detector, Profile};

use crate::world::{
    FalsePositive, Fault, HostId, NetConfig, ReplReport, ReplSpec, Violation, World, WorldConfig,
};

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
    /// Make hosts slow at handling messages (Lifeguard's slow members) and count who
    /// gets declared down.
    Slow,
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
            "slow" => Ok(Scenario::Slow),
            "churn" => Ok(Scenario::Churn),
            other => Err(format!(
                "unknown scenario {other:?}; use steady, crash, partition, stall, slow or churn"
            )),
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    pub nodes: u32,
    /// Availability zones; hosts are assigned round robin.
    pub zones: u32,
    pub seed: u64,
    pub detector: Detector,
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
    /// Start from a converged cluster instead of joining through the seeds (no join
    /// figure then; much faster at thousands of hosts).
    pub warm_start: bool,
    /// Stall scenario: the fraction of hosts that stall, how long each stall lasts,
    /// and the mean time between two stalls of one host.
    pub stall_fraction: f64,
    pub stall_duration: Duration,
    pub stall_every: Duration,
    /// Slow scenario: how long each message waits at a slow host.
    pub slow_delay: Duration,
    /// Snapshot replication with a workload, from the steady window until the faults
    /// stop (None: off).
    pub replication: Option<ReplSpec>,
}

impl RunSpec {
    pub fn new(nodes: u32, seed: u64, scenario: Scenario) -> Self {
        RunSpec {
            nodes,
            zones: 3,
            seed,
            detector: Detector::Vigil(Profile::Lan),
            scenario,
            net: NetConfig::default(),
            window: Duration::from_secs(30),
            faults: 5,
            fault_spacing: Duration::from_secs(20),
            convergence_bound: Duration::from_secs(60),
            check_views_every: 0,
            warm_start: false,
            stall_fraction: 0.1,
            stall_duration: Duration::from_secs(2),
            stall_every: Duration::from_secs(10),
            slow_delay: Duration::from_millis(400),
            replication: None,
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
    /// The same, every sample (seconds), for pooling runs; not serialized.
    #[serde(skip)]
    pub every_observer_samples: Vec<f64>,
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
    /// After that, until no host had gossip left to send (when the window starts).
    pub settle_secs: Option<f64>,
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
    /// Snapshot replication figures (null when replication is off).
    pub replication: Option<ReplReport>,
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
    config.detector = spec.detector;
    config.net = spec.net.clone();
    config.check_views_every = spec.check_views_every;
    config.zones = spec.zones.max(1);
    config.replication = spec.replication.clone();
    let stagger_total = config.start_stagger * spec.nodes;
    let mut world = World::new(config);

    let join = if spec.warm_start {
        world.bootstrap_warm();
        None
    } else {
        world.bootstrap();
        world.run_for(stagger_total);
        world.run_until_converged(Duration::from_secs(300), Duration::from_millis(100))
    };

    // Steady state: traffic per host over the window, no faults, once the gossip
    // about the joins has died down.
    let settle = world.run_until_quiet(Duration::from_secs(300), Duration::from_millis(500));
    if spec
        .replication
        .as_ref()
        .is_some_and(|r| r.preregistered && spec.warm_start)
    {
        // Pre-registered agents: their owners take them back once settled.
        let bound = world.now() + Duration::from_secs(60);
        while !world.every_agent_owned() && world.now() < bound {
            world.run_for(Duration::from_millis(250));
        }
    }
    let before = world.host_stats();
    let kinds_before = world.sent_by_kind.clone();
    // The replication workload runs from here until the faults stop (it does not
    // touch the membership run: it draws from its own generator).
    world.start_workload();
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

    let (faults_end, quiet_from) = inject(&mut world, spec);
    world.schedule_replication_faults_over(faults_end);
    world.run_until(quiet_from);
    let convergence = world.require_convergence(spec.convergence_bound);
    if spec.check_views_every > 0 {
        world.check_views();
    }
    // The membership counters are taken before the replication tail (which runs on,
    // after the views converged, until the copies are restored or the bound passes),
    // so they are the same with and without replication.
    let (messages_lost, input_errors) = (world.messages_lost, world.input_errors);
    world.finish_replication();

    let detection = detection_figures(&world);
    let simulated = world.now();
    let wall = started.elapsed();
    Report {
        spec: spec.clone(),
        join_convergence_secs: join.map(|d| d.as_secs_f64()),
        settle_secs: settle.map(|d| d.as_secs_f64()),
        steady,
        detection,
        false_positives: world.false_positives.clone(),
        suspicions_of_healthy: world.suspicions_of_healthy,
        convergence_after_faults_secs: convergence.map(|d| d.as_secs_f64()),
        violations: world.violations.clone(),
        messages_lost,
        input_errors,
        simulated_secs: simulated.as_secs_f64(),
        wall_secs: wall.as_secs_f64(),
        sim_secs_per_wall_sec: simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        events: world.events_handled(),
        replication: world.replication_report(),
    }
}

/// Schedules the scenario's faults; returns when the last of them is over (the end
/// of a stall or slow period counts) and when the scenario is quiet again.
///
/// Victims and times come from their own generator, seeded from the run's seed, so two
/// runs that differ only in the detector get exactly the same faults (the world's
/// generator diverges as soon as the detectors send different messages).
fn inject(world: &mut World, spec: &RunSpec) -> (Duration, Duration) {
    let mut draw = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x7363_6865_6475_6c65);
    let start = world.now();
    let spacing = spec.fault_spacing;
    let settle = spacing.max(Duration::from_secs(10));
    let seeds = world.config.seeds.min(spec.nodes);
    // Hosts that may be hit: never the seeds, each at most once.
    let mut pool: Vec<HostId> = (seeds..spec.nodes).collect();
    fn take(pool: &mut Vec<HostId>, draw: &mut ChaCha8Rng) -> Option<HostId> {
        if pool.is_empty() {
            return None;
        }
        Some(pool.swap_remove(draw.random_range(0..pool.len())))
    }
    let mut last = start;
    match spec.scenario {
        Scenario::Steady => (start, start),
        Scenario::Crash => {
            let mut at = start;
            for _ in 0..spec.faults {
                if let Some(victim) = take(&mut pool, &mut draw) {
                    world.schedule_fault(at, Fault::Crash(victim));
                    last = at;
                }
                at += spacing;
            }
            (last, at + settle)
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
            (heal, heal)
        }
        Scenario::Stall | Scenario::Slow => {
            // A fraction of the hosts stall again and again for the whole phase, while
            // other hosts crash one after another (detection under the same stress).
            let phase = spacing * spec.faults.max(1);
            let stallers = ((f64::from(spec.nodes) * spec.stall_fraction).round() as usize)
                .min(pool.len().saturating_sub(spec.faults as usize));
            let stalling: Vec<HostId> = (0..stallers)
                .filter_map(|_| take(&mut pool, &mut draw))
                .collect();
            for host in stalling {
                let mut at = start;
                loop {
                    // Exponential gaps: stalls at random, independent of each other.
                    let u: f64 = draw.random::<f64>().max(1e-12);
                    at += spec.stall_every.mul_f64(-u.ln());
                    if at >= start + phase {
                        break;
                    }
                    let fault = if spec.scenario == Scenario::Stall {
                        Fault::Stall {
                            host,
                            duration: spec.stall_duration,
                        }
                    } else {
                        Fault::Slow {
                            host,
                            delay: spec.slow_delay,
                            duration: spec.stall_duration,
                        }
                    };
                    world.schedule_fault(at, fault);
                    at += spec.stall_duration;
                    last = last.max(at);
                }
            }
            let mut at = start + spacing / 2;
            for _ in 0..spec.faults {
                if let Some(victim) = take(&mut pool, &mut draw) {
                    world.schedule_fault(at, Fault::Crash(victim));
                    last = last.max(at);
                }
                at += spacing;
            }
            (last, start + phase + settle)
        }
        Scenario::Churn => {
            let mut at = start;
            for _ in 0..spec.faults {
                if let Some(victim) = take(&mut pool, &mut draw) {
                    world.schedule_fault(at, Fault::Crash(victim));
                    let back = at + Duration::from_millis(draw.random_range(1_000..15_000));
                    world.schedule_fault(back, Fault::Restart(victim));
                    last = last.max(back);
                    // A restarted host may be hit again later.
                    pool.push(victim);
                }
                at += spacing;
            }
            (last, at + settle + Duration::from_secs(15))
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
        every_observer: Quantiles::of(every.clone()),
        every_observer_samples: every,
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
    /// Replication figures, when the seed drew replication.
    pub replication: Option<ReplReport>,
}

impl SwarmOutcome {
    pub fn failed(&self) -> bool {
        self.panic.is_some() || !self.violations.is_empty()
    }
}

/// One swarm run: the seed decides the cluster size (up to `max_nodes`), the network,
/// and a random mix of crashes, restarts, stalls, slow hosts and partitions (by zone,
/// by random halves, one host cut off, one way or both), all healed at the end. The
/// run fails on a broken invariant or a panic; false positives are counted. Half the
/// seeds also run snapshot replication (see [`swarm_replication`]).
pub fn swarm_one(seed: u64, max_nodes: u32) -> SwarmOutcome {
    swarm_one_with(seed, max_nodes, SwarmReplication::Draw)
}

/// Whether swarm seeds run snapshot replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwarmReplication {
    /// As the seed draws (half the seeds).
    Draw,
    /// Always, with the settings the seed draws.
    On,
    Off,
}

impl std::str::FromStr for SwarmReplication {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "draw" => Ok(SwarmReplication::Draw),
            "on" => Ok(SwarmReplication::On),
            "off" => Ok(SwarmReplication::Off),
            other => Err(format!(
                "unknown replication mode {other:?}; use draw, on or off"
            )),
        }
    }
}

/// [`swarm_one`] with replication as `mode` says (the membership run of a seed is
/// the same in every mode).
pub fn swarm_one_with(seed: u64, max_nodes: u32, mode: SwarmReplication) -> SwarmOutcome {
    let replication = match mode {
        SwarmReplication::Draw => swarm_replication(seed, false),
        SwarmReplication::On => swarm_replication(seed, true),
        SwarmReplication::Off => None,
    };
    swarm_with(seed, max_nodes, replication)
}

/// Whether a swarm seed runs replication, and with what: a few agents, 2 or 3
/// copies, puts every 250 ms to 1 s, disk faults (none, 1 % or 5 % of operations)
/// and takeovers of agents whose owner stays down. Drawn from a generator of its
/// own, so every other draw of a seed stays as it was.
pub fn swarm_replication(seed: u64, force: bool) -> Option<ReplSpec> {
    let mut draw = ChaCha8Rng::seed_from_u64(seed ^ 0x5245_504c_0000_0000);
    let on = draw.random_bool(0.5);
    let mut spec = ReplSpec::new(draw.random_range(1..=12));
    spec.copies = [2, 3, 3][draw.random_range(0..3)];
    spec.put_interval = Duration::from_millis([250, 500, 1_000][draw.random_range(0..3)]);
    spec.disk_faults = [0.0, 0.0, 0.01, 0.05][draw.random_range(0..4)];
    spec.get_fraction = 0.3;
    // Drawn (so the draws after it stay as they were) but not used: recovery adopts
    // an agent whose owner stays down, and the workload's own takeover (a register
    // on another host) would race with it.
    let _takeover_after: Option<u64> = [None, None, Some(5), Some(15)][draw.random_range(0..4)];
    spec.takeover_after = None;
    (on || force).then_some(spec)
}

fn swarm_with(seed: u64, max_nodes: u32, replication: Option<ReplSpec>) -> SwarmOutcome {
    let mut draw = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_4152_4d00_0000);
    let nodes = draw.random_range(3..=max_nodes.max(3));
    let net = NetConfig {
        latency_min: Duration::from_micros(draw.random_range(100..1_000)),
        latency_max: Duration::from_micros(draw.random_range(1_000..20_000)),
        loss: [0.0, 0.0, 0.005, 0.01, 0.03, 0.05][draw.random_range(0..6)],
        duplicate: [0.0, 0.01, 0.05][draw.random_range(0..3)],
        reorder: [0.0, 0.02, 0.1][draw.random_range(0..3)],
        reorder_delay: Duration::from_millis(draw.random_range(1..100)),
        // From its own generator, so adding it left every other draw of a seed as it was.
        cross_zone: Duration::from_millis(
            [0, 0, 1, 5, 30][ChaCha8Rng::seed_from_u64(seed ^ 0x5a4f_4e45).random_range(0..5)],
        ),
    };
    let mut config = WorldConfig::new(nodes, seed);
    config.net = net.clone();
    config.check_views_every = 97;
    config.replication = replication;
    let stagger_total = config.start_stagger * nodes;
    let outcome = std::panic::catch_unwind(move || {
        let mut world = World::new(config);
        world.bootstrap();
        world.run_for(stagger_total + Duration::from_secs(5));
        world.start_workload();
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
        world.schedule_replication_faults_over(quiet);
        world.run_until(quiet);
        let converged = world.require_convergence(Duration::from_secs(90));
        world.check_views();
        world.finish_replication();
        (
            log,
            world.false_positives.len(),
            world.violations.clone(),
            converged,
            world.replication_report(),
        )
    });
    match outcome {
        Ok((faults, false_positives, violations, converged, replication)) => SwarmOutcome {
            seed,
            nodes,
            faults,
            net,
            false_positives,
            violations,
            panic: None,
            convergence_after_faults_secs: converged.map(|d| d.as_secs_f64()),
            replication,
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
            replication: None,
        },
    }
}

/// The command that replays one swarm seed.
pub fn replay_command(seed: u64, max_nodes: u32) -> String {
    replay_command_with(seed, max_nodes, SwarmReplication::Draw)
}

/// The command that replays one swarm seed run with replication `mode`.
pub fn replay_command_with(seed: u64, max_nodes: u32, mode: SwarmReplication) -> String {
    let mode = match mode {
        SwarmReplication::Draw => "",
        SwarmReplication::On => " --replication on",
        SwarmReplication::Off => " --replication off",
    };
    format!(
        "cargo run -p vigil-sim --release -- swarm --first-seed {seed} --seeds 1 --max-nodes {max_nodes}{mode}"
    )
}

/// What the SWIM analysis predicts for a detector at `nodes` members with message loss
/// `loss` (Das, Gupta and Motivala, "SWIM", 2002; push-gossip spread after Pittel).
#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    /// From a crash to the first suspicion: the failed member is probed at about one
    /// probe per period, so the first probe comes after an exponential wait and is
    /// judged at the end of its period: `P e / (e - 1)` on average.
    pub first_suspicion_mean_secs: f64,
    /// The same wait at its 99th percentile: `P (ln 100 + 1)`.
    pub first_suspicion_p99_secs: f64,
    /// Suspicion length: fixed for plain foca; for vigil between its bounds, about
    /// the time for `k` independent confirmations (`k` probe periods), floored at
    /// the minimum.
    pub suspicion_secs: f64,
    pub suspicion_min_secs: f64,
    pub suspicion_max_secs: f64,
    /// Rounds for a push gossip with fanout f to reach everyone:
    /// `log_{f+1} n + ln(n) / f`, times the gossip interval.
    pub spread_secs: f64,
    /// Crash to every member seeing it down, typical case: first suspicion, suspicion,
    /// spread.
    pub detection_secs: f64,
    /// Messages each member sends per second when nothing changes: a ping and an ack
    /// per probe period.
    pub messages_per_host_per_sec: f64,
    /// Probability that one probe of a live member fails with loss `p` and k
    /// indirect probes: `(1 - (1 - p)^2) (1 - (1 - p)^4)^k`.
    pub false_suspicion_per_probe: f64,
    /// False suspicions per second, cluster-wide.
    pub false_suspicions_per_sec: f64,
}

pub fn expectation(detector: Detector, nodes: u32, loss: f64) -> Expectation {
    let config = detector.swim_config(nodes);
    let p = config.probe_period.as_secs_f64();
    let e = std::f64::consts::E;
    let first_mean = p * e / (e - 1.0);
    let first_p99 = p * (100f64.ln() + 1.0);
    let (min, max) = match (detector.extended(), detector.profile()) {
        (true, Some(profile)) => {
            let (lo, hi) = vigil_protocol::profile::suspicion_bounds(profile, nodes);
            (lo.as_secs_f64(), hi.as_secs_f64())
        }
        _ => {
            let s = config.suspect_to_down_after.as_secs_f64();
            (s, s)
        }
    };
    let suspicion = match detector.profile() {
        Some(profile) => vigil_protocol::lifeguard::typical_suspicion(profile, nodes)
            .as_secs_f64()
            .clamp(min, max),
        None => max,
    };
    let (gossip_every, fanout) = config.periodic_gossip.as_ref().map_or((p, 1.0), |g| {
        (g.frequency.as_secs_f64(), g.num_members.get() as f64)
    });
    let n = f64::from(nodes.max(2));
    let spread = gossip_every * (n.ln() / (fanout + 1.0).ln() + n.ln() / fanout);
    let k = config.num_indirect_probes.get() as i32;
    let q = (1.0 - (1.0 - loss).powi(2)) * (1.0 - (1.0 - loss).powi(4)).powi(k);
    Expectation {
        first_suspicion_mean_secs: first_mean,
        first_suspicion_p99_secs: first_p99,
        suspicion_secs: suspicion,
        suspicion_min_secs: min,
        suspicion_max_secs: max,
        spread_secs: spread,
        detection_secs: first_mean + suspicion + spread,
        messages_per_host_per_sec: 2.0 / p,
        false_suspicion_per_probe: q,
        false_suspicions_per_sec: n / p * q,
    }
}
