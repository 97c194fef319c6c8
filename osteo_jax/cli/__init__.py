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
  run                       run (or resume) an experiment config end to end

One module per group: ``data`` (synth, preview, build-tfds, validate), ``train`` (the stages,
train-seg to evaluate), ``run`` (demo, predict, run). Heavy imports happen inside each
subcommand so that ``osteo-jax --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

from osteo_jax.cli import data, run, train

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
    run.add_run(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``osteo-jax`` console script."""
    args = build_parser().parse_args(argv)
    from osteo_jax.data.errors import DatasetError

    try:
        return args.func(args)
    except (DatasetError, ValueError) as e:
        print(f"osteo-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
