"""Chat memory for LangChain and LlamaIndex: a Redis window over PostgreSQL, with write-behind and failover."""

from typing import TYPE_CHECKING

from .config import HybridConfig, Mode, redact_url
from .errors import (
    BacklogFullError,
    ConfigurationError,
    HybridMemoryError,
    InvalidInputError,
    InvalidMessageError,
    InvalidSessionIdError,
    InvalidUserIdError,
    MemoryClosedError,
    SessionOwnershipError,
    StorageUnavailableError,
)
from .memory import HybridMemory
from .messages import Context, Message
from .recall import SearchHit
from .stats import CacheStats

if TYPE_CHECKING:
    from .history import HybridChatMessageHistory, TranscriptPage

__all__ = [
    "BacklogFullError",
    "CacheStats",
    "ConfigurationError",
    "Context",
    "HybridChatMessageHistory",
    "HybridConfig",
    "HybridMemory",
    "HybridMemoryError",
    "InvalidInputError",
    "InvalidMessageError",
    "InvalidSessionIdError",
    "InvalidUserIdError",
    "MemoryClosedError",
    "Message",
    "Mode",
    "SearchHit",
    "SessionOwnershipError",
    "StorageUnavailableError",
    "TranscriptPage",
    "redact_url",
]
__version__ = "0.1.0"

# Imported only when asked for: the agent middleware needs the `agents` extra (langchain >= 1), and the chat
# history subclasses langchain-core's BaseChatMessageHistory, deprecated there and due to go in 2.0, so the
# engine keeps importing whatever langchain-core does.
_AGENT_NAMES = ("HybridMemoryMiddleware", "HybridSummarizer", "SummaryRecord", "HybridMemoryState")
_HISTORY_NAMES = ("HybridChatMessageHistory", "TranscriptPage")


def __getattr__(name: str) -> object:
    if name in _AGENT_NAMES:
        from . import middleware

        return getattr(middleware, name)
    if name in _HISTORY_NAMES:
        from . import history

        return getattr(history, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
