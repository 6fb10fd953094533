"""How beta and gamma trade off cluster separation, accuracy and reconstruction (the main job).

A Ray Tune grid over beta (the KL weight) and gamma (the affinity weight) on rotated
alphanumeric glyphs with '2' held out as an unseen class (configs/alphanumeric.yaml: each
glyph scaled to one box, NCC affinity); gamma = 0 is the plain beta-VAE of the paper.
The summary lists, per trial, the seen classes nearest the unseen '2' and how well a pose
dimension follows the rotation angle.  ASHA stops trials that fall behind on validation accuracy.
Every trial is an MLflow child run (params, per-epoch losses, accuracy, F1,
silhouette, novelty AUROC, latent map, figures); the parent run holds the beta x gamma
heatmap of accuracy, the grid of latent embeddings (the paper's Figs 9-10) and a CSV
of all trials.

  python studies/gamma_beta.py                      # local: 15 trials, about 20 minutes on 2 cores
  python studies/gamma_beta.py --smoke-test         # CI: 4 tiny trials
  python studies/gamma_beta.py --scale paper --address auto --workers 2 --gpu   # on a cluster
  python studies/gamma_beta.py --resume             # continue an interrupted study
  mlflow ui --backend-store-uri sqlite:///runs/gamma_beta/mlflow.db
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from ray import tune

from affvae.tune import StudySpec, deep_update, study_main

#: the glyph config (configs/alphanumeric.yaml: glyphs scaled to one box, NCC affinity, one
#: class anchor), whose unseen '2' lands nearest 'z' as in the paper, with a study's settings
BASE = deep_update(yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "alphanumeric.yaml").read_text()),
                   train={"threads": 1, "checkpoint_every": 1})


def build(scale: str) -> StudySpec:
    if scale == "smoke":
        base = deep_update(BASE, data={"size": 32, "glyphs": "aeb2", "n_per_class": 24},
                           train={"epochs": 3}, eval={"embedding": "pca"})
        space = {"loss.beta": tune.grid_search([1.0, 4.0]), "loss.gamma": tune.grid_search([0.0, 2.0])}
        return StudySpec("gamma_beta_smoke", base, space, grace_period=1, rows="loss.beta", cols="loss.gamma",
                         description=__doc__.splitlines()[0])
    if scale == "paper":
        base = deep_update(BASE, data={"n_per_class": 1000}, train={"epochs": 100, "threads": 0},
                           model={"latent_dims": 16})
        space = {"loss.beta": tune.grid_search([1.0, 2.0, 3.0, 4.0, 5.0]),
                 "loss.gamma": tune.grid_search([0.0, 1.0, 3.0, 4.0, 6.0, 10.0, 20.0])}
        return StudySpec("gamma_beta_paper", base, space, grace_period=10, reduction_factor=3,
                         rows="loss.beta", cols="loss.gamma", description=__doc__.splitlines()[0])
    space = {"loss.beta": tune.grid_search([1.0, 2.0, 4.0]),
             "loss.gamma": tune.grid_search([0.0, 1.0, 3.0, 6.0, 10.0])}
    # ASHA's first rung at a third of the epochs (10 of 30), halving there and at 20: the
    # latent map's validation accuracy ranks trials by then (docs/results.md)
    return StudySpec("gamma_beta", BASE, space, grace_period=10, rows="loss.beta", cols="loss.gamma",
                     description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(study_main(__doc__, build))
