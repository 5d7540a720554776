"""What a job asks Ray for, and whether a cluster launcher config can give it.

A Train worker asks for `resources.cpus_per_worker` CPUs, plus one GPU when `use_gpu`
resolves to true ("auto": the cluster has GPUs). A preprocessing actor asks for one CPU
and no GPU, so Ray places it on the CPU pool. `check_placement` answers, offline, whether
the node types of a `cluster.yaml` can hold an experiment's ScalingConfig:

    python -m glee_platform.resources cluster.yaml configs/paper-bp4d.yaml
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glee_platform.config import ConfigError, ResourcesSection, load_config

PREPROCESS_BUNDLE = {"CPU": 1.0}  # one ShardWorker actor (glee_platform.preprocess)


class ClusterConfigError(ValueError):
    """A cluster launcher config is invalid or too small; the message says what to change."""


def resolve_use_gpu(setting: str | bool, cluster_resources: Mapping[str, float]) -> bool:
    """`resources.use_gpu`: "auto" is true when the cluster has at least one GPU."""
    if setting == "auto":
        return cluster_resources.get("GPU", 0) >= 1
    return bool(setting)


def worker_bundle(resources: ResourcesSection, use_gpu: bool) -> dict[str, float]:
    """`ScalingConfig.resources_per_worker` of one Train worker."""
    bundle = {"CPU": float(resources.cpus_per_worker)}
    if use_gpu:
        bundle["GPU"] = 1.0
    return bundle


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """A cluster launcher YAML, checked as `ray up` checks it: against Ray's own schema
    (ray/autoscaler/ray-schema.json) as written and after Ray fills in its defaults."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    try:
        validate_config(config)
        validate_config(prepare_config(copy.deepcopy(config)))
    except ImportError as err:  # jsonschema comes with ray[default]
        raise ClusterConfigError(f"cannot validate {path}: {err}; install ray[default]") from None
    except Exception as err:  # jsonschema.ValidationError, ValueError, RuntimeError
        where = "/".join(str(p) for p in getattr(err, "absolute_path", ())) or "top level"
        first = str(getattr(err, "message", err)).splitlines()[0]
        raise ClusterConfigError(f"{path}: {where}: {first}") from None
    return config


def node_type_resources(cluster: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    return {
        name: {k: float(v) for k, v in spec.get("resources", {}).items()}
        for name, spec in cluster["available_node_types"].items()
    }


def bundles_per_node(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many copies of `bundle` fit on one node of these resources."""
    fits = [math.floor(node.get(k, 0.0) / v) for k, v in bundle.items() if v > 0]
    return min(fits) if fits else 0


def cluster_can_have_gpus(cluster: Mapping[str, Any]) -> bool:
    return any(r.get("GPU", 0) >= 1 for r in node_type_resources(cluster).values())


@dataclass
class Placement:
    """Where the Train workers of one run can go: node type -> workers per node."""

    use_gpu: bool
    bundle: dict[str, float]
    num_workers: int
    per_node: dict[str, int]
    capacity: int  # workers the node types hold at their max_workers

    def line(self) -> str:
        types = ", ".join(f"{t} ({n} per node)" for t, n in self.per_node.items())
        return (
            f"{self.num_workers} worker(s) x {self.bundle} fit on {types}: "
            f"room for {self.capacity} at max_workers"
        )


def check_placement(
    cluster: Mapping[str, Any], resources: ResourcesSection, *, include_head: bool = False
) -> Placement:
    """Whether the autoscaled node types can hold `resources.num_workers` Train workers."""
    use_gpu = resolve_use_gpu(resources.use_gpu, {"GPU": float(cluster_can_have_gpus(cluster))})
    bundle = worker_bundle(resources, use_gpu)
    head = cluster["head_node_type"]
    per_node: dict[str, int] = {}
    capacity = 0
    for name, node in node_type_resources(cluster).items():
        n = bundles_per_node(node, bundle)
        if n == 0 or (name == head and not include_head):
            continue
        per_node[name] = n
        spec = cluster["available_node_types"][name]
        capacity += n * int(spec.get("max_workers", cluster.get("max_workers", 0)))
    if not per_node:
        raise ClusterConfigError(
            f"no worker node type holds one Train worker {bundle}: raise a node type's "
            "resources or lower resources.cpus_per_worker"
        )
    if capacity < resources.num_workers:
        raise ClusterConfigError(
            f"{resources.num_workers} Train workers x {bundle} need more than the {capacity} "
            f"that {', '.join(per_node)} hold at max_workers: raise max_workers or lower "
            "resources.num_workers"
        )
    return Placement(use_gpu, bundle, resources.num_workers, per_node, capacity)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cluster", help="cluster launcher YAML (cluster.yaml)")
    parser.add_argument("configs", nargs="+", help="experiment YAML files or preset names")
    args = parser.parse_args(argv)
    try:
        cluster = load_cluster_config(args.cluster)
        for name in args.configs:
            cfg = load_config(name)
            print(f"{name}: {check_placement(cluster, cfg.resources).line()}")
    except (ClusterConfigError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
