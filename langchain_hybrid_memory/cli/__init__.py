"""`hybrid-memory`: the command-line tool (also `python -m langchain_hybrid_memory`).

Settings come from DATABASE_URL, REDIS_URL, REDIS_PASSWORD and HYBRID_MEMORY_<FIELD> (as `HybridConfig.from_env`);
`--namespace` overrides HYBRID_MEMORY_NAMESPACE. Exit codes: 0 ok, 1 failure, 2 usage (bad arguments or
settings). Nothing printed ever contains a password.

- `parser.py`: the commands and their options; `main` below runs one and maps errors to exit codes.
- `output.py`: exit codes, secret scrubbing, the progress bar and confirmation prompts.
- `connect.py`: settings, the servers' clients and what to say when one fails.
- `doctor.py`, `demo.py`: those two commands; `commands.py`: migrate, stats, warmup, export, forget-user,
  retention and reclaim.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import ConfigurationError, HybridMemoryError, InvalidInputError
from .output import EXIT_FAILURE, EXIT_USAGE, CliError
from .output import scrub as _scrub
from .parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse's usage errors included, so it never exits itself)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CliError as exc:
        print(f"hybrid-memory: {_scrub(str(exc))}", file=sys.stderr)
        return exc.code
    except (ConfigurationError, InvalidInputError) as exc:
        print(f"hybrid-memory: {_scrub(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except HybridMemoryError as exc:
        print(f"hybrid-memory: {_scrub(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # e.g. `export ... | head`: the reader left; do not print a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("hybrid-memory: interrupted", file=sys.stderr)
        return 130
    except Exception:
        import traceback

        print(_scrub(f"hybrid-memory: unexpected error\n{traceback.format_exc()}"), file=sys.stderr)
        return EXIT_FAILURE
