"""How accuracy and throughput scale with the dataset size and the number of workers.

Trains on rotated alphanumeric glyphs with growing numbers of items per class, each
with 1 or more Ray Train workers (DistributedDataParallel), and reports the seen
test accuracy and the training samples per second of the trial's worker group and per
worker (median over epochs after the first; the items in memory, so training is what
is timed).  Trials run one at a time and to the end, so the
throughput of each is measured alone.  The parent MLflow run holds the heatmaps of
accuracy and samples/s (workers x items per class) and the CSV of all trials.

  python studies/dataset_scale.py                     # local: 3 sizes x 1-2 workers, about 10 minutes
  python studies/dataset_scale.py --smoke-test        # CI
  python studies/dataset_scale.py --scale paper --address auto --gpu
"""

from __future__ import annotations

import sys

from gamma_beta import BASE
from ray import tune

from affvae.tune import StudySpec, deep_update, study_main


def build(scale: str) -> StudySpec:
    doc = __doc__.splitlines()[0]
    common = {"scheduler": "fifo", "rows": "trial.workers", "cols": "data.n_per_class", "max_concurrent": 1,
              "summary_metrics": ("accuracy", "samples_per_second", "samples_per_second_per_worker"), "description": doc}
    if scale == "smoke":
        base = deep_update(BASE, data={"size": 32, "glyphs": "aeb2"}, train={"epochs": 2},
                           eval={"embedding": "pca", "figures": False})
        space = {"data.n_per_class": tune.grid_search([16, 32]), "trial.workers": 1}
        return StudySpec("dataset_scale_smoke", base, space, **common)
    if scale == "paper":
        base = deep_update(BASE, train={"epochs": 30, "threads": 0})
        space = {"data.n_per_class": tune.grid_search([100, 300, 1000, 3000, 10000]),
                 "trial.workers": tune.grid_search([1, 2, 4, 8])}
        return StudySpec("dataset_scale_paper", base, space, **common)
    base = deep_update(BASE, train={"epochs": 10})
    space = {"data.n_per_class": tune.grid_search([50, 150, 300]), "trial.workers": tune.grid_search([1, 2])}
    return StudySpec("dataset_scale", base, space, **common)


if __name__ == "__main__":
    sys.exit(study_main(__doc__, build))
