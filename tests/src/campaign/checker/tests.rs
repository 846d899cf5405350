//! One clean history that exercises the legal behaviours the rules must not flag, and
//! per anomaly kind the smallest change to it that breaks exactly that rule.

use std::collections::BTreeMap;

use super::*;
use crate::campaign::history::{EndState, FaultRecord, NodeExit, ReadBack};

fn put(
    agent: &str,
    node: &str,
    epoch: u64,
    seq: u64,
    nonce: u64,
    sent_ms: u64,
    acked_ms: u64,
) -> AckedPut {
    AckedPut {
        agent: agent.into(),
        node: node.into(),
        epoch,
        seq,
        nonce,
        sent_ms,
        acked_ms,
    }
}

fn ev(
    node: &str,
    generation: u64,
    time_ms: u64,
    agent: &str,
    epoch: u64,
    kind: AgentEventKind,
) -> AgentEvent {
    AgentEvent {
        node: node.into(),
        generation,
        time_ms,
        agent: agent.into(),
        epoch,
        kind,
    }
}

fn adopted(seq: u64, previous: &str) -> AgentEventKind {
    AgentEventKind::Adopted {
        seq,
        previous: previous.into(),
    }
}

fn fault(what: &str, start_ms: u64, end_ms: Option<u64>) -> FaultRecord {
    FaultRecord {
        what: what.into(),
        start_ms,
        end_ms,
    }
}

fn ok(via: &str, epoch: u64, seq: u64, nonce: Option<u64>) -> ReadBack {
    ReadBack {
        via: via.into(),
        result: Ok(ReadSnapshot { epoch, seq, nonce }),
    }
}

fn err(via: &str, error: &str) -> ReadBack {
    ReadBack {
        via: via.into(),
        result: Err(error.into()),
    }
}

/// Three nodes, three agents, every legal behaviour the rules must let through:
/// - a1 (n1, epoch 1): puts seq 1..3; a fourth put (nonce 4) gets no answer but
///   reaches the holders as seq 4; n1 is killed; n2 adopts at epoch 2 restoring seq 4
///   (an unacknowledged put survived) and goes on with seq 5; a put that fails
///   consumes seq 6; the next acknowledged one is seq 7. One read at the end fails.
/// - a2 (n2, epoch 1): fenced during a partition, then unfenced; a put in flight when
///   the fence came (sent before it) and one sent while fenced but acknowledged after
///   the fence lifted are both fine.
/// - a3 (n3, epoch 1): fenced, then n3 is killed and restarted on its data dir (new
///   generation, no `agent_unfenced`) and reclaims the agent at the same epoch; its
///   next put is acknowledged. A last put gets no answer but survives as seq 3.
fn clean() -> History {
    let end = EndState {
        quiet_ms: 5000,
        bound_ms: 30_000,
        live: vec!["n1".into(), "n2".into(), "n3".into()],
        converged_ms: Some(6000),
        settled_ms: Some(7000),
        unsettled: BTreeMap::new(),
        reads: BTreeMap::from([
            (
                "a1".into(),
                vec![
                    ok("n1", 2, 7, Some(7)),
                    ok("n2", 2, 7, Some(7)),
                    ok("n3", 2, 7, Some(7)),
                ],
            ),
            (
                "a2".into(),
                vec![
                    ok("n1", 1, 4, Some(4)),
                    ok("n2", 1, 4, Some(4)),
                    ok("n3", 1, 4, Some(4)),
                ],
            ),
            (
                "a3".into(),
                vec![
                    ok("n1", 1, 3, Some(3)),
                    ok("n2", 1, 3, Some(3)),
                    ok("n3", 1, 3, Some(3)),
                ],
            ),
        ]),
        owners: BTreeMap::from([
            ("a1".into(), vec![("n2".into(), 2)]),
            ("a2".into(), vec![("n2".into(), 1)]),
            ("a3".into(), vec![("n3".into(), 1)]),
        ]),
    };
    History {
        seed: 7,
        nodes: vec!["n1".into(), "n2".into(), "n3".into()],
        agents: vec!["a1".into(), "a2".into(), "a3".into()],
        copies: 3,
        puts: vec![
            put("a1", "n1", 1, 1, 1, 1000, 1010),
            put("a2", "n2", 1, 1, 1, 1000, 1010),
            put("a3", "n3", 1, 1, 1, 1000, 1010),
            put("a1", "n1", 1, 2, 2, 1100, 1110),
            put("a1", "n1", 1, 3, 3, 1200, 1210),
            put("a2", "n2", 1, 2, 2, 1990, 2005),
            put("a2", "n2", 1, 3, 3, 2400, 2550),
            put("a2", "n2", 1, 4, 4, 2600, 2610),
            put("a1", "n2", 2, 5, 5, 3100, 3110),
            put("a1", "n2", 2, 7, 7, 3300, 3310),
            put("a3", "n3", 1, 2, 2, 4600, 4610),
        ],
        events: vec![
            ev("n1", 1, 100, "a1", 1, AgentEventKind::Owned),
            ev("n2", 1, 100, "a2", 1, AgentEventKind::Owned),
            ev("n3", 1, 100, "a3", 1, AgentEventKind::Owned),
            ev("n2", 1, 2000, "a2", 1, AgentEventKind::Fenced),
            ev("n2", 1, 2500, "a2", 1, AgentEventKind::Unfenced),
            ev("n2", 1, 3000, "a1", 2, adopted(4, "n1")),
            ev("n3", 1, 4100, "a3", 1, AgentEventKind::Fenced),
            ev("n3", 2, 4500, "a3", 1, AgentEventKind::Owned),
        ],
        faults: vec![
            fault("kill -9 n1", 1400, Some(5000)),
            fault("partition {n2} | {n1,n3}", 1900, Some(2450)),
            fault("kill -9 n3", 4200, Some(4400)),
        ],
        end: Some(end),
        aborted: None,
        node_exits: Vec::new(),
    }
}

