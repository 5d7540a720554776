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
    signed distance to the detected polyline for each sliding landmark (1 row each, grouped
        by the polyline's number of segments)
    sqrt(reg_shape) f_s, sqrt(reg_expression) f_exp

Solver: Levenberg-Marquardt with analytic Jacobians over chunks of faces, no Python loop
per face. Residuals and the Jacobian come from one compiled loop over the chunk's faces
(numba, `_face_residuals`): given the pose, the model landmarks are linear in f_s and f_exp,
so their Jacobian columns are the bases seen through the projection's derivative, (g R) B
per residual row. The step is solved face by face in compiled kernels too (plain loops
around BLAS GEMM (J^T J) and LAPACK xPOTRF (its Cholesky factor) through numba's own
`np.dot` and `np.linalg.cholesky`; `_face_steps`); the LM's bookkeeping (acceptance,
damping, backtracking, convergence) is numpy over the chunk.
Each iteration solves

    (J^T J + diag(reg) + mu diag(J^T J) + ridge I) step = -(J^T r + reg * coefficients)

from one Cholesky factorisation per face of the whole matrix. J^T J and that factorisation
are float32 (half the time of float64); the gradient, the triangular solves, the box QP,
the residuals, the energies and the predicted decrease are float64, so the acceptance test
and the next iteration correct the step's rounding. With pose and shape (6 + N_s) first, the
factor's trailing block L22 gives the N_e x N_e Schur complement S = L22 L22^T of the
expression block, on which a short active-set loop meets f_exp in [0, 1] (`_box_qp`; it
never forms S, each pass factors only S's block of free variables); a face whose shape
reaches [-3, 3] takes the Schur complement of the pose block from the same factor and meets
the bounds on all coefficients. The step is projected onto the box and backtracked if it
does not lower E; the gain ratio (actual over predicted decrease) steers mu, which starts
at 1e-9 (plain Gauss-Newton steps, 3-5 iterations on noise-free landmarks). The identity
damping `ridge` on the coefficients starts at 1e-2 and shrinks 30-fold per iteration
(`COEF_DAMPING`). A face is converged when an accepted step lowered E by less than
tol * max(E, 1 px^2) and its model did not predict an increase of more than that (a step
clipped to the box before its active set settled can point uphill), or when no step lowers
E even with heavy damping. Initial pose: a scaled-orthographic fit of the mean shape
(closed form, one shared pseudo-inverse), refined by two pose-only steps. Faces still
unconverged after `CHUNK_ITER` iterations continue in one batch across chunks. Every
product is per face, so a face's fit does not depend on the faces batched with it.

The kernels are cached on disk (numba's cache: `__pycache__` next to this file, or
NUMBA_CACHE_DIR): the first process on a machine compiles them (about ten CPU-seconds), later
ones load them in well under a second, on first use (`compile_kernels` does it ahead, e.g.
before timing).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from glee.face.camera import Camera
from glee.face.morphable_model import MorphableModel

POSE_DIM = 6
SHAPE_BOUNDS = (-3.0, 3.0)
EXPRESSION_BOUNDS = (0.0, 1.0)
CHUNK = 128  # faces solved together (a loop over chunks bounds the memory per solve)
# LM iterations a chunk runs on its own; the few faces still unconverged after them continue
# in one batch across chunks, so they do not each pay a chunk's per-call overhead.
CHUNK_ITER = 5
STEP_FRACTIONS = (1.0, 0.25, 0.0625)  # backtracking along the projected step
RELEASE_GAIN = 1e-6  # px^2: freeing a pinned coefficient must lower E by more than this
LEAVE_TOL = 1e-7  # a step past a bound by less than this is clipped, not pinned
# Identity damping of the coefficients in LM iteration k: 1e-2 * 0.03^k (px^2 per unit^2).
# The first steps start from the mean shape's pose; without it they throw the weakly
# determined shape directions to their bounds, where some fits stay.
COEF_DAMPING = (1e-2, 0.03)
# Compiled kernels (residuals and Jacobian, the LM step), cached on disk (module docstring).
_jit = numba.njit(cache=True, fastmath={"reassoc", "contract", "arcp", "nsz"})


@dataclass
class FitResult:
    pose: np.ndarray  # (B, 6) yaw, pitch, roll (rad), tx, ty, tz (mm)
    shape: np.ndarray  # (B, Ns)
    expression: np.ndarray  # (B, Ne)
    rmse: np.ndarray  # (B,) pixels, plain point distance over the 68 landmarks
    energy: np.ndarray  # (B,) Sec. III-C energy at the solution
    converged: np.ndarray  # (B,) bool
    iterations: np.ndarray  # (B,) LM iterations over all unknowns


@functools.cache
def _blas_pools() -> object | None:
    """A threadpoolctl controller (None without threadpoolctl). Scanning the loaded
    libraries costs ~40 ms: once per process, not once per call."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it BLAS keeps its own thread count
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Batched small solves lose to thread start-up and contention: run BLAS on one thread."""
    pools = _blas_pools()
    if pools is None:
        yield
        return
    with pools.limit(limits=1, user_api="blas"):
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
        self.basis_flat = np.ascontiguousarray(basis.reshape(self.k, 68 * 3).T)  # (204, K)
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
        polyline: dict[int, tuple[int, ...]] = {}
        for contour in lm.contours.values():
            for j in contour[1:-1]:
                polyline.setdefault(int(j), tuple(int(c) for c in contour))
        self.points = np.array([i for i in range(68) if i not in polyline], np.int64)
        # Sliding landmarks grouped by the number of segments of their polyline; each one's
        # segments, as start and end indices into the detected landmarks, are the
        # slide_off[s]:slide_off[s + 1] entries of seg_start and seg_end.
        members = sorted(polyline, key=lambda j: (len(polyline[j]), j))
        self.sliding = np.array(members, np.int64).reshape(-1)
        self.slide_off = np.r_[0, np.cumsum([len(polyline[j]) - 1 for j in members])].astype(
            np.int64
        )
        self.seg_start = np.array([i for j in members for i in polyline[j][:-1]], np.int64)
        self.seg_end = np.array([i for j in members for i in polyline[j][1:]], np.int64)
        # Landmark of each data row: 2 rows per point landmark, then 1 per sliding landmark.
        self.row_landmark = np.r_[np.repeat(self.points, 2), self.sliding]
        self.rows = len(self.row_landmark)
        # Basis seen by each row, (rows, 3, K): a row's coefficient Jacobian is w (1, 3) @ it.
        self.basis_rows = np.ascontiguousarray(basis.transpose(1, 2, 0)[self.row_landmark])
        # A basis that moves no landmark (the default model has a few blendshapes that only
        # shade the rendering) leaves only its regulariser in E: its coefficient is 0 at the
        # optimum and LM leaves it out. The unknowns of the LM are the pose and the rest.
        moves = np.abs(basis).reshape(self.k, -1).max(1) > 0
        self.unknowns = np.r_[np.arange(POSE_DIM), POSE_DIM + np.flatnonzero(moves)]
        self.still = POSE_DIM + np.flatnonzero(~moves)  # theta columns held at 0
        self.pose_shape = POSE_DIM + int(moves[: self.ns].sum())  # unknowns before f_exp
        self.basis_fit = np.ascontiguousarray(self.basis_rows[..., moves])
        self.basis_none = np.zeros((self.rows, 3, 0))  # pose-only Jacobians
        # Closed-form scaled-orthographic pose init on the mean shape: [X 1]^+ (4, 68).
        design = np.c_[self.mean, np.ones(68)]
        self.mean_pinv = np.linalg.pinv(design)


def _cameras(camera: Camera | Sequence[Camera] | np.ndarray, n: int) -> np.ndarray:
    """(n, 3) focal, cx, cy (from one Camera, one per face, or such an (n, 3) array)."""
    if isinstance(camera, np.ndarray) and camera.ndim == 2:
        if camera.shape != (n, 3):
            raise ValueError(f"camera array must be ({n}, 3), got {camera.shape}")
        return camera.astype(np.float64)
    if isinstance(camera, Camera):
        return np.tile([camera.focal, camera.cx, camera.cy], (n, 1)).astype(np.float64)
    cams = list(camera)
    if len(cams) != n:
        raise ValueError(f"got {len(cams)} cameras for {n} faces; pass one or one per face")
    return np.array([[c.focal, c.cx, c.cy] for c in cams], np.float64)


def _rotation_and_axes(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R = Rz(roll) Ry(yaw) Rx(pitch) (n, 3, 3) and the camera-frame axis of each angle
    (n, 3 angles, 3): d(R x)/d angle_k = axis_k x (R x), since Rz Ry Rx is a product of
    rotations about e_z, then the once-rolled e_y, then the fully rotated e_x."""
    cy, sy = np.cos(angles[:, 0]), np.sin(angles[:, 0])
    cp, sp = np.cos(angles[:, 1]), np.sin(angles[:, 1])
    cr, sr = np.cos(angles[:, 2]), np.sin(angles[:, 2])
    rot = np.empty((len(angles), 3, 3))
    rot[:, 0, 0] = cr * cy
    rot[:, 0, 1] = cr * sy * sp - sr * cp
    rot[:, 0, 2] = cr * sy * cp + sr * sp
    rot[:, 1, 0] = sr * cy
    rot[:, 1, 1] = sr * sy * sp + cr * cp
    rot[:, 1, 2] = sr * sy * cp - cr * sp
    rot[:, 2, 0] = -sy
    rot[:, 2, 1] = cy * sp
    rot[:, 2, 2] = cy * cp
    axes = np.zeros((len(angles), 3, 3))
    axes[:, 0, 0] = -sr  # yaw: Rz e_y
    axes[:, 0, 1] = cr
    axes[:, 1] = rot[:, :, 0]  # pitch: R e_x
    axes[:, 2, 2] = 1.0  # roll: e_z
    return rot, axes


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
    # (n, T, 7) every sliding landmark's polyline segments, landmark after landmark
    # (`_Problem.slide_off`): start ax, ay; vector dx, dy; 1/|d|^2; unit left normal nx, ny
    segments: np.ndarray

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, idx: np.ndarray) -> _Targets:
        return _Targets(self.points[idx], self.segments[idx])


def _targets(prob: _Problem, target: np.ndarray) -> _Targets:
    n = len(target)
    a = target[:, prob.seg_start]  # (n, T, 2)
    d = target[:, prob.seg_end] - a  # segment vectors
    dd = d[..., 0] ** 2 + d[..., 1] ** 2
    inv_dd = np.where(dd > 1e-12, 1.0 / np.maximum(dd, 1e-12), 0.0)
    unit = np.sqrt(inv_dd)
    # The unit left normal (-dy, dx) gives the point-to-curve distance its sign.
    segments = np.stack(
        [a[..., 0], a[..., 1], d[..., 0], d[..., 1], inv_dd, -d[..., 1] * unit, d[..., 0] * unit],
        -1,
    )
    points = target[:, prob.points].reshape(n, -1)
    return _Targets(np.ascontiguousarray(points), np.ascontiguousarray(segments))


def _rotated_model(prob: _Problem, theta: np.ndarray) -> np.ndarray:
    """The model's landmarks (Eq. 5) rotated into the camera frame, R x (n, 68, 3)."""
    n = len(theta)
    # One product per face (not one for the batch): a face's result must not depend on
    # which faces share its batch, to the last bit.
    x = prob.mean + (theta[:, None, POSE_DIM:] @ prob.basis_flat.T).reshape(n, 68, 3)
    rot, _ = _rotation_and_axes(theta[:, :3])
    return x @ rot.transpose(0, 2, 1)


@_jit
def _face_residuals(
    mean: np.ndarray,
    basis_flat: np.ndarray,
    points: np.ndarray,
    sliding: np.ndarray,
    slide_off: np.ndarray,
    basis_rows: np.ndarray,
    row_landmark: np.ndarray,
    theta: np.ndarray,
    cams: np.ndarray,
    tpoints: np.ndarray,
    segments: np.ndarray,
    jacobian: bool,
    res: np.ndarray,
    jac: np.ndarray,
) -> None:
    """Residuals `res` (n, rows) and, if `jacobian`, their Jacobian `jac` (rows, n, 6 + C)
    with respect to the pose and the C coefficients of `basis_rows` (rows, 3, C), face by
    face (`_evaluate` documents the arguments)."""
    n, k = theta.shape[0], basis_flat.shape[1]
    npt, cols = len(points), basis_rows.shape[2]
    y = np.empty((68, 3))  # camera frame
    rx = np.empty((68, 3))  # R x
    g = np.empty((len(row_landmark), 3))  # d residual / d camera-frame point
    rot = np.empty((3, 3))
    for i in range(n):
        yaw, pitch, roll = theta[i, 0], theta[i, 1], theta[i, 2]
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        cr, sr = np.cos(roll), np.sin(roll)
        # R = Rz(roll) Ry(yaw) Rx(pitch), as `_rotation_and_axes`
        rot[0, 0], rot[0, 1], rot[0, 2] = cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp
        rot[1, 0], rot[1, 1], rot[1, 2] = sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp
        rot[2, 0], rot[2, 1], rot[2, 2] = -sy, cy * sp, cy * cp
        f, cx0, cy0 = cams[i, 0], cams[i, 1], cams[i, 2]
        for lm in range(68):  # Eq. 5 landmarks: x = mean + B f, then R x + t
            x0, x1, x2 = mean[lm, 0], mean[lm, 1], mean[lm, 2]
            for j in range(k):
                c = theta[i, POSE_DIM + j]
                x0 += basis_flat[3 * lm, j] * c
                x1 += basis_flat[3 * lm + 1, j] * c
                x2 += basis_flat[3 * lm + 2, j] * c
            for a in range(3):
                rx[lm, a] = rot[a, 0] * x0 + rot[a, 1] * x1 + rot[a, 2] * x2
                y[lm, a] = rx[lm, a] + theta[i, 3 + a]
        for p in range(npt):  # point landmarks: u - u*, v - v*
            lm = points[p]
            inv_z = 1.0 / y[lm, 2]
            xz, yz = y[lm, 0] * inv_z, y[lm, 1] * inv_z
            res[i, 2 * p] = f * xz + cx0 - tpoints[i, 2 * p]
            res[i, 2 * p + 1] = f * yz + cy0 - tpoints[i, 2 * p + 1]
            fz = f * inv_z
            g[2 * p, 0], g[2 * p, 1], g[2 * p, 2] = fz, 0.0, -fz * xz
            g[2 * p + 1, 0], g[2 * p + 1, 1], g[2 * p + 1, 2] = 0.0, fz, -fz * yz
        for s in range(len(sliding)):  # Sec. III-C: signed distance to the detected polyline
            lm, row = sliding[s], 2 * npt + s
            inv_z = 1.0 / y[lm, 2]
            xz, yz = y[lm, 0] * inv_z, y[lm, 1] * inv_z
            u, v = f * xz + cx0, f * yz + cy0
            best, bx, by, bnx, bny = np.inf, 0.0, 0.0, 0.0, 0.0
            for m in range(slide_off[s], slide_off[s + 1]):
                seg = segments[i, m]
                ex, ey = u - seg[0], v - seg[1]
                t = min(max((ex * seg[2] + ey * seg[3]) * seg[4], 0.0), 1.0)
                ex -= t * seg[2]  # offset from the foot on this segment
                ey -= t * seg[3]
                d2 = ex * ex + ey * ey
                if d2 < best:  # the first nearest segment on ties
                    best, bx, by, bnx, bny = d2, ex, ey, seg[5], seg[6]
            dist = np.sqrt(bx * bx + by * by)
            if bx * bnx + by * bny < 0:
                dist = -dist
            res[i, row] = dist
            # d distance / d projected point: the unit offset from the foot (the segment's
            # normal when the point lies on the curve).
            if abs(dist) > 1e-9:
                ux, uy = bx / dist, by / dist
            else:
                ux, uy = bnx, bny
            fz = f * inv_z
            g[row, 0], g[row, 1], g[row, 2] = fz * ux, fz * uy, -fz * (ux * xz + uy * yz)
        if not jacobian:
            continue
        for r in range(len(row_landmark)):
            lm = row_landmark[r]
            g0, g1, g2 = g[r, 0], g[r, 1], g[r, 2]
            # Pose: d y / d angle_a = axis_a x (R x), so the entry is axis_a . (R x  x  g),
            # with axes Rz e_y (yaw), R e_x (pitch), e_z (roll); d y / d t = I.
            q0, q1, q2 = rx[lm, 0], rx[lm, 1], rx[lm, 2]
            c0, c1, c2 = q1 * g2 - q2 * g1, q2 * g0 - q0 * g2, q0 * g1 - q1 * g0
            jac[r, i, 0] = -sr * c0 + cr * c1
            jac[r, i, 1] = rot[0, 0] * c0 + rot[1, 0] * c1 + rot[2, 0] * c2
            jac[r, i, 2] = c2
            jac[r, i, 3], jac[r, i, 4], jac[r, i, 5] = g0, g1, g2
            # Coefficients: d y / d f = R B, so the entries are (g R) B.
            w0 = g0 * rot[0, 0] + g1 * rot[1, 0] + g2 * rot[2, 0]
            w1 = g0 * rot[0, 1] + g1 * rot[1, 1] + g2 * rot[2, 1]
            w2 = g0 * rot[0, 2] + g1 * rot[1, 2] + g2 * rot[2, 2]
            for j in range(cols):
                jac[r, i, POSE_DIM + j] = (
                    w0 * basis_rows[r, 0, j] + w1 * basis_rows[r, 1, j] + w2 * basis_rows[r, 2, j]
                )


def _evaluate(
    prob: _Problem,
    theta: np.ndarray,
    target: np.ndarray | _Targets,
    cams: np.ndarray,
    jacobian: bool,
    columns: str = "all",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Data residuals (n, rows) and, if asked, their Jacobian (n, rows, cols): with respect
    to all of theta (`columns="all"`, 6 + K), the LM's unknowns ("fit", `_Problem.unknowns`)
    or the pose alone ("pose").

    theta (n, 6 + K); target (n, 68, 2) detected landmarks (or their `_Targets`); cams (n, 3).
    Both come from one compiled loop over the faces (`_face_residuals`). The Jacobian is a
    view of a (rows, n, cols) array, whose face blocks are strided matrices that BLAS and
    the step's kernels read without a copy.
    """
    tg = target if isinstance(target, _Targets) else _targets(prob, target)
    theta = np.ascontiguousarray(theta, np.float64)
    n = len(theta)
    basis = {"all": prob.basis_rows, "fit": prob.basis_fit, "pose": prob.basis_none}[columns]
    res = np.empty((n, prob.rows))
    jac = np.empty((prob.rows, n, POSE_DIM + basis.shape[-1]) if jacobian else (0, 0, 0))
    _face_residuals(
        prob.mean, prob.basis_flat, prob.points, prob.sliding, prob.slide_off, basis,
        prob.row_landmark, theta, np.ascontiguousarray(cams, np.float64), tg.points,
        tg.segments, jacobian, res, jac,
    )  # fmt: skip
    return res, (jac.transpose(1, 0, 2) if jacobian else None)


def _energy(prob: _Problem, theta: np.ndarray, residual: np.ndarray) -> np.ndarray:
    coef = theta[:, POSE_DIM:]
    return np.einsum("nr,nr->n", residual, residual) + np.einsum("nk,k->n", coef * coef, prob.reg)


def _rmse(prob: _Problem, theta: np.ndarray, target: np.ndarray, cams: np.ndarray) -> np.ndarray:
    """Plain point-to-point RMSE over the 68 landmarks, pixels."""
    rx = _rotated_model(prob, theta)
    y = rx + theta[:, None, 3:6]
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


# -- the box-constrained Levenberg-Marquardt step, compiled per face ------------------------------
# Each kernel below works on one face and `_face_steps` loops over the batch, so a face's step
# is the same arithmetic whichever faces share its batch. They are plain loops around BLAS
# GEMM (J^T J, `np.dot`) and LAPACK xPOTRF (`np.linalg.cholesky`), which numba calls through
# scipy's Cython interface looked up at load time, so the compiled code is cached on disk.


@_jit
def _cholesky(a: np.ndarray) -> tuple[bool, np.ndarray]:
    """The Cholesky factor L (A = L L^T; lower-triangular, zero above) of an SPD (m, m)
    C-ordered float32 or float64 matrix given by its lower triangle (LAPACK xPOTRF reads
    only that). (False, a) if A is not positive definite or not finite."""
    m = a.shape[0]
    for i in range(m):
        for k in range(i + 1):
            if not np.isfinite(a[i, k]):
                return False, a
    try:
        return True, np.linalg.cholesky(a)
    except Exception:  # LinAlgError: not positive definite
        return False, a


@_jit
def _forward(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve L x = b for the leading (m, m) block of a lower-triangular L, m = len(b)."""
    x = np.empty(len(b))
    for i in range(len(b)):
        acc = b[i]
        for k in range(i):
            acc -= low[i, k] * x[k]
        x[i] = acc / low[i, i]
    return x


@_jit
def _backward(low: np.ndarray, b: np.ndarray, sign: float) -> np.ndarray:
    """Solve L^T x = sign * b for the leading (m, m) block of a lower-triangular L,
    m = len(b), row by row of L."""
    x = np.empty(len(b))
    for i in range(len(b)):
        x[i] = sign * b[i]
    for i in range(len(b) - 1, -1, -1):
        x[i] /= low[i, i]
        for k in range(i):
            x[k] -= low[i, k] * x[i]
    return x


@_jit
def _model_gradient(root: np.ndarray, s_vec: np.ndarray, d: np.ndarray) -> np.ndarray:
    """S d + s for S = R R^T, R lower-triangular (k, k): R (R^T d) + s."""
    k = len(d)
    y = np.zeros(k)  # R^T d
    for i in range(k):
        for t in range(i + 1):
            y[t] += root[i, t] * d[i]
    out = s_vec.copy()
    for i in range(k):
        for t in range(i + 1):
            out[i] += root[i, t] * y[t]
    return out


@_jit
def _solve_free(root: np.ndarray, s_vec: np.ndarray, pinned: np.ndarray, value: np.ndarray):
    """min s.d + d.S.d / 2 (S = R R^T, R lower-triangular and invertible) with d = value on
    the pinned variables: d_F solves S_FF d_F = -(s + S_FP value_P)_F."""
    k = len(s_vec)
    d = np.zeros(k)
    for j in range(k):
        if pinned[j]:
            d[j] = value[j]
    rhs = _model_gradient(root, s_vec, d)
    idx = np.empty(k, np.int64)
    m = 0
    for j in range(k):
        if not pinned[j]:
            idx[m] = j
            m += 1
    if m == k:  # nothing pinned: S^-1 = R^-T R^-1
        return _backward(root, _forward(root, rhs), -1.0)
    sub = np.empty((m, m))  # S_FF, lower triangle: S[i, j] = R[i, :j+1] . R[j, :j+1], j <= i
    b = np.empty(m)
    for a in range(m):
        b[a] = rhs[idx[a]]
        row_a = root[idx[a]]
        for c in range(a + 1):
            row_c = root[idx[c]]
            acc = 0.0
            for t in range(idx[c] + 1):
                acc += row_a[t] * row_c[t]
            sub[a, c] = acc
    ok, low = _cholesky(sub)
    if ok:  # S_FF is SPD; if rounding says not, the free part stays 0
        y = _backward(low, _forward(low, b), -1.0)
        for a in range(m):
            d[idx[a]] = y[a]
    return d


@_jit
def _box_qp(
    root: np.ndarray,
    s_vec: np.ndarray,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    hint: np.ndarray,
    passes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """min s.d + d.S.d / 2 subject to room_lo <= d <= room_hi (room_lo <= 0 <= room_hi) by an
    active set, for one SPD S = R R^T given by its lower-triangular R (k, k) (e.g. the
    expression block's Schur complement, `_eliminate`). S is never formed: each pass builds
    only its free block.

    A variable at a bound starts pinned there if `hint` (its last active set) says so or its
    gradient pushes outwards. Each pass solves for the free variables with the pinned ones
    at their bounds. The first pass then pins every free variable that leaves the box at
    the bound it crosses and frees every pinned one whose multiplier wants it back inside
    (if that lowers the model by more than RELEASE_GAIN); later passes only pin. After
    `passes` passes d is clipped to the box: the exact minimum once the active set has
    settled, a feasible step otherwise (the LM's backtracking guards the rest). Returns d
    and the final active set.
    """
    k = len(s_vec)
    pinned = np.empty(k, np.bool_)
    for j in range(k):
        at_lo = room_lo[j] >= 0 and (hint[j] or s_vec[j] > 0)
        pinned[j] = at_lo or (room_hi[j] <= 0 and (hint[j] or s_vec[j] < 0))
    value = np.zeros(k)  # step of each pinned variable: to its bound
    d = value
    for it in range(passes):
        d = _solve_free(root, s_vec, pinned, value)
        mult = _model_gradient(root, s_vec, d) if it == 0 else s_vec  # to free variables
        changed = False
        for j in range(k):
            if not pinned[j]:
                if d[j] < room_lo[j] - LEAVE_TOL:
                    pinned[j], value[j], changed = True, room_lo[j], True
                elif d[j] > room_hi[j] + LEAVE_TOL:
                    pinned[j], value[j], changed = True, room_hi[j], True
            elif it == 0:
                s_jj = 0.0
                for t in range(j + 1):
                    s_jj += root[j, t] * root[j, t]
                inwards = (value[j] <= room_lo[j] and mult[j] < 0) or (
                    value[j] >= room_hi[j] and mult[j] > 0
                )
                if inwards and mult[j] * mult[j] > 2.0 * RELEASE_GAIN * s_jj:
                    pinned[j], changed = False, True
        if not changed:
            break
    for j in range(k):
        d[j] = min(max(d[j], room_lo[j]), room_hi[j])
    return d, pinned


@_jit
def _eliminate(
    low: np.ndarray,
    z: np.ndarray,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    hint: np.ndarray,
    passes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise g.d + d.H.d / 2 with a box on its last k = len(room_lo) entries d[m:], given
    H = L L^T (p, p) and z = L^-1 g: with L = [[L11, 0], [L21, L22]] the unbounded block's
    Schur complement is S = L22 L22^T and the reduced gradient L22 z2, so `_box_qp` runs
    on them and d[:m] = -L11^-T (z1 + L21^T d[m:]). Returns d and the active set of d[m:]."""
    p, k = len(z), len(room_lo)
    m = p - k
    root = np.empty((k, k))  # L22, lower triangle
    s_vec = np.zeros(k)
    for i in range(k):
        for t in range(i + 1):
            root[i, t] = low[m + i, m + t]
            s_vec[i] += root[i, t] * z[m + t]
    d_c, active = _box_qp(root, s_vec, room_lo, room_hi, hint, passes)
    rhs = np.empty(m)
    for a in range(m):
        rhs[a] = z[a]
    for i in range(k):  # + L21^T d[m:]
        for a in range(m):
            rhs[a] += low[m + i, a] * d_c[i]
    d_a = _backward(low, rhs, -1.0)  # L11 is low's leading (m, m) block
    d = np.empty(p)
    for a in range(p):
        d[a] = d_a[a] if a < m else d_c[a - m]
    return d, active


@_jit
def _face_step(
    h: np.ndarray,
    grad: np.ndarray,
    reg: np.ndarray,
    mu: float,
    ridge: float,
    q: int,
    room_lo: np.ndarray,
    room_hi: np.ndarray,
    hint: np.ndarray,
    passes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One face's box-constrained LM step (`_lm_step`), given the lower triangle of its
    J^T J in h (p, p), whose diagonal it overwrites with the damped one."""
    p = len(grad)
    diag = np.empty(p)  # the damped diagonal
    for start, stop in ((0, q), (q, p)):  # pose and shape, then f_exp
        floor = 0.0
        for i in range(start, stop):
            floor = max(floor, h[i, i])
        floor = 1e-9 * floor + 1e-12
        for i in range(start, stop):
            damp = reg[i] + (ridge if i >= POSE_DIM else 0.0)
            diag[i] = h[i, i] + damp + mu * max(h[i, i], floor)
            h[i, i] = diag[i]
    finite = True
    scale = 1e-12
    for i in range(p):
        finite &= np.isfinite(diag[i]) and np.isfinite(grad[i])
        scale = max(scale, abs(diag[i]) + 1e-12)
    ok, low = _cholesky(h) if finite else (False, h)  # float32 L, read as float64 below
    for extra in (1e-9, 1e-6, 1e-3, 1.0):  # a degenerate face: damp its step harder
        if ok or not finite:
            break
        for i in range(p):
            diag[i] += extra * scale
            h[i, i] = diag[i]
        ok, low = _cholesky(h)
    if not ok:
        return np.zeros(p), hint.copy()  # no step
    z = _forward(low, grad)
    at_bound = False
    for j in range(POSE_DIM, q):
        at_bound |= room_lo[j] >= 0 or room_hi[j] <= 0
    step = np.zeros(p)
    active = np.zeros(len(hint), np.bool_)
    if not at_bound:
        c = q - POSE_DIM
        step, act = _eliminate(low, z, room_lo[q:], room_hi[q:], hint[c:], passes)
        for j in range(len(act)):
            active[c + j] = act[j]
        for j in range(POSE_DIM, q):
            at_bound |= step[j] < room_lo[j] - LEAVE_TOL or step[j] > room_hi[j] + LEAVE_TOL
    if at_bound:  # the shape reaches [-3, 3]: only the pose eliminated
        step, active = _eliminate(low, z, room_lo[POSE_DIM:], room_hi[POSE_DIM:], hint, passes)
    return step, active


@_jit
def _face_steps(
    jac: np.ndarray,
    grad: np.ndarray,
    vars_: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    reg: np.ndarray,
    mu: np.ndarray,
    ridge: float,
    q: int,
    hint: np.ndarray,
    passes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`_face_step` for each face of a batch (`_lm_step`), jac (rows, n, p) rows first."""
    rows, n, p = jac.shape
    step = np.empty((n, p))
    active = np.empty_like(hint)
    room_lo, room_hi = np.empty(p), np.empty(p)
    jac32 = np.empty((rows, p), np.float32)
    gram = np.empty((p, p), np.float32)
    for i in range(n):
        for r in range(rows):
            for j in range(p):
                jac32[r, j] = jac[r, i, j]
        np.dot(jac32.T, jac32, gram)  # J^T J (p, p), BLAS SGEMM
        for j in range(p):
            room_lo[j], room_hi[j] = lo[j] - vars_[i, j], hi[j] - vars_[i, j]
        d, act = _face_step(gram, grad[i], reg, mu[i], ridge, q, room_lo, room_hi, hint[i],
                            passes)  # fmt: skip
        for j in range(p):
            step[i, j] = d[j]
        for j in range(len(act)):
            active[i, j] = act[j]
    return step, active


def _lm_step(
    jac: np.ndarray,
    grad: np.ndarray,
    vars_: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    reg: np.ndarray,
    mu: np.ndarray,
    ridge: float,
    q: int,
    hint: np.ndarray,
    passes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The box-constrained LM steps of a batch of faces: solve
        (J^T J + diag(reg) + mu diag(J^T J) + ridge I_coef) step = -(J^T r + reg * vars)
    with lo <= vars + step <= hi, from one Cholesky factorisation of the whole matrix per
    face. While no shape coefficient is at or crosses its bound, pose and shape (the first q
    unknowns) are eliminated and the bounds f_exp in [0, 1] are met on the expression
    block's N_e x N_e Schur complement; a face whose shape does reach [-3, 3] is solved
    again with only the pose eliminated and the bounds met on all coefficients.

    jac (n, rows, p); grad (n, p) = J^T r + reg * vars; mu (n,); `hint` and the returned
    active set cover the coefficients (n, p - 6). J^T J and its Cholesky factorisation are
    float32 (half the time of float64; the LM's acceptance test and its next iteration,
    both float64, absorb the step's rounding), everything else float64.
    """
    c64 = functools.partial(np.ascontiguousarray, dtype=np.float64)
    return _face_steps(
        c64(jac.transpose(1, 0, 2)),  # (rows, n, p): `_evaluate`'s layout, no copy
        c64(grad), c64(vars_), c64(lo), c64(hi), c64(reg), c64(mu), float(ridge), int(q),
        np.ascontiguousarray(hint, dtype=bool), int(passes),
    )  # fmt: skip


def compile_kernels() -> float:
    """Load the fit's kernels now (`fit_landmarks` otherwise does it on its first call):
    from numba's on-disk cache, well under a second, or compiled and written to that cache
    by the first process on a machine (about ten CPU-seconds). Returns the seconds it took."""
    start = time.perf_counter()
    p, q = POSE_DIM + 3, POSE_DIM + 1  # pose, one shape and two expression coefficients
    jac = np.random.default_rng(0).normal(size=(2, 2 * p, p))
    lo = np.r_[np.full(POSE_DIM, -np.inf), np.full(p - POSE_DIM, -1.0)]
    hint = np.zeros((2, p - POSE_DIM), bool)
    _lm_step(jac, np.ones((2, p)), np.zeros((2, p)), lo, -lo, np.ones(p), np.ones(2), 0.0, q,
             hint, 2)  # fmt: skip
    # Residuals of one face of a one-basis model: landmark 0 a point, landmark 1 sliding on
    # the one-segment polyline 0-2, the rest unused.
    mean = np.c_[np.zeros((68, 2)), np.full(68, 500.0)]
    one, idx = np.ones((1, 2)), functools.partial(np.array, dtype=np.int64)
    _face_residuals(
        mean, np.ones((204, 1)), idx([0]), idx([1]), idx([0, 1]), np.ones((3, 3, 1)),
        idx([0, 0, 1]), np.zeros((1, POSE_DIM + 1)), np.array([[500.0, 0.0, 0.0]]), one,
        np.ones((1, 1, 7)), True, np.empty((1, 3)), np.empty((3, 1, POSE_DIM + 1)),
    )  # fmt: skip
    return time.perf_counter() - start


def _levenberg_marquardt(
    prob: _Problem,
    theta: np.ndarray,
    target: _Targets,
    cams: np.ndarray,
    *,
    max_iter: int,
    tol: float,
    pose_only: bool,
    passes: int = 4,
    energy: np.ndarray | None = None,
    first_iter: int = 0,
    mu: np.ndarray | None = None,
    active: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Projected LM over a batch, iterations first_iter .. max_iter - 1; returns theta,
    energy, converged, iterations (run here), and the damping mu and active set to continue
    from. `energy` is E(theta) when the caller already has it; `mu` and `active` continue
    an earlier call.

    A face is converged when an accepted step lowers its energy by less than
    tol * max(E, 1 px^2) (and its model did not predict an increase of more than that), or
    when no step lowers it even with heavy damping.
    """
    n = len(theta)
    theta = theta.copy()
    cols = prob.unknowns[:POSE_DIM] if pose_only else prob.unknowns
    columns = "pose" if pose_only else "fit"
    q = min(len(cols), prob.pose_shape)
    lo, hi = prob.lo[cols], prob.hi[cols]
    reg = np.r_[np.zeros(POSE_DIM), prob.reg][cols]
    if energy is None:
        res, _ = _evaluate(prob, theta, target, cams, jacobian=False)
        energy = _energy(prob, theta, res)
    energy = energy.copy()
    # Coefficients outside this LM (all of them in the pose-only phase) keep their share of
    # the regulariser fixed.
    outside = np.setdiff1d(np.arange(POSE_DIM, theta.shape[1]), cols)
    reg_all = np.r_[np.zeros(POSE_DIM), prob.reg]
    fixed_reg = np.einsum("nk,k->n", theta[:, outside] ** 2, reg_all[outside])
    mu = np.full(n, 1e-9) if mu is None else mu.copy()
    converged = np.zeros(n, bool)
    iterations = np.zeros(n, np.int64)
    alive = np.flatnonzero(np.isfinite(energy))
    if active is None:
        active = np.zeros((n, len(cols) - POSE_DIM), bool)  # the coefficients' active set
    active = active.copy()
    for it in range(first_iter, max_iter):
        if len(alive) == 0:
            break
        if len(alive) == n:
            th, tg, cm = theta, target, cams
        else:
            th, tg, cm = theta[alive], target[alive], cams[alive]
        res, jac = _evaluate(prob, th, tg, cm, jacobian=True, columns=columns)
        vars_ = th[:, cols]
        ridge = COEF_DAMPING[0] * COEF_DAMPING[1] ** it
        grad = (res[:, None, :] @ jac)[:, 0] + reg * vars_  # (n, p), half the gradient
        step, act = _lm_step(
            jac, grad, vars_, lo, hi, reg, mu[alive], ridge, q, active[alive], passes
        )

        # Backtrack along the projected step; keep the first fraction that lowers E.
        old = energy[alive]
        new_th = th.copy()
        new_th[:, cols] = np.clip(vars_ + step, lo, hi)
        r_new, _ = _evaluate(prob, new_th, tg, cm, jacobian=False)
        new_energy = _energy(prob, new_th, r_new)
        # Gain ratio of the (projected) full step: the actual decrease of E over the one
        # its linearisation predicts; it steers the damping.
        new_vars = new_th[:, cols]
        lin = res + (jac @ (new_vars - vars_)[..., None])[..., 0]
        predicted = old - np.einsum("nr,nr->n", lin, lin) - np.einsum("np,p->n", new_vars**2, reg)
        predicted -= fixed_reg[alive]
        gain = (old - new_energy) / np.maximum(predicted, 1e-300)
        full_step = new_energy < old
        pending = np.flatnonzero(~full_step)
        for frac in STEP_FRACTIONS[1:]:
            if len(pending) == 0:
                break
            trial = th[pending]
            trial[:, cols] = np.clip(vars_[pending] + frac * step[pending], lo, hi)
            r_trial, _ = _evaluate(prob, trial, tg[pending], cm[pending], jacobian=False)
            e_trial = _energy(prob, trial, r_trial)
            ok = e_trial < old[pending]
            new_th[pending[ok]], new_energy[pending[ok]] = trial[ok], e_trial[ok]
            pending = pending[~ok]

        active[alive] = act
        better = new_energy < old  # False for NaN
        iterations[alive] += 1
        acc = alive[better]
        theta[acc], energy[acc] = new_th[better], new_energy[better]
        # Damping: down when the model predicted the full step well, up when it did not,
        # more when only a fraction of the step (or none) lowered E.
        factor = np.where(gain > 0.75, 0.1, np.where(gain < 0.25, 10.0, 1.0))
        factor = np.where(full_step, factor, np.where(better, 10.0, 100.0))
        mu[alive] = np.maximum(mu[alive] * factor, 1e-12)
        # A small decrease ends the fit only when its step went down on its own model: a
        # step clipped to the box before its active set settled can go uphill on it, and
        # the sliver of it that backtracking keeps says nothing about convergence (with a
        # predicted rise of 0.66 E allowed, a face noised by 2 px stopped after 2
        # iterations at 1.3x the truth's energy).
        scale = np.maximum(new_energy, 1.0)
        tiny = tol * scale
        small = better & (predicted > -tiny) & (old - new_energy <= tiny)
        stuck = ~better & (mu[alive] > 1e4)  # damped to a tiny gradient step: no progress left
        done = small | stuck
        converged[alive[done]] = True
        alive = alive[~done]
    return theta, energy, converged, iterations, mu, active


def _fit(
    prob: _Problem,
    tg: np.ndarray,
    cm: np.ndarray,
    init: FitResult | None,
    idx: np.ndarray,
    pose_iter: int,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, ...]:
    """Initial pose, pose-only LM, then LM over pose and coefficients (`_levenberg_marquardt`
    returns)."""
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
    th[:, prob.still] = 0.0  # coefficients that move no landmark: 0 minimises E
    targets = _targets(prob, tg)  # the detected contours, once per fit
    energy = None
    if pose_iter > 0:
        th, energy, *_ = _levenberg_marquardt(
            prob, th, targets, cm, max_iter=pose_iter, tol=tol, pose_only=True
        )
    return _levenberg_marquardt(
        prob, th, targets, cm, max_iter=max_iter, tol=tol, pose_only=False, energy=energy
    )


def fit_landmarks(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera],
    *,
    max_iter: int = 20,
    reg_shape: float = 1e-4,
    reg_expression: float = 1e-4,
    init: FitResult | None = None,
    tol: float = 1e-3,
    bounded: bool = True,
    pose_iter: int = 2,
    max_rmse_fraction: float = 0.1,
) -> FitResult:
    """Fit pose, f_s and f_exp to B faces' 68 landmarks (B, 68, 2) at once (Sec. III-C).

    `camera` is one Camera for all faces or one per face. `init` starts from a previous
    result (e.g. the last video frame). A fit is `converged` when an LM step that went down
    its model lowered the energy by less than `tol` * max(energy, 1 px^2) (or no step could
    lower it) within `max_iter` iterations, every value is finite, and its RMSE is
    below `max_rmse_fraction` of the landmarks' bounding-box diagonal; faces with non-finite
    landmarks come back unconverged with NaN results. The first call in a process compiles
    the step's kernels (`compile_kernels`).
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
    rmse = np.full(n, np.nan)
    extent = np.full(n, np.nan)
    idx_all = np.flatnonzero(ok)
    first = min(max_iter, CHUNK_ITER)
    mu = np.full(n, 1e-9)
    active = np.zeros((n, len(prob.unknowns) - POSE_DIM), bool)
    with _single_threaded_blas():
        for start in range(0, len(idx_all), CHUNK):  # chunks of faces, each one batched solve
            idx = idx_all[start : start + CHUNK]
            th, en, conv, its, mu[idx], active[idx] = _fit(
                prob, target[idx], cams[idx], init, idx, pose_iter, first, tol
            )
            theta[idx], energy[idx], converged[idx], iterations[idx] = th, en, conv, its
        # Faces that ran all `first` iterations unconverged continue, batched together.
        rest = idx_all[~converged[idx_all] & (iterations[idx_all] == first)]
        for start in range(0, len(rest) if first < max_iter else 0, CHUNK):
            idx = rest[start : start + CHUNK]
            th, en, conv, its, _, _ = _levenberg_marquardt(
                prob, theta[idx], _targets(prob, target[idx]), cams[idx], max_iter=max_iter,
                tol=tol, pose_only=False, energy=energy[idx], first_iter=first, mu=mu[idx],
                active=active[idx],
            )  # fmt: skip
            theta[idx], energy[idx], converged[idx] = th, en, conv
            iterations[idx] += its
        for start in range(0, len(idx_all), CHUNK):
            idx = idx_all[start : start + CHUNK]
            rmse[idx] = _rmse(prob, theta[idx], target[idx], cams[idx])
            span = target[idx].max(1) - target[idx].min(1)
            extent[idx] = np.hypot(span[:, 0], span[:, 1])
    finite = np.isfinite(theta).all(1) & np.isfinite(energy) & np.isfinite(rmse)
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
        target = np.asarray(landmarks, np.float64).reshape(1, 68, 2)
        self.target = _targets(self.prob, target)
        self.cams = _cameras(camera, 1)
        self.sqrt_reg = np.sqrt(self.prob.reg)
        self.size = POSE_DIM + self.prob.k
        self._raw = target

    def initial(self) -> np.ndarray:
        """Start point: scaled-orthographic pose of the mean shape, zero coefficients."""
        theta = np.zeros(self.size)
        theta[:POSE_DIM] = _initial_pose(self.prob, self._raw, self.cams)[0]
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


# -- one shape per person (departs from Sec. III-C, which fits every frame on its own) -----------
SHAPE_FRAMES = 256  # frames of a subject the shape pass reads (evenly spaced); all are fitted
# At most this many rounds of (frames with the shape fixed, one joint Gauss-Newton shape
# step) under each prior; a round whose step moves no coefficient by SHAPE_TOL is the last.
SHAPE_ROUNDS = 12
SHAPE_TOL = 1e-3
_PINNED = 1e8  # px^2 per unit^2: holds a blendshape at its bound during the shape step


def _shape_step(
    prob: _Problem, theta: np.ndarray, targets: _Targets, cams: np.ndarray, reg_shape: float
) -> np.ndarray:
    """One Gauss-Newton step on the shared f_s of F frames, their poses and f_exp eliminated.

    The joint energy sum_b ||r_b||^2 + reg_e sum_b ||f_exp,b||^2 + reg_s ||f_s||^2 has one
    f_s for all frames and a pose and f_exp per frame (a bundle adjustment). Linearised, its
    normal equations are block-arrow; the Schur complement of each frame's local block A_b
    (pose and f_exp, 6 + Ne) leaves an Ns x Ns system in f_s:
        (sum_b Js^T Js - Bb^T A_b^-1 Bb + reg_s I) ds = -(sum_b gs_b - Bb^T A_b^-1 gl_b) - reg_s f_s
    with Bb = Jl^T Js. A blendshape at a bound that its gradient pushes further out is held
    there (a stiff diagonal), so the step does not rely on a coefficient the box forbids.
    Returns ds (Ns,) and the frames' local steps (F, 6 + Ne).
    """
    ns, ne = prob.ns, prob.ne
    res, jac = _evaluate(prob, theta, targets, cams, jacobian=True)
    local = np.r_[np.arange(POSE_DIM), POSE_DIM + ns + np.arange(ne)]
    shared = POSE_DIM + np.arange(ns)
    jl, js = jac[:, :, local], jac[:, :, shared]
    expr = theta[:, POSE_DIM + ns :]
    reg_l = np.r_[np.zeros(POSE_DIM), prob.reg[ns:]]
    # Batched matmuls, not einsum: einsum without a path sums in C loops, and these sums
    # were most of a 240-frame track's shape pass (5.1 s of predict's 10.1 s, session 10).
    jlt = jl.transpose(0, 2, 1)
    a = jlt @ jl
    gl = (jlt @ res[..., None])[..., 0]
    gl[:, POSE_DIM:] += prob.reg[ns:] * expr
    lo, hi = prob.lo[POSE_DIM + ns :], prob.hi[POSE_DIM + ns :]
    pinned = ((expr <= lo + LEAVE_TOL) & (gl[:, POSE_DIM:] > 0)) | (
        (expr >= hi - LEAVE_TOL) & (gl[:, POSE_DIM:] < 0)
    )
    still = np.zeros(ne, bool)
    still[prob.still[prob.still >= POSE_DIM + ns] - POSE_DIM - ns] = True
    diag = reg_l + 1e-9 + _PINNED * np.c_[np.zeros((len(theta), POSE_DIM)), pinned | still]
    a[:, np.arange(len(local)), np.arange(len(local))] += diag
    b = jlt @ js
    solved = np.linalg.solve(a, np.concatenate([b, gl[..., None]], 2))  # A^-1 [B, gl]
    js_all, b_all = js.reshape(-1, ns), b.reshape(-1, ns)  # frames and rows stacked
    system = js_all.T @ js_all - b_all.T @ solved[..., :ns].reshape(-1, ns)
    rhs = js_all.T @ res.reshape(-1) - b_all.T @ solved[..., ns].reshape(-1)
    shape = theta[0, POSE_DIM : POSE_DIM + ns]
    system[np.arange(ns), np.arange(ns)] += reg_shape + 1e-9
    rhs += reg_shape * shape
    moves = np.ones(ns, bool)
    moves[prob.still[prob.still < POSE_DIM + ns] - POSE_DIM] = False
    # A shape coefficient at its bound that the step pushes further out stays there, and the
    # others are solved again without it (clipping it afterwards would leave them wrong).
    lo_s, hi_s = SHAPE_BOUNDS
    free = moves.copy()
    for _ in range(ns):
        step = np.zeros(ns)
        keep = np.flatnonzero(free)
        step[keep] = -np.linalg.solve(system[np.ix_(keep, keep)], rhs[keep])
        out = free & (
            ((shape <= lo_s + LEAVE_TOL) & (step < 0)) | ((shape >= hi_s - LEAVE_TOL) & (step > 0))
        )
        if not out.any():
            break
        free &= ~out
    local_step = -(solved[..., ns] + solved[..., :ns] @ step)
    return step, local_step


@dataclass
class SubjectShape:
    shape: np.ndarray  # (Ns,) the person's f_s
    reg_expression: float  # the f_exp prior their frames are fitted with
    noise_px: float  # landmark noise seen in the shape pass (px per coordinate, RMS)


def _noise_variance(prob: _Problem, fits: FitResult) -> float:
    """Landmark noise variance (px^2 per residual row) from fits made with the paper's weak
    prior: their residual energy over the rows left after each frame's free unknowns (the
    pose and the blendshapes strictly inside their bounds), an unbiased estimate for
    Gaussian noise."""
    inside = (fits.expression > LEAVE_TOL) & (fits.expression < 1.0 - LEAVE_TOL)
    free = POSE_DIM + inside.sum(1)
    rows = np.maximum(prob.rows - free, 1).sum()
    return float(np.sum(fits.energy) / rows)


def estimate_shape(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera] | np.ndarray,
    *,
    reg_shape: float | None = None,
    reg_expression: float | None = None,
    rounds: int = SHAPE_ROUNDS,
    shape_frames: int = SHAPE_FRAMES,
    max_iter: int = 20,
    tol: float = 1e-3,
) -> SubjectShape:
    """One person's f_s from the landmarks of many of their frames (F, 68, 2).

    The shape pass of `fit_subject`. It reads up to `shape_frames` evenly spaced frames with
    finite landmarks: starting from the mean shape, each round fits them with the shape
    fixed (`fit_landmarks` on `model.with_shape`: pose and f_exp) and takes one joint
    Gauss-Newton step on f_s with their poses and f_exp eliminated (`_shape_step`), clipped
    to [-3, 3], until a step moves no coefficient by SHAPE_TOL (at most `rounds`). The
    energy counts reg_shape ||f_s||^2 once per person and reg_expression ||f_exp||^2 once
    per frame, so what every frame shares goes to the shape.

    Priors None (the subject mode's): they follow the person's landmark noise. A first run
    of rounds with the paper's 1e-4 gives the residuals the noise is measured from
    (`_noise_variance`); the priors become sigma^2 / tau^2 (a MAP estimate; 1 / tau^2 is
    `EXPRESSION_PER_NOISE`, `SHAPE_PER_NOISE`) and a second run of rounds refines the shape
    under them: about the paper's prior on exact landmarks, a strong one on a detector's,
    where f_exp would otherwise fit the noise. With no usable frame the shape is the mean.
    """
    target = np.asarray(landmarks, np.float64).reshape(-1, 68, 2)
    cams = _cameras(camera, len(target))
    paper_s, paper_e = FIT_PRIORS["frame"]
    adaptive = reg_expression is None or reg_shape is None
    reg_s = paper_s if reg_shape is None else float(reg_shape)
    reg_e = paper_e if reg_expression is None else float(reg_expression)
    ok = np.flatnonzero(np.isfinite(target).all((1, 2)) & np.isfinite(cams).all(1))
    shape = np.zeros(model.num_shape)
    if len(ok) == 0:
        return SubjectShape(shape, reg_e, float("nan"))
    pick = ok[np.unique(np.linspace(0, len(ok) - 1, min(shape_frames, len(ok))).astype(int))]
    sub = model.landmark_subset()
    fits = None

    def refine(shape: np.ndarray, reg_s: float, reg_e: float):
        nonlocal fits
        prob = _Problem(model, reg_s, reg_e, bounded=True)
        for _ in range(rounds):
            fits = fit_landmarks(
                sub.with_shape(shape), target[pick], cams[pick], init=fits, max_iter=max_iter,
                reg_expression=reg_e, tol=tol,
            )  # fmt: skip
            good = np.flatnonzero(fits.converged)
            if len(good) == 0:
                break
            theta = np.c_[fits.pose[good], np.tile(shape, (len(good), 1)), fits.expression[good]]
            with _single_threaded_blas():
                step, _ = _shape_step(
                    prob, theta, _targets(prob, target[pick[good]]), cams[pick[good]], reg_s
                )
            shape = np.clip(shape + step, *SHAPE_BOUNDS)
            if np.abs(step).max() < SHAPE_TOL:
                break
        return shape, prob

    shape, prob = refine(shape, reg_s, reg_e)
    sigma2 = _noise_variance(prob, fits) if fits is not None else float("nan")
    if adaptive and np.isfinite(sigma2):
        if reg_expression is None:
            reg_e = max(EXPRESSION_PER_NOISE * sigma2, paper_e)
        if reg_shape is None:
            reg_s = max(SHAPE_PER_NOISE * sigma2, paper_s)
        shape, _ = refine(shape, reg_s, reg_e)
    return SubjectShape(shape, reg_e, float(np.sqrt(sigma2)))


def fit_with_shape(
    model: MorphableModel,
    shape: np.ndarray,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera] | np.ndarray,
    **kwargs,
) -> FitResult:
    """Pose and f_exp of each face (B, 68, 2) with the person's f_s fixed (the per-frame pass
    of `fit_subject`; keyword arguments as `fit_landmarks`, less `reg_shape`). The result's
    `shape` rows are `shape` (NaN where the fit has no pose)."""
    kwargs.pop("reg_shape", None)
    shape = np.asarray(shape, np.float64).reshape(-1)
    fit = fit_landmarks(model.landmark_subset().with_shape(shape), landmarks, camera, **kwargs)
    fit.shape[:] = shape
    fit.shape[~np.isfinite(fit.pose).all(1)] = np.nan
    return fit


def fit_subject(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera] | np.ndarray,
    *,
    reg_shape: float | None = None,
    reg_expression: float | None = None,
    max_rmse_fraction: float = 0.1,
    **kwargs,
) -> FitResult:
    """One f_s for all frames (F, 68, 2) of one person, then pose and f_exp per frame.

    Departs from Sec. III-C, which fits every frame on its own: a person's face shape does
    not change between frames, and a detector's error that stays the same across them is
    absorbed by it. With the shape fixed, each frame's problem is pose plus Ne blendshapes
    (about 105 residual rows for 57 unknowns instead of 117). `estimate_shape` finds the
    shape and the f_exp prior (keyword arguments: its `rounds`, `shape_frames`, `max_iter`,
    `tol`), then `fit_with_shape` fits every frame. Frames with non-finite landmarks come
    back unconverged with NaN results, as in `fit_landmarks`.
    """
    est = estimate_shape(
        model, landmarks, camera, reg_shape=reg_shape, reg_expression=reg_expression, **kwargs
    )
    per_frame = {k: v for k, v in kwargs.items() if k in ("max_iter", "tol")}
    return fit_with_shape(
        model, est.shape, landmarks, camera, reg_expression=est.reg_expression,
        max_rmse_fraction=max_rmse_fraction, **per_frame,
    )  # fmt: skip


# -- fit modes ---------------------------------------------------------------------------------
# (reg_shape, reg_expression) in px^2 per unit^2 for each mode; "frame" is the paper's energy
# (Sec. III-C, both 1e-4), the others depart from it by measurement (bench/fit_accuracy.py).
# "subject"'s f_exp prior is None: it follows each person's landmark noise (estimate_shape).
FIT_PRIORS: dict[str, tuple[float | None, float | None]] = {
    "frame": (1e-4, 1e-4),
    "photo": (1.0, 10.0),
    "subject": (None, None),
}
EXPRESSION_PER_NOISE = 20.0  # 1 / tau^2 of f_exp: its prior per px^2 of landmark noise (MAP)
SHAPE_PER_NOISE = 1.0  # the same for f_s, once per person: f_s ~ N(0, 1)
FIT_MODES = tuple(FIT_PRIORS)
DEFAULT_FIT_MODE = "subject"


def fit_frames(
    model: MorphableModel,
    landmarks: np.ndarray,
    camera: Camera | Sequence[Camera] | np.ndarray,
    *,
    mode: str = DEFAULT_FIT_MODE,
    groups: Sequence | np.ndarray | None = None,
    max_rmse_fraction: float = 0.1,
) -> FitResult:
    """Fit B faces (B, 68, 2) in one of `FIT_MODES`.

    frame    each face alone with the paper's energy (`fit_landmarks`, Sec. III-C)
    photo    each face alone with stronger priors on f_s and f_exp (single images, which
             have no other frame to share a shape with)
    subject  the faces of each group (`groups`: a subject or video key per face) share one
             f_s (`fit_subject`); without `groups`, all faces are one group
    """
    if mode not in FIT_PRIORS:
        raise ValueError(f"fit mode must be one of {', '.join(FIT_MODES)}, got {mode!r}")
    reg_shape, reg_expression = FIT_PRIORS[mode]
    target = np.asarray(landmarks, np.float64).reshape(-1, 68, 2)
    cams = _cameras(camera, len(target))
    kw = dict(reg_shape=reg_shape, reg_expression=reg_expression)
    if mode != "subject":
        return fit_landmarks(model, target, cams, max_rmse_fraction=max_rmse_fraction, **kw)
    keys = np.zeros(len(target), np.int64) if groups is None else np.asarray(groups)
    if len(keys) != len(target):
        raise ValueError(f"got {len(keys)} group keys for {len(target)} faces")
    if len(target) == 0:
        return fit_landmarks(model, target, cams)
    parts = []
    for key in dict.fromkeys(keys.tolist()):  # the groups in order of first appearance
        idx = np.flatnonzero(keys == key)
        fit = fit_subject(model, target[idx], cams[idx], max_rmse_fraction=max_rmse_fraction, **kw)
        parts.append((idx, fit))
    return gather_fits(parts, len(target))


def gather_fits(parts: Sequence[tuple[np.ndarray, FitResult]], n: int) -> FitResult:
    """One FitResult of n faces from results of disjoint subsets (indices, result)."""
    template = parts[0][1]
    fields = FitResult.__dataclass_fields__
    out = FitResult(
        **{
            f: np.zeros((n,) + getattr(template, f).shape[1:], getattr(template, f).dtype)
            for f in fields
        }
    )
    for idx, part in parts:
        for f in fields:
            getattr(out, f)[idx] = getattr(part, f)
    return out
