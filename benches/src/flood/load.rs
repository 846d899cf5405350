//! The two floods, each on a thread of its own in the bench process, from one
//! source address:
//!
//! - junk datagrams: half random bytes of random length, half shaped like a QUIC v1
//!   Initial (long header, version 1, an 8..20-byte destination connection ID, padded
//!   to 1200 bytes, random "encrypted" contents), sent as fast as the thread can
//!   send them (or at a given rate). quinn derives the Initial keys for each shaped
//!   one and removes its header protection; about a quarter of them (those whose
//!   reserved bits come out as zero) reach the node's accept loop as connection
//!   attempts and fail to decrypt there;
//! - connection attempts: a QUIC client with a certificate from a foreign CA
//!   ([`vigil::harness::intruder`]) keeps `concurrency` handshakes running, each
//!   given up after `attempt_timeout` when the node does not answer.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::TryRng;
use rand::rngs::SysRng;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use vigil::harness::intruder::{Attempt, Intruder};

/// A flood running on its own thread until [`Flood::stop`].
pub struct Flood<T> {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<T, String>>,
}

impl<T> Flood<T> {
    /// Stops the flood and returns what it sent.
    pub fn stop(self) -> Result<T, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "the flood thread panicked".to_string())?
    }
}

/// What the junk flood sent.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct JunkStats {
    pub packets: u64,
    pub bytes: u64,
    /// Of `packets`, shaped like a QUIC Initial.
    pub initial_shaped: u64,
    pub send_errors: u64,
    pub secs: f64,
}

impl JunkStats {
    pub fn packets_per_s(&self) -> f64 {
        per_s(self.packets, self.secs)
    }
}

/// How the intruder's connection attempts ended.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HandshakeStats {
    /// Attempts that ended during the phase (those still running at its end are
    /// not counted).
    pub attempts: u64,
    /// The node answered CONNECTION_REFUSED.
    pub refused: u64,
    /// The node ran the handshake and refused the certificate.
    pub rejected: u64,
    /// No answer before the attempt was given up.
    pub unanswered: u64,
    /// Handshakes that completed: a foreign certificate let in (must stay 0).
    pub accepted: u64,
    pub other: u64,
    pub secs: f64,
}

impl HandshakeStats {
    pub fn attempts_per_s(&self) -> f64 {
        per_s(self.attempts, self.secs)
    }

