"""Heartbeats from a background thread.

Why a thread: from its first heartbeat, an agent that sends none for the node's
deadline (``--heartbeat-timeout``, 2 s by default) has failed; the node restarts
it, then hands it to another host. An agent's real work (a model call, a long
graph step) easily blocks longer than that, so heartbeats must not wait for it.

Why it stops by itself: a heartbeat answered ``409 not_owner``, ``stale_epoch``,
``agent_fenced`` or ``agent_isolated`` means another copy may now run elsewhere
and this one must stop. The thread then ends and sets :attr:`Heartbeater.must_stop`,
which the agent's main loop checks (or waits on) between steps.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import GaveUp, VigilError
from .models import HeartbeatAck

if TYPE_CHECKING:
    from .client import VigilClient

log = logging.getLogger("vigil_client")


class Heartbeater:
    """Sends ``POST /v1/agents/{id}/heartbeat`` every ``interval`` seconds from a
    daemon thread, until :meth:`stop` or until it must stop.

    - The first heartbeat is sent by :meth:`start` itself, so a definite problem
      (an unknown agent, another owner, no socket) raises there, in the caller.
    - The period is at most a quarter of the deadline the node reports, so one
      or two lost heartbeats do not make the agent fail.
    - Retryable failures (node restarting, timeouts) are retried every period
      and logged sparingly; after ``give_up_after`` seconds without a success it
      stops with :class:`~vigil_client.errors.GaveUp`.
    - Any other failure, :class:`~vigil_client.errors.MustStop` in particular,
      stops it at once. Either way :attr:`must_stop` is set, :attr:`reason`
      holds the error, and ``on_stop(reason)`` is called from the thread.

    Use it as a context manager to stop it cleanly on the way out."""

    def __init__(
        self,
        client: "VigilClient",
        agent_id: str,
        *,
        interval: float = 0.5,
        give_up_after: float = 30.0,
        timeout: Optional[float] = None,
        on_stop: Optional[Callable[[VigilError], None]] = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.client = client
        self.agent_id = agent_id
        self.interval = interval
        self.give_up_after = give_up_after
        self.timeout = timeout
        self.on_stop = on_stop
        #: Set when the node said this copy must stop, or the heartbeater gave up.
        self.must_stop = threading.Event()
        #: Why :attr:`must_stop` is set.
        self.reason: Optional[VigilError] = None
        #: The latest acknowledgement (epoch, deadline).
        self.last_ack: Optional[HeartbeatAck] = None
        #: Heartbeats acknowledged so far.
        self.beats = 0
        #: Failures in a row.
        self.failures = 0
        self._halt = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_ok = time.monotonic()
        self._last_logged = 0.0

    @property
    def period(self) -> float:
        """Seconds between heartbeats: ``interval``, or less if the node's
        deadline needs it."""
        if self.last_ack is not None and self.last_ack.deadline_ms > 0:
            return min(self.interval, self.last_ack.deadline_ms / 4000.0)
        return self.interval

    def start(self) -> HeartbeatAck:
        """Sends the first heartbeat (raising its error, if any) and starts the
        thread. Returns the first acknowledgement."""
        if self._thread is not None:
            raise RuntimeError("this heartbeater was started already")
        ack = self.client.heartbeat(self.agent_id, timeout=self.timeout)
        self._ok(ack)
        self._thread = threading.Thread(
            target=self._run, name=f"vigil-heartbeat-{self.agent_id}", daemon=True
        )
        self._thread.start()
        return ack

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stops the thread and waits for it (at most ``timeout`` seconds; by
        default one heartbeat's timeout plus a second). Idempotent."""
        self._halt.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            wait = timeout if timeout is not None else (self.timeout or self.client.timeout) + 1.0
            thread.join(wait)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Raises :attr:`reason` if the agent must stop; for the main loop."""
        if self.must_stop.is_set() and self.reason is not None:
            raise self.reason

    def __enter__(self) -> "Heartbeater":
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _ok(self, ack: HeartbeatAck) -> None:
        if self.failures:
            log.info("agent %s: heartbeats succeed again after %d failures", self.agent_id, self.failures)
        self.last_ack = ack
        self.beats += 1
        self.failures = 0
        self._last_ok = time.monotonic()

    def _finish(self, reason: VigilError) -> None:
        self.reason = reason
        self.must_stop.set()
        if self.on_stop is not None:
            try:
                self.on_stop(reason)
            except Exception:  # a callback's bug must not hide the reason
                log.exception("agent %s: on_stop callback failed", self.agent_id)

    def _run(self) -> None:
        next_at = time.monotonic() + self.period
        while not self._halt.wait(max(0.0, next_at - time.monotonic())):
            next_at = time.monotonic() + self.period
            try:
                self._ok(self.client.heartbeat(self.agent_id, timeout=self.timeout))
            except VigilError as e:
                if not e.retryable:
                    log.warning("agent %s: heartbeat refused, stopping: %s", self.agent_id, e)
                    self._finish(e)
                    return
                self.failures += 1
                silent = time.monotonic() - self._last_ok
                if silent >= self.give_up_after:
                    self._finish(
                        GaveUp(
                            f"agent {self.agent_id}: no heartbeat succeeded for {silent:.0f} s; "
                            f"last error: {e}",
                            e,
                        )
                    )
                    return
                now = time.monotonic()
                if now - self._last_logged >= 5.0:
                    self._last_logged = now
                    log.warning(
                        "agent %s: heartbeat failed (%d in a row), retrying: %s",
                        self.agent_id,
                        self.failures,
                        e,
                    )
