"""A shortcut for OCSP inside uvicorn's HTTP protocol (``kiban serve`` only).

The ASGI path costs a task, a scope and several awaits per request; an OCSP answer from the cache
is a dictionary lookup. :class:`OcspHttpProtocol` is uvicorn's httptools protocol with one change:
a ``POST /ocsp`` whose request bytes are a cache hit (see
:meth:`kiban.jpki.ocsp.OcspResponder.answer_fast`) is answered from the parser callbacks; every
other request, and every OCSP request that is not such a hit (rate limited, nonce, new serial,
unknown token…), goes through ASGI exactly as before. If uvicorn's internals are not what this
expects, it does nothing (plain uvicorn behaviour).
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kiban.jpki.ocsp import MAX_REQUEST_BYTES, MEDIA_RESPONSE, OcspResponder

LOG = logging.getLogger("kiban.jpki.ocsp")

# Set by `kiban serve` in each serving process.
RESPONDER: OcspResponder | None = None

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: " + MEDIA_RESPONSE.encode() + b"\r\ncache-control: no-store\r\n"
    b"x-content-type-options: nosniff\r\n"
)


class OcspHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering cached OCSP POSTs without the ASGI round trip."""

    _ocsp_body: bytes | None = None

    def on_headers_complete(self) -> None:
        self._ocsp_body = None
        if (
            RESPONDER is not None
            and self.url == b"/ocsp"
            and self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
        ):
            self._ocsp_body = b""  # held back: decided when the body is complete
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._ocsp_body is None:
            super().on_body(body)
            return
        self._ocsp_body += body
        if len(self._ocsp_body) > MAX_REQUEST_BYTES:
            self._fall_back()

    def on_message_complete(self) -> None:
        if self._ocsp_body is None:
            super().on_message_complete()
            return
        body = self._ocsp_body
        token = None
        for name, value in self.headers:
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                token = credential.strip() if scheme.lower() == "bearer" else ""
        assert RESPONDER is not None
        answer = RESPONDER.answer_fast(body, self.client[0] if self.client else "?", token)
        if answer is None:
            self._fall_back()
            super().on_message_complete()
            return
        self._ocsp_body = None
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        headers = b"".join(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers)
        if not keep_alive:
            headers += b"connection: close\r\n"
        self.transport.write(
            _HEAD + headers + b"content-length: " + str(len(answer)).encode() + b"\r\n\r\n" + answer
        )
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _fall_back(self) -> None:
        """Hand the held request to ASGI as if nothing had happened."""
        body, self._ocsp_body = self._ocsp_body or b"", None
        super().on_headers_complete()
        if self.cycle is not None and body:
            self.cycle.body += body
            self.cycle.message_event.set()


def protocol_path() -> str:
    """What ``uvicorn.run(http=...)`` takes (an import string, so workers can load it too)."""
    return f"{__name__}:{OcspHttpProtocol.__name__}"


def install(responder: Any) -> None:
    global RESPONDER
    RESPONDER = responder
