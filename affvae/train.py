"""``train(cfg, data, affinity, batches)``: the one training loop the CLI, Ray and the tests all call.

:func:`train` is a short orchestrator over named steps, each a function of one
:class:`Session` (the model, optimiser and tensors of a run):

* :func:`setup`: seed, device, splits, model (DistributedDataParallel under a process
  group), optimiser, the affinity matrix as a tensor;
* :func:`restore`: the newest good checkpoint's model, optimiser, RNG state and history
  (:mod:`affvae.checkpoints`);
* :func:`train_epoch`: one pass over the training batches, returning the epoch's
  ``train_*`` logs;
* :func:`validate`: ``val_*`` terms and ``val_accuracy`` on the validation split;
* :func:`checkpoint`: every ``train.checkpoint_every`` epochs and at the end.

The caller resolves what the loop needs: the affinity matrix (``None`` for gamma = 0)
and, for streamed data, ``batches(epoch)`` yielding this rank's ``(x, class index)``
training batches in place of the in-memory split.

The in-memory path keeps the whole training split in one tensor; a batch is one
``index_select`` and the per-epoch numbers are accumulated as tensors and read once
per epoch.  With ``resume=True`` a run continues from its newest checkpoint and
gives the same result as an uninterrupted run with the same seed.  A NaN or Inf
loss stops the run with :class:`TrainingDiverged`, naming the epoch and the term.

Data-parallel: when a ``torch.distributed`` process group is up (Ray Train's
TorchTrainer starts one, gloo on CPU and NCCL on GPU) every rank takes its share of
each global batch (``train.batch_size`` items, rank r taking items r, r + W, ...),
so W workers step exactly like one process on the same global batch when the loss
is a per-item mean (gamma = 0 and no batch norm; the affinity term pairs items
within each rank's share only).  Logged sums and class centres are summed over
ranks; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from affvae import checkpoints
from affvae.affinity.matrix import AffinityMatrix
from affvae.data.io import Dataset
from affvae.data.lazy import LazyItems, is_lazy, subset
from affvae.data.splits import Splits, splits_of
from affvae.errors import AffvaeError, ConfigError, DataError
from affvae.losses import class_anchors, loss_terms, schedule_value
from affvae.model import AffinityVAE, build_model
from affvae.runtime import keep_large_blocks
from affvae.transforms.augment import octahedral_augment, random_octahedral

TERMS = ("recon", "kl", "affinity", "total")

#: ``report(logs, checkpoint)`` after every epoch
Report = Callable[[dict, "Path | None"], None]
#: ``batches(epoch)`` -> this rank's ``(x, class index)`` training batches of an epoch
Batches = Callable[[int], Iterable[tuple[Any, Any]]]


class TrainingDiverged(AffvaeError):
    """A loss term became NaN or Inf."""


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


# -- distributed helpers ------------------------------------------------------------------

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


def choose_device(cfg) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise AffvaeError("train.device: cuda requested but no CUDA device is available")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


# -- the session and its steps ------------------------------------------------------------

@dataclass(eq=False)
class Session:
    """What the steps of one training run share."""

    cfg: Any
    data: Dataset
    device: torch.device
    rank: int
    world: int
    use_amp: bool
    classes: list[str]
    splits: Splits
    x_all: "torch.Tensor | LazyItems"  # (N, 1, ...) in memory, or read from files per batch
    y_all: torch.Tensor
    model: AffinityVAE
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: Any
    affinity: AffinityMatrix | None
    A: torch.Tensor | None
    loss_kw: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0
    restarts: int = 0

    @property
    def latent(self) -> int:
        return self.cfg.model.latent_dims

    @property
    def augment(self) -> bool:
        return octahedral_augment(self.cfg.data.augment, self.data.ndim)

    @property
    def augment_stream(self) -> bool:
        """Whether streamed batches get cube symmetries too: not under ``augment: auto``
        when the stream's items are fresh uniform rotations (simulated with ``rotation:
        uniform``, or files with ``rotate_files``): a cube symmetry of a uniform rotation
        is another uniform rotation, so it would copy every batch (7 ms for 32 volumes
        of 64^3) for the same distribution.  An explicit ``augment: octahedral`` is kept."""
        d = self.cfg.data
        uniform = d.rotate_files if d.source == "folder" else d.rotation == "uniform"
        return self.augment and not (d.augment == "auto" and uniform)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def setup(cfg, data: Dataset, affinity: AffinityMatrix | None, device: torch.device | None = None) -> Session:
    """Seed, device, splits, tensors, model, optimiser and loss settings of a run."""
    keep_large_blocks()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    _seed_everything(cfg.seed)
    device = device if device is not None else choose_device(cfg)
    rank, world = dist_info()
    if cfg.loss.gamma > 0 and affinity is None:
        raise ConfigError("loss.gamma > 0 needs an affinity matrix (resolve one for the data first)")
    if cfg.data.augment == "octahedral" and data.x.ndim != 4:
        raise DataError("data.augment: octahedral needs 3D volumes (auto applies it to 3D items only)")
    classes = list(data.classes)
    A = torch.as_tensor(affinity.values, dtype=torch.float32, device=device) if affinity is not None else None
    class_of = {c: i for i, c in enumerate(classes)}
    y_all = torch.tensor([class_of.get(c, -1) for c in data.labels.tolist()], dtype=torch.long)
    if is_lazy(data.x):
        x_all = data.x
    else:
        x_all = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)).unsqueeze(1)
        if device.type == "cuda":
            x_all = x_all.pin_memory()
    model = build_model(cfg, data.shape).to(device)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # the fused kernel: one pass over all parameters (0.2 against 0.9 ms a step for the 32^3 model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)
    use_amp = device.type == "cuda" and cfg.train.amp != "off"
    lc = cfg.loss
    anchors = class_anchors(A, cfg.model.latent_dims) if A is not None and lc.anchors > 0 else None
    return Session(cfg=cfg, data=data, device=device, rank=rank, world=world, use_amp=use_amp,
                   classes=classes, splits=splits_of(cfg, data), x_all=x_all, y_all=y_all, model=model,
                   net=net, opt=opt, scaler=torch.amp.GradScaler("cuda") if use_amp else None,
                   affinity=affinity, A=A,
                   loss_kw=dict(recon=lc.recon, convention=lc.convention, anchors=anchors,
                                anchor_weight=lc.anchors, pairs=lc.pairs,
                                # the loss applies the decoder's sigmoid, fused with the error
                                from_logits=model.output == "sigmoid"))


def restore(s: Session, ckpt_dir: Path) -> Path | None:
    """Load the newest good checkpoint in ``ckpt_dir`` into the session; returns its path."""
    found = checkpoints.newest_good_checkpoint(ckpt_dir)
    if found is None:
        return None
    path, state = found
    s.history, s.start_epoch, s.restarts = checkpoints.restore(state, path, s.model, s.opt, s.scaler)
    if s.rank == 0:
        checkpoints.remove_stale_temps(ckpt_dir)
    return path


def rows(s: Session, idx) -> torch.Tensor:
    """Items ``idx`` as an (n, 1, ...) tensor: from the tensor in memory, or read from their files."""
    if isinstance(s.x_all, torch.Tensor):
        return s.x_all.index_select(0, torch.as_tensor(idx))
    return torch.from_numpy(s.x_all[np.asarray(idx)]).unsqueeze(1)


def _batches(idx: np.ndarray, batch_size: int, generator: torch.Generator | None, world: int = 1):
    """Shuffled global batches; a last batch too small to share among ranks is dropped."""
    order = torch.as_tensor(idx)
    if generator is not None:
        order = order[torch.randperm(len(order), generator=generator)]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) >= 2 * world or generator is None:
            yield chunk


def memory_batches(s: Session, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's ``(x, class index, eps)`` batches of the in-memory training split.

    The sampling noise of the global batch comes from the shared generator, so each
    rank's share (rows r, r + W, ...) is what one process would draw.
    """
    for idx in _batches(s.splits.train, s.cfg.train.batch_size, gen, s.world):
        eps = torch.randn(len(idx), s.latent, generator=gen)[s.rank::s.world]
        idx = idx[s.rank::s.world]
        x = rows(s, idx)
        if s.augment:
            x = random_octahedral(x, gen)
        yield x, s.y_all[idx], eps


