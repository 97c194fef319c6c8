"""ResNet backbones (Flax Linen) for SSL pretraining and classification of bone segments.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the bottleneck block
strides in its 3 x 3 convolution ("ResNet v1.5", as torchvision and flax ``examples/imagenet``).
The paper uses ResNet-50 (``width=64``, ImageNet stem); our CPU default is narrower and keeps
the full resolution in the stem, since bone segments are only 32-128 px.

GroupNorm (Wu & He, ECCV 2018) replaces the paper's BatchNorm: the model is then a pure function
of one params pytree with no ``batch_stats`` collection, so SSL, linear probing and fine-tuning
share one state layout, behave identically in training and evaluation, and need no cross-device
statistics under sharding; it also removes BatchNorm's leak of information between the examples
of a batch, which contrastive losses can exploit (MoCo's "shuffling BN"). The cost: GroupNorm
trails BatchNorm slightly at large batch sizes, and BatchNorm-trained torchvision weights cannot
be loaded as they are. Scales and offsets are counted like BatchNorm's, so parameter counts equal
torchvision's (every convolution is bias-free, the projection shortcut included).

Convolutions start from He et al.'s fan-out normal init, as torchvision's ResNet does, and the
last norm scale of every residual branch starts at zero (Goyal et al., "Accurate, Large
Minibatch SGD", 2017): at initialisation each block computes ``relu(shortcut(x))``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from osteo_jax.config.choices import RESNET_STEMS

Dtype = Any
BLOCKS = ("basic", "bottleneck")
STEMS = RESNET_STEMS
# depth -> (blocks per stage, block type), He et al. Table 1.
DEPTHS = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}
# He et al. 2015 init as torchvision's ResNet (kaiming_normal_, fan_out, ReLU gain).
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Every convolution is bias-free: a norm follows each one.
_conv = functools.partial(nn.Conv, use_bias=False, kernel_init=_CONV_INIT)
_PAD3 = ((1, 1), (1, 1))  # torchvision's symmetric padding (flax "SAME" pads 0/1 at stride 2)


def _expansion(block: str) -> int:
    """Output channels of a block over its base channels: 1 (basic) or 4 (bottleneck)."""
    return 4 if block == "bottleneck" else 1


def resnet_features_dim(width: int, block: str) -> int:
    """Pooled feature size D of a ResNet: ``width * 8`` (basic) or ``width * 32`` (bottleneck)."""
    return width * 8 * _expansion(block)


def _group_norm(
    x: jnp.ndarray,
    groups: int,
    dtype: Dtype,
    name: str,
    scale_init: nn.initializers.Initializer = nn.initializers.ones,
) -> jnp.ndarray:
    """GroupNorm computed in float32, returned in ``dtype``.

    Flax's GroupNorm mixes a bfloat16 input with its float32 statistics by implicit promotion,
    which ``jax_numpy_dtype_promotion="strict"`` rejects; its statistics are float32 anyway, so
    normalising a float32 copy gives the same numbers. Must be called inside a compact method.
    """
    y = nn.GroupNorm(num_groups=groups, scale_init=scale_init, name=name)(x.astype(jnp.float32))
    return y.astype(dtype)


class _Shortcut(nn.Module):
    """Identity, or 1 x 1 strided bias-free conv + GroupNorm when the shape changes."""

    features: int
    strides: int
    norm_groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, H / strides, W / strides, features]``."""
        if self.strides == 1 and x.shape[-1] == self.features:
            return x
        s = (self.strides, self.strides)
        x = _conv(self.features, (1, 1), s, dtype=self.dtype, name="proj_conv")(x)
        return _group_norm(x, self.norm_groups, self.dtype, "proj_norm")


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with a residual connection (ResNet-18/34).

    Attributes:
      filters: output channels.
      strides: spatial stride of the first convolution (and the shortcut).
      norm_groups: GroupNorm groups.
      zero_init: start the branch's last norm scale at zero, so the block begins as
        ``relu(shortcut(x))``.
      dtype: computation dtype (parameters stay float32).
    """

    filters: int
    strides: int = 1
    norm_groups: int = 8
    zero_init: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, H / strides, W / strides, filters]``."""
        g, dt = self.norm_groups, self.dtype
        s = (self.strides, self.strides)
        last_scale = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        y = _conv(self.filters, (3, 3), s, _PAD3, dtype=dt, name="conv1")(x)
        y = nn.relu(_group_norm(y, g, dt, "norm1"))
        y = _conv(self.filters, (3, 3), 1, _PAD3, dtype=dt, name="conv2")(y)
        y = _group_norm(y, g, dt, "norm2", last_scale)
        shortcut = _Shortcut(self.filters, self.strides, g, dt, name="shortcut")(x)
        return nn.relu(y + shortcut.astype(y.dtype))


