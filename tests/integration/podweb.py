"""The "web" service of the simulated pod: a small HTTP server for the integration tests.

It is started by the ``cluster`` fixture inside the pod network namespace (``ip netns exec``)
and listens on every ``--listen HOST:PORT`` it is given. It uses only the standard library so
it can run with ``python -I -S``. Routes:

- ``GET /hello``        -> ``hello from web\\n``
- ``GET /bytes/N``      -> N bytes of :func:`deterministic_bytes` (tests know their sha256
  without downloading anything: ``cluster.expected_bytes_sha256(N)``)
- ``GET /whoami``       -> the client address the server sees, then ``\\n``. A diverted
  connection must show a pod address (198.18.x.x or 2001:2::), never the laptop's.
- ``GET /slow?ms=N``    -> waits N milliseconds, then ``slow N\\n``
- ``POST /echo``        -> the request body, unchanged
- ``POST /sha``         -> ``LEN SHA256HEX\\n`` of the request body

Every request is appended to the access log (``--log FILE``) as ``CLIENT METHOD PATH STATUS``
so tests can check where a request really came from. When every socket is bound the server
prints ``ready`` on stdout, which the fixture waits for.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BLOCK = 32  # bytes per sha256 block of the deterministic stream


def deterministic_chunks(n: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Yield the first ``n`` bytes of the test stream in pieces of at most ``chunk`` bytes.

    The stream is ``sha256(0) || sha256(1) || sha256(2) || ...`` where ``sha256(i)`` is the
    32-byte digest of ``i`` as an 8-byte big-endian integer. It is cheap to regenerate on both
    sides and has no repeating pattern that could hide an off-by-one in a relay.
    """
    per_chunk = max(1, chunk // BLOCK)
    counter = 0
    left = n
    while left > 0:
        blocks = b"".join(
            hashlib.sha256((counter + k).to_bytes(8, "big")).digest() for k in range(per_chunk)
        )
        counter += per_chunk
        piece = blocks[:left]
        left -= len(piece)
        yield piece


def deterministic_bytes(n: int) -> bytes:
    """Return the first ``n`` bytes of the test stream (see :func:`deterministic_chunks`)."""
    return b"".join(deterministic_chunks(n))


class Handler(BaseHTTPRequestHandler):
    """Routes of the pod's web service; HTTP/1.1 with Content-Length so keep-alive works."""

    protocol_version = "HTTP/1.1"
    server_version = "podweb/1"
    log_lock = threading.Lock()
    log_path: str | None = None

    def _client(self) -> str:
        host = str(self.client_address[0])
        if host.startswith("::ffff:"):
            host = host[len("::ffff:") :]
        return host

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _access(self, status: int) -> None:
        if not self.log_path:
            return
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"{self._client()} {self.command} {self.path} {status}\n")

    def log_message(self, format: str, *args: object) -> None:
        """Keep stderr quiet; the access log has what the tests need."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/hello":
            status = 200
            self._send(status, b"hello from web\n")
        elif path == "/whoami":
            status = 200
            self._send(status, (self._client() + "\n").encode())
        elif path.startswith("/bytes/") and path[len("/bytes/") :].isdigit():
            n = int(path[len("/bytes/") :])
            status = 200
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            for piece in deterministic_chunks(n):
                self.wfile.write(piece)
        elif path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            time.sleep(ms / 1000)
            status = 200
            self._send(status, f"slow {ms}\n".encode())
        else:
            status = 404
            self._send(status, b"not found\n")
        self._access(status)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(length) if length else b""

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/echo":
            status = 200
            self._send(status, body, "application/octet-stream")
        elif self.path == "/sha":
            status = 200
            self._send(status, f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode())
        else:
            status = 404
            self._send(status, b"not found\n")
        self._access(status)


class Server(ThreadingHTTPServer):
    """A threading server whose worker threads never keep the process alive."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Server6(Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def parse_listen(spec: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT``."""
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> None:
    """Bind every --listen address, say ``ready``, then serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, help="HOST:PORT or [V6]:PORT")
    parser.add_argument("--log", help="access log file")
    args = parser.parse_args(argv)
    Handler.log_path = args.log
    servers = []
    for spec in args.listen:
        host, port = parse_listen(spec)
        cls = Server6 if ":" in host else Server
        servers.append(cls((host, port), Handler))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
