"""Pairwise costs between N segmentation hypotheses and M annotations (the ``C`` of the OT losses).

Both are ``[N, M]`` matrices computed with one einsum against the one-hot annotations, never an
``[N, M, H, W, C]`` tensor; :mod:`osteo_jax.losses.ot` transports the hypotheses onto the
annotations at these costs.
"""

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy_cost", "soft_iou_cost"]


def _check_maps(name: str, maps: jax.Array, labels: jax.Array) -> None:
    if maps.ndim != 4 or labels.ndim != 3 or maps.shape[1:3] != labels.shape[1:]:
        raise ValueError(
            f"{name} must be [N, H, W, C] and labels [M, H, W] with the same H, W; got "
            f"{maps.shape} and {labels.shape}."
        )


def soft_iou_cost(*, probs: jax.Array, labels: jax.Array, smooth: float = 1.0) -> jax.Array:
    """Cost 1 - soft IoU between every hypothesis and every annotation (MoSE conventions).

    With ``y = one_hot(labels)``, for hypothesis ``i``, annotation ``j`` and class ``c``::

        IoU_ijc = (sum_hw p_i y_j + s) / (sum_hw p_i + sum_hw y_j - sum_hw p_i y_j + s)
        C_ij = 1 - mean_{c = 1 .. C-1} IoU_ijc

    Class 0 (background) is left out of the mean. The smoothing ``s`` makes a class that is
    absent from both prediction and annotation count as a perfect match (IoU = 1), so a one-hot
    prediction equal to the annotation costs exactly 0. Intersections are one einsum against the
    one-hot labels: memory ``O((N + M) H W C)``, never ``[N, M, H, W, C]``.

    Args:
      probs: ``[N, H, W, C]`` softmax probabilities of N hypotheses over C classes.
      labels: ``[M, H, W]`` integer label maps with values in ``[0, C)``.
      smooth: additive smoothing ``s`` of numerator and denominator.

    Returns:
      ``[N, M]`` float32 cost, in ``[0, 1]`` for probabilities.
    """
    _check_maps("probs", probs, labels)
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError(f"soft_iou_cost needs a foreground class; got C = {num_classes}.")
    p = probs.astype(jnp.float32)
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    inter = jnp.einsum("nhwc,mhwc->nmc", p, y, precision=jax.lax.Precision.HIGHEST)
    sum_p = jnp.sum(p, axis=(1, 2))[:, None, :]
    sum_y = jnp.sum(y, axis=(1, 2))[None, :, :]
    iou = (inter + smooth) / (sum_p + sum_y - inter + smooth)
    return 1.0 - jnp.mean(iou[..., 1:], axis=-1)


def cross_entropy_cost(*, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean pixel cross-entropy between every hypothesis and every annotation.

    ``C_ij = -1 / (H W) sum_hw sum_c y_jhwc log softmax(z_i)_hwc`` with ``y = one_hot(labels)``;
    the gather is one einsum against the one-hot labels, never an ``[N, M, H, W, C]`` tensor.
    The cost is unbounded (about ``log C`` for a uniform prediction), so an absolute Sinkhorn
    epsilon means less here than with :func:`soft_iou_cost`.

    Args:
      logits: ``[N, H, W, C]`` unnormalised class scores of N hypotheses.
      labels: ``[M, H, W]`` integer label maps with values in ``[0, C)``.

    Returns:
      ``[N, M]`` float32 cost.
    """
    _check_maps("logits", logits, labels)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    y = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    total = jnp.einsum("nhwc,mhwc->nm", log_p, y, precision=jax.lax.Precision.HIGHEST)
    return -total / (labels.shape[1] * labels.shape[2])
