"""The Redis side: the per-session window, its Lua scripts, and the write-behind outbox streams.

Each public method is one round trip. Connection failures surface as `CacheDown`, which the facade turns into
a fallback to PostgreSQL; the caller never sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import hiredis
import redis as syncredis
import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from .config import HybridConfig
from .errors import ConfigurationError
from .keys import KeyLayout
from .messages import CorruptEntry

# Every script takes KEYS = window, meta, ids, outbox, active, pending (see keys.py) and starts its ARGV with
# 1 session_id, 2 ttl_ms, 3 capacity (elements kept), 4 summary threshold (0 = auto-summarize off),
# 5 touch (1: slide the TTLs now; the client asks at most every ttl/10 per session, see `TouchLog`).
# The meta hash's presence means "this window is complete". Its fields: seq (last assigned), uid (owner),
# n (the window's length), partial, sum_upto / sum_text (the latest summary), unsum (messages after it).
#
# Each redis.call costs about 3 µs inside a script, and a reply passing through Lua about 1 µs per element, so
# the scripts batch (one RPUSH, one ZADD, one HSET) and reads use no script at all (MULTI, see `_Calls`).
#
# `fill(b)` loads a window from the store; ARGV[6] of a script that fills is idempotency_keep (ids remembered).
# Its ARGV block starts at index b: base_seq, owner, partial (1/0),
# sum_upto, sum_text, unsum, floor (a tombstone's seq), n, then n pairs (message id, element). It merges in
# the session's entries still in the bucket's outbox (acknowledged by some process, maybe not yet in
# PostgreSQL), so a reload never loses a recent write; the pending set names them, so this costs a lookup per
# entry of this session, not a scan of the bucket's whole backlog.
#
# The pending set may name an entry already deleted (an acknowledgement deletes the entry first, then its
# name): `outbox_entries` drops such names as it finds them.
_COMMON = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function touch(ttl, now)
  -- PEXPIRE on a missing key is a no-op: no EXISTS guard needed
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('ZADD', KEYS[5], math.floor(now / 1000), ARGV[1])
end
local function seq_of(el)
  return tonumber(string.match(el, '^{"s":(%d+),'))
end
-- A pending set of the wrong type (written by something else) is replaced, here and in APPEND, as any damaged
-- key is dropped; the entries it named are still committed by their writer or the janitor.
local function outbox_entries()
  local out = {}
  local t = redis.call('TYPE', KEYS[6])['ok']
  if t ~= 'set' then
    if t ~= 'none' then redis.call('DEL', KEYS[6]) end
    return out
  end
  for _, xid in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    local e = redis.call('XRANGE', KEYS[4], xid, xid)[1]
    if e then out[#out + 1] = e else redis.call('SREM', KEYS[6], xid) end
  end
  return out
end
local function fill(b)
  local n = tonumber(ARGV[b + 7])
  local byseq, order = {}, {}
  local base = tonumber(ARGV[b])
  local sum_upto = tonumber(ARGV[b + 3])
  local unsum = tonumber(ARGV[b + 5])
  local floor = tonumber(ARGV[b + 6])
  local ids = {}
  for k = 0, n - 1 do
    local id, el = ARGV[b + 8 + 2 * k], ARGV[b + 9 + 2 * k]
    local s = seq_of(el)
    byseq[s] = {id, el}
    ids[id] = true
    order[#order + 1] = s
  end
  for _, e in ipairs(outbox_entries()) do
    local f = e[2]
    if f[2] == ARGV[1] then
      for j = 5, #f, 2 do
        local s = seq_of(f[j + 1])
        -- nil: an undecodable (poison) entry, skipped here and set aside by the janitor; at or below the
        -- floor: deleted (clear_session) while still waiting; a known id: the same message under another seq
        -- (a write whose reply was lost, then retried through PostgreSQL)
        if s and s > floor and not byseq[s] and not ids[f[j]] then
          byseq[s] = {f[j], f[j + 1]}
          order[#order + 1] = s
          if s > sum_upto then unsum = unsum + 1 end
        end
      end
    end
  end
  table.sort(order)
  redis.call('DEL', KEYS[1], KEYS[3])
  local first = math.max(1, #order - tonumber(ARGV[3]) + 1)
  -- only the newest `keep` ids, as APPEND keeps them: a window longer than that must not turn the id set into
  -- a skiplist (see APPEND)
  local idfrom = math.max(first, #order - tonumber(ARGV[6]) + 1)
  local push, zadd = {}, {}
  for k = first, #order do
    local s = order[k]
    push[#push + 1] = byseq[s][2]
    if k >= idfrom then
      zadd[#zadd + 1] = s
      zadd[#zadd + 1] = byseq[s][1]
    end
  end
  if #push > 0 then
    redis.call('RPUSH', KEYS[1], unpack(push))
    redis.call('ZADD', KEYS[3], unpack(zadd))
  end
  if #order > 0 and order[#order] > base then base = order[#order] end
  redis.call('HSET', KEYS[2], 'seq', string.format('%.0f', base), 'unsum', unsum,
             'sum_upto', ARGV[b + 3], 'sum_text', ARGV[b + 4], 'n', #push)
  if ARGV[b + 1] ~= '' then redis.call('HSET', KEYS[2], 'uid', ARGV[b + 1]) end
  if ARGV[b + 2] == '1' then redis.call('HSET', KEYS[2], 'partial', '1') else redis.call('HDEL', KEYS[2], 'partial') end
  return b + 8 + 2 * n, #order - n  -- the next ARGV index, and how many outbox entries were merged in
end
"""

