"""The sync API is safe everywhere: plain code, worker threads beside a running loop, inside a running loop
(Jupyter), many threads at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from langchain_hybrid_memory import Message

from conftest import pg_fetch


def test_sync_from_worker_threads_while_a_loop_runs_elsewhere(make_memory, namespace):
    memory = make_memory()
    # Bind the async side to a loop running in another thread first (what LlamaIndex does).
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        asyncio.run_coroutine_threadsafe(memory.aadd_messages("s", [Message("human", "from loop")]), loop).result()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: memory.add_messages("s", [Message("human", f"t{i}", id=f"t{i}")]), range(40)))
        got = asyncio.run_coroutine_threadsafe(memory.aget_recent_messages("s", 5), loop).result()
        assert len(got) == 5
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    memory.flush()
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 41


async def test_sync_api_inside_a_running_loop(make_memory):
    """What a notebook cell does: call the sync API while the kernel's loop is running."""
    memory = make_memory()
    memory.add_messages("s", [Message("human", "sync in loop")])
    memory.flush()
    memory.invalidate_session("s")  # the next read is a miss: it must not deadlock the running loop
    assert [m.content for m in memory.get_recent_messages("s")] == ["sync in loop"]
    assert [m.content for m in await memory.aget_recent_messages("s")] == ["sync in loop"]


def test_many_threads_at_once(make_memory, namespace):
    memory = make_memory(max_session_messages=100)

    def work(t: int) -> None:
        for i in range(25):
            memory.add_messages(f"s{t % 3}", [Message("human", f"{t}-{i}")])
            assert memory.get_recent_messages(f"s{t % 3}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    memory.flush()
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 200
    for s in range(3):
        seqs = [m.seq for m in memory.get_messages(f"s{s}")]
        assert seqs == sorted(seqs) and [m.seq for m in memory.get_recent_messages(f"s{s}")] == seqs[-100:]


def test_async_calls_from_several_loops(make_memory):
    memory = make_memory()

    def in_new_loop(i: int) -> int:
        async def go() -> int:
            await memory.aadd_messages("s", [Message("human", str(i))])
            return len(await memory.aget_recent_messages("s"))

        return asyncio.run(go())

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert all(n >= 1 for n in pool.map(in_new_loop, range(6)))
    assert len(memory.get_recent_messages("s")) == 6


def test_context_managers(make_memory, namespace):
    from langchain_hybrid_memory import HybridConfig, HybridMemory

    from conftest import PG_URL, REDIS_URL

    cfg = HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace)
    with HybridMemory(cfg) as memory:
        memory.add_messages("s", [Message("human", "x")])

    async def go() -> None:
        async with HybridMemory(cfg) as m:
            await m.aadd_messages("s", [Message("human", "y")])

    asyncio.run(go())
    # Closing flushed both.
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 2


def test_calls_after_close_raise_memory_closed(make_memory):
    from langchain_hybrid_memory import MemoryClosedError

    memory = make_memory()
    memory.add_messages("s", [Message("human", "x")])
    memory.get_recent_messages("s")
    memory.close()
    for call in (lambda: memory.get_recent_messages("s"), lambda: memory.add_messages("s", [Message("ai", "y")]),
                 lambda: memory.get_messages("s"), lambda: memory.get_context("s")):
        try:
            call()
        except MemoryClosedError:
            continue
        raise AssertionError("a call after close() did not raise MemoryClosedError")

    async def acall() -> None:
        await memory.aget_recent_messages("s")

    try:
        asyncio.run(acall())
    except MemoryClosedError:
        return
    raise AssertionError("an async call after close() did not raise MemoryClosedError")