    fn count(&mut self, a: &Attempt) {
        self.attempts += 1;
        match a {
            Attempt::Accepted => self.accepted += 1,
            Attempt::Refused => self.refused += 1,
            Attempt::Rejected => self.rejected += 1,
            Attempt::Unanswered => self.unanswered += 1,
            Attempt::Failed(_) => self.other += 1,
        }
    }
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Junk packets prepared before the flood (sent round robin, so the sender spends
/// its time sending, not generating).
const JUNK_POOL: usize = 1024;
/// The smallest datagram quinn accepts as an Initial.
const INITIAL_LEN: usize = 1200;
/// Packets sent between two looks at the stop flag and the pacing.
const BATCH: u64 = 64;

/// Starts the junk flood from `source` to `target`; `pps`: a cap on packets per
/// second (`None`: as fast as the thread can send).
pub fn junk(
    source: IpAddr,
    target: SocketAddr,
    pps: Option<u64>,
) -> Result<Flood<JunkStats>, String> {
    let socket = UdpSocket::bind((source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    socket
        .connect(target)
        .map_err(|e| format!("connect to {target}: {e}"))?;
    let pool = junk_pool().map_err(|e| format!("random junk: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("junk-flood".into())
        .spawn(move || Ok(send_junk(&socket, &pool, &flag, pps)))
        .map_err(|e| format!("spawn the junk flood: {e}"))?;
    Ok(Flood { stop, thread })
}

fn send_junk(socket: &UdpSocket, pool: &[Junk], stop: &AtomicBool, pps: Option<u64>) -> JunkStats {
    let start = Instant::now();
    let mut s = JunkStats::default();
    let mut next = pool.iter().cycle();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..BATCH {
            let Some(junk) = next.next() else { break };
            match socket.send(&junk.bytes) {
                Ok(n) => {
                    s.packets += 1;
                    s.bytes += n as u64;
                    s.initial_shaped += u64::from(junk.initial);
                }
                Err(_) => s.send_errors += 1,
            }
        }
        if let Some(pps) = pps.filter(|p| *p > 0) {
            let due = Duration::from_secs_f64(s.packets as f64 / pps as f64);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    s.secs = start.elapsed().as_secs_f64();
    s
}

struct Junk {
    bytes: Vec<u8>,
    initial: bool,
}

fn junk_pool() -> Result<Vec<Junk>, rand::rngs::SysError> {
    let mut rng = SysRng;
    let mut pool = Vec::with_capacity(JUNK_POOL);
    for i in 0..JUNK_POOL {
        if i % 2 == 1 {
            pool.push(Junk {
                bytes: initial_shaped(&mut rng)?,
                initial: true,
            });
            continue;
        }
        let mut len = [0u8; 2];
        rng.try_fill_bytes(&mut len)?;
        // 1..=1350 bytes: below and above quinn's minimum Initial size.
        let mut bytes = vec![0u8; 1 + usize::from(u16::from_le_bytes(len)) % 1350];
        rng.try_fill_bytes(&mut bytes)?;
        pool.push(Junk {
            bytes,
            initial: false,
        });
    }
    Ok(pool)
}

/// A datagram quinn parses as the Initial of a new connection: long header, QUIC
/// v1, an 8..=20-byte destination connection ID, a 0..=20-byte source ID, no token,
/// a length covering the rest of the 1200 bytes, and random bytes where the packet
/// number and the encrypted payload would be.
fn initial_shaped(rng: &mut SysRng) -> Result<Vec<u8>, rand::rngs::SysError> {
    let mut p = vec![0u8; INITIAL_LEN];
    rng.try_fill_bytes(&mut p)?;
    // Long header, fixed bit, type Initial; the low bits are header-protected.
    p[0] = 0xC0 | (p[0] & 0x0F);
    p[1..5].copy_from_slice(&1u32.to_be_bytes());
    p[5] = 8 + p[5] % 13;
    let mut at = 6 + usize::from(p[5]);
    p[at] %= 21;
    at += 1 + usize::from(p[at]);
    // Token length 0 (a one-byte varint).
    p[at] = 0;
    at += 1;
    // The remaining length as a two-byte varint (at most 1200, below 2^14).
    let rest = u16::try_from(INITIAL_LEN - at - 2).unwrap_or(0);
    p[at..at + 2].copy_from_slice(&(0x4000 | rest).to_be_bytes());
    Ok(p)
}

/// Starts the connection-attempt flood: an [`Intruder`] bound to `source` (its
/// foreign certificates in `dir`, trusting the cluster CA in `cluster_pki`) keeps
/// `concurrency` attempts at the node `server_name` at `target` running.
pub fn handshakes(
    dir: &Path,
    cluster_pki: &Path,
    source: IpAddr,
    target: SocketAddr,
    server_name: String,
    concurrency: usize,
    attempt_timeout: Duration,
) -> Result<Flood<HandshakeStats>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("the intruder's runtime: {e}"))?;
    let intruder = {
        let _guard = runtime.enter();
        Intruder::new(dir, cluster_pki, source).map_err(|e| format!("intruder: {e}"))?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("handshake-flood".into())
        .spawn(move || {
            let stats = runtime.block_on(attempt_all(
                &intruder,
                target,
                &server_name,
                concurrency,
                attempt_timeout,
                &flag,
            ));
            intruder.close();
            Ok(stats)
        })
        .map_err(|e| format!("spawn the handshake flood: {e}"))?;
    Ok(Flood { stop, thread })
}

async fn attempt_all(
    intruder: &Intruder,
    target: SocketAddr,
    server_name: &str,
    concurrency: usize,
    attempt_timeout: Duration,
    stop: &AtomicBool,
) -> HandshakeStats {
    let start = Instant::now();
    let mut stats = HandshakeStats::default();
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut running = JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        while let Some(done) = running.try_join_next() {
            if let Ok(attempt) = done {
                stats.count(&attempt);
            }
        }
        let (intruder, name) = (intruder.clone(), server_name.to_string());
        running.spawn(async move {
            let attempt = intruder.attempt(target, &name, attempt_timeout).await;
            drop(slot);
            attempt
        });
    }
    stats.secs = start.elapsed().as_secs_f64();
    running.abort_all();
    stats
}
