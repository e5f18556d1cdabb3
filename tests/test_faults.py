"""Fault injection: nothing acknowledged is lost, one order per session, no stale read after recovery.

The load scenarios (messages, then checkpoints) live in `hybrid_memory_testing.faults.scenarios` (real
redis-server, PostgreSQL and writer processes, nothing mocked); each one's verdict becomes a row of the table
printed at the end of this module (also written to $FAULT_TABLE_FILE, default <tmp>/hybrid-memory-faults.txt).
`python benchmarks/fault_suite.py` runs the same scenarios standalone. Below them: deterministic versions of the
cache faults (corruption, single-key eviction) that pin each failure mode down, a test of the proxy, and tests
that the verdict itself can fail.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from langchain_hybrid_memory import HybridConfig, HybridMemory, HybridMemoryError, Message
from langchain_hybrid_memory.messages import decode_element

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.faults import scenarios
from hybrid_memory_testing.faults.harness import FAST, FaultRun, Op, Outcome, format_table, read_log
from hybrid_memory_testing.servers import PostgresServer, RedisServer
from hybrid_memory_testing.tcp_proxy import TcpProxy

ROWS: list[Outcome] = []


@pytest.fixture(scope="module")
def fault_table(request: pytest.FixtureRequest) -> Iterator[list[Outcome]]:
    """Collects each scenario's row; prints the table at the end of the module, whatever -s says."""
    yield ROWS
    if not ROWS:
        return
    text = "\n\nFault injection\n" + format_table(ROWS) + "\n"
    path = Path(os.environ.get("FAULT_TABLE_FILE") or Path(tempfile.gettempdir()) / "hybrid-memory-faults.txt")
    path.write_text(text)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        sys.stdout.write(text)
        return
    with capman.global_and_fixture_disabled():
        sys.stdout.write(text + f"(written to {path})\n")
        sys.stdout.flush()


def _run(pg: PostgresServer, scenario: Callable[[PostgresServer], Outcome]) -> Outcome:
    outcome = scenario(pg)
    ROWS.append(outcome)
    print(outcome.summary())  # shown by pytest when the test fails
    return outcome


def _assert_exact(o: Outcome, *, max_stall: float) -> None:
    """What every fault must leave: nothing lost, no duplicate, one order, no stale read, a bounded stall."""
    why = o.summary()
    assert o.writers >= 2 and o.sessions >= 200 and o.acked >= 1000, f"the load did not happen\n{why}"
    assert o.reads >= 200, why
    assert o.lost == 0, why
    assert o.duplicated == 0, why
    assert o.out_of_order == 0, why
    assert o.cache_mismatch == 0, why
    assert o.stale_outside == 0 and o.stale_after_recovery == 0, why
    assert o.other_errors == 0, why  # only typed errors (StorageUnavailableError ...) may reach a caller
    assert o.max_stall < max_stall, why


PG_BOUND = 3 * FAST["pg_timeout"] + 2  # pool acquire + statement, both bounded by pg_timeout, plus slack
REDIS_BOUND = 3.0  # redis_timeout 0.3, one retry, a reconnect: about a second; 3 s on a noisy 2-core box


@pytest.mark.timeout(90)
def test_fault_1_redis_killed_mid_load_restarts_empty(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.redis_kill)
    _assert_exact(o, max_stall=REDIS_BOUND)
    assert o.notes["acked_after_restart"] > 500  # the load went on after the restart


@pytest.mark.timeout(120)
def test_fault_2_postgres_stopped_ten_seconds(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.pg_stop)
    _assert_exact(o, max_stall=PG_BOUND)
    assert o.notes["acked_while_pg_down"] > 1000  # writes kept being acknowledged from Redis


@pytest.mark.timeout(120)
def test_fault_3_writer_killed_between_ack_and_persistence(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.writer_kill)
    _assert_exact(o, max_stall=REDIS_BOUND)
    assert o.notes["pending_at_kill"] > 0, "the kill must catch acknowledged messages not yet in PostgreSQL"
    assert "verifier_reclaimed" not in o.notes, "the survivors' janitors must commit the orphans by themselves"