class BottleneckBlock(nn.Module):
    """1 x 1 reduce, 3 x 3 (strided), 1 x 1 expand by 4, with a residual (ResNet-50+).

    Attributes:
      filters: bottleneck channels; the block outputs ``4 * filters``.
      strides: spatial stride of the 3 x 3 convolution (and the shortcut).
      norm_groups: GroupNorm groups.
      zero_init: start the branch's last norm scale at zero.
      dtype: computation dtype (parameters stay float32).
    """

    filters: int
    strides: int = 1
    norm_groups: int = 8
    zero_init: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, H / strides, W / strides, 4 * filters]``."""
        g, dt = self.norm_groups, self.dtype
        s = (self.strides, self.strides)
        out = 4 * self.filters
        last_scale = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        y = _conv(self.filters, (1, 1), dtype=dt, name="conv1")(x)
        y = nn.relu(_group_norm(y, g, dt, "norm1"))
        y = _conv(self.filters, (3, 3), s, _PAD3, dtype=dt, name="conv2")(y)
        y = nn.relu(_group_norm(y, g, dt, "norm2"))
        y = _conv(out, (1, 1), dtype=dt, name="conv3")(y)
        y = _group_norm(y, g, dt, "norm3", last_scale)
        shortcut = _Shortcut(out, self.strides, g, dt, name="shortcut")(x)
        return nn.relu(y + shortcut.astype(y.dtype))


class ResNetStage(nn.Module):
    """``num_blocks`` residual blocks; the first one strides and changes the channel count."""

    filters: int
    num_blocks: int
    strides: int
    block: str = "basic"
    norm_groups: int = 8
    zero_init: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, H / strides, W / strides, filters * expansion]``."""
        block_cls = BottleneckBlock if self.block == "bottleneck" else BasicBlock
        for j in range(self.num_blocks):
            x = block_cls(
                self.filters,
                self.strides if j == 0 else 1,
                self.norm_groups,
                self.zero_init,
                self.dtype,
                name=f"block{j + 1}",
            )(x)
        return x


class ResNet(nn.Module):
    """ResNet backbone: stem, four residual stages, global average pooling.

    Parameter paths: ``stem_conv``, ``stem_norm``, ``stage{i}/block{j}/{conv,norm}{k}`` and
    ``stage{i}/block{j}/shortcut/proj_{conv,norm}`` (i, j from 1).

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      block: ``"basic"`` (ResNet-18/34) | ``"bottleneck"`` (ResNet-50+).
      width: base channels; stage i has ``width * 2**i`` (times 4 for bottleneck outputs).
        64 in the paper's ResNet-50.
      stem: ``"imagenet"`` (7 x 7 stride-2 conv + 3 x 3 stride-2 max-pool, /4) | ``"small"``
        (3 x 3 stride-1 conv, no pool, for 32-128 px bone segments).
      norm_groups: GroupNorm groups; must divide ``width``.
      zero_init_residual: zero-init the last norm scale of each residual branch (Goyal et al.).
      dtype: computation dtype (``jnp.bfloat16`` for mixed precision; parameters stay float32).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    width: int = 32
    stem: str = "small"
    norm_groups: int = 8
    zero_init_residual: bool = True
    dtype: Dtype = jnp.float32

    @property
    def features_dim(self) -> int:
        """Pooled feature size D (no init needed)."""
        return resnet_features_dim(self.width, self.block)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, Any]]:
        """Embeds an image batch.

        Args:
          x: ``[B, H, W, C]`` images (C = 1 for radiographs).

        Returns:
          ``(features, aux)``: float32 features ``[B, D]`` after global average pooling (the mean
          is taken in float32 whatever ``dtype``), and aux with ``stages``, the list of the four
          stage outputs ``[B, H / (r * 2**i), W / (r * 2**i), width * 2**i * expansion]`` in
          ``dtype``, with r = 1 for the small stem and 4 for the ImageNet stem.
        """
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.width % self.norm_groups:
            raise ValueError(f"norm_groups={self.norm_groups} must divide width={self.width}")
        g, dt = self.norm_groups, self.dtype
        if self.stem == "imagenet":
            pad = ((3, 3), (3, 3))
            x = _conv(self.width, (7, 7), 2, pad, dtype=dt, name="stem_conv")(x)
        else:
            x = _conv(self.width, (3, 3), 1, _PAD3, dtype=dt, name="stem_conv")(x)
        x = nn.relu(_group_norm(x, g, dt, "stem_norm"))
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD3)
        stages = []
        for i, n in enumerate(self.stage_sizes):
            x = ResNetStage(
                self.width * 2**i,
                n,
                1 if i == 0 else 2,
                self.block,
                g,
                self.zero_init_residual,
                dt,
                name=f"stage{i + 1}",
            )(x)
            stages.append(x)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return features, {"stages": stages}


def make_resnet(depth: int, **kw: Any) -> ResNet:
    """A ResNet of the given depth (18, 34, 50, 101, 152); ``kw`` sets the other fields.

    Raises:
      ValueError: for any other depth.
    """
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
    stage_sizes, block = DEPTHS[depth]
    return ResNet(stage_sizes=stage_sizes, block=block, **kw)


def resnet18(**kw: Any) -> ResNet:
    """ResNet-18 (basic blocks, 2-2-2-2)."""
    return make_resnet(18, **kw)


def resnet34(**kw: Any) -> ResNet:
    """ResNet-34 (basic blocks, 3-4-6-3)."""
    return make_resnet(34, **kw)


def resnet50(**kw: Any) -> ResNet:
    """ResNet-50 (bottleneck blocks, 3-4-6-3), the paper's backbone at ``width=64``."""
    return make_resnet(50, **kw)
