"""Every client call against real nodes, and the answers' types."""

from __future__ import annotations

import re

import pytest
from conftest import MAX_SNAPSHOT
from vigil_cluster import SETTLE, wait_for

from vigil_client import Agent, Heartbeater, VigilClient
from vigil_client import errors as E


def test_health_describes_an_active_member(n1: VigilClient) -> None:
    h = n1.health()
    assert h.status == "ok" and h.healthy
    assert (h.name, h.zone) == ("n1", "az1")
    assert h.live_members == 4 and h.known_members == 4
    assert h.last_event_index >= 1
    assert h.wire_version >= 1 and h.version
    assert re.fullmatch(r"127\.0\.0\.1:\d+", h.addr)


def test_members_lists_itself_first_then_the_others_alive(n2: VigilClient) -> None:
    members = n2.members()
    assert [m.name for m in members] == ["n2", "n1", "n3", "n4"]
    assert members[0].local and not any(m.local for m in members[1:])
    assert {m.name: m.zone for m in members} == {"n1": "az1", "n2": "az2", "n3": "az3", "n4": "az1"}
    assert all(m.state == "alive" and not m.left and m.generation > 0 for m in members)


def test_register_heartbeat_put_and_get_from_another_node(
    n1: VigilClient, n2: VigilClient, n3: VigilClient, agent_id: str
) -> None:
    agent = n1.register(agent_id, {"role": "planner"}, priority=7)
    assert isinstance(agent, Agent)
    assert (agent.id, agent.owner, agent.owner_zone) == (agent_id, "n1", "az1")
    assert agent.owned_here and agent.epoch == 1 and agent.latest_seq == 0
    assert agent.meta == {"role": "planner"} and agent.priority == 7

    ack = n1.heartbeat(agent_id)
    assert (ack.id, ack.epoch) == (agent_id, 1) and ack.deadline_ms > 0

    first = bytes(range(256)) * 4  # every byte value: the body is raw, not text
    put1 = n1.put_snapshot(agent_id, first)
    assert (put1.agent, put1.epoch, put1.seq) == (agent_id, 1, 1)
    # 3 copies wanted: a quorum (2) on disk when it answers.
    assert len(put1.stored_on) >= 2 and len(put1.stored_on) + len(put1.pending) == 3
    put2 = n1.put_snapshot(agent_id, b"second", ack="all")
    assert put2.seq == 2

    latest = n2.get_snapshot(agent_id)
    assert (latest.body, latest.epoch, latest.seq) == (b"second", 1, 2)
    assert re.fullmatch(r"[0-9a-f]{16}", latest.checksum)
    older = n3.get_snapshot(agent_id, seq=1)
    assert (older.body, older.seq) == (first, 1)

    view = n1.agent(agent_id)
    assert view.latest_seq == 2 and view.local_versions[-1] == 2
    assert len(view.holders) == 3 and {h.zone for h in view.holders} >= {"az2", "az3"}
    assert any(a.id == agent_id and a.owned_here for a in n1.agents())
    # The catalog spreads: the others learn the owner.
    seen = wait_for("n3 to learn the agent", SETTLE, lambda: _known(n3, agent_id))
    assert seen.owner == "n1" and not seen.owned_here and seen.state == "remote"


def _known(client: VigilClient, agent_id: str):
    try:
        return client.agent(agent_id)
    except E.UnknownAgent:
        return None


