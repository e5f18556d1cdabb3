"""How a `HybridMemory` pickles: as a handle to a live engine, never as its connections or its secrets.

Unpickled (or `copy.deepcopy`-ed) in the process that pickled it, a handle is that very engine; in another
process it becomes a new engine from the same settings, shared by everything unpickled there from it, with
any password taken from that process's environment.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from .config import HybridConfig
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .memory import HybridMemory

# Live engines by token. Weak: a pickle does not keep an engine alive.
_LIVE: weakref.WeakValueDictionary[str, HybridMemory] = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()


def _live_after_fork() -> None:
    # A forked child has copies of the engines but not their threads: it revives engines of its own.
    _LIVE.clear()
    _LIVE_LOCK.release()


os.register_at_fork(before=_LIVE_LOCK.acquire, after_in_parent=_LIVE_LOCK.release, after_in_child=_live_after_fork)


def register(memory: HybridMemory) -> str:
    """A new token naming `memory` in this process's registry."""
    token = uuid.uuid4().hex
    with _LIVE_LOCK:
        _LIVE[token] = memory
    return token


def reduce(memory: HybridMemory, token: str) -> tuple[Any, tuple[Any, ...]]:
    """`memory.__reduce__`: the token, the settings without secrets, the names of those left out."""
    settings, withheld = memory.config.without_secrets()
    return revive, (token, settings, withheld, memory._core.closed)


def revive(token: str, settings: dict[str, Any], withheld: tuple[str, ...], closed: bool) -> HybridMemory:
    """Unpickle a `HybridMemory`: the live engine `token` names in this process, else a new one from the
    settings and this process's environment, registered under the same token (so further unpickles here share
    it, and pickles of it name it)."""
    from .memory import HybridMemory

    with _LIVE_LOCK:
        live = _LIVE.get(token)
    if live is not None:
        return live
    missing = [name for name in withheld if not os.environ.get(name.upper())]
    if missing:
        names = ", ".join(name.upper() for name in missing)
        raise ConfigurationError(
            f"this HybridMemory was pickled without its {', '.join(missing)} (a pickle never carries a password):"
            f" set {names} in the environment of the process that unpickles it")
    memory = HybridMemory(HybridConfig.from_env(**settings))  # no I/O until its first call
    memory._core.closed = closed  # a closed engine stays closed wherever it is unpickled
    with _LIVE_LOCK:
        live = _LIVE.setdefault(token, memory)  # another thread may have revived it meanwhile
    live._token = token
    return live
