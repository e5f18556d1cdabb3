"""What `HybridChatStore` and `HybridDBChatStore` promise beyond the conformance suite, on the real servers:
TTL kept through deletes, `get_keys` without KEYS/SCAN, no secret in `to_dict`, rebuilding from a dict,
ownership, key validation and isolation, big batches, and sharing a session with LangChain."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import redis
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.memory import ChatMemoryBuffer, Memory
from llama_index.core.storage.chat_store.base_db import MessageStatus

from langchain_hybrid_memory import (
    HybridConfig,
    HybridMemory,
    HybridMemoryError,
    InvalidMessageError,
    InvalidSessionIdError,
    Message,
    Mode,
    SessionOwnershipError,
)
from langchain_hybrid_memory import _lc_convert as lc
from llamaindex_adapter import HybridChatStore, HybridDBChatStore
from llamaindex_adapter._convert import PREFIX

from conftest import PG_URL, REDIS_URL


def texts(messages: list[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def msgs(tag: str, n: int) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=f"{tag}-{i}") for i in range(n)]


# -- TTL ---------------------------------------------------------------------------------------------------
def test_ttl_survives_every_kind_of_delete(make_memory: Callable[..., HybridMemory]) -> None:
    """No key of a session is ever left without its TTL (RedisChatStore's delete_message loses it)."""
    ttl = 300
    memory = make_memory(session_ttl=ttl, max_session_messages=4)
    store = HybridChatStore(memory=memory)
    keys = memory.keys.session("k")
    r = redis.Redis.from_url(REDIS_URL)

    def check(after: str) -> None:
        store.get_messages("k")
        memory.get_recent_messages("k")  # the window read caches it again, as the next turn would
        ttls = {name: r.ttl(name) for name in (keys.window, keys.meta, keys.ids)}
        assert all(t == -2 or 0 < t <= ttl for t in ttls.values()), (after, ttls)  # -1 would mean "forever"
        assert ttls[keys.window] > 0, (after, ttls)  # and the window is cached, with its TTL

    try:
        store.set_messages("k", msgs("t", 8))
        check("set_messages")
        assert store.delete_message("k", 3) is not None
        check("delete_message")
        assert store.delete_last_message("k") is not None
        check("delete_last_message")
        store.add_message("k", ChatMessage(content="inserted"), idx=2)
        check("insert")
        store.delete_messages("k")
        store.add_message("k", ChatMessage(content="again"))
        check("delete_messages")
        assert texts(store.get_messages("k")) == ["again"]
    finally:
        r.close()


# -- no KEYS, no SCAN --------------------------------------------------------------------------------------
def test_get_keys_uses_neither_keys_nor_scan(make_memory: Callable[..., HybridMemory], private_redis: Any) -> None:
    memory = make_memory(redis_url=private_redis.url)
    store = HybridChatStore(memory=memory)
    db = HybridDBChatStore(memory=memory)
    for key in ("b", "a", "a/b"):
        store.add_message(key, ChatMessage(content=key))
    assert store.get_keys() == ["a", "a/b", "b"]
    store.delete_messages("a/b")
    assert store.get_keys() == ["a", "b"]

    async def more() -> list[str]:
        await db.add_message("c", ChatMessage(content="c"), status=MessageStatus.ARCHIVED)
        return await db.get_keys()

    assert asyncio.run(more()) == ["a", "b", "c"]
    r = redis.Redis.from_url(private_redis.url)
    try:
        stats = r.info("commandstats")
        assert stats, "the private server should have seen our commands"
        assert not {"cmdstat_keys", "cmdstat_scan"} & set(stats), sorted(stats)
    finally:
        r.close()


# -- a key emptied message by message leaves get_keys ------------------------------------------------------
@pytest.mark.parametrize("mode", [Mode.HYBRID, Mode.PERSISTENT, Mode.SESSION_ONLY], ids=lambda m: m.value)
@pytest.mark.parametrize("user_id", [None, "alice"], ids=["anyone", "owner"])
def test_chat_store_keys_emptied_one_message_at_a_time(make_memory: Callable[..., HybridMemory], mode: Mode,
                                                       user_id: str | None) -> None:
    """As with LlamaIndex's SQL and Redis stores, a key whose last message is deleted is no longer listed."""
    extra: dict[str, Any] = {"database_url": None} if mode is Mode.SESSION_ONLY else {}
    store = HybridChatStore(memory=make_memory(mode=mode, **extra), user_id=user_id)
    for key in ("a", "b", "c"):
        store.add_messages(key, msgs(key, 2))
    assert store.delete_message("a", 1) is not None and store.delete_message("a", 0) is not None
    assert store.delete_last_message("b") is not None and store.delete_last_message("b") is not None
    assert store.get_keys() == ["c"]

    async def async_deletes() -> list[str]:
        assert await store.adelete_message("c", 0) is not None
        assert await store.aget_keys() == ["c"]  # one message left
        assert await store.adelete_last_message("c") is not None
        return await store.aget_keys()

    assert asyncio.run(async_deletes()) == []
    store.add_message("b", ChatMessage(content="back"))  # written again: listed again
    assert store.get_keys() == ["b"]


def test_a_queued_message_keeps_an_emptied_key_listed(make_memory: Callable[..., HybridMemory]) -> None:
    """A message not yet in PostgreSQL (still in the write-behind queue) counts as present."""
    memory = make_memory(write_behind_delay=30.0)  # nothing is committed unless flushed
    store = HybridChatStore(memory=memory)
    store.add_messages("k", msgs("k", 1))
    assert store.delete_last_message("k") is not None and store.get_keys() == []
    memory.add_messages("k", [Message("human", "queued")])
    assert memory.list_sessions() == ["k"]  # queued only, not committed yet
    assert store.get_keys() == ["k"]


def test_keys_emptied_while_redis_is_down(make_memory: Callable[..., HybridMemory], private_redis: Any) -> None:
    memory = make_memory(redis_url=private_redis.url, redis_timeout=0.3, health_check_interval=0.2)
    store = HybridChatStore(memory=memory)
    store.add_messages("a", msgs("a", 1))
    store.add_messages("b", msgs("b", 1))
    private_redis.kill()
    assert store.delete_last_message("a") is not None  # straight to PostgreSQL
    assert store.get_keys() == ["b"]
    store.add_message("a", ChatMessage(content="while down"))
    assert store.get_keys() == ["a", "b"]


async def test_db_store_keys_emptied_one_message_at_a_time(make_memory: Callable[..., HybridMemory]) -> None:
    """`get_keys` lists keys with messages of any status: emptying ACTIVE drops a key only without ARCHIVED."""
    memory = make_memory()
    db, store = HybridDBChatStore(memory=memory), HybridChatStore(memory=memory)
    for key in ("a", "b", "c"):
        await db.add_messages(key, msgs(key, 2))
    assert await db.delete_message("a", 1) is not None and await db.delete_message("a", 0) is not None
    assert [m.content for m in await db.delete_oldest_messages("b", 5)] == ["b-0", "b-1"]
    assert await db.get_keys() == ["c"]
    assert [m.content for m in await db.archive_oldest_messages("c", 2)] == ["c-0", "c-1"]
    assert await db.get_keys() == ["c"]  # archived messages are still messages of "c"
    assert await store.aget_keys() == []  # ...but no longer in its active conversation
    await db.delete_messages("c", MessageStatus.ARCHIVED)
    assert await db.get_keys() == []


# -- serialisation -----------------------------------------------------------------------------------------
SECRET = "s3cr3t-pw"


def secret_memory() -> HybridMemory:
    # No I/O happens until the first call, so unreachable URLs are fine here.
    return HybridMemory(HybridConfig(database_url=f"postgresql://app:{SECRET}@127.0.0.1:1/db",
                                     redis_url=f"redis://:{SECRET}@127.0.0.1:1/0", redis_password=SECRET,
                                     namespace="ns_secret"))


def test_to_dict_and_friends_carry_no_secret() -> None:
    memory = secret_memory()
    try:
        store, db = HybridChatStore(memory=memory, user_id="alice"), HybridDBChatStore(memory=memory)
        buffer = ChatMemoryBuffer.from_defaults(chat_store=store, token_limit=1000)
        revived = pickle.loads(pickle.dumps(store))
        dumped = [store.to_dict(), store.to_json(), store.model_dump_json(), repr(store), str(store),
                  buffer.to_string(), buffer.to_dict(), db.model_dump(), db.model_dump_json(), repr(db),
                  pickle.dumps(store), pickle.dumps(buffer), pickle.dumps(db),
                  repr(revived), repr(revived.memory), revived.to_json()]
        for d in dumped:
            assert SECRET not in str(d)
        assert store.to_dict() == {"namespace": "ns_secret", "mode": "hybrid", "ttl": 7200.0, "user_id": "alice",
                                   "class_name": "HybridChatStore"}
        assert (HybridChatStore.class_name(), HybridDBChatStore.class_name()) == ("HybridChatStore",
                                                                                  "HybridDBChatStore")
    finally:
        memory.close()


def test_rebuilt_from_its_dict_with_secrets_from_the_environment(
        make_memory: Callable[..., HybridMemory], namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = HybridChatStore(memory=make_memory())
    buffer = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="k", token_limit=1000)
    buffer.put(ChatMessage(content="persisted"))
    store.memory.flush()
    monkeypatch.setenv("DATABASE_URL", PG_URL)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    rebuilt = ChatMemoryBuffer.from_string(buffer.to_string())  # via llama-index's store registry
    chat_store = rebuilt.chat_store
    try:
        assert isinstance(chat_store, HybridChatStore) and chat_store.namespace == namespace
        assert texts(rebuilt.get_all()) == ["persisted"]
        again = HybridChatStore.from_dict(store.to_dict())
        try:
            assert texts(again.get_messages("k")) == ["persisted"]
        finally:
            again.close()
    finally:
        assert isinstance(chat_store, HybridChatStore)
        chat_store.close()


def test_building_the_memory_from_a_config(namespace: str) -> None:
    config = HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace, write_behind_delay=0.01)
    store = HybridChatStore(config=config)
    try:
        store.add_message("k", ChatMessage(content="owned"))
        assert texts(store.get_messages("k")) == ["owned"]
    finally:
        store.close()
    # The store built it, so the store closed it: its PostgreSQL pool is gone. (The engine raises
    # StorageUnavailableError here today, MemoryClosedError would be the precise one.)
    with pytest.raises(HybridMemoryError):
        store.memory.get_messages("k")


