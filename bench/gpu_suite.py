"""GPU suite: the paper's GLEE-Net on one GPU, without Ray, in one command (< 8 minutes).

    python bench/gpu_suite.py            # on a GPU: the paper preset; else a CPU smoke
    python bench/gpu_suite.py --smoke    # a few steps of everything

Prints, for the paper preset (Sec. III, IV-B; random weights: VGGFace2 weights matter for
accuracy, not speed, so none are loaded):
  - the card's bf16 matmul rate, measured first with a large matmul (the MFU denominator,
    as nanoGPT's MFU uses the card's peak);
  - finetuning images/s in fp32 and bf16 (and bf16 + channels_last): global batch 32 at
    176 px, GLEENet forward, au_loss (glee/training/losses.py), SGD momentum 0.9 at lr 2e-3 through
    glee/training/optimisation.py;
  - pretraining triplets/s: batch 30 triplets = 90 images, triplet_loss on embed(), SGD at
    lr 2e-4 on the branches (Sec. III-E);
  - inference images/s, eval mode, batch 64;
  each with the FLOPs it implies (FlopCounterMode, forward + backward for training) as a
  share of that matmul rate, and the peak GPU memory (torch.cuda.max_memory_allocated);
  - JPEG decode + random 176 crop + flip of 200x200 aligned faces per second on N CPU
    threads (cv2, else PIL, else torchvision.io; it says which ran);
  - where Ray is installed, a finetuning fold through glee_platform's Ray Train loop (its
    streaming Ray Data input) on a generated faces table, in a child process;
  - where Ray is installed and a GPU is present, preprocessing frames/s of a small
    synthetic BP4D world through glee_platform's Ray Data pipeline on GPU actors
    (--num-gpus 0.25: MTCNN and the landmarks on the card, the fit on CPU actors) against
    CPU actors, in a child process;
  - MTCNN face detection batched against one frame at a time, dlib's 68 points per
    face where installed, and FAN's landmarks batched across images against one face at a
    time where its weights are on disk (they download from the web: skipped on the lent
    machines).
Batches are synthetic tensors resident on the device: the model's rate, not the input
pipeline's (decoding is measured on its own). Without a GPU it says so, runs the same
code on the tiny preset for a few steps on the CPU and exits 0. The last line starts with
"GPU". Needs torch and numpy; the paper preset also needs facenet-pytorch (pure Python),
which the lent GPU machines lack: carry its wheel (`pip download --no-deps -d .whl
facenet-pytorch==2.6.0`, install there with `pip install --no-deps --target`).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, uninstalled

from glee.model import GLEEConfig, GLEENet  # noqa: E402
from glee.model.summary import count_flops  # noqa: E402
from glee.training.losses import au_class_weights, au_loss, triplet_loss  # noqa: E402
from glee.training.optimisation import (  # noqa: E402
    Optimisation,
    autocast,
    batch_to_device,
    channels_last,
    resolve_precision,
)

BUDGET_S = 420.0  # sections after this many seconds are skipped: the whole run stays < 8 min


@dataclass(frozen=True)
class Batches:
    finetune: int = 32  # Sec. IV-B
    triplets: int = 30  # Sec. IV-B: batch 30 triplets = 90 images
    inference: int = 64


PAPER_BATCHES = Batches()
SMOKE_BATCHES = Batches(finetune=4, triplets=2, inference=8)  # the CPU smoke: same code, small
ALIGNED = 200  # aligned face side (JAA-Net alignment), cropped to the input size


@dataclass
class Setting:
    """What every model section runs with."""

    cfg: GLEEConfig
    device: torch.device
    batches: Batches
    warmup: int
    steps: int
    peak: float  # FLOP/s of the MFU denominator
    peak_name: str  # "bf16 matmul"


@dataclass
class Result:
    name: str
    rate: float  # items per second
    unit: str  # "img/s" or "triplets/s"
    flops_per_item: float  # forward (+ backward when training), FlopCounterMode
    setting: Setting
    peak_mem: float | None  # bytes, CUDA only

    @property
    def key(self) -> str:
        return self.name.replace(" + ", "_").replace(" ", "_")

    @property
    def achieved(self) -> float:
        return self.rate * self.flops_per_item

    @property
    def mfu(self) -> float:
        return self.achieved / self.setting.peak

    def line(self) -> str:
        mem = f", peak mem {self.peak_mem / 2**30:.2f} GiB" if self.peak_mem is not None else ""
        return (
            f"{self.name:<24}{self.rate:9.1f} {self.unit:<11}"
            f"{self.flops_per_item / 1e9:7.2f} GFLOP each -> {self.achieved / 1e12:7.3f} "
            f"TFLOP/s = {self.mfu:6.2%} of {self.setting.peak_name}{mem}"
        )


class Clock:
    """Wall time since start, and whether the suite's budget has run out."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.elapsed() > self.budget_s


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float | None:
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """FLOP/s of an (n, n) @ (n, n) matmul: the denominator of every MFU here."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best


def timed_steps(
    step: Callable[[], torch.Tensor], device: torch.device, warmup: int, steps: int
) -> float:
    """Seconds per step; the summed losses are read once at the end (the one host sync)."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    total = torch.zeros((), device=device)
    for _ in range(steps):
        total = total + step()
    final = total.item()  # host sync: once, after the timed steps
    dt = (time.perf_counter() - t0) / steps
    if not math.isfinite(final):
        raise FloatingPointError(f"the loss went non-finite ({final}) during the timed steps")
    return dt


