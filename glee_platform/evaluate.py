"""Evaluate the finetuned checkpoints of a run folder: per-fold and cross-dataset F1 tables
beside the paper's numbers, per-AU F1 bars, t-SNE of E_exp by AU combination (Fig. 2, 5)
and Ave-Var of the branch combinations (Fig. 6).

A run folder is what `jobs/finetune.py` writes (`<storage>/<name>/`: config.yaml, fold1/ ..
fold3/ with checkpoints and done.json). Each fold's model is evaluated on the test part of
its fold (Sec. IV-A), or on the whole of another dataset (`eval_dataset`, e.g. BP4D
models on BP4D+), as one Ray task per fold, in parallel where the cluster has room.

Output, `<run>/evaluation/<eval dataset>/` unless `out` is given:
    f1.md, f1.csv           per-AU F1 (%) per fold and mean, the paper's row, always-present
    f1_bars.png             per-AU F1 bars, the paper's average as a line
    tsne_fold<k>.png        t-SNE of E_exp on fold k's evaluation faces, by AU combination
    ave_var.md, ave_var.csv Ave-Var of each branch combination per fold and mean (Fig. 6)
    ave_var.png             the fold mean of Ave-Var
    predictions.parquet     per face: fold of the model, subject, task, frame, labels, logits
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from glee.datasets.records import DATASET_AUS
from glee.evaluation.ave_var import ave_var_table, branch_features
from glee.evaluation.metrics import F1Accumulator, f1_table, fold_average, to_markdown
from glee.evaluation.paper_results import DATASET_LABELS, reported_f1
from glee.files import write_parquet_atomic, write_text_atomic
from glee_platform.config import ConfigError
from glee_platform.prepared import always_present_f1, face_split, fold_filter, read_manifest
from glee_platform.run_folder import (
    RunFolderError,
    finished_folds,
    fold_checkpoint,
    load_run_config,
)

EVAL_COLUMNS = ["fold", "subject", "task", "frame", "image", "expression", "labels"]


class EvaluationError(RunFolderError):
    """A run folder or dataset cannot be evaluated; the message says what to do."""


# --------------------------------------------------------------------------- one model


@dataclass
class FoldEvaluation:
    """One checkpoint evaluated on one set of faces."""

    fold: int  # the fold whose model this is
    au_names: list[str]
    keys: pd.DataFrame  # subject, task, frame, fold (of the face) per evaluated face
    labels: np.ndarray  # (N, n_au) int8, -1 unknown
    logits: np.ndarray  # (N, n_au) final predictions
    f_exp: np.ndarray  # (N, expr_dim)
    e_exp: np.ndarray | None = None
    g_exp: np.ndarray | None = None
    l_exp: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def f1(self) -> np.ndarray:
        acc = F1Accumulator(len(self.au_names))
        # Sec. IV-A: p > 0.5, unknown labels masked (copies: Ray hands out read-only arrays)
        acc.update(np.array(self.logits), np.array(self.labels))
        return acc.f1()

    @property
    def occurrences(self) -> np.ndarray:
        from glee.model.inference import Outputs

        return Outputs(self.logits).occurrences

    @property
    def baseline_f1(self) -> np.ndarray:
        return always_present_f1(self.labels)


def _face_batches(prep: Path, dataset: str, folds: list[int], max_rows: int, batch_rows: int):
    """Record batches of the faces in `folds`, shard by shard in file order: the rows of
    the training loop's evaluation set (`glee_platform.prepared.face_split`)."""
    split = face_split(prep, dataset, folds, max_rows)
    if not split.files:
        return
    source = pads.dataset(list(split.files), format="parquet")
    fold_type = source.schema.field("fold").type
    flt = pads.field("fold").isin(pa.array(folds, fold_type))
    for batch in source.to_batches(
        columns=EVAL_COLUMNS, filter=flt, batch_size=batch_rows, use_threads=False
    ):
        if batch.num_rows:
            yield batch


