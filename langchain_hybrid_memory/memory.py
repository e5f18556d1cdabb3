"""`HybridMemory`: the facade. Lifecycle, the public API and its argument checks; the work is done elsewhere.

Every public operation has a sync and an async form. Both run the same coroutine on the engine loop
(`_loop.py`), so there is one implementation of each behaviour. The hot calls (append, window read, context
read) first try one Redis round trip from the caller's own thread or loop; the sync and async forms differ
only in how they make that call, and hand its reply to the same code (`finish_hot_*` in reads.py / writes.py).
A read that misses continues there too when that loop or thread has a PostgreSQL connection for it (`*_here`,
`cold_private` in reads.py), else on the engine loop.

Where things live: core.py (shared state, start, close), health.py (failover), reads.py, writes.py,
refill.py, erasure.py, summaries.py (the summary operations and worker), recall.py (search and its indexer),
outbox.py (write-behind), cache/ (Redis), store.py (PostgreSQL), pickling.py.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from . import pickling
from .cache import Miss
from .config import HybridConfig, Mode, redact_url, seconds
from .core import UNKNOWN, Core
from .erasure import Eraser
from .errors import InvalidInputError, MemoryClosedError, StorageUnavailableError
from .messages import Context, Message, check_session_id, check_user_id, prepare
from .reads import ReadPath
from .recall import Recall, SearchHit, check_query
from .refill import ProgressFn, Refiller
from .stats import CacheStats
from .store import StoreDown
from .summaries import SummaryOps
from .summarizers import TokenCounter
from .writes import WritePath

log = logging.getLogger("langchain_hybrid_memory")
T = TypeVar("T")


class HybridMemory:
    """Chat memory on a Redis window over PostgreSQL. No I/O happens until the first call."""

    def __init__(self, config: HybridConfig | None = None, *, summarizer: Any = None,
                 token_counter: TokenCounter | None = None, embedder: Any = None, **overrides: Any) -> None:
        """`summarizer`: a Summarizer, LangChain chat model, LlamaIndex LLM or `fn(previous, messages)`;
        default OpenAI when OPENAI_API_KEY is set, else the offline one. Used when enable_auto_summarize.
        `embedder` (embeddings.py: OpenAIEmbedder, OfflineEmbedder, a LangChain `Embeddings`, a LlamaIndex
        embedding model or `fn(texts) -> vectors`) adds vector search to full-text search; none by default."""
        if config is None:
            config = HybridConfig.from_env(**overrides)
        elif overrides:
            config = HybridConfig(**{**dict(config), **overrides})
        self.config = config
        core = self._core = Core(config, summarizer, token_counter, embedder)
        self.keys = core.keys
        self._refill = Refiller(core)
        self._reads = ReadPath(core, self._refill)
        self._writes = WritePath(core, self._refill, self._reads)
        self._erasure = Eraser(core, self._reads)
        self._summary_ops = SummaryOps(core)
        self._atexit = _register_atexit(self)
        self._token = pickling.register(self)  # names this engine in pickles taken from it

    def __repr__(self) -> str:
        c = self.config
        return (f"HybridMemory(mode={c.mode.value!r}, namespace={c.namespace!r}, "
                f"redis={redact_url(c.redis_dsn())!r}, database={redact_url(c.database_dsn())!r})")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle as a handle to the engine (see pickling.py): in this process, unpickling (or
        `copy.deepcopy`) gives this very engine; in another, a new one from the same settings, with passwords
        from DATABASE_URL / REDIS_URL / REDIS_PASSWORD (a pickle never carries one). A closed engine comes back
        closed. A custom summarizer or token counter is not carried: another process uses the defaults."""
        return pickling.reduce(self, self._token)

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def redis_available(self) -> bool:
        return self._core.health.redis_up

    @property
    def postgres_available(self) -> bool:
        return self._core.health.pg_up

    def start(self) -> None:
        """Connect now (optional: every call connects lazily)."""
        self._core.engine.run(self._core.start())

    async def astart(self) -> None:
        await self._core.engine.arun(self._core.start())

    def close(self, flush_timeout: float = 10.0) -> None:
        """Flush the write-behind queue (bounded by `flush_timeout`), then close connections."""
        core = self._core
        if core.engine.in_loop():
            raise RuntimeError("use aclose() from the engine loop")
        for fut in core.close_loop_caches():
            # A task on this thread's own loop (a sync close inside a running loop) finishes after we return.
            if isinstance(fut, concurrent.futures.Future):
                with contextlib.suppress(Exception):
                    fut.result(5)
        core.close_private()
        try:
            core.engine.run(core.close(flush_timeout), timeout=flush_timeout + 15)
        except TimeoutError:
            log.warning("hybrid-memory: close() timed out; what is unflushed stays in the Redis outbox")
        finally:
            core.engine.stop()
            atexit.unregister(self._atexit)

    async def aclose(self, flush_timeout: float = 10.0) -> None:
        core = self._core
        closing = [asyncio.wrap_future(f) for f in core.close_loop_caches()]
        if closing:
            await asyncio.wait(closing, timeout=5)
        await asyncio.to_thread(core.close_private)
        try:
            await core.engine.arun(core.close(flush_timeout))
        finally:
            await core.engine.astop()
            atexit.unregister(self._atexit)

    def __enter__(self) -> HybridMemory:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> HybridMemory:
        await self.astart()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._core.closed:
            coro.close()
            raise MemoryClosedError("this HybridMemory is closed")
        return self._core.engine.run(coro)

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._core.closed:
            coro.close()
            raise MemoryClosedError("this HybridMemory is closed")
        return await self._core.engine.arun(coro)

    # -- argument checks ---------------------------------------------------------------------------------
    def _prepare(self, session_id: str, user_id: str | None, messages: Iterable[Message | dict[str, Any]],
                 ) -> tuple[str, str | None, list[Message], list[str]]:
        cfg = self.config
        sid = check_session_id(session_id, cfg.max_session_id_length)
        uid = check_user_id(user_id, cfg.max_session_id_length)
        items, payloads = prepare(messages, max_bytes=cfg.max_message_bytes, max_count=cfg.max_messages_per_add)
        return sid, uid, items, payloads

    def _read_args(self, session_id: str, user_id: str | None, limit: int | None) -> tuple[str, str | None, int]:
        sid = check_session_id(session_id, self.config.max_session_id_length)
        uid = check_user_id(user_id, self.config.max_session_id_length)
        if limit is None:
            limit = self.config.max_session_messages
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInputError("limit must be a non-negative int")
        return sid, uid, limit

    def _ids(self, session_id: str, user_id: str | None) -> tuple[str, str | None]:
        return self._read_args(session_id, user_id, 0)[:2]

    def _uid(self, user_id: str) -> str:
        uid = check_user_id(user_id, self.config.max_session_id_length)
        if uid is None:
            raise TypeError("user_id is required")
        return uid

    # -- write path (writes.py) --------------------------------------------------------------------------
    def add_messages(self, session_id: str, messages: Iterable[Message | dict[str, Any]], *,
                     user_id: str | None = None) -> list[Message]:
        """Append messages (oldest first); returns copies carrying their assigned `seq`."""
        sid, uid, items, payloads = self._prepare(session_id, user_id, messages)
        core, got = self._core, UNKNOWN
        if items and core.hot(0) and not core.write_through and core.sync is not None:
            self._writes.check_room(len(items))
            t0 = time.perf_counter()
            try:
                got = core.sync.append(sid, uid, [m.id for m in items], payloads,
                                       persist=self.config.mode is Mode.HYBRID)
            except Exception as exc:  # handed over: finish_hot_append decides what each error means
                got = exc
            got = self._writes.finish_hot_append(got, sid, uid, items, payloads, t0)
            if got is items:
                return items
        return self._run(self._writes.add(sid, uid, items, payloads, got))

    async def aadd_messages(self, session_id: str, messages: Iterable[Message | dict[str, Any]], *,
                            user_id: str | None = None) -> list[Message]:
        sid, uid, items, payloads = self._prepare(session_id, user_id, messages)
        core, got = self._core, UNKNOWN
        cache = core.loop_cache() if items and core.hot(0) and not core.write_through else None
        if cache is not None:
            self._writes.check_room(len(items))
            t0 = time.perf_counter()
            try:
                got = await cache.append(sid, uid, [m.id for m in items], payloads,
                                         persist=self.config.mode is Mode.HYBRID)
            except Exception as exc:  # handed over: finish_hot_append decides what each error means
                got = exc
            got = self._writes.finish_hot_append(got, sid, uid, items, payloads, t0)
            if got is items:
                return items
        return await self._arun(self._writes.add(sid, uid, items, payloads, got))

    # -- read path (reads.py) ----------------------------------------------------------------------------
    def get_recent_messages(self, session_id: str, limit: int | None = None, *,
                            user_id: str | None = None) -> list[Message]:
        """The last `limit` messages (default: the window), oldest first."""
        sid, uid, n = self._read_args(session_id, user_id, limit)
        core, got = self._core, UNKNOWN
        if n and core.hot_read(n, sid) and core.sync is not None:
            t0 = time.perf_counter()
            try:
                got = core.sync.read(sid, n)
            except Exception as exc:  # handed over: finish_hot_read decides what each error means
                got = exc
            got = self._reads.finish_hot_read(got, uid, t0)
            if isinstance(got, list):
                return got
            if isinstance(got, Miss) and not got.waiting and (conn := core.private_store()) is not None:
                out = self._reads.answer_recent(sid, self._reads.cold_private(sid, uid, conn), n, got, t0)
                if out is not None:
                    return out
        return self._run(self._reads.recent(sid, uid, n, got))

    async def aget_recent_messages(self, session_id: str, limit: int | None = None, *,
                                   user_id: str | None = None) -> list[Message]:
        sid, uid, n = self._read_args(session_id, user_id, limit)
        core, got = self._core, UNKNOWN
        cache = core.loop_cache() if n and core.hot_read(n, sid) else None
        if cache is not None:
            t0 = time.perf_counter()
            try:
                got = await cache.read(sid, n)
            except Exception as exc:  # handed over: finish_hot_read decides what each error means
                got = exc
            got = self._reads.finish_hot_read(got, uid, t0)
            if isinstance(got, list):
                return got
            if isinstance(got, Miss) and (conn := core.loop_store()) is not None:
                out = self._reads.answer_recent(sid, await self._reads.cold_here(sid, uid, got, cache, conn), n,
                                                got, t0)
                if out is not None:
                    return out
                got = UNKNOWN
        return await self._arun(self._reads.recent(sid, uid, n, got))

    def get_context(self, session_id: str, *, user_id: str | None = None, query: str | None = None) -> Context:
        """What a prompt should carry: the session's latest summary (if any), then the messages after it.

        With auto-summarization every message after the summary is included (no gap, no overlap); without it
        (summaries stored with `save_summary`, or none) the messages are capped to the recent window.
        One Redis round trip when cached. With `query`, `recalled` also holds the session's older messages
        that best match it (not already in the window), within `recall_max_tokens`, in conversation order.
        """
        sid, uid = self._ids(session_id, user_id)
        if query is not None:
            q = check_query(query, 1, self.config.max_query_chars)
            found = self.get_context(sid, user_id=uid)
            found.recalled = self._run(self._recalled(q, [sid], None, {m.id for m in found.messages}, None))
            return found
        core, got = self._core, UNKNOWN
        if core.hot_read(0, sid) and core.sync is not None:
            t0 = time.perf_counter()
            try:
                got = core.sync.context(sid)
            except Exception as exc:  # handed over: finish_hot_context decides what each error means
                got = exc
            got = self._reads.finish_hot_context(got, uid, t0)
            if isinstance(got, Context):
                return got
            if isinstance(got, Miss) and not got.waiting and (conn := core.private_store()) is not None:
                ctx = self._reads.answer_context(sid, self._reads.cold_private(sid, uid, conn), got, t0)
                if ctx is not None:
                    return ctx
        return self._run(self._reads.context(sid, uid, got))

    async def aget_context(self, session_id: str, *, user_id: str | None = None,
                           query: str | None = None) -> Context:
        sid, uid = self._ids(session_id, user_id)
        if query is not None:
            q = check_query(query, 1, self.config.max_query_chars)
            found = await self.aget_context(sid, user_id=uid)
            found.recalled = await self._arun(self._recalled(q, [sid], None, {m.id for m in found.messages},
                                                             None))
            return found
        core, got = self._core, UNKNOWN
        cache = core.loop_cache() if core.hot_read(0, sid) else None
        if cache is not None:
            t0 = time.perf_counter()
            try:
                got = await cache.context(sid)
            except Exception as exc:  # handed over: finish_hot_context decides what each error means
                got = exc
            got = self._reads.finish_hot_context(got, uid, t0)
            if isinstance(got, Context):
                return got
            if isinstance(got, Miss) and (conn := core.loop_store()) is not None:
                ctx = self._reads.answer_context(sid, await self._reads.cold_here(sid, uid, got, cache, conn), got,
                                                 t0)
                if ctx is not None:
                    return ctx
                got = UNKNOWN
        return await self._arun(self._reads.context(sid, uid, got))

    # -- recall (recall.py) ------------------------------------------------------------------------------
    def search(self, query: str, *, session_id: str | Sequence[str] | None = None, user_id: str | None = None,
               k: int = 5, method: str = "auto") -> list[SearchHit]:
        """The `k` messages that best match `query`, in a session (or several), or in every session of one
        user; never across users: with both, each session must be the user's.

        `method`: "lexical" (full-text: any of the query's words, ranked), "vector" (cosine similarity to the
        query's embedding), "fused" (both, by reciprocal rank), or "auto" (fused with an embedder, else
        full-text; full-text alone while the embedder fails). Searches what is committed and indexed: the
        indexer follows the commits by about `recall_index_interval`."""
        sids, uid, q = self._search_args(query, session_id, user_id, k)
        return self._run(self._search(q, sids, uid, k, method))

    async def asearch(self, query: str, *, session_id: str | Sequence[str] | None = None,
                      user_id: str | None = None, k: int = 5, method: str = "auto") -> list[SearchHit]:
        sids, uid, q = self._search_args(query, session_id, user_id, k)
        return await self._arun(self._search(q, sids, uid, k, method))

    def recall(self, query: str, *, session_id: str | Sequence[str] | None = None, user_id: str | None = None,
               exclude_ids: Iterable[str] = (), max_tokens: int | None = None) -> list[Message]:
        """The stored messages that best match `query` and are not in `exclude_ids` (what the prompt already
        shows), within `max_tokens` (default `recall_max_tokens`), in conversation order."""
        sids, uid, q = self._search_args(query, session_id, user_id, 1)
        return self._run(self._recalled(q, sids, uid, set(exclude_ids), max_tokens))

    async def arecall(self, query: str, *, session_id: str | Sequence[str] | None = None,
                      user_id: str | None = None, exclude_ids: Iterable[str] = (),
                      max_tokens: int | None = None) -> list[Message]:
        sids, uid, q = self._search_args(query, session_id, user_id, 1)
        return await self._arun(self._recalled(q, sids, uid, set(exclude_ids), max_tokens))

    def wait_for_index(self, timeout: float = 60.0) -> bool:
        """Commit this process's writes, then index every committed message; False if `timeout` ran out."""
        return self._run(self._catch_up(timeout))

    async def await_for_index(self, timeout: float = 60.0) -> bool:
        return await self._arun(self._catch_up(timeout))

    def _search_args(self, query: str, session_id: str | Sequence[str] | None, user_id: str | None, k: int
                     ) -> tuple[list[str], str | None, str]:
        q = check_query(query, k, self.config.max_query_chars)
        uid = self._uid(user_id) if user_id is not None else None
        if session_id is None:
            return [], uid, q
        sids = [session_id] if isinstance(session_id, str) else list(session_id)
        if not sids:
            raise InvalidInputError("session_id is an empty list")
        return [check_session_id(s, self.config.max_session_id_length) for s in sids], uid, q

    def _recall(self) -> Recall:
        if self._core.recall is None:
            raise StorageUnavailableError("search needs PostgreSQL (mode hybrid or persistent)")
        return self._core.recall

    async def _search(self, query: str, sids: list[str], uid: str | None, k: int, method: str
                      ) -> list[SearchHit]:
        await self._core.ensure_started()
        return await self._recall().find(query, sids, uid, k, method)

    async def _recalled(self, query: str, sids: list[str], uid: str | None, exclude: set[str],
                        max_tokens: int | None) -> list[Message]:
        await self._core.ensure_started()
        budget = self.config.recall_max_tokens if max_tokens is None else max_tokens
        return await self._recall().recalled(query, sids, uid, exclude, budget)

    async def _catch_up(self, timeout: float) -> bool:
        await self._core.flush(timeout)
        with self._core.health.store_step():
            return await self._recall().catch_up(timeout)

    def get_messages(self, session_id: str, *, after_seq: int | None = None, limit: int | None = None,
                     user_id: str | None = None) -> list[Message]:
        """The full transcript from the system of record, oldest first; page with `after_seq` + `limit`."""
        return self._run(self._reads.page(*self._ids(session_id, user_id), after_seq, limit))

    async def aget_messages(self, session_id: str, *, after_seq: int | None = None, limit: int | None = None,
                            user_id: str | None = None) -> list[Message]:
        return await self._arun(self._reads.page(*self._ids(session_id, user_id), after_seq, limit))

    # -- summaries (summaries.py) ------------------------------------------------------------------------
    def get_summaries(self, session_id: str, *, user_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored summary of the session, oldest first (ranges, text, model, token counts, time)."""
        return self._run(self._summary_ops.list(*self._ids(session_id, user_id)))

    async def aget_summaries(self, session_id: str, *, user_id: str | None = None) -> list[dict[str, Any]]:
        return await self._arun(self._summary_ops.list(*self._ids(session_id, user_id)))

    def set_auto_summarize(self, session_id: str, enabled: bool, *, user_id: str | None = None) -> None:
        """The per-session kill switch (stored in PostgreSQL, honoured by every process)."""
        self._run(self._summary_ops.set_enabled(*self._ids(session_id, user_id), enabled))

    async def aset_auto_summarize(self, session_id: str, enabled: bool, *, user_id: str | None = None) -> None:
        await self._arun(self._summary_ops.set_enabled(*self._ids(session_id, user_id), enabled))

    def save_summary(self, session_id: str, summary: str, *, upto_message_id: str, user_id: str | None = None,
                     model: str = "external") -> bool:
        """Store a summary made outside the engine (e.g. by LangChain's SummarizationMiddleware) as the next
        one: it covers the messages after the current summary up to `upto_message_id`. False if that message is
        unknown or already covered, or another summary landed first."""
        return self._run(self._summary_ops.save(*self._ids(session_id, user_id), summary, upto_message_id, model))

    async def asave_summary(self, session_id: str, summary: str, *, upto_message_id: str,
                            user_id: str | None = None, model: str = "external") -> bool:
        return await self._arun(
            self._summary_ops.save(*self._ids(session_id, user_id), summary, upto_message_id, model))

    def summarize_now(self, session_id: str, *, user_id: str | None = None) -> int:
        """Make the summaries that are due for this session now (waits for the LLM); returns how many."""
        return self._run(self._summary_ops.make_due(*self._ids(session_id, user_id)))

    async def asummarize_now(self, session_id: str, *, user_id: str | None = None) -> int:
        return await self._arun(self._summary_ops.make_due(*self._ids(session_id, user_id)))

    def wait_for_summaries(self, timeout: float | None = 60.0) -> bool:
        """Wait until no summary is due or running; False on timeout (e.g. the LLM keeps failing)."""
        return self._run(self._summary_ops.wait(timeout))

    async def await_for_summaries(self, timeout: float | None = 60.0) -> bool:
        return await self._arun(self._summary_ops.wait(timeout))

    # -- invalidation and erasure (erasure.py) -----------------------------------------------------------
    def invalidate_session(self, session_id: str, *, user_id: str | None = None) -> None:
        """Drop the cached window (PostgreSQL keeps everything); the next read reloads it."""
        self._run(self._erasure.invalidate(*self._ids(session_id, user_id)))

    async def ainvalidate_session(self, session_id: str, *, user_id: str | None = None) -> None:
        await self._arun(self._erasure.invalidate(*self._ids(session_id, user_id)))

    def invalidate_user(self, user_id: str) -> int:
        """Drop the cached windows of every session of `user_id`; returns how many sessions."""
        return self._run(self._erasure.invalidate_user(self._uid(user_id)))

    async def ainvalidate_user(self, user_id: str) -> int:
        return await self._arun(self._erasure.invalidate_user(self._uid(user_id)))

    def clear_session(self, session_id: str, *, user_id: str | None = None) -> int:
        """Erase a session from both stores; returns the number of stored messages deleted."""
        return self._run(self._erasure.clear(*self._ids(session_id, user_id)))

    async def aclear_session(self, session_id: str, *, user_id: str | None = None) -> int:
        return await self._arun(self._erasure.clear(*self._ids(session_id, user_id)))

    def delete_messages(self, session_id: str, seqs: Iterable[int], *, user_id: str | None = None) -> int:
        """Delete single messages by `seq` from both stores; returns how many PostgreSQL held."""
        sid, uid = self._ids(session_id, user_id)
        return self._run(self._erasure.delete_messages(sid, uid, [int(s) for s in seqs]))

    async def adelete_messages(self, session_id: str, seqs: Iterable[int], *, user_id: str | None = None) -> int:
        sid, uid = self._ids(session_id, user_id)
        return await self._arun(self._erasure.delete_messages(sid, uid, [int(s) for s in seqs]))

    def list_sessions(self, *, user_id: str | None = None, limit: int | None = None) -> list[str]:
        """Ids of the sessions holding messages (of one user, if given), sorted; from PostgreSQL once every
        waiting write (any process's) is committed, or Redis in session_only mode."""
        uid = check_user_id(user_id, self.config.max_session_id_length)
        return self._run(self._erasure.list_sessions(uid, limit))

    async def alist_sessions(self, *, user_id: str | None = None, limit: int | None = None) -> list[str]:
        uid = check_user_id(user_id, self.config.max_session_id_length)
        return await self._arun(self._erasure.list_sessions(uid, limit))

    def delete_user(self, user_id: str) -> int:
        """Erase every session of `user_id` from Redis and PostgreSQL; returns how many sessions."""
        return self._run(self._erasure.delete_user(self._uid(user_id)))

    async def adelete_user(self, user_id: str) -> int:
        return await self._arun(self._erasure.delete_user(self._uid(user_id)))

    def purge_idle_sessions(self, older_than: float | timedelta, *, on_progress: ProgressFn | None = None) -> int:
        """Retention: erase sessions idle longer than `older_than` (seconds or timedelta) from both stores."""
        return self._run(self._erasure.purge_idle(float(seconds(older_than)), on_progress))

    async def apurge_idle_sessions(self, older_than: float | timedelta, *,
                                   on_progress: ProgressFn | None = None) -> int:
        return await self._arun(self._erasure.purge_idle(float(seconds(older_than)), on_progress))

    # -- warming (refill.py) -----------------------------------------------------------------------------
    def prefetch_context(self, session_ids: str | Iterable[str] | None = None, *, user_id: str | None = None,
                         on_progress: ProgressFn | None = None) -> int:
        """Load windows into Redis ahead of use (given sessions, or a user's); returns how many were loaded."""
        return self._run(self._prefetch(session_ids, user_id, on_progress))

    async def aprefetch_context(self, session_ids: str | Iterable[str] | None = None, *,
                                user_id: str | None = None, on_progress: ProgressFn | None = None) -> int:
        return await self._arun(self._prefetch(session_ids, user_id, on_progress))

    async def _prefetch(self, session_ids: str | Iterable[str] | None, user_id: str | None,
                        on_progress: ProgressFn | None) -> int:
        await self._core.ensure_started()
        if isinstance(session_ids, str):
            session_ids = [session_ids]
        sids = [check_session_id(s, self.config.max_session_id_length) for s in session_ids or ()]
        if user_id is not None:
            sids += await self._erasure.user_sessions(self._uid(user_id))
        return await self._refill.prefetch(sids, on_progress)

    def warmup(self, limit: int = 1000, *, active_within: float | None = None,
               on_progress: ProgressFn | None = None) -> int:
        """Preload the most recently active sessions (e.g. after a Redis restart); returns how many."""
        return self._run(self._warmup(limit, active_within, on_progress))

    async def awarmup(self, limit: int = 1000, *, active_within: float | None = None,
                      on_progress: ProgressFn | None = None) -> int:
        return await self._arun(self._warmup(limit, active_within, on_progress))

    async def _warmup(self, limit: int, active_within: float | None, on_progress: ProgressFn | None) -> int:
        await self._core.ensure_started()
        return await self._refill.warmup(limit, active_within, on_progress)

    # -- durability (outbox.py) --------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Return once every write this process acknowledged is committed in PostgreSQL."""
        self._run(self._core.flush(timeout))

    async def aflush(self, timeout: float | None = None) -> None:
        await self._arun(self._core.flush(timeout))

    def reclaim_orphans(self, older_than: float | None = None) -> int:
        """Persist outbox entries left by dead writers (run by every process's janitor anyway)."""
        return self._run(self._reclaim(older_than))

    async def areclaim_orphans(self, older_than: float | None = None) -> int:
        return await self._arun(self._reclaim(older_than))

    async def _reclaim(self, older_than: float | None) -> int:
        core = self._core
        await core.ensure_started()
        if core.wb is None:
            return 0
        with core.health.redis_step(), core.health.store_step():
            return await core.wb.reclaim(self.config.reclaim_after if older_than is None else older_than)
        return 0

    # -- stats and schema --------------------------------------------------------------------------------
    def get_cache_stats(self) -> CacheStats:
        """Hit rate, latency percentiles, Redis memory, backlog and pool usage."""
        return self._run(self._cache_stats())

    async def aget_cache_stats(self) -> CacheStats:
        return await self._arun(self._cache_stats())

    async def _cache_stats(self) -> CacheStats:
        core = self._core
        await core.ensure_started()
        s = core.stats
        mem: float | None = None
        sessions: int | None = None
        outbox: int | None = None
        if core.use_cache():
            assert core.cache is not None
            with core.health.redis_step():
                mem = await core.cache.memory_mb()
                sessions = await core.cache.cached_sessions()
                outbox = await core.cache.outbox_depth() if core.wb is not None else 0
        backlog: int | None = None
        embed_backlog: int | None = None
        if core.recall is not None:
            with contextlib.suppress(StoreDown):
                backlog, embed_backlog = await core.recall.backlog()
            if core.embedder is None:
                embed_backlog = None
        in_use, size = core.store.pool_usage() if core.store is not None else (0, 0)
        r50, r99, w50, w99 = s.percentiles()
        wb, summaries = core.wb, core.summaries
        return CacheStats(
            hits=s.hits, misses=s.misses, hit_rate=s.hit_rate, redis_memory_mb=mem, cached_sessions=sessions,
            redis_up=core.health.redis_up, postgres_up=core.health.pg_up, backlog=wb.backlog if wb else 0,
            outbox_entries=outbox, pg_pool_in_use=in_use, pg_pool_size=size, read_p50_ms=r50, read_p99_ms=r99,
            write_p50_ms=w50, write_p99_ms=w99, reads=s.reads, writes=s.writes, fallback_reads=s.fallback_reads,
            fallback_writes=s.fallback_writes, persisted=s.persisted, persist_batches=s.persist_batches,
            persist_failures=s.persist_failures, reclaimed=s.reclaimed, redis_errors=s.redis_errors,
            corrupt_entries=s.corrupt_entries, dead_letters=s.dead_letters, summaries=s.summaries,
            summary_failures=s.summary_failures,
            summary_queue=summaries.queued if summaries else 0,
            last_summary_error=summaries.last_error if summaries else None, checkpoint_reads=s.checkpoint_reads,
            checkpoint_puts=s.checkpoint_puts, checkpoint_writes=s.checkpoint_writes, indexed=s.indexed,
            index_failures=s.index_failures, index_backlog=backlog, searches=s.searches, embedded=s.embedded,
            embed_failures=s.embed_failures, embed_backlog=embed_backlog)

    def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns the names applied."""
        return self._run(self._migrate())

    async def amigrate(self) -> list[str]:
        return await self._arun(self._migrate())

    async def _migrate(self) -> list[str]:
        core = self._core
        await core.ensure_started()
        with core.health.store_step():
            return await core.need_store().migrate()


def _register_atexit(memory: HybridMemory) -> Callable[[], None]:
    # A weak reference: registering must not keep the memory alive, but a live one is flushed at exit.
    ref = weakref.ref(memory)

    def _at_exit() -> None:
        m = ref()
        if m is not None and m._core.started and not m._core.closed:
            try:
                m.close(flush_timeout=5.0)
            except Exception:  # interpreter shutdown: the Redis outbox still holds what is unflushed
                log.exception("hybrid-memory: flush at exit failed")

    atexit.register(_at_exit)
    return _at_exit
