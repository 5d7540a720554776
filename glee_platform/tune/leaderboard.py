"""The search's results: one row per trial (parameters, per-fold and mean F1, status),
as leaderboard.md / leaderboard.csv, and the best trial's config as best.yaml."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glee.files import write_text_atomic
from glee_platform.config import ExperimentConfig
from glee_platform.tune.space import PARAMS
from glee_platform.tune.trial import METRIC, STARTS_FILE, TIME_ATTR, TRIALS_DIR


def leaderboard_rows(grid: Any, exp: Path, num_folds: int) -> list[dict[str, Any]]:
    """One row per trial: parameters, per-fold and mean F1 (%), status, pretraining, starts."""
    rows = []
    for result in grid:
        m = result.metrics or {}
        trial_id = m.get("trial_id") or Path(result.path).name
        done = int(m.get(TIME_ATTR, 0))
        status = "complete" if done == num_folds else "pruned" if done else "not run"
        if result.error is not None:
            status = "error"
        starts = exp / TRIALS_DIR / trial_id / STARTS_FILE
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "status": status,
            "folds_done": done,
            "mean_f1": 100 * m[METRIC] if METRIC in m else None,
            "pretrained": bool(m.get("pretrained", False)),
            "pretrain_reused": bool(m.get("pretrain_reused", False)),
            "starts": len(starts.read_text().splitlines()) if starts.is_file() else 0,
        }
        row.update({k: result.config.get(k) for k in PARAMS})
        for key, value in m.items():
            if key.startswith("f1_fold"):
                row[key] = 100 * value
        rows.append(row)
    order = {"complete": 0, "pruned": 1, "error": 2, "not run": 3}
    rows.sort(key=lambda r: (order[r["status"]], -(r["mean_f1"] or 0.0), r["trial_id"]))
    return rows


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def write_leaderboard(
    exp: Path, rows: list[dict[str, Any]], folds: Sequence[int], best: ExperimentConfig | None
) -> None:
    """leaderboard.md / leaderboard.csv (F1 in %), and best.yaml when a trial completed."""
    params = [k for k in PARAMS if any(r.get(k) is not None for r in rows)]
    fold_cols = [f"f1_fold{k}" for k in folds]
    cols = ["trial_id", "status", *params, *fold_cols, "mean_f1", "pretrain_reused", "starts"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r.get(c)) for c in cols})
    write_text_atomic(exp / "leaderboard.csv", buf.getvalue())
    head = ["rank", *cols]
    lines = [
        f"# Search {exp.name}: mean F1 (%) over folds {', '.join(map(str, folds))}",
        "",
        "Pruned: ASHA stopped the trial after the folds shown; - : not drawn (conditional) or "
        "not run.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for i, r in enumerate(rows, 1):
        cells = [str(i)] + [
            f"{r[c]:.1f}"
            if c in fold_cols + ["mean_f1"] and r.get(c) is not None
            else fmt(r.get(c))
            for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if best is not None:
        lines += [
            "",
            f"Best config: best.yaml (`python jobs/finetune.py --config {exp / 'best.yaml'}`)",
        ]
    write_text_atomic(exp / "leaderboard.md", "\n".join(lines) + "\n")
    if best is not None:
        write_text_atomic(exp / "best.yaml", best.to_yaml())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
