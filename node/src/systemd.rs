//! systemd's notification protocol (`Type=notify` units): `READY=1` once the node is a
//! member of a cluster (or founds one), `STATUS=` lines on the way, `WATCHDOG=1`
//! pings at half of `WatchdogSec=`, `STOPPING=1` on a graceful stop. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! The pings are sent from the owner task's loop (node.rs), not from a timer task of
//! their own: a wedged owner loop stops them and systemd restarts the node, which is
//! the point of the watchdog.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The variables systemd passes; launched agents must not inherit them (a child
/// could otherwise report readiness for the node's unit where `NotifyAccess=all`).
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

pub struct Notifier {
    enabled: bool,
    /// Half the watchdog timeout, if systemd asked for pings.
    ping_every: Option<Duration>,
    next_ping: Option<Instant>,
    ready: bool,
    /// The last STATUS= sent.
    status: String,
    /// A send failed already (logged once, not on every ping).
    failed: bool,
}

impl Notifier {
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        // `watchdog_enabled` also checks WATCHDOG_PID against our pid.
        let ping_every = sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2);
        Self {
            enabled,
            ping_every: ping_every.filter(|_| enabled),
            next_ping: None,
            ready: false,
            status: String::new(),
            failed: false,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// When the owner loop must ping next (`None`: no watchdog).
    pub fn next_ping(&mut self) -> Option<Instant> {
        let every = self.ping_every?;
        Some(*self.next_ping.get_or_insert_with(|| Instant::now() + every))
    }

    /// The owner loop is alive: tell systemd and schedule the next ping.
    pub fn ping(&mut self) {
        if let Some(every) = self.ping_every {
            self.send(&[NotifyState::Watchdog]);
            self.next_ping = Some(Instant::now() + every);
        }
    }

    /// `READY=1` with a status line, once; later calls only update the status.
    pub fn ready(&mut self, status: &str) {
        if self.ready {
            self.status(status);
            return;
        }
        self.ready = true;
        self.status = one_line(status);
        let line = self.status.clone();
        self.send(&[NotifyState::Ready, NotifyState::Status(&line)]);
        if self.enabled {
            tracing::info!("told systemd the node is ready: {status}");
        }
    }

    pub fn status(&mut self, status: &str) {
        self.status = one_line(status);
        let line = self.status.clone();
        self.send(&[NotifyState::Status(&line)]);
    }

    /// Sends `status` unless it is the one shown already (refreshed with the pings,
    /// not on every membership change, which can be many per second).
    pub fn refresh_status(&mut self, status: &str) {
        if one_line(status) != self.status {
            self.status(status);
        }
    }

    pub fn stopping(&mut self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("leaving the cluster"),
        ]);
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            if !self.failed {
                tracing::warn!("cannot notify systemd through NOTIFY_SOCKET: {e}");
            }
            self.failed = true;
        }
    }
}

/// The protocol is one `KEY=VALUE` per line: a status must not contain newlines.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
