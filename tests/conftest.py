"""Fixtures shared across the suite: one tiny synthetic world per test session."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# Ray Train's controller polls its workers every 2 s by default, so each of the suite's
# few-second Train runs waited on polls to start and to finish: at 0.5 s the tune test of a
# dead trial's pretraining took 61 s instead of 76 at 0.25 s (session 10; 0.5 s is kept,
# lighter on a loaded machine). Set before any Ray starts,
# so the test session's Ray and the jobs the tests start in subprocesses inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four synthetic datasets (tiny preset, seed 0), written once per session."""
    from glee.synthetic.writers import synthesize

    out = tmp_path_factory.mktemp("tiny_world")
    return synthesize(out, preset="tiny", seed=0, progress=False)


Route = bytes | Callable[[int], tuple[int, bytes]]


@pytest.fixture
def serve_files() -> Iterator[Callable[[dict[str, Route]], tuple[str, Counter]]]:
    """`serve(routes)` starts an http.server on 127.0.0.1 in a thread (no test reaches the
    internet) and returns (base url, hits per path). A route is the body of a 200, or a
    function of the path's request count (1 on the first) giving (status, body); any
    other path is a 404. Every server stops at the end of the test."""
    servers = []

    def serve(routes: dict[str, Route]) -> tuple[str, Counter]:
        hits: Counter = Counter()
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                with lock:
                    hits[self.path] += 1
                    n = hits[self.path]
                route = routes.get(self.path)
                status, body = (404, b"") if route is None else (200, route)
                if callable(route):
                    status, body = route(n)
                self.send_response(status)
                if status == 200:
                    self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        servers.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}", hits

    yield serve
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
