"""LlamaIndex adapters for `langchain_hybrid_memory` (extra `llamaindex`).

- `HybridChatStore`: a `BaseChatStore` (ChatMemoryBuffer, chat engines, agents).
- `HybridDBChatStore`: an `AsyncDBChatStore` for `Memory.from_defaults(session_id=..., chat_store=...)`.
- `HybridSummaryBlock`: a `BaseMemoryBlock` showing the session's summary persisted in PostgreSQL.
- `HybridRecallBlock` / `HybridRecallRetriever`: the stored messages matching the latest question / a query.
"""

from ._convert import active_session_id, archived_session_id, from_engine, summary_session_id, to_engine
from .chat_store import HybridChatStore
from .db_chat_store import HybridDBChatStore
from .recall import HybridRecallBlock, HybridRecallRetriever, key_sessions
from .summary_block import HybridSummaryBlock

__all__ = [
    "HybridChatStore",
    "HybridDBChatStore",
    "HybridRecallBlock",
    "HybridRecallRetriever",
    "HybridSummaryBlock",
    "active_session_id",
    "archived_session_id",
    "from_engine",
    "key_sessions",
    "summary_session_id",
    "to_engine",
]
