"""The JSON objects of the socket API as typed, read-only values.

Each class mirrors one object of docs/API.md. Parsing is strict about the fields
an agent relies on (a missing ``seq`` is a :class:`ProtocolError`, not a silent
0) and tolerant of fields it does not know: a newer node may add fields, and
every object keeps the full JSON it came from in ``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar

from .errors import ProtocolError

T = TypeVar("T")


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _req(obj: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{what}: field {key!r} is missing")
    value = obj[key]
    # bool is an int in Python; a count must not be true/false.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: field {key!r} should be {kind.__name__}, got {value!r}")
    return value


def _opt(obj: Mapping[str, Any], key: str, kind: type, what: str, default: Any = None) -> Any:
    if obj.get(key) is None:
        return default
    return _req(obj, key, kind, what)


def _list(value: Any, what: str, item: Callable[[Any], T]) -> List[T]:
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: expected a JSON array, got {type(value).__name__}")
    return [item(v) for v in value]


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``. ``status`` is ``ok``, ``alone``, ``joining``,
    ``isolated`` or ``left``; :attr:`healthy` is what the CLI's exit status uses."""

    status: str
    name: str
    zone: str
    addr: str
    generation: int
    profile: str
    live_members: int
    known_members: int
    version: str
    wire_version: int
    uptime_secs: int
    last_event_index: int
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def healthy(self) -> bool:
        """An active member, or a founding node nobody has joined yet."""
        return self.status in ("ok", "alone")

    @classmethod
    def from_json(cls, value: Any) -> "Health":
        w = "health"
        o = _obj(value, w)
        return cls(
            status=_req(o, "status", str, w),
            name=_req(o, "name", str, w),
            zone=_req(o, "zone", str, w),
            addr=_req(o, "addr", str, w),
            generation=_req(o, "generation", int, w),
            profile=_opt(o, "profile", str, w, ""),
            live_members=_req(o, "live_members", int, w),
            known_members=_req(o, "known_members", int, w),
            version=_opt(o, "version", str, w, ""),
            wire_version=_opt(o, "wire_version", int, w, 0),
            uptime_secs=_opt(o, "uptime_secs", int, w, 0),
            last_event_index=_req(o, "last_event_index", int, w),
            raw=o,
        )


@dataclass(frozen=True)
class Member:
    """One row of ``GET /v1/members``; ``state`` is ``alive``, ``suspect`` or
    ``down``."""

    name: str
    addr: str
    zone: str
    state: str
    generation: int
    incarnation: int
    left: bool
    local: bool
    state_since: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> "Member":
        w = "member"
        o = _obj(value, w)
        return cls(
            name=_req(o, "name", str, w),
            addr=_req(o, "addr", str, w),
            zone=_req(o, "zone", str, w),
            state=_req(o, "state", str, w),
            generation=_req(o, "generation", int, w),
            incarnation=_opt(o, "incarnation", int, w, 0),
            left=_opt(o, "left", bool, w, False),
            local=_opt(o, "local", bool, w, False),
            state_since=_opt(o, "state_since", str, w, ""),
            raw=o,
        )


@dataclass(frozen=True)
class Holder:
    """A host holding a copy of an agent's snapshots."""

    name: str
    zone: str

    @classmethod
    def from_json(cls, value: Any) -> "Holder":
        o = _obj(value, "holder")
        return cls(name=_req(o, "name", str, "holder"), zone=_req(o, "zone", str, "holder"))


@dataclass(frozen=True)
class Agent:
    """An agent as ``PUT /v1/agents/{id}`` and ``GET /v1/agents[/{id}]`` show it.

    ``latest_seq`` is exact on the owner and as last heard elsewhere. ``state``
    is ``running``, ``starting``, ``fenced``, ``failed``, ``isolated``,
    ``pending`` or ``remote`` (docs/API.md)."""

    id: str
    owner: str
    owner_zone: str
    epoch: int
    latest_seq: int
    holders: List[Holder]
    meta: Any
    owned_here: bool
    local_versions: List[int]
    degraded: Optional[str]
    priority: int
    isolated: bool
    state: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> "Agent":
        w = "agent"
        o = _obj(value, w)
        return cls(
            id=_req(o, "id", str, w),
            owner=_req(o, "owner", str, w),
            owner_zone=_opt(o, "owner_zone", str, w, ""),
            epoch=_req(o, "epoch", int, w),
            latest_seq=_req(o, "latest_seq", int, w),
            holders=_list(o.get("holders", []), w, Holder.from_json),
            meta=o.get("meta"),
            owned_here=_req(o, "owned_here", bool, w),
            local_versions=_list(o.get("local_versions", []), w, lambda v: _int(v, w)),
            degraded=_opt(o, "degraded", str, w),
            priority=_opt(o, "priority", int, w, 0),
            isolated=_opt(o, "isolated", bool, w, False),
            state=_opt(o, "state", str, w, ""),
            raw=o,
        )


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{what}: expected an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class HeartbeatAck:
    """The answer to a heartbeat: the agent's epoch, and within how many ms the
    next heartbeat must arrive (``--heartbeat-timeout``) before the node counts
    the agent as failed."""

    id: str
    epoch: int
    deadline_ms: int

    @classmethod
    def from_json(cls, value: Any) -> "HeartbeatAck":
        w = "heartbeat"
        o = _obj(value, w)
        return cls(
            id=_req(o, "id", str, w),
            epoch=_req(o, "epoch", int, w),
            deadline_ms=_req(o, "deadline_ms", int, w),
        )


