"""Retention and erasure: what is deleted stays deleted. A cleared session is not brought back by write-behind
still in flight in another process; single messages are deleted from Redis and PostgreSQL alike (and
`list_sessions` follows); retention purges sessions idle longer than asked, and only those.

Deleting a user (`delete_user` leaves no trace anywhere) is checked with user isolation in `test_security.py`.
"""

from __future__ import annotations

import time

import pytest

from langchain_hybrid_memory import Message, SessionOwnershipError

from conftest import pg_fetch


def test_clear_session_is_not_undone_by_inflight_write_behind(make_memory, namespace):
    writer = make_memory(write_behind_delay=600)
    writer.add_messages("s", [Message("human", f"m{i}") for i in range(5)])
    other = make_memory()
    other.clear_session("s")  # another process deletes while the writes are still in flight
    writer.flush()
    other.reclaim_orphans(0)
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 0
    writer.add_messages("s", [Message("human", "after clear")])
    writer.flush()
    assert [m.content for m in other.get_messages("s")] == ["after clear"]


def test_delete_single_messages_and_list_sessions(make_memory, namespace):
    memory = make_memory(max_session_messages=4)
    sent = memory.add_messages("s", [Message("human", f"m{i}") for i in range(6)], user_id="u")
    memory.add_messages("t", [Message("human", "other")])
    assert memory.delete_messages("s", [sent[1].seq, sent[5].seq]) == 2  # type: ignore[list-item]
    assert [m.content for m in memory.get_messages("s")] == ["m0", "m2", "m3", "m4"]
    assert [m.content for m in memory.get_recent_messages("s")] == ["m0", "m2", "m3", "m4"]
    assert memory.list_sessions() == ["s", "t"]
    assert memory.list_sessions(user_id="u") == ["s"]
    assert memory.list_sessions(limit=1) == ["s"]
    with pytest.raises(SessionOwnershipError):
        memory.delete_messages("s", [sent[0].seq], user_id="intruder")  # type: ignore[list-item]


def test_list_sessions_includes_other_processes_sessions_not_committed_yet(make_memory):
    """Sessions another process wrote (acknowledged, its batches still waiting) are listed, with and without a
    user."""
    writer = make_memory(write_behind_delay=30)  # nothing reaches PostgreSQL unless something commits it
    reader = make_memory()
    writer.add_messages("new-a", [Message("human", "a")], user_id="u")
    writer.add_messages("new-b", [Message("human", "b")])
    assert reader.list_sessions() == ["new-a", "new-b"]
    assert reader.list_sessions(user_id="u") == ["new-a"]


def test_a_session_bound_by_a_write_still_waiting_refuses_other_users(make_memory):
    """A session whose owner only waiting writes name (another process's batch not committed yet, its cached
    window dropped) still belongs to that user: another user's clear, summary or switch is refused, and the
    session is intact once the batch commits."""
    writer = make_memory(write_behind_delay=30)  # nothing reaches PostgreSQL unless something commits it
    reader = make_memory()
    writer.add_messages("s", [Message("human", "hello there")], user_id="alice")
    for memory in (reader, writer):  # another process, and the writer itself (its own queue names alice)
        memory.invalidate_session("s")  # the cached window (and the owner it names) goes
        with pytest.raises(SessionOwnershipError):
            memory.clear_session("s", user_id="mallory")
        with pytest.raises(SessionOwnershipError):
            memory.get_summaries("s", user_id="mallory")
        with pytest.raises(SessionOwnershipError):
            memory.set_auto_summarize("s", False, user_id="mallory")
    writer.flush()
    assert [m.content for m in reader.get_messages("s", user_id="alice")] == ["hello there"]


def test_a_clear_from_a_host_whose_clock_lags_keeps_out_writes_still_waiting(make_memory, monkeypatch):
    """A session cleared by a process whose clock is behind Redis's (sequence numbers come from Redis's clock)
    while another process's writes wait, its cached window already gone: the waiting writes stay deleted once
    they commit (the tombstone covers their sequence numbers, not only the eraser's clock)."""
    import langchain_hybrid_memory.erasure as erasure

    writer = make_memory(write_behind_delay=30)  # nothing reaches PostgreSQL unless something commits it
    reader = make_memory()
    writer.add_messages("s", [Message("human", f"m{i}") for i in range(3)])
    reader.invalidate_session("s")  # the window, and the last seq its meta held, are gone

    class Lagging:  # this host's clock, 5 s behind
        @staticmethod
        def time_ns() -> int:
            return time.time_ns() - 5_000_000_000

    monkeypatch.setattr(erasure, "time", Lagging)
    reader.clear_session("s")
    writer.flush()
    assert reader.get_messages("s") == []
    ns = reader.config.namespace
    assert pg_fetch(f'SELECT count(*) FROM "{ns}".messages WHERE session_id = $1', "s")[0][0] == 0


