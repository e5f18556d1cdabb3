"""Values an event loop's connection keeps by Redis key tracking (client-side caching), under a lease.

A connection with `CLIENT TRACKING ON OPTIN NOLOOP` reads a value's keys under `CLIENT CACHING YES`; from then on
Redis pushes a notice on that connection when another connection changes one of them. A notice alone is not
enough: Redis may write the writer's reply before the notice (same pass of its event loop), and a network may
delay the notice, so a read answered from a kept value could miss a write acknowledged an instant before.

Hence the lease. The read that keeps a value also takes the thread's lease (`SET NX PX`, the key named by
keys.ThreadKeys.lease) for this process and reads who holds it and for how long; the value is kept only while
this process holds it, and answered only until its expiry as measured from when the read was sent (so before
Redis expires it). A checkpoint script of any other process that finds the lease held marks it ('!' + holder,
a change: the holder gets a notice) and writes nothing; its caller retries until the lease is gone. The holder,
on that notice, stops answering from every value any connection of this process keeps of the thread (`changed`)
and only then deletes the mark. So a write is acknowledged only once no process answers that thread from a
value read before it; a holder that died or stopped delays it until the lease expires (`redis_timeout` at most,
no longer than another process takes to find Redis gone and write to PostgreSQL instead). A lease is never
renewed (a renewal is a change, which would end the holder's own tracking of it): an active thread's is taken
again by the first read after it expired. A process whose lease was taken does not take it again for a while
(`leasing`): a thread two processes write in turn is read from Redis, not handed back and forth.

This process's own writes (any connection) need no lease: each calls `changed` once Redis acknowledged it, so no
connection answers from a value read before it (a read on another connection may run before the write and reach
its caller after). A connection's own write sends it no notice but ends its tracking of the key: every call that
writes a value's keys drops the values read from them, but for the value of the namespace it writes, which it
either reads again after the write or, if it keeps one, changes as the write changed Redis (`Mirror`): every
script that changes a thread counts its changes and returns the count, read with the value, so a connection
knows whether its write was the only change since (otherwise the value is dropped). The keys are no longer
tracked then; the lease, still tracked, and `changed` stand for the notices until the value expires.

What this assumes (README, Guarantees): Redis never drops a lease before it expires, so values are kept only
under maxmemory-policy noeviction (`Core.check_eviction_policy`; a FLUSHALL, a hand-made DEL, a Sentinel failover
that loses the last writes are not covered), its clock does not jump forward, a restarted Redis takes longer to
come back than the connection's end takes to reach this process, and every writer checks leases. To let a lease
go of its own accord (closing), a connection marks it as a writer would, then calls `changed`, then deletes it.
Only RESP3 connections of a single server or Sentinel keep values; a blocking connection
(the sync API) reads notices only during its own calls, so it keeps none.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import hiredis

_CACHING_YES: tuple[Any, ...] = ("CLIENT", "CACHING", "YES")
CACHING = hiredis.pack_command(_CACHING_YES)
_ON: tuple[Any, ...] = ("CLIENT", "TRACKING", "ON", "OPTIN", "NOLOOP")
TRACKING_ON = hiredis.pack_command(_ON)
# Deletes the mark left on this process's lease (its token is ARGV[1]); anything else stays.
_RELEASE = "if redis.call('GET', KEYS[1]) == '!' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# Marks this process's own lease, as another process's writer would: from then on no read keeps a value under it.
_MARK = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], '!' .. ARGV[1], 'KEEPTTL') end "
         "return 0")


def _new_token() -> str:
    return f"{os.getpid()}:{secrets.token_hex(8)}"


_token = _new_token()


def token() -> str:
    """This process's lease token (a forked child gets its own)."""
    return _token


def _on_lease(script: str, lease_key: str) -> bytes:
    cmd: tuple[Any, ...] = ("EVAL", script, 1, lease_key, token())
    return bytes(hiredis.pack_command(cmd))


def release(lease_key: str) -> bytes:
    """The packed command that deletes the mark left on this process's lease."""
    return _on_lease(_RELEASE, lease_key)


