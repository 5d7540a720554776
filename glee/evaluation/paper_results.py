"""The F1 scores the paper reports (DESIGN.md, "Reported F1"), to print beside ours.

Only the averages are recorded here: the per-AU cells of the paper's tables are not in
DESIGN.md, so a table row of the paper carries its Avg and leaves the AU cells empty.
"""

from __future__ import annotations

# Sec. IV-C, Tables II-IV: GLEE-Net's mean F1 (%) over the three folds.
REPORTED_F1: dict[str, float] = {"bp4d": 65.7, "disfa": 65.5, "bp4dplus": 63.7}

# Sec. IV-C: trained on BP4D, tested on all of BP4D+.
REPORTED_CROSS_F1: dict[tuple[str, str], float] = {("bp4d", "bp4dplus"): 59.5}

# Table V (BP4D): mean F1 (%) of each ablation variant, keyed by GLEEConfig.ABLATIONS name.
TABLE_V: dict[str, float] = {
    "wo_pretrain": 62.0,
    "fixed_gb_lb": 59.7,
    "resnet_gb_lb": 62.8,
    "wo_gb_lb": 59.1,
    "wo_3dgb": 64.6,
    "wo_lb": 64.3,
    "wo_tc": 64.9,
    "wo_joint_fc": 64.3,
    "full": 65.7,
}

# Table V row labels, in the paper's order.
TABLE_V_LABELS: dict[str, str] = {
    "wo_pretrain": "w/o pretrain",
    "fixed_gb_lb": "fixed GB&LB",
    "resnet_gb_lb": "ResNet instead of GB&LB",
    "wo_gb_lb": "w/o GB&LB",
    "wo_3dgb": "w/o 3DGB",
    "wo_lb": "w/o LB",
    "wo_tc": "MLP instead of TC",
    "wo_joint_fc": "w/o joint FC",
    "full": "GLEE-Net (full)",
}

DATASET_LABELS: dict[str, str] = {"bp4d": "BP4D", "bp4dplus": "BP4D+", "disfa": "DISFA"}


def reported_f1(train_dataset: str, eval_dataset: str | None = None) -> float | None:
    """The paper's mean F1 (%) for training on `train_dataset` and testing on `eval_dataset`
    (the same dataset's folds when None); None where the paper reports no such number."""
    if eval_dataset is None or eval_dataset == train_dataset:
        return REPORTED_F1.get(train_dataset)
    return REPORTED_CROSS_F1.get((train_dataset, eval_dataset))


__all__ = [
    "DATASET_LABELS",
    "REPORTED_CROSS_F1",
    "REPORTED_F1",
    "TABLE_V",
    "TABLE_V_LABELS",
    "reported_f1",
]
