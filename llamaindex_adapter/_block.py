"""What the adapter's memory blocks share: the engine they read, and the key when `Memory` passes none."""

from __future__ import annotations

from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.memory import BaseMemoryBlock

from langchain_hybrid_memory import HybridMemory


class EngineBlock(BaseMemoryBlock[str]):
    """A `BaseMemoryBlock` over a `HybridMemory`."""

    session_id: str | None = Field(default=None, description="The key to use when `Memory` does not pass one.")

    _memory: HybridMemory = PrivateAttr()

    def __init__(self, memory: HybridMemory, **data: Any) -> None:
        super().__init__(**data)
        self._memory = memory

    @property
    def memory(self) -> HybridMemory:
        return self._memory

    def _key(self, block_kwargs: dict[str, Any]) -> str | None:
        """The chat-store key of a read: the one `Memory` passes, else the block's own."""
        key = block_kwargs.get("session_id") or self.session_id
        return key if isinstance(key, str) else None
