"""Training on Ray Train: augmentation, data, chain mining, pretrain + finetune end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from glee.evaluation.probe import logistic_probe_f1
from glee.model.glee_net import build_glee_net
from glee_platform import prepared, session, train, training_data
from glee_platform.config import load_config
from glee_platform.experiment import ExperimentResult
from glee_platform.tracking import read_metrics_csv
from glee_platform.train import finetune

# --------------------------------------------------------------------------- data


def test_au_weights_come_from_the_training_folds_only(toy_prep, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(toy_prep / "bp4d", prep / "bp4d")
    cfg = load_config("smoke", [f"data.prep={prep}"])
    before = {k: train.training_au_weights(cfg, k) for k in (1, 2)}
    # make every AU present in part 1: fold 1 trains on parts 2, 3 and must not change
    for path in (prep / "bp4d" / "faces").glob("*.parquet"):
        table = pq.read_table(path)
        folds = table["fold"].to_pylist()
        labels = [
            [1, 1, 1] if f == 1 else lab for f, lab in zip(folds, table["labels"].to_pylist())
        ]
        column = pa.array(labels, pa.list_(pa.int8()))
        table = table.set_column(table.schema.get_field_index("labels"), "labels", column)
        pq.write_table(table, path)
    assert torch.equal(train.training_au_weights(cfg, 1), before[1])
    assert not torch.equal(train.training_au_weights(cfg, 2), before[2])
    assert before[1].mean().item() == pytest.approx(1.0)  # Sec. IV-B: weights average to 1


def faces(prep: Path, dataset: str) -> pd.DataFrame:
    """Every row of a prepared dataset's shards, in file order."""
    parts = sorted((prep / dataset / "faces").glob("part-*.parquet"))
    cols = ["fold", "expression", "labels"]
    return pd.concat([pq.read_table(p, columns=cols).to_pandas() for p in parts])


def probe_on(train_rows: pd.DataFrame, test_rows: pd.DataFrame) -> np.ndarray:
    x, y = (np.stack(r["expression"].to_numpy()) for r in (train_rows, test_rows))
    ly, ty = (np.stack(r["labels"].to_numpy()) for r in (train_rows, test_rows))
    return logistic_probe_f1(x, ly, y, ty)


def test_the_fexp_probe_of_a_fold_sees_the_rows_the_fold_trains_and_is_scored_on(toy_prep):
    cfg = load_config("smoke", [f"data.prep={toy_prep}", "data.max_rows=60"])
    # max_rows=60 keeps whole shards: part-0000 alone, its 24 rows of part 2 to fit the
    # probe and its 48 rows of part 1 to score it (part-0001 would pass 60 either way)
    first = pq.read_table(toy_prep / "bp4d" / "faces" / "part-0000.parquet").to_pandas()
    train_rows, test_rows = first[first["fold"] == 2], first[first["fold"] == 1]
    assert (len(train_rows), len(test_rows)) == (24, 48)
    assert finetune.probe_skip_reason(cfg) == ""
    f1 = finetune.fold_probe_f1(cfg, 1)
    np.testing.assert_array_equal(f1, probe_on(train_rows, test_rows))
    assert f1.mean() > 0.8  # the toy f_exp carries the AUs


def test_a_cross_dataset_probe_scores_all_of_the_eval_dataset_or_says_why_not(toy_prep, tmp_path):
    cfg = load_config("smoke", [f"data.prep={toy_prep}", "finetune.eval_dataset=bp4dplus"])
    bp4d, plus = faces(toy_prep, "bp4d"), faces(toy_prep, "bp4dplus")
    expected = probe_on(bp4d[bp4d["fold"].isin([2, 3])], plus)
    assert finetune.probe_skip_reason(cfg) == ""
    np.testing.assert_array_equal(finetune.fold_probe_f1(cfg, 1), expected)
    prep = tmp_path / "prep"
    for name in ("bp4d", "bp4dplus"):
        shutil.copytree(toy_prep / name, prep / name)
    manifest = json.loads((prep / "bp4dplus" / "manifest.json").read_text())
    manifest["expression_names"] = [f"blend{j}" for j in range(51)]  # another 3DMM
    (prep / "bp4dplus" / "manifest.json").write_text(json.dumps(manifest))
    other = load_config("smoke", [f"data.prep={prep}", "finetune.eval_dataset=bp4dplus"])
    assert "different 3DMM expression bases" in finetune.probe_skip_reason(other)


def test_results_say_why_the_probe_was_skipped(tmp_path):
    cfg = load_config("smoke", [f"resources.storage_path={tmp_path}"])
    f1 = {1: np.array([0.5, 0.6, 0.2])}
    why = "bp4d and disfa were fitted with different 3DMM expression bases"
    result = train.FinetuneResult(["AU1", "AU2", "AU4"], {}, f1, f1, probe_skipped=why)
    table = train.write_results(cfg, result).read_text()
    assert "| always-present (mean) |" in table and "| f_exp probe (mean) |" not in table
    assert f"f_exp probe not run: {why}" in table
    assert f"f_exp probe not run: {why}" in ExperimentResult(result, None, None, {}).summary()


