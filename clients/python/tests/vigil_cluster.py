"""Local clusters of real ``vigil agent`` processes for the tests.

The same recipe as the Rust harness (node/src/harness.rs): certificates made
with ``vigil cert``, one process per node bound to 127.0.0.1 on a free port, the
node's JSON ready line read from stdout, its log in ``NAME/node.log``. Waits poll
the nodes' answers against a deadline; nothing sleeps to assert timing.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

from vigil_client import VigilClient
from vigil_client.errors import VigilError

T = TypeVar("T")

#: How long a node may take to print its ready line.
START_TIMEOUT = 20.0
#: Bounds for convergence and for a change to spread or settle (a takeover learned, a
#: heartbeat refused): they only cap how long a broken build hangs, on a busy machine.
CONVERGE = 30.0
SETTLE = 20.0


def vigil_bin() -> str:
    path = os.environ.get("VIGIL_BIN")
    if not path:
        raise RuntimeError(
            "VIGIL_BIN is not set: point it at a vigil binary (cargo build -p vigil; "
            "target/debug/vigil), or run the suite through `cargo test -p vigil-tests --test python_client`"
        )
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"VIGIL_BIN={path} is not an executable file")
    return path


def wait_for(what: str, timeout: float, check: Callable[[], Optional[T]], every: float = 0.05) -> T:
    """Polls ``check`` until it returns something other than None (or False);
    retryable client errors count as "not yet". Raises AssertionError naming
    ``what`` and the last value or error at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value is not None and value is not False:
                return value
            last = value
        except VigilError as e:
            if not e.retryable:
                raise
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(every)


@dataclass
class Node:
    name: str
    zone: str
    dir: Path
    socket: Path
    data_dir: Path
    log: Path
    addr: str = ""
    pid: int = 0
    proc: Optional[subprocess.Popen] = None

    @property
    def client(self) -> VigilClient:
        return VigilClient(self.socket, timeout=10.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Cluster:
    """Certificates for ``names`` in a fresh scratch directory, no node started.

    The directory is under /tmp with a short name: Unix socket paths are limited
    to 107 bytes."""

    def __init__(self, names: Sequence[str], *, env: Optional[Dict[str, str]] = None) -> None:
        self.binary = vigil_bin()
        self.root = Path(tempfile.mkdtemp(prefix="vigil-py-", dir="/tmp"))
        self.pki = self.root / "pki"
        self.nodes: Dict[str, Node] = {}
        self.extra_env = dict(env or {})
        self._run(["cert", "init", "--out", str(self.pki)])
        for name in names:
            self._run(["cert", "issue", "--ca", str(self.pki), "--name", name])

    def _run(self, args: List[str]) -> None:
        out = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"vigil {' '.join(args)} failed ({out.returncode}): {out.stderr}")

    def _env(self) -> Dict[str, str]:
        # Nothing from the caller's VIGIL_* settings may leak into the nodes.
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        env["RUST_LOG"] = "info"
        env.update(self.extra_env)
        return env

    def start(self, name: str, zone: str, seeds: Sequence[str] = (), extra: Sequence[str] = ()) -> Node:
        d = self.root / name
        d.mkdir(exist_ok=True)
        node = Node(name, zone, d, d / "vigil.sock", d / "data", d / "node.log")
        cmd = [
            self.binary,
            "agent",
            "--name",
            name,
            "--zone",
            zone,
            "--bind",
            "127.0.0.1:0",
            "--pki",
            str(self.pki),
            "--socket",
            str(node.socket),
            "--data-dir",
            str(node.data_dir),
            "--profile",
            "lan",
        ]
        for seed in seeds:
            cmd += ["--seed", seed]
        cmd += list(extra)
        log = open(node.log, "ab")
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=self._env()
            )
        finally:
            log.close()
        node.proc = proc
        self.nodes[name] = node
        line = self._ready_line(node)
        try:
            ready = json.loads(line)
        except ValueError:
            raise RuntimeError(
                f"node {name}: unexpected first line {line!r}; log:\n{node.log_tail()}"
            ) from None
        node.addr = ready["addr"]
        node.pid = ready["pid"]
        return node

    def _ready_line(self, node: Node) -> str:
        assert node.proc is not None and node.proc.stdout is not None
        out = node.proc.stdout
        sel = selectors.DefaultSelector()
        sel.register(out, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(
                        f"node {node.name}: not ready after {START_TIMEOUT} s; log:\n{node.log_tail()}"
                    )
                piece = os.read(out.fileno(), 4096)
                if not piece:
                    code = node.proc.wait(5)
                    raise RuntimeError(
                        f"node {node.name} exited ({code}) before it was ready; log:\n{node.log_tail()}"
                    )
                buf += piece
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode()

    def start_all(self, nodes: Sequence[tuple], extra: Sequence[str] = ()) -> None:
        """Starts (name, zone) pairs in order, the first seeding the others."""
        seed: List[str] = []
        for name, zone in nodes:
            node = self.start(name, zone, seed, extra)
            if not seed:
                seed = [node.addr]

    def running(self) -> List[Node]:
        return [n for n in self.nodes.values() if n.running]

    def wait_converged(self, timeout: float = CONVERGE) -> None:
        """Until every running node sees exactly the running nodes alive."""
        names = {n.name for n in self.running()}
        for node in self.running():
            wait_for(
                f"{node.name} to see {sorted(names)} alive",
                timeout,
                lambda node=node: names <= {m.name for m in node.client.members() if m.state == "alive"},
            )

    def kill(self, name: str) -> None:
        """SIGKILL, then reap."""
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)

    def stop_all(self) -> None:
        """SIGTERM every running node (each leaves gracefully and stops the agents
        it launched), SIGKILL what does not exit within 10 s."""
        for node in self.running():
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(10)
            if node.proc.stdout is not None:
                node.proc.stdout.close()

    def cleanup(self, keep: bool = False) -> None:
        self.stop_all()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)
