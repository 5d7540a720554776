"""The project's built-in sparse morphable face, built by code (DESIGN.md, "The synthetic face world").

A linear model in the form of Sec. III-C, M(s, e) = M0 + sum_i S_i f_s,i + sum_j E_j f_exp,j,
over the 68 iBUG landmarks (points 0..67, named "lm_00".."lm_67") plus auxiliary points the
renderer needs (forehead, hairline, skull, ears, neck, cheeks, nasolabial folds, chin, irises,
lid creases, ...). Units are millimetres, axes as in `glee.face.camera` (x right, y down,
z away from the camera, origin near the centre of the head, nose tip at negative z).

Left and right follow the subject: "_l" is the subject's left, which appears on the image's
right (x > 0) in a frontal view; iBUG points 22-26 (brow), 42-47 (eye) and 54 (mouth corner)
are on the subject's left.

- N_s = 60 shape bases: smooth, global deformations (face width, jaw width, nose size, eye
  spacing, ... then low-order polynomial fields), free of rigid motion and uniform scale,
  mutually orthogonal, scaled like a PCA model so f_s ~ N(0, 1) and [-3, 3] stays plausible.
- N_e = 51 expression blendshapes imitating facial muscles, each local (only the points of
  its muscle move) and full activation at f_exp = 1.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.spatial import Delaunay

from glee.face.ibug import MIRROR as IBUG_MIRROR
from glee.face.morphable_model import MorphableModel

NUM_SHAPE = 60
NUM_EXPRESSION = 51

# -- mean shape ------------------------------------------------------------------------------
# Subject's right half (x <= 0) of the 68 iBUG landmarks, by iBUG index; the left half is the
# mirror image (x -> -x). Anthropometric proportions: bizygomatic width 140 mm, nasion to
# menton 120 mm, interpupillary 64 mm, mouth 50 mm, nose 34 mm wide.
_RIGHT_LANDMARKS: dict[int, tuple[float, float, float]] = {
    # jaw line, ear level to chin
    0: (-70.0, -26.0, -30.0),
    1: (-69.0, -8.0, -33.0),
    2: (-67.0, 10.0, -37.0),
    3: (-63.0, 28.0, -42.0),
    4: (-57.0, 45.0, -49.0),
    5: (-48.0, 59.0, -58.0),
    6: (-37.0, 70.0, -67.0),
    7: (-20.0, 78.0, -76.0),
    8: (0.0, 82.0, -81.0),
    # right brow, outer to inner
    17: (-57.0, -44.0, -58.0),
    18: (-48.0, -51.0, -69.0),
    19: (-37.0, -54.0, -77.0),
    20: (-26.0, -53.0, -82.0),
    21: (-14.0, -49.0, -86.0),
    # nose bridge and tip
    27: (0.0, -38.0, -86.0),
    28: (0.0, -26.0, -91.0),
    29: (0.0, -14.0, -96.0),
    30: (0.0, -2.0, -103.0),
    # nostril base
    31: (-14.0, 10.0, -86.0),
    32: (-7.0, 12.0, -91.0),
    33: (0.0, 13.0, -94.0),
    # right eye: outer corner, upper lid, inner corner, lower lid
    36: (-45.0, -30.0, -60.0),
    37: (-38.0, -35.0, -67.0),
    38: (-27.0, -35.5, -71.0),
    39: (-18.0, -30.0, -73.0),
    40: (-27.0, -26.5, -71.0),
    41: (-38.0, -26.0, -67.0),
    # outer lips
    48: (-25.0, 38.0, -81.0),
    49: (-16.0, 33.0, -88.0),
    50: (-6.0, 30.5, -93.0),
    51: (0.0, 31.5, -94.0),
    57: (0.0, 48.5, -92.0),
    58: (-7.0, 48.0, -91.0),
    59: (-16.0, 45.0, -87.0),
    # inner lips
    60: (-22.0, 38.0, -82.0),
    61: (-8.0, 37.2, -90.0),
    62: (0.0, 37.5, -91.0),
    66: (0.0, 38.3, -91.0),
    67: (-8.0, 38.0, -90.0),
}

# Auxiliary points on the subject's left (x > 0); "_r" twins are mirrored. Midline points below.
_LEFT_AUX: dict[str, tuple[float, float, float]] = {
    "forehead_l1": (24.0, -74.0, -82.0),
    "forehead_l2": (46.0, -66.0, -66.0),
    "hairline_l1": (26.0, -94.0, -74.0),
    "hairline_l2": (48.0, -84.0, -58.0),
    "temple_l": (64.0, -52.0, -40.0),
    "skull_l1": (42.0, -122.0, -10.0),
    "skull_l2": (70.0, -96.0, 0.0),
    "skull_l3": (82.0, -58.0, 10.0),
    "skull_l4": (84.0, -20.0, 25.0),
    "skull_front_l": (45.0, -100.0, -50.0),
    "skull_back_l": (50.0, -90.0, 70.0),
    "ear_l_top": (76.0, -38.0, 8.0),
    "ear_l_back": (82.0, -18.0, 16.0),
    "ear_l_bottom": (74.0, 2.0, 4.0),
    "neck_l": (54.0, 150.0, 25.0),
    "neck_top_l": (46.0, 30.0, 10.0),
    "cheekbone_l": (55.0, -16.0, -55.0),
    "cheek_l": (44.0, 4.0, -66.0),
    "cheek_low_l": (48.0, 32.0, -58.0),
    "jowl_l": (42.0, 58.0, -58.0),
    "nasolabial_l0": (19.0, 8.0, -82.0),
    "nasolabial_l1": (26.0, 24.0, -80.0),
    "nasolabial_l2": (31.0, 40.0, -74.0),
    "dimple_l": (31.0, 40.5, -76.0),
    "crow_l": (53.0, -29.0, -52.0),
    "eyebag_l": (33.0, -19.0, -69.0),
    "iris_l": (32.0, -30.5, -72.0),
    "crease_l0": (21.0, -38.5, -73.0),
    "crease_l1": (32.0, -40.5, -71.0),
    "crease_l2": (43.0, -38.0, -62.0),
    "glabella_l": (8.0, -44.0, -86.0),
    "nose_bridge_l": (7.0, -24.0, -87.0),
    "nose_ala_l": (17.0, 4.0, -84.0),
    "philtrum_l": (4.0, 22.0, -93.0),
}
_MID_AUX: dict[str, tuple[float, float, float]] = {
    "forehead_c": (0.0, -76.0, -86.0),
    "hairline_c": (0.0, -96.0, -78.0),
    "skull_top": (0.0, -128.0, -15.0),
    "skull_front": (0.0, -112.0, -55.0),
    "skull_back": (0.0, -100.0, 80.0),
    "glabella": (0.0, -44.0, -88.0),
    "mentolabial": (0.0, 57.0, -85.0),
    "chin_boss": (0.0, 69.0, -86.0),
    "neck_front": (0.0, 100.0, -20.0),
}

# Points that lie on the face surface (the rendering mesh is triangulated over them).
_OFF_SURFACE_PREFIXES = ("skull", "ear", "neck", "iris")


def _side_swap(name: str) -> str:
    """Swap a subject-left name for its subject-right twin ("cheek_l" <-> "cheek_r",
    "nasolabial_l1" <-> "nasolabial_r1", "ear_l_top" <-> "ear_r_top")."""
    parts = name.split("_")
    swapped = []
    for p in parts:
        if p.startswith("l") and (p == "l" or p[1:].isdigit()):
            swapped.append("r" + p[1:])
        elif p.startswith("r") and (p == "r" or p[1:].isdigit()):
            swapped.append("l" + p[1:])
        else:
            swapped.append(p)
    return "_".join(swapped)


def _mean_points() -> tuple[list[str], np.ndarray]:
    """Names and (V, 3) positions of every point: 68 landmarks first, then auxiliaries."""
    lms = np.zeros((68, 3))
    for i, p in _RIGHT_LANDMARKS.items():
        lms[i] = p
        j = IBUG_MIRROR[i]
        lms[j] = (-p[0], p[1], p[2])
    names = [f"lm_{i:02d}" for i in range(68)]
    pts = [tuple(p) for p in lms]
    for name, p in _MID_AUX.items():
        names.append(name)
        pts.append(p)
    for name, p in _LEFT_AUX.items():
        names.append(name)
        pts.append(p)
        names.append(_side_swap(name))
        pts.append((-p[0], p[1], p[2]))
    return names, np.asarray(pts, np.float64)


def _mirror_index(names: list[str]) -> np.ndarray:
    """For every point, the index of its mirror twin (itself on the midline)."""
    lookup = {n: i for i, n in enumerate(names)}
    out = np.empty(len(names), np.int64)
    for i, n in enumerate(names):
        if i < 68:
            out[i] = IBUG_MIRROR[i]
        else:
            out[i] = lookup[_side_swap(n)]
    return out


def _mirror_field(field: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """The mirror image of a displacement field (V, 3): d'(p) = M d(M p), M flips x."""
    out = field[mirror].copy()
    out[:, 0] *= -1.0
    return out


