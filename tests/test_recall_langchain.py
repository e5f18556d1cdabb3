"""Recall through LangChain: the retriever, the agent tool, and the middleware's recall note."""

from __future__ import annotations

from collections.abc import Callable

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_hybrid_memory import HybridMemory, Message
from langchain_hybrid_memory.middleware import RECALL_SOURCE, HybridMemoryMiddleware
from langchain_hybrid_memory.retriever import HybridRetriever, recall_tool

from hybrid_memory_testing.agents import ScriptedModel
from hybrid_memory_testing.agents import thread_config as _cfg

FACT = "My passport number is X1234567 and it expires in March"


def _history(memory: HybridMemory, sid: str, user: str | None = None, filler: int = 40) -> None:
    turns = [Message("human", FACT, id=f"{sid}-fact"), Message("ai", "Saved.", id=f"{sid}-ack")]
    turns += [Message("human" if i % 2 == 0 else "ai", f"small talk {i} about gardening", id=f"{sid}-{i}")
              for i in range(filler)]
    memory.add_messages(sid, turns, user_id=user)
    assert memory.wait_for_index(30)


async def test_the_retriever_returns_documents_best_first(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    _history(memory, "a", "alice")
    _history(memory, "b", "bob")
    docs = HybridRetriever(memory=memory, session_id="a", k=3).invoke("when does my passport expire?")
    assert [d.id for d in docs] == ["a-fact"]
    meta = docs[0].metadata
    assert docs[0].page_content == FACT
    assert (meta["session_id"], meta["role"], meta["message_id"]) == ("a", "human", "a-fact")
    assert meta["seq"] > 0 and meta["score"] > 0
    mine = await HybridRetriever(memory=memory, user_id="bob").ainvoke("passport")
    assert [d.id for d in mine] == ["b-fact"]  # never Alice's


def test_an_agent_calls_the_recall_tool_on_its_own_thread(make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory()
    _history(memory, "t-1")
    _history(memory, "t-2")
    call = AIMessage("", id="ai-1", tool_calls=[{"name": "recall_conversation", "args": {"query": "passport"},
                                                 "id": "c1"}])
    model = ScriptedModel(replies=[call, AIMessage("It expires in March.", id="ai-2")])
    agent = create_agent(model, tools=[recall_tool(memory)])
    out = agent.invoke({"messages": [HumanMessage("When does my passport expire?")]}, _cfg("t-1"))
    result = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert FACT in result.content
    assert "t-2" not in result.content and result.content.count("passport") == 1  # its own thread only
    empty = recall_tool(memory, session_id="t-1").invoke({"query": "volcano"})
    assert empty == "Nothing in the earlier conversation matches."


async def test_the_middleware_adds_what_the_window_lost_for_the_latest_question(
        make_memory: Callable[..., HybridMemory]) -> None:
    memory = make_memory(max_session_messages=10)
    _history(memory, "t")
    model = ScriptedModel(replies=[AIMessage("In March.", id="ai-r1"), AIMessage("Roses.", id="ai-r2")])
    agent = create_agent(model, tools=[], middleware=[HybridMemoryMiddleware(memory, recall=True)])
    out = await agent.ainvoke({"messages": [HumanMessage("When does my passport expire?", id="q1")]}, _cfg("t"))
    shown = model.seen[0]
    notes = [m for m in shown if isinstance(m, SystemMessage) and m.additional_kwargs.get("lc_source") == RECALL_SOURCE]
    assert len(notes) == 1 and FACT in notes[0].content
    assert shown.index(notes[0]) == 0  # no summary here: the note comes first
    assert not any(m.additional_kwargs.get("lc_source") == RECALL_SOURCE for m in out["messages"])  # not in state
    memory.flush()
    assert all(m.content != notes[0].content for m in memory.get_messages("t"))  # nor in the transcript
    # A question the window answers brings nothing back: no note.
    await agent.ainvoke({"messages": [HumanMessage("And 39?", id="q2")]}, _cfg("t"))
    assert not any(isinstance(m, SystemMessage) for m in model.seen[1])
    # Off by default.
    plain = ScriptedModel(replies=[AIMessage("?", id="ai-p")])
    create_agent(plain, tools=[], middleware=[HybridMemoryMiddleware(memory)]).invoke(
        {"messages": [HumanMessage("When does my passport expire?", id="q3")]}, _cfg("t"))
    assert not any(isinstance(m, SystemMessage) for m in plain.seen[0])
