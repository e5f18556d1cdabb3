"""HybridChatMessageHistory: conformance, RunnableWithMessageHistory end to end, lossless round trips, the view."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from chat_history_conformance import ChatHistoryConformance, Factory, comparable
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    message_chunk_to_message,
    message_to_dict,
)
from langchain_core.outputs import ChatResult
from langchain_core.runnables.history import RunnableWithMessageHistory
from pydantic import Field

from langchain_hybrid_memory import (
    HybridConfig,
    HybridMemory,
    InvalidMessageError,
    InvalidSessionIdError,
    Message,
    SessionOwnershipError,
    StorageUnavailableError,
)
from langchain_hybrid_memory.history import HybridChatMessageHistory
from langchain_hybrid_memory.summarizers import transcript

from conftest import pg_fetch


class TestHybridHistoryConformance(ChatHistoryConformance):
    @pytest.fixture
    def history_factory(self, make_memory: Callable[..., HybridMemory]) -> Factory:
        memory = make_memory()
        return lambda sid: HybridChatMessageHistory(sid, memory=memory)

    # The whole session is the transcript (the view is a window). Flushed first: the core's get_messages can miss
    # rows committed while it reads (it queries PostgreSQL, then looks at the write-behind queue; see the report).
    def read_all(self, history: BaseChatMessageHistory) -> list[BaseMessage]:
        assert isinstance(history, HybridChatMessageHistory)
        history.memory.flush()
        return list(history.iter_transcript(page_size=13))

    async def aread_all(self, history: BaseChatMessageHistory) -> list[BaseMessage]:
        assert isinstance(history, HybridChatMessageHistory)
        await history.memory.aflush()
        return [m async for m in history.aiter_transcript(page_size=13)]



# -- RunnableWithMessageHistory -------------------------------------------------------------------------------
class RecordingFakeModel(GenericFakeChatModel):
    """GenericFakeChatModel that remembers what it was shown, and can act between RWMH's two history reads."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)
    during_call: Callable[[], None] | None = None

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        if self.during_call is not None:
            self.during_call()
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def _rwmh(model: BaseChatModel, factory: Callable[[str], BaseChatMessageHistory]) -> RunnableWithMessageHistory:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # RWMH is deprecated in langchain-core 1.x
        return RunnableWithMessageHistory(model, factory)


def _replies(prefix: str) -> Iterator[AIMessage | str]:
    i = 0
    while True:
        # Every other reply carries fields a plain string would not: they must survive storage too.
        if i % 2:
            yield AIMessage(f"{prefix} reply {i} with  spaces", usage_metadata={
                "input_tokens": i, "output_tokens": 2, "total_tokens": i + 2}, response_metadata={"turn": i})
        else:
            yield f"{prefix} reply {i}"
        i += 1


