"""FEC reader (DESIGN.md, "Datasets: on-disk layouts"; Sec. III-E, IV-B of the paper).

`faceexp-comparison-data-{train,test}-public.csv` has no header. Columns 0-4, 5-9 and
10-14 are (url, top-left col, bottom-right col, top-left row, bottom-right row) of the
three faces, normalised to [0, 1]; column 15 the triplet type; then pairs (annotator id,
annotation in {1, 2, 3}), the annotation naming the face most different from the other two.

Majority vote: the face named by most annotators is the negative. A tie (e.g. 3-3 of six
annotators) has no reliable answer: by default the row goes to `skipped`; `ties="first"`
keeps it with the smallest tied face index.

Images: a URL is found (`resolve_image`) as a local path, a file:// URL, or in the
`jobs/fetch_fec.py` cache: <cache>/images/<sha1(url)>.<ext> for the whole image and
<cache>/crops/<face_key>.jpg for each face box. The fetcher copies the CSVs into the cache,
so the cache is an FEC root that preprocessing reads as it is (`face_source`: the whole
image and the face's box when on disk, else the fetched crop; a URL in the cache's
dead_links.csv is reported as dead, with the fetcher's reason).
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np

from glee.datasets.errors import DatasetError, Skip
from glee.datasets.images import load_image
from glee.datasets.records import FaceRef, FecIndex, TripletRecord

TRIPLET_TYPES = ("ONE_CLASS_TRIPLET", "TWO_CLASS_TRIPLET", "THREE_CLASS_TRIPLET")
CHAIN_TRIPLET = "CHAIN_TRIPLET"  # triplet_type of triplets mined by `mine_chain_triplets`
# Sec. IV-B: m = 0.1 for one-class triplets, 0.2 for two- and three-class triplets.
DEFAULT_MARGINS: dict[str, float] = {
    "ONE_CLASS_TRIPLET": 0.1,
    "TWO_CLASS_TRIPLET": 0.2,
    "THREE_CLASS_TRIPLET": 0.2,
}
CSV_NAME = "faceexp-comparison-data-{split}-public.csv"
DEAD_LINKS = "dead_links.csv"  # url, reason, attempts: what jobs/fetch_fec.py could not get
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def url_cache_name(url: str) -> str:
    """File name of a downloaded image in <cache>/images (stable across runs)."""
    suffix = Path(urlparse(url).path).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        suffix = ".jpg"
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:24] + suffix


def face_key(face: FaceRef) -> str:
    """A stable id for (url, box); also the crop's file name stem in <cache>/crops."""
    text = f"{face.url}|{face.left:.6f}|{face.right:.6f}|{face.top:.6f}|{face.bottom:.6f}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:24]


def crop_path(face: FaceRef, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "crops" / f"{face_key(face)}.jpg"


def _is_remote(url: str) -> bool:
    return urlparse(url).scheme in ("http", "https")


def local_path(url: str, base: str | Path | None = None) -> Path | None:
    """A file:// URL or a (relative to `base`) path -> Path; None for http(s) URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme in ("http", "https"):
        return None
    path = Path(url).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def resolve_image(
    url: str, image_root: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The local file of an FEC image URL; DatasetError (saying how to get it) if absent."""
    candidates: list[Path] = []
    local = local_path(url, image_root)
    if local is not None:
        candidates.append(local)
    else:
        name = url_cache_name(url)
        if cache_dir is not None:
            candidates.append(Path(cache_dir) / "images" / name)
        if image_root is not None:
            candidates += [
                Path(image_root) / name,
                Path(image_root) / Path(urlparse(url).path).name,
            ]
    for path in candidates:
        if path.is_file():
            return path
    if local is not None:
        raise DatasetError(f"FEC image {url} not found at {local}")
    raise DatasetError(
        f"FEC image {url} is not downloaded (looked in {[str(c) for c in candidates] or 'nowhere'}): "
        f"run `python jobs/fetch_fec.py --csv <csv> --out <cache>` and pass cache_dir=<cache>"
    )


def read_dead_links(cache_dir: str | Path) -> dict[str, tuple[str, int]]:
    """url -> (reason, attempts) from the fetcher's <cache>/dead_links.csv ({} if none)."""
    path = Path(cache_dir) / DEAD_LINKS
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["url"]: (r["reason"], int(r["attempts"])) for r in csv.DictReader(f)}


