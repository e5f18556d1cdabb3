"""Security: hostile input affects only its own data (no SQL, Lua, RESP or key-pattern injection), one user can
neither read nor change another's sessions, a deleted user leaves no trace, no secret shows anywhere (reprs,
errors, logs, stats, CLI output), and TLS settings reach Redis and PostgreSQL.

Real servers only: the shared ones in a private namespace, private redis-servers where a test must see (or kill)
every key, and private TLS-enabled servers with a self-signed certificate made by `openssl`. Exact round trips,
typed refusals and limits (bad input in general) are in `test_input_validation.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import pytest
import redis

from langchain_hybrid_memory import (
    ConfigurationError,
    HybridConfig,
    HybridMemory,
    Message,
    Mode,
    SessionOwnershipError,
    StorageUnavailableError,
)
from langchain_hybrid_memory.history import HybridChatMessageHistory
from langchain_hybrid_memory.summarizers import OfflineSummarizer, OpenAISummarizer

from conftest import PG_URL, REDIS_URL, pg_fetch, valid_id
from hybrid_memory_testing.connections import own_loop_connection
from hybrid_memory_testing.servers import NoTLSRedisError, PostgresServer, TLSRedisServer, free_port, in_ci

FAST: dict[str, Any] = {"redis_timeout": 0.3, "pg_timeout": 2.0, "connect_timeout": 1.0,
                        "health_check_interval": 0.2}


def _contents(msgs: list[Message]) -> list[Any]:
    return [m.content for m in msgs]


def _wait(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# -- injection ------------------------------------------------------------------------------------------------
INJECTIONS = [
    "'; DROP TABLE messages; --", "\"; DROP SCHEMA public CASCADE; --", "' OR '1'='1", "' OR 1=1 --",
    "1; CREATE TABLE pwned(x int); --", "$1", "$$; CREATE SCHEMA pwned; $$", "%s%s%s", "{0}{1}",
    "'); SELECT pg_sleep(3); --", "\\'; DELETE FROM sessions; --", "x'::regclass", "E'\\\\x00'",
    "*", "?", "[a-z]*", "\r\nFLUSHALL\r\n", "*1\r\n$8\r\nFLUSHALL\r\n", "]]) redis.call('FLUSHALL') --[[",
    "KEYS[1]", "ARGV[1]", "{0}:outbox", ":w", "s:x:w", "%3A", "%7B0%7D", "../../etc/passwd", "NULL", "null",
    "🙂'); DROP TABLE tombstones;--", "\x00", "${jndi:ldap://x}",
]


def _all_redis(client: redis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = bytes(client.type(key))
        out[key] = {b"string": lambda k: client.get(k), b"list": lambda k: client.lrange(k, 0, -1),
                    b"hash": lambda k: client.hgetall(k), b"set": lambda k: client.smembers(k),
                    b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                    b"stream": lambda k: client.xrange(k)}[kind](key)
    return out


def _tables(namespace: str) -> list[str]:
    return sorted(r[0] for r in pg_fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", namespace))


def test_injection_strings_in_every_field_affect_only_their_own_data(make_memory: Callable[..., HybridMemory],
                                                                     private_redis: Any, namespace: str) -> None:
    memory = make_memory(redis_url=private_redis.url)
    memory.add_messages("canary", [Message("human", "canary text", "canary-id", {"k": "v"})], user_id="canary-user")
    memory.flush()
    tables = _tables(namespace)
    injections = [*INJECTIONS, f"{namespace}:{{0}}:outbox", f"{namespace}:{{0}}:s:canary:w"]
    t0 = time.monotonic()
    for i, inj in enumerate(injections):
        sid = inj if valid_id(inj, 256) else f"sid-{i}"
        uid = inj if valid_id(inj, 256) and inj != "canary-user" else f"uid-{i}"
        mid = inj if valid_id(inj, 256) else f"id-{i}"
        role = inj[:64] if valid_id(inj, 64) else "human"
        meta = {inj: inj, "nested": [inj, {inj: [inj]}]}
        memory.add_messages(sid, [Message(role, inj, mid, meta)], user_id=uid)
        for got in (memory.get_recent_messages(sid, user_id=uid), memory.get_messages(sid, user_id=uid)):
            assert [(m.role, m.content, m.id, m.metadata) for m in got] == [(role, inj, mid, meta)], inj
        memory.flush()
        assert memory.list_sessions(user_id=uid) == [sid], inj
        with pytest.raises(SessionOwnershipError):
            memory.get_recent_messages("canary", user_id=uid)
        if i % 2:
            assert memory.clear_session(sid, user_id=uid) in (0, 1)
        else:
            assert memory.delete_user(uid) == 1
        assert memory.get_messages(sid) == []
    memory.flush()
    assert time.monotonic() - t0 < 60, "an injected pg_sleep ran"
    # The canary is untouched, in both stores.
    for got in (memory.get_recent_messages("canary", user_id="canary-user"), memory.get_messages("canary")):
        assert [(m.content, m.id, m.metadata) for m in got] == [("canary text", "canary-id", {"k": "v"})]
    assert memory.list_sessions(user_id="canary-user") == ["canary"]
    assert memory.list_sessions() == ["canary"]
    assert _tables(namespace) == tables
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages')[0][0] == 1
    assert pg_fetch("SELECT to_regclass('public.pwned') IS NULL AND to_regnamespace('pwned') IS NULL")[0][0]
    # Redis: every key is in the namespace, with exactly one hash tag (the bucket's); nothing was flushed.
    client = redis.Redis.from_url(private_redis.url)
    try:
        everything = _all_redis(client)
    finally:
        client.close()
    assert everything, "Redis was flushed"
    for key in everything:
        text = key.decode("utf-8")
        assert text.startswith(f"{namespace}:{{") and text.count("{") == 1 and text.count("}") == 1, text
        for inj in injections:
            if any(c in inj for c in "{}*?[") and len(inj) > 2:
                assert inj not in text.split("}", 1)[1], (inj, text)  # escaped, never spliced into a key
    assert any(b"canary text" in json.dumps(str(v)).encode() for v in everything.values())


def test_a_namespace_cannot_carry_sql() -> None:
    for bad in ('x"; DROP SCHEMA public CASCADE; --', "public; drop", "a-b", "A", "1abc", "x" * 49, "",
                'hybrid_memory" ', "pg_catalog.x"):
        with pytest.raises(ConfigurationError, match="namespace"):
            HybridConfig(database_url=PG_URL, namespace=bad)


# -- user isolation ---------------------------------------------------------------------------------------------
def test_user_binding_isolation_and_delete(make_memory, namespace):
    memory = make_memory()
    memory.add_messages("alice-1", [Message("human", "secret a")], user_id="alice")
    memory.add_messages("bob-1", [Message("human", "secret b")], user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.add_messages("alice-1", [Message("human", "hijack")], user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.get_recent_messages("alice-1", user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.get_messages("alice-1", user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.clear_session("alice-1", user_id="bob")
    with pytest.raises(SessionOwnershipError):
        memory.invalidate_session("alice-1", user_id="bob")
    assert [m.content for m in memory.get_recent_messages("alice-1", user_id="alice")] == ["secret a"]
    memory.flush()
    memory.invalidate_session("alice-1")  # ownership also holds on a cold read
    with pytest.raises(SessionOwnershipError):
        memory.get_recent_messages("alice-1", user_id="bob")
    assert memory.invalidate_user("alice") == 1
    assert memory.delete_user("alice") == 1
    r = redis.Redis.from_url(REDIS_URL)
    assert not any(b"alice" in k for k in r.scan_iter(match=f"{namespace}:*"))
    assert not any(b"alice" in m for k in r.scan_iter(match=f"{namespace}:*:active") for m in r.zrange(k, 0, -1))
    assert memory.get_recent_messages("alice-1") == []
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".messages WHERE session_id = $1', "alice-1")[0][0] == 0
    assert pg_fetch(f'SELECT count(*) FROM "{namespace}".sessions WHERE user_id = $1', "alice")[0][0] == 0
    assert [m.content for m in memory.get_recent_messages("bob-1")] == ["secret b"]


def _bobs_attempts(memory: HybridMemory, sid: str, seq: int) -> dict[str, Callable[[], Any]]:
    from langchain_core.messages import HumanMessage

    history = HybridChatMessageHistory(sid, memory=memory, user_id="bob")
    return {
        "get_recent_messages": lambda: memory.get_recent_messages(sid, user_id="bob"),
        "get_recent_messages deep": lambda: memory.get_recent_messages(sid, limit=500, user_id="bob"),
        "aget_recent_messages": lambda: asyncio.run(memory.aget_recent_messages(sid, user_id="bob")),
        "get_messages": lambda: memory.get_messages(sid, user_id="bob"),
        "get_context": lambda: memory.get_context(sid, user_id="bob"),
        "add_messages": lambda: memory.add_messages(sid, [Message("human", "bob was here")], user_id="bob"),
        "aadd_messages": lambda: asyncio.run(memory.aadd_messages(sid, [Message("human", "bob")], user_id="bob")),
        "invalidate_session": lambda: memory.invalidate_session(sid, user_id="bob"),
        "clear_session": lambda: memory.clear_session(sid, user_id="bob"),
        "aclear_session": lambda: asyncio.run(memory.aclear_session(sid, user_id="bob")),
        "delete_messages": lambda: memory.delete_messages(sid, [seq], user_id="bob"),
        "history.messages": lambda: history.messages,
        "history.add_messages": lambda: history.add_messages([HumanMessage("bob")]),
        "history.clear": lambda: history.clear(),
        "history.get_transcript": lambda: history.get_transcript(),
    }


def _llama_attempts(memory: HybridMemory, sid: str) -> dict[str, Callable[[], Any]]:
    try:
        from llama_index.core.llms import ChatMessage

        from llamaindex_adapter import HybridChatStore
    except ImportError:
        return {}
    store = HybridChatStore(memory, user_id="bob")
    return {"llama get_messages": lambda: store.get_messages(sid),
            "llama add_message": lambda: store.add_message(sid, ChatMessage(role="user", content="bob")),
            "llama delete_messages": lambda: store.delete_messages(sid)}


def test_one_user_can_neither_read_nor_invalidate_nor_delete_anothers_session(
        make_memory: Callable[..., HybridMemory], private_redis: Any, namespace: str) -> None:
    memory = make_memory(redis_url=private_redis.url, **FAST)
    sid = "alice-chat"
    sent = memory.add_messages(sid, [Message("human", "alice's secret")], user_id="alice")
    memory.add_messages("bob-chat", [Message("human", "bob's own")], user_id="bob")
    memory.flush()
    seq = sent[0].seq
    assert seq is not None
    admin = redis.Redis.from_url(private_redis.url)

    def alice_intact(state: str) -> None:
        assert _contents(memory.get_recent_messages(sid, user_id="alice")) == ["alice's secret"], state
        rows = pg_fetch(f'SELECT count(*) FROM "{namespace}".messages WHERE session_id = $1', sid)
        assert rows[0][0] == 1, state

    def cached() -> bool:
        try:
            return bool(admin.exists(memory.keys.session(sid).meta))
        except redis.ConnectionError:
            return False

    def attempt_all(state: str) -> None:
        cached_before = cached()
        for name, call in {**_bobs_attempts(memory, sid, seq), **_llama_attempts(memory, sid)}.items():
            with pytest.raises(SessionOwnershipError):
                call()
                raise AssertionError(f"{state}: bob's {name} succeeded")
        if cached_before:
            assert cached(), f"{state}: bob's attempts dropped alice's window"
        # Bob's own user-level calls never reach alice.
        assert memory.list_sessions(user_id="bob") == ["bob-chat"], state
        assert sid not in memory.list_sessions(user_id="bob")
        alice_intact(state)

    try:
        memory.get_recent_messages(sid, user_id="alice")
        attempt_all("hot")
        memory.invalidate_session(sid, user_id="alice")
        attempt_all("cold")
        private_redis.kill()
        attempt_all("redis down")
        private_redis.start()
        _wait(lambda: memory.redis_available)
        attempt_all("redis back, empty")
        assert memory.invalidate_user("bob") == 1 and memory.delete_user("bob") == 1
        alice_intact("after bob deleted himself")
    finally:
        admin.close()


def test_summaries_are_scoped_to_the_owner(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("alice-chat", [Message("human", "x")], user_id="alice")
    with pytest.raises(SessionOwnershipError):
        get_summaries: Any = memory.get_summaries
        get_summaries("alice-chat", user_id="bob")


@pytest.fixture
def alice_deleted(make_memory: Callable[..., HybridMemory], private_redis: Any,
                  namespace: str) -> Iterator[tuple[HybridMemory, HybridMemory, Any]]:
    """Alice has sessions cached, persisted, summarized, and one write in flight in another process; then
    `delete_user('alice')`. Bob's session must survive."""
    memory = make_memory(redis_url=private_redis.url, enable_auto_summarize=True, max_session_messages=4,
                         summarize_chunk_size=2, summarizer=OfflineSummarizer())
    other = make_memory(redis_url=private_redis.url, write_behind_delay=600.0, reclaim_interval=600.0)
    for i in range(3):
        memory.add_messages(f"alice-{i}", [Message("human", f"ALICE-SECRET-{i}-{k}") for k in range(8)],
                            user_id="alice")
    memory.add_messages("bob-0", [Message("human", "bob keeps this")], user_id="bob")
    memory.flush()
    assert memory.wait_for_summaries(30)
    assert memory.get_summaries("alice-0"), "the scenario needs a stored summary"
    other.add_messages("alice-0", [Message("human", "ALICE-SECRET-inflight")], user_id="alice")  # not yet persisted
    assert memory.delete_user("alice") == 3
    yield memory, other, private_redis
    assert _contents(memory.get_messages("bob-0", user_id="bob")) == ["bob keeps this"]


