"""Backbones by name: a registry ``arch -> builder`` of the feature extractors.

Every backbone maps ``[B, H, W, 1]`` images to ``(features [B, D], aux)`` and exposes
``features_dim``, so the SSL, classifier and feature-extraction code takes any of them. Adding
a backbone touches two files: its module with a builder ``BackboneConfig -> module``
registered here, and its name in ``config.choices.BACKBONE_ARCHS`` (checked by
``BackboneConfig.__post_init__``; a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from osteo_jax.config import BackboneConfig
from osteo_jax.config.precision import resolve_dtype
from osteo_jax.models.resnet import ResNet, make_resnet
from osteo_jax.models.vgg import VGG, make_vgg

__all__ = ["BACKBONES", "compute_dtype", "make_backbone"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> jnp.dtype:
    """The jnp dtype of a config's ``dtype`` field on the backend jax runs on.

    Args:
      name: ``"auto"`` (bfloat16 on a GPU / TPU, float32 on the CPU), ``"float32"`` or
        ``"bfloat16"``.

    Returns:
      ``jnp.float32`` or ``jnp.bfloat16``.

    Raises:
      ValueError: another name.
    """
    resolved = resolve_dtype(name)
    if resolved not in _DTYPES:
        raise ValueError(f"dtype must be one of {('auto', *_DTYPES)}, got {name!r}")
    return _DTYPES[resolved]


def _shared(cfg: BackboneConfig) -> dict:
    """Keywords every builder takes: width, GroupNorm groups (8, fewer if narrow), dtype."""
    return dict(width=cfg.width, norm_groups=min(8, cfg.width), dtype=compute_dtype(cfg.dtype))


def _resnet(cfg: BackboneConfig) -> ResNet:
    return make_resnet(cfg.depth, stem=cfg.stem, **_shared(cfg))


def _vgg(cfg: BackboneConfig) -> VGG:
    return make_vgg(cfg.depth, norm=cfg.norm, **_shared(cfg))


BACKBONES: dict[str, Callable[[BackboneConfig], nn.Module]] = {"resnet": _resnet, "vgg": _vgg}


def make_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone of ``cfg`` (GroupNorm with 8 groups, or fewer for narrow widths).

    Raises:
      ValueError: an unregistered ``cfg.arch`` or a depth the architecture does not have.
    """
    if cfg.arch not in BACKBONES:
        raise ValueError(f"backbone arch must be one of {tuple(BACKBONES)}, got {cfg.arch!r}")
    return BACKBONES[cfg.arch](cfg)
