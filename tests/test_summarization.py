"""Auto-summarization: progressive, contiguous, off the request path, robust to LLM failure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import openai
import pytest
import redis

from langchain_hybrid_memory import ConfigurationError, HybridMemory, Message
from langchain_hybrid_memory.summaries import chunk_end
from langchain_hybrid_memory.summarizers import (
    CallableSummarizer,
    OfflineSummarizer,
    OpenAISummarizer,
    SummaryRequest,
)

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.fake_openai import CLASSIC, REASONING, FakeOpenAI

SUMMARY = {"enable_auto_summarize": True, "max_session_messages": 20, "summarize_chunk_size": 30,
           "summary_retry_base": 0.1}


@pytest.fixture
def llm():
    server = FakeOpenAI().start()
    yield server
    server.stop()


def _summaries(namespace: str, sid: str) -> list[tuple[int, int, int, str]]:
    return [(r[0], r[1], r[2], r[3]) for r in pg_fetch(
        f'SELECT from_seq, upto_seq, message_count, text FROM "{namespace}".summaries WHERE session_id = $1 '
        "ORDER BY upto_seq", sid)]


def _write_turns(memory: HybridMemory, sid: str, n: int) -> list[Message]:
    sent: list[Message] = []
    for i in range(n):
        sent += memory.add_messages(sid, [Message("human" if i % 2 == 0 else "ai", f"message {i}")])
    return sent


def test_progressive_summaries_with_the_real_openai_client(make_memory, namespace, llm):
    memory = make_memory(**SUMMARY, summarizer=OpenAISummarizer("test-model", api_key="sk-test",
                                                                 base_url=llm.base_url))
    t0 = time.perf_counter()
    sent = _write_turns(memory, "s", 200)
    assert memory.wait_for_summaries(60)
    assert time.perf_counter() - t0 < 60
    prompts = llm.user_prompts()
    assert len(prompts) == 6  # 180 messages left the window: six chunks of 30
    previous = "(none yet)"
    for k, prompt in enumerate(prompts):
        expected = "\n".join(f"{m.role}: {m.content}" for m in sent[30 * k:30 * (k + 1)])
        # Exactly the previous summary plus exactly the next chunk: never the whole history again.
        assert prompt == f"Summary so far:\n{previous}\n\nNext messages:\n{expected}\n\nUpdated summary:"
        previous = f"summary #{k + 1}: 30 messages, last was <{sent[30 * k + 29].role}: message {30 * k + 29}>"
    rows = _summaries(namespace, "s")
    assert [(r[0], r[1], r[2]) for r in rows] == [(sent[30 * k].seq, sent[30 * k + 29].seq, 30) for k in range(6)]
    tokens = pg_fetch(f'SELECT model, input_tokens, output_tokens FROM "{namespace}".summaries')
    assert all(t[0] == "test-model" and t[1] > 0 and t[2] > 0 for t in tokens)
    # The context view: the latest summary, then every later message: no gap, no overlap.
    for ctx in (memory.get_context("s"), _cold_context(memory)):
        assert ctx.summary == rows[-1][3]
        assert ctx.summarized_upto_seq == sent[179].seq
        assert [m.id for m in ctx.messages] == [m.id for m in sent[180:]]
    # Raw messages are never deleted.
    assert len(memory.get_messages("s")) == 200


def _cold_context(memory: HybridMemory):
    memory.invalidate_session("s")
    return memory.get_context("s")


def test_llm_failures_never_fail_the_user_and_catch_up(make_memory, namespace, llm):
    llm.failures = [500, 429, 500, 3.0, 500]  # errors, then an answer slower than the timeout
    memory = make_memory(**SUMMARY, summary_timeout=1.0, summarizer=OpenAISummarizer(
        "m", api_key="sk-test", base_url=llm.base_url, timeout=1.0))
    sent = _write_turns(memory, "s", 110)  # no add or read raises while the LLM fails
    for _ in range(20):
        memory.get_context("s")
    assert memory.wait_for_summaries(60)
    stats = memory.get_cache_stats()
    assert stats.summary_failures >= 4 and stats.summaries == 3
    rows = _summaries(namespace, "s")
    assert [(r[0], r[1]) for r in rows] == [(sent[30 * k].seq, sent[30 * k + 29].seq) for k in range(3)]
    ctx = memory.get_context("s")
    assert [m.id for m in ctx.messages] == [m.id for m in sent[90:]]
    assert len(memory.get_messages("s")) == 110  # nothing lost, nothing duplicated


def test_no_key_means_the_labelled_offline_summarizer(make_memory, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    memory = make_memory(**SUMMARY)
    _write_turns(memory, "s", 60)
    assert memory.wait_for_summaries(30)
    ctx = memory.get_context("s")
    assert ctx.summary is not None and ctx.summary.startswith(OfflineSummarizer.LABEL)
    assert "message 0" in ctx.summary and "message 29" in ctx.summary


def test_plain_callable_and_langchain_model_summarizers(make_memory):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    calls: list[tuple[str | None, int]] = []

    def fn(previous: str | None, messages: list[Message]) -> str:
        calls.append((previous, len(messages)))
        return f"callable summary {len(calls)}"

    memory = make_memory(**SUMMARY, summarizer=fn)
    _write_turns(memory, "s", 80)
    assert memory.wait_for_summaries(30)
    assert calls == [(None, 30), ("callable summary 1", 30)]
    lc = GenericFakeChatModel(messages=iter([AIMessage("from a LangChain model")]))
    other = make_memory(**SUMMARY, summarizer=lc)
    _write_turns(other, "t", 50)
    assert other.wait_for_summaries(30)
    assert other.get_context("t").summary == "from a LangChain model"


def test_chunk_never_splits_a_tool_call_from_its_results(make_memory, namespace):
    memory = make_memory(**SUMMARY, summarizer=lambda prev, msgs: f"{len(msgs)} messages")
    msgs = [Message("human", f"q{i}") for i in range(29)]
    msgs.append(Message("ai", "", metadata={"tool_calls": [{"name": "lookup", "id": "c1", "args": {}}]}))
    msgs += [Message("tool", "result 1", metadata={"tool_call_id": "c1"}),
             Message("tool", "result 2", metadata={"tool_call_id": "c1"})]
    msgs += [Message("human", f"later {i}") for i in range(30)]
    memory.add_messages("s", msgs)
    assert memory.wait_for_summaries(30)
    rows = _summaries(namespace, "s")
    assert rows[0][2] == 32 and rows[0][3] == "32 messages"
    ctx = memory.get_context("s")
    assert ctx.messages[0].role == "human" and ctx.messages[0].content == "later 0"
    assert chunk_end(["human", "ai", "tool", "tool", "human"], 2) == 4
    assert chunk_end(["human", "tool"], 5) == 2


def test_kill_switch_per_session(make_memory, namespace):
    memory = make_memory(**SUMMARY, summarizer=lambda prev, msgs: "x")
    memory.set_auto_summarize("off", False)
    _write_turns(memory, "off", 60)
    _write_turns(memory, "on", 60)
    assert memory.wait_for_summaries(30)
    assert _summaries(namespace, "off") == [] and len(_summaries(namespace, "on")) == 1
    ctx = memory.get_context("off")
    assert ctx.summary is None and len(ctx.messages) == 60  # nothing was dropped from the view
    memory.set_auto_summarize("off", True)
    assert memory.wait_for_summaries(30)
    assert len(_summaries(namespace, "off")) == 1


WRITER = textwrap.dedent("""
    import sys
    from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
    from langchain_hybrid_memory.summarizers import OpenAISummarizer
    ns, pg, rd, base, tag = sys.argv[1:6]
    memory = HybridMemory(HybridConfig(database_url=pg, redis_url=rd, namespace=ns, enable_auto_summarize=True,
                                       max_session_messages=20, summarize_chunk_size=30, write_behind_delay=0.01),
                          summarizer=OpenAISummarizer("m", api_key="sk-test", base_url=base))
    for i in range(120):
        memory.add_messages("shared", [Message("human", f"{tag}{i}")])
    assert memory.wait_for_summaries(60)
    memory.close()
