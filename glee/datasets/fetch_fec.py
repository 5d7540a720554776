"""Download the FEC images and cut the face crops (`jobs/fetch_fec.py`).

FEC ships only URLs (many dead by now). The fetcher downloads each distinct http(s) URL
once, concurrently, with retries and exponential backoff for transient failures
(timeouts, connection errors, HTTP 408/429/5xx), validates that the bytes decode
completely, and writes, each file to a temporary name then renamed:

    <out>/images/<sha1(url)>.<ext>     the whole image (`fec.url_cache_name`)
    <out>/crops/<face_key>.jpg         each face box of the CSVs (`fec.face_key`)
    <out>/dead_links.csv               url, reason, attempts
    <out>/faceexp-comparison-data-{train,test}-public.csv   the CSVs it read, copied

so `<out>` is an FEC root `jobs/preprocess.py --dataset fec --root <out>` reads as it is.
A rerun resumes: URLs whose crops all exist are not requested, a stored whole image is
re-cropped without a request, and URLs in dead_links.csv are not retried unless
`retry_dead`. file:// URLs and local paths are cropped from disk (no download).
"""

from __future__ import annotations

import csv
import filecmp
import io
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import requests
from tqdm import tqdm

from glee.datasets.errors import CorruptImageError, DatasetError
from glee.datasets.fec import (
    CSV_NAME,
    DEAD_LINKS,
    crop_face,
    crop_path,
    local_path,
    parse_fec_row,
    read_dead_links,
    url_cache_name,
)
from glee.datasets.images import decode_image
from glee.datasets.records import FaceRef
from glee.files import atomic_path, write_bytes_atomic

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
JPEG_QUALITY = 95
USER_AGENT = "glee-platform-fec-fetcher/0.1"


@dataclass
class FetchSummary:
    out: Path
    urls: int = 0
    faces: int = 0
    downloaded: int = 0  # requested and stored this run
    reused: int = 0  # whole image already on disk, crops made without a request
    cached: int = 0  # every crop already on disk
    local: int = 0  # file:// or local path
    dead: int = 0  # failed this run
    known_dead: int = 0  # listed in dead_links.csv by an earlier run, not retried
    crops_written: int = 0
    bad_rows: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    not_copied: list[str] = field(default_factory=list)  # CSVs without an FEC split name

    @property
    def dead_links(self) -> Path:
        return self.out / DEAD_LINKS

    def __str__(self) -> str:
        lines = [
            f"FEC fetch into {self.out}: {self.urls} urls, {self.faces} faces",
            f"  downloaded {self.downloaded}, reused {self.reused}, already complete "
            f"{self.cached}, local {self.local}, crops written {self.crops_written}",
            f"  dead {self.dead} this run, {self.known_dead} known from earlier runs "
            f"(table: {self.dead_links})",
        ]
        if self.bad_rows:
            lines.append(f"  {self.bad_rows} malformed CSV rows ignored")
        for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"    {n:6d}  {reason}")
        for name in self.not_copied:
            lines.append(
                f"  {name} is not named {CSV_NAME.format(split='train|test')}: not copied, "
                f"so preprocessing {self.out} will not read it"
            )
        lines.append(f"  next: python jobs/preprocess.py --dataset fec --root {self.out} --out ...")
        return "\n".join(lines)


def collect_faces(csv_paths: Iterable[str | Path]) -> tuple[dict[str, set[FaceRef]], int]:
    """url -> its face boxes over all CSVs, and the number of malformed rows."""
    faces: dict[str, set[FaceRef]] = {}
    bad = 0
    for csv_path in csv_paths:
        path = Path(csv_path).expanduser()
        if not path.is_file():
            raise DatasetError(
                f"FEC CSV {path} does not exist: pass faceexp-comparison-data-*-public.csv"
            )
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if not row or not any(c.strip() for c in row):
                    continue
                try:
                    triple, _, _ = parse_fec_row(row)
                except ValueError:
                    bad += 1
                    continue
                for face in triple:
                    faces.setdefault(face.url, set()).add(face)
    return faces, bad


def copy_csvs(csv_paths: Iterable[str | Path], out: Path) -> list[str]:
    """Copy the CSVs named like FEC's own into `out` (atomically, when they differ), so
    `out` is an FEC root; returns the names of the others, which are not copied."""
    canonical = {CSV_NAME.format(split=s) for s in ("train", "test")}
    others = []
    for csv_path in csv_paths:
        src = Path(csv_path).expanduser().resolve()
        if src.name not in canonical:
            others.append(src.name)
            continue
        dst = out / src.name
        if dst.is_file() and (dst.samefile(src) or filecmp.cmp(src, dst, shallow=False)):
            continue
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return others


