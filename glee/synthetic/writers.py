"""Write the synthetic world in the exact on-disk layouts of BP4D, BP4D+, DISFA and FEC.

DESIGN.md, "Datasets: on-disk layouts". Next to the layout each dataset root gets

    truth.parquet      one row per image / video frame: dataset, subject, task, frame,
                       image (reference relative to the root: "2D+3D/F001/T1/0001.jpg",
                       "2D+3D/F001.zip!F001/T1/0001.jpg", "Videos_LeftCamera/...avi#0"
                       (0-based decode index), "images/000001.jpg"), identity (index in the
                       dataset), cluster (FEC expression cluster, else -1), box (x0, y0, x1,
                       y1 pixels), landmarks (136 floats interleaved x0, y0, x1, y1, ...,
                       image pixels, iBUG order), pose (yaw, pitch, roll rad; tx, ty, tz mm),
                       camera (focal, cx, cy), shape (60), expression (51, the full rendered
                       f_exp), au (17 intensities 0..5 over ALL_AUS), coded (17 bools: the
                       label file gives a value for that AU at that frame, i.e. not 9, not
                       an uncoded task, not an AU the dataset does not code).
    landmarks.parquet  subject, task, frame, x0..x67, y0..y67 (image pixels), the format the
                       `provided` landmark backend reads. FEC: subject = image id, task "",
                       frame 0. DISFA: task "", frame = DISFA's 1-based frame number.
    .complete          written last: "preset=<name>\\nseed=<n>\\n"

Labels follow `glee.synthetic.world.intensity_level`: BP4D/BP4D+ value 1 iff level >= 1,
DISFA stores the level. The same seed gives byte-identical files (fixed JPEG quality per
session, sorted rows, zip members dated 1980-01-01, OpenCV's own MJPEG writer). FEC CSVs hold
absolute file:// URLs, so they are byte-identical for the same output folder.

A dataset is built in a hidden sibling folder and renamed into place when complete, so an
interrupted run never leaves a folder that looks finished.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from glee.datasets.records import ALL_AUS, BP4D_AUS
from glee.face.action_units import expression_from_aus
from glee.face.camera import Camera, project
from glee.face.default_model import default_model
from glee.face.morphable_model import MorphableModel
from glee.files import atomic_path, write_bytes_atomic, write_parquet_atomic, write_text_atomic
from glee.synthetic.presets import BP4DPLUS_CODED_TASKS, Preset, get_preset
from glee.synthetic.render import (
    Identity,
    RenderResult,
    default_pose_and_camera,
    render_face,
    sample_identity,
)
from glee.synthetic.world import (
    AU_COLUMN,
    au_timeline,
    choose_subjects,
    expression_jitter,
    fec_world,
    intensity_level,
    occurrence,
    rendered_expression,
)

DATASETS = ("bp4d", "bp4dplus", "disfa", "fec")
DATASET_CODE = {"bp4d": 1, "bp4dplus": 2, "disfa": 3, "fec": 4}
# AU columns of the label files (after the frame column '0').
BP4D_OCC_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                                 20, 22, 23, 24, 27, 28)  # fmt: skip
BP4DPLUS_OCC_AUS: tuple[int, ...] = (1, 2, *range(4, 36))  # 34 FACS codes (no AU3)
DISFA_LABEL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
FEC_CSV = "faceexp-comparison-data-{split}-public.csv"
UNCODED = 9  # BP4D's "not coded"
MAX_ANGLE_DEG = 25.0
DISFA_FPS = 20.0

# purposes of the per-sample random streams (fixed positions in the seed tuple)
_IDENTITY, _SEQUENCE, _FRAME, _WORLD = 1, 2, 3, 4
SCENE = 2**31 - 1  # frame index of a sequence's scene stream (no real frame uses it)


def _rng(seed: int, dataset: str, purpose: int, *index: int) -> np.random.Generator:
    """An independent stream per (seed, dataset, purpose, index...); index padded to 3."""
    idx = list(index) + [0] * (3 - len(index))
    return np.random.default_rng([seed, DATASET_CODE[dataset], purpose, *idx])


# -- files -------------------------------------------------------------------------------


def _write_csv(path: Path, rows: Iterable[Sequence[object]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG bytes (deterministic for a given quality)."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def _zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip archive of stored members with fixed dates and attributes (reproducible)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, data)
    return buf.getvalue()


def _write_video(path: Path, frames: Sequence[np.ndarray], fps: float = DISFA_FPS) -> None:
    """MJPG .avi via OpenCV's built-in writer; checked by decoding it back."""
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    height, width = frames[0].shape[:2]
    with atomic_path(path, suffix=".avi") as tmp:  # OpenCV picks the container by suffix
        writer = cv2.VideoWriter(
            str(tmp),
            cv2.CAP_OPENCV_MJPEG,
            cv2.VideoWriter_fourcc(*"MJPG"),
            fps,
            (width, height),
            [cv2.VIDEOWRITER_PROP_QUALITY, 92],
        )
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write an MJPG video at {tmp}")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        cap = cv2.VideoCapture(str(tmp))
        decoded = 0
        while cap.grab():
            decoded += 1
        cap.release()
        if decoded != len(frames):
            raise RuntimeError(f"video {path} decodes to {decoded} frames, wrote {len(frames)}")


