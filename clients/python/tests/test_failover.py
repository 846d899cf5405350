"""End to end: the example Python agent, launched by vigil, survives its host.

Four nodes in three zones launch ``examples/counter_agent.py`` for the agents
they own (``--agent-command``). The agent is registered on n1 and counts there,
checkpointing every step through VigilCheckpointSaver. Then n1 dies with its
agent (SIGKILL to both), and the test checks that another node adopts the agent
at epoch 2, starts the example there with the restored snapshot, and that the
counter goes on from the last acknowledged checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from vigil_cluster import Cluster, Node, wait_for

from vigil_client import VigilCheckpointSaver, VigilClient
from vigil_client import errors as E

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "counter_agent.py"
NODES = [("n1", "az1"), ("n2", "az2"), ("n3", "az3"), ("n4", "az1")]
AGENT = "counter-1"
#: Bounds only: detection, election and adoption take a few seconds on a busy machine.
WAIT = 30.0


def agent_log(node: Node) -> List[Dict[str, Any]]:
    """The example's JSON lines as ``node``'s launcher logged them (its stderr
    goes to the same file; those lines are skipped)."""
    path = node.data_dir / "agents" / f"{AGENT}.log"
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "event" in obj:
            lines.append(obj)
    return lines


def first(lines: List[Dict[str, Any]], event: str, **match: Any) -> Optional[Dict[str, Any]]:
    for line in lines:
        if line["event"] == event and all(line.get(k) == v for k, v in match.items()):
            return line
    return None


def counted(client: VigilClient) -> Optional[Tuple[int, int, int]]:
    """(count, seq, epoch) of the agent's latest snapshot, read from the cluster
    through the saver; None before the first checkpoint."""
    try:
        snap = client.get_snapshot(AGENT)
    except E.NotFound:
        return None
    saver = VigilCheckpointSaver(client, AGENT, initial=snap.body)
    latest = saver.get_tuple({"configurable": {"thread_id": "main", "checkpoint_ns": ""}})
    assert latest is not None, "a snapshot without the main thread's checkpoint"
    return int(latest.checkpoint["channel_values"]["count"]), snap.seq, snap.epoch


def test_the_example_agent_resumes_elsewhere_after_its_host_is_killed() -> None:
    command = " ".join(
        [
            shlex.quote(sys.executable),
            shlex.quote(str(EXAMPLE)),
            "--id {id} --socket {socket} --snapshot {snapshot}",
            "--step-ms 100 --heartbeat-ms 200 --give-up-s 10",
        ]
    )
    # The launched agents import the package from the checkout.
    env = {"PYTHONPATH": str(HERE.parent / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    c = Cluster([n for n, _ in NODES], env=env)
    agent_pid = None
    try:
        c.start_all(NODES, extra=["--agent-command", command])
        c.wait_converged()
        n1, n2 = c.nodes["n1"], c.nodes["n2"]
        registered = n1.client.register(AGENT, {"kind": "python-counter"})
        assert (registered.owner, registered.epoch) == ("n1", 1)

        # 1. The launcher started the example on n1; it heartbeats and counts.
        wait_for("the agent running on n1", WAIT, lambda: n1.client.agent(AGENT).state == "running")
        started = wait_for("its started line", WAIT, lambda: first(agent_log(n1), "started"))
        assert started["count"] == 0 and started["restored_from"] == "empty"
        assert (started["epoch"], started["node"]) == (1, "n1")
        agent_pid = started["pid"]
        wait_for("10 steps checkpointed", WAIT, lambda: (counted(n1.client) or (0,))[0] >= 10)

        # 2. The host dies with its agent: the agent first, so that what n1 reports
        # afterwards is the last checkpoint it acknowledged (at most a put already
        # received may still be acknowledged after the read: more, never less).
        os.killpg(agent_pid, signal.SIGKILL)
        acked = counted(n1.client)
        assert acked is not None
        acked_count, acked_seq, acked_epoch = acked
        printed = [line["count"] for line in agent_log(n1) if line["event"] == "checkpoint"]
        assert acked_epoch == 1 and acked_count >= max(printed) >= 10
        c.kill("n1")

        # 3. Another node adopts it at epoch 2 and launches the example there.
        def adopted():
            a = n2.client.agent(AGENT)
            return a if a.owner != "n1" and a.epoch >= 2 else None

        view = wait_for("a survivor to adopt the agent", WAIT, adopted)
        assert view.epoch == 2 and view.owner in ("n2", "n3", "n4")
        owner = c.nodes[view.owner]
        wait_for(
            f"the agent running on {owner.name}",
            WAIT,
            lambda: owner.client.agent(AGENT).state == "running",
        )

        # 4. It resumed from the restored checkpoint: not from 0, nothing lost.
        resumed = wait_for(
            "its started line on the new host", WAIT, lambda: first(agent_log(owner), "started", epoch=2)
        )
        assert resumed["node"] == owner.name and resumed["restored_from"] == "file"
        assert resumed["count"] >= acked_count, (resumed, acked)
        assert resumed["pid"] != agent_pid

        # 5. And it goes on counting there, under the new epoch, seqs continuing.
        def moved_on():
            now = counted(owner.client)
            return now if now is not None and now[0] >= resumed["count"] + 5 else None

        count, seq, epoch = wait_for("5 more steps on the new host", WAIT, moved_on)
        assert epoch == 2 and seq > acked_seq
        steps = [line["count"] for line in agent_log(owner) if line["event"] == "checkpoint"]
        assert steps[0] == resumed["count"] + 1, "the first step after the restore continues the count"
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
    finally:
        if agent_pid is not None:
            try:
                os.killpg(agent_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        c.cleanup(keep=os.environ.get("VIGIL_PY_KEEP") == "1")
