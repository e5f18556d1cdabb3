"""`HybridSaver`: a LangGraph checkpointer on the hybrid engine, serving sync and async graphs.

Where things live. Redis, per thread (one hash tag, the sliding TTL): each namespace's latest checkpoint, its
pending writes, and the channel blobs its values are built from. PostgreSQL: every checkpoint, channel version
and write, committed in batches by the same write-behind outbox as messages (a put is acknowledged once the
Redis script has run; with `async_writes=False` once PostgreSQL has committed). Redis down: straight to
PostgreSQL. A read of a thread's latest checkpoint is one Redis round trip (two in a process that has not
seen the thread's values), or none on an event loop that wrote or read it last, while this process holds the
thread's lease (cache/tracking.py: another process's write waits for it). Anything else (history, an
older checkpoint, a thread Redis does not hold) first commits the thread's waiting records, then reads
PostgreSQL, so every acknowledged write is seen.

A list channel (an agent's messages) is stored as the items appended since its previous version plus a
reference to that version, so a step writes what it added, not the thread's whole history again; a list that
was rewritten (`RemoveMessage`, an item replaced by id, summarization) is stored whole. In Redis, `_MERGE`
deltas of one span in a row are merged into one delta spanning them all (as a counter carries a digit), so a
read from Redis folds a few blobs per power of `_MERGE` versions, and each item is serialized again only once
per such power, never the whole list.
"""

from __future__ import annotations

import builtins
import contextlib
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from ..cache import CacheDown
from ..cache.tracking import changed
from ..config import Mode
from ..errors import BacklogFullError, InvalidInputError, StorageUnavailableError
from ..messages import has_forbidden_chars
from ..outbox import OutboxEntry
from .store import Blob, CheckpointStore, commit_records, jsonb, pack, put_record, text, unpack, writes_record

if TYPE_CHECKING:
    from langgraph.checkpoint.base import DeltaChannelHistory, PendingWrite  # DeltaChannel's (beta) surface

    from ..memory import HybridMemory

DELTA = "hm-delta/"  # blob type prefix: (previous version, items kept from it, new items)
# Values remembered per saver, at most: values, and items of list values (a non-list value counts as one), so
# that a process stepping thousands of short threads keeps them all and a few long ones do not hold gigabytes.
_KNOWN, _KNOWN_ITEMS = 4096, 50_000
_PER_CHANNEL = 2  # versions remembered per channel of a thread
_MERGE = 16  # in Redis, this many deltas of one span in a row become one delta (see `_chains`)
_SEP = "\x1f"  # between the parts of a Redis hash field name


class _Serialized(tuple[str, bytes]):
    """A non-list channel value as stored: decoded on every read (the caller may mutate what it gets)."""


# channel -> the blobs its value folds in Redis, each [version, the list's length there, span]: the first whole
# (span 0), each next a delta on the one before it spanning `span` puts (None: not known here)
Chains = dict[str, builtins.list[builtins.list[Any]] | None]


_Own = tuple[bytes, str, str, builtins.list[Any]]  # a pending write's Redis field value, task path, channel, value
_Call = tuple[str, tuple[Any, ...]]  # a Redis client method's name and arguments (RedisCache or SyncHotPath)
_T = TypeVar("_T")


def _drive(steps: Generator[_Call, Any, _T], cache: Any) -> _T:
    """Run `steps` (Redis calls as data, then a result) on a blocking client."""
    reply: Any = None
    while True:
        try:
            name, args = steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply = getattr(cache, name)(*args)


async def _adrive(steps: Generator[_Call, Any, _T], cache: Any) -> _T:
    """`_drive` on an event loop's client."""
    reply: Any = None
    while True:
        try:
            name, args = steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply = await getattr(cache, name)(*args)


