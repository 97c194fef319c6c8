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

The head is fitted on the classifier's own training subjects, whose segment probabilities are
optimistic (the classifier saw them); it learns the relative weight of the bones rather than a
calibration, and the validation-chosen threshold (:mod:`osteo_jax.eval.thresholds`) absorbs a
shift. A fitted head is saved as ``aggregate.json`` (:data:`AGGREGATE_FILE`) in its part's folder
and restored by :func:`load_head`. This module needs no JAX.
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
    "LogisticHead",
    "aggregate_subjects",
    "bone_logits",
    "fit_logistic_head",
    "load_head",
]

AGGREGATE_FILE = "aggregate.json"  # per part: the fitted logistic head


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


@dataclasses.dataclass(frozen=True)
class LogisticHead:
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

    def save(self, path: str | os.PathLike) -> None:
        """Writes the head as strict JSON (atomically; a NaN median is written as null)."""
        from osteo_jax.data.folder import write_json

        write_json(path, self.to_dict())


def load_head(path: str | os.PathLike) -> LogisticHead:
    """The :class:`LogisticHead` saved at ``path`` (an ``aggregate.json``).

    Raises:
      ValueError: the file is not a saved head.
    """
    try:
        d = json.loads(Path(path).read_text())
        return LogisticHead.from_dict(d)
    except (KeyError, TypeError, json.JSONDecodeError) as err:
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
    head: LogisticHead | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each subject's probability from its segments: the mean rule, or a fitted head.

    Args:
      segment_probs: ``[n_images, B]`` probability of osteoporosis per segment.
      valid: ``[n_images, B]`` bool.
      subject_ids: ``[n_images]``; a subject's images are averaged per bone first.
      head: None for the mean of the valid segments
        (:func:`~osteo_jax.eval.cls_metrics.subject_probabilities`), else a
        :class:`LogisticHead` over the per-bone logits (:func:`bone_logits`).

    Returns:
      ``(subjects [n_subjects] sorted, probs [n_subjects])``; a subject with no valid segment
      at all gets 0.5 under either rule (no evidence either way).

    Raises:
      ValueError: invalid inputs, or a head of another number of bones.
    """
    if head is None:
        return subject_probabilities(segment_probs, valid, subject_ids)
    subjects, x = bone_logits(segment_probs, valid, subject_ids, eps=head.eps)
    p = head.probability(x)
    return subjects, np.where(np.isnan(x).all(axis=1), 0.5, p)
