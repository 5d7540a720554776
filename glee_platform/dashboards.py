"""TensorBoard and optuna-dashboard for a run folder, on 127.0.0.1, in one step.

    python jobs/dashboards.py runs/tune-demo

starts TensorBoard on the folder's event files (`<run>/tensorboard/`, Tune's trial folders)
and, when the folder holds a search's study (`optuna.db`), optuna-dashboard on it; prints
their URLs beside the Ray dashboard's, and stops both (the processes it started, nothing
else) on Ctrl-C. On a cluster, run it where the run folder is (the head node, through
`ray attach`, or a copy fetched with `ray rsync-down`) and forward the ports.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
RAY_DASHBOARD = "http://127.0.0.1:8265"
START_TIMEOUT_S = 60.0


@dataclass
class Dashboard:
    name: str
    url: str
    process: subprocess.Popen


def _script(name: str) -> str:
    """A console script of this environment (beside the interpreter), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name} is not installed: run `make setup` (or pip install {name})"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_until_up(board: Dashboard, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if board.process.poll() is not None:
            raise RuntimeError(f"{board.name} exited at start (status {board.process.returncode})")
        try:
            with urllib.request.urlopen(board.url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{board.name} did not answer on {board.url} within {timeout_s:.0f} s")


@contextlib.contextmanager
def dashboards(run_dir: str | Path, log_dir: Path | None = None) -> Iterator[list[Dashboard]]:
    """Start the dashboards of `run_dir`; stop them when the block ends."""
    run = Path(run_dir).expanduser().resolve()
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run folder: pass runs/<name>")
    logs = log_dir or run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = {"TensorBoard": (sys.executable, "-m", "tensorboard.main", "--logdir", str(run))}
    study = run / "optuna.db"
    if study.is_file():
        commands["optuna-dashboard"] = (_script("optuna-dashboard"), f"sqlite:///{study}")
    boards: list[Dashboard] = []
    try:
        for name, command in commands.items():
            port = free_port()
            log = open(logs / f"{name.lower()}.log", "a", encoding="utf-8")  # noqa: SIM115
            proc = subprocess.Popen(
                [*command, "--host", HOST, "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            boards.append(Dashboard(name, f"http://{HOST}:{port}", proc))
        for board in boards:
            _wait_until_up(board, START_TIMEOUT_S)
        yield boards
    finally:
        for board in boards:
            board.process.terminate()
        for board in boards:
            try:
                board.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                board.process.kill()