fn end(h: &mut History) -> &mut EndState {
    h.end.as_mut().expect("the clean history has an end state")
}

fn kinds(report: &Report) -> Vec<&'static str> {
    report.anomalies.iter().map(Anomaly::kind).collect()
}

/// Checks `h` and asserts it shows exactly one anomaly, of `kind`; returns it.
fn only(h: &History, kind: &str) -> Anomaly {
    let report = check(h);
    assert_eq!(kinds(&report), [kind], "{report}");
    let text = report.to_string();
    assert!(text.ends_with(&report.anomalies[0].to_string()), "{text}");
    assert!(text.contains("1 anomaly:"), "{text}");
    report.anomalies[0].clone()
}

#[test]
fn clean_history_has_no_anomaly() {
    let report = check(&clean());
    assert_eq!(report.anomalies, [], "{report}");
    assert!(report.is_clean());
    let s = &report.summary;
    assert_eq!(
        (s.nodes, s.agents, s.puts_acknowledged, s.adoptions),
        (3, 3, 11, 1)
    );
    assert_eq!((s.fences, s.unfences, s.restarts, s.faults), (2, 1, 2, 3));
    assert_eq!((s.reads_ok, s.reads_failed), (9, 0));
    let text = report.to_string();
    assert!(text.ends_with("0 anomalies"), "{text}");
}

#[test]
fn a_failed_read_is_noted_before_the_cluster_settles_and_an_anomaly_after() {
    let mut h = clean();
    end(&mut h).reads.get_mut("a1").expect("a1 is read")[2] =
        err("n3", "unavailable: n1 timed out");
    let Anomaly::ReadFailedAfterSettle { read } = only(&h, "read_failed_after_settle") else {
        unreachable!()
    };
    assert_eq!((read.agent.as_str(), read.via.as_str()), ("a1", "n3"));
    // Not settled: the read is only noted (the not-settled anomaly is the finding).
    end(&mut h).settled_ms = None;
    let report = check(&h);
    assert_eq!(kinds(&report), ["not_settled"], "{report}");
    assert_eq!(report.failed_reads.len(), 1);
    assert!(report.to_string().contains("a1 via n3: unavailable"));
}

#[test]
fn an_aborted_campaign_and_a_node_that_exited_on_its_own_are_anomalies() {
    let mut h = clean();
    h.aborted = Some("kill -9 n2, restart on its data dir: node n2: exited".into());
    only(&h, "campaign_aborted");
    let mut h = clean();
    h.node_exits.push(NodeExit {
        node: "n3".into(),
        noticed_ms: 4000,
        status: "signal: 6 (SIGABRT)".into(),
    });
    let Anomaly::NodeExited { exit } = only(&h, "node_exited") else {
        unreachable!()
    };
    assert_eq!(exit.node, "n3");
}

