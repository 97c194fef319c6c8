"""The allowed values of every string field of the configs, and the one check that uses them.

Each config's ``__post_init__`` checks its fields here, so a misspelt value fails when the
config is built (or read from a file), naming the config, the field and the choices, before
any data is read or any output written. Values backed by a registry of builders (SSL methods
in ``losses/ssl_methods.py``, backbones in ``models/backbones.py``) are listed here too; a test
keeps each registry and its tuple equal.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

DTYPES = ("auto", "float32", "bfloat16")
SEG_FORMS = ("mixture", "mose", "unet")
DECODER_MODES = ("auto", "vmap", "scan")
OT_COSTS = ("iou", "ce")
OT_PLANS = ("sinkhorn", "mose")
KL_REDUCTIONS = ("sum", "mean")
SEGMENT_FRAMES = ("aligned", "box")
SEGMENT_BACKGROUNDS = ("zero", "keep")
SEGMENT_INTENSITIES = ("percentile", "stored")
SSL_METHODS = ("simclr", "vicreg", "supcon", "swav")
BACKBONE_ARCHS = ("resnet", "vgg")
RESNET_STEMS = ("imagenet", "small")
NORMS = ("group", "none")
CLS_MODES = ("probe", "finetune")
CLASS_WEIGHTS = (None, "balanced")
THRESHOLD_RULES = ("fixed", "youden", "f1")
AGGREGATES = ("mean", "logistic", "features")


def check_choice(config: Any, field: str, allowed: Collection) -> None:
    """Raises ``ValueError`` unless ``config.<field>`` is one of ``allowed``.

    The message names the config class, the field, the value and the choices, e.g.
    ``SSLConfig.method must be one of ('simclr', ...), got 'simclear'``.
    """
    value = getattr(config, field)
    if value not in allowed:
        raise ValueError(
            f"{type(config).__name__}.{field} must be one of {tuple(allowed)}, got {value!r}"
        )


def check_positive(config: Any, *fields: str) -> None:
    """Raises ``ValueError`` unless every named field of ``config`` is > 0."""
    for field in fields:
        value = getattr(config, field)
        if not value > 0:
            raise ValueError(f"{type(config).__name__}.{field} must be > 0, got {value!r}")
