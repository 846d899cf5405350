"""HTTP/1.1 over the node's Unix socket, with bounds on time and size.

Plain requests go through :mod:`http.client` with a connection class that dials
a Unix socket instead of TCP. Each request opens its own connection and asks the
node to close it afterwards: connecting to a local socket costs microseconds,
and no connection is shared between threads (an agent's heartbeat thread and
its main loop call the node at the same time).

Every request has a deadline (the whole exchange, not each read) and every
answer a size limit, so a wedged or misbehaving node cannot hang or exhaust an
agent. The event stream is read by a small reader of its own (:class:`LineStream`)
because it must wait for the next line with a timeout and stay usable afterwards,
which :class:`http.client.HTTPResponse` cannot (a timed-out read poisons it).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import (
    NodeNotRunning,
    ProtocolError,
    ResponseTooLarge,
    SocketNotFound,
    SocketPermissionDenied,
    VigilConnectionError,
    VigilError,
    VigilTimeout,
    api_error,
)

#: Reads from the socket in pieces of this size.
_CHUNK = 64 * 1024
#: Longest status line plus headers accepted.
MAX_HEADER_BYTES = 64 * 1024
#: Longest error body read (error answers are one short JSON object).
MAX_ERROR_BODY = 64 * 1024


class UnixHTTPConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` to a Unix socket.

    The node ignores the host part of the URL, so requests carry ``Host:
    vigil``."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("vigil", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def connect_error(exc: OSError, socket_path: str) -> VigilError:
    """A connection failure as the error that says what to do about it."""
    if isinstance(exc, FileNotFoundError):
        return SocketNotFound(
            f"no vigil socket at {socket_path}: is the node running on this host? "
            "Pass the path the node was started with (--socket), or set VIGIL_SOCKET",
            socket_path,
        )
    if isinstance(exc, PermissionError):
        return SocketPermissionDenied(
            f"permission denied connecting to {socket_path}: the node creates its socket "
            "with mode 0660 and its own group unless socket_mode / socket_group say "
            "otherwise, so run the agent as the node's user or a member of the "
            "socket's group (and make sure every directory on the path is searchable)",
            socket_path,
        )
    if isinstance(exc, ConnectionRefusedError):
        return NodeNotRunning(
            f"nothing accepts connections on {socket_path}: the node died or is not "
            "started yet (the socket file is left over)",
            socket_path,
        )
    if isinstance(exc, socket.timeout):
        return VigilTimeout(f"connecting to {socket_path} timed out")
    if exc.errno == errno.ENOTSOCK or exc.errno == errno.ECONNREFUSED:
        return NodeNotRunning(f"{socket_path} is not a listening socket: {exc}", socket_path)
    return VigilConnectionError(f"cannot connect to {socket_path}: {exc}", socket_path)


class Response:
    """A complete answer: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise ProtocolError(
                f"the node answered {self.status} with a body that is not JSON: {e}: {_preview(self.body)}"
            ) from None

    def raise_for_error(self) -> None:
        """Raises the typed error for an error status."""
        if self.status < 400:
            return
        raise error_from_body(self.status, self.body)


