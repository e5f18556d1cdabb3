"""Redis commands and replies without I/O: what the sync and async clients send, and how replies are read.

Both clients drive the same `Commands` (arguments of every hot-path call, parsing of every reply); only the
exchange differs (`sync_client.py` blocks on a kept connection, `async_client.py` awaits the shared one).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import HybridConfig
from ..errors import StorageUnavailableError
from ..keys import KeyLayout
from ..messages import CorruptEntry, element
from .scripts import CONTEXT_FIELDS, READ_FIELDS
from .tracking import Mirror, Track, leasing, token


class CacheDown(Exception):
    """Redis could not be reached (or timed out)."""


class OwnershipConflict(Exception):
    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


@dataclass(slots=True)
class Refill:
    """A window as loaded from PostgreSQL, ready to cache."""

    base_seq: int
    owner: str | None
    rows: list[tuple[int, str, str]]  # (seq, message id, body) oldest first
    partial: bool = False  # PostgreSQL was unreachable: older history is missing from this window
    sum_upto: int = 0  # the latest summary covers messages up to this seq
    sum_text: str = ""
    unsummarized: int = 0  # messages stored after the summary
    floor: int = 0  # a tombstone: outbox entries at or below it were deleted
    # The session's generation read before the store was queried (keys.py; b"" for none); None: not known,
    # and the window is not cached
    gen: bytes | None = None

    def pairs(self) -> list[tuple[str, bytes]]:
        """(message id, element, see messages.element) oldest first: what the scripts cache. Built only when a
        script needs them (a cold read's answer decodes the rows themselves)."""
        return [(msg_id, element(seq, body)) for seq, msg_id, body in self.rows]


@dataclass(slots=True)
class CachedContext:
    owner: str
    sum_upto: int
    sum_text: str
    unsummarized: int  # how many messages follow the summary: the cache covers them all only if it holds that many
    elements: list[bytes]


@dataclass(slots=True, frozen=True)
class Miss:
    """A read or append that found no complete window. `partial_seq`: the last seq of a partial window (a
    refill replaces it only if still that); `waiting`: whether the session's outbox entry set exists (some of
    its writes may wait for PostgreSQL), and `gen` the session's generation (`Refill.gen`), as Redis saw them
    when the call ran, before any PostgreSQL query that follows."""

    partial_seq: int | None = None
    waiting: bool = True
    gen: bytes | None = None


@dataclass(slots=True)
class AppendResult:
    bound: bool  # the session was bound to the user by this call
    entry_id: str
    due: bool  # enough messages follow the summary for the next one
    seqs: list[int]
    new: list[bool]



class TouchLog:
    """When this process last slid each session's and checkpoint thread's TTLs (a bounded map, shared by all
    clients of one memory).

    A TTL slid at t keeps the keys until t + ttl, so sliding at most every ttl/10 keeps every key alive for at
    least 0.9 x ttl after its last use, and spares most calls three PEXPIREs and a ZADD. Keys are only ever
    created by a fill or an append, and both set their TTL, so a skipped slide never leaves a key without one.
    """

    def __init__(self, ttl_s: float) -> None:
        self._every = ttl_s / 10
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable) -> bool:
        """Whether `key`'s slide is due (and, if so, it counts as done now). `key`: a session id, or a
        checkpoint thread's `thread_key` (a session and a thread may have the same id)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            return False
        if len(self._last) >= 100_000:  # bounded: a long-running process sees unbounded session ids
            self._last.clear()
        self._last[key] = now
        return True

    @staticmethod
    def thread_key(thread_id: str, ns: str) -> Hashable:
        """A thread namespace's slide (it slides the thread's hash and the namespace's pending writes)."""
        return ("thread", thread_id, ns)


