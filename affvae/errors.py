"""User-facing errors.

Anything the user can fix (a bad file, a bad value, a missing class) is raised as
:class:`AffvaeError` with a one-line message that names the file, key or value and
says what was expected.  The CLI prints that line and exits non-zero; only with
``--debug`` does it show the traceback.  Programming errors stay ordinary
exceptions so that they are never mistaken for bad input.  :func:`report_errors` is
that rule, shared by the CLI and the study scripts.
"""

from __future__ import annotations

import sys


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
    print(f"{PROG}: warning: {one_line(message, 1000)}", file=sys.stderr, flush=True)


def report_errors(prog: str, fn, debug: bool = False) -> int:
    """Run ``fn()``; user errors become one line on stderr and exit status 2."""
    try:
        return int(fn() or 0)
    except AffvaeError as e:
        if debug:
            raise
        print(f"{prog}: error: {one_line(e, 2000)}", file=sys.stderr)
        return 2
    except OSError as e:
        # Files we were asked to write or read that the OS refuses (permissions, disk).
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {where}{one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
