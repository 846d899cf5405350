"""Python client for vigil's local socket API, for agent developers.

vigil runs one node per agent host; an agent talks to the node of its host over
a Unix socket (HTTP/1.1 + JSON, docs/API.md) to register, heartbeat and store
snapshots of its state, which survive the host. This package speaks that API
with the standard library only:

- :class:`VigilClient`: every endpoint, typed answers, typed errors
  (:mod:`vigil_client.errors`), a timeout on every call, bounded answers;
- :class:`Heartbeater`: heartbeats from a background thread, stopping by
  itself when the node says this copy of the agent must stop;
- :class:`VigilCheckpointSaver`: LangGraph-style graph checkpoints kept as
  vigil snapshots, so a graph resumes on another host after its host dies.
"""

from . import errors as _errors
from .checkpoint import HAVE_LANGGRAPH, VigilCheckpointSaver, make_checkpoint
from .client import DEFAULT_SOCKET, EventStream, VigilClient, default_socket
from .errors import *  # noqa: F401,F403 - the exception classes are part of the API
from .heartbeat import Heartbeater
from .models import (
    Agent,
    Event,
    Health,
    HeartbeatAck,
    Holder,
    Member,
    NodeIsolation,
    PutResult,
    Snapshot,
)

__version__ = "0.1.0"

__all__ = [
    "VigilClient",
    "EventStream",
    "Heartbeater",
    "VigilCheckpointSaver",
    "make_checkpoint",
    "HAVE_LANGGRAPH",
    "DEFAULT_SOCKET",
    "default_socket",
    "Agent",
    "Event",
    "HeartbeatAck",
    "Health",
    "Holder",
    "Member",
    "NodeIsolation",
    "PutResult",
    "Snapshot",
] + list(_errors.__all__)
