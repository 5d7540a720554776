"""3DMM landmark fitting (Sec. III-C): recovery, optimality, bounds, point-to-curve energy,
batching, warm starts, failures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from glee.face.camera import Camera, project, rotation_matrix
from glee.face.default_model import default_model, landmark_moving_expressions
from glee.face.fitting import (
    _box_qp,
    _lm_step,
    _rotation_and_axes,
    compile_kernels,
    estimate_shape,
    fit_energy,
    fit_frames,
    fit_landmarks,
    fit_residuals_and_jacobian,
    fit_with_shape,
)
from glee.face.morphable_model import MorphableModel

CAM = Camera.for_image(256, 256)


def synthetic_faces(model: MorphableModel, n: int, seed: int = 0):
    """Shape ~ N(0,1) clipped to [-3,3], sparse expression in [0,1], |angles| <= 25 deg,
    tz so the face is ~130 px wide in a 256 image."""
    rng = np.random.default_rng(seed)
    lm = model.landmark_subset()
    shape = np.clip(rng.standard_normal((n, model.num_shape)), -3, 3)
    expr = rng.uniform(0, 1, (n, model.num_expression))
    expr *= rng.uniform(size=expr.shape) < 0.15
    tz = CAM.focal * np.ptp(lm.mean[:, 0]) / 130.0
    pose = np.c_[
        np.deg2rad(rng.uniform(-25, 25, (n, 3))),
        rng.normal(0, 5, (n, 2)),
        tz * rng.uniform(0.9, 1.1, n),
    ]
    uv = project(lm.vertices(shape, expr).astype(np.float64), pose, CAM)
    return uv, pose, shape, expr


@pytest.fixture(scope="module")
def fitted():
    model = default_model()
    uv, pose, shape, expr = synthetic_faces(model, 24)
    return model, uv, pose, shape, expr, fit_landmarks(model, uv, CAM)


def test_noise_free_recovery(fitted):
    model, uv, pose, shape, expr, res = fitted
    assert res.rmse.max() < 1.0
    assert res.converged.mean() >= 0.8
    ang_err = np.rad2deg(np.abs(res.pose[:, :3] - pose[:, :3]))
    assert np.median(ang_err) < 1.0
    moving = [model.expression_index(n) for n in landmark_moving_expressions(model)]
    est, true = res.expression[:, moving].ravel(), expr[:, moving].ravel()
    assert np.abs(est - true).mean() < 0.03
    assert np.corrcoef(est, true)[0, 1] > 0.95
    assert (res.expression >= 0).all() and (res.expression <= 1).all()


def test_fit_reaches_an_energy_below_the_truths(fitted):
    """The true coefficients are feasible, so a fit that stops above their energy has not
    converged (e.g. a broken step or active set); noise-free it should take a few steps."""
    model, uv, pose, shape, expr, res = fitted
    truth = fit_energy(model, uv, CAM, pose, shape, expr)
    assert (res.energy <= truth).all()
    assert res.converged.all() and res.iterations.max() <= 8
    # Landmark-moving blendshapes off in the truth stay near 0 (the bound is active).
    moving = [model.expression_index(n) for n in landmark_moving_expressions(model)]
    off = expr[:, moving] == 0
    assert np.median(res.expression[:, moving][off]) == 0.0


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_noisy_fit_beats_the_truths_energy_inside_the_bounds(sigma):
    """With noisy landmarks the fit drives shape coefficients to [-3, 3] (the energy's
    regulariser is tiny): the bounded steps must still converge below the truth's energy."""
    model = default_model()
    uv, pose, shape, expr = synthetic_faces(model, 12, seed=5)
    noisy = uv + np.random.default_rng(6).normal(0, sigma, uv.shape)
    res = fit_landmarks(model, noisy, CAM)
    truth = fit_energy(model, noisy, CAM, pose, shape, expr)
    assert (res.energy <= truth).all()
    assert res.converged.mean() >= 0.9
    assert (np.abs(res.shape) <= 3).all()
    assert ((res.expression >= 0) & (res.expression <= 1)).all()
    assert (np.abs(res.shape) == 3).sum() >= 12  # the shape bounds were active


