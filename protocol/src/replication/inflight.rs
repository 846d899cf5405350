//! The requests a replicator has in flight, with their deadlines indexed so that
//! `poll_timeout` finds the next one without reading them all (a registration asks
//! every live member, so a node of a large cluster has thousands in flight, and the
//! driver asks for the next deadline after every input).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::time::Duration;

use super::InFlight;

/// Requests by op, read like the map (through `Deref`); changed only through
/// `insert` and `remove`, which keep the deadline index.
#[derive(Debug, Default)]
pub(super) struct Requests {
    map: BTreeMap<u64, InFlight>,
    deadlines: BTreeSet<(Duration, u64)>,
}

impl Requests {
    pub(super) fn insert(&mut self, op: u64, request: InFlight) -> Option<InFlight> {
        self.deadlines.insert((request.deadline, op));
        let old = self.map.insert(op, request);
        if let Some(old) = &old
            && self
                .map
                .get(&op)
                .is_some_and(|r| r.deadline != old.deadline)
        {
            self.deadlines.remove(&(old.deadline, op));
        }
        old
    }

    pub(super) fn remove(&mut self, op: &u64) -> Option<InFlight> {
        let request = self.map.remove(op)?;
        self.deadlines.remove(&(request.deadline, *op));
        Some(request)
    }

    /// The earliest deadline of a request in flight.
    pub(super) fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }
}

impl Deref for Requests {
    type Target = BTreeMap<u64, InFlight>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::super::Request;
    use super::*;
    use crate::identity::NodeName;

    fn request(deadline_ms: u64) -> InFlight {
        InFlight {
            request: Request::Head { get: 0 },
            to: NodeName::new("a").unwrap_or_else(|_| unreachable!()),
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    #[test]
    fn the_next_deadline_follows_inserts_replacements_and_removals() {
        let mut r = Requests::default();
        assert_eq!(r.next_deadline(), None);
        r.insert(1, request(30));
        r.insert(2, request(10));
        r.insert(3, request(20));
        assert_eq!(r.next_deadline(), Some(Duration::from_millis(10)));
        assert!(r.remove(&2).is_some());
        assert_eq!(r.next_deadline(), Some(Duration::from_millis(20)));
        // A replaced request's old deadline goes with it.
        r.insert(3, request(40));
        assert_eq!(r.next_deadline(), Some(Duration::from_millis(30)));
        assert!(r.remove(&2).is_none());
        r.remove(&1);
        r.remove(&3);
        assert_eq!(r.next_deadline(), None);
        assert!(r.is_empty());
    }
}
