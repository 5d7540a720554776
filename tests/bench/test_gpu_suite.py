"""bench/gpu_suite.py runs on machines with torch and numpy only: its CPU smoke and each
JPEG decoder it falls back to."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SUITE = Path(__file__).resolve().parents[2] / "bench" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_suite"]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("hidden", [(), ("cv2",), ("cv2", "PIL")])
def test_each_jpeg_decoder_round_trips_a_face(suite, monkeypatch, hidden):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a)
    )
    name, encode, decode = suite.jpeg_codec()
    assert name.split()[0] == {(): "cv2", ("cv2",): "PIL", ("cv2", "PIL"): "torchvision.io"}[hidden]
    face = suite.face_like(np.random.default_rng(0))
    decoded = decode(encode(face))
    assert decoded.shape == (200, 200, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - face).mean() < 8  # JPEG at quality 90, RGB order kept
    crop = suite.decode_crop_flip(decode, encode(face), np.random.default_rng(1), 176)
    assert crop.shape == (176, 176, 3)


def test_no_codec_is_one_line(suite, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert suite.decoding(4, [1], 176, 1) == [
        "decode: skipped: no JPEG codec: install opencv-python-headless, pillow or torchvision"
    ]


@pytest.mark.slow
def test_cpu_smoke_exits_0_and_ends_with_the_gpu_line(suite, capsys, one_thread):
    assert suite.main(["--smoke", "--cpu", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("GPU ") and "CPU smoke ok" in lines[-1]
    text = "\n".join(lines)
    for section in ("finetune fp32", "finetune bf16", "pretrain bf16", "inference bf16"):
        assert any(line.startswith(section) for line in lines), section
    # where Ray is installed, a fold through glee_platform's Ray Train loop, in a child process
    assert any(line.startswith("ray train: finetune ") and "img/s" in line for line in lines)
    assert any(line.startswith("landmarks: MTCNN detection") for line in lines), text
    assert "4/4 faces found" in text  # the astronaut in every smoke frame
    assert "decoder cv2" in text


def test_paper_preset_without_facenet_pytorch_says_what_to_carry(suite, monkeypatch):
    from glee.model import GLEEConfig

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # as on the lent GPU machines
    line = suite.build_check(GLEEConfig.paper())
    assert "facenet-pytorch" in line and "--no-deps" in line
    assert suite.build_check(GLEEConfig.tiny()) is None  # the tiny preset does without it


def test_preprocess_section_skips_in_one_line_without_ray_or_a_gpu(suite, monkeypatch):
    """The lent GPU machines have no Ray, this one has no GPU: one line each, no child."""
    import argparse

    args = argparse.Namespace(smoke=True)
    lines = suite.preprocess_section(args, torch.device("cpu"))
    assert lines == ["preprocess: skipped: no GPU here (GPU actors against CPU actors needs one)"]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    lines = suite.preprocess_section(args, torch.device("cuda"))
    assert lines == ["preprocess: skipped: Ray is not installed here"]


def test_fan_line_says_where_its_weights_are_missing(suite, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    line = suite.fan_line([], [], torch.device("cpu"))
    assert line.startswith("landmarks: FAN skipped: its weights download from the web")
    assert str(tmp_path / "hub" / "checkpoints") in line
