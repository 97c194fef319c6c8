"""A subject's probability from its bone segments: the mean, or a learned per-bone head.

The protocol classifies each bone segment; a subject's score combines its segments
(``ClsConfig.aggregate``):

* ``"mean"``: the mean probability of its valid segments over all its images
  (:func:`~osteo_jax.eval.cls_metrics.subject_probabilities`);
* ``"logistic"``: a logistic regression over the per-bone logits
  ``x_b = log(p_b / (1 - p_b))``, ``p_b`` the subject's mean probability of bone ``b`` over its
  images (clipped to ``[eps, 1 - eps]`` before the logit), fitted per seed / fold on the
  training subjects (:func:`fit_logistic_head`). A bone with no valid segment takes the
  fitting subjects' median logit of that bone; the logits are standardised by the fitting
  subjects' mean and SD, and the L2-penalised fit is
  :func:`osteo_jax.eval.baselines.fit_logistic` (``C = DEFAULT_C``). The head can thus weight
  the bones that carry the label (e.g. the metacarpals' cortical thinning) above those that do
  not, where the mean weights every bone alike.

* ``"features"``: a logistic regression over the subject's pooled backbone features of every
  bone side by side (``[B * D]``: each bone's features averaged over the subject's images), L2
  strength chosen by 5-fold cross-validated log-loss on the fitting subjects
  (:func:`fit_feature_head`). A bone with no valid segment takes the fitting subjects' mean
  features of that bone. Unlike the shared segment head, it weighs each bone's features on
  their own and compares bones within a subject (a bone's grey level against another's); with
  ``BackboneConfig.grey_levels`` the features carry each segment's grey-level statistics.

The heads are fitted on the classifier's own training subjects. Their segment probabilities are
optimistic (the classifier saw them), so the logistic head learns the relative weight of the
bones rather than a calibration, and the validation-chosen threshold
(:mod:`osteo_jax.eval.thresholds`) absorbs a shift; a linear probe's frozen features are not
fitted to the labels, so the feature head's are not optimistic (fine-tuned ones are). A fitted
head is saved as ``aggregate.json`` (:data:`AGGREGATE_FILE`) in its part's folder and restored by
:func:`load_head`. This module needs no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from osteo_jax.eval.baselines import DEFAULT_C, SCORE_EPS, fit_logistic
from osteo_jax.eval.cls_metrics import subject_probabilities

__all__ = [
    "AGGREGATE_FILE",
    "FEATURE_CS",
    "FeatureHead",
    "LogisticHead",
    "aggregate_subjects",
    "bone_features",
    "bone_logits",
    "fit_feature_head",
    "fit_logistic_head",
    "load_head",
]

AGGREGATE_FILE = "aggregate.json"  # per part: the fitted logistic head
# Inverse L2 strengths the feature head chooses among (on standardised features).
FEATURE_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


def bone_logits(
    segment_probs: np.ndarray, valid: np.ndarray, subject_ids: np.ndarray, *, eps: float = SCORE_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """Per subject and bone: the logit of the mean probability over the subject's images.

    Args:
      segment_probs: ``[n_images, B]`` probability of osteoporosis per segment.
      valid: ``[n_images, B]`` bool; invalid segments are ignored.
      subject_ids: ``[n_images]``.
      eps: the mean is clipped to ``[eps, 1 - eps]`` before the logit.

    Returns:
      ``(subjects [n_subjects] sorted, logits [n_subjects, B] float64)``; NaN where a subject
      has no valid segment of a bone.

    Raises:
      ValueError: as :func:`~osteo_jax.eval.cls_metrics.subject_probabilities` (shapes, no
        images, a valid probability that is NaN or outside ``[0, 1]``).
    """
    segment_probs, valid = np.asarray(segment_probs, np.float64), np.asarray(valid, bool)
    subjects, _ = subject_probabilities(segment_probs, valid, subject_ids)  # checks inputs
    _, inverse = np.unique(np.asarray(subject_ids), return_inverse=True)
    columns = []
    for b in range(segment_probs.shape[1]):
        _, p = subject_probabilities(segment_probs[:, b : b + 1], valid[:, b : b + 1], subject_ids)
        count = np.bincount(inverse, weights=valid[:, b], minlength=len(subjects))
        p = np.clip(p, eps, 1 - eps)
        columns.append(np.where(count > 0, np.log(p / (1 - p)), np.nan))
    return subjects, np.stack(columns, axis=1)


class _SavedHead:
    """What the heads share: :meth:`save` writes their ``to_dict()`` for :func:`load_head`."""

    def save(self, path: str | os.PathLike) -> None:
        """Writes the head as strict JSON (atomically; a NaN is written as null)."""
        from osteo_jax.data.folder import write_json

        write_json(path, self.to_dict())


@dataclasses.dataclass(frozen=True)
class LogisticHead(_SavedHead):
    """A fitted per-bone logistic head: ``P = sigmoid(b + w . (x - mean) / scale)``.

    Attributes:
      bones: ``[B]`` bone names, the order of the other arrays.
      coef: ``[B]`` weights ``w`` of the standardised logits.
      intercept: ``b``.
      mean: ``[B]`` fitting subjects' mean logit (after imputation).
      scale: ``[B]`` fitting subjects' SD of the logit (1 where it is 0).
      medians: ``[B]`` fitting subjects' median logit, imputed for a missing bone.
      eps: clipping of the probabilities before the logit.
    """

    bones: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    medians: np.ndarray
    eps: float = SCORE_EPS

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """``[n]`` probabilities of ``[n, B]`` per-bone logits (NaN: missing, imputed)."""
        x = np.asarray(logits, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.bones):
            raise ValueError(f"logits must be [n, {len(self.bones)}] ({self.bones}), got {x.shape}")
        x = np.where(np.isnan(x), self.medians, x)
        z = (x - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(self.intercept + z @ self.coef)))

    def to_dict(self) -> dict:
        """JSON-ready dict: ``rule``, ``bones``, ``coef``, ``intercept``, ``mean``, ``scale``, ...

        Also ``medians`` and ``eps``: everything :meth:`from_dict` needs.
        """
        return {
            "rule": "logistic",
            "bones": list(self.bones),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "medians": self.medians.tolist(),
            "eps": float(self.eps),
        }

    @classmethod
    def from_dict(cls, d: dict) -> LogisticHead:
        """The head of :meth:`to_dict` output."""
        bones = tuple(d["bones"])
        arrays = {k: np.asarray(d[k], np.float64) for k in ("coef", "mean", "scale", "medians")}
        bad = [k for k, v in arrays.items() if v.shape != (len(bones),)]
        if bad:
            raise ValueError(f"aggregate head: {bad} do not have one value per bone of {bones}")
        return cls(bones=bones, intercept=float(d["intercept"]), eps=float(d["eps"]), **arrays)


def bone_features(
    features: np.ndarray, valid: np.ndarray, subject_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per subject and bone: the mean pooled features over the subject's valid segments.

    Args:
      features: ``[n_images, B, D]`` backbone features of every segment (invalid ones ignored).
      valid: ``[n_images, B]`` bool.
      subject_ids: ``[n_images]``.

    Returns:
      ``(subjects [n_subjects] sorted, x [n_subjects, B, D] float64, present [n_subjects, B])``;
      ``x`` is 0 where ``present`` is False (no valid segment of that bone).

    Raises:
      ValueError: shapes that do not match, or a valid segment's feature that is not finite.
    """
    features, valid = np.asarray(features, np.float64), np.asarray(valid, bool)
    ids = np.asarray(subject_ids)
    if features.ndim != 3 or valid.shape != features.shape[:2] or ids.shape != valid.shape[:1]:
        raise ValueError(
            f"features [n, B, D], valid [n, B] and subject_ids [n] expected, got "
            f"{features.shape}, {valid.shape}, {ids.shape}"
        )
    if not np.isfinite(features[valid]).all():
        raise ValueError("a valid segment has non-finite backbone features")
    subjects, inverse = np.unique(ids, return_inverse=True)
    count = np.zeros((len(subjects), valid.shape[1]))
    np.add.at(count, inverse, valid)
    total = np.zeros((len(subjects),) + features.shape[1:])
    np.add.at(total, inverse, np.where(valid[..., None], features, 0.0))
    present = count > 0
    return subjects, total / np.maximum(count, 1)[..., None], present


