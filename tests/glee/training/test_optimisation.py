import io
import warnings

import pytest
import torch
from torch import nn

from glee.training.optimisation import (
    Optimisation,
    batch_to_device,
    channels_last,
    grad_scaler,
    move_optimizer_state,
    read_checkpoint,
    resolve_precision,
)

CPU = torch.device("cpu")


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear model and a problem it can fit: y = x @ w_true."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=gen)
    y = x @ torch.randn(8, 2, generator=gen)
    torch.manual_seed(seed)
    return nn.Linear(8, 2), x, y


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # Sec. IV-B: momentum 0.9


def test_precision_resolves_per_device():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # CPU autocast has bf16
    with pytest.raises(ValueError, match="fp16 autocast needs CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match=r"one of \['auto', 'fp32', 'bf16', 'fp16'\]"):
        resolve_precision("half", CPU)
    with pytest.raises(ValueError, match="fp16 autocast needs CUDA"):
        Optimisation(nn.Linear(2, 2), _sgd(nn.Linear(2, 2)), "fp16")


def test_grad_scaler_only_for_fp16():
    assert grad_scaler("fp32", torch.device("cuda")) is None
    assert grad_scaler("bf16", torch.device("cuda")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA it warns and disables itself
        assert isinstance(grad_scaler("fp16", torch.device("cuda")), torch.amp.GradScaler)
    model = nn.Linear(2, 2)
    for precision in ("fp32", "bf16"):
        assert Optimisation(model, _sgd(model), precision).scaler is None


def test_bf16_autocast_on_cpu_changes_the_matmul_dtype():
    model, x, y = _regression()
    seen = {}

    def loss():
        out = model(x)
        seen["dtype"] = out.dtype
        return (out.float() - y).pow(2).mean()

    Optimisation(model, _sgd(model), "bf16").step(loss)
    assert seen["dtype"] == torch.bfloat16
    Optimisation(model, _sgd(model), "fp32").step(loss)
    assert seen["dtype"] == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_decrease_the_loss_and_return_a_detached_tensor(precision):
    model, x, y = _regression()
    opt = Optimisation(model, _sgd(model), precision)
    losses = [opt.step(lambda: (model(x).float() - y).pow(2).mean()) for _ in range(30)]
    first = losses[0]
    assert isinstance(first, torch.Tensor) and not first.requires_grad and first.dim() == 0
    assert first.dtype == torch.float32
    assert losses[-1].item() < 0.2 * first.item()
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_step_refuses_a_loss_that_is_not_a_scalar():
    model, x, y = _regression()
    opt = Optimisation(model, _sgd(model), "fp32")
    with pytest.raises(ValueError, match="scalar loss"):
        opt.step(lambda: (model(x) - y).pow(2))


def _trained(precision: str = "fp32", optimizer=_sgd) -> Optimisation:
    model, x, y = _regression()
    opt = Optimisation(model, optimizer(model), precision)
    for _ in range(3):
        opt.step(lambda: (model(x).float() - y).pow(2).mean())
    return opt


def test_state_round_trip_restores_momentum_and_precision():
    src = _trained("bf16")
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    model = nn.Linear(8, 2)
    dst = Optimisation(model, _sgd(model), "bf16")
    state = read_checkpoint(buf)
    assert state["precision"] == "bf16" and state["scaler"] is None
    dst.load_state_dict(state)
    for p_src, p_dst in zip(src.model.parameters(), dst.model.parameters()):
        torch.testing.assert_close(
            dst.optimizer.state[p_dst]["momentum_buffer"],
            src.optimizer.state[p_src]["momentum_buffer"],
        )


def test_a_checkpoint_written_on_a_gpu_loads_on_the_cpu(monkeypatch):
    # Tag every storage "cuda:0" while saving, as torch.save does on a GPU.
    src = _trained(optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-2))
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        buf = io.BytesIO()
        torch.save(src.state_dict(), buf)
    if not torch.cuda.is_available():
        buf.seek(0)
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(buf, weights_only=True)  # what a plain torch.load does on a CPU
    buf.seek(0)
    model = nn.Linear(8, 2)
    dst = Optimisation(model, torch.optim.Adam(model.parameters(), lr=1e-2), "fp32")
    dst.load_state_dict(read_checkpoint(buf))
    for p in model.parameters():
        state = dst.optimizer.state[p]
        assert state["exp_avg"].device == p.device
        assert state["exp_avg_sq"].device == p.device
        assert state["step"].device == CPU  # torch keeps non-capturable Adam's step there
    _, x, y = _regression()
    assert torch.isfinite(dst.step(lambda: (model(x) - y).pow(2).mean()))


def test_move_optimizer_state_puts_state_on_each_parameters_device():
    opt = _trained()
    for state in opt.optimizer.state.values():
        state["momentum_buffer"] = state["momentum_buffer"].double()  # moved, never cast
    move_optimizer_state(opt.optimizer)
    for p in opt.model.parameters():
        buf = opt.optimizer.state[p]["momentum_buffer"]
        assert buf.device == p.device
        assert buf.dtype == torch.float64  # moved, not cast
    move_optimizer_state(opt.optimizer, torch.device("cpu"))
    assert all(s["momentum_buffer"].device == CPU for s in opt.optimizer.state.values())


def test_channels_last_converts_modules_and_images_only_when_asked():
    conv = channels_last(nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    assert channels_last(x).is_contiguous(memory_format=torch.channels_last)
    assert not channels_last(x, enabled=False).is_contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(2, 12)
    assert channels_last(labels) is labels


def test_batch_to_device_keeps_structure_and_formats_images():
    batch = {"image": torch.randn(2, 3, 8, 8), "labels": torch.ones(2, 12), "ids": ["a", "b"]}
    moved = batch_to_device((batch, torch.zeros(3)), CPU, images_channels_last=True)
    out, extra = moved
    assert out["image"].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out["image"], batch["image"])
    assert out["labels"].device == CPU and out["ids"] == ["a", "b"]
    assert extra.shape == (3,)
