"""Batch prediction on Ray Data: OpenFace-style CSVs with one row per frame, the same
occurrences as evaluation on the same frames, and frames without a face kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from evaluation_world import ablation, prep_dir

from glee.datasets.records import BP4D_AUS, au_names
from glee.face.five_point import five_of, landmarks_from_five, neutral_template
from glee.prediction.predictor import (
    PredictInputError,
    csv_columns,
    list_frames,
    openface_au,
    openface_pose,
)
from glee_platform.evaluate import evaluate_run
from glee_platform.predict import predict_files

REPO = Path(__file__).resolve().parents[2]


def _write_rgb(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _check_openface(df: pd.DataFrame, names: list[str], one_face: bool = True) -> None:
    assert list(df.columns) == csv_columns(names)
    assert df["success"].isin([0, 1]).all()
    if one_face:
        assert (df["face_id"] == 0).all() and df["frame"].is_unique
    for n in names:
        c, p = df[f"{openface_au(n)}_c"], df[f"{openface_au(n)}_p"]
        assert p.between(0, 1).all()
        ok = df["success"] == 1
        assert (c[ok] == (p[ok] > 0.5).astype(int)).all()  # Sec. IV-A threshold
        assert (c[~ok] == 0).all() and (p[~ok] == 0).all()  # OpenFace: zeros on failure


# --------------------------------------------------------------------------- pure


def test_openface_columns_and_frame_listing(tmp_path):
    names = au_names(BP4D_AUS)
    cols = csv_columns(names)
    assert cols[:5] == ["frame", "face_id", "timestamp", "confidence", "success"]
    assert cols[5:11] == ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    assert cols[11] == "x_0" and cols[11 + 67] == "x_67" and cols[11 + 68] == "y_0"
    au = 11 + 136
    assert cols[au] == "AU01_c" and cols[au + 12] == "AU01_p" and cols[au + 23] == "AU24_p"
    assert "exp_jaw_drop" in cols[au + 24 :] and len(cols) == au + 24 + 51 + 1
    assert cols[-1] == "fit_rmse"
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "c.png"):
        _write_rgb(folder / name, np.zeros((8, 8, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image")
    frames = list_frames(folder)
    assert [Path(f.image).name for f in frames] == ["a.jpg", "b.png", "c.png"]
    assert [f.frame for f in frames] == [1, 2, 3] and frames[2].timestamp == pytest.approx(2 / 30)
    assert {f.subject for f in frames} == {"clip"}
    with pytest.raises(PredictInputError, match="notes.txt: not an image"):
        list_frames(folder / "notes.txt")
    with pytest.raises(PredictInputError, match="no such file"):
        list_frames(tmp_path / "missing.mp4")


def test_five_points_recover_a_moved_neutral_face():
    template = neutral_template()
    angle, scale, shift = 0.2, 3.5, np.array([120.0, 80.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = template @ (scale * rot).T + shift
    np.testing.assert_allclose(landmarks_from_five(five_of(moved)), moved, atol=1e-3)


# --------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def bp4d_run(ray_session, tiny_world, tmp_path_factory) -> Path:
    _, cfg = ablation(tiny_world, tmp_path_factory)
    return cfg.run_dir / "full"


@pytest.fixture(scope="module")
def prep(bp4d_run, tiny_world, tmp_path_factory) -> Path:
    return prep_dir(tiny_world, tmp_path_factory)


@pytest.mark.ray
@pytest.mark.slow
def test_astronaut_gets_a_face_and_a_blank_frame_a_success_0_row(bp4d_run, tmp_path, monkeypatch):
    """The default path (landmarks auto): offline and without FAN weights it is dlib's 68
    points, from the package that ships them, and says so."""
    from skimage import data

    monkeypatch.setenv("GLEE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    astronaut = _write_rgb(tmp_path / "astronaut.png", data.astronaut())
    blank = _write_rgb(tmp_path / "blank.png", np.full((160, 160, 3), 90, np.uint8))
    out = tmp_path / "out"
    summary = predict_files([astronaut, blank], bp4d_run, out, progress=False)
    names = au_names(BP4D_AUS)
    face = pd.read_csv(out / "astronaut.csv")
    none = pd.read_csv(out / "blank.csv")
    _check_openface(face, names)
    _check_openface(none, names)
    assert len(face) == len(none) == 1
    assert face.loc[0, "success"] == 1 and face.loc[0, "confidence"] > 0.9
    assert none.loc[0, "success"] == 0 and none.loc[0, "confidence"] == 0
    errors = pd.read_csv(out / "errors.csv")
    assert errors[["frame", "stage", "reason"]].values.tolist() == [
        [1, "detect", "no face detected"]
    ]
    assert Path(errors.loc[0, "input"]).name == "blank.png"
    assert (summary.frames, summary.faces, summary.landmarks) == (2, 1, "dlib")
    record = json.loads((out / "predict.json").read_text())
    assert (record["landmarks"], record["engine"]) == ("dlib", "local")  # two photos: here


def _rekeyed_landmarks(root: Path, subject: str, task: str, stem: str, out: Path) -> Path:
    """The dataset's landmarks of one sequence, keyed as predict keys frames: the input's
    stem, no task, the 1-based position of the frame in the sequence."""
    lms = pd.read_parquet(root / "landmarks.parquet")
    lms = lms[(lms["subject"] == subject) & (lms["task"] == task)].sort_values("frame")
    lms = lms.assign(subject=stem, task="", frame=np.arange(1, len(lms) + 1))
    lms.to_parquet(out)
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_a_disfa_video_gives_one_row_per_frame(bp4d_run, tiny_world, tmp_path):
    root = tiny_world["disfa"]
    video = sorted((root / "Videos_LeftCamera").glob("*.avi"))[0]
    subject = video.stem.removeprefix("LeftVideo").removesuffix("_comp")
    table = _rekeyed_landmarks(root, subject, "", video.stem, tmp_path / "landmarks.parquet")
    out = tmp_path / "out"
    summary = predict_files(
        [video], bp4d_run, out, landmarks="provided", landmarks_file=table, progress=False
    )
    df = pd.read_csv(out / f"{video.stem}.csv")
    _check_openface(df, au_names(BP4D_AUS))  # the AUs of the model's dataset
    cap = cv2.VideoCapture(str(video))
    n, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert df["frame"].tolist() == list(range(1, n + 1))  # every frame, in order
    np.testing.assert_allclose(df["timestamp"], (df["frame"] - 1) / fps, atol=1e-5)
    assert (df["success"] == 1).all() and (df["confidence"] == 1).all()
    assert (summary.frames, summary.faces) == (n, n)
    assert pd.read_csv(out / "errors.csv").empty
    # OpenFace's geometry: the landmarks the frame was processed with, in image pixels,
    # and the head pose the 3DMM fit found, near the rendered pose
    lms = pd.read_parquet(table).sort_values("frame")
    for axis in "xy":
        given = lms[[f"{axis}{i}" for i in range(68)]].to_numpy()
        np.testing.assert_allclose(df[[f"{axis}_{i}" for i in range(68)]], given, atol=1e-3)
    truth = pd.read_parquet(root / "truth.parquet")
    truth = truth[truth["subject"] == subject].sort_values("frame")
    expected = pd.DataFrame([openface_pose(p) for p in truth["pose"]])
    np.testing.assert_allclose(
        df[["pose_Rx", "pose_Ry", "pose_Rz"]], expected.iloc[:, 3:], atol=0.05
    )
    np.testing.assert_allclose(df["pose_Tz"], expected["pose_Tz"], rtol=0.05)
    assert (df["fit_rmse"] < 1.0).all()  # exact landmarks: the fit reprojects them closely
    assert df[[c for c in df.columns if c.startswith("exp_")]].abs().to_numpy().max() > 0.05


@pytest.mark.ray
@pytest.mark.slow
def test_frames_get_the_occurrences_evaluation_gives_them(bp4d_run, prep, tiny_world, tmp_path):
    ev = evaluate_run(bp4d_run, prep=prep, out=tmp_path / "eval", plots=False)
    preds = pq.read_table(tmp_path / "eval" / "predictions.parquet").to_pandas()
    subject, task = preds["subject"].iloc[0], preds["task"].iloc[0]
    root = tiny_world["bp4d"]
    folder = root / "2D+3D" / subject / task  # one BP4D sequence: a folder of frames
    table = _rekeyed_landmarks(root, subject, task, folder.name, tmp_path / "landmarks.parquet")
    out = tmp_path / "out"
    predict_files(
        [folder], bp4d_run, out, landmarks="provided", landmarks_file=table, progress=False
    )
    df = pd.read_csv(out / f"{folder.name}.csv")
    names = ev.au_names
    _check_openface(df, names)
    # frame k of the folder is the k-th BP4D frame number of the sequence
    numbers = sorted(int(p.stem) for p in folder.glob("*.jpg"))
    df["bp4d_frame"] = [numbers[k - 1] for k in df["frame"]]
    mine = preds[(preds["subject"] == subject) & (preds["task"] == task)].set_index("frame")
    both = df[df["bp4d_frame"].isin(mine.index)]
    assert len(both) >= 4 and (both["success"] == 1).all()
    mine = mine.loc[both["bp4d_frame"]]
    occ = np.stack(mine["occurrences"].to_numpy())
    np.testing.assert_array_equal(both[[f"{openface_au(a)}_c" for a in names]].to_numpy(), occ)
    logits = np.stack(mine["logits"].to_numpy()).astype(np.float64)
    probs = both[[f"{openface_au(a)}_p" for a in names]].to_numpy()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-5)


def _predict_job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "predict.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=env,
    )


def test_an_unreadable_input_or_missing_weights_is_one_clear_line(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a video")
    proc = _predict_job(str(bad), "--run", str(tmp_path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "notes.txt: not an image" in proc.stderr
    image = _write_rgb(tmp_path / "face.png", np.zeros((64, 64, 3), np.uint8))
    # No FAN weights there, and no download (GLEE_OFFLINE): the one line says where to put them.
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "GLEE_OFFLINE": "1"}
    out = ("--out", str(tmp_path / "out"))
    proc = _predict_job(str(image), "--run", str(tmp_path), "--landmarks", "fan", *out, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "FAN landmark weights" in proc.stderr and str(tmp_path / "torch") in proc.stderr


def test_openface_pose_is_the_same_rotation_in_openfaces_order():
    """pose_Rx, pose_Ry, pose_Rz compose R = Rx @ Ry @ Rz to the fit's rotation matrix."""
    from glee.face.camera import rotation_matrix

    def rx(a):
        return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])

    def ry(a):
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    def rz(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    rng = np.random.default_rng(0)
    for yaw, pitch, roll in rng.uniform(-0.8, 0.8, (50, 3)):
        got = openface_pose([yaw, pitch, roll, 1.0, -2.0, 600.0])
        r = rx(got["pose_Rx"]) @ ry(got["pose_Ry"]) @ rz(got["pose_Rz"])
        np.testing.assert_allclose(r, rotation_matrix(yaw, pitch, roll), atol=1e-5)
        assert (got["pose_Tx"], got["pose_Ty"], got["pose_Tz"]) == (1.0, -2.0, 600.0)
    # a pure yaw is a rotation about y alone
    only_yaw = openface_pose([0.3, 0.0, 0.0, 0, 0, 500])
    assert only_yaw["pose_Ry"] == pytest.approx(0.3) and abs(only_yaw["pose_Rx"]) < 1e-9


# --------------------------------------------------------------------------- many faces


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finetune run folder of a tiny GLEE-Net with random weights (BP4D's 12 AUs): the
    faces, ids and geometry predict writes do not depend on the weights."""
    import torch

    from glee.model.glee_net import build_glee_net, checkpoint_state
    from glee_platform.config import load_config
    from glee_platform.train import model_config
    from glee_platform.train.checkpoints import checkpoint_name, save_state
    from glee_platform.train.results import write_config

    folder = tmp_path_factory.mktemp("runs")
    cfg = load_config("smoke", [f"resources.storage_path={folder}", "name=tiny"])
    torch.manual_seed(0)
    ckpt = cfg.run_dir / "fold1" / checkpoint_name(0)
    ckpt.mkdir(parents=True)
    net = build_glee_net(model_config(cfg, 12))
    save_state(ckpt, {"model": checkpoint_state(net), "epoch": 0, "history": []})
    write_config(cfg)
    return cfg.run_dir


FACELESS = 6  # 0-based index of the frame without a face


def _two_faces_video(path: Path, frames: int = 12) -> Path:
    """Two copies of the astronaut's face, one left and one right of the middle of a
    640x360 clip: the left one shrinks from 220 to 132 px and the right one grows from 132
    to 220, so they swap sizes halfway; frame FACELESS is empty grey."""
    from skimage import data

    face = data.astronaut()[:300, 80:380]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 360))
    for i in range(frames):
        image = np.full((360, 640, 3), 90, np.uint8)
        if i != FACELESS:
            for size, x0 in ((220 - 8 * i, 20), (132 + 8 * i, 620 - 132 - 8 * i)):
                y0 = 180 - size // 2
                image[y0 : y0 + size, x0 : x0 + size] = cv2.resize(face, (size, size))
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_every_face_gets_a_row_and_an_id_that_stays_with_it(ray_session, tiny_run, tmp_path):
    """Chunks of 4 frames, so the ids must hold across chunk boundaries (frames 4|5, 8|9)
    and past the frame where the faces swap sizes (a rank by size would swap the ids)."""
    video = _two_faces_video(tmp_path / "two.avi")
    out = tmp_path / "out"
    summary = predict_files(
        [video], tiny_run, out, landmarks="dlib", chunk_frames=4, num_actors=2, progress=False
    )
    df = pd.read_csv(out / "two.csv")
    _check_openface(df, au_names(BP4D_AUS), one_face=False)
    faced = df[df["frame"] != FACELESS + 1]
    assert faced.groupby("frame").size().tolist() == [2] * 11  # two rows a frame
    assert (faced["success"] == 1).all() and (faced["confidence"] > 0.9).all()
    assert list(df[["frame", "face_id"]].itertuples(index=False)) == sorted(
        df[["frame", "face_id"]].itertuples(index=False)
    )
    # id 0: the larger face of frame 1, on the left; id 1 on the right, in every frame
    nose_x = faced.pivot(index="frame", columns="face_id", values="x_30")
    assert list(nose_x.columns) == [0, 1]
    assert (nose_x[0] < 320).all() and (nose_x[1] > 320).all()
    # the landmarks are each face's own: the nose moves less than 20 px between frames
    assert nose_x.diff().abs().max().max() < 20
    empty = df[df["frame"] == FACELESS + 1]
    assert empty[["face_id", "success", "confidence"]].values.tolist() == [[0, 0, 0]]
    errors = pd.read_csv(out / "errors.csv")
    assert errors[["frame", "stage"]].values.tolist() == [[FACELESS + 1, "detect"]]
    assert (summary.frames, summary.faces, summary.frames_with_face) == (12, 22, 11)
    # each tracked face of the video is one person: its frames are fitted with one shape
    # (glee.prediction.shared_shape), as fit_subject fits the track's landmarks
    from glee.face.camera import Camera
    from glee.face.fitting import FIT_PRIORS, fit_subject
    from glee.face.pipeline import load_morphable_model

    assert json.loads((out / "predict.json").read_text())["fit"]["tracks_refit"] == 2
    model = load_morphable_model(None)
    exp = [f"exp_{n}" for n in model.expression_names]
    reg_shape, reg_expression = FIT_PRIORS["subject"]
    for _, track in faced.groupby("face_id"):
        lms = np.stack(
            [track[[f"x_{k}" for k in range(68)]], track[[f"y_{k}" for k in range(68)]]], -1
        )
        fit = fit_subject(
            model, lms, Camera.for_image(640, 360), reg_shape=reg_shape,
            reg_expression=reg_expression,
        )  # fmt: skip
        assert fit.converged.all()
        np.testing.assert_allclose(track[exp].to_numpy(), fit.expression, atol=1e-5)
    aus = [openface_au(a) for a in au_names(BP4D_AUS)]
    probs = faced[[f"{a}_p" for a in aus]].to_numpy()
    assert (faced[[f"{a}_c" for a in aus]].to_numpy() == (probs > 0.5)).all()
    # the same video in this process (engine local, no Ray): the same CSV, value for value
    record = json.loads((out / "predict.json").read_text())
    assert record["engine"] == "ray"  # num_actors asked for
    predict_files(
        [video], tiny_run, tmp_path / "local", landmarks="dlib", chunk_frames=4,
        engine="local", progress=False,
    )  # fmt: skip
    local = pd.read_csv(tmp_path / "local" / "two.csv")
    pd.testing.assert_frame_equal(local, df, check_exact=False, atol=1e-5)
    assert json.loads((tmp_path / "local" / "predict.json").read_text())["engine"] == "local"


@pytest.mark.ray
@pytest.mark.slow
def test_max_faces_keeps_the_largest_face_of_each_frame(ray_session, tiny_run, tmp_path):
    video = _two_faces_video(tmp_path / "two.avi")
    out = tmp_path / "out"
    predict_files([video], tiny_run, out, landmarks="dlib", max_faces=1, progress=False)
    df = pd.read_csv(out / "two.csv")
    _check_openface(df, au_names(BP4D_AUS), one_face=False)
    assert df["frame"].tolist() == list(range(1, 13))  # one row a frame ...
    faced = df[df["success"] == 1].set_index("frame")
    assert len(faced) == 11
    # ... the larger face: the left one until they swap sizes (frame 6.5), then the right
    left = faced["x_30"] < 320
    assert left.loc[:6].all() and not left.loc[8:].any()
    # the right face is a face of its own, not the left one's id
    assert faced["face_id"].loc[:6].eq(0).all() and faced["face_id"].loc[8:].eq(1).all()


def test_auto_engine_runs_short_work_here_and_long_work_or_a_cluster_on_ray(monkeypatch):
    import glee_platform.predict as predict_module
    import glee_platform.session as session

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(session, "_connected_to", None)
    choose = predict_module.choose_engine
    assert choose("auto", 1, 2)[0] == "local"  # a photo: no actor pool to start
    assert choose("auto", 100_000, 16)[0] == "ray"  # hours of video on 16 CPUs
    assert choose("auto", 600, 64)[0] == "ray"  # 64 actors: their start-up pays back
    assert choose("auto", 1, 2, num_actors=2) == ("ray", "2 actors asked for")
    assert choose("ray", 1, 2) == ("ray", "asked for")
    # where the two estimates cross, the choice flips, from the constants it names
    a, b = predict_module.ACTOR_START_S, predict_module.LOCAL_START_S
    r_local = predict_module.LOCAL_FRAMES_PER_S
    for cpus in (4, 16):
        r_actors = cpus * predict_module.ACTOR_FRAMES_PER_S
        cross = (a - b) / (1 / r_local - 1 / r_actors)
        assert choose("auto", int(cross * 0.9), cpus)[0] == "local"
        assert choose("auto", int(cross * 1.1), cpus)[0] == "ray"
    # two actors are no faster per frame than this process on two threads (measured)
    slower = 2 * predict_module.ACTOR_FRAMES_PER_S <= r_local
    assert (choose("auto", 10**6, 2)[0] == "local") == slower
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert choose("auto", 1, 2) == ("ray", "a Ray cluster is connected")
    with pytest.raises(PredictInputError, match="engine must be one of auto, local, ray"):
        choose("gpu", 1, 2)


def test_max_faces_and_detect_every_reach_predict_files(monkeypatch, tmp_path):
    """jobs/predict.py passes --max-faces and --detect-every through, and leaves
    predict_files' defaults (all faces, DETECT_EVERY) when they are not given."""
    import importlib.util

    import glee_platform.predict as predict_module
    from glee.prediction.predictor import DETECT_EVERY

    seen: list[dict] = []

    class Summary:
        def line(self) -> str:
            return "done"

    def fake(inputs, run, out, **kwargs):
        seen.append(kwargs)
        return Summary()

    monkeypatch.setattr(predict_module, "predict_files", fake)
    spec = importlib.util.spec_from_file_location("predict_job", REPO / "jobs" / "predict.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    common = ["clip.mp4", "--run", str(tmp_path), "--out", str(tmp_path / "out")]
    assert job.main([*common, "--max-faces", "1", "--detect-every", "3"]) == 0
    assert job.main(common) == 0
    assert (seen[0]["max_faces"], seen[0]["detect_every"]) == (1, 3)
    assert seen[1]["max_faces"] is None
    assert seen[1].get("detect_every", DETECT_EVERY) == DETECT_EVERY
    assert seen[1]["engine"] == "auto"
    assert job.main([*common, "--engine", "local"]) == 0 and seen[2]["engine"] == "local"
