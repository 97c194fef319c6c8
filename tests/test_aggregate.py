"""Subject aggregation of segments: the mean rule, the per-bone logistic head and the feature head,
each against scikit-learn fitted directly on a hand-built, hand-standardised design matrix."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold

from osteo_jax.config import ClsConfig
from osteo_jax.eval.aggregate import (
    FEATURE_CS,
    FeatureHead,
    aggregate_subjects,
    bone_logits,
    fit_feature_head,
    fit_logistic_head,
    load_head,
)
from osteo_jax.eval.cls_metrics import subject_probabilities

BONES = ("MC2", "MC3", "radius")


def _images(seed, n_subjects=30, per_subject=2, missing=True):
    """Two images per subject; bone 0 carries the label, bone 2 is noise."""
    rng = np.random.default_rng(seed)
    y_subj = (np.arange(n_subjects) % 3 == 0).astype(int)
    ids = np.repeat([f"s{i:02d}" for i in range(n_subjects)], per_subject)
    y = np.repeat(y_subj, per_subject)
    n = len(ids)
    logit = np.stack([2.0 * y - 1, 0.7 * y - 0.3, np.zeros(n)], 1) + rng.normal(0, 1, (n, 3))
    probs = 1 / (1 + np.exp(-logit))
    valid = np.ones((n, 3), bool)
    if missing:
        valid[rng.random((n, 3)) < 0.1] = False
        valid[0:per_subject, 1] = False  # subject s00 has no MC3 at all
    probs[~valid] = np.nan  # invalid segments may hold anything
    return probs, valid, ids, y


def _design(probs, valid, ids, eps=1e-6):
    """Per subject and bone: mean of the valid image probabilities, clipped, logit (loops)."""
    subjects = sorted(set(ids.tolist()))
    x = np.full((len(subjects), probs.shape[1]), np.nan)
    for i, s in enumerate(subjects):
        for b in range(probs.shape[1]):
            v = [probs[k, b] for k in range(len(ids)) if ids[k] == s and valid[k, b]]
            if v:
                p = min(max(float(np.mean(v)), eps), 1 - eps)
                x[i, b] = np.log(p / (1 - p))
    return np.array(subjects), x


def test_mean_rule_is_subject_probabilities():
    probs, valid, ids, _ = _images(0)
    subjects, p = aggregate_subjects(probs, valid, ids)
    want_s, want_p = subject_probabilities(probs, valid, ids)
    np.testing.assert_array_equal(subjects, want_s)
    np.testing.assert_array_equal(p, want_p)


def test_logistic_head_equals_sklearn_on_the_hand_built_design():
    probs, valid, ids, y = _images(1)
    head = fit_logistic_head(probs, valid, ids, y, BONES)
    subjects, x = _design(probs, valid, ids)
    np.testing.assert_allclose(bone_logits(probs, valid, ids)[1], x)
    # Median imputation, then standardisation by hand (population SD), then sklearn.
    med = np.nanmedian(x, axis=0)
    x = np.where(np.isnan(x), med, x)
    z = (x - x.mean(0)) / x.std(0)
    y_subj = np.array([y[list(ids).index(s)] for s in subjects])
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(z, y_subj)
    np.testing.assert_allclose(head.medians, med)
    np.testing.assert_allclose(head.coef, ref.coef_[0], rtol=1e-6)
    # Apply to other subjects ("test"), with missing bones.
    probs_t, valid_t, ids_t, _ = _images(2, n_subjects=12)
    subj_t, p = aggregate_subjects(probs_t, valid_t, ids_t, head)
    _, xt = _design(probs_t, valid_t, ids_t)
    xt = np.where(np.isnan(xt), med, xt)
    want = ref.predict_proba((xt - x.mean(0)) / x.std(0))[:, 1]
    assert p.shape == (12,) and p.dtype == np.float64 and np.isfinite(p).all()
    np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-9)
    assert abs(head.coef[0]) > abs(head.coef[2])  # the label-bearing bone outweighs noise


def test_missing_bone_imputation_by_hand():
    # Three fitting subjects, one image each; subject c lacks bone 1.
    probs = np.array([[0.2, 0.3], [0.8, 0.6], [0.5, 0.9]])
    valid = np.array([[True, True], [True, True], [True, False]])
    ids = np.array(["a", "b", "c"])
    head = fit_logistic_head(probs, valid, ids, np.array([0, 1, 1]), ("MC2", "MC3"))
    lg = np.log(np.array([0.3, 0.6]) / (1 - np.array([0.3, 0.6])))
    assert head.medians[1] == pytest.approx(np.median(lg))  # of a and b only
    # A new subject missing bone 1 scores as if it had the median logit there.
    new = aggregate_subjects(np.array([[0.7, np.nan]]), np.array([[True, False]]), ["d"], head)
    lg0 = np.log(0.7 / 0.3)
    np.testing.assert_allclose(new[1], head.probability(np.array([[lg0, np.median(lg)]])))
    # No valid segment at all: 0.5, as the mean rule.
    none = aggregate_subjects(np.full((1, 2), np.nan), np.zeros((1, 2), bool), ["e"], head)
    assert none[1][0] == 0.5


def test_save_load_round_trip(tmp_path):
    probs, valid, ids, y = _images(3)
    head = fit_logistic_head(probs, valid, ids, y, BONES)
    head.save(tmp_path / "aggregate.json")
    again = load_head(tmp_path / "aggregate.json")
    assert again.bones == BONES
    probs_t, valid_t, ids_t, _ = _images(4, n_subjects=8)
    a = aggregate_subjects(probs_t, valid_t, ids_t, head)[1]
    b = aggregate_subjects(probs_t, valid_t, ids_t, again)[1]
    np.testing.assert_array_equal(a, b)


def test_errors(tmp_path):
    probs, valid, ids, y = _images(5, missing=False)
    with pytest.raises(ValueError, match="bone\\(s\\) \\['MC3'\\]"):
        valid2 = valid.copy()
        valid2[:, 1] = False
        fit_logistic_head(probs, valid2, ids, y, BONES)
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic_head(probs, valid, ids, np.zeros_like(y), BONES)
    with pytest.raises(ValueError, match="2 bone names for 3"):
        fit_logistic_head(probs, valid, ids, y, BONES[:2])
    head = fit_logistic_head(probs, valid, ids, y, BONES)
    with pytest.raises(ValueError, match="logits must be"):
        aggregate_subjects(probs[:, :2], valid[:, :2], ids, head)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saved aggregation head"):
        load_head(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="ClsConfig.aggregate must be one of"):
        ClsConfig(aggregate="median")


def _features(seed, n_subjects=40, per_subject=2, dim=4):
    """``[n_images, 3, dim]`` features; feature 0 of bone 0 carries the label, missing segments."""
    probs, valid, ids, y = _images(seed, n_subjects, per_subject)
    rng = np.random.default_rng(seed + 100)
    feats = rng.normal(0, 1, (len(ids), len(BONES), dim))
    feats[:, 0, 0] += 1.5 * y
    feats[~valid] = np.nan  # invalid segments may hold anything
    return feats, valid, ids, y


def _feature_design(feats, valid, ids, fill=None):
    """Per subject: each bone's mean valid features (loops), missing filled, flattened."""
    subjects = sorted(set(ids.tolist()))
    b, d = feats.shape[1:]
    x = np.full((len(subjects), b, d), np.nan)
    for i, s in enumerate(subjects):
        for k in range(b):
            rows = [feats[j, k] for j in range(len(ids)) if ids[j] == s and valid[j, k]]
            if rows:
                x[i, k] = np.mean(rows, axis=0)
    fill = np.nanmean(x, axis=0) if fill is None else fill
    return np.array(subjects), np.where(np.isnan(x), fill, x).reshape(len(subjects), -1), fill