def write_dead_links(out: Path, dead: dict[str, tuple[str, int]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["url", "reason", "attempts"])
    writer.writerows([u, r, a] for u, (r, a) in sorted(dead.items()))
    write_bytes_atomic(out / DEAD_LINKS, text.getvalue().encode("utf-8"))


class _Fetcher:
    def __init__(self, out: Path, retries: int, timeout: float, backoff: float, keep_images: bool):
        self.out, self.retries, self.timeout, self.backoff = out, retries, timeout, backoff
        self.keep_images = keep_images
        self._local = threading.local()

    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            self._local.session = s
        return s

    def download(self, url: str) -> tuple[bytes | None, np.ndarray | None, str, int]:
        """(bytes, RGB image, failure reason, attempts)."""
        reason = ""
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts += 1
            try:
                r = self.session().get(url, timeout=self.timeout)
            except requests.Timeout:
                reason = "timeout"
            except requests.RequestException as e:
                reason = f"connection error ({type(e).__name__})"
            else:
                if r.status_code == 200:
                    try:
                        return r.content, decode_image(r.content, url), "", attempts
                    except CorruptImageError as e:
                        return None, None, f"undecodable image: {e.reason}", attempts
                reason = f"HTTP {r.status_code}"
                if r.status_code not in RETRY_STATUS:
                    return None, None, reason, attempts
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        return None, None, reason, attempts

    def write_crops(self, image: np.ndarray, faces: Sequence[FaceRef]) -> int:
        for face in faces:
            crop = cv2.cvtColor(crop_face(image, face), cv2.COLOR_RGB2BGR)
            ok, enc = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise CorruptImageError(face.url, "cannot encode crop")
            write_bytes_atomic(crop_path(face, self.out), enc.tobytes())
        return len(faces)

    def fetch(self, url: str, faces: set[FaceRef], base: Path) -> tuple[str, str, int, int]:
        """(status, reason, attempts, crops written) for one URL."""
        todo = sorted((f for f in faces if not crop_path(f, self.out).is_file()), key=str)
        if not todo:
            return "cached", "", 0, 0
        local = local_path(url, base)
        if local is not None:
            try:
                image = decode_image(local.read_bytes(), str(local))
            except FileNotFoundError:
                return "dead", "local file not found", 1, 0
            except CorruptImageError as e:
                return "dead", f"undecodable image: {e.reason}", 1, 0
            return "local", "", 0, self.write_crops(image, todo)
        stored = self.out / "images" / url_cache_name(url)
        if stored.is_file():
            try:
                image = decode_image(stored.read_bytes(), str(stored))
                return "reused", "", 0, self.write_crops(image, todo)
            except CorruptImageError:
                stored.unlink(missing_ok=True)
        data, image, reason, attempts = self.download(url)
        if data is None or image is None:
            return "dead", reason, attempts, 0
        if self.keep_images:
            write_bytes_atomic(stored, data)
        return "downloaded", "", attempts, self.write_crops(image, todo)


def fetch_fec(
    csv_paths: str | Path | Sequence[str | Path],
    out: str | Path,
    workers: int = 16,
    retries: int = 3,
    timeout: float = 10.0,
    backoff: float = 1.0,
    retry_dead: bool = False,
    keep_images: bool = True,
    progress: bool = True,
) -> FetchSummary:
    """Download every image of the FEC CSV(s) into `out` and crop their faces; resumable.

    `retries` counts the attempts after the first for transient failures; the wait before
    retry k is backoff * 2**k seconds.
    """
    if isinstance(csv_paths, (str, Path)):
        csv_paths = [csv_paths]
    if workers < 1 or retries < 0 or timeout <= 0 or backoff < 0:
        raise DatasetError(
            f"fetch_fec: workers ({workers}) must be >= 1, retries ({retries}) >= 0, "
            f"timeout ({timeout}) > 0 and backoff ({backoff}) >= 0"
        )
    out = Path(out).expanduser().resolve()
    faces, bad = collect_faces(csv_paths)
    base = Path(csv_paths[0]).expanduser().resolve().parent
    (out / "crops").mkdir(parents=True, exist_ok=True)
    dead = read_dead_links(out)
    summary = FetchSummary(out=out, urls=len(faces), bad_rows=bad)
    summary.faces = sum(len(v) for v in faces.values())
    summary.not_copied = copy_csvs(csv_paths, out)
    todo = {}
    for url, boxes in faces.items():
        if url in dead and not retry_dead:
            summary.known_dead += 1
        else:
            todo[url] = boxes
    fetcher = _Fetcher(out, retries, timeout, backoff, keep_images)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(fetcher.fetch, url, boxes, base): url for url, boxes in todo.items()
            }
            bar = tqdm(total=len(futures), unit="url", disable=not progress, desc="FEC")
            try:
                for future in as_completed(futures):
                    url = futures[future]
                    try:
                        status, reason, attempts, crops = future.result()
                    except (CorruptImageError, ValueError, OSError) as e:
                        status, reason, attempts, crops = "dead", f"crop failed: {e}", 1, 0
                    summary.crops_written += crops
                    if status == "dead":
                        dead[url] = (reason, attempts)
                        summary.dead += 1
                        summary.reasons[reason] = summary.reasons.get(reason, 0) + 1
                    else:
                        dead.pop(url, None)
                        setattr(summary, status, getattr(summary, status) + 1)
                    bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                bar.close()
    finally:
        write_dead_links(out, dead)
    return summary
