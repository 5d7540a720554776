"""Predict's frames per second on a 640x360 clip, end to end and per stage.

The bench writes a clip (a real photograph's face, skimage's astronaut, moving across a
640x360 frame, MJPG) and a run folder holding a tiny GLEE-Net (random weights: speed does
not depend on them), then

  1. runs `glee_platform.predict.predict_files` on the clip (the default landmarks: auto)
     and times it end to end: decode, detect, landmarks, align, fit, model, CSV; with
     the default engine (auto: this process or Ray actors, whichever predict expects to
     finish first) and with Ray Data actors (engine ray), both with `--detect-every`
     (default: predict's, a full MTCNN detection every k-th frame and O-Net following the
     face between), and once detecting every frame in full (k = 1); prints how far the
     landmarks of the first run are from those of the last (px, over the 68 points of
     every frame), and times `jobs/predict.py` on the clip in a fresh process;
  2. times each stage alone in this process on the same frames, one CPU thread each:
     decode (glee.datasets.images.read_video_frames), detect (FramePredictor.find_faces
     on predict's chunks of 32 frames: MTCNN on key frames, O-Net between), landmarks
     (the backend auto picks), fit (the batched 3DMM fit), align + encode, model
     (GLEE-Net on the aligned faces), and prints each one's share of their sum.

The goal (the real-faces issue) is 25 frames/s end to end on this 2-core machine, as
OpenFace 2.0 runs in real time on a CPU. The last line:

    frames_per_s=<end to end, engine auto> stages=<stage>:<share>,...

python bench/predict_throughput.py                   # 240 frames
python bench/predict_throughput.py --frames 60       # a quick look
python bench/predict_throughput.py --detect-every 5  # another k against k = 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZE = (640, 360)
FPS = 30.0


def write_clip(path: Path, frames: int) -> Path:
    """The astronaut's face moving across a grey 640x360 frame, `frames` frames, MJPG."""
    from gpu_suite import astronaut_frame  # bench/: the same frames the GPU suite detects on

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for i in range(frames):
        frame = astronaut_frame(20 + int(300 * (0.5 + 0.5 * np.sin(i / 15))))
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_run(folder: Path) -> Path:
    """A finetune run folder (config.yaml, fold1's checkpoint) of a tiny GLEE-Net."""
    import torch

    from glee.model.glee_net import build_glee_net, checkpoint_state
    from glee_platform.config import load_config
    from glee_platform.train import model_config
    from glee_platform.train.checkpoints import checkpoint_name, save_state
    from glee_platform.train.results import write_config

    cfg = load_config("smoke", [f"resources.storage_path={folder}", "name=predict-bench"])
    torch.manual_seed(0)
    net = build_glee_net(model_config(cfg, 12))  # BP4D's 12 AUs
    ckpt = cfg.run_dir / "fold1" / checkpoint_name(0)
    ckpt.mkdir(parents=True)
    save_state(ckpt, {"model": checkpoint_state(net), "epoch": 0, "history": []})
    write_config(cfg)
    return cfg.run_dir


def stage_times(clip: Path, frames: int, run: Path, detect_every: int) -> dict[str, float]:
    """Seconds per stage on the clip's frames, each stage alone, in this process."""
    import torch

    from glee.datasets.images import read_video_frames
    from glee.face.alignment import align_face
    from glee.face.camera import Camera
    from glee.face.fitting import fit_landmarks
    from glee.face.landmarks import make_landmark_backend
    from glee.face.pipeline import PreprocessConfig, encode_image, load_morphable_model
    from glee.model.glee_net import build_glee_net
    from glee.model.inference import infer, load_model_weights
    from glee.prediction.predictor import FramePredictor, list_frames
    from glee_platform.predict import model_from_run
    from glee_platform.preprocess import resolve_landmarks

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    images = read_video_frames(clip, list(range(frames)))
    times["decode"] = time.perf_counter() - t0
    gcfg, ckpt, names = model_from_run(run)
    predictor = FramePredictor(
        gcfg, ckpt, names, landmarks="mtcnn5", device="cpu", detect_every=detect_every
    )
    listed = list_frames(clip)[:frames]
    predictor.find_faces(listed[:2], images[:2])  # warm-up
    t0 = time.perf_counter()
    found = []
    for start in range(0, frames, 32):  # predict's chunk of frames
        found += predictor.find_faces(listed[start : start + 32], images[start : start + 32])
    times["detect"] = time.perf_counter() - t0
    boxes = [(i, np.asarray(d[0].box, np.float32)) for i, d in enumerate(found) if d]
    backend = make_landmark_backend(resolve_landmarks("auto"), device="cpu")
    t0 = time.perf_counter()
    lms = [np.asarray(backend(images[i], ("clip", "", i + 1), box), np.float64) for i, box in boxes]
    times["landmarks"] = time.perf_counter() - t0
    model = load_morphable_model(None)
    cam = Camera.for_image(*SIZE)
    fit_landmarks(model, np.stack(lms[:2]), cam)  # compiled kernels load once
    t0 = time.perf_counter()
    fit = fit_landmarks(model, np.stack(lms), cam)
    times["fit"] = time.perf_counter() - t0
    cfg = PreprocessConfig()
    t0 = time.perf_counter()
    faces = []
    for (i, _), lm in zip(boxes, lms):
        aligned = align_face(images[i], lm, size=cfg.align_size)
        encode_image(aligned.image, cfg)
        faces.append(aligned.image)
    times["align"] = time.perf_counter() - t0
    from glee.model.config import GLEEConfig

    net = load_model_weights(build_glee_net(GLEEConfig.from_dict(gcfg)), ckpt)
    f_exp = fit.expression.astype(np.float32)
    t0 = time.perf_counter()
    infer(net, np.stack(faces), f_exp, device="cpu")
    times["model"] = time.perf_counter() - t0
    return times


