"""Graph checkpoints kept as vigil snapshots (LangGraph's checkpointer interface).

A LangGraph graph compiled with a checkpointer saves a checkpoint after every
super-step and the writes of every finished task in between, and reads the latest
one back to resume. :class:`VigilCheckpointSaver` keeps those checkpoints in the
agent's vigil snapshots, so when the agent's host dies, the copy vigil starts on
another host resumes the graph where the acknowledged checkpoint left it.

How the checkpoints map onto snapshots: vigil keeps, per agent, one sequence of
versions (the latest wins). The saver therefore keeps a document with the last
``history`` checkpoints of every (thread, namespace) of the agent, their pending
writes and their metadata, and puts the whole document as a new snapshot on every
:meth:`~VigilCheckpointSaver.put`, :meth:`~VigilCheckpointSaver.put_writes` and
:meth:`~VigilCheckpointSaver.delete_thread`. A call returns once vigil
acknowledged the snapshot (by default: fsynced on a majority of its copies), so a
checkpoint LangGraph was told is saved survives the host. The agent (the owner) is
the only writer of its snapshots, so the saver reads them once, at the first call,
and serves reads from memory afterwards.

Keep the state modest: each put sends the whole document, which must stay under
the node's ``max_snapshot`` (16 MiB by default); lower ``history`` if it grows.

With ``langgraph`` importable the class is a real
``langgraph.checkpoint.base.BaseCheckpointSaver`` (values are encoded with the
saver's ``serde``, LangGraph's serializer by default). Without it, it is a
standalone class with the same methods and a JSON serializer, used by the example
agent and usable by any graph runtime that calls savers the same way.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from .client import VigilClient
from .errors import NotFound, PayloadTooLarge, UnknownAgent, VigilError
from .models import PutResult

# LangGraph's metadata merge (it adds the config's own metadata), where it exists.
_langgraph_metadata: Optional[Callable[..., Any]]

try:  # pragma: no cover - depends on the environment
    from langgraph.checkpoint.base import (  # type: ignore[import-not-found, unused-ignore]
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        CheckpointTuple,
    )

    try:
        from langgraph.checkpoint.base import (  # type: ignore[import-not-found, unused-ignore]
            get_checkpoint_metadata,
        )

        _langgraph_metadata = get_checkpoint_metadata
    except ImportError:  # older langgraph
        _langgraph_metadata = None

    HAVE_LANGGRAPH = True
except ImportError:
    HAVE_LANGGRAPH = False
    _langgraph_metadata = None

    class CheckpointTuple(NamedTuple):  # type: ignore[no-redef, unused-ignore]
        """A checkpoint and what comes with it; the shape of LangGraph's."""

        config: Dict[str, Any]
        checkpoint: Dict[str, Any]
        metadata: Dict[str, Any]
        parent_config: Optional[Dict[str, Any]] = None
        pending_writes: Optional[List[Tuple[str, str, Any]]] = None

    class BaseCheckpointSaver:  # type: ignore[no-redef, unused-ignore]
        """Stands in for LangGraph's base class when LangGraph is not installed."""

        def __init__(self, *, serde: Any = None) -> None:
            self.serde = serde if serde is not None else JsonSerde()

    # LangGraph's special write channels and the indexes its savers give them, so
    # that an error or interrupt written twice replaces itself.
    WRITES_IDX_MAP = {"__error__": -1, "__scheduled__": -2, "__interrupt__": -3, "__resume__": -4}


def _checkpoint_id(config: Optional[Mapping[str, Any]]) -> Optional[str]:
    if not config:
        return None
    value = (config.get("configurable") or {}).get("checkpoint_id")
    return str(value) if value else None


def _metadata(config: Mapping[str, Any], metadata: Mapping[str, Any]) -> Any:
    """The metadata to store: LangGraph adds the config's own metadata to it."""
    if _langgraph_metadata is not None:
        return _langgraph_metadata(config, dict(metadata))
    return dict(metadata)


#: The ``format`` field of the snapshot document.
FORMAT = "vigil-checkpoints/1"