@pytest.mark.timeout(120)
def test_fault_4_network_cut_hangs_connections(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.network_cut)
    _assert_exact(o, max_stall=2 * FAST["pg_timeout"] + 2)  # pool acquire and statement each take pg_timeout


@pytest.mark.timeout(120)
def test_fault_5a_eviction_under_memory_pressure(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.eviction)
    assert o.notes["evicted_keys_by_lru"] > 0, "maxmemory must really have evicted keys"
    _assert_exact(o, max_stall=REDIS_BOUND)


@pytest.mark.timeout(120)
def test_fault_5b_single_key_evictions(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.single_key_eviction)
    _assert_exact(o, max_stall=REDIS_BOUND)


@pytest.mark.timeout(120)
def test_fault_6_corrupted_cache_entries(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.corruption)
    assert sum(o.notes["corrupted"].values()) >= 20
    _assert_exact(o, max_stall=REDIS_BOUND)


@pytest.mark.timeout(120)
def test_fault_7_concurrent_writers_on_the_same_sessions(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, scenarios.concurrent_writers)
    _assert_exact(o, max_stall=REDIS_BOUND)


# -- the same faults with LangGraph agents stepping threads through HybridSaver ------------------------------
@pytest.mark.timeout(120)
def test_fault_1c_checkpoints_redis_killed_mid_load(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, lambda pg: scenarios.redis_kill(pg, scenarios.CHECKPOINT))
    _assert_exact(o, max_stall=REDIS_BOUND)
    assert o.notes["acked_after_restart"] > 500
    assert o.notes["hot_threads_compared"] > 100  # Redis held the threads again, and held them right


@pytest.mark.timeout(120)
def test_fault_2c_checkpoints_postgres_stopped(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, lambda pg: scenarios.pg_stop(pg, scenarios.CHECKPOINT))
    _assert_exact(o, max_stall=PG_BOUND)
    assert o.notes["acked_while_pg_down"] > 1000  # steps kept being acknowledged from Redis


@pytest.mark.timeout(120)
def test_fault_3c_checkpoints_writer_killed_after_ack(private_pg: PostgresServer, fault_table: Any) -> None:
    o = _run(private_pg, lambda pg: scenarios.writer_kill(pg, scenarios.CHECKPOINT))
    _assert_exact(o, max_stall=REDIS_BOUND)
    assert o.notes["pending_at_kill"] > 0, "the kill must catch acknowledged checkpoints not yet in PostgreSQL"
    assert "verifier_reclaimed" not in o.notes, "the survivors' janitors must commit the orphans by themselves"


# -- deterministic cache faults: one failure mode each, on the shared servers in a private namespace -----------
def _cache_ok(memory: HybridMemory, sid: str, expected: list[str]) -> None:
    """Reads give exactly `expected` (hot and after a refill) and the cache holds only decodable elements."""
    for _ in range(2):
        assert [m.content for m in memory.get_recent_messages(sid)] == expected
    r = redis.Redis.from_url(REDIS_URL)
    try:
        k = memory.keys.session(sid)
        for el in r.lrange(k.window, 0, -1):
            try:
                decode_element(el)
            except Exception as exc:  # the engine's own decoder
                raise AssertionError(f"a corrupt element stayed cached: {el[:40]!r}") from exc
    finally:
        r.close()


@pytest.fixture
def cached(make_memory: Callable[..., HybridMemory]) -> Iterator[tuple[HybridMemory, redis.Redis, str, list[str]]]:
    memory = make_memory(**{k: v for k, v in FAST.items() if k != "max_session_messages"})
    texts = [f"m{i}" for i in range(6)]
    memory.add_messages("s", [Message("human", t) for t in texts], user_id="alice")
    memory.flush()
    assert [m.content for m in memory.get_recent_messages("s")] == texts  # cached now
    r = redis.Redis.from_url(REDIS_URL)
    yield memory, r, "s", texts
    r.close()