def landmark_shift(mine: Path, full: Path) -> np.ndarray:
    """Per frame, the mean distance (px) of the 68 landmarks in CSV `mine` from those in
    CSV `full`, on the frames where both found the face (face_id 0 of the one-face clip)."""
    import pandas as pd

    a, b = (
        pd.read_csv(p).query("success == 1 and face_id == 0").set_index("frame")
        for p in (mine, full)
    )
    both = a.index.intersection(b.index)
    xy = [f"x_{k}" for k in range(68)], [f"y_{k}" for k in range(68)]
    dx = a.loc[both, xy[0]].to_numpy() - b.loc[both, xy[0]].to_numpy()
    dy = a.loc[both, xy[1]].to_numpy() - b.loc[both, xy[1]].to_numpy()
    return np.hypot(dx, dy).mean(axis=1)


def end_to_end(
    clip: Path, run: Path, out: Path, detect_every: int, engine: str
) -> tuple[float, object, str]:
    """(seconds, summary, engine that ran) of predict_files on the clip, after a warm-up
    call (imports, Ray's start for "ray"; each call loads its models again)."""
    from glee_platform.predict import predict_files

    kwargs = {"progress": False, "detect_every": detect_every, "engine": engine}
    predict_files([clip], run, out, **kwargs)  # warm
    t0 = time.perf_counter()
    summary = predict_files([clip], run, out, **kwargs)
    wall = time.perf_counter() - t0
    return wall, summary, json.loads((out / "predict.json").read_text())["engine"]


def cold_cli(clip: Path, run: Path, out: Path) -> float:
    """Seconds of `python jobs/predict.py clip --run run` in a fresh process: what a user
    waits for, imports and all."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "predict.py"), str(clip), "--run", str(run),
         "--out", str(out), "--no-progress"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    from glee.prediction.predictor import DETECT_EVERY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--detect-every", type=int, default=DETECT_EVERY)
    args = parser.parse_args(argv)
    k = args.detect_every
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        clip = write_clip(tmp_path / "clip.avi", args.frames)
        run = write_run(tmp_path / "runs")
        walls = {}
        for every, engine in dict.fromkeys(((k, "auto"), (k, "ray"), (1, "auto"))):
            out = tmp_path / f"out{every}{engine}"
            walls[every, engine], summary, ran = end_to_end(clip, run, out, every, engine)
            where = "in this process" if ran == "local" else "Ray Data actors on every CPU"
            print(
                f"end to end, engine {engine} ({ran}), detect every {every}: {summary.frames} "
                f"frames in {walls[every, engine]:.1f} s = "
                f"{summary.frames / walls[every, engine]:.1f} frames/s ({summary.frames_with_face} "
                f"with a face, landmarks {summary.landmarks}, {where})"
            )
        wall = walls[k, "auto"]
        cold = cold_cli(clip, run, tmp_path / "cli")
        print(
            f"jobs/predict.py in a fresh process (imports, engine auto): {cold:.1f} s = "
            f"{args.frames / cold:.1f} frames/s"
        )
        shift = landmark_shift(
            tmp_path / f"out{k}auto" / "clip.csv", tmp_path / "out1auto" / "clip.csv"
        )
        print(
            f"landmarks, detect every {k} against every frame: mean {shift.mean():.2f} px, "
            f"95th percentile {np.percentile(shift, 95):.2f} px, max {shift.max():.2f} px "
            f"over {len(shift)} frames (mean of the 68 points per frame)"
        )
        times = stage_times(clip, args.frames, run, k)
    total = sum(times.values())
    for name, seconds in times.items():
        print(
            f"  {name:<10} {seconds:7.2f} s  {args.frames / max(seconds, 1e-9):8.1f} frames/s  "
            f"{100 * seconds / total:5.1f}%"
        )
    print(f"  one CPU thread, stages in turn: {args.frames / total:.1f} frames/s")
    shares = ",".join(f"{k}:{v / total:.2f}" for k, v in times.items())
    print(f"frames_per_s={args.frames / wall:.1f} stages={shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
