"""Classification metrics of the evaluation protocol (PAPER.md section 4).

Per seed: subject probabilities (the mean of a subject's segment probabilities), the class by
a threshold (0.5 = argmax of two classes), and F1 (macro and positive class), AUC, accuracy,
sensitivity, specificity, ECE; ROC and reliability curves; a table in the paper's format. Their
statistics over seeds, folds and paired rows are in :mod:`osteo_jax.eval.cls_stats`.

Every function validates its inputs with :func:`check_probabilities`: an empty test set, a NaN
or out-of-range probability, or a label other than 0/1 raises instead of giving a silent AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from osteo_jax.data.segments import SegmentSet
from osteo_jax.data.synth.cohort import roc_auc
from osteo_jax.eval.calibration import calibration_bins

__all__ = [
    "METRICS",
    "binary_ece",
    "binary_metrics",
    "check_probabilities",
    "paper_table",
    "reliability_curve",
    "roc_curve",
    "subject_metrics",
    "subject_probabilities",
    "subject_scores",
]

METRICS = ("f1_macro", "f1_positive", "auc", "accuracy", "sensitivity", "specificity", "ece")


def check_probabilities(
    probs: np.ndarray, labels: np.ndarray, *, what: str = "probabilities"
) -> tuple[np.ndarray, np.ndarray]:
    """Validates binary probabilities and their labels.

    Args:
      probs: ``[n]`` probability of the positive class, each in ``[0, 1]``.
      labels: ``[n]`` 0/1 (bool or any numeric dtype).
      what: name of the inputs in the error message (e.g. ``"seed 2"``).

    Returns:
      ``(probs float64 [n], labels int64 [n])``.

    Raises:
      ValueError: shapes differ or are not 1-D, ``n == 0``, a probability is NaN, infinite or
        outside ``[0, 1]``, or a label is not 0/1; the message gives the count and the first
        offending index.
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 1:
        raise ValueError(
            f"{what}: probs and labels must be equal 1-D shapes, got {probs.shape} and "
            f"{labels.shape}"
        )
    n = len(probs)
    if n == 0:
        raise ValueError(f"{what}: empty (n = 0); need at least one subject")
    try:
        probs = probs.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: probabilities must be numbers ({probs.dtype})") from err

    def where(bad: np.ndarray, values: np.ndarray) -> str:
        i = int(np.flatnonzero(bad)[0])
        return f"in {int(bad.sum())} of {n} entries (first at index {i}: {values[i].item()!r})"

    bad = ~np.isfinite(probs)
    if bad.any():
        raise ValueError(f"{what}: NaN or infinite probability {where(bad, probs)}")
    bad = (probs < 0) | (probs > 1)
    if bad.any():
        raise ValueError(f"{what}: probability outside [0, 1] {where(bad, probs)}")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise ValueError(f"{what}: labels must be 0 or 1; other values {where(bad, labels)}")
    return probs, labels.astype(np.int64)