GARBAGE: dict[str, Callable[[bytes], bytes]] = {
    "binary": lambda el: b"\xff\x00garbage",
    "torn": lambda el: el[: len(el) // 2],
    "empty": lambda el: b"",
    "json-without-fields": lambda el: b"{}",
    "other-json": lambda el: b'[1, "x", null]',
    "trailing-junk": lambda el: el + b"\xff",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_corrupt_window_element_is_a_miss_and_repaired(cached: Any, kind: str) -> None:
    memory, r, sid, texts = cached
    window = memory.keys.session(sid).window
    r.lset(window, 2, GARBAGE[kind](r.lindex(window, 2)))
    _cache_ok(memory, sid, texts)
    memory.add_messages(sid, [Message("human", "after")])
    _cache_ok(memory, sid, [*texts, "after"])


def test_corrupt_meta_seq_is_repaired(cached: Any) -> None:
    memory, r, sid, texts = cached
    last = memory.get_recent_messages(sid)[-1].seq
    r.hset(memory.keys.session(sid).meta, "seq", "garbage")
    out = memory.add_messages(sid, [Message("human", "after")])
    assert out[0].seq is not None and last is not None and out[0].seq > last
    _cache_ok(memory, sid, [*texts, "after"])


def test_corrupt_meta_owner_is_repaired(cached: Any) -> None:
    memory, r, sid, texts = cached
    r.hset(memory.keys.session(sid).meta, "uid", b"\xff\xfe")
    _cache_ok(memory, sid, texts)
    assert [m.content for m in memory.get_recent_messages(sid, user_id="alice")] == texts


def test_window_key_of_wrong_type_is_repaired(cached: Any) -> None:
    memory, r, sid, texts = cached
    k = memory.keys.session(sid)
    r.delete(k.window)
    r.set(k.window, "not a list")
    _cache_ok(memory, sid, texts)
    memory.add_messages(sid, [Message("human", "after")])
    _cache_ok(memory, sid, [*texts, "after"])


@pytest.mark.parametrize("then", ["add", "cold read"])
def test_pending_set_of_wrong_type_is_replaced(cached: Any, then: str) -> None:
    """Something else wrote a string where the session's pending set lives: the next add or refill replaces
    it, and nothing is lost or doubled."""
    memory, r, sid, texts = cached
    k = memory.keys.session(sid)
    r.set(k.entries, "not a set")
    if then == "cold read":
        memory.invalidate_session(sid)
        _cache_ok(memory, sid, texts)
    memory.add_messages(sid, [Message("human", "after")])
    _cache_ok(memory, sid, [*texts, "after"])
    memory.flush()
    assert r.type(k.entries) == b"none"  # replaced by a set, emptied by the acknowledgement
    assert [m.content for m in memory.get_messages(sid)] == [*texts, "after"]


def _same_bucket(memory: HybridMemory, sid: str) -> str:
    n = memory.keys.bucket(sid)
    return next(f"other-{i}" for i in range(100_000) if memory.keys.bucket(f"other-{i}") == n)


def test_poison_outbox_entry_does_not_block_its_bucket(make_memory: Callable[..., HybridMemory]) -> None:
    dead = make_memory(write_behind_delay=600.0, reclaim_interval=600.0)
    sid = "victim"
    other = _same_bucket(dead, sid)
    dead.add_messages(other, [Message("human", "orphan")])  # acknowledged, only in the outbox
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.xadd(dead.keys.session(sid).outbox, {"s": sid, "u": "", "bad-id": b"garbage without a seq"})
    finally:
        r.close()
    rescuer = make_memory()
    rescuer.add_messages(sid, [Message("human", "hello")])  # a cold session of the poisoned bucket loads
    assert [m.content for m in rescuer.get_recent_messages(sid)] == ["hello"]
    assert rescuer.reclaim_orphans(0) >= 1  # the valid orphan is committed despite the poison next to it
    assert [m.content for m in rescuer.get_messages(other)] == ["orphan"]


EVICTED_WINDOW_BUG = ("engine bug: READ and APPEND (cache.py) treat the meta hash's presence as 'window "
                      "complete' without checking the list: when LRU evicts only the window list, the session "
                      "is served empty/short and appends build a window of the new messages only")


def test_evicted_window_list_is_reloaded(cached: Any) -> None:
    memory, r, sid, texts = cached
    r.delete(memory.keys.session(sid).window)  # what allkeys-lru may do to one key
    _cache_ok(memory, sid, texts)
    memory.add_messages(sid, [Message("human", "after")])
    _cache_ok(memory, sid, [*texts, "after"])


def test_evicted_window_list_then_write_keeps_the_history(cached: Any) -> None:
    memory, r, sid, texts = cached
    r.delete(memory.keys.session(sid).window)
    memory.add_messages(sid, [Message("human", "after")])
    _cache_ok(memory, sid, [*texts, "after"])


def test_evicted_meta_hash_is_reloaded(cached: Any) -> None:
    memory, r, sid, texts = cached
    r.delete(memory.keys.session(sid).meta)
    _cache_ok(memory, sid, texts)
    memory.add_messages(sid, [Message("human", "after")], user_id="alice")
    _cache_ok(memory, sid, [*texts, "after"])


def test_whole_session_evicted_is_reloaded(cached: Any) -> None:
    memory, r, sid, texts = cached
    k = memory.keys.session(sid)
    r.delete(k.window, k.meta, k.ids)
    memory.add_messages(sid, [Message("human", "after")], user_id="alice")
    _cache_ok(memory, sid, [*texts, "after"])


def test_evicted_id_set_does_not_duplicate_a_retry(cached: Any) -> None:
    memory, r, sid, texts = cached
    msg = Message("human", "retried", id="retry-1")
    first = memory.add_messages(sid, [msg])
    r.delete(memory.keys.session(sid).ids)
    again = memory.add_messages(sid, [msg])  # the client retries (it never saw the first answer)
    assert again[0].seq == first[0].seq
    _cache_ok(memory, sid, [*texts, "retried"])


def test_an_evicting_policy_makes_writes_acknowledged_after_the_commit(make_memory: Callable[..., HybridMemory]
                                                                      ) -> None:
    """allkeys-lru may evict the outbox stream while a write waits in it: another process would then refill the
    session without that write, and cache it. Under such a policy a write is acknowledged once committed."""
    server = RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        writer = make_memory(redis_url=server.url, write_behind_delay=600.0, reclaim_interval=600.0)
        reader = make_memory(redis_url=server.url, reclaim_interval=600.0)
        writer.add_messages("s", [Message("human", "one")])
        writer.add_messages("s", [Message("human", "two")])
        assert writer.get_cache_stats().backlog == 0  # committed before add_messages returned
        k = writer.keys.session("s")
        r = redis.Redis.from_url(server.url)
        try:
            r.delete(k.outbox, k.window, k.meta, k.ids)  # LRU picked these keys
        finally:
            r.close()
        assert [m.content for m in reader.get_recent_messages("s")] == ["one", "two"]
        assert [m.content for m in writer.get_recent_messages("s")] == ["one", "two"]
        writer.close()
        reader.close()
    finally:
        server.stop()


def test_a_policy_that_spares_the_outbox_keeps_write_behind(make_memory: Callable[..., HybridMemory]) -> None:
    server = RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru").start()
    try:
        memory = make_memory(redis_url=server.url, write_behind_delay=600.0, reclaim_interval=600.0)
        memory.add_messages("s", [Message("human", "one")])
        assert memory.get_cache_stats().backlog == 1  # acknowledged from Redis, not committed yet
        memory.close()
    finally:
        server.stop()


def test_refill_racing_a_commit_keeps_the_acknowledged_write(make_memory: Callable[..., HybridMemory]) -> None:
    """Regression: a refill read PostgreSQL before the outbox, so another process's batch committed after that
    snapshot and deleted from the outbox before the FILL was in neither, and was cached without it."""
    writer = make_memory(write_behind_delay=600.0, reclaim_interval=600.0)
    writer.add_messages("s", [Message("human", "one")])
    writer.flush()
    writer.add_messages("s", [Message("human", "two")])  # acknowledged: in the writer's queue and the outbox
    writer.invalidate_session("s")  # the window leaves the cache (TTL, eviction, invalidation)
    pg = urlsplit(PG_URL)
    with TcpProxy(pg.port or 5432, pg.hostname or "127.0.0.1") as proxy:
        reader = make_memory(database_url=urlunsplit(pg._replace(netloc=f"{pg.username}@127.0.0.1:{proxy.port}")),
                             pg_pool_min=1, pg_pool_max=1, reclaim_interval=600.0)
        assert reader.get_recent_messages("warm-up") == []  # prepares the window query on its one connection
        proxy.hang(up=False)  # PostgreSQL runs the reader's next query now; its answer is held back
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            read = pool.submit(reader.get_recent_messages, "s")
            time.sleep(0.5)
            writer.flush()  # "two" is committed and its outbox entry deleted, after the reader's snapshot
            proxy.resume()
            got = [m.content for m in read.result(15)]
    assert got == ["one", "two"]  # "two" was acknowledged before the read began
    assert [m.content for m in writer.get_recent_messages("s")] == ["one", "two"]  # and the writer reads it too


def test_a_write_whose_answer_was_lost_is_not_applied_twice(make_memory: Callable[..., HybridMemory],
                                                            private_redis: Any) -> None:
    """Regression: an APPEND whose answer was lost did run; the write was then also acknowledged from
    PostgreSQL under another seq, and a refill merged the outbox entry by seq: the message appeared twice."""
    with TcpProxy(private_redis.port) as proxy:
        memory = make_memory(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_timeout=0.3,
                             health_check_interval=0.2, connect_timeout=1.0, reclaim_after=30.0)
        memory.add_messages("s", [Message("human", "one")])
        memory.flush()
        assert _contents(memory.get_recent_messages("s")) == ["one"]  # the hot path's connection is warm
        proxy.hang(up=False)  # requests still reach Redis and run; their answers are lost
        out = memory.add_messages("s", [Message("human", "two", id="two")])  # times out, fails over
        proxy.resume()
        _wait_for(lambda: memory.redis_available)
        got = memory.get_recent_messages("s")
        assert [m.content for m in got] == ["one", "two"]
        assert got[-1].seq == out[0].seq  # the acknowledged order
        memory.flush()
        assert [(m.id, m.seq) for m in memory.get_messages("s")] == [(m.id, m.seq) for m in got]


def _contents(msgs: list[Message]) -> list[Any]:
    return [m.content for m in msgs]


def _wait_for(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# -- the proxy and the verdict: both must be able to fail --------------------------------------------------------
NO_RETRY = Retry(NoBackoff(), 0)


def test_tcp_proxy_hangs_without_closing_and_resumes(private_redis: Any) -> None:
    with TcpProxy(private_redis.port) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=NO_RETRY)
        assert client.ping()
        proxy.hang()
        t0 = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.ping()  # the connection is open and silent: only the client's timeout ends the wait
        assert time.monotonic() - t0 < 1.0
        fresh = redis.Redis(port=proxy.port, socket_timeout=0.3, socket_connect_timeout=0.3, retry=NO_RETRY)
        with pytest.raises(redis.TimeoutError):
            fresh.ping()  # new connections are accepted but go nowhere
        proxy.resume()
        assert redis.Redis(port=proxy.port, socket_timeout=2).ping()
        assert proxy.connections >= 3


def test_tcp_proxy_can_hold_only_the_answers(private_redis: Any) -> None:
    with TcpProxy(private_redis.port) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=0.3, retry=NO_RETRY)
        client.set("k", "v0")
        proxy.hang(up=False)
        with pytest.raises(redis.TimeoutError):
            client.set("k", "v1")  # the request arrives and runs; only its answer is held
        assert redis.Redis(port=private_redis.port).get("k") == b"v1"
        proxy.resume()


def _verdict_run() -> FaultRun:
    run = FaultRun("selftest", pg_url="postgresql://unused", redis_url="redis://unused")
    run.window = 3
    return run


def _op(kind: str, sid: str, ids: list[str], seqs: list[int], t0: float, t1: float, wid: str = "w") -> Op:
    return Op(wid, kind, sid, ids, seqs, t0, t1)


def test_verdict_counts_lost_duplicated_and_out_of_order() -> None:
    run = _verdict_run()
    stored = {"s": [(1, "a"), (2, "c"), (3, "b")], "t": [(1, "a")]}
    ops = [_op("a", "s", ["a"], [1], 0, 1), _op("a", "s", ["b"], [2], 2, 3),  # b finished before c began...
           _op("a", "s", ["c"], [3], 4, 5),  # ...yet c is stored first; both seqs differ from the acknowledged
           _op("a", "s", ["d"], [4], 6, 7)]  # never stored
    run._check_acks(ops, stored)
    o = run.outcome
    assert (o.acked, o.lost, o.duplicated) == (4, 1, 1)
    assert o.out_of_order >= 3  # two seq mismatches and one real-time inversion
    run.cleanup()


def test_verdict_flags_stale_short_and_phantom_reads() -> None:
    run = _verdict_run()
    stored = {"s": [(1, "a"), (2, "b"), (3, "c"), (4, "d")]}
    acks = [_op("a", "s", [m], [q], t, t + 0.5) for t, (q, m) in enumerate(stored["s"])]
    reads = [
        _op("r", "s", ["a", "b"], [1, 2], 2.6, 2.7),  # c was acknowledged at 2.5: stale
        _op("r", "s", ["c", "d"], [3, 4], 4, 4.1),  # window of 3 cut short to 2
        _op("r", "s", ["b", "x"], [2, 9], 4, 4.1),  # x is not stored: phantom
        _op("r", "s", ["a", "c", "d"], [1, 3, 4], 4, 4.1),  # a hole
        _op("r", "s", ["b", "c", "d"], [2, 3, 4], 4, 4.1),  # correct
        _op("r", "s", ["a"], [1], 0.8, 0.9),  # correct: b was not acknowledged yet
    ]
    run._check_reads([*acks, *reads], stored)
    assert (run.outcome.reads, run.outcome.stale_outside) == (6, 4)
    run.windows = [[2.0, 3.0]]
    run.outcome = Outcome("selftest")
    run._check_reads([*acks, *reads], stored)
    assert (run.outcome.stale_in_fault, run.outcome.stale_outside) == (1, 3)
    run.cleanup()


def test_writer_process_reports_what_it_acknowledged(namespace: str) -> None:
    """The writer's log is the ground truth of the suite: check it against PostgreSQL once, directly."""
    run = FaultRun("writer-selftest", pg_url=PG_URL, redis_url=REDIS_URL, namespace=namespace)
    try:
        w = run.start_writer("w0", ["a", "b"], rate=200, new_every=0)
        run.wait_ready([w])
        run.wait_acked(50)
        w.terminate()
        ops = [o for o in read_log(w.log, "w0")[0] if o.kind == "a"]
        acked = {(o.sid, m, q) for o in ops for m, q in zip(o.ids, o.seqs, strict=True)}
        stored = {(r[0], r[2], r[1]) for r in pg_fetch(f'SELECT session_id, seq, msg_id FROM "{namespace}".messages')}
        assert len(acked) >= 50 and acked <= stored
    finally:
        run.cleanup()


def test_engine_errors_in_the_load_are_typed() -> None:
    """The writers count anything but HybridMemoryError as a failure; make sure that base class is what the
    engine raises for an unreachable store, so 'typed' means something."""
    memory = HybridMemory(HybridConfig(database_url="postgresql://postgres@127.0.0.1:1/x", connect_timeout=0.3,
                                       redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(HybridMemoryError):
        memory.get_recent_messages("s")
    memory.close()
