"""A command's heavy stage in a fresh Python process.

One process that builds data, trains and evaluates keeps memory from stage to stage
(models, caches, allocator arenas): the main job peaked at 4.4 GB in one process
against 3.5 GB for its largest stage alone. A stage in its own process hands all of it
back when it ends, so the peak is the largest stage's.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import resource
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..errors import RepbendError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


# prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def _start_child(level: int, parent: int) -> None:
    """In the stage's process: the parent's log level, and on Linux a SIGTERM when the
    parent dies, however it dies (a killed `repbend run` would else leave its stage running,
    still writing into the run folder)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the signal was asked for
            os.kill(os.getpid(), signal.SIGTERM)


def in_fresh_process(stage: str, function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a new process; its (picklable) result or its
    exception comes back. ``spawn``, not ``fork``: a forked child inherits the parent's
    OpenMP thread pool state, which can deadlock torch; it costs one import of the
    package (about 4 s)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=_start_child,
                             initargs=(logging.getLogger().level, os.getpid())) as pool:
        try:
            return pool.submit(function, *args, **kwargs).result()
        except BrokenProcessPool as error:
            raise RepbendError(f"the {stage} process died before it finished (killed, or out of memory?); "
                               "finished work is kept: run the command again to resume") from error


def run_stage(isolate: bool, stage: str, function, *args, **kwargs):
    """``function(*args, **kwargs)``, in a fresh process when ``isolate``."""
    if isolate:
        return in_fresh_process(stage, function, *args, **kwargs)
    return function(*args, **kwargs)


def peak_memory_gb() -> float:
    """Peak resident memory of this process and of the largest finished child process
    (Linux reports kilobytes)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20