# ARGV: 6 idempotency_keep, 7 persist (1/0), 8 user_id ('' = none), 9 has_init (1/0), 10 ceiling (elements
#       kept at most while summarization lags), [fill block if has_init], then n, then n pairs (id, payload).
# Returns {-1} when the window is not cached and no init data was given, {-2, owner} on an ownership
# conflict, else {1 or 2 (2: the user was bound now), outbox entry id or '', summary due (1/0),
# seq_1..seq_n, new_1..new_n}.
APPEND = _COMMON + """
local function name_entry(xid)
  local r = redis.pcall('SADD', KEYS[6], xid)
  if type(r) == 'table' and r.err then
    redis.call('DEL', KEYS[6])
    redis.call('SADD', KEYS[6], xid)
  end
end
local i = 11
local fresh = false  -- keys (re)created here get their TTL now, whatever ARGV[5] says
local meta = redis.call('HMGET', KEYS[2], 'seq', 'uid', 'n', 'unsum')
-- Under memory pressure Redis may evict one key of a session and keep the others. The meta hash records the
-- window's length: a session whose id set (here) or window (checked by RPUSH's reply below) no longer
-- matches it is dropped and reloaded, never extended.
local zc = false
if meta[1] then
  zc = redis.call('ZCARD', KEYS[3])
  if zc == 0 and tonumber(meta[3] or -1) ~= 0 then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    zc = false
  end
end
if not zc then
  if ARGV[9] ~= '1' then return {-1} end
  i = fill(11)
  meta = redis.call('HMGET', KEYS[2], 'seq', 'uid', 'n', 'unsum')
  zc = redis.call('ZCARD', KEYS[3])
  fresh = true
elseif ARGV[9] == '1' then
  i = 11 + 8 + 2 * tonumber(ARGV[18])
end
local status = 1
local owner = meta[2]
if ARGV[8] ~= '' then
  if owner and owner ~= ARGV[8] then return {-2, owner} end
  if not owner then
    redis.call('HSET', KEYS[2], 'uid', ARGV[8])
    status = 2
  end
end
local n = tonumber(ARGV[i])
local ids = {}
for k = 1, n do ids[k] = ARGV[i - 1 + 2 * k] end
-- prepare() refuses an id twice in one call, so one ZMSCORE up front equals a lookup per message
local olds = redis.call('ZMSCORE', KEYS[3], unpack(ids))
local last = tonumber(meta[1])
local now = now_us()
local seqs, news, push, zadd, fields = {}, {}, {}, {}, {}
for k = 1, n do
  if olds[k] then
    seqs[k] = olds[k]
    news[k] = '0'
  else
    -- A hybrid logical clock: strictly increasing per session, close to server time, so a session that
    -- lost its cached counter (restart, eviction) never reuses a number.
    local seq = math.max(last + 1, now)
    last = seq
    local s = string.format('%.0f', seq)
    local el = '{"s":' .. s .. ',' .. string.sub(ARGV[i + 2 * k], 2)
    push[#push + 1] = el
    zadd[#zadd + 1] = s
    zadd[#zadd + 1] = ids[k]
    fields[#fields + 1] = ids[k]
    fields[#fields + 1] = el
    seqs[k] = s
    news[k] = '1'
  end
end
local added = #push
local threshold = tonumber(ARGV[4])
local unsum = 0
if added > 0 then
  local cap = tonumber(ARGV[3])
  if threshold > 0 then
    -- Keep every message the summary does not cover yet (up to the ceiling): while the summarizer lags, the
    -- context view (summary + all after it) is still served from here instead of from PostgreSQL.
    cap = math.max(cap, math.min(tonumber(meta[4] or 0) + added, tonumber(ARGV[10])))
  end
  local len = redis.call('RPUSH', KEYS[1], unpack(push))
  if len ~= tonumber(meta[3] or -1) + added then
    redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
    return {-1}
  end
  if len == added then fresh = true end
  if len > cap then
    redis.call('LTRIM', KEYS[1], -cap, -1)
    len = cap
  end
  -- Trim before adding, so the set never holds more than keep + 20 ids: past 128 entries Redis converts a
  -- sorted set to a skiplist (about 150 B per id instead of 50) and never converts it back.
  local keep = tonumber(ARGV[6])
  if zc + added > keep + 20 then
    if added >= keep then
      redis.call('DEL', KEYS[3])  -- only this call's newest `keep` ids are remembered
      zadd = {unpack(zadd, 2 * (added - keep) + 1)}
      zc = 0
    else
      redis.call('ZREMRANGEBYRANK', KEYS[3], 0, zc + added - keep - 1)
    end
  end
  redis.call('ZADD', KEYS[3], unpack(zadd))
  if zc == 0 then fresh = true end  -- (re)created here: it gets its TTL below
  redis.call('HSET', KEYS[2], 'seq', string.format('%.0f', last), 'n', len)
end
if threshold > 0 then unsum = redis.call('HINCRBY', KEYS[2], 'unsum', added) end
if fresh or ARGV[5] == '1' then touch(tonumber(ARGV[2]), now) end
local xid = ''
if ARGV[7] == '1' and added > 0 then
  xid = redis.call('XADD', KEYS[4], '*', 's', ARGV[1], 'u', ARGV[8], unpack(fields))
  name_entry(xid)
end
local due = 0
if threshold > 0 and unsum >= threshold then due = 1 end
local out = {status, xid, due}
for k = 1, n do out[#out + 1] = seqs[k] end
for k = 1, n do out[#out + 1] = news[k] end
return out
"""

