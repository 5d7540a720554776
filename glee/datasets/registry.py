"""One entry point for the four dataset readers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from glee.datasets.bp4d import read_bp4d
from glee.datasets.bp4dplus import read_bp4dplus
from glee.datasets.disfa import read_disfa
from glee.datasets.errors import DatasetError
from glee.datasets.fec import read_fec
from glee.datasets.records import AU_DATASETS, DatasetIndex, FecIndex

DATASETS = (*AU_DATASETS, "fec")
_READERS: dict[str, Callable[..., Any]] = {
    "bp4d": read_bp4d,
    "bp4dplus": read_bp4dplus,
    "disfa": read_disfa,
    "fec": read_fec,
}


def read_dataset(name: str, root: str | Path, **kw: Any) -> DatasetIndex | FecIndex:
    """Index dataset `name` under `root` with its reader (keyword arguments pass through)."""
    key = name.lower().replace("+", "plus").replace("-", "").replace("_", "")
    if key not in _READERS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return _READERS[key](root, **kw)
