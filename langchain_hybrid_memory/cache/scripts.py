"""The Lua scripts, loaded from `lua/` beside this file, each with a prelude that names its KEYS and first ARGV.

Every script runs on one session's keys, in the order of `keys.SessionKeys` (the prelude is built from it, so
the order is defined once), and starts its ARGV with the five values `Commands.head` builds. `common.lua`
holds what several scripts share (the TTL slide, the outbox lookup, the refill); each other file is one
operation, named for it. The checkpoint scripts (`checkpoint_*.lua`) run on a thread's keys instead
(keys.ThreadKeys), without the prelude; those that change them start with `checkpoint_lease.lua`.
"""

from __future__ import annotations

from dataclasses import fields
from importlib import resources

from ..keys import SessionKeys

# The first ARGV of every script, in order (Commands.head builds them).
COMMON_ARGV = ("A_SESSION", "A_TTL_MS", "A_CAPACITY", "A_THRESHOLD", "A_TOUCH")
KEY_NAMES = tuple(f"K_{f.name.upper()}" for f in fields(SessionKeys))

# Meta hash fields a read asks for, by position in its reply: a window read, and a context read (the summary
# fields too). The Lua side names the same fields.
READ_FIELDS = ("seq", "partial", "uid", "n")
CONTEXT_FIELDS = (*READ_FIELDS, "sum_upto", "sum_text", "unsum")


def _prelude() -> str:
    keys = f"local {', '.join(KEY_NAMES)} = {', '.join(f'KEYS[{i}]' for i in range(1, len(KEY_NAMES) + 1))}"
    argv = f"local {', '.join(COMMON_ARGV)} = {', '.join(f'ARGV[{i}]' for i in range(1, len(COMMON_ARGV) + 1))}"
    return f"{keys}\n{argv}\n"


def _load(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text("utf-8")


_COMMON = _prelude() + _load("common")


def script(name: str) -> str:
    """The full text of script `name` (lua/<name>.lua after the prelude and the shared functions)."""
    return _COMMON + _load(name)


APPEND = script("append")
FILL = script("fill")
SET_SUMMARY = script("set_summary")
OUTBOX_OF = script("outbox_of")
READ = script("read")
CHECKPOINT_PUT = _load("checkpoint_lease") + _load("checkpoint_put")
CHECKPOINT_WRITES = _load("checkpoint_lease") + _load("checkpoint_writes")
CHECKPOINT_DROP = _load("checkpoint_lease") + _load("checkpoint_drop")
CHECKPOINT_OUTBOX = _load("checkpoint_outbox")
CHECKPOINT_LATEST = _load("checkpoint_latest")

if SessionKeys(*KEY_NAMES).all != KEY_NAMES:  # Commands.head passes `.all` as KEYS: it must follow the fields
    raise RuntimeError("keys.SessionKeys.all is not in the order of its fields")
