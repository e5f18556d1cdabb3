"""Refills: a session's window loaded from PostgreSQL into Redis, with the writes still waiting merged in.

The rule every path follows: writes acknowledged but not committed yet (this process's queue, any process's
outbox entries in Redis) are merged into what PostgreSQL returns, so a refill or a PostgreSQL read never
hides a newer write. `merge_waiting` is that rule in Python (refills, PostgreSQL reads, transcript pages);
`fill()` in cache/lua/common.lua applies it again inside Redis, atomically with caching the window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from .cache import Refill
from .messages import element, split_element
from .store import Row, StoreDown, Window

if TYPE_CHECKING:
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
        merged = merge_waiting(rows, waiting, above=floor)
        tail = sorted(merged.items())[-n:]
        base = max([floor, *merged.keys()]) if merged else floor
        fill = Refill(base, owner, [(mid, element(seq, body)) for seq, (mid, body) in tail])
        fill.floor = floor
        return fill

    async def load(self, sid: str, *, for_write: bool) -> Refill:
        """The window to cache for `sid`: PostgreSQL's tail merged with the writes still waiting."""
        core = self.core
        if core.store is None:
            return Refill(0, None, [])
        # Both before the PostgreSQL query: a write committed (and acknowledged) meanwhile is then in PostgreSQL,
        # and one still waiting is in these; never in neither.
        waiting = list({r.seq: r for r in core.queued_rows(sid) + await self.outbox_rows(sid)}.values())
        try:
            windows, sizes = await self.windows([sid], {sid: waiting})
            w = windows[sid]
        except StoreDown as exc:
            if not for_write:
                raise core.health.store_down(exc) from None
            # Keep accepting writes while PostgreSQL is down: cache a window marked partial (older history
            # unknown); reads treat it as a miss until PostgreSQL can complete it.
            core.health.pg_up = False
            fill = self.merged_fill(None, 0, [], waiting)
            fill.partial = True
            return fill
        return self.window_fill(w, waiting, sizes[sid])

    async def windows(self, sids: list[str], waiting: dict[str, list[Row]]
                      ) -> tuple[dict[str, Window], dict[str, int]]:
        """PostgreSQL's tails of `sids` for a refill, and how many elements each should cache: the capacity, or
        (auto-summarize) every message the summary does not cover yet, up to the ceiling, as appends keep them
        (see append.lua). Sessions whose summaries lag are asked again for their longer tail."""
        core = self.core
        assert core.store is not None
        cfg, cap = core.config, core.config.cache_capacity
        windows = await core.store.windows(sids, cap)
        sizes = {sid: cap if not cfg.enable_auto_summarize else
                 max(cap, min(w.unsummarized + len(waiting[sid]), cfg.cache_ceiling)) for sid, w in windows.items()}
        lagging = [sid for sid, n in sizes.items() if n > len(windows[sid].rows) == cap]
        if lagging:
            windows.update(await core.store.windows(lagging, max(sizes[sid] for sid in lagging)))
        return windows, sizes

    def window_fill(self, w: Window, waiting: list[Row], size: int) -> Refill:
        fill = self.merged_fill(w.owner, w.floor_seq, w.rows, waiting, size)
        fill.sum_upto, fill.sum_text = w.sum_upto, w.sum_text
        stored = {seq for seq, _, _ in w.rows}
        fill.unsummarized = w.unsummarized + sum(1 for r in waiting if r.seq > w.sum_upto and r.seq not in stored)
        return fill

    async def outbox_rows(self, sid: str) -> list[Row]:
        """The session's entries in the Redis outbox (any writer's), as rows."""
        core = self.core
        if not core.use_cache():
            return []
        assert core.cache is not None
        rows = []
        with core.health.redis_step():
            for _, msg_id, el, _ in await core.cache.session_outbox(sid):
                try:
                    seq, body = split_element(el)
                    rows.append(Row(sid, seq, msg_id, "", body, 0.0))
                except (ValueError, UnicodeDecodeError):
                    continue  # a damaged entry: the janitor sets it aside
        return rows

    # -- many sessions at once ---------------------------------------------------------------------------
    async def prefetch(self, sids: Sequence[str], on_progress: ProgressFn | None) -> int:
        """Cache the windows of `sids` (those not cached yet), 200 sessions per PostgreSQL query."""
        core = self.core
        if not sids or core.store is None or not core.use_cache():
            return 0
        assert core.cache is not None
        loaded, chunk = 0, 200
        for i in range(0, len(sids), chunk):
            part = list(dict.fromkeys(sids[i:i + chunk]))
            waiting = {sid: core.queued_rows(sid) for sid in part}
            with core.health.store_step():
                windows, sizes = await self.windows(part, waiting)
            fills = {sid: self.window_fill(w, waiting[sid], sizes[sid]) for sid, w in windows.items() if w.exists}
            step = core.health.redis_step()
            with step:
                loaded += await core.cache.fill_many(fills)
            if step.failed:
                return loaded
            if on_progress is not None:
                on_progress(min(i + chunk, len(sids)), len(sids))
        return loaded

    async def warmup(self, limit: int, active_within: float | None, on_progress: ProgressFn | None) -> int:
        core = self.core
        if core.store is None:
            return 0
        with core.health.store_step():
            sids = await core.store.recent_sessions(limit, active_within)
        return await self.prefetch(sids, on_progress)
