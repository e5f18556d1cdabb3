"""Recall: full-text search over every stored message, and the background indexer that keeps it current.

The index (`message_search`, migration 0006) is built after the commit, never on the write path: every commit
path marks the session (`sessions.unindexed_from`, the lowest seq it committed) in the same transaction as its
messages, and the indexer turns marked sessions' new messages into `tsvector`s in batches. A question matches
any of its words (stemmed, stop words dropped), ranked by `ts_rank_cd`; a search is scoped to one session or to
every session of one user, never across users, and that scope is one more lexeme ANDed in the GIN lookup.

With an embedder, indexed messages also get vectors, scored exactly over the searched scope; for every session
of one user, where PostgreSQL has pgvector, an HNSW index picks the candidates first (pgvector.py). The two
rankings are fused by reciprocal rank.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import EmbedderError, InvalidInputError
from .messages import Message, decode
from .pgvector import PgVector
from .store import StoreDown
from .summarizers import TokenCounter, default_token_counter

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("langchain_hybrid_memory")

_INDEX_CHARS = 100_000  # of one message's text: a tsvector holds at most 1 MB
# An indexer transaction holds its sessions' rows (commits of theirs wait): at most 50 sessions and 200 messages
# each, so it stays short even when it backfills; a full pass is followed by the next at once.
_PASS_SESSIONS = 50
_PASS_MESSAGES = 200
_UPKEEP_INTERVAL = 5.0  # how often an indexer without pgvector work looks for some (a model stored before)
_CONVERT_PER_CYCLE = 20  # transactions copying vectors into pgvector's column per round of the indexer


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One message a search found: where it is (session, seq) and how well it matched (higher is better)."""

    message: Message
    session_id: str
    seq: int
    score: float


def message_text(msg: Message) -> str:
    """The searchable text of a message: its content, or the text parts of a multi-part content."""
    content = msg.content
    if isinstance(content, str):
        text = content
    else:
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        text = "\n".join(parts)
    return text[:_INDEX_CHARS].replace("\x00", " ")


def stored_text(seq: int, body: str) -> str:
    """The searchable text of a stored row; "" for a body the codec cannot read (indexed, nothing to find)."""
    try:
        return message_text(decode(seq, body))
    except (ValueError, KeyError, TypeError):
        return ""


def check_query(query: Any, k: Any, max_chars: int) -> str:
    """The query as searched; a typed error for what cannot be one."""
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a str, not {type(query).__name__}")
    if len(query) > max_chars:
        raise InvalidInputError(f"query is {len(query)} characters; the limit is {max_chars} (max_query_chars)")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise InvalidInputError("k must be an int from 1 to 1000")
    return query.replace("\x00", " ")


# Candidates first, without locks; then the per-session advisory locks erasure takes exclusively (the order every
# writer takes them in: advisory, then row), then the rows themselves, skipping those a commit holds.
_CANDIDATES = "SELECT session_id FROM sessions WHERE unindexed_from IS NOT NULL ORDER BY session_id LIMIT $1"
_CLAIM = ("SELECT session_id, unindexed_from FROM sessions WHERE session_id = ANY($1::text[])"
          " AND unindexed_from IS NOT NULL ORDER BY session_id FOR UPDATE SKIP LOCKED")
_NEW_MESSAGES = """
SELECT d.sid, m.seq, m.body
  FROM unnest($1::text[], $2::bigint[]) AS d(sid, since)
 CROSS JOIN LATERAL (SELECT seq, body FROM messages WHERE session_id = d.sid AND seq >= d.since
                      ORDER BY seq LIMIT $3) m
"""
_INSERT = """
INSERT INTO message_search (session_id, seq, tsv)
SELECT u.sid, u.seq, to_tsvector($4::regconfig, u.txt) || array_to_tsvector(ARRAY['s:' || md5(u.sid)])
  FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(sid, seq, txt)
ON CONFLICT (session_id, seq) DO NOTHING
"""
_MARK = ("UPDATE sessions s SET unindexed_from = u.since, unembedded_from = LEAST(s.unembedded_from, u.first)"
         " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(sid, since, first) WHERE s.session_id = u.sid")

