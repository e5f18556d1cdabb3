"""HybridSaver, the LangGraph checkpointer: the official conformance suite, and storage that follows each step."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from langchain_hybrid_memory import HybridMemory
from langchain_hybrid_memory.checkpoint import HybridSaver


async def test_conformance_suite_reports_full(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()

    @checkpointer_test(name="HybridSaver")
    async def saver() -> AsyncGenerator[HybridSaver, None]:
        yield HybridSaver(memory)

    report = await validate(saver)
    report.print_report()  # shown when the test fails
    detected = {cap for cap, result in report.results.items() if result.detected}
    assert detected == {cap.value for cap in ALL_CAPABILITIES}  # all eight: put ... prune
    assert report.conformance_level() == "FULL"


def _step(saver: HybridSaver, config: dict[str, Any], messages: list[Any], new: list[Any]
          ) -> tuple[dict[str, Any], list[Any]]:
    """One agent step through the saver: read the latest checkpoint, then store the next with `new` appended."""
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    tup = saver.get_tuple(config)
    base = tup.checkpoint if tup is not None else empty_checkpoint()
    messages = [*messages, *new]
    version = saver.get_next_version(base["channel_versions"].get("messages"), None)
    checkpoint = create_checkpoint(base, None, 1)
    checkpoint["channel_values"] = {"messages": messages}
    checkpoint["channel_versions"] = {**base["channel_versions"], "messages": version}
    stored = saver.put(config if tup is None else tup.config, checkpoint, {"source": "loop", "step": 1},
                       {"messages": version})
    return stored, messages


def test_messages_are_stored_as_deltas_and_read_back_whole(make_memory: Callable[..., HybridMemory]) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, message_to_dict

    from conftest import pg_fetch

    memory = make_memory()
    saver = HybridSaver(memory)
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    messages: list[Any] = []
    sizes = []
    for turn in range(40):
        new = [HumanMessage("q" * 200, id=f"h{turn}"), AIMessage("a" * 200, id=f"a{turn}")]
        _, messages = _step(saver, config, messages, new)
        memory.flush()  # write-behind: PostgreSQL has the step once the queue is committed
        rows = pg_fetch(f'SELECT coalesce(sum(octet_length(blob)), 0) AS n FROM "{memory.config.namespace}"'
                        ".checkpoint_blobs WHERE thread_id = $1", thread)
        sizes.append(rows[0]["n"])
    growth = [b - a for a, b in itertools.pairwise(sizes)]
    new_size = len(saver.serde.dumps_typed(new)[1])
    # Each step stores its two new messages (plus a reference), never the whole growing list again.
    assert max(growth) <= 2 * new_size + 64, (new_size, growth)
    # A fresh saver on a fresh engine (nothing remembered) reads the whole list back, field for field.
    fresh = HybridSaver(make_memory())
    got = fresh.get_tuple(config)
    assert got is not None
    assert [message_to_dict(m) for m in got.checkpoint["channel_values"]["messages"]] == [
        message_to_dict(m) for m in messages]
    # Keeping only the latest checkpoint stores its value whole: it still reads back the same, from Redis and
    # from PostgreSQL (`list` reads PostgreSQL; a saver that remembers nothing cannot fill in a dropped chain).
    fresh.prune([thread], strategy="keep_latest")
    after = HybridSaver(make_memory()).get_tuple(config)
    assert after is not None and len(list(fresh.list(config))) == 1
    assert [m.id for m in after.checkpoint["channel_values"]["messages"]] == [m.id for m in messages]
    [cold] = HybridSaver(make_memory()).list(config)
    assert [m.id for m in cold.checkpoint["channel_values"]["messages"]] == [m.id for m in messages]


def test_a_runs_next_put_stays_a_delta_when_other_threads_fill_the_versions_it_remembers(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a run LangGraph puts each checkpoint on the one it put before, reading nothing between: the parent's
    versions must still be remembered when other threads' puts reach the bound, or the list is stored whole."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    from langchain_hybrid_memory.checkpoint import saver as saver_module

    from conftest import pg_fetch

    monkeypatch.setattr(saver_module, "_KNOWN", 4)  # at most 8 checkpoints' versions
    memory = make_memory()
    saver = HybridSaver(memory)
    runs: dict[str, tuple[Any, Any, list[Any]]] = {}

    def put(thread: str) -> None:
        config, base, messages = runs.get(thread) or ({"configurable": {"thread_id": thread, "checkpoint_ns": ""}},
                                                      empty_checkpoint(), [])
        messages = [*messages, HumanMessage(f"{thread}-{len(messages)}", id=f"{thread}-{len(messages)}")]
        version = saver.get_next_version(base["channel_versions"].get("messages"), None)
        checkpoint = create_checkpoint(base, None, len(messages))
        checkpoint["channel_values"] = {"messages": messages}
        checkpoint["channel_versions"] = {**base["channel_versions"], "messages": version}
        runs[thread] = saver.put(config, checkpoint, {"source": "loop", "step": len(messages)},
                                 {"messages": version}), checkpoint, messages

    for i in range(8):
        put(f"t{i}")
    put("t8")  # the ninth checkpoint: the oldest remembered (t0's) goes, not t7's, the newest
    put("t7")
    memory.flush()
    rows = pg_fetch(f'SELECT type FROM "{memory.config.namespace}".checkpoint_blobs WHERE thread_id = $1'
                    " AND channel = 'messages' ORDER BY version", "t7")
    assert [r["type"].startswith(saver_module.DELTA) for r in rows] == [False, True]


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_with_async_writes_off_a_put_and_writes_return_once_postgresql_committed_them(
        make_memory: Callable[..., HybridMemory], api: str) -> None:
    """`async_writes=False`: acknowledged after the commit (the write-behind alone would wait 5 s here)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from conftest import pg_fetch

    memory = make_memory(async_writes=False, write_behind_delay=5.0)
    saver = HybridSaver(memory)
    ns = memory.config.namespace
    config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    if api == "sync":
        stored = await asyncio.to_thread(saver.put, config, empty_checkpoint(), {}, {})
    else:
        stored = await saver.aput(config, empty_checkpoint(), {}, {})
    assert [r[0] for r in pg_fetch(f'SELECT checkpoint_id FROM "{ns}".checkpoints')] == [
        stored["configurable"]["checkpoint_id"]]
    if api == "sync":
        await asyncio.to_thread(saver.put_writes, stored, [("a", 1), ("b", 2)], "task")
    else:
        await saver.aput_writes(stored, [("a", 1), ("b", 2)], "task")
    assert pg_fetch(f'SELECT count(*) FROM "{ns}".checkpoint_writes')[0][0] == 2


def test_bad_input_is_refused_before_anything_is_written(make_memory: Callable[..., HybridMemory]) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    from langchain_hybrid_memory import InvalidInputError

    memory = make_memory(max_message_bytes=10_000, max_messages_per_add=10)
    saver = HybridSaver(memory)
    checkpoint = empty_checkpoint()
    too_long = {"configurable": {"thread_id": "x" * 300, "checkpoint_ns": ""}}
    with pytest.raises(InvalidInputError, match="thread_id"):
        saver.put(too_long, checkpoint, {}, {})
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    huge = {**checkpoint, "channel_values": {"big": "x" * 200_000}, "channel_versions": {"big": "1"}}
    with pytest.raises(InvalidInputError, match="limit"):
        saver.put(config, huge, {}, {"big": "1"})
    odd = {**checkpoint, "channel_values": {"odd": object()}, "channel_versions": {"odd": "1"}}
    with pytest.raises(InvalidInputError, match="cannot be serialized"):
        saver.put(config, odd, {}, {"odd": "1"})
    assert saver.get_tuple(config) is None and list(saver.list(None)) == []


@pytest.mark.parametrize("case", ["thread_id", "checkpoint_ns", "checkpoint id", "channel", "version", "run_id",
                                  "task_id", "task_path", "write channel", "metadata str"])
