"""Redis Sentinel: `redis+sentinel://` URLs reach the current primary and follow a failover."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
from langchain_hybrid_memory.cache import parse_sentinel_url

from conftest import PG_URL, pg_fetch
from hybrid_memory_testing.servers import SentinelSetup


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


async def test_a_failover_that_demotes_the_primary_moves_async_calls_to_the_new_one(namespace):
    """`SENTINEL FAILOVER`: the old primary lives on as a replica and may keep its connections open, so the
    async path's shared connection gets READONLY; it must reconnect through the sentinels, not fail writes."""
    setup = SentinelSetup().start()
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=setup.url, namespace=namespace,
                                       redis_timeout=0.3, health_check_interval=0.2))
    try:
        for k in range(3):  # from the second call on, this loop has its own connection
            await memory.aadd_messages("d", [Message("human", f"before {k}")])
        first = setup.primary_port()
        setup.failover()
        deadline = time.monotonic() + 30
        while setup.primary_port() == first or redis.Redis(port=first).info("replication")["role"] != "slave":
            assert time.monotonic() < deadline, "no failover"
            await asyncio.sleep(0.05)
        acked = []
        for k in range(20):
            acked += await memory.aadd_messages("d", [Message("human", f"after {k}")])  # never raises
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 15
        while not memory.redis_available:
            assert time.monotonic() < deadline, "Redis never came back"
            await asyncio.sleep(0.05)
        await memory.aadd_messages("d", [Message("human", "last")])
        assert [m.content for m in await memory.aget_recent_messages("d")][-2:] == ["after 19", "last"]
        assert redis.Redis(port=setup.primary_port()).exists(memory.keys.session("d").window)
        pipe = memory._core.loop_caches[asyncio.get_running_loop()]._pipe  # this loop's shared connection
        assert pipe is not None and pipe.conn.port == setup.primary_port()  # not left on the replica
        await memory.aflush()
        stored = [r[0] for r in pg_fetch(f'SELECT msg_id FROM "{namespace}".messages')]
        assert len(stored) == len(set(stored)) == 3 + len(acked) + 1
    finally:
        await memory.aclose()
        setup.stop()
