"""Fault tolerance: a worker killed mid-epoch; Train resumes from the last checkpoint."""

from __future__ import annotations

import pytest
import torch

from glee_platform import train
from glee_platform.config import load_config
from glee_platform.tracking import read_metrics_csv
from glee_platform.train.checkpoints import CHECKPOINT_PREFIX


@pytest.mark.ray
@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_from_the_last_checkpoint(ray_session, toy_prep, tmp_path):
    cfg = load_config(
        "smoke",
        [
            "name=fault",
            f"data.prep={toy_prep}",
            f"resources.storage_path={tmp_path}",
            "resources.max_failures=1",
            "finetune.init=none",
            "finetune.batch_size=16",
            "finetune.epochs=3",
            "finetune.eval_every=3",
            "finetune.folds=[3]",
            # the worker exits at step 2 of epoch 1: epoch 0 is checkpointed, epoch 1 is not
            "fault.epoch=1",
            "fault.step=2",
            "fault.rank=0",
        ],
    )
    run, _ = train.run_finetune_fold(cfg, 3, None)
    marker = cfg.run_dir / "fault-injected"
    assert marker.is_file() and "epoch 1 step 2" in marker.read_text()
    # every configured epoch, each exactly once, and the run ends with the eval
    assert [h["epoch"] for h in run.history] == [0, 1, 2]
    assert "val_mean_f1" in run.final
    # epochs 1 and 2 ran in the restarted attempt, which started from epoch 0's checkpoint
    assert [h["start_epoch"] for h in run.history] == [0, 1, 1]
    rows = read_metrics_csv(cfg.run_dir / "fold3" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    top = read_metrics_csv(cfg.run_dir / "metrics.csv")
    assert [(r["run"], r["epoch"]) for r in top] == [("fold3", "0"), ("fold3", "1"), ("fold3", "2")]


def test_resume_takes_the_newest_complete_checkpoint_of_the_folder(tmp_path):
    for epoch in (0, 1, 2):
        d = tmp_path / f"{CHECKPOINT_PREFIX}{epoch:04d}"
        d.mkdir()
        torch.save({"epoch": epoch, "weights": torch.zeros(1000)}, d / train.STATE_FILE)
    # epoch 2's upload was cut short by the failure; epoch 1 was never registered
    whole = (tmp_path / "checkpoint_epoch0002" / train.STATE_FILE).read_bytes()
    (tmp_path / "checkpoint_epoch0002" / train.STATE_FILE).write_bytes(whole[: len(whole) // 2])
    (tmp_path / "checkpoint_epoch0003").mkdir()  # created, nothing uploaded yet
    registered = tmp_path / "checkpoint_epoch0000"
    found = train.checkpoints_newest_first(tmp_path, registered)
    assert [p.name for p in found] == ["checkpoint_epoch0001", "checkpoint_epoch0000"]
    assert train.checkpoints_newest_first(tmp_path / "absent") == []
