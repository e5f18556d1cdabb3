"""LlamaIndex `ChatMessage` <-> engine `Message`, and the key <-> session id mapping shared by the stores.

A `ChatMessage` is stored as:

- `role`: its role value ("user", "assistant", "system", "tool", ...);
- `content`: the text itself when the message is exactly one text block (so plain chats stay readable in
  PostgreSQL and by the LangChain adapter and the summarizer), otherwise the list of its blocks as LlamaIndex
  dumps them in JSON mode, each with an extra `"type"` (= `block_type`) that LangChain readers and the
  summarizer understand;
- `metadata["llamaindex"]`: the marker of our own messages, with `additional_kwargs` (JSON mode); the
  well-known keys `tool_calls`, `tool_call_id` and `name` sit at the top level of `metadata`, where the
  summarizer and the LangChain adapter look for them.

The round trip is lossless at the JSON level: `from_engine(to_engine(m)).model_dump(mode="json")` equals
`m.model_dump(mode="json")` (bytes in `additional_kwargs` become base64 text, as in every LlamaIndex store).
Messages written by other adapters (LangChain) are mapped by role, with their text, images and tool calls.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ContentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from pydantic import TypeAdapter, ValidationError

from langchain_hybrid_memory import InvalidSessionIdError, Message

log = logging.getLogger("llamaindex_adapter")

LI_KEY = "llamaindex"  # metadata key marking (and holding the fields of) a message stored by this adapter
LIFTED = ("tool_calls", "tool_call_id", "name")  # additional_kwargs keys also readable by other adapters

_ROLES = {r.value for r in MessageRole}
_FOREIGN_ROLES = {"human": MessageRole.USER, "ai": MessageRole.ASSISTANT}
_BLOCK: TypeAdapter[Any] = TypeAdapter(ContentBlock)

# -- keys and sessions ------------------------------------------------------------------------------------
# One reserved, printable prefix character. Keys that do not start with it are their own session id, so a
# HybridChatStore key, a HybridDBChatStore key and a LangChain session id name the same conversation. The
# mapping stays injective: a key that does start with it is escaped (`P a: key`), archived sessions live under
# `P r: key` and a summary block's own sessions under `P s: key`, which no other key maps to.
PREFIX = "\u241e"  # SYMBOL FOR RECORD SEPARATOR
_ACTIVE_ESC = PREFIX + "a:"
_ARCHIVED = PREFIX + "r:"
_SUMMARY = PREFIX + "s:"


def active_session_id(key: str) -> str:
    """The engine session holding `key`'s (active) messages."""
    _check_key(key)
    return _ACTIVE_ESC + key if key.startswith(PREFIX) else key


def archived_session_id(key: str) -> str:
    """The engine session holding `key`'s archived messages (HybridDBChatStore)."""
    _check_key(key)
    return _ARCHIVED + key


def summary_session_id(key: str) -> str:
    """The engine session a `HybridSummaryBlock(ingest=True)` writes the messages it is given to."""
    _check_key(key)
    return _SUMMARY + key


def key_of(session_id: str) -> tuple[str, bool] | None:
    """(key, archived) for an engine session id made by the functions above; None for ids they never make."""
    if not session_id.startswith(PREFIX):
        return session_id, False
    if session_id.startswith(_ACTIVE_ESC):
        return session_id[len(_ACTIVE_ESC):], False
    if session_id.startswith(_ARCHIVED):
        return session_id[len(_ARCHIVED):], True
    return None


def _check_key(key: object) -> None:
    # The engine validates the resulting session id (length, control characters); this catches the type
    # first so that the error names the key rather than a derived id.
    if not isinstance(key, str):
        raise InvalidSessionIdError(f"key must be a str, not {type(key).__name__}")


# -- messages ---------------------------------------------------------------------------------------------
def to_engine(message: ChatMessage) -> Message:
    """Convert one `ChatMessage` to an engine `Message` (a fresh id; the engine assigns `seq`)."""
    if not isinstance(message, ChatMessage):
        raise TypeError(f"expected a llama_index ChatMessage, not {type(message).__name__}")
    dumped = message.model_dump(mode="json")
    blocks: list[dict[str, Any]] = dumped["blocks"]
    content: str | list[Any]
    if len(blocks) == 1 and blocks[0].get("block_type") == "text" and set(blocks[0]) == {"block_type", "text"}:
        content = blocks[0]["text"]
    else:
        content = [{"type": b.get("block_type"), **b} for b in blocks]
    kwargs: dict[str, Any] = dumped["additional_kwargs"]
    metadata: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in LIFTED:
            metadata[k] = v
        else:
            rest[k] = v
    metadata[LI_KEY] = {"additional_kwargs": rest} if rest else {}
    return Message(role=str(dumped["role"]), content=content, metadata=metadata)


def to_engine_many(messages: list[ChatMessage]) -> list[Message]:
    return [to_engine(m) for m in messages]


