"""The command line's grammar: every command, its options and the module that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .commands import (
    cmd_export,
    cmd_forget_user,
    cmd_migrate,
    cmd_reclaim,
    cmd_retention,
    cmd_search,
    cmd_stats,
    cmd_warmup,
)
from .demo import cmd_demo
from .doctor import cmd_doctor

DESCRIPTION = "`hybrid-memory`: the command-line tool (also `python -m langchain_hybrid_memory`)."
EPILOG = """\
settings: DATABASE_URL, REDIS_URL, REDIS_PASSWORD and HYBRID_MEMORY_<FIELD> (e.g. HYBRID_MEMORY_REDIS_TIMEOUT);
DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/postgres, REDIS_URL to redis://127.0.0.1:6379/0.
exit codes: 0 ok, 1 failure, 2 usage."""


def build_parser() -> argparse.ArgumentParser:
    """The parser; each command's `handler` default is the function that runs it."""
    # --namespace is accepted before and after the command; SUPPRESS keeps the subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--namespace", default=argparse.SUPPRESS,
                        help="Redis key prefix and PostgreSQL schema (default: HYBRID_MEMORY_NAMESPACE or "
                             "hybrid_memory)")
    parser = argparse.ArgumentParser(prog="hybrid-memory", description=DESCRIPTION, epilog=EPILOG, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    demo = command("demo", cmd_demo, "run a scripted conversation and print what happened")
    demo.add_argument("--turns", type=int, default=30)
    demo.add_argument("--data-dir", help="where the embedded servers keep their data (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="keep the demo session afterwards")
    command("doctor", cmd_doctor, "check both servers, versions, schema and latency; say what to fix")
    migrate = command("migrate", cmd_migrate, "apply schema migrations")
    migrate.add_argument("--check", action="store_true", help="only report; exit 1 if migrations are pending")
    stats = command("stats", cmd_stats, "print the cache stats")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    warmup = command("warmup", cmd_warmup, "preload the recently active sessions into Redis")
    warmup.add_argument("--limit", type=_positive, default=1000, help="at most this many sessions (default 1000)")
    warmup.add_argument("--active-within", type=float, metavar="SECONDS",
                        help="only sessions active within this many seconds")
    export = command("export", cmd_export, "write a session's full transcript as JSONL")
    export.add_argument("session", metavar="SESSION")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.add_argument("--user", help="check that the session belongs to this user")
    export.add_argument("--page-size", type=_positive, default=1000, help=argparse.SUPPRESS)
    search = command("search", cmd_search, "search the stored messages of a session or of a user's sessions")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--session", action="append", metavar="SESSION",
                        help="search this session (repeat for several)")
    search.add_argument("--user", help="every session of this user (with --session: check they are the user's)")
    search.add_argument("-k", type=_positive, default=5, help="at most this many hits (default 5)")
    search.add_argument("--offline-vectors", action="store_true",
                        help="also rank by the offline embedder's vectors (those it stored)")
    search.add_argument("--json", action="store_true", help="one JSON object per hit")
    forget = command("forget-user", cmd_forget_user, "erase every session of a user (asks first)")
    forget.add_argument("user", metavar="USER")
    forget.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    retention = command("retention", cmd_retention, "erase sessions idle for more than --days (asks first)")
    retention.add_argument("--days", type=float, required=True, help="idle for more than this many days")
    retention.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    reclaim = command("reclaim", cmd_reclaim, "commit outbox entries left behind by dead writers")
    reclaim.add_argument("--older-than", type=float, metavar="SECONDS",
                         help="entries older than this (default: reclaim_after)")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
