"""Listening sockets of the server's workers: one per worker, so the kernel shares connections.

uvicorn hands every worker one shared listening socket. asyncio's accept loop takes every
connection queued on it at once, so the worker that wakes first takes a whole burst: at a fixed
rate over 1,000 new connections one worker was overloaded while the other idled. With one
SO_REUSEPORT socket per worker on the same address, the kernel spreads new connections evenly.
"""

import socket
from typing import Any


class WorkerSocket:
    """Stands in for the listening socket uvicorn passes a worker; unpickled in the worker (as
    each spawned worker, replacements too, receives it), it becomes that worker's own socket.

    The supervisor keeps one bound but not listening: it holds the address (a server without
    SO_REUSEPORT cannot take it) and fails start-up at once if the address is taken.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._held = reuse_port_socket(host, port)

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return reuse_port_socket, (self.host, self.port)

    def close(self) -> None:
        self._held.close()


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT; listening starts with the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
