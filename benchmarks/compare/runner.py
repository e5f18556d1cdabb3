"""Timing: interleaved rounds bounded by time, and the mixed-load driver.

`interleave` is `_common.interleave_sync/async` for a mix of sync and async subjects, with a time budget per
subject: in each round every subject runs up to `per_round` operations, or fewer once its share of the budget
is spent (never fewer than `min_per_round`), so that a subject taking 100 ms per read does not stretch the
run. Rounds rotate which subject goes first; ratios are medians of per-round p50 ratios (`_common.ratio`).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from _common import Series, pct


@dataclass
class Timed:
    """One timed operation: `run(i)` (a call, or a coroutine function when `is_async`), with an untimed
    `prepare(i)` before it whose result is passed to `run` (None: `run(i)` takes only the index)."""

    run: Callable[..., Any]
    is_async: bool
    prepare: Callable[[int], Any] | None = None
    prepare_async: bool = False


@dataclass
class Budget:
    rounds: int
    per_round: int
    seconds: float  # per subject, over all rounds
    warmup: int = 5
    min_per_round: int = 2


@dataclass
class Result:
    series: Series
    returned: list[Any] = field(default_factory=list)  # results of the warm-up calls (message counts)


async def _call(op: Timed, i: int, clock: Callable[[], float]) -> tuple[float, Any]:
    arg = None
    if op.prepare is not None:
        arg = op.prepare(i)
        if op.prepare_async:
            arg = await arg
    if op.is_async:
        if op.prepare is None:
            t0 = clock()
            out = await op.run(i)
        else:
            t0 = clock()
            out = await op.run(i, arg)
    elif op.prepare is None:
        t0 = clock()
        out = op.run(i)
    else:
        t0 = clock()
        out = op.run(i, arg)
    return clock() - t0, out


async def interleave(ops: dict[str, Timed], budget: Budget) -> dict[str, Result]:
    names = list(ops)
    out = {name: Result(Series()) for name in names}
    clock = time.perf_counter
    base = budget.rounds * budget.per_round
    for name in names:  # warm-up, untimed, at indices past the timed ones
        t_end = clock() + budget.seconds / 4
        for k in range(budget.warmup):
            _, got = await _call(ops[name], base + k, clock)
            out[name].returned.append(got)
            if clock() > t_end and k >= 1:
                break
    share = budget.seconds / budget.rounds
    for r in range(budget.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            op = ops[name]
            got: list[float] = []
            deadline = clock() + share
            j = 0
            while j < budget.per_round and (j < budget.min_per_round or clock() < deadline):
                dt, _ = await _call(op, r * budget.per_round + j, clock)
                got.append(dt)
                j += 1
            out[name].series.samples += got
            out[name].series.round_p50.append(pct(got, 0.5))
    return out


# -- mixed load ----------------------------------------------------------------------------------------------
@dataclass
class LoadRound:
    turns: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.turns / self.seconds if self.seconds else 0.0


async def load_async(turn: Callable[[str, Any], Any], batch: Callable[[int, int], Any], sids: list[str],
                     clients: int, seconds: float, seed: int, think: tuple[float, float] | None = None) -> LoadRound:
    """`clients` asyncio tasks, each doing chat turns on random sessions until the deadline.

    `think`: each client then waits uniform(lo, hi) seconds before its next turn (the model's answer); None:
    back to back, which measures saturation rather than a conversation's latency."""
    clock = time.perf_counter
    lat: list[float] = []
    counter = [seed * 1_000_000]

    async def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        if think:  # spread the first turns over one think time, as conversations are not in lock step
            await asyncio.sleep(rng.uniform(0, think[1]))
        while clock() < deadline:
            counter[0] += 1
            b = batch(counter[0], 2)
            sid = rng.choice(sids)
            t0 = clock()
            await turn(sid, b)
            lat.append(clock() - t0)
            if think:
                await asyncio.sleep(rng.uniform(*think))

    start = clock()
    deadline = start + seconds
    await asyncio.gather(*(client(c) for c in range(clients)))
    return LoadRound(len(lat), clock() - start, lat)


def load_threads(turn: Callable[[str, Any], Any], batch: Callable[[int, int], Any], sids: list[str],
                 clients: int, seconds: float, seed: int, think: tuple[float, float] | None = None) -> LoadRound:
    """`clients` threads, each doing chat turns on random sessions until the deadline (sync APIs)."""
    clock = time.perf_counter
    lats: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        mine = lats[c]
        n = (seed * 1000 + c) * 1_000_000
        gate.wait()
        try:
            if think:
                time.sleep(rng.uniform(0, think[1]))
            while clock() < deadline[0]:
                n += 1
                b = batch(n, 2)
                sid = rng.choice(sids)
                t0 = clock()
                turn(sid, b)
                mine.append(clock() - t0)
                if think:
                    time.sleep(rng.uniform(*think))
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = clock() + seconds
    start = clock()
    gate.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    lat = [x for m in lats for x in m]
    return LoadRound(len(lat), clock() - start, lat)


@dataclass
class LoadPoint:
    """One subject at one client count, over all rounds."""

    rounds: list[LoadRound] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.rounds for x in r.latencies]

    @property
    def throughput(self) -> float:
        total = sum(r.turns for r in self.rounds)
        secs = sum(r.seconds for r in self.rounds)
        return total / secs if secs else 0.0

    @property
    def p50(self) -> float:
        return pct(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 0.99)


def load_ratio(subject: LoadPoint, base: LoadPoint) -> tuple[float, float]:
    """(throughput ratio: median of per-round ratios, p99 ratio)."""
    per = [s.throughput / b.throughput for s, b in zip(subject.rounds, base.rounds, strict=True) if b.throughput]
    r_tp = statistics.median(per) if per else float("nan")
    r99 = subject.p99 / base.p99 if base.p99 else float("nan")
    return r_tp, r99