def error_from_body(status: int, body: bytes) -> VigilError:
    """The typed error of an error answer; a body that is not the documented
    ``{"error", "code"}`` object still yields an error with the status."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("code"), str):
        return api_error(status, obj["code"], str(obj.get("error", "")))
    return api_error(status, f"http_{status}", _preview(body) or http.client.responses.get(status, ""))


def _preview(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + ("..." if len(body) > limit else "")


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise VigilTimeout(f"{what}: no complete answer within the timeout")
    return left


def request(
    socket_path: str,
    method: str,
    url: str,
    *,
    timeout: float,
    max_body: int,
    body: Optional[bytes] = None,
    headers: Optional[Mapping[str, str]] = None,
) -> Response:
    """Sends one request and reads the whole answer within ``timeout`` seconds.

    Raises the connection errors of :func:`connect_error`, :class:`VigilTimeout`,
    :class:`ProtocolError`, or :class:`ResponseTooLarge` when the body exceeds
    ``max_body`` bytes (error bodies are limited to 64 KiB). Error statuses are
    returned, not raised: the caller decides (``/v1/health`` answers 503 with a
    health body)."""
    what = f"{method} {url}"
    deadline = time.monotonic() + timeout
    conn = UnixHTTPConnection(socket_path, timeout)
    resp: Optional[http.client.HTTPResponse] = None
    sock: Optional[socket.socket] = None
    try:
        try:
            conn.connect()
        except OSError as e:
            raise connect_error(e, socket_path) from None
        sock = conn.sock
        assert sock is not None
        # Keep-alive (the default): http.client then leaves the socket with the
        # connection, so the deadline can be applied to it while the body is read;
        # the connection is closed right after this one exchange anyway.
        all_headers = dict(headers or {})
        try:
            sock.settimeout(_remaining(deadline, what))
            try:
                conn.request(method, url, body=body, headers=all_headers)
            except (BrokenPipeError, ConnectionResetError):
                # The node may answer before reading the whole body and close (a
                # 413 for a declared length over its limit): its answer is still
                # waiting in the socket, and it says more than "broken pipe".
                if body is None:
                    raise
            sock.settimeout(_remaining(deadline, what))
            resp = conn.getresponse()
            status = resp.status
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            limit = max_body if status < 400 else MAX_ERROR_BODY
            declared = hdrs.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise ResponseTooLarge(f"{what}: the answer is {declared} bytes, over the limit of {limit}")
            chunks: List[bytes] = []
            size = 0
            while True:
                sock.settimeout(_remaining(deadline, what))
                piece = resp.read(min(_CHUNK, limit + 1 - size))
                if not piece:
                    break
                chunks.append(piece)
                size += len(piece)
                if size > limit:
                    raise ResponseTooLarge(f"{what}: the answer is over the limit of {limit} bytes")
            return Response(status, hdrs, b"".join(chunks))
        except socket.timeout:
            raise VigilTimeout(f"{what}: no complete answer within {timeout:g} s") from None
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
            raise ProtocolError(f"{what}: the node closed the connection ({e})") from None
        except http.client.HTTPException as e:
            raise ProtocolError(f"{what}: malformed answer: {e!r}") from None
        except OSError as e:
            raise ProtocolError(f"{what}: {e}") from None
    finally:
        if resp is not None:
            resp.close()
        conn.close()
        if sock is not None:
            sock.close()


class LineStream:
    """A streaming answer read line by line (the NDJSON event stream).

    The request goes out through :class:`UnixHTTPConnection`; the answer is read
    straight from the socket with its own buffer and chunked-transfer decoder, so
    :meth:`read_line` can wait with a timeout and be called again after one."""

    def __init__(self, socket_path: str, url: str, *, timeout: float, max_line: int) -> None:
        self.url = url
        self.max_line = max_line
        self._raw = bytearray()  # received, not yet decoded
        self._data = bytearray()  # decoded body bytes, not yet returned
        self._chunked = False
        self._chunk_left = 0  # bytes left in the current chunk
        self._need_crlf = False  # a chunk's data ended; its CRLF comes next
        self._body_done = False  # the last chunk (or EOF) was seen
        self._eof = False
        what = f"GET {url}"
        deadline = time.monotonic() + timeout
        conn = UnixHTTPConnection(socket_path, timeout)
        try:
            conn.connect()
        except OSError as e:
            raise connect_error(e, socket_path) from None
        self._sock: Optional[socket.socket] = conn.sock
        try:
            try:
                self._sock.settimeout(_remaining(deadline, what))
                conn.request("GET", url, headers={"Accept": "application/x-ndjson"})
            except socket.timeout:
                raise VigilTimeout(f"{what}: the request could not be sent in time") from None
            except OSError as e:
                raise ProtocolError(f"{what}: {e}") from None
            finally:
                # From here on the socket is ours: the answer is read below, never
                # through the connection (which would reconnect if asked again).
                conn.sock = None
            self.status, self.headers = self._read_head(deadline, what)
            self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
            if self.status != 200:
                raise self._error_answer(deadline, what)
        except BaseException:
            self.close()
            raise

    def _recv(self, timeout: Optional[float], what: str) -> bool:
        """Receives more bytes into the raw buffer; False at end of stream."""
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            piece = self._sock.recv(_CHUNK)
        except socket.timeout:
            raise VigilTimeout(f"{what}: nothing received within {timeout:g} s") from None
        except OSError as e:
            raise ProtocolError(f"{what}: {e}") from None
        if not piece:
            self._eof = True
            return False
        self._raw += piece
        return True

    def _read_head(self, deadline: float, what: str) -> Tuple[int, Dict[str, str]]:
        while True:
            end = self._raw.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._raw) > MAX_HEADER_BYTES:
                raise ProtocolError(f"{what}: answer headers longer than {MAX_HEADER_BYTES} bytes")
            if not self._recv(_remaining(deadline, what), what):
                raise ProtocolError(f"{what}: the node closed the connection before answering")
        head = bytes(self._raw[:end]).decode("latin-1")
        del self._raw[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"{what}: malformed status line {lines[0]!r}")
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _error_answer(self, deadline: float, what: str) -> VigilError:
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and not self._chunked:
            want = int(declared)
            if want > MAX_ERROR_BODY:
                return ResponseTooLarge(f"{what}: error answer of {want} bytes")
            while len(self._raw) < want and self._recv(_remaining(deadline, what), what):
                pass
            return error_from_body(self.status, bytes(self._raw[:want]))
        body = bytearray()
        while len(body) <= MAX_ERROR_BODY:
            line = self._next_line(_remaining(deadline, what), what)
            if line is None:
                break
            body += line
        return error_from_body(self.status, bytes(body))

    def _decode(self, what: str) -> None:
        """Moves what can be decoded from the raw buffer to the data buffer."""
        if not self._chunked:
            self._data += self._raw
            self._raw.clear()
            if self._eof:
                self._body_done = True
            return
        while not self._body_done:
            if self._need_crlf:
                if len(self._raw) < 2:
                    return
                if self._raw[:2] != b"\r\n":
                    raise ProtocolError(f"{what}: malformed chunked encoding (no CRLF after a chunk)")
                del self._raw[:2]
                self._need_crlf = False
            if self._chunk_left == 0:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    if len(self._raw) > 1024:
                        raise ProtocolError(f"{what}: malformed chunked encoding (size line)")
                    return
                size_text = bytes(self._raw[:end]).split(b";", 1)[0].strip()
                del self._raw[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"{what}: malformed chunk size {size_text!r}") from None
                if size == 0:
                    self._body_done = True
                    return
                self._chunk_left = size
            take = min(self._chunk_left, len(self._raw))
            if take == 0:
                return
            self._data += self._raw[:take]
            del self._raw[:take]
            self._chunk_left -= take
            if self._chunk_left == 0:
                self._need_crlf = True

    def _next_line(self, timeout: Optional[float], what: str) -> Optional[bytes]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._decode(what)
            nl = self._data.find(b"\n")
            if nl >= 0:
                if nl > self.max_line:
                    raise ResponseTooLarge(f"{what}: a line longer than {self.max_line} bytes")
                line = bytes(self._data[: nl + 1])
                del self._data[: nl + 1]
                return line
            if len(self._data) > self.max_line:
                raise ResponseTooLarge(f"{what}: a line longer than {self.max_line} bytes")
            if self._body_done or self._eof:
                if self._data:
                    line = bytes(self._data)
                    self._data.clear()
                    return line
                return None
            wait = None if deadline is None else _remaining(deadline, what)
            self._recv(wait, what)

    def read_line(self, timeout: Optional[float]) -> Optional[bytes]:
        """The next line (with its newline), or None once the node ended the
        stream. Raises :class:`VigilTimeout` if no line arrived within ``timeout``
        seconds (None: wait as long as it takes); the stream stays usable."""
        if self._sock is None:
            return None
        return self._next_line(timeout, f"GET {self.url}")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
