import pytest
import torch
from torch import nn

from glee.model import ABLATIONS, GLEEConfig, GLEENet, build_glee_net
from glee.model.classifier import MLPClassifier, ParallelLinear, TransformerClassifier
from glee.model.global_branch import GlobalBranch, ResNetEncoder

NUM_AUS = 5


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads are ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(cfg: GLEEConfig, b: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, cfg.input_size, cfg.input_size, generator=gen)
    f_exp = torch.randn(b, cfg.expr_dim, generator=gen)
    return images, f_exp


def _snapshot(module: nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if module is None else {k: v.clone() for k, v in module.state_dict().items()}


def _step_and_check(model: GLEENet, b: int) -> None:
    """Forward + backward + one SGD step; checks shapes and what may / may not change."""
    cfg = model.cfg
    images, f_exp = _batch(cfg, b)
    gb = model.global_branch
    identity_before = _snapshot(gb.identity) if isinstance(gb, GlobalBranch) else {}
    face_before = _snapshot(gb.face) if isinstance(gb, GlobalBranch) else {}
    branches_before = {k: v.clone() for k, v in model.state_dict().items() if "branch" in k}
    head_before = _snapshot(model.classifier)

    model.train()
    initial, final = model(None if not cfg.has_embedding else images, f_exp)
    assert initial.shape == final.shape == (b, cfg.num_aus)
    if not cfg.joint_fc:
        assert final is initial
    (initial.sum() + final.sum()).backward()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.step()

    if isinstance(gb, GlobalBranch):
        assert not gb.identity.training and not any(m.training for m in gb.identity.modules())
        assert all(p.grad is None for p in gb.identity.parameters())
        for k, v in gb.identity.state_dict().items():  # weights and BN statistics
            assert torch.equal(v, identity_before[k]), f"identity {k} changed"
        face_changed = any(
            not torch.equal(v, face_before[k]) for k, v in gb.face.state_dict().items()
        )
        assert face_changed != cfg.freeze_branches
    if cfg.freeze_branches:
        for k, v in model.state_dict().items():
            if "branch" in k:
                assert torch.equal(v, branches_before[k]), f"fixed branch {k} changed"
        assert not any(m.training for b_ in model._branches() for m in b_.modules())
    elif cfg.has_embedding:
        assert any(
            not torch.equal(v, branches_before[k])
            for k, v in model.state_dict().items()
            if "branch" in k
        )
    assert any(not torch.equal(v, head_before[k]) for k, v in model.classifier.state_dict().items())


@pytest.mark.parametrize("name", ABLATIONS)
def test_tiny_sweep_every_ablation(name):
    torch.manual_seed(0)
    cfg = GLEEConfig.tiny(num_aus=NUM_AUS).with_ablation(name)
    model = build_glee_net(cfg)
    assert (model.global_branch is not None) == cfg.use_global
    assert (model.local_branch is not None) == cfg.use_local
    assert isinstance(model.classifier, MLPClassifier if name == "wo_tc" else TransformerClassifier)
    if name == "resnet_gb_lb":
        assert isinstance(model.global_branch, ResNetEncoder)
    _step_and_check(model, b=2)
    if cfg.has_embedding:
        model.eval()
        e = model.embed(_batch(cfg, 3)[0])
        assert e.shape == (3, cfg.embed_dim)
        torch.testing.assert_close(e.norm(dim=1), torch.ones(3))  # L2-normalised E_exp


@pytest.fixture(scope="module")
def paper_model() -> GLEENet:
    """Read-only (never stepped): a freshly initialised paper-preset model."""
    torch.manual_seed(0)
    return GLEENet(GLEEConfig.paper(num_aus=NUM_AUS))  # no weight file is read


def test_paper_preset_full_step():
    torch.manual_seed(0)
    model = GLEENet(GLEEConfig.paper(num_aus=NUM_AUS))
    assert isinstance(model.global_branch.identity, type(model.global_branch.face))
    _step_and_check(model, b=2)


def test_paper_preset_resnet_variant():
    torch.manual_seed(0)
    model = GLEENet(GLEEConfig.paper(num_aus=NUM_AUS).with_ablation("resnet_gb_lb"))
    assert model.global_branch.resnet.fc.in_features == 2048  # ResNet-50
    _step_and_check(model, b=2)


def test_paper_parameter_count_is_near_the_paper(paper_model):
    total = sum(p.numel() for p in paper_model.parameters())
    assert abs(total - 56.6e6) < 0.5e6  # paper: 56.6M (Sec. IV-C)
    assert sum(p.numel() for p in GLEENet(GLEEConfig.tiny()).parameters()) < 500_000


@pytest.mark.parametrize("preset", ["paper", "tiny"])
def test_expression_deviation_nonzero_at_init(preset, paper_model):
    model = paper_model if preset == "paper" else GLEENet(GLEEConfig.tiny())
    gb = model.global_branch
    x = (torch.rand(2, 3, 176, 176) * 255 - 127.5) / 128
    for mode in (False, True):
        model.train(mode)
        with torch.no_grad():
            v_exp = gb.deviation(x)
        assert v_exp.norm(dim=1).min() > 1e-2
    # The face copy differs from the identity copy only in its batch norms.
    face, ident = gb.face.state_dict(), gb.identity.state_dict()
    bn_keys = {
        f"{n}.{k}"
        for n, m in gb.face.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for k in ("weight", "bias")
    }
    for k, v in face.items():
        if k.endswith(("weight", "bias")):
            assert torch.equal(v, ident[k]) != (k in bn_keys), k


def test_identity_stays_eval_after_train_and_embed_is_normalised():
    model = GLEENet(GLEEConfig.tiny())
    model.train()
    assert model.global_branch.face.training
    assert not model.global_branch.identity.training
    model.eval()
    x = torch.rand(2, 3, 176, 176)
    torch.testing.assert_close(model.embed(x).norm(dim=1), torch.ones(2))
    # forward == forward_head(embed(...)) in eval mode (deterministic)
    f = torch.randn(2, 51)
    for a, b in zip(model(x, f), model.forward_head(model.embed(x), f)):
        torch.testing.assert_close(a, b)


def test_joint_fc_starts_as_identity_and_learns_cross_au_terms():
    model = GLEENet(GLEEConfig.tiny(num_aus=NUM_AUS)).eval()
    initial, final = model(*_batch(model.cfg, 2))
    torch.testing.assert_close(initial, final)
    # A loss on the final logit of AU 0 reaches the joint weights from every other AU.
    final[:, 0].sum().backward()
    grad = model.classifier.joint_fc.fc.weight.grad  # (N_au out, N_au in)
    assert torch.all(grad[0] != 0) and torch.all(grad[1:] == 0)


def test_variant_errors_are_clear():
    wo = GLEENet(GLEEConfig.tiny().with_ablation("wo_gb_lb"))
    with pytest.raises(ValueError, match="no expression embedding"):
        wo.embed(torch.rand(2, 3, 176, 176))
    model = GLEENet(GLEEConfig.tiny())
    with pytest.raises(ValueError, match=r"f_exp must be \(B, 51\)"):
        model(torch.rand(2, 3, 176, 176), None)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        model(torch.rand(2, 176, 176), torch.randn(2, 51))
    no3d = GLEENet(GLEEConfig.tiny().with_ablation("wo_3dgb")).eval()
    assert no3d(torch.rand(2, 3, 176, 176))[0].shape == (2, 12)  # f_exp not needed
    with pytest.raises(ValueError, match="weights_path"):
        build_glee_net(GLEEConfig.tiny(), weights_path="/nonexistent.pt")


def test_classifier_depth_heads_and_parallel_linear():
    cfg = GLEEConfig.from_dict({"num_aus": 3, "classifier_depth": 2, "classifier_heads": 2})
    clf = TransformerClassifier(cfg, cfg.head_input_dim)
    assert len(clf.encoder.layers) == 2
    assert clf.encoder.layers[0].self_attn.num_heads == 2
    # ParallelLinear == N separate linear layers, each with its own weights.
    pl = ParallelLinear(3, 4, 2)
    x = torch.randn(5, 4)
    ref = torch.stack([x @ pl.weight[n] + pl.bias[n] for n in range(3)], dim=1)
    torch.testing.assert_close(pl(x), ref)
    xs = torch.randn(5, 3, 4)
    ref = torch.stack([xs[:, n] @ pl.weight[n] + pl.bias[n] for n in range(3)], dim=1)
    torch.testing.assert_close(pl(xs), ref)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_variant_uses_all_its_trainable_parameters(ablation):
    """DDP runs with find_unused_parameters=False: a trainable parameter that a variant's
    forward leaves out would hang the gradient all-reduce of a multi-GPU run."""
    cfg = GLEEConfig.tiny(3).with_ablation(ablation)
    net = GLEENet(cfg).train()
    images = torch.rand(2, 3, cfg.input_size, cfg.input_size)
    initial, final = net(images if cfg.has_embedding else None, torch.rand(2, cfg.expr_dim))
    (initial.sum() + final.sum()).backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    if cfg.has_embedding and not cfg.freeze_branches:  # pretraining, head frozen (Sec. III-E)
        net.zero_grad(set_to_none=True)
        net.classifier.requires_grad_(False)
        net.embed(images).sum().backward()
        unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, unused


def test_checkpoints_leave_out_an_identity_network_that_came_from_its_file():
    from glee.model.glee_net import IDENTITY_PREFIX, checkpoint_state, load_checkpoint_state

    cfg = GLEEConfig.tiny(NUM_AUS)
    random_id = GLEENet(cfg)
    assert any(k.startswith(IDENTITY_PREFIX) for k in checkpoint_state(random_id))  # kept
    from_file = GLEENet(cfg)
    from_file.identity_weights = "/cache/20180402-114759-vggface2.pt"
    state = checkpoint_state(from_file)
    assert state and not any(k.startswith(IDENTITY_PREFIX) for k in state)
    assert len(state) < len(from_file.state_dict())
    again = GLEENet(cfg)
    again.identity_weights = from_file.identity_weights  # build_glee_net loaded the file
    load_checkpoint_state(again, state)
    for k, v in state.items():
        assert torch.equal(again.state_dict()[k], v)
    with pytest.raises(ValueError, match="build_glee_net"):
        load_checkpoint_state(GLEENet(cfg), state)  # no file behind its identity network
