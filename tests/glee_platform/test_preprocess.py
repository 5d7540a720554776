"""Preprocessing on Ray Data, end to end on the tiny synthetic world."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from glee.datasets.records import DATASET_AUS
from glee_platform.preprocess import (
    PreprocessError,
    _shards_per_call,
    preprocess_dataset,
    split_triplets,
)

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]

EXACT = "provided"  # the renders' exact landmarks: these tests check the fit and the labels


def _faces(out: Path, table: str = "faces") -> pd.DataFrame:
    return pq.read_table(out / table).to_pandas()


def _truth_labels(truth: pd.DataFrame, aus: tuple[int, ...]) -> dict[tuple, np.ndarray]:
    """Ground-truth occurrence per frame from truth.parquet's AU intensities."""
    from glee.datasets.records import ALL_AUS

    cols = [ALL_AUS.index(a) for a in aus]
    out = {}
    for row in truth.itertuples():
        inten = np.asarray(row.au, float)[cols]
        out[(row.subject, row.task, int(row.frame))] = inten
    return out


@pytest.fixture(scope="module")
def prepped(tiny_world, ray_session, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("prep")
    res = {}
    for name in ("bp4d", "bp4dplus", "disfa", "fec"):
        summary = preprocess_dataset(
            name, tiny_world[name], out / name, num_cpus=2, progress=False, landmarks=EXACT
        )
        assert summary.rows_ok > 0
        res[name] = out / name
    return res


@pytest.mark.parametrize("name", ["bp4d", "bp4dplus", "disfa"])
def test_every_frame_is_a_row_or_an_error_and_labels_match(name, tiny_world, prepped):
    from glee.datasets.registry import read_dataset

    index = read_dataset(name, tiny_world[name])
    faces = _faces(prepped[name])
    errors = pq.read_table(prepped[name] / "errors.parquet").to_pandas()
    frame_errors = errors[errors.stage != "read"]
    assert len(faces) + len(frame_errors) == len(index.records)
    assert not faces.duplicated(["subject", "task", "frame"]).any()
    by_key = {(r.subject, r.task, r.frame): r for r in index.records}
    for row in faces.itertuples():
        rec = by_key[(row.subject, row.task, int(row.frame))]
        assert list(row.labels) == list(rec.labels)
        assert int(row.fold) == rec.fold
    manifest = pd.read_json(prepped[name] / "manifest.json", typ="series")
    assert manifest["au_names"] == [f"AU{a}" for a in DATASET_AUS[name]]
    assert manifest["rows_ok"] == len(faces)
    # the fold of every subject with a row, and of no other
    assert manifest["folds"] == dict(sorted(zip(faces.subject, faces.fold.astype(int))))


@pytest.mark.parametrize("name", ["bp4d", "disfa"])
def test_fit_reprojects_noise_free_landmarks_below_one_pixel(name, prepped):
    faces = _faces(prepped[name])
    assert np.median(faces.fit_rmse) < 1.0
    img = faces.image.iloc[0]
    import cv2

    decoded = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (200, 200, 3)
    lms = np.stack(faces.landmarks.to_numpy()).reshape(len(faces), 68, 2)
    # aligned landmarks sit inside the 200x200 crop, eyes on a horizontal line
    assert (lms[:, 36:48] > 0).all() and (lms[:, 36:48] < 200).all()
    left, right = lms[:, 36:42].mean(1), lms[:, 42:48].mean(1)
    assert np.abs(left[:, 1] - right[:, 1]).max() < 1.0


def test_expression_coefficients_track_the_truth(tiny_world, prepped):
    truth = pd.read_parquet(tiny_world["bp4d"] / "truth.parquet")
    faces = _faces(prepped["bp4d"])
    merged = faces.merge(truth, on=["subject", "task", "frame"], suffixes=("", "_true"))
    fit = np.stack(merged.expression.to_numpy())
    true = np.stack(merged.expression_true.to_numpy())
    # active blendshapes are recovered far better than chance
    mae = np.abs(fit - true).mean()
    assert mae < 0.1, mae


def test_fec_images_and_triplets(prepped):
    out = prepped["fec"]
    images = pq.read_table(out / "images").to_pandas()
    triplets = pq.read_table(out / "triplets.parquet").to_pandas()
    assert len(triplets) > 0
    ids = set(images.image_id)
    assert set(triplets.anchor) | set(triplets.positive) | set(triplets.negative) <= ids
    assert set(np.round(triplets.margin.astype(float), 3)) <= {0.1, 0.2}


def test_rerun_skips_finished_shards(tiny_world, prepped, ray_session):
    summary = preprocess_dataset(
        "bp4d", tiny_world["bp4d"], prepped["bp4d"], progress=False, landmarks=EXACT
    )
    assert summary.shards_run == 0
    assert summary.rows_ok == len(_faces(prepped["bp4d"]))


def test_resume_after_injected_failure_gives_the_uninterrupted_rows(
    tiny_world, prepped, ray_session, tmp_path
):
    out = tmp_path / "bp4d"
    with pytest.raises(Exception, match="injected failure"):
        preprocess_dataset(
            "bp4d",
            tiny_world["bp4d"],
            out,
            num_cpus=1,
            shard_size=4,
            progress=False,
            landmarks=EXACT,
            _fail_after_shards=2,
        )
    partial = list((out / "faces").glob("part-*.parquet"))
    summary = preprocess_dataset(
        "bp4d", tiny_world["bp4d"], out, num_cpus=1, shard_size=4, progress=False, landmarks=EXACT
    )
    assert 0 < len(partial) < summary.shards_total
    # The failure hit the middle of an actor call of several shards: the shards that call
    # finished before it are kept.
    assert _shards_per_call(summary.shards_total, 1) > 2
    assert summary.shards_run == summary.shards_total - len(partial)
    resumed = _faces(out).sort_values(["subject", "task", "frame"]).reset_index(drop=True)
    clean = _faces(prepped["bp4d"]).sort_values(["subject", "task", "frame"]).reset_index(drop=True)
    assert resumed[["subject", "task", "frame"]].equals(clean[["subject", "task", "frame"]])
    np.testing.assert_allclose(
        np.stack(resumed.expression.to_numpy()), np.stack(clean.expression.to_numpy()), atol=1e-5
    )


def test_corrupt_faceless_and_nan_inputs_become_error_rows(tiny_world, ray_session, tmp_path):
    root = tmp_path / "bp4d"
    shutil.copytree(tiny_world["bp4d"], root)
    frames = sorted((root / "2D+3D").rglob("*.jpg"))
    frames[0].write_bytes(b"\xff\xd8 this is not a jpeg")  # corrupt
    lms = pd.read_parquet(root / "landmarks.parquet")
    key = lambda p: (p.parent.parent.name, p.parent.name, int(p.stem))  # noqa: E731
    faceless, nan_frame = key(frames[1]), key(frames[2])
    drop = (lms.subject == faceless[0]) & (lms.task == faceless[1]) & (lms.frame == faceless[2])
    lms = lms[~drop].copy()
    nan = (lms.subject == nan_frame[0]) & (lms.task == nan_frame[1]) & (lms.frame == nan_frame[2])
    lms.loc[nan, "x30"] = np.nan
    lms.to_parquet(root / "landmarks.parquet")

    summary = preprocess_dataset("bp4d", root, tmp_path / "out", progress=False, landmarks=EXACT)
    errors = pq.read_table(tmp_path / "out" / "errors.parquet").to_pandas()
    stages = {(r.subject, r.task, int(r.frame)): r.stage for r in errors.itertuples()}
    assert stages[key(frames[0])] == "decode"
    assert stages[faceless] == "landmarks"
    assert stages[nan_frame] == "landmarks"
    assert summary.rows_failed == len(errors[errors.stage != "read"]) >= 3
    assert summary.line().startswith(f"{summary.rows_ok} ok, {summary.rows_failed} failed")


def test_wrong_root_is_one_clear_line(tmp_path):
    with pytest.raises(PreprocessError, match="does not exist"):
        preprocess_dataset("bp4d", tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs/preprocess.py"),
            "--dataset",
            "bp4d",
            "--root",
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_the_default_path_detects_real_landmarks_and_reports_their_error(
    tiny_world, ray_session, tmp_path, monkeypatch
):
    """landmarks auto, offline without FAN weights: dlib's 68 points on MTCNN's faces (as on
    BP4D), resolved once on the driver, recorded, and measured against the renders' truth."""
    monkeypatch.setenv("GLEE_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "bp4d"
    summary = preprocess_dataset("bp4d", tiny_world["bp4d"], out, num_cpus=2, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary.landmarks == manifest["config"]["landmarks"] == "dlib"
    truth = manifest["landmarks_vs_truth"]
    assert truth == summary.truth and truth["detected"] == summary.rows_ok
    assert truth["detection_rate"] >= 0.8  # a real detector misses some faces
    assert 0.005 < truth["mean_iod"] < 0.10  # near the truth, yet not the truth itself
    assert "landmarks dlib found" in summary.line() and "IOD" in summary.line()
    faces = _faces(out)
    found = np.stack(faces.image_landmarks.to_numpy()).reshape(-1, 68, 2)
    lms = pd.read_parquet(tiny_world["bp4d"] / "landmarks.parquet")
    key = faces.iloc[0]
    row = lms[(lms.subject == key.subject) & (lms.task == key.task) & (lms.frame == key.frame)]
    exact = np.stack([row[[f"x{i}" for i in range(68)]], row[[f"y{i}" for i in range(68)]]], -1)
    assert 0 < np.abs(found[0] - exact[0]).mean() < 10


def test_splitting_the_full_fec_triplet_set_is_linear():
    """500k triplets over 150k images, a tenth of the images failed: the quadratic
    `t not in kept` took hours at this size; one pass takes a fraction of a second."""
    rng = np.random.default_rng(0)
    ids = np.array([f"img{i:06d}" for i in range(150_000)])
    faces = rng.integers(0, len(ids), (500_000, 3))
    triplets = [{"anchor": ids[a], "positive": ids[p], "negative": ids[n]} for a, p, n in faces]
    failed = rng.random(len(ids)) < 0.1
    kept, lost = split_triplets(triplets, set(ids[~failed]))
    whole = ~failed[faces].any(1)
    assert len(kept) == whole.sum() and len(lost) == (~whole).sum()
    assert kept[0] is triplets[int(np.flatnonzero(whole)[0])]  # order kept
    assert all(
        failed[[int(t[k][3:]) for k in ("anchor", "positive", "negative")]].any()
        for t in lost[:100]
    )


def test_the_grouped_subject_pass_writes_what_fitting_in_one_process_gives(prepped):
    """The default fit mode: one shape per subject from Ray Data's groupby, then every
    shard refitted in parallel with it. The same fits, computed here in one process from
    the faces table's own landmarks and cameras, match the rows written."""
    from glee.face.fitting import FIT_PRIORS, estimate_shape, fit_with_shape
    from glee.face.pipeline import load_morphable_model

    out = prepped["bp4d"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["fit_mode"] == manifest["fit"]["mode"] == "subject"
    faces = _faces(out).sort_values(["subject", "task", "frame"], ignore_index=True)
    shapes = pq.read_table(out / "shapes.parquet").to_pandas().set_index("subject")
    assert sorted(shapes.index) == sorted(faces.subject.unique())
    errors = pq.read_table(out / "errors.parquet").to_pandas()
    assert not errors.reason.str.contains("subject fit diverged").any()
    model = load_morphable_model(None)
    reg_shape, reg_expression = FIT_PRIORS["subject"]
    for subject, rows in faces.groupby("subject"):
        lms = np.stack(rows.image_landmarks.to_numpy()).reshape(-1, 68, 2).astype(np.float64)
        cams = np.stack(rows.camera.to_numpy()).astype(np.float64)
        est = estimate_shape(model, lms, cams, reg_shape=reg_shape, reg_expression=reg_expression)
        written = np.asarray(shapes.loc[subject, "shape"])
        np.testing.assert_allclose(written, est.shape, atol=1e-5)
        assert shapes.loc[subject, "reg_expression"] == pytest.approx(est.reg_expression)
        # every frame of the subject holds that shape
        np.testing.assert_allclose(
            np.stack(rows["shape"].to_numpy()), np.tile(written, (len(rows), 1)), atol=1e-6
        )
        fit = fit_with_shape(model, written, lms, cams, reg_expression=est.reg_expression)
        np.testing.assert_allclose(np.stack(rows.expression.to_numpy()), fit.expression, atol=1e-4)
        np.testing.assert_allclose(np.stack(rows.pose.to_numpy()), fit.pose, atol=1e-4)


def test_an_interrupted_subject_pass_refits_only_the_shards_it_had_not(
    prepped, tiny_world, ray_session, tmp_path
):
    """A shard rewritten by the first pass alone (as after a crash between the passes)
    carries no subject-fit tag: a rerun refits that shard only, to the same rows."""
    from glee_platform.preprocess import FIT_KEY

    out = tmp_path / "bp4d"
    shutil.copytree(prepped["bp4d"], out)
    files = sorted((out / "faces").glob("part-*.parquet"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    victim = files[0]
    before = pq.read_table(victim)
    assert (before.schema.metadata or {}).get(FIT_KEY, b"").startswith(b"subject:")
    import pyarrow as pa

    scrambled = before.set_column(
        before.schema.get_field_index("expression"),
        "expression",
        pa.array(
            [[0.0] * len(e) for e in before["expression"].to_pylist()],
            before.schema.field("expression").type,
        ),
    ).replace_schema_metadata(None)
    pq.write_table(scrambled, victim)
    summary = preprocess_dataset("bp4d", tiny_world["bp4d"], out, progress=False, landmarks=EXACT)
    assert summary.shards_run == 0  # the first pass had nothing to do
    after = pq.read_table(victim)
    np.testing.assert_allclose(
        np.stack(after["expression"].to_numpy(zero_copy_only=False)),
        np.stack(before["expression"].to_numpy(zero_copy_only=False)),
        atol=1e-6,
    )
    assert [f for f in files if f.stat().st_mtime_ns != stamps[f]] == [victim]


def test_adding_fec_images_renames_only_the_shards_they_land_in():
    """FEC shards are cut by content: 3 new images among 5,000 change at most the shards
    they fall in (each a new name; every other shard keeps its name and so its file),
    where cutting every 32 sorted images renamed nearly every shard after the first."""
    from glee_platform.preprocess import make_shards

    rng = np.random.default_rng(0)
    ids = sorted({f"{rng.integers(1 << 40):010x}" for _ in range(5000)})

    def items(keys):
        return [{"image_id": k, "image": f"images/{k}.jpg"} for k in keys]

    def names(keys, cut_by):
        return {s["shard"] for s in make_shards(items(keys), 32, (), cut_by)}

    grown = sorted(ids + ["0000000001", "7fffffffff", "ffffffffff"])
    before, after = names(ids, "image_id"), names(grown, "image_id")
    assert len(before - after) <= 3 and len(after - before) <= 6
    assert 80 < len(before) < 400  # about 5000 / 32 shards of content-defined size
    sizes = [len(json.loads(s["items"])) for s in make_shards(items(ids), 32, (), "image_id")]
    assert max(sizes) <= 4 * 32 and sum(sizes) == len(ids)
    # the positional cut, for contrast: almost every shard renamed
    assert len(names(ids, None) - names(grown, None)) > 100


# -- landmarks on GPU actors, the fit on CPU actors ------------------------------------------


@pytest.mark.slow
def test_two_stages_write_what_one_stage_writes(tiny_world, ray_session, tmp_path):
    """--num-gpus: MTCNN and dlib on one actor pool, the fit on another, each shard crossing
    between them as bytes; the Parquet is the one stage's, row for row and byte for byte.
    The first stage asks for no GPU here (`_gpu_stage_on_cpu`), so it runs on this CPU."""
    from glee.face.pipeline import PreprocessConfig

    cfg = PreprocessConfig(landmarks="dlib", fit_mode="frame")
    kw = {"num_cpus": 2, "progress": False, "config": cfg, "shard_size": 8}
    one = preprocess_dataset("bp4d", tiny_world["bp4d"], tmp_path / "one", **kw)
    two = preprocess_dataset(
        "bp4d", tiny_world["bp4d"], tmp_path / "two", num_gpus=0.5, _gpu_stage_on_cpu=True, **kw
    )
    assert (two.rows_ok, two.rows_failed) == (one.rows_ok, one.rows_failed)
    assert one.rows_ok > 0.8 * (one.rows_ok + one.rows_failed)  # MTCNN + dlib found faces
    keys = ["subject", "task", "frame"]
    order = [(k, "ascending") for k in keys]
    a = pq.read_table(tmp_path / "one" / "faces").sort_by(order)
    b = pq.read_table(tmp_path / "two" / "faces").sort_by(order)
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for column in a.column_names:
        got, want = b[column].to_pylist(), a[column].to_pylist()
        if column in ("landmarks", "image_landmarks", "pose", "expression", "shape"):
            np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-4)
        else:
            assert got == want, column  # images bytes-equal
    err_one = pq.read_table(tmp_path / "one" / "errors.parquet").to_pandas()
    err_two = pq.read_table(tmp_path / "two" / "errors.parquet").to_pandas()
    assert err_two.sort_values(keys).equals(err_one.sort_values(keys))
    m1, m2 = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert (m1.pop("num_gpus"), m2.pop("num_gpus")) == (0.0, 0.5)
    assert m1 == m2


def test_the_gpu_stage_hands_on_bytes_not_tensors(tiny_world, ray_session):
    """A shard leaves a landmark actor as one binary value (an .npz of NumPy arrays), which
    Ray Data stores as an Arrow binary column: nothing in it is a torch tensor, which from
    a GPU actor would be a CUDA tensor that a CPU actor cannot load."""
    import pyarrow as pa

    from glee.face.pipeline import PreprocessConfig, StagedFaces
    from glee_platform.preprocess import ShardLandmarks, _au_items, make_shards

    items, _, _ = _au_items("bp4d", tiny_world["bp4d"], None)
    shards = make_shards(items[:12], 6, ("subject", "task"))
    stage = ShardLandmarks(PreprocessConfig(landmarks=EXACT).to_dict(), str(tiny_world["bp4d"]))
    assert stage.pre.cfg.device == "cpu"  # the driver holds no GPU
    out = stage({"shard": [s["shard"] for s in shards], "items": [s["items"] for s in shards]})
    assert out["shard"] == [s["shard"] for s in shards]
    assert all(type(v) is bytes for v in out["staged"])
    assert pa.array(out["staged"]).type == pa.binary()
    staged = StagedFaces.from_bytes(out["staged"][0])
    assert type(staged.landmarks) is np.ndarray and staged.landmarks.shape[1:] == (68, 2)
    assert len(staged.items) + len(staged.errors) == len(json.loads(shards[0]["items"]))


def test_num_gpus_the_cluster_cannot_give_stops_in_one_line(
    tiny_world, ray_session, tmp_path, monkeypatch
):
    import glee_platform.preprocess as prep

    monkeypatch.setattr(prep, "cluster_node_types", lambda: None)  # no launcher config
    out = tmp_path / "out"
    with pytest.raises(PreprocessError) as err:
        preprocess_dataset(
            "bp4d", tiny_world["bp4d"], out, num_gpus=0.5, progress=False, landmarks=EXACT
        )
    message = str(err.value)
    assert message.startswith("--num-gpus 0.5 asks for GPUs but the Ray cluster has none: ")
    assert "\n" not in message and "--num-gpus 0" in message
    assert not (out / "faces").exists()  # stopped before the pipeline
    for bad in (-1.0, 1.5, float("nan")):
        with pytest.raises(PreprocessError, match="--num-gpus"):
            preprocess_dataset("bp4d", tiny_world["bp4d"], out, num_gpus=bad, landmarks=EXACT)
    # an autoscaling GPU node type holds the actor: go on, and say that the autoscaler starts it
    gpu_node = {"cpu_worker": {"CPU": 16.0}, "gpu_worker": {"CPU": 8.0, "GPU": 1.0}}
    monkeypatch.setattr(prep, "cluster_node_types", lambda: gpu_node)
    assert "gpu_worker" in prep.check_cluster_gpus(0.5)
    with pytest.raises(PreprocessError, match="no node of the Ray cluster has more than 1"):
        prep.check_cluster_gpus(2)


def test_pools_without_num_cpus_may_grow_past_the_cpus_present(ray_session):
    """Without --num-cpus a pool may grow to one actor per shard (as an autoscaling cluster
    adds nodes), not only to the CPUs the cluster has at the start (3 here)."""
    from glee_platform.preprocess import actor_pool

    assert ray_session.cluster_resources()["CPU"] < 40
    grow = actor_pool(None, 40)
    assert (grow.min_size, grow.max_size) == (1, 40)
    assert (actor_pool(2, 40).min_size, actor_pool(2, 40).max_size) == (2, 2)  # fixed
    capped = actor_pool(2, 40, fixed=False)  # beside GPU actors: up to the CPUs asked for
    assert (capped.min_size, capped.max_size) == (1, 2)
    assert actor_pool(8, 3).max_size == 3  # never more actors than shards