# -- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """Capture conditions held fixed over one recorded sequence."""

    blur: float  # Gaussian blur sigma passed to the renderer
    noise: float  # sensor noise passed to the renderer
    jpeg_quality: int  # quality of the stored JPEGs


def sample_session(rng: np.random.Generator) -> Session:
    return Session(
        blur=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(0.0, 4.0)),
        jpeg_quality=int(rng.integers(80, 96)),
    )


def sequence_poses(
    rng: np.random.Generator, num_frames: int, size: tuple[int, int]
) -> tuple[np.ndarray, Camera]:
    """(num_frames, 6) smooth head motion around a random session pose, and the camera."""
    base, camera = default_pose_and_camera(rng, size, max_angle_deg=MAX_ANGLE_DEG - 5.0)
    t = np.linspace(0.0, 1.0, num_frames)[:, None]  # (T, 1)
    amp = rng.uniform(0.0, np.radians(5.0), 3)
    freq = rng.uniform(0.3, 1.5, 3)
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    poses = np.repeat(np.asarray(base, float)[None], num_frames, axis=0)  # (T, 6)
    poses[:, :3] += amp * np.sin(2 * np.pi * freq * t + phase)
    poses[:, :3] = np.clip(poses[:, :3], -np.radians(MAX_ANGLE_DEG), np.radians(MAX_ANGLE_DEG))
    poses[:, 3:5] += rng.uniform(-3.0, 3.0, 2) * np.sin(np.pi * t)  # mm of drift
    return poses, camera


def place_in_photo(
    rng: np.random.Generator,
    model: MorphableModel,
    identity: Identity,
    expression: np.ndarray,
    pose: np.ndarray,
    camera: Camera,
    size: tuple[int, int],
) -> np.ndarray:
    """Shrink the face (up to 1.6x further away) and move it to a random spot that keeps
    it inside the photo; the camera stays the fitter's `Camera.for_image` (FEC photos)."""
    h, w = size
    pose = np.asarray(pose, float).copy()
    pose[3:6] *= rng.uniform(1.0, 1.6)  # same direction, further away: a smaller face
    uv = project(model.landmarks3d(identity.shape, expression), pose, camera)  # (68, 2)
    lo, hi = uv.min(0), uv.max(0)
    lo[1] -= 0.45 * (hi[1] - lo[1])  # forehead and hair above the brows
    margin = 0.03 * min(h, w)
    room_before = np.maximum(lo - margin, 0.0)  # free pixels left of / above the face
    room_after = np.maximum(np.array([w, h]) - margin - hi, 0.0)
    shift = rng.uniform(-room_before, room_after)  # (2,) pixels
    pose[3:5] += shift * pose[5] / camera.focal
    return pose