def test_ack_local_and_client_side_checks(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    assert n1.put_snapshot(agent_id, b"x", ack="local").seq == 1
    with pytest.raises(ValueError):
        n1.put_snapshot(agent_id, b"x", ack="most")
    small = VigilClient(n1.socket_path, max_snapshot=10)
    with pytest.raises(E.SnapshotTooLarge) as err:
        small.put_snapshot(agent_id, b"y" * 11)
    assert err.value.status == 413 and "before sending" in err.value.message
    assert n1.agent(agent_id).latest_seq == 1, "the refused put never reached the node"


def test_heartbeater_beats_in_the_background_and_stops_cleanly(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    with Heartbeater(n1, agent_id, interval=0.05) as hb:
        assert hb.running and hb.beats == 1 and hb.last_ack is not None
        wait_for("5 heartbeats", SETTLE, lambda: hb.beats >= 5)
        wait_for("the owner to see the agent running", SETTLE, lambda: n1.agent(agent_id).state == "running")
    assert not hb.running, "stop() joins the thread: no heartbeat goes out after it"
    assert not hb.must_stop.is_set() and hb.reason is None
    hb.stop()  # idempotent


def test_heartbeater_stops_by_itself_when_the_agent_is_isolated(
    n1: VigilClient, n2: VigilClient, agent_id: str
) -> None:
    n1.register(agent_id)
    stopped = []
    hb = n1.heartbeater(agent_id, interval=0.05, on_stop=stopped.append)
    try:
        view = n2.isolate_agent(agent_id)  # any node forwards it to the owner
        assert view.id == agent_id
        assert hb.must_stop.wait(SETTLE), "the heartbeater noticed the isolation"
        assert isinstance(hb.reason, E.AgentIsolated) and isinstance(hb.reason, E.MustStop)
        assert stopped == [hb.reason]
        wait_for("the thread to end", SETTLE, lambda: not hb.running)
        with pytest.raises(E.AgentIsolated):
            hb.check()
        with pytest.raises(E.AgentIsolated) as err:
            n1.put_snapshot(agent_id, b"state")
        assert (err.value.status, err.value.code) == (409, "agent_isolated")
        assert n1.agent(agent_id).isolated
    finally:
        hb.stop()
    n1.recover_agent(agent_id)
    wait_for("heartbeats accepted again", SETTLE, lambda: _beats(n1, agent_id))
    assert not n1.agent(agent_id).isolated


def _beats(client: VigilClient, agent_id: str) -> bool:
    try:
        client.heartbeat(agent_id)
        return True
    except E.AgentIsolated:
        return False


def test_a_takeover_makes_the_old_owner_say_not_owner(
    n1: VigilClient, n2: VigilClient, agent_id: str
) -> None:
    n1.register(agent_id)
    n1.put_snapshot(agent_id, b"on n1")
    taken = n2.register(agent_id)
    assert taken.owner == "n2" and taken.owned_here and taken.epoch == 2
    # The new owner continues the seqs.
    assert n2.put_snapshot(agent_id, b"on n2").seq == 2

    def refused():
        try:
            n1.heartbeat(agent_id)
            return None  # n1 has not learned yet
        except E.MustStop as e:
            return e

    err = wait_for("n1 to refuse the old copy's heartbeat", SETTLE, refused)
    assert isinstance(err, E.NotOwner) and isinstance(err, E.Conflict)
    assert (err.status, err.code) == (409, "not_owner") and "n2" in err.message
    assert not err.retryable
    with pytest.raises(E.MustStop) as put_err:
        n1.put_snapshot(agent_id, b"stale")
    assert put_err.value.code in ("not_owner", "stale_epoch")
    snap = n1.get_snapshot(agent_id)
    assert (snap.body, snap.epoch, snap.seq) == (b"on n2", 2, 2)


def test_error_answers_map_to_typed_exceptions(n1: VigilClient, agent_id: str) -> None:
    cases = [
        (lambda: n1.agent("no-such-agent"), E.UnknownAgent, 404, "unknown_agent"),
        (lambda: n1.heartbeat("no-such-agent"), E.UnknownAgent, 404, "unknown_agent"),
        (lambda: n1.put_snapshot("no-such-agent", b"x"), E.UnknownAgent, 404, "unknown_agent"),
        (lambda: n1.get_snapshot("no-such-agent"), E.UnknownAgent, 404, "unknown_agent"),
        (lambda: n1.register("bad/id"), E.BadAgentId, 400, "bad_agent_id"),
        (lambda: n1.register("x" * 129), E.BadAgentId, 400, "bad_agent_id"),
        (lambda: n1.register(agent_id, b"{not json"), E.BadMeta, 400, "bad_meta"),
        (lambda: n1.register(agent_id, {"x": "a" * 5000}), E.MetaTooLarge, 413, "meta_too_large"),
        (lambda: n1.register(agent_id, priority=2**40), E.BadRequest, 400, "bad_request"),
        (lambda: n1.call("GET", "/v1/nope"), E.NotFound, 404, "not_found"),
        (lambda: n1.call("DELETE", "/v1/health"), E.MethodNotAllowed, 405, "method_not_allowed"),
        (lambda: n1.call("GET", "/v1/events?since=abc"), E.BadRequest, 400, "bad_request"),
    ]
    for call, cls, status, code in cases:
        with pytest.raises(cls) as err:
            call()
        assert (err.value.status, err.value.code) == (status, code), err.value
        assert err.value.message and str(err.value).startswith(f"{status} {code}: ")
        assert not err.value.retryable
    n1.register(agent_id)
    with pytest.raises(E.NotFound) as nothing:
        n1.get_snapshot(agent_id)  # registered, nothing put yet
    assert nothing.value.code == "not_found" and not isinstance(nothing.value, E.UnknownAgent)
    n1.put_snapshot(agent_id, b"one")
    with pytest.raises(E.NotFound):
        n1.get_snapshot(agent_id, seq=99)
    big = VigilClient(n1.socket_path, max_snapshot=64 * MAX_SNAPSHOT)
    # Just over, and far over (the node answers before reading the body and closes;
    # the client still reports its answer, not a broken pipe).
    for size in (MAX_SNAPSHOT + 1, 64 * MAX_SNAPSHOT):
        with pytest.raises(E.SnapshotTooLarge) as err:
            big.put_snapshot(agent_id, b"z" * size)
        assert (err.value.status, err.value.code) == (413, "snapshot_too_large")


def test_answers_over_the_clients_limits_are_refused(n1: VigilClient, agent_id: str) -> None:
    with pytest.raises(E.ResponseTooLarge):
        VigilClient(n1.socket_path, max_response=64).members()
    n1.register(agent_id)
    n1.put_snapshot(agent_id, b"q" * 1000)
    with pytest.raises(E.ResponseTooLarge):
        VigilClient(n1.socket_path, max_snapshot=999).get_snapshot(agent_id)
    assert len(VigilClient(n1.socket_path, max_snapshot=1000).get_snapshot(agent_id).body) == 1000


def test_node_isolation_and_metrics(n3: VigilClient) -> None:
    assert (n3.isolate_node().name, n3.isolate_node().isolated) == ("n3", True)
    recovered = n3.recover_node()
    assert (recovered.name, recovered.isolated) == ("n3", False)
    text = n3.metrics()
    assert "# TYPE vigil_" in text and "vigil_api_requests_total" in text
