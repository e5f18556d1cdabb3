"""The write path: an append is one Lua script in Redis (sequence numbers, idempotence, the window, the outbox
entry), acknowledged there and committed to PostgreSQL in the background (outbox.py); with Redis down, the
write goes to PostgreSQL directly and the session is remembered as written around Redis (health.py).

The hot append runs in the caller's own thread or loop (`finish_hot_append` finishes it); everything else continues on
the engine loop (`add`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .cache import AppendResult, Miss, OwnershipConflict
from .config import Mode
from .core import CORRUPT, UNKNOWN
from .errors import BacklogFullError, SessionOwnershipError, StorageUnavailableError
from .messages import Message
from .outbox import OutboxEntry
from .store import Row

if TYPE_CHECKING:
    from .core import Core
    from .reads import ReadPath
    from .refill import Refiller


class WritePath:
    def __init__(self, core: Core, refill: Refiller, reads: ReadPath) -> None:
        self.core = core
        self.refill = refill
        self.reads = reads

    def check_room(self, n: int) -> None:
        wb = self.core.wb
        if wb is not None and not wb.has_room(n):
            raise BacklogFullError(
                f"PostgreSQL has not accepted writes for a while and {wb.backlog} messages wait "
                f"(max_backlog={self.core.config.max_backlog}); nothing was written")

    # -- in the caller's thread or loop ------------------------------------------------------------------
    def finish_hot_append(self, got: Any, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                          t0: float) -> list[Message] | Any:
        """Finish a hot append from its reply (or the exception it raised): the stamped messages, or what the
        engine loop should start from (UNKNOWN, CORRUPT, or a reply the hot path cannot finish)."""
        core = self.core
        if isinstance(got, AppendResult):
            if got.bound and uid:
                return got  # binding the session to its user also updates the user's index: engine loop
            entry = self.appended(sid, uid, items, payloads, got)
            if entry is not None:
                assert core.wb is not None
                core.wb.submit(entry)
            if got.due:  # after the submit: the worker's flush must include this very write
                core.on_engine_loop(core.summary_due, sid)
            core.stats.writes += 1
            core.stats.write_lat.append(time.perf_counter() - t0)
            return items
        return core.start_from(got)

    def appended(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                 res: AppendResult) -> OutboxEntry | None:
        """Stamp seqs on the returned messages; build the write-behind entry for the new ones."""
        rows = []
        for msg, payload, seq, new in zip(items, payloads, res.seqs, res.new, strict=True):
            msg.seq = seq
            if new:
                rows.append(Row(sid, seq, msg.id, msg.role, payload, msg.created_at or 0.0))
        if self.core.wb is None or not rows:
            return None
        keys = self.core.keys.session(sid)
        stream = keys.outbox if res.entry_id else ""
        return OutboxEntry(stream, res.entry_id, sid, uid or "", rows, names=keys.entries)

    # -- on the engine loop ------------------------------------------------------------------------------
    async def add(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                  first: Any = UNKNOWN) -> list[Message]:
        """Append `items`; `first` is what a hot append already got from Redis."""
        core = self.core
        await core.ensure_started()
        if not items:
            return []
        t0 = time.perf_counter()
        if core.use_cache() or isinstance(first, AppendResult):
            step = core.health.redis_step()
            with step:
                await self._add_cached(sid, uid, items, payloads, first)
            if step.failed:
                if core.config.mode is Mode.SESSION_ONLY:
                    raise StorageUnavailableError("Redis is unreachable and mode is session_only")
                await self.add_direct(sid, uid, items, payloads)
        else:
            await self.add_direct(sid, uid, items, payloads)
        core.stats.writes += 1
        core.stats.write_lat.append(time.perf_counter() - t0)
        return items

    async def _add_cached(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                          first: Any) -> None:
        core = self.core
        cache = core.cache
        assert cache is not None
        hybrid = core.config.mode is Mode.HYBRID
        wb = core.wb
        ids = [m.id for m in items]
        res: AppendResult | Miss | None = None
        try:
            if first is UNKNOWN:
                self.check_room(len(items))
                try:
                    res = await cache.append(sid, uid, ids, payloads, persist=hybrid)
                except ResponseError:
                    first = CORRUPT
            if first is CORRUPT:
                await self.reads.drop_corrupt(sid)
                res = await cache.append(sid, uid, ids, payloads, persist=hybrid)
            elif first is not UNKNOWN:
                res = first
            for _ in range(3):
                if not isinstance(res, Miss):
                    break
                # Not cached: the script caches the refill and appends in one step, unless the window was
                # dropped since the miss (then loaded again)
                fill = await self.refill.load(sid, for_write=True)
                fill.gen = res.gen
                res = await cache.append(sid, uid, ids, payloads, persist=hybrid, init=fill)
        except OwnershipConflict:
            raise SessionOwnershipError("this session belongs to another user") from None
        if not isinstance(res, AppendResult):  # dropped again and again meanwhile: PostgreSQL takes it
            if core.store is None:
                raise StorageUnavailableError("the session's cached window kept being dropped during this write; "
                                              "nothing was written")
            await self.add_direct(sid, uid, items, payloads)
            return
        if res.bound and uid is not None:
            await cache.index_user(uid, sid)
        entry = self.appended(sid, uid, items, payloads, res)
        index = wb.add(entry) if wb is not None and entry is not None else None
        if res.due:
            core.summary_due(sid)
        if wb is not None and index is not None:
            if core.write_through and not await wb.wait_for(index, core.config.pg_timeout):
                raise StorageUnavailableError(
                    "PostgreSQL did not confirm the write in time (write-through mode); it stays queued and "
                    "retrying with the same message ids is safe")

    async def add_direct(self, sid: str, uid: str | None, items: list[Message], payloads: list[str]) -> None:
        """Redis down (or persistent mode): straight to PostgreSQL, above every seq still waiting."""
        core = self.core
        store = core.need_store()
        if uid is not None and core.wb is not None:  # PostgreSQL may not know the owner yet: the queue may
            core.check_owner(core.wb.queued_owner(sid), uid)
        floor = core.wb.queued_max_seq(sid) if core.wb is not None else 0
        hybrid = core.config.mode is Mode.HYBRID
        with core.health.store_step():
            _, seqs = await store.add_direct(
                sid, uid, [m.id for m in items], [m.role for m in items], payloads,
                [m.created_at or 0.0 for m in items], floor_seq=floor, mark_dirty=hybrid)
        if not seqs:
            raise SessionOwnershipError("this session belongs to another user")
        health = core.health
        health.pg_up = True
        if hybrid:
            health.written_around_redis(sid)
            core.stats.fallback_writes += 1
            if health.redis_up and core.cache is not None:
                # Redis came back while this write was in flight: the probe has dropped the dirty sessions
                # already, so this one drops its own stale window before the write is acknowledged.
                with health.redis_step():
                    await core.cache.drop([sid])
                    health.dirty.discard(sid)
        for msg, seq in zip(items, seqs, strict=True):
            msg.seq = seq
        core.summary_due(sid)  # the worker checks PostgreSQL's count itself