async def test_rwmh_50_turns_each_way_then_a_fresh_engine_reads_postgres(make_memory):
    memory = make_memory()
    window = memory.config.max_session_messages
    sid = "rwmh-session"
    model = RecordingFakeModel(messages=_replies("m"))
    chain = _rwmh(model, lambda s: HybridChatMessageHistory(s, memory=memory))
    cfg = {"configurable": {"session_id": sid}}
    expected: list[BaseMessage] = []  # the transcript as it should be stored

    def user_input(mode: str, turn: int) -> HumanMessage | str:
        text = f"{mode} question {turn} ✓"
        return HumanMessage(text, id=f"{mode}-{turn}") if turn % 2 else text  # with and without ids

    def check_turn(sent: HumanMessage | str, reply: BaseMessage) -> None:
        human = sent if isinstance(sent, HumanMessage) else HumanMessage(sent)
        # The model saw the window (the stored tail), then the new input.
        shown = model.seen[-1]
        assert [(m.type, m.content) for m in shown] == [(m.type, m.content) for m in expected[-window:]] + [
            ("human", human.content)]
        expected.extend([human, message_chunk_to_message(reply)])

    def sync_turns() -> None:
        for turn in range(50):
            sent = user_input("invoke", turn)
            check_turn(sent, chain.invoke(sent, cfg))
        for turn in range(50):
            sent = user_input("stream", turn)
            chunks = list(chain.stream(sent, cfg))
            total = chunks[0]
            for c in chunks[1:]:
                total = total + c
            check_turn(sent, total)

    await asyncio.to_thread(sync_turns)
    for turn in range(50):
        sent = user_input("ainvoke", turn)
        check_turn(sent, await chain.ainvoke(sent, cfg))
    for turn in range(50):
        sent = user_input("astream", turn)
        total = None
        async for c in chain.astream(sent, cfg):
            total = c if total is None else total + c
        assert total is not None
        check_turn(sent, total)

    assert len(expected) == 400
    await memory.aflush()
    rows = pg_fetch(f'SELECT role, count(*) FROM "{memory.config.namespace}".messages WHERE session_id = $1 '
                    "GROUP BY role ORDER BY role", sid)
    assert [tuple(r) for r in rows] == [("ai", 200), ("human", 200)]

    fresh = make_memory()  # a new engine...
    await fresh.ainvalidate_session(sid)  # ...whose Redis has nothing for this session
    history = HybridChatMessageHistory(sid, memory=fresh)
    stored = [m async for m in history.aiter_transcript(page_size=37)]
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected, strict=True):
        assert type(got) is type(want)  # streamed replies are stored as AIMessage, never AIMessageChunk
        assert comparable(got) == comparable(want)  # ids included: None where the caller gave none
    # The view of the new engine (Redis refilled from PostgreSQL) is the tail, with the ids stored.
    assert [m.id for m in history.messages] == [m.id for m in stored[-window:]]


@pytest.mark.parametrize("use_async", [False, True])
async def test_view_is_stable_when_another_writer_appends_during_a_run(make_memory, use_async):
    memory = make_memory()
    sid = "stable"
    memory.add_messages(sid, [Message("human", "earlier"), Message("ai", "earlier reply")])
    intruder = Message("human", "from another worker", id="intruder")
    model = RecordingFakeModel(messages=iter(["answer"]),
                               during_call=lambda: memory.add_messages(sid, [intruder]))
    chain = _rwmh(model, lambda s: HybridChatMessageHistory(s, memory=memory))
    cfg = {"configurable": {"session_id": sid}}
    if use_async:
        await chain.ainvoke("mine", cfg)
    else:
        await asyncio.to_thread(chain.invoke, "mine", cfg)
    got = [m.content for m in HybridChatMessageHistory(sid, memory=memory).messages]
    # A second read that saw the intruder would have dropped "mine" (RWMH stores inputs[len(history):]).
    assert got == ["earlier", "earlier reply", "from another worker", "mine", "answer"]


SUMMARIZING = {"enable_auto_summarize": True, "max_session_messages": 2, "summarize_chunk_size": 2,
               "summarizer": lambda previous, messages: "the user greeted twice"}


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_summary_landing_mid_run_neither_drops_nor_duplicates(make_memory, use_async):
    # Summaries become due at 5 messages after the last one (window 2 + chunk 3) and cover 3 messages.
    memory = make_memory(**{**SUMMARIZING, "summarize_chunk_size": 3})
    sid = "summary"
    memory.add_messages(sid, [Message("human", "hi", id="h1"), Message("ai", "hello", id="a1"),
                              Message("human", "hi again", id="h2"), Message("ai", "hello again", id="a2")])

    def another_writer_then_summary() -> None:
        # While the model thinks, a fifth message makes h1, a1, h2 due, and their summary lands: the view
        # shrinks between RWMH's two reads (4 messages, then summary + 2).
        memory.add_messages(sid, [Message("human", "meanwhile", id="x1")])
        memory.summarize_now(sid)
        assert memory.wait_for_summaries(30)  # (the background worker may have taken the session first)

    model = RecordingFakeModel(messages=iter(["answer"]), during_call=another_writer_then_summary)
    chain = _rwmh(model, lambda s: HybridChatMessageHistory(s, memory=memory))
    cfg = {"configurable": {"session_id": sid}}
    if use_async:
        await chain.ainvoke("question", cfg)
    else:
        await asyncio.to_thread(chain.invoke, "question", cfg)
    assert [m.content for m in model.seen[0]] == ["hi", "hello", "hi again", "hello again", "question"]
    assert [s["message_count"] for s in memory.get_summaries(sid)] == [3]
    memory.flush()  # (transcript reads during a commit: see read_all above)
    transcript = [m.content for m in HybridChatMessageHistory(sid, memory=memory).iter_transcript()]
    assert transcript == ["hi", "hello", "hi again", "hello again", "meanwhile", "question", "answer"]
    # A later view: the summary as one leading system message, then everything it does not cover.
    view = await HybridChatMessageHistory(sid, memory=memory).aget_messages()
    assert isinstance(view[0], SystemMessage) and view[0].content.endswith("the user greeted twice")
    assert [m.content for m in view[1:]] == ["hello again", "meanwhile", "question", "answer"]
    assert HybridChatMessageHistory(sid, memory=memory).messages == view


