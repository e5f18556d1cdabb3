"""Write-behind: acknowledged writes go from Redis to PostgreSQL in batches, off the caller's path.

Every acknowledged write exists in two places until PostgreSQL commits it: an entry in the bucket's Redis
outbox stream (survives this process) and an item in this process's queue (survives Redis). The flusher
commits the queue in batches and then deletes the stream entries. Entries older than `reclaim_after` belong
to a dead writer; any process's janitor commits them. Inserts are idempotent, so a replay is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .cache import CacheDown, RedisCache
from .config import HybridConfig
from .messages import _loads, split_element
from .stats import Stats
from .store import PostgresStore, Row, StoreDown

log = logging.getLogger("langchain_hybrid_memory")


@dataclass(slots=True)
class OutboxEntry:
    stream: str  # "" when the entry has no Redis copy
    entry_id: str
    session_id: str
    user_id: str
    rows: list[Row]
    index: int = 0
    names: str | None = None  # the key of the set naming the entry (the session's or thread's)
    record: bytes | None = None  # a checkpoint record (then `rows` is empty and session_id is the thread id)

    @property
    def weight(self) -> int:
        """What the entry counts in the backlog: its messages, or 1 for a checkpoint record."""
        return len(self.rows) + (self.record is not None)


@dataclass(slots=True)
class _Batch:
    entries: list[OutboxEntry] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)


class WriteBehind:
    def __init__(self, config: HybridConfig, cache: RedisCache | None, store: PostgresStore, stats: Stats,
                 redis_up: Callable[[], bool], on_store: Callable[[bool], None],
                 purge_dirty: Callable[[], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.cache = cache
        self.store = store
        self.stats = stats
        self._redis_up = redis_up
        self._on_store = on_store  # tells the facade whether PostgreSQL answered
        self._purge_dirty = purge_dirty  # the janitor's other duty: windows written around (health.py)
        self._queue: deque[OutboxEntry] = deque()
        self._by_session: dict[str, deque[Row]] = {}
        # Per session, the users its queued entries with rows name, in queue order (see queued_owner).
        self._owners: dict[str, deque[str]] = {}
        self._threads: dict[str, int] = {}  # thread id -> index of its last queued checkpoint record
        self._backlog = 0
        self._enqueued = 0
        self._committed = 0
        self._urgent = 0
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # cuts the batching delay short (flush, write-through, close)
        self._progress = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: set[asyncio.Task[None]] = set()
        self.dead_letters: list[tuple[Row, str]] = []  # rows PostgreSQL refused (kept here, never silently lost)
        self._closing = False
        # Entries from other threads wait here; only the first one after a flush wakes the engine loop, so a
        # burst of writes costs the caller a deque append, not a cross-thread wake-up each.
        self._inbox: deque[OutboxEntry] = deque()
        self._inbox_lock = threading.Lock()
        self._inbox_rows = 0
        self._armed = False
        self._loop = asyncio.get_running_loop()

    # -- the queue ---------------------------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        return self._backlog + self._inbox_rows

    def has_room(self, n: int) -> bool:
        return self.backlog + n <= self.config.max_backlog

    def submit(self, entry: OutboxEntry) -> None:
        """Queue an entry from any thread (the hot path)."""
        with self._inbox_lock:
            self._inbox.append(entry)
            self._inbox_rows += entry.weight
            wake = not self._armed
            self._armed = True
        if wake:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _drain(self) -> None:
        """Move submitted entries into the queue; every engine-loop reader calls this first."""
        with self._inbox_lock:
            self._armed = False
            entries = list(self._inbox)
            self._inbox.clear()
            self._inbox_rows = 0
        for entry in entries:
            self.add(entry)

    def add(self, entry: OutboxEntry) -> int:
        """Queue an entry (engine loop only); returns its index for `wait_for`."""
        self._enqueued += 1
        entry.index = self._enqueued
        self._queue.append(entry)
        if entry.record is not None:
            self._threads[entry.session_id] = entry.index
        else:
            self._by_session.setdefault(entry.session_id, deque()).extend(entry.rows)
            if entry.rows and entry.user_id:
                self._owners.setdefault(entry.session_id, deque()).append(entry.user_id)
        self._backlog += entry.weight
        self._wake.set()
        return entry.index

    def thread_index(self, thread_id: str) -> int:
        """The index of the thread's last queued checkpoint record (0: none waiting), for `wait_for`."""
        self._drain()
        return self._threads.get(thread_id, 0)

    def drop_thread(self, thread_id: str) -> list[OutboxEntry]:
        """Forget a deleted thread's queued records."""
        self._drain()
        if self._threads.pop(thread_id, None) is None:
            return []
        gone = [e for e in self._queue if e.record is not None and e.session_id == thread_id]
        for e in gone:
            e.record = None
            self._backlog -= 1
        return gone

    def queued_rows(self, session_id: str) -> list[Row]:
        """Rows of `session_id` acknowledged by this process and not yet committed (for read-your-writes)."""
        self._drain()
        return list(self._by_session.get(session_id, ()))

    def peek_rows(self, session_id: str) -> list[Row]:
        """`queued_rows` from any thread: entries submitted but not drained yet (under the inbox lock), then the
        queue's rows. A row moves from the first to the second, never back, so it is seen in one of the two (or
        both: callers key rows by seq), or was committed before this returns."""
        with self._inbox_lock:
            rows = [r for e in self._inbox if e.session_id == session_id for r in e.rows]
        for _ in range(3):
            queued = self._by_session.get(session_id)
            try:
                return rows + list(queued) if queued else rows  # one C-level copy, normally never interleaved
            except RuntimeError:  # "deque mutated during iteration": the engine loop ran meanwhile
                continue
        return rows + list(self._by_session.get(session_id, ()))

    def queued_owner(self, session_id: str) -> str | None:
        """The user this process's uncommitted writes of `session_id` name, if any: the first still queued that
        names one (engine loop). Entries an erase emptied name no one: they wait only to be acknowledged."""
        self._drain()
        owners = self._owners.get(session_id)
        return owners[0] if owners else None

    def queued_sessions(self) -> list[str]:
        self._drain()
        return list(self._by_session)

    def queued_max_seq(self, session_id: str) -> int:
        self._drain()
        rows = self._by_session.get(session_id)
        return max((r.seq for r in rows), default=0) if rows else 0

    def drop_session(self, session_id: str) -> list[OutboxEntry]:
        """Forget a deleted session's queued rows (its tombstone keeps replays out of PostgreSQL)."""
        self._drain()
        if session_id not in self._by_session:
            return []
        gone = [e for e in self._queue if e.session_id == session_id]
        for e in gone:
            e.rows = []
        self._backlog -= len(self._by_session.pop(session_id))
        self._owners.pop(session_id, None)
        return gone

    # -- waiting -----------------------------------------------------------------------------------------
    async def wait_for(self, index: int, timeout: float | None) -> bool:
        """Wait until entry `index` (and every earlier one) is committed; False on timeout."""
        if self._committed >= index:
            return True
        self._urgent += 1
        self._wake.set()
        self._hurry.set()
        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(lambda: self._committed >= index), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._urgent -= 1

    async def flush(self, timeout: float | None) -> bool:
        self._drain()
        done = await self.wait_for(self._enqueued, timeout)
        if done and self._acks:  # and out of the outbox, so its depth reads 0 after a flush
            await asyncio.gather(*list(self._acks), return_exceptions=True)
        return done

    # -- background tasks --------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._flusher(), name="hybrid-memory-flusher")]
        if self.cache is not None:
            self._tasks.append(asyncio.create_task(self._janitor(), name="hybrid-memory-janitor"))

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        for t in self._tasks:
            t.cancel()
        # Bounded: on Python 3.11 a wait_for deep inside a driver can swallow one cancellation.
        pending = {*self._tasks, *self._acks}
        for _ in range(3):
            if not pending:
                break
            _, pending = await asyncio.wait(pending, timeout=2.0)
            for t in pending:
                t.cancel()
        self._tasks = []

    def _take(self) -> list[_Batch]:
        """Consecutive batches from the queue's front: one, plus more (up to persist_concurrency) only while
        each is full, so a backlog is committed on several connections and a trickle still on one."""
        limit = self.config.persist_batch_size
        batches = [_Batch()]
        size = 0
        for entry in self._queue:
            batch = batches[-1]
            if size and size + entry.weight > limit:
                if len(batches) == self.config.persist_concurrency:
                    break
                batch = _Batch()
                batches.append(batch)
                size = 0
            size += entry.weight
            batch.entries.append(entry)
            batch.rows.extend(entry.rows)
            batch.users.extend([entry.user_id] * len(entry.rows))
            if entry.record is not None:
                batch.records.append(entry.record)
        if len(batches) > 1 and size < limit // 2:
            batches.pop()  # a small tail waits for the next round rather than hold up nothing
        return batches

    async def _flusher(self) -> None:
        backoff = 0.05
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if self.config.write_behind_delay and not self._urgent and self.backlog < self.config.persist_batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self.config.write_behind_delay)
            self._hurry.clear()
            self._drain()
            while self._queue and not self._closing:
                batches = self._take()
                results = await asyncio.gather(*(self._commit_batch(b) for b in batches), return_exceptions=True)
                failed = False
                for batch, result in zip(batches, results, strict=True):
                    if isinstance(result, StoreDown):
                        failed = True
                    elif isinstance(result, BaseException):
                        raise result
                    elif not failed:
                        # The queue is released in order: a batch committed after a failed one stays queued
                        # and is replayed (idempotently) with it.
                        self._done(batch.entries)
                        # Acknowledge in the background: the next COPY need not wait for Redis (a late or
                        # lost XDEL only means an idempotent replay).
                        task = asyncio.create_task(self.ack(batch.entries))
                        self._acks.add(task)
                        task.add_done_callback(self._acks.discard)
                if failed:
                    self.stats.persist_failures += 1
                    self._on_store(False)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)  # short: drain soon after PostgreSQL is back
                    continue
                backoff = 0.05
                self._on_store(True)

    async def _commit_batch(self, batch: _Batch) -> None:
        await self.commit_or_set_aside(batch.rows, batch.users)
        await self.commit_records_or_set_aside(batch.records)

    async def commit_records_or_set_aside(self, records: list[bytes]) -> None:
        """Commit checkpoint records; as `commit_or_set_aside`, one by one if PostgreSQL refuses the batch."""
        if not records:
            return
        from .checkpoint.store import commit_records  # the checkpoint tables' SQL (no LangGraph needed)

        try:
            await commit_records(self.store, records)
            self.stats.persist_batches += 1
            return
        except StoreDown:
            raise
        except Exception:
            log.exception("hybrid-memory: PostgreSQL refused a batch of checkpoint records; retrying one by one")
        for record in records:
            try:
                await commit_records(self.store, [record])
            except StoreDown:
                raise
            except Exception as exc:
                self.stats.dead_letters += 1
                log.error("hybrid-memory: a checkpoint record PostgreSQL refuses was set aside (%s)",
                          type(exc).__name__)

    async def commit_or_set_aside(self, rows: list[Row], users: list[str]) -> None:
        """Commit a batch; if PostgreSQL refuses it for a reason other than being down, commit row by row
        and set aside the rows it refuses, so one bad row can never stop persistence for everyone."""
        try:
            await self.commit(rows, users)
            return
        except StoreDown:
            raise
        except Exception:
            log.exception("hybrid-memory: PostgreSQL refused a write-behind batch; retrying row by row")
        for row, user in zip(rows, users, strict=True):
            try:
                await self.commit([row], [user])
            except StoreDown:
                raise
            except Exception as exc:
                self.stats.dead_letters += 1
                if len(self.dead_letters) < 1000:
                    self.dead_letters.append((row, f"{type(exc).__name__}"))
                log.error("hybrid-memory: a message PostgreSQL refuses was set aside (%s); see dead_letters",
                          type(exc).__name__)

    async def commit(self, rows: list[Row], users: list[str]) -> None:
        """Insert rows idempotently; re-sequence the (split-brain) rows whose seq was taken by another id."""
        if not rows:
            return
        old = await self.store.persist(rows, users)
        self.stats.persist_batches += 1
        self.stats.persisted += len(rows) - len(old)
        if not old:
            return
        replayed = [(r.session_id, r.msg_id, r.seq) for r in old]
        for sid, msg_id in await self.store.missing_ids(replayed):
            row = next(r for r in rows if r.session_id == sid and r.msg_id == msg_id)
            log.warning("hybrid-memory: sequence collision in one session; appending the message again")
            await self.store.add_direct(sid, None, [row.msg_id], [row.role], [row.body], [row.created_at],
                                        floor_seq=row.seq, mark_dirty=True)

    def _done(self, entries: list[OutboxEntry]) -> None:
        for entry in entries:
            popped = self._queue.popleft()
            assert popped is entry
            if entry.record is not None:
                self._backlog -= 1
                if self._threads.get(entry.session_id) == entry.index:
                    del self._threads[entry.session_id]
            rows = self._by_session.get(entry.session_id)
            if rows is not None and entry.rows:
                # Per session, rows are queued and committed in the same order: drop from the front.
                for _ in entry.rows:
                    rows.popleft()
                if not rows:
                    del self._by_session[entry.session_id]
                self._backlog -= len(entry.rows)
                owners = self._owners.get(entry.session_id)
                if owners and entry.user_id:  # committed in queue order: it is the first named
                    owners.popleft()
                    if not owners:
                        del self._owners[entry.session_id]
            self._committed = entry.index
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def ack(self, entries: list[OutboxEntry]) -> None:
        """Delete entries from the outbox (committed, or erased with their session)."""
        if self.cache is None or not self._redis_up():
            return  # the janitor replays what stays in the stream; replays are idempotent
        try:
            await self.cache.ack([(e.stream, e.names, e.entry_id) for e in entries if e.stream])
        except CacheDown:
            pass

    async def settle(self, session_id: str) -> None:
        """Make every acknowledged write of `session_id` durable: ours (flush) and other processes' (their
        entries in the outbox, committed here; idempotent). Summaries rely on this: a message committed later
        with a seq inside an already summarized range would never be summarized."""
        if not await self.flush(self.config.pg_timeout):
            raise StoreDown("the write-behind queue did not drain")
        if self.cache is None:
            return  # no Redis: every write went straight to PostgreSQL
        if not self._redis_up():
            raise CacheDown("Redis is down: other writers' uncommitted messages cannot be seen")
        rows: list[Row] = []
        users: list[str] = []
        for _, msg_id, el, uid in await self.cache.session_outbox(session_id):
            seq, body = split_element(el)
            obj = _loads(body)
            rows.append(Row(session_id, seq, msg_id, obj["r"], body, obj.get("t") or 0.0))
            users.append(uid)
        await self.commit(rows, users)

    async def _janitor(self) -> None:
        passes = 0
        while not self._closing:
            await asyncio.sleep(self.config.reclaim_interval)
            passes += 1
            try:
                await self.reclaim(self.config.reclaim_after)
                if self._purge_dirty is not None and self.cache is not None and self._redis_up():
                    await self._purge_dirty()
                if passes % 20 == 0:  # a tombstone only has to outlive the writes in flight
                    await self.store.prune_tombstones(self.config.tombstone_ttl)
            except (CacheDown, StoreDown):
                continue
            except Exception:  # the janitor must outlive any bug in one pass
                log.exception("hybrid-memory: janitor pass failed")

    async def reclaim(self, older_than: float) -> int:
        """Commit outbox entries older than `older_than` seconds that no live writer deleted; returns how many
        messages and checkpoint records."""
        if self.cache is None or not self._redis_up():
            return 0
        self._drain()
        mine = {e.entry_id for e in self._queue}
        total = 0
        while True:
            found = [o for o in await self.cache.orphans(older_than, 1000) if o.entry_id not in mine]
            if not found:
                return total
            rows: list[Row] = []
            users: list[str] = []
            records: list[bytes] = []
            acks: list[tuple[str, str | None, str]] = []
            for o in found:
                if o.record is not None:
                    records.append(o.record)
                for msg_id, el in o.elements:
                    try:
                        seq, body = split_element(el)
                        obj = _loads(body)
                        rows.append(Row(o.session_id, seq, msg_id.decode("utf-8"), obj["r"], body,
                                        obj.get("t") or 0.0))
                        users.append(o.user_id)
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                        # A damaged entry cannot be committed; it must not block the others either.
                        self.stats.dead_letters += 1
                        log.error("hybrid-memory: an undecodable outbox entry was set aside")
                acks.append((o.stream, o.names, o.entry_id))  # a damaged entry names no session
            await self.commit_records_or_set_aside(records)
            await self.commit_or_set_aside(rows, users)
            self.stats.reclaimed += len(rows) + len(records)
            await self.cache.ack(acks)
            total += len(rows) + len(records)
            if len(found) < 1000:
                return total
