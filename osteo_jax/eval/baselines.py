"""Simple baselines read beside the image model on the protocol's splits (PAPER.md section 3-4).

Three subject-level logistic regressions, each fitted only on subjects whose labels the image
model's evaluation allows it to see:

* clinical: covariates of ``subjects.csv`` (default age and sex), fitted on the train subjects;
* radiogrammetry: cortical indices measured on the segmenter's predicted masks (MC2, MC3, MC4,
  radius; :func:`osteo_jax.pipeline.radiogrammetry_run.radiogrammetry_of_run` with ``split="all"``),
  optionally with covariates, fitted on the train subjects;
* fusion (stacking): the image model's score and the covariates, fitted on the validation
  subjects, because the image model was trained on the train subjects and its scores there
  are optimistic (a stacker fitted on them learns to trust the image score too much).

The model is ``P(y = 1 | x) = sigmoid(b + w . z)`` with ``z`` the features standardised by
the mean and SD of the fitting subjects, fitted by L-BFGS on the L2-penalised log-likelihood
``C sum_i log p(y_i | x_i) - |w|^2 / 2`` (scikit-learn ``LogisticRegression``). ``C = 1`` on
standardised features is a modest penalty: it keeps the weights finite on a separable 20-subject
validation set (fusion with a near-perfect image score) and barely moves them with a hundred
subjects. Every result lists its ``fit_subjects``, so a caller can assert that no test subject
was ever seen. The feature tables are read by :mod:`osteo_jax.eval.subject_features`. This
module needs no JAX.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from osteo_jax.eval.subject_features import SubjectFeatures

__all__ = [
    "DEFAULT_C",
    "BaselineScores",
    "clinical_scores",
    "cross_validated_auc",
    "fit_logistic",
    "fusion_scores",
    "image_age_scores",
    "predict_probability",
    "radiogrammetry_scores",
    "score_logit",
]

DEFAULT_C = 1.0  # inverse L2 strength on standardised features (see the module docstring)
MIN_PER_CLASS = 2  # fewest fitting subjects of each class a stacker is fitted on
SCORE_EPS = 1e-6  # image scores are clipped to [eps, 1 - eps] before the logit
CV_FOLDS = 5  # folds of cross_validated_auc


@dataclasses.dataclass(frozen=True)
class BaselineScores:
    """A baseline's probabilities of osteoporosis for the subjects it predicts.

    Attributes:
      name: ``"clinical"``, ``"radiogrammetry"`` or ``"fusion"``.
      subject_ids: ``[m]`` predicted subjects (validation then test, or test only).
      probabilities: ``[m]`` float64 ``P(label = 1)``, aligned with ``subject_ids``.
      fit_subjects: the subjects whose features and labels the model was fitted on.
      feature_names: ``[d]`` the model's input features, in order.
      model: the fitted scikit-learn pipeline.
      fit_design: ``[n, d]`` the fitting subjects' features as ``model`` was fitted on them
        (NaN where it imputes), aligned with ``fit_subjects``.
      fit_labels: ``[n]`` their labels.
    """

    name: str
    subject_ids: tuple[str, ...]
    probabilities: np.ndarray
    fit_subjects: tuple[str, ...]
    feature_names: tuple[str, ...]
    model: Pipeline = dataclasses.field(repr=False, compare=False)
    fit_design: np.ndarray = dataclasses.field(repr=False, compare=False)
    fit_labels: np.ndarray = dataclasses.field(repr=False, compare=False)

    def probability(self, subject_ids: Sequence[str]) -> np.ndarray:
        """``[m]`` probabilities of ``subject_ids`` (KeyError for a subject not predicted)."""
        index = dict(zip(self.subject_ids, self.probabilities.tolist(), strict=True))
        absent = [s for s in subject_ids if s not in index]
        if absent:
            raise KeyError(f"{self.name} baseline did not predict subjects {absent[:5]}")
        return np.array([index[s] for s in subject_ids], np.float64)

    def as_dict(self) -> dict[str, float]:
        """``{subject_id: probability}``."""
        return dict(zip(self.subject_ids, self.probabilities.tolist(), strict=True))


def fit_logistic(
    X: np.ndarray, y: np.ndarray, *, C: float = DEFAULT_C, impute_median: bool = False
) -> Pipeline:
    """Standardised L2 logistic regression (lbfgs), deterministic.

    Args:
      X: ``[n, d]`` features of the fitting subjects (NaN allowed only with ``impute_median``).
      y: ``[n]`` labels 0/1, both classes present.
      C: inverse L2 strength on the standardised features.
      impute_median: first replace NaN by each column's median over these rows.

    Returns:
      The fitted pipeline: steps ``"impute"`` (with ``impute_median``), ``"scale"`` and
      ``"logistic"``; imputer and scaler hold statistics of these rows only.

    Raises:
      ValueError: shapes, non-finite features (without imputation), labels not 0/1 or a
        single class.
    """
    X, y = np.asarray(X, np.float64), np.asarray(y)
    if X.ndim != 2 or y.shape != X.shape[:1] or X.shape[1] == 0:
        raise ValueError(f"X [n, d>0] and y [n] expected, got {X.shape}, {y.shape}")
    if not impute_median and not np.isfinite(X).all():
        raise ValueError("non-finite features (pass impute_median=True for failed measurements)")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        raise ValueError(f"labels must be 0/1 with both classes present, got {np.unique(y)}")
    steps = [("impute", SimpleImputer(strategy="median"))] if impute_median else []
    steps += [
        ("scale", StandardScaler()),
        ("logistic", LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=10_000)),
    ]
    return Pipeline(steps).fit(X, y.astype(np.int64))


def score_logit(p: np.ndarray, eps: float = SCORE_EPS) -> np.ndarray:
    """``log(p / (1 - p))`` of scores clipped to ``[eps, 1 - eps]`` (float64)."""
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def predict_probability(model: Pipeline, X: np.ndarray) -> np.ndarray:
    """``[n]`` float64 ``P(label = 1)`` of a :func:`fit_logistic` model for ``X [n, d]``."""
    p = model.predict_proba(np.asarray(X, np.float64))
    return p[:, list(model.classes_).index(1)].astype(np.float64)


def _check_split(split: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    parts = {}
    for k in ("train", "val", "test"):
        if k not in split:
            raise ValueError(f"split has no {k!r} part (keys: {sorted(split)})")
        parts[k] = [str(s) for s in split[k]]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(parts[a]) & set(parts[b]))
        if both:
            raise ValueError(f"split parts {a} and {b} share subjects {both[:5]}")
    return parts


def _labels_of(labels: Mapping[str, int], ids: Sequence[str], part: str) -> np.ndarray:
    absent = [s for s in ids if s not in labels]
    if absent:
        raise ValueError(f"no label for {len(absent)} {part} subject(s), e.g. {absent[:5]}")
    return np.array([int(labels[s]) for s in ids], np.int64)


def _scores(name, model, X_pred, pred_ids, fit_ids, names, X_fit, y) -> BaselineScores:
    return BaselineScores(
        name=name,
        subject_ids=tuple(pred_ids),
        probabilities=predict_probability(model, X_pred),
        fit_subjects=tuple(fit_ids),
        feature_names=tuple(names),
        model=model,
        fit_design=np.asarray(X_fit, np.float64),
        fit_labels=np.asarray(y),
    )


def cross_validated_auc(baseline: BaselineScores, folds: int = CV_FOLDS, seed: int = 0) -> float:
    """AUC of a baseline's out-of-fold probabilities on the subjects it was fitted on.

    Its model is refitted (a fresh copy: imputer, scaler and logistic regression) on all but
    one of ``folds`` stratified folds of its fitting subjects and predicts the one left out.
    With a hundred or more training subjects this ranks candidate baselines far more stably
    than the AUC on a validation part of 17-40 subjects (a handful of positives), and it
    reads no validation or test subject.

    Args:
      baseline: a train-fitted baseline (:func:`radiogrammetry_scores`, :func:`image_age_scores`,
        :func:`clinical_scores`).
      folds: at most this many folds (fewer where a class has fewer subjects).
      seed: the fold shuffle.

    Returns:
      The AUC, or NaN where a class has fewer than 2 fitting subjects.
    """
    y = baseline.fit_labels
    k = min(folds, int(np.bincount(y, minlength=2).min()))
    if k < 2:
        return float("nan")
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a sparse measurement can be all NaN in one fold's part
        warnings.filterwarnings("ignore", "Skipping features without any observed values")
        p = cross_val_predict(
            clone(baseline.model), baseline.fit_design, y, cv=cv, method="predict_proba"
        )[:, 1]
    return float(roc_auc_score(y, p))


def clinical_scores(
    split: Mapping[str, Sequence[str]],
    labels: Mapping[str, int],
    covariates: SubjectFeatures,
    *,
    C: float = DEFAULT_C,
) -> BaselineScores:
    """Clinical baseline: logistic regression on covariates, fitted on the train subjects.

    Args:
      split: ``{"train", "val", "test": subject ids}`` (a protocol seed's ``split.json``).
      labels: ``{subject_id: 0/1}``; only the train subjects' labels are read.
      covariates: :func:`read_covariates` (every split subject needs a row).
      C: inverse L2 strength.

    Returns:
      :class:`BaselineScores` of the validation then test subjects; ``fit_subjects`` = train.
    """
    parts = _check_split(split)
    fit_ids, pred_ids = parts["train"], parts["val"] + parts["test"]
    X_fit, y = covariates.rows(fit_ids), _labels_of(labels, fit_ids, "train")
    model = fit_logistic(X_fit, y, C=C)
    return _scores(
        "clinical", model, covariates.rows(pred_ids), pred_ids, fit_ids, covariates.names, X_fit, y
    )


def radiogrammetry_scores(
    split: Mapping[str, Sequence[str]],
    labels: Mapping[str, int],
    features: SubjectFeatures,
    covariates: SubjectFeatures | None = None,
    *,
    C: float = DEFAULT_C,
) -> BaselineScores:
    """Radiogrammetry baseline: logistic regression on measured cortical indices.

    A failed measurement (NaN), or a subject with none at all, takes the train subjects'
    median of that index (the imputer is part of the model, fitted on the train rows only).
    An index no train subject has a finite value of is left out.

    Args:
      split: ``{"train", "val", "test": subject ids}``.
      labels: ``{subject_id: 0/1}``; only the train subjects' labels are read.
      features: per-subject indices (:func:`radiogrammetry_features`).
      covariates: optional covariates appended to the indices (every split subject needs a row).
      C: inverse L2 strength.

    Returns:
      :class:`BaselineScores` of the validation then test subjects; ``fit_subjects`` = train.

    Raises:
      ValueError: no index with a finite train value, or a covariate row missing.
    """
    parts = _check_split(split)
    fit_ids, pred_ids = parts["train"], parts["val"] + parts["test"]
    X_fit, X_pred = features.rows(fit_ids, missing="nan"), features.rows(pred_ids, missing="nan")
    keep = np.isfinite(X_fit).any(axis=0)
    if not keep.any():
        raise ValueError(f"no train subject has a finite value of any of {features.names}")
    X_fit, X_pred = X_fit[:, keep], X_pred[:, keep]
    names = tuple(n for n, k in zip(features.names, keep, strict=True) if k)
    if covariates is not None:
        X_fit = np.concatenate([X_fit, covariates.rows(fit_ids)], axis=1)
        X_pred = np.concatenate([X_pred, covariates.rows(pred_ids)], axis=1)
        names += covariates.names
    y = _labels_of(labels, fit_ids, "train")
    model = fit_logistic(X_fit, y, C=C, impute_median=True)
    return _scores("radiogrammetry", model, X_pred, pred_ids, fit_ids, names, X_fit, y)


AGE_ALPHAS = np.logspace(-2, 4, 25)  # ridge penalties of the image-age regression (by CV)
AGE_FOLDS = 5


def image_age_scores(
    split: Mapping[str, Sequence[str]],
    labels: Mapping[str, int],
    features: SubjectFeatures,
    ages: SubjectFeatures,
    *,
    age_features: Sequence[str],
    C: float = DEFAULT_C,
) -> BaselineScores:
    """Measurements plus an "image age": a ridge regression of age on ``age_features``.

    What a radiograph shows of age (porosity, trabecular density: grey levels) is spread thin
    over many measurements; a logistic regression on all of them against a ~30 % label from a
    hundred subjects cannot find it, but the recorded age of every training subject is a
    continuous target that can. So: a ridge regression (median-imputed, standardised, penalty
    by cross-validation over :data:`AGE_ALPHAS`) maps ``age_features`` to age on the train
    subjects; then the logistic regression is fitted on the other features and that image age.
    The train subjects' image ages entering the logistic fit are out-of-fold predictions
    (:data:`AGE_FOLDS` folds), as a new subject's would be. At prediction the model reads the
    measurements only: recorded ages are a training target, never an input.

    Args:
      split: ``{"train", "val", "test": subject ids}``.
      labels: ``{subject_id: 0/1}``; only the train subjects' labels are read.
      features: per-subject measurements (:func:`radiogrammetry_features`, NaN where failed).
      ages: one column of recorded ages; only the train subjects' are read.
      age_features: names of ``features`` the age regression reads (the rest enter the
        logistic regression directly).
      C: inverse L2 strength of the logistic regression.

    Returns:
      :class:`BaselineScores` of the validation then test subjects; ``fit_subjects`` = train.

    Raises:
      ValueError: an unknown age feature, none with a finite train value, ``ages`` not one
        column, or a train subject without an age.
    """
    parts = _check_split(split)
    fit_ids, pred_ids = parts["train"], parts["val"] + parts["test"]
    unknown = [n for n in age_features if n not in features.names]
    if unknown or len(ages.names) != 1:
        raise ValueError(f"unknown age features {unknown} or ages not one column {ages.names}")
    X_fit, X_pred = features.rows(fit_ids, missing="nan"), features.rows(pred_ids, missing="nan")
    keep = np.isfinite(X_fit).any(axis=0)
    is_age = np.array([n in age_features for n in features.names]) & keep
    direct = ~np.isin(features.names, list(age_features)) & keep
    if not is_age.any():
        raise ValueError(f"no train subject has a finite value of any of {list(age_features)}")
    age = ages.rows(fit_ids)[:, 0]
    if not np.isfinite(age).all():
        raise ValueError("every train subject needs a recorded age for the image-age regression")
    regression = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median")),
            ("scale", StandardScaler()),
            ("ridge", RidgeCV(alphas=AGE_ALPHAS)),
        ]
    )
    folds = KFold(min(AGE_FOLDS, len(fit_ids)), shuffle=True, random_state=0)
    age_fit = cross_val_predict(regression, X_fit[:, is_age], age, cv=folds)
    age_pred = regression.fit(X_fit[:, is_age], age).predict(X_pred[:, is_age])
    design_fit = np.column_stack([X_fit[:, direct], age_fit])
    design_pred = np.column_stack([X_pred[:, direct], age_pred])
    names = tuple(np.asarray(features.names)[direct]) + ("image_age",)
    y = _labels_of(labels, fit_ids, "train")
    model = fit_logistic(design_fit, y, C=C, impute_median=True)
    return _scores("image age", model, design_pred, pred_ids, fit_ids, names, design_fit, y)


def fusion_scores(
    split: Mapping[str, Sequence[str]],
    labels: Mapping[str, int],
    image_scores: Mapping[str, float],
    covariates: SubjectFeatures | None = None,
    *,
    C: float = DEFAULT_C,
    eps: float = SCORE_EPS,
) -> BaselineScores:
    """Fusion by stacking: ``[logit(image score), covariates]`` fitted on the validation subjects.

    The image model was trained on the train subjects, so its scores there are optimistic
    (near-perfect on a memorised subject); a stacker fitted on them would weight the image
    score as if it were that good on new subjects. The validation subjects' scores are
    out-of-sample like the test subjects', and the test subjects are never fitted on.

    Args:
      split: ``{"train", "val", "test": subject ids}``.
      labels: ``{subject_id: 0/1}``; only the validation subjects' labels are read.
      image_scores: ``{subject_id: probability}`` of the image model for (at least) the
        validation and test subjects.
      covariates: optional covariates (every validation and test subject needs a row);
        None fuses nothing and recalibrates the image score (Platt scaling).
      C: inverse L2 strength.
      eps: scores are clipped to ``[eps, 1 - eps]`` before the logit.

    Returns:
      :class:`BaselineScores` of the test subjects; ``fit_subjects`` = validation.

    Raises:
      ValueError: fewer than 2 validation subjects of a class, or an image score missing or
        not a probability.
    """
    parts = _check_split(split)
    fit_ids, pred_ids = parts["val"], parts["test"]
    y = _labels_of(labels, fit_ids, "validation")
    counts = np.bincount(y, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise ValueError(
            f"fusion is fitted on the validation subjects, which hold {counts[0]} negative and "
            f"{counts[1]} positive: at least {MIN_PER_CLASS} of each are needed"
        )

    def design(ids):
        absent = [s for s in ids if s not in image_scores]
        if absent:
            raise ValueError(f"no image score for {len(absent)} subject(s), e.g. {absent[:5]}")
        p = np.array([float(image_scores[s]) for s in ids])
        if not (np.isfinite(p) & (p >= 0) & (p <= 1)).all():
            raise ValueError("image scores must be probabilities in [0, 1]")
        x = score_logit(p, eps)[:, None]
        return x if covariates is None else np.concatenate([x, covariates.rows(ids)], axis=1)

    names = ("image_logit",) + (() if covariates is None else covariates.names)
    X_fit = design(fit_ids)
    model = fit_logistic(X_fit, y, C=C)
    return _scores("fusion", model, design(pred_ids), pred_ids, fit_ids, names, X_fit, y)
