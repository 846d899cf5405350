//! The node's event log: every membership event gets the next index, is kept in a
//! bounded ring, and is broadcast to `/v1/events` subscribers.
//!
//! Indexes start at 1 on every start of the node and increase by one per event. A
//! client resumes with `?since=INDEX` (events with a larger index follow). Because
//! the log lives in memory, a restarted node starts again at 1; every record carries
//! the node's `generation`, so a client can tell that it is talking to a new life of
//! the node and must not resume from an index of the old one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use vigil_protocol::{Event, NodeId};

/// Events kept for late subscribers.
pub const RETAINED_EVENTS: usize = 10_000;
/// Events buffered per live subscriber before it is cut off as too slow.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// One line of the `/v1/events` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub index: u64,
    /// RFC 3339, UTC, millisecond precision.
    pub time: String,
    pub time_ms: u64,
    #[serde(rename = "type")]
    pub kind: String,
    /// The node that reports the event.
    pub node: String,
    /// The reporting node's generation (changes when the node restarts).
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_generation: Option<u64>,
    /// Human-readable detail, for events of the node itself (e.g. why a join failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The agent an agent event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The agent's owner epoch the event refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The snapshot seq the event refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The zone a capacity event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// A capacity event's figure: free standby capacity (agents) or agents pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The agent, epoch and seq an agent event names (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRef {
    pub agent: Option<String>,
    pub epoch: Option<u64>,
    pub seq: Option<u64>,
}

/// What a subscriber gets: the retained events it asked for, then the live feed.
pub struct Subscription {
    pub backlog: Vec<Arc<EventRecord>>,
    pub live: broadcast::Receiver<Arc<EventRecord>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    #[error(
        "events after index {since} are no longer retained; the oldest retained index is {oldest}. Resume from index {oldest_minus_one} or omit `since` to start with the oldest retained event"
    )]
    Expired {
        since: u64,
        oldest: u64,
        oldest_minus_one: u64,
    },
    #[error(
        "index {since} is beyond the last event ({last}); the node has probably restarted (its generation is now {generation}). Omit `since` to start again"
    )]
    FromFuture {
        since: u64,
        last: u64,
        generation: u64,
    },
}

pub struct EventLog {
    node: String,
    generation: u64,
    retained: VecDeque<Arc<EventRecord>>,
    next_index: u64,
    live: broadcast::Sender<Arc<EventRecord>>,
}

