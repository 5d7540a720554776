"""Per-frame AU prediction for images, image folders and videos, as OpenFace-style rows.

An input becomes frames (`list_frames`): an image is one frame, a folder its images in
name order, a video every frame. `FramePredictor` runs a batch of frames through the same
preprocessing as the datasets (`glee.face.pipeline.FacePreprocessor`: landmarks, JAA-Net
alignment, 3DMM fit), then a finetuned GLEE-Net (`glee.model.inference.infer`). Every frame
gives exactly one row; a frame with no face (or one that fails a stage) is a row with
success 0 and an error record naming the stage and the reason.

Rows follow OpenFace's CSV: frame (1-based), face_id, timestamp (s), confidence, success,
pose_Tx/Ty/Tz (mm) and pose_Rx/Ry/Rz (radians, R = Rx Ry Rz) of the fitted head, x_0..x_67
and y_0..y_67 (the 68 landmarks in image pixels), then AUxx_c (occurrence, p > 0.5,
Sec. IV-A) for every AU, AUxx_p (probability; where OpenFace writes intensities AUxx_r,
GLEE-Net has probabilities), exp_<blendshape> (the fitted 3DMM expression, f_exp of
Sec. III-C) and fit_rmse (px). Failed frames carry 0 in every column after success, as
OpenFace does; filter on `success`.

Landmarks (where the 68 points come from):
    fan       MTCNN face box, then face-alignment's 2D FAN (weights download on first use)
    dlib      MTCNN face box mapped to dlib's, then dlib's 68-point predictor (ships in
              face-recognition-models: offline; iBUG 300-W terms, no commercial use)
    mtcnn5    by name only: MTCNN's five points moved onto a neutral face
              (glee.face.five_point); aligns on the eyes, but f_exp carries no expression
    provided  a landmarks table (subject, task, frame, x0..x67, y0..y67) keyed by the
              input's stem, task "" and the 1-based frame number
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from glee.datasets.images import VIDEO_SUFFIXES, decode_images, video_ref
from glee.face.five_point import FivePointLandmarks
from glee.face.landmarks import make_landmark_backend
from glee.face.pipeline import FacePreprocessor, PreprocessConfig, error_row, read_frames
from glee.model.config import GLEEConfig
from glee.model.glee_net import build_glee_net
from glee.model.inference import Outputs, infer, load_model_weights

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LANDMARK_SOURCES = ("fan", "dlib", "mtcnn5", "provided")
BASE_COLUMNS = ("frame", "face_id", "timestamp", "confidence", "success")
DEFAULT_FPS = 30.0  # OpenFace's frame rate for image sequences


class PredictInputError(ValueError):
    """An input cannot be read as images or a video; the message says which and why."""


def openface_au(name: str) -> str:
    """'AU1' -> 'AU01' (OpenFace's two-digit AU names)."""
    m = re.fullmatch(r"AU(\d+)", name)
    if not m:
        raise ValueError(f"AU names look like 'AU12', got {name!r}")
    return f"AU{int(m.group(1)):02d}"


POSE_COLUMNS = ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz")
LANDMARK_COLUMNS = (*(f"x_{i}" for i in range(68)), *(f"y_{i}" for i in range(68)))


def csv_columns(
    au_names: Sequence[str], expression_names: Sequence[str] | None = None
) -> list[str]:
    """OpenFace's columns: frame .. success, head pose, the 68 landmarks in image pixels,
    AUxx_c and AUxx_p per AU; then the fitted 3DMM expression, one exp_<blendshape> column
    each (default: the built-in face's 51), and the fit's landmark RMSE (px)."""
    if expression_names is None:
        from glee.face.default_model import default_model

        expression_names = default_model().expression_names
    aus = [openface_au(n) for n in au_names]
    return [
        *BASE_COLUMNS,
        *POSE_COLUMNS,
        *LANDMARK_COLUMNS,
        *(f"{a}_c" for a in aus),
        *(f"{a}_p" for a in aus),
        *(f"exp_{n}" for n in expression_names),
        "fit_rmse",
    ]


def openface_pose(pose: Sequence[float]) -> dict[str, float]:
    """OpenFace's pose columns from a fitted pose (yaw, pitch, roll, tx, ty, tz; camera.py):
    translation in mm in the camera frame (x right, y down, z away from the camera), and
    the rotation as angles in radians about x, y, z with R = Rx @ Ry @ Rz, the order
    OpenFace writes (our fit composes Rz(roll) @ Ry(yaw) @ Rx(pitch); the matrix is the same)."""
    from glee.face.camera import rotation_matrix

    yaw, pitch, roll, tx, ty, tz = (float(v) for v in pose)
    r = rotation_matrix(np.float64(yaw), np.float64(pitch), np.float64(roll))
    ry = float(np.arcsin(np.clip(r[0, 2], -1.0, 1.0)))
    rx = float(np.arctan2(-r[1, 2], r[2, 2]))
    rz = float(np.arctan2(-r[0, 1], r[0, 0]))
    values = (tx, ty, tz, rx, ry, rz)
    return {c: round(v, 6) for c, v in zip(POSE_COLUMNS, values)}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Frame:
    """One frame of one input: `image` is a reference glee.face.pipeline can decode."""

    input: str  # the file or folder the user named
    subject: str  # the input's stem: key of provided landmarks and name of its CSV
    frame: int  # 1-based, OpenFace's numbering
    timestamp: float  # seconds
    image: str

    def item(self) -> dict[str, Any]:
        """The FacePreprocessor item of this frame."""
        return {"image": self.image, "subject": self.subject, "task": "", "frame": self.frame}


def _video_fps(path: Path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS)) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS


