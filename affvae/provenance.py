"""Reproducibility helpers: atomic writes and the record saved with every run.

Every command that writes results also writes ``provenance.json`` beside them: the
package version, the git commit of the source tree (when it is a checkout), the
command line, the seed and the fully resolved parameters.  All writes go through
:func:`atomic_write`, so an interrupted or failed command never leaves a half
written file in place of a good one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(path: str | os.PathLike, writer) -> None:
    """Call ``writer(tmp_path)`` to produce a file, then rename it to ``path``.

    For libraries that want a file name rather than a handle (mrcfile, numpy,
    pyarrow).  The temporary name keeps the final suffix so format sniffing works.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def package_version() -> str:
    from affvae import __version__

    return __version__


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit of the source checkout affvae runs from ("+dirty" if modified)."""
    here = Path(start) if start else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(params: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """The record of how a result was made."""
    return {
        "affvae_version": package_version(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        "seed": seed,
        "params": params or {},
    }


def write_provenance(directory: str | os.PathLike, params=None, seed=None,
                     name: str = "provenance.json") -> Path:
    out = Path(directory) / name
    with atomic_write(out) as fh:
        json.dump(provenance(params, seed), fh, indent=2, default=str)
        fh.write("\n")
    return out