impl EventLog {
    pub fn new(node: &NodeId) -> Self {
        let (live, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        Self {
            node: node.name.to_string(),
            generation: node.generation,
            retained: VecDeque::with_capacity(64),
            next_index: 1,
            live,
        }
    }

    /// The generation changes when the local node rejoins under a new identity.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// Records a core event.
    pub fn push_event(&mut self, event: &Event) -> Arc<EventRecord> {
        self.push(
            event.kind(),
            event.member(),
            event.incarnation(),
            event.previous_generation(),
            None,
            AgentRef::default(),
        )
    }

    /// Records an event of the node itself (not from the core).
    pub fn push_local(&mut self, kind: &str, detail: Option<String>) -> Arc<EventRecord> {
        self.push(kind, None, None, None, detail, AgentRef::default())
    }

    /// Records an event about one agent of this node.
    pub fn push_agent(
        &mut self,
        kind: &str,
        agent: AgentRef,
        detail: Option<String>,
    ) -> Arc<EventRecord> {
        self.push(kind, None, None, None, detail, agent)
    }

    /// Records a capacity signal (free standby capacity of a zone, agents pending).
    pub fn push_capacity(
        &mut self,
        kind: &str,
        zone: Option<String>,
        count: u64,
        detail: String,
    ) -> Arc<EventRecord> {
        let mut record = self.record(kind, None, None, None, Some(detail), AgentRef::default());
        record.zone = zone;
        record.count = Some(count);
        self.publish(record)
    }

    fn push(
        &mut self,
        kind: &str,
        member: Option<&NodeId>,
        incarnation: Option<u16>,
        previous_generation: Option<u64>,
        detail: Option<String>,
        agent: AgentRef,
    ) -> Arc<EventRecord> {
        let record = self.record(
            kind,
            member,
            incarnation,
            previous_generation,
            detail,
            agent,
        );
        self.publish(record)
    }

    /// The next record (its index is taken when it is published).
    fn record(
        &self,
        kind: &str,
        member: Option<&NodeId>,
        incarnation: Option<u16>,
        previous_generation: Option<u64>,
        detail: Option<String>,
        agent: AgentRef,
    ) -> EventRecord {
        let (time, time_ms) = now_rfc3339();
        EventRecord {
            index: self.next_index,
            time,
            time_ms,
            kind: kind.to_string(),
            node: self.node.clone(),
            generation: self.generation,
            member: member.map(|m| m.name.to_string()),
            member_addr: member.map(|m| m.addr.to_string()),
            member_zone: member.map(|m| m.zone.to_string()),
            member_generation: member.map(|m| m.generation),
            incarnation,
            previous_generation,
            detail,
            agent: agent.agent,
            epoch: agent.epoch,
            seq: agent.seq,
            zone: None,
            count: None,
        }
    }

    fn publish(&mut self, record: EventRecord) -> Arc<EventRecord> {
        let record = Arc::new(record);
        self.next_index += 1;
        if self.retained.len() >= RETAINED_EVENTS {
            self.retained.pop_front();
        }
        self.retained.push_back(Arc::clone(&record));
        // No subscribers is fine.
        let _ = self.live.send(Arc::clone(&record));
        record
    }

    /// Events with an index greater than `since` (all retained ones if `None`), then
    /// the live feed. Subscribing and copying the backlog happen together, so no
    /// event is missed or repeated.
    pub fn subscribe(&self, since: Option<u64>) -> Result<Subscription, SinceError> {
        let last = self.last_index();
        let oldest = self.retained.front().map_or(self.next_index, |r| r.index);
        if let Some(since) = since {
            if since > last {
                return Err(SinceError::FromFuture {
                    since,
                    last,
                    generation: self.generation,
                });
            }
            if since + 1 < oldest {
                return Err(SinceError::Expired {
                    since,
                    oldest,
                    oldest_minus_one: oldest - 1,
                });
            }
        }
        let from = since.map_or(0, |s| s + 1);
        let backlog = self
            .retained
            .iter()
            .filter(|r| r.index >= from)
            .cloned()
            .collect();
        Ok(Subscription {
            backlog,
            live: self.live.subscribe(),
        })
    }
}

/// Wall-clock time as RFC 3339 (UTC, milliseconds) and as Unix milliseconds.
pub fn now_rfc3339() -> (String, u64) {
    let now = SystemTime::now();
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    (format_unix_ms(ms), ms)
}

/// Formats Unix milliseconds as RFC 3339 UTC.
pub fn format_unix_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_protocol::{NodeName, Zone};

    fn node() -> NodeId {
        NodeId::new(
            NodeName::new("n1").unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            Zone::new("z").unwrap(),
            5,
        )
    }

    #[test]
    fn indexes_start_at_one_and_increase_by_one() {
        let mut log = EventLog::new(&node());
        let a = log.push_local("local_started", None);
        let b = log.push_event(&Event::LocalIsolated);
        assert_eq!((a.index, b.index), (1, 2));
        assert_eq!(b.kind, "local_isolated");
        assert_eq!(b.generation, 5);
    }

    #[test]
    fn resuming_returns_only_later_events_then_live_ones() {
        let mut log = EventLog::new(&node());
        for _ in 0..5 {
            log.push_local("x", None);
        }
        let mut sub = log.subscribe(Some(3)).unwrap();
        assert_eq!(
            sub.backlog.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![4, 5]
        );
        log.push_local("y", None);
        assert_eq!(sub.live.try_recv().unwrap().index, 6);
        assert_eq!(log.subscribe(None).unwrap().backlog.len(), 6);
        assert!(log.subscribe(Some(6)).unwrap().backlog.is_empty());
    }

    #[test]
    fn resuming_from_a_discarded_or_future_index_is_an_error() {
        let mut log = EventLog::new(&node());
        for _ in 0..RETAINED_EVENTS + 10 {
            log.push_local("x", None);
        }
        assert_eq!(
            log.subscribe(Some(3)).err(),
            Some(SinceError::Expired {
                since: 3,
                oldest: 11,
                oldest_minus_one: 10
            })
        );
        assert!(log.subscribe(Some(10)).is_ok());
        assert!(matches!(
            log.subscribe(Some(1_000_000)),
            Err(SinceError::FromFuture { .. })
        ));
    }

    #[test]
    fn records_serialize_flat_with_a_type_field() {
        let mut log = EventLog::new(&node());
        let r = log.push_event(&Event::MemberDown { member: node() });
        let json = serde_json::to_value(&*r).unwrap();
        assert_eq!(json["type"], "member_down");
        assert_eq!(json["member"], "n1");
        assert_eq!(json["member_zone"], "z");
        assert!(json.get("incarnation").is_none());
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn unix_ms_format_as_rfc3339() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(1_500), "1970-01-01T00:00:01.5Z");
    }
}
