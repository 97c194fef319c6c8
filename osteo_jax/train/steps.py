"""Pure train steps: ``step(state, batch, rng, **static) -> (state, metrics)``.

A step differentiates only the parameter subtrees it trains; every other subtree of the one
parameter pytree passes through untouched. The trainer binds the static pieces (model,
optimizer, loss settings) with ``functools.partial`` and jits at the call site; the same jitted
step runs on one device or, unchanged, on a ``jax.sharding.Mesh`` with the batch sharded and
the parameters replicated. Metrics are a flat dict of scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from osteo_jax.config import OTConfig
from osteo_jax.losses.ot import (
    balanced_ot_loss,
    cross_entropy_cost,
    gamma_schedule,
    relaxed_ot_loss,
    soft_iou_cost,
)
from osteo_jax.models.mixture import Segmenter
from osteo_jax.train.state import TrainState


def apply_optimizer(tx: optax.GradientTransformation, grads, opt_state, params):
    """``tx.update`` + ``apply_updates``; returns ``(new_params, new_opt_state)``.

    optax mixes Python floats with int32 step counts (schedules, bias correction), which strict
    dtype promotion rejects; our own code is checked strictly, the library's update is traced
    under standard promotion.
    """
    with jax.numpy_dtype_promotion("standard"):
        updates, new_opt = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt


def seg_gamma(step: jnp.ndarray, ot: OTConfig, num_hypotheses: int) -> jnp.ndarray:
    """Capacity per hypothesis at ``step`` (1/N -> 1 by default, N = ``num_hypotheses``)."""
    start = 1.0 / num_hypotheses if ot.gamma_start is None else ot.gamma_start
    return gamma_schedule(
        step,
        start=start,
        end=ot.gamma_end,
        ramp_start=ot.gamma_ramp_start,
        ramp_steps=ot.gamma_ramp_steps,
    )


def seg_loss(
    seg_params,
    *,
    model: Segmenter,
    images: jnp.ndarray,
    masks: jnp.ndarray,
    rng: jax.Array,
    gamma: jnp.ndarray,
    ot: OTConfig,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Mean relaxed-OT loss of a batch.

    Args:
      seg_params: the ``"segmenter"`` subtree.
      model: the segmenter module.
      images: ``[B, H, W, 1]`` float32.
      masks: ``[B, M, H, W]`` integer annotator label maps.
      rng: key of the ``"sample"`` stream (decoder latents).
      gamma: capacity per hypothesis.
      ot: loss settings.

    Returns:
      ``(loss, metrics)``.
    """
    logits, aux = model.apply({"params": seg_params}, images, rngs={"sample": rng})
    labels = masks.astype(jnp.int32)
    if ot.cost not in ("iou", "ce"):
        raise ValueError(f"OT cost must be 'iou' or 'ce', got {ot.cost!r}")
    if ot.cost == "iou":
        cost = jax.vmap(lambda lo, y: soft_iou_cost(probs=jax.nn.softmax(lo, -1), labels=y))(
            logits, labels
        )
    if ot.cost == "ce" or ot.ce_weight > 0:
        ce = jax.vmap(lambda lo, y: cross_entropy_cost(logits=lo, labels=y))(logits, labels)
        cost = ce if ot.cost == "ce" else cost + ot.ce_weight * ce
    alpha = jnp.exp(aux["log_alpha"])
    solver = dict(epsilon=ot.epsilon, num_iters=ot.num_iters, epsilon_start=ot.epsilon_start)
    if ot.balanced:
        loss, terms = jax.vmap(lambda c, a: balanced_ot_loss(cost=c, alpha=a, **solver))(
            cost, alpha
        )
    else:
        loss, terms = jax.vmap(
            lambda c, la: relaxed_ot_loss(
                cost=c, log_alpha=la, gamma=gamma, kl_weight=ot.kl_weight, **solver
            )
        )(cost, aux["log_alpha"])
    metrics = {
        "loss": jnp.mean(loss),
        "cost_min": jnp.mean(jnp.min(cost, axis=1)),
        "alpha_max": jnp.mean(jnp.max(alpha, axis=1)),
    }
    for name, value in terms.items():
        if jnp.ndim(value) == 1:  # per-example scalars
            metrics[name] = jnp.mean(value)
    return jnp.mean(loss), metrics


def seg_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    rng: jax.Array,
    *,
    model: Segmenter,
    tx: optax.GradientTransformation,
    ot: OTConfig,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One optimizer step on the segmenter; the rest of ``state.params`` passes through.

    Args:
      state: the train state.
      batch: ``{"image": [B, H, W, 1], "masks": [B, M, H, W]}``.
      rng: the run's base key; this step uses ``fold_in(rng, state.step)``.
      model: segmenter module (static).
      tx: the segmenter's optimizer (static).
      ot: loss settings (static).

    Returns:
      ``(new_state, metrics)`` with loss terms, gamma and the gradient norm.
    """
    key = jax.random.fold_in(rng, state.step)
    gamma = seg_gamma(state.step, ot, model.num_experts * model.num_samples)
    grad_fn = jax.value_and_grad(seg_loss, has_aux=True)
    (_, metrics), grads = grad_fn(
        state.params["segmenter"],
        model=model,
        images=batch["image"],
        masks=batch["masks"],
        rng=key,
        gamma=gamma,
        ot=ot,
    )
    new_seg, new_opt = apply_optimizer(tx, grads, state.opt_state["seg"], state.params["segmenter"])
    metrics = dict(metrics, gamma=gamma, grad_norm=optax.tree.norm(grads))
    new_state = state.replace(
        step=state.step + 1,
        params={**state.params, "segmenter": new_seg},
        opt_state={**state.opt_state, "seg": new_opt},
    )
    return new_state, metrics