""")


def test_two_processes_never_overlap_summaries(namespace, llm):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, namespace, PG_URL, REDIS_URL, llm.base_url, tag],
                              env={**os.environ}) for tag in "ab"]
    assert [p.wait(120) for p in procs] == [0, 0]
    rows = _summaries(namespace, "shared")
    all_seqs = [r[0] for r in pg_fetch(f'SELECT seq FROM "{namespace}".messages ORDER BY seq')]
    assert len(all_seqs) == 240
    covered: list[int] = []
    for from_seq, upto_seq, count, _ in rows:
        chunk = [s for s in all_seqs if from_seq <= s <= upto_seq]
        assert len(chunk) == count == 30
        covered += chunk
    assert covered == all_seqs[:len(covered)]  # contiguous from the start, no overlap
    assert len(rows) == (240 - 20) // 30


def test_save_summary_made_outside_the_engine(make_memory, namespace):
    memory = make_memory(**SUMMARY)  # threshold far away: only our external summary lands
    sent = _write_turns(memory, "s", 10)
    assert memory.save_summary("s", "first six", upto_message_id=sent[5].id) is True
    assert memory.save_summary("s", "again", upto_message_id=sent[3].id) is False  # already covered
    assert memory.save_summary("s", "unknown", upto_message_id="nope") is False
    ctx = memory.get_context("s")
    assert ctx.summary == "first six" and [m.id for m in ctx.messages] == [m.id for m in sent[6:]]
    assert _summaries(namespace, "s") == [(sent[0].seq, sent[5].seq, 6, "first six")]
    assert memory.save_summary("s", "next two", upto_message_id=sent[7].id, model="lc") is True
    assert [m.id for m in memory.get_context("s").messages] == [m.id for m in sent[8:]]


def test_a_lagging_summarizer_keeps_the_context_view_in_redis(make_memory):
    """While summaries lag (a slow model, fast turns), Redis keeps every message after the summary, up to the
    ceiling, so the context view stays one Redis read; past the ceiling it is read from PostgreSQL, exactly;
    once summaries land, the window shrinks back to its capacity."""
    gate = threading.Event()

    def slow(previous: str | None, messages: list[Message]) -> str:
        gate.wait(30)
        return f"summary up to {messages[-1].content}"

    memory = make_memory(enable_auto_summarize=True, max_session_messages=4, summarize_chunk_size=4,
                         summarizer=CallableSummarizer(slow))
    cfg = memory.config
    assert (cfg.cache_capacity, cfg.cache_ceiling, cfg.summary_threshold) == (12, 20, 8)
    r = redis.Redis.from_url(REDIS_URL)
    window = memory.keys.session("lag").window
    try:
        _write_turns(memory, "lag", 18)  # a summary is due from message 8 on; the summarizer hangs
        ctx = memory.get_context("lag")
        assert ctx.summary is None and [m.content for m in ctx.messages] == [f"message {i}" for i in range(18)]
        # More than the capacity of 12: nothing unsummarized was trimmed, so the view above came from this one
        # cached read (a trimmed window sends it to PostgreSQL).
        assert r.llen(window) == 18
        memory.invalidate_session("lag")  # a refill caches the same: all 18, not the capacity of 12
        assert [m.content for m in memory.get_context("lag").messages] == [f"message {i}" for i in range(18)]
        memory.get_context("lag")  # the refill caches its window in the background: a read waits for it
        assert r.llen(window) == 18
        memory.invalidate_session("lag")
        assert memory.prefetch_context("lag") == 1  # and so does a prefetch
        assert r.llen(window) == 18
        for i in range(18, 24):
            memory.add_messages("lag", [Message("human", f"message {i}")])
        assert r.llen(window) == 20  # the ceiling
        ctx = memory.get_context("lag")  # beyond it: PostgreSQL, still every message
        assert [m.content for m in ctx.messages] == [f"message {i}" for i in range(24)]
        gate.set()
        assert memory.wait_for_summaries(30)
        memory.add_messages("lag", [Message("human", "message 24")])
        ctx = memory.get_context("lag")
        assert ctx.summary and ctx.summarized_upto_seq
        assert [m.content for m in ctx.messages][-1] == "message 24" and len(ctx.messages) < 8
        assert r.llen(window) == cfg.cache_capacity  # back to the window plus room for the next chunks
    finally:
        gate.set()
        r.close()


# -- OpenAI parameter styles: classic models, reasoning ones (o-series, gpt-5), names that hide which --------
def _request() -> SummaryRequest:
    return SummaryRequest("s", None, [Message("human", "hello"), Message("ai", "hi")], max_tokens=200)


def _styles(llm: FakeOpenAI) -> list[dict[str, object]]:
    """The style-dependent parameters of every request the server received, refused ones included."""
    keys = ("max_tokens", "max_completion_tokens", "temperature")
    return [{k: body[k] for k in keys if k in body} for body in llm.received]


CLASSIC_STYLE = {"max_tokens": 200, "temperature": 0.0}
REASONING_STYLE = {"max_completion_tokens": 200}


def test_a_classic_model_gets_max_tokens_and_temperature(llm):
    llm.refuse = CLASSIC
    summarizer = OpenAISummarizer("gpt-4o-mini", api_key="sk-test", base_url=llm.base_url)
    result = asyncio.run(summarizer.summarize(_request()))
    assert result.text.startswith("summary #1: 2 messages")
    assert _styles(llm) == [CLASSIC_STYLE]


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "openai/o3"])
def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature(llm, model):
    llm.refuse = REASONING
    summarizer = OpenAISummarizer(model, api_key="sk-test", base_url=llm.base_url)
    result = asyncio.run(summarizer.summarize(_request()))
    assert result.text.startswith("summary #1: 2 messages")
    assert _styles(llm) == [REASONING_STYLE]  # right the first time: no refused request


@pytest.mark.parametrize("refuse, first, then", [(REASONING, CLASSIC_STYLE, REASONING_STYLE),
                                                 (CLASSIC, REASONING_STYLE, CLASSIC_STYLE)],
                         ids=["reasoning-behind-a-plain-name", "classic-behind-a-gpt-5-name"])
def test_a_name_that_hides_the_family_switches_style_once_and_remembers(llm, refuse, first, then):
    llm.refuse = refuse
    model = "summaries-prod" if refuse is REASONING else "gpt-5-compat-proxy"
    summarizer = OpenAISummarizer(model, api_key="sk-test", base_url=llm.base_url)
    assert asyncio.run(summarizer.summarize(_request())).text.startswith("summary #1")
    assert _styles(llm) == [first, then]  # refused once, then answered
    assert asyncio.run(summarizer.summarize(_request())).text.startswith("summary #2")
    assert _styles(llm) == [first, then, then]  # the second call went straight to the style that works


def test_the_engine_keeps_the_switched_style_across_summaries(make_memory, namespace, llm):
    llm.refuse = REASONING
    memory = make_memory(**SUMMARY, summarizer=OpenAISummarizer("summaries-prod", api_key="sk-test",
                                                                 base_url=llm.base_url))
    _write_turns(memory, "s", 80)
    assert memory.wait_for_summaries(60)
    assert len(_summaries(namespace, "s")) == 2
    classic, reasoning = {"max_tokens": 512, "temperature": 0.0}, {"max_completion_tokens": 512}  # the default budget
    assert _styles(llm) == [classic, reasoning, reasoning]  # one refusal for two summaries
    assert memory.get_cache_stats().summary_failures == 0  # the switch happened inside the call


def test_a_server_refusing_both_styles_raises_a_typed_error_naming_model_and_parameters(llm):
    llm.refuse = REASONING | CLASSIC
    key = "sk-test-5e3d1c0b9a8f"
    summarizer = OpenAISummarizer("summaries-prod", api_key=key, base_url=llm.base_url)
    with pytest.raises(ConfigurationError) as err:
        asyncio.run(summarizer.summarize(_request()))
    message = str(err.value)
    assert "'summaries-prod'" in message
    assert "'max_tokens'" in message and "'max_completion_tokens'" in message
    assert key not in "".join(traceback.format_exception(err.value))
    assert _styles(llm) == [CLASSIC_STYLE, REASONING_STYLE]  # one retry, no loop


def test_a_400_about_anything_else_is_not_retried(llm):
    llm.failures = [400]
    summarizer = OpenAISummarizer("summaries-prod", api_key="sk-test", base_url=llm.base_url)
    with pytest.raises(openai.BadRequestError):
        asyncio.run(summarizer.summarize(_request()))
    assert _styles(llm) == [CLASSIC_STYLE]
