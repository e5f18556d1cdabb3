"""Refills: a session's window loaded from PostgreSQL into Redis, with the writes still waiting merged in.

The rule every path follows: writes acknowledged but not committed yet (this process's queue, any process's
outbox entries in Redis) are merged into what PostgreSQL returns, so a refill or a PostgreSQL read never
hides a newer write. `merge_waiting` is that rule in Python (refills, PostgreSQL reads, transcript pages);
`fill()` in cache/lua/common.lua applies it again inside Redis, atomically with caching the window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .cache import CacheDown, Miss, Refill
from .core import PendingFill
from .messages import split_element
from .store import Row, StoreDown, Window

if TYPE_CHECKING:
    from .cache import RedisCache
    from .cache.async_client import OutboxItem
    from .core import Core

ProgressFn = Callable[[int, int], None]


def merge_waiting(stored: Iterable[tuple[int, str, str]], waiting: Iterable[Row], *, above: int = -1
                  ) -> dict[int, tuple[str, str]]:
    """seq -> (message id, body): the stored rows plus the waiting writes above `above` (a tombstone's seq, or
    a page's start). A waiting write whose id is stored under another seq (its reply was lost, the retry went
    through PostgreSQL) is left out: PostgreSQL's copy wins."""
    merged = {seq: (msg_id, body) for seq, msg_id, body in stored}
    known = {msg_id for msg_id, _ in merged.values()}
    for r in waiting:
        if r.seq > above and r.msg_id not in known:
            merged[r.seq] = (r.msg_id, r.body)
            known.add(r.msg_id)
    return merged


