"""Radiogrammetry of a dataset folder measured on a trained segmenter's predicted masks.

:func:`radiogrammetry_of_run` predicts the masks of the images of a segmenter run's subjects
(one split, or ``"all"``: also the subjects the segmenter trained on, whose indices the
radiogrammetry baseline of :mod:`osteo_jax.eval.baselines` is fitted on) and measures the
cortical index of MC2 (2MCI), MC3, MC4 and the radius on the mixture-mean segmentation
(:mod:`osteo_jax.eval.radiogrammetry`). The 2MCI's spread over the heaviest segmentation
hypotheses costs one profile fit per hypothesis, so it is measured only for the subjects of
``spread_split``. Agreement with the generator's truth (``bones.csv``) is summarised on the
segmenter's validation subjects, which it never trained on.

The result (``out_json``)::

    {"summary": {"n_images", "split", "spread_split", "eval_split", "seg_step",
                 "n_images_by_split", "<bone>_r", "<bone>_mae", "<bone>_n", "MC2_vs_tscore_r",
                 "MC2_mean_hypothesis_sd", and with split "all" the same agreement keys with
                 the suffix "_all"},
     "per_image": [{"image_id", "subject_id", "split", "MC2_ci", "MC3_ci", "MC4_ci",
                    "radius_ci", "MC2_ci_sd", "MC2_ci_lo", "MC2_ci_hi", "<bone>_grey",
                    "<bone>_area_mm2" (the 7 bones), "soft_grey", "<bone>_porosity" (MC2,
                    MC3, MC4, radius), "true_MC2_ci" (with bones.csv), "t_score"}]}

The ``_grey`` and ``_area_mm2`` keys are radiographic absorptiometry of the same mixture-mean
segmentation on the stored grey scale (:mod:`osteo_jax.eval.radiogrammetry.absorptiometry`).
``_porosity`` is the cortical porosity of each measured shaft from a Beer-Lambert fit of its
profiles (:mod:`osteo_jax.eval.radiogrammetry.porosity`); it needs the detector's calibration,
which only a synthetic dataset records (``dataset.json``), and is NaN elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from osteo_jax.data.folder import IMAGES_CSV, SUBJECTS_CSV, read_csv, write_json
from osteo_jax.data.segments import labels_from_probs
from osteo_jax.data.workers import spawn_pool
from osteo_jax.eval.radiogrammetry.absorptiometry import absorptiometry
from osteo_jax.eval.radiogrammetry.hypotheses import measure_hypotheses
from osteo_jax.eval.radiogrammetry.measure import DEFAULT_BONES, measure_radiograph
from osteo_jax.eval.radiogrammetry.porosity import (
    DetectorCalibration,
    calibration_of_dataset,
    measure_porosity,
)

__all__ = ["DEFAULT_SPACING", "measurements_of", "radiogrammetry_of_run"]

DEFAULT_SPACING = 0.2  # mm; the synthetic detector's, used when a file carries none
NO_SPLIT = "none"  # per-image split of a subject absent from the run's split.json
_SPREAD = ("sd", "lo", "hi")


def radiogrammetry_of_run(
    data: str | os.PathLike,
    seg_run: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    split: str = "val",
    spread_split: str | None = "val",
    hypotheses: int = 4,
    progress: bool = True,
    jobs: int = 0,
) -> dict:
    """2MCI and cortical indices measured on a segmenter's predicted masks.

    Measures every image of the run's ``split`` subjects: 2MCI, MC3, MC4 and radius cortical
    index on the mixture-mean segmentation (all hypotheses, by their weights), and for the
    subjects of ``spread_split`` the 2MCI's spread over the ``hypotheses`` heaviest hypotheses
    (0 = all); elsewhere the spread fields are NaN. Where the dataset has the generator's truth
    (``bones.csv``) the Pearson r and mean absolute error against the true indices are added.
    Writes ``out_json`` atomically and returns its content (format in the module docstring).

    Args:
      data: the dataset folder the segmenter was trained on.
      seg_run: the segmenter run folder (``split.json`` with ``train`` and ``val``).
      out_json: file to write.
      split: a part of the run's ``split.json`` (``"val"``: subjects the segmenter never
        trained on) or ``"all"``: every image of ``images.csv``.
      spread_split: a part of ``split.json`` or ``"all"`` whose images get the hypothesis
        spread; None for none.
      hypotheses: number of heaviest hypotheses the spread is taken over (0 = all).
      progress: show a progress bar.
      jobs: worker processes that measure (spawned; a batch is measured while the next one
        is segmented); 0 measures in this process. The result does not depend on it.

    Returns:
      ``{"summary": {...}, "per_image": [...]}``. The unsuffixed agreement keys of the
      summary are over the images of ``eval_split`` (``"val"`` when ``split`` is ``"all"``,
      else ``split``); with ``split="all"`` the ``_all`` keys are over every image.

    Raises:
      ValueError: an unknown split, negative ``hypotheses``, or no image to measure.
    """
    import jax
    from tqdm.auto import tqdm

    from osteo_jax.data.imageio import isotropic_spacing, read_image
    from osteo_jax.data.inmemory import normalise, resize_image
    from osteo_jax.data.table_rules import bits_stored
    from osteo_jax.eval.seg_eval import make_predict_fn, predict_batches
    from osteo_jax.pipeline.seg_run import restore_segmenter

    data, seg_run, out_json = Path(data), Path(seg_run), Path(out_json)
    parts = json.loads((seg_run / "split.json").read_text())
    for name, value in (("split", split), ("spread_split", spread_split)):
        if value is not None and value != "all" and value not in parts:
            raise ValueError(
                f"{name} {value!r}: expected 'all' or a part of {seg_run / 'split.json'} "
                f"({', '.join(parts)})"
            )
    if hypotheses < 0:
        raise ValueError(f"hypotheses must be >= 0 (0 = all), got {hypotheses}")
    split_of = _subject_split(parts)
    bits = bits_stored(data)  # the grey levels absorptiometry reads: the DICOM scale
    calib = calibration_of_dataset(data)  # None: no porosity (not a calibrated detector)
    rows = [
        r
        for r in read_csv(data / IMAGES_CSV)
        if split == "all" or split_of.get(r["subject_id"]) == split
    ]
    if not rows:
        raise ValueError(f"{data / IMAGES_CSV}: no image of the run's {split} subjects")
    model, params, cfg, step = restore_segmenter(seg_run)
    predict = make_predict_fn(model)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 13)
    size, bs = cfg.model.image_size, cfg.batch_size
    per_image = []
    bar = tqdm(total=len(rows), desc="radiogrammetry", unit="img", disable=not progress)
    pool = spawn_pool(jobs) if jobs > 0 else None

    def finish(batch: list) -> None:
        for rec, measured in batch:
            rec |= measured.result() if pool is not None else measured
            per_image.append(rec)
        bar.update(len(batch))

    pending: list = []  # the previous batch, measured in the pool while this one segments
    try:
        for start in range(0, len(rows), bs):
            chunk = rows[start : start + bs]
            full = [read_image(data / r["path"], bits_stored=bits) for r in chunk]
            images = [normalise(im) for im, _ in full]
            x = np.stack([resize_image(im, size) for im in images])[..., None]
            # Padded to the training batch: the compile is shared with validation and extraction.
            _, probs, weights = next(
                predict_batches(
                    model, params, x.astype(np.float32), jax.random.fold_in(key, start), bs,
                    predict,
                )
            )  # fmt: skip
            batch = []
            for j, row in enumerate(chunk):
                spacing = (
                    isotropic_spacing(full[j][1])
                    or float(row.get("pixel_spacing_mm") or 0)
                    or DEFAULT_SPACING
                )
                part = split_of.get(row["subject_id"], NO_SPLIT)
                rec = {"image_id": row["image_id"], "subject_id": row["subject_id"], "split": part}
                args = (images[j], full[j][0], np.asarray(probs[j]))
                args += (np.asarray(weights[j], np.float64), float(spacing))
                kw = dict(
                    hypotheses=hypotheses,
                    spread=spread_split == "all" or part == spread_split,
                    calib=calib,
                )
                if pool is not None:
                    batch.append((rec, pool.submit(_measure_image, *args, **kw)))
                else:
                    batch.append((rec, _measure_image(*args, **kw)))
            finish(pending)
            pending = batch
        finish(pending)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bar.close()

    truth = _truth(data)
    if truth:
        for r in per_image:
            r["true_MC2_ci"] = truth.get((r["subject_id"], "MC2"), float("nan"))
    tscore = {s["subject_id"]: s.get("t_score", "") for s in read_csv(data / SUBJECTS_CSV)}
    for r in per_image:
        value = tscore.get(r["subject_id"], "")
        r["t_score"] = float(value) if value not in ("", None) else float("nan")
    eval_split = "val" if split == "all" else split
    parts_seen = sorted({r["split"] for r in per_image})
    summary: dict = {
        "n_images": len(per_image),
        "split": split,
        "spread_split": spread_split,
        "eval_split": eval_split,
        "seg_step": step,
        "n_images_by_split": {p: sum(r["split"] == p for r in per_image) for p in parts_seen},
    }
    summary |= _agreement([r for r in per_image if r["split"] == eval_split], truth)
    if split == "all":
        summary |= {f"{k}_all": v for k, v in _agreement(per_image, truth).items()}
    sd = np.array([r["MC2_ci_sd"] for r in per_image], np.float64)
    sd = sd[np.isfinite(sd)]
    summary["MC2_mean_hypothesis_sd"] = float(sd.mean()) if len(sd) else float("nan")
    result = {"summary": summary, "per_image": per_image}
    write_json(out_json, result)
    return result


def _subject_split(parts: dict[str, list[str]]) -> dict[str, str]:
    """``{subject_id: part}`` of a run's ``split.json``."""
    return {s: part for part, subjects in parts.items() for s in subjects}


