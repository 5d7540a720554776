"""Parameters, MACs and FLOPs of GLEE-Net per image, per branch, beside the paper's figures.

    python -m glee.model.summary --preset paper
    python -m glee.model.summary --preset tiny --ablation wo_lb --input-size 160

Counts come from `torch.utils.flop_counter.FlopCounterMode` over one forward of one image
(eval mode): it counts matrix multiplies, convolutions, batched matmuls and attention at 2
FLOPs per multiply-accumulate, and nothing else (batch norm, activations, pooling and
resizing are left out), so MACs = FLOPs / 2 exactly. Counting needs no weights: the model
is built with random initialisation (`GLEENet(cfg)`, not `build_glee_net`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from glee.model.config import ABLATIONS, GLEEConfig
from glee.model.glee_net import GLEENet

# The paper's reported complexity of GLEE-Net (reference figures, RTX 3090 Ti).
PAPER_PARAMETERS = 56.6e6
PAPER_GIGA_OPS = 8.72  # "8.72 G" per image; whether MACs or FLOPs is what `summarize` finds
PRESETS: dict[str, Callable[[], GLEEConfig]] = {"paper": GLEEConfig.paper, "tiny": GLEEConfig.tiny}


@dataclass
class FlopCount:
    """FLOPs of one call: the total and per module (qualified names relative to the root)."""

    total: int
    modules: dict[str, int] = field(default_factory=dict)

    def of(self, name: str) -> int:
        """FLOPs inside module `name` ("" is the whole call); 0 if it never ran."""
        return self.total if name == "" else self.modules.get(name, 0)


def _conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """aten.convolution_backward: the input and the weight gradient cost one forward each.

    Replaces torch's formula, which counts a grouped convolution's weight gradient `groups`
    times over (16x for the local branch; seen in torch 2.14). Forward multiply-adds are
    batch * output positions * weight elements (input positions when transposed); the
    weight's second dimension is already in-channels per group."""
    positions = (grad_out_shape if not transposed else x_shape)[2:]
    forward = 2 * x_shape[0] * math.prod(positions) * math.prod(w_shape)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Run `fn()` under FlopCounterMode; forward and, if `fn` calls it, backward FLOPs."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, depth=None, custom_mapping=mapping) as counter:
        fn()
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global" or "." not in key:  # "Global" and the root module's own name
            continue
        per_module[key.split(".", 1)[1]] = int(sum(ops.values()))
    return FlopCount(total=int(counter.get_total_flops()), modules=per_module)


@dataclass
class PartSummary:
    """One row: a named sub-module (`module` is its qualified name in GLEENet)."""

    label: str
    module: str
    params: int
    trainable: int
    flops: int  # forward, per image
    depth: int = 0  # 0 a branch, 1 a piece of one

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass
class ModelSummary:
    preset: str
    ablation: str
    input_size: int
    params: int
    trainable: int
    flops: int  # forward, per image
    parts: list[PartSummary]
    module_flops: dict[str, int] = field(default_factory=dict)  # every module that ran

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def branches(self) -> list[PartSummary]:
        return [p for p in self.parts if p.depth == 0]

    def paper_convention(self) -> tuple[str, float]:
        """Which count the paper's 8.72 G is closest to, and the relative gap to it."""
        gaps = {
            "MACs": self.macs / 1e9 / PAPER_GIGA_OPS - 1.0,
            "FLOPs": self.flops / 1e9 / PAPER_GIGA_OPS - 1.0,
        }
        name = min(gaps, key=lambda k: abs(gaps[k]))
        return name, gaps[name]


