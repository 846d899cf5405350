//! Admission of incoming QUIC handshakes: what one source address may cost.
//!
//! A handshake is the only work an unauthenticated sender can make a node do (a
//! packet that is not QUIC is dropped by quinn before it costs more than a header
//! parse), and a full TLS handshake costs a signature and a key exchange. So every
//! incoming connection attempt passes this gate first, before any crypto:
//!
//! 1. an address whose handshakes keep failing (bad certificate, timeout, wrong name)
//!    is ignored for a while: each failure takes a token from a per-address bucket
//!    (`failure_burst` tokens, `failure_refill_per_sec` back per second), and a new
//!    handshake needs a token beyond those its handshakes still running may take;
//! 2. at most `max_in_flight` handshakes run at once, node-wide;
//! 3. when more than `retry_above` run at once, a sender whose address QUIC has not
//!    validated gets a stateless Retry first: it must answer from the address it
//!    claims, so a flood with spoofed source addresses costs no state and no crypto;
//! 4. one address (an IPv4 address, or an IPv6 /64, which one host typically owns)
//!    runs at most `max_in_flight_per_address` handshakes at once, so one sender
//!    cannot take every slot.
//!
//! Members of the cluster are not affected in steady state: their connections are
//! long-lived and their handshakes succeed. The gate holds at most
//! `max_tracked_addresses` addresses; beyond that, new addresses are refused until
//! idle ones can be forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The gate's limits. The defaults are in [`GateLimits::default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateLimits {
    pub max_in_flight: usize,
    pub max_in_flight_per_address: usize,
    pub retry_above: usize,
    pub failure_burst: f64,
    pub failure_refill_per_sec: f64,
    pub max_tracked_addresses: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        Self {
            // A 50-node cluster joining at once on one host opens a few dozen
            // handshakes to a newcomer within a second; 64 leaves room for that.
            max_in_flight: 64,
            // Many nodes may share one address (tests, several nodes per host), so
            // this is a quarter of the slots, not one.
            max_in_flight_per_address: 16,
            retry_above: 16,
            failure_burst: 32.0,
            failure_refill_per_sec: 2.0,
            max_tracked_addresses: 4096,
        }
    }
}

/// What to do with one incoming connection attempt.
#[derive(Debug)]
pub enum Admission {
    /// Run the handshake; report how it ended on the ticket.
    Accept(Ticket),
    /// Ask the sender to prove its address first (stateless QUIC Retry).
    Retry,
    /// Refuse with a QUIC CONNECTION_REFUSED (a legitimate peer learns at once).
    Refuse(&'static str),
    /// Drop without an answer (cheapest; for a sender that is the problem).
    Ignore(&'static str),
}

/// The reasons the gate gives, for metrics (`vigil_tls_rejected_total{reason}`).
pub mod reason {
    pub const ADDRESS_THROTTLED: &str = "address_throttled";
    pub const TOO_MANY_HANDSHAKES: &str = "too_many_handshakes";
    pub const TOO_MANY_FROM_ADDRESS: &str = "too_many_handshakes_from_address";
    pub const TOO_MANY_ADDRESSES: &str = "too_many_addresses";
}

/// Per-address state (an IPv4 address or an IPv6 /64 prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddrKey {
    V4(u32),
    V6Prefix(u64),
}

impl AddrKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // A dual-stack socket sees IPv4 senders as mapped addresses.
                Some(v4) => AddrKey::V4(u32::from(v4)),
                None => {
                    let [a, b, c, d, ..] = v6.segments();
                    AddrKey::V6Prefix(
                        (u64::from(a) << 48)
                            | (u64::from(b) << 32)
                            | (u64::from(c) << 16)
                            | u64::from(d),
                    )
                }
            },
        }
    }
}

#[derive(Debug)]
struct AddrState {
    in_flight: usize,
    tokens: f64,
    refilled: Instant,
}

impl AddrState {
    fn refill(&mut self, now: Instant, limits: &GateLimits) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * limits.failure_refill_per_sec).min(limits.failure_burst);
        self.refilled = now;
    }

    fn forgettable(&self, limits: &GateLimits) -> bool {
        self.in_flight == 0 && self.tokens >= limits.failure_burst
    }
}

#[derive(Debug)]
struct GateState {
    in_flight: usize,
    addrs: HashMap<AddrKey, AddrState>,
}

