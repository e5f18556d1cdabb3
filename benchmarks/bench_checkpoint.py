"""Checkpointer benchmark: one agent step through the saver API, HybridSaver against LangGraph's savers.

    python benchmarks/bench_checkpoint.py [--quick] [--json PATH]

A step is what LangGraph asks of its checkpointer per super-step: `aget_tuple` (the thread's latest checkpoint),
`aput` (the next one, whose `messages` channel is the previous list plus 2 new messages of ~200 characters,
real `HumanMessage` / `AIMessage` objects with ids) and `aput_writes` (the task's writes: those 2 messages).
Checkpoints are built with `langgraph.checkpoint.base.empty_checkpoint()` / `create_checkpoint`. A step's time is
that of its three calls: building the next checkpoint, its metadata and the task id between the read and the put
(LangGraph's work, the same for every saver) is not timed.

Subjects: HybridSaver (private namespace, dropped at the end), langgraph-checkpoint-postgres's AsyncPostgresSaver
(on a throwaway schema of its own, dropped at the end) and InMemorySaver, on threads of 20 and 1,000 messages;
and, on 20-message threads, the sync API a sync graph calls (`get_tuple` + `put` + `put_writes`): HybridSaver's and
langgraph-checkpoint-postgres's PostgresSaver (same schema), timed in the same rounds.
And a floor, timed in the same rounds at both sizes: the least any checkpointer that acknowledges from Redis
does per step on this loop and this Redis (`RedisFloor`): the step's new items, the checkpoint and the metadata
serialized by the same serde, then two round trips on the same kind of connection as ours, each one script that
stores the value in a hash and queues the record on a stream (no lease, no change count, no TTL, no delta chain,
no check of what is latest); its read is free (the tuple it was handed). What ours adds to it is the price of its
guarantees; what a PostgreSQL saver adds to it is the margin there is to beat it by.
Steps are timed in interleaved rounds (the order of the savers rotates each round, and each slot starts with a few
untimed steps: see `Plan.slot_warmup`). Each timed step grows its thread by 2 messages, so threads are taken from
a pool and retired before they drift far from their size (20-message threads after 5 steps, 1,000-message ones
after at most 10% growth).

How the 1,000-message threads are built: HybridSaver's through 500 puts of 2 messages each, as an agent would
(its delta encoding then has a chain of 500 versions behind the latest); the other two savers store every
version whole and read only the latest, so their cost does not depend on the path: one put of 1,000 messages.

Bytes: after the timing, K more steps on a fresh thread of each size, for HybridSaver and AsyncPostgresSaver:
  logical  = sum of octet_length of every column of the thread's new rows (what was handed to PostgreSQL),
  stored   = sum of pg_column_size of those columns (after PostgreSQL's own TOAST compression),
  relation = growth of pg_total_relation_size of the three tables (heap, TOAST and indexes; page-granular),
each per step, against the serialized size (the saver's serde) of the step's 2 new messages.

Servers: BENCH_DATABASE_URL / DATABASE_URL and BENCH_REDIS_URL / REDIS_URL (defaults: local PostgreSQL and Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    Checkpoint,
    CheckpointTuple,
    create_checkpoint,
    empty_checkpoint,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from langchain_hybrid_memory import HybridConfig, HybridMemory
from langchain_hybrid_memory.cache import RedisCache
from langchain_hybrid_memory.checkpoint import HybridSaver
from langchain_hybrid_memory.checkpoint.store import pack

from _common import (
    PG_URL,
    REDIS_URL,
    Series,
    cpu_model,
    drop_namespace,
    ms,
    new_namespace,
    pct,
    ratio,
    round_ratios,
    table,
    times,
)

SHAPES = (20, 1000)
CONTENT_CHARS = 200
OURS, PG, MEM = "HybridSaver", "AsyncPostgresSaver", "InMemorySaver"
OURS_SYNC, PG_SYNC = "HybridSaver (sync)", "PostgresSaver (sync)"
FLOOR = "Redis floor"
SAVERS = (OURS, PG, MEM)
SUBJECTS = {20: (*SAVERS, OURS_SYNC, PG_SYNC, FLOOR), 1000: (*SAVERS, FLOOR)}  # timed per thread size
TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")

# Targets (printed as PASS/FAIL; nothing asserts).
TARGET_VS_PG = {20: 5.0, 1000: 20.0}  # AsyncPostgresSaver's step p50 / ours, at least
TARGET_PUT_GROWTH = 1.5  # our aput p50 at 1,000 messages / at 20, at most
# PostgresSaver's sync step p50 / ours, at least. Not measured against our async step: the sync get_tuple is a
# Redis round trip by design (a blocking connection cannot hold a lease, see SyncHotPath), where the async one
# is usually local, so that ratio follows the host's round-trip time rather than our code.
TARGET_SYNC_VS_PG = 3.0
# What a step may write besides 2x its new messages (the channel value's delta and the task's writes): the
# checkpoint row (thread and checkpoint ids, parent id, the checkpoint without values: versions and
# versions_seen; the metadata twice, as blob and jsonb; channel_versions as jsonb), the blob and writes rows'
# keys (thread, channel, version, task id and path, types).
FIXED_OVERHEAD = 2048


@dataclass
class Plan:
    rounds: int
    per_round: int  # steps per saver, per shape, per round
    pool_1000: int  # 1,000-message threads per saver
    byte_steps: int
    warmup: int = 10
    # Untimed steps a saver takes at the start of each of its slots in a round: the first steps after another
    # saver's slot (or the round's end: 1,000-message threads, gc.collect()) ran 20-40% slower for every saver,
    # so which saver came first in a round swung that round's ratios.
    slot_warmup: int = 3

    @classmethod
    def full(cls) -> Plan:
        return cls(rounds=10, per_round=25, pool_1000=7, byte_steps=40)

    @classmethod
    def quick(cls) -> Plan:
        return cls(rounds=4, per_round=10, pool_1000=2, byte_steps=10, warmup=4, slot_warmup=1)


@dataclass
class Thread:
    """A thread being stepped: its id and how many steps it has taken since it was built."""

    id: str
    steps: int = 0


@dataclass
class Timings:
    step: Series = field(default_factory=Series)
    get: Series = field(default_factory=Series)
    put: Series = field(default_factory=Series)
    writes: Series = field(default_factory=Series)


class Words:
    """Chat-like text of ~200 characters from a vocabulary of 3,000 made-up words (compresses like prose)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        letters = "etaoinshrdlucmfwypvbgkqjxz"
        weights = [26 - i for i in range(26)]
        self.vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(3000)]

    def text(self, size: int = CONTENT_CHARS) -> str:
        out: list[str] = []
        n = 0
        while n < size:
            w = self.rng.choice(self.vocab)
            out.append(w)
            n += len(w) + 1
        return " ".join(out)[:size]