def test_chain_mining_adds_triplets_the_chains_prove():
    rows = [("a", "p", "n", 0.1), ("a", "n", "m", 0.2), ("p", "n", "m", 0.1)]
    mined = training_data.chain_mine(rows)
    # {a,p} < {a,n} < {a,m} and {a,p} < {p,n} < {p,m}: (a, p; m) with the larger margin
    assert [(set(r[:2]), r[2], r[3]) for r in mined] == [({"a", "p"}, "m", 0.2)]


def test_load_triplets_keeps_the_split_and_sets_margins(toy_prep):
    kw = {"margin_one": 0.1, "margin_two_three": 0.2}
    tr = training_data.load_triplets(toy_prep, chain_mining=False, split="train", **kw)
    te = training_data.load_triplets(toy_prep, chain_mining=False, split="test", **kw)
    assert (tr.num_rows, te.num_rows) == (123, 30)
    assert sorted(set(np.round(tr["margin"].to_numpy().astype(float), 3))) == [0.1, 0.2]
    mined = training_data.load_triplets(toy_prep, chain_mining=True, split="train", **kw)
    assert mined.num_rows > tr.num_rows
    assert int(mined["mined"].to_numpy().sum()) == mined.num_rows - tr.num_rows


# --------------------------------------------------------------------------- Ray Train


