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
from osteo_jax.data.augment import CropPolicy, multi_crop_batch
from osteo_jax.data.geometric import random_resized_crop
from osteo_jax.losses import (
    balanced_ot_loss,
    cross_entropy_cost,
    gamma_schedule,
    relaxed_ot_loss,
    soft_iou_cost,
)
from osteo_jax.losses.ssl_methods import SSLObjective
from osteo_jax.models.heads import LinearClassifier, Projector, Prototypes
from osteo_jax.models.mixture import Segmenter
from osteo_jax.models.resnet import ResNet
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
        if ot.expert_gamma is not None:
            solver.update(expert_gamma=ot.expert_gamma, num_experts=model.num_experts)
        loss, terms = jax.vmap(
            lambda c, la: relaxed_ot_loss(
                cost=c,
                log_alpha=la,
                gamma=gamma,
                kl_weight=ot.kl_weight,
                kl_reduction=ot.kl_reduction,
                plan=ot.plan,
                **solver,
            )
        )(cost, aux["log_alpha"])
    metrics = {
        "loss": jnp.mean(loss),
        "cost_min": jnp.mean(jnp.min(cost, axis=1)),
        "alpha_max": jnp.mean(jnp.max(alpha, axis=1)),
    }
    if model.num_experts > 1:
        # The router's weight of each expert (its S hypotheses, expert-major), batch mean.
        pi = jnp.mean(jnp.sum(alpha.reshape(alpha.shape[0], model.num_experts, -1), -1), 0)
        metrics.update({f"expert_alpha_{k}": pi[k] for k in range(model.num_experts)})
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


# ------------------------------------------------------------------------------------ SSL


def _embed(backbone: ResNet, params, views: jnp.ndarray) -> jnp.ndarray:
    """``[B, V, h, h]`` views -> ``[B, V, D]`` backbone features (one call for all views)."""
    b, v, h, w = views.shape
    feats, _ = backbone.apply({"params": params}, views.reshape(b * v, h, w, 1))
    return feats.reshape(b, v, -1)


