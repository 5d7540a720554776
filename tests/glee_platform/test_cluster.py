"""cluster.yaml offline (Ray's schema, node types vs. shipped configs, security), and a
three-node Ray cluster on this machine running preprocessing and a two-node DDP fold."""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from glee_platform import resources as gres
from glee_platform.config import CONFIGS_DIR, ResourcesSection, load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
CLUSTER_YAMLS = {"aws": CLUSTER_YAML, "gcp": REPO / "cluster-gcp.yaml"}
SHIPPED = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def shipped_experiment(name: str):
    """The experiment a shipped preset runs (search presets wrap one in `search:`)."""
    if name.startswith("tune-"):
        from glee_platform.tune import load_search_config

        return load_search_config(CONFIGS_DIR / f"{name}.yaml")[1]
    return load_config(name)


@pytest.fixture(scope="module", params=sorted(CLUSTER_YAMLS))
def cluster(request) -> dict:
    config = gres.load_cluster_config(CLUSTER_YAMLS[request.param])
    assert config["provider"]["type"] == request.param
    return config


def is_spot(cluster: dict, node_type: str) -> bool:
    """Spot (AWS) or preemptible (GCP) capacity."""
    node = cluster["available_node_types"][node_type]["node_config"]
    if cluster["provider"]["type"] == "aws":
        return node.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    return any(s.get("preemptible") for s in node.get("scheduling", []))


# --------------------------------------------------------------------------- schema, pools


@pytest.mark.parametrize("provider", sorted(CLUSTER_YAMLS))
def test_cluster_yaml_passes_rays_schema_and_a_typo_does_not(provider, tmp_path):
    gres.load_cluster_config(CLUSTER_YAMLS[provider])
    bad = yaml.safe_load(CLUSTER_YAMLS[provider].read_text())
    bad["available_node_types"]["gpu_worker"]["min_worker"] = 0  # typo of min_workers
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(gres.ClusterConfigError, match="gpu_worker.*min_worker"):
        gres.load_cluster_config(path)


