"""Bad input: odd ids work or are refused with a typed error, never collide; exact content round trip;
oversized or malformed messages are refused with nothing written."""

from __future__ import annotations

import pytest

from langchain_hybrid_memory import (
    ConfigurationError,
    HybridConfig,
    InvalidMessageError,
    InvalidSessionIdError,
    InvalidUserIdError,
    Message,
)

from conftest import pg_fetch

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


def test_config_errors_are_typed_and_hold_no_secret():
    with pytest.raises(ConfigurationError) as err:
        HybridConfig(database_url="postgresql://u:s3cr3t@h/db", namespace="Bad-Name")
    assert "s3cr3t" not in str(err.value) and "namespace" in str(err.value)
    with pytest.raises(ConfigurationError, match="database_url"):
        HybridConfig(database_url=None)
    config = HybridConfig(database_url="postgresql://u:s3cr3t@h/db", redis_url="redis://:pw9@h:1/0",
                          redis_password="pw8")
    for text in (repr(config), str(config), str(config.describe())):
        assert "s3cr3t" not in text and "pw9" not in text and "pw8" not in text
    assert HybridConfig(database_url="postgresql://h/db", redis_url="localhost:6380").redis_dsn() == \
        "redis://localhost:6380"


def test_memory_repr_and_errors_hold_no_secret(make_memory):
    from langchain_hybrid_memory import HybridMemory

    memory = HybridMemory(HybridConfig(database_url="postgresql://postgres:hunter2@127.0.0.1:1/db",
                                       connect_timeout=0.5))
    assert "hunter2" not in repr(memory)
    from langchain_hybrid_memory import StorageUnavailableError

    with pytest.raises(StorageUnavailableError) as err:
        memory.get_recent_messages("s")
    assert "hunter2" not in str(err.value) and "127.0.0.1:1" in str(err.value)
    memory.close()
