"""Train state: the ONE parameter pytree, per-stage optimizer states, the step count.

``params`` is a dict keyed by stage (``"segmenter"`` now; ``"backbone"``, ``"ssl_head"``,
``"classifier"`` join later) so that every stage starts from the earlier stages' weights with no
conversion, and a checkpoint holds the whole model. Optimizer states live under the name of the
step that uses them (``opt_state["seg"]``). There is no PRNG key in the state: each step derives
its key as ``fold_in(base_key, step)``, which keeps resumption deterministic.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from osteo_jax.config import SegConfig, SegTrainConfig
from osteo_jax.models.mixture import Segmenter

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step.

    Attributes:
      step: scalar int32, optimizer steps taken.
      params: ``{"segmenter": ..., ...}`` the one parameter pytree.
      opt_state: ``{"seg": optax state, ...}`` one entry per train step kind.
    """

    step: jnp.ndarray
    params: dict[str, PyTree]
    opt_state: dict[str, PyTree]


def make_segmenter(cfg: SegConfig, mode: str | None = None) -> Segmenter:
    """The Flax segmenter module described by ``cfg`` (``mode`` overrides ``cfg.mode``)."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if cfg.dtype not in dtypes:
        raise ValueError(f"dtype must be one of {tuple(dtypes)}, got {cfg.dtype!r}")
    return Segmenter(
        features=tuple(cfg.features),
        num_classes=cfg.num_classes,
        num_experts=1 if cfg.form == "unet" else cfg.num_experts,
        num_samples=1 if cfg.form == "unet" else cfg.num_samples,
        latent_dim=cfg.latent_dim,
        form=cfg.form,
        mode=mode or cfg.mode,
        head_hidden=cfg.head_hidden,
        router_hidden=cfg.router_hidden,
        dtype=dtypes[cfg.dtype],
    )


def init_segmenter_params(cfg: SegConfig, rng: jax.Array) -> PyTree:
    """Initial segmenter parameters.

    Always initialised through the ``scan`` execution, so the same seed gives the same
    parameters on CPU, GPU and TPU (``vmap`` and ``scan`` share the layout but split their
    init keys differently).
    """
    model = make_segmenter(cfg, mode="scan")
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, 1), jnp.float32)
    p_rng, s_rng = jax.random.split(rng)
    return jax.jit(model.init)({"params": p_rng, "sample": s_rng}, x)["params"]


def seg_optimizer(cfg: SegTrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, gradients clipped at global norm 1."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * 0.02,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, weight_decay=cfg.weight_decay),
    )


def create_seg_state(
    cfg: SegTrainConfig, rng: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh state holding the segmenter's parameters and its optimizer state."""
    params = {"segmenter": init_segmenter_params(cfg.seg, rng)}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"seg": tx.init(params["segmenter"])},
    )
