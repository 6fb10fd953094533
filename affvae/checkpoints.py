"""Training checkpoints: writing, reading, choosing one to resume from.

A checkpoint is ``RUN/checkpoints/epoch_NNNNN.pt``, a torch pickle of a dict::

    epoch       epochs done
    model       the model's state dict
    optimizer   the optimiser's state dict
    scaler      the AMP gradient scaler's state dict (or None)
    history     one dict of logs per epoch so far
    restarts    how many times the run was resumed
    torch_rng   the CPU random state (and cuda_rng: each GPU's, or None)
    config      the fully resolved config the run was trained with
    shape       the shape of one input item

The two newest are kept.  Each is written atomically (a hidden ``.epoch_….pt``
temporary file renamed into place), so a full disk or a kill while writing never
replaces a good checkpoint; temporary files left by a killed process are removed
the next time a checkpoint of the folder is written or resumed from.

Resuming takes the newest *good* checkpoint: one that is unreadable, truncated
or not a training checkpoint (e.g. a ``model.pt`` copied over it) is skipped for
the one before, with a warning naming it.  :func:`check_matches` refuses, in one
line, to resume into a model of another shape: it compares the model section of
the saved config, the input shape and every parameter's shape.

This module sits under ``train.py`` and the commands: it imports only torch, the
standard library, :mod:`affvae.errors` and :mod:`affvae.provenance`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from affvae.errors import AffvaeError, one_line, warn
from affvae.provenance import save_torch

#: Checkpoint file names, in epoch order when sorted.
PATTERN = "epoch_*.pt"
#: Temporary files of checkpoints being written (atomic_save's ``.<stem>.<random>.pt``).
TEMP_PATTERN = ".epoch_*.pt"
#: Keys every training checkpoint holds.
REQUIRED = ("epoch", "model", "optimizer", "history", "torch_rng")
#: How many of the newest checkpoints are kept.
KEEP = 2
#: Model config keys whose change makes a checkpoint unusable.
MODEL_KEYS = ("filters", "latent_dims", "pose_dims", "batch_norm", "output")

_warned: set[str] = set()


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    """The checkpoints of ``directory``, oldest first (none if it does not exist)."""
    d = Path(directory)
    return sorted(p for p in d.glob(PATTERN) if p.is_file()) if d.is_dir() else []


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary checkpoint files left by a killed write; returns them.

    Only one process writes a run's checkpoints, so any temporary file present when
    it is not writing is debris.
    """
    d = Path(directory)
    removed = []
    if d.is_dir():
        for p in d.glob(TEMP_PATTERN):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def save_checkpoint(directory: str | os.PathLike, epoch: int, model, opt, scaler, history,
                    restarts: int = 0, config: dict[str, Any] | None = None) -> Path:
    """Write ``epoch_NNNNN.pt`` atomically, keep the :data:`KEEP` newest; returns its path.

    A full disk or an unwritable folder raises one :class:`OSError` naming the
    checkpoint; the previous checkpoints stay.
    """
    directory = Path(directory)
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
        "restarts": restarts,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": config,
        "shape": list(getattr(model, "shape", ()) or ()) or None,
    }
    path = directory / f"epoch_{epoch:05d}.pt"
    save_torch(path, state)
    remove_stale_temps(directory)
    for old in checkpoint_files(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint; anything else raises one AffvaeError naming ``path``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to read is the same user problem
        raise AffvaeError(f"{path}: cannot read checkpoint ({e.__class__.__name__}: {one_line(e, 200)})") \
            from None
    if not isinstance(state, dict):
        raise AffvaeError(f"{path}: not a training checkpoint (a {type(state).__name__}, "
                          "expected a dict with epoch, model, optimizer, history)")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise AffvaeError(f"{path}: not a training checkpoint (no {', '.join(missing)}; a model.pt "
                          "holds weights only)")
    return state


def newest_good_checkpoint(directory: str | os.PathLike) -> tuple[Path, dict] | None:
    """(path, state) of the newest readable checkpoint, ``None`` if there is none.

    A damaged newer one is skipped for the previous one with a warning naming it
    (once per file and process); if every checkpoint is damaged, the newest one's
    problem is raised.
    """
    files = checkpoint_files(directory)
    first_error: AffvaeError | None = None
    for i, path in enumerate(reversed(files)):
        try:
            state = load_checkpoint(path)
        except AffvaeError as e:
            first_error = first_error or e
            continue
        if first_error is not None:
            skipped = [p.name for p in reversed(files)][:i]
            key = f"{path}|{','.join(skipped)}"
            if key not in _warned:
                _warned.add(key)
                warn(f"{first_error}; resuming from {path.name} (epoch {state['epoch']}) instead of "
                     f"{', '.join(skipped)}")
        return path, state
    if first_error is not None:
        raise AffvaeError(f"{first_error}; no other checkpoint in {Path(directory)} is readable")
    return None


def _shape(t) -> list[int]:
    return list(t.shape) if hasattr(t, "shape") else []


def check_matches(state: dict, source: str | os.PathLike, model=None,
                  config: dict[str, Any] | None = None) -> None:
    """Raise one AffvaeError unless ``state`` fits ``model`` (and the model of ``config``).

    ``config`` (a resolved config dict) is compared with the config saved in the
    checkpoint, key by key in its model section; ``model`` (a freshly built
    model) with the checkpoint's input shape and every parameter's shape, which
    also covers checkpoints written before configs were saved in them.
    """
    hint = "resume with the run's own settings, or train into another --out"
    saved = state.get("config") or {}
    if config is not None and saved.get("model"):
        for key in MODEL_KEYS:
            then, now = saved["model"].get(key), config.get("model", {}).get(key)
            if key in saved["model"] and then != now:
                raise AffvaeError(f"{source}: cannot resume a different model: model.{key} is {then!r} "
                                  f"in the checkpoint but {now!r} now; {hint}")
    if model is None:
        return
    want_shape = list(getattr(model, "shape", ()) or ())
    if state.get("shape") and want_shape and list(state["shape"]) != want_shape:
        raise AffvaeError(
            f"{source}: cannot resume: the checkpoint was trained on items of "
            f"{'x'.join(map(str, state['shape']))}, the data now are {'x'.join(map(str, want_shape))}; {hint}")
    have, want = state["model"], model.state_dict()
    extra = [k for k in have if k not in want]
    lacking = [k for k in want if k not in have]
    if extra or lacking:
        which = f"has no {lacking[0]}" if lacking else f"has an unexpected {extra[0]}"
        raise AffvaeError(f"{source}: cannot resume a different model: the checkpoint {which} "
                          f"({len(lacking)} missing, {len(extra)} unexpected parameters); {hint}")
    for k, v in want.items():
        if _shape(have[k]) != _shape(v):
            raise AffvaeError(
                f"{source}: cannot resume a different model: {k} has shape {_shape(have[k])} in the "
                f"checkpoint but {_shape(v)} now; {hint}")


def restore(state: dict, source: str | os.PathLike, model, opt, scaler=None) -> tuple[list, int, int]:
    """Load ``state`` into the model, optimiser, scaler and RNGs.

    Returns ``(history, epochs done, restarts)``, the restarts counting this one.
    """
    check_matches(state, source, model)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"]), int(state["epoch"]), int(state.get("restarts", 0)) + 1
