"""How well each 3DMM fit mode recovers expression and pose on the synthetic world.

    make demo                                   # first: the demo's data, preprocessed
    python bench/fit_accuracy.py                # then this (a few minutes on 2 cores)
    python bench/fit_accuracy.py --prep data/prep --raw data/raw --dataset bp4d

Why (issue: the 3D branch under a real detector's landmarks): the paper fits pose, 60 shape
and 51 expression coefficients to each frame on its own (Sec. III-C). Exact landmarks make
that well posed; a detector's error does not. This script refits the prepared frames of
the demo's synthetic BP4D, where the rendered truth is known, under two kinds of input:

  detector   the 68 landmarks the preprocessing found on the renders (`image_landmarks` of
             the faces table: the default real detector, e.g. dlib's predictor)
  exact      the rendered landmarks from truth.parquet, plus 0, 1 or 2 px Gaussian noise

and for each fit mode (`glee.face.fitting.FIT_MODES`):

  frame      the paper's energy, each frame alone (reg 1e-4 on f_s and f_exp)
  photo      each frame alone with the priors measured best for a single image
  subject    one f_s per subject from all of its frames, then pose and f_exp per frame

it prints the median and lowest correlation of the landmark-moving blendshapes with the
truth, the mean pose error in degrees, the fit's landmark RMSE (px, to the landmarks it was
given), faces per CPU-second of the per-frame pass (and, for subject mode, the CPU-seconds of
the subjects' shape passes, which read up to 256 frames per subject), and the
mean F1 over the three folds of a per-AU logistic regression on the fitted f_exp (the
f_exp probe of `glee.evaluation.probe`, which `bench/fexp_baseline.py` and the finetuning
job run too). Last line, for the default mode under the detector:

    median_corr=<x> probe_f1=<y> faces_per_cpu_s=<z>
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fexp_baseline import FOLDS, KEY  # noqa: E402

from glee.evaluation.metrics import fold_average  # noqa: E402
from glee.evaluation.probe import fexp_probe_f1  # noqa: E402
from glee.face.default_model import landmark_moving_expressions  # noqa: E402
from glee.face.fitting import (  # noqa: E402
    DEFAULT_FIT_MODE,
    FIT_MODES,
    FIT_PRIORS,
    compile_kernels,
    estimate_shape,
    fit_frames,
    fit_with_shape,
    gather_fits,
)
from glee.face.pipeline import load_morphable_model  # noqa: E402
from glee_platform.prepared import DataError, read_manifest  # noqa: E402

NOISE_PX = (0.0, 1.0, 2.0)


def load(prep: Path, raw: Path, dataset: str) -> tuple[pd.DataFrame, dict]:
    """The prepared rows joined to their rendered truth, and the manifest."""
    manifest = read_manifest(prep, dataset)
    if manifest["config"].get("landmarks") == "provided":
        raise DataError(
            f"{prep / dataset} was prepared from the provided (exact) landmarks; rerun the "
            "preprocessing with a detector (the default, --landmarks auto) into another folder"
        )
    cols = [*KEY, "fold", "labels", "image_landmarks"]
    rows = pq.read_table(prep / dataset / "faces", columns=cols).to_pandas()
    path = raw / dataset / "truth.parquet"
    if not path.is_file():
        raise DataError(f"no {path}: the fit's accuracy needs the synthetic world's truth")
    truth = pq.read_table(path, columns=[*KEY, "landmarks", "pose", "camera", "expression"])
    truth = truth.to_pandas().rename(columns={"landmarks": "true_landmarks"})
    truth["frame"] = truth["frame"].astype(rows["frame"].dtype)
    joined = rows.merge(truth, on=KEY, how="left", validate="one_to_one")
    if joined["expression"].isna().any():
        raise DataError(f"prepared rows without a row in {path}: wrong --raw folder?")
    return joined.sort_values(KEY, ignore_index=True), manifest


def scores(fit, rows: pd.DataFrame, moving: list[int]) -> dict[str, float]:
    """Correlations with the true f_exp, pose error and the fit's RMSE."""
    true = np.stack(rows["expression"].to_numpy())
    ok = np.isfinite(fit.expression).all(1)
    corr = []
    for j in moving:
        t, e = true[ok, j], fit.expression[ok, j]
        if t.std() == 0:
            continue
        corr.append(np.corrcoef(t, e)[0, 1] if e.std() > 0 else 0.0)
    pose = np.stack(rows["pose"].to_numpy())[:, :3]
    angle = np.rad2deg(np.abs(fit.pose[ok, :3] - pose[ok])).mean()
    return {
        "median_corr": float(np.median(corr)),
        "min_corr": float(np.min(corr)),
        "pose_deg": float(angle),
        "rmse_px": float(np.nanmean(fit.rmse)),
        "fitted": float(ok.mean()),
    }


