"""Read path: a hit is one Redis round trip; a miss is one PostgreSQL query and a race-free refill; warmup
and prefetch load sessions into the cache ahead of their reads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from time import sleep as time_sleep
from typing import Any

import pytest
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

from conftest import PG_URL, REDIS_URL
from hybrid_memory_testing.connections import no_fill_pending, own_loop_connection


def _calls(r: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def test_hit_is_one_round_trip(private_redis, namespace):
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       reclaim_interval=600))
    try:
        memory.add_messages("s", [Message("human", f"m{i}") for i in range(5)])
        memory.flush()  # background acknowledgements done: only our read talks to Redis now
        memory.get_recent_messages("s")  # scripts loaded, connection open
        r = redis.Redis(port=private_redis.port)
        before = _calls(r)
        msgs = memory.get_recent_messages("s")
        after = _calls(r)
        assert [m.content for m in msgs] == [f"m{i}" for i in range(5)]
        changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert changed.pop("info") == 1
        # One MULTI ... EXEC sent as one packet: meta, length, elements, whether outbox entries wait, the
        # generation a miss would cache its load under; the TTLs were slid by the first read
        assert changed == {"multi": 1, "exec": 1, "hmget": 1, "llen": 1, "lrange": 1, "exists": 1, "get": 1}
    finally:
        memory.close()


def test_reads_slide_the_ttl_at_most_every_tenth_of_it(private_redis, namespace):
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       session_ttl=5, reclaim_interval=600))
    try:
        memory.add_messages("s", [Message("human", "m")])
        r = redis.Redis(port=private_redis.port)
        window = memory.keys.session("s").window
        ttls = []
        for _ in range(12):  # 1.2 s: the TTL (5 s) is slid again every 0.5 s, so it never drops below 4.5 s
            memory.get_recent_messages("s")
            ttls.append(r.pttl(window))
            time_sleep(0.1)
        assert min(ttls) >= 4300
        before = _calls(r).get("pexpire", 0)
        memory.get_recent_messages("s")
        memory.get_recent_messages("s")
        assert _calls(r).get("pexpire", 0) - before <= 3  # at most one slide (3 keys) for two reads
        time_sleep(0.55)
        memory.get_recent_messages("s")
        assert r.pttl(window) > 4800  # due again: slid
    finally:
        memory.close()


def test_miss_loads_from_postgres_then_serves_from_cache(make_memory):
    memory = make_memory(max_session_messages=4)
    memory.add_messages("s", [Message("human", f"m{i}") for i in range(10)])
    memory.flush()
    memory.invalidate_session("s")
    s0 = memory.get_cache_stats()
    cold = memory.get_recent_messages("s")
    hot = memory.get_recent_messages("s")
    s1 = memory.get_cache_stats()
    assert [m.content for m in cold] == ["m6", "m7", "m8", "m9"]
    assert [(m.seq, m.content) for m in hot] == [(m.seq, m.content) for m in cold]
    assert (s1.misses - s0.misses, s1.hits - s0.hits) == (1, 1)
    assert s1.hit_rate > 0


def test_a_fresh_engine_with_empty_redis_reads_postgres(make_memory):
    first = make_memory()
    sent = first.add_messages("s", [Message("human", f"m{i}") for i in range(8)])
    first.flush()
    first.invalidate_session("s")
    second = make_memory()
    assert [m.id for m in second.get_recent_messages("s")] == [m.id for m in sent]


def test_refill_never_overwrites_newer_writes(make_memory):
    memory = make_memory()
    memory.add_messages("s", [Message("human", "old")])
    memory.flush()
    memory.invalidate_session("s")

    async def race() -> list[str]:
        assert memory._core.cache is not None
        gen = (await memory._core.cache.misses(["s"]))[0].gen  # what a reader's miss saw
        stale = await memory._refill.load("s", for_write=False)  # a reader loaded PostgreSQL's view...
        stale.gen = gen
        await memory._writes.add("s", None, [Message("human", "new")], ['{"i":"n1","r":"human","c":"new","t":1}'])
        loaded, _, window = await memory._core.cache.fill("s", stale)  # ...and caches it after a newer write
        assert loaded is False and len(window) == 2
        return [m.content for m in await memory._reads.window("s", None, 30)]

    assert memory._run(race()) == ["old", "new"]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_refill_includes_writes_still_in_the_outbox(make_memory, api):
    """A window evicted while its last writes wait for PostgreSQL is rebuilt from PostgreSQL + the outbox (the
    async read on the caller's own loop and connection)."""
    writer = make_memory(write_behind_delay=30)  # nothing reaches PostgreSQL during this test
    reader = make_memory()
    writer.add_messages("s", [Message("human", f"m{i}") for i in range(3)])
    r = redis.Redis.from_url(writer.config.redis_dsn())
    keys = writer.keys.session("s")
    r.delete(keys.window, keys.meta, keys.ids)  # what eviction does
    if api == "sync":
        assert [m.content for m in reader.get_recent_messages("s")] == ["m0", "m1", "m2"]
        return

    async def main() -> list[str]:
        await own_loop_connection(reader)
        return [m.content for m in await reader.aget_recent_messages("s")]

    assert asyncio.run(main()) == ["m0", "m1", "m2"]


def _hold_fills(memory: HybridMemory) -> tuple[threading.Event, list[str]]:
    """Hold every background FILL of `memory` (a cold read's window, already handed to the reader) between its
    PostgreSQL read and the script that caches it, until the returned event is set; the list names the
    sessions held."""
    refill = memory._refill
    start = refill._start_fill
    gate, held = threading.Event(), []

    def hold(sid: str, *args: Any) -> None:  # on the engine loop, in place of Refiller._start_fill
        held.append(sid)

        async def later() -> None:
            await asyncio.to_thread(gate.wait, 30)
            start(sid, *args)

        asyncio.get_running_loop().create_task(later())

    refill._start_fill = hold  # type: ignore[method-assign]
    return gate, held


def _own_private_connection(memory: HybridMemory) -> None:
    """Open the sync API's private PostgreSQL connection (sync cold reads in a thread with no loop then use it)."""
    for _ in range(200):
        memory.invalidate_session("warm-up")
        memory.get_recent_messages("warm-up")  # a miss: the connection opens in the background
        private = memory._core.private
        if private is not None and private.pg.conn is not None:
            no_fill_pending(memory)
            return
        time_sleep(0.02)
    raise AssertionError("the private PostgreSQL connection did not open")


@pytest.mark.parametrize("api", ["engine loop", "sync thread", "async loop"])
@pytest.mark.parametrize("write", ["committed meanwhile", "waiting in the outbox"])
def test_a_cold_read_cached_in_the_background_never_hides_a_write(make_memory, api, write):
    """A cold read is answered from PostgreSQL's rows and caches its window afterwards. A write that lands between
    its PostgreSQL read and that cache fill (held here) is in every later read: the fill does not replace a
    window its writer cached meanwhile, and merges a write still waiting in the outbox when the window was
    evicted again. On each path: the engine loop (a sync call made inside a running loop), a sync caller's
    thread (its private connection), an async caller's loop (its own connection)."""
    memory = make_memory()
    writer = make_memory(write_behind_delay=30) if write == "waiting in the outbox" else memory
    m1 = memory.add_messages("s", [Message("human", "m1")])
    memory.flush()
    r = redis.Redis.from_url(memory.config.redis_dsn())
    keys = memory.keys.session("s")
    paths: list[str] = []
    reads_ = memory._reads
    cold_here, cold_private, cold = reads_.cold_here, reads_.cold_private, reads_.cold

    async def counted_here(sid: str, *args: Any) -> Any:
        paths.append("async loop")
        return await cold_here(sid, *args)

    def counted_private(sid: str, *args: Any) -> Any:
        paths.append("sync thread")
        return cold_private(sid, *args)

    async def counted_engine(sid: str, *args: Any) -> Any:
        paths.append("engine loop")
        return await cold(sid, *args)

    reads_.cold_here, reads_.cold_private, reads_.cold = (  # type: ignore[method-assign]
        counted_here, counted_private, counted_engine)

    def reads(read: Callable[[], list[Message]]) -> None:
        memory.invalidate_session("s")
        gate, held = _hold_fills(memory)
        paths.clear()
        assert [m.id for m in read()] == [m.id for m in m1]  # answered from PostgreSQL; its FILL is held
        assert paths == [api]
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:  # handed to the engine loop after the answer
            time_sleep(0.01)
        assert held == ["s"] and not r.exists(keys.meta)
        m2 = writer.add_messages("s", [Message("ai", "m2")])  # not cached: the writer loads and caches it
        assert r.llen(keys.window) == 2  # its writer cached the window, with the write
        if write == "committed meanwhile":
            writer.flush()  # in PostgreSQL, out of the outbox: only the window its writer cached holds it
        else:
            r.delete(keys.window, keys.meta, keys.ids)  # evicted again: only the outbox holds it
        gate.set()
        deadline = time.monotonic() + 10
        while memory._core.fills and time.monotonic() < deadline:
            time_sleep(0.01)
        assert not memory._core.fills
        want = [m.id for m in m1 + m2]
        assert [m.id for m in read()] == want
        assert [m.id for m in memory.get_recent_messages("s")] == want
        assert len(r.lrange(keys.window, 0, -1)) == 2  # cached, with the write

    if api == "engine loop":
        async def inside_a_loop() -> list[Message]:
            return memory.get_recent_messages("s")  # a thread running a loop cannot run the private one

        reads(lambda: asyncio.run(inside_a_loop()))
    elif api == "sync thread":
        _own_private_connection(memory)
        reads(lambda: memory.get_recent_messages("s"))
    else:
        async def main() -> None:
            await own_loop_connection(memory)
            loop = asyncio.get_running_loop()
            # The race itself runs in a thread while this loop serves the async reads.
            await asyncio.to_thread(reads, lambda: asyncio.run_coroutine_threadsafe(
                memory.aget_recent_messages("s"), loop).result(10))

        asyncio.run(main())


def test_limit_deeper_than_window_reads_postgres(make_memory):
    memory = make_memory(max_session_messages=3)
    memory.add_messages("s", [Message("human", f"m{i}") for i in range(10)])
    assert [m.content for m in memory.get_recent_messages("s", 7)] == [f"m{i}" for i in range(3, 10)]
    assert [m.content for m in memory.get_recent_messages("s", 2)] == ["m8", "m9"]


def test_full_transcript_is_paginated(make_memory):
    memory = make_memory(max_session_messages=3)
    sent = memory.add_messages("s", [Message("human", f"m{i}") for i in range(10)])
    page1 = memory.get_messages("s", limit=4)
    page2 = memory.get_messages("s", after_seq=page1[-1].seq, limit=4)
    page3 = memory.get_messages("s", after_seq=page2[-1].seq, limit=4)
    assert [m.id for m in page1 + page2 + page3] == [m.id for m in sent]
    assert len(page3) == 2


def test_reads_from_postgres_include_other_processes_writes_still_in_the_outbox(make_memory):
    """Another process's acknowledged writes that PostgreSQL has not committed yet are in every read that
    queries PostgreSQL: the full transcript (paginated, sync and async) and a read deeper than the window."""
    writer = make_memory(write_behind_delay=30, max_session_messages=3)  # nothing reaches PostgreSQL meanwhile
    reader = make_memory(max_session_messages=3)
    sent = writer.add_messages("s", [Message("human", f"m{i}") for i in range(5)])
    ids = [m.id for m in sent]
    assert [m.id for m in reader.get_messages("s")] == ids
    assert [m.id for m in asyncio.run(reader.aget_messages("s"))] == ids
    first = reader.get_messages("s", limit=2)
    rest = reader.get_messages("s", after_seq=first[-1].seq)
    assert [m.id for m in first + rest] == ids
    assert [m.content for m in reader.get_recent_messages("s", 5)] == [f"m{i}" for i in range(5)]
    writer.flush()  # committed: the same answers, now from PostgreSQL alone
    assert [m.id for m in reader.get_messages("s")] == ids


async def test_async_reads(make_memory):
    memory = make_memory()
    await memory.aadd_messages("s", [Message("human", "a"), Message("ai", "b")])
    got = await asyncio.gather(*(memory.aget_recent_messages("s") for _ in range(20)))
    assert all([m.content for m in g] == ["a", "b"] for g in got)
    assert [m.content for m in await memory.aget_messages("s")] == ["a", "b"]


def test_damaged_cache_entries_are_dropped_and_reloaded_never_served(make_memory):
    memory = make_memory()
    sent = memory.add_messages("s", [Message("human", f"m{i}") for i in range(5)])
    memory.flush()
    r = redis.Redis.from_url(memory.config.redis_dsn())
    keys = memory.keys.session("s")
    r.lset(keys.window, 2, b"\xff garbage {")
    assert [m.id for m in memory.get_recent_messages("s")] == [m.id for m in sent]  # sync hot path
    memory.get_recent_messages("s")  # waits for the window the miss cached in the background, if not there yet
    r.lset(keys.window, 1, b'{"s":1,"no":"fields"}')

    async def read() -> list[str]:
        return [m.id for m in await memory.aget_recent_messages("s")]

    assert asyncio.run(read()) == [m.id for m in sent]  # async hot path
    memory.get_recent_messages("s")  # as above
    r.hset(keys.meta, "seq", "not a number")
    more = memory.add_messages("s", [Message("human", "after damage")])  # the script fails: reload, retry
    assert [m.id for m in memory.get_recent_messages("s")] == [m.id for m in sent + more]
    assert memory.get_cache_stats().corrupt_entries == 3


def test_cleared_session_does_not_come_back_from_the_outbox(make_memory):
    for _ in range(10):  # the race was intermittent: the outbox still held the cleared messages
        memory = make_memory(write_behind_delay=5)
        memory.add_messages("s", [Message("human", "gone")])
        memory.clear_session("s")
        assert memory.get_recent_messages("s") == []
        other = make_memory(write_behind_delay=600)  # its entries are in flight when the session is cleared
        other.add_messages("t", [Message("human", "in flight")])
        memory.clear_session("t")
        memory.invalidate_session("t")
        assert memory.get_recent_messages("t") == []


def test_a_refill_finds_other_writers_entries_by_the_sessions_pending_set(namespace):
    """One outbox stream for every session (outbox_shards=1) holding another writer's uncommitted backlog: a
    cold read gets its session's acknowledged messages through the session's pending set, drops a name whose
    entry is gone, and the sets are gone once everything is committed."""
    settings = {"database_url": PG_URL, "redis_url": REDIS_URL, "namespace": namespace, "outbox_shards": 1,
                "reclaim_interval": 600}
    writer = HybridMemory(HybridConfig(**settings, write_behind_delay=600))
    reader = HybridMemory(HybridConfig(**settings))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        for j in range(100):
            writer.add_messages(f"other{j}", [Message("human", f"o{j}")])
        mine = [writer.add_messages("x", [Message("human", f"x{k}")])[0] for k in range(3)]
        k = reader.keys.session("x")
        assert r.scard(k.entries) == 3 and r.xlen(k.outbox) == 103
        r.sadd(k.entries, "1-1")  # a name whose entry was deleted (an acknowledgement cut short)
        reader.invalidate_session("x")  # a cold read: PostgreSQL has nothing yet, the outbox has it all
        assert [m.id for m in reader.get_recent_messages("x")] == [m.id for m in mine]
        assert not r.sismember(k.entries, "1-1")
        writer.flush()  # returns after the acknowledgements too
        assert not list(r.scan_iter(match=f"{namespace}:*:o", count=1000))
        assert r.xlen(k.outbox) == 0
    finally:
        r.close()
        reader.close()
        writer.close()


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