@dataclass(frozen=True)
class PutResult:
    """The acknowledgement of a snapshot put.

    ``seq`` numbers the agent's snapshots (one more per put, continuing across
    owners); ``epoch`` is the owner epoch it was written under. ``stored_on`` are
    the copies on disk when the answer left, ``pending`` the holders still
    writing; ``degraded`` says why fewer copies or zones than wanted exist."""

    agent: str
    epoch: int
    seq: int
    stored_on: List[Holder]
    pending: List[Holder]
    zones: List[str]
    degraded: Optional[str]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> "PutResult":
        w = "put"
        o = _obj(value, w)
        return cls(
            agent=_req(o, "agent", str, w),
            epoch=_req(o, "epoch", int, w),
            seq=_req(o, "seq", int, w),
            stored_on=_list(o.get("stored_on", []), w, Holder.from_json),
            pending=_list(o.get("pending", []), w, Holder.from_json),
            zones=_list(o.get("zones", []), w, lambda v: v if isinstance(v, str) else str(v)),
            degraded=_opt(o, "degraded", str, w),
            raw=o,
        )


@dataclass(frozen=True)
class Snapshot:
    """One snapshot version: the raw bytes and the (epoch, seq) that order it.
    ``checksum`` is the node's xxh3-64 of the body, in hex."""

    body: bytes
    epoch: int
    seq: int
    checksum: str


@dataclass(frozen=True)
class NodeIsolation:
    """The answer to ``POST /v1/node/isolate|recover``."""

    name: str
    isolated: bool

    @classmethod
    def from_json(cls, value: Any) -> "NodeIsolation":
        o = _obj(value, "node isolation")
        return cls(
            name=_req(o, "name", str, "node isolation"),
            isolated=_req(o, "isolated", bool, "node isolation"),
        )


@dataclass(frozen=True)
class Event:
    """One line of ``/v1/events``. ``type`` names it (``member_down``,
    ``agent_adopted``, ...); which optional fields are set depends on the type
    (docs/API.md has the table). ``index`` orders a node's events and is what
    ``since`` resumes from; it starts again at 1 under a new ``generation``."""

    index: int
    time: str
    time_ms: int
    type: str
    node: str
    generation: int
    member: Optional[str] = None
    member_addr: Optional[str] = None
    member_zone: Optional[str] = None
    member_generation: Optional[int] = None
    incarnation: Optional[int] = None
    previous_generation: Optional[int] = None
    detail: Optional[str] = None
    agent: Optional[str] = None
    epoch: Optional[int] = None
    seq: Optional[int] = None
    zone: Optional[str] = None
    count: Optional[int] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> "Event":
        w = "event"
        o = _obj(value, w)
        return cls(
            index=_req(o, "index", int, w),
            time=_opt(o, "time", str, w, ""),
            time_ms=_opt(o, "time_ms", int, w, 0),
            type=_req(o, "type", str, w),
            node=_opt(o, "node", str, w, ""),
            generation=_opt(o, "generation", int, w, 0),
            member=_opt(o, "member", str, w),
            member_addr=_opt(o, "member_addr", str, w),
            member_zone=_opt(o, "member_zone", str, w),
            member_generation=_opt(o, "member_generation", int, w),
            incarnation=_opt(o, "incarnation", int, w),
            previous_generation=_opt(o, "previous_generation", int, w),
            detail=_opt(o, "detail", str, w),
            agent=_opt(o, "agent", str, w),
            epoch=_opt(o, "epoch", int, w),
            seq=_opt(o, "seq", int, w),
            zone=_opt(o, "zone", str, w),
            count=_opt(o, "count", int, w),
            raw=o,
        )


def parse_list(value: Any, what: str, item: Callable[[Any], T]) -> List[T]:
    """A JSON array of objects, each parsed with ``item``."""
    return _list(value, what, item)


JsonDict = Dict[str, Any]