def test_an_erased_owner_does_not_own_the_session_written_again_by_another(make_memory):
    """A session erased while its writes waited, then written by another user: the erased writes (still queued,
    to be acknowledged) name no owner any more."""
    memory = make_memory(write_behind_delay=30)
    memory.add_messages("s", [Message("human", "a")], user_id="alice")
    memory.clear_session("s", user_id="alice")
    memory.add_messages("s", [Message("human", "b")], user_id="bob")
    memory.invalidate_session("s")  # only the queue names the owner now
    assert memory.get_summaries("s", user_id="bob") == []
    with pytest.raises(SessionOwnershipError):
        memory.set_auto_summarize("s", False, user_id="alice")


def test_retention_purges_idle_sessions(make_memory, namespace):
    memory = make_memory()
    memory.add_messages("old", [Message("human", "x")])
    memory.add_messages("new", [Message("human", "y")])
    memory.flush()
    pg_fetch(f"UPDATE \"{namespace}\".sessions SET last_active_at = now() - interval '40 days'"
             " WHERE session_id = 'old'")
    seen: list[tuple[int, int]] = []
    assert memory.purge_idle_sessions(30 * 86400, on_progress=lambda d, t: seen.append((d, t))) == 1
    assert seen == [(1, 1)]
    assert memory.get_messages("old") == [] and memory.get_recent_messages("old") == []
    assert [m.content for m in memory.get_messages("new")] == ["y"]


async def test_an_erase_of_many_sessions_looks_up_the_outbox_in_one_exchange_and_keeps_their_writes_out(
        make_memory, namespace):
    """Erasing a user's sessions (or a retention pass's batch) takes each session's waiting writes, any process's,
    from one outbox exchange, not one per session; each session's tombstone still covers its own."""
    import asyncio

    from langchain_hybrid_memory.cache.shared_connection import SharedConnection

    writer = make_memory(write_behind_delay=30)  # another process: its batches wait in the outbox
    eraser = make_memory()
    sids = [f"s{i}" for i in range(20)]
    for i, sid in enumerate(sids):
        await writer.aadd_messages(sid, [Message("human", f"{sid}-{k}") for k in range(i % 3 + 1)], user_id="u")
    await eraser.aget_recent_messages("s0", user_id="u")  # the loop's first call goes to the engine loop
    await eraser.aget_recent_messages("s0", user_id="u")
    cache = eraser._core.loop_cache()
    assert cache is not None
    await cache.session_outbox("s0")  # the loop's connection opened, the script loaded
    sent: list[int] = []
    call, loop = SharedConnection.call, asyncio.get_running_loop()

    def counted(self, *args):
        if self._loop is loop:
            sent.append(1)
        return call(self, *args)

    SharedConnection.call = counted
    try:
        batched = await cache.sessions_outbox(sids)
    finally:
        SharedConnection.call = call
    assert len(sent) == 1
    assert batched == [await cache.session_outbox(sid) for sid in sids]
    assert [len(items) for items in batched] == [i % 3 + 1 for i in range(len(sids))]

    assert await eraser.adelete_user("u") == len(sids)  # known from the user index: none is committed yet
    await writer.aflush()
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 0
    for sid in sids:
        assert await eraser.aget_messages(sid) == []


def test_a_session_erased_by_another_process_and_taken_by_another_user_is_the_new_users(make_memory, monkeypatch):
    """alice's write waits in this process when another process erases the session; bob then writes it here. Once
    alice's (tombstoned) batch is committed and bob's still waits, the queue names bob as the owner: bob reads his
    session, alice is refused."""
    from langchain_hybrid_memory.store import StoreDown

    writer = make_memory(write_behind_delay=600, persist_batch_size=3, persist_concurrency=1)
    other = make_memory()
    writer.add_messages("s", [Message("human", "alice-1"), Message("human", "alice-2")], user_id="alice")
    other.clear_session("s", user_id="alice")  # alice's batch still waits here
    wb = writer._core.wb
    assert wb is not None
    persist = wb.store.persist

    async def bob_held(rows, users):  # PostgreSQL refuses bob's batch for now (briefly away)
        if "bob" in users:
            raise StoreDown("held")
        return await persist(rows, users)

    monkeypatch.setattr(wb.store, "persist", bob_held)
    # s is free again: bob binds it. 4 rows >= persist_batch_size wakes the flusher: alice's batch commits
    # (nothing of it is stored: the tombstone), bob's is retried
    writer.add_messages("s", [Message("human", "bob-1"), Message("human", "bob-2")], user_id="bob")
    alice = next(e.index for e in list(wb._queue) if e.user_id == "alice")
    assert writer._run(wb.wait_for(alice, 5))
    other.invalidate_session("s")  # the cached window, which names bob, goes: only the queue names him now
    assert [m.content for m in writer.get_messages("s", user_id="bob")] == ["bob-1", "bob-2"]
    with pytest.raises(SessionOwnershipError):
        writer.get_messages("s", user_id="alice")
    monkeypatch.setattr(wb.store, "persist", persist)
    writer.flush()
    assert [m.content for m in other.get_messages("s", user_id="bob")] == ["bob-1", "bob-2"]
