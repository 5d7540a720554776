"""What the synthetic datasets show: subjects, AU episodes, FEC expressions and triplets.

This module decides *what* to render (DESIGN.md, "The synthetic face world"); the
renderer (`glee.synthetic.render`) decides how it looks and the writers
(`glee.synthetic.writers`) put it on disk in the real layouts.

AU intensities are continuous on the FACS 0..5 scale (1 = A, trace ... 5 = E, maximum).
One rule turns them into every label the datasets carry (`intensity_level`): the
integer level is round-half-up of the intensity; an AU *occurs* (BP4D / BP4D+ value 1)
when its level is >= 1, and DISFA's label file stores the level itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from glee.datasets.records import ALL_AUS
from glee.datasets.splits import load_split

AU_COLUMN: dict[int, int] = {au: i for i, au in enumerate(ALL_AUS)}
OCCURRENCE_LEVEL = 1  # BP4D codes an AU as present from intensity A (level 1)
DISFA_PRESENT_LEVEL = 2  # the paper's DISFA rule: intensity >= 2 means present


def intensity_level(intensity: np.ndarray) -> np.ndarray:
    """Continuous 0..5 intensity -> integer FACS level 0..5 (round half up)."""
    return np.clip(np.floor(np.asarray(intensity, float) + 0.5), 0, 5).astype(np.int64)


def occurrence(intensity: np.ndarray) -> np.ndarray:
    """BP4D-style occurrence (0/1) of continuous intensities."""
    return (intensity_level(intensity) >= OCCURRENCE_LEVEL).astype(np.int64)


# -- subjects ------------------------------------------------------------------------------


def choose_subjects(split: str, per_fold: int) -> list[tuple[str, int]]:
    """The first `per_fold` subjects of each part of a shipped split, as (subject, fold).

    The synthetic AU datasets reuse the real subject IDs of the standard folds so the same
    split files drive real and synthetic data and every fold has test subjects.
    """
    if per_fold < 1:
        raise ValueError(f"per_fold must be >= 1, got {per_fold}")
    by_fold: dict[int, list[str]] = {}
    for subject, fold in load_split(split).items():  # file order
        by_fold.setdefault(fold, []).append(subject)
    chosen: list[tuple[str, int]] = []
    for fold in sorted(by_fold):
        chosen.extend((s, fold) for s in by_fold[fold][:per_fold])
    return chosen


# -- AU episodes (onset, apex, offset) -----------------------------------------------------


@dataclass(frozen=True)
class ExpressionEvent:
    """A facial event that drives a group of AUs together (the source of co-occurrence).

    members: AU -> (probability the AU takes part, apex relative to the event's strength).
    rate: events per 100 frames of the underlying video.
    """

    name: str
    members: dict[int, tuple[float, float]]
    rate: float


EVENTS: tuple[ExpressionEvent, ...] = (
    ExpressionEvent(
        "smile",
        {
            12: (1.0, 1.0),
            6: (0.8, 0.9),
            10: (0.55, 0.75),
            25: (0.45, 0.8),
            7: (0.4, 0.6),
            14: (0.25, 0.6),
            26: (0.15, 0.5),
        },
        1.1,
    ),
    ExpressionEvent(
        "brow_raise", {1: (1.0, 1.0), 2: (0.9, 1.0), 5: (0.4, 0.8), 26: (0.3, 0.6)}, 0.3
    ),
    ExpressionEvent(
        "frown",
        {4: (1.0, 1.0), 7: (0.85, 0.9), 23: (0.35, 0.7), 24: (0.3, 0.7), 17: (0.3, 0.6)},
        0.25,
    ),
    ExpressionEvent(
        "sadness",
        {15: (1.0, 1.0), 17: (0.8, 0.9), 1: (0.4, 0.8), 4: (0.3, 0.7), 24: (0.2, 0.5)},
        0.3,
    ),
    ExpressionEvent(
        "disgust",
        {9: (1.0, 1.0), 10: (0.9, 0.9), 4: (0.3, 0.7), 7: (0.5, 0.7), 17: (0.3, 0.6)},
        0.25,
    ),
    ExpressionEvent(
        "fear",
        {
            20: (1.0, 1.0),
            1: (0.85, 0.9),
            2: (0.6, 0.8),
            4: (0.5, 0.8),
            5: (0.6, 0.8),
            25: (0.7, 0.8),
        },
        0.1,
    ),
    ExpressionEvent(
        "pain",
        {
            4: (0.6, 1.0),
            7: (0.95, 1.0),
            6: (0.8, 0.9),
            10: (0.8, 0.9),
            9: (0.4, 0.7),
            25: (0.4, 0.6),
        },
        0.12,
    ),
    ExpressionEvent(
        "lip_press", {24: (1.0, 1.0), 23: (0.85, 0.9), 17: (0.6, 0.7), 14: (0.3, 0.6)}, 0.25
    ),
    ExpressionEvent(
        "dimpler", {14: (1.0, 1.0), 12: (0.5, 0.6), 17: (0.3, 0.5), 10: (0.3, 0.6)}, 0.5
    ),
    ExpressionEvent("talk", {25: (1.0, 1.0), 26: (0.7, 0.8), 10: (0.45, 0.6), 7: (0.3, 0.5)}, 0.6),
)
EVENT_NAMES = tuple(e.name for e in EVENTS)

# Single-AU episodes outside any event (per 100 frames), so no pairing is deterministic.
SOLO_RATE: dict[int, float] = {au: 0.06 for au in ALL_AUS} | {7: 0.2, 10: 0.2, 12: 0.1, 17: 0.15}

# BP4D's eight tasks elicit different emotions (Zhang et al., 2014): the task's event is
# three times as frequent. DISFA (video watching, no talking) damps talking.
TASK_EMPHASIS: dict[str, dict[str, float]] = {
    "T1": {"smile": 3.0, "talk": 2.0},
    "T2": {"sadness": 3.0},
    "T3": {"brow_raise": 3.0},
    "T4": {"dimpler": 3.0, "lip_press": 2.0, "smile": 1.5},
    "T5": {"fear": 3.0},
    "T6": {"disgust": 3.0},
    "T7": {"frown": 3.0, "lip_press": 2.0},
    "T8": {"pain": 3.0},
    "disfa": {"talk": 0.2, "smile": 1.5, "disgust": 1.5, "brow_raise": 1.5},
}
PEAK_LEVEL_P = np.array([0.12, 0.28, 0.30, 0.20, 0.10])  # P(event strength = 1..5)
MIN_SPAN = 300  # underlying frames simulated for short sequences (then subsampled)


@dataclass(frozen=True)
class Episode:
    """One AU's onset (rise), apex (hold) and offset (fall), in underlying frames."""

    au: int
    start: float
    onset: float
    apex: float
    offset: float
    peak: float  # apex intensity, 1..5

    @property
    def end(self) -> float:
        return self.start + self.onset + self.apex + self.offset

    def intensity(self, t: np.ndarray) -> np.ndarray:
        """Intensity at times t: smoothstep up, hold, smoothstep down, 0 outside."""
        t = np.asarray(t, float)
        rise = np.clip((t - self.start) / self.onset, 0.0, 1.0)
        fall = np.clip((self.end - t) / self.offset, 0.0, 1.0)
        ramp = np.minimum(rise, fall)
        return self.peak * ramp * ramp * (3.0 - 2.0 * ramp)


def _event_rates(emphasis: str | None) -> np.ndarray:
    boost = TASK_EMPHASIS.get(emphasis or "", {})
    return np.array([e.rate * boost.get(e.name, 1.0) for e in EVENTS])


def sample_episodes(
    rng: np.random.Generator, span: int, emphasis: str | None = None
) -> list[Episode]:
    """AU episodes over `span` underlying frames, grouped by expression events.

    emphasis: a BP4D task ("T1".."T8") or "disfa" to reweight the events (TASK_EMPHASIS).
    """
    if span < 1:
        raise ValueError(f"span must be >= 1 frame, got {span}")
    episodes: list[Episode] = []
    rates = _event_rates(emphasis)
    for event, rate in zip(EVENTS, rates):
        for _ in range(rng.poisson(rate * span / 100.0)):
            start = rng.uniform(-40.0, span)
            strength = 1 + rng.choice(5, p=PEAK_LEVEL_P)
            onset, apex, offset = rng.uniform(6, 20), rng.uniform(8, 45), rng.uniform(6, 25)
            for au, (p, rel) in event.members.items():
                if rng.random() >= p:
                    continue
                peak = float(np.clip(strength * rel * rng.uniform(0.8, 1.2), 1.0, 5.0))
                lag = rng.uniform(-3.0, 3.0)  # members do not move in lock-step
                episodes.append(
                    Episode(au, start + lag, onset * rng.uniform(0.8, 1.2), apex, offset, peak)
                )
    for au, rate in SOLO_RATE.items():
        for _ in range(rng.poisson(rate * span / 100.0)):
            peak = float(1 + rng.choice(5, p=PEAK_LEVEL_P))
            episodes.append(
                Episode(
                    au,
                    rng.uniform(-30.0, span),
                    rng.uniform(5, 15),
                    rng.uniform(5, 30),
                    rng.uniform(5, 20),
                    peak,
                )
            )
    return episodes


def timeline_from_episodes(episodes: Sequence[Episode], times: np.ndarray) -> np.ndarray:
    """(T,) times -> (T, 17) intensities over ALL_AUS: the strongest episode of each AU."""
    times = np.asarray(times, float)
    out = np.zeros((len(times), len(ALL_AUS)), np.float32)
    for ep in episodes:
        col = AU_COLUMN[ep.au]
        out[:, col] = np.maximum(out[:, col], ep.intensity(times))
    return out


def au_timeline(
    rng: np.random.Generator,
    num_frames: int,
    *,
    emphasis: str | None = None,
    span: int | None = None,
) -> np.ndarray:
    """(num_frames, 17) AU intensities over ALL_AUS for one video-like sequence.

    Episodes are simulated over `span` underlying frames (default max(num_frames, 300))
    and sampled at `num_frames` evenly spaced times, so a short sequence still passes
    through several events instead of sitting inside one.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    span = max(num_frames, MIN_SPAN) if span is None else span
    if span < num_frames:
        raise ValueError(f"span ({span}) must be >= num_frames ({num_frames})")
    times = np.linspace(0.0, span - 1.0, num_frames)
    return timeline_from_episodes(sample_episodes(rng, span, emphasis), times)


def expression_jitter(rng: np.random.Generator, size: int, scale: float = 0.02) -> np.ndarray:
    """Small non-AU expression noise added on top of the AU-driven expression and rest."""
    return rng.normal(0.0, scale, size).astype(np.float32)


def rendered_expression(
    au_expression: np.ndarray, resting: np.ndarray, jitter: np.ndarray | None = None
) -> np.ndarray:
    """What the renderer draws: f_exp(AUs) + identity's resting offset (+ jitter), in [0, 1]."""
    total = np.asarray(au_expression, np.float32) + np.asarray(resting, np.float32)
    if jitter is not None:
        total = total + jitter
    return np.clip(total, 0.0, 1.0).astype(np.float32)


# -- FEC: expression clusters, triplets, noisy annotators ----------------------------------

# Prototype AU combinations (intensity 0..5) the FEC faces are sampled around.
FEC_PROTOTYPES: dict[str, dict[int, float]] = {
    "neutral": {},
    "smile": {6: 2.5, 12: 3.0},
    "laugh": {6: 4.0, 12: 4.5, 25: 4.0, 26: 3.0, 10: 2.0},
    "surprise": {1: 4.0, 2: 4.0, 5: 3.0, 25: 3.0, 26: 3.5},
    "sadness": {1: 3.0, 4: 2.5, 15: 3.5, 17: 2.5},
    "anger": {4: 4.0, 7: 3.5, 23: 3.0, 24: 2.5},
    "disgust": {9: 3.5, 10: 4.0, 4: 2.0, 17: 2.0},
    "fear": {1: 3.5, 2: 2.5, 4: 3.0, 5: 3.5, 20: 4.0, 25: 3.0},
    "contempt": {14: 3.5, 12: 1.5},
    "lip_press": {23: 3.0, 24: 4.0, 17: 3.0},
    "pout": {17: 4.0, 15: 2.0},
    "squint": {4: 3.0, 7: 4.0, 6: 1.5},
    "mouth_open": {25: 4.0, 26: 4.0},
    "sneer": {10: 4.0, 25: 2.0},
}
# Sec. IV-B: the type (how many expression classes the three faces span) sets the margin.
TRIPLET_TYPES = ("ONE_CLASS_TRIPLET", "TWO_CLASS_TRIPLET", "THREE_CLASS_TRIPLET")
TRIPLET_TYPE_P = np.array([0.3, 0.35, 0.35])
ANNOTATIONS_PER_TRIPLET = 6


def prototype_matrix() -> np.ndarray:
    """(C, 17) AU intensities of the FEC prototypes, in FEC_PROTOTYPES order."""
    out = np.zeros((len(FEC_PROTOTYPES), len(ALL_AUS)), np.float32)
    for c, aus in enumerate(FEC_PROTOTYPES.values()):
        for au, v in aus.items():
            out[c, AU_COLUMN[au]] = v
    return out


def sample_cluster_aus(rng: np.random.Generator, cluster: int) -> np.ndarray:
    """(17,) AUs of one face of an expression cluster: prototype scaled + sparse noise."""
    proto = prototype_matrix()[cluster]
    au = proto * rng.uniform(0.7, 1.2, proto.shape)
    extra = rng.random(proto.shape) < 0.12  # a few stray AUs
    au = au + extra * rng.uniform(0.3, 1.8, proto.shape)
    return np.clip(au, 0.0, 5.0).astype(np.float32)


def odd_one_out(expressions: np.ndarray) -> int:
    """1-based index of the face most different from the other two (expressions (3, D)).

    The odd one is the face left over when the closest pair is removed.
    """
    return int(np.argmin(_pair_distances(expressions))) + 1


def _pair_distances(expressions: np.ndarray) -> np.ndarray:
    """(3,) distance of the pair that excludes face k, for k = 0, 1, 2."""
    e = np.asarray(expressions, float)
    return np.array(
        [np.linalg.norm(e[1] - e[2]), np.linalg.norm(e[0] - e[2]), np.linalg.norm(e[0] - e[1])]
    )


@dataclass(frozen=True)
class Annotator:
    """An FEC rater: an id, how sharply they see differences, how often they click at random."""

    annotator_id: int
    temperature: float  # in units of the world's typical pair distance
    flip: float  # probability of a random answer


def sample_annotators(rng: np.random.Generator, count: int) -> list[Annotator]:
    ids = np.sort(rng.choice(np.arange(100, 100 + 40 * count), size=count, replace=False))
    out = []
    for aid in ids:
        careless = rng.random() < 0.15
        out.append(
            Annotator(
                int(aid),
                temperature=float(rng.uniform(0.05, 0.15)),
                flip=float(rng.uniform(0.25, 0.5) if careless else rng.uniform(0.0, 0.1)),
            )
        )
    return out


def annotate(
    rng: np.random.Generator,
    expressions: np.ndarray,
    annotators: Sequence[Annotator],
    scale: float,
) -> tuple[int, ...]:
    """Each annotator's answer (1..3) for one triplet of (3, D) expressions.

    An annotator picks face k with probability softmax(-(d_k - min d) / (T * scale)) where
    d_k is the distance of the pair without k, or answers at random with prob. `flip`.
    """
    d = _pair_distances(expressions)
    answers = []
    for a in annotators:
        if rng.random() < a.flip:
            answers.append(int(rng.integers(1, 4)))
            continue
        logits = -(d - d.min()) / max(a.temperature * scale, 1e-9)
        p = np.exp(logits - logits.max())
        answers.append(int(rng.choice(3, p=p / p.sum())) + 1)
    return tuple(answers)


@dataclass(frozen=True)
class FecFace:
    """One FEC image: which identity shows which expression."""

    image_id: str
    identity: int
    cluster: int
    au: np.ndarray  # (17,) over ALL_AUS
    expression: np.ndarray  # (51,) the full rendered f_exp
    split: str  # "train" | "test"


@dataclass(frozen=True)
class FecTriplet:
    faces: tuple[int, int, int]  # indices into FecWorld.faces, in CSV order
    triplet_type: str
    odd_one_out: int  # 1..3 from expression distance (the truth)
    annotators: tuple[int, ...]  # 6 annotator ids
    annotations: tuple[int, ...]  # 6 answers in {1, 2, 3}
    split: str


@dataclass
class FecWorld:
    faces: list[FecFace]
    triplets: list[FecTriplet]
    annotators: list[Annotator]


def fec_world(
    rng: np.random.Generator,
    expression_of: Callable[[np.ndarray], np.ndarray],
    resting: np.ndarray,
    *,
    images_per_identity: int,
    num_train: int,
    num_test: int,
    test_fraction: float = 0.2,
    num_annotators: int = 40,
) -> FecWorld:
    """Plan the FEC-like set: faces from expression clusters, typed triplets, 6 answers each.

    expression_of: maps (N, 17) AU intensities to (N, 51) f_exp (the renderer's
    `expression_from_aus` bound to its model).
    resting: (N_id, 51) resting-expression offsets of the identities.
    Identities are split train/test (no identity in both), and so are the triplets.
    """
    num_ids = len(resting)
    if num_ids < 2:
        raise ValueError(f"the FEC world needs >= 2 identities, got {num_ids}")
    if images_per_identity < 1:
        raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
    num_clusters = len(FEC_PROTOTYPES)
    order = rng.permutation(num_ids)
    n_test_ids = min(num_ids - 1, max(1, round(test_fraction * num_ids))) if num_test else 0
    test_ids = set(order[:n_test_ids].tolist())

    faces: list[FecFace] = []
    for identity in range(num_ids):
        # distinct clusters per identity where possible
        clusters = rng.permutation(num_clusters)[:images_per_identity]
        if images_per_identity > num_clusters:
            clusters = rng.integers(0, num_clusters, images_per_identity)
        for cluster in clusters:
            au = sample_cluster_aus(rng, int(cluster))
            faces.append(
                FecFace(
                    image_id=f"{len(faces):06d}",
                    identity=identity,
                    cluster=int(cluster),
                    au=au,
                    expression=np.zeros(0, np.float32),
                    split="test" if identity in test_ids else "train",
                )
            )
    aus = np.stack([f.au for f in faces])  # (F, 17)
    exprs = np.asarray(expression_of(aus), np.float32)  # (F, 51)
    jitter = rng.normal(0.0, 0.02, exprs.shape).astype(np.float32)
    exprs = np.clip(exprs + resting[[f.identity for f in faces]] + jitter, 0.0, 1.0)
    faces = [
        FecFace(f.image_id, f.identity, f.cluster, f.au, exprs[i], f.split)
        for i, f in enumerate(faces)
    ]
    # typical pair distance sets the annotators' scale
    pairs = rng.integers(0, len(faces), (512, 2))
    scale = float(np.median(np.linalg.norm(exprs[pairs[:, 0]] - exprs[pairs[:, 1]], axis=1)))
    annotators = sample_annotators(rng, num_annotators)

    triplets: list[FecTriplet] = []
    for split, count in (("train", num_train), ("test", num_test)):
        pool = [i for i, f in enumerate(faces) if f.split == split]
        by_cluster: dict[int, list[int]] = {}
        for i in pool:
            by_cluster.setdefault(faces[i].cluster, []).append(i)
        if count and len(pool) < 3:
            raise ValueError(f"FEC {split} split has {len(pool)} faces: need >= 3 for a triplet")
        for _ in range(count):
            triplets.append(_sample_triplet(rng, faces, by_cluster, annotators, scale, split))
    return FecWorld(faces, triplets, annotators)


def _sample_triplet(
    rng: np.random.Generator,
    faces: list[FecFace],
    by_cluster: dict[int, list[int]],
    annotators: list[Annotator],
    scale: float,
    split: str,
) -> FecTriplet:
    clusters = sorted(by_cluster)
    big = [c for c in clusters if len(by_cluster[c]) >= 3]
    pairable = [c for c in clusters if len(by_cluster[c]) >= 2]
    kinds = np.array(
        [bool(big), bool(pairable) and len(clusters) >= 2, len(clusters) >= 3], dtype=float
    )
    p = TRIPLET_TYPE_P * kinds
    kind = int(rng.choice(3, p=p / p.sum()))
    if kind == 0:
        c = big[rng.integers(len(big))]
        picked = rng.choice(by_cluster[c], 3, replace=False).tolist()
    elif kind == 1:
        c = pairable[rng.integers(len(pairable))]
        others = [o for o in clusters if o != c]
        o = others[rng.integers(len(others))]
        picked = rng.choice(by_cluster[c], 2, replace=False).tolist()
        picked.append(by_cluster[o][rng.integers(len(by_cluster[o]))])
    else:
        cs = rng.choice(clusters, 3, replace=False)
        picked = [by_cluster[int(c)][rng.integers(len(by_cluster[int(c)]))] for c in cs]
    picked = [int(i) for i in rng.permutation(picked)]
    exprs = np.stack([faces[i].expression for i in picked])  # (3, 51)
    raters_idx = rng.choice(len(annotators), ANNOTATIONS_PER_TRIPLET, replace=False)
    raters = [annotators[int(i)] for i in raters_idx]
    return FecTriplet(
        faces=(picked[0], picked[1], picked[2]),
        triplet_type=TRIPLET_TYPES[kind],
        odd_one_out=odd_one_out(exprs),
        annotators=tuple(a.annotator_id for a in raters),
        annotations=annotate(rng, exprs, raters, scale),
        split=split,
    )
