"""uvicorn's HTTP protocol (httptools), with each response's head and body sent in one write.

uvicorn writes a response's status line and headers when the app sends `http.response.start`,
and its body on `http.response.body`: two send() calls and, over loopback or a proxy's keep-alive
connection, two segments for the receiver to take in. The transport handed to the protocol here
gathers what is written within one step of the event loop and sends it once at the end of that
step, so a head and a body written together leave together.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class WriteCombiningTransport:
    """A transport whose writes within one event-loop step go out as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    # Called for every request: spelt out, as a lookup through __getattr__ costs more.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():  # the client went away meanwhile
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class WriteCombiningHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `WriteCombiningTransport` (`uvicorn.Config(http=)`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        combining: Any = WriteCombiningTransport(transport, self.loop)
        super().connection_made(combining)
