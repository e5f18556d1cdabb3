"""Comparison benchmark: ours against the LangChain / LlamaIndex chat stores and the raw floors.

    python benchmarks/bench_compare.py [--quick] [--json PATH] [--out-dir DIR] [--subjects a,b,...]

One run, one machine, one workload for every subject:
  ours (HybridMemory async and sync API, and through HybridChatMessageHistory), langchain-community
  RedisChatMessageHistory, langchain-postgres PostgresChatMessageHistory, llama-index RedisChatStore,
  llama-index PostgresChatStore, llama-index Memory with its default SQL store, and raw redis-py /
  redis.asyncio / asyncpg calls as the floor.
Measures: add p50/p99; context read (what the model is handed: `get_context` for ours, `messages` /
`aget_messages` / `Memory.aget()` for the others) for sessions of 10, 100, 1,000 and 10,000 messages; cold read
after cache loss; a chat turn (read context + add two messages); mixed load from 1 to 64 concurrent clients over
1,000 sessions; sustained persistence into PostgreSQL; Redis bytes per cached message.

Latencies are measured in interleaved rounds (every subject in every round, rotating who goes first), bounded
by time per subject; every figure is also given as a ratio to the floor and to the best competitor of the same
run (medians of per-round ratios). Prints the tables and PASS/FAIL lines for our targets, and writes
JSON, a markdown table for the README and a PNG plot (default under benchmarks/results/; `compare-quick.*` for
--quick). Everything lives in a private namespace (PostgreSQL schema + Redis key prefix), dropped at the end.
Servers: BENCH_DATABASE_URL / DATABASE_URL and BENCH_REDIS_URL / REDIS_URL (defaults: local PostgreSQL and Redis).
Competitors: pip install langchain-community langchain-postgres "psycopg[binary]" psycopg-pool \
llama-index-storage-chat-store-redis llama-index-storage-chat-store-postgres aiosqlite matplotlib
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis
import redis.asyncio as aioredis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

from _common import PG_URL, REDIS_URL, cpu_model, drop_namespace, new_namespace, ratio, text
from compare import report
from compare.runner import Budget, LoadPoint, Result, Timed, interleave, load_async, load_ratio, load_threads
from compare.subjects import ALL, COMPETITORS, FloorMissPG, FloorPG, LCPostgres, LIPostgres, Subject, World

WINDOW = 30
TARGET_HOT = 1.5  # hot read and add: p50 within this factor of the raw Redis round trip
TARGET_FLAT = 1.25  # ours' floor ratio may grow this much from the shortest session to the longest
TARGET_VS_FULL = 10.0  # context read at 1,000 messages vs every full-history competitor
TARGET_SYNC = 1.5  # sync API p50 within this factor of the async API
TARGET_PERSIST = 50_000.0  # messages/s into PostgreSQL
TARGET_TURN_P99 = 0.002  # s, chat turn p99 under 64 concurrent conversations
TARGET_COLD_FLOOR = 2.0  # cold read p50 within this factor of a raw asyncpg query of the same rows
# A conversation waits for the model between two turns: uniform(0.25, 0.75) s, a fast model's answer.
THINK = (0.25, 0.75)
FULL_HISTORY_SHAPE = 1000


@dataclass
class Plan:
    shapes: tuple[int, ...]
    sessions: dict[int, int]
    rounds: int
    per_round: int
    seconds: float  # per subject and measure (read, add, turn), over all rounds
    cold_per_round: int
    cold_seconds: float
    mixed_clients: tuple[int, ...]
    mixed_rounds: int
    mixed_slice: float  # seconds per subject, client count and round
    mixed_sessions: int
    mixed_prefill: int
    paced_clients: tuple[int, ...]
    paced_rounds: int
    paced_slice: float
    persist_messages: int
    persist_seconds: float  # time bound of each competitor's persistence run
    content_chars: int = 240

    @classmethod
    def full(cls) -> Plan:
        return cls(shapes=(10, 100, 1000, 10000), sessions={10: 32, 100: 16, 1000: 6, 10000: 2}, rounds=20,
                   per_round=40, seconds=2.5, cold_per_round=10, cold_seconds=1.5,
                   mixed_clients=(1, 2, 4, 8, 16, 32, 64), mixed_rounds=3, mixed_slice=0.5, mixed_sessions=1000,
                   mixed_prefill=10, paced_clients=(1, 16, 64), paced_rounds=2, paced_slice=3.0,
                   persist_messages=100_000, persist_seconds=3.0)

    @classmethod
    def quick(cls) -> Plan:
        return cls(shapes=(10, 1000), sessions={10: 12, 1000: 3}, rounds=8, per_round=30, seconds=0.5,
                   cold_per_round=5, cold_seconds=0.4, mixed_clients=(1, 8, 64), mixed_rounds=2, mixed_slice=0.3,
                   mixed_sessions=1000, mixed_prefill=10, paced_clients=(64,), paced_rounds=1, paced_slice=2.0,
                   persist_messages=10_000, persist_seconds=0.7)


@dataclass
class Bench:
    plan: Plan
    ns: str
    keys: list[str]
    mixed_all: bool
    world: World | None = None
    subjects: dict[str, Subject] = field(default_factory=dict)
    floor_pg: FloorPG | None = None
    floor_miss: FloorMissPG | None = None
    names: dict[int, list[str]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    redis_usage: list[dict[str, Any]] = field(default_factory=list)
    prefill_s: dict[str, dict[int, float]] = field(default_factory=dict)
    mixed: dict[str, Any] = field(default_factory=dict)
    paced: dict[str, Any] = field(default_factory=dict)
    persistence: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    # -- setup ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        p = self.plan
        rng = random.Random(1234)
        mem = HybridMemory(HybridConfig(
            database_url=PG_URL, redis_url=REDIS_URL, namespace=self.ns, max_session_messages=WINDOW,
            write_behind_delay=0.05, max_backlog=2_000_000, pg_timeout=120))
        await mem.astart()
        self.world = World(ns=self.ns, pg_url=PG_URL, redis_url=REDIS_URL, window=WINDOW,
                           contents=[text(rng, p.content_chars) for _ in range(64)], mem=mem,
                           rs=redis.Redis.from_url(REDIS_URL), ra=aioredis.Redis.from_url(REDIS_URL),
                           ttl_ms=int(mem.config.session_ttl * 1000))
        for key in self.keys:
            self.subjects[key] = ALL[key](self.world)
        self.floor_pg, self.floor_miss = FloorPG(self.world), FloorMissPG(self.world)
        for s in [*self.subjects.values(), self.floor_pg, self.floor_miss]:
            await s.setup()

    async def close(self) -> None:
        for s in [*self.subjects.values(), *(f for f in (self.floor_pg, self.floor_miss) if f is not None)]:
            try:
                await s.close()
            except Exception as exc:  # cleanup must go on
                print(f"warning: closing {s.key}: {exc!r}", file=sys.stderr)
        if self.world is not None:
            await self.world.mem.aclose()
            self.world.rs.close()
            await self.world.ra.aclose()

    def turns(self, n: int, offset: int = 0) -> list[tuple[str, str]]:
        w = self.world
        assert w is not None
        return [(w.role(offset + k), w.content(offset + k)) for k in range(n)]

    async def prefill(self) -> None:
        for shape in self.plan.shapes:
            self.names[shape] = [f"s{shape}-{j}" for j in range(self.plan.sessions[shape])]
        for key, s in self.subjects.items():
            self.prefill_s[key] = {}
            for shape in self.plan.shapes:
                t0 = time.perf_counter()
                for j, name in enumerate(self.names[shape]):
                    await s.prefill(name, self.turns(shape, j))
                self.prefill_s[key][shape] = time.perf_counter() - t0
            print(f"    prefilled {key}: " + ", ".join(f"{n:,} msgs x {self.plan.sessions[n]} in {t:.1f}s"
                                                    for n, t in self.prefill_s[key].items()), flush=True)
        assert self.world is not None
        await self.world.mem.aflush(timeout=300)

    # -- latency ---------------------------------------------------------------------------------------------
    def _ops(self, measure: str, shape: int, subjects: list[Subject]) -> dict[str, Timed]:
        assert self.world is not None
        return {s.key: _timed(measure, s, self.names[shape], self.world.mem) for s in subjects}

    async def measure(self, measure: str, shape: int) -> None:
        p = self.plan
        mem = self.world.mem if self.world else None
        assert mem is not None
        if measure == "cold":
            subjects = [s for s in self.subjects.values() if s.cold_note is None]
            assert self.floor_pg is not None and self.floor_miss is not None
            subjects += [self.floor_pg, self.floor_miss]
            budget = Budget(p.rounds, p.cold_per_round, p.cold_seconds, warmup=3, min_per_round=1)
        else:
            subjects = list(self.subjects.values())
            budget = Budget(p.rounds, p.per_round, p.seconds, min_per_round=1)
        before = await mem.aget_cache_stats()
        gc.collect()
        res = await interleave(self._ops(measure, shape, subjects), budget)
        after = await mem.aget_cache_stats()
        ours = [k for k in ("ours-async", "ours-sync") if k in res]
        misses = after.misses - before.misses
        if measure == "cold":
            expected = sum(len(res[k].series.samples) + len(res[k].returned) for k in ours)
            if misses < expected:
                raise RuntimeError(f"cold reads ({shape} msgs): {misses} cache misses, expected {expected}")
        elif misses:
            raise RuntimeError(f"{measure} ({shape} msgs): {misses} cache misses on the hot path")
        self._rows(measure, shape, subjects, res)

    def _rows(self, measure: str, shape: int, subjects: list[Subject], res: dict[str, Result]) -> None:
        comps = [k for k in COMPETITORS if k in res]
        best = min(comps, key=lambda k: res[k].series.p50) if comps else None
        for s in subjects:
            r = res[s.key]
            floor = "floor-pg" if measure == "cold" else ("floor-sync" if s.api == "sync" else "floor-async")
            if floor not in res:
                floor = "floor-async"
            f50, f99 = ratio(r.series, res[floor].series) if floor in res else (float("nan"), float("nan"))
            b50, b99 = ratio(r.series, res[best].series) if best else (float("nan"), float("nan"))
            m50 = ratio(r.series, res["floor-miss-pg"].series)[0] if "floor-miss-pg" in res else float("nan")
            returned = r.returned[0] if r.returned and isinstance(r.returned[0], int) else None
            self.rows.append({
                "measure": measure, "shape": shape, "key": s.key, "label": s.label, "api": s.api, "kind": s.kind,
                "n": len(r.series.samples), "returned": returned, "p50": r.series.p50, "p99": r.series.p99,
                "mean": sum(r.series.samples) / len(r.series.samples), "round_p50": r.series.round_p50,
                "floor": floor, "x_floor_p50": f50, "x_floor_p99": f99, "best": best, "x_best_p50": b50,
                "x_best_p99": b99, "x_miss_floor_p50": m50})

    async def usage(self, shape: int) -> None:
        found = []
        for s in self.subjects.values():
            u = await s.redis_usage(self.names[shape])
            if u is None:
                continue
            u.update(key=s.key, label=s.label, shape=shape, per_message=u["bytes"] / max(u["messages"], 1),
                     per_session=u["bytes"] / max(u["sessions"], 1))
            found.append(u)
        floor = next((u for u in found if u["key"] == "floor-async"), None)
        comps = [u for u in found if u["key"] in COMPETITORS]
        best = min(comps, key=lambda u: u["per_message"]) if comps else None
        for u in found:
            u["x_floor"] = u["per_message"] / floor["per_message"] if floor else None
            u["x_best"] = u["per_message"] / best["per_message"] if best else None
        self.redis_usage += found

    # -- mixed load ------------------------------------------------------------------------------------------
    async def mixed_load(self) -> None:
        """Two loads on the same sessions: back to back (saturation: throughput, and the p99 a queue makes) and
        paced like conversations (each client waits THINK for the model between turns: latency under
        concurrency)."""
        p = self.plan
        first = min(p.shapes)
        turn_rows = {r["key"]: r for r in self.rows if r["measure"] == "turn" and r["shape"] == first}
        comps = [k for k in COMPETITORS if k in turn_rows]
        best = min(comps, key=lambda k: turn_rows[k]["p50"]) if comps else None
        keys = [k for k in ("ours-async", "ours-sync") if k in self.subjects]
        keys += [k for k in comps if k == best or self.mixed_all]
        keys += [k for k in ("floor-async", "floor-sync") if k in self.subjects]
        sids = [f"mix-{j}" for j in range(p.mixed_sessions)]
        for k in keys:
            t0 = time.perf_counter()
            s = self.subjects[k]
            step = 1 if k == "li-memory" else 32  # its default SQLite store has one connection
            for start in range(0, len(sids), step):
                await asyncio.gather(*(s.prefill(name, self.turns(p.mixed_prefill, start + j))
                                       for j, name in enumerate(sids[start:start + step])))
            print(f"    prefilled {k}: {p.mixed_sessions:,} sessions of {p.mixed_prefill} msgs in "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
        assert self.world is not None
        await self.world.mem.aflush(timeout=300)
        common = {"sessions": p.mixed_sessions, "prefill": p.mixed_prefill, "subjects": keys, "best_competitor": best}
        self.mixed = {**common, **await self._load(keys, best, sids, p.mixed_clients, p.mixed_rounds, p.mixed_slice,
                                                   None)}
        if p.paced_clients:
            print(f"    paced: a think time of {THINK[0]}-{THINK[1]} s between turns", flush=True)
            self.paced = {**common, "think_s": list(THINK), **await self._load(
                keys, best, sids, p.paced_clients, p.paced_rounds, p.paced_slice, THINK)}

    async def _load(self, keys: list[str], best: str | None, sids: list[str], clients_list: tuple[int, ...],
                    rounds: int, slice_s: float, think: tuple[float, float] | None) -> dict[str, Any]:
        assert self.world is not None
        points: dict[tuple[int, str], LoadPoint] = {}
        for clients in clients_list:
            fns = {k: await self.subjects[k].mixed_turn_factory(clients) for k in keys}
            for rnd in range(rounds):
                order = keys[rnd % len(keys):] + keys[:rnd % len(keys)]
                for k in order:
                    s = self.subjects[k]
                    gc.collect()
                    seed = clients * 100 + rnd
                    if s.is_async:
                        got = await load_async(fns[k], s.batch, sids, clients, slice_s, seed, think)
                    else:
                        got = load_threads(fns[k], s.batch, sids, clients, slice_s, seed, think)
                    points.setdefault((clients, k), LoadPoint()).rounds.append(got)
            for k in keys:
                await self.subjects[k].mixed_done()
            print(f"    {clients} clients: " + ", ".join(
                f"{k} {points[(clients, k)].throughput:,.0f}/s p99 {points[(clients, k)].p99 * 1e3:.2f}ms"
                for k in keys), flush=True)
        await self.world.mem.aflush(timeout=300)
        out = []
        for (clients, k), pt in points.items():
            s = self.subjects[k]
            floor = "floor-sync" if s.api == "sync" and (clients, "floor-sync") in points else "floor-async"
            f_tp, f99 = load_ratio(pt, points[(clients, floor)]) if (clients, floor) in points else (None, None)
            b_tp, b99 = load_ratio(pt, points[(clients, best)]) if best and (clients, best) in points else (None, None)
            out.append({"clients": clients, "key": k, "label": s.label, "api": s.api, "turns": sum(
                r.turns for r in pt.rounds), "throughput": pt.throughput, "p50": pt.p50, "p99": pt.p99,
                "round_throughput": [r.throughput for r in pt.rounds], "floor": floor, "x_floor_tput": f_tp,
                "x_floor_p99": f99, "best": best, "x_best_tput": b_tp, "x_best_p99": b99})
        out.sort(key=lambda r: (r["clients"], keys.index(r["key"])))
        return {"clients": list(clients_list), "points": out, "slice_s": slice_s, "rounds": rounds}

    # -- persistence -----------------------------------------------------------------------------------------
    async def persist(self) -> None:
        """Ours: sustained (writers and flusher together, sessions cached at start), the same into sessions new at
        start (their first write reads PostgreSQL's tail), and parked-then-drained (the flusher alone); the raw
        COPY floor; the PostgreSQL competitors, time-bounded."""
        p = self.plan
        assert self.floor_pg is not None and self.floor_pg.conn is not None
        pg = self.floor_pg.conn
        sustained = await self._ours_persist(pg, "pw", p.persist_messages, warm=True, parked=False)
        fresh = await self._ours_persist(pg, "pn", max(10_000, p.persist_messages // 5), warm=False, parked=False)
        parked = await self._ours_persist(pg, "pp", p.persist_messages, warm=True, parked=True)
        copy = await self._copy(pg, p.persist_messages)
        comps: dict[str, Any] = {}
        if "lc-pg" in self.subjects:
            comps["lc-pg"] = await self._persist_lc(self.subjects["lc-pg"])  # type: ignore[arg-type]
        if "li-pg" in self.subjects:
            comps["li-pg"] = await self._persist_li(self.subjects["li-pg"])  # type: ignore[arg-type]
        best = max(comps, key=lambda k: comps[k]["rate"]) if comps else None
        self.persistence = {"sessions": 1000, "per_call": 10, "concurrency": 32, "ours": sustained,
                            "ours_new_sessions": fresh, "ours_parked": parked, "copy": copy, "competitors": comps,
                            "best": best, "x_floor": sustained["rate"] / copy["rate"],
                            "x_floor_drain": parked["drain_rate"] / copy["rate"],
                            "x_best": sustained["rate"] / comps[best]["rate"] if best else None}

    async def _ours_persist(self, pg: asyncpg.Connection, tag: str, messages: int, *, warm: bool,
                            parked: bool) -> dict[str, Any]:
        """`messages` over 1,000 sessions, 10 per `aadd_messages`, from 32 tasks; rows counted in PostgreSQL.
        `warm`: one message per session first (untimed, flushed), so the sessions are cached. `parked`: the
        flusher waits behind `LOCK TABLE messages IN SHARE MODE` while the writers run, then drains alone."""
        w = self.world
        assert w is not None
        mem = w.mem
        sessions, per_call, concurrency = 1000, 10, 32
        sids = [f"{tag}-{j}" for j in range(sessions)]
        if warm:
            for sid in sids:
                await mem.aadd_messages(sid, [Message("human", "warm-up")])
            await mem.aflush(timeout=300)
        calls_per_session = max(1, messages // sessions // per_call)
        calls = [[Message(w.role(k), w.content(c + k)) for k in range(per_call)]
                 for c in range(sessions * calls_per_session)]
        total = len(calls) * per_call

        async def worker(t: int) -> None:
            mine = sids[t::concurrency]
            for c in range(calls_per_session):
                for j, sid in enumerate(mine):
                    await mem.aadd_messages(sid, calls[(c * sessions + t + j * concurrency) % len(calls)])

        gc.collect()
        out: dict[str, Any] = {"messages": total, "warm": warm}
        lock = await asyncpg.connect(PG_URL, server_settings={"search_path": self.ns}) if parked else None
        try:
            tr = None
            if lock is not None:
                tr = lock.transaction()
                await tr.start()
                await lock.execute("LOCK TABLE messages IN SHARE MODE")
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(t) for t in range(concurrency)))
            t_enq = time.perf_counter() - t0
            out.update(enqueue_s=t_enq, enqueue_rate=total / t_enq)
            if tr is not None:
                out["backlog"] = (await mem.aget_cache_stats()).backlog
                await tr.commit()
            t1 = time.perf_counter()
            await mem.aflush(timeout=300)
            t2 = time.perf_counter()
        finally:
            if lock is not None:
                await lock.close()
        if parked:
            out.update(drain_s=t2 - t1, drain_rate=total / (t2 - t1))
        else:
            out.update(total_s=t2 - t0, rate=total / (t2 - t0))
        stored = int(await pg.fetchval("SELECT count(*) FROM messages WHERE session_id LIKE $1", f"{tag}-%"))
        expected = total + (sessions if warm else 0)
        if stored != expected:
            raise RuntimeError(f"persistence ({tag}): {stored} rows in PostgreSQL, expected {expected}")
        out["rows_in_pg"] = stored
        return out

    async def _copy(self, pg: asyncpg.Connection, n: int) -> dict[str, Any]:
        """The floor: asyncpg COPY of as many rows into a table shaped like `messages` (same indexes)."""
        w = self.world
        assert w is not None
        await pg.execute("DROP TABLE IF EXISTS raw_copy; CREATE TABLE raw_copy (LIKE messages INCLUDING ALL)")
        now = dt.datetime.now(dt.UTC)
        base = time.time_ns() // 1000
        records = []
        for k in range(n):
            m = Message(w.role(k), w.content(k))
            body = json.dumps({"i": m.id, "r": m.role, "c": m.content, "t": now.timestamp()}, separators=(",", ":"))
            records.append((f"copy-{k % 1000}", base + k, m.id, m.role, body, now))
        t0 = time.perf_counter()
        await pg.copy_records_to_table("raw_copy", records=records,
                                       columns=["session_id", "seq", "msg_id", "role", "body", "created_at"])
        seconds = time.perf_counter() - t0
        await pg.execute("DROP TABLE raw_copy")
        return {"messages": n, "seconds": seconds, "rate": n / seconds}

    async def _persist_lc(self, s: LCPostgres) -> dict[str, Any]:
        """langchain-postgres: `aadd_messages` of 10 messages (executemany + commit) from 16 connections."""
        from langchain_postgres import PostgresChatMessageHistory
        p = self.plan
        conns = [await s._connect() for _ in range(16)]
        names = [f"persist-lc-{j}" for j in range(1000)]
        done = [0]

        async def worker(t: int) -> None:
            conn = conns[t]
            c = 0
            while time.perf_counter() < deadline:
                name = names[(t + c * len(conns)) % len(names)]
                h = PostgresChatMessageHistory(s.table, s.sid(name), async_connection=conn)
                await h.aadd_messages(s.batch(c, 10))
                done[0] += 10
                c += 1

        try:
            t0 = time.perf_counter()
            deadline = t0 + p.persist_seconds
            await asyncio.gather(*(worker(t) for t in range(len(conns))))
            secs = time.perf_counter() - t0
        finally:
            for c in conns:
                await c.close()
        stored = await s.count(names)
        if stored != done[0]:
            raise RuntimeError(f"langchain-postgres persistence: {stored} rows, expected {done[0]}")
        return {"messages": done[0], "seconds": secs, "rate": done[0] / secs, "connections": len(conns),
                "per_call": 10}

    async def _persist_li(self, s: LIPostgres) -> dict[str, Any]:
        """llama-index PostgresChatStore: `async_add_message` (one per call: it has no bulk append), 16 tasks."""
        p = self.plan
        names = [f"persist-li-{j}" for j in range(1000)]
        done = [0]

        async def worker(t: int) -> None:
            c = 0
            while time.perf_counter() < deadline:
                name = names[(t + c * 16) % len(names)]
                await s.store_.async_add_message(name, s.batch(c, 1)[0])
                done[0] += 1
                c += 1

        t0 = time.perf_counter()
        deadline = t0 + p.persist_seconds
        await asyncio.gather(*(worker(t) for t in range(16)))
        secs = time.perf_counter() - t0
        stored = await s.count(names)
        if stored != done[0]:
            raise RuntimeError(f"llama-index PostgresChatStore persistence: {stored} messages, expected {done[0]}")
        return {"messages": done[0], "seconds": secs, "rate": done[0] / secs, "tasks": 16, "per_call": 1}

    # -- targets ---------------------------------------------------------------------------------------------
    def checks(self) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        by = {(r["measure"], r["shape"], r["key"]): r for r in self.rows}
        shapes = self.plan.shapes
        for measure in ("read", "add"):
            for key in ("ours-async", "ours-sync"):
                vals = [(s, by[(measure, s, key)]["x_floor_p50"]) for s in shapes if (measure, s, key) in by]
                if not vals:
                    continue
                worst = max(v for _, v in vals)
                api = "async" if key == "ours-async" else "sync"
                out.append((f"hot {report.MEASURES[measure]} ({api}) within {TARGET_HOT}x of raw Redis at every "
                            f"session length: " + ", ".join(f"{s:,}: {v:.2f}x" for s, v in vals),
                            worst <= TARGET_HOT))
                # "Flat, not growing with history": the ratio at any length against the ratio at the shortest
                # length whose session fills the window. A shorter session is a smaller read (10 elements, not
                # 30), another quantity than history. (The ratio may fall: the floor decodes each element on
                # its own, ours the window in one call.)
                full = [(s, v) for s, v in vals if s >= WINDOW] or vals
                growth = max(v for _, v in full) / full[0][1]
                out.append((f"hot {report.MEASURES[measure]} ({api}) not growing with session length: floor ratio "
                            f"at most {growth:.2f}x its value at {full[0][0]:,} msgs (the first length that fills "
                            f"the window of {WINDOW}), up to {full[-1][0]:,} msgs (target <= {TARGET_FLAT}x)",
                            growth <= TARGET_FLAT))
        for key in ("ours-async", "ours-sync"):
            for shape in shapes:
                r = by.get(("cold", shape, key))
                if r is None:
                    continue
                best = r["best"]
                label = self.subjects[best].label if best in self.subjects else "-"
                out.append((f"cold read ({r['api']}) at {shape:,} msgs: p50 {r['x_floor_p50']:.2f}x the raw asyncpg "
                            f"query (target <= {TARGET_COLD_FLOOR:g}x), {r['x_best_p50']:.2f}x the fastest peer, "
                            f"{label} (target <= 1x); {r['x_miss_floor_p50']:.2f}x a Redis miss + the same query",
                            r["x_floor_p50"] <= TARGET_COLD_FLOOR and not r["x_best_p50"] > 1.0))
        ref = FULL_HISTORY_SHAPE if FULL_HISTORY_SHAPE in shapes else max(shapes)
        for comp in COMPETITORS:
            if comp not in self.subjects or not self.subjects[comp].full_history:
                continue
            parts, ok = [], True
            for key in ("ours-async", "ours-sync"):
                r_c, r_o = by.get(("read", ref, comp)), by.get(("read", ref, key))
                if not r_c or not r_o:
                    continue
                per = [c / o for c, o in zip(r_c["round_p50"], r_o["round_p50"], strict=True) if o > 0]
                x = sorted(per)[len(per) // 2] if per else float("nan")
                parts.append(f"{key.split('-')[1]} {x:.1f}x")
                ok = ok and x >= TARGET_VS_FULL
            out.append((f"context read at {ref:,} msgs vs {self.subjects[comp].label}: ours faster by "
                        + ", ".join(parts) + f" (target >= {TARGET_VS_FULL:.0f}x)", ok))
        for measure in ("read", "add", "turn"):
            vals = []
            for s in shapes:
                a, y = by.get((measure, s, "ours-async")), by.get((measure, s, "ours-sync"))
                if a and y:
                    per = [b / c for b, c in zip(y["round_p50"], a["round_p50"], strict=True) if c > 0]
                    vals.append((s, sorted(per)[len(per) // 2]))
            if vals:
                out.append((f"sync {report.MEASURES[measure]} within {TARGET_SYNC}x of async: "
                            + ", ".join(f"{s:,}: {v:.2f}x" for s, v in vals), max(v for _, v in vals) <= TARGET_SYNC))
        if self.persistence:
            rate = self.persistence["ours"]["rate"]
            out.append((f"sustained persistence into PostgreSQL (writers + flusher): {rate:,.0f} msgs/s "
                        f"(target >= {TARGET_PERSIST:,.0f})", rate >= TARGET_PERSIST))
            drain = self.persistence["ours_parked"]["drain_rate"]
            out.append((f"persistence, flusher alone (drain of a parked backlog): {drain:,.0f} msgs/s "
                        f"(target >= {TARGET_PERSIST:,.0f})", drain >= TARGET_PERSIST))
        if self.paced:
            top = 64 if 64 in self.paced["clients"] else max(self.paced["clients"])
            for pt in self.paced["points"]:
                if pt["clients"] == top and pt["key"] in ("ours-async", "ours-sync"):
                    floor = next((q for q in self.paced["points"] if q["clients"] == top and q["key"] == pt["floor"]),
                                 None)
                    extra = f"; raw floor p99 {floor['p99'] * 1e3:.2f} ms" if floor else ""
                    out.append((f"chat turn p99 under {top} concurrent conversations ({pt['api']}, {THINK[0]}-"
                                f"{THINK[1]} s for the model between turns): {pt['p99'] * 1e3:.2f} ms at "
                                f"{pt['throughput']:,.0f} turns/s (target < {TARGET_TURN_P99 * 1e3:.0f} ms{extra})",
                                pt["p99"] < TARGET_TURN_P99))
        return out

    # -- output ----------------------------------------------------------------------------------------------
    def subjects_info(self) -> dict[str, dict[str, Any]]:
        info = {}
        for s in [*self.subjects.values(), *(f for f in (self.floor_pg, self.floor_miss) if f is not None)]:
            note = s.cold_note or ""
            cold_short = ("-" if s.cold_note is None else "n/a (Redis only)" if "Redis is its only" in note
                          else "n/a (in-process)" if "in-process" in note else "as ours" if note == "see ours"
                          else "n/a")
            info[s.key] = {"label": s.label, "kind": s.kind, "api": s.api, "store": s.store, "view": s.view,
                           "full_history": s.full_history, "cold_note": s.cold_note, "cold_short": cold_short,
                           "package": s.package}
        return info


def _timed(measure: str, s: Subject, sids: list[str], mem: HybridMemory) -> Timed:
    """The timed call of `measure` for subject `s` on sessions `sids` (round robin by index)."""
    n = len(sids)
    if measure == "read":
        return Timed(lambda i: s.read(sids[i % n]), s.is_async)
    if measure == "cold":
        # Every subject's read follows the same untimed step, dropping ours' cached window of the session, so
        # that each starts from the same state of the machine: a raw query right after the previous one finds
        # its PostgreSQL backend still running, a read after any other work finds it asleep (on this VM about
        # 0.1 ms more), and a cold read never comes right after another read of the same connection.
        return Timed(lambda i, _: s.read(sids[i % n]), s.is_async, lambda i: mem.ainvalidate_session(sids[i % n]),
                     prepare_async=True)
    size = 1 if measure == "add" else 2
    fn = s.add if measure == "add" else s.turn
    return Timed(lambda i, b: fn(sids[i % n], b), s.is_async, lambda i: s.batch(i, size))


def versions(keys: list[str]) -> dict[str, str]:
    pkgs = ["langchain-hybrid-memory", "redis", "asyncpg", "langchain-core", "langchain-community",
            "langchain-postgres", "psycopg", "llama-index-core", "llama-index-storage-chat-store-redis",
            "llama-index-storage-chat-store-postgres", "SQLAlchemy", "aiosqlite", "tiktoken"]
    out = {}
    for name in pkgs:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


async def server_versions() -> tuple[str, str]:
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        rv = str((await r.info("server")).get("redis_version", "?"))
    finally:
        await r.aclose()
    conn = await asyncpg.connect(PG_URL)
    try:
        pv = str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()
    return rv, pv


async def run(args: argparse.Namespace, plan: Plan, keys: list[str], ns: str) -> dict[str, Any]:
    bench = Bench(plan, ns, keys, args.mixed_all)
    try:
        await bench.start()
        print("  prefilling ...", flush=True)
        await bench.prefill()
        for shape in plan.shapes:
            await bench.usage(shape)
            for measure in ("read", "cold", "add", "turn"):
                t0 = time.perf_counter()
                await bench.measure(measure, shape)
                assert bench.world is not None
                await bench.world.mem.aflush(timeout=300)
                print(f"  {report.MEASURES[measure]:<12} {shape:>6,} msgs: {time.perf_counter() - t0:5.1f}s",
                      flush=True)
        if not args.no_mixed:
            print("  mixed load ...", flush=True)
            await bench.mixed_load()
        if not args.no_persist:
            print("  persistence ...", flush=True)
            await bench.persist()
        checks = bench.checks()
        return {"rows": bench.rows, "redis_usage": bench.redis_usage, "mixed": bench.mixed, "paced": bench.paced,
                "persistence": bench.persistence, "prefill_s": bench.prefill_s, "subjects": bench.subjects_info(),
                "order": [*keys, "floor-pg", "floor-miss-pg"], "checks": [{"check": c, "pass": ok} for c, ok in checks]}
    finally:
        await bench.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run (CI smoke, ~1 minute): 10 and 1,000 msgs")
    ap.add_argument("--json", metavar="PATH",
                    help="write the results as JSON (default: <out-dir>/compare[-quick].json)")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"),
                    help="where compare[-quick].{json,md,png} go")
    ap.add_argument("--subjects", help="comma-separated subset of: " + ", ".join(ALL))
    ap.add_argument("--mixed-all", action="store_true", help="mixed load for every competitor, not just the best")
    ap.add_argument("--no-mixed", action="store_true", help="skip the mixed load")
    ap.add_argument("--no-persist", action="store_true", help="skip the persistence run")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    keys = list(ALL) if not args.subjects else [k.strip() for k in args.subjects.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ALL]
    if unknown:
        ap.error(f"unknown subjects {unknown}; choose from {list(ALL)}")
    for must in ("ours-async", "floor-async"):
        if must not in keys:
            keys.insert(0, must)
    keys = [k for k in ALL if k in keys]  # a stable order
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    mode = "quick" if args.quick else "full"
    command = "python benchmarks/bench_compare.py" + (" --quick" if args.quick else "")
    if args.subjects or args.mixed_all or args.no_mixed or args.no_persist:
        command = "python " + " ".join([str(Path(sys.argv[0]).as_posix()), *(argv or sys.argv[1:])])
    ns = new_namespace("cmp")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "compare" if mode == "full" else "compare-quick"
    print(f"hybrid-memory comparison benchmark ({mode}), namespace {ns}, window {WINDOW}, "
          f"{plan.content_chars} chars per message, shapes {', '.join(f'{s:,}' for s in plan.shapes)}, "
          f"subjects: {', '.join(keys)}", flush=True)
    t0 = time.perf_counter()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        rv, pv = loop.run_until_complete(server_versions())
        data = loop.run_until_complete(run(args, plan, keys, ns))
    finally:
        try:
            loop.run_until_complete(drop_namespace(ns))
        finally:
            loop.close()
    elapsed = time.perf_counter() - t0
    data.update({"mode": mode, "namespace": ns, "window": WINDOW, "shapes": list(plan.shapes), "plan": asdict(plan),
                 "wall_s": elapsed, "command": command,
                 "env": {"date": dt.date.today().isoformat(), "python": platform.python_version(),
                         "platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_model(), "redis": rv,
                         "postgres": pv,
                         "packages": versions(keys)}})
    print()
    print(report.latency_table(data["rows"]))
    if data["redis_usage"]:
        print("\nRedis memory (MEMORY USAGE ... SAMPLES 0, after prefill)")
        print(report.redis_table(data["redis_usage"]))
        for u in data["redis_usage"]:
            if "window_bytes" in u:
                n = max(u["sessions"], 1)
                print(f"  ours at {u['shape']:,} msgs, per session: window list {u['window_bytes'] // n:,} B, "
                      f"meta hash {u['meta_bytes'] // n:,} B, idempotency id set {u['ids_bytes'] // n:,} B")
    if data["mixed"]:
        m = data["mixed"]
        print(f"\nmixed load: chat turns on random sessions out of {m['sessions']:,} ({m['prefill']} msgs each at "
              f"start), {m['rounds']} rounds x {m['slice_s']}s per subject and client count; best competitor "
              f"(chat turn p50 at {min(plan.shapes)} msgs): {m['best_competitor']}")
        print(report.mixed_table(m["points"]))
    if data.get("paced"):
        m = data["paced"]
        print(f"\nconversations: the same turns, each client waiting {m['think_s'][0]}-{m['think_s'][1]} s for the "
              f"model between two turns, {m['rounds']} rounds x {m['slice_s']}s per subject and client count")
        print(report.mixed_table(m["points"]))
    ps = data["persistence"]
    if ps:
        o, c, f, k = ps["ours"], ps["copy"], ps["ours_new_sessions"], ps["ours_parked"]
        print(f"\npersistence into PostgreSQL ({ps['sessions']} sessions, {ps['per_call']} msgs per aadd_messages, "
              f"{ps['concurrency']} tasks; rows counted in PostgreSQL after flush)")
        print(f"  ours, sustained (writers + flusher, sessions cached): {o['messages']:,} msgs enqueued in "
              f"{o['enqueue_s']:.2f}s, all in PostgreSQL after {o['total_s']:.2f}s -> {o['rate']:,.0f} msgs/s "
              f"({report.fx(ps['x_floor'])} COPY, {report.fx(ps['x_best'])} best competitor)")
        print(f"  ours, same into sessions new at start: {f['messages']:,} msgs in {f['total_s']:.2f}s -> "
              f"{f['rate']:,.0f} msgs/s (enqueue {f['enqueue_rate']:,.0f}/s)")
        print(f"  ours, flusher parked then drained alone: enqueue {k['enqueue_rate']:,.0f} msgs/s; drain "
              f"{k['messages']:,} msgs in {k['drain_s']:.2f}s -> {k['drain_rate']:,.0f} msgs/s "
              f"({report.fx(ps['x_floor_drain'])} COPY)")
        print(f"  raw asyncpg COPY (floor), same rows and indexes: {c['messages']:,} rows in {c['seconds']:.2f}s -> "
              f"{c['rate']:,.0f} rows/s")
        for key, v in ps["competitors"].items():
            print(f"  {data['subjects'][key]['label']}: {v['messages']:,} msgs in {v['seconds']:.2f}s -> "
                  f"{v['rate']:,.0f} msgs/s ({v['per_call']} per call)")
    print("\nnotes")
    for info in data["subjects"].values():
        if info["cold_note"] not in (None, "n/a", "see ours", "see raw asyncpg"):
            print(f"  {info['label']}: cold read {info['cold_note']}")
    print("  cold read: every subject's timed read follows the same untimed step (ours' cached window of the "
          "session dropped)")
    print(f"  context read = what each hands the model: ours get_context (summary + window of {WINDOW}); "
          "llama-index Memory.aget() is token-bounded; the other competitors return the whole history")
    print("\ntargets")
    for c in data["checks"]:
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['check']}")
    md = report.markdown(data, command)
    (out_dir / f"{stem}.md").write_text(md)
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=1, default=str))
    if not args.no_plot:
        try:
            report.plot(data, str(out_dir / f"{stem}.png"))
        except ImportError as exc:
            print(f"warning: no plot ({exc})", file=sys.stderr)
    print("\nREADME table (" + str(out_dir / f"{stem}.md") + ")\n")
    print(md)
    print(f"wall time {elapsed:.1f}s; JSON {json_path}" + ("" if args.no_plot else f"; plot {out_dir / stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
