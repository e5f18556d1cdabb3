"""Write path: one order per session in Redis and PostgreSQL, idempotent ids, atomic trim + TTL, batching."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import asyncpg
import pytest
import redis

from langchain_hybrid_memory import HybridMemory, Message
from langchain_hybrid_memory.messages import split_element

from conftest import PG_URL, REDIS_URL, pg_fetch


def _redis_seqs(memory: HybridMemory, sid: str) -> list[int]:
    r = redis.Redis.from_url(REDIS_URL)
    return [split_element(el)[0] for el in r.lrange(memory.keys.session(sid).window, 0, -1)]


def _pg_rows(ns: str, sid: str) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in pg_fetch(f'SELECT seq, msg_id FROM "{ns}".messages WHERE session_id = $1 '
                                           "ORDER BY seq", sid)]


def test_seq_strictly_increasing_and_same_order_in_redis_and_pg(make_memory, namespace):
    memory = make_memory(max_session_messages=10)
    out = []
    for i in range(25):
        out += memory.add_messages("s", [Message("human", f"m{i}"), Message("ai", f"r{i}")])
    seqs = [m.seq for m in out]
    assert all(isinstance(s, int) for s in seqs)
    assert seqs == sorted(seqs) and len(set(seqs)) == 50
    memory.flush()
    rows = _pg_rows(namespace, "s")
    assert [r[1] for r in rows] == [m.id for m in out]
    assert [r[0] for r in rows] == seqs
    # The window is the tail of exactly that order.
    assert _redis_seqs(memory, "s") == seqs[-10:]
    assert [m.content for m in memory.get_recent_messages("s")] == [m.content for m in out[-10:]]


def test_retried_write_never_duplicates(make_memory, namespace):
    memory = make_memory()
    first = memory.add_messages("s", [Message("human", "hello", id="fixed-1"), Message("ai", "hi", id="fixed-2")])
    again = memory.add_messages("s", [Message("human", "hello", id="fixed-1"), Message("ai", "hi", id="fixed-2")])
    assert [m.seq for m in again] == [m.seq for m in first]
    assert len(memory.get_recent_messages("s")) == 2
    memory.flush()
    assert len(_pg_rows(namespace, "s")) == 2
    # After the cache is gone the ids are still deduplicated by PostgreSQL.
    memory.invalidate_session("s")
    memory.add_messages("s", [Message("human", "hello", id="fixed-1")])
    memory.flush()
    assert [r[1] for r in _pg_rows(namespace, "s")] == ["fixed-1", "fixed-2"]


def test_trim_and_ttl_refresh_are_applied_with_the_write(make_memory):
    memory = make_memory(max_session_messages=5, session_ttl=4)
    memory.add_messages("s", [Message("human", str(i)) for i in range(12)])
    r = redis.Redis.from_url(REDIS_URL)
    keys = memory.keys.session("s")
    assert r.llen(keys.window) == 5
    for key in (keys.window, keys.meta, keys.ids):
        assert 0 < r.pttl(key) <= 4000
    # The TTL slides at most every ttl/10 per process (0.4 s here) and never drops below 0.9 x ttl.
    for _ in range(10):
        time.sleep(0.1)
        memory.add_messages("s", [Message("human", "x")])
        assert min(r.pttl(k) for k in (keys.window, keys.meta, keys.ids)) >= 3400
    assert r.llen(keys.window) == 5


def test_persistence_is_batched_and_off_the_callers_path(make_memory, namespace):
    memory = make_memory(write_behind_delay=0.5)
    for i in range(40):
        memory.add_messages(f"s{i % 4}", [Message("human", str(i))])
    # Acknowledged from Redis: nothing had to wait for PostgreSQL.
    stats = memory.get_cache_stats()
    assert stats.backlog == 40
    memory.flush()
    stats = memory.get_cache_stats()
    assert stats.backlog == 0 and stats.persisted == 40
    assert stats.persist_batches < 40 / 4
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 40
    assert stats.outbox_entries == 0  # committed entries leave the Redis outbox


def test_write_through_acknowledges_after_commit(make_memory, namespace):
    memory = make_memory(async_writes=False, write_behind_delay=5)
    memory.add_messages("s", [Message("human", "durable")])
    # No flush: write-through returned only after PostgreSQL committed.
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 1


def test_concurrent_writers_one_order(make_memory, namespace):
    a, b = make_memory(), make_memory()
    errors: list[BaseException] = []

    def writer(memory: HybridMemory, tag: str) -> None:
        try:
            for i in range(60):
                memory.add_messages("shared", [Message("human", f"{tag}{i}", id=f"{tag}{i}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(m, tag)) for m, tag in ((a, "a"), (b, "b"), (a, "c"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    a.flush()
    b.flush()
    rows = _pg_rows(namespace, "shared")
    assert len(rows) == 180
    ids = [r[1] for r in rows]
    for tag in "abc":  # each writer's own order is kept
        mine = [i for i in ids if i.startswith(tag)]
        assert mine == [f"{tag}{i}" for i in range(60)]
    assert _redis_seqs(a, "shared") == [r[0] for r in rows][-30:]


async def test_async_api_same_guarantees(make_memory, namespace):
    memory = make_memory()
    await asyncio.gather(*(memory.aadd_messages("s", [Message("human", f"{i}", id=f"id{i}")]) for i in range(30)))
    await memory.aflush()
    rows = _pg_rows(namespace, "s")
    assert len(rows) == 30
    window = await memory.aget_recent_messages("s")
    assert [m.seq for m in window] == [r[0] for r in rows]


async def test_hot_path_reloads_its_script_after_script_flush(private_redis, namespace):
    """A restarted Redis (or SCRIPT FLUSH) forgets the scripts; the hot path loads them again, no fallback."""
    memory = HybridMemory(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace)
    try:
        memory.add_messages("s", [Message("human", "a")])
        await memory.aadd_messages("s", [Message("human", "b")])
        await memory.aadd_messages("s", [Message("human", "c")])  # this loop's own client from now on
        r = redis.Redis(port=private_redis.port)
        for i, add in enumerate((memory.add_messages, memory.aadd_messages)):
            r.script_flush()
            out = add("s", [Message("human", f"after-{i}")])
            if asyncio.iscoroutine(out):
                await out
        stats = memory.get_cache_stats()
        assert (stats.fallback_writes, stats.redis_errors) == (0, 0)
        assert [m.content for m in memory.get_recent_messages("s")] == ["a", "b", "c", "after-0", "after-1"]
        memory.flush()
        assert len(_pg_rows(namespace, "s")) == 5
    finally:
        memory.close()


def test_a_backlog_commits_in_concurrent_batches_once_and_in_order(make_memory, namespace):
    """Full batches go to PostgreSQL several at a time; one of them a replay (rows another process already
    committed): every message once, each session in its order."""
    memory = make_memory(persist_batch_size=40, persist_concurrency=3, pg_timeout=30)
    memory.start()  # the schema exists from here on
    store = memory._core.store
    assert store is not None
    inflight, most = [0], [0]
    persist = store.persist

    async def counted(rows: Any, users: Any) -> Any:
        inflight[0] += 1
        most[0] = max(most[0], inflight[0])
        try:
            return await persist(rows, users)
        finally:
            inflight[0] -= 1

    store.persist = counted  # type: ignore[method-assign]
    loop = asyncio.new_event_loop()
    lock = loop.run_until_complete(asyncpg.connect(PG_URL))
    try:
        # Park the flusher behind a table lock so that the whole backlog queues up.
        tr = lock.transaction()
        loop.run_until_complete(tr.start())
        loop.run_until_complete(lock.execute(f'LOCK TABLE "{namespace}".messages IN SHARE MODE'))
        sent = [memory.add_messages(f"s{i % 7}", [Message("human", str(i))])[0] for i in range(400)]

        async def pending() -> list[Any]:
            assert memory._core.wb is not None
            return memory._core.wb.queued_rows("s3")

        replay = memory._run(pending())[5:25]
        assert len(replay) == 20
        # "another process" commits part of the backlog first
        loop.run_until_complete(lock.executemany(
            f'INSERT INTO "{namespace}".messages (session_id, seq, msg_id, role, body, created_at)'
            " VALUES ($1, $2, $3, $4, $5, now())", [(r.session_id, r.seq, r.msg_id, r.role, r.body) for r in replay]))
        loop.run_until_complete(tr.commit())
        memory.flush(timeout=60)
    finally:
        loop.run_until_complete(lock.close())
        loop.close()
    stats = memory.get_cache_stats()
    assert stats.backlog == 0 and stats.dead_letters == 0
    assert stats.persist_batches >= 400 // 40
    assert most[0] == 3  # batches were in flight together
    for j in range(7):
        assert [r[1] for r in _pg_rows(namespace, f"s{j}")] == [m.id for m in sent[j::7]]


@pytest.mark.parametrize("per_call", [1, 10, 500])
def test_the_id_set_stays_compact_whatever_the_batch_size(make_memory, namespace, per_call):
    """Batches of any size leave at most `idempotency_window` + 20 ids, in Redis's compact encoding (a sorted
    set that once passed 128 entries stays a skiplist, three times the bytes), with a TTL; the newest ids
    still make a retry idempotent."""
    memory = make_memory()
    sent: list[Message] = []
    for c in range(1000 // per_call):
        sent += memory.add_messages("ids", [Message("human", f"m{c}-{k}") for k in range(per_call)])
    key = memory.keys.session("ids").ids
    keep = memory.config.idempotency_window
    r = redis.Redis.from_url(REDIS_URL)
    try:
        assert keep <= r.zcard(key) <= keep + 20
        assert r.object("encoding", key) in (b"listpack", b"ziplist")
        assert r.pttl(key) > 0
    finally:
        r.close()
    again = memory.add_messages("ids", [Message(m.role, m.content, id=m.id) for m in sent[-keep:]])
    assert [m.seq for m in again] == [m.seq for m in sent[-keep:]]  # recognised, not appended again
    memory.flush()
    assert len(_pg_rows(namespace, "ids")) == 1000


@pytest.mark.parametrize("reload", ["read", "prefetch", "write"])
def test_a_refill_longer_than_the_id_window_keeps_the_id_set_compact(make_memory, namespace, reload):
    """A window of 200 reloaded from PostgreSQL (a read miss, a prefetch, a write to an uncached session)
    remembers only the newest `idempotency_window` ids, as appends do, so the set stays in the compact
    encoding; retrying those ids after the reload is still recognised."""
    memory = make_memory(max_session_messages=200)
    sent = memory.add_messages("long", [Message("human", f"m{k}") for k in range(200)])
    memory.flush()
    memory.invalidate_session("long")
    if reload == "read":
        assert len(memory.get_recent_messages("long")) == 200
        memory.get_recent_messages("long")  # the miss caches its window in the background: a read waits for it
    elif reload == "prefetch":
        assert memory.prefetch_context(["long"]) == 1
    else:
        sent += memory.add_messages("long", [Message("human", "after")])
    key = memory.keys.session("long").ids
    keep = memory.config.idempotency_window
    r = redis.Redis.from_url(REDIS_URL)
    try:
        assert r.llen(memory.keys.session("long").window) == 200
        assert keep <= r.zcard(key) <= keep + 1
        assert r.object("encoding", key) in (b"listpack", b"ziplist")
    finally:
        r.close()
    again = memory.add_messages("long", [Message(m.role, m.content, id=m.id) for m in sent[-keep:]])
    assert [m.seq for m in again] == [m.seq for m in sent[-keep:]]
    memory.flush()
    assert len(_pg_rows(namespace, "long")) == len(sent)
