"""`HybridMemory`: the facade. Read path, write path and failover live here; I/O lives in cache/store.

Every public operation has a sync and an async form. Both run the same coroutine on the engine loop
(`_loop.py`), so there is one implementation of each behaviour.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from ._loop import EngineLoop
from .cache import (
    AppendResult,
    CachedContext,
    CacheDown,
    Fill,
    OwnershipConflict,
    RedisCache,
    SyncHotPath,
    TouchLog,
    detect_cluster,
)
from .config import HybridConfig, Mode, redact_url, seconds
from .errors import (
    BacklogFullError,
    ConfigurationError,
    HybridMemoryError,
    InvalidInputError,
    InvalidMessageError,
    MemoryClosedError,
    SessionOwnershipError,
    StorageUnavailableError,
)
from .keys import KeyLayout
from .messages import (
    Context,
    CorruptEntry,
    Message,
    check_session_id,
    check_user_id,
    decode,
    decode_window,
    element,
    encode,
    prepare,
    split_element,
)
from .outbox import Pending, WriteBehind
from .stats import CacheStats, Stats
from .store import PostgresStore, Row, StoreDown, Window
from .summarize import LeaseBusy, SummaryWorker
from .summarizers import TokenCounter, as_summarizer, default_summarizer, default_token_counter

log = logging.getLogger("langchain_hybrid_memory")
T = TypeVar("T")
_UNKNOWN: Any = object()  # "the hot path did not learn what Redis holds for this session"
_CORRUPT: Any = object()  # "the cached entry is damaged": drop it, then proceed as on a miss
ProgressFn = Callable[[int, int], None]


class HybridMemory:
    """Chat memory on a Redis window over PostgreSQL. No I/O happens until the first call."""

    def __init__(self, config: HybridConfig | None = None, *, summarizer: Any = None,
                 token_counter: TokenCounter | None = None, **overrides: Any) -> None:
        """`summarizer`: a Summarizer, LangChain chat model, LlamaIndex LLM or `fn(previous, messages)`;
        default OpenAI when OPENAI_API_KEY is set, else the offline one. Used when enable_auto_summarize."""
        if config is None:
            config = HybridConfig.from_env(**overrides)
        elif overrides:
            config = HybridConfig(**{**dict(config), **overrides})
        self.config = config
        self.keys = KeyLayout(config.namespace, config.outbox_shards)
        self._touches = TouchLog(config.session_ttl)  # shared by every Redis client of this memory
        self._engine = EngineLoop()
        self._stats = Stats()
        self._cache: RedisCache | None = None  # the engine loop's client
        self._sync: SyncHotPath | None = None  # blocking client for the sync hot path
        self._loop_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisCache] = (
            weakref.WeakKeyDictionary())
        self._loops_seen: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._store: PostgresStore | None = None
        self._wb: WriteBehind | None = None
        self._started = False
        self._closed = False
        self._start_lock: asyncio.Lock | None = None
        self._redis_up = config.mode is not Mode.PERSISTENT
        self._pg_up = config.mode is not Mode.SESSION_ONLY
        self._probe: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()  # sessions written to PostgreSQL directly while Redis was down
        self._cluster = False
        self._summarizer_arg = summarizer
        self._token_counter = token_counter
        self._summaries: SummaryWorker | None = None
        self._atexit = _register_atexit(self)
        self._token = _register_live(self)  # names this engine in pickles taken from it

    def __repr__(self) -> str:
        c = self.config
        return (f"HybridMemory(mode={c.mode.value!r}, namespace={c.namespace!r}, "
                f"redis={redact_url(c.redis_dsn())!r}, database={redact_url(c.database_dsn())!r})")

    def __reduce__(self) -> tuple[Callable[..., HybridMemory], tuple[Any, ...]]:
        """Pickle as a handle to the engine: unpickled (or `copy.deepcopy`-ed) in this process, it is this very
        engine (same pools, same summarizer); in another process, a new `HybridMemory` from the same settings,
        connected lazily and closed at exit, shared by every object unpickled there from this engine. A closed
        engine comes back closed (`MemoryClosedError` on use). A custom summarizer or token counter is not
        carried: another process uses the defaults.

        A pickle never carries a secret: a URL with a password (and `redis_password`) is left out, and another
        process takes it from DATABASE_URL / REDIS_URL / REDIS_PASSWORD, as `HybridConfig.from_env` does."""
        settings, withheld = self.config.without_secrets()
        return _revive, (self._token, settings, withheld, self._closed)

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def _ensure_started(self) -> None:
        if self._started:
            return
        if self._closed:
            raise MemoryClosedError("this HybridMemory is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            cfg = self.config
            if cfg.mode is not Mode.PERSISTENT:
                self._cluster = await detect_cluster(cfg)
                self._cache = RedisCache(cfg, self.keys, self._cluster, self._touches)
                # In a thread: a Cluster client connects in its constructor (blocking sockets).
                self._sync = await asyncio.to_thread(SyncHotPath, cfg, self.keys, self._cluster, self._touches)
            if cfg.mode is not Mode.SESSION_ONLY:
                self._store = PostgresStore(cfg)
                try:
                    await self._store.connect()
                    if cfg.auto_migrate:
                        await self._store.migrate()
                except StoreDown as exc:
                    self._store = None
                    raise StorageUnavailableError(
                        f"PostgreSQL at {redact_url(cfg.database_dsn())} is unreachable ({exc})") from None
                self._wb = WriteBehind(cfg, self._cache, self._store, self._stats,
                                       lambda: self._redis_up, self._set_pg_up)
                self._wb.start()
                if cfg.enable_auto_summarize:
                    summarizer = (as_summarizer(self._summarizer_arg) if self._summarizer_arg is not None
                                  else default_summarizer(cfg.summary_model, cfg.summary_timeout))
                    self._summaries = SummaryWorker(
                        cfg, self._store, self._wb, self._stats, summarizer,
                        self._token_counter or default_token_counter(),
                        lambda: self._cache if self._redis_up else None)
                    self._summaries.start()
            self._started = True

    async def _start(self) -> None:
        await self._ensure_started()
        if self._cache is not None:
            try:
                await self._cache.ping()
                policy = await self._cache.eviction_policy()
                if policy.startswith("allkeys") and self._wb is not None:
                    log.warning("hybrid-memory: Redis maxmemory-policy is %s: it may evict outbox entries before "
                                "they reach PostgreSQL (the writer still commits its own); prefer volatile-lru or "
                                "noeviction", policy)
            except CacheDown:
                self._redis_failed()

    def start(self) -> None:
        """Connect now (optional: every call connects lazily)."""
        self._engine.run(self._start())

    async def astart(self) -> None:
        await self._engine.arun(self._start())

    async def _close(self, flush_timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        if self._probe is not None:
            self._probe.cancel()
        if self._summaries is not None:
            await self._summaries.stop()
        if self._wb is not None:
            if not await self._wb.flush(flush_timeout):
                log.warning("hybrid-memory: closing with %d acknowledged messages not yet in PostgreSQL; "
                            "they stay in the Redis outbox and the next process persists them",
                            self._wb.backlog)
            await self._wb.stop()
        if self._cache is not None:
            await self._cache.close()
        if self._sync is not None:
            self._sync.close()
        if self._store is not None:
            await self._store.close()

    def _close_loop_caches(self) -> list[asyncio.Future[None] | concurrent.futures.Future[None]]:
        """Close the clients of the callers' loops, each on its own loop; returns the closes under way.

        A loop that no longer runs cannot close anything: its client is abandoned (asyncio.run and its kin
        already closed it when the loop shut down, see `RedisCache.close_with_loop`).
        """
        caches, self._loop_caches = list(self._loop_caches.items()), weakref.WeakKeyDictionary()
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

    def close(self, flush_timeout: float = 10.0) -> None:
        """Flush the write-behind queue (bounded by `flush_timeout`), then close connections."""
        if self._engine.in_loop():
            raise RuntimeError("use aclose() from the engine loop")
        for fut in self._close_loop_caches():
            # A task on this thread's own loop (a sync close inside a running loop) finishes after we return.
            if isinstance(fut, concurrent.futures.Future):
                with contextlib.suppress(Exception):
                    fut.result(5)
        try:
            self._engine.run(self._close(flush_timeout), timeout=flush_timeout + 15)
        except TimeoutError:
            log.warning("hybrid-memory: close() timed out; what is unflushed stays in the Redis outbox")
        finally:
            self._engine.stop()
            atexit.unregister(self._atexit)

    async def aclose(self, flush_timeout: float = 10.0) -> None:
        closing = [asyncio.wrap_future(f) for f in self._close_loop_caches()]
        if closing:
            await asyncio.wait(closing, timeout=5)
        try:
            await self._engine.arun(self._close(flush_timeout))
        finally:
            await self._engine.astop()
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
        if self._closed:
            coro.close()
            raise MemoryClosedError("this HybridMemory is closed")
        return self._engine.run(coro)

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise MemoryClosedError("this HybridMemory is closed")
        return await self._engine.arun(coro)

    # -- health ------------------------------------------------------------------------------------------
    @property
    def redis_available(self) -> bool:
        return self._redis_up

    @property
    def postgres_available(self) -> bool:
        return self._pg_up

    def _set_pg_up(self, up: bool) -> None:
        self._pg_up = up

    def _redis_failed(self) -> None:
        self._stats.redis_errors += 1
        if self.config.mode is not Mode.HYBRID:
            return
        if self._redis_up:
            log.warning("hybrid-memory: Redis unreachable; serving from PostgreSQL until it answers again")
        self._redis_up = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_redis())

    async def _probe_redis(self) -> None:
        assert self._cache is not None
        while not self._closed:
            await asyncio.sleep(self.config.health_check_interval)
            try:
                await self._cache.ping()
                # Sessions written while Redis was away may still have a pre-outage window there (a network
                # cut keeps data): drop them before the cache serves anything.
                await self._drop_dirty()
                try:
                    await self._purge_dirty()  # other processes' (marked in PostgreSQL)
                except StoreDown:
                    pass  # theirs are dropped by their janitor
                await self._drop_dirty()  # ours written meanwhile
            except CacheDown:
                continue
            # No await since _drop_dirty found none left: a write still in flight drops its own session
            # (_add_direct).
            self._redis_up = True
            log.warning("hybrid-memory: Redis is back; the cache warms up again")
            return

    async def _drop_dirty(self) -> None:
        """Drop the cached windows of sessions this process wrote to PostgreSQL directly, until none is left
        (direct writes go on while it runs)."""
        assert self._cache is not None
        while self._dirty:
            dirty = list(self._dirty)
            await self._cache.drop(dirty)
            self._dirty.difference_update(dirty)

    async def _purge_dirty(self) -> None:
        if self._store is None or self._cache is None:
            return
        dirty = await self._store.dirty_sessions()
        if dirty:
            await self._cache.drop(dirty)
            await self._store.clear_dirty(dirty)

    def _use_cache(self) -> bool:
        return self._cache is not None and self._redis_up

    # -- hot path: one Redis round trip in the caller's own thread or loop, no hop to the engine loop -----
    def _hot(self, limit: int) -> bool:
        return (self._started and not self._closed and self._redis_up and self._cache is not None
                and limit <= self.config.max_session_messages)

    def _loop_cache(self) -> RedisCache | None:
        """The async Redis client bound to the running loop (connections belong to one loop).

        None on a loop's first call: a loop seen once may be a throwaway (`asyncio.run` per call, as
        LlamaIndex's sync wrappers do), and a client opened for it would leak its connection; such calls take
        the engine loop's path. From the second call on, the loop gets a client of its own.
        """
        loop = asyncio.get_running_loop()
        if self._engine.in_loop():
            return self._cache
        cache = self._loop_caches.get(loop)
        if cache is None:
            if loop not in self._loops_seen:
                self._loops_seen.add(loop)
                return None
            cache = self._loop_caches[loop] = RedisCache(self.config, self.keys, self._cluster, self._touches)
            cache.close_with_loop()
        return cache

    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` on the engine loop, in order with later calls from this thread."""
        if self._engine.in_loop():
            fn(*args)
        else:
            self._engine.loop.call_soon_threadsafe(fn, *args)

    def _hit(self, out: tuple[str, list[bytes]], uid: str | None, t0: float) -> list[Message]:
        self._check_owner(out[0] or None, uid)
        msgs = decode_window(out[1])
        s = self._stats
        s.hits += 1
        s.reads += 1
        s.read_lat.append(time.perf_counter() - t0)
        return msgs

    def _check_room(self, n: int) -> None:
        wb = self._wb
        if wb is not None and not wb.has_room(n):
            raise BacklogFullError(
                f"PostgreSQL has not accepted writes for a while and {wb.backlog} messages wait "
                f"(max_backlog={self.config.max_backlog}); nothing was written")

    def _appended(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                  res: AppendResult) -> Pending | None:
        """Stamp seqs on the returned messages; build the write-behind entry for the new ones."""
        rows = []
        for msg, payload, seq, new in zip(items, payloads, res.seqs, res.new, strict=True):
            msg.seq = seq
            if new:
                rows.append(Row(sid, seq, msg.id, msg.role, payload, msg.created_at or 0.0))
        if self._wb is None or not rows:
            return None
        return Pending(self.keys.session(sid).outbox if res.xid else "", res.xid, sid, uid or "", rows)

    def _summary_due(self, sid: str) -> None:
        if self._summaries is not None:
            self._summaries.request(sid)

    def _hot_done(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                  res: AppendResult, t0: float) -> list[Message]:
        entry = self._appended(sid, uid, items, payloads, res)
        if entry is not None:
            assert self._wb is not None
            self._wb.submit(entry)
        if res.due:  # after the submit: the worker's flush must include this very write
            self._soon(self._summary_due, sid)
        self._stats.writes += 1
        self._stats.write_lat.append(time.perf_counter() - t0)
        return items

    def _need_store(self) -> PostgresStore:
        if self._store is None:
            raise StorageUnavailableError("PostgreSQL is not configured (mode=session_only)")
        return self._store

    def _store_down(self, exc: StoreDown) -> StorageUnavailableError:
        self._pg_up = False
        return StorageUnavailableError(
            f"PostgreSQL at {redact_url(self.config.database_dsn())} is unreachable ({exc})")

    # -- write path --------------------------------------------------------------------------------------
    def _prepare(self, session_id: str, user_id: str | None, messages: Iterable[Message | dict[str, Any]],
                 ) -> tuple[str, str | None, list[Message], list[str]]:
        cfg = self.config
        sid = check_session_id(session_id, cfg.max_session_id_length)
        uid = check_user_id(user_id, cfg.max_session_id_length)
        items, payloads = prepare(messages, max_bytes=cfg.max_message_bytes, max_count=cfg.max_messages_per_add)
        return sid, uid, items, payloads

    def add_messages(self, session_id: str, messages: Iterable[Message | dict[str, Any]], *,
                     user_id: str | None = None) -> list[Message]:
        """Append messages (oldest first); returns copies carrying their assigned `seq`."""
        sid, uid, items, payloads = self._prepare(session_id, user_id, messages)
        probe = _UNKNOWN
        if items and self._hot(0) and self.config.async_writes and self._sync is not None:
            self._check_room(len(items))
            t0 = time.perf_counter()
            try:
                probe = self._sync.append(sid, uid, [m.id for m in items], payloads,
                                          persist=self.config.mode is Mode.HYBRID)
            except CacheDown:
                self._soon(self._redis_failed)
            except OwnershipConflict:
                raise SessionOwnershipError("this session belongs to another user") from None
            except ResponseError:  # the script choked on a damaged entry
                probe = _CORRUPT
            if isinstance(probe, AppendResult) and not (probe.bound and uid):
                return self._hot_done(sid, uid, items, payloads, probe, t0)
        return self._run(self._add(sid, uid, items, payloads, probe))

    async def aadd_messages(self, session_id: str, messages: Iterable[Message | dict[str, Any]], *,
                            user_id: str | None = None) -> list[Message]:
        sid, uid, items, payloads = self._prepare(session_id, user_id, messages)
        probe = _UNKNOWN
        cache = self._loop_cache() if items and self._hot(0) and self.config.async_writes else None
        if cache is not None:
            self._check_room(len(items))
            t0 = time.perf_counter()
            try:
                probe = await cache.append(sid, uid, [m.id for m in items], payloads,
                                           persist=self.config.mode is Mode.HYBRID)
            except CacheDown:
                self._soon(self._redis_failed)
            except OwnershipConflict:
                raise SessionOwnershipError("this session belongs to another user") from None
            except ResponseError:  # the script choked on a damaged entry
                probe = _CORRUPT
            if isinstance(probe, AppendResult) and not (probe.bound and uid):
                return self._hot_done(sid, uid, items, payloads, probe, t0)
        return await self._arun(self._add(sid, uid, items, payloads, probe))

    async def _add(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                   probe: Any = _UNKNOWN) -> list[Message]:
        """The engine-loop write path; `probe` is what a hot-path append already got from Redis."""
        await self._ensure_started()
        if not items:
            return []
        t0 = time.perf_counter()
        if self._use_cache() or isinstance(probe, AppendResult):
            try:
                done = await self._add_cached(sid, uid, items, payloads, probe)
            except CacheDown:
                self._redis_failed()
                done = False
            if not done:
                if self.config.mode is Mode.SESSION_ONLY:
                    raise StorageUnavailableError("Redis is unreachable and mode is session_only")
                await self._add_direct(sid, uid, items, payloads)
        else:
            await self._add_direct(sid, uid, items, payloads)
        self._stats.writes += 1
        self._stats.write_lat.append(time.perf_counter() - t0)
        return items

    async def _add_cached(self, sid: str, uid: str | None, items: list[Message], payloads: list[str],
                          probe: Any) -> bool:
        assert self._cache is not None
        hybrid = self.config.mode is Mode.HYBRID
        wb = self._wb
        ids = [m.id for m in items]
        try:
            if probe is _UNKNOWN:
                self._check_room(len(items))
                try:
                    res = await self._cache.append(sid, uid, ids, payloads, persist=hybrid)
                except ResponseError:
                    probe = _CORRUPT
            if probe is _CORRUPT:
                await self._drop_corrupt(sid)
                res = await self._cache.append(sid, uid, ids, payloads, persist=hybrid)
            elif probe is not _UNKNOWN:
                res = probe
            if res is None:
                fill = await self._load_fill(sid, for_write=True)
                res = await self._cache.append(sid, uid, ids, payloads, persist=hybrid, init=fill)
        except OwnershipConflict:
            raise SessionOwnershipError("this session belongs to another user") from None
        assert res is not None
        if res.bound and uid is not None:
            await self._cache.index_user(uid, sid)
        entry = self._appended(sid, uid, items, payloads, res)
        index = wb.add(entry) if wb is not None and entry is not None else None
        if res.due:
            self._summary_due(sid)
        if wb is not None and index is not None:
            if not self.config.async_writes and not await wb.wait_for(index, self.config.pg_timeout):
                raise StorageUnavailableError(
                    "PostgreSQL did not confirm the write in time (write-through mode); it stays queued and "
                    "retrying with the same message ids is safe")
        return True

    async def _add_direct(self, sid: str, uid: str | None, items: list[Message], payloads: list[str]) -> None:
        store = self._need_store()
        floor = self._wb.pending_max_seq(sid) if self._wb is not None else 0
        hybrid = self.config.mode is Mode.HYBRID
        try:
            _, seqs = await store.add_direct(
                sid, uid, [m.id for m in items], [m.role for m in items], payloads,
                [m.created_at or 0.0 for m in items], floor_seq=floor, mark_dirty=hybrid)
        except StoreDown as exc:
            raise self._store_down(exc) from None
        if not seqs:
            raise SessionOwnershipError("this session belongs to another user")
        self._pg_up = True
        if hybrid:
            self._dirty.add(sid)
            self._stats.fallback_writes += 1
            if self._redis_up and self._cache is not None:
                # Redis came back while this write was in flight: the probe has dropped the dirty sessions
                # already, so this one drops its own stale window before the write is acknowledged.
                try:
                    await self._cache.drop([sid])
                    self._dirty.discard(sid)
                except CacheDown:
                    self._redis_failed()
        for msg, seq in zip(items, seqs, strict=True):
            msg.seq = seq
        self._summary_due(sid)  # the worker checks PostgreSQL's count itself

    async def _load_fill(self, sid: str, *, for_write: bool) -> Fill:
        """The window to cache for `sid`: PostgreSQL's tail merged with this process's uncommitted rows."""
        if self._store is None:
            return Fill(0, None, [])
        # Both before the PostgreSQL query: a write committed (and acknowledged) meanwhile is then in PostgreSQL,
        # and one still pending is in these; never in neither.
        pending = list({r.seq: r for r in self._pending(sid) + await self._outbox_rows(sid)}.values())
        try:
            windows, sizes = await self._fill_windows([sid], {sid: pending})
            w = windows[sid]
        except StoreDown as exc:
            if not for_write:
                raise self._store_down(exc) from None
            # Keep accepting writes while PostgreSQL is down: cache a window marked partial (older history
            # unknown); reads treat it as a miss until PostgreSQL can complete it.
            self._pg_up = False
            fill = self._merge_fill(None, 0, [], pending)
            fill.partial = True
            return fill
        return self._window_fill(sid, w, pending, sizes[sid])

    async def _fill_windows(self, sids: list[str], pending: dict[str, list[Row]]
                            ) -> tuple[dict[str, Window], dict[str, int]]:
        """PostgreSQL's tails of `sids` for a refill, and how many elements each should cache: the capacity, or
        (auto-summarize) every message the summary does not cover yet, up to the ceiling, as appends keep them
        (see the APPEND script). Sessions whose summaries lag are asked again for their longer tail."""
        assert self._store is not None
        cfg, cap = self.config, self.config.cache_capacity
        windows = await self._store.windows(sids, cap)
        sizes = {sid: cap if not cfg.enable_auto_summarize else
                 max(cap, min(w.unsum + len(pending[sid]), cfg.cache_ceiling)) for sid, w in windows.items()}
        lagging = [sid for sid, n in sizes.items() if n > len(windows[sid].rows) == cap]
        if lagging:
            windows.update(await self._store.windows(lagging, max(sizes[sid] for sid in lagging)))
        return windows, sizes

    def _window_fill(self, sid: str, w: Window, pending: list[Row], size: int) -> Fill:
        fill = self._merge_fill(w.owner, w.floor_seq, w.rows, pending, size)
        fill.sum_upto, fill.sum_text = w.sum_upto, w.sum_text
        stored = {seq for seq, _, _ in w.rows}
        fill.unsum = w.unsum + sum(1 for r in pending if r.seq > w.sum_upto and r.seq not in stored)
        return fill

    async def _outbox_rows(self, sid: str) -> list[Row]:
        """The session's entries in the Redis outbox (any writer's), as rows."""
        if not self._use_cache():
            return []
        assert self._cache is not None
        rows = []
        try:
            for _, msg_id, el, _ in await self._cache.session_outbox(sid):
                try:
                    seq, body = split_element(el)
                    rows.append(Row(sid, seq, msg_id, "", body, 0.0))
                except (ValueError, UnicodeDecodeError):
                    continue  # a damaged entry: the janitor sets it aside
        except CacheDown:
            self._redis_failed()
        return rows

    def _pending(self, sid: str) -> list[Row]:
        """This process's uncommitted rows of `sid`. Take them *before* querying PostgreSQL: a row committed
        in between is then in one of the two, never in neither."""
        return self._wb.pending_rows(sid) if self._wb is not None else []

    def _merge_fill(self, owner: str | None, floor: int, rows: list[tuple[int, str, str]], pending: list[Row],
                    n: int | None = None) -> Fill:
        n = n or self.config.max_session_messages
        merged = {seq: (msg_id, body) for seq, msg_id, body in rows}
        stored = {msg_id for _, msg_id, _ in rows}
        for r in pending:
            # Not deleted (floor), and not stored under another seq (a write whose reply was lost, retried
            # through PostgreSQL): PostgreSQL's copy wins.
            if r.seq > floor and r.msg_id not in stored:
                merged[r.seq] = (r.msg_id, r.body)
                stored.add(r.msg_id)
        tail = sorted(merged.items())[-n:]
        base = max([floor, *merged.keys()]) if merged else floor
        fill = Fill(base, owner, [(mid, element(seq, body)) for seq, (mid, body) in tail])
        fill.floor = floor
        return fill

    # -- read path ---------------------------------------------------------------------------------------
    def get_recent_messages(self, session_id: str, limit: int | None = None, *,
                            user_id: str | None = None) -> list[Message]:
        """The last `limit` messages (default: the window), oldest first."""
        sid, uid, n = self._read_args(session_id, user_id, limit)
        probe = _UNKNOWN
        if n and self._hot(n) and self._sync is not None:
            t0 = time.perf_counter()
            try:
                probe = self._sync.read(sid, n)
                if isinstance(probe, tuple):
                    return self._hit(probe, uid, t0)
            except CacheDown:
                self._soon(self._redis_failed)
            except (CorruptEntry, ResponseError):
                probe = _CORRUPT
        return self._run(self._recent(sid, uid, n, probe))

    async def aget_recent_messages(self, session_id: str, limit: int | None = None, *,
                                   user_id: str | None = None) -> list[Message]:
        sid, uid, n = self._read_args(session_id, user_id, limit)
        probe = _UNKNOWN
        cache = self._loop_cache() if n and self._hot(n) else None
        if cache is not None:
            t0 = time.perf_counter()
            try:
                probe = await cache.read(sid, n)
                if isinstance(probe, tuple):
                    return self._hit(probe, uid, t0)
            except CacheDown:
                self._soon(self._redis_failed)
            except (CorruptEntry, ResponseError):
                probe = _CORRUPT
        return await self._arun(self._recent(sid, uid, n, probe))

    def _read_args(self, session_id: str, user_id: str | None, limit: int | None) -> tuple[str, str | None, int]:
        sid = check_session_id(session_id, self.config.max_session_id_length)
        uid = check_user_id(user_id, self.config.max_session_id_length)
        if limit is None:
            limit = self.config.max_session_messages
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInputError("limit must be a non-negative int")
        return sid, uid, limit

    @staticmethod
    def _check_owner(owner: str | None, uid: str | None) -> None:
        if uid is not None and owner and owner != uid:
            raise SessionOwnershipError("this session belongs to another user")

    async def _recent(self, sid: str, uid: str | None, limit: int, probe: Any = _UNKNOWN) -> list[Message]:
        await self._ensure_started()
        t0 = time.perf_counter()
        if limit == 0:
            return []
        out = await self._recent_inner(sid, uid, limit, probe)
        self._stats.reads += 1
        self._stats.read_lat.append(time.perf_counter() - t0)
        return out

    async def _recent_inner(self, sid: str, uid: str | None, limit: int, probe: Any = _UNKNOWN) -> list[Message]:
        window = self.config.max_session_messages
        if self._use_cache() and limit <= window:
            assert self._cache is not None
            try:
                if probe is _CORRUPT:
                    await self._drop_corrupt(sid)
                    probe = _UNKNOWN
                hit = await self._cache.read(sid, limit) if probe is _UNKNOWN else probe
                if isinstance(hit, tuple):
                    try:
                        msgs = decode_window(hit[1])
                    except CorruptEntry:
                        await self._drop_corrupt(sid)
                        hit = None
                    else:
                        self._stats.hits += 1
                        self._check_owner(hit[0] or None, uid)
                        return msgs
            except (ResponseError, CorruptEntry):
                await self._drop_corrupt(sid)
                hit = None
            except CacheDown:
                self._redis_failed()
                hit = None
                if self.config.mode is Mode.SESSION_ONLY:
                    raise StorageUnavailableError("Redis is unreachable and mode is session_only") from None
            else:
                self._stats.misses += 1
                if self._store is None:
                    return []
                fill = await self._load_fill(sid, for_write=False)
                self._check_owner(fill.owner, uid)
                try:
                    # `hit` is the partial window's last seq: replace it only if nobody wrote since. What
                    # comes back is what is cached now: ours, merged with the outbox, or a newer writer's.
                    _, owner, cached = await self._cache.fill(sid, fill, expect_seq=hit)
                except CacheDown:
                    self._redis_failed()
                else:
                    self._check_owner(owner or None, uid)
                    return decode_window(cached[-limit:])
                return decode_window([el for _, el in fill.pairs[-limit:]])
        # PostgreSQL path: Redis down, persistent mode, or a read deeper than the window.
        store = self._need_store()
        if self.config.mode is Mode.HYBRID:
            self._stats.fallback_reads += 1
        pending = self._pending(sid)
        try:
            w = (await store.windows([sid], limit))[sid]
        except StoreDown as exc:
            raise self._store_down(exc) from None
        self._check_owner(w.owner, uid)
        fill = self._merge_fill(w.owner, w.floor_seq, w.rows, pending, limit)
        return decode_window([el for _, el in fill.pairs[-limit:]])

    def get_context(self, session_id: str, *, user_id: str | None = None) -> Context:
        """What a prompt should carry: the session's latest summary (if any), then the messages after it.

        With auto-summarization every message after the summary is included (no gap, no overlap); without it
        (summaries stored with `save_summary`, or none) the messages are capped to the recent window.
        One Redis round trip when cached.
        """
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        probe: Any = _UNKNOWN
        if self._hot(0) and self._sync is not None:
            t0 = time.perf_counter()
            try:
                probe = self._sync.context(sid)
            except CacheDown:
                self._soon(self._redis_failed)
            except (ResponseError, CorruptEntry):
                probe = _CORRUPT
            ctx = self._cached_context(probe, uid, t0)
            if ctx is not None:
                return ctx
        return self._run(self._context(sid, uid))

    async def aget_context(self, session_id: str, *, user_id: str | None = None) -> Context:
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        cache = self._loop_cache() if self._hot(0) else None
        if cache is not None:
            t0 = time.perf_counter()
            probe: Any = _UNKNOWN
            try:
                probe = await cache.context(sid)
            except CacheDown:
                self._soon(self._redis_failed)
            except (ResponseError, CorruptEntry):
                probe = _CORRUPT
            ctx = self._cached_context(probe, uid, t0)
            if ctx is not None:
                return ctx
        return await self._arun(self._context(sid, uid))

    def _cached_context(self, probe: Any, uid: str | None, t0: float) -> Context | None:
        """The context from one cached read, if the cache holds what the view needs."""
        if not isinstance(probe, CachedContext):
            return None
        self._check_owner(probe.owner or None, uid)
        try:
            msgs = [m for m in decode_window(probe.elements) if (m.seq or 0) > probe.sum_upto]
        except CorruptEntry:
            return None  # the slow path drops and reloads the window
        if self.config.enable_auto_summarize:
            if len(msgs) != probe.unsum:
                return None  # summarization lags behind the cache's capacity: read PostgreSQL
        else:
            msgs = msgs[-self.config.max_session_messages:]
        self._stats.hits += 1
        self._stats.reads += 1
        self._stats.read_lat.append(time.perf_counter() - t0)
        return Context(probe.sum_text or None, msgs, probe.sum_upto or None)

    async def _context(self, sid: str, uid: str | None) -> Context:
        await self._ensure_started()
        if self._use_cache():
            # A miss loads the window (with the summary fields) into Redis; read the cached view after it.
            await self._recent_inner(sid, uid, self.config.max_session_messages)
            assert self._cache is not None
            with contextlib.suppress(CacheDown, ResponseError, CorruptEntry):
                t0 = time.perf_counter()
                ctx = self._cached_context(await self._cache.context(sid), uid, t0)
                if ctx is not None:
                    return ctx
        store = self._need_store()
        pending = self._pending(sid)
        try:
            if uid is not None:
                self._check_owner((await store.owner(sid))[1], uid)
            if self.config.enable_auto_summarize:  # everything after the summary (bounded by summarization)
                _, upto, text, _, rows = await store.summary_state(sid, 100_000)
            else:  # the window after the summary
                _, upto, text, _, rows = await store.summary_state(sid, self.config.max_session_messages, tail=True)
        except StoreDown as exc:
            raise self._store_down(exc) from None
        merged = {seq: body for seq, _, body in rows}
        for r in pending:
            if r.seq > upto:
                merged[r.seq] = r.body
        ordered = sorted(merged.items())
        if not self.config.enable_auto_summarize:
            ordered = ordered[-self.config.max_session_messages:]
        return Context(text or None, [decode(seq, body) for seq, body in ordered], upto or None)

    def get_summaries(self, session_id: str, *, user_id: str | None = None) -> list[dict[str, Any]]:
        """Every stored summary of the session, oldest first (ranges, text, model, token counts, time)."""
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return self._run(self._get_summaries(sid, uid))

    async def aget_summaries(self, session_id: str, *, user_id: str | None = None) -> list[dict[str, Any]]:
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return await self._arun(self._get_summaries(sid, uid))

    async def _get_summaries(self, sid: str, uid: str | None) -> list[dict[str, Any]]:
        await self._ensure_started()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        try:
            return await self._need_store().summaries(sid)
        except StoreDown as exc:
            raise self._store_down(exc) from None

    def set_auto_summarize(self, session_id: str, enabled: bool, *, user_id: str | None = None) -> None:
        """The per-session kill switch (stored in PostgreSQL, honoured by every process)."""
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        self._run(self._set_auto_summarize(sid, uid, enabled))

    async def aset_auto_summarize(self, session_id: str, enabled: bool, *, user_id: str | None = None) -> None:
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        await self._arun(self._set_auto_summarize(sid, uid, enabled))

    async def _set_auto_summarize(self, sid: str, uid: str | None, enabled: bool) -> None:
        await self._ensure_started()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        try:
            await self._need_store().set_summarize(sid, enabled)
        except StoreDown as exc:
            raise self._store_down(exc) from None
        if enabled:
            self._summary_due(sid)

    def save_summary(self, session_id: str, summary: str, *, upto_message_id: str, user_id: str | None = None,
                     model: str = "external") -> bool:
        """Store a summary made outside the engine (e.g. by LangChain's SummarizationMiddleware) as the next
        one: it covers the messages after the current summary up to `upto_message_id`. False if that message is
        unknown or already covered, or another summary landed first."""
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return self._run(self._save_summary(sid, uid, summary, upto_message_id, model))

    async def asave_summary(self, session_id: str, summary: str, *, upto_message_id: str,
                            user_id: str | None = None, model: str = "external") -> bool:
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return await self._arun(self._save_summary(sid, uid, summary, upto_message_id, model))

    async def _save_summary(self, sid: str, uid: str | None, text: str, upto_id: str, model: str) -> bool:
        await self._ensure_started()
        if not isinstance(text, str) or not text.strip():
            raise InvalidMessageError("summary must be a non-empty str")
        store = self._need_store()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        try:
            if self._wb is not None:
                await self._wb.settle(sid)
            _, upto, _, _, _ = await store.summary_state(sid, 0)
            covered = await store.covered_by(sid, upto, upto_id)
            if covered is None or covered[2] == 0:
                return False
            last, first, count = covered
            counter = self._token_counter or default_token_counter()
            stored = await store.add_summary(sid, upto, first, last, count, text, model, None, counter(text))
        except StoreDown as exc:
            raise self._store_down(exc) from None
        except CacheDown:
            raise StorageUnavailableError("Redis is unreachable: other writers' pending messages are unknown") \
                from None
        if stored and self._use_cache():
            assert self._cache is not None
            with contextlib.suppress(CacheDown):
                await self._cache.set_summary(sid, last, text, count)
        if stored:
            self._stats.summaries += 1
        return stored

    def summarize_now(self, session_id: str, *, user_id: str | None = None) -> int:
        """Make the summaries that are due for this session now (waits for the LLM); returns how many."""
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return self._run(self._summarize_now(sid, uid))

    async def asummarize_now(self, session_id: str, *, user_id: str | None = None) -> int:
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return await self._arun(self._summarize_now(sid, uid))

    async def _summarize_now(self, sid: str, uid: str | None) -> int:
        await self._ensure_started()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        if self._summaries is None:
            raise HybridMemoryError("auto-summarization is off (enable_auto_summarize=False)")
        try:
            return await self._summaries.summarize(sid)
        except LeaseBusy:
            return 0  # another process is summarizing this session right now
        except StoreDown as exc:
            raise self._store_down(exc) from None

    def wait_for_summaries(self, timeout: float | None = 60.0) -> bool:
        """Wait until no summary is due or running; False on timeout (e.g. the LLM keeps failing)."""
        return self._run(self._wait_summaries(timeout))

    async def await_for_summaries(self, timeout: float | None = 60.0) -> bool:
        return await self._arun(self._wait_summaries(timeout))

    async def _wait_summaries(self, timeout: float | None) -> bool:
        await self._ensure_started()
        if self._summaries is None:
            return True
        return await self._summaries.wait_idle(timeout)

    def get_messages(self, session_id: str, *, after_seq: int | None = None, limit: int | None = None,
                     user_id: str | None = None) -> list[Message]:
        """The full transcript from the system of record, oldest first; page with `after_seq` + `limit`."""
        return self._run(self._page(*self._read_args(session_id, user_id, 0)[:2], after_seq, limit))

    async def aget_messages(self, session_id: str, *, after_seq: int | None = None, limit: int | None = None,
                            user_id: str | None = None) -> list[Message]:
        return await self._arun(self._page(*self._read_args(session_id, user_id, 0)[:2], after_seq, limit))

    async def _page(self, sid: str, uid: str | None, after_seq: int | None, limit: int | None) -> list[Message]:
        await self._ensure_started()
        for name, value in (("limit", limit), ("after_seq", after_seq)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise InvalidInputError(f"{name} must be a non-negative int or None")
        if self._store is None:  # session_only: the window is all there is
            msgs = await self._recent_inner(sid, uid, self.config.max_session_messages)
            msgs = [m for m in msgs if after_seq is None or (m.seq or 0) > after_seq]
            return msgs[:limit] if limit is not None else msgs
        pending = self._pending(sid)
        try:
            if uid is not None:
                _, owner = await self._store.owner(sid)
                self._check_owner(owner or (await self._cached_owner(sid)), uid)
            rows = await self._store.page(sid, after_seq, limit)
        except StoreDown as exc:
            raise self._store_down(exc) from None
        merged = {seq: body for seq, body in rows}
        lo = after_seq if after_seq is not None else -1
        for r in pending:
            if r.seq > lo:
                merged[r.seq] = r.body
        ordered = sorted(merged.items())
        if limit is not None:
            ordered = ordered[:limit]
        return [decode(seq, body) for seq, body in ordered]

    async def _cached_owner(self, sid: str) -> str | None:
        if not self._use_cache():
            return None
        assert self._cache is not None
        try:
            return (await self._cache.owners([sid]))[0]
        except CacheDown:
            self._redis_failed()
            return None

    # -- invalidation and deletion -----------------------------------------------------------------------
    async def _owner_of(self, sid: str) -> str | None:
        owner = await self._cached_owner(sid)
        if owner is None and self._store is not None:
            try:
                owner = (await self._store.owner(sid))[1]
            except StoreDown as exc:
                raise self._store_down(exc) from None
        return owner

    def invalidate_session(self, session_id: str, *, user_id: str | None = None) -> None:
        """Drop the cached window (PostgreSQL keeps everything); the next read reloads it."""
        self._run(self._invalidate(*self._read_args(session_id, user_id, 0)[:2]))

    async def ainvalidate_session(self, session_id: str, *, user_id: str | None = None) -> None:
        await self._arun(self._invalidate(*self._read_args(session_id, user_id, 0)[:2]))

    async def _invalidate(self, sid: str, uid: str | None) -> None:
        await self._ensure_started()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        await self._drop_cached([sid])

    async def _drop_corrupt(self, sid: str) -> None:
        """A damaged cache entry is never served: forget it; the store has the truth."""
        log.warning("hybrid-memory: a damaged cache entry was dropped and will be reloaded")
        self._stats.corrupt_entries += 1
        await self._drop_cached([sid])

    async def _drop_cached(self, sids: Sequence[str]) -> None:
        if self._cache is None:
            return
        try:
            await self._cache.drop(sids)
        except CacheDown:
            self._redis_failed()
            if self.config.mode is Mode.SESSION_ONLY:
                raise StorageUnavailableError("Redis is unreachable") from None
            self._dirty.update(sids)  # dropped when Redis answers again

    def invalidate_user(self, user_id: str) -> int:
        """Drop the cached windows of every session of `user_id`; returns how many sessions."""
        return self._run(self._invalidate_user(self._uid(user_id)))

    async def ainvalidate_user(self, user_id: str) -> int:
        return await self._arun(self._invalidate_user(self._uid(user_id)))

    def _uid(self, user_id: str) -> str:
        uid = check_user_id(user_id, self.config.max_session_id_length)
        if uid is None:
            raise TypeError("user_id is required")
        return uid

    async def _user_sessions(self, uid: str) -> list[str]:
        sids: set[str] = set()
        if self._store is not None:
            try:
                sids.update(await self._store.user_sessions(uid))
            except StoreDown as exc:
                raise self._store_down(exc) from None
        if self._use_cache():
            assert self._cache is not None
            try:
                sids.update(await self._cache.user_sessions(uid))
            except CacheDown:
                self._redis_failed()
        return sorted(sids)

    async def _invalidate_user(self, uid: str) -> int:
        await self._ensure_started()
        sids = await self._user_sessions(uid)
        await self._drop_cached(sids)
        return len(sids)

    def clear_session(self, session_id: str, *, user_id: str | None = None) -> int:
        """Erase a session from both stores; returns the number of stored messages deleted."""
        return self._run(self._clear(*self._read_args(session_id, user_id, 0)[:2]))

    async def aclear_session(self, session_id: str, *, user_id: str | None = None) -> int:
        return await self._arun(self._clear(*self._read_args(session_id, user_id, 0)[:2]))

    async def _clear(self, sid: str, uid: str | None) -> int:
        await self._ensure_started()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        return await self._erase([sid])

    async def _erase(self, sids: Sequence[str]) -> int:
        """Delete sessions everywhere. Tombstones cover every seq assigned so far, so write-behind entries
        still in flight (here or in another process) cannot bring a deleted message back."""
        upto = [time.time_ns() // 1000 for _ in sids]
        if self._cache is not None and self._use_cache():
            try:
                metas = await self._cache.last_seqs(sids)
                upto = [max(u, m) for u, m in zip(upto, metas, strict=True)]
            except CacheDown:
                self._redis_failed()
        gone: list[Pending] = []
        if self._wb is not None:
            for i, sid in enumerate(sids):
                upto[i] = max(upto[i], self._wb.pending_max_seq(sid))
                gone += self._wb.drop_session(sid)
        deleted = 0
        if self._store is not None:
            try:
                deleted = await self._store.delete_sessions(sids, upto)
            except StoreDown as exc:
                raise self._store_down(exc) from None
        if gone and self._wb is not None:
            await self._wb.ack(gone)  # out of the outbox too: a refill must not bring them back
        if self._use_cache():
            assert self._cache is not None
            try:
                await self._cache.forget_outbox(sids)  # other writers' entries too: no trace left in Redis
            except CacheDown:
                self._redis_failed()
        await self._drop_cached(sids)
        return deleted

    def delete_messages(self, session_id: str, seqs: Iterable[int], *, user_id: str | None = None) -> int:
        """Delete single messages by `seq` from both stores; returns how many PostgreSQL held."""
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return self._run(self._delete_messages(sid, uid, [int(s) for s in seqs]))

    async def adelete_messages(self, session_id: str, seqs: Iterable[int], *, user_id: str | None = None) -> int:
        sid, uid, _ = self._read_args(session_id, user_id, 0)
        return await self._arun(self._delete_messages(sid, uid, [int(s) for s in seqs]))

    async def _delete_messages(self, sid: str, uid: str | None, seqs: list[int]) -> int:
        await self._ensure_started()
        if uid is not None:
            self._check_owner(await self._owner_of(sid), uid)
        if not seqs:
            return 0
        if self._store is None:  # session_only: rebuild the window without them
            kept = [m for m in await self._recent_inner(sid, None, self.config.max_session_messages)
                    if m.seq not in set(seqs)]
            await self._drop_cached([sid])
            if kept:
                assert self._cache is not None
                fill = Fill(max(m.seq or 0 for m in kept), uid, [])
                fill.pairs = [(m.id, element(m.seq or 0, encode(m))) for m in kept]
                await self._cache.fill(sid, fill)
            return 0
        # Commit this process's queued writes first, so the row exists before it is deleted.
        await self._flush(self.config.pg_timeout)
        try:
            n = await self._store.delete_messages(sid, seqs)
        except StoreDown as exc:
            raise self._store_down(exc) from None
        await self._drop_cached([sid])
        return n

    def list_sessions(self, *, user_id: str | None = None, limit: int | None = None) -> list[str]:
        """Ids of the sessions holding messages (of one user, if given), sorted; from PostgreSQL (plus this
        process's queued writes), or Redis in session_only mode."""
        return self._run(self._list_sessions(check_user_id(user_id, self.config.max_session_id_length), limit))

    async def alist_sessions(self, *, user_id: str | None = None, limit: int | None = None) -> list[str]:
        return await self._arun(
            self._list_sessions(check_user_id(user_id, self.config.max_session_id_length), limit))

    async def _list_sessions(self, uid: str | None, limit: int | None) -> list[str]:
        await self._ensure_started()
        if self._store is not None:
            # Queued first: a session whose first commit lands during the query is then in one of the two.
            found = set(self._wb.pending_sessions()) if self._wb is not None and uid is None else set()
            try:
                found.update(await self._store.list_sessions(uid, None))
            except StoreDown as exc:
                raise self._store_down(exc) from None
        else:
            assert self._cache is not None
            try:
                found = set(await self._cache.active_sessions())
                if uid is not None:  # a user's index keeps sessions emptied since: list only those still cached
                    found &= set(await self._cache.user_sessions(uid))
            except CacheDown:
                raise StorageUnavailableError("Redis is unreachable and mode is session_only") from None
        out = sorted(found)
        return out[:limit] if limit is not None else out

    def delete_user(self, user_id: str) -> int:
        """Erase every session of `user_id` from Redis and PostgreSQL; returns how many sessions."""
        return self._run(self._delete_user(self._uid(user_id)))

    async def adelete_user(self, user_id: str) -> int:
        return await self._arun(self._delete_user(self._uid(user_id)))

    async def _delete_user(self, uid: str) -> int:
        await self._ensure_started()
        sids = await self._user_sessions(uid)
        if sids:
            await self._erase(sids)
        if self._use_cache():
            assert self._cache is not None
            try:
                await self._cache.forget_user(uid)
            except CacheDown:
                self._redis_failed()
        return len(sids)

    def purge_idle_sessions(self, older_than: float | timedelta, *, on_progress: ProgressFn | None = None) -> int:
        """Retention: erase sessions idle longer than `older_than` (seconds or timedelta) from both stores."""
        return self._run(self._purge_idle(float(seconds(older_than)), on_progress))

    async def apurge_idle_sessions(self, older_than: float | timedelta, *,
                                   on_progress: ProgressFn | None = None) -> int:
        return await self._arun(self._purge_idle(float(seconds(older_than)), on_progress))

    async def _purge_idle(self, older_than: float, on_progress: ProgressFn | None) -> int:
        await self._ensure_started()
        store = self._need_store()
        try:
            total = await store.count_idle_sessions(older_than)
            done = 0
            while True:
                batch = await store.idle_sessions(older_than, 500)
                if not batch:
                    return done
                await self._erase(batch)
                done += len(batch)
                if on_progress is not None:
                    on_progress(min(done, total), total)
        except StoreDown as exc:
            raise self._store_down(exc) from None

    # -- warming -----------------------------------------------------------------------------------------
    def prefetch_context(self, session_ids: str | Iterable[str] | None = None, *, user_id: str | None = None,
                         on_progress: ProgressFn | None = None) -> int:
        """Load windows into Redis ahead of use (given sessions, or a user's); returns how many were loaded."""
        return self._run(self._prefetch_args_then(session_ids, user_id, on_progress))

    async def aprefetch_context(self, session_ids: str | Iterable[str] | None = None, *,
                                user_id: str | None = None, on_progress: ProgressFn | None = None) -> int:
        return await self._arun(self._prefetch_args_then(session_ids, user_id, on_progress))

    async def _prefetch_args_then(self, session_ids: str | Iterable[str] | None, user_id: str | None,
                                  on_progress: ProgressFn | None) -> int:
        await self._ensure_started()
        if isinstance(session_ids, str):
            session_ids = [session_ids]
        sids = [check_session_id(s, self.config.max_session_id_length) for s in session_ids or ()]
        if user_id is not None:
            sids += await self._user_sessions(self._uid(user_id))
        return await self._prefetch(sids, on_progress)

    async def _prefetch(self, sids: Sequence[str], on_progress: ProgressFn | None) -> int:
        if not sids or self._store is None or not self._use_cache():
            return 0
        assert self._cache is not None
        loaded, chunk = 0, 200
        for i in range(0, len(sids), chunk):
            part = list(dict.fromkeys(sids[i:i + chunk]))
            pending = {sid: self._pending(sid) for sid in part}
            try:
                windows, sizes = await self._fill_windows(part, pending)
            except StoreDown as exc:
                raise self._store_down(exc) from None
            fills = {sid: self._window_fill(sid, w, pending[sid], sizes[sid])
                     for sid, w in windows.items() if w.exists}
            try:
                loaded += await self._cache.fill_many(fills)
            except CacheDown:
                self._redis_failed()
                return loaded
            if on_progress is not None:
                on_progress(min(i + chunk, len(sids)), len(sids))
        return loaded

    def warmup(self, limit: int = 1000, *, active_within: float | None = None,
               on_progress: ProgressFn | None = None) -> int:
        """Preload the most recently active sessions (e.g. after a Redis restart); returns how many."""
        return self._run(self._warmup(limit, active_within, on_progress))

    async def awarmup(self, limit: int = 1000, *, active_within: float | None = None,
                      on_progress: ProgressFn | None = None) -> int:
        return await self._arun(self._warmup(limit, active_within, on_progress))

    async def _warmup(self, limit: int, active_within: float | None, on_progress: ProgressFn | None) -> int:
        await self._ensure_started()
        if self._store is None:
            return 0
        try:
            sids = await self._store.recent_sessions(limit, active_within)
        except StoreDown as exc:
            raise self._store_down(exc) from None
        return await self._prefetch(sids, on_progress)

    # -- durability --------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Return once every write this process acknowledged is committed in PostgreSQL."""
        self._run(self._flush(timeout))

    async def aflush(self, timeout: float | None = None) -> None:
        await self._arun(self._flush(timeout))

    async def _flush(self, timeout: float | None) -> None:
        await self._ensure_started()
        if self._wb is not None and not await self._wb.flush(timeout):
            raise StorageUnavailableError(
                f"{self._wb.backlog} acknowledged messages are not yet in PostgreSQL after {timeout}s")

    def reclaim_orphans(self, older_than: float | None = None) -> int:
        """Persist outbox entries left by dead writers (run by every process's janitor anyway)."""
        return self._run(self._reclaim(older_than))

    async def areclaim_orphans(self, older_than: float | None = None) -> int:
        return await self._arun(self._reclaim(older_than))

    async def _reclaim(self, older_than: float | None) -> int:
        await self._ensure_started()
        if self._wb is None:
            return 0
        try:
            return await self._wb.reclaim(self.config.reclaim_after if older_than is None else older_than)
        except CacheDown:
            self._redis_failed()
            return 0
        except StoreDown as exc:
            raise self._store_down(exc) from None

    # -- stats -------------------------------------------------------------------------------------------
    def get_cache_stats(self) -> CacheStats:
        """Hit rate, latency percentiles, Redis memory, backlog and pool usage."""
        return self._run(self._cache_stats())

    async def aget_cache_stats(self) -> CacheStats:
        return await self._arun(self._cache_stats())

    async def _cache_stats(self) -> CacheStats:
        await self._ensure_started()
        s = self._stats
        mem: float | None = None
        sessions: int | None = None
        outbox: int | None = None
        if self._use_cache():
            assert self._cache is not None
            try:
                mem = await self._cache.memory_mb()
                sessions = await self._cache.cached_sessions()
                outbox = await self._cache.outbox_depth() if self._wb is not None else 0
            except CacheDown:
                self._redis_failed()
        in_use, size = self._store.pool_usage() if self._store is not None else (0, 0)
        r50, r99, w50, w99 = s.percentiles()
        return CacheStats(
            hits=s.hits, misses=s.misses, hit_rate=s.hit_rate, redis_memory_mb=mem, cached_sessions=sessions,
            redis_up=self._redis_up, postgres_up=self._pg_up, backlog=self._wb.backlog if self._wb else 0,
            outbox_entries=outbox, pg_pool_in_use=in_use, pg_pool_size=size, read_p50_ms=r50, read_p99_ms=r99,
            write_p50_ms=w50, write_p99_ms=w99, reads=s.reads, writes=s.writes, fallback_reads=s.fallback_reads,
            fallback_writes=s.fallback_writes, persisted=s.persisted, persist_batches=s.persist_batches,
            persist_failures=s.persist_failures, reclaimed=s.reclaimed, redis_errors=s.redis_errors,
            corrupt_entries=s.corrupt_entries, dead_letters=s.dead_letters, summaries=s.summaries,
            summary_failures=s.summary_failures,
            summary_queue=self._summaries.queued if self._summaries else 0,
            last_summary_error=self._summaries.last_error if self._summaries else None)

    def migrate(self) -> list[str]:
        """Apply pending schema migrations; returns the names applied."""
        return self._run(self._migrate())

    async def amigrate(self) -> list[str]:
        return await self._arun(self._migrate())

    async def _migrate(self) -> list[str]:
        await self._ensure_started()
        try:
            return await self._need_store().migrate()
        except StoreDown as exc:
            raise self._store_down(exc) from None


# Live engines by pickle token: unpickling in this process finds the engine itself. Weak: a pickle does not
# keep an engine alive.
_LIVE: weakref.WeakValueDictionary[str, HybridMemory] = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def _live_after_fork() -> None:
    # A forked child has copies of the engines but not their threads: it revives engines of its own.
    _LIVE.clear()
    _LIVE_LOCK.release()


os.register_at_fork(before=_LIVE_LOCK.acquire, after_in_parent=_LIVE_LOCK.release, after_in_child=_live_after_fork)


def _register_live(memory: HybridMemory) -> str:
    """A new token naming `memory` in this process's registry."""
    token = uuid.uuid4().hex
    with _LIVE_LOCK:
        _LIVE[token] = memory
    return token


def _revive(token: str, settings: dict[str, Any], withheld: tuple[str, ...], closed: bool) -> HybridMemory:
    """Unpickle a `HybridMemory`: the live engine `token` names in this process, else a new one from the
    settings and this process's environment, registered under the same token (so further unpickles here share
    it, and pickles of it name it)."""
    with _LIVE_LOCK:
        live = _LIVE.get(token)
    if live is not None:
        return live
    missing = [name for name in withheld if not os.environ.get(name.upper())]
    if missing:
        names = ", ".join(name.upper() for name in missing)
        raise ConfigurationError(
            f"this HybridMemory was pickled without its {', '.join(missing)} (a pickle never carries a password):"
            f" set {names} in the environment of the process that unpickles it")
    memory = HybridMemory(HybridConfig.from_env(**settings))  # no I/O until its first call
    memory._closed = closed  # a closed engine stays closed wherever it is unpickled
    with _LIVE_LOCK:
        live = _LIVE.setdefault(token, memory)  # another thread may have revived it meanwhile
    live._token = token
    return live


def _register_atexit(memory: HybridMemory) -> Callable[[], None]:
    # A weak reference: registering must not keep the memory alive, but a live one is flushed at exit.
    ref = weakref.ref(memory)

    def _at_exit() -> None:
        m = ref()
        if m is not None and m._started and not m._closed:
            try:
                m.close(flush_timeout=5.0)
            except Exception:  # interpreter shutdown: the Redis outbox still holds what is unflushed
                log.exception("hybrid-memory: flush at exit failed")

    atexit.register(_at_exit)
    return _at_exit
