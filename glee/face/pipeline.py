"""Turn frames into training rows: decode -> landmarks -> align -> fit the 3DMM.

Pure NumPy / OpenCV / PyTorch (no Ray), so a notebook can preprocess a handful of frames;
`glee_platform.preprocess` runs the same `FacePreprocessor` on shards across a Ray cluster.

Every input ends either as a face row (DESIGN.md, "Preprocessed data: Parquet") or as an
error row naming the input, the stage and the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from glee.face.alignment import align_face
from glee.face.camera import Camera
from glee.face.fitting import DEFAULT_FIT_MODE, FIT_MODES, fit_frames
from glee.face.landmarks import BACKENDS, make_landmark_backend
from glee.face.morphable_model import MorphableModel

STAGES = ("read", "decode", "landmarks", "align", "fit")
LANDMARK_BACKENDS = BACKENDS  # provided, fan, dlib, auto
IMAGE_FORMATS = ("jpeg", "png")


@dataclass(frozen=True)
class PreprocessConfig:
    landmarks: str = "provided"  # a backend of glee.face.landmarks
    align_size: int = 200  # JAA-Net alignment crop (Sec. IV-A)
    image_format: str = "jpeg"
    jpeg_quality: int = 95
    max_fit_rmse: float = 8.0  # px in the input image; a fit worse than this has diverged
    model_path: str | None = None  # MorphableModel .npz; None = the built-in default model
    device: str | None = None  # None = cuda if available, else cpu (fan backend only)
    # glee.face.fitting.FIT_MODES: "subject" shares one f_s per subject (a second and third
    # pass over the written shards, glee_platform.preprocess), "frame" is Sec. III-C as
    # the paper states it, "photo" fits each image alone with the single-image priors.
    fit_mode: str = DEFAULT_FIT_MODE

    @property
    def first_fit_mode(self) -> str:
        """The mode `FacePreprocessor.process` fits each frame in: a subject's frames are
        fitted one by one (single-image priors) until the subject's shape is known."""
        return "photo" if self.fit_mode == "subject" else self.fit_mode

    def __post_init__(self) -> None:
        if self.landmarks not in LANDMARK_BACKENDS:
            raise ValueError(
                f"landmarks must be one of {list(LANDMARK_BACKENDS)}, got {self.landmarks!r}"
            )
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(
                f"image_format must be one of {list(IMAGE_FORMATS)}, got {self.image_format!r}"
            )
        if not 32 <= self.align_size <= 1024:
            raise ValueError(f"align_size must be in [32, 1024], got {self.align_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.max_fit_rmse <= 0:
            raise ValueError(f"max_fit_rmse must be positive, got {self.max_fit_rmse}")
        if self.fit_mode not in FIT_MODES:
            raise ValueError(f"fit_mode must be one of {list(FIT_MODES)}, got {self.fit_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_morphable_model(path: str | None) -> MorphableModel:
    if path is None:
        from glee.face.default_model import default_model

        return default_model()
    return MorphableModel.load(path)


def error_row(item: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    """One row of errors.parquet."""
    return {
        "dataset": str(item.get("dataset", "")),
        "subject": str(item.get("subject", "")),
        "task": str(item.get("task", "")),
        "frame": int(item.get("frame", 0)),
        "input": str(item.get("image", "")),
        "stage": stage,
        "reason": reason,
    }


def _split_video_ref(ref: str) -> tuple[str, int] | None:
    path, sep, idx = ref.rpartition("#")
    if sep and idx.isdigit() and Path(path).suffix.lower() in {".avi", ".mp4", ".mov", ".mkv"}:
        return path, int(idx)
    return None


def read_frames(refs: list[str]) -> list[np.ndarray | str]:
    """Decode image references (glee.datasets.records); a string in the output is the reason
    the reference could not be decoded. Frames of one video are read in one sequential pass.
    """
    from glee.datasets.images import load_image, read_video_frames

    out: list[np.ndarray | str] = [""] * len(refs)
    videos: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, ref in enumerate(refs):
        video = _split_video_ref(ref)
        if video is not None:
            videos[video[0]].append((video[1], i))
            continue
        try:
            out[i] = load_image(ref)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
            out[i] = f"{type(exc).__name__}: {exc}"
    for path, wanted in videos.items():
        frames = read_video_frames(path, [index for index, _ in wanted])
        for (_, i), frame in zip(wanted, frames):
            out[i] = frame if isinstance(frame, np.ndarray) else f"{type(frame).__name__}: {frame}"
    return out


def encode_image(image: np.ndarray, cfg: PreprocessConfig) -> bytes:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if cfg.image_format == "png":
        ok, buf = cv2.imencode(".png", bgr)
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode the aligned face")
    return buf.tobytes()


class FacePreprocessor:
    """Loads the landmark backend (and its detector) and the morphable model once, then
    processes batches of items. An item is a dict with at least `image` (a reference),
    `subject`, `task`, `frame`; optional `box` (x0, y0, x1, y1) in pixels restricts where the
    face is (FEC boxes). Other keys pass through to the output row unchanged.

    `backend`: a landmark backend object to use instead of building `cfg.landmarks`' own
    (prediction passes a `provided` table of its own, or MTCNN's five points).
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        dataset_root: str | os.PathLike | None = None,
        backend: Any | None = None,
    ):
        self.cfg = cfg
        self.backend = (
            backend
            if backend is not None
            else make_landmark_backend(cfg.landmarks, dataset_root=dataset_root, device=cfg.device)
        )
        self.model = load_morphable_model(cfg.model_path)
        self._detector = None

    def _face_box(self, image: np.ndarray, item: dict[str, Any]) -> np.ndarray | None:
        """The region the landmark backend looks in: the item's box, else MTCNN's best face
        (`provided` landmarks carry their own face and need none; `dlib` maps MTCNN's box
        to the box its predictor was trained on)."""
        if item.get("box") is not None:
            return np.asarray(item["box"], np.float32)
        if item.get("box_norm") is not None:  # FEC: (left col, right col, top row, bottom row)
            left, right, top, bottom = item["box_norm"]
            h, w = image.shape[:2]
            given = np.array([left * w, top * h, right * w, bottom * h], np.float32)
            # The landmark backends expect MTCNN's box (dlib maps it to its own): FEC's
            # annotators drew theirs otherwise (dlib in the CSV box measured 0.19 of the
            # inter-ocular distance from the truth, in MTCNN's 0.08), so detect inside it
            # and keep the CSV box only where MTCNN finds nothing there.
            if self.cfg.landmarks == "provided":
                return given
            return self._detect_within(image, given)
        if self.cfg.landmarks == "provided":
            return None
        dets = self._detector_once().detect(image)
        return None if not dets else np.asarray(dets[0].box, np.float32)

    def _detector_once(self) -> Any:
        if self._detector is None:
            from glee.face.detection import FaceDetector

            self._detector = FaceDetector(device=self.cfg.device)
        return self._detector

    def _detect_within(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """MTCNN's largest face inside `box` grown by a quarter on each side, in image
        pixels; `box` itself when it finds none."""
        h, w = image.shape[:2]
        pad = 0.25 * np.array([box[2] - box[0], box[3] - box[1]])
        x0, y0 = np.maximum(np.floor(box[:2] - pad), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(box[2:] + pad), [w, h]).astype(int)
        if x1 - x0 < 16 or y1 - y0 < 16:
            return box
        dets = self._detector_once().detect(np.ascontiguousarray(image[y0:y1, x0:x1]))
        if not dets:
            return box
        best = max(dets, key=lambda d: d.area)
        return np.asarray(best.box, np.float32) + np.array([x0, y0, x0, y0], np.float32)

    def process(self, items: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
        """Returns (face rows, error rows); every item lands in exactly one of them."""
        errors: list[dict] = []
        images = read_frames([str(it["image"]) for it in items])
        staged: list[tuple[dict, np.ndarray, np.ndarray]] = []  # item, image, landmarks (68, 2)
        for item, image in zip(items, images):
            if isinstance(image, str):
                errors.append(error_row(item, "decode", image or "empty image reference"))
                continue
            key = (str(item["subject"]), str(item["task"]), int(item["frame"]))
            try:
                box = self._face_box(image, item)
                if box is None and self.cfg.landmarks != "provided":
                    errors.append(error_row(item, "landmarks", "no face detected"))
                    continue
                lms = self.backend(image, key, box)
            except Exception as exc:  # noqa: BLE001
                errors.append(error_row(item, "landmarks", f"{type(exc).__name__}: {exc}"))
                continue
            if lms is None:
                reason = (
                    "no face detected"
                    if self.cfg.landmarks != "provided"
                    else (f"no landmarks for {key} in the provided landmarks file")
                )
                errors.append(error_row(item, "landmarks", reason))
                continue
            lms = np.asarray(lms, np.float64)
            if lms.shape != (68, 2) or not np.isfinite(lms).all():
                errors.append(error_row(item, "landmarks", "landmarks are NaN or not 68x2"))
                continue
            staged.append((item, image, lms))
        if not staged:
            return [], errors

        # Sec. III-C: one batched Levenberg-Marquardt fit over every face of the batch.
        cams = [Camera.for_image(img.shape[1], img.shape[0]) for _, img, _ in staged]
        lms_all = np.stack([lm for _, _, lm in staged])
        fit = fit_frames(self.model, lms_all, cams, mode=self.cfg.first_fit_mode)
        rows: list[dict] = []
        for j, (item, image, lms) in enumerate(staged):
            rmse = float(fit.rmse[j])
            if not np.isfinite(rmse) or rmse > self.cfg.max_fit_rmse:
                errors.append(
                    error_row(
                        item,
                        "fit",
                        f"fit diverged: landmark RMSE {rmse:.2f} px > {self.cfg.max_fit_rmse} px",
                    )
                )
                continue
            try:
                aligned = align_face(image, lms, size=self.cfg.align_size)
                encoded = encode_image(aligned.image, self.cfg)
            except Exception as exc:  # noqa: BLE001
                errors.append(error_row(item, "align", f"{type(exc).__name__}: {exc}"))
                continue
            row = {k: v for k, v in item.items() if k not in ("image", "box", "box_norm")}
            row.update(
                image=encoded,
                landmarks=np.asarray(aligned.landmarks, np.float32).reshape(-1).tolist(),
                image_landmarks=lms.astype(np.float32).reshape(-1).tolist(),
                camera=[cams[j].focal, cams[j].cx, cams[j].cy],
                pose=fit.pose[j].astype(np.float32).tolist(),
                shape=fit.shape[j].astype(np.float32).tolist(),
                expression=fit.expression[j].astype(np.float32).tolist(),
                fit_rmse=rmse,
            )
            rows.append(row)
        return rows, errors
