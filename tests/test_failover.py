"""Failover: Redis down or cut -> PostgreSQL serves, no error, no stale cache after; PostgreSQL down ->
writes keep being acknowledged up to the backlog limit, cold reads raise a typed error; nothing hangs.
PostgreSQL unreachable from the start is a typed error too."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import asyncpg
import pytest
import redis

from langchain_hybrid_memory import (
    BacklogFullError,
    HybridConfig,
    HybridMemory,
    Message,
    SessionOwnershipError,
    StorageUnavailableError,
)
from langchain_hybrid_memory.store import MARK_DIRTY

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.servers import wait_port
from hybrid_memory_testing.tcp_proxy import TcpProxy

FAST = {"redis_timeout": 0.3, "health_check_interval": 0.2, "pg_timeout": 2.0, "connect_timeout": 1.0}


def _wait(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _contents(msgs: list[Message]) -> list[str]:
    return [m.content for m in msgs]  # type: ignore[misc]


def test_redis_killed_then_restarted(private_redis, namespace):
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       **FAST))
    try:
        memory.add_messages("s", [Message("human", "before")])
        private_redis.kill()
        # The caller sees no error: writes and reads go straight to PostgreSQL.
        memory.add_messages("s", [Message("human", "during")])
        assert _contents(memory.get_recent_messages("s")) == ["before", "during"]
        memory.add_messages("new", [Message("human", "fresh session while down")])
        assert _contents(memory.get_recent_messages("new")) == ["fresh session while down"]
        stats = memory.get_cache_stats()
        assert not stats.redis_up and stats.fallback_writes >= 2 and stats.fallback_reads >= 2
        private_redis.start()  # comes back empty (no persistence)
        _wait(lambda: memory.redis_available)
        s0 = memory.get_cache_stats()
        assert _contents(memory.get_recent_messages("s")) == ["before", "during"]  # miss, refilled
        assert _contents(memory.get_recent_messages("s")) == ["before", "during"]  # hit
        s1 = memory.get_cache_stats()
        assert (s1.misses - s0.misses, s1.hits - s0.hits) == (1, 1)
        memory.add_messages("s", [Message("human", "after")])
        memory.flush()
        rows = pg_fetch(f'SELECT body FROM "{namespace}".messages WHERE session_id = $1 ORDER BY seq', "s")
        assert [r[0].split('"c":"')[1].split('"')[0] for r in rows] == ["before", "during", "after"]
    finally:
        memory.close()


def test_redis_killed_while_the_owners_writes_wait_refuses_another_user(private_redis, namespace):
    """Redis dies while alice's acknowledged writes still wait in this process's queue: with only PostgreSQL
    left, which does not know her yet, mallory can neither read the session nor write to it."""
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       write_behind_delay=30, **FAST))
    try:
        memory.add_messages("s", [Message("human", "secret")], user_id="alice")
        private_redis.kill()
        reads = (lambda u: memory.get_messages("s", user_id=u), lambda u: memory.get_recent_messages("s", user_id=u),
                 lambda u: memory.get_context("s", user_id=u))
        for read in reads:
            with pytest.raises(SessionOwnershipError):
                read("mallory")
        with pytest.raises(SessionOwnershipError):
            memory.add_messages("s", [Message("human", "mine now")], user_id="mallory")
        memory.add_messages("s", [Message("human", "more")], user_id="alice")
        memory.flush()
        assert _contents(memory.get_messages("s", user_id="alice")) == ["secret", "more"]
    finally:
        memory.close()


def test_network_cut_to_redis_never_serves_stale_window_after(private_redis, namespace):
    """SIGSTOP keeps Redis's data but stops answering: connections hang, calls must time out."""
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       **FAST))
    other = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                      **FAST))
    try:
        memory.add_messages("s", [Message("human", "pre")])
        assert _contents(other.get_recent_messages("s")) == ["pre"]  # cached
        assert private_redis.proc is not None
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            memory.add_messages("s", [Message("human", "during")])
            stall = time.monotonic() - t0
            assert stall < 3.0, f"write stalled {stall:.1f}s"
            assert _contents(memory.get_recent_messages("s")) == ["pre", "during"]
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        _wait(lambda: memory.redis_available)
        # The pre-outage window is still in Redis; it must not be served to anyone.
        assert _contents(other.get_recent_messages("s")) == ["pre", "during"]
        assert _contents(memory.get_recent_messages("s")) == ["pre", "during"]
    finally:
        memory.close()
        other.close()


