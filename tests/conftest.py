"""Fixtures: every test gets its own namespace (Redis key prefix + PostgreSQL schema) on the real servers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory

PG_URL = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL") or \
    "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


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
        extras = {k: overrides.pop(k) for k in ("summarizer", "token_counter") if k in overrides}
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


@pytest.fixture
def private_redis() -> Iterator[Any]:
    """A redis-server of this test's own, on a free port, that the test may kill."""
    from servers import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[Any]:
    """A PostgreSQL cluster of this module's own, on a free port, that tests may stop and start."""
    from servers import PostgresServer

    server = PostgresServer().init().start()
    yield server
    server.destroy()
