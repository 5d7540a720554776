"""Fixtures shared across the suite: one tiny synthetic world per test session."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


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
