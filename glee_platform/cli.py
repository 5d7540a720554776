"""What every job script shares: the --config/--set/--verbose arguments, the quiet terminal
with its log file, and one line (exit status 2) for a user's mistake instead of a
traceback."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from glee.datasets.errors import DatasetError
from glee.typed_config import ConfigError
from glee_platform.prepared import DataError
from glee_platform.session import quiet_console


class JobError(RuntimeError):
    """A job cannot go on for a reason the user can fix; the message says how."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a job reports as one line: wrong configs, inputs, data, weights."""
    from glee_platform.preprocess import PreprocessError

    errors: list[type[BaseException]] = [
        ConfigError,
        DataError,
        DatasetError,
        PreprocessError,
        JobError,
        FileNotFoundError,
    ]
    with contextlib.suppress(ImportError):
        from glee.prediction.predictor import PredictInputError

        errors.append(PredictInputError)
    with contextlib.suppress(ImportError):
        from glee_platform.run_folder import RunFolderError

        errors.append(RunFolderError)  # EvaluationError is one
    return tuple(errors)


def parser(doc: str, default_config: str | None = None) -> argparse.ArgumentParser:
    """A job's parser: its docstring as the help, --verbose, and (for jobs that run an
    experiment config) --config and --set."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    if default_config is not None:
        p.add_argument(
            "--config", default=default_config, help=f"YAML file or preset ({default_config})"
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. finetune.lr=1e-3 (repeatable)",
        )
    p.add_argument(
        "--verbose", action="store_true", help="show Ray's and the libraries' logs on the terminal"
    )
    return p


@contextlib.contextmanager
def console(folder: str | Path, job: str, verbose: bool) -> Iterator[Path]:
    """The quiet terminal for the job, logging everything to <folder>/logs/<job>-<time>.log."""
    path = Path(folder) / "logs" / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with quiet_console(path, verbose) as log:
        if not verbose:
            print(f"[glee] {job}: logs of Ray and the libraries in {log} (--verbose shows them)")
        yield log


def run(main: Callable[[], int]) -> int:
    """Run a job's body; a user's mistake becomes `error: <one line>` and exit status 2."""
    try:
        return main()
    except user_errors() as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {first}", file=sys.__stderr__)
        return 2
