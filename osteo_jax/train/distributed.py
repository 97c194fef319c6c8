"""Multi-process training with ``jax.distributed``: start-up, process roles, global arrays.

Every training command runs unchanged under N processes (one per host, or several on one
host): :func:`initialize` joins them (explicit ``coordinator``/``num_processes``/
``process_id``, else the cluster's environment: SLURM, Open MPI, a TPU pod; a single process
otherwise, where everything here is a no-op). After it, ``jax.devices()`` lists every
process's devices, the training mesh spans them all, and each process

* reads only its block of every global batch (:func:`data_shard`: rows
  ``[i B / n, (i + 1) B / n)`` of global batch ``b``, so the batches, and with them the
  parameters, do not depend on the process count),
* holds the replicated state as global arrays built from the same host values on every
  process (:func:`place`) and brings them back with :func:`to_host`,
* writes logs, progress bars, reports and run-folder files only if it is process 0
  (:func:`is_main`, :func:`on_main`, :func:`claim_shared_dir`); checkpoints are written by
  orbax with every process taking part, and decisions that lead to a collective use process
  0's values (:func:`from_main`).

On CPU the processes talk through gloo collectives (``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from osteo_jax.data.outdir import OutputDir, check_dir, claim_dir

__all__ = [
    "barrier",
    "claim_shared_dir",
    "cluster_env",
    "data_shard",
    "from_main",
    "global_batch",
    "initialize",
    "is_main",
    "on_main",
    "place",
    "to_host",
    "to_local",
]

T = TypeVar("T")


def cluster_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The multi-process launcher whose environment this process runs in, if any.

    Only launches of more than one process count: a one-task SLURM job or ``mpirun -n 1`` is
    a single process and needs no ``jax.distributed``.

    Args:
      environ: the environment (default ``os.environ``).

    Returns:
      ``"jax"`` (``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` > 1), ``"slurm"``,
      ``"ompi"``, ``"tpu"`` (a TPU pod slice of several workers) or None.
    """
    env = os.environ if environ is None else environ

    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    if env.get("JAX_COORDINATOR_ADDRESS") and count("JAX_NUM_PROCESSES") > 1:
        return "jax"
    if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and count("SLURM_NTASKS") > 1:
        return "slurm"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "ompi"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return "tpu"
    return None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Joins this process to a multi-process run, if it is one; call before any jax work.

    With ``coordinator``, ``num_processes`` and ``process_id`` all given (``num_processes``
    > 1), those; else with a cluster environment (:func:`cluster_env`), what
    ``jax.distributed.initialize`` detects from it; else nothing happens. On CPU the
    collectives go through gloo. One tiny collective right after start-up makes gloo connect
    every pair now: otherwise the first real collective can stall for about 30 s.

    Args:
      coordinator: ``host:port`` of process 0's coordinator service.
      num_processes: the number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      environ: the environment (default ``os.environ``), for tests.

    Returns:
      Whether ``jax.distributed`` was initialised (False: a single process).

    Raises:
      ValueError: only some of the three flags given, or a ``process_id`` out of range.
    """
    flags = (coordinator, num_processes, process_id)
    if any(f is not None for f in flags) and any(f is None for f in flags):
        raise ValueError(
            "--coordinator, --num-processes and --process-id go together (give all three, or "
            "none to use the cluster's environment)"
        )
    if num_processes is not None:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id {process_id} is outside [0, {num_processes}) processes")
        if num_processes == 1:
            return False
        kwargs = dict(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif cluster_env(environ) is not None:
        kwargs = {}
    else:
        return False
    if jax.distributed.is_initialized():
        return True
    # Must precede initialize: the CPU client is created with its collectives then.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    barrier("osteo_jax:initialize")
    return True


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def is_main() -> bool:
    """Whether this is process 0: the one that logs, shows progress and writes files."""
    return jax.process_index() == 0


def on_main(fn: Callable[..., T], *args, **kwargs) -> T | None:
    """``fn(*args, **kwargs)`` on process 0; None (and no call) on the others."""
    return fn(*args, **kwargs) if is_main() else None


def from_main(tree: T) -> T:
    """Process 0's value of ``tree`` (a pytree of numbers or arrays) on every process.

    For decisions every process must take alike, such as whether to save a checkpoint (a
    collective): per-process floating-point noise can never split them.
    """
    if jax.process_count() == 1:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.asarray(x) for x in leaves]
    # Sent as raw bytes: jax would narrow float64 to float32 (x64 off), changing the values.
    raw = [np.frombuffer(a.tobytes(), np.uint8) for a in arrays]
    raw = multihost_utils.broadcast_one_to_all(raw)
    out = [
        np.frombuffer(np.asarray(r).tobytes(), a.dtype).reshape(a.shape)
        for r, a in zip(raw, arrays, strict=True)
    ]
    out = [o.item() if isinstance(x, (int, float)) else o for o, x in zip(out, leaves, strict=True)]
    return jax.tree.unflatten(treedef, out)


def data_shard() -> tuple[int, int]:
    """``(process_index, process_count)``: which block of every global batch this process reads.

    The argument ``shard`` of :func:`osteo_jax.data.pipeline.make_loader`.
    """
    return jax.process_index(), jax.process_count()


def _host(x: Any) -> np.ndarray:
    """The full value of one leaf as a numpy array, on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def to_host(tree: T) -> T:
    """``tree`` with every array leaf as a numpy array holding its full (global) value.

    Replicated leaves are read from a local copy; sharded leaves of a multi-process run are
    gathered from every process (a collective: all processes must call it).
    """
    return jax.tree.map(_host, tree)