/// Shared by the accept loop and the handshake tasks (a short lock per attempt).
#[derive(Debug)]
pub struct HandshakeGate {
    limits: GateLimits,
    state: Mutex<GateState>,
}

impl HandshakeGate {
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(GateState {
                in_flight: 0,
                addrs: HashMap::new(),
            }),
        })
    }

    pub fn limits(&self) -> &GateLimits {
        &self.limits
    }

    /// Decides about one connection attempt from `ip`; `validated`: QUIC has proved
    /// the sender owns the address (it answered a Retry).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, validated: bool, now: Instant) -> Admission {
        let limits = &self.limits;
        let key = AddrKey::of(ip);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = state.addrs.get_mut(&key) {
            addr.refill(now, limits);
            // Every handshake still running may fail too, so each needs a token of
            // its own: otherwise a sender that keeps many at once gets up to
            // `max_in_flight_per_address` failed handshakes per token.
            if addr.tokens < (addr.in_flight + 1) as f64 {
                return Admission::Ignore(reason::ADDRESS_THROTTLED);
            }
        }
        if state.in_flight >= limits.max_in_flight {
            return Admission::Refuse(reason::TOO_MANY_HANDSHAKES);
        }
        // Before any per-address state is made: a spoofed flood never gets that far.
        if !validated && state.in_flight >= limits.retry_above {
            return Admission::Retry;
        }
        if !state.addrs.contains_key(&key) && state.addrs.len() >= limits.max_tracked_addresses {
            let limits = *limits;
            state.addrs.retain(|_, a| {
                a.refill(now, &limits);
                !a.forgettable(&limits)
            });
            if state.addrs.len() >= limits.max_tracked_addresses {
                return Admission::Refuse(reason::TOO_MANY_ADDRESSES);
            }
        }
        let addr = state.addrs.entry(key).or_insert(AddrState {
            in_flight: 0,
            tokens: limits.failure_burst,
            refilled: now,
        });
        if addr.in_flight >= limits.max_in_flight_per_address {
            return Admission::Ignore(reason::TOO_MANY_FROM_ADDRESS);
        }
        addr.in_flight += 1;
        state.in_flight += 1;
        Admission::Accept(Ticket {
            gate: Arc::clone(self),
            key,
            failed: false,
        })
    }

    /// Handshakes running now (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight
    }

    /// Addresses the gate remembers.
    pub fn tracked_addresses(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .addrs
            .len()
    }

    fn release(&self, key: AddrKey, failed_at: Option<Instant>) {
        let limits = self.limits;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_flight = state.in_flight.saturating_sub(1);
        let forget = match state.addrs.get_mut(&key) {
            Some(addr) => {
                addr.in_flight = addr.in_flight.saturating_sub(1);
                if let Some(now) = failed_at {
                    addr.refill(now, &limits);
                    addr.tokens = (addr.tokens - 1.0).max(0.0);
                }
                addr.forgettable(&limits)
            }
            None => false,
        };
        // A clean address costs no memory once its handshakes are done.
        if forget {
            state.addrs.remove(&key);
        }
    }
}

/// One admitted handshake. Dropping it frees the slot; [`Ticket::failed`] also
/// charges the address for the failure.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<HandshakeGate>,
    key: AddrKey,
    failed: bool,
}