def test_warm_start_from_the_previous_frame(fitted):
    model, uv, _, _, _, res = fitted
    again = fit_landmarks(model, uv, CAM, init=res)
    assert (again.iterations == 1).all() and again.converged.all()
    assert (again.energy <= res.energy + 1e-9).all()


def test_box_qp_returns_the_constrained_minimum_given_its_active_set():
    """Problems built from their KKT conditions: d* with some coordinates at a bound whose
    multiplier pushes outwards. Told that active set, one solve must give d* exactly."""
    rng = np.random.default_rng(0)
    n, p = 50, 8
    for _ in range(n):
        j = rng.normal(size=(12, p))
        s_mat = j.T @ j + 0.01 * np.eye(p)
        lo, hi = -rng.uniform(0, 1, p), rng.uniform(0, 1, p)
        side = rng.integers(0, 3, p)  # 0 free, 1 at lo, 2 at hi
        side[0] = 0
        lo = np.where(side == 1, 0.0, lo)  # a variable at its lower bound: no room below
        hi = np.where(side == 2, 0.0, hi)
        d_star = np.where(side == 0, rng.uniform(lo / 2, hi / 2), 0.0)
        mult = np.where(side == 1, rng.uniform(0.1, 1, p), 0.0)
        mult = np.where(side == 2, -rng.uniform(0.1, 1, p), mult)
        s_vec = mult - s_mat @ d_star  # KKT: S d* + s = multipliers
        root = np.linalg.cholesky(s_mat)  # the kernel takes S as R R^T
        d, active = _box_qp(root, s_vec, lo, hi, side > 0, 4)
        np.testing.assert_allclose(d, d_star, atol=1e-9)
        np.testing.assert_array_equal(active, side > 0)
        # Without the hint it still returns a point inside the box.
        d, _ = _box_qp(root, s_vec, lo, hi, np.zeros(p, bool), 4)
        assert (d >= lo).all() and (d <= hi).all()


def _damped_gram(jac, reg, mu, ridge, q):
    """H = J^T J + diag(reg) + mu diag(J^T J) (floored) + ridge I_coef, in float64."""
    h = jac.transpose(0, 2, 1) @ jac
    diag = np.einsum("nii->ni", h).copy()
    damped = diag.copy()
    ridge_p = np.r_[np.zeros(6), np.full(h.shape[-1] - 6, ridge)]
    for block in (slice(0, q), slice(q, None)):
        floor = 1e-9 * diag[:, block].max(1, keepdims=True) + 1e-12
        damped[:, block] += (
            reg[block] + ridge_p[block] + mu[:, None] * np.maximum(diag[:, block], floor)
        )
    np.einsum("nii->ni", h)[...] = damped
    return h


def _random_lm_problem(rng, n=6, rows=40, ns=5, ne=7):
    p = 6 + ns + ne
    jac = rng.normal(size=(n, rows, p)) * np.r_[np.full(6, 3.0), np.ones(ns + ne)]
    grad = rng.normal(size=(n, p)) * 5.0
    lo = np.r_[np.full(6, -np.inf), np.full(ns, -3.0), np.zeros(ne)]
    hi = np.r_[np.full(6, np.inf), np.full(ns, 3.0), np.ones(ne)]
    reg = np.r_[np.zeros(6), np.full(ns + ne, 1e-4)]
    mu, ridge, q = rng.uniform(0, 1e-3, n), 1e-3, 6 + ns
    return jac, grad, lo, hi, reg, mu, ridge, q


def test_lm_step_equals_the_dense_newton_step_inside_the_box():
    """Far from every bound the compiled step is the damped Gauss-Newton step, H^-1 g,
    up to the float32 factorisation."""
    rng = np.random.default_rng(3)
    jac, grad, lo, hi, reg, mu, ridge, q = _random_lm_problem(rng)
    grad *= 1e-3  # small steps: no bound is reached
    vars_ = np.r_[np.zeros(6), np.zeros(q - 6), np.full(len(lo) - q, 0.5)] * np.ones((6, 1))
    hint = np.zeros((6, len(lo) - 6), bool)
    step, active = _lm_step(jac, grad, vars_, lo, hi, reg, mu, ridge, q, hint, 4)
    dense = -np.linalg.solve(_damped_gram(jac, reg, mu, ridge, q), grad[..., None])[..., 0]
    np.testing.assert_allclose(step, dense, rtol=0, atol=1e-4 * np.abs(dense).max())
    assert not active.any()


