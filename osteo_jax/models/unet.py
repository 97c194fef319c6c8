"""U-Net building blocks (Flax Linen): GroupNorm conv blocks, encoder, one decoder up-path.

GroupNorm rather than BatchNorm everywhere: the K decoders share one stacked parameter layout and
run under ``nn.vmap`` / ``nn.scan``, where batch statistics would be awkward and would couple the
experts; GroupNorm has no state and behaves identically in training and evaluation.

Upsampling is ``Dense(4 C)`` followed by a depth-to-space reshape: the same linear map as a
2 x 2 stride-2 transposed convolution, but with a backward pass XLA:CPU runs about twice as fast
(``ENVIRONMENT.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def _groups(features: int) -> int:
    """Largest group count <= 8 that divides the channel count."""
    for g in (8, 4, 2, 1):
        if features % g == 0:
            return g
    return 1


class ConvBlock(nn.Module):
    """Two (3 x 3 conv -> GroupNorm -> GELU) layers.

    Attributes:
      features: output channels.
      dtype: computation dtype (parameters stay float32).
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, H, W, features]``."""
        for i in range(2):
            x = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv{i}")(x)
            # Normalise in float32: flax's GroupNorm would mix a bfloat16 input with its float32
            # statistics by implicit promotion (rejected under strict dtype promotion).
            norm = nn.GroupNorm(num_groups=_groups(self.features), name=f"norm{i}")
            x = nn.gelu(norm(x.astype(jnp.float32)).astype(self.dtype))
        return x


def depth_to_space(x: jnp.ndarray, block: int = 2) -> jnp.ndarray:
    """``[B, H, W, b*b*C]`` -> ``[B, b*H, b*W, C]`` (channel blocks become pixel blocks)."""
    b, h, w, c = x.shape
    c_out = c // (block * block)
    x = x.reshape(b, h, w, block, block, c_out)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * block, w * block, c_out)


class Upsample(nn.Module):
    """2x upsampling by ``Dense(4 C)`` + depth-to-space (a learned 2 x 2 stride-2 deconvolution)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, H, W, Cin]`` -> ``[B, 2H, 2W, features]``."""
        x = nn.Dense(4 * self.features, dtype=self.dtype, name="proj")(x)
        return depth_to_space(x, 2)


class Encoder(nn.Module):
    """U-Net contracting path.

    Attributes:
      features: channels per level, finest first; the last level is the bottleneck.
      dtype: computation dtype.
    """

    features: Sequence[int] = (16, 32, 64, 128)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> tuple[tuple[jnp.ndarray, ...], jnp.ndarray]:
        """Encodes an image batch.

        Args:
          x: ``[B, H, W, Cin]`` with H and W divisible by ``2 ** (len(features) - 1)``.

        Returns:
          ``(skips, bottleneck)``: skip features per level except the last, finest first
          (``[B, H / 2**i, W / 2**i, features[i]]``), and the bottleneck
          ``[B, H / 2**L, W / 2**L, features[-1]]`` with L = len(features) - 1.
        """
        levels = len(self.features)
        factor = 2 ** (levels - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"image size {x.shape[1:3]} must be divisible by {factor} for {levels} levels"
            )
        skips = []
        for i, f in enumerate(self.features):
            x = ConvBlock(f, dtype=self.dtype, name=f"down{i}")(x)
            if i < levels - 1:
                skips.append(x)
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return tuple(skips), x


class Decoder(nn.Module):
    """U-Net expanding path with skip connections; returns the last feature map u.

    Attributes:
      features: the encoder's channels per level, finest first.
      dtype: computation dtype.
    """

    features: Sequence[int] = (16, 32, 64, 128)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, skips: Sequence[jnp.ndarray], bottleneck: jnp.ndarray) -> jnp.ndarray:
        """``skips`` (finest first) and ``bottleneck`` -> u ``[B, H, W, features[0]]``."""
        x = bottleneck
        for i in reversed(range(len(self.features) - 1)):
            f = self.features[i]
            x = Upsample(f, dtype=self.dtype, name=f"up{i}")(x)
            x = jnp.concatenate([x, skips[i].astype(x.dtype)], axis=-1)
            x = ConvBlock(f, dtype=self.dtype, name=f"dec{i}")(x)
        return x
