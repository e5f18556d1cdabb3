"""Recall: full-text search over every stored message (one session, or every session of one user, never across
users), `get_context(query=...)`, the background indexer (off the write path, complete even when a commit races
its pass), erasure of the index, and bad input."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from langchain_hybrid_memory import (
    HybridConfig,
    HybridMemory,
    InvalidInputError,
    Message,
    Mode,
    SessionOwnershipError,
)

from conftest import PG_URL, pg_fetch

TRIP = "I am flying to Lisbon next Tuesday for the architecture conference"


def _chat(n: int = 30) -> list[Message]:
    """A fact, then filler turns that share none of its words."""
    out = [Message("human", TRIP, id="fact"), Message("ai", "Noted, have a good trip.", id="ack")]
    for i in range(n):
        out.append(Message("human" if i % 2 == 0 else "ai", f"turn {i}: pasta recipes and rainy weather", id=f"f{i}"))
    return out


def _indexed(memory: HybridMemory) -> None:
    assert memory.wait_for_index(30), "the indexer did not catch up"


def test_search_in_a_session_and_across_a_users_sessions_never_across_users(
        make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("a-1", _chat(), user_id="alice")
    memory.add_messages("a-2", [Message("human", "Book the Lisbon hotel near the river", id="hotel")], user_id="alice")
    memory.add_messages("b-1", [Message("human", "Bob is flying to Lisbon too", id="bob")], user_id="bob")
    _indexed(memory)
    hits = memory.search("Which city am I flying to?", session_id="a-1")
    assert [h.message.id for h in hits] == ["fact"]
    assert hits[0].session_id == "a-1" and hits[0].seq == hits[0].message.seq and hits[0].score > 0
    alice = memory.search("lisbon", user_id="alice", k=10)
    assert {h.message.id for h in alice} == {"fact", "hotel"}  # both of her sessions, none of Bob's
    assert [h.message.id for h in memory.search("lisbon", user_id="bob")] == ["bob"]
    assert [h.message.id for h in memory.search("lisbon", session_id="a-1", user_id="alice")] == ["fact"]
    with pytest.raises(SessionOwnershipError):
        memory.search("lisbon", session_id="b-1", user_id="alice")
    with pytest.raises(InvalidInputError, match="never crosses users"):
        memory.search("lisbon")
    assert memory.search("lisbon", user_id="nobody") == []
    both = memory.search("lisbon", session_id=["a-1", "b-1"], k=10)  # several sessions, no user: no check
    assert {h.message.id for h in both} == {"fact", "bob"}
    with pytest.raises(SessionOwnershipError):
        memory.search("lisbon", session_id=["a-1", "b-1"], user_id="alice")
    recalled = memory.recall("flying to Lisbon", session_id=["a-1", "a-2"], exclude_ids={"hotel"})
    assert [m.id for m in recalled] == ["fact"]
    assert memory.get_cache_stats().searches >= 4


def test_the_best_match_comes_first_and_k_bounds_the_hits(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("s", [
        Message("human", "the conference is in Lisbon", id="weak"),
        Message("human", "Lisbon conference flight: I am flying out Tuesday, the Lisbon flight leaves at nine",
                id="strong"),
        *[Message("ai", f"unrelated {i}", id=f"u{i}") for i in range(10)],
    ])
    _indexed(memory)
    hits = memory.search("when does my Lisbon flight leave", session_id="s", k=5)
    assert [h.message.id for h in hits][:2] == ["strong", "weak"]
    assert hits[0].score > hits[1].score
    assert len(memory.search("unrelated", session_id="s", k=3)) == 3


def test_get_context_recalls_what_left_the_window_in_conversation_order_within_the_budget(
        make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory(max_session_messages=6)
    chat = _chat()
    chat.insert(5, Message("human", "My flight number to Lisbon is TP 1234", id="number"))
    memory.add_messages("s", chat)
    _indexed(memory)
    ctx = memory.get_context("s", query="What is my flight to Lisbon?")
    assert [m.id for m in ctx.messages] == [m.id for m in chat[-6:]]  # the window as without a query
    assert [m.id for m in ctx.recalled] == ["fact", "number"]  # conversation order, not rank order
    assert memory.get_context("s").recalled == []
    # A match the window holds is not recalled twice.
    assert [h.message.id for h in memory.search("29", session_id="s")] == ["f29"]
    assert memory.get_context("s", query="29").recalled == []
    tight = make_memory(max_session_messages=6, recall_max_tokens=12)
    assert len(tight.get_context("s", query="What is my flight to Lisbon?").recalled) == 1


async def test_async_search_and_recall(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory(max_session_messages=4)
    await memory.aadd_messages("s", _chat())
    assert await memory.await_for_index(30)
    assert [h.message.id for h in await memory.asearch("flying to Lisbon", session_id="s")] == ["fact"]
    ctx = await memory.aget_context("s", query="Lisbon trip")
    assert [m.id for m in ctx.recalled] == ["fact", "ack"]  # "trip" is in the reply


def test_multi_part_content_and_persistent_mode_are_indexed(namespace: str) -> None:
    memory = HybridMemory(HybridConfig(mode=Mode.PERSISTENT, database_url=PG_URL, namespace=namespace))
    try:
        memory.add_messages("p", [Message("human", [{"type": "text", "text": "the Lisbon itinerary"},
                                                    {"type": "image_url", "image_url": {"url": "data:,"}}],
                                          id="parts")])
        _indexed(memory)
        assert [h.message.id for h in memory.search("itinerary", session_id="p")] == ["parts"]
    finally:
        memory.close()


def test_messages_committed_by_a_process_that_never_indexed_are_found_by_another(
        make_memory: Callable[..., HybridMemory]) -> None:
    """The mark is committed with the messages: a writer whose indexer never ran (it died, or lags) leaves
    nothing behind."""
    writer = make_memory(search_index=False)  # this writer never indexes
    writer.add_messages("s", _chat())
    writer.flush()
    assert writer.search("Lisbon", session_id="s") == []  # searchable once some process indexes it
    ns = writer.config.namespace
    assert pg_fetch(f'SELECT count(*) FROM "{ns}".message_search')[0][0] == 0
    other = make_memory()
    _indexed(other)
    assert [h.message.id for h in other.search("Lisbon", session_id="s")] == ["fact"]
    assert other.get_cache_stats().index_backlog == 0


async def test_a_commit_in_flight_during_an_index_pass_is_indexed_afterwards(
        make_memory: Callable[..., HybridMemory]) -> None:
    """A commit whose session mark is already set leaves the row as it is but holds its lock until it
    commits: the indexer's pass skips that session instead of clearing a mark the commit relies on."""
    memory = make_memory(recall_index_interval=3600.0)
    await memory.aadd_messages("s", [Message("human", "first words", id="m1")])
    await memory.aflush()
    ns = memory.config.namespace
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'SET search_path TO "{ns}"')
        tx = conn.transaction()
        await tx.start()
        # What a write-behind commit does (store.py _PERSIST): its row, then the session's upsert.
        await conn.execute("INSERT INTO messages (session_id, seq, msg_id, role, body, created_at)"
                           " VALUES ('s', 9000000000000000, 'late', 'human',"
                           " '{\"i\":\"late\",\"r\":\"human\",\"c\":\"zebra crossing\",\"t\":1.0}', now())")
        from langchain_hybrid_memory.store import _SESSION_UPSERT

        await conn.execute("INSERT INTO sessions AS s (session_id, user_id, created_at, last_active_at,"
                           " unindexed_from) VALUES ('s', NULL, now() - interval '1 hour',"
                           " now() - interval '1 hour', 9000000000000000)" + _SESSION_UPSERT)
        assert await memory.await_for_index(5) is False  # the pass skips the session the commit holds
        await tx.commit()
    finally:
        await conn.close()
    assert await memory.await_for_index(10)
    assert {h.message.id for h in await memory.asearch("zebra first", session_id="s")} == {"late", "m1"}


