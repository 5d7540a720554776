"""Run tracking: TensorBoard events from rank 0, metrics.csv, results tables, config dump.

Run folder (`<storage>/<experiment name>/`):

    config.yaml            the full experiment config (flat copy in config_flat.json)
    metrics.csv            one row per (run, epoch): pretrain, fold1, fold2, ... of this run
    results.md, results.csv  per-fold per-AU F1 and the mean over folds (results.md also:
                           beside the f_exp probe and always-present)
    tensorboard/<run>/     TensorBoard events (losses, learning rate, per-AU F1)
    pretrain/, fold1/ ...  Ray Train runs: checkpoint_*/ folders, metrics.csv, done.json
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from glee.files import write_text_atomic


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (Linux: VmHWM), 0 elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


MEMORY_KINDS = ("RssAnon", "RssFile", "RssShmem")


def resident_bytes() -> dict[str, int]:
    """This process's resident memory now, by kind (Linux /proc/self/status; {} elsewhere):
    RssAnon (private: what the process itself allocated), RssFile (mapped files: libraries,
    memory-mapped Parquet) and RssShmem (shared memory: the pages of Ray's object store it
    has mapped to read blocks without a copy, which the node's object store holds, not it)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in MEMORY_KINDS:
                    found[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found


class MemoryPeaks:
    """The peak of each kind of `resident_bytes`, sampled every `interval` s on a daemon
    thread from start() to stop(). The kernel keeps a peak of the total (VmHWM) only; to
    tell what a process owns from what it maps, each kind's peak has to be sampled."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-peaks", daemon=True)

    def sample(self) -> None:
        for key, value in resident_bytes().items():
            self.peaks[key] = max(self.peaks.get(key, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> MemoryPeaks:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()
        return dict(self.peaks)

    def metrics(self) -> dict[str, float]:
        """The peaks so far as metrics: peak_rss_anon_mb, peak_rss_file_mb, peak_rss_shmem_mb."""
        self.sample()
        return {
            f"peak_{key.lower().replace('rss', 'rss_')}_mb": value / 2**20
            for key, value in self.peaks.items()
        }


def metrics_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV of metric rows; the header is the union of keys in first-seen order."""
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def write_metrics_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    return write_text_atomic(path, metrics_csv_text(rows))


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _cell(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


class EpochLogger:
    """Rank-0 tracking inside a Train worker: TensorBoard scalars + the run's metrics.csv.

    `history` holds one dict per finished epoch; it travels in the checkpoint, so after a
    restart the csv and TensorBoard (purged past the resume step) hold each epoch once.
    """

    def __init__(
        self,
        tb_dir: str | None,
        csv_path: str | None,
        history: list[dict[str, Any]],
        purge_step: int,
        enabled: bool,
    ) -> None:
        self.history = history
        self.csv_path = Path(csv_path) if csv_path else None
        self.enabled = enabled
        self.writer = None
        if enabled and tb_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tb_dir, purge_step=purge_step or None)

    def step(self, tag: str, value: float, global_step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, global_step)

    def epoch(self, metrics: Mapping[str, Any], global_step: int) -> None:
        """Record one finished epoch (history, csv, TensorBoard)."""
        self.history.append(dict(metrics))
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(_tb_tag(key), value, global_step)
            self.writer.flush()
        if self.csv_path is not None:
            write_metrics_csv(self.csv_path, self.history)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tb_tag(key: str) -> str:
    """metrics keys -> TensorBoard groups: val_f1_AU1 -> f1/AU1, train_loss -> loss/train."""
    if key.startswith("val_f1_"):
        return f"f1/{key[len('val_f1_') :]}"
    if key.endswith("_loss"):
        return f"loss/{key[: -len('_loss')]}"
    return key.replace("_", "/", 1) if key.startswith(("val_", "train_")) else key
