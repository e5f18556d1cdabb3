"""Async methods never block the event loop: every public coroutine of every public class, under blockbuster.

The autouse `blockbuster` fixture (conftest.py) raises `BlockingError` on any blocking call made by our packages
while a loop runs in that thread. Here each method runs on a brand-new loop (its first call there, when the
engine has to set the loop up), then again on the same loop (the loop's own Redis connection).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.storage.chat_store.base_db import MessageStatus

from langchain_hybrid_memory import HybridChatMessageHistory, HybridMemory, Message
from langchain_hybrid_memory.checkpoint import HybridSaver
from langchain_hybrid_memory.middleware import HybridMemoryMiddleware, HybridSummarizer, SummaryRecord
from langchain_hybrid_memory.retriever import HybridRetriever
from llamaindex_adapter import (
    HybridChatStore,
    HybridDBChatStore,
    HybridRecallBlock,
    HybridRecallRetriever,
    HybridSummaryBlock,
)

pytestmark = pytest.mark.strict_loop

OURS = ("langchain_hybrid_memory", "llamaindex_adapter")
# Coroutines inherited from the frameworks that run our code: the memory block's public entry points.
INHERITED = {HybridSummaryBlock: {"aget", "aput"}, HybridRecallBlock: {"aget", "aput"},
             HybridRecallRetriever: {"aretrieve"}, HybridRetriever: {"ainvoke"}}
CLASSES = (HybridMemory, HybridChatMessageHistory, HybridMemoryMiddleware, HybridSummarizer, HybridChatStore,
           HybridDBChatStore, HybridSummaryBlock, HybridSaver, HybridRecallBlock, HybridRecallRetriever,
           HybridRetriever)


def public_coroutines(cls: type) -> set[str]:
    names = set()
    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("_") or not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            continue
        if fn.__module__.startswith(OURS) or name in INHERITED.get(cls, ()):
            names.add(name)
    return names


Call = Callable[[], Coroutine[Any, Any, Any]]
counter = itertools.count()


def fresh() -> str:
    return f"s{next(counter)}"


def calls(memory: HybridMemory) -> dict[type, dict[str, Call]]:
    """One call per public coroutine; each builds fresh arguments (closes: a fresh object), so it can run twice."""
    history = HybridChatMessageHistory("hist", memory=memory)
    store = HybridChatStore(memory=memory)
    db = HybridDBChatStore(memory=memory)
    block = HybridSummaryBlock(memory=memory, session_id="blk")
    recall_block = HybridRecallBlock(memory=memory)
    middleware = HybridMemoryMiddleware(memory, recall=True)
    summarizer = HybridSummarizer(memory, lambda msgs: "a summary", session_id="sum")

    def msg(text: str = "hi") -> Message:
        return Message("human", text)

    async def filled(n: int = 3) -> str:
        sid = fresh()
        await memory.aadd_messages(sid, [msg(str(i)) for i in range(n)])
        return sid

    async def save_summary() -> bool:
        sid = fresh()
        added = await memory.aadd_messages(sid, [msg(), msg()])
        return await memory.asave_summary(sid, "so far", upto_message_id=added[0].id)

    async def agent_run() -> Any:
        model = GenericFakeChatModel(messages=iter([AIMessage("hello")]))
        agent = create_agent(model, tools=[], middleware=[middleware])
        return await agent.ainvoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": fresh()}})

    async def li_filled() -> str:
        key = fresh()
        await store.aset_messages(key, [ChatMessage(role="user", content=str(i)) for i in range(3)])
        return key

    async def db_filled() -> str:
        key = fresh()
        await db.add_messages(key, [ChatMessage(role="user", content=str(i)) for i in range(4)])
        return key

    async def close_memory() -> None:
        other = HybridMemory(memory.config)
        await other.aget_recent_messages("x")
        await other.aclose()

    async def close_store(store_cls: type[HybridChatStore] | type[HybridDBChatStore]) -> None:
        owner = store_cls(config=memory.config)  # builds its memory, so its aclose closes it
        await owner.memory.aget_recent_messages("x")
        await owner.aclose()
        assert owner.memory._core.closed

    saver = HybridSaver(memory)

    async def checkpointed() -> dict[str, Any]:
        from langgraph.checkpoint.base import empty_checkpoint

        config: Any = {"configurable": {"thread_id": fresh(), "checkpoint_ns": ""}}
        return dict(await saver.aput(config, empty_checkpoint(), {"run_id": "r"}, {}))

    async def alist_all() -> list[Any]:
        return [t async for t in saver.alist(await checkpointed(), limit=2)]

    async def aiter_all() -> list[Any]:
        return [m async for m in history.aiter_transcript(page_size=2)]

    async def context_and_recall(sid: str) -> Any:
        await memory.aget_context(sid)
        await memory.await_for_index(5)
        return await memory.aget_context(sid, query="0 1")  # its first recall loads the token counter

    async def run(coro_fn: Callable[[str], Coroutine[Any, Any, Any]], make: Callable[[], Coroutine[Any, Any, str]]
                  ) -> Any:
        return await coro_fn(await make())

    return {
        HybridMemory: {
            "astart": memory.astart,
            "aadd_messages": lambda: memory.aadd_messages(fresh(), [msg()]),
            "aget_recent_messages": lambda: run(memory.aget_recent_messages, filled),
            "aget_context": lambda: run(context_and_recall, filled),
            "asearch": lambda: run(lambda s: memory.asearch("hello there", session_id=s), filled),
            "await_for_index": lambda: memory.await_for_index(5),
            "arecall": lambda: run(lambda s: memory.arecall("0 1 2", session_id=[s, fresh()]), filled),
            "aget_messages": lambda: run(memory.aget_messages, filled),
            "aget_summaries": lambda: run(memory.aget_summaries, filled),
            "aset_auto_summarize": lambda: run(lambda s: memory.aset_auto_summarize(s, False), filled),
            "asave_summary": save_summary,
            "asummarize_now": lambda: run(memory.asummarize_now, filled),
            "await_for_summaries": lambda: memory.await_for_summaries(1),
            "ainvalidate_session": lambda: run(memory.ainvalidate_session, filled),
            "ainvalidate_user": lambda: memory.ainvalidate_user("u1"),
            "aclear_session": lambda: run(memory.aclear_session, filled),
            "adelete_messages": lambda: run(lambda s: memory.adelete_messages(s, [1]), filled),
            "adelete_user": lambda: memory.adelete_user(fresh()),
            "alist_sessions": lambda: memory.alist_sessions(limit=5),
            "apurge_idle_sessions": lambda: memory.apurge_idle_sessions(10_000),
            "aprefetch_context": lambda: run(memory.aprefetch_context, filled),
            "awarmup": lambda: memory.awarmup(5),
            "aflush": memory.aflush,
            "areclaim_orphans": memory.areclaim_orphans,
            "aget_cache_stats": memory.aget_cache_stats,
            "amigrate": memory.amigrate,
            "aclose": close_memory,
        },
        HybridChatMessageHistory: {
            "aadd_messages": lambda: history.aadd_messages([HumanMessage("hi")]),
            "aget_messages": history.aget_messages,
            "aget_transcript": history.aget_transcript,
            "aiter_transcript": aiter_all,
            "aclear": history.aclear,
        },
        HybridMemoryMiddleware: {name: agent_run for name in ("abefore_agent", "abefore_model", "aafter_agent",
                                                              "awrap_model_call")},
        HybridSummarizer: {
            "ainvoke": lambda: summarizer.ainvoke([HumanMessage("hi", id=fresh())]),
            "asave": lambda: summarizer.asave(SummaryRecord(fresh(), None, "text", None)),
        },
        HybridChatStore: {
            "aset_messages": li_filled,
            "aget_messages": lambda: run(store.aget_messages, li_filled),
            "aget_keys": store.aget_keys,
            "async_add_message": lambda: store.async_add_message(fresh(), ChatMessage(role="user", content="x")),
            "aadd_message": lambda: store.aadd_message(fresh(), ChatMessage(role="user", content="x")),
            "aadd_messages": lambda: store.aadd_messages(fresh(), [ChatMessage(role="user", content="x")]),
            "adelete_message": lambda: run(lambda k: store.adelete_message(k, 1), li_filled),
            "adelete_last_message": lambda: run(store.adelete_last_message, li_filled),
            "adelete_messages": lambda: run(store.adelete_messages, li_filled),
            "aclose": lambda: close_store(HybridChatStore),
        },
        HybridDBChatStore: {
            "add_messages": db_filled,
            "add_message": lambda: db.add_message(fresh(), ChatMessage(role="user", content="x")),
            "set_messages": lambda: db.set_messages(fresh(), [ChatMessage(role="user", content="x")]),
            "get_messages": lambda: run(db.get_messages, db_filled),
            "count_messages": lambda: run(db.count_messages, db_filled),
            "get_keys": db.get_keys,
            "delete_message": lambda: run(lambda k: db.delete_message(k, 0), db_filled),
            "delete_messages": lambda: run(lambda k: db.delete_messages(k, MessageStatus.ACTIVE), db_filled),
            "delete_oldest_messages": lambda: run(lambda k: db.delete_oldest_messages(k, 2), db_filled),
            "archive_oldest_messages": lambda: run(lambda k: db.archive_oldest_messages(k, 2), db_filled),
            "aclose": lambda: close_store(HybridDBChatStore),
        },
        HybridSaver: {
            "aput": checkpointed,
            "aget_tuple": lambda: run(saver.aget_tuple, checkpointed),
            "alist": alist_all,
            "alist_threads": lambda: run(lambda c: saver.alist_threads(filter={"run_id": "r"}, limit=1), checkpointed),
            "aput_writes": lambda: run(lambda c: saver.aput_writes(c, [("ch", 1)], "task"), checkpointed),
            "adelete_thread": lambda: saver.adelete_thread(fresh()),
            "adelete_for_runs": lambda: saver.adelete_for_runs(["r"]),
            "acopy_thread": lambda: saver.acopy_thread(fresh(), fresh()),
            "aprune": lambda: saver.aprune([fresh()]),
            "aget_delta_channel_history": lambda: run(
                lambda c: saver.aget_delta_channel_history(config=c, channels=["ch"]), checkpointed),
        },
        HybridRecallBlock: {
            "aput": lambda: recall_block.aput([ChatMessage(role="user", content="x")]),
            "aget": lambda: recall_block.aget([ChatMessage(role="user", content="hello 1")], session_id="blk"),
            "atruncate": lambda: recall_block.atruncate("header\nline one\nline two", 3),
        },
        HybridRecallRetriever: {"aretrieve": lambda: HybridRecallRetriever(memory, key="blk").aretrieve("hi 1")},
        HybridRetriever: {"ainvoke": lambda: HybridRetriever(memory=memory, user_id="u1").ainvoke("hi 1")},
        HybridSummaryBlock: {
            "aput": lambda: block.aput([ChatMessage(role="user", content="x")]),
            "aget": lambda: block.aget(session_id="blk"),
            "atruncate": lambda: block.atruncate("summary", 10),
        },
    }


def test_every_public_coroutine_is_checked(memory):
    table = calls(memory)
    assert set(table) == set(CLASSES)
    for cls in CLASSES:
        assert public_coroutines(cls) == set(table[cls]), cls.__name__


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_async_methods_never_block_the_loop(cls, make_memory, blockbuster):
    assert blockbuster is not None  # the fixture is active for this test
    # The checkpointer with key tracking on: its kept reads and the tracking set-up run on the loop too.
    memory = make_memory(enable_auto_summarize=True, max_session_messages=4, summarize_chunk_size=2,
                         redis_key_tracking=cls is HybridSaver)
    table = calls(memory)[cls]
    for call in table.values():
        async def twice(call: Call = call) -> None:
            await call()  # the first call on this loop
            await call()  # the loop's own connection from now on
        asyncio.run(twice())  # a brand-new loop for each method
