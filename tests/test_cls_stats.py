"""Statistics of the evaluation protocol against references written here, not the implementation.

Input checks, the hierarchical bootstrap (seeds, then subjects), the k-fold summary, the paired
bootstrap and DeLong's test of two AUCs, and stratified subject-wise k-fold splits.
"""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from osteo_jax.data.splits import stratified_subject_folds
from osteo_jax.eval.cls_metrics import (
    METRICS,
    binary_ece,
    binary_metrics,
    check_probabilities,
    reliability_curve,
    roc_curve,
)
from osteo_jax.eval.cls_stats import (
    CI_METHOD,
    FOLD_CI_METHOD,
    PAIRED_METHOD,
    bootstrap_ci,
    delong_auc_difference,
    paired_difference,
    summarise_folds,
    summarise_seeds,
)

# ------------------------------------------------------------------------ independent references


def _auc_ref(probs, labels):
    """Mann-Whitney AUC over all (positive, negative) pairs, ties one half."""
    pos, neg = probs[labels == 1], probs[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _percentiles(draws):
    draws = np.asarray(draws)
    draws = draws[np.isfinite(draws)]
    return np.percentile(draws, 2.5), np.percentile(draws, 97.5)


def _naive_hierarchical(per_seed, stat, n_boot, rng, resample_seeds=True):
    """Seeds with replacement, then each drawn seed's subjects; mean of ``stat`` over seeds."""
    out = []
    for _ in range(n_boot):
        if resample_seeds:
            seeds = [int(rng.integers(len(per_seed))) for _ in per_seed]
        else:
            seeds = list(range(len(per_seed)))
        vals = []
        for s in seeds:
            n = len(per_seed[s][-1])
            idx = np.array([int(rng.integers(n)) for _ in range(n)])
            vals.append(stat(*(x[idx] for x in per_seed[s])))
        out.append(np.mean(vals))
    return _percentiles(out)


def _delong_brute_force(a, b, labels):
    """Placements by explicit double loops and their sample covariances (DeLong 1988)."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    m, n = len(pos), len(neg)
    v10, v01 = np.zeros((2, m)), np.zeros((2, n))
    for r, s in enumerate((a, b)):
        for i, pi in enumerate(pos):
            for j, nj in enumerate(neg):
                psi = 1.0 if s[pi] > s[nj] else 0.5 if s[pi] == s[nj] else 0.0
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    auc = v10.mean(axis=1)
    s10, s01 = np.zeros((2, 2)), np.zeros((2, 2))
    for r in range(2):
        for t in range(2):
            s10[r, t] = sum((v10[r, i] - auc[r]) * (v10[t, i] - auc[t]) for i in range(m)) / (m - 1)
            s01[r, t] = sum((v01[r, j] - auc[r]) * (v01[t, j] - auc[t]) for j in range(n)) / (n - 1)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc, var


def _scored(rng, n, separation, prevalence=0.3):
    """Labels and probabilities whose AUC grows with ``separation``."""
    labels = (rng.random(n) < prevalence).astype(np.int64)
    labels[:2] = (0, 1)
    logits = separation * (labels - 0.5) + rng.standard_normal(n)
    return 1 / (1 + np.exp(-logits)), labels


# ------------------------------------------------------------------------------- input checks

_GOOD_P = np.array([0.1, 0.4, 0.6, 0.9, 0.5])
_GOOD_Y = np.array([0, 0, 1, 1, 1])


def _with(values, index, value):
    out = np.array(values, np.float64)
    out[index] = value
    return out


_BAD_INPUTS = [
    (_with(_GOOD_P, 3, np.nan), _GOOD_Y, r"NaN or infinite probability in 1 of 5 .*index 3"),
    (_with(_GOOD_P, 1, np.inf), _GOOD_Y, r"NaN or infinite probability in 1 of 5 .*index 1"),
    (_with(_GOOD_P, 2, 1.5), _GOOD_Y, r"outside \[0, 1\] in 1 of 5 .*index 2: 1.5"),
    (_with(_GOOD_P, 0, -0.1), _GOOD_Y, r"outside \[0, 1\] in 1 of 5 .*index 0"),
    (_GOOD_P, np.array([0, 0, 2, 1, 3]), r"0 or 1.* 2 of 5 .*index 2: 2"),
    (np.array([]), np.array([], np.int64), r"empty \(n = 0\)"),
    (_GOOD_P, _GOOD_Y[:4], r"equal 1-D shapes.*\(5,\).*\(4,\)"),
    (_GOOD_P.reshape(5, 1), _GOOD_Y.reshape(5, 1), "equal 1-D shapes"),
]


@pytest.mark.parametrize("probs,labels,message", _BAD_INPUTS)
def test_check_probabilities_names_the_problem(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        check_probabilities(probs, labels)
    with pytest.raises(ValueError, match="^seed 4: "):
        check_probabilities(probs, labels, what="seed 4")


@pytest.mark.parametrize(
    "call",
    [
        lambda p, y: binary_metrics(p, y),
        lambda p, y: binary_ece(p, y),
        lambda p, y: roc_curve(p, y),
        lambda p, y: reliability_curve(p, y),
        lambda p, y: bootstrap_ci([(p, y)], n_boot=3),
        lambda p, y: summarise_seeds([(_GOOD_P, _GOOD_Y), (p, y)], n_boot=3),
        lambda p, y: summarise_folds([(p, y)], n_boot=3),
        lambda p, y: paired_difference([(p, _GOOD_P[: len(y)], y)], n_boot=3),
        lambda p, y: paired_difference([(_GOOD_P[: len(y)], p, y)], n_boot=3),
        lambda p, y: delong_auc_difference(p, p, y),
    ],
)
@pytest.mark.parametrize("probs,labels,message", _BAD_INPUTS[:6])
def test_every_function_checks_its_inputs(call, probs, labels, message):
    # Before the checks a NaN probability gave an AUC of 1.0 or 0.5 and n = 0 divided by 0.
    with pytest.raises(ValueError, match=message):
        call(probs, labels)


def test_check_names_the_seed_and_row_and_accepts_valid_input():
    with pytest.raises(ValueError, match="seed 1: NaN"):
        summarise_seeds([(_GOOD_P, _GOOD_Y), (_with(_GOOD_P, 0, np.nan), _GOOD_Y)], n_boot=0)
    with pytest.raises(ValueError, match="fold 0: empty"):
        summarise_folds([(np.array([]), np.array([]))], n_boot=0)
    with pytest.raises(ValueError, match="seed 0 probs_b: probability outside"):
        paired_difference([(_GOOD_P, _with(_GOOD_P, 4, 2.0), _GOOD_Y)], n_boot=3)
    with pytest.raises(ValueError, match="no seeds"):
        summarise_seeds([], n_boot=3)
    with pytest.raises(ValueError, match="no seeds"):
        paired_difference([], n_boot=3)
    p, y = check_probabilities([0.0, 1.0, 0.5], np.array([True, False, True]))
    assert p.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(y, [1, 0, 1])
    # One class only is valid input (the AUC is then undefined, not an error).
    assert np.isnan(binary_metrics(np.array([0.2, 0.7]), np.array([1, 1]))["auc"])


# ------------------------------------------------------------------- hierarchical bootstrap


def test_one_seed_is_the_subject_bootstrap():
    # With one seed the seed draw is always seed 0 (and takes no randomness), so the interval
    # is the plain subject bootstrap with the same draws.
    probs, labels = _scored(np.random.default_rng(0), 40, 1.5)
    got = bootstrap_ci([(probs, labels)], n_boot=300, seed=11)
    rng = np.random.default_rng(11)
    draws = {k: [] for k in ("auc", "accuracy")}
    for _ in range(300):
        idx = rng.integers(0, len(labels), len(labels))
        draws["auc"].append(skm.roc_auc_score(labels[idx], probs[idx]))
        draws["accuracy"].append(skm.accuracy_score(labels[idx], probs[idx] >= 0.5))
    for k, v in draws.items():
        np.testing.assert_allclose(got[k], _percentiles(v), rtol=0, atol=1e-12, err_msg=k)


def test_one_seed_matches_an_independent_subject_bootstrap():
    # Different random draws: the two intervals agree up to Monte-Carlo error.
    probs, labels = _scored(np.random.default_rng(1), 60, 1.5)
    got = bootstrap_ci([(probs, labels)], n_boot=2000, seed=0)["auc"]
    ref = _naive_hierarchical([(probs, labels)], _auc_ref, 2000, np.random.default_rng(99))
    width = ref[1] - ref[0]
    assert abs(got[0] - ref[0]) < 0.1 * width and abs(got[1] - ref[1]) < 0.1 * width


@pytest.fixture(scope="module")
def disagreeing_seeds():
    """Four seeds whose models differ a lot (AUC about 0.55 to 0.99)."""
    rng = np.random.default_rng(4)
    return [_scored(rng, 80, sep) for sep in (0.2, 1.0, 2.0, 4.0)]


def test_hierarchical_interval_covers_the_spread_between_seeds(disagreeing_seeds):
    aucs = np.array([skm.roc_auc_score(y, p) for p, y in disagreeing_seeds])
    assert aucs.max() - aucs.min() > 0.25
    got = bootstrap_ci(disagreeing_seeds, n_boot=400, seed=0)["auc"]
    assert np.isfinite(got).all() and got[0] < aucs.mean() < got[1]
    within = _naive_hierarchical(
        disagreeing_seeds, _auc_ref, 400, np.random.default_rng(5), resample_seeds=False
    )
    hier = _naive_hierarchical(disagreeing_seeds, _auc_ref, 400, np.random.default_rng(6))
    # Within-seed resampling sees only the test-set noise; the seed spread widens the interval.
    assert got[1] - got[0] > 2 * (within[1] - within[0])
    assert abs((got[1] - got[0]) - (hier[1] - hier[0])) < 0.25 * (hier[1] - hier[0])
    # The seed-mean's standard error alone is a lower bound of the half-width's scale.
    se_seeds = aucs.std(ddof=1) / math.sqrt(len(aucs))
    assert got[1] - got[0] > 2 * se_seeds


def test_summarise_seeds_uses_the_hierarchical_interval(disagreeing_seeds):
    summary = summarise_seeds(disagreeing_seeds, n_boot=200, seed=3)
    assert set(summary) == set(METRICS)
    ci = bootstrap_ci(disagreeing_seeds, n_boot=200, seed=3)
    for k in METRICS:
        assert set(summary[k]) == {"mean", "std", "ci95", "per_seed"}
        assert summary[k]["ci95"] == list(ci[k])
    aucs = [skm.roc_auc_score(y, p) for p, y in disagreeing_seeds]
    assert summary["auc"]["per_seed"] == pytest.approx(aucs, abs=1e-12)
    assert summary["auc"]["mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert "hierarchical" in CI_METHOD and "seeds" in CI_METHOD


def test_one_class_resamples_are_dropped():
    # One positive among five: a resample without it has no AUC; with it the AUC is 1.
    probs, labels = np.array([0.2, 0.3, 0.9, 0.4, 0.1]), np.array([0, 0, 1, 0, 0])
    ci = bootstrap_ci([(probs, labels)], n_boot=200, seed=0)
    assert ci["auc"] == (1.0, 1.0)
    assert all(np.isfinite(ci[k]).all() for k in ("accuracy", "specificity", "ece"))


# ------------------------------------------------------------------------------------ k-fold


def test_summarise_folds_pools_the_test_predictions():
    rng = np.random.default_rng(8)
    per_fold = [_scored(rng, n, 1.5) for n in (30, 31, 29, 30)]
    got = summarise_folds(per_fold, n_boot=300, seed=2)
    assert set(got) == set(METRICS)
    p_all = np.concatenate([p for p, _ in per_fold])
    y_all = np.concatenate([y for _, y in per_fold])
    fold_auc = np.array([skm.roc_auc_score(y, p) for p, y in per_fold])
    fold_f1 = np.array([skm.f1_score(y, p >= 0.5) for p, y in per_fold])
    assert got["auc"]["mean"] == pytest.approx(skm.roc_auc_score(y_all, p_all), abs=1e-12)
    assert got["f1_positive"]["mean"] == pytest.approx(skm.f1_score(y_all, p_all >= 0.5))
    assert got["auc"]["std"] == pytest.approx(fold_auc.std(), abs=1e-12)
    assert got["f1_positive"]["per_seed"] == pytest.approx(fold_f1.tolist(), abs=1e-12)
    # The interval is the plain subject bootstrap of the pooled set (same draws).
    rng = np.random.default_rng(2)
    draws = []
    for _ in range(300):
        idx = rng.integers(0, len(y_all), len(y_all))
        draws.append(skm.roc_auc_score(y_all[idx], p_all[idx]))
    np.testing.assert_allclose(got["auc"]["ci95"], _percentiles(draws), rtol=0, atol=1e-12)
    assert "pooled" in FOLD_CI_METHOD
    assert set(summarise_folds(per_fold, n_boot=0)["ece"]) == {"mean", "std", "ci95", "per_seed"}


# -------------------------------------------------------------------------- paired comparison


@pytest.fixture(scope="module")
def paired_seeds():
    """Three seeds: row a sees the label clearly, row b is a noisier score of the same subjects."""
    rng = np.random.default_rng(12)
    out = []
    for _ in range(3):
        labels = (rng.random(90) < 0.35).astype(np.int64)
        labels[:2] = (0, 1)
        shared = rng.standard_normal(90)
        a = 1 / (1 + np.exp(-(2.5 * (labels - 0.5) + 0.6 * shared)))
        b = 1 / (1 + np.exp(-(0.7 * (labels - 0.5) + 0.6 * shared + rng.standard_normal(90))))
        out.append((a, b, labels))
    return out


def test_paired_identical_and_monotone_rows_differ_by_exactly_zero(paired_seeds):
    same = [(a, a.copy(), y) for a, _, y in paired_seeds]
    for metric in ("auc", "accuracy", "ece"):
        got = paired_difference(same, metric=metric, n_boot=100, seed=0)
        assert got["difference"] == 0.0 and got["ci95"] == [0.0, 0.0], metric
        assert got["p_value"] == 1.0 and got["excludes_zero"] is False
    # AUC depends on the ranks only: a strictly monotone transform leaves every resample's
    # AUC unchanged, even where ties are present.
    tied = [(np.round(a * 10) / 10, b, y) for a, b, y in paired_seeds]
    monotone = [(a, a**3, y) for a, _, y in tied]
    got = paired_difference(monotone, metric="auc", n_boot=100, seed=0)
    assert got["difference"] == 0.0 and got["ci95"] == [0.0, 0.0]
    dl = delong_auc_difference(*monotone[0])
    assert dl["difference"] == 0.0 and dl["se"] == 0.0 and dl["p_value"] == 1.0


def test_paired_difference_when_a_is_better(paired_seeds):
    got = paired_difference(paired_seeds, metric="auc", n_boot=1000, seed=0)
    assert set(got) >= {
        "metric", "difference", "ci95", "p_value", "excludes_zero", "n_subjects", "method"
    }  # fmt: skip
    diffs = [skm.roc_auc_score(y, a) - skm.roc_auc_score(y, b) for a, b, y in paired_seeds]
    assert got["difference"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert got["metric"] == "auc" and got["method"] == PAIRED_METHOD
    assert got["n_subjects"] == sum(len(y) for *_, y in paired_seeds)
    lo, hi = got["ci95"]
    assert isinstance(lo, float) and isinstance(hi, float)
    assert 0 < lo < got["difference"] < hi and got["excludes_zero"] is True
    # No resample favours b: the p-value is at its floor 2 / (B + 1).
    assert got["p_value"] == pytest.approx(2 / 1001)
    # A naive paired hierarchical bootstrap (other draws) gives the same interval up to
    # Monte-Carlo error.
    ref = _naive_hierarchical(
        paired_seeds,
        lambda a, b, y: _auc_ref(a, y) - _auc_ref(b, y),
        1000,
        np.random.default_rng(77),
    )
    width = ref[1] - ref[0]
    assert abs(lo - ref[0]) < 0.15 * width and abs(hi - ref[1]) < 0.15 * width


def test_paired_bootstrap_is_paired(paired_seeds):
    # The same subject indices for a and b: the correlated noise cancels, so the paired
    # interval is much narrower than one resampling a and b independently.
    rng = np.random.default_rng(0)
    a, y = _scored(rng, 90, 1.2)
    b = 1 / (1 + np.exp(-(np.log(a / (1 - a)) + 0.5 * rng.standard_normal(90))))
    got = paired_difference([(a, b, y)], n_boot=500, seed=0)
    rng = np.random.default_rng(3)
    unpaired = []
    for _ in range(500):
        i, j = rng.integers(0, 90, 90), rng.integers(0, 90, 90)
        unpaired.append(_auc_ref(a[i], y[i]) - _auc_ref(b[j], y[j]))
    lo, hi = _percentiles(unpaired)
    assert got["ci95"][1] - got["ci95"][0] < 0.5 * (hi - lo)


def test_paired_difference_errors(paired_seeds):
    a, b, y = paired_seeds[0]
    with pytest.raises(ValueError, match="unknown metric 'brier'"):
        paired_difference(paired_seeds, metric="brier")
    with pytest.raises(ValueError, match="probs_b: probs and labels must be equal 1-D shapes"):
        paired_difference([(a, b[:-1], y)], n_boot=3)


# ---------------------------------------------------------------------------------- DeLong


@pytest.mark.parametrize("seed,n,grid", [(0, 24, 0), (1, 40, 8), (2, 61, 4)])
def test_delong_matches_brute_force_placements(seed, n, grid):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    y[:2] = (0, 1)
    a = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    b = np.clip(0.5 * a + 0.5 * rng.random(n), 0, 1)
    if grid:  # coarse grid: many ties within and across classes
        a, b = np.round(a * grid) / grid, np.round(b * grid) / grid
    got = delong_auc_difference(a, b, y)
    auc, var = _delong_brute_force(a, b, y)
    assert got["auc_a"] == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)
    assert got["auc_b"] == pytest.approx(skm.roc_auc_score(y, b), abs=1e-12)
    np.testing.assert_allclose([got["auc_a"], got["auc_b"]], auc, rtol=0, atol=1e-12)
    assert got["difference"] == pytest.approx(auc[0] - auc[1], abs=1e-12)
    assert got["se"] == pytest.approx(math.sqrt(var), rel=1e-10)
    z = (auc[0] - auc[1]) / math.sqrt(var)
    assert got["z"] == pytest.approx(z, rel=1e-10)
    assert got["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    lo, hi = got["ci95"]
    assert lo == pytest.approx(got["difference"] - 1.959964 * got["se"], abs=1e-6)
    assert hi == pytest.approx(got["difference"] + 1.959964 * got["se"], abs=1e-6)
    assert all(isinstance(v, float) for v in (got["se"], got["p_value"], lo, hi))


def test_delong_agrees_with_the_paired_bootstrap():
    rng = np.random.default_rng(21)
    n = 300
    y = (rng.random(n) < 0.35).astype(np.int64)
    shared = rng.standard_normal(n)
    a = 1 / (1 + np.exp(-(1.8 * (y - 0.5) + 0.7 * shared)))
    b = 1 / (1 + np.exp(-(0.9 * (y - 0.5) + 0.7 * shared + 0.6 * rng.standard_normal(n))))
    dl = delong_auc_difference(a, b, y)
    boot = paired_difference([(a, b, y)], n_boot=1500, seed=0)
    assert dl["difference"] == pytest.approx(boot["difference"], abs=1e-12)
    assert dl["ci95"][0] > 0 and boot["ci95"][0] > 0 and dl["p_value"] < 1e-3
    half_dl = dl["ci95"][1] - dl["ci95"][0]
    half_boot = boot["ci95"][1] - boot["ci95"][0]
    assert 0.8 < half_boot / half_dl < 1.25
    assert abs(dl["ci95"][0] - boot["ci95"][0]) < 0.15 * half_dl


def test_delong_needs_two_of_each_class():
    with pytest.raises(ValueError, match="two positives and two negatives"):
        delong_auc_difference(np.array([0.1, 0.2, 0.9]), np.array([0.3, 0.2, 0.8]), [0, 0, 1])


# ------------------------------------------------------------------------------ k-fold splits


@pytest.mark.parametrize("k", [2, 5, 10])
def test_folds_partition_subjects_stratified(cohort_images, k):
    subjects, labels = cohort_images
    subject_label = dict(zip(subjects.tolist(), labels.tolist(), strict=True))
    n_class = {v: sum(c == v for c in subject_label.values()) for v in (0, 1)}
    folds = stratified_subject_folds(subjects, labels, k, seed=0)
    assert len(folds) == k
    test_sets = []
    for train, val, test in folds:
        parts = (train, val, test)
        for s in parts:
            assert s.dtype.kind == "i" and np.all(np.diff(s) > 0) and len(s)
        # Every image in exactly one part; no subject in two parts.
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(subjects)))
        sets = [set(subjects[s].tolist()) for s in parts]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        test_sets.append(sets[2])
        for v in (0, 1):
            # Test: within one subject of n / k per class. Validation: 1/9 of the rest.
            n_test = sum(subject_label[s] == v for s in sets[2])
            assert abs(n_test - n_class[v] / k) < 1, (v, n_test)
            n_val = sum(subject_label[s] == v for s in sets[1])
            assert abs(n_val - (n_class[v] - n_test) / 9) <= 0.5 + 1e-9, (v, n_val)
    # Every subject in exactly one test fold; fold sizes within one subject.
    assert sum(len(t) for t in test_sets) == len(subject_label)
    assert set().union(*test_sets) == set(subject_label)
    sizes = [len(t) for t in test_sets]
    assert max(sizes) - min(sizes) <= 1


def test_folds_deterministic_and_small_classes(cohort_images):
    subjects, labels = cohort_images
    a = stratified_subject_folds(subjects, labels, 5, seed=3)
    b = stratified_subject_folds(subjects, labels, 5, seed=3)
    c = stratified_subject_folds(subjects, labels, 5, seed=4)
    for fa, fb in zip(a, b, strict=True):
        for x, y in zip(fa, fb, strict=True):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(fa[2], fc[2]) for fa, fc in zip(a, c, strict=True))
    # Three remaining subjects of a class keep one in validation; no validation at 0.
    ids = np.array(["a", "b", "c", "d", "e", "f", "g", "h"])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    for train, val, test in stratified_subject_folds(ids, y, 4, seed=0):
        assert len(test) == 2 and len(val) == 2 and len(train) == 4
        assert sorted(y[val].tolist()) == [0, 1] and sorted(y[test].tolist()) == [0, 1]
    for train, val, _ in stratified_subject_folds(ids, y, 2, val_fraction=0.0):
        assert len(val) == 0 and len(train) == 4


def test_folds_errors(cohort_images):
    subjects, labels = cohort_images
    n_pos = len(set(subjects[labels == 1].tolist()))
    with pytest.raises(ValueError, match=r"k must be from 2 .*got k = 1"):
        stratified_subject_folds(subjects, labels, 1)
    with pytest.raises(ValueError, match=rf"smallest class \(label 1: {n_pos}\)"):
        stratified_subject_folds(subjects, labels, n_pos + 1)
    assert len(stratified_subject_folds(subjects, labels, n_pos)) == n_pos
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_subject_folds(subjects, labels, 5, val_fraction=1.0)
    with pytest.raises(ValueError, match="different labels"):
        stratified_subject_folds(np.array(["a", "a", "b", "c"]), np.array([0, 1, 0, 1]), 2)
