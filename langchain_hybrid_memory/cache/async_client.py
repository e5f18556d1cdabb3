"""`RedisCache`: every Redis call of the engine on redis.asyncio, one instance per event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

from .._loop import close_with_loop
from ..config import HybridConfig
from ..keys import KeyLayout
from .connections import make_client
from .protocol import (
    AppendResult,
    CachedContext,
    CacheDown,
    Commands,
    LeaseWait,
    Miss,
    Refill,
    TouchLog,
    exec_reply,
    multi,
    pack,
    raise_errors,
)
from .scripts import (
    APPEND,
    CHECKPOINT_DROP,
    CHECKPOINT_LATEST,
    CHECKPOINT_OUTBOX,
    CHECKPOINT_PUT,
    CHECKPOINT_WRITES,
    FILL,
    OUTBOX_OF,
    READ,
    SET_SUMMARY,
)
from .shared_connection import SharedConnection
from .tracking import Mirror, Track, changed, leasing, version

OutboxItem = tuple[str, str, bytes, str]  # an outbox entry's message: entry id, message id, element, user id


@dataclass(slots=True)
class Orphan:
    """An outbox entry its writer did not delete: a session's messages, or a checkpoint record."""

    stream: str
    entry_id: str
    names: str | None = None  # the key of the set naming it
    session_id: str = ""  # or thread id
    user_id: str = ""
    elements: list[tuple[bytes, bytes]] = field(default_factory=list)
    record: bytes | None = None


