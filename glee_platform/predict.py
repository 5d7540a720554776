"""Batch AU prediction on Ray Data: images, folders and videos in, OpenFace-style CSVs out.

The driver lists every frame of every input (`glee.prediction.predictor.list_frames`), cuts them into
chunks of consecutive frames of one input, and streams the chunks through an actor pool
(`ActorPoolStrategy`: each actor loads the detector, landmarks, morphable model and the
finetuned GLEE-Net once). Rows come back as they finish (a progress bar counts frames) and
each input's CSV is written, atomically, once all its frames are in.

Output in `out`: `<input stem>.csv` per input (frame, face_id, timestamp, confidence,
success, AUxx_c, AUxx_p; one row per face per frame, one row with success 0 for a frame
where no face was found) and `errors.csv` (input, frame, image, stage, reason) for every
row with success 0.

Where it runs (`engine`): "ray" streams the chunks through the actor pool; "local" runs
them in this process, with no Ray at all; "auto" (the default) picks whichever
`choose_engine` expects to finish first from the start-up and per-frame rates measured in
docs/BENCHMARKS.md ("Predict's frames per second"), and says which and why. On a Ray
cluster (RAY_ADDRESS, `ray job submit`) auto is always "ray". A photo or a short clip
runs locally: a pool of actors takes seconds to start (worker processes, torch, the
models), more than it saves on a few hundred frames.

Face ids are given on the driver, not in the workers (`face_ids`): a worker sees one chunk
of a video and returns each face's box and landmarks; once every chunk is back, the
driver walks the input's faces in frame order and tracks them
(`glee.prediction.tracking.assign_face_ids`), so an id stays with its face across chunk
boundaries, and chunks still spread over every actor. The workers' own following of
faces between detections (`detect_every`) restarts at each chunk with a full detection.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glee.datasets.records import DATASET_AUS, au_names
from glee.files import write_json_atomic, write_text_atomic
from glee.prediction.predictor import (
    DETECT_EVERY,
    LANDMARK_SOURCES,
    Frame,
    FramePredictor,
    PredictInputError,
    csv_columns,
    is_video,
    list_frames,
    openface_au,
)
from glee.prediction.shared_shape import PRIVATE, share_track_shapes
from glee.prediction.tracking import Face, assign_face_ids
from glee_platform.run_folder import fold_checkpoint, load_run_config
from glee_platform.session import say

ERROR_COLUMNS = ["input", "frame", "image", "stage", "reason"]
ENGINES = ("auto", "local", "ray")
# Measured on the 2-core machine (docs/BENCHMARKS.md, "Predict's frames per second",
# session 10, detect every 10 frames, dlib landmarks, the tiny GLEE-Net): a pool of actors
# takes ACTOR_START_S to its first rows and then runs ACTOR_FRAMES_PER_S per actor (one
# CPU each); this process takes LOCAL_START_S to load the models and then runs
# LOCAL_FRAMES_PER_S on all its CPU threads. `choose_engine` compares the two.
ACTOR_START_S = 7.5
ACTOR_FRAMES_PER_S = 20.7
LOCAL_START_S = 1.5
LOCAL_FRAMES_PER_S = 45.0


@dataclass
class PredictSummary:
    out: Path
    csvs: dict[str, Path]  # input -> its CSV
    frames: int
    faces: int  # rows with success 1: faces predicted, over all frames
    landmarks: str
    seconds: float
    errors: Path = field(default_factory=Path)
    frames_with_face: int = 0  # frames with at least one row of success 1

    def line(self) -> str:
        return (
            f"{self.frames} frames of {len(self.csvs)} input(s): {self.faces} faces in "
            f"{self.frames_with_face} frames, {self.frames - self.frames_with_face} frames "
            f"without one (see {self.errors}); landmarks {self.landmarks}; CSVs in {self.out}"
        )


def resolve_landmarks(landmarks: str) -> str:
    """'auto' -> the backend `choose_landmark_backend` picks (fan, else dlib), said once on
    stdout; MTCNN's five points only when asked for by name."""
    from glee_platform.preprocess import resolve_landmarks as resolve_auto

    if landmarks == "auto":
        return resolve_auto(landmarks)
    if landmarks not in LANDMARK_SOURCES:
        raise PredictInputError(
            f"landmarks must be auto or one of {', '.join(LANDMARK_SOURCES)}, got {landmarks!r}"
        )
    if landmarks == "mtcnn5":
        say("landmarks: mtcnn5 (asked for): five points carry no expression, f_exp is blank")
    return landmarks