class JsonSerde:
    """The serializer used without LangGraph: values must be JSON-encodable.
    Same ``dumps_typed``/``loads_typed`` shape as LangGraph's serializers."""

    def dumps_typed(self, obj: Any) -> Tuple[str, bytes]:
        return "json", json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def loads_typed(self, data: Tuple[str, bytes]) -> Any:
        kind, raw = data
        if kind != "json":
            raise ValueError(f"JsonSerde cannot decode values of type {kind!r}; install langgraph")
        return json.loads(raw)


class CheckpointFormatError(VigilError):
    """The agent's snapshot is not a checkpoint document this saver can read (it
    was written by something else, or by a newer format)."""


class CheckpointTooLarge(VigilError):
    """The document of retained checkpoints is over the client's ``max_snapshot``;
    lower ``history``, keep less state, or raise the node's and the client's limit."""


_id_lock = threading.Lock()
_last_id_ns = 0


def new_checkpoint_id() -> str:
    """An id that sorts after every id this process made before (like LangGraph's
    uuid6): the wall-clock time in ns, forced to grow, then randomness against
    collisions with other processes."""
    global _last_id_ns
    with _id_lock:
        _last_id_ns = max(_last_id_ns + 1, time.time_ns())
        ns = _last_id_ns
    return f"{ns:020d}-{uuid.uuid4().hex[:12]}"


