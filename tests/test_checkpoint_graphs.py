"""HybridSaver under real LangGraph graphs: an agent across turns and processes, interrupts, history and forks,
subgraphs, the three durability modes, and message lists rewritten (RemoveMessage) or edited in place.

Where LangGraph's behaviour is what is tested (histories, snapshots), the same graph runs on `InMemorySaver`
too and the two must agree; the expected messages are also written out, field for field.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    RemoveMessage,
    ToolMessage,
    messages_from_dict,
)
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import REMOVE_ALL_MESSAGES, add_messages
from langgraph.types import Command, StateSnapshot, interrupt

from langchain_hybrid_memory import HybridMemory
from langchain_hybrid_memory.checkpoint import HybridSaver

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.agents import ScriptedModel, get_weather
from hybrid_memory_testing.agents import dicts as _dicts
from hybrid_memory_testing.agents import thread_config as _cfg
from hybrid_memory_testing.agents import weather_call as _call

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))




# -- small graphs ---------------------------------------------------------------------------------------------
class State(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    answer: str


def respond(state: State) -> dict[str, Any]:
    last = state["messages"][-1]
    return {"messages": [AIMessage(f"echo: {last.content}", id=f"ai-{last.id}")]}


def chain(*nodes: tuple[str, Any]) -> StateGraph[Any]:
    """A graph running `nodes` (name, node) one after the other, from START to END."""
    builder = StateGraph(State)
    builder.add_sequence(list(nodes))
    builder.add_edge(START, nodes[0][0])
    builder.add_edge(nodes[-1][0], END)
    return builder


def echo_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    return chain(("respond", respond)).compile(checkpointer=saver)


def three_step_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def step(name: str) -> Any:
        return lambda state: {
            "messages": [AIMessage(f"{name} after {len(state['messages'])}", id=f"{name}-{len(state['messages'])}")]}

    return chain(*((name, step(name)) for name in ("a", "b", "c"))).compile(checkpointer=saver)


def _snapshot(s: StateSnapshot) -> tuple[Any, ...]:
    """What two savers must agree on for one snapshot (ids and times differ by nature)."""
    values = {k: (_dicts(v) if k == "messages" else v) for k, v in s.values.items()}
    return (values, s.next, s.metadata.get("step"), s.metadata.get("source"),
            [(t.name, [i.value for i in t.interrupts]) for t in s.tasks])


def _blob_types(memory: HybridMemory, thread: str, checkpoint_ns: str = "") -> dict[str, str]:
    """messages-channel version -> stored type, for the latest checkpoint of a thread (once committed)."""
    memory.flush()
    namespace = memory.config.namespace
    row = pg_fetch(f'SELECT channel_versions FROM "{namespace}".checkpoints WHERE thread_id = $1'
                   " AND checkpoint_ns = $2 ORDER BY checkpoint_id DESC LIMIT 1", thread, checkpoint_ns)[0]
    version = json.loads(row["channel_versions"])["messages"]
    types = pg_fetch(f'SELECT type FROM "{namespace}".checkpoint_blobs WHERE thread_id = $1 AND checkpoint_ns = $2'
                     " AND channel = 'messages' AND version = $3", thread, checkpoint_ns, version)
    return {version: types[0]["type"]}


# -- an agent over several turns, then another process ----------------------------------------------------------
def fresh_process_main() -> None:
    """Run in a subprocess: a new engine and saver continue the thread and print what the model saw."""
    from langchain_hybrid_memory import HybridConfig

    pg_url, redis_url, namespace, thread = sys.argv[1:5]
    memory = HybridMemory(HybridConfig(database_url=pg_url, redis_url=redis_url, namespace=namespace))
    try:
        model = ScriptedModel(replies=[AIMessage("Paris and Rome, both sunny.", id="ai-fresh")])
        agent = create_agent(model, tools=[get_weather], checkpointer=HybridSaver(memory))
        final = agent.invoke({"messages": [HumanMessage("Summarize my trip.", id="h-fresh")]}, _cfg(thread))
    finally:
        memory.close()
    print(json.dumps({"seen": _dicts(model.seen[0]), "final": _dicts(final["messages"])}))


async def test_agent_turns_see_all_earlier_messages_and_a_fresh_process_continues(make_memory, namespace):
    memory = make_memory()
    model = ScriptedModel(replies=[
        _call("call-1", "Paris"), AIMessage("It is 18°C and sunny in Paris.", id="ai-1"),
        AIMessage("Pack light.", id="ai-2"),
        _call("call-2", "Rome"), AIMessage("Rome is sunny too.", id="ai-3"),
        AIMessage("You asked about Paris and Rome, then I summarized.", id="ai-4"),
    ])
    agent = create_agent(model, tools=[get_weather], checkpointer=HybridSaver(memory))
    thread = "agent-thread"

    h1 = HumanMessage("Weather in Paris?", id="h-1")
    run1 = (await agent.ainvoke({"messages": [h1]}, _cfg(thread)))["messages"]
    assert [type(m) for m in run1] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert _dicts(model.seen[0]) == _dicts([h1])
    assert _dicts(model.seen[1]) == _dicts(run1[:3])  # the tool call and its result, from the checkpoint

    h2 = HumanMessage("What should I pack?", id="h-2")
    run2 = (await asyncio.to_thread(agent.invoke, {"messages": [h2]}, _cfg(thread)))["messages"]  # sync API
    assert _dicts(model.seen[2]) == _dicts([*run1, h2])
    assert _dicts(run2) == _dicts([*run1, h2, AIMessage("Pack light.", id="ai-2")])

    h3 = HumanMessage("And Rome?", id="h-3")
    async for _ in agent.astream({"messages": [h3]}, _cfg(thread)):
        pass
    assert _dicts(model.seen[3]) == _dicts([*run2, h3])
    state = await agent.aget_state(_cfg(thread))
    history = state.values["messages"]
    assert _dicts(model.seen[4]) == _dicts(history[:-1])
    assert [m.id for m in history] == ["h-1", "ai-call-1", history[2].id, "ai-1", "h-2", "ai-2", "h-3",
                                       "ai-call-2", history[8].id, "ai-3"]
    assert isinstance(history[8], ToolMessage) and history[8].tool_call_id == "call-2"
    assert history[8].content == "18°C and sunny in Rome"

    # Another process: its own engine, no cache of ours; it sees the whole thread, field for field.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:];"
            " from test_checkpoint_graphs import fresh_process_main; fresh_process_main()")
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, TESTS_DIR, PG_URL, REDIS_URL,
                                                   namespace, thread],
                                  capture_output=True, text=True, timeout=90, cwd=TESTS_DIR)
    assert out.returncode == 0, out.stderr[-3000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    h_fresh = HumanMessage("Summarize my trip.", id="h-fresh")
    assert there["seen"] == _dicts([*history, h_fresh])
    assert there["final"] == _dicts([*history, h_fresh, AIMessage("Paris and Rome, both sunny.", id="ai-fresh")])

    # And this process picks up what the other one wrote (its own caches are stale now).
    h4 = HumanMessage("Thanks!", id="h-4")
    final = (await agent.ainvoke({"messages": [h4]}, _cfg(thread)))["messages"]
    assert _dicts(model.seen[5]) == _dicts([*messages_from_dict(there["final"]), h4])
    assert [m.id for m in final][-3:] == ["ai-fresh", "h-4", "ai-4"]
    again = await create_agent(model, tools=[get_weather], checkpointer=HybridSaver(make_memory())).aget_state(
        _cfg(thread))
    assert _dicts(again.values["messages"]) == _dicts(final)


# -- interrupt and resume ---------------------------------------------------------------------------------------
def booking_graph(saver: BaseCheckpointSaver[Any], calls: list[str]) -> Any:
    def prepare(state: State) -> dict[str, Any]:
        calls.append("prepare")
        return {"messages": [AIMessage("Shall I book the 9:40 flight?", id="ai-ask")]}

    def ask(state: State) -> dict[str, Any]:
        calls.append("ask")
        answer = interrupt({"question": "book it?", "seen": len(state["messages"])})
        return {"answer": answer, "messages": [HumanMessage(answer, id="h-answer")]}

    def finish(state: State) -> dict[str, Any]:
        calls.append("finish")
        return {"messages": [AIMessage(f"Booked ({state['answer']}).", id="ai-done")]}

    return chain(("prepare", prepare), ("ask", ask), ("finish", finish)).compile(checkpointer=saver)


@pytest.mark.parametrize("use_async", [False, True])
async def test_interrupt_then_resume_from_another_saver(make_memory, use_async):
    import redis

    calls: list[str] = []
    memory = make_memory()
    graph = booking_graph(HybridSaver(memory), calls)
    h1 = HumanMessage("Book me a flight to Oslo", id="h-1")
    if use_async:
        first = await graph.ainvoke({"messages": [h1]}, _cfg("book"))
    else:
        first = await asyncio.to_thread(graph.invoke, {"messages": [h1]}, _cfg("book"))
    assert [i.value for i in first["__interrupt__"]] == [{"question": "book it?", "seen": 2}]
    assert calls == ["prepare", "ask"]

    # A restart of the app and of Redis: a new engine and saver, and the thread's Redis keys gone; the pending
    # interrupt and the state come from PostgreSQL.
    memory.flush()
    with redis.Redis.from_url(REDIS_URL) as r:
        assert r.delete(*r.keys(memory._core.keys.thread("book").checkpoints[:-1] + "*")) >= 2
    resumed_graph = booking_graph(HybridSaver(make_memory()), calls)
    paused = await resumed_graph.aget_state(_cfg("book"))
    assert paused.next == ("ask",)
    assert [i.value for t in paused.tasks for i in t.interrupts] == [{"question": "book it?", "seen": 2}]
    assert _dicts(paused.values["messages"]) == _dicts([h1, AIMessage("Shall I book the 9:40 flight?", id="ai-ask")])

    if use_async:
        final = await resumed_graph.ainvoke(Command(resume="yes, window seat"), _cfg("book"))
    else:
        final = await asyncio.to_thread(resumed_graph.invoke, Command(resume="yes, window seat"), _cfg("book"))
    expected = [h1, AIMessage("Shall I book the 9:40 flight?", id="ai-ask"),
                HumanMessage("yes, window seat", id="h-answer"), AIMessage("Booked (yes, window seat).", id="ai-done")]
    assert "__interrupt__" not in final
    assert final["answer"] == "yes, window seat"
    assert _dicts(final["messages"]) == _dicts(expected)
    assert calls == ["prepare", "ask", "ask", "finish"]  # `prepare` is not run again; `ask` is, as LangGraph does
    done = await graph.aget_state(_cfg("book"))  # the first saver reads what the second wrote
    assert done.next == () and done.tasks == ()
    assert done.values["answer"] == "yes, window seat"
    assert _dicts(done.values["messages"]) == _dicts(expected)


# -- history and forks ------------------------------------------------------------------------------------------
async def test_history_lists_every_checkpoint_and_a_fork_leaves_the_original_branch(make_memory):
    ours, ref = echo_graph(HybridSaver(make_memory())), echo_graph(InMemorySaver())
    for graph in (ours, ref):
        for i in (1, 2, 3):
            await graph.ainvoke({"messages": [HumanMessage(f"question {i}", id=f"h-{i}")]}, _cfg("hist"))

    history = [s async for s in ours.aget_state_history(_cfg("hist"))]
    reference = [s async for s in ref.aget_state_history(_cfg("hist"))]
    assert len(history) == 9  # per turn: input, before `respond`, after it
    assert [_snapshot(s) for s in history] == [_snapshot(s) for s in reference]
    assert [s.metadata["step"] for s in history] == list(range(7, -2, -1))  # newest first
    ids = [s.config["configurable"]["checkpoint_id"] for s in history]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 9
    for newer, older in itertools.pairwise(history):
        assert newer.parent_config["configurable"]["checkpoint_id"] == older.config["configurable"]["checkpoint_id"]
    assert history[-1].parent_config is None
    assert [m.id for m in history[0].values["messages"]] == ["h-1", "ai-h-1", "h-2", "ai-h-2", "h-3", "ai-h-3"]
    # `limit` and `before` page through the same list.
    page = [s async for s in ours.aget_state_history(_cfg("hist"), limit=3, before=history[2].config)]
    assert [s.config for s in page] == [s.config for s in history[3:6]]

    # Fork at turn 2, after its question came in and before `respond` ran.
    earlier = next(s for s in history if s.next == ("respond",) and len(s.values["messages"]) == 3)
    fork_config = await ours.aupdate_state(earlier.config, {"messages": [HumanMessage("fork", id="h-fork")]})
    assert (await ours.aget_state(fork_config)).next == ("respond",)
    fork = await ours.ainvoke(None, fork_config)
    branch = [*earlier.values["messages"], HumanMessage("fork", id="h-fork"), AIMessage("echo: fork", id="ai-h-fork")]
    assert _dicts(fork["messages"]) == _dicts(branch)
    assert _dicts((await ours.aget_state(_cfg("hist"))).values["messages"]) == _dicts(branch)  # the newest branch

    # The original branch is untouched, read by this saver and by one without any cache.
    original = await ours.aget_state(history[0].config)
    assert _dicts(original.values["messages"]) == _dicts(history[0].values["messages"])
    cold = echo_graph(HybridSaver(make_memory()))
    assert _dicts((await cold.aget_state(history[0].config)).values["messages"]) == \
        _dicts(history[0].values["messages"])
    assert _dicts((await cold.aget_state(_cfg("hist"))).values["messages"]) == _dicts(branch)
    after = [s async for s in cold.aget_state_history(_cfg("hist"))]
    assert len(after) == 9 + 2  # the update and the step after it
    assert {s.config["configurable"]["checkpoint_id"] for s in history} <= \
        {s.config["configurable"]["checkpoint_id"] for s in after}
    # ... and it continues on its own: a turn from the original tip extends that branch, not the fork.
    cont = await ours.ainvoke({"messages": [HumanMessage("question 4", id="h-4")]}, history[0].config)
    assert [m.id for m in cont["messages"]] == [*[m.id for m in history[0].values["messages"]], "h-4", "ai-h-4"]


# -- a subgraph with an interrupt -------------------------------------------------------------------------------
def nested_graph(saver: BaseCheckpointSaver[Any]) -> Any:
    def child_work(state: State) -> dict[str, Any]:
        return {"messages": [AIMessage("child working", id="ai-child-1")]}

    def child_ask(state: State) -> dict[str, Any]:
        answer = interrupt("child needs input")
        return {"messages": [HumanMessage(answer, id="h-child-answer")]}

    def child_done(state: State) -> dict[str, Any]:
        return {"messages": [AIMessage("child done", id="ai-child-2")]}

    child = chain(("child_work", child_work), ("child_ask", child_ask), ("child_done", child_done))
    parent = chain(
        ("parent_start", lambda state: {"messages": [AIMessage("parent start", id="ai-parent-1")]}),
        ("child", child.compile()),
        ("parent_end", lambda state: {"messages": [AIMessage("parent end", id="ai-parent-2")]}))
    return parent.compile(checkpointer=saver)


async def test_subgraph_interrupt_resume_and_its_state(make_memory, namespace):
    memory = make_memory()
    ours, ref = nested_graph(HybridSaver(memory)), nested_graph(InMemorySaver())
    h1 = HumanMessage("start", id="h-1")
    for graph in (ours, ref):
        out = await graph.ainvoke({"messages": [h1]}, _cfg("nested"))
        assert [i.value for i in out["__interrupt__"]] == ["child needs input"]

    state = await ours.aget_state(_cfg("nested"), subgraphs=True)
    assert state.next == ("child",)
    assert _snapshot(state) == _snapshot(await ref.aget_state(_cfg("nested"), subgraphs=True))
    (task,) = state.tasks
    sub = task.state
    assert isinstance(sub, StateSnapshot)
    assert sub.config["configurable"]["checkpoint_ns"].startswith("child:")
    assert sub.next == ("child_ask",)
    assert [i.value for t in sub.tasks for i in t.interrupts] == ["child needs input"]
    assert _dicts(sub.values["messages"]) == _dicts([h1, AIMessage("parent start", id="ai-parent-1"),
                                                     AIMessage("child working", id="ai-child-1")])
    ref_sub = (await ref.aget_state(_cfg("nested"), subgraphs=True)).tasks[0].state
    assert _snapshot(sub) == _snapshot(ref_sub)
    await memory.aflush()  # written behind: PostgreSQL has every namespace once the queue is committed
    rows = pg_fetch(f'SELECT DISTINCT checkpoint_ns FROM "{namespace}".checkpoints WHERE thread_id = $1', "nested")
    assert {r["checkpoint_ns"] for r in rows} == {"", sub.config["configurable"]["checkpoint_ns"]}
    # The subgraph's own history, through its config.
    sub_history = [s async for s in ours.aget_state_history(sub.config)]
    assert sub_history and all(s.config["configurable"]["checkpoint_ns"] == sub.config["configurable"]["checkpoint_ns"]
                               for s in sub_history)

    # Resume from a new engine and saver.
    resumed = nested_graph(HybridSaver(make_memory()))
    final = await resumed.ainvoke(Command(resume="go on"), _cfg("nested"))
    expected = [h1, AIMessage("parent start", id="ai-parent-1"), AIMessage("child working", id="ai-child-1"),
                HumanMessage("go on", id="h-child-answer"), AIMessage("child done", id="ai-child-2"),
                AIMessage("parent end", id="ai-parent-2")]
    assert _dicts(final["messages"]) == _dicts(expected)
    await ref.ainvoke(Command(resume="go on"), _cfg("nested"))
    done = await ours.aget_state(_cfg("nested"), subgraphs=True)
    assert done.next == () and done.tasks == ()
    assert _snapshot(done) == _snapshot(await ref.aget_state(_cfg("nested"), subgraphs=True))


# -- durability modes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
@pytest.mark.parametrize("use_async", [False, True])
async def test_each_durability_mode_stores_the_final_state(make_memory, durability, use_async):
    memory = make_memory()
    ours, ref = three_step_graph(HybridSaver(memory)), three_step_graph(InMemorySaver())
    results = []
    for graph in (ours, ref):
        for turn in (1, 2):  # a second run starts from the first one's stored state
            payload = {"messages": [HumanMessage(f"go {turn}", id=f"h-{turn}")]}
            if use_async:
                result = await graph.ainvoke(payload, _cfg("dur"), durability=durability)
            else:
                result = await asyncio.to_thread(graph.invoke, payload, _cfg("dur"), durability=durability)
        results.append(result)
    assert _dicts(results[0]["messages"]) == _dicts(results[1]["messages"])
    assert [m.id for m in results[0]["messages"]] == ["h-1", "a-1", "b-2", "c-3", "h-2", "a-5", "b-6", "c-7"]

    memory.close()  # whatever was in flight is done; a new engine and saver read it back
    fresh = three_step_graph(HybridSaver(make_memory()))
    stored = await fresh.aget_state(_cfg("dur"))
    assert _dicts(stored.values["messages"]) == _dicts(results[0]["messages"])
    assert stored.next == ()
    ours_history = [_snapshot(s) async for s in fresh.aget_state_history(_cfg("dur"))]
    ref_history = [_snapshot(s) async for s in ref.aget_state_history(_cfg("dur"))]
    assert ours_history == ref_history
    assert len(ours_history) == (2 if durability == "exit" else 10)


# -- lists rewritten: RemoveMessage, and a message edited in place ----------------------------------------------
async def test_removed_messages_leave_exactly_the_shorter_list_and_later_turns_append(make_memory, namespace):
    memory = make_memory()
    ours, ref = echo_graph(HybridSaver(memory)), echo_graph(InMemorySaver())
    thread = "removal"

    async def turn(i: int) -> None:
        for graph in (ours, ref):
            await graph.ainvoke({"messages": [HumanMessage(f"q{i}", id=f"h-{i}")]}, _cfg(thread))

    async def update(messages: list[AnyMessage]) -> None:
        for graph in (ours, ref):
            await graph.aupdate_state(_cfg(thread), {"messages": messages})

    async def check(expected_ids: list[str]) -> None:
        state = await ours.aget_state(_cfg(thread))
        assert [m.id for m in state.values["messages"]] == expected_ids
        assert _snapshot(state) == _snapshot(await ref.aget_state(_cfg(thread)))
        cold = await echo_graph(HybridSaver(make_memory())).aget_state(_cfg(thread))  # no cache of ours
        assert _dicts(cold.values["messages"]) == _dicts(state.values["messages"])

    for i in (1, 2, 3):
        await turn(i)
    assert next(iter(_blob_types(memory, thread).values())).startswith("hm-delta/")  # appends: deltas
    await check(["h-1", "ai-h-1", "h-2", "ai-h-2", "h-3", "ai-h-3"])

    await update([RemoveMessage(id="ai-h-2")])  # from the middle
    assert not next(iter(_blob_types(memory, thread).values())).startswith("hm-delta/")  # stored whole
    await check(["h-1", "ai-h-1", "h-2", "h-3", "ai-h-3"])
    await turn(4)
    assert next(iter(_blob_types(memory, thread).values())).startswith("hm-delta/")  # a delta on the whole one
    await check(["h-1", "ai-h-1", "h-2", "h-3", "ai-h-3", "h-4", "ai-h-4"])

    await update([RemoveMessage(id="ai-h-4")])  # the last one: the new list is a prefix of the old
    await check(["h-1", "ai-h-1", "h-2", "h-3", "ai-h-3", "h-4"])
    await turn(5)
    await check(["h-1", "ai-h-1", "h-2", "h-3", "ai-h-3", "h-4", "h-5", "ai-h-5"])

    # Everything replaced (as a summarization does), then appended to.
    await update([RemoveMessage(id=REMOVE_ALL_MESSAGES), AIMessage("summary of five turns", id="summary")])
    await check(["summary"])
    await turn(6)
    await turn(7)
    await check(["summary", "h-6", "ai-h-6", "h-7", "ai-h-7"])

    # Every checkpoint on the way still reads as it was written.
    ours_history = [_snapshot(s) async for s in ours.aget_state_history(_cfg(thread))]
    assert ours_history == [_snapshot(s) async for s in ref.aget_state_history(_cfg(thread))]


async def test_a_message_replaced_by_id_is_stored_with_its_new_content(make_memory):
    """LangGraph's "edit the tool call before it runs" pattern: update_state with a message of an existing id
    replaces that message (add_messages); the ids of the list do not change, its content does."""
    ours, ref = echo_graph(HybridSaver(make_memory())), echo_graph(InMemorySaver())
    for graph in (ours, ref):
        for i in (1, 2):
            await graph.ainvoke({"messages": [HumanMessage(f"q{i}", id=f"h-{i}")]}, _cfg("edit"))
        await graph.aupdate_state(_cfg("edit"), {"messages": [AIMessage("edited answer", id="ai-h-1")]})

    expected = [HumanMessage("q1", id="h-1"), AIMessage("edited answer", id="ai-h-1"),
                HumanMessage("q2", id="h-2"), AIMessage("echo: q2", id="ai-h-2")]
    assert _dicts((await ref.aget_state(_cfg("edit"))).values["messages"]) == _dicts(expected)
    assert _dicts((await ours.aget_state(_cfg("edit"))).values["messages"]) == _dicts(expected)
    cold = echo_graph(HybridSaver(make_memory()))
    assert _dicts((await cold.aget_state(_cfg("edit"))).values["messages"]) == _dicts(expected)


# -- DeltaChannel (beta): state rebuilt from ancestors' writes -------------------------------------------------
def _extend(state: list[str] | None, writes: Any) -> list[str]:
    out = list(state or [])
    for w in writes:
        out.extend(w)
    return out


class D(TypedDict):
    items: Annotated[list[str], DeltaChannel(_extend, snapshot_frequency=3)]
    log: Annotated[list[str], DeltaChannel(_extend, snapshot_frequency=5)]
    n: int


@pytest.mark.parametrize("use_async", [False, True])
async def test_delta_channels_rebuild_across_forks_and_processes_in_one_query(make_memory, use_async):
    """A graph with two DeltaChannels (snapshots every 3 and 5 updates), two parallel tasks per step: the state
    equals InMemorySaver's at every checkpoint, before and after a fork, from a fresh process too; and the
    saver's one-query `get_delta_channel_history` answers as the base class's walk over `get_tuple` does."""
    def left(s: D) -> dict[str, Any]:
        return {"items": [f"l{s['n']}"], "log": [f"L{s['n']}"]}

    def right(s: D) -> dict[str, Any]:
        return {"items": [f"r{s['n']}"]}

    builder: StateGraph[Any] = StateGraph(D)
    builder.add_node("left", left)
    builder.add_node("right", right)
    builder.add_edge(START, "left")
    builder.add_edge(START, "right")
    builder.add_edge("left", END)
    builder.add_edge("right", END)

    async def drive(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        app = builder.compile(checkpointer=saver)
        cfg = _cfg("d")
        for i in range(8):
            inp = {"items": [f"in{i}"], "n": i}
            await app.ainvoke(inp, cfg) if use_async else app.invoke(inp, cfg)
        history = list(app.get_state_history(cfg))
        fork = app.update_state(history[6].config, {"items": ["forked"]}, as_node="left")
        for i in range(8, 10):
            inp = {"items": [f"in{i}"], "n": i}
            await app.ainvoke(inp, fork) if use_async else app.invoke(inp, fork)
        return [(s.values, s.next) for s in app.get_state_history(cfg)]

    memory = make_memory()
    ours = HybridSaver(memory)
    assert await drive(ours) == await drive(InMemorySaver())
    memory.flush()
    fresh = HybridSaver(make_memory())  # another process: nothing remembered
    configs = [t.config for t in fresh.list(_cfg("d"))]
    assert len(configs) > 20
    for config in configs:
        for channels in (["items"], ["items", "log"], ["log", "n"], []):
            want = BaseCheckpointSaver.get_delta_channel_history(fresh, config=config, channels=channels)
            if use_async:
                got = await fresh.aget_delta_channel_history(config=config, channels=channels)
            else:
                got = fresh.get_delta_channel_history(config=config, channels=channels)
            assert got == want, (config, channels)
    assert builder.compile(checkpointer=fresh).get_state(_cfg("d")).values == \
        builder.compile(checkpointer=ours).get_state(_cfg("d")).values


def test_prune_keep_latest_keeps_what_delta_channels_are_rebuilt_from(make_memory):
    """keep_latest drops the history, except the ancestors a DeltaChannel's value is rebuilt from (down to its
    last snapshot): the state is the same after the prune, in this process and a fresh one, and later turns
    go on as on a saver never pruned."""
    builder: StateGraph[Any] = StateGraph(D)
    builder.add_node("left", lambda s: {"items": [f"l{s['n']}"], "log": [f"L{s['n']}"]})
    builder.add_edge(START, "left")
    builder.add_edge("left", END)
    memory = make_memory()
    saver = HybridSaver(memory)
    app, twin = builder.compile(checkpointer=saver), builder.compile(checkpointer=InMemorySaver())
    for i in range(7):  # "items" snapshots every 3 updates, "log" every 5: neither at the latest checkpoint
        for a in (app, twin):
            a.invoke({"items": [f"in{i}"], "n": i}, _cfg("p"))
    before = app.get_state(_cfg("p")).values
    count = len(list(saver.list(_cfg("p"))))
    saver.prune(["p"], strategy="keep_latest")
    left = len(list(saver.list(_cfg("p"))))
    assert 1 < left < count  # the history went, the delta chain stayed
    assert app.get_state(_cfg("p")).values == before == twin.get_state(_cfg("p")).values
    assert builder.compile(checkpointer=HybridSaver(make_memory())).get_state(_cfg("p")).values == before
    for i in range(7, 9):
        for a in (app, twin):
            a.invoke({"items": [f"in{i}"], "n": i}, _cfg("p"))
    assert app.get_state(_cfg("p")).values == twin.get_state(_cfg("p")).values
