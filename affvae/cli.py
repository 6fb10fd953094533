"""The ``affvae`` command line: thin commands over the library.

Each command lives in :mod:`affvae.commands` as a module whose docstring is its
help text, with ``add_args(parser)`` and ``main(args)``.  Input the user can fix
raises :class:`affvae.errors.AffvaeError`; here it becomes one line on stderr and
exit status 2.  ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from affvae import __version__, errors
from affvae.errors import report_errors

COMMANDS = ["simulate", "affinity", "check", "train", "evaluate", "tune"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affvae", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"affvae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        mod = importlib.import_module(f"affvae.commands.{name}")
        doc = (mod.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks for errors")
        mod.add_args(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous, errors.PROG = errors.PROG, f"affvae {args.command}"  # the name warnings print
    try:
        return report_errors(f"affvae {args.command}", lambda: args._main(args), debug=args.debug)
    finally:
        errors.PROG = previous


if __name__ == "__main__":
    sys.exit(main())
