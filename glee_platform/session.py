"""The job's Ray session and its terminal.

`ensure_ray` connects once: to `address` or $RAY_ADDRESS (a cluster; `ray job submit` sets
it), else it starts a local Ray with the machine's CPUs. Every job calls it; a session that
is already up is used as it is.

`quiet_console` keeps the terminal for the project's own lines: everything written to
stdout and stderr (Ray's INFO logs, the lines Ray forwards from its workers, deprecation
warnings) goes to a log file in the run folder, and only lines that carry the project's
`[glee]` mark, plus progress bars and the result tables a job prints with `say`, reach the
terminal. `verbose=True` shows everything, as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

MARK = "[glee]"
# Ray prefixes a forwarded worker line with "(ActorName pid=123, ip=...)" and colour codes.
_FORWARDED = re.compile(
    r"^(?:\x1b\[[0-9;]*m)*\((?:[^()]|\([^()]*\))*pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)*\s?"
)

_connected_to: str | None = None  # the address ensure_ray connected to; "local": started here
_terminal: IO[str] | None = None  # the real terminal while quiet_console is active


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Connect to Ray once: `address` ("auto", "ray://host:10001", "host:6379"), else
    RAY_ADDRESS; "local" or neither starts a local Ray with `num_cpus` (None: all cores)."""
    global _connected_to
    import ray
    import ray.data

    if not ray.is_initialized():
        target = (address or os.environ.get("RAY_ADDRESS") or "local").strip()
        if target == "local":
            ray.init(address="local", num_cpus=num_cpus)  # with the dashboard: Train's state API
        else:
            ray.init(address=target)
        _connected_to = target
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def on_cluster() -> bool:
    """Whether Ray runs on a cluster (which may autoscale) rather than on this machine only."""
    target = _connected_to or os.environ.get("RAY_ADDRESS") or "local"
    return target != "local"


def terminal() -> IO[str]:
    """Where the project's own output goes: the real terminal, even inside quiet_console."""
    return _terminal or sys.stdout


def say(text: str) -> None:
    """Print the project's own output (result tables, summaries) to the terminal."""
    out = terminal()
    out.write(text if text.endswith("\n") else text + "\n")
    out.flush()


class _Filter(io.TextIOBase):
    """A text stream that logs every line and passes the project's lines to the terminal."""

    def __init__(self, log: IO[str], terminal: IO[str], verbose: bool) -> None:
        self.log, self.terminal, self.verbose = log, terminal, verbose
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        if self.verbose:
            self.terminal.write(text)
            return len(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if MARK in line:
                self.terminal.write(_FORWARDED.sub("", line) + "\n")
        self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # some libraries ask
        return getattr(self.terminal, "encoding", "utf-8")


@contextlib.contextmanager
def _native_stderr_to(log: IO[str], active: bool) -> Iterator[None]:
    """Point file descriptor 2 at the log for the block: Ray's C++ core writes its warnings
    there directly, past sys.stderr."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet_console(log_path: str | os.PathLike, verbose: bool = False) -> Iterator[Path]:
    """Route stdout, stderr, logging and warnings through the filter for the block."""
    global _terminal
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old_out, old_err = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8") as log, _native_stderr_to(log, not verbose):
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        _terminal = old_out
        sys.stdout = _Filter(log, old_out, verbose)
        sys.stderr = _Filter(log, old_err if verbose else old_out, verbose)
        handler = logging.StreamHandler(sys.stderr)
        root = logging.getLogger()
        root.addHandler(handler)
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        try:
            with warnings.catch_warnings():
                if not verbose:
                    warnings.simplefilter("default")  # shown once each, into the log file
                yield path
        finally:
            root.removeHandler(handler)
            sys.stdout.flush()
            sys.stdout, sys.stderr = old_out, old_err
            _terminal = None


def progress_kwargs() -> dict[str, Any]:
    """tqdm keyword arguments that draw the bar on the terminal inside quiet_console."""
    return {"file": terminal(), "dynamic_ncols": True}