def _measure_image(
    image: np.ndarray,
    stored: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    spacing_mm: float,
    *,
    hypotheses: int,
    spread: bool,
    calib: DetectorCalibration | None = None,
) -> dict[str, float]:
    """Cortical indices of one radiograph from a mixture segmenter's prediction.

    Args:
      image: ``[H, W]`` radiograph, bone bright.
      stored: the same radiograph on its stored scale (``read_image``), for absorptiometry.
      probs: ``[N, h, h, C]`` class probabilities of the N hypotheses at the model's size.
      weights: ``[N]`` hypothesis weights.
      spacing_mm: pixel spacing (mm).
      hypotheses: the spread is over this many heaviest hypotheses (0 = all).
      spread: measure the 2MCI's spread (else its fields are NaN).
      calib: the detector's calibration, for the cortical porosity (None: NaN).

    Returns:
      ``{"<bone>_ci"}`` and ``{"<bone>_porosity"}`` for ``DEFAULT_BONES`` on the
      mixture-mean segmentation, ``{"MC2_ci_sd", "MC2_ci_lo", "MC2_ci_hi"}`` and the
      absorptiometry keys.
    """
    w = weights / weights.sum()
    labels = labels_from_probs(np.tensordot(w.astype(np.float32), probs, axes=1), image.shape)
    rec = measurements_of(image, stored, labels, spacing_mm, calib=calib)
    rec |= {f"MC2_ci_{k}": float("nan") for k in _SPREAD}
    if spread:
        # Each hypothesis costs a profile fit: only the heaviest, and only the 2MCI.
        top = np.argsort(-weights, kind="stable")[: hypotheses or len(weights)]
        maps = np.stack([labels_from_probs(p, image.shape) for p in probs[top]])
        ci = measure_hypotheses(image, maps, weights[top], spacing_mm=spacing_mm, bones=("MC2",))
        rec |= {f"MC2_ci_{k}": float(ci["MC2"]["cortical_index"][k]) for k in _SPREAD}
    return rec


