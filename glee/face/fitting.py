"""3DMM fitting to 68 detected landmarks by Levenberg-Marquardt (Sec. III-C), batched.

Unknowns per face: head pose (yaw, pitch, roll, tx, ty, tz; `glee.face.camera`), shape
coefficients f_s (N_s) and expression coefficients f_exp (N_e). Energy (Sec. III-C):

    E = sum_i d_i^2 + reg_expression ||f_exp||^2 + reg_shape ||f_s||^2

where d_i is the pixel distance between the perspective projection of model landmark i and
the detected landmark i, except for the non-endpoint landmarks of each contour of the model
(jaw line, lip contours; `MorphableModel.contours`), where d_i is the distance from the
projected landmark to the detected contour polyline (point-to-curve: the landmark may slide
along the curve). Both regularisers default to the paper's 1e-4.

Residual vector (what `fit_residuals_and_jacobian` returns, ||r||^2 = E):
    [u - u*, v - v*] for each point landmark, in landmark order       (2 rows each)
    signed distance to the detected polyline for each sliding landmark (1 row each)
    sqrt(reg_shape) f_s, sqrt(reg_expression) f_exp

Solver: Levenberg-Marquardt with analytic Jacobians (rotation derivatives for the pose;
the model landmarks are linear in f_s and f_exp, so their columns are the rotated bases
through the projection's derivative), vectorised over all faces: a batch of B faces builds
one (B, rows, 6 + N_s + N_e) Jacobian and solves B normal-equation systems at once; faces
drop out of the working set as they converge. The bounds f_exp in [0, 1] and f_s in
[-3, 3] (the model's documented ranges) are kept by a projected LM: coefficients at a bound
whose gradient pushes outward are held fixed for the step (active set), the step is solved
for the rest and the result is clipped to the box. Initial pose: a scaled-orthographic fit
of the mean shape (closed form, one shared pseudo-inverse), refined by pose-only LM steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from glee.face.camera import Camera
from glee.face.morphable_model import MorphableModel

POSE_DIM = 6
SHAPE_BOUNDS = (-3.0, 3.0)
EXPRESSION_BOUNDS = (0.0, 1.0)


@dataclass
class FitResult:
    pose: np.ndarray  # (B, 6) yaw, pitch, roll (rad), tx, ty, tz (mm)
    shape: np.ndarray  # (B, Ns)
    expression: np.ndarray  # (B, Ne)
    rmse: np.ndarray  # (B,) pixels, plain point distance over the 68 landmarks
    energy: np.ndarray  # (B,) Sec. III-C energy at the solution
    converged: np.ndarray  # (B,) bool
    iterations: np.ndarray  # (B,) LM iterations used


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Batched small solves lose to thread start-up and contention: run BLAS on one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own thread count
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# -- the problem: model, contours and cameras as arrays ---------------------------------------
class _Problem:
    """Everything about the model that does not change between faces, as float64 arrays."""

    def __init__(
        self,
        model: MorphableModel,
        reg_shape: float,
        reg_expression: float,
        bounded: bool,
    ) -> None:
        lm = model.landmark_subset()
        self.ns, self.ne = lm.num_shape, lm.num_expression
        self.k = self.ns + self.ne
        self.mean = lm.mean.astype(np.float64)  # (68, 3)
        basis = np.concatenate([lm.shape_basis, lm.expression_basis], 0).astype(np.float64)
        self.basis = np.ascontiguousarray(basis.transpose(1, 2, 0))  # (68, 3, K)
        self.basis_flat = self.basis.reshape(68 * 3, self.k)  # (204, K)
        self.reg = np.concatenate(
            [np.full(self.ns, float(reg_shape)), np.full(self.ne, float(reg_expression))]
        )
        if (self.reg < 0).any():
            raise ValueError("regularisation weights must be >= 0")
        inf = np.full(POSE_DIM, np.inf)
        if bounded:
            lo_c = np.r_[np.full(self.ns, SHAPE_BOUNDS[0]), np.full(self.ne, EXPRESSION_BOUNDS[0])]
            hi_c = np.r_[np.full(self.ns, SHAPE_BOUNDS[1]), np.full(self.ne, EXPRESSION_BOUNDS[1])]
        else:
            lo_c, hi_c = np.full(self.k, -np.inf), np.full(self.k, np.inf)
        self.lo, self.hi = np.r_[-inf, lo_c], np.r_[inf, hi_c]

        # Sec. III-C: non-endpoint contour landmarks slide along the detected polyline.
        sliding: dict[int, tuple[int, ...]] = {}
        for contour in lm.contours.values():
            for j in contour[1:-1]:
                sliding.setdefault(int(j), tuple(int(c) for c in contour))
        self.sliding = np.array(sorted(sliding), np.int64)
        self.points = np.array([i for i in range(68) if i not in sliding], np.int64)
        nseg = max((len(sliding[j]) - 1 for j in self.sliding), default=1)
        seg_a = np.zeros((len(self.sliding), nseg), np.int64)
        seg_b = np.zeros((len(self.sliding), nseg), np.int64)
        for r, j in enumerate(self.sliding):
            c = sliding[int(j)]
            a, b = list(c[:-1]), list(c[1:])
            a += [a[-1]] * (nseg - len(a))  # pad with the last segment (harmless for a min)
            b += [b[-1]] * (nseg - len(b))
            seg_a[r], seg_b[r] = a, b
        self.seg_a, self.seg_b = seg_a, seg_b  # (S, M) detected-landmark indices
        # Landmark of each data row: 2 rows per point landmark, then 1 per sliding landmark.
        self.row_landmark = np.r_[np.repeat(self.points, 2), self.sliding]
        self.rows = len(self.row_landmark)
        self.basis_rows = np.ascontiguousarray(self.basis[self.row_landmark])  # (rows, 3, K)
        # Closed-form scaled-orthographic pose init on the mean shape: [X 1]^+ (4, 68).
        design = np.c_[self.mean, np.ones(68)]
        self.mean_pinv = np.linalg.pinv(design)


def _cameras(camera: Camera | Sequence[Camera], n: int) -> np.ndarray:
    """(n, 3) focal, cx, cy."""
    if isinstance(camera, Camera):
        return np.tile([camera.focal, camera.cx, camera.cy], (n, 1)).astype(np.float64)
    cams = list(camera)
    if len(cams) != n:
        raise ValueError(f"got {len(cams)} cameras for {n} faces; pass one or one per face")
    return np.array([[c.focal, c.cx, c.cy] for c in cams], np.float64)


def _rotation_and_derivatives(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R = Rz(roll) Ry(yaw) Rx(pitch) (n, 3, 3) and dR/d(yaw, pitch, roll) (n, 3, 3, 3)."""
    yaw, pitch, roll = angles[:, 0], angles[:, 1], angles[:, 2]
    n = len(angles)
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (np.cos, np.sin))
    z, o = np.zeros(n), np.ones(n)

    def m(*e: np.ndarray) -> np.ndarray:
        return np.stack(e, -1).reshape(n, 3, 3)

    rx, drx = m(o, z, z, z, cp, -sp, z, sp, cp), m(z, z, z, z, -sp, -cp, z, cp, -sp)
    ry, dry = m(cy, z, sy, z, o, z, -sy, z, cy), m(-sy, z, cy, z, z, z, -cy, z, -sy)
    rz, drz = m(cr, -sr, z, sr, cr, z, z, z, o), m(-sr, -cr, z, cr, -sr, z, z, z, z)
    rzy = rz @ ry
    rot = rzy @ rx
    d = np.stack([rz @ dry @ rx, rzy @ drx, drz @ ry @ rx], 1)  # (n, 3 angles, 3, 3)
    return rot, d