def test_head_runs_no_work_and_gpus_scale_from_zero(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    assert not is_spot(cluster, cluster["head_node_type"])  # the head is on-demand
    gpu = [t for t, s in types.items() if s["resources"].get("GPU", 0) >= 1]
    cpu = [t for t, s in types.items() if t not in gpu and s["resources"].get("CPU", 0) >= 1]
    assert gpu and cpu
    for name in gpu + cpu:
        assert types[name]["min_workers"] == 0 and types[name]["max_workers"] >= 2
        assert is_spot(cluster, name)
    assert 0 < cluster["idle_timeout_minutes"] <= 30


def test_docker_image_matches_the_installed_ray_and_python(cluster):
    import sys

    import ray

    tag = f"{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    docker = cluster["docker"]
    images = [docker["image"], docker.get("head_image", docker["image"])]
    images += [
        s["docker"]["worker_image"]
        for s in cluster["available_node_types"].values()
        if "docker" in s
    ]
    assert all(img.startswith(f"rayproject/ray:{tag}-") for img in images), images
    assert docker["image"].endswith("-gpu")  # CUDA for the GPU pool


@pytest.mark.parametrize("name", SHIPPED)
def test_gpu_pool_holds_every_shipped_finetune_scaling_config(cluster, name):
    cfg = shipped_experiment(name)
    placement = gres.check_placement(cluster, cfg.resources)
    assert placement.use_gpu  # "auto" and the cluster has GPU node types
    assert placement.bundle == {"CPU": cfg.resources.cpus_per_worker, "GPU": 1.0}
    assert set(placement.per_node) == {"gpu_worker"}
    assert placement.capacity >= cfg.resources.num_workers


def test_preprocessing_fits_the_cpu_pool_only(cluster):
    nodes = gres.node_type_resources(cluster)
    fits = {t for t, r in nodes.items() if gres.bundles_per_node(r, gres.PREPROCESS_BUNDLE)}
    assert "cpu_worker" in fits and cluster["head_node_type"] not in fits
    # a GPU node could hold a one-CPU actor, but Ray keeps CPU-only work off GPU nodes
    assert {t for t in fits if nodes[t].get("GPU", 0) == 0} == {"cpu_worker"}


def test_placement_errors_name_the_fix(cluster):
    too_many = ResourcesSection(num_workers=64, cpus_per_worker=4, use_gpu=True)
    with pytest.raises(gres.ClusterConfigError, match="raise max_workers"):
        gres.check_placement(cluster, too_many)
    too_big = ResourcesSection(num_workers=1, cpus_per_worker=64, use_gpu=True)
    with pytest.raises(gres.ClusterConfigError, match="cpus_per_worker"):
        gres.check_placement(cluster, too_big)


def test_shared_storage_is_where_runs_and_data_go(cluster):
    start = " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    assert start.count("GLEE_RUNS=/mnt/shared/") == 2 and start.count("GLEE_DATA=/mnt/shared/") == 2
    assert any("/mnt/shared" in c for c in cluster["initialization_commands"])
    assert "--volume /mnt/shared:/mnt/shared" in cluster["docker"]["run_options"]
    for name in SHIPPED:  # presets that name a storage path name the shared volume
        path = shipped_experiment(name).resources.storage_path
        assert path == "" or path.startswith("/mnt/shared/"), (name, path)


# --------------------------------------------------------------------------- security


def test_only_ssh_is_open_and_auth_is_by_token(cluster):
    for rule in cluster["provider"].get("security_group", {}).get("IpPermissions", []):
        assert rule["FromPort"] == rule["ToPort"] == 22, rule
    for cmd in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        assert "ray stop" in cmd or "RAY_AUTH_MODE=token" in cmd
    assert not re.search(r"--(ray-client-server-port|dashboard-port)", str(cluster))
    # the token is the user's file, copied from their home, not from the repository
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "ssh_private_key" not in cluster["auth"]


SECRET = re.compile(
    r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\"type\":\s*\"service_account\""
)


def test_no_credentials_in_the_repository():
    skip = {".git", ".venv", "data", "runs", ".pytest_cache", ".ruff_cache", "__pycache__"}
    found = []
    for path in REPO.rglob("*"):
        if skip & set(path.relative_to(REPO).parts) or not path.is_file():
            continue
        if path.suffix not in {".py", ".yaml", ".yml", ".md", ".txt", ".toml", ".json", ""}:
            continue
        if path.stat().st_size < 2_000_000 and SECRET.search(path.read_text(errors="ignore")):
            found.append(str(path.relative_to(REPO)))
    assert not found


def test_working_dir_upload_leaves_data_runs_and_venv_behind(tmp_path):
    """Package a stand-in checkout exactly as `ray job submit --working-dir .` does."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import create_package

    work = tmp_path / "checkout"
    for ignore in (".gitignore", ".rayignore"):
        if (REPO / ignore).is_file():
            (work / ignore).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / ignore, work / ignore)
    files = [
        "jobs/finetune.py",
        "glee/model/glee_net.py",
        "configs/demo.yaml",
        "data/raw/bp4d/2D+3D/F001/T1/0001.jpg",
        "data/prep/bp4d/faces/part-0.parquet",
        "runs/demo/fold1/checkpoint_epoch0000/state.pt",
        ".venv/bin/python",
        ".git/HEAD",
    ]
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).write_text("x")
    pkg = tmp_path / "pkg.zip"
    create_package(
        str(work),
        pkg,
        include_gitignore=True,
        excludes=ray_constants.get_runtime_env_default_excludes(),
    )
    names = set(zipfile.ZipFile(pkg).namelist())
    assert {"jobs/finetune.py", "glee/model/glee_net.py", "configs/demo.yaml"} <= names
    leaked = [n for n in names if n.split("/")[0] in {"data", "runs", ".venv", ".git"}]
    assert not leaked


# --------------------------------------------------------------------------- three nodes


@pytest.fixture(scope="module")
def three_nodes(local_ray_starter):
    """A head with CPU: 0 (as in cluster.yaml) and two three-CPU worker nodes (a two-CPU
    Train worker and a CPU of the input pipeline each); connected.

    The test session's local Ray (conftest `ray_session`), if running, is shut down for
    this module and started again after it: a driver connects to one Ray at a time.
    """
    import ray
    from ray.cluster_utils import Cluster

    had_session = ray.is_initialized()
    if had_session:
        ray.shutdown()
    saved_address = os.environ.get("RAY_ADDRESS")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 200 * 2**20},
    )
    try:
        workers = [cluster.add_node(num_cpus=3, object_store_memory=200 * 2**20) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        # Ray's own state-API calls without an address (Train's controller makes some)
        # would otherwise pick whichever Ray instance on this machine started last.
        os.environ["RAY_ADDRESS"] = cluster.address
        yield cluster.address, cluster.head_node.node_id, {w.node_id for w in workers}
    finally:
        if saved_address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = saved_address
        ray.shutdown()
        cluster.shutdown()
        if had_session:
            local_ray_starter()


def _actor_nodes(address: str, class_part: str) -> list[str]:
    """Node ids of this cluster's actors whose class name contains `class_part`."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, detail=True, limit=10_000)
    return [a.node_id for a in actors if class_part in a.class_name]


def _task_nodes(address: str, name_part: str) -> list[str]:
    """Node ids of this cluster's finished tasks (actor methods too) named `name_part`."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=address, detail=True, limit=10_000)
    return [t.node_id for t in tasks if name_part in t.name and t.state == "FINISHED"]


@pytest.mark.ray
@pytest.mark.slow
def test_preprocessing_and_ddp_spread_over_two_nodes(three_nodes, toy_prep, tmp_path):
    from glee.synthetic.writers import synthesize
    from glee_platform import train
    from glee_platform.preprocess import preprocess_dataset

    address, head_id, worker_ids = three_nodes
    shared = tmp_path / "shared"  # stands in for /mnt/shared: every node sees it

    # Ray Train: two workers, one per node (2 CPUs each, the third streams), DDP over gloo
    storage = shared / "runs"
    cfg = load_config(
        "smoke",
        [
            "name=twonodes",
            f"data.prep={toy_prep}",
            f"resources.storage_path={storage}",
            "resources.num_workers=2",
            "resources.cpus_per_worker=2",
            "resources.use_gpu=auto",
            "finetune.init=none",
            "finetune.batch_size=8",
            "finetune.epochs=2",
            "finetune.folds=[2]",
        ],
    )
    run, _ = train.run_finetune_fold(cfg, 2, None)
    train_nodes = _actor_nodes(address, "RayTrainWorker")
    assert set(train_nodes) == worker_ids, train_nodes
    assert head_id not in train_nodes
    # the validation counts were all-reduced over both ranks: the whole of part 2
    assert run.final["val_count"] == 48 and [h["epoch"] for h in run.history] == [0, 1]
    # checkpoints landed in the shared storage_path, written by rank 0 on a worker node
    assert run.checkpoint.is_relative_to(storage)
    checkpoints = sorted((storage / "twonodes" / "fold2").glob("checkpoint_epoch*"))
    assert [c.name for c in checkpoints] == ["checkpoint_epoch0000", "checkpoint_epoch0001"]
    assert all((c / train.STATE_FILE).is_file() for c in checkpoints)

    # Ray Data: 36 shards (6 subjects x 2 tasks x 3) through a fixed pool of one-CPU actors,
    # as `jobs/preprocess.py --num-cpus 6` makes it: actors on both worker nodes
    raw = synthesize(shared / "raw", preset="tiny", datasets=["bp4d"], progress=False)
    summary = preprocess_dataset(
        "bp4d",
        raw["bp4d"],
        shared / "prep" / "bp4d",
        num_cpus=6,
        progress=False,
        shard_size=2,
        landmarks="provided",
    )
    assert summary.rows_ok > 0 and summary.shards_run == summary.shards_total == 36
    # (the state API leaves node_id empty on some finished actor-method events: not counted)
    pre_nodes = {n for n in _task_nodes(address, "ShardWorker") if n}
    assert pre_nodes == worker_ids, pre_nodes  # both worker nodes, never the head
    # and every shard's rows landed in the shared folder
    assert len(list((shared / "prep" / "bp4d" / "faces").glob("part-*.parquet"))) == 36


@pytest.mark.ray
@pytest.mark.slow
def test_every_worker_node_fetches_the_weights_it_needs_on_first_use(
    three_nodes, serve_files, tmp_path
):
    """Two tasks on each worker node (each node its own torch home, as on a cluster without
    a shared cache) call `fetch_weights` on first use, as the FAN backend and the VGGFace2
    loader do: every node ends with the verified file, downloaded once per node (the file
    lock holds back the node's second task), from the mirror the environment names."""
    import hashlib

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from glee.weights_cache import WeightFile

    address, head_id, worker_ids = three_nodes
    body = os.urandom(400_000)
    base, hits = serve_files({"/mirror/weights.bin": body})
    spec = WeightFile(
        name="weights.bin",
        url="https://weights.invalid/weights.bin",  # never reached: the mirror is set
        sha256=hashlib.sha256(body).hexdigest(),
        folder="checkpoints",
        library="a test",
    )

    @ray.remote(num_cpus=1)
    def first_use(spec: WeightFile) -> tuple[str, str, str]:
        from glee.weights_cache import fetch_weights

        path = fetch_weights(spec, progress=False)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return ray.get_runtime_context().get_node_id(), str(path), digest

    calls = []
    for node in sorted(worker_ids):
        env = {"TORCH_HOME": str(tmp_path / node), "GLEE_WEIGHTS_MIRROR": f"{base}/mirror"}
        opts = first_use.options(
            runtime_env={"env_vars": env},
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        calls += [opts.remote(spec), opts.remote(spec)]
    results = ray.get(calls, timeout=120)
    assert {node for node, _, _ in results} == worker_ids
    for node, path, digest in results:
        assert Path(path) == tmp_path / node / "checkpoints" / "weights.bin"
        assert digest == spec.sha256
    assert hits["/mirror/weights.bin"] == len(worker_ids)  # once per node
