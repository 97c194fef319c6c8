"""Statistics of the classification metrics: intervals over seeds and folds, paired tests.

Over seeds (:func:`summarise_seeds`): mean and standard deviation, and a 95 % interval of the
seed-mean from a hierarchical bootstrap (:data:`CI_METHOD`) that covers both the training
randomness (seeds) and the finite test set (subjects). Over the folds of a k-fold protocol
(:func:`summarise_folds`): the metrics of the pooled test predictions and a subject bootstrap
(:data:`FOLD_CI_METHOD`). Two rows scored on the same test subjects are compared by a paired
hierarchical bootstrap (:func:`paired_difference`) or, for one test set, by DeLong's test
(:func:`delong_auc_difference`). Inputs are validated as in :mod:`osteo_jax.eval.cls_metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import stats

from osteo_jax.eval.cls_metrics import (
    METRICS,
    _binary_metrics,
    _check_all,
    _one_metric,
    binary_metrics,
    check_probabilities,
)

__all__ = [
    "CI_METHOD",
    "DELONG_METHOD",
    "FOLD_CI_METHOD",
    "PAIRED_METHOD",
    "bootstrap_ci",
    "delong_auc_difference",
    "paired_difference",
    "summarise_folds",
    "summarise_seeds",
]

# One-line descriptions of the intervals, for table footers and reports.
CI_METHOD = (
    "hierarchical bootstrap: seeds resampled, then test subjects within each seed "
    "(2.5/97.5 percentiles)"
)
FOLD_CI_METHOD = (
    "subject bootstrap of the pooled k-fold test predictions, each subject once "
    "(2.5/97.5 percentiles)"
)
PAIRED_METHOD = (
    "paired hierarchical bootstrap: seeds resampled, then the same test subjects for both rows "
    "within each seed (2.5/97.5 percentiles)"
)
DELONG_METHOD = "DeLong et al. (1988) paired AUC difference, normal approximation"

_Z95 = float(stats.norm.ppf(0.975))


def _resamples(
    sizes: Sequence[int], n_boot: int, rng: np.random.Generator, resample_seeds: bool = True
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Hierarchical bootstrap indices: per resample, ``[(seed, subject indices), ...]``.

    Draws ``len(sizes)`` seeds with replacement (or every seed once without
    ``resample_seeds``), then for each drawn seed ``s`` its ``sizes[s]`` subjects with
    replacement, independently for a seed drawn twice.
    """
    n_seeds = len(sizes)
    for _ in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds) if resample_seeds else range(n_seeds)
        yield [(int(s), rng.integers(0, sizes[s], sizes[s])) for s in seeds]


def _interval(draws: Sequence[float]) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the finite draws (NaN when there is none)."""
    v = np.asarray(draws, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def _check_thresholds(thresholds: Sequence[float] | None, n: int, unit: str) -> list[float]:
    """``thresholds`` as ``n`` floats in ``[0, 1]`` (0.5 each when None)."""
    if thresholds is None:
        return [0.5] * n
    t = [float(x) for x in thresholds]
    if len(t) != n:
        raise ValueError(f"{len(t)} thresholds for {n} {unit}s; need one per {unit}")
    bad = [x for x in t if not 0 <= x <= 1]  # NaN fails too
    if bad:
        raise ValueError(f"thresholds must be in [0, 1], got {bad[0]!r}")
    return t


def _bootstrap(
    per_seed: list[tuple[np.ndarray, np.ndarray]],
    cut: list[float | np.ndarray],
    n_boot: int,
    seed: int,
    fn: Callable,
    resample_seeds: bool,
    with_threshold: bool,
) -> dict[str, tuple[float, float]]:
    """:func:`bootstrap_ci` of checked inputs; ``cut[s]`` a scalar or per-subject thresholds."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for sample in _resamples([len(y) for _, y in per_seed], n_boot, rng, resample_seeds):
        accum: dict[str, list[float]] = {}
        for s, idx in sample:
            probs, labels = per_seed[s]
            if with_threshold:
                t = cut[s] if np.ndim(cut[s]) == 0 else cut[s][idx]
                values = fn(probs[idx], labels[idx], t)
            else:
                values = fn(probs[idx], labels[idx])
            for k, v in values.items():
                accum.setdefault(k, []).append(v)
        for k, vs in accum.items():
            draws.setdefault(k, []).append(float(np.mean(vs)))
    return {k: _interval(vs) for k, vs in draws.items()}


