"""Chat memory for LangChain and LlamaIndex: a Redis window over PostgreSQL, with write-behind and failover."""

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
from .history import HybridChatMessageHistory, TranscriptPage
from .memory import HybridMemory
from .messages import Context, Message
from .stats import CacheStats

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
    "SessionOwnershipError",
    "StorageUnavailableError",
    "TranscriptPage",
    "redact_url",
]
__version__ = "0.1.0"

# The agent middleware needs the `agents` extra (langchain >= 1): import it only when asked for.
_AGENT_NAMES = ("HybridMemoryMiddleware", "HybridSummarizer", "SummaryRecord", "HybridMemoryState")


def __getattr__(name: str) -> object:
    if name in _AGENT_NAMES:
        from . import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
