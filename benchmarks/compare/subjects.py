"""The subjects of the comparison: ours (async, sync, through the LangChain adapter), the competitors, and the
raw floors. Each one speaks its own message types and stores; the runner only sees this uniform surface:

    batch(i, n)          n fresh native messages (built untimed)
    read(name)           what the model is given for session `name`; returns how many messages
    add(name, batch)     append
    turn(name, batch)    read the context, then append the batch (a human and an AI message)

`read`/`add`/`turn` are plain calls when `is_async` is False and coroutine functions otherwise. Session
names are shared ("s1000-3"); each subject maps a name to its own key, table row or session id, all under the
run's namespace, so that dropping the namespace (PostgreSQL schema + Redis keys `<ns>:*`) cleans up everything.

Competitors get their most favourable setup: one client object per session built before timing, one shared
connection pool, bulk prefill. That is more than a typical app does (LangChain builds a history per request).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis
import redis.asyncio as aioredis

from langchain_hybrid_memory import HybridChatMessageHistory, HybridMemory, Message

Turn = tuple[str, str]  # (role "human"/"ai", content)

# The raw equivalent of an append: push, trim to the window, refresh the TTL, in one EVALSHA.
RAW_APPEND = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass
class World:
    """What every subject may use: the namespace, shared clients, the message texts, the window size."""

    ns: str
    pg_url: str
    redis_url: str
    window: int
    contents: list[str]
    mem: HybridMemory
    rs: redis.Redis
    ra: aioredis.Redis
    ttl_ms: int

    def role(self, i: int) -> str:
        return "human" if i % 2 == 0 else "ai"

    def content(self, i: int) -> str:
        return self.contents[i % len(self.contents)]

    def pg_dsn(self) -> str:
        return self.pg_url


class Subject:
    """Base class; see the module docstring."""

    key = ""
    label = ""
    kind = "competitor"  # "ours" | "adapter" | "competitor" | "floor"
    api = "async"  # "sync" | "async" (sync subjects run in threads under mixed load)
    store = ""
    view = "full history"  # what `read` returns
    full_history = True
    cold_note: str | None = "n/a"  # None: has a cold read (cache loss); else why not
    package = ""  # distribution name, for the versions line

    def __init__(self, world: World) -> None:
        self.w = world

    @property
    def is_async(self) -> bool:
        return self.api == "async"

    async def setup(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        raise NotImplementedError

    def batch(self, i: int, n: int) -> Any:
        raise NotImplementedError

    # read / add / turn: sync or async per `api` (defined by subclasses)
    read: Any
    add: Any
    turn: Any

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any] | None:
        """Redis bytes (`MEMORY USAGE ... SAMPLES 0`) and cached messages of these sessions; None: no Redis."""
        return None

    async def mixed_turn_factory(self, clients: int) -> Any:
        """The turn function for `clients` concurrent clients (default: `turn`; PostgreSQL ones use a pool)."""
        return self.turn

    async def mixed_done(self) -> None:
        return None


async def _usage(ra: aioredis.Redis, keys: Sequence[str]) -> int:
    total = 0
    for k in keys:
        got = await ra.memory_usage(k, samples=0)
        total += int(got or 0)
    return total


# -- ours ----------------------------------------------------------------------------------------------------
class OursAsync(Subject):
    key = "ours-async"
    label = "ours (async)"
    kind = "ours"
    api = "async"
    store = "Redis window over PostgreSQL"
    full_history = False
    cold_note = None
    package = "langchain-hybrid-memory"

    @property
    def view(self) -> str:  # type: ignore[override]
        return f"summary + window of {self.w.window}"

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        mem = self.w.mem
        for start in range(0, len(turns), 1000):
            await mem.aadd_messages(name, [Message(r, c) for r, c in turns[start:start + 1000]])

    def batch(self, i: int, n: int) -> list[Message]:
        w = self.w
        return [Message(w.role(i * n + k), w.content(i * n + k)) for k in range(n)]

    async def read(self, name: str) -> int:
        return len((await self.w.mem.aget_context(name)).messages)

    async def add(self, name: str, batch: list[Message]) -> None:
        await self.w.mem.aadd_messages(name, batch)

    async def turn(self, name: str, batch: list[Message]) -> int:
        mem = self.w.mem
        ctx = await mem.aget_context(name)
        await mem.aadd_messages(name, batch)
        return len(ctx.messages)

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any]:
        ra, layout = self.w.ra, self.w.mem.keys
        window = meta = ids = 0
        cached = 0
        for n in names:
            k = layout.session(n)
            window += await _usage(ra, [k.window])
            meta += await _usage(ra, [k.meta])
            ids += await _usage(ra, [k.ids])
            cached += int(await ra.llen(k.window))
        return {"messages": cached, "sessions": len(names), "bytes": window + meta + ids, "window_bytes": window,
                "meta_bytes": meta, "ids_bytes": ids,
                "note": "window list + meta hash + idempotency id set (shared per-bucket outbox/index excluded)"}


class OursSync(OursAsync):
    key = "ours-sync"
    label = "ours (sync)"
    api = "sync"

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        return None  # shares ours (async)'s sessions

    def read(self, name: str) -> int:  # type: ignore[override]
        return len(self.w.mem.get_context(name).messages)

    def add(self, name: str, batch: list[Message]) -> None:  # type: ignore[override]
        self.w.mem.add_messages(name, batch)

    def turn(self, name: str, batch: list[Message]) -> int:  # type: ignore[override]
        mem = self.w.mem
        ctx = mem.get_context(name)
        mem.add_messages(name, batch)
        return len(ctx.messages)

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any] | None:  # type: ignore[override]
        return None  # the same keys as ours (async)


class OursLangChain(Subject):
    """Ours through the LangChain adapter: what a `RunnableWithMessageHistory` app pays (one history object
    per request, LangChain message objects in and out)."""

    key = "ours-lc"
    label = "ours via HybridChatMessageHistory (async)"
    kind = "adapter"
    api = "async"
    store = "Redis window over PostgreSQL"
    full_history = False
    cold_note = "see ours"
    package = "langchain-hybrid-memory"

    @property
    def view(self) -> str:  # type: ignore[override]
        return f"summary + window of {self.w.window}"

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        return None  # shares ours' sessions

    def batch(self, i: int, n: int) -> list[Any]:
        from langchain_core.messages import AIMessage, HumanMessage
        w = self.w
        return [(HumanMessage if w.role(i * n + k) == "human" else AIMessage)(w.content(i * n + k))
                for k in range(n)]

    async def read(self, name: str) -> int:
        return len(await HybridChatMessageHistory(name, memory=self.w.mem).aget_messages())

    async def add(self, name: str, batch: list[Any]) -> None:
        await HybridChatMessageHistory(name, memory=self.w.mem).aadd_messages(batch)

    async def turn(self, name: str, batch: list[Any]) -> int:
        h = HybridChatMessageHistory(name, memory=self.w.mem)
        n = len(await h.aget_messages())
        await h.aadd_messages(batch)
        return n


# -- langchain ----------------------------------------------------------------------------------------------
def _lc_messages(turns: Sequence[Turn]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage
    return [(HumanMessage if r == "human" else AIMessage)(c) for r, c in turns]


class LCRedis(Subject):
    """langchain-community `RedisChatMessageHistory`: a Redis list per session (LPUSH per message, LRANGE 0 -1
    per read). Sync only: its async methods run the sync ones in a thread pool."""

    key = "lc-redis"
    label = "langchain-community RedisChatMessageHistory (sync)"
    api = "sync"
    store = "Redis list, whole history"
    cold_note = "no cache: Redis is its only copy (cache loss = data loss)"
    package = "langchain-community"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.prefix = f"{world.ns}:lcr:"
        self.hist: dict[str, Any] = {}

    def _h(self, name: str) -> Any:
        h = self.hist.get(name)
        if h is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from langchain_community.chat_message_histories import RedisChatMessageHistory
            h = RedisChatMessageHistory(name, url=self.w.redis_url, key_prefix=self.prefix)
            h.redis_client.close()
            h.redis_client = self.w.rs  # one shared pool instead of one per history object
            self.hist[name] = h
        return h

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        from langchain_core.messages import message_to_dict
        h = self._h(name)
        msgs = _lc_messages(turns)
        for start in range(0, len(msgs), 1000):  # what add_message does (LPUSH), in bulk
            await self.w.ra.lpush(h.key, *[json.dumps(message_to_dict(m)) for m in msgs[start:start + 1000]])

    def batch(self, i: int, n: int) -> list[Any]:
        w = self.w
        return _lc_messages([(w.role(i * n + k), w.content(i * n + k)) for k in range(n)])

    def read(self, name: str) -> int:
        return len(self._h(name).messages)

    def add(self, name: str, batch: list[Any]) -> None:
        self._h(name).add_messages(batch)

    def turn(self, name: str, batch: list[Any]) -> int:
        h = self._h(name)
        n = len(h.messages)
        h.add_messages(batch)
        return n

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any]:
        keys = [self._h(n).key for n in names]
        return {"messages": sum([int(await self.w.ra.llen(k)) for k in keys]), "sessions": len(names),
                "bytes": await _usage(self.w.ra, keys), "note": "one list per session"}


class LCPostgres(Subject):
    """langchain-postgres `PostgresChatMessageHistory` (psycopg 3, async connection): one row per message,
    `SELECT ... ORDER BY id` of the whole session per read, `executemany` + commit per add."""

    key = "lc-pg"
    label = "langchain-postgres PostgresChatMessageHistory (async)"
    api = "async"
    store = "PostgreSQL, row per message"
    cold_note = None  # no cache: every read is what a cold read is
    package = "langchain-postgres"
    table = "lc_messages"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.conn: Any = None
        self.hist: dict[str, Any] = {}
        self.pool: Any = None

    def sid(self, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.w.ns}/{name}"))  # it requires UUID session ids

    async def _connect(self) -> Any:
        import psycopg
        return await psycopg.AsyncConnection.connect(self.w.pg_dsn(), options=f"-c search_path={self.w.ns}")

    async def setup(self) -> None:
        from langchain_postgres import PostgresChatMessageHistory
        self.conn = await self._connect()
        await PostgresChatMessageHistory.acreate_tables(self.conn, self.table)

    async def close(self) -> None:
        await self.mixed_done()
        if self.conn is not None:
            await self.conn.close()

    def _h(self, name: str) -> Any:
        h = self.hist.get(name)
        if h is None:
            from langchain_postgres import PostgresChatMessageHistory
            h = self.hist[name] = PostgresChatMessageHistory(self.table, self.sid(name), async_connection=self.conn)
        return h

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        h = self._h(name)
        msgs = _lc_messages(turns)
        for start in range(0, len(msgs), 1000):
            await h.aadd_messages(msgs[start:start + 1000])

    def batch(self, i: int, n: int) -> list[Any]:
        w = self.w
        return _lc_messages([(w.role(i * n + k), w.content(i * n + k)) for k in range(n)])

    async def read(self, name: str) -> int:
        return len(await self._h(name).aget_messages())

    async def add(self, name: str, batch: list[Any]) -> None:
        await self._h(name).aadd_messages(batch)

    async def turn(self, name: str, batch: list[Any]) -> int:
        h = self._h(name)
        n = len(await h.aget_messages())
        await h.aadd_messages(batch)
        return n

    async def mixed_turn_factory(self, clients: int) -> Any:
        """Concurrent clients need their own connections: a psycopg pool (at most 16, PostgreSQL is shared)."""
        from langchain_postgres import PostgresChatMessageHistory
        from psycopg_pool import AsyncConnectionPool
        await self.mixed_done()
        size = max(1, min(clients, 16))
        self.pool = AsyncConnectionPool(self.w.pg_dsn(), min_size=size, max_size=size, open=False,
                                        kwargs={"options": f"-c search_path={self.w.ns}"})
        await self.pool.open(wait=True)
        pool, table, sid = self.pool, self.table, self.sid

        async def turn(name: str, batch: list[Any]) -> int:
            async with pool.connection() as conn:
                h = PostgresChatMessageHistory(table, sid(name), async_connection=conn)
                n = len(await h.aget_messages())
                await h.aadd_messages(batch)
                return n

        return turn

    async def mixed_done(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def count(self, names: Sequence[str]) -> int:
        cur = await self.conn.execute(f"SELECT count(*) FROM {self.table} WHERE session_id = ANY(%s)",
                                      ([uuid.UUID(self.sid(n)) for n in names],))
        row = await cur.fetchone()
        await self.conn.commit()
        return int(row[0])


# -- llama-index --------------------------------------------------------------------------------------------
def _li_messages(turns: Sequence[Turn]) -> list[Any]:
    from llama_index.core.llms import ChatMessage
    return [ChatMessage(role="user" if r == "human" else "assistant", content=c) for r, c in turns]


class LIRedis(Subject):
    """llama-index `RedisChatStore`: a Redis list per key (RPUSH per message, LRANGE 0 -1 per read)."""

    key = "li-redis"
    label = "llama-index RedisChatStore (async)"
    api = "async"
    store = "Redis list, whole history"
    cold_note = "no cache: Redis is its only copy (cache loss = data loss)"
    package = "llama-index-storage-chat-store-redis"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        from llama_index.storage.chat_store.redis import RedisChatStore
        self.store_ = RedisChatStore(redis_client=world.rs, aredis_client=world.ra)

    def k(self, name: str) -> str:
        return f"{self.w.ns}:lir:{name}"

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        msgs = _li_messages(turns)
        for start in range(0, len(msgs), 1000):  # what add_message does (RPUSH), in bulk
            await self.w.ra.rpush(self.k(name), *[m.model_dump_json() for m in msgs[start:start + 1000]])

    def batch(self, i: int, n: int) -> list[Any]:
        w = self.w
        return _li_messages([(w.role(i * n + k), w.content(i * n + k)) for k in range(n)])

    async def read(self, name: str) -> int:
        return len(await self.store_.aget_messages(self.k(name)))

    async def add(self, name: str, batch: list[Any]) -> None:
        for m in batch:  # no bulk append in BaseChatStore
            await self.store_.async_add_message(self.k(name), m)

    async def turn(self, name: str, batch: list[Any]) -> int:
        n = await self.read(name)
        await self.add(name, batch)
        return n

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any]:
        keys = [self.k(n) for n in names]
        return {"messages": sum([int(await self.w.ra.llen(k)) for k in keys]), "sessions": len(names),
                "bytes": await _usage(self.w.ra, keys), "note": "one list per session"}


class LIPostgres(Subject):
    """llama-index `PostgresChatStore`: one row per session holding a JSON[] of its messages; an add is an
    upsert with `array_cat` (the whole array is rewritten), a read fetches the array (SQLAlchemy + asyncpg)."""

    key = "li-pg"
    label = "llama-index PostgresChatStore (async)"
    api = "async"
    store = "PostgreSQL, one array row per session"
    cold_note = None
    package = "llama-index-storage-chat-store-postgres"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.store_: Any = None

    async def setup(self) -> None:
        import asyncio
        from urllib.parse import urlsplit

        from llama_index.storage.chat_store.postgres import PostgresChatStore
        u = urlsplit(self.w.pg_dsn())

        def build() -> Any:  # its constructor does blocking I/O (creates the table)
            return PostgresChatStore.from_params(
                host=u.hostname or "127.0.0.1", port=str(u.port or 5432), database=u.path.lstrip("/"),
                user=u.username or "postgres", password=u.password or "", table_name="li_chatstore",
                schema_name=self.w.ns)

        self.store_ = await asyncio.to_thread(build)

    async def close(self) -> None:
        if self.store_ is not None:
            self.store_._session.kw["bind"].dispose()
            await self.store_._async_session.kw["bind"].dispose()

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        await self.store_.aset_messages(name, _li_messages(turns))

    def batch(self, i: int, n: int) -> list[Any]:
        w = self.w
        return _li_messages([(w.role(i * n + k), w.content(i * n + k)) for k in range(n)])

    async def read(self, name: str) -> int:
        return len(await self.store_.aget_messages(name))

    async def add(self, name: str, batch: list[Any]) -> None:
        for m in batch:  # no bulk append (aset_messages replaces)
            await self.store_.async_add_message(name, m)

    async def turn(self, name: str, batch: list[Any]) -> int:
        n = await self.read(name)
        await self.add(name, batch)
        return n

    async def count(self, names: Sequence[str]) -> int:
        return sum([len(await self.store_.aget_messages(n)) for n in names])


class LIMemory(Subject):
    """llama-index `Memory.from_defaults(...)` with its default `SQLAlchemyChatStore` (SQLite in memory, via
    aiosqlite), one store shared by every session's `Memory`. `aget()` returns the active messages: bounded by
    `token_limit * chat_history_token_ratio` (30,000 * 0.7 tokens by default); every put re-reads and
    re-tokenizes the active queue to decide what to archive."""

    key = "li-memory"
    label = "llama-index Memory, default SQL store (async)"
    api = "async"
    store = "SQLite in memory (default), row per message"
    view = "token-bounded (21k tokens)"
    full_history = False
    cold_note = "default store is in-process SQLite: nothing to lose but the process"
    package = "llama-index-core"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.sql: Any = None
        self.mems: dict[str, Any] = {}

    async def setup(self) -> None:
        from llama_index.core.storage.chat_store.sql import SQLAlchemyChatStore
        self.sql = SQLAlchemyChatStore(table_name="llama_index_memory")  # Memory's default store, shared

    async def close(self) -> None:
        if self.sql is not None and self.sql._async_engine is not None:
            await self.sql._async_engine.dispose()

    def _m(self, name: str) -> Any:
        m = self.mems.get(name)
        if m is None:
            from llama_index.core.memory import Memory
            m = self.mems[name] = Memory.from_defaults(session_id=name, chat_store=self.sql)
        return m

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        m = self._m(name)
        msgs = _li_messages(turns)
        for start in range(0, len(msgs), 500):  # SQLite's bound-variable limit
            await m.aput_messages(msgs[start:start + 500])

    def batch(self, i: int, n: int) -> list[Any]:
        w = self.w
        return _li_messages([(w.role(i * n + k), w.content(i * n + k)) for k in range(n)])

    async def read(self, name: str) -> int:
        return len(await self._m(name).aget())

    async def add(self, name: str, batch: list[Any]) -> None:
        await self._m(name).aput_messages(batch)

    async def turn(self, name: str, batch: list[Any]) -> int:
        m = self._m(name)
        n = len(await m.aget())
        await m.aput_messages(batch)
        return n


# -- floors ------------------------------------------------------------------------------------------------
class FloorAsync(Subject):
    """The raw round trips of what ours does: LRANGE of the window + json.loads; EVALSHA RPUSH+LTRIM+PEXPIRE of
    compact JSON (serialised in the timed call)."""

    key = "floor-async"
    label = "raw redis.asyncio (floor)"
    kind = "floor"
    api = "async"
    store = "Redis list of bare JSON"
    full_history = False
    cold_note = "see raw asyncpg"
    package = "redis"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.script: Any = None

    @property
    def view(self) -> str:  # type: ignore[override]
        return f"window of {self.w.window}"

    def k(self, name: str) -> str:
        return f"{self.w.ns}:raw:{name}"

    async def setup(self) -> None:
        self.script = self.w.ra.register_script(RAW_APPEND)

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        tail = turns[-self.w.window:]
        now = time.time()
        await self.w.ra.rpush(self.k(name), *[self.payload((uuid.uuid4().hex, r, c), now) for r, c in tail])

    @staticmethod
    def payload(m: tuple[str, str, str], now: float) -> str:
        return json.dumps({"i": m[0], "r": m[1], "c": m[2], "t": now}, separators=(",", ":"))

    def batch(self, i: int, n: int) -> list[tuple[str, str, str]]:
        w = self.w
        return [(uuid.uuid4().hex, w.role(i * n + k), w.content(i * n + k)) for k in range(n)]

    async def read(self, name: str) -> int:
        return len([json.loads(x) for x in await self.w.ra.lrange(self.k(name), -self.w.window, -1)])

    async def add(self, name: str, batch: list[tuple[str, str, str]]) -> None:
        now = time.time()
        await self.script(keys=[self.k(name)],
                          args=[self.w.window, self.w.ttl_ms, *[self.payload(m, now) for m in batch]])

    async def turn(self, name: str, batch: list[tuple[str, str, str]]) -> int:
        n = await self.read(name)
        await self.add(name, batch)
        return n

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any]:
        keys = [self.k(n) for n in names]
        return {"messages": sum([int(await self.w.ra.llen(k)) for k in keys]), "sessions": len(names),
                "bytes": await _usage(self.w.ra, keys), "note": "bare JSON list, window only"}


class FloorSync(FloorAsync):
    key = "floor-sync"
    label = "raw redis-py (floor)"
    api = "sync"

    async def setup(self) -> None:
        self.script = self.w.rs.register_script(RAW_APPEND)

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        return None  # shares the async floor's keys

    def read(self, name: str) -> int:  # type: ignore[override]
        return len([json.loads(x) for x in self.w.rs.lrange(self.k(name), -self.w.window, -1)])

    def add(self, name: str, batch: list[tuple[str, str, str]]) -> None:  # type: ignore[override]
        now = time.time()
        self.script(keys=[self.k(name)], args=[self.w.window, self.w.ttl_ms, *[self.payload(m, now) for m in batch]])

    def turn(self, name: str, batch: list[tuple[str, str, str]]) -> int:  # type: ignore[override]
        n = self.read(name)
        self.add(name, batch)
        return n

    async def redis_usage(self, names: Sequence[str]) -> dict[str, Any] | None:  # type: ignore[override]
        return None


class FloorPG(Subject):
    """The cold-read floor: asyncpg `SELECT` of the last window of ours' `messages` table + json.loads."""

    key = "floor-pg"
    label = "raw asyncpg (cold floor)"
    kind = "floor"
    api = "async"
    store = "PostgreSQL"
    full_history = False
    cold_note = None
    package = "asyncpg"
    SQL = "SELECT seq, msg_id, body FROM messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2"

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.conn: asyncpg.Connection | None = None

    async def setup(self) -> None:
        self.conn = await asyncpg.connect(self.w.pg_dsn(), server_settings={"search_path": self.w.ns})

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def prefill(self, name: str, turns: Sequence[Turn]) -> None:
        return None  # reads ours' rows

    async def read(self, name: str) -> int:
        assert self.conn is not None
        rows = await self.conn.fetch(self.SQL, name, self.w.window)
        return len([json.loads(r[2]) for r in reversed(rows)])


class FloorMissPG(FloorPG):
    """The floor of any cache-first cold read: one redis.asyncio round trip that finds nothing (LRANGE of an absent
    key), then `FloorPG`'s query. What a cold read of ours must do at least: ask Redis, then PostgreSQL."""

    key = "floor-miss-pg"
    label = "raw redis.asyncio miss + asyncpg (cache-first cold floor)"

    async def read(self, name: str) -> int:
        assert not await self.w.ra.lrange(f"{self.w.ns}:absent:{name}", -self.w.window, -1)
        return await super().read(name)


ALL: dict[str, type[Subject]] = {c.key: c for c in (OursAsync, OursSync, OursLangChain, LCRedis, LCPostgres, LIRedis,
                                                     LIPostgres, LIMemory, FloorAsync, FloorSync)}
COMPETITORS = ("lc-redis", "lc-pg", "li-redis", "li-pg", "li-memory")
