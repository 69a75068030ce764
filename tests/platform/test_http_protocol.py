"""The server's HTTP protocol sends each response's head and body in one write."""

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import uvicorn

from recommender.platform.http_protocol import (
    WriteCombiningHttpToolsProtocol,
    WriteCombiningTransport,
)


class RecordingTransport:
    """Passes everything to the real transport and records what is written."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


WRITES: list[bytes] = []


class RecordedProtocol(WriteCombiningHttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        recording: Any = RecordingTransport(transport, WRITES)
        super().connection_made(recording)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await asyncio.sleep(0)  # the next part comes in a later step of the loop
        await send({"type": "http.response.body", "body": b"two"})
        return
    status = 204 if scope["path"] == "/empty" else 200
    body = b"" if status == 204 else b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest_asyncio.fixture
async def port() -> AsyncIterator[int]:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()  # connections wait in the backlog until the server takes them
    server = uvicorn.Server(uvicorn.Config(app, http=RecordedProtocol, log_config=None))
    task = asyncio.create_task(server.serve(sockets=[listening]))
    yield listening.getsockname()[1]
    server.should_exit = True
    await task
    listening.close()


async def exchange(port: int, request: bytes, responses: int, until: bytes) -> bytes:
    """What the server answers on one connection, read until `responses` status lines came and
    it ends with `until`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    received = b""
    while received.count(b"HTTP/1.1 ") < responses or not received.endswith(until):
        chunk = await asyncio.wait_for(reader.read(65536), timeout=5)
        assert chunk, received
        received += chunk
    writer.close()
    return received


@pytest.mark.asyncio
async def test_a_response_head_and_body_leave_in_one_write(port: int) -> None:
    WRITES.clear()
    two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /empty HTTP/1.1\r\nHost: x\r\n\r\n"
    received = await exchange(port, two, responses=2, until=b"\r\n\r\n")  # on one connection
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'\r\n\r\n{"ok":true}HTTP/1.1 204 No Content\r\n' in received
    assert len(WRITES) == 2  # one per response, head and body together
    assert WRITES[0].startswith(b"HTTP/1.1 200 OK")
    assert WRITES[0].endswith(b'{"ok":true}')


@pytest.mark.asyncio
async def test_parts_written_in_later_steps_still_go_out(port: int) -> None:
    WRITES.clear()
    stream = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
    received = await exchange(port, stream, responses=1, until=b"0\r\n\r\n")
    assert received.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert len(WRITES) == 2  # the head with the first part, then the rest
    assert WRITES[0].endswith(b"3\r\none\r\n")


@pytest.mark.asyncio
async def test_close_sends_what_is_pending_first() -> None:
    class Fake:
        def __init__(self) -> None:
            self.calls: list[tuple[str, bytes]] = []
            self.closing = False

        def write(self, data: bytes) -> None:
            self.calls.append(("write", data))

        def close(self) -> None:
            self.calls.append(("close", b""))
            self.closing = True

        def is_closing(self) -> bool:
            return self.closing

    fake = Fake()
    transport = WriteCombiningTransport(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"head ")
    transport.write(b"body")
    transport.close()
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert fake.calls == [("write", b"head body"), ("close", b"")]
