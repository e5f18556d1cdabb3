"""Cache stats; no KEYS anywhere; one hash slot per session; versioned migrations; the modes; user scoping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from langchain_hybrid_memory import (
    HybridConfig,
    HybridMemory,
    Message,
    Mode,
    SessionOwnershipError,
    StorageUnavailableError,
)
from langchain_hybrid_memory.store import migrations

from conftest import PG_URL, REDIS_URL, pg_fetch

PACKAGE = Path(__file__).resolve().parent.parent / "langchain_hybrid_memory"


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


def test_migrations_are_versioned_and_idempotent(make_memory, namespace):
    memory = make_memory()
    memory.get_recent_messages("s")  # first call migrates
    assert memory.migrate() == []  # nothing left to apply
    versions = [r[0] for r in pg_fetch(f'SELECT version FROM "{namespace}".schema_migrations ORDER BY 1')]
    assert versions == [v for v, _, _ in migrations()] and versions[0] == 1
    pk = pg_fetch("SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c JOIN pg_namespace n ON "
                  "n.oid = c.connamespace WHERE n.nspname = $1 AND c.conrelid::regclass::text LIKE '%messages' "
                  "AND c.contype = 'p'", namespace)
    assert pk[0][0] == "PRIMARY KEY (session_id, seq)"


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


def test_user_binding_isolation_and_delete(make_memory, namespace):
    memory = make_memory()
    memory.add_messages("alice-1", [Message("human", "secret a")], user_id="alice")
    memory.add_messages("bob-1", [Message("human", "secret b")], user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.add_messages("alice-1", [Message("human", "hijack")], user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.get_recent_messages("alice-1", user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.get_messages("alice-1", user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.clear_session("alice-1", user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.invalidate_session("alice-1", user_id="bob")
    assert [m.content for m in memory.get_recent_messages("alice-1", user_id="alice")] == ["secret a"]
    memory.flush()
    memory.invalidate_session("alice-1")  # ownership also holds on a cold read
    with pytest.raises(SessionOwnershipError):
        memory.get_recent_messages("alice-1", user_id="bob")
    assert memory.invalidate_user("alice") == 1
    assert memory.delete_user("alice") == 1
    r = redis.Redis.from_url(REDIS_URL)
    assert not any(b"alice" in k for k in r.scan_iter(match=f"{namespace}:*"))
    assert not any(b"alice" in m for k in r.scan_iter(match=f"{namespace}:*:active") for m in r.zrange(k, 0, -1))
    assert memory.get_recent_messages("alice-1") == []
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages WHERE session_id = $1', "alice-1")[0][0] == 0
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".sessions WHERE user_id = $1', "alice")[0][0] == 0
    assert [m.content for m in memory.get_recent_messages("bob-1")] == ["secret b"]


def test_clear_session_is_not_undone_by_inflight_write_behind(make_memory, namespace):
    writer = make_memory(write_behind_delay=600)
    writer.add_messages("s", [Message("human", f"m{i}") for i in range(5)])
    other = make_memory()
    other.clear_session("s")  # another process deletes while the writes are still in flight
    writer.flush()
    other.reclaim_orphans(0)
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 0
    writer.add_messages("s", [Message("human", "after clear")])
    writer.flush()
    assert [m.content for m in other.get_messages("s")] == ["after clear"]


def test_warmup_and_prefetch(make_memory):
    memory = make_memory()
    for i in range(5):
        memory.add_messages(f"s{i}", [Message("human", "x")], user_id="u" if i < 2 else None)
    memory.flush()
    for i in range(5):
        memory.invalidate_session(f"s{i}")
    seen: list[tuple[int, int]] = []
    assert memory.warmup(limit=3, on_progress=lambda d, t: seen.append((d, t))) == 3
    assert seen[-1] == (3, 3)
    assert memory.prefetch_context(user_id="u") == 2  # s0 and s1 were not among the 3 most recent
    assert memory.prefetch_context(["s0", "s1", "s2", "s3", "s4"]) == 0  # all cached already
    before = memory.get_cache_stats()
    for i in range(5):
        memory.get_recent_messages(f"s{i}")
    after = memory.get_cache_stats()
    assert after.hits - before.hits == 5  # everything was warm


def test_postgres_unreachable_at_start_is_a_typed_error(namespace):
    memory = HybridMemory(HybridConfig(database_url="postgresql://postgres@127.0.0.1:1/x", namespace=namespace,
                                       connect_timeout=0.5))
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        memory.add_messages("s", [Message("human", "x")])
    memory.close()


def test_delete_single_messages_and_list_sessions(make_memory, namespace):
    memory = make_memory(max_session_messages=4)
    sent = memory.add_messages("s", [Message("human", f"m{i}") for i in range(6)], user_id="u")
    memory.add_messages("t", [Message("human", "other")])
    assert memory.delete_messages("s", [sent[1].seq, sent[5].seq]) == 2  # type: ignore[list-item]
    assert [m.content for m in memory.get_messages("s")] == ["m0", "m2", "m3", "m4"]
    assert [m.content for m in memory.get_recent_messages("s")] == ["m0", "m2", "m3", "m4"]
    assert memory.list_sessions() == ["s", "t"]
    assert memory.list_sessions(user_id="u") == ["s"]
    assert memory.list_sessions(limit=1) == ["s"]
    with pytest.raises(SessionOwnershipError):
        memory.delete_messages("s", [sent[0].seq], user_id="intruder")  # type: ignore[list-item]


def test_hash_partitioned_messages(make_memory, namespace):
    memory = make_memory(pg_partitions=4)
    for i in range(40):
        memory.add_messages(f"s{i}", [Message("human", f"m{i}")])
    memory.flush()
    parts = pg_fetch("SELECT c.relname, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) FROM pg_class c"
                     " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_partitioned_table p ON p.partrelid = c.oid"
                     " WHERE n.nspname = $1", namespace)
    assert [(r[0], r[1]) for r in parts] == [("messages", 4)]
    counts = [pg_fetch(f'SELECT count(*) FROM "{namespace}".messages_p{i}')[0][0] for i in range(4)]
    assert sum(counts) == 40 and all(c > 0 for c in counts)
    plan = "\n".join(r[0] for r in pg_fetch(
        f"EXPLAIN SELECT seq FROM \"{namespace}\".messages WHERE session_id = 's7' ORDER BY seq"))
    assert len(set(re.findall(r"messages_p\d+", plan))) == 1  # one partition scanned
    memory.invalidate_session("s7")
    assert [m.content for m in memory.get_recent_messages("s7")] == ["m7"]


def test_retention_purges_idle_sessions(make_memory, namespace):
    memory = make_memory()
    memory.add_messages("old", [Message("human", "x")])
    memory.add_messages("new", [Message("human", "y")])
    memory.flush()
    pg_fetch(f"UPDATE \"{namespace}\".sessions SET last_active_at = now() - interval '40 days'"
             " WHERE session_id = 'old'")
    seen: list[tuple[int, int]] = []
    assert memory.purge_idle_sessions(30 * 86400, on_progress=lambda d, t: seen.append((d, t))) == 1
    assert seen == [(1, 1)]
    assert memory.get_messages("old") == [] and memory.get_recent_messages("old") == []
    assert [m.content for m in memory.get_messages("new")] == ["y"]


def test_package_data_names_files_that_exist():
    """Every package-data pattern in pyproject.toml matches a file (a pattern matching nothing ships nothing)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        for pattern in patterns:
            assert list((root / package).glob(pattern)), f"{package}/{pattern} matches no file"
    lua = {p.stem for p in (root / "langchain_hybrid_memory" / "cache" / "lua").glob("*.lua")}
    assert {"common", "append", "fill", "read", "set_summary", "outbox_of"} <= lua
