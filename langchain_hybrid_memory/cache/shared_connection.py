"""`SharedConnection`: one Redis connection that every async hot-path call of an event loop shares.

The only code that reaches into redis-py's internals (it takes a pooled connection's transport over).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections import deque
from collections.abc import Hashable
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigurationError
from .tracking import TRACKING_ON, KeptValues, Mirror, Track, changed, contended, mark, now, release, version, with_read


class SharedConnection(asyncio.Protocol):
    """One connection that every hot-path call of an event loop shares (async API, single server or Sentinel).

    Calls made while others wait leave together in one write at the next turn of the loop, and Redis answers a
    connection's commands in order, so replies are matched to callers by position. Under concurrency this
    replaces a send and a receive per call (each a syscall on both sides, the largest cost of a call on a busy
    machine) with one per batch; a lone call is written at once and pays nothing extra. Each caller's commands
    are contiguous, so a MULTI block stays intact. The pool opens the connection (AUTH, SELECT, TLS, Sentinel
    discovery); the pipe then takes its transport over, so replies are parsed as they arrive, with no task.
    Any error (connection lost, no reply for a whole timeout while calls wait, a protocol error) fails every
    waiting call with a connection error and retires the pipe; the cache opens a new one on the next call.

    Values kept by key tracking under the thread's lease (RESP3, `enable_tracking`; see tracking.py): `kept`
    answers from a value while nothing unread waits on the socket (the loop reads it only between callbacks);
    a notice on a lease another process marked gets it released.
    """

    def __init__(self, conn: Any, timeout: float) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.error: BaseException | None = None
        self._timeout = timeout
        self._parser = hiredis.Reader()
        # (future, replies expected, replies so far, track, when its read was sent, its thread's version then,
        # mirror)
        self._waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any], Track | None, float,
                                   tuple[int, int], Mirror | None]] = deque()
        self._out: list[bytes] = []
        self._flush_due = False
        self._replies = 0  # replies received so far: the watchdog's measure of progress
        self._watch: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport = conn._writer.transport
        self._transport.set_protocol(self)
        self.tracking = False
        self.values = KeptValues()
        sock = self._transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1

    async def enable_tracking(self) -> None:
        """Turn key tracking on (RESP3 connections only; a server that refuses it just leaves it off)."""
        if str(getattr(self.conn, "protocol", 2)) != "3" or self._fd < 0:
            return
        reply = (await self.call(TRACKING_ON, 1))[0]
        self.tracking = reply == b"OK" or reply == "OK"

    @staticmethod
    def check(conn: Any) -> None:
        """Raise unless the connection's transport can be taken over: an open asyncio stream, nothing unread."""
        reader, writer = getattr(conn, "_reader", None), getattr(conn, "_writer", None)
        if not (isinstance(writer, asyncio.StreamWriter) and isinstance(reader, asyncio.StreamReader)):
            raise ConfigurationError("this redis-py version's asyncio connections are not supported")
        if getattr(reader, "_buffer", b"") or writer.transport.is_closing():
            raise RedisConnectionError("a new Redis connection was not clean")

    def call(self, data: bytes, n: int, track: Track | None = None,
             mirror: Mirror | None = None) -> asyncio.Future[list[Any]]:
        """Send `data` (n commands); the future gets their n replies (error replies as values), then those of
        `track`'s read if it was sent. `mirror`: see KeptValues.tracked."""
        if self.error is not None:
            raise RedisConnectionError("Redis connection lost")
        data, n, track = with_read(data, n, track, self.tracking)
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        if self._waiting:
            self._out.append(data)
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush)
        else:  # nothing in flight: no batch to join, write now
            self._transport.write(data)
        self._waiting.append((fut, n, [], track, now(), version(track.thread), mirror)
                             if track is not None else (fut, n, [], None, 0.0, (0, 0), None))
        if self._watch is None:
            self._watch = self._loop.call_later(self._timeout, self._check, self._replies)
        return fut

    def _flush(self) -> None:
        self._flush_due = False
        if self._out and self.error is None:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _check(self, replies_then: int) -> None:
        """No reply at all for a whole timeout while calls wait: the server or the network is gone."""
        self._watch = None
        if not self._waiting:
            return
        if self._replies == replies_then:
            self.fail(RedisTimeoutError("Timeout reading from Redis"))
            return
        self._watch = self._loop.call_later(self._timeout, self._check, self._replies)

    def data_received(self, data: bytes) -> None:
        parser, waiting = self._parser, self._waiting
        try:
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.PushNotification):
                    for lease, thread in self.values.notice(reply):
                        self._release(lease, thread)
                    continue
                self._replies += 1
                if not waiting:
                    raise RedisConnectionError("a reply nobody asked for")
                fut, n, got, track, sent, at, mirror = waiting[0]
                got.append(reply)
                if len(got) == n:
                    waiting.popleft()
                    if track is not None:
                        got = self.values.tracked(track, got, sent, at, mirror)
                    if not fut.done():  # a cancelled caller's replies are read and dropped
                        fut.set_result(got)
        except (hiredis.ProtocolError, RedisError) as exc:
            self.fail(exc if isinstance(exc, RedisError) else RedisConnectionError("Redis protocol error"))

    def _release(self, lease: str, thread: str) -> None:
        """Delete the mark a writer left on this process's lease (the values of its thread are dropped already);
        if there was one, the thread is contended: not leased again for a while. A lost connection leaves the
        lease to expire."""
        if self.error is not None:
            return

        def done(fut: asyncio.Future[list[Any]]) -> None:
            if not fut.cancelled() and fut.exception() is None and fut.result()[0] == 1:
                contended(thread)

        self.call(release(lease), 1).add_done_callback(done)

    def kept(self, name: Hashable) -> Any:
        """The value kept under `name`, if the server has not said its keys changed (None: read them)."""
        value = self.values.get(name)
        if value is None or self.error is not None or self._parser.has_data():
            return None
        # A notice may wait unread: the loop reads the socket only between callbacks. Zero timeout: never blocks.
        try:
            if select.select([self._fd], [], [], 0)[0]:
                return None
        except (OSError, ValueError):  # closed meanwhile
            return None
        return value

    def eof_received(self) -> bool:
        self.fail(RedisConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Redis connection lost"))

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._out.clear()
        self.values.clear()
        waiting, self._waiting = self._waiting, deque()
        for fut, *_ in waiting:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)))
        self._transport.abort()  # a later reply must never reach anyone

    async def close(self, pool: Any) -> None:
        leases = list(self.values.leases.items())
        if leases and self.error is None:  # let them go now: another process's write need not wait them out
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                # Marked first (from then on no read keeps a value under them), then no connection of this
                # process answers from what it kept of their threads, then deleted.
                await asyncio.wait_for(self.call(b"".join(mark(k) for k, _ in leases), len(leases)), self._timeout)
                for _, thread in leases:
                    changed(thread)
                await asyncio.wait_for(self.call(b"".join(release(k) for k, _ in leases), len(leases)),
                                       self._timeout)
        self.fail(RedisConnectionError("Redis connection closed"))
        await self.conn.disconnect(nowait=True)
        await pool.release(self.conn)