ALICE_MARKS = (b"alice", b"ALICE-SECRET")


def test_delete_user_leaves_no_trace_in_postgres_except_tombstones(alice_deleted: Any, namespace: str) -> None:
    memory, other, _ = alice_deleted
    other.close()  # its in-flight write is committed now: the tombstone must keep it out
    memory.flush()
    for table in _tables(namespace):
        if table in ("tombstones", "schema_migrations"):
            continue
        rows = pg_fetch(f'SELECT * FROM "{namespace}"."{table}"')
        text = repr([tuple(r) for r in rows]).encode()
        assert not any(mark in text for mark in ALICE_MARKS), f"{table} still holds alice's data"
    assert memory.list_sessions(user_id="alice") == []
    assert all(memory.get_messages(f"alice-{i}") == [] for i in range(3))


def test_delete_user_leaves_no_trace_in_redis(alice_deleted: Any) -> None:
    _, _, server = alice_deleted
    client = redis.Redis.from_url(server.url)
    try:
        everything = _all_redis(client)
    finally:
        client.close()
    for key, value in everything.items():
        text = key + repr(value).encode()
        assert not any(mark in text for mark in ALICE_MARKS), f"{key!r} still holds alice's data: {value!r}"[:400]


def test_delete_user_leaves_no_session_id_in_tombstones(alice_deleted: Any, namespace: str) -> None:
    rows = pg_fetch(f'SELECT * FROM "{namespace}".tombstones')
    assert not any(b"alice" in repr(tuple(r)).encode() for r in rows)


