"""Experiment config: paper defaults, YAML presets, overrides, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from glee_platform.config import CONFIGS_DIR, ConfigError, ExperimentConfig, load_config


def test_defaults_are_the_papers_settings():
    cfg = ExperimentConfig().check()
    # Sec. IV-B: pretraining SGD momentum 0.9, lr 2e-4, batch 30; finetuning lr 2e-3, 10 epochs
    assert (cfg.pretrain.lr, cfg.pretrain.momentum, cfg.pretrain.batch_size) == (2e-4, 0.9, 30)
    assert (cfg.pretrain.margin_one, cfg.pretrain.margin_two_three) == (0.1, 0.2)
    assert cfg.pretrain.chain_mining is True
    assert (cfg.finetune.lr, cfg.finetune.momentum, cfg.finetune.epochs) == (2e-3, 0.9, 10)
    assert cfg.finetune.folds == [1, 2, 3] and cfg.finetune.init == "pretrain"
    assert not cfg.fault.enabled


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_preset_loads(path: Path):
    """Experiment presets load as they are; search presets (a `search:` section on top of an
    experiment) load through the search loader."""
    if path.stem.startswith("tune-"):
        from glee_platform.tune import load_search_config

        _, cfg = load_search_config(path)
    else:
        cfg = load_config(path)
    assert cfg.name == path.stem


def test_preset_by_name_and_overrides():
    cfg = load_config("demo", ["finetune.lr=1e-3", "finetune.folds=[2]", "pretrain.epochs=1"])
    assert cfg.finetune.lr == pytest.approx(1e-3)  # "1e-3" is a YAML string: coerced
    assert cfg.finetune.folds == [2]
    assert cfg.pretrain.epochs == 1
    assert cfg.model.preset == "tiny"  # untouched values come from the preset


@pytest.mark.parametrize(
    "override, words",
    [
        ("finetune.init=imagenet", ["finetune.init", "'pretrain'", "'none'"]),
        ("resources.use_gpu=maybe", ["resources.use_gpu", "'auto'", "true", "false"]),
        ("finetune.folds=[1, 4]", ["finetune.folds", "1, 2, 3"]),
        ("pretrain.epochs=abc", ["pretrain.epochs", "integer"]),
        ("pretrain.lr=-1", ["pretrain.lr", "> 0"]),
        ("finetune.lrr=0.1", ["finetune.lrr", "allowed keys", "lr"]),
        ("data.dataset=ck+", ["data.dataset", "bp4d", "disfa"]),
        ("model.preset=huge", ["model.preset", "tiny", "paper"]),
        ("resources.decoded_once_mib=-1", ["resources.decoded_once_mib", ">= 0"]),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_missing_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="demo"):
        load_config("no-such-preset")


def test_fault_rank_must_exist():
    with pytest.raises(ConfigError, match="fault.rank"):
        load_config("demo", ["fault.epoch=0", "fault.rank=3", "resources.num_workers=2"])


def test_dict_round_trip_and_flat_dump():
    cfg = load_config("paper-bp4d", ["finetune.eval_dataset=bp4dplus"])
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg
    flat = cfg.to_flat()
    assert flat["finetune.eval_dataset"] == "bp4dplus"
    assert flat["pretrain.lr"] == pytest.approx(2e-4)
    assert all(not isinstance(v, dict) for v in flat.values())


def test_hash_follows_the_sections_it_covers():
    a = load_config("demo")
    b = load_config("demo", ["finetune.lr=0.01"])
    assert a.hash("pretrain", "model") == b.hash("pretrain", "model")
    assert a.hash("finetune") != b.hash("finetune")


def test_paths_come_from_config_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLEE_RUNS", str(tmp_path / "r"))
    monkeypatch.setenv("GLEE_DATA", str(tmp_path / "d"))
    cfg = load_config("demo")
    assert cfg.run_dir == tmp_path / "r" / "demo"
    assert cfg.prep_dir == tmp_path / "d" / "prep"
    cfg = load_config("demo", [f"resources.storage_path={tmp_path / 'x'}"])
    assert cfg.run_dir == tmp_path / "x" / "demo"
    with pytest.raises(ConfigError, match="storage_path"):
        _ = load_config("demo", ["resources.storage_path=s3://bucket/runs"]).run_dir
