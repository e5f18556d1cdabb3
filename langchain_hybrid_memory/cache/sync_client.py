"""`SyncHotPath`: the hot calls for the sync API, on a blocking client and connections kept between calls."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..config import HybridConfig
from ..keys import KeyLayout
from .connections import make_client
from .protocol import (
    RETRY,
    AppendResult,
    CachedContext,
    CacheDown,
    Commands,
    LeaseWait,
    Miss,
    TouchLog,
    exec_reply,
    multi,
    pack,
)
from .scripts import APPEND, CHECKPOINT_LATEST, CHECKPOINT_PUT, CHECKPOINT_WRITES, READ
from .tracking import changed


class KeptConnections:
    """Connections the sync hot path keeps between two calls instead of handing them back to the pool.

    A pool round (lock, a readiness check that costs a syscall, release) takes about 30 µs of CPU per call;
    a kept connection is used as it is, and any error drops it. At most `cap` are kept (so the pool always
    has room for the other calls); none survive a fork.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._conns: list[Any] = []
        self._pid = os.getpid()

    def take(self) -> Any | None:
        if self._pid != os.getpid():  # a forked child must not talk on its parent's sockets
            self._conns, self._pid = [], os.getpid()
        try:
            return self._conns.pop()
        except IndexError:  # empty (another thread may have taken the last one)
            return None

    def keep(self, conn: Any) -> bool:
        if len(self._conns) >= self.cap:
            return False
        self._conns.append(conn)
        return True

    def drain(self) -> list[Any]:
        conns, self._conns = self._conns, []
        return conns


def kept_cap(config: HybridConfig) -> int:
    return config.redis_max_connections // 8  # the blocking pool keeps the rest for the threads' other calls



