"""Hyper-parameter search on Ray Tune + Optuna: the conditional space, pruned trials in the
study, the pretraining cache key, a 3-trial smoke search end to end, and a killed driver
that resumes with Tuner.restore without running finished trials again."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from glee.model.glee_net import build_glee_net
from glee_platform import train
from glee_platform import tune as gtune
from glee_platform.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
HEAD = ("classifier_depth", "classifier_heads")


def _smoke(*overrides: str):
    return gtune.load_search_config("tune-smoke", list(overrides))


# --------------------------------------------------------------------------- no Ray


def test_depth_and_heads_are_drawn_only_for_the_transformer():
    search, cfg = _smoke()
    space = gtune.SearchSpace(search.space, "transformer")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    classifiers = set()
    for _ in range(30):
        trial = study.ask()
        space(trial)
        p = trial.params
        classifiers.add(p["classifier"])
        assert (set(HEAD) <= set(p)) == (p["classifier"] == "transformer"), p
        assert set(HEAD) & set(p) in (set(), set(HEAD))
        if p["classifier"] == "transformer":
            assert 1 <= p["classifier_depth"] <= 6 and p["classifier_heads"] in (1, 2, 4)
        assert 1e-3 <= p["finetune_lr"] <= 5e-2
        study.tell(trial, 0.0)
    assert classifiers == {"transformer", "mlp"}
    # the Tune searcher hands trials the same conditional configs, and trial configs build
    searcher = gtune.FoldOptunaSearch(
        space=space,
        metric=gtune.METRIC,
        mode="max",
        time_attr=gtune.TIME_ATTR,
        sampler=optuna.samplers.RandomSampler(seed=1),
        num_folds=3,
    )
    for i in range(8):
        params = searcher.suggest(f"t{i}")
        cfg_i = gtune.trial_config(cfg, params, f"t{i}", "/tmp/unused")
        head = train.model_config(cfg_i, 3)
        assert head.classifier == params["classifier"]
        if params["classifier"] == "transformer":
            assert head.classifier_depth == params["classifier_depth"]
        else:
            assert not set(HEAD) & set(params)
            assert "classifier_depth" not in cfg_i.model.overrides


def test_the_first_trial_is_the_base_config():
    search, cfg = gtune.load_search_config("tune-demo")
    # Sec. IV-B: margins 0.1 / 0.2, lr 2e-4 / 2e-3; Sec. III-D: 3 layers
    assert gtune.base_values(search, cfg) == {
        "margin_one": 0.1,
        "margin_two_three": 0.2,
        "pretrain_lr": 2e-4,
        "finetune_lr": 2e-3,
        "classifier": "transformer",
        "classifier_depth": 3,
        "classifier_heads": 4,
    }


def test_asha_stopped_trials_are_pruned_in_the_sqlite_study(tmp_path):
    search, _ = _smoke()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = gtune.FoldOptunaSearch(
        space=gtune.SearchSpace(search.space, "transformer"),
        metric=gtune.METRIC,
        mode="max",
        time_attr=gtune.TIME_ATTR,
        study_name="s",
        storage=url,
        num_folds=3,
    )
    searcher.suggest("full")
    searcher.suggest("stopped")
    for k, f1 in enumerate([0.5, 0.4, 0.6], 1):
        result = {gtune.TIME_ATTR: k, gtune.METRIC: f1}
        if k < 3:
            searcher.on_trial_result("full", result)
    searcher.on_trial_complete("full", result)
    # ASHA's STOP result reaches on_trial_complete only (not on_trial_result)
    searcher.on_trial_complete("stopped", {gtune.TIME_ATTR: 1, gtune.METRIC: 0.2})
    trials = {
        t.user_attrs["tune_trial_id"]: t
        for t in optuna.load_study(study_name="s", storage=url).trials
    }
    full, stopped = trials["full"], trials["stopped"]
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == 0.6
    assert full.intermediate_values == {1: 0.5, 2: 0.4}  # step = folds done
    assert stopped.state == optuna.trial.TrialState.PRUNED
    assert stopped.value == 0.2 and stopped.intermediate_values == {1: 0.2}


def test_asha_rungs_are_rebuilt_from_finished_trials_on_restore():
    from types import SimpleNamespace

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    asha = gtune.FoldASHA(
        folds=[1, 2, 3], time_attr=gtune.TIME_ATTR, grace_period=1, reduction_factor=2
    )
    asha.set_search_properties(gtune.METRIC, "max")
    # a trial restored as finished: fold F1 0.6, 0.2, 0.1 -> running mean 0.6 at rung 1
    done = {gtune.TIME_ATTR: 3, gtune.METRIC: 0.3, "f1_fold1": 0.6, "f1_fold2": 0.2}
    done["f1_fold3"] = 0.1
    asha.on_trial_add(
        None, SimpleNamespace(trial_id="a", status=Trial.TERMINATED, last_result=done)
    )
    resumed = SimpleNamespace(trial_id="b", status=Trial.PENDING, last_result={})
    asha.on_trial_add(None, resumed)
    # without the rebuilt rung, the first trial judged at rung 1 is never stopped
    result = {gtune.TIME_ATTR: 1, gtune.METRIC: 0.5, "f1_fold1": 0.5}
    assert asha.on_trial_result(None, resumed, result) == TrialScheduler.STOP


def test_trials_see_the_drivers_data_and_storage_from_their_own_working_directory(
    tmp_path, monkeypatch
):
    # the demo search's relative defaults (data/, runs/), as `python jobs/tune.py` has them
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLEE_DATA", raising=False)
    monkeypatch.delenv("GLEE_RUNS", raising=False)
    search, cfg = gtune.load_search_config("tune-demo", [])
    base = gtune.pinned_paths(cfg)
    # a trial runs in Tune's per-trial working directory: the same folders from there
    elsewhere = tmp_path / "ray" / "working_dirs" / "run_trial_x"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    trial = gtune.trial_config(
        type(cfg).from_dict(base), {"finetune_lr": 0.01}, "t1", base["resources"]["storage_path"]
    )
    assert trial.prep_dir == tmp_path / "data" / "prep"
    assert trial.raw_dir == tmp_path / "data" / "raw"
    assert Path(trial.storage_path) == tmp_path / "runs"
    assert cfg.to_dict()["data"]["prep"] in ("", None)  # the driver's config is untouched


def test_the_pretraining_cache_key_ignores_the_classifier_and_finetuning():
    _, cfg = _smoke()

    def key(**params):
        trial = gtune.trial_config(cfg, params, "t", "/tmp/unused")
        return train.pretrain_hash(gtune.pretraining_config(trial))

    a = key(classifier="transformer", classifier_depth=2, classifier_heads=1, finetune_lr=0.03)
    assert a == key(classifier="mlp", finetune_lr=0.001) == key()
    assert key(margin_one=0.3) != a and key(pretrain_lr=1e-3) != a


def test_bad_search_configs_are_one_clear_line():
    with pytest.raises(ConfigError, match="token_dim 32 is not divisible by classifier_heads 3"):
        _smoke("search.space.classifier_heads={choices: [3]}")
    with pytest.raises(ConfigError, match="unknown parameter; searchable are margin_one"):
        _smoke("search.space.dropout={low: 0.0, high: 0.5}")
    with pytest.raises(ConfigError, match="searched over choices"):
        _smoke("search.space.classifier={low: 1, high: 2}")
    with pytest.raises(ConfigError, match="grace_period=2 is more than the 1 fold"):
        _smoke("finetune.folds=[1]", "search.grace_period=2")
    with pytest.raises(ConfigError, match="unknown config key finetune.lrr"):
        _smoke("finetune.lrr=0.1")


# --------------------------------------------------------------------------- Ray Tune


@pytest.fixture(scope="module")
def smoke_search(ray_session, toy_prep, tmp_path_factory):
    """Three trials of the smoke search on the toy Parquet sets, one at a time."""
    runs = tmp_path_factory.mktemp("tune-runs")
    search, cfg = _smoke(f"data.prep={toy_prep}", f"resources.storage_path={runs}")
    return cfg, gtune.run_search(search, cfg)


@pytest.mark.ray
@pytest.mark.slow
def test_every_complete_trial_has_three_folds_and_pruned_ones_are_marked(smoke_search):
    cfg, result = smoke_search
    rows = result.rows
    assert not [r for r in rows if r["status"] == "error"], rows
    assert len(rows) == 3 and rows[0]["status"] == "complete"
    for r in rows:
        folds = [r.get(f"f1_fold{k}") for k in (1, 2, 3)]
        done = [f for f in folds if f is not None]
        assert len(done) == r["folds_done"] and r["starts"] == 1
        assert r["mean_f1"] == pytest.approx(sum(done) / len(done))
        assert r["status"] == ("complete" if len(done) == 3 else "pruned")
        assert len(done) >= 1  # ASHA stops after a fold, never before the first
        trial_dir = result.path / gtune.TRIALS_DIR / r["trial_id"]
        assert (trial_dir / "results.md").is_file() == (r["status"] == "complete")
        # each fold ran as a Train run named from the trial id
        named = sorted(p.parent.name for p in trial_dir.glob("fold*/*/checkpoint_epoch*"))
        assert named == [f"{r['trial_id']}_fold{k}" for k in (1, 2, 3)][: len(done)]
    board = (result.path / "leaderboard.md").read_text()
    for r in rows:
        line = next(x for x in board.splitlines() if f"| {r['trial_id']} |" in x)
        assert f"| {r['status']} |" in line
    with open(result.path / "leaderboard.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [t["trial_id"] for t in table] == [r["trial_id"] for r in rows]
    assert {"finetune_lr", "f1_fold1", "f1_fold2", "f1_fold3", "mean_f1"} <= set(table[0])
    # dashboards: Tune's TensorBoard events per trial, the Optuna study in SQLite
    assert len(glob.glob(str(result.path / "run_trial_*" / "events.out.tfevents.*"))) == 3
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{result.path}/optuna.db")
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in study.trials}
    assert states == {
        r["trial_id"]: {"complete": "COMPLETE", "pruned": "PRUNED"}[r["status"]] for r in rows
    }


@pytest.mark.ray
@pytest.mark.slow
def test_trials_sharing_a_pretraining_config_pretrain_once(smoke_search):
    cfg, result = smoke_search
    # tune-smoke searches no pretraining parameter: one pretraining for all three trials
    runs = list(gtune.cache_dir(cfg).glob("*/pretrain/done.json"))
    assert len(runs) == 1
    assert result.pretrain_runs == 1 and result.pretrain_reused == 2
    for r in result.rows:
        assert not (result.path / gtune.TRIALS_DIR / r["trial_id"] / "pretrain").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_best_config_reloads_into_finetune(smoke_search):
    cfg, result = smoke_search
    best = load_config(result.path / "best.yaml")  # what jobs/finetune.py --config does
    top = result.rows[0]
    assert best.finetune.lr == pytest.approx(top["finetune_lr"])
    assert best.finetune.folds == [1, 2, 3] and best.name == f"{cfg.name}-best"
    head = train.model_config(best, 3)
    assert head.classifier == top["classifier"]
    if top["classifier"] == "transformer":
        assert head.classifier_depth == top["classifier_depth"]
    net = build_glee_net(head)
    initial, final = net(torch.zeros(2, 3, 176, 176), torch.zeros(2, head.expr_dim))
    assert final.shape == (2, 3)


def _terminated(exp: Path) -> set[str]:
    """Trial ids the last saved experiment state records as finished."""
    files = sorted(exp.glob("experiment_state-*.json"))
    if not files:
        return set()
    try:
        state = json.loads(files[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return set()  # caught mid-write
    trials = [json.loads(t) for t, _ in state["trial_data"]]
    return {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _kill(proc: subprocess.Popen, started: set[int]) -> None:
    """SIGKILL the driver's process group, then any process it started that outlived it."""
    with_children = started | _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    time.sleep(3)
    for pid in with_children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_search_resumes_without_rerunning_finished_trials(
    smoke_search, toy_prep, tmp_path
):
    # the smoke search's storage: its pretraining cache is warm (same pretraining config)
    storage = smoke_search[0].storage_path
    args = [
        sys.executable,
        str(ROOT / "jobs" / "tune.py"),
        "--config",
        "tune-smoke",
        "--set",
        f"data.prep={toy_prep}",
        "--set",
        f"resources.storage_path={storage}",
        "--set",
        "name=tune-kill",
        "--set",
        "search.num_samples=2",
        "--set",
        "finetune.folds=[1]",
    ]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, never the test session's
    exp = Path(storage) / "tune-kill"
    log = open(tmp_path / "driver1.log", "w")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 600
        while not _terminated(exp):
            assert proc.poll() is None, (tmp_path / "driver1.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in 10 minutes"
            started |= _descendants(proc.pid)
            time.sleep(2)
    finally:
        _kill(proc, started)
        log.close()
    finished = _terminated(exp)
    assert finished and (exp / "tuner.pkl").is_file()
    second = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = second.communicate(timeout=600)
    finally:
        _kill(second, set())
    assert second.returncode == 0, out[-3000:]
    assert "resuming the search" in out
    with open(exp / "leaderboard.csv", newline="") as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 2 and all(r["status"] == "complete" for r in rows.values())
    for trial_id in finished:
        assert rows[trial_id]["starts"] == "1"  # a finished trial is not run again
        # one Train run, named from the trial id, with one epoch's checkpoint
        runs = list((exp / gtune.TRIALS_DIR / trial_id).glob("fold1/*/checkpoint_epoch*"))
        assert [r.parent.name for r in runs] == [f"{trial_id}_fold1"]
    assert (exp / "best.yaml").is_file()
    assert len(list(Path(storage, gtune.CACHE_DIR).glob("*/pretrain/done.json"))) == 1


@pytest.mark.ray
@pytest.mark.slow
def test_a_dead_trials_pretraining_is_resumed_by_the_next_trial_of_its_config(
    ray_session, toy_prep, tmp_path
):
    import ray.train

    cfg = load_config(
        "smoke",
        [
            f"data.prep={toy_prep}",
            "pretrain.batch_size=12",
            "pretrain.epochs=3",
            "resources.max_failures=0",  # the first trial's Train run dies with its worker
            # the worker exits at step 1 of epoch 1: epoch 0 is checkpointed, epoch 1 is not
            "fault.epoch=1",
            "fault.step=1",
            "fault.rank=0",
        ],
    )
    cache = tmp_path / "cache"
    with pytest.raises(ray.train.TrainingFailedError):
        gtune.cached_pretrain(cfg, cache, "trialA")
    (folder,) = cache.glob("*/pretrain")
    assert gtune.unfinished_pretraining(folder) == "trialA_pretrain"

    pre = gtune.cached_pretrain(cfg, cache, "trialB")
    # trial B carried on from trial A's epoch-0 checkpoint instead of starting over
    assert [h["epoch"] for h in pre.history] == [0, 1, 2]
    assert [h["start_epoch"] for h in pre.history] == [0, 1, 1]
    assert pre.checkpoint.parent.name == "trialA_pretrain"
    assert not (folder / "trialB_pretrain").exists()
    assert gtune.unfinished_pretraining(folder) is None  # done: the next trial reuses it
    assert gtune.cached_pretrain(cfg, cache, "trialC").reused