# Embeddings: what waits (read without locks; the embedder runs outside any transaction), then the vectors
# written under the same locks as the indexer's, and each session's mark recomputed from what still waits.
_TO_EMBED_SESSIONS = ("SELECT session_id, unembedded_from FROM sessions WHERE unembedded_from IS NOT NULL"
                      " ORDER BY session_id LIMIT $1")
_TO_EMBED = """
SELECT d.sid, x.seq, x.body
  FROM unnest($1::text[], $2::bigint[]) AS d(sid, since)
 CROSS JOIN LATERAL (SELECT s.seq, m.body FROM message_search s
                       JOIN messages m ON m.session_id = s.session_id AND m.seq = s.seq
                      WHERE s.session_id = d.sid AND s.seq >= d.since
                        AND NOT EXISTS (SELECT 1 FROM message_vectors v WHERE v.session_id = s.session_id
                                                                         AND v.seq = s.seq)
                      ORDER BY s.seq LIMIT $3) x
"""
_CLAIM_EMBEDDED = ("SELECT session_id FROM sessions WHERE session_id = ANY($1::text[]) ORDER BY session_id"
                   " FOR UPDATE SKIP LOCKED")
_STORE_VECTORS = """
INSERT INTO message_vectors (session_id, seq, model_id, embedding)
SELECT u.sid, u.seq, $4, u.e FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u(sid, seq, e)
  JOIN message_search s ON s.session_id = u.sid AND s.seq = u.seq  -- not for a message erased meanwhile
ON CONFLICT (session_id, seq) DO NOTHING
"""
_REMARK = """
UPDATE sessions x SET unembedded_from = (
    SELECT min(s.seq) FROM message_search s
     WHERE s.session_id = x.session_id AND s.seq >= x.unembedded_from
       AND NOT EXISTS (SELECT 1 FROM message_vectors v WHERE v.session_id = s.session_id AND v.seq = s.seq))
 WHERE x.session_id = ANY($1::text[])
"""
_MODEL = ("INSERT INTO embedding_models AS e (name, dims) VALUES ($1, $2) ON CONFLICT (name)"
          " DO UPDATE SET dims = EXCLUDED.dims RETURNING id")
_MODEL_DIMS = "SELECT dims FROM embedding_models WHERE name = $1"
# The scope's vectors stored after `$4` (a cache's newest id, less a margin: ids are taken in one order and
# committed in another), less those the cache has already ($5: its ids above `$4`).
_SCOPE_VECTORS = """
SELECT v.session_id, v.seq, v.embedding, v.emb_id FROM message_vectors v
 WHERE v.model_id = $3 AND v.emb_id > $4 AND v.emb_id <> ALL($5::bigint[])
   AND v.session_id IN (SELECT unnest($1::text[]) UNION SELECT session_id FROM sessions WHERE user_id = $2)
"""
# The vectors of some (session, seq) keys: a partial scope's best hits, for superseding.
_KEY_VECTORS = ("SELECT v.session_id, v.seq, v.embedding FROM unnest($1::text[], $2::bigint[]) AS u(sid, seq)"
                " JOIN message_vectors v ON v.session_id = u.sid AND v.seq = u.seq WHERE v.model_id = $3")
# Vectors committed out of id order by more than this are picked up at the next full read (after
# `_CACHE_REFRESH`), which also drops what other processes erased.
_ID_MARGIN = 256
_CACHE_REFRESH = 60.0
_BODIES = ("SELECT m.session_id, m.seq, m.body FROM unnest($1::text[], $2::bigint[]) AS u(sid, seq)"
           " JOIN messages m ON m.session_id = u.sid AND m.seq = u.seq")
