"""Load test: many sessions, many messages, several writer processes, mixed reads and writes.

    python benchmarks/load_test.py [--sessions 10000] [--messages 1000000] [--procs 4] [--quick]

Each process runs chat turns on random sessions of its share: read the context (what a prompt carries), then
add a user and an assistant message. Prints throughput, latency percentiles, hit rate, Redis memory per cached
session (against the original design's sizing guesses) and PostgreSQL size. Uses DATABASE_URL / REDIS_URL (default
127.0.0.1) and a namespace of its own, dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import time
import uuid

import asyncpg
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

PG = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RD = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TEXT = "This is a fairly ordinary chat message of about the length people type, with some detail. " * 2


def worker(ns: str, proc: int, procs: int, sessions: int, turns: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    memory = HybridMemory(HybridConfig(database_url=PG, redis_url=RD, namespace=ns, max_session_messages=30))
    rng = random.Random(proc)
    mine = [f"load-{s}" for s in range(proc, sessions, procs)]
    reads: list[float] = []
    writes: list[float] = []
    t_start = time.perf_counter()
    for _ in range(turns):
        sid = rng.choice(mine)
        t0 = time.perf_counter()
        memory.get_context(sid)
        t1 = time.perf_counter()
        memory.add_messages(sid, [Message("human", TEXT), Message("ai", TEXT)])
        t2 = time.perf_counter()
        reads.append(t1 - t0)
        writes.append(t2 - t1)
    elapsed = time.perf_counter() - t_start
    memory.flush()
    stats = memory.get_cache_stats()
    memory.close()
    out.put({"reads": reads[::5], "writes": writes[::5], "elapsed": elapsed, "turns": turns,
             "hits": stats.hits, "misses": stats.misses})


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3


async def pg_size(ns: str) -> tuple[int, int]:
    conn = await asyncpg.connect(PG)
    try:
        rows = await conn.fetchval(f'SELECT count(*) FROM "{ns}".messages')
        size = await conn.fetchval("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                                   "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'", ns)
        return int(rows), int(size or 0)
    finally:
        await conn.close()


async def drop(ns: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{ns}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1,000 sessions, 40,000 messages")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.messages = 1000, 40_000
    ns = f"load_{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(RD)
    mem0 = int(r.info("memory")["used_memory"])
    turns = args.messages // 2 // args.procs
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    # Migrate once before the processes start.
    HybridMemory(HybridConfig(database_url=PG, redis_url=RD, namespace=ns)).close()
    t0 = time.perf_counter()
    procs = [mp.Process(target=worker, args=(ns, p, args.procs, args.sessions, turns, out))
             for p in range(args.procs)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    mem1 = int(r.info("memory")["used_memory"])
    rows, size = asyncio.run(pg_size(ns))
    reads = [x for res in results for x in res["reads"]]
    writes = [x for res in results for x in res["writes"]]
    hits = sum(res["hits"] for res in results)
    misses = sum(res["misses"] for res in results)
    total_turns = sum(res["turns"] for res in results)
    cached = args.sessions
    per_session_kb = (mem1 - mem0) / cached / 1024
    report = {
        "sessions": args.sessions, "messages": rows, "processes": args.procs, "wall_s": wall,
        "turns_per_s": total_turns / wall, "messages_per_s": 2 * total_turns / wall,
        "context_read_p50_ms": pct(reads, 0.5), "context_read_p99_ms": pct(reads, 0.99),
        "add_p50_ms": pct(writes, 0.5), "add_p99_ms": pct(writes, 0.99),
        "hit_rate": 100 * hits / max(1, hits + misses), "redis_mb": (mem1 - mem0) / 2**20,
        "redis_kb_per_session": per_session_kb, "pg_mb": size / 2**20, "pg_bytes_per_message": size / max(rows, 1),
    }
    print(f"load test: {args.sessions:,} sessions, {rows:,} messages in PostgreSQL, {args.procs} processes, "
          f"{wall:.1f} s")
    print(f"  throughput        {report['turns_per_s']:,.0f} turns/s ({report['messages_per_s']:,.0f} messages/s)")
    print(f"  context read      p50 {report['context_read_p50_ms']:.3f} ms  p99 {report['context_read_p99_ms']:.3f} ms")
    print(f"  add (2 messages)  p50 {report['add_p50_ms']:.3f} ms  p99 {report['add_p99_ms']:.3f} ms")
    print(f"  hit rate          {report['hit_rate']:.1f}%")
    print(f"  Redis             {report['redis_mb']:.1f} MB for {cached:,} cached windows "
          f"({per_session_kb:.1f} KB per session of 30 messages of ~{len(TEXT)} chars)")
    for users, conc, seed in ((100, 50, "50 MB"), (1_000, 500, "500 MB"), (10_000, 5_000, "5 GB"),
                              (100_000, 50_000, "50 GB")):
        print(f"    sizing: {users:>7,} users / {conc:>6,} concurrent sessions -> "
              f"{conc * per_session_kb / 1024:,.1f} MB measured (the original design guessed {seed})")
    print(f"  PostgreSQL        {report['pg_mb']:.1f} MB ({report['pg_bytes_per_message']:.0f} bytes per message "
          "incl. indexes)")
    print(f"  median across processes: {statistics.median(res['elapsed'] for res in results):.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    if not args.keep:
        asyncio.run(drop(ns))
        keys = list(r.scan_iter(match=f"{ns}:*", count=5000))  # a benchmark may SCAN; the library never does
        for i in range(0, len(keys), 1000):
            r.delete(*keys[i:i + 1000])


if __name__ == "__main__":
    main()
