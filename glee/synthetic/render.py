"""Draws a face of the default morphable model as shaded vector art (DESIGN.md, "The synthetic
face world").

The geometry is the 3DMM of Sec. III-C: vertices = model.vertices(identity.shape, expression),
posed and projected with `glee.face.camera`. `render_face` takes the FULL expression vector
(the AU-driven f_exp plus the identity's resting offset, clipped to [0, 1]; see
`rendered_expression`), so the landmarks it returns are exactly the projected model
landmarks the image shows. The AU intensities drive appearance cues that barely move landmarks (crow's feet
and cheek bulge for AU6, nose-bridge wrinkles for AU9, dimples for AU14, chin boss texture for
AU17, lip thinning and narrowing for AU23/AU24, forehead lines for AU1/AU2, glabella furrows
for AU4, ...).

Drawing uses OpenCV anti-aliased primitives with sub-pixel coordinates; the renderer needs a
model with the default model's point names (`glee.face.default_model`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from glee.datasets.records import ALL_AUS
from glee.face.camera import Camera, project, to_camera
from glee.face.default_model import default_model
from glee.face.morphable_model import MorphableModel

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

# -- palettes (RGB) ---------------------------------------------------------------------------
_SKIN_TONES = np.array(
    [
        (255, 226, 204),
        (241, 200, 170),
        (228, 180, 146),
        (205, 150, 112),
        (176, 120, 86),
        (140, 94, 66),
        (102, 68, 48),
        (78, 52, 38),
    ],
    np.float64,
)
_HAIR_COLOURS = np.array(
    [
        (20, 16, 14),
        (48, 34, 26),
        (86, 58, 38),
        (128, 84, 48),
        (170, 120, 70),
        (214, 180, 120),
        (150, 60, 30),
        (160, 156, 150),
    ],
    np.float64,
)
_IRIS_COLOURS = np.array(
    [(70, 44, 28), (100, 66, 36), (60, 100, 150), (84, 120, 80), (130, 110, 60), (40, 30, 24)],
    np.float64,
)


def _au_index(au: int) -> int:
    return ALL_AUS.index(au)


@dataclass
class Identity:
    """A synthetic person: 3DMM shape, resting expression and appearance."""

    shape: np.ndarray  # (60,) f_s, in [-3, 3]
    resting: np.ndarray  # (51,) resting-expression offset added to every f_exp, in [0, 1]
    skin: np.ndarray  # (3,) RGB 0..255
    brow_colour: np.ndarray  # (3,) RGB
    lip_colour: np.ndarray  # (3,) RGB
    iris_colour: np.ndarray  # (3,) RGB
    hair_colour: np.ndarray  # (3,) RGB
    hairline: float = 0.0  # mm the hairline sits lower (+) or higher (-) than the model's
    hair_volume: float = 0.5  # 0..1, how far the hair stands off the skull
    brow_thickness: float = 4.5  # mm at the brow head
    wrinkle: float = 0.2  # 0..1, depth of static folds (nasolabial, forehead)
    blush: float = 0.3  # 0..1, cheek redness


# Resting expressions that mimic AUs (DESIGN.md): blendshape -> (low, high) coefficient.
_RESTING_TRAITS: tuple[tuple[tuple[str, ...], float, float], ...] = (
    (("brow_lower_l", "brow_lower_r"), 0.1, 0.4),  # naturally low brows (AU4-like)
    (("brow_inner_raise_l", "brow_inner_raise_r"), 0.1, 0.35),  # worried look (AU1-like)
    (("brow_outer_raise_l", "brow_outer_raise_r"), 0.1, 0.35),  # arched brows (AU2-like)
    (("lip_corner_depress_l", "lip_corner_depress_r"), 0.1, 0.4),  # down-turned mouth (AU15)
    (("lip_corner_pull_l", "lip_corner_pull_r"), 0.05, 0.3),  # smiling mouth (AU12-like)
    (("eye_blink_l", "eye_blink_r"), 0.1, 0.3),  # hooded lids
    (("lid_tighten_l", "lid_tighten_r"), 0.1, 0.4),  # narrow eyes (AU7-like)
    (("lips_part",), 0.15, 0.5),  # lips apart at rest (AU25-like)
    (("upper_lip_raise_l", "upper_lip_raise_r"), 0.1, 0.3),  # short upper lip (AU10-like)
    (("chin_raise",), 0.1, 0.35),  # tense chin (AU17-like)
    (("lip_press",), 0.1, 0.4),  # thin pressed lips (AU24-like)
    (("mouth_left",), 0.05, 0.25),
    (("mouth_right",), 0.05, 0.25),
    (("cheek_raise_l", "cheek_raise_r"), 0.1, 0.3),  # full cheeks (AU6-like)
)


def sample_identity(rng: np.random.Generator, model: MorphableModel) -> Identity:
    """A random person: shape ~ N(0, 1) clipped to [-3, 3], 1-4 resting traits, colours."""
    shape = np.clip(rng.standard_normal(model.num_shape), -3.0, 3.0).astype(np.float32)
    resting = np.zeros(model.num_expression, np.float32)
    for k in rng.choice(len(_RESTING_TRAITS), size=int(rng.integers(1, 5)), replace=False):
        names, lo, hi = _RESTING_TRAITS[k]
        level = rng.uniform(lo, hi)
        for name in names:  # a little asymmetry between the sides
            resting[model.expression_index(name)] = level * rng.uniform(0.8, 1.2)
    resting = np.clip(resting, 0.0, 1.0)

    t = (len(_SKIN_TONES) - 1) * rng.beta(1.3, 2.0)  # more light and mid tones
    i = int(t)
    skin = _SKIN_TONES[i] + (t - i) * (
        _SKIN_TONES[min(i + 1, len(_SKIN_TONES) - 1)] - _SKIN_TONES[i]
    )
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 255)
    darkness = t / (len(_SKIN_TONES) - 1)
    # darker skin mostly goes with dark hair
    weights = np.array([3, 3, 2, 1.5, 1, 0.7, 0.5, 0.6]) * np.array(
        [1 + 3 * darkness, 1 + 2 * darkness, 1, 1, 1 - darkness, 1 - darkness, 1 - darkness, 1]
    )
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=weights / weights.sum())]
    hair = np.clip(hair * rng.uniform(0.85, 1.15), 0, 255)
    brow = np.clip(hair * rng.uniform(0.6, 0.9) + skin * 0.05, 0, 255)
    lip_tint = np.array([200.0, 90.0, 95.0]) * rng.uniform(0.8, 1.05)
    lip = np.clip(skin * rng.uniform(0.55, 0.7) + lip_tint * 0.35, 0, 255)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.85, 1.15)
    return Identity(
        shape=shape,
        resting=resting,
        skin=skin.astype(np.float32),
        brow_colour=brow.astype(np.float32),
        lip_colour=lip.astype(np.float32),
        iris_colour=np.clip(iris, 0, 255).astype(np.float32),
        hair_colour=hair.astype(np.float32),
        hairline=float(rng.uniform(-12.0, 8.0)),
        hair_volume=float(rng.uniform(0.0, 1.0)),
        brow_thickness=float(rng.uniform(3.0, 6.5)),
        wrinkle=float(rng.uniform(0.0, 0.6)),
        blush=float(rng.uniform(0.1, 0.6)),
    )


def rendered_expression(au_expression: np.ndarray, identity: Identity) -> np.ndarray:
    """The f_exp to render: AU-driven coefficients plus the identity's resting offset."""
    return np.clip(np.asarray(au_expression, np.float32) + identity.resting, 0.0, 1.0)


