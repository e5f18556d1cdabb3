"""Engine benchmark: hot/cold reads, adds, warm-up and write-behind persistence, each against a raw baseline.

    python benchmarks/bench_engine.py [--quick] [--json PATH]

Every latency is measured in interleaved rounds against a raw client doing the equivalent work in the same run
(redis-py / redis.asyncio for the hot path, asyncpg for cold reads and persistence), so the ratios hold on a
noisy machine. Runs on a private namespace (PostgreSQL schema + Redis key prefix) that is dropped at the end.
Servers: BENCH_DATABASE_URL / DATABASE_URL and BENCH_REDIS_URL / REDIS_URL (defaults: local PostgreSQL and Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis
import redis.asyncio as aioredis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

from _common import (
    PG_URL,
    REDIS_URL,
    AsyncOpSpec,
    Op,
    Series,
    cpu_model,
    drop_namespace,
    interleave_async,
    interleave_sync,
    ms,
    new_namespace,
    ratio,
    run_in,
    table,
    text,
    times,
)

WINDOW = 30
SHAPES = (10, 100, 1000)
TARGET_HOT = 1.5  # hot read and add: p50 within this factor of the raw Redis round trip
TARGET_PERSIST = 50_000.0  # messages/s into PostgreSQL
TARGET_WARMUP = 0.5  # warm-up sessions/s against a raw query reading the same windows

# The raw equivalent of an append: push, trim to the window, refresh the TTL, in one EVALSHA.
RAW_APPEND = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass
class Plan:
    """Sizes of one run."""

    sessions_per_shape: int
    hot_rounds: int
    hot_per_round: int
    cold_rounds: int
    cold_per_round: int
    add_rounds: int
    add_per_round: int
    persist_messages: int
    persist_sessions: int
    persist_per_call: int
    persist_concurrency: int
    persist_runs: int
    warm_sessions: int
    warm_rounds: int
    content_chars: int = 240
    judged: bool = True  # False: too short a run for the targets (they are printed, not judged)

    @classmethod
    def full(cls) -> Plan:
        return cls(16, 10, 200, 8, 25, 10, 150, 100_000, 1000, 10, 32, 1, 2000, 6)

    @classmethod
    def quick(cls) -> Plan:
        return cls(6, 4, 80, 3, 15, 4, 60, 10_000, 100, 10, 16, 1, 400, 3, judged=False)


@dataclass
class Row:
    """One line of the results table."""

    shape: str
    api: str
    op: str
    subject: Series
    baseline: Series
    baseline_name: str
    extra: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> tuple[float, float]:
        return ratio(self.subject, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        r50, r99 = self.ratios()
        return {"shape": self.shape, "api": self.api, "op": self.op, "baseline": self.baseline_name,
                "p50_ms": self.subject.p50 * 1e3, "p99_ms": self.subject.p99 * 1e3,
                "baseline_p50_ms": self.baseline.p50 * 1e3, "baseline_p99_ms": self.baseline.p99 * 1e3,
                "ratio_p50": r50, "ratio_p99": r99, "n": len(self.subject.samples), **self.extra}


class Bench:
    """Owns the engine, the raw clients and the namespace for one run."""

    def __init__(self, plan: Plan, namespace: str) -> None:
        self.plan = plan
        self.ns = namespace
        self.rng = random.Random(1234)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.mem = HybridMemory(HybridConfig(
            database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace, max_session_messages=WINDOW,
            write_behind_delay=0.05))
        self.rs = redis.Redis.from_url(REDIS_URL)
        self.ra = aioredis.Redis.from_url(REDIS_URL)
        self.raw_append = self.rs.register_script(RAW_APPEND)
        self.araw_append = self.ra.register_script(RAW_APPEND)
        self.pg: asyncpg.Connection | None = None
        self.sessions: dict[int, list[str]] = {}
        self.contents = [text(self.rng, plan.content_chars) for _ in range(64)]
        self.rows: list[Row] = []
        self.persist: dict[str, Any] = {}
        self.warm: dict[str, Any] = {}

    # -- setup -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.mem.start()
        self.pg = run_in(self.loop, asyncpg.connect(PG_URL, server_settings={"search_path": self.ns}))

    def close(self) -> None:
        try:
            self.mem.close()
        finally:
            self.rs.close()
            run_in(self.loop, self.ra.aclose())
            if self.pg is not None:
                run_in(self.loop, self.pg.close())
            self.loop.close()

    def message(self, i: int) -> Message:
        return Message("human" if i % 2 == 0 else "ai", self.contents[i % len(self.contents)])

    def populate(self) -> None:
        """Create the sessions of each shape through the engine, then mirror each cached window into a raw
        list of bare JSON payloads for the hot-read baseline."""
        for shape in SHAPES:
            sids = [f"shape{shape}-{j}" for j in range(self.plan.sessions_per_shape)]
            self.sessions[shape] = sids
            for sid in sids:
                for start in range(0, shape, 100):
                    n = min(100, shape - start)
                    self.mem.add_messages(sid, [self.message(start + k) for k in range(n)])
        self.mem.flush(timeout=120)
        for sids in self.sessions.values():
            for sid in sids:
                window: list[bytes] = self.rs.lrange(self.mem.keys.session(sid).window, 0, -1)  # type: ignore[assignment]
                raw = self.raw_key("hot", sid)
                self.rs.delete(raw)
                self.rs.rpush(raw, *window)  # the same JSON objects the engine caches

    def raw_key(self, kind: str, sid: str) -> str:
        return f"{self.ns}:raw:{kind}:{sid}"

    # -- latency phases ----------------------------------------------------------------------------------
    def hot_reads(self, shape: int) -> None:
        sids, mem, rs, ra = self.sessions[shape], self.mem, self.rs, self.ra
        keys = [self.raw_key("hot", s) for s in sids]
        n, p = len(sids), self.plan
        expect = min(shape, WINDOW)
        assert len(mem.get_recent_messages(sids[0])) == expect
        before = mem.get_cache_stats()

        def raw(i: int) -> list[Any]:
            return [json.loads(x) for x in rs.lrange(keys[i % n], -WINDOW, -1)]

        sync = interleave_sync({
            "engine": Op(lambda i: mem.get_recent_messages(sids[i % n])),
            "raw": Op(raw),
        }, p.hot_rounds, p.hot_per_round)

        async def araw(i: int) -> list[Any]:
            return [json.loads(x) for x in await ra.lrange(keys[i % n], -WINDOW, -1)]

        async def aengine(i: int) -> list[Message]:
            return await mem.aget_recent_messages(sids[i % n])

        asy = run_in(self.loop, interleave_async({"engine": AsyncOpSpec(aengine), "raw": AsyncOpSpec(araw)},
                                                 p.hot_rounds, p.hot_per_round))
        after = mem.get_cache_stats()
        if after.misses != before.misses:
            raise RuntimeError(f"hot reads missed the cache {after.misses - before.misses} times")
        base = "redis-py LRANGE + json.loads"
        self.rows.append(Row(str(shape), "sync", "hot read", sync["engine"], sync["raw"], base))
        self.rows.append(Row(str(shape), "async", "hot read", asy["engine"], asy["raw"],
                             "redis.asyncio LRANGE + json.loads"))

    def cold_reads(self, shape: int) -> None:
        sids, mem, loop, p = self.sessions[shape], self.mem, self.loop, self.plan
        n = len(sids)
        pg = self.pg
        assert pg is not None
        sql = "SELECT seq, msg_id, body FROM messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"
        before = mem.get_cache_stats()

        async def raw_fetch(i: int) -> list[Any]:
            rows = await pg.fetch(sql, sids[i % n], WINDOW)
            return [json.loads(r[2]) for r in reversed(rows)]

        # Both follow the same untimed step (dropping the engine's cached window of the session): a raw query
        # right after the previous one finds its PostgreSQL backend still running, which a cold read never does.
        def invalidate(i: int) -> None:
            mem.invalidate_session(sids[i % n])

        sync = interleave_sync({
            "engine": Op(lambda i: mem.get_recent_messages(sids[i % n]), invalidate),
            "raw": Op(lambda i: run_in(loop, raw_fetch(i)), invalidate),
        }, p.cold_rounds, p.cold_per_round, warmup=5)

        async def ainvalidate(i: int) -> None:
            await mem.ainvalidate_session(sids[i % n])

        async def aengine(i: int) -> list[Message]:
            return await mem.aget_recent_messages(sids[i % n])

        asy = run_in(loop, interleave_async({"engine": AsyncOpSpec(aengine, ainvalidate),
                                             "raw": AsyncOpSpec(raw_fetch, ainvalidate)}, p.cold_rounds,
                                            p.cold_per_round, warmup=5))
        after = mem.get_cache_stats()
        expected = 2 * (p.cold_rounds * p.cold_per_round + 5)
        if after.misses - before.misses != expected:
            raise RuntimeError(f"cold reads: {after.misses - before.misses} misses, expected {expected}")
        base = "asyncpg SELECT last 30 + json.loads"
        self.rows.append(Row(str(shape), "sync", "cold read", sync["engine"], sync["raw"], base))
        self.rows.append(Row(str(shape), "async", "cold read", asy["engine"], asy["raw"], base))

    def adds(self, shape: int) -> None:
        sids, mem, p = self.sessions[shape], self.mem, self.plan
        n = len(sids)
        count = p.add_rounds * p.add_per_round + 20
        ttl = int(mem.config.session_ttl * 1000)
        keys = [self.raw_key("add", s) for s in sids]
        raw_append, araw_append = self.raw_append, self.araw_append

        def fresh() -> list[Message]:
            return [self.message(i) for i in range(count)]

        def payload(m: Message) -> str:
            # The equivalent serialisation work of the engine: the message as compact JSON.
            return json.dumps({"i": m.id, "r": m.role, "c": m.content, "t": time.time()}, separators=(",", ":"))

        eng_msgs, raw_msgs = fresh(), fresh()

        def raw(i: int) -> Any:
            return raw_append(keys=[keys[i % n]], args=[payload(raw_msgs[i]), WINDOW, ttl])

        sync = interleave_sync({
            "engine": Op(lambda i: mem.add_messages(sids[i % n], [eng_msgs[i]])),
            "raw": Op(raw),
        }, p.add_rounds, p.add_per_round)

        aeng_msgs, araw_msgs = fresh(), fresh()

        async def aengine(i: int) -> list[Message]:
            return await mem.aadd_messages(sids[i % n], [aeng_msgs[i]])

        async def araw(i: int) -> Any:
            return await araw_append(keys=[keys[i % n]], args=[payload(araw_msgs[i]), WINDOW, ttl])

        asy = run_in(self.loop, interleave_async({"engine": AsyncOpSpec(aengine), "raw": AsyncOpSpec(araw)},
                                                 p.add_rounds, p.add_per_round))
        self.mem.flush(timeout=60)
        self.rows.append(Row(str(shape), "sync", "add (1 msg)", sync["engine"], sync["raw"],
                             "redis-py EVALSHA RPUSH+LTRIM+PEXPIRE"))
        self.rows.append(Row(str(shape), "async", "add (1 msg)", asy["engine"], asy["raw"],
                             "redis.asyncio EVALSHA RPUSH+LTRIM+PEXPIRE"))

    # -- warm-up -----------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """`warmup()` (the most recently active sessions loaded into Redis after a restart) in sessions/s, against
        the raw baseline of what it must read: one asyncpg query per batch of 200 sessions for their last
        WINDOW messages, bodies decoded. Rounds alternate the two; Redis is emptied of the sessions before each
        of ours (untimed)."""
        p, mem, pg = self.plan, self.mem, self.pg
        assert pg is not None
        sids = [f"warm-{j}" for j in range(p.warm_sessions)]
        for sid in sids:
            mem.add_messages(sid, [self.message(k) for k in range(WINDOW)])
        mem.flush(timeout=120)
        sql = ("SELECT q.s, m.seq, m.msg_id, m.body FROM unnest($1::text[]) AS q(s) CROSS JOIN LATERAL ("
               "SELECT seq, msg_id, body FROM messages WHERE session_id = q.s ORDER BY seq DESC LIMIT $2) m")

        async def raw() -> int:
            got = 0
            for i in range(0, len(sids), 200):
                rows = await pg.fetch(sql, sids[i:i + 200], WINDOW)
                got += len({r[0] for r in rows if json.loads(r[3])})
            return got

        ours_rates, raw_rates = [], []
        for _ in range(p.warm_rounds):
            for sid in sids:
                mem.invalidate_session(sid)
            gc.collect()
            t0 = time.perf_counter()
            loaded = mem.warmup(limit=len(sids))
            ours_rates.append(loaded / (time.perf_counter() - t0))
            if loaded != len(sids):
                raise RuntimeError(f"warmup loaded {loaded} sessions, expected {len(sids)}")
            t0 = time.perf_counter()
            got = run_in(self.loop, raw())
            raw_rates.append(got / (time.perf_counter() - t0))
        before = mem.get_cache_stats()
        for sid in sids[:50]:
            mem.get_recent_messages(sid)
        if mem.get_cache_stats().misses != before.misses:
            raise RuntimeError("sessions loaded by warmup missed the cache")
        per = sorted(o / r for o, r in zip(ours_rates, raw_rates, strict=True))
        self.warm = {"sessions": len(sids), "messages_each": WINDOW, "rounds": p.warm_rounds,
                     "ours_per_s": sorted(ours_rates)[len(ours_rates) // 2],
                     "raw_per_s": sorted(raw_rates)[len(raw_rates) // 2], "ratio": per[len(per) // 2],
                     "ours_runs": ours_rates, "raw_runs": raw_rates}

    # -- persistence -------------------------------------------------------------------------------------
    def _persist_memory(self) -> HybridMemory:
        """A second engine on the same namespace for the persistence runs (its own flusher and stats).

        pg_timeout is long so that a flusher parked behind a table lock waits instead of retrying."""
        p = self.plan
        return HybridMemory(HybridConfig(
            database_url=PG_URL, redis_url=REDIS_URL, namespace=self.ns, max_session_messages=WINDOW,
            write_behind_delay=0.05, max_backlog=4 * p.persist_messages, pg_timeout=300))

    def _batches(self) -> list[list[Message]]:
        """The messages of one persistence run, built before the clock starts (as the COPY floor's rows are)."""
        p = self.plan
        calls_per_session = max(1, p.persist_messages // p.persist_sessions // p.persist_per_call)
        return [[self.message(c * p.persist_per_call + k) for k in range(p.persist_per_call)]
                for c in range(p.persist_sessions * calls_per_session)]

    async def _enqueue(self, mem: HybridMemory, tag: str, calls: list[list[Message]]) -> tuple[int, list[str]]:
        """`calls` (`persist_per_call` messages each) over `persist_sessions` sessions, from
        `persist_concurrency` tasks. Returns (messages, session ids)."""
        p = self.plan
        calls_per_session = len(calls) // p.persist_sessions
        sids = [f"{tag}-{j}" for j in range(p.persist_sessions)]

        async def worker(w: int) -> None:
            mine = sids[w::p.persist_concurrency]
            for c in range(calls_per_session):
                for j, sid in enumerate(mine):
                    await mem.aadd_messages(sid, calls[(c * len(sids) + w + j * p.persist_concurrency) % len(calls)])

        await asyncio.gather(*(worker(w) for w in range(p.persist_concurrency)))
        return p.persist_sessions * calls_per_session * p.persist_per_call, sids

    async def _count(self, tag: str) -> int:
        assert self.pg is not None
        return int(await self.pg.fetchval("SELECT count(*) FROM messages WHERE session_id LIKE $1", f"{tag}-%"))

    async def _sustained(self, mem: HybridMemory, run: int, *, warm: bool) -> dict[str, Any]:
        """Writers and flusher run together: from the first add until flush() returns. `warm`: every session
        got one message (untimed, flushed) first, as a live conversation has; else each session's first write
        loads its (empty) window from PostgreSQL."""
        tag = f"sustained{'w' if warm else 'n'}{run}"
        warmed = 0
        if warm:
            for j in range(self.plan.persist_sessions):
                await mem.aadd_messages(f"{tag}-{j}", [self.message(j)])
            warmed = self.plan.persist_sessions
            await mem.aflush(timeout=300)
        calls = self._batches()
        gc.collect()
        busy = _PersistTimer(mem)
        busy.install()
        try:
            t0 = time.perf_counter()
            total, _ = await self._enqueue(mem, tag, calls)
            t_enq = time.perf_counter() - t0
            await mem.aflush(timeout=300)
            t_total = time.perf_counter() - t0
        finally:
            busy.remove()
        stored = await self._count(tag) - warmed
        if stored != total:
            raise RuntimeError(f"persistence: {stored} rows in PostgreSQL, expected {total}")
        return {"messages": total, "enqueue_s": t_enq, "total_s": t_total, "rate": total / t_total,
                "enqueue_rate": total / t_enq, "rows_in_pg": stored, "persist_calls": busy.calls,
                "persist_busy_s": busy.seconds, "persist_stmt_rate": busy.rows / busy.seconds if busy.seconds else None}

    async def _parked(self, mem: HybridMemory, run: int) -> dict[str, Any]:
        """Park the flusher behind `LOCK TABLE messages IN SHARE MODE` while enqueueing (the pure enqueue
        rate), measure cold reads while the Redis outbox holds the whole backlog, then release the lock and
        time the drain alone (the pure persistence rate of the write-behind path)."""
        tag = f"parked{run}"
        calls = self._batches()
        lock = await asyncpg.connect(PG_URL, server_settings={"search_path": self.ns})
        try:
            tr = lock.transaction()
            await tr.start()
            await lock.execute("LOCK TABLE messages IN SHARE MODE")
            try:
                t0 = time.perf_counter()
                total, _ = await self._enqueue(mem, tag, calls)
                t_enq = time.perf_counter() - t0
                stats = await mem.aget_cache_stats()
                cold = await self._cold_with_backlog(mem)
            finally:
                await tr.commit()
            t1 = time.perf_counter()
            await mem.aflush(timeout=300)
            t_drain = time.perf_counter() - t1
        finally:
            await lock.close()
        stored = await self._count(tag)
        if stored != total:
            raise RuntimeError(f"persistence (drain): {stored} rows in PostgreSQL, expected {total}")
        return {"messages": total, "enqueue_s": t_enq, "enqueue_rate": total / t_enq, "drain_s": t_drain,
                "drain_rate": total / t_drain, "rows_in_pg": stored, "backlog": stats.backlog,
                "outbox_entries": stats.outbox_entries, "cold_read_backlog_p50_ms": cold.p50 * 1e3,
                "cold_read_backlog_p99_ms": cold.p99 * 1e3}

    async def _cold_with_backlog(self, mem: HybridMemory) -> Series:
        sids = self.sessions[100]
        out = Series()
        for i in range(20):
            await mem.ainvalidate_session(sids[i % len(sids)])
            t0 = time.perf_counter()
            await mem.aget_recent_messages(sids[i % len(sids)])
            out.samples.append(time.perf_counter() - t0)
        return out

    async def _copy(self, run: int) -> dict[str, Any]:
        """The floor: asyncpg COPY of as many rows into a table shaped like `messages` (same indexes)."""
        p, pg = self.plan, self.pg
        assert pg is not None
        table_name = f"raw_copy{run}"
        await pg.execute(f"DROP TABLE IF EXISTS {table_name}; CREATE TABLE {table_name} (LIKE messages INCLUDING ALL)")
        now = dt.datetime.now(dt.UTC)
        per_session = max(1, p.persist_messages // p.persist_sessions)
        base = time.time_ns() // 1000
        records = []
        for j in range(p.persist_sessions):
            for k in range(per_session):
                m = self.message(k)
                body = json.dumps({"i": m.id, "r": m.role, "c": m.content, "t": now.timestamp()},
                                  separators=(",", ":"))
                records.append((f"copy-{j}", base + k, m.id, m.role, body, now))
        t0 = time.perf_counter()
        await pg.copy_records_to_table(table_name, records=records,
                                       columns=["session_id", "seq", "msg_id", "role", "body", "created_at"])
        seconds = time.perf_counter() - t0
        await pg.execute(f"DROP TABLE {table_name}")
        return {"messages": len(records), "seconds": seconds, "rate": len(records) / seconds}

    def persistence(self) -> None:
        mem = self._persist_memory()
        try:
            mem.start()
            copies, sustained, fresh, parked = [], [], [], []
            for run in range(self.plan.persist_runs):
                copies.append(run_in(self.loop, self._copy(run)))
                sustained.append(run_in(self.loop, self._sustained(mem, run, warm=True)))
                fresh.append(run_in(self.loop, self._sustained(mem, run, warm=False)))
                parked.append(run_in(self.loop, self._parked(mem, run)))
        finally:
            mem.close()
        p = self.plan
        best_s = max(sustained, key=lambda r: r["rate"])
        best_f = max(fresh, key=lambda r: r["rate"])
        best_p = max(parked, key=lambda r: r["drain_rate"])
        copy = max(copies, key=lambda r: r["rate"])
        self.persist = {
            "sessions": p.persist_sessions, "per_call": p.persist_per_call, "concurrency": p.persist_concurrency,
            "sustained": best_s, "new_sessions": best_f, "parked": best_p, "copy": copy,
            "runs": {"sustained": sustained, "new_sessions": fresh, "parked": parked, "copy": copies},
            "sustained_to_copy": best_s["rate"] / copy["rate"], "drain_to_copy": best_p["drain_rate"] / copy["rate"]}

    # -- report ------------------------------------------------------------------------------------------
    def report(self) -> tuple[str, list[tuple[str, bool]], dict[str, Any]]:
        headers = ["session", "api", "operation", "p50 ms", "p99 ms", "raw p50", "raw p99", "x p50", "x p99"]
        lines = []
        for r in self.rows:
            r50, r99 = r.ratios()
            lines.append([f"{r.shape} msgs", r.api, r.op, ms(r.subject.p50), ms(r.subject.p99),
                          ms(r.baseline.p50), ms(r.baseline.p99), times(r50), times(r99)])
        out = [table(headers, lines), ""]
        out.append("baselines: " + "; ".join(sorted({f"{r.api} {r.op}: {r.baseline_name}" for r in self.rows})))
        ps = self.persist
        e, d, c = ps["sustained"], ps["parked"], ps["copy"]
        cold = next((r.subject.p50 * 1e3 for r in self.rows if r.shape == "100" and r.api == "async"
                     and r.op == "cold read"), None)
        stmt = (f"{e['persist_stmt_rate']:,.0f} rows/s while in the statement" if e["persist_stmt_rate"] else "n/a")
        out += ["", f"persistence into PostgreSQL ({ps['sessions']} sessions, {ps['per_call']} msgs per "
                f"aadd_messages, {ps['concurrency']} concurrent tasks, rows counted in PostgreSQL after flush)",
                f"  sustained (writers + flusher together, sessions cached): {e['messages']:,} msgs enqueued in "
                f"{e['enqueue_s']:.2f}s, all in PostgreSQL after {e['total_s']:.2f}s -> {e['rate']:,.0f} msgs/s "
                f"({ps['sustained_to_copy']:.2f}x COPY)",
                f"    flusher: {e['persist_calls']} persist statements, {e['persist_busy_s']:.2f}s in them -> {stmt}",
                f"  the same into sessions new at start (each first write reads PostgreSQL): "
                f"{ps['new_sessions']['rate']:,.0f} msgs/s",
                f"  parked then drained: enqueue alone {d['enqueue_rate']:,.0f} msgs/s; drain alone {d['messages']:,} "
                f"msgs in {d['drain_s']:.2f}s -> {d['drain_rate']:,.0f} msgs/s ({ps['drain_to_copy']:.2f}x COPY)",
                f"    cold read (100 msgs) while {d['outbox_entries']:,} outbox entries wait: "
                f"p50 {d['cold_read_backlog_p50_ms']:.3f} ms, p99 {d['cold_read_backlog_p99_ms']:.3f} ms"
                + (f" ({d['cold_read_backlog_p50_ms'] / cold:.2f}x a cold read, empty outbox)" if cold else ""),
                f"  raw asyncpg COPY, same rows and indexes: {c['messages']:,} rows in {c['seconds']:.2f}s -> "
                f"{c['rate']:,.0f} rows/s"]
        w = self.warm
        if w:
            out += ["", f"warm-up (`warmup()` after Redis lost {w['sessions']:,} sessions of {w['messages_each']} "
                        f"messages, {w['rounds']} rounds): {w['ours_per_s']:,.0f} sessions/s loaded into Redis; raw "
                        f"asyncpg, one query per 200 sessions, bodies decoded: {w['raw_per_s']:,.0f} sessions/s read "
                        f"-> {w['ratio']:.2f}x"]
        out += ["", "sync/async p50 ratio (>1: sync slower)"]
        by = {(r.shape, r.api, r.op): r for r in self.rows}
        for shape in SHAPES:
            parts = []
            for op in ("hot read", "cold read", "add (1 msg)"):
                s, a = by.get((str(shape), "sync", op)), by.get((str(shape), "async", op))
                if s and a:
                    parts.append(f"{op} {s.subject.p50 / a.subject.p50:.2f}")
            out.append(f"  {shape} msgs: " + ", ".join(parts))
        checks: list[tuple[str, bool]] = []
        for r in self.rows:
            if r.op in ("hot read", "add (1 msg)"):
                r50, _ = r.ratios()
                checks.append((f"{r.op} {r.api} {r.shape} msgs: p50 {r50:.3f}x of raw Redis "
                               f"(target <= {TARGET_HOT}x)", r50 <= TARGET_HOT))
        checks.append((f"persistence, sustained (sessions cached): {e['rate']:,.0f} msgs/s "
                       f"(target >= {TARGET_PERSIST:,.0f})",
                       e["rate"] >= TARGET_PERSIST))
        checks.append((f"persistence, drain alone: {d['drain_rate']:,.0f} msgs/s (target >= {TARGET_PERSIST:,.0f})",
                       d["drain_rate"] >= TARGET_PERSIST))
        if w:
            checks.append((f"warm-up: {w['ratio']:.2f}x the sessions/s of the raw query that reads them "
                           f"(target >= {TARGET_WARMUP}x)", w["ratio"] >= TARGET_WARMUP))
        if self.plan.judged:
            out += ["", "targets"] + [f"  {'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks]
        else:  # a quick plan persists 10,000 messages, a fraction of a second: start-up weighs on its rates
            out += ["", "targets (not judged: a --quick run is too short for them)"]
            out += [f"  {'met' if ok else 'not met'}  {name}" for name, ok in checks]
        data = {"rows": [r.to_dict() for r in self.rows], "persistence": self.persist, "warmup": self.warm,
                "checks": [{"check": name, "pass": ok} for name, ok in checks]}
        return "\n".join(out), checks, data


class _PersistTimer:
    """Times the flusher's PostgreSQL statement by wrapping the store's `persist` (diagnostic only)."""

    def __init__(self, mem: HybridMemory) -> None:
        self.store = mem._core.store  # the engine's PostgresStore (the write-behind flusher calls its persist)
        self.calls = 0
        self.rows = 0
        self.seconds = 0.0

    def install(self) -> None:
        store = self.store
        if store is None or not hasattr(store, "persist"):
            return
        original = store.persist

        async def timed(rows: Any, users: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(rows, users)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self.rows += len(rows)

        store.persist = timed

    def remove(self) -> None:
        if self.store is not None and "persist" in vars(self.store):
            del self.store.persist


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (CI smoke)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--persist-messages", type=int, help="messages in the persistence runs")
    ap.add_argument("--content-chars", type=int, help="characters of content per message (default 240)")
    args = ap.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.persist_messages:
        plan.persist_messages = args.persist_messages
    if args.content_chars:
        plan.content_chars = args.content_chars
    ns = new_namespace()
    t0 = time.perf_counter()
    print(f"hybrid-memory engine benchmark ({'quick' if args.quick else 'full'}), namespace {ns}, "
          f"window {WINDOW}, {plan.sessions_per_shape} sessions per shape, {plan.content_chars} chars per message, "
          f"Python {platform.python_version()}, {os.cpu_count()} cores ({cpu_model()})", flush=True)
    bench = Bench(plan, ns)
    try:
        bench.start()
        bench.populate()
        for shape in SHAPES:
            print(f"  measuring sessions of {shape} messages ...", flush=True)
            bench.hot_reads(shape)
            bench.cold_reads(shape)
            bench.adds(shape)
        print("  measuring warm-up ...", flush=True)
        bench.warmup()
        print("  measuring persistence ...", flush=True)
        bench.persistence()
        text_out, _checks, data = bench.report()
    finally:
        try:
            bench.close()
        finally:
            asyncio.run(drop_namespace(ns))
    elapsed = time.perf_counter() - t0
    print()
    print(text_out)
    print(f"\nwall time {elapsed:.1f}s")
    if args.json:
        data.update({"mode": "quick" if args.quick else "full", "namespace": ns, "window": WINDOW,
                     "plan": vars(plan), "wall_s": elapsed, "python": platform.python_version(), "cpu": cpu_model(),
                     "redis_py": redis.__version__, "asyncpg": asyncpg.__version__})
        Path(args.json).write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