@dataclass(frozen=True)
class FaceSource:
    """The file preprocessing reads for one FEC face, and where the face is in it."""

    path: Path
    box_norm: tuple[float, float, float, float]  # left, right, top, bottom in [0, 1]
    whole_image: bool  # False: `path` is the fetched crop and the box is all of it


def face_source(
    face: FaceRef,
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    dead: Mapping[str, tuple[str, int]] | None = None,
) -> FaceSource:
    """The whole image and the face's box in it (the alignment sees the face's
    surroundings), else the crop jobs/fetch_fec.py wrote (`--no-keep-images` keeps only
    those); DatasetError if neither is on disk, naming the fetcher's reason for a URL in
    `dead` (`read_dead_links(cache_dir)`)."""
    try:
        path = resolve_image(face.url, image_root, cache_dir)
        return FaceSource(path, (face.left, face.right, face.top, face.bottom), True)
    except DatasetError as missing:
        crop = crop_path(face, cache_dir) if cache_dir is not None else None
        if crop is not None and crop.is_file():
            return FaceSource(crop, (0.0, 1.0, 0.0, 1.0), False)
        if dead and face.url in dead:
            reason, attempts = dead[face.url]
            raise DatasetError(
                f"FEC image {face.url} is a dead link ({reason}; {attempts} attempt(s), listed "
                f"in {Path(cache_dir or '.') / DEAD_LINKS}): rerun jobs/fetch_fec.py "
                f"--retry-dead to try again"
            ) from None
        raise missing


