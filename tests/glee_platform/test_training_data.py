"""How the training job splits its Ray datasets over the Train workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from glee_platform.training_data import eval_split_config

pytestmark = pytest.mark.ray


def test_the_evaluation_shards_of_two_ranks_are_disjoint_and_cover_the_set(ray_session):
    """Each rank evaluates its own share of every face exactly once (the counts are then
    all-reduced): no face twice, none dropped, even when the set does not divide evenly;
    the training set is split equally (DDP needs the same number of steps per rank)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    datasets = {"train": ray.data.range(64), "val": ray.data.range(103, override_num_blocks=7)}
    shards = eval_split_config().configure(
        datasets, world_size=2, worker_handles=None, worker_node_ids=[node, node]
    )
    assert len(shards) == 2

    def ids(rank: int, name: str) -> list[int]:
        return [int(r["id"]) for r in shards[rank][name].iter_rows()]

    # streaming_split's iterators are read together, one per rank, as the workers do
    with ThreadPoolExecutor(2) as pool:
        val = list(pool.map(lambda r: ids(r, "val"), (0, 1)))
    with ThreadPoolExecutor(2) as pool:
        train = list(pool.map(lambda r: ids(r, "train"), (0, 1)))
    assert not set(val[0]) & set(val[1])
    assert sorted(val[0] + val[1]) == list(range(103))
    assert len(val[0]) > 0 and len(val[1]) > 0
    assert len(train[0]) == len(train[1]) == 32
    assert sorted(train[0] + train[1]) == list(range(64))
