"""The Redis key layout, in one place.

Every key of a session carries the hash tag of its *bucket* (`{<n>}`, n = crc32(session id) mod
`outbox_shards`), and so does the bucket's write-behind outbox stream and activity index. One Lua script can
therefore update the window and enqueue for persistence atomically, on a single server or a Redis Cluster.
Session ids are percent-encoded in keys: the mapping is injective (no two ids share a key) and no id can
inject `{`, `}` or `:` into the layout.

    {ns}:{n}:s:<quoted id>:w   LIST   the recent window, elements b'{"s":<seq>,...}' (one JSON object each)
    {ns}:{n}:s:<quoted id>:m   HASH   seq (last assigned), uid (owner), n (window length), summary fields;
                                      its presence means "window complete"
    {ns}:{n}:s:<quoted id>:i   ZSET   recent message ids -> seq, for idempotent retries
    {ns}:{n}:s:<quoted id>:o   SET    ids of the session's entries in the outbox (no TTL: lives as long as
                                      they do), so a refill reads them without scanning the bucket's stream
    {ns}:{n}:g:<hash of id>    STRING the session's generation: a new random token at each drop (with the
                                      session's TTL); a window loaded from PostgreSQL is cached only under the
                                      generation read before its query (a drop since may follow a write the
                                      load missed). Named by a hash: an erased session leaves no id behind
    {ns}:{n}:outbox            STREAM acknowledged writes not yet committed to PostgreSQL
    {ns}:{n}:active            ZSET   session id -> last access (ms), for stats without KEYS
    {ns}:{u<n>}:u:<quoted uid> SET    session ids of a user (cache index for invalidate_user)

A checkpoint thread (HybridSaver) lives in the bucket of its thread id, beside the sessions, and shares the
bucket's outbox stream:

    {ns}:{n}:t:<quoted id>:c          HASH  per checkpoint namespace: its latest checkpoint, and the channel
                                            blobs that checkpoint's values are built from
    {ns}:{n}:t:<quoted id>:w:<q ns>   HASH  the pending writes of that namespace's latest checkpoint
    {ns}:{n}:t:<quoted id>:o          SET   ids of the thread's entries in the outbox (as a session's)
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class SessionKeys:
    window: str
    meta: str
    ids: str
    outbox: str
    active: str
    entries: str  # names of the session's entries in the outbox
    gen: str  # the window's generation (see the layout above)

    @property
    def all(self) -> tuple[str, str, str, str, str, str, str]:
        return (self.window, self.meta, self.ids, self.outbox, self.active, self.entries, self.gen)


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    checkpoints: str
    outbox: str
    entries: str
    writes_prefix: str
    lease: str  # which process may answer the thread's reads from what it keeps (cache/tracking.py)

    def writes(self, checkpoint_ns: str) -> str:
        return self.writes_prefix + quote(checkpoint_ns, safe="")


class KeyLayout:
    def __init__(self, namespace: str, shards: int) -> None:
        self.namespace = namespace
        self.shards = shards
        self._cache: dict[str, SessionKeys] = {}
        self._threads: dict[str, ThreadKeys] = {}

    def bucket(self, ident: str) -> int:
        return zlib.crc32(ident.encode("utf-8")) % self.shards

    def session(self, session_id: str) -> SessionKeys:
        keys = self._cache.get(session_id)
        if keys is None:
            if len(self._cache) >= 100_000:  # bounded: a long-running process sees unbounded session ids
                self._cache.clear()
            n = self.bucket(session_id)
            base = f"{self.namespace}:{{{n}}}:s:{quote(session_id, safe='')}"
            gen = hashlib.blake2b(session_id.encode("utf-8"), digest_size=16).hexdigest()
            keys = self._cache[session_id] = SessionKeys(f"{base}:w", f"{base}:m", f"{base}:i", self.outbox(n),
                                                         self.active(n), f"{base}:o",
                                                         f"{self.namespace}:{{{n}}}:g:{gen}")
        return keys

    def thread(self, thread_id: str) -> ThreadKeys:
        keys = self._threads.get(thread_id)
        if keys is None:
            if len(self._threads) >= 100_000:  # bounded, as sessions' are
                self._threads.clear()
            n = self.bucket(thread_id)
            base = f"{self.namespace}:{{{n}}}:t:{quote(thread_id, safe='')}"
            keys = self._threads[thread_id] = ThreadKeys(f"{base}:c", self.outbox(n), f"{base}:o", f"{base}:w:",
                                                         f"{base}:l")
        return keys

    def outbox(self, bucket: int) -> str:
        return f"{self.namespace}:{{{bucket}}}:outbox"

    def active(self, bucket: int) -> str:
        return f"{self.namespace}:{{{bucket}}}:active"

    def user(self, user_id: str) -> str:
        return f"{self.namespace}:{{u{self.bucket(user_id)}}}:u:{quote(user_id, safe='')}"

    def all_outboxes(self) -> list[str]:
        return [self.outbox(n) for n in range(self.shards)]

    def all_active(self) -> list[str]:
        return [self.active(n) for n in range(self.shards)]