# Reciprocal rank fusion: 1 / (K + rank) per ranking, vectors' counted twice. A small K and the extra weight keep
# a paraphrase's vector hit ahead of messages that share one of its words (benchmarks/bench_recall.py).
_RRF_K = 10
_VECTOR_WEIGHT = 2.0
_CANDIDATES_PER_METHOD = 50
_SUPERSEDE_WITHIN = 10  # candidates looked at for a newer message superseding an older one
METHODS = ("auto", "lexical", "vector", "fused")


@dataclass
class _Scope:
    """A scope's vectors as this process last read them: keys and float32 matrices, in chunks. Or, `partial`,
    only the candidates an HNSW index found for one query (not cached)."""

    at: float
    keys: list[tuple[str, int]]
    rows: dict[tuple[str, int], int]
    chunks: list[Any]  # np.ndarray (float32: numpy has no fast float16 product), one per fetch
    nbytes: int = 0
    partial: bool = False
    ids: list[int] = field(default_factory=list)  # the storage ids read, sorted
    key: tuple[Any, ...] = ()  # in the cache: (model id, sessions, user)

    @property
    def newest(self) -> int:
        return self.ids[-1] if self.ids else 0

    def read(self, rows: Sequence[Any], dims: int) -> None:
        """Add rows (session_id, seq, embedding, storage id) read for the scope."""
        self.extend(rows, dims)
        for r in rows:
            bisect.insort(self.ids, int(r[3]))

    def extend(self, rows: Sequence[Any], dims: int) -> None:
        """Add rows (session_id, seq, embedding, ...) not in it yet; vectors of other dimensions are left out."""
        import numpy as np

        fresh = [r for r in rows if (r[0], r[1]) not in self.rows and len(r[2]) == 4 * dims]
        if not fresh:
            return
        matrix = np.frombuffer(b"".join(r[2] for r in fresh), dtype=np.float32).reshape(len(fresh), -1)
        for r in fresh:
            self.rows[(r[0], r[1])] = len(self.keys)
            self.keys.append((r[0], r[1]))
        self.chunks.append(matrix)
        self.nbytes += matrix.nbytes
        if len(self.chunks) > 16:  # many small fetches: one block again
            self.chunks = [np.concatenate(self.chunks)]


# Any of the question's lexemes (as its own configuration normalizes them), within the scope's sessions; ranked
# first, then only the best rows joined to their messages.
_SEARCH = """
WITH q AS (
    SELECT (string_agg(quote_literal(l), ' | '))::tsquery AS words
      FROM unnest(tsvector_to_array(to_tsvector($1::regconfig, $2))) AS l
), scope AS (
    SELECT (string_agg(quote_literal('s:' || md5(sid)), ' | '))::tsquery AS sessions
      FROM (SELECT unnest($3::text[]) AS sid UNION SELECT session_id FROM sessions WHERE user_id = $4) x
), best AS (
    SELECT s.session_id, s.seq, ts_rank_cd(s.tsv, q.words, 1) AS score
      FROM q, scope, message_search s
     WHERE s.tsv @@ (q.words && scope.sessions)
     ORDER BY score DESC, s.seq DESC
     LIMIT $5
)
SELECT b.session_id, b.seq, m.body, b.score
  FROM best b JOIN messages m ON m.session_id = b.session_id AND m.seq = b.seq
 ORDER BY b.score DESC, b.seq DESC
"""
# The same ranking without the messages (fusion reads the bodies of its final choice only).
_SEARCH_KEYS = _SEARCH[:_SEARCH.index("SELECT b.session_id")] + "SELECT session_id, seq, score FROM best\n"


