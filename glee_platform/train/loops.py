"""The two Ray Train loops: triplet pretraining on FEC and AU finetuning on one fold.

Each reads everything from its `config` dict and hands `glee_platform.train.worker.run_epochs`
what differs: the model, the optimiser's parameters, how a batch becomes a loss and how an
evaluation runs. Their Ray calls are those of Ray's examples: `get_dataset_shard` here,
`prepare_model` and `report` in the shared loop.

Batches arrive from the input pipeline (`glee_platform.training_data`) decoded, as uint8;
each loop's `augment` crops and flips a training batch (Sec. IV-B) from the worker's seeded
generator, the worker moves it to the device, and `to_model_input` makes it the network's
float input there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from glee.evaluation.metrics import F1Accumulator
from glee.model.config import GLEEConfig
from glee.model.glee_net import GLEENet, build_glee_net
from glee.training.augmentation import random_crop_flip, to_model_input
from glee.training.losses import au_loss, triplet_loss
from glee.training.optimisation import Optimisation
from glee_platform.train.checkpoints import load_pretrained_branches
from glee_platform.train.worker import (
    Collectives,
    Loop,
    Sums,
    run_epochs,
    start_worker,
    to_device,
)


def _sgd(params, config: dict[str, Any]) -> torch.optim.SGD:
    return torch.optim.SGD(
        list(params),
        lr=config["lr"],
        momentum=config["momentum"],
        weight_decay=config["weight_decay"],
    )


def _images(batch: dict[str, torch.Tensor], config: dict[str, Any]) -> torch.Tensor:
    return to_model_input(batch["image"], channels_last=bool(config.get("channels_last")))


class Embedder(nn.Module):
    """The part of GLEE-Net that pretraining trains (Sec. III-E): E_exp of the branches.

    It holds the branches, not the AU head, so DDP sees no parameter that the triplet
    forward leaves unused."""

    def __init__(self, net: GLEENet) -> None:
        super().__init__()
        self.global_branch = net.global_branch
        self.local_branch = net.local_branch
        self._embed = net.embed  # the forward of the same modules

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._embed(images)


def _triplet_embeddings(model, batch, config) -> list[torch.Tensor]:
    """(B, 3, S, S, 3) faces of B triplets -> E_exp of anchors, positives, negatives."""
    faces = batch["image"]
    b = faces.shape[0]
    flat = faces.reshape(b * 3, *faces.shape[2:])  # (3B, S, S, 3): a, p, n of each triplet
    e = model(to_model_input(flat, channels_last=bool(config.get("channels_last"))))
    e = e.reshape(b, 3, -1)  # (B, 3, embed_dim)
    return [e[:, 0], e[:, 1], e[:, 2]]


def augment_triplets(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    """Sec. IV-B on each face of (B, 3, 200, 200, 3) triplets: a random 176 crop and a flip."""
    faces = batch["image"]
    b = faces.shape[0]
    flat = faces.reshape(3 * b, *faces.shape[2:])
    crops, _, _ = random_crop_flip(
        flat, np.zeros((3 * b, 136), np.float32), np.zeros((3 * b, 1), np.float32), rng=rng
    )
    return {**batch, "image": crops.reshape(b, 3, *crops.shape[1:])}


def pretrain_loop(config: dict[str, Any]) -> None:
    """Per-worker pretraining (Sec. III-E, IV-B): triplet loss on E_exp of FEC triplets."""
    import ray.train

    worker = start_worker(config)
    net = build_glee_net(GLEEConfig.from_dict(config["model"]))
    net.classifier.requires_grad_(False)  # the head is not pretrained
    eval_shard = ray.train.get_dataset_shard("eval") if config["has_eval"] else None

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a, p, n = _triplet_embeddings(model, batch, config)
        return triplet_loss(a, p, n, batch["margin"].float())  # Eq. (4)

    def evaluate(epoch: int, opt: Optimisation) -> dict[str, Any]:
        """Triplet accuracy on held-out triplets: both similar-pair distances the smallest."""
        sums = Sums(["correct", "total", "loss"], worker.device)
        for batch in eval_shard.iter_batches(
            batch_size=int(config["eval_batch_size"]), batch_format="numpy"
        ):
            batch = to_device(batch, worker.device)
            a, p, n = (e.float() for e in _triplet_embeddings(net.embed, batch, config))
            d_ap = (a - p).pow(2).sum(1)
            ok = (d_ap < (a - n).pow(2).sum(1)) & (d_ap < (p - n).pow(2).sum(1))
            k = float(len(ok))
            sums.add(
                correct=ok.sum(), total=k, loss=triplet_loss(a, p, n, batch["margin"].float()) * k
            )
        got = sums.reduced(Collectives(worker.device))
        total = max(got["total"], 1.0)
        return {"val_triplet_acc": got["correct"] / total, "val_loss": got["loss"] / total}

    run_epochs(
        config,
        worker,
        Loop(
            name="pretrain",
            net=net,
            model=Embedder(net),
            optimizer=lambda n: _sgd(n.branch_parameters(), config),
            train_shard=ray.train.get_dataset_shard("train"),
            batch_size=int(config["batch_size"]),
            loss=loss,
            evaluate=evaluate if eval_shard is not None else None,
            unit="triplets",
            augment=augment_triplets,
        ),
    )


def finetune_loop(config: dict[str, Any]) -> None:
    """Per-worker AU finetuning (Sec. III-D, IV-B): weighted BCE on initial + final logits."""
    import ray.train

    worker = start_worker(config)
    net = build_glee_net(GLEEConfig.from_dict(config["model"]))
    if config.get("init_checkpoint"):
        load_pretrained_branches(net, config["init_checkpoint"])
    weights = torch.as_tensor(config["au_weights"], dtype=torch.float32, device=worker.device)
    balance = None
    if config.get("au_balance") is not None:  # finetune.class_balance
        balance = torch.as_tensor(config["au_balance"], dtype=torch.float32, device=worker.device)
    au_names = list(config["au_names"])
    eval_shard = ray.train.get_dataset_shard("eval")
    every = int(config["eval_every"])
    mirror = np.asarray(config["expr_mirror"], np.int64)

    def augment(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
        """Sec. IV-B: a random 176 crop and a flip, landmarks and f_exp mirrored with it."""
        image, landmarks, expression = random_crop_flip(
            batch["image"], batch["landmarks"], batch["expression"], rng=rng, expr_mirror=mirror
        )
        return {**batch, "image": image, "landmarks": landmarks, "expression": expression}

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        initial, final = model(_images(batch, config), batch["expression"])
        return au_loss(initial, final, batch["labels"], weights, balance)  # Sec. III-D

    def evaluate(epoch: int, opt: Optimisation) -> dict[str, Any]:
        """Per-AU F1 of the final predictions over this rank's share, all ranks' counts."""
        if epoch != config["epochs"] - 1 and (epoch + 1) % every:
            return {}
        acc = F1Accumulator(len(au_names), device=worker.device)
        sums = Sums(["loss", "count"], worker.device)
        for batch in eval_shard.iter_batches(
            batch_size=int(config["eval_batch_size"]), batch_format="numpy"
        ):
            batch = to_device(batch, worker.device)
            initial, final = net(_images(batch, config), batch["expression"])  # centre crops
            initial, final = initial.float(), final.float()
            acc.update(final, batch["labels"])
            n = float(len(final))
            loss = au_loss(initial, final, batch["labels"], weights, balance)
            sums.add(loss=loss * n, count=n)
        collectives = Collectives(worker.device)
        total = F1Accumulator(len(au_names))
        total.merge(collectives.all_reduce(acc.state()).cpu())
        got = sums.reduced(collectives)
        f1 = total.f1()
        out: dict[str, Any] = {
            "val_loss": got["loss"] / max(got["count"], 1.0),
            "val_mean_f1": float(np.mean(f1)),
            "val_count": int(got["count"]),
        }
        out.update({f"val_f1_{name}": float(v) for name, v in zip(au_names, f1)})
        return out

    run_epochs(
        config,
        worker,
        Loop(
            name=config["run"],
            net=net,
            model=net,
            optimizer=lambda n: _sgd([p for p in n.parameters() if p.requires_grad], config),
            train_shard=ray.train.get_dataset_shard("train"),
            batch_size=int(config["batch_size"]),
            loss=loss,
            evaluate=evaluate,
            augment=augment,
        ),
    )