# --------------------------------------------------------------------------- model sections


def finetune_batch(cfg: GLEEConfig, n: int, device: torch.device, gen: torch.Generator):
    """A synthetic finetuning batch: images in [0, 1], f_exp, labels 1 / 0 / -1 (unknown)."""
    size = cfg.input_size
    labels = (torch.rand(n, cfg.num_aus, generator=gen) < 0.3).long()
    labels[torch.rand(n, cfg.num_aus, generator=gen) < 0.05] = -1  # BP4D's 9s, masked
    batch = {
        "images": torch.rand(n, 3, size, size, generator=gen),  # (B, 3, 176, 176)
        "f_exp": torch.randn(n, cfg.expr_dim, generator=gen),
        "labels": labels,
    }
    weights = au_class_weights(labels.numpy())
    return batch_to_device(batch, device), weights.to(device)


def finetune(run: Setting, precision: str, use_channels_last: bool = False) -> Result:
    cfg, device, n = run.cfg, run.device, run.batches.finetune
    reset_memory(device)
    torch.manual_seed(0)
    model = channels_last(GLEENet(cfg).to(device).train(), use_channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    # Sec. IV-B: SGD, momentum 0.9, lr 2e-3 for finetuning.
    opt = Optimisation(model, torch.optim.SGD(params, lr=2e-3, momentum=0.9), precision)
    gen = torch.Generator().manual_seed(0)
    batch, weights = finetune_batch(cfg, n, device, gen)
    images = channels_last(batch["images"], use_channels_last)

    def loss() -> torch.Tensor:
        initial, final = model(images, batch["f_exp"])
        return au_loss(initial, final, batch["labels"], weights)

    # FLOPs of forward + backward per image, from a batch of 2 (they scale with the batch).
    small, w2 = finetune_batch(cfg, 2, device, gen)
    flops = count_flops(
        lambda: au_loss(*model(small["images"], small["f_exp"]), small["labels"], w2).backward()
    ).total
    model.zero_grad(set_to_none=True)
    dt = timed_steps(lambda: opt.step(loss), device, run.warmup, run.steps)
    name = f"finetune {opt.precision}" + (" + ch_last" if use_channels_last else "")
    return Result(name, n / dt, "img/s", flops / 2, run, peak_memory(device))


def pretrain(run: Setting, precision: str) -> Result:
    cfg, device, n = run.cfg, run.device, run.batches.triplets
    reset_memory(device)
    torch.manual_seed(0)
    model = GLEENet(cfg).to(device).train()
    params = list(model.branch_parameters())  # the AU head is not pretrained (Sec. III-E)
    # Sec. IV-B: SGD, momentum 0.9, lr 2e-4 for pretraining.
    opt = Optimisation(model, torch.optim.SGD(params, lr=2e-4, momentum=0.9), precision)
    gen = torch.Generator().manual_seed(1)
    size = cfg.input_size

    def triplets(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.rand(3 * t, 3, size, size, generator=gen)  # (3T, 3, S, S): A, P, N
        margins = torch.where(torch.rand(t, generator=gen) < 0.5, 0.1, 0.2)  # Sec. IV-B
        return batch_to_device((images, margins), device)

    images, margins = triplets(n)

    def loss_of(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        anchor, positive, negative = model.embed(x).float().chunk(3)  # (T, 16) each
        return triplet_loss(anchor, positive, negative, m)  # Eq. (4)

    small = triplets(2)
    flops = count_flops(lambda: loss_of(*small).backward()).total
    model.zero_grad(set_to_none=True)
    dt = timed_steps(
        lambda: opt.step(lambda: loss_of(images, margins)), device, run.warmup, run.steps
    )
    return Result(
        f"pretrain {opt.precision}", n / dt, "triplets/s", flops / 2, run, peak_memory(device)
    )


def inference(run: Setting, precision: str) -> Result:
    cfg, device, n = run.cfg, run.device, run.batches.inference
    reset_memory(device)
    torch.manual_seed(0)
    model = GLEENet(cfg).to(device).eval()
    precision = resolve_precision(precision, device)
    gen = torch.Generator().manual_seed(2)
    batch, _ = finetune_batch(cfg, n, device, gen)
    small, _ = finetune_batch(cfg, 2, device, gen)
    flops = count_flops(lambda: model(small["images"], small["f_exp"])).total

    @torch.inference_mode()
    def step() -> torch.Tensor:
        with autocast(precision, device):
            _, final = model(batch["images"], batch["f_exp"])
        return torch.sigmoid(final.float()).mean()  # AU probabilities (p > 0.5: present)

    dt = timed_steps(step, device, run.warmup, run.steps)
    return Result(f"inference {precision}", n / dt, "img/s", flops / 2, run, peak_memory(device))


# --------------------------------------------------------------------------- data decoding


def jpeg_codec() -> tuple[str, Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]:
    """(name, encode RGB uint8 -> JPEG bytes, decode -> RGB uint8): cv2, PIL, torchvision."""
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        cv2.setNumThreads(1)  # the suite's threads are the parallelism

        def cv2_encode(rgb: np.ndarray) -> bytes:
            ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            return buf.tobytes()

        def cv2_decode(data: bytes) -> np.ndarray:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            return bgr[..., ::-1]

        return f"cv2 {cv2.__version__}", cv2_encode, cv2_decode
    if importlib.util.find_spec("PIL") is not None:
        import PIL
        from PIL import Image

        def pil_encode(rgb: np.ndarray) -> bytes:
            out = io.BytesIO()
            Image.fromarray(rgb).save(out, format="JPEG", quality=90)
            return out.getvalue()

        def pil_decode(data: bytes) -> np.ndarray:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

        return f"PIL {PIL.__version__}", pil_encode, pil_decode
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision
        from torchvision.io import decode_jpeg, encode_jpeg

        def tv_encode(rgb: np.ndarray) -> bytes:
            chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
            return encode_jpeg(chw, quality=90).numpy().tobytes()

        def tv_decode(data: bytes) -> np.ndarray:
            chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return chw.permute(1, 2, 0).numpy()

        return f"torchvision.io {torchvision.__version__}", tv_encode, tv_decode
    raise ImportError("no JPEG codec: install opencv-python-headless, pillow or torchvision")


def face_like(rng: np.random.Generator, size: int = ALIGNED) -> np.ndarray:
    """A 200x200 RGB image with a face's layout and texture: skin ellipse on a background,
    shading, dark brows, eyes and mouth, and sensor noise (JPEG cost depends on content)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    skin = np.array([200, 160, 130], np.float32) * rng.uniform(0.6, 1.1)
    bg = rng.uniform(30, 220, 3).astype(np.float32)
    face = ((xx - 0.5) / 0.36) ** 2 + ((yy - 0.52) / 0.46) ** 2 < 1.0
    img = np.where(face[..., None], skin * (1.1 - 0.4 * xx[..., None]), bg)
    for cx, cy, rx, ry, shade in [
        (0.35, 0.36, 0.09, 0.02, 0.3),  # brows
        (0.65, 0.36, 0.09, 0.02, 0.3),
        (0.35, 0.43, 0.06, 0.025, 0.15),  # eyes
        (0.65, 0.43, 0.06, 0.025, 0.15),
        (0.50, 0.60, 0.03, 0.06, 0.8),  # nose shadow
        (0.50, 0.74, 0.12, rng.uniform(0.02, 0.06), 0.4),  # mouth
    ]:
        part = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
        img[part] *= shade
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def decode_crop_flip(
    decode: Callable[[bytes], np.ndarray], data: bytes, rng: np.random.Generator, size: int
) -> np.ndarray:
    """Sec. IV-B augmentation on one encoded aligned face: random `size` crop, flip p=0.5."""
    img = decode(data)  # (200, 200, 3) uint8 RGB
    oy, ox = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
    crop = img[oy : oy + size, ox : ox + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)  # (size, size, 3)


def decoding(n_images: int, threads: list[int], size: int, repeats: int) -> list[str]:
    try:
        name, encode, decode = jpeg_codec()
    except ImportError as exc:
        return [f"decode: skipped: {exc}"]
    rng = np.random.default_rng(0)
    encoded = [encode(face_like(rng)) for _ in range(n_images)]
    kb = sum(len(e) for e in encoded) / len(encoded) / 1024
    lines = [
        f"decode: {n_images} JPEGs of {ALIGNED}x{ALIGNED} face-like images in memory "
        f"({kb:.1f} KB each), decoder {name}, crop {size} + flip"
    ]
    rngs = [np.random.default_rng(i) for i in range(n_images)]  # one per image: thread-safe

    def work(i: int) -> np.ndarray:
        return decode_crop_flip(decode, encoded[i], rngs[i], size)

    for n in threads:
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(work, range(n)))  # start the threads
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = list(pool.map(work, range(n_images)))
            dt = time.perf_counter() - t0
        if out[0].shape != (size, size, 3):
            raise AssertionError(f"decode + crop gave {out[0].shape}, not ({size}, {size}, 3)")
        lines.append(f"decode: {n:>2} thread(s) {n_images * repeats / dt:10.0f} img/s")
    return lines


# --------------------------------------------------------------------------- the lead's hooks


def ray_train_section(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Finetuning through Ray Train (glee_platform's loop, its streaming Ray Data input)
    on a generated faces table, in a child process so that Ray starts and stops there."""
    if importlib.util.find_spec("ray") is None:
        return ["ray train: skipped: Ray is not installed here"]
    import subprocess
    import tempfile

    rows = 256 if args.smoke or device.type == "cpu" else 2048
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--ray-train-child", tmp, "--rows", str(rows)]
        if device.type == "cpu":
            cmd.append("--cpu")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ray train:")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"ray train: failed: {tail}"]
    return lines


def ray_train_child(folder: str, rows: int, gpu: bool) -> int:
    """One finetuning fold through glee_platform.train: the Train worker's images/s over
    its second epoch (the first pays start-up), beside the plain loop's figure above."""
    from data_memory import write_tables  # bench/: the Parquet faces table of the real format

    from glee_platform.config import load_config
    from glee_platform.session import ensure_ray
    from glee_platform.train import run_finetune_fold

    prep = Path(folder) / "prep"
    write_tables(prep, rows)
    preset = ["model.preset=paper", "model.allow_random_init=true"] if gpu else []
    cfg = load_config(
        "smoke",
        [
            "name=gpu-suite",
            f"data.prep={prep}",
            "data.synthetic=none",
            f"resources.storage_path={Path(folder) / 'runs'}",
            f"resources.use_gpu={'true' if gpu else 'false'}",
            f"resources.precision={'bf16' if gpu else 'fp32'}",
            "resources.cpus_per_worker=1",
            "finetune.init=none",
            "finetune.epochs=2",
            "finetune.eval_every=2",
            "finetune.batch_size=32",
            "log_every=1000000",
            *preset,
        ],
    )
    ensure_ray()
    run, _ = run_finetune_fold(cfg, 1, None, reuse=False)
    rate = run.history[-1]["img_per_s"]
    where = "1 GPU, paper preset, bf16" if gpu else "CPU, tiny preset, fp32"
    print(
        f"ray train: finetune {rate:.1f} img/s ({where}, global batch 32, {rows} rows: "
        f"1 Train worker, streaming input, epoch 2 of 2)",
        flush=True,
    )
    return 0


PREPROCESS_GPUS = 0.25  # GPU share of a landmark actor in the preprocessing section


def preprocess_section(
    args: argparse.Namespace, device: torch.device, clock: Clock | None = None
) -> list[str]:
    """Preprocessing on GPU actors against CPU actors (glee_platform.preprocess, Ray
    Data), in a child process so that Ray starts and stops there."""
    if importlib.util.find_spec("ray") is None:
        return ["preprocess: skipped: Ray is not installed here"]
    if device.type != "cuda":
        return ["preprocess: skipped: no GPU here (GPU actors against CPU actors needs one)"]
    if importlib.util.find_spec("facenet_pytorch") is None:
        return ["preprocess: skipped: facenet-pytorch (MTCNN) is not installed here"]
    left = 600.0 if clock is None else clock.budget_s - clock.elapsed()
    if left < 60:
        return ["preprocess: skipped: the suite's time budget is spent"]
    import subprocess
    import tempfile

    frames = 8 if args.smoke else 32
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--preprocess-child", tmp, "--rows", str(frames)]
        env = {**os.environ, "GLEE_OFFLINE": "1"}  # no weight downloads, no URL probes
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max(60.0, left), env=env
            )
        except subprocess.TimeoutExpired:
            return [f"preprocess: failed: no result within {max(60.0, left):.0f} s"]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("preprocess:")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return lines or [f"preprocess: failed: {tail}"]
    return lines


def preprocess_child(folder: str, frames: int, gpu: bool = True) -> int:
    """One synthetic BP4D world (3 folds x 2 subjects x 2 tasks x `frames` frames of 640 x
    480) preprocessed twice into fresh folders: landmark actors of PREPROCESS_GPUS GPU with
    CPU fit actors, then CPU actors alone; frames/s end to end (actor start-up included).
    `gpu=False` runs the same two stages on the CPU (a check of this code, not a figure)."""
    import dataclasses

    import ray

    from glee.face.pipeline import PreprocessConfig
    from glee.synthetic.presets import get_preset
    from glee.synthetic.writers import synthesize
    from glee_platform.preprocess import PreprocessError, preprocess_dataset, resolve_landmarks
    from glee_platform.session import ensure_ray

    preset = dataclasses.replace(
        get_preset("demo"),
        name="gpu-suite",
        image_size=(480, 640),
        bp4d_per_fold=2,
        bp4d_tasks=("T1", "T2"),
        bp4d_frames=frames,
    )
    root = synthesize(Path(folder) / "raw", preset=preset, datasets=["bp4d"], progress=False)
    try:
        landmarks = resolve_landmarks("auto")  # FAN where its weights are on disk, else dlib
    except PreprocessError as exc:
        print(f"preprocess: skipped: {exc}", flush=True)
        return 0
    cfg = PreprocessConfig(landmarks=landmarks, fit_mode="frame")
    warm_fit_kernels(root["bp4d"])
    ensure_ray()
    cpus = int(ray.cluster_resources().get("CPU", 0))
    rates = {}
    for name, kw in (
        ("gpu", {"num_gpus": PREPROCESS_GPUS, "_gpu_stage_on_cpu": not gpu}),
        ("cpu", {}),
    ):
        t0 = time.perf_counter()
        s = preprocess_dataset("bp4d", root["bp4d"], Path(folder) / name, config=cfg, **kw)
        n = s.rows_ok + s.rows_failed
        rates[name] = n / (time.perf_counter() - t0)
    where = f"{PREPROCESS_GPUS:g} GPU per landmark actor" if gpu else "both stages on CPU"
    print(
        f"preprocess: {n} frames, GPU actors {rates['gpu']:.1f} frames/s, CPU actors "
        f"{rates['cpu']:.1f} frames/s ({rates['gpu'] / rates['cpu']:.2f}x; landmarks "
        f"{landmarks}, {where}, {cpus} CPUs, 640x480, end to end)",
        flush=True,
    )
    return 0


def warm_fit_kernels(root: Path) -> None:
    """Compile the 3DMM fit's numba kernels into their on-disk cache before the clock runs,
    so that whichever pass goes first does not pay it (~10 s) for both."""
    import pandas as pd

    from glee.face.camera import Camera
    from glee.face.fitting import fit_frames
    from glee.face.pipeline import load_morphable_model

    table = pd.read_parquet(root / "landmarks.parquet").head(2)
    xs = table[[f"x{i}" for i in range(68)]].to_numpy(np.float64)
    ys = table[[f"y{i}" for i in range(68)]].to_numpy(np.float64)
    lms = np.stack([xs, ys], -1)  # (2, 68, 2)
    fit_frames(load_morphable_model(None), lms, [Camera.for_image(640, 480)] * 2, mode="frame")


def astronaut_frame(x: int) -> np.ndarray:
    """A 640x360 RGB frame: skimage's astronaut's face (a real photograph, 300x300) at
    column `x` (0..340) on grey."""
    from skimage import data

    frame = np.full((360, 640, 3), 90, np.uint8)
    frame[30:330, x : x + 300] = data.astronaut()[:300, 80:380]
    return frame


def landmarks_section(args: argparse.Namespace, device: torch.device) -> list[str]:
    """Face detection (MTCNN, facenet-pytorch) batched against one image at a time on
    640x360 frames, and dlib's 68 points per face where dlib is installed. FAN, the GPU
    landmark backend, needs its weights from the web, which the lent machines cannot reach."""
    if importlib.util.find_spec("facenet_pytorch") is None:
        return ["landmarks: skipped: facenet-pytorch (MTCNN) is not installed here"]
    if importlib.util.find_spec("skimage") is None:
        return ["landmarks: skipped: scikit-image (its astronaut photo) is not installed here"]
    from glee.face.detection import FaceDetector

    frames = [astronaut_frame(20 + (i * 37) % 300) for i in range(4 if args.smoke else 32)]
    detector = FaceDetector(device=str(device))
    detector.detect_batch(frames[:2])  # warm-up
    t0 = time.perf_counter()
    for frame in frames:
        detector.detect(frame)
    sync(device)
    single = len(frames) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    found = detector.detect_batch(frames)
    sync(device)
    batched = len(frames) / (time.perf_counter() - t0)
    lines = [
        f"landmarks: MTCNN detection {batched:.1f} frames/s batched, {single:.1f} one at a time "
        f"({batched / single:.2f}x; {sum(bool(f) for f in found)}/{len(frames)} faces found, "
        f"640x360, {device.type})"
    ]
    from glee.face.landmarks import dlib_unavailable

    missing = dlib_unavailable()
    if missing is None and any(found):
        from glee.face.landmarks import DlibLandmarks

        backend = DlibLandmarks()
        boxes = [(f, np.asarray(d[0].box, np.float32)) for f, d in zip(frames, found) if d]
        t0 = time.perf_counter()
        for i, (frame, box) in enumerate(boxes):
            backend(frame, ("bench", "", i), box)
        rate = len(boxes) / (time.perf_counter() - t0)
        lines.append(f"landmarks: dlib 68 points {rate:.1f} faces/s (CPU, one at a time)")
    else:
        lines.append(f"landmarks: dlib skipped: {missing or 'no face found'}")
    lines.append(fan_line(frames, found, device))
    return lines


def fan_line(frames: list[np.ndarray], found: list, device: torch.device) -> str:
    """FAN's 68 points on MTCNN's boxes: `FanLandmarks.batch` (every face in one call, the
    network over up to `max_batch` crops at a time) against one face per call."""
    from glee import weights_cache

    path = weights_cache.FAN_2D.path()
    if importlib.util.find_spec("face_alignment") is None:
        return "landmarks: FAN skipped: face-alignment is not installed here"
    if not path.is_file():
        return (
            "landmarks: FAN skipped: its weights download from the web on first use "
            f"(none in {path.parent})"
        )
    if not any(found):
        return "landmarks: FAN skipped: MTCNN found no face"
    from glee.face.landmarks import FanLandmarks

    fan = FanLandmarks(device=str(device))
    faces = [(f, np.asarray(d[0].box, np.float32)) for f, d in zip(frames, found) if d]
    fan.batch(faces[:2])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for i, (frame, box) in enumerate(faces):
        fan(frame, ("bench", "", i), box)
    sync(device)
    single = len(faces) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    fan.batch(faces)
    sync(device)
    batched = len(faces) / (time.perf_counter() - t0)
    return (
        f"landmarks: FAN 68 points {batched:.1f} faces/s batched, {single:.1f} one at a time "
        f"({batched / single:.2f}x; {len(faces)} faces, up to {fan.max_batch} a pass, "
        f"{device.type})"
    )


# --------------------------------------------------------------------------- main


def build_check(cfg: GLEEConfig) -> str | None:
    """None if the preset builds here, else one line saying what is missing."""
    try:
        GLEENet(cfg)
    except ImportError as exc:
        return (
            f"the paper preset needs facenet-pytorch ({exc.name} missing): it is pure Python, "
            "carry its wheel (pip download --no-deps facenet-pytorch==2.6.0) and install it "
            "with --no-deps"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of every section")
    parser.add_argument("--cpu", action="store_true", help="the CPU smoke even with a GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per section")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds (default 420)")
    parser.add_argument("--ray-train-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--preprocess-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ray_train_child:
        gpu = torch.cuda.is_available() and not args.cpu
        return ray_train_child(args.ray_train_child, args.rows, gpu)
    if args.preprocess_child:
        gpu = torch.cuda.is_available() and not args.cpu
        return preprocess_child(args.preprocess_child, args.rows, gpu)
    clock = Clock(args.budget)
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    if gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels
        name = torch.cuda.get_device_name(device)
        print(
            f"device: {name}, capability {torch.cuda.get_device_capability(device)}, "
            f"cuDNN TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32} (torch defaults: fp32 convs run in TF32)",
            flush=True,
        )
        cfg, preset, batches = GLEEConfig.paper(), "paper", PAPER_BATCHES
        warmup, steps = (2, 3) if args.smoke else (5, 20)
        peak = matmul_rate(device, torch.bfloat16, *((4096, 5) if args.smoke else (8192, 20)))
        peak_name = "bf16 matmul"
    else:
        why = "not used (--cpu)" if torch.cuda.is_available() else "none found"
        print(f"GPU: {why}, running the CPU smoke (tiny preset, small batches, few steps)")
        # One intra-op thread: on a small shared machine spinning OpenMP threads made the
        # smoke's steps ~30x slower (2 threads, load 5, 2 cores).
        torch.set_num_threads(1)
        cfg, preset, batches = GLEEConfig.tiny(), "tiny", SMOKE_BATCHES
        warmup, steps = 1, (1 if args.smoke else 2)
        # Most CPUs emulate bf16 (no AVX512-BF16 / AMX): the faster of the two is the ceiling.
        peak, peak_name = max(
            (matmul_rate(device, torch.bfloat16, 512, 3), "bf16 matmul"),
            (matmul_rate(device, torch.float32, 512, 3), "fp32 matmul"),
        )
    steps = args.steps or steps
    print(
        f"{peak_name}: {peak / 1e12:.3f} TFLOP/s (the MFU denominator); preset {preset}, "
        f"random weights (no VGGFace2: they matter for accuracy, not speed); {batches}, "
        f"{warmup} warm-up + {steps} timed steps",
        flush=True,
    )
    missing = build_check(cfg)
    run = Setting(cfg, device, batches, warmup, steps, peak, peak_name)
    results: list[Result] = []
    sections: list[tuple[str, Callable[[], Result]]] = [
        ("finetune fp32", lambda: finetune(run, "fp32")),
        ("finetune bf16", lambda: finetune(run, "bf16")),
        ("finetune bf16 + ch_last", lambda: finetune(run, "bf16", use_channels_last=True)),
        ("pretrain bf16", lambda: pretrain(run, "bf16")),
        ("pretrain fp32", lambda: pretrain(run, "fp32")),
        ("inference bf16", lambda: inference(run, "bf16")),
        ("inference fp32", lambda: inference(run, "fp32")),
    ]
    failures: list[str] = []
    for label, section in sections:
        if missing:
            print(f"{label}: skipped: {missing}")
            continue
        if clock.out_of_time():
            print(f"{label}: skipped: the {args.budget:.0f} s budget is spent")
            continue
        try:
            result = section()
        except (RuntimeError, FloatingPointError) as exc:  # out of memory, a kernel refused
            failures.append(label)
            print(f"{label}: failed: {str(exc).splitlines()[0]}")
            reset_memory(device)
            continue
        results.append(result)
        print(result.line(), flush=True)

    threads = sorted({1, max(1, args.threads // 2), args.threads})
    n_images, repeats = (64, 1) if args.smoke or not gpu else (512, 3)
    for line in decoding(n_images, threads, cfg.input_size, repeats):
        print(line, flush=True)
    for hook in (ray_train_section, landmarks_section):
        for line in hook(args, device):
            print(line, flush=True)
    for line in preprocess_section(args, device, clock):
        print(line, flush=True)
    print(f"suite time {clock.elapsed():.0f} s")

    if not gpu:
        ok = not failures and not missing and len(results) == len(sections)
        status = "CPU smoke ok" if ok else f"CPU smoke FAILED ({', '.join(failures) or missing})"
        figures = " ".join(f"{r.key}={r.rate:.1f}" for r in results)
        print(f"GPU {'unused' if torch.cuda.is_available() else 'none'}: {status} ({figures})")
        return 0 if ok else 1
    if missing:
        print(f"GPU {name}: not measured: {missing}")
        return 1
    headline = ("finetune fp32", "finetune bf16", "pretrain bf16", "inference bf16")
    parts = [
        f"{r.key}={r.rate:.1f} {r.unit} mfu={r.mfu:.1%}" for r in results if r.name in headline
    ]
    mem = max((r.peak_mem or 0.0) for r in results) if results else 0.0
    print(f"GPU {name}: " + ", ".join(parts) + f", peak_mem={mem / 2**30:.1f} GiB")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
