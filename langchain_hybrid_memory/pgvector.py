"""pgvector, where PostgreSQL has it: recall's vectors also in a `vector` column, and one HNSW index per model
for the user-wide vector search.

Migration 0007 adds the column (`vec`, without fixed dimensions: models differ) where the extension exists or
can be created. Vectors are stored as everywhere (the plain column, by the embedder); the indexer then copies
them into `vec` in small batches, since each row it adds to an HNSW index costs milliseconds, too long for the
embedder's transaction. Each model gets a partial expression index, `(vec::vector(dims)) vector_cosine_ops WHERE
model_id = m AND vector_dims(vec) = dims`; the search names the same expression and predicate, as literals, so
that the planner's generic plan uses that index.

The plain column stays the source of scores: the index only picks candidates, which are then scored exactly. A
session or a few sessions are always scored exactly (the index ranks every user's vectors: filtered down to a few
sessions, too few would be left), and so is a user the index cannot serve.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from .store import PostgresStore

log = logging.getLogger("langchain_hybrid_memory")

MAX_DIMS = 2000  # pgvector 0.6's limit for an HNSW index on `vector` (migration 0007 names it in bytes, 8000)
# How many nearest (of every user) the index is asked for: `hnsw.ef_search` is set to it too, an index scan
# returning no more than that. The user's are kept; a user holding a small share of the vectors needs more.
# A few fixed steps, written into the SQL: one prepared statement each.
LIMITS = (100, 200, 400, 1000)  # 1000: pgvector's bound for hnsw.ef_search
_EXACT_FOR = 60.0  # a user the largest step could not serve is scored exactly for this long, then tried again
_CONVERT_BATCH = 50  # rows per transaction copied into `vec` (erasure of their sessions waits for one)
_BUILD_TIMEOUT = 3600.0
_BUILD_RETRY = 300.0

# The schema of pgvector's type, where the namespace has the column.
_COLUMN = """
SELECT n.nspname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE a.attrelid = to_regclass('message_vectors') AND a.attname = 'vec' AND NOT a.attisdropped
   AND t.typname = 'vector'
"""
_INDEX_VALID = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)"
_BUILD_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('hybrid_memory:hnsw:' || current_schema() || $1, 0))"
# Vectors waiting for `vec` (the predicate of migration 0007's partial index); then, under the sessions' shared
# locks (erasure waits), those rows, locked in order and skipping those another process is converting.
_WAITING = ("SELECT DISTINCT session_id FROM message_vectors"
            " WHERE vec IS NULL AND octet_length(embedding) BETWEEN 4 AND 8000 LIMIT $1")
_CLAIM = """
SELECT v.session_id, v.seq, v.embedding FROM message_vectors v
 WHERE v.session_id = ANY($1::text[]) AND v.vec IS NULL AND octet_length(v.embedding) BETWEEN 4 AND 8000
 ORDER BY v.session_id, v.seq LIMIT $2 FOR UPDATE SKIP LOCKED
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def flat(vectors: list[bytes]) -> list[float]:
    """Stored vectors as one list of floats, which the `vec` values are sliced from; NaN and infinities (which
    pgvector refuses) become 0."""
    import numpy as np

    return list(np.nan_to_num(np.frombuffer(b"".join(vectors), dtype=np.float32), nan=0.0, posinf=0.0,
                              neginf=0.0).tolist())