# ARGV: 6 idempotency_keep, 7 expected seq ('' = load only if not cached; else replace a partial window whose
# last seq is still this one), then the fill block. Returns {1 if loaded or 0 if somebody wrote meanwhile
# (their data is newer and is kept), owner, then the cached elements, or none when they are exactly the fill's
# (loaded, nothing merged from the outbox): the caller has them, and a window back through Lua is a third of
# the script's cost}.
FILL = _COMMON + """
local loaded, merged = 1, 0
if redis.call('EXISTS', KEYS[2]) == 1 then
  local partial = redis.call('HGET', KEYS[2], 'partial') == '1'
  if ARGV[7] == '' or not partial or redis.call('HGET', KEYS[2], 'seq') ~= ARGV[7] then loaded = 0 end
end
if loaded == 1 then merged = select(2, fill(8)) end
touch(tonumber(ARGV[2]), now_us())
local out = {}
if loaded == 0 or merged > 0 then out = redis.call('LRANGE', KEYS[1], 0, -1) end
table.insert(out, 1, redis.call('HGET', KEYS[2], 'uid') or '')
table.insert(out, 1, loaded == 1 and merged == 0 and 2 or loaded)
return out
"""

# ARGV: 6 upto_seq, 7 text, 8 messages covered. Publishes a new summary to a cached window (if any), unless
# a newer one is there already. Returns 1 if stored.
SET_SUMMARY = _COMMON + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'sum_upto') or '0') >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[2], 'sum_upto', ARGV[6], 'sum_text', ARGV[7])
local left = redis.call('HINCRBY', KEYS[2], 'unsum', -tonumber(ARGV[8]))
if left < 0 then redis.call('HSET', KEYS[2], 'unsum', 0) end
return 1
"""

# The session's entries in its bucket's outbox, {xid, fields, ...} (KEYS and ARGV[1] as every script's).
OUTBOX_OF = _COMMON + """
local out = {}
for _, e in ipairs(outbox_entries()) do
  if e[2][2] == ARGV[1] then
    out[#out + 1] = e[1]
    out[#out + 1] = e[2]
  end
end
return out
"""

# Reads run no script: a MULTI of HMGET meta, LLEN and LRANGE (plus the TTL slide when due) costs Redis about
# a tenth of a script that returns the same window. A Redis Cluster client has no raw connection to send that
# MULTI on (and its transaction pipeline retries through a failover for seconds), so there the same reply
# comes from this script. ARGV: 6 LRANGE start, 7... the meta fields.
READ = _COMMON + """
local meta = redis.call('HMGET', KEYS[2], unpack(ARGV, 7))
local out = {meta, redis.call('LLEN', KEYS[1]), redis.call('LRANGE', KEYS[1], ARGV[6], -1)}
if ARGV[5] == '1' then touch(tonumber(ARGV[2]), now_us()) end
return out
"""
_READ_FIELDS = ("seq", "partial", "uid", "n")
_CONTEXT_FIELDS = (*_READ_FIELDS, "sum_upto", "sum_text", "unsum")


class CacheDown(Exception):
    """Redis could not be reached (or timed out)."""


class OwnershipConflict(Exception):
    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


@dataclass(slots=True)
class Fill:
    """A window as loaded from PostgreSQL, ready to cache."""

    base_seq: int
    owner: str | None
    pairs: list[tuple[str, bytes]]  # (message id, element, see messages.element) oldest first
    partial: bool = False  # PostgreSQL was unreachable: older history is missing from this window
    sum_upto: int = 0  # the latest summary covers messages up to this seq
    sum_text: str = ""
    unsum: int = 0  # messages stored after the summary
    floor: int = 0  # a tombstone: outbox entries at or below it were deleted


@dataclass(slots=True)
class CachedContext:
    owner: str
    sum_upto: int
    sum_text: str
    unsum: int  # how many messages follow the summary: the cache covers them all only if it holds that many
    elements: list[bytes]


@dataclass(slots=True)
class AppendResult:
    bound: bool  # the session was bound to the user by this call
    xid: str
    due: bool  # enough messages follow the summary for the next one
    seqs: list[int]
    new: list[bool]


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, bool]:
    """`redis+sentinel://[:password@]host:port[,host:port...]/service[/db]` -> (sentinels, service, db,
    password, tls)."""
    tls = url.startswith("rediss+")
    rest = url.split("://", 1)[1].split("?", 1)[0]
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ConfigurationError("a sentinel URL needs the service name: redis+sentinel://host:port/mymaster")
    sentinels = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        sentinels.append((host or hp, int(port) if port and host else 26379))
    return sentinels, unquote(parts[0]), int(parts[1]) if len(parts) > 1 else 0, password, tls


def _make_client(config: HybridConfig, cluster: bool, *, sync: bool) -> Any:
    """One place that decides how to talk to Redis: a single server, a Cluster, or a Sentinel-managed primary."""
    url, kwargs = _pool_kwargs(config, SyncRetry(NoBackoff(), 1) if sync else Retry(NoBackoff(), 1))
    if url.startswith(SENTINEL_SCHEMES):
        sentinels, service, db, password, tls = parse_sentinel_url(url)
        conn = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout", "retry")}
        conn.update(db=db, password=kwargs.get("password", password), ssl=tls, **_DRIVER)
        probe = {"socket_timeout": config.redis_timeout, "socket_connect_timeout": config.redis_timeout, **_DRIVER}
        sentinel_cls = SyncSentinel if sync else AsyncSentinel
        # The returned client asks the sentinels for the current primary on (re)connect: failovers are
        # followed without a restart.
        return sentinel_cls(sentinels, sentinel_kwargs=probe, **conn).master_for(service)
    if cluster:
        # Every script touches one slot (keys.py), so EVALSHA routes to the slot's primary; pipelines are split
        # per node by the client.
        cls: Any = SyncRedisCluster if sync else AsyncRedisCluster
        return cls.from_url(url, **_cluster_kwargs(kwargs))
    if sync:
        return syncredis.Redis(connection_pool=syncredis.BlockingConnectionPool.from_url(url, **kwargs))
    # A plain pool: RedisCache bounds concurrency with a semaphore, which costs far less per call than the
    # blocking pool's condition variable and timeout.
    kwargs.pop("timeout", None)
    return aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(url, **kwargs))


def _cluster_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pool options that RedisCluster accepts (it keeps one pool per node and has its own retry logic)."""
    out = {k: v for k, v in kwargs.items()
           if k in ("socket_timeout", "socket_connect_timeout", "password", "driver_info", "lib_version")}
    out["max_connections"] = kwargs["max_connections"]
    return out


async def detect_cluster(config: HybridConfig) -> bool:
    """Whether `redis_url` points at a Redis Cluster node (INFO cluster), unless the config says."""
    if config.redis_cluster is not None:
        return config.redis_cluster
    if config.redis_dsn().startswith(SENTINEL_SCHEMES):
        return False
    url, kwargs = _pool_kwargs(config, Retry(NoBackoff(), 0))
    kwargs.pop("timeout", None)
    kwargs.pop("max_connections", None)
    client = aioredis.Redis.from_url(url, **kwargs)
    try:
        info = await client.info("cluster")
        return bool(int(info.get("cluster_enabled", 0)))
    except (RedisError, OSError):
        return False  # unreachable now: the engine fails over to PostgreSQL and retries later
    finally:
        await client.aclose()


def _driver_kwargs() -> dict[str, Any]:
    # Given explicitly: without it, redis-py reads its package metadata (file I/O) in every Connection's
    # constructor, which would block the event loop of whoever opens a connection.
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7.1
        return {"lib_version": syncredis.__version__}
    return {"driver_info": DriverInfo(lib_version=syncredis.__version__)}


_DRIVER = _driver_kwargs()


def _pool_kwargs(config: HybridConfig, retry: Any) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {
        **_DRIVER,
        "socket_timeout": config.redis_timeout,
        "socket_connect_timeout": min(config.connect_timeout, max(config.redis_timeout, 0.1) * 4),
        "max_connections": config.redis_max_connections,
        "timeout": config.redis_timeout * 4,  # waiting for a free pooled connection
        "retry": retry,  # one quick retry, so failover is detected within the timeout
    }
    if config.redis_password is not None:
        kwargs["password"] = config.redis_password.get_secret_value()
    url = config.redis_dsn()
    path = url.split("://", 1)[1].split("?", 1)[0]
    if ("/" not in path or path.endswith("/")) and not url.startswith(SENTINEL_SCHEMES):
        kwargs["db"] = config.redis_db
    return url, kwargs


class TouchLog:
    """When this process last slid each session's TTLs (a bounded map, shared by all clients of one memory).

    A TTL slid at t keeps the keys until t + ttl, so sliding at most every ttl/10 keeps every key alive for at
    least 0.9 x ttl after its last use, and spares most calls three PEXPIREs and a ZADD. Keys are only ever
    created by a fill or an append, and both set their TTL, so a skipped slide never leaves a key without one.
    """

    def __init__(self, ttl_s: float) -> None:
        self._every = ttl_s / 10
        self._last: dict[str, float] = {}

    def due(self, session_id: str) -> bool:
        now = time.monotonic()
        last = self._last.get(session_id)
        if last is not None and now - last < self._every:
            return False
        if len(self._last) >= 100_000:  # bounded: a long-running process sees unbounded session ids
            self._last.clear()
        self._last[session_id] = now
        return True


class _Calls:
    """Arguments and result parsing of the hot-path calls, shared by the async and sync clients."""

    def __init__(self, config: HybridConfig, keys: KeyLayout, touches: TouchLog | None) -> None:
        self.config = config
        self.keys = keys
        self._ttl_ms = int(config.session_ttl * 1000)
        self._capacity = config.cache_capacity
        self._ceiling = config.cache_ceiling
        self._threshold = config.summary_threshold
        self.touches = touches or TouchLog(config.session_ttl)

    def head(self, session_id: str, touch: bool | None = None, fill: Fill | None = None
             ) -> tuple[list[str], list[Any]]:
        """Every script's KEYS and first ARGV. A `fill` may hold more than the capacity (summaries lagging):
        the capacity passed is then its size, so the script keeps all of it."""
        k = self.keys.session(session_id)
        if touch is None:
            touch = self.touches.due(session_id)
        cap = self._capacity if fill is None else max(self._capacity, len(fill.pairs))
        return list(k.all), [session_id, self._ttl_ms, cap, self._threshold, 1 if touch else 0]

    def read_cmds(self, session_id: str, limit: int) -> list[tuple[Any, ...]]:
        """The commands of one read, run as a MULTI: meta fields, length, elements (limit 0: all, with the
        summary fields), then the TTL slide when due."""
        k = self.keys.session(session_id)
        cmds: list[tuple[Any, ...]] = [("HMGET", k.meta, *(_CONTEXT_FIELDS if limit == 0 else _READ_FIELDS)),
                                       ("LLEN", k.window), ("LRANGE", k.window, -limit, -1)]
        if self.touches.due(session_id):
            ttl = self._ttl_ms
            cmds += [("PEXPIRE", k.window, ttl), ("PEXPIRE", k.meta, ttl), ("PEXPIRE", k.ids, ttl),
                     ("ZADD", k.active, int(time.time() * 1000), session_id)]
        return cmds

    def read_script_args(self, session_id: str, limit: int) -> tuple[list[str], list[Any]]:
        """The READ script's arguments for the same read (Redis Cluster)."""
        keys, args = self.head(session_id)
        return keys, [*args, -limit, *(_CONTEXT_FIELDS if limit == 0 else _READ_FIELDS)]

    @staticmethod
    def _read_common(out: list[Any]) -> list[Any] | int | None:
        """The meta fields of a hit; None on a miss, the last seq on a partial window."""
        if any(isinstance(x, Exception) for x in out):
            raise CorruptEntry("corrupt cache entry (wrong key type)")
        meta, length = out[0], out[1]
        if meta[0] is None:
            return None
        try:
            if meta[1] is not None:
                return int(meta[0])
            if meta[3] is None or int(meta[3]) != length:
                # Redis evicted part of the session (any policy but noeviction): never serve it short
                raise CorruptEntry("damaged cache entry (window length)")
        except ValueError:
            raise CorruptEntry("corrupt cache entry (meta)") from None
        return meta  # type: ignore[no-any-return]

    def read_result(self, out: list[Any]) -> tuple[str, list[bytes]] | int | None:
        meta = self._read_common(out)
        if meta is None or isinstance(meta, int):
            return meta
        try:
            return (meta[2] or b"").decode("utf-8"), out[2]
        except UnicodeDecodeError:
            raise CorruptEntry("corrupt cache entry (owner)") from None

    def context_result(self, out: list[Any]) -> CachedContext | int | None:
        meta = self._read_common(out)
        if meta is None or isinstance(meta, int):
            return meta
        try:
            return CachedContext((meta[2] or b"").decode("utf-8"), int(meta[4] or 0),
                                 (meta[5] or b"").decode("utf-8"), int(meta[6] or 0), out[2])
        except (UnicodeDecodeError, ValueError):
            raise CorruptEntry("corrupt cache entry (summary fields)") from None

    @staticmethod
    def fill_args(fill: Fill) -> list[Any]:
        args: list[Any] = [fill.base_seq, fill.owner or "", 1 if fill.partial else 0, fill.sum_upto,
                           fill.sum_text, fill.unsum, fill.floor, len(fill.pairs)]
        for msg_id, element in fill.pairs:
            args += (msg_id, element)
        return args

    def append_args(self, session_id: str, user_id: str | None, ids: Sequence[str], payloads: Sequence[str],
                    persist: bool, init: Fill | None) -> tuple[list[str], list[Any]]:
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
    def append_result(out: Any, n: int) -> AppendResult | None:
        status = out[0]
        if status == -1:
            return None
        if status == -2:
            raise OwnershipConflict(out[1].decode("utf-8"))
        return AppendResult(bound=status == 2, xid=out[1].decode() if out[1] else "", due=out[2] == 1,
                            seqs=[int(s) for s in out[3:3 + n]], new=[s == b"1" for s in out[3 + n:3 + 2 * n]])


# Connection errors worth one retry on a fresh connection (a pooled one may predate a Redis restart), as the
# clients' own Retry(NoBackoff(), 1) does for single commands.
_RETRY = (RedisConnectionError, RedisTimeoutError, OSError)


def _pack(cmds: list[tuple[Any, ...]]) -> bytes:
    """The wire bytes of `cmds`: hiredis's packer is a C call per command; redis.asyncio packs in pure Python
    (about 1 µs per argument)."""
    return b"".join([hiredis.pack_command(c) for c in cmds])


_parse_error: Any = BaseParser.parse_error  # error reply -> the exception class redis-py would raise


def _raise_errors(replies: list[Any]) -> list[Any]:
    """Raise the first top-level error reply as redis-py would (NOSCRIPT -> NoScriptError, ...)."""
    for r in replies:
        if isinstance(r, hiredis.ReplyError):
            raise _parse_error(str(r))
    return replies


class _Pipe(asyncio.Protocol):
    """One connection that every hot-path call of an event loop shares (async API, single server or Sentinel).

    Calls made while others wait leave together in one write at the next turn of the loop, and Redis answers a
    connection's commands in order, so replies are matched to callers by position. Under concurrency this
    replaces a send and a receive per call (each a syscall on both sides, the largest cost of a call on a busy
    machine) with one per batch; a lone call is written at once and pays nothing extra. Each caller's commands
    are contiguous, so a MULTI block stays intact. The pool opens the connection (AUTH, SELECT, TLS, Sentinel
    discovery); the pipe then takes its transport over, so replies are parsed as they arrive, with no task.
    Any error (connection lost, no reply for a whole timeout while calls wait, a protocol error) fails every
    waiting call with a connection error and retires the pipe; the cache opens a new one on the next call.
    """

    def __init__(self, conn: Any, timeout: float) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self.error: BaseException | None = None
        self._timeout = timeout
        self._parser = hiredis.Reader()
        self._waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self._out: list[bytes] = []
        self._flush_due = False
        self._replies = 0  # replies received so far: the watchdog's measure of progress
        self._watch: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport = conn._writer.transport
        self._transport.set_protocol(self)

    @staticmethod
    def check(conn: Any) -> None:
        """Raise unless the connection's transport can be taken over: an open asyncio stream, nothing unread."""
        reader, writer = getattr(conn, "_reader", None), getattr(conn, "_writer", None)
        if not (isinstance(writer, asyncio.StreamWriter) and isinstance(reader, asyncio.StreamReader)):
            raise ConfigurationError("this redis-py version's asyncio connections are not supported")
        if getattr(reader, "_buffer", b"") or writer.transport.is_closing():
            raise RedisConnectionError("a new Redis connection was not clean")

    def call(self, data: bytes, n: int) -> asyncio.Future[list[Any]]:
        """Send `data` (n commands); the future gets their n replies (error replies as values)."""
        if self.error is not None:
            raise RedisConnectionError("Redis connection lost")
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        if self._waiting:
            self._out.append(data)
            if not self._flush_due:
                self._flush_due = True
                self._loop.call_soon(self._flush)
        else:  # nothing in flight: no batch to join, write now
            self._transport.write(data)
        self._waiting.append((fut, n, []))
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
                self._replies += 1
                if not waiting:
                    raise RedisConnectionError("a reply nobody asked for")
                fut, n, got = waiting[0]
                got.append(reply)
                if len(got) == n:
                    waiting.popleft()
                    if not fut.done():  # a cancelled caller's replies are read and dropped
                        fut.set_result(got)
        except (hiredis.ProtocolError, RedisError) as exc:
            self.fail(exc if isinstance(exc, RedisError) else RedisConnectionError("Redis protocol error"))

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
        waiting, self._waiting = self._waiting, deque()
        for fut, _, _ in waiting:
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, RedisError) else RedisConnectionError(str(exc)))
        self._transport.abort()  # a later reply must never reach anyone

    async def close(self, pool: Any) -> None:
        self.fail(RedisConnectionError("Redis connection closed"))
        await self.conn.disconnect(nowait=True)
        await pool.release(self.conn)


