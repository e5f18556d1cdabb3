"""Values kept by Redis key tracking (client-side caching), for the connections that carry them.

A connection with `CLIENT TRACKING ON OPTIN NOLOOP` reads a value's keys under `CLIENT CACHING YES`; from then on
Redis pushes a notice on that connection when any other connection changes one of them. Replies and notices
arrive in the order Redis ran the commands, so a value kept where its read's replies arrive is dropped by the
notice of any later change. A connection's own write sends no notice but ends its tracking of the key, so every
call that writes a value's keys drops the values read from them and reads its own value again after the write
(Redis may serve other connections between the two: the read shows what they did). Redis writes a notice in
the pass of its event loop that ran the change, but may write the writer's reply first: a read that first takes
in what waits on the socket sees every change whose pass is over, and may miss one acknowledged an instant
before it (longer if Redis is preempted between the two writes, or the network delays the notice). Hence
HybridConfig.redis_key_tracking is off by default.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import hiredis

_CACHING_YES: tuple[Any, ...] = ("CLIENT", "CACHING", "YES")
CACHING = hiredis.pack_command(_CACHING_YES)
_ON: tuple[Any, ...] = ("CLIENT", "TRACKING", "ON", "OPTIN", "NOLOOP")
TRACKING_ON = hiredis.pack_command(_ON)


@dataclass(slots=True, frozen=True)
class Track:
    """A value kept from a read that follows a call: its name, the keys it reads, the read (packed commands and
    how many; none: the call only drops values) and how its replies make the value (None: keep nothing). The
    read is a MULTI of plain commands, never a script: Redis 7.0 tracks every key a script declares. `always`:
    the read is the call's purpose, sent even on a connection that keeps nothing (otherwise it is only sent to
    keep the value). `writes`: the call writes the keys first."""

    name: Hashable
    keys: tuple[str, ...]
    read: bytes
    read_n: int
    parse: Callable[[list[Any]], Any]
    always: bool = False
    writes: bool = True


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
        return data + track.read, n + track.read_n, None
    return data, n, None


class KeptValues:
    """The values one tracking connection keeps, by name, and the keys each was read from."""

    def __init__(self, limit: int = 2048) -> None:
        self._limit = limit  # values kept at most (the oldest go first)
        self._kept: OrderedDict[Hashable, tuple[tuple[str, ...], Any]] = OrderedDict()
        self._by_key: dict[str, set[Hashable]] = {}

    def get(self, name: Hashable) -> Any:
        entry = self._kept.get(name)
        return None if entry is None else entry[1]

    def clear(self) -> None:
        self._kept.clear()
        self._by_key.clear()

    def tracked(self, track: Track, got: list[Any]) -> list[Any]:
        """Keep a tracked call's value where its replies arrive; the replies without CLIENT CACHING's."""
        self._forget(track.name)
        if track.writes:
            for key in track.keys:
                for name in list(self._by_key.get(key, ())):
                    self._forget(name)
        if not track.read_n:
            return got
        at = len(got) - track.read_n - 1
        if got[at] in (b"OK", "OK"):
            try:
                value = track.parse(got[at + 1:])
            except Exception:  # an error reply: the caller raises it; nothing is kept
                value = None
            if value is not None:
                self._kept[track.name] = (track.keys, value)
                for key in track.keys:
                    self._by_key.setdefault(key, set()).add(track.name)
                if len(self._kept) > self._limit:
                    self._forget(next(iter(self._kept)))
        return got[:at] + got[at + 1:]

    def notice(self, push: list[Any]) -> None:
        """A push from the server: an invalidation drops the values read from those keys (all of them: a flush)."""
        if not push or push[0] not in (b"invalidate", "invalidate"):
            return
        keys = push[1] if len(push) > 1 else None
        if keys is None:
            self.clear()
            return
        for key in keys:
            for name in list(self._by_key.get(key.decode() if isinstance(key, bytes) else key, ())):
                self._forget(name)

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
