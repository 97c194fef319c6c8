"""Quality control of a screening prediction: is this a usable PA hand/wrist radiograph?

A screening tool meets images it was not made for (a chest film, a foot, a lateral view, a
hand cut off by the collimator). Each image's segmentation is checked, and every failed check
adds a reason; a flagged image keeps its numbers, marked.

Checks (names as they appear in the reasons):

* ``bones missing``: a bone of the seven (radius, ulna, MC1-MC5) has no usable segment
  (absent, or smaller than ``SegmentConfig.min_area_mm2``).
* ``implausible hand geometry``: the Mahalanobis distance of the bones' layout (each bone's
  share of the bone area, the total bone fraction of the image, and the 21 distances between
  bone centroids over the square root of the bone area: invariant to translation, rotation,
  mirroring and scale) from the training cohort's, above the cohort's calibrated quantile.
* ``uncertain segmentation``: the mixture's mutual information over the bone pixels (the
  entropy of the mean prediction minus the mean entropy of the hypotheses: how much the
  hypotheses disagree), above the cohort's calibrated quantile.
* ``spacing unknown``: the file carries no pixel spacing, so the 2MCI's mm are assumed.
* ``DICOM body part``: the header's BodyPartExamined names a part that is not a hand, wrist or
  upper extremity.

:func:`qc_features` measures an image, :func:`calibrate` fits the thresholds on the training
cohort's images, :func:`qc_check` applies them. All inputs are the segmenter's outputs at its
own resolution, so the checks cost a few milliseconds an image.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import combinations

import numpy as np

__all__ = [
    "HAND_BODY_PARTS",
    "QCCalibration",
    "QCFeatures",
    "calibrate",
    "mutual_information",
    "qc_check",
    "qc_features",
]

#: BodyPartExamined values that do not flag an image (DICOM CID 4031 terms; upper case).
HAND_BODY_PARTS = frozenset(
    {"HAND", "WRIST", "FINGER", "THUMB", "EXTREMITY", "UPPER EXTREMITY", "UPPEREXTREMITY", "ARM"}
)

_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class QCFeatures:
    """What the checks read off one image's segmentation.

    Attributes:
      geometry: ``[7 + 1 + 21]`` layout features (bone shares, log bone fraction, centroid
        distances), NaN when a bone is absent from the mean label map.
      mutual_information: mean mutual information (nats) over the pixels the mixture mean
        calls bone.
      present: ``[7]`` bool, the bone is in the mixture-mean label map.
    """

    geometry: np.ndarray
    mutual_information: float
    present: np.ndarray


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    return -(p * np.log(np.clip(p, _EPS, 1.0))).sum(axis)


def mutual_information(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-pixel mutual information ``H(sum_n w_n p_n) - sum_n w_n H(p_n)`` (nats).

    Args:
      probs: ``[N, h, w, C]`` class probabilities of the N hypotheses.
      weights: ``[N]`` hypothesis weights (normalised here).

    Returns:
      ``[h, w]``, zero where the hypotheses agree, up to ``log C``.
    """
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    p = np.asarray(probs, np.float64)
    mean = np.tensordot(w, p, axes=1)
    return np.maximum(_entropy(mean) - np.tensordot(w, _entropy(p), axes=1), 0.0)