@dataclass
class RenderResult:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 2) float32 pixels: the projected model landmarks
    box: np.ndarray  # (4,) float32 x0, y0, x1, y1: landmarks and forehead


# -- pose sampling ----------------------------------------------------------------------------
def default_pose_and_camera(
    rng: np.random.Generator, size: tuple[int, int], max_angle_deg: float = 25.0
) -> tuple[np.ndarray, Camera]:
    """A head pose whose face fills 50-60 % of the image and whose landmarks stay inside it.

    size is (height, width). The camera is always `Camera.for_image(width, height)` (the 3DMM
    fitter assumes exactly that camera); only the pose varies.
    """
    height, width = int(size[0]), int(size[1])
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16 pixels, got {size}")
    if not 0.0 <= max_angle_deg <= 45.0:
        raise ValueError(f"max_angle_deg must be in [0, 45], got {max_angle_deg}")
    camera = Camera.for_image(width, height)
    model = default_model()  # the mean face sets the framing
    mean_lms = model.landmarks3d(np.zeros(model.num_shape), np.zeros(model.num_expression))
    face_width_mm = 140.0
    margin = 0.04 * min(width, height)
    pose = np.zeros(6)
    for _ in range(100):
        angles = np.radians(rng.uniform(-max_angle_deg, max_angle_deg, 3))
        fraction = rng.uniform(0.5, 0.6)
        tz = camera.focal * face_width_mm / (fraction * min(width, height))
        target = np.array([camera.cx, camera.cy]) + rng.uniform(-0.04, 0.04, 2) * [width, height]
        pose = np.array([*angles, 0.0, 0.0, tz])
        for _ in range(3):  # shift so the landmark box centre lands on the target
            uv = project(mean_lms, pose, camera)
            centre = 0.5 * (uv.min(0) + uv.max(0))
            pose[3:5] += (target - centre) * tz / camera.focal
        uv = project(mean_lms, pose, camera)
        if (uv.min(0) >= margin).all() and (uv.max(0) <= [width - margin, height - margin]).all():
            return pose, camera
    return pose, camera


# -- drawing helpers ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _catmull_rom_weights(n: int) -> np.ndarray:
    """(n, 4) weights of the four control points for n samples of one Catmull-Rom segment."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    return 0.5 * np.stack(
        [-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3],
        1,
    )


def _spline(points: np.ndarray, closed: bool = False, n: int = 6) -> np.ndarray:
    """Catmull-Rom curve through (N, 2) points, n samples per segment -> (M, 2)."""
    p = np.asarray(points, np.float64)
    if len(p) < 3:
        return p
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        segments = len(p)
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        segments = len(p) - 1
    idx = np.arange(segments)[:, None] + np.arange(4)  # (S, 4) control points per segment
    curve = np.einsum("nk,skd->snd", _catmull_rom_weights(n), ext[idx]).reshape(-1, 2)
    return curve if closed else np.concatenate([curve, p[-1:]])


def _fix(points: np.ndarray) -> np.ndarray:
    """Float pixels -> int32 fixed-point coordinates for OpenCV's `shift` argument."""
    return np.round(np.asarray(points) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, points: np.ndarray, colour, aa: bool = True) -> None:
    cv2.fillPoly(img, [_fix(points)], _colour(colour), _AA if aa else cv2.LINE_8, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, colour, thickness: float, closed=False) -> None:
    thick = max(1, int(round(thickness)))
    cv2.polylines(img, [_fix(points)], closed, _colour(colour), thick, _AA, _SHIFT)


def _disc(img: np.ndarray, centre, radius: float, colour, aa: bool = True) -> None:
    c = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
    r = max(1, int(round(radius * _ONE)))
    cv2.circle(img, c, r, _colour(colour), -1, _AA if aa else cv2.LINE_8, _SHIFT)


def _ellipse(img, centre, axes, angle_deg: float, colour, thickness: int = -1) -> None:
    c = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
    a = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, c, a, angle_deg, 0, 360, _colour(colour), thickness, _AA, _SHIFT)


def _colour(c) -> tuple[float, ...]:
    if isinstance(c, (int, float)):
        return (float(c),)
    return tuple(min(max(float(v), 0.0), 255.0) for v in c)


