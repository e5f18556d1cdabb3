"""The PostgreSQL side: pool, versioned migrations, and every SQL statement the engine runs.

The namespace is a PostgreSQL schema selected through `search_path`, so statements use bare table names and
no SQL is ever built from user input.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import asyncpg

from ._loop import close_with_loop
from .config import HybridConfig

T = TypeVar("T")
log = logging.getLogger("langchain_hybrid_memory")
MIGRATIONS_PACKAGE = "langchain_hybrid_memory.migrations"
_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
PGVECTOR_MIGRATION = 7  # conditional on the server (pgvector.py): applied again until it could do its work
# The server could give recall an HNSW index, but this namespace has no vector column (yet).
_PGVECTOR_MISSING = ("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') AND NOT EXISTS"
                     " (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('message_vectors')"
                     " AND attname = 'vec' AND NOT attisdropped)")


def digest(session_id: str) -> str:
    """How a tombstone names a deleted session: its id's hex SHA-256 (the id itself is not kept)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


# Sessions (and, under THREAD_MARK, checkpoint threads) written around Redis: their cached state is stale. An
# update, not DO NOTHING, when a mark exists: the row lock keeps a purge from taking the mark (take_dirty skips
# locked ones) before the write that made it commits. In order: two transactions marking the same ids never wait
# on each other in a cycle.
MARK_DIRTY = ("INSERT INTO cache_dirty (session_id) SELECT DISTINCT s FROM unnest($1::text[]) AS s ORDER BY 1"
              " ON CONFLICT (session_id) DO UPDATE SET session_id = EXCLUDED.session_id")
# cache_dirty marks a checkpoint thread as this prefix + its id: no session or thread id holds a control character.
THREAD_MARK = "\x1ft:"


class StoreDown(Exception):
    """PostgreSQL could not be reached or timed out."""


_DOWN = (OSError, asyncio.TimeoutError, asyncpg.exceptions.PostgresConnectionError,
         asyncpg.exceptions.InterfaceError, asyncpg.exceptions.CannotConnectNowError,
         asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
         asyncpg.exceptions.TooManyConnectionsError)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of a transaction left open. Its
    default (`RESET ALL`, `CLOSE ALL`, `UNLISTEN *`, unlock advisory locks) is one more round trip per query,
    about as long as a window read, for session state the engine never creates (no SET, LISTEN, cursors
    WITH HOLD or session-level advisory locks: every lock is transaction-scoped)."""


@dataclass(slots=True)
class Row:
    session_id: str
    seq: int
    msg_id: str
    role: str
    body: str
    created_at: float


@functools.cache
def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order (read once; the files never change)."""
    out = []
    for entry in resources.files(MIGRATIONS_PACKAGE).iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(out)


# How both write paths bump a session's row: last_active_at is kept to the second, so a busy session's row is
# rewritten (a new tuple and index entries) at most once a second, not once per batch. Rows go in session
# order, so concurrent batches lock them in one order.
# `unindexed_from` tells the recall indexer where to look (recall.py): set when nothing waits or when the batch
# goes lower. A row the WHERE leaves alone is still locked until the commit, which is what lets the indexer
# (SELECT ... FOR UPDATE SKIP LOCKED) never clear a mark that a commit in flight relies on.
_SESSION_UPSERT = """
ON CONFLICT (session_id) DO UPDATE
    SET last_active_at = GREATEST(s.last_active_at, EXCLUDED.last_active_at),
        user_id = COALESCE(s.user_id, EXCLUDED.user_id),
        unindexed_from = LEAST(s.unindexed_from, EXCLUDED.unindexed_from)
    WHERE s.last_active_at < EXCLUDED.last_active_at - interval '1 second'
       OR (s.user_id IS NULL AND EXCLUDED.user_id IS NOT NULL)
       OR s.unindexed_from IS NULL OR s.unindexed_from > EXCLUDED.unindexed_from
"""

# One statement, one round trip: insert the batch (skipping ids already stored and tombstoned sessions) and
# bump each session's activity. ON CONFLICT DO NOTHING makes replays from the outbox harmless.
_PERSIST = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[])
        AS b(session_id, seq, msg_id, role, body, ts, user_id)
), live AS (
    SELECT b.* FROM batch b
    WHERE NOT EXISTS (SELECT 1 FROM tombstones t
                      WHERE t.session_id = encode(sha256(convert_to(b.session_id, 'UTF8')), 'hex')
                      AND b.seq <= t.upto_seq)
), ins AS (
    INSERT INTO messages (session_id, seq, msg_id, role, body, created_at)
    SELECT session_id, seq, msg_id, role, body, to_timestamp(ts) FROM live
    ON CONFLICT DO NOTHING
    RETURNING session_id, seq
), sess AS (
    INSERT INTO sessions AS s (session_id, user_id, created_at, last_active_at, unindexed_from)
    SELECT session_id, max(NULLIF(user_id, '')), to_timestamp(min(ts)), to_timestamp(max(ts)), min(seq)
    FROM live GROUP BY session_id ORDER BY session_id
    """ + _SESSION_UPSERT + """
)
SELECT session_id, seq FROM ins
"""

def _locks(fn: str, seed: int) -> str:
    return f"SELECT {fn}(hashtextextended(s, {seed})) FROM (SELECT DISTINCT unnest($1::text[]) AS s ORDER BY 1) q"


# Write-behind batches and erases of the same session serialise on these (sorted: no deadlock).
_LOCK_SHARED = _locks("pg_advisory_xact_lock_shared", 11)
_LOCK_EXCLUSIVE = _locks("pg_advisory_xact_lock", 11)
# The same for checkpoint threads, by `exclusive` (another seed: a thread and a session may share an id).
_THREAD_LOCKS = {False: _locks("pg_advisory_xact_lock_shared", 13), True: _locks("pg_advisory_xact_lock", 13)}

# The COPY path's session bump: one row per session, aggregated and sorted by the caller.
_TOUCH_SESSIONS = """
INSERT INTO sessions AS s (session_id, user_id, created_at, last_active_at, unindexed_from)
SELECT session_id, NULLIF(user_id, ''), to_timestamp(first_ts), to_timestamp(last_ts), first_seq
FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::bigint[])
    AS b(session_id, user_id, first_ts, last_ts, first_seq)
