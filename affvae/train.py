"""``train(cfg, data)``: the one training loop the CLI, Ray and the tests all call.

The loop is deliberately plain: the whole training split lives in one tensor, a
batch is one ``index_select``, validation runs under ``torch.inference_mode``, and
the per-epoch numbers are accumulated as tensors and read once per epoch.  The
validation accuracy of an epoch uses class centres of the mu seen during that
epoch's training pass, so it costs no extra pass over the data.

Checkpoints (model, optimiser, RNG state and the history so far) are written
every ``train.checkpoint_every`` epochs and at the end; with ``resume=True`` the
run continues from the newest one and gives the same result as an uninterrupted
run with the same seed.  A NaN or Inf loss stops the run with
:class:`TrainingDiverged`, naming the epoch and the term.

Data-parallel: when a ``torch.distributed`` process group is up (Ray Train's
TorchTrainer starts one, gloo on CPU and NCCL on GPU) the model is wrapped in
DistributedDataParallel and every rank takes its share of each global batch
(``train.batch_size`` items, rank r taking items r, r + W, ...), so W workers step
exactly like one process on the same global batch when the loss is a per-item mean
(gamma = 0 and no batch norm; the affinity term pairs items within each rank's
share only).  Logged sums and class centres are summed over ranks; only rank 0
writes checkpoints.  ``batches`` replaces the in-memory training batches, e.g. by a
stream that renders fresh items every epoch (:mod:`affvae.data.stream`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from affvae.affinity.matrix import AffinityMatrix
from affvae.checkpoints import newest_good_checkpoint, remove_stale_temps, restore, save_checkpoint
from affvae.data.augment import random_octahedral
from affvae.data.io import Dataset
from affvae.errors import AffvaeError, DataError
from affvae.losses import class_anchors, loss_terms, schedule_value
from affvae.model import AffinityVAE, build_model

TERMS = ("recon", "kl", "affinity", "total")


class TrainingDiverged(AffvaeError):
    """A loss term became NaN or Inf."""


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(t: torch.Tensor, world: int, device: torch.device | None = None) -> torch.Tensor:
    """Sum a CPU tensor over ranks (through ``device``: NCCL needs CUDA tensors)."""
    if world == 1:
        return t
    import torch.distributed as dist

    d = t.to(device) if device is not None else t
    dist.all_reduce(d, op=dist.ReduceOp.SUM)
    return d.cpu()


@dataclass
class Splits:
    """Indices into the dataset: seen classes split three ways, unseen classes apart."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    unseen: np.ndarray

    def name_of(self, n: int) -> np.ndarray:
        out = np.full(n, "", dtype=object)
        for name in ("train", "val", "test", "unseen"):
            out[getattr(self, name)] = name
        return out.astype(str)


