"""Image loading for the three reference forms of `glee.datasets.records`.

    "/abs/path/0001.jpg"                      a file
    "/abs/path/F001.zip!F001/T1/0001.jpg"     a member of a zip archive (BP4D+)
    "/abs/path/LeftVideoSN001_comp.avi#12"    0-based frame 12 of a video (DISFA)

Every loader returns RGB uint8 (H, W, 3) or raises `CorruptImageError`; nothing returns
None. Open zip archives and video captures are cached per process (a forked worker opens
its own), so reading the frames of one archive or video in order stays cheap.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from glee.datasets.errors import CorruptImageError

ZIP_SEPARATOR = "!"
VIDEO_SEPARATOR = "#"
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".wmv", ".mpg", ".mpeg")
_VIDEO_REF = re.compile(r"^(?P<path>.+)#(?P<index>\d+)$")
_ZIP_REF = re.compile(r"^(?P<path>.+?\.zip)!(?P<member>.+)$", re.IGNORECASE)
_MAX_OPEN = 8  # archives / captures kept open per process
_MAX_SKIP = 120  # frames decoded and dropped rather than sought past


def zip_ref(archive: str | Path, member: str) -> str:
    return f"{archive}{ZIP_SEPARATOR}{member}"


def video_ref(video: str | Path, index: int) -> str:
    return f"{video}{VIDEO_SEPARATOR}{index}"


def parse_ref(ref: str) -> tuple[str, str, str | int | None]:
    """("file", path, None) | ("zip", archive, member) | ("video", path, 0-based index)."""
    if os.path.isfile(ref):
        return "file", ref, None
    m = _ZIP_REF.match(ref)
    if m:
        return "zip", m["path"], m["member"]
    m = _VIDEO_REF.match(ref)
    if m and m["path"].lower().endswith(VIDEO_SUFFIXES):
        return "video", m["path"], int(m["index"])
    return "file", ref, None


def is_complete_image(data: bytes) -> bool:
    """False for a JPEG without its end-of-image marker or a PNG without IEND (truncated)."""
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" in data[-2048:]  # cameras may pad after EOI
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in data[-64:]
    return True


def decode_image(data: bytes, ref: str = "<bytes>") -> np.ndarray:
    """Encoded bytes -> RGB uint8 (H, W, 3); CorruptImageError if empty, truncated or invalid."""
    if not data:
        raise CorruptImageError(ref, "empty file")
    if not is_complete_image(data):
        raise CorruptImageError(ref, "truncated image data (no end marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise CorruptImageError(ref, "not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_images(encoded: Sequence[bytes], what: str = "image") -> np.ndarray:
    """Several encoded images of one size (aligned faces) -> (B, H, W, 3) uint8 RGB."""
    out = [decode_image(data, f"{what} {i} of the batch") for i, data in enumerate(encoded)]
    if not out:
        raise ValueError(f"no {what}s to decode")
    return np.stack(out)


_INHERITED: list[object] = []  # a forked child's copies of the parent's open handles


class _ProcessCache:
    """A small LRU of open handles; a forked child starts empty (handles are per process)."""

    def __init__(self, opener, closer) -> None:
        self._opener, self._closer = opener, closer
        self._items: OrderedDict[str, object] = OrderedDict()
        self.lock = threading.RLock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # The parent's handles are neither used, closed nor freed here: an OpenCV capture's
        # destructor joins FFmpeg's decoder threads, which the fork did not copy, and waits
        # forever (Ray's start-up forked with a preexec_fn and hung). Kept referenced.
        _INHERITED.append(self._items)
        self._items = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key: str):
        item = self._items.get(key)
        if item is None:
            item = self._opener(key)
            self._items[key] = item
            while len(self._items) > _MAX_OPEN:
                _, old = self._items.popitem(last=False)
                self._closer(old)
        else:
            self._items.move_to_end(key)
        return item

    def drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._closer(item)

    def clear(self) -> None:
        while self._items:
            self._closer(self._items.popitem()[1])


class _Capture:
    def __init__(self, path: str) -> None:
        self.cap = cv2.VideoCapture(path)
        self.next_index = 0


def _open_zip(path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptImageError(path, f"not a readable zip archive ({e})") from e


_zips = _ProcessCache(_open_zip, lambda z: z.close())
_videos = _ProcessCache(_Capture, lambda c: c.cap.release())


def close_cached() -> None:
    """Close every cached zip archive and video capture of this process."""
    with _zips.lock:
        _zips.clear()
    with _videos.lock:
        _videos.clear()


def _load_file(path: str) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CorruptImageError(path, "file does not exist") from None
    except OSError as e:
        raise CorruptImageError(path, f"cannot read file ({e.strerror})") from e
    return decode_image(data, path)


def _load_zip_member(archive: str, member: str, ref: str) -> np.ndarray:
    if not os.path.isfile(archive):
        raise CorruptImageError(ref, f"zip archive {archive} does not exist")
    with _zips.lock:
        zf = _zips.get(archive)
        try:
            data = zf.read(member)
        except KeyError:
            raise CorruptImageError(ref, f"no member {member} in {archive}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # CRC error, truncated archive
            raise CorruptImageError(ref, f"cannot extract member ({e})") from e
    return decode_image(data, ref)


def _seek(cap: _Capture, path: str, index: int) -> None:
    """Put `cap` before frame `index`: a seek the container confirms, else a sequential
    skip from the start (seeks land on the wrong frame in some real videos)."""
    if cap.next_index == index:
        return
    if index > 0 and cap.cap.set(cv2.CAP_PROP_POS_FRAMES, index):
        if int(cap.cap.get(cv2.CAP_PROP_POS_FRAMES)) == index:
            cap.next_index = index
            return
    cap.cap.release()
    cap.cap = cv2.VideoCapture(path)
    cap.next_index = 0
    while cap.next_index < index and cap.cap.grab():
        cap.next_index += 1


def read_video_frames(
    path: str | Path, indices: Sequence[int]
) -> list[np.ndarray | CorruptImageError]:
    """RGB frames `indices` (0-based) of a video, each decoded once in frame order from
    the first one asked for; an unreadable frame comes back as its CorruptImageError.
    The one video reader of the project: preprocessing and predict both read through it."""
    path = str(path)
    refs = [video_ref(path, i) for i in indices]
    if not os.path.isfile(path):
        return [CorruptImageError(r, f"video {path} does not exist") for r in refs]
    out: list[np.ndarray | CorruptImageError] = [
        CorruptImageError(r, f"video has no decodable frame {i}") for r, i in zip(refs, indices)
    ]
    with _videos.lock:
        cap = _videos.get(path)
        if not cap.cap.isOpened():
            _videos.drop(path)
            return [CorruptImageError(r, "video cannot be opened") for r in refs]
        last: tuple[int, np.ndarray] | None = None  # a frame asked for twice is decoded once
        for k in sorted(range(len(indices)), key=lambda k: indices[k]):
            index = int(indices[k])
            if last is not None and last[0] == index:
                out[k] = last[1]
                continue
            gap = index - cap.next_index
            if cap.next_index < 0 or gap < 0 or gap > _MAX_SKIP:
                _seek(cap, path, index)
            frame = None
            while 0 <= cap.next_index <= index:
                ok, frame = cap.cap.read()
                cap.next_index = cap.next_index + 1 if ok else -1
            if frame is not None and cap.next_index == index + 1:
                last = (index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                out[k] = last[1]
    return out


def load_image(ref: str) -> np.ndarray:
    """Any image reference -> RGB uint8 (H, W, 3); raises CorruptImageError if unreadable."""
    kind, path, extra = parse_ref(str(ref))
    if kind == "zip":
        return _load_zip_member(path, str(extra), ref)
    if kind == "video":
        frame = read_video_frames(path, [int(extra)])[0]
        if isinstance(frame, CorruptImageError):
            raise frame
        return frame
    return _load_file(path)


def video_frame_count(path: str | Path) -> int:
    """Frame count from the container header (cheap, no decoding); -1 if the video won't open."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