def test_text_postgresql_cannot_store_is_refused_before_anything_is_written(
        make_memory: Callable[..., HybridMemory], case: str) -> None:
    """A NUL or a lone surrogate in an identifier, or a metadata string the jsonb column cannot hold, would be
    acknowledged from Redis and then refused by PostgreSQL: a typed error first, and nothing written."""
    from langgraph.checkpoint.base import empty_checkpoint

    from langchain_hybrid_memory import InvalidInputError

    memory = make_memory()
    saver = HybridSaver(memory)
    # LangGraph drops NUL from top-level metadata strings itself: those two take a lone surrogate
    bad = "lone \ud800" if case in ("metadata str", "run_id") else "a\x00b"
    conf = {"thread_id": bad if case == "thread_id" else "t", "checkpoint_ns": bad if case == "checkpoint_ns" else ""}
    checkpoint = empty_checkpoint()
    if case == "checkpoint id":
        checkpoint["id"] = bad
    channel, version = ("messages", "1")
    if case == "channel":
        channel = bad
    if case == "version":
        version = bad
    checkpoint["channel_values"] = {channel: ["hi"]}
    checkpoint["channel_versions"] = {channel: version}
    metadata: dict[str, Any] = {"step": 0}
    if case == "run_id":
        metadata["run_id"] = bad
    if case == "metadata str":
        metadata["note"] = bad
    put_case = case in ("thread_id", "checkpoint_ns", "checkpoint id", "channel", "version", "run_id", "metadata str")
    if put_case:
        with pytest.raises(InvalidInputError):
            saver.put({"configurable": conf}, checkpoint, metadata, {channel: version})  # type: ignore[arg-type]
        if case in ("thread_id", "checkpoint_ns"):
            with pytest.raises(InvalidInputError):
                list(saver.list({"configurable": conf}))  # type: ignore[arg-type]
        if case == "checkpoint id":
            with pytest.raises(InvalidInputError):
                saver.get_tuple({"configurable": {**conf, "checkpoint_id": bad}})  # type: ignore[typeddict-item]
    else:
        stored = saver.put({"configurable": conf}, checkpoint, metadata, {channel: version})  # type: ignore[arg-type]
        task_id, task_path, write_channel = (bad if case == c else d for c, d in
                                             (("task_id", "task"), ("task_path", ""), ("write channel", "messages")))
        with pytest.raises(InvalidInputError):
            saver.put_writes(stored, [(write_channel, ["w"])], task_id, task_path)
    memory.flush()
    assert memory.get_cache_stats().dead_letters == 0
    if put_case:
        assert list(saver.list(None)) == []
    else:
        tup = saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": ""}})
        assert tup is not None and tup.pending_writes == []


def test_metadata_json_cannot_hold_is_stored_and_filtered_as_langgraph_does(
        make_memory: Callable[..., HybridMemory]) -> None:
    """Metadata with NaN or a NUL character (nested: LangGraph drops those at the top level) is kept exactly
    although jsonb holds neither; a filter matches by equality, as InMemorySaver's (NaN equals nothing)."""
    import math

    from langgraph.checkpoint.base import empty_checkpoint

    memory = make_memory()
    saver = HybridSaver(memory)
    config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    stored = saver.put(config, empty_checkpoint(), {"score": float("nan"), "note": {"n": "a\x00b"}, "step": 1}, {})
    memory.flush()
    fresh = HybridSaver(make_memory())  # reads PostgreSQL: the checkpoint was committed, not set aside
    listed = list(fresh.list(config))
    assert [t.config for t in listed] == [stored]
    assert math.isnan(listed[0].metadata["score"]) and listed[0].metadata["note"] == {"n": "a\x00b"}
    assert [t.config for t in fresh.list(None, filter={"note": {"n": "a\x00b"}})] == [stored]
    assert list(fresh.list(None, filter={"note": {"n": "a\ufffdb"}})) == []  # the same in jsonb, not equal
    assert list(fresh.list(None, filter={"score": float("nan")})) == []


def test_list_filters_with_a_limit_as_inmemorysaver_does(make_memory: Callable[..., HybridMemory]) -> None:
    """A filter matches by equality, Python's (a list contained in a longer one does not match; a key a
    checkpoint lacks matches None; True equals 1) and a limit counts matches only: rows whose metadata column
    looks like a match but whose metadata is not (NUL mapped in jsonb) are made up for."""
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.memory import InMemorySaver

    metadata: list[dict[str, Any]] = [
        {"step": 1, "tags": ["a"], "user_id": "u"}, {"step": 2, "tags": ["a", "b"]},
        {"step": 3, "note": {"n": "a\x00b"}}, {"step": 4, "note": {"n": "a\ufffdb"}},
        {"step": 5, "note": {"n": "a\ufffdb"}, "flag": 1, "on": [True]}]
    filters: list[tuple[dict[str, Any], int | None]] = [
        ({"tags": ["a"]}, 1), ({"tags": ["a"]}, None), ({"note": {"n": "a\x00b"}}, 1), ({"user_id": None}, 3),
        ({"user_id": None, "tags": None}, None), ({"step": 4}, 2), ({"tags": ["b", "a"]}, 1),
        ({"k\x00ey": None}, 2), ({"it's $1 -> x": None}, 1), ({"step": 4}, -1), ({"step": 4}, 0),
        ({"flag": True, "on": [1]}, 1)]
    listed: dict[str, list[list[int]]] = {}
    for saver in (HybridSaver(make_memory()), InMemorySaver()):
        config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        for meta in metadata:
            config = saver.put(config, empty_checkpoint(), meta, {})
        listed[type(saver).__name__] = [[t.metadata["step"] for t in saver.list(None, filter=f, limit=limit)]
                                        for f, limit in filters]
    assert listed["HybridSaver"] == listed["InMemorySaver"] == [
        [1], [1], [3], [5, 4, 3], [5, 4, 3], [4], [], [5, 4], [5], [], [], [5]]


