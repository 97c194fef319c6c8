"""TensorBoard event files of a run, written beside ``metrics.jsonl`` (tensorboardX, no TF).

:func:`osteo_jax.train.runner.run` hands every line it appends to ``metrics.jsonl`` to a
:class:`TensorBoardLog` too, so ``tensorboard --logdir runs/`` shows the same numbers: the
training metrics under ``train/`` (loss terms, gradient norm, ``train/lr`` the learning rate of
the step), the validation metrics under ``val/``, and the router's mean weight per expert
(``expert_alpha_<k>``) under ``alpha/`` in one section. The x axis is the step, counted as in
``metrics.jsonl`` (steps done).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

__all__ = ["TENSORBOARD_DIR", "TensorBoardLog", "scalar_tags"]

TENSORBOARD_DIR = "tensorboard"
# Keys of a metrics line that locate it rather than measure anything.
_INDEX_KEYS = ("step", "epoch", "split")
_EXPERT_PREFIX = "expert_alpha_"


def scalar_tags(line: dict) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` line, by tag.

    Args:
      line: ``{"step", "epoch", ["split"], <metric>: value, ...}``: a training line (no
        ``split``, or ``"train"``; validation metrics joined as ``val_<name>``) or a
        validation line (``"split": "val"``).

    Returns:
      ``{"train/loss": ..., "val/ged": ..., "alpha/expert_0": ..., ...}`` of every numeric
      value (booleans, strings and lists are left out).
    """
    split = line.get("split", "train")
    tags = {}
    for key, value in line.items():
        if key in _INDEX_KEYS or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if key.startswith(_EXPERT_PREFIX):
            tag = f"alpha/expert_{key[len(_EXPERT_PREFIX) :]}"
        elif split == "train" and key.startswith("val_"):
            tag = f"val/{key[len('val_') :]}"
        else:
            tag = f"{split}/{key}"
        tags[tag] = float(value)
    return tags


class TensorBoardLog:
    """A tensorboardX writer under ``RUN/tensorboard`` fed the lines of ``metrics.jsonl``.

    A resumed run adds a new event file to the same folder; TensorBoard merges them by step.
    """

    def __init__(self, run_dir: str | os.PathLike):
        from tensorboardX import SummaryWriter

        self.logdir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(logdir=str(self.logdir))

    def write(self, line: dict) -> None:
        """Adds the scalars of one metrics line (:func:`scalar_tags`) at its ``step``."""
        for tag, value in scalar_tags(line).items():
            self.writer.add_scalar(tag, value, global_step=int(line["step"]))

    def flush(self) -> None:
        """Writes pending events to disk."""
        self.writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self.writer.close()