def split_indices(labels: np.ndarray, seen: list[str], val: float, test: float, seed: int) -> Splits:
    """Stratified split of the seen items; every seen class keeps at least one training item."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in seen:
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_test = int(round(n * test))
        n_val = int(round(n * val))
        if n - n_test - n_val < 1:
            raise DataError(f"class {c!r} has {n} items: too few to split into train/val/test")
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    cat = {k: np.sort(np.concatenate(v)) if v else np.zeros(0, int) for k, v in parts.items()}
    unseen = np.flatnonzero(~np.isin(labels, np.asarray(seen, dtype=str)))
    return Splits(cat["train"], cat["val"], cat["test"], unseen)


@dataclass
class TrainResult:
    cfg: Any
    model: AffinityVAE
    history: list[dict[str, float]]
    splits: Splits
    classes: list[str]
    affinity: AffinityMatrix | None
    seconds: float
    epochs_done: int
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def choose_device(cfg) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise AffvaeError("train.device: cuda requested but no CUDA device is available")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _batches(idx: np.ndarray, batch_size: int, generator: torch.Generator | None, world: int = 1):
    """Shuffled global batches; a last batch too small to share among ranks is dropped."""
    order = torch.as_tensor(idx)
    if generator is not None:
        order = order[torch.randperm(len(order), generator=generator)]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) >= 2 * world or generator is None:
            yield chunk


def encode_all(model: AffinityVAE, x: torch.Tensor, device, batch_size: int = 256):
    """mu, logvar and pose of every item, batched, without autograd."""
    model.eval()
    mus, lvs, poses = [], [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            mu, lv, pose = model.encode(x[start:start + batch_size].to(device, non_blocking=True))
            mus.append(mu.float().cpu())
            lvs.append(lv.float().cpu())
            poses.append(pose.float().cpu())
    cat = (lambda t: torch.cat(t).numpy()) if mus else (lambda t: np.zeros((0, model.latent_dims)))
    return cat(mus), cat(lvs), (torch.cat(poses).numpy() if poses else np.zeros((0, model.pose_dims)))


def _nearest_centre_accuracy(mu_train, y_train, mu_val, y_val, n_classes, world: int = 1,
                             device: torch.device | None = None) -> float:
    """Accuracy of nearest class centre (centres from the training pass, over all ranks)."""
    if len(y_val) == 0:
        return float("nan")
    sums = torch.zeros(n_classes, mu_train.shape[1]).index_add_(0, y_train, mu_train)
    counts = torch.bincount(y_train, minlength=n_classes).double()
    sums, counts = _all_sum(sums, world, device), _all_sum(counts, world, device)
    centres = sums / counts.clamp_min(1).unsqueeze(1).float()
    pred = torch.cdist(mu_val, centres).argmin(1)
    return float((pred == y_val).float().mean())


def train(cfg, data: Dataset, report: Callable[[dict, Path | None], None] | None = None,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
          affinity: AffinityMatrix | None = None, progress: bool = False,
          device: torch.device | None = None,
          batches: Callable[[int], Any] | None = None) -> TrainResult:
    """Train an affinity-VAE on ``data`` as ``cfg`` says.

    ``report(metrics, checkpoint)`` is called after every epoch with the epoch's
    logs (``train_*``/``val_*`` terms, ``val_accuracy``, weights, timing) and the
    checkpoint written at that epoch, if any.  ``affinity`` defaults to the one
    :func:`affvae.data.sources.resolve_affinity` finds for ``cfg``.  ``device``
    overrides ``train.device`` (Ray Train passes each worker's).  ``batches(epoch)``,
    if given, yields this rank's ``(x, class index)`` training batches of an epoch
    in place of the in-memory split.
    """
    from affvae.data.sources import resolve_affinity

    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    _seed_everything(cfg.seed)
    device = device if device is not None else choose_device(cfg)
    rank, world = dist_info()
    use_amp = device.type == "cuda" and cfg.train.amp != "off"
    classes = list(data.classes)
    if affinity is None:
        affinity = resolve_affinity(cfg, data)
    A = torch.as_tensor(affinity.values, dtype=torch.float32, device=device) if affinity is not None else None

    splits = split_indices(data.labels, classes, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    class_of = {c: i for i, c in enumerate(classes)}
    y_all = torch.tensor([class_of.get(c, -1) for c in data.labels.tolist()], dtype=torch.long)
    x_all = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)).unsqueeze(1)
    if device.type == "cuda":
        x_all = x_all.pin_memory()

    model = build_model(cfg, data.shape).to(device)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    history: list[dict[str, float]] = []
    start_epoch = 0
    restarts = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    found = newest_good_checkpoint(ckpt_dir) if resume and ckpt_dir is not None else None
    if found is not None:
        history, start_epoch, restarts = restore(found[1], found[0], model, opt, scaler)
        if rank == 0:
            remove_stale_temps(ckpt_dir)

    epochs = cfg.train.epochs
    lc = cfg.loss
    augment = cfg.data.augment == "octahedral"
    if augment and data.x.ndim != 4:
        raise DataError("data.augment: octahedral needs 3D volumes")

    latent = cfg.model.latent_dims
    anchors = class_anchors(A, latent) if A is not None and lc.anchors > 0 else None
    loss_kw = dict(recon=lc.recon, convention=lc.convention, anchors=anchors, anchor_weight=lc.anchors)

    def memory_batches(epoch: int, gen: torch.Generator):
        # the sampling noise of the global batch comes from the shared generator, so
        # each rank's share (rows r, r + W, ...) is what one process would draw
        for idx in _batches(splits.train, cfg.train.batch_size, gen, world):
            eps = torch.randn(len(idx), latent, generator=gen)[rank::world]
            idx = idx[rank::world]
            x = x_all.index_select(0, idx)
            if augment:
                x = random_octahedral(x, gen)
            yield x, y_all[idx], eps

    if batches is None and cfg.data.stream:
        from affvae.data.stream import epoch_batches_for, spec_from_config

        batches = epoch_batches_for(spec_from_config(cfg, classes), data, splits.train,
                                    cfg.train.batch_size, rank, world, engine="local")

    def epoch_batches(epoch: int, gen: torch.Generator):
        if batches is None:
            yield from memory_batches(epoch, gen)
            return
        for x, yc in batches(epoch):
            x = torch.as_tensor(x, dtype=torch.float32)
            if x.dim() == len(data.shape) + 1:
                x = x.unsqueeze(1)
            if augment:
                x = random_octahedral(x, gen)
            yield x, torch.as_tensor(yc, dtype=torch.long), torch.randn(len(x), latent, generator=gen)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, initial=start_epoch, desc="train", unit="epoch", disable=None)
    stopped_early = False
    if report is not None and history and start_epoch >= epochs:
        # a resume that finds training already done (killed after its last report was
        # written but before the caller saw it): report the final epoch again, so the
        # caller's last result is the last epoch and its checkpoint, not a stale one
        report(dict(history[-1]), found[0] if rank == 0 else None)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        beta = schedule_value(lc.beta_schedule, lc.beta, epoch, epochs)
        gamma = schedule_value(lc.gamma_schedule, lc.gamma, epoch, epochs)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        model.train()
        sums = torch.zeros(len(TERMS), dtype=torch.float64)
        n_seen = 0
        mu_parts, y_parts = [], []
        for x, yc, eps in epoch_batches(epoch, gen):
            x = x.to(device, non_blocking=True)
            yc = yc.to(device, non_blocking=True)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                recon, mu, logvar, pose, z = net(x.squeeze(1), eps=eps.to(device, non_blocking=True))
            total, terms = loss_terms(x.squeeze(1), recon, mu.float(), logvar.float(), z.float(), yc, A,
                                      beta=beta, gamma=gamma, **loss_kw)
            finite = torch.isfinite(total.detach()).float().reshape(1).cpu()
            if world > 1:  # every rank stops together, or the others would wait forever
                finite = _all_sum(finite, world, device) / world
            if float(finite) < 1.0:
                bad = [k for k, v in terms.items() if k != "total" and not torch.isfinite(v)]
                which = bad[0] if bad else "total"
                raise TrainingDiverged(
                    f"epoch {epoch + 1}: the {which} loss became {float(terms[which].detach())} "
                    f"(beta={beta:g}, gamma={gamma:g}, lr={cfg.train.lr:g}); lower the learning rate "
                    "or the loss weights"
                )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(opt)
                scaler.update()
            else:
                total.backward()
                opt.step()
            k = len(yc)
            sums += torch.stack([terms[t].detach().double().cpu() for t in TERMS]) * k
            n_seen += k
            mu_parts.append(mu.detach().float().cpu())
            y_parts.append(yc.cpu())
        logs: dict[str, float] = {"epoch": epoch + 1, "beta": beta, "gamma": gamma}
        if world > 1:
            tot = _all_sum(torch.cat([sums, torch.tensor([float(n_seen)], dtype=torch.float64)]), world, device)
            sums, n_seen = tot[:-1], int(tot[-1])
        logs.update({f"train_{t}": float(v) / max(n_seen, 1) for t, v in zip(TERMS, sums)})

        # validation: deterministic (z = mu), no autograd
        model.eval()
        vsums = torch.zeros(len(TERMS), dtype=torch.float64)
        n_val = 0
        vmu = []
        with torch.inference_mode():
            for idx in _batches(splits.val, 256, None):
                x = x_all.index_select(0, idx).to(device, non_blocking=True).squeeze(1)
                yc = y_all[idx].to(device)
                autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
                with autocast:
                    recon, mu, logvar, pose, z = model(x, sample=False)
                _, terms = loss_terms(x, recon, mu.float(), logvar.float(), z.float(), yc, A,
                                      beta=beta, gamma=gamma, **loss_kw)
                vsums += torch.stack([terms[t].double().cpu() for t in TERMS]) * len(idx)
                n_val += len(idx)
                vmu.append(mu.float().cpu())
        if n_val:
            logs.update({f"val_{t}": float(v) / n_val for t, v in zip(TERMS, vsums)})
            logs["val_accuracy"] = _nearest_centre_accuracy(
                torch.cat(mu_parts), torch.cat(y_parts), torch.cat(vmu), y_all[splits.val], len(classes),
                world, device)
        dt = time.perf_counter() - t0
        logs["epoch_seconds"] = dt
        logs["samples_per_second"] = (n_seen + n_val) / dt if dt > 0 else float("nan")
        history.append(logs)

        elapsed_min = (time.perf_counter() - t_start) / 60
        out_of_time = bool(cfg.train.max_minutes) and elapsed_min >= cfg.train.max_minutes
        last = epoch + 1 == epochs or out_of_time
        ckpt = None
        if ckpt_dir is not None and rank == 0 and ((epoch + 1) % cfg.train.checkpoint_every == 0 or last):
            ckpt = save_checkpoint(ckpt_dir, epoch + 1, model, opt, scaler, history, restarts, cfg.to_dict())
        if report is not None:
            report(dict(logs), ckpt)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs['train_total']:.4g}", acc=f"{logs.get('val_accuracy', math.nan):.3f}")
        if out_of_time and not epoch + 1 == epochs:
            stopped_early = True
            break
    if bar is not None:
        bar.close()
    model.eval()
    return TrainResult(cfg=cfg, model=model.cpu(), history=history, splits=splits, classes=classes,
                       affinity=affinity, seconds=time.perf_counter() - t_start,
                       epochs_done=len(history), stopped_early=stopped_early,
                       extra={"restarts": restarts})
