"""uvicorn's httptools protocol with the limits it lacks on a request head.

uvicorn closes an idle keep-alive connection (timeout_keep_alive) but waits for ever on a
connection that sends nothing, or a request head a byte at a time, and puts no bound on a head's
size with httptools (its `h11_max_incomplete_event_size` is for h11 only). Here a request head
must be complete within `header_timeout_s` of connecting or of its first byte (checked every
SWEEP_S; else 408, or a plain close when nothing came) and hold at most `max_header_bytes` (else
431); both close the connection. The body's own deadline is the app's (serving/body.py).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SWEEP_S = 0.1  # a late head is answered within header_timeout_s + SWEEP_S


def guarded(header_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` option (one per server: its heads share a timer).

    One timer serves every head in progress: every SWEEP_S it ends the heads past their deadline.
    A timer per request (armed at its first byte, cancelled at its last header) added its cost to
    every answer's latency."""
    heads: dict[GuardedHttpToolsProtocol, float] = {}  # connection in a head -> its deadline (loop time)
    sweeper: list[asyncio.TimerHandle | None] = [None]

    def sweep(loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for protocol, deadline in list(heads.items()):
            if now >= deadline:
                del heads[protocol]
                protocol._head_timeout()
        # Armed again only while heads are in progress: an idle server has no timer.
        sweeper[0] = loop.call_later(SWEEP_S, sweep, loop) if heads else None

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = True  # between a request's first byte (or the connection) and its complete head
        _head_bytes = 0  # the head's request line and headers, as parsed
        _raw_bytes = 0  # bytes received while in a head that is not complete yet
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._raw_bytes += len(data)
            super().data_received(data)
            # A head still incomplete after this chunk: every byte of it so far was head.
            if self._in_head and self._raw_bytes > max_header_bytes:
                self._refuse(b"431 Request Header Fields Too Large", f"over {max_header_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_head:  # the next request on a keep-alive connection
                self._in_head, self._head_bytes, self._raw_bytes = True, 0, 0
                self._arm()

        def on_url(self, url: bytes) -> None:
            self._head_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            if self._head_bytes > max_header_bytes:
                self._refuse(b"431 Request Header Fields Too Large", f"over {max_header_bytes} bytes")
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

        def _arm(self) -> None:
            heads[self] = self.loop.time() + header_timeout_s
            if sweeper[0] is None:
                sweeper[0] = self.loop.call_later(SWEEP_S, sweep, self.loop)

        def _disarm(self) -> None:
            heads.pop(self, None)

        def _head_timeout(self) -> None:
            if self._head_bytes:
                self._refuse(b"408 Request Timeout", f"not complete within {header_timeout_s:g} s")
            elif not self.transport.is_closing():
                self.transport.close()

        def _refuse(self, status: bytes, why: str) -> None:
            self._refused = True
            self._disarm()
            if self.transport.is_closing():
                return
            body = f'{{"error_code": "BAD_REQUEST", "message": "the request head was {why}"}}'.encode()
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            self.transport.close()

    return GuardedHttpToolsProtocol
