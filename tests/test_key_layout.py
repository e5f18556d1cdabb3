"""Redis key layout: every key of a session shares one hash tag (one Cluster slot, whatever the id), and no
KEYS or SCAN anywhere, neither in the source nor in the commands the engine sends at runtime."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

from conftest import PG_URL

PACKAGE = Path(__file__).resolve().parent.parent / "langchain_hybrid_memory"


def test_no_keys_command_in_source():
    pattern = re.compile(r"""(client|pipe|redis)\.keys\(|["']KEYS["']|scan_iter|\.scan\(|["']SCAN["']""")
    offenders = [p.name for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_keys_command_at_runtime(private_redis, namespace):
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace))
    try:
        for u in range(3):
            memory.add_messages(f"s{u}", [Message("human", "x")], user_id=f"u{u}")
        memory.get_cache_stats()
        memory.invalidate_user("u1")
        memory.flush()
        memory.warmup()
        memory.delete_user("u2")
        memory.reclaim_orphans(0)
        stats = redis.Redis(port=private_redis.port).info("commandstats")
        assert "cmdstat_keys" not in stats and "cmdstat_scan" not in stats
    finally:
        memory.close()


def _slot_tag(key: str) -> str:
    start = key.index("{")
    return key[start + 1:key.index("}", start)]


@pytest.mark.parametrize("sid", ["plain", "{evil}", "a}b{c", "}", "会话"])
def test_every_key_of_a_session_shares_one_hash_tag(sid):
    from langchain_hybrid_memory.keys import KeyLayout

    keys = KeyLayout("ns", 64).session(sid)
    tags = {_slot_tag(k) for k in keys.all}
    assert len(tags) == 1 and tags.pop().isdigit()
