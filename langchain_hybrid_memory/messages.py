"""The framework-neutral message, its wire codec, and input validation.

One codec serves Redis and PostgreSQL: compact JSON with `ensure_ascii=True`. That escapes `\\u0000` and lone
surrogates, so the bytes are plain ASCII that any text column accepts (JSONB would reject `\\u0000`) and
`json.loads` gives back exactly the string that went in.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidMessageError, InvalidSessionIdError, InvalidUserIdError

Content = str | list[Any]

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=True).encode
_loads = json.loads
_ascii_str = json.encoder.encode_basestring_ascii  # what _dumps applies to every str


@dataclass(slots=True)
class Message:
    """One chat message as the engine stores it; adapters translate to and from their own types.

    `role` is free text ("human", "ai", "system", "tool", "user", "assistant", ...). `metadata` holds whatever
    an adapter needs for a lossless round trip (tool calls, names, usage, ...). `seq` is the per-session order,
    assigned by the engine on write; `id` makes writes idempotent.
    """

    role: str
    content: Content
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    metadata: dict[str, Any] = field(default_factory=dict)
    seq: int | None = None
    created_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "content": self.content, "metadata": self.metadata,
                "seq": self.seq, "created_at": self.created_at}


@dataclass(slots=True)
class Context:
    """What a model should see for a session: the summary of older turns (if any), then the recent window."""

    summary: str | None
    messages: list[Message]
    summarized_upto_seq: int | None = None  # the last seq the summary covers
    recalled: list[Message] = field(default_factory=list)  # older messages matching `get_context(query=...)`


def encode(msg: Message) -> str:
    """Serialise everything but `seq` (the engine prefixes it) to ASCII JSON."""
    i, r, c, t = msg.id, msg.role, msg.content, msg.created_at
    if type(c) is str and type(t) is float and t - t == 0.0 and type(i) is str and type(r) is str and not msg.metadata:
        # The usual message, byte for byte what _dumps makes of it (finite floats are written with repr), in
        # half the time: the encoder object and its dict walk cost as much as the escaping.
        return '{"i":' + _ascii_str(i) + ',"r":' + _ascii_str(r) + ',"c":' + _ascii_str(c) + ',"t":' + repr(t) + "}"
    obj: dict[str, Any] = {"i": i, "r": r, "c": c, "t": t}
    if msg.metadata:
        obj["m"] = msg.metadata
    return _dumps(obj)


def decode(seq: int, payload: str | bytes) -> Message:
    obj = _loads(payload)
    return Message(role=obj["r"], content=obj["c"], id=obj["i"], metadata=obj.get("m") or {}, seq=seq,
                   created_at=obj.get("t"))


class CorruptEntry(ValueError):
    """A cached element could not be decoded (treated as a cache miss, never returned)."""


# A cached element is the payload with the sequence number spliced in front: b'{"s":<seq>,"i":...}'. It is
# still one JSON object, so a whole window decodes with a single json.loads of "[el,el,...]".
def element(seq: int, payload: str) -> bytes:
    return f'{{"s":{seq},{payload[1:]}'.encode("ascii")


def split_element(el: bytes) -> tuple[int, str]:
    """(seq, payload) of a cached element."""
    comma = el.index(b",", 5)
    return int(el[5:comma]), "{" + el[comma + 1:].decode("ascii")


def decode_window(elements: list[bytes]) -> list[Message]:
    """Decode cached elements (oldest first) in one pass; raises CorruptEntry on anything malformed."""
    if not elements:
        return []
    try:
        objs = _loads(b"[" + b",".join(elements) + b"]")
        return [Message(o["r"], o["c"], o["i"], o.get("m") or {}, o["s"], o.get("t")) for o in objs]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CorruptEntry(f"corrupt cache entry ({type(exc).__name__})") from None


def decode_rows(rows: list[tuple[int, str, str]]) -> list[Message]:
    """Decode stored rows (seq, message id, body), oldest first, in one pass (as `decode_window`)."""
    if not rows:
        return []
    try:
        objs = _loads("[" + ",".join([body for _, _, body in rows]) + "]")
        return [Message(o["r"], o["c"], o["i"], o.get("m") or {}, seq, o.get("t"))
                for (seq, _, _), o in zip(rows, objs, strict=True)]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptEntry(f"corrupt stored message ({type(exc).__name__})") from None


def decode_element(el: bytes) -> Message:
    return decode_window([el])[0]


def has_forbidden_chars(text: str) -> bool:
    # Control characters would make ids unreadable in logs and are refused by PostgreSQL text (NUL);
    # lone surrogates cannot be encoded as UTF-8 at all.
    if text.isascii() and text.isprintable():
        return False  # the usual case (uuid hex ids), without a per-character loop
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc" or cat == "Cs":
            return True
    return False


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _inexact(obj: Any) -> str | None:
    """What JSON would silently change in `obj` (so the round trip would not be exact), or None."""
    if isinstance(obj, str):
        if obj.isascii():
            return None
        try:
            obj.encode("utf-8")  # five times faster than the search below, and fails on any surrogate
            return None
        except UnicodeEncodeError:
            pass
        # A high surrogate followed by a low one is indistinguishable from the character they encode.
        return "a surrogate pair written as two code points" if _SURROGATE_PAIR.search(obj) else None
    if obj is None or isinstance(obj, (bool, int, float)):
        return None
    if isinstance(obj, list):
        for item in obj:
            problem = _inexact(item)
            if problem:
                return problem
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                return f"a {type(key).__name__} dict key"
            problem = _inexact(key) or _inexact(value)
            if problem:
                return problem
        return None
    if isinstance(obj, tuple):
        return "a tuple (it would come back as a list)"
    return None  # anything else fails json.dumps with its own clear error


def check_session_id(session_id: object, max_length: int) -> str:
    if not isinstance(session_id, str):
        raise InvalidSessionIdError(f"session_id must be a str, not {type(session_id).__name__}")
    if not session_id or len(session_id) > max_length:
        raise InvalidSessionIdError(f"session_id must have 1 to {max_length} characters, got {len(session_id)}")
    if not session_id.isprintable() and has_forbidden_chars(session_id):
        raise InvalidSessionIdError("session_id must not contain control characters or lone surrogates")
    return session_id


def check_user_id(user_id: object, max_length: int) -> str | None:
    if user_id is None:
        return None
    if not isinstance(user_id, str):
        raise InvalidUserIdError(f"user_id must be a str or None, not {type(user_id).__name__}")
    if not user_id or len(user_id) > max_length:
        raise InvalidUserIdError(f"user_id must have 1 to {max_length} characters, got {len(user_id)}")
    if not user_id.isprintable() and has_forbidden_chars(user_id):
        raise InvalidUserIdError("user_id must not contain control characters or lone surrogates")
    return user_id


def coerce(obj: Message | dict[str, Any]) -> Message:
    """Accept a `Message` or a dict with at least role and content."""
    if isinstance(obj, Message):
        # A copy: the engine stamps created_at and seq, and must not edit the caller's object.
        return Message(obj.role, obj.content, obj.id, obj.metadata, None, obj.created_at)
    if isinstance(obj, dict):
        try:
            return Message(role=obj["role"], content=obj["content"], id=obj.get("id") or uuid.uuid4().hex,
                           metadata=dict(obj.get("metadata") or {}))
        except KeyError as exc:
            raise InvalidMessageError(f"message dict needs key {exc.args[0]!r}") from None
    raise InvalidMessageError(f"expected a Message or dict, not {type(obj).__name__}")


def prepare(messages: object, *, max_bytes: int, max_count: int, now: float | None = None
            ) -> tuple[list[Message], list[str]]:
    """Validate and encode a batch; return the messages (stamped with created_at) and their payloads.

    Everything is checked before anything is written, so a bad message leaves nothing half-written.
    """
    if isinstance(messages, (Message, dict, str, bytes)) or not hasattr(messages, "__iter__"):
        raise InvalidMessageError("messages must be a sequence of Message or dict")
    items = [coerce(m) for m in messages]
    if len(items) > max_count:
        raise InvalidMessageError(f"{len(items)} messages in one call; the limit is {max_count}")
    stamp = time.time() if now is None else now
    payloads: list[str] = []
    seen: set[str] = set()
    for index, msg in enumerate(items):
        role, content, mid = msg.role, msg.content, msg.id
        if not isinstance(role, str) or not role or len(role) > 64 or has_forbidden_chars(role):
            raise InvalidMessageError(
                f"message {index}: role must be a printable str of 1 to 64 characters")
        if not isinstance(content, (str, list)):
            raise InvalidMessageError(f"message {index}: content must be a str or a list of content blocks")
        if not isinstance(mid, str) or not mid or len(mid) > 256 or has_forbidden_chars(mid):
            raise InvalidMessageError(f"message {index}: id must be a printable str of 1 to 256 characters")
        if not isinstance(msg.metadata, dict):
            raise InvalidMessageError(f"message {index}: metadata must be a dict")
        if mid in seen:
            raise InvalidMessageError(f"message {index}: id {mid!r} appears twice in one call")
        seen.add(mid)
        if not (type(content) is str and content.isascii()) or msg.metadata:  # else nothing JSON could change
            problem = _inexact(content) or _inexact(msg.metadata)
            if problem:
                raise InvalidMessageError(f"message {index}: {problem} would not come back exactly; refused")
        if msg.created_at is None:
            msg.created_at = stamp
        try:
            payload = encode(msg)
        except (TypeError, ValueError) as exc:
            raise InvalidMessageError(f"message {index} is not JSON-serialisable: {exc}") from None
        if len(payload) > max_bytes:
            raise InvalidMessageError(
                f"message {index} is {len(payload)} bytes encoded; the limit is {max_bytes} (max_message_bytes)")
        payloads.append(payload)
    return items, payloads