# -- secrets ---------------------------------------------------------------------------------------------------
PG_SECRET = "pgPASS-7f3a9"
REDIS_SECRET = "rdPW-55e1c"
API_KEY = "sk-test-0a1b2c3d4e5f6a7b"
SECRETS = (PG_SECRET, REDIS_SECRET, API_KEY)


def _no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret: ...{text[max(0, text.find(secret) - 80):][:200]}"


@pytest.fixture
def auth_redis() -> Iterator[Any]:
    from hybrid_memory_testing.servers import RedisServer

    server = RedisServer("--requirepass", REDIS_SECRET).start()
    yield server
    server.stop()


def _pg_with_password() -> str:
    return PG_URL.replace("postgres@", f"postgres:{PG_SECRET}@", 1)  # trust auth ignores it; it is still a secret


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


def test_secrets_never_in_reprs_dicts_or_adapters(make_memory: Callable[..., HybridMemory], auth_redis: Any) -> None:
    with_url = make_memory(database_url=_pg_with_password(),
                           redis_url=f"redis://:{REDIS_SECRET}@127.0.0.1:{auth_redis.port}/0")
    with_field = make_memory(database_url=_pg_with_password(), redis_url=auth_redis.url, redis_password=REDIS_SECRET)
    for memory in (with_url, with_field):
        memory.add_messages("s", [Message("human", "x")], user_id="u")
        assert memory.get_cache_stats().redis_up  # the password was really used
        c = memory.config
        for where, text in {"config repr": repr(c), "config str": str(c), "describe": str(c.describe()),
                            "model_dump": str(c.model_dump()), "model_dump_json": c.model_dump_json(),
                            "memory repr": repr(memory), "memory str": str(memory),
                            "stats": repr(memory.get_cache_stats()),
                            "stats dict": str(memory.get_cache_stats().to_dict()),
                            "history": repr(HybridChatMessageHistory("s", memory=memory, user_id="u"))}.items():
            _no_secret(text, where)
        try:
            from llamaindex_adapter import HybridChatStore, HybridDBChatStore, HybridSummaryBlock
        except ImportError:
            continue
        for adapter in (HybridChatStore(memory), HybridDBChatStore(memory), HybridSummaryBlock(memory)):
            views = {"repr": repr(adapter), "str": str(adapter), "model_dump": str(adapter.model_dump()),
                     "model_dump_json": adapter.model_dump_json()}
            for name in ("to_dict", "to_json", "to_string"):  # BaseComponent's serialisers, where present
                if hasattr(type(adapter), name):
                    views[name] = str(getattr(adapter, name)())
            for where, text in views.items():
                _no_secret(text, f"{type(adapter).__name__} {where}")
    summarizer = OpenAISummarizer(api_key=API_KEY, base_url="http://127.0.0.1:9/v1")
    _no_secret(repr(summarizer) + str(summarizer), "OpenAISummarizer")


