"""Decision thresholds chosen on validation scores, against brute force with scikit-learn, and
the summaries' per-part thresholds against sklearn's accuracy and recall."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score
from sklearn.metrics import roc_curve as sk_roc_curve

from osteo_jax.config import ClsConfig
from osteo_jax.config.choices import THRESHOLD_RULES as CHOICES
from osteo_jax.eval.cls_stats import bootstrap_ci, summarise_folds, summarise_seeds
from osteo_jax.eval.thresholds import THRESHOLD_RULES, candidate_thresholds, choose_threshold


def _scores(seed, n=40, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    y[:2] = (0, 1)
    p = 1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(0, 1, n))))
    if ties:
        p = np.round(p, 1)
    return p, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_youden_is_the_best_roc_point(seed, ties):
    p, y = _scores(seed, ties=ties)
    t = choose_threshold(p, y, "youden")
    assert isinstance(t, float) and 0 <= t <= 1
    assert t not in set(p.tolist())  # a midpoint between scores
    fpr, tpr, thr = sk_roc_curve(y, p)
    j = tpr - fpr
    pred = p >= t
    assert np.isclose(recall_score(y, pred) + recall_score(1 - y, ~pred) - 1, j.max())
    # It is the ROC point of one of sklearn's best thresholds, just below that score.
    best = thr[np.isclose(j, j.max())]
    below = [s for s in best if np.isfinite(s) and np.array_equal(p >= s, pred)]
    assert below and t < min(below)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_f1_rule_is_brute_force_macro_f1(seed, ties):
    p, y = _scores(seed, ties=ties)
    t = choose_threshold(p, y, "f1")
    brute = [f1_score(y, p >= c, average="macro") for c in candidate_thresholds(p)]
    assert np.isclose(f1_score(y, p >= t, average="macro"), max(brute))


def test_hand_case_and_tie_rule():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    # Candidates 0.15 0.25 0.35 0.5 0.75: J = 1/3 2/3 1/3 2/3 1/3; ties 0.25 and 0.5 -> 0.5.
    assert choose_threshold(p, y, "youden") == pytest.approx(0.5)
    # Macro-F1 at 0.25 (4/5 + 4/5)/2 = 0.8; at 0.5 (4/5 + 4/5)/2 = 0.8; -> 0.5 again.
    assert choose_threshold(p, y, "f1") == pytest.approx(0.5)
    # Perfectly separated: the gap's midpoint.
    assert choose_threshold([0.1, 0.2, 0.7, 0.8], [0, 0, 1, 1], "youden") == pytest.approx(0.45)
    # Equal-distance tie around 0.5 -> the lower one.
    assert choose_threshold([0.2, 0.4, 0.6, 0.8], [0, 1, 0, 1], "youden") == pytest.approx(0.3)
    assert choose_threshold(p, y, "fixed") == 0.5
    assert choose_threshold([0.3, 0.3], [0, 1], "youden") == 0.5  # nothing separates them


def test_errors():
    with pytest.raises(ValueError, match="unknown threshold rule 'best'"):
        choose_threshold([0.1, 0.9], [0, 1], "best")
    with pytest.raises(ValueError, match="needs both classes"):
        choose_threshold([0.1, 0.9], [1, 1], "youden")
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold([0.1, np.nan], [0, 1], "f1")
    with pytest.raises(ValueError, match="empty"):
        choose_threshold([], [], "f1")
    assert choose_threshold([0.1, 0.9], [1, 1], "fixed") == 0.5  # no classes needed
    with pytest.raises(ValueError, match="ClsConfig.threshold must be one of"):
        ClsConfig(threshold="best")
    assert THRESHOLD_RULES == CHOICES == ("fixed", "youden", "f1")


def _per_seed():
    return [_scores(s, n) for s, n in ((10, 30), (11, 25), (12, 35))]


def test_summarise_seeds_with_thresholds_matches_sklearn():
    per_seed, ts = _per_seed(), [0.3, 0.55, 0.7]
    out = summarise_seeds(per_seed, n_boot=20, thresholds=ts)
    for k, ((p, y), t) in enumerate(zip(per_seed, ts, strict=True)):
        pred = (p >= t).astype(int)
        assert out["accuracy"]["per_seed"][k] == pytest.approx(accuracy_score(y, pred))
        assert out["sensitivity"]["per_seed"][k] == pytest.approx(recall_score(y, pred))
        assert out["specificity"]["per_seed"][k] == pytest.approx(recall_score(1 - y, 1 - pred))
    assert out["auc"] == summarise_seeds(per_seed, n_boot=20)["auc"]  # threshold-free
    lo, hi = out["accuracy"]["ci95"]
    assert np.isfinite([lo, hi]).all() and lo <= out["accuracy"]["mean"] <= hi


def test_summarise_folds_pools_each_folds_decisions():
    per_fold, ts = _per_seed(), [0.3, 0.55, 0.7]
    out = summarise_folds(per_fold, n_boot=20, thresholds=ts)
    y = np.concatenate([y for _, y in per_fold])
    pred = np.concatenate([(p >= t).astype(int) for (p, _), t in zip(per_fold, ts, strict=True)])
    assert out["accuracy"]["mean"] == pytest.approx(accuracy_score(y, pred))
    assert out["f1_macro"]["mean"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert out["sensitivity"]["mean"] == pytest.approx(recall_score(y, pred))


@pytest.mark.parametrize("summarise", [summarise_seeds, summarise_folds])
def test_default_thresholds_are_one_half(summarise):
    per_seed = _per_seed()
    assert summarise(per_seed, n_boot=30) == summarise(
        per_seed, n_boot=30, thresholds=[0.5, 0.5, 0.5]
    )
    assert bootstrap_ci(per_seed, n_boot=30) == bootstrap_ci(
        per_seed, n_boot=30, thresholds=[0.5] * 3
    )


def test_threshold_argument_errors():
    per_seed = _per_seed()
    with pytest.raises(ValueError, match="2 thresholds for 3 seeds"):
        summarise_seeds(per_seed, n_boot=0, thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="thresholds must be in"):
        summarise_folds(per_seed, n_boot=0, thresholds=[0.5, 0.5, np.nan])
    with pytest.raises(ValueError, match="default metric_fn"):
        bootstrap_ci(per_seed, n_boot=2, metric_fn=lambda p, y: {}, thresholds=[0.5] * 3)