def _euler_from_rotation(rot: np.ndarray) -> np.ndarray:
    """Inverse of R = Rz(roll) Ry(yaw) Rx(pitch): (n, 3, 3) -> (n, 3) yaw, pitch, roll."""
    yaw = np.arcsin(np.clip(-rot[:, 2, 0], -1.0, 1.0))
    pitch = np.arctan2(rot[:, 2, 1], rot[:, 2, 2])
    roll = np.arctan2(rot[:, 1, 0], rot[:, 0, 0])
    return np.stack([yaw, pitch, roll], 1)


# -- residuals and Jacobian, batched -------------------------------------------------------------
@dataclass
class _Targets:
    """Detected landmarks with their contour segments precomputed (fixed during a fit)."""

    points: np.ndarray  # (n, 2 P) point-landmark targets, row order
    a: np.ndarray  # (n, S, M, 2) segment starts of each sliding landmark's detected contour
    d: np.ndarray  # (n, S, M, 2) segment vectors
    inv_dd: np.ndarray  # (n, S, M) 1 / |d|^2 (0 for degenerate segments)
    normal: np.ndarray  # (n, S, M, 2) unit left normals

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, idx: np.ndarray) -> _Targets:
        return _Targets(*(f[idx] for f in (self.points, self.a, self.d, self.inv_dd, self.normal)))


