"""The faults the engine must survive, each against real processes: `scenario(pg) -> Outcome`.

`pg` is a private PostgreSQL (`hybrid_memory_testing.servers.PostgresServer`, already started) that the
scenario may stop; every scenario starts its own private redis-server and writer processes, and leaves the
servers running (or restarted) as it found them. Timings are short on purpose (the whole suite must stay within
minutes) but each fault lasts several detection periods of the configured bounds (`FAST`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import redis

from ..servers import PostgresServer, RedisServer, wait_port
from ..tcp_proxy import TcpProxy
from .harness import FaultRun, Outcome, pg_fetch, read_log


def _load_for(run: FaultRun, seconds: float) -> None:
    """Let the writers run for `seconds` (they pace themselves)."""
    time.sleep(seconds)


def _acked_now(run: FaultRun) -> int:
    return sum(w.acked() for w in run.writers)


CHECKPOINT = "checkpoint"  # the writers are LangGraph agents stepping threads through HybridSaver


def _label(name: str, mode: str) -> str:
    return f"{name[0]}c checkpoints: {name[2:]}" if mode == CHECKPOINT else name


def redis_kill(pg: PostgresServer, mode: str = "messages") -> Outcome:
    """1. kill -9 of Redis mid-load; restarted empty (no persistence) after 3 seconds."""
    server = RedisServer().start()
    run = FaultRun(_label("1 redis kill -9, restart empty", mode), pg_url=pg.url, redis_url=server.url, mode=mode)
    try:
        run.start_writers(2, 150)
        run.wait_acked(400)
        _load_for(run, 1.5)
        run.fault_begins()
        server.kill()
        _load_for(run, 3.0)
        server.start()
        run.recovered(grace=1.0)
        before = _acked_now(run)
        _load_for(run, 4.0)
        run.outcome.notes["acked_after_restart"] = _acked_now(run) - before
        return run.finish()
    finally:
        run.cleanup()
        server.stop()


def pg_stop(pg: PostgresServer, mode: str = "messages") -> Outcome:
    """2. PostgreSQL stopped for ten seconds mid-load (immediate shutdown), then started."""
    server = RedisServer().start()
    run = FaultRun(_label("2 postgres stopped 10s", mode), pg_url=pg.url, redis_url=server.url, mode=mode)
    try:
        run.start_writers(2, 150)
        run.wait_acked(400)
        _load_for(run, 1.0)
        run.fault_begins()
        pg.stop()
        before = _acked_now(run)
        _load_for(run, 10.0)
        run.outcome.notes["acked_while_pg_down"] = _acked_now(run) - before
        pg.start()
        run.recovered(grace=1.0)
        _load_for(run, 4.0)
        return run.finish()
    finally:
        run.cleanup()
        server.stop()
        _ensure_pg(pg)


def _ensure_pg(pg: PostgresServer) -> None:
    try:
        wait_port(pg.port, timeout=0.3)
    except TimeoutError:
        pg.start()


def writer_kill(pg: PostgresServer, mode: str = "messages") -> Outcome:
    """3. kill -9 of a writer holding acknowledged, unpersisted messages; a replacement takes its sessions over.

    The victim never persists by itself (write_behind_delay=600, janitor off), so whatever it acknowledged in the
    last `reclaim_after` seconds is, at the kill, only in the Redis outbox: exactly "between acknowledgement and
    persistence". Survivors' janitors must commit it; the replacement keeps writing the same sessions.
    """
    server = RedisServer().start()
    run = FaultRun(_label("3 writer kill -9 after ack", mode), pg_url=pg.url, redis_url=server.url,
                   config={"reclaim_after": 1.5}, mode=mode)
    try:
        own = {w: run.own_sessions(w, 100) for w in ("w0", "w1", "victim")}
        everyone = [s for o in own.values() for s in o]
        writers = [run.start_writer(w, own[w], cross=[s for s in everyone if s not in own[w]]) for w in ("w0", "w1")]
        victim = run.start_writer("victim", own["victim"], cross=own["w0"],
                                  config={"write_behind_delay": 600.0, "reclaim_interval": 600.0})
        run.wait_ready([*writers, victim])
        run.wait_acked(500)
        _load_for(run, 1.5)
        run.fault_begins()
        victim.kill()
        if mode == CHECKPOINT:
            acked = {op.cid for op in read_log(victim.log, victim.wid)[0] if op.kind == "a"}
            stored = {r[0] for r in pg_fetch(pg.url, f'SELECT checkpoint_id FROM "{run.namespace}".checkpoints')}
        else:
            acked = {m for op in read_log(victim.log, victim.wid)[0] if op.kind == "a" for m in op.ids}
            stored = {r[0] for r in pg_fetch(pg.url, f'SELECT msg_id FROM "{run.namespace}".messages')}
        run.outcome.notes["victim_acked"] = len(acked)
        run.outcome.notes["pending_at_kill"] = len(acked - stored)
        sessions = sorted({op.sid for op in read_log(victim.log, victim.wid)[0] if op.kind == "a"} | set(own["victim"]))
        replacement = run.start_writer("heir", sessions, cross=own["w1"])
        run.wait_ready([replacement])
        run.recovered(grace=0.5)
        _load_for(run, 4.0)
        return run.finish()
    finally:
        run.cleanup()
        server.stop()


def network_cut(pg: PostgresServer) -> Outcome:
    """4. A TCP proxy in front of Redis, then of PostgreSQL, stops forwarding: connections hang, nothing closes.

    Calls must give up within the configured bounds (redis_timeout, pg_timeout) and the load must go on.
    """
    server = RedisServer().start()
    rproxy = TcpProxy(server.port).start()
    pproxy = TcpProxy(pg.port).start()
    run = FaultRun("4 network cut (hung proxy)", pg_url=pg.url, redis_url=server.url,
                   writer_pg_url=f"postgresql://postgres@127.0.0.1:{pproxy.port}/postgres",
                   writer_redis_url=f"redis://127.0.0.1:{rproxy.port}/0")
    try:
        run.start_writers(2, 150)
        run.wait_acked(400)
        _load_for(run, 1.0)
        run.fault_begins()
        rproxy.hang()
        _load_for(run, 3.0)
        rproxy.resume()
        run.recovered(grace=1.0)
        _load_for(run, 3.0)
        run.fault_begins()
        pproxy.hang()
        _load_for(run, 4.0)
        pproxy.resume()
        run.recovered(grace=1.0)
        _load_for(run, 4.0)
        return run.finish()
    finally:
        run.cleanup()
        rproxy.close()
        pproxy.close()
        server.stop()


def _every(seconds: float, until: float, action: Callable[[], None]) -> None:
    while time.monotonic() < until:
        action()
        time.sleep(seconds)


def eviction(pg: PostgresServer, *, single_keys: bool = False) -> Outcome:
    """5. Memory pressure: maxmemory + allkeys-lru. Redis evicts whole keys of its choice at any moment, so a
    session may lose its window list, its meta hash or its id set independently. With `single_keys` the parent
    also evicts single keys at random, exactly as LRU may, so every combination happens in a short run. Nothing
    may be lost and every read must be exact: an evicted window is reloaded, never served short (under this
    policy the engine acknowledges writes after the commit, since the outbox itself may be evicted)."""
    server = RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru", "--maxmemory-samples", "3").start()
    name = "5b eviction + single-key evictions" if single_keys else "5a eviction (allkeys-lru 2mb)"
    run = FaultRun(name, pg_url=pg.url, redis_url=server.url)
    rng = random.Random(5)
    admin = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        writers = run.start_writers(2, 150, payload=600)
        sessions = [s for w in writers for s in w.plan["own"]]
        run.wait_acked(300)

        def evict_some() -> None:
            if not single_keys:
                return
            for sid in rng.sample(sessions, 3):
                k = run.keys.session(sid)
                admin.delete(rng.choice([k.window, k.meta, k.ids]))

        _every(0.25, time.monotonic() + 7.0, evict_some)
        info = admin.info("stats")
        run.outcome.notes["evicted_keys_by_lru"] = int(info.get("evicted_keys", 0))
        return run.finish()
    finally:
        admin.close()
        run.cleanup()
        server.stop()


def single_key_eviction(pg: PostgresServer) -> Outcome:
    return eviction(pg, single_keys=True)


def corruption(pg: PostgresServer) -> Outcome:
    """6. Corrupted cache entries mid-load: garbage window elements, elements cut in half (a torn write), a meta
    hash with a garbage seq or a non-UTF-8 owner. Each must be treated as a miss and repaired, never returned."""
    server = RedisServer().start()
    run = FaultRun("6 corrupted cache entries", pg_url=pg.url, redis_url=server.url)
    rng = random.Random(6)
    admin = redis.Redis.from_url(server.url, socket_timeout=5)
    done = {"element": 0, "torn": 0, "seq": 0, "uid": 0}
    try:
        writers = run.start_writers(2, 150)
        sessions = [s for w in writers for s in w.plan["own"]]
        run.wait_acked(300)

        def corrupt_some() -> None:
            for sid in rng.sample(sessions, 2):
                k = run.keys.session(sid)
                n = admin.llen(k.window)
                kind = rng.choice(list(done))
                if kind in ("element", "torn") and n:
                    i = rng.randrange(n)
                    good = bytes(admin.lindex(k.window, i) or b"")
                    bad = b"\xff\x00garbage" if kind == "element" else good[: len(good) // 2]  # a torn write
                    admin.lset(k.window, i, bad)
                elif kind == "seq" and admin.exists(k.meta):
                    admin.hset(k.meta, "seq", "garbage")
                elif kind == "uid" and admin.exists(k.meta):
                    admin.hset(k.meta, "uid", b"\xff\xfe")
                else:
                    continue
                done[kind] += 1

        _every(0.3, time.monotonic() + 6.0, corrupt_some)
        run.outcome.notes["corrupted"] = dict(done)
        return run.finish()
    finally:
        admin.close()
        run.cleanup()
        server.stop()


def concurrent_writers(pg: PostgresServer) -> Outcome:
    """7. Three writer processes with two threads each hammer the same twelve sessions (and their own): no lost
    update, one order per session, the same in every read, in Redis and in PostgreSQL."""
    server = RedisServer().start()
    run = FaultRun("7 concurrent writers, same sessions", pg_url=pg.url, redis_url=server.url)
    shared = [f"hot-{i}" + (" {x}" if i % 4 == 0 else "") for i in range(12)]
    try:
        run.start_writers(3, 70, shared=shared, shared_ratio=0.6, threads=2, rate=60, cross=False)
        run.wait_acked(300)
        _load_for(run, 8.0)
        return run.finish()
    finally:
        run.cleanup()
        server.stop()


ALL: list[tuple[str, Callable[[PostgresServer], Outcome]]] = [
    ("redis_kill", redis_kill),
    ("pg_stop", pg_stop),
    ("writer_kill", writer_kill),
    ("network_cut", network_cut),
    ("eviction", eviction),
    ("single_key_eviction", single_key_eviction),
    ("corruption", corruption),
    ("concurrent_writers", concurrent_writers),
    ("checkpoint_redis_kill", lambda pg: redis_kill(pg, CHECKPOINT)),
    ("checkpoint_pg_stop", lambda pg: pg_stop(pg, CHECKPOINT)),
    ("checkpoint_writer_kill", lambda pg: writer_kill(pg, CHECKPOINT)),
]