class Recall:
    """The indexer (a background task on the engine loop) and the searches."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._task: asyncio.Task[None] | None = None
        self._counter: TokenCounter | None = core.token_counter
        self._model_id: int | None = None
        self._pgv: PgVector | None = None  # where the namespace has pgvector's column (known with the model)
        self._upkeep = asyncio.Lock()  # the indexer's loop and `catch_up`: the second waits for the first's
        self._scopes: dict[tuple[Any, ...], _Scope] = {}
        self._embed_delay = core.config.recall_index_interval

    # -- the indexer -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None and self.core.config.search_index:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        cfg = self.core.config
        delay = cfg.recall_index_interval
        embed_at = 0.0  # a failing embedder is retried with backoff; full-text indexing goes on meanwhile
        upkeep_at = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                while await self.index_pass() == _PASS_SESSIONS:
                    pass  # a backlog: go on at once
                delay = cfg.recall_index_interval
            except Exception:  # PostgreSQL down, or a bug in one pass: retry later, slower
                self.core.stats.index_failures += 1
                delay = min(max(delay * 2, cfg.recall_index_interval), 30.0)
                continue
            if self.core.embedder is None:
                continue
            try:
                if time.monotonic() >= embed_at:
                    if await self._embed_all():
                        self._embed_delay = cfg.recall_index_interval
                    else:
                        self._embed_delay = min(self._embed_delay * 2, 300.0)
                        embed_at = time.monotonic() + self._embed_delay
                if self._pgv is not None or time.monotonic() >= upkeep_at:
                    upkeep_at = time.monotonic() + _UPKEEP_INTERVAL
                    await self._pgvector_upkeep(_CONVERT_PER_CYCLE)
            except Exception:  # PostgreSQL went away between the two
                self.core.stats.index_failures += 1

    async def index_pass(self) -> int:
        """Index the new messages of up to `_PASS_SESSIONS` marked sessions, in one transaction; returns how
        many sessions it took (a full pass: more may wait). Raises StoreDown."""
        store = self.core.need_store()
        t = self.core.config.pg_timeout
        async with store.transaction() as conn:
            candidates = [r[0] for r in await conn.fetch(_CANDIDATES, _PASS_SESSIONS, timeout=t)]
            if not candidates:
                return 0
            await store.lock_sessions(conn, candidates, exclusive=False)
            claimed = await conn.fetch(_CLAIM, candidates, timeout=t)
            if not claimed:
                return len(candidates)
            sids, since = [r[0] for r in claimed], [r[1] for r in claimed]
            rows = await conn.fetch(_NEW_MESSAGES, sids, since, _PASS_MESSAGES, timeout=t)
            per: dict[str, list[int]] = {sid: [] for sid in sids}
            cols: tuple[list[str], list[int], list[str]] = ([], [], [])
            for sid, seq, body in rows:
                per[sid].append(seq)
                cols[0].append(sid)
                cols[1].append(seq)
                cols[2].append(stored_text(seq, body))
            if rows:
                await conn.execute(_INSERT, *cols, self.core.config.search_config, timeout=t)
            # A session with more than one transaction's worth goes on from its next message.
            marks = [max(per[sid]) + 1 if len(per[sid]) >= _PASS_MESSAGES else None for sid in sids]
            firsts = [min(per[sid]) if per[sid] else None for sid in sids]
            await conn.execute(_MARK, sids, marks, firsts, timeout=t)
        self.core.stats.indexed += len(rows)
        return len(candidates)

    async def _embed_all(self) -> bool:
        """Embed what waits, pass after pass; False if the embedder failed (the marks stay: retried later)."""
        try:
            while await self.embed_pass() == _PASS_SESSIONS:
                pass
        except StoreDown:
            raise
        except Exception as exc:  # the embedder's failure: search stays full-text only until it answers
            self._embed_failed(exc)
            return False
        return True

    def _embed_failed(self, exc: Exception) -> None:
        self.core.stats.embed_failures += 1
        log.warning("hybrid-memory: the embedder failed (%s); retrying later", type(exc).__name__)

    async def _model(self, dims: int) -> int:
        """This process's model id, registered on first use; and with it pgvector's column, if any."""
        if self._model_id is None:
            assert self.core.embedder is not None
            store = self.core.need_store()
            model_id = int(await store._run("fetchval", _MODEL, self.core.embedder.model, dims))
            self._pgv = await PgVector.open(store, model_id, dims)
            self._model_id = model_id
        return self._model_id

    async def _pgvector_upkeep(self, batches: int | None = None) -> None:
        """Where the namespace has pgvector's column: copy the vectors stored since into it (up to `batches`
        transactions), then, when none waits, build this model's HNSW index unless it exists (copied before, they
        go into the index at its build, far faster than one by one). Raises StoreDown."""
        async with self._upkeep:
            await self._pgvector_work(batches)

    async def _pgvector_work(self, batches: int | None) -> None:
        if self._model_id is None:  # nothing embedded or searched yet: a model stored before is known by name
            assert self.core.embedder is not None
            dims = await self.core.need_store()._run("fetchval", _MODEL_DIMS, self.core.embedder.model)
            if dims is None:
                return
            await self._model(int(dims))
        pgv = self._pgv
        if pgv is None:
            return
        store = self.core.need_store()
        for _ in itertools.count() if batches is None else range(batches):
            if not await pgv.convert_pass(store):
                break
        else:
            return  # more wait: the indexer's next round goes on (full-text indexing comes first)
        await pgv.ensure_index(store)

    async def embed_pass(self) -> int:
        """Embed the indexed messages of up to `_PASS_SESSIONS` sessions that wait for a vector; returns how many
        sessions it looked at. Raises StoreDown, or what the embedder raises."""
        embedder = self.core.embedder
        assert embedder is not None
        store = self.core.need_store()
        t = self.core.config.pg_timeout
        waiting = await store._run("fetch", _TO_EMBED_SESSIONS, _PASS_SESSIONS)
        if not waiting:
            return 0
        sids, since = [r[0] for r in waiting], [r[1] for r in waiting]
        rows = await store._run("fetch", _TO_EMBED, sids, since, _PASS_MESSAGES)
        texts = [stored_text(seq, body)[:8000] or " " for _, seq, body in rows]
        vectors: list[bytes] = []
        for i in range(0, len(texts), 256):
            batch = await asyncio.wait_for(embedder.aembed(texts[i:i + 256]), self.core.config.embed_timeout)
            vectors += [pack_vector(v) for v in batch]
        if vectors:
            model_id = await self._model(len(vectors[0]) // 4)
        async with store.transaction() as conn:
            await store.lock_sessions(conn, sids, exclusive=False)
            mine = [r[0] for r in await conn.fetch(_CLAIM_EMBEDDED, sids, timeout=t)]
            ok = set(mine)
            keep = [i for i, r in enumerate(rows) if r[0] in ok]
            if keep:
                await conn.execute(_STORE_VECTORS, [rows[i][0] for i in keep], [rows[i][1] for i in keep],
                                   [vectors[i] for i in keep], model_id, timeout=t)
            if mine:
                await conn.execute(_REMARK, mine, timeout=t)
        self.core.stats.embedded += len(keep)
        return len(sids)

    async def catch_up(self, timeout: float) -> bool:
        """Index until no committed message waits (or `timeout`); False if some still do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.index_pass() == 0:
                break
        else:
            return False
        if self.core.embedder is None:
            return True
        while loop.time() < deadline:
            try:
                if await asyncio.wait_for(self.embed_pass(), max(0.01, deadline - loop.time())) == 0:
                    break
            except TimeoutError:
                return False  # a slow embedder: full-text search is current, vectors are not yet
            except StoreDown:
                raise
            except Exception as exc:
                self._embed_failed(exc)
                return False  # the embedder is down: full-text search is current, vectors are not
            await asyncio.sleep(0.01)  # sessions a commit holds are retried
        else:
            return False
        try:
            await self._pgvector_upkeep()
        except StoreDown:
            raise
        except Exception:  # searches are right without it (exact where the index cannot answer), only slower
            self.core.stats.index_failures += 1
        return True

    async def backlog(self) -> tuple[int, int]:
        """Sessions with committed messages not yet indexed, and with indexed ones waiting for a vector."""
        row = await self.core.need_store()._run(
            "fetchrow", "SELECT (SELECT count(*) FROM sessions WHERE unindexed_from IS NOT NULL),"
                        " (SELECT count(*) FROM sessions WHERE unembedded_from IS NOT NULL)")
        return int(row[0]), int(row[1])

    # -- searches ----------------------------------------------------------------------------------------
    async def find(self, query: str, sids: Sequence[str], uid: str | None, k: int, method: str = "auto"
                   ) -> list[SearchHit]:
        """A search within `sids` (each checked against `uid` when given) or, without sessions, every session
        of `uid`."""
        await self.core.ensure_started()
        if not sids and uid is None:
            raise InvalidInputError("a search needs a session_id or a user_id (it never crosses users)")
        for sid in sids:
            await self.core.check_user(sid, uid)
        return await self.search(query, sids, None if sids else uid, k, method)

    async def recalled(self, query: str, sids: Sequence[str], uid: str | None, exclude_ids: set[str],
                       max_tokens: int) -> list[Message]:
        """The best matches of `query` but those in `exclude_ids` (what the prompt already shows), within
        `max_tokens`, in conversation order."""
        if max_tokens <= 0:
            return []
        hits = [h for h in await self.find(query, sids, uid, 20) if h.message.id not in exclude_ids]
        if not hits:
            return []
        count = self._counter
        if count is None:
            count = self._counter = await asyncio.to_thread(default_token_counter)  # it may load a file
        chosen: list[SearchHit] = []
        used = 0
        for hit in hits:  # best first
            cost = count(message_text(hit.message))
            if used + cost > max_tokens:
                continue
            chosen.append(hit)
            used += cost
        return [h.message for h in sorted(chosen, key=lambda h: h.seq)]  # seqs grow with time

    async def search(self, query: str, session_ids: Sequence[str], user_id: str | None, k: int,
                     method: str = "auto") -> list[SearchHit]:
        """The `k` best matches of `query` within `session_ids` and the sessions of `user_id`: full-text,
        vectors, or both fused by reciprocal rank ("auto": fused when an embedder is set, else full-text)."""
        if method not in METHODS:
            raise InvalidInputError(f"method must be one of {', '.join(METHODS)}")
        embedder = self.core.embedder
        if method in ("vector", "fused") and embedder is None:
            raise InvalidInputError(f"method={method!r} needs an embedder (HybridMemory(..., embedder=...))")
        store = self.core.need_store()
        self.core.stats.searches += 1
        if method == "lexical" or (method == "auto" and embedder is None):
            with self.core.health.store_step():
                rows = await store._run("fetch", _SEARCH, self.core.config.search_config, query,
                                        list(session_ids), user_id, k)
            return [SearchHit(decode(seq, body), sid, seq, float(score)) for sid, seq, body, score in rows]
        assert embedder is not None
        n = max(k, _CANDIDATES_PER_METHOD)
        with self.core.health.store_step():
            # Both rankings at once: PostgreSQL ranks the words while the query is embedded and the vectors read.
            words = (asyncio.ensure_future(store._run("fetch", _SEARCH_KEYS, self.core.config.search_config, query,
                                                      list(session_ids), user_id, n))
                     if method != "vector" else None)
            try:
                scope, q = await self._vectors(query, session_ids, user_id, n)
            except StoreDown:
                await _discard(words)
                raise
            except Exception as exc:
                lexical = list(await words) if words is not None else []
                self._embed_failed(exc)
                if method != "auto":
                    raise EmbedderError(f"the embedder failed: {type(exc).__name__}") from None
                ranked = {(r[0], r[1]): float(r[2]) for r in lexical[:k]}
                return await self._hits(list(ranked), ranked)
            except BaseException:
                await _discard(words)
                raise
            lexical = [(r[0], r[1]) for r in await words] if words is not None else []
            if scope is not None and scope.partial:
                # The index is approximate (a vector it cannot reach is never among its nearest): full-text's
                # candidates are scored exactly too, so one it missed ranks as when the whole scope is scored.
                await self._complete(scope, lexical)
            scores: dict[tuple[str, int], float] = {}
            for ranking, weight in ((lexical, 1.0), (self._vector_ranking(scope, q, n), _VECTOR_WEIGHT)):
                for rank, key in enumerate(ranking):
                    scores[key] = scores.get(key, 0.0) + weight / (_RRF_K + rank + 1)
            order = sorted(scores, key=lambda key: (-scores[key], -key[1]))
            best = self._supersede(order, scope)[:k]
            return await self._hits(best, scores)

    async def _hits(self, keys: list[tuple[str, int]], scores: dict[tuple[str, int], float]) -> list[SearchHit]:
        """Hits for `keys` in their order, with their messages (one erased meanwhile is left out)."""
        if not keys:
            return []
        with self.core.health.store_step():
            rows = await self.core.need_store()._run("fetch", _BODIES, [k[0] for k in keys], [k[1] for k in keys])
        bodies = {(r[0], r[1]): r[2] for r in rows}
        return [SearchHit(decode(key[1], bodies[key]), key[0], key[1], scores[key]) for key in keys if key in bodies]

    async def _vectors(self, query: str, session_ids: Sequence[str], user_id: str | None, n: int
                       ) -> tuple[_Scope | None, Any]:
        """The query's vector and the vectors to score it against: the scope's (cached, brought up to date), or
        for every session of a user, where an HNSW index can answer, `n` or more candidates it found; (None,
        None) if there are none."""
        import numpy as np

        embedder = self.core.embedder
        assert embedder is not None
        if not query.strip():
            return None, None
        store = self.core.need_store()
        pgv = self._pgv
        by_index = not session_ids and user_id is not None and pgv is not None and pgv.indexed
        # Once the model is known, the scope's new vectors are read while the query is embedded.
        scope, fetch = (None, None) if by_index or self._model_id is None else self._read_scope(
            self._model_id, session_ids, user_id)
        try:
            (qv,) = await asyncio.wait_for(embedder.aembed([query]), self.core.config.embed_timeout)
        except BaseException:
            await _discard(fetch)
            if scope is not None:  # as it was taken: nothing was read into it
                self._remember(scope)
            raise
        q = np.nan_to_num(np.asarray(qv, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        q /= np.linalg.norm(q) or 1.0
        model_id = await self._model(len(q))
        if by_index and pgv is not None and user_id is not None and pgv.dims == len(q):
            found = await pgv.nearest(store, q.tolist(), user_id, n)
            if found is not None:
                near = _Scope(time.monotonic(), [], {}, [], partial=True)
                near.extend(found, len(q))
                return (near if near.keys else None), q
        if scope is None or fetch is None:  # the model was not known yet, or the index could not answer
            scope, fetch = self._read_scope(model_id, session_ids, user_id)
        scope.read(await fetch, len(q))
        self._remember(scope)
        if not scope.keys:
            return None, None
        return scope, q

    def _read_scope(self, model_id: int, session_ids: Sequence[str], user_id: str | None
                    ) -> tuple[_Scope, asyncio.Future[Any]]:
        """The scope's cached vectors (taken out of the cache: `_remember` puts them back) and a query under way
        for those stored since."""
        now = time.monotonic()
        key = (model_id, tuple(sorted(set(session_ids))), user_id)
        scope = self._scopes.pop(key, None)
        if scope is None or now - scope.at > _CACHE_REFRESH:
            scope = _Scope(now, [], {}, [], key=key)
        low = max(0, scope.newest - _ID_MARGIN)
        return scope, asyncio.ensure_future(self.core.need_store()._run(
            "fetch", _SCOPE_VECTORS, list(session_ids), user_id, model_id, low,
            scope.ids[bisect.bisect_right(scope.ids, low):]))

    def _remember(self, scope: _Scope) -> None:
        budget = self.core.config.recall_cache_mb * 1_000_000
        self._scopes[scope.key] = scope  # most recent last
        total = sum(s.nbytes for s in self._scopes.values())
        while self._scopes and total > budget:
            oldest = next(iter(self._scopes))
            total -= self._scopes.pop(oldest).nbytes

    async def _complete(self, scope: _Scope, keys: list[tuple[str, int]]) -> None:
        """Add to a partial scope the vectors of `keys` it lacks (full-text search's candidates)."""
        missing = [key for key in keys if key not in scope.rows]
        if missing and scope.chunks and self._model_id is not None:
            rows = await self.core.need_store()._run("fetch", _KEY_VECTORS, [k[0] for k in missing],
                                                     [k[1] for k in missing], self._model_id)
            scope.extend(rows, scope.chunks[0].shape[1])

    def forget_vectors(self) -> None:
        """Drop the cached vectors (messages were erased here)."""
        self._scopes.clear()

    @staticmethod
    def _similarities(scope: _Scope, q: Any) -> Any:
        import numpy as np

        return np.concatenate([chunk @ q for chunk in scope.chunks])

    def _vector_ranking(self, scope: _Scope | None, q: Any, n: int) -> list[tuple[str, int]]:
        """The scope's messages by cosine similarity to the query, best first (exact: every vector scored)."""
        import numpy as np

        if scope is None:
            return []
        sims = self._similarities(scope, q)
        if len(sims) > n:
            part = np.argpartition(-sims, n)[:n]
            top = part[np.argsort(-sims[part])]
        else:
            top = np.argsort(-sims)
        return [scope.keys[i] for i in top if sims[i] > 0]

    def _supersede(self, ranked: list[tuple[str, int]], scope: _Scope | None) -> list[tuple[str, int]]:
        """A later message very similar to an earlier one among the best moves just before it: what the user
        said last about a thing comes first."""
        import numpy as np

        if scope is None or len(ranked) < 2:
            return ranked
        head = [key for key in ranked[:_SUPERSEDE_WITHIN] if key in scope.rows]
        if len(head) < 2:
            return ranked
        matrix = np.stack([self._row(scope, scope.rows[key]) for key in head])
        sims = matrix @ matrix.T
        where = {key: i for i, key in enumerate(head)}
        out = list(ranked)
        threshold = self.core.config.recall_supersede_similarity
        for _ in range(len(head)):
            moved = False
            for p, older in enumerate(out[:_SUPERSEDE_WITHIN]):
                if older not in where:
                    continue
                newer = [b for b in out[p + 1:_SUPERSEDE_WITHIN] if b in where and b[0] == older[0]
                         and b[1] > older[1] and sims[where[older], where[b]] >= threshold]
                if newer:
                    b = max(newer, key=lambda key: key[1])
                    out.remove(b)
                    out.insert(p, b)
                    moved = True
                    break
            if not moved:
                break
        return out

    @staticmethod
    def _row(scope: _Scope, i: int) -> Any:
        for chunk in scope.chunks:
            if i < len(chunk):
                return chunk[i]
            i -= len(chunk)
        raise IndexError(i)


async def _discard(task: asyncio.Future[Any] | None) -> None:
    """Wait out a query whose answer is no longer wanted (its failure included)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def pack_vector(vector: Sequence[float]) -> bytes:
    """A vector as stored: float32, normalized (so a dot product is the cosine)."""
    import numpy as np

    # NaN and infinities (a broken embedder) become 0: they would spoil every score, and pgvector refuses them.
    v = np.nan_to_num(np.asarray(vector, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norm = float(np.linalg.norm(v))
    return (v / norm if norm else v).astype(np.float32).tobytes()