def _name(what: str, value: Any) -> str:
    """An identifier as PostgreSQL's text columns take it: a str without control characters or lone surrogates
    (checked here: Redis would take it, and PostgreSQL refuse it after the put was acknowledged)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if not value.isprintable() and has_forbidden_chars(value):
        raise InvalidInputError(f"{what} must not contain control characters or lone surrogates")
    return value


def _size(value: builtins.list[Any] | _Serialized | None) -> int:
    """What a remembered value counts toward _KNOWN_ITEMS."""
    return 0 if value is None else 1 if isinstance(value, _Serialized) else len(value)


def _checkpoint_id(config: RunnableConfig) -> str | None:
    """A config's checkpoint_id, checked as a put's (PostgreSQL's text refuses a NUL)."""
    checkpoint_id = get_checkpoint_id(config)
    return None if checkpoint_id is None else _name("checkpoint_id", checkpoint_id)


def _texts(parts: builtins.list[bytes | str | None], *texts: int) -> builtins.list[Any]:
    """Record parts with those at the `texts` positions as str (None becomes "" or b"")."""
    return [text(p) or "" if i in texts else (p or b"") for i, p in enumerate(parts)]


@dataclass(slots=True)
class _Put:
    thread_id: str
    ns: str
    checkpoint_id: str
    values: dict[str, Any]
    versions: dict[str, str]
    blobs: builtins.list[Blob]  # for PostgreSQL
    hot_blobs: builtins.list[Blob]  # for Redis
    chains: Chains
    drop: builtins.list[tuple[str, str]]
    record: bytes
    hot: bytes


@dataclass(slots=True)
class _Writes:
    thread_id: str
    ns: str
    checkpoint_id: str
    record: bytes
    fields: builtins.list[tuple[str, bytes, bool]]
    own: dict[str, _Own]


class HybridSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer over a `HybridMemory`'s PostgreSQL: `create_agent(..., checkpointer=saver)`.

    One object serves sync and async graphs. The memory must have PostgreSQL (mode hybrid or persistent).
    """

    def __init__(self, memory: HybridMemory, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.memory = memory
        # List values by (thread, ns, channel, version), as this process stored or last read them: a version never
        # changes, so they serve reads without decoding, and delta encoding compares the next version with
        # them. Items are shared, not copied: LangGraph's reducers build new lists and never edit a stored
        # item in place. Bounded (`_keep`); with the checkpoint versions by id (LangGraph passes a put only its
        # parent's).
        self._lists: OrderedDict[tuple[str, str, str, str], builtins.list[Any] | _Serialized] = OrderedDict()
        self._held: dict[tuple[str, str, str], builtins.list[str]] = {}  # the versions `_lists` holds, by channel
        self._items = 0  # in `_lists` (see _KNOWN_ITEMS)
        # Per checkpoint: its channel versions and, where known (a put or a Redis read), its chains.
        self._versions: OrderedDict[tuple[str, str, str | None], tuple[dict[str, str], Chains | None]] = OrderedDict()
        # The list values of the pending writes this process last stored for each thread namespace, with the
        # field as stored in Redis: a read finding the same bytes there takes the items rather than decode them.
        self._written: dict[tuple[str, str], tuple[str, dict[str, _Own]]] = {}
        # The async hot paths run on the callers' loops (threads of their own), beside the engine loop.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HybridSaver(memory={self.memory!r})"

    # -- plumbing ----------------------------------------------------------------------------------------
    async def _store(self) -> CheckpointStore:
        core = self.memory._core
        await core.ensure_started()
        return CheckpointStore(core.need_store())

    def _keep(self, key: tuple[str, str, str, str], value: builtins.list[Any] | _Serialized) -> None:
        """Remember a version's value: of each channel of a thread, the newest `_PER_CHANNEL` versions (its
        latest value and the base of its next delta; an older version read from history is not kept), within
        `_KNOWN` values and `_KNOWN_ITEMS` items in all, the least recently used going first."""
        channel, version = key[:3], key[3]
        with self._lock:
            held = self._held.setdefault(channel, [])
            if version not in held:
                held.append(version)
                held.sort()  # versions sort in the order they were made (a zero-padded counter first)
                while len(held) > _PER_CHANNEL:
                    self._items -= _size(self._lists.pop((*channel, held.pop(0)), None))
                if version not in held:
                    return
            kept = value if isinstance(value, _Serialized) else list(value)
            self._items += _size(kept) - _size(self._lists.get(key))
            self._lists[key] = kept
            self._lists.move_to_end(key)
            while len(self._lists) > _KNOWN or self._items > _KNOWN_ITEMS:
                gone, was = self._lists.popitem(last=False)
                self._items -= _size(was)
                rest = self._held[gone[:3]]
                rest.remove(gone[3])
                if not rest:
                    del self._held[gone[:3]]

    def _used(self, key: tuple[str, str, str, str]) -> None:
        with self._lock, contextlib.suppress(KeyError):  # evicted by another thread meanwhile
            self._lists.move_to_end(key)

    def _check_thread(self, thread_id: Any) -> str:
        if not isinstance(thread_id, str) or not thread_id:
            raise InvalidInputError("configurable.thread_id must be a non-empty str")
        limit = self.memory.config.max_session_id_length
        if len(thread_id) > limit:
            raise InvalidInputError(f"thread_id has {len(thread_id)} characters; the limit is {limit}")
        return _name("thread_id", thread_id)

    def _ids(self, config: RunnableConfig) -> tuple[str, str]:
        conf = config["configurable"]
        return self._check_thread(conf.get("thread_id")), _name("checkpoint_ns", str(conf.get("checkpoint_ns", "")))

    # -- blobs -------------------------------------------------------------------------------------------
    def _dumps(self, what: str, value: Any) -> tuple[str, bytes]:
        try:
            return self.serde.dumps_typed(value)
        except (TypeError, ValueError) as exc:  # before anything is written
            raise InvalidInputError(f"{what} cannot be serialized ({type(exc).__name__}: {exc})") from None

    def _dump_blobs(self, thread_id: str, ns: str, values: dict[str, Any], versions: ChannelVersions,
                    parent_versions: dict[str, str]) -> builtins.list[Blob]:
        out: builtins.list[Blob] = []
        for channel, version in versions.items():
            version = _name("a channel version", str(version))
            _name("a channel", channel)
            if channel not in values:
                out.append((channel, version, "empty", None))
                continue
            value = values[channel]
            if isinstance(value, list):
                prev_version = parent_versions.get(channel)
                prev = self._lists.get((thread_id, ns, channel, prev_version)) if prev_version else None
                # Equal items (the same objects, compared by identity first) up to the previous length: only the
                # rest is new. An item replaced by id (`add_messages` with a known id) is a new object that
                # compares unequal, and so is every rewrite: stored whole.
                if isinstance(prev, list) and len(value) >= len(prev) and value[:len(prev)] == prev:
                    kind, data = self._dumps(f"channel {channel!r}", [prev_version, len(prev), value[len(prev):]])
                    out.append((channel, version, DELTA + kind, data))
                    continue
            kind, data = self._dumps(f"channel {channel!r}", value)
            out.append((channel, version, kind, data))
        self._check_size(out)
        return out

    def _check_size(self, blobs: builtins.list[Blob]) -> None:
        limit = self.memory.config.max_message_bytes * self.memory.config.max_messages_per_add
        size = sum(len(b[3] or b"") for b in blobs)
        if size > limit:
            raise InvalidInputError(f"a checkpoint of {size} bytes; the limit is {limit} "
                                    "(max_message_bytes x max_messages_per_add)")

    def _value(self, known: builtins.list[Any] | _Serialized) -> Any:
        return self.serde.loads_typed((known[0], known[1])) if isinstance(known, _Serialized) else list(known)

    def _remember(self, key: tuple[str, str, str, str], kind: str, data: bytes | None, value: Any) -> None:
        """Keep a stored version's value: a list as the object, anything else serialized. A version keeps its
        first value, as in PostgreSQL and Redis."""
        if key in self._lists:
            self._used(key)
        elif isinstance(value, list):
            self._keep(key, value)
        elif data is not None and not kind.startswith(DELTA):
            self._keep(key, _Serialized((kind, data)))

    async def _load_values(self, store: CheckpointStore, thread_id: str, ns: str, row: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for (channel, version, kind), data in zip(row["blobs"], row["blob_bytes"], strict=True):
            if kind == "empty":
                continue
            key = (thread_id, ns, channel, version)
            known = self._lists.get(key)
            if known is not None:
                values[channel] = self._value(known)
                self._used(key)
            elif kind.startswith(DELTA):
                chain = {r["version"]: (r["type"], r["blob"]) for r in
                         await store.channel_blobs(thread_id, ns, channel, version)}
                values[channel] = self._resolve(thread_id, ns, channel, version, chain)
            else:
                values[channel] = self.serde.loads_typed((kind, data))
                self._remember(key, kind, data, values[channel])
        return values

    def _resolve(self, thread_id: str, ns: str, channel: str, version: str,
                 chain: dict[str, tuple[str, bytes]]) -> builtins.list[Any]:
        """The whole value of a delta-encoded version, following references back to a whole (or known) one."""
        parts: builtins.list[tuple[int, builtins.list[Any]]] = []
        current = version
        while True:
            known = self._lists.get((thread_id, ns, channel, current))
            if isinstance(known, list):
                value = list(known)
                break
            kind, data = chain[current]
            if not kind.startswith(DELTA):
                value = list(self.serde.loads_typed((kind, data)))
                break
            prev, kept, items = self.serde.loads_typed((kind[len(DELTA):], data))
            parts.append((kept, items))
            current = prev
        for kept, items in reversed(parts):  # in place (`value` is this call's own list): linear in the chain
            del value[kept:]
            value.extend(items)
        self._keep((thread_id, ns, channel, version), value)
        return value

    def _tuple(self, thread_id: str, row: Any, values: dict[str, Any]) -> CheckpointTuple:
        ns, checkpoint_id, parent = row["checkpoint_ns"], row["checkpoint_id"], row["parent_checkpoint_id"]
        checkpoint: Checkpoint = self.serde.loads_typed((row["type"], row["checkpoint"]))
        writes = [(task_id, channel, self.serde.loads_typed((kind, data)))
                  for (task_id, channel, kind, _, _), data in zip(row["writes"], row["write_blobs"], strict=True)]
        return self._make_tuple(thread_id, ns, checkpoint_id, parent, checkpoint, values,
                                self.serde.loads_typed((row["metadata_type"], row["metadata_blob"])), writes)

    @staticmethod
    def _make_tuple(thread_id: str, ns: str, checkpoint_id: str, parent: str | None, checkpoint: Checkpoint,
                    values: dict[str, Any], metadata: Any, writes: builtins.list[tuple[str, str, Any]]
                    ) -> CheckpointTuple:
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}},
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
                           if parent else None),
            pending_writes=writes)

    # -- Redis: a namespace's latest checkpoint ------------------------------------------------------------
    def _cache(self) -> Any:
        core = self.memory._core
        return core.cache if core.use_cache() and core.wb is not None else None

    async def _hot_get(self, thread_id: str, ns: str, checkpoint_id: str | None) -> CheckpointTuple | None:
        """The latest checkpoint from Redis (engine loop), or None when Redis cannot answer it alone."""
        cache = self._cache()
        if cache is None:
            return None
        step = self.memory._core.health.redis_step()
        with step:
            return await _adrive(self._hot_read(thread_id, ns, checkpoint_id), cache)
        return None

    def _hot_read(self, thread_id: str, ns: str, checkpoint_id: str | None
                  ) -> Generator[_Call, Any, CheckpointTuple | None]:
        """The latest checkpoint from Redis, or None when Redis cannot answer it alone (the calls it makes raise
        CacheDown)."""
        core = self.memory._core
        touch = core.touches.due(core.touches.thread_key(thread_id, ns))
        latest, hot, writes = yield ("checkpoint_latest", (thread_id, ns, touch))
        if hot is None or latest is None or (checkpoint_id and latest.decode() != checkpoint_id):
            return None
        cid, parent, ctype, cdata, mtype, mdata, versions_json, chains_json = _texts(unpack(hot), 0, 1, 2, 4)
        known_versions = self._versions.get((thread_id, ns, cid))
        if known_versions is None or known_versions[1] is None:
            versions, chains = orjson.loads(versions_json or b"{}"), orjson.loads(chains_json or b"{}")
            if any(chain and not isinstance(chain[0], list) for chain in chains.values()):
                return None  # chains of bare versions, as an earlier version wrote them: read PostgreSQL once
            self._remember_versions(thread_id, ns, cid, versions, chains)
        else:
            chains = known_versions[1]
        values: dict[str, Any] = {}
        need: dict[str, builtins.list[str]] = {}
        for channel, chain in chains.items():
            if not chain:
                return None  # this version's chain is not in Redis: PostgreSQL has it
            known = self._lists.get((thread_id, ns, channel, chain[-1][0]))
            if known is not None:
                values[channel] = self._value(known)
                continue
            start = max((i for i, e in enumerate(chain) if isinstance(
                self._lists.get((thread_id, ns, channel, e[0])), list)), default=0)
            need[channel] = [e[0] for e in chain[start:]]
        if need:
            fields = [_SEP.join(("b", ns, ch, v)) for ch, vs in need.items() for v in vs]
            got = iter((yield ("checkpoint_blobs", (thread_id, fields))))
            for channel, versions in need.items():
                blobs = [next(got) for _ in versions]
                if any(b is None for b in blobs):
                    return None
                values[channel] = self._fold(thread_id, ns, channel, versions, blobs)
        written = self._written.get((thread_id, ns))
        own = written[1] if written is not None and written[0] == cid else {}
        pending: builtins.list[tuple[str, str, int, str, Any]] = []
        for raw_name, data in writes.items():
            name = raw_name.decode("utf-8")
            of, task_id, idx = name.split(_SEP)
            if of != cid:
                continue  # a newer checkpoint's, written before its put arrived
            mine = own.get(name)
            if mine is not None and mine[0] == data:  # as this process stored it
                pending.append((mine[1], task_id, int(idx), mine[2], list(mine[3])))
                continue
            w_path, w_channel, w_kind, w_blob = _texts(unpack(data), 0, 1, 2)
            pending.append((w_path, task_id, int(idx), w_channel, self.serde.loads_typed((w_kind, w_blob))))
        pending.sort(key=lambda w: (w[0], w[1], w[2]))
        return self._make_tuple(
            thread_id, ns, cid, parent or None, self.serde.loads_typed((ctype, cdata)), values,
            self.serde.loads_typed((mtype, mdata)),
            [(t, ch, value) for _, t, _, ch, value in pending])

    def _fold(self, thread_id: str, ns: str, channel: str, versions: builtins.list[str],
              blobs: builtins.list[bytes | None]) -> Any:
        """A channel's value from the blobs of its chain (the first one whole, or a version known here)."""
        value: Any = None
        for version, blob in zip(versions, blobs, strict=True):
            k, data = _texts(unpack(blob or b""), 0)
            known = self._lists.get((thread_id, ns, channel, version))
            if isinstance(known, list):
                value = list(known)
            elif k.startswith(DELTA):
                _, kept, items = self.serde.loads_typed((k[len(DELTA):], data))
                value = value[:kept] + list(items)
            else:
                value = self.serde.loads_typed((k, data))
            self._remember((thread_id, ns, channel, version), k, data, value)
        return value

    def _chains(self, values: dict[str, Any], versions: dict[str, str], blobs: builtins.list[Blob],
                parent_chains: Chains) -> tuple[Chains, builtins.list[Blob], builtins.list[tuple[str, str]]]:
        """For Redis: each valued channel's chain at the new checkpoint, the blobs to store, and the (channel,
        version) blobs of the parent's chain it leaves behind. A delta extends the parent's chain; when the chain
        then ends in `_MERGE` deltas of one span, they become one delta of the new version on the blob before
        them (and so on up), serializing only the items they added. A value goes whole when it is not a delta or
        its parent's chain is not known here (the parent was read from PostgreSQL: Redis may not hold what it
        builds on, and a chain Redis does not hold would send every later read to PostgreSQL)."""
        new = {b[0]: b for b in blobs}
        chains: Chains = {}
        hot: builtins.list[Blob] = []
        drop: builtins.list[tuple[str, str]] = []
        for channel, version in versions.items():
            if channel not in values:
                continue
            value = values[channel]
            blob = new.get(channel)
            before = parent_chains.get(channel)
            if blob is None and before:
                chains[channel] = before
                continue
            if blob is not None and before and blob[2].startswith(DELTA):
                chain = [*before, [version, len(value), 1]]
                merged: builtins.list[str] = []
                # Spans never grow along a chain after its first blob: the last `_MERGE` are equal if both ends are.
                while len(chain) > _MERGE and chain[-_MERGE][2] == chain[-1][2]:
                    merged += [e[0] for e in chain[-_MERGE:-1]]
                    chain[-_MERGE:] = [[version, len(value), chain[-1][2] * _MERGE]]
                if merged:
                    base = chain[-2]
                    kind, data = self._dumps(f"channel {channel!r}", [base[0], base[1], value[base[1]:]])
                    blob = (channel, version, DELTA + kind, data)
                    drop += [(channel, v) for v in merged]
            else:
                if blob is None or blob[2].startswith(DELTA):
                    blob = (channel, version, *self._dumps(f"channel {channel!r}", value))
                chain = [[version, len(value) if isinstance(value, list) else 0, 0]]
                drop += [(channel, e[0]) for e in before or () if e[0] != version]
            chains[channel] = chain
            hot.append(blob)
        return chains, hot, drop

    def _entry(self, thread_id: str, entry_id: str, record: bytes) -> OutboxEntry:
        k = self.memory._core.keys.thread(thread_id)
        return OutboxEntry(k.outbox, entry_id, thread_id, "", [], names=k.entries, record=record)

    async def _enqueue(self, thread_id: str, entry_id: str, record: bytes) -> None:
        core = self.memory._core
        assert core.wb is not None
        index = core.wb.add(self._entry(thread_id, entry_id, record))
        if core.write_through and not await core.wb.wait_for(index, core.config.pg_timeout):
            raise StorageUnavailableError(
                "PostgreSQL did not confirm the checkpoint in time (write-through mode); it stays queued")

    def _check_room(self) -> None:
        wb = self.memory._core.wb
        if wb is not None and not wb.has_room(1):
            raise BacklogFullError(f"PostgreSQL has not accepted writes for a while and {wb.backlog} writes wait "
                                   f"(max_backlog={self.memory.config.max_backlog}); nothing was written")

    async def _settle(self, thread_id: str | None) -> None:
        """Commit what waits for `thread_id` (every thread: None) before PostgreSQL is read: this process's
        queue and any process's outbox entries (idempotent), so PostgreSQL shows every acknowledged write."""
        if thread_id is None:
            await self.memory._erasure.settle()
            return
        core = self.memory._core
        wb = core.wb
        if wb is None:
            return
        index = wb.thread_index(thread_id)
        if index and not await wb.wait_for(index, core.config.pg_timeout):
            raise StorageUnavailableError("PostgreSQL did not take the waiting checkpoints in time")
        cache = self._cache()
        if cache is None:
            return
        step = core.health.redis_step()
        with step:
            records = [r for _, r in await cache.checkpoint_outbox(thread_id)]
        if step.failed or not records:
            return
        with core.health.store_step():
            await commit_records(core.need_store(), records)

    # -- the interface, async (engine loop) ----------------------------------------------------------------
    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = self._ids(config)
        checkpoint_id = _checkpoint_id(config)
        await self.memory._core.ensure_started()
        tup = await self._hot_get(thread_id, ns, checkpoint_id)
        if tup is not None:
            self.memory._core.stats.checkpoint_reads += 1
            return tup
        store = await self._store()
        with self.memory._core.health.store_step():
            await self._settle(thread_id)
            row = await store.get(thread_id, ns, checkpoint_id)
            if row is None:
                return None
            values = await self._load_values(store, thread_id, ns, row)
        tup = self._tuple(thread_id, row, values)
        self.memory._core.stats.checkpoint_reads += 1
        self._remember_versions(thread_id, ns, row["checkpoint_id"],
                                {k: str(v) for k, v in tup.checkpoint["channel_versions"].items()}, None)
        return tup

    async def _list(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
                    before: RunnableConfig | None, limit: int | None) -> builtins.list[CheckpointTuple]:
        conf = config["configurable"] if config else {}
        thread_id = self._check_thread(conf["thread_id"]) if conf.get("thread_id") is not None else None
        ns = conf.get("checkpoint_ns")
        if ns is not None:
            ns = _name("checkpoint_ns", str(ns))
        store = await self._store()
        out = []
        with self.memory._core.health.store_step():
            await self._settle(thread_id)
            rows = await self._matching(lambda n: store.list_checkpoints(
                thread_id, ns, _checkpoint_id(config) if config else None, filter,
                _checkpoint_id(before) if before else None, n), filter, limit)
            for row in rows:
                values = await self._load_values(store, row["thread_id"], row["checkpoint_ns"], row)
                out.append(self._tuple(row["thread_id"], row, values))
        self.memory._core.stats.checkpoint_reads += len(out)
        return out

    async def _list_threads(self, filter: dict[str, Any] | None, limit: int | None) -> builtins.list[str]:
        store = await self._store()
        with self.memory._core.health.store_step():
            await self._settle(None)
            rows = await self._matching(lambda n: store.list_threads(filter, n), filter, limit)
        return [row["thread_id"] for row in rows]

    async def _matching(self, fetch: Callable[[int | None], Awaitable[builtins.list[Any]]],
                        filter: dict[str, Any] | None, limit: int | None) -> builtins.list[Any]:
        """Rows `fetch(n)` returns (n at most; None: all) whose metadata matches `filter` exactly, `limit` at most
        (below 0 as 0, as InMemorySaver). The metadata column maps what jsonb cannot hold (NaN, NUL, other types
        as text): rows that match there only are dropped here and made up for by asking for twice as many."""
        want = asked = None if limit is None else max(limit, 0)
        while True:
            rows = await fetch(asked)
            matching = [row for row in rows if not filter or self._matches(row, filter)]
            if want is None or asked is None or len(matching) >= want or len(rows) < asked:
                return matching[:want]
            asked *= 2

    def _matches(self, row: Any, filter: dict[str, Any]) -> bool:
        metadata = self.serde.loads_typed((row["metadata_type"], row["metadata_blob"]))
        return all(metadata.get(k) == v for k, v in filter.items())

    async def _delta_history(self, config: RunnableConfig, channels: Sequence[str]
                             ) -> dict[str, DeltaChannelHistory]:
        """`get_delta_channel_history` in one PostgreSQL round trip (the base class reads each ancestor)."""
        if not channels:
            return {}
        thread_id, ns = self._ids(config)
        checkpoint_id = _checkpoint_id(config)
        if not checkpoint_id:
            target = await self._get_tuple(config)
            if target is None:
                return {ch: {"writes": []} for ch in channels}
            checkpoint_id = target.config["configurable"]["checkpoint_id"]
        store = await self._store()
        writes: dict[str, builtins.list[PendingWrite]] = {ch: [] for ch in channels}
        seeds: dict[str, Any] = {}
        with self.memory._core.health.store_step():
            await self._settle(thread_id)
            rows = await store.delta_history(thread_id, ns, checkpoint_id, channels)
            for row in reversed(rows):  # oldest first
                for (task_id, channel, kind), data in zip(row["writes"], row["write_blobs"], strict=True):
                    writes[channel].append((task_id, channel, self.serde.loads_typed((kind, data))))
            for row in rows:  # nearest first: each channel's first stored value is its seed
                for channel, value in (await self._load_values(store, thread_id, ns, row)).items():
                    seeds.setdefault(channel, value)
        out: dict[str, DeltaChannelHistory] = {}
        for ch in channels:
            entry: DeltaChannelHistory = {"writes": writes[ch]}
            if ch in seeds:
                entry["seed"] = seeds[ch]
            out[ch] = entry
        return out

    def _prepare_put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                     new_versions: ChannelVersions) -> _Put:
        """Everything a put writes, serialized and checked before anything is written."""
        thread_id, ns = self._ids(config)
        c = dict(checkpoint)
        values: dict[str, Any] = c.pop("channel_values")  # type: ignore[assignment]
        checkpoint_id = _name("the checkpoint id", checkpoint["id"])
        parent_id = config["configurable"].get("checkpoint_id")
        if parent_id is not None:
            _name("checkpoint_id", parent_id)
        versions = {_name("a channel", k): _name("a channel version", str(v))
                    for k, v in checkpoint["channel_versions"].items()}
        parent_versions, parent_chains = self._versions.get((thread_id, ns, parent_id), ({}, None))
        blobs = self._dump_blobs(thread_id, ns, values, new_versions, parent_versions)
        meta = get_checkpoint_metadata(config, metadata)
        run_id = meta.get("run_id")
        if run_id is not None:
            run_id = _name("the run_id", str(run_id))
        cdump, mdump = self._dumps("the checkpoint", c), self._dumps("the metadata", meta)
        versions_json = jsonb("the channel versions", versions)
        record = put_record(thread_id, ns, checkpoint_id, parent_id, run_id, cdump, versions_json, mdump,
                            jsonb("the metadata", dict(meta)), blobs)
        chains, hot_blobs, drop = self._chains(values, versions, blobs, parent_chains or {})
        hot = pack([checkpoint_id, parent_id, *cdump, *mdump, versions_json, jsonb("the chains", chains)])
        return _Put(thread_id, ns, checkpoint_id, values, versions, blobs, hot_blobs, chains, drop, record, hot)

    @staticmethod
    def _put_call(p: _Put) -> _Call:
        """The Redis script of a put (it returns the outbox entry id)."""
        return ("checkpoint_put", (
            p.thread_id, p.ns, p.checkpoint_id, p.hot, p.record,
            [(_SEP.join(("b", p.ns, b[0], b[1])), pack([b[2], b[3]]), not b[2].startswith(DELTA))
             for b in p.hot_blobs if b[3] is not None],
            [_SEP.join(("b", p.ns, ch, v)) for ch, v in p.drop]))

    def _stored(self, call: _Call, cache: Any) -> Any:
        """A put's or writes' script on `cache` (its reply, awaitable on an async client), if the write-behind
        queue has room."""
        self._check_room()
        return getattr(cache, call[0])(*call[1])

    def _remember_put(self, p: _Put) -> None:
        """Remember what a put stores, before it is written, so that none of this work waits on the reply. Safe
        if the put then fails: versions are unique (a random tail) and a checkpoint becomes a parent only once
        its put returned, so what a failed put left here is never the base of a delta or read as a value; at
        most it pushes an older version out."""
        for channel, version, kind, data in p.blobs:
            if channel in p.values:
                self._remember((p.thread_id, p.ns, channel, version), kind, data, p.values[channel])
        self._remember_versions(p.thread_id, p.ns, p.checkpoint_id, p.versions, p.chains)

    def _put_done(self, p: _Put) -> RunnableConfig:
        self.memory._core.stats.checkpoint_puts += 1
        return {"configurable": {"thread_id": p.thread_id, "checkpoint_ns": p.ns, "checkpoint_id": p.checkpoint_id}}

    async def _store_record(self, thread_id: str, record: bytes, call: _Call) -> None:
        """A put or writes on the engine loop: its Redis script then the write-behind queue, or, Redis down, the
        record straight into PostgreSQL."""
        core = self.memory._core
        await core.ensure_started()
        cache = self._cache()
        if cache is not None:
            step = core.health.redis_step()
            with step:
                entry_id = await self._stored(call, cache)
            if not step.failed:
                await self._enqueue(thread_id, entry_id, record)
                return
        store = await self._store()
        with core.health.store_step():
            await commit_records(store.store, [record], around_redis=core.config.mode is Mode.HYBRID)
        changed(thread_id)  # no connection of this process answers the thread from what it read before
        core.health.dirty_threads.add(thread_id)

    def _direct(self, sync: bool) -> Any:
        """The Redis client a caller uses itself, as the message hot paths do (its loop's, or the blocking one
        of the sync API); None: the engine loop's path, which also fails over."""
        core = self.memory._core
        if core.write_through or core.wb is None or not core.hot(0):
            return None
        return core.sync if sync else core.loop_cache()

    def _queued(self, thread_id: str, entry_id: str, record: bytes) -> None:
        wb = self.memory._core.wb
        assert wb is not None
        wb.submit(self._entry(thread_id, entry_id, record))

    def _store_sync(self, thread_id: str, record: bytes, call: _Call) -> bool:
        """`_store_record` in the caller's thread when Redis answers there; False: the engine loop's path."""
        cache = self._direct(sync=True)
        if cache is None:
            return False
        try:
            self._queued(thread_id, self._stored(call, cache), record)
        except CacheDown:
            return False
        return True

    async def _store_here(self, thread_id: str, record: bytes, call: _Call) -> bool:
        """`_store_record` on the caller's loop when Redis answers there; False: the engine loop's path."""
        cache = self._direct(sync=False)
        if cache is None:
            return False
        try:
            self._queued(thread_id, await self._stored(call, cache), record)
        except CacheDown:
            return False
        return True

    def _prepare_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                        task_path: str) -> _Writes:
        thread_id, ns = self._ids(config)
        checkpoint_id = _name("checkpoint_id", config["configurable"]["checkpoint_id"])
        _name("the task_id", task_id)
        _name("the task_path", task_path)
        rows = []
        for idx, (channel, value) in enumerate(writes):
            _name("a write's channel", channel)
            kind, data = self._dumps(f"a write to {channel!r}", value)
            rows.append((WRITES_IDX_MAP.get(channel, idx), channel, kind, data))
        record = writes_record(thread_id, ns, checkpoint_id, task_id, task_path, rows)
        fields = [(_SEP.join((checkpoint_id, task_id, str(idx))), pack([task_path, channel, kind, data]), idx < 0)
                  for idx, channel, kind, data in rows]
        # A list whose items are immutable or carry their id (messages) is shared, as `_lists` shares items; a
        # message still without an id gets one from `add_messages`, in place, after this.
        own = {name: (field, task_path, channel, list(value))
               for (name, field, _), (channel, value) in zip(fields, writes, strict=True)
               if isinstance(value, list) and all(getattr(item, "id", "") is not None for item in value)}
        return _Writes(thread_id, ns, checkpoint_id, record, fields, own)

    def _remember_writes(self, w: _Writes) -> None:
        """Remember a task's list values, before they are written (as `_remember_put`): a read takes them only
        where Redis holds the very bytes they were stored as."""
        if not w.own:
            return
        with self._lock:
            key = (w.thread_id, w.ns)
            written = self._written.get(key)
            if written is None or written[0] != w.checkpoint_id:
                if written is None and len(self._written) >= _KNOWN:
                    del self._written[next(iter(self._written))]
                written = self._written[key] = (w.checkpoint_id, {})
            written[1].update(w.own)

    @staticmethod
    def _writes_call(w: _Writes) -> _Call:
        return ("checkpoint_writes", (w.thread_id, w.ns, w.checkpoint_id, w.record, w.fields))

    async def _delete_threads(self, thread_ids: Sequence[str]) -> None:
        ids = [self._check_thread(t) for t in thread_ids]
        store = await self._store()
        with self.memory._core.health.store_step():
            for thread_id in ids:  # what waits is committed first, so the tombstone covers every acknowledged id
                await self._settle(thread_id)
            await store.delete_threads(ids)
        await self.memory._erasure.forget_threads(ids)

    async def _delete_runs(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        store = await self._store()
        with self.memory._core.health.store_step():
            await self.memory._erasure.settle()
            threads = await store.delete_runs(list(run_ids))
        await self.memory._erasure.drop_hot_threads(threads)

    async def _copy(self, source: str, target: str) -> None:
        store = await self._store()
        source, target = self._check_thread(source), self._check_thread(target)
        with self.memory._core.health.store_step():
            await self._settle(source)
            await self._settle(target)
            await store.copy_thread(source, target)
        await self.memory._erasure.drop_hot_threads([target])

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy == "delete":
            await self._delete_threads(thread_ids)
            return
        if strategy != "keep_latest":
            raise InvalidInputError(f"unknown prune strategy {strategy!r}: 'keep_latest' or 'delete'")
        store = await self._store()
        with self.memory._core.health.store_step():
            for thread_id in thread_ids:
                await self._settle(self._check_thread(thread_id))
                for ns, latest in await store.namespaces(thread_id):
                    row = await store.get(thread_id, ns, latest)
                    if row is None:
                        continue
                    # A DeltaChannel stores no value at most checkpoints: LangGraph rebuilds it from the
                    # ancestors' writes down to its last snapshot (the metadata counts the steps since, per
                    # channel), so those ancestors are kept too, whole.
                    metadata = self.serde.loads_typed((row["metadata_type"], row["metadata_blob"]))
                    rebuilt = sorted(metadata.get("counters_since_delta_snapshot") or {})
                    rows = [row]
                    for ancestor in await store.delta_history(thread_id, ns, latest, rebuilt) if rebuilt else []:
                        kept = await store.get(thread_id, ns, ancestor["checkpoint_id"])
                        if kept is not None:
                            rows.append(kept)
                    keep: builtins.list[tuple[str, str]] = []
                    whole: builtins.list[Blob] = []
                    for kept in rows:
                        values = await self._load_values(store, thread_id, ns, kept)
                        for channel, version, kind in kept["blobs"]:
                            keep.append((channel, version))
                            if kind.startswith(DELTA):  # its chain goes: store the value itself
                                whole.append((channel, version, *self.serde.dumps_typed(values[channel])))
                    await store.keep_latest(thread_id, ns, [r["checkpoint_id"] for r in rows], keep, whole)

    def _remember_versions(self, thread_id: str, ns: str, checkpoint_id: str, versions: dict[str, str],
                           chains: Chains | None) -> None:
        key = (thread_id, ns, checkpoint_id)
        with self._lock:
            # The least recently stored go first: were they all cleared, a run's next put (LangGraph reads nothing
            # between its puts) would find no parent versions and store its lists whole.
            while key not in self._versions and len(self._versions) >= _KNOWN * 2:
                self._versions.popitem(last=False)
            self._versions[key] = (versions, chains)
            self._versions.move_to_end(key)

    # -- the interface ---------------------------------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = self._ids(config)
        cache = self._direct(sync=True)
        if cache is not None:
            with contextlib.suppress(CacheDown):  # the engine loop's path fails over
                if (tup := _drive(self._hot_read(thread_id, ns, _checkpoint_id(config)), cache)) is not None:
                    self.memory._core.stats.checkpoint_reads += 1
                    return tup
        return self.memory._run(self._get_tuple(config))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = self._ids(config)
        cache = self._direct(sync=False)
        if cache is not None:
            with contextlib.suppress(CacheDown):
                if (tup := await _adrive(self._hot_read(thread_id, ns, _checkpoint_id(config)), cache)) is not None:
                    self.memory._core.stats.checkpoint_reads += 1
                    return tup
        return await self.memory._arun(self._get_tuple(config))

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        yield from self.memory._run(self._list(config, filter, before, limit))

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        for item in await self.memory._arun(self._list(config, filter, before, limit)):
            yield item

    def list_threads(self, *, filter: dict[str, Any] | None = None, limit: int | None = None) -> builtins.list[str]:
        """Ids of the threads with a checkpoint whose metadata matches `filter` (as `list`'s, e.g. `{"user_id":
        "alice"}`, which LangGraph copies from the config), the most recently written first; from PostgreSQL."""
        return self.memory._run(self._list_threads(filter, limit))

    async def alist_threads(self, *, filter: dict[str, Any] | None = None, limit: int | None = None
                            ) -> builtins.list[str]:
        return await self.memory._arun(self._list_threads(filter, limit))

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        p = self._prepare_put(config, checkpoint, metadata, new_versions)  # bad input fails in the caller
        self._remember_put(p)
        call = self._put_call(p)
        if not self._store_sync(p.thread_id, p.record, call):
            self.memory._run(self._store_record(p.thread_id, p.record, call))
        return self._put_done(p)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        p = self._prepare_put(config, checkpoint, metadata, new_versions)
        self._remember_put(p)
        call = self._put_call(p)
        if not await self._store_here(p.thread_id, p.record, call):
            await self.memory._arun(self._store_record(p.thread_id, p.record, call))
        return self._put_done(p)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        w = self._prepare_writes(config, writes, task_id, task_path)
        self._remember_writes(w)
        call = self._writes_call(w)
        if not self._store_sync(w.thread_id, w.record, call):
            self.memory._run(self._store_record(w.thread_id, w.record, call))
        self.memory._core.stats.checkpoint_writes += len(w.fields)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        w = self._prepare_writes(config, writes, task_id, task_path)
        self._remember_writes(w)
        call = self._writes_call(w)
        if not await self._store_here(w.thread_id, w.record, call):
            await self.memory._arun(self._store_record(w.thread_id, w.record, call))
        self.memory._core.stats.checkpoint_writes += len(w.fields)

    def delete_thread(self, thread_id: str) -> None:
        self.memory._run(self._delete_threads([thread_id]))

    async def adelete_thread(self, thread_id: str) -> None:
        await self.memory._arun(self._delete_threads([thread_id]))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.memory._run(self._delete_runs(run_ids))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self.memory._arun(self._delete_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.memory._run(self._copy(source_thread_id, target_thread_id))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self.memory._arun(self._copy(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.memory._run(self._prune(thread_ids, strategy))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self.memory._arun(self._prune(thread_ids, strategy))

    def get_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]
                                  ) -> Mapping[str, DeltaChannelHistory]:
        return self.memory._run(self._delta_history(config, channels))

    async def aget_delta_channel_history(self, *, config: RunnableConfig, channels: Sequence[str]
                                         ) -> Mapping[str, DeltaChannelHistory]:
        return await self.memory._arun(self._delta_history(config, channels))

    def get_next_version(self, current: str | None, channel: None) -> str:
        # As InMemorySaver and the PostgreSQL saver: a zero-padded counter (sorts as text) and a random tail.
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"