class _Idle:
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


def _idle_cap(config: HybridConfig) -> int:
    return config.redis_max_connections // 8  # the blocking pool keeps the rest for the threads' other calls


def _multi(cmds: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [("MULTI",), *cmds, ("EXEC",)]


def _exec_reply(replies: list[Any], n: int) -> list[Any]:
    """The EXEC reply of a `_multi` exchange (errors inside it are values, as in a pipeline)."""
    out = replies[-1]
    if not isinstance(out, list) or len(out) != n:
        raise RedisConnectionError("unexpected MULTI reply")
    return out


class SyncHotPath(_Calls):
    """The two hot calls (read a window, append) on a blocking client, for the sync API.

    A sync caller then pays one Redis round trip, not a hop to the engine thread and back. On a single server
    or Sentinel the commands are packed and sent on one of the client's connections, kept between calls
    (`_Idle`): redis-py's command and pipeline objects cost more Python than the round trip itself, for the
    same bytes on the wire.
    """

    def __init__(self, config: HybridConfig, keys: KeyLayout, cluster: bool = False,
                 touches: TouchLog | None = None) -> None:
        super().__init__(config, keys, touches)
        self.cluster = cluster
        self.client: Any = _make_client(config, cluster, sync=True)
        self._idle = _Idle(_idle_cap(config))
        self._append = self.client.register_script(APPEND)  # Cluster: the client routes and loads scripts
        self._read = self.client.register_script(READ)

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
            except _RETRY:
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
            conn.send_packed_command([_pack(cmds)])
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

    def _window(self, session_id: str, limit: int) -> list[Any]:
        """One read's reply: [meta fields, length, elements, ...], errors inside it returned as values."""
        try:
            if self.cluster:
                keys, args = self.read_script_args(session_id, limit)
                return list(self._read(keys=keys, args=args))
            cmds = self.read_cmds(session_id, limit)
            return _exec_reply(self._exchange(_multi(cmds)), len(cmds))
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise CacheDown(type(exc).__name__) from None

    def read(self, session_id: str, limit: int) -> tuple[str, list[bytes]] | int | None:
        return self.read_result(self._window(session_id, limit))

    def context(self, session_id: str) -> CachedContext | int | None:
        return self.context_result(self._window(session_id, 0))

    def append(self, session_id: str, user_id: str | None, ids: Sequence[str], payloads: Sequence[str], *,
               persist: bool) -> AppendResult | None:
        keys, args = self.append_args(session_id, user_id, ids, payloads, persist, None)
        try:
            out = self._eval(self._append, keys, args)
        except ResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise CacheDown(type(exc).__name__) from None
        return self.append_result(out, len(ids))


class RedisCache(_Calls):
    """Every Redis call of the engine, on redis.asyncio (one instance per event loop)."""

    def __init__(self, config: HybridConfig, keys: KeyLayout, cluster: bool = False,
                 touches: TouchLog | None = None) -> None:
        super().__init__(config, keys, touches)
        self.cluster = cluster
        self.client: Any = _make_client(config, cluster, sync=False)
        self._pipe: _Pipe | None = None
        self._pipe_lock = asyncio.Lock()
        self._pipe_attempts = 0
        # Never more calls than the pool has connections, counting the pipe's.
        self._slots = asyncio.Semaphore(max(1, config.redis_max_connections - 1))
        self._append = self.client.register_script(APPEND)
        self._read = self.client.register_script(READ)
        self._fill = self.client.register_script(FILL)
        self._set_summary = self.client.register_script(SET_SUMMARY)
        self._outbox_of = self.client.register_script(OUTBOX_OF)
        self.closed = False
        self._lifetime: AsyncGenerator[None, None] | None = None

    async def close(self) -> None:
        self.closed = True
        self._end_lifetime()
        await self._drop_pipe()
        await self.client.aclose()

    def close_with_loop(self) -> None:
        """Close this client when the running loop shuts down, so its connections never outlive their loop.

        `asyncio.run`, `asyncio.Runner` and pytest-asyncio finalize a loop's async generators before closing it:
        a generator suspended for the client's whole life is that hook.
        """
        async def lifetime() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                if not self.closed:
                    await self.close()

        gen = lifetime()
        with contextlib.suppress(StopIteration):
            gen.asend(None).send(None)  # the first step registers the generator with the running loop
        self._lifetime = gen

    def _end_lifetime(self) -> None:
        gen, self._lifetime = self._lifetime, None
        if gen is not None:
            # Finishes at once (closed is set, nothing to await); from inside its own finally it is running.
            with contextlib.suppress(StopIteration, RuntimeError):
                gen.aclose().send(None)

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

    async def _exchange(self, cmds: list[tuple[Any, ...]], script: str | None = None) -> list[Any]:
        """Send `cmds` on the pipe, return one reply each (single server or Sentinel). `script` as in
        SyncHotPath._exchange; a lost connection is retried once on a new one (it may predate a restart)."""
        data = _pack(cmds)
        for attempt in (0, 1, 2):
            try:
                pipe = self._pipe
                if pipe is None or pipe.error is not None or pipe.pid != os.getpid():
                    pipe = await self._new_pipe()
                try:
                    return _raise_errors(await pipe.call(data, len(cmds)))
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

    async def _new_pipe(self) -> _Pipe:
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
                _Pipe.check(conn)
                self._pipe = _Pipe(conn, self.config.redis_timeout)
            except BaseException:
                await pool.release(conn)
                raise
            return self._pipe

    async def _drop_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.pid == os.getpid():
            await pipe.close(self.client.connection_pool)

    async def _eval(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self.cluster:
            return await self._call(script(keys=keys, args=args))
        return (await self._exchange([("EVALSHA", script.sha, len(keys), *keys, *args)], script.script))[0]

    async def _window(self, session_id: str, limit: int) -> list[Any]:
        if self.cluster:
            keys, args = self.read_script_args(session_id, limit)
            return list(await self._call(self._read(keys=keys, args=args)))
        cmds = self.read_cmds(session_id, limit)
        return _exec_reply(await self._exchange(_multi(cmds)), len(cmds))

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

    async def read(self, session_id: str, limit: int) -> tuple[str, list[bytes]] | int | None:
        """None on a miss; the last seq (int) if the window is partial; else (owner, elements)."""
        return self.read_result(await self._window(session_id, limit))

    async def context(self, session_id: str) -> CachedContext | int | None:
        """The summary fields and every cached element (None: miss; int: partial window)."""
        return self.context_result(await self._window(session_id, 0))

    async def set_summary(self, session_id: str, upto_seq: int, text: str, covered: int) -> bool:
        keys, args = self.head(session_id, touch=False)
        return bool(await self._eval(self._set_summary, keys, [*args, upto_seq, text, covered]))

    async def append(self, session_id: str, user_id: str | None, ids: Sequence[str],
                     payloads: Sequence[str], *, persist: bool, init: Fill | None = None) -> AppendResult | None:
        """Append atomically; None means "not cached: load a Fill from the store and call again"."""
        keys, args = self.append_args(session_id, user_id, ids, payloads, persist, init)
        return self.append_result(await self._eval(self._append, keys, args), len(ids))

    async def fill(self, session_id: str, fill: Fill, expect_seq: int | None = None
                   ) -> tuple[bool, str, list[bytes]]:
        """Cache `fill` unless somebody wrote first; returns (loaded, owner, the window now cached)."""
        out = await self._eval(self._fill, *self._fill_args(session_id, fill, expect_seq))
        cached = [el for _, el in fill.pairs] if out[0] == 2 else out[2:]  # 2: cached exactly as given
        return bool(out[0]), out[1].decode("utf-8"), cached

    def _fill_args(self, session_id: str, fill: Fill, expect_seq: int | None) -> tuple[list[str], list[Any]]:
        keys, args = self.head(session_id, touch=True, fill=fill)
        return keys, [*args, self.config.idempotency_window, "" if expect_seq is None else str(expect_seq),
                      *self.fill_args(fill)]

    async def fill_many(self, fills: dict[str, Fill]) -> int:
        if not fills:
            return 0
        # Concurrent script calls rather than a pipeline: each may need its script loaded on its own node.
        calls = [self._eval(self._fill, *self._fill_args(sid, fill, None)) for sid, fill in fills.items()]
        return sum(1 for x in await asyncio.gather(*calls) if x[0])

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

    async def drop(self, session_ids: Sequence[str]) -> None:
        """Forget the cached windows (cache only; PostgreSQL is untouched)."""
        if not session_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        for sid in session_ids:
            k = self.keys.session(sid)
            pipe.delete(k.window, k.meta, k.ids)
            pipe.zrem(k.active, sid)
        await self._call(pipe.execute())

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
        """Remove entries, given as (stream, session id or None if unknown, entry id), from the outbox streams,
        then their names from the sessions' pending sets (in that order: a name whose entry is gone is harmless,
        see `outbox_entries`)."""
        if not entries:
            return
        streams: dict[str, list[str]] = {}
        names: dict[str, list[str]] = {}
        for stream, sid, xid in entries:
            streams.setdefault(stream, []).append(xid)
            if sid is not None:
                names.setdefault(self.keys.session(sid).pending, []).append(xid)
        cmds = [("XDEL", s, *x) for s, x in streams.items()] + [("SREM", k, *x) for k, x in names.items()]
        if not self.cluster:
            await self._exchange(cmds)  # packed by hiredis: a batch acknowledges up to thousands of sessions
            return
        pipe = self.client.pipeline(transaction=False)
        for cmd in cmds:
            pipe.execute_command(*cmd)
        await self._call(pipe.execute())

    async def orphans(self, older_than_s: float, count: int
                      ) -> list[tuple[str, str, str, str, list[tuple[bytes, bytes]]]]:
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
        found: list[tuple[str, str, str, str, list[tuple[bytes, bytes]]]] = []
        for stream, entries in zip(streams, await self._call(pipe.execute()), strict=True):
            for xid, fields in entries:
                try:
                    sid = fields.pop(b"s").decode("utf-8")
                    uid = fields.pop(b"u").decode("utf-8")
                except (KeyError, UnicodeDecodeError):
                    sid, uid, fields = "", "", {}  # damaged: nothing to commit, and it gets deleted
                found.append((stream, xid.decode(), sid, uid, list(fields.items())))
        return found

    async def session_outbox(self, session_id: str) -> list[tuple[str, str, bytes, str]]:
        """(entry id, message id, element, user id) of the session's entries still in its bucket's outbox."""
        flat = await self._eval(self._outbox_of, *self.head(session_id, touch=False))
        out = []
        for i in range(0, len(flat) - 1, 2):
            xid, f = flat[i].decode(), flat[i + 1]
            if len(f) < 4 or f[0] != b"s" or f[2] != b"u":
                continue  # not an entry the engine wrote: the janitor sets it aside
            uid = f[3].decode("utf-8", "replace")
            out += [(xid, f[j].decode("utf-8", "replace"), f[j + 1], uid) for j in range(4, len(f) - 1, 2)]
        return out

    async def forget_outbox(self, session_ids: Sequence[str]) -> None:
        """Delete every outbox entry of these sessions (any writer's): part of erasing them."""
        for sid in session_ids:
            stream = self.keys.session(sid).outbox
            await self.ack([(stream, sid, xid) for xid in sorted({x for x, _, _, _ in await self.session_outbox(sid)})])

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
