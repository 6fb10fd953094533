"""Which similarity metric organises the latent space best (the paper's Figs 11-12).

Trains the same affinity-VAE on rotated alphanumeric glyphs ('2' held out) with the
affinity matrix built by each metric: none (gamma = 0, a plain beta-VAE with a pose
head), mean difference, average FSC and SOAP, over several seeds.  Every trial runs
to the end (no early stopping) so the metrics are compared at equal training.  The
parent MLflow run holds the metric x seed heatmap of seen test accuracy, the grid of
latent embeddings and the CSV of all trials; each child run has its latent map,
confusion and proximity matrices.

  python studies/similarity_metric.py                 # local: 4 metrics x 2 seeds, about 15 minutes
  python studies/similarity_metric.py --smoke-test    # CI
  python studies/similarity_metric.py --scale paper --address auto --gpu
"""

from __future__ import annotations

import sys

from gamma_beta import BASE
from ray import tune

from affvae.tune import StudySpec, deep_update, study_main

METRICS = [
    {"name": "none", "loss.gamma": 0.0},
    {"name": "mean-diff", "data.affinity_metric": "mean-diff"},
    {"name": "fsc", "data.affinity_metric": "fsc"},
    {"name": "soap", "data.affinity_metric": "soap"},
]


def build(scale: str) -> StudySpec:
    doc = __doc__.splitlines()[0]
    if scale == "smoke":
        base = deep_update(BASE, data={"size": 32, "glyphs": "aeb2", "n_per_class": 24},
                           train={"epochs": 2}, eval={"embedding": "pca"})
        space = {"metric": tune.grid_search([METRICS[0], METRICS[2], METRICS[3]]), "seed": 0}
        return StudySpec("similarity_metric_smoke", base, space, scheduler="fifo", rows="seed", cols="metric",
                         description=doc)
    if scale == "paper":
        base = deep_update(BASE, data={"n_per_class": 1000}, train={"epochs": 100, "threads": 0})
        space = {"metric": tune.grid_search(METRICS), "seed": tune.grid_search([0, 1, 2, 3, 4])}
        return StudySpec("similarity_metric_paper", base, space, scheduler="fifo", rows="seed", cols="metric",
                         description=doc)
    base = deep_update(BASE, train={"epochs": 25})
    space = {"metric": tune.grid_search(METRICS), "seed": tune.grid_search([0, 1])}
    return StudySpec("similarity_metric", base, space, scheduler="fifo", rows="seed", cols="metric",
                     description=doc)


if __name__ == "__main__":
    sys.exit(study_main(__doc__, build))
