"""Classification metrics against scikit-learn and hand cases; subject-wise stratified splits."""

import numpy as np
import pytest
from sklearn import metrics as skm

from osteo_jax.data.splits import stratified_subject_split
from osteo_jax.eval.cls_metrics import (
    METRICS,
    binary_ece,
    binary_metrics,
    paper_table,
    roc_curve,
    subject_probabilities,
)
from osteo_jax.eval.cls_stats import bootstrap_ci, summarise_seeds


def _tied_case(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities on a coarse grid (many ties, some exactly at the 0.5 threshold)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(np.int64)
    labels[:2] = (0, 1)  # both classes present
    probs = np.clip(np.round((0.3 * labels + rng.random(n) * 0.7) * 8) / 8, 0, 1)
    return probs, labels


@pytest.mark.parametrize("seed,n", [(0, 25), (1, 60), (2, 200)])
@pytest.mark.parametrize("threshold", [0.5, 0.375])
def test_binary_metrics_match_sklearn(seed, n, threshold):
    probs, labels = _tied_case(seed, n)
    assert (probs == threshold).any()  # ties at the threshold count as positive
    got = binary_metrics(probs, labels, threshold=threshold)
    assert set(got) == set(METRICS)
    assert all(isinstance(v, float) and np.isfinite(v) for v in got.values())
    pred = (probs >= threshold).astype(np.int64)
    ref = {
        "f1_macro": skm.f1_score(labels, pred, average="macro", zero_division=0),
        "f1_positive": skm.f1_score(labels, pred, zero_division=0),
        "accuracy": skm.accuracy_score(labels, pred),
        "sensitivity": skm.recall_score(labels, pred, pos_label=1),
        "specificity": skm.recall_score(labels, pred, pos_label=0),
        "auc": skm.roc_auc_score(labels, probs),
    }
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_binary_metrics_degenerate_cases():
    labels = np.array([0, 0, 1, 1])
    # No predicted positive: positive-class F1 is 0 (sklearn's zero_division=0).
    got = binary_metrics(np.array([0.1, 0.2, 0.3, 0.4]), labels)
    assert got["f1_positive"] == 0.0 and got["sensitivity"] == 0.0 and got["specificity"] == 1.0
    assert got["f1_macro"] == pytest.approx(skm.f1_score(labels, [0, 0, 0, 0], average="macro"))
    assert got["auc"] == 1.0
    # One class only: AUC and specificity undefined.
    one = binary_metrics(np.array([0.2, 0.9]), np.array([1, 1]))
    assert np.isnan(one["auc"]) and np.isnan(one["specificity"]) and one["sensitivity"] == 0.5
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics(np.array([0.2, 0.9]), np.array([0, 2]))
    with pytest.raises(ValueError, match="shapes"):
        binary_metrics(np.array([0.2, 0.9]), np.array([0, 1, 1]))


@pytest.mark.parametrize("seed,n", [(0, 25), (3, 120)])
def test_roc_curve_matches_sklearn(seed, n):
    probs, labels = _tied_case(seed, n)
    fpr, tpr = roc_curve(probs, labels)
    ref_fpr, ref_tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    assert len(thresholds) == len(np.unique(probs)) + 1  # ties grouped, plus (0, 0)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-12)
    # The trapezoid area under the points is the rank AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(labels, probs))


def test_binary_ece_hand_case():
    probs = np.array([0.05, 0.15, 0.12, 0.95, 0.85, 0.55])
    labels = np.array([0, 1, 0, 1, 1, 0])
    # Bins (width 0.1): {0.05}: |0 - .05|; {0.15, 0.12}: |0.5 - 0.135|; {0.55}: .55;
    # {0.85}: .15; {0.95}: .05; weighted by 1/6, 2/6, 1/6, 1/6, 1/6.
    expected = (0.05 + 2 * 0.365 + 0.55 + 0.15 + 0.05) / 6
    assert binary_ece(probs, labels) == pytest.approx(expected)
    assert expected == pytest.approx(0.255)
    # p = 1 falls in the last bin; perfectly calibrated and maximally wrong extremes.
    assert binary_ece(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0
    assert binary_ece(np.array([1.0, 0.0]), np.array([0, 1])) == 1.0
    # Two bins: {0.05, 0.15, 0.12}: |1/3 - 0.10667|; {0.95, 0.85, 0.55}: |2/3 - 0.78333|.
    two = 0.5 * abs(1 / 3 - 0.32 / 3) + 0.5 * abs(2 / 3 - 2.35 / 3)
    assert binary_ece(probs, labels, bins=2) == pytest.approx(two)


def test_subject_probabilities_hand_case():
    probs = np.array([[0.2, 0.4, 0.9], [0.1, 0.3, 0.5], [0.6, 0.8, 1.0], [0.7, 0.7, 0.7]])
    valid = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], bool)
    subjects, p = subject_probabilities(probs, valid, np.array(["b", "a", "b", "c"]))
    np.testing.assert_array_equal(subjects, ["a", "b", "c"])
    # a: its one valid segment; b: five valid segments over two images; c: none -> 0.5.
    np.testing.assert_allclose(p, [0.1, (0.2 + 0.4 + 0.6 + 0.8 + 1.0) / 5, 0.5])
    assert p.dtype == np.float64
    with pytest.raises(ValueError, match="differ"):
        subject_probabilities(probs, valid[:, :2], np.array(["b", "a", "b", "c"]))


