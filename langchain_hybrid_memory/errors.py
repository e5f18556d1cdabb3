"""One exception hierarchy: catch `HybridMemoryError` for everything, or a subclass by meaning."""

from __future__ import annotations


class HybridMemoryError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(HybridMemoryError, ValueError):
    """The configuration is invalid; the message names the setting."""


class InvalidInputError(HybridMemoryError, ValueError):
    """A session id, user id or message was refused before anything was written."""


class InvalidSessionIdError(InvalidInputError):
    """The session id is empty, too long, or contains characters we refuse (control characters)."""


class InvalidUserIdError(InvalidInputError):
    """The user id is empty, too long, or contains characters we refuse (control characters)."""


class InvalidMessageError(InvalidInputError):
    """A message is malformed, not JSON-serialisable, or too large."""


class SessionOwnershipError(HybridMemoryError, PermissionError):
    """The session belongs to another user than the one given."""


class StorageUnavailableError(HybridMemoryError, ConnectionError):
    """The store needed to serve this call cannot be reached (the message says which, never a secret)."""


class BacklogFullError(StorageUnavailableError):
    """PostgreSQL is unreachable and the write-behind backlog reached `max_backlog`; nothing was written."""


class MemoryClosedError(HybridMemoryError, RuntimeError):
    """The HybridMemory was closed."""


class EmbedderError(HybridMemoryError, RuntimeError):
    """The embedder failed (a vector or fused search asked for explicitly); `method="auto"` falls back to
    full-text search instead."""