def measurements_of(
    image: np.ndarray,
    stored: np.ndarray,
    labels: np.ndarray,
    spacing_mm: float,
    *,
    calib: DetectorCalibration | None = None,
    absorptiometry_keys: bool = True,
) -> dict[str, float]:
    """The measurements of one radiograph's label map that the radiogrammetry rows read.

    The same numbers for the cohort (:func:`radiogrammetry_of_run`) and for a new radiograph
    (``predict``, which feeds them to the saved stacker).

    Args:
      image: ``[H, W]`` radiograph, bone bright, normalised as the cohort's
        (:func:`~osteo_jax.data.inmemory.normalise` of ``stored``).
      stored: the same radiograph on its stored scale (``read_image``).
      labels: ``[H, W]`` integer label map (the mixture-mean segmentation).
      spacing_mm: pixel spacing (mm).
      calib: the detector's calibration, for the cortical porosity (None: NaN).
      absorptiometry_keys: also the grey levels and areas.

    Returns:
      ``{"<bone>_ci", "<bone>_porosity"}`` for ``DEFAULT_BONES`` (NaN where unmeasurable) and,
      with ``absorptiometry_keys``, the absorptiometry keys.
    """
    mean = measure_radiograph(image, labels, spacing_mm=spacing_mm, bones=DEFAULT_BONES)
    rec = {f"{b}_ci": float(mean[b].cortical_index) for b in DEFAULT_BONES}
    if absorptiometry_keys:
        rec |= absorptiometry(stored, labels, spacing_mm=spacing_mm)
    nepers = calib.nepers(stored) if calib is not None else None
    for b in DEFAULT_BONES:
        rec[f"{b}_porosity"] = (
            measure_porosity(nepers, labels, mean[b], calib, spacing_mm=spacing_mm)
            if calib is not None
            else float("nan")
        )
    return rec


def _agreement(records: list[dict], truth: dict[tuple[str, str], float]) -> dict[str, float]:
    """Pearson r, MAE and count of measured vs true indices; r of the 2MCI vs the T-score."""
    out: dict = {}
    for b in DEFAULT_BONES if truth else ():
        pairs = [
            (r[f"{b}_ci"], truth[(r["subject_id"], b)])
            for r in records
            if (r["subject_id"], b) in truth and np.isfinite(r[f"{b}_ci"])
        ]
        if len(pairs) >= 3:
            m, t = np.array(pairs).T
            out[f"{b}_r"] = float(np.corrcoef(m, t)[0, 1])
            out[f"{b}_mae"] = float(np.abs(m - t).mean())
            out[f"{b}_n"] = len(pairs)
    ci = np.array([r["MC2_ci"] for r in records], np.float64)
    ts = np.array([r["t_score"] for r in records], np.float64)
    ok = np.isfinite(ci) & np.isfinite(ts)
    if ok.sum() >= 3:
        out["MC2_vs_tscore_r"] = float(np.corrcoef(ci[ok], ts[ok])[0, 1])
    return out


def _truth(data: Path) -> dict[tuple[str, str], float]:
    """``{(subject_id, bone): true cortical index}`` from the generator's ``bones.csv``."""
    path = data / "bones.csv"
    if not path.exists():
        return {}
    return {(r["subject_id"], r["bone"]): float(r["cortical_index"]) for r in read_csv(path)}