""" + _SESSION_UPSERT


def _session_touches(live: Sequence[Row], users: Sequence[str]) -> list[list[Any]]:
    """_TOUCH_SESSIONS's arrays: per session (sorted) the user, first and last message time, lowest seq."""
    agg: dict[str, list[Any]] = {}
    for r, u in zip(live, users, strict=True):
        a = agg.get(r.session_id)
        if a is None:
            agg[r.session_id] = [u, r.created_at, r.created_at, r.seq]
        else:
            if u and not a[0]:
                a[0] = u
            if r.created_at < a[1]:
                a[1] = r.created_at
            if r.created_at > a[2]:
                a[2] = r.created_at
            if r.seq < a[3]:
                a[3] = r.seq
    sids = sorted(agg)
    return [sids, *([agg[s][i] for s in sids] for i in range(4))]


# One row per session (owner, tombstone, latest summary, messages after it), then its last $2 messages: the
# summary text is sent once, not beside every message.
_WINDOWS = """
WITH q AS (SELECT DISTINCT unnest($1::text[]) AS session_id)
SELECT q.session_id, s.session_id IS NOT NULL, s.user_id, coalesce(t.upto_seq, 0),
       coalesce(sm.upto_seq, 0), coalesce(sm.text, ''), coalesce(cnt.n, 0), NULL::bigint, NULL::text, NULL::text
FROM q
LEFT JOIN sessions s ON s.session_id = q.session_id
LEFT JOIN tombstones t ON t.session_id = encode(sha256(convert_to(q.session_id, 'UTF8')), 'hex')
LEFT JOIN LATERAL (
    SELECT upto_seq, text FROM summaries WHERE session_id = q.session_id ORDER BY upto_seq DESC LIMIT 1
) sm ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS n FROM messages c WHERE $3 AND c.session_id = q.session_id AND c.seq > coalesce(sm.upto_seq, 0)
) cnt ON true
UNION ALL
SELECT q.session_id, NULL, NULL, NULL, NULL, NULL, NULL, m.seq, m.msg_id, m.body
FROM q CROSS JOIN LATERAL (
    SELECT seq, msg_id, body FROM messages WHERE session_id = q.session_id ORDER BY seq DESC LIMIT $2
) m
"""


# The same for one session, as one row: its meta, then its last $2 messages as three arrays, newest first (a
# cold read: fewer rows and columns for asyncpg to decode, no set of sessions to join). The count of messages
# after the summary only with auto-summarize (skipping it costs a tenth of the query even as a one-time filter).
def _window_sql(counting: bool) -> str:
    count = """
LEFT JOIN LATERAL (
    SELECT count(*) AS n FROM messages c WHERE c.session_id = q.session_id AND c.seq > coalesce(sm.upto_seq, 0)
) cnt ON true""" if counting else ""
    return f"""
SELECT s.session_id IS NOT NULL, s.user_id, coalesce(t.upto_seq, 0), coalesce(sm.upto_seq, 0),
       coalesce(sm.text, ''), {"coalesce(cnt.n, 0)" if counting else "0::bigint"}, m.seqs, m.ids, m.bodies
FROM (SELECT $1::text AS session_id) q
LEFT JOIN sessions s ON s.session_id = q.session_id
LEFT JOIN tombstones t ON t.session_id = encode(sha256(convert_to(q.session_id, 'UTF8')), 'hex')
LEFT JOIN LATERAL (
    SELECT upto_seq, text FROM summaries WHERE session_id = q.session_id ORDER BY upto_seq DESC LIMIT 1
) sm ON true{count}
CROSS JOIN LATERAL (
    SELECT array_agg(seq) AS seqs, array_agg(msg_id) AS ids, array_agg(body) AS bodies FROM (
        SELECT seq, msg_id, body FROM messages WHERE session_id = q.session_id ORDER BY seq DESC LIMIT $2
    ) tail
) m
"""


_WINDOW = {counting: _window_sql(counting) for counting in (False, True)}


def window_of(rec: Any) -> Window:
    """A `_WINDOW` row as a Window."""
    seqs = rec[6]
    rows = list(zip(reversed(seqs), reversed(rec[7]), reversed(rec[8]), strict=True)) if seqs else []
    return Window(rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], rows)


@dataclass(slots=True)
class Window:
    """The stored tail of one session."""

    exists: bool
    owner: str | None
    floor_seq: int  # new sequence numbers must stay above this (a tombstone's)
    sum_upto: int  # the latest summary covers up to this seq (0: none)
    sum_text: str
    unsummarized: int  # messages after the summary (counted only when auto-summarize is on)
    rows: list[tuple[int, str, str]]  # (seq, msg_id, body), oldest first


async def pg_connect(dsn: str | None, **kwargs: Any) -> Any:
    """`asyncpg.connect`, except that what asyncpg would read from files on the event loop for every new
    connection (the password file, TLS certificates, keys and revocation lists) is read in a worker thread:
    opening a connection never blocks the loop. Also the pool's `connect`. The TLS modes keep libpq's meaning:
    `prefer` tries TLS and falls back to plain text, `allow` the other way round."""
    loop = asyncio.get_running_loop()
    try:
        return await _connect(dsn, kwargs)
    except RuntimeError:
        if loop.is_closed():  # collected, its loop closed under it (a caller's): nothing is left to clean up
            raise GeneratorExit from None
        raise


