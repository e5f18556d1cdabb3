"""`hybrid-memory demo`: a scripted conversation on the hybrid store, its latencies, and a live Redis failover
(embedded servers when DATABASE_URL / REDIS_URL are not set or do not answer)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from .. import HybridMemory
from ..config import HybridConfig, redact_url
from ..messages import Context, Message
from ..store import PostgresStore
from .connect import close_redis, redis_client, run_async
from .output import Progress

# Said once, on the first turn; then the other lines come round. By the end it is out of the window, and the
# summary may have dropped it: the recall act finds it again.
FACT = "My name is Ada and I am planning a trip to Lisbon."
QUESTIONS = ["What should I pack for March?", "I prefer trains to planes.", "Any tips for a rainy afternoon?",
             "Remind me what my name is?", "Which museums open late?"]
RECALL_QUESTION = "Where does my trip go?"


class _Chat:
    """The demo's assistant: OpenAI when OPENAI_API_KEY is set, else an offline stand-in (labelled)."""

    def __init__(self) -> None:
        self.client: Any = None
        if os.environ.get("OPENAI_API_KEY"):
            from openai import OpenAI

            self.client = OpenAI(timeout=30, max_retries=1)
        self.label = "OpenAI gpt-4o-mini" if self.client else "offline model (no OPENAI_API_KEY: scripted replies)"

    def reply(self, context: Context, question: str) -> str:
        if self.client is None:
            return f"[offline] I see {len(context.messages)} recent messages" + (
                " and a summary of earlier ones" if context.summary else "") + (
                f", plus {len(context.recalled)} recalled." if context.recalled else ".")
        msgs: list[dict[str, str]] = []
        if context.summary:
            msgs.append({"role": "system", "content": f"Summary of the earlier conversation: {context.summary}"})
        if context.recalled:
            said = "\n".join(f"{m.role}: {m.content}" for m in context.recalled)
            msgs.append({"role": "system", "content": f"Earlier messages relevant to the question:\n{said}"})
        for m in context.messages:
            role = "assistant" if m.role in ("ai", "assistant") else "user"
            msgs.append({"role": role, "content": str(m.content)})
        msgs.append({"role": "user", "content": question})
        out = self.client.chat.completions.create(model="gpt-4o-mini", messages=msgs, max_tokens=80)
        return str(out.choices[0].message.content or "")


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job in one command: a conversation on the hybrid store, with a live failover."""
    from ..embedded import EmbeddedServices
    from ..summarizers import OfflineSummarizer, default_summarizer

    services: EmbeddedServices | None = None
    ns = getattr(args, "namespace", None) or os.environ.get("HYBRID_MEMORY_NAMESPACE") or "hybrid_memory_demo"
    base = {"namespace": ns, "enable_auto_summarize": True, "max_session_messages": 10,
            "summarize_chunk_size": 10, "health_check_interval": 0.2, "redis_timeout": 0.3}
    why = "DATABASE_URL / REDIS_URL are not set"
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        config = HybridConfig.from_env(**base)
        why = _unreachable(config) or ""
    if why:
        print(f"{why}: starting embedded PostgreSQL and Redis (extra 'embedded') under {args.data_dir or 'a temp dir'}")
        services = EmbeddedServices(args.data_dir or tempfile.mkdtemp(prefix="hybrid-memory-demo-")).start()
        config = HybridConfig(database_url=services.database_url, redis_url=services.redis_url, **base)
    chat = _Chat()
    summarizer = default_summarizer("gpt-4o-mini", 30) if chat.client else OfflineSummarizer()
    print(f"PostgreSQL  {redact_url(config.database_dsn())}\nRedis       {redact_url(config.redis_dsn())}")
    print(f"chat model  {chat.label}\nsummaries   {type(summarizer).__name__}"
          f"{' (offline, labelled in the text)' if isinstance(summarizer, OfflineSummarizer) else ''}\n")
    session = f"demo-{uuid.uuid4().hex[:8]}"
    try:
        with HybridMemory(config, summarizer=summarizer) as memory:
            writes: list[float] = []
            hot: list[float] = []
            bar = Progress("conversation")
            for turn in range(args.turns):
                question = (QUESTIONS[(turn - 1) % len(QUESTIONS)] if turn else FACT) + f" (turn {turn + 1})"
                t0 = time.perf_counter()
                context = memory.get_context(session)
                if turn:  # the first read of a new session asks PostgreSQL: it is not a hot read
                    hot.append(time.perf_counter() - t0)
                answer = chat.reply(context, question)
                t0 = time.perf_counter()
                memory.add_messages(session, [Message("human", question), Message("ai", answer)])
                writes.append(time.perf_counter() - t0)
                bar.update(turn + 1, args.turns)
            bar.close()
            memory.flush()
            memory.wait_for_summaries(60)
            cold: list[float] = []
            for _ in range(5):
                memory.invalidate_session(session)
                t0 = time.perf_counter()
                memory.get_context(session)
                cold.append(time.perf_counter() - t0)
            context = memory.get_context(session)
            print(f"  write, 2 messages (acknowledged by Redis)  {_ms(writes)}")
            print(f"  context read, hot (one Redis round trip)   {_ms(hot)}")
            print(f"  context read, cold (PostgreSQL, refills)   {_ms(cold)}")
            print(f"  persisted in PostgreSQL                    {len(memory.get_messages(session))} messages")
            print(f"  summaries stored                           {len(memory.get_summaries(session))}")
            print(f"  context view                               summary + {len(context.messages)} messages")
            summary = (context.summary or "-").splitlines()
            print("  latest summary                             " + summary[0][:70])
            for line in summary[1:][-3:]:
                print(f"                                             {line[:70]}")
            _recall_act(memory, chat, session)
            if services is not None:
                _failover_act(memory, services, session)
            else:
                print("\n  (failover act skipped: it kills Redis, which is only done to the embedded one)")
            stats = memory.get_cache_stats()
            print(f"\n  cache hit rate {stats.hit_rate:.1f}% ({stats.hits} hits, {stats.misses} misses), "
                  f"Redis {stats.redis_memory_mb or 0:.2f} MB, backlog {stats.backlog}")
            if not args.keep:
                memory.clear_session(session)
    finally:
        if services is not None:
            services.close()
    return 0


def _recall_act(memory: HybridMemory, chat: _Chat, session: str) -> None:
    """A question about something said long ago: full-text search over the whole history puts it back into the
    context, next to the summary and the window."""
    memory.wait_for_index(30)
    t0 = time.perf_counter()
    context = memory.get_context(session, query=RECALL_QUESTION)
    took = (time.perf_counter() - t0) * 1e3
    print(f"\nrecall: {RECALL_QUESTION!r} (the trip was named on turn 1, long out of the window)")
    print(f"  {'context with recall (full-text search)':<43}{len(context.recalled)} earlier message(s) added "
          f"to summary + window, {took:.1f} ms")
    for m in context.recalled[:3]:
        print(f"  {'':<43}{m.role}: {str(m.content)[:70]}")
    print(f"  {'reply':<43}{chat.reply(context, RECALL_QUESTION)[:100]}")


def _unreachable(config: HybridConfig) -> str | None:
    """None if both configured servers answer, else why not."""
    try:
        client = redis_client(config)
        try:
            client.ping()
        finally:
            close_redis(client)
    except Exception as exc:
        return f"Redis at {redact_url(config.redis_dsn())} does not answer ({type(exc).__name__})"

    async def pg() -> None:
        store = await PostgresStore.probe(config)
        await store.close()

    try:
        run_async(pg())
    except Exception as exc:
        return f"PostgreSQL at {redact_url(config.database_dsn())} does not answer ({type(exc).__name__})"
    return None


def _ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    samples = sorted(samples)
    p50 = statistics.median(samples) * 1e3
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1e3
    return f"p50 {p50:7.3f} ms   p99 {p99:7.3f} ms"


def _failover_act(memory: HybridMemory, services: Any, session: str) -> None:
    print("\nfailover: Redis is killed mid-conversation")
    services.redis.stop()
    t0 = time.perf_counter()
    memory.add_messages(session, [Message("human", "Are you still there?"), Message("ai", "Yes: via PostgreSQL.")])
    ctx = memory.get_context(session)
    print(f"  conversation goes on: write + read in {(time.perf_counter() - t0) * 1e3:.1f} ms, "
          f"{len(ctx.messages)} messages in view, redis_up={memory.redis_available}")
    services.redis.start()
    deadline = time.monotonic() + 10
    while not memory.redis_available and time.monotonic() < deadline:
        time.sleep(0.05)
    memory.get_context(session)
    t0 = time.perf_counter()
    memory.get_context(session)
    print(f"  Redis is back (found by the health check): cache warm again, hot read "
          f"{(time.perf_counter() - t0) * 1e3:.3f} ms")
