"""``osteo-jax predict``: a trained pipeline applied to new radiographs, with uncertainty.

For each image: the mixture segmenter's N = K x S hypotheses and their weights; bone segments
cut from each hypothesis (and from the mixture mean, the pipeline's standard segmentation);
every segment set classified by each seed's model of the protocol. The probability of
osteoporosis is reported for the mixture-mean segmentation (averaged over the seed models),
with an interval from the segmentation uncertainty (weighted quantiles over the hypotheses)
and the spread over seed models; the 2MCI likewise with its spread over the hypotheses. The
point and the interval are different estimators: the mixture mean's probability can lie just
outside the quantiles of the hypotheses' probabilities.

Research software on synthetic training data: the output is not a diagnosis.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.limits import MAX_IMAGE_PIXELS

__all__ = [
    "PredictModel",
    "analyse_images",
    "load_stackers",
    "predict_images",
    "summary_line",
    "training_bits_stored",
    "training_data_folder",
]


def training_bits_stored(run: str | os.PathLike) -> int | None:
    """``bits_stored`` of the dataset ``run`` was trained on (None: not recorded).

    A 16-bit PNG or TIFF that declares no bit depth is read on this scale
    (``read_image(default_bits_stored=)``), so that segments cut on the stored grey scale
    (``SegmentConfig.intensity="stored"``) see the brightness they were trained on. Read from
    the run's ``segments/segments.json``, else its ``data/dataset.json``.
    """
    from osteo_jax.data.table_rules import bits_stored

    run = Path(run)
    seg_json = run / "segments" / "segments.json"
    if seg_json.is_file():
        meta = json.loads(seg_json.read_text())
        if meta.get("bits_stored") is not None:
            return int(meta["bits_stored"])
    return bits_stored(run / "data") if (run / "data").is_dir() else None


def training_data_folder(run: str | os.PathLike) -> Path | None:
    """The dataset folder ``run``'s segmenter was trained on (None: not found).

    The recorded path, else ``run/data``, else a folder of that name inside ``run`` (a run
    folder moved with its data).
    """
    run = Path(run)
    cfg = run / "seg" / "config.json"
    if not cfg.exists():
        return None
    data = Path(json.loads(cfg.read_text())["data"])
    for cand in (data, run / "data", run / data.name):
        if (cand / "dataset.json").exists() or (cand / "images.csv").exists():
            return cand
    return None


def load_stackers(cls_dir: str | os.PathLike, metrics: dict) -> tuple[list | None, str | None]:
    """Per protocol part its saved :class:`~osteo_jax.eval.stacker.ImageStacker`.

    Returns:
      ``(stackers, None)`` in the order of ``metrics["per_seed"]`` (that of the models), or
      ``(None, reason)`` when a part has none (the comparison ran without radiogrammetry, or
      before stackers were saved).

    Raises:
      ValueError: a stacker file is malformed (named).
    """
    from osteo_jax.eval.stacker import STACKER_FILE, ImageStacker

    cls_dir = Path(cls_dir)
    stackers = []
    for row in metrics["per_seed"]:
        file = cls_dir / row.get("dir", f"seed{row['seed']}") / STACKER_FILE
        if not file.is_file():
            return None, (
                f"no {file.relative_to(cls_dir.parent)}: the run's comparison fitted no "
                "stacked image model + measurements (no radiogrammetry, or an older run)"
            )
        stackers.append(ImageStacker.load(file))
    return stackers, None


class PredictModel:
    """The trained parts of an experiment folder, restored once.

    Args:
      run: an experiment folder (``osteo-jax run`` / ``demo``) holding ``seg/`` and ``cls/``.
      stacked: apply the run's saved stackers (:func:`load_stackers`), which measures each
        image's radiogrammetry (~0.5 s an image); False skips both.

    Raises:
      ValueError: ``run`` is not a finished experiment folder.
    """

    #: bit depth of the training data's 16-bit images (:func:`training_bits_stored`)
    bits_stored: int | None = None
    #: per seed model its image-only stacker (:func:`load_stackers`), or None with the reason
    stackers: list | None = None
    stacker_reason: str = "the run has no stackers"
    #: the training detector's calibration (cortical porosity), None where not recorded
    calibration = None

    def __init__(self, run: str | os.PathLike, *, stacked: bool = True):
        import jax

        from osteo_jax.config import ExperimentConfig, from_dict
        from osteo_jax.eval.seg_eval import make_predict_fn
        from osteo_jax.pipeline.protocol import load_heads, load_models
        from osteo_jax.pipeline.seg_run import restore_segmenter

        self.run = Path(run)
        cfg_path = self.run / "config.json"
        if not cfg_path.exists() or not (self.run / "seg").is_dir():
            raise ValueError(f"{self.run}: not an experiment folder (osteo-jax run / demo)")
        self.bits_stored = training_bits_stored(self.run)
        self.cfg = from_dict(ExperimentConfig, json.loads(cfg_path.read_text())["config"])
        model, self.seg_params, self.seg_cfg, self.seg_step = restore_segmenter(self.run / "seg")
        self._predict = make_predict_fn(model)
        self.models, self.backbone, self.bones, metrics = load_models(self.run / "cls")
        # Per seed model: its subject aggregation head (None: the mean of the valid segments).
        self.heads = load_heads(self.run / "cls", metrics)
        # Per seed model: the image-only stacked score's regressions (None: not fitted).
        self.stackers, self.stacker_reason = load_stackers(self.run / "cls", metrics)
        if not stacked:
            self.stackers, self.stacker_reason = None, "not computed (stacked=False, --no-stacked)"
        data = training_data_folder(self.run)
        self.calibration = None  # the detector's, for cortical porosity (synthetic data only)
        if data is not None and self.stackers is not None:
            from osteo_jax.eval.radiogrammetry.porosity import calibration_of_dataset

            self.calibration = calibration_of_dataset(data)
        self.key = jax.random.fold_in(jax.random.key(self.seg_cfg.seed), 17)

        def one(params, x, key):  # one image [s, s, 1], the same latent draws for every image
            probs, weights = self._predict(params, x[None], key)
            return probs[0], weights[0]

        self._predict_batch = jax.jit(jax.vmap(one, in_axes=(None, 0, None)))

    def measurement_job(self, meta: dict) -> tuple | None:
        """What :func:`_cut_and_measure` measures for the stackers of one image (None: nothing).

        ``(absorptiometry, calibration)``: the absorptiometry keys only when a stacker reads
        them; the training detector's calibration only when a stacker reads a porosity and the
        image has that detector's bit depth (porosity is otherwise NaN and the stacker imputes
        the training median, as for a failed fit).
        """
        if self.stackers is None:
            return None
        from osteo_jax.eval.radiogrammetry.absorptiometry import ABSORPTIOMETRY_KEYS

        names = {n for st in self.stackers for n in st.features}
        calib = self.calibration
        if not any(n.endswith("_porosity") for n in names) or (
            calib is not None and meta.get("bits_stored") != calib.bits_stored
        ):
            calib = None
        return bool(names & set(ABSORPTIOMETRY_KEYS)), calib

    @property
    def image_size(self) -> int:
        """Side of the segmenter's square input."""
        return self.seg_cfg.model.image_size

    def model_input(self, image: np.ndarray) -> np.ndarray:
        """The segmenter's ``[s, s]`` float32 input of a radiograph as ``read_image`` gives it."""
        from osteo_jax.data.inmemory import resize_image

        return resize_image(image, self.image_size).astype(np.float32)

    def segment_batch(
        self, inputs: np.ndarray, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(probs [B, N, s, s, C], weights [B, N])`` of ``[B, s, s]`` model inputs.

        One jitted call per ``batch_size`` images (the last batch padded, so one shape is
        compiled). Every image gets the same latent draws, so an image's result depends on
        neither the other images nor its place in the batch.
        """
        inputs = np.asarray(inputs, np.float32)
        n = len(inputs)
        size = batch_size or n
        probs, weights = [], []
        for start in range(0, n, size):
            chunk = inputs[start : start + size]
            pad = size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            p, w = self._predict_batch(self.seg_params, chunk[..., None], self.key)
            probs.append(np.asarray(p[: size - pad]))
            weights.append(np.asarray(w[: size - pad], np.float64))
        return np.concatenate(probs), np.concatenate(weights)

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probs [N, s, s, C], weights [N])`` of one radiograph (:meth:`segment_batch`)."""
        probs, weights = self.segment_batch(self.model_input(image)[None])
        return probs[0], weights[0]

    def classify(self, segments: list) -> np.ndarray:
        """``[len(segments), n_models]`` subject probability of each segment set and model.

        Each model combines its segments as the protocol did: the mean of the valid segments,
        or the part's saved logistic or feature head (``aggregate.json``); NaN without a valid
        segment.
        """
        from osteo_jax.data.segments import SegmentSet
        from osteo_jax.eval.aggregate import FeatureHead, aggregate_subjects
        from osteo_jax.train.cls_loop import predict_segments, segment_features

        n = len(segments)
        names = _roi_names(self.cfg.segment.roi)
        sset = SegmentSet(
            images=np.stack([s.images for s in segments]),
            valid=np.stack([s.valid for s in segments]),
            image_ids=np.array([f"h{i}" for i in range(n)]),
            subject_ids=np.array([f"h{i}" for i in range(n)]),
            labels=np.zeros(n, np.int64),
            t_scores=np.full(n, np.nan),
            bones=names,
            meta={},
        ).select_bones(self.bones)
        out = np.full((n, len(self.models)), np.nan)
        valid = sset.valid
        for m, (params, head) in enumerate(zip(self.models, self.heads, strict=True)):
            feats = None
            if isinstance(head, FeatureHead):
                feats = segment_features(params["backbone"], self.backbone, sset)
            probs = predict_segments(  # [n, B], 0.5 where invalid
                params, self.backbone, sset, features=None if feats is None else feats[valid]
            )
            if head is not None:  # the protocol's fitted head, each segment set one subject
                _, p = aggregate_subjects(probs, valid, np.arange(n), head, features=feats)
                out[:, m] = np.where(valid.any(1), p, np.nan)
                continue
            with np.errstate(invalid="ignore"):
                out[:, m] = np.where(
                    valid.any(1), (probs * valid).sum(1) / np.maximum(valid.sum(1), 1), np.nan
                )
        return out


def _roi_names(roi: str) -> tuple[str, ...]:
    from osteo_jax.config import ROI_REGIONS

    return tuple(name for name, _ in ROI_REGIONS[roi])


def _with_reason(key: str, value: float | list[float], reason: str) -> dict:
    """``{key: value}`` as floats; non-finite values become None, with ``{key}_reason``.

    Strict JSON has no NaN: a reader sees ``null`` and why.
    """
    if isinstance(value, list):
        vals = [float(v) for v in value]
        if all(math.isfinite(v) for v in vals):
            return {key: vals}
        return {key: [v if math.isfinite(v) else None for v in vals], f"{key}_reason": reason}
    v = float(value)
    return {key: v} if math.isfinite(v) else {key: None, f"{key}_reason": reason}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_line(res: dict) -> str:
    """One line of a :func:`predict_images` result: probability and 2MCI with intervals.

    With the run's stackers, also the image-only stacked probability (image model +
    measurements), the score the comparison's stacked row evaluated.
    """
    lo, hi = res["probability_interval"]
    clo, chi = res["2MCI_interval"]
    stacked = ""
    if res.get("probability_stacked") is not None:
        stacked = f", with measurements {_fmt(res['probability_stacked'])}"
    return (
        f"{res['path']}: p(osteoporosis) = {_fmt(res['probability'])} [{_fmt(lo)}, {_fmt(hi)}]"
        f"{stacked}, 2MCI = {_fmt(res['2MCI'])} [{_fmt(clo)}, {_fmt(chi)}]"
    )


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    ok = np.isfinite(x)
    if not ok.any():
        return float("nan")
    x, w = x[ok], w[ok] / w[ok].sum()
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    return float(x[order][min(np.searchsorted(cum, q - 1e-12), len(x) - 1)])


def predict_images(
    paths: list[str | os.PathLike],
    run: str | os.PathLike | PredictModel,
    *,
    interval: float = 0.9,
    figure: str | os.PathLike | None = None,
    spacing_mm: float | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    stacked: bool = True,
) -> list[dict]:
    """Probability of osteoporosis and 2MCI, each with an interval, for each image.

    Args:
      paths: DICOM, PNG or TIFF radiographs (one hand each). All are opened before any
        work, so an unreadable file fails fast with its name.
      run: experiment folder or a restored :class:`PredictModel`.
      interval: central mass of the reported intervals (weighted over the hypotheses).
      figure: optional PNG path: per image the radiograph with its segmentation and the
        probability of each hypothesis against its weight.
      spacing_mm: pixel spacing when the file does not carry it (DICOM usually does; PNG
        does not); unknown spacing uses the model's training spacing.
      max_pixels: refuse larger images, judged from the header (:mod:`osteo_jax.data.limits`).
      stacked: give ``probability_stacked`` (measures each image; a restored ``run`` keeps
        its own setting).

    Returns:
      One dict per image: ``path``, ``probability`` (mixture-mean segmentation, mean over
      the seed models), ``probability_interval`` (weighted quantiles over the hypotheses),
      ``probability_models`` (per seed model), ``hypotheses`` (weight and probability of
      each), ``2MCI`` with ``2MCI_interval`` and ``2MCI_sd``, ``spacing_mm``, ``note``;
      ``probability_stacked`` (the image-only stacked score: each seed model's probability
      and the radiogrammetry measurements through that part's saved
      :class:`~osteo_jax.eval.stacker.ImageStacker`, averaged; None with a reason for a run
      without stackers) with ``probability_stacked_models`` and the ``measurements`` read.

      A value that cannot be computed (e.g. a hypothesis without any valid bone segment, or
      an unmeasurable MC2) is None with a ``<key>_reason`` string next to it.

    Raises:
      DatasetError: a file is missing, unreadable or over ``max_pixels``, or cannot be
        segmented into usable bones (no valid segment in the mixture-mean segmentation); the
        message names the file.
    """
    from osteo_jax.data.imageio import read_image

    images = []
    bits = run.bits_stored if isinstance(run, PredictModel) else training_bits_stored(run)
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DatasetError(f"{p}: file not found")
        # DatasetError naming the file
        image, meta = read_image(p, max_pixels=max_pixels, default_bits_stored=bits)
        images.append((p, image, meta))
    model = run if isinstance(run, PredictModel) else PredictModel(run, stacked=stacked)
    inputs = np.stack([model.model_input(image) for _, image, _ in images])
    analysed = analyse_images(
        model, images, inputs, interval=interval, spacing_mm=spacing_mm, batch_size=8
    )
    results, panels = [], []
    for (path, image, _), (res, probs, w, p_hyp) in zip(images, analysed, strict=True):
        if res["probability"] is None:
            raise DatasetError(
                f"{path}: cannot be segmented into usable bones (no valid segment of "
                f"{', '.join(model.bones)} in the mixture-mean segmentation); is it a hand "
                "radiograph?"
            )
        results.append(res)
        panels.append((image, probs, w, p_hyp, res))
    if figure is not None:
        _figure(panels, Path(figure))
    return results


def analyse_images(
    model: PredictModel,
    images: list[tuple[Path, np.ndarray, dict]],
    inputs: np.ndarray,
    *,
    interval: float = 0.9,
    spacing_mm: float | None = None,
    batch_size: int | None = None,
    qc=None,
    pool=None,
) -> list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
    """The shared path of ``predict`` and ``screen``: a batch of decoded radiographs analysed.

    The segmenter runs on all of them in one jitted call per ``batch_size``; the bone segments
    of every image's mixture mean and of each of its N hypotheses are classified by every
    seed model in one batched call; the 2MCI is measured on the mixture mean and over the
    hypotheses. Hypotheses of weight below :data:`MIN_HYPOTHESIS_WEIGHT` (an expert the
    router switched off) are neither cut nor measured: together they hold at most
    ``N * MIN_HYPOTHESIS_WEIGHT`` of the mass, so the weighted intervals move by at most
    that much; their ``probability`` is None with the reason.

    Args:
      model: the restored run.
      images: ``(path, image, meta)`` as :func:`~osteo_jax.data.imageio.read_image` gives.
      inputs: ``[B, s, s]`` the segmenter's inputs (:meth:`PredictModel.model_input`).
      interval: central mass of the intervals.
      spacing_mm: spacing of files that carry none (else the training spacing is assumed).
      batch_size: segmenter batch (None: all at once).
      qc: a :class:`~osteo_jax.eval.qc.QCCalibration` to add ``qc_flag`` / ``qc_reasons``
        and their scores to each result (None: no QC keys).
      pool: an executor (``map``) for the per-image cutting and measuring (numpy and scipy,
        no JAX), or None to do it here.

    Returns:
      Per image ``(result, probs [N, s, s, C], weights [N], p_hyp [N])``; ``result`` as
      :func:`predict_images` documents it. An image without any valid bone segment in its
      mixture mean gets ``probability`` None with ``probability_reason``.
    """
    from osteo_jax.data.imageio import isotropic_spacing

    lo_q, hi_q = (1 - interval) / 2, (1 + interval) / 2
    cfg = model.cfg.segment
    bones = _roi_names(cfg.roi)
    all_probs, all_weights = model.segment_batch(inputs, batch_size)
    jobs = []
    for (_, image, meta), probs, weights in zip(images, all_probs, all_weights, strict=True):
        known = isotropic_spacing(meta)
        spacing = known or spacing_mm or _train_spacing(model)
        job = cut_job(image, probs, weights / weights.sum(), spacing, cfg, interval)
        jobs.append(job + (model.measurement_job(meta),))
    cut = list(pool.map(_cut_and_measure, jobs)) if pool is not None and jobs else None
    if cut is None:
        cut = [_cut_and_measure(job) for job in jobs]
    sets = [s for mean_seg, hyp_segs, *_ in cut for s in (mean_seg, *hyp_segs)]
    p_sets = model.classify(sets) if sets else np.zeros((0, len(model.models)))
    out, start = [], 0
    for i, ((path, _, meta), probs, weights) in enumerate(
        zip(images, all_probs, all_weights, strict=True)
    ):
        w, spacing = weights / weights.sum(), jobs[i][5]
        known = isotropic_spacing(meta)
        mean_seg, hyp_segs, kept, mean_m, spread, measured = cut[i]
        p_all = p_sets[start : start + 1 + len(hyp_segs)]  # [1 + kept, models]
        start += 1 + len(hyp_segs)
        p_mean_models = p_all[0]
        segmented = bool(np.isfinite(p_mean_models).all())
        p_hyp = np.full(len(w), np.nan)
        with warnings.catch_warnings():  # a hypothesis with no valid segment gives NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            p_hyp[kept] = np.nanmean(p_all[1:], axis=1)
        ci = spread["MC2"]["cortical_index"]
        no_bones = "no valid bone segment in the mixture-mean segmentation"
        res = {
            "path": str(path),
            **_with_reason(
                "probability", float(np.mean(p_mean_models)) if segmented else math.nan, no_bones
            ),
            **_with_reason(
                "probability_interval",
                [_weighted_quantile(p_hyp, w, lo_q), _weighted_quantile(p_hyp, w, hi_q)],
                "no hypothesis has a valid bone segment",
            ),
            **_with_reason("probability_models", [float(x) for x in p_mean_models], no_bones),
            "interval_mass": interval,
            "hypotheses": [
                {
                    "weight": float(w[h]),
                    **_with_reason(
                        "probability",
                        p_hyp[h],
                        "no valid bone segment in this hypothesis"
                        if h in kept
                        else f"weight below {MIN_HYPOTHESIS_WEIGHT:g}: not evaluated",
                    ),
                }
                for h in range(len(w))
            ],
            **_with_reason(
                "2MCI", mean_m["MC2"].cortical_index, "MC2 not measurable in the segmentation"
            ),
            **_with_reason(
                "2MCI_interval",
                [ci["lo"], ci["hi"]],
                "MC2 not measurable in any hypothesis",
            ),
            **_with_reason("2MCI_sd", ci["sd"], "MC2 not measurable in any hypothesis"),
            "spacing_mm": float(spacing),
            "spacing_known": bool(known or spacing_mm),
            "segments_valid": {b: bool(v) for b, v in zip(bones, mean_seg.valid, strict=True)},
            "note": "research software trained on synthetic data; not a diagnosis",
        }
        res.update(_stacked(model, p_mean_models, measured, None if segmented else no_bones))
        if qc is not None:
            from osteo_jax.eval.qc import qc_check, qc_features

            reasons, scores = qc_check(
                qc_features(probs, w),
                qc,
                valid=mean_seg.valid,
                bones=bones,
                spacing_known=res["spacing_known"],
                body_part=meta.get("body_part_examined"),
            )
            res["qc_flag"] = bool(reasons)
            res["qc_reasons"] = reasons
            res.update({k: (v if math.isfinite(v) else None) for k, v in scores.items()})
        out.append((res, probs, w, p_hyp))
    return out


def _stacked(model: PredictModel, p_models, measured: dict | None, failed: str | None) -> dict:
    """The image-only stacked score of one image: each part's stacker on its model's score.

    ``probability_stacked`` (mean over the parts), ``probability_stacked_models`` and the
    ``measurements`` the stackers read (None where unmeasurable); None with a reason where
    the run has no stackers or ``failed`` says why the image has no score.
    """
    if model.stackers is None:
        return _with_reason("probability_stacked", math.nan, model.stacker_reason)
    names = sorted({n for st in model.stackers for n in st.features})
    out = {"measurements": {n: _finite_or_none(measured.get(n, math.nan)) for n in names}}
    if failed is not None:
        return out | _with_reason("probability_stacked", math.nan, failed)
    p = [
        float(st.probability([p_m], [[measured.get(n, math.nan) for n in st.features]])[0])
        for st, p_m in zip(model.stackers, p_models, strict=True)
    ]
    out |= _with_reason("probability_stacked", float(np.mean(p)), "a stacker gave no probability")
    return out | {"probability_stacked_models": p}


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


#: Hypotheses lighter than this are not cut, classified or measured (:func:`analyse_images`).
MIN_HYPOTHESIS_WEIGHT = 1e-4


def cut_job(image, probs, w, spacing: float, cfg, interval: float) -> tuple:
    """The job :func:`_cut_and_measure` takes for one image.

    Only what a worker needs travels to it: the mixture mean's probabilities and those of the
    hypotheses of weight at least :data:`MIN_HYPOTHESIS_WEIGHT`.
    """
    kept = np.flatnonzero(w >= MIN_HYPOTHESIS_WEIGHT)
    mean_probs = np.tensordot(np.asarray(w, np.float32), probs, axes=1)
    return (image, mean_probs, probs[kept], kept, w[kept], float(spacing), cfg, interval)


def _cut_and_measure(job: tuple) -> tuple:
    """One image's segments (mixture mean, kept hypotheses) and 2MCI (pool-friendly: no JAX).

    Each full-resolution label map is computed once and serves both the segments and the
    measurement (what ``segments_from_prediction`` and ``measure_prediction`` would each
    compute again).

    A job may end with ``(absorptiometry, calibration)`` (:meth:`PredictModel.measurement_job`):
    then the stackers' measurements of the mixture mean are taken too
    (:func:`~osteo_jax.pipeline.radiogrammetry_run.measurements_of`, on the image normalised as
    the cohort's was).

    Returns:
      ``(mean_seg, hyp_segs, kept, mean_measure, spread, measured)`` with ``kept`` the
      indices of the hypotheses cut and measured and ``measured`` the stackers' measurements
      (None when not asked).
    """
    from osteo_jax.data.segments import cut_segments, labels_from_probs, segment_intensity
    from osteo_jax.eval.radiogrammetry.hypotheses import measure_hypotheses
    from osteo_jax.eval.radiogrammetry.measure import measure_radiograph

    image, mean_probs, kept_probs, kept, kept_w, spacing, cfg, interval, *extra = job
    measure = extra[0] if extra else None
    grey = segment_intensity(image, cfg)
    mean_labels = labels_from_probs(mean_probs, image.shape)
    maps = np.stack([labels_from_probs(p, image.shape) for p in kept_probs])
    mean_seg = cut_segments(grey, mean_labels, spacing_mm=spacing, cfg=cfg)
    hyp_segs = [cut_segments(grey, m, spacing_mm=spacing, cfg=cfg) for m in maps]
    bones = ("MC2",)
    image = np.asarray(image, np.float64)  # once, not in each measurement
    mean_m = measure_radiograph(image, mean_labels, spacing_mm=spacing, bones=bones)
    spread = measure_hypotheses(
        image, maps, kept_w, spacing_mm=spacing, bones=bones, interval=interval, start=mean_m
    )
    measured = None
    if measure is not None:
        from osteo_jax.data.inmemory import normalise
        from osteo_jax.pipeline.radiogrammetry_run import measurements_of

        absorb, calib = measure
        stored = np.asarray(job[0], np.float32)
        measured = measurements_of(
            normalise(stored), stored, mean_labels, spacing, calib=calib,
            absorptiometry_keys=absorb,
        )  # fmt: skip
    return mean_seg, hyp_segs, kept, mean_m, spread, measured


def _train_spacing(model: PredictModel) -> float:
    synth = model.cfg.synth
    return synth.physics.fov_mm / synth.physics.size if synth is not None else 0.2


def _figure(panels: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from osteo_jax.config import CLASS_NAMES
    from osteo_jax.data.segments import labels_from_probs
    from osteo_jax.eval.preview import CLASS_COLOURS

    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 4.2 * len(panels)), squeeze=False)
    for r, (image, probs, w, p_hyp, res) in enumerate(panels):
        ax = axes[r, 0]
        ax.imshow(image, cmap="gray")
        lab = labels_from_probs(np.tensordot(w.astype(np.float32), probs, axes=1), image.shape)
        ax.imshow(
            np.ma.masked_equal(lab, 0),
            cmap=ListedColormap(CLASS_COLOURS),
            vmin=0,
            vmax=len(CLASS_NAMES) - 1,
            alpha=0.35,
            interpolation="nearest",
        )
        ax.set_title(Path(res["path"]).name, fontsize=8)
        ax.set_axis_off()
        ax = axes[r, 1]
        ax.scatter(w, p_hyp, s=20 + 400 * w, alpha=0.7, label="hypotheses")
        lo, hi = res["probability_interval"]
        if lo is not None and hi is not None:
            ax.axhspan(lo, hi, color="C1", alpha=0.2, label=f"{res['interval_mass']:.0%} interval")
        ax.axhline(res["probability"], color="C1", label=f"p = {res['probability']:.2f}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("hypothesis weight")
        ax.set_ylabel("probability of osteoporosis")
        ax.set_title(
            f"2MCI {_fmt(res['2MCI'])} [{_fmt(res['2MCI_interval'][0])}, "
            f"{_fmt(res['2MCI_interval'][1])}]",
            fontsize=8,
        )
        ax.legend(fontsize=7)
    fig.suptitle("research software, synthetic training data: not a diagnosis", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
