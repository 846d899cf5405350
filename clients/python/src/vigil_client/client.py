"""The client of one node's socket API (docs/API.md).

An agent talks to the node of its own host: it registers there (the node becomes
its owner), heartbeats so the node knows it is alive, and puts snapshots of its
state, which the node copies to hosts in other zones before acknowledging. When
the host dies, another node adopts the agent at a higher epoch and starts it
again from its latest acknowledged snapshot (with ``--agent-command``), or tells
your own supervisor through the event stream.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Union
from urllib.parse import quote

from . import _http
from .errors import Lagged, ProtocolError, api_error
from .models import (
    Agent,
    Event,
    Health,
    HeartbeatAck,
    Member,
    NodeIsolation,
    PutResult,
    Snapshot,
    parse_list,
)

if TYPE_CHECKING:
    from .heartbeat import Heartbeater

#: Where nodes listen unless configured otherwise.
DEFAULT_SOCKET = "/run/vigil/vigil.sock"
#: Longer than the node's own longest wait (a put or a takeover election answers
#: within about 7 s), so a slow answer is told apart from a lost one.
DEFAULT_TIMEOUT = 10.0
#: The node's default ``max_snapshot``; raise it if the node's is raised.
DEFAULT_MAX_SNAPSHOT = 16 * 1024 * 1024
#: JSON answers (agent lists of large clusters included) are smaller than this.
DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024
#: An event line is a few hundred bytes.
DEFAULT_MAX_EVENT_LINE = 64 * 1024

_ACK_MODES = ("quorum", "all", "local")


def default_socket() -> str:
    """``$VIGIL_SOCKET`` (set by the launcher for the agents it starts), else
    ``/run/vigil/vigil.sock``."""
    return os.environ.get("VIGIL_SOCKET") or DEFAULT_SOCKET


def _agent_path(agent_id: str, suffix: str = "") -> str:
    # Quoted whole: an id with '/' or '?' reaches the node intact and is refused
    # there as bad_agent_id instead of addressing another endpoint.
    return f"/v1/agents/{quote(agent_id, safe='')}{suffix}"


class VigilClient:
    """A client of the node listening on ``socket_path``.

    Cheap to create and safe to share between threads: every call opens its own
    connection. Every call takes an optional ``timeout`` (seconds, the whole
    exchange) overriding the client's; answers larger than ``max_response``
    (JSON) or ``max_snapshot`` (snapshot bodies) are refused with
    :class:`~vigil_client.errors.ResponseTooLarge` instead of being buffered.

    Errors are typed (:mod:`vigil_client.errors`): the node's error codes map to
    classes such as :class:`~vigil_client.errors.NotOwner` or
    :class:`~vigil_client.errors.Unavailable`; a missing socket, a permission
    problem or a dead node raise :class:`~vigil_client.errors.SocketNotFound`,
    :class:`~vigil_client.errors.SocketPermissionDenied` or
    :class:`~vigil_client.errors.NodeNotRunning` with the fix in the message.
    """

    def __init__(
        self,
        socket_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_snapshot: int = DEFAULT_MAX_SNAPSHOT,
        max_response: int = DEFAULT_MAX_RESPONSE,
        max_event_line: int = DEFAULT_MAX_EVENT_LINE,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.socket_path = os.fspath(socket_path) if socket_path is not None else default_socket()
        self.timeout = timeout
        self.max_snapshot = max_snapshot
        self.max_response = max_response
        self.max_event_line = max_event_line

    def __repr__(self) -> str:
        return f"VigilClient({self.socket_path!r})"

    # --- plumbing -----------------------------------------------------------

    def _call(
        self,
        method: str,
        url: str,
        *,
        timeout: Optional[float],
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        max_body: Optional[int] = None,
    ) -> _http.Response:
        return _http.request(
            self.socket_path,
            method,
            url,
            timeout=self.timeout if timeout is None else timeout,
            max_body=self.max_response if max_body is None else max_body,
            body=body,
            headers=headers,
        )

    def _json(
        self,
        method: str,
        url: str,
        *,
        timeout: Optional[float],
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> Any:
        resp = self._call(method, url, timeout=timeout, body=body, headers=headers)
        resp.raise_for_error()
        return resp.json()

    def call(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Any:
        """Any endpoint, for what this class does not wrap (yet): the decoded JSON
        answer, or the typed error. ``path`` starts with ``/`` and is sent as
        given (quote what needs quoting)."""
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        return self._json(method, path, timeout=timeout, body=body)

    # --- node ---------------------------------------------------------------

    def health(self, *, timeout: Optional[float] = None) -> Health:
        """The node's status. Returns (does not raise) for every status the node
        reports, ``joining`` and ``isolated`` included (the node answers those with
        503 and the same body); check :attr:`Health.healthy`. Raises
        :class:`~vigil_client.errors.Unavailable` only when the node could not
        answer at all."""
        resp = self._call("GET", "/v1/health", timeout=timeout)
        if resp.status == 503:
            body = resp.json()
            if isinstance(body, dict) and "status" in body and "code" not in body:
                return Health.from_json(body)
        resp.raise_for_error()
        return Health.from_json(resp.json())

    def members(self, *, timeout: Optional[float] = None) -> List[Member]:
        """Every member the node knows, itself first (down ones included until the
        cluster forgets them)."""
        return parse_list(self._json("GET", "/v1/members", timeout=timeout), "members", Member.from_json)

    def metrics(self, *, timeout: Optional[float] = None) -> str:
        """The node's Prometheus metrics, as text."""
        resp = self._call("GET", "/metrics", timeout=timeout)
        resp.raise_for_error()
        return resp.body.decode("utf-8", "replace")

    def isolate_node(self, *, timeout: Optional[float] = None) -> NodeIsolation:
        """Stops this node from being chosen to adopt agents (its own keep running)."""
        return NodeIsolation.from_json(self._json("POST", "/v1/node/isolate", timeout=timeout))

    def recover_node(self, *, timeout: Optional[float] = None) -> NodeIsolation:
        """Ends :meth:`isolate_node`."""
        return NodeIsolation.from_json(self._json("POST", "/v1/node/recover", timeout=timeout))

    # --- agents -------------------------------------------------------------

    def agents(self, *, timeout: Optional[float] = None) -> List[Agent]:
        """Every agent the node knows (the catalog spreads to all nodes)."""
        return parse_list(self._json("GET", "/v1/agents", timeout=timeout), "agents", Agent.from_json)

    def agent(self, agent_id: str, *, timeout: Optional[float] = None) -> Agent:
        """One agent; :class:`~vigil_client.errors.UnknownAgent` if the node has
        never heard of it."""
        return Agent.from_json(self._json("GET", _agent_path(agent_id), timeout=timeout))

    def register(
        self,
        agent_id: str,
        meta: Any = None,
        *,
        priority: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Agent:
        """Registers the agent with this node, which becomes its owner.

        ``meta`` is any JSON value (at most 4 KiB encoded; ``str``/``bytes`` are
        sent as already-encoded JSON). ``priority`` orders adoptions when standby
        capacity is short. Registering again on the owner updates meta and
        priority; registering an agent another node owns takes it over through an
        election (:class:`~vigil_client.errors.TakeoverFailed` if another host
        wins). With ``--agent-command``, the node then starts the agent's process.
        """
        if meta is None:
            body = b""
        elif isinstance(meta, bytes):
            body = meta
        elif isinstance(meta, str):
            body = meta.encode("utf-8")
        else:
            body = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        url = _agent_path(agent_id)
        if priority is not None:
            url += f"?priority={int(priority)}"
        headers = {"Content-Type": "application/json"}
        return Agent.from_json(self._json("PUT", url, timeout=timeout, body=body, headers=headers))

    def heartbeat(self, agent_id: str, *, timeout: Optional[float] = None) -> HeartbeatAck:
        """Tells the owner the agent is alive. From the first heartbeat, an agent
        silent for the deadline (``deadline_ms``, 2 s by default) counts as failed
        and is restarted or handed to another host. A
        :class:`~vigil_client.errors.MustStop` error means this copy must stop.
        See :class:`~vigil_client.heartbeat.Heartbeater` for a background thread."""
        return HeartbeatAck.from_json(
            self._json("POST", _agent_path(agent_id, "/heartbeat"), timeout=timeout, body=b"")
        )

    def isolate_agent(self, agent_id: str, *, timeout: Optional[float] = None) -> Agent:
        """Quarantines the agent: its process is stopped, heartbeats and puts are
        refused with :class:`~vigil_client.errors.AgentIsolated`, and it is not
        recovered if its host dies. Any node forwards this to the owner."""
        return Agent.from_json(
            self._json("POST", _agent_path(agent_id, "/isolate"), timeout=timeout, body=b"")
        )

    def recover_agent(self, agent_id: str, *, timeout: Optional[float] = None) -> Agent:
        """Ends :meth:`isolate_agent`: the agent runs again on its owner."""
        return Agent.from_json(
            self._json("POST", _agent_path(agent_id, "/recover"), timeout=timeout, body=b"")
        )

    # --- snapshots ----------------------------------------------------------

    def put_snapshot(
        self,
        agent_id: str,
        data: Union[bytes, bytearray, memoryview],
        *,
        ack: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PutResult:
        """Stores ``data`` as the agent's new state; only its owner accepts it.

        Returns once the acknowledgement is met: ``quorum`` (the node's default:
        a majority of the k copies written and fsynced), ``all`` or ``local``. The
        answer's ``seq`` grows by one per put, also across owners, and ``epoch``
        is the owner epoch; a snapshot of a lower epoch is never accepted by the
        holders, so an old owner cannot overwrite its successor's state (it gets
        :class:`~vigil_client.errors.StaleEpoch` or
        :class:`~vigil_client.errors.NotOwner`).
        :class:`~vigil_client.errors.NotAcknowledged` means the copies were not
        confirmed in time: the version may still survive; put again."""
        if ack is not None and ack not in _ACK_MODES:
            raise ValueError(f"ack must be one of {', '.join(_ACK_MODES)}, got {ack!r}")
        body = bytes(data)
        if len(body) > self.max_snapshot:
            # The node would refuse it too, after reading it all.
            raise api_error(
                413,
                "snapshot_too_large",
                f"snapshot of {len(body)} bytes exceeds the client's max_snapshot of "
                f"{self.max_snapshot} bytes (refused before sending)",
            )
        url = _agent_path(agent_id, "/snapshot")
        if ack is not None:
            url += f"?ack={ack}"
        headers = {"Content-Type": "application/octet-stream"}
        return PutResult.from_json(self._json("PUT", url, timeout=timeout, body=body, headers=headers))

    def get_snapshot(
        self, agent_id: str, seq: Optional[int] = None, *, timeout: Optional[float] = None
    ) -> Snapshot:
        """The agent's latest snapshot (or version ``seq``, one of the last few
        each holder keeps), from any node: the node asks the owner and the holders
        and returns the highest (epoch, seq) with a good checksum.
        :class:`~vigil_client.errors.NotFound` when no copy has it (an agent that
        never put anything), :class:`~vigil_client.errors.UnknownAgent` when no
        node has heard of the agent."""
        url = _agent_path(agent_id, "/snapshot")
        if seq is not None:
            url += f"?seq={int(seq)}"
        resp = self._call("GET", url, timeout=timeout, max_body=self.max_snapshot)
        resp.raise_for_error()
        try:
            epoch = int(resp.headers["x-vigil-epoch"])
            got_seq = int(resp.headers["x-vigil-seq"])
        except (KeyError, ValueError):
            raise ProtocolError("snapshot answer without valid x-vigil-epoch / x-vigil-seq headers") from None
        return Snapshot(
            body=resp.body,
            epoch=epoch,
            seq=got_seq,
            checksum=resp.headers.get("x-vigil-checksum", ""),
        )

    # --- events -------------------------------------------------------------

    def events(
        self,
        since: Optional[int] = None,
        *,
        idle_timeout: Optional[float] = None,
        timeout: Optional[float] = None,
    ) -> "EventStream":
        """Opens ``/v1/events``: the retained events after index ``since`` (all
        retained ones without it), then live ones, as :class:`EventStream`.

        ``timeout`` bounds opening the stream; ``idle_timeout`` how long one read
        waits for the next event (None: as long as it takes; the stream has no
        natural end). Raises :class:`~vigil_client.errors.EventsExpired` or
        :class:`~vigil_client.errors.IndexFromFuture` for a ``since`` the node
        cannot resume from (the latter: the node restarted)."""
        url = "/v1/events" if since is None else f"/v1/events?since={int(since)}"
        stream = _http.LineStream(
            self.socket_path,
            url,
            timeout=self.timeout if timeout is None else timeout,
            max_line=self.max_event_line,
        )
        return EventStream(stream, since, idle_timeout)

    def watch(self, since: Optional[int] = None, *, idle_timeout: Optional[float] = None) -> Iterator[Event]:
        """Events after ``since``, resubscribing after the last one seen whenever
        the node cuts the stream off as too slow (:class:`Lagged`), so none is
        missed. Ends when the node closes the stream (it stopped)."""
        last = since
        while True:
            with self.events(last, idle_timeout=idle_timeout) as stream:
                try:
                    for event in stream:
                        last = event.index
                        yield event
                    return
                except Lagged as e:
                    last = e.last_index if e.last_index is not None else last

    def heartbeater(self, agent_id: str, **kwargs: Any) -> "Heartbeater":
        """A started :class:`~vigil_client.heartbeat.Heartbeater` for the agent
        (its first heartbeat is sent before this returns)."""
        from .heartbeat import Heartbeater

        hb = Heartbeater(self, agent_id, **kwargs)
        hb.start()
        return hb


class EventStream:
    """An open ``/v1/events`` stream: iterate it, or call :meth:`next` with a
    timeout. Close it (or use ``with``) to release the connection.

    Iteration ends when the node closes the stream (it stopped). A stream the
    node cut off because this client fell behind raises
    :class:`~vigil_client.errors.Lagged` carrying the last index received; resume
    with ``since=`` that index (:meth:`VigilClient.watch` does)."""

    def __init__(
        self, stream: "_http.LineStream", since: Optional[int], idle_timeout: Optional[float]
    ) -> None:
        self._stream = stream
        self.idle_timeout = idle_timeout
        #: The index of the last event returned (``since`` before the first).
        self.last_index: Optional[int] = since

    def next(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or None when the node ended the stream. Raises
        :class:`~vigil_client.errors.VigilTimeout` when none came within
        ``timeout`` seconds (default: the stream's ``idle_timeout``); the stream
        stays open and usable."""
        while True:
            line = self._stream.read_line(self.idle_timeout if timeout is None else timeout)
            if line is None:
                return None
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise ProtocolError(f"event stream: a line that is not JSON ({e}): {text[:200]!r}") from None
            if isinstance(obj, dict) and "code" in obj and "index" not in obj:
                code = str(obj.get("code"))
                message = str(obj.get("error", ""))
                self.close()
                if code == "lagged":
                    raise Lagged(200, code, message, self.last_index)
                raise api_error(200, code, message)
            event = Event.from_json(obj)
            self.last_index = event.index
            return event

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> Event:
        event = self.next()
        if event is None:
            raise StopIteration
        return event

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
