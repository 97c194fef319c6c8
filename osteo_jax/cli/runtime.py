"""What every JAX command does first: tune glibc's allocator, the compile cache, a runtime line.

Three calls, in this order, from :func:`osteo_jax.cli.main` after the arguments are parsed:

0. :func:`reexec_with_malloc_tunables` (the console script only): on Linux with glibc, a
   command started without ``GLIBC_TUNABLES`` in its environment replaces itself
   (``os.execve``, same process id, same arguments) by one with :data:`MALLOC_TUNABLES`. XLA on
   the CPU allocates and frees buffers of tens of megabytes at every step; glibc hands those to
   the kernel and takes them back, page by page (about 270,000 page faults a second in the
   demo's segmenter training, a third of its CPU time in the kernel). Kept in a heap with
   transparent huge pages, the same 140 training steps ran 64 s instead of 80 s, with
   bitwise-identical parameters. Set ``GLIBC_TUNABLES`` yourself (even to an empty string) to
   keep glibc's defaults.
1. :func:`configure_compile_cache` points XLA's persistent compilation cache at a folder
   (``--compile-cache DIR``, else ``$OSTEO_JAX_COMPILE_CACHE``, else
   ``~/.cache/osteo_jax/xla``; ``--no-compile-cache`` or ``OSTEO_JAX_COMPILE_CACHE=off``
   turns it off), so a second run of the same configuration loads its compiled steps instead
   of compiling them again (5-10 s per U-Net step on CPU, more on a GPU). It must come before
   the first compilation.
2. :func:`start` logs one line to stdout, ``backend=gpu devices=8 (NVIDIA H100) process 0/1``
   (and ``malloc=tuned`` under :data:`MALLOC_TUNABLES`), and warns on stderr when the machine
   shows a GPU or TPU but jax runs on the CPU (the CPU-only jaxlib of ``make demo`` /
   ``make test``), naming the extra that installs the plugin. It initialises the backend, so
   in a multi-process run it must come after ``jax.distributed.initialize``.

Only the standard library is imported at module level: ``osteo-jax --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "JAX_COMMANDS",
    "MALLOC_TUNABLES",
    "add_runtime_args",
    "compile_cache_dir",
    "configure_compile_cache",
    "gpu_visible",
    "malloc_tunables_env",
    "reexec_with_malloc_tunables",
    "start",
    "tpu_visible",
    "unused_accelerator",
]

# Subcommands that run JAX computations (the others only read and write files).
JAX_COMMANDS = frozenset(
    {
        "train-seg",
        "eval-seg",
        "segment",
        "pretrain",
        "train-cls",
        "evaluate",
        "demo",
        "predict",
        "screen",
        "run",
    }
)
# glibc malloc for XLA:CPU's large, short-lived buffers: never give memory back to the kernel
# (no trimming, no mmap'd chunks) and back the heap with transparent huge pages.
MALLOC_TUNABLES = (
    "glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=4294967296:glibc.malloc.mmap_max=0"
)
_TUNABLES_ENV = "GLIBC_TUNABLES"
CACHE_ENV = "OSTEO_JAX_COMPILE_CACHE"
_CACHE_OFF = ("", "0", "off", "none")
_DEFAULT_CACHE = Path("~/.cache/osteo_jax/xla")

logger = logging.getLogger("osteo_jax")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Adds ``--compile-cache DIR`` and ``--no-compile-cache`` to a JAX command's parser."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help=f"persistent XLA compilation cache (default ${CACHE_ENV}, else {_DEFAULT_CACHE})",
    )
    g.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile every function afresh (no persistent cache)",
    )


def compile_cache_dir(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> Path | None:
    """The compilation cache folder a command uses, or None when the cache is off.

    Args:
      args: the parsed arguments (``compile_cache`` / ``no_compile_cache`` if the command has
        them).
      environ: the environment (``OSTEO_JAX_COMPILE_CACHE``: a folder, or ``off``).

    Returns:
      ``--compile-cache``, else the environment's folder, else ``~/.cache/osteo_jax/xla``
      (user expanded); None with ``--no-compile-cache`` or ``OSTEO_JAX_COMPILE_CACHE=off``.
    """
    if getattr(args, "no_compile_cache", False):
        return None
    path = getattr(args, "compile_cache", None)
    if path is None and CACHE_ENV in environ:
        path = environ[CACHE_ENV]
        if path.strip().lower() in _CACHE_OFF:
            return None
    return Path(path if path is not None else _DEFAULT_CACHE).expanduser()


def configure_compile_cache(args: argparse.Namespace) -> Path | None:
    """Turns on jax's persistent compilation cache in :func:`compile_cache_dir` (if any).

    Every compilation is cached: jax's defaults skip programs compiled in under a second
    and, on some file systems, small entries, which would leave most CPU steps out.

    Returns:
      The cache folder, or None when the cache is off (jax's settings are then untouched).
    """
    path = compile_cache_dir(args)
    if path is None:
        return None
    import jax

    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def malloc_tunables_env(
    environ: Mapping[str, str], *, platform: str = sys.platform, libc: str | None = None
) -> dict[str, str] | None:
    """The environment to re-execute a command with, or None to keep this process.

    Args:
      environ: this process's environment.
      platform: ``sys.platform``.
      libc: the C library's name (default: ``platform.libc_ver()``'s, ``"glibc"`` on most
        Linux systems, ``""`` on musl).

    Returns:
      ``environ`` plus ``GLIBC_TUNABLES=`` :data:`MALLOC_TUNABLES` on Linux with glibc when
      ``GLIBC_TUNABLES`` is not set at all; None otherwise (another system, another C
      library, or tunables the user chose, which also stops a second re-execution).
    """
    if platform != "linux" or _TUNABLES_ENV in environ:
        return None
    if libc is None:
        import platform as platform_module

        libc = platform_module.libc_ver()[0]
    if libc != "glibc":
        return None
    return {**environ, _TUNABLES_ENV: MALLOC_TUNABLES}


def _console_program() -> bool:
    """Whether this process is the ``osteo-jax`` script or ``python -m osteo_jax.cli``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "osteo_jax.cli.__main__":
        return True
    return os.path.basename(getattr(main, "__file__", None) or "") == "osteo-jax"