def model_from_run(
    run_dir: str | os.PathLike, fold: int = 1, checkpoint: str | os.PathLike | None = None
) -> tuple[dict[str, Any], str, list[str]]:
    """(GLEEConfig dict, checkpoint folder, AU names) of fold `fold` of a finetune run."""
    from glee_platform.train import model_config

    cfg = load_run_config(run_dir)
    names = au_names(DATASET_AUS[cfg.data.dataset])
    ckpt = Path(checkpoint) if checkpoint else fold_checkpoint(run_dir, fold)
    return model_config(cfg, len(names)).to_dict(), str(ckpt), names


class PredictWorker:
    """One per actor: a FramePredictor, loaded once; each row of a batch is one chunk."""

    def __init__(self, predictor: dict[str, Any], threads: int | None = 1) -> None:
        if threads is not None:  # an actor's CPUs; None: leave the process's threads be
            import cv2
            import torch

            cv2.setNumThreads(1)
            torch.set_num_threads(max(1, int(threads)))
        self.predictor = FramePredictor(**predictor)

    def __call__(self, batch: dict) -> dict:
        rows, errors = [], []
        for chunk in batch["frames"]:
            frames = [Frame(**f) for f in json.loads(chunk)]
            r, e = self.predictor.predict(frames)
            for row in r:  # a chunk holds frames of one input (_chunks)
                row["_input"] = frames[0].input
            rows.append(json.dumps(r))
            errors.append(json.dumps(e))
        return {"rows": rows, "errors": errors}


def choose_engine(
    engine: str, frames: int, cpus: int, num_actors: int | None = None
) -> tuple[str, str]:
    """(engine, why): "local" or "ray" for `frames` frames, `cpus` CPUs for actors.

    "auto" is "ray" on a cluster or when `num_actors` is given, else whichever the
    measured rates (ACTOR_*, LOCAL_*) expect to finish first: LOCAL_START_S + frames /
    LOCAL_FRAMES_PER_S in this process against ACTOR_START_S + frames / (cpus *
    ACTOR_FRAMES_PER_S) over a pool of actors."""
    from glee_platform.session import on_cluster

    if engine not in ENGINES:
        raise PredictInputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine, "asked for"
    if on_cluster():
        return "ray", "a Ray cluster is connected"
    if num_actors:
        return "ray", f"{num_actors} actors asked for"
    local = LOCAL_START_S + frames / LOCAL_FRAMES_PER_S
    actors = ACTOR_START_S + frames / (max(1, cpus) * ACTOR_FRAMES_PER_S)
    why = (
        f"{frames} frames: about {local:.0f} s in this process, {actors:.0f} s on "
        f"{max(1, cpus)} Ray actors (which take ~{ACTOR_START_S:.0f} s to start)"
    )
    return ("local" if local <= actors else "ray"), why


def _run_local(
    chunks: list[dict[str, str]], predictor: dict[str, Any]
) -> Iterator[tuple[str, str]]:
    """(rows JSON, errors JSON) of each chunk, predicted in this process, in order, on the
    threads torch and OpenCV already use here."""
    worker = PredictWorker(predictor, threads=None)
    for chunk in chunks:
        out = worker({"frames": [chunk["frames"]]})
        yield out["rows"][0], out["errors"][0]


