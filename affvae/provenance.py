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
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _read_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return _UMASK_AT_IMPORT


_UMASK_AT_IMPORT = os.umask(0)
os.umask(_UMASK_AT_IMPORT)


def file_mode() -> int:
    """The mode a new file gets under the current umask (0o644 under umask 022)."""
    return 0o666 & ~_read_umask()


def dir_mode() -> int:
    """The mode a new folder gets under the current umask (0o755 under umask 022)."""
    return 0o777 & ~_read_umask()


def _named(e: OSError, path: Path) -> OSError:
    """``e`` re-raised as naming ``path`` (the user's file), not a temporary file beside it."""
    errno = e.errno
    if errno:
        return type(e)(errno, os.strerror(errno), str(path))
    return OSError(None, " ".join((e.strerror or str(e) or type(e).__name__).split()), str(path))


def _mkstemp(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as e:
        # the folder may be what failed; name the file the user asked for either way
        raise _named(e, path) from None


def _finish(tmp: str, path: Path) -> None:
    os.chmod(tmp, file_mode())  # mkstemp makes 0600; the final file respects the umask
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.  An
    error of the OS (a full disk, a read-only folder, ``path`` being a folder) is
    raised as an :class:`OSError` naming ``path``, never the temporary file.  The
    file gets the mode the umask gives new files.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.name}.", ".tmp")
    try:
        try:
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            _finish(tmp, path)
        except OSError as e:
            if e.filename not in (None, tmp, str(path)):
                raise  # another file the caller's code touched: its own error
            raise _named(e, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(path: str | os.PathLike, writer) -> None:
    """Call ``writer(tmp_path)`` to produce a file, then rename it to ``path``.

    For libraries that want a file name rather than a handle (mrcfile, numpy,
    pyarrow).  The temporary name keeps the final suffix so format sniffing works.
    Errors and modes as :func:`atomic_write`.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path, f".{path.stem}.", path.suffix)
    os.close(fd)
    try:
        try:
            writer(tmp)
            _finish(tmp, path)
        except OSError as e:
            if e.filename not in (None, tmp, str(path)):
                raise
            raise _named(e, path) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` atomically.

    The object is serialised in memory and written as plain bytes, so a full disk
    or a read-only folder is one :class:`OSError` naming ``path`` (torch's own
    writer turns it into chained RuntimeErrors).
    """
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getbuffer())


def _partial_prefix(name: str) -> str:
    return f".{name}.partial-{platform.node() or 'host'}-"


def _remove_stale_partials(parent: Path, name: str) -> None:
    """Remove partial folders of ``name`` left by killed processes of this host."""
    prefix = _partial_prefix(name)
    with contextlib.suppress(OSError):
        for p in parent.glob(f"{glob.escape(prefix)}*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass  # alive, or not ours to signal


def folder_is_empty(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden sibling ``.NAME.partial-…``; swap it in whole on success.

    Yields the temporary folder.  On success it is renamed to ``path``: a missing or
    empty ``path`` is simply replaced; a non-empty one only with ``replace``, by
    renaming the old folder aside, renaming the new one into place and then
    removing the old one.  On any exception (an interrupt included) the temporary
    folder is removed and ``path`` is untouched.  A process killed outright leaves
    only the hidden partial folder, which the next call for the same ``path`` on
    this host removes.  Folders get the mode the umask gives.
    """
    path = Path(path)
    parent = path.parent
    if path.exists() and not path.is_dir():
        raise FileExistsError(17, "exists and is not a folder", str(path))
    if not replace and path.is_dir() and not folder_is_empty(path):
        raise OSError(39, os.strerror(39), str(path))
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(parent, path.name)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(path.name)}{os.getpid()}-", dir=parent))
        os.chmod(tmp, dir_mode())
    except OSError as e:
        raise _named(e, path) from None
    try:
        yield tmp
        try:
            if replace and path.is_dir() and not folder_is_empty(path):
                aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
                os.rename(path, aside)  # onto the empty folder mkdtemp made
                try:
                    os.rename(tmp, path)
                except BaseException:
                    os.rename(aside, path)
                    raise
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(tmp, path)  # rename(2) replaces an empty folder
        except OSError as e:
            raise _named(e, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
