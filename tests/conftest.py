"""Fixtures shared across the suite: one tiny synthetic world per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four synthetic datasets (tiny preset, seed 0), written once per session."""
    from glee.synthetic.writers import synthesize

    out = tmp_path_factory.mktemp("tiny_world")
    return synthesize(out, preset="tiny", seed=0, progress=False)