def streamed_batches(s: Session, batches: Batches, epoch: int,
                     gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(x, class index, eps)`` from a caller's ``batches(epoch)``."""
    for x, yc in batches(epoch):
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() == len(s.data.shape) + 1:
            x = x.unsqueeze(1)
        if s.augment_stream:
            x = random_octahedral(x, gen)
        yield x, torch.as_tensor(yc, dtype=torch.long), torch.randn(len(x), s.latent, generator=gen)


def _check_finite(s: Session, total, terms, epoch: int, beta: float, gamma: float) -> None:
    finite = torch.isfinite(total.detach()).float().reshape(1).cpu()
    if s.world > 1:  # every rank stops together, or the others would wait forever
        finite = _all_sum(finite, s.world, s.device) / s.world
    if float(finite) < 1.0:
        bad = [k for k, v in terms.items() if k != "total" and not torch.isfinite(v)]
        which = bad[0] if bad else "total"
        raise TrainingDiverged(
            f"epoch {epoch + 1}: the {which} loss became {float(terms[which].detach())} "
            f"(beta={beta:g}, gamma={gamma:g}, lr={s.cfg.train.lr:g}); lower the learning rate "
            "or the loss weights"
        )


def _optimise(s: Session, total) -> None:
    s.opt.zero_grad(set_to_none=True)
    if s.scaler is not None:
        s.scaler.scale(total).backward()
        s.scaler.step(s.opt)
        s.scaler.update()
    else:
        total.backward()
        s.opt.step()


def weights(s: Session, epoch: int) -> tuple[float, float]:
    """(beta, gamma) at ``epoch`` under their schedules."""
    lc, epochs = s.cfg.loss, s.cfg.train.epochs
    return (schedule_value(lc.beta_schedule, lc.beta, epoch, epochs),
            schedule_value(lc.gamma_schedule, lc.gamma, epoch, epochs))


def train_epoch(s: Session, epoch: int, batches: Batches | None = None) -> dict[str, float]:
    """One pass over the training batches: the epoch's ``train_*`` logs."""
    beta, gamma = weights(s, epoch)
    gen = torch.Generator().manual_seed(s.cfg.seed * 100003 + epoch)
    source = memory_batches(s, gen) if batches is None else streamed_batches(s, batches, epoch, gen)
    s.model.train()
    sums = torch.zeros(len(TERMS), dtype=torch.float64)
    n_seen = 0
    waited = [0.0]
    t0 = time.perf_counter()
    for x, yc, eps in _timed(source, waited):
        x = x.to(s.device, non_blocking=True).squeeze(1)
        yc = yc.to(s.device, non_blocking=True)
        with s.autocast():
            recon, mu, logvar, pose, z = s.net(x, eps=eps.to(s.device, non_blocking=True),
                                               logits=s.loss_kw["from_logits"])
        total, terms = loss_terms(x, recon, mu.float(), logvar.float(), z.float(), yc, s.A,
                                  beta=beta, gamma=gamma, **s.loss_kw)
        _check_finite(s, total, terms, epoch, beta, gamma)
        _optimise(s, total)
        k = len(yc)
        sums += torch.stack([terms[t].detach().double().cpu() for t in TERMS]) * k
        n_seen += k
    if s.world > 1:
        tot = _all_sum(torch.cat([sums, torch.tensor([float(n_seen)], dtype=torch.float64)]), s.world, s.device)
        sums, n_seen = tot[:-1], int(tot[-1])
    logs: dict[str, float] = {"epoch": epoch + 1, "beta": beta, "gamma": gamma}
    logs.update({f"train_{t}": float(v) / max(n_seen, 1) for t, v in zip(TERMS, sums)})
    logs["train_items"] = n_seen
    logs["train_seconds"] = time.perf_counter() - t0
    logs["train_wait_seconds"] = waited[0]  # this rank's: a stream that starves the step shows here
    return logs


def _timed(source: Iterable, waited: list[float]) -> Iterator:
    """``source``'s items, adding the seconds spent waiting for each to ``waited[0]``."""
    items = iter(source)
    while True:
        t = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield item


def map_items(train_idx: np.ndarray, labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """The training items behind the per-epoch latent map: all of them up to ``cap``, else a
    fixed subset of ``cap`` that keeps each class's share (every class at least one item)."""
    if len(train_idx) <= cap:
        return np.asarray(train_idx)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[train_idx]):
        members = train_idx[labels[train_idx] == c]
        k = max(1, int(round(cap * len(members) / len(train_idx))))
        keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def latent_map_accuracy(s: Session, mu_val: np.ndarray) -> float:
    """Accuracy on the validation split of the latent map built as the final evaluation builds
    it: eval mode, centres of the training split's mu (:func:`map_items`), ``eval.distance``."""
    from affvae.latent_map import LatentMap
    from affvae.model import encode_all

    idx = map_items(s.splits.train, s.data.labels, s.cfg.eval.map_items, s.cfg.seed)
    mu_train, _, _ = encode_all(s.model, subset(s.x_all, idx), s.device)  # lazy items read per batch
    lm = LatentMap.fit(mu_train, s.data.labels[idx], s.classes, metric=s.cfg.eval.distance)
    predicted, _ = lm.predict(mu_val)
    return float((predicted == s.data.labels[s.splits.val]).mean())


def validate(s: Session, epoch: int) -> dict[str, float]:
    """``val_*`` terms (z = mu, no autograd) and ``val_accuracy`` of the validation split."""
    beta, gamma = weights(s, epoch)
    s.model.eval()
    vsums = torch.zeros(len(TERMS), dtype=torch.float64)
    n_val = 0
    vmu = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in _batches(s.splits.val, 256, None):
            x = rows(s, idx).to(s.device, non_blocking=True).squeeze(1)
            yc = s.y_all[idx].to(s.device)
            with s.autocast():
                recon, mu, logvar, pose, z = s.model(x, sample=False, logits=s.loss_kw["from_logits"])
            _, terms = loss_terms(x, recon, mu.float(), logvar.float(), z.float(), yc, s.A,
                                  beta=beta, gamma=gamma, **s.loss_kw)
            vsums += torch.stack([terms[t].double().cpu() for t in TERMS]) * len(idx)
            n_val += len(idx)
            vmu.append(mu.float().cpu())
    if not n_val:
        return {}
    logs = {f"val_{t}": float(v) / n_val for t, v in zip(TERMS, vsums)}
    logs["val_accuracy"] = latent_map_accuracy(s, torch.cat(vmu).numpy())
    logs["val_seconds"] = time.perf_counter() - t0
    return logs


def checkpoint(s: Session, ckpt_dir: Path | None, epoch: int, last: bool) -> Path | None:
    """Write a checkpoint at this epoch if one is due (rank 0 only)."""
    due = (epoch + 1) % s.cfg.train.checkpoint_every == 0 or last
    if ckpt_dir is None or s.rank != 0 or not due:
        return None
    return checkpoints.save_checkpoint(ckpt_dir, epoch + 1, s.model, s.opt, s.scaler, s.history, s.restarts,
                           config=s.cfg.to_dict())


def _progress(enabled: bool, s: Session):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=s.cfg.train.epochs, initial=s.start_epoch, desc="train", unit="epoch", disable=None)


