"""The synthetic world: labels from intensities, subjects, AU episodes, FEC triplets."""

from collections import Counter

import numpy as np
import pytest

from glee.datasets.records import ALL_AUS
from glee.face.action_units import expression_from_aus
from glee.face.default_model import default_model
from glee.synthetic.world import (
    AU_COLUMN,
    FEC_PROTOTYPES,
    TRIPLET_TYPES,
    Annotator,
    Episode,
    annotate,
    au_timeline,
    choose_subjects,
    fec_world,
    intensity_level,
    occurrence,
    odd_one_out,
    sample_episodes,
    timeline_from_episodes,
)


def test_intensity_level_rounds_half_up_and_clips():
    x = np.array([0.0, 0.49, 0.5, 1.49, 1.5, 4.6, 7.0, -1.0])
    assert intensity_level(x).tolist() == [0, 0, 1, 1, 2, 5, 5, 0]
    assert occurrence(x).tolist() == [0, 0, 1, 1, 1, 1, 1, 0]


def test_choose_subjects_takes_the_first_of_each_fold_in_file_order():
    assert choose_subjects("bp4d", 2) == [
        ("F001", 1),
        ("M007", 1),
        ("M011", 2),
        ("F003", 2),
        ("F007", 3),
        ("F015", 3),
    ]
    disfa = choose_subjects("disfa", 1)
    assert disfa == [("SN002", 1), ("SN013", 2), ("SN003", 3)]
    assert {f for _, f in choose_subjects("bp4dplus", 1)} == {1, 2, 3}
    assert len(choose_subjects("bp4d", 100)) == 41  # all of them, no repeats
    with pytest.raises(ValueError, match="per_fold"):
        choose_subjects("bp4d", 0)


def test_episode_has_onset_apex_offset():
    ep = Episode(au=12, start=10.0, onset=10.0, apex=20.0, offset=15.0, peak=4.0)
    t = np.arange(0.0, 70.0, 0.5)
    y = ep.intensity(t)
    assert np.all(y[t <= 10] == 0) and np.all(y[t >= ep.end] == 0)
    onset = (t >= 10) & (t <= 20)
    assert np.all(np.diff(y[onset]) > 0)  # rising
    assert np.allclose(y[(t >= 20) & (t <= 40)], 4.0)  # apex held
    offset = (t >= 40) & (t <= 55)
    assert np.all(np.diff(y[offset]) < 0)  # falling


def test_timeline_segments_rise_then_fall():
    rng = np.random.default_rng(3)
    span = 3000
    episodes = sample_episodes(rng, span, "T1")
    y = timeline_from_episodes(episodes, np.arange(span))  # (T, 17)
    col = y[:, AU_COLUMN[12]]
    active = np.flatnonzero(col > 0)
    segments = np.split(active, np.flatnonzero(np.diff(active) > 1) + 1)
    inner = [s for s in segments if s[0] > 0 and s[-1] < span - 1]
    assert len(inner) >= 5
    for seg in inner:
        v = col[seg]
        assert v[0] < 0.5 and v[-1] < 0.5 and v.max() >= 1.0  # starts low, peaks, ends low


def _occurrences(emphases, seqs=240, frames=40, seed=0):
    rng = np.random.default_rng(seed)
    occ = [
        occurrence(au_timeline(rng, frames, emphasis=emphases[k % len(emphases)]))
        for k in range(seqs)
    ]
    return np.concatenate(occ)


def test_base_rates_and_co_occurrence_look_like_bp4d():
    occ = _occurrences([f"T{i}" for i in range(1, 9)])
    rate = {au: occ[:, AU_COLUMN[au]].mean() for au in ALL_AUS}
    assert 0.35 <= rate[12] <= 0.65 and 0.35 <= rate[10] <= 0.65
    assert 0.1 <= rate[1] <= 0.35 and 0.1 <= rate[2] <= 0.3
    assert 0.07 <= rate[23] <= 0.25 and 0.07 <= rate[24] <= 0.25

    def given(a, b):  # P(b present | a present)
        return occ[occ[:, AU_COLUMN[a]] == 1, AU_COLUMN[b]].mean()

    assert given(6, 12) > 1.5 * rate[12]
    assert given(1, 2) > 2.5 * rate[2]
    assert given(4, 7) > 1.3 * rate[7]
    assert given(15, 17) > 1.5 * rate[17]
    assert given(25, 26) > 1.5 * rate[26]
    assert given(23, 24) > 2.0 * rate[24]