def _clipped(img: np.ndarray, clip_poly: np.ndarray, draw) -> None:
    """Run draw(layer, offset) on a copy of the clip polygon's region and paste it back
    through the polygon's anti-aliased mask (irises inside eyes, teeth inside the mouth)."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(clip_poly.min(0)).astype(int) - 1
    x1, y1 = np.ceil(clip_poly.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    roi = img[y0:y1, x0:x1]
    layer = roi.copy()
    offset = np.array([x0, y0], float)
    draw(layer, offset)
    mask = np.zeros(roi.shape[:2], np.uint8)
    _fill(mask, clip_poly - offset, 255)
    a = (mask.astype(np.float32) / 255.0)[..., None]
    roi[:] = (roi * (1.0 - a) + layer * a + 0.5).astype(np.uint8)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


@functools.lru_cache(maxsize=8)
def _ramp(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n, dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _ramp_px(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


# -- background -----------------------------------------------------------------------------
def _background(rng: np.random.Generator, height: int, width: int, clutter: bool) -> np.ndarray:
    c0, c1 = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    if not clutter:
        img = np.empty((height, width, 3), np.uint8)
        img[:] = np.round(0.5 * (c0 + c1)).astype(np.uint8)
        return img
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.float32(np.cos(angle)) * _ramp(width)  # (W,)
    ys = np.float32(np.sin(angle)) * _ramp(height)  # (H,)
    lo = min(xs[0], xs[-1]) + min(ys[0], ys[-1])
    hi = max(xs[0], xs[-1]) + max(ys[0], ys[-1])
    t = (ys[:, None] + xs[None, :] - lo) / max(float(hi - lo), 1e-6)  # (H, W) in [0, 1]
    c0, c1 = c0.astype(np.float32), c1.astype(np.float32)
    img = cv2.merge([(c0[k] + (c1[k] - c0[k]) * t) for k in range(3)]).astype(np.uint8)
    s = max(height, width)
    for _ in range(int(rng.integers(4, 12))):
        colour = rng.uniform(20, 240, 3)
        kind = rng.integers(3)
        centre = rng.uniform(0, 1, 2) * [width, height]
        if kind == 0:
            _disc(img, centre, rng.uniform(0.03, 0.2) * s, colour)
        elif kind == 1:
            half = rng.uniform(0.03, 0.25, 2) * s
            box = cv2.boxPoints(((*centre,), (*(2 * half),), rng.uniform(0, 180)))
            _fill(img, box, colour)
        else:
            end = centre + rng.uniform(-0.4, 0.4, 2) * s
            _line(img, np.stack([centre, end]), colour, rng.uniform(1, 0.03 * s))
    return cv2.GaussianBlur(img, (0, 0), 0.6 + 0.004 * s)


# -- the face ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _hairline_points(names: tuple[str, ...]) -> np.ndarray:
    return np.array([i for i, n in enumerate(names) if n.startswith("hairline")], np.int64)


@functools.lru_cache(maxsize=4)
def _name_index(names: tuple[str, ...]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


class _Face:
    """Projected points of one rendered face, looked up by name."""

    def __init__(self, model: MorphableModel, uv: np.ndarray, cam: np.ndarray) -> None:
        if model.point_names is None:
            raise ValueError(
                "render_face needs the default model's named points; "
                "use glee.face.default_model.default_model()"
            )
        self.uv = uv  # (V, 2) pixels
        self.cam = cam  # (V, 3) camera frame, mm
        self.index = _name_index(tuple(model.point_names))

    def __getitem__(self, key: str | int) -> np.ndarray:
        if isinstance(key, int):
            return self.uv[key]
        return self.uv[self.index[key]]

    def lm(self, *idx: int) -> np.ndarray:
        """One landmark (2,) or several (N, 2)."""
        return self.uv[idx[0]] if len(idx) == 1 else self.uv[list(idx)]

    def pts(self, *names: str) -> np.ndarray:
        """Named points (N, 2), or one point (2,)."""
        if len(names) == 1:
            return self.uv[self.index[names[0]]]
        return self.uv[[self.index[n] for n in names]]

    def depth(self, key: str | int) -> float:
        i = key if isinstance(key, int) else self.index[key]
        return float(self.cam[i, 2])


def render_face(
    model: MorphableModel,
    identity: Identity,
    expression: np.ndarray,
    au: np.ndarray,
    pose: np.ndarray,
    camera: Camera,
    size: tuple[int, int] = (256, 256),
    rng: np.random.Generator | None = None,
    *,
    background: bool = True,
    blur: float = 0.0,
    noise: float = 0.0,
    jpeg_quality: int | None = None,
    light: np.ndarray | None = None,
) -> RenderResult:
    """Render one face.

    expression: (51,) the FULL f_exp to draw (AU-driven part + identity.resting, in [0, 1];
        see `rendered_expression`). au: (17,) intensities over ALL_AUS on the 0..5 scale, which
        drive the appearance cues. pose: (6,) as in glee.face.camera. size: (height, width).
    rng draws the background, the light (unless `light`, a unit vector in the camera frame
    pointing from the face towards the light, is given) and the noise.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    height, width = int(size[0]), int(size[1])
    expression = np.asarray(expression, np.float32)
    au = np.asarray(au, np.float32)
    pose = np.asarray(pose, np.float64)
    if expression.shape != (model.num_expression,):
        raise ValueError(f"expression must be ({model.num_expression},), got {expression.shape}")
    if au.shape != (len(ALL_AUS),):
        raise ValueError(f"au must be ({len(ALL_AUS)},) intensities over {ALL_AUS}")
    if pose.shape != (6,) or pose[5] <= 0:
        raise ValueError("pose must be (yaw, pitch, roll, tx, ty, tz) with tz > 0")
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16 pixels, got {size}")

    verts = model.vertices(identity.shape, expression).astype(np.float64)  # (V, 3)
    if model.point_names is not None:
        verts[_hairline_points(tuple(model.point_names)), 1] += identity.hairline
    cam = to_camera(verts, pose)  # (V, 3)
    uv = project(verts, pose, camera)  # (V, 2)
    face = _Face(model, uv, cam)

    img = _background(rng, height, width, background)
    if light is None:
        az, el = rng.uniform(-0.9, 0.9), rng.uniform(0.1, 0.8)
        light = np.array([np.sin(az) * np.cos(el), -np.sin(el), -np.cos(az) * np.cos(el)])
    light = _unit(np.asarray(light, np.float64))
    ambient = float(rng.uniform(0.5, 0.65))

    a = np.clip(au / 5.0, 0.0, 1.0)  # AU activation 0..1
    act = {k: float(a[_au_index(k)]) for k in ALL_AUS}
    mm = camera.focal / float(pose[5])  # pixels per mm at the head
    painter = _Painter(img, face, model, identity, mm, light, ambient, act)
    painter.draw()
    img = painter.img

    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), float(blur))
    if noise > 0:
        noisy = img.astype(np.float32) + rng.normal(0.0, float(noise), img.shape).astype(np.float32)
        img = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        img = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    landmarks = uv[model.landmark_index].astype(np.float32)
    forehead = face.pts("forehead_c", "forehead_l1", "forehead_r1")
    pts = np.concatenate([landmarks, forehead])
    box = np.array([*pts.min(0), *pts.max(0)], np.float32)
    return RenderResult(image=np.ascontiguousarray(img), landmarks=landmarks, box=box)


