"""Calls in a child process: where they run, and that no child outlives its call or its parent."""

import asyncio
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from recommender.platform.processes import run_in_process

# A parent that starts a call lasting minutes, writes its child's pid to a file, and waits.
PARENT = """
import asyncio, multiprocessing, pathlib, sys, time
from recommender.platform.processes import run_in_process

async def main():
    call = asyncio.ensure_future(run_in_process(time.sleep, 600))
    while not multiprocessing.active_children():
        await asyncio.sleep(0.02)
    pathlib.Path(sys.argv[1]).write_text(str(multiprocessing.active_children()[0].pid))
    await call

asyncio.run(main())
"""


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ignores_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & 1 << (signal.SIGTERM - 1))
    return False


async def the_child() -> BaseProcess:
    """The child process of the call in flight, once it exists (bounded wait)."""
    for _ in range(1500):
        children = multiprocessing.active_children()
        if children:
            return children[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no child process within 30 s")


@pytest.mark.asyncio
async def test_the_call_runs_in_another_process_that_ends_with_it() -> None:
    assert await run_in_process(os.getpid) != os.getpid()
    for _ in range(500):  # the executor reaps the child just after the answer
        if not multiprocessing.active_children():
            break
        await asyncio.sleep(0.02)
    assert multiprocessing.active_children() == []


@pytest.mark.asyncio
async def test_cancelling_the_call_kills_the_child() -> None:
    call = asyncio.create_task(run_in_process(time.sleep, 600))
    child = await the_child()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The executor's own thread may reap the child first, and then join() here cannot see its
    # exit code: what must hold is that the 600 s sleeper is gone, and by SIGKILL if seen.
    for _ in range(1500):
        if not pid_alive(child.pid):
            break
        await asyncio.sleep(0.02)
    assert not pid_alive(child.pid)
    assert child.exitcode in (None, -signal.SIGKILL)


@pytest.mark.asyncio
async def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", PARENT, str(pid_file))
    for _ in range(3000):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.02)
    child = int(pid_file.read_text())
    try:
        for _ in range(1500):  # until the child set itself up (else it exits on seeing no parent)
            if ignores_sigterm(child):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # prctl comes right after the signal settings
        assert pid_alive(child)
        parent.kill()  # SIGKILL: the parent cannot kill its child itself
        await parent.wait()
        for _ in range(500):
            if not pid_alive(child):
                break
            await asyncio.sleep(0.02)
        assert not pid_alive(child)
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