def _run_ray(
    chunks: list[dict[str, str]],
    predictor: dict[str, Any],
    num_actors: int | None,
    cpus_per_actor: int,
) -> Iterator[tuple[str, str]]:
    """(rows JSON, errors JSON) of each chunk from an actor pool, as chunks finish."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from glee_platform.session import ensure_ray

    ensure_ray()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, cpus_per_actor))
    size = max(1, min(num_actors or cpus, len(chunks)))
    DataContext.get_current().enable_progress_bars = False  # our bar counts frames
    pipeline = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(
        PredictWorker,
        fn_constructor_kwargs={"predictor": predictor, "threads": cpus_per_actor},
        batch_size=1,
        # every actor from the start: a pool grown from one adds the second only once the
        # first has loaded its models and queued work piles up (session 9: 8 s into 10)
        compute=ActorPoolStrategy(size=size),
        num_cpus=cpus_per_actor,
    )
    try:
        for batch in pipeline.iter_batches(batch_size=1, batch_format="pandas"):
            yield from zip(batch["rows"], batch["errors"])
    finally:
        del pipeline  # release the actor pool's CPUs now (see glee_platform.preprocess)
        gc.collect()


def face_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One input's rows, in frame order and with tracked face ids (see the module's
    docstring), without the workers' private `_box`. A row without a box (a frame with no
    face) keeps face_id 0."""
    rows = sorted(rows, key=lambda r: (r["frame"], r["face_id"]))
    by_frame: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("_box") is not None:
            by_frame[r["frame"]].append(r)
    sequence = [(n, [_face(r) for r in by_frame[n]]) for n in sorted(by_frame)]
    for (n, _), ids in zip(sequence, assign_face_ids(sequence)):
        for r, face_id in zip(by_frame[n], ids):
            r["face_id"] = face_id
    for r in rows:
        r.pop("_box", None)
    return sorted(rows, key=lambda r: (r["frame"], r["face_id"]))


def _face(row: dict[str, Any]) -> Face:
    """A row's face for the tracker: its box, and its landmarks where it has them."""
    lms = None
    if row["success"] == 1:
        lms = np.array([[row[f"x_{k}"], row[f"y_{k}"]] for k in range(68)], np.float64)
    return Face(np.asarray(row["_box"], np.float64), lms)


class _SharedShapes:
    """The driver's copy of the run's network and the morphable model, loaded on first use,
    for `share_track_shapes`."""

    def __init__(self, model: dict[str, Any], ckpt: str, names: list[str]) -> None:
        self.spec, self.ckpt, self.names = model, ckpt, names
        self.net = self.mm = None
        self.tracks = 0

    def __call__(self, rows: list[dict[str, Any]]) -> int:
        if self.net is None:
            from glee.face.pipeline import PreprocessConfig, load_morphable_model
            from glee.model.config import GLEEConfig
            from glee.model.glee_net import build_glee_net
            from glee.model.inference import load_model_weights

            self.net = load_model_weights(
                build_glee_net(GLEEConfig.from_dict(self.spec)), self.ckpt
            )
            self.mm = load_morphable_model(PreprocessConfig().model_path)
        aus = [openface_au(n) for n in self.names]
        exp = [f"exp_{n}" for n in self.mm.expression_names]
        return share_track_shapes(rows, self.net, self.mm, aus, exp)


def _chunks(frames: list[Frame], size: int) -> list[dict[str, str]]:
    return [
        {"frames": json.dumps([asdict(f) for f in frames[i : i + size]])}
        for i in range(0, len(frames), size)
    ]


