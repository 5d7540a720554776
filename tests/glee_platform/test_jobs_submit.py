"""`ray job submit --working-dir .` of a smoke-size finetuning job to a local head node.

The head is this test's own: `ray start --head --block` in a new session with its own
temp dir, free ports and auth token (~/.ray is not touched). It is torn down by ending
the processes this test started: the `ray start` process, then whatever is left in its
session (Ray's agents and workers rename themselves `ray::...`, so their command lines
do not say whose they are; their session id does). Never `ray stop`, which ends every
Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
)


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Head:
    """A Ray head node run by this process; `stop()` ends only what it started."""

    def __init__(self, cpus: int = 2) -> None:
        # short path: Ray's unix sockets live under it (107-character limit)
        self.temp_dir = tempfile.mkdtemp(prefix="glee-ray-")
        self.token = secrets.token_hex(16)
        self.passed = False  # the test sets it last; otherwise the logs are kept
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(
            PATH=f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` = this venv
            RAY_AUTH_MODE="token",  # `ray start`'s default, with a token of this head's own
            RAY_AUTH_TOKEN=self.token,
        )
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.dashboard = f"http://127.0.0.1:{ports['--dashboard-port']}"
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--head",
                "--block",
                f"--temp-dir={self.temp_dir}",
                f"--num-cpus={cpus}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                "--node-ip-address=127.0.0.1",
                "--disable-usage-stats",
                *(f"{flag}={port}" for flag, port in ports.items()),
            ],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, apart from pytest's
        )

    def wait_ready(self, timeout: float) -> None:
        """Until the job server answers an authenticated request."""
        request = urllib.request.Request(
            f"{self.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.start_log()}")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"the job server did not come up in {timeout:.0f}s: {self.start_log()}")

    def start_log(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "ray-start.log").read_text()[-3000:]

    def job(self, command: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """`ray job <command> --address <this head> <args>`, from the repository root."""
        return subprocess.run(
            [str(RAY), "job", command, f"--address={self.dashboard}", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """SIGTERM to every process of the head's session, SIGKILL to what is left after 5 s."""
        for sig, wait in ((signal.SIGTERM, 5.0), *[(signal.SIGKILL, 0.5)] * 10):
            left = session_processes(self.proc.pid)
            if not left:
                break
            for pid in left:
                _signal(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and session_processes(self.proc.pid):
                self.proc.poll()  # reap `ray start`, our child
                time.sleep(0.2)
        self.proc.poll()
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def keep_logs(self, dest: Path) -> None:
        """Copy the head's logs (and `ray start`'s output) to `dest`, which outlives it."""
        self.log.flush()
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(self.temp_dir) / "ray-start.log", dest)
        logs = Path(self.temp_dir) / "session_latest" / "logs"
        if logs.is_dir():  # absent if the head never came up
            shutil.copytree(logs, dest, dirs_exist_ok=True, ignore_dangling_symlinks=True)

    def health(self) -> str:
        """What to print when a command against the head failed."""
        code = self.proc.poll()
        alive = "running" if code is None else f"exited with {code}"
        return f"`ray start --block` {alive}; its output ends:\n{self.start_log()}"


def session_processes(sid: int) -> list[int]:
    """Live processes in session `sid` (the `ray start` process and its descendants)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid and fields[0] != "Z":  # state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def head(tmp_path):
    node = Head(cpus=2)
    try:
        node.wait_ready(timeout=120)
        yield node
    finally:
        if not node.passed:  # the logs stay in pytest's tmp folder
            node.keep_logs(tmp_path / "ray-logs")
        node.stop()


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_job_submitted_with_the_working_dir_succeeds(head, toy_prep, tmp_path):
    runs = tmp_path / "runs"
    job_id = f"glee-smoke-{secrets.token_hex(4)}"
    submit = head.job(
        "submit",
        f"--submission-id={job_id}",
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/finetune.py",
        "--config",
        "smoke",
        "--set",
        f"data.prep={toy_prep}",
        "--set",
        f"resources.storage_path={runs}",
        "--set",
        "finetune.init=none",  # one Train run: the pretraining path has its own tests
        timeout=240,
    )
    status = head.job("status", job_id, timeout=60)
    logs = head.job("logs", job_id, timeout=60).stdout
    # the CLI's line for JobStatus.SUCCEEDED
    assert f"Job '{job_id}' succeeded" in status.stdout, (
        f"{status.stdout}{status.stderr[-1500:]}\nsubmit: {submit.stdout[-3000:]}\n"
        f"{head.health()}\nhead logs: {tmp_path / 'ray-logs'}"
    )
    # the job printed the per-AU F1 table of fold 1 and the mean, and where it wrote it
    table = [line.split() for line in logs.splitlines() if line.startswith(("fold1", "mean "))]
    assert [row[0] for row in table[:2]] == ["fold1", "mean"], logs[-3000:]
    assert "AU1" in logs and "AU4" in logs
    assert f"results: {runs / 'smoke' / 'results.md'}" in logs
    assert (runs / "smoke" / "results.md").is_file()
    # the uploaded working dir holds the code but not what .gitignore excludes
    files = Path(head.temp_dir) / "session_latest" / "runtime_resources" / "working_dir_files"
    packages = [p for p in files.glob("_ray_pkg_*") if p.is_dir()]  # beside: .zip.lock files
    assert len(packages) == 1, list(files.iterdir())
    pkg = packages[0]
    assert (pkg / "glee_platform" / "train" / "loops.py").is_file() and (pkg / "configs").is_dir()
    for ignored in ("data", "runs", ".venv", ".pytest_cache"):
        assert not (pkg / ignored).exists(), f"{ignored}/ was uploaded with the working dir"
    head.passed = True
