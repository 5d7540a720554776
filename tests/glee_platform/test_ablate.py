"""Table V on Ray: every variant on the same folds and seed, the table with the paper's
numbers, and the orderings it reproduces."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from evaluation_world import RUN, ablation

from glee.evaluation.paper_results import TABLE_V, TABLE_V_LABELS
from glee_platform.ablate import (
    VARIANTS,
    ablation_table,
    orderings_text,
    paper_orderings,
    pretraining_plan,
    variant_config,
)
from glee_platform.config import ConfigError, load_config


@pytest.fixture(scope="module")
def abl(ray_session, tiny_world, tmp_path_factory):
    return ablation(tiny_world, tmp_path_factory)


# --------------------------------------------------------------------------- pure


def test_variant_configs_share_data_folds_and_seed_and_nest_their_runs(tmp_path):
    base = load_config("ablation-tiny", [f"resources.storage_path={tmp_path}", "seed=7"])
    for v in VARIANTS:
        cfg = variant_config(base, v)
        assert cfg.model.ablation == v and cfg.name == v
        assert cfg.run_dir == tmp_path / "ablation-tiny" / v
        assert (cfg.seed, cfg.finetune.folds, cfg.data) == (7, [1, 2, 3], base.data)
        assert cfg.finetune.init == ("none" if v in ("wo_pretrain", "wo_gb_lb") else "pretrain")
    assert base.model.ablation == "full" and base.name == "ablation-tiny"  # base untouched
    with pytest.raises(ConfigError, match="choose among"):
        variant_config(base, "wo_everything")
    base.model.ablation = "wo_lb"
    with pytest.raises(ConfigError, match="starts from the full model"):
        variant_config(base, "full")


def test_orderings_count_the_papers_strict_pairs_and_flip_with_ours():
    same = paper_orderings(dict(TABLE_V))
    # 9 variants -> 36 pairs; w/o LB and w/o joint FC tie at 64.3 in the paper
    assert len(same) == 35 and all(o.reproduced for o in same)
    swapped = dict(TABLE_V)
    swapped["full"], swapped["wo_gb_lb"] = TABLE_V["wo_gb_lb"], TABLE_V["full"]
    broken = {(o.higher, o.lower) for o in paper_orderings(swapped) if not o.reproduced}
    # full now lowest and w/o GB&LB highest: every pair involving either flips, bar none
    expected = {("full", v) for v in VARIANTS if v != "full"}
    expected |= {(v, "wo_gb_lb") for v in VARIANTS if v not in ("full", "wo_gb_lb")}
    assert broken == expected
    text = orderings_text(paper_orderings(swapped))
    assert "Reproduced 20 of the paper's 35" in text  # 35 - 8 - 7 flipped pairs
    assert "not above: w/o pretrain, fixed GB&LB" in text


# --------------------------------------------------------------------------- on Ray


@pytest.mark.ray
@pytest.mark.slow
def test_ablation_writes_table_v_with_the_variants_run_and_the_papers_numbers(abl):
    result, cfg = abl
    assert list(result.variants) == list(RUN)
    md = (cfg.run_dir / "ablation.md").read_text()
    csv = pd.read_csv(cfg.run_dir / "ablation.csv", index_col=0)
    assert list(csv.index) == [TABLE_V_LABELS[v] for v in RUN]  # the paper's row order
    assert list(csv.columns) == [*result.au_names, "Avg", "Paper Avg", "Folds"]
    assert csv["Paper Avg"].tolist() == [TABLE_V[v] for v in RUN]
    assert (csv["Folds"].astype(str) == "1").all()
    for v in RUN:
        # the table's Avg is the variant's own fold-1 F1, as its run folder reports it
        runs = pd.read_csv(cfg.run_dir / v / "results.csv", index_col=0)
        assert csv.loc[TABLE_V_LABELS[v], "Avg"] == pytest.approx(
            runs.loc["mean", "Avg"], abs=0.051
        )
        assert csv.loc[TABLE_V_LABELS[v], result.au_names].between(0, 100).all()
    assert "| GLEE-Net (full) |" in md and "strict pairwise orderings" in md
    assert ablation_table(result).shape == (len(RUN), len(result.au_names) + 3)
    # only the variants that ran: no row, and no ordering, for the six that did not
    assert not (set(VARIANTS) - set(RUN)) & set(result.variants)
    assert TABLE_V_LABELS["resnet_gb_lb"] not in md


@pytest.mark.ray
@pytest.mark.slow
def test_each_variant_trains_its_own_architecture_on_the_same_folds_and_seed(abl):
    _, cfg = abl
    root = cfg.run_dir
    losses = {}
    for v in RUN:
        saved = yaml.safe_load((root / v / "config.yaml").read_text())
        assert saved["model"]["ablation"] == v and saved["seed"] == cfg.seed
        assert (
            saved["finetune"]["folds"] == [1]
            and saved["data"] == yaml.safe_load((root / "config.yaml").read_text())["data"]
        )
        assert json.loads((root / v / "fold1" / "done.json").read_text())["checkpoint"]
        losses[v] = pd.read_csv(root / v / "fold1" / "metrics.csv")["train_loss"].iloc[0]
    assert not list(root.glob("*/pretrain"))  # finetune.init=none: nothing pretrained
    # w/o pretrain is the full model when nothing is pretrained: same seed, same data,
    # same architecture -> the same first loss; a different architecture -> another one
    assert losses["wo_pretrain"] == pytest.approx(losses["full"], rel=1e-6)
    assert not np.isclose(losses["wo_tc"], losses["full"])


def test_the_full_models_pretraining_is_shared_and_the_resnet_has_its_own():
    plan = pretraining_plan(list(VARIANTS), "pretrain")
    assert plan == {
        "wo_pretrain": None,
        "fixed_gb_lb": "full",
        "resnet_gb_lb": "resnet_gb_lb",
        "wo_gb_lb": None,
        "wo_3dgb": "full",
        "wo_lb": "full",
        "wo_tc": "full",
        "wo_joint_fc": "full",
        "full": "full",
    }
    assert set(pretraining_plan(["wo_lb"], "none").values()) == {None}
    assert pretraining_plan(["wo_lb"], "pretrain") == {"wo_lb": "full"}
