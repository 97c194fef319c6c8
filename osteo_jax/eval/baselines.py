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
was ever seen. This module needs no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import SUBJECTS_CSV, read_csv

__all__ = [
    "DEFAULT_C",
    "DEFAULT_COVARIATES",
    "RADIOGRAMMETRY_BONES",
    "BaselineScores",
    "SubjectFeatures",
    "clinical_scores",
    "fit_logistic",
    "fusion_scores",
    "predict_probability",
    "radiogrammetry_features",
    "radiogrammetry_scores",
    "read_covariates",
    "read_labels",
]

DEFAULT_COVARIATES: tuple[str, ...] = ("age", "sex")
RADIOGRAMMETRY_BONES: tuple[str, ...] = ("MC2", "MC3", "MC4", "radius")
DEFAULT_C = 1.0  # inverse L2 strength on standardised features (see the module docstring)
MIN_PER_CLASS = 2  # fewest fitting subjects of each class a stacker is fitted on
SCORE_EPS = 1e-6  # image scores are clipped to [eps, 1 - eps] before the logit
_SEX = {"m": 1.0, "male": 1.0, "f": 0.0, "female": 0.0}


class SubjectFeatures(NamedTuple):
    """A feature table with one row per subject.

    Attributes:
      subject_ids: ``[n]`` subject ids (str), unique.
      values: ``[n, d]`` float64 features (NaN where a measurement failed).
      names: ``[d]`` feature names.
    """

    subject_ids: np.ndarray
    values: np.ndarray
    names: tuple[str, ...]

    def rows(self, subject_ids: Sequence[str], *, missing: str = "raise") -> np.ndarray:
        """Rows of ``subject_ids``, in that order.

        Args:
          subject_ids: ``[m]`` subject ids.
          missing: ``"raise"`` (ValueError naming the absent subjects) or ``"nan"`` (a row
            of NaN for each).

        Returns:
          ``[m, d]`` float64.
        """
        index = {s: i for i, s in enumerate(np.asarray(self.subject_ids).tolist())}
        absent = [s for s in subject_ids if s not in index]
        if absent and missing == "raise":
            raise ValueError(
                f"no {', '.join(self.names) or 'feature'} row for {len(absent)} subject(s), "
                f"e.g. {absent[:5]}"
            )
        values = np.asarray(self.values, np.float64).reshape(len(self.subject_ids), len(self.names))
        out = np.full((len(subject_ids), len(self.names)), np.nan)
        for j, s in enumerate(subject_ids):
            if s in index:
                out[j] = values[index[s]]
        return out


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
    """

    name: str
    subject_ids: tuple[str, ...]
    probabilities: np.ndarray
    fit_subjects: tuple[str, ...]
    feature_names: tuple[str, ...]
    model: Pipeline = dataclasses.field(repr=False, compare=False)

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


# ----------------------------------------------------------------------------- reading


def _parse_number(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_covariates(
    data_dir: str | os.PathLike, columns: Sequence[str] = DEFAULT_COVARIATES
) -> SubjectFeatures:
    """Subject covariates of a dataset folder's ``subjects.csv`` as a numeric design matrix.

    Coding: ``sex`` is 1 for male (``M``/``male``) and 0 for female (``F``/``female``), named
    ``sex=M``; a column whose values all parse as numbers is taken as a float; a column none of
    whose values does is categorical, one-hot coded with its first category (sorted) dropped
    (``col=value`` columns). A column with some numeric values is numeric, and a value in it
    that does not parse is an error (so a typo in ``age`` is never silently one-hot coded).

    Args:
      data_dir: dataset folder.
      columns: column names of ``subjects.csv``.

    Returns:
      ``SubjectFeatures(subject_ids [n], values [n, d], names [d])``, rows in file order.

    Raises:
      DatasetError: no rows, a column missing (naming it and the columns present), a duplicate
        subject id, or an empty or unparsable value (naming the subject, column and file).
    """
    path = Path(data_dir) / SUBJECTS_CSV
    rows = read_csv(path)
    if not rows:
        raise DatasetError(f"{path}: no subject rows")
    header = list(rows[0])
    for c in ("subject_id", *columns):
        if c not in header:
            raise DatasetError(f"{path}: no column {c!r} (columns: {', '.join(header)})")
    ids = [r["subject_id"] for r in rows]
    dup = sorted(s for s, k in Counter(ids).items() if k > 1)
    if dup:
        raise DatasetError(f"{path}: duplicate subject_id {dup[:5]}")

    def fail(row, col, why):
        return DatasetError(
            f"{path}: subject {row['subject_id']!r}, column {col!r}: {why} "
            f"({(row[col] or '').strip()!r})"
        )

    blocks, names = [], []
    for col in columns:
        text = [(r[col] or "").strip() for r in rows]
        for r, t in zip(rows, text, strict=True):
            if not t:
                raise fail(r, col, "empty value")
        if col == "sex":
            for r, t in zip(rows, text, strict=True):
                if t.lower() not in _SEX:
                    raise fail(r, col, "expected F or M")
            blocks.append(np.array([[_SEX[t.lower()]] for t in text]))
            names.append("sex=M")
            continue
        numbers = [_parse_number(t) for t in text]
        if all(x is None for x in numbers):
            cats = sorted(set(text))[1:]
            blocks.append(
                np.array([[float(t == c) for c in cats] for t in text]).reshape(-1, len(cats))
            )
            names += [f"{col}={c}" for c in cats]
            continue
        for r, x in zip(rows, numbers, strict=True):
            if x is None:
                raise fail(r, col, "not a finite number")
        blocks.append(np.array(numbers, np.float64)[:, None])
        names.append(col)
    values = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0))
    return SubjectFeatures(np.array(ids, dtype=str), values.astype(np.float64), tuple(names))


def read_labels(data_dir: str | os.PathLike) -> dict[str, int]:
    """``{subject_id: label}`` from the ``label`` column of ``subjects.csv`` (empty: left out).

    Raises:
      DatasetError: no ``label`` column, or a label other than 0 or 1 (naming the subject).
    """
    path = Path(data_dir) / SUBJECTS_CSV
    out = {}
    for r in read_csv(path):
        if "label" not in r:
            raise DatasetError(f"{path}: no column 'label' (columns: {', '.join(r)})")
        text = (r["label"] or "").strip()
        if not text:
            continue
        if _parse_number(text) not in (0.0, 1.0):
            raise DatasetError(f"{path}: subject {r['subject_id']!r}: label {text!r} is not 0/1")
        out[r["subject_id"]] = int(float(text))
    return out


def radiogrammetry_features(
    radio: str | os.PathLike | Mapping, bones: Sequence[str] = RADIOGRAMMETRY_BONES
) -> SubjectFeatures:
    """Per-subject cortical indices from a ``radiogrammetry.json`` (or its loaded content).

    Args:
      radio: the file :func:`osteo_jax.pipeline.radiogrammetry_run.radiogrammetry_of_run` writes,
        or its dict (``per_image`` records with ``subject_id`` and ``<bone>_ci``).
      bones: bones whose ``<bone>_ci`` are read.

    Returns:
      ``SubjectFeatures(subject_ids [n] sorted, values [n, len(bones)], names)``: per subject
      the mean over its images of the finite values, NaN where no image has one.

    Raises:
      ValueError: a record without ``subject_id`` or one of the ``<bone>_ci`` keys.
    """
    if not isinstance(radio, Mapping):
        radio = json.loads(Path(radio).read_text())
    names = tuple(f"{b}_ci" for b in bones)
    records = radio.get("per_image", [])
    for k, r in enumerate(records):
        absent = [n for n in ("subject_id", *names) if n not in r]
        if absent:
            raise ValueError(f"radiogrammetry record {k} has no {absent}")
    subjects = sorted({r["subject_id"] for r in records})
    index = {s: i for i, s in enumerate(subjects)}
    total = np.zeros((len(subjects), len(names)))
    count = np.zeros((len(subjects), len(names)))
    for r in records:
        x = np.array([float(r[n]) for n in names])
        ok = np.isfinite(x)
        total[index[r["subject_id"]], ok] += x[ok]
        count[index[r["subject_id"]], ok] += 1
    values = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return SubjectFeatures(np.array(subjects, dtype=str), values, names)


# ----------------------------------------------------------------------------- models


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


def _scores(name, model, X_pred, pred_ids, fit_ids, names) -> BaselineScores:
    return BaselineScores(
        name=name,
        subject_ids=tuple(pred_ids),
        probabilities=predict_probability(model, X_pred),
        fit_subjects=tuple(fit_ids),
        feature_names=tuple(names),
        model=model,
    )


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
    model = fit_logistic(covariates.rows(fit_ids), _labels_of(labels, fit_ids, "train"), C=C)
    return _scores(
        "clinical", model, covariates.rows(pred_ids), pred_ids, fit_ids, covariates.names
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
    return _scores("radiogrammetry", model, X_pred, pred_ids, fit_ids, names)


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
        p = np.clip(p, eps, 1 - eps)
        x = np.log(p / (1 - p))[:, None]
        return x if covariates is None else np.concatenate([x, covariates.rows(ids)], axis=1)

    names = ("image_logit",) + (() if covariates is None else covariates.names)
    model = fit_logistic(design(fit_ids), y, C=C)
    return _scores("fusion", model, design(pred_ids), pred_ids, fit_ids, names)
