"""What would break training on a GPU, checked on the CPU: collectives get tensors on the
training device only, resumed optimizer state lands on the model's device, the GPU
decision follows the cluster's node types, and the configs' batch is the global batch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from glee.evaluation.metrics import F1Accumulator
from glee.model.config import GLEEConfig
from glee.model.glee_net import GLEENet
from glee.typed_config import ConfigError
from glee_platform.resources import decide_gpu, per_worker_batch
from glee_platform.train.checkpoints import checkpoint_name, save_state
from glee_platform.train.worker import Collectives, Loop, Sums, restore

META = torch.device("meta")  # a device that is not the CPU, on every machine


def test_a_collective_refuses_a_tensor_off_the_training_device():
    collectives = Collectives(META)
    with pytest.raises(RuntimeError, match="NCCL takes only CUDA tensors"):
        collectives.all_reduce(torch.zeros(3))  # a CPU tensor, as the old loops made
    with pytest.raises(RuntimeError, match="broadcast"):
        collectives.broadcast_buffers(nn.BatchNorm1d(4))  # buffers left on the CPU
    collectives.all_reduce(torch.zeros(3, device=META))  # on the device: accepted


def test_what_the_loops_reduce_is_made_on_the_training_device():
    collectives = Collectives(META)
    sums = Sums(["loss", "samples"], META)
    sums.add(loss=torch.ones((), device=META), samples=32.0)
    collectives.all_reduce(sums.values)
    acc = F1Accumulator(3, device=META)
    acc.update(torch.zeros(4, 3, device=META), torch.ones(4, 3, device=META))
    collectives.all_reduce(acc.state())


def test_the_loops_call_collectives_only_through_the_checking_wrapper():
    package = Path(__file__).resolve().parents[2] / "glee_platform"
    direct = re.compile(r"torch\.distributed\.(all_reduce|broadcast|all_gather|reduce)\(")
    offenders = []
    for path in package.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if direct.search(line) and path.name != "worker.py":
                offenders.append(f"{path.name}:{n}")
    assert not offenders, offenders


def _sgd(net: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)


def _loop(net: GLEENet) -> Loop:
    return Loop("fold1", net, net, _sgd, None, 2, lambda m, b: torch.zeros(()))


# the meta device stands in for a GPU: copying into its parameters is a no-op, as torch warns
@pytest.mark.filterwarnings("ignore:for .*meta parameter:UserWarning")
def test_resume_puts_model_and_optimizer_state_on_the_training_device(tmp_path):
    cfg = GLEEConfig.tiny(3)
    torch.manual_seed(0)
    net = GLEENet(cfg)
    optimizer = _sgd(net)
    initial, final = net(torch.rand(2, 3, 176, 176), torch.rand(2, 51))
    (initial.sum() + final.sum()).backward()
    optimizer.step()  # momentum buffers exist now, on the CPU
    folder = tmp_path / "run" / checkpoint_name(4)
    folder.mkdir(parents=True)
    save_state(
        folder,
        {
            "model": net.state_dict(),
            "optimisation": {"optimizer": optimizer.state_dict()},
            "epoch": 4,
            "global_step": 40,
            "history": [{"epoch": e} for e in range(5)],
        },
    )
    loop = _loop(GLEENet(cfg))
    config = {"precision": "fp32", "checkpoint_root": str(tmp_path / "run")}
    opt, start, step, history = restore(loop, config, META)
    assert (start, step, len(history)) == (5, 40, 5)
    assert {p.device for p in loop.net.parameters()} == {META}
    buffers = [s["momentum_buffer"] for s in opt.optimizer.state.values()]
    assert buffers and all(b.device == META for b in buffers)


@pytest.mark.parametrize(
    "setting, live, node_types, cluster, expected",
    [
        ("auto", {"CPU": 2}, None, False, False),  # a laptop without a GPU
        ("auto", {"CPU": 8, "GPU": 1}, None, False, True),  # a workstation with one
        ("auto", {"CPU": 32, "GPU": 4}, {"cpu": {"CPU": 8}}, True, True),  # fixed cluster
        ("auto", {"CPU": 0}, {"head": {"CPU": 0}, "gpu": {"CPU": 8, "GPU": 1}}, True, True),
        ("auto", {"CPU": 4}, {"head": {"CPU": 4}, "cpu": {"CPU": 8}}, True, False),
        (False, {"GPU": 4}, None, True, False),
        (True, {"CPU": 0}, {"gpu": {"CPU": 8, "GPU": 1}}, True, True),
        (True, {"CPU": 4}, None, True, True),  # a cluster of unknown node types: wait
    ],
)
def test_the_gpu_decision(setting, live, node_types, cluster, expected):
    decision = decide_gpu(setting, live, node_types, cluster=cluster)
    assert decision.use_gpu is expected, decision.reason
    # an autoscaling pool at 0 GPU workers: GPUs are asked for and waited on, bounded
    assert decision.wait == (expected and live.get("GPU", 0) == 0)


@pytest.mark.parametrize(
    "node_types, cluster, words",
    [(None, False, "this machine has none"), ({"cpu": {"CPU": 8}}, True, "none of its node")],
)
def test_gpus_asked_for_where_none_can_come_stop_with_one_line(node_types, cluster, words):
    with pytest.raises(ConfigError, match=words) as err:
        decide_gpu(True, {"CPU": 8}, node_types, cluster=cluster)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers, share", [(1, 32), (2, 16), (4, 8)])
def test_the_configs_batch_is_global(workers, share):
    assert per_worker_batch("finetune.batch_size", 32, workers) == share
    with pytest.raises(ConfigError, match="finetune.batch_size=30 .*num_workers=4"):
        per_worker_batch("finetune.batch_size", 30, 4)
