"""The reference implementation's own test folders, read unchanged (issue 13).

``shared/reference-data/affinity-vae-tests`` beside the checkout (CI puts it there;
its README names each file's origin) holds ``testdata_mrc`` (64^3 ``.mrcs``, an
asymmetric 53-class affinity CSV, classes absent from training in ``test/``) and
``testdata_npy`` (2D 64x64 ``.npy`` glyphs, a ``classes.csv`` naming a class ``z``
without files).  Both must check, train with ``configs/mrc_folder.yaml`` and
evaluate on their ``test/`` folders, warning (not failing) about what they get
wrong.  The data are read in place, never copied into the repository.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from affvae.cli import main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference-data" / "affinity-vae-tests"
CONFIG = ROOT / "configs" / "mrc_folder.yaml"

#: a short run of the shipped folder config: what is tested is reading, training and
#: evaluating these folders end to end, not how well two epochs classify
SHORT = ["train.epochs=2", "train.batch_size=16", "train.checkpoint_every=1", "eval.figures=false",
         "eval.decoded_identification=false"]

ASYMMETRY = ("affinity_fsc_10.csv: not symmetric, largest |A - A^T| is 0.166 at (1i5e, 1lop) = -0.73555 "
             "but (1lop, 1i5e) = -0.901728; using (A + A^T)/2")
MISSING_Z = ("classes.csv: class 'z' listed to train on but {folder} has no <class>_*.mrc|.mrcs|.npy file "
             "for it; training on the other 9 (a, e, i, j, s, u, v, d, 2)")

#: per folder: its dimensionality, the classes trained on, the one warning train gives, the
#: classes of test/ that training never saw, and the number of test/ items
FOLDERS = {
    "testdata_mrc": dict(ndim=3, classes=["1b23", "1dfo", "1dkg", "1e3p"], warning=ASYMMETRY,
                         test_unseen={"1fcj", "1u22"}, n_test=20),
    "testdata_npy": dict(ndim=2, classes=list("aeijsuvd2"), warning=MISSING_Z,
                         test_unseen={"5", "x"}, n_test=11),
}


def reference(name: str) -> Path:
    folder = REFERENCE / name
    if not folder.is_dir():
        pytest.skip(f"reference data not found at {folder} (the reference implementation's test folders; "
                    "CI places shared/reference-data beside the checkout)")
    return folder


def warnings_of(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ": warning: " in ln]


def expected_warning(name: str, folder: Path) -> str:
    return f"{folder}/" + FOLDERS[name]["warning"].format(folder=folder)


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_check_summarises_a_reference_folder_with_one_warning(name, capsys):
    folder = reference(name)
    spec = FOLDERS[name]
    assert main(["check", str(folder)]) == 0
    out, err = capsys.readouterr()
    (warning,) = warnings_of(err)
    assert warning.startswith("affvae check: warning: ") and expected_warning(name, folder) in warning
    shape = "x".join(["64"] * spec["ndim"])
    assert f"{folder}: " in out and f"items of shape {shape} ({spec['ndim']}D)" in out
    assert f"classes to train on ({len(spec['classes'])}): {spec['classes'][0]} " in out
    assert f"affinity: {len(spec['classes'])}x{len(spec['classes'])}" in out  # reduced to the training classes
    unseen = ", ".join(sorted(spec["test_unseen"]))
    assert f"test/: {spec['n_test']} items (" in out and f"not trained on: {unseen} (evaluated as unseen)" in out


def test_check_strict_refuses_the_asymmetric_reference_matrix(capsys):
    folder = reference("testdata_mrc")
    assert main(["check", str(folder), "--strict"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"affvae check: error: {folder}/affinity_fsc_10.csv: not symmetric: (1i5e, 1lop) = "
                    "-0.73555 but (1lop, 1i5e) = -0.901728 (largest |A - A^T| 0.166)")


def test_train_with_affinity_strict_refuses_it_before_writing(tmp_path, capsys):
    folder = reference("testdata_mrc")
    out = tmp_path / "r"
    assert main(["train", "--config", str(CONFIG), "--set", f"data.path={folder}",
                 "--set", "data.affinity_strict=true", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "affinity_fsc_10.csv: not symmetric: (1i5e, 1lop)" in err[0]
    assert not out.exists()


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_train_then_evaluate_test_folder(name, tmp_path, capsys):
    folder = reference(name)
    spec = FOLDERS[name]
    run = tmp_path / "r"
    args = ["train", "--config", str(CONFIG), "--set", f"data.path={folder}", "--out", str(run)]
    for item in SHORT:
        args += ["--set", item]
    assert main(args) == 0
    out, err = capsys.readouterr()
    (warning,) = warnings_of(err)
    assert warning.startswith("affvae train: warning: ") and expected_warning(name, folder) in warning
    assert f"train on {', '.join(spec['classes'])}" in out
    info = json.loads((run / "run.json").read_text())
    # the config's box for images and volumes alike; the files' shape recorded beside it
    assert info["shape"] == [32] * spec["ndim"] and info["file_shape"] == [64] * spec["ndim"]
    assert info["classes"] == spec["classes"] and info["epochs_done"] == 2
    trained = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= trained["accuracy"] <= 1.0 and trained["n_seen"] > 0

    test = folder / "test"
    assert main(["evaluate", str(run), str(test)]) == 0
    out, err = capsys.readouterr()
    assert warnings_of(err) == []  # 64-voxel test files resized to 32 as training resized its own
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    test_files = sorted(p.name for p in test.iterdir() if p.suffix in (".mrcs", ".npy"))
    labels = {f: f.split("_")[0] for f in test_files}
    n_unseen = sum(lab in spec["test_unseen"] for lab in labels.values())
    assert metrics["n"] == spec["n_test"] == len(test_files)
    assert metrics["n_seen"] == spec["n_test"] - n_unseen and metrics["n_unseen"] == n_unseen > 0
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert f"seen-class accuracy {metrics['accuracy']:.3f}" in out
    assert set(metrics["nearest_seen"]) == spec["test_unseen"]
    assert all(set(v) <= set(spec["classes"]) for v in metrics["nearest_seen"].values())
    rows = read_predictions(run / "eval_test" / "predictions.csv")
    assert [r["path"] for r in rows] == test_files
    assert all(r["label"] == labels[r["path"]] for r in rows)  # unseen classes keep their own label
    assert {r["label"] for r in rows} - set(spec["classes"]) == spec["test_unseen"]
    assert all(r["predicted"] in spec["classes"] for r in rows)  # the nearest seen centre
