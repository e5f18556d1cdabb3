"""The `hybrid-memory` command line: every command against the real servers, exit codes, and no secret in any
output. Commands run in-process through `main([...])`; the entry point and the demo also as a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import pytest
import redis

from langchain_hybrid_memory import CacheStats, HybridMemory, Message
from langchain_hybrid_memory.cli import main
from langchain_hybrid_memory.keys import KeyLayout
from langchain_hybrid_memory.store import migrations

from conftest import PG_URL, REDIS_URL, pg_fetch
from hybrid_memory_testing.servers import RedisServer, free_port

LATEST = max(v for v, _, _ in migrations())

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cretPW-9"  # appears in URLs below; must never be printed


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real servers through the env vars the CLI reads; no other HYBRID_MEMORY_* setting leaks in."""
    for name in list(os.environ):
        if name.startswith("HYBRID_MEMORY_") or name in ("REDIS_PASSWORD", "OPENAI_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", PG_URL)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)


@pytest.fixture
def run(cli_env: None, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _subprocess(*argv: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "langchain_hybrid_memory", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HYBRID_MEMORY_") and k not in ("DATABASE_URL", "REDIS_URL", "REDIS_PASSWORD",
                                                               "OPENAI_API_KEY")}
    env.update(extra)
    return env


def _fill(make_memory: Callable[..., HybridMemory], sessions: dict[str, str | None], n: int = 2) -> HybridMemory:
    """Write `n` messages to each session (owned by the given user) and wait until PostgreSQL has them."""
    memory = make_memory()
    for sid, user in sessions.items():
        memory.add_messages(sid, [Message("human" if i % 2 == 0 else "ai", f"{sid} #{i}") for i in range(n)],
                            user_id=user)
    memory.flush()
    return memory


def _count(namespace: str, where: str = "true") -> int:
    return int(pg_fetch(f'SELECT count(*) FROM "{namespace}".messages WHERE {where}')[0][0])


# -- usage --------------------------------------------------------------------------------------------------
def test_usage_errors_exit_2_and_help_exits_0(run):
    assert run("--help")[0] == 0
    code, out, _ = run("export", "--help")
    assert code == 0 and "SESSION" in out
    assert run()[0] == 2  # no command
    code, _, err = run("bogus")
    assert code == 2 and "invalid choice" in err
    assert run("export")[0] == 2  # SESSION missing
    assert run("warmup", "--limit", "0")[0] == 2
    code, _, err = run("--namespace", "Not-Valid", "stats")  # refused before any connection
    assert code == 2 and "namespace must match" in err


# -- migrate ------------------------------------------------------------------------------------------------
def test_migrate_applies_pending_migrations_once(run, namespace):
    code, out, _ = run("--namespace", namespace, "migrate", "--check")
    assert code == 1 and "pending" in out
    code, out, _ = run("migrate", "--namespace", namespace)  # the option is also accepted after the command
    assert code == 0 and "applied: 0001_init.sql, 0002_summaries.sql" in out
    assert [r[0] for r in pg_fetch(f'SELECT version FROM "{namespace}".schema_migrations ORDER BY 1')] == \
        [v for v, _, _ in migrations()]
    code, out, _ = run("--namespace", namespace, "migrate")
    assert code == 0 and "applied: nothing (schema is current)" in out
    code, out, _ = run("--namespace", namespace, "migrate", "--check")
    assert code == 0 and "is current" in out


