"""Recall: full-text search over every stored message, and the background indexer that keeps it current.

The index (`message_search`, migration 0006) is built after the commit, never on the write path: every commit
path marks the session (`sessions.unindexed_from`, the lowest seq it committed) in the same transaction as its
messages, and the indexer turns marked sessions' new messages into `tsvector`s in batches. A question matches
any of its words (stemmed, stop words dropped), ranked by `ts_rank_cd`; a search is scoped to one session or to
every session of one user, never across users, and that scope is one more lexeme ANDed in the GIN lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError
from .messages import Message, decode
from .summarizers import TokenCounter, default_token_counter

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("langchain_hybrid_memory")

_INDEX_CHARS = 100_000  # of one message's text: a tsvector holds at most 1 MB
_PASS_SESSIONS = 200  # sessions per indexer transaction
_PASS_MESSAGES = 2000  # messages per session per transaction (a backfill goes on in the next one)


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
_MARK = ("UPDATE sessions s SET unindexed_from = u.since FROM unnest($1::text[], $2::bigint[]) AS u(sid, since)"
         " WHERE s.session_id = u.sid")

# Any of the question's lexemes (as its own configuration normalizes them), within the scope's sessions.
_SEARCH = """
WITH q AS (
    SELECT (string_agg(quote_literal(l), ' | '))::tsquery AS words
      FROM unnest(tsvector_to_array(to_tsvector($1::regconfig, $2))) AS l
), scope AS (
    SELECT (string_agg(quote_literal('s:' || md5(sid)), ' | '))::tsquery AS sessions
      FROM (SELECT unnest($3::text[]) AS sid UNION SELECT session_id FROM sessions WHERE user_id = $4) x
)
SELECT s.session_id, s.seq, m.body, ts_rank_cd(s.tsv, q.words, 1) AS score
  FROM q, scope, message_search s
  JOIN messages m ON m.session_id = s.session_id AND m.seq = s.seq
 WHERE s.tsv @@ (q.words && scope.sessions)
 ORDER BY score DESC, s.seq DESC
 LIMIT $5
"""


class Recall:
    """The indexer (a background task on the engine loop) and the searches."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.last_error: str | None = None
        self._counter: TokenCounter | None = core.token_counter

    # -- the indexer -------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None and self.core.config.search_index:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def poke(self) -> None:
        """Look for committed messages now (engine loop)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        cfg = self.core.config
        delay = cfg.recall_index_interval
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                while await self.index_pass() == _PASS_SESSIONS:
                    pass  # a backlog: go on at once
                delay = cfg.recall_index_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL down, or a bug in one pass: retry later, slower
                self.core.stats.index_failures += 1
                self.last_error = type(exc).__name__
                delay = min(max(delay * 2, cfg.recall_index_interval), 30.0)

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
                try:
                    text = message_text(decode(seq, body))
                except (ValueError, KeyError, TypeError):
                    text = ""  # a body the codec cannot read still counts as indexed (nothing to find in it)
                cols[0].append(sid)
                cols[1].append(seq)
                cols[2].append(text)
            if rows:
                await conn.execute(_INSERT, *cols, self.core.config.search_config, timeout=t)
            # A session with more than one transaction's worth goes on from its next message.
            marks = [max(per[sid]) + 1 if len(per[sid]) >= _PASS_MESSAGES else None for sid in sids]
            await conn.execute(_MARK, sids, marks, timeout=t)
        self.core.stats.indexed += len(rows)
        return len(candidates)

    async def catch_up(self, timeout: float) -> bool:
        """Index until no committed message waits (or `timeout`); False if some still do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.index_pass() == 0:
                return True
        return False

    async def backlog(self) -> int:
        """Sessions with committed messages not yet indexed (all processes)."""
        return int(await self.core.need_store()._run(
            "fetchval", "SELECT count(*) FROM sessions WHERE unindexed_from IS NOT NULL"))

    # -- searches ----------------------------------------------------------------------------------------
    async def find(self, query: str, sids: Sequence[str], uid: str | None, k: int) -> list[SearchHit]:
        """A search within `sids` (each checked against `uid` when given) or, without sessions, every session
        of `uid`."""
        await self.core.ensure_started()
        if not sids and uid is None:
            raise InvalidInputError("a search needs a session_id or a user_id (it never crosses users)")
        for sid in sids:
            await self.core.check_user(sid, uid)
        return await self.search(query, sids, None if sids else uid, k)

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

    async def search(self, query: str, session_ids: Sequence[str], user_id: str | None, k: int
                     ) -> list[SearchHit]:
        """The `k` best matches of `query` within `session_ids` and the sessions of `user_id`."""
        store = self.core.need_store()
        with self.core.health.store_step():
            rows = await store._run("fetch", _SEARCH, self.core.config.search_config, query, list(session_ids),
                                    user_id, k)
        self.core.stats.searches += 1
        return [SearchHit(decode(seq, body), sid, seq, float(score)) for sid, seq, body, score in rows]
