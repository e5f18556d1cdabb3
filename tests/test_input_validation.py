"""Bad input: whatever a caller passes is stored and read back exactly, or refused with a typed error before
anything is written. Odd ids work and never collide (the key layout is injective); contents and metadata round
trip exactly through Redis and PostgreSQL; oversized, malformed or too many messages and bad paging arguments are
refused whole, with clear errors.

Property-based (hypothesis, every code point: controls, NUL and lone surrogates included) and pinned examples, on
the real servers in a private namespace. Hostile input (injection) and secrets are in `test_security.py`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_hybrid_memory import (
    ConfigurationError,
    HybridConfig,
    HybridMemory,
    InvalidInputError,
    InvalidMessageError,
    InvalidSessionIdError,
    InvalidUserIdError,
    Message,
    SessionOwnershipError,
)
from langchain_hybrid_memory.history import HybridChatMessageHistory
from langchain_hybrid_memory.messages import encode

from conftest import PG_URL, pg_fetch, valid_id

HYPO = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


def _contents(msgs: list[Message]) -> list[Any]:
    return [m.content for m in msgs]


# -- ids ------------------------------------------------------------------------------------------------------
ODD_IDS = ["{}", ":", "a:b", "a%3Ab", "a b", " ", "}{", "{x}", "a}b", "ünïcødé 会话 🙂", "'; DROP TABLE messages; --",
           "*", "?", "\\", "%", "%%", "a" * 256, "s:{0}:w"]


def test_odd_session_ids_work_and_never_collide(make_memory, namespace):
    memory = make_memory()
    for sid in ODD_IDS:
        memory.add_messages(sid, [Message("human", f"for {sid}")])
    memory.flush()
    for sid in ODD_IDS:
        assert [m.content for m in memory.get_recent_messages(sid)] == [f"for {sid}"]
        memory.invalidate_session(sid)
        assert [m.content for m in memory.get_recent_messages(sid)] == [f"for {sid}"]
    stored = pg_fetch(f'SELECT session_id, count(*) FROM "{namespace}".messages GROUP BY session_id')
    assert {r[0]: r[1] for r in stored} == dict.fromkeys(ODD_IDS, 1)


@pytest.mark.parametrize("sid", ["", "a\x00b", "line\nbreak", "tab\t", "\x7f", "lone \ud800", "a" * 257, 42, None])
def test_refused_session_ids(memory, sid):
    with pytest.raises(InvalidSessionIdError):
        memory.add_messages(sid, [Message("human", "x")])
    with pytest.raises(InvalidSessionIdError):
        memory.get_recent_messages(sid)


@pytest.mark.parametrize("uid", ["", "u\x00", "\ud800", 7])
def test_refused_user_ids(memory, uid):
    with pytest.raises(InvalidUserIdError):
        memory.add_messages("s", [Message("human", "x")], user_id=uid)


# Every code point, controls, NUL and lone surrogates included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
TRICKY_IDS = ["{}", "{0}", ":", "a:b", "%3A", "%", "a%3Ab", "s:{0}:w", "*", "?", "[a]", "\\", " ", "ünï 会话 🙂",
              "'; DROP TABLE messages; --", "\u2028", "\u200b", "\ufeff", "\U0010ffff", "a" * 256, "a" * 257]
IDS = st.one_of(ANY_TEXT, st.sampled_from(TRICKY_IDS), st.text(min_size=250, max_size=260),
                st.builds(lambda a: f"{a}:{{{a}}}", ANY_TEXT))


@pytest.fixture
def id_world(make_memory: Callable[..., HybridMemory]) -> tuple[HybridMemory, dict[str, Any]]:
    return make_memory(max_session_messages=5), {"owner": {}, "msgs": {}, "keys": {}, "users": {}, "n": 0}


@HYPO
@given(sid=IDS, uid=st.none() | IDS)
def test_session_and_user_ids_round_trip_or_typed_error_never_collide(id_world: Any, sid: Any, uid: Any) -> None:
    memory, world = id_world
    world["n"] += 1
    content = f"#{world['n']}"
    if not valid_id(sid, 256):
        with pytest.raises(InvalidSessionIdError):
            memory.add_messages(sid, [Message("human", content)], user_id=uid)
        with pytest.raises(InvalidSessionIdError):
            memory.get_recent_messages(sid)
        with pytest.raises(InvalidSessionIdError):
            memory.get_messages(sid)
        return
    if uid is not None and not valid_id(uid, 256):
        with pytest.raises(InvalidUserIdError):
            memory.add_messages(sid, [Message("human", content)], user_id=uid)
        with pytest.raises(InvalidUserIdError):
            memory.delete_user(uid)
        return
    owner = world["owner"].get(sid)
    if uid is not None and owner is not None and owner != uid:
        with pytest.raises(SessionOwnershipError):
            memory.add_messages(sid, [Message("human", content)], user_id=uid)
        with pytest.raises(SessionOwnershipError):
            memory.get_recent_messages(sid, user_id=uid)
    else:
        memory.add_messages(sid, [Message("human", content)], user_id=uid)
        world["msgs"].setdefault(sid, []).append(content)
        if uid is not None:
            world["owner"][sid] = owner = uid
    # The key layout is injective: no two ids ever share a key.
    assert world["keys"].setdefault(memory.keys.session(sid).window, sid) == sid
    if uid is not None:
        assert world["users"].setdefault(memory.keys.user(uid), uid) == uid
    expected = world["msgs"].get(sid, [])
    assert _contents(memory.get_recent_messages(sid, user_id=owner)) == expected[-5:]
    if world["n"] % 3 == 0:
        memory.flush()
        memory.invalidate_session(sid)
        assert _contents(memory.get_recent_messages(sid)) == expected[-5:]  # cold: from PostgreSQL
    assert _contents(memory.get_messages(sid)) == expected  # the whole transcript: nobody else's messages


# -- contents and metadata --------------------------------------------------------------------------------------
CONTENTS = ["nul \x00 inside", "lone \ud800 surrogate", "\udfff", "emoji 🙂 and 会话", "quote \" backslash \\",
            "", "x" * 200_000, "\u2028\u2029", "json {\"a\": [1, 2]}"]


def test_exact_content_round_trip_through_redis_and_postgres(make_memory):
    memory = make_memory(max_session_messages=50)
    blocks = [{"type": "text", "text": "a\x00b"}, {"type": "image_url", "image_url": {"url": "data:..."}}]
    sent = memory.add_messages("s", [Message("human", c) for c in CONTENTS]
                               + [Message("ai", blocks, metadata={"nested": {"k": ["\x00", 1.5, None, True]}})])
    hot = memory.get_recent_messages("s")
    memory.flush()
    memory.invalidate_session("s")
    cold = memory.get_recent_messages("s")
    full = memory.get_messages("s")
    for got in (hot, cold, full):
        assert [m.content for m in got] == [*CONTENTS, blocks]
        assert got[-1].metadata == {"nested": {"k": ["\x00", 1.5, None, True]}}
        assert [m.id for m in got] == [m.id for m in sent]


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), ANY_TEXT)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
                    max_leaves=25)
HUGE = st.builds(lambda s, n: (s or "x") * n, st.text(st.characters(exclude_categories=()), max_size=8),
                 st.integers(1_000, 60_000))
CONTENT = st.one_of(ANY_TEXT, HUGE, st.lists(st.dictionaries(ANY_TEXT, JSON, max_size=3), max_size=3))
METADATA = st.dictionaries(ANY_TEXT, JSON, max_size=5)
ROLES = st.sampled_from(["human", "ai", "system", "tool", "user", "assistant"]) | st.text(
    st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=64)
MSG_IDS = st.none() | st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=256)


@pytest.fixture
def content_world(make_memory: Callable[..., HybridMemory]) -> tuple[HybridMemory, list[int]]:
    return make_memory(max_session_messages=5), [0]


def _same(a: Any, b: Any) -> bool:
    """Equality that also requires the same types all the way down (1 == 1.0 == True would hide changes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@HYPO
@given(content=CONTENT, metadata=METADATA, role=ROLES, msg_id=MSG_IDS)
def test_contents_and_metadata_round_trip_exactly(content_world: Any, content: Any, metadata: Any, role: str,
                                                  msg_id: str | None) -> None:
    memory, counter = content_world
    counter[0] += 1
    sid = f"c{counter[0]}"
    msg = Message(role, content, metadata=metadata) if msg_id is None else Message(role, content, msg_id, metadata)
    try:
        sent = memory.add_messages(sid, [msg])
    except InvalidMessageError as exc:
        assert "max_message_bytes" in str(exc)  # the only refusal possible for these inputs: size
        assert memory.get_recent_messages(sid) == []
        return
    for stage in ("hot", "cold", "postgres"):
        if stage == "cold":
            memory.flush()
            memory.invalidate_session(sid)
        got = memory.get_messages(sid) if stage == "postgres" else memory.get_recent_messages(sid)
        assert len(got) == 1, stage
        m = got[0]
        assert (m.role, m.id, m.seq) == (role, sent[0].id, sent[0].seq), stage
        assert _same(m.content, content), stage
        assert _same(m.metadata, metadata), stage


@HYPO
@given(content=ANY_TEXT | HUGE, role=ROLES, msg_id=st.text(min_size=1, max_size=64),
       stamp=st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.none())
def test_the_fast_encoder_writes_what_json_writes(content: str, role: str, msg_id: str, stamp: Any) -> None:
    """encode() has a shortcut for plain messages; its bytes must be exactly the general JSON encoder's."""
    from langchain_hybrid_memory.messages import _dumps, encode
    msg = Message(role, content, msg_id, created_at=stamp)
    assert encode(msg) == _dumps({"i": msg_id, "r": role, "c": content, "t": stamp})


@pytest.mark.parametrize("metadata, content", [
    pytest.param({"nan": float("nan"), "inf": float("-inf"), "big": 2**80}, "x", id="nan-inf-bigint"),
    pytest.param({"k": "\x00\ud800x\udfff"}, ["\x00", {"\udfff": "\ud800"}], id="nul-and-lone-surrogates"),
    pytest.param({"k": "\ud83d\ude00"}, ["\ud800\udc00"], id="adjacent-lone-surrogates"),
    pytest.param({1: "a"}, "x", id="int-key"),
    pytest.param({None: 1, True: 2}, "x", id="none-and-bool-keys"),
    pytest.param({"t": (1, 2)}, [("a", 1)], id="tuples"),
])
def test_metadata_round_trips_exactly_or_is_refused(make_memory: Callable[..., HybridMemory], metadata: Any,
                                                     content: Any) -> None:
    memory = make_memory()
    try:
        memory.add_messages("s", [Message("human", content, metadata=metadata)])
    except InvalidMessageError:
        assert memory.get_recent_messages("s") == []
        return
    memory.flush()
    for got in (memory.get_recent_messages("s"), memory.get_messages("s")):
        assert _same(got[0].content, content) and _same(got[0].metadata, metadata)


@pytest.mark.parametrize("role", [
    pytest.param("a\x00b", id="nul"),
    pytest.param("x\ud800", id="lone-surrogate"),
    pytest.param("line\nbreak\t", id="newline-tab"),
])
def test_a_bad_role_is_refused_or_stored_and_never_stops_persistence(make_memory: Callable[..., HybridMemory],
                                                                     role: str, namespace: str) -> None:
    memory = make_memory()
    try:
        try:
            memory.add_messages("s", [Message(role, "hello")])
        except InvalidMessageError:
            pass
        memory.add_messages("other", [Message("human", "must reach PostgreSQL")])
        memory.flush(timeout=3)
    finally:
        memory.close(flush_timeout=0.5)
    rows = pg_fetch(f'SELECT session_id, role FROM "{namespace}".messages ORDER BY session_id')
    assert ("other", "human") in [(r[0], r[1]) for r in rows]


# -- limits and malformed calls -----------------------------------------------------------------------------------
def test_huge_message_at_the_limit_round_trips_and_one_byte_more_is_refused(make_memory: Callable[..., HybridMemory],
                                                                            namespace: str) -> None:
    memory = make_memory()  # the default max_message_bytes: 1 MB
    limit = memory.config.max_message_bytes
    prefix = "\x00é🙂\ud800" * 10  # escaped: far more bytes than characters
    text = prefix + "x" * (limit - len(encode(Message("human", prefix, "big", created_at=1.5))))
    assert len(encode(Message("human", text, "big", created_at=1.5))) == limit
    memory.add_messages("s", [Message("human", text, "big", created_at=1.5)])
    with pytest.raises(InvalidMessageError, match="max_message_bytes"):
        memory.add_messages("s", [Message("human", text + "y", "big2", created_at=1.5)])
    memory.flush()
    memory.invalidate_session("s")
    for got in (memory.get_recent_messages("s"), memory.get_messages("s")):
        assert [m.id for m in got] == ["big"] and got[0].content == text
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 1


def test_oversized_message_refused_nothing_written(make_memory, namespace):
    memory = make_memory(max_message_bytes=1000)
    memory.add_messages("s", [Message("human", "ok")])
    with pytest.raises(InvalidMessageError, match="max_message_bytes"):
        memory.add_messages("s", [Message("human", "fine"), Message("human", "x" * 2000)])
    assert [m.content for m in memory.get_recent_messages("s")] == ["ok"]
    memory.flush()
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 1


@pytest.mark.parametrize("bad", [
    [Message("human", "ok"), Message("human", object())],  # type: ignore[arg-type]
    [Message("human", "ok"), Message("", "no role")],
    [Message("human", "ok"), Message("human", 5)],  # type: ignore[arg-type]
    [Message("human", "ok"), Message("human", "x", metadata={"f": {1, 2}})],
    [Message("human", "a", id="same"), Message("human", "b", id="same")],
    [{"content": "no role"}],
    "a plain string",
])
def test_malformed_batches_refused_whole(memory, bad):
    with pytest.raises(InvalidMessageError):
        memory.add_messages("s", bad)
    assert memory.get_recent_messages("s") == []


def test_too_many_messages_per_call(make_memory):
    memory = make_memory(max_messages_per_add=3)
    with pytest.raises(InvalidMessageError, match="limit"):
        memory.add_messages("s", [Message("human", str(i)) for i in range(4)])


def test_limits_are_enforced_with_clear_errors_and_nothing_written(make_memory: Callable[..., HybridMemory],
                                                                   namespace: str) -> None:
    memory = make_memory(max_session_id_length=16, max_messages_per_add=3, max_message_bytes=300)
    memory.add_messages("s" * 16, [Message("human", "ok")], user_id="u" * 16)  # at each limit: fine
    with pytest.raises(InvalidSessionIdError, match="16"):
        memory.add_messages("s" * 17, [Message("human", "x")])
    with pytest.raises(InvalidSessionIdError, match="16"):
        memory.get_recent_messages("s" * 17)
    with pytest.raises(InvalidUserIdError, match="16"):
        memory.add_messages("t", [Message("human", "x")], user_id="u" * 17)
    memory.add_messages("t", [Message("human", str(i)) for i in range(3)])
    with pytest.raises(InvalidMessageError, match=r"4 messages.*limit is 3"):
        memory.add_messages("t", [Message("human", str(i)) for i in range(4)])
    with pytest.raises(InvalidMessageError, match=r"limit is 3"):
        asyncio.run(memory.aadd_messages("t", [Message("human", str(i)) for i in range(4)]))
    with pytest.raises(InvalidMessageError, match="max_message_bytes"):
        memory.add_messages("t", [Message("human", "fits"), Message("human", "x" * 300)])
    with pytest.raises(InvalidMessageError, match="max_message_bytes"):
        memory.add_messages("t", [Message("human", "é" * 60)])  # 60 characters, 360 bytes encoded
    from langchain_core.messages import HumanMessage

    history = HybridChatMessageHistory("t", memory=memory)
    with pytest.raises(InvalidMessageError, match="limit is 3"):
        history.add_messages([HumanMessage(str(i)) for i in range(4)])
    with pytest.raises(InvalidSessionIdError):
        HybridChatMessageHistory("s" * 17, memory=memory)
    memory.flush()
    assert _contents(memory.get_messages("t")) == ["0", "1", "2"]  # nothing of the refused calls
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 4
    with pytest.raises(ConfigurationError, match="max_session_id_length"):
        HybridConfig(database_url=PG_URL, max_session_id_length=5000)


INJECTED_SEQ: Any = "1 OR 1=1"


def test_non_integer_paging_arguments_raise_a_typed_error(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("s", [Message("human", "x")])
    with pytest.raises((InvalidInputError, TypeError)):
        memory.get_messages("s", after_seq=INJECTED_SEQ)


def test_a_bad_limit_never_marks_redis_down(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("s", [Message("human", "x")])
    try:
        memory.get_recent_messages("s", limit=True)
    except (InvalidInputError, TypeError, ValueError):
        pass
    assert memory.redis_available
