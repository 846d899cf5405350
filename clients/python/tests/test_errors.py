"""What the client raises when no node answers, and the code table against the docs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from vigil_cluster import Cluster

from vigil_client import VigilClient
from vigil_client import errors as E

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vigil-py-", dir="/tmp") as d:
        yield Path(d)


def test_a_missing_socket_says_where_it_looked_and_what_to_set(scratch: Path) -> None:
    path = scratch / "nope.sock"
    with pytest.raises(E.SocketNotFound) as err:
        VigilClient(path).health()
    assert str(path) in str(err.value) and "VIGIL_SOCKET" in str(err.value)
    assert err.value.socket_path == str(path) and err.value.retryable


def test_a_left_over_socket_file_means_no_node_is_running(scratch: Path) -> None:
    path = scratch / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))  # bound, never listening: connections are refused
    try:
        with pytest.raises(E.NodeNotRunning) as err:
            VigilClient(path).members()
        assert "not started" in str(err.value) or "died" in str(err.value)
    finally:
        s.close()


def test_a_node_that_never_answers_times_out_within_the_bound(scratch: Path) -> None:
    path = scratch / "mute.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)  # connections complete in the backlog; nobody reads or answers
    try:
        client = VigilClient(path, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(E.VigilTimeout):
            client.health()
        assert time.monotonic() - started < 5, "the timeout bounds the whole call"
        with pytest.raises(E.VigilTimeout):
            client.events(timeout=0.3)
    finally:
        s.close()


def test_permission_denied_on_the_socket_is_explained(cluster: Cluster) -> None:
    """The node's socket is 0660 and owned by the node's user: another user gets
    a clear SocketPermissionDenied. As root (who may connect anywhere) the probe
    runs as nobody; otherwise the socket is made unreadable for a moment."""
    sock = cluster.nodes["n1"].socket
    if os.geteuid() == 0:
        # The probe imports the client as root, then becomes nobody and connects.
        src = Path(__file__).resolve().parents[1] / "src"
        probe = (
            "import os, sys; sys.path.insert(0, sys.argv[1])\n"
            "from vigil_client import VigilClient, errors as E\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "try:\n    VigilClient(sys.argv[2]).health()\n"
            "except E.SocketPermissionDenied as e:\n    print('denied:', e); sys.exit(0)\n"
            "except Exception as e:\n    print('other:', type(e).__name__, e); sys.exit(1)\n"
            "print('connected'); sys.exit(1)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, str(src), str(sock)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0660" in out.stdout and "group" in out.stdout
    else:
        mode = sock.stat().st_mode
        os.chmod(sock, 0)
        try:
            with pytest.raises(E.SocketPermissionDenied) as err:
                VigilClient(sock).health()
            assert not err.value.retryable and "0660" in str(err.value)
        finally:
            os.chmod(sock, mode & 0o777)


def _documented_codes() -> set:
    """Every error code in docs/API.md's status/code tables."""
    text = (REPO / "docs" / "API.md").read_text()
    codes = set()
    for line in text.splitlines():
        m = re.match(r"\|\s*(\d{3})\s*\|(.*?)\|", line)
        if m:
            codes.update(re.findall(r"`([a-z_]+)`", m.group(2)))
    return codes


def test_every_documented_error_code_has_its_exception_class() -> None:
    documented = _documented_codes()
    assert {"not_owner", "unknown_agent", "unavailable", "bad_request"} <= documented, documented
    missing = documented - set(E.CODES)
    assert not missing, f"codes in docs/API.md without a class in errors.CODES: {sorted(missing)}"
    for code, cls in E.CODES.items():
        err = E.api_error(418, code, "m")
        assert type(err) is cls and (err.code, err.message) == (code, "m")


def test_unknown_codes_fall_back_on_their_status() -> None:
    assert type(E.api_error(409, "some_new_conflict", "m")) is E.Conflict
    assert type(E.api_error(503, "some_new_outage", "m")) is E.Unavailable
    assert E.api_error(503, "some_new_outage", "m").retryable
    assert type(E.api_error(418, "teapot", "m")) is E.ApiError
    for code in ("not_owner", "stale_epoch", "agent_fenced", "agent_isolated"):
        assert isinstance(E.api_error(409, code, "m"), E.MustStop)
    assert not isinstance(E.api_error(409, "takeover_failed", "m"), E.MustStop)


def test_socket_access_refusals_say_whether_to_retry() -> None:
    refused = E.api_error(403, "uid_not_allowed", "uid 1002 may not use this node's API")
    assert isinstance(refused, E.UidNotAllowed) and isinstance(refused, E.Forbidden)
    assert not refused.retryable, "waiting does not change the allow list"
    for status, code, cls in [
        (429, "too_many_client_connections", E.TooManyClientConnections),
        (429, "too_many_streams", E.TooManyStreams),
        (503, "too_many_connections", E.TooManyConnections),
        (408, "body_timeout", E.BodyTimeout),
    ]:
        err = E.api_error(status, code, "m")
        assert type(err) is cls and err.retryable, code
    assert type(E.api_error(429, "some_new_limit", "m")) is E.TooManyRequests
    assert type(E.api_error(403, "some_new_refusal", "m")) is E.Forbidden