def test_lm_step_meets_the_kkt_conditions_of_the_box():
    """Large steps against the bounds: the step must be feasible and, once the active set
    has settled, optimal for the damped quadratic model: zero model gradient on the pose and
    the free coefficients, pointing out of the box on the pinned ones."""
    rng = np.random.default_rng(4)
    jac, grad, lo, hi, reg, mu, ridge, q = _random_lm_problem(rng)
    vars_ = np.clip(rng.normal(0, 1, (6, len(lo))), lo, hi)
    vars_[:, q:] = np.where(rng.uniform(size=(6, len(lo) - q)) < 0.5, 0.0, vars_[:, q:])
    hint = np.zeros((6, len(lo) - 6), bool)
    step, active = _lm_step(jac, grad, vars_, lo, hi, reg, mu, ridge, q, hint, 30)
    x = vars_ + step
    assert (x >= lo - 1e-9).all() and (x <= hi + 1e-9).all()
    at_lo, at_hi = x <= lo + 1e-7, x >= hi - 1e-7
    assert (at_lo | at_hi)[:, 6:].any(1).all()  # every face meets some bound
    model_grad = (_damped_gram(jac, reg, mu, ridge, q) @ step[..., None])[..., 0] + grad
    tol = 1e-3 * np.abs(grad).max()
    free = ~(at_lo | at_hi)
    assert np.abs(model_grad[free]).max() < tol
    assert (model_grad[at_lo] > -tol).all() and (model_grad[at_hi] < tol).all()
    np.testing.assert_array_equal(active, (at_lo | at_hi)[:, 6:])


def test_lm_step_of_a_degenerate_face_is_damped_or_zero():
    """A face whose J^T J is singular is factored again with a ridge of 1e-9 of its largest
    diagonal entry; one whose Jacobian is not finite gets no step; neither changes its
    neighbours' steps."""
    rng = np.random.default_rng(5)
    jac, grad, lo, hi, reg, mu, ridge, q = _random_lm_problem(rng)
    lo, hi = np.full_like(lo, -np.inf), np.full_like(hi, np.inf)  # no bound in the way
    vars_, hint = np.zeros((6, len(lo))), np.zeros((6, len(lo) - 6), bool)

    def steps(faces):
        return _lm_step(jac[faces], grad[faces], vars_[faces], lo, hi, 0 * reg, 0 * mu[faces],
                        0.0, q, hint[faces], 4)[0]  # fmt: skip

    alone = steps([0])
    jac[1, :, 2] = jac[1, :, 3] = 0.0  # two pose columns without effect: J^T J singular
    jac[2, 0, 0] = np.nan
    step = steps(np.arange(6))
    h = jac[1].T @ jac[1]
    ridge_1 = 1e-9 * np.abs(np.diag(h)).max()
    expected = -np.linalg.solve(h + ridge_1 * np.eye(len(h)), grad[1])
    np.testing.assert_allclose(step[1], expected, rtol=1e-3, atol=1e-3)
    assert np.abs(step[1, 2]) > 1e6  # the ridge alone holds the columns without effect
    assert (step[2] == 0).all()
    np.testing.assert_array_equal(step[0], alone[0])


def test_energy_is_hand_computable():
    model = default_model()
    uv, pose, shape, expr = synthetic_faces(model, 3, seed=1)
    e = fit_energy(model, uv, CAM, pose, shape, expr, reg_shape=0.01, reg_expression=0.02)
    expected = 0.01 * (shape**2).sum(1) + 0.02 * (expr**2).sum(1)
    np.testing.assert_allclose(e, expected, rtol=1e-6, atol=1e-6)
    moved = uv.copy()
    moved[:, 30] += [3.0, 4.0]  # nose tip is a point landmark: +25 px^2
    e2 = fit_energy(model, moved, CAM, pose, shape, expr, reg_shape=0.01, reg_expression=0.02)
    np.testing.assert_allclose(e2 - e, 25.0, rtol=1e-5)


