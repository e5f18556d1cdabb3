"""The async hot path's shared connection: concurrent calls of one loop travel on one connection, in batches,
and each caller gets its own reply, also when some callers give up or Redis stops answering."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

from conftest import PG_URL

FAST = {"redis_timeout": 0.3, "health_check_interval": 0.2, "pg_timeout": 2.0, "connect_timeout": 1.0}


def _contents(msgs: list[Message]) -> list[str]:
    return [str(m.content) for m in msgs]


async def _memory(url: str, namespace: str) -> HybridMemory:
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=url, namespace=namespace, **FAST))
    await memory.astart()
    await memory.aget_recent_messages("warm-up")  # a loop's first call takes the engine's path
    return memory


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(private_redis, namespace):
    memory = await _memory(private_redis.url, namespace)
    try:
        sessions = [f"s{j}" for j in range(30)]
        await asyncio.gather(*(memory.aadd_messages(s, [Message("human", f"{s}/0")]) for s in sessions))
        before = redis.Redis.from_url(private_redis.url).info("clients")["connected_clients"]

        async def turn(s: str, k: int) -> None:
            got = _contents(await memory.aget_recent_messages(s))
            assert got and all(c.startswith(f"{s}/") for c in got), (s, got)  # never another caller's reply
            added = await memory.aadd_messages(s, [Message("human", f"{s}/{k}")])
            assert added[0].seq is not None

        await asyncio.gather(*(turn(s, k) for k in range(1, 11) for s in sessions))
        after = redis.Redis.from_url(private_redis.url).info("clients")["connected_clients"]
        # 300 calls in flight together: one connection per call in flight would open dozens.
        assert after - before <= 2, (before, after)
        for s in sessions:
            got = _contents(await memory.aget_recent_messages(s))
            assert sorted(got, key=lambda c: int(c.split("/")[1])) == [f"{s}/{k}" for k in range(11)]
        assert memory.get_cache_stats().fallback_writes == 0
    finally:
        await memory.aclose()


async def test_a_cancelled_call_leaves_the_other_replies_in_place(private_redis, namespace):
    memory = await _memory(private_redis.url, namespace)
    try:
        sessions = [f"c{j}" for j in range(40)]
        for s in sessions:
            await memory.aadd_messages(s, [Message("human", s)])
        for _ in range(3):
            tasks = [asyncio.ensure_future(memory.aget_recent_messages(s)) for s in sessions]
            await asyncio.sleep(0)  # all of them sent, none answered yet
            for t in tasks[::2]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            for s, got in zip(sessions, done, strict=True):
                if not isinstance(got, asyncio.CancelledError):
                    assert _contents(got) == [s]
        assert [_contents(await memory.aget_recent_messages(s)) for s in sessions] == [[s] for s in sessions]
    finally:
        await memory.aclose()


async def test_a_frozen_redis_fails_async_calls_over_within_the_timeout(private_redis, namespace):
    """SIGSTOP: the shared connection stays open but no reply comes. Every waiting call must fail over to
    PostgreSQL within about two timeouts, and the connection must be replaced once Redis answers again."""
    memory = await _memory(private_redis.url, namespace)
    try:
        await memory.aadd_messages("f", [Message("human", "pre")])
        assert private_redis.proc is not None
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            await asyncio.gather(*(memory.aadd_messages("f", [Message("human", f"during{k}")]) for k in range(5)))
            stall = time.monotonic() - t0
            assert stall < 3.0, f"writes stalled {stall:.1f}s"
            assert sorted(_contents(await memory.aget_recent_messages("f"))) == sorted(
                ["pre", *(f"during{k}" for k in range(5))])
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while not memory.redis_available:
            assert time.monotonic() < deadline, "Redis never came back"
            await asyncio.sleep(0.05)
        await memory.aadd_messages("f", [Message("human", "after")])
        got = _contents(await memory.aget_recent_messages("f"))
        assert got[0] == "pre" and got[-1] == "after" and len(got) == 7
        assert memory.get_cache_stats().redis_up
    finally:
        await memory.aclose()
