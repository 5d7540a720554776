"""Per-frame AU prediction for images, image folders and videos, as OpenFace-style rows.

An input becomes frames (`list_frames`): an image is one frame, a folder its images in
name order, a video every frame. `FramePredictor` runs a batch of frames through the same
preprocessing as the datasets (`glee.face.pipeline.FacePreprocessor`: landmarks, JAA-Net
alignment, 3DMM fit), then a finetuned GLEE-Net (`glee.model.inference.infer`). Every face
of a frame gives a row (MTCNN finds them; `max_faces` keeps the largest); a frame with no
face, and a face that fails a stage, is a row with success 0 and an error record naming
the stage and the reason. Within a video, faces are followed from frame to frame between
full detections (`FramePredictor.find_faces`); `glee.prediction.tracking` gives them ids that
stay with each face.

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
from glee.face.detection import Detection, box_iou
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
DETECT_EVERY = 10  # video frames per full MTCNN detection; O-Net follows the faces between


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
    returns the OpenFace rows of every face of every frame (frame order) and the error
    records.

    `max_faces`: keep the N largest faces of a frame (None: all). `detect_every`: in a
    video, run MTCNN in full on every k-th frame and follow the faces between with O-Net
    alone (see `find_faces`); 1 detects every frame in full, as photos and folders are."""

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
        max_faces: int | None = None,
        detect_every: int = DETECT_EVERY,
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
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 (or None: all), got {max_faces}")
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.max_faces = max_faces
        self.detect_every = int(detect_every)
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

    def _detect(self, images: list[np.ndarray | str]) -> list[list[Detection]]:
        """Every MTCNN face of each decoded image, largest first (none for an undecoded one)."""
        ok = [i for i, im in enumerate(images) if not isinstance(im, str)]
        found = self.detector.detect_batch([images[i] for i in ok]) if ok else []
        faces: list[list[Detection]] = [[] for _ in images]
        for i, dets in zip(ok, found):
            faces[i] = self._keep(dets)
        return faces

    def _keep(self, dets: Sequence[Detection]) -> list[Detection]:
        """`dets` largest first, without a box that overlaps a larger one by IoU > 0.5 (two
        tracks on one face), cut to the `max_faces` largest."""
        kept: list[Detection] = []
        for d in sorted(dets, key=lambda d: -d.area):
            if not kept or box_iou(d.box, np.stack([k.box for k in kept])).max() <= 0.5:
                kept.append(d)
        return kept[: self.max_faces] if self.max_faces else kept

    def find_faces(
        self, frames: Sequence[Frame], images: list[np.ndarray | str]
    ) -> list[list[Detection]]:
        """The faces of each frame. Frames of a video that follow each other in `frames`
        are a run: its first frame and every `detect_every`-th are detected in full (one
        MTCNN batch); a frame between follows last frame's faces with MTCNN's O-Net alone
        (`FaceDetector.refine`), and is detected in full when that loses a face or when
        last frame had none, so only a face that joins others waits for the next key frame.
        Folders and photos are detected in full: their frames need not follow each other."""
        key, since = [], 0  # since: frames after the last key frame of this run
        for i, f in enumerate(frames):
            prev = frames[i - 1] if i else None
            follows = prev is not None and is_video(f) and prev.input == f.input
            since = since + 1 if follows and prev.frame + 1 == f.frame else 0
            key.append(since % self.detect_every == 0)
        keys = [i for i in range(len(frames)) if key[i]]
        detected = self._detect([images[i] for i in keys])
        faces: list[list[Detection]] = [[] for _ in frames]
        for i, dets in zip(keys, detected):
            faces[i] = dets
        for i in range(len(frames)):
            if key[i] or isinstance(images[i], str):
                continue
            prev = faces[i - 1]
            moved = self.detector.refine(images[i], [d.box for d in prev]) if prev else []
            if prev and all(d is not None for d in moved):
                faces[i] = self._keep(moved)
            else:  # lost a face, or none to follow: detect this frame in full
                faces[i] = self._detect([images[i]])[0]
        return faces

    @property
    def detector(self) -> Any:
        """MTCNN (glee.face.detection.FaceDetector), loaded on first use."""
        if self._detector is None:
            from glee.face.detection import FaceDetector

            self._detector = FaceDetector(device=self.device)
        return self._detector

    def predict(self, frames: Sequence[Frame]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(rows, errors): every face of every frame in order (a face that fails a stage and
        a frame with no face are rows with success 0, and an error record each). Rows carry
        `face_id` = the face's rank in its frame, largest first, and `_box`, the face box
        that `glee.prediction.tracking.assign_face_ids` turns into ids kept across frames."""
        keys = [(f.subject, f.frame) for f in frames]
        if len(set(keys)) != len(keys):
            raise ValueError("frames of one predict() call need distinct (subject, frame) keys")
        # one item per face of each frame; task = the face's rank keys the landmark backends
        faces: list[list[dict[str, Any]]] = [[] for _ in frames]
        failed: dict[tuple[int, int], dict[str, Any]] = {}  # (frame index, rank) -> error
        if self.landmarks == "provided":  # the table holds one face per frame
            faces = [[{**f.item(), "confidence": 1.0}] for f in frames]
        else:
            images = read_frames([f.image for f in frames])
            for i, dets in enumerate(self.find_faces(frames, images)):
                item = frames[i].item()
                if isinstance(images[i], str):
                    failed[(i, 0)] = error_row(item, "decode", images[i] or "empty reference")
                elif not dets:
                    failed[(i, 0)] = error_row(item, "detect", "no face detected")
                for rank, det in enumerate(dets):
                    face = {**item, "task": str(rank), "confidence": float(det.score)}
                    face["box"] = np.asarray(det.box, np.float32).tolist()
                    if self._five is not None:
                        self._five.remember(
                            (face["subject"], face["task"], face["frame"]), det.points5
                        )
                    faces[i].append(face)
        todo = [(i, r) for i, fs in enumerate(faces) for r in range(len(fs))]
        items = []
        for i, r in todo:
            item = {k: v for k, v in faces[i][r].items() if k != "confidence"}
            items.append({**item, "_index": i, "_rank": r})
        rows, errs = self.pre.process(items) if items else ([], [])
        by_key = {(e["subject"], e["task"], e["frame"]): e for e in errs}
        for i, r in todo:
            e = by_key.get((frames[i].subject, faces[i][r]["task"], frames[i].frame))
            if e is not None:
                failed[(i, r)] = e
        outputs: dict[tuple[int, int], tuple[Outputs, int]] = {}
        if rows:
            decoded = decode_images([g["image"] for g in rows])  # (n, 200, 200, 3)
            f_exp = np.asarray([g["expression"] for g in rows], np.float32)
            out = infer(self.net, decoded, f_exp, device=self.device)
            for j, g in enumerate(rows):
                outputs[(int(g["_index"]), int(g["_rank"]))] = (out, j)
        geometry = {(int(g["_index"]), int(g["_rank"])): g for g in rows}
        result, errors = [], []
        for i, f in enumerate(frames):
            for r in range(max(1, len(faces[i]))):
                face = faces[i][r] if faces[i] else None
                if (i, r) in outputs:
                    row = self._row(f, r, face, *outputs[(i, r)], geometry[(i, r)])
                else:
                    row = self._failed_row(f, r, face)
                    e = failed.get((i, r)) or error_row(f.item(), "predict", "no output")
                    errors.append(
                        {
                            "input": f.input,
                            "frame": f.frame,
                            "image": f.image,
                            "stage": e["stage"],
                            "reason": e["reason"],
                        }
                    )
                result.append(row)
        return result, errors

    def _row(
        self, f: Frame, rank: int, face: dict[str, Any], out: Outputs, j: int, g: dict[str, Any]
    ) -> dict[str, Any]:
        """The OpenFace row of a face that went through every stage."""
        aus = [openface_au(n) for n in self.au_names]
        lms = np.asarray(g["image_landmarks"], np.float64).reshape(68, 2)
        row = _base_row(f, rank, face, success=1)
        row.update(openface_pose(g["pose"]))
        row.update({f"x_{k}": round(float(v), 3) for k, v in enumerate(lms[:, 0])})
        row.update({f"y_{k}": round(float(v), 3) for k, v in enumerate(lms[:, 1])})
        row.update({f"{a}_c": int(c) for a, c in zip(aus, out.occurrences[j])})
        row.update({f"{a}_p": float(p) for a, p in zip(aus, out.probs[j])})
        row.update({c: round(float(v), 6) for c, v in zip(self.exp_columns, g["expression"])})
        row["fit_rmse"] = round(float(g["fit_rmse"]), 4)
        # for glee.prediction.shared_shape, on the driver (not written to the CSV)
        row["_camera"] = list(g["camera"])
        row["_e_exp"] = None if out.e_exp is None else out.e_exp[j].tolist()
        if row["_box"] is None:  # provided landmarks: the face is where its points are
            row["_box"] = [*lms.min(axis=0).tolist(), *lms.max(axis=0).tolist()]
        return row

    def _failed_row(self, f: Frame, rank: int, face: dict[str, Any] | None) -> dict[str, Any]:
        """OpenFace's row of a frame without a face, or of a face that failed a stage: zeros
        after `success`."""
        row = _base_row(f, rank, face, success=0)
        row.update({c: 0.0 for c in self.columns if c not in row})
        row.update({f"{openface_au(n)}_c": 0 for n in self.au_names})
        row["confidence"] = 0.0
        return row


def is_video(frame: Frame) -> bool:
    return Path(frame.input).suffix.lower() in VIDEO_SUFFIXES


def _base_row(f: Frame, rank: int, face: dict[str, Any] | None, success: int) -> dict[str, Any]:
    return {
        "frame": f.frame,
        "face_id": rank,
        "timestamp": round(f.timestamp, 6),
        "confidence": round(float(face["confidence"]), 4) if face else 0.0,
        "success": success,
        "_box": face.get("box") if face else None,
    }


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
    "is_video",
    "list_frames",
    "openface_au",
    "openface_pose",
]