def qc_features(probs: np.ndarray, weights: np.ndarray) -> QCFeatures:
    """The QC features of one image from its ``[N, h, w, C]`` hypotheses and ``[N]`` weights.

    Class 0 is the background and classes ``1..C-1`` the bones, in
    :data:`osteo_jax.config.CLASS_NAMES` order.
    """
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    mean = np.tensordot(w, np.asarray(probs, np.float64), axes=1)  # [h, w, C]
    labels = mean.argmax(-1)
    n_bones = mean.shape[-1] - 1
    h, wd = labels.shape
    rows, cols = np.mgrid[0:h, 0:wd]
    areas = np.array([(labels == c).sum() for c in range(1, n_bones + 1)], np.float64)
    present = areas > 0
    bone_area = areas.sum()
    bone = labels > 0
    mi = float(mutual_information(probs, w)[bone].mean()) if bone.any() else 0.0
    geometry = np.full(n_bones + 1 + n_bones * (n_bones - 1) // 2, np.nan)
    if present.all():
        centroids = np.array(
            [[rows[labels == c].mean(), cols[labels == c].mean()] for c in range(1, n_bones + 1)]
        )
        scale = math.sqrt(bone_area)
        dists = [
            np.linalg.norm(centroids[i] - centroids[j]) / scale
            for i, j in combinations(range(n_bones), 2)
        ]
        geometry = np.concatenate(
            [areas / bone_area, [math.log(bone_area / labels.size)], np.asarray(dists)]
        )
    return QCFeatures(geometry=geometry, mutual_information=mi, present=present)


@dataclasses.dataclass(frozen=True)
class QCCalibration:
    """Thresholds fitted on the training cohort (:func:`calibrate`); JSON-able via ``to_dict``.

    Attributes:
      mean: ``[F]`` mean geometry of the cohort.
      precision: ``[F, F]`` inverse of the (Ledoit-Wolf shrunk) covariance.
      geometry_threshold: Mahalanobis distance above which the layout is implausible; None
        when too few cohort images had every bone segmented to fit it (check off).
      mi_threshold: mutual information above which the segmentation is uncertain.
      quantile: the cohort quantile both thresholds sit at (times ``margin``).
      margin: factor applied to the quantiles.
      n_images: images of the cohort with all bones present (the geometry fit's size).
    """

    mean: np.ndarray
    precision: np.ndarray
    geometry_threshold: float | None
    mi_threshold: float
    quantile: float
    margin: float
    n_images: int

    def distance(self, geometry: np.ndarray) -> float:
        """Mahalanobis distance of a geometry vector from the cohort (inf if it has NaN)."""
        if not np.isfinite(geometry).all():
            return math.inf
        d = geometry - self.mean
        return float(math.sqrt(max(d @ self.precision @ d, 0.0)))

    def to_dict(self) -> dict:
        """Plain lists and floats (strict JSON)."""
        out = dataclasses.asdict(self)
        out["mean"] = self.mean.tolist()
        out["precision"] = self.precision.tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> QCCalibration:
        """The inverse of :meth:`to_dict`."""
        return cls(
            **{
                **d,
                "mean": np.asarray(d["mean"], np.float64),
                "precision": np.asarray(d["precision"], np.float64),
            }
        )


def calibrate(
    features: list[QCFeatures],
    *,
    quantile: float = 0.99,
    margin: float = 1.25,
    min_images: int = 10,
) -> QCCalibration:
    """Fits the geometry and uncertainty thresholds on a cohort of usable hand radiographs.

    Args:
      features: :func:`qc_features` of the cohort's images.
      quantile: the cohort quantile of each score the threshold sits at.
      margin: the quantile is multiplied by this (new cohorts differ a little from the
        training one: the margin keeps the flag rate on them near ``1 - quantile``).
      min_images: fewest cohort images with every bone segmented to fit the geometry on;
        with fewer (a segmenter that does not find all bones) the geometry check is off:
        ``geometry_threshold`` is None (the images are flagged for missing bones anyway).

    Returns:
      The calibration.

    Raises:
      ValueError: no features.
    """
    from sklearn.covariance import LedoitWolf

    if not features:
        raise ValueError("QC calibration needs the features of at least one cohort image")
    mi = np.array([f.mutual_information for f in features])
    geo = np.array([f.geometry for f in features if np.isfinite(f.geometry).all()])
    n_feat = len(features[0].geometry)
    calib = QCCalibration(
        mean=np.zeros(n_feat),
        precision=np.zeros((n_feat, n_feat)),
        geometry_threshold=None,
        mi_threshold=float(np.quantile(mi, quantile) * margin),
        quantile=quantile,
        margin=margin,
        n_images=len(geo),
    )
    if len(geo) < min_images:
        return calib
    cov = LedoitWolf().fit(geo)
    calib = dataclasses.replace(calib, mean=geo.mean(0), precision=np.linalg.pinv(cov.covariance_))
    dist = np.array([calib.distance(g) for g in geo])
    return dataclasses.replace(
        calib, geometry_threshold=float(np.quantile(dist, quantile) * margin)
    )


def qc_check(
    features: QCFeatures,
    calib: QCCalibration,
    *,
    valid: np.ndarray,
    bones: tuple[str, ...],
    spacing_known: bool,
    body_part: str | None = None,
) -> tuple[list[str], dict[str, float]]:
    """The reasons an image is not a usable PA hand/wrist radiograph (empty: it passes).

    Args:
      features: the image's :func:`qc_features`.
      calib: the training cohort's :func:`calibrate`.
      valid: ``[len(bones)]`` the bone's segment is usable (``Segments.valid``).
      bones: the bone names of ``valid``.
      spacing_known: the file carried its pixel spacing (or the user gave one).
      body_part: DICOM BodyPartExamined, if any.

    Returns:
      ``(reasons, scores)``: human-readable reasons, and the scores behind them
      (``geometry_distance``: inf with a bone missing, NaN when the check is off;
      ``mutual_information``) for the output row.
    """
    reasons = []
    missing = [b for b, v in zip(bones, valid, strict=True) if not v]
    if missing:
        reasons.append(f"bones missing: {', '.join(missing)}")
    fitted = calib.geometry_threshold is not None
    dist = calib.distance(features.geometry) if fitted else math.nan
    if fitted and math.isfinite(dist) and dist > calib.geometry_threshold:
        reasons.append(
            f"implausible hand geometry (distance {dist:.1f} > {calib.geometry_threshold:.1f})"
        )
    if features.mutual_information > calib.mi_threshold:
        reasons.append(
            f"uncertain segmentation (mutual information {features.mutual_information:.3f} > "
            f"{calib.mi_threshold:.3f})"
        )
    if not spacing_known:
        reasons.append("spacing unknown (2MCI mm assume the training spacing)")
    if body_part is not None and body_part.strip().upper() not in HAND_BODY_PARTS:
        reasons.append(f"DICOM body part {body_part!r}")
    scores = {"geometry_distance": dist, "mutual_information": features.mutual_information}
    return reasons, scores
