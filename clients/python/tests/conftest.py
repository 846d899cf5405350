"""Fixtures: real vigil nodes (``$VIGIL_BIN``), shared by the client tests.

The suite runs from a checkout without installing the package: ``src/`` goes on
``sys.path`` first, so the code under test is the code in the tree.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from vigil_cluster import Cluster  # noqa: E402

from vigil_client import VigilClient  # noqa: E402

#: The client tests' nodes refuse snapshots over this, so "too large" is cheap to hit.
MAX_SNAPSHOT = 64 * 1024


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """Four nodes in three zones (n1 az1, n2 az2, n3 az3, n4 az1), converged,
    without a launcher: the tests play the agents themselves. Four, so that after
    a takeover the new owner still has two other hosts for a quorum of copies."""
    c = Cluster(["n1", "n2", "n3", "n4"])
    keep = os.environ.get("VIGIL_PY_KEEP") == "1"
    try:
        c.start_all(
            [("n1", "az1"), ("n2", "az2"), ("n3", "az3"), ("n4", "az1")],
            extra=["--max-snapshot", f"{MAX_SNAPSHOT}"],
        )
        c.wait_converged()
        yield c
    finally:
        c.cleanup(keep=keep)
        if keep:
            print(f"kept {c.root}", file=sys.stderr)


@pytest.fixture
def n1(cluster: Cluster) -> VigilClient:
    return cluster.nodes["n1"].client


@pytest.fixture
def n2(cluster: Cluster) -> VigilClient:
    return cluster.nodes["n2"].client


@pytest.fixture
def n3(cluster: Cluster) -> VigilClient:
    return cluster.nodes["n3"].client


@pytest.fixture
def agent_id(request: pytest.FixtureRequest) -> str:
    """An agent id of this test's own (valid characters, unique per run)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:80]
    return f"{base}-{uuid.uuid4().hex[:8]}"