def _targets(prob: _Problem, target: np.ndarray) -> _Targets:
    n = len(target)
    a = target[:, prob.seg_a]  # (n, S, M, 2)
    d = target[:, prob.seg_b] - a
    dd = np.einsum("nsmc,nsmc->nsm", d, d)
    inv_dd = np.where(dd > 1e-12, 1.0 / np.maximum(dd, 1e-12), 0.0)
    normal = np.stack([-d[..., 1], d[..., 0]], -1) * np.sqrt(inv_dd)[..., None]
    return _Targets(target[:, prob.points].reshape(n, -1), a, d, inv_dd, normal)


def _evaluate(
    prob: _Problem,
    theta: np.ndarray,
    target: np.ndarray | _Targets,
    cams: np.ndarray,
    jacobian: bool,
    coefficients: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Data residuals (n, rows) and, if asked, their Jacobian (n, rows, 6 [+ K]).

    theta (n, 6 + K); target (n, 68, 2) detected landmarks (or their `_Targets`); cams (n, 3).
    """
    tg = target if isinstance(target, _Targets) else _targets(prob, target)
    n = len(theta)
    pose, coef = theta[:, :POSE_DIM], theta[:, POSE_DIM:]
    x = prob.mean + (coef @ prob.basis_flat.T).reshape(n, 68, 3)  # Eq. (5), model frame
    rot, drot = _rotation_and_derivatives(pose[:, :3])
    y = x @ rot.transpose(0, 2, 1) + pose[:, None, 3:6]  # (n, 68, 3) camera frame
    f, c = cams[:, None, 0], cams[:, None, 1:3]
    inv_z = 1.0 / y[..., 2]
    xy = y[..., :2] * inv_z[..., None]  # (n, 68, 2) normalised image coordinates
    proj = f[..., None] * xy + c  # (n, 68, 2) pixels

    # Point landmarks: 2 rows each.
    r_pts = proj[:, prob.points].reshape(n, -1) - tg.points
    # Sliding landmarks: signed distance to the nearest segment of the detected polyline
    # (Sec. III-C, point-to-curve).
    p = proj[:, prob.sliding]  # (n, S, 2)
    ex = p[:, :, None, 0] - tg.a[..., 0]  # (n, S, M) offsets from each segment start
    ey = p[:, :, None, 1] - tg.a[..., 1]
    dx, dy = tg.d[..., 0], tg.d[..., 1]
    t = np.clip((ex * dx + ey * dy) * tg.inv_dd, 0.0, 1.0)
    ex -= t * dx  # offset from the foot on each segment
    ey -= t * dy
    dist2 = ex * ex + ey * ey
    best = np.argmin(dist2, axis=-1)[..., None]  # (n, S, 1)
    e = np.stack([np.take_along_axis(ex, best, 2), np.take_along_axis(ey, best, 2)], -1)[:, :, 0]
    normal = np.take_along_axis(tg.normal, best[..., None], 2)[:, :, 0]  # (n, S, 2)
    dist = np.sqrt(np.take_along_axis(dist2, best, 2)[..., 0])  # (n, S)
    sign = np.where(e[..., 0] * normal[..., 0] + e[..., 1] * normal[..., 1] < 0, -1.0, 1.0)
    residual = np.concatenate([r_pts, sign * dist], 1)  # (n, rows)
    if not jacobian:
        return residual, None

    # d residual / d (camera-frame point) per row: (n, rows, 3).
    dproj = np.zeros((n, 68, 2, 3))
    fz = f * inv_z  # (n, 68)
    dproj[..., 0, 0] = fz
    dproj[..., 1, 1] = fz
    dproj[..., :, 2] = -fz[..., None] * xy
    safe = dist > 1e-9
    direction = np.where(
        safe[..., None], sign[..., None] * e / np.where(safe, dist, 1.0)[..., None], normal
    )  # (n, S, 2): d r_sl / d proj
    g_sl = np.einsum("nsc,nscd->nsd", direction, dproj[:, prob.sliding])
    g = np.concatenate([dproj[:, prob.points].reshape(n, -1, 3), g_sl], 1)  # (n, rows, 3)

    cols = POSE_DIM + (prob.k if coefficients else 0)
    jac = np.empty((n, prob.rows, cols))
    # Pose: d y / d angle_k = dR_k x, so the row is (g dR_k) . x; d y / d t = I.
    xr = x[:, prob.row_landmark]  # (n, rows, 3)
    for k in range(3):
        jac[..., k] = np.einsum("nra,nra->nr", g @ drot[:, k], xr)
    jac[..., 3:6] = g
    if coefficients:
        # Coefficients: d y / d f = R B_i, so the row is (g R) B_i, one (1, 3) @ (3, K) per row.
        w = g @ rot  # (n, rows, 3)
        jac[..., POSE_DIM:] = (w[:, :, None, :] @ prob.basis_rows[None])[:, :, 0, :]
    return residual, jac


def _energy(prob: _Problem, theta: np.ndarray, residual: np.ndarray) -> np.ndarray:
    coef = theta[:, POSE_DIM:]
    return np.einsum("nr,nr->n", residual, residual) + (coef * coef) @ prob.reg


def _rmse(prob: _Problem, theta: np.ndarray, target: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """Plain point-to-point RMSE over the 68 landmarks, pixels."""
    n = len(theta)
    pose, coef = theta[:, :POSE_DIM], theta[:, POSE_DIM:]
    x = prob.mean + (coef @ prob.basis_flat.T).reshape(n, 68, 3)
    rot, _ = _rotation_and_derivatives(pose[:, :3])
    y = x @ rot.transpose(0, 2, 1) + pose[:, None, 3:6]
    proj = cams[:, None, :1] * y[..., :2] / y[..., 2:3] + cams[:, None, 1:3]
    return np.sqrt(np.mean(np.sum((proj - target) ** 2, -1), -1))


# -- initial pose --------------------------------------------------------------------------------
def _initial_pose(prob: _Problem, target: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """Scaled-orthographic fit of the mean shape: u = s [r1; r2] X + b, closed form."""
    affine = np.einsum("jl,nlc->njc", prob.mean_pinv, target)  # (n, 4, 2): [A^T; b]
    a = affine[:, :3].transpose(0, 2, 1)  # (n, 2, 3)
    b = affine[:, 3]  # (n, 2)
    u, s, vt = np.linalg.svd(a, full_matrices=False)  # nearest orthonormal rows
    r12 = u @ vt  # (n, 2, 3)
    scale = s.mean(1)
    rot = np.concatenate([r12, np.cross(r12[:, 0], r12[:, 1])[:, None]], 1)
    tz = cams[:, 0] / np.maximum(scale, 1e-9)
    txy = (b - cams[:, 1:3]) / np.maximum(scale, 1e-9)[:, None]
    return np.c_[_euler_from_rotation(rot), txy, tz]


# -- Levenberg-Marquardt -------------------------------------------------------------------------
def _lm(
    prob: _Problem,
    theta: np.ndarray,
    target: np.ndarray,
    cams: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    coefficients: bool,
    passes: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Projected LM over a batch; returns theta, energy, converged, iterations."""
    target = _targets(prob, target)  # the detected contours, once per fit
    n = len(theta)
    theta = theta.copy()
    p = POSE_DIM + (prob.k if coefficients else 0)
    lo, hi = prob.lo[:p], prob.hi[:p]
    reg = np.r_[np.zeros(POSE_DIM), prob.reg][:p]
    res, _ = _evaluate(prob, theta, target, cams, jacobian=False)
    energy = _energy(prob, theta, res)
    mu = np.full(n, 1e-3)
    converged = np.zeros(n, bool)
    iterations = np.zeros(n, np.int64)
    alive = np.flatnonzero(np.isfinite(energy))
    eye = np.eye(p, dtype=bool)
    for _ in range(max_iter):
        if len(alive) == 0:
            break
        th, tg, cm = theta[alive], target[alive], cams[alive]
        res, jac = _evaluate(prob, th, tg, cm, jacobian=True, coefficients=coefficients)
        vars_ = th[:, :p]
        grad = np.einsum("nrp,nr->np", jac, res) + reg * vars_  # (m, p), half the gradient
        hess = jac.transpose(0, 2, 1) @ jac  # (m, p, p)
        hess[:, eye] += reg
        # Active set: variables on a bound whose gradient pushes outside stay fixed.
        active = ((vars_ <= lo + 1e-12) & (grad > 0)) | ((vars_ >= hi - 1e-12) & (grad < 0))
        diag = np.diagonal(hess, axis1=1, axis2=2).copy()
        damp = mu[alive, None] * np.maximum(diag, 1e-9 * diag.max(1, keepdims=True) + 1e-12)
        hess[:, eye] += damp
        # Projected step: solve for the free variables, pin the ones that would leave the
        # box at the bound they hit, re-solve for the rest (a few active-set passes).
        fixed_step = np.zeros_like(grad)
        for _ in range(passes):
            free = ~active
            rhs = -(grad + (hess @ fixed_step[..., None])[..., 0]) * free
            h = hess * (free[:, :, None] & free[:, None, :])
            h[:, eye] += active
            step = np.linalg.solve(h, rhs[..., None])[..., 0] + fixed_step
            target_vars = vars_ + step
            hit = free & ((target_vars < lo) | (target_vars > hi))
            if not hit.any():
                break
            fixed_step = np.where(hit, np.clip(target_vars, lo, hi) - vars_, fixed_step)
            active = active | hit
        new = th.copy()
        new[:, :p] = np.clip(vars_ + step, lo, hi)
        new_res, _ = _evaluate(prob, new, tg, cm, jacobian=False)
        new_energy = _energy(prob, new, new_res)
        old = energy[alive]
        better = np.isfinite(new_energy) & (new_energy < old)
        iterations[alive] += 1
        acc = alive[better]
        theta[acc] = new[better]
        energy[acc] = new_energy[better]
        mu[acc] = np.maximum(mu[acc] * 0.2, 1e-9)
        rej = alive[~better]
        mu[rej] *= 8.0
        small = better & (old - new_energy <= tol * np.maximum(old, 1e-12))
        stuck = ~better & (mu[alive] > 1e4)  # damped to a tiny gradient step: no progress left
        done = small | stuck
        converged[alive[done]] = True
        alive = alive[~done]
    return theta, energy, converged, iterations


def _fit(
    prob: _Problem,
    tg: np.ndarray,
    cm: np.ndarray,
    init: FitResult | None,
    idx: np.ndarray,
    pose_iter: int,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Initial pose, pose-only LM, then LM over pose and coefficients."""
    th = np.zeros((len(idx), POSE_DIM + prob.k))
    if init is not None:
        th[:, :POSE_DIM] = np.asarray(init.pose, np.float64)[idx]
        th[:, POSE_DIM : POSE_DIM + prob.ns] = np.asarray(init.shape, np.float64)[idx]
        th[:, POSE_DIM + prob.ns :] = np.asarray(init.expression, np.float64)[idx]
        th[:, POSE_DIM:] = np.clip(th[:, POSE_DIM:], prob.lo[POSE_DIM:], prob.hi[POSE_DIM:])
        bad = ~np.isfinite(th).all(1)
        th[bad] = 0.0
        th[bad, :POSE_DIM] = _initial_pose(prob, tg[bad], cm[bad])
    else:
        th[:, :POSE_DIM] = _initial_pose(prob, tg, cm)
    if pose_iter > 0:
        th, _, _, _ = _lm(prob, th, tg, cm, max_iter=pose_iter, tol=tol, coefficients=False)
    return _lm(prob, th, tg, cm, max_iter=max_iter, tol=tol, coefficients=True)


def fit_landmarks(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera],
    *,
    max_iter: int = 40,
    reg_shape: float = 1e-4,
    reg_expression: float = 1e-4,
    init: FitResult | None = None,
    tol: float = 1e-3,
    bounded: bool = True,
    pose_iter: int = 10,
    max_rmse_fraction: float = 0.1,
) -> FitResult:
    """Fit pose, f_s and f_exp to B faces' 68 landmarks (B, 68, 2) at once (Sec. III-C).

    `camera` is one Camera for all faces or one per face. `init` starts from a previous
    result (e.g. the last video frame). A fit is `converged` when its energy stopped
    decreasing (relative change below `tol`) within `max_iter` LM iterations, every value is
    finite, and its RMSE is below `max_rmse_fraction` of the landmarks' bounding-box
    diagonal; faces with non-finite landmarks come back unconverged with NaN results.
    """
    target = np.asarray(landmarks, np.float64)
    if target.ndim == 2:
        target = target[None]
    if target.ndim != 3 or target.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (B, 68, 2), got {np.shape(landmarks)}")
    n = len(target)
    cams = _cameras(camera, n)
    prob = _Problem(model, reg_shape, reg_expression, bounded)
    ok = np.isfinite(target).all((1, 2)) & np.isfinite(cams).all(1)
    theta = np.full((n, POSE_DIM + prob.k), np.nan)
    energy = np.full(n, np.nan)
    converged = np.zeros(n, bool)
    iterations = np.zeros(n, np.int64)
    idx = np.flatnonzero(ok)
    if len(idx):
        with _single_threaded_blas():
            th, en, conv, its = _fit(
                prob, target[idx], cams[idx], init, idx, pose_iter, max_iter, tol
            )
        theta[idx], energy[idx], converged[idx], iterations[idx] = th, en, conv, its
    rmse = np.full(n, np.nan)
    if len(idx):
        rmse[idx] = _rmse(prob, theta[idx], target[idx], cams[idx])
    finite = np.isfinite(theta).all(1) & np.isfinite(energy) & np.isfinite(rmse)
    extent = np.full(n, np.nan)
    if len(idx):
        span = target[idx].max(1) - target[idx].min(1)
        extent[idx] = np.hypot(span[:, 0], span[:, 1])
    with np.errstate(invalid="ignore"):
        plausible = rmse <= max_rmse_fraction * extent
    converged &= finite & plausible
    return FitResult(
        pose=theta[:, :POSE_DIM],
        shape=theta[:, POSE_DIM : POSE_DIM + prob.ns],
        expression=theta[:, POSE_DIM + prob.ns :],
        rmse=rmse,
        energy=energy,
        converged=converged,
        iterations=iterations,
    )


def fit_energy(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera],
    pose: np.ndarray,
    shape: np.ndarray,
    expression: np.ndarray,
    *,
    reg_shape: float = 1e-4,
    reg_expression: float = 1e-4,
) -> np.ndarray:
    """The Sec. III-C energy of given states (B,) for landmarks (B, 68, 2)."""
    target = np.asarray(landmarks, np.float64).reshape(-1, 68, 2)
    n = len(target)
    prob = _Problem(model, reg_shape, reg_expression, bounded=False)
    theta = np.c_[
        np.asarray(pose, np.float64).reshape(n, POSE_DIM),
        np.asarray(shape, np.float64).reshape(n, prob.ns),
        np.asarray(expression, np.float64).reshape(n, prob.ne),
    ]
    res, _ = _evaluate(prob, theta, target, _cameras(camera, n), jacobian=False)
    return _energy(prob, theta, res)


class FaceResidual:
    """Residual and analytic Jacobian of ONE face (for a one-at-a-time solver such as
    scipy.optimize.least_squares); ||residual(theta)||^2 is the Sec. III-C energy."""

    def __init__(
        self,
        model: MorphableModel,
        landmarks: np.ndarray,
        camera: Camera,
        *,
        reg_shape: float = 1e-4,
        reg_expression: float = 1e-4,
    ) -> None:
        self.prob = _Problem(model, reg_shape, reg_expression, bounded=False)
        self.target = np.asarray(landmarks, np.float64).reshape(1, 68, 2)
        self.cams = _cameras(camera, 1)
        self.sqrt_reg = np.sqrt(self.prob.reg)
        self.size = POSE_DIM + self.prob.k

    def initial(self) -> np.ndarray:
        """Start point: scaled-orthographic pose of the mean shape, zero coefficients."""
        theta = np.zeros(self.size)
        theta[:POSE_DIM] = _initial_pose(self.prob, self.target, self.cams)[0]
        return theta

    def residual(self, theta: np.ndarray) -> np.ndarray:
        res, _ = _evaluate(self.prob, theta[None], self.target, self.cams, jacobian=False)
        return np.r_[res[0], self.sqrt_reg * theta[POSE_DIM:]]

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        _, jac = _evaluate(self.prob, theta[None], self.target, self.cams, jacobian=True)
        reg_rows = np.zeros((self.prob.k, self.size))
        reg_rows[:, POSE_DIM:] = np.diag(self.sqrt_reg)
        return np.r_[jac[0], reg_rows]


def fit_residuals_and_jacobian(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera,
    theta: np.ndarray,
    *,
    reg_shape: float = 1e-4,
    reg_expression: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Residual (rows + K,) and Jacobian (rows + K, 6 + K) of one face at theta = [pose, f_s,
    f_exp]: the same functions the batched solver uses (module docstring)."""
    fr = FaceResidual(model, landmarks, camera, reg_shape=reg_shape, reg_expression=reg_expression)
    theta = np.asarray(theta, np.float64)
    return fr.residual(theta), fr.jacobian(theta)