class SyncCalls:
    """A saver's sync API under the async names `Bench.step` calls: each runs the sync method where it is called,
    blocking (as a sync graph's calls do), so the time measured is the sync call's."""

    def __init__(self, saver: BaseCheckpointSaver[Any]) -> None:
        self.saver = saver

    async def aget_tuple(self, config: Any) -> Any:
        return self.saver.get_tuple(config)

    async def aput(self, *args: Any) -> Any:
        return self.saver.put(*args)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> None:
        self.saver.put_writes(*args, **kwargs)

    def get_next_version(self, current: Any, channel: Any) -> Any:
        return self.saver.get_next_version(current, channel)


# The floor's scripts: what is left of a put and a task's writes once every guarantee is taken away.
_FLOOR_PUT = """redis.call('HSET', KEYS[1], 'c', ARGV[1], ARGV[2], ARGV[3])
local xid = redis.call('XADD', KEYS[2], '*', 'r', ARGV[4])
redis.call('SADD', KEYS[3], xid)
return xid"""
_FLOOR_WRITES = """redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local xid = redis.call('XADD', KEYS[2], '*', 'r', ARGV[3])
redis.call('SADD', KEYS[3], xid)
return xid"""


class RedisFloor:
    """The floor of a step (see the module docstring), under the saver names `Bench.step` calls. Its Redis
    connection is a client of the engine's own kind (one shared connection per loop, commands packed by
    hiredis), opened for it alone."""

    def __init__(self, memory: HybridMemory, namespace: str) -> None:
        core = memory._core
        self.cache = RedisCache(core.config, core.keys)
        self.serde = HybridSaver(memory).serde
        self.ns = namespace
        self.latest: dict[str, CheckpointTuple] = {}
        self.lengths: dict[str, int] = {}
        self.versions = InMemorySaver()
        self.sha: dict[str, str] = {}

    async def start(self) -> None:
        for name, script in (("put", _FLOOR_PUT), ("writes", _FLOOR_WRITES)):
            self.sha[name] = (await self.cache._exchange([("SCRIPT", "LOAD", script)]))[0].decode()

    async def close(self) -> None:
        await self.cache.close()

    def keys(self, thread_id: str) -> list[str]:
        base = f"{self.ns}:floor:{{{thread_id}}}"
        return [f"{base}:h", f"{base}:o", f"{base}:e"]

    async def aget_tuple(self, config: Any) -> CheckpointTuple | None:
        return self.latest.get(config["configurable"]["thread_id"])

    async def aput(self, config: Any, checkpoint: Checkpoint, metadata: Any, versions: Any) -> Any:
        thread_id = config["configurable"]["thread_id"]
        values = checkpoint["channel_values"]["messages"]
        rest = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        kept = self.lengths.get(thread_id, 0)
        _, blob = self.serde.dumps_typed([versions["messages"], kept, values[kept:]])
        _, cdata = self.serde.dumps_typed(rest)
        _, mdata = self.serde.dumps_typed(metadata)
        version = f"b:{versions['messages']}"
        record = pack([cdata, mdata, version, blob])
        await self.cache._exchange([("EVALSHA", self.sha["put"], 3, *self.keys(thread_id), cdata + mdata,
                                     version, blob, record)])
        out: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "",
                                                "checkpoint_id": checkpoint["id"]}}
        self.latest[thread_id] = CheckpointTuple(out, checkpoint, metadata, config, [])
        self.lengths[thread_id] = len(values)
        return out

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        thread_id = config["configurable"]["thread_id"]
        data = [self.serde.dumps_typed(value)[1] for _, value in writes]
        name = f"w:{config['configurable']['checkpoint_id']}:{task_id}"
        await self.cache._exchange([("EVALSHA", self.sha["writes"], 3, *self.keys(thread_id), name,
                                     pack(data), pack([name, *data]))])

    def get_next_version(self, current: Any, channel: Any) -> Any:
        return self.versions.get_next_version(current, channel)