def test_the_view_after_a_summary_with_tool_calls_in_it(make_memory):
    memory = make_memory(**SUMMARIZING)
    history = HybridChatMessageHistory("after-summary", memory=memory)
    history.add_messages([*_tool_exchange(), HumanMessage("thanks", id="h-2"), AIMessage("welcome", id="ai-3")])
    memory.summarize_now("after-summary")
    view = history.messages
    # The engine's chunk (h-1, ai-1 and, kept with their call, t-1 and t-2) is summarized as one.
    (summary,) = memory.get_summaries("after-summary")
    assert isinstance(view[0], SystemMessage) and view[0].id == f"hybrid-summary-{summary['upto_seq']}"
    assert [m.id for m in view[1:]] == ["ai-2", "h-2", "ai-3"]


def test_stable_view_off_reads_fresh_and_refresh_forgets(memory):
    kept = HybridChatMessageHistory("s", memory=memory)
    live = HybridChatMessageHistory("s", memory=memory, stable_view=False)
    assert kept.messages == [] and live.messages == []
    memory.add_messages("s", [Message("human", "elsewhere")])
    assert kept.messages == []  # kept until this object writes, or refresh()
    assert [m.content for m in live.messages] == ["elsewhere"]
    kept.refresh()
    assert [m.content for m in kept.messages] == ["elsewhere"]


# -- lossless round trips ---------------------------------------------------------------------------------------
def _tool_exchange() -> list[BaseMessage]:
    return [
        HumanMessage([{"type": "text", "text": "What is in this picture, and the weather in Paris?"},
                      {"type": "image", "url": "https://example.com/cat.png"},
                      {"type": "image", "base64": "iVBORw0KGgo=", "mime_type": "image/png"},
                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}],
                     id="h-1", name="ada"),
        AIMessage(
            [{"type": "text", "text": "Let me check."}],
            id="ai-1", name="assistant",
            tool_calls=[{"name": "weather", "args": {"city": "Paris", "units": ["c", None, 1.5]}, "id": "call-1"},
                        {"name": "describe", "args": {}, "id": "call-2"}],
            invalid_tool_calls=[{"name": "broken", "args": "{not json", "id": "call-3", "error": "bad json",
                                 "type": "invalid_tool_call"}],
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                            "input_token_details": {"cache_read": 3}},
            response_metadata={"model_name": "fake", "finish_reason": "tool_calls", "logprobs": None},
            additional_kwargs={"refusal": None, "custom": {"nested": [1, 2, {"deep": True}]}},
        ),
        ToolMessage("18°C, sunny", tool_call_id="call-1", id="t-1", name="weather",
                    artifact={"raw": {"temp": 18.0, "sky": "clear"}, "source": ["meteo"]}),
        ToolMessage([{"type": "text", "text": "a cat"}], tool_call_id="call-2", id="t-2", status="error",
                    artifact=None, additional_kwargs={"retry": 1}, response_metadata={"elapsed": 0.25}),
        AIMessage("It is 18°C and sunny; the picture shows a cat.", id="ai-2",
                  usage_metadata={"input_tokens": 30, "output_tokens": 12, "total_tokens": 42},
                  response_metadata={"finish_reason": "stop"}),
    ]


