"""The HTTP/1.1 protocol the service runs on: uvicorn's h11 protocol, answering broken requests in the contract's shape.

uvicorn answers a request it cannot parse (a bare CR in a header, a malformed request line) itself,
before any ASGI code runs, with a plain-text 400. This subclass writes the same 400 as
``{"error": "..."}`` JSON, so every error body the service ever sends has the contract's shape.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a JSON body for the 400 it sends on unparsable requests."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"malformed HTTP request ({msg.rstrip('.')}); send a valid HTTP/1.1 request"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        for data in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(data))
        self.transport.close()