@dataclass(frozen=True)
class Shot:
    """Everything needed to render one image; picklable for worker processes."""

    identity: Identity
    au: np.ndarray  # (17,) over ALL_AUS
    pose: np.ndarray  # (6,)
    camera: Camera
    size: tuple[int, int]  # (height, width)
    entropy: tuple[int, ...]  # seeds the frame's expression jitter
    session: Session
    scene: tuple[int, ...] | None = None  # seeds background, light, noise (None: entropy);
    # one scene per recorded sequence keeps its background and lighting fixed
    expression: np.ndarray | None = None  # (51,) full f_exp; None: f_exp(AUs) + rest + jitter
    encode: bool = True  # JPEG bytes at session.jpeg_quality, else raw RGB pixels


@dataclass(frozen=True)
class Rendered:
    data: bytes | np.ndarray  # JPEG bytes or (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 2) pixels
    box: np.ndarray  # (4,) x0, y0, x1, y1 pixels
    expression: np.ndarray  # (51,) the f_exp drawn


def render_shot(shot: Shot) -> Rendered:
    """Render one Shot with the default model (cached per process)."""
    model = default_model()
    rng = np.random.default_rng(list(shot.entropy))
    expression = shot.expression
    if expression is None:
        expression = rendered_expression(
            expression_from_aus(shot.au, model),
            shot.identity.resting,
            expression_jitter(rng, model.num_expression),
        )
    if shot.scene is not None:
        rng = np.random.default_rng(list(shot.scene))
    result: RenderResult = render_face(
        model,
        shot.identity,
        expression,
        shot.au,
        shot.pose,
        shot.camera,
        size=shot.size,
        rng=rng,
        background=True,
        blur=shot.session.blur,
        noise=shot.session.noise,
        jpeg_quality=None,
    )
    data = encode_jpeg(result.image, shot.session.jpeg_quality) if shot.encode else result.image
    return Rendered(data, result.landmarks, result.box, np.asarray(expression, np.float32))


class Renderer:
    """Renders Shots in order, in this process or in `workers` spawned processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1
            else None
        )

    def map(self, shots: Sequence[Shot]) -> Iterator[Rendered]:
        if self.pool is None:
            return map(render_shot, shots)
        return self.pool.map(render_shot, shots, chunksize=8)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Truth:
    """Accumulates truth.parquet and landmarks.parquet rows."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.rows: list[dict] = []

    def add(
        self,
        *,
        subject: str,
        task: str,
        frame: int,
        image: str,
        identity_index: int,
        shot: Shot,
        out: Rendered,
        coded: np.ndarray,
        cluster: int = -1,
    ) -> None:
        lms = np.asarray(out.landmarks, np.float32).reshape(68, 2)
        camera = shot.camera
        self.rows.append(
            {
                "dataset": self.dataset,
                "subject": subject,
                "task": task,
                "frame": int(frame),
                "image": image,
                "identity": int(identity_index),
                "cluster": int(cluster),
                "box": np.asarray(out.box, np.float32).tolist(),
                "landmarks": lms.reshape(-1).tolist(),  # (136,) x0, y0, x1, y1, ...
                "pose": np.asarray(shot.pose, np.float32).tolist(),
                "camera": [float(camera.focal), float(camera.cx), float(camera.cy)],
                "shape": np.asarray(shot.identity.shape, np.float32).tolist(),
                "expression": np.asarray(out.expression, np.float32).tolist(),
                "au": np.asarray(shot.au, np.float32).tolist(),
                "coded": np.asarray(coded, bool).tolist(),
            }
        )

    def write(self, root: Path) -> None:
        rows = sorted(self.rows, key=lambda r: (r["subject"], r["task"], r["frame"]))
        floats = pa.list_(pa.float32())
        schema = pa.schema(
            [
                ("dataset", pa.string()),
                ("subject", pa.string()),
                ("task", pa.string()),
                ("frame", pa.int64()),
                ("image", pa.string()),
                ("identity", pa.int64()),
                ("cluster", pa.int64()),
                ("box", floats),
                ("landmarks", floats),
                ("pose", floats),
                ("camera", floats),
                ("shape", floats),
                ("expression", floats),
                ("au", floats),
                ("coded", pa.list_(pa.bool_())),
            ],
            metadata={
                "au_order": ",".join(map(str, ALL_AUS)),
                "landmarks_layout": "x0,y0,x1,y1,...,x67,y67 (image pixels, iBUG order)",
                "pose_layout": "yaw,pitch,roll (rad),tx,ty,tz (mm)",
                "camera_layout": "focal,cx,cy (pixels)",
            },
        )
        columns = {name: [r[name] for r in rows] for name in schema.names}
        write_parquet_atomic(
            root / "truth.parquet", pa.Table.from_pydict(columns, schema=schema), compression="zstd"
        )
        lms = np.array([r["landmarks"] for r in rows], np.float32).reshape(-1, 68, 2)
        table = {
            "subject": pa.array([r["subject"] for r in rows], pa.string()),
            "task": pa.array([r["task"] for r in rows], pa.string()),
            "frame": pa.array([r["frame"] for r in rows], pa.int64()),
        }
        for i in range(68):
            table[f"x{i}"] = pa.array(lms[:, i, 0], pa.float32())
        for i in range(68):
            table[f"y{i}"] = pa.array(lms[:, i, 1], pa.float32())
        write_parquet_atomic(root / "landmarks.parquet", pa.table(table), compression="zstd")