def from_engine(message: Message) -> ChatMessage:
    """Convert an engine `Message` to a new `ChatMessage` sharing nothing with it (`Memory` edits what it gets)."""
    return from_fresh_engine(Message(role=message.role, content=copy.deepcopy(message.content), id=message.id,
                                     metadata=copy.deepcopy(message.metadata), seq=message.seq,
                                     created_at=message.created_at))


def from_fresh_engine(message: Message) -> ChatMessage:
    """`from_engine` for a message nobody else holds (the engine decodes a new one on every read): no copy."""
    meta = message.metadata if isinstance(message.metadata, dict) else {}
    ours = meta.get(LI_KEY)
    if isinstance(ours, dict) and message.role in _ROLES:
        kwargs: dict[str, Any] = {k: meta[k] for k in LIFTED if k in meta}
        rest = ours.get("additional_kwargs")
        if isinstance(rest, dict):
            kwargs.update(rest)
        return _build(MessageRole(message.role), _blocks_of(message.content), kwargs)
    return _foreign(message, meta)


def _blocks_of(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [TextBlock(text=content)]
    if not isinstance(content, list):
        return [TextBlock(text=json.dumps(content, ensure_ascii=False))]
    out: list[Any] = []
    for raw in content:
        block = _block(raw)
        if block is not None:
            out.append(block)
    return out


def _block(raw: Any) -> Any:
    if isinstance(raw, str):
        return TextBlock(text=raw)
    if not isinstance(raw, dict):
        return TextBlock(text=json.dumps(raw, ensure_ascii=False))
    if "block_type" in raw:
        data = dict(raw)
        if data.get("type") == data["block_type"]:
            del data["type"]  # ours: the copy added for other readers
        try:
            return _BLOCK.validate_python(data)
        except ValidationError:
            # E.g. an ImageBlock whose local `path` no longer exists: keep the history readable rather than
            # failing the whole read; the block comes back as stored, without validation.
            cls = _BLOCK_CLASSES.get(str(data.get("block_type")))
            if cls is None:
                log.warning("llamaindex_adapter: dropping an unreadable %r block", data.get("block_type"))
                return None
            return cls.model_construct(**data)
    kind = raw.get("type")
    if kind == "text" and isinstance(raw.get("text"), str):
        return TextBlock(text=raw["text"])
    if kind == "image_url":  # OpenAI / LangChain
        spec = raw.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if isinstance(url, str):
            detail = spec.get("detail") if isinstance(spec, dict) else None
            return ImageBlock(url=url, detail=detail)
    if kind == "image":  # LangChain standard blocks
        if isinstance(raw.get("url"), str):
            return ImageBlock(url=raw["url"], image_mimetype=raw.get("mime_type"))
        data_b64 = raw.get("base64") or raw.get("data")
        if isinstance(data_b64, str):
            return ImageBlock(image=data_b64.encode("ascii", "replace"), image_mimetype=raw.get("mime_type"))
    return TextBlock(text=json.dumps(raw, ensure_ascii=False))


def _build(role: MessageRole, blocks: list[Any], kwargs: dict[str, Any]) -> ChatMessage:
    msg = ChatMessage(role=role, additional_kwargs=kwargs)
    # Assign blocks after construction: the constructor would validate them again (and a block built with
    # `model_construct` would fail that).
    msg.blocks = blocks
    return msg


def _foreign(message: Message, meta: dict[str, Any]) -> ChatMessage:
    """A message another adapter wrote (LangChain: its fields under metadata["langchain"])."""
    raw_lc = meta.get("langchain")
    lc: dict[str, Any] = raw_lc if isinstance(raw_lc, dict) else {}
    role_name = message.role.lower()
    if role_name == "chat" and isinstance(lc.get("role"), str):
        role_name = lc["role"].lower()
    role = _FOREIGN_ROLES.get(role_name) or (MessageRole(role_name) if role_name in _ROLES else MessageRole.USER)
    blocks = _blocks_of(message.content)
    kwargs: dict[str, Any] = {}
    for k in ("tool_call_id", "name"):
        v = lc.get(k, meta.get(k))
        if isinstance(v, str) and v:
            kwargs[k] = v
    for call in lc.get("tool_calls") or ():
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            args = call.get("args")
            blocks.append(ToolCallBlock(tool_call_id=call.get("id"), tool_name=call["name"],
                                        tool_kwargs=args if isinstance(args, (dict, str)) else {}))
    return _build(role, blocks, kwargs)


def _block_classes() -> dict[str, type[Any]]:
    from llama_index.core.base.llms import types

    out: dict[str, type[Any]] = {}
    for name in dir(types):
        obj = getattr(types, name)
        field = getattr(obj, "model_fields", {}).get("block_type") if isinstance(obj, type) else None
        if field is not None and isinstance(field.default, str):
            out[field.default] = obj
    return out


_BLOCK_CLASSES = _block_classes()