def bootstrap_ci(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    metric_fn: Callable[[np.ndarray, np.ndarray], dict] = binary_metrics,
    resample_seeds: bool = True,
    thresholds: Sequence[float] | None = None,
) -> dict[str, tuple[float, float]]:
    """95 % hierarchical bootstrap interval of the seed-mean of every metric (:data:`CI_METHOD`).

    Each resample draws ``S`` seeds with replacement, then for each drawn seed its ``n_s`` test
    subjects with replacement; the statistic is the mean over the drawn seeds of the metric.
    The interval thus covers the training randomness (which seed) as well as the finite test
    set (which subjects). With one seed it is the ordinary subject bootstrap (the same draws:
    drawing the one seed takes no randomness).

    Args:
      per_seed: ``(probs [n_s], labels [n_s])`` of each seed's test subjects.
      n_boot: resamples.
      seed: resampling seed.
      metric_fn: ``(probs, labels) -> dict`` of metrics.
      resample_seeds: False keeps every seed once per resample and resamples only subjects
        (the within-seed bootstrap, which ignores the spread between seeds).
      thresholds: ``[S]`` decision threshold of each seed (chosen on its validation
        subjects, :mod:`osteo_jax.eval.thresholds`), kept fixed within the resamples of that
        seed; None: 0.5 each. Only with the default ``metric_fn``.

    Returns:
      ``{metric: (low, high)}``: 2.5 and 97.5 percentiles; a resample where a metric is NaN
      (e.g. AUC of a resample with one class only) is dropped for that metric.

    Raises:
      ValueError: invalid inputs, or ``thresholds`` of the wrong length, outside ``[0, 1]`` or
        given with a custom ``metric_fn``.
    """
    per_seed = _check_all(per_seed, "seed")
    default = metric_fn is binary_metrics
    if thresholds is not None and not default:
        raise ValueError("thresholds apply to the default metric_fn (binary_metrics) only")
    cut = _check_thresholds(thresholds, len(per_seed), "seed")
    fn = _binary_metrics if default else metric_fn
    return _bootstrap(per_seed, cut, n_boot, seed, fn, resample_seeds, default)


def _nan_stat(fn: Callable[[np.ndarray], float], v: np.ndarray) -> float:
    return float(fn(v)) if np.isfinite(v).any() else float("nan")


def summarise_seeds(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: Sequence[float] | None = None,
) -> dict[str, dict]:
    """Summary of the repeated-split protocol over seeds.

    Args:
      per_seed: ``(probs [n_s], labels [n_s])`` of each seed's test subjects.
      n_boot: bootstrap resamples of the interval (0: no interval, NaN).
      seed: resampling seed.
      thresholds: ``[S]`` decision threshold of each seed for F1, accuracy, sensitivity and
        specificity (chosen on that seed's validation subjects); None: 0.5 each.

    Returns:
      ``{metric: {"mean", "std", "ci95": [lo, hi], "per_seed": [...]}}`` for each of
      :data:`METRICS`: mean and (population) std over seeds, NaN seeds ignored, and the
      hierarchical bootstrap interval of the seed-mean (:func:`bootstrap_ci`, described by
      :data:`CI_METHOD`).

    Raises:
      ValueError: invalid inputs or thresholds.
    """
    per_seed = _check_all(per_seed, "seed")
    cut = _check_thresholds(thresholds, len(per_seed), "seed")
    values = [_binary_metrics(p, y, t) for (p, y), t in zip(per_seed, cut, strict=True)]
    ci = _bootstrap(per_seed, cut, n_boot, seed, _binary_metrics, True, True) if n_boot else {}
    out = {}
    for k in METRICS:
        v = np.array([d[k] for d in values], np.float64)
        out[k] = {
            "mean": _nan_stat(np.nanmean, v),
            "std": _nan_stat(np.nanstd, v),
            "ci95": list(ci.get(k, (float("nan"), float("nan")))),
            "per_seed": v.tolist(),
        }
    return out