def test_feature_head_equals_sklearn_on_the_hand_built_design():
    feats, valid, ids, y = _features(6)
    head = fit_feature_head(feats, valid, ids, y, BONES)
    subjects, x, fill = _feature_design(feats, valid, ids)
    y_subj = np.array([y[list(ids).index(s)] for s in subjects])
    np.testing.assert_allclose(head.fill, fill)
    # The strength: scikit-learn's own cross-validation over the same grid and folds.
    z = (x - x.mean(0)) / x.std(0)
    cv = LogisticRegressionCV(
        Cs=list(FEATURE_CS), cv=StratifiedKFold(5), scoring="neg_log_loss", l1_ratios=(0.0,),
        solver="newton-cholesky", max_iter=100, tol=1e-8, use_legacy_attributes=False,
    ).fit(z, y_subj)  # fmt: skip
    assert head.C == float(np.ravel(cv.C_)[0]) and head.C in FEATURE_CS
    ref = LogisticRegression(C=head.C, tol=1e-10, max_iter=10_000).fit(z, y_subj)
    # New subjects, with missing bones, scored through the folded raw-feature weights.
    feats_t, valid_t, ids_t, _ = _features(7, n_subjects=12)
    subj_t, p = aggregate_subjects(None, valid_t, ids_t, head, features=feats_t)
    _, xt, _ = _feature_design(feats_t, valid_t, ids_t, fill)
    want = ref.predict_proba((xt - x.mean(0)) / x.std(0))[:, 1]
    assert subj_t.tolist() == sorted(set(ids_t.tolist()))
    np.testing.assert_allclose(p, want, rtol=1e-4, atol=1e-6)
    coef = np.abs(head.coef * x.std(0).reshape(head.coef.shape))  # standardised weights
    assert coef[0, 0] == coef.max()  # the label-bearing feature outweighs the noise


def test_feature_head_round_trip_and_errors(tmp_path):
    feats, valid, ids, y = _features(8)
    head = fit_feature_head(feats, valid, ids, y, BONES)
    head.save(tmp_path / "aggregate.json")
    again = load_head(tmp_path / "aggregate.json")
    assert isinstance(again, FeatureHead) and again.bones == BONES and again.C == head.C
    a = aggregate_subjects(None, valid, ids, head, features=feats)[1]
    np.testing.assert_array_equal(a, aggregate_subjects(None, valid, ids, again, features=feats)[1])
    # No valid segment at all: 0.5, as the other rules.
    none = aggregate_subjects(None, np.zeros((1, 3), bool), ["z"], head, features=feats[:1])
    assert none[1][0] == 0.5
    with pytest.raises(ValueError, match="needs the segments' backbone features"):
        aggregate_subjects(None, valid, ids, head)
    with pytest.raises(ValueError, match="features must be"):
        aggregate_subjects(None, valid, ids, head, features=feats[:, :, :2])
    with pytest.raises(ValueError, match=">= 2 subjects of each class"):
        y1 = np.zeros_like(y)
        y1[ids == ids[0]] = 1
        fit_feature_head(feats, valid, ids, y1, BONES)
    with pytest.raises(ValueError, match="bone\\(s\\) \\['MC3'\\]"):
        valid2 = valid.copy()
        valid2[:, 1] = False
        fit_feature_head(feats, valid2, ids, y, BONES)
    with pytest.raises(ValueError, match="non-finite"):
        bad = feats.copy()
        bad[valid.nonzero()[0][0], valid.nonzero()[1][0], 0] = np.nan
        fit_feature_head(bad, valid, ids, y, BONES)