def evaluate_checkpoint(
    model: dict[str, Any], checkpoint: str | os.PathLike, *args: Any, **options: Any
) -> FoldEvaluation:
    """`evaluate_model` of the checkpoint, loaded here: the form a Ray task is given (a
    config dict and a path travel; the rest of the arguments as `evaluate_model`'s)."""
    return evaluate_model(load_checkpoint_model(model, checkpoint), *args, **options)


def load_checkpoint_model(model: dict[str, Any], checkpoint: str | os.PathLike):
    """The GLEENet of config dict `model` with the weights of `checkpoint`."""
    from glee.model.config import GLEEConfig
    from glee.model.glee_net import build_glee_net
    from glee.model.inference import load_model_weights

    return load_model_weights(build_glee_net(GLEEConfig.from_dict(model)), checkpoint)


def evaluate_model(
    net,
    prep: str | os.PathLike,
    dataset: str,
    folds: list[int],
    *,
    model_fold: int,
    max_rows: int = 0,
    batch_size: int = 64,
    threads: int = 1,
) -> FoldEvaluation:
    """Run a loaded model (`load_checkpoint_model`) over the faces of `folds` (no Ray)."""
    import torch

    from glee.datasets.images import decode_images
    from glee.model.inference import Outputs, infer

    torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    prep = Path(prep)
    au_names = list(read_manifest(prep, dataset)["au_names"])
    outs: list[Outputs] = []
    keys: list[pd.DataFrame] = []
    labels, f_exp = [], []
    for batch in _face_batches(prep, dataset, folds, max_rows, batch_size):
        faces = decode_images(batch.column("image").to_pylist())  # (B, 200, 200, 3)
        expr = np.asarray(batch.column("expression").to_pylist(), np.float32)
        outs.append(infer(net, faces, expr))
        keys.append(batch.select(["subject", "task", "frame", "fold"]).to_pandas())
        labels.append(np.asarray(batch.column("labels").to_pylist(), np.int8))
        f_exp.append(expr)
    if not outs:
        raise EvaluationError(f"no preprocessed {dataset} faces in folds {folds} under {prep}")
    out = Outputs.concat(outs)
    return FoldEvaluation(
        fold=model_fold,
        au_names=au_names,
        keys=pd.concat(keys, ignore_index=True),
        labels=np.concatenate(labels),
        logits=out.logits,
        f_exp=np.concatenate(f_exp),
        e_exp=out.e_exp,
        g_exp=out.g_exp,
        l_exp=out.l_exp,
        seconds=time.perf_counter() - t0,
    )


PERMUTED_INPUTS = ("intact", "E_exp permuted", "f_exp permuted")


def permuted_head_f1(
    head, e_exp: np.ndarray, f_exp: np.ndarray, labels: np.ndarray, perm: np.ndarray
) -> dict[str, float]:
    """Mean F1 (%) of an AU head (Sec. III-D: `head(E_exp, f_exp) -> (initial, final)`
    logits) with its inputs intact, then with E_exp, then with f_exp, given to each face
    from face `perm[i]`; the other input is left as is. A head that ignores an input loses
    nothing when that input is permuted."""
    import torch

    from glee.evaluation.metrics import au_f1

    perm = np.asarray(perm)
    if sorted(perm.tolist()) != list(range(len(labels))):
        raise ValueError(f"perm is not a permutation of the {len(labels)} faces")
    e, f = torch.from_numpy(np.asarray(e_exp)), torch.from_numpy(np.asarray(f_exp))
    idx = torch.from_numpy(perm)
    inputs = {"intact": (e, f), "E_exp permuted": (e[idx], f), "f_exp permuted": (e, f[idx])}
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, (ee, ff) in inputs.items():
            _, final = head(ee, ff)
            out[name] = 100.0 * float(au_f1(final.numpy(), labels).mean())
    return out


