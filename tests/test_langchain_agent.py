"""HybridMemoryMiddleware with `langchain.agents.create_agent`: memory across runs and processes, tools, summaries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    messages_from_dict,
)
from langgraph.checkpoint.memory import InMemorySaver

from langchain_hybrid_memory import HybridMemory, SessionOwnershipError
from langchain_hybrid_memory.history import HybridChatMessageHistory
from langchain_hybrid_memory.middleware import HybridMemoryMiddleware, HybridSummarizer, SummaryRecord

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.agents import ScriptedModel, get_weather
from hybrid_memory_testing.agents import dicts as _dicts
from hybrid_memory_testing.agents import thread_config as _cfg
from hybrid_memory_testing.agents import weather_call as _call

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _stored(memory: HybridMemory, sid: str) -> list[BaseMessage]:
    memory.flush()
    return list(HybridChatMessageHistory(sid, memory=memory).iter_transcript())




# -- memory across runs, and across processes -------------------------------------------------------------------
def fresh_process_main() -> None:
    """Run in a subprocess: a new engine with an empty Redis view runs a fourth turn and prints what it saw."""
    from langchain_hybrid_memory import HybridConfig

    namespace, thread = sys.argv[1], sys.argv[2]
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace))
    memory.invalidate_session(thread)  # nothing cached: the window comes from PostgreSQL
    model = ScriptedModel(replies=[AIMessage("Paris, then Rome.", id="ai-fresh")])
    agent = create_agent(model, tools=[get_weather], middleware=[HybridMemoryMiddleware(memory)])
    agent.invoke({"messages": [HumanMessage("Which cities did I ask about?", id="h-fresh")]}, _cfg(thread))
    memory.close()  # flushes the write-behind queue
    print(json.dumps(_dicts(model.seen[0])))


async def test_three_runs_remember_earlier_turns_and_a_fresh_process_sees_them(make_memory, namespace):
    memory = make_memory()
    model = ScriptedModel(replies=[
        _call("call-1", "Paris"), AIMessage("It is 18°C and sunny in Paris.", id="ai-1"),
        _call("call-2", "Rome"), AIMessage("Rome is sunny too.", id="ai-2"),
        AIMessage("You asked about Paris and Rome.", id="ai-3"),
    ])
    agent = create_agent(model, tools=[get_weather], middleware=[HybridMemoryMiddleware(memory)])  # no checkpointer
    thread = "thread-1"

    first = await asyncio.to_thread(agent.invoke, {"messages": [HumanMessage("Weather in Paris?", id="h-1")]},
                                    _cfg(thread))
    assert set(first) == {"messages"}  # the middleware's bookkeeping stays private
    run1 = first["messages"]
    assert [type(m) for m in run1] == [HumanMessage, AIMessage, ToolMessage, AIMessage]

    second = await agent.ainvoke({"messages": [HumanMessage("And in Rome?", id="h-2")]}, _cfg(thread))
    run2 = second["messages"][len(run1):]
    # The run started from everything run 1 said, tool call and result included, field for field.
    assert _dicts(model.seen[2]) == _dicts([*run1, HumanMessage("And in Rome?", id="h-2")])

    async for _ in agent.astream({"messages": [HumanMessage("What did I ask about?", id="h-3")]}, _cfg(thread)):
        pass
    assert _dicts(model.seen[4]) == _dicts([*run1, *run2, HumanMessage("What did I ask about?", id="h-3")])

    transcript = _stored(memory, thread)
    assert [m.id for m in transcript][:2] == ["h-1", "ai-call-1"]
    assert _dicts(transcript) == _dicts([*run1, *run2, HumanMessage("What did I ask about?", id="h-3"),
                                         AIMessage("You asked about Paris and Rome.", id="ai-3")])

    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:];"
            " from test_langchain_agent import fresh_process_main; fresh_process_main()")
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, TESTS_DIR, namespace, thread],
                                  capture_output=True, text=True, timeout=90, cwd=TESTS_DIR)
    assert out.returncode == 0, out.stderr[-3000:]
    seen_there = messages_from_dict(json.loads(out.stdout.strip().splitlines()[-1]))
    assert _dicts(seen_there) == _dicts([*transcript, HumanMessage("Which cities did I ask about?", id="h-fresh")])
    rows = pg_fetch(f'SELECT msg_id FROM "{namespace}".messages WHERE session_id = $1 ORDER BY seq', thread)
    assert [r["msg_id"] for r in rows] == [m.id for m in transcript] + ["h-fresh", "ai-fresh"]


async def test_history_written_without_ids_is_loaded_once_and_never_stored_again(memory):
    """A chain's history (no message ids) taken over by an agent: the state carries the engine's ids, so the
    middleware recognises the loaded messages and persists only the run's new ones, on every run."""
    HybridChatMessageHistory("handover", memory=memory).add_messages([HumanMessage("I live in Oslo"),
                                                                       AIMessage("Noted.")])
    model = ScriptedModel(replies=[AIMessage("Oslo.", id="ai-a"), AIMessage("Still Oslo.", id="ai-b")])
    agent = create_agent(model, tools=[], middleware=[HybridMemoryMiddleware(memory)])
    await agent.ainvoke({"messages": [HumanMessage("Where do I live?", id="h-a")]}, _cfg("handover"))
    await agent.ainvoke({"messages": [HumanMessage("And now?", id="h-b")]}, _cfg("handover"))
    assert [m.content for m in model.seen[0]] == ["I live in Oslo", "Noted.", "Where do I live?"]
    assert all(m.id for m in model.seen[0])
    contents = [m.content for m in _stored(memory, "handover")]
    assert contents == ["I live in Oslo", "Noted.", "Where do I live?", "Oslo.", "And now?", "Still Oslo."]