async def test_a_tool_calling_exchange_round_trips_every_field(make_memory):
    writer = make_memory()
    sent = _tool_exchange()
    history = HybridChatMessageHistory("tools", memory=writer)
    await history.aadd_messages(sent[:3])
    history.add_messages(sent[3:])
    from_redis = history.messages
    assert from_redis == sent
    assert [comparable(m) for m in from_redis] == [comparable(m) for m in sent]
    await writer.aflush()

    fresh = make_memory()
    await fresh.ainvalidate_session("tools")
    from_pg = HybridChatMessageHistory("tools", memory=fresh).get_transcript().messages
    assert [comparable(m) for m in from_pg] == [comparable(m) for m in sent]
    ai = from_pg[1]
    assert isinstance(ai, AIMessage) and ai.tool_calls[0]["args"]["units"] == ["c", None, 1.5]
    assert ai.invalid_tool_calls[0]["error"] == "bad json"
    assert isinstance(from_pg[2], ToolMessage) and from_pg[2].artifact == {"raw": {"temp": 18.0, "sky": "clear"},
                                                                           "source": ["meteo"]}
    # Rows stay readable: the LangChain type is the role.
    rows = pg_fetch(f'SELECT role FROM "{fresh.config.namespace}".messages ORDER BY seq')
    assert [r["role"] for r in rows] == ["human", "ai", "tool", "tool", "ai"]
    # The engine's own summarizer prompt sees the tool calls (they are also at the top level of metadata).
    lines = transcript(fresh.get_recent_messages("tools")).splitlines()
    assert lines[1] == "ai: Let me check. [calls tools: weather, describe]"


