"""The typed configuration tree, saved fully resolved with every run.

One ``Config`` describes a run: where the data comes from (a simulator or a
folder), the model, the loss and its schedules, training and evaluation.  It is
read from YAML, adjusted with dotted overrides (``loss.gamma=3``) from the CLI or
from a Ray Tune search space, validated (unknown keys and out-of-range values are
rejected with one line naming the key), and written back as ``config.yaml``.

Loss conventions
----------------
``loss.convention`` picks how the three terms are scaled; it changes what a
given beta and gamma mean, so it is recorded with every run:

``reference`` (default)
    As the paper authors' reference implementation: reconstruction averaged over
    voxels and the batch, KL averaged over latent dimensions and the batch, and the
    affinity loss on the means mu, averaged over the pairs i < j of the batch.  With
    it the paper's beta (1..5) and gamma (0..20) ranges carry over unchanged.
``formula``
    As the paper's equation: reconstruction summed over voxels, KL summed over
    latent dimensions (both averaged over the batch), and
    S(z) = sum_ij |A[c_i, c_j] - cos(z_i, z_j)| / N over all ordered pairs of the
    sampled z.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from affvae.errors import ConfigError
from affvae.provenance import atomic_write


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    #: "tetramino" / "alphanumeric" / "proteins" simulate in memory; "folder" reads the
    #: folder ``path``; "star" reads the subtomograms of the RELION particle STAR file ``path``
    source: Literal["tetramino", "alphanumeric", "proteins", "folder", "star"] = "tetramino"
    path: str | None = None
    #: proteins: PDB/mmCIF files or folders ("panel": the built-in panel), map resolution
    #: and voxel size in Å (default resolution / 3)
    structures: list[str] = Field(default_factory=lambda: ["panel"])
    resolution: float = Field(default=10.0, gt=0)
    voxel_size: float | None = Field(default=None, gt=0)
    #: star: the column holding each particle's class
    class_column: str = "rlnClassNumber"
    #: box side (simulated size, or resize folder data to a cube / square)
    size: int | None = Field(default=None, ge=8, le=512)
    #: classes to train on (default: classes.csv, or every simulated class not unseen)
    classes: list[str] | None = None
    #: classes held out of training and evaluated as unseen
    unseen: list[str] = Field(default_factory=list)
    n_per_class: int = Field(default=200, ge=2)
    rotation: Literal["uniform", "grid", "none"] = "uniform"
    glyphs: str = "aebdpijzkxu2"
    #: glyph scale: "natural" (the font's relative sizes) or "box" (every glyph's outline
    #: box the same size)
    glyph_size: Literal["natural", "box"] = "natural"
    shapes: list[str] = Field(default_factory=lambda: ["I", "O", "T", "L", "S", "branch", "screwR", "screwL"])
    fused: list[str] = Field(default_factory=list)  # e.g. ["L+T"]
    #: fused class: mean of the parents' densities (blend) or every cube of either (union)
    fuse_mode: Literal["blend", "union"] = "blend"
    cube: float | None = Field(default=None, gt=0)
    elongation: float = Field(default=1.0, gt=0)
    #: training-time augmentation: "octahedral" rotates each 3D training item by a random
    #: one of the 24 cube symmetries every epoch (exact; for uniform or grid rotations);
    #: "auto" (the default): octahedral for 3D volumes, none for 2D images, and none for a
    #: stream of fresh uniform rotations (rotation: uniform, or rotate_files), which it
    #: would leave as uniform as it found them
    augment: Literal["auto", "none", "octahedral"] = "auto"
    #: how simulated 3D items are rendered: "fast" rotates each class's template, rendered
    #: exactly once (three batched bilinear plane rotations of a sharpened template; correlation with the exact
    #: rendering 0.99 and above), "exact" renders every item exactly (tetracubes: partial
    #: volumes; proteins: Gaussian sums at the voxel centres)
    render: Literal["fast", "exact"] = "fast"
    #: render training items on the fly (fresh poses every epoch for simulated data;
    #: files read per batch for folders), locally or with Ray Data
    stream: bool = False
    #: where a Ray Train worker renders its streamed items: "ray" in Ray Data tasks beside
    #: it (they overlap the step on spare cores), "local" in the worker itself, just before
    #: each step; "auto" (the default) takes Ray Data when the worker's node has a core to
    #: spare for every training worker on it, else local (on 2 cores with 2 workers, Ray
    #: Data's tasks and executor preempt the trainers: 0.43 of the in-memory samples/s,
    #: local 0.89).  A single process always renders locally.
    stream_engine: Literal["auto", "ray", "local"] = "auto"
    #: random rotation of folder items when streamed (simulated items have their own poses)
    rotate_files: bool = False
    #: imaging effects on every item: additive Gaussian noise at this signal-to-noise
    #: (variance) ratio, and removal of the missing wedge of a +-wedge degree tilt series
    snr: float | None = Field(default=None, gt=0)
    #: a contrast transfer function at this defocus (µm, underfocus > 0; 300 kV, Cs 2.7 mm,
    #: 7% amplitude contrast), applied before the wedge and the noise; needs the voxel size
    ctf_defocus: float | None = Field(default=None, gt=0, le=20)
    wedge: float | None = Field(default=None, gt=0, lt=90)
    #: per-item intensity normalisation: minmax to [0, 1], standard (z-score), none
    normalise: Literal["minmax", "standard", "none"] = "standard"
    #: affinity CSV; if unset, the folder's affinity*.csv, else computed with ``affinity_metric``
    affinity: str | None = None
    #: refuse an asymmetric affinity CSV instead of using its symmetric part (A + A^T)/2
    #: (with a warning naming the largest |A - A^T|)
    affinity_strict: bool = False
    affinity_metric: str = "fsc"
    #: rotational alignment of the templates before comparing them: "auto" (the default)
    #: searches SO(3) coarse to fine for 3D templates, which come in arbitrary frames, and
    #: compares 2D ones (upright glyphs) as they lie; "refine" searches for 2D too; 0
    #: compares as they lie; a number N takes the best of N fixed rotations
    affinity_align: int | Literal["auto", "refine"] = "auto"
    #: stretch the affinity's off-diagonal linearly onto [lo, hi] (the least similar pair of
    #: classes to lo, the most similar to hi), as the reference implementation's matrices are
    #: (-1 to -0.04): the order of similarity kept, spread over cosines the latent space can
    #: hold apart (aligned template FSCs of proteins lie at 0.05 to 0.9); null keeps the
    #: values as computed or read
    affinity_range: tuple[float, float] | None = (-1.0, 0.0)
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self):
        if self.source in ("folder", "star") and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.ctf_defocus is not None and self.voxel_size is None and self.source != "proteins":
            raise ValueError("data.ctf_defocus needs data.voxel_size (Å per voxel)")
        if self.stream and self.source == "star":
            raise ValueError(f"data.stream: not available for data.source {self.source!r} yet "
                             "(its items are rendered or read once, in memory)")
        if self.augment == "octahedral" and self.source == "alphanumeric":
            raise ValueError("data.augment: octahedral is for 3D volumes, not 2D glyphs")
        if self.affinity_range is not None:
            lo, hi = self.affinity_range
            if not -1.0 <= lo < hi < 1.0:
                raise ValueError(f"data.affinity_range: {[lo, hi]}: expected -1 <= lo < hi < 1")
        if isinstance(self.affinity_align, int) and self.affinity_align < 0:
            raise ValueError(f"data.affinity_align: {self.affinity_align} rotations: expected 0 or more, "
                             "auto or refine")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 10% to train")
        return self


class ModelConfig(_Section):
    #: channels of each conv block; the number of blocks is the depth
    filters: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1, max_length=6)
    #: at least the number of classes: S asks for class directions as far apart as A says
    latent_dims: int = Field(default=16, ge=1, le=512)
    #: 0 turns the pose head off
    pose_dims: int = Field(default=1, ge=0, le=64)
    batch_norm: bool = True
    #: decoder output: sigmoid (data in [0, 1]), linear, or auto (sigmoid iff minmax data)
    output: Literal["auto", "sigmoid", "linear"] = "auto"

    @field_validator("filters")
    @classmethod
    def _positive(cls, v):
        if any(f < 1 for f in v):
            raise ValueError("every filter count must be at least 1")
        return v


class Schedule(_Section):
    """How a weight evolves over epochs: constant, linear warm-up or cyclical annealing."""

    kind: Literal["constant", "linear", "cyclical"] = "constant"
    #: linear: epochs to ramp from ``start`` to the full value
    warmup_epochs: int = Field(default=10, ge=1)
    start: float = Field(default=0.0, ge=0.0)
    #: cyclical (Fu et al. 2019): number of cycles over the run and the ramping fraction of each
    cycles: int = Field(default=4, ge=1)
    ratio: float = Field(default=0.5, gt=0.0, le=1.0)


class LossConfig(_Section):
    #: KL weight; in the reference convention recon is a per-voxel mean, so beta ~ 1 outweighs
    #: what the decoder gains from z and z is ignored (the decoder draws one blob)
    beta: float = Field(default=0.001, ge=0.0)
    gamma: float = Field(default=2.0, ge=0.0)
    beta_schedule: Schedule = Field(default_factory=Schedule)
    gamma_schedule: Schedule = Field(default_factory=Schedule)
    recon: Literal["mse", "bce"] = "mse"
    convention: Literal["reference", "formula"] = "reference"
    #: weight, inside S, of each item's pairs with fixed class anchors whose cosines
    #: realise A (0: the paper's S over the batch's pairs only)
    anchors: float = Field(default=1.0, ge=0.0)
    #: how S weighs its pairs: "uniform" (every pair alike, the paper's S) or "balanced"
    #: (pairs of one class and pairs of two classes as two equal halves)
    pairs: Literal["uniform", "balanced"] = "balanced"


class TrainConfig(_Section):
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=32, ge=2)
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: mixed precision: auto = on for CUDA, off on CPU
    amp: Literal["auto", "on", "off"] = "auto"
    checkpoint_every: int = Field(default=5, ge=1)
    #: torch intra-op threads (0: torch's default)
    threads: int = Field(default=0, ge=0)
    #: stop early when the wall time in minutes is exceeded (0: no limit)
    max_minutes: float = Field(default=0.0, ge=0.0)

    @field_validator("amp", mode="before")
    @classmethod
    def _on_off(cls, v):
        # YAML 1.1 reads a bare on/off (in a config file or --set train.amp=off) as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class EvalConfig(_Section):
    classifier: Literal["nearest", "mlp"] = "nearest"
    #: the latent map's geometry: nearest centre by Euclidean distance of mu, or by the
    #: cosine of mu and the class's mean direction (what the affinity term shapes)
    distance: Literal["euclidean", "cosine"] = "cosine"
    #: training items whose mu (eval mode) give the per-epoch latent map behind
    #: val_accuracy: all of the training split up to this many, else a fixed stratified
    #: subset of this size
    map_items: int = Field(default=4096, ge=1)
    #: score how well the decoded class centres identify their classes (metrics.json:
    #: decoded_identification; a rotational alignment per centre and class)
    decoded_identification: bool = True
    embedding: Literal["auto", "umap", "tsne", "pca"] = "auto"
    figures: bool = True


class Config(_Section):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values (for MLflow params and Tune search spaces)."""
        out: dict[str, Any] = {}

        def walk(prefix, node):
            for k, v in node.items():
                key = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(key + ".", v)
                else:
                    out[key] = v
        walk("", self.to_dict())
        return out


#: The sections of a config file (besides the top-level ``seed``).
SECTIONS = ("data", "model", "loss", "train", "eval")


def _format_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: {key}: {msg}{shown}"


def _set_dotted(tree: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {key!r}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``"loss.gamma=3"`` -> ``("loss.gamma", 3)``; the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. loss.gamma=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(base: dict | None = None, overrides: dict[str, Any] | list[str] | None = None,
                 source: str = "config") -> Config:
    """Validate a nested dict plus dotted overrides into a :class:`Config`."""
    tree = copy.deepcopy(base or {})
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)})")
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value, source)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def load_config(path: str | os.PathLike | None = None, overrides=None) -> Config:
    """Read YAML (or start from defaults) and apply overrides."""
    base: dict = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                              "expected a YAML config") from None
        try:
            base = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if base is None:
            # almost always a mistake (a wrong or truncated file): it would train the defaults
            raise ConfigError(f"{path}: empty config; expected sections {', '.join(SECTIONS)} "
                              "(leave --config out to train the built-in defaults)")
    return build_config(base, overrides, source)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path) as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    return path