# -- shape bases -------------------------------------------------------------------------------
def _gauss(p: np.ndarray, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    d2 = ((p - np.asarray(centre)) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * radius**2))


def _semantic_shape_fields(p: np.ndarray) -> list[np.ndarray]:
    """Named identity deformations (symmetric), each a (V, 3) field of order 1 mm."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    ax = np.abs(x)
    sx = np.sign(x)
    zero = np.zeros_like(x)

    def field(dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> np.ndarray:
        return np.stack([dx, dy, dz], -1)

    lower = 1.0 / (1.0 + np.exp(-(y - 20.0) / 15.0))  # 0 above the nose, 1 at the jaw
    upper = 1.0 / (1.0 + np.exp((y + 40.0) / 12.0))  # 1 on the forehead
    eye = np.exp(-((ax - 32.0) ** 2) / (2 * 12.0**2) - (y + 32.0) ** 2 / (2 * 9.0**2))
    nose = np.exp(-(x**2) / (2 * 14.0**2) - (y + 5.0) ** 2 / (2 * 20.0**2)) * (z < -75)
    mouth = np.exp(-(x**2) / (2 * 22.0**2) - (y - 40.0) ** 2 / (2 * 10.0**2))
    chin = np.exp(-(x**2) / (2 * 30.0**2) - (y - 75.0) ** 2 / (2 * 14.0**2))
    cheek = np.exp(-((ax - 46.0) ** 2) / (2 * 12.0**2) - (y - 10.0) ** 2 / (2 * 18.0**2))
    brow = np.exp(-((ax - 35.0) ** 2) / (2 * 20.0**2) - (y + 50.0) ** 2 / (2 * 8.0**2))
    return [
        field(0.06 * x, zero, zero),  # face width
        field(zero, 0.06 * y, zero),  # face height
        field(0.12 * x * lower, zero, zero),  # jaw width
        field(zero, 8.0 * chin, zero),  # chin length
        field(zero, zero, -6.0 * nose),  # nose protrusion
        field(0.25 * x * nose, zero, zero),  # nose width
        field(sx * 3.0 * eye, zero, zero),  # eye spacing
        field(0.15 * (x - sx * 32.0) * eye, 0.15 * (y + 30.0) * eye, zero),  # eye size
        field(zero, -3.0 * brow, zero),  # brow height
        field(0.12 * x * mouth, zero, zero),  # mouth width
        field(zero, 3.0 * mouth * (y < 38), zero),  # upper lip height
        field(zero, 3.0 * mouth * (y > 38), zero),  # lower lip height
        field(zero, 0.12 * (y + 40.0) * upper, zero),  # forehead height
        field(sx * 3.0 * cheek, zero, -3.0 * cheek),  # cheek fullness
        field(zero, zero, 0.1 * (z + 50.0)),  # face depth
        field(zero, 3.0 * mouth, zero),  # mouth height
        field(zero, 3.0 * eye, zero),  # eye height
        field(zero, zero, -4.0 * nose * (y < -5)),  # nose bridge height
        field(zero, zero, -5.0 * chin),  # chin protrusion
        field(zero, -0.1 * (ax - 32.0) * eye, zero),  # canthal tilt
    ]


# Standard deviation (in units of each named field above) of the synthetic population.
_SEMANTIC_STD = (1.0, 1.0, 0.5, 0.6, 0.6, 0.5, 0.7, 0.6, 0.8, 0.7)
_SEMANTIC_STD += (0.3, 0.35, 0.8, 0.6, 0.8, 0.5, 0.5, 0.5, 0.5, 0.6)
_SMOOTH_STD = 1.2  # mm, per-vertex std of the smooth random part of the population
_SMOOTH_LENGTH = 45.0  # mm, its correlation length


def _shape_basis(p: np.ndarray) -> np.ndarray:
    """(60, V, 3) PCA bases of a synthetic face population, like LSFM's (Sec. III-C).

    The population is the named deformations (with the stds above) plus a smooth Gaussian
    process (correlation length 45 mm), mirrored so identities are mostly symmetric; rigid
    motion and uniform scale are projected out (they are the pose's job). The bases are the
    top-60 eigenvectors of its covariance scaled by the standard deviation, so f_s ~ N(0, 1)
    reproduces the population and f_s in [-3, 3] stays plausible."""
    names, _ = _mean_points()
    mirror = _mirror_index(names)
    n = len(p)
    fields = np.stack([f.reshape(-1) for f in _semantic_shape_fields(p)], 1)  # (3V, F)
    cov = (fields * np.asarray(_SEMANTIC_STD) ** 2) @ fields.T  # (3V, 3V)

    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    k = np.exp(-d2 / (2 * _SMOOTH_LENGTH**2))  # (V, V)
    smooth = np.kron(k, np.eye(3))  # coordinates independent, (3V, 3V)
    flip = np.zeros((3 * n, 3 * n))  # M: the mirror image of a displacement field
    for i, j in enumerate(mirror):
        flip[3 * i : 3 * i + 3, 3 * j : 3 * j + 3] = np.diag([-1.0, 1.0, 1.0])
    sym = 0.5 * (np.eye(3 * n) + flip)  # projects onto symmetric fields
    smooth = 0.8 * sym @ smooth @ sym.T + 0.2 * smooth  # mostly symmetric
    cov = cov + _SMOOTH_STD**2 * smooth

    c = p - p.mean(0)
    e = np.eye(3)
    rigid = [np.tile(e[k], n) for k in range(3)]
    rigid += [np.cross(e[k], c).reshape(-1) for k in range(3)]
    rigid.append(c.reshape(-1))
    q_rigid, _ = np.linalg.qr(np.stack(rigid, 1))
    proj = np.eye(3 * n) - q_rigid @ q_rigid.T
    cov = proj @ cov @ proj
    cov = 0.5 * (cov + cov.T)

    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:NUM_SHAPE]
    evecs = evecs[:, order] * np.sqrt(np.maximum(evals[order], 0.0))  # (3V, 60)
    # deterministic sign: the largest component of each basis is positive
    big = np.abs(evecs).argmax(0)
    evecs *= np.sign(evecs[big, np.arange(NUM_SHAPE)])
    return evecs.T.reshape(NUM_SHAPE, n, 3)


# -- expression blendshapes ---------------------------------------------------------------------
# Displacements in mm at full activation, per named point. Lateral blendshapes are written for
# the subject's left ("_l", x > 0) and mirrored for the right; "lm_NN" are iBUG landmarks.
Motion = dict[str, tuple[float, float, float]]


def _lm(i: int) -> str:
    return f"lm_{i:02d}"


def _blink_motion(p: np.ndarray, lookup: dict[str, int]) -> Motion:
    """Upper lid (43, 44) down onto the lower lid (47, 46), the crease follows."""
    m: Motion = {}
    for up, lo in ((43, 47), (44, 46)):
        dy = p[lookup[_lm(lo)], 1] - p[lookup[_lm(up)], 1] - 0.4
        m[_lm(up)] = (0.0, dy, -0.5)
    m.update({"crease_l0": (0.0, 2.5, 0.0), "crease_l1": (0.0, 3.5, 0.0)})
    m.update({"crease_l2": (0.0, 2.5, 0.0), _lm(46): (0.0, -0.5, 0.0), _lm(47): (0.0, -0.5, 0.0)})
    return m


def _jaw_drop_motion() -> Motion:
    """The mandible rotates open: points below the mouth drop with distance from the hinge."""
    m: Motion = {}
    jaw_drop = {8: 14.0, 7: 13.0, 9: 13.0, 6: 10.5, 10: 10.5, 5: 7.5, 11: 7.5, 4: 4.5, 12: 4.5}
    jaw_drop.update({3: 2.0, 13: 2.0, 2: 0.8, 14: 0.8})
    for i, dy in jaw_drop.items():
        m[_lm(i)] = (0.0, dy, dy * 0.15)
    lower_lip = {55: (-1.0, 9.0), 56: (0.0, 11.5), 57: (0.0, 12.0), 58: (0.0, 11.5), 59: (1.0, 9.0)}
    lower_lip.update({65: (-0.5, 11.0), 66: (0.0, 12.5), 67: (0.5, 11.0)})
    for i, (dx, dy) in lower_lip.items():
        m[_lm(i)] = (dx, dy, 1.5)
    m.update({_lm(48): (1.5, 3.0, 0.5), _lm(54): (-1.5, 3.0, 0.5)})
    m.update({_lm(60): (1.5, 3.5, 0.5), _lm(64): (-1.5, 3.5, 0.5)})
    for i in (61, 62, 63):
        m[_lm(i)] = (0.0, -0.5, 0.0)
    m.update({"chin_boss": (0.0, 13.5, 2.0), "mentolabial": (0.0, 12.5, 2.0)})
    m.update({"jowl_l": (0.0, 5.0, 1.0), "jowl_r": (0.0, 5.0, 1.0)})
    m.update({"dimple_l": (-0.5, 3.0, 0.0), "dimple_r": (0.5, 3.0, 0.0)})
    m.update({"nasolabial_l2": (0.0, 1.5, 0.0), "nasolabial_r2": (0.0, 1.5, 0.0)})
    m.update({"cheek_low_l": (0.0, 2.0, 0.0), "cheek_low_r": (0.0, 2.0, 0.0)})
    m.update({"neck_front": (0.0, 4.0, 2.0)})
    return m


def _lateral_motions(p: np.ndarray, lookup: dict[str, int]) -> dict[str, Motion]:
    """Blendshapes written for the subject's left; name -> motion (mirrored for "_r")."""
    L = _lm
    return {
        # AU1: frontalis, medial part
        "brow_inner_raise_l": {
            L(22): (0.5, -6.0, 0.0),
            L(23): (0.2, -4.5, 0.0),
            L(24): (0.0, -2.5, 0.0),
            L(25): (0.0, -1.0, 0.0),
            "crease_l0": (0.0, -1.5, 0.0),
            "glabella_l": (0.0, -2.0, 0.0),
            "forehead_l1": (0.0, -2.0, 0.0),
            "forehead_c": (0.0, -1.0, 0.0),
        },
        # AU2: frontalis, lateral part
        "brow_outer_raise_l": {
            L(24): (0.0, -2.0, 0.0),
            L(25): (0.0, -4.5, 0.0),
            L(26): (0.5, -5.5, 0.0),
            "crease_l1": (0.0, -1.0, 0.0),
            "crease_l2": (0.0, -2.0, 0.0),
            "forehead_l2": (0.0, -2.5, 0.0),
        },
        # AU4: corrugator / depressor supercilii, vertical component
        "brow_lower_l": {
            L(22): (-1.0, 4.5, 0.0),
            L(23): (-0.8, 4.0, 0.0),
            L(24): (-0.5, 3.0, 0.0),
            L(25): (0.0, 2.0, 0.0),
            L(26): (0.0, 1.0, 0.0),
            L(43): (0.0, 0.8, 0.0),
            L(44): (0.0, 0.5, 0.0),
            "crease_l0": (0.0, 2.0, 0.0),
            "crease_l1": (0.0, 1.5, 0.0),
            "glabella_l": (-1.0, 2.0, 0.0),
        },
        # AU5: levator palpebrae superioris
        "upper_lid_raise_l": {
            L(43): (0.0, -2.8, 0.0),
            L(44): (0.0, -2.6, 0.0),
            "crease_l0": (0.0, -1.0, 0.0),
            "crease_l1": (0.0, -1.5, 0.0),
            "crease_l2": (0.0, -1.0, 0.0),
        },
        # AU7: orbicularis oculi, palpebral part
        "lid_tighten_l": {
            L(46): (0.0, -1.8, 0.0),
            L(47): (0.0, -2.4, 0.0),
            L(43): (0.0, 0.6, 0.0),
            L(44): (0.0, 0.8, 0.0),
            L(42): (0.6, 0.0, 0.0),
            L(45): (-1.0, 0.3, 0.0),
            "eyebag_l": (0.0, -1.0, 0.0),
        },
        # AU45 / AU43
        "eye_blink_l": _blink_motion(p, lookup),
        # AU6: orbicularis oculi, orbital part (moves the cheek, barely the landmarks)
        "cheek_raise_l": {
            "cheek_l": (0.0, -4.0, -1.5),
            "cheekbone_l": (0.0, -2.0, -1.0),
            "eyebag_l": (0.0, -2.5, -1.0),
            "cheek_low_l": (0.0, -2.0, -0.5),
            "crow_l": (-0.5, -1.0, 0.0),
            "nasolabial_l1": (0.5, -1.5, -1.0),
            "nasolabial_l2": (0.8, -1.0, -0.5),
            L(45): (0.0, -0.5, 0.0),
            L(46): (0.0, -0.7, 0.0),
            L(47): (0.0, -0.2, 0.0),
        },
        # AU9: levator labii superioris alaeque nasi
        "nose_wrinkle_l": {
            "nose_bridge_l": (-0.5, -1.5, -0.5),
            "nose_ala_l": (0.5, -2.0, 0.0),
            "nasolabial_l0": (0.5, -2.0, 0.0),
            "glabella_l": (0.0, 1.5, 0.0),
            L(22): (0.0, 0.8, 0.0),
            L(35): (0.3, -0.9, 0.0),
            L(34): (0.0, -0.5, 0.0),
            L(52): (0.0, -0.5, 0.0),
            L(53): (0.0, -0.6, 0.0),
        },
        # AU10: levator labii superioris
        "upper_lip_raise_l": {
            L(52): (0.0, -3.0, -0.5),
            L(53): (0.0, -3.5, -0.5),
            L(51): (0.0, -1.5, 0.0),
            L(54): (0.0, -1.0, 0.0),
            L(62): (0.0, -1.2, 0.0),
            L(63): (0.0, -2.8, 0.0),
            L(64): (0.0, -1.2, 0.0),
            L(35): (0.4, -1.0, 0.0),
            "nose_ala_l": (0.5, -1.5, 0.0),
            "nasolabial_l0": (0.3, -1.0, 0.0),
            "nasolabial_l1": (0.5, -2.0, 0.0),
            "philtrum_l": (0.0, -2.0, 0.0),
        },
        # AU12: zygomaticus major
        "lip_corner_pull_l": {
            L(54): (5.5, -7.0, 2.0),
            L(64): (5.0, -6.5, 2.0),
            L(53): (2.5, -3.5, 0.5),
            L(55): (3.0, -3.5, 0.5),
            L(52): (0.8, -1.2, 0.0),
            L(56): (1.2, -1.0, 0.0),
            L(63): (2.5, -2.5, 0.0),
            L(65): (2.5, -2.0, 0.0),
            "cheek_l": (0.5, -2.0, -1.5),
            "cheek_low_l": (1.5, -3.0, -1.0),
            "nasolabial_l1": (1.5, -1.5, -0.5),
            "nasolabial_l2": (3.5, -3.5, 0.0),
            "dimple_l": (4.0, -4.0, 0.0),
        },
        # AU14: buccinator (dimple forms, corners tighten slightly)
        "dimple_l": {
            L(54): (-0.7, -0.3, 0.5),
            L(64): (-0.7, -0.3, 0.5),
            "dimple_l": (-1.0, 0.0, 2.5),
            "cheek_low_l": (0.0, 0.0, 1.0),
        },
        # AU15: depressor anguli oris
        "lip_corner_depress_l": {
            L(54): (0.5, 5.0, 0.0),
            L(64): (0.5, 4.5, 0.0),
            L(53): (0.0, 2.0, 0.0),
            L(55): (0.0, 2.5, 0.0),
            L(56): (0.0, 1.0, 0.0),
            L(63): (0.0, 1.2, 0.0),
            L(65): (0.0, 1.5, 0.0),
            "dimple_l": (0.0, 3.0, 0.0),
            "jowl_l": (0.0, 1.5, 0.0),
            "nasolabial_l2": (0.0, 1.5, 0.0),
        },
        # AU20: risorius with platysma (horizontal stretch)
        "lip_stretch_l": {
            L(54): (5.0, 1.0, 1.5),
            L(64): (4.5, 1.0, 1.5),
            L(53): (2.0, 0.5, 0.5),
            L(55): (2.0, 0.5, 0.5),
            L(63): (1.5, 0.0, 0.0),
            L(65): (1.5, 0.0, 0.0),
            L(11): (0.8, 0.5, 0.0),
            L(12): (0.8, 0.3, 0.0),
            "dimple_l": (3.0, 0.5, 0.0),
            "nasolabial_l2": (1.5, 0.5, 0.0),
            "jowl_l": (1.0, 0.5, 0.0),
            "neck_top_l": (1.0, 0.0, -1.0),
        },
        # AU30: the mandible swings to the subject's left about the left condyle and opens a
        # little, so the far side travels further than the near side
        "jaw_left": {
            **{L(i): (w * (2.5 if i > 8 else 4.5), 2.5 * w, 0.0) for i, w in _JAW_WEIGHTS.items()},
            **{L(i): (3.5, 2.5, 0.0) for i in (55, 56, 57, 58, 59, 65, 66, 67)},
            L(48): (1.5, 0.8, 0.0),
            L(54): (1.5, 0.8, 0.0),
            "chin_boss": (4.0, 2.5, 0.0),
            "mentolabial": (3.5, 2.5, 0.0),
            "jowl_l": (2.0, 1.5, 0.0),
            "jowl_r": (3.5, 1.5, 0.0),
        },
        # the whole mouth pulled to the subject's left and slightly up on that side
        "mouth_left": {
            **{L(i): (3.5, -1.5, 0.0) for i in (49, 50, 51, 52, 53, 55, 56, 57, 58, 59)},
            **{L(i): (3.5, -1.5, 0.0) for i in (61, 62, 63, 65, 66, 67)},
            L(54): (4.0, -2.5, 0.5),
            L(64): (4.0, -2.5, 0.5),
            L(48): (3.0, -0.5, -0.5),
            L(60): (3.0, -0.5, -0.5),
            "philtrum_l": (1.5, 0.0, 0.0),
            "philtrum_r": (1.5, 0.0, 0.0),
            "dimple_l": (2.0, 0.0, 0.0),
            "dimple_r": (2.0, 0.0, 0.0),
        },
        # gaze (moves the irises only)
        "eye_look_left": {"iris_l": (4.5, 0.0, 0.0), "iris_r": (4.5, 0.0, 0.0)},
    }


# lower face weights of the mandible for jaw_left / jaw_right
_JAW_WEIGHTS = {3: 0.3, 4: 0.6, 5: 0.8, 6: 0.9, 7: 1.0, 8: 1.0, 9: 1.0, 10: 0.9, 11: 0.8}
_JAW_WEIGHTS.update({12: 0.6, 13: 0.3})


def _bilateral_motions(p: np.ndarray, lookup: dict[str, int]) -> dict[str, Motion]:
    """Single blendshapes acting on both sides (symmetric by construction)."""
    L = _lm
    return {
        # AU4: corrugator, medial pull
        "brow_squeeze": {
            L(21): (3.0, 1.0, 0.0),
            L(22): (-3.0, 1.0, 0.0),
            L(20): (2.0, 0.5, 0.0),
            L(23): (-2.0, 0.5, 0.0),
            "glabella_l": (-2.0, 0.0, 0.0),
            "glabella_r": (2.0, 0.0, 0.0),
        },
        # AU16: depressor labii inferioris
        "lower_lip_depress": {
            L(55): (0.5, 3.0, -0.5),
            L(59): (-0.5, 3.0, -0.5),
            L(56): (0.0, 4.5, -1.0),
            L(58): (0.0, 4.5, -1.0),
            L(57): (0.0, 5.0, -1.0),
            L(65): (0.0, 3.0, -0.5),
            L(67): (0.0, 3.0, -0.5),
            L(66): (0.0, 3.5, -0.5),
            "mentolabial": (0.0, 2.0, 0.0),
        },
        # AU17: mentalis (chin boss up, lower lip pushed up a little)
        "chin_raise": {
            "chin_boss": (0.0, -3.0, -2.5),
            "mentolabial": (0.0, -1.5, -1.0),
            **{L(i): (0.0, -0.8, -0.6) for i in (56, 57, 58)},
            **{L(i): (0.0, -0.6, -0.4) for i in (55, 59, 65, 66, 67)},
            L(8): (0.0, -0.6, -0.8),
            L(7): (0.0, -0.3, -0.4),
            L(9): (0.0, -0.3, -0.4),
            L(48): (0.0, 0.4, 0.0),
            L(54): (0.0, 0.4, 0.0),
        },
        # AU23: orbicularis oris, lips narrow and thin
        "lip_tighten": {
            **{L(i): (0.0, 0.7, -0.3) for i in (49, 50, 51, 52, 53)},
            **{L(i): (0.0, -0.8, -0.3) for i in (55, 56, 57, 58, 59)},
            L(48): (0.6, 0.0, 0.0),
            L(54): (-0.6, 0.0, 0.0),
            L(60): (0.6, 0.0, 0.0),
            L(64): (-0.6, 0.0, 0.0),
        },
        # AU24: lips pressed together (lower lip pushed up)
        "lip_press": {
            **{L(i): (0.0, 0.3, 0.0) for i in (49, 50, 51, 52, 53)},
            **{L(i): (0.0, -0.9, 0.3) for i in (55, 56, 57, 58, 59)},
            **{L(i): (0.0, -0.3, 0.0) for i in (61, 62, 63, 65, 66, 67)},
            "chin_boss": (0.0, -0.8, 0.0),
            "mentolabial": (0.0, -1.0, 0.5),
            "philtrum_l": (0.0, 0.0, -0.5),
            "philtrum_r": (0.0, 0.0, -0.5),
        },
        # AU18: incisivii, lips forward and corners in
        "lip_pucker": {
            L(48): (4.0, 0.0, -4.0),
            L(54): (-4.0, 0.0, -4.0),
            L(60): (3.5, 0.0, -4.0),
            L(64): (-3.5, 0.0, -4.0),
            L(49): (2.0, 0.5, -5.0),
            L(53): (-2.0, 0.5, -5.0),
            L(59): (2.0, -0.5, -5.0),
            L(55): (-2.0, -0.5, -5.0),
            **{L(i): (0.0, 0.0, -6.0) for i in (50, 51, 52, 56, 57, 58, 61, 62, 63, 65, 66, 67)},
            "dimple_l": (-1.5, 0.0, 0.0),
            "dimple_r": (1.5, 0.0, 0.0),
        },
        # AU22: lip funneler, lips flare open
        "lip_funnel": {
            **{L(i): (0.0, -2.0, -4.0) for i in (49, 50, 51, 52, 53)},
            **{L(i): (0.0, 2.0, -4.0) for i in (55, 56, 57, 58, 59)},
            **{L(i): (0.0, -3.0, -3.0) for i in (61, 62, 63)},
            **{L(i): (0.0, 3.0, -3.0) for i in (65, 66, 67)},
            L(48): (2.0, 0.0, -2.0),
            L(54): (-2.0, 0.0, -2.0),
            L(60): (2.0, 0.0, -2.0),
            L(64): (-2.0, 0.0, -2.0),
        },
        # AU25: lips part (the jaw stays)
        "lips_part": {
            **{L(i): (0.0, -1.0, 0.0) for i in (61, 62, 63)},
            L(65): (0.0, 2.6, 0.0),
            L(66): (0.0, 3.0, 0.0),
            L(67): (0.0, 2.6, 0.0),
            L(55): (0.0, 1.2, 0.0),
            L(59): (0.0, 1.2, 0.0),
            **{L(i): (0.0, 1.6, 0.0) for i in (56, 57, 58)},
        },
        # AU26: the jaw drops
        "jaw_drop": _jaw_drop_motion(),
        # AU34: cheeks puffed out
        "cheek_puff": {
            "cheek_l": (3.0, 0.0, -3.0),
            "cheek_r": (-3.0, 0.0, -3.0),
            "cheek_low_l": (4.0, 0.0, -2.0),
            "cheek_low_r": (-4.0, 0.0, -2.0),
            "jowl_l": (2.0, 0.0, 0.0),
            "jowl_r": (-2.0, 0.0, 0.0),
            "dimple_l": (2.5, 0.0, -1.0),
            "dimple_r": (-2.5, 0.0, -1.0),
            L(3): (-1.5, 0.0, 0.0),
            L(4): (-1.8, 0.0, 0.0),
            L(5): (-1.2, 0.0, 0.0),
            L(13): (1.5, 0.0, 0.0),
            L(12): (1.8, 0.0, 0.0),
            L(11): (1.2, 0.0, 0.0),
        },
        # AU35: cheeks sucked in
        "cheek_suck": {
            "cheek_l": (-3.0, 0.0, 3.0),
            "cheek_r": (3.0, 0.0, 3.0),
            "cheek_low_l": (-4.0, 0.0, 2.5),
            "cheek_low_r": (4.0, 0.0, 2.5),
            "dimple_l": (-2.0, 0.0, 2.0),
            "dimple_r": (2.0, 0.0, 2.0),
            L(48): (1.2, 0.0, -1.0),
            L(54): (-1.2, 0.0, -1.0),
            L(60): (1.0, 0.0, -1.0),
            L(64): (-1.0, 0.0, -1.0),
        },
        # AU29: the jaw thrusts forward (mostly depth; barely visible in 2D)
        "jaw_forward": {
            **{L(i): (0.0, -0.3 * w, -5.0 * w) for i, w in _JAW_WEIGHTS.items()},
            **{L(i): (0.0, 0.0, -4.0) for i in (55, 56, 57, 58, 59, 65, 66, 67)},
            "chin_boss": (0.0, -0.3, -5.0),
            "mentolabial": (0.0, 0.0, -4.5),
        },
        # AU28: upper lip rolled in
        "lip_suck_upper": {
            **{L(i): (0.0, 3.0, 2.0) for i in (50, 51, 52)},
            L(49): (0.0, 2.5, 1.5),
            L(53): (0.0, 2.5, 1.5),
            **{L(i): (0.0, 0.5, 1.0) for i in (61, 62, 63)},
        },
        # AU28: lower lip rolled in
        "lip_suck_lower": {
            **{L(i): (0.0, -4.0, 2.0) for i in (56, 57, 58)},
            L(55): (0.0, -3.0, 1.5),
            L(59): (0.0, -3.0, 1.5),
            **{L(i): (0.0, -0.5, 1.0) for i in (65, 66, 67)},
        },
        # AU38: nostrils dilate
        "nostril_dilate": {
            L(31): (-1.5, 0.0, 0.0),
            L(35): (1.5, 0.0, 0.0),
            L(32): (-0.5, 0.0, 0.0),
            L(34): (0.5, 0.0, 0.0),
            "nose_ala_l": (1.5, 0.0, 0.0),
            "nose_ala_r": (-1.5, 0.0, 0.0),
        },
        # depressor septi: the nose tip pulled down
        "nose_tip_lower": {
            L(30): (0.0, 1.2, 0.5),
            L(33): (0.0, 1.5, 0.0),
            L(32): (0.0, 1.0, 0.0),
            L(34): (0.0, 1.0, 0.0),
            L(51): (0.0, 0.6, 0.0),
            "philtrum_l": (0.0, 1.0, 0.0),
            "philtrum_r": (0.0, 1.0, 0.0),
        },
        # gaze up and down (the irises only)
        "eye_look_up": {"iris_l": (0.0, -3.5, 0.0), "iris_r": (0.0, -3.5, 0.0)},
        "eye_look_down": {"iris_l": (0.0, 3.0, 0.0), "iris_r": (0.0, 3.0, 0.0)},
        # AU21: platysma (neck cords)
        "neck_tighten": {
            "neck_l": (-4.0, -3.0, -3.0),
            "neck_r": (4.0, -3.0, -3.0),
            "neck_top_l": (1.0, 0.5, -1.0),
            "neck_top_r": (-1.0, 0.5, -1.0),
            "neck_front": (0.0, -2.0, -2.0),
            "jowl_l": (0.5, 1.0, 0.0),
            "jowl_r": (-0.5, 1.0, 0.0),
        },
    }


# Order of the 51 blendshapes (the f_exp vector follows it).
EXPRESSION_NAMES: tuple[str, ...] = (
    "brow_inner_raise_l",
    "brow_inner_raise_r",
    "brow_outer_raise_l",
    "brow_outer_raise_r",
    "brow_lower_l",
    "brow_lower_r",
    "brow_squeeze",
    "upper_lid_raise_l",
    "upper_lid_raise_r",
    "lid_tighten_l",
    "lid_tighten_r",
    "eye_blink_l",
    "eye_blink_r",
    "cheek_raise_l",
    "cheek_raise_r",
    "nose_wrinkle_l",
    "nose_wrinkle_r",
    "upper_lip_raise_l",
    "upper_lip_raise_r",
    "lip_corner_pull_l",
    "lip_corner_pull_r",
    "dimple_l",
    "dimple_r",
    "lip_corner_depress_l",
    "lip_corner_depress_r",
    "lower_lip_depress",
    "chin_raise",
    "lip_stretch_l",
    "lip_stretch_r",
    "lip_tighten",
    "lip_press",
    "lip_pucker",
    "lip_funnel",
    "lips_part",
    "jaw_drop",
    "jaw_left",
    "jaw_right",
    "mouth_left",
    "mouth_right",
    "cheek_puff",
    "cheek_suck",
    "jaw_forward",
    "lip_suck_upper",
    "lip_suck_lower",
    "nostril_dilate",
    "nose_tip_lower",
    "eye_look_left",
    "eye_look_right",
    "eye_look_up",
    "eye_look_down",
    "neck_tighten",
)

# Lateral pairs whose right twin is not spelled with "_r".
_MIRROR_NAMES = {"jaw_left": "jaw_right", "mouth_left": "mouth_right"}
_MIRROR_NAMES["eye_look_left"] = "eye_look_right"


def _expression_basis(p: np.ndarray, names: list[str]) -> np.ndarray:
    lookup = {n: i for i, n in enumerate(names)}
    mirror = _mirror_index(names)

    def to_field(motion: Motion) -> np.ndarray:
        f = np.zeros_like(p)
        for name, d in motion.items():
            f[lookup[name]] += d
        return f

    fields: dict[str, np.ndarray] = {}
    for name, motion in _lateral_motions(p, lookup).items():
        f = to_field(motion)
        fields[name] = f
        twin = _MIRROR_NAMES.get(name, name[:-2] + "_r")
        fields[twin] = _mirror_field(f, mirror)
    for name, motion in _bilateral_motions(p, lookup).items():
        fields[name] = to_field(motion)
    missing = set(EXPRESSION_NAMES) ^ set(fields)
    if missing:  # a programming error in the tables above
        raise RuntimeError(f"blendshape tables out of sync: {sorted(missing)}")
    return np.stack([fields[n] for n in EXPRESSION_NAMES])


def _surface_triangles(p: np.ndarray, names: list[str]) -> np.ndarray:
    """Delaunay triangles over the frontal (x, y) projection of the face-surface points."""
    surface = np.array([not n.startswith(_OFF_SURFACE_PREFIXES) for n in names])
    idx = np.flatnonzero(surface)
    tri = idx[Delaunay(p[idx, :2]).simplices]  # (T, 3)
    # wind every triangle so that its normal (b - a) x (c - a) points at the camera (-z)
    a, b, c = p[tri[:, 0], :2], p[tri[:, 1], :2], p[tri[:, 2], :2]
    cross_z = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    flip = cross_z > 0
    tri[flip] = tri[flip][:, [0, 2, 1]]
    return tri.astype(np.int64)


# -- builders ----------------------------------------------------------------------------------
def build_default_model() -> MorphableModel:
    """Build the sparse default face deterministically (no file, no download).

    Built on one BLAS thread: the shape bases come from an eigendecomposition whose
    near-degenerate eigenvectors otherwise differ with the thread count (3.5 mm of
    landmark between 1 and 2 threads), so a Ray worker on one thread would fit another
    face than the one a two-thread process rendered."""
    from threadpoolctl import threadpool_limits

    names, p = _mean_points()
    with threadpool_limits(limits=1):
        shape_basis = _shape_basis(p)
    return MorphableModel(
        mean=p.astype(np.float32),
        shape_basis=shape_basis.astype(np.float32),
        expression_basis=_expression_basis(p, names).astype(np.float32),
        expression_names=list(EXPRESSION_NAMES),
        landmark_index=np.arange(68),
        point_names=names,
        triangles=_surface_triangles(p, names),
    )


@functools.lru_cache(maxsize=1)
def default_model() -> MorphableModel:
    """The default face, built once per process (treat it as read-only)."""
    return build_default_model()


def landmark_moving_expressions(model: MorphableModel, tol: float = 1.0) -> list[str]:
    """Blendshapes that move some landmark by more than `tol` (model units, mm) in the
    frontal image plane (x, y) at full activation: the ones a fitter can hope to recover
    from 68 detected 2D landmarks (Sec. III-C). Depth-only motion (jaw thrust) does not count."""
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    planar = model.expression_basis[:, model.landmark_index, :2]  # (Ne, 68, 2)
    disp = np.linalg.norm(planar, axis=-1)  # (Ne, 68)
    return [n for n, d in zip(model.expression_names, disp.max(-1)) if d > tol]