def _stop_tree(pid: int, sig: int) -> None:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    for p in [pid, *map(int, children.split())]:
        os.kill(p, sig)


class TestPostgresDown:
    def test_writes_acknowledged_up_to_backlog_then_clear_error(self, private_pg, namespace):
        memory = HybridMemory(HybridConfig(database_url=private_pg.url, redis_url=REDIS_URL, namespace=namespace,
                                           max_backlog=50, **FAST))
        try:
            memory.add_messages("hot", [Message("human", "warm")])
            memory.add_messages("cold", [Message("human", "x")])
            memory.flush()
            memory.invalidate_session("cold")
            private_pg.stop()
            sent = []
            for i in range(49):  # acknowledged from Redis while PostgreSQL is down
                sent += memory.add_messages("hot", [Message("human", f"m{i}")])
            assert len(memory.get_recent_messages("hot")) == 30  # hot reads still served
            with pytest.raises(BacklogFullError):
                memory.add_messages("hot", [Message("human", "one too many"), Message("human", "two")])
            assert _contents(memory.get_recent_messages("hot"))[-1] == "m48"  # nothing half-written
            with pytest.raises(StorageUnavailableError) as err:
                memory.get_recent_messages("cold")  # a cold read cannot be served
            assert "unreachable" in str(err.value)
            # A brand-new session is accepted too (its window is marked partial until PostgreSQL is back).
            memory.add_messages("brand-new", [Message("human", "hello")])
            private_pg.start()
            memory.flush(timeout=30)
            assert memory.get_cache_stats().backlog == 0
            n = pg_fetch(f'SELECT count(*) FROM "{namespace}".messages', url=private_pg.url)[0][0]
            assert n == 2 + 49 + 1
            assert _contents(memory.get_recent_messages("cold")) == ["x"]
            assert _contents(memory.get_recent_messages("brand-new")) == ["hello"]
        finally:
            if not _port_open(private_pg.port):
                private_pg.start()
            memory.close()

    def test_hung_postgres_times_out(self, private_pg, namespace):
        memory = HybridMemory(HybridConfig(database_url=private_pg.url, redis_url=REDIS_URL, namespace=namespace,
                                           **FAST))
        try:
            memory.add_messages("s", [Message("human", "x")])
            memory.flush()
            memory.invalidate_session("s")
            pid = int((private_pg.data / "postmaster.pid").read_text().split()[0])
            _stop_tree(pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                with pytest.raises(StorageUnavailableError):
                    memory.get_recent_messages("s")
                assert time.monotonic() - t0 < 3 * FAST["pg_timeout"] + 2
            finally:
                _stop_tree(pid, signal.SIGCONT)
            assert _contents(memory.get_recent_messages("s")) == ["x"]
        finally:
            memory.close()


def _port_open(port: int) -> bool:
    try:
        wait_port(port, timeout=0.2)
        return True
    except TimeoutError:
        return False


async def test_kept_connections_survive_a_quick_redis_restart(private_redis, namespace):
    """The hot path keeps its connections between calls; after a restart (all of them dead, scripts gone) the
    next calls reconnect and reload instead of failing over to PostgreSQL."""
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       **FAST))
    try:
        await memory.aadd_messages("s", [Message("human", "first")])  # this loop gets its own client
        for _ in range(3):  # calls in flight together: the sync and the async client each keep several
            await asyncio.gather(*(memory.aget_recent_messages("s") for _ in range(6)))
            threads = [threading.Thread(target=memory.get_recent_messages, args=("s",)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        memory.flush()
        private_redis.kill()
        private_redis.start()
        memory.add_messages("s", [Message("human", "after-sync")])
        await memory.aadd_messages("s", [Message("human", "after-async")])
        stats = memory.get_cache_stats()
        assert stats.redis_up and (stats.fallback_writes, stats.redis_errors) == (0, 0)
        got = _contents(await memory.aget_recent_messages("s"))
        assert got == ["first", "after-sync", "after-async"]
    finally:
        memory.close()


def test_redis_back_while_postgres_is_down_is_used_again(private_redis, private_pg, namespace):
    """A double fault: sessions written to PostgreSQL during a Redis outage, then PostgreSQL stops and Redis
    returns. Redis must be used again (its stale windows of those sessions dropped) even though PostgreSQL
    cannot be asked for other processes' marks; writes are acknowledged again."""
    memory = HybridMemory(HybridConfig(database_url=private_pg.url, redis_url=private_redis.url,
                                       namespace=namespace, **FAST))
    try:
        memory.add_messages("s", [Message("human", "before")])
        memory.flush()
        private_redis.kill()
        memory.add_messages("s", [Message("human", "during")])  # straight to PostgreSQL: "s" is dirty
        private_pg.stop()
        private_redis.start()
        _wait(lambda: memory.redis_available)
        memory.add_messages("t", [Message("human", "acknowledged by Redis")])  # a new session: partial window
        assert memory.get_cache_stats().backlog == 1
        private_pg.start()
        memory.flush(timeout=30)
        assert _contents(memory.get_recent_messages("s")) == ["before", "during"]
        assert _contents(memory.get_recent_messages("t")) == ["acknowledged by Redis"]
    finally:
        if not _port_open(private_pg.port):
            private_pg.start()
        memory.close()


def test_postgres_unreachable_at_start_is_a_typed_error(namespace):
    memory = HybridMemory(HybridConfig(database_url="postgresql://postgres@127.0.0.1:1/x", namespace=namespace,
                                       connect_timeout=0.5))
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        memory.add_messages("s", [Message("human", "x")])
    memory.close()


@pytest.mark.parametrize("first", ["read", "aread", "write", "warmup"])
def test_a_window_loaded_before_a_write_around_redis_is_not_cached_after_its_drop(private_redis, namespace, first):
    """Another process's write that went around Redis (its link cut) is followed by a drop of the session's
    window once its Redis answers again; a window this process loaded from PostgreSQL before that write, and
    cached only after the drop (a slow fill, or one a cut network delivers late), must not be cached: it lacks
    the write, and the session's next appends would extend it with a hole."""
    proxy = TcpProxy(private_redis.port).start()
    settings = {"database_url": PG_URL, "namespace": namespace, **FAST}
    cut = HybridMemory(HybridConfig(redis_url=f"redis://127.0.0.1:{proxy.port}/0", **settings))
    reader = HybridMemory(HybridConfig(redis_url=private_redis.url, **settings))
    try:
        cut.add_messages("s", [Message("human", f"m{i}") for i in range(4)])
        cut.flush()
        keys = cut._core.keys.session("s")
        raw = redis.Redis.from_url(private_redis.url)
        raw.delete(keys.window, keys.meta, keys.ids)  # not cached: the reader's first call loads it
        raw.close()
        refill = reader._refill
        done = threading.Event()

        def then_written_around(query):
            async def held(*args, **kwargs):  # the reader's PostgreSQL query has returned
                got = await query(*args, **kwargs)
                if not done.is_set():
                    done.set()
                    proxy.hang()
                    cut.add_messages("s", [Message("human", "m4")])  # times out, then PostgreSQL
                    cut.add_messages("s", [Message("human", "m5")])
                    assert cut.get_cache_stats().fallback_writes == 2
                    proxy.resume()
                    _wait(lambda: cut.redis_available)  # its probe dropped the session's window
                return got
            return held

        refill.from_store = then_written_around(refill.from_store)  # type: ignore[method-assign]
        refill.windows = then_written_around(refill.windows)  # type: ignore[method-assign]  # prefetch's
        if first == "warmup":
            assert reader.warmup(limit=10) == 0  # loaded, then refused
        elif first == "read":
            assert _contents(reader.get_recent_messages("s")) == [f"m{i}" for i in range(4)]  # began before
        elif first == "aread":
            got = asyncio.run(reader.aget_recent_messages("s"))
            assert _contents(got) == [f"m{i}" for i in range(4)]
        else:
            reader.add_messages("s", [Message("human", "m6")])
        assert done.is_set()
        if first != "write":
            reader.add_messages("s", [Message("human", "m6")])
        expected = [f"m{i}" for i in range(7)]
        assert _contents(reader.get_recent_messages("s")) == expected
        assert _contents(cut.get_recent_messages("s")) == expected
        assert _contents(reader.get_messages("s")) == expected
    finally:
        reader.close()
        cut.close()
        proxy.close()


def test_a_window_written_around_by_a_process_that_never_reaches_redis_again_is_dropped(private_redis, namespace):
    """A process writes a session to PostgreSQL directly (its Redis link cut) and ends before its link comes
    back: another process's janitor drops the window Redis still holds (the writer marked it in PostgreSQL), so
    readers do not keep serving it without those writes."""
    proxy = TcpProxy(private_redis.port).start()
    settings = {"database_url": PG_URL, "namespace": namespace, **FAST}
    cut = HybridMemory(HybridConfig(redis_url=f"redis://127.0.0.1:{proxy.port}/0", **settings))
    reader = HybridMemory(HybridConfig(redis_url=private_redis.url, reclaim_interval=0.2, **settings))
    try:
        cut.add_messages("s", [Message("human", f"m{i}") for i in range(4)])
        cut.flush()
        assert _contents(reader.get_recent_messages("s")) == [f"m{i}" for i in range(4)]  # cached
        proxy.hang()
        cut.add_messages("s", [Message("human", "m4")])  # times out, then PostgreSQL
        cut.add_messages("s", [Message("human", "m5")])
        assert cut.get_cache_stats().fallback_writes == 2
        cut.close()
        expected = [f"m{i}" for i in range(6)]
        _wait(lambda: _contents(reader.get_recent_messages("s")) == expected)
        reader.add_messages("s", [Message("human", "m6")])
        assert _contents(reader.get_recent_messages("s")) == [*expected, "m6"]
    finally:
        reader.close()
        cut.close()
        proxy.close()


def test_a_purge_leaves_the_mark_of_a_write_around_redis_still_in_progress(make_memory, namespace):
    """A session already marked is written around Redis again: until that write commits, its mark is locked and
    a purge leaves it (the window it drops would otherwise be refilled without the write, with no mark left)."""
    memory = make_memory()
    memory.add_messages("s", [Message("human", "x")])
    store = memory._core.store
    assert store is not None

    async def race() -> tuple[list[str], list[str]]:
        await store.mark_dirty(["s"])
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f'SET search_path TO "{namespace}"')
            async with conn.transaction():  # as add_direct marks, before its commit
                await conn.execute(MARK_DIRTY, ["s"])
                during = await store.take_dirty()
            return during, await store.take_dirty()
        finally:
            await conn.close()

    assert memory._run(race()) == ([], ["s"])


def test_marks_named_twice_in_one_call_are_written_once(make_memory):
    """The same id twice in one marking (a prune or delete naming a thread twice, while Redis is down) is one
    mark, not an error (an upsert may not touch a row twice in one statement)."""
    memory = make_memory()
    memory.add_messages("s", [Message("human", "x")])  # started
    store = memory._core.store
    assert store is not None

    async def mark() -> list[str]:
        await store.mark_dirty(["a", "b", "a"])
        return sorted(await store.take_dirty())

    assert memory._run(mark()) == ["a", "b"]


def test_a_session_cleared_while_redis_was_cut_is_not_served_after_its_process_ends(private_redis, namespace):
    """A process clears a session while it cannot reach Redis, then ends: the window Redis still holds is dropped
    by another process's janitor (the clear marked it in PostgreSQL), never served again."""
    proxy = TcpProxy(private_redis.port).start()
    settings = {"database_url": PG_URL, "namespace": namespace, **FAST}
    cut = HybridMemory(HybridConfig(redis_url=f"redis://127.0.0.1:{proxy.port}/0", **settings))
    reader = HybridMemory(HybridConfig(redis_url=private_redis.url, reclaim_interval=0.2, **settings))
    try:
        cut.add_messages("s", [Message("human", "secret")])
        cut.flush()
        assert _contents(reader.get_recent_messages("s")) == ["secret"]  # cached
        proxy.hang()
        cut.clear_session("s")
        cut.close()
        _wait(lambda: reader.get_recent_messages("s") == [])
    finally:
        reader.close()
        cut.close()
        proxy.close()
