"""Prometheus metrics (extra `metrics`): hit rate, latency, memory, pool, backlog and summaries, read from
`get_cache_stats()` on scrape.

    from prometheus_client import REGISTRY, start_http_server
    REGISTRY.register(HybridMemoryCollector(memory))
    start_http_server(9108)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .memory import HybridMemory

_COUNTERS = {
    "hits": "Window reads served by Redis",
    "misses": "Window reads that had to load PostgreSQL",
    "reads": "Window/context reads",
    "writes": "add_messages calls",
    "fallback_reads": "Reads served by PostgreSQL because Redis was down",
    "fallback_writes": "Writes sent straight to PostgreSQL because Redis was down",
    "persisted": "Messages committed to PostgreSQL by the write-behind",
    "persist_failures": "Write-behind batches PostgreSQL refused or timed out",
    "reclaimed": "Messages of dead writers committed from the Redis outbox",
    "redis_errors": "Redis calls that failed or timed out",
    "summaries": "Summaries stored",
    "summary_failures": "Summarizer calls that failed (retried later)",
    "checkpoint_reads": "LangGraph checkpoints read by HybridSaver",
    "checkpoint_puts": "LangGraph checkpoints stored by HybridSaver",
    "checkpoint_writes": "LangGraph pending writes stored by HybridSaver",
}
_GAUGES = {
    "hit_rate": ("hit_rate_percent", "Cache hit rate in percent"),
    "redis_memory_mb": ("redis_memory_megabytes", "Redis used_memory"),
    "cached_sessions": ("cached_sessions", "Sessions with a cached window"),
    "backlog": ("write_behind_backlog", "Acknowledged messages not yet in PostgreSQL (this process)"),
    "outbox_entries": ("outbox_entries", "Entries in the Redis outbox streams (all processes)"),
    "pg_pool_in_use": ("pg_pool_in_use", "PostgreSQL connections in use"),
    "pg_pool_size": ("pg_pool_size", "PostgreSQL pool size"),
    "summary_queue": ("summary_queue", "Sessions due for summarization or waiting to retry"),
    "redis_up": ("redis_up", "1 if Redis answers"),
    "postgres_up": ("postgres_up", "1 if PostgreSQL answers"),
}


class HybridMemoryCollector(Collector):
    """Exports one HybridMemory's stats as `hybrid_memory_*` metrics, labelled by namespace."""

    def __init__(self, memory: HybridMemory, prefix: str = "hybrid_memory") -> None:
        self.memory = memory
        self.prefix = prefix

    def describe(self) -> Iterator[Any]:
        return iter(())  # metrics are produced on scrape; no I/O at registration

    def collect(self) -> Iterator[Any]:
        stats = self.memory.get_cache_stats().to_dict()
        labels = ["namespace"]
        value = [self.memory.config.namespace]
        for key, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"{self.prefix}_{key}", doc, labels=labels)
            c.add_metric(value, float(stats[key]))
            yield c
        for key, (name, doc) in _GAUGES.items():
            if stats[key] is None:
                continue
            g = GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=labels)
            g.add_metric(value, float(stats[key]))
            yield g
        lat = GaugeMetricFamily(f"{self.prefix}_latency_seconds", "Recent read/write latency quantiles",
                                labels=[*labels, "op", "quantile"])
        for op in ("read", "write"):
            for q in ("50", "99"):
                lat.add_metric([*value, op, f"0.{q}"], stats[f"{op}_p{q}_ms"] / 1000.0)
        yield lat
