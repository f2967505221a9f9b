"""Servers on 127.0.0.1 for the remote-store tests, notebook and benchmark: an S3 server (moto) and an HTTP server
with Range support that counts requests and bytes and can add latency or fail every request.  Nothing leaves the
machine."""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
import time
import urllib.parse
from pathlib import Path

__all__ = ["RangeServer", "S3Server", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and a small body are separate writes; with Nagle's algorithm the second waited for the
    # client's delayed ACK, 40 ms now and then on 127.0.0.1 (a zarr open of 4 small objects: 5 ms or 45 ms)
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _empty(self, status: int, key: str, headers: dict | None = None) -> None:
        self.server.count(key, 0)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, body: bool) -> None:
        srv: RangeServer = self.server  # type: ignore[assignment]
        if srv.latency:
            time.sleep(srv.latency)
        key = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if srv.fail_status:
            return self._empty(srv.fail_status, key)
        rel = key.lstrip("/")
        target = srv.root / rel
        if not rel or ".." in Path(rel).parts or not target.is_file():  # no directory listings, as a bucket
            return self._empty(404, key)
        size = target.stat().st_size
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if m and m.group(1):
                start, end = int(m.group(1)), min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            elif m and m.group(2):
                start, end = max(0, size - int(m.group(2))), size - 1
            if not m or start >= size or start > end:
                return self._empty(416, key, {"Content-Range": f"bytes */{size}"})
            status = 206
        length = end - start + 1
        # counted before it is sent: a client that got its answer finds it counted (after, it raced the client)
        srv.count(key, length if body else 0, head=not body)
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent = 0
        if body:
            try:
                with open(target, "rb") as f:
                    f.seek(start)
                    while sent < length:
                        chunk = f.read(min(length - sent, 1 << 20))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
            except (ConnectionError, BrokenPipeError):
                self.close_connection = True
                srv.uncount(key, length - sent)


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves the files below ``root`` on 127.0.0.1 with Range requests; counts requests and bytes.

    ``latency`` (seconds) is added to every request; ``fail_status`` (e.g. 503), when set, answers every request.
    """

    daemon_threads = True

    def __init__(self, root: str | os.PathLike, latency: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.latency, self.fail_status = Path(root), latency, 0
        self._lock = threading.Lock()
        self.stats: dict[str, list[int]] = {}
        self.heads = 0  # HEAD requests (an object's size asked) since the last reset, also counted in stats
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, key: str, nbytes: int, head: bool = False) -> None:
        with self._lock:
            st = self.stats.setdefault(key, [0, 0])
            st[0] += 1
            st[1] += nbytes
            self.heads += head

    def uncount(self, key: str, nbytes: int) -> None:
        """Take back ``nbytes`` counted for ``key`` but not sent (the client went away)."""
        with self._lock:
            self.stats[key][1] -= nbytes

    def reset(self) -> None:
        with self._lock:
            self.stats = {}
            self.heads = 0

    def totals(self) -> tuple[int, int]:
        """Requests and bytes sent since the last :meth:`reset`."""
        with self._lock:
            return sum(v[0] for v in self.stats.values()), sum(v[1] for v in self.stats.values())

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class S3Server:
    """moto's S3 server on 127.0.0.1 with dummy credentials in the environment (set on :meth:`start`, restored on
    :meth:`stop`).  ``storage_options`` is what s3fs needs to reach it."""

    ENV = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.storage_options = {"client_kwargs": {"endpoint_url": self.endpoint}}
        self._saved: dict[str, str | None] = {}
        self._server = None

    def start(self) -> S3Server:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        for k, v in self.ENV.items():
            self._saved[k] = os.environ.get(k)
            os.environ[k] = v
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True, use_listings_cache=False)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
