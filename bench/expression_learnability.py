"""How much synthetic FEC data a CNN from scratch needs to see expressions across identities.

    python bench/expression_learnability.py                       # 300 and 1,500 identities
    python bench/expression_learnability.py --identities 300 --epochs 10 --model glee

Why (issue: training): pretraining on the demo's synthetic FEC does not raise the demo's
AU F1. This measures the step before any triplet loss: can a network trained from random
weights tell the 14 FEC expression clusters (glee.synthetic.world.FEC_PROTOTYPES) apart on
identities it has never seen? For each FEC size (identities x 2 images, the demo's render
settings) it renders the set, aligns every face on its true landmarks exactly as
preprocessing does (glee.face.alignment, 200 px, centre 176 px crop), holds out every fifth
identity, and trains a classifier of the cluster with SGD (momentum 0.9, batch 30) for
--epochs epochs:

- plain: five conv-BN-ReLU-maxpool blocks on the crop resized to --size pixels;
- glee: the tiny GLEE-Net's embedding (global + local branches, Sec. III-A/B) on the 176
  px crop, with a linear layer on the 16-d E_exp (slow: the demo model's real cost).

Printed per size: held-out accuracy per epoch, then a table of the last and best held-out
accuracy, the training accuracy, chance (1/14), and an MLP on the true 51-d f_exp (what the
3DMM branch sees when the fit is exact) as the ceiling. Rendered sets are kept in --cache
between runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from glee.face.alignment import align_face
from glee.synthetic.presets import PRESETS
from glee.synthetic.world import FEC_PROTOTYPES
from glee.synthetic.writers import synthesize
from glee.training.augmentation import CROP_SIZE

CROP = CROP_SIZE  # the evaluation crop of training (DESIGN.md, alignment)
NUM_CLASSES = len(FEC_PROTOTYPES)


def render(identities: int, cache: Path, workers: int) -> Path:
    preset = dataclasses.replace(
        PRESETS["demo"],
        name=f"learnability-{identities}",
        fec_identities=identities,
        fec_images_per_identity=2,
        fec_train_triplets=10,  # triplets are not used here
        fec_test_triplets=5,
    )
    root = cache / f"fec-{identities}"
    return synthesize(root, preset, datasets=["fec"], progress=True, workers=workers)["fec"]


def aligned_crops(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, 176, 176, 3) uint8 RGB crops, clusters, identities and true f_exp of the FEC set."""
    truth = pq.read_table(
        root / "truth.parquet", columns=["image", "landmarks", "cluster", "identity", "expression"]
    ).to_pydict()
    crops = []
    for image, landmarks in zip(truth["image"], truth["landmarks"]):
        bgr = cv2.imread(str(root / image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read {root / image}: delete {root} and run again")
        aligned = align_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.reshape(landmarks, (68, 2)))
        lo = (aligned.image.shape[0] - CROP) // 2
        crops.append(aligned.image[lo : lo + CROP, lo : lo + CROP])
    return (
        np.stack(crops),
        np.asarray(truth["cluster"], np.int64),
        np.asarray(truth["identity"], np.int64),
        np.asarray(truth["expression"], np.float32),
    )


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


def plain_cnn(size: int) -> nn.Module:
    side = size
    for _ in range(5):  # each max-pool floors the side
        side //= 2
    return nn.Sequential(
        *_block(3, 16), *_block(16, 32), *_block(32, 64), *_block(64, 64), *_block(64, 64),
        nn.Flatten(), nn.Linear(64 * side * side, NUM_CLASSES),
    )  # fmt: skip


class GleeClassifier(nn.Module):
    """The tiny GLEE-Net's E_exp (both branches) with a linear cluster head."""

    def __init__(self) -> None:
        super().__init__()
        from glee.model import GLEEConfig, build_glee_net

        self.net = build_glee_net(GLEEConfig.tiny())
        self.head = nn.Linear(self.net.cfg.embed_dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # embed() takes RGB in [0, 1]; its unit-norm output is scaled so softmax can be sharp
        return self.head(4.0 * self.net.embed(x * 0.5 + 0.5))

    def parameters_to_train(self):
        return [*self.net.branch_parameters(), *self.head.parameters()]


def images_tensor(crops: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if size != CROP:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 128]).argmax(1) for i in range(0, len(x), 128)])
    model.train()
    return float((pred == y).float().mean())


def train_images(args, x, y, train, held_out) -> dict[str, float]:
    torch.manual_seed(args.seed)
    model = GleeClassifier() if args.model == "glee" else plain_cnn(args.size)
    params = model.parameters_to_train() if args.model == "glee" else model.parameters()
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(args.seed)
    history = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        order = rng.permutation(train)
        for i in range(0, len(order) - 29, 30):
            b = order[i : i + 30]
            xb = x[b]
            flip = torch.from_numpy(rng.random(len(b)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        history.append(accuracy(model, x[held_out], y[held_out]))
        print(
            f"  epoch {epoch}: held-out accuracy {history[-1]:.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return {
        "last": history[-1],
        "best": max(history),
        "train": accuracy(model, x[train[:1000]], y[train[:1000]]),
        "steps": args.epochs * (len(train) // 30),
    }


def train_expression(e: np.ndarray, y: torch.Tensor, train, held_out, seed: int) -> float:
    """The ceiling: an MLP from the true 51-d f_exp to the cluster."""
    torch.manual_seed(seed)
    x = torch.from_numpy(e)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, NUM_CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(500):
        loss = nn.functional.cross_entropy(model(x[train]), y[train])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return accuracy(model, x[held_out], y[held_out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", default="300,1500", help="comma-separated FEC sizes")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--model", choices=("plain", "glee"), default="plain")
    parser.add_argument("--size", type=int, default=88, help="input side of the plain CNN")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="render processes")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-learnability"))
    args = parser.parse_args()
    if args.model == "plain" and args.size < 32:
        parser.error(f"--size must be >= 32 (five 2x poolings), got {args.size}")
    if args.model == "glee":
        args.size = CROP
    sizes = [int(s) for s in args.identities.split(",") if s.strip()]
    rows = []
    for identities in sizes:
        root = render(identities, args.cache, args.workers)
        crops, clusters, ids, expression = aligned_crops(root)
        held_out = np.flatnonzero(ids % 5 == 0)
        train = np.flatnonzero(ids % 5 != 0)
        y = torch.from_numpy(clusters)
        print(f"{identities} identities: {len(train)} training / {len(held_out)} held-out faces")
        result = train_images(args, images_tensor(crops, args.size), y, train, held_out)
        result["f_exp"] = train_expression(expression, y, train, held_out, args.seed)
        rows.append((identities, len(train), result))
    print(
        f"\nmodel {args.model}, input {args.size} px, {args.epochs} epochs; chance "
        f"{1 / NUM_CLASSES:.3f}\n"
    )
    print("| identities | training faces | SGD steps | held-out last | held-out best | "
          "training | MLP on true f_exp |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for identities, n_train, r in rows:
        print(
            f"| {identities} | {n_train} | {r['steps']} | {r['last']:.3f} | {r['best']:.3f} | "
            f"{r['train']:.3f} | {r['f_exp']:.3f} |"
        )


if __name__ == "__main__":
    main()