def _check_all(
    per_seed: Sequence[tuple[np.ndarray, ...]], unit: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Checks every ``(probs, labels)`` of a sequence, naming the seed / fold in errors."""
    if len(per_seed) == 0:
        raise ValueError(f"no {unit}s: need (probs, labels) of at least one {unit}")
    return [check_probabilities(p, y, what=f"{unit} {k}") for k, (p, y) in enumerate(per_seed)]


def subject_probabilities(
    segment_probs: np.ndarray, valid: np.ndarray, subject_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean probability of each subject over the valid segments of all its images.

    Args:
      segment_probs: ``[n_images, B]`` probability of osteoporosis per segment.
      valid: ``[n_images, B]`` bool; invalid (missing) segments are ignored.
      subject_ids: ``[n_images]``.

    Returns:
      ``(subjects [n_subjects] sorted, probs [n_subjects])``. A subject with no valid segment
      gets 0.5 (no evidence either way).

    Raises:
      ValueError: no images, mismatched shapes, or a valid segment's probability that is NaN,
        infinite or outside ``[0, 1]`` (invalid segments may hold anything, NaN included).
    """
    segment_probs = np.asarray(segment_probs, np.float64)
    valid = np.asarray(valid, bool)
    subject_ids = np.asarray(subject_ids)
    if segment_probs.shape != valid.shape or segment_probs.ndim != 2:
        raise ValueError(
            f"probs {segment_probs.shape} and valid {valid.shape} differ or are not [n, B]"
        )
    if subject_ids.shape != segment_probs.shape[:1]:
        raise ValueError(
            f"subject_ids {subject_ids.shape} do not match probs {segment_probs.shape}"
        )
    if len(segment_probs) == 0:
        raise ValueError("segment probabilities: empty (no images); need at least one subject")
    bad = valid & ~((segment_probs >= 0) & (segment_probs <= 1))  # NaN fails both
    if bad.any():
        i, j = (int(k[0]) for k in np.nonzero(bad))
        raise ValueError(
            f"segment probabilities: NaN, infinite or outside [0, 1] in {int(bad.sum())} valid "
            f"segment(s) (first at image {i}, segment {j}: {segment_probs[i, j].item()!r})"
        )
    subjects, inverse = np.unique(subject_ids, return_inverse=True)
    total = np.bincount(
        inverse, weights=np.where(valid, segment_probs, 0.0).sum(axis=1), minlength=len(subjects)
    )
    count = np.bincount(inverse, weights=valid.sum(axis=1), minlength=len(subjects))
    probs = np.where(count > 0, total / np.maximum(count, 1), 0.5)
    return subjects, probs


def subject_scores(probs: np.ndarray, segments: SegmentSet) -> tuple[np.ndarray, np.ndarray]:
    """``(subject_probs, subject_labels)`` from segment probabilities ``[n, B]``.

    Subjects in sorted order (:func:`subject_probabilities` over ``segments.valid``); each
    subject's label is that of its first image in ``segments``.
    """
    subjects, p = subject_probabilities(probs, segments.valid, segments.subject_ids)
    first = {s: i for i, s in reversed(list(enumerate(segments.subject_ids)))}
    return p, segments.labels[[first[s] for s in subjects]]


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom > 0 else 0.0


def _ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    # sum_b n_b / n |mean(y)_b - mean(p)_b| = sum_b |sum(y)_b - sum(p)_b| / n.
    idx = calibration_bins(probs, bins)
    gap = np.bincount(idx, weights=labels - probs, minlength=bins)
    return float(np.abs(gap).sum() / len(probs))


def _auc(probs: np.ndarray, labels: np.ndarray) -> float:
    both = labels.any() and not labels.all()
    return roc_auc(probs, labels) if both else float("nan")


def _confusion_metrics(
    probs: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray
) -> dict:
    # threshold: a scalar, or [n] per subject (pooled folds, each with its own threshold).
    pred = probs >= threshold
    pos = labels == 1
    tp, fp = float(np.sum(pred & pos)), float(np.sum(pred & ~pos))
    fn, tn = float(np.sum(~pred & pos)), float(np.sum(~pred & ~pos))
    f1_pos, f1_neg = _f1(tp, fp, fn), _f1(tn, fn, fp)
    return {
        "f1_macro": (f1_pos + f1_neg) / 2,
        "f1_positive": f1_pos,
        "accuracy": (tp + tn) / len(labels),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
    }


def _binary_metrics(
    probs: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray = 0.5
) -> dict:
    """:func:`binary_metrics` of checked inputs (the bootstrap's inner loop).

    ``threshold`` is a scalar or ``[n]`` per subject (pooled folds).
    """
    out = _confusion_metrics(probs, labels, threshold)
    out["auc"], out["ece"] = _auc(probs, labels), _ece(probs, labels)
    return {k: out[k] for k in METRICS}


def _one_metric(metric: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """``(probs, labels) -> value`` of one of :data:`METRICS` on checked inputs."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
    if metric == "auc":
        return _auc
    if metric == "ece":
        return _ece
    return lambda p, y: _confusion_metrics(p, y, 0.5)[metric]


def binary_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of binary probabilities against 0/1 labels.

    Each subject is one prediction: its probability ``p`` of the positive class is compared with
    the frequency of positive labels among subjects of similar ``p`` (not the top-label
    confidence). With ``B = bins`` equal-width bins of ``p``,
    ``ECE = sum_b n_b / n |mean(y)_b - mean(p)_b|``. Bins are the package's one convention,
    :func:`osteo_jax.eval.calibration.calibration_bins`: right-closed, ``((b-1)/B, b/B]``, a
    probability of exactly ``b/B`` in bin ``b`` and ``p = 0`` in the first. The segmenter's
    per-pixel ECEs are in :mod:`osteo_jax.eval.calibration` (top label, same bins).

    Args:
      probs: ``[n]`` probabilities in ``[0, 1]``.
      labels: ``[n]`` 0/1.
      bins: number of bins over ``[0, 1]``.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1: {bins}")
    probs, labels = check_probabilities(probs, labels)
    return _ece(probs, labels, bins)


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """F1 (macro, positive class), AUC, accuracy, sensitivity, specificity, ECE.

    Args:
      probs: ``[n]`` probability of the positive class (osteoporosis), ``n >= 1``.
      labels: ``[n]`` 0/1.
      threshold: predicted positive when ``probs >= threshold``.

    Returns:
      ``{metric: float}`` in the order of :data:`METRICS`; AUC is NaN when one class is
      missing, sensitivity (specificity) when there is no positive (negative).
    """
    if not 0 <= threshold <= 1:  # NaN fails too
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    probs, labels = check_probabilities(probs, labels)
    return _binary_metrics(probs, labels, threshold)


def subject_metrics(probs: np.ndarray, segments: SegmentSet) -> dict[str, float]:
    """:func:`binary_metrics` of the subjects of ``segments`` from segment probabilities.

    The classifier loop's validation score (its ``evaluate_fn``; it keeps the best
    ``f1_macro``).
    """
    return binary_metrics(*subject_scores(probs, segments))


def roc_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, thresholds at every distinct score (ties grouped).

    Args:
      probs: ``[n]`` probabilities in ``[0, 1]``.
      labels: ``[n]`` 0/1.

    Returns:
      ``(fpr [k + 1], tpr [k + 1])`` from ``(0, 0)`` over the ``k`` distinct scores.
    """
    probs, labels = check_probabilities(probs, labels)
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order] == 1
    distinct = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr


