"""The modes besides the default hybrid one: `session_only` keeps a bounded window in Redis and queues nothing
for a store that is not there; `persistent` writes PostgreSQL before the call returns and never touches Redis."""

from __future__ import annotations

import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message, Mode

from conftest import PG_URL, REDIS_URL, pg_fetch


def test_session_only_mode(namespace):
    memory = HybridMemory(HybridConfig(mode=Mode.SESSION_ONLY, redis_url=REDIS_URL, namespace=namespace,
                                       max_session_messages=3))
    try:
        memory.add_messages("s", [Message("human", str(i)) for i in range(5)])
        assert [m.content for m in memory.get_recent_messages("s")] == ["2", "3", "4"]
        assert memory.get_cache_stats().backlog == 0
        r = redis.Redis.from_url(REDIS_URL)
        assert r.xlen(memory.keys.session("s").outbox) == 0  # nothing queued for a store that is not there
    finally:
        memory.close()


def test_persistent_mode(namespace):
    memory = HybridMemory(HybridConfig(mode=Mode.PERSISTENT, database_url=PG_URL, namespace=namespace))
    try:
        sent = memory.add_messages("s", [Message("human", str(i)) for i in range(5)])
        # Written before the call returned, no cache involved.
        assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 5
        assert [m.id for m in memory.get_recent_messages("s")] == [m.id for m in sent]
        assert memory.get_cache_stats().redis_memory_mb is None
        r = redis.Redis.from_url(REDIS_URL)
        assert not r.exists(memory.keys.session("s").window)
    finally:
        memory.close()
