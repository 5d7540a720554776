"""Turn frames into training rows: decode -> landmarks -> align -> fit the 3DMM.

Pure NumPy / OpenCV / PyTorch (no Ray), so a notebook can preprocess a handful of frames;
`glee_platform.preprocess` runs the same `FacePreprocessor` on shards across a Ray cluster.

Every input ends either as a face row (DESIGN.md, "Preprocessed data: Parquet") or as an
error row naming the input, the stage and the reason. Nothing is dropped silently.
"""

from __future__ import annotations

import io
import json
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


DETECT_CHUNK = 32  # frames per batched MTCNN call (a BP4D frame is 1040 x 1392 on the card)


@dataclass
class StagedFaces:
    """What `FacePreprocessor.find_landmarks` hands to `fit_and_align`: the items whose 68
    landmarks were found, each face already warped to its aligned crop (the one step after
    the landmarks that needs the whole frame, so the frames themselves go no further), and
    the error rows so far. NumPy arrays and JSON-able Python only: `to_bytes` carries it
    from a GPU actor to a CPU actor, where a CUDA tensor would not deserialise."""

    items: list[dict[str, Any]]  # the items whose landmarks were found
    landmarks: np.ndarray  # (n, 68, 2) float64, input-image pixels
    sizes: np.ndarray  # (n, 2) int64: width, height of each input image (the fit's camera)
    aligned: np.ndarray  # (n, size, size, 3) uint8 aligned faces; zeros where alignment failed
    aligned_landmarks: np.ndarray  # (n, 68, 2) float64, in the aligned face
    align_errors: list[str]  # per face: "" or why alignment failed
    errors: list[dict[str, Any]]  # error rows of the items that failed before the fit

    def to_bytes(self) -> bytes:
        """An .npz of the arrays plus the items and errors as JSON (no pickle)."""
        meta = json.dumps(
            {"items": self.items, "align_errors": self.align_errors, "errors": self.errors}
        )
        buf = io.BytesIO()
        np.savez(
            buf,
            meta=np.frombuffer(meta.encode(), np.uint8),
            landmarks=np.asarray(self.landmarks, np.float64),
            sizes=np.asarray(self.sizes, np.int64),
            aligned=np.asarray(self.aligned, np.uint8),
            aligned_landmarks=np.asarray(self.aligned_landmarks, np.float64),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> StagedFaces:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(
                items=meta["items"],
                landmarks=z["landmarks"],
                sizes=z["sizes"],
                aligned=z["aligned"],
                aligned_landmarks=z["aligned_landmarks"],
                align_errors=meta["align_errors"],
                errors=meta["errors"],
            )


class FacePreprocessor:
    """Loads the landmark backend (and its detector) and the morphable model once, then
    processes batches of items. An item is a dict with at least `image` (a reference),
    `subject`, `task`, `frame`; optional `box` (x0, y0, x1, y1) in pixels restricts where the
    face is (FEC boxes). Other keys pass through to the output row unchanged.

    `process(items)` is `fit_and_align(find_landmarks(items))`: decode, detection,
    landmarks and the warp to the aligned crop, then one batched 3DMM fit and the encoded
    rows. glee_platform.preprocess runs the halves in one actor, or the first on GPU actors
    and the second on CPU actors.

    `backend`: a landmark backend object to use instead of building `cfg.landmarks`' own
    (prediction passes a `provided` table of its own, or MTCNN's five points).
    `batch_detection`: the frames of a batch that need MTCNN's full detection go through it
    in one call per DETECT_CHUNK frames of a size (`FaceDetector.detect_batch`) rather than
    one by one; None: batched where MTCNN runs on a GPU (on a CPU bench/gpu_suite.py
    measured batches slower: 12.4 frames/s against 15.4, docs/BENCHMARKS.md).
    `fit_only`: build no landmark backend or detector; the object runs `fit_and_align`
    only (the CPU stage of the two-stage pipeline).
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        dataset_root: str | os.PathLike | None = None,
        backend: Any | None = None,
        *,
        batch_detection: bool | None = None,
        fit_only: bool = False,
    ):
        self.cfg = cfg
        self.fit_only = fit_only
        self.backend = (
            backend
            if backend is not None or fit_only
            else make_landmark_backend(cfg.landmarks, dataset_root=dataset_root, device=cfg.device)
        )
        self.model = load_morphable_model(cfg.model_path)
        self.batch_detection = batch_detection
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
        return _best_box(self._detector_once().detect(image))

    def _needs_detection(self, item: dict[str, Any]) -> bool:
        """Whether the item's face comes from MTCNN's full detection of its frame."""
        given = item.get("box") is not None or item.get("box_norm") is not None
        return not given and self.cfg.landmarks != "provided"

    def _face_boxes(
        self, images: list[np.ndarray | str], items: list[dict[str, Any]]
    ) -> list[np.ndarray | str | None]:
        """`_face_box` of every decoded item (None: no face; a string: why it failed). The
        frames that need MTCNN's full detection go through it batched where
        `batch_detection` says so; FEC's look inside a box stays one crop at a time."""
        out: list[np.ndarray | str | None] = [None] * len(items)
        full = []
        for i, (image, item) in enumerate(zip(images, items)):
            if isinstance(image, str):
                continue
            if self._needs_detection(item):
                full.append(i)
                continue
            try:
                out[i] = self._face_box(image, item)
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
                out[i] = f"{type(exc).__name__}: {exc}"
        if not full:
            return out
        detector = self._detector_once()
        batched = self.batch_detection
        if batched is None:
            batched = str(detector.device).startswith("cuda")
        if batched:
            try:
                for start in range(0, len(full), DETECT_CHUNK):
                    chunk = full[start : start + DETECT_CHUNK]
                    for i, dets in zip(chunk, detector.detect_batch([images[i] for i in chunk])):
                        out[i] = _best_box(dets)
                return out
            except Exception:  # noqa: BLE001 - one frame at a time below names the bad one
                pass
        for i in full:
            try:
                out[i] = _best_box(detector.detect(images[i]))
            except Exception as exc:  # noqa: BLE001
                out[i] = f"{type(exc).__name__}: {exc}"
        return out

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

    def _points(
        self,
        items: list[dict[str, Any]],
        images: list[np.ndarray | str],
        boxes: list[np.ndarray | str | None],
        faces: list[int],
    ) -> list[np.ndarray | str | None]:
        """The landmark backend on the items `faces` index: its (68, 2) points, None (no
        face), or why it failed. A backend with `batch` (FAN) takes all of them in one call."""
        batch = getattr(self.backend, "batch", None)
        if batch is not None and len(faces) > 1:
            try:
                return list(batch([(images[i], boxes[i]) for i in faces]))
            except Exception:  # noqa: BLE001 - one face at a time below names the bad one
                pass
        out: list[np.ndarray | str | None] = []
        for i in faces:
            item = items[i]
            key = (str(item["subject"]), str(item["task"]), int(item["frame"]))
            try:
                out.append(self.backend(images[i], key, boxes[i]))
            except Exception as exc:  # noqa: BLE001
                out.append(f"{type(exc).__name__}: {exc}")
        return out

    def find_landmarks(self, items: list[dict[str, Any]]) -> StagedFaces:
        """Decode, find each face (its box, else MTCNN), place its 68 landmarks and warp it
        to the aligned crop: every step that needs the whole frame (the networks' part, on a
        GPU where there is one). Items that fail here become error rows (stages decode and
        landmarks) in item order."""
        if self.fit_only:
            raise RuntimeError("this FacePreprocessor was built fit_only: it finds no landmarks")
        images = read_frames([str(it["image"]) for it in items])
        boxes = self._face_boxes(images, items)
        failed: dict[int, dict] = {}
        faces = []
        for i, (item, image) in enumerate(zip(items, images)):
            if isinstance(image, str):
                failed[i] = error_row(item, "decode", image or "empty image reference")
            elif isinstance(boxes[i], str):
                failed[i] = error_row(item, "landmarks", boxes[i])
            elif boxes[i] is None and self.cfg.landmarks != "provided":
                failed[i] = error_row(item, "landmarks", "no face detected")
            else:
                faces.append(i)
        size = self.cfg.align_size
        kept, lms_kept, sizes, aligned, aligned_lms, align_errors = [], [], [], [], [], []
        for i, lms in zip(faces, self._points(items, images, boxes, faces)):
            item, image = items[i], images[i]
            if isinstance(lms, str):
                failed[i] = error_row(item, "landmarks", lms)
                continue
            if lms is None:
                key = (str(item["subject"]), str(item["task"]), int(item["frame"]))
                reason = (
                    "no face detected"
                    if self.cfg.landmarks != "provided"
                    else f"no landmarks for {key} in the provided landmarks file"
                )
                failed[i] = error_row(item, "landmarks", reason)
                continue
            lms = np.asarray(lms, np.float64)
            if lms.shape != (68, 2) or not np.isfinite(lms).all():
                failed[i] = error_row(item, "landmarks", "landmarks are NaN or not 68x2")
                continue
            try:  # JAA-Net alignment (DESIGN.md, "Alignment")
                face = align_face(image, lms, size=size)
                aligned.append(face.image)
                aligned_lms.append(np.asarray(face.landmarks, np.float64))
                align_errors.append("")
            except Exception as exc:  # noqa: BLE001 - reported after the fit, as before
                aligned.append(np.zeros((size, size, 3), np.uint8))
                aligned_lms.append(np.full((68, 2), np.nan))
                align_errors.append(f"{type(exc).__name__}: {exc}")
            kept.append(item)
            lms_kept.append(lms)
            sizes.append((image.shape[1], image.shape[0]))
        n = len(kept)
        return StagedFaces(
            items=kept,
            landmarks=np.stack(lms_kept) if n else np.zeros((0, 68, 2)),
            sizes=np.asarray(sizes, np.int64).reshape(n, 2),
            aligned=np.stack(aligned) if n else np.zeros((0, size, size, 3), np.uint8),
            aligned_landmarks=np.stack(aligned_lms) if n else np.zeros((0, 68, 2)),
            align_errors=align_errors,
            errors=[failed[i] for i in sorted(failed)],
        )

    def fit_and_align(self, staged: StagedFaces) -> tuple[list[dict], list[dict]]:
        """One batched 3DMM fit over the staged faces, then a row per face whose fit held,
        its aligned crop encoded (error rows: stages fit and align). CPU only, no network."""
        errors = list(staged.errors)
        if not staged.items:
            return [], errors
        # Sec. III-C: one batched Levenberg-Marquardt fit over every face of the batch.
        cams = [Camera.for_image(int(w), int(h)) for w, h in staged.sizes]
        fit = fit_frames(self.model, staged.landmarks, cams, mode=self.cfg.first_fit_mode)
        rows: list[dict] = []
        for j, item in enumerate(staged.items):
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
            if staged.align_errors[j]:
                errors.append(error_row(item, "align", staged.align_errors[j]))
                continue
            try:
                encoded = encode_image(staged.aligned[j], self.cfg)
            except Exception as exc:  # noqa: BLE001
                errors.append(error_row(item, "align", f"{type(exc).__name__}: {exc}"))
                continue
            row = {k: v for k, v in item.items() if k not in ("image", "box", "box_norm")}
            row.update(
                image=encoded,
                landmarks=staged.aligned_landmarks[j].astype(np.float32).reshape(-1).tolist(),
                image_landmarks=staged.landmarks[j].astype(np.float32).reshape(-1).tolist(),
                camera=[cams[j].focal, cams[j].cx, cams[j].cy],
                pose=fit.pose[j].astype(np.float32).tolist(),
                shape=fit.shape[j].astype(np.float32).tolist(),
                expression=fit.expression[j].astype(np.float32).tolist(),
                fit_rmse=rmse,
            )
            rows.append(row)
        return rows, errors

    def process(self, items: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
        """Returns (face rows, error rows); every item lands in exactly one of them."""
        return self.fit_and_align(self.find_landmarks(items))


def _best_box(dets: list[Any]) -> np.ndarray | None:
    """The box of MTCNN's highest-scoring face (detections come sorted by score)."""
    return None if not dets else np.asarray(dets[0].box, np.float32)
