"""The linear 3D morphable model of Sec. III-C: M(s, e) = M0 + sum_i S_i f_s,i + sum_j E_j f_exp,j.

One class serves the project's built-in sparse face (`glee.face.default_model`) and a
user's dense 3DMM (LSFM, BFM, FLAME, ICT-FaceKit) converted to the .npz format below.

.npz format (all arrays; float arrays float32, coordinates in millimetres, axes as in
`glee.face.camera`: x right, y down, z away from the camera):

    mean               (V, 3)        M0, the mean face
    shape_basis        (Ns, V, 3)    identity bases S_i; coefficients f_s in [-3, 3]
    expression_basis   (Ne, V, 3)    blendshapes E_j (offsets from the neutral face);
                                     coefficients f_exp in [0, 1] (1 = full activation)
    expression_names   (Ne,) str     a name per blendshape, e.g. "brow_inner_raise_l"
    landmark_index     (68,) int     vertex of each iBUG-68 landmark (0-based iBUG order)
    contours           (K,) str      optional; each "name:i,j,k,..." lists iBUG landmark
                                     indices along a contour polyline (jaw line, lip
                                     contours). Fitting uses point-to-curve distance for
                                     the non-endpoint landmarks of each contour.
    point_names        (V,) str      optional; a name per vertex (the default model's
                                     auxiliary rendering points: cheeks, forehead, ...)
    triangles          (T, 3) int    optional; mesh faces of a dense model

The paper fits N_s = 60 shape bases and N_e = 51 blendshapes; the class accepts any sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glee.files import atomic_path

# iBUG-68 contours whose inner points slide along the curve (Sec. III-C, point-to-curve).
IBUG_CONTOURS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "outer_upper_lip": (48, 49, 50, 51, 52, 53, 54),
    "outer_lower_lip": (54, 55, 56, 57, 58, 59, 48),
    "inner_upper_lip": (60, 61, 62, 63, 64),
    "inner_lower_lip": (64, 65, 66, 67, 60),
}


@dataclass
class MorphableModel:
    mean: np.ndarray  # (V, 3)
    shape_basis: np.ndarray  # (Ns, V, 3)
    expression_basis: np.ndarray  # (Ne, V, 3)
    expression_names: list[str]
    landmark_index: np.ndarray  # (68,)
    contours: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(IBUG_CONTOURS))
    point_names: list[str] | None = None
    triangles: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, np.float32)
        self.shape_basis = np.asarray(self.shape_basis, np.float32)
        self.expression_basis = np.asarray(self.expression_basis, np.float32)
        self.landmark_index = np.asarray(self.landmark_index, np.int64)
        self.expression_names = [str(n) for n in self.expression_names]
        v = self.mean.shape[0]
        if self.mean.shape != (v, 3):
            raise ValueError(f"mean must be (V, 3), got {self.mean.shape}")
        if self.shape_basis.ndim != 3 or self.shape_basis.shape[1:] != (v, 3):
            raise ValueError(f"shape_basis must be (Ns, {v}, 3), got {self.shape_basis.shape}")
        if self.expression_basis.ndim != 3 or self.expression_basis.shape[1:] != (v, 3):
            raise ValueError(
                f"expression_basis must be (Ne, {v}, 3), got {self.expression_basis.shape}"
            )
        if len(self.expression_names) != self.expression_basis.shape[0]:
            raise ValueError("expression_names must name every blendshape")
        if len(set(self.expression_names)) != len(self.expression_names):
            raise ValueError("expression_names must be unique")
        if self.landmark_index.shape != (68,):
            raise ValueError(
                f"landmark_index must hold 68 vertices, got {self.landmark_index.shape}"
            )
        if self.landmark_index.min() < 0 or self.landmark_index.max() >= v:
            raise ValueError("landmark_index points outside the mesh")
        if self.point_names is not None and len(self.point_names) != v:
            raise ValueError("point_names must name every vertex")

    # -- sizes -------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def num_shape(self) -> int:
        return self.shape_basis.shape[0]

    @property
    def num_expression(self) -> int:
        return self.expression_basis.shape[0]

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"no blendshape named {name!r}") from None

    def point_index(self, name: str) -> int:
        if self.point_names is None or name not in self.point_names:
            raise KeyError(f"no point named {name!r}")
        return self.point_names.index(name)

    # -- geometry ----------------------------------------------------------------------
    def vertices(self, shape: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Eq. (5): (..., Ns) shape and (..., Ne) expression coefficients -> (..., V, 3)."""
        shape = np.asarray(shape, np.float32)
        expression = np.asarray(expression, np.float32)
        offset = np.tensordot(shape, self.shape_basis, axes=([-1], [0]))
        offset = offset + np.tensordot(expression, self.expression_basis, axes=([-1], [0]))
        return self.mean + offset

    def landmarks3d(self, shape: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """The 68 iBUG landmarks in model space, (..., 68, 3)."""
        return self.landmark_subset().vertices(shape, expression)

    def landmark_subset(self) -> MorphableModel:
        """The same model restricted to its 68 landmark vertices (what fitting needs)."""
        idx = self.landmark_index
        return MorphableModel(
            mean=self.mean[idx],
            shape_basis=self.shape_basis[:, idx],
            expression_basis=self.expression_basis[:, idx],
            expression_names=self.expression_names,
            landmark_index=np.arange(68),
            contours=dict(self.contours),
        )

    def with_shape(self, shape: np.ndarray) -> MorphableModel:
        """This model with its identity fixed: mean M0 + S f_s and a zero shape basis, so a
        fit moves only the pose and the blendshapes (`glee.face.fitting.fit_subject`)."""
        shape = np.asarray(shape, np.float32).reshape(self.num_shape)
        return MorphableModel(
            mean=self.mean + np.tensordot(shape, self.shape_basis, axes=(0, 0)),
            shape_basis=np.zeros_like(self.shape_basis),
            expression_basis=self.expression_basis,
            expression_names=self.expression_names,
            landmark_index=self.landmark_index,
            contours=dict(self.contours),
            point_names=self.point_names,
            triangles=self.triangles,
        )

    # -- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the documented .npz format atomically."""
        path = Path(path)
        arrays = {
            "mean": self.mean,
            "shape_basis": self.shape_basis,
            "expression_basis": self.expression_basis,
            "expression_names": np.array(self.expression_names, dtype=str),
            "landmark_index": self.landmark_index,
            "contours": np.array(
                [f"{k}:{','.join(map(str, v))}" for k, v in self.contours.items()], dtype=str
            ),
        }
        if self.point_names is not None:
            arrays["point_names"] = np.array(self.point_names, dtype=str)
        if self.triangles is not None:
            arrays["triangles"] = np.asarray(self.triangles, np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MorphableModel:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"morphable model file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = {
                "mean",
                "shape_basis",
                "expression_basis",
                "expression_names",
                "landmark_index",
            } - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a MorphableModel .npz: missing {sorted(missing)}")
            contours = dict(IBUG_CONTOURS)
            if "contours" in z.files:
                contours = {}
                for entry in z["contours"].tolist():
                    name, _, idx = entry.partition(":")
                    contours[name] = tuple(int(i) for i in idx.split(",") if i)
            return cls(
                mean=z["mean"],
                shape_basis=z["shape_basis"],
                expression_basis=z["expression_basis"],
                expression_names=z["expression_names"].tolist(),
                landmark_index=z["landmark_index"],
                contours=contours,
                point_names=z["point_names"].tolist() if "point_names" in z.files else None,
                triangles=z["triangles"] if "triangles" in z.files else None,
            )