def reexec_with_malloc_tunables() -> None:
    """Replaces this process by the same command under :data:`MALLOC_TUNABLES`, if needed.

    Only the ``osteo-jax`` script and ``python -m osteo_jax.cli`` re-execute (a program of
    one's own calling :func:`osteo_jax.cli.main`, e.g. read from standard input, would not run
    the same way twice). Returns when nothing is to be done (:func:`malloc_tunables_env` is
    None, or another program); otherwise ``os.execve`` does not return.
    """
    env = malloc_tunables_env(os.environ)
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv or not sys.executable or not _console_program():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def gpu_visible(dev: Path = Path("/dev")) -> bool:
    """Whether the system shows an NVIDIA GPU (``nvidia-smi`` on PATH or ``/dev/nvidia0``).

    Args:
      dev: the device folder (a stand-in in tests).
    """
    return shutil.which("nvidia-smi") is not None or (dev / "nvidia0").exists()


def tpu_visible(dev: Path = Path("/dev")) -> bool:
    """Whether the system shows a TPU (``/dev/accel*`` (v2-v4) or ``/dev/vfio/<n>`` (v5+)).

    Args:
      dev: the device folder (a stand-in in tests).
    """
    if any(dev.glob("accel*")):
        return True
    vfio = dev / "vfio"
    return vfio.is_dir() and any(p.name.isdigit() for p in vfio.iterdir())


def unused_accelerator(backend: str, *, gpu: bool, tpu: bool) -> str | None:
    """The warning for an accelerator the system shows but jax does not use, or None.

    Args:
      backend: ``jax.default_backend()``.
      gpu: a GPU is visible (:func:`gpu_visible`).
      tpu: a TPU is visible (:func:`tpu_visible`).

    Returns:
      One line naming the accelerator and the extra to install, when ``backend`` is ``"cpu"``
      and an accelerator is visible; else None.
    """
    if backend != "cpu":
        return None
    for seen, name, extra in ((tpu, "TPU", "tpu"), (gpu, "GPU", "cuda12")):
        if seen:
            return (
                f"a {name} is visible but jax runs on the CPU (the CPU-only jaxlib); install "
                f'the plugin with: .venv/bin/pip install -e ".[{extra}]"'
            )
    return None


class _ConsoleHandler(logging.Handler):
    """Information to ``sys.stdout``, warnings and errors to ``sys.stderr``.

    Information goes where the commands print their progress and results, so that a command
    failing on its input still writes exactly one line to stderr (its error). The streams are
    looked up per record, so redirections hold.
    """

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            print(self.format(record), file=stream, flush=True)
        except Exception:  # a logging handler must never raise
            self.handleError(record)


def _ensure_handler() -> None:
    """Gives the package logger one console handler at INFO, unless the caller set one."""
    if logger.handlers:
        return
    handler = _ConsoleHandler()
    handler.setFormatter(logging.Formatter("osteo-jax: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Our own handler only: the root logger (orbax / absl chatter) keeps its level.
    logger.propagate = False


def start() -> str:
    """Logs the backend and devices jax runs on; warns about an unused accelerator.

    Initialises jax's backend: in a multi-process run call it after
    ``jax.distributed.initialize``.

    Returns:
      The logged line, e.g. ``backend=cpu devices=1 (cpu) process 0/1``.
    """
    import jax

    _ensure_handler()
    devices = jax.devices()
    backend = jax.default_backend()
    line = (
        f"backend={backend} devices={len(devices)} ({devices[0].device_kind}) "
        f"process {jax.process_index()}/{jax.process_count()}"
    )
    if os.environ.get(_TUNABLES_ENV) == MALLOC_TUNABLES:
        line += " malloc=tuned"
    logger.info(line)
    warning = unused_accelerator(backend, gpu=gpu_visible(), tpu=tpu_visible())
    if warning is not None:
        logger.warning(warning)
    return line