def test_task_emphasis_shifts_the_aus():
    sad = _occurrences(["T2"], seqs=80)
    happy = _occurrences(["T1"], seqs=80)
    assert sad[:, AU_COLUMN[15]].mean() > 2 * happy[:, AU_COLUMN[15]].mean()
    assert happy[:, AU_COLUMN[12]].mean() > sad[:, AU_COLUMN[12]].mean()


def test_short_sequences_still_vary_and_are_reproducible():
    seen = set()
    for seed in range(12):
        y = au_timeline(np.random.default_rng(seed), 6, emphasis="T1")
        assert y.shape == (6, len(ALL_AUS)) and y.dtype == np.float32
        assert y.min() >= 0 and y.max() <= 5
        seen |= {ALL_AUS[i] for i in np.flatnonzero(occurrence(y).any(axis=0))}
    assert len(seen) >= 12
    a = au_timeline(np.random.default_rng(7), 30)
    b = au_timeline(np.random.default_rng(7), 30)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="span"):
        au_timeline(np.random.default_rng(0), 10, span=5)


def test_odd_one_out_and_perfect_annotators():
    faces = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    assert odd_one_out(faces) == 3
    assert odd_one_out(faces[[2, 0, 1]]) == 1
    sharp = [Annotator(i, temperature=1e-6, flip=0.0) for i in range(6)]
    answers = annotate(np.random.default_rng(0), faces, sharp, scale=1.0)
    assert answers == (3,) * 6
    coin = [Annotator(i, temperature=1e6, flip=0.0) for i in range(600)]
    counts = Counter(annotate(np.random.default_rng(0), faces, coin, scale=1.0))
    assert all(150 < counts[k] < 250 for k in (1, 2, 3))  # indifferent annotators


@pytest.fixture(scope="module")
def world():
    model = default_model()
    resting = np.random.default_rng(2).uniform(0, 0.08, (60, 51)).astype(np.float32)
    return fec_world(
        np.random.default_rng(5),
        lambda aus: expression_from_aus(aus, model),
        resting,
        images_per_identity=3,
        num_train=400,
        num_test=100,
    )


def test_fec_triplet_types_follow_the_clusters(world):
    assert len(world.faces) == 180 and len(world.triplets) == 500
    for tri in world.triplets:
        clusters = {world.faces[i].cluster for i in tri.faces}
        assert len(set(tri.faces)) == 3
        assert TRIPLET_TYPES.index(tri.triplet_type) + 1 == len(clusters)
        assert all(world.faces[i].split == tri.split for i in tri.faces)
        assert len(set(tri.annotators)) == 6 and set(tri.annotations) <= {1, 2, 3}
    assert Counter(t.triplet_type for t in world.triplets).keys() == set(TRIPLET_TYPES)
    train_ids = {f.identity for f in world.faces if f.split == "train"}
    test_ids = {f.identity for f in world.faces if f.split == "test"}
    assert train_ids and test_ids and not train_ids & test_ids
    assert {f.cluster for f in world.faces} == set(range(len(FEC_PROTOTYPES)))


def test_fec_majority_mostly_but_not_always_names_the_odd_one(world):
    agree = []
    for tri in world.triplets:
        (top, n), *rest = Counter(tri.annotations).most_common()
        majority = top if not rest or rest[0][1] < n else None
        agree.append(majority == tri.odd_one_out)
        exprs = np.stack([world.faces[i].expression for i in tri.faces])
        assert tri.odd_one_out == odd_one_out(exprs)
    assert 0.7 <= np.mean(agree) < 0.97