class _Painter:
    """Draws the layers of one face, back to front."""

    def __init__(self, img, face: _Face, model, identity: Identity, mm, light, ambient, act):
        self.img = img
        self.f = face
        self.model = model
        self.id = identity
        self.mm = mm
        self.light = light
        self.ambient = ambient
        self.diffuse = 1.1 - ambient  # a surface facing the light shows the full skin tone
        self.act = act
        self.skin = np.asarray(identity.skin, np.float64)
        # the face's own axes in the image: "down" from brows to chin, "right" across
        self.down = _unit(face.lm(8) - face.lm(27))
        self.right = np.array([-self.down[1], self.down[0]])
        # yaw sign: which side of the face turns away (+1: subject's left is nearer)
        self.near_left = face.depth("cheekbone_l") < face.depth("cheekbone_r")

    def shade_of(self, factor: float) -> np.ndarray:
        """Skin colour under the key light times `factor` (for crisp wrinkles and folds)."""
        return self.skin * factor * 0.95

    # -- layers -----------------------------------------------------------------------------
    def draw(self) -> None:
        self.draw_hair_back()
        self.draw_hair_strands()
        self.draw_neck()
        self.draw_ears()
        self.draw_skin()
        self.draw_wrinkles()
        for side in self.sides_far_first():
            self.draw_eye(side)
            self.draw_brow(side)
        self.draw_nose()
        self.draw_mouth()

    def sides_far_first(self) -> tuple[str, str]:
        return ("r", "l") if self.near_left else ("l", "r")

    def outline(self) -> np.ndarray:
        """Closed face outline: jaw 0..16, temple, hairline arc, temple."""
        f = self.f
        top = f.pts("temple_l", "hairline_l2", "hairline_l1", "hairline_c")
        top = np.concatenate([top, f.pts("hairline_r1", "hairline_r2", "temple_r")])
        return _spline(np.concatenate([f.lm(*range(17)), top]), closed=True, n=5)

    def draw_hair_back(self) -> None:
        f = self.f
        names = [n for n in f.index if n.startswith("skull")]
        names += ["temple_l", "temple_r", "hairline_l2", "hairline_r2"]
        names += ["ear_l_top", "ear_r_top"]
        pts = f.pts(*names)
        centre = 0.5 * (f["skull_top"] + 0.5 * (f.lm(0) + f.lm(16)))
        pts = centre + (pts - centre) * (1.0 + 0.08 * self.id.hair_volume)
        hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
        hair = np.asarray(self.id.hair_colour, float)
        _fill(self.img, _spline(hull, closed=True, n=4), hair * 0.85)
        # a soft sheen on the lit side of the hair
        sheen_c = f["skull_top"] + (f["hairline_c"] - f["skull_top"]) * 0.35
        sheen_c = sheen_c + self.right * self.light[0] * 25 * self.mm
        _ellipse(
            self.img,
            sheen_c,
            (30 * self.mm, 14 * self.mm),
            np.degrees(np.arctan2(self.right[1], self.right[0])),
            np.minimum(hair * 1.25 + 12, 255),
        )

    def draw_hair_strands(self) -> None:
        """Strands rising from the hairline over the crown, so the hair reads as hair."""
        f, mm = self.f, self.mm
        names = ("temple_r", "hairline_r2", "hairline_r1", "hairline_c")
        names += ("hairline_l1", "hairline_l2", "temple_l")
        line = _spline(f.pts(*names), n=4)
        top = f["skull_top"]
        hair = np.asarray(self.id.hair_colour, float)
        dark, light = hair * 0.6, np.minimum(hair * 1.3 + 15, 255)
        for k in range(1, len(line) - 1, 2):
            p = line[k]
            up = top + (p - top) * 0.35  # towards the crown
            bend = self.right * ((k % 5) - 2) * 1.5 * mm
            strand = _spline(np.stack([p, 0.5 * (p + up) + bend, up]), n=4)
            _line(self.img, strand, dark if k % 4 == 1 else light, max(1.0, 0.5 * mm))

    def draw_neck(self) -> None:
        f = self.f
        pts = f.pts("neck_top_r", "neck_r", "neck_l", "neck_top_l")
        _fill(self.img, pts, self.skin * 0.62)
        # the shadow under the jaw
        _fill(
            self.img, np.concatenate([f.lm(*range(4, 13)), f["neck_front"][None]]), self.skin * 0.45
        )

    def draw_ears(self) -> None:
        f = self.f
        order = ("l", "r") if not self.near_left else ("r", "l")
        for side in order:
            jaw = f.lm(1) if side == "r" else f.lm(15)
            top, back, bottom = f.pts(f"ear_{side}_top", f"ear_{side}_back", f"ear_{side}_bottom")
            front = 0.5 * (top + bottom) + (jaw - 0.5 * (top + bottom)) * 0.6
            ring = _spline(np.stack([top, back, bottom, front]), closed=True, n=6)
            _fill(self.img, ring, self.skin * 0.78)
            inner = 0.5 * (top + bottom) * 0.6 + 0.4 * back
            _ellipse(
                self.img,
                inner,
                (0.5 * np.linalg.norm(top - bottom) * 0.45, 2.5 * self.mm),
                np.degrees(np.arctan2(*(bottom - top)[::-1])),
                self.skin * 0.6,
            )

    def gouraud(self, off: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Lambert shading of the triangulated surface with per-vertex normals interpolated
        across each triangle (painter's order, back faces culled); (h, w) float32."""
        f, mm = self.f, self.mm
        tri = np.asarray(self.model.triangles)  # (T, 3)
        cam = f.cam
        a, b, c = cam[tri[:, 0]], cam[tri[:, 1]], cam[tri[:, 2]]
        normal = np.cross(b - a, c - a)  # (T, 3), length = twice the area
        vnormal = np.zeros_like(cam)
        for j in range(3):
            np.add.at(vnormal, tri[:, j], normal)
        vnormal /= np.linalg.norm(vnormal, axis=1, keepdims=True) + 1e-12
        vshade = self.ambient + self.diffuse * np.clip(vnormal @ self.light, 0, 1)  # (V,)
        centre = (a + b + c) / 3.0
        facing = (normal * centre).sum(1) < 0  # back faces point away from the camera
        order = np.argsort(-centre[:, 2])  # far first (painter's algorithm)

        uv = f.uv - off
        corners = np.round(uv * _ONE).astype(np.int32)[tri]  # (T, 3, 2) fixed point
        ids = np.full(shape, -1, np.int32)  # which triangle covers each pixel
        for k in order[facing[order]]:
            cv2.fillConvexPoly(ids, corners[k], int(k), cv2.LINE_8, _SHIFT)
        # shading is affine inside each triangle: s = c0 + c1 * x + c2 * y (Gouraud)
        e1 = uv[tri[:, 1]] - uv[tri[:, 0]]  # (T, 2)
        e2 = uv[tri[:, 2]] - uv[tri[:, 0]]
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        inv_det = np.where(np.abs(det) > 1e-9, 1.0 / np.where(det == 0, 1.0, det), 0.0)
        vs = vshade[tri]  # (T, 3)
        d1, d2 = vs[:, 1] - vs[:, 0], vs[:, 2] - vs[:, 0]
        gx = (d1 * e2[:, 1] - d2 * e1[:, 1]) * inv_det  # d shade / dx
        gy = (d2 * e1[:, 0] - d1 * e2[:, 0]) * inv_det  # d shade / dy
        c0 = vs[:, 0] - gx * uv[tri[:, 0], 0] - gy * uv[tri[:, 0], 1]
        coef = np.zeros((len(tri) + 1, 3), np.float32)  # last row: pixels no triangle covers
        coef[:-1] = np.stack([c0, gx, gy], 1)
        per_pixel = coef[ids]  # (h, w, 3); ids == -1 picks the last row
        xs, ys = _ramp_px(shape[1]), _ramp_px(shape[0])
        shade = per_pixel[..., 0] + per_pixel[..., 1] * xs[None] + per_pixel[..., 2] * ys[:, None]
        weight = (ids >= 0).astype(np.float32)
        # normalised blur: smooths the remaining creases and fills pixels no triangle covers
        sigma = max(0.8, 1.5 * mm)
        num = cv2.GaussianBlur(shade, (0, 0), sigma)
        den = cv2.GaussianBlur(weight, (0, 0), sigma)
        fallback = np.float32(self.ambient + 0.6 * self.diffuse)
        return np.where(den > 1e-3, num / np.maximum(den, 1e-3), fallback).astype(np.float32)

    def draw_skin(self) -> None:
        """Lambert-shaded skin of the triangulated surface, with soft AU cues (bulges, folds),
        blurred into smooth shading and pasted through the anti-aliased face outline."""
        f, mm, act = self.f, self.mm, self.act
        h, w = self.img.shape[:2]
        outline = self.outline()
        x0, y0 = np.maximum(np.floor(outline.min(0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(outline.max(0)).astype(int) + 3, [w, h])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        off = np.array([x0, y0], float)
        shade = self.gouraud(off, (y1 - y0, x1 - x0))  # (h, w) smooth Lambert shading

        # soft cues, in the same (ROI) frame; values add to the shading
        soft = np.zeros_like(shade)

        wide = np.zeros_like(shade)  # broad bulges, blurred more than the folds

        def blob(centre_px, radius_mm, value, squash=1.0, angle=None):
            ang = np.degrees(np.arctan2(self.right[1], self.right[0])) if angle is None else angle
            target = wide if radius_mm > 5 else soft
            _ellipse(target, centre_px - off, (radius_mm * mm, radius_mm * mm * squash), ang, value)

        def stroke(points, width_mm, value):
            pts = _spline(points - off, n=4)
            cv2.polylines(
                soft, [_fix(pts)], False, float(value), max(1, int(width_mm * mm)), _AA, _SHIFT
            )

        for s in ("l", "r"):
            # eye sockets and the shadow under the brow ridge
            eye_c = f[f"iris_{s}"]
            blob(eye_c, 13, -0.07, 0.6)
            # cheek apple: lit, raised by AU6 / AU12 (Sec. cues: cheek bulge)
            lift = 0.09 * act[6] + 0.04 * act[12]
            blob(f[f"cheek_{s}"], 13, 0.02 + lift, 0.75)
            # infraorbital furrow under the lower lid (AU6 / AU7)
            lid = f.lm(*((46, 47) if s == "l" else (41, 40)))
            under = lid + self.down * (3.5 + 2.0 * act[6]) * mm
            if act[6] + act[7] > 0.05:
                stroke(under, 1.5, -0.12 * (act[6] + 0.5 * act[7]))
            # nasolabial fold: static + AU6 / AU9 / AU10 / AU12
            depth = max(0.35 * self.id.wrinkle, act[12], act[10], 0.7 * act[9], 0.6 * act[6])
            fold = f.pts(f"nasolabial_{s}0", f"nasolabial_{s}1", f"nasolabial_{s}2")
            stroke(fold, 3.0, -0.16 * depth)
            # dimple (AU14)
            if act[14] > 0.02:
                blob(f[f"dimple_{s}"], 2.8, -0.2 * act[14], 1.4)
            # marionette fold from the mouth corner (AU15)
            if act[15] > 0.02:
                corner = f.lm(54 if s == "l" else 48)
                stroke(np.stack([corner, corner + self.down * 9 * mm]), 2.0, -0.12 * act[15])
            # nose-bridge shadow of AU9
            if act[9] > 0.02:
                blob(f[f"nose_bridge_{s}"], 4, -0.12 * act[9], 0.7)
        # chin boss bulge (AU17) and the mentolabial sulcus
        blob(f["chin_boss"], 9, 0.04 + 0.12 * act[17], 0.7)
        sulcus = np.stack([f["mentolabial"] - self.right * 9 * mm, f["mentolabial"]])
        sulcus = np.concatenate([sulcus, [f["mentolabial"] + self.right * 9 * mm]])
        stroke(sulcus, 2.5, -0.08 - 0.12 * act[17])
        # bulges above and below pressed lips (AU24)
        if act[24] > 0.02:
            blob(f.lm(51) - self.down * 4 * mm, 8, 0.08 * act[24], 0.4)
            blob(f.lm(57) + self.down * 4 * mm, 8, 0.08 * act[24], 0.4)
        # shadow under the nose and under the lower lip
        blob(f.lm(33) + self.down * 2.5 * mm, 8, -0.12, 0.35)
        blob(f.lm(57) + self.down * 4.5 * mm, 9, -0.07, 0.35)
        # glabella furrow shadow (AU4), forehead highlight
        if act[4] > 0.02:
            blob(f["glabella"], 6, -0.1 * act[4], 1.3)
        blob(f["forehead_c"], 20, 0.05, 0.55)
        # the lit nose tip and bridge
        blob(f.lm(30) - self.down * 1.5 * mm, 4.5, 0.1, 0.8)
        blob(f.lm(28), 3.5, 0.05, 1.8)

        shade = shade + cv2.GaussianBlur(soft, (0, 0), max(0.8, 1.8 * mm))
        shade = shade + cv2.GaussianBlur(wide, (0, 0), max(1.0, 4.5 * mm))
        # colour: skin times shading, redder on the cheeks
        colour = shade[..., None] * self.skin[None, None].astype(np.float32)
        red = np.zeros_like(shade)
        for s in ("l", "r"):
            _ellipse(red, f[f"cheek_{s}"] - off, (9 * mm, 6 * mm), 0, 1.0)
        red = cv2.GaussianBlur(red, (0, 0), max(1.0, 8 * mm)) * float(self.id.blush)
        colour *= 1.0 - red[..., None] * np.array([0.0, 0.1, 0.08], np.float32)
        mask = np.zeros(shade.shape, np.uint8)
        _fill(mask, outline - off, 255)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        roi = self.img[y0:y1, x0:x1]
        roi[:] = np.clip(roi * (1 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)

    def draw_wrinkles(self) -> None:
        """Crisp folds and wrinkles: forehead lines (AU1, AU2), glabella (AU4), crow's feet
        (AU6), nose bridge (AU9), dimples (AU14), chin texture (AU17)."""
        f, mm, act = self.f, self.mm, self.act
        img = self.img
        t = max(1.0, 0.35 * mm)
        # forehead: lines between the brows and the hairline
        static = 0.3 * self.id.wrinkle
        centre_strength = max(act[1], static)
        side_strength = max(act[2], static)
        if max(centre_strength, side_strength) > 0.03:
            left = f.lm(24, 23, 22)
            right = f.lm(21, 20, 19)
            hl = f.pts("forehead_l2", "forehead_l1", "forehead_c", "forehead_r1", "forehead_r2")
            for j, frac in enumerate((0.28, 0.45, 0.62)):
                low = np.stack([f.lm(25), left[1], f["glabella"], right[1], f.lm(18)])
                row = low + (hl - low) * frac
                colour_c = self.shade_of(1 - 0.35 * centre_strength * (1 - 0.15 * j))
                colour_s = self.shade_of(1 - 0.35 * side_strength * (1 - 0.15 * j))
                curve = _spline(row, n=6)
                n = len(curve)
                mid = curve[int(0.3 * n) : int(0.7 * n) + 1]
                if centre_strength > 0.03:
                    _line(img, mid, colour_c, t)
                if side_strength > 0.03:
                    _line(img, curve[: int(0.3 * n) + 1], colour_s, t)
                    _line(img, curve[int(0.7 * n) :], colour_s, t)
        # glabella furrows (AU4)
        if act[4] > 0.03:
            g = f["glabella"]
            for sgn in (-1, 1):
                base = g + self.right * sgn * 2.5 * mm
                seg = np.stack([base - self.down * 5 * mm, base + self.down * 4 * mm])
                _line(img, seg, self.shade_of(1 - 0.45 * act[4]), t)
        # crow's feet (AU6)
        for s, corner_i in (("l", 45), ("r", 36)):
            if act[6] > 0.03:
                corner = f.lm(corner_i)
                out = _unit(corner - f[f"iris_{s}"])
                perp = np.array([-out[1], out[0]])
                col = self.shade_of(1 - 0.45 * act[6])
                for ang in (-0.5, 0.0, 0.5):
                    d = _unit(out + perp * ang)
                    start = corner + d * 2.5 * mm
                    _line(img, np.stack([start, start + d * 7 * mm]), col, t)
                # the lower-lid furrow
                lid = f.lm(*((46, 47) if s == "l" else (41, 40)))
                _line(img, lid + self.down * (3.0 + 2.0 * act[6]) * mm, col, t)
            # nose-bridge wrinkles (AU9)
            if act[9] > 0.03:
                col = self.shade_of(1 - 0.5 * act[9])
                sign = 1 if s == "l" else -1
                for k in range(3):
                    c = f.lm(28) + self.down * (k - 1) * 3.2 * mm
                    seg = np.stack(
                        [c + self.right * sign * 1.5 * mm, c + self.right * sign * 7 * mm]
                    )
                    seg[1] += self.down * 1.5 * mm
                    _line(img, seg, col, t)
            # dimples (AU14): a short crease beside the corner
            if act[14] > 0.03:
                d = f[f"dimple_{s}"]
                seg = np.stack([d - self.down * 3 * mm, d + self.down * 3 * mm])
                seg += self.right * (1.0 if s == "l" else -1.0) * 0.8 * mm
                _line(
                    img, _spline(np.stack([seg[0], d, seg[1]])), self.shade_of(1 - 0.5 * act[14]), t
                )
            # nasolabial crease line (static / AU12 / AU10)
            depth = max(0.5 * self.id.wrinkle, act[12], act[10], 0.8 * act[9])
            if depth > 0.1:
                fold = f.pts(f"nasolabial_{s}0", f"nasolabial_{s}1", f"nasolabial_{s}2")
                _line(img, _spline(fold), self.shade_of(1 - 0.3 * depth), t)
        # chin boss texture (AU17): a dimpled "orange peel" pattern
        if act[17] > 0.03:
            col = self.shade_of(1 - 0.3 * act[17])
            c = f["chin_boss"]
            for dx, dy in _CHIN_DOTS:
                p = c + self.right * dx * mm + self.down * dy * mm
                _disc(img, p, max(0.6, 0.55 * mm), col)

    def draw_eye(self, side: str) -> None:
        f, mm = self.f, self.mm
        idx = (42, 43, 44, 45, 46, 47) if side == "l" else (39, 38, 37, 36, 41, 40)
        inner, up1, up2, outer, lo2, lo1 = f.lm(*idx)
        upper = _spline(np.stack([inner, up1, up2, outer]), n=6)
        lower = _spline(np.stack([outer, lo2, lo1, inner]), n=6)
        opening = float(np.mean([np.dot(lo1 - up1, self.down), np.dot(lo2 - up2, self.down)]))
        lash = np.asarray(self.id.brow_colour) * 0.5
        if opening > 0.6:
            eye_poly = np.concatenate([upper, lower[1:-1]])
            iris_c = f[f"iris_{side}"]
            iris_r = 5.8 * mm
            sclera = np.array([236, 230, 224.0]) * (0.75 + 0.25 * max(0.0, -self.light[2]))
            iris_col = np.asarray(self.id.iris_colour, float)

            def draw_inside(layer, off):
                _fill(layer, eye_poly - off, sclera)
                # the upper lid casts a shadow on the eyeball
                _line(layer, upper - off + self.down * 1.0 * mm, sclera * 0.7, 2.0 * mm)
                _disc(layer, iris_c - off, iris_r, iris_col * 0.7)
                _disc(layer, iris_c - off, iris_r * 0.8, iris_col)
                _disc(layer, iris_c - off, iris_r * 0.42, (15, 12, 12))
                hl = (
                    iris_c
                    - off
                    + (-self.light[0] * self.right - self.light[1] * self.down) * 2 * mm
                )
                _disc(layer, hl, max(0.7, 0.9 * mm), (250, 250, 250))

            _clipped(self.img, eye_poly, draw_inside)
            _line(self.img, lower, self.shade_of(0.75), max(1.0, 0.5 * mm))
            _line(self.img, upper, lash, max(1.0, 1.1 * mm))
        else:  # closed: the lid margin and lashes
            closed = 0.5 * (upper + lower[::-1])
            _line(self.img, closed, lash, max(1.0, 1.0 * mm))
        # lid crease
        crease = f.pts(f"crease_{side}0", f"crease_{side}1", f"crease_{side}2")
        _line(self.img, _spline(crease, n=5), self.shade_of(0.72), max(1.0, 0.45 * mm))
        # lower-lid bulge of AU7
        if self.act[7] > 0.05:
            bulge = _spline(np.stack([lo1, lo2]), n=3) + self.down * 1.5 * mm
            _line(self.img, bulge, self.shade_of(1 - 0.3 * self.act[7]), max(1.0, 0.4 * mm))

    def draw_brow(self, side: str) -> None:
        f, mm = self.f, self.mm
        pts = f.lm(*((22, 23, 24, 25, 26) if side == "l" else (21, 20, 19, 18, 17)))
        top = _spline(pts, n=6)  # head (inner) to tail (outer)
        n = len(top)
        tangent = np.gradient(top, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
        normal *= np.sign((normal @ self.down).mean())  # point down, towards the eye
        thick = self.id.brow_thickness * mm * np.linspace(1.0, 0.35, n)[:, None]
        upper_edge = top - normal * 0.25 * thick
        lower_edge = top + normal * 0.75 * thick
        poly = np.concatenate([upper_edge, lower_edge[::-1]])
        colour = np.asarray(self.id.brow_colour, float)
        _fill(self.img, poly, colour * 0.85 + self.skin * 0.15)
        # hair strokes
        for k in range(1, n - 1, 2):
            a = lower_edge[k] * 0.8 + upper_edge[k] * 0.2
            b = upper_edge[min(k + 2, n - 1)]
            _line(self.img, np.stack([a, b]), colour * 0.7, 1)

    def draw_nose(self) -> None:
        f, mm = self.f, self.mm
        dark = self.shade_of(0.62)
        t = max(1.0, 0.5 * mm)
        # alar wings and nostrils
        for s, (base, ala_i) in (("l", (34, 35)), ("r", (32, 31))):
            ala = f[f"nose_ala_{s}"]
            wing = _spline(np.stack([f.lm(base), f.lm(ala_i), ala, ala - self.down * 4 * mm]))
            _line(self.img, wing, dark, t)
            nostril = 0.5 * (f.lm(base) + f.lm(ala_i)) - self.down * 1.2 * mm
            axis = f.lm(ala_i) - f.lm(base)
            _ellipse(
                self.img,
                nostril,
                (0.55 * np.linalg.norm(axis), 1.6 * mm),
                np.degrees(np.arctan2(axis[1], axis[0])),
                self.shade_of(0.35),
            )
        # columella
        _line(self.img, f.lm(32, 33, 34), self.shade_of(0.8), t)
        # the bridge edge on the shadow side
        side = f["nose_bridge_r" if self.light[0] > 0 else "nose_bridge_l"]
        ala = f.lm(31 if self.light[0] > 0 else 35)
        bridge = np.stack([f.lm(27) * 0.5 + side * 0.5, side, ala])
        _line(self.img, _spline(bridge), self.shade_of(0.85), t)

    def draw_mouth(self) -> None:
        f, mm, act = self.f, self.mm, self.act
        outer_up = _spline(f.lm(48, 49, 50, 51, 52, 53, 54), n=5)
        outer_lo = _spline(f.lm(54, 55, 56, 57, 58, 59, 48), n=5)
        inner_up = _spline(f.lm(60, 61, 62, 63, 64), n=5)
        inner_lo = _spline(f.lm(64, 65, 66, 67, 60), n=5)
        lip = np.asarray(self.id.lip_colour, float)
        # AU23 / AU24: lips blanch and the red narrows
        thin = max(act[23], act[24])
        lip = lip * (1 - 0.35 * thin) + self.shade_of(1.0) * 0.35 * thin
        upper_poly = np.concatenate([outer_up, inner_up[::-1]])
        lower_poly = np.concatenate([outer_lo, inner_lo[::-1]])
        _fill(self.img, upper_poly, lip * 0.82)
        _fill(self.img, lower_poly, lip)
        # lower-lip highlight
        mid = 0.5 * (f.lm(57) + f.lm(66))
        _ellipse(
            self.img,
            mid - self.down * 0.6 * mm,
            (6 * mm * (1 - 0.4 * thin), 1.3 * mm * (1 - 0.5 * thin)),
            np.degrees(np.arctan2(self.right[1], self.right[0])),
            np.minimum(lip * 1.18 + 8, 255),
        )
        if thin > 0.03:
            # the margin of the vermilion rolls in: skin-coloured rim along the outer contour
            rim = self.shade_of(0.95) * 0.6 + lip * 0.4
            _line(self.img, outer_up, rim, max(1.0, 2.0 * mm * thin))
            _line(self.img, outer_lo, rim, max(1.0, 2.4 * mm * thin))
            # vertical lip wrinkles of AU23
            if act[23] > 0.03:
                for k in range(-2, 3):
                    c = f.lm(62) + self.right * k * 3.5 * mm
                    seg = np.stack([c - self.down * 2.5 * mm, c + self.down * 2.5 * mm])
                    _line(self.img, seg, lip * (1 - 0.35 * act[23]), 1)
        gap = float(np.dot(f.lm(66) - f.lm(62), self.down))
        inner_poly = np.concatenate([inner_up, inner_lo[1:-1]])
        if gap > max(0.8, 1.2 * mm):  # the closed lips of the mean face sit 0.8 mm apart
            teeth = np.array([236, 232, 220.0]) * (0.8 + 0.2 * max(0.0, -self.light[2]))
            dark = np.array([62, 20, 24.0])
            tongue = np.array([170, 70, 80.0])
            # the teeth arch is narrower than the lips: a bulge profile along the lip curve
            n_up = len(inner_up)
            profile = np.sin(np.linspace(0, np.pi, n_up)) ** 0.6  # 0 at the corners
            upper_h = min(4.5 * mm, 0.55 * gap) * profile[:, None]
            lower_h = min(3.5 * mm, max(0.0, 0.35 * gap - 2.0 * mm)) * profile[::-1, None]

            def draw_inside(layer, off):
                _fill(layer, inner_poly - off, dark)
                if gap > 5 * mm:  # the tongue shows low in a wide-open mouth
                    low = inner_lo - off
                    _fill(layer, np.concatenate([low, (low - self.down * 0.3 * gap)[::-1]]), tongue)
                top = inner_up - off - self.down * 1.0 * mm  # teeth start under the lip
                _fill(layer, np.concatenate([top, (top + self.down * upper_h)[::-1]]), teeth)
                if lower_h.max() > 0.5:
                    bottom = inner_lo - off + self.down * 1.0 * mm
                    poly = np.concatenate([bottom, (bottom - self.down * lower_h)[::-1]])
                    _fill(layer, poly, teeth * 0.9)
                # gaps between the incisors
                for k in (-1.5, -0.5, 0.5, 1.5):
                    x = f.lm(62) - off + self.right * k * 4.0 * mm
                    seg = np.stack([x, x + self.down * 0.9 * upper_h.max()])
                    _line(layer, seg, teeth * 0.75, 1)

            _clipped(self.img, inner_poly, draw_inside)
            _line(self.img, inner_up, lip * 0.55, max(1.0, 0.4 * mm))
            _line(self.img, inner_lo, lip * 0.7, max(1.0, 0.3 * mm))
        else:
            line = 0.5 * (inner_up + inner_lo[::-1])
            line = np.concatenate([f.lm(48)[None], line, f.lm(54)[None]])
            _line(
                self.img, line, lip * (0.45 - 0.15 * act[24]), max(1.0, (0.5 + 0.5 * act[24]) * mm)
            )


# chin texture dots (mm offsets from the chin boss along right / down)
_CHIN_DOTS = tuple(
    (float(x), float(y))
    for x, y in np.random.default_rng(17).uniform([-9, -5], [9, 5], (14, 2)).round(2)
)
