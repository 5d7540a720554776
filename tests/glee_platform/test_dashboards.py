"""jobs/dashboards.py: TensorBoard and optuna-dashboard answer on 127.0.0.1 for a run
folder, and stop with it."""

from __future__ import annotations

import urllib.request

import optuna
import pytest

from glee_platform.dashboards import dashboards


@pytest.mark.slow
def test_both_dashboards_answer_for_a_search_folder_and_stop_after(tmp_path):
    run = tmp_path / "tune-x"
    (run / "tensorboard").mkdir(parents=True)
    study = optuna.create_study(study_name="tune-x", storage=f"sqlite:///{run / 'optuna.db'}")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=2)
    with dashboards(run) as boards:
        assert [b.name for b in boards] == ["TensorBoard", "optuna-dashboard"]
        for board in boards:
            assert board.url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(board.url, timeout=10) as response:
                assert response.status == 200
        api = boards[1].url + "/api/studies"
        with urllib.request.urlopen(api, timeout=10) as response:
            assert b"tune-x" in response.read()  # the run's study, not an empty one
    assert all(b.process.poll() is not None for b in boards)  # stopped with the block


def test_a_missing_run_folder_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run folder"), dashboards(tmp_path / "x"):
        pass