class PgVector:
    """pgvector in this namespace, for this process's model: the statements that use the column and the index.
    Ids, dimensions and the extension's schema come from the catalogs and are written into the SQL."""

    def __init__(self, schema: str, model_id: int, dims: int) -> None:
        s, m, d = _ident(schema), int(model_id), int(dims)
        vector = f"{s}.vector({d})"
        self.dims = d
        self.index = f"message_vectors_hnsw_{m}_{d}"
        self.indexed = False  # the model's index exists and is valid
        self._retry_at = 0.0 if d <= MAX_DIMS else float("inf")
        self._steps: dict[str, tuple[int, float]] = {}  # user -> (step of LIMITS to start at, exact until)
        self._create = (f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {self.index} ON message_vectors"
                        f" USING hnsw ((vec::{vector}) {s}.vector_cosine_ops)"
                        f" WHERE model_id = {m} AND {s}.vector_dims(vec) = {d}")
        # The search, by its LIMIT: the user's vectors among the index's nearest, plus theirs still waiting for
        # `vec` (scored exactly, like the rest): rows (session_id, seq, embedding, found by the index).
        self.nearest_sql = {limit: f"""
WITH near AS (
    SELECT v.session_id, v.seq, v.embedding FROM message_vectors v
     WHERE v.model_id = {m} AND {s}.vector_dims(v.vec) = {d}
     ORDER BY v.vec::{vector} OPERATOR({s}.<=>) $1::float4[]::{vector}
     LIMIT {limit}
)
SELECT n.session_id, n.seq, n.embedding, true FROM near n JOIN sessions s ON s.session_id = n.session_id
 WHERE s.user_id = $2
UNION ALL
SELECT v.session_id, v.seq, v.embedding, false FROM sessions s JOIN message_vectors v ON v.session_id = s.session_id
 WHERE s.user_id = $2 AND v.model_id = {m} AND v.vec IS NULL AND octet_length(v.embedding) BETWEEN 4 AND 8000
""" for limit in LIMITS}
        # Each row's `vec` sliced out of one flat array of every row's floats ($3), at offset $4, length $5.
        self._convert = f"""
UPDATE message_vectors v SET vec = ($3::float4[])[u.o + 1 : u.o + u.n]::{s}.vector
  FROM unnest($1::text[], $2::bigint[], $4::int[], $5::int[]) AS u(sid, seq, o, n)
 WHERE v.session_id = u.sid AND v.seq = u.seq
"""

    @classmethod
    async def open(cls, store: PostgresStore, model_id: int, dims: int) -> PgVector | None:
        """The namespace's pgvector column for this model; None where it has none (vectors are scored exactly)."""
        schema = await store._run("fetchval", _COLUMN)
        if schema is None:
            return None
        pgv = cls(str(schema), model_id, dims)
        if dims <= MAX_DIMS:
            pgv.indexed = bool(await store._run("fetchval", _INDEX_VALID, pgv.index))
        return pgv

    async def convert_pass(self, store: PostgresStore) -> int:
        """Copy up to `_CONVERT_BATCH` stored vectors (of any model) into `vec`; returns how many it copied.
        Under the sessions' shared advisory locks (as the embedder's writes) but not their rows: commits go on
        meanwhile, and erasure waits for this one transaction."""
        t = store.config.pg_timeout
        sids = sorted(r[0] for r in await store._run("fetch", _WAITING, _CONVERT_BATCH))
        if not sids:
            return 0
        async with store.transaction() as conn:
            await store.lock_sessions(conn, sids, exclusive=False)
            rows = await conn.fetch(_CLAIM, sids, _CONVERT_BATCH, timeout=t)
            if rows:
                sizes = [len(r[2]) // 4 for r in rows]
                await conn.execute(self._convert, [r[0] for r in rows], [r[1] for r in rows],
                                   flat([r[2] for r in rows]), list(itertools.accumulate(sizes[:-1], initial=0)),
                                   sizes, timeout=t)
        return len(rows)

    async def ensure_index(self, store: PostgresStore) -> None:
        """Build the model's index unless it exists (another process's build counts once it is valid).

        CONCURRENTLY: commits, the indexer and erasure go on while it scans the table. On a connection of its
        own, holding a session advisory lock, so that one process builds it; an invalid index left by a build
        that failed is dropped first. A build that fails is retried minutes later; searches stay exact meanwhile.
        """
        if self.indexed or time.monotonic() < self._retry_at:
            return
        if await store._run("fetchval", _INDEX_VALID, self.index):
            self.indexed = True
            return
        try:
            async with store.dedicated() as conn:
                if not await conn.fetchval(_BUILD_LOCK, self.index):
                    return  # another process is building it
                valid = await conn.fetchval(_INDEX_VALID, self.index)
                if valid is False:
                    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {self.index}", timeout=_BUILD_TIMEOUT)
                if not valid:
                    await conn.execute(self._create, timeout=_BUILD_TIMEOUT)
        except asyncpg.PostgresError as exc:
            self._retry_at = time.monotonic() + _BUILD_RETRY
            log.warning("hybrid-memory: could not build the HNSW index %s (%s: %s); vector search stays exact",
                        self.index, type(exc).__name__, exc)
            return
        self.indexed = True

    async def nearest(self, store: PostgresStore, q: list[float], user_id: str, n: int) -> list[Any] | None:
        """At least `n` of the user's vectors nearest `q` by the index, with the user's not in it yet: rows
        (session_id, seq, embedding, found by the index). None when the index cannot answer: fewer than `n` of the
        user's among the most nearest it gives (a user with few vectors, or a small share of a large table).

        The first ask is for twice `n`, as if the user held half the vectors; when fewer of theirs come back, the
        next step is sized by the share that did. The step that served a user is where their next search starts.
        """
        first = next((i for i, limit in enumerate(LIMITS) if limit >= 2 * n), len(LIMITS) - 1)
        step, exact_until = self._steps.get(user_id, (first, 0.0))
        if step >= len(LIMITS) and time.monotonic() < exact_until:
            return None
        step = min(max(step, first), len(LIMITS) - 1)
        while True:
            limit = LIMITS[step]
            async with store.transaction() as conn:
                await conn.execute(f"SET LOCAL hnsw.ef_search = {limit}")
                rows = await conn.fetch(self.nearest_sql[limit], q, user_id, timeout=store.config.pg_timeout)
            found = sum(1 for r in rows if r[3])
            if found >= n:
                self._remember(user_id, step - 1 if found >= 4 * n and step > first else step)
                return list(rows)
            if step == len(LIMITS) - 1:
                self._remember(user_id, len(LIMITS), time.monotonic() + _EXACT_FOR)
                return None
            wanted = limit * n / max(found, 1) * 1.25
            step = max(step + 1, next((i for i, size in enumerate(LIMITS) if size >= wanted), len(LIMITS) - 1))

    def _remember(self, user_id: str, step: int, exact_until: float = 0.0) -> None:
        if len(self._steps) >= 10_000:
            self._steps.clear()
        self._steps[user_id] = (step, exact_until)
