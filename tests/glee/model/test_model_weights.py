import warnings
from pathlib import Path

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from glee.model import GLEEConfig, GLEENet, build_glee_net
from glee.model.global_branch import GlobalBranch, SmallFaceNet
from glee.model.weights import (
    load_facenet_weights,
    load_state_dict,
    save_state_dict,
    vggface2_path,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads are ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_vggface2_path_follows_torch_hub(monkeypatch, tmp_path):
    name = "20180402-114759-vggface2.pt"
    assert vggface2_path(tmp_path) == tmp_path / "checkpoints" / name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert vggface2_path() == tmp_path / "th" / "checkpoints" / name
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert vggface2_path() == tmp_path / "xdg" / "torch" / "checkpoints" / name
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert vggface2_path() == Path.home() / ".cache" / "torch" / "checkpoints" / name


def test_missing_file_warns_where_to_put_it(tmp_path):
    module = SmallFaceNet((4, 4, 4, 4), 8)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.warns(UserWarning, match="not found at .*missing.pt"):
        assert load_facenet_weights(module, tmp_path / "missing.pt") is False
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def _bn_affine_keys(module: nn.Module) -> set[str]:
    return {
        f"{n}.{k}"
        for n, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for k in ("weight", "bias")
    }


def test_vggface2_file_feeds_both_copies_and_face_bn_is_reinitialised(tmp_path, monkeypatch):
    # A file shaped like facenet-pytorch's VGGFace2 release: the embedding network plus
    # the 8631-way `logits` layer, with non-default BN statistics.
    torch.manual_seed(1)
    src = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631)
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    state = src.state_dict()
    assert "logits.weight" in state and state["logits.weight"].shape == (8631, 512)
    path = tmp_path / "checkpoints" / "20180402-114759-vggface2.pt"
    path.parent.mkdir()
    torch.save(state, path)

    torch.manual_seed(0)
    cfg = GLEEConfig.paper(num_aus=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a present file gives no warning
        model = build_glee_net(cfg, weights_path=path)
    gb = model.global_branch
    assert isinstance(gb, GlobalBranch)
    ident, face = gb.identity.state_dict(), gb.face.state_dict()
    assert not any(k.startswith("logits.") for k in ident)
    for k, v in ident.items():
        assert torch.equal(v, state[k]), f"identity {k} not loaded"
    bn = _bn_affine_keys(gb.face)
    for k, v in face.items():
        if k in bn:
            assert not torch.equal(v, state[k]), f"face {k} not re-initialised"
        elif k.endswith(("running_mean", "running_var")):
            assert not torch.equal(v, state[k])  # statistics reset with the BN
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(v, state[k]), f"face {k} not loaded"
    # The default path ($TORCH_HOME/checkpoints/...) finds the same file.
    with torch.no_grad():
        gb.identity.conv2d_1a.conv.weight.zero_()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert gb.load_backbone_weights(None)
    assert torch.equal(gb.identity.conv2d_1a.conv.weight, state["conv2d_1a.conv.weight"])
    assert torch.equal(gb.face.conv2d_1a.conv.weight, state["conv2d_1a.conv.weight"])


def test_wrong_file_is_rejected_with_key_names(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an InceptionResnetV1 state dict: missing keys"):
        load_facenet_weights(SmallFaceNet((4, 4, 4, 4), 8), path)


def test_checkpoint_round_trip_and_prefix_loading(tmp_path):
    torch.manual_seed(0)
    src = GLEENet(GLEEConfig.tiny())
    path = save_state_dict(src, tmp_path / "ckpt" / "model.pt")
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    torch.manual_seed(1)
    dst = GLEENet(GLEEConfig.tiny())
    head_before = {k: v.clone() for k, v in dst.classifier.state_dict().items()}
    keys = load_state_dict(dst, path, prefixes=("global_branch.", "local_branch."))
    assert keys and all(k.startswith(("global_branch.", "local_branch.")) for k in keys)
    for k, v in dst.state_dict().items():
        if k.startswith(("global_branch.", "local_branch.")):
            assert torch.equal(v, src.state_dict()[k])
    for k, v in dst.classifier.state_dict().items():
        assert torch.equal(v, head_before[k])  # the AU head is not touched
    full = GLEENet(GLEEConfig.tiny())
    load_state_dict(full, path)
    for k, v in full.state_dict().items():
        assert torch.equal(v, src.state_dict()[k])
    with pytest.raises(ValueError, match="does not match this model"):
        load_state_dict(GLEENet(GLEEConfig.tiny().with_ablation("wo_lb")), path, ("local_branch.",))