def _show(bar, logs: dict) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{logs['train_total']:.4g}", acc=f"{logs.get('val_accuracy', math.nan):.3f}")


# -- the loop ---------------------------------------------------------------------------------

def train(cfg, data: Dataset, affinity: AffinityMatrix | None = None, batches: Batches | None = None, *,
          report: Report | None = None, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = False, device: torch.device | None = None) -> TrainResult:
    """Train an affinity-VAE on ``data`` as ``cfg`` says.

    ``affinity`` is the matrix over ``data.classes`` (needed when ``loss.gamma`` > 0);
    ``batches(epoch)``, if given, yields this rank's ``(x, class index)`` training
    batches of an epoch in place of the in-memory split (a stream).
    ``report(logs, checkpoint)`` is called after every epoch with the epoch's logs and
    the checkpoint written at that epoch, if any.  ``device`` overrides
    ``train.device`` (Ray Train passes each worker's).
    """
    t_start = time.perf_counter()
    if cfg.data.stream and batches is None:
        raise ConfigError("data.stream: pass the stream's batches (affvae.data.stream.stream_batches)")
    s = setup(cfg, data, affinity, device)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    resumed = restore(s, ckpt_dir) if resume and ckpt_dir is not None else None
    epochs = cfg.train.epochs
    if report is not None and s.history and s.start_epoch >= epochs:
        # a resume that finds training already done (killed after its last report was
        # written but before the caller saw it): report the final epoch again, so the
        # caller's last result is the last epoch and its checkpoint, not a stale one
        report(dict(s.history[-1]), resumed if s.rank == 0 else None)
    bar = _progress(progress, s)
    stopped_early = False
    for epoch in range(s.start_epoch, epochs):
        t0 = time.perf_counter()
        logs = train_epoch(s, epoch, batches)
        logs.update(validate(s, epoch))
        logs["epoch_seconds"] = time.perf_counter() - t0
        logs["samples_per_second"] = logs["train_items"] / max(logs["train_seconds"], 1e-9)  # all ranks
        logs["workers"] = s.world
        s.history.append(logs)
        out_of_time = bool(cfg.train.max_minutes) and (time.perf_counter() - t_start) / 60 >= cfg.train.max_minutes
        ckpt = checkpoint(s, ckpt_dir, epoch, last=epoch + 1 == epochs or out_of_time)
        if report is not None:
            report(dict(logs), ckpt)
        _show(bar, logs)
        if out_of_time and epoch + 1 < epochs:
            stopped_early = True
            break
    if bar is not None:
        bar.close()
    s.model.eval()
    return TrainResult(cfg=cfg, model=s.model.cpu(), history=s.history, splits=s.splits, classes=s.classes,
                       affinity=affinity, seconds=time.perf_counter() - t_start,
                       epochs_done=len(s.history), stopped_early=stopped_early,
                       extra={"restarts": s.restarts})
