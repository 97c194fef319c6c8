"""The segmenter: a shared U-Net encoder, a router, and a mixture of K stochastic decoders.

Each expert k is a full U-Net up-path giving a feature map u_k, then S latents z ~ N(0, I)
modulate it per channel, ``u_bar = (W_s z) * (u_k + W_b z)`` (FiLM; ``W_s``, ``W_b`` affine, the
scale's bias starting at 1), and 1 x 1 convolution heads give class logits: K * S hypotheses
with weights ``alpha = pi_k / S`` where ``pi = softmax(router(GAP(bottleneck)))``
(Hwang et al. 2025; MoSE, Gao et al. ICLR 2023).

The K experts have ONE stacked parameter layout (leading axis K on every leaf, split init keys)
and two executions that give the same numbers from the same parameters:

* ``vmap``: ``nn.vmap`` over the expert axis, the natural choice on GPU/TPU;
* ``scan``: ``nn.scan(..., unroll=K)``, because XLA:CPU lowers vmapped convolutions to grouped
  convolutions that run ~14x slower than a loop (``ENVIRONMENT.md``).

``auto`` picks ``scan`` on CPU and ``vmap`` elsewhere. The decoder runs once per expert; only
the FiLM and the heads run per sample, and the first head layer is fused across the S samples
(``(s * (u + b)) @ W1 = u @ (s[:, None] * W1) + (s * b) @ W1``) so the full-resolution feature
map is read once for all samples.

Expert parallelism: ``expert_map`` (default None) is the hook through which the stacked decoders
are applied; :func:`osteo_jax.train.sharding.expert_map` runs them under ``jax.shard_map`` so
each device of an ``"expert"`` mesh axis computes its K / E decoders only (sharding the stacked
parameters alone is not enough: XLA all-gathers them for the grouped convolutions).

Ablation forms (``form``): ``"mixture"`` (the paper), ``"mose"`` (one shared decoder, K learned
Gaussian latent priors), ``"unet"`` (one deterministic decoder, K = S = 1, no latent).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from osteo_jax.config.choices import DECODER_MODES, SEG_FORMS
from osteo_jax.models.unet import Decoder, Encoder

Dtype = Any
FORMS = SEG_FORMS
MODES = DECODER_MODES
# Name of the stacked decoders' parameter subtree: every leaf under it has the leading K axis.
DECODERS = "decoders"

# ``fn(params, z, skips, bottleneck) -> logits``: the stacked decoders as a pure function of
# their parameters (leading axis K' on every leaf, K' read off ``z``'s first axis).
StackedFn = Callable[..., jnp.ndarray]
# ``expert_map(fn, params, z, skips, bottleneck) -> [K, B, S, H, W, C]``.
ExpertMap = Callable[..., jnp.ndarray]


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``scan`` on CPU, ``vmap`` on GPU/TPU; other modes pass through."""
    if mode not in MODES:
        raise ValueError(f"decoder mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "scan" if jax.default_backend() == "cpu" else "vmap"
    return mode


class StochasticHead(nn.Module):
    """FiLM by S latents and a two-layer 1 x 1 head, fused over the samples.

    Attributes:
      num_classes: C.
      hidden: channels of the hidden 1 x 1 layer.
      stochastic: apply the latent FiLM; if False the head is deterministic and S must be 1.
      dtype: computation dtype.
    """

    num_classes: int
    hidden: int = 32
    stochastic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
        """Hypothesis logits.

        Args:
          u: ``[B, H, W, F]`` decoder feature map.
          z: ``[B, S, L]`` latents.

        Returns:
          ``[B, S, H, W, C]`` logits.
        """
        b, h, w, f = u.shape
        s_count = z.shape[1]
        w1 = self.param("head1_kernel", nn.initializers.lecun_normal(), (f, self.hidden))
        b1 = self.param("head1_bias", nn.initializers.zeros, (self.hidden,))
        if self.stochastic:
            scale = nn.Dense(
                f,
                kernel_init=nn.initializers.normal(0.1),
                bias_init=nn.initializers.ones,
                name="film_scale",
            )(z)
            shift = nn.Dense(f, kernel_init=nn.initializers.normal(0.1), name="film_shift")(z)
        else:
            scale = jnp.ones((b, s_count, f), jnp.float32)
            shift = jnp.zeros((b, s_count, f), jnp.float32)
        # Per-sample first layer folded into one matmul that reads u once: [B, F, S*hidden].
        w_eff = (scale[..., None] * w1[None, None]).astype(self.dtype)  # [B, S, F, K]
        w_eff = w_eff.transpose(0, 2, 1, 3).reshape(b, f, s_count * self.hidden)
        bias = (scale * shift) @ w1 + b1[None, None]  # [B, S, K]
        hid = jnp.einsum("bpf,bfn->bpn", u.reshape(b, h * w, f).astype(self.dtype), w_eff)
        hid = hid.reshape(b, h * w, s_count, self.hidden) + bias[:, None].astype(self.dtype)
        hid = nn.gelu(hid)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head2")(hid)  # [B,HW,S,C]
        return logits.reshape(b, h, w, s_count, self.num_classes).transpose(0, 3, 1, 2, 4)


class Expert(nn.Module):
    """One decoder up-path and its stochastic head (the unit stacked K times).

    The ``(carry, z, skips, bottleneck) -> (carry, logits)`` signature serves both ``nn.scan``
    and ``nn.vmap`` so the two executions share parameter paths.
    """

    features: Sequence[int]
    num_classes: int
    head_hidden: int = 32
    stochastic: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, z, skips, bottleneck):
        """``z`` ``[B, S, L]`` -> ``(carry, [B, S, H, W, C])``."""
        u = Decoder(self.features, dtype=self.dtype, name="decoder")(skips, bottleneck)
        logits = StochasticHead(
            self.num_classes, self.head_hidden, self.stochastic, dtype=self.dtype, name="head"
        )(u, z)
        return carry, logits