def ssl_loss(
    params,
    *,
    backbone: ResNet,
    projector: Projector,
    objective: SSLObjective,
    prototypes: Prototypes | None,
    views: dict[str, jnp.ndarray],
    labels: jnp.ndarray,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Self-supervised loss of a batch of multi-crop views.

    Args:
      params: ``{"backbone": ..., "ssl_head": {"projector": ..., ["prototypes": ...]}}``.
      backbone: the ResNet.
      projector: the projector MLP.
      objective: the method's loss (:func:`osteo_jax.losses.ssl_methods.ssl_objective`).
      prototypes: the prototype layer when the method has one (SwAV), else None.
      views: ``{"global": [B, G, g, g], "local": [B, L, l, l]}``; global views come first
        along the view axis (SwAV computes its codes on them).
      labels: ``[B]`` int, read by methods that use labels (SupCon) only.

    Returns:
      ``(loss, metrics)``.
    """
    feats = [_embed(backbone, params["backbone"], views["global"])]
    if views["local"].shape[1]:
        feats.append(_embed(backbone, params["backbone"], views["local"]))
    feats = jnp.concatenate(feats, axis=1)  # [B, V, D]
    b, v, d = feats.shape
    emb = projector.apply({"params": params["ssl_head"]["projector"]}, feats.reshape(b * v, d))
    emb = emb.reshape(b, v, -1)
    scores = None
    if prototypes is not None:
        scores = prototypes.apply(
            {"params": params["ssl_head"]["prototypes"]}, emb.reshape(b * v, -1)
        ).reshape(b, v, -1)
    loss, terms = objective(emb, labels=labels, scores=scores, n_global=views["global"].shape[1])
    metrics = {"feature_std": jnp.mean(jnp.std(feats, axis=0)), **terms}
    return loss, dict(metrics, loss=loss)


def ssl_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    rng: jax.Array,
    *,
    backbone: ResNet,
    projector: Projector,
    objective: SSLObjective,
    prototypes: Prototypes | None = None,
    tx: optax.GradientTransformation,
    policy: CropPolicy,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One LARS step on ``backbone`` and ``ssl_head``; the rest of ``state.params`` passes through.

    The multi-crop views are made inside the step (jitted, one key per example from
    ``fold_in(rng, step)``), so the host only feeds raw segments.

    Args:
      state: train state with ``opt_state["ssl"]``.
      batch: ``{"image": [B, S, S] segments (background 0), "label": [B] int}``.
      rng: the run's base key.
      backbone: the ResNet (static).
      projector: the projector MLP (static).
      objective: the method's loss, see :func:`ssl_loss` (static).
      prototypes: the method's prototype layer or None (static).
      tx: the SSL optimizer over ``{"backbone", "ssl_head"}`` (static).
      policy: multi-crop policy (static).

    Returns:
      ``(new_state, metrics)``.
    """
    key = jax.random.fold_in(rng, state.step)
    views = multi_crop_batch(key, batch["image"], policy=policy)
    trained = {k: state.params[k] for k in ("backbone", "ssl_head")}
    grad_fn = jax.value_and_grad(ssl_loss, has_aux=True)
    (_, metrics), grads = grad_fn(
        trained,
        backbone=backbone,
        projector=projector,
        objective=objective,
        prototypes=prototypes,
        views=views,
        labels=batch["label"],
    )
    new, new_opt = apply_optimizer(tx, grads, state.opt_state["ssl"], trained)
    metrics = dict(
        metrics,
        grad_norm=optax.tree.norm(grads),
        bone_fraction_min=jnp.minimum(
            jnp.min(views["global_fraction"]),
            jnp.min(views["local_fraction"], initial=1.0),
        ),
    )
    return (
        state.replace(
            step=state.step + 1,
            params={**state.params, **new},
            opt_state={**state.opt_state, "ssl": new_opt},
        ),
        metrics,
    )


# ------------------------------------------------------------------------- classification


def cls_logits(
    params,
    *,
    backbone: ResNet,
    images: jnp.ndarray | None = None,
    features: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """``[B, 2]`` logits from segments ``[B, S, S]`` or precomputed backbone ``features``."""
    if features is None:
        features, _ = backbone.apply({"params": params["backbone"]}, images[..., None])
    return LinearClassifier(2).apply({"params": params["classifier"]}, features)


def cls_loss(
    params,
    *,
    backbone: ResNet,
    batch: dict[str, jnp.ndarray],
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Weighted cross-entropy of the segment classifier.

    ``batch``: ``"image"`` ``[B, S, S]`` or ``"features"`` ``[B, D]``, ``"label"`` ``[B]`` and
    ``"weight"`` ``[B]`` (class weight of each example, 0 for padding).
    """
    logits = cls_logits(
        params, backbone=backbone, images=batch.get("image"), features=batch.get("features")
    )
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    weight = batch["weight"]
    loss = jnp.sum(weight * xent) / jnp.maximum(jnp.sum(weight), 1e-6)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    real = (weight > 0).astype(jnp.float32)  # padding (weight 0) does not count
    accuracy = jnp.sum(real * correct) / jnp.maximum(jnp.sum(real), 1.0)
    return loss, {"loss": loss, "accuracy": accuracy}


def cls_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    rng: jax.Array,
    *,
    backbone: ResNet,
    tx: optax.GradientTransformation,
    trainable: tuple[str, ...],
    augment: CropPolicy | None = None,
) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One step of the classifier; only the ``trainable`` subtrees are differentiated.

    A linear probe trains ``("classifier",)``: the backbone is read (or its features come
    precomputed in ``batch["features"]``) and passes through bit-identical. Fine-tuning trains
    ``("backbone", "classifier")``.

    Args:
      state: train state with ``opt_state["cls"]``.
      batch: see :func:`cls_loss`.
      rng: the run's base key (augmentation of ``batch["image"]`` uses ``fold_in(rng, step)``).
      backbone: the ResNet (static).
      tx: the classifier optimizer over the ``trainable`` dict (static).
      trainable: subtree names (static).
      augment: if given, each image is replaced by one random resized crop of this policy's
        global size and scales (no custom rule, no photometric change) (static).

    Returns:
      ``(new_state, metrics)``.
    """
    if augment is not None and "image" in batch:
        keys = jax.random.split(jax.random.fold_in(rng, state.step), batch["image"].shape[0])
        crops, _ = jax.vmap(
            lambda k, im: random_resized_crop(
                k,
                im,
                size=augment.global_size,
                scale=augment.global_scale,
                ratio=augment.ratio,
                max_rotation_deg=augment.max_rotation_deg,
                flip=augment.flip,
            )
        )(keys, batch["image"])
        batch = dict(batch, image=crops)
    trained = {k: state.params[k] for k in trainable}
    frozen = {k: jax.lax.stop_gradient(v) for k, v in state.params.items() if k not in trainable}

    def loss_fn(tr):
        return cls_loss({**frozen, **tr}, backbone=backbone, batch=batch)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
    new, new_opt = apply_optimizer(tx, grads, state.opt_state["cls"], trained)
    return (
        state.replace(
            step=state.step + 1,
            params={**state.params, **new},
            opt_state={**state.opt_state, "cls": new_opt},
        ),
        dict(metrics, grad_norm=optax.tree.norm(grads)),
    )
