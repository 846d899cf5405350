//! `foca-lan`: plain foca over plain UDP with its stock LAN configuration
//! (`foca::Config::new_lan(cluster_size)`), a peer for the cluster bench.
//!
//! This is foca as its documentation suggests using it, not vigil's core: no vigil
//! profile, no Lifeguard-style extensions, no custom broadcasts. The cluster size
//! passed to `new_lan` is the size the bench starts (`--cluster-size`), as an
//! operator who knows the cluster's size would configure it; it is not recomputed
//! as members come and go.
//!
//! Each message foca hands the runtime is one UDP datagram. Identities are
//! (name, address, generation), encoded with foca's postcard codec; `renew` bumps
//! the generation, so a node declared down rejoins by itself.
//!
//! Stock foca has no "suspected" notification; this node derives
//! `member_suspected` / `member_refuted` by comparing foca's membership state
//! ([`foca::Foca::iter_membership_state`]) before and after every call into foca.
//!
//! Output: the NDJSON lines of [`vigil_benches::peer`]. Diagnostics go to stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, State};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};
use vigil_benches::peer::{self, Counters, emit_event, unix_ms};

/// Larger than foca's `max_packet_size` in the LAN config (1400), so a datagram
/// truncated to this size is recognised as oversized and refused by foca.
const RECV_BUF_LEN: usize = 2048;
const JOIN_RETRY: Duration = Duration::from_secs(1);
const STATS_EVERY: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "foca-lan",
    about = "plain foca over plain UDP with Config::new_lan (benchmark peer; no encryption, no authentication)"
)]
struct Args {
    #[command(flatten)]
    node: peer::NodeArgs,
    /// The cluster size given to `Config::new_lan`.
    #[arg(long)]
    cluster_size: NonZeroU32,
    /// Seed of foca's random choices; drawn from the OS if absent.
    #[arg(long)]
    rng_seed: Option<u64>,
}

/// A member: its name, where it listens, and which incarnation of the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Id {
    name: String,
    addr: SocketAddr,
    generation: u64,
}

impl Identity for Id {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Id {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // The newer process at an address is the one that is running.
        self.generation > adversary.generation
    }
}

type Swim = Foca<Id, PostcardCodec, ChaCha8Rng, foca::NoCustomBroadcast>;

/// Timers foca asked for, ordered by deadline then by request order, so that timers
/// due at the same instant are delivered in the order foca set them.
#[derive(Default)]
struct Timers {
    queue: BTreeMap<(Instant, u64), foca::Timer<Id>>,
    next_seq: u64,
}

