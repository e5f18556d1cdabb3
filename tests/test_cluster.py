"""Redis Cluster: one slot per session's keys (no CROSSSLOT), and a master killed mid-load loses nothing; a
LangGraph thread's keys share one slot too."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from langchain_core.messages import HumanMessage
from test_checkpoint_graphs import chain, respond

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
from langchain_hybrid_memory.checkpoint import HybridSaver

from conftest import PG_URL, pg_fetch
from hybrid_memory_testing.servers import RedisClusterServers


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers().start()
    yield servers
    servers.stop()


def _memory(cluster: RedisClusterServers, namespace: str, **kw: object) -> HybridMemory:
    return HybridMemory(HybridConfig(database_url=PG_URL, redis_url=cluster.url, namespace=namespace,
                                     redis_timeout=0.5, health_check_interval=0.3, **kw))  # type: ignore[arg-type]


def test_all_operations_on_a_cluster(cluster, namespace):
    memory = _memory(cluster, namespace)
    try:
        for i in range(200):
            memory.add_messages(f"s{i}", [Message("human", f"m{i}")], user_id=f"u{i % 7}")
        assert memory._core.cluster
        for i in range(0, 200, 17):
            assert [m.content for m in memory.get_recent_messages(f"s{i}")] == [f"m{i}"]
        memory.flush()
        assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 200
        assert memory.invalidate_user("u3") == len(range(3, 200, 7))
        assert memory.warmup(limit=50) >= 1
        stats = memory.get_cache_stats()
        assert stats.redis_up and stats.cached_sessions and stats.cached_sessions >= 150
        assert stats.redis_memory_mb and stats.redis_memory_mb > 0
        assert memory.reclaim_orphans(0) == 0
        assert memory.delete_user("u1") == len(range(1, 200, 7))
        assert memory.get_recent_messages("s1") == []
    finally:
        memory.close()


async def test_langgraph_threads_on_a_cluster(cluster, namespace):
    """Sync and async graphs over HybridSaver: every step's scripts and reads run on one slot per thread."""
    memory = _memory(cluster, namespace)
    try:
        graph = chain(("respond", respond)).compile(checkpointer=HybridSaver(memory))
        for t in range(12):
            config = {"configurable": {"thread_id": f"thread-{t}"}}
            for turn in range(3):
                message = {"messages": [HumanMessage(f"q{turn}", id=f"{t}-q{turn}")]}
                if t % 2:
                    await graph.ainvoke(message, config)
                else:
                    graph.invoke(message, config)
        stats = memory.get_cache_stats()  # a thread's first read finds nothing; its next two find the latest
        assert memory._core.cluster and stats.redis_up and stats.checkpoint_reads == 12 * 2
        await memory.aflush()
    finally:
        memory.close()
    fresh = _memory(cluster, namespace)  # another process: what it reads comes from Redis, then PostgreSQL
    try:
        graph = chain(("respond", respond)).compile(checkpointer=HybridSaver(fresh))
        for t in (0, 1, 11):
            state = graph.get_state({"configurable": {"thread_id": f"thread-{t}"}})
            assert [m.content for m in state.values["messages"]] == [
                x for turn in range(3) for x in (f"q{turn}", f"echo: q{turn}")]
            history = list(graph.get_state_history({"configurable": {"thread_id": f"thread-{t}"}}))
            assert len(history) == 3 * 3  # three checkpoints per turn: its input, then each step
    finally:
        fresh.close()


def test_master_killed_mid_load_loses_nothing(cluster, namespace, caplog):
    caplog.set_level(logging.DEBUG, logger="langchain_hybrid_memory")  # the probe's tries, shown if it fails
    memory = _memory(cluster, namespace)
    acked: list[Message] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                acked.extend(memory.add_messages(f"s{i % 300}", [Message("human", f"m{i}", id=f"id{i}")]))
                memory.get_recent_messages(f"s{(i * 7) % 300}")
            except BaseException as exc:
                errors.append(exc)
                return
            i += 1

    try:
        writer = threading.Thread(target=load)
        writer.start()
        time.sleep(1.0)
        victim = cluster.masters()[0]
        victim.kill()
        time.sleep(4.0)  # election (node timeout 1 s) while the load goes on
        cluster.wait_ok()
        deadline = time.monotonic() + 20
        while not memory.redis_available and time.monotonic() < deadline:
            time.sleep(0.1)
        probe = [r.getMessage() for r in caplog.records if "probe" in r.getMessage()][-5:]
        assert memory.redis_available, (  # the health check found the new topology
            probe, memory.get_cache_stats(), len(memory._core.health.dirty))
        time.sleep(0.5)
        stop.set()
        writer.join(30)
        assert not errors, errors[:1]
        memory.flush(timeout=30)
        ids = [r[0] for r in pg_fetch(f'SELECT msg_id FROM "{namespace}".messages')]
        assert len(ids) == len(set(ids))  # exactly once
        assert set(ids) == {m.id for m in acked}  # every acknowledged message is stored
        assert len(acked) > 100
        stats = memory.get_cache_stats()
        assert stats.fallback_writes > 0 or stats.redis_errors > 0  # the fault was really felt
        for sid in ("s0", "s1", "s2"):  # after recovery Redis and PostgreSQL agree
            assert [m.seq for m in memory.get_recent_messages(sid)] == [m.seq for m in memory.get_messages(sid)][-30:]
    finally:
        stop.set()
        memory.close()
