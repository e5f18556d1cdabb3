"""`HybridChatStore`: a LlamaIndex `BaseChatStore` (ChatMemoryBuffer, chat engines, agents) over `HybridMemory`."""

from __future__ import annotations

import asyncio
import operator
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, cast

from llama_index.core.bridge.pydantic import BaseModel, Field, PrivateAttr
from llama_index.core.llms import ChatMessage
from llama_index.core.storage.chat_store.base import BaseChatStore
from llama_index.core.storage.chat_store.loading import RECOGNIZED_CHAT_STORES

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message, Mode
from langchain_hybrid_memory.messages import check_user_id, prepare

from ._convert import active_session_id, from_fresh_engine, key_of, to_engine, to_engine_many


# -- shared by both stores ---------------------------------------------------------------------------------
class _Lock:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


class KeyLocks:
    """Per-session locks usable from any thread and any event loop.

    LlamaIndex calls a store from the caller's loop, from worker threads (`asyncio.to_thread`, the streaming
    writer thread) and from short-lived loops (`Memory`'s sync methods run each call on a new loop), so an
    `asyncio.Lock` (bound to one loop) cannot serialise them. A thread lock can; async callers poll it
    instead of blocking their loop.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()

    def __reduce__(self) -> tuple[type[KeyLocks], tuple[()]]:
        # Locks belong to this process and its threads: a pickled or deep-copied store gets fresh ones.
        return KeyLocks, ()

    def _get(self, name: str) -> _Lock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = _Lock()
            return lock

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        held = self._get(name)  # a strong reference for as long as it is held
        with held.lock:
            yield

    @asynccontextmanager
    async def ahold(self, name: str) -> AsyncIterator[None]:
        held = self._get(name)
        delay = 0.0005
        while not held.lock.acquire(blocking=False):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        try:
            yield
        finally:
            held.lock.release()


def resolve_memory(memory: HybridMemory | None, config: HybridConfig | None,
                   data: dict[str, Any]) -> tuple[HybridMemory, bool]:
    """The memory to use and whether the store owns it (built here, closed by the store's `close`).

    `data` holds what `to_dict()` wrote (namespace, mode, ttl): enough to rebuild a store from its dict, with
    the connection secrets read from the environment (DATABASE_URL, REDIS_URL, REDIS_PASSWORD), never from
    the dict.
    """
    settings = {"namespace": data.pop("namespace", None), "mode": data.pop("mode", None),
                "session_ttl": data.pop("ttl", None)}
    if data:
        raise TypeError(f"unexpected arguments: {', '.join(sorted(data))}")
    given = {k: v for k, v in settings.items() if v is not None}
    if memory is not None:
        if config is not None:
            raise TypeError("pass memory= or config=, not both")
        current = {"namespace": memory.config.namespace, "mode": memory.config.mode.value,
                   "session_ttl": memory.config.session_ttl}
        wrong = [k for k, v in given.items() if current[k] != (v.value if isinstance(v, Mode) else v)]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} disagree(s) with the memory's configuration")
        return memory, False
    if config is not None:
        if given:
            config = HybridConfig(**{**dict(config), **given})
        return HybridMemory(config), True
    return HybridMemory(HybridConfig.from_env(**given)), True


def add_all(memory: HybridMemory, sid: str, batch: list[Message], uid: str | None, *, checked: bool = False,
            ) -> None:
    """Append `batch` (any size); every message is validated before the first is written."""
    cfg = memory.config
    if len(batch) > cfg.max_messages_per_add and not checked:
        validate(memory, batch)
    for i in range(0, len(batch), cfg.max_messages_per_add):
        memory.add_messages(sid, batch[i:i + cfg.max_messages_per_add], user_id=uid)


async def aadd_all(memory: HybridMemory, sid: str, batch: list[Message], uid: str | None, *,
                   checked: bool = False) -> None:
    cfg = memory.config
    if len(batch) > cfg.max_messages_per_add and not checked:
        validate(memory, batch)
    for i in range(0, len(batch), cfg.max_messages_per_add):
        await memory.aadd_messages(sid, batch[i:i + cfg.max_messages_per_add], user_id=uid)


def read(memory: HybridMemory, sid: str, uid: str | None, limit: int | None = None) -> list[Message]:
    """The first `limit` messages of a session (all without), oldest first. One Redis round trip when the
    cached window holds the whole conversation (fewer messages than the window size), else PostgreSQL."""
    window = memory.get_recent_messages(sid, user_id=uid)
    if len(window) < memory.config.max_session_messages:
        return window if limit is None else window[:limit]
    return memory.get_messages(sid, limit=limit, user_id=uid)  # with every process's writes still waiting


async def aread(memory: HybridMemory, sid: str, uid: str | None, limit: int | None = None) -> list[Message]:
    window = await memory.aget_recent_messages(sid, user_id=uid)
    if len(window) < memory.config.max_session_messages:
        return window if limit is None else window[:limit]
    return await memory.aget_messages(sid, limit=limit, user_id=uid)


def list_keys(memory: HybridMemory, uid: str | None) -> list[str]:
    """Session ids (the engine commits every waiting write first, any process's, then lists PostgreSQL's)."""
    return memory.list_sessions(user_id=uid)


async def alist_keys(memory: HybridMemory, uid: str | None) -> list[str]:
    return await memory.alist_sessions(user_id=uid)


def clear(memory: HybridMemory, sid: str, uid: str | None) -> None:
    """Erase a session. Commits this process's write-behind queue first: until the engine serialises an erase
    with a commit already in flight for the session, that commit could land after the delete and bring the
    messages back (seen under load; reported)."""
    if memory.config.mode is not Mode.SESSION_ONLY:
        memory.flush(memory.config.pg_timeout)
    memory.clear_session(sid, user_id=uid)


async def aclear(memory: HybridMemory, sid: str, uid: str | None) -> None:
    if memory.config.mode is not Mode.SESSION_ONLY:
        await memory.aflush(memory.config.pg_timeout)
    await memory.aclear_session(sid, user_id=uid)


def position(idx: int) -> int:
    """`idx` as an int; a non-integer (a str, a float) raises TypeError, as list indexing does."""
    return operator.index(idx)


class EngineHolder:
    """`memory`, `close()`, `aclose()` and pickling, shared by both stores (which declare the two private
    attributes and are pydantic models)."""

    if TYPE_CHECKING:
        _memory: HybridMemory
        _owns_memory: bool

    @property
    def memory(self) -> HybridMemory:
        return self._memory

    def close(self) -> None:
        """Close the memory if this store built it (flushing its write-behind queue)."""
        if self._owns_memory:
            self._memory.close()

    async def aclose(self) -> None:
        if self._owns_memory:
            await self._memory.aclose()

    def __getstate__(self) -> dict[Any, Any]:
        """Pydantic's state, engine included (it pickles as a handle, see `HybridMemory.__reduce__`)."""
        # Not LlamaIndex's BaseComponent.__getstate__: it silently drops whatever fails to pickle.
        return BaseModel.__getstate__(cast(BaseModel, self))

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # Not BaseComponent.__setstate__: it re-runs __init__ with the fields, which builds another engine from
        # the environment instead of restoring the pickled one.
        BaseModel.__setstate__(cast(BaseModel, self), state)


class HybridChatStore(EngineHolder, BaseChatStore):
    """LlamaIndex chat store: a Redis window over PostgreSQL, with write-behind.

    A key is an engine session id (keys starting with U+241E are escaped), so the same conversation is
    reachable from `HybridDBChatStore`, LangChain's `HybridChatMessageHistory` and the engine itself.

    - `get_messages(key)` returns the whole conversation, oldest first, as new `ChatMessage` objects on every
      call: from the cached window when it holds the whole conversation (one Redis round trip), else from
      PostgreSQL (plus this process's writes not yet persisted).
    - `delete_message(key, idx)` deletes by position (0-based; negative or too large: None) and keeps the
      order of the others. `add_message(key, message, idx)` inserts at a position by re-appending the tail.
    - Deletes drop the cached window; the next read caches it again with the sliding TTL (`ttl`, the
      memory's `session_ttl`), so no key is ever left without one. PostgreSQL keeps messages until deleted.
    - `get_keys()` lists the keys holding messages, from PostgreSQL (never `KEYS`): a key whose last message
      is deleted is not listed.
    - Positional operations and `set_messages` are serialised per key within this process. Across processes
      they are as atomic as the engine's single calls (an append is; read-then-delete is not).
    - `to_dict()` carries the namespace, mode, TTL and user id, never a URL or password; `from_dict` rebuilds
      the store from the environment (DATABASE_URL, REDIS_URL, REDIS_PASSWORD).

    Every sync method is safe from any thread (worker threads beside a running loop included); every async
    method is native.
    """

    namespace: str = Field(default="", description="PostgreSQL schema and Redis key prefix of the memory.")
    mode: str = Field(default=Mode.HYBRID.value, description="The memory's storage mode.")
    ttl: float = Field(default=7200.0, description="Seconds a cached window lives in Redis after its last use.")
    user_id: str | None = Field(default=None, description="Owner of every key written through this store.")

    _memory: HybridMemory = PrivateAttr()
    _owns_memory: bool = PrivateAttr(default=False)
    _locks: KeyLocks = PrivateAttr(default_factory=KeyLocks)

    def __init__(self, memory: HybridMemory | None = None, *, config: HybridConfig | None = None,
                 user_id: str | None = None, **data: Any) -> None:
        """`memory`: the engine to use (shared, not closed by `close`). Without it, one is built from `config`
        or the environment and owned by this store."""
        mem, owned = resolve_memory(memory, config, data)
        cfg = mem.config
        fields: dict[str, Any] = {"namespace": cfg.namespace, "mode": cfg.mode.value, "ttl": cfg.session_ttl,
                                  "user_id": check_user_id(user_id, cfg.max_session_id_length)}
        super().__init__(**fields)
        self._memory = mem
        self._owns_memory = owned

    @classmethod
    def class_name(cls) -> str:
        return "HybridChatStore"

    # -- reads -------------------------------------------------------------------------------------------
    def get_messages(self, key: str) -> list[ChatMessage]:
        """The whole conversation of `key`, oldest first."""
        return [from_fresh_engine(m) for m in read(self._memory, active_session_id(key), self.user_id)]

    async def aget_messages(self, key: str) -> list[ChatMessage]:
        msgs = await aread(self._memory, active_session_id(key), self.user_id)
        return [from_fresh_engine(m) for m in msgs]

    def get_keys(self) -> list[str]:
        """Every key with messages (of `user_id`, when set), sorted."""
        return _keys(list_keys(self._memory, self.user_id))

    async def aget_keys(self) -> list[str]:
        return _keys(await alist_keys(self._memory, self.user_id))

    # -- writes ------------------------------------------------------------------------------------------
    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append `message`; with `idx`, insert it at that position (the messages after it are re-appended)."""
        sid = active_session_id(key)
        msg = to_engine(message)
        if idx is None:
            self._memory.add_messages(sid, [msg], user_id=self.user_id)
            return
        at = position(idx)
        with self._locks.hold(sid):
            self._reappend(sid, msg, _tail(read(self._memory, sid, self.user_id), at))

    async def async_add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        sid = active_session_id(key)
        msg = to_engine(message)
        if idx is None:
            await self._memory.aadd_messages(sid, [msg], user_id=self.user_id)
            return
        at = position(idx)
        async with self._locks.ahold(sid):
            await self._areappend(sid, msg, _tail(await aread(self._memory, sid, self.user_id), at))

    aadd_message = async_add_message  # the name several third-party stores and callers use

    def _reappend(self, sid: str, msg: Message, tail: list[Message]) -> None:
        # Delete by seq, not "everything after": a message appended meanwhile is kept (it ends up before the
        # re-appended tail) instead of being lost.
        if tail:
            self._memory.delete_messages(sid, [m.seq for m in tail if m.seq is not None], user_id=self.user_id)
        add_all(self._memory, sid, [msg, *(_copy(m) for m in tail)], self.user_id)

    async def _areappend(self, sid: str, msg: Message, tail: list[Message]) -> None:
        if tail:
            await self._memory.adelete_messages(sid, [m.seq for m in tail if m.seq is not None],
                                                user_id=self.user_id)
        await aadd_all(self._memory, sid, [msg, *(_copy(m) for m in tail)], self.user_id)

    def add_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        """Append several messages in one engine call (an extension; `add_message` in a loop also works)."""
        add_all(self._memory, active_session_id(key), to_engine_many(list(messages)), self.user_id)

    async def aadd_messages(self, key: str, messages: Sequence[ChatMessage]) -> None:
        await aadd_all(self._memory, active_session_id(key), to_engine_many(list(messages)), self.user_id)

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Replace the conversation of `key` (nothing is erased if a message is refused)."""
        sid = active_session_id(key)
        batch = to_engine_many(list(messages))
        validate(self._memory, batch)
        with self._locks.hold(sid):
            clear(self._memory, sid, self.user_id)
            add_all(self._memory, sid, batch, self.user_id, checked=True)

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        sid = active_session_id(key)
        batch = to_engine_many(list(messages))
        validate(self._memory, batch)
        async with self._locks.ahold(sid):
            await aclear(self._memory, sid, self.user_id)
            await aadd_all(self._memory, sid, batch, self.user_id, checked=True)

    # -- deletes -----------------------------------------------------------------------------------------
    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Erase the conversation of `key` from Redis and PostgreSQL; returns what it held (None: nothing)."""
        sid = active_session_id(key)
        with self._locks.hold(sid):
            gone = read(self._memory, sid, self.user_id)
            clear(self._memory, sid, self.user_id)
        return [from_fresh_engine(m) for m in gone] or None

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        sid = active_session_id(key)
        async with self._locks.ahold(sid):
            gone = await aread(self._memory, sid, self.user_id)
            await aclear(self._memory, sid, self.user_id)
        return [from_fresh_engine(m) for m in gone] or None

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the message at position `idx` (0 = oldest) and return it; None when out of range."""
        at = position(idx)
        if at < 0:
            return None
        sid = active_session_id(key)
        with self._locks.hold(sid):
            page = read(self._memory, sid, self.user_id, at + 1)
            if len(page) <= at:
                return None
            return self._deleted(page[at], self._memory.delete_messages(sid, [_seq(page[at])], user_id=self.user_id))

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        return await adelete_at(self._memory, self._locks, active_session_id(key), self.user_id, idx)

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Delete the newest message and return it; None when there is none."""
        sid = active_session_id(key)
        with self._locks.hold(sid):
            last = self._memory.get_recent_messages(sid, 1, user_id=self.user_id)
            if not last:
                return None
            return self._deleted(last[0], self._memory.delete_messages(sid, [_seq(last[0])], user_id=self.user_id))

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        sid = active_session_id(key)
        async with self._locks.ahold(sid):
            last = await self._memory.aget_recent_messages(sid, 1, user_id=self.user_id)
            if not last:
                return None
            n = await self._memory.adelete_messages(sid, [_seq(last[0])], user_id=self.user_id)
            return self._deleted(last[0], n)

    def _deleted(self, msg: Message, n: int) -> ChatMessage | None:
        return deleted(self._memory, msg, n)


def deleted(memory: HybridMemory, msg: Message, n: int) -> ChatMessage | None:
    """The deleted message, or None if it was gone already."""
    # The engine reports the rows PostgreSQL held; 0 means another process deleted it first. In session_only
    # mode there is no PostgreSQL and the count is always 0.
    if n or memory.config.mode is Mode.SESSION_ONLY:
        return from_fresh_engine(msg)
    return None


async def adelete_at(memory: HybridMemory, locks: KeyLocks, sid: str, uid: str | None,
                     idx: int) -> ChatMessage | None:
    """Delete the message at position `idx` (0 = oldest) of a session and return it; None when out of range."""
    at = position(idx)
    if at < 0:
        return None
    async with locks.ahold(sid):
        page = await aread(memory, sid, uid, at + 1)
        if len(page) <= at:
            return None
        n = await memory.adelete_messages(sid, [_seq(page[at])], user_id=uid)
    return deleted(memory, page[at], n)


def _seq(msg: Message) -> int:
    assert msg.seq is not None  # every stored message has one
    return msg.seq


def _copy(msg: Message) -> Message:
    """The same message under a new id (its old id may still be remembered by the idempotency index)."""
    return Message(role=msg.role, content=msg.content, metadata=msg.metadata, created_at=msg.created_at)


def _tail(messages: list[Message], at: int) -> list[Message]:
    """The messages from position `at` on, with `list.insert` semantics (negative: from the end)."""
    return messages[at:] if at >= 0 else messages[max(len(messages) + at, 0):]


def validate(memory: HybridMemory, batch: list[Message]) -> None:
    """Refuse a bad batch (too large, not JSON-serialisable, ...) before anything is written or erased."""
    cfg = memory.config
    prepare(batch, max_bytes=cfg.max_message_bytes, max_count=max(len(batch), 1))


def _keys(session_ids: list[str]) -> list[str]:
    out: set[str] = set()
    for sid in session_ids:
        parsed = key_of(sid)
        if parsed is not None and not parsed[1]:
            out.add(parsed[0])
    return sorted(out)


# `ChatMemoryBuffer.from_dict` / `from_string` look stores up by class name in this registry.
RECOGNIZED_CHAT_STORES.setdefault(HybridChatStore.class_name(), HybridChatStore)  # type: ignore[arg-type]
