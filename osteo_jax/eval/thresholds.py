"""The decision threshold of the threshold-dependent metrics, chosen on validation subjects.

F1, accuracy, sensitivity and specificity classify a subject positive when its probability is
``>= t``. The classifier is trained with class-balanced cross-entropy, so its probabilities are
not calibrated to the cohort's prevalence and ``t = 0.5`` is not a natural operating point.
:func:`choose_threshold` picks ``t`` on held-out (validation) scores by a rule of
:data:`THRESHOLD_RULES`:

* ``"fixed"``: ``t = 0.5``, whatever the scores;
* ``"youden"``: the ``t`` that maximises Youden's ``J = sensitivity + specificity - 1``
  (Youden 1950, Cancer 3:32), i.e. the ROC point farthest above the diagonal;
* ``"f1"``: the ``t`` that maximises the macro-F1 (mean of the positive and negative F1).

Candidates are the midpoints between consecutive distinct scores (each gives one ROC point
other than the two trivial corners), so the chosen ``t`` lies between the validation scores and
does not sit on one of them. Ties are broken toward the candidate nearest 0.5, then the lower
one. This module needs no JAX.
"""

from __future__ import annotations

import numpy as np

from osteo_jax.config.choices import THRESHOLD_RULES
from osteo_jax.eval.cls_metrics import check_probabilities

__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_RULES",
    "candidate_thresholds",
    "choose_threshold",
    "threshold_words",
]

DEFAULT_THRESHOLD = 0.5  # the "fixed" rule, and the fallback of a one-class validation part


def candidate_thresholds(probs: np.ndarray) -> np.ndarray:
    """``[k - 1]`` midpoints between consecutive distinct scores, ascending.

    Args:
      probs: ``[n]`` scores with ``k`` distinct values.

    Returns:
      The midpoints (empty when ``k == 1``).
    """
    s = np.unique(np.asarray(probs, np.float64))
    return (s[:-1] + s[1:]) / 2


def _pick(values: np.ndarray, candidates: np.ndarray) -> float:
    """The candidate of the largest value; ties toward 0.5, then the lower candidate."""
    best = candidates[values == values.max()]
    distance = np.abs(best - DEFAULT_THRESHOLD)
    return float(best[distance == distance.min()].min())


def choose_threshold(probs: np.ndarray, labels: np.ndarray, rule: str = "fixed") -> float:
    """The decision threshold of a rule of :data:`THRESHOLD_RULES` on ``(probs, labels)``.

    With ``pred = probs >= t``, ``"youden"`` maximises ``TP / P - FP / N`` (compared exactly as
    the integer ``TP N - FP P``) and ``"f1"`` maximises ``(F1_pos + F1_neg) / 2`` with
    ``F1 = 2 TP / (2 TP + FP + FN)`` of each class, over :func:`candidate_thresholds`.

    Args:
      probs: ``[n]`` validation probabilities of the positive class.
      labels: ``[n]`` 0/1; both classes are needed except by ``"fixed"``.
      rule: ``"fixed"``, ``"youden"`` or ``"f1"``.

    Returns:
      ``t`` in ``[0, 1]``; 0.5 for ``"fixed"``, and for any rule when all scores are equal
      (no threshold separates them).

    Raises:
      ValueError: an unknown rule; probabilities or labels invalid
        (:func:`~osteo_jax.eval.cls_metrics.check_probabilities`: empty, NaN, outside
        ``[0, 1]``, labels not 0/1); or one class only for ``"youden"`` / ``"f1"``.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; one of {THRESHOLD_RULES}")
    probs, labels = check_probabilities(probs, labels, what="threshold scores")
    if rule == "fixed":
        return DEFAULT_THRESHOLD
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"threshold rule {rule!r} needs both classes, got {n_pos} positive and {n_neg} "
            "negative subjects"
        )
    t = candidate_thresholds(probs)
    if not len(t):
        return DEFAULT_THRESHOLD
    pred = probs[None, :] >= t[:, None]  # [k - 1, n]
    tp = (pred & pos).sum(1)
    fp = (pred & ~pos).sum(1)
    if rule == "youden":
        return _pick(tp * n_neg - fp * n_pos, t)
    fn, tn = n_pos - tp, n_neg - fp
    f1_pos = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    f1_neg = 2 * tn / np.maximum(2 * tn + fn + fp, 1)
    macro = (f1_pos + f1_neg) / 2
    # Equal F1s of different counts can differ in the last bit; compare to 1e-12.
    return _pick(np.where(macro >= macro.max() - 1e-12, 1.0, 0.0), t)


def threshold_words(rule: str) -> str:
    """How F1, accuracy, sensitivity and specificity were thresholded: a table footer sentence.

    Args:
      rule: one of :data:`THRESHOLD_RULES`.

    Returns:
      E.g. ``"Threshold 0.5 for F1, accuracy, sensitivity and specificity"`` (no full stop).

    Raises:
      ValueError: an unknown rule.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; one of {THRESHOLD_RULES}")
    if rule == "fixed":
        return f"Threshold {DEFAULT_THRESHOLD} for F1, accuracy, sensitivity and specificity"
    what = {"youden": "Youden's J", "f1": "macro-F1"}[rule]
    return (
        f"Threshold for F1, accuracy, sensitivity and specificity: the maximum {what} on each "
        f"part's validation subjects ({DEFAULT_THRESHOLD} where they hold one class)"
    )
