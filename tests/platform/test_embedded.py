"""The embedded Redis: start, stop, join, orphan recovery, and data kept across a SIGKILL."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recommender.config import EmbeddedRedisSettings
from recommender.platform.embedded import EmbeddedRedis, redis_server_binary, search_module_path
from recommender.platform.errors import StartupError


def embedded(data_dir: Path, **overrides: str) -> EmbeddedRedis:
    return EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(data_dir), **overrides))


def client_for(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(server.socket))


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_start_serves_search_and_close_stops_the_process(tmp_path: Path) -> None:
    server = embedded(tmp_path / "data").start()
    pid = int(server.pid_file.read_text())
    client = client_for(server)
    assert client.execute_command("FT._LIST") == []
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    # A vector document's hash, embedding and all, is kept compact.
    client.hset("doc", mapping={"embedding": bytes(1536), "name": "Brass desk lamp"})
    assert client.object("encoding", "doc") == b"listpack"
    client.close()
    server.close()
    assert not pid_alive(pid)
    assert not server.socket.exists()


def test_a_supervised_server_that_dies_is_started_again_with_its_data(tmp_path: Path) -> None:
    server = embedded(tmp_path, appendfsync="always").start()
    server.supervise(interval=0.1)
    try:
        client_for(server).set("acknowledged", "write")
        first = int(server.pid_file.read_text())
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        again = first
        while again == first and time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, OSError, ValueError):
                if client_for(server).ping():
                    again = int(server.pid_file.read_text())
            time.sleep(0.1)
        assert again != first
        assert client_for(server).get("acknowledged") == b"write"
    finally:
        server.close()
    assert not pid_alive(again)  # closing stops it, and nothing starts it once more
    time.sleep(0.3)
    assert not server.socket.exists()


def test_a_supervised_servers_aof_rewrite_runs_at_the_lowest_cpu_priority(tmp_path: Path) -> None:
    server = embedded(tmp_path).start()
    server.supervise()
    try:
        client = client_for(server)
        client.mset({f"key{i}": i for i in range(30)})
        client.config_set("rdb-key-save-delay", 100_000)  # µs per key: a 3 s rewrite
        client.bgrewriteaof()
        pid = int(server.pid_file.read_text())
        children = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + 2.5
        niceness = None
        while niceness != 19 and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                niceness = os.getpriority(os.PRIO_PROCESS, int(children.read_text().split()[0]))
            time.sleep(0.02)
        assert niceness == 19
        # The server itself is left alone.
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
        client.close()
    finally:
        server.close()


def test_second_instance_joins_instead_of_starting_another(tmp_path: Path) -> None:
    with embedded(tmp_path) as owner:
        joiner = embedded(tmp_path).start()
        assert (owner.owner, joiner.owner) == (True, False)
        assert joiner.url == owner.url
        joiner.close()
        assert client_for(owner).ping()  # closing a joiner leaves the owner's server running


def test_orphaned_server_is_replaced_and_its_data_kept(tmp_path: Path) -> None:
    settings = EmbeddedRedisSettings(data_dir=str(tmp_path))
    with embedded(tmp_path) as first:
        client_for(first).set("kept", "yes")
    # An orphan: a server on this data directory whose owner is gone (no lock held).
    orphan = subprocess.Popen(
        [
            str(redis_server_binary(settings)),
            "--port", "0", "--unixsocket", str(first.socket), "--dir", str(tmp_path),
            "--pidfile", str(first.pid_file), "--appendonly", "yes",
            "--loadmodule", str(search_module_path(settings)),
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not first.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with embedded(tmp_path) as second:
            assert orphan.wait(timeout=10) == 0  # shut down cleanly, not killed
            assert client_for(second).get("kept") == b"yes"
    finally:
        orphan.kill()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server_binary": "/nonexistent/redis-server"}, "redis-server binary not found"),
        ({"search_module": "/nonexistent/redisearch.so"}, "RediSearch module not found"),
    ],
)
def test_missing_binary_or_module_is_refused(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(StartupError, match=message):
        embedded(tmp_path, **overrides).start()


def test_unwritable_data_directory_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StartupError, match="is not writable"):
        embedded(blocker / "data").start()


def test_module_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    not_a_module = tmp_path / "fake.so"
    not_a_module.write_text("not a shared object")
    with pytest.raises(StartupError, match="exited with code"):
        embedded(tmp_path / "data", search_module=str(not_a_module)).start()


# -- the service as a process -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(
    port: int, process: subprocess.Popen[bytes], timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited before it was ready"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                body: dict[str, object] = json.loads(r.read())
                return body
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the service did not become ready")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, int, list[subprocess.Popen[bytes]]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield tmp_path / "data", free_port(), processes
    for process in processes:
        process.kill()
        process.wait()


def start_service(data_dir: Path, port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "recommender", "serve", "--port", str(port),
         "--data-dir", str(data_dir)],
        env={**os.environ, "RECOMMENDER_LOGGING__FORMAT": "json",
             "RECOMMENDER_SERVER__WORKERS": str(workers)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def listening_sockets(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on the port (state 0A in /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            found.add(fields[9])
    return found


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[len("socket:[") : -1])
    return found


def test_a_taken_port_fails_start_up_with_workers(
    serve: tuple[Path, int, list[subprocess.Popen[bytes]]],
) -> None:
    data_dir, port, processes = serve
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        service = start_service(data_dir, port, workers=2)
        processes.append(service)
        assert service.wait(timeout=60) == 2  # a one-line error, Redis stopped again
    assert not (data_dir / "redis.pid").exists()


def test_service_survives_sigkill_with_data_and_leaves_no_redis_behind(
    serve: tuple[Path, int, list[subprocess.Popen[bytes]]],
) -> None:
    data_dir, port, processes = serve
    service = start_service(data_dir, port)
    processes.append(service)
    assert wait_ready(port, service)["status"] == "ok"
    first_redis = int((data_dir / "redis.pid").read_text())
    workers = children(service.pid) - {first_redis}
    server = EmbeddedRedis(EmbeddedRedisSettings(data_dir=str(data_dir)))
    redis.Redis(unix_socket_path=str(server.socket)).set("acknowledged", "write")

    service.send_signal(signal.SIGKILL)
    service.wait()
    deadline = time.monotonic() + 30
    while any(map(pid_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers
    assert not any(map(pid_alive, workers))  # no worker outlives the supervisor
    restarted = start_service(data_dir, port)
    processes.append(restarted)
    assert wait_ready(port, restarted)["status"] == "ok"
    assert not pid_alive(first_redis)
    assert redis.Redis(unix_socket_path=str(server.socket)).get("acknowledged") == b"write"

    second_redis = int((data_dir / "redis.pid").read_text())
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=30) == 0
    assert not pid_alive(second_redis)
    assert not (data_dir / "redis.pid").exists()


def test_workers_share_one_redis_and_pool_their_metrics(
    serve: tuple[Path, int, list[subprocess.Popen[bytes]]],
) -> None:
    data_dir, port, processes = serve
    service = start_service(data_dir, port, workers=2)
    processes.append(service)
    assert wait_ready(port, service)["status"] == "ok"
    redis_pid = int((data_dir / "redis.pid").read_text())
    deadline = time.monotonic() + 30  # ready answers once one worker does: the other may start
    while len(listening_sockets(port)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(40):  # each on a new connection: both workers answer some
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/popular", timeout=5) as r:
            assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("recommender_requests_total{") and 'path="/api/v1/popular"' in line
    )
    assert counted == 40  # whichever worker answered the scrape counts every worker's requests
    # Each worker listens on its own socket, so the kernel spreads connections between them.
    workers = children(service.pid) - {redis_pid}
    assert len(listening_sockets(port)) == 2
    assert listening_sockets(port) <= {i for pid in workers for i in socket_inodes(pid)}
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=30) == 0
    assert not pid_alive(redis_pid)