impl Ticket {
    /// The handshake failed (refused certificate, timeout, bad name).
    pub fn failed(mut self, now: Instant) {
        self.failed = true;
        self.gate.release(self.key, Some(now));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.failed {
            self.gate.release(self.key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn accept(a: Admission) -> Ticket {
        match a {
            Admission::Accept(t) => t,
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    fn small() -> GateLimits {
        GateLimits {
            max_in_flight: 8,
            max_in_flight_per_address: 3,
            retry_above: 4,
            failure_burst: 2.0,
            failure_refill_per_sec: 1.0,
            max_tracked_addresses: 4,
        }
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        // Enough tokens for every handshake it may run at once.
        let gate = HandshakeGate::new(GateLimits {
            failure_burst: 8.0,
            ..small()
        });
        let now = Instant::now();
        let held: Vec<Ticket> = (0..3)
            .map(|_| accept(gate.admit(v4(1), true, now)))
            .collect();
        assert!(matches!(
            gate.admit(v4(1), true, now),
            Admission::Ignore(reason::TOO_MANY_FROM_ADDRESS)
        ));
        // Another address still gets in.
        let other = accept(gate.admit(v4(2), true, now));
        drop(held);
        drop(other);
        assert_eq!(gate.in_flight(), 0);
        assert_eq!(gate.tracked_addresses(), 0, "clean addresses are forgotten");
    }

    #[test]
    fn unvalidated_senders_are_asked_to_retry_under_load_and_refused_when_full() {
        let gate = HandshakeGate::new(GateLimits {
            max_tracked_addresses: 16,
            ..small()
        });
        let now = Instant::now();
        let mut held: Vec<Ticket> = (1..=4)
            .map(|i| accept(gate.admit(v4(i), false, now)))
            .collect();
        assert!(matches!(gate.admit(v4(9), false, now), Admission::Retry));
        assert_eq!(gate.tracked_addresses(), 4, "a Retry keeps no state");
        held.extend((5..=8).map(|i| accept(gate.admit(v4(i), true, now))));
        assert!(matches!(
            gate.admit(v4(9), true, now),
            Admission::Refuse(reason::TOO_MANY_HANDSHAKES)
        ));
    }

    #[test]
    fn an_address_that_keeps_failing_is_ignored_until_its_tokens_come_back() {
        let gate = HandshakeGate::new(small());
        let t0 = Instant::now();
        accept(gate.admit(v4(1), true, t0)).failed(t0);
        accept(gate.admit(v4(1), true, t0)).failed(t0);
        assert!(matches!(
            gate.admit(v4(1), true, t0),
            Admission::Ignore(reason::ADDRESS_THROTTLED)
        ));
        // Others are not affected.
        drop(accept(gate.admit(v4(2), true, t0)));
        // One token back after a second at 1/s.
        let t1 = t0 + Duration::from_millis(1001);
        accept(gate.admit(v4(1), true, t1)).failed(t1);
        assert!(matches!(gate.admit(v4(1), true, t1), Admission::Ignore(_)));
        // A success costs nothing.
        let t2 = t1 + Duration::from_millis(1001);
        drop(accept(gate.admit(v4(1), true, t2)));
        drop(accept(gate.admit(v4(1), true, t2)));
    }

    #[test]
    fn handshakes_running_at_once_are_each_covered_by_a_token() {
        let gate = HandshakeGate::new(small());
        let t0 = Instant::now();
        // Two tokens: two handshakes at once, not the address's cap of three.
        let a = accept(gate.admit(v4(1), true, t0));
        let b = accept(gate.admit(v4(1), true, t0));
        assert!(matches!(
            gate.admit(v4(1), true, t0),
            Admission::Ignore(reason::ADDRESS_THROTTLED)
        ));
        a.failed(t0);
        b.failed(t0);
        // One token back: one handshake, and no second one beside it.
        let t1 = t0 + Duration::from_millis(1001);
        let c = accept(gate.admit(v4(1), true, t1));
        assert!(matches!(gate.admit(v4(1), true, t1), Admission::Ignore(_)));
        // A handshake that succeeds gives its token back.
        drop(c);
        drop(accept(gate.admit(v4(1), true, t1)));
    }

    #[test]
    fn remembered_addresses_are_bounded() {
        let gate = HandshakeGate::new(small());
        let t0 = Instant::now();
        for i in 1..=4 {
            accept(gate.admit(v4(i), true, t0)).failed(t0);
        }
        assert!(matches!(
            gate.admit(v4(5), true, t0),
            Admission::Refuse(reason::TOO_MANY_ADDRESSES)
        ));
        // Once their tokens are back, failed addresses can be forgotten.
        let later = t0 + Duration::from_secs(2);
        drop(accept(gate.admit(v4(5), true, later)));
        assert!(gate.tracked_addresses() <= 4);
    }

    #[test]
    fn an_ipv6_host_is_one_address_and_mapped_ipv4_is_its_ipv4_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddrKey::of(a), AddrKey::of(b));
        assert_ne!(AddrKey::of(a), AddrKey::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(AddrKey::of(mapped), AddrKey::of(v4(1)));
        assert_ne!(
            AddrKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            AddrKey::of(v4(1))
        );
    }
}
