"""Classification metrics of the evaluation protocol (PAPER.md section 4).

Per seed: subject probabilities (the mean of a subject's segment probabilities), the class by
a threshold (0.5 = argmax of two classes), and F1 (macro and positive class), AUC, accuracy,
sensitivity, specificity, ECE. Over seeds: mean and standard deviation, and a bootstrap 95 %
confidence interval of the mean over seeds (each seed's test subjects resampled with
replacement, the metric averaged over seeds, percentiles of that average). A table in the
paper's format and two figures (ROC with a bootstrap band, reliability diagram).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from osteo_jax.data.cohort import roc_auc

__all__ = [
    "METRICS",
    "binary_metrics",
    "bootstrap_ci",
    "expected_calibration_error",
    "paper_table",
    "reliability_curve",
    "roc_curve",
    "subject_probabilities",
    "summarise_seeds",
]

METRICS = ("f1_macro", "f1_positive", "auc", "accuracy", "sensitivity", "specificity", "ece")


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
    """
    segment_probs = np.asarray(segment_probs, np.float64)
    valid = np.asarray(valid, bool)
    if segment_probs.shape != valid.shape:
        raise ValueError(f"probs {segment_probs.shape} and valid {valid.shape} differ")
    subjects, inverse = np.unique(np.asarray(subject_ids), return_inverse=True)
    total = np.bincount(
        inverse, weights=(segment_probs * valid).sum(axis=1), minlength=len(subjects)
    )
    count = np.bincount(inverse, weights=valid.sum(axis=1), minlength=len(subjects))
    probs = np.where(count > 0, total / np.maximum(count, 1), 0.5)
    return subjects, probs


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom > 0 else 0.0


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of binary probabilities: ``sum_b n_b / n |mean(y)_b - mean(p)_b|`` over equal bins."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    idx = np.clip((probs * bins).astype(int), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return float(ece)


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """F1 (macro, positive class), AUC, accuracy, sensitivity, specificity, ECE.

    Args:
      probs: ``[n]`` probability of the positive class (osteoporosis).
      labels: ``[n]`` 0/1.
      threshold: predicted positive when ``probs >= threshold``.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 1:
        raise ValueError(
            f"probs and labels must be equal 1-D shapes: {probs.shape}, {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    pred = probs >= threshold
    pos = labels == 1
    tp, fp = float(np.sum(pred & pos)), float(np.sum(pred & ~pos))
    fn, tn = float(np.sum(~pred & pos)), float(np.sum(~pred & ~pos))
    f1_pos, f1_neg = _f1(tp, fp, fn), _f1(tn, fn, fp)
    both = pos.any() and (~pos).any()
    return {
        "f1_macro": (f1_pos + f1_neg) / 2,
        "f1_positive": f1_pos,
        "auc": roc_auc(probs, labels) if both else float("nan"),
        "accuracy": (tp + tn) / len(labels),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "ece": expected_calibration_error(probs, labels),
    }


def bootstrap_ci(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict] = binary_metrics,
) -> dict[str, tuple[float, float]]:
    """95 % bootstrap interval of the seed-mean of every metric.

    Args:
      per_seed: ``(probs, labels)`` of each seed's test subjects.
      n_boot: resamples.
      seed: resampling seed.
      metric_fn: ``(probs, labels) -> dict`` of metrics.

    Returns:
      ``{metric: (low, high)}`` (2.5 and 97.5 percentiles, NaN resamples dropped).
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        accum: dict[str, list[float]] = {}
        for probs, labels in per_seed:
            idx = rng.integers(0, len(labels), len(labels))
            for k, v in metric_fn(probs[idx], labels[idx]).items():
                accum.setdefault(k, []).append(v)
        for k, vs in accum.items():
            draws.setdefault(k, []).append(float(np.mean(vs)))
    out = {}
    for k, vs in draws.items():
        vs = np.asarray(vs)
        vs = vs[np.isfinite(vs)]
        out[k] = (
            (float(np.percentile(vs, 2.5)), float(np.percentile(vs, 97.5)))
            if len(vs)
            else (float("nan"), float("nan"))
        )
    return out


def summarise_seeds(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """``{metric: {"mean", "std", "ci95": [lo, hi], "per_seed": [...]}}`` over seeds."""
    values = [binary_metrics(p, y) for p, y in per_seed]
    ci = bootstrap_ci(per_seed, n_boot=n_boot, seed=seed) if n_boot else {}
    out = {}
    for k in METRICS:
        v = np.array([d[k] for d in values], np.float64)
        out[k] = {
            "mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
            "std": float(np.nanstd(v)) if np.isfinite(v).any() else float("nan"),
            "ci95": list(ci.get(k, (float("nan"), float("nan")))),
            "per_seed": v.tolist(),
        }
    return out


def roc_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of the ROC curve, thresholds at every distinct score (ties grouped)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
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
    """Per equal-width bin: mean probability, observed frequency and count."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.float64)
    idx = np.clip((probs * bins).astype(int), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    conf = np.bincount(idx, weights=probs, minlength=bins) / np.maximum(count, 1)
    freq = np.bincount(idx, weights=labels, minlength=bins) / np.maximum(count, 1)
    return {"confidence": conf, "frequency": freq, "count": count}


def paper_table(rows: Sequence[dict]) -> str:
    """Markdown table in the paper's format: model | ROI | backbone | F1 | AUC | accuracy.

    Each row: ``{"model", "roi", "backbone", "summary": summarise_seeds(...)}`` and optionally
    ``"oracle_auc"``. F1 is the positive-class F1 as in the paper's tables; macro-F1,
    sensitivity and specificity follow.
    """

    def cell(s: dict) -> str:
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    head = (
        "| model | ROI | backbone | F1 | AUC | accuracy | macro-F1 | sensitivity | specificity "
        "| oracle AUC |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        s = r["summary"]
        oracle = r.get("oracle_auc")
        lines.append(
            f"| {r['model']} | {r['roi']} | {r['backbone']} | {cell(s['f1_positive'])} | "
            f"{cell(s['auc'])} | {cell(s['accuracy'])} | {cell(s['f1_macro'])} | "
            f"{cell(s['sensitivity'])} | {cell(s['specificity'])} | "
            f"{'' if oracle is None else f'{oracle:.2f}'} |"
        )
    return head + "\n".join(lines) + "\n"