class RedisCache(Commands):
    """Every Redis call of the engine, on redis.asyncio (one instance per event loop)."""

    def __init__(self, config: HybridConfig, keys: KeyLayout, cluster: bool = False,
                 touches: TouchLog | None = None) -> None:
        super().__init__(config, keys, touches)
        self.cluster = cluster
        self.client: Any = make_client(config, cluster, sync=False)
        self._pipe: SharedConnection | None = None
        self._pipe_lock = asyncio.Lock()
        self._pipe_attempts = 0
        # Never more calls than the pool has connections, counting the pipe's.
        self._slots = asyncio.Semaphore(max(1, config.redis_max_connections - 1))
        self._append = self.client.register_script(APPEND)
        self._read = self.client.register_script(READ)
        self._fill = self.client.register_script(FILL)
        self._set_summary = self.client.register_script(SET_SUMMARY)
        self._outbox_of = self.client.register_script(OUTBOX_OF)
        self._checkpoint_put = self.client.register_script(CHECKPOINT_PUT)
        self._checkpoint_writes = self.client.register_script(CHECKPOINT_WRITES)
        self._checkpoint_outbox = self.client.register_script(CHECKPOINT_OUTBOX)
        self._checkpoint_latest = self.client.register_script(CHECKPOINT_LATEST)
        self._checkpoint_drop = self.client.register_script(CHECKPOINT_DROP)
        self.local_reads = False  # keep values under leases (tracking.py): set by Core once the server allows it
        self.closed = False
        self._lifetime: Callable[[], None] | None = None

    async def close(self) -> None:
        self.closed = True
        self._end_lifetime()
        await self._drop_pipe()
        await self.client.aclose()

    def close_with_loop(self) -> None:
        """Close this client when the running loop shuts down, so its connections never outlive their loop."""
        self._lifetime = close_with_loop(self.close, lambda: self.closed)

    def _end_lifetime(self) -> None:
        end, self._lifetime = self._lifetime, None
        if end is not None:
            end()

    def abandon(self) -> None:
        """Forget a client whose loop no longer runs (no loop left to close its connections on)."""
        self.closed = True
        self._end_lifetime()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing can be scheduled on it
                pipe.fail(RedisConnectionError("Redis connection closed"))

    async def _call(self, coro: Any) -> Any:
        try:
            async with self._slots:
                return await coro
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise CacheDown(type(exc).__name__) from None

    async def _exchange(self, cmds: list[tuple[Any, ...]], script: str | None = None,
                        track: Track | None = None, mirror: Mirror | None = None) -> list[Any]:
        """Send `cmds` on the pipe, return one reply each (single server or Sentinel). `script` as in
        SyncHotPath._exchange; `track` and `mirror` as in SharedConnection.call; a lost connection is retried
        once on a new one (it may predate a restart)."""
        data = pack(cmds)
        for attempt in (0, 1, 2):
            try:
                pipe = self._pipe
                if pipe is None or pipe.error is not None or pipe.pid != os.getpid():
                    pipe = await self._new_pipe()
                try:
                    return raise_errors(await pipe.call(data, len(cmds), track, mirror))
                except ReadOnlyError:
                    # Talking to a demoted primary (a Sentinel failover that kept connections open): a new
                    # connection asks the sentinels again, as redis-py's Sentinel connections do.
                    pipe.fail(RedisConnectionError("the primary is now a replica"))
                    raise RedisConnectionError("the primary is now a replica") from None
            except NoScriptError:
                if script is None or attempt == 2:
                    raise
                await self._call(self.client.script_load(script))
            except ResponseError:
                raise
            except (RedisError, OSError) as exc:
                if attempt:
                    raise CacheDown(type(exc).__name__) from None
        raise AssertionError("unreachable")

    async def _new_pipe(self) -> SharedConnection:
        tried = self._pipe_attempts
        async with self._pipe_lock:  # callers arriving together share one new connection
            pipe = self._pipe
            if pipe is not None and pipe.error is None and pipe.pid == os.getpid():
                return pipe
            if self._pipe_attempts != tried:  # it failed while this caller waited: fail with it, do not queue up
                raise RedisConnectionError("Redis connection failed")
            self._pipe_attempts += 1
            await self._drop_pipe()
            pool = self.client.connection_pool
            conn = await pool.get_connection()
            try:
                SharedConnection.check(conn)
                pipe = SharedConnection(conn, self.config.redis_timeout)
            except BaseException:
                await pool.release(conn)
                raise
            self._pipe = pipe
            if self.local_reads:
                await pipe.enable_tracking()  # an error fails the pipe: the caller retries on a new one
            return pipe

    async def _drop_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.pid == os.getpid():
            await pipe.close(self.client.connection_pool)

    async def _eval(self, script: Any, keys: list[str], args: list[Any], track: Track | None = None,
                    mirror: Mirror | None = None) -> Any:
        if self.cluster:
            return await self._call(script(keys=keys, args=args))
        cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return (await self._exchange([cmd], script.script, track, mirror))[0]

    async def _window(self, session_id: str, limit: int) -> list[Any]:
        if self.cluster:
            keys, args = self.read_script_args(session_id, limit)
            return list(await self._call(self._read(keys=keys, args=args)))
        cmds = self.read_cmds(session_id, limit)
        return exec_reply(await self._exchange(multi(cmds)), len(cmds))

    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def eviction_policy(self) -> str:
        """The server's maxmemory-policy ('' when CONFIG is not allowed, as on some managed services)."""
        try:
            out = await self._call(self.client.config_get("maxmemory-policy"))
        except ResponseError:
            return ""
        if out and isinstance(next(iter(out.values())), dict):  # a cluster answers per node
            out = next(iter(out.values()))
        value = out.get("maxmemory-policy", b"") if out else b""
        return value.decode() if isinstance(value, bytes) else str(value)

    async def read(self, session_id: str, limit: int) -> tuple[str, list[bytes]] | Miss:
        """(owner, elements), or a Miss (no window, or a partial one)."""
        return self.read_result(await self._window(session_id, limit))

    async def context(self, session_id: str) -> CachedContext | Miss:
        """The summary fields and every cached element, or a Miss."""
        return self.context_result(await self._window(session_id, 0))

    async def set_summary(self, session_id: str, upto_seq: int, text: str, covered: int) -> bool:
        keys, args = self.head(session_id, touch=False)
        return bool(await self._eval(self._set_summary, keys, [*args, upto_seq, text, covered]))

    async def append(self, session_id: str, user_id: str | None, ids: Sequence[str],
                     payloads: Sequence[str], *, persist: bool, init: Refill | None = None) -> AppendResult | Miss:
        """Append atomically; a Miss means "not cached: load a Refill from the store and call again with it"."""
        keys, args = self.append_args(session_id, user_id, ids, payloads, persist, init)
        return self.append_result(await self._eval(self._append, keys, args), len(ids))

    async def fill(self, session_id: str, fill: Refill, expect_seq: int | None = None
                   ) -> tuple[bool, str, list[bytes]]:
        """Cache `fill` unless somebody wrote first; returns (loaded, owner, the window now cached)."""
        out = await self._eval(self._fill, *self._fill_args(session_id, fill, expect_seq))
        cached = [el for _, el in fill.pairs()] if out[0] == 2 else out[2:]  # 2: cached exactly as given
        return bool(out[0]), out[1].decode("utf-8"), cached

    def fill_soon(self, session_id: str, fill: Refill, expect_seq: int | None) -> Coroutine[Any, Any, None]:
        """`fill`, its bytes sent now when the shared connection is open: a call made after this returns reaches
        Redis after them. Await the coroutine to finish it (errors as `fill`'s)."""
        keys, args = self._fill_args(session_id, fill, expect_seq)
        pipe, sent = self._pipe, None
        if not self.cluster and pipe is not None and pipe.error is None and pipe.pid == os.getpid():
            sent = pipe.call(pack([("EVALSHA", self._fill.sha, len(keys), *keys, *args)]), 1)
        return self._finish_fill(sent, keys, args)

    async def _finish_fill(self, sent: asyncio.Future[list[Any]] | None, keys: list[str], args: list[Any]) -> None:
        if sent is not None:
            try:
                raise_errors(await sent)
                return
            except NoScriptError:
                pass  # loaded, then sent again below
            except ResponseError:
                raise
            except (RedisError, OSError):
                pass  # again on a new connection, as `_exchange` does (a second FILL of a window is a no-op)
        await self._eval(self._fill, keys, args)

    def _fill_args(self, session_id: str, fill: Refill, expect_seq: int | None) -> tuple[list[str], list[Any]]:
        keys, args = self.head(session_id, touch=True, fill=fill)
        return keys, [*args, self.config.idempotency_window, "" if expect_seq is None else str(expect_seq),
                      *self.fill_args(fill)]

    async def fill_many(self, fills: dict[str, Refill]) -> int:
        if not fills:
            return 0
        # Concurrent script calls rather than a pipeline: each may need its script loaded on its own node.
        calls = [self._eval(self._fill, *self._fill_args(sid, fill, None)) for sid, fill in fills.items()]
        return sum(1 for x in await asyncio.gather(*calls) if x[0])

    async def misses(self, session_ids: Sequence[str]) -> list[Miss]:
        """What a read of each session would tell before a load (`Miss`: whether its outbox entry set exists,
        its generation), in one exchange."""
        cmds: list[tuple[Any, ...]] = []
        for sid in session_ids:
            k = self.keys.session(sid)
            cmds += [("EXISTS", k.entries), ("GET", k.gen)]
        out = await self._many(cmds)
        return [Miss(None, out[i] != 0, out[i + 1] or b"") for i in range(0, len(out), 2)]

    async def last_seqs(self, session_ids: Sequence[str]) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for sid in session_ids:
            pipe.hget(self.keys.session(sid).meta, "seq")
        return [int(v) if v else 0 for v in await self._call(pipe.execute())]

    async def owners(self, session_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for sid in session_ids:
            pipe.hget(self.keys.session(sid).meta, "uid")
        return [v.decode("utf-8") if v else None for v in await self._call(pipe.execute())]

    async def drop(self, session_ids: Sequence[str]) -> bytes:
        """Forget the cached windows (cache only; PostgreSQL is untouched), under a new generation: a window
        loaded before this is not cached after it (while the generation lasts: the session's TTL, or less
        under an evicting memory policy). Returns that generation."""
        gen = secrets.token_hex(8).encode()
        if not session_ids:
            return gen
        pipe = self.client.pipeline(transaction=False)
        for sid in session_ids:
            k = self.keys.session(sid)
            # The generation first: Redis may run other clients' commands between parts of a long pipeline,
            # and a FILL of the old generation must not find the window gone and be accepted. Until the DEL,
            # reads still hit the window, so none loads under the new one too early.
            pipe.set(k.gen, gen, px=self._ttl_ms)
            pipe.delete(k.window, k.meta, k.ids)
            pipe.zrem(k.active, sid)
        await self._call(pipe.execute())
        return gen

    async def active_sessions(self) -> list[str]:
        """Sessions touched within the TTL (session_only mode has no other index)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.all_active():
            pipe.zrange(key, 0, -1)
        return sorted({m.decode("utf-8") for members in await self._call(pipe.execute()) for m in members})

    async def index_user(self, user_id: str, session_id: str) -> None:
        key = self.keys.user(user_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, session_id)
        pipe.pexpire(key, self._ttl_ms)
        await self._call(pipe.execute())

    async def user_sessions(self, user_id: str) -> list[str]:
        members = await self._call(self.client.smembers(self.keys.user(user_id)))
        return sorted(m.decode("utf-8") for m in members)

    async def forget_user(self, user_id: str) -> None:
        await self._call(self.client.delete(self.keys.user(user_id)))

    async def ack(self, entries: Sequence[tuple[str, str | None, str]]) -> None:
        """Remove entries, given as (stream, the key of the set naming it or None if unknown, entry id), from
        the outbox streams, then their names from the sessions' or threads' entry sets (in that order: a name
        whose entry is gone is harmless, see `outbox_entries`)."""
        if not entries:
            return
        streams: dict[str, list[str]] = {}
        names: dict[str, list[str]] = {}
        for stream, names_key, entry_id in entries:
            streams.setdefault(stream, []).append(entry_id)
            if names_key is not None:
                names.setdefault(names_key, []).append(entry_id)
        cmds = [("XDEL", s, *x) for s, x in streams.items()] + [("SREM", k, *x) for k, x in names.items()]
        await self._many(cmds)

    async def _many(self, cmds: list[tuple[Any, ...]]) -> list[Any]:
        """Commands on one bucket or many, not atomic: one packed exchange on a single server."""
        if not self.cluster:
            return await self._exchange(cmds)  # packed by hiredis: a batch acknowledges thousands of sessions
        pipe = self.client.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        return list(await self._call(pipe.execute()))

    # -- checkpoint threads (HybridSaver) ------------------------------------------------------------------
    async def _change(self, thread_id: str, script: Any, keys: list[str], args: list[Any],
                      track: Track | None = None, mirror: Mirror | None = None) -> Any:
        """Run a checkpoint script that changes a thread's keys (tracking.py): while another process holds the
        thread's lease the script writes nothing, and is run again once the lease is released (or has expired);
        once it ran, no connection of this process answers the thread from a value read before."""
        wait: LeaseWait | None = None
        while True:
            before = version(thread_id)
            try:
                out = await self._eval(script, keys, args, track, mirror)
            except BaseException:  # cancelled or failed, maybe after Redis ran it: kept values go, to be safe
                changed(thread_id)
                raise
            left = self.leased(out)
            if left is None:
                self._written(thread_id, before, track)
                return out
            wait = wait or LeaseWait()
            await asyncio.sleep(wait.next(left))

    def _written(self, thread_id: str, before: tuple[int, int], track: Track | None) -> None:
        """A change acknowledged: values this process read before it are retired, but for what this call read
        back after it on the pipe (or made of what it kept), if no other change came between."""
        after = changed(thread_id, before)
        pipe = self._pipe
        if after is not None and track is not None and pipe is not None:
            pipe.values.restamp(track.name, before, after)

    async def checkpoint_put(self, thread_id: str, ns: str, checkpoint_id: str, hot: bytes, record: bytes,
                             blobs: Sequence[tuple[str, bytes, bool]], drop: Sequence[str]) -> str:
        """Make a checkpoint the namespace's hot latest one (unless a newer one is) and queue its record;
        returns the outbox entry id."""
        args = self.checkpoint_put_args(thread_id, ns, checkpoint_id, hot, record, blobs, drop)
        mirror = self.put_mirror(checkpoint_id, hot) if self._mirrors(thread_id, ns) else None
        track = self.checkpoint_track(thread_id, ns, read=mirror is None)
        return self.entry_id(await self._change(thread_id, self._checkpoint_put, self.thread_keys(thread_id, ns),
                                                args, track, mirror))

    async def checkpoint_writes(self, thread_id: str, ns: str, checkpoint_id: str, record: bytes,
                                writes: Sequence[tuple[str, bytes, bool]]) -> str:
        """A task's writes; returns the outbox entry id. Nothing is read back: what this loop keeps of the
        namespace becomes what the writes made of it, if they were the only change, else it is dropped."""
        args = self.checkpoint_writes_args(thread_id, ns, checkpoint_id, record, writes)
        mirror = self.writes_mirror(writes) if self._mirrors(thread_id, ns) else None
        track = self.checkpoint_track(thread_id, ns, read=False)
        return self.entry_id(await self._change(thread_id, self._checkpoint_writes, self.thread_keys(thread_id, ns),
                                                args, track, mirror))

    def _mirrors(self, thread_id: str, ns: str) -> bool:
        """Whether a write to the namespace can change what this loop keeps of it instead of reading it back:
        a value is kept, with the thread's change count."""
        pipe = self._pipe
        kept = None if pipe is None else pipe.values.get(("checkpoint", thread_id, ns))
        return kept is not None and kept[1] is not None

    async def checkpoint_latest(self, thread_id: str, ns: str, touch: bool
                                ) -> tuple[bytes | None, bytes | None, dict[bytes, bytes]]:
        """(latest checkpoint id, its hot record, its pending writes by field) of a namespace: from the pipe's
        kept value while this process holds the thread's lease and nothing changed it (and no TTL slide is due),
        else read (and kept, the lease taken, unless another process took it lately)."""
        if self.cluster:
            return self.checkpoint_latest_result(await self._eval(
                self._checkpoint_latest, self.thread_keys(thread_id, ns), self.checkpoint_latest_args(ns, touch)))
        pipe = self._pipe
        if not touch and self.local_reads and pipe is not None and pipe.pid == os.getpid():
            kept = pipe.kept(("checkpoint", thread_id, ns))
            if kept is not None:
                return kept[0]  # type: ignore[no-any-return]
        if not leasing(thread_id):
            cmds = self.checkpoint_latest_cmds(thread_id, ns, touch)
            return self.checkpoint_latest_result(exec_reply(await self._exchange(multi(cmds)), len(cmds)))
        touches = self.checkpoint_touch_cmds(thread_id, ns, touch)  # first: a slide is a write, which ends the
        # tracking of a key by the connection that makes it
        track = self.checkpoint_track(thread_id, ns, always=True, writes=bool(touches))
        return self._latest_after((await self._exchange(touches, track=track))[len(touches):])

    async def checkpoint_blobs(self, thread_id: str, fields: Sequence[str]) -> list[bytes | None]:
        return list((await self._many([("HMGET", self.keys.thread(thread_id).checkpoints, *fields)]))[0])

    async def checkpoint_outbox(self, thread_id: str) -> list[tuple[str, bytes]]:
        """(entry id, record) of the thread's entries still in the outbox (any writer's)."""
        flat = await self._eval(self._checkpoint_outbox, self.thread_keys(thread_id, ""), [])
        return [(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat) - 1, 2)]

    async def checkpoint_drop(self, thread_ids: Sequence[str]) -> None:
        """Forget the threads' hot state (cache only), once no process answers them from what it keeps."""
        for thread_id in thread_ids:
            names = await self._call(self.client.hkeys(self.keys.thread(thread_id).checkpoints))
            keys, args = self.checkpoint_drop_args(thread_id, names)
            await self._change(thread_id, self._checkpoint_drop, keys, args)

    async def orphans(self, older_than_s: float, count: int) -> list[Orphan]:
        """Outbox entries older than `older_than_s`: their writer died or lost its connection.

        Stream ids are Redis-clock milliseconds, so age needs no extra bookkeeping.
        """
        secs, micros = await self._time()
        cutoff = int(secs * 1000 + micros // 1000 - older_than_s * 1000)
        if cutoff <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        streams = self.keys.all_outboxes()
        for stream in streams:
            pipe.xrange(stream, "-", str(cutoff), count=count)
        found: list[Orphan] = []
        for stream, entries in zip(streams, await self._call(pipe.execute()), strict=True):
            for entry_id, fields in entries:
                o = Orphan(stream, entry_id.decode())
                try:
                    if b"k" in fields:  # a checkpoint thread's record
                        o.session_id = fields[b"t"].decode("utf-8")
                        o.names = self.keys.thread(o.session_id).entries
                        o.record = fields[b"r"]
                    else:
                        o.session_id = fields.pop(b"s").decode("utf-8")
                        o.user_id = fields.pop(b"u").decode("utf-8")
                        o.names = self.keys.session(o.session_id).entries
                        o.elements = list(fields.items())
                except (KeyError, UnicodeDecodeError):
                    o = Orphan(stream, entry_id.decode())  # damaged: nothing to commit, and it gets deleted
                found.append(o)
        return found

    async def session_outbox(self, session_id: str) -> list[OutboxItem]:
        """(entry id, message id, element, user id) of the session's entries still in its bucket's outbox."""
        return self._outbox_items(await self._eval(self._outbox_of, *self.head(session_id, touch=False)))

    async def sessions_outbox(self, session_ids: Sequence[str]) -> list[list[OutboxItem]]:
        """`session_outbox` of each session, in one exchange on a single server (an erase or a retention pass
        looks up hundreds)."""
        if self.cluster:
            return [await self.session_outbox(sid) for sid in session_ids]
        if not session_ids:
            return []
        cmds = [("EVALSHA", self._outbox_of.sha, len(keys), *keys, *args)
                for keys, args in (self.head(sid, touch=False) for sid in session_ids)]
        return [self._outbox_items(flat) for flat in await self._exchange(cmds, self._outbox_of.script)]

    @staticmethod
    def _outbox_items(flat: list[Any]) -> list[OutboxItem]:
        out = []
        for i in range(0, len(flat) - 1, 2):
            entry_id, f = flat[i].decode(), flat[i + 1]
            if len(f) < 4 or f[0] != b"s" or f[2] != b"u":
                continue  # not an entry the engine wrote: the janitor sets it aside
            uid = f[3].decode("utf-8", "replace")
            out += [(entry_id, f[j].decode("utf-8", "replace"), f[j + 1], uid) for j in range(4, len(f) - 1, 2)]
        return out

    async def forget_outbox(self, session_ids: Sequence[str]) -> None:
        """Delete every outbox entry of these sessions (any writer's): part of erasing them."""
        entries: list[tuple[str, str | None, str]] = []
        for sid, items in zip(session_ids, await self.sessions_outbox(session_ids), strict=True):
            k = self.keys.session(sid)
            entries += [(k.outbox, k.entries, entry_id) for entry_id in sorted({x for x, _, _, _ in items})]
        await self.ack(entries)

    async def outbox_depth(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for stream in self.keys.all_outboxes():
            pipe.xlen(stream)
        return sum(await self._call(pipe.execute()))

    async def cached_sessions(self) -> int:
        secs, _ = await self._time()
        cutoff = (secs - self.config.session_ttl) * 1000
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys.all_active():
            pipe.zremrangebyscore(key, "-inf", cutoff)
            pipe.zcard(key)
        out = await self._call(pipe.execute())
        return sum(out[1::2])

    async def memory_mb(self) -> float:
        info = await self._call(self.client.info("memory"))
        if "used_memory" not in info:  # a cluster answers per node: add them up
            return sum(float(v.get("used_memory", 0)) for v in info.values() if isinstance(v, dict)) / 2**20
        return float(info.get("used_memory", 0)) / (1024 * 1024)

    async def _time(self) -> tuple[int, int]:
        out = await self._call(self.client.time())
        if isinstance(out, dict):  # a cluster may answer per node
            out = next(iter(out.values()))
        return int(out[0]), int(out[1])