def test_secrets_never_in_exceptions_or_logs(make_memory: Callable[..., HybridMemory], auth_redis: Any,
                                             caplog: pytest.LogCaptureFixture,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    # Unreachable PostgreSQL, with a password in the DSN.
    down = HybridMemory(HybridConfig(database_url=f"postgresql://postgres:{PG_SECRET}@127.0.0.1:{free_port()}/x",
                                     redis_url=f"redis://:{REDIS_SECRET}@127.0.0.1:{auth_redis.port}/0",
                                     connect_timeout=0.5))
    with pytest.raises(StorageUnavailableError) as err:
        down.get_recent_messages("s")
    errors.append(err.value)
    down.close()
    # Redis with the wrong password (itself a secret), Redis-only mode: a typed error, no password.
    wrong = HybridMemory(HybridConfig(mode=Mode.SESSION_ONLY, redis_url=auth_redis.url,
                                      redis_password=REDIS_SECRET + "-wrong", connect_timeout=0.5))
    with pytest.raises(StorageUnavailableError) as err:
        wrong.add_messages("s", [Message("human", "x")])
    errors.append(err.value)
    wrong.close()
    # A bad setting next to secret URLs.
    with pytest.raises(ConfigurationError) as cerr:
        HybridConfig(database_url=_pg_with_password(), redis_url=f"redis://:{REDIS_SECRET}@h:1/0", redis_db=-1)
    errors.append(cerr.value)
    # Failover with secrets in both URLs: Redis killed and restarted, writes and reads on both sides, close.
    memory = make_memory(database_url=_pg_with_password(),
                         redis_url=f"redis://:{REDIS_SECRET}@127.0.0.1:{auth_redis.port}/0", **FAST)
    memory.add_messages("s", [Message("human", "before")])
    auth_redis.kill()
    memory.add_messages("s", [Message("human", "during")])
    auth_redis.start()
    _wait(lambda: memory.redis_available)
    assert _contents(memory.get_recent_messages("s")) == ["before", "during"]
    memory.close()
    for exc in errors:
        _no_secret("".join(traceback.format_exception(exc)) + repr(exc), f"{type(exc).__name__}")
    logs = caplog.text + "".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "Redis unreachable" in logs  # the failover was logged, so the logs were really captured
    _no_secret(logs, "logs")
    out, err_text = capfd.readouterr()
    _no_secret(out + err_text, "stdout/stderr")


class _EchoingOpenAI(ThreadingHTTPServer):
    """An OpenAI-compatible server that refuses the key and, as some proxies do, quotes it in the error."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                seen.append(key)
                body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}.",
                                             "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def test_api_key_never_in_stats_or_logs_when_the_llm_fails(make_memory: Callable[..., HybridMemory],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = _EchoingOpenAI()
    try:
        summarizer = OpenAISummarizer(api_key=API_KEY, base_url=fake.base_url, timeout=5)
        memory = make_memory(enable_auto_summarize=True, max_session_messages=2, summarize_chunk_size=2,
                             summarizer=summarizer, summary_retry_base=30)
        memory.add_messages("s", [Message("human", f"m{i}") for i in range(6)])
        memory.flush()
        _wait(lambda: memory.get_cache_stats().summary_failures >= 1, 20)
        assert API_KEY in fake.seen  # the key was really sent
        stats = memory.get_cache_stats()
        _no_secret(caplog.text, "logs")
        _no_secret(repr(stats) + json.dumps(stats.to_dict()), "get_cache_stats()")
    finally:
        fake.shutdown()


def test_cli_output_holds_no_secret(auth_redis: Any, namespace: str, make_memory: Callable[..., HybridMemory]) -> None:
    """Every command against real servers that need the secrets (Redis requires its password)."""
    memory = make_memory(redis_url=auth_redis.url, redis_password=REDIS_SECRET)
    memory.add_messages("s", [Message("human", "exported")], user_id="u")
    memory.flush()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRID_MEMORY_", "OPENAI_"))}
    env.update(DATABASE_URL=_pg_with_password(), REDIS_URL=f"redis://:{REDIS_SECRET}@127.0.0.1:{auth_redis.port}/0",
               REDIS_PASSWORD=REDIS_SECRET, OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL="http://127.0.0.1:9/v1",
               HYBRID_MEMORY_CONNECT_TIMEOUT="1")
    commands = [["doctor"], ["migrate"], ["migrate", "--check"], ["stats"], ["stats", "--json"], ["warmup"],
                ["export", "s"], ["export", "s", "--user", "u"], ["reclaim"], ["forget-user", "nobody", "--yes"]]
    outputs = []
    for argv in commands:
        proc = subprocess.run([sys.executable, "-m", "langchain_hybrid_memory", "--namespace", namespace, *argv],
                              capture_output=True, text=True, env=env, timeout=60)
        outputs.append((argv, proc.returncode, proc.stdout + proc.stderr))
    assert "exported" in dict((tuple(a), o) for a, _, o in outputs)[("export", "s")]  # it really ran
    for argv, _, text in outputs:
        _no_secret(text, f"hybrid-memory {' '.join(argv)}")
    bad = {**env, "DATABASE_URL": f"postgresql://postgres:{PG_SECRET}@127.0.0.1:{free_port()}/x"}
    proc = subprocess.run([sys.executable, "-m", "langchain_hybrid_memory", "--namespace", namespace, "stats"],
                          capture_output=True, text=True, env=bad, timeout=60)
    assert proc.returncode != 0
    _no_secret(proc.stdout + proc.stderr, "hybrid-memory stats (PostgreSQL down)")


# -- TLS ---------------------------------------------------------------------------------------------------------
def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        _missing("openssl is needed to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    d.chmod(0o755)
    cert, key = _self_signed(d, "server")
    other, _ = _self_signed(d, "other")
    for p in d.iterdir():
        p.chmod(0o644)
    return {"cert": cert, "key": key, "other": other, "dir": d}


def _missing(reason: str) -> NoReturn:
    """A tool the TLS tests need is absent: a failure in CI (the tests must run there), a skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is not skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tls_redis(certs: dict[str, Path]) -> Iterator[int]:
    """A TLS-only redis-server from a binary that serves TLS (PATH may start with one built without it)."""
    server = TLSRedisServer(certs["cert"], certs["key"], certs["cert"], certs["dir"])
    try:
        server.start()
    except NoTLSRedisError as exc:
        _missing(str(exc))
    yield server.port
    server.stop()


def test_rediss_url_is_passed_through_to_tls_redis(tls_redis: int, certs: dict[str, Path],
                                                   make_memory: Callable[..., HybridMemory]) -> None:
    """`rediss://` reaches Redis over TLS (verified against our CA); plain TCP to the TLS port cannot."""
    url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certs['cert']}&ssl_cert_reqs=required"
    memory = make_memory(mode=Mode.SESSION_ONLY, database_url=None, redis_url=url, **FAST)
    memory.add_messages("s", [Message("human", "over tls")])
    assert _contents(memory.get_recent_messages("s")) == ["over tls"]
    assert memory.get_cache_stats().redis_up
    client = redis.Redis.from_url(url)
    try:
        assert client.exists(memory.keys.session("s").window)  # it really is this server
    finally:
        client.close()
    for bad_url in (f"redis://127.0.0.1:{tls_redis}/0",
                    f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certs['other']}&ssl_cert_reqs=required"):
        bad = HybridMemory(HybridConfig(mode=Mode.SESSION_ONLY, redis_url=bad_url, **FAST))
        with pytest.raises(StorageUnavailableError):
            bad.add_messages("s", [Message("human", "x")])
        bad.close()


