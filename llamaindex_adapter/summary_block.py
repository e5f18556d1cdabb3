"""`HybridSummaryBlock`: a LlamaIndex memory block showing the session's summary persisted in PostgreSQL."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms import ChatMessage

from langchain_hybrid_memory import Message
from langchain_hybrid_memory.summarizers import transcript

from ._block import EngineBlock
from ._convert import archived_session_id, summary_session_id, to_engine
from .chat_store import aadd_all

DEFAULT_TEMPLATE = "Summary of the earlier conversation:\n{summary}"
RECENT_HEADER = "Earlier messages, not summarized yet:"


class HybridSummaryBlock(EngineBlock):
    """The summary of the messages `Memory` moved out of its queue, made and kept by the engine.

    `Memory` archives the oldest messages when its queue is full. With `HybridDBChatStore` they land in the
    key's archived engine session, and the engine's shared summarizer (a `HybridMemory` built with
    `enable_auto_summarize=True`, usually the same one the store uses) summarizes that session progressively
    in the background; the summaries live in PostgreSQL, keyed by that session, so every process and every
    restart sees them. This block reads them: the latest summary, then (with `include_recent`) the archived
    messages it does not cover yet, so nothing falls between the summary and the queue. Reads never call an
    LLM.

    With another chat store, set `ingest=True`: the messages `Memory` hands over are then written to a session
    of the block's own (`summary_session_id(key)`) and summarized there. Without `enable_auto_summarize` the
    block shows the most recent archived messages only.
    """

    name: str = Field(default="conversation_summary", description="The name of the memory block.")
    description: str | None = Field(default="The summary of the earlier conversation, kept in PostgreSQL.")
    template: str = Field(default=DEFAULT_TEMPLATE, description="How the summary is shown; `{summary}` is it.")
    include_recent: bool = Field(default=True, description="Also show archived messages not summarized yet.")
    ingest: bool = Field(default=False, description="Store the messages `Memory` hands over (other chat stores).")

    def source_session_id(self, key: str) -> str:
        """The engine session whose summary this block shows for `key`."""
        return summary_session_id(key) if self.ingest else archived_session_id(key)

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        key = self._key(block_kwargs)
        if key is None:
            return ""
        ctx = await self._memory.aget_context(self.source_session_id(key))
        parts: list[str] = []
        if ctx.summary:
            parts.append(self.template.replace("{summary}", ctx.summary))
        if self.include_recent:
            upto = ctx.summarized_upto_seq
            recent = [m for m in ctx.messages if upto is None or (m.seq or 0) > upto]
            if recent:
                parts.append(f"{RECENT_HEADER}\n{transcript(recent)}")
        return "\n\n".join(parts)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        if not self.ingest or not messages:
            return  # the chat store's archive already holds them; the engine summarizes them from there
        by_key: dict[str, list[Message]] = {}
        for message in messages:
            kwargs = message.additional_kwargs
            key = kwargs.get("session_id") if isinstance(kwargs.get("session_id"), str) else self.session_id
            if key is None:
                continue
            # `Memory` tags each message with its session id in `additional_kwargs`; store it untagged.
            clean = message.model_copy(update={"additional_kwargs": {k: v for k, v in kwargs.items()
                                                                    if k != "session_id"}})
            by_key.setdefault(key, []).append(to_engine(clean))
        for key, batch in by_key.items():
            await aadd_all(self._memory, self.source_session_id(key), batch, None)

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        """Drop the verbatim messages first, then the whole block."""
        head, sep, _ = content.partition(f"\n\n{RECENT_HEADER}\n")
        if sep and head:
            return head
        return None
