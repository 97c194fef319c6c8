"""Heads on pooled backbone features: SSL projector, SwAV prototypes, linear classifier.

Each head returns a single array (no intermediates): they are leaves of the model, and the
backbone's aux dict already carries the feature maps.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_EPS = 1e-12  # as torch.nn.functional.normalize, which SwAV uses


def _l2_normalize(x: jnp.ndarray, axis: int) -> jnp.ndarray:
    """``x / max(||x||, eps)`` along ``axis``."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, jnp.asarray(_EPS * _EPS, x.dtype)))


class Projector(nn.Module):
    """MLP projector / expander: ``num_layers - 1`` x (Dense -> LayerNorm -> ReLU), then Dense.

    SimCLR (Chen et al. 2020) uses 2 layers, VICReg's expander (Bardes et al. 2022) 3. LayerNorm
    replaces their BatchNorm so the model keeps one stateless params pytree (see
    ``models/resnet.py``); hidden Dense layers drop their bias when a norm follows (its offset
    does the same job). No activation after the last layer.

    Attributes:
      hidden: width of the hidden layers.
      out: output size.
      num_layers: Dense layers in total (>= 1).
      norm: LayerNorm after each hidden Dense.
    """

    hidden: int
    out: int
    num_layers: int = 2
    norm: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, D]`` features -> ``[B, out]`` projections."""
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        for i in range(self.num_layers - 1):
            x = nn.Dense(self.hidden, use_bias=not self.norm, name=f"fc{i}")(x)
            if self.norm:
                x = nn.LayerNorm(name=f"norm{i}")(x)
            x = nn.relu(x)
        return nn.Dense(self.out, name=f"fc{self.num_layers - 1}")(x)


class Prototypes(nn.Module):
    """SwAV prototype layer (Caron et al. 2020): cosine scores against P learned prototypes.

    ``scores[b, p] = <x_b / ||x_b||, c_p / ||c_p||>``. SwAV re-normalises the prototype matrix
    after every optimizer step; normalising the kernel in the forward pass gives the same scores
    with no projection step in the train loop (the gradient is then tangent to the sphere).

    Attributes:
      num_prototypes: P.
    """

    num_prototypes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, D]`` embeddings -> ``[B, P]`` float32 scores in [-1, 1] (up to rounding)."""
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.num_prototypes)
        )
        x = _l2_normalize(x.astype(jnp.float32), axis=-1)
        return x @ _l2_normalize(kernel, axis=0)


class LinearClassifier(nn.Module):
    """Linear head on (frozen or fine-tuned) backbone features.

    Attributes:
      num_classes: output classes (2: osteoporosis or not).
    """

    num_classes: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """``[B, D]`` features -> ``[B, num_classes]`` logits."""
        return nn.Dense(self.num_classes, name="fc")(x)
