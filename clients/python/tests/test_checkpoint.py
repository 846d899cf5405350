"""VigilCheckpointSaver against real nodes: what LangGraph asks of a saver."""

from __future__ import annotations

import asyncio
import json

import pytest
from vigil_cluster import SETTLE, wait_for

from vigil_client import VigilCheckpointSaver, VigilClient, make_checkpoint
from vigil_client import errors as E
from vigil_client.checkpoint import CheckpointFormatError, CheckpointTooLarge


def _thread(tid: str = "t1", ns: str = "") -> dict:
    return {"configurable": {"thread_id": tid, "checkpoint_ns": ns}}


def _steps(saver: VigilCheckpointSaver, n: int, tid: str = "t1") -> list:
    """n checkpoints on one thread, each the child of the previous, as LangGraph
    makes them; returns the configs put() returned."""
    config = _thread(tid)
    previous = None
    configs = []
    for step in range(1, n + 1):
        cp = make_checkpoint({"count": step}, previous=previous)
        config = saver.put(config, cp, {"source": "loop", "step": step}, cp["channel_versions"])
        configs.append(config)
        previous = cp
    return configs


def test_checkpoints_round_trip_through_the_cluster(n1: VigilClient, n2: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    saver = VigilCheckpointSaver(n1, agent_id)
    assert saver.get_tuple(_thread()) is None and saver.restored is None
    configs = _steps(saver, 3)
    assert [c["configurable"]["thread_id"] for c in configs] == ["t1"] * 3
    assert saver.last_put is not None and saver.last_put.seq == 3 and saver.last_put.epoch == 1

    latest = saver.get_tuple(_thread())
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {"count": 3}
    assert latest.metadata == {"source": "loop", "step": 3}
    assert latest.config == configs[2] and latest.parent_config == configs[1]
    assert latest.pending_writes == []
    first = saver.get_tuple(configs[0])
    assert first is not None and first.checkpoint["channel_values"] == {"count": 1}
    assert first.parent_config is None

    # A fresh saver anywhere in the cluster reads the same history.
    elsewhere = VigilCheckpointSaver(n2, agent_id)
    again = elsewhere.get_tuple(_thread())
    assert again is not None and again.checkpoint == latest.checkpoint
    assert elsewhere.restored == (1, 3)


def test_list_filters_like_langgraph(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    saver = VigilCheckpointSaver(n1, agent_id)
    configs = _steps(saver, 4)
    _steps(saver, 2, tid="t2")
    steps = lambda tuples: [t.metadata["step"] for t in tuples]  # noqa: E731
    assert steps(saver.list(_thread())) == [4, 3, 2, 1]
    assert steps(saver.list(_thread(), limit=2)) == [4, 3]
    assert steps(saver.list(_thread(), before=configs[2])) == [2, 1]
    assert steps(saver.list(_thread(), filter={"step": 2})) == [2]
    assert steps(saver.list(configs[1])) == [2]
    assert len(list(saver.list(None))) == 6
    assert steps(saver.list(_thread("t2"))) == [2, 1]
    assert list(saver.list(_thread("t1", ns="child"))) == []


def test_writes_attach_to_their_checkpoint(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    saver = VigilCheckpointSaver(n1, agent_id)
    (config,) = _steps(saver, 1)
    seq = saver.last_put.seq  # type: ignore[union-attr]
    saver.put_writes(config, [("count", 5), ("log", "a")], task_id="task-b", task_path="~b")
    saver.put_writes(config, [("count", 6)], task_id="task-b", task_path="~b")  # kept: regular
    saver.put_writes(config, [("__error__", "boom")], task_id="task-a", task_path="~a")
    saver.put_writes(config, [("__error__", "boom again")], task_id="task-a", task_path="~a")  # replaced
    assert saver.last_put.seq == seq + 3, "an unchanged write is not put again"  # type: ignore[union-attr]
    got = VigilCheckpointSaver(n1, agent_id).get_tuple(config)
    assert got is not None
    # In LangGraph's order: task path, task id, index.
    assert got.pending_writes == [
        ("task-a", "__error__", "boom again"),
        ("task-b", "count", 5),
        ("task-b", "log", "a"),
    ]
    # LangGraph may save writes before their checkpoint (asynchronous durability).
    child = make_checkpoint({"count": 2}, previous=got.checkpoint)
    child_config = {"configurable": {**config["configurable"], "checkpoint_id": child["id"]}}
    saver.put_writes(child_config, [("count", 3)], task_id="task-c")
    saver.put(config, child, {"step": 2}, child["channel_versions"])
    late = VigilCheckpointSaver(n1, agent_id).get_tuple(_thread())
    assert late is not None and late.checkpoint["id"] == child["id"]
    assert late.pending_writes == [("task-c", "count", 3)]
    with pytest.raises(ValueError):
        saver.put_writes(_thread(), [("x", 1)], task_id="t")  # which checkpoint?


def test_history_is_bounded_and_threads_can_be_deleted(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    saver = VigilCheckpointSaver(n1, agent_id, history=2)
    _steps(saver, 5)
    _steps(saver, 1, tid="keep")
    assert [t.metadata["step"] for t in saver.list(_thread())] == [5, 4]
    saver.delete_thread("t1")
    assert saver.get_tuple(_thread()) is None
    fresh = VigilCheckpointSaver(n1, agent_id)
    assert fresh.get_tuple(_thread()) is None
    assert fresh.get_tuple(_thread("keep")) is not None


def test_a_failed_put_leaves_the_saver_as_it_was(n1: VigilClient, n2: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    saver = VigilCheckpointSaver(n1, agent_id)
    _steps(saver, 2)
    n2.register(agent_id)  # another node takes the agent over

    def refused():
        try:
            _steps(saver, 1, tid="probe")
            return None
        except E.MustStop as e:
            return e

    err = wait_for("n1 to refuse puts for the taken-over agent", SETTLE, refused)
    assert err.code in ("not_owner", "stale_epoch")
    latest = saver.get_tuple(_thread())
    assert latest is not None and latest.metadata["step"] == 2
    # Whatever probes n1 acknowledged before it learned, none of them is on t1.
    assert [t.metadata["step"] for t in saver.list(_thread())] == [2, 1]


def test_foreign_or_oversized_state_is_refused_clearly(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    n1.put_snapshot(agent_id, b'{"agent": "x", "count": 3}')
    with pytest.raises(CheckpointFormatError):
        VigilCheckpointSaver(n1, agent_id).load()
    with pytest.raises(CheckpointFormatError):
        VigilCheckpointSaver(n1, agent_id, initial=b"\x00binary").load()
    assert json.loads(n1.get_snapshot(agent_id).body) == {"agent": "x", "count": 3}

    big = agent_id + "-big"
    n1.register(big)
    saver = VigilCheckpointSaver(VigilClient(n1.socket_path, max_snapshot=3000), big)
    with pytest.raises(CheckpointTooLarge):
        _steps(saver, 50)  # the document grows by one checkpoint per step
    assert saver.last_put is not None and 1 <= saver.last_put.seq < 50
    # The refused document was never sent, and the saver still has what was acknowledged.
    assert n1.agent(big).latest_seq == saver.last_put.seq
    latest = saver.get_tuple(_thread())
    assert latest is not None and latest.metadata["step"] == saver.last_put.seq


def test_the_async_methods_do_the_same(n1: VigilClient, agent_id: str) -> None:
    n1.register(agent_id)
    saver = VigilCheckpointSaver(n1, agent_id)

    async def run() -> list:
        cp = make_checkpoint({"count": 1})
        config = await saver.aput(_thread(), cp, {"step": 1}, cp["channel_versions"])
        await saver.aput_writes(config, [("count", 2)], "task")
        got = await saver.aget_tuple(_thread())
        assert got is not None and got.pending_writes == [("task", "count", 2)]
        listed = [t async for t in saver.alist(_thread())]
        await saver.adelete_thread("t1")
        return listed

    assert len(asyncio.run(run())) == 1
    assert saver.get_tuple(_thread()) is None


def test_a_real_langgraph_graph_resumes_from_vigil(n1: VigilClient, n2: VigilClient, agent_id: str) -> None:
    """Only where LangGraph is installed (it is not a dependency)."""
    pytest.importorskip("langgraph")
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        count: int

    def build(saver: VigilCheckpointSaver):
        b = StateGraph(State)
        b.add_node("increment", lambda s: {"count": s.get("count", 0) + 1})
        b.add_edge(START, "increment")
        b.add_edge("increment", END)
        return b.compile(checkpointer=saver)

    n1.register(agent_id)
    config = {"configurable": {"thread_id": "lg"}}
    graph = build(VigilCheckpointSaver(n1, agent_id))
    assert [graph.invoke({}, config)["count"] for _ in range(3)] == [1, 2, 3]
    # Another host adopts the agent: a new saver reads the state back and the graph
    # goes on from it.
    n2.register(agent_id)
    resumed = build(VigilCheckpointSaver(n2, agent_id))
    assert resumed.invoke({}, config)["count"] == 4
    history = list(resumed.get_state_history(config))
    assert history[0].values == {"count": 4}
