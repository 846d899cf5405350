"""Typed exceptions for everything the vigil socket API can answer.

The node answers every error with a fitting HTTP status and a JSON body
``{"error": "...", "code": "..."}`` (docs/API.md, "Errors"). The ``code`` is the
stable part: this module maps each documented code to its own exception class, so
agent code can write ``except NotOwner:`` instead of comparing strings, and
falls back on the status (``Conflict`` for an unknown 409, ...) for codes a newer
node may add. Every API error carries ``status``, ``code`` and ``message``.

Failures that never reached an answer (no socket, no permission, no node behind
the socket, a timeout, a malformed or oversized reply) have their own classes,
all under :class:`VigilError`, so ``except VigilError`` catches everything this
package raises on purpose.
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class VigilError(Exception):
    """Base class of every error this package raises."""

    #: Whether the same request may succeed if sent again a little later (the node
    #: is restarting, overloaded, cannot reach enough copies yet, ...). Agents
    #: retry these and stop on the others.
    retryable: bool = False


# --- failures before or instead of an answer ---------------------------------


class VigilConnectionError(VigilError):
    """The node could not be reached over its Unix socket."""

    retryable = True

    def __init__(self, message: str, socket_path: str) -> None:
        super().__init__(message)
        self.socket_path = socket_path


class SocketNotFound(VigilConnectionError):
    """No file at the socket path: the node is not running here, or it listens on
    another path (``--socket`` / ``VIGIL_SOCKET``)."""


class SocketPermissionDenied(VigilConnectionError):
    """The socket exists but this process may not connect: the node creates it
    with mode 0660, so the agent's user must be its owner or in its group.

    Not retryable: waiting does not change permissions."""

    retryable = False


class NodeNotRunning(VigilConnectionError):
    """The socket file exists but nothing accepts connections on it: a node that
    died and left its socket behind, or one that is still starting."""


class VigilTimeout(VigilError):
    """No complete answer within the call's timeout. The request may still take
    effect on the node (a put may be acknowledged after the client gave up)."""

    retryable = True


class ProtocolError(VigilError):
    """The answer was not what the API documents: malformed HTTP or JSON, or a
    connection closed mid-answer."""

    retryable = True


class ResponseTooLarge(ProtocolError):
    """The answer is larger than the client accepts (``max_response`` for JSON,
    ``max_snapshot`` for snapshot bodies, the line limit for events). Raise the
    limit on :class:`~vigil_client.VigilClient` if the data is legitimately big."""

    retryable = False


# --- answers with an error status -------------------------------------------


class ApiError(VigilError):
    """The node answered with an error status and code (docs/API.md)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        # 5xx: the node or its peers could not do it now; 4xx: the request itself
        # is wrong (or, for 409, this node must not act for the agent).
        return self.status >= 500 and self.status != 507


class BadRequest(ApiError):
    """400: a malformed or unknown parameter (``bad_request``)."""


class BadAgentId(BadRequest):
    """400 ``bad_agent_id``: an agent id is 1 to 128 characters of
    ``A-Z a-z 0-9 . _ -``."""


class BadMeta(BadRequest):
    """400 ``bad_meta``: agent metadata must be JSON."""


class RestartRequired(BadRequest):
    """400: a runtime-config change to a setting that only changes with a restart."""


class UnknownSetting(BadRequest):
    """400: ``PUT /v1/config`` named no such setting."""


class InvalidSetting(BadRequest):
    """400: a runtime-config value out of range or of the wrong type."""


class NotASetting(BadRequest):
    """400: ``isolated`` is changed with ``/v1/node/isolate`` and ``/recover``."""


class Forbidden(ApiError):
    """403: the node refused this caller before reading its request."""


class UidNotAllowed(Forbidden):
    """403 ``uid_not_allowed``: the node checks each caller's uid (SO_PEERCRED)
    against its ``allow_uids`` setting, and this process's uid is not listed. The
    message names the uid. Not retryable: add the uid to ``allow_uids`` and restart
    the node, or run the agent as an allowed user."""


class NoPeerCredentials(Forbidden):
    """403 ``no_peer_credentials``: the node could not tell which uid is calling."""