# -- staging and the .complete marker ----------------------------------------------------


def _marker(preset: Preset, seed: int) -> str:
    return f"preset={preset.name}\nseed={seed}\n"


def is_complete(root: str | os.PathLike, preset: str | Preset, seed: int) -> bool:
    """True if `root` holds a finished synthetic dataset of this preset and seed."""
    marker = Path(root) / ".complete"
    return marker.is_file() and marker.read_text() == _marker(get_preset(preset), seed)


def _stage_dir(root: Path) -> Path:
    """Hidden sibling a dataset is built in before it is renamed to `root`."""
    return root.parent / f".{root.name}.partial"


def _final_dir(stage: Path) -> Path:
    """Inverse of `_stage_dir`."""
    return stage.parent / stage.name.removeprefix(".").removesuffix(".partial")


def _build(
    name: str,
    root: str | os.PathLike,
    preset: Preset,
    seed: int,
    renderer: Renderer | int,
    progress: bool,
    body: Callable[..., None],
) -> Path:
    """Run body(name, stage, preset, seed, progress, renderer) in a hidden sibling folder
    of `root`, then move it into place; skip if `root` is already complete."""
    root = Path(root).expanduser().resolve()
    if is_complete(root, preset, seed):
        return root
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} is a file: choose an output folder for the {name} data")
    if root.is_dir() and any(root.iterdir()):
        if not ((root / ".complete").exists() or (root / ".synthetic").exists()):
            raise FileExistsError(
                f"{root} is not empty and holds no synthetic-data marker: refusing to "
                f"overwrite it; delete it or choose another --out"
            )
    stage = _stage_dir(root)
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    write_text_atomic(stage / ".synthetic", f"{name}\n")
    if isinstance(renderer, int):
        with Renderer(renderer) as own:
            body(name, stage, preset, seed, progress, own)
    else:
        body(name, stage, preset, seed, progress, renderer)
    write_text_atomic(stage / ".complete", _marker(preset, seed))  # last
    if root.exists():
        old = root.parent / f".{root.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(root, old)
        os.replace(stage, root)
        shutil.rmtree(old)
    else:
        os.replace(stage, root)
    return root


def _uncoded_mask(
    rng: np.random.Generator, num_frames: int, num_aus: int, preset: Preset
) -> np.ndarray:
    """(num_frames, num_aus) True where the label file says 9: a run of whole rows plus
    scattered single cells (at least one of each in sequences of >= 4 frames)."""
    mask = np.zeros((num_frames, num_aus), bool)
    if num_frames < 4:
        return mask
    n_rows = max(1, round(preset.uncoded_rows * num_frames))
    start = int(rng.integers(0, num_frames - n_rows + 1))
    mask[start : start + n_rows] = True
    cells = rng.random((num_frames, num_aus)) < preset.uncoded_cells
    free = np.flatnonzero(~mask.any(axis=1))
    row = int(free[rng.integers(len(free))])
    cells[row, rng.integers(num_aus)] = True
    return mask | cells


