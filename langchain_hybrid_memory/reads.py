"""The read path: the recent window, the context view (summary + what follows it) and transcript pages.

A hit is one Redis round trip, made in the caller's own thread or loop (`hot_*`: no hop to the engine loop).
A miss is one PostgreSQL query (plus an outbox lookup when the read saw entries waiting), answered from its
rows merged with the writes still waiting while the window is cached in the background (refill.py); an async
caller's loop runs it itself once it has a PostgreSQL connection of its own (`*_here`), otherwise it
continues on the engine loop (`recent`, `context`), as does anything else (a partial or damaged window, Redis
down, a read deeper than the window). A read that queries PostgreSQL merges in the writes still waiting: this
process's queue and, Redis up, every process's outbox entries of the session (`waiting`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .cache import CachedContext, CacheDown, Miss, Refill
from .config import Mode
from .core import CORRUPT, UNKNOWN
from .errors import InvalidInputError, StorageUnavailableError
from .messages import Context, CorruptEntry, Message, decode, decode_rows, decode_window
from .refill import Refiller, merge_waiting
from .store import Row, StoreDown

if TYPE_CHECKING:
    from .cache import RedisCache
    from .core import Core
    from .store import LoopConnection, PrivateConnection

log = logging.getLogger("langchain_hybrid_memory")


class ReadPath:
    def __init__(self, core: Core, refill: Refiller) -> None:
        self.core = core
        self.refill = refill

    async def waiting(self, sid: str) -> tuple[list[Row], str | None]:
        """The writes of `sid` PostgreSQL may not have yet, for a read that queries it (take them before the
        query, as Refiller.load does): this process's queue and, Redis up, every process's entries in the
        outbox; and the owner those name."""
        return (await self.waiting_many([sid]))[0]

    async def waiting_many(self, sids: Sequence[str]) -> list[tuple[list[Row], str | None]]:
        """`waiting` of each session, the outbox looked up in one exchange."""
        core = self.core
        wb = core.wb
        out = [(core.queued_rows(sid), wb.queued_owner(sid) if wb is not None else None) for sid in sids]
        if core.use_cache() and sids:
            assert core.cache is not None
            with core.health.redis_step():
                found = await core.cache.sessions_outbox(sids)
                for i, (sid, items) in enumerate(zip(sids, found, strict=True)):
                    rows, named = self.refill.merge_outbox(sid, out[i][0], items)
                    out[i] = rows, out[i][1] or named
        return out

    # -- in the caller's thread or loop: what one Redis reply gives ---------------------------------------
    def finish_hot_read(self, got: Any, uid: str | None, t0: float) -> list[Message] | Any:
        """The window from a hot read's reply, or what the engine loop should start from (UNKNOWN, CORRUPT,
        or the reply itself: a miss or a partial window). `got` may be the exception the read raised."""
        if isinstance(got, tuple):
            self.core.check_owner(got[0] or None, uid)
            try:
                msgs = decode_window(got[1])
            except CorruptEntry:
                return CORRUPT
            s = self.core.stats
            s.hits += 1
            s.reads += 1
            s.read_lat.append(time.perf_counter() - t0)
            return msgs
        return self.core.start_from(got)

    def finish_hot_context(self, got: Any, uid: str | None, t0: float) -> Context | Any:
        """The context from a hot read's reply, or what the engine loop should start from (as for a window)."""
        got = self.core.start_from(got)
        if isinstance(got, CachedContext):
            try:
                ctx = self.cached_context(got, uid, t0)
            except CorruptEntry:
                return CORRUPT
            if ctx is not None:
                return ctx
        return got

    def cached_context(self, got: CachedContext, uid: str | None, t0: float) -> Context | None:
        """The context view from the cache, if it holds all the view needs; raises CorruptEntry."""
        core = self.core
        core.check_owner(got.owner or None, uid)
        msgs = [m for m in decode_window(got.elements) if (m.seq or 0) > got.sum_upto]
        if core.config.enable_auto_summarize:
            if len(msgs) != got.unsummarized:
                return None  # summarization lags behind the cache's capacity: read PostgreSQL
        else:
            msgs = msgs[-core.config.max_session_messages:]
        core.stats.hits += 1
        core.stats.reads += 1
        core.stats.read_lat.append(time.perf_counter() - t0)
        return Context(got.sum_text or None, msgs, got.sum_upto or None)

    def fill_context(self, fill: Refill) -> Context | None:
        """The context view from a window just loaded from PostgreSQL, as `cached_context` makes it from the
        cache; None if the window does not hold every message after the summary (summarization lags)."""
        cfg = self.core.config
        upto = fill.sum_upto
        rows = [r for r in fill.rows if r[0] > upto] if upto else fill.rows
        if cfg.enable_auto_summarize:
            if len(rows) != fill.unsummarized:
                return None
        else:
            rows = rows[-cfg.max_session_messages:]
        return Context(fill.sum_text or None, decode_rows(rows), upto or None)

    async def cold_here(self, sid: str, uid: str | None, miss: Miss, cache: RedisCache, conn: LoopConnection
                        ) -> Refill | None:
        """A miss on the caller's own loop (its Redis client, its PostgreSQL connection, taken), as `cold` does
        it on the engine loop, but not cached yet (the caller does that once it has its answer: the FILL wakes
        the engine loop); None: Redis failed meanwhile, the engine loop's path decides what follows."""
        core = self.core
        try:
            waiting, owner = core.queued_rows(sid), None  # before the query, as in Refiller.load
            if miss.waiting:
                try:
                    waiting, owner = await self.refill.with_outbox(sid, waiting, cache)
                except CacheDown:
                    core.on_engine_loop(core.health.redis_failed)
                    return None
            try:
                fill = await self.refill.from_store(sid, waiting, owner, conn.window)
            except StoreDown as exc:
                raise core.health.store_down(exc) from None
        finally:
            conn.release()
        core.stats.misses += 1
        core.check_owner(fill.owner, uid)
        return fill

    def cold_private(self, sid: str, uid: str | None, conn: PrivateConnection) -> Refill | None:
        """A miss with no outbox entry, for a sync caller, in its own thread: the query on the private
        connection (acquired), as `cold_here`; None: that connection failed, the engine loop's pool decides."""
        core = self.core
        try:
            try:
                fill = conn.run(self.refill.from_store(sid, core.queued_rows(sid), None, conn.pg.window))
            except StoreDown:
                return None
        finally:
            conn.release()
        core.stats.misses += 1
        core.check_owner(fill.owner, uid)
        return fill

    def answer_recent(self, sid: str, fill: Refill | None, limit: int, miss: Miss, t0: float
                      ) -> list[Message] | None:
        """`recent`'s answer from a window just loaded off the engine loop (None: none was), which is then cached
        in the background."""
        if fill is None:
            return None
        out = decode_rows(fill.rows[-limit:])
        self.refill.cache_later(sid, fill, miss)
        self.core.stats.reads += 1
        self.core.stats.read_lat.append(time.perf_counter() - t0)
        return out

    def answer_context(self, sid: str, fill: Refill | None, miss: Miss, t0: float) -> Context | None:
        """`context`'s answer likewise (None also when the window does not hold all the view needs)."""
        if fill is None:
            return None
        ctx = self.fill_context(fill)
        self.refill.cache_later(sid, fill, miss)
        if ctx is not None:
            self.core.stats.reads += 1
            self.core.stats.read_lat.append(time.perf_counter() - t0)
        return ctx

    # -- on the engine loop -------------------------------------------------------------------------------
    async def recent(self, sid: str, uid: str | None, limit: int, first: Any = UNKNOWN) -> list[Message]:
        """The last `limit` messages; `first` is what a hot read already learned."""
        core = self.core
        await core.ensure_started()
        t0 = time.perf_counter()
        if limit == 0:
            return []
        out = await self.window(sid, uid, limit, first)
        core.stats.reads += 1
        core.stats.read_lat.append(time.perf_counter() - t0)
        return out

    async def window(self, sid: str, uid: str | None, limit: int, first: Any = UNKNOWN) -> list[Message]:
        core = self.core
        if core.use_cache() and limit <= core.config.max_session_messages:
            got = await self.cached(sid, uid, limit, first)
            if isinstance(got, tuple):
                try:
                    msgs = decode_window(got[1])
                except CorruptEntry:
                    got = await self.cold(sid, uid, await self.drop_corrupt(sid))
                else:
                    core.stats.hits += 1
                    core.check_owner(got[0] or None, uid)
                    return msgs
            if isinstance(got, Refill):
                return decode_rows(got.rows[-limit:])
        # PostgreSQL path: Redis down, persistent mode, or a read deeper than the window.
        store = core.need_store()
        if core.config.mode is Mode.HYBRID:
            core.stats.fallback_reads += 1
        waiting, owner = await self.waiting(sid)
        with core.health.store_step():
            w = (await store.windows([sid], limit))[sid]
        core.check_owner(w.owner or owner, uid)
        fill = self.refill.merged_fill(w.owner, w.floor_seq, w.rows, waiting, limit)
        return decode_rows(fill.rows[-limit:])

    async def cached(self, sid: str, uid: str | None, limit: int, first: Any) -> Any:
        """What the cache gives a read of `limit` elements (0: the context view): a hit's reply, or on a miss
        the window loaded from PostgreSQL (a Refill, cached in the background); None: read PostgreSQL instead
        (Redis failed, or a damaged entry was just dropped). `first` is what a hot read already learned."""
        core = self.core
        cache = core.cache
        assert cache is not None
        try:
            if first is CORRUPT:
                await self.drop_corrupt(sid)
                first = UNKNOWN
            got, pending = first, sid in core.fills
            if pending:  # the session's window is being cached: read it once it is
                await core.settle_fills([sid])
            if got is UNKNOWN or (pending and isinstance(got, Miss)):
                got = await (cache.read(sid, limit) if limit else cache.context(sid))
        except (ResponseError, CorruptEntry):
            await self.drop_corrupt(sid)
            return None
        except CacheDown:
            core.health.redis_failed()
            if core.config.mode is Mode.SESSION_ONLY:
                raise StorageUnavailableError("Redis is unreachable and mode is session_only") from None
            return None
        if isinstance(got, Miss):
            return await self.cold(sid, uid, got)
        return got

    async def cold(self, sid: str, uid: str | None, miss: Miss) -> Refill:
        """A miss: PostgreSQL's window merged with the writes still waiting, handed back at once and cached in
        the background (the reader does not wait for Redis a second time)."""
        core = self.core
        core.stats.misses += 1
        fill = await self.refill.load(sid, for_write=False, outbox=miss.waiting)
        core.check_owner(fill.owner, uid)
        self.refill.cache_later(sid, fill, miss)
        return fill

    async def drop_corrupt(self, sid: str) -> Miss:
        """A damaged cache entry is never served: forget it; the store has the truth. The miss that follows (a
        window loaded now is cached under the drop's generation)."""
        log.warning("hybrid-memory: a damaged cache entry was dropped and will be reloaded")
        self.core.stats.corrupt_entries += 1
        return Miss(gen=await self.core.health.drop_cached([sid]))

    async def context(self, sid: str, uid: str | None, first: Any = UNKNOWN) -> Context:
        """The context view; `first` is what a hot read already learned."""
        core = self.core
        await core.ensure_started()
        cfg = core.config
        t0 = time.perf_counter()
        if core.use_cache():
            got = await self.cached(sid, uid, 0, first)
            if isinstance(got, CachedContext):
                try:
                    ctx = self.cached_context(got, uid, t0)
                except CorruptEntry:
                    got = await self.cold(sid, uid, await self.drop_corrupt(sid))
                else:
                    if ctx is not None:
                        return ctx
            if isinstance(got, Refill):
                ctx = self.fill_context(got)
                if ctx is not None:
                    core.stats.reads += 1
                    core.stats.read_lat.append(time.perf_counter() - t0)
                    return ctx
        store = core.need_store()
        waiting, owner = await self.waiting(sid)
        with core.health.store_step():
            if uid is not None:
                core.check_owner((await store.owner(sid))[1] or owner, uid)
            if cfg.enable_auto_summarize:  # everything after the summary (bounded by summarization)
                _, upto, text, _, rows = await store.summary_state(sid, 100_000)
            else:  # the window after the summary
                _, upto, text, _, rows = await store.summary_state(sid, cfg.max_session_messages, tail=True)
        merged = merge_waiting(((seq, msg_id, body) for seq, _, body, msg_id in rows), waiting, above=upto)
        ordered = sorted(merged.items())
        if not cfg.enable_auto_summarize:
            ordered = ordered[-cfg.max_session_messages:]
        return Context(text or None, [decode(seq, body) for seq, (_, body) in ordered], upto or None)

    async def page(self, sid: str, uid: str | None, after_seq: int | None, limit: int | None) -> list[Message]:
        """The transcript from the system of record (plus the writes still waiting), oldest first."""
        core = self.core
        await core.ensure_started()
        for name, value in (("limit", limit), ("after_seq", after_seq)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInputError(f"{name} must be a non-negative int or None")
        if core.store is None:  # session_only: the window is all there is
            msgs = await self.window(sid, uid, core.config.max_session_messages)
            msgs = [m for m in msgs if after_seq is None or (m.seq or 0) > after_seq]
            return msgs[:limit] if limit is not None else msgs
        waiting, pending_owner = await self.waiting(sid)
        with core.health.store_step():
            if uid is not None:
                _, owner = await core.store.owner(sid)
                core.check_owner(owner or pending_owner or (await core.cached_owner(sid)), uid)
            rows = await core.store.page(sid, after_seq, limit)
        merged = merge_waiting(rows, waiting, above=after_seq if after_seq is not None else -1)
        ordered = sorted(merged.items())
        if limit is not None:
            ordered = ordered[:limit]
        return [decode(seq, body) for seq, (_, body) in ordered]
