"""`HybridSaver`: a LangGraph checkpointer on the engine's PostgreSQL, serving sync and async graphs.

Every call runs on the engine loop (one implementation; async callers never block their loop): one PostgreSQL
round trip per `put` / `put_writes` / `get_tuple` (one more for a delta-encoded channel this process has not
seen). A list channel (an agent's messages) is stored as the items appended since its previous version plus a
reference to that version, so a step writes what it added, not the thread's whole history again; a list that
was rewritten (`RemoveMessage`, an item replaced by id, summarization) is stored whole.
"""

from __future__ import annotations

import builtins
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

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

from ..errors import InvalidInputError
from .store import Blob, CheckpointStore

if TYPE_CHECKING:
    from ..memory import HybridMemory

DELTA = "hm-delta/"  # blob type prefix: (previous version, items kept from it, new items)
_KNOWN = 512  # list values and checkpoint versions remembered per saver


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
        # item in place. Bounded; with the checkpoint versions by id (LangGraph passes a put only its parent's).
        self._lists: OrderedDict[tuple[str, str, str, str], builtins.list[Any]] = OrderedDict()
        self._versions: dict[tuple[str, str, str | None], dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"HybridSaver(memory={self.memory!r})"

    # -- plumbing ----------------------------------------------------------------------------------------
    async def _store(self) -> CheckpointStore:
        core = self.memory._core
        await core.ensure_started()
        return CheckpointStore(core.need_store())

    def _keep(self, key: tuple[str, str, str, str], value: builtins.list[Any]) -> None:
        self._lists[key] = list(value)
        self._lists.move_to_end(key)
        while len(self._lists) > _KNOWN:
            self._lists.popitem(last=False)

    def _check_thread(self, thread_id: Any) -> str:
        if not isinstance(thread_id, str) or not thread_id:
            raise InvalidInputError("configurable.thread_id must be a non-empty str")
        limit = self.memory.config.max_session_id_length
        if len(thread_id) > limit:
            raise InvalidInputError(f"thread_id has {len(thread_id)} characters; the limit is {limit}")
        return thread_id

    def _ids(self, config: RunnableConfig) -> tuple[str, str]:
        conf = config["configurable"]
        return self._check_thread(conf.get("thread_id")), str(conf.get("checkpoint_ns", ""))

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
            version = str(version)
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
                if prev is not None and len(value) >= len(prev) and value[:len(prev)] == prev:
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

    async def _load_values(self, store: CheckpointStore, thread_id: str, ns: str, row: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for (channel, version, kind), data in zip(row["blobs"], row["blob_bytes"], strict=True):
            if kind == "empty":
                continue
            key = (thread_id, ns, channel, version)
            known = self._lists.get(key)
            if known is not None:
                values[channel] = list(known)
                self._lists.move_to_end(key)
            elif kind.startswith(DELTA):
                chain = {r["version"]: (r["type"], r["blob"]) for r in
                         await store.channel_blobs(thread_id, ns, channel, version)}
                values[channel] = self._resolve(thread_id, ns, channel, version, chain)
            else:
                values[channel] = self.serde.loads_typed((kind, data))
                if isinstance(values[channel], list):
                    self._keep(key, values[channel])
        return values

    def _resolve(self, thread_id: str, ns: str, channel: str, version: str,
                 chain: dict[str, tuple[str, bytes]]) -> builtins.list[Any]:
        """The whole value of a delta-encoded version, following references back to a whole (or known) one."""
        parts: builtins.list[tuple[int, builtins.list[Any]]] = []
        current = version
        while True:
            known = self._lists.get((thread_id, ns, channel, current))
            if known is not None:
                value = list(known)
                break
            kind, data = chain[current]
            if not kind.startswith(DELTA):
                value = list(self.serde.loads_typed((kind, data)))
                break
            prev, kept, items = self.serde.loads_typed((kind[len(DELTA):], data))
            parts.append((kept, items))
            current = prev
        for kept, items in reversed(parts):
            value = value[:kept] + list(items)
        self._keep((thread_id, ns, channel, version), value)
        return value

    def _tuple(self, thread_id: str, row: Any, values: dict[str, Any]) -> CheckpointTuple:
        ns, checkpoint_id, parent = row["checkpoint_ns"], row["checkpoint_id"], row["parent_checkpoint_id"]
        checkpoint: Checkpoint = self.serde.loads_typed((row["type"], row["checkpoint"]))
        writes = [(task_id, channel, self.serde.loads_typed((kind, data)))
                  for (task_id, channel, kind, _, _), data in zip(row["writes"], row["write_blobs"], strict=True)]
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}},
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self.serde.loads_typed((row["metadata_type"], row["metadata_blob"])),
            parent_config=({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": parent}}
                           if parent else None),
            pending_writes=writes)

    # -- the interface, async (engine loop) ----------------------------------------------------------------
    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        thread_id, ns = self._ids(config)
        store = await self._store()
        with self.memory._core.health.store_step():
            row = await store.get(thread_id, ns, get_checkpoint_id(config))
            if row is None:
                return None
            values = await self._load_values(store, thread_id, ns, row)
        tup = self._tuple(thread_id, row, values)
        self.memory._core.stats.checkpoint_reads += 1
        self._remember_versions(thread_id, ns, row["checkpoint_id"],
                                {k: str(v) for k, v in tup.checkpoint["channel_versions"].items()})
        return tup

    async def _list(self, config: RunnableConfig | None, filter: dict[str, Any] | None,
                    before: RunnableConfig | None, limit: int | None) -> builtins.list[CheckpointTuple]:
        conf = config["configurable"] if config else {}
        thread_id = self._check_thread(conf["thread_id"]) if conf.get("thread_id") is not None else None
        ns = conf.get("checkpoint_ns")
        store = await self._store()
        out = []
        with self.memory._core.health.store_step():
            rows = await store.list_checkpoints(thread_id, ns, get_checkpoint_id(config) if config else None, filter,
                                    get_checkpoint_id(before) if before else None, limit)
            for row in rows:
                values = await self._load_values(store, row["thread_id"], row["checkpoint_ns"], row)
                item = self._tuple(row["thread_id"], row, values)
                # jsonb containment is looser than equality for nested values: check as LangGraph's savers do
                if filter and not all(item.metadata.get(k) == v for k, v in filter.items()):
                    continue
                out.append(item)
        self.memory._core.stats.checkpoint_reads += len(out)
        return out

    async def _put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        thread_id, ns = self._ids(config)
        c = dict(checkpoint)
        values: dict[str, Any] = c.pop("channel_values")  # type: ignore[assignment]
        parent_id = config["configurable"].get("checkpoint_id")
        parent_versions = self._versions.get((thread_id, ns, parent_id), {})
        blobs = self._dump_blobs(thread_id, ns, values, new_versions, parent_versions)
        meta = get_checkpoint_metadata(config, metadata)
        versions = {k: str(v) for k, v in checkpoint["channel_versions"].items()}
        store = await self._store()
        with self.memory._core.health.store_step():
            await store.put(thread_id, ns, checkpoint["id"], parent_id, meta.get("run_id"),
                            self._dumps("the checkpoint", c), versions, self._dumps("the metadata", meta),
                            dict(meta), blobs)
        self.memory._core.stats.checkpoint_puts += 1
        # Remembered once stored: a put that failed must not become the base of a later delta.
        for channel, version, _, _ in blobs:
            if isinstance(values.get(channel), list):
                self._keep((thread_id, ns, channel, version), values[channel])
        self._remember_versions(thread_id, ns, checkpoint["id"], versions)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    async def _put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str) -> None:
        thread_id, ns = self._ids(config)
        rows = []
        for idx, (channel, value) in enumerate(writes):
            kind, data = self._dumps(f"a write to {channel!r}", value)
            rows.append((WRITES_IDX_MAP.get(channel, idx), channel, kind, data))
        store = await self._store()
        with self.memory._core.health.store_step():
            await store.put_writes(thread_id, ns, config["configurable"]["checkpoint_id"], task_id, task_path,
                                   rows)
        self.memory._core.stats.checkpoint_writes += len(rows)

    async def _delete_threads(self, thread_ids: Sequence[str]) -> None:
        store = await self._store()
        with self.memory._core.health.store_step():
            await store.delete_threads([self._check_thread(t) for t in thread_ids])

    async def _delete_runs(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        store = await self._store()
        with self.memory._core.health.store_step():
            await store.delete_runs(list(run_ids))

    async def _copy(self, source: str, target: str) -> None:
        store = await self._store()
        with self.memory._core.health.store_step():
            await store.copy_thread(self._check_thread(source), self._check_thread(target))

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy == "delete":
            await self._delete_threads(thread_ids)
            return
        if strategy != "keep_latest":
            raise InvalidInputError(f"unknown prune strategy {strategy!r}: 'keep_latest' or 'delete'")
        store = await self._store()
        with self.memory._core.health.store_step():
            for thread_id in thread_ids:
                for ns, latest in await store.namespaces(self._check_thread(thread_id)):
                    row = await store.get(thread_id, ns, latest)
                    if row is None:
                        continue
                    values = await self._load_values(store, thread_id, ns, row)
                    keep = [(channel, version) for channel, version, _ in row["blobs"]]
                    whole: builtins.list[Blob] = []
                    for channel, version, kind in row["blobs"]:
                        if kind.startswith(DELTA):  # its chain goes: store the value itself
                            whole.append((channel, version, *self.serde.dumps_typed(values[channel])))
                    await store.keep_latest(thread_id, ns, latest, keep, whole)

    def _remember_versions(self, thread_id: str, ns: str, checkpoint_id: str, versions: dict[str, str]) -> None:
        if len(self._versions) >= _KNOWN * 8:
            self._versions.clear()
        self._versions[(thread_id, ns, checkpoint_id)] = versions

    # -- the interface ---------------------------------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.memory._run(self._get_tuple(config))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self.memory._arun(self._get_tuple(config))

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        yield from self.memory._run(self._list(config, filter, before, limit))

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        for item in await self.memory._arun(self._list(config, filter, before, limit)):
            yield item

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        return self.memory._run(self._put(config, checkpoint, metadata, new_versions))

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await self.memory._arun(self._put(config, checkpoint, metadata, new_versions))

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        self.memory._run(self._put_writes(config, writes, task_id, task_path))

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await self.memory._arun(self._put_writes(config, writes, task_id, task_path))

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

    def get_next_version(self, current: str | None, channel: None) -> str:
        # As InMemorySaver and the PostgreSQL saver: a zero-padded counter (sorts as text) and a random tail.
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"