def probe(expression: np.ndarray, rows: pd.DataFrame) -> float:
    """Mean F1 (%) over the folds of a per-AU logistic regression on the fitted f_exp."""
    labels = np.stack(rows["labels"].to_numpy()).astype(np.int64)
    folds = rows["fold"].to_numpy()
    x = np.nan_to_num(expression.astype(np.float32))
    return 100 * float(fold_average([fexp_probe_f1(x, labels, folds, k) for k in FOLDS]).mean())


def run_mode(model, mode: str, landmarks: np.ndarray, rows: pd.DataFrame, cams: np.ndarray):
    """Fits every row in `mode`, returns (FitResult, CPU seconds of the per-frame pass, CPU
    seconds of the subjects' shape passes). Subject mode is run as the preprocessing runs
    it: `estimate_shape` per subject, then `fit_with_shape` over the subject's frames."""
    if mode != "subject":
        start = time.process_time()
        fit = fit_frames(model, landmarks, cams, mode=mode)
        return fit, time.process_time() - start, 0.0
    reg_shape, reg_expression = FIT_PRIORS["subject"]
    parts, shape_cpu, frame_cpu = {}, 0.0, 0.0
    for subject, idx in rows.groupby("subject", sort=True).indices.items():
        start = time.process_time()
        est = estimate_shape(
            model, landmarks[idx], cams[idx], reg_shape=reg_shape, reg_expression=reg_expression
        )
        mid = time.process_time()
        parts[subject] = (
            idx,
            fit_with_shape(
                model, est.shape, landmarks[idx], cams[idx], reg_expression=est.reg_expression
            ),
        )
        shape_cpu += mid - start
        frame_cpu += time.process_time() - mid
    fit = gather_fits(list(parts.values()), len(rows))
    return fit, frame_cpu, shape_cpu


def landmark_ceiling(landmarks: np.ndarray, rows: pd.DataFrame) -> float:
    """The probe on the landmarks themselves, normalised for position and size and centred
    per subject: what a linear read-out of the landmarks can give without any 3DMM."""
    x = landmarks - landmarks.mean(1, keepdims=True)
    x = (x / np.sqrt((x**2).sum((1, 2)))[:, None, None]).reshape(len(x), -1)
    for idx in rows.groupby("subject").indices.values():
        x[idx] -= x[idx].mean(0)
    return probe(100 * x, rows)


def prior_grid(model, inputs: dict, rows: pd.DataFrame, cams: np.ndarray, moving) -> None:
    """Median correlation / probe F1 per input for a grid of each mode's prior weights:
    photo's fixed (f_s, f_exp) and subject's noise factors (EXPRESSION_PER_NOISE,
    SHAPE_PER_NOISE). The module's values are restored afterwards."""
    import glee.face.fitting as fitting

    saved = (dict(FIT_PRIORS), fitting.EXPRESSION_PER_NOISE, fitting.SHAPE_PER_NOISE)
    grids = [("photo", (s, e)) for e in (0.1, 1.0, 10.0) for s in (1.0, 100.0)]
    grids += [("subject", (e, s)) for e in (5.0, 20.0) for s in (1.0, 5.0)]
    print("\nprior grid (median corr / probe F1):")
    try:
        for mode, (a, b) in grids:
            if mode == "photo":
                FIT_PRIORS["photo"], label = (a, b), f"photo f_s {a:g}, f_exp {b:g}"
            else:
                fitting.EXPRESSION_PER_NOISE, fitting.SHAPE_PER_NOISE = a, b
                label = f"subject f_exp {a:g} sigma^2, f_s {b:g} sigma^2"
            cells = []
            for name, lms in inputs.items():
                fit = run_mode(model, mode, lms, rows, cams)[0]
                cells.append(
                    f"{name} {scores(fit, rows, moving)['median_corr']:.3f} / "
                    f"{probe(fit.expression, rows):.1f}"
                )
            print(f"  {label}: " + " | ".join(cells), flush=True)
    finally:
        FIT_PRIORS.clear()
        FIT_PRIORS.update(saved[0])
        fitting.EXPRESSION_PER_NOISE, fitting.SHAPE_PER_NOISE = saved[1], saved[2]