def test_streamed_chunks_are_stored_as_plain_messages(memory):
    chunks = [AIMessageChunk("", id="stream-1", tool_call_chunks=[
                  {"name": "weather", "args": '{"city": ', "id": "call-9", "index": 0, "type": "tool_call_chunk"}]),
              AIMessageChunk("", tool_call_chunks=[
                  {"name": None, "args": '"Rome"}', "id": None, "index": 0, "type": "tool_call_chunk"}]),
              AIMessageChunk("done", chunk_position="last",
                             usage_metadata={"input_tokens": 1, "output_tokens": 1, "total_tokens": 2})]
    total = chunks[0] + chunks[1] + chunks[2]
    history = HybridChatMessageHistory("chunks", memory=memory)
    history.add_messages([total])
    (got,) = history.messages
    assert type(got) is AIMessage
    assert got.id == "stream-1" and got.content == "done"
    assert got.tool_calls == [{"name": "weather", "args": {"city": "Rome"}, "id": "call-9", "type": "tool_call"}]
    assert got.usage_metadata == {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


def test_serialized_langchain_objects_stay_plain_data(memory):
    # Data that looks like LangChain's serialization format must come back as data: nothing is ever `load`ed.
    lookalike = {"lc": 1, "type": "constructor", "id": ["langchain_core", "messages", "AIMessage"],
                 "kwargs": {"content": "injected"}}
    secret = {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}
    sent = HumanMessage([lookalike], id="x", additional_kwargs={"payload": lookalike, "key": secret})
    history = HybridChatMessageHistory("lookalike", memory=memory)
    history.add_messages([sent])
    (got,) = history.messages
    assert type(got) is HumanMessage
    assert got.content == [lookalike]
    assert got.additional_kwargs == {"payload": lookalike, "key": secret}


def test_ids_make_adds_idempotent(memory):
    history = HybridChatMessageHistory("idem", memory=memory)
    history.add_messages([HumanMessage("once", id="same"), HumanMessage("twice", id="same"), AIMessage("no id")])
    view = history.messages
    assert [(m.id, m.content) for m in view] == [("same", "once"), (None, "no id")]
    history.add_messages(view[:1])  # an id already stored: nothing new
    memory.flush()
    assert [m.content for m in history.get_transcript().messages] == ["once", "no id"]


async def test_messages_without_ids_come_back_without_ids(memory):
    """As `InMemoryChatMessageHistory` and langchain-postgres return them: what was added, `==` included."""
    history = HybridChatMessageHistory("no-ids", memory=memory)
    sent = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello")]
    await history.aadd_messages(sent)
    assert await history.aget_messages() == sent
    assert await HybridChatMessageHistory("no-ids", memory=memory).aget_messages() == sent
    await memory.aflush()
    await memory.ainvalidate_session("no-ids")  # from PostgreSQL too
    assert await HybridChatMessageHistory("no-ids", memory=memory).aget_messages() == sent
    assert (await history.aget_transcript()).messages == sent
    # The engine still keeps an id of its own for each row (idempotent retries of the write-behind).
    assert all(m.id for m in await memory.aget_messages("no-ids"))


def test_unusable_ids_are_hashed_and_kept(memory):
    odd = "x" * 300
    control = "tab\tid"
    history = HybridChatMessageHistory("odd-ids", memory=memory)
    history.add_messages([HumanMessage("long", id=odd), HumanMessage("control", id=control)])
    history.add_messages([HumanMessage("long again", id=odd)])  # still idempotent
    assert [(m.id, m.content) for m in history.messages] == [(odd, "long"), (control, "control")]


def test_bad_input_is_refused_before_anything_is_written(memory):
    history = HybridChatMessageHistory("bad", memory=memory)
    with pytest.raises(InvalidMessageError):
        history.add_messages([HumanMessage("fine"), ToolMessage("x", tool_call_id="c", artifact=b"bytes")])
    with pytest.raises(InvalidMessageError):
        history.add_messages([RemoveMessage(id="whatever")])
    assert history.messages == []


def test_messages_written_by_other_adapters_read_by_role(memory):
    memory.add_messages("foreign", [Message("system", "be brief"), Message("user", "hi"),
                                    Message("assistant", "hello", metadata={"name": "bot"}),
                                    Message("assistant", "", metadata={"tool_calls": [{
                                        "id": "c1", "type": "function",
                                        "function": {"name": "add", "arguments": '{"a": 1}'}}]}),
                                    Message("tool", "42", metadata={"tool_call_id": "c1"}),
                                    Message("narrator", "meanwhile")])
    got = HybridChatMessageHistory("foreign", memory=memory).messages
    assert [(m.type, m.content) for m in got] == [("system", "be brief"), ("human", "hi"), ("ai", "hello"),
                                                  ("ai", ""), ("tool", "42"), ("chat", "meanwhile")]
    assert got[2].name == "bot"
    assert isinstance(got[3], AIMessage) and got[3].tool_calls == [
        {"name": "add", "args": {"a": 1}, "id": "c1", "type": "tool_call"}]
    assert isinstance(got[4], ToolMessage) and got[4].tool_call_id == "c1"


# -- the window ---------------------------------------------------------------------------------------------------
def test_window_never_starts_with_an_orphaned_tool_message(make_memory):
    memory = make_memory(max_session_messages=3)
    sent = _tool_exchange()  # human, ai(tool calls), tool, tool, ai
    history = HybridChatMessageHistory("cut", memory=memory)
    history.add_messages(sent)
    assert [m.id for m in memory.get_recent_messages("cut")] == ["t-1", "t-2", "ai-2"]  # the engine's window
    assert [m.id for m in history.messages] == ["ai-2"]  # the tool results lost their call: left out
    history.add_messages([HumanMessage("next", id="h-2")])
    assert [m.id for m in history.messages] == ["ai-2", "h-2"]  # window [t-2, ai-2, h-2]: t-2 left out
    memory.flush()
    assert [m.id for m in history.iter_transcript()] == [m.id for m in sent] + ["h-2"]


def test_window_keeps_a_tool_exchange_that_starts_with_its_call(make_memory):
    memory = make_memory(max_session_messages=4)
    history = HybridChatMessageHistory("whole", memory=memory)
    history.add_messages(_tool_exchange())
    assert [m.id for m in history.messages] == ["ai-1", "t-1", "t-2", "ai-2"]


async def test_transcript_pages(memory):
    history = HybridChatMessageHistory("pages", memory=memory)
    await history.aadd_messages([HumanMessage(f"m{i}", id=f"p{i}") for i in range(25)])
    await memory.aflush()  # (transcript reads during a commit: see read_all above)
    first = history.get_transcript(limit=10)
    assert [m.id for m in first.messages] == [f"p{i}" for i in range(10)] and first.next_after_seq is not None
    second = await history.aget_transcript(after_seq=first.next_after_seq, limit=10)
    assert [m.id for m in second.messages] == [f"p{i}" for i in range(10, 20)]
    assert second.next_after_seq is not None
    last = history.get_transcript(after_seq=second.next_after_seq, limit=10)
    assert [m.id for m in last.messages] == [f"p{i}" for i in range(20, 25)] and last.next_after_seq is None
    assert [m.id for m in history.iter_transcript(page_size=5)] == [f"p{i}" for i in range(25)]
    assert [m.id async for m in history.aiter_transcript(page_size=25)] == [f"p{i}" for i in range(25)]
    with pytest.raises(ValueError):
        next(history.iter_transcript(page_size=0))


# -- construction, users -----------------------------------------------------------------------------------------
def test_constructor_does_no_io(namespace):
    dead = HybridMemory(HybridConfig(database_url="postgresql://postgres@127.0.0.1:1/none",
                                     redis_url="redis://127.0.0.1:1/0", namespace=namespace, connect_timeout=0.5,
                                     redis_timeout=0.2))
    try:
        t0 = time.perf_counter()
        history = HybridChatMessageHistory("s", memory=dead, user_id="u")
        assert time.perf_counter() - t0 < 0.05
        assert dead._core.started is False
        with pytest.raises(StorageUnavailableError):
            _ = history.messages
        with pytest.raises(InvalidSessionIdError):
            HybridChatMessageHistory("", memory=dead)
    finally:
        dead.close()


async def test_user_id_guards_the_session(memory):
    owner = HybridChatMessageHistory("private", memory=memory, user_id="alice")
    await owner.aadd_messages([HumanMessage("mine")])
    intruder = HybridChatMessageHistory("private", memory=memory, user_id="mallory")
    with pytest.raises(SessionOwnershipError):
        await intruder.aget_messages()
    with pytest.raises(SessionOwnershipError):
        intruder.add_messages([HumanMessage("theirs")])
    assert [m.content for m in await owner.aget_messages()] == ["mine"]


def test_message_to_dict_is_the_stored_shape(memory):
    # The row keeps the LangChain type as role; the other fields, minus empty defaults, under "langchain";
    # the well-known keys other readers use are also at the top level.
    sent = AIMessage("x", id="shape", name="n", response_metadata={"a": 1})
    HybridChatMessageHistory("shape", memory=memory).add_messages([sent])
    (stored,) = memory.get_recent_messages("shape")
    assert (stored.role, stored.content, stored.id) == ("ai", "x", "shape")
    assert stored.metadata == {"langchain": {"name": "n", "response_metadata": {"a": 1}}, "name": "n"}
    assert message_to_dict(HybridChatMessageHistory("shape", memory=memory).messages[0]) == message_to_dict(sent)


def test_the_package_imports_without_langchain_cores_chat_history_base_class():
    """langchain-core deprecates BaseChatMessageHistory (removal planned for 2.0): the engine, the agent
    middleware and the LlamaIndex adapters must keep importing, and the history must say what to do instead."""
    code = (
        "import langchain_core.chat_history as ch; del ch.BaseChatMessageHistory\n"
        "import langchain_hybrid_memory as lhm\n"
        "from langchain_hybrid_memory import HybridMemory, HybridMemoryMiddleware\n"
        "import llamaindex_adapter\n"
        "HybridMemory(database_url='postgresql://u@127.0.0.1/db')\n"
        "try:\n"
        "    lhm.HybridChatMessageHistory\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ImportError: HybridChatMessageHistory needs"), out.stdout
    assert "HybridMemoryMiddleware" in out.stdout and "langchain-core<2" in out.stdout
