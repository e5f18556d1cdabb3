"""Redis Sentinel: `redis+sentinel://` URLs reach the current primary and follow a failover."""

from __future__ import annotations

import time

import pytest
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
from langchain_hybrid_memory.cache import parse_sentinel_url

from conftest import PG_URL, pg_fetch
from servers import SentinelSetup


def test_parse_sentinel_url():
    assert parse_sentinel_url("redis+sentinel://:p%40ss@h1:26379,h2:26380/main/2") == (
        [("h1", 26379), ("h2", 26380)], "main", 2, "p@ss", False)
    assert parse_sentinel_url("rediss+sentinel://h/svc")[0] == [("h", 26379)]
    with pytest.raises(ValueError, match="service name"):
        parse_sentinel_url("redis+sentinel://h:1")


def test_sentinel_primary_and_failover(namespace):
    setup = SentinelSetup().start()
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=setup.url, namespace=namespace,
                                       redis_timeout=0.3, health_check_interval=0.2))
    try:
        first = setup.primary_port()
        assert first == setup.primary.port
        memory.add_messages("s", [Message("human", "before")])
        assert redis.Redis(port=first).exists(memory.keys.session("s").window)
        setup.primary.kill()
        acked = []
        deadline = time.monotonic() + 30
        while setup.primary_port() in (first, 0) and time.monotonic() < deadline:
            acked += memory.add_messages("s", [Message("human", f"during {len(acked)}")])  # never raises
            time.sleep(0.05)
        assert setup.primary_port() == setup.replica.port  # the sentinel promoted the replica
        deadline = time.monotonic() + 15
        while not memory.redis_available and time.monotonic() < deadline:
            time.sleep(0.05)
        memory.add_messages("s", [Message("human", "after")])
        assert memory.redis_available
        assert memory.get_recent_messages("s")[-1].content == "after"
        assert redis.Redis(port=setup.replica.port).exists(memory.keys.session("s").window)
        memory.flush()
        stored = [r[0] for r in pg_fetch(f'SELECT msg_id FROM "{namespace}".messages')]
        assert len(stored) == len(set(stored)) == 2 + len(acked)
    finally:
        memory.close()
        setup.stop()
