import dataclasses
import hashlib
import io
import warnings
from pathlib import Path

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from torch import nn

from glee import weights_cache
from glee.model import GLEEConfig, build_glee_net
from glee.model.global_branch import GlobalBranch, SmallFaceNet
from glee.model.weights import load_facenet_weights, vggface2_path
from glee.weights_cache import MissingWeightsError


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


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_facenet_weights(SmallFaceNet((4, 4, 4, 4), 8), tmp_path / "missing.pt")


@pytest.fixture
def vggface2_at(monkeypatch, tmp_path):
    """Point the VGGFace2 spec at `url` with the SHA-256 of `body`; the torch home is tmp."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def point(url: str, body: bytes = b"") -> weights_cache.WeightFile:
        spec = dataclasses.replace(
            weights_cache.VGGFACE2, url=url, sha256=hashlib.sha256(body).hexdigest()
        )
        monkeypatch.setattr(weights_cache, "VGGFACE2", spec)
        return spec

    return point


def _bn_affine_keys(module: nn.Module) -> set[str]:
    return {
        f"{n}.{k}"
        for n, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for k in ("weight", "bias")
    }


def test_vggface2_downloads_on_first_use_into_both_copies_and_face_bn_is_reinitialised(
    file_server, vggface2_at
):
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
    buf = io.BytesIO()
    torch.save(state, buf)
    spec = vggface2_at(file_server.add("/vggface2.pt", buf.getvalue()), buf.getvalue())

    torch.manual_seed(0)
    cfg = GLEEConfig.paper(num_aus=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file that can be had gives no warning
        model = build_glee_net(cfg)
    assert vggface2_path().is_file() and vggface2_path() == spec.path()
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
    # A second build reads the cached file; an explicit weights_path is read as it is.
    again = build_glee_net(cfg, weights_path=vggface2_path())
    assert torch.equal(
        again.global_branch.identity.conv2d_1a.conv.weight, state["conv2d_1a.conv.weight"]
    )
    assert file_server.hits["/vggface2.pt"] == 1


def test_wrong_file_is_rejected_with_key_names(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an InceptionResnetV1 state dict: missing keys"):
        load_facenet_weights(SmallFaceNet((4, 4, 4, 4), 8), path)


def test_paper_preset_without_weights_refuses_random_init(vggface2_at, unreachable_url):
    spec = vggface2_at(unreachable_url)
    with pytest.raises(MissingWeightsError) as err:
        build_glee_net(GLEEConfig.paper(num_aus=4))
    msg = str(err.value)
    assert "\n" not in msg
    assert spec.url in msg and spec.name in msg and str(vggface2_path().parent) in msg
    assert "model.allow_random_init: true" in msg
    with pytest.raises(MissingWeightsError, match="model.weights_path .*nowhere.pt does not"):
        build_glee_net(GLEEConfig.paper(num_aus=4), weights_path="/nowhere.pt")


def test_allow_random_init_warns_once_and_builds(vggface2_at, unreachable_url):
    vggface2_at(unreachable_url)
    cfg = dataclasses.replace(GLEEConfig.paper(num_aus=4), allow_random_init=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_glee_net(cfg)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "random initialisation" in msgs[0]
    assert str(vggface2_path().parent) in msgs[0]
    assert isinstance(model.global_branch, GlobalBranch)


def test_tiny_preset_needs_no_weights(vggface2_at, unreachable_url, monkeypatch):
    vggface2_at(unreachable_url)

    def no_fetch(*args, **kwargs):
        raise AssertionError("the tiny preset must not look for VGGFace2 weights")

    monkeypatch.setattr(weights_cache, "fetch_weights", no_fetch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_glee_net(GLEEConfig.tiny(num_aus=4))
    assert isinstance(model.global_branch.identity, SmallFaceNet)