class NotFound(ApiError):
    """404: no such endpoint (``not_found``), or no reachable copy has the
    requested snapshot version."""


class UnknownAgent(NotFound):
    """404 ``unknown_agent``: the agent was never registered (or no node this one
    knows has heard of it)."""


class MethodNotAllowed(ApiError):
    """405 ``method_not_allowed``."""


class Conflict(ApiError):
    """409: the request conflicts with who owns the agent."""


class TakeoverFailed(Conflict):
    """409 ``takeover_failed``: registering an agent owned elsewhere ran an
    election that chose another host, or no majority of its holders answered."""


class MustStop(Conflict):
    """409 meaning: this copy of the agent must stop running on this node.

    The four codes below all say so (the example agents stop on any of them). An
    agent that keeps running after one of these would work for nothing: its puts
    are refused, and another copy may be running elsewhere."""


class NotOwner(MustStop):
    """409 ``not_owner``: another node owns the agent (the message names it and
    its epoch). Register here to take it over, or stop."""


class StaleEpoch(MustStop):
    """409 ``stale_epoch``: a copy holder has seen a higher epoch; another node
    took the agent over and this node learned it through the put."""


class AgentFenced(MustStop):
    """409 ``agent_fenced``: this node lost the lease of the agent's holders (cut
    off from them) or is handing the agent off."""


class AgentIsolated(MustStop):
    """409 ``agent_isolated``: an operator isolated the agent; stop until it is
    recovered."""


class Gone(ApiError):
    """410: the requested event position is not available."""


class EventsExpired(Gone):
    """410 ``events_expired``: ``since`` names events the node no longer keeps
    (it keeps 10 000). Resume from the oldest it keeps, or without ``since``."""


class IndexFromFuture(Gone):
    """410 ``index_from_future``: ``since`` is beyond the node's last event, so
    the node restarted (indexes start again at 1 under a new generation)."""


class RequestTimeout(ApiError):
    """408: the request did not arrive in time."""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return True


class BodyTimeout(RequestTimeout):
    """408 ``body_timeout``: the request body did not arrive whole within the
    node's ``api_io_timeout`` (30 s by default)."""


class TooManyRequests(ApiError):
    """429: this caller's uid holds as much as the node allows one client. Retry
    once some of its connections or streams are closed."""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return True


class TooManyClientConnections(TooManyRequests):
    """429 ``too_many_client_connections``: this uid has
    ``api_max_connections_per_uid`` connections open (256 by default)."""


class TooManyStreams(TooManyRequests):
    """429 ``too_many_streams``: this uid has ``api_max_streams_per_uid`` event
    streams open (64 by default)."""


class PayloadTooLarge(ApiError):
    """413: the request body is over a limit."""


class MetaTooLarge(PayloadTooLarge):
    """413 ``meta_too_large``: metadata over 4 KiB."""


class SnapshotTooLarge(PayloadTooLarge):
    """413 ``snapshot_too_large``: snapshot over the node's ``max_snapshot``."""


class BodyTooLarge(PayloadTooLarge):
    """413: a ``PUT /v1/config`` body over 16 KiB."""


class TlsReloadFailed(ApiError):
    """422 ``tls_reload_failed``: the node's PKI directory did not pass the checks
    of a reload (the message names the file and the fix); the node keeps its
    certificates. An operator must fix the files."""


class NotSaved(ApiError):
    """500: ``runtime.toml`` could not be written; nothing changed."""


class Unavailable(ApiError):
    """503 ``unavailable``: the node is shutting down, overloaded, or no copy of a
    snapshot answered in time. Retry."""


class TooManyConnections(Unavailable):
    """503 ``too_many_connections``: every connection the node serves at once
    (``api_max_connections``, 1024 by default) is in use. Retry."""


class NotAcknowledged(Unavailable):
    """503 ``not_acknowledged``: the put's acknowledgement (e.g. 2 of 3 fsynced
    copies) was not met within 5 s; the message says which copies are on disk.
    The snapshot may still become the latest; put again to be sure."""


class RegisterAgain(Unavailable):
    """503 ``register_again``: this node owned the agent before it restarted and
    has not yet asked the holders for the latest seq. Retry, or register again."""


