#!/usr/bin/env python3
"""A step-counting agent whose graph state lives in vigil and survives its host.

Each step adds one to a counter and saves the new state as a graph checkpoint
through :class:`vigil_client.VigilCheckpointSaver`, which stores it as a vigil
snapshot (acknowledged once a majority of the copies is fsynced on other hosts).
Heartbeats go out from a background thread. When the host dies, vigil adopts the
agent on another host and, with ``--agent-command``, starts this script there
with the restored snapshot; it resumes counting from its last checkpoint.

Run by vigil's launcher (every node started with):

    vigil agent ... --agent-command \\
        "python3 clients/python/examples/counter_agent.py --id {id} --socket {socket} --snapshot {snapshot}"

or by hand next to a node: ``counter_agent.py --id counter-1 --socket PATH``
(it registers the agent with that node if nobody has).

Without LangGraph, the script plays the graph itself: it calls the saver the way
LangGraph does (``get_tuple`` to resume, ``put`` after each step). With
``--langgraph`` (LangGraph installed), a real one-node ``StateGraph`` compiled
with the saver does the counting.

It prints one JSON object per line on stdout (the launcher appends them to
``DATA_DIR/agents/ID.log``): ``started`` (with the restored count), one
``checkpoint`` per step, and ``stopping`` with the reason. Exit status: 0 when the
node says this copy must stop (another owner, fenced, isolated), on SIGTERM/SIGINT,
or when the node that launched it is gone; 1 when the node failed every request
for ``--give-up-s``; 2 for bad arguments or an agent owned by another node.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TypeVar

try:
    import vigil_client  # noqa: F401
except ImportError:  # running from a checkout without `pip install ./clients/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vigil_client import (  # noqa: E402
    HAVE_LANGGRAPH,
    Heartbeater,
    VigilCheckpointSaver,
    VigilClient,
    make_checkpoint,
)
from vigil_client.errors import MustStop, UnknownAgent, VigilError  # noqa: E402

T = TypeVar("T")


def emit(event: str, **fields: Any) -> None:
    """One NDJSON line on stdout, flushed at once (the log is read while we run)."""
    print(json.dumps({"event": event, **fields}, separators=(",", ":")), flush=True)


def warn(message: str) -> None:
    print(f"counter_agent: {message}", file=sys.stderr, flush=True)


class GiveUp(Exception):
    pass


def until_answered(what: str, attempt: Callable[[], T], give_up_s: float, every: float) -> T:
    """Retries ``attempt`` while it fails with a retryable error (the node is
    starting, restarting or busy), for at most ``give_up_s`` seconds."""
    since = time.monotonic()
    while True:
        try:
            return attempt()
        except VigilError as e:
            if not e.retryable:
                raise
            if time.monotonic() - since >= give_up_s:
                raise GiveUp(f"{what}: no answer for {give_up_s:g} s; last error: {e}") from e
            warn(f"{what} failed, retrying: {e}")
            time.sleep(every)


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--id", default=os.environ.get("VIGIL_AGENT_ID"), help="agent id (launcher: {id})")
    p.add_argument("--socket", default=None, help="node socket (launcher: {socket}; default $VIGIL_SOCKET)")
    p.add_argument(
        "--snapshot",
        default=os.environ.get("VIGIL_SNAPSHOT", ""),
        help="restored snapshot file (launcher: {snapshot}); empty: ask the cluster",
    )
    p.add_argument("--thread", default="main", help="graph thread id")
    p.add_argument("--step-ms", type=int, default=200, help="milliseconds between steps")
    p.add_argument("--heartbeat-ms", type=int, default=300, help="milliseconds between heartbeats")
    p.add_argument("--give-up-s", type=float, default=30.0, help="exit 1 after this long without the node")
    p.add_argument("--meta", default='{"kind":"python-counter"}', help="metadata JSON used when registering")
    p.add_argument("--langgraph", action="store_true", help="count with a real LangGraph StateGraph")
    args = p.parse_args(argv)
    if not args.id:
        p.error("--id is required (or VIGIL_AGENT_ID)")
    if args.step_ms < 1 or args.heartbeat_ms < 1:
        p.error("--step-ms and --heartbeat-ms must be at least 1")
    if args.langgraph and not HAVE_LANGGRAPH:
        p.error("--langgraph needs LangGraph installed (pip install langgraph)")
    return args


class PlainCounter:
    """The graph without LangGraph: one channel ``count``, one node adding one,
    checkpointed after every step exactly as LangGraph would."""

    def __init__(self, saver: VigilCheckpointSaver, thread: str) -> None:
        self.saver = saver
        self.config: Dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        latest = saver.get_tuple(self.config)
        self.checkpoint = latest.checkpoint if latest else None
        if latest is not None:
            self.config = latest.config

    @property
    def count(self) -> int:
        return int(self.checkpoint["channel_values"].get("count", 0)) if self.checkpoint else 0

    def step(self) -> int:
        count = self.count + 1
        checkpoint = make_checkpoint({"count": count}, previous=self.checkpoint)
        metadata = {"source": "loop", "step": count, "writes": {"increment": {"count": count}}}
        # Raises (leaving this object unchanged) if vigil did not acknowledge.
        self.config = self.saver.put(self.config, checkpoint, metadata, checkpoint["channel_versions"])
        self.checkpoint = checkpoint
        return count


class LangGraphCounter:
    """The same counter as a LangGraph ``StateGraph``; each step is one run of
    the graph on the same thread, so LangGraph itself resumes the count."""

    def __init__(self, saver: VigilCheckpointSaver, thread: str) -> None:
        from typing import TypedDict

        from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found]

        class State(TypedDict):
            count: int

        def increment(state: State) -> Dict[str, int]:
            return {"count": state.get("count", 0) + 1}

        builder = StateGraph(State)
        builder.add_node("increment", increment)
        builder.add_edge(START, "increment")
        builder.add_edge("increment", END)
        self.graph = builder.compile(checkpointer=saver)
        self.config = {"configurable": {"thread_id": thread}}
        latest = saver.get_tuple({"configurable": {"thread_id": thread, "checkpoint_ns": ""}})
        self.count = int(latest.checkpoint["channel_values"].get("count", 0)) if latest else 0

    def step(self) -> int:
        self.count = int(self.graph.invoke({}, self.config)["count"])
        return self.count


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    client = VigilClient(args.socket)
    stop = threading.Event()
    signalled = []

    def on_signal(signum: int, _frame: Any) -> None:
        signalled.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    every = args.heartbeat_ms / 1000.0

    # 1. The agent: known to this node and owned here, or registered here now.
    def lookup() -> Any:
        try:
            return client.agent(args.id)
        except UnknownAgent:
            return client.register(args.id, args.meta)

    try:
        agent = until_answered("agent lookup", lookup, args.give_up_s, every)
    except GiveUp as e:
        warn(str(e))
        return 1
    except VigilError as e:
        warn(f"the node refused agent {args.id}: {e}")
        return 2
    if not agent.owned_here:
        warn(f"agent {args.id} is owned by node {agent.owner}; start it there")
        return 2

    # 2. Its state: the snapshot the launcher restored, else the cluster's latest.
    initial: Optional[bytes] = None
    restored_from = "cluster"
    if args.snapshot:
        try:
            initial = Path(args.snapshot).read_bytes()
            restored_from = "file"
        except OSError as e:
            warn(f"cannot read --snapshot {args.snapshot}: {e}; asking the cluster instead")
    saver = VigilCheckpointSaver(client, args.id, initial=initial or None)
    try:
        until_answered("snapshot read", saver.load, args.give_up_s, every)
    except GiveUp as e:
        warn(str(e))
        return 1
    counter = LangGraphCounter(saver, args.thread) if args.langgraph else PlainCounter(saver, args.thread)
    if saver.restored is None and initial is None:
        restored_from = "empty"
    emit(
        "started",
        agent=args.id,
        count=counter.count,
        restored_from=restored_from,
        restored_seq=saver.restored[1] if saver.restored else None,
        epoch=agent.epoch,
        node=agent.owner,
        pid=os.getpid(),
    )

    # 3. Heartbeats in the background; the first one now (the node times it).
    heartbeater = Heartbeater(
        client, args.id, interval=every, give_up_after=args.give_up_s, on_stop=lambda _e: stop.set()
    )
    try:
        until_answered("first heartbeat", heartbeater.start, args.give_up_s, every)
    except MustStop as e:
        emit("stopping", reason=e.code)
        return 0
    except GiveUp as e:
        warn(str(e))
        return 1

    # 4. Count. The parent is the node that launched us (when it did): if it dies,
    # this host is as good as dead for vigil, and another host will run the agent.
    launched = "VIGIL_AGENT_ID" in os.environ
    parent = os.getppid()
    last_ok = time.monotonic()
    reason = "signal"
    status = 0
    try:
        while not stop.wait(args.step_ms / 1000.0):
            if launched and os.getppid() != parent:
                reason = "node_gone"
                break
            try:
                count = counter.step()
            except MustStop as e:
                reason = e.code
                break
            except VigilError as e:
                if not e.retryable:
                    raise
                if time.monotonic() - last_ok >= args.give_up_s:
                    warn(f"no checkpoint acknowledged for {args.give_up_s:g} s; giving up: {e}")
                    reason, status = "gave_up", 1
                    break
                warn(f"checkpoint not saved, retrying the step: {e}")
                continue
            last_ok = time.monotonic()
            put = saver.last_put
            emit("checkpoint", count=count, seq=put.seq if put else None, epoch=put.epoch if put else None)
    finally:
        heartbeater.stop()
    if heartbeater.reason is not None and not signalled:
        err = heartbeater.reason
        reason = getattr(err, "code", type(err).__name__)
        status = 0 if isinstance(err, MustStop) else 1
    elif signalled:
        reason = "signal"
    emit("stopping", reason=reason)
    return status


if __name__ == "__main__":
    sys.exit(main())