def mark(lease_key: str) -> bytes:
    """The packed command that marks this process's own lease (to let it go: mark, `changed`, `release`)."""
    return _on_lease(_MARK, lease_key)


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def now() -> float:
    """The clock a lease is measured by here: one that counts while the host is suspended, where there is one (a
    monotonic clock that stops then would stretch a lease Redis has already let expire)."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


# Threads whose lease another process took from this one lately, and until when this process does not take it
# again: a thread two processes write in turn is read from Redis, not handed back and forth.
_contended: dict[str, float] = {}
_CONTENTION = 2.0  # seconds


def contended(thread_id: str) -> None:
    if len(_contended) >= 10_000:
        _contended.clear()
    _contended[thread_id] = now() + _CONTENTION


def leasing(thread_id: str) -> bool:
    """Whether this process takes `thread_id`'s lease on a read (not while it is contended)."""
    until = _contended.get(thread_id)
    if until is None:
        return True
    if now() < until:
        return False
    _contended.pop(thread_id, None)
    return True


# What this process wrote, by thread: a value kept from a read sent before a write was acknowledged is never
# answered after it (a read on another connection may run before the write, and reach its caller after). Values
# come from one counter, so no two writes leave a thread's version as it was.
_counter = itertools.count(1)
_changes: dict[str, int] = {}
_epoch = [0]
_lock = threading.Lock()


def version(thread_id: str) -> tuple[int, int]:
    return _epoch[0], _changes.get(thread_id, 0)


def changed(thread_id: str, before: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """A write to `thread_id` is acknowledged (or its values are no longer this process's to answer): values
    read before now are retired. `before`: the thread's version when the write was sent; if no other write came
    since, returns the new version, which the writer's own read after the write may be kept at."""
    with _lock:
        quiet = before is not None and version(thread_id) == before
        if len(_changes) >= 100_000:  # bounded; the new epoch retires every value kept so far
            _changes.clear()
            _epoch[0] = next(_counter)
        _changes[thread_id] = next(_counter)
        return version(thread_id) if quiet else None


def changed_all() -> None:
    with _lock:
        _epoch[0] = next(_counter)


def _forked() -> None:
    global _token, _lock
    _token = _new_token()  # a child holds none of its parent's leases
    _lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forked)


@dataclass(slots=True, frozen=True)
class Track:
    """A value kept from a read that follows a call: its name, its thread, the keys it reads (the lease last),
    the read for a tracking connection (packed commands and how many: taking the lease first, reading it
    last; none: the call only drops values), the read for any other connection (`plain`: no lease), and how the
    replies make the value (`parse`) and tell the lease's remaining milliseconds if this process holds it
    (`held`). The read is a MULTI of plain commands, never a script: Redis 7.0 tracks every key a script reads.
    `always`: the read is the call's purpose, sent even on a connection that keeps nothing (otherwise it is
    only sent to keep the value). `writes`: the call writes the keys first."""

    name: Hashable
    thread: str
    keys: tuple[str, ...]
    read: bytes
    read_n: int
    plain: bytes
    plain_n: int
    parse: Callable[[list[Any]], Any]
    held: Callable[[list[Any]], int]
    always: bool = False
    writes: bool = True


# A write's effect on the value kept of its keys, from the write's reply: the value after it, or None when the
# reply does not show it was the only change to them since the value was read (the value is then dropped).
Mirror = Callable[[Any, Any], Any]


def with_read(data: bytes, n: int, track: Track | None, tracking: bool) -> tuple[bytes, int, Track | None]:
    """A call's bytes and reply count with `track`'s read appended as the connection takes it, and the track
    still to apply to the replies (None: nothing to keep)."""
    if track is None:
        return data, n, None
    if tracking:
        if not track.read_n:
            return data, n, track
        return data + CACHING + track.read, n + 1 + track.read_n, track
    if track.always:
        return data + track.plain, n + track.plain_n, None
    return data, n, None


