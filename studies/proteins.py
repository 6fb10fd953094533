"""Proteins seen and unseen: does the latent map place new proteins next to their kin?

Density maps of the built-in PDB panel (affvae/data/structures: small and large
monomers, a homodimer, elongated coiled coils and trimers) at 10 Å in 64³ boxes, with
noise at SNR 1 and a ±60° missing wedge; five proteins are seen in training and two
held out (1gui, a small monomer; 2ebo, an elongated trimer).  Each trial reports the
seen-class test accuracy, the novelty AUROC of the held-out proteins and, for each of
them, its two nearest seen class centres (MLflow tags affvae.nearest_seen.*, and the
nearest_seen column of summary/trials.csv).  gamma = 0 is the beta-VAE baseline.

  python studies/proteins.py                       # local: gamma 0 / 2 / 5, about 15 minutes
  python studies/proteins.py --smoke-test          # CI
  python studies/proteins.py --scale paper --address auto --gpu
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from ray import tune

from affvae.tune import StudySpec, deep_update, study_main

BASE = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "proteins.yaml").read_text())
BASE = deep_update(BASE, train={"threads": 1, "checkpoint_every": 1})


def build(scale: str) -> StudySpec:
    doc = __doc__.splitlines()[0]
    common = {"scheduler": "fifo", "cols": "loss.gamma", "description": doc,
              "summary_metrics": ("accuracy", "novelty_auroc")}
    if scale == "smoke":
        base = deep_update(BASE, data={"size": 32, "resolution": 20.0, "n_per_class": 8},
                           model={"filters": [4, 8, 16]}, train={"epochs": 2}, eval={"embedding": "pca"})
        return StudySpec("proteins_smoke", base, {"loss.gamma": tune.grid_search([0.0, 2.0])}, **common)
    if scale == "paper":
        base = deep_update(BASE, data={"n_per_class": 1000}, train={"epochs": 100, "threads": 0})
        space = {"loss.gamma": tune.grid_search([0.0, 1.0, 2.0, 5.0, 10.0]), "seed": tune.grid_search([0, 1, 2])}
        return StudySpec("proteins_paper", base, space, rows="seed", **common)
    return StudySpec("proteins", BASE, {"loss.gamma": tune.grid_search([0.0, 2.0, 5.0])}, **common)


if __name__ == "__main__":
    sys.exit(study_main(__doc__, build))
