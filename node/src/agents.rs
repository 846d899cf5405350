//! Local agents: heartbeat deadlines, restarts in place, handoff, and what the
//! launcher runs. Owned by the node's owner task (no locks); it decides, the
//! [`Launcher`](crate::launcher::Launcher) only starts and stops processes.
//!
//! An agent is supervised from its first heartbeat (or from its launch, when vigil
//! launched it): an agent registered by a client that never heartbeats is left alone.
//! A missed deadline, or a launched process that exits by itself, is a local failure:
//! the agent is restarted in place (the launcher's job; without a launcher the
//! user's supervisor is expected to, and the deadline is armed again) up to
//! `agent_restarts` times, then handed to another host through the same election as
//! a recovery; if no host can take it, it is reported `failed`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the owner task must do after a supervisor decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start (or restart) the agent's process at this epoch.
    Start {
        agent: String,
        epoch: u64,
    },
    Stop {
        agent: String,
    },
    /// Hand the agent to another host.
    Handoff {
        agent: String,
    },
    /// Report an event about the agent.
    Event {
        kind: &'static str,
        agent: String,
        epoch: u64,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Owned here, no heartbeat since it was (re)started.
    Starting,
    Running,
    /// Stopped: fenced, isolated or handed off (see the replicator for which).
    Stopped,
    Failed,
}

#[derive(Debug)]
struct Local {
    epoch: u64,
    status: Status,
    /// Supervised (has a deadline) since its first heartbeat or its launch.
    deadline: Option<Instant>,
    restarts: u32,
    /// Waiting for the stopped process to exit before starting it again.
    restart_after_exit: bool,
}

pub struct Supervisor {
    timeout: Duration,
    max_restarts: u32,
    launcher: bool,
    agents: BTreeMap<String, Local>,
}

/// Time a launched agent has to send its first heartbeat (interpreters start slowly).
const FIRST_HEARTBEAT: Duration = Duration::from_secs(10);

impl Supervisor {
    pub fn new(timeout: Duration, max_restarts: u32, launcher: bool) -> Self {
        Self {
            timeout,
            max_restarts,
            launcher,
            agents: BTreeMap::new(),
        }
    }

    /// New limits (`PUT /v1/config`): the timeout applies from each agent's next
    /// heartbeat, the restart budget to the next failure.
    pub fn set_limits(&mut self, timeout: Duration, max_restarts: u32) {
        self.timeout = timeout;
        self.max_restarts = max_restarts;
    }

    pub fn status(&self, agent: &str) -> Option<Status> {
        self.agents.get(agent).map(|l| l.status)
    }

    /// The agent is owned here (registered, reclaimed or adopted) and may run.
    pub fn owned(&mut self, now: Instant, agent: &str, epoch: u64) -> Vec<Action> {
        let deadline = self.launcher.then_some(self.first_deadline(now));
        self.agents.insert(
            agent.to_string(),
            Local {
                epoch,
                status: Status::Starting,
                deadline,
                restarts: 0,
                restart_after_exit: false,
            },
        );
        self.start(agent, epoch)
    }

    fn start(&self, agent: &str, epoch: u64) -> Vec<Action> {
        if self.launcher {
            vec![Action::Start {
                agent: agent.to_string(),
                epoch,
            }]
        } else {
            Vec::new()
        }
    }

    /// The agent must not run here (fenced, isolated, lost, handed off).
    pub fn stop(&mut self, agent: &str, forget: bool) -> Vec<Action> {
        if forget {
            self.agents.remove(agent);
        } else if let Some(l) = self.agents.get_mut(agent) {
            l.status = Status::Stopped;
            l.deadline = None;
            l.restart_after_exit = false;
        }
        if self.launcher {
            vec![Action::Stop {
                agent: agent.to_string(),
            }]
        } else {
            Vec::new()
        }
    }

    /// The agent may run again (unfenced, recovered from isolation).
    pub fn resume(&mut self, now: Instant, agent: &str) -> Vec<Action> {
        let deadline = self.launcher.then_some(self.first_deadline(now));
        let Some(l) = self.agents.get_mut(agent) else {
            return Vec::new();
        };
        l.status = Status::Starting;
        l.deadline = deadline;
        let epoch = l.epoch;
        self.start(agent, epoch)
    }

    /// A heartbeat: returns whether it is the first since the agent was (re)started.
    pub fn heartbeat(&mut self, now: Instant, agent: &str, epoch: u64) -> bool {
        let l = self.agents.entry(agent.to_string()).or_insert(Local {
            epoch,
            status: Status::Starting,
            deadline: None,
            restarts: 0,
            restart_after_exit: false,
        });
        let first = l.status != Status::Running;
        l.epoch = epoch;
        l.status = Status::Running;
        l.deadline = Some(now + self.timeout);
        first
    }

    /// When a (re)started agent must have sent its first heartbeat.
    fn first_deadline(&self, now: Instant) -> Instant {
        now + FIRST_HEARTBEAT.max(self.timeout)
    }