#[test]
fn rto_runs_from_the_fault_on_the_previous_owner_that_was_still_in_effect() {
    let report = check(&clean());
    // The partition named n1 too, but had been healed before the adoption.
    assert_eq!(
        report.rto,
        [AdoptionRto {
            agent: "a1".into(),
            epoch: 2,
            node: "n2".into(),
            previous: "n1".into(),
            fault: "kill -9 n1".into(),
            fault_start_ms: 1400,
            adopted_ms: 3000,
            rto_ms: 1600,
        }]
    );
    let spread = Spread {
        count: 1,
        min: 1600,
        median: 1600,
        max: 1600,
    };
    assert_eq!(report.summary.rto_ms, Some(spread));
    assert!(report.to_string().contains("1600 ms after `kill -9 n1`"));

    let mut h = clean();
    h.faults[0].end_ms = Some(2900);
    assert_eq!(check(&h).rto, []);
}

#[test]
fn report_is_deterministic_and_round_trips_through_json() {
    let mut h = clean();
    h.end = None;
    h.puts.push(put("a2", "n3", 1, 9, 9, 2700, 2710));
    let report = check(&h);
    assert!(report.anomalies.len() > 1, "{report}");
    assert_eq!(check(&h), report);
    let json = serde_json::to_string(&report).expect("serialize the report");
    let back: Report = serde_json::from_str(&json).expect("deserialize the report");
    assert_eq!(back, report);
    assert!(json.contains(r#""kind":"two_owners_in_epoch""#), "{json}");
}

#[test]
fn duplicated_events_are_counted_once() {
    let mut h = clean();
    h.events.extend(h.events.clone());
    let report = check(&h);
    assert_eq!(report, check(&clean()));
}

#[test]
fn missing_end_state_is_reported_not_a_panic() {
    let mut h = clean();
    h.end = None;
    let a = only(&h, "campaign_did_not_finish");
    assert_eq!(
        a,
        Anomaly::CampaignDidNotFinish {
            last_record_ms: Some(5000)
        }
    );
    assert_eq!(check(&History::default()).anomalies.len(), 1);
}

#[test]
fn read_below_the_latest_acknowledged_seq_is_a_lost_snapshot() {
    let mut h = clean();
    end(&mut h).reads.get_mut("a1").expect("a1 read")[1] = ok("n2", 2, 5, Some(5));
    let Anomaly::LostAcknowledged {
        agent,
        acked,
        via,
        read,
    } = only(&h, "lost_acknowledged")
    else {
        unreachable!()
    };
    assert_eq!(
        (agent.as_str(), acked.seq, via.as_str(), read.seq),
        ("a1", 7, "n2", 5)
    );
}

#[test]
fn latest_acknowledged_seq_with_other_content_is_replaced() {
    let mut h = clean();
    end(&mut h).reads.get_mut("a1").expect("a1 read")[1] = ok("n2", 2, 7, Some(99));
    only(&h, "replaced_acknowledged");
}

#[test]
fn read_above_the_acks_must_be_a_body_the_workload_wrote_and_did_not_see_acknowledged() {
    let mut h = clean();
    end(&mut h).reads.get_mut("a3").expect("a3 read")[0] = ok("n1", 1, 3, None);
    let Anomaly::UnexplainedRead { same_nonce, .. } = only(&h, "unexplained_read") else {
        unreachable!()
    };
    assert_eq!(same_nonce, None);

    let mut h = clean();
    end(&mut h).reads.get_mut("a3").expect("a3 read")[0] = ok("n1", 1, 3, Some(2));
    let Anomaly::UnexplainedRead { same_nonce, .. } = only(&h, "unexplained_read") else {
        unreachable!()
    };
    assert_eq!(same_nonce.map(|p| p.seq), Some(2));
}

#[test]
fn agent_whose_every_read_failed_is_unreadable() {
    let mut h = clean();
    end(&mut h).reads.insert(
        "a2".into(),
        vec![err("n1", "unavailable"), err("n2", "not_found")],
    );
    let Anomaly::Unreadable { errors, .. } = only(&h, "unreadable") else {
        unreachable!()
    };
    assert_eq!(errors.len(), 2);

    // Not read at all: the same.
    let mut h = clean();
    end(&mut h).reads.remove("a2");
    only(&h, "unreadable");

    // An agent with nothing acknowledged has nothing to lose.
    let mut h = clean();
    h.agents.push("a4".into());
    end(&mut h)
        .reads
        .insert("a4".into(), vec![err("n1", "not_found")]);
    let report = check(&h);
    assert_eq!(report.anomalies, [], "{report}");
    assert_eq!(report.failed_reads.len(), 1);
}

#[test]
fn adoption_must_restore_every_put_acknowledged_at_an_older_epoch() {
    let mut h = clean();
    h.events[5] = ev("n2", 1, 3000, "a1", 2, adopted(2, "n1"));
    let Anomaly::AdoptionBehindAck {
        restored_seq,
        acked,
        ..
    } = only(&h, "adoption_behind_ack")
    else {
        unreachable!()
    };
    assert_eq!((restored_seq, acked.seq, acked.epoch), (2, 3, 1));

    // Regardless of timing: a zombie's ack at the older epoch after the adoption
    // counts too (and is the older-epoch rule's as well).
    let mut h = clean();
    h.puts.push(put("a1", "n1", 1, 6, 6, 3150, 3160));
    assert_eq!(
        kinds(&check(&h)),
        ["adoption_behind_ack", "older_epoch_acked_after_newer"]
    );
}

#[test]
fn adopter_must_number_its_puts_above_the_restored_seq() {
    let mut h = clean();
    h.events[5] = ev("n2", 1, 3000, "a1", 2, adopted(5, "n1"));
    let Anomaly::PutNotAboveRestored { put, .. } = only(&h, "put_not_above_restored") else {
        unreachable!()
    };
    assert_eq!((put.seq, put.epoch), (5, 2));
}

#[test]
fn two_nodes_acknowledging_at_one_epoch_are_two_owners() {
    let mut h = clean();
    // Seq 6 fits between n2's seq 5 and seq 7: only the owner rule sees it.
    h.puts.push(put("a1", "n3", 2, 6, 6, 3150, 3200));
    let Anomaly::TwoOwnersInEpoch { epoch, claims, .. } = only(&h, "two_owners_in_epoch") else {
        unreachable!()
    };
    assert_eq!(epoch, 2);
    let nodes: Vec<_> = claims
        .iter()
        .map(|c| (c.node.as_str(), c.how.as_str()))
        .collect();
    assert_eq!(nodes, [("n2", "adopted"), ("n3", "put")]);
}

#[test]
fn older_epoch_acknowledged_after_a_newer_one_is_two_live_owners() {
    let mut h = clean();
    // A zombie n1 at epoch 1 acknowledges seq 4 after n2's epoch 2 seq 5 was acked.
    h.puts.push(put("a1", "n1", 1, 4, 6, 3150, 3160));
    let Anomaly::OlderEpochAckedAfterNewer { newer, older, .. } =
        only(&h, "older_epoch_acked_after_newer")
    else {
        unreachable!()
    };
    assert_eq!(
        (newer.epoch, newer.seq, older.epoch, older.seq),
        (2, 5, 1, 4)
    );

    // Sent in the same millisecond as the newer ack: not ordered, not flagged.
    let mut h = clean();
    h.puts.push(put("a1", "n1", 1, 4, 6, 3110, 3160));
    assert_eq!(kinds(&check(&h)), Vec::<&str>::new());
}

#[test]
fn put_acknowledged_by_a_fenced_owner_is_flagged() {
    let mut h = clean();
    // The fence now lifts after the put sent at 2400 was acknowledged at 2550.
    h.events[4].time_ms = 2605;
    let Anomaly::AckedWhileFenced { fence, put, .. } = only(&h, "acked_while_fenced") else {
        unreachable!()
    };
    assert_eq!((fence.time_ms, put.seq), (2000, 3));

    // n3's restart by the campaign (its kill -9, undone at 4400) lifts its fence;
    // a new generation alone (a rejoin in the same process, which keeps its fences)
    // does not, so without the restart its put is flagged.
    let mut h = clean();
    h.events[7] = ev("n3", 2, 4500, "a4", 1, AgentEventKind::Owned);
    assert_eq!(check(&h).anomalies, []);
    h.faults.retain(|f| f.what != "kill -9 n3");
    assert!(kinds(&check(&h)).contains(&"acked_while_fenced"));
}

#[test]
fn two_live_owners_at_the_end_are_flagged() {
    let mut h = clean();
    end(&mut h)
        .owners
        .insert("a1".into(), vec![("n2".into(), 2), ("n1".into(), 1)]);
    only(&h, "owners_at_end");
}

#[test]
fn put_sent_after_an_ack_needs_a_higher_seq() {
    let mut h = clean();
    // a2's puts at 2400 and 2600 swap seqs: the later one gets seq 3 after seq 4.
    h.puts[6] = put("a2", "n2", 1, 4, 3, 2400, 2550);
    h.puts[7] = put("a2", "n2", 1, 3, 4, 2600, 2610);
    for r in end(&mut h).reads.get_mut("a2").expect("a2 reads") {
        r.result = Ok(ReadSnapshot {
            epoch: 1,
            seq: 4,
            nonce: Some(3),
        });
    }
    let Anomaly::SeqNotIncreasing { earlier, later, .. } = only(&h, "seq_not_increasing") else {
        unreachable!()
    };
    assert_eq!((earlier.seq, later.seq), (4, 3));
}

#[test]
fn same_epoch_and_seq_acknowledged_with_two_contents_conflict() {
    let mut h = clean();
    h.puts.push(put("a2", "n2", 1, 3, 9, 2400, 2560));
    let Anomaly::ConflictingAcks {
        epoch, seq, puts, ..
    } = only(&h, "conflicting_acks")
    else {
        unreachable!()
    };
    assert_eq!((epoch, seq, puts.len()), (1, 3, 2));

    // The same put recorded twice is not a conflict.
    let mut h = clean();
    h.puts.push(h.puts[6].clone());
    assert_eq!(check(&h).anomalies, []);
}

#[test]
fn adoptions_in_time_order_have_rising_epochs() {
    let mut h = clean();
    h.events.push(ev("n2", 1, 2900, "a1", 3, adopted(7, "n1")));
    let Anomaly::AdoptionEpochWentBackwards { earlier, later, .. } =
        only(&h, "adoption_epoch_went_backwards")
    else {
        unreachable!()
    };
    assert_eq!((earlier.epoch, later.epoch), (3, 2));
}

#[test]
fn read_at_an_epoch_below_the_highest_acknowledged_is_behind() {
    let mut h = clean();
    end(&mut h).reads.get_mut("a1").expect("a1 read")[0] = ok("n1", 1, 8, Some(8));
    let Anomaly::ReadEpochBehind { acked, read, .. } = only(&h, "read_epoch_behind") else {
        unreachable!()
    };
    assert_eq!((acked.epoch, read.epoch), (2, 1));
}

#[test]
fn convergence_must_come_within_the_bound() {
    let mut h = clean();
    end(&mut h).converged_ms = Some(5000 + 30_001);
    only(&h, "not_converged");

    let mut h = clean();
    end(&mut h).converged_ms = None;
    only(&h, "not_converged");

    let mut h = clean();
    end(&mut h).converged_ms = Some(5000 + 30_000);
    assert_eq!(check(&h).anomalies, []);
}

#[test]
fn agents_must_settle_within_the_bound_and_the_listing_is_capped() {
    let mut h = clean();
    let e = end(&mut h);
    e.settled_ms = None;
    e.unsettled = (0..12)
        .map(|i| (format!("a{i:02}"), "2 of 3 copies".to_owned()))
        .collect();
    let Anomaly::NotSettled { unsettled, .. } = only(&h, "not_settled") else {
        unreachable!()
    };
    assert_eq!(unsettled.len(), 12);
    let text = check(&h).to_string();
    assert!(text.contains("a09: 2 of 3 copies"), "{text}");
    assert!(!text.contains("a10:"), "{text}");
    assert!(text.contains("... and 2 more"), "{text}");

    let mut h = clean();
    end(&mut h).settled_ms = Some(40_000);
    only(&h, "not_settled");
}

mod legal {
    //! Random histories of a model that only does legal things must check clean: the
    //! guard against false alarms.

    use proptest::prelude::*;

    use super::*;

    const NODES: [&str; 3] = ["n1", "n2", "n3"];

    /// One agent's life, driven by `ops`, on a clock that `t` carries across agents.
    struct Agent {
        name: String,
        owner: usize,
        generation: [u64; 3],
        epoch: u64,
        next_seq: u64,
        /// The newest snapshot on the holders: (epoch, seq, nonce).
        latest: (u64, u64, u64),
        nonce: u64,
    }

    fn run(agent: &str, ops: &[(u8, u8)], t: &mut u64, h: &mut History) {
        let mut a = Agent {
            name: agent.into(),
            owner: 0,
            generation: [1; 3],
            epoch: 1,
            next_seq: 1,
            latest: (1, 0, 0),
            nonce: 0,
        };
        h.agents.push(a.name.clone());
        h.events
            .push(ev(NODES[0], 1, *t, agent, 1, AgentEventKind::Owned));
        for &(op, d) in ops {
            *t += 1 + u64::from(d);
            let owner = NODES[a.owner];
            match op % 6 {
                // An acknowledged put, or one that reached the holders unanswered.
                0..=2 => {
                    a.nonce += 1;
                    let seq = a.next_seq;
                    a.next_seq += 1;
                    a.latest = (a.epoch, seq, a.nonce);
                    let sent = *t;
                    *t += 1 + u64::from(d % 7);
                    if op % 6 != 2 {
                        h.puts
                            .push(put(agent, owner, a.epoch, seq, a.nonce, sent, *t));
                    }
                }
                // A put that failed before the holders: it consumed a seq.
                3 => {
                    a.nonce += 1;
                    a.next_seq += 1;
                }
                // The owner is killed and another node adopts what the holders have.
                4 => {
                    let previous = owner;
                    h.faults
                        .push(fault(&format!("kill -9 {previous}"), *t, None));
                    *t += 100 + u64::from(d);
                    a.owner = (a.owner + 1 + usize::from(d % 2)) % NODES.len();
                    a.epoch += 1;
                    a.next_seq = a.latest.1 + 1;
                    let g = a.generation[a.owner];
                    h.events.push(ev(
                        NODES[a.owner],
                        g,
                        *t,
                        agent,
                        a.epoch,
                        adopted(a.latest.1, previous),
                    ));
                }
                // Fenced, then unfenced or restarted (and reclaimed).
                _ => {
                    let g = a.generation[a.owner];
                    h.events
                        .push(ev(owner, g, *t, agent, a.epoch, AgentEventKind::Fenced));
                    *t += 1 + u64::from(d);
                    if d % 2 == 0 {
                        h.events
                            .push(ev(owner, g, *t, agent, a.epoch, AgentEventKind::Unfenced));
                    } else {
                        a.generation[a.owner] += 1;
                        let g = a.generation[a.owner];
                        h.events
                            .push(ev(owner, g, *t, agent, a.epoch, AgentEventKind::Owned));
                    }
                }
            }
        }
        let end = h.end.get_or_insert_with(|| EndState {
            quiet_ms: 0,
            bound_ms: 1000,
            live: NODES.iter().map(|n| n.to_string()).collect(),
            converged_ms: None,
            settled_ms: None,
            unsettled: BTreeMap::new(),
            reads: BTreeMap::new(),
            owners: BTreeMap::new(),
        });
        let (epoch, seq, nonce) = a.latest;
        let reads = NODES
            .iter()
            .map(|via| ok(via, epoch, seq, (seq > 0).then_some(nonce)))
            .collect();
        end.reads.insert(agent.into(), reads);
        end.owners
            .insert(agent.into(), vec![(NODES[a.owner].into(), a.epoch)]);
    }

    proptest! {
        #[test]
        fn legal_histories_check_clean(
            agents in prop::collection::vec(prop::collection::vec((0u8..6, 0u8..50), 0..40), 1..4)
        ) {
            let mut h = History { seed: 1, copies: 3, ..History::default() };
            h.nodes = NODES.iter().map(|n| n.to_string()).collect();
            let mut t = 1000;
            for (i, ops) in agents.iter().enumerate() {
                run(&format!("a{i}"), ops, &mut t, &mut h);
            }
            let end = h.end.as_mut().expect("an end state");
            end.quiet_ms = t;
            end.converged_ms = Some(t + 10);
            end.settled_ms = Some(t + 20);
            let report = check(&h);
            prop_assert!(report.is_clean(), "{report}\n{h:#?}");
        }
    }
}
