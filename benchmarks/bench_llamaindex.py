"""LlamaIndex chat stores on one workload, in one process: ours vs llama-index's RedisChatStore and
PostgresChatStore.

    python benchmarks/bench_llamaindex.py [--sizes 30 300 3000] [--rounds 5] [--per-round 8] [--json PATH]

For each conversation size N, every store holds a conversation of N messages (about 200 characters each) and
we time, through the sync `BaseChatStore` API:

- `add`: `add_message` of one more message (then, untimed, `delete_last_message`, so N stays N, and for ours a
  window read that caches the window again, since our deletes drop it);
- `get`: `get_messages`, the whole conversation (what `ChatMemoryBuffer` reads every turn).

Rounds rotate which store goes first, so machine noise hits them alike; the ratio column is the median of
per-round p50 ratios. Needs llama-index-storage-chat-store-redis and -postgres, and the servers
(DATABASE_URL / REDIS_URL, default 127.0.0.1). Ours runs with its defaults (hybrid, write-behind: an add is
acknowledged once Redis has it) and in write-through mode (acknowledged once PostgreSQL committed, like
PostgresChatStore). Everything it creates lives in a private schema / key prefix, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis
from llama_index.core.llms import ChatMessage
from llama_index.core.storage.chat_store.base import BaseChatStore

from langchain_hybrid_memory import HybridConfig, HybridMemory
from llamaindex_adapter import HybridChatStore

PG_URL = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
WORDS = ("the", "memory", "session", "cache", "window", "redis", "postgres", "message", "assistant", "user",
         "token", "latency", "answer", "question", "context", "summary", "tool", "call", "é", "日本")


def text(rng: random.Random, size: int = 200) -> str:
    out: list[str] = []
    while sum(len(w) + 1 for w in out) < size:
        out.append(rng.choice(WORDS))
    return " ".join(out)


def conversation(n: int, seed: int) -> list[ChatMessage]:
    rng = random.Random(seed)
    return [ChatMessage(role="user" if i % 2 == 0 else "assistant", content=text(rng)) for i in range(n)]


@dataclass
class Series:
    samples: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


# -- the stores -----------------------------------------------------------------------------------------------
def sqlalchemy_urls(schema: str) -> tuple[str, str]:
    """psycopg / asyncpg URLs for PG_URL whose search_path is `schema` (PostgresChatStore's deletes name the
    table without its schema)."""
    parts = urlsplit(PG_URL)
    netloc, path = parts.netloc, parts.path
    options = f"?options=-csearch_path%3D{schema}"
    return f"postgresql+psycopg://{netloc}{path}{options}", f"postgresql+asyncpg://{netloc}{path}"


def make_stores(ns: str) -> tuple[dict[str, BaseChatStore], list[Callable[[], None]]]:
    from llama_index.storage.chat_store.postgres import PostgresChatStore
    from llama_index.storage.chat_store.redis import RedisChatStore

    closers: list[Callable[[], None]] = []
    stores: dict[str, BaseChatStore] = {}
    for name, async_writes in (("ours", True), ("ours write-through", False)):
        memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=ns,
                                           async_writes=async_writes))
        stores[name] = HybridChatStore(memory=memory)
        closers.append(memory.close)
    stores["RedisChatStore"] = RedisChatStore(redis_url=REDIS_URL)
    sync_url, async_url = sqlalchemy_urls(f"{ns}_pg")
    stores["PostgresChatStore"] = PostgresChatStore.from_params(
        connection_string=sync_url, async_connection_string=async_url, table_name="chatstore",
        schema_name=f"{ns}_pg")
    return stores, closers


async def drop(ns: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        for schema in (ns, f"{ns}_pg"):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{ns}:*", count=1000)) + list(r.scan_iter(match=f"li-{ns}-*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
    finally:
        r.close()


# -- the run --------------------------------------------------------------------------------------------------
def run(sizes: list[int], rounds: int, per_round: int) -> list[dict[str, Any]]:
    ns = f"bench_li_{uuid.uuid4().hex[:10]}"
    stores, closers = make_stores(ns)
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            key = f"li-{ns}-{n}"  # RedisChatStore uses keys as they are: keep them under a private prefix
            base = conversation(n, seed=n)
            for store in stores.values():
                store.set_messages(key, base)
            extra = conversation(rounds * per_round + 8, seed=-n)

            def add(store: BaseChatStore, i: int, key: str = key, extra: list[ChatMessage] = extra) -> None:
                store.add_message(key, extra[i % len(extra)])

            def undo(store: BaseChatStore, _i: int, key: str = key) -> None:
                store.delete_last_message(key)
                if isinstance(store, HybridChatStore):
                    # Our deletes drop the cached window; read it back, as the next turn of a chat would, so
                    # the next timed add meets the steady state (a cached window) and not a cold cache.
                    store.memory.get_recent_messages(key)

            def get(store: BaseChatStore, _i: int, key: str = key, n: int = n) -> None:
                got = store.get_messages(key)
                assert len(got) == n, (type(store).__name__, len(got), n)

            for op_name, op, after in (("add", add, undo), ("get", get, None)):
                series = {name: Series() for name in stores}
                for store in stores.values():  # warm-up: connections, prepared statements, caches
                    for i in range(3):
                        op(store, i)
                        if after is not None:
                            after(store, i)
                names = list(stores)
                for r in range(rounds):
                    for name in names[r % len(names):] + names[:r % len(names)]:
                        store, got = stores[name], []
                        for j in range(per_round):
                            t0 = time.perf_counter()
                            op(store, r * per_round + j)
                            got.append(time.perf_counter() - t0)
                            if after is not None:
                                after(store, j)
                        series[name].samples += got
                        series[name].round_p50.append(pct(got, 0.5))
                for name, s in series.items():
                    row: dict[str, Any] = {"op": op_name, "messages": n, "store": name,
                                           "p50_ms": pct(s.samples, 0.5) * 1e3, "p99_ms": pct(s.samples, 0.99) * 1e3}
                    for base_name in ("RedisChatStore", "PostgresChatStore"):
                        ratios = [a / b for a, b in zip(s.round_p50, series[base_name].round_p50, strict=True)
                                  if b > 0]
                        row[f"vs_{base_name}"] = statistics.median(ratios) if ratios else float("nan")
                    rows.append(row)
    finally:
        for close in closers:
            close()
        asyncio.run(drop(ns))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 300, 3000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    rows = run(args.sizes, args.rounds, args.per_round)
    head = f"{'op':<4} {'messages':>8}  {'store':<20} {'p50 ms':>8} {'p99 ms':>8}  {'vs Redis':>9} {'vs Postgres':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['op']:<4} {r['messages']:>8,}  {r['store']:<20} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}  "
              f"{r['vs_RedisChatStore']:>8.2f}x {r['vs_PostgresChatStore']:>10.2f}x")
    print(f"({args.rounds} rounds x {args.per_round} calls per store and cell; sync API; ratio = median of "
          "per-round p50 ratios, < 1 means ours is faster)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