def test_delete_user_and_retention_cover_checkpoint_threads(make_memory: Callable[..., HybridMemory]) -> None:
    """A user's threads (LangGraph copies `configurable.user_id` into metadata) are listed by it and go with
    `delete_user`; threads idle longer than the retention period go with `purge_idle_sessions`; stats count the
    traffic."""
    from langchain_core.messages import HumanMessage

    from conftest import pg_fetch

    memory = make_memory()
    saver = HybridSaver(memory)

    def thread(tid: str, user: str | None) -> None:
        conf: dict[str, Any] = {"thread_id": tid, "checkpoint_ns": ""}
        if user is not None:
            conf["user_id"] = user
        stored, _ = _step(saver, {"configurable": conf}, [], [HumanMessage("hi", id=f"{tid}-1")])
        saver.put_writes(stored, [("messages", [])], "task-1")

    thread("alice-1", "alice")
    thread("alice-2", "alice")
    thread("bob-1", "bob")
    thread("nobody", None)
    assert saver.get_tuple({"configurable": {"thread_id": "bob-1", "checkpoint_ns": ""}}) is not None
    stats = memory.get_cache_stats()  # each thread's first read found nothing; the read above found one
    assert (stats.checkpoint_puts, stats.checkpoint_writes, stats.checkpoint_reads) == (4, 4, 1)
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None, filter={"user_id": "alice"})} == {
        "alice-1", "alice-2"}
    # Threads by metadata, the most recently written first (bob-1 was written after alice-2: none of
    # LangGraph's checkpoint ids repeat and they grow with time); a fresh process lists the same.
    assert saver.list_threads(filter={"user_id": "alice"}) == ["alice-2", "alice-1"]
    assert saver.list_threads(filter={"user_id": "alice"}, limit=1) == ["alice-2"]
    assert HybridSaver(make_memory()).list_threads() == ["nobody", "bob-1", "alice-2", "alice-1"]
    assert asyncio.run(saver.alist_threads(filter={"user_id": "carol"})) == []
    memory.delete_user("alice")
    ns = memory.config.namespace
    left = {r["thread_id"] for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
            for r in pg_fetch(f'SELECT DISTINCT thread_id FROM "{ns}".{table}')}
    assert left == {"bob-1", "nobody"}
    pg_fetch(f"UPDATE \"{ns}\".checkpoints SET created_at = now() - interval '2 days' WHERE thread_id = 'bob-1'")
    memory.purge_idle_sessions(86_400)
    assert {r["thread_id"] for r in pg_fetch(f'SELECT DISTINCT thread_id FROM "{ns}".checkpoints')} == {"nobody"}
    assert saver.get_tuple({"configurable": {"thread_id": "bob-1", "checkpoint_ns": ""}}) is None


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_a_cached_threads_steps_never_hop_to_the_engine_loop(make_memory: Callable[..., HybridMemory],
                                                                   monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    """Once a thread is in Redis, get_tuple, put and put_writes are each one Redis round trip made by the caller
    (its thread, or its loop), as the message hot paths are: no hand-over to the engine loop."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    memory = make_memory()
    saver = HybridSaver(memory)
    hops: list[str] = []
    engine_run, engine_arun = memory._run, memory._arun

    def run(coro: Any) -> Any:
        hops.append(coro.__qualname__)
        return engine_run(coro)

    async def arun(coro: Any) -> Any:
        hops.append(coro.__qualname__)
        return await engine_arun(coro)

    monkeypatch.setattr(memory, "_run", run)
    monkeypatch.setattr(memory, "_arun", arun)
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{api}", "checkpoint_ns": ""}}

    async def step(i: int) -> None:
        tup = saver.get_tuple(config) if api == "sync" else await saver.aget_tuple(config)
        base = tup.checkpoint if tup is not None else empty_checkpoint()
        checkpoint = create_checkpoint(base, None, i)
        version = saver.get_next_version(base["channel_versions"].get("messages"), None)
        checkpoint["channel_values"] = {"messages": [HumanMessage(f"m{i}", id=f"m{i}")]}
        checkpoint["channel_versions"] = {"messages": version}
        args = (config if tup is None else tup.config, checkpoint, {"step": i}, {"messages": version})
        stored = saver.put(*args) if api == "sync" else await saver.aput(*args)  # type: ignore[arg-type]
        writes = [("messages", [HumanMessage(f"w{i}", id=f"w{i}")])]
        if api == "sync":
            saver.put_writes(stored, writes, f"task-{i}")
        else:
            await saver.aput_writes(stored, writes, f"task-{i}")

    await step(0)  # a new thread: its first read asks PostgreSQL (on the engine loop); an async caller's first
    await step(1)  # call on a loop goes there too (a loop seen once may be a throwaway)
    hops.clear()
    for i in range(2, 6):
        await step(i)
    assert hops == []
    tup = saver.get_tuple(config) if api == "sync" else await saver.aget_tuple(config)
    assert tup is not None and [m.id for m in tup.checkpoint["channel_values"]["messages"]] == ["m5"]
    assert [(t, v[0].id) for t, _, v in tup.pending_writes] == [("task-5", "w5")]
    assert hops == []
    await memory.aflush()
    assert len([t async for t in saver.alist(config)]) == 6  # and every one of them is in PostgreSQL


def _cold_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads whose latest checkpoint is read from PostgreSQL from now on (by any saver of the process)."""
    from langchain_hybrid_memory.checkpoint import store as store_module

    reads: list[str] = []
    get = store_module.CheckpointStore.get

    async def counted(self: Any, thread_id: str, *args: Any) -> Any:
        reads.append(thread_id)
        return await get(self, thread_id, *args)

    monkeypatch.setattr(store_module.CheckpointStore, "get", counted)
    return reads


def _blob_reads(memory: HybridMemory, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads whose channel blobs the sync API fetches from Redis from now on (a list it had to fold)."""
    sync = memory._core.sync
    assert sync is not None
    reads: list[str] = []
    read_blobs = sync.checkpoint_blobs
    monkeypatch.setattr(sync, "checkpoint_blobs",
                        lambda thread_id, fields: reads.append(thread_id) or read_blobs(thread_id, fields))
    return reads


def test_each_threads_latest_value_stays_remembered_while_other_threads_step(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """A process remembers the newest versions of each thread's lists, not the last puts of all threads: with
    1,000 threads of 5 steps each, one thread after the other (5,000 versions, more than it keeps), reading any
    thread's latest checkpoint is still one Redis round trip that decodes no message list."""
    from langchain_core.messages import HumanMessage

    from langchain_hybrid_memory.checkpoint import saver as saver_module

    memory = make_memory()
    saver = HybridSaver(memory)
    threads = [f"t{i}" for i in range(1000)]
    assert len(threads) * 5 > saver_module._KNOWN >= len(threads) * saver_module._PER_CHANNEL
    messages: dict[str, list[Any]] = {t: [] for t in threads}
    for t in threads:  # a thread's 5 steps, then the next thread's: the first threads' versions are the oldest
        for step in range(5):
            _, messages[t] = _step(saver, {"configurable": {"thread_id": t, "checkpoint_ns": ""}}, messages[t],
                                   [HumanMessage(f"{t}-{step}", id=f"{t}-{step}")])
    blob_reads = _blob_reads(memory, monkeypatch)
    for t in threads:
        tup = saver.get_tuple({"configurable": {"thread_id": t, "checkpoint_ns": ""}})
        assert tup is not None and [m.id for m in tup.checkpoint["channel_values"]["messages"]] == [
            f"{t}-{step}" for step in range(5)]
    assert blob_reads == []
    fresh = HybridSaver(memory)  # remembers nothing: the same reads fetch and fold the lists from Redis
    assert fresh.get_tuple({"configurable": {"thread_id": "t0", "checkpoint_ns": ""}}) is not None
    assert blob_reads == ["t0"]


@pytest.mark.parametrize("lost", ["thread", "chains"])
def test_a_thread_redis_lost_is_served_from_redis_again_after_its_next_put(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    """Redis loses a thread (its TTL, eviction), or holds it as an earlier version wrote it (its chains as bare
    versions): the next read comes from PostgreSQL, and the put after it stores in Redis whole what it cannot
    build on there (a delta of `messages`, and `summary`, unchanged since), so every later step is read from
    Redis again."""
    import orjson
    import redis
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    from langchain_hybrid_memory.checkpoint import store as store_module

    from conftest import REDIS_URL

    def step(saver: HybridSaver, i: int) -> None:
        tup = saver.get_tuple(config)
        base = tup.checkpoint if tup is not None else empty_checkpoint()
        values = tup.checkpoint["channel_values"] if tup is not None else {"messages": []}
        new = {"messages": saver.get_next_version(base["channel_versions"].get("messages"), None)}
        if i == 0:
            new["summary"] = saver.get_next_version(None, None)
        checkpoint = create_checkpoint(base, None, i)
        checkpoint["channel_values"] = {"summary": "so far: nothing", **values,
                                        "messages": [*values["messages"], HumanMessage(f"m{i}", id=f"m{i}")]}
        checkpoint["channel_versions"] = {**base["channel_versions"], **new}
        saver.put(config if tup is None else tup.config, checkpoint, {"source": "loop", "step": i}, new)

    memory = make_memory()
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    saver = HybridSaver(memory)
    for i in range(3):
        step(saver, i)
    memory.flush()
    keys = memory._core.keys.thread(thread)
    with redis.Redis.from_url(REDIS_URL) as r:
        if lost == "thread":
            assert r.delete(keys.checkpoints) == 1  # (no writes were put: the thread has no other key)
        else:
            *parts, chains = store_module.unpack(r.hget(keys.checkpoints, "c\x1f"))
            earlier = {ch: [e[0] for e in chain] for ch, chain in orjson.loads(chains).items()}
            r.hset(keys.checkpoints, "c\x1f", store_module.pack([*parts, orjson.dumps(earlier)]))
    cold_reads = _cold_reads(monkeypatch)
    fresh = HybridSaver(make_memory())  # the process the returning user reaches
    for i in range(3, 10):
        step(fresh, i)
    assert cold_reads == [thread]
    other = HybridSaver(make_memory())  # remembers nothing: every value comes from Redis
    tup = other.get_tuple(config)
    assert tup is not None and cold_reads == [thread]
    assert [m.id for m in tup.checkpoint["channel_values"]["messages"]] == [f"m{i}" for i in range(10)]
    assert tup.checkpoint["channel_values"]["summary"] == "so far: nothing"


def test_a_fork_from_a_checkpoint_read_from_postgresql_that_leaves_the_messages_is_read_back_from_redis(
        make_memory: Callable[..., HybridMemory]) -> None:
    """A fork (`update_state` on an older checkpoint) changing another channel only: its put stores `messages`
    whole in Redis under the version Redis holds as a delta, which the whole value replaces, so a process that
    remembers nothing folds the right list (not a delta taken for a whole value)."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.base import create_checkpoint

    writer = HybridSaver(make_memory())
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}", "checkpoint_ns": ""}}
    messages: list[Any] = []
    stored = []
    for i in range(5):  # in Redis: the first version whole, then deltas
        put, messages = _step(writer, config, messages, [HumanMessage(f"m{i}", id=f"m{i}")])
        stored.append(put)
    forker = HybridSaver(make_memory())
    old = forker.get_tuple(stored[2])  # not the latest: read from PostgreSQL, its chains unknown
    assert old is not None
    fork = create_checkpoint(old.checkpoint, None, 3)
    version = forker.get_next_version(None, None)
    fork["channel_values"] = {**old.checkpoint["channel_values"], "note": "x"}
    fork["channel_versions"] = {**old.checkpoint["channel_versions"], "note": version}
    forker.put(old.config, fork, {"source": "update", "step": 3}, {"note": version})
    for reader in (forker, HybridSaver(make_memory())):
        tup = reader.get_tuple(config)
        assert tup is not None and tup.checkpoint["channel_values"]["note"] == "x"
        assert [m.id for m in tup.checkpoint["channel_values"]["messages"]] == ["m0", "m1", "m2"]


def test_redis_holds_a_long_thread_in_merged_deltas_and_serializes_each_item_a_few_times(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """300 puts of one message each: in Redis, 16 deltas of one span in a row become one (16 puts, then 256), so
    what the puts serialize for Redis stays within a few times what they add (never the whole list again), the
    thread's hash holds a few dozen blobs, and a process that remembers nothing reads the latest state from
    Redis alone, whatever the count of puts (before, at and after each merge)."""
    import redis
    from langchain_core.messages import HumanMessage

    from langchain_hybrid_memory.checkpoint import saver as saver_module

    from conftest import REDIS_URL

    assert saver_module._MERGE == 16
    memory = make_memory()
    saver = HybridSaver(memory)
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    added: list[int] = []  # bytes of the items each put adds, as stored in PostgreSQL (a delta, or the first whole)
    for_redis: list[int] = []  # bytes each put serializes for Redis alone (a merged delta; not its own delta)
    remember = saver._remember_put

    def measured(p: Any) -> None:
        added.append(sum(len(b[3] or b"") for b in p.blobs))
        for_redis.append(sum(len(b[3] or b"") for b in p.hot_blobs if b[3] is not p.blobs[0][3]))
        remember(p)

    monkeypatch.setattr(saver, "_remember_put", measured)
    cold_reads = _cold_reads(monkeypatch)
    messages: list[Any] = []
    stored: list[dict[str, Any]] = []
    fresh_memory = make_memory()
    for i in range(300):
        put, messages = _step(saver, config, messages, [HumanMessage(f"m{i}", id=f"m{i}")])
        stored.append(put)
        if i + 1 in (15, 16, 17, 32, 255, 256, 257, 300):
            fresh = HybridSaver(fresh_memory)  # remembers nothing: folds the chain's blobs from Redis
            tup = fresh.get_tuple(config)
            assert tup is not None and [m.id for m in tup.checkpoint["channel_values"]["messages"]] == [
                f"m{j}" for j in range(i + 1)]
    assert cold_reads == [thread]  # the first step's, of a thread without a checkpoint yet
    # Each item is serialized again once per merge it takes part in (16 and 256 puts here), never per put.
    assert sum(for_redis) <= 3 * sum(added[1:]), (sum(for_redis), sum(added))
    assert max(for_redis) <= 256 * max(added[1:])
    with redis.Redis.from_url(REDIS_URL) as r:
        blobs = [f for f in r.hkeys(memory._core.keys.thread(thread).checkpoints) if f.startswith(b"b")]
    assert len(blobs) <= 1 + 15 + 15  # the first whole, then at most 15 deltas of each span (300 = 1*256 + 2*16 + 12)
    # A fork from an older checkpoint, whose blobs in Redis later merges dropped: read back right all the same.
    from langgraph.checkpoint.base import create_checkpoint

    old = saver.get_tuple(stored[249])
    assert old is not None
    version = saver.get_next_version(old.checkpoint["channel_versions"]["messages"], None)
    fork = create_checkpoint(old.checkpoint, None, 1)
    fork["channel_values"] = {"messages": [*old.checkpoint["channel_values"]["messages"], HumanMessage("f", id="f")]}
    fork["channel_versions"] = {**old.checkpoint["channel_versions"], "messages": version}
    saver.put(stored[249], fork, {"source": "fork", "step": 1}, {"messages": version})
    for reader in (saver, HybridSaver(make_memory())):
        tup = reader.get_tuple(config)
        assert tup is not None and [m.id for m in tup.checkpoint["channel_values"]["messages"]] == [
            *(f"m{j}" for j in range(250)), "f"]


def test_remembered_lists_are_bounded_by_their_items(make_memory: Callable[..., HybridMemory],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Long threads count by their items: remembered values stay within the item bound, the least recently used
    going first (the thread stepped last is read without decoding, an evicted one is folded from Redis)."""
    from langchain_core.messages import HumanMessage

    from langchain_hybrid_memory.checkpoint import saver as saver_module

    monkeypatch.setattr(saver_module, "_KNOWN_ITEMS", 120)
    memory = make_memory()
    saver = HybridSaver(memory)
    for t in ("long-a", "long-b", "short"):
        messages: list[Any] = []
        for step in range(3):
            size = 1 if t == "short" else 25
            _, messages = _step(saver, {"configurable": {"thread_id": t, "checkpoint_ns": ""}}, messages,
                                [HumanMessage(f"{t}-{step}-{k}", id=f"{t}-{step}-{k}") for k in range(size)])
            assert saver._items == sum(saver_module._size(v) for v in saver._lists.values()) <= 120
    # long-a's versions went first (its oldest by the per-channel rule), then long-b's older ones.
    assert sorted({key[0] for key in saver._lists}) == ["long-b", "short"]
    blob_reads = _blob_reads(memory, monkeypatch)
    for t, n in (("short", 3), ("long-b", 75), ("long-a", 75)):
        tup = saver.get_tuple({"configurable": {"thread_id": t, "checkpoint_ns": ""}})
        assert tup is not None and len(tup.checkpoint["channel_values"]["messages"]) == n
    assert blob_reads == ["long-a"]


def test_pending_writes_this_process_stored_are_read_back_without_decoding_unless_redis_holds_others(
        make_memory: Callable[..., HybridMemory]) -> None:
    """A read of the latest checkpoint takes the items of the pending writes this process stored, as the list
    values it remembers (a fresh list each time); a write another process has replaced since is decoded from
    Redis, so the read shows what Redis holds."""
    from langchain_core.messages import AIMessage
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.types import Interrupt

    memory = make_memory()
    ours, theirs = HybridSaver(memory), HybridSaver(make_memory())  # theirs: another process's saver
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}", "checkpoint_ns": ""}}
    stored = ours.put(config, empty_checkpoint(), {"step": 0}, {})
    answer = AIMessage("an answer", id="ai-1")
    written = [answer]
    ours.put_writes(stored, [("messages", written)], "task-a")
    written.append(AIMessage("appended by the task after the call", id="late"))  # not what was stored
    ours.put_writes(stored, [("__interrupt__", [Interrupt(value="ours", id="i-1")])], "task-b")
    # Another process records task-b's interrupt again (a special write replaces the first, as in PostgreSQL).
    theirs.put_writes(stored, [("__interrupt__", [Interrupt(value="theirs", id="i-1")])], "task-b")

    first = ours.get_tuple(config)
    assert first is not None
    writes = {task: value for task, _, value in first.pending_writes}
    assert writes["task-a"][0] is answer  # taken as stored, not decoded again
    assert [i.value for i in writes["task-b"]] == ["theirs"]  # what Redis holds, not what this process wrote
    writes["task-a"].append(AIMessage("added by the caller", id="ai-2"))
    again = ours.get_tuple(config)
    assert again is not None
    assert [[getattr(v, "id", None) for v in value] for _, _, value in again.pending_writes] == [["ai-1"], ["i-1"]]
    # A fresh process decodes the same writes.
    fresh = HybridSaver(make_memory()).get_tuple(config)
    assert fresh is not None and fresh.pending_writes[0][2][0] == answer and fresh.pending_writes[0][2][0] is not answer


async def test_reading_the_latest_checkpoint_slides_its_threads_ttl(make_memory: Callable[..., HybridMemory]) -> None:
    """A read of the latest checkpoint slides the TTL of the thread's keys (its checkpoint hash and the
    namespace's pending writes), from the sync API and from a caller's loop, as a message read does."""
    import redis.asyncio as aioredis
    from langgraph.checkpoint.base import empty_checkpoint

    from conftest import REDIS_URL

    ttl_s = 600
    writer = HybridSaver(make_memory(session_ttl=ttl_s))
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}", "checkpoint_ns": "sub"}}
    stored = await writer.aput(config, empty_checkpoint(), {"step": 0}, {})
    await writer.aput_writes(stored, [("x", 1)], "task")
    keys = writer.memory._core.keys.thread(config["configurable"]["thread_id"])
    names = [keys.checkpoints, keys.writes("sub")]
    client = aioredis.from_url(REDIS_URL)
    try:
        for read in ("sync", "async"):
            for name in names:
                await client.pexpire(name, 5_000)
            reader = HybridSaver(make_memory(session_ttl=ttl_s))  # its own process: the slide is due
            if read == "sync":
                got = await asyncio.to_thread(reader.get_tuple, config)
            else:
                got = await reader.aget_tuple(config)
            assert got is not None and got.pending_writes == [("task", "x", 1)]
            assert [await client.pttl(name) > 500_000 for name in names] == [True, True], read
    finally:
        await client.aclose()


async def test_a_session_and_a_thread_of_one_id_slide_their_ttls_apart(
        make_memory: Callable[..., HybridMemory]) -> None:
    """A chat session and a checkpoint thread may share an id (one conversation seen both ways). Reading one
    slides its own keys' TTL and must not count as the other's slide: the thread's read right after the
    session's still slides the thread's keys."""
    import redis.asyncio as aioredis
    from langgraph.checkpoint.base import empty_checkpoint

    from conftest import REDIS_URL

    ttl_s = 600
    memory = make_memory(session_ttl=ttl_s)
    shared = f"c-{uuid.uuid4().hex[:8]}"
    saver = HybridSaver(memory)
    config: dict[str, Any] = {"configurable": {"thread_id": shared, "checkpoint_ns": ""}}
    await saver.aput(config, empty_checkpoint(), {"step": 0}, {})
    await memory.aadd_messages(shared, [{"role": "user", "content": "hi"}])
    keys = memory._core.keys.thread(shared)
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.pexpire(keys.checkpoints, 5_000)
        reader = HybridSaver(make_memory(session_ttl=ttl_s))  # its own process: nothing slid there yet
        assert [m.content for m in await reader.memory.aget_recent_messages(shared)] == ["hi"]  # its slide
        assert await reader.aget_tuple(config) is not None
        assert await client.pttl(keys.checkpoints) > 500_000
    finally:
        await client.aclose()


async def test_each_namespace_of_a_thread_slides_its_pending_writes(make_memory: Callable[..., HybridMemory]) -> None:
    """A read of a subgraph's namespace right after the root's slides that namespace's pending writes too (each
    namespace has its own key)."""
    import redis.asyncio as aioredis
    from langgraph.checkpoint.base import empty_checkpoint

    from conftest import REDIS_URL

    writer = HybridSaver(make_memory(session_ttl=600))
    thread_id = f"t-{uuid.uuid4().hex[:8]}"
    configs = [{"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}} for ns in ("", "sub")]
    for config in configs:
        stored = await writer.aput(config, empty_checkpoint(), {"step": 0}, {})
        await writer.aput_writes(stored, [("x", 1)], "task")
    keys = writer.memory._core.keys.thread(thread_id)
    client = aioredis.from_url(REDIS_URL)
    try:
        for ns in ("", "sub"):
            await client.pexpire(keys.writes(ns), 5_000)
        reader = HybridSaver(make_memory(session_ttl=600))  # its own process: both slides are due
        for config in configs:
            got = await reader.aget_tuple(config)
            assert got is not None and got.pending_writes == [("task", "x", 1)]
        assert [await client.pttl(keys.writes(ns)) > 500_000 for ns in ("", "sub")] == [True, True]
    finally:
        await client.aclose()


def test_prune_keeps_a_checkpoint_committed_after_it_read_the_latest(make_memory: Callable[..., HybridMemory]) -> None:
    """What prune keeps is decided from the latest checkpoint it read; one committed meanwhile is newer, and
    stays (with its values), untombstoned."""
    import redis
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    from langchain_hybrid_memory.checkpoint.store import CheckpointStore

    from conftest import REDIS_URL

    saver = HybridSaver(make_memory())
    thread_id = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint, ids = empty_checkpoint(), []
    for step in range(3):
        checkpoint = create_checkpoint(checkpoint, None, step)
        checkpoint["channel_values"] = {"x": step}
        version = saver.get_next_version(checkpoint["channel_versions"].get("x"), None)
        checkpoint["channel_versions"] = {"x": version}
        config = saver.put(config, checkpoint, {"step": step}, {"x": version})
        ids.append(checkpoint["id"])
    saver.memory.flush()
    core = saver.memory._core
    store = CheckpointStore(core.need_store())
    kept = ids[1]  # the latest as a pruner saw it before ids[2] was committed
    row = core.engine.run(store.get(thread_id, "", kept))
    keep = [(channel, version) for channel, version, _ in row["blobs"]]
    core.engine.run(store.keep_latest(thread_id, "", [kept], keep, []))
    assert _checkpoints_of(saver, thread_id) == ids[1:]
    keys = core.keys.thread(thread_id)
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(keys.checkpoints, keys.writes(""))  # what Redis held of the thread: read PostgreSQL's
    client.close()
    reader = HybridSaver(make_memory())
    latest = reader.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": ids[2]}})
    assert latest is not None and latest.checkpoint["channel_values"] == {"x": 2}


def _checkpoints_of(saver: HybridSaver, thread_id: str) -> list[str]:
    """The thread's checkpoint ids as PostgreSQL holds them, oldest first."""
    from conftest import pg_fetch

    ns = saver.memory.config.namespace
    return [r[0] for r in pg_fetch(f'SELECT checkpoint_id FROM "{ns}".checkpoints WHERE thread_id = $1 ORDER BY 1',
                                   thread_id)]


@pytest.mark.parametrize("how", ["prune keep_latest", "delete_for_runs"])
def test_checkpoints_another_process_deleted_stay_deleted_when_their_writer_commits(
        make_memory: Callable[..., HybridMemory], how: str) -> None:
    """Checkpoints a process deletes (prune keeping the latest, or a run's) while another process's records of
    them still wait (in its queue and the outbox) stay deleted: a later read that commits what waits, and the
    writer's own commit, do not bring them back."""
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    writer = HybridSaver(make_memory(write_behind_delay=30))  # nothing reaches PostgreSQL unless committed
    reader = HybridSaver(make_memory())
    thread_id = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""},
                              "metadata": {"run_id": "run-1"}}
    checkpoint = empty_checkpoint()
    ids = []
    for step in range(3):
        checkpoint = create_checkpoint(checkpoint, None, step)
        config = {**writer.put(config, checkpoint, {"step": step, "run_id": "run-1"}, {}),
                  "metadata": {"run_id": "run-1"}}
        writer.put_writes(config, [("x", step)], f"task-{step}")
        ids.append(checkpoint["id"])
    if how == "delete_for_runs":
        reader.delete_for_runs(["run-1"])
        kept: list[str] = []
    else:
        reader.prune([thread_id])
        kept = ids[-1:]
    assert _checkpoints_of(reader, thread_id) == kept
    older = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": ids[0]}}
    assert reader.get_tuple(older) is None  # commits what waits for the thread first
    writer.memory.flush()
    assert _checkpoints_of(reader, thread_id) == kept
    assert [t.checkpoint["id"] for t in reader.list({"configurable": {"thread_id": thread_id}})] == kept


async def _astep(saver: HybridSaver, config: dict[str, Any], i: int) -> dict[str, Any]:
    """An async agent step: read the latest checkpoint, put the next (one new message), write a task's output."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint

    tup = await saver.aget_tuple(config)
    base = tup.checkpoint if tup is not None else empty_checkpoint()
    checkpoint = create_checkpoint(base, None, i)
    version = saver.get_next_version(base["channel_versions"].get("messages"), None)
    old = base["channel_values"].get("messages", []) if tup is not None else []
    checkpoint["channel_values"] = {"messages": [*old, HumanMessage(f"m{i}", id=f"m{i}")]}
    checkpoint["channel_versions"] = {"messages": version}
    stored = await saver.aput(config if tup is None else tup.config, checkpoint, {"step": i},
                              {"messages": version})
    await saver.aput_writes(stored, [("messages", [HumanMessage(f"w{i}", id=f"w{i}")])], f"task-{i}")
    return stored


def _redis_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls the async hot path sends to Redis from now on on the running loop's shared connections
    (not the engine loop's, where the write-behind flusher acknowledges entries meanwhile)."""
    from langchain_hybrid_memory.cache.shared_connection import SharedConnection

    calls: list[int] = []
    call = SharedConnection.call
    loop = asyncio.get_running_loop()

    def counted(self: SharedConnection, *args: Any) -> Any:
        if self._loop is loop:
            calls.append(1)
        return call(self, *args)

    monkeypatch.setattr(SharedConnection, "call", counted)
    return calls


async def test_a_loops_latest_checkpoint_is_kept_until_another_connection_of_the_process_changes_it(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """After a step on a loop, reading the thread's latest checkpoint there again needs no Redis round trip (the
    connection tracks the thread's keys, under the process's lease); once another memory of this process writes
    the thread (a put, pending writes, a delete; the sync API or another loop), the next read shows it, at once:
    before Redis's notice has reached the loop, and with no wait for the lease (the process holds it)."""
    from langchain_core.messages import AIMessage

    ours = HybridSaver(make_memory())
    theirs = HybridSaver(make_memory())
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}", "checkpoint_ns": ""}}
    for i in range(3):  # a loop's first calls go through the engine loop
        stored = await _astep(ours, config, i)
    calls = _redis_calls(monkeypatch)
    tup = await ours.aget_tuple(config)
    assert tup is not None and tup.config == stored and [w[0] for w in tup.pending_writes] == ["task-2"]
    assert calls == []

    # Another process's step, made with the sync API on this loop's thread: the loop has not run since, so
    # Redis's notice waits unread on the socket when the read starts.
    theirs_stored, messages = _step(theirs, config, tup.checkpoint["channel_values"]["messages"],
                                    [AIMessage("theirs", id="theirs")])
    got = await ours.aget_tuple(config)
    assert got is not None and got.config == theirs_stored and got.pending_writes == []
    assert [m.id for m in got.checkpoint["channel_values"]["messages"]] == [m.id for m in messages]
    assert calls != []
    calls.clear()
    assert (await ours.aget_tuple(config)) == got and calls == []  # kept again

    await theirs.aput_writes(theirs_stored, [("x", 1)], "their-task")
    await asyncio.sleep(0.05)  # this time the loop reads the notice before the next read
    got = await ours.aget_tuple(config)
    assert got is not None and got.pending_writes == [("their-task", "x", 1)]

    await theirs.adelete_thread(config["configurable"]["thread_id"])
    assert await ours.aget_tuple(config) is None


async def test_without_resp3_nothing_is_kept_and_every_read_asks_redis(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """Key tracking needs RESP3's notices on the connection itself: on RESP2 the loop reads Redis every time."""
    from conftest import REDIS_URL

    sep = "&" if "?" in REDIS_URL else "?"
    saver = HybridSaver(make_memory(redis_url=f"{REDIS_URL}{sep}protocol=2"))
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}", "checkpoint_ns": ""}}
    for i in range(3):
        stored = await _astep(saver, config, i)
    pipe = saver.memory._core.loop_cache()._pipe
    assert pipe is not None and not pipe.tracking
    calls = _redis_calls(monkeypatch)
    tup = await saver.aget_tuple(config)
    assert tup is not None and tup.config == stored and len(calls) == 1


async def test_a_write_drops_what_was_kept_from_the_keys_it_writes(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection's own write ends its tracking of the keys it writes, and Redis may run other connections'
    commands before the read that follows it: a put to one namespace of a thread drops the value kept for another
    namespace of it (they share the thread's checkpoint hash), which the next read fetches again."""
    saver = HybridSaver(make_memory())
    thread = f"t-{uuid.uuid4().hex[:8]}"
    parent: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    child: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": "child"}}
    for i in range(3):
        await _astep(saver, parent, i)
        await _astep(saver, child, i)
    calls = _redis_calls(monkeypatch)
    assert await saver.aget_tuple(parent) is not None and len(calls) == 1  # the child's step dropped it
    calls.clear()
    assert await saver.aget_tuple(parent) is not None and calls == []  # kept by that read
    await _astep(saver, child, 9)
    calls.clear()
    assert await saver.aget_tuple(child) is not None and calls == []  # the namespace just stepped: read again
    got = await saver.aget_tuple(parent)
    assert got is not None and len(calls) == 1  # the other namespace: dropped, fetched again
    calls.clear()
    assert await saver.aget_tuple(parent) == got and calls == []


_HOLDER = """
import asyncio, json, sys
from langchain_hybrid_memory import HybridConfig, HybridMemory
from langchain_hybrid_memory.checkpoint import HybridSaver

async def main():
    memory = HybridMemory(HybridConfig(database_url={pg!r}, redis_url={redis!r}, namespace={ns!r},
                                       redis_timeout={lease}))
    saver = HybridSaver(memory)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():  # a thread id: its latest checkpoint and its pending writes' tasks
        config = {{"configurable": {{"thread_id": line.decode().strip(), "checkpoint_ns": ""}}}}
        tup = await saver.aget_tuple(config)
        print(json.dumps([tup.config["configurable"]["checkpoint_id"], sorted(t for t, _, _ in tup.pending_writes)]),
              flush=True)
    await memory.aclose()

asyncio.run(main())
"""


class _Holder:
    """Another process that reads threads on its event loop (so it keeps them, under their leases) when told
    to, and answers with what it read."""

    def __init__(self, namespace: str, lease: float, redis_url: str | None = None) -> None:
        from conftest import PG_URL, REDIS_URL

        self.script = _HOLDER.format(pg=PG_URL, redis=redis_url or REDIS_URL, ns=namespace, lease=lease)
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> _Holder:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", self.script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return self

    async def read(self, thread: str) -> tuple[str, list[str]]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(thread.encode() + b"\n")
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        assert line, "the holder process ended"
        checkpoint_id, tasks = json.loads(line)
        return checkpoint_id, tasks

    async def __aexit__(self, *exc: Any) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def _lease_of(memory: HybridMemory, thread: str) -> tuple[bytes | None, int]:
    import redis.asyncio as redis_async

    from conftest import REDIS_URL

    client = redis_async.Redis.from_url(REDIS_URL)
    try:
        key = memory._core.keys.thread(thread).lease
        return await client.get(key), await client.pttl(key)
    finally:
        await client.aclose()


def _redis_proxy() -> Any:
    """A TCP proxy in front of the shared Redis (its `hang(up=False)` holds Redis's answers and notices)."""
    from urllib.parse import urlsplit

    from conftest import REDIS_URL
    from hybrid_memory_testing.tcp_proxy import TcpProxy

    url = urlsplit(REDIS_URL)
    proxy = TcpProxy(url.port or 6379, url.hostname or "127.0.0.1").start()
    proxy.url = url._replace(netloc=f"{url.netloc.rsplit('@', 1)[0] + '@' if '@' in url.netloc else ''}"
                                    f"127.0.0.1:{proxy.port}").geturl()
    return proxy


async def test_another_processs_write_waits_until_the_holder_of_the_lease_lets_it_go(
        make_memory: Callable[..., HybridMemory], namespace: str) -> None:
    """A process that keeps a thread holds its lease; another process's pending writes are acknowledged only
    after Redis has told the holder and the holder has dropped what it kept and let the lease go (long before it
    would have expired). The holder's notices are held back here (a slow network): until they get through, the
    write waits, and the holder, answering from what it keeps, shows the thread without it, which is right, the
    write not being acknowledged; then the write is, and the holder's next read shows it. Then the holder reads
    the thread from Redis without taking its lease (two processes write it): the next write waits for nothing."""
    proxy = _redis_proxy()
    ours = HybridSaver(make_memory(redis_key_tracking=False))  # a writer that never holds a lease itself
    try:
        async with _Holder(namespace, lease=30.0, redis_url=proxy.url) as holder:
            assert holder.proc is not None
            for _ in range(3):
                thread = f"t-{uuid.uuid4().hex[:8]}"
                config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
                for i in range(3):
                    stored = await _astep(ours, config, i)
                for _ in range(3):  # the engine loop's read, then the holder's loop's own: kept there now
                    assert (await holder.read(thread))[0] == stored["configurable"]["checkpoint_id"]
                lease, _ = await _lease_of(ours.memory, thread)
                assert lease is not None and lease.startswith(f"{holder.proc.pid}:".encode()), lease
                proxy.hang(up=False)
                try:
                    write = asyncio.ensure_future(ours.aput_writes(stored, [("x", 1)], "first"))
                    await asyncio.sleep(0.3)
                    assert not write.done()  # waits for the holder
                    assert "first" not in (await holder.read(thread))[1]  # kept, and not acknowledged yet
                finally:
                    await asyncio.to_thread(proxy.resume)
                await write
                assert (await _lease_of(ours.memory, thread))[0] is None  # let go, not expired (30 s)
                assert "first" in (await holder.read(thread))[1]
                assert (await _lease_of(ours.memory, thread))[0] is None  # contended: not taken again
                await ours.aput_writes(stored, [("x", 2)], "second")
                assert "second" in (await holder.read(thread))[1]
        assert ours.memory.get_cache_stats().redis_up
    finally:
        proxy.close()


async def test_a_write_by_another_memory_of_the_process_retires_what_a_loop_kept_at_once(
        make_memory: Callable[..., HybridMemory]) -> None:
    """The process holds the lease, so its own writes do not wait for it: once one is acknowledged, no loop of
    the process answers from a value read before it, even while Redis's notice is still on its way."""
    proxy = _redis_proxy()
    try:
        ours = HybridSaver(make_memory(redis_url=proxy.url))
        theirs = HybridSaver(make_memory())
        thread = f"t-{uuid.uuid4().hex[:8]}"
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        for i in range(3):
            stored = await _astep(ours, config, i)
        assert (await ours.aget_tuple(config)) is not None
        proxy.hang(up=False)  # Redis's answers and notices to `ours` are held
        try:
            await theirs.aput_writes(stored, [("x", 1)], "theirs")  # acknowledged, no wait
            read = asyncio.ensure_future(ours.aget_tuple(config))
            await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(proxy.resume)
        got = await read
        assert got is not None and "theirs" in [task for task, _, _ in got.pending_writes]
    finally:
        proxy.close()


async def test_a_write_waits_for_a_stopped_holders_lease_to_expire_and_the_holder_then_sees_it(
        make_memory: Callable[..., HybridMemory], namespace: str) -> None:
    """A holder that cannot answer (stopped) delays another process's write until its lease expires, never
    less, however short the writer's own `redis_timeout`; the write then goes to Redis as usual (not around it),
    and the holder, resumed, reads it."""
    import signal

    import redis.asyncio as redis_async

    from conftest import REDIS_URL

    ours = HybridSaver(make_memory(redis_timeout=0.5, redis_key_tracking=False))
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    for i in range(3):
        stored = await _astep(ours, config, i)
    async with _Holder(namespace, lease=3.0) as holder:
        await holder.read(thread)
        await holder.read(thread)
        assert holder.proc is not None
        holder.proc.send_signal(signal.SIGSTOP)
        try:
            lease, left = await _lease_of(ours.memory, thread)
            assert lease is not None and lease.startswith(f"{holder.proc.pid}:".encode()) and left > 0
            started = time.monotonic()
            await ours.aput_writes(stored, [("x", 1)], "ours")
            assert time.monotonic() - started >= left / 1000 - 0.05
        finally:
            holder.proc.send_signal(signal.SIGCONT)
        assert "ours" in (await holder.read(thread))[1]
    assert ours.memory.get_cache_stats().redis_up
    client = redis_async.Redis.from_url(REDIS_URL)
    try:  # through Redis, not around it
        names = await client.hkeys(ours.memory._core.keys.thread(thread).writes(""))
        assert any(n.startswith(f"{stored['configurable']['checkpoint_id']}\x1fours".encode()) for n in names)
    finally:
        await client.aclose()


async def test_nothing_is_kept_where_redis_may_evict_a_lease(make_memory: Callable[..., HybridMemory],
                                                             private_redis: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Under an eviction policy Redis could drop a lease before it expires: then every read asks Redis."""
    import redis.asyncio as redis_async

    client = redis_async.Redis.from_url(private_redis.url)
    try:
        await client.config_set("maxmemory-policy", "volatile-lru")
    finally:
        await client.aclose()
    saver = HybridSaver(make_memory(redis_url=private_redis.url))
    config: dict[str, Any] = {"configurable": {"thread_id": f"t-{uuid.uuid4().hex[:8]}", "checkpoint_ns": ""}}
    for i in range(3):
        await _astep(saver, config, i)
    calls = _redis_calls(monkeypatch)
    for n in (1, 2, 3):
        assert await saver.aget_tuple(config) is not None and len(calls) == n


async def test_a_write_cancelled_after_redis_ran_it_retires_what_the_process_kept(
        make_memory: Callable[..., HybridMemory]) -> None:
    """A put_writes cancelled while its reply is on its way (Redis ran it; another process may already read it)
    leaves no loop of the process answering from a value read before it, even while Redis's notice to that
    loop is still on its way."""
    import redis.asyncio as redis_async

    from conftest import REDIS_URL

    reader_proxy, writer_proxy = _redis_proxy(), _redis_proxy()
    client = redis_async.Redis.from_url(REDIS_URL)
    try:
        ours = HybridSaver(make_memory(redis_url=reader_proxy.url, redis_timeout=30.0))  # a lease that outlasts
        writer = HybridSaver(make_memory(redis_url=writer_proxy.url))
        thread = f"t-{uuid.uuid4().hex[:8]}"
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        for i in range(3):
            stored = await _astep(ours, config, i)
        for _ in range(2):  # the writer's loop has its own connection (its first call goes by the engine loop)
            assert await writer.aget_tuple(config) is not None
        assert await ours.aget_tuple(config) is not None
        writes_key = ours.memory._core.keys.thread(thread).writes("")
        reader_proxy.hang(up=False)  # Redis's notices to `ours` are held
        writer_proxy.hang(up=False)  # and the writer's replies
        try:
            write = asyncio.ensure_future(writer.aput_writes(stored, [("x", 1)], "cancelled"))
            for _ in range(200):
                if any(b"cancelled" in name for name in await client.hkeys(writes_key)):
                    break  # Redis ran it
                await asyncio.sleep(0.01)
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            read = asyncio.ensure_future(ours.aget_tuple(config))
            await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(reader_proxy.resume)
            await asyncio.to_thread(writer_proxy.resume)
        got = await read
        assert got is not None and "cancelled" in [task for task, _, _ in got.pending_writes]
    finally:
        await client.aclose()
        reader_proxy.close()
        writer_proxy.close()


async def test_a_loops_own_writes_change_what_it_keeps_as_they_changed_redis(
        make_memory: Callable[..., HybridMemory], monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop's own put or pending writes read nothing back: what the loop keeps of the namespace becomes what
    the script made of the thread in Redis (a newer checkpoint and the pending writes it drops; an older one put
    late, which changes nothing; a retried task's write, which keeps the first; an error, which replaces it;
    writes for a checkpoint not put yet, or for an older one). After each, what the loop keeps is what Redis
    holds (the latest id, its record and every pending write, those a read leaves out included), and the next
    read asks Redis nothing and shows what a reader that keeps nothing reads there."""
    import redis.asyncio as redis_async
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.base import ERROR, create_checkpoint

    from conftest import REDIS_URL

    ours = HybridSaver(make_memory(redis_timeout=30.0))  # a lease that outlasts the test
    plain = HybridSaver(make_memory(redis_key_tracking=False))
    thread = f"t-{uuid.uuid4().hex[:8]}"
    config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    for i in range(3):
        await _astep(ours, config, i)
    tup = await ours.aget_tuple(config)
    assert tup is not None
    calls = _redis_calls(monkeypatch)

    def at(checkpoint: dict[str, Any]) -> dict[str, Any]:
        return {"configurable": {**config["configurable"], "checkpoint_id": checkpoint["id"]}}

    def checkpoint(step: int, parent: dict[str, Any]) -> dict[str, Any]:
        c = create_checkpoint(parent, None, step)
        version = ours.get_next_version(parent["channel_versions"]["messages"], None)
        c["channel_values"] = {"messages": [*parent["channel_values"]["messages"],
                                            HumanMessage(f"s{step}", id=f"s{step}")]}
        c["channel_versions"] = {"messages": version}
        return c

    older = checkpoint(10, tup.checkpoint)
    newer = checkpoint(11, tup.checkpoint)
    newest = checkpoint(12, newer)
    assert older["id"] < newer["id"] < newest["id"]
    base = tup.config
    steps: list[Callable[[], Any]] = [
        lambda: ours.aput_writes(base, [("x", 1)], "task-a"),
        lambda: ours.aput_writes(base, [("x", 2)], "task-a"),  # retried: the first value stays
        lambda: ours.aput_writes(base, [(ERROR, "boom")], "task-b"),
        lambda: ours.aput_writes(base, [(ERROR, "again")], "task-b"),  # an error replaces
        lambda: ours.aput_writes(base, [(ERROR, "e1"), (ERROR, "e2")], "task-d"),  # one field twice: the last
        lambda: ours.aput_writes(at(newest), [("y", 3)], "early"),  # before its checkpoint
        lambda: ours.aput(base, newer, {"step": 11}, newer["channel_versions"]),  # drops task-a's, keeps early
        lambda: ours.aput_writes(at(newer), [("z", 4)], "task-c"),
        lambda: ours.aput(base, older, {"step": 10}, older["channel_versions"]),  # late: nothing changes
        lambda: ours.aput_writes(at(older), [("w", 5)], "stale"),  # an older checkpoint's: not kept hot
        lambda: ours.aput(at(newer), newest, {"step": 12}, newest["channel_versions"]),
    ]
    client = redis_async.Redis.from_url(REDIS_URL)
    keys = ours.memory._core.keys.thread(thread)
    try:
        for step in steps:
            await step()
            calls.clear()
            pipe = ours.memory._core.loop_cache()._pipe  # type: ignore[union-attr]
            kept = pipe.values.get(("checkpoint", thread, "")) if pipe is not None else None
            assert kept is not None
            latest, record = await client.hmget(keys.checkpoints, "i\x1f", "c\x1f")
            assert kept[0] == (latest, record, await client.hgetall(keys.writes("")))
            got = await ours.aget_tuple(config)
            assert calls == []  # kept, as the write made it
            assert got == await plain.aget_tuple(config)
    finally:
        await client.aclose()
    assert got is not None and got.config == at(newest)
    assert got.pending_writes == [("early", "y", 3)]


async def test_a_write_changes_what_a_loop_kept_only_when_it_was_the_only_change_since(
        make_memory: Callable[..., HybridMemory]) -> None:
    """Another connection of the process puts a newer checkpoint first, its reply not read yet (so it is not
    acknowledged, and nothing in the process has heard of it); then a loop that keeps the thread puts an older
    one, which Redis leaves behind the newer. The loop's next read must show the thread as Redis has it, not as
    its own put would have made what it kept: the script's change count says another change came between."""
    import redis.asyncio as redis_async
    from langgraph.checkpoint.base import create_checkpoint

    from langchain_hybrid_memory.cache.scripts import CHECKPOINT_PUT

    from conftest import REDIS_URL

    client = redis_async.Redis.from_url(REDIS_URL)
    try:
        ours = HybridSaver(make_memory(redis_timeout=30.0))  # a lease that outlasts the test
        thread = f"t-{uuid.uuid4().hex[:8]}"
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        for i in range(3):  # the last call, a write, ends the loop's tracking of the thread's keys: no notice
            await _astep(ours, config, i)
        tup = await ours.aget_tuple(config)
        assert tup is not None
        older, newer = create_checkpoint(tup.checkpoint, None, 3), create_checkpoint(tup.checkpoint, None, 4)
        assert older["id"] < newer["id"]
        # The newer put, as the saver would send it, on a connection whose reply nobody in the process reads.
        _, (thread_id, ns, *args) = ours._put_call(ours._prepare_put(tup.config, newer, {"step": 4}, {}))
        cache = ours.memory._core.cache
        assert cache is not None
        keys = cache.thread_keys(thread_id, ns)
        await client.eval(CHECKPOINT_PUT, len(keys), *keys, *cache.checkpoint_put_args(thread_id, ns, *args))
        pipe = ours.memory._core.loop_cache()._pipe  # type: ignore[union-attr]
        assert pipe is not None and pipe.values.get(("checkpoint", thread, "")) is not None  # still kept
        await ours.aput(tup.config, older, {"step": 3}, {})
        got = await ours.aget_tuple(config)
        assert got is not None and got.checkpoint["id"] == newer["id"]
    finally:
        await client.aclose()


async def test_commits_of_the_same_records_in_other_orders_never_deadlock(
        make_memory: Callable[..., HybridMemory]) -> None:
    """Two processes may commit the same records at once in different orders (one's write-behind batch, the
    other's settling of a thread before a read): each table's rows go in one order, so they never deadlock."""
    from langchain_hybrid_memory.checkpoint.store import commit_records, put_record, writes_record

    memory = make_memory()
    await memory.aclear_session("warm-up")  # starts the engine: its store is used directly below
    store = memory._core.need_store()
    for attempt in range(10):
        records = []
        for i in range(40):
            thread, cid = f"t{i}", f"{attempt:04}.{i:04}"
            records.append(put_record(thread, "", cid, None, None, ("json", b"{}"), "{}", ("json", b"{}"), "{}",
                                      [("messages", f"{cid}.v", "json", b"[]")]))
            records.append(writes_record(thread, "", cid, "task", "", [(0, "messages", "json", b"[]")]))
        await asyncio.gather(*(memory._core.engine.arun(commit_records(store, order))
                               for order in (records, records[::-1], records[1::2] + records[::2])))


def test_records_round_trip_and_damaged_ones_raise_value_error() -> None:
    from langchain_hybrid_memory.checkpoint.store import pack, text, unpack

    parts: list[Any] = ["c", "thread \u00e9", "", None, b"\x00\xff bytes"]
    assert [text(p) if i < 4 else p for i, p in enumerate(unpack(pack(parts)))] == parts
    legacy = b"".join(len(p).to_bytes(4, "big") + p for p in (b"w", b"t"))
    assert unpack(legacy) == [b"w", b"t"]
    for damaged in (legacy[:-1], b"\x00\x00\x00", pack(parts)[:-3], b"\x01", b"\xc1"):
        with pytest.raises(ValueError):
            unpack(damaged)
    with pytest.raises(ValueError):
        text(1)  # type: ignore[arg-type]
