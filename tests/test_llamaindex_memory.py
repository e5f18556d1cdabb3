"""LlamaIndex `Memory` over `HybridDBChatStore`, `FunctionAgent` tool calls, and `HybridSummaryBlock`.

All against the real servers; the LLMs are llama-index's `MockFunctionCallingLLM` and a plain function as the
engine's summarizer, so nothing touches the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, TextBlock, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.memory import ChatMemoryBuffer, Memory, StaticMemoryBlock
from llama_index.core.memory.types import BaseMemory
from llama_index.core.storage.chat_store.base_db import MessageStatus
from llama_index.core.tools import FunctionTool

from langchain_hybrid_memory import HybridMemory, Message
from llamaindex_adapter import HybridChatStore, HybridDBChatStore, HybridSummaryBlock
from llamaindex_adapter._convert import archived_session_id, summary_session_id

from conftest import REDIS_URL, pg_fetch


def words(text: str) -> list[str]:
    return text.split()


def empty_redis(namespace: str) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


# -- Memory ------------------------------------------------------------------------------------------------
async def test_memory_archives_oldest_and_lists_everything_in_order(make_memory: Callable[..., HybridMemory],
                                                                    ) -> None:
    store = HybridDBChatStore(memory=make_memory(max_session_messages=5))
    memory = Memory.from_defaults(session_id="s", chat_store=store, token_limit=40, token_flush_size=8,
                                  chat_history_token_ratio=0.5, tokenizer_fn=words)
    sent = [ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"message {i} has five words")
            for i in range(30)]
    for m in sent:
        await memory.aput(m)
    active = await store.get_messages("s", status=MessageStatus.ACTIVE)
    archived = await store.get_messages("s", status=MessageStatus.ARCHIVED)
    assert archived and active, "the token limit should have archived the oldest messages"
    assert sum(len(words(m.content or "")) for m in active) <= 20  # what Memory keeps under its limit
    everything = [m.content for m in await memory.aget_all()]
    assert everything == [m.content for m in sent]
    assert [m.content for m in archived + active] == everything  # archived = a prefix, active = the rest
    assert [m.content for m in await memory.aget()] == [m.content for m in active]


async def test_memory_get_twice_gives_the_same_messages(make_memory: Callable[..., HybridMemory]) -> None:
    """`Memory.aget` writes its memory blocks into the system message it got: the store must hand out new
    objects, or every call would add the block again."""
    store = HybridDBChatStore(memory=make_memory())
    memory = Memory.from_defaults(session_id="s", chat_store=store, tokenizer_fn=words,
                                  memory_blocks=[StaticMemoryBlock(static_content="The user likes tea.")])
    await memory.aput(ChatMessage(role="system", content="Be brief."))
    await memory.aput(ChatMessage(role="user", content="hello"))
    first = await memory.aget()
    second = await memory.aget()
    assert [m.model_dump() for m in first] == [m.model_dump() for m in second]
    assert "The user likes tea." in (second[0].content or "")
    assert (await store.get_messages("s"))[0].content == "Be brief."  # the stored one untouched


def test_memory_sync_api_from_defaults_with_history(make_memory: Callable[..., HybridMemory]) -> None:
    store = HybridDBChatStore(memory=make_memory())
    history = [ChatMessage(role="user", content="one"), ChatMessage(role="assistant", content="two")]
    memory = Memory.from_defaults(session_id="s", chat_store=store, chat_history=history, tokenizer_fn=words)
    memory.put(ChatMessage(role="user", content="three"))
    assert [m.content for m in memory.get_all()] == ["one", "two", "three"]
    memory.reset()
    assert memory.get_all() == []


# -- FunctionAgent -----------------------------------------------------------------------------------------
def get_weather(city: str = "Paris") -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def buffer_memory(memory: HybridMemory, key: str) -> BaseMemory:
    return ChatMemoryBuffer.from_defaults(chat_store=HybridChatStore(memory=memory), chat_store_key=key,
                                          token_limit=100_000, tokenizer_fn=words)


def db_memory(memory: HybridMemory, key: str) -> BaseMemory:
    return Memory.from_defaults(session_id=key, chat_store=HybridDBChatStore(memory=memory), token_limit=100_000,
                                tokenizer_fn=words)


# llama-index's workflow machinery inspects pydantic models with `inspect.getmembers`, which trips pydantic's
# deprecation warnings; they are not ours.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecationWarning")
@pytest.mark.parametrize("make_li_memory", [buffer_memory, db_memory], ids=["chat_memory_buffer", "memory"])
async def test_function_agent_tool_calls_survive(make_memory: Callable[..., HybridMemory], namespace: str,
                                                 make_li_memory: Callable[[HybridMemory, str], BaseMemory]) -> None:
    hybrid = make_memory()
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=MockFunctionCallingLLM())
    result = await agent.run("What is the weather?", memory=make_li_memory(hybrid, "agent"))
    assert "Tool calls complete." in str(result)
    assert [t.tool_name for t in result.tool_calls] == ["get_weather"]

    def check(history: list[ChatMessage]) -> None:
        assert [m.role.value for m in history] == ["user", "assistant", "tool", "assistant"]
        calls = [b for b in history[1].blocks if isinstance(b, ToolCallBlock)]
        assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("get_weather", {"city": "Paris"})]
        assert calls[0].tool_call_id and history[2].additional_kwargs["tool_call_id"] == calls[0].tool_call_id
        assert history[2].content == "Sunny in Paris"
        assert history[3].content == "Tool calls complete."

    check(await make_li_memory(hybrid, "agent").aget_all())
    await hybrid.aflush()
    empty_redis(namespace)
    reopened = make_li_memory(make_memory(), "agent")  # a new process over an empty Redis
    check(await reopened.aget_all())
    # The agent goes on from the stored history (the mock answers without a tool once it sees a result).
    again = await agent.run("And now?", memory=reopened)
    assert "Tool calls complete." in str(again)
    assert len(await reopened.aget_all()) == 6


# -- HybridSummaryBlock ------------------------------------------------------------------------------------
def summarize(previous: str | None, messages: list[Message]) -> str:
    """A deterministic summarizer: the previous summary plus the texts of the chunk."""
    texts = "; ".join(str(m.content) for m in messages)
    return f"{previous} | {texts}" if previous else texts


def summarizing_memory(make_memory: Callable[..., HybridMemory]) -> HybridMemory:
    return make_memory(enable_auto_summarize=True, max_session_messages=2, summarize_chunk_size=2,
                       summarizer=summarize)


async def test_summary_block_shows_the_persisted_summary(make_memory: Callable[..., HybridMemory],
                                                         namespace: str) -> None:
    hybrid = summarizing_memory(make_memory)
    store = HybridDBChatStore(memory=hybrid)
    block = HybridSummaryBlock(memory=hybrid)
    memory = Memory.from_defaults(session_id="s", chat_store=store, memory_blocks=[block], token_limit=60,
                                  token_flush_size=8, chat_history_token_ratio=0.5, tokenizer_fn=words)
    facts = [f"fact {i} code {i * 7}" for i in range(24)]
    for i, fact in enumerate(facts):
        await memory.aput(ChatMessage(role="user" if i % 2 == 0 else "assistant", content=fact))
    assert await hybrid.await_for_summaries(30)

    archived = [m.content for m in await store.get_messages("s", status=MessageStatus.ARCHIVED)]
    active = [m.content for m in await store.get_messages("s")]
    assert len(archived) >= 6 and archived + active == facts
    rows = await asyncio.to_thread(pg_fetch, f'SELECT session_id, text FROM "{namespace}".summaries '
                                             'ORDER BY upto_seq')
    assert rows and {r["session_id"] for r in rows} == {archived_session_id("s")}  # keyed by the session
    latest = rows[-1]["text"]
    assert latest.startswith("fact 0 code 0")  # progressive: the first summary is still in the latest

    text = await block.aget(session_id="s")
    assert text.startswith("Summary of the earlier conversation:\n" + latest)
    for fact in archived:  # no gap: every archived message is in the summary or shown verbatim
        assert fact in text
    for fact in active:
        assert fact not in text  # ...and the queue itself is not repeated
    prompt = await memory.aget()
    assert prompt[0].role.value == "system" and latest in (prompt[0].content or "")
    assert [m.content for m in prompt[1:]] == active

    # Another process over an empty Redis reads the same summary from PostgreSQL.
    await hybrid.aflush()
    empty_redis(namespace)
    other = summarizing_memory(make_memory)
    assert await HybridSummaryBlock(memory=other).aget(session_id="s") == text


async def test_summary_block_ingests_for_other_stores(make_memory: Callable[..., HybridMemory]) -> None:
    hybrid = summarizing_memory(make_memory)
    block = HybridSummaryBlock(memory=hybrid, ingest=True, include_recent=False)
    flushed = [ChatMessage(role="user", content=f"old {i}") for i in range(8)]
    await block.aput(flushed, from_short_term_memory=True, session_id="s")  # what Memory does on a flush
    assert await hybrid.await_for_summaries(30)
    stored = await hybrid.aget_messages(summary_session_id("s"))
    assert [m.content for m in stored] == [f"old {i}" for i in range(8)]
    assert all("session_id" not in m.metadata.get("llamaindex", {}).get("additional_kwargs", {}) for m in stored)
    text = await block.aget(session_id="s")
    assert text.startswith("Summary of the earlier conversation:\nold 0; old 1")
    assert "not summarized yet" not in text
    assert await block.aget(session_id="other") == ""
    assert await block.aget() == ""  # no session: nothing to show


async def test_summary_block_without_summaries_shows_recent_archive(make_memory: Callable[..., HybridMemory],
                                                                    ) -> None:
    hybrid = make_memory(max_session_messages=3)
    store = HybridDBChatStore(memory=hybrid)
    await store.add_messages("s", [ChatMessage(role="user", content=f"m{i}") for i in range(5)])
    await store.archive_oldest_messages("s", 4)
    block = HybridSummaryBlock(memory=hybrid)
    text = await block.aget(session_id="s")
    assert text == "Earlier messages, not summarized yet:\nuser: m1\nuser: m2\nuser: m3"
    assert await block.atruncate(text, 10) is None
    with_summary = "Summary of the earlier conversation:\nS\n\n" + text
    assert await block.atruncate(with_summary, 10) == "Summary of the earlier conversation:\nS"


def test_summary_block_in_a_sync_memory(make_memory: Callable[..., HybridMemory]) -> None:
    """Memory's sync methods run the block on a new loop in a worker thread: it works there too."""
    hybrid = summarizing_memory(make_memory)
    memory = Memory.from_defaults(session_id="s", chat_store=HybridDBChatStore(memory=hybrid),
                                  memory_blocks=[HybridSummaryBlock(memory=hybrid)], token_limit=40,
                                  token_flush_size=6, chat_history_token_ratio=0.5, tokenizer_fn=words)
    for i in range(16):
        memory.put(ChatMessage(role="user" if i % 2 == 0 else "assistant", content=f"note {i} is here"))
    assert hybrid.wait_for_summaries(30)
    system = memory.get()[0]
    assert system.role.value == "system" and "note 0 is here" in (system.content or "")
    assert any(isinstance(b, TextBlock) and "Summary of the earlier conversation" in b.text for b in system.blocks)
