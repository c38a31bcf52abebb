"""`pgfanout web`: one page with the topology tree and each subscriber's lag over the last hour.

A static page (pgfanout/cli/web/index.html, no build step, nothing fetched from the internet) and a
JSON endpoint, /api/status: the same trees as `pgfanout status --json`, gathered every few seconds
by a thread of this process, with each subscriber's lag kept for an hour.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from pgfanout.cli import status
from pgfanout.core.config import Config

log = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "web" / "index.html"
HISTORY_SECONDS = 3600


class Sampler:
    """The latest status, and each subscriber's lag for the last hour."""

    def __init__(self, config: Config, interval: float):
        self.config, self.interval = config, interval
        self.latest: dict = {"generated_at": time.time(), "status": {"reachable": True, "sources": []}, "history": {}}
        self.history: dict[str, deque[tuple[float, float, int]]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def sample(self) -> None:
        trees = status.gather(self.config)
        now = time.time()
        with self.lock:
            for node in (n for tree in trees for n in tree.walk() if n.kind == "subscriber"):
                points = self.history.setdefault(node.name, deque())
                points.append((now, node.lag_seconds or 0.0, node.lag_transactions or 0))
                while points and points[0][0] < now - HISTORY_SECONDS:
                    points.popleft()
            self.latest = {
                "generated_at": now,
                "status": status.as_json(trees),
                "history": {name: list(points) for name, points in self.history.items()},
            }

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sample()
            except Exception:  # a failed look is shown as the last good one; the next may succeed
                log.exception("status could not be gathered")
            self.stop.wait(self.interval)

    def snapshot(self) -> bytes:
        with self.lock:
            return json.dumps(self.latest).encode()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the standard library's name)
        log.debug("web: " + format, *args)


def application(sampler: Sampler) -> Callable:
    page = PAGE.read_bytes()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/api/status":
            start_response("200 OK", [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [sampler.snapshot()]
        if path in ("/", "/index.html"):
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [page]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


def serve(config: Config, address: str, port: int, interval: float) -> int:
    sampler = Sampler(config, interval)
    sampler.sample()  # the first page shows the topology at once
    threading.Thread(target=sampler.run, name="sampler", daemon=True).start()
    server = make_server(address, port, application(sampler), handler_class=_Quiet)
    print(f"pgfanout web on http://{address}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sampler.stop.set()
        server.server_close()
    return 0