class LocalWriteFailed(ApiError):
    """507 ``local_write_failed``: the owner's own copy could not be written
    (e.g. its disk is full). An operator must act; retrying soon rarely helps."""


class Lagged(ApiError):
    """The event stream was cut off because this client fell 1 024 events
    behind (the stream's last line had code ``lagged``). Reconnect with
    ``since=last_index``; :meth:`VigilClient.watch` does so by itself."""

    def __init__(self, status: int, code: str, message: str, last_index: Optional[int]) -> None:
        super().__init__(status, code, message)
        #: The index of the last event received before the cut, if any.
        self.last_index = last_index


#: Error code -> class. Codes not listed here map by status (see :func:`api_error`).
CODES: Dict[str, Type[ApiError]] = {
    "bad_request": BadRequest,
    "bad_agent_id": BadAgentId,
    "bad_meta": BadMeta,
    "not_found": NotFound,
    "unknown_agent": UnknownAgent,
    "method_not_allowed": MethodNotAllowed,
    "takeover_failed": TakeoverFailed,
    "not_owner": NotOwner,
    "stale_epoch": StaleEpoch,
    "agent_fenced": AgentFenced,
    "agent_isolated": AgentIsolated,
    "events_expired": EventsExpired,
    "index_from_future": IndexFromFuture,
    "meta_too_large": MetaTooLarge,
    "snapshot_too_large": SnapshotTooLarge,
    "unavailable": Unavailable,
    "not_acknowledged": NotAcknowledged,
    "register_again": RegisterAgain,
    "local_write_failed": LocalWriteFailed,
    "restart_required": RestartRequired,
    "unknown_setting": UnknownSetting,
    "invalid_setting": InvalidSetting,
    "not_a_setting": NotASetting,
    "body_too_large": BodyTooLarge,
    "not_saved": NotSaved,
    "uid_not_allowed": UidNotAllowed,
    "no_peer_credentials": NoPeerCredentials,
    "body_timeout": BodyTimeout,
    "too_many_client_connections": TooManyClientConnections,
    "too_many_streams": TooManyStreams,
    "too_many_connections": TooManyConnections,
    "tls_reload_failed": TlsReloadFailed,
}

_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    408: RequestTimeout,
    410: Gone,
    413: PayloadTooLarge,
    429: TooManyRequests,
    503: Unavailable,
    507: LocalWriteFailed,
}


def api_error(status: int, code: str, message: str) -> ApiError:
    """The exception for an error answer: by code first, then by status, so a
    code a newer node adds still lands in the right family."""
    cls = CODES.get(code) or _BY_STATUS.get(status) or ApiError
    return cls(status, code, message)


class GaveUp(VigilError):
    """A background helper (the heartbeater) failed every attempt for its
    ``give_up_after`` window; ``last`` is the last failure."""

    def __init__(self, message: str, last: VigilError) -> None:
        super().__init__(message)
        self.last = last


__all__ = [
    "VigilError",
    "RestartRequired",
    "UnknownSetting",
    "InvalidSetting",
    "NotASetting",
    "BodyTooLarge",
    "NotSaved",
    "VigilConnectionError",
    "SocketNotFound",
    "SocketPermissionDenied",
    "NodeNotRunning",
    "VigilTimeout",
    "ProtocolError",
    "ResponseTooLarge",
    "ApiError",
    "BadRequest",
    "BadAgentId",
    "BadMeta",
    "Forbidden",
    "UidNotAllowed",
    "NoPeerCredentials",
    "RequestTimeout",
    "BodyTimeout",
    "TooManyRequests",
    "TooManyClientConnections",
    "TooManyStreams",
    "TooManyConnections",
    "NotFound",
    "UnknownAgent",
    "MethodNotAllowed",
    "Conflict",
    "TakeoverFailed",
    "MustStop",
    "NotOwner",
    "StaleEpoch",
    "AgentFenced",
    "AgentIsolated",
    "Gone",
    "EventsExpired",
    "IndexFromFuture",
    "PayloadTooLarge",
    "MetaTooLarge",
    "SnapshotTooLarge",
    "Unavailable",
    "NotAcknowledged",
    "RegisterAgain",
    "LocalWriteFailed",
    "Lagged",
    "GaveUp",
    "CODES",
    "api_error",
]
