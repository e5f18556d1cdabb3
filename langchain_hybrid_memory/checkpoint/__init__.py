"""LangGraph checkpointer on the hybrid engine (needs `langgraph-checkpoint`, extra `agents`).

    from langchain_hybrid_memory.checkpoint import HybridSaver
    agent = create_agent(model, tools, checkpointer=HybridSaver(memory))
"""

from .saver import HybridSaver

__all__ = ["HybridSaver"]