class Refiller:
    def __init__(self, core: Core) -> None:
        self.core = core

    def merged_fill(self, owner: str | None, floor: int, rows: list[tuple[int, str, str]], waiting: list[Row],
                    n: int | None = None) -> Refill:
        """The newest `n` (default: the window) of the stored rows and the waiting writes, ready to cache."""
        n = n or self.core.config.max_session_messages
        if waiting:
            merged = merge_waiting(rows, waiting, above=floor)
            tail = [(seq, mid, body) for seq, (mid, body) in sorted(merged.items())[-n:]]
        else:  # the usual cold read: PostgreSQL's rows, already in order
            tail = rows[-n:]
        base = max(floor, tail[-1][0]) if tail else floor
        fill = Refill(base, owner, tail)
        fill.floor = floor
        return fill

    async def load(self, sid: str, *, for_write: bool, outbox: bool = True) -> Refill:
        """The window to cache for `sid`: PostgreSQL's tail merged with the writes still waiting. `outbox=False`:
        Redis said, before this call, that the session has no outbox entry (see `Miss.waiting`)."""
        core = self.core
        if core.store is None:
            return Refill(0, None, [])
        # Both before the PostgreSQL query: a write committed (and acknowledged) meanwhile is then in PostgreSQL,
        # and one still waiting is in these; never in neither. (An entry is named in the session's entry set
        # as long as it exists, so a set absent before the query means no entry to look up.)
        waiting, owner = core.queued_rows(sid), None
        if outbox and core.use_cache():
            assert core.cache is not None
            with core.health.redis_step():
                waiting, owner = await self.with_outbox(sid, waiting, core.cache)
        try:
            return await self.from_store(sid, waiting, owner, core.store.window)
        except StoreDown as exc:
            if not for_write:
                raise core.health.store_down(exc) from None
            # Keep accepting writes while PostgreSQL is down: cache a window marked partial (older history
            # unknown); reads treat it as a miss until PostgreSQL can complete it.
            core.health.pg_up = False
            fill = self.merged_fill(None, 0, [], waiting)
            fill.partial = True
            return fill

    @staticmethod
    async def with_outbox(sid: str, waiting: list[Row], cache: RedisCache) -> tuple[list[Row], str | None]:
        """`waiting` plus the session's entries in the Redis outbox (any writer's), and the user those name (a
        write names the session's owner, or no one). Raises CacheDown."""
        return Refiller.merge_outbox(sid, waiting, await cache.session_outbox(sid))

    @staticmethod
    def merge_outbox(sid: str, waiting: list[Row], items: list[OutboxItem]) -> tuple[list[Row], str | None]:
        """`with_outbox` from the session's outbox entries as `RedisCache.session_outbox` gives them."""
        by_seq = {r.seq: r for r in waiting}
        owner = None
        for _, msg_id, el, uid in items:
            try:
                seq, body = split_element(el)
            except (ValueError, UnicodeDecodeError):
                continue  # a damaged entry: the janitor sets it aside
            by_seq[seq] = Row(sid, seq, msg_id, "", body, 0.0)
            owner = owner or uid or None
        return list(by_seq.values()), owner

    async def from_store(self, sid: str, waiting: list[Row], owner: str | None,
                         fetch: Callable[[str, int], Awaitable[Window]]) -> Refill:
        """PostgreSQL's window of `sid` (`fetch`: a store's `window`) merged with `waiting`; `owner` when
        PostgreSQL names none (bound by a write it does not have yet). Raises StoreDown."""
        w, size = await self.window(sid, len(waiting), fetch)
        fill = self.window_fill(w, waiting, size)
        if fill.owner is None:
            fill.owner = owner
        return fill

    def cache_later(self, sid: str, fill: Refill, miss: Miss) -> None:
        """Cache a window loaded for a read after `miss` without making the reader wait (from any thread; the
        FILL goes from the engine loop once the reader has its answer). FILL loads it only if nobody cached the
        session meanwhile, merging the outbox as it is then, and only if no drop came since the miss (the
        session's generation: another process may have written around Redis, then dropped the window), so the
        window is exact whenever it lands. While it is pending (`Core.fills`, registered before the reader has
        its answer), reads of the session wait for it instead of refilling again, and a drop of the session in
        this process waits for it, so it is not wasted; either starts it if it has not started yet. One at a
        time per session: a second reader's window would be no newer once merged."""
        core = self.core
        if core.store is None or sid in core.fills or not core.health.redis_up:
            return
        fill.gen = miss.gen
        job = PendingFill(lambda: self._start_fill(sid, fill, miss.partial_seq, job))
        core.fills[sid] = job
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a sync caller's thread: its answer is ready, nothing to wait for
            loop = None
        if loop is None:
            self._hand_over(job)
        elif core.engine.in_loop():  # after the coroutine that answers the reader has handed its answer over
            loop.call_soon(loop.call_soon, job.start)
        else:  # the hand-over wakes the engine loop's thread, which would take the GIL from the reader
            loop.call_soon(self._hand_over, job)

    def _hand_over(self, job: PendingFill) -> None:
        with contextlib.suppress(RuntimeError):  # the engine is closed: nothing to cache into
            self.core.engine.loop.call_soon_threadsafe(job.start)

    def _start_fill(self, sid: str, fill: Refill, expect_seq: int | None, job: PendingFill) -> None:
        core = self.core

        def finished(_: object) -> None:
            if core.fills.get(sid) is job:
                del core.fills[sid]
            job.done.set_result(None)

        if core.cache is None or not core.use_cache():
            finished(None)
            return
        sent = core.cache.fill_soon(sid, fill, expect_seq)
        asyncio.get_running_loop().create_task(self._fill(sid, sent)).add_done_callback(finished)

    async def _fill(self, sid: str, sent: Coroutine[Any, Any, None]) -> None:
        core = self.core
        assert core.cache is not None
        try:
            try:
                await sent
            except ResponseError:  # a key of the session has the wrong type: drop them, the next read reloads
                core.stats.corrupt_entries += 1
                await core.cache.drop([sid])
        except CacheDown:
            core.health.redis_failed()

    def size(self, w: Window, waiting: int) -> int:
        """How many elements a refill should cache: the capacity, or (auto-summarize) every message the summary
        does not cover yet, up to the ceiling, as appends keep them (see append.lua)."""
        cfg = self.core.config
        if not cfg.enable_auto_summarize:
            return cfg.cache_capacity
        return max(cfg.cache_capacity, min(w.unsummarized + waiting, cfg.cache_ceiling))

    async def window(self, sid: str, waiting: int, fetch: Callable[[str, int], Awaitable[Window]]
                     ) -> tuple[Window, int]:
        """PostgreSQL's tail of one session for a refill (`fetch`: a store's `window`), and its `size`. A session
        whose summaries lag is asked again for its longer tail."""
        cap = self.core.config.cache_capacity
        w = await fetch(sid, cap)
        n = self.size(w, waiting)
        if n > len(w.rows) == cap:
            w = await fetch(sid, n)
        return w, n

    async def windows(self, sids: list[str], waiting: dict[str, list[Row]]
                      ) -> tuple[dict[str, Window], dict[str, int]]:
        """`window` for many sessions in one query."""
        core = self.core
        assert core.store is not None
        cap = core.config.cache_capacity
        windows = await core.store.windows(sids, cap)
        sizes = {sid: self.size(w, len(waiting[sid])) for sid, w in windows.items()}
        lagging = [sid for sid, n in sizes.items() if n > len(windows[sid].rows) == cap]
        if lagging:
            windows.update(await core.store.windows(lagging, max(sizes[sid] for sid in lagging)))
        return windows, sizes

    def window_fill(self, w: Window, waiting: list[Row], size: int) -> Refill:
        fill = self.merged_fill(w.owner, w.floor_seq, w.rows, waiting, size)
        fill.sum_upto, fill.sum_text = w.sum_upto, w.sum_text
        fill.unsummarized = w.unsummarized
        if waiting:
            stored = {seq for seq, _, _ in w.rows}
            fill.unsummarized += sum(1 for r in waiting if r.seq > w.sum_upto and r.seq not in stored)
        return fill

    # -- many sessions at once ---------------------------------------------------------------------------
    async def prefetch(self, sids: Sequence[str], on_progress: ProgressFn | None) -> int:
        """Cache the windows of `sids` (those not cached yet), 200 sessions per PostgreSQL query. The next batch
        is read while Redis caches the last one (PostgreSQL and Redis work at once)."""
        core = self.core
        if not sids or core.store is None or not core.use_cache():
            return 0
        assert core.cache is not None
        loaded, chunk = 0, 200
        parts = [list(dict.fromkeys(sids[i:i + chunk])) for i in range(0, len(sids), chunk)]
        loop = asyncio.get_running_loop()
        following: asyncio.Task[dict[str, Refill] | None] | None = loop.create_task(self._batch(parts[0]))
        try:
            for k in range(len(parts)):
                assert following is not None
                fills = await following
                following = loop.create_task(self._batch(parts[k + 1])) if k + 1 < len(parts) else None
                if fills is None:  # Redis failed
                    return loaded
                step = core.health.redis_step()
                with step:
                    loaded += await core.cache.fill_many(fills)
                if step.failed:
                    return loaded
                if on_progress is not None:
                    on_progress(min((k + 1) * chunk, len(sids)), len(sids))
        finally:
            if following is not None:
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following
        return loaded

    async def _batch(self, part: list[str]) -> dict[str, Refill] | None:
        """The windows of `part` to cache (sessions PostgreSQL knows), merged with the writes still waiting: this
        process's, and the outbox entries of the sessions whose entry set exists, both looked up before the
        query (as in `load`), as are the generations the windows are cached under; None if Redis failed."""
        core = self.core
        assert core.cache is not None
        waiting = {sid: core.queued_rows(sid) for sid in part}
        owners: dict[str, str | None] = {}
        step = core.health.redis_step()
        with step:
            # One exchange: the next batch's goes to Redis before this batch's fills (prefetch)
            misses = dict(zip(part, await core.cache.misses(part), strict=True))
            for sid, miss in misses.items():
                if miss.waiting:
                    waiting[sid], owners[sid] = await self.with_outbox(sid, waiting[sid], core.cache)
        if step.failed:
            return None
        with core.health.store_step():
            windows, sizes = await self.windows(part, waiting)
        fills = {}
        for sid, w in windows.items():
            if w.exists:
                fill = fills[sid] = self.window_fill(w, waiting[sid], sizes[sid])
                fill.gen = misses[sid].gen
                if fill.owner is None:
                    fill.owner = owners.get(sid)
        return fills

    async def warmup(self, limit: int, active_within: float | None, on_progress: ProgressFn | None) -> int:
        core = self.core
        if core.store is None:
            return 0
        with core.health.store_step():
            sids = await core.store.recent_sessions(limit, active_within)
        return await self.prefetch(sids, on_progress)
