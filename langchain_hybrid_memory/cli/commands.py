"""The data commands: migrate, stats, warmup, export, search, forget-user, retention and reclaim.

Each works through the engine's public API (`HybridMemory`), on a namespace that already exists (migrate
creates it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator

from .. import HybridMemory
from ..config import Mode, redact_url
from .connect import latest_migration, load_config, open_memory, stored_schema_version
from .output import EXIT_FAILURE, EXIT_OK, CliError, Progress, confirm


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the pending schema migrations (or, with --check, only say whether any are pending)."""
    # PostgreSQL only: migrations must work while Redis is down, and must not wait on it.
    config = load_config(args, auto_migrate=False, mode=Mode.PERSISTENT)
    latest = latest_migration()
    if args.check:
        found = stored_schema_version(config)
        if found < latest:
            print(f"namespace {config.namespace!r}: schema version {found}, {latest - found} migrations pending "
                  "(run `hybrid-memory migrate`)")
            return EXIT_FAILURE
        print(f"namespace {config.namespace!r}: schema version {found} is current")
        return EXIT_OK
    memory = HybridMemory(config)
    try:
        applied = memory.migrate()
    finally:
        memory.close()
    print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
    print(f"namespace {config.namespace!r}: schema version {latest}")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    """The cache stats (`HybridMemory.get_cache_stats()`), as text or JSON."""
    with open_memory(args) as memory:
        stats = {"namespace": memory.config.namespace, **memory.get_cache_stats().to_dict()}
    if args.json:
        print(json.dumps(stats))
    else:
        for key, value in stats.items():
            print(f"{key:18} {value}")
        print("(hits, latencies and counters are this process's own; memory, sessions and outbox are the servers')")
    return EXIT_OK


def cmd_warmup(args: argparse.Namespace) -> int:
    """Load the windows of the most recently active sessions into Redis, with a progress bar."""
    with open_memory(args) as memory:
        ns = memory.config.namespace
        if memory.config.mode is not Mode.HYBRID:
            raise CliError(f"warmup fills the Redis cache from PostgreSQL: mode {memory.config.mode.value} has "
                           "not both (set HYBRID_MEMORY_MODE=hybrid)")
        if not memory.redis_available:
            raise CliError(f"Redis at {redact_url(memory.config.redis_dsn())} does not answer: nothing warmed "
                           "(run `hybrid-memory doctor`)")
        bar = Progress("warming sessions")
        loaded = memory.warmup(args.limit, active_within=args.active_within, on_progress=bar.update)
        bar.close()
        if not memory.redis_available:
            raise CliError(f"Redis stopped answering during warmup, after {loaded} sessions")
    print(f"warmed {loaded} of {bar.total} recently active sessions into Redis (namespace {ns!r}); "
          f"{bar.total - loaded} were cached already or are empty")
    return EXIT_OK


def _transcript(memory: HybridMemory, session: str, user: str | None, page: int) -> Iterator[str]:
    """The session's full transcript from PostgreSQL as JSON lines, read page by page (bounded memory)."""
    after: int | None = None
    while True:
        batch = memory.get_messages(session, after_seq=after, limit=page, user_id=user)
        for message in batch:
            # ASCII JSON: exact for any content (lone surrogates, NUL), whatever the terminal's encoding.
            yield json.dumps({"session_id": session, **message.to_dict()}, ensure_ascii=True) + "\n"
        if len(batch) < page:
            return
        after = batch[-1].seq


def cmd_export(args: argparse.Namespace) -> int:
    """Write one session's transcript as JSONL (one message per line, oldest first) to stdout or a file."""
    count = 0
    with open_memory(args) as memory:
        ns = memory.config.namespace
        lines = _transcript(memory, args.session, args.user, args.page_size)
        if args.output in (None, "-"):
            for line in lines:
                sys.stdout.write(line)
                count += 1
            sys.stdout.flush()
        else:
            # Written next to the target and renamed: a failed export never leaves a truncated file behind.
            folder = os.path.dirname(os.path.abspath(args.output))
            fd, tmp = tempfile.mkstemp(prefix=".hybrid-memory-export-", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as f:
                    for line in lines:
                        f.write(line)
                        count += 1
                if count:
                    os.replace(tmp, args.output)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    if not count:
        raise CliError(f"session {args.session!r} has no messages in namespace {ns!r} (check the session id "
                       "and --namespace)")
    where = "" if args.output in (None, "-") else f" to {args.output}"
    print(f"exported {count} messages of session {args.session!r}{where}", file=sys.stderr)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    """The stored messages that best match a query, best first (full-text; fused with vectors on request)."""
    if not args.session and not args.user:
        raise CliError("give --session SESSION (repeatable) or --user USER: a search never crosses users")
    embedder = None
    if args.offline_vectors:
        from ..embeddings import OfflineEmbedder

        embedder = OfflineEmbedder()
    with open_memory(args, embedder=embedder) as memory:
        hits = memory.search(args.query, session_id=args.session, user_id=args.user, k=args.k)
    for hit in hits:
        m = hit.message
        if args.json:
            print(json.dumps({"session_id": hit.session_id, "seq": hit.seq, "score": hit.score, **m.to_dict()},
                             ensure_ascii=True))
        else:
            text = m.content if isinstance(m.content, str) else json.dumps(m.content, ensure_ascii=False)
            print(f"{hit.score:8.4f}  {hit.session_id}  #{hit.seq}  {m.role}: {text[:200]}")
    if not hits:
        print("no match", file=sys.stderr)
    return EXIT_OK


def cmd_forget_user(args: argparse.Namespace) -> int:
    """Erase every session of a user from Redis and PostgreSQL, after confirmation (unless --yes)."""
    with open_memory(args) as memory:
        ns = memory.config.namespace
        known = len(memory.list_sessions(user_id=args.user))
        if not args.yes:
            confirm(f"Erase user {args.user!r} in namespace {ns!r}: {known} sessions (every message, summary and "
                    "cached window, in Redis and PostgreSQL) and the user's LangGraph checkpoint threads?")
        erased = memory.delete_user(args.user)
    print(f"erased {erased} sessions of user {args.user!r} from namespace {ns!r}, and the user's checkpoint threads")
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    """Erase sessions and checkpoint threads idle longer than --days from Redis and PostgreSQL, after confirmation
    (unless --yes)."""
    with open_memory(args) as memory:
        ns = memory.config.namespace
        if not args.yes:
            confirm(f"Erase every session of namespace {ns!r} idle for more than {args.days} days (messages, "
                    "summaries and cached windows) and every LangGraph checkpoint thread idle as long?")
        bar = Progress("erasing idle sessions")
        erased = memory.purge_idle_sessions(args.days * 86400.0, on_progress=bar.update)
        bar.close()
    print(f"erased {erased} sessions idle for more than {args.days} days from namespace {ns!r}, and the checkpoint"
          " threads idle as long")
    return EXIT_OK


def cmd_reclaim(args: argparse.Namespace) -> int:
    """Commit outbox entries that dead writers left behind (what every running app's janitor does)."""
    with open_memory(args) as memory:
        if memory.config.mode is not Mode.HYBRID:
            raise CliError(f"mode {memory.config.mode.value} has no write-behind outbox")
        if not memory.redis_available:
            raise CliError(f"Redis at {redact_url(memory.config.redis_dsn())} does not answer: nothing reclaimed")
        committed = memory.reclaim_orphans(args.older_than)
        memory.flush(memory.config.pg_timeout)
    print(f"committed {committed} orphaned messages from the outbox to PostgreSQL")
    return EXIT_OK