class SyncHotPath(Commands):
    """The hot calls (read a window, append; a checkpoint thread's latest, put, writes) on a blocking client,
    for the sync API.

    A sync caller then pays one Redis round trip, not a hop to the engine thread and back. On a single server
    or Sentinel the commands are packed and sent on one of the client's connections, kept between calls
    (`KeptConnections`): redis-py's command and pipeline objects cost more Python than the round trip itself, for the
    same bytes on the wire.
    """

    def __init__(self, config: HybridConfig, keys: KeyLayout, cluster: bool = False,
                 touches: TouchLog | None = None) -> None:
        super().__init__(config, keys, touches)
        self.cluster = cluster
        self.client: Any = make_client(config, cluster, sync=True)
        self._idle = KeptConnections(kept_cap(config))
        self._append = self.client.register_script(APPEND)  # Cluster: the client routes and loads scripts
        self._read = self.client.register_script(READ)
        self._checkpoint_put = self.client.register_script(CHECKPOINT_PUT)
        self._checkpoint_writes = self.client.register_script(CHECKPOINT_WRITES)
        self._checkpoint_latest = self.client.register_script(CHECKPOINT_LATEST)

    def close(self) -> None:
        self._drop_idle()
        self.client.close()

    def _drop_idle(self) -> None:
        for conn in self._idle.drain():
            conn.disconnect()
            self.client.connection_pool.release(conn)

    def _exchange(self, cmds: list[tuple[Any, ...]], script: str | None = None) -> list[Any]:
        """Send `cmds` in one write, read one reply each. `script`: the source of an EVALSHA among them, loaded
        and retried once if the server does not know it (a restart, SCRIPT FLUSH)."""
        for attempt in (0, 1, 2):
            try:
                return self._exchange_once(cmds)
            except NoScriptError:
                if script is None or attempt == 2:
                    raise
                self.client.script_load(script)
            except RETRY:
                if attempt:
                    raise
                self._drop_idle()  # kept connections may all predate a Redis restart: retry on a fresh one
        raise AssertionError("unreachable")

    def _exchange_once(self, cmds: list[tuple[Any, ...]]) -> list[Any]:
        pool = self.client.connection_pool
        conn = self._idle.take()
        if conn is None:
            conn = pool.get_connection()
        try:
            conn.send_packed_command([pack(cmds)])
            out = [conn.read_response() for _ in cmds]
        except BaseException:
            conn.disconnect()  # a half-read reply must not reach the next user of this connection
            pool.release(conn)
            raise
        if not self._idle.keep(conn):
            pool.release(conn)
        return out

    def _eval(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of a registered script (the Cluster client routes it and loads it itself)."""
        if self.cluster:
            return script(keys=keys, args=args)
        return self._exchange([("EVALSHA", script.sha, len(keys), *keys, *args)], script.script)[0]

    def _change(self, thread_id: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        """RedisCache._change, blocking."""
        wait = LeaseWait()
        while True:
            try:
                out = self._eval(script, keys, args)
            except BaseException:  # failed, maybe after Redis ran it: no loop answers from a value read before
                changed(thread_id)
                raise
            left = self.leased(out)
            if left is None:
                changed(thread_id)
                return out
            time.sleep(wait.next(left))

    @staticmethod
    @contextlib.contextmanager
    def _down() -> Iterator[None]:
        """A lost connection or server as CacheDown (the caller fails over); error replies stay what they are."""
        try:
            yield
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise CacheDown(type(exc).__name__) from None

    def _window(self, session_id: str, limit: int) -> list[Any]:
        """One read's reply: [meta fields, length, elements, ...], errors inside it returned as values."""
        with self._down():
            if self.cluster:
                keys, args = self.read_script_args(session_id, limit)
                return list(self._read(keys=keys, args=args))
            cmds = self.read_cmds(session_id, limit)
            return exec_reply(self._exchange(multi(cmds)), len(cmds))

    def read(self, session_id: str, limit: int) -> tuple[str, list[bytes]] | Miss:
        return self.read_result(self._window(session_id, limit))

    def context(self, session_id: str) -> CachedContext | Miss:
        return self.context_result(self._window(session_id, 0))

    def append(self, session_id: str, user_id: str | None, ids: Sequence[str], payloads: Sequence[str], *,
               persist: bool) -> AppendResult | Miss:
        keys, args = self.append_args(session_id, user_id, ids, payloads, persist, None)
        with self._down():
            out = self._eval(self._append, keys, args)
        return self.append_result(out, len(ids))

    # -- checkpoint threads (HybridSaver): as RedisCache's, without keeping values (a blocking connection
    # reads notices only during its own calls: it could not release a lease in time) ----------------------
    def checkpoint_put(self, thread_id: str, ns: str, checkpoint_id: str, hot: bytes, record: bytes,
                       blobs: Sequence[tuple[str, bytes, bool]], drop: Sequence[str]) -> str:
        args = self.checkpoint_put_args(thread_id, ns, checkpoint_id, hot, record, blobs, drop)
        with self._down():
            return self.entry_id(self._change(thread_id, self._checkpoint_put, self.thread_keys(thread_id, ns), args))

    def checkpoint_writes(self, thread_id: str, ns: str, checkpoint_id: str, record: bytes,
                          writes: Sequence[tuple[str, bytes, bool]]) -> str:
        args = self.checkpoint_writes_args(thread_id, ns, checkpoint_id, record, writes)
        with self._down():
            return self.entry_id(self._change(thread_id, self._checkpoint_writes, self.thread_keys(thread_id, ns),
                                              args))

    def checkpoint_latest(self, thread_id: str, ns: str, touch: bool
                          ) -> tuple[bytes | None, bytes | None, dict[bytes, bytes]]:
        with self._down():
            if self.cluster:
                return self.checkpoint_latest_result(self._eval(
                    self._checkpoint_latest, self.thread_keys(thread_id, ns), self.checkpoint_latest_args(ns, touch)))
            cmds = self.checkpoint_latest_cmds(thread_id, ns, touch)
            return self.checkpoint_latest_result(exec_reply(self._exchange(multi(cmds)), len(cmds)))

    def checkpoint_blobs(self, thread_id: str, fields: Sequence[str]) -> list[bytes | None]:
        cmd = ("HMGET", self.keys.thread(thread_id).checkpoints, *fields)
        with self._down():
            return list(self.client.execute_command(*cmd) if self.cluster else self._exchange([cmd])[0])
