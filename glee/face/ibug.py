"""The iBUG 300-W 68-point scheme (0-based): regions and the horizontal-mirror pairing.

Left and right are as seen in the image; the subject's right eye is the image's left eye.
"""

from __future__ import annotations

JAW = tuple(range(0, 17))
BROWS = tuple(range(17, 27))
NOSE = tuple(range(27, 36))
LEFT_EYE = tuple(range(36, 42))  # the eye on the image left
RIGHT_EYE = tuple(range(42, 48))
EYES = LEFT_EYE + RIGHT_EYE
MOUTH = tuple(range(48, 68))
INNER = tuple(range(17, 68))  # every point but the jaw line
REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": JAW,
    "brows": BROWS,
    "nose": NOSE,
    "eyes": EYES,
    "mouth": MOUTH,
}

# MIRROR[k]: the point that point k becomes under a horizontal flip (itself on the midline).
MIRROR: tuple[int, ...] = tuple(
    [16 - i for i in range(17)]  # jaw
    + [26 - (i - 17) for i in range(17, 27)]  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nostrils
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)