class KeptValues:
    """The values one tracking connection keeps, by name, with the keys each was read from, the time until
    which it may be answered (its lease's expiry, measured from when its read was sent) and the thread's
    version then (`version`)."""

    def __init__(self, limit: int = 2048) -> None:
        self._limit = limit  # values kept at most (the oldest go first)
        self._kept: OrderedDict[Hashable, tuple[tuple[str, ...], Any, float, str, tuple[int, int]]] = OrderedDict()
        self._by_key: dict[str, set[Hashable]] = {}
        self.leases: dict[str, str] = {}  # lease key -> thread, for the leases values were kept under

    def get(self, name: Hashable) -> Any:
        entry = self._kept.get(name)
        if entry is None:
            return None
        if now() >= entry[2] or version(entry[3]) != entry[4]:
            self._forget(name)
            return None
        return entry[1]

    def clear(self) -> None:
        self._kept.clear()
        self._by_key.clear()

    def restamp(self, name: Hashable, before: tuple[int, int], after: tuple[int, int]) -> None:
        """The value under `name` was read after a write this process made (`changed`): keep it at `after`."""
        entry = self._kept.get(name)
        if entry is not None and entry[4] == before:
            self._kept[name] = (*entry[:4], after)

    def tracked(self, track: Track, got: list[Any], sent: float, at: tuple[int, int],
                mirror: Mirror | None = None) -> list[Any]:
        """Keep a tracked call's value where its replies arrive (`sent`: when its read was sent, `at`: the
        thread's version then); the replies without CLIENT CACHING's. `mirror`: the call read nothing back, and
        the value it finds kept becomes what its write made of it, if the reply shows no other change came
        between (a connection's own write ends its tracking of the keys: the thread's lease, still tracked, and
        `changed` stand for it until the value expires)."""
        entry = self._kept.get(track.name) if mirror is not None else None
        mirrored = None
        if entry is not None and entry[4] == at and version(track.thread) == at and now() < entry[2]:
            mirrored = mirror(entry[1], got[0])  # type: ignore[misc]
        if track.writes:  # the call wrote these keys: what else was read from them goes
            for key in track.keys:
                for name in list(self._by_key.get(key, ())):
                    if mirrored is None or name != track.name:
                        self._forget(name)
        if mirrored is not None:  # replaced where it is kept (same keys), as the most recently used
            self._kept[track.name] = (entry[0], mirrored, entry[2], track.thread, at)  # type: ignore[index]
            self._kept.move_to_end(track.name)
        else:
            self._forget(track.name)
        if not track.read_n:
            return got
        at_reply = len(got) - track.read_n - 1
        replies = got[at_reply + 1:]
        if got[at_reply] in (b"OK", "OK"):
            try:
                value, left = track.parse(replies), track.held(replies)
            except Exception:  # an error reply: the caller raises it; nothing is kept
                value, left = None, 0
            if left > 0:  # held, kept or not: a writer's mark on it must get it released
                if len(self.leases) >= 4 * self._limit:  # bounded: a lease not named here just expires
                    self.leases.clear()
                self.leases[track.keys[-1]] = track.thread
            if value is not None and left > 0 and version(track.thread) == at:
                # Answered until a little before the lease expires, as measured from when the read was sent.
                self._keep(track.name, track.keys, value, sent + left / 1000 * 0.99 - 0.002, track.thread, at)
        return got[:at_reply] + replies

    def _keep(self, name: Hashable, keys: tuple[str, ...], value: Any, until: float, thread: str,
              at: tuple[int, int]) -> None:
        self._kept[name] = (keys, value, until, thread, at)
        for key in keys:
            self._by_key.setdefault(key, set()).add(name)
        if len(self._kept) > self._limit:
            self._forget(next(iter(self._kept)))

    def notice(self, push: list[Any]) -> list[tuple[str, str]]:
        """A push from the server: an invalidation drops the values read from those keys (all of them: a flush).
        Returns the leases it names that values were kept under, with their threads: each may carry a writer's
        mark, and this process no longer answers from what it keeps of their threads."""
        if not push or push[0] not in (b"invalidate", "invalidate"):
            return []
        keys = push[1] if len(push) > 1 else None
        if keys is None:
            self.clear()
            changed_all()
            leases, self.leases = list(self.leases.items()), {}
            return leases
        out = []
        for raw in keys:
            key = raw.decode() if isinstance(raw, bytes) else raw
            thread = self.leases.pop(key, None)
            if thread is not None:
                changed(thread)
                out.append((key, thread))
            for name in list(self._by_key.get(key, ())):
                self._forget(name)
        return out

    def _forget(self, name: Hashable) -> None:
        entry = self._kept.pop(name, None)
        if entry is None:
            return
        for key in entry[0]:
            names = self._by_key.get(key)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_key[key]
