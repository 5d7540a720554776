"""The quiet terminal: the project's lines reach it, everything else goes to the log file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, os, sys, warnings
    from glee_platform.session import quiet_console, say

    with quiet_console(sys.argv[1], verbose=sys.argv[2] == "1"):
        print("[glee] ours on stdout")
        print("(RayTrainWorker pid=12, ip=1.2.3.4) [glee] forwarded from a worker")
        print("INFO some library chatter")
        print("[glee] ours on stderr", file=sys.stderr)
        os.write(2, b"[2026 E core_worker.cc] native chatter past sys.stderr\\n")
        logging.getLogger("ray").warning("a library's warning")
        warnings.warn("something is deprecated", DeprecationWarning)
        say("a result table line")
    print("after the block", file=sys.stderr)
    """
)


def _run(tmp_path: Path, verbose: bool) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / f"job-{int(verbose)}.log"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, log.read_text()


def test_the_terminal_shows_only_the_projects_lines_and_the_log_keeps_everything(tmp_path):
    proc, log = _run(tmp_path, verbose=False)
    shown = (proc.stdout + proc.stderr).splitlines()
    assert shown == [
        "[glee] ours on stdout",
        "[glee] forwarded from a worker",  # Ray's "(Actor pid=..)" prefix taken off
        "[glee] ours on stderr",
        "a result table line",
        "after the block",  # file descriptor 2 is the terminal's again after the block
    ]
    for line in ("some library chatter", "native chatter", "a library's warning", "deprecated"):
        assert line in log, line


def test_verbose_shows_everything(tmp_path):
    proc, _ = _run(tmp_path, verbose=True)
    shown = proc.stdout + proc.stderr
    for line in ("some library chatter", "native chatter", "a library's warning", "ours on"):
        assert line in shown, line