def make_checkpoint(
    channel_values: Mapping[str, Any],
    previous: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """A checkpoint dict shaped like LangGraph's, for graphs run without it:
    every channel in ``channel_values`` gets its version raised by one over
    ``previous``."""
    old_versions: Mapping[str, Any] = previous.get("channel_versions", {}) if previous else {}
    versions = dict(old_versions)
    for name in channel_values:
        current = old_versions.get(name)
        versions[name] = (current if isinstance(current, int) else 0) + 1
    return {
        "v": 1,
        "id": new_checkpoint_id(),
        "ts": datetime.now(timezone.utc).isoformat(),
        "channel_values": dict(channel_values),
        "channel_versions": versions,
        "versions_seen": dict(previous.get("versions_seen", {})) if previous else {},
        "updated_channels": list(channel_values),
    }


def _enc(typed: Tuple[str, bytes]) -> List[str]:
    kind, raw = typed
    return [kind, base64.b64encode(bytes(raw)).decode("ascii")]


def _dec(value: Any) -> Tuple[str, bytes]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise CheckpointFormatError(f"a stored value is not [type, base64]: {value!r:.80}")
    return value[0], base64.b64decode(value[1])


class _Saved:
    """One stored checkpoint, values still encoded."""

    __slots__ = ("id", "parent_id", "checkpoint", "metadata")

    def __init__(self, id: str, parent_id: Optional[str], checkpoint: List[str], metadata: List[str]) -> None:
        self.id = id
        self.parent_id = parent_id
        self.checkpoint = checkpoint
        self.metadata = metadata

    def to_json(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "checkpoint": self.checkpoint,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, obj: Any) -> "_Saved":
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise CheckpointFormatError("a checkpoint entry without an id")
        return cls(obj["id"], obj.get("parent_id"), obj["checkpoint"], obj["metadata"])


#: One stored write: [task_id, channel, encoded value, task_path, idx].
_Write = List[Any]
#: A checkpoint's writes by (task_id, idx).
_Writes = Dict[Tuple[str, int], _Write]


class _Thread:
    """The retained checkpoints of one (thread, namespace), oldest first, and the
    pending writes by checkpoint id.

    Writes are kept apart from their checkpoints because LangGraph may save a
    task's writes before the checkpoint they belong to is saved (with its default
    asynchronous durability both are saved in the background). Writes for a
    checkpoint that is no longer retained, or older than every retained one, are
    dropped with it. Instances are not changed once built (copy, then swap), so a
    failed put can put the old one back."""

    __slots__ = ("checkpoints", "writes")

    def __init__(self, checkpoints: List[_Saved], writes: Dict[str, _Writes]) -> None:
        self.checkpoints = checkpoints
        self.writes = writes

    def trimmed(self, history: int) -> "_Thread":
        kept = self.checkpoints[-history:]
        ids = {c.id for c in kept}
        oldest = kept[0].id if kept else ""
        # Ids grow over time (LangGraph's and make_checkpoint's), so writes for an
        # id newer than the oldest kept checkpoint may still get their checkpoint.
        writes = {cid: w for cid, w in self.writes.items() if cid in ids or cid > oldest}
        # Never more orphaned groups than checkpoints kept.
        orphans = sorted(cid for cid in writes if cid not in ids)
        for cid in orphans[: max(0, len(orphans) - history)]:
            del writes[cid]
        return _Thread(kept, writes)

    def to_json(self, tid: str, ns: str) -> Dict[str, Any]:
        return {
            "thread_id": tid,
            "checkpoint_ns": ns,
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "writes": {cid: list(w.values()) for cid, w in self.writes.items() if w},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "_Thread":
        checkpoints = [_Saved.from_json(c) for c in obj.get("checkpoints", [])]
        writes: Dict[str, _Writes] = {}
        for cid, group in (obj.get("writes") or {}).items():
            stored: _Writes = {}
            for w in group:
                if not (isinstance(w, list) and len(w) == 5):
                    raise CheckpointFormatError(f"a malformed write entry: {w!r:.80}")
                stored[(w[0], int(w[4]))] = w
            writes[str(cid)] = stored
        return cls(checkpoints, writes)


def _thread_key(config: Mapping[str, Any]) -> Tuple[str, str]:
    conf = config.get("configurable") or {}
    if "thread_id" not in conf:
        raise ValueError('the config needs configurable["thread_id"]')
    return str(conf["thread_id"]), str(conf.get("checkpoint_ns", "") or "")


def _config(thread_id: str, ns: str, checkpoint_id: str) -> Dict[str, Any]:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


class VigilCheckpointSaver(BaseCheckpointSaver):  # type: ignore[misc, unused-ignore]
    """A LangGraph checkpointer that stores an agent's checkpoints in vigil.

    ``client`` talks to the node of this host, which must own ``agent_id``
    (register the agent first). ``initial`` is a snapshot body to start from
    instead of asking the cluster, e.g. the file the launcher passes as
    ``{snapshot}``. ``history`` is how many checkpoints per thread and namespace
    are kept (older ones are dropped from the document; vigil itself keeps the
    last few snapshot versions too). ``ack`` is the acknowledgement each put waits
    for (None: the node's default, ``quorum``).

    Thread-safe: calls are serialized, so snapshots are put in the order the
    checkpoints were made. The ``a*`` methods run the same code in a worker thread.
    A put that fails (e.g. :class:`~vigil_client.errors.NotOwner`: another host
    took the agent over) raises and leaves the saver as it was before the call.
    """

    def __init__(
        self,
        client: VigilClient,
        agent_id: str,
        *,
        history: int = 10,
        ack: Optional[str] = None,
        initial: Optional[bytes] = None,
        serde: Any = None,
    ) -> None:
        super().__init__(serde=serde)
        if history < 1:
            raise ValueError("history must be at least 1")
        self.client = client
        self.agent_id = agent_id
        self.history = history
        self.ack = ack
        self._initial = initial
        self._lock = threading.RLock()
        self._loaded = False
        # (thread_id, ns) -> its checkpoints and writes
        self._threads: Dict[Tuple[str, str], _Thread] = {}
        #: The snapshot the saver started from: (epoch, seq), or None if it started
        #: empty or from ``initial``.
        self.restored: Optional[Tuple[int, int]] = None
        #: The acknowledgement of the latest put.
        self.last_put: Optional[PutResult] = None

    # --- loading and saving ------------------------------------------------

    def load(self) -> None:
        """Reads the agent's checkpoints (from ``initial``, else the cluster's
        latest snapshot; none yet means an empty history). Called by the first
        method that needs them; call it yourself to choose when the read happens
        and to retry it on :class:`~vigil_client.errors.Unavailable`."""
        with self._lock:
            if self._loaded:
                return
            body = self._initial
            if body is None or not body.strip():
                try:
                    snap = self.client.get_snapshot(self.agent_id)
                except (UnknownAgent, NotFound):
                    body = None
                else:
                    body = snap.body
                    self.restored = (snap.epoch, snap.seq)
            self._threads = self._parse(body) if body is not None and body.strip() else {}
            self._loaded = True
            self._initial = None

    def _parse(self, body: bytes) -> Dict[Tuple[str, str], _Thread]:
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise CheckpointFormatError(
                f"agent {self.agent_id}: its snapshot is not a checkpoint document ({e})"
            ) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CheckpointFormatError(
                f"agent {self.agent_id}: its snapshot is not a {FORMAT} document "
                f"(format {doc.get('format') if isinstance(doc, dict) else None!r})"
            )
        threads: Dict[Tuple[str, str], _Thread] = {}
        for t in doc.get("threads", []):
            if not isinstance(t, dict) or "thread_id" not in t:
                raise CheckpointFormatError(f"agent {self.agent_id}: a thread entry without thread_id")
            key = (str(t["thread_id"]), str(t.get("checkpoint_ns", "")))
            threads[key] = _Thread.from_json(t)
        return threads

    def document(self) -> bytes:
        """The snapshot body for the current checkpoints."""
        with self._lock:
            self.load()
            doc = {
                "format": FORMAT,
                "agent": self.agent_id,
                "threads": [
                    thread.to_json(tid, ns)
                    for (tid, ns), thread in self._threads.items()
                    if thread.checkpoints or thread.writes
                ],
            }
            return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    def _persist(self) -> PutResult:
        body = self.document()
        if len(body) > self.client.max_snapshot:
            raise CheckpointTooLarge(
                f"agent {self.agent_id}: {len(body)} bytes of checkpoints exceed max_snapshot "
                f"({self.client.max_snapshot}); lower history (now {self.history}) or keep less state"
            )
        try:
            result = self.client.put_snapshot(self.agent_id, body, ack=self.ack)
        except PayloadTooLarge as e:
            raise CheckpointTooLarge(f"agent {self.agent_id}: the node refused the checkpoints: {e}") from e
        self.last_put = result
        return result

    def _commit(self, key: Tuple[str, str], new: _Thread) -> None:
        """Replaces one thread's checkpoints and puts the snapshot; on failure the
        thread's checkpoints are left as they were."""
        old = self._threads.get(key)
        self._threads[key] = new
        try:
            self._persist()
        except BaseException:
            if old is None:
                self._threads.pop(key, None)
            else:
                self._threads[key] = old
            raise

    # --- the checkpointer interface ------------------------------------------

    def get_tuple(self, config: Mapping[str, Any]) -> Optional[CheckpointTuple]:
        """The checkpoint named by ``configurable.checkpoint_id``, or the thread's
        latest; None if there is none."""
        with self._lock:
            self.load()
            key = _thread_key(config)
            thread = self._threads.get(key)
            saved = thread.checkpoints if thread else []
            wanted = _checkpoint_id(config)
            if wanted:
                found = [c for c in saved if c.id == wanted]
                entry = found[0] if found else None
            else:
                entry = saved[-1] if saved else None
            return None if entry is None or thread is None else self._tuple(key, thread, entry)

    def _tuple(self, key: Tuple[str, str], thread: _Thread, entry: _Saved) -> CheckpointTuple:
        tid, ns = key
        # In LangGraph's order: task path, task id, index.
        stored = thread.writes.get(entry.id, {}).values()
        writes = sorted(stored, key=lambda w: (w[3], w[0], int(w[4])))
        return CheckpointTuple(
            config=_config(tid, ns, entry.id),
            checkpoint=self.serde.loads_typed(_dec(entry.checkpoint)),
            metadata=self.serde.loads_typed(_dec(entry.metadata)),
            parent_config=_config(tid, ns, entry.parent_id) if entry.parent_id else None,
            pending_writes=[(w[0], w[1], self.serde.loads_typed(_dec(w[2]))) for w in writes],
        )

    def list(
        self,
        config: Optional[Mapping[str, Any]],
        *,
        filter: Optional[Dict[str, Any]] = None,
        before: Optional[Mapping[str, Any]] = None,
        limit: Optional[int] = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace and
        checkpoint id, when given) or of every thread (``config`` None), only
        those whose metadata has every item of ``filter``, only those older than
        ``before``'s checkpoint, at most ``limit``."""
        with self._lock:
            self.load()
            tuples: List[CheckpointTuple] = []
            conf = (config or {}).get("configurable") or {}
            want_tid = conf.get("thread_id") if config else None
            want_ns = conf.get("checkpoint_ns") if config else None
            want_id = _checkpoint_id(config)
            before_id = _checkpoint_id(before)
            for (tid, ns), thread in self._threads.items():
                if want_tid is not None and tid != str(want_tid):
                    continue
                if want_ns is not None and ns != want_ns:
                    continue
                saved = thread.checkpoints
                ids = [c.id for c in saved]
                cut = ids.index(before_id) if before_id in ids else len(saved)
                for entry in reversed(saved[:cut]):
                    if want_id and entry.id != want_id:
                        continue
                    tup = self._tuple((tid, ns), thread, entry)
                    if filter and not all(tup.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    tuples.append(tup)
            if config is None:
                tuples.sort(key=lambda t: t.config["configurable"]["checkpoint_id"], reverse=True)
            if limit is not None:
                tuples = tuples[: max(0, limit)]
        return iter(tuples)

    def put(
        self,
        config: Mapping[str, Any],
        checkpoint: Mapping[str, Any],
        metadata: Mapping[str, Any],
        new_versions: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Stores a checkpoint as the thread's latest and returns the config that
        names it. Returns once vigil acknowledged the snapshot."""
        with self._lock:
            self.load()
            key = _thread_key(config)
            parent = (config.get("configurable") or {}).get("checkpoint_id")
            entry = _Saved(
                id=str(checkpoint["id"]),
                parent_id=str(parent) if parent else None,
                checkpoint=_enc(self.serde.dumps_typed(dict(checkpoint))),
                metadata=_enc(self.serde.dumps_typed(_metadata(config, metadata))),
            )
            old = self._threads.get(key) or _Thread([], {})
            saved = [c for c in old.checkpoints if c.id != entry.id]
            saved.append(entry)
            self._commit(key, _Thread(saved, dict(old.writes)).trimmed(self.history))
            return _config(key[0], key[1], entry.id)

    def put_writes(
        self,
        config: Mapping[str, Any],
        writes: Sequence[Tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores a task's writes against the checkpoint in ``config``, so a run
        that dies mid-step does not redo finished tasks. A regular write already
        stored for (task, index) is kept; special ones (errors, interrupts) are
        replaced. The checkpoint may be put after its writes."""
        with self._lock:
            self.load()
            key = _thread_key(config)
            cid = _checkpoint_id(config)
            if not cid:
                raise ValueError('put_writes needs configurable["checkpoint_id"] in the config')
            thread = self._threads.get(key) or _Thread([], {})
            current = thread.writes.get(cid, {})
            updated = dict(current)
            for idx, (channel, value) in enumerate(writes):
                slot = WRITES_IDX_MAP.get(channel, idx)
                if slot >= 0 and (task_id, slot) in updated:
                    continue
                updated[(task_id, slot)] = [
                    task_id,
                    channel,
                    _enc(self.serde.dumps_typed(value)),
                    task_path,
                    slot,
                ]
            if updated == current:
                return
            groups = dict(thread.writes)
            groups[cid] = updated
            self._commit(key, _Thread(thread.checkpoints, groups).trimmed(self.history))

    def delete_thread(self, thread_id: str) -> None:
        """Drops every checkpoint and write of the thread (all namespaces)."""
        with self._lock:
            self.load()
            removed = {k: v for k, v in self._threads.items() if k[0] == str(thread_id)}
            if not removed:
                return
            for k in removed:
                del self._threads[k]
            try:
                self._persist()
            except BaseException:
                self._threads.update(removed)
                raise

    # --- async versions (the same work in a worker thread) -------------------

    async def _in_thread(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def aget_tuple(self, config: Mapping[str, Any]) -> Optional[CheckpointTuple]:
        return await self._in_thread(self.get_tuple, config)

    async def alist(
        self,
        config: Optional[Mapping[str, Any]],
        *,
        filter: Optional[Dict[str, Any]] = None,
        before: Optional[Mapping[str, Any]] = None,
        limit: Optional[int] = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await self._in_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: Mapping[str, Any],
        checkpoint: Mapping[str, Any],
        metadata: Mapping[str, Any],
        new_versions: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        config_out: Dict[str, Any] = await self._in_thread(
            self.put, config, checkpoint, metadata, new_versions
        )
        return config_out

    async def aput_writes(
        self,
        config: Mapping[str, Any],
        writes: Sequence[Tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._in_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._in_thread(self.delete_thread, thread_id)