@dataclasses.dataclass(frozen=True)
class FeatureHead(_SavedHead):
    """A fitted subject head on per-bone features: ``P = sigmoid(b + sum(w * x))``.

    ``x`` is ``[B, D]``: the subject's mean features per bone (:func:`bone_features`), ``fill``
    where a bone is missing. The standardisation of the fit is folded into ``coef`` and
    ``intercept``, so they act on raw features.

    Attributes:
      bones: ``[B]`` bone names, the order of the rows of the arrays.
      coef: ``[B, D]`` weights on the raw features.
      intercept: ``b``.
      fill: ``[B, D]`` fitting subjects' mean features per bone, for a missing bone.
      C: the inverse L2 strength chosen by cross-validation.
    """

    bones: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    fill: np.ndarray
    C: float

    def probability(self, x: np.ndarray, present: np.ndarray) -> np.ndarray:
        """``[n]`` probabilities of ``[n, B, D]`` per-bone features (``present`` ``[n, B]``)."""
        x, present = np.asarray(x, np.float64), np.asarray(present, bool)
        if x.ndim != 3 or x.shape[1:] != self.coef.shape or present.shape != x.shape[:2]:
            raise ValueError(
                f"features must be [n, {len(self.bones)}, {self.coef.shape[1]}] ({self.bones}), "
                f"got {x.shape}"
            )
        x = np.where(present[..., None], x, self.fill)
        return 1.0 / (1.0 + np.exp(-(self.intercept + np.einsum("nbd,bd->n", x, self.coef))))

    def to_dict(self) -> dict:
        """JSON-ready dict: ``rule`` ("features"), ``bones``, ``coef``, ``intercept``, ...

        Also ``fill`` and ``C``: everything :meth:`from_dict` needs.
        """
        return {
            "rule": "features",
            "bones": list(self.bones),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
            "fill": self.fill.tolist(),
            "C": float(self.C),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureHead:
        """The head of :meth:`to_dict` output."""
        bones = tuple(d["bones"])
        coef, fill = (np.asarray(d[k], np.float64) for k in ("coef", "fill"))
        if coef.ndim != 2 or coef.shape[0] != len(bones) or fill.shape != coef.shape:
            raise ValueError(f"aggregate head: coef and fill are not [B, D] for bones {bones}")
        return cls(bones, coef, float(d["intercept"]), fill, float(d["C"]))


def fit_feature_head(
    features: np.ndarray,
    valid: np.ndarray,
    subject_ids: np.ndarray,
    labels: np.ndarray,
    bones: tuple[str, ...],
    *,
    Cs: tuple[float, ...] = FEATURE_CS,
    folds: int = 5,
) -> FeatureHead:
    """Fits the per-bone feature head on the (training) subjects of these images.

    The subject's ``[B, D]`` features (a missing bone filled with the fitting subjects' mean of
    it) are flattened, standardised and fed to an L2 logistic regression (lbfgs); its inverse
    strength is the one of ``Cs`` with the best mean log-loss over ``folds`` stratified folds
    (scikit-learn's ``LogisticRegressionCV``, Newton-Cholesky solver; deterministic: unshuffled
    folds). About 10 s for 1,600 subjects x 7 bones x 70 features on 2 cores.

    Args:
      features: ``[n_images, B, D]`` backbone features of the fitting images' segments.
      valid: ``[n_images, B]`` bool.
      subject_ids: ``[n_images]``.
      labels: ``[n_images]`` 0/1; a subject's label is that of its first image.
      bones: ``[B]`` names.
      Cs: candidate inverse L2 strengths.
      folds: cross-validation folds (at most the minority class's count of subjects).

    Returns:
      The fitted :class:`FeatureHead`.

    Raises:
      ValueError: a bone has no valid segment in any fitting image, ``bones`` does not match
        ``B``, fewer than 2 subjects of a class, or invalid inputs.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    subjects, x, present = bone_features(features, valid, subject_ids)
    if len(bones) != x.shape[1]:
        raise ValueError(f"{len(bones)} bone names for {x.shape[1]} segment columns")
    empty = [b for b, col in zip(bones, present.T, strict=True) if not col.any()]
    if empty:
        raise ValueError(f"no fitting subject has a valid segment of bone(s) {empty}")
    ids, labels = np.asarray(subject_ids), np.asarray(labels)
    first = {s: i for i, s in reversed(list(enumerate(ids)))}
    y = labels[[first[s] for s in subjects]].astype(np.int64)
    minority = int(min((y == 0).sum(), (y == 1).sum())) if np.isin(y, (0, 1)).all() else 0
    if minority < 2:
        raise ValueError(f"labels must be 0/1 with >= 2 subjects of each class, got {y.tolist()}")
    fill = (x * present[..., None]).sum(0) / present.sum(0)[:, None]
    flat = np.where(present[..., None], x, fill).reshape(len(subjects), -1)
    scaler = StandardScaler().fit(flat)
    model = LogisticRegressionCV(
        Cs=list(Cs),
        cv=StratifiedKFold(min(folds, minority)),
        scoring="neg_log_loss",
        l1_ratios=(0.0,),  # plain L2
        solver="newton-cholesky",  # exact Newton steps: 30x faster than lbfgs at B * D ~ 500
        max_iter=100,
        tol=1e-8,
        use_legacy_attributes=False,
    ).fit(scaler.transform(flat), y)
    coef = model.coef_[0] / scaler.scale_
    intercept = float(model.intercept_[0] - coef @ scaler.mean_)
    return FeatureHead(
        bones=tuple(bones),
        coef=coef.reshape(x.shape[1:]),
        intercept=intercept,
        fill=fill,
        C=float(np.ravel(model.C_)[0]),
    )


def load_head(path: str | os.PathLike) -> LogisticHead | FeatureHead:
    """The head saved at ``path`` (an ``aggregate.json``): logistic or feature head.

    Raises:
      ValueError: the file is not a saved head.
    """
    try:
        d = json.loads(Path(path).read_text())
        if d.get("rule") == "features":
            return FeatureHead.from_dict(d)
        return LogisticHead.from_dict(d)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a saved aggregation head ({err!r})") from err


def fit_logistic_head(
    segment_probs: np.ndarray,
    valid: np.ndarray,
    subject_ids: np.ndarray,
    labels: np.ndarray,
    bones: tuple[str, ...],
    *,
    C: float = DEFAULT_C,
    eps: float = SCORE_EPS,
) -> LogisticHead:
    """Fits the per-bone logistic head on the (training) subjects of these images.

    Args:
      segment_probs: ``[n_images, B]`` segment probabilities of the fitting images.
      valid: ``[n_images, B]`` bool.
      subject_ids: ``[n_images]``.
      labels: ``[n_images]`` 0/1; a subject's label is that of its first image (as
        :func:`~osteo_jax.eval.cls_metrics.subject_scores`).
      bones: ``[B]`` names of the columns.
      C: inverse L2 strength on the standardised logits.
      eps: clipping before the logit.

    Returns:
      The fitted :class:`LogisticHead`.

    Raises:
      ValueError: a bone has no valid segment in any fitting image, ``bones`` does not match
        ``B``, the subjects hold one class only, or the inputs are invalid.
    """
    subjects, x = bone_logits(segment_probs, valid, subject_ids, eps=eps)
    if len(bones) != x.shape[1]:
        raise ValueError(f"{len(bones)} bone names for {x.shape[1]} segment columns")
    empty = [b for b, col in zip(bones, x.T, strict=True) if np.isnan(col).all()]
    if empty:
        raise ValueError(f"no fitting subject has a valid segment of bone(s) {empty}")
    ids, labels = np.asarray(subject_ids), np.asarray(labels)
    first = {s: i for i, s in reversed(list(enumerate(ids)))}
    y = labels[[first[s] for s in subjects]]
    model = fit_logistic(x, y, C=C, impute_median=True)
    logistic = model["logistic"]
    return LogisticHead(
        bones=tuple(bones),
        coef=logistic.coef_[0].astype(np.float64),
        intercept=float(logistic.intercept_[0]),
        mean=model["scale"].mean_.astype(np.float64),
        scale=model["scale"].scale_.astype(np.float64),
        medians=model["impute"].statistics_.astype(np.float64),
        eps=eps,
    )


def aggregate_subjects(
    segment_probs: np.ndarray,
    valid: np.ndarray,
    subject_ids: np.ndarray,
    head: LogisticHead | FeatureHead | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each subject's probability from its segments: the mean rule, or a fitted head.

    Args:
      segment_probs: ``[n_images, B]`` probability of osteoporosis per segment.
      valid: ``[n_images, B]`` bool.
      subject_ids: ``[n_images]``; a subject's images are averaged per bone first.
      head: None for the mean of the valid segments
        (:func:`~osteo_jax.eval.cls_metrics.subject_probabilities`), a :class:`LogisticHead`
        over the per-bone logits (:func:`bone_logits`), or a :class:`FeatureHead` over the
        per-bone features (:func:`bone_features`).
      features: ``[n_images, B, D]`` backbone features of the segments; required by a
        :class:`FeatureHead`, ignored otherwise.

    Returns:
      ``(subjects [n_subjects] sorted, probs [n_subjects])``; a subject with no valid segment
      at all gets 0.5 under every rule (no evidence either way).

    Raises:
      ValueError: invalid inputs, a head of another number of bones, or a feature head without
        ``features``.
    """
    if head is None:
        return subject_probabilities(segment_probs, valid, subject_ids)
    if isinstance(head, FeatureHead):
        if features is None:
            raise ValueError("a feature aggregation head needs the segments' backbone features")
        subjects, x, present = bone_features(features, valid, subject_ids)
        return subjects, np.where(present.any(axis=1), head.probability(x, present), 0.5)
    subjects, x = bone_logits(segment_probs, valid, subject_ids, eps=head.eps)
    p = head.probability(x)
    return subjects, np.where(np.isnan(x).all(axis=1), 0.5, p)