def input_reliance(run_dir: str | os.PathLike, seed: int = 0) -> dict[str, list[float]]:
    """Per finished fold of a finetune run folder, `permuted_head_f1` of the fold's
    checkpoint on its test part (the faces and F1 of the training job), the faces' order
    permuted with seed `seed + fold`: {"intact": [...], "E_exp permuted": [...], ...}."""
    from glee_platform.train import model_config

    cfg = load_run_config(run_dir)
    au_names = list(read_manifest(cfg.prep_dir, cfg.data.dataset)["au_names"])
    gcfg = model_config(cfg, len(au_names))
    if not (gcfg.has_embedding and gcfg.use_3d):
        raise EvaluationError(
            f"{Path(run_dir).name}: the AU head has one input only (ablation {gcfg.ablation})"
        )
    out: dict[str, list[float]] = {name: [] for name in PERMUTED_INPUTS}
    for k in finished_folds(run_dir):
        net = load_checkpoint_model(gcfg.to_dict(), fold_checkpoint(run_dir, k))
        ev = evaluate_model(
            net,
            cfg.prep_dir,
            cfg.data.dataset,
            [k],
            model_fold=k,
            max_rows=cfg.data.max_rows,
            threads=os.cpu_count() or 1,
        )
        perm = np.random.default_rng(seed + k).permutation(len(ev.labels))
        for name, value in permuted_head_f1(
            net.forward_head, ev.e_exp, ev.f_exp, ev.labels, perm
        ).items():
            out[name].append(value)
    return out


# --------------------------------------------------------------------------- a run folder


@dataclass
class RunEvaluation:
    run_dir: Path
    train_dataset: str
    eval_dataset: str
    au_names: list[str]
    folds: dict[int, FoldEvaluation]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    ave_var: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def per_fold_f1(self) -> dict[int, np.ndarray]:
        return {k: ev.f1 for k, ev in sorted(self.folds.items())}

    @property
    def mean_f1(self) -> np.ndarray:
        return fold_average(list(self.per_fold_f1.values()))

    @property
    def cross_dataset(self) -> bool:
        return self.eval_dataset != self.train_dataset

    @property
    def reported(self) -> float | None:
        return reported_f1(self.train_dataset, self.eval_dataset)


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    eval_dataset: str | None = None,
    folds: list[int] | None = None,
    prep: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    max_rows: int | None = None,
    cpus_per_task: int = 1,
    plots: bool = True,
    tsne_max_points: int = 2000,
) -> RunEvaluation:
    """Evaluate every finished fold of `run_dir` (one Ray task each), write the tables,
    predictions and plots; returns the per-fold results."""
    import ray

    from glee_platform.session import ensure_ray
    from glee_platform.train import model_config

    run = Path(run_dir).expanduser().resolve()
    cfg = load_run_config(run)
    train_dataset = cfg.data.dataset
    eval_dataset = eval_dataset or cfg.finetune.eval_dataset or train_dataset
    if eval_dataset not in DATASET_AUS:
        raise EvaluationError(
            f"eval dataset {eval_dataset!r} is not an AU dataset: choose one of "
            f"{', '.join(DATASET_AUS)}"
        )
    if DATASET_AUS[eval_dataset] != DATASET_AUS[train_dataset]:
        raise EvaluationError(
            f"{run.name} was trained on {train_dataset} (AUs {list(DATASET_AUS[train_dataset])}) "
            f"but {eval_dataset} codes AUs {list(DATASET_AUS[eval_dataset])}: cross-dataset "
            "evaluation needs the same AU set"
        )
    prep_dir = Path(prep).expanduser().resolve() if prep else cfg.prep_dir
    au_names = list(read_manifest(prep_dir, eval_dataset)["au_names"])
    available = finished_folds(run)
    folds = sorted(folds or available)
    missing = [k for k in folds if k not in available]
    if not folds or missing:
        raise EvaluationError(
            f"{run} has no finished fold {missing or [1, 2, 3]}: finetune it first "
            f"(finished: {available or 'none'})"
        )
    try:
        gcfg = model_config(cfg, len(au_names)).to_dict()
    except ConfigError as err:
        raise EvaluationError(str(err)) from None
    rows = cfg.data.max_rows if max_rows is None else max_rows
    cross = eval_dataset != train_dataset
    ensure_ray()
    task = ray.remote(evaluate_checkpoint).options(num_cpus=cpus_per_task)
    refs = {
        k: task.remote(
            gcfg,
            str(fold_checkpoint(run, k)),
            str(prep_dir),
            eval_dataset,
            fold_filter(None if cross else k, train=False)[1],
            model_fold=k,
            max_rows=rows,
            batch_size=cfg.finetune.eval_batch_size,
            threads=cpus_per_task,
        )
        for k in folds
    }
    results = {k: ray.get(ref) for k, ref in refs.items()}
    out_dir = Path(out).expanduser().resolve() if out else run / "evaluation" / eval_dataset
    result = RunEvaluation(run, train_dataset, eval_dataset, au_names, results, out_dir)
    write_evaluation(result, plots=plots, tsne_max_points=tsne_max_points, seed=cfg.seed)
    return result