def _occ_table(
    frames: np.ndarray,
    aus: np.ndarray,
    header_aus: Sequence[int],
    uncoded: np.ndarray,
) -> tuple[list[list[int]], np.ndarray]:
    """AU_OCC rows (frame, values...) and the (T, 17) coded mask over ALL_AUS.

    uncoded: (T, len(BP4D_AUS)) mask of 9s over the AUs the readers use.
    """
    occ = occurrence(aus)  # (T, 17)
    coded = np.zeros_like(occ, bool)
    rows: list[list[int]] = []
    for t, frame in enumerate(frames):
        row = [int(frame)]
        for au in header_aus:
            if uncoded[t].all():
                value = UNCODED
            elif au in BP4D_AUS and uncoded[t, BP4D_AUS.index(au)]:
                value = UNCODED
            elif au in AU_COLUMN:
                value = int(occ[t, AU_COLUMN[au]])
                coded[t, AU_COLUMN[au]] = True
            else:
                value = 0
            row.append(value)
        rows.append(row)
    return rows, coded


def _progress(name: str, total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=f"synthesize {name}", unit="img", disable=not enabled)


# -- BP4D and BP4D+ ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    """One image to render and where its outputs go."""

    subject: str
    task: str
    frame: int
    ref: str  # image reference relative to the dataset root
    identity_index: int
    shot: Shot
    coded: np.ndarray  # (17,)
    cluster: int = -1


def _write_bp4d_like(
    name: str, stage: Path, preset: Preset, seed: int, progress: bool, renderer: Renderer
) -> None:
    plus = name == "bp4dplus"
    per_fold = preset.bp4dplus_per_fold if plus else preset.bp4d_per_fold
    tasks = preset.bp4dplus_tasks if plus else preset.bp4d_tasks
    num_frames = preset.bp4dplus_frames if plus else preset.bp4d_frames
    header_aus = BP4DPLUS_OCC_AUS if plus else BP4D_OCC_AUS
    size = preset.image_size
    model = default_model()
    plan: list[_Planned] = []
    for s, (subject, _fold) in enumerate(choose_subjects(name, per_fold)):
        identity = sample_identity(_rng(seed, name, _IDENTITY, s), model)
        for task in tasks:
            k = int(task[1:])
            rng = _rng(seed, name, _SEQUENCE, s, k)
            aus = au_timeline(rng, num_frames, emphasis=task)  # (T, 17)
            poses, camera = sequence_poses(rng, num_frames, size)
            session = sample_session(rng)
            scene = _entropy(seed, name, s, k, SCENE)
            first = int(rng.integers(1, 900))
            frames = np.arange(first, first + num_frames)
            uncoded = _uncoded_mask(rng, num_frames, len(BP4D_AUS), preset)
            rows, coded = _occ_table(frames, aus, header_aus, uncoded)
            if plus and task not in BP4DPLUS_CODED_TASKS:
                coded[:] = False  # images only, no label file
            else:
                _write_csv(
                    stage / "AUCoding" / "AU_OCC" / f"{subject}_{task}.csv",
                    [["0", *map(str, header_aus)], *rows],
                )
            for t, frame in enumerate(frames):
                member = f"{subject}/{task}/{frame:04d}.jpg"
                ref = f"2D+3D/{subject}.zip!{member}" if plus else f"2D+3D/{member}"
                shot = Shot(
                    identity, aus[t], poses[t], camera, size, _entropy(seed, name, s, k, t),
                    session, scene=scene,
                )  # fmt: skip
                plan.append(_Planned(subject, task, int(frame), ref, s, shot, coded[t]))
    truth = _Truth(name)
    members: list[tuple[str, bytes]] = []
    with _progress(name, len(plan), progress) as bar:
        for i, (item, out) in enumerate(zip(plan, renderer.map([p.shot for p in plan]))):
            if plus:
                members.append((item.ref.split("!", 1)[1], out.data))
                if i + 1 == len(plan) or plan[i + 1].subject != item.subject:
                    write_bytes_atomic(stage / "2D+3D" / f"{item.subject}.zip", _zip_bytes(members))
                    members = []
            else:
                write_bytes_atomic(stage / item.ref, out.data)
            truth.add(
                subject=item.subject,
                task=item.task,
                frame=item.frame,
                image=item.ref,
                identity_index=item.identity_index,
                shot=item.shot,
                out=out,
                coded=item.coded,
            )
            bar.update(1)
    truth.write(stage)