class Bench:
    def __init__(self, plan: Plan, namespace: str, pg_schema: str) -> None:
        self.plan = plan
        self.ns = namespace
        self.pg_schema = pg_schema
        self.words = Words(random.Random(1234))
        self.savers: dict[str, BaseCheckpointSaver[Any]] = {}
        self.pools: dict[tuple[str, int], list[Thread]] = {}
        self.timings: dict[tuple[str, int], Timings] = {(s, n): Timings() for n in SHAPES for s in SUBJECTS[n]}
        self.bytes: dict[tuple[str, int], dict[str, float]] = {}
        self.memory: HybridMemory | None = None
        self._pg_cm: Any = None
        self._pg_sync_cm: Any = None
        self.conn: asyncpg.Connection | None = None
        self.made = 0
        self.per_thread: dict[int, int] = {}
        self.floor: RedisFloor | None = None

    # -- setup -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=self.ns))
        await self.memory.astart()
        self.savers[OURS] = HybridSaver(self.memory)
        self.conn = await asyncpg.connect(PG_URL)
        await self.conn.execute(f'CREATE SCHEMA "{self.pg_schema}"')
        sep = "&" if "?" in PG_URL else "?"
        url = f"{PG_URL}{sep}options={quote(f'-csearch_path={self.pg_schema}')}"
        self._pg_cm = AsyncPostgresSaver.from_conn_string(url)
        pg = await self._pg_cm.__aenter__()
        await pg.setup()
        self.savers[PG] = pg
        self.savers[MEM] = InMemorySaver()
        self.savers[OURS_SYNC] = SyncCalls(self.savers[OURS])  # type: ignore[assignment]
        self._pg_sync_cm = PostgresSaver.from_conn_string(url)
        self.savers[PG_SYNC] = SyncCalls(self._pg_sync_cm.__enter__())  # type: ignore[assignment]
        self.floor = RedisFloor(self.memory, self.ns)
        await self.floor.start()
        self.savers[FLOOR] = self.floor  # type: ignore[assignment]

    async def close(self) -> None:
        try:
            if self._pg_cm is not None:
                await self._pg_cm.__aexit__(None, None, None)
            if self._pg_sync_cm is not None:
                self._pg_sync_cm.__exit__(None, None, None)
            if self.floor is not None:
                await self.floor.close()
            if self.memory is not None:
                await self.memory.aclose()
        finally:
            if self.conn is not None:
                try:
                    await self.conn.execute(f'DROP SCHEMA IF EXISTS "{self.pg_schema}" CASCADE')
                finally:
                    await self.conn.close()

    # -- a step ------------------------------------------------------------------------------------------
    def new_messages(self) -> list[BaseMessage]:
        self.made += 1
        return [HumanMessage(self.words.text(), id=f"h-{self.made}-{uuid.uuid4().hex[:8]}"),
                AIMessage(self.words.text(), id=f"ai-{self.made}-{uuid.uuid4().hex[:8]}")]

    @staticmethod
    def next_checkpoint(saver: BaseCheckpointSaver[Any], prev: Checkpoint, messages: list[BaseMessage],
                        step: int) -> tuple[Checkpoint, dict[str, Any]]:
        checkpoint = create_checkpoint(prev, None, step)
        version = saver.get_next_version(prev["channel_versions"].get("messages"), None)
        checkpoint["channel_values"] = {"messages": messages}
        checkpoint["channel_versions"] = {**prev["channel_versions"], "messages": version}
        checkpoint["versions_seen"] = {"model": {"messages": version}}
        checkpoint["updated_channels"] = ["messages"]
        return checkpoint, {"messages": version}

    @staticmethod
    def metadata(step: int) -> dict[str, Any]:
        return {"source": "loop", "step": step, "parents": {}}

    async def step(self, name: str, thread: Thread, new: list[BaseMessage], t: Timings | None) -> None:
        saver = self.savers[name]
        clock = time.perf_counter
        t0 = clock()
        tup = await saver.aget_tuple({"configurable": {"thread_id": thread.id, "checkpoint_ns": ""}})
        t1 = clock()
        assert tup is not None
        step = tup.metadata.get("step", 0) + 1
        messages = [*tup.checkpoint["channel_values"]["messages"], *new]
        checkpoint, versions = self.next_checkpoint(saver, tup.checkpoint, messages, step)
        metadata, task_id = self.metadata(step), str(uuid.uuid4())  # LangGraph's work, as the checkpoint
        t2 = clock()
        config = await saver.aput(tup.config, checkpoint, metadata, versions)  # type: ignore[arg-type]
        t3 = clock()
        await saver.aput_writes(config, [("messages", new)], task_id=task_id)
        t4 = clock()
        thread.steps += 1
        if t is not None:
            t.get.samples.append(t1 - t0)
            t.put.samples.append(t3 - t2)
            t.writes.samples.append(t4 - t3)
            t.step.samples.append((t1 - t0) + (t4 - t2))  # the three calls, not the harness's work between

    async def build_thread(self, name: str, size: int) -> Thread:
        """A thread of `size` messages: put by put (2 messages each) for HybridSaver and for small threads,
        in one put otherwise (see the module docstring)."""
        saver = self.savers[name]
        thread = Thread(f"{name}-{size}-{uuid.uuid4().hex[:10]}")
        config: dict[str, Any] = {"configurable": {"thread_id": thread.id, "checkpoint_ns": ""}}
        prev = empty_checkpoint()
        messages: list[BaseMessage] = []
        batches = size // 2 if (name in (OURS, OURS_SYNC) or size <= 100) else 1
        for step in range(batches):
            messages = messages + [m for _ in range(size // 2 // batches) for m in self.new_messages()]
            checkpoint, versions = self.next_checkpoint(saver, prev, messages, step)
            config = await saver.aput(config, checkpoint, self.metadata(step), versions)  # type: ignore[arg-type]
            prev = checkpoint
        return thread

    # -- timing ------------------------------------------------------------------------------------------
    async def fill_pools(self) -> None:
        p = self.plan
        per_thread_20 = 5
        total = p.rounds * (p.per_round + p.slot_warmup) + p.warmup
        for name in SUBJECTS[20]:
            self.pools[(name, 20)] = [await self.build_thread(name, 20)
                                      for _ in range(-(-total // per_thread_20))]
        for name in SUBJECTS[1000]:
            self.pools[(name, 1000)] = [await self.build_thread(name, 1000) for _ in range(p.pool_1000)]
        self.per_thread = {20: per_thread_20, 1000: -(-total // p.pool_1000)}

    def take(self, name: str, size: int) -> Thread:
        pool = self.pools[(name, size)]
        while pool[0].steps >= self.per_thread[size]:
            pool.pop(0)
        return pool[0]

    async def run_rounds(self) -> None:
        p = self.plan
        for size in SHAPES:
            for name in SUBJECTS[size]:
                for _ in range(p.warmup):
                    await self.step(name, self.take(name, size), self.new_messages(), None)
        for r in range(p.rounds):
            for size in SHAPES:
                names = SUBJECTS[size]
                for name in names[r % len(names):] + names[:r % len(names)]:
                    for _ in range(p.slot_warmup):
                        await self.step(name, self.take(name, size), self.new_messages(), None)
                    t = self.timings[(name, size)]
                    before = {k: len(getattr(t, k).samples) for k in ("step", "get", "put", "writes")}
                    for _ in range(p.per_round):
                        thread = self.take(name, size)
                        new = self.new_messages()
                        await self.step(name, thread, new, t)
                    for k in before:
                        series = getattr(t, k)
                        series.round_p50.append(pct(series.samples[before[k]:], 0.5))
            gc.collect()
            print(f"  round {r + 1}/{p.rounds} done", flush=True)

    # -- bytes -------------------------------------------------------------------------------------------
    async def _thread_bytes(self, schema: str, thread_ids: list[str]) -> tuple[int, int]:
        """(logical, stored) bytes of every row of these threads in the three tables."""
        assert self.conn is not None
        logical = stored = 0
        for tbl in TABLES:
            cols = await self.conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1"
                " AND table_name = $2", schema, tbl)
            lparts, sparts = [], []
            for c in cols:
                col = '"' + c["column_name"] + '"'
                if c["data_type"] in ("bytea", "text", "character varying"):
                    lparts.append(f"coalesce(octet_length({col}), 0)")
                elif c["data_type"] in ("jsonb", "json"):
                    lparts.append(f"coalesce(octet_length({col}::text), 0)")
                else:
                    lparts.append(f"coalesce(pg_column_size({col}), 0)")
                sparts.append(f"coalesce(pg_column_size({col}), 0)")
            row = await self.conn.fetchrow(
                f"SELECT coalesce(sum({' + '.join(lparts)}), 0) AS l, coalesce(sum({' + '.join(sparts)}), 0) AS s"
                f' FROM "{schema}"."{tbl}" WHERE thread_id = ANY($1::text[])', thread_ids)
            logical += int(row["l"])
            stored += int(row["s"])
        return logical, stored

    async def _relation_bytes(self, schema: str) -> int:
        assert self.conn is not None
        return sum([int(await self.conn.fetchval("SELECT pg_total_relation_size($1::regclass)", f'"{schema}"."{t}"'))
                    for t in TABLES])

    async def measure_bytes(self) -> None:
        """K steps per saver and size, on fresh threads retired as in the timing (5 steps for 20 messages)."""
        k = self.plan.byte_steps
        for name, schema in ((OURS, self.ns), (PG, self.pg_schema)):
            serde = self.savers[name].serde
            for size in SHAPES:
                per_thread = 5 if size == 20 else k
                threads = [await self.build_thread(name, size) for _ in range(-(-k // per_thread))]
                ids = [t.id for t in threads]
                if name == OURS:
                    await self.memory.aflush()  # write-behind: measure what PostgreSQL has committed
                logical0, stored0 = await self._thread_bytes(schema, ids)
                relation0 = await self._relation_bytes(schema)
                new_bytes = 0
                for i in range(k):
                    new = self.new_messages()
                    new_bytes += len(serde.dumps_typed(new)[1])
                    await self.step(name, threads[i // per_thread], new, None)
                if name == OURS:
                    await self.memory.aflush()
                logical1, stored1 = await self._thread_bytes(schema, ids)
                relation1 = await self._relation_bytes(schema)
                self.bytes[(name, size)] = {
                    "logical": (logical1 - logical0) / k, "stored": (stored1 - stored0) / k,
                    "relation": (relation1 - relation0) / k, "new_messages": new_bytes / k}

    # -- report ------------------------------------------------------------------------------------------
    def report(self) -> tuple[str, list[tuple[bool, str]], dict[str, Any]]:
        rows, data_rows = [], []
        for size in SHAPES:
            ours = self.timings[(OURS, size)].step
            for name in SUBJECTS[size]:
                t = self.timings[(name, size)]
                r50, r99 = ratio(t.step, ours)
                rows.append([f"{size} msgs", name, "step", ms(t.step.p50), ms(t.step.p99), times(r50), times(r99),
                             ms(t.get.p50), ms(t.put.p50), ms(t.writes.p50)])
                data_rows.append({"messages": size, "saver": name, "n": len(t.step.samples),
                                  "step_p50_ms": t.step.p50 * 1e3, "step_p99_ms": t.step.p99 * 1e3,
                                  "ratio_to_ours_p50": r50, "ratio_to_ours_p99": r99,
                                  "get_p50_ms": t.get.p50 * 1e3, "get_p99_ms": t.get.p99 * 1e3,
                                  "put_p50_ms": t.put.p50 * 1e3, "put_p99_ms": t.put.p99 * 1e3,
                                  "writes_p50_ms": t.writes.p50 * 1e3, "writes_p99_ms": t.writes.p99 * 1e3})
        out = ["Per agent step (aget_tuple + aput + aput_writes; '(sync)': get_tuple + put + put_writes); 'vs ours' ="
               " that saver's time / HybridSaver's async step (p50: median of the per-round ratios; > 1 = slower than"
               " ours). get/put/writes: each call's p50, ms.\n"]
        out += [table(["thread", "saver", "op", "p50 ms", "p99 ms", "p50 vs ours", "p99 vs ours",
                      "get p50", "put p50", "writes p50"], rows)]

        growth = {name: self.timings[(name, 1000)].put.p50 / self.timings[(name, 20)].put.p50 for name in SAVERS}
        mean = {key: statistics.fmean(t.put.samples) for key, t in self.timings.items() if t.put.samples}
        mean_growth = {name: mean[(name, 1000)] / mean[(name, 20)] for name in SAVERS}
        out.append("\naput alone at 1,000 messages / at 20, p50 (mean): " +
                   ", ".join(f"{name} {ms(self.timings[(name, 1000)].put.p50)} / {ms(self.timings[(name, 20)].put.p50)}"
                             f" ms = {times(growth[name])} ({ms(mean[(name, 1000)])} / {ms(mean[(name, 20)])} ms ="
                             f" {times(mean_growth[name])})" for name in SAVERS))

        brows = []
        for (name, size), b in self.bytes.items():
            brows.append([f"{size} msgs", name, "bytes/step", f"{b['new_messages']:.0f}", f"{b['logical']:.0f}",
                          f"{b['stored']:.0f}", f"{b['relation']:.0f}", f"{b['logical'] / b['new_messages']:.2f}x"])
        out.append(f"\nPostgreSQL bytes written per step, over K = {self.plan.byte_steps} steps. new: the step's 2 new"
                   " messages as the saver's serde writes them; logical: octet_length of every column of the new rows;"
                   " stored: pg_column_size of those (after TOAST compression); relation: growth of"
                   " pg_total_relation_size of the 3 tables (heap + TOAST + indexes, page-granular)."
                   f" Fixed overhead assumed per step: {FIXED_OVERHEAD} bytes (checkpoint row: ids, versions,"
                   " versions_seen, metadata as blob and jsonb; the blob and writes rows' keys).\n")
        out.append(table(["thread", "saver", "what", "new", "logical", "stored", "relation", "logical/new"], brows))

        checks: list[tuple[bool, str]] = []
        for size in SHAPES:
            pg, ours = self.timings[(PG, size)].step, self.timings[(OURS, size)].step
            r50, _ = ratio(pg, ours)
            rounds = sorted(round_ratios(pg, ours))
            target = TARGET_VS_PG[size]
            checks.append((r50 >= target, f"step at {size} messages: AsyncPostgresSaver / ours = {r50:.2f}x"
                                          f" (p50, median of rounds, which ranged {rounds[0]:.2f}-{rounds[-1]:.2f}x;"
                                          f" target: ours >= {target:g}x faster)"))
        sync_vs_async, _ = ratio(self.timings[(OURS_SYNC, 20)].step, self.timings[(OURS, 20)].step)
        pg_sync, _ = ratio(self.timings[(PG_SYNC, 20)].step, self.timings[(OURS_SYNC, 20)].step)
        checks.append((pg_sync >= TARGET_SYNC_VS_PG,
                       f"sync step at 20 messages: PostgresSaver (sync) / ours (sync) = {pg_sync:.2f}x"
                       f" (target: ours >= {TARGET_SYNC_VS_PG:g}x faster); our sync step is {sync_vs_async:.2f}x our"
                       " async step (its get_tuple is a Redis round trip)"))
        checks.append((growth[OURS] <= TARGET_PUT_GROWTH,
                       f"our aput at 1,000 messages is {growth[OURS]:.2f}x our aput at 20 (target <= "
                       f"{TARGET_PUT_GROWTH}x)"))
        for size in SHAPES:
            b = self.bytes[(OURS, size)]
            limit = 2 * b["new_messages"] + FIXED_OVERHEAD
            checks.append((b["logical"] <= limit,
                           f"our bytes per step at {size} messages: {b['logical']:.0f} logical <= 2 x "
                           f"{b['new_messages']:.0f} (new messages) + {FIXED_OVERHEAD} (fixed overhead) = {limit:.0f}"))
        floor = {size: (ratio(self.timings[(OURS, size)].step, self.timings[(FLOOR, size)].step)[0],
                        ratio(self.timings[(PG, size)].step, self.timings[(FLOOR, size)].step)[0]) for size in SHAPES}
        out.append("\nAgainst the floor (medians of per-round ratios): " + "; ".join(
            f"at {size} messages ours {o:.2f}x, AsyncPostgresSaver {g:.2f}x" for size, (o, g) in floor.items()) +
            f". So the {TARGET_VS_PG[20]:g}x line at 20 messages needs ours within"
            f" {floor[20][1] / TARGET_VS_PG[20]:.2f}x of the floor on this machine.")
        out.append("")
        out.extend(f"{'PASS' if ok else 'FAIL'}  {what}" for ok, what in checks)
        data = {"steps": data_rows, "aput_growth_1000_vs_20": growth, "aput_mean_growth_1000_vs_20": mean_growth,
                "bytes": [{"messages": size, "saver": name, **b} for (name, size), b in self.bytes.items()],
                "fixed_overhead_bytes": FIXED_OVERHEAD,
                "vs_floor": {str(size): {"ours": o, "AsyncPostgresSaver": g} for size, (o, g) in floor.items()},
                "checks": [{"pass": ok, "what": what} for ok, what in checks]}
        return "\n".join(out), checks, data


async def run(plan: Plan, namespace: str, log: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    pg_schema = f"{namespace}_lgpg"
    bench = Bench(plan, namespace, pg_schema)
    try:
        await bench.start()
        log("  building threads ...")
        await bench.fill_pools()
        log("  timing steps ...")
        await bench.run_rounds()
        log("  measuring bytes ...")
        await bench.measure_bytes()
        text_out, _checks, data = bench.report()
    finally:
        try:
            await bench.close()
        finally:
            await drop_namespace(namespace)
    return text_out, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (CI smoke)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    ns = new_namespace("benchckpt")
    t0 = time.perf_counter()
    print(f"checkpointer benchmark ({'quick' if args.quick else 'full'}), namespace {ns}, {plan.rounds} rounds x "
          f"{plan.per_round} steps per saver and thread size, {CONTENT_CHARS} chars per message, "
          f"Python {platform.python_version()}, {os.cpu_count()} cores ({cpu_model()})", flush=True)
    text_out, data = asyncio.run(run(plan, ns, lambda s: print(s, flush=True)))
    elapsed = time.perf_counter() - t0
    print()
    print(text_out)
    print(f"\nwall time {elapsed:.1f}s")
    if args.json:
        data.update({"mode": "quick" if args.quick else "full", "namespace": ns, "plan": vars(plan),
                     "wall_s": elapsed, "python": platform.python_version(), "cpu": cpu_model()})
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
