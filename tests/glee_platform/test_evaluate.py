"""Evaluation of run folders: F1 equal to training's validation, cross-dataset, tables
beside the paper's numbers, plots, Ave-Var."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from evaluation_world import ablation, prep_dir

from glee.evaluation.ave_var import ave_var, branch_features, combination_ids, combination_name
from glee.evaluation.plots import plot_ave_var, plot_f1_bars, plot_tsne
from glee.model.config import ABLATIONS, GLEEConfig
from glee.model.glee_net import GLEENet
from glee.model.inference import infer, load_model_weights
from glee.training.augmentation import center_crop, to_model_input
from glee_platform import prepared
from glee_platform.evaluate import (
    PERMUTED_INPUTS,
    EvaluationError,
    evaluate_run,
    input_reliance,
    permuted_head_f1,
)
from glee_platform.run_folder import RunFolderError, fold_checkpoint

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --------------------------------------------------------------------------- Ave-Var


def test_ave_var_is_the_mean_within_combination_variance_of_unit_features():
    theta = 0.3
    # combination A: two unit vectors at +-theta around x -> centroid (cos, 0), variance sin^2
    # combination B: three identical vectors -> variance 0; scale does not matter
    feats = np.array(
        [
            [np.cos(theta), np.sin(theta)],
            [np.cos(theta), -np.sin(theta)],
            [0.0, 5.0],
            [0.0, 2.0],
            [0.0, 9.0],
            [1.0, 1.0],  # a combination seen once: left out
            [3.0, -1.0],  # an unknown label: left out
        ]
    )
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 1], [1, -1]])
    av = ave_var(feats, labels)
    assert av.value == pytest.approx(np.sin(theta) ** 2 / 2)
    assert (av.groups, av.faces) == (2, 5)
    pooled = np.array([f / np.linalg.norm(f) for f in feats[:5]])
    total = ((pooled - pooled.mean(0)) ** 2).sum(1).mean()
    assert av.ratio == pytest.approx(av.value / total)
    assert ave_var(feats * 7.0, labels).value == pytest.approx(av.value)
    with pytest.raises(ValueError, match="two faces"):
        ave_var(feats, labels, min_count=1)
    with pytest.raises(ValueError, match="no AU combination"):
        ave_var(feats[5:], labels[5:])


def test_combinations_and_branch_features():
    labels = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1], [1, -1, 0]])
    ids = combination_ids(labels)
    assert ids[0] == ids[2] != ids[1] and ids[3] == -1
    assert [combination_name(r, ["AU1", "AU2", "AU4"]) for r in labels] == [
        "AU1+AU4",
        "none",
        "AU1+AU4",
        "unknown",
    ]
    rng = np.random.default_rng(0)
    g, l, e, f = (rng.normal(size=(4, d)) for d in (16, 16, 16, 51))
    full = branch_features(g, l, e, f)
    assert list(full) == ["GB", "LB", "GB+LB", "3DGB", "GB+LB+3DGB"]
    assert np.allclose(np.linalg.norm(full["GB+LB+3DGB"], axis=1), 1.0)
    assert list(branch_features(g, None, g, f)) == ["GB", "3DGB"]  # w/o LB


@pytest.mark.parametrize("variant", ABLATIONS)
def test_infer_is_the_models_forward_on_the_centre_crop_for_every_variant(variant, tmp_path):
    import torch

    torch.manual_seed(0)
    net = GLEENet(GLEEConfig.tiny(num_aus=3).with_ablation(variant)).eval()
    path = tmp_path / "state.pt"
    torch.save({"model": net.state_dict(), "epoch": 0}, path)
    loaded = load_model_weights(GLEENet(GLEEConfig.tiny(num_aus=3).with_ablation(variant)), path)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 200, 200, 3), dtype=np.uint8)
    f_exp = rng.normal(size=(4, 51)).astype(np.float32)
    out = infer(loaded, faces, f_exp)
    x = to_model_input(center_crop(faces)[0])  # the training's evaluation crop
    with torch.no_grad():
        _, final = net(x, torch.as_tensor(f_exp))
    np.testing.assert_allclose(out.logits, final.numpy(), rtol=1e-5, atol=1e-6)
    assert (out.e_exp is None) == (variant == "wo_gb_lb")
    assert (out.l_exp is None) == (variant in ("wo_gb_lb", "wo_lb", "resnet_gb_lb"))
    with pytest.raises(ValueError, match="does not fit this model"):
        load_model_weights(GLEENet(GLEEConfig.tiny(num_aus=5).with_ablation(variant)), path)


def test_plots_are_pngs_of_a_readable_size(tmp_path):
    rng = np.random.default_rng(0)
    names = ["AU1", "AU2", "AU4"]
    f1 = {"fold1": [0.5, 0.6, 0.7], "mean": [0.4, 0.5, 0.6]}
    w, h = _png_size(plot_f1_bars(f1, names, tmp_path / "bars.png", reported_avg=65.7))
    assert w > 500 and h > 300
    labels = rng.integers(0, 2, (60, 3))
    feats = labels * 3.0 + 1.0 + rng.normal(0, 0.1, (60, 3))
    assert _png_size(plot_tsne(feats, labels, names, tmp_path / "tsne.png"))[0] > 500
    table = {
        k: ave_var(v, labels) for k, v in {"GB": feats, "LB": rng.normal(size=(60, 4))}.items()
    }
    assert table["GB"].ratio < 0.1 < 0.5 < table["LB"].ratio  # labelled structure vs noise
    assert _png_size(plot_ave_var(table, tmp_path / "ave_var.png"))[0] > 500
    with pytest.raises(ValueError, match="2 F1 values for 3 AUs"):
        plot_f1_bars({"x": [0.1, 0.2]}, names, tmp_path / "bad.png")


# --------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def full_run(ray_session, tiny_world, tmp_path_factory):
    result, cfg = ablation(tiny_world, tmp_path_factory)
    return cfg.run_dir / "full", prep_dir(tiny_world, tmp_path_factory)


@pytest.mark.ray
@pytest.mark.slow
def test_evaluation_reproduces_the_training_validation_and_writes_the_report(full_run):
    run, prep = full_run
    res = evaluate_run(run, prep=prep)
    assert list(res.folds) == [1] and not res.cross_dataset
    # the same checkpoint on the same faces gives exactly the F1 training reported
    import torch

    hist = torch.load(fold_checkpoint(run, 1) / "state.pt", weights_only=True)["history"][-1]
    trained = np.array([hist[f"val_f1_{n}"] for n in res.au_names])
    np.testing.assert_allclose(res.per_fold_f1[1], trained, atol=1e-9)
    labels = prepared.label_matrix(prep, "bp4d", [1])
    assert len(res.folds[1].labels) == len(labels) == int(hist["val_count"])
    out = run / "evaluation" / "bp4d"
    table = pd.read_csv(out / "f1.csv", index_col=0)
    assert list(table.columns) == [*res.au_names, "Avg"]
    assert table.loc["fold1", "Avg"] == pytest.approx(100 * trained.mean(), abs=0.051)
    paper = table.loc["GLEE-Net, paper (BP4D, 3-fold)"]
    assert paper["Avg"] == 65.7 and paper[res.au_names].isna().all()
    assert "| GLEE-Net, paper (BP4D, 3-fold) |" in (out / "f1.md").read_text()
    preds = pq.read_table(out / "predictions.parquet").to_pandas()
    assert len(preds) == len(labels) and set(preds["face_fold"]) == {1}
    occ = np.stack(preds["occurrences"].to_numpy())
    assert np.array_equal(occ, (np.stack(preds["logits"].to_numpy()) > 0).astype(np.int8))
    for name in ("f1_bars.png", "tsne_fold1.png", "ave_var.png"):
        assert _png_size(out / name)[0] > 400
    av = pd.read_csv(out / "ave_var.csv")
    assert set(av["branches"]) == {"GB", "LB", "GB+LB", "3DGB", "GB+LB+3DGB"}
    assert av["ave_var"].between(0, 2).all()


@pytest.mark.ray
@pytest.mark.slow
def test_cross_dataset_evaluates_every_face_and_shows_the_cross_dataset_number(full_run, tmp_path):
    run, prep = full_run
    res = evaluate_run(
        run, prep=prep, eval_dataset="bp4dplus", out=tmp_path, plots=False, max_rows=0
    )
    everything = prepared.label_matrix(prep, "bp4dplus", [0, 1, 2, 3])
    assert res.cross_dataset and len(res.folds[1].labels) == len(everything)
    table = pd.read_csv(tmp_path / "f1.csv", index_col=0)
    assert table.loc["GLEE-Net, paper (trained on BP4D, all of BP4D+)", "Avg"] == 59.5
    assert not (tmp_path / "f1_bars.png").exists()
    with pytest.raises(EvaluationError, match="needs the same AU set"):
        evaluate_run(run, prep=prep, eval_dataset="disfa")


@pytest.mark.ray
@pytest.mark.slow
def test_a_moved_run_folder_still_finds_its_checkpoints(full_run, tmp_path):
    run, _ = full_run
    moved = tmp_path / "fetched"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("evaluation"))
    ckpt = fold_checkpoint(moved, 1)
    assert ckpt.parent == moved / "fold1" and (ckpt / "state.pt").is_file()
    assert ckpt.name == fold_checkpoint(run, 1).name
    with pytest.raises(RunFolderError, match="fold 2 .* has no checkpoint"):
        fold_checkpoint(moved, 2)


def test_permuting_an_input_costs_only_a_head_that_reads_it():
    # a head that reads f_exp only (a linear rule per AU) and ignores E_exp
    rng = np.random.default_rng(0)
    f_exp = rng.normal(size=(200, 6)).astype(np.float32)
    e_exp = rng.normal(size=(200, 4)).astype(np.float32)
    labels = (f_exp[:, :3] > 0).astype(np.int8)

    def head(e, f):
        logits = 5 * f[:, :3] + 0 * e[:, :1]
        return logits, logits

    perm = rng.permutation(200)
    out = permuted_head_f1(head, e_exp, f_exp, labels, perm)
    assert list(out) == list(PERMUTED_INPUTS)
    assert out["intact"] == pytest.approx(100.0)
    assert out["E_exp permuted"] == pytest.approx(100.0)
    assert out["f_exp permuted"] < 70  # another face's f_exp: about chance
    identity = permuted_head_f1(head, e_exp, f_exp, labels, np.arange(200))
    assert identity["f_exp permuted"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="not a permutation"):
        permuted_head_f1(head, e_exp, f_exp, labels, np.zeros(200, int))


@pytest.mark.ray
@pytest.mark.slow
def test_input_reliance_starts_from_the_training_jobs_own_f1(full_run, tmp_path):
    import torch

    run, _ = full_run
    out = input_reliance(run, seed=0)
    hist = torch.load(fold_checkpoint(run, 1) / "state.pt", weights_only=True)["history"][-1]
    assert out["intact"] == [pytest.approx(100 * hist["val_mean_f1"], abs=1e-6)]
    assert len(out["E_exp permuted"]) == len(out["f_exp permuted"]) == 1
    # w/o 3DGB has no f_exp input: nothing to permute, one line says so
    text = (run / "config.yaml").read_text()
    assert "ablation: full" in text
    (tmp_path / "config.yaml").write_text(text.replace("ablation: full", "ablation: wo_3dgb"))
    with pytest.raises(EvaluationError, match="one input only"):
        input_reliance(tmp_path, seed=0)


def test_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--run", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "is not a finetune run folder" in proc.stderr
