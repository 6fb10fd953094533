"""User-facing errors.

Anything the user can fix (a bad file, a bad value, a missing class) is raised as
:class:`AffvaeError` with a one-line message that names the file, key or value and
says what was expected.  The CLI prints that line and exits non-zero; only with
``--debug`` does it show the traceback.  Programming errors stay ordinary
exceptions so that they are never mistaken for bad input.
"""

from __future__ import annotations


class AffvaeError(Exception):
    """An error caused by input the user can correct."""


class DataError(AffvaeError):
    """A dataset folder, file or value is unreadable or inconsistent."""


class AffinityError(AffvaeError):
    """An affinity matrix (CSV or computed) is malformed."""


class ConfigError(AffvaeError):
    """A configuration key or value is unknown or out of range."""


#: The program name that :func:`warn` prints ("affvae train"); the CLI sets it per command.
PROG = "affvae"


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with its whitespace (newlines, tabs) collapsed, cut at ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 3].rstrip() + "..."


def reason(e: BaseException) -> str:
    """One line saying why ``e`` happened: its OS reason or its message, else its class."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return one_line(msg)


def warn(message: str) -> None:
    """Print one warning line to stderr: ``affvae <command>: warning: <message>``.

    For things a user should know about that do not stop the command (a damaged
    checkpoint skipped for an older one, data resized to the model's box, an empty
    split not evaluated).
    """
    import sys

    print(f"{PROG}: warning: {one_line(message, 1000)}", file=sys.stderr, flush=True)
