import pytest
import torch
from torch import nn

from glee.model import GLEEConfig
from glee.model.summary import count_flops, format_summary, main, summarize


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("groups", [1, 16])
def test_count_flops_of_a_known_conv_and_its_backward(groups):
    conv = nn.Conv2d(3 * groups, 8 * groups, 3, stride=2, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 3 * groups, 16, 16, requires_grad=True)
    # batch * out channels * 8x8 outputs * 3x3x3 kernel (per group)
    macs = 2 * 8 * groups * 8 * 8 * 3 * 9
    assert count_flops(lambda: conv(x)).total == 2 * macs
    # Backward: the input gradient and the weight gradient cost one forward each (torch's
    # own formula counts the grouped weight gradient 16 times over).
    assert count_flops(lambda: conv(x).sum().backward()).total == 3 * 2 * macs
    x.requires_grad_(False)  # the first layer: weight gradient only
    assert count_flops(lambda: conv(x).sum().backward()).total == 2 * 2 * macs


def test_tiny_summary_matches_hand_counts_and_its_parts_add_up():
    cfg = GLEEConfig.tiny()
    s = summarize(cfg, preset="tiny")
    # Grouped first conv of the 16 local extractors: 48 px crops, stride 2 -> 24x24 outputs,
    # 3 -> 8 channels per crop, 3x3 kernels.
    assert s.module_flops["local_branch.extractors.convs.0"] == 2 * 16 * 8 * 24 * 24 * 3 * 9
    assert s.module_flops["global_branch.reduce"] == 2 * cfg.small_embed_dim * cfg.embed_dim
    parts = {p.module: p for p in s.parts}
    assert sum(p.flops for p in s.branches) == s.flops
    assert sum(p.params for p in s.branches) == s.params
    assert sum(p.trainable for p in s.branches) == s.trainable
    gb = [parts[f"global_branch.{n}"] for n in ("identity", "face", "reduce")]
    assert sum(p.flops for p in gb) == parts["global_branch"].flops
    assert parts["global_branch.identity"].trainable == 0  # the frozen identity model
    assert parts["global_branch.identity"].flops == parts["global_branch.face"].flops
    assert s.macs * 2 == s.flops
    assert "local branch" in format_summary(s)


def test_ablations_drop_their_branch_from_the_counts():
    full = summarize(GLEEConfig.tiny())
    wo_lb = summarize(GLEEConfig.tiny().with_ablation("wo_lb"))
    local = next(p for p in full.parts if p.module == "local_branch")
    assert all(p.module != "local_branch" for p in wo_lb.parts)
    assert wo_lb.params == full.params - local.params
    assert wo_lb.flops == full.flops - local.flops
    assert summarize(GLEEConfig.tiny(), input_size=96).flops < full.flops


@pytest.mark.slow
def test_paper_summary_prints_its_counts_beside_the_papers(capsys):
    assert main(["--preset", "paper"]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    paper = next(line for line in out.splitlines() if line.startswith("paper (reported)"))
    assert "56.6M" in paper and "8.72G" in paper
    s = summarize(GLEEConfig.paper(), preset="paper")
    # One grouped 3 -> 32 conv over 16 crops of 96 px at stride 2 (Sec. III-B).
    assert s.module_flops["local_branch.extractors.convs.0"] == 2 * 16 * 32 * 48 * 48 * 27
    assert f"{s.params / 1e6:.3g}M" in total  # what it is, not the paper's number
    assert "closest to" in out