def main() -> None:
    root = Path(os.environ.get("GLEE_DATA", "data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prep", type=Path, default=root / "prep", help="preprocessed data root")
    ap.add_argument("--raw", type=Path, default=root / "raw", help="raw data root (truth)")
    ap.add_argument("--dataset", default="bp4d")
    ap.add_argument("--seed", type=int, default=0, help="of the landmark noise")
    ap.add_argument(
        "--grid",
        action="store_true",
        help="also print the prior grids the photo and subject modes' weights were chosen from",
    )
    args = ap.parse_args()
    try:
        rows, manifest = load(args.prep, args.raw, args.dataset)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    model = load_morphable_model(manifest["config"].get("model_path"))
    moving = [model.expression_index(n) for n in landmark_moving_expressions(model)]
    cams = np.stack(rows["camera"].to_numpy()).astype(np.float64)
    exact = np.stack(rows["true_landmarks"].to_numpy()).reshape(-1, 68, 2).astype(np.float64)
    detector = np.stack(rows["image_landmarks"].to_numpy()).reshape(-1, 68, 2)
    rng = np.random.default_rng(args.seed)
    inputs = {f"detector ({manifest['config']['landmarks']})": detector.astype(np.float64)}
    for sigma in NOISE_PX:
        inputs[f"exact + {sigma:g} px"] = exact + rng.normal(0, sigma, exact.shape)
    compile_kernels()
    print(
        f"{args.dataset}: {len(rows)} prepared frames of {rows['subject'].nunique()} subjects; "
        f"{len(moving)} landmark-moving blendshapes; true f_exp probe: "
        f"{probe(np.stack(rows['expression'].to_numpy()), rows):.1f} F1"
    )
    print("probe on the landmarks alone (subject-centred, no 3DMM): " + ", ".join(
        f"{name} {landmark_ceiling(lms, rows):.1f}" for name, lms in inputs.items()
    ))  # fmt: skip
    header = "| landmarks | mode | median corr | lowest corr | pose err (deg) | RMSE (px) "
    header += "| faces/CPU-s | shape pass CPU-s | probe F1 |"
    print("\n" + header + "\n|" + "---|" * 9)
    last = None
    for name, lms in inputs.items():
        for mode in FIT_MODES:
            fit, cpu, shape_cpu = run_mode(model, mode, lms, rows, cams)
            s = scores(fit, rows, moving)
            f1 = probe(fit.expression, rows)
            rate = len(rows) / max(cpu, 1e-9)
            print(
                f"| {name} | {mode} | {s['median_corr']:.3f} | {s['min_corr']:.3f} | "
                f"{s['pose_deg']:.2f} | {s['rmse_px']:.2f} | {rate:.0f} | {shape_cpu:.1f} | "
                f"{f1:.1f} |",
                flush=True,
            )
            if name.startswith("detector") and mode == DEFAULT_FIT_MODE:
                last = (s["median_corr"], f1, rate)
    if args.grid:
        prior_grid(model, inputs, rows, cams, moving)
    print(f"\ndefault mode: {DEFAULT_FIT_MODE}")
    print(f"median_corr={last[0]:.3f} probe_f1={last[1]:.1f} faces_per_cpu_s={last[2]:.0f}")


if __name__ == "__main__":
    main()
