"""HybridSaver under faults, on real processes: Redis killed mid-conversation, a writer killed after its puts
were acknowledged, PostgreSQL stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from test_checkpoint import _step

from langchain_hybrid_memory import BacklogFullError, HybridConfig, HybridMemory, StorageUnavailableError
from langchain_hybrid_memory.checkpoint import HybridSaver

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.servers import RedisServer
from hybrid_memory_testing.tcp_proxy import TcpProxy

FAST = {"redis_timeout": 0.3, "health_check_interval": 0.2, "pg_timeout": 2.0, "connect_timeout": 1.0}


def _cfg(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}


def _turn(i: int) -> list[Any]:
    return [HumanMessage(f"q{i}", id=f"h{i}"), AIMessage(f"a{i}", id=f"a{i}")]


def _ids(saver: HybridSaver, thread: str) -> list[str]:
    tup = saver.get_tuple(_cfg(thread))
    assert tup is not None
    return [m.id for m in tup.checkpoint["channel_values"]["messages"]]


def _expected(n: int) -> list[str]:
    return [x for i in range(n) for x in (f"h{i}", f"a{i}")]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_redis_killed_mid_conversation_turns_go_on(redis_server: RedisServer, namespace: str) -> None:
    settings = {"database_url": PG_URL, "redis_url": redis_server.url, "namespace": namespace, **FAST}
    memory = HybridMemory(HybridConfig(**settings))
    try:
        saver = HybridSaver(memory)
        messages: list[Any] = []
        for i in range(3):
            _, messages = _step(saver, _cfg("t"), messages, _turn(i))
        redis_server.kill()  # with the acknowledged puts still waiting in the queue (and the outbox, gone now)
        for i in range(3, 6):  # straight to PostgreSQL
            _, messages = _step(saver, _cfg("t"), messages, _turn(i))
        assert _ids(saver, "t") == _expected(6)
        assert memory.get_cache_stats().redis_up is False
        redis_server.start()  # empty
        memory.flush(timeout=30)
        for i in range(6, 8):
            _, messages = _step(saver, _cfg("t"), messages, _turn(i))
        memory.flush(timeout=30)
        fresh = HybridMemory(HybridConfig(**settings))  # another process: nothing of ours in memory
        try:
            assert _ids(HybridSaver(fresh), "t") == _expected(8)
            assert len(list(HybridSaver(fresh).list(_cfg("t")))) == 8  # every acknowledged checkpoint
        finally:
            fresh.close()
    finally:
        memory.close()


def _killed_writer(namespace: str, thread: str, steps: int, then: str) -> None:
    """A process that takes `steps` agent steps on `thread` (acknowledged, none committed: the write-behind
    waits), runs `then` (Python, `saver` and `config` in scope), and is killed (-9)."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from langchain_core.messages import AIMessage, HumanMessage
        from langchain_hybrid_memory import HybridConfig, HybridMemory
        from langchain_hybrid_memory.checkpoint import HybridSaver
        from test_checkpoint import _step
        memory = HybridMemory(HybridConfig(database_url={PG_URL!r}, redis_url={REDIS_URL!r},
                                           namespace={namespace!r}, write_behind_delay=600.0))
        saver = HybridSaver(memory)
        messages = []
        config = {{"configurable": {{"thread_id": {thread!r}, "checkpoint_ns": ""}}}}
        for i in range({steps}):
            config, messages = _step(saver, config, messages,
                                     [HumanMessage(f"q{{i}}", id=f"h{{i}}"), AIMessage(f"a{{i}}", id=f"a{{i}}")])
    """) + textwrap.dedent(then) + "os.kill(os.getpid(), 9)\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()


def test_a_writer_killed_after_acknowledging_is_committed_by_another_process(namespace: str) -> None:
    thread = f"t-{uuid.uuid4().hex[:8]}"
    _killed_writer(namespace, thread, 4, """
        assert memory.get_cache_stats().backlog == 4  # acknowledged, nothing committed yet
    """)
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".checkpoints')[0][0] == 0
    other = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace))
    try:
        saver = HybridSaver(other)
        assert _ids(saver, thread) == _expected(4)  # from Redis
        assert other.reclaim_orphans(0) > 0  # the janitor's pass, now
        assert pg_fetch(f'SELECT count(*) FROM "{namespace}".checkpoints')[0][0] == 4
        assert len(list(saver.list(_cfg(thread)))) == 4
    finally:
        other.close()


def test_postgres_stopped_puts_acknowledged_hot_reads_served_cold_reads_refused(private_pg: Any,
                                                                                 namespace: str) -> None:
    memory = HybridMemory(HybridConfig(database_url=private_pg.url, redis_url=REDIS_URL, namespace=namespace,
                                       max_backlog=20, **FAST))
    try:
        saver = HybridSaver(memory)
        messages: list[Any] = []
        first = None
        for i in range(2):
            stored, messages = _step(saver, _cfg("t"), messages, _turn(i))
            first = first or stored
        memory.flush()
        private_pg.stop()
        for i in range(2, 8):  # acknowledged from Redis
            _, messages = _step(saver, _cfg("t"), messages, _turn(i))
        assert _ids(saver, "t") == _expected(8)  # the cached thread is served
        with pytest.raises(StorageUnavailableError):
            saver.get_tuple(first)  # an older checkpoint is a PostgreSQL read
        with pytest.raises(StorageUnavailableError):
            list(saver.list(_cfg("t")))
        with pytest.raises(BacklogFullError):
            for i in range(8, 40):
                _, messages = _step(saver, _cfg("t"), messages, _turn(i))
        private_pg.start()
        memory.flush(timeout=30)
        assert memory.get_cache_stats().backlog == 0
        assert len(list(saver.list(_cfg("t")))) >= 8
    finally:
        try:
            socket.create_connection(("127.0.0.1", private_pg.port), timeout=1).close()
        except OSError:
            private_pg.start()
        memory.close()


def _rows(namespace: str, thread: str) -> int:
    return sum(pg_fetch(f'SELECT count(*) FROM "{namespace}".{table} WHERE thread_id = $1', thread)[0][0]
               for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"))


@pytest.mark.parametrize("how", ["delete_thread", "delete_user", "prune"])
def test_a_deleted_thread_stays_deleted_when_another_process_commits_late(
        make_memory: Any, namespace: str, how: str) -> None:
    """Another process acknowledged steps of the thread and commits them only after the delete (its queue holds
    them; the outbox entries were committed by the deleting process): the thread's tombstone keeps them out.
    The same thread id then starts again, and a copy into a deleted id takes writes to its copied checkpoints."""
    late = make_memory(write_behind_delay=600.0, reclaim_interval=600.0)  # commits only when told to
    deleter = make_memory()
    writer, other = HybridSaver(late), HybridSaver(deleter)
    cfg = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "user_id": "u"}}
    messages: list[Any] = []
    for i in range(3):
        stored, messages = _step(writer, cfg, messages, _turn(i))
        writer.put_writes(stored, [("messages", [])], f"task-{i}")
    assert late.get_cache_stats().backlog == 6 and _rows(namespace, "t") == 0
    if how == "delete_thread":
        other.delete_thread("t")
    elif how == "delete_user":
        deleter.delete_user("u")
    else:
        other.prune(["t"], strategy="delete")
    late.flush(timeout=30)  # the late commit of everything acknowledged before the delete
    assert late.get_cache_stats().backlog == 0
    assert _rows(namespace, "t") == 0
    assert other.get_tuple(_cfg("t")) is None and writer.get_tuple(_cfg("t")) is None
    assert list(other.list(_cfg("t"))) == []
    # The thread id is free again: new steps are newer than the tombstone and are kept.
    _step(other, _cfg("t"), [], _turn(9))
    deleter.flush()
    assert _ids(HybridSaver(make_memory()), "t") == ["h9", "a9"]
    assert len(list(other.list(_cfg("t")))) == 1
    # A copy recreates a deleted id: writes to the copied (older) checkpoints are kept, not tombstoned.
    source = _step(other, _cfg("src"), [], _turn(0))[0]
    other.delete_thread("dst")
    stored, _ = _step(other, _cfg("dst"), [], _turn(1))
    other.delete_thread("dst")
    other.copy_thread("src", "dst")
    copied = {"configurable": {**source["configurable"], "thread_id": "dst"}}
    other.put_writes(copied, [("messages", [])], "task-after-copy")
    deleter.flush()
    tup = HybridSaver(make_memory()).get_tuple(copied)
    assert tup is not None and [w[0] for w in tup.pending_writes or []] == ["task-after-copy"]


def test_a_thread_written_around_redis_by_a_process_that_ends_is_not_served_stale(redis_server: RedisServer,
                                                                                  namespace: str) -> None:
    """A process whose Redis link is cut puts a thread's next checkpoint to PostgreSQL directly, then ends
    before its link comes back: another process must read that checkpoint, not the older one Redis still holds."""
    proxy = TcpProxy(redis_server.port).start()
    settings = {"database_url": PG_URL, "namespace": namespace, **FAST}
    cut = HybridMemory(HybridConfig(redis_url=f"redis://127.0.0.1:{proxy.port}/0", **settings))
    other = HybridMemory(HybridConfig(redis_url=redis_server.url, reclaim_interval=0.2, **settings))
    try:
        writer, reader = HybridSaver(cut), HybridSaver(other)
        thread = f"t-{uuid.uuid4().hex[:8]}"
        _, messages = _step(writer, _cfg(thread), [], _turn(0))
        cut.flush()
        assert _ids(reader, thread) == _expected(1)  # from Redis
        proxy.hang()
        _step(writer, _cfg(thread), messages, _turn(1))  # times out, then PostgreSQL
        assert cut.get_cache_stats().redis_errors >= 1
        cut.close()
        deadline = time.monotonic() + 15
        while _ids(reader, thread) != _expected(2) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _ids(reader, thread) == _expected(2)
    finally:
        other.close()
        cut.close()
        proxy.close()


def _legacy(record: bytes) -> bytes:
    """A record in the format checkpoint records had before MessagePack: each part as a 4-byte big-endian length
    (0xFFFFFFFF: None) then its bytes."""
    from langchain_hybrid_memory.checkpoint.store import unpack

    out = []
    for part in unpack(record):
        if part is None:
            out.append(b"\xff\xff\xff\xff")
        else:
            data = part.encode() if isinstance(part, str) else part
            out.append(len(data).to_bytes(4, "big") + data)
    return b"".join(out)


def test_records_in_the_older_format_are_read_and_committed(namespace: str) -> None:
    """A Redis upgraded in place holds hot state and outbox entries written in the older record format: a process
    of this version answers the thread from them and its janitor commits them."""
    import redis

    thread = f"t-{uuid.uuid4().hex[:8]}"
    _killed_writer(namespace, thread, 3, """
        saver.put_writes(config, [("messages", [AIMessage("pending", id="p")])], task_id="task")
    """)
    other = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace))
    try:
        k = other._core.keys.thread(thread)
        r = redis.Redis.from_url(REDIS_URL)
        try:  # rewrite every record of the thread in the older format
            for key in (k.checkpoints, k.writes("")):
                for name, value in r.hgetall(key).items():
                    if name.startswith((b"c\x1f", b"b\x1f")) or key != k.checkpoints:
                        r.hset(key, name, _legacy(value))
            converted = 0
            for xid in r.smembers(k.entries):
                [(_, fields)] = r.xrange(k.outbox, xid, xid)
                r.xdel(k.outbox, xid)
                r.srem(k.entries, xid)
                new = r.xadd(k.outbox, {**fields, b"r": _legacy(fields[b"r"])})
                r.sadd(k.entries, new)
                converted += 1
            assert converted == 4  # 3 puts and the writes, none committed
        finally:
            r.close()
        saver = HybridSaver(other)
        tup = saver.get_tuple(_cfg(thread))  # from Redis
        assert tup is not None
        assert [m.id for m in tup.checkpoint["channel_values"]["messages"]] == _expected(3)
        assert [(t, ch, [m.id for m in v]) for t, ch, v in tup.pending_writes] == [("task", "messages", ["p"])]
        assert other.reclaim_orphans(0) == 4  # the janitor's pass, now
        assert pg_fetch(f'SELECT count(*) FROM "{namespace}".checkpoints')[0][0] == 3
        assert pg_fetch(f'SELECT count(*) FROM "{namespace}".checkpoint_writes')[0][0] == 1
        tuples = list(saver.list(_cfg(thread)))
        assert [m.id for m in tuples[0].checkpoint["channel_values"]["messages"]] == _expected(3)
        assert [[m.id for m in v] for _, _, v in tuples[0].pending_writes] == [["p"]]
    finally:
        other.close()