def _count_video_frames(path: Path) -> int:
    """Frames of a video, counted by decoding (headers of some containers are wrong)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise PredictInputError(f"{path}: OpenCV cannot open this video")
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise PredictInputError(f"{path}: the video has no decodable frame")
    return n


def list_frames(path: str | os.PathLike) -> list[Frame]:
    """The frames of an image file, a folder of images (name order) or a video."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PredictInputError(f"{p}: no such file or folder")
    p = p.resolve()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PredictInputError(
                f"{p}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        return [Frame(str(p), p.name, i + 1, i / DEFAULT_FPS, str(f)) for i, f in enumerate(files)]
    suffix = p.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        fps = _video_fps(p)
        n = _count_video_frames(p)
        return [Frame(str(p), p.stem, i + 1, i / fps, video_ref(p, i)) for i in range(n)]
    if suffix in IMAGE_SUFFIXES:
        return [Frame(str(p), p.stem, 1, 0.0, str(p))]
    raise PredictInputError(
        f"{p}: not an image ({', '.join(IMAGE_SUFFIXES)}), a video "
        f"({', '.join(VIDEO_SUFFIXES)}) or a folder of images"
    )


# --------------------------------------------------------------------------- predictor


class FramePredictor:
    """Loads the landmarks, detector, morphable model and GLEE-Net once; `predict(frames)`
    returns one OpenFace row per frame (same order) and the error records."""

    def __init__(
        self,
        model: dict[str, Any] | GLEEConfig,
        checkpoint: str | os.PathLike,
        au_names: Sequence[str],
        *,
        landmarks: str = "fan",
        landmarks_file: str | os.PathLike | None = None,
        preprocess: PreprocessConfig | None = None,
        device: str | None = None,
    ) -> None:
        if landmarks not in LANDMARK_SOURCES:
            raise ValueError(
                f"landmarks must be one of {list(LANDMARK_SOURCES)}, got {landmarks!r}"
            )
        gcfg = model if isinstance(model, GLEEConfig) else GLEEConfig.from_dict(model)
        if gcfg.num_aus != len(au_names):
            raise ValueError(
                f"the model predicts {gcfg.num_aus} AUs but {len(au_names)} names given"
            )
        self.au_names = list(au_names)
        self.landmarks = landmarks
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net = load_model_weights(build_glee_net(gcfg), checkpoint).to(self.device)
        base = preprocess or PreprocessConfig()
        if landmarks == "provided":
            if landmarks_file is None:
                raise ValueError("landmarks 'provided' needs a landmarks table (landmarks_file)")
            cfg = replace(base, landmarks="provided", device=self.device)
            self.pre = FacePreprocessor(
                cfg, backend=make_landmark_backend("provided", dataset_root=landmarks_file)
            )
            self._five = None
        else:
            cfg = replace(base, landmarks="fan", device=self.device)
            if landmarks in ("fan", "dlib"):
                backend = make_landmark_backend(landmarks, device=self.device)
                self._five = None
            else:  # asked for by name only: five points carry no expression
                backend = self._five = FivePointLandmarks()
            # every face box comes in the items: the preprocessor's detector is never used
            self.pre = FacePreprocessor(cfg, backend=backend)
        self.exp_columns = [f"exp_{n}" for n in self.pre.model.expression_names]
        self.columns = csv_columns(self.au_names, self.pre.model.expression_names)
        self._detector = None

    def _detect(self, images: list[np.ndarray | str]) -> list[Any]:
        """The highest-scoring MTCNN face of each decoded image (None: no face / no image)."""
        if self._detector is None:
            from glee.face.detection import FaceDetector

            self._detector = FaceDetector(device=self.device)
        ok = [i for i, im in enumerate(images) if not isinstance(im, str)]
        found = self._detector.detect_batch([images[i] for i in ok]) if ok else []
        best: list[Any] = [None] * len(images)
        for i, dets in zip(ok, found):
            best[i] = dets[0] if dets else None
        return best

    def predict(self, frames: Sequence[Frame]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(rows, errors): one row per frame in order; an error record per failed frame."""
        items = [f.item() for f in frames]
        keys = [(it["subject"], it["frame"]) for it in items]
        if len(set(keys)) != len(keys):
            raise ValueError("frames of one predict() call need distinct (subject, frame) keys")
        confidence = [1.0] * len(frames)
        errors: list[dict[str, Any]] = []
        failed: dict[int, dict[str, Any]] = {}
        if self.landmarks != "provided":
            images = read_frames([it["image"] for it in items])
            for i, det in enumerate(self._detect(images)):
                if isinstance(images[i], str):
                    failed[i] = error_row(items[i], "decode", images[i] or "empty reference")
                elif det is None:
                    failed[i] = error_row(items[i], "detect", "no face detected")
                else:
                    items[i]["box"] = np.asarray(det.box, np.float32).tolist()
                    confidence[i] = float(det.score)
                    if self._five is not None:
                        self._five.remember(
                            (items[i]["subject"], "", items[i]["frame"]), det.points5
                        )
        todo = [i for i in range(len(items)) if i not in failed]
        for i in todo:
            items[i]["_index"] = i
        rows, errs = self.pre.process([items[i] for i in todo]) if todo else ([], [])
        by_key = {(e["subject"], e["frame"]): e for e in errs}
        for i in todo:
            e = by_key.get((items[i]["subject"], items[i]["frame"]))
            if e is not None:
                failed[i] = e
        outputs: dict[int, tuple[Outputs, int]] = {}
        if rows:
            faces = decode_images([r["image"] for r in rows])  # (n, 200, 200, 3)
            f_exp = np.asarray([r["expression"] for r in rows], np.float32)
            out = infer(self.net, faces, f_exp, device=self.device)
            for j, r in enumerate(rows):
                outputs[int(r["_index"])] = (out, j)
        geometry = {int(r["_index"]): r for r in rows}
        result = []
        for i, f in enumerate(frames):
            row: dict[str, Any] = {
                "frame": f.frame,
                "face_id": 0,
                "timestamp": round(f.timestamp, 6),
                "confidence": 0.0,
                "success": 0,
            }
            aus = [openface_au(n) for n in self.au_names]
            if i in outputs:
                out, j = outputs[i]
                probs, occ = out.probs[j], out.occurrences[j]
                row.update(confidence=round(confidence[i], 4), success=1)
                row.update({f"{a}_c": int(c) for a, c in zip(aus, occ)})
                row.update({f"{a}_p": float(p) for a, p in zip(aus, probs)})
                g = geometry[i]
                lms = np.asarray(g["image_landmarks"], np.float64).reshape(68, 2)
                row.update(openface_pose(g["pose"]))
                row.update({f"x_{k}": round(float(v), 3) for k, v in enumerate(lms[:, 0])})
                row.update({f"y_{k}": round(float(v), 3) for k, v in enumerate(lms[:, 1])})
                row.update(
                    {c: round(float(v), 6) for c, v in zip(self.exp_columns, g["expression"])}
                )
                row["fit_rmse"] = round(float(g["fit_rmse"]), 4)
            else:
                e = failed.get(i) or error_row(items[i], "predict", "no output for this frame")
                errors.append(
                    {
                        "input": f.input,
                        "frame": f.frame,
                        "image": f.image,
                        "stage": e["stage"],
                        "reason": e["reason"],
                    }
                )
                # OpenFace writes zeros for a frame without a face
                row.update({c: 0.0 for c in self.columns if c not in row})
                row.update({f"{a}_c": 0 for a in aus})
            result.append(row)
        return result, errors


__all__ = [
    "BASE_COLUMNS",
    "IMAGE_SUFFIXES",
    "LANDMARK_COLUMNS",
    "LANDMARK_SOURCES",
    "POSE_COLUMNS",
    "Frame",
    "FramePredictor",
    "PredictInputError",
    "csv_columns",
    "list_frames",
    "openface_au",
    "openface_pose",
]
