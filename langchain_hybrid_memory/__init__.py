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
from .memory import HybridMemory
from .messages import Context, Message
from .stats import CacheStats

__all__ = [
    "BacklogFullError",
    "CacheStats",
    "ConfigurationError",
    "Context",
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
    "redact_url",
]
__version__ = "0.1.0"
