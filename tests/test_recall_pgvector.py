"""Recall's vectors in pgvector, where PostgreSQL has it (pgserver's PostgreSQL 16): the column is found, each
model gets an HNSW index, a user-wide vector search uses it (EXPLAIN says so, and so do the index's statistics)
and finds what exact scoring finds; it never crosses users; erasure leaves no vector behind; vectors stored before
pgvector are converted; a role that may not create the extension gets the plain column. On the machine's
PostgreSQL 15 (no pgvector) the plain column serves every scope."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
from langchain_hybrid_memory.embeddings import OfflineEmbedder
from langchain_hybrid_memory.pgvector import LIMITS, PgVector

from conftest import REDIS_URL, drop_namespace, pg_fetch

WORDS = ("garden invoice piano hiking salmon passport violin tax museum bicycle recipe soccer mortgage telescope "
         "pottery chess volcano jazz vaccine harbor tulip laptop marathon yoga castle espresso glacier novel "
         "puppy dentist wedding bakery subway orchestra lantern canyon compass desert meadow ferry robot poem "
         "pillow umbrella tractor satellite whisky cathedral pumpkin sailboat kettle helmet dolphin blanket").split()
FACTS = {  # planted in alice's first session
    "fact-flight": "My flight to Lisbon leaves on Tuesday at nine from gate twelve.",
    "fact-allergy": "I am allergic to penicillin; the doctor confirmed it last spring.",
    "fact-key": "The spare house key is inside the blue ceramic frog by the back door.",
}
QUERIES = ["when does my plane to Portugal depart?", "which medicine must I avoid?", "where is the spare key?",
           "jazz orchestra in the cathedral", "a puppy on the ferry", "tax invoice and mortgage"]


def _chat(user: str, sessions: int, per: int, seed: int) -> dict[str, list[Message]]:
    rng = random.Random(seed)
    out: dict[str, list[Message]] = {}
    for j in range(sessions):
        msgs = [Message("human" if i % 2 == 0 else "ai", " ".join(rng.sample(WORDS, rng.randint(5, 9))),
                        id=f"{user}-{j}-{i}") for i in range(per)]
        out[f"{user}-s{j}"] = msgs
    return out


@pytest.fixture(scope="module")
def embedder() -> OfflineEmbedder:
    return OfflineEmbedder()


@pytest.fixture
def pgv_memory(pgvector_pg: Any) -> Iterator[Callable[..., HybridMemory]]:
    """HybridMemory instances on a namespace of their own in pgserver's PostgreSQL; closed and dropped after."""
    made: list[HybridMemory] = []
    ns = f"t_{uuid.uuid4().hex[:12]}"
    urls: set[str] = set()

    def make(url: str | None = None, **overrides: Any) -> HybridMemory:
        url = url or pgvector_pg.url()
        urls.add(url)
        embedder = overrides.pop("embedder", None)
        settings: dict[str, Any] = {"database_url": url, "redis_url": REDIS_URL, "namespace": ns,
                                    "write_behind_delay": 0.01, "recall_index_interval": 0.1}
        memory = HybridMemory(HybridConfig(**{**settings, **overrides}), embedder=embedder)
        made.append(memory)
        return memory

    yield make
    for memory in made:
        try:
            memory.close(flush_timeout=5)
        except Exception:
            pass
    for url in urls:
        drop_namespace(ns, pg_url=url)


def _load(memory: HybridMemory, chats: dict[str, dict[str, list[Message]]]) -> None:
    for user, sessions in chats.items():
        for sid, msgs in sessions.items():
            memory.add_messages(sid, msgs, user_id=user)
    assert memory.wait_for_index(120)


def _data() -> dict[str, dict[str, list[Message]]]:
    alice = _chat("alice", 6, 100, seed=1)
    alice["alice-s0"] += [Message("human", text, id=mid) for mid, text in FACTS.items()]
    return {"alice": alice, "bob": _chat("bob", 3, 100, seed=2), "carol": _chat("carol", 1, 4, seed=3)}


