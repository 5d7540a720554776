"""Weight files download on first use: cached, verified, atomic, one line when they cannot."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from glee.weights_cache import (
    FAN_2D,
    VGGFACE2,
    MissingWeightsError,
    WeightFile,
    default_torch_home,
    fetch_weights,
    probe_url,
)

BODY = bytes(range(256)) * 4096  # 1 MiB


def _spec(url: str, body: bytes = BODY, name: str = "net-0123.pth") -> WeightFile:
    return WeightFile(
        name=name,
        url=url,
        sha256=hashlib.sha256(body).hexdigest(),
        folder="hub/checkpoints",
        library="test-lib",
    )


def _fetch(spec: WeightFile, home, **kw):
    return fetch_weights(spec, home, retries=3, timeout_s=5, backoff_s=0, progress=False, **kw)


def _assert_one_line_naming(err: MissingWeightsError, spec: WeightFile, home) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert spec.url in msg and spec.name in msg
    assert str(home / spec.folder) in msg


def _files(folder) -> list[str]:
    """What a failed or finished download leaves (the lock file aside)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_good_file_downloads_once_with_the_umask_mode(file_server, tmp_path):
    spec = _spec(file_server.add("/net-0123.pth", BODY))
    path = _fetch(spec, tmp_path)
    assert path == tmp_path / "hub" / "checkpoints" / "net-0123.pth"
    assert path.read_bytes() == BODY
    assert _files(path.parent) == ["net-0123.pth"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert _fetch(spec, tmp_path) == path
    assert file_server.hits["/net-0123.pth"] == 1  # the second call used the cache


def test_present_file_is_used_without_the_network(tmp_path, unreachable_url):
    spec = _spec(unreachable_url)
    path = spec.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"placed by hand")
    assert _fetch(spec, tmp_path) == path and path.read_bytes() == b"placed by hand"


def test_404_is_not_retried_and_names_url_file_folder(file_server, tmp_path):
    spec = _spec(file_server.url("/missing.pth"))
    with pytest.raises(MissingWeightsError, match="HTTP 404") as err:
        _fetch(spec, tmp_path)
    _assert_one_line_naming(err.value, spec, tmp_path)
    assert file_server.hits["/missing.pth"] == 1
    assert _files(tmp_path / "hub" / "checkpoints") == []


def test_truncated_body_is_retried_then_fails_without_a_partial_file(file_server, tmp_path):
    url = file_server.add("/short.pth", BODY[:1000], length=len(BODY))
    spec = _spec(url)
    with pytest.raises(MissingWeightsError) as err:
        _fetch(spec, tmp_path)
    _assert_one_line_naming(err.value, spec, tmp_path)
    assert "IncompleteRead" in str(err.value)
    assert file_server.hits["/short.pth"] == 3  # a short body may be transient: retried
    assert _files(tmp_path / "hub" / "checkpoints") == []


def test_wrong_hash_removes_the_download(file_server, tmp_path):
    spec = _spec(file_server.add("/net-0123.pth", BODY[::-1]))  # pinned hash is of BODY
    with pytest.raises(MissingWeightsError, match="SHA-256") as err:
        _fetch(spec, tmp_path)
    _assert_one_line_naming(err.value, spec, tmp_path)
    assert spec.sha256 in str(err.value)
    assert _files(tmp_path / "hub" / "checkpoints") == []
    assert not spec.path(tmp_path).exists()


def test_offline_raises_one_line(tmp_path, unreachable_url):
    spec = _spec(unreachable_url)
    with pytest.raises(MissingWeightsError, match="cannot connect to 127.0.0.1") as err:
        _fetch(spec, tmp_path)
    _assert_one_line_naming(err.value, spec, tmp_path)


def test_offline_switch_skips_the_download(file_server, tmp_path, monkeypatch):
    spec = _spec(file_server.add("/net-0123.pth", BODY))
    monkeypatch.setenv("GLEE_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="GLEE_OFFLINE is set") as err:
        _fetch(spec, tmp_path)
    _assert_one_line_naming(err.value, spec, tmp_path)
    assert probe_url(spec.url) == "GLEE_OFFLINE is set"
    assert file_server.hits["/net-0123.pth"] == 0
    monkeypatch.setenv("GLEE_OFFLINE", "0")
    assert _fetch(spec, tmp_path).read_bytes() == BODY


def test_probe_url(file_server, unreachable_url):
    assert probe_url(file_server.add("/x", b"abc"), timeout_s=2) is None
    assert probe_url(file_server.url("/nothing"), timeout_s=2) == "HTTP 404"
    assert probe_url(unreachable_url, timeout_s=2).startswith("cannot connect to 127.0.0.1:")


def test_specs_match_the_libraries_they_come_from(monkeypatch, tmp_path):
    from face_alignment.api import models_urls

    assert FAN_2D.url == models_urls["2DFAN-4"]
    assert FAN_2D.name == FAN_2D.url.rsplit("/", 1)[1]
    # torch.hub's check_hash convention: the hex after the last '-' is a SHA-256 prefix.
    assert FAN_2D.sha256.startswith(FAN_2D.name.split("-")[1].split(".")[0])
    for spec in (FAN_2D, VGGFACE2):
        assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert FAN_2D.path() == tmp_path / "th" / "hub" / "checkpoints" / FAN_2D.name
    assert VGGFACE2.path() == tmp_path / "th" / "checkpoints" / VGGFACE2.name
    assert default_torch_home(tmp_path) == tmp_path