# --------------------------------------------------------------------------- tables


def table_with_paper(
    rows: dict[str, np.ndarray],
    au_names: list[str],
    paper: dict[str, float | None],
) -> pd.DataFrame:
    """Our rows in the paper's format (F1 %, 1 dp, Avg last), then rows of the paper's
    reported averages (AU cells empty: DESIGN.md records only the averages)."""
    df = f1_table(rows, au_names).astype(object)
    for label, avg in paper.items():
        if avg is not None:
            df.loc[label] = [""] * len(au_names) + [float(avg)]
    return df


def write_table(df: pd.DataFrame, stem: Path, title: str, note: str = "") -> dict[str, Path]:
    """stem.md (title, table, note) and stem.csv, both atomic."""
    md = f"# {title}\n\n" + to_markdown(df) + (f"\n{note}\n" if note else "")
    csv = df.to_csv(float_format="%.1f")
    return {
        "md": write_text_atomic(stem.with_suffix(".md"), md),
        "csv": write_text_atomic(stem.with_suffix(".csv"), csv),
    }


def _label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def f1_results_table(result: RunEvaluation) -> pd.DataFrame:
    rows = {f"fold{k}": v for k, v in result.per_fold_f1.items()}
    rows["mean"] = result.mean_f1
    rows["always-present (mean)"] = fold_average([ev.baseline_f1 for ev in result.folds.values()])
    where = (
        f"trained on {_label(result.train_dataset)}, all of {_label(result.eval_dataset)}"
        if result.cross_dataset
        else f"{_label(result.train_dataset)}, 3-fold"
    )
    return table_with_paper(rows, result.au_names, {f"GLEE-Net, paper ({where})": result.reported})


def ave_var_results(result: RunEvaluation) -> dict[int, dict[str, Any]]:
    """Ave-Var (Fig. 6) of every branch combination the model has, per fold."""
    out: dict[int, dict[str, Any]] = {}
    for k, ev in sorted(result.folds.items()):
        feats = branch_features(ev.g_exp, ev.l_exp, ev.e_exp, ev.f_exp)
        try:
            out[k] = ave_var_table(feats, ev.labels)
        except ValueError as err:
            print(f"[glee] fold {k}: no Ave-Var ({err})")
    return out