class Commands:
    """Arguments and result parsing of the hot-path calls, shared by the async and sync clients."""

    def __init__(self, config: HybridConfig, keys: KeyLayout, touches: TouchLog | None) -> None:
        self.config = config
        self.keys = keys
        self._ttl_ms = int(config.session_ttl * 1000)
        self._capacity = config.cache_capacity
        self._ceiling = config.cache_ceiling
        self._threshold = config.summary_threshold
        self.touches = touches or TouchLog(config.session_ttl)
        self._tracks: dict[tuple[str, str, bool, bool, bool, str], Track] = {}
        # A lease lasts `redis_timeout`: no longer than another process takes to find Redis gone and write to
        # PostgreSQL instead (tracking.py).
        self._lease_ms = max(1, int(config.redis_timeout * 1000))

    def head(self, session_id: str, touch: bool | None = None, fill: Refill | None = None
             ) -> tuple[list[str], list[Any]]:
        """Every script's KEYS and first ARGV. A `fill` may hold more than the capacity (summaries lagging):
        the capacity passed is then its size, so the script keeps all of it."""
        k = self.keys.session(session_id)
        if touch is None:
            touch = self.touches.due(session_id)
        cap = self._capacity if fill is None else max(self._capacity, len(fill.rows))
        return list(k.all), [session_id, self._ttl_ms, cap, self._threshold, 1 if touch else 0]

    def read_cmds(self, session_id: str, limit: int) -> list[tuple[Any, ...]]:
        """The commands of one read, run as a MULTI: meta fields, length, elements (limit 0: all, with the
        summary fields), whether the session has outbox entries (a miss then knows, before it queries
        PostgreSQL, whether it must look them up) and its generation (what the window it loads is cached
        under), then the TTL slide when due."""
        k = self.keys.session(session_id)
        cmds: list[tuple[Any, ...]] = [("HMGET", k.meta, *(CONTEXT_FIELDS if limit == 0 else READ_FIELDS)),
                                       ("LLEN", k.window), ("LRANGE", k.window, -limit, -1), ("EXISTS", k.entries),
                                       ("GET", k.gen)]
        if self.touches.due(session_id):
            ttl = self._ttl_ms
            cmds += [("PEXPIRE", k.window, ttl), ("PEXPIRE", k.meta, ttl), ("PEXPIRE", k.ids, ttl),
                     ("ZADD", k.active, int(time.time() * 1000), session_id)]
        return cmds

    def read_script_args(self, session_id: str, limit: int) -> tuple[list[str], list[Any]]:
        """The READ script's arguments for the same read (Redis Cluster)."""
        keys, args = self.head(session_id)
        return keys, [*args, -limit, *(CONTEXT_FIELDS if limit == 0 else READ_FIELDS)]

    @staticmethod
    def _read_common(out: list[Any]) -> list[Any] | Miss:
        """The meta fields of a hit, or a Miss (no window, or a partial one)."""
        if any(isinstance(x, Exception) for x in out):
            raise CorruptEntry("corrupt cache entry (wrong key type)")
        meta, length = out[0], out[1]
        if meta[0] is None:
            return Miss(None, out[3] != 0, out[4] or b"")
        try:
            if meta[1] is not None:
                return Miss(int(meta[0]), out[3] != 0, out[4] or b"")
            if meta[3] is None or int(meta[3]) != length:
                # Redis evicted part of the session (any policy but noeviction): never serve it short
                raise CorruptEntry("damaged cache entry (window length)")
        except ValueError:
            raise CorruptEntry("corrupt cache entry (meta)") from None
        return meta  # type: ignore[no-any-return]

    def read_result(self, out: list[Any]) -> tuple[str, list[bytes]] | Miss:
        meta = self._read_common(out)
        if isinstance(meta, Miss):
            return meta
        try:
            return (meta[2] or b"").decode("utf-8"), out[2]
        except UnicodeDecodeError:
            raise CorruptEntry("corrupt cache entry (owner)") from None

    def context_result(self, out: list[Any]) -> CachedContext | Miss:
        meta = self._read_common(out)
        if isinstance(meta, Miss):
            return meta
        try:
            return CachedContext((meta[2] or b"").decode("utf-8"), int(meta[4] or 0),
                                 (meta[5] or b"").decode("utf-8"), int(meta[6] or 0), out[2])
        except (UnicodeDecodeError, ValueError):
            raise CorruptEntry("corrupt cache entry (summary fields)") from None

    @staticmethod
    def fill_args(fill: Refill) -> list[Any]:
        # An unknown generation is sent as one no key holds (tokens are hex): the script refuses the window.
        args: list[Any] = [fill.base_seq, fill.owner or "", 1 if fill.partial else 0, fill.sum_upto,
                           fill.sum_text, fill.unsummarized, fill.floor, "-" if fill.gen is None else fill.gen,
                           len(fill.rows)]
        for msg_id, el in fill.pairs():
            args += (msg_id, el)
        return args

    def append_args(self, session_id: str, user_id: str | None, ids: Sequence[str], payloads: Sequence[str],
                    persist: bool, init: Refill | None) -> tuple[list[str], list[Any]]:
        keys, args = self.head(session_id, fill=init)
        args += [self.config.idempotency_window, 1 if persist else 0, user_id or "", 1 if init else 0,
                 self._ceiling]
        if init is not None:
            args += self.fill_args(init)
        args.append(len(ids))
        for msg_id, payload in zip(ids, payloads, strict=True):
            args += (msg_id, payload)
        return keys, args

    @staticmethod
    def append_result(out: Any, n: int) -> AppendResult | Miss:
        status = out[0]
        if status == -1:
            return Miss(gen=out[1])
        if status == -2:
            raise OwnershipConflict(out[1].decode("utf-8"))
        return AppendResult(bound=status == 2, entry_id=out[1].decode() if out[1] else "", due=out[2] == 1,
                            seqs=[int(s) for s in out[3:3 + n]], new=[s == b"1" for s in out[3 + n:3 + 2 * n]])

    # -- checkpoint threads (HybridSaver) ------------------------------------------------------------------
    def thread_keys(self, thread_id: str, ns: str) -> list[str]:
        """The KEYS of the checkpoint scripts."""
        k = self.keys.thread(thread_id)
        return [k.checkpoints, k.writes(ns), k.outbox, k.entries, k.lease]

    def checkpoint_put_args(self, thread_id: str, ns: str, checkpoint_id: str, hot: bytes, record: bytes,
                            blobs: Sequence[tuple[str, bytes, bool]], drop: Sequence[str]) -> list[Any]:
        args: list[Any] = [ns, checkpoint_id, hot, self._ttl_ms, record, thread_id, len(blobs)]
        for field_, value, whole in blobs:
            args += (field_, value, "1" if whole else "0")
        args += (len(drop), *drop, token())
        return args

    def checkpoint_writes_args(self, thread_id: str, ns: str, checkpoint_id: str, record: bytes,
                               writes: Sequence[tuple[str, bytes, bool]]) -> list[Any]:
        args: list[Any] = [ns, checkpoint_id, self._ttl_ms, record, thread_id, len(writes)]
        for field_, value, replace in writes:
            args += (field_, value, "1" if replace else "0")
        args.append(token())
        return args

    def checkpoint_drop_args(self, thread_id: str, names: Sequence[bytes]) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of checkpoint_drop.lua: the thread's lease, its hash and the pending writes of every
        namespace the hash names (`names`: its fields)."""
        k = self.keys.thread(thread_id)
        spaces = {n[2:].decode("utf-8") for n in names if n.startswith(b"i\x1f")}
        return [k.lease, k.checkpoints, *(k.writes(ns) for ns in sorted(spaces))], [token()]

    @staticmethod
    def leased(out: Any) -> int | None:
        """The milliseconds another process's lease on the thread has left, if a checkpoint script wrote
        nothing for it (tracking.py); None: the script ran."""
        if isinstance(out, list) and len(out) == 2 and out[0] in (b"LEASED", "LEASED"):
            return max(int(out[1]), 0)
        return None

    def checkpoint_latest_cmds(self, thread_id: str, ns: str, touch: bool) -> list[tuple[Any, ...]]:
        """The commands of a namespace's latest checkpoint read, run as a MULTI: the TTL slide when due, then its
        id and hot record and its pending writes. checkpoint_latest.lua does the same on Redis Cluster."""
        return [*self.checkpoint_touch_cmds(thread_id, ns, touch), *self._checkpoint_read_cmds(thread_id, ns)]

    def checkpoint_touch_cmds(self, thread_id: str, ns: str, touch: bool) -> list[tuple[Any, ...]]:
        if not touch:
            return []
        k = self.keys.thread(thread_id)
        return [("PEXPIRE", k.checkpoints, self._ttl_ms), ("PEXPIRE", k.writes(ns), self._ttl_ms)]

    def _checkpoint_read_cmds(self, thread_id: str, ns: str) -> list[tuple[Any, ...]]:
        k = self.keys.thread(thread_id)
        return [("HMGET", k.checkpoints, "i\x1f" + ns, "c\x1f" + ns, "n"), ("HGETALL", k.writes(ns))]

    def checkpoint_track(self, thread_id: str, ns: str, *, always: bool = False, writes: bool = True,
                         read: bool = True) -> Track:
        """A namespace's latest checkpoint as a value kept by key tracking (tracking.py), read in a MULTI after a
        call (`writes`: that writes its keys). `read=False`: the call only drops what was read from them."""
        me = token()
        read = read and (always or leasing(thread_id))  # a contended thread's writes read nothing back
        key = (thread_id, ns, always, writes, read, me)
        track = self._tracks.get(key)
        if track is None:
            if len(self._tracks) >= 10_000:  # bounded, as the key layout's
                self._tracks.clear()
            k = self.keys.thread(thread_id)
            cmds = self._checkpoint_read_cmds(thread_id, ns) if read else []
            # The lease is taken first and read last: a read after a write is tracked, and shows the holder.
            leased = [("SET", k.lease, me, "NX", "PX", self._lease_ms), *cmds,
                      ("GET", k.lease), ("PTTL", k.lease)] if read else []
            track = self._tracks[key] = Track(
                ("checkpoint", thread_id, ns), thread_id, (k.checkpoints, k.writes(ns), k.lease),
                pack(multi(leased)) if read else b"", len(leased) + 2 if read else 0,
                pack(multi(cmds)) if read else b"", len(cmds) + 2 if read else 0,
                self._kept_after, self._held, always, writes)
        return track

    @classmethod
    def _latest_after(cls, replies: list[Any]) -> Latest:
        """A latest-checkpoint read's value from its replies (the EXEC's last): with the lease or without."""
        out = replies[-1]
        if not isinstance(out, list) or len(out) not in (2, 5):
            raise RedisConnectionError("unexpected MULTI reply")
        return cls.checkpoint_latest_result(out[1:3] if len(out) == 5 else out)

    @classmethod
    def _kept_after(cls, replies: list[Any]) -> KeptLatest:
        """`_latest_after` as a value to keep: with the thread's change count it was read at."""
        latest = cls._latest_after(replies)
        out = replies[-1]
        fields = out[1] if len(out) == 5 else out[0]
        count = fields[2] if len(fields) > 2 else None
        return latest, (int(count) if count is not None else None)

    @staticmethod
    def put_mirror(checkpoint_id: str, hot: bytes) -> Mirror:
        """What checkpoint_put.lua did to a kept latest checkpoint, from its reply (tracking.py, `Mirror`)."""

        def mirror(kept: KeptLatest, out: Any) -> KeptLatest | None:
            (latest, record, writes), count = kept
            if not _one_more(count, out):
                return None
            if out[2] != 1:  # an older checkpoint, put late: the latest stays
                return (latest, record, writes), count + 1  # type: ignore[operator]
            gone = set(out[3:])
            return (checkpoint_id.encode(), hot, {f: v for f, v in writes.items() if f not in gone}), count + 1  # type: ignore[operator]

        return mirror

    @staticmethod
    def writes_mirror(writes: Sequence[tuple[str, bytes, bool]]) -> Mirror:
        """What checkpoint_writes.lua did to a kept latest checkpoint, from its reply (tracking.py, `Mirror`)."""

        def mirror(kept: KeptLatest, out: Any) -> KeptLatest | None:
            (latest, record, pending), count = kept
            if not _one_more(count, out):
                return None
            if out[2] == 1:  # as the script: a special write replaces, a regular one keeps what came first
                pending = dict(pending)
                for field_, value, replace in writes:
                    name = field_.encode()
                    if replace or name not in pending:
                        pending[name] = value
            return (latest, record, pending), count + 1  # type: ignore[operator]

        return mirror

    @staticmethod
    def _held(replies: list[Any]) -> int:
        """The milliseconds this process's lease has left, as a leased read saw it (0: not held)."""
        out = replies[-1]
        holder, left = out[3], out[4]
        mine = token()
        if holder not in (mine, mine.encode()) or not isinstance(left, int):
            return 0
        return max(left, 0)

    def checkpoint_latest_args(self, ns: str, touch: bool) -> list[Any]:
        return [ns, self._ttl_ms if touch else 0]

    @staticmethod
    def checkpoint_latest_result(out: list[Any]) -> Latest:
        """(latest checkpoint id, its hot record, its pending writes by field) from the MULTI's or the script's
        reply."""
        (latest, hot, *_), flat = raise_errors(out)[-2:]
        if isinstance(flat, dict):  # RESP3
            return latest, hot, flat
        return latest, hot, dict(zip(flat[::2], flat[1::2], strict=True))

    @staticmethod
    def entry_id(out: Any) -> str:
        """An outbox entry id as a script returns it (first, in a checkpoint script's reply)."""
        if isinstance(out, list):
            out = out[0]
        return out.decode() if isinstance(out, bytes) else str(out)