@pytest.fixture(scope="module")
def toy_runs(ray_session, toy_prep, tmp_path_factory):
    """Pretrain, then finetune fold 1 from the pretrained branches, on the toy data."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        "smoke",
        [
            "name=toy",
            f"data.prep={toy_prep}",
            f"resources.storage_path={runs}",
            "resources.cpus_per_worker=1",
            "resources.threads_per_worker=2",
            "pretrain.batch_size=12",
            "pretrain.epochs=2",
            "pretrain.lr=0.05",
            "finetune.batch_size=16",
            "finetune.epochs=8",  # 48 steps: 4 epochs leave the toy F1 at the seed's mercy
            "finetune.eval_every=2",
            "finetune.lr=0.05",
            "finetune.folds=[1]",
        ],
    )
    pre = train.run_pretrain(cfg)
    ft = train.run_finetune(cfg, pre.checkpoint)
    return cfg, pre, ft


@pytest.mark.ray
@pytest.mark.slow
def test_pretraining_lowers_the_triplet_loss(toy_runs):
    _, pre, _ = toy_runs
    losses = [h["train_loss"] for h in pre.history]
    assert [h["epoch"] for h in pre.history] == [0, 1]
    assert losses[1] < losses[0]
    assert "val_triplet_acc" in pre.final


@pytest.mark.ray
@pytest.mark.slow
def test_finetuning_learns_and_beats_always_present(toy_runs):
    cfg, _, ft = toy_runs
    hist = ft.folds[1].history
    assert [h["epoch"] for h in hist] == list(range(8))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert "val_mean_f1" in hist[1] and "val_mean_f1" not in hist[0]  # eval_every=2
    assert hist[-1]["val_count"] == 48  # the whole of part 1
    assert ft.mean_f1.mean() > ft.baseline_f1[1].mean()


@pytest.mark.ray
@pytest.mark.slow
def test_run_folder_holds_tables_metrics_config_and_events(toy_runs):
    cfg, _, ft = toy_runs
    run = cfg.run_dir
    table = (run / "results.md").read_text()
    assert "| fold1 |" in table and "| mean |" in table and "AU4" in table
    assert "finetune:" in table  # the full config travels with the results
    # beside the f_exp probe of the same fold and always-present, and what the network adds
    probe = ft.comparison().loc["f_exp probe (mean)", "Avg"]
    assert ft.probe_f1[1].shape == (3,) and probe == pytest.approx(100 * ft.probe_f1[1].mean())
    for row in ("GLEE-Net (mean)", "f_exp probe (mean)", "always-present (mean)"):
        assert f"| {row} |" in table
    gain = 100 * (ft.mean_f1.mean() - ft.probe_f1[1].mean())
    assert f"what GLEE-Net adds over the f_exp probe: {gain:+.1f}" in table
    summary = ExperimentResult(ft, None, None, {"finetune": 1.0}).summary()
    assert "f_exp probe (mean)" in summary and f"f_exp probe {probe:.1f}" in summary
    assert f"what GLEE-Net adds over the f_exp probe: {gain:+.1f}" in summary
    csv = (run / "results.csv").read_text().splitlines()
    assert csv[0].startswith("Method,AU1,AU2,AU4,Avg") and len(csv) == 3  # folds + mean only
    rows = read_metrics_csv(run / "metrics.csv")
    assert [(r["run"], r["epoch"]) for r in rows] == [
        ("pretrain", "0"),
        ("pretrain", "1"),
        *[("fold1", str(e)) for e in range(8)],
    ]
    assert (run / "config.yaml").is_file()
    for name in ("pretrain", "fold1"):
        assert list((run / "tensorboard" / name).glob("events.out.tfevents.*"))


@pytest.mark.ray
@pytest.mark.slow
def test_checkpoint_round_trip_and_pretrained_init(toy_runs):
    cfg, pre, ft = toy_runs
    state = torch.load(
        ft.folds[1].checkpoint / train.STATE_FILE, map_location="cpu", weights_only=True
    )
    assert state["epoch"] == 7 and len(state["history"]) == 8
    assert set(state) >= {"model", "optimisation", "epoch", "global_step"}
    net = build_glee_net(train.model_config(cfg, 3))
    net.load_state_dict(state["model"])  # strict: the whole model is in the checkpoint
    fresh = build_glee_net(train.model_config(cfg, 3))
    n = train.load_pretrained_branches(fresh, pre.checkpoint)
    pre_state = torch.load(pre.checkpoint / train.STATE_FILE, weights_only=True)["model"]
    own = fresh.state_dict()
    assert n > 0 and all(
        torch.equal(own[k], v) for k, v in pre_state.items() if k.startswith("local_branch.")
    )


@pytest.mark.ray
@pytest.mark.slow
def test_finished_runs_are_reused(toy_runs):
    cfg, pre, _ = toy_runs
    again = train.run_pretrain(cfg)
    assert again.reused and again.checkpoint == pre.checkpoint
    assert [h["epoch"] for h in again.history] == [0, 1]


@pytest.mark.ray
@pytest.mark.slow
def test_validation_counts_are_summed_over_two_workers(ray_session, toy_prep, tmp_path):
    cfg = load_config(
        "smoke",
        [
            f"data.prep={toy_prep}",
            f"resources.storage_path={tmp_path}",
            "resources.num_workers=2",
            "resources.cpus_per_worker=1",
            "finetune.init=none",
            "finetune.batch_size=16",
            "finetune.folds=[2]",
        ],
    )
    run, baseline = train.run_finetune_fold(cfg, 2, None)
    # each rank sees half of part 2; the reported count and F1 cover all 48 rows
    assert run.final["val_count"] == 48
    assert baseline.shape == (3,)
    f1 = np.array([run.final[f"val_f1_{n}"] for n in ("AU1", "AU2", "AU4")])
    assert run.final["val_mean_f1"] == pytest.approx(f1.mean())


@pytest.mark.ray
@pytest.mark.slow
def test_a_named_train_run_stays_in_its_run_folder_and_calls_callbacks(
    ray_session, toy_prep, tmp_path
):
    import ray.train

    class RecordReports(ray.train.UserCallback):  # runs in the Train controller
        def __init__(self, path):
            self.path = str(path)

        def after_report(self, run_context, metrics, checkpoint):
            name = run_context.get_run_config().name
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{name} {metrics[0]['epoch']} {checkpoint is not None}\n")

    cfg = load_config(
        "smoke",
        [
            f"data.prep={toy_prep}",
            f"resources.storage_path={tmp_path / 'runs'}",
            "resources.cpus_per_worker=1",
            "finetune.init=none",
            "finetune.batch_size=16",
            "finetune.epochs=2",
            "finetune.eval_every=2",
        ],
    )
    reports = tmp_path / "reports.txt"
    run, _ = train.run_finetune_fold(
        cfg, 1, None, run_name="trial_0001-fold1", callbacks=[RecordReports(reports)]
    )
    assert reports.read_text().splitlines() == [
        "trial_0001-fold1 0 True",
        "trial_0001-fold1 1 True",
    ]
    # Ray Train's folder is named after the run, inside the fold's folder, which keeps
    # the metrics and the done record that later steps read
    fold = cfg.run_dir / "fold1"
    assert run.path == fold and run.checkpoint.parent == fold / "trial_0001-fold1"
    assert run.checkpoint.name == "checkpoint_epoch0001"
    assert [r["epoch"] for r in read_metrics_csv(fold / "metrics.csv")] == ["0", "1"]
    assert (fold / train.DONE_FILE).is_file()


def test_on_cluster_follows_the_address(monkeypatch):
    monkeypatch.setattr(session, "_connected_to", None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not session.on_cluster()
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert not session.on_cluster()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert session.on_cluster()
    monkeypatch.setattr(session, "_connected_to", "local")  # ensure_ray(address="local")
    assert not session.on_cluster()


def test_missing_preprocessed_data_is_one_clear_line(tmp_path):
    with pytest.raises(prepared.DataError, match="run preprocessing first"):
        prepared.read_manifest(tmp_path, "bp4d")
    assert not prepared.is_preprocessed(Path(tmp_path), "fec")