async def test_with_a_checkpointer_nothing_is_loaded_or_stored_twice(make_memory):
    memory = make_memory()
    replies: list[AIMessage | Exception] = [_call("c1", "Oslo"), AIMessage("Cold.", id="a1"),
                                            AIMessage("Oslo.", id="a2"), AIMessage("Bye.", id="a3")]
    model = ScriptedModel(replies=replies)
    agent = create_agent(model, tools=[get_weather], middleware=[HybridMemoryMiddleware(memory)],
                         checkpointer=InMemorySaver())
    await agent.ainvoke({"messages": [HumanMessage("Weather in Oslo?", id="q1")]}, _cfg("t"))
    await asyncio.to_thread(agent.invoke, {"messages": [HumanMessage("Where?", id="q2")]}, _cfg("t"))
    final = await agent.ainvoke({"messages": [HumanMessage("Bye", id="q3")]}, _cfg("t"))
    ids = [m.id for m in final["messages"]]
    assert len(ids) == len(set(ids)) == 8
    assert [m.id for m in model.seen[-1]] == ids[:-1]
    assert [m.id for m in _stored(memory, "t")] == ids

    # The checkpoint is lost (a new process, a new saver): the thread starts again from the engine's view.
    model2 = ScriptedModel(replies=[AIMessage("Welcome back.", id="a4")])
    agent2 = create_agent(model2, tools=[get_weather], middleware=[HybridMemoryMiddleware(memory)],
                          checkpointer=InMemorySaver())
    again = await agent2.ainvoke({"messages": [HumanMessage("Hi again", id="q4")]}, _cfg("t"))
    assert [m.id for m in model2.seen[0]] == [*ids, "q4"]
    assert [m.id for m in again["messages"]] == [*ids, "q4", "a4"]
    assert [m.id for m in _stored(memory, "t")] == [*ids, "q4", "a4"]


@dataclass
class Ctx:
    session_id: str
    user_id: str | None = None


