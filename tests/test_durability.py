"""No acknowledged message is lost: not when the writer is killed, not when Redis dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message

from conftest import PG_URL, REDIS_URL, pg_fetch

WRITER = textwrap.dedent("""
    import json, sys, time
    from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
    ns, pg, rd = sys.argv[1:4]
    memory = HybridMemory(HybridConfig(database_url=pg, redis_url=rd, namespace=ns,
                                       write_behind_delay=600, reclaim_interval=600))
    acked = []
    for i in range(200):
        out = memory.add_messages(f"s{i % 20}", [Message("human", f"m{i}", id=f"id{i}")])
        acked.append([f"s{i % 20}", out[0].id, out[0].seq])
    print(json.dumps(acked), flush=True)
    time.sleep(600)
""")


def _spawn_and_kill(namespace: str) -> list[list]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, namespace, PG_URL, REDIS_URL],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    acked = json.loads(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # between acknowledgement and persistence
    proc.wait()
    return acked


def _stored(namespace: str) -> list[tuple[str, int, str]]:
    return [(r[0], r[1], r[2]) for r in pg_fetch(
        f'SELECT session_id, seq, msg_id FROM "{namespace}".messages ORDER BY session_id, seq')]


def test_killed_writer_is_finished_by_another_process(namespace):
    acked = _spawn_and_kill(namespace)
    assert len(acked) == 200
    # The schema exists (the writer migrated) but nothing was committed before the kill.
    assert _stored(namespace) == []
    rescuer = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace))
    r = redis.Redis.from_url(REDIS_URL)
    try:
        sids = sorted({a[0] for a in acked})
        for sid in sids:
            # Each session's pending set names exactly its entries in the shared bucket stream...
            k = rescuer.keys.session(sid)
            mine = {xid for xid, f in r.xrange(k.outbox) if f[b"s"] == sid.encode()}
            assert {x.decode() for x in r.smembers(k.entries)} == {x.decode() for x in mine} != set()
        rescuer.invalidate_session(sids[0])
        # ...so a refill finds the dead writer's uncommitted messages without reading anyone else's.
        assert [m.id for m in rescuer.get_recent_messages(sids[0])] == [i for s, i, _ in acked if s == sids[0]]
        assert rescuer.reclaim_orphans(older_than=0) == 200
        assert rescuer.reclaim_orphans(older_than=0) == 0  # the outbox is empty now
        assert not list(r.scan_iter(match=f"{namespace}:*:o", count=1000))  # and so are the pending sets
        stored = _stored(namespace)
        assert sorted((s, q, i) for s, i, q in acked) == stored  # each exactly once, same seq
        for sid in {a[0] for a in acked}:  # Redis and PostgreSQL agree on each session's order
            assert [m.seq for m in rescuer.get_recent_messages(sid)] == [q for s, q, _ in stored if s == sid]
    finally:
        r.close()
        rescuer.close()


def test_janitor_reclaims_without_being_asked(namespace):
    acked = _spawn_and_kill(namespace)
    rescuer = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace,
                                        reclaim_after=0.5, reclaim_interval=0.2))
    try:
        rescuer.start()
        deadline = time.monotonic() + 20
        while len(_stored(namespace)) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_stored(namespace)) == 200
        assert rescuer.get_cache_stats().reclaimed == 200
    finally:
        rescuer.close()


def test_redis_killed_after_ack_process_still_persists(private_redis, namespace):
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=private_redis.url, namespace=namespace,
                                       write_behind_delay=600, redis_timeout=0.3, health_check_interval=0.2))
    try:
        sent = []
        for i in range(100):
            sent += memory.add_messages(f"s{i % 5}", [Message("human", f"m{i}")])
        assert _stored(namespace) == []
        private_redis.kill()  # the outbox stream dies with it
        memory.flush(timeout=30)  # this process still holds every acknowledged write
        stored = _stored(namespace)
        assert sorted((f"s{i % 5}", m.seq, m.id) for i, m in enumerate(sent)) == stored
    finally:
        memory.close()
