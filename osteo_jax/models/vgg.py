"""VGG-style backbones (Flax Linen): the crop-based baselines of the paper's Table 8.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015: stages of 3 x 3 convolutions (stride 1, padding 1), each followed by a ReLU, and a
2 x 2 stride-2 max-pool closing every stage; stage i has ``width * min(2**i, 8)`` channels
(64, 128, 256, 512, 512 at ``width=64``). The baselines the paper compares with (Jang et al.,
Hsieh et al., Wang et al.) use VGG-16 on crops of the radiograph.

Two changes from the original, both so the model shares the ResNet backbones' interface
(``models/resnet.py``): the three fully connected layers are replaced by global average
pooling, so the features are ``[B, D]`` whatever the input size and the linear head of
``models/heads.py`` classifies them; and the pools pad ("SAME"), so inputs whose side is not a
multiple of 32 (24 px crops) still end at one pixel instead of zero. ``norm="group"`` puts a
GroupNorm after every (then bias-free) convolution, which lets a deep VGG train from scratch at
small batch sizes; ``norm="none"`` is the original (convolutions with biases).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from osteo_jax.config.choices import NORMS as CHOICE_NORMS

Dtype = Any
NORMS = CHOICE_NORMS
# depth -> convolutions per stage (Simonyan & Zisserman Table 1, configurations A, B, D, E).
VGG_DEPTHS = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_PAD3 = ((1, 1), (1, 1))


def vgg_features_dim(width: int, num_stages: int) -> int:
    """Pooled feature size D of a VGG: the last stage's ``width * min(2**(n - 1), 8)``."""
    return width * min(2 ** (num_stages - 1), 8)


class VGGStage(nn.Module):
    """``num_convs`` 3 x 3 convolutions (+ GroupNorm) + ReLU, then a 2 x 2 max-pool.

    Attributes:
      filters: output channels.
      num_convs: convolutions in the stage.
      norm: ``"group"`` or ``"none"``.
      norm_groups: GroupNorm groups (must divide ``filters``).
      dtype: computation dtype (parameters stay float32).
    """

    filters: int
    num_convs: int
    norm: str = "group"
    norm_groups: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, ceil(H / 2), ceil(W / 2), filters]``."""
        grouped = self.norm == "group"
        conv = functools.partial(
            nn.Conv,
            self.filters,
            (3, 3),
            padding=_PAD3,
            use_bias=not grouped,
            kernel_init=_CONV_INIT,
            dtype=self.dtype,
        )
        for j in range(self.num_convs):
            x = conv(name=f"conv{j + 1}")(x)
            if grouped:
                # Statistics in float32 (strict dtype promotion rejects flax's bf16 / f32 mix).
                norm = nn.GroupNorm(num_groups=self.norm_groups, name=f"norm{j + 1}")
                x = norm(x.astype(jnp.float32)).astype(self.dtype)
            x = nn.relu(x)
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class VGG(nn.Module):
    """VGG backbone: stages of 3 x 3 convolutions and max-pools, global average pooling.

    Parameter paths: ``stage{i}/conv{j}`` and, with GroupNorm, ``stage{i}/norm{j}``.

    Attributes:
      stage_sizes: convolutions per stage, e.g. ``(2, 2, 3, 3, 3)`` for VGG-16.
      width: channels of the first stage (64 in the original); stage i has
        ``width * min(2**i, 8)``.
      norm: ``"group"`` or ``"none"``.
      norm_groups: GroupNorm groups; must divide ``width``.
      dtype: computation dtype (``jnp.bfloat16`` for mixed precision; parameters stay float32).
    """

    stage_sizes: Sequence[int] = VGG_DEPTHS[16]
    width: int = 64
    norm: str = "group"
    norm_groups: int = 8
    dtype: Dtype = jnp.float32

    @property
    def features_dim(self) -> int:
        """Pooled feature size D (no init needed)."""
        return vgg_features_dim(self.width, len(self.stage_sizes))

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, Any]]:
        """Embeds an image batch.

        Args:
          x: ``[B, H, W, C]`` images (C = 1 for radiographs).

        Returns:
          ``(features, aux)``: float32 features ``[B, D]`` after global average pooling (the
          mean is taken in float32 whatever ``dtype``), and aux with ``stages``, the list of the
          stage outputs ``[B, ceil(H / 2**(i + 1)), ceil(W / 2**(i + 1)), width * min(2**i, 8)]``
          in ``dtype``.
        """
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "group" and self.width % self.norm_groups:
            raise ValueError(f"norm_groups={self.norm_groups} must divide width={self.width}")
        stages = []
        for i, n in enumerate(self.stage_sizes):
            x = VGGStage(
                self.width * min(2**i, 8),
                n,
                self.norm,
                self.norm_groups,
                self.dtype,
                name=f"stage{i + 1}",
            )(x)
            stages.append(x)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return features, {"stages": stages}


def make_vgg(depth: int, **kw: Any) -> VGG:
    """A VGG of the given depth (11, 13, 16, 19); ``kw`` sets the other fields.

    Raises:
      ValueError: for any other depth.
    """
    if depth not in VGG_DEPTHS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_DEPTHS)}, got {depth}")
    return VGG(stage_sizes=VGG_DEPTHS[depth], **kw)
