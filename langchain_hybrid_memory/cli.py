"""`hybrid-memory`: the command-line tool (also `python -m langchain_hybrid_memory`)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence

from .config import HybridConfig
from .errors import HybridMemoryError
from .memory import HybridMemory
from .messages import Message

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _config(args: argparse.Namespace, **overrides: object) -> HybridConfig:
    env: dict[str, object] = {}
    if not os.environ.get("DATABASE_URL"):
        env["database_url"] = DEFAULT_PG
    if getattr(args, "namespace", None):
        env["namespace"] = args.namespace
    env.update(overrides)
    return HybridConfig.from_env(**env)


def _ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e3
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1e3
    return f"p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"


def cmd_demo(args: argparse.Namespace) -> int:
    """A scripted conversation on the hybrid store, printing what happened."""
    config = _config(args, namespace=args.namespace or "hybrid_memory_demo")
    print(f"hybrid-memory demo  ({config.describe()['database_url']}  +  {config.describe()['redis_url']})")
    session = f"demo-{uuid.uuid4().hex[:8]}"
    with HybridMemory(config) as memory:
        writes: list[float] = []
        hot: list[float] = []
        for turn in range(args.turns):
            t0 = time.perf_counter()
            memory.add_messages(session, [Message("human", f"question {turn}: what did we say before?")])
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            context = memory.get_recent_messages(session)
            hot.append(time.perf_counter() - t0)
            memory.add_messages(session, [Message("ai", f"answer {turn}: I remember {len(context)} messages")])
        memory.flush()
        cold: list[float] = []
        for _ in range(5):
            memory.invalidate_session(session)
            t0 = time.perf_counter()
            memory.get_recent_messages(session)
            cold.append(time.perf_counter() - t0)
        persisted = memory.get_messages(session)
        stats = memory.get_cache_stats()
        print(f"  turns                 {args.turns} ({2 * args.turns} messages)")
        print(f"  write (ack'd by Redis) {_ms(writes)}")
        print(f"  hot read (window)      {_ms(hot)}")
        print(f"  cold read (PostgreSQL) {_ms(cold)}")
        print(f"  persisted in PostgreSQL {len(persisted)} messages")
        print(f"  cache hit rate         {stats.hit_rate:.1f}%   ({stats.hits} hits, {stats.misses} misses)")
        print(f"  Redis memory           {stats.redis_memory_mb or 0:.2f} MB, cached sessions {stats.cached_sessions}")
        memory.clear_session(session)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    with HybridMemory(_config(args, auto_migrate=False)) as memory:
        applied = memory.migrate()
    print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with HybridMemory(_config(args)) as memory:
        stats = memory.get_cache_stats().to_dict()
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:18} {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hybrid-memory", description=__doc__)
    parser.add_argument("--namespace", help="Redis key prefix and PostgreSQL schema (default hybrid_memory)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a scripted conversation and print what happened")
    demo.add_argument("--turns", type=int, default=25)
    sub.add_parser("migrate", help="apply schema migrations")
    stats = sub.add_parser("stats", help="print the cache stats")
    stats.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    handler = {"demo": cmd_demo, "migrate": cmd_migrate, "stats": cmd_stats}[args.command]
    try:
        return handler(args)
    except HybridMemoryError as exc:
        print(f"hybrid-memory: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