def test_migrate_works_while_redis_is_down(run, namespace, monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, _ = run("--namespace", namespace, "migrate")
    assert code == 0 and "0002_summaries.sql" in out


# -- doctor -------------------------------------------------------------------------------------------------
def _lines(out: str) -> dict[str, str]:
    """doctor's check lines: check name -> status (the name is the 16-character column after the status)."""
    found = {}
    for line in out.splitlines():
        status = line[:4].strip()
        if status in ("ok", "FAIL", "skip"):
            found[line[6:22].strip()] = status
    return found


def test_doctor_all_green_on_the_real_servers(run, namespace):
    assert run("--namespace", namespace, "migrate")[0] == 0
    code, out, err = run("--namespace", namespace, "doctor")
    assert code == 0, out + err
    checks = _lines(out)
    assert checks == {name: "ok" for name in (
        "config", "redis", "redis version", "redis latency", "redis eviction", "outbox", "postgres",
        "postgres version", "postgres latency", "schema", "vector search")}, out
    assert "all 11 checks passed" in out and err == ""
    assert "no pgvector on this server: vectors are scored exactly" in out  # this machine's PostgreSQL 15
    assert f"schema version {LATEST} (current)" in out


def test_doctor_says_when_vector_search_uses_pgvector(run, namespace, monkeypatch, pgvector_pg):
    """On the embedded extra's PostgreSQL (pgvector): installed by the migration, and the namespace's column."""
    monkeypatch.setenv("DATABASE_URL", pgvector_pg.url())
    assert run("--namespace", namespace, "migrate")[0] == 0
    code, out, err = run("--namespace", namespace, "doctor")
    assert code == 0, out + err
    line = next(x for x in out.splitlines() if x[6:22].strip() == "vector search")
    assert line.startswith("ok") and "pgvector 0." in line and "HNSW index" in line, line


def test_doctor_a_fresh_namespace_is_fine_with_auto_migrate(run, namespace, monkeypatch):
    code, out, _ = run("--namespace", namespace, "doctor")
    assert code == 0 and "has no schema yet: the first use creates it" in out
    monkeypatch.setenv("HYBRID_MEMORY_AUTO_MIGRATE", "false")
    code, out, err = run("--namespace", namespace, "doctor")
    assert code == 1 and _lines(out)["schema"] == "FAIL" and "run `hybrid-memory migrate`" in out
    assert "auto_migrate is off" in err


def test_doctor_names_a_pending_migration_and_the_fix(run, namespace):
    assert run("--namespace", namespace, "migrate")[0] == 0
    pg_fetch(f'DELETE FROM "{namespace}".schema_migrations WHERE version = $1', LATEST)
    code, out, err = run("--namespace", namespace, "doctor")
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert f"schema version {LATEST - 1}; this package needs {LATEST}" in line
    assert "fix: run `hybrid-memory migrate`" in line
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("down", ["postgres", "redis", "both"])
def test_doctor_against_a_stopped_server_exits_nonzero_with_a_one_line_cause(down):
    """Nothing listens on the free ports: a subprocess, exactly as a user runs it."""
    pg = f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/x" if down != "redis" else PG_URL
    rd = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0" if down != "postgres" else REDIS_URL
    t0 = time.monotonic()
    proc = _subprocess("doctor", env=_clean_env(DATABASE_URL=pg, REDIS_URL=rd))
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    cause = proc.stderr.strip().splitlines()
    assert len(cause) == 1 and cause[0].startswith("hybrid-memory doctor:"), proc.stderr
    checks = _lines(proc.stdout)
    if down in ("postgres", "both"):
        assert checks["postgres"] == "FAIL" and checks["schema"] == "skip"
        assert "PostgreSQL at postgresql://postgres:***@127.0.0.1" in cause[0] and "is down" in cause[0]
        assert "fix: start PostgreSQL, or set DATABASE_URL" in proc.stdout
    else:
        assert checks["postgres"] == "ok"
    if down in ("redis", "both"):
        assert checks["redis"] == "FAIL" and checks["outbox"] == "skip"
        assert "Redis at redis://***@127.0.0.1" in cause[0] and "is down" in cause[0]
        assert "fix: start Redis" in proc.stdout
    else:
        assert checks["redis"] == "ok"


def test_doctor_tells_a_missing_redis_password_from_a_wrong_one(run, monkeypatch):
    server = RedisServer("--requirepass", SECRET).start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        code, out, err = run("doctor")
        assert code == 1 and "requires a password" in err and "set REDIS_PASSWORD" in out
        monkeypatch.setenv("REDIS_PASSWORD", SECRET + "x")
        code, out, err = run("doctor")
        assert code == 1 and "refused the password" in err
        monkeypatch.setenv("REDIS_PASSWORD", SECRET)
        code, out, err = run("doctor")
        assert _lines(out)["redis"] == "ok" and _lines(out)["outbox"] == "ok", out
        assert SECRET not in out + err
    finally:
        server.stop()


def test_doctor_fails_an_eviction_policy_that_could_drop_the_outbox(run, monkeypatch):
    server = RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        code, out, err = run("doctor")
        assert code == 1 and _lines(out)["redis eviction"] == "FAIL"
        assert "allkeys-lru" in err and "volatile-lru" in out
        redis.Redis(port=server.port).config_set("maxmemory-policy", "volatile-lru")
        code, out, _ = run("doctor")
        assert _lines(out)["redis eviction"] == "ok"
    finally:
        server.stop()


# -- an orphaned outbox: doctor sees it, reclaim persists it ------------------------------------------------
ORPHAN = """
import os, sys
from langchain_hybrid_memory import HybridConfig, HybridMemory, Message
m = HybridMemory(HybridConfig(database_url=sys.argv[1], redis_url=sys.argv[2], namespace=sys.argv[3],
                              write_behind_delay=3600))
m.add_messages("orphaned", [Message("human", "acknowledged"), Message("ai", "then the writer died")])
os._exit(0)  # no flush, no atexit: the writes exist only in the Redis outbox
"""


def test_doctor_flags_a_stale_outbox_and_reclaim_persists_it(run, namespace, monkeypatch):
    assert run("--namespace", namespace, "migrate")[0] == 0
    subprocess.run([sys.executable, "-c", ORPHAN, PG_URL, REDIS_URL, namespace], check=True, timeout=60)
    assert _count(namespace) == 0
    monkeypatch.setenv("HYBRID_MEMORY_RECLAIM_AFTER", "0.2")
    monkeypatch.setenv("HYBRID_MEMORY_RECLAIM_INTERVAL", "0.1")
    time.sleep(0.8)  # older than reclaim_after + 3 janitor intervals: nobody is persisting them
    code, out, err = run("--namespace", namespace, "doctor")
    assert code == 1 and _lines(out)["outbox"] == "FAIL"
    assert "1 acknowledged write batches wait in the outbox" in err and "`hybrid-memory reclaim`" in out
    monkeypatch.delenv("HYBRID_MEMORY_RECLAIM_AFTER")  # else the command's own janitor might race it to them
    monkeypatch.delenv("HYBRID_MEMORY_RECLAIM_INTERVAL")
    code, out, _ = run("--namespace", namespace, "reclaim", "--older-than", "0")
    assert code == 0 and "committed 2 orphaned messages" in out
    assert _count(namespace, "session_id = 'orphaned'") == 2
    code, out, _ = run("--namespace", namespace, "doctor")
    assert code == 0 and "no acknowledged writes waiting" in out


# -- stats --------------------------------------------------------------------------------------------------
def test_stats_as_text_and_json(run, namespace, make_memory):
    _fill(make_memory, {"a": None, "b": None})
    code, out, _ = run("--namespace", namespace, "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert set(stats) == {"namespace"} | {f.name for f in fields(CacheStats)}
    assert stats["namespace"] == namespace and stats["redis_up"] is True and stats["postgres_up"] is True
    assert stats["cached_sessions"] == 2 and stats["outbox_entries"] == 0
    code, out, _ = run("--namespace", namespace, "stats")
    assert code == 0 and "cached_sessions    2" in out and "hit_rate" in out


def test_search_finds_a_sessions_or_a_users_messages(run, namespace, make_memory):
    memory = make_memory()
    memory.add_messages("trip", [Message("human", "I am flying to Lisbon on Tuesday", id="fact"),
                                 Message("ai", "Have a good flight", id="ack")], user_id="ann")
    memory.add_messages("other", [Message("human", "Lisbon is lovely in May", id="may")], user_id="bob")
    assert memory.wait_for_index(30)
    code, out, _ = run("--namespace", namespace, "search", "flying to Lisbon", "--session", "trip", "--json")
    assert code == 0
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["id"] for h in hits] == ["fact"] and hits[0]["session_id"] == "trip" and hits[0]["score"] > 0
    code, out, _ = run("--namespace", namespace, "search", "Lisbon", "--user", "bob")
    assert code == 0 and "other" in out and "trip" not in out
    code, out, err = run("--namespace", namespace, "search", "Lisbon", "--session", "trip", "--user", "bob")
    assert code == 1 and "another user" in err
    code, _, err = run("--namespace", namespace, "search", "Lisbon")
    assert code == 1 and "never crosses users" in err
    code, out, err = run("--namespace", namespace, "search", "volcano", "--session", "trip")
    assert code == 0 and out == "" and "no match" in err


def test_commands_refuse_a_namespace_that_was_never_created(run, namespace):
    for argv in (["stats"], ["warmup"], ["export", "s"], ["forget-user", "u", "--yes"], ["reclaim"]):
        code, _, err = run("--namespace", namespace, *argv)
        assert code == 1 and f"namespace {namespace!r} does not exist" in err, argv
    assert not pg_fetch("SELECT 1 FROM pg_namespace WHERE nspname = $1", namespace)  # nothing was created


# -- warmup -------------------------------------------------------------------------------------------------
def test_warmup_loads_recent_sessions_into_redis_with_progress(run, namespace, make_memory):
    memory = _fill(make_memory, {f"s{i}": None for i in range(5)})
    for i in range(5):
        memory.invalidate_session(f"s{i}")
    r = redis.Redis.from_url(REDIS_URL)
    meta = [KeyLayout(namespace, memory.config.outbox_shards).session(f"s{i}").meta for i in range(5)]
    assert r.exists(*meta) == 0
    code, out, _ = run("--namespace", namespace, "warmup", "--limit", "3")
    assert code == 0 and "warming sessions" in out and "3/3" in out
    assert "warmed 3 of 3 recently active sessions" in out
    assert r.exists(*meta) == 3
    code, out, _ = run("--namespace", namespace, "warmup")
    assert code == 0 and "warmed 2 of 5" in out
    assert r.exists(*meta) == 5


def test_warmup_fails_when_redis_is_down(run, namespace, make_memory, monkeypatch):
    _fill(make_memory, {"s": None})
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, _, err = run("--namespace", namespace, "warmup")
    assert code == 1 and "does not answer: nothing warmed" in err


# -- export -------------------------------------------------------------------------------------------------
def test_export_writes_the_exact_transcript_as_jsonl(run, namespace, make_memory, tmp_path):
    memory = make_memory()
    sent = [Message("human", "héllo ✓"), Message("ai", "nul \x00 and a lone \ud800 surrogate"),
            Message("tool", [{"type": "text", "text": "block"}], metadata={"tool_call_id": "c1"}),
            Message("human", "4"), Message("ai", "5")]
    memory.add_messages("chat", sent, user_id="alice")
    memory.add_messages("other", [Message("human", "not this one")])
    memory.flush()
    code, out, err = run("--namespace", namespace, "export", "chat", "--page-size", "2")  # 3 pages
    assert code == 0 and "exported 5 messages" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["role"], r["content"], r["metadata"]) for r in rows] == \
        [(m.id, m.role, m.content, m.metadata) for m in sent]
    assert {r["session_id"] for r in rows} == {"chat"}
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert out.isascii()

    target = tmp_path / "chat.jsonl"
    code, _, _ = run("--namespace", namespace, "export", "chat", "-o", str(target), "--user", "alice")
    assert code == 0 and target.read_text("ascii") == out
    code, _, err = run("--namespace", namespace, "export", "chat", "--user", "mallory")
    assert code == 1 and "another user" in err


