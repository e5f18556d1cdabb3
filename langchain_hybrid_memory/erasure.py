"""Erasure and invalidation: dropping cached windows, erasing sessions and users from both stores, deleting
single messages, retention, and listing what is stored.

An erased session leaves a tombstone covering every sequence number assigned so far, so write-behind entries
still in flight (in this process or another) cannot bring a deleted message back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .cache import CacheDown, Refill
from .checkpoint.store import delete_user_threads, purge_idle_threads
from .errors import StorageUnavailableError
from .messages import encode
from .outbox import OutboxEntry
from .refill import ProgressFn

if TYPE_CHECKING:
    from .core import Core
    from .reads import ReadPath


class Eraser:
    def __init__(self, core: Core, reads: ReadPath) -> None:
        self.core = core
        self.reads = reads

    async def invalidate(self, sid: str, uid: str | None) -> None:
        await self.core.ensure_started()
        await self.core.check_user(sid, uid)
        await self.core.health.drop_cached([sid])

    async def user_sessions(self, uid: str) -> list[str]:
        """Every session of the user: PostgreSQL's, and the cache's index (session_only, or not yet committed)."""
        core = self.core
        sids: set[str] = set()
        if core.store is not None:
            with core.health.store_step():
                sids.update(await core.store.user_sessions(uid))
        if core.use_cache():
            assert core.cache is not None
            with core.health.redis_step():
                sids.update(await core.cache.user_sessions(uid))
        return sorted(sids)

    async def invalidate_user(self, uid: str) -> int:
        await self.core.ensure_started()
        sids = await self.user_sessions(uid)
        await self.core.health.drop_cached(sids)
        return len(sids)

    async def clear(self, sid: str, uid: str | None) -> int:
        await self.core.ensure_started()
        await self.core.check_user(sid, uid)
        return await self.erase([sid])

    async def erase(self, sids: Sequence[str]) -> int:
        """Delete sessions everywhere; returns how many stored messages PostgreSQL deleted."""
        core = self.core
        # The tombstone covers every write acknowledged so far: sequence numbers come from Redis's clock, and
        # another process's writes may wait in the outbox after the window (and the last seq its meta held) went.
        upto = [time.time_ns() // 1000 for _ in sids]
        if core.cache is not None and core.use_cache():
            with core.health.redis_step():
                metas = await core.cache.last_seqs(sids)
                upto = [max(u, m) for u, m in zip(upto, metas, strict=True)]
        # It covers the writes still waiting too: this process's queue, any process's outbox (one exchange)
        for i, (waiting, _) in enumerate(await self.reads.waiting_many(sids)):
            upto[i] = max([upto[i], *(r.seq for r in waiting)])
        gone: list[OutboxEntry] = []
        if core.wb is not None:
            for sid in sids:
                gone += core.wb.drop_session(sid)
        deleted = 0
        if core.store is not None:
            with core.health.store_step():
                deleted = await core.store.delete_sessions(sids, upto)
                if core.recall is not None:
                    core.recall.forget_vectors()
        if gone and core.wb is not None:
            await core.wb.ack(gone)  # out of the outbox too: a refill must not bring them back
        if core.use_cache():
            assert core.cache is not None
            with core.health.redis_step():
                await core.cache.forget_outbox(sids)  # other writers' entries too: no trace left in Redis
        await core.health.drop_cached(sids)
        return deleted

    async def delete_messages(self, sid: str, uid: str | None, seqs: list[int]) -> int:
        core = self.core
        await core.ensure_started()
        await core.check_user(sid, uid)
        if not seqs:
            return 0
        if core.store is None:  # session_only: rebuild the window without them
            kept = [m for m in await self.reads.window(sid, None, core.config.max_session_messages)
                    if m.seq not in set(seqs)]
            gen = await core.health.drop_cached([sid])
            if kept:
                assert core.cache is not None
                fill = Refill(max(m.seq or 0 for m in kept), uid, [(m.seq or 0, m.id, encode(m)) for m in kept])
                fill.gen = gen
                await core.cache.fill(sid, fill)
            return 0
        # Commit this process's queued writes first, so the row exists before it is deleted.
        await core.flush(core.config.pg_timeout)
        with core.health.store_step():
            n = await core.store.delete_messages(sid, seqs)
            if core.recall is not None:
                core.recall.forget_vectors()
        await core.health.drop_cached([sid])
        return n

    async def list_sessions(self, uid: str | None, limit: int | None) -> list[str]:
        core = self.core
        await core.ensure_started()
        if core.store is not None:
            # Every write acknowledged so far committed first, any process's: PostgreSQL then lists them all.
            await self.settle()
            # Queued first: a session whose first commit lands during the query is then in one of the two.
            found = set(core.wb.queued_sessions()) if core.wb is not None and uid is None else set()
            with core.health.store_step():
                found.update(await core.store.list_sessions(uid, None))
        else:
            assert core.cache is not None
            try:
                found = set(await core.cache.active_sessions())
                if uid is not None:  # a user's index keeps sessions emptied since: list only those still cached
                    found &= set(await core.cache.user_sessions(uid))
            except CacheDown:
                raise StorageUnavailableError("Redis is unreachable and mode is session_only") from None
        out = sorted(found)
        return out[:limit] if limit is not None else out

    async def delete_user(self, uid: str) -> int:
        core = self.core
        await core.ensure_started()
        sids = await self.user_sessions(uid)
        if sids:
            await self.erase(sids)
        if core.use_cache():
            assert core.cache is not None
            with core.health.redis_step():
                await core.cache.forget_user(uid)
        if core.store is not None:  # the user's LangGraph threads (HybridSaver) too
            await self.settle()
            with core.health.store_step():
                threads = await delete_user_threads(core.store, uid)
            await self.forget_threads(threads)
        return len(sids)

    async def settle(self) -> None:
        """Commit every waiting write, messages and checkpoint records (this process's queue, then any process's
        outbox entries), so that PostgreSQL shows every acknowledged write before a query over all of them."""
        core = self.core
        if core.wb is None:
            return
        if not await core.wb.flush(core.config.pg_timeout):
            raise StorageUnavailableError("PostgreSQL did not take the waiting writes in time")
        if core.use_cache():
            with core.health.store_step(), core.health.redis_step():
                await core.wb.reclaim(0.0)

    # -- checkpoint threads (HybridSaver) ----------------------------------------------------------------
    async def forget_threads(self, thread_ids: Sequence[str]) -> None:
        """Drop erased threads' queued records, outbox entries and hot state, so nothing brings them back."""
        core = self.core
        if not thread_ids:
            return
        if core.wb is not None:
            for thread_id in thread_ids:
                await core.wb.ack(core.wb.drop_thread(thread_id))
        if core.use_cache():
            assert core.cache is not None
            with core.health.redis_step():
                for thread_id in thread_ids:
                    k = core.keys.thread(thread_id)
                    gone = await core.cache.checkpoint_outbox(thread_id)
                    await core.cache.ack([(k.outbox, k.entries, x) for x, _ in gone])
        await self.drop_hot_threads(thread_ids)

    async def drop_hot_threads(self, thread_ids: Sequence[str]) -> None:
        """Drop threads' hot state in Redis now or, Redis down, as soon as it answers again."""
        core = self.core
        if not thread_ids:
            return
        step = core.health.redis_step()
        if core.use_cache():
            assert core.cache is not None
            with step:
                await core.cache.checkpoint_drop(thread_ids)
        if step.failed or not core.use_cache():
            await core.health.drop_later(thread_ids=thread_ids)

    async def purge_idle(self, older_than: float, on_progress: ProgressFn | None) -> int:
        core = self.core
        await core.ensure_started()
        store = core.need_store()
        await self.settle()
        with core.health.store_step():
            threads = await purge_idle_threads(store, older_than)  # LangGraph threads (HybridSaver) idle as long
        await self.forget_threads(threads)
        with core.health.store_step():
            total = await store.count_idle_sessions(older_than)
            done = 0
            while True:
                batch = await store.idle_sessions(older_than, 500)
                if not batch:
                    return done
                await self.erase(batch)
                done += len(batch)
                if on_progress is not None:
                    on_progress(min(done, total), total)
