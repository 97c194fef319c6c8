"""Subject-level feature tables the baselines are fitted on: covariates, labels, measured indices.

* :func:`read_covariates`: the covariates of a dataset folder's ``subjects.csv`` (default age
  and sex) as a numeric design matrix;
* :func:`read_labels`: the 0/1 labels of ``subjects.csv``;
* :func:`radiogrammetry_features`: the per-subject cortical indices of a ``radiogrammetry.json``
  (:func:`osteo_jax.pipeline.radiogrammetry_run.radiogrammetry_of_run`).

Each is a :class:`SubjectFeatures` (one row per subject), or a dict for the labels, read by
:mod:`osteo_jax.eval.baselines`. This module needs no JAX.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import SUBJECTS_CSV, nulls_to_nan, read_csv
from osteo_jax.eval.radiogrammetry.absorptiometry import ABSORPTIOMETRY_KEYS

__all__ = [
    "DEFAULT_COVARIATES",
    "RADIOGRAMMETRY_BONES",
    "SubjectFeatures",
    "radiogrammetry_features",
    "read_covariates",
    "read_labels",
]

DEFAULT_COVARIATES: tuple[str, ...] = ("age", "sex")
RADIOGRAMMETRY_BONES: tuple[str, ...] = ("MC2", "MC3", "MC4", "radius")
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
    radio: str | os.PathLike | Mapping,
    bones: Sequence[str] = RADIOGRAMMETRY_BONES,
    *,
    absorptiometry: bool = False,
    porosity: bool = False,
) -> SubjectFeatures:
    """Per-subject cortical indices from a ``radiogrammetry.json`` (or its loaded content).

    Args:
      radio: the file :func:`osteo_jax.pipeline.radiogrammetry_run.radiogrammetry_of_run` writes,
        or its dict (``per_image`` records with ``subject_id`` and ``<bone>_ci``).
      bones: bones whose ``<bone>_ci`` are read.
      absorptiometry: also read the grey levels, areas and soft-tissue level
        (:data:`~osteo_jax.eval.radiogrammetry.absorptiometry.ABSORPTIOMETRY_KEYS`).
      porosity: also read each of ``bones``' fitted cortical porosity (``<bone>_porosity``,
        :mod:`~osteo_jax.eval.radiogrammetry.porosity`; NaN without a detector calibration).

    Returns:
      ``SubjectFeatures(subject_ids [n] sorted, values [n, d], names)``: per subject the mean
      over its images of the finite values, NaN where no image has one.

    Raises:
      ValueError: a record without ``subject_id`` or one of the keys read (a file written
        before absorptiometry was measured has none of its keys).
    """
    if not isinstance(radio, Mapping):
        radio = nulls_to_nan(json.loads(Path(radio).read_text()))  # NaN is null in JSON
    names = tuple(f"{b}_ci" for b in bones) + (ABSORPTIOMETRY_KEYS if absorptiometry else ())
    names += tuple(f"{b}_porosity" for b in bones) if porosity else ()
    records = radio.get("per_image", [])
    for k, r in enumerate(records):
        absent = [n for n in ("subject_id", *names) if n not in r]
        if absent:
            raise ValueError(
                f"radiogrammetry record {k} has no {absent[:3]}{'...' * (len(absent) > 3)}"
            )
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
