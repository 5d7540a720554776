"""What a job asks Ray for, whether it gets GPUs, and whether a cluster can give it.

One GPU decision for every job (`decide_gpu`), taken from the config and the cluster's
node types, not only from what is running now: an autoscaling GPU pool that starts at 0
workers has no GPU when a job starts, but the autoscaler adds GPU nodes when Train asks.

    resources.use_gpu   live GPUs   a node type with GPUs   ->
    false               any         any                       CPU
    auto                >= 1        any                       GPU
    auto                0           yes                       GPU (the autoscaler starts them)
    auto                0           no, or a laptop           CPU
    true                >= 1        any                       GPU
    true                0           yes, or unknown cluster   GPU after a bounded wait
    true                0           no, or a laptop           one-line error

Node types come from the cluster launcher config: $GLEE_CLUSTER_CONFIG, else the
`~/ray_bootstrap_config.yaml` that `ray up` leaves on the head node (where `ray job submit`
runs the job). `check_placement` answers, offline, whether the node types of a
`cluster.yaml` can hold an experiment's Train workers:

    python -m glee_platform.resources cluster.yaml configs/paper-bp4d.yaml

A Train worker asks for `resources.cpus_per_worker` CPUs and, with GPUs, one GPU. The
streaming input pipeline (Ray Data) runs beside the workers and needs CPUs the workers
do not hold. A preprocessing actor asks for one CPU and no GPU, so it lands on the CPU
pool; with `--num-gpus G` its landmark actors ask for one CPU and G GPU each, and land on
the GPU pool (glee_platform.preprocess). Batch sizes in the configs are global (the paper's 30 and 32): each of the
`num_workers` workers takes an equal share (`per_worker_batch`).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glee_platform.config import ConfigError, ResourcesSection, load_config

PREPROCESS_BUNDLE = {"CPU": 1.0}  # one ShardWorker actor (glee_platform.preprocess)
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # written by `ray up` on the head node
GPU_POLL_S = 5.0


class ClusterConfigError(ValueError):
    """A cluster launcher config is invalid or too small; the message says what to change."""


@dataclass(frozen=True)
class GpuDecision:
    use_gpu: bool
    reason: str
    wait: bool = False  # GPUs are to come from the autoscaler: wait for them, bounded


def decide_gpu(
    setting: str | bool,
    live: Mapping[str, float],
    node_types: Mapping[str, Mapping[str, float]] | None,
    *,
    cluster: bool,
) -> GpuDecision:
    """The one GPU decision (table in the module docstring). `live`: the cluster's
    resources now; `node_types`: name -> resources of the launcher's node types (None:
    unknown); `cluster`: connected to a cluster rather than a local Ray."""
    gpus = live.get("GPU", 0)
    typed = sorted(n for n, r in (node_types or {}).items() if r.get("GPU", 0) >= 1)
    if setting is False:
        return GpuDecision(False, "resources.use_gpu=false")
    if gpus >= 1:
        return GpuDecision(True, f"{gpus:g} GPU(s) in the cluster")
    if typed:
        return GpuDecision(True, f"node type(s) {', '.join(typed)} give GPUs", wait=True)
    if setting == "auto":
        where = "in any node type" if node_types is not None else "on this machine"
        return GpuDecision(False, f"no GPU {where}: training on CPU")
    if node_types is None and cluster:
        return GpuDecision(True, "use_gpu=true on a cluster of unknown node types", wait=True)
    where = (
        f"none of its node types ({', '.join(sorted(node_types))}) has one"
        if node_types is not None
        else "this machine has none"
    )
    raise ConfigError(
        f"resources.use_gpu=true but no GPU can come: {where}; set resources.use_gpu to "
        "auto or false, or add a GPU node type to the cluster"
    )


def cluster_node_types() -> dict[str, dict[str, float]] | None:
    """Node types of the cluster launcher config this driver runs under, or None."""
    for path in (os.environ.get("GLEE_CLUSTER_CONFIG"), BOOTSTRAP_CONFIG):
        if path and Path(path).expanduser().is_file():
            config = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
            if isinstance(config, dict) and "available_node_types" in config:
                return node_type_resources(config)
    return None


def gpu_decision(resources: ResourcesSection) -> GpuDecision:
    """`decide_gpu` for the Ray session this driver is connected to."""
    import ray

    from glee_platform.session import on_cluster

    return decide_gpu(
        resources.use_gpu, ray.cluster_resources(), cluster_node_types(), cluster=on_cluster()
    )


def wait_for_gpus(count: int, cpus: float, timeout_s: float) -> None:
    """Ask the autoscaler for `count` one-GPU bundles and wait until the cluster has that
    many GPUs, at most `timeout_s`; then one line saying what did not come."""
    import ray
    from ray.autoscaler.sdk import request_resources

    if ray.cluster_resources().get("GPU", 0) >= count:
        return
    request_resources(bundles=[{"GPU": 1.0, "CPU": float(cpus)}] * count)
    start = time.monotonic()
    print(f"[glee] waiting up to {timeout_s:.0f} s for {count} GPU(s) from the autoscaler")
    while ray.cluster_resources().get("GPU", 0) < count:
        if time.monotonic() - start > timeout_s:
            have = ray.cluster_resources().get("GPU", 0)
            raise ConfigError(
                f"asked the cluster for {count} GPU(s) and {have:g} came within "
                f"{timeout_s:.0f} s (resources.gpu_wait_s): check the GPU node type's quota "
                "and `ray status`, or set resources.use_gpu=false"
            )
        time.sleep(GPU_POLL_S)


def per_worker_batch(name: str, global_batch: int, num_workers: int) -> int:
    """The paper's global batch split equally over the workers (DDP averages their
    gradients, so the step sees `global_batch` samples at the configured learning rate)."""
    if global_batch % num_workers:
        divisors = [n for n in range(1, global_batch + 1) if global_batch % n == 0]
        raise ConfigError(
            f"{name}={global_batch} is the global batch and does not split over "
            f"resources.num_workers={num_workers}: use {', '.join(map(str, divisors[:8]))} "
            "workers, or a batch divisible by the workers"
        )
    return global_batch // num_workers


INPUT_PIPELINE_CPUS = 1  # what a Train run's streaming input (Ray Data) needs beside it


def run_cpus(resources: ResourcesSection) -> float:
    """CPUs one Train run holds while it runs: its workers and its input pipeline."""
    return resources.num_workers * resources.cpus_per_worker + INPUT_PIPELINE_CPUS


def worker_bundle(resources: ResourcesSection, use_gpu: bool) -> dict[str, float]:
    """`ScalingConfig.resources_per_worker` of one Train worker."""
    bundle = {"CPU": float(resources.cpus_per_worker)}
    if use_gpu:
        bundle["GPU"] = 1.0
    return bundle


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """A cluster launcher YAML, checked as `ray up` checks it: against Ray's own schema
    (ray/autoscaler/ray-schema.json) as written and after Ray fills in its defaults."""
    # Ray has no public API that checks a launcher config offline; `ray up` calls these.
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
    use_gpu = decide_gpu(resources.use_gpu, {}, node_type_resources(cluster), cluster=True).use_gpu
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