def test_erasure_removes_the_index(make_memory: Callable[..., HybridMemory]) -> None:
    from langchain_hybrid_memory.embeddings import OfflineEmbedder

    memory = make_memory(embedder=OfflineEmbedder())
    for sid, uid in (("gone", "u1"), ("user", "u2"), ("kept", "u3"), ("idle", "u4")):
        memory.add_messages(sid, _chat(4), user_id=uid)
    _indexed(memory)
    ns = memory.config.namespace

    def rows(sid: str) -> int:
        return sum(int(pg_fetch(f'SELECT count(*) FROM "{ns}".{table} WHERE session_id = $1', sid)[0][0])
                   for table in ("message_search", "message_vectors"))

    fact_seq = memory.search("Lisbon", session_id="kept")[0].seq
    memory.delete_messages("kept", [fact_seq])
    assert memory.search("Lisbon", session_id="kept", method="lexical") == [] and rows("kept") == 2 * 5
    assert all(h.message.id != "fact" for h in memory.search("Lisbon", session_id="kept"))
    memory.clear_session("gone")
    memory.delete_user("u2")
    pg_fetch(f"UPDATE \"{ns}\".sessions SET last_active_at = now() - interval '3 days' WHERE session_id = 'idle'")
    memory.purge_idle_sessions(86_400)
    assert (rows("gone"), rows("user"), rows("idle")) == (0, 0, 0)
    assert memory.search("Lisbon", user_id="u2") == []