def _entropy(seed: int, dataset: str, *index: int) -> tuple[int, ...]:
    """Seed tuple of one frame's generator: (seed, dataset, _FRAME, i, j, k), index padded."""
    idx = list(index) + [0] * (3 - len(index))
    return (seed, DATASET_CODE[dataset], _FRAME, *idx)


def write_bp4d(
    root: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """BP4D layout: 2D+3D/F001/T1/0001.jpg and AUCoding/AU_OCC/F001_T1.csv (0/1/9)."""
    preset = get_preset(preset)
    return _build("bp4d", root, preset, seed, workers, progress, _write_bp4d_like)


def write_bp4dplus(
    root: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """BP4D+ layout: 2D+3D/F001.zip (F001/T1/*.jpg) and AUCoding/AU_OCC/F001_T1.csv for
    the AU-coded tasks T1, T6, T7, T8 only (frame column then 34 AUs)."""
    preset = get_preset(preset)
    return _build("bp4dplus", root, preset, seed, workers, progress, _write_bp4d_like)


# -- DISFA -------------------------------------------------------------------------------


def _write_disfa(
    name: str, stage: Path, preset: Preset, seed: int, progress: bool, renderer: Renderer
) -> None:
    size = preset.image_size
    n = preset.disfa_frames
    model = default_model()
    coded = np.zeros(len(ALL_AUS), bool)
    coded[[AU_COLUMN[a] for a in DISFA_LABEL_AUS]] = True
    plan: list[_Planned] = []
    for s, (subject, _fold) in enumerate(choose_subjects(name, preset.disfa_per_fold)):
        identity = sample_identity(_rng(seed, name, _IDENTITY, s), model)
        rng = _rng(seed, name, _SEQUENCE, s)
        aus = au_timeline(rng, n, emphasis="disfa")  # (n, 17)
        poses, camera = sequence_poses(rng, n, size)
        session = sample_session(rng)
        video = f"Videos_LeftCamera/LeftVideo{subject}_comp.avi"
        levels = intensity_level(aus)  # (n, 17)
        for au in DISFA_LABEL_AUS:
            lines = "".join(f"{t + 1},{levels[t, AU_COLUMN[au]]}\n" for t in range(n))
            write_text_atomic(
                stage / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt", lines
            )
        for t in range(n):
            shot = Shot(
                identity, aus[t], poses[t], camera, size, _entropy(seed, name, s, t), session,
                scene=_entropy(seed, name, s, SCENE), encode=False,
            )  # fmt: skip
            # DISFA numbers frames from 1; label line t+1 <-> 0-based video frame t
            plan.append(_Planned(subject, "", t + 1, f"{video}#{t}", s, shot, coded))
    truth = _Truth(name)
    frames: list[np.ndarray] = []
    with _progress(name, len(plan), progress) as bar:
        for i, (item, out) in enumerate(zip(plan, renderer.map([p.shot for p in plan]))):
            frames.append(out.data)
            if i + 1 == len(plan) or plan[i + 1].subject != item.subject:
                _write_video(stage / item.ref.split("#", 1)[0], frames)
                frames = []
            truth.add(
                subject=item.subject,
                task="",
                frame=item.frame,
                image=item.ref,
                identity_index=item.identity_index,
                shot=item.shot,
                out=out,
                coded=item.coded,
            )
            bar.update(1)
    truth.write(stage)


def write_disfa(
    root: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """DISFA layout: Videos_LeftCamera/LeftVideoSN001_comp.avi (MJPG) and
    ActionUnit_Labels/SN001/SN001_au{k}.txt lines "frame,intensity" (0..5)."""
    preset = get_preset(preset)
    return _build("disfa", root, preset, seed, workers, progress, _write_disfa)


# -- FEC ---------------------------------------------------------------------------------


def _write_fec(
    name: str, stage: Path, preset: Preset, seed: int, progress: bool, renderer: Renderer
) -> None:
    final_root = _final_dir(stage)  # the CSV's file:// URLs point where the images will be
    size = preset.fec_image_size
    h, w = size
    model = default_model()
    identities = [
        sample_identity(_rng(seed, name, _IDENTITY, i), model) for i in range(preset.fec_identities)
    ]
    resting = np.stack([np.asarray(idn.resting, np.float32) for idn in identities])  # (N, 51)
    world = fec_world(
        _rng(seed, name, _WORLD),
        lambda aus: expression_from_aus(aus, model),
        resting,
        images_per_identity=preset.fec_images_per_identity,
        num_train=preset.fec_train_triplets,
        num_test=preset.fec_test_triplets,
    )
    no_labels = np.zeros(len(ALL_AUS), bool)
    plan: list[_Planned] = []
    for i, face in enumerate(world.faces):
        rng = _rng(seed, name, _SEQUENCE, i)
        identity = identities[face.identity]
        pose, camera = default_pose_and_camera(rng, size, max_angle_deg=MAX_ANGLE_DEG)
        pose = place_in_photo(rng, model, identity, face.expression, pose, camera, size)
        session = sample_session(rng)
        session = Session(session.blur, session.noise, 90)
        shot = Shot(
            identity, face.au, pose, camera, size, _entropy(seed, name, i), session,
            expression=face.expression,
        )  # fmt: skip
        ref = f"images/{face.image_id}.jpg"
        plan.append(
            _Planned(face.image_id, "", 0, ref, face.identity, shot, no_labels, face.cluster)
        )
    truth = _Truth(name)
    boxes: list[tuple[float, float, float, float]] = []  # left, right, top, bottom in [0, 1]
    with _progress(name, len(plan), progress) as bar:
        for item, out in zip(plan, renderer.map([p.shot for p in plan])):
            write_bytes_atomic(stage / item.ref, out.data)
            x0, y0, x1, y1 = np.asarray(out.box, float)
            boxes.append(
                (
                    float(np.clip(x0 / w, 0.0, 1.0)),
                    float(np.clip(x1 / w, 0.0, 1.0)),
                    float(np.clip(y0 / h, 0.0, 1.0)),
                    float(np.clip(y1 / h, 0.0, 1.0)),
                )
            )
            truth.add(
                subject=item.subject,
                task="",
                frame=0,
                image=item.ref,
                identity_index=item.identity_index,
                shot=item.shot,
                out=out,
                coded=item.coded,
                cluster=item.cluster,
            )
            bar.update(1)
    for split in ("train", "test"):
        rows = []
        for tri in world.triplets:
            if tri.split != split:
                continue
            row: list[object] = []
            for i in tri.faces:
                url = (final_root / plan[i].ref).as_uri()
                row += [url, *(f"{v:.6f}" for v in boxes[i])]
            row.append(tri.triplet_type)
            for annotator, answer in zip(tri.annotators, tri.annotations):
                row += [annotator, answer]
            rows.append(row)
        _write_csv(stage / FEC_CSV.format(split=split), rows)
    truth.write(stage)


def write_fec(
    root: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """FEC layout: faceexp-comparison-data-{train,test}-public.csv (no header; 3 x (file://
    URL, left, right, top, bottom), triplet type, 6 x (annotator id, answer)) + images/."""
    preset = get_preset(preset)
    return _build("fec", root, preset, seed, workers, progress, _write_fec)


_BODIES: dict[str, Callable[..., None]] = {
    "bp4d": _write_bp4d_like,
    "bp4dplus": _write_bp4d_like,
    "disfa": _write_disfa,
    "fec": _write_fec,
}


def synthesize(
    out: str | os.PathLike,
    preset: str | Preset = "demo",
    seed: int = 0,
    datasets: Sequence[str] = DATASETS,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Path]:
    """Write out/bp4d, out/bp4dplus, out/disfa, out/fec; finished ones are skipped.

    workers > 1 renders in that many spawned processes (same bytes as workers=1).
    """
    preset = get_preset(preset)
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in _BODIES]
    if unknown or not datasets:
        raise ValueError(
            f"unknown synthetic dataset(s) {unknown or list(datasets)}: choose among "
            f"{', '.join(DATASETS)}"
        )
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with Renderer(workers) as renderer:
        for d in datasets:
            paths[d] = _build(d, out / d, preset, seed, renderer, progress, _BODIES[d])
    return paths