def test_point_to_curve_lets_contour_points_slide():
    model = default_model()
    uv, pose, shape, expr = synthetic_faces(model, 1, seed=2)
    base = fit_energy(model, uv, CAM, pose, shape, expr)[0]
    tangent = uv[0, 9] - uv[0, 7]
    tangent /= np.linalg.norm(tangent)
    normal = np.array([-tangent[1], tangent[0]])
    slid, off = uv.copy(), uv.copy()
    slid[0, 8] += 2.0 * tangent  # the chin (jaw contour, not an endpoint) slides along the jaw
    off[0, 8] += 2.0 * normal  # ... or leaves it
    e_slid = fit_energy(model, slid, CAM, pose, shape, expr)[0]
    e_off = fit_energy(model, off, CAM, pose, shape, expr)[0]
    assert e_slid - base < 0.5
    assert 3.0 < e_off - base < 4.5
    corner = uv.copy()
    corner[0, 0] += 2.0 * tangent  # jaw endpoint: point-to-point, full 4 px^2
    assert fit_energy(model, corner, CAM, pose, shape, expr)[0] - base == pytest.approx(4, rel=1e-4)


def test_rotation_derivatives_and_jacobian_match_finite_differences():
    angles = np.array([[0.3, -0.2, 0.1], [-0.4, 0.35, -0.25]])
    rot, axes = _rotation_and_axes(angles)
    np.testing.assert_allclose(rot, rotation_matrix(*angles.T), atol=1e-12)
    h = 1e-6
    for k in range(3):  # dR / d angle_k = [axis_k]x R
        d = np.zeros(3)
        d[k] = h
        num = (rotation_matrix(*(angles + d).T) - rotation_matrix(*(angles - d).T)) / (2 * h)
        ax, ay, az = axes[:, k].T
        zero = np.zeros_like(ax)
        skew = np.stack([zero, -az, ay, az, zero, -ax, -ay, ax, zero], -1).reshape(-1, 3, 3)
        np.testing.assert_allclose(skew @ rot, num, atol=1e-8)

    model = default_model()
    uv, pose, shape, expr = synthetic_faces(model, 1, seed=3)
    rng = np.random.default_rng(0)
    theta = np.r_[pose[0], shape[0], expr[0]] + rng.normal(0, 0.02, 6 + 111)
    r, jac = fit_residuals_and_jacobian(model, uv[0] + rng.normal(0, 1, (68, 2)), CAM, theta)
    assert r.shape == (jac.shape[0],) and jac.shape[1] == theta.size
    num = np.empty_like(jac)
    for k in range(theta.size):
        d = np.zeros_like(theta)
        d[k] = 1e-6
        rp, _ = fit_residuals_and_jacobian(model, uv[0], CAM, theta + d)
        rm, _ = fit_residuals_and_jacobian(model, uv[0], CAM, theta - d)
        num[:, k] = (rp - rm) / 2e-6
    r0, jac0 = fit_residuals_and_jacobian(model, uv[0], CAM, theta)
    np.testing.assert_allclose(jac0, num, atol=1e-4 * np.abs(num).max())
    energy = fit_energy(model, uv, CAM, theta[None, :6], theta[None, 6:66], theta[None, 66:])
    assert r0 @ r0 == pytest.approx(energy[0], rel=1e-9)


def test_batched_fit_equals_per_face_fits():
    model = default_model()
    uv, *_ = synthetic_faces(model, 3, seed=4)
    noisy = uv + np.random.default_rng(1).normal(0, 1.0, uv.shape)
    batch = fit_landmarks(model, noisy, CAM, max_iter=15)
    for i in range(3):
        one = fit_landmarks(model, noisy[i : i + 1], CAM, max_iter=15)
        np.testing.assert_allclose(one.pose[0], batch.pose[i], atol=1e-7)
        np.testing.assert_allclose(one.expression[0], batch.expression[i], atol=1e-7)
        np.testing.assert_allclose(one.energy[0], batch.energy[i], rtol=1e-9)


