"""The event stream reader on byte-exact answers a real node does not produce on
demand: chunks split at every byte, a ``lagged`` cut-off, an oversized line.

A scripted server on a Unix socket plays the node's side of the HTTP exchange;
everything else (the event API against real nodes) is in test_events.py.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List

import pytest

from vigil_client import VigilClient
from vigil_client import errors as E


def event(index: int) -> bytes:
    record = {
        "index": index,
        "time": "t",
        "time_ms": 1,
        "type": "member_joined",
        "node": "n1",
        "generation": 7,
    }
    return json.dumps(record).encode() + b"\n"


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"


class ScriptedNode:
    """Answers the n-th connection with ``answers[n]``, written one byte at a time,
    and records each request line."""

    def __init__(self, path: Path, answers: List[bytes]) -> None:
        self.requests: List[str] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, args=(answers,), daemon=True)
        self.thread.start()

    def _serve(self, answers: List[bytes]) -> None:
        for answer in answers:
            conn, _ = self.sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                self.requests.append(data.split(b"\r\n", 1)[0].decode())
                try:
                    for i in range(len(answer)):
                        conn.sendall(answer[i : i + 1])
                except OSError:
                    pass  # the client hung up early (as it should on an oversized line)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vigil-py-", dir="/tmp") as d:
        yield Path(d) / "node.sock"


def test_events_split_at_every_byte_are_read_whole(socket_path: Path) -> None:
    node = ScriptedNode(socket_path, [HEAD + chunked(event(1) + event(2)[:10], event(2)[10:], event(3))])
    try:
        with VigilClient(socket_path).events(idle_timeout=10) as stream:
            assert [e.index for e in stream] == [1, 2, 3]
            assert stream.next() is None, "the end of the stream is not an error"
        assert node.requests == ["GET /v1/events HTTP/1.1"]
    finally:
        node.close()


def test_watch_resumes_after_a_lagged_cut_off(socket_path: Path) -> None:
    lagged = json.dumps({"error": "fell behind", "code": "lagged"}).encode() + b"\n"
    node = ScriptedNode(
        socket_path,
        [HEAD + chunked(event(5), event(6), lagged), HEAD + chunked(event(7))],
    )
    try:
        client = VigilClient(socket_path)
        assert [e.index for e in client.watch(since=4, idle_timeout=10)] == [5, 6, 7]
        assert node.requests == [
            "GET /v1/events?since=4 HTTP/1.1",
            "GET /v1/events?since=6 HTTP/1.1",
        ]
    finally:
        node.close()


def test_a_lagged_stream_says_where_to_resume(socket_path: Path) -> None:
    lagged = json.dumps({"error": "fell behind", "code": "lagged"}).encode() + b"\n"
    node = ScriptedNode(socket_path, [HEAD + chunked(event(1), lagged)])
    try:
        with VigilClient(socket_path).events(idle_timeout=10) as stream:
            assert stream.next() is not None
            with pytest.raises(E.Lagged) as err:
                stream.next()
            assert err.value.last_index == 1 and err.value.code == "lagged"
    finally:
        node.close()


def test_a_line_over_the_limit_is_refused(socket_path: Path) -> None:
    node = ScriptedNode(socket_path, [HEAD + chunked(b"x" * 2000 + b"\n")])
    try:
        with VigilClient(socket_path, max_event_line=1000).events(idle_timeout=10) as stream:
            with pytest.raises(E.ResponseTooLarge):
                stream.next()
    finally:
        node.close()
