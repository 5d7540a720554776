import pytest
import torch
from torch import nn

from glee.model import GLEEConfig
from glee.model.local_branch import (
    CROP_NAMES,
    GroupedLocalExtractors,
    LocalBranch,
    crop_boxes,
    extract_crops,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads are ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_crop_boxes_of_a_176_face():
    boxes = dict(zip(CROP_NAMES, crop_boxes(176, 176)))
    assert len(boxes) == 16
    assert boxes["L34"] == (0, 176, 0, 132)  # all rows, columns 0..131
    assert boxes["R34"] == (0, 176, 44, 176)
    assert boxes["T34"] == (0, 132, 0, 176)
    assert boxes["B12"] == (88, 176, 0, 176)
    assert boxes["TL12"] == (0, 88, 0, 88)  # the top-left quarter
    assert boxes["BR34"] == (44, 176, 44, 176)
    assert boxes["TR12"] == (0, 88, 88, 176)
    assert boxes["BL34"] == (44, 176, 0, 132)


def test_extracted_crops_show_their_regions():
    # Channel 0 holds the column index, channel 1 the row index: the mean of each resized
    # crop is the centre of its region, whatever the resizing.
    size = 176
    cols = torch.arange(size, dtype=torch.float32).expand(size, size)
    img = torch.stack([cols, cols.T, torch.zeros(size, size)])[None]  # (1, 3, 176, 176)
    crops = extract_crops(img, 96)
    assert crops.shape == (1, 16, 3, 96, 96)
    for i, (t, b, l, r) in enumerate(crop_boxes(size, size)):
        assert crops[0, i, 0].mean().item() == pytest.approx((l + r - 1) / 2, abs=0.5)
        assert crops[0, i, 1].mean().item() == pytest.approx((t + b - 1) / 2, abs=0.5)
        assert crops[0, i, 0].min().item() >= l - 1e-3
        assert crops[0, i, 0].max().item() <= r - 1 + 1e-3


def _randomise(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "gamma" in name or p.dim() == 1:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))


@pytest.mark.parametrize("train", [False, True])
def test_grouped_extractors_equal_per_crop_reference(train):
    torch.manual_seed(0)
    grouped = GroupedLocalExtractors((4, 6, 6, 8), attn_dim=4)
    _randomise(grouped)  # non-zero attention gamma so the attention path counts
    grouped.train(train)
    crops = torch.randn(3, 16, 3, 24, 24)
    out = grouped(crops)
    assert out.shape == (3, 16, 8)
    for i in range(16):
        ref = grouped.extractor(i)
        assert ref.training == train
        torch.testing.assert_close(ref(crops[:, i]), out[:, i], atol=1e-5, rtol=1e-5)


def test_grouped_extractors_are_one_batched_op_and_keep_crops_apart():
    grouped = GroupedLocalExtractors((4, 6, 6, 8), attn_dim=4).eval()
    _randomise(grouped)
    convs = [m for m in grouped.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7 and all(c.groups == 16 for c in convs)  # 4 convs + q, k, v
    crops = torch.randn(2, 16, 3, 24, 24)
    changed = crops.clone()
    changed[:, 5] += 1.0
    delta = (grouped(changed) - grouped(crops)).abs().amax(dim=(0, 2))  # (16,)
    assert delta[5] > 1e-3
    assert torch.all(delta[torch.arange(16) != 5] == 0)


def test_local_branch_output_and_gradients():
    cfg = GLEEConfig.tiny()
    branch = LocalBranch(cfg)
    x = torch.randn(2, 3, 176, 176)
    out = branch(x)
    assert out.shape == (2, cfg.embed_dim)
    out.sum().backward()
    first = branch.extractors.convs[0].weight.grad.view(16, -1)  # one row per crop
    assert torch.all(first.abs().sum(dim=1) > 0)  # every crop's extractor learns


def test_grouped_extractors_run_in_channels_last():
    grouped = GroupedLocalExtractors((4, 6, 6, 8), attn_dim=4).eval()
    _randomise(grouped)
    crops = torch.randn(2, 16, 3, 24, 24)
    expected = grouped(crops)
    grouped.to(memory_format=torch.channels_last)  # what the trainers' channels_last does
    torch.testing.assert_close(grouped(crops), expected, atol=1e-5, rtol=1e-5)