async def _connect(dsn: str | None, kwargs: dict[str, Any]) -> Any:
    password, mode, tls = await asyncio.to_thread(_read_connect_files, dsn)

    async def given() -> str | None:  # a password given, even as None, is not looked up in the password file
        return password

    async def attempt(ssl: Any) -> Any:
        return await asyncpg.connect(dsn, password=given, ssl=ssl, **kwargs)

    if mode not in ("prefer", "allow"):
        return await attempt(tls)
    declined = hashlib.sha256((dsn or "").encode()).digest()
    # Once a server declined TLS under `prefer`, this process asks it for plain text first (as `allow` does,
    # TLS still follows if it refuses that): one connection attempt instead of two.
    first, then = (False, tls) if mode == "allow" or declined in _DECLINED_TLS else (tls, False)
    try:
        return await attempt(first)
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        refused: Exception = exc  # pg_hba.conf may accept the connection with (or without) TLS
    except ConnectionError as exc:
        if not _declines_tls(exc) or first is False:
            raise  # refused, reset, ...: not the server declining TLS
        _DECLINED_TLS.add(declined)
        return await attempt(then)
    try:
        return await attempt(then)
    except ConnectionError as exc:
        if _declines_tls(exc):
            raise refused from None  # the reason that matters: TLS was never on offer
        raise


def _declines_tls(exc: ConnectionError) -> bool:
    return type(exc) is ConnectionError  # asyncpg's answer to a server that has no TLS when TLS is required


_DECLINED_TLS: set[bytes] = set()


def _read_connect_files(dsn: str | None) -> tuple[str | None, str, Any]:
    """(password, TLS mode, TLS context or False) as asyncpg resolves them for `dsn` by libpq's rules,
    environment included: asyncpg's own parser, run off the loop."""
    from asyncpg import connect_utils

    parse = connect_utils._parse_connect_dsn_and_args
    _, params = parse(**dict.fromkeys(inspect.signature(parse).parameters) | {"dsn": dsn})
    mode = params.sslmode.name.replace("_", "-")
    return params.password, mode, params.ssl or False


def _server_settings(config: HybridConfig) -> dict[str, str]:
    # Every statement is keyed by session and prepared once per connection: a generic plan serves them all,
    # where PostgreSQL would otherwise re-plan the window query on each call (0.3 ms).
    return {"search_path": config.namespace, "application_name": "hybrid-memory",
            "plan_cache_mode": "force_generic_plan"}


class LoopConnection:
    """One PostgreSQL connection of a caller's event loop, so that a cold read there queries PostgreSQL without
    a hop to the engine loop and back (asyncpg connections belong to the loop that opened them). One query at
    a time: while it is busy, not open yet or broken, `take` says no and the caller uses the engine's pool.
    Opened in the background on first use; closed with the engine, or when its loop shuts down."""

    def __init__(self, config: HybridConfig) -> None:
        self.config = config
        self.conn: Any = None
        self.busy = False
        self.closed = False
        self._opening: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._lifetime: Callable[[], None] | None = None

    def close_with_loop(self) -> None:
        self._lifetime = close_with_loop(self.close, lambda: self.closed)

    def take(self) -> bool:
        """Whether a query may go now, on the running loop; if so, `release` it after."""
        conn = self.conn
        if conn is None or conn.is_closed():
            self.conn = None
            if not self.closed and self._opening is None and time.monotonic() >= self._retry_at:
                self._opening = asyncio.get_running_loop().create_task(self._open())
            return False
        if self.busy:
            return False
        self.busy = True
        return True

    def release(self) -> None:
        self.busy = False

    async def _open(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            conn = await pg_connect(cfg.database_dsn(), timeout=cfg.connect_timeout, command_timeout=cfg.pg_timeout,
                                    server_settings=_server_settings(cfg))
        except (*_DOWN, asyncpg.PostgresError):
            self._retry_at = time.monotonic() + cfg.health_check_interval  # the pool serves until then
            return
        except RuntimeError:
            if loop.is_closed():  # closed with this still pending, now collected: nothing to clean up on it
                raise GeneratorExit from None
            raise
        finally:
            self._opening = None
        if self.closed:
            await conn.close()
        else:
            self.conn = conn

    async def window(self, session_id: str, limit: int) -> Window:
        """As `PostgresStore.window`, after `take`. Raises StoreDown (and drops the connection)."""
        try:
            return window_of(await self.conn.fetchrow(_WINDOW[self.config.enable_auto_summarize], session_id,
                                                      limit, timeout=self.config.pg_timeout))
        except _DOWN as exc:
            conn, self.conn = self.conn, None
            conn.terminate()
            raise StoreDown(type(exc).__name__) from None

    async def close(self) -> None:
        self.closed = True
        if self._lifetime is not None:
            end, self._lifetime = self._lifetime, None
            end()
        if self._opening is not None:
            self._opening.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self.config.pg_timeout)
            except (TimeoutError, *_DOWN):
                conn.terminate()

    def abandon(self) -> None:
        """Forget a connection whose loop no longer runs."""
        self.closed = True
        if self._lifetime is not None:
            end, self._lifetime = self._lifetime, None
            end()
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # its transport belongs to a closed loop
                conn.terminate()


