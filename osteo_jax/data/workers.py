"""Worker processes that exit with their parent.

A pool's workers outlive a parent killed with SIGKILL (no ``atexit``, no pool shutdown) and
keep rendering into a folder nobody will publish. :func:`exit_with_parent`, run first in a
worker's initializer, ties the worker to its parent: on Linux the kernel sends it SIGKILL when
the parent dies (``prctl(PR_SET_PDEATHSIG)``), and everywhere a daemon thread polls
``os.getppid()`` as a fallback.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_parent", "init_child", "spawn_pool", "spawnable"]

_PR_SET_PDEATHSIG = 1


def _watch(parent_pid: int, interval_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Makes this process exit when process ``parent_pid`` (its parent) dies.

    Args:
      parent_pid: the parent's ``os.getpid()``, passed to the worker's initializer.
      interval_s: polling period of the fallback watcher.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: the polling watcher started below still ends the worker
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, interval_s), daemon=True).start()


def init_child(parent_pid: int, init, *args) -> None:
    """A pool ``initializer``: :func:`exit_with_parent`, then ``init(*args)``.

    Use as ``initializer=init_child, initargs=(os.getpid(), init, *args)``; ``init`` must be a
    module-level function (it is pickled for spawned workers).
    """
    exit_with_parent(parent_pid)
    if init is not None:
        init(*args)


def spawnable() -> bool:
    """Whether spawned workers can start here.

    A spawned worker re-imports the parent's ``__main__`` from its file. A program read from
    standard input (``python - <<EOF``) has the file ``<stdin>``, which the worker cannot
    import, and every task then fails with ``BrokenProcessPool``. Jupyter, ``python -c`` and
    script files are fine.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def spawn_pool(jobs: int):
    """A pool of ``jobs`` spawned worker processes that exit with this one.

    Spawned, not forked: a parent that has started JAX is multithreaded, and a forked child of
    it can deadlock. The workers run numpy / scipy work (no JAX); each costs ~1-2 s to start.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_child,
        initargs=(os.getpid(), None),
    )
