"""Calls that would hold the GIL for seconds run in a child process instead of a thread.

A thread running such a call stalls the event loop whenever it holds the GIL, and nothing can
stop it: shutdown has to wait until it is done. A child process shares neither the GIL nor the
loop, and is killed when the task awaiting it is cancelled.

Each call gets a fresh child, gone when the call ends, so the memory a big call used goes back
with it; the calls meant for it are rare and take far longer than the child's start-up. It is
spawned, never forked: a fork would copy the event loop, its threads and open Redis connections
into a child that cannot use them. Arguments and the result are pickled across: pass plain data.
"""

import asyncio
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

_Result = TypeVar("_Result")

_PR_SET_PDEATHSIG = 1


async def run_in_process(function: Callable[..., _Result], *args: Any) -> _Result:
    """`function(*args)` in a new child process; cancelling the caller kills the child.

    `function` must be importable by name (a module-level function) and `args` picklable.
    Call it from the event loop's thread: the child dies with the thread that started it.
    """
    executor = ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_serve_parent,
        initargs=(os.getpid(),),
    )
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
    except asyncio.CancelledError:
        # Python 3.14 has executor.kill_workers(); before it, only _processes holds the child.
        for process in list(executor._processes.values()):
            process.kill()
        raise
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _serve_parent(parent: int) -> None:
    """In the child, first: only its parent ends it, and it never outlives its parent."""
    # A terminal's Ctrl-C or a SIGTERM to the whole group reaches the parent too, which then
    # cancels the call and kills this process; the call must not fail on its own first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl: no signal would come
        os._exit(1)


def die_with_parent(signal_number: int) -> None:
    """The kernel sends this process `signal_number` when its parent dies (Linux; a plain
    system call, so also safe between fork and exec)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal_number)