def _stacked_experts(mode: str, k: int):
    """The :class:`Expert` class stacked ``k`` times by ``nn.vmap`` or unrolled ``nn.scan``."""
    if mode == "vmap":
        return nn.vmap(
            Expert,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(None, 0, None, None),
            out_axes=0,
            axis_size=k,
        )
    return nn.scan(
        Expert,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=k,
        unroll=k,
    )


class Router(nn.Module):
    """Mixture weights from the globally pooled bottleneck (MoSE: GAP -> 3 layers -> softmax)."""

    num_experts: int
    hidden: int = 64

    @nn.compact
    def __call__(self, bottleneck: jnp.ndarray) -> jnp.ndarray:
        """``[B, h, w, F]`` -> router logits ``[B, K]``."""
        x = jnp.mean(bottleneck.astype(jnp.float32), axis=(1, 2))
        x = nn.relu(nn.Dense(self.hidden, name="fc0")(x))
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(self.num_experts, use_bias=False, name="out")(x)


class Segmenter(nn.Module):
    """Mixture of stochastic U-Net decoders.

    Attributes:
      features: encoder/decoder channels per level, finest first.
      num_classes: C (8: background, radius, ulna, MC1-MC5).
      num_experts: K.
      num_samples: S latents per expert.
      latent_dim: L.
      form: ``"mixture"`` | ``"mose"`` | ``"unet"``.
      mode: ``"auto"`` | ``"vmap"`` | ``"scan"`` (mixture form only).
      head_hidden: channels of the hidden 1 x 1 head layer.
      router_hidden: router width.
      dtype: computation dtype (``jnp.bfloat16`` for mixed precision; parameters stay float32).
      expert_map: None (the decoders run here, as one stacked module), or a callable
        ``expert_map(fn, params, z, skips, bottleneck)`` returning ``fn(params, z, skips,
        bottleneck)`` (``[K, B, S, H, W, C]`` logits) computed however it likes, e.g. sharded
        over devices (:func:`osteo_jax.train.sharding.expert_map`). Mixture form only; not
        used at initialisation. Same parameters, same numbers.
    """

    features: Sequence[int] = (16, 32, 64, 128)
    num_classes: int = 8
    num_experts: int = 4
    num_samples: int = 4
    latent_dim: int = 6
    form: str = "mixture"
    mode: str = "auto"
    head_hidden: int = 32
    router_hidden: int = 64
    dtype: Dtype = jnp.float32
    expert_map: ExpertMap | None = None

    @property
    def num_hypotheses(self) -> int:
        """N = K * S (1 for the deterministic U-Net)."""
        return 1 if self.form == "unet" else self.num_experts * self.num_samples

    @nn.compact
    def __call__(self, x: jnp.ndarray, z: jnp.ndarray | None = None):
        """Segments a batch into N weighted hypotheses.

        Args:
          x: ``[B, H, W, 1]`` images in [0, 1].
          z: optional latents ``[K, B, S, L]``; drawn from the ``"sample"`` RNG stream if None.

        Returns:
          ``(logits, aux)``: logits ``[B, N, H, W, C]`` (hypothesis (k, j) at index k * S + j)
          and aux with ``log_alpha`` ``[B, N]`` (log hypothesis weights, summing to 1),
          ``router_logits`` ``[B, K]`` and the latents ``z``.
        """
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        skips, bottleneck = Encoder(self.features, dtype=self.dtype, name="encoder")(x)
        b = x.shape[0]
        if self.form == "unet":
            z0 = jnp.zeros((b, 1, 1), jnp.float32)
            _, logits = Expert(
                self.features, self.num_classes, self.head_hidden, False, self.dtype, name="decoder"
            )(None, z0, skips, bottleneck)
            log_alpha = jnp.zeros((b, 1), jnp.float32)
            return logits.astype(jnp.float32), {"log_alpha": log_alpha}

        k, s, l_dim = self.num_experts, self.num_samples, self.latent_dim
        if z is None:
            z = jax.random.normal(self.make_rng("sample"), (k, b, s, l_dim), jnp.float32)
        router_logits = Router(k, self.router_hidden, name="router")(bottleneck)
        if self.form == "mose":
            # One shared decoder; expert k's latents come from its learned prior N(mu_k, sigma_k).
            mu = self.param("prior_mean", nn.initializers.normal(1.0), (k, l_dim))
            log_sigma = self.param("prior_log_std", nn.initializers.zeros, (k, l_dim))
            zk = mu[:, None, None] + jnp.exp(log_sigma)[:, None, None] * z  # [K, B, S, L]
            zk = zk.transpose(1, 0, 2, 3).reshape(b, k * s, l_dim)
            _, logits = Expert(
                self.features, self.num_classes, self.head_hidden, True, self.dtype, name="decoder"
            )(None, zk, skips, bottleneck)
        else:
            mode = resolve_mode(self.mode)
            args = (self.features, self.num_classes, self.head_hidden, True, self.dtype)
            if self.expert_map is None or self.is_initializing():
                _, logits = _stacked_experts(mode, k)(*args, name=DECODERS)(
                    None, z, skips, bottleneck
                )
            else:

                def stacked_fn(params, z, skips, bottleneck):
                    # K' = K / E experts when the map hands each device its share of them;
                    # parent=None: a free-standing module applied to the given parameters.
                    module = _stacked_experts(mode, z.shape[0])(*args, parent=None)
                    return module.apply({"params": params}, None, z, skips, bottleneck)[1]

                params = self.get_variable("params", DECODERS)
                logits = self.expert_map(stacked_fn, params, z, skips, bottleneck)
            # [K, B, S, H, W, C] -> [B, K*S, H, W, C]
            logits = jnp.moveaxis(logits, 0, 1)
            logits = logits.reshape((b, k * s) + logits.shape[3:])
        log_pi = jax.nn.log_softmax(router_logits, axis=-1)
        log_alpha = jnp.repeat(log_pi, s, axis=1) - jnp.log(float(s))
        aux = {"log_alpha": log_alpha, "router_logits": router_logits, "z": z}
        return logits.astype(jnp.float32), aux