def reliability_curve(
    probs: np.ndarray, labels: np.ndarray, bins: int = 10
) -> dict[str, np.ndarray]:
    """Per equal-width bin (right-closed, as :func:`binary_ece`): mean p, frequency, count.

    Args:
      probs: ``[n]`` probabilities in ``[0, 1]``.
      labels: ``[n]`` 0/1.
      bins: number of bins over ``[0, 1]``.

    Returns:
      ``{"confidence", "frequency", "count"}``, each ``[bins]`` (0 in an empty bin).
    """
    probs, labels = check_probabilities(probs, labels)
    idx = calibration_bins(probs, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf = np.bincount(idx, weights=probs, minlength=bins) / np.maximum(count, 1)
    freq = np.bincount(idx, weights=labels, minlength=bins) / np.maximum(count, 1)
    return {"confidence": conf, "frequency": freq, "count": count}


def paper_table(rows: Sequence[dict]) -> str:
    """Markdown table in the paper's format: model | ROI | backbone | F1 | AUC | accuracy.

    Each row: ``{"model", "roi", "backbone", "summary": summarise_seeds(...)}`` and optionally
    ``"image_ceiling_auc"`` (the synthetic cohort's image Bayes ceiling). F1 is the
    positive-class F1 as in the paper's tables; macro-F1, sensitivity and specificity follow.
    """

    def cell(s: dict) -> str:
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    head = (
        "| model | ROI | backbone | F1 | AUC | accuracy | macro-F1 | sensitivity | specificity "
        "| image ceiling AUC |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        s = r["summary"]
        ceiling = r.get("image_ceiling_auc")
        lines.append(
            f"| {r['model']} | {r['roi']} | {r['backbone']} | {cell(s['f1_positive'])} | "
            f"{cell(s['auc'])} | {cell(s['accuracy'])} | {cell(s['f1_macro'])} | "
            f"{cell(s['sensitivity'])} | {cell(s['specificity'])} | "
            f"{'' if ceiling is None else f'{ceiling:.2f}'} |"
        )
    return head + "\n".join(lines) + "\n"
