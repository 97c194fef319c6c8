"""What every JAX command does before its work: the compilation cache and a runtime line.

Two calls, in this order, from :func:`osteo_jax.cli.main` after the arguments are parsed:

1. :func:`configure_compile_cache` points XLA's persistent compilation cache at a folder
   (``--compile-cache DIR``, else ``$OSTEO_JAX_COMPILE_CACHE``, else
   ``~/.cache/osteo_jax/xla``; ``--no-compile-cache`` or ``OSTEO_JAX_COMPILE_CACHE=off``
   turns it off), so a second run of the same configuration loads its compiled steps instead
   of compiling them again (5-10 s per U-Net step on CPU, more on a GPU). It must come before
   the first compilation.
2. :func:`start` logs one line to stdout, ``backend=gpu devices=8 (NVIDIA H100) process 0/1``,
   and warns on stderr when the machine shows a GPU or TPU but jax runs on the CPU (the
   CPU-only jaxlib of ``make demo`` / ``make test``), naming the extra that installs the
   plugin. It initialises the backend, so in a multi-process run it must come after
   ``jax.distributed.initialize``.

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
    "add_runtime_args",
    "compile_cache_dir",
    "configure_compile_cache",
    "gpu_visible",
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
    logger.info(line)
    warning = unused_accelerator(backend, gpu=gpu_visible(), tpu=tpu_visible())
    if warning is not None:
        logger.warning(warning)
    return line
