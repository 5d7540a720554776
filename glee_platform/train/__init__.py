"""GLEE-Net training on Ray Train: triplet pretraining on FEC and AU finetuning per fold.

checkpoints.py   what a checkpoint holds; the newest complete one; loading on any device
worker.py        inside a worker: the epoch loop both runs share (DDP, logging, report)
loops.py         the pretraining and finetuning loops (train_loop_per_worker)
runs.py          driver: run folders reused by config hash, the TorchTrainer
pretrain.py      driver of pretraining
finetune.py      driver of finetuning, fold by fold
results.py       the experiment's tables, config and metrics
"""

from glee_platform.train.checkpoints import (
    DONE_FILE,
    STATE_FILE,
    checkpoint_epoch,
    checkpoints_newest_first,
    load_pretrained_branches,
)
from glee_platform.train.finetune import run_finetune, run_finetune_fold, training_au_weights
from glee_platform.train.pretrain import pretrain_hash, run_pretrain
from glee_platform.train.results import FinetuneResult, write_config, write_results
from glee_platform.train.runs import RunResult, model_config, train_dir

__all__ = [
    "DONE_FILE",
    "STATE_FILE",
    "FinetuneResult",
    "RunResult",
    "checkpoint_epoch",
    "checkpoints_newest_first",
    "load_pretrained_branches",
    "model_config",
    "pretrain_hash",
    "run_finetune",
    "run_finetune_fold",
    "run_pretrain",
    "train_dir",
    "training_au_weights",
    "write_config",
    "write_results",
]