def test_export_of_an_unknown_session_fails_and_writes_no_file(run, namespace, make_memory, tmp_path):
    _fill(make_memory, {"known": None})
    target = tmp_path / "out.jsonl"
    code, out, err = run("--namespace", namespace, "export", "unknown", "-o", str(target))
    assert code == 1 and "has no messages" in err and out == ""
    assert list(tmp_path.iterdir()) == []


# -- forget-user --------------------------------------------------------------------------------------------
@pytest.fixture
def users(namespace: str, make_memory: Callable[..., HybridMemory]) -> Iterator[None]:
    _fill(make_memory, {"a1": "alice", "a2": "alice", "b1": "bob"})
    yield


class _NoStdin(io.StringIO):
    def readline(self, *args: object) -> str:  # type: ignore[override]
        raise AssertionError("--yes must not ask")


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "maybe\n"])
def test_forget_user_deletes_nothing_unless_confirmed(run, namespace, users, monkeypatch, answer):
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    code, _, err = run("--namespace", namespace, "forget-user", "alice")
    assert code == 1 and "2 sessions" in err and "nothing was deleted" in err
    assert _count(namespace) == 6


def test_forget_user_after_confirmation_or_yes(run, namespace, users, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, out, err = run("--namespace", namespace, "forget-user", "alice")
    assert code == 0 and "[y/N]" in err and "erased 2 sessions of user 'alice'" in out
    assert _count(namespace, "session_id LIKE 'a%'") == 0 and _count(namespace, "session_id = 'b1'") == 2
    monkeypatch.setattr(sys, "stdin", _NoStdin())
    code, out, _ = run("--namespace", namespace, "forget-user", "bob", "--yes")
    assert code == 0 and "erased 1 sessions of user 'bob'" in out
    assert _count(namespace) == 0


def test_retention_erases_only_idle_sessions_after_confirmation(run, namespace, users, make_memory, monkeypatch):
    from langgraph.checkpoint.base import empty_checkpoint

    from langchain_hybrid_memory.checkpoint import HybridSaver

    memory = make_memory()
    saver = HybridSaver(memory)
    for thread in ("idle-thread", "active-thread"):
        saver.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, empty_checkpoint(), {}, {})
    memory.flush()
    pg_fetch(f"UPDATE \"{namespace}\".sessions SET last_active_at = now() - interval '40 days'"
             " WHERE session_id IN ('a1', 'b1')")
    pg_fetch(f"UPDATE \"{namespace}\".checkpoints SET created_at = now() - interval '40 days'"
             " WHERE thread_id = 'idle-thread'")

    def threads() -> set[str]:
        return {r[0] for r in pg_fetch(f'SELECT thread_id FROM "{namespace}".checkpoints')}

    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, _, err = run("--namespace", namespace, "retention", "--days", "30")
    assert code == 1 and "checkpoint thread" in err and "nothing was deleted" in err
    assert _count(namespace) == 6 and threads() == {"idle-thread", "active-thread"}
    monkeypatch.setattr(sys, "stdin", _NoStdin())
    code, out, _ = run("--namespace", namespace, "retention", "--days", "30", "--yes")
    assert code == 0 and "erased 2 sessions idle for more than 30.0 days" in out and "checkpoint threads" in out
    assert _count(namespace, "session_id = 'a2'") == 2 and _count(namespace) == 2
    assert threads() == {"active-thread"}