def _parts_of(model: GLEENet) -> list[tuple[str, str, int]]:
    """(label, qualified module name, depth) of the branches and their main pieces."""
    parts: list[tuple[str, str, int]] = []
    gb = model.global_branch
    if gb is not None:
        siamese = "identity" in dict(gb.named_children())
        label = "global branch (Sec. III-A)" if siamese else "ResNet instead of GB&LB"
        parts.append((label, "global_branch", 0))
        if siamese:
            parts += [
                ("identity model (frozen)", "global_branch.identity", 1),
                ("face model", "global_branch.face", 1),
                ("V_exp -> G_exp linear", "global_branch.reduce", 1),
            ]
    if model.local_branch is not None:
        parts += [
            ("local branch (Sec. III-B)", "local_branch", 0),
            ("16 local extractors", "local_branch.extractors", 1),
            ("MLP -> L_exp", "local_branch.mlp", 1),
        ]
    parts.append(("classifier (Sec. III-D)", "classifier", 0))
    return parts


def summarize(
    cfg: GLEEConfig, preset: str = "custom", input_size: int | None = None
) -> ModelSummary:
    """Parameters and per-image forward FLOPs of `GLEENet(cfg)`, total and per part."""
    if input_size is not None:
        cfg = dataclasses.replace(cfg, input_size=input_size)  # validated there
    size = cfg.input_size
    model = GLEENet(cfg).eval()
    images = torch.rand(1, 3, size, size)  # (1, 3, S, S): one image
    f_exp = torch.zeros(1, cfg.expr_dim) if cfg.use_3d else None
    # Grad mode stays on: in eval with grad off nn.TransformerEncoderLayer takes a fused
    # fast path whose matmuls the counter cannot see.
    count = count_flops(lambda: model(images if cfg.has_embedding else None, f_exp))
    named = dict(model.named_modules())
    parts = []
    for label, name, depth in _parts_of(model):
        params = list(named[name].parameters())
        parts.append(
            PartSummary(
                label=label,
                module=name,
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
                flops=count.of(name),
                depth=depth,
            )
        )
    return ModelSummary(
        preset=preset,
        ablation=cfg.ablation,
        input_size=size,
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        flops=count.total,
        parts=parts,
        module_flops=count.modules,
    )


def _si(n: float) -> str:
    """4.99G, 15.2M, 2.05K: three significant figures."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def format_summary(s: ModelSummary) -> str:
    head = f"{'part':<30}{'params':>9}{'trainable':>11}{'MACs':>9}{'FLOPs':>9}"
    lines = [
        f"GLEE-Net preset={s.preset} ablation={s.ablation}: one {s.input_size}x{s.input_size} "
        "image, forward, eval mode, random weights",
        head,
        "-" * len(head),
    ]
    rows = [("  " * p.depth + p.label, p) for p in s.parts] + [("total", s)]
    for label, p in rows:
        if label == "total":
            lines.append("-" * len(head))
        lines.append(
            f"{label[:30]:<30}{_si(p.params):>9}{_si(p.trainable):>11}"
            f"{_si(p.macs):>9}{_si(p.flops):>9}"
        )
    lines.append(f"{'paper (reported)':<30}{_si(PAPER_PARAMETERS):>9}{'':>11}{'8.72G':>18}")
    if s.preset == "paper" and s.ablation == "full":
        name, gap = s.paper_convention()
        lines.append(
            f"the paper's 8.72 G is closest to {name} (counted here {gap:+.1%} from it; "
            f"FLOPs = 2 x MACs); parameters {s.params / PAPER_PARAMETERS - 1.0:+.1%} from 56.6M"
        )
    else:
        lines.append("the paper's figures are for the full paper preset (--preset paper)")
    lines.append(
        "counted by torch.utils.flop_counter: matmul, conv, bmm, attention (2 FLOPs per "
        "multiply-add); batch norm, activations, pooling and resizing are not counted"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glee.model.summary", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--ablation", choices=ABLATIONS, default="full")
    parser.add_argument("--input-size", type=int, default=None, help="pixels (default 176)")
    args = parser.parse_args(argv)
    try:
        cfg = PRESETS[args.preset]().with_ablation(args.ablation)
        summary = summarize(cfg, preset=args.preset, input_size=args.input_size)
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
