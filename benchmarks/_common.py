"""Shared helpers for the benchmarks: servers, private namespaces, interleaved timing, percentiles, tables."""

from __future__ import annotations

import asyncio
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis

PG_URL = (os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
          or "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

SyncOp = Callable[[int], Any]
AsyncOp = Callable[[int], Awaitable[Any]]


def new_namespace(prefix: str = "bench") -> str:
    """A private namespace: it names the PostgreSQL schema and the Redis key prefix."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def drop_namespace(namespace: str, attempts: int = 3) -> None:
    """Drop the namespace's schema and every Redis key under `<namespace>:` (retried; warns if it fails)."""
    for attempt in range(attempts):
        try:
            conn = await asyncpg.connect(PG_URL, timeout=10)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
            finally:
                await conn.close()
            break
        except (OSError, asyncpg.PostgresError) as exc:
            if attempt == attempts - 1:
                print(f"warning: could not drop schema {namespace}: {exc!r}", file=sys.stderr)
            else:
                await asyncio.sleep(1.0)
    try:
        r = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                r.delete(*batch)
                batch.clear()
        if batch:
            r.delete(*batch)
        r.close()
    except redis.RedisError as exc:
        print(f"warning: could not delete Redis keys {namespace}:*: {exc!r}", file=sys.stderr)


def text(rng: random.Random, size: int) -> str:
    """Plausible chat text of about `size` characters."""
    words = ("the", "memory", "session", "cache", "window", "redis", "postgres", "message", "assistant",
             "user", "token", "latency", "answer", "question", "context", "summary", "tool", "call", "é", "日本")
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(words)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def pct(samples: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of `samples`; 0.0 when empty."""
    if not samples:
        return 0.0
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


@dataclass
class Series:
    """Latency samples (seconds) of one operation, plus the p50 of each round."""

    samples: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return pct(self.samples, 0.50)

    @property
    def p99(self) -> float:
        return pct(self.samples, 0.99)


def round_ratios(subject: Series, baseline: Series) -> list[float]:
    """subject / baseline p50 in each round (rounds where the baseline has a time)."""
    return [s / b for s, b in zip(subject.round_p50, baseline.round_p50, strict=True) if b > 0]


def ratio(subject: Series, baseline: Series) -> tuple[float, float]:
    """(p50 ratio, p99 ratio). The p50 ratio is the median of per-round ratios: robust to machine drift,
    since subject and baseline of one round ran back to back."""
    per_round = round_ratios(subject, baseline)
    r50 = statistics.median(per_round) if per_round else float("nan")
    r99 = subject.p99 / baseline.p99 if baseline.p99 > 0 else float("nan")
    return r50, r99


@dataclass
class Op:
    """One timed operation; `prepare(i)` runs untimed before `run(i)`."""

    run: Callable[[int], Any]
    prepare: Callable[[int], Any] | None = None


def interleave_sync(ops: dict[str, Op], rounds: int, per_round: int, warmup: int = 20) -> dict[str, Series]:
    """Time each op `per_round` times per round, rotating which op goes first, so that noise on the machine
    hits every op alike."""
    names = list(ops)
    out = {name: Series() for name in names}
    for name in names:
        op = ops[name]
        for k in range(warmup):  # indices past the timed ones: an op may use `i` to pick a unique message
            if op.prepare is not None:
                op.prepare(rounds * per_round + k)
            op.run(rounds * per_round + k)
    clock = time.perf_counter
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            prep, run = ops[name].prepare, ops[name].run
            got: list[float] = []
            for j in range(per_round):
                i = r * per_round + j
                if prep is not None:
                    prep(i)
                t0 = clock()
                run(i)
                got.append(clock() - t0)
            out[name].samples += got
            out[name].round_p50.append(pct(got, 0.5))
    return out


@dataclass
class AsyncOpSpec:
    """One timed coroutine operation; `prepare(i)` is awaited untimed before `run(i)`."""

    run: AsyncOp
    prepare: AsyncOp | None = None


async def interleave_async(ops: dict[str, AsyncOpSpec], rounds: int, per_round: int,
                           warmup: int = 20) -> dict[str, Series]:
    """The coroutine twin of `interleave_sync` (sequential awaits on the running loop)."""
    names = list(ops)
    out = {name: Series() for name in names}
    for name in names:
        op = ops[name]
        for k in range(warmup):
            if op.prepare is not None:
                await op.prepare(rounds * per_round + k)
            await op.run(rounds * per_round + k)
    clock = time.perf_counter
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            prep, run = ops[name].prepare, ops[name].run
            got: list[float] = []
            for j in range(per_round):
                i = r * per_round + j
                if prep is not None:
                    await prep(i)
                t0 = clock()
                await run(i)
                got.append(clock() - t0)
            out[name].samples += got
            out[name].round_p50.append(pct(got, 0.5))
    return out


def run_in(loop: asyncio.AbstractEventLoop, coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion on a loop that this thread owns."""
    return loop.run_until_complete(coro)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*headers), line, *(fmt.format(*r) for r in rows)])


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def times(x: float) -> str:
    return f"{x:.2f}x"


def cpu_model() -> str:
    """The processor's name: machines of one kind differ (figures move with it)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        return f"{info['model name']}, family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    except (OSError, KeyError):
        return platform.processor() or "unknown cpu"