def test_conflicting_arguments_are_refused(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    with pytest.raises(ValueError, match="namespace"):
        HybridChatStore(memory=memory, namespace="elsewhere")
    with pytest.raises(TypeError):
        HybridChatStore(memory=memory, config=memory.config)
    with pytest.raises(TypeError, match="colour"):
        HybridDBChatStore(memory=memory, colour="blue")
    same = HybridChatStore(memory=memory, namespace=memory.config.namespace, ttl=memory.config.session_ttl)
    same.close()
    assert memory.get_recent_messages("k") == []  # a memory passed in belongs to the caller: still open


# -- keys, owners, batches ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "\x00", "a\nb", "x" * 300, 42], ids=["empty", "nul", "newline", "long", "int"])
def test_bad_keys_are_refused(make_memory: Callable[..., HybridMemory], bad: Any) -> None:
    store = HybridChatStore(memory=make_memory())
    with pytest.raises(InvalidSessionIdError):
        store.add_message(bad, ChatMessage(content="x"))
    with pytest.raises(InvalidSessionIdError):
        store.get_messages(bad)


async def test_escaped_keys_never_meet_archived_sessions(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    store, db = HybridChatStore(memory=memory), HybridDBChatStore(memory=memory)
    lookalike = f"{PREFIX}r:k"  # spelled like the archived session of "k"
    await store.async_add_message(lookalike, ChatMessage(content="lookalike"))
    await db.add_message("k", ChatMessage(content="active"))
    await db.archive_oldest_messages("k", 1)
    assert await db.get_messages("k", status=MessageStatus.ARCHIVED) == [ChatMessage(content="active")]
    assert texts(await store.aget_messages(lookalike)) == ["lookalike"]
    assert await db.get_messages(lookalike, status=None) == [ChatMessage(content="lookalike")]
    assert lookalike in await store.aget_keys() and set(await store.aget_keys()) <= {"k", lookalike}
    assert await db.get_keys() == sorted(["k", lookalike])


async def test_both_interfaces_share_the_active_conversation(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    store, db = HybridChatStore(memory=memory), HybridDBChatStore(memory=memory)
    await store.aadd_message("k", ChatMessage(content="via BaseChatStore"))  # the third-party alias
    await db.add_message("k", ChatMessage(content="via Memory's store"))
    assert texts(await store.aget_messages("k")) == texts(await db.get_messages("k")) == [
        "via BaseChatStore", "via Memory's store"]


def test_owned_keys(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    alice, bob = HybridChatStore(memory=memory, user_id="alice"), HybridChatStore(memory=memory, user_id="bob")
    alice.add_message("k", ChatMessage(content="mine"))
    alice.add_message("k2", ChatMessage(content="mine too"))
    bob.add_message("b", ChatMessage(content="bob's"))
    memory.flush()
    with pytest.raises(SessionOwnershipError):
        bob.get_messages("k")
    with pytest.raises(SessionOwnershipError):
        bob.add_message("k", ChatMessage(content="intrusion"))
    assert alice.get_keys() == ["k", "k2"] and bob.get_keys() == ["b"]
    assert texts(alice.get_messages("k")) == ["mine"]


def test_batches_beyond_the_engine_limit(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory(max_messages_per_add=5, max_message_bytes=2000)
    store = HybridChatStore(memory=memory)
    store.add_messages("k", msgs("b", 12))
    assert texts(store.get_messages("k")) == [f"b-{i}" for i in range(12)]
    too_big = [*msgs("n", 3), ChatMessage(content="x" * 5000)]
    with pytest.raises(InvalidMessageError):
        store.set_messages("k", too_big)
    with pytest.raises(InvalidMessageError):
        store.add_messages("k", [*msgs("m", 6), ChatMessage(content="x" * 5000)])
    assert texts(store.get_messages("k")) == [f"b-{i}" for i in range(12)]  # nothing erased, nothing half-added


def test_memory_over_a_langchain_session(make_memory: Callable[..., HybridMemory]) -> None:
    """A conversation LangChain wrote is readable and continuable through LlamaIndex's Memory."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    memory = make_memory()
    memory.add_messages("shared", [lc.to_engine(m) for m in [
        HumanMessage("weather?"), AIMessage("", tool_calls=[{"name": "weather", "args": {}, "id": "c1"}]),
        ToolMessage("sunny", tool_call_id="c1"), AIMessage("It is sunny.")]])
    li = Memory.from_defaults(session_id="shared", chat_store=HybridDBChatStore(memory=memory))
    history = li.get_all()
    assert [m.role.value for m in history] == ["user", "assistant", "tool", "assistant"]
    assert isinstance(history[1].blocks[-1], ToolCallBlock) and history[2].additional_kwargs["tool_call_id"] == "c1"
    li.put(ChatMessage(role="user", content="thanks"))
    assert [type(lc.from_engine(m)).__name__ for m in memory.get_messages("shared")][-1] == "HumanMessage"


def test_session_only_mode(make_memory: Callable[..., HybridMemory]) -> None:
    store = HybridChatStore(memory=make_memory(mode=Mode.SESSION_ONLY, database_url=None))
    store.set_messages("k", msgs("s", 3))
    removed = store.delete_message("k", 1)
    assert removed is not None and removed.content == "s-1"
    assert texts(store.get_messages("k")) == ["s-0", "s-2"]
    assert store.delete_last_message("k") is not None and texts(store.get_messages("k")) == ["s-0"]
