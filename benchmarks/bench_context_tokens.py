"""Tokens a model is given per turn over a long conversation: summary + recent messages (ours) versus the
whole transcript (what full-history stores hand to the model).

    python benchmarks/bench_context_tokens.py [--turns 1000] [--json PATH]

Runs against the real services (DATABASE_URL / REDIS_URL, default 127.0.0.1), with the offline summarizer so
the run is deterministic and needs no network; token counts use tiktoken cl100k_base when available.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid

import asyncpg
import redis

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
from langchain_hybrid_memory.summarizers import (
    OfflineSummarizer,
    default_token_counter,
    token_counter_name,
    transcript,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--json", help="write the series here")
    args = parser.parse_args()
    pg = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    ns = f"bench_{uuid.uuid4().hex[:10]}"
    count = default_token_counter()
    config = HybridConfig(database_url=pg, redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                          namespace=ns, enable_auto_summarize=True, max_session_messages=20,
                          summarize_chunk_size=30, summary_max_tokens=400)
    memory = HybridMemory(config, summarizer=OfflineSummarizer())
    checkpoints = sorted({t for t in (10, 50, 100, 250, 500, 750, args.turns) if t <= args.turns})
    rows = []
    full_tokens = 0
    try:
        for turn in range(1, args.turns + 1):
            user = Message("human", f"Turn {turn}: please remember that item {turn} costs {turn * 3} euros.")
            reply = Message("ai", f"Noted: item {turn} costs {turn * 3} euros. Anything else?")
            memory.add_messages("conversation", [user, reply])
            full_tokens += count(transcript([user, reply])) + 1
            if turn in checkpoints:
                memory.wait_for_summaries(120)
                ctx = memory.get_context("conversation")
                ours = count(ctx.summary or "") + count(transcript(ctx.messages))
                rows.append({"turn": turn, "ours": ours, "full_history": full_tokens,
                             "messages_in_view": len(ctx.messages)})
    finally:
        memory.close()
        asyncio.run(_drop(pg, ns))
    print(f"tokens in the context view per turn (window 20, chunk 30, summary budget 400; "
          f"counter: {token_counter_name()})")
    print(f"{'turn':>6} {'ours':>8} {'full history':>13} {'ratio':>7}")
    for r in rows:
        print(f"{r['turn']:>6} {r['ours']:>8} {r['full_history']:>13} {r['full_history'] / r['ours']:>6.1f}x")
    late = [r["ours"] for r in rows if r["turn"] >= 100]
    flat = max(late) <= 1.5 * min(late) if late else False
    print(f"ours stays flat from turn 100 on (max/min {max(late) / min(late):.2f}): {'PASS' if flat else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


async def _drop(pg: str, ns: str) -> None:
    conn = await asyncpg.connect(pg)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{ns}" CASCADE')
    finally:
        await conn.close()
    r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    keys = list(r.scan_iter(match=f"{ns}:*", count=1000))  # the benchmark may SCAN; the library never does
    if keys:
        r.delete(*keys)


if __name__ == "__main__":
    main()