async def test_an_explicit_session_and_user_in_the_runtime_context(make_memory):
    memory = make_memory()
    model = ScriptedModel(replies=[AIMessage("noted", id="r1"), AIMessage("again", id="r2"),
                                   AIMessage("never", id="r3")])
    agent = create_agent(model, tools=[], middleware=[HybridMemoryMiddleware(memory)], context_schema=Ctx)
    await agent.ainvoke({"messages": [HumanMessage("remember me", id="m1")]}, _cfg("ignored-thread"),
                        context=Ctx("sess-a", "alice"))
    await agent.ainvoke({"messages": [HumanMessage("still me", id="m2")]}, _cfg("another-thread"),
                        context=Ctx("sess-a", "alice"))
    assert [m.id for m in model.seen[1]] == ["m1", "r1", "m2"]  # one session across two threads
    assert [m.id for m in _stored(memory, "sess-a")] == ["m1", "r1", "m2", "r2"]
    assert _stored(memory, "ignored-thread") == []
    with pytest.raises(SessionOwnershipError):
        await agent.ainvoke({"messages": [HumanMessage("let me in")]}, _cfg("x"), context=Ctx("sess-a", "mallory"))


def test_without_a_conversation_id_the_run_fails_clearly(memory):
    agent = create_agent(ScriptedModel(replies=[AIMessage("x")]), tools=[],
                         middleware=[HybridMemoryMiddleware(memory)])
    with pytest.raises(ValueError, match="thread_id"):
        agent.invoke({"messages": [HumanMessage("hi")]})


@pytest.mark.parametrize("use_async", [False, True])
async def test_messages_are_persisted_before_each_model_call(memory, use_async):
    # The second model call fails: what the run produced until then is already in the engine.
    model = ScriptedModel(replies=[_call("k1", "Lima"), RuntimeError("model outage")])
    agent = create_agent(model, tools=[get_weather], middleware=[HybridMemoryMiddleware(memory)])
    with pytest.raises(RuntimeError, match="model outage"):
        if use_async:
            await agent.ainvoke({"messages": [HumanMessage("Lima?", id="l1")]}, _cfg("crash"))
        else:
            await asyncio.to_thread(agent.invoke, {"messages": [HumanMessage("Lima?", id="l1")]}, _cfg("crash"))
    stored = _stored(memory, "crash")
    assert [type(m) for m in stored] == [HumanMessage, AIMessage, ToolMessage]
    assert stored[1].tool_calls[0]["id"] == "k1" and stored[2].tool_call_id == "k1"  # type: ignore[attr-defined]


# -- summaries ----------------------------------------------------------------------------------------------------
class RecordingSummaryEngine(HybridMemory):
    """A HybridMemory that also records the summaries HybridSummarizer hands it (and stores them for real)."""

    saved: list[tuple[str, str, str | None, str | None, bool]]

    def save_summary(self, session_id: str, summary: str, *, upto_message_id: str, user_id: str | None = None,
                     model: str = "external") -> bool:
        self.saved.append((session_id, summary, upto_message_id, user_id, False))
        return super().save_summary(session_id, summary, upto_message_id=upto_message_id, user_id=user_id,
                                    model=model)

    async def asave_summary(self, session_id: str, summary: str, *, upto_message_id: str,
                            user_id: str | None = None, model: str = "external") -> bool:
        self.saved.append((session_id, summary, upto_message_id, user_id, True))
        return await super().asave_summary(session_id, summary, upto_message_id=upto_message_id, user_id=user_id,
                                           model=model)


