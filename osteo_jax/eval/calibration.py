"""Expected calibration errors of the segmenter's pixels, and the one binning rule of the package.

Every ECE and reliability curve of osteo_jax (:func:`pixel_ece`, :func:`mose_foreground_ece`,
:func:`osteo_jax.eval.cls_metrics.binary_ece`, :func:`osteo_jax.eval.cls_metrics.reliability_curve`)
bins a score in ``[0, 1]`` with :func:`calibration_bins`: ``B`` equal-width bins, right-closed,
``((b-1)/B, b/B]`` for ``b = 1 .. B``, with 0 in the first bin. That is the convention of Guo et
al. (ICML 2017) and of MoSE's ``utils/metrics.py``. Pure numpy, outside ``jit``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["calibration_bins", "mose_foreground_ece", "pixel_ece"]


def _label_map(x, num_classes: int, name: str) -> np.ndarray:
    """``x`` as an array; TypeError unless integer, ValueError for labels outside ``0..C-1``."""
    x = np.asarray(x)
    kind = "integer" if np.issubdtype(x.dtype, np.integer) else None
    if kind is None or (x.size and not 0 <= x.min() <= x.max() < num_classes):
        error = ValueError if kind else TypeError
        raise error(f"{name} must be an integer label map in 0..{num_classes - 1} ({x.dtype})")
    return x


def calibration_bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each score: right-closed bins ``((b-1)/B, b/B]``, 0 in the first.

    Args:
      scores: any-shape array of values in ``[0, 1]``.
      n_bins: ``B >= 1``.

    Returns:
      int64 array of the shape of ``scores``, values in ``0 .. B-1`` (``b - 1`` for bin ``b``).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1: {n_bins}")
    return np.clip(np.ceil(np.asarray(scores) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _ece(conf: np.ndarray, correct: np.ndarray, n_bins: int, total: int) -> float:
    """``sum_b |sum_{i in b} (correct_i - conf_i)| / total`` (= ``sum_b n_b/total |acc-conf|``)."""
    bins = calibration_bins(conf, n_bins)
    gap = np.bincount(bins, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / total)


def pixel_ece(probs_mean, target, n_bins: int = 10, foreground_only: bool = True) -> float:
    """Top-label expected calibration error over the pixels of a segmentation (ours).

    Each pixel is one prediction: its confidence is the top class probability and it is correct
    when its argmax class equals the target's. With ``acc_b`` the fraction of correct pixels in
    bin ``b`` (:func:`calibration_bins`) and ``conf_b`` their mean confidence,
    ``ECE = sum_b (n_b / n) |acc_b - conf_b|``, ``n`` the number of counted pixels. By default
    only pixels where the prediction *or* the target is foreground count, and ``n`` is their
    number (MoSE's convention is :func:`mose_foreground_ece`); the classifier's ECE of binary
    probabilities is :func:`osteo_jax.eval.cls_metrics.binary_ece`.

    Args:
      probs_mean: ``[H, W, C]`` (or ``[..., C]``) class probabilities, e.g. the mixture mean.
      target: ``[H, W]`` integer label map (e.g. the annotators' consensus).
      n_bins: number of equal-width bins on ``[0, 1]``.
      foreground_only: count only pixels where the prediction or the target is foreground;
        otherwise the easy background pixels, most of a radiograph, swamp the score.

    Returns:
      ECE, a float in ``[0, 1]``; ``nan`` if no pixel is counted.
    """
    probs_mean = np.asarray(probs_mean, dtype=np.float64)
    target = _label_map(target, probs_mean.shape[-1], "target")
    if probs_mean.shape[:-1] != target.shape:
        raise ValueError(f"probs {probs_mean.shape} do not match target {target.shape}")
    conf = probs_mean.max(-1).ravel()
    pred = probs_mean.argmax(-1).ravel()
    target = target.ravel()
    keep = (pred != 0) | (target != 0) if foreground_only else np.ones_like(pred, dtype=bool)
    if not keep.any():
        return float("nan")
    correct = (pred[keep] == target[keep]).astype(np.float64)
    return _ece(conf[keep], correct, n_bins, int(keep.sum()))


def mose_foreground_ece(probs_mean, annots, n_bins: int = 10) -> float:
    """MoSE's foreground ECE: predicted-foreground pixels, soft accuracy, over all pixels.

    The convention of MoSE's ``calculate_ece`` (Gao et al., ICLR 2023, ``utils/metrics.py``)
    in its multi-class form with the foreground classes as ``label_range``:

    * only pixels whose argmax class is foreground are binned (by top-label confidence);
    * a pixel's accuracy is the fraction of annotators who gave it the predicted class (the
      marginal of the annotations, not one consensus map);
    * each bin is weighted by its count over *all* pixels, predicted background included::

        ECE = sum_b (n_b / n_all) |acc_b - conf_b|

    So unlike :func:`pixel_ece` it ignores missed foreground (predicted background) and shrinks
    with the background's share of the image. Same bins (:func:`calibration_bins`).

    Args:
      probs_mean: ``[..., C]`` class probabilities, e.g. ``[H, W, C]``.
      annots: ``[M, ...]`` integer label maps of the M annotators, e.g. ``[M, H, W]``.
      n_bins: number of equal-width bins on ``[0, 1]``.

    Returns:
      ECE, a float in ``[0, 1]``; 0 when no pixel is predicted foreground.
    """
    probs_mean = np.asarray(probs_mean, dtype=np.float64)
    num_classes = probs_mean.shape[-1]
    annots = _label_map(annots, num_classes, "annots")
    if annots.shape[1:] != probs_mean.shape[:-1]:
        raise ValueError(f"probs {probs_mean.shape} do not match annots {annots.shape}")
    conf = probs_mean.max(-1).ravel()
    pred = probs_mean.argmax(-1).ravel()
    agree = (annots.reshape(annots.shape[0], -1) == pred[None]).mean(0)
    keep = pred != 0
    return _ece(conf[keep], agree[keep], n_bins, pred.size)
