"""Pretrained weight files: where each comes from, where it is cached, how it arrives.

Each file is declared as data (`WeightFile`): its name, the URL of the library it belongs
to, its SHA-256 and its folder under the torch home ($TORCH_HOME, else
$XDG_CACHE_HOME/torch, else ~/.cache/torch). The folder is the one that library reads, so a
file fetched here is found by face-alignment or facenet-pytorch and the other way round.

`fetch_weights(spec)`:
    present  its path (not re-hashed, as torch.hub does not re-hash its cache either);
    absent   download with a progress bar into a temporary file beside the final one, check
             the SHA-256, rename into place (a reader never sees half a file; the file gets
             the umask's mode), retry transient network errors a few times;
    failing  (offline, HTTP error, short body, wrong hash) MissingWeightsError, one line
             naming the URL, the file and the folder to put it in; no partial file is left.
GLEE_OFFLINE=1 in the environment skips every download (an air-gapped cluster then fails
at once instead of after the retries' timeouts). GLEE_WEIGHTS_MIRROR=<base URL> fetches
`<base URL>/<file name>` instead of the library's URL (a cluster's own mirror); the
SHA-256 is checked all the same.

On a cluster each node fetches what it needs on first use, into its own torch home: a
Train worker or preprocessing actor that needs FAN or VGGFace2 calls `fetch_weights`, and
the file lock makes the workers of one node download it once (tests/glee_platform/
test_cluster.py shows it on a local multi-node cluster).

The transfer uses requests (tqdm draws the bar), not torch.hub.download_url_to_file: that
one opens the URL without a timeout (a firewalled host blocks for minutes, a stalled
transfer forever) and keeps a body shorter than its Content-Length without complaint,
while requests takes connect/read timeouts and raises on a short body.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from filelock import FileLock
from tqdm import tqdm

CHUNK_BYTES = 1 << 20
RETRIES = 3  # attempts on transient errors (connection, timeout, short body, HTTP 5xx/429)
BACKOFF_S = 2.0  # sleep before attempt k+1: BACKOFF_S * k
TIMEOUT_S = 30.0  # connect and per-read timeout
OFFLINE_ENV = "GLEE_OFFLINE"
MIRROR_ENV = "GLEE_WEIGHTS_MIRROR"


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name in the cache folder
    url: str
    sha256: str
    folder: str  # cache folder, relative to the torch home
    library: str  # what it is and whose cache layout this is (starts the messages)

    def path(self, torch_home: str | os.PathLike | None = None) -> Path:
        return default_torch_home(torch_home) / self.folder / self.name

    @property
    def source(self) -> str:
        """Where it is downloaded from: $GLEE_WEIGHTS_MIRROR/<name> when set, else `url`."""
        mirror = os.environ.get(MIRROR_ENV, "").strip()
        return f"{mirror.rstrip('/')}/{self.name}" if mirror else self.url


# face-alignment 1.5.0: face_alignment.api.models_urls["2DFAN-4"], loaded from
# torch.hub.get_dir()/checkpoints. The name's "11f355bf06" is the SHA-256 prefix torch.hub
# would check; the full digest is the one pinned by projects that verify this file.
FAN_2D = WeightFile(
    name="2DFAN4-11f355bf06.pth.tar",
    url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    sha256="11f355bf0693120222f5955ce3f9dc8fb5763ebb30a47d7906e509490d32e4aa",
    folder="hub/checkpoints",
    library="face-alignment's FAN landmark",
)

# facenet-pytorch's release v2.2.9 (InceptionResnetV1(pretrained="vggface2") downloads it
# into <torch home>/checkpoints); 111,898,327 bytes. Its name carries no hash prefix.
VGGFACE2 = WeightFile(
    name="20180402-114759-vggface2.pt",
    url=(
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
        "20180402-114759-vggface2.pt"
    ),
    sha256="281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
    folder="checkpoints",
    library="facenet-pytorch's VGGFace2",
)


class MissingWeightsError(FileNotFoundError):
    """A weight file is not on disk and cannot be downloaded (offline, HTTP error, bad hash)."""


class _Permanent(Exception):
    """A failure that retrying cannot fix (HTTP 4xx, wrong hash)."""


def default_torch_home(torch_home: str | os.PathLike | None = None) -> Path:
    """`torch_home`, else $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch
    (torch.hub's rule)."""
    if torch_home is not None:
        return Path(torch_home).expanduser()
    env = os.environ.get("TORCH_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    return Path(cache).expanduser() / "torch"


def _download(spec: WeightFile, dest: Path, timeout_s: float, progress: bool) -> None:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    try:
        with requests.get(spec.source, stream=True, timeout=timeout_s) as r:
            if 400 <= r.status_code < 500 and r.status_code != 429:
                raise _Permanent(f"HTTP {r.status_code}")
            r.raise_for_status()
            total = int(r.headers.get("Content-Length") or 0) or None
            digest = hashlib.sha256()
            size = 0
            # "xb": a new file with the umask's mode (tempfile.mkstemp would give 0600)
            with (
                open(tmp, "xb") as fh,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=spec.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in r.iter_content(CHUNK_BYTES):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != spec.sha256:
            raise _Permanent(
                f"SHA-256 of the {size} bytes received is {digest.hexdigest()}, "
                f"expected {spec.sha256}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_weights(
    spec: WeightFile,
    torch_home: str | os.PathLike | None = None,
    *,
    retries: int | None = None,
    timeout_s: float | None = None,
    backoff_s: float | None = None,
    progress: bool = True,
) -> Path:
    """Path of `spec`'s file in its cache folder, downloaded first when absent.

    Raises MissingWeightsError (one line: URL, file, folder) when it cannot be had.
    `retries`, `timeout_s`, `backoff_s` default to the module's RETRIES, TIMEOUT_S, BACKOFF_S.
    """
    retries = RETRIES if retries is None else max(1, retries)
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    dest = spec.path(torch_home)
    if dest.is_file():
        return dest
    folder = dest.parent
    if offline():
        raise MissingWeightsError(
            f"{spec.library} weights {spec.name} not found in {folder}, and {OFFLINE_ENV} is "
            f"set: download {spec.url} by hand into that folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MissingWeightsError(
            f"{spec.library} weights {spec.name} not found and {folder} cannot be created "
            f"({exc.strerror}): set TORCH_HOME to a writable folder, or download {spec.url} "
            "by hand into that folder"
        ) from None
    # One download per cache folder when several workers start at once; the rest find it.
    with FileLock(str(folder / f".{spec.name}.lock")):
        if dest.is_file():
            return dest
        reason = ""
        for attempt in range(1, retries + 1):
            try:
                _download(spec, dest, timeout_s, progress)
                return dest
            except _Permanent as exc:
                reason = str(exc)
                break
            except (requests.RequestException, OSError) as exc:
                reason = _reason(exc, spec.source)
                if attempt < retries:
                    time.sleep(backoff_s * attempt)
    raise MissingWeightsError(
        f"{spec.library} weights {spec.name} not found in {folder}, and downloading "
        f"{spec.source} failed ({reason}): download it by hand into that folder"
    )


def offline() -> bool:
    """True when $GLEE_OFFLINE says downloads are off (1, true, yes)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def probe_url(url: str, timeout_s: float = 3.0) -> str | None:
    """None when `url` answers with a success status within `timeout_s`, else the reason.

    A streamed GET whose body is not read: some file hosts refuse HEAD.
    """
    if offline():
        return f"{OFFLINE_ENV} is set"
    try:
        with requests.get(url, stream=True, timeout=timeout_s) as r:
            if r.status_code >= 400:
                return f"HTTP {r.status_code}"
    except requests.RequestException as exc:
        return _reason(exc, url)
    return None


def _reason(exc: BaseException, url: str) -> str:
    """A short cause of a failed request (requests' own text repeats the URL and reprs)."""
    text = " ".join(f"{exc}".split())
    host = urlparse(url).netloc
    if isinstance(exc, requests.Timeout):
        return f"{host} did not answer in time"
    cut = re.search(r"IncompleteRead\([^)]*\)", text)
    if cut:
        return f"transfer cut short: {cut.group(0)}"
    if isinstance(exc, requests.ConnectionError):
        errno = re.search(r"\[Errno [^\]]*\][^)'\"]*", text)
        return f"cannot connect to {host}" + (f": {errno.group(0).strip()}" if errno else "")
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 200 else text[:197] + "..."
