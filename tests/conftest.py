"""Fixtures: every test gets its own namespace (Redis key prefix + PostgreSQL schema) on the real servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
import redis
from blockbuster import BlockBuster, blockbuster_ctx

from langchain_hybrid_memory import HybridConfig, HybridMemory
from langchain_hybrid_memory.checkpoint import HybridSaver

PG_URL = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL") or \
    "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


# The sync API blocks by design (it waits for Redis or the engine loop); called inside a running loop (a Jupyter
# cell, a test mixing both APIs) that is the caller's choice. Blocking anywhere else in our code is a bug.
def _sync_methods(cls: type) -> set[str]:
    return {name for name, fn in vars(cls).items() if callable(fn) and not name.startswith("_")
            and not inspect.iscoroutinefunction(fn) and not inspect.isasyncgenfunction(fn)}


SYNC_API = ("langchain_hybrid_memory/memory.py", _sync_methods(HybridMemory))
SYNC_SAVER = ("langchain_hybrid_memory/checkpoint/saver.py", _sync_methods(HybridSaver))
SYNC_BRIDGE = ("langchain_hybrid_memory/_loop.py", {"run", "stop"})


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster]:
    """Any blocking call (file or socket I/O, sleep, a wait on a lock) made by our packages while an event loop
    runs in that thread raises `BlockingError`: in async callers' loops and on the engine's own loop alike.

    Calls into the sync API are exempt, unless the test is marked `strict_loop` (tests/test_event_loop.py):
    there, an async method that reached the sync API would fail too.
    """
    strict = request.node.get_closest_marker("strict_loop") is not None
    with blockbuster_ctx(["langchain_hybrid_memory", "llamaindex_adapter"]) as bb:
        for function in bb.functions.values():
            if not strict:
                function.can_block_in(*SYNC_API)
                function.can_block_in(*SYNC_SAVER)
                function.can_block_in(*SYNC_BRIDGE)
        yield bb


def drop_namespace(namespace: str, pg_url: str = PG_URL, redis_url: str = REDIS_URL) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except OSError:
        pass
    try:
        r = redis.Redis.from_url(redis_url, socket_timeout=2)
        keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])
        r.close()
    except redis.RedisError:
        pass


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"t_{uuid.uuid4().hex[:12]}"
    yield ns
    drop_namespace(ns)


@pytest.fixture
def make_memory(namespace: str) -> Iterator[Callable[..., HybridMemory]]:
    """Build HybridMemory instances on this test's namespace; all are closed at the end."""
    made: list[HybridMemory] = []

    def make(**overrides: Any) -> HybridMemory:
        extras = {k: overrides.pop(k) for k in ("summarizer", "token_counter", "embedder") if k in overrides}
        settings: dict[str, Any] = {"database_url": PG_URL, "redis_url": REDIS_URL, "namespace": namespace,
                                    "write_behind_delay": 0.01}
        settings.update(overrides)
        memory = HybridMemory(HybridConfig(**settings), **extras)
        made.append(memory)
        return memory

    yield make
    for memory in made:
        try:
            memory.close(flush_timeout=5)
        except Exception:
            pass


@pytest.fixture
def memory(make_memory: Callable[..., HybridMemory]) -> HybridMemory:
    return make_memory()


def pg_fetch(sql: str, *args: Any, url: str = PG_URL) -> list[asyncpg.Record]:
    """Query PostgreSQL directly (to check what is really stored)."""
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    # A thread of its own: callers may be inside a running event loop (async tests).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def valid_id(value: Any, limit: int) -> bool:
    """The engine's documented rule for session and user ids: a string of 1 to `limit` characters, without
    control characters (NUL included) or lone surrogates."""
    return isinstance(value, str) and 1 <= len(value) <= limit and \
        not any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


@pytest.fixture
def private_redis() -> Iterator[Any]:
    """A redis-server of this test's own, on a free port, that the test may kill."""
    from hybrid_memory_testing.servers import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[Any]:
    """A PostgreSQL cluster of this module's own, on a free port, that tests may stop and start."""
    from hybrid_memory_testing.servers import PostgresServer

    server = PostgresServer().init().start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def pgvector_pg() -> Iterator[Any]:
    """The `embedded` extra's PostgreSQL 16 with pgvector (pgserver), shared by the session, stopped at the end.
    The machine's PostgreSQL has no pgvector; a pgserver that cannot start fails the tests that need it."""
    from hybrid_memory_testing.servers import PgvectorServer

    try:
        server = PgvectorServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()