def test_diverged_input_is_flagged_not_crashed():
    model = default_model()
    uv, *_ = synthetic_faces(model, 3, seed=5)
    uv[1, 10] = np.nan
    cams = [CAM, CAM, Camera(focal=np.nan, cx=128, cy=128)]
    res = fit_landmarks(model, uv, cams)
    assert not res.converged[1] and not res.converged[2]
    assert np.isnan(res.rmse[1]) and np.isnan(res.rmse[2]) and np.isnan(res.pose[1]).all()
    assert np.isfinite(res.pose[0]).all() and res.rmse[0] < 1.0  # its neighbours still fit
    with pytest.raises(ValueError, match="68, 2"):
        fit_landmarks(model, uv[:, :60], CAM)


def test_any_npz_model(tmp_path):
    """A user's model (here a random smooth one, saved and loaded) fits the same way."""
    base = default_model().landmark_subset()
    rng = np.random.default_rng(7)
    p = base.mean.astype(np.float64) / 50.0
    fields = [
        np.stack([p[:, 0] * p[:, 1], p[:, 1] ** 2, p[:, 0]], 1) * rng.normal(0, 2, 3)
        for _ in range(8)
    ]
    model = MorphableModel(
        mean=base.mean,
        shape_basis=np.stack(fields) + rng.normal(0, 0.3, (8, 68, 3)),
        expression_basis=base.expression_basis[:5],
        expression_names=base.expression_names[:5],
        landmark_index=np.arange(68),
    )
    model.save(tmp_path / "m.npz")
    loaded = MorphableModel.load(tmp_path / "m.npz")
    uv, pose, shape, expr = synthetic_faces(loaded, 6, seed=8)
    res = fit_landmarks(loaded, uv, CAM)
    assert res.shape.shape == (6, 8) and res.expression.shape == (6, 5)
    assert res.rmse.max() < 1.0


def test_a_blendshape_that_moves_no_landmark_stays_at_zero():
    """Its coefficient only meets the regulariser: 0 is the optimum, whatever the init."""
    base = default_model()
    lm = base.landmark_subset()
    expression = np.concatenate([lm.expression_basis, np.zeros((1, 68, 3), np.float32)])
    model = MorphableModel(
        mean=lm.mean,
        shape_basis=lm.shape_basis,
        expression_basis=expression,
        expression_names=[*lm.expression_names, "shading_only"],
        landmark_index=np.arange(68),
    )
    uv, *_ = synthetic_faces(model, 4, seed=9)
    res = fit_landmarks(model, uv, CAM)
    assert (res.expression[:, -1] == 0).all() and res.rmse.max() < 1.0
    res.expression[:, -1] = 0.7
    assert (fit_landmarks(model, uv, CAM, init=res).expression[:, -1] == 0).all()