def to_local(tree: T) -> T:
    """``tree`` on this process's first device: a host-local copy of global arrays.

    Lets per-process code (validation, evaluation after training) run as in a single
    process; in a single process it returns ``tree`` unchanged.
    """
    if jax.process_count() == 1:
        return tree
    return jax.device_put(to_host(tree), jax.local_devices()[0])


def place(tree: T, sharding: jax.sharding.Sharding | Any) -> T:
    """Global arrays of ``tree``'s values (the same on every process) under ``sharding``.

    Args:
      tree: a pytree of arrays (jax or numpy), equal on every process.
      sharding: one sharding for every leaf, or a pytree of shardings (a prefix of ``tree``).

    Returns:
      ``tree`` as ``jax.Array`` leaves laid out by ``sharding``; each process fills only its
      own devices' shards from its host copy, so no value crosses processes.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(s: jax.sharding.Sharding, sub: Any) -> Any:
        def leaf(x: Any) -> jax.Array:
            host = _host(x)
            return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

        return jax.tree.map(leaf, sub)

    if isinstance(sharding, jax.sharding.Sharding):
        return put(sharding, tree)
    return jax.tree.map(put, sharding, tree, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def global_batch(local: T, sharding: jax.sharding.Sharding) -> T:
    """The global batch whose block :func:`data_shard` this process holds in ``local``.

    Args:
      local: this process's rows of every leaf (``[B / n, ...]`` of a global ``[B, ...]``).
      sharding: the batch's sharding over the global mesh (rows along ``"data"``).

    Returns:
      ``jax.Array`` leaves of the global shape, each process's rows on its own devices.
    """
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def claim_shared_dir(
    out: str | os.PathLike, command: str, *, overwrite: bool = False, check=None
) -> OutputDir:
    """:func:`~osteo_jax.data.outdir.claim_dir` for every process of a run, done by process 0.

    Every process checks ``out`` (and runs ``check(path)`` if given) before process 0 changes
    anything, so all of them fail alike; then process 0 alone claims it, and the others get an
    :class:`OutputDir` that never deletes anything. In a single process: ``claim_dir``.

    Args:
      out: the output folder (one that every process sees).
      command: the command's name, a key of :data:`osteo_jax.data.outdir.OUTPUTS`.
      overwrite: the user's ``--overwrite``.
      check: ``check(path)`` raises if the folder's contents forbid the run (e.g. another
        configuration); run by every process before anything is written.

    Returns:
      The claimed folder.

    Raises:
      OutputFolderError: as :func:`~osteo_jax.data.outdir.check_dir`.
    """
    if jax.process_count() == 1:
        return claim_dir(out, command, overwrite=overwrite)
    path = check_dir(out, command, overwrite=overwrite)
    if check is not None:
        check(path)
    barrier(f"osteo_jax:claim:{command}:{path}:checked")
    claim = on_main(claim_dir, out, command, overwrite=overwrite)
    barrier(f"osteo_jax:claim:{command}:{path}:claimed")
    return claim or OutputDir(path, command, None, not overwrite)
