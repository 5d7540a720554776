"""The numerics of one optimisation step, shared by the Ray Train loops and the GPU bench.

Pure PyTorch: precision (fp32, or autocast to bf16 / fp16 with a GradScaler for fp16),
the step itself without a host sync, optimizer state that follows the model's device on
resume, channels_last and pinned, non-blocking batch copies. The paper trains with SGD,
momentum 0.9 (Sec. IV-B); what optimizer runs is the caller's choice.

    step = Optimisation(model, torch.optim.SGD(params, lr=2e-3, momentum=0.9), "auto")
    loss = step.step(lambda: au_loss(*model(x, f_exp), labels, weights))  # no host sync
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

import torch
from torch import nn

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T")


def cuda_supports_bf16(device: torch.device) -> bool:
    """Native bf16 arithmetic: compute capability 8.0 (Ampere) or newer."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_precision(setting: str, device: torch.device) -> str:
    """`auto|fp32|bf16|fp16` -> the precision that runs on `device` (fp32, bf16 or fp16).

    auto: bf16 on a CUDA device with native bf16, else fp32. bf16 runs on CUDA (8.0+)
    and on the CPU (CPU autocast supports it); fp16 only on CUDA. Anything else raises
    ValueError with one line saying what to set instead.
    """
    device = torch.device(device)
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {setting!r}")
    if setting == "auto":
        return "bf16" if device.type == "cuda" and cuda_supports_bf16(device) else "fp32"
    if setting == "fp32":
        return "fp32"
    if device.type == "cuda":
        if setting == "bf16" and not cuda_supports_bf16(device):
            raise ValueError(
                f"precision bf16 needs a GPU of compute capability 8.0 or newer, and {device} "
                "is older: set precision to fp16 or fp32"
            )
        return setting
    if device.type == "cpu" and setting == "bf16":
        return "bf16"
    raise ValueError(
        f"precision {setting} does not run on device {device.type} (fp16 autocast needs CUDA): "
        "set precision to auto, fp32 or bf16"
    )


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (its gradients underflow without one); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """`torch.autocast` to the precision's dtype; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[precision])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def move_optimizer_state(
    optimizer: torch.optim.Optimizer, device: torch.device | None = None
) -> None:
    """Put every optimizer state tensor on its parameter's device (or on `device`).

    The resume bug this fixes: `optimizer.load_state_dict` while the model is on the CPU
    puts the momentum buffers on the CPU; `model.to("cuda")` then moves the parameters
    but not the state, and the first step mixes devices. Call this after moving the model.
    `step` counters stay where torch keeps them (a CPU scalar) unless the parameter group
    is capturable or fused, as `Optimizer.load_state_dict` does.
    """
    for group in optimizer.param_groups:
        on_device = bool(group.get("capturable") or group.get("fused"))
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            target = param.device if device is None else torch.device(device)
            for key, value in state.items():
                if not torch.is_tensor(value) or (key == "step" and not on_device):
                    continue
                state[key] = value.to(device=target, non_blocking=True)


def read_checkpoint(f: str | IO[bytes], weights_only: bool = True) -> dict[str, Any]:
    """`torch.load` onto the CPU, whatever device wrote the file (a GPU checkpoint loads on
    a CPU-only machine); `load_state_dict` then moves what it needs to the model's device."""
    return torch.load(f, map_location="cpu", weights_only=weights_only)


class Optimisation:
    """One optimisation step of `model` with `optimizer` at a precision.

    `step(compute_loss)` runs `compute_loss()` (forward and loss) under autocast unless
    fp32, backward (scaled for fp16), the optimizer step, `zero_grad(set_to_none=True)`,
    and returns the detached fp32 loss without a host sync: the caller reads it (`.item()`,
    the loop's one host sync) only every log interval, as nanoGPT does.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: str = "auto",
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = torch.device(device) if device is not None else model_device(model)
        self.precision = resolve_precision(precision, self.device)
        self.scaler = grad_scaler(self.precision, self.device)
        self.optimizer.zero_grad(set_to_none=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision context; use it for evaluation forwards too."""
        return autocast(self.precision, self.device)

    def step(self, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            loss = compute_loss()
        if loss.dim() != 0:
            raise ValueError(f"compute_loss must return a scalar loss, got {tuple(loss.shape)}")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflow
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().float()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "precision": self.precision,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load optimizer (and fp16 scaler) state; optimizer state goes to the parameters'
        devices, whichever device saved it and wherever the model was when it was read.

        A checkpoint of another precision loads too: the scaler state is used only when
        both are fp16 (otherwise fp16 starts from a fresh scale)."""
        self.optimizer.load_state_dict(state["optimizer"])
        move_optimizer_state(self.optimizer)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def channels_last(x: T, enabled: bool = True) -> T:
    """A module or 4-d tensor in channels_last memory format (others unchanged)."""
    if not enabled:
        return x
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    if torch.is_tensor(x) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def batch_to_device(
    batch: T, device: torch.device, non_blocking: bool = True, images_channels_last: bool = False
) -> T:
    """Tensors of a (nested dict / list / tuple) batch on `device`.

    To a CUDA device, CPU tensors are pinned first so the copy is asynchronous with
    `non_blocking`. `images_channels_last=True` puts 4-d float tensors (images) in channels_last.
    Non-tensors pass through unchanged.
    """
    device = torch.device(device)
    pin = device.type == "cuda" and non_blocking

    def move(value: Any) -> Any:
        if torch.is_tensor(value):
            if pin and value.device.type == "cpu" and not value.is_pinned():
                value = value.pin_memory()
            value = value.to(device, non_blocking=non_blocking)
            return channels_last(value, images_channels_last and value.is_floating_point())
        if isinstance(value, Mapping):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return type(value)(*(move(v) for v in value))
        if isinstance(value, (list, tuple)):
            return type(value)(move(v) for v in value)
        return value

    return move(batch)


__all__ = [
    "AMP_DTYPES",
    "PRECISIONS",
    "Optimisation",
    "autocast",
    "batch_to_device",
    "channels_last",
    "cuda_supports_bf16",
    "grad_scaler",
    "model_device",
    "move_optimizer_state",
    "read_checkpoint",
    "resolve_precision",
]
