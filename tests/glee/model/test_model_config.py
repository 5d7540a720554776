import dataclasses
import json

import pytest

from glee.model.config import ABLATIONS, GLEEConfig


@pytest.mark.parametrize("preset", [GLEEConfig.paper, GLEEConfig.tiny])
def test_dict_round_trip_through_json(preset):
    cfg = preset(num_aus=8).with_ablation("wo_lb")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(d["local_channels"], list)
    back = GLEEConfig.from_dict(d)
    assert back == cfg and back.num_aus == 8 and back.local_channels == cfg.local_channels


@pytest.mark.parametrize(
    ("update", "message"),
    [
        (
            {"classifier": "foo"},
            "classifier='foo' is not allowed: choose one of 'transformer', 'mlp'",
        ),
        ({"backbone": "vgg"}, "backbone='vgg' is not allowed: choose one of"),
        ({"ablation": "wo_everything"}, "ablation='wo_everything' is not allowed"),
        ({"num_aus": 0}, "num_aus must be a positive integer"),
        ({"num_aus": 2.5}, "num_aus=2.5 must be an integer"),
        ({"joint_fc": "yes"}, "joint_fc='yes' must be true or false"),
        ({"local_channels": [8, 16]}, "local_channels must be four positive integers"),
        ({"token_dim": 30, "classifier_heads": 4}, "token_dim (30) must be divisible"),
        ({"use_global": False, "use_local": False, "use_3d": False}, "no input"),
        ({"backbone": "resnet18"}, "set use_local=False"),
        ({"backbone": "small", "weights_path": "/x.pt"}, "weights_path"),
    ],
)
def test_from_dict_names_the_bad_field(update, message):
    d = GLEEConfig.paper().to_dict() | update
    with pytest.raises(ValueError) as err:
        GLEEConfig.from_dict(d)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_keys_are_rejected_by_name():
    with pytest.raises(
        ValueError, match=r"unknown config key depth: allowed keys are num_aus, backbone"
    ):
        GLEEConfig.from_dict({"depth": 3, "colour": "red"})


def test_partial_dict_uses_defaults():
    cfg = GLEEConfig.from_dict({"num_aus": 8, "classifier_heads": 2})
    assert cfg == dataclasses.replace(GLEEConfig.paper(num_aus=8), classifier_heads=2)


EXPECTED = {
    "full": {},
    "wo_pretrain": {"uses_pretraining": False},
    "fixed_gb_lb": {"freeze_branches": True},
    "resnet_gb_lb": {"backbone": "resnet50", "use_local": False},
    "wo_gb_lb": {"use_global": False, "use_local": False},
    "wo_3dgb": {"use_3d": False},
    "wo_lb": {"use_local": False},
    "wo_tc": {"classifier": "mlp"},
    "wo_joint_fc": {"joint_fc": False},
}


@pytest.mark.parametrize("name", ABLATIONS)
def test_with_ablation_changes_exactly_its_switches(name):
    base = GLEEConfig.paper()
    cfg = base.with_ablation(name)
    changed = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(base, f.name) and f.name != "ablation"
    }
    assert changed == EXPECTED[name]
    assert cfg.ablation == name
    assert base.ablation == "full"  # the original is untouched


def test_ablations_compose_and_tiny_resnet_is_resnet18():
    cfg = GLEEConfig.tiny().with_ablation("resnet_gb_lb").with_ablation("wo_tc")
    assert cfg.backbone == "resnet18" and cfg.classifier == "mlp"
    assert cfg.ablation == "resnet_gb_lb+wo_tc"
    assert GLEEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="ablation='wo_head' is not allowed"):
        cfg.with_ablation("wo_head")


def test_head_input_dim_per_variant():
    cfg = GLEEConfig.paper()
    assert cfg.head_input_dim == 16 + 51
    assert cfg.with_ablation("wo_3dgb").head_input_dim == 16
    assert cfg.with_ablation("wo_gb_lb").head_input_dim == 51
    assert not cfg.with_ablation("wo_gb_lb").has_embedding