@pytest.fixture(scope="module")
def per_seed():
    rng = np.random.default_rng(7)
    out = []
    for _ in range(3):
        labels = (rng.random(80) < 0.3).astype(np.int64)
        probs = np.clip(0.35 + 0.3 * labels + 0.2 * rng.standard_normal(80), 0, 1)
        out.append((probs, labels))
    return out


def test_bootstrap_ci_contains_estimate_and_is_seeded(per_seed):
    ci = bootstrap_ci(per_seed, n_boot=200, seed=0)
    assert set(ci) == set(METRICS)
    point = {k: np.mean([binary_metrics(p, y)[k] for p, y in per_seed]) for k in METRICS}
    for k, (lo, hi) in ci.items():
        assert np.isfinite(lo) and np.isfinite(hi) and lo < hi, k
        assert lo <= point[k] <= hi, k
    assert bootstrap_ci(per_seed, n_boot=200, seed=0) == ci
    assert bootstrap_ci(per_seed, n_boot=200, seed=1) != ci


def test_summary_and_paper_table(per_seed):
    summary = summarise_seeds(per_seed, n_boot=0)
    f1 = np.array([skm.f1_score(y, p >= 0.5) for p, y in per_seed])
    assert summary["f1_positive"]["mean"] == pytest.approx(f1.mean())
    assert summary["f1_positive"]["std"] == pytest.approx(f1.std())
    assert summary["f1_positive"]["per_seed"] == pytest.approx(f1.tolist())
    row = {"model": "simclr", "roi": "segments", "backbone": "ResNet-18", "summary": summary}
    table = paper_table([dict(row, image_ceiling_auc=0.812)])
    lines = table.strip().split("\n")
    assert len(lines) == 3  # header, rule, one row
    assert lines[0].startswith("| model | ROI | backbone | F1 | AUC | accuracy")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:3] == ["simclr", "segments", "ResNet-18"]
    assert cells[3] == f"{f1.mean():.2f} ± {f1.std():.2f}"
    auc = summary["auc"]
    assert cells[4] == f"{auc['mean']:.2f} ± {auc['std']:.2f}"
    assert all(" ± " in c for c in cells[3:9])
    assert cells[9] == "0.81"
    assert paper_table([row]).strip().split("\n")[2].rstrip().endswith("|  |")


# ---------------------------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", [0, 1])
def test_split_is_a_subject_partition_stratified(cohort_images, seed):
    subjects, labels = cohort_images
    fractions = (0.8, 0.1, 0.1)
    splits = stratified_subject_split(subjects, labels, fractions, seed=seed)
    assert len(splits) == 3
    for s in splits:
        assert s.dtype.kind == "i" and np.all(np.diff(s) > 0)
    # Every image in exactly one split.
    np.testing.assert_array_equal(np.sort(np.concatenate(splits)), np.arange(len(subjects)))
    # No subject in two splits.
    sets = [set(subjects[s].tolist()) for s in splits]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # Each class cut by the fractions, within one subject.
    subject_label = dict(zip(subjects.tolist(), labels.tolist(), strict=True))
    for value in (0, 1):
        n_class = sum(v == value for v in subject_label.values())
        for k, frac in enumerate(fractions):
            got = sum(subject_label[s] == value for s in sets[k])
            assert abs(got - frac * n_class) <= 1, (value, k, got, n_class)
    n = len(subject_label)
    for k, frac in enumerate(fractions):
        assert abs(len(sets[k]) - frac * n) <= 2


def test_split_deterministic_per_seed(cohort_images):
    subjects, labels = cohort_images
    a = stratified_subject_split(subjects, labels, seed=5)
    b = stratified_subject_split(subjects, labels, seed=5)
    c = stratified_subject_split(subjects, labels, seed=6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_split_small_classes_and_errors():
    # Three subjects of a class: one each in train, val, test (every split keeps one).
    subjects = np.array(["a", "b", "c", "d", "d"])
    labels = np.array([1, 1, 1, 0, 0])
    train, val, test = stratified_subject_split(subjects, labels, seed=0)
    assert len(val) == 1 and len(test) == 1 and set(train.tolist()) >= {3, 4}
    with pytest.raises(ValueError, match="different labels"):
        stratified_subject_split(np.array(["a", "a", "b"]), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="fractions"):
        stratified_subject_split(subjects, labels, (0.8, 0.3, 0.1))
