"""LlamaIndex chat engines over our stores, 20 turns per call style, against the real servers (no network).

`SimpleChatEngine` and `CondensePlusContextChatEngine`, each with `ChatMemoryBuffer(chat_store=HybridChatStore)`
and with `Memory(chat_store=HybridDBChatStore)`, through `chat`, `achat`, `stream_chat` (in the test's thread,
and in a worker thread while the test's event loop runs) and `astream_chat`. The fake LLM states in every reply
which turn it answers and how many messages it was given, so the stored transcript proves both that every
reply was stored and that every turn saw the whole history. Then a new engine, over a new `HybridMemory`
and an empty Redis, must read the same conversation from PostgreSQL and continue it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any

import pytest
import redis
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.chat_engine import CondensePlusContextChatEngine, SimpleChatEngine
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.memory import ChatMemoryBuffer, Memory
from llama_index.core.memory.types import BaseMemory
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from langchain_hybrid_memory import HybridMemory
from llamaindex_adapter import HybridChatStore, HybridDBChatStore

from conftest import REDIS_URL

TURNS = 20
TURN_RE = re.compile(r"turn (\d+)")


class TurnLLM(CustomLLM):
    """Replies "answer to turn N after K messages": N from the latest user message, K = messages it got."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=200_000, num_output=64, is_chat_model=True, model_name="turn-llm")

    @staticmethod
    def _reply(messages: Sequence[ChatMessage]) -> str:
        user = [m for m in messages if m.role == "user"]
        turns = TURN_RE.findall(user[-1].content or "") if user else []
        return f"answer to turn {turns[-1] if turns else '?'} after {len(messages)} messages"

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role="assistant", content=self._reply(messages)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        words = self._reply(messages).split(" ")

        def gen() -> Generator[ChatResponse, None, None]:
            text = ""
            for i, word in enumerate(words):
                delta = word if i == 0 else f" {word}"
                text += delta
                yield ChatResponse(message=ChatMessage(role="assistant", content=text), delta=delta)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        responses = list(self.stream_chat(messages, **kwargs))

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            for r in responses:
                await asyncio.sleep(0)
                yield r

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        # CondensePlusContext's "condense the question" step: the question is the last turn in the prompt.
        turns = TURN_RE.findall(prompt)
        return CompletionResponse(text=f"turn {turns[-1]}" if turns else prompt)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self.complete(prompt).text

        def gen() -> Generator[CompletionResponse, None, None]:
            yield CompletionResponse(text=text, delta=text)

        return gen()


class FixedRetriever(BaseRetriever):
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text="The hybrid store keeps chats in Redis and PostgreSQL."), score=1.0)]


def words(text: str) -> list[str]:
    return text.split()


# -- building engines -------------------------------------------------------------------------------------
def make_li_memory(kind: str, memory: HybridMemory, key: str) -> BaseMemory:
    if kind == "buffer":
        return ChatMemoryBuffer.from_defaults(chat_store=HybridChatStore(memory=memory), chat_store_key=key,
                                              token_limit=100_000, tokenizer_fn=words)
    return Memory.from_defaults(session_id=key, chat_store=HybridDBChatStore(memory=memory), token_limit=100_000,
                                tokenizer_fn=words)


def make_engine(engine: str, li_memory: BaseMemory) -> BaseChatEngine:
    llm = TurnLLM()
    if engine == "simple":
        return SimpleChatEngine.from_defaults(llm=llm, memory=li_memory)
    return CondensePlusContextChatEngine.from_defaults(retriever=FixedRetriever(), llm=llm, memory=li_memory)


def seen(engine: str, turn: int) -> int:
    """How many messages the LLM gets at `turn` (0-based) when it sees the whole history."""
    # simple: history + the new user message; condense+context: system (context) + history + the query.
    return 2 * turn + 1 if engine == "simple" else 2 * turn + 2


def question(turn: int) -> str:
    return f"turn {turn}: tell me something new about item {turn}"


def expected_transcript(engine: str, turns: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for t in range(turns):
        out += [("user", question(t)), ("assistant", f"answer to turn {t} after {seen(engine, t)} messages")]
    return out


def transcript(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    return [(m.role.value, m.content or "") for m in messages]


# -- one turn, four ways ----------------------------------------------------------------------------------
def sync_chat(engine: BaseChatEngine, text: str) -> str:
    return str(engine.chat(text))


def sync_stream(engine: BaseChatEngine, text: str) -> str:
    response = engine.stream_chat(text)
    return "".join(response.response_gen).strip()  # the generator joins the history-writer thread at its end


async def async_chat(engine: BaseChatEngine, text: str) -> str:
    return str(await engine.achat(text))


async def async_stream(engine: BaseChatEngine, text: str) -> str:
    response = await engine.astream_chat(text)
    return "".join([d async for d in response.async_response_gen()]).strip()


async def run_turns(engine: BaseChatEngine, style: str, start: int, turns: int) -> list[str]:
    replies: list[str] = []
    for t in range(start, start + turns):
        if style == "chat":
            replies.append(sync_chat(engine, question(t)))  # inside the running loop: the engine's sync API
        elif style == "stream_chat":
            replies.append(sync_stream(engine, question(t)))
        elif style == "stream_chat_in_thread":  # a worker thread while this test's loop keeps running
            replies.append(await asyncio.to_thread(sync_stream, engine, question(t)))
        elif style == "achat":
            replies.append(await async_chat(engine, question(t)))
        else:
            replies.append(await async_stream(engine, question(t)))
    return replies


def empty_redis(namespace: str) -> None:
    """Drop every Redis key of this test's namespace: the cache a restarted Redis would have."""
    r = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(r.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            r.delete(*keys)
        assert not list(r.scan_iter(match=f"{namespace}:*", count=1000))
    finally:
        r.close()


STYLES = ["chat", "achat", "stream_chat", "stream_chat_in_thread", "astream_chat"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("memory_kind", ["buffer", "memory"])
@pytest.mark.parametrize("engine_kind", ["simple", "condense_plus_context"])
async def test_twenty_turns_then_a_new_engine_reads_postgres(
        make_memory: Callable[..., HybridMemory], namespace: str, engine_kind: str, memory_kind: str,
        style: str) -> None:
    key = f"{engine_kind}/{memory_kind}/{style}"
    hybrid = make_memory(max_session_messages=10)  # the window is smaller than the conversation
    engine = make_engine(engine_kind, make_li_memory(memory_kind, hybrid, key))

    replies = await run_turns(engine, style, 0, TURNS)

    want = expected_transcript(engine_kind, TURNS)
    assert replies == [text for role, text in want if role == "assistant"]
    assert transcript(engine.chat_history) == want  # every reply stored, in order, after its question

    # A new process: the write-behind queue committed, Redis empty, a new HybridMemory, store and engine.
    await hybrid.aflush()
    empty_redis(namespace)
    fresh = make_memory(max_session_messages=10)
    engine2 = make_engine(engine_kind, make_li_memory(memory_kind, fresh, key))
    assert transcript(engine2.chat_history) == want
    more = await run_turns(engine2, style, TURNS, 1)
    assert more == [f"answer to turn {TURNS} after {seen(engine_kind, TURNS)} messages"]  # saw it all
    assert transcript(engine2.chat_history) == expected_transcript(engine_kind, TURNS + 1)