def _ave_var_frame(per_fold: dict[int, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for k, table in per_fold.items():
        for combo, av in table.items():
            rows.append(
                {
                    "fold": str(k),
                    "branches": combo,
                    "ave_var": av.value,
                    "ratio": av.ratio,
                    "groups": av.groups,
                    "faces": av.faces,
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    mean = df.groupby("branches", sort=False)[["ave_var", "ratio", "groups", "faces"]].mean()
    mean = mean.reset_index().assign(fold="mean")
    return pd.concat([df, mean[df.columns]], ignore_index=True)


def _predictions_table(result: RunEvaluation) -> pa.Table:
    parts = []
    for k, ev in sorted(result.folds.items()):
        df = ev.keys.rename(columns={"fold": "face_fold"}).copy()
        df.insert(0, "model_fold", k)
        df["labels"] = list(ev.labels)
        df["logits"] = list(ev.logits.astype(np.float32))
        df["occurrences"] = list(ev.occurrences)
        parts.append(df)
    return pa.Table.from_pandas(pd.concat(parts, ignore_index=True), preserve_index=False)


def write_evaluation(
    result: RunEvaluation, *, plots: bool = True, tsne_max_points: int = 2000, seed: int = 0
) -> dict[str, Path]:
    """Tables, predictions and (if `plots`) figures of a run's evaluation."""

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    files = result.files
    title = (
        f"{result.run_dir.name}: per-AU F1 (%) of the {_label(result.train_dataset)} models "
        f"on {'all of ' if result.cross_dataset else 'the test parts of '}"
        f"{_label(result.eval_dataset)}"
    )
    note = (
        "The paper's row gives its reported average only (DESIGN.md); its AU cells are "
        "empty. Always-present: every AU predicted present, on the same faces."
    )
    df = f1_results_table(result)
    files.update({f"f1_{k}": v for k, v in write_table(df, out / "f1", title, note).items()})
    write_parquet_atomic(out / "predictions.parquet", _predictions_table(result))
    files["predictions"] = out / "predictions.parquet"
    result.ave_var = ave_var_results(result)
    av = _ave_var_frame(result.ave_var)
    if not av.empty:
        av_md = (
            "# Ave-Var of the branch combinations (Fig. 6)\n\n"
            "Mean within-AU-combination variance of the L2-normalised features (lower: faces "
            "with the same AUs closer); ratio: to the variance of all faces pooled.\n\n"
            + _markdown(av)
        )
        files["ave_var_md"] = write_text_atomic(out / "ave_var.md", av_md)
        files["ave_var_csv"] = write_text_atomic(out / "ave_var.csv", av.to_csv(index=False))
    if plots:
        files.update(_write_plots(result, tsne_max_points, seed))
    return files


def _markdown(df: pd.DataFrame) -> str:
    """A Markdown table of a plain frame (floats with 4 decimals)."""

    def cell(x: object) -> str:
        if isinstance(x, (float, np.floating)):
            return f"{x:.0f}" if float(x).is_integer() and abs(x) >= 1 else f"{x:.4f}"
        return str(x)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write_plots(result: RunEvaluation, tsne_max_points: int, seed: int) -> dict[str, Path]:
    from glee.evaluation.ave_var import AveVar
    from glee.evaluation.plots import plot_ave_var, plot_f1_bars, plot_tsne

    out = result.out_dir
    files: dict[str, Path] = {}
    rows = {f"fold{k}": v for k, v in result.per_fold_f1.items()}
    if len(rows) > 1:
        rows["mean"] = result.mean_f1
    files["f1_bars"] = plot_f1_bars(
        rows,
        result.au_names,
        out / "f1_bars.png",
        title=f"{result.run_dir.name}: per-AU F1 on {_label(result.eval_dataset)}",
        reported_avg=result.reported,
    )
    for k, ev in sorted(result.folds.items()):
        if ev.e_exp is None:
            continue
        pick = np.arange(len(ev.e_exp))
        if len(pick) > tsne_max_points:
            pick = np.sort(np.random.default_rng(seed).choice(pick, tsne_max_points, replace=False))
        if len(pick) < 5:
            continue
        files[f"tsne_fold{k}"] = plot_tsne(
            ev.e_exp[pick],
            ev.labels[pick],
            result.au_names,
            out / f"tsne_fold{k}.png",
            title=f"t-SNE of E_exp, fold {k} model, {len(pick)} {_label(result.eval_dataset)} faces",
            seed=seed,
        )
    if result.ave_var:
        combos = list(next(iter(result.ave_var.values())))
        mean = {
            c: AveVar(
                float(np.mean([t[c].value for t in result.ave_var.values() if c in t])),
                float(np.mean([t[c].ratio for t in result.ave_var.values() if c in t])),
                int(np.mean([t[c].groups for t in result.ave_var.values() if c in t])),
                int(np.mean([t[c].faces for t in result.ave_var.values() if c in t])),
            )
            for c in combos
        }
        files["ave_var_png"] = plot_ave_var(
            mean,
            out / "ave_var.png",
            title=f"Ave-Var by branches, mean of {len(result.ave_var)} fold model(s)",
        )
    return files


__all__ = [
    "PERMUTED_INPUTS",
    "EvaluationError",
    "FoldEvaluation",
    "RunEvaluation",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluate_run",
    "fold_checkpoint",
    "input_reliance",
    "load_checkpoint_model",
    "load_run_config",
    "permuted_head_f1",
    "table_with_paper",
    "write_table",
]