def summarise_folds(
    per_fold: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: Sequence[float] | None = None,
) -> dict[str, dict]:
    """Summary of a k-fold protocol, in the format of :func:`summarise_seeds`.

    The folds' test sets must be disjoint and cover the cohort (each subject once, e.g. from
    :func:`osteo_jax.data.splits.stratified_subject_folds`), so their union is one prediction
    per subject.

    With per-fold ``thresholds`` each fold's subjects are classified by that fold's own
    threshold and the confusion counts pooled: the pooled F1, accuracy, sensitivity and
    specificity are those of the union of the folds' decisions (a subject keeps its fold's
    threshold in the bootstrap too). AUC and ECE pool the probabilities as without thresholds.

    Args:
      per_fold: ``(probs [n_f], labels [n_f])`` of each fold's test subjects.
      n_boot: bootstrap resamples of the interval (0: no interval, NaN).
      seed: resampling seed.
      thresholds: ``[k]`` decision threshold of each fold (chosen on its validation
        subjects); None: 0.5 each.

    Returns:
      ``{metric: {"mean", "std", "ci95": [lo, hi], "per_seed": [...]}}``: ``mean`` is the
      metric of the pooled test predictions, ``std`` the (population) std over folds, ``ci95``
      a subject bootstrap of the pooled set (:data:`FOLD_CI_METHOD`) and ``per_seed`` the
      per-fold values.

    Raises:
      ValueError: invalid inputs or thresholds.
    """
    per_fold = _check_all(per_fold, "fold")
    cut = _check_thresholds(thresholds, len(per_fold), "fold")
    pooled = (np.concatenate([p for p, _ in per_fold]), np.concatenate([y for _, y in per_fold]))
    if thresholds is None:
        pooled_cut: float | np.ndarray = 0.5
    else:  # each subject its fold's threshold
        pooled_cut = np.concatenate(
            [np.full(len(y), t) for (_, y), t in zip(per_fold, cut, strict=True)]
        )
    point = _binary_metrics(*pooled, pooled_cut)
    values = [_binary_metrics(p, y, t) for (p, y), t in zip(per_fold, cut, strict=True)]
    ci = (
        _bootstrap([pooled], [pooled_cut], n_boot, seed, _binary_metrics, True, True)
        if n_boot
        else {}
    )
    out = {}
    for k in METRICS:
        v = np.array([d[k] for d in values], np.float64)
        out[k] = {
            "mean": point[k],
            "std": _nan_stat(np.nanstd, v),
            "ci95": list(ci.get(k, (float("nan"), float("nan")))),
            "per_seed": v.tolist(),
        }
    return out


