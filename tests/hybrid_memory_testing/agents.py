"""A scripted tool-calling chat model and its weather tool, for agent tests (no network)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, message_to_dict
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import Field


class ScriptedModel(BaseChatModel):
    """A tool-calling chat model that plays `replies` in order and records what it was shown."""

    replies: list[Any]  # AIMessage, or an Exception to raise
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        reply = self.replies[len(self.seen) - 1]
        if isinstance(reply, Exception):
            raise reply
        return ChatResult(generations=[ChatGeneration(message=reply.model_copy())])

    @property
    def _llm_type(self) -> str:
        return "scripted"


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"18°C and sunny in {city}"


def weather_call(call_id: str, city: str) -> AIMessage:
    """An AI message calling `get_weather`, with usage and response metadata (every field must round-trip)."""
    return AIMessage("", id=f"ai-{call_id}", tool_calls=[{"name": "get_weather", "args": {"city": city},
                                                          "id": call_id}],
                     usage_metadata={"input_tokens": 7, "output_tokens": 3, "total_tokens": 10},
                     response_metadata={"finish_reason": "tool_calls"})


def dicts(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """Messages as LangChain serializes them: equal dicts mean every field is equal."""
    return [message_to_dict(m) for m in messages]


def thread_config(thread: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}}
