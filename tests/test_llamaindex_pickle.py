"""Pickling: a `HybridMemory` pickles as a handle (this process's live engine, or in another process a new one
built from its config), so the LlamaIndex stores, the summary block and the memories holding them come back
usable, on the real servers."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import ChatMemoryBuffer, Memory
from llama_index.core.storage.chat_store.base_db import MessageStatus

from langchain_hybrid_memory import HybridConfig, HybridMemory, MemoryClosedError, Message
from llamaindex_adapter import HybridChatStore, HybridDBChatStore, HybridSummaryBlock

from conftest import PG_URL, REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
SECRET = "pickled-s3cret"


def texts(messages: list[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def words(text: str) -> list[str]:
    return text.split()


def round_trip(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


# -- in this process: the same engine ----------------------------------------------------------------------
def test_memory_unpickles_to_the_live_engine(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("k", [Message("human", "hi")])
    for again in (round_trip(memory), copy.deepcopy(memory), copy.copy(memory)):
        assert again is memory
    assert [m.content for m in round_trip(memory).get_recent_messages("k")] == ["hi"]


def test_a_closed_memory_unpickles_closed(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    memory.add_messages("k", [Message("human", "hi")])
    memory.close()
    again = round_trip(memory)
    assert again is memory
    with pytest.raises(MemoryClosedError):
        again.get_messages("k")


def test_chat_store_round_trip(make_memory: Callable[..., HybridMemory], caplog: pytest.LogCaptureFixture) -> None:
    memory = make_memory()
    store = HybridChatStore(memory=memory, user_id="alice")
    store.add_message("k", ChatMessage(content="before"))
    with caplog.at_level(logging.WARNING):
        again, deep = round_trip(store), copy.deepcopy(store)
    assert not caplog.records, "nothing may be dropped from the pickled state"
    for other in (again, deep):
        assert isinstance(other, HybridChatStore) and other.memory is memory and other.user_id == "alice"
        assert other._locks is not store._locks  # thread locks are rebuilt, never shared or pickled
    again.add_message("k", ChatMessage(content="inserted"), idx=0)  # a positional write: takes the key's lock
    deep.add_message("k", ChatMessage(content="after"))
    assert texts(store.get_messages("k")) == texts(again.get_messages("k")) == ["inserted", "before", "after"]
    assert deep.delete_last_message("k") is not None and again.get_keys() == ["k"]


async def test_db_store_round_trip(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    store = HybridDBChatStore(memory=memory, user_id="alice", summarize_active=True)
    await store.add_messages("k", [ChatMessage(content=f"m{i}") for i in range(3)])
    again = round_trip(store)
    assert isinstance(again, HybridDBChatStore) and again.memory is memory
    assert (again.user_id, again.summarize_active) == ("alice", True) and again._locks is not store._locks
    assert texts(await again.archive_oldest_messages("k", 2)) == ["m0", "m1"]
    await again.add_message("k", ChatMessage(content="m3"))
    assert texts(await store.get_messages("k", status=None)) == ["m0", "m1", "m2", "m3"]
    assert await again.count_messages("k", status=MessageStatus.ARCHIVED) == 2


async def test_summary_block_round_trip(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    block = HybridSummaryBlock(memory=memory, ingest=True, session_id="k")
    again = round_trip(block)
    assert isinstance(again, HybridSummaryBlock) and again.memory is memory and again.ingest
    await again.aput([ChatMessage(role="user", content="handed over")])
    assert await block.aget() == "Earlier messages, not summarized yet:\nuser: handed over"


def test_chat_memory_buffer_round_trip(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    buffer = ChatMemoryBuffer.from_defaults(chat_store=HybridChatStore(memory=memory), chat_store_key="k",
                                            token_limit=1000)
    buffer.put(ChatMessage(content="before"))
    again = round_trip(buffer)
    assert isinstance(again.chat_store, HybridChatStore) and again.chat_store.memory is memory
    again.put(ChatMessage(content="after"))
    assert texts(again.get_all()) == texts(buffer.get_all()) == ["before", "after"]


async def test_memory_with_a_summary_block_round_trip(make_memory: Callable[..., HybridMemory]) -> None:
    """LlamaIndex's `Memory` over `HybridDBChatStore`, with `HybridSummaryBlock`: one engine on both sides."""
    memory = make_memory()
    li = Memory.from_defaults(session_id="k", chat_store=HybridDBChatStore(memory=memory),
                              memory_blocks=[HybridSummaryBlock(memory=memory)], tokenizer_fn=words)
    await li.aput(ChatMessage(content="before"))
    again = round_trip(li)
    store, block = again.sql_store, again.memory_blocks[0]
    assert isinstance(store, HybridDBChatStore) and isinstance(block, HybridSummaryBlock)
    assert store.memory is memory and block.memory is memory
    await again.aput(ChatMessage(content="after"))
    assert texts(await li.aget_all()) == ["before", "after"]


