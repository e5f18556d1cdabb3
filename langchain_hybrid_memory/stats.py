"""Counters and latency samples behind `get_cache_stats()`.

Updated on the engine loop and, by hot-path calls, in callers' threads, without a lock: under concurrency a few
increments may be lost (they are statistics, never used for decisions)."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    samples.sort()
    return samples[min(len(samples) - 1, int(q * len(samples)))]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot; latencies in milliseconds, memory in MB, `hit_rate` in percent."""

    hits: int
    misses: int
    hit_rate: float
    redis_memory_mb: float | None
    cached_sessions: int | None
    redis_up: bool
    postgres_up: bool
    backlog: int  # acknowledged messages of this process not yet committed to PostgreSQL
    outbox_entries: int | None  # entries in the Redis outbox streams (all processes)
    pg_pool_in_use: int
    pg_pool_size: int
    read_p50_ms: float
    read_p99_ms: float
    write_p50_ms: float
    write_p99_ms: float
    reads: int
    writes: int
    fallback_reads: int
    fallback_writes: int
    persisted: int
    persist_batches: int
    persist_failures: int
    reclaimed: int
    redis_errors: int
    corrupt_entries: int  # damaged cache entries dropped (and reloaded) instead of served
    dead_letters: int  # messages PostgreSQL refused, set aside (WriteBehind.dead_letters) instead of blocking
    summaries: int  # summaries stored by this process
    summary_failures: int
    summary_queue: int  # sessions due or waiting to retry
    last_summary_error: str | None
    checkpoint_reads: int = 0  # HybridSaver: checkpoints read (get_tuple, and each one list returned)
    checkpoint_puts: int = 0  # HybridSaver: checkpoints stored
    checkpoint_writes: int = 0  # HybridSaver: pending writes stored
    indexed: int = 0  # messages this process added to the search index
    index_failures: int = 0  # indexer passes that failed (PostgreSQL down ...): retried with backoff
    index_backlog: int | None = None  # sessions with committed messages not yet searchable (all processes)
    searches: int = 0
    embedded: int = 0  # messages this process embedded for vector search
    embed_failures: int = 0  # embedder calls that failed (vectors then wait; search falls back to full-text)
    embed_backlog: int | None = None  # sessions with indexed messages waiting for a vector (all processes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stats:
    def __init__(self, window: int = 10_000) -> None:
        self.hits = self.misses = 0
        self.reads = self.writes = 0
        self.fallback_reads = self.fallback_writes = 0
        self.persisted = self.persist_batches = self.persist_failures = 0
        self.reclaimed = self.redis_errors = 0
        self.summaries = self.summary_failures = 0
        self.corrupt_entries = 0
        self.dead_letters = 0
        self.checkpoint_reads = self.checkpoint_puts = self.checkpoint_writes = 0
        self.indexed = self.index_failures = self.searches = 0
        self.embedded = self.embed_failures = 0
        self.read_lat: deque[float] = deque(maxlen=window)
        self.write_lat: deque[float] = deque(maxlen=window)

    def percentiles(self) -> tuple[float, float, float, float]:
        r, w = list(self.read_lat), list(self.write_lat)
        return (_percentile(r, 0.5) * 1e3, _percentile(r, 0.99) * 1e3,
                _percentile(w, 0.5) * 1e3, _percentile(w, 0.99) * 1e3)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return 100.0 * self.hits / total if total else 0.0
