import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from glee.datasets.errors import CorruptImageError
from glee.datasets.images import (
    close_cached,
    load_image,
    parse_ref,
    read_video_frames,
    video_frame_count,
    video_ref,
    zip_ref,
)


def colour(i: int) -> tuple[int, int, int]:
    """A distinct RGB colour per index."""
    return ((40 * i) % 256, (255 - 30 * i) % 256, (90 + 70 * i) % 256)


def jpeg(rgb: tuple[int, int, int], size=(24, 32)) -> bytes:
    img = np.empty((*size, 3), np.uint8)
    img[:] = rgb[::-1]  # BGR
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    return enc.tobytes()


def write_video(path: Path, n: int, size=(32, 24)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(n):
        frame = np.empty((size[1], size[0], 3), np.uint8)
        frame[:] = colour(i)[::-1]
        writer.write(frame)
    writer.release()


def assert_colour(img: np.ndarray, rgb, tol=6):
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert np.abs(img.reshape(-1, 3).mean(0) - np.array(rgb)).max() < tol


def test_file_and_zip_refs(tmp_path: Path):
    f = tmp_path / "a.jpg"
    f.write_bytes(jpeg((200, 30, 10)))
    assert_colour(load_image(str(f)), (200, 30, 10))  # RGB order, not BGR
    z = tmp_path / "F001.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(3):
            zf.writestr(f"F001/T1/{i:04d}.jpg", jpeg(colour(i)))
    for i in (2, 0, 1):
        assert_colour(load_image(zip_ref(z, f"F001/T1/{i:04d}.jpg")), colour(i))
    assert parse_ref(zip_ref(z, "F001/T1/0001.jpg")) == ("zip", str(z), "F001/T1/0001.jpg")
    with pytest.raises(CorruptImageError, match="no member"):
        load_image(zip_ref(z, "F001/T1/0009.jpg"))
    close_cached()


def test_video_refs_random_and_sequential(tmp_path: Path):
    v = tmp_path / "LeftVideoSN001_comp.avi"
    write_video(v, 6)
    assert video_frame_count(v) == 6
    for i in (0, 1, 2, 5, 3, 3, 4):  # sequential, backward and repeated reads
        assert_colour(load_image(video_ref(v, i)), colour(i), tol=10)
    frames = read_video_frames(v, [4, 0, 2, 2, 5, 1, 3, 6])  # one pass, any order asked
    for i, img in zip([4, 0, 2, 2, 5, 1, 3], frames):
        assert_colour(img, colour(i), tol=10)
    assert isinstance(frames[-1], CorruptImageError) and "no decodable frame 6" in str(frames[-1])
    with pytest.raises(CorruptImageError, match="no decodable frame 6"):
        load_image(video_ref(v, 6))
    close_cached()


def test_corrupt_inputs_raise(tmp_path: Path):
    good = jpeg((10, 20, 30))
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path, reason in [(truncated, "truncated"), (garbage, "not a decodable"), (empty, "empty")]:
        with pytest.raises(CorruptImageError, match=reason) as e:
            load_image(str(path))
        assert e.value.ref == str(path)
    with pytest.raises(CorruptImageError, match="does not exist"):
        load_image(str(tmp_path / "missing.jpg"))
    bad_video = tmp_path / "bad.avi"
    bad_video.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptImageError):
        load_image(video_ref(bad_video, 0))
    assert all(isinstance(f, CorruptImageError) for f in read_video_frames(bad_video, [0, 1]))
    assert video_frame_count(bad_video) == -1


def test_a_process_that_read_a_video_can_still_start_subprocesses(tmp_path: Path):
    """A fork copies the cache of open videos into the child, without the decoder threads
    FFmpeg started for them: freeing them there waits on those threads forever. Ray's
    start-up forks with a preexec_fn (at-fork hooks run), so a predict in this process
    followed by Ray's start hung in `_ProcessCache._forget` (session 10)."""
    import subprocess
    import sys

    video = tmp_path / "clip.avi"
    write_video(video, 4, size=(640, 360))
    script = (
        "import subprocess, sys\n"
        "from glee.datasets.images import read_video_frames\n"
        f"assert len(read_video_frames({str(video)!r}, [0, 1, 2])) == 3\n"
        "subprocess.run([sys.executable, '-c', 'pass'], preexec_fn=lambda: None, check=True)\n"
        "print('started')\n"
    )
    import os
    import signal

    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the hung fork too
        child.communicate()
        pytest.fail("a subprocess started after reading a video never started (fork hang)")
    assert child.returncode == 0 and stdout.strip() == "started", stderr[-2000:]