def predict_files(
    inputs: list[str | os.PathLike],
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fold: int = 1,
    checkpoint: str | os.PathLike | None = None,
    landmarks: str = "auto",
    landmarks_file: str | os.PathLike | None = None,
    chunk_frames: int = 32,
    num_actors: int | None = None,
    cpus_per_actor: int = 1,
    progress: bool = True,
    max_faces: int | None = None,
    detect_every: int = DETECT_EVERY,
    engine: str = "auto",
) -> PredictSummary:
    """Predict AUs for every face of every frame of `inputs` with fold `fold`'s model of
    `run_dir`; `max_faces` keeps the N largest faces of a frame (None: all), and
    `detect_every` is the video frames per full face detection (FramePredictor);
    `engine` where the frames run (auto, local, ray: see the module's docstring)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    if not inputs:
        raise PredictInputError("no input given: name image files, folders or videos")
    if chunk_frames < 1:
        raise PredictInputError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if max_faces is not None and max_faces < 1:
        raise PredictInputError(f"max_faces must be >= 1, got {max_faces}")
    if detect_every < 1:
        raise PredictInputError(f"detect_every must be >= 1, got {detect_every}")
    source = resolve_landmarks(landmarks)
    # Fail fast on the driver, in one line, for what every actor would fail on.
    from glee.face.landmarks import FanLandmarks, ProvidedLandmarks

    if source == "provided":
        if not landmarks_file:
            raise PredictInputError(
                "--landmarks provided needs --landmarks-file (a table: subject, task, frame, "
                "x0..x67, y0..y67; subject = the input's stem, task empty, frame 1-based)"
            )
        try:
            ProvidedLandmarks(landmarks_file)
        except (FileNotFoundError, ValueError) as err:
            raise PredictInputError(str(err).splitlines()[0]) from None
    elif source == "dlib":
        from glee.face.landmarks import dlib_unavailable

        missing = dlib_unavailable()
        if missing is not None:
            raise PredictInputError(missing)
    elif source == "fan":
        try:  # downloads the weights on first use, or names the files and the folder
            FanLandmarks(device="cpu")
        except FileNotFoundError as err:
            raise PredictInputError(str(err).splitlines()[0]) from None
    per_input: dict[str, list[Frame]] = {}
    stems: dict[str, str] = {}
    for item in inputs:
        frames = list_frames(item)
        key = frames[0].input
        stem = frames[0].subject
        if stem in stems and stems[stem] != key:
            raise PredictInputError(
                f"inputs {stems[stem]} and {key} would both write {stem}.csv: rename one"
            )
        stems[stem] = key
        per_input[key] = frames
    model, ckpt, names = model_from_run(run_dir, fold, checkpoint)
    total = sum(len(f) for f in per_input.values())
    chunks = [c for frames in per_input.values() for c in _chunks(frames, chunk_frames)]

    predictor = {
        "model": model,
        "checkpoint": ckpt,
        "au_names": names,
        "landmarks": source,
        "landmarks_file": str(landmarks_file) if landmarks_file else None,
        "max_faces": max_faces,
        "detect_every": detect_every,
    }
    ran, why = choose_engine(engine, total, os.cpu_count() or 1, num_actors)
    say(f"predict: {'in this process' if ran == 'local' else 'on Ray actors'} ({why})")
    if ran == "local":
        results = _run_local(chunks, predictor)
    else:
        results = _run_ray(chunks, predictor, num_actors, cpus_per_actor)
    rows: dict[str, list[dict]] = defaultdict(list)
    errors: list[dict] = []
    with tqdm(total=total, unit="frame", desc="predict", disable=not progress) as bar:
        for r_json, e_json in results:
            chunk_rows = json.loads(r_json)
            for r in chunk_rows:
                rows[r.pop("_input")].append(r)
            errors.extend(json.loads(e_json))
            bar.update(len({r["frame"] for r in chunk_rows}))  # a chunk: one input

    out_dir = Path(out).expanduser().resolve()
    columns = csv_columns(names)
    csvs: dict[str, Path] = {}
    faces = with_face = 0
    shared = _SharedShapes(model, ckpt, names)
    for key, frames in per_input.items():
        got = face_ids(rows.get(key, []))
        if is_video(frames[0]):  # one shape per tracked face (glee.prediction.shared_shape)
            shared.tracks += shared(got)
        else:
            for r in got:
                for k in PRIVATE:
                    r.pop(k, None)
        if sorted({r["frame"] for r in got}) != [f.frame for f in frames]:
            raise RuntimeError(
                f"{key}: rows of {len(got)} faces came back for {len(frames)} frames"
            )
        df = pd.DataFrame(got, columns=columns)
        faces += int(df["success"].sum())
        with_face += int(df.loc[df["success"] == 1, "frame"].nunique())
        csvs[key] = write_text_atomic(
            out_dir / f"{frames[0].subject}.csv", df.to_csv(index=False, float_format="%.6g")
        )
    err_path = write_text_atomic(
        out_dir / "errors.csv",
        pd.DataFrame(errors, columns=ERROR_COLUMNS).to_csv(index=False),
    )
    summary = PredictSummary(
        out_dir, csvs, total, faces, source, time.perf_counter() - t0, err_path, with_face
    )
    record = {
        "run": str(Path(run_dir).expanduser().resolve()),
        "checkpoint": ckpt,
        "landmarks": source,
        "inputs": {k: str(p) for k, p in csvs.items()},
        "frames": total,
        "faces": faces,
        "frames_with_face": with_face,
        "max_faces": max_faces,
        "detect_every": detect_every,
        "engine": ran,
        # fit: each face alone on the workers, then one shape per tracked face of a video
        "fit": {"frames": "photo", "video_tracks": "subject", "tracks_refit": shared.tracks},
        "seconds": round(summary.seconds, 2),
    }
    write_json_atomic(out_dir / "predict.json", record)  # what ran, for the record
    return summary


__all__ = [
    "ENGINES",
    "PredictSummary",
    "PredictWorker",
    "choose_engine",
    "model_from_run",
    "predict_files",
    "resolve_landmarks",
]
