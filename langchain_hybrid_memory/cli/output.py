"""What the CLI prints: exit codes, one-line errors, secret scrubbing, a progress bar and confirmation prompts.

Nothing printed ever contains a password: URLs go through `redact_url`, error texts through `scrub`.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import unquote, urlsplit

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure the user can act on: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _secrets() -> list[str]:
    """Every password the environment holds, raw and percent-decoded (longest first, so none is half-hidden)."""
    found: set[str] = set()
    for name in ("REDIS_PASSWORD", "HYBRID_MEMORY_REDIS_PASSWORD"):
        if os.environ.get(name):
            found.add(os.environ[name])
    for name in ("DATABASE_URL", "REDIS_URL", "HYBRID_MEMORY_DATABASE_URL", "HYBRID_MEMORY_REDIS_URL"):
        url = os.environ.get(name)
        if not url:
            continue
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.update({password, unquote(password)})
        userinfo = url.split("://", 1)[-1].rpartition("@")[0]  # also what urlsplit might have missed
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    return sorted((s for s in found if s), key=len, reverse=True)  # "" would match everywhere


def scrub(text: str) -> str:
    """`text` without any password from the environment: third-party error texts may quote a DSN."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def why(exc: BaseException) -> str:
    """A short, secret-free reason: the exception type and the first line of its text."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return scrub(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def confirm(question: str) -> None:
    """Ask on stderr (stdout may be a pipe); anything but y/yes raises a CliError saying nothing was deleted."""
    print(f"{question} This cannot be undone. [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("not confirmed: nothing was deleted (answer y, or pass --yes)")


class Progress:
    """A one-line live status on a terminal; plain lines otherwise. Starts on the first `update`, which is
    when the callers learn the total."""

    def __init__(self, label: str) -> None:
        self.label, self.total, self.started, self.tty = label, 0, False, sys.stdout.isatty()

    def update(self, done: int, total: int) -> None:
        self.total, self.started = total, True
        if self.tty:
            filled = int(30 * done / max(total, 1))
            print(f"\r  {self.label:22} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", flush=True)
        elif done == total:
            print(f"  {self.label:22} {done}/{total}")

    def close(self) -> None:
        if self.tty and self.started:
            print()
