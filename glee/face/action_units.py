"""FACS action units of the synthetic world and the blendshapes that produce them.

`AU_BLENDSHAPES` is the one table that says how an AU moves the default face
(`glee.face.default_model`): each AU drives named blendshapes with a weight; bilateral AUs
drive both the "_l" and "_r" variants. AU intensities follow the FACS/DISFA 0..5 scale;
intensity 5 is the full activation (f_exp = weight) of every blendshape the AU drives.
"""

from __future__ import annotations

import numpy as np

from glee.datasets.records import ALL_AUS
from glee.face.morphable_model import MorphableModel

AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    10: "upper lip raiser",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    17: "chin raiser",
    20: "lip stretcher",
    23: "lip tightener",
    24: "lip pressor",
    25: "lips part",
    26: "jaw drop",
}

AU_BLENDSHAPES: dict[int, tuple[tuple[str, float], ...]] = {
    1: (("brow_inner_raise_l", 1.0), ("brow_inner_raise_r", 1.0)),
    2: (("brow_outer_raise_l", 1.0), ("brow_outer_raise_r", 1.0)),
    4: (("brow_lower_l", 1.0), ("brow_lower_r", 1.0), ("brow_squeeze", 0.8)),
    5: (("upper_lid_raise_l", 1.0), ("upper_lid_raise_r", 1.0)),
    6: (("cheek_raise_l", 1.0), ("cheek_raise_r", 1.0)),
    7: (("lid_tighten_l", 1.0), ("lid_tighten_r", 1.0)),
    9: (("nose_wrinkle_l", 1.0), ("nose_wrinkle_r", 1.0)),
    10: (("upper_lip_raise_l", 1.0), ("upper_lip_raise_r", 1.0)),
    12: (("lip_corner_pull_l", 1.0), ("lip_corner_pull_r", 1.0)),
    14: (("dimple_l", 1.0), ("dimple_r", 1.0)),
    15: (("lip_corner_depress_l", 1.0), ("lip_corner_depress_r", 1.0)),
    17: (("chin_raise", 1.0),),
    20: (("lip_stretch_l", 1.0), ("lip_stretch_r", 1.0)),
    23: (("lip_tighten", 1.0),),
    24: (("lip_press", 1.0),),
    25: (("lips_part", 1.0),),
    26: (("jaw_drop", 1.0),),
}

MAX_INTENSITY = 5.0


def au_matrix(model: MorphableModel, aus: tuple[int, ...] = ALL_AUS) -> np.ndarray:
    """(len(aus), Ne) weights: row k is the blendshape vector of AU aus[k] at full intensity."""
    out = np.zeros((len(aus), model.num_expression), np.float32)
    for k, au in enumerate(aus):
        if au not in AU_BLENDSHAPES:
            raise KeyError(f"AU{au} is not modelled; known AUs: {sorted(AU_BLENDSHAPES)}")
        for name, weight in AU_BLENDSHAPES[au]:
            out[k, model.expression_index(name)] += weight
    return out


def expression_from_aus(intensity: np.ndarray, model: MorphableModel) -> np.ndarray:
    """AU intensities (..., 17) over ALL_AUS on the 0..5 scale -> f_exp (..., Ne) in [0, 1]."""
    intensity = np.asarray(intensity, np.float32)
    if intensity.shape[-1:] != (len(ALL_AUS),):
        raise ValueError(
            f"expected AU intensities (..., {len(ALL_AUS)}) ordered as ALL_AUS {ALL_AUS}, "
            f"got shape {intensity.shape}"
        )
    f = (intensity / MAX_INTENSITY) @ au_matrix(model)  # (..., Ne)
    return np.clip(f, 0.0, 1.0)
