"""What the engine reports about itself: `get_cache_stats()` fills every field (hits, misses, latencies, pool,
memory, health), and a real Prometheus scrape over HTTP shows the same numbers."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from langchain_hybrid_memory import Message
from langchain_hybrid_memory.metrics import HybridMemoryCollector

from hybrid_memory_testing.servers import free_port


def test_scrape(make_memory, namespace):
    from langgraph.checkpoint.base import empty_checkpoint

    from langchain_hybrid_memory.checkpoint import HybridSaver

    memory = make_memory()
    memory.add_messages("s", [Message("human", "x")])
    memory.get_recent_messages("s")
    memory.invalidate_session("s")
    memory.get_recent_messages("s")
    saver = HybridSaver(memory)  # checkpoint traffic: 2 puts, 3 pending writes, 1 read
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    config = saver.put(saver.put(config, empty_checkpoint(), {}, {}), empty_checkpoint(), {}, {})
    saver.put_writes(config, [("a", 1), ("b", 2), ("c", 3)], "task")
    assert saver.get_tuple(config) is not None
    registry = CollectorRegistry()
    registry.register(HybridMemoryCollector(memory))
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    label = f'{{namespace="{namespace}"}}'
    assert lines[f"hybrid_memory_hits_total{label}"] == 1
    assert lines[f"hybrid_memory_misses_total{label}"] == 1
    assert lines[f"hybrid_memory_hit_rate_percent{label}"] == 50.0
    assert lines[f"hybrid_memory_redis_up{label}"] == 1
    assert lines[f"hybrid_memory_checkpoint_puts_total{label}"] == 2
    assert lines[f"hybrid_memory_checkpoint_writes_total{label}"] == 3
    assert lines[f"hybrid_memory_checkpoint_reads_total{label}"] == 1
    assert lines[f"hybrid_memory_redis_memory_megabytes{label}"] > 0
    assert f'hybrid_memory_latency_seconds{{namespace="{namespace}",op="read",quantile="0.99"}}' in lines
    assert "hybrid_memory_write_behind_backlog" in text and "hybrid_memory_pg_pool_size" in text


def test_stats_fields(make_memory):
    memory = make_memory()
    memory.add_messages("a", [Message("human", "x")])
    memory.get_recent_messages("a")
    memory.invalidate_session("a")
    memory.get_recent_messages("a")
    s = memory.get_cache_stats()
    assert (s.hits, s.misses) == (1, 1) and s.hit_rate == pytest.approx(50.0)
    assert s.redis_memory_mb is not None and s.redis_memory_mb > 0
    assert s.cached_sessions == 1
    assert s.pg_pool_size >= 1 and 0 <= s.pg_pool_in_use <= s.pg_pool_size
    assert s.read_p99_ms >= s.read_p50_ms > 0 and s.write_p50_ms > 0
    assert s.redis_up and s.postgres_up
    assert set(s.to_dict()) >= {"hits", "misses", "hit_rate", "redis_memory_mb", "cached_sessions", "backlog"}
