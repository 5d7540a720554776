"""glee/training/optimisation.py on a CUDA device: the paper preset trains in bf16 and fp32, fp16 gets
its GradScaler, and a checkpoint goes GPU -> CPU -> GPU with the optimizer state on the
parameters' device each time (issue 16's resume bug). Skipped without CUDA; the round
trip's logic also runs on the CPU here so it is never untested."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from glee.model import GLEEConfig, GLEENet
from glee.training.losses import au_class_weights, au_loss
from glee.training.optimisation import Optimisation, move_optimizer_state, read_checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _batch(cfg: GLEEConfig, n: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, cfg.num_aus, generator=gen) < 0.3).long()
    images = torch.rand(n, 3, cfg.input_size, cfg.input_size, generator=gen)
    f_exp = torch.randn(n, cfg.expr_dim, generator=gen)
    weights = au_class_weights(labels.numpy())
    return [t.to(device) for t in (images, f_exp, labels, weights)]


def _optimisation(model: GLEENet, precision: str) -> Optimisation:
    params = [p for p in model.parameters() if p.requires_grad]
    # Sec. IV-B: SGD, momentum 0.9, lr 2e-3 for finetuning.
    return Optimisation(model, torch.optim.SGD(params, lr=2e-3, momentum=0.9), precision)


def _loss(model: GLEENet, batch) -> torch.Tensor:
    images, f_exp, labels, weights = batch
    return au_loss(*model(images, f_exp), labels, weights)


def _momentum_devices(opt: torch.optim.Optimizer) -> set[torch.device]:
    return {s["momentum_buffer"].device for s in opt.state.values()}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_paper_preset_trains_on_one_gpu(precision):
    pytest.importorskip("facenet_pytorch")
    torch.manual_seed(0)
    cfg = dataclasses.replace(GLEEConfig.paper(), classifier_dropout=0.0)  # a steady loss
    model = GLEENet(cfg).to(CUDA).train()
    opt = _optimisation(model, precision)
    batch = _batch(cfg, 8, CUDA)
    losses = [opt.step(lambda: _loss(model, batch)) for _ in range(6)]
    values = torch.stack(losses).tolist()  # the one host sync
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0]  # six steps on one batch: it learns
    assert losses[0].device.type == "cuda" and not losses[0].requires_grad
    assert _momentum_devices(opt.optimizer) == {model.classifier.joint_fc.fc.weight.device}


@pytest.mark.gpu
@needs_cuda
def test_fp16_on_the_gpu_steps_through_its_grad_scaler():
    cfg = GLEEConfig.tiny()
    model = GLEENet(cfg).to(CUDA).train()
    opt = _optimisation(model, "fp16")
    assert isinstance(opt.scaler, torch.amp.GradScaler) and opt.scaler.is_enabled()
    batch = _batch(cfg, 8, CUDA)
    for _ in range(3):
        loss = opt.step(lambda: _loss(model, batch))
    assert torch.isfinite(loss)
    assert opt.state_dict()["scaler"]["scale"] > 0


def _round_trip(train_device: torch.device, tmp_path: Path) -> None:
    """Save where it trains, resume on the CPU, save there, resume back on `train_device`."""
    cfg = GLEEConfig.tiny()
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = GLEENet(cfg).to(train_device).train()
    opt = _optimisation(model, "bf16")
    batch = _batch(cfg, 4, train_device)
    for _ in range(2):
        opt.step(lambda: _loss(model, batch))
    path = tmp_path / "on_device.pt"
    torch.save({"model": model.state_dict(), "optimisation": opt.state_dict()}, path)

    # Resume on the CPU from a checkpoint written on the training device.
    state = read_checkpoint(path)
    on_cpu = GLEENet(cfg)
    on_cpu.load_state_dict(state["model"])
    cpu_opt = _optimisation(on_cpu, "bf16")
    cpu_opt.load_state_dict(state["optimisation"])
    assert _momentum_devices(cpu_opt.optimizer) == {cpu}
    reference = opt.optimizer.state_dict()["state"][0]["momentum_buffer"].to(cpu)
    torch.testing.assert_close(
        cpu_opt.optimizer.state_dict()["state"][0]["momentum_buffer"], reference
    )
    cpu_opt.step(lambda: _loss(on_cpu.train(), _batch(cfg, 4, cpu)))
    path = tmp_path / "on_cpu.pt"
    torch.save({"model": on_cpu.state_dict(), "optimisation": cpu_opt.state_dict()}, path)

    # Back on the training device, in the order that broke resume: optimizer state loaded
    # while the model is still on the CPU, then the model moves.
    state = read_checkpoint(path)
    resumed = GLEENet(cfg)
    resumed.load_state_dict(state["model"])
    params = [p for p in resumed.parameters() if p.requires_grad]
    sgd = torch.optim.SGD(params, lr=2e-3, momentum=0.9)
    sgd.load_state_dict(state["optimisation"]["optimizer"])
    resumed.to(train_device).train()
    if train_device.type != "cpu":
        assert _momentum_devices(sgd) == {cpu}  # the bug: state left behind
        sgd.zero_grad()
        _loss(resumed, _batch(cfg, 4, train_device)).backward()
        with pytest.raises(RuntimeError):
            sgd.step()  # mixes devices
    move_optimizer_state(sgd)
    assert all(s["momentum_buffer"].device == p.device for p, s in sgd.state.items())
    assert {d.type for d in _momentum_devices(sgd)} == {train_device.type}
    back = Optimisation(resumed, sgd, "bf16")
    loss = back.step(lambda: _loss(resumed, _batch(cfg, 4, train_device)))
    assert torch.isfinite(loss)


@pytest.mark.gpu
@needs_cuda
def test_state_round_trip_gpu_cpu_gpu(tmp_path):
    _round_trip(CUDA, tmp_path)


def test_state_round_trip_logic_on_the_cpu(tmp_path):
    _round_trip(torch.device("cpu"), tmp_path)


def _ddp_step(rank: int, world: int, port: int, out: str) -> None:
    """One bf16 finetuning step of the tiny preset under DDP on GPU `rank` (NCCL)."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    cfg = GLEEConfig.tiny(4)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = GLEENet(cfg).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    opt = _optimisation(model, "bf16")
    images, f_exp, labels, weights = _batch(cfg, 4, device, seed=rank)  # each its own batch
    opt.step(lambda: au_loss(*ddp(images, f_exp), labels, weights))
    flat = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save({"same": bool(torch.equal(gathered[0], gathered[1]))}, out)
    dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpu_ddp_steps_keep_the_replicas_equal(tmp_path):
    """Two ranks on different batches: after the all-reduced step both hold the same weights."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_step, args=(2, port, str(out)), nprocs=2, join=True)
    assert torch.load(out, weights_only=True)["same"]