def crop_box(face: FaceRef, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel box (row0, row1, col0, col1) of a normalised face box, clipped, at least 1 px."""
    if not (face.left < face.right and face.top < face.bottom):
        raise ValueError(f"face box of {face.url} is empty or inverted: {face}")
    c0 = min(max(int(round(face.left * width)), 0), width - 1)
    c1 = min(max(int(round(face.right * width)), c0 + 1), width)
    r0 = min(max(int(round(face.top * height)), 0), height - 1)
    r1 = min(max(int(round(face.bottom * height)), r0 + 1), height)
    return r0, r1, c0, c1


def crop_face(image: np.ndarray, face: FaceRef) -> np.ndarray:
    """The face box of `face` cut from the whole image (H, W, C) -> (h, w, C)."""
    r0, r1, c0, c1 = crop_box(face, image.shape[0], image.shape[1])
    return image[r0:r1, c0:c1].copy()


def load_face(
    face: FaceRef, image_root: str | Path | None = None, cache_dir: str | Path | None = None
) -> np.ndarray:
    """RGB uint8 face crop: the cached crop if fetch_fec wrote one, else cut from the image."""
    if cache_dir is not None:
        cached = crop_path(face, cache_dir)
        if cached.is_file():
            return load_image(str(cached))
    return crop_face(load_image(str(resolve_image(face.url, image_root, cache_dir))), face)


def majority_vote(annotations: Sequence[int], ties: str = "skip") -> int | None:
    """Face (1..3) named most often; on a tie None ("skip") or the smallest index ("first")."""
    counts = Counter(annotations)
    if not counts:
        return None
    best = max(counts.values())
    winners = sorted(a for a, c in counts.items() if c == best)
    if len(winners) > 1 and ties == "skip":
        return None
    return winners[0]


def parse_fec_row(
    row: Sequence[str],
) -> tuple[tuple[FaceRef, FaceRef, FaceRef], str, tuple[int, ...]]:
    """One CSV row -> (faces, triplet type, annotations); ValueError saying what is wrong."""
    if len(row) < 18:
        raise ValueError(f"{len(row)} fields, expected 16 + 2 per annotator")
    if (len(row) - 16) % 2:
        raise ValueError(f"{len(row)} fields: annotator columns must come in (id, answer) pairs")
    faces = []
    for k in range(3):
        url = row[5 * k].strip()
        if not url:
            raise ValueError(f"face {k + 1} has an empty url")
        try:
            left, right, top, bottom = (float(v) for v in row[5 * k + 1 : 5 * k + 5])
        except ValueError:
            raise ValueError(f"face {k + 1} box is not numeric") from None
        if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
            raise ValueError(f"face {k + 1} box {left, right, top, bottom} is not inside [0, 1]")
        faces.append(FaceRef(url, left, right, top, bottom))
    ttype = row[15].strip()
    if ttype not in TRIPLET_TYPES:
        raise ValueError(f"triplet type {ttype!r} is not one of {', '.join(TRIPLET_TYPES)}")
    try:
        annotations = tuple(int(v) for v in row[17::2])
    except ValueError:
        raise ValueError("annotation is not an integer") from None
    if any(a not in (1, 2, 3) for a in annotations):
        raise ValueError(f"annotations {annotations} must be 1, 2 or 3")
    return (faces[0], faces[1], faces[2]), ttype, annotations


def fec_csv_path(root_or_csv: str | Path, split: str = "train") -> tuple[Path, str]:
    path = Path(root_or_csv).expanduser()
    if path.is_file():
        return path, split
    if split not in ("train", "test"):
        raise DatasetError(f"FEC split {split!r} is not 'train' or 'test'")
    if not path.is_dir():
        raise DatasetError(
            f"FEC root {path} does not exist: pass the folder that holds "
            f"{CSV_NAME.format(split=split)} or the CSV itself"
        )
    csv_path = path / CSV_NAME.format(split=split)
    if not csv_path.is_file():
        raise DatasetError(
            f"FEC root {path} has no {csv_path.name}: expected <root>/{CSV_NAME.format(split=split)}"
        )
    return csv_path, split


def _on_disk(
    face: FaceRef, base: Path, cache_dir: str | Path | None, found: dict[str, bool]
) -> bool:
    """True if the face's whole image or its fetched crop is on disk (memoised per url)."""
    if face.url not in found:
        try:
            resolve_image(face.url, base, cache_dir)
            found[face.url] = True
        except DatasetError:
            found[face.url] = False
    return found[face.url] or (cache_dir is not None and crop_path(face, cache_dir).is_file())


def read_fec(
    root_or_csv: str | Path,
    split: str = "train",
    image_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    margins: Mapping[str, float] | None = None,
    ties: str = "skip",
    check_images: bool | None = None,
) -> FecIndex:
    """Triplets of an FEC CSV with majority-vote negatives and Sec. IV-B margins.

    Malformed rows go to `skipped` as ("csv:line", reason). With `check_images` (default:
    on when `image_root` or `cache_dir` is given) triplets whose images are not on disk are
    skipped too. Relative image paths are taken relative to `image_root`, else the CSV folder.
    """
    if ties not in ("skip", "first"):
        raise DatasetError(f"ties={ties!r}: choose 'skip' or 'first'")
    margin_of = dict(DEFAULT_MARGINS)
    margin_of.update(margins or {})
    csv_path, split = fec_csv_path(root_or_csv, split)
    base = Path(image_root) if image_root is not None else csv_path.parent
    if check_images is None:
        check_images = image_root is not None or cache_dir is not None
    triplets: list[TripletRecord] = []
    skipped: list[Skip] = []
    warnings: list[str] = []
    found: dict[str, bool] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not any(c.strip() for c in row):
                continue
            ref = f"{csv_path}:{lineno}"
            try:
                faces, ttype, annotations = parse_fec_row(row)
            except ValueError as e:
                skipped.append(Skip(ref, str(e)))
                continue
            vote = majority_vote(annotations, ties)
            if vote is None:
                skipped.append(Skip(ref, f"no majority among annotations {annotations}"))
                continue
            if check_images:
                missing = [f.url for f in faces if not _on_disk(f, base, cache_dir, found)]
                if missing:
                    skipped.append(Skip(ref, f"image not on disk: {missing[0]}"))
                    continue
            triplets.append(TripletRecord(faces, ttype, annotations, vote, margin_of[ttype]))
    if not triplets and not skipped:
        raise DatasetError(f"FEC CSV {csv_path} holds no rows")
    if skipped and not triplets:
        warnings.append(f"FEC: every row of {csv_path} was skipped; first reason: {skipped[0][1]}")
    return FecIndex(
        csv=str(csv_path),
        split=split,
        triplets=triplets,
        skipped=skipped,
        warnings=warnings,
        image_root=str(image_root) if image_root is not None else str(csv_path.parent),
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )


# Sec. III-E, hard sample mining: "the hierarchical annotation lets chain comparisons
# generate more triplets". A triplet (a, p; n) says the pair {a, p} is closer than both
# {a, n} and {p, n}. These "pair X closer than pair Y" facts are transitive, so chains of
# triplets order pairs the annotators never compared directly: from (a, p; n) and
# (a, n; m), d(a,p) < d(a,n) < d(a,m). A new triplet (x, y; z) is emitted only when the
# chains prove BOTH sides the two-sided loss uses, d(x,y) < d(x,z) and d(x,y) < d(y,z),
# and nothing proves the reverse (inconsistent annotations yield nothing). Its margin is
# the largest margin among the triplets on its chains.
def mine_chain_triplets(
    triplets: Sequence[TripletRecord], max_hops: int = 2
) -> list[TripletRecord]:
    """New triplets implied by chains of at most `max_hops` comparisons (Sec. III-E).

    Faces are identified by `face_key`; face-triples already present in `triplets` and
    duplicates are not returned. Output order is deterministic.
    """
    if max_hops < 2:
        return []
    faces: dict[str, FaceRef] = {}
    # closer[X] = {Y: margin}: pair X is closer than pair Y, by one triplet
    closer: dict[frozenset[str], dict[frozenset[str], float]] = defaultdict(dict)
    known: set[frozenset[str]] = set()
    for t in triplets:
        a, p, n = t.anchor_positive_negative
        ka, kp, kn = face_key(a), face_key(p), face_key(n)
        for f, k in ((a, ka), (p, kp), (n, kn)):
            faces.setdefault(k, f)
        if len({ka, kp, kn}) < 3:
            continue
        known.add(frozenset((ka, kp, kn)))
        near = frozenset((ka, kp))
        for far in (frozenset((ka, kn)), frozenset((kp, kn))):
            old = closer[near].get(far)
            closer[near][far] = t.margin if old is None else max(old, t.margin)

    def reach(start: frozenset[str]) -> dict[frozenset[str], float]:
        """Pairs provably farther than `start` within max_hops, with the chain's max margin."""
        out: dict[frozenset[str], float] = {}
        frontier = {start: 0.0}
        for _ in range(max_hops):
            nxt: dict[frozenset[str], float] = {}
            for pair, m in frontier.items():
                for far, m2 in closer.get(pair, {}).items():
                    m_far = max(m, m2)
                    if far != start and (far not in out or m_far > out[far]):
                        nxt[far] = m_far
            for far, m in nxt.items():
                out[far] = max(out.get(far, 0.0), m)
            frontier = nxt
        return out

    reach_cache: dict[frozenset[str], dict[frozenset[str], float]] = {}

    def reach_of(pair: frozenset[str]) -> dict[frozenset[str], float]:
        if pair not in reach_cache:
            reach_cache[pair] = reach(pair)
        return reach_cache[pair]

    mined: dict[frozenset[str], TripletRecord] = {}
    for near in sorted(closer, key=sorted):
        farther = reach_of(near)
        x, y = sorted(near)
        thirds = {k for pair in farther for k in pair} - {x, y}
        for z in sorted(thirds):
            triple = frozenset((x, y, z))
            if triple in known or triple in mined:
                continue
            xz, yz = frozenset((x, z)), frozenset((y, z))
            if xz not in farther or yz not in farther:
                continue
            if near in reach_of(xz) or near in reach_of(yz):
                continue  # contradicting chains: annotations disagree, prove nothing
            margin = max(farther[xz], farther[yz])
            mined[triple] = TripletRecord(
                faces=(faces[x], faces[y], faces[z]),
                triplet_type=CHAIN_TRIPLET,
                annotations=(),
                most_different=3,
                margin=margin,
            )
    return list(mined.values())


def triplet_counts(triplets: Sequence[TripletRecord]) -> dict[str, int]:
    """Number of triplets per type (for summaries)."""
    return dict(Counter(t.triplet_type for t in triplets))
