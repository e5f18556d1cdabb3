"""LangGraph checkpointer on the hybrid engine (needs `langgraph-checkpoint`, extra `agents`).

    from langchain_hybrid_memory.checkpoint import HybridSaver
    agent = create_agent(model, tools, checkpointer=HybridSaver(memory))

`store.py` (the checkpoint tables' SQL) needs no LangGraph: the engine uses it to erase a user's threads and
for retention. `saver.py` (the `BaseCheckpointSaver`) is imported when asked for.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .saver import HybridSaver

__all__ = ["HybridSaver"]


def __getattr__(name: str) -> object:
    if name == "HybridSaver":
        from .saver import HybridSaver

        return HybridSaver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
