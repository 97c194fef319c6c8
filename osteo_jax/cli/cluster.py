"""The multi-process flags of the training commands: ``--coordinator``, ``--num-processes``, ...

``train-seg``, ``pretrain``, ``train-cls`` and ``run`` take them; without them a command joins
a multi-process run only when it is launched inside one (SLURM, Open MPI, a TPU pod:
:func:`osteo_jax.train.distributed.initialize`), and is a single process otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_cluster_args", "init_cluster"]


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Adds the ``jax.distributed`` flags to the subcommand parser ``p``."""
    g = p.add_argument_group(
        "multi-process training",
        "all three flags, or none (then SLURM / Open MPI / TPU-pod environments are detected); "
        "every process gets the same command and a folder all of them see",
    )
    g.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="process 0's address and a port"
    )
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    g.add_argument("--process-id", type=int, default=None, help="this process's index (0 first)")


def init_cluster(args: argparse.Namespace) -> bool:
    """Joins the multi-process run ``args`` names (or the environment's); call before any jax work.

    On every process but process 0, standard output is silenced from here on: the result
    lines, like the logs and progress bars, come from process 0 only (errors still reach
    standard error).

    Returns:
      Whether this is one process of several.
    """
    from osteo_jax.train import distributed

    joined = distributed.initialize(
        getattr(args, "coordinator", None),
        getattr(args, "num_processes", None),
        getattr(args, "process_id", None),
    )
    if joined and not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the process)
    return joined