def paired_difference(
    per_seed: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    metric: str = "auc",
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Difference of a metric between two rows scored on the same test subjects.

    ``d = mean_s [metric(a_s) - metric(b_s)]`` over seeds (NaN seeds ignored). The interval is
    a paired hierarchical bootstrap (:data:`PAIRED_METHOD`): the seeds drawn as in
    :func:`bootstrap_ci` and, within a drawn seed, the *same* subject indices for ``a`` and
    ``b``, so the correlation between the rows cancels. The two-sided p-value is
    ``min(1, 2 min(k_<=0 + 1, k_>=0 + 1) / (B + 1))`` over the ``B`` finite resamples
    (``k_<=0`` of them with ``d* <= 0``), never exactly 0.

    Args:
      per_seed: ``(probs_a [n_s], probs_b [n_s], labels [n_s])`` per seed, the same subjects in
        the same order for both rows.
      metric: one of :data:`METRICS`.
      n_boot: resamples.
      seed: resampling seed.

    Returns:
      ``{"metric", "difference", "ci95": [lo, hi], "p_value", "excludes_zero", "n_subjects",
      "n_seeds", "method"}``; ``n_subjects`` is the total over seeds.
    """
    fn = _one_metric(metric)
    if len(per_seed) == 0:
        raise ValueError("no seeds: need (probs_a, probs_b, labels) of at least one seed")
    data = []
    for k, (pa, pb, y) in enumerate(per_seed):
        pa, y = check_probabilities(pa, y, what=f"seed {k} probs_a")
        pb, _ = check_probabilities(pb, y, what=f"seed {k} probs_b")
        data.append((pa, pb, y))

    def diff(pa: np.ndarray, pb: np.ndarray, y: np.ndarray) -> float:
        return fn(pa, y) - fn(pb, y)

    point = np.array([diff(*d) for d in data], np.float64)
    rng = np.random.default_rng(seed)
    draws = []
    for sample in _resamples([len(d[2]) for d in data], n_boot, rng):
        draws.append(np.mean([diff(*(x[idx] for x in data[s])) for s, idx in sample]))
    draws = np.asarray(draws, np.float64)
    draws = draws[np.isfinite(draws)]
    lo, hi = _interval(draws)
    n_ok = len(draws)
    if n_ok:
        tail = min(np.sum(draws <= 0), np.sum(draws >= 0)) + 1
        p_value = min(1.0, 2.0 * tail / (n_ok + 1))
    else:
        p_value = float("nan")
    return {
        "metric": metric,
        "difference": _nan_stat(np.nanmean, point),
        "ci95": [lo, hi],
        "p_value": float(p_value),
        "excludes_zero": bool(lo > 0 or hi < 0),
        "n_subjects": int(sum(len(d[2]) for d in data)),
        "n_seeds": len(data),
        "method": PAIRED_METHOD,
    }


def _placements(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components from midranks (Sun & Xu 2014).

    Returns:
      ``(v10 [m], v01 [n])``: for each positive the fraction of negatives scored below it, for
      each negative the fraction of positives scored above it, ties counting one half.
    """
    rank = stats.rankdata(scores)
    pos, neg = scores[positive], scores[~positive]
    v10 = (rank[positive] - stats.rankdata(pos)) / len(neg)
    v01 = 1.0 - (rank[~positive] - stats.rankdata(neg)) / len(pos)
    return v10, v01


def delong_auc_difference(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray) -> dict:
    """DeLong's test of the difference of two correlated AUCs on one test set.

    DeLong, DeLong & Clarke-Pearson (1988), Biometrics 44:837. With the placements
    ``V10_r(x_i) = mean_j psi(x_i, y_j)`` over the ``n`` negatives ``y`` for each of the ``m``
    positives ``x`` (``psi = 1`` above, 1/2 tied, 0 below) and ``V01_r(y_j)`` likewise over the
    positives, ``AUC_r = mean V10_r`` and ``Var(AUC_a - AUC_b) = c' S10 c / m + c' S01 c / n``
    with ``c = (1, -1)`` and ``S10``, ``S01`` the 2 x 2 sample covariances of the placements.

    Args:
      probs_a: ``[n]`` probabilities of row a.
      probs_b: ``[n]`` probabilities of row b, the same subjects in the same order.
      labels: ``[n]`` 0/1, at least two of each class.

    Returns:
      ``{"auc_a", "auc_b", "difference" (a - b), "se", "ci95": [lo, hi] (normal), "z",
      "p_value" (two-sided), "method"}``; with ``se == 0`` (e.g. identical rows) ``z`` is NaN
      and ``p_value`` is 1 when the difference is 0, else 0.
    """
    pa, y = check_probabilities(probs_a, labels, what="probs_a")
    pb, _ = check_probabilities(probs_b, y, what="probs_b")
    positive = y == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two positives and two negatives: {m}, {n}")
    (a10, a01), (b10, b01) = _placements(pa, positive), _placements(pb, positive)
    auc_a, auc_b = float(a10.mean()), float(b10.mean())
    c = np.array([1.0, -1.0])
    var = c @ np.cov(np.stack([a10, b10])) @ c / m + c @ np.cov(np.stack([a01, b01])) @ c / n
    se = float(np.sqrt(max(var, 0.0)))
    d = auc_a - auc_b
    if se > 0:
        z = d / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p_value = float("nan"), 1.0 if d == 0 else 0.0
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": d,
        "se": se,
        "ci95": [d - _Z95 * se, d + _Z95 * se],
        "z": z,
        "p_value": p_value,
        "method": DELONG_METHOD,
    }