class PrivateConnection:
    """A PostgreSQL connection for the sync API's cold reads, on a private event loop that the calling thread
    runs for its query: a sync caller waits anyway, and a hop to the engine loop and back costs it two thread
    wake-ups, more than the query. One thread at a time; a thread that runs a loop of its own cannot run this
    one. Opened by a helper thread on first use; while it is busy or not open, callers take the engine loop."""

    def __init__(self, config: HybridConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.pg = LoopConnection(config)
        self._lock = threading.Lock()  # held by the thread using the connection, or opening it

    def acquire(self) -> bool:
        """Whether the calling thread may query now (then `release` after)."""
        try:
            asyncio.get_running_loop()
            return False
        except RuntimeError:
            pass
        if not self._lock.acquire(blocking=False):
            return False
        pg = self.pg
        if pg.conn is not None and not pg.conn.is_closed():
            return True
        pg.conn = None
        if pg.closed or time.monotonic() < pg._retry_at:
            self._lock.release()
        else:
            threading.Thread(target=self._open, name="hybrid-memory-pg", daemon=True).start()
        return False

    def _open(self) -> None:
        try:
            self.loop.run_until_complete(self.pg._open())
        finally:
            self._lock.release()

    def release(self) -> None:
        self._lock.release()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a query on the connection, in the calling thread (after `acquire`)."""
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the connection and its loop (blocks: call from a thread that runs no loop)."""
        self.pg.closed = True
        got = self._lock.acquire(timeout=self.pg.config.pg_timeout)  # a query or the opening finishes first
        try:
            conn, self.pg.conn = self.pg.conn, None
            if conn is not None:
                try:
                    self.loop.run_until_complete(asyncio.wait_for(conn.close(), self.pg.config.pg_timeout))
                except (RuntimeError, TimeoutError, *_DOWN):
                    conn.terminate()
            if not self.loop.is_running():
                self.loop.close()
        finally:
            if got:
                self._lock.release()


class PostgresStore:
    def __init__(self, config: HybridConfig) -> None:
        self.config = config
        self.schema = config.namespace
        self.pool: asyncpg.Pool | None = None
        self._probe: Any = None  # the one plain connection of `probe`

    async def connect(self) -> None:
        cfg = self.config
        try:
            self.pool = await asyncio.wait_for(asyncpg.create_pool(
                cfg.database_dsn(), connect=pg_connect, min_size=cfg.pg_pool_min, max_size=cfg.pg_pool_max,
                command_timeout=cfg.pg_timeout, timeout=cfg.connect_timeout, server_settings=_server_settings(cfg),
                reset=_keep_session,
            ), cfg.connect_timeout * 2)
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    async def close(self) -> None:
        if self._probe is not None:
            probe, self._probe = self._probe, None
            await probe.close()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), self.config.pg_timeout)
            except (TimeoutError, *_DOWN):
                self.pool.terminate()

    @contextlib.asynccontextmanager
    async def dedicated(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own, outside the pool, closed after use: for a statement that cannot run in a
        transaction, under a session-level lock that must end with it. Unreachable raises StoreDown."""
        cfg = self.config
        try:
            conn = await pg_connect(cfg.database_dsn(), timeout=cfg.connect_timeout, command_timeout=cfg.pg_timeout,
                                    server_settings=_server_settings(cfg))
            try:
                yield conn
            finally:
                await conn.close(timeout=cfg.pg_timeout)
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        if self.pool is None:
            raise StoreDown("not connected")
        try:
            async with self.pool.acquire(timeout=self.config.pg_timeout) as conn:
                return await getattr(conn, method)(sql, *args, timeout=self.config.pg_timeout)
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    # -- schema ------------------------------------------------------------------------------------------
    async def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock; return the names applied."""
        if self.pool is None:
            raise StoreDown("not connected")
        applied: list[str] = []
        bundled = await asyncio.to_thread(migrations)  # file reads, off the loop
        try:
            async with self.pool.acquire(timeout=self.config.pg_timeout) as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('hybrid_memory:' || $1, 0))",
                                   self.schema)
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, name, sql in bundled:
                    if version in done:
                        continue
                    await conn.execute(sql)
                    if version == 1 and self.config.pg_partitions:
                        await self._partition_messages(conn, self.config.pg_partitions)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                       version, name)
                    applied.append(name)
                await self._pgvector_step(conn, bundled, again=PGVECTOR_MIGRATION in done)
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None
        return applied

    @staticmethod
    async def _pgvector_step(conn: Any, bundled: list[tuple[int, str, str]], *, again: bool) -> None:
        """pgvector installed after its migration ran: apply that (idempotent) migration again. Where the server
        has pgvector and the namespace still lacks the column, say why search stays exact."""
        if not await conn.fetchval(_PGVECTOR_MISSING):
            return
        if again:
            await conn.execute(next(sql for version, _, sql in bundled if version == PGVECTOR_MIGRATION))
            if not await conn.fetchval(_PGVECTOR_MISSING):
                return
        log.warning("hybrid-memory: PostgreSQL has pgvector, but this role could not create the extension in this "
                    "database (or add its column): recall scores vectors exactly, without an HNSW index. A "
                    "superuser's `CREATE EXTENSION vector`, then `hybrid-memory migrate`, enables the index")

    @staticmethod
    async def _partition_messages(conn: Any, n: int) -> None:
        """Recreate the (new, empty) messages table hash-partitioned by session: every query of the engine
        filters on one session_id, so it touches one partition. Both unique keys start with session_id, as
        PostgreSQL (and Citus, with session_id as the distribution column) require."""
        await conn.execute("ALTER TABLE messages RENAME TO messages_unpartitioned")
        await conn.execute("CREATE TABLE messages (LIKE messages_unpartitioned INCLUDING ALL)"
                           " PARTITION BY HASH (session_id)")
        for i in range(n):
            await conn.execute(f"CREATE TABLE messages_p{i} PARTITION OF messages"
                               f" FOR VALUES WITH (MODULUS {int(n)}, REMAINDER {i})")
        await conn.execute("DROP TABLE messages_unpartitioned")

    # -- write path --------------------------------------------------------------------------------------
    async def persist(self, rows: Sequence[Row], users: Sequence[str]) -> list[Row]:
        """Insert a batch idempotently; return the rows that were not new (usually none).

        Fast path: COPY straight into `messages` (about twice the rows/s of INSERT ... ON CONFLICT), in a
        transaction of five round trips. A replay (a row already stored) makes the COPY fail on a unique key
        and rolls that transaction back; the batch then goes again through `_PERSIST`, which skips what is
        stored. Tombstoned rows are left out on both paths.
        """
        if not rows:
            return []
        if self.pool is None:
            raise StoreDown("not connected")
        try:
            try:
                return await self._persist(rows, users, copy=True)
            except asyncpg.exceptions.UniqueViolationError:
                return await self._persist(rows, users, copy=False)
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    async def _persist(self, rows: Sequence[Row], users: Sequence[str], *, copy: bool) -> list[Row]:
        assert self.pool is not None
        async with self.pool.acquire(timeout=self.config.pg_timeout) as conn, conn.transaction():
            t = self.config.pg_timeout
            sids = list({r.session_id for r in rows})
            # Shared per-session locks: an erase (exclusive) either finishes before we look for its
            # tombstone, or waits until our rows are in and then deletes them too.
            await conn.execute(_LOCK_SHARED, sids, timeout=t)
            if not copy:
                cols: list[list[Any]] = [[], [], [], [], [], [], []]
                for r, u in zip(rows, users, strict=True):
                    for col, value in zip(cols, (r.session_id, r.seq, r.msg_id, r.role, r.body, r.created_at, u),
                                          strict=True):
                        col.append(value)
                stored = {(rec[0], rec[1]) for rec in await conn.fetch(_PERSIST, *cols, timeout=t)}
                return [r for r in rows if (r.session_id, r.seq) not in stored]
            by_digest = {digest(sid): sid for sid in sids}
            tombs = {by_digest[d]: upto for d, upto in await conn.fetch(
                "SELECT session_id, upto_seq FROM tombstones WHERE session_id = ANY($1::text[])",
                list(by_digest), timeout=t)}
            live, dropped = rows, []
            if tombs:
                dropped = [r for r in rows if r.seq <= tombs.get(r.session_id, 0)]
                kept = [(r, u) for r, u in zip(rows, users, strict=True) if r.seq > tombs.get(r.session_id, 0)]
                live, users = [r for r, _ in kept], [u for _, u in kept]
            if not live:
                return dropped
            # The messages of one call share a timestamp: convert each distinct one once.
            stamps = {ts: datetime.fromtimestamp(ts, UTC) for ts in {r.created_at for r in live}}
            await conn.copy_records_to_table(
                "messages", schema_name=self.schema, timeout=t,
                columns=["session_id", "seq", "msg_id", "role", "body", "created_at"],
                records=[(r.session_id, r.seq, r.msg_id, r.role, r.body, stamps[r.created_at]) for r in live])
            await conn.execute(_TOUCH_SESSIONS, *_session_touches(live, users), timeout=t)
            return dropped

    async def missing_ids(self, pairs: Sequence[tuple[str, str, int]]) -> set[tuple[str, str]]:
        """Which (session, msg_id, seq) were neither stored nor deleted: their seq collided with another id."""
        out = await self._run(
            "fetch",
            "SELECT q.s, q.i FROM unnest($1::text[], $2::text[], $3::bigint[]) AS q(s, i, seq)"
            " WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.session_id = q.s AND m.msg_id = q.i)"
            " AND NOT EXISTS (SELECT 1 FROM tombstones t"
            " WHERE t.session_id = encode(sha256(convert_to(q.s, 'UTF8')), 'hex') AND q.seq <= t.upto_seq)",
            [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs])
        return {(r[0], r[1]) for r in out}

    async def add_direct(self, session_id: str, user_id: str | None, ids: Sequence[str], roles: Sequence[str],
                         payloads: Sequence[str], stamps: Sequence[float], *, floor_seq: int, mark_dirty: bool,
                         ) -> tuple[str | None, list[int]]:
        """Write straight to PostgreSQL (Redis down, or persistent mode).

        Returns (owner, seqs). Sequence numbers follow the same rule as the Redis script:
        max(last + 1, now in microseconds), serialised per session by an advisory lock.
        """
        if self.pool is None:
            raise StoreDown("not connected")
        try:
            async with self.pool.acquire(timeout=self.config.pg_timeout) as conn, conn.transaction():
                t = self.config.pg_timeout
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", session_id, timeout=t)
                owner = await conn.fetchval("SELECT user_id FROM sessions WHERE session_id = $1", session_id,
                                            timeout=t)
                if user_id is not None and owner is not None and owner != user_id:
                    return owner, []
                row = await conn.fetchrow(
                    "SELECT coalesce((SELECT max(seq) FROM messages WHERE session_id = $1), 0),"
                    " (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,"
                    " coalesce((SELECT upto_seq FROM tombstones"
                    " WHERE session_id = encode(sha256(convert_to($1, 'UTF8')), 'hex')), 0)",
                    session_id, timeout=t)
                last = max(row[0], floor_seq, row[2])
                now = row[1]
                existing = dict(await conn.fetch(
                    "SELECT msg_id, seq FROM messages WHERE session_id = $1 AND msg_id = ANY($2::text[])",
                    session_id, list(ids), timeout=t))
                seqs: list[int] = []
                new_rows = []
                for msg_id, role, payload, ts in zip(ids, roles, payloads, stamps, strict=True):
                    if msg_id in existing:
                        seqs.append(existing[msg_id])
                        continue
                    last = max(last + 1, now)
                    seqs.append(last)
                    new_rows.append((session_id, last, msg_id, role, payload, ts))
                if new_rows:
                    await conn.executemany(
                        "INSERT INTO messages (session_id, seq, msg_id, role, body, created_at)"
                        " VALUES ($1, $2, $3, $4, $5, to_timestamp($6))", new_rows, timeout=t)
                await conn.execute(
                    "INSERT INTO sessions AS s (session_id, user_id, unindexed_from) VALUES ($1, $2, $3)"
                    " ON CONFLICT (session_id) DO UPDATE SET last_active_at = now(),"
                    " user_id = COALESCE(s.user_id, EXCLUDED.user_id),"
                    " unindexed_from = LEAST(s.unindexed_from, EXCLUDED.unindexed_from)",
                    session_id, user_id, min((r[1] for r in new_rows), default=None), timeout=t)
                if mark_dirty:
                    await conn.execute(MARK_DIRTY, [session_id], timeout=t)
                return owner if owner is not None else user_id, seqs
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    # -- read path ---------------------------------------------------------------------------------------
    async def windows(self, session_ids: Sequence[str], limit: int) -> dict[str, Window]:
        """The last `limit` messages (oldest first), owner and seq floor of each session asked for."""
        out: dict[str, Window] = {}
        rows: list[Any] = []
        counting = self.config.enable_auto_summarize
        for rec in await self._run("fetch", _WINDOWS, list(session_ids), limit, counting):
            if rec[7] is None:
                out[rec[0]] = Window(rec[1], rec[2], rec[3], rec[4], rec[5], rec[6], [])
            else:
                rows.append(rec)
        for rec in rows:
            out[rec[0]].rows.append((rec[7], rec[8], rec[9]))
        for w in out.values():
            w.rows.sort()  # oldest first (a UNION ALL promises no order)
        return out

    async def window(self, session_id: str, limit: int) -> Window:
        """One session's last `limit` messages (oldest first), owner, seq floor and summary (a cold read)."""
        return window_of(await self._run("fetchrow", _WINDOW[self.config.enable_auto_summarize], session_id, limit))

    async def page(self, session_id: str, after_seq: int | None, limit: int | None
                   ) -> list[tuple[int, str, str]]:
        """(seq, message id, body) after `after_seq`, oldest first."""
        return [(r[0], r[1], r[2]) for r in await self._run(
            "fetch",
            "SELECT seq, msg_id, body FROM messages WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            session_id, after_seq if after_seq is not None else -1, limit)]

    async def owner(self, session_id: str) -> tuple[bool, str | None]:
        rec = await self._run("fetchrow", "SELECT user_id FROM sessions WHERE session_id = $1", session_id)
        return (rec is not None, rec[0] if rec else None)

    # -- deletes and indexes -----------------------------------------------------------------------------
    async def delete_sessions(self, session_ids: Sequence[str], upto: Sequence[int]) -> int:
        """Delete sessions and leave tombstones so in-flight write-behind entries stay deleted."""
        if self.pool is None:
            raise StoreDown("not connected")
        try:
            async with self.pool.acquire(timeout=self.config.pg_timeout) as conn, conn.transaction():
                t = self.config.pg_timeout
                sids = list(session_ids)
                await conn.execute(_LOCK_EXCLUSIVE, sids, timeout=t)
                await conn.execute(
                    "INSERT INTO tombstones AS t (session_id, upto_seq)"
                    " SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT (session_id) DO UPDATE"
                    " SET upto_seq = GREATEST(t.upto_seq, EXCLUDED.upto_seq), deleted_at = now()",
                    [digest(sid) for sid in sids], list(upto), timeout=t)
                n = await conn.fetchval(
                    "WITH d AS (DELETE FROM messages WHERE session_id = ANY($1::text[]) RETURNING 1)"
                    " SELECT count(*) FROM d", sids, timeout=t)
                await conn.execute("DELETE FROM summaries WHERE session_id = ANY($1::text[])", sids, timeout=t)
                await conn.execute("DELETE FROM message_search WHERE session_id = ANY($1::text[])", sids, timeout=t)
                await conn.execute("DELETE FROM message_vectors WHERE session_id = ANY($1::text[])", sids, timeout=t)
                await conn.execute("DELETE FROM sessions WHERE session_id = ANY($1::text[])", sids, timeout=t)
                await conn.execute("DELETE FROM cache_dirty WHERE session_id = ANY($1::text[])", sids, timeout=t)
                return int(n)
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    async def delete_messages(self, session_id: str, seqs: Sequence[int]) -> int:
        async with self.transaction() as conn:
            await self.lock_sessions(conn, [session_id], exclusive=True)  # the recall indexer's are shared
            return int(await conn.fetchval(
                "WITH d AS (DELETE FROM messages WHERE session_id = $1 AND seq = ANY($2::bigint[]) RETURNING 1),"
                " x AS (DELETE FROM message_search WHERE session_id = $1 AND seq = ANY($2::bigint[])),"
                " v AS (DELETE FROM message_vectors WHERE session_id = $1 AND seq = ANY($2::bigint[]))"
                " SELECT count(*) FROM d", session_id, list(seqs), timeout=self.config.pg_timeout))

    async def list_sessions(self, user_id: str | None, limit: int | None) -> list[str]:
        """Sessions holding at least one message: deleting messages one by one keeps the session's row (its
        owner, summary switch and summaries), but a session with nothing left is not listed."""
        # LATERAL ... LIMIT 1 probes one session's partition by index, never a scan of every message.
        return [r[0] for r in await self._run(
            "fetch",
            "SELECT s.session_id FROM sessions s"
            " CROSS JOIN LATERAL (SELECT 1 FROM messages m WHERE m.session_id = s.session_id LIMIT 1) m"
            " WHERE $1::text IS NULL OR s.user_id = $1 ORDER BY s.session_id LIMIT $2",
            user_id, limit)]

    # -- summaries ---------------------------------------------------------------------------------------
    async def summary_state(self, session_id: str, limit: int, tail: bool = False
                            ) -> tuple[bool, int, str, int, list[tuple[int, str, str, str]]]:
        """(enabled, upto_seq, text, messages after it, the first (or with `tail`, last) `limit` of them as
        (seq, role, body, message id), oldest first)."""
        rec = await self._run(
            "fetchrow",
            "SELECT coalesce((SELECT summarize_enabled FROM sessions WHERE session_id = $1), true),"
            " coalesce(sm.upto_seq, 0), coalesce(sm.text, ''),"
            " (SELECT count(*) FROM messages WHERE session_id = $1 AND seq > coalesce(sm.upto_seq, 0))"
            " FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT upto_seq, text FROM summaries WHERE session_id = $1"
            " ORDER BY upto_seq DESC LIMIT 1) sm ON true", session_id)
        order = "DESC" if tail else "ASC"
        rows = await self._run(
            "fetch", f"SELECT seq, role, body, msg_id FROM messages WHERE session_id = $1 AND seq > $2"
            f" ORDER BY seq {order} LIMIT $3", session_id, rec[1], limit)
        out = [(r[0], r[1], r[2], r[3]) for r in rows]
        if tail:
            out.reverse()
        return rec[0], rec[1], rec[2], rec[3], out

    async def lease(self, session_id: str, owner: str, seconds: float) -> str:
        """Take the session's summarization lease: "ok", "busy" (another holder), "off" (kill switch), or
        "missing" (no such session)."""
        rec = await self._run(
            "fetchrow",
            "WITH took AS (UPDATE sessions SET summary_lease_until = now() + make_interval(secs => $3),"
            " summary_lease_owner = $2 WHERE session_id = $1 AND summarize_enabled"
            " AND (summary_lease_until IS NULL OR summary_lease_until < now() OR summary_lease_owner = $2)"
            " RETURNING 1) SELECT (SELECT count(*) FROM took), summarize_enabled FROM sessions WHERE session_id = $1",
            session_id, owner, seconds)
        if rec is None:
            return "missing"
        return "ok" if rec[0] else ("busy" if rec[1] else "off")

    async def release(self, session_id: str, owner: str) -> None:
        await self._run(
            "execute", "UPDATE sessions SET summary_lease_until = NULL, summary_lease_owner = NULL"
            " WHERE session_id = $1 AND summary_lease_owner = $2", session_id, owner)

    async def add_summary(self, session_id: str, prev_upto: int, from_seq: int, upto_seq: int, count: int,
                          text: str, model: str, input_tokens: int | None, output_tokens: int | None) -> bool:
        """Insert the next summary only if the previous one is still the latest (no overlap, ever)."""
        return bool(await self._run(
            "fetchval",
            "INSERT INTO summaries (session_id, from_seq, upto_seq, message_count, text, model, input_tokens,"
            " output_tokens) SELECT $1, $3, $4, $5, $6, $7, $8, $9"
            " WHERE coalesce((SELECT max(upto_seq) FROM summaries WHERE session_id = $1), 0) = $2"
            " ON CONFLICT DO NOTHING RETURNING true",
            session_id, prev_upto, from_seq, upto_seq, count, text, model, input_tokens, output_tokens))

    async def covered_by(self, session_id: str, after_seq: int, upto_msg_id: str) -> tuple[int, int, int] | None:
        """(seq of `upto_msg_id`, first seq after `after_seq`, count) of the range a summary up to that message
        would cover; None if the message is unknown."""
        rec = await self._run(
            "fetchrow",
            "WITH u AS (SELECT seq FROM messages WHERE session_id = $1 AND msg_id = $3)"
            " SELECT u.seq, min(m.seq), count(m.seq) FROM u LEFT JOIN messages m"
            " ON m.session_id = $1 AND m.seq > $2 AND m.seq <= u.seq GROUP BY u.seq",
            session_id, after_seq, upto_msg_id)
        return None if rec is None else (rec[0], rec[1] or 0, rec[2])

    async def summaries(self, session_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._run(
            "fetch", "SELECT from_seq, upto_seq, message_count, text, model, input_tokens, output_tokens,"
            " extract(epoch FROM created_at) AS created_at FROM summaries WHERE session_id = $1 ORDER BY upto_seq",
            session_id)]

    async def set_summarize(self, session_id: str, enabled: bool) -> None:
        await self._run(
            "execute", "INSERT INTO sessions AS s (session_id, summarize_enabled) VALUES ($1, $2)"
            " ON CONFLICT (session_id) DO UPDATE SET summarize_enabled = EXCLUDED.summarize_enabled",
            session_id, enabled)

    async def user_sessions(self, user_id: str) -> list[str]:
        return [r[0] for r in await self._run(
            "fetch", "SELECT session_id FROM sessions WHERE user_id = $1 ORDER BY session_id", user_id)]

    async def recent_sessions(self, limit: int, within_s: float | None) -> list[str]:
        return [r[0] for r in await self._run(
            "fetch",
            "SELECT session_id FROM sessions WHERE $2::float8 IS NULL"
            " OR last_active_at > now() - make_interval(secs => $2::float8)"
            " ORDER BY last_active_at DESC LIMIT $1", limit, within_s)]

    async def idle_sessions(self, older_than_s: float, limit: int) -> list[str]:
        return [r[0] for r in await self._run(
            "fetch", "SELECT session_id FROM sessions WHERE last_active_at < now() - make_interval(secs => $1)"
            " ORDER BY last_active_at LIMIT $2", older_than_s, limit)]

    async def count_idle_sessions(self, older_than_s: float) -> int:
        return int(await self._run(
            "fetchval", "SELECT count(*) FROM sessions WHERE last_active_at < now() - make_interval(secs => $1)",
            older_than_s))

    async def take_dirty(self, limit: int = 10_000) -> list[str]:
        """Remove and return up to `limit` marks of sessions written around Redis. Marks locked by a write still
        in progress, or by another process taking them, are left for the next call."""
        return [r[0] for r in await self._run(
            "fetch", "DELETE FROM cache_dirty WHERE session_id IN (SELECT session_id FROM cache_dirty LIMIT $1 "
            "FOR UPDATE SKIP LOCKED) RETURNING session_id", limit)]

    async def mark_dirty(self, marks: Sequence[str]) -> None:
        await self._run("execute", MARK_DIRTY, list(marks))

    async def prune_tombstones(self, older_than_s: float) -> None:
        await self._run("execute", "WITH t AS (DELETE FROM thread_tombstones"
                        " WHERE deleted_at < now() - make_interval(secs => $1)),"
                        " k AS (DELETE FROM checkpoint_tombstones WHERE deleted_at < now() - make_interval(secs => $1))"
                        " DELETE FROM tombstones WHERE deleted_at < now() - make_interval(secs => $1)", older_than_s)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction; PostgreSQL unreachable (or too slow) raises StoreDown."""
        if self.pool is None:
            raise StoreDown("not connected")
        try:
            async with self.pool.acquire(timeout=self.config.pg_timeout) as conn, conn.transaction():
                yield conn
        except _DOWN as exc:
            raise StoreDown(type(exc).__name__) from None

    async def lock_sessions(self, conn: asyncpg.Connection, session_ids: Sequence[str], *, exclusive: bool) -> None:
        """The per-session advisory locks of this transaction: shared for writers, exclusive for erasers."""
        await conn.execute(_LOCK_EXCLUSIVE if exclusive else _LOCK_SHARED, list(session_ids),
                           timeout=self.config.pg_timeout)

    async def run_locked(self, keys: Sequence[str], exclusive: bool, method: str, sql: str, *args: Any,
                         marks: Sequence[str] = ()) -> Any:
        """One statement in a transaction that first takes advisory locks on checkpoint threads (sorted: no
        deadlock); commits take them shared, deletes exclusive, so a delete never interleaves with a commit.
        `marks` are written to cache_dirty in the same transaction (MARK_DIRTY)."""
        async with self.transaction() as conn:
            t = self.config.pg_timeout
            await conn.execute(_THREAD_LOCKS[exclusive], list(keys), timeout=t)
            out = await getattr(conn, method)(sql, *args, timeout=t)
            if marks:
                await conn.execute(MARK_DIRTY, list(marks), timeout=t)
            return out

    def pool_usage(self) -> tuple[int, int]:
        if self.pool is None:
            return 0, 0
        size = self.pool.get_size()
        return size - self.pool.get_idle_size(), size

    # -- diagnosis (the command line's doctor and pre-checks) --------------------------------------------
    # On one plain connection, never the pool: no session settings (the pool's plan_cache_mode needs
    # PostgreSQL 12, which doctor checks for), so names are schema-qualified; and asyncpg's errors come through
    # as raised, so the CLI can tell a wrong password from a missing database.
    @classmethod
    async def probe(cls, config: HybridConfig) -> PostgresStore:
        """A store on one short-lived connection, for the methods below; `close` ends it."""
        store = cls(config)
        store._probe = await asyncio.wait_for(
            pg_connect(config.database_dsn(), timeout=config.connect_timeout), config.connect_timeout * 2)
        return store

    def _probed(self) -> Any:
        if self._probe is None:
            raise StoreDown("not connected (PostgresStore.probe)")
        return self._probe

    async def server_info(self) -> tuple[str, str, int, str]:
        """(current user, database, server_version_num, server_version)."""
        user, database, number, version = await self._probed().fetchrow(
            "SELECT current_user, current_database(), current_setting('server_version_num')::int,"
            " current_setting('server_version')")
        return str(user), str(database), int(number), str(version)

    async def ping(self) -> None:
        await self._probed().fetchval("SELECT 1")

    async def schema_version(self) -> int:
        """The namespace's applied migration version; 0 when it has no schema."""
        conn = self._probed()
        if await conn.fetchval("SELECT to_regclass($1)", f'"{self.schema}".schema_migrations') is None:
            return 0
        return int(await conn.fetchval(f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_migrations'))

    async def may_create_schema(self) -> bool:
        """Whether the current user may create a schema (the namespace) in this database."""
        return bool(await self._probed().fetchval("SELECT has_database_privilege(current_database(), 'CREATE')"))

    async def vector_support(self) -> tuple[str | None, str | None, bool]:
        """pgvector on this server: (installed version and schema, version available to install, whether the
        namespace has recall's `vector` column)."""
        row = await self._probed().fetchrow(
            "SELECT (SELECT e.extversion || ' (schema ' || n.nspname || ')' FROM pg_extension e"
            "         JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'),"
            "       (SELECT default_version FROM pg_available_extensions WHERE name = 'vector'),"
            "       EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            "                JOIN pg_namespace n ON n.oid = c.relnamespace"
            "                WHERE n.nspname = $1 AND c.relname = 'message_vectors' AND a.attname = 'vec'"
            "                  AND NOT a.attisdropped)", self.schema)
        return row[0], row[1], bool(row[2])

    async def tables_not_writable(self) -> list[str]:
        """The namespace's tables the current user may not read and write, by name."""
        return [r[0] for r in await self._probed().fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1"
            " AND c.relkind = 'r' AND NOT has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') ORDER BY 1",
            self.schema)]
