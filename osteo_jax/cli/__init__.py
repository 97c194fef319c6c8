"""The ``osteo-jax`` command line.

Subcommands:
  synth    generate a synthetic cohort as a dataset folder
  preview  write a preview figure of a dataset folder
  demo     the whole pipeline on the synthetic paper cohort at demo size (``make demo``)
  train-seg / eval-seg      train and score the mixture segmenter
  segment                   cut the 7 bone segments of every image (segmenter, mask or raw)
  pretrain                  self-supervised pretraining of the ResNet on segments
  train-cls                 classifier (linear probe or fine-tune) on one split
  evaluate                  the paper's protocol (3 seeds or k folds), baselines, table, ROC
  build-tfds                build a dataset folder into a TFDS ArrayRecord dataset (no TF)
  validate                  check a dataset folder; the first problem is named with file and row
  predict                   classify new radiographs with a finished run, with intervals
  screen                    a folder of thousands of radiographs into a CSV: batched, resumable,
                            with quality-control flags
  run                       run (or resume) an experiment config end to end

One module per group: ``data`` (synth, preview, build-tfds, validate), ``train`` (the stages,
train-seg to evaluate), ``run`` (demo, predict, screen, run). Heavy imports happen inside each
subcommand so that ``osteo-jax --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from osteo_jax.cli import cluster, data, run, runtime, train

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``osteo-jax``."""
    parser = argparse.ArgumentParser(
        prog="osteo-jax",
        description="Osteoporosis screening from hand radiographs (research code; synthetic "
        "default data; no clinical use).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_synth(sub)
    data.add_preview(sub)
    train.add_train_seg(sub)
    train.add_eval_seg(sub)
    train.add_segment(sub)
    train.add_pretrain(sub)
    train.add_train_cls(sub)
    train.add_evaluate(sub)
    data.add_build_tfds(sub)
    data.add_validate(sub)
    run.add_demo(sub)
    run.add_predict(sub)
    run.add_screen(sub)
    run.add_run(sub)
    for name in sorted(runtime.JAX_COMMANDS):
        runtime.add_runtime_args(sub.choices[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``osteo-jax`` console script.

    Errors never end in a raw traceback: an error of the input, the configuration, the output
    folder or the file system prints one line ``osteo-jax <command>: error: <file>: <problem>``
    and returns 2; Ctrl-C returns 130; anything else is a bug: one line names the exception
    and the file holding the full traceback (inside the output folder if it is a folder of
    this command, else a temporary file), and the code is 1.

    A JAX command run as the console script (``argv`` None) first re-executes itself with
    glibc's allocator tuned for XLA's buffers (the same numbers, less time in the kernel:
    :func:`osteo_jax.cli.runtime.reexec_with_malloc_tunables`), then turns on the persistent
    compilation cache, joins its multi-process run if it is one
    (:mod:`osteo_jax.cli.cluster`), and logs its backend and devices
    (:mod:`osteo_jax.cli.runtime`).
    """
    args = build_parser().parse_args(argv)
    if argv is None and args.command in runtime.JAX_COMMANDS:
        runtime.reexec_with_malloc_tunables()  # returns only if nothing is to be done
    try:
        if args.command in runtime.JAX_COMMANDS:
            runtime.configure_compile_cache(args)  # before the first compilation
            if hasattr(args, "coordinator"):  # a training command: join its processes first
                cluster.init_cluster(args)
            runtime.start()  # initialises the backend (after jax.distributed.initialize)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"osteo-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every error becomes one line
        return _report(args, e)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report(args: argparse.Namespace, e: Exception) -> int:
    """Prints ``e`` as one line; returns the exit code (2 user error, 1 bug)."""
    if isinstance(e, (ValueError, FloatingPointError)):  # DatasetError, configs, folders
        message = str(e)
    elif isinstance(e, OSError):
        names = [str(f) for f in (e.filename, e.filename2) if f is not None]
        message = ": ".join([*names, e.strerror or str(e)])
    else:
        path = _write_traceback(args)
        print(
            f"osteo-jax {args.command}: internal error (a bug in osteo-jax, please report it): "
            f"{type(e).__name__}: {_one_line(str(e))}; full traceback in {path}",
            file=sys.stderr,
        )
        return 1
    print(f"osteo-jax {args.command}: error: {_one_line(message)}", file=sys.stderr)
    return 2


def _write_traceback(args: argparse.Namespace) -> str:
    """Writes the current exception's traceback; returns where."""
    import tempfile
    import traceback
    from pathlib import Path

    from osteo_jax.data.outdir import MARKER

    text = f"osteo-jax {args.command}\n{traceback.format_exc()}"
    out = getattr(args, "out", None)
    if out and (Path(out) / MARKER).is_file():
        path = Path(out) / "osteo-jax-traceback.txt"
        try:
            path.write_text(text)
            return str(path)
        except OSError:
            pass  # the run folder is not writable: the traceback goes to a temp file below
    fd, name = tempfile.mkstemp(prefix=f"osteo-jax-{args.command}-", suffix=".traceback.txt")
    with open(fd, "w") as f:
        f.write(text)
    return name