# -- in another process: a new engine from the config ------------------------------------------------------
CHILD = """
import asyncio, json, pickle, sys
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.utils import get_tokenizer

get_tokenizer()  # loads the buffer's default tokenizer from LlamaIndex's bundled copy: unpickling would download it
objs = pickle.loads(sys.stdin.buffer.read())
buffer, db, block = objs["buffer"], objs["db"], objs["block"]
mem = buffer.chat_store.memory
out = {"lazy": not mem._core.started, "config": mem.config.describe(), "one_engine": db.memory is block.memory is mem,
       "read": [m.content for m in buffer.get_all()],
       "archived": [m.content for m in asyncio.run(db.get_messages("k", status=None))],
       "shown": repr(buffer.chat_store) + repr(db) + repr(mem), "errors": []}
buffer.put(ChatMessage(content="from the child"))
mem.close()
for name in ("closed", "unreachable"):
    try:
        objs[name].get_messages("k")
    except Exception as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}")
print(json.dumps(out))
"""


def test_unpickled_in_another_process_rebuilds_from_the_config(namespace: str) -> None:
    scheme, rest = PG_URL.split("://", 1)
    user, _, host = rest.rpartition("@")
    # The test servers trust local connections: the password is carried, never checked.
    config = HybridConfig(database_url=f"{scheme}://{user or 'postgres'}:{SECRET}@{host}", redis_url=REDIS_URL,
                          namespace=namespace, write_behind_delay=0.01)
    memory = HybridMemory(config)
    closed = HybridMemory(config)
    closed.close()
    unreachable = HybridMemory(HybridConfig(database_url="postgresql://app@127.0.0.1:1/db",
                                            redis_url=REDIS_URL, namespace=namespace, connect_timeout=0.5))
    try:
        buffer = ChatMemoryBuffer.from_defaults(chat_store=HybridChatStore(memory=memory), chat_store_key="k",
                                                token_limit=1000)
        buffer.put(ChatMessage(content="from the parent"))
        memory.flush()  # the child reads PostgreSQL and Redis, not this process's queue
        blob = pickle.dumps({"buffer": buffer, "db": HybridDBChatStore(memory=memory),
                             "block": HybridSummaryBlock(memory=memory), "closed": closed,
                             "unreachable": unreachable})
        assert SECRET.encode() not in blob  # a pickle never carries a password...
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("DATABASE_URL", None)
        refused = subprocess.run([sys.executable, "-c", CHILD], input=blob, capture_output=True, cwd=ROOT, env=env,
                                 timeout=60, check=False)
        assert refused.returncode != 0
        assert ("ConfigurationError: this HybridMemory was pickled without its database_url (a pickle never "
                "carries a password): set DATABASE_URL") in refused.stderr.decode()
        assert SECRET not in refused.stderr.decode()
        env["DATABASE_URL"] = config.database_dsn() or ""  # ...another process takes it from its environment
        child = subprocess.run([sys.executable, "-c", CHILD], input=blob, capture_output=True, cwd=ROOT, env=env,
                               timeout=60, check=False)
        stdout, stderr = child.stdout.decode(), child.stderr.decode()
        assert child.returncode == 0, stderr
        assert SECRET not in stdout + stderr
        out = json.loads(stdout)
        assert out["lazy"] and out["one_engine"] and out["config"] == config.describe()
        assert out["read"] == out["archived"] == ["from the parent"]
        assert out["errors"][0] == "MemoryClosedError: this HybridMemory is closed"
        assert out["errors"][1].startswith("StorageUnavailableError: PostgreSQL at postgresql://app@127.0.0.1:1/db")
        assert texts(buffer.get_all()) == ["from the parent", "from the child"]  # the child's write landed
    finally:
        memory.close()
        unreachable.close()
