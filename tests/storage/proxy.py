"""A loopback HTTP proxy in front of the S3 server that can fail chosen requests: an object store going down."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

Rule = Callable[[str, str], bool]
"""``rule(method, path)``: True to answer this request 503 instead of forwarding it."""

UNAVAILABLE = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code><Message>injected outage</Message></Error>'


class FaultProxy:
    """Forwards every request to ``upstream`` unless a rule says to answer 503 ServiceUnavailable."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.refused: list[tuple[str, str]] = []
        self._client = httpx.Client(timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if any(rule(self.command, self.path) for rule in proxy.rules):
                    proxy.refused.append((self.command, self.path))
                    self._answer(503, {"Content-Type": "application/xml"}, UNAVAILABLE)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive", "transfer-encoding")}
                answer = proxy._client.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                drop = ("connection", "keep-alive", "transfer-encoding", "content-encoding") + (() if self.command == "HEAD" else ("content-length",))
                self._answer(answer.status_code, {k: v for k, v in answer.headers.items() if k.lower() not in drop}, answer.content)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "content-length" not in {k.lower() for k in headers}:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
