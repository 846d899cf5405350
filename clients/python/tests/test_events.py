"""The NDJSON event stream: backlog, live events, idle timeouts and resuming."""

from __future__ import annotations

import pytest

from vigil_client import Event, VigilClient
from vigil_client import errors as E


def test_the_stream_starts_with_the_nodes_own_start(n1: VigilClient) -> None:
    with n1.events() as stream:
        first = stream.next(timeout=10)
        assert isinstance(first, Event)
        assert (first.index, first.type, first.node) == (1, "local_started", "n1")
        assert first.generation > 0 and first.time_ms > 0 and first.time.endswith("Z")
        second = stream.next(timeout=10)
        assert second is not None and second.index == 2
        assert stream.last_index == 2


def test_an_idle_timeout_leaves_the_stream_usable(n1: VigilClient, agent_id: str) -> None:
    since = n1.health().last_event_index
    with n1.events(since, idle_timeout=0.2) as stream:
        # Other tests' agents may still cause events; read until a quiet moment.
        for _ in range(200):
            try:
                stream.next()
            except E.VigilTimeout:
                break
        else:
            pytest.fail("the node never went quiet for 0.2 s")
        n1.register(agent_id)  # -> agent_owned on n1
        for _ in range(50):
            event = stream.next(timeout=10)
            assert event is not None and event.index > since
            if event.type == "agent_owned" and event.agent == agent_id:
                assert event.epoch == 1
                break
        else:
            pytest.fail("no agent_owned event for the registered agent")


def test_since_resumes_after_the_last_event_seen(n2: VigilClient) -> None:
    with n2.events() as stream:
        seen = [stream.next(timeout=10) for _ in range(3)]
    assert [e.index for e in seen if e] == [1, 2, 3]
    with n2.events(since=2) as stream:
        resumed = stream.next(timeout=10)
    assert resumed is not None and resumed.index == 3 and resumed == seen[2]


def test_watch_follows_live_events(n3: VigilClient, agent_id: str) -> None:
    since = n3.health().last_event_index
    n3.register(agent_id)
    for event in n3.watch(since, idle_timeout=10):
        assert event.index > since
        if event.type == "agent_owned" and event.agent == agent_id:
            break


def test_a_since_beyond_the_last_event_means_the_node_restarted(n1: VigilClient) -> None:
    with pytest.raises(E.IndexFromFuture) as err:
        n1.events(since=10**9)
    assert (err.value.status, err.value.code) == (410, "index_from_future")
    assert isinstance(err.value, E.Gone)
