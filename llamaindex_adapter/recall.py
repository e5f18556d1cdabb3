"""Recall for LlamaIndex: a memory block bringing back what `Memory` no longer holds, and a retriever.

Both search the engine's full-text index (`HybridMemory.search`). A chat-store key's messages live in two
engine sessions (active and archived, see `_convert.py`); both are searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from langchain_hybrid_memory import HybridMemory, SearchHit
from langchain_hybrid_memory.recall import message_text
from langchain_hybrid_memory.summarizers import transcript

from ._block import EngineBlock
from ._convert import active_session_id, archived_session_id

DEFAULT_HEADER = "Earlier in this conversation (found for the latest message):"


def key_sessions(key: str) -> list[str]:
    """The engine sessions of a chat-store key: its active and its archived messages."""
    return [active_session_id(key), archived_session_id(key)]


def _text(message: ChatMessage) -> str:
    return "\n".join(b.text for b in message.blocks if hasattr(b, "text") and isinstance(b.text, str))


class HybridRecallBlock(EngineBlock):
    """The stored messages of the session that best match the latest user message and that `Memory` no longer
    holds (archived, or flushed long ago), in conversation order; at most `k`.

    `Memory` passes its session id (the chat-store key); the block searches that key's active and archived
    engine sessions. Reads never call an LLM; `Memory`'s token limit drops the block first, line by line.
    """

    name: str = Field(default="recalled_messages", description="The name of the memory block.")
    description: str | None = Field(default="Earlier messages matching the latest user message.")
    k: int = Field(default=5, ge=1, le=100, description="Messages recalled at most.")
    header: str = Field(default=DEFAULT_HEADER, description="The line before the recalled messages.")

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        key = self._key(block_kwargs)
        if key is None or not messages:
            return ""
        question = next((_text(m) for m in reversed(messages) if m.role == MessageRole.USER), "")
        if not question.strip():
            return ""
        held = {_text(m) for m in messages}
        hits = await self._memory.asearch(question[: self._memory.config.max_query_chars],
                                          session_id=key_sessions(key), k=min(100, 4 * self.k))
        fresh = [h for h in hits if message_text(h.message) not in held][: self.k]
        if not fresh:
            return ""
        return f"{self.header}\n{transcript([h.message for h in sorted(fresh, key=lambda h: h.seq)])}"

    async def _aput(self, messages: list[ChatMessage]) -> None:
        return None  # the chat store stores them; the engine indexes them

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        """Drop recalled messages from the oldest (about 4 characters a token); None once none is left."""
        head, *lines = content.split("\n")
        dropped = 0
        while lines and dropped < tokens_to_truncate:
            dropped += len(lines.pop(0)) // 4 + 1
        return "\n".join([head, *lines]) if lines else None


def hit_node(hit: SearchHit) -> NodeWithScore:
    """A search hit as a LlamaIndex node (the text; where it is and how well it matched as metadata)."""
    m = hit.message
    node = TextNode(id_=m.id, text=message_text(m),
                    metadata={"session_id": hit.session_id, "seq": hit.seq, "role": m.role,
                              "created_at": m.created_at})
    return NodeWithScore(node=node, score=hit.score)


class HybridRecallRetriever(BaseRetriever):
    """The stored messages that best match a query, as nodes (best first).

    Scope: `key` (a chat-store key: its active and archived messages), `session_id` (engine sessions, one or
    several), or `user_id` alone for every session of that user; never across users.
    """

    def __init__(self, memory: HybridMemory, *, key: str | None = None,
                 session_id: str | Sequence[str] | None = None, user_id: str | None = None, k: int = 5,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._memory = memory
        sessions = [session_id] if isinstance(session_id, str) else list(session_id or [])
        self._sessions = sessions + (key_sessions(key) if key is not None else [])
        self._user_id = user_id
        self._k = k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._memory.search(query_bundle.query_str, session_id=self._sessions or None,
                                   user_id=self._user_id, k=self._k)
        return [hit_node(h) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self._memory.asearch(query_bundle.query_str, session_id=self._sessions or None,
                                          user_id=self._user_id, k=self._k)
        return [hit_node(h) for h in hits]
