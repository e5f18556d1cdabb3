"""`Core`: what every part of the engine shares (settings, clients, queues, health), and the engine's start.

`HybridMemory` (memory.py) owns one and hands it to the read path, write path, refills, erasure and summary
operations; none of them holds state of its own beyond what is here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import ResponseError

from ._loop import EngineLoop
from .cache import CacheDown, OwnershipConflict, RedisCache, SyncHotPath, TouchLog, detect_cluster
from .config import HybridConfig, Mode, redact_url
from .embeddings import Embedder, as_embedder
from .errors import MemoryClosedError, SessionOwnershipError, StorageUnavailableError
from .health import Health
from .keys import KeyLayout
from .messages import CorruptEntry
from .outbox import WriteBehind
from .recall import Recall
from .stats import Stats
from .store import LoopConnection, PostgresStore, PrivateConnection, Row, StoreDown
from .summaries import SummaryWorker
from .summarizers import TokenCounter, as_summarizer, default_summarizer, default_token_counter

log = logging.getLogger("langchain_hybrid_memory")

# What a hot-path call learned from Redis before handing over to the engine loop, when it is not a result:
UNKNOWN: Any = object()  # nothing (not asked, or Redis failed)
CORRUPT: Any = object()  # the cached entry is damaged: drop it, then proceed as on a miss


class PendingFill:
    """A window loaded for a read, to be cached in the background (see `Refiller.cache_later`): `run` starts
    that on the engine loop, at most once, whoever asks first; `done` is set when it has finished."""

    __slots__ = ("done", "run", "started")

    def __init__(self, run: Callable[[], concurrent.futures.Future[None] | None]) -> None:
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.run = run
        self.started = False

    def start(self) -> None:
        """Start it (engine loop) unless it has been."""
        if not self.started:
            self.started = True
            self.run()


class Core:
    """Settings, clients, queues and health of one `HybridMemory`."""

    def __init__(self, config: HybridConfig, summarizer: Any, token_counter: TokenCounter | None,
                 embedder: Any = None) -> None:
        self.config = config
        self.keys = KeyLayout(config.namespace, config.outbox_shards)
        self.touches = TouchLog(config.session_ttl)  # shared by every Redis client of this memory
        self.engine = EngineLoop()
        self.stats = Stats()
        self.health = Health(self)
        self.cache: RedisCache | None = None  # the engine loop's client
        self.sync: SyncHotPath | None = None  # blocking client for the sync hot path
        # Callers' loops get clients of their own (connections belong to one loop), from their second call on.
        self.loop_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisCache] = (
            weakref.WeakKeyDictionary())
        self.loops_seen: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        # ... and a PostgreSQL connection for their cold reads, once they have a Redis client.
        self.loop_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopConnection] = (
            weakref.WeakKeyDictionary())
        self.private: PrivateConnection | None = None  # the sync API's, for cold reads in the caller's thread
        self._private_lock = threading.Lock()
        self.store: PostgresStore | None = None
        # Windows loaded for a read and being cached in the background, by session (see Refiller.cache_later).
        self.fills: dict[str, PendingFill] = {}
        self.wb: WriteBehind | None = None
        self.summaries: SummaryWorker | None = None
        self.recall: Recall | None = None
        self.cluster = False
        # Acknowledge writes only once PostgreSQL has them: asked for (async_writes=False), or forced by an
        # eviction policy that may drop the outbox (see check_eviction_policy).
        self.write_through = not config.async_writes
        self.local_reads = False  # keep checkpoint values under leases (cache/tracking.py): set at start
        self.started = False
        self.closed = False
        self._start_lock: asyncio.Lock | None = None
        self.summarizer_arg = summarizer
        self.embedder: Embedder | None = None
        if embedder is not None:
            # Vectors are scored with numpy: imported here, in the constructor, so that no coroutine of the
            # engine loop reads its modules from disk on the first search or embedding pass.
            import numpy  # noqa: F401

            self.embedder = as_embedder(embedder)
        self.token_counter = token_counter

    # -- start -------------------------------------------------------------------------------------------
    async def ensure_started(self) -> None:
        """Connect on first use (on the engine loop); every engine-loop operation starts with this."""
        if self.started:
            return
        if self.closed:
            raise MemoryClosedError("this HybridMemory is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.started:
                return
            cfg = self.config
            if cfg.mode is not Mode.PERSISTENT:
                self.cluster = await detect_cluster(cfg)
                self.cache = RedisCache(cfg, self.keys, self.cluster, self.touches)
                # In a thread: a Cluster client connects in its constructor (blocking sockets).
                self.sync = await asyncio.to_thread(SyncHotPath, cfg, self.keys, self.cluster, self.touches)
            if cfg.mode is not Mode.SESSION_ONLY:
                self.store = PostgresStore(cfg)
                try:
                    await self.store.connect()
                    if cfg.auto_migrate:
                        await self.store.migrate()
                except StoreDown as exc:
                    self.store = None
                    raise StorageUnavailableError(
                        f"PostgreSQL at {redact_url(cfg.database_dsn())} is unreachable ({exc})") from None
                health = self.health
                self.wb = WriteBehind(cfg, self.cache, self.store, self.stats, lambda: health.redis_up,
                                      health.set_pg_up, health.purge_dirty if cfg.mode is Mode.HYBRID else None)
                self.wb.start()
                self.recall = Recall(self)
                self.recall.start()
                if cfg.enable_auto_summarize:
                    summarizer = (as_summarizer(self.summarizer_arg) if self.summarizer_arg is not None
                                  else default_summarizer(cfg.summary_model, cfg.summary_timeout))
                    self.summaries = SummaryWorker(
                        cfg, self.store, self.wb, self.stats, summarizer,
                        self.token_counter or default_token_counter(),
                        lambda: self.cache if health.redis_up else None)
                    self.summaries.start()
            if self.cache is not None:
                try:
                    await self.check_eviction_policy()
                except CacheDown:
                    self.health.redis_failed()
            self.started = True

    async def start(self) -> None:
        """Connect now."""
        await self.ensure_started()

    async def check_eviction_policy(self) -> None:
        """Under an allkeys-* policy Redis may evict an outbox entry before its write reaches PostgreSQL; other
        processes would then read around an acknowledged write (and may cache that). Writes are then acknowledged
        after the commit instead. Raises CacheDown when Redis does not answer."""
        if self.cache is None or self.wb is None or self.config.mode is not Mode.HYBRID:
            return
        policy = await self.cache.eviction_policy()
        # Values are kept under leases only where Redis never evicts one (tracking.py).
        self.local_reads = self.config.redis_key_tracking and policy == "noeviction" and not self.cluster
        for cache in (self.cache, *self.loop_caches.values()):
            cache.local_reads = self.local_reads  # off: what a connection keeps is no longer answered
        forced = policy.startswith("allkeys")
        if forced and not self.write_through:
            log.warning("hybrid-memory: Redis maxmemory-policy is %s: it may evict outbox entries before they "
                        "reach PostgreSQL, so writes are acknowledged after the commit (slower); use "
                        "volatile-lru or noeviction to keep write-behind", policy)
        self.write_through = forced or not self.config.async_writes

    async def close(self, flush_timeout: float) -> None:
        """Stop the background work (flushing the write-behind queue first) and close the connections."""
        if self.closed:
            return
        self.closed = True
        if not self.started:
            return
        if self.health.probe is not None:
            self.health.probe.cancel()
        if self.summaries is not None:
            await self.summaries.stop()
        if self.recall is not None:
            await self.recall.stop()
        if self.fills:
            await self.settle_fills(list(self.fills), timeout=self.config.redis_timeout * 2)
        if self.wb is not None:
            if not await self.wb.flush(flush_timeout):
                log.warning("hybrid-memory: closing with %d acknowledged messages not yet in PostgreSQL; "
                            "they stay in the Redis outbox and the next process persists them",
                            self.wb.backlog)
            await self.wb.stop()
        if self.cache is not None:
            await self.cache.close()
        if self.sync is not None:
            self.sync.close()
        if self.store is not None:
            await self.store.close()

    # -- callers' loops ----------------------------------------------------------------------------------
    def loop_cache(self) -> RedisCache | None:
        """The async Redis client bound to the running loop (connections belong to one loop).

        None on a loop's first call: a loop seen once may be a throwaway (`asyncio.run` per call, as
        LlamaIndex's sync wrappers do), and a client opened for it would leak its connection; such calls take
        the engine loop's path. From the second call on, the loop gets a client of its own, closed when the
        loop shuts down.
        """
        loop = asyncio.get_running_loop()
        if self.engine.in_loop():
            return self.cache
        cache = self.loop_caches.get(loop)
        if cache is None:
            if loop not in self.loops_seen:
                self.loops_seen.add(loop)
                return None
            cache = self.loop_caches[loop] = RedisCache(self.config, self.keys, self.cluster, self.touches)
            cache.local_reads = self.local_reads
            cache.close_with_loop()
        return cache

    def loop_store(self) -> LoopConnection | None:
        """The running loop's PostgreSQL connection for a cold read, taken (release it after); None: use the
        engine loop (this loop has no Redis client of its own yet, its connection is busy or not open yet, or
        PostgreSQL is down). Only a loop with a Redis client of its own (see `loop_cache`) gets one."""
        if self.store is None or not self.health.pg_up:
            return None
        loop = asyncio.get_running_loop()
        if loop not in self.loop_caches:
            return None
        conn = self.loop_stores.get(loop)
        if conn is None:
            conn = self.loop_stores[loop] = LoopConnection(self.config)
            conn.close_with_loop()
        return conn if conn.take() else None

    def private_store(self) -> PrivateConnection | None:
        """For a sync cold read in the calling thread: the private PostgreSQL connection, acquired (release it
        after); None: use the engine loop."""
        if self.store is None or not self.health.pg_up or self.closed:
            return None
        conn = self.private
        if conn is None:
            with self._private_lock:
                if self.private is None:
                    self.private = PrivateConnection(self.config)
                conn = self.private
        return conn if conn.acquire() else None

    def close_private(self) -> None:
        """Close the private connection (blocks: from a thread that runs no loop)."""
        with self._private_lock:
            conn, self.private = self.private, None
        if conn is not None:
            conn.close()

    def close_loop_caches(self) -> list[asyncio.Future[None] | concurrent.futures.Future[None]]:
        """Close the clients (Redis, PostgreSQL) of the callers' loops, each on its own loop; returns the closes
        under way.

        A loop that no longer runs cannot close anything: its client is abandoned (asyncio.run and its kin
        already closed it when the loop shut down, see `RedisCache.close_with_loop`).
        """
        caches: list[tuple[asyncio.AbstractEventLoop, RedisCache | LoopConnection]] = [
            *self.loop_caches.items(), *self.loop_stores.items()]
        self.loop_caches, self.loop_stores = weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary()
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        closing: list[asyncio.Future[None] | concurrent.futures.Future[None]] = []
        for loop, cache in caches:
            if loop is here:
                closing.append(loop.create_task(cache.close()))
            elif loop.is_running():
                closing.append(asyncio.run_coroutine_threadsafe(cache.close(), loop))
            else:
                cache.abandon()
        return closing

    async def flush(self, timeout: float | None) -> None:
        """Return once every write this process acknowledged is committed in PostgreSQL."""
        await self.ensure_started()
        if self.wb is not None and not await self.wb.flush(timeout):
            raise StorageUnavailableError(
                f"{self.wb.backlog} acknowledged messages are not yet in PostgreSQL after {timeout}s")

    # -- shared helpers ----------------------------------------------------------------------------------
    def use_cache(self) -> bool:
        return self.cache is not None and self.health.redis_up

    def hot(self, limit: int) -> bool:
        """Whether a call may go to Redis from the caller's own thread or loop (no hop to the engine loop)."""
        return (self.started and not self.closed and self.health.redis_up and self.cache is not None
                and limit <= self.config.max_session_messages)

    def hot_read(self, limit: int, sid: str) -> bool:
        """`hot`, for a read: not while the session's window is being cached (the engine loop waits for that
        and reads it, rather than the read missing and loading PostgreSQL again)."""
        return self.hot(limit) and not (self.fills and sid in self.fills)

    async def settle_fills(self, sids: Iterable[str], timeout: float | None = None) -> None:
        """Finish the background refills of these sessions (engine loop): a drop must not be overtaken by one,
        and a read should find the window they cache."""
        if self.fills:
            pending = [job for job in map(self.fills.get, sids) if job is not None]
            for job in pending:
                job.start()
            if pending:
                await asyncio.wait([asyncio.wrap_future(job.done) for job in pending], timeout=timeout)

    def need_store(self) -> PostgresStore:
        if self.store is None:
            raise StorageUnavailableError("PostgreSQL is not configured (mode=session_only)")
        return self.store

    def queued_rows(self, sid: str) -> list[Row]:
        """This process's uncommitted rows of `sid`, from any thread. Take them *before* querying PostgreSQL: a
        row committed in between is then in one of the two, never in neither."""
        if self.wb is None:
            return []
        return self.wb.queued_rows(sid) if self.engine.in_loop() else self.wb.peek_rows(sid)

    def summary_due(self, sid: str) -> None:
        if self.summaries is not None:
            self.summaries.request(sid)

    def on_engine_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` on the engine loop, in order with later calls from this thread (state lives there)."""
        if self.engine.in_loop():
            fn(*args)
        else:
            self.engine.loop.call_soon_threadsafe(fn, *args)

    def start_from(self, got: Any) -> Any:
        """What the engine loop starts from after a hot call that did not finish: UNKNOWN after a Redis failure
        (Redis is marked down, on the engine loop), CORRUPT after a damaged entry (or a script that choked on
        one), else the reply itself. Any other error is the caller's."""
        if isinstance(got, CacheDown):
            self.on_engine_loop(self.health.redis_failed)
            return UNKNOWN
        if isinstance(got, OwnershipConflict):
            raise SessionOwnershipError("this session belongs to another user") from None
        if isinstance(got, (CorruptEntry, ResponseError)):
            return CORRUPT
        if isinstance(got, BaseException):
            raise got
        return got

    @staticmethod
    def check_owner(owner: str | None, uid: str | None) -> None:
        if uid is not None and owner and owner != uid:
            raise SessionOwnershipError("this session belongs to another user")

    async def cached_owner(self, sid: str) -> str | None:
        if not self.use_cache():
            return None
        assert self.cache is not None
        with self.health.redis_step():
            return (await self.cache.owners([sid]))[0]
        return None

    async def owner_of(self, sid: str) -> str | None:
        """The session's owner: as the cached window names it, else as writes still waiting name it (this
        process's queue, any process's outbox: a dropped window took the binding with it, and PostgreSQL has it
        only once they commit; asked before PostgreSQL, so one committed meanwhile is in one of the two), else
        as PostgreSQL names it."""
        owner = await self.cached_owner(sid)
        if owner is None and self.wb is not None:
            owner = self.wb.queued_owner(sid)
            if owner is None and self.use_cache():
                assert self.cache is not None
                with self.health.redis_step():
                    owner = next((uid for *_, uid in await self.cache.session_outbox(sid) if uid), None)
        if owner is None and self.store is not None:
            with self.health.store_step():
                owner = (await self.store.owner(sid))[1]
        return owner

    async def check_user(self, sid: str, uid: str | None) -> None:
        """Refuse `uid` if the session belongs to another user (no check without a user)."""
        if uid is not None:
            self.check_owner(await self.owner_of(sid), uid)
