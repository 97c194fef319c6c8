"""Segmentation uncertainty in radiogrammetry: every hypothesis of a mixture segmenter measured.

:func:`measure_hypotheses` measures each of the K S hypotheses of a
mixture segmenter and summarises each index by its weighted mean, weighted SD, min / max and a
weighted central interval (:func:`weighted_spread`).
"""

from __future__ import annotations

import math

import numpy as np

from osteo_jax.data.segments import labels_from_probs
from osteo_jax.eval.radiogrammetry.measure import (
    DEFAULT_BONES,
    BoneMeasurement,
    RadiogrammetryConfig,
    check_bones,
    measure_radiograph,
)

__all__ = ["measure_hypotheses", "measure_prediction", "weighted_spread"]


def weighted_spread(values: np.ndarray, weights: np.ndarray, *, interval: float = 0.9) -> dict:
    """Weighted mean and spread of one quantity over hypotheses, NaN values left out.

    With normalised weights ``w`` over the finite values ``x``: ``mean = sum w x``,
    ``sd = sqrt(sum w (x - mean)^2)`` (the SD of the discrete distribution, no small-sample
    correction), ``min`` / ``max`` over the finite values, and the weighted quantiles
    ``lo``, ``hi`` at ``(1 -/+ interval) / 2``: the smallest value whose cumulative weight
    reaches the level.

    Args:
      values: ``[N]`` values (NaN where the hypothesis failed).
      weights: ``[N]`` non-negative hypothesis weights.
      interval: mass of the central interval ``[lo, hi]``, in (0, 1].

    Returns:
      dict with ``mean``, ``sd``, ``min``, ``max``, ``lo``, ``hi`` (NaN when no value is
      finite), ``n_valid`` and ``weight_valid`` (weight mass of the finite values, before
      normalisation over the total weight).

    Raises:
      ValueError: shapes differ, negative or all-zero weights, interval outside (0, 1].
    """
    x = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64)
    if x.ndim != 1 or w.shape != x.shape:
        raise ValueError(f"values and weights must be [N] alike, got {x.shape}, {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, with a positive sum")
    if not 0 < interval <= 1:
        raise ValueError(f"interval must lie in (0, 1], got {interval}")
    ok = np.isfinite(x) & (w > 0)
    out = {"n_valid": int(ok.sum()), "weight_valid": float(w[ok].sum() / w.sum())}
    if not ok.any():
        return {**out, **dict.fromkeys(("mean", "sd", "min", "max", "lo", "hi"), math.nan)}
    x, w = x[ok], w[ok] / w[ok].sum()
    mean = float(np.sum(w * x))
    sd = float(np.sqrt(np.sum(w * (x - mean) ** 2)))
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])

    def quantile(level):
        i = int(np.searchsorted(cum, level - 1e-12, side="left"))
        return float(x[order][min(i, x.size - 1)])

    lo, hi = quantile((1 - interval) / 2), quantile((1 + interval) / 2)
    return {
        **out,
        "mean": mean,
        "sd": sd,
        "min": float(x.min()),
        "max": float(x.max()),
        "lo": lo,
        "hi": hi,
    }


def measure_hypotheses(
    image: np.ndarray,
    label_maps: np.ndarray,
    weights: np.ndarray,
    *,
    spacing_mm: float,
    bones: tuple[str, ...] = DEFAULT_BONES,
    cfg: RadiogrammetryConfig | None = None,
    interval: float = 0.9,
    start: dict[str, BoneMeasurement] | None = None,
) -> dict[str, dict]:
    """Measures every segmentation hypothesis and summarises each index over them.

    Args:
      image: ``[H, W]`` radiograph, bone bright.
      label_maps: ``[N, H, W]`` integer label maps, one per hypothesis, at full resolution.
      weights: ``[N]`` hypothesis weights (the mixture's ``pi_k / S``; normalised here).
      spacing_mm: pixel spacing (mm).
      bones: names of ``config.BONE_NAMES``.
      cfg: measurement settings (None: the defaults).
      interval: mass of the central interval reported (see :func:`weighted_spread`).
      start: measurements on the mixture mean's label map, whose block fits seed every
        hypothesis's (:func:`~osteo_jax.eval.radiogrammetry.measure.measure_bone`; None: each
        fit from its own profile's guess).

    Returns:
      ``{bone: {"width_mm": spread, "medullary_mm": spread, "cortical_index": spread,
      "per_hypothesis": [BoneMeasurement] * N}}`` with ``spread`` the dict of
      :func:`weighted_spread` (a failed hypothesis is left out of the spread).

    Raises:
      ValueError: shapes or weights inconsistent, unknown bone.
    """
    bones = check_bones(bones)
    label_maps = np.asarray(label_maps)
    weights = np.asarray(weights, np.float64)
    if label_maps.ndim != 3 or weights.shape != label_maps.shape[:1]:
        raise ValueError(
            f"label_maps [N, H, W] and weights [N] expected, got {label_maps.shape}, "
            f"{weights.shape}"
        )
    per = [
        measure_radiograph(image, lm, spacing_mm=spacing_mm, bones=bones, cfg=cfg, start=start)
        for lm in label_maps
    ]
    out = {}
    for b in bones:
        ms = [p[b] for p in per]
        out[b] = {
            key: weighted_spread(
                np.array([getattr(m, key) for m in ms]), weights, interval=interval
            )
            for key in ("width_mm", "medullary_mm", "cortical_index")
        }
        out[b]["per_hypothesis"] = ms
    return out


def measure_prediction(
    image: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    *,
    spacing_mm: float,
    bones: tuple[str, ...] = DEFAULT_BONES,
    cfg: RadiogrammetryConfig | None = None,
    interval: float = 0.9,
) -> tuple[dict[str, BoneMeasurement], dict[str, dict]]:
    """Radiogrammetry from a mixture segmenter's prediction for one radiograph.

    Args:
      image: ``[H, W]`` radiograph, bone bright.
      probs: ``[N, h, h, C]`` class probabilities of the N = K S hypotheses at the model's
        input size (the ``predict`` output of :mod:`osteo_jax.eval.seg_eval` for one image).
      weights: ``[N]`` hypothesis weights.
      spacing_mm: pixel spacing (mm).
      bones: names of ``config.BONE_NAMES``.
      cfg: measurement settings (None: the defaults).
      interval: mass of the central interval of the spread.

    Returns:
      ``(mean_measure, spread)``: the measurement on the argmax of the mixture mean
      ``sum_n w_n probs_n`` (the pipeline's segmentation), and :func:`measure_hypotheses` over
      the N hypotheses.

    Raises:
      ValueError: shapes or weights inconsistent, unknown bone.
    """
    image = np.asarray(image)
    probs = np.asarray(probs, np.float32)
    weights = np.asarray(weights, np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D [H, W], got shape {image.shape}")
    if probs.ndim != 4 or weights.shape != probs.shape[:1]:
        raise ValueError(
            f"probs [N, h, h, C] and weights [N] expected, got {probs.shape}, {weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, with a positive sum")
    w = weights / weights.sum()
    mean_labels = labels_from_probs(np.tensordot(w.astype(np.float32), probs, axes=1), image.shape)
    mean = measure_radiograph(image, mean_labels, spacing_mm=spacing_mm, bones=bones, cfg=cfg)
    maps = np.stack([labels_from_probs(p, image.shape) for p in probs])
    spread = measure_hypotheses(
        image, maps, w, spacing_mm=spacing_mm, bones=bones, cfg=cfg, interval=interval, start=mean
    )
    return mean, spread