    /// The heartbeat deadline, for the heartbeat's answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A launched process ended; `requested` when vigil stopped it.
    pub fn exited(
        &mut self,
        now: Instant,
        agent: &str,
        epoch: u64,
        status: &str,
        requested: bool,
    ) -> Vec<Action> {
        let first_deadline = self.first_deadline(now);
        let Some(l) = self.agents.get_mut(agent) else {
            return Vec::new();
        };
        if l.epoch != epoch {
            return Vec::new();
        }
        if requested {
            if l.restart_after_exit {
                l.restart_after_exit = false;
                l.status = Status::Starting;
                l.deadline = Some(first_deadline);
                return self.start(agent, epoch);
            }
            return Vec::new();
        }
        if matches!(l.status, Status::Stopped | Status::Failed) {
            return Vec::new();
        }
        self.failure(now, agent, format!("its process ended ({status})"), false)
    }

    /// The next heartbeat deadline of any agent.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.agents.values().filter_map(|l| l.deadline).min()
    }

    /// Agents whose deadline passed.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let late: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, l)| l.deadline.is_some_and(|d| d <= now))
            .map(|(a, _)| a.clone())
            .collect();
        let mut actions = Vec::new();
        for agent in late {
            let timeout = self.timeout;
            actions.extend(self.failure(
                now,
                &agent,
                format!("no heartbeat for {timeout:?}"),
                true,
            ));
        }
        actions
    }

    /// `running`: the process (if launched) is still there and must be stopped first.
    fn failure(&mut self, now: Instant, agent: &str, why: String, running: bool) -> Vec<Action> {
        let (timeout, max, launcher) = (self.timeout, self.max_restarts, self.launcher);
        let first_deadline = self.first_deadline(now);
        let Some(l) = self.agents.get_mut(agent) else {
            return Vec::new();
        };
        let epoch = l.epoch;
        let mut actions = vec![Action::Event {
            kind: "agent_missed",
            agent: agent.to_string(),
            epoch,
            detail: why,
        }];
        if l.restarts < max {
            l.restarts += 1;
            l.status = Status::Starting;
            actions.push(Action::Event {
                kind: "agent_restarted",
                agent: agent.to_string(),
                epoch,
                detail: format!("restart {} of {max} in place", l.restarts),
            });
            if launcher && running {
                l.deadline = Some(first_deadline);
                l.restart_after_exit = true;
                actions.push(Action::Stop {
                    agent: agent.to_string(),
                });
            } else if launcher {
                l.deadline = Some(first_deadline);
                actions.push(Action::Start {
                    agent: agent.to_string(),
                    epoch,
                });
            } else {
                // The user's supervisor restarts it; it has one more deadline.
                l.deadline = Some(now + timeout);
            }
            return actions;
        }
        l.status = Status::Stopped;
        l.deadline = None;
        l.restart_after_exit = false;
        actions.push(Action::Handoff {
            agent: agent.to_string(),
        });
        if launcher && running {
            actions.push(Action::Stop {
                agent: agent.to_string(),
            });
        }
        actions
    }

    /// No other host could take the agent: it is reported failed.
    pub fn failed(&mut self, agent: &str) {
        if let Some(l) = self.agents.get_mut(agent) {
            l.status = Status::Failed;
            l.deadline = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_that_never_heartbeats_is_not_supervised_without_a_launcher() {
        let mut s = Supervisor::new(Duration::from_secs(2), 3, false);
        let t = Instant::now();
        assert!(s.owned(t, "a", 1).is_empty());
        assert_eq!(s.next_deadline(), None);
        assert!(s.tick(t + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn missed_heartbeats_restart_then_hand_off() {
        let mut s = Supervisor::new(Duration::from_secs(2), 2, true);
        let t = Instant::now();
        s.owned(t, "a", 1);
        assert!(s.heartbeat(t, "a", 1));
        assert!(!s.heartbeat(t, "a", 1));
        let a = s.tick(t + Duration::from_secs(3));
        assert!(a.contains(&Action::Stop { agent: "a".into() }), "{a:?}");
        // The stopped process exits; it is started again.
        let a = s.exited(t, "a", 1, "killed by SIGTERM", true);
        assert_eq!(
            a,
            vec![Action::Start {
                agent: "a".into(),
                epoch: 1
            }]
        );
        let later = t + Duration::from_secs(30);
        s.tick(later);
        s.exited(later, "a", 1, "killed", true);
        let a = s.tick(later + Duration::from_secs(30));
        assert!(a.contains(&Action::Handoff { agent: "a".into() }), "{a:?}");
        assert_eq!(s.status("a"), Some(Status::Stopped));
    }

    #[test]
    fn a_crash_counts_as_a_failure() {
        let mut s = Supervisor::new(Duration::from_secs(2), 1, true);
        let t = Instant::now();
        s.owned(t, "a", 1);
        let a = s.exited(t, "a", 1, "exit code 1", false);
        assert!(
            a.contains(&Action::Start {
                agent: "a".into(),
                epoch: 1
            }),
            "{a:?}"
        );
        // An exit from an older epoch is ignored.
        assert!(s.exited(t, "a", 0, "exit code 1", false).is_empty());
    }
}
