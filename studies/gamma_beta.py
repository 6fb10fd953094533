"""How beta and gamma trade off cluster separation, accuracy and reconstruction (the main job).

A Ray Tune grid over beta (the KL weight) and gamma (the affinity weight) on rotated
alphanumeric glyphs with '2' held out as an unseen class; gamma = 0 is the plain
beta-VAE of the paper.  ASHA stops trials that fall behind on validation accuracy.
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

from ray import tune

from affvae.tune import StudySpec, deep_update, study_main

BASE = {
    "seed": 0,
    "data": {"source": "alphanumeric", "size": 64, "glyphs": "aebdpijz2kxu", "unseen": ["2"],
             "n_per_class": 300, "affinity_metric": "fsc", "normalise": "minmax"},
    "model": {"filters": [8, 16, 32], "latent_dims": 8, "pose_dims": 1},
    "loss": {"beta": 1.0, "gamma": 2.0, "recon": "bce"},
    "train": {"epochs": 30, "batch_size": 32, "lr": 1e-3, "threads": 1, "checkpoint_every": 1},
    "eval": {"embedding": "umap"},
}


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
    return StudySpec("gamma_beta", BASE, space, grace_period=5, rows="loss.beta", cols="loss.gamma",
                     description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(study_main(__doc__, build))
