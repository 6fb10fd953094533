"""The command line as a user runs it: exit codes, one-line errors, files on disk."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest

from affvae.cli import main
from affvae.volumes import write_volume


@pytest.fixture(scope="module")
def tetra(tmp_path_factory):
    out = tmp_path_factory.mktemp("tetra") / "d"
    assert main(["simulate", "tetramino", "--out", str(out), "-n", "3", "--size", "16",
                 "--fuse", "L+T", "--unseen", "LT"]) == 0
    return out


def run_cli(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "affvae", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow  # two fresh processes, each importing torch, and an aligned 8-class FSC matrix
def test_simulate_then_affinity_end_to_end(tmp_path, png):
    from matplotlib import colormaps

    from affvae.affinity.matrix import read_affinity_csv

    d = tmp_path / "d"
    r = run_cli("simulate", "tetramino", "--out", str(d), "-n", "2", "--size", "16")
    assert r.returncode == 0, r.stderr
    r = run_cli("affinity", str(d), "--metric", "fsc", "--out", str(tmp_path / "a.csv"), "--plot")
    assert r.returncode == 0, r.stderr
    m = read_affinity_csv(tmp_path / "a.csv")
    assert list(m.classes) == ["I", "O", "T", "L", "S", "branch", "screwR", "screwL"]
    assert np.array_equal(np.diag(m.values), np.ones(8)) and np.abs(m.values - np.eye(8)).max() > 0.1
    img = png(tmp_path / "a.png")  # 5.6 x 5.1 inches at 120 dpi, trimmed to the drawing
    assert 450 < img.shape[0] < 700 and 500 < img.shape[1] < 800
    # the diagonal's eight cells in the colour of similarity 1 (the colour bar alone has a sliver)
    assert png.share(img, colormaps["RdBu_r"](1.0)) > 0.03
    assert (tmp_path / "a.provenance.json").is_file()


def test_affinity_on_any_anchor_folder_without_templates(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("ribosome", "proteasome"):
        for i in range(3):
            write_volume(tmp_path / f"{c}_{i}_tomo7.mrc", rng.standard_normal((12, 12, 12)))
    (tmp_path / "classes.csv").write_text("ribosome,proteasome\n")
    for metric in ("fsc", "ncc", "mean-diff"):
        assert main(["affinity", str(tmp_path), "--metric", metric, "--out", str(tmp_path / f"{metric}.csv")]) == 0
        assert (tmp_path / f"{metric}.csv").read_text().startswith("ribosome,proteasome\n")


def test_glyph_affinity_with_soap(tmp_path):
    d = tmp_path / "g"
    assert main(["simulate", "alphanumeric", "--out", str(d), "-n", "1", "--glyphs", "aexk"]) == 0
    assert main(["affinity", str(d), "--metric", "soap", "--out", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().startswith("a,e,x,k\n")


def test_check_summarises_a_good_folder(tetra, capsys):
    assert main(["check", str(tetra)]) == 0
    out = capsys.readouterr().out
    assert "27 items" in out and "held out (1): LT 3" in out


def copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _bad_cases(tetra, tmp):
    """(name, folder, extra args, text the error must contain)."""
    cases = []
    first = {c: sorted(tetra.glob(f"{c}_*.mrc"))[0].name for c in ("I", "O", "L")}
    d = copy_folder(tetra, tmp / "trunc")
    p = d / first["I"]
    p.write_bytes(p.read_bytes()[:-500])
    cases.append(("truncated", d, [], first["I"]))
    d = copy_folder(tetra, tmp / "garbage")
    (d / first["O"]).write_bytes(b"not an mrc file at all" * 10)
    cases.append(("unreadable", d, [], first["O"]))
    d = copy_folder(tetra, tmp / "mixed")
    write_volume(d / "T_99.mrc", np.ones((8, 8, 8)))
    cases.append(("mixed shapes", d, [], "T_99.mrc"))
    d = copy_folder(tetra, tmp / "nan")
    with mrcfile.open(d / first["L"], "r+") as f:
        f.data[1, 2, 3] = np.nan
    cases.append(("NaN", d, [], first["L"]))
    d = copy_folder(tetra, tmp / "noclass")
    (d / "classes.csv").write_text("Z,Q\n")  # one class without files only warns; none left is refused
    cases.append(("no class with files", d, [], "classes 'Z', 'Q' listed to train on"))
    for name, text, extra, needle in [
        ("not square", "I,O\n1,0\n", [], "not square"),
        ("not symmetric", ASYM_TETRA, ["--strict"], "not symmetric: (I, O) = 0.3 but (O, I) = 0"),
        ("outside", "I,O\n1,2\n2,1\n", [], "outside"),
        ("missing class", "I,O\n1,0\n0,1\n", [], "missing class"),
    ]:
        d = copy_folder(tetra, tmp / name.replace(" ", "_"))
        (d / "affinity.csv").write_text(text)
        cases.append((name, d, extra, needle))
    return cases


#: the eight tetracubes' affinity with (I, O) = 0.3 but (O, I) = 0
ASYM_TETRA = "I,O,T,L,S,branch,screwR,screwL\n" + "\n".join(
    ",".join("0.3" if (i, j) == (0, 1) else ("1" if i == j else "0") for j in range(8))
    for i in range(8)) + "\n"


def test_check_warns_and_goes_on_over_what_reference_folders_hold(tetra, tmp_path, capsys):
    d = copy_folder(tetra, tmp_path / "d")
    (d / "affinity.csv").write_text(ASYM_TETRA)
    (d / "classes.csv").write_text("I,O,Z,T\n")
    assert main(["check", str(d)]) == 0
    out, err = capsys.readouterr()
    w_classes, w_aff = warnings_of(err)
    assert f"{d / 'classes.csv'}: class 'Z' listed to train on" in w_classes and "training on the other 3" in w_classes
    assert f"{d / 'affinity.csv'}: not symmetric, largest |A - A^T| is 0.3 at (I, O)" in w_aff
    assert "classes to train on (3): I 3, O 3, T 3" in out and "affinity: 3x3" in out
    assert main(["check", str(d), "--strict"]) == 2
    assert "affinity.csv: not symmetric: (I, O) = 0.3" in capsys.readouterr().err.splitlines()[-1]


def test_each_bad_input_fails_with_one_clear_line(tetra, tmp_path, capsys):
    for name, folder, extra, needle in _bad_cases(tetra, tmp_path):
        capsys.readouterr()
        code = main(["check", str(folder), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert len(err.splitlines()) == 1, (name, err)
        assert needle in err, (name, err)
        assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli("--debug", "check", str(tmp_path / "missing"))
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = run_cli("check", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr


def test_failed_affinity_leaves_existing_output_untouched(tetra, tmp_path):
    out = tmp_path / "affinity.csv"
    out.write_text("precious\n")
    d = copy_folder(tetra, tmp_path / "bad")
    (d / "template_S.mrc").write_bytes(b"\x00" * 10)
    assert main(["affinity", str(d), "--out", str(out)]) == 2
    assert out.read_text() == "precious\n"


def test_simulate_refuses_to_overwrite(tetra, capsys):
    before = sorted(p.name for p in tetra.iterdir())
    assert main(["simulate", "tetramino", "--out", str(tetra), "-n", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tetra.iterdir()) == before


# ----------------------------------------------------------------- faults and bad inputs
# Each case runs as a user would (in-process through main, or as a process where a
# signal is sent) and checks the README's promise: exit status 2, one line naming
# the file, key or value, no traceback, and nothing on disk changed or half-written.

TINY = """seed: 0
data: {source: folder, path: PATH, normalise: minmax, affinity_metric: ncc}
model: {filters: [4, 8], latent_dims: 4, pose_dims: 1}
loss: {gamma: 1.0}
train: {epochs: 2, batch_size: 8, checkpoint_every: 1}
eval: {embedding: pca, figures: false}
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """24 tetracubes of 16^3: I, O, T to train on, L held out."""
    out = tmp_path_factory.mktemp("base") / "base"
    assert main(["simulate", "tetramino", "--out", str(out), "-n", "6", "--size", "16",
                 "--shapes", "I,O,T,L", "--unseen", "L"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny(base, tmp_path_factory):
    """A 2-epoch config of a tiny model on ``base``."""
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(TINY.replace("PATH", str(base)))
    return p


@pytest.fixture(scope="module")
def run_ok(tiny, tmp_path_factory):
    """A finished run of ``tiny`` (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "run_ok"
    assert main(["train", "--config", str(tiny), "--out", str(out)]) == 0
    return out


def _seen_accuracy(rows, classes):
    """The fraction of the rows of seen classes in a predictions.csv that are right."""
    seen = [r for r in rows if r["label"] in classes]
    return sum(r["label"] == r["predicted"] for r in seen) / len(seen), len(seen)


def test_train_writes_a_run_folder_whose_files_agree(run_ok, tiny):
    import csv
    import json

    from affvae.config import load_config
    from affvae.latent_map import LatentMap
    from affvae.runs import read_embeddings

    names = {p.name for p in run_ok.iterdir()}
    assert {"config.yaml", "provenance.json", "run.json", "model.pt", "history.csv", "affinity.csv",
            "latent_map.parquet", "embeddings.parquet", "metrics.json", "predictions.csv", "checkpoints"} <= names
    assert load_config(run_ok / "config.yaml") == load_config(tiny)
    info = json.loads((run_ok / "run.json").read_text())
    assert (info["shape"], info["classes"], info["epochs_done"], info["n_items"]) == ([16] * 3, ["I", "O", "T"], 2, 24)
    history = list(csv.DictReader((run_ok / "history.csv").open()))
    assert [int(float(h["epoch"])) for h in history] == [1, 2]  # one row per epoch
    assert sorted(p.name for p in (run_ok / "checkpoints").iterdir()) == ["epoch_00001.pt", "epoch_00002.pt"]
    metrics = json.loads((run_ok / "metrics.json").read_text())
    rows = list(csv.DictReader((run_ok / "predictions.csv").open()))
    emb = read_embeddings(run_ok / "embeddings.parquet")
    assert len(emb) == 24 and set(emb["split"]) == {"train", "val", "test", "unseen"}
    # predictions.csv holds the test split and the unseen class, and metrics.json scores it
    tested = emb[emb["split"].isin(["test", "unseen"])]
    assert sorted(r["path"] for r in rows) == sorted(tested["path"])
    acc, n_seen = _seen_accuracy(rows, info["classes"])
    assert metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert (metrics["n_seen"], metrics["n_unseen"]) == (n_seen, 6) and metrics["epochs_done"] == 2
    assert metrics["val_accuracy"] == pytest.approx(float(history[-1]["val_accuracy"]), abs=1e-12)
    # the latent map's centres are the mean direction of the training split's mu, class by
    # class (the default cosine geometry: the unit mean of the unit vectors)
    lm = LatentMap.load(run_ok / "latent_map.parquet")
    assert lm.metric == "cosine"
    mu = [c for c in emb.columns if c.startswith("mu_")]
    train_rows = emb[emb["split"] == "train"]
    for c, centre in zip(lm.classes, lm.centres):
        v = train_rows.loc[train_rows["class"] == c, mu].to_numpy(np.float64)
        mean = (v / np.linalg.norm(v, axis=1, keepdims=True)).mean(0)
        np.testing.assert_allclose(centre, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_evaluate_of_the_run_on_its_folder_recomputes_the_same_predictions(run_ok, base, tmp_path, capsys):
    import csv
    import json

    import torch

    from affvae.data.io import load_folder
    from affvae.model import encode_all
    from affvae.runs import load_run
    from affvae.transforms.imaging import normalise

    out = tmp_path / "ev"
    assert main(["evaluate", str(run_ok), str(base), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == metrics["n_items"] == 24
    cfg, model, lm, info = load_run(run_ok)
    ds = load_folder(base, affinity=False)
    mu, _, _ = encode_all(model, torch.from_numpy(normalise(ds.x, cfg.data.normalise)), torch.device("cpu"))
    predicted, _ = lm.predict(mu)
    seen = np.isin(ds.labels, info["classes"])
    direct = float((predicted[seen] == ds.labels[seen]).mean())
    assert metrics["accuracy"] == pytest.approx(direct, abs=1e-12)
    assert _seen_accuracy(rows, info["classes"]) == (pytest.approx(direct, abs=1e-12), 18)
    assert {r["path"]: r["predicted"] for r in rows} == dict(zip(ds.paths, predicted.tolist()))
    # the run's own test rows are predicted alike by the evaluation of the whole folder
    run_rows = {r["path"]: r for r in csv.DictReader((run_ok / "predictions.csv").open())}
    for r in rows:
        if r["path"] in run_rows:
            assert r["predicted"] == run_rows[r["path"]]["predicted"]
            assert float(r["distance"]) == pytest.approx(float(run_rows[r["path"]]["distance"]), rel=1e-4)
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert {"embedding.png", "confusion.png", "proximity.png", "traversal.png"} <= set(figures)
    assert f"evaluated 24 items; seen-class accuracy {direct:.3f}; results in {out}" in capsys.readouterr().out


def test_a_lazy_evaluate_reads_in_batches_and_predicts_as_the_whole_read(run_ok, base, tmp_path, monkeypatch):
    import csv

    from affvae.data import lazy

    reads = []
    real = lazy.read_stack
    monkeypatch.setattr(lazy, "read_stack", lambda files, *a, **k: reads.append(len(files)) or real(files, *a, **k))
    whole, part = tmp_path / "whole", tmp_path / "lazy"
    assert main(["evaluate", str(run_ok), str(base), "--no-figures", "--out", str(whole)]) == 0
    assert reads == []  # the whole folder was read at once, not by LazyItems
    assert main(["evaluate", str(run_ok), str(base), "--no-figures", "--lazy", "--out", str(part)]) == 0
    assert reads == [24]  # LazyItems read each file once, in one encoding batch (of up to 256)
    a, b = (list(csv.DictReader((d / "predictions.csv").open())) for d in (whole, part))
    assert [r["predicted"] for r in a] == [r["predicted"] for r in b]
    assert [float(r["distance"]) for r in a] == pytest.approx([float(r["distance"]) for r in b], rel=1e-5)
    assert json.loads((whole / "metrics.json").read_text())["accuracy"] == \
        json.loads((part / "metrics.json").read_text())["accuracy"]


def test_octahedral_augmentation_of_2d_items_is_refused_in_one_line(tmp_path, capsys):
    d = tmp_path / "glyphs"
    assert main(["simulate", "alphanumeric", "--out", str(d), "-n", "4", "--glyphs", "ab", "--size", "16"]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.replace("PATH", str(d)).replace("normalise: minmax", "normalise: minmax, augment: octahedral"))
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    one_error(capsys.readouterr().err, "data.augment: octahedral needs 3D volumes", alone=True)
    assert not (tmp_path / "run").exists()


def snapshot(folder):
    """Every file under ``folder``: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(err, *needles, alone=False):
    """The one error line of ``err`` (the last line; alone: the only one), holding each needle."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error: " in ln]
    assert "Traceback" not in err, err
    assert len(errors) == 1 and errors[0] == lines[-1], err
    if alone:
        assert len(lines) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def warnings_of(err):
    return [ln for ln in err.splitlines() if ": warning: " in ln]


def test_resume_with_another_model_is_refused_before_any_file_changes(tiny, run_ok, base, tmp_path, capsys):
    run = copy_folder(run_ok, tmp_path / "run")
    before = snapshot(run)
    code = main(["train", "--config", str(tiny), "--set", "model.latent_dims=6", "--set", "train.epochs=4",
                 "--out", str(run), "--resume"])
    assert code == 2
    one_error(capsys.readouterr().err, f"{run}/checkpoints/epoch_00002.pt: cannot resume a different model",
              "model.latent_dims is 4 in the checkpoint but 6 now", alone=True)
    assert snapshot(run) == before
    assert main(["evaluate", str(run), str(base), "--no-figures", "--out", str(tmp_path / "ev")]) == 0


def test_resume_from_only_damaged_checkpoints_changes_nothing(tiny, run_ok, tmp_path, capsys):
    run = copy_folder(run_ok, tmp_path / "run")
    for p in (run / "checkpoints").iterdir():
        p.write_bytes(p.read_bytes()[:1000])
    before = snapshot(run)
    code = main(["train", "--config", str(tiny), "--set", "train.epochs=3", "--out", str(run), "--resume"])
    assert code == 2
    one_error(capsys.readouterr().err, "epoch_00002.pt: cannot read checkpoint", "no other checkpoint",
              alone=True)
    assert snapshot(run) == before


def test_resume_on_a_full_disk_keeps_the_run_as_it_was(tiny, run_ok, small_fs, capsys):
    pages = sum(-(-p.stat().st_size // 4096) * 4096 for p in run_ok.rglob("*") if p.is_file())
    fs = small_fs(f"{pages // 1024 + 96}k")  # the run, and less than one more checkpoint
    run = copy_folder(run_ok, fs / "run")
    before = snapshot(run)
    code = main(["train", "--config", str(tiny), "--set", "train.epochs=4", "--out", str(run), "--resume"])
    assert code == 2
    one_error(capsys.readouterr().err, f"{run}/checkpoints/epoch_00003.pt: No space left on device")
    assert snapshot(run) == before


def test_a_full_disk_while_checkpointing_is_one_line(tiny, small_fs, capsys):
    from affvae.checkpoints import load_checkpoint

    fs = small_fs("300k")  # room for one checkpoint, not two
    code = main(["train", "--config", str(tiny), "--out", str(fs / "run")])
    assert code == 2
    one_error(capsys.readouterr().err, f"{fs}/run/checkpoints/epoch_00002.pt: No space left on device")
    ck = fs / "run" / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["epoch_00001.pt"]  # no temporary file left
    assert load_checkpoint(ck / "epoch_00001.pt")["epoch"] == 1


def test_non_utf8_affinity_csv_is_one_line_and_a_bom_is_stripped(base, tmp_path, capsys):
    a = tmp_path / "a.csv"
    a.write_bytes(b"\xff\xfe\x00garbage\x00\n")
    assert main(["check", str(base), "--affinity", str(a)]) == 2
    one_error(capsys.readouterr().err, f"{a}: not UTF-8 text", alone=True)
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffI,O,T\n1,0.2,0.3\n0.2,1,0.1\n0.3,0.1,1\n".encode())
    assert main(["check", str(base), "--affinity", str(bom)]) == 0
    assert "affinity: 3x3" in capsys.readouterr().out


def test_non_utf8_or_empty_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00: garbage\x00\n")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    for cfg, needle in ((bad, "not UTF-8 text"), (empty, "empty config; expected sections data, model")):
        assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
        one_error(capsys.readouterr().err, f"{cfg}: {needle}", alone=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "empty.yaml"]


@pytest.mark.parametrize("damage, needle", [
    (lambda run: (run / "run.json").write_text((run / "run.json").read_text()[:20]), "run.json: not valid JSON"),
    (lambda run: (run / "run.json").write_text("{}"), "run.json: no 'shape'"),
    (lambda run: (run / "embeddings.parquet").write_bytes((run / "embeddings.parquet").read_bytes()[:500]),
     "embeddings.parquet: not a readable Parquet file"),
])
def test_corrupt_run_files_on_evaluate_are_one_line(run_ok, base, tmp_path, capsys, damage, needle):
    run = copy_folder(run_ok, tmp_path / "run")
    damage(run)
    before = snapshot(run)
    assert main(["evaluate", str(run), str(base), "--no-figures"]) == 2
    one_error(capsys.readouterr().err, f"{run}/{needle}", alone=True)
    assert snapshot(run) == before  # and no eval_base folder


def test_a_model_of_another_shape_names_the_mismatch(run_ok, base, tmp_path, capsys):
    import torch

    from affvae.config import build_config
    from affvae.model import build_model

    run = copy_folder(run_ok, tmp_path / "run")
    other = build_model(build_config(overrides=["model.filters=[4, 8]", "model.latent_dims=6"]), (16, 16, 16))
    torch.save(other.state_dict(), run / "model.pt")
    assert main(["evaluate", str(run), str(base), "--no-figures"]) == 2
    one_error(capsys.readouterr().err, f"{run}/model.pt: does not fit the model", "size mismatch", alone=True)


def test_a_model_file_over_the_newest_checkpoint_resumes_from_the_previous(tiny, run_ok, tmp_path, capsys):
    import json

    run = copy_folder(run_ok, tmp_path / "run")
    ck = run / "checkpoints"
    (ck / "epoch_00002.pt").write_bytes((run / "model.pt").read_bytes())
    (ck / ".epoch_00002.k2j3h4l5.pt").write_bytes(b"")  # a SIGKILL inside a checkpoint write
    code = main(["train", "--config", str(tiny), "--set", "train.epochs=3", "--out", str(run), "--resume"])
    err = capsys.readouterr().err
    assert code == 0, err
    (line,) = warnings_of(err)
    assert "epoch_00002.pt: not a training checkpoint" in line and "resuming from epoch_00001.pt" in line
    assert json.loads((run / "metrics.json").read_text())["epochs_done"] == 3
    assert sorted(p.name for p in ck.iterdir()) == ["epoch_00002.pt", "epoch_00003.pt"]


def test_an_affinity_diagonal_not_one_is_refused(tiny, base, tmp_path, capsys):
    a = tmp_path / "diag.csv"
    a.write_text("I,O,T\n0.9,0.2,0.3\n0.2,1,0.1\n0.3,0.1,1\n")
    assert main(["check", str(base), "--affinity", str(a)]) == 2
    one_error(capsys.readouterr().err, f"{a}: diagonal value 0.9 at (I, I), expected 1", alone=True)
    assert main(["train", "--config", str(tiny), "--set", f"data.affinity={a}", "--out", str(tmp_path / "r")]) == 2
    one_error(capsys.readouterr().err, "diagonal value 0.9", alone=True)
    assert not (tmp_path / "r").exists()


def test_the_test_folder_is_validated_by_check_and_train(tiny, base, tmp_path, capsys):
    d = copy_folder(base, tmp_path / "d")
    (d / "test").mkdir()
    first = {c: sorted(d.glob(f"{c}_*.mrc"))[0].name for c in ("I", "O", "T")}
    for c in ("I", "O"):
        shutil.copy(d / first[c], d / "test" / first[c])
    t = first["T"]
    (d / "test" / t).write_bytes((d / t).read_bytes()[:600])
    assert main(["check", str(d)]) == 2
    one_error(capsys.readouterr().err, f"{d}/test/{t}: cannot read MRC file", alone=True)
    write_volume(d / "test" / t, np.random.default_rng(0).random((32, 32, 32)))
    out = tmp_path / "r"
    assert main(["train", "--config", str(tiny), "--set", f"data.path={d}", "--out", str(out)]) == 2
    one_error(capsys.readouterr().err, f"{d}/test/{t}: shape 32x32x32 differs from 16x16x16", alone=True)
    assert not out.exists()
    (d / "test" / t).unlink()
    assert main(["check", str(d)]) == 0
    assert "test/: 2 items (I 1, O 1); evaluate them" in capsys.readouterr().out
    shutil.copy(sorted(d.glob("L_*.mrc"))[0], d / "test" / "L_new.mrc")  # L is held out of training
    assert main(["check", str(d)]) == 0
    assert "test/: 3 items (I 1, L 1, O 1), not trained on: L (evaluated as unseen)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_simulate_leaves_no_dataset_check_accepts(tmp_path, sig):
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "affvae", "simulate", "tetramino", "--out", str(out),
                             "-n", "400", "--size", "32", "--shapes", "I,O,T", "--render", "exact"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`cmd &` without job control)
                            # inherits SIGINT ignored, and Python then keeps ignoring it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # until items are on disk
        written = [p for d in tmp_path.iterdir() if d.is_dir() for p in d.glob("*.mrc")]
        if len(written) >= 16:  # the exact renderer takes seconds for the rest (the fast one < 1 s)
            break
        time.sleep(0.05)
    assert proc.poll() is None, "simulate finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    assert not out.exists()
    r = run_cli("check", str(out))
    assert r.returncode == 2 and "dataset folder does not exist" in r.stderr
    if sig == signal.SIGINT:
        assert "interrupted" in err and "Traceback" not in err
        assert list(tmp_path.iterdir()) == []  # the partial folder is removed too
    else:  # only a hidden partial folder, which the next simulate of d removes
        assert [p.name.startswith(".d.partial-") for p in tmp_path.iterdir()] == [True]
        assert main(["simulate", "tetramino", "--out", str(out), "-n", "1", "--size", "16", "--shapes", "I"]) == 0
        assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_an_interrupted_evaluate_leaves_the_previous_results_whole(run_ok, base, tmp_path, monkeypatch):
    import affvae.runs

    ev = tmp_path / "ev"
    assert main(["evaluate", str(run_ok), str(base), "--no-figures", "--out", str(ev)]) == 0
    before = snapshot(ev)
    few = copy_folder(base, tmp_path / "few")
    for p in sorted(few.glob("I_*.mrc"))[:4]:
        p.unlink()
    real = affvae.runs._write_json

    def interrupted(path, obj):  # Ctrl-C after predictions.csv, before metrics.json
        if path.name == "metrics.json":
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(affvae.runs, "_write_json", interrupted)
    assert main(["evaluate", str(run_ok), str(few), "--no-figures", "--out", str(ev)]) == 130
    assert snapshot(ev) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "few"]  # no partial folder left
    monkeypatch.undo()
    assert main(["evaluate", str(run_ok), str(few), "--no-figures", "--out", str(ev)]) == 0
    assert snapshot(ev) != before


def test_evaluate_refuses_the_runs_own_folder_and_foreign_folders(run_ok, base, tmp_path, capsys):
    run = copy_folder(run_ok, tmp_path / "run")
    data = copy_folder(base, tmp_path / "data")
    before, data_before = snapshot(run), snapshot(data)
    assert main(["evaluate", str(run), str(base), "--out", str(run)]) == 2
    one_error(capsys.readouterr().err, f"--out {run}: the run's own folder", alone=True)
    assert main(["evaluate", str(run), str(base), "--out", str(data)]) == 2
    one_error(capsys.readouterr().err, f"--out {data}: holds ", "which an evaluation does not write", alone=True)
    assert snapshot(run) == before and snapshot(data) == data_before


def test_a_broken_link_in_a_dataset_folder_is_named(base, tmp_path, capsys):
    d = copy_folder(base, tmp_path / "d")
    (d / "I_99999.mrc").symlink_to(tmp_path / "nowhere.mrc")
    assert main(["check", str(d)]) == 2
    one_error(capsys.readouterr().err, f"{d}/I_99999.mrc: broken symbolic link", alone=True)


def test_an_empty_test_split_is_skipped_with_a_line(tiny, tmp_path, capsys):
    import json

    d = tmp_path / "d"
    assert main(["simulate", "tetramino", "--out", str(d), "-n", "6", "--size", "16", "--shapes", "I,O,T"]) == 0
    test = copy_folder(d, tmp_path / "test_items")
    shutil.move(test, d / "test")
    out = tmp_path / "r"
    code = main(["train", "--config", str(tiny), "--set", f"data.path={d}", "--set", "data.test_fraction=0",
                 "--set", "eval.classifier=mlp", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    (line,) = warnings_of(err)
    assert "no test items (data.test_fraction = 0): skipping the test evaluation" in line
    assert f"affvae evaluate {out} {d}/test" in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"] is False and metrics["epochs_done"] == 2
    assert {"model.pt", "latent_map.parquet", "config.yaml", "run.json"} <= {p.name for p in out.iterdir()}
    assert main(["evaluate", str(out), str(d / "test"), "--no-figures"]) == 0
    assert json.loads((out / "eval_test" / "metrics.json").read_text())["n_items"] == 18


def test_messages_name_the_users_path_not_a_temporary_file(base, tmp_path, small_fs, capsys):
    out = tmp_path / "out.csv"
    out.mkdir()
    assert main(["affinity", str(base), "--metric", "ncc", "--out", str(out)]) == 2
    line = one_error(capsys.readouterr().err, f"{out}: Is a directory", alone=True)
    assert ".tmp" not in line
    ro = small_fs(options="ro")
    assert main(["affinity", str(base), "--metric", "ncc", "--out", str(ro / "a.csv")]) == 2
    line = one_error(capsys.readouterr().err, f"{ro}/a.csv: Read-only file system", alone=True)
    assert ".tmp" not in line


def test_a_constant_object_is_named_by_its_file(base, tmp_path, capsys):
    d = copy_folder(base, tmp_path / "d")
    write_volume(d / "template_O.mrc", np.zeros((16, 16, 16)))
    assert main(["affinity", str(d), "--metric", "ncc", "--out", str(tmp_path / "a.csv")]) == 2
    one_error(capsys.readouterr().err, f"{d}/template_O.mrc: every voxel has the same value (class 'O')",
              alone=True)


def test_simulate_refuses_a_box_too_small_by_its_flag(tmp_path, capsys):
    assert main(["simulate", "tetramino", "--out", str(tmp_path / "s"), "-n", "2", "--size", "3"]) == 2
    one_error(capsys.readouterr().err, "--size 3: expected at least 8", alone=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_flags_are_refused_before_anything_starts(tiny, tmp_path, capsys):
    import ray

    assert main(["train", "--config", str(tiny), "--out", str(tmp_path / "w"), "--workers", "-1"]) == 2
    one_error(capsys.readouterr().err, "--workers -1: expected 0", alone=True)
    assert not ray.is_initialized()
    assert main(["train", "--config", str(tiny), "--out", str(tmp_path / "nope"), "--resume"]) == 2
    one_error(capsys.readouterr().err, f"{tmp_path / 'nope'}: --resume needs an existing run folder", alone=True)
    (tmp_path / "fresh").mkdir()
    assert main(["train", "--config", str(tiny), "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    one_error(capsys.readouterr().err, "no checkpoint to resume from", alone=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]
    assert list((tmp_path / "fresh").iterdir()) == []


def test_a_fresh_start_over_an_unfinished_run_is_refused(tiny, run_ok, tmp_path, capsys):
    run = copy_folder(run_ok / "checkpoints", tmp_path / "run" / "checkpoints").parent  # killed mid-run
    before = snapshot(run)
    assert main(["train", "--config", str(tiny), "--out", str(run)]) == 2
    one_error(capsys.readouterr().err, f"{run}: holds an unfinished run", "use --resume", alone=True)
    assert snapshot(run) == before


def test_evaluate_warns_when_it_resizes_items(run_ok, tmp_path, capsys):
    d = tmp_path / "other"
    rng = np.random.default_rng(0)
    for c in "IOT":
        for i in range(2):
            write_volume(d / f"{c}_{i}.mrc", rng.random((8, 16, 40)))
    assert main(["evaluate", str(run_ok), str(d), "--no-figures", "--out", str(tmp_path / "ev")]) == 0
    (line,) = warnings_of(capsys.readouterr().err)
    assert f"{d}: items of 8x16x40, but the run was trained on 16x16x16: resizing them to 16x16x16" in line


def test_evaluate_resizes_files_of_the_training_shape_silently(tiny, base, tmp_path, capsys):
    run = tmp_path / "run8"
    assert main(["train", "--config", str(tiny), "--set", "data.size=8", "--set", "train.epochs=1",
                 "--out", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["file_shape"] == [16, 16, 16]
    d = tmp_path / "same"  # files like the training ones (16^3), resized to 8^3 as training did
    for c in "IO":
        shutil.copy(sorted(base.glob(f"{c}_*.mrc"))[0], d.mkdir(exist_ok=True) or d)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(d), "--no-figures"]) == 0
    assert warnings_of(capsys.readouterr().err) == []
    other = tmp_path / "other"
    for c in "IO":
        write_volume(other / f"{c}_0.mrc", np.random.default_rng(0).random((12, 12, 12)))
    assert main(["evaluate", str(run), str(other), "--no-figures"]) == 0
    (line,) = warnings_of(capsys.readouterr().err)
    assert (f"{other}: items of 12x12x12, but the run was trained on 8x8x8 (files of 16x16x16 resized): "
            "resizing them to 8x8x8") in line