def test_step_kernels_load_from_the_disk_cache_in_a_new_process():
    """The compiled step is written to numba's on-disk cache, so a process that did not
    compile it (a new Ray worker) loads it instead of paying the compilation."""
    compile_kernels()  # compiles and writes the cache, or loads it
    script = (
        "from glee.face import fitting; fitting.compile_kernels(); "
        "from glee.face.default_model import default_model; "
        "fitting.fit_landmarks(default_model(), fitting.np.random.default_rng(0).normal("
        "100, 20, (2, 68, 2)), fitting.Camera.for_image(256, 256)); "
        "print(*(len(getattr(fitting, k).stats.cache_hits) for k in ks), "
        "*(len(getattr(fitting, k).stats.cache_misses) for k in ks), "
        "*(len(getattr(fitting, k).signatures) for k in ks))"
    )
    kernels = "['_face_steps', '_face_residuals']"
    out = subprocess.run(
        [sys.executable, "-c", f"ks = {kernels}; {script}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # One signature each, loaded, none compiled, and a real fit compiles nothing more.
    assert out.split() == ["1", "1", "0", "0", "1", "1"]


# -- one shape per person -------------------------------------------------------------------------
def _one_person(model: MorphableModel, n: int, seed: int):
    """n frames of one identity: the shape fixed, expressions and poses varying."""
    uv, pose, shape, expr = synthetic_faces(model, n, seed=seed)
    person = shape[0]
    lm = model.landmark_subset()
    uv = project(lm.vertices(np.tile(person, (n, 1)), expr).astype(np.float64), pose, CAM)
    return uv, pose, person, expr


def _shape_error_mm(model: MorphableModel, est: np.ndarray, true: np.ndarray) -> float:
    """RMS distance (mm) between the neutral landmarks of two shapes."""
    lm, zero = model.landmark_subset(), np.zeros(model.num_expression)
    a, b = lm.vertices(est, zero), lm.vertices(true, zero)
    return float(np.sqrt(((a - b) ** 2).sum(-1).mean()))


def test_subject_fit_recovers_the_shape_from_noisy_frames_better_than_per_frame_fits():
    """One f_s from 60 frames at 1 px noise: closer to the true shape than every per-frame
    fit's own f_s on average by a wide margin, and the frames' f_exp closer to the truth."""
    model = default_model()
    uv, pose, person, expr = _one_person(model, 60, seed=11)
    noisy = uv + np.random.default_rng(12).normal(0, 1.0, uv.shape)
    frames = fit_frames(model, noisy, CAM, mode="frame")
    subject = fit_frames(model, noisy, CAM, mode="subject", groups=np.zeros(60))
    per_frame = np.mean([_shape_error_mm(model, s, person) for s in frames.shape])
    shared = _shape_error_mm(model, subject.shape[0], person)
    assert (subject.shape == subject.shape[0]).all()  # one shape for all frames
    assert shared < 0.7 * per_frame, (shared, per_frame)  # measured 0.57
    moving = [model.expression_index(n) for n in landmark_moving_expressions(model)]
    err_frame = np.abs(frames.expression[:, moving] - expr[:, moving]).mean()
    err_subject = np.abs(subject.expression[:, moving] - expr[:, moving]).mean()
    assert err_subject < 0.8 * err_frame, (err_subject, err_frame)
    assert subject.converged.mean() >= 0.9


def test_subject_fit_of_exact_landmarks_is_exact():
    model = default_model()
    uv, pose, person, expr = _one_person(model, 30, seed=13)
    est = estimate_shape(model, uv, CAM)
    assert _shape_error_mm(model, est.shape, person) < 0.1
    assert est.noise_px < 0.05 and est.reg_expression < 1e-2  # the prior follows the noise
    fit = fit_with_shape(model, est.shape, uv, CAM, reg_expression=est.reg_expression)
    assert fit.rmse.max() < 0.1
    moving = [model.expression_index(n) for n in landmark_moving_expressions(model)]
    assert np.median(np.abs(fit.expression - expr)[:, moving]) < 0.01
    assert np.abs(fit.expression - expr)[:, moving].mean() < 0.03


def test_the_subject_prior_grows_with_the_landmark_noise():
    model = default_model()
    uv, *_ = _one_person(model, 30, seed=14)
    rng = np.random.default_rng(15)
    priors = [
        estimate_shape(model, uv + rng.normal(0, s, uv.shape), CAM).reg_expression
        for s in (0.5, 2.0)
    ]
    assert priors[1] > 4 * priors[0]


def test_groups_are_fitted_apart_and_frame_mode_is_the_papers_fit():
    """Two people in one call get two shapes, each what fitting them alone gives; frame
    mode is `fit_landmarks` with the paper's energy, bit for bit."""
    model = default_model()
    a, *_ = _one_person(model, 12, seed=16)
    b, *_ = _one_person(model, 12, seed=17)
    both = np.concatenate([a, b])
    groups = np.array(["b"] * 12 + ["a"] * 12)  # keys in any order
    fit = fit_frames(model, both, CAM, mode="subject", groups=groups)
    alone = fit_frames(model, b, CAM, mode="subject")
    assert not np.allclose(fit.shape[0], fit.shape[12])
    np.testing.assert_allclose(fit.expression[12:], alone.expression, atol=1e-9)
    paper = fit_landmarks(model, both, CAM)
    framed = fit_frames(model, both, CAM, mode="frame")
    np.testing.assert_array_equal(framed.expression, paper.expression)
    np.testing.assert_array_equal(framed.pose, paper.pose)
    with pytest.raises(ValueError, match="fit mode must be one of"):
        fit_frames(model, both, CAM, mode="video")