Latest = tuple[bytes | None, bytes | None, dict[bytes, bytes]]  # a namespace's latest checkpoint, as read
KeptLatest = tuple[Latest, int | None]  # and the thread's change count it was read at (None: no count yet)


def _one_more(count: int | None, out: Any) -> bool:
    """Whether a checkpoint script's reply says it made the only change to the thread since `count` was read."""
    return count is not None and isinstance(out, list) and len(out) >= 3 and out[1] == count + 1
# A writer waits for another process's lease until it expires (a second more), and never longer than this in
# all: a lease taken again and again by processes that never let it go is an error, not Redis down (failing
# over would write around Redis, whose hot state other processes go on reading).
LEASE_PATIENCE = 30.0


class LeaseWait:
    """A writer's wait for another process's lease on a thread (cache/tracking.py), between runs of its script."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._until = 0.0  # when the leases seen so far expire, whoever holds them
        self._pause = 0.0005

    def next(self, left_ms: int) -> float:
        """Seconds to wait before running the script again, the lease having `left_ms` to go; raises
        StorageUnavailableError (nothing was written) once waiting is pointless."""
        clock = time.monotonic()
        self._until = max(self._until, clock + left_ms / 1000)
        if clock > min(self._until + 1.0, self._started + LEASE_PATIENCE):
            raise StorageUnavailableError(f"another process has held this thread's lease for "
                                          f"{clock - self._started:.1f} s; nothing was written")
        pause, self._pause = self._pause, min(self._pause * 2, 0.02)
        return min(pause, left_ms / 1000 + 0.001)


# Connection errors worth one retry on a fresh connection (a pooled one may predate a Redis restart), as the
# clients' own Retry(NoBackoff(), 1) does for single commands.
RETRY = (RedisConnectionError, RedisTimeoutError, OSError)


def pack(cmds: list[tuple[Any, ...]]) -> bytes:
    """The wire bytes of `cmds`: hiredis's packer is a C call per command; redis.asyncio packs in pure Python
    (about 1 µs per argument)."""
    return b"".join([hiredis.pack_command(c) for c in cmds])


_parse_error: Any = BaseParser.parse_error  # error reply -> the exception class redis-py would raise


def raise_errors(replies: list[Any]) -> list[Any]:
    """Raise the first top-level error reply as redis-py would (NOSCRIPT -> NoScriptError, ...)."""
    for r in replies:
        if isinstance(r, hiredis.ReplyError):
            raise _parse_error(str(r))
    return replies



def multi(cmds: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [("MULTI",), *cmds, ("EXEC",)]


def exec_reply(replies: list[Any], n: int) -> list[Any]:
    """The EXEC reply of a `multi` exchange (errors inside it are values, as in a pipeline)."""
    out = replies[-1]
    if not isinstance(out, list) or len(out) != n:
        raise RedisConnectionError("unexpected MULTI reply")
    return out
