"""Atomic writes: the old file or the new one, never half; the umask's mode, not 0600."""

from __future__ import annotations

import json
import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glee.files import (
    atomic_path,
    new_file_mode,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    assert new_file_mode() == mode
    for i, write in enumerate(
        [
            lambda p: write_text_atomic(p, "x"),
            lambda p: write_bytes_atomic(p, b"x"),
            lambda p: write_json_atomic(p, {"a": 1}),
            lambda p: write_parquet_atomic(p, pa.table({"a": [1]})),
        ]
    ):
        path = write(tmp_path / f"f{i}")
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_round_trips_and_suffix(tmp_path):
    assert json.loads(write_json_atomic(tmp_path / "j.json", {"b": [1, 2]}).read_text()) == {
        "b": [1, 2]
    }
    table = pa.table({"x": [1, 2, 3]})
    assert pq.read_table(write_parquet_atomic(tmp_path / "t.parquet", table)).equals(table)
    with atomic_path(tmp_path / "v.avi", suffix=".avi") as tmp:
        assert tmp.suffix == ".avi" and tmp.parent == tmp_path
        tmp.write_bytes(b"v")
    assert (tmp_path / "v.avi").read_bytes() == b"v"
