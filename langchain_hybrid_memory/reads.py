"""The read path: the recent window, the context view (summary + what follows it) and transcript pages.

A hit is one Redis round trip, made in the caller's own thread or loop (`hot_*`: no hop to the engine loop);
anything else (a miss, a partial or damaged window, Redis down, a read deeper than the window) continues on
the engine loop (`recent`, `context`), which refills the window from PostgreSQL (refill.py) or, with Redis
down, answers from PostgreSQL with the writes still waiting merged in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .cache import CachedContext, CacheDown
from .config import Mode
from .core import CORRUPT, UNKNOWN
from .errors import InvalidInputError, StorageUnavailableError
from .messages import Context, CorruptEntry, Message, decode, decode_window
from .refill import Refiller, merge_waiting

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("langchain_hybrid_memory")


class ReadPath:
    def __init__(self, core: Core, refill: Refiller) -> None:
        self.core = core
        self.refill = refill

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

    def finish_hot_context(self, got: Any, uid: str | None, t0: float) -> Context | None:
        """The context from a hot read's reply, if the cache holds what the view needs."""
        self.core.start_from(got)
        return self.cached_context(got, uid, t0)

    def cached_context(self, got: Any, uid: str | None, t0: float) -> Context | None:
        if not isinstance(got, CachedContext):
            return None
        core = self.core
        core.check_owner(got.owner or None, uid)
        try:
            msgs = [m for m in decode_window(got.elements) if (m.seq or 0) > got.sum_upto]
        except CorruptEntry:
            return None  # the slow path drops and reloads the window
        if core.config.enable_auto_summarize:
            if len(msgs) != got.unsummarized:
                return None  # summarization lags behind the cache's capacity: read PostgreSQL
        else:
            msgs = msgs[-core.config.max_session_messages:]
        core.stats.hits += 1
        core.stats.reads += 1
        core.stats.read_lat.append(time.perf_counter() - t0)
        return Context(got.sum_text or None, msgs, got.sum_upto or None)

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
            cache = core.cache
            assert cache is not None
            try:
                if first is CORRUPT:
                    await self.drop_corrupt(sid)
                    first = UNKNOWN
                hit = await cache.read(sid, limit) if first is UNKNOWN else first
                if isinstance(hit, tuple):
                    try:
                        msgs = decode_window(hit[1])
                    except CorruptEntry:
                        await self.drop_corrupt(sid)
                        hit = None
                    else:
                        core.stats.hits += 1
                        core.check_owner(hit[0] or None, uid)
                        return msgs
            except (ResponseError, CorruptEntry):
                await self.drop_corrupt(sid)
            except CacheDown:
                core.health.redis_failed()
                if core.config.mode is Mode.SESSION_ONLY:
                    raise StorageUnavailableError("Redis is unreachable and mode is session_only") from None
            else:
                # A miss, or `hit` is a partial window's last seq: refill it, unless somebody wrote since.
                core.stats.misses += 1
                if core.store is None:
                    return []
                fill = await self.refill.load(sid, for_write=False)
                core.check_owner(fill.owner, uid)
                with core.health.redis_step():
                    # What comes back is what is cached now: ours, merged with the outbox, or a newer writer's.
                    _, owner, cached = await cache.fill(sid, fill, expect_seq=hit)
                    core.check_owner(owner or None, uid)
                    return decode_window(cached[-limit:])
                return decode_window([el for _, el in fill.pairs[-limit:]])
        # PostgreSQL path: Redis down, persistent mode, or a read deeper than the window.
        store = core.need_store()
        if core.config.mode is Mode.HYBRID:
            core.stats.fallback_reads += 1
        waiting = core.queued_rows(sid)
        with core.health.store_step():
            w = (await store.windows([sid], limit))[sid]
        core.check_owner(w.owner, uid)
        fill = self.refill.merged_fill(w.owner, w.floor_seq, w.rows, waiting, limit)
        return decode_window([el for _, el in fill.pairs[-limit:]])

    async def drop_corrupt(self, sid: str) -> None:
        """A damaged cache entry is never served: forget it; the store has the truth."""
        log.warning("hybrid-memory: a damaged cache entry was dropped and will be reloaded")
        self.core.stats.corrupt_entries += 1
        await self.core.health.drop_cached([sid])

    async def context(self, sid: str, uid: str | None) -> Context:
        core = self.core
        await core.ensure_started()
        cfg = core.config
        if core.use_cache():
            # A miss loads the window (with the summary fields) into Redis; read the cached view after it.
            await self.window(sid, uid, cfg.max_session_messages)
            assert core.cache is not None
            with contextlib.suppress(CacheDown, ResponseError, CorruptEntry):
                t0 = time.perf_counter()
                ctx = self.cached_context(await core.cache.context(sid), uid, t0)
                if ctx is not None:
                    return ctx
        store = core.need_store()
        waiting = core.queued_rows(sid)
        with core.health.store_step():
            if uid is not None:
                core.check_owner((await store.owner(sid))[1], uid)
            if cfg.enable_auto_summarize:  # everything after the summary (bounded by summarization)
                _, upto, text, _, rows = await store.summary_state(sid, 100_000)
            else:  # the window after the summary
                _, upto, text, _, rows = await store.summary_state(sid, cfg.max_session_messages, tail=True)
        # Stored rows carry no message id here: waiting writes are merged by seq.
        merged = merge_waiting(((seq, "", body) for seq, _, body in rows), waiting, above=upto)
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
        waiting = core.queued_rows(sid)
        with core.health.store_step():
            if uid is not None:
                _, owner = await core.store.owner(sid)
                core.check_owner(owner or (await core.cached_owner(sid)), uid)
            rows = await core.store.page(sid, after_seq, limit)
        # Stored rows carry no message id here: waiting writes are merged by seq.
        merged = merge_waiting(((seq, "", body) for seq, body in rows), waiting,
                               above=after_seq if after_seq is not None else -1)
        ordered = sorted(merged.items())
        if limit is not None:
            ordered = ordered[:limit]
        return [decode(seq, body) for seq, (_, body) in ordered]