def test_bad_queries_get_a_typed_error_or_nothing(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory(max_query_chars=100)
    memory.add_messages("s", _chat(2))
    _indexed(memory)
    before = memory.get_cache_stats().indexed
    assert memory.search("", session_id="s") == []
    assert memory.search("   the of and  ", session_id="s") == []  # stop words only
    assert [h.message.id for h in memory.search("Lisbon\x00conference", session_id="s")] == ["fact"]
    assert memory.search("'\"():*&|!<->", session_id="s") == []  # tsquery syntax is not interpreted
    for bad, k in (("x" * 101, 5), (None, 5), ("Lisbon", 0), ("Lisbon", True)):
        with pytest.raises(InvalidInputError):
            memory.search(bad, session_id="s", k=k)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        memory.get_context("s", query="x" * 101)
    assert memory.get_cache_stats().indexed == before


def test_the_indexer_survives_postgres_going_away_and_catches_up(private_pg: Any, namespace: str) -> None:
    memory = HybridMemory(HybridConfig(database_url=private_pg.url, namespace=namespace,
                                       recall_index_interval=0.1, pg_timeout=1.0, connect_timeout=1.0))
    try:
        memory.start()
        private_pg.stop()
        memory.add_messages("s", _chat(2))  # acknowledged from Redis; nothing to commit it to, or index it in
        t0 = time.monotonic()
        while memory.get_cache_stats().index_failures == 0 and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert memory.get_cache_stats().index_failures > 0
        private_pg.start()
        _indexed(memory)
        assert [h.message.id for h in memory.search("Lisbon", session_id="s")] == ["fact"]
    finally:
        memory.close()


def test_a_long_session_is_indexed_over_several_passes(make_memory: Callable[..., HybridMemory]) -> None:
    """One indexer transaction takes at most `_PASS_MESSAGES` of a session: the rest follows, none is skipped."""
    from langchain_hybrid_memory.recall import _PASS_MESSAGES

    memory = make_memory()
    n = 2 * _PASS_MESSAGES + 50
    memory.add_messages("long", [Message("human", f"note number{i} here", id=f"m{i}") for i in range(n)])
    _indexed(memory)
    ns = memory.config.namespace
    assert pg_fetch(f'SELECT count(*) FROM "{ns}".message_search')[0][0] == n
    for i in (0, _PASS_MESSAGES - 1, _PASS_MESSAGES, n - 1):
        assert [h.message.id for h in memory.search(f"number{i}", session_id="long")] == [f"m{i}"]
