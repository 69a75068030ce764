"""The server configurations compared, how each is started and stopped, and their CPU time.

`serve` is the production path (`python -m recommender serve`: uvicorn with `server.workers`
processes, 2 by default, the embedded Redis as its child). The others serve the same app from
`recommender.app:create_app` (a factory that reads its settings from config.toml and
RECOMMENDER_* variables) through another server or worker count, against an embedded Redis
the benchmark starts on the same data directory. Every server binds 127.0.0.1 only.

CPU time is read from /proc/<pid>/stat (utime + stime, in clock ticks) for the server's whole
process tree (supervisor and workers) less the Redis process, whose pid is in DATA_DIR/redis.pid.
"""

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import httpx
import msgspec

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
SERVICE_ENV = {"RECOMMENDER_LOGGING__ACCESS_LOG": "false"}
# The flags `recommender serve` gives uvicorn.run, on uvicorn's command line.
UVICORN_FLAGS = (
    "--proxy-headers",
    "--forwarded-allow-ips",
    "127.0.0.1",
    "--timeout-graceful-shutdown",
    "10",
    "--no-access-log",
)
FACTORY = "recommender.app:create_app"
CEILING = "benchmarks.load.ceiling_app:app"


@dataclass(frozen=True, slots=True)
class ServerKind:
    """One way of serving the app; `service` and `ceiling` build the command lines."""

    name: str
    description: str
    module: str  # must be importable by the interpreter used, or the kind is skipped
    service: Callable[[str, int, Path], list[str]]
    ceiling: Callable[[str, int], list[str]]
    starts_redis: bool  # True: the service starts its embedded Redis itself


def _uvicorn(workers: int) -> ServerKind:
    def command(python: str, port: int, *target: str) -> list[str]:
        return [
            python,
            "-m",
            "uvicorn",
            *target,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            *UVICORN_FLAGS,
        ]

    return ServerKind(
        name=f"uvicorn-w{workers}",
        description=f"uvicorn --factory, {workers} worker processes, same flags as serve",
        module="uvicorn",
        service=lambda python, port, _: command(python, port, "--factory", FACTORY),
        ceiling=lambda python, port: command(python, port, CEILING),
        starts_redis=False,
    )


def _granian(workers: int) -> ServerKind:
    def command(python: str, port: int, *target: str) -> list[str]:
        return [
            python,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            *target,
        ]

    return ServerKind(
        name=f"granian-w{workers}",
        description=f"granian --interface asgi --factory, {workers} worker process(es)",
        module="granian",
        service=lambda python, port, _: command(python, port, "--factory", FACTORY),
        ceiling=lambda python, port: command(python, port, CEILING),
        starts_redis=False,
    )


def _serve(python: str, port: int, data_dir: Path) -> list[str]:
    return [python, "-m", "recommender", "serve", "--port", str(port), "--data-dir", str(data_dir)]


def _serve_ceiling(python: str, port: int) -> list[str]:
    return [python, "-m", "benchmarks.load.ceiling_app", "--port", str(port)]


SERVE = ServerKind(
    name="serve",
    description="python -m recommender serve (uvicorn, server.workers processes, default 2; "
    "embedded Redis child)",
    module="uvicorn",
    service=_serve,
    ceiling=_serve_ceiling,
    starts_redis=True,
)
KINDS = {kind.name: kind for kind in (SERVE, _uvicorn(1), _uvicorn(2), _granian(1), _granian(2))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def missing_module(python: str, module: str) -> str | None:
    """Why `python` cannot run `module`, or None when it can."""
    check = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, timeout=60, check=False
    )
    if check.returncode == 0:
        return None
    return f"{module} is not importable by {python}"


def process_ticks(pid: int) -> int | None:
    """utime + stime of one process in clock ticks; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is the state, field 3 of proc(5)
    return int(fields[11]) + int(fields[12])


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_ticks(root: int, exclude: set[int]) -> dict[int, int]:
    """Clock ticks of `root` and its descendants, less the `exclude` pids and their subtrees."""
    children = _children()
    ticks: dict[int, int] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in exclude:
            continue
        used = process_ticks(pid)
        if used is not None:
            ticks[pid] = used
        stack.extend(children.get(pid, []))
    return ticks


class MachineTicks(NamedTuple):
    """Clock ticks of all cores since boot (/proc/stat, line `cpu`)."""

    busy: int  # not idle
    stolen: int  # the hypervisor ran something else while these cores wanted to run (`steal`)


def machine_ticks() -> MachineTicks:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait, steal = fields[3], fields[4], fields[7]
    return MachineTicks(busy=sum(fields[:8]) - idle - iowait, stolen=steal)


class CpuSplit(msgspec.Struct, kw_only=True):
    """CPU used during one measurement, in % of one core (this machine has os.cpu_count())."""

    seconds: float
    service: float
    redis: float
    load_generator: float
    machine: float  # every process on the machine, the four above included
    steal: float = 0.0  # taken by the hypervisor from this machine's cores (a noisy host)

    def text(self) -> str:
        return (
            f"service {self.service:5.1f}%  redis {self.redis:5.1f}%  "
            f"load {self.load_generator:5.1f}%  machine {self.machine:5.1f}%  "
            f"stolen {self.steal:4.1f}%"
        )


class CpuMeter:
    """Snapshots the service tree, Redis and the whole machine; `split` gives the deltas."""

    def __init__(self, service_pid: int | None, redis_pid: int | None) -> None:
        self.service_pid = service_pid
        self.redis_pid = redis_pid
        self._started = time.monotonic()
        self._service = self._service_ticks()
        self._redis = self._redis_ticks()
        self._machine = machine_ticks()

    def _service_ticks(self) -> dict[int, int]:
        if self.service_pid is None:
            return {}
        return tree_ticks(self.service_pid, {self.redis_pid} if self.redis_pid else set())

    def _redis_ticks(self) -> int:
        return (process_ticks(self.redis_pid) or 0) if self.redis_pid else 0

    def split(self, load_generator_seconds: float) -> CpuSplit:
        seconds = time.monotonic() - self._started
        service = sum(
            used - self._service.get(pid, 0) for pid, used in self._service_ticks().items()
        )
        redis = self._redis_ticks() - self._redis
        machine = machine_ticks()

        def percent(ticks: float) -> float:
            return round(100.0 * ticks / TICKS_PER_SECOND / seconds, 1)

        return CpuSplit(
            seconds=round(seconds, 2),
            service=percent(service),
            redis=percent(redis),
            load_generator=round(100.0 * load_generator_seconds / seconds, 1),
            machine=percent(machine.busy - self._machine.busy),
            steal=percent(machine.stolen - self._machine.stolen),
        )


class Server:
    """A server subprocess (its own session), its log file, and a clean stop."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.command = command
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_problems(self) -> dict[str, int]:
        """Warnings and errors of the service's JSON log, counted by event and error text."""
        problems: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a server's own plain-text line
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                error = str(entry.get("error", ""))[:80]
                problems[f"{entry['level']} {entry.get('event')}: {error}".rstrip(": ")] += 1
        return dict(problems.most_common())

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def wait_answering(self, url: str, path: str, patience: float) -> None:
        """Until `GET path` answers 200; fails early, with the log's tail, if the server exits."""
        deadline = time.monotonic() + patience
        with httpx.Client(base_url=url, timeout=5.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.command[2:5]} exited with {self.process.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    if http.get(path).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"no 200 from {url}{path} within {patience:g}s:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (a graceful shutdown; `serve` then stops its Redis), SIGKILL after `grace`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=grace)
        self._log.close()