impl Timers {
    fn push(&mut self, at: Instant, timer: foca::Timer<Id>) {
        self.queue.insert((at, self.next_seq), timer);
        self.next_seq += 1;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<foca::Timer<Id>> {
        let key = *self.queue.keys().next()?;
        if key.0 > now {
            return None;
        }
        self.queue.remove(&key)
    }
}

struct Node {
    foca: Swim,
    runtime: AccumulatingRuntime<Id>,
    timers: Timers,
    counters: Counters,
    /// Members (by name) foca currently holds as suspect, to turn its state into
    /// suspected/refuted events.
    suspects: BTreeSet<String>,
    /// foca errors (undecodable or refused datagrams, timer errors), by kind.
    errors: BTreeMap<String, u64>,
}

impl Node {
    fn count_error(&mut self, e: &foca::Error) {
        let kind = format!("{e:?}");
        // Keep the kind short: the variant name without its payload.
        let kind = kind
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("error")
            .to_string();
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Executes what foca queued: datagrams, timers, notifications; then reports
    /// suspicion changes.
    async fn drain(&mut self, socket: &UdpSocket) -> std::io::Result<()> {
        while let Some((to, data)) = self.runtime.to_send() {
            match socket.send_to(&data, to.addr).await {
                Ok(n) => self.counters.sent(n, 1),
                Err(e) => eprintln!("foca-lan: send to {}: {e}", to.addr),
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.push(now + after, timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => emit_event("member_joined", &id.name)?,
                OwnedNotification::MemberDown(id) => emit_event("member_down", &id.name)?,
                // A member came back under a new generation.
                OwnedNotification::Rename(_, id) => emit_event("member_restarted", &id.name)?,
                OwnedNotification::Active
                | OwnedNotification::Idle
                | OwnedNotification::Defunct
                | OwnedNotification::Rejoin(_) => {}
            }
        }
        self.report_suspicion()
    }

    fn report_suspicion(&mut self) -> std::io::Result<()> {
        let mut now_suspect = BTreeSet::new();
        for member in self.foca.iter_membership_state() {
            if member.state() == State::Suspect {
                now_suspect.insert(member.id().name.clone());
            }
        }
        for name in now_suspect.difference(&self.suspects) {
            emit_event("member_suspected", name)?;
        }
        for name in self.suspects.difference(&now_suspect) {
            // Only a suspect that is alive again was refuted; one that went down
            // was reported by MemberDown.
            let alive = self
                .foca
                .iter_members()
                .any(|m| m.id().name == *name && m.state() == State::Alive);
            if alive {
                emit_event("member_refuted", name)?;
            }
        }
        self.suspects = now_suspect;
        Ok(())
    }
}

fn os_random_u64() -> Result<u64, Box<dyn Error>> {
    use rand::TryRng;
    Ok(rand::rngs::SysRng.try_next_u64()?)
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let socket = UdpSocket::bind(args.node.bind).await?;
    let addr = socket.local_addr()?;
    if addr.ip().is_unspecified() {
        return Err(format!("bound to the wildcard address {addr}; bind a reachable one").into());
    }
    let rng_seed = match args.rng_seed {
        Some(seed) => seed,
        None => os_random_u64()?,
    };
    let identity = Id {
        name: args.node.name.clone(),
        addr,
        generation: unix_ms(),
    };
    let config = Config::new_lan(args.cluster_size);
    let mut node = Node {
        foca: Foca::new(
            identity,
            config,
            ChaCha8Rng::seed_from_u64(rng_seed),
            PostcardCodec,
        ),
        runtime: AccumulatingRuntime::new(),
        timers: Timers::default(),
        counters: Counters::default(),
        suspects: BTreeSet::new(),
        errors: BTreeMap::new(),
    };
    let seeds: Vec<peer::Seed> = args.node.other_seeds().cloned().collect();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    peer::emit_ready(&args.node.name, addr)?;

    let mut buf = vec![0u8; RECV_BUF_LEN];
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed = None;
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut join_tick = tokio::time::interval(JOIN_RETRY);
    join_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        let deadline = node.timers.next_deadline();
        if let Some(due) = deadline
            && armed != Some(due)
        {
            timer.as_mut().reset(due);
            armed = Some(due);
        }
        // Until somebody answers, keep announcing to the seeds.
        let joining = !seeds.is_empty() && node.foca.num_members() == 0;
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, _from)) => {
                    node.counters.received(n, 1);
                    let Node { foca, runtime, .. } = &mut node;
                    if let Err(e) = foca.handle_data(&buf[..n], &mut *runtime) {
                        node.count_error(&e);
                    }
                }
                Err(e) => eprintln!("foca-lan: recv: {e}"),
            },
            () = &mut timer, if deadline.is_some() => {
                let now = Instant::now();
                while let Some(t) = node.timers.pop_due(now) {
                    let Node { foca, runtime, .. } = &mut node;
                    if let Err(e) = foca.handle_timer(t, &mut *runtime) {
                        node.count_error(&e);
                    }
                }
                armed = None;
            },
            _ = stats_tick.tick() => node.counters.emit_stats(node.foca.num_members() + 1)?,
            _ = join_tick.tick(), if joining => {
                for seed in &seeds {
                    // The seed's generation is unknown until it answers; foca
                    // addresses the datagram by `addr` and ignores the rest.
                    let dst = Id { name: seed.name.clone(), addr: seed.addr, generation: 0 };
                    let Node { foca, runtime, .. } = &mut node;
                    if let Err(e) = foca.announce(dst, &mut *runtime) {
                        eprintln!("foca-lan: announce to {}: {e}", seed.addr);
                    }
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        node.drain(&socket).await?;
    }

    let Node { foca, runtime, .. } = &mut node;
    if let Err(e) = foca.leave_cluster(&mut *runtime) {
        eprintln!("foca-lan: leave: {e}");
    }
    node.drain(&socket).await?;
    if !node.errors.is_empty() {
        eprintln!("foca-lan: foca errors: {:?}", node.errors);
    }
    node.counters.emit_stats(node.foca.num_members() + 1)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    peer::block_on_one_thread(run(Args::parse()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_renewed_identity_is_a_newer_generation_at_the_same_address() {
        let id = Id {
            name: "n1".into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            generation: 5,
        };
        let renewed = id.renew().unwrap();
        assert_eq!(renewed.addr(), id.addr());
        assert!(renewed.win_addr_conflict(&id));
        assert!(!id.win_addr_conflict(&renewed));
    }

    #[test]
    fn timers_due_together_keep_their_order() {
        let mut timers = Timers::default();
        let at = Instant::now();
        let id = Id {
            name: "n1".into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            generation: 1,
        };
        timers.push(at, foca::Timer::ProbeRandomMember(1));
        timers.push(at, foca::Timer::RemoveDown(id));
        assert!(matches!(
            timers.pop_due(at),
            Some(foca::Timer::ProbeRandomMember(1))
        ));
        assert!(matches!(
            timers.pop_due(at),
            Some(foca::Timer::RemoveDown(_))
        ));
        assert!(timers.pop_due(at).is_none());
    }
}
