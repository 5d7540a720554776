"""GLEE-Net hyper-parameters as one typed, validated dataclass, its presets and the
ablation variants of Table V.

`GLEEConfig.paper()` follows the paper (Sec. III, IV-B); `GLEEConfig.tiny()` keeps every
structural piece (siamese deviation, 16 local extractors, Transformer classifier) at a size
that trains on a CPU in tests and demos. `cfg.with_ablation("wo_lb")` returns the variant.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from glee.typed_config import choice, coerce, from_mapping

BACKBONES: tuple[str, ...] = ("inception_resnet_v1", "small", "resnet18", "resnet50")
# A ResNet backbone replaces the global AND local branches (Table V "ResNet instead of GB&LB").
RESNET_BACKBONES: tuple[str, ...] = ("resnet18", "resnet50")
CLASSIFIERS: tuple[str, ...] = ("transformer", "mlp")
# Table V rows; "full" is the complete GLEE-Net.
ABLATIONS: tuple[str, ...] = (
    "full",
    "wo_pretrain",
    "fixed_gb_lb",
    "resnet_gb_lb",
    "wo_gb_lb",
    "wo_3dgb",
    "wo_lb",
    "wo_tc",
    "wo_joint_fc",
)


@dataclass
class GLEEConfig:
    """Model hyper-parameters. Build from a dict (YAML) with `GLEEConfig.from_dict`.

    Embedding: E_exp = G_exp + L_exp, both `embed_dim` (16, Sec. III-B).
    Classifier input: concat(E_exp, f_exp) = embed_dim + expr_dim (16 + 51, Sec. III-D);
    without the 3D branch only E_exp, without GB&LB only f_exp.
    """

    num_aus: int = 12
    # Global branch (Sec. III-A): siamese InceptionResnetV1, or a small CNN of the same
    # siamese structure for CPU presets, or a torchvision ResNet replacing GB and LB.
    backbone: str = "inception_resnet_v1"
    embed_dim: int = 16
    input_size: int = 176  # training crop of the 200x200 aligned face (Sec. IV-B)
    bn_reinit_std: float = 0.1  # face model BN: weight ~ N(1, std), bias ~ N(0, std)
    small_channels: tuple[int, ...] = (32, 64, 128, 256)  # backbone "small" only
    small_embed_dim: int = 128  # backbone "small": size of V_face / V_id
    weights_path: str | None = None  # VGGFace2 state dict; None: the torch cache path
    # Without VGGFace2 weights the paper's global branch is not the paper's: refuse to
    # build it from random weights unless this says so (backbone "small" needs no file).
    allow_random_init: bool = False
    # Local branch (Sec. III-B): 16 crops, each through four 3x3 convs + self-attention.
    local_crop_size: int = 96
    local_channels: tuple[int, ...] = (32, 64, 128, 256)
    local_attention_dim: int = 32  # query/key channels of the self-attention
    local_mlp_hidden: int = 512
    # Expression coefficients of the 3DMM fit (Sec. III-C).
    expr_dim: int = 51
    # Classifier (Sec. III-D).
    classifier: str = "transformer"
    token_dim: int = 32
    token_hidden: int = 64  # hidden width of each per-AU token MLP
    classifier_depth: int = 3
    classifier_heads: int = 4  # 4 heads of 8 dims over 32-d tokens (the paper gives no count)
    classifier_ff_dim: int = 64  # feed-forward width inside each encoder layer
    classifier_dropout: float = 0.1
    mlp_hidden: int = 256  # classifier "mlp" (Table V "MLP instead of TC")
    joint_fc: bool = True
    # Ablation switches (Table V).
    use_global: bool = True
    use_local: bool = True
    use_3d: bool = True
    freeze_branches: bool = False  # "fixed GB&LB": branch weights frozen, BN in eval
    uses_pretraining: bool = True  # "w/o pretrain" is a training choice, not architecture
    ablation: str = "full"  # which Table V rows this config implements ("wo_lb+wo_tc")

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- presets

    @classmethod
    def paper(cls, num_aus: int = 12) -> GLEEConfig:
        """The paper's GLEE-Net (56.6M parameters with InceptionResnetV1)."""
        return cls(num_aus=num_aus)

    @classmethod
    def tiny(cls, num_aus: int = 12) -> GLEEConfig:
        """Every structural piece of GLEE-Net at CPU size (tests, demos)."""
        return cls(
            num_aus=num_aus,
            backbone="small",
            small_channels=(8, 16, 32, 32),
            small_embed_dim=64,
            local_crop_size=48,
            local_channels=(8, 16, 16, 32),
            local_attention_dim=8,
            local_mlp_hidden=64,
            token_hidden=32,
            classifier_ff_dim=64,
            mlp_hidden=64,
        )

    def with_ablation(self, name: str) -> GLEEConfig:
        """A copy implementing Table V row `name` on top of this config (rows compose)."""
        choice("ablation", name, ABLATIONS)
        if name == "full":
            return dataclasses.replace(self)
        changes: dict[str, Any] = {}
        if name == "wo_pretrain":
            changes["uses_pretraining"] = False
        elif name == "fixed_gb_lb":
            changes["freeze_branches"] = True
        elif name == "resnet_gb_lb":
            # The CPU preset gets the small ResNet, the paper preset ResNet-50.
            changes["backbone"] = "resnet18" if self.backbone == "small" else "resnet50"
            changes["use_local"] = False
            changes["weights_path"] = None
        elif name == "wo_gb_lb":
            changes.update(use_global=False, use_local=False)
        elif name == "wo_3dgb":
            changes["use_3d"] = False
        elif name == "wo_lb":
            changes["use_local"] = False
        elif name == "wo_tc":
            changes["classifier"] = "mlp"
        elif name == "wo_joint_fc":
            changes["joint_fc"] = False
        parts = [p for p in self.ablation.split("+") if p != "full"]
        if name not in parts:
            parts.append(name)
        changes["ablation"] = "+".join(parts)
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ validation

    @property
    def head_input_dim(self) -> int:
        """Width of the classifier input: E_exp (if any branch) then f_exp (if 3D)."""
        return (self.embed_dim if self.has_embedding else 0) + (self.expr_dim if self.use_3d else 0)

    @property
    def has_embedding(self) -> bool:
        """False only for "w/o GB&LB": then the head sees f_exp alone and embed() refuses."""
        return self.use_global or self.use_local

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the first bad field and what it accepts.
        Values are coerced to their annotations on the way (lists become tuples)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(hints[f.name], getattr(self, f.name), f.name))
        choice("backbone", self.backbone, BACKBONES)
        choice("classifier", self.classifier, CLASSIFIERS)
        for part in self.ablation.split("+"):
            choice("ablation", part, ABLATIONS)
        positive = (
            "num_aus",
            "embed_dim",
            "input_size",
            "small_embed_dim",
            "local_crop_size",
            "local_attention_dim",
            "local_mlp_hidden",
            "expr_dim",
            "token_dim",
            "token_hidden",
            "classifier_depth",
            "classifier_heads",
            "classifier_ff_dim",
            "mlp_hidden",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("local_channels", "small_channels"):
            chans = getattr(self, name)
            if len(chans) != 4 or any(c <= 0 for c in chans):
                raise ValueError(f"{name} must be four positive integers, got {list(chans)}")
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32 pixels, got {self.input_size}")
        if self.token_dim % self.classifier_heads:
            raise ValueError(
                f"token_dim ({self.token_dim}) must be divisible by classifier_heads "
                f"({self.classifier_heads})"
            )
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")
        if self.bn_reinit_std < 0:
            raise ValueError(f"bn_reinit_std must be >= 0, got {self.bn_reinit_std}")
        if self.backbone in RESNET_BACKBONES and self.use_local:
            raise ValueError(
                f"backbone {self.backbone!r} replaces both global and local branches: "
                "set use_local=False (or use with_ablation('resnet_gb_lb'))"
            )
        if self.weights_path is not None and self.backbone != "inception_resnet_v1":
            raise ValueError(
                f"weights_path is VGGFace2 InceptionResnetV1 weights: it needs backbone "
                f"'inception_resnet_v1', got {self.backbone!r}; set weights_path to null"
            )
        if not (self.has_embedding or self.use_3d):
            raise ValueError(
                "use_global, use_local and use_3d are all False: the classifier has no input"
            )

    # ---------------------------------------------------------- dict round trip

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for YAML, logs and Ray configs."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: typing.Mapping[str, Any]) -> GLEEConfig:
        """Validated config from a dict; unknown keys and bad values raise ConfigError."""
        return from_mapping(cls, d)


__all__ = ["ABLATIONS", "BACKBONES", "CLASSIFIERS", "RESNET_BACKBONES", "GLEEConfig"]