@pytest.fixture(scope="module")
def ssl_pg(certs: dict[str, Path]) -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    key = server.dir / "server.key"
    cert = server.dir / "server.crt"
    shutil.copy(certs["key"], key)
    shutil.copy(certs["cert"], cert)
    key.chmod(0o600)
    if os.geteuid() == 0:
        for p in (key, cert):
            shutil.chown(p, "postgres", "postgres")
    with open(server.data / "postgresql.conf", "a") as conf:
        conf.write(f"\nssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")
    server.start()
    yield server
    server.destroy()


def _engine_connections_ssl(pg: PostgresServer) -> list[bool]:
    return [r[0] for r in pg_fetch(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name = 'hybrid-memory'", url=pg.url + "?sslmode=disable")]


@pytest.mark.parametrize("query, encrypted", [
    ("sslmode=require", True),
    ("sslmode=verify-full&sslrootcert={cert}", True),
    ("sslmode=disable", False),
    ("sslmode=prefer", True),
    ("sslmode=allow", False),
    ("", True),  # a TCP host: libpq's default, prefer
])
def test_postgres_sslmode_is_passed_through(ssl_pg: PostgresServer, certs: dict[str, Path], namespace: str,
                                            query: str, encrypted: bool) -> None:
    url = f"{ssl_pg.url}?{query.format(cert=certs['cert'])}".rstrip("?")
    memory = HybridMemory(HybridConfig(database_url=url, redis_url=REDIS_URL, namespace=namespace, pg_pool_min=1,
                                       **FAST))
    try:
        memory.add_messages("s", [Message("human", "x")])
        memory.flush()
        assert _contents(memory.get_messages("s")) == ["x"]
        found = _engine_connections_ssl(ssl_pg)
        assert found and all(ssl is encrypted for ssl in found), found
    finally:
        memory.close()


def test_postgres_verify_full_refuses_an_unknown_certificate(ssl_pg: PostgresServer, certs: dict[str, Path],
                                                             namespace: str) -> None:
    url = f"{ssl_pg.url}?sslmode=verify-full&sslrootcert={certs['other']}"
    memory = HybridMemory(HybridConfig(database_url=url, redis_url=REDIS_URL, namespace=namespace, **FAST))
    try:
        with pytest.raises(StorageUnavailableError):
            memory.get_recent_messages("s")
    finally:
        memory.close()


@pytest.fixture(scope="module")
def password_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL that asks role `app` for its password over TCP (SCRAM)."""
    server = PostgresServer().init()
    (server.data / "pg_hba.conf").write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                                             "host all all 127.0.0.1/32 scram-sha-256\n")
    server.start()
    pg_fetch("CREATE ROLE app LOGIN PASSWORD 'app-secret'", url=server.url)
    pg_fetch("GRANT CREATE ON DATABASE postgres TO app", url=server.url)
    yield server
    server.destroy()


@pytest.mark.strict_loop
def test_the_password_file_is_read_off_the_event_loop(password_pg: PostgresServer, namespace: str,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DSN without a password takes it from the password file, as libpq does; asyncpg reads that file while it
    opens a connection, here in a worker thread (blockbuster raises on a file read on a loop): the engine's pool
    and an async caller's own connection for cold reads alike."""
    url = f"postgresql://app@127.0.0.1:{password_pg.port}/postgres"
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{password_pg.port}:postgres:app:app-secret\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))

    async def main() -> list[str]:
        memory = HybridMemory(HybridConfig(database_url=url, redis_url=REDIS_URL, namespace=namespace, **FAST))
        try:
            await memory.aadd_messages("s", [Message("human", "x")])
            await memory.aflush()
            await own_loop_connection(memory)  # opened with the password from the file
            await memory.ainvalidate_session("s")
            return _contents(await memory.aget_recent_messages("s"))  # through that connection
        finally:
            await memory.aclose()

    assert asyncio.run(main()) == ["x"]
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    memory = HybridMemory(HybridConfig(database_url=url, redis_url=REDIS_URL, namespace=namespace, **FAST))
    try:
        with pytest.raises(asyncpg.InvalidPasswordError):  # the password came from that file
            memory.get_messages("s")
    finally:
        memory.close()
