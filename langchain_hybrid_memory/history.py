"""`HybridChatMessageHistory`: a LangChain `BaseChatMessageHistory` over `HybridMemory`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from langchain_core.messages import BaseMessage

try:
    from langchain_core.chat_history import BaseChatMessageHistory
except ImportError as exc:  # deprecated in langchain-core 1.6.4, to be removed in 2.0
    from importlib.metadata import version

    raise ImportError(
        f"HybridChatMessageHistory needs langchain_core.chat_history.BaseChatMessageHistory, which langchain-core "
        f"{version('langchain-core')} no longer has. LangChain 1.x agents keep memory with "
        "`create_agent(..., middleware=[HybridMemoryMiddleware(memory)])`; for chains with history, install "
        "langchain-core<2.") from exc

from ._lc_convert import DEFAULT_SUMMARY_TEMPLATE, build_view, from_engine, to_engine_batch
from .memory import HybridMemory
from .messages import Message, check_session_id, check_user_id


@dataclass(frozen=True, slots=True)
class TranscriptPage:
    """One page of the full transcript; pass `next_after_seq` as `after_seq` for the next (None: no more)."""

    messages: list[BaseMessage]
    next_after_seq: int | None


class HybridChatMessageHistory(BaseChatMessageHistory):
    """Chat history of one session: Redis window over PostgreSQL, with write-behind.

    `messages` is what the model should see: the persisted summary (if any) as one leading system message,
    then the recent window. The full transcript stays in PostgreSQL (`get_transcript`, `iter_transcript`).

    The constructor does no I/O, so building one per request (as `RunnableWithMessageHistory` does) is cheap.
    With `stable_view` (the default) the first read is kept until this object adds or clears messages (or
    `refresh()`): `RunnableWithMessageHistory` reads the history twice per run and stores
    `inputs[len(history):]`, so a view that changed in between (a summary landed, another writer appended)
    would drop or duplicate messages. Use one object per run, or call `refresh()` to see others' writes.
    """

    def __init__(self, session_id: str, *, memory: HybridMemory, user_id: str | None = None,
                 stable_view: bool = True, summary_template: str = DEFAULT_SUMMARY_TEMPLATE) -> None:
        super().__init__()
        limit = memory.config.max_session_id_length
        self.session_id = check_session_id(session_id, limit)
        self.user_id = check_user_id(user_id, limit)
        self.memory = memory
        self.stable_view = stable_view
        self.summary_template = summary_template
        self._snapshot: list[BaseMessage] | None = None
        # Bumped by every write: a read that started before a write must not install its (older) snapshot.
        self._generation = 0

    def __repr__(self) -> str:
        return f"HybridChatMessageHistory(session_id={self.session_id!r}, memory={self.memory!r})"

    # -- the model's view --------------------------------------------------------------------------------
    def _keep(self, generation: int, view: list[BaseMessage]) -> list[BaseMessage]:
        if self.stable_view and self._generation == generation:
            self._snapshot = view
        return list(view)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]  # base declares a writable attribute
        """Summary (one leading system message, if any) + recent window, oldest first."""
        snap = self._snapshot
        if snap is not None:
            return list(snap)
        generation = self._generation
        ctx = self.memory.get_context(self.session_id, user_id=self.user_id)
        return self._keep(generation, build_view(ctx, self.summary_template))

    async def aget_messages(self) -> list[BaseMessage]:
        snap = self._snapshot
        if snap is not None:
            return list(snap)
        generation = self._generation
        ctx = await self.memory.aget_context(self.session_id, user_id=self.user_id)
        return self._keep(generation, build_view(ctx, self.summary_template))

    def refresh(self) -> None:
        """Forget the kept view; the next read fetches a fresh one."""
        self._generation += 1
        self._snapshot = None

    # -- writes ------------------------------------------------------------------------------------------
    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append messages (chunks are stored as plain messages); re-adding a message id is a no-op."""
        batch = to_engine_batch(messages)
        if not batch:
            return
        try:
            self.memory.add_messages(self.session_id, batch, user_id=self.user_id)
        finally:
            self.refresh()

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        batch = to_engine_batch(messages)
        if not batch:
            return
        try:
            await self.memory.aadd_messages(self.session_id, batch, user_id=self.user_id)
        finally:
            self.refresh()

    def clear(self) -> None:
        """Erase the session from Redis and PostgreSQL."""
        try:
            self.memory.clear_session(self.session_id, user_id=self.user_id)
        finally:
            self.refresh()

    async def aclear(self) -> None:
        try:
            await self.memory.aclear_session(self.session_id, user_id=self.user_id)
        finally:
            self.refresh()

    # -- full transcript ---------------------------------------------------------------------------------
    @staticmethod
    def _page(rows: list[Message], limit: int | None) -> TranscriptPage:
        more = limit is not None and limit > 0 and len(rows) == limit
        return TranscriptPage([from_engine(m) for m in rows], rows[-1].seq if more and rows else None)

    def get_transcript(self, *, after_seq: int | None = None, limit: int | None = None) -> TranscriptPage:
        """Messages after `after_seq` (all of them without `limit`) from the system of record, oldest first."""
        rows = self.memory.get_messages(self.session_id, after_seq=after_seq, limit=limit, user_id=self.user_id)
        return self._page(rows, limit)

    async def aget_transcript(self, *, after_seq: int | None = None, limit: int | None = None) -> TranscriptPage:
        rows = await self.memory.aget_messages(self.session_id, after_seq=after_seq, limit=limit,
                                               user_id=self.user_id)
        return self._page(rows, limit)

    def iter_transcript(self, page_size: int = 500) -> Iterator[BaseMessage]:
        """Every message of the session, oldest first, fetched `page_size` at a time."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        after: int | None = None
        while True:
            page = self.get_transcript(after_seq=after, limit=page_size)
            yield from page.messages
            if page.next_after_seq is None:
                return
            after = page.next_after_seq

    async def aiter_transcript(self, page_size: int = 500) -> AsyncIterator[BaseMessage]:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        after: int | None = None
        while True:
            page = await self.aget_transcript(after_seq=after, limit=page_size)
            for message in page.messages:
                yield message
            if page.next_after_seq is None:
                return
            after = page.next_after_seq