@pytest.mark.parametrize("use_async", [False, True])
async def test_summarization_middleware_compacts_the_state_never_the_engine(namespace, use_async):
    from langchain_hybrid_memory import HybridConfig

    memory = RecordingSummaryEngine(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=namespace))
    memory.saved = []
    try:
        summarized: list[list[BaseMessage]] = []

        def summarize(messages: list[BaseMessage]) -> str:
            summarized.append(messages)
            return f"  {len(messages)} earlier messages about the weather  "

        model = ScriptedModel(replies=[AIMessage(f"answer {i}", id=f"a{i}") for i in range(5)])
        agent = create_agent(model, tools=[], checkpointer=InMemorySaver(), middleware=[
            HybridMemoryMiddleware(memory),
            SummarizationMiddleware(model, trigger=("messages", 6), keep=("messages", 2),
                                    summarizer=HybridSummarizer(memory, summarize)),
        ])
        final: dict[str, Any] = {}
        for i in range(5):
            run = {"messages": [HumanMessage(f"question {i}", id=f"q{i}")]}
            final = await agent.ainvoke(run, _cfg("long")) if use_async else \
                await asyncio.to_thread(agent.invoke, run, _cfg("long"))

        # SummarizationMiddleware replaced the old turns in the agent state by its summary message...
        state = final["messages"]
        assert state[0].additional_kwargs.get("lc_source") == "summarization"
        assert [m.id for m in state[1:]] == ["a2", "q3", "a3", "q4", "a4"]  # summarized at run 4 (7 messages)
        # ...while the engine kept every turn, and did not store the summary message as one.
        assert [m.id for m in _stored(memory, "long")] == [x for i in range(5) for x in (f"q{i}", f"a{i}")]
        # The summary went to the engine for this thread, bounded by the last message it covers.
        assert len(summarized) == 1 and [m.id for m in summarized[0]] == ["q0", "a0", "q1", "a1", "q2"]
        assert memory.saved == [("long", "5 earlier messages about the weather", "q2", None, use_async)]
        # ...and the engine really stored it: every later view of the session starts with it.
        ctx = memory.get_context("long")
        assert ctx.summary == "5 earlier messages about the weather"
        rows = memory.get_summaries("long")
        assert len(rows) == 1 and rows[0]["message_count"] == 5
    finally:
        memory.close()


def test_listed_after_summarization_the_summary_message_is_still_never_stored(memory):
    # SummarizationMiddleware runs first and also removes the last message the middleware had persisted.
    model = ScriptedModel(replies=[AIMessage(f"answer {i}", id=f"a{i}") for i in range(3)])
    agent = create_agent(model, tools=[], checkpointer=InMemorySaver(), middleware=[
        SummarizationMiddleware(model, trigger=("messages", 4), keep=("messages", 1), summarizer=lambda m: "sum"),
        HybridMemoryMiddleware(memory),
    ])
    for i in range(3):
        final = agent.invoke({"messages": [HumanMessage(f"question {i}", id=f"q{i}")]}, _cfg("after"))
    assert [m.id for m in final["messages"][1:]] == ["q2", "a2"]
    stored = _stored(memory, "after")
    assert [m.id for m in stored] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert not any(m.additional_kwargs.get("lc_source") for m in stored)


async def test_a_summary_of_messages_the_engine_never_saw_is_returned_not_stored(memory):
    summarizer = HybridSummarizer(memory, lambda messages: "short", session_id="s")
    assert summarizer.invoke([HumanMessage("hi", id="x")]) == "short"
    assert await summarizer.ainvoke([HumanMessage("hi", id="x")]) == "short"
    # The summary still reaches SummarizationMiddleware; the engine has no message "x" to place it after.
    assert memory.get_summaries("s") == []


async def test_the_summarizer_accepts_a_chat_model_and_async_functions(make_memory):
    memory = make_memory()
    seen: list[SummaryRecord] = []

    class Capture(HybridSummarizer):
        def save(self, record: SummaryRecord) -> None:
            seen.append(record)

        async def asave(self, record: SummaryRecord) -> None:
            seen.append(record)

    model = ScriptedModel(replies=[AIMessage("model summary")])
    assert Capture(memory, model, session_id="m").invoke([HumanMessage("a", id="1")]) == "model summary"
    assert "Messages to summarize" in model.seen[0][0].content  # prompted with the summary prompt

    async def afn(messages: list[BaseMessage]) -> str:
        return "async summary"

    capture: Callable[..., Any] = Capture(memory, afn, session_id="m", user_id="u").ainvoke
    assert await capture([HumanMessage("b", id="2")]) == "async summary"
    with pytest.raises(TypeError, match="async"):
        Capture(memory, afn, session_id="m").invoke([HumanMessage("c", id="3")])
    assert [(r.session_id, r.user_id, r.summary, r.upto_message_id) for r in seen] == [
        ("m", None, "model summary", "1"), ("m", "u", "async summary", "2")]
