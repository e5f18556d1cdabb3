"""LangChain messages <-> engine `Message`, and the model's view (summary + window) built from a `Context`.

A LangChain message is stored as: `role` = its type ("human", "ai", "system", "tool", "chat", "function"),
`content` = its content, `id` = its id (or a fresh one, which the engine needs for idempotence), and its other
fields under `metadata["langchain"]` (which also marks it as ours). A message added without an id records
`"id": None` there, so it comes back without one, as `InMemoryChatMessageHistory` returns it; only the agent
middleware asks for the engine's id instead (graph state needs one, and a stable one keeps re-adds idempotent).
`tool_calls`, `tool_call_id` and `name` are copied to the top level of `metadata` too, where every reader looks
for them (the engine's summarizer prompt, the LlamaIndex adapter).
Fields come from `message_to_dict` and go back through `messages_from_dict`, never `load`/`loads`: stored data
can only ever become a plain message, not an arbitrary object.
"""

from __future__ import annotations

import hashlib
import unicodedata
import uuid
from collections.abc import Iterable
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    message_chunk_to_message,
    message_to_dict,
    messages_from_dict,
)

from .errors import InvalidMessageError
from .messages import Context, Message

LC_KEY = "langchain"  # metadata key holding (and marking) the LangChain fields
LIFTED = ("tool_calls", "tool_call_id", "name")  # also at the top level of metadata, for other readers
# `additional_kwargs["lc_source"]` of a summary message: the mark LangChain's SummarizationMiddleware uses too.
SUMMARY_SOURCE = "summarization"
SUMMARY_ID_PREFIX = "hybrid-summary-"
DEFAULT_SUMMARY_TEMPLATE = "Summary of the earlier conversation:\n{summary}"

_STORED_TYPES = frozenset({"human", "ai", "system", "tool", "chat", "function"})
# Defaults the message classes treat exactly like an absent field, so dropping them keeps rows small and readable
# without changing what comes back.
_EMPTY: tuple[Any, ...] = (None, {}, [], False, "")


def engine_id(lc_id: str | None) -> str:
    """The engine id for a LangChain id: the id itself when the engine accepts it, else a stable hash of it."""
    if lc_id is None:
        return uuid.uuid4().hex
    if 0 < len(lc_id) <= 256 and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in lc_id):
        return lc_id
    # Deterministic, so re-adding the same message stays idempotent.
    return "lcid-" + hashlib.sha256(lc_id.encode("utf-8", "surrogatepass")).hexdigest()


def _is_empty_default(cls: type[BaseMessage], key: str, value: Any) -> bool:
    field = cls.model_fields.get(key)
    if field is None or field.is_required():
        return False
    default = field.get_default(call_default_factory=True)
    return bool(default == value and any(value == e and type(value) is type(e) for e in _EMPTY))


def to_engine(message: BaseMessage) -> Message:
    """Convert one LangChain message (chunks become plain messages) to an engine `Message`."""
    if isinstance(message, RemoveMessage):
        raise InvalidMessageError("RemoveMessage is a graph state instruction, not a message to store")
    if not isinstance(message, BaseMessage):
        raise InvalidMessageError(f"expected a LangChain BaseMessage, not {type(message).__name__}")
    message = message_chunk_to_message(message)
    dumped = message_to_dict(message)
    role, data = dumped["type"], dumped["data"]
    if role not in _STORED_TYPES:
        raise InvalidMessageError(f"cannot store LangChain message type {role!r}")
    content = data.pop("content")
    data.pop("type", None)
    lc_id = data.pop("id", None)
    fields = {k: v for k, v in data.items() if not _is_empty_default(type(message), k, v)}
    mid = engine_id(lc_id)
    if lc_id is None or mid != lc_id:
        fields["id"] = lc_id  # what the caller gave (None, or an id the engine could not take as its own)
    metadata: dict[str, Any] = {k: fields[k] for k in LIFTED if fields.get(k)}
    metadata[LC_KEY] = fields
    return Message(role=role, content=content, id=mid, metadata=metadata)