def _ids(hits: list[Any]) -> list[str]:
    return [h.message.id for h in hits]


async def _plan(url: str, ns: str, sql: str, q: list[float], user: str) -> str:
    """EXPLAIN of `sql` as the engine runs it: prepared once, with a generic plan (plan_cache_mode)."""
    conn = await asyncpg.connect(url, server_settings={"search_path": ns, "plan_cache_mode": "force_generic_plan"})
    try:
        await conn.execute(f"PREPARE near(float4[], text) AS {sql}")
        vector = "{" + ",".join(map(str, q)) + "}"
        return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE near('{vector}', '{user}')"))
    finally:
        await conn.close()


def _index_scans(url: str, ns: str) -> int:
    rows = pg_fetch("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes WHERE schemaname = $1"
                    " AND indexrelname LIKE 'message_vectors_hnsw_%'", ns, url=url)
    return int(rows[0][0])


def _wait_for_scans(url: str, ns: str, at_least: int = 1, timeout: float = 15.0) -> int:
    """The index scans counted once the engine's connections closed (each reports its statistics as it ends)."""
    deadline = time.monotonic() + timeout
    while (n := _index_scans(url, ns)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def test_the_user_scope_uses_the_hnsw_index_and_scores_its_candidates_exactly(
        pgvector_pg: Any, pgv_memory: Callable[..., HybridMemory], embedder: OfflineEmbedder) -> None:
    url = pgvector_pg.url()
    memory = pgv_memory(embedder=embedder)
    data = _data()
    _load(memory, data)
    ns = memory.config.namespace
    stored = pg_fetch(f'SELECT count(*), count(vec), min(model_id) FROM "{ns}".message_vectors', url=url)[0]
    assert stored[0] == 6 * 100 + 3 + 3 * 100 + 4 and stored[1] == stored[0]  # every vector in `vec` too
    model_id = stored[2]
    index = pg_fetch("SELECT c.relname, i.indisvalid, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c"
                     " ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
                     " AND c.relname LIKE 'message_vectors_hnsw_%'", ns, url=url)
    assert [(r[0], r[1]) for r in index] == [(f"message_vectors_hnsw_{model_id}_256", True)]
    assert "USING hnsw" in index[0][2] and f"model_id = {model_id}" in index[0][2]

    # The planner picks the index for the engine's statement, generic plan and all.
    q = embedder.embed([QUERIES[0]])[0]
    plan = asyncio.run(_plan(url, ns, PgVector("public", model_id, 256).nearest_sql[LIMITS[0]], q, "alice"))
    assert f"Index Scan using message_vectors_hnsw_{model_id}_256" in plan, plan

    # The index is approximate: a vector out of its graph's reach (by the order the build met the rows in) is
    # not among its candidates. What holds: each hit scored as exact scoring scores it, and nearly all of exact
    # scoring's best found (a miss fused still finds through full-text is the next test's).
    before = _index_scans(url, ns)
    found = wanted = 0
    for user in ("alice", "bob"):
        sessions = sorted(data[user])
        for query in QUERIES:
            for method in ("vector", "fused"):
                wide = memory.search(query, user_id=user, k=5, method=method)
                exact = memory.search(query, session_id=sessions, user_id=user, k=20, method=method)
                by_id = {h.message.id: h.score for h in exact}
                assert len(wide) == 5 and all(h.message.id in by_id for h in wide), (user, query, method)
                assert [h.score for h in wide] == pytest.approx([by_id[h.message.id] for h in wide])
                found += len(set(_ids(wide)) & set(_ids(exact)[:5]))
                wanted += 5
    assert found >= 0.9 * wanted, (found, wanted)
    memory.close()
    assert _wait_for_scans(url, ns, before + 2 * len(QUERIES) * 2) >= before + 2 * len(QUERIES) * 2  # each one


def test_a_vector_the_index_misses_is_scored_exactly_when_full_text_finds_it(
        pgvector_pg: Any, pgv_memory: Callable[..., HybridMemory], embedder: OfflineEmbedder) -> None:
    """HNSW is approximate: a vector can be out of the graph's reach, by the order the build met the rows in (CI
    once missed a planted fact, an outlier among the chatter, that exact scoring ranked first). The fused search
    scores full-text's candidates exactly too, so such a vector ranks as when the whole scope is scored. The miss
    is made certain here: the fact's copy in `vec` (what the index holds) points away from the query; its stored
    vector, the source of scores, is unchanged."""
    url = pgvector_pg.url()
    memory = pgv_memory(embedder=embedder)
    data = _data()
    _load(memory, data)
    ns = memory.config.namespace
    sessions = sorted(data["alice"])
    query = QUERIES[2]  # "where is the spare key?": full-text finds the fact by two of its words
    (fact,) = memory.search(query, session_id=sessions[0], user_id="alice", k=1, method="vector")
    assert fact.message.id == "fact-key"
    away = [-x for x in embedder.embed([query])[0]]  # the farthest from the query there is
    pg_fetch(f'UPDATE "{ns}".message_vectors SET vec = $1::float4[]::public.vector WHERE session_id = $2'
             " AND seq = $3", away, fact.session_id, fact.seq, url=url)

    # The index's candidates alone miss it (the vector method has no other way to it).
    assert "fact-key" not in _ids(memory.search(query, user_id="alice", k=50, method="vector"))
    for method in ("fused", "auto"):
        wide = memory.search(query, user_id="alice", k=5, method=method)
        exact = memory.search(query, session_id=sessions, user_id="alice", k=5, method=method)
        assert _ids(wide) == _ids(exact) and _ids(wide)[0] == "fact-key", method
        assert [h.score for h in wide] == pytest.approx([h.score for h in exact])
    memory.close()
    assert _wait_for_scans(url, ns) >= 1


def test_user_wide_searches_never_cross_users(pgv_memory: Callable[..., HybridMemory],
                                              embedder: OfflineEmbedder) -> None:
    memory = pgv_memory(embedder=embedder)
    data = _data()
    _load(memory, data)
    for user in data:
        mine = set(data[user])
        found = set()
        for query in [*QUERIES, *FACTS.values()]:  # alice's facts word for word, asked by everyone
            for method in ("vector", "fused", "auto"):
                hits = memory.search(query, user_id=user, k=20, method=method)
                assert {h.session_id for h in hits} <= mine, (user, query, method)
                found.update(h.message.id for h in hits)
        # carol has four messages: too few among the index's nearest, so her scope is scored exactly.
        assert len(found) >= (4 if user == "carol" else 50), user
    assert memory.search("where is the spare key?", user_id="nobody", method="vector") == []


def test_erasure_leaves_no_vector_behind(pgvector_pg: Any, pgv_memory: Callable[..., HybridMemory],
                                         embedder: OfflineEmbedder) -> None:
    url = pgvector_pg.url()
    memory = pgv_memory(embedder=embedder)
    data = _data()
    _load(memory, data)
    ns = memory.config.namespace

    def vectors(prefix: str) -> int:
        return int(pg_fetch(f'SELECT count(*) FROM "{ns}".message_vectors WHERE session_id LIKE $1', f"{prefix}%",
                            url=url)[0][0])

    hit = memory.search("tax invoice and mortgage", user_id="bob", k=1, method="vector")[0]
    assert memory.delete_messages(hit.session_id, [hit.seq], user_id="bob") == 1
    assert hit.message.id not in _ids(memory.search("tax invoice and mortgage", user_id="bob", k=50, method="vector"))
    assert vectors("bob") == 299

    assert memory.delete_user("alice") == 6
    assert vectors("alice") == 0 and vectors("bob") == 299
    assert memory.search(FACTS["fact-key"], user_id="alice", method="vector") == []
    assert len(memory.search("a puppy on the ferry", user_id="bob", k=5, method="vector")) == 5
    # The one pgvector column is in the rows erasure deletes (the index's copies go with the next vacuum).
    columns = pg_fetch("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = $1"
                       " AND udt_name = 'vector'", ns, url=url)
    assert [(r[0], r[1]) for r in columns] == [("message_vectors", "vec")]


@pytest.fixture
def app_database(pgvector_pg: Any) -> Iterator[str]:
    """A database owned by a role that is not a superuser (pgvector is not a trusted extension: it may not create
    it); dropped after the test's memories are closed."""
    admin = pgvector_pg.url()
    db = f"app_{uuid.uuid4().hex[:8]}"
    pg_fetch("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') THEN CREATE ROLE app LOGIN;"
             " END IF; END $$", url=admin)
    pg_fetch(f"CREATE DATABASE {db} OWNER app", url=admin)
    yield db
    pg_fetch(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", url=admin)


def test_a_role_without_pgvector_gets_the_plain_column_then_the_index_once_it_is_installed(
        pgvector_pg: Any, app_database: str, pgv_memory: Callable[..., HybridMemory], embedder: OfflineEmbedder,
        caplog: pytest.LogCaptureFixture) -> None:
    app = pgvector_pg.url(database=app_database, user="app")
    with caplog.at_level(logging.WARNING, logger="langchain_hybrid_memory"):
        memory = pgv_memory(url=app, embedder=embedder)
        data = _data()
        _load(memory, data)
    assert "could not create the extension" in caplog.text
    ns = memory.config.namespace
    assert pg_fetch("SELECT extname FROM pg_extension WHERE extname = 'vector'", url=app) == []
    assert pg_fetch(f'SELECT max(version) FROM "{ns}".schema_migrations', url=app)[0][0] >= 7
    sessions = sorted(data["alice"])
    wide = memory.search(QUERIES[1], user_id="alice", k=5, method="vector")
    assert _ids(wide) == _ids(memory.search(QUERIES[1], session_id=sessions, user_id="alice", k=5, method="vector"))
    assert _ids(wide)[0] == "fact-allergy"

    # An administrator installs it: the next migration adds the column, and the next process converts the
    # vectors already stored, builds the index and uses it.
    pg_fetch("CREATE EXTENSION vector SCHEMA public", url=pgvector_pg.url(database=app_database))
    memory.migrate()
    memory.close()
    later = pgv_memory(url=app, embedder=embedder)
    assert later.wait_for_index(60)
    stored = pg_fetch(f'SELECT count(*), count(vec) FROM "{ns}".message_vectors', url=app)[0]
    assert stored[0] > 0 and stored[1] == stored[0]
    assert pg_fetch("SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname LIKE 'message_vectors_hnsw_%'",
                    ns, url=app)
    assert _ids(later.search(QUERIES[1], user_id="alice", k=5, method="vector")) == _ids(wide)
    later.close()
    assert _wait_for_scans(app, ns) >= 1


def test_the_plain_column_on_a_postgresql_without_pgvector(make_memory: Callable[..., HybridMemory],
                                                           embedder: OfflineEmbedder,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    if pg_fetch("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"):
        pytest.fail("the machine's PostgreSQL was expected without pgvector (see the services notes)")
    with caplog.at_level(logging.WARNING, logger="langchain_hybrid_memory"):
        memory = make_memory(embedder=embedder, recall_index_interval=0.1)
        data = _data()
        _load(memory, data)
    assert "pgvector" not in caplog.text  # nothing to say where the server has none
    ns = memory.config.namespace
    assert pg_fetch(f'SELECT max(version) FROM "{ns}".schema_migrations')[0][0] >= 7
    assert pg_fetch("SELECT 1 FROM information_schema.columns WHERE table_schema = $1 AND column_name = 'vec'",
                    ns) == []
    sessions = sorted(data["alice"])
    for query in QUERIES:
        wide = memory.search(query, user_id="alice", k=5, method="vector")
        assert _ids(wide) == _ids(memory.search(query, session_id=sessions, user_id="alice", k=5, method="vector"))
    assert _ids(memory.search(QUERIES[2], user_id="alice", k=1, method="vector")) == ["fact-key"]
