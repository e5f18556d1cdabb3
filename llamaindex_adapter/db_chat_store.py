"""`HybridDBChatStore`: a LlamaIndex `AsyncDBChatStore` (the store behind `Memory`) over `HybridMemory`."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms import ChatMessage
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus

from langchain_hybrid_memory import HybridConfig, HybridMemory, Message, Mode
from langchain_hybrid_memory.messages import check_user_id

from ._convert import active_session_id, archived_session_id, from_fresh_engine, key_of, to_engine_many
from .chat_store import (
    EngineHolder,
    KeyLocks,
    aadd_all,
    aclear,
    adelete_at,
    alist_keys,
    aread,
    position,
    resolve_memory,
    validate,
)

# Metadata key of an archived copy: the seq the message had in the active session. Messages of both statuses
# are listed in that order (sequence numbers are microsecond clocks, comparable across sessions), so an
# archived message keeps its place in the conversation.
ORIGIN_KEY = "llamaindex_origin_seq"


class HybridDBChatStore(EngineHolder, AsyncDBChatStore):
    """LlamaIndex `Memory` store: ACTIVE messages (the FIFO queue) and ARCHIVED ones, on Redis + PostgreSQL.

    Layout: the ACTIVE messages of a key are the engine session `active_session_id(key)` (the key itself,
    the same conversation `HybridChatStore` and LangChain see); the ARCHIVED ones are a second session,
    `archived_session_id(key)` (an injective name no key maps to). Archiving copies the oldest ACTIVE messages
    to the archived session under their engine ids (so a retried archive never duplicates them) and then
    deletes them from the active one by seq (so a message appended meanwhile is untouched). Listing all
    statuses merges both sessions in conversation order, and lists a message caught in both (a crash
    between the two steps) once.

    Every call that writes is serialised per key within this process, across threads and event loops, so
    concurrent archivers never archive the same messages twice, writers never lose a message, and what is
    archived is always the oldest. Across processes the engine has no multi-session transaction: two
    processes archiving the same key at the same instant may both return the same messages (nothing is lost
    or duplicated in storage).

    `delete_message(key, idx)` takes a position among the ACTIVE messages (0 = oldest); this store has no
    row ids. `set_messages` replaces the messages of every status, like LlamaIndex's SQL store. Every call
    returns new `ChatMessage` objects (`Memory` edits what it gets). `count_messages` reads the messages
    (the engine has no count call).
    """

    namespace: str = Field(default="", description="PostgreSQL schema and Redis key prefix of the memory.")
    mode: str = Field(default=Mode.HYBRID.value, description="The memory's storage mode.")
    ttl: float = Field(default=7200.0, description="Seconds a cached window lives in Redis after its last use.")
    user_id: str | None = Field(default=None, description="Owner of every key written through this store.")
    summarize_active: bool = Field(default=False, description="Let the engine summarize ACTIVE sessions too.")

    _memory: HybridMemory = PrivateAttr()
    _owns_memory: bool = PrivateAttr(default=False)
    _locks: KeyLocks = PrivateAttr(default_factory=KeyLocks)
    _switched_off: set[str] = PrivateAttr(default_factory=set)

    def __init__(self, memory: HybridMemory | None = None, *, config: HybridConfig | None = None,
                 user_id: str | None = None, summarize_active: bool = False, **data: Any) -> None:
        """`memory`: the engine to use (shared, not closed by `aclose`). Without it, one is built from `config`
        or the environment and owned by this store.

        With a memory that auto-summarizes, the engine summarizes the ARCHIVED sessions (what
        `HybridSummaryBlock` shows). `Memory` bounds the ACTIVE queue itself, so summarizing it would only cost
        LLM calls: unless `summarize_active`, the store turns the engine's per-session switch off for each
        ACTIVE session it writes (a LangChain view of the same session then shows no summary either)."""
        mem, owned = resolve_memory(memory, config, data)
        cfg = mem.config
        fields: dict[str, Any] = {"namespace": cfg.namespace, "mode": cfg.mode.value, "ttl": cfg.session_ttl,
                                  "user_id": check_user_id(user_id, cfg.max_session_id_length),
                                  "summarize_active": summarize_active}
        super().__init__(**fields)
        self._memory = mem
        self._owns_memory = owned

    @classmethod
    def class_name(cls) -> str:
        return "HybridDBChatStore"

    # -- helpers -----------------------------------------------------------------------------------------
    def _sids(self, key: str, status: MessageStatus | None) -> list[str]:
        if status is None:
            return [archived_session_id(key), active_session_id(key)]
        if status == MessageStatus.ARCHIVED:
            return [archived_session_id(key)]
        if status == MessageStatus.ACTIVE:
            return [active_session_id(key)]
        raise ValueError(f"unknown message status {status!r}")

    async def _read(self, key: str, status: MessageStatus | None, limit: int | None = None) -> list[Message]:
        """Engine messages of `status` (None: all) in conversation order; `limit` reads only that many."""
        if status == MessageStatus.ACTIVE:  # one session: its seq order is the conversation order
            return await aread(self._memory, active_session_id(key), self.user_id, limit)
        # Active first: an archive copies before it deletes, so a message being archived meanwhile is seen in
        # one session or both (listed once), never in neither.
        active = await aread(self._memory, active_session_id(key), self.user_id) if status is None else []
        archived = await aread(self._memory, archived_session_id(key), self.user_id)
        seen = {m.id for m in archived}
        merged = archived + [m for m in active if m.id not in seen]
        merged.sort(key=_order)
        return merged if limit is None else merged[:limit]

    # -- reads -------------------------------------------------------------------------------------------
    async def get_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE,
                           limit: int | None = None, offset: int | None = None) -> list[ChatMessage]:
        """Messages of `status` (None: every status), oldest first; `offset` skips, `limit` caps."""
        skip = _non_negative(offset, "offset") or 0
        cap = _non_negative(limit, "limit")
        self._sids(key, status)  # validates key and status
        rows = await self._read(key, status, None if cap is None else skip + cap)
        return [from_fresh_engine(m) for m in rows[skip:]]

    async def count_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE) -> int:
        self._sids(key, status)
        return len(await self._read(key, status))

    async def get_keys(self) -> list[str]:
        """Every key with messages of any status (of `user_id`, when set), sorted."""
        out: set[str] = set()
        for sid in await alist_keys(self._memory, self.user_id):
            parsed = key_of(sid)
            if parsed is not None:
                out.add(parsed[0])
        return sorted(out)

    # -- writes ------------------------------------------------------------------------------------------
    async def add_message(self, key: str, message: ChatMessage,
                          status: MessageStatus = MessageStatus.ACTIVE) -> None:
        await self.add_messages(key, [message], status)

    async def add_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        sid = self._status_sid(key, status)
        batch = to_engine_many(list(messages))
        # Under the key's lock: an append racing an archive could otherwise take a sequence number below a
        # message the archive already saw (the engine makes a write visible just after numbering it).
        async with self._locks.ahold(active_session_id(key)):
            await self._before_write(sid)
            await aadd_all(self._memory, sid, batch, self.user_id)

    async def _before_write(self, sid: str) -> None:
        """Turn the engine's summaries off for an ACTIVE session (once per session and store)."""
        if self.summarize_active or not self._memory.config.enable_auto_summarize or sid in self._switched_off:
            return
        parsed = key_of(sid)
        if parsed is None or parsed[1]:
            return  # archived sessions are the ones to summarize
        await self._memory.aset_auto_summarize(sid, False)
        self._switched_off.add(sid)

    async def set_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        """Replace every message of `key` (all statuses) with `messages`, stored with `status`."""
        sid = self._status_sid(key, status)
        batch = to_engine_many(list(messages))
        validate(self._memory, batch)  # nothing is erased if a message is refused
        async with self._locks.ahold(active_session_id(key)):
            await self._clear(key, None)
            await self._before_write(sid)
            await aadd_all(self._memory, sid, batch, self.user_id, checked=True)

    def _status_sid(self, key: str, status: MessageStatus | None) -> str:
        if status is None:
            raise ValueError("a message needs a status (ACTIVE or ARCHIVED)")
        return self._sids(key, status)[0]

    # -- deletes -----------------------------------------------------------------------------------------
    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        """Delete the messages of `status` (None: every status)."""
        async with self._locks.ahold(active_session_id(key)):
            await self._clear(key, status)

    async def _clear(self, key: str, status: MessageStatus | None) -> None:
        for sid in self._sids(key, status):
            await aclear(self._memory, sid, self.user_id)
            self._switched_off.discard(sid)  # clearing deletes the session's switch with it

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the ACTIVE message at position `idx` (0 = oldest) and return it; None when out of range."""
        return await adelete_at(self._memory, self._locks, active_session_id(key), self.user_id, idx)

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Delete the `n` oldest ACTIVE messages and return them."""
        sid = active_session_id(key)
        if position(n) <= 0:
            return []
        async with self._locks.ahold(sid):
            oldest = await aread(self._memory, sid, self.user_id, n)
            if oldest:
                await self._memory.adelete_messages(sid, [_seq(m) for m in oldest], user_id=self.user_id)
        return [from_fresh_engine(m) for m in oldest]

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        """Move the `n` oldest ACTIVE messages to ARCHIVED and return them."""
        sid = active_session_id(key)
        archive = archived_session_id(key)
        if position(n) <= 0:
            return []
        async with self._locks.ahold(sid):
            oldest = await aread(self._memory, sid, self.user_id, n)
            if not oldest:
                return []
            # Copy first, delete second: a crash in between leaves the messages in both sessions (listed
            # once, and the retried archive re-adds them under the same ids: a no-op), never in neither.
            copies = [Message(role=m.role, content=m.content, id=m.id,
                              metadata={**m.metadata, ORIGIN_KEY: m.metadata.get(ORIGIN_KEY, m.seq)},
                              created_at=m.created_at) for m in oldest]
            await aadd_all(self._memory, archive, copies, self.user_id)
            await self._memory.adelete_messages(sid, [_seq(m) for m in oldest], user_id=self.user_id)
        return [from_fresh_engine(m) for m in oldest]


def _order(msg: Message) -> int:
    origin = msg.metadata.get(ORIGIN_KEY) if isinstance(msg.metadata, dict) else None
    return origin if isinstance(origin, int) else (msg.seq or 0)


def _seq(msg: Message) -> int:
    assert msg.seq is not None  # every stored message has one
    return msg.seq


def _non_negative(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    got = position(value)
    if got < 0:
        raise ValueError(f"{name} must be a non-negative int")
    return got