def from_engine(message: Message, *, engine_ids: bool = False) -> BaseMessage:
    """Convert an engine `Message` back to the LangChain message it was stored from.

    A message stored without an id comes back without one, unless `engine_ids` (then it carries the engine's).
    Messages written by other adapters (no LangChain fields) map by role: user/assistant/system/tool/...
    """
    fields = message.metadata.get(LC_KEY)
    if isinstance(fields, dict) and message.role in _STORED_TYPES:
        data: dict[str, Any] = {"id": message.id, **fields, "content": message.content}
        if engine_ids and data["id"] is None:
            data["id"] = message.id
        return messages_from_dict([{"type": message.role, "data": data}])[0]
    return _foreign(message)


def _foreign(message: Message) -> BaseMessage:
    meta = message.metadata
    name = meta.get("name") if isinstance(meta.get("name"), str) else None
    content: Any = message.content
    role = message.role.lower()
    if role in ("human", "user"):
        return HumanMessage(content=content, id=message.id, name=name)
    if role in ("ai", "assistant", "model"):
        calls = meta.get("tool_calls")
        if isinstance(calls, list) and calls and all(isinstance(c, dict) and "function" in c for c in calls):
            # OpenAI-format calls (as LlamaIndex keeps them): AIMessage parses them into `tool_calls`.
            return AIMessage(content=content, id=message.id, name=name, additional_kwargs={"tool_calls": calls})
        return AIMessage(content=content, id=message.id, name=name)
    if role in ("system", "developer"):
        return SystemMessage(content=content, id=message.id, name=name)
    if role == "tool":
        return ToolMessage(content=content, id=message.id, name=name,
                           tool_call_id=str(meta.get("tool_call_id") or ""))
    if role == "function":
        return FunctionMessage(content=content, id=message.id, name=name or "")
    return ChatMessage(content=content, id=message.id, name=name, role=message.role)


def to_engine_batch(messages: Iterable[BaseMessage]) -> list[Message]:
    """Convert a batch; a repeated id keeps its first message (what a second add of that id would do)."""
    out: list[Message] = []
    seen: set[str] = set()
    for lc in messages:
        msg = to_engine(lc)
        if msg.id not in seen:
            seen.add(msg.id)
            out.append(msg)
    return out


def summary_message(summary: str, upto_seq: int | None, template: str = DEFAULT_SUMMARY_TEMPLATE) -> SystemMessage:
    """The leading system message that carries the persisted summary."""
    return SystemMessage(content=template.replace("{summary}", summary),
                         id=f"{SUMMARY_ID_PREFIX}{upto_seq if upto_seq is not None else 0}",
                         additional_kwargs={"lc_source": SUMMARY_SOURCE})


def is_summary_message(message: BaseMessage) -> bool:
    """True for a summary (ours or SummarizationMiddleware's): a view artefact, never a transcript message."""
    return message.additional_kwargs.get("lc_source") == SUMMARY_SOURCE


def build_view(context: Context, template: str = DEFAULT_SUMMARY_TEMPLATE, *,
               engine_ids: bool = False) -> list[BaseMessage]:
    """What the model should see: the summary (one leading system message), then the window, oldest first.

    Window messages the summary already covers are left out, and so are leading ToolMessages: their AIMessage
    (with the tool call) fell off the window, and most providers reject a tool result without its call.
    """
    engine_msgs = context.messages
    upto = context.summarized_upto_seq
    if upto is not None:
        engine_msgs = [m for m in engine_msgs if m.seq is None or m.seq > upto]
    window = [from_engine(m, engine_ids=engine_ids) for m in engine_msgs]
    start = 0
    while start < len(window) and isinstance(window[start], ToolMessage):
        start += 1
    view = window[start:]
    if context.summary:
        view.insert(0, summary_message(context.summary, upto, template))
    return view
