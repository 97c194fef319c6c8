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

__all__ = [
    "BACKBONES",
    "GREY_QUANTILES",
    "GreyLevels",
    "compute_dtype",
    "grey_level_features",
    "make_backbone",
]

# Percentiles of a segment's pixels that GreyLevels appends, after their mean.
GREY_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

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


def grey_level_features(x: jnp.ndarray) -> jnp.ndarray:
    """``[B, 1 + len(GREY_QUANTILES)]`` float32: each image's mean grey level, then its percentiles.

    Args:
      x: ``[B, H, W, C]`` images (any float dtype; the statistics are taken in float32).
    """
    flat = x.astype(jnp.float32).reshape(x.shape[0], -1)
    q = jnp.quantile(flat, jnp.asarray(GREY_QUANTILES, jnp.float32), axis=1)
    return jnp.concatenate([jnp.mean(flat, axis=1, keepdims=True), q.T], axis=1)


class GreyLevels(nn.Module):
    """A backbone whose pooled features end with the input's grey-level statistics.

    GroupNorm after bias-free convolutions makes a CNN's features blind to a brightness factor:
    ``backbone(c * x)`` equals ``backbone(x)`` up to the norm's epsilon. A bone's density scales
    its grey levels close to multiplicatively, so that backbone cannot read density from
    stored-scale segments. This wrapper appends :func:`grey_level_features` (parameter-free), so
    the linear head sees the level beside the texture. The parameters are the wrapped
    backbone's, at the same paths (``nn.share_scope``): a plain backbone's checkpoint loads.

    Attributes:
      backbone: the wrapped feature extractor.
    """

    backbone: nn.Module

    def setup(self):
        """Give the wrapped backbone this module's scope (its parameters keep their paths)."""
        nn.share_scope(self, self.backbone)

    @property
    def features_dim(self) -> int:
        """The backbone's D plus ``1 + len(GREY_QUANTILES)``."""
        return self.backbone.features_dim + 1 + len(GREY_QUANTILES)

    def __call__(self, x: jnp.ndarray):
        """``[B, H, W, C]`` -> ``(features [B, D + 6], aux)``: the backbone's, then the levels."""
        features, aux = self.backbone(x)
        return jnp.concatenate([features, grey_level_features(x)], axis=1), aux


def make_backbone(cfg: BackboneConfig) -> nn.Module:
    """The backbone of ``cfg`` (GroupNorm with 8 groups, or fewer for narrow widths).

    Wrapped in :class:`GreyLevels` when ``cfg.grey_levels``.

    Raises:
      ValueError: an unregistered ``cfg.arch`` or a depth the architecture does not have.
    """
    if cfg.arch not in BACKBONES:
        raise ValueError(f"backbone arch must be one of {tuple(BACKBONES)}, got {cfg.arch!r}")
    backbone = BACKBONES[cfg.arch](cfg)
    return GreyLevels(backbone) if cfg.grey_levels else backbone
