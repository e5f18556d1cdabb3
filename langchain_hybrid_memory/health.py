"""Failover, in one place: whether Redis and PostgreSQL answer, the probe that brings Redis back, the sessions
written around Redis meanwhile, and the translation of their errors.

A Redis error or timeout marks Redis down for the whole process; calls then go to PostgreSQL, and a probe
pings Redis every `health_check_interval`. Sessions written to PostgreSQL during the outage are remembered
(here, and in PostgreSQL's `cache_dirty` for other processes) and their cached windows dropped before the
cache serves anything again, so a network cut that kept Redis's data never serves a stale window. A drop
gives the session a new generation (keys.py): a window any process loaded from PostgreSQL before it (a slow
fill, or one a cut network delivers late) is refused, since it may lack the write that caused the drop.

A call site says what a step may do with one line:

    with core.health.redis_step():      # a Redis error marks Redis down and the step is skipped
        ...
    with core.health.store_step():      # a PostgreSQL error becomes StorageUnavailableError
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from .cache import CacheDown
from .config import Mode, redact_url
from .errors import StorageUnavailableError
from .store import THREAD_MARK, StoreDown

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("langchain_hybrid_memory")


class RedisStep:
    """A step that Redis may fail: the error marks Redis down and is swallowed; `failed` tells the caller."""

    __slots__ = ("_health", "failed")

    def __init__(self, health: Health) -> None:
        self._health = health
        self.failed = False

    def __enter__(self) -> RedisStep:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> bool:
        if isinstance(e, CacheDown):
            self.failed = True
            self._health.redis_failed()
            return True
        return False


class StoreStep:
    """A step that PostgreSQL may fail: the error becomes `StorageUnavailableError` (and PostgreSQL is marked
    down until a commit succeeds)."""

    __slots__ = ("_health",)

    def __init__(self, health: Health) -> None:
        self._health = health

    def __enter__(self) -> None:
        return None

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(e, StoreDown):
            raise self._health.store_down(e) from None


class Health:
    def __init__(self, core: Core) -> None:
        self.core = core
        mode = core.config.mode
        self.redis_up = mode is not Mode.PERSISTENT
        self.pg_up = mode is not Mode.SESSION_ONLY
        self.dirty: set[str] = set()  # sessions written to PostgreSQL directly while Redis was down
        self.dirty_threads: set[str] = set()  # checkpoint threads likewise (their hot state may be stale)
        self.probe: asyncio.Task[None] | None = None
        self._store_step = StoreStep(self)

    def redis_step(self) -> RedisStep:
        return RedisStep(self)

    def store_step(self) -> StoreStep:
        return self._store_step  # stateless: one serves every call

    def set_pg_up(self, up: bool) -> None:
        self.pg_up = up

    def store_down(self, exc: StoreDown) -> StorageUnavailableError:
        self.pg_up = False
        return StorageUnavailableError(
            f"PostgreSQL at {redact_url(self.core.config.database_dsn())} is unreachable ({exc})")

    def redis_failed(self) -> None:
        """Redis did not answer: serve from PostgreSQL (hybrid mode) until the probe reaches it again."""
        self.core.stats.redis_errors += 1
        if self.core.config.mode is not Mode.HYBRID:
            return
        if self.redis_up:
            log.warning("hybrid-memory: Redis unreachable; serving from PostgreSQL until it answers again")
        self.redis_up = False
        if self.probe is None or self.probe.done():
            self.probe = asyncio.get_running_loop().create_task(self._probe_redis())

    async def drop_later(self, sids: Sequence[str] = (), thread_ids: Sequence[str] = ()) -> None:
        """Cached windows and checkpoint threads' hot state that Redis could not drop now: remembered here, and
        marked in PostgreSQL, so that any process's janitor drops them even if this one never reaches Redis
        again."""
        self.dirty.update(sids)
        self.dirty_threads.update(thread_ids)
        store = self.core.store
        if store is not None and self.core.config.mode is Mode.HYBRID:
            with contextlib.suppress(StoreDown):
                await store.mark_dirty([*sids, *(THREAD_MARK + t for t in thread_ids)])

    def written_around_redis(self, sid: str) -> None:
        """A session was written to PostgreSQL directly: its cached window (if Redis kept one) is stale."""
        self.dirty.add(sid)

    async def _probe_redis(self) -> None:
        cache = self.core.cache
        assert cache is not None
        while not self.core.closed:
            await asyncio.sleep(self.core.config.health_check_interval)
            stage = "ping"
            try:
                await cache.ping()
                # Sessions written while Redis was away may still have a pre-outage window there (a network
                # cut keeps data): drop them before the cache serves anything.
                stage = "dropping the windows written around it"
                await self.drop_dirty()
                try:
                    stage = "dropping other processes' marked windows"
                    await self.purge_dirty()  # other processes' (marked in PostgreSQL)
                except StoreDown:
                    pass  # the next janitor pass of any process drops them
                stage = "dropping the windows written around it meanwhile"
                await self.drop_dirty()  # ours written meanwhile
                stage = "checking the eviction policy"
                await self.core.check_eviction_policy()  # it may have changed while Redis was away
            except CacheDown as exc:
                log.debug("hybrid-memory: Redis probe: %s failed (%s)", stage, exc)
                continue
            # No await since drop_dirty found none left: a write still in flight drops its own session
            # (WritePath.add_direct).
            self.redis_up = True
            log.warning("hybrid-memory: Redis is back; the cache warms up again")
            return

    async def drop_dirty(self) -> None:
        """Drop the cached windows of sessions this process wrote to PostgreSQL directly, until none is left
        (direct writes go on while it runs)."""
        cache = self.core.cache
        assert cache is not None
        passes = dropped = 0
        while self.dirty or self.dirty_threads:
            dirty, threads = list(self.dirty), list(self.dirty_threads)
            await self.core.settle_fills(dirty)
            await cache.drop(dirty)
            await cache.checkpoint_drop(threads)
            self.dirty.difference_update(dirty)
            self.dirty_threads.difference_update(threads)
            passes, dropped = passes + 1, dropped + len(dirty) + len(threads)
        if passes > 1:
            log.debug("hybrid-memory: Redis probe: dropped %d windows written around Redis in %d passes", dropped,
                      passes)

    async def purge_dirty(self) -> None:
        """Drop the windows of the sessions any process wrote to PostgreSQL directly (`cache_dirty`): when this
        process's Redis answers again, and on every janitor pass (their writer may never reach Redis again, and
        a write re-sequenced by the flusher goes around the window too). The marks are taken first (a write in
        progress keeps its mark locked, so it stays for the next pass: store.take_dirty), then the windows
        dropped, which covers every write committed before."""
        store, cache = self.core.store, self.core.cache
        if store is None or cache is None:
            return
        dirty = await store.take_dirty()
        if not dirty:
            return
        sessions = [m for m in dirty if not m.startswith(THREAD_MARK)]
        threads = [m[len(THREAD_MARK):] for m in dirty if m.startswith(THREAD_MARK)]
        try:
            await self.core.settle_fills(sessions)
            await cache.drop(sessions)
            await cache.checkpoint_drop(threads)
        except BaseException:
            await store.mark_dirty(dirty)  # not dropped: the next pass tries again
            raise

    async def drop_cached(self, sids: Sequence[str]) -> bytes | None:
        """Drop cached windows now, or (Redis down) as soon as it answers again; the generation they were
        dropped under (None: not dropped yet)."""
        cache = self.core.cache
        if cache is None:
            return None
        await self.core.settle_fills(sids)
        try:
            return await cache.drop(sids)
        except CacheDown:
            self.redis_failed()
            if self.core.config.mode is Mode.SESSION_ONLY:
                raise StorageUnavailableError("Redis is unreachable") from None
            await self.drop_later(sids)
            return None
