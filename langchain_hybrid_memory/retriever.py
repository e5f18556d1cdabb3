"""Recall for LangChain: a `BaseRetriever` over a conversation's stored messages, and a tool for agents.

Both search the engine's full-text index (`HybridMemory.search`): one session, several, or every session of a
user, never across users.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ConfigDict

from .memory import HybridMemory
from .recall import SearchHit, message_text

TOOL_DESCRIPTION = (
    "Search the earlier messages of this conversation, including those no longer in view (summarized or "
    "long ago). Use it when the user refers to something said before that you cannot see. Input: what to "
    "look for, in a few words.")


def hit_document(hit: SearchHit) -> Document:
    """A search hit as a LangChain `Document` (the text; where it is and how well it matched as metadata)."""
    m = hit.message
    return Document(page_content=message_text(m), id=m.id,
                    metadata={"session_id": hit.session_id, "seq": hit.seq, "role": m.role, "message_id": m.id,
                              "score": hit.score, "created_at": m.created_at})


class HybridRetriever(BaseRetriever):
    """The stored messages that best match a query, as `Document`s (best first).

    Scope: `session_id` (one id or several), or `user_id` alone for every session of that user; with both,
    each session must be the user's. `k` hits at most.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: HybridMemory
    session_id: str | list[str] | None = None
    user_id: str | None = None
    k: int = 5

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun
                                ) -> list[Document]:
        hits = self.memory.search(query, session_id=self.session_id, user_id=self.user_id, k=self.k)
        return [hit_document(h) for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
                                       ) -> list[Document]:
        hits = await self.memory.asearch(query, session_id=self.session_id, user_id=self.user_id, k=self.k)
        return [hit_document(h) for h in hits]


def _format(hits: list[SearchHit]) -> str:
    if not hits:
        return "Nothing in the earlier conversation matches."
    return "\n".join(f"[{h.message.role}] {message_text(h.message)}" for h in sorted(hits, key=lambda h: h.seq))


def recall_tool(memory: HybridMemory, *, session_id: str | Sequence[str] | None = None,
                user_id: str | None = None, k: int = 5, name: str = "recall_conversation",
                description: str = TOOL_DESCRIPTION) -> BaseTool:
    """A tool an agent calls to search its conversation's earlier messages (in conversation order).

    Without `session_id` the conversation is the run's: the `thread_id` of its config (or `session_id` in the
    runtime context), as `HybridMemoryMiddleware` resolves it; the user likewise from `user_id` or the context.
    """

    # Imported here, when the tool is made (it needs the agents extra; the retriever does not), not on the event
    # loop of the tool's first async call.
    from .middleware import resolve_conversation

    def scope(config: RunnableConfig) -> tuple[str | Sequence[str], str | None]:
        """The fixed scope, else the run's conversation (its `thread_id`, the context's `session_id`)."""
        if session_id is not None:
            return session_id, user_id
        return resolve_conversation(session_id=None, user_id=user_id, session_key="session_id",
                                    user_key="user_id", runtime=None, config=config)

    def search(query: str, config: RunnableConfig) -> str:
        sid, uid = scope(config)
        return _format(memory.search(query, session_id=sid, user_id=uid, k=k))

    async def asearch(query: str, config: RunnableConfig) -> str:
        sid, uid = scope(config)
        return _format(await memory.asearch(query, session_id=sid, user_id=uid, k=k))

    return StructuredTool.from_function(func=search, coroutine=asearch, name=name, description=description)


__all__ = ["HybridRetriever", "hit_document", "recall_tool"]