# -- settings -----------------------------------------------------------------------------------------------
def test_every_command_honours_the_namespace_env_var(run, namespace, make_memory, monkeypatch):
    _fill(make_memory, {"s": "u"})
    monkeypatch.setenv("HYBRID_MEMORY_NAMESPACE", namespace)
    assert run("export", "s")[0] == 0
    assert json.loads(run("stats", "--json")[1])["namespace"] == namespace
    assert "warmed" in run("warmup")[1]
    assert run("migrate", "--check")[0] == 0
    assert f"namespace {namespace!r}" in run("doctor")[1]
    assert run("reclaim")[0] == 0
    assert run("forget-user", "u", "--yes")[0] == 0 and _count(namespace) == 0
    # --namespace beats the env var.
    code, _, err = run("--namespace", "t_other_ns_never_made", "export", "s")
    assert code == 1 and "t_other_ns_never_made" in err


def test_no_command_prints_a_password(run, namespace, monkeypatch):
    """Every command, with a password in both URLs and servers that are not there: failures, never secrets."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("HYBRID_MEMORY_CONNECT_TIMEOUT", "1")
    for argv in (["doctor"], ["migrate"], ["migrate", "--check"], ["stats"], ["stats", "--json"], ["warmup"],
                 ["export", "s"], ["forget-user", "u", "--yes"], ["reclaim"], ["search", "x", "--user", "u"]):
        code, out, err = run("--namespace", namespace, *argv)
        assert code == 1, argv
        assert err.strip(), argv
        assert SECRET not in out + err, argv
        assert "***" in out + err, argv  # the URL is named, redacted


def test_error_texts_that_quote_a_url_are_scrubbed(monkeypatch):
    """Third-party errors may quote a DSN verbatim: any password from the environment is masked, encoded or not."""
    from langchain_hybrid_memory.cli import _scrub

    monkeypatch.setenv("DATABASE_URL", "postgresql://app:p%40ss-w0rd@db:5432/x")
    monkeypatch.setenv("REDIS_PASSWORD", "r3d1s-pw")
    text = _scrub("cannot connect to postgresql://app:p%40ss-w0rd@db:5432/x (p@ss-w0rd), AUTH r3d1s-pw failed")
    assert "w0rd" not in text and "r3d1s" not in text and text.count("***") == 3
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:@db/x")  # an empty password hides nothing else
    monkeypatch.delenv("REDIS_PASSWORD")
    assert _scrub("plain text") == "plain text"


def test_the_module_entry_point_returns_the_exit_code():
    proc = _subprocess("stats", "--limit", "3", env=_clean_env())
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


# -- demo ---------------------------------------------------------------------------------------------------
def test_demo_without_configured_servers_starts_embedded_ones(tmp_path):
    proc = _subprocess("demo", "--turns", "12", "--data-dir", str(tmp_path / "data"),
                       env=_clean_env(XDG_RUNTIME_DIR=str(tmp_path)), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "DATABASE_URL / REDIS_URL are not set: starting embedded PostgreSQL and Redis" in out
    assert "offline model" in out and "persisted in PostgreSQL                    24 messages" in out
    recall = out[out.index("recall: "):out.index("failover: ")]  # the fact of turn 1, out of the window
    assert "1 earlier message(s) added" in recall and "planning a trip to Lisbon. (turn 1)" in recall
    assert "failover: Redis is killed mid-conversation" in out and "Redis is back" in out
    assert "cache hit rate" in out
