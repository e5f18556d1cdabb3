"""Recall benchmark: does search bring back a planted fact, and how fast is it?

    python benchmarks/bench_recall.py [--quick] [--json PATH]

One run, one conversation for every method. A synthetic conversation of 1,000 turns (a user message and an
assistant reply each) holds planted facts; each fact is surrounded by distractor turns that share its keywords,
and some facts are superseded by a later turn (the newer must rank first). Every fact is asked twice: with its
keywords, and paraphrased (no content word in common with the fact). For each method (full-text only, vectors
only, both fused) with the offline embedder (WordLlama's weights from its wheel), it reports recall@1 and
recall@5, then the tokens `get_context(query=...)` adds, then search p50 on a 10,000-message session against
one bare indexed PostgreSQL query of the same scope (measured in the same run, interleaved), with PASS/FAIL
lines for the targets. Last, on the `embedded` extra's PostgreSQL (pgserver: PostgreSQL 16 with pgvector), a
user-wide vector search (two users of 10,000 messages each) through the HNSW index against exact scoring of the
same sessions, with and without the process's vector cache (no target: figures and ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
from langchain_hybrid_memory.embeddings import OfflineEmbedder

from _common import PG_URL, REDIS_URL, drop_namespace, new_namespace
from hybrid_memory_testing.servers import PgvectorServer

TARGET_KEYWORD_R5 = 0.95  # fused recall@5 on keyword questions
TARGET_PARAPHRASE_R5 = 0.80  # fused recall@5 on paraphrased questions
TARGET_SEARCH = 3.0  # search p50 within this factor of one bare indexed query of the same scope


@dataclass(frozen=True)
class Fact:
    text: str  # what the user said
    keyword_q: str  # a question sharing its keywords
    paraphrase_q: str  # the same question without its content words
    distractors: tuple[str, ...]  # turns sharing its keywords, about something else
    update: str | None = None  # a later turn superseding it (the expected answer then)


FACTS = [
    Fact("My sister Clara lives in Valencia and teaches marine biology.", "Where does my sister Clara live?",
         "In which city is my sibling based?",
         ("Clara from accounting sent the budget file.", "Valencia oranges are cheap this week.",
          "My sister called about the birthday cake."),
         "Clara just told me she moved from Valencia to Seville for a new job."),
    Fact("I am allergic to penicillin, the doctor confirmed it last spring.", "What am I allergic to?",
         "Which medicine must doctors avoid giving me?",
         ("The allergy season starts early this year.", "My doctor's office moved downtown.",
          "Spring cleaning took the whole weekend.")),
    Fact("My flight to Tokyo departs on the 14th at 9:40 from gate B12.", "When does my flight to Tokyo depart?",
         "What time does my plane to Japan leave?",
         ("Tokyo has the best ramen I've ever eaten.", "The flight attendant job posting closed.",
          "Gate B12 at the parking lot is broken."),
         "Change of plans: the Tokyo flight now departs on the 16th at 11:05."),
    Fact("The wifi password at the cabin is bluefinch42.", "What is the wifi password at the cabin?",
         "How do I get online at the mountain house?",
         ("The cabin needs a new roof before winter.", "My password manager asked for an update.",
          "The wifi at the office drops every afternoon.")),
    Fact("My daughter Mia is turning seven on June 3rd.", "When is Mia's birthday?",
         "How old will my kid be and on what date?",
         ("Mia from the gym recommended a protein bar.", "June is usually rainy here.",
          "My daughter loves drawing horses.")),
    Fact("I parked the car on level 4, spot 118, of the airport garage.", "Where did I park the car?",
         "On which floor did I leave my vehicle?",
         ("The car wash on Fifth Street closed.", "Airport garage prices went up again.",
          "Level 4 of the game is impossible.")),
    Fact("My manager Priya approved my vacation from August 10 to August 24.", "When is my vacation?",
         "Which dates am I off work this summer?",
         ("Priya's presentation ran long today.", "August is the busiest month for the team.",
          "My manager wants the report by Friday."),
         "Priya moved my vacation: it is now August 17 to August 31."),
    Fact("The leak under the kitchen sink was fixed by a plumber named Ortega.", "Who fixed the kitchen sink leak?",
         "Which tradesman repaired the water problem at home?",
         ("The kitchen lights flicker at night.", "Ortega Street is closed for repairs.",
          "We bought a new sink for the bathroom.")),
    Fact("My blood type is O negative.", "What is my blood type?", "Which kind of donor am I?",
         ("Blood pressure readings were normal.", "O'Brien's pub has a new menu.",
          "The negative reviews were mostly about shipping.")),
    Fact("Our wedding anniversary dinner is booked at Casa Lina for 8 pm on Saturday.",
         "Where is the anniversary dinner booked?", "Which restaurant did we reserve for our special evening?",
         ("Lina from the bakery made a great sourdough.", "Saturday's football match was cancelled.",
          "Dinner at home was pasta again.")),
    Fact("I keep the spare house key inside the blue ceramic frog by the back door.", "Where is the spare key?",
         "Where can I find another way to get into my home?",
         ("The blue paint for the fence arrived.", "A frog was singing all night by the pond.",
          "The back door squeaks when it rains.")),
    Fact("My insurance policy number is HX-4471-203.", "What is my insurance policy number?",
         "What is the reference for my coverage contract?",
         ("Insurance premiums went up for everyone.", "The policy at work changed on Monday.",
          "Number 203 bus was late again.")),
    Fact("The dentist appointment is on Tuesday the 9th at 3:30 pm with Dr. Haas.",
         "When is the dentist appointment?", "When do I see the tooth doctor?",
         ("Dr. Haas wrote a book about gardening.", "Tuesday the team meeting moved online.",
          "The appointment with the bank went well."),
         "The dentist rescheduled: Thursday the 11th at 10 am with Dr. Haas."),
    Fact("My favourite author is Ursula K. Le Guin; I reread The Dispossessed every year.",
         "Who is my favourite author?", "Which writer do I admire the most?",
         ("My favourite pizza place closed.", "The author of the memo was anonymous.",
          "I reread the contract twice.")),
    Fact("I take 50 mg of sertraline every morning.", "Which medication do I take in the morning?",
         "What pills are part of my daily routine?",
         ("Morning runs are harder in winter.", "The medication cabinet needs a lock.",
          "Every morning the neighbour's dog barks.")),
    Fact("The garage code is 7 3 9 1, then press the hash key.", "What is the garage code?",
         "How do I open the door where the car sleeps?",
         ("The garage sale made 200 dollars.", "The code review took all afternoon.",
          "Press the hash key to repeat the menu.")),
    Fact("My best friend Tomasz is vegan and hates mushrooms.", "What does Tomasz not eat?",
         "Which foods should I avoid when cooking for my closest buddy?",
         ("Tomasz is moving to a bigger flat.", "Mushrooms grew all over the lawn.",
          "The vegan bakery opened a second shop.")),
    Fact("The quarterly tax payment of 2,340 euros is due on September 15.", "When is the tax payment due?",
         "When must I pay what I owe the government?",
         ("Tax software crashed during the update.", "September weddings are expensive.",
          "The payment terminal at the shop was broken.")),
    Fact("My bike lock combination is 0-5-8-2.", "What is my bike lock combination?",
         "What numbers open the thing that secures my bicycle?",
         ("The bike shop repaired the brakes.", "The lock on the shed is rusty.",
          "Combination skin can be tricky in winter.")),
    Fact("Grandma's pierogi recipe needs farmer's cheese, not ricotta.", "What cheese does grandma's recipe need?",
         "Which dairy goes in the dumplings my grandmother taught me?",
         ("Grandma liked the new garden bench.", "The recipe blog had too many ads.",
          "Ricotta was on sale at the market.")),
    Fact("My passport expires in March 2027, number C0FF33.", "When does my passport expire?",
         "When do I need to renew my travel document?",
         ("The passport photo booth was out of order.", "March was warmer than usual.",
          "The milk expires tomorrow.")),
    Fact("The kids' school pickup is at 3:15 at the side gate on Birch Road.", "When is school pickup?",
         "At what time do I collect the children?",
         ("Birch Road has new speed bumps.", "The school play is next month.",
          "The side gate of the park is locked at night.")),
    Fact("My landlord's name is Mr. Achebe and his phone number is 555-0147.", "What is my landlord's number?",
         "How do I reach the person I rent from?",
         ("Achebe's novels are on the reading list.", "My phone screen cracked again.",
          "The landlord in the movie was the villain.")),
    Fact("I ran my first half marathon in 1 hour 52 minutes.", "What was my half marathon time?",
         "How long did my first long race take?",
         ("The marathon closed Main Street all morning.", "Half of the team is on holiday.",
          "It took 52 minutes to find parking.")),
    Fact("The conference talk is titled 'Latency at the edge' and I present on day two.",
         "What is the title of my conference talk?", "What am I speaking about at the event?",
         ("The conference hotel was overbooked.", "Day two of the diet was the hardest.",
          "The talk show host interviewed a chef."),
         "I renamed my conference talk to 'Tail latency at the edge'."),
]

FILLER = [
    "The weather was grey again today.", "I made pasta with tomatoes for lunch.",
    "We watched a film about space exploration.", "The neighbours are renovating their kitchen.",
    "I finished a podcast episode about history.", "Traffic was slow on the way home.",
    "I tried a new coffee blend this morning.", "The cat knocked a plant off the shelf.",
    "I cleaned out the inbox before the weekend.", "We played board games until late.",
    "The train was on time for once.", "I went for a short walk in the park.",
]
REPLIES = ["Sounds good.", "Noted.", "That makes sense.", "Thanks for telling me.", "Got it.",
           "Interesting!", "I'll keep that in mind.", "Okay."]


def build(turns: int, seed: int = 7) -> tuple[list[Message], list[tuple[str, str, str, str]]]:
    """The conversation and the questions: (kind, question, expected message id, fact label)."""
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(20, turns - 60), len(FACTS)))
    messages: list[Message] = []
    expected: dict[int, str] = {}
    planned: dict[int, str] = {}
    updates: dict[int, tuple[int, str]] = {}
    for i, slot in enumerate(slots):
        planned[slot] = FACTS[i].text
        expected[i] = f"fact-{i}"
        for j, d in enumerate(FACTS[i].distractors):
            planned.setdefault(max(0, slot - 3 + 2 * j), d)
        if FACTS[i].update:
            later = min(turns - 1, slot + rng.randint(40, 400))
            while later in planned or later in updates:
                later += 1
            updates[later] = (i, FACTS[i].update)
            expected[i] = f"update-{i}"
    by_text = {FACTS[i].text: i for i in range(len(FACTS))}
    for t in range(turns):
        if t in updates:
            i, text = updates[t]
            messages.append(Message("human", text, id=f"update-{i}"))
        elif t in planned and planned[t] in by_text:
            i = by_text[planned[t]]
            messages.append(Message("human", planned[t], id=f"fact-{i}"))
        elif t in planned:
            messages.append(Message("human", planned[t], id=f"distractor-{t}"))
        else:
            messages.append(Message("human", f"{rng.choice(FILLER)} ({t})", id=f"filler-{t}"))
        messages.append(Message("ai", rng.choice(REPLIES), id=f"reply-{t}"))
    questions = []
    for i, f in enumerate(FACTS):
        questions.append(("keyword", f.keyword_q, expected[i], f"fact-{i}"))
        questions.append(("paraphrase", f.paraphrase_q, expected[i], f"fact-{i}"))
    return messages, questions


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


async def main_async(args: argparse.Namespace) -> int:
    ns = new_namespace("recall")
    turns = 200 if args.quick else 1000
    big = 2000 if args.quick else 10_000
    memory = HybridMemory(HybridConfig(database_url=PG_URL, redis_url=REDIS_URL, namespace=ns,
                                       max_session_messages=30, recall_index_interval=0.2),
                          embedder=OfflineEmbedder())
    out: dict[str, Any] = {"turns": turns, "facts": len(FACTS)}
    failures = 0
    try:
        messages, questions = build(turns)
        for i in range(0, len(messages), 500):
            await memory.aadd_messages("conv", messages[i:i + 500], user_id="bench")
        filler = [Message("human" if i % 2 == 0 else "ai", f"{FILLER[i % len(FILLER)]} #{i}") for i in range(big)]
        for i in range(0, big, 1000):
            await memory.aadd_messages("big", filler[i:i + 1000], user_id="bench")
        t0 = time.perf_counter()
        assert await memory.await_for_index(600), "the index did not catch up"
        out["index_and_embed_s"] = time.perf_counter() - t0

        # -- quality ---------------------------------------------------------------------------------------
        print(f"Recall on a {turns}-turn conversation ({2 * turns} messages), {len(FACTS)} planted facts "
              f"({sum(1 for f in FACTS if f.update)} superseded later), each asked with its keywords and "
              "paraphrased; offline embedder (WordLlama, 256 dimensions)\n")
        print(f"{'method':<9} {'questions':<11} {'recall@1':>9} {'recall@5':>9}")
        quality: dict[str, dict[str, dict[str, float]]] = {}
        for method in ("lexical", "vector", "fused"):
            quality[method] = {}
            for kind in ("keyword", "paraphrase"):
                qs = [q for q in questions if q[0] == kind]
                r1 = r5 = 0
                for _, question, want, _ in qs:
                    hits = await memory.asearch(question, session_id="conv", k=5, method=method)
                    ids = [h.message.id for h in hits]
                    r1 += bool(ids) and ids[0] == want
                    r5 += want in ids
                quality[method][kind] = {"recall@1": r1 / len(qs), "recall@5": r5 / len(qs)}
                print(f"{method:<9} {kind:<11} {r1 / len(qs):>9.2f} {r5 / len(qs):>9.2f}")
        out["quality"] = quality

        tokens = []
        for _, question, _, _ in questions:
            ctx = await memory.aget_context("conv", query=question)
            tokens.append(sum(len(m.content) // 4 + 1 for m in ctx.recalled if isinstance(m.content, str)))
        out["recalled_tokens_mean"] = statistics.mean(tokens)
        print(f"\nget_context(query=...) adds {statistics.mean(tokens):.0f} tokens on average (at most "
              f"{max(tokens)}; budget recall_max_tokens={memory.config.recall_max_tokens}) to the window of "
              f"{memory.config.max_session_messages} messages")

        # -- speed -----------------------------------------------------------------------------------------
        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'SET search_path TO "{ns}"')
        await conn.execute("ANALYZE")
        # The floor: the ranked full-text query one would write by hand for this scope (no join, no decoding).
        bare = ("SELECT session_id, seq, ts_rank_cd(tsv, q) AS r FROM message_search, to_tsquery('english', $2) q"
                " WHERE session_id = $1 AND tsv @@ q ORDER BY r DESC LIMIT 5")
        queries = ["weather", "pasta tomatoes", "space exploration film", "coffee blend morning", "train"]
        timings: dict[str, list[float]] = {"bare": [], "lexical": [], "fused": []}
        rounds = 30 if args.quick else 100
        for r in range(rounds):
            q = queries[r % len(queries)]
            for name in ("bare", "lexical", "fused")[r % 3:] + ("bare", "lexical", "fused")[:r % 3]:
                t0 = time.perf_counter()
                if name == "bare":
                    await conn.fetch(bare, "big", " | ".join(q.split()))
                else:
                    await memory.asearch(q, session_id="big", k=5, method=name)
                timings[name].append(time.perf_counter() - t0)
        await conn.close()
        base = p50(timings["bare"])
        print(f"\nsearch p50 on a {big:,}-message session ({rounds} rounds, interleaved): "
              f"bare indexed query {base * 1e3:.2f} ms, "
              f"full-text search {p50(timings['lexical']) * 1e3:.2f} ms ({p50(timings['lexical']) / base:.2f}x), "
              f"fused search {p50(timings['fused']) * 1e3:.2f} ms ({p50(timings['fused']) / base:.2f}x)")
        out["search_p50_ms"] = {k: p50(v) * 1e3 for k, v in timings.items()}

        checks = [
            (quality["fused"]["keyword"]["recall@5"] >= TARGET_KEYWORD_R5,
             f"fused recall@5 on keyword questions {quality['fused']['keyword']['recall@5']:.2f} "
             f"(target >= {TARGET_KEYWORD_R5})"),
            (quality["fused"]["paraphrase"]["recall@5"] >= TARGET_PARAPHRASE_R5,
             f"fused recall@5 on paraphrased questions {quality['fused']['paraphrase']['recall@5']:.2f} "
             f"(target >= {TARGET_PARAPHRASE_R5})"),
            (p50(timings["lexical"]) <= TARGET_SEARCH * base,
             f"full-text search p50 {p50(timings['lexical']) / base:.2f}x a bare indexed query "
             f"(target <= {TARGET_SEARCH}x)"),
            (p50(timings["fused"]) <= TARGET_SEARCH * base,
             f"fused search p50 {p50(timings['fused']) / base:.2f}x a bare indexed query (target <= {TARGET_SEARCH}x)"),
        ]
        print()
        for ok, text in checks:
            print(("PASS  " if ok else "FAIL  ") + text)
            failures += not ok
        out["checks"] = [{"ok": ok, "what": text} for ok, text in checks]
    finally:
        await memory.aclose()
        await drop_namespace(ns)
    try:
        out["hnsw"] = await hnsw_vs_exact(args)
    except RuntimeError as exc:  # pgserver did not start: the figures above stand
        print(f"\nuser-wide search with HNSW: not measured ({exc})")
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(out, indent=2))
    return 1 if failures else 0


async def hnsw_vs_exact(args: argparse.Namespace) -> dict[str, Any]:
    """User-wide vector search p50 on pgserver: the HNSW index, exact scoring from the process's cache, exact
    scoring that reads the vectors (as a process's first search of a scope does); and how often HNSW's top 5
    equals the exact top 5."""
    per_user = 2000 if args.quick else 10_000
    rng = random.Random(11)
    words = sorted({w.strip(".,;:'!?").lower() for t in [*FILLER, *(f.text for f in FACTS)] for w in t.split()} - {""})
    server = await asyncio.to_thread(lambda: PgvectorServer().start())
    ns = new_namespace("hnsw")
    embedder = OfflineEmbedder()
    config = HybridConfig(database_url=server.url(), redis_url=REDIS_URL, namespace=ns, recall_index_interval=0.2)
    memory = HybridMemory(config, embedder=embedder)
    uncached = HybridMemory(config.model_copy(update={"recall_cache_mb": 0, "search_index": False}),
                            embedder=embedder)
    try:
        sessions: dict[str, list[str]] = {}
        for user in ("u1", "u2"):
            sessions[user] = [f"{user}-s{j}" for j in range(20)]
            for sid in sessions[user]:
                msgs = [Message("human", " ".join(rng.sample(words, rng.randint(6, 12))))
                        for _ in range(per_user // 20)]
                await memory.aadd_messages(sid, msgs, user_id=user)
        t0 = time.perf_counter()
        assert await memory.await_for_index(1800), "the index did not catch up"
        built = time.perf_counter() - t0
        queries = [" ".join(rng.sample(words, 4)) for _ in range(20)]
        same = 0
        for q in queries:
            wide = await memory.asearch(q, user_id="u1", method="vector")
            exact = await memory.asearch(q, session_id=sessions["u1"], user_id="u1", method="vector")
            same += [h.message.id for h in wide] == [h.message.id for h in exact]
        ops = {
            "hnsw": lambda q: memory.asearch(q, user_id="u1", method="vector"),
            "exact, cached": lambda q: memory.asearch(q, session_id=sessions["u1"], user_id="u1", method="vector"),
            "exact, uncached": lambda q: uncached.asearch(q, session_id=sessions["u1"], user_id="u1",
                                                          method="vector"),
        }
        timings: dict[str, list[float]] = {name: [] for name in ops}
        rounds = 20 if args.quick else 60
        names = list(ops)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                t0 = time.perf_counter()
                await ops[name](queries[r % len(queries)])
                timings[name].append(time.perf_counter() - t0)
    finally:
        await memory.aclose()
        await uncached.aclose()
        await asyncio.to_thread(server.stop)
    hnsw = p50(timings["hnsw"])
    print(f"\nuser-wide vector search p50 on pgserver (PostgreSQL 16, pgvector), a user holding {per_user:,} of "
          f"{2 * per_user:,} vectors (256 dimensions; embedded and indexed in {built:.0f} s), {rounds} rounds "
          f"interleaved: HNSW {hnsw * 1e3:.2f} ms; exact, cached {p50(timings['exact, cached']) * 1e3:.2f} ms "
          f"(HNSW {hnsw / p50(timings['exact, cached']):.2f}x); exact, uncached "
          f"{p50(timings['exact, uncached']) * 1e3:.2f} ms (HNSW {hnsw / p50(timings['exact, uncached']):.2f}x); "
          f"top 5 identical to exact for {same}/{len(queries)} queries")
    return {"per_user": per_user, "index_and_embed_s": built, "top5_identical": same / len(queries),
            "p50_ms": {name: p50(v) * 1e3 for name, v in timings.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 200-turn conversation and a 2,000-message session")
    parser.add_argument("--json", help="write the figures here")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
