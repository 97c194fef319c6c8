"""The image-only stacked score as a saved model: what ``predict`` and ``screen`` apply.

The comparison's row ``image model + measurements (stacked)``
(:func:`~osteo_jax.pipeline.comparison.compare_rows`) combines, for each protocol part, the
image model's probability with that of a measurement baseline (a logistic regression on the
radiogrammetry measurements, fitted on the part's training subjects and chosen by
cross-validated AUC on them), weighed by a second logistic regression on the part's validation
subjects. :class:`ImageStacker` holds both regressions as plain numbers (JSON, no pickle), so
that a new radiograph gets exactly the score the row was evaluated with::

    p = sigmoid(b + w1 * logit(p_image) + w2 * logit(p_measurement(x)))

with each regression's inputs median-imputed (the measurement's; the training subjects'
medians) and standardised as when it was fitted. This module needs neither JAX nor
scikit-learn at prediction.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["STACKER_FILE", "ImageStacker", "LinearLogistic"]

STACKER_FILE = "stacker.json"  # in each protocol part's folder (``seed<k>/``, ``fold<i>/``)


@dataclasses.dataclass(frozen=True)
class LinearLogistic:
    """A fitted standardised logistic regression, optionally median-imputed, as numbers.

    Attributes:
      names: ``[d]`` input features, in order.
      median: ``[d]`` values that replace NaN (None: NaN is not allowed).
      mean, scale: ``[d]`` standardisation of the fitting subjects.
      coef: ``[d]`` weights of the standardised inputs.
      intercept: the bias.
    """

    names: tuple[str, ...]
    median: np.ndarray | None
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def from_pipeline(cls, model, names: Sequence[str]) -> LinearLogistic:
        """Reads a :func:`~osteo_jax.eval.baselines.fit_logistic` pipeline (scikit-learn)."""
        steps = model.named_steps
        logistic = steps["logistic"]
        sign = 1.0 if list(logistic.classes_).index(1) == 1 else -1.0
        impute = steps.get("impute")
        return cls(
            names=tuple(names),
            median=None if impute is None else np.asarray(impute.statistics_, np.float64),
            mean=np.asarray(steps["scale"].mean_, np.float64),
            scale=np.asarray(steps["scale"].scale_, np.float64),
            coef=sign * np.asarray(logistic.coef_[0], np.float64),
            intercept=sign * float(logistic.intercept_[0]),
        )

    def probability(self, X: np.ndarray) -> np.ndarray:
        """``[n]`` float64 ``P(label = 1)`` for ``X [n, d]`` (columns as :attr:`names`)."""
        X = np.array(X, np.float64, ndmin=2)
        if X.shape[1] != len(self.names):
            raise ValueError(f"expected {len(self.names)} features {self.names}, got {X.shape}")
        if self.median is not None:
            X = np.where(np.isnan(X), self.median, X)
        elif np.isnan(X).any():
            raise ValueError(f"NaN among {self.names}, which this model does not impute")
        z = (X - self.mean) / self.scale @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def as_dict(self) -> dict:
        """JSON-ready numbers."""
        return {
            "names": list(self.names),
            "median": None if self.median is None else self.median.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LinearLogistic:
        """Inverse of :meth:`as_dict`; ValueError for inconsistent lengths."""
        names = tuple(d["names"])
        arrays = {k: np.asarray(d[k], np.float64) for k in ("mean", "scale", "coef")}
        median = None if d.get("median") is None else np.asarray(d["median"], np.float64)
        for k, v in {**arrays, "median": median}.items():
            if v is not None and v.shape != (len(names),):
                raise ValueError(f"{k} has shape {v.shape}, expected ({len(names)},)")
        return cls(names, median, intercept=float(d["intercept"]), **arrays)


@dataclasses.dataclass(frozen=True)
class ImageStacker:
    """One protocol part's image-only stacked score.

    Attributes:
      row: the comparison row of the measurement baseline (e.g. ``radiogrammetry + porosity
        (...)``).
      measurement: the measurement baseline (inputs: ``radiogrammetry.json`` keys such as
        ``MC2_ci`` or ``radius_porosity``).
      stack: the regression on ``[logit(image probability), logit(measurement probability)]``.
      eps: probabilities are clipped to ``[eps, 1 - eps]`` before the logit.
    """

    row: str
    measurement: LinearLogistic
    stack: LinearLogistic
    eps: float

    @property
    def features(self) -> tuple[str, ...]:
        """The measurements it reads."""
        return self.measurement.names

    def probability(self, p_image: np.ndarray, measurements: np.ndarray) -> np.ndarray:
        """``[n]`` stacked probability.

        Args:
          p_image: ``[n]`` the image model's probabilities (this part's model).
          measurements: ``[n, d]`` the :attr:`features` (NaN where not measured: the training
            subjects' median stands in, as in the evaluation).
        """
        p_m = self.measurement.probability(measurements)
        z = np.column_stack([self._logit(p_image), self._logit(p_m)])
        return self.stack.probability(z)

    def _logit(self, p) -> np.ndarray:
        p = np.clip(np.asarray(p, np.float64), self.eps, 1 - self.eps)
        return np.log(p / (1 - p))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON (atomically: a temporary file renamed)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        body = {
            "row": self.row,
            "measurement": self.measurement.as_dict(),
            "stack": self.stack.as_dict(),
            "eps": self.eps,
        }
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageStacker:
        """Reads :meth:`save`'s JSON; ValueError naming the file when it is malformed."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            stacker = cls(
                row=str(d["row"]),
                measurement=LinearLogistic.from_dict(d["measurement"]),
                stack=LinearLogistic.from_dict(d["stack"]),
                eps=float(d["eps"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable stacker ({type(e).__name__}: {e})") from e
        if len(stacker.stack.names) != 2:
            raise ValueError(f"{path}: the stack must read 2 inputs, got {stacker.stack.names}")
        return stacker
