"""Run a trained segmenter over images and score it with :mod:`osteo_jax.eval.seg_metrics`."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from osteo_jax.eval.calibration import mose_foreground_ece, pixel_ece
from osteo_jax.eval.seg_metrics import majority_consensus, seg_report
from osteo_jax.models.mixture import Segmenter

# An expert counts as alive when its mean router weight over the images is at least this.
ALIVE_ALPHA = 0.05


@functools.lru_cache(maxsize=8)
def make_predict_fn(model: Segmenter):
    """Jitted ``(params, images, key) -> (probs [B, N, H, W, C], weights [B, N])``.

    Cached per model (Linen modules compare by their fields), so validation, segment
    extraction, radiogrammetry and the report share one compile per batch shape.
    """

    @jax.jit
    def predict(params, images, key):
        logits, aux = model.apply({"params": params}, images, rngs={"sample": key})
        return jax.nn.softmax(logits, axis=-1), jnp.exp(aux["log_alpha"])

    return predict


def predict_batches(
    model: Segmenter,
    params,
    images: np.ndarray,
    key: jax.Array,
    batch_size: int = 8,
    predict_fn=None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields ``(start, probs, weights)`` over ``images`` in batches (host numpy arrays).

    The last batch is padded to ``batch_size`` so only one shape is ever compiled; latents are
    drawn from ``fold_in(key, start)`` so results do not depend on the batch size's padding.
    """
    predict = predict_fn or make_predict_fn(model)
    n = images.shape[0]
    for start in range(0, n, batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        probs, weights = predict(params, jnp.asarray(chunk), jax.random.fold_in(key, start))
        keep = batch_size - pad
        yield start, np.asarray(probs[:keep]), np.asarray(weights[:keep], np.float64)


def evaluate_segmenter(
    model: Segmenter,
    params,
    images: np.ndarray,
    masks: np.ndarray,
    key: jax.Array,
    *,
    batch_size: int = 8,
    annotator_names: tuple[str, ...] | None = None,
    predict_fn=None,
) -> dict[str, float]:
    """Dataset-level segmentation metrics (means of the per-image :func:`seg_report`).

    Both ECEs (``ece``, ``ece_mose``) are pooled over all pixels of all images (not means of
    per-image ECEs).

    Args:
      model: the segmenter.
      params: its parameters (the ``"segmenter"`` subtree).
      images: ``[n, H, W, 1]`` float32.
      masks: ``[n, M, H, W]`` annotator label maps.
      key: latent key (fixed for reproducible numbers).
      batch_size: images per forward pass.
      annotator_names: names used in place of ``annotator_{m}`` in the keys.
      predict_fn: a jitted function from :func:`make_predict_fn` to reuse.

    Returns:
      Flat dict: ``dice/consensus/mean``, per-bone Dice and IoU, ``ged``, ``hm_iou``, ``ece``,
      ``ece_mose``, and for a mixture ``alpha/expert_<k>`` (expert k's weight, the sum of its
      S hypotheses' weights, averaged over the images) and ``experts_alive`` (how many have
      a mean weight of at least :data:`ALIVE_ALPHA`).
    """
    reports, expert_weights = [], []
    conf_probs, conf_targets, conf_annots = [], [], []
    for start, probs, weights in predict_batches(
        model, params, images, key, batch_size, predict_fn
    ):
        for i in range(probs.shape[0]):
            w = weights[i] / weights[i].sum()
            annots = masks[start + i].astype(np.int64)
            reports.append(seg_report(probs[i], w, annots, probs.shape[-1]))
            conf_probs.append(np.tensordot(w, probs[i], axes=1).astype(np.float32))
            conf_targets.append(majority_consensus(annots, probs.shape[-1]))
            conf_annots.append(annots)
        expert_weights.append(weights / weights.sum(axis=1, keepdims=True))
    keys = reports[0].keys()
    out = {k: float(np.nanmean([r[k] for r in reports])) for k in keys}
    out["ece"] = pixel_ece(np.stack(conf_probs), np.stack(conf_targets))
    # [n, M, H, W] -> [M, n, H, W]: the annotator axis first, as mose_foreground_ece takes it.
    out["ece_mose"] = mose_foreground_ece(np.stack(conf_probs), np.stack(conf_annots, axis=1))
    if annotator_names:
        for m, name in enumerate(annotator_names):
            out = {k.replace(f"/annotator_{m}/", f"/{name}/"): v for k, v in out.items()}
    if model.form != "unet":
        alpha = np.concatenate(expert_weights).reshape(len(reports), model.num_experts, -1)
        alpha = alpha.sum(axis=2).mean(axis=0)
        out |= {f"alpha/expert_{k}": float(a) for k, a in enumerate(alpha)}
        out["experts_alive"] = float((alpha >= ALIVE_ALPHA).sum())
    out["n_images"] = float(len(reports))
    return out
