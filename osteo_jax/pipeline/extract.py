"""``osteo-jax segment``: cut the bone segments of every radiograph of a dataset folder.

The segments feed self-supervised pretraining and the classifier. They can be cut with a
trained segmenter (the paper's pipeline: argmax of the mixture mean at full resolution), with a
mask folder of the dataset (``exact`` for the generator's exact map: the oracle-segmentation
ablation; or an annotator), or not at all (``raw``: the whole radiograph resized to the segment
size, the paper's "raw image instead of segments" ablation).

The output is a segments folder (format in :mod:`osteo_jax.data.segments`, read back by
:func:`~osteo_jax.data.segments.load_segments`), written to a temporary sibling and renamed
into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from osteo_jax.config import ROI_REGIONS, SegmentConfig
from osteo_jax.data.dataset import read_dataset
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import (
    annotators_of,
    mask_relpath,
    read_labels,
    rows_from,
    write_csv,
    write_json,
)
from osteo_jax.data.inmemory import resize_image
from osteo_jax.data.outdir import (
    OutputFolderError,
    check_dir,
    claim_dir,
    publish_partial,
    writing,
)
from osteo_jax.data.segments import (
    SEGMENTS_CSV,
    SEGMENTS_JSON,
    SEGMENTS_NPZ,
    cut_segments,
    segment_intensity,
    segments_from_prediction,
)

__all__ = [
    "SEGMENT_SOURCES",
    "SegmentSource",
    "SourceContext",
    "extract_segments",
    "resolve_source",
    "subject_labels",
]


def subject_labels(
    root: str | os.PathLike, *, allow_outside_paths: bool = False
) -> dict[str, tuple[int, float]]:
    """``subject_id -> (label, t_score)`` of a checked dataset's images (-1 / NaN unknown)."""
    index = read_dataset(root, images="none", allow_outside_paths=allow_outside_paths)
    return {r.subject_id: (r.label, r.t_score) for r in index.rows}


def _spacing_of(row: dict) -> float | None:
    """The row's pixel spacing in mm, or None where the dataset does not give one."""
    value = float(row.get("pixel_spacing_mm", math.nan))
    return value if value > 0 else None


# A source cuts one chunk of images: (rows, full-resolution images) -> [(images [n, S, S],
# valid [n])] in row order, with n = len(source.bones).
Cut = Callable[[list[dict[str, str]], list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class SegmentSource:
    """Where segments come from, resolved for one dataset.

    Attributes:
      mode: the registry name (``"raw"``, ``"mask"``, ``"model"``), shown in the progress bar.
      bones: segment names, one per segment of an image.
      cut: cuts a chunk of rows (see ``Cut`` above); the cutter may use ``pool`` threads.
      meta: extra entries of ``segments.json`` (e.g. the segmenter run and its step).
    """

    mode: str
    bones: tuple[str, ...]
    cut: Cut
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SourceContext:
    """What a source builder may use: the dataset, the segment settings and the run's means.

    Attributes:
      data: the dataset folder.
      cfg: segment settings.
      names: segment names of ``cfg.roi``.
      pool: threads for cutting.
      batch_size: images per chunk (a segmenter's fixed batch shape).
    """

    data: Path
    cfg: SegmentConfig
    names: tuple[str, ...]
    pool: ThreadPoolExecutor
    batch_size: int


def _raw_source(source: str, ctx: SourceContext) -> SegmentSource | None:
    """``"raw"``: the whole radiograph resized to the segment size, one segment per image."""
    if source != "raw":
        return None

    def cut(rows, images):
        del rows
        return [(resize_image(img, ctx.cfg.size)[None], np.ones(1, bool)) for img in images]

    return SegmentSource("raw", ("image",), cut)


def _mask_source(source: str, ctx: SourceContext) -> SegmentSource | None:
    """A mask folder of the dataset (``"exact"``, ``"annotator_0"``, ...)."""
    data, cfg = ctx.data, ctx.cfg
    if not (data / "masks").is_dir() or source not in annotators_of(data):
        return None

    def one(row, image):
        path = data / mask_relpath(source, row["image_id"])
        labels = read_labels(path)
        if labels.shape != image.shape:
            raise DatasetError(
                f"{path}: mask shape {labels.shape} does not match its image {image.shape}"
            )
        seg = cut_segments(image, labels, spacing_mm=_spacing_of(row), cfg=cfg)
        return seg.images, seg.valid

    return SegmentSource("mask", ctx.names, lambda rows, imgs: list(ctx.pool.map(one, rows, imgs)))


def _model_source(source: str, ctx: SourceContext) -> SegmentSource | None:
    """A train-seg run folder: the segmenter's prediction (the mixture mean's argmax)."""
    if not (Path(source) / "config.json").exists():
        return None
    from osteo_jax.eval.seg_eval import make_predict_fn
    from osteo_jax.pipeline.seg_run import restore_segmenter

    model, params, seg_cfg, step = restore_segmenter(source)
    predict = make_predict_fn(model)
    key = jax.random.fold_in(jax.random.key(seg_cfg.seed), 11)
    size = seg_cfg.model.image_size
    calls = [0]

    def one(image, probs, weights, spacing):
        seg = segments_from_prediction(image, probs, weights, spacing_mm=spacing, cfg=ctx.cfg)
        return seg.images, seg.valid

    def cut(rows, images):
        # A fixed batch shape (one compile); the key of a chunk is that of its first row.
        x = np.zeros((max(len(rows), ctx.batch_size), size, size, 1), np.float32)
        for j, img in enumerate(images):
            x[j, ..., 0] = resize_image(img, size)
        probs, weights = predict(params, x, jax.random.fold_in(key, calls[0]))
        calls[0] += len(rows)
        probs, weights = np.asarray(probs), np.asarray(weights)
        spacings = [_spacing_of(r) for r in rows]
        n = len(rows)
        return list(ctx.pool.map(one, images, probs[:n], weights[:n], spacings))

    meta = {"seg_run": str(source), "seg_step": step, "seg_form": seg_cfg.model.form}
    return SegmentSource("model", ctx.names, cut, meta)


# Tried in order; the first that recognises ``source`` cuts the segments. A new source is one
# function here: (source, SourceContext) -> SegmentSource, or None if not its kind.
SEGMENT_SOURCES: dict[str, Callable[[str, SourceContext], SegmentSource | None]] = {
    "raw": _raw_source,
    "mask": _mask_source,
    "model": _model_source,
}


def resolve_source(source: str, ctx: SourceContext) -> SegmentSource:
    """The :class:`SegmentSource` that ``source`` names for the dataset ``data``.

    Raises:
      ValueError: no registered source recognises ``source``.
    """
    for build in SEGMENT_SOURCES.values():
        found = build(source, ctx)
        if found is not None:
            return found
    masks = annotators_of(ctx.data) if (ctx.data / "masks").is_dir() else []
    raise ValueError(
        f"segment source {source!r} is neither 'raw', a mask folder of {ctx.data} "
        f"({masks}) nor a train-seg run folder"
    )


def extract_segments(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: str,
    cfg: SegmentConfig = SegmentConfig(),
    overwrite: bool = False,
    batch_size: int = 8,
    workers: int = 4,
    allow_outside_paths: bool = False,
) -> Path:
    """Cuts the segments of every image of ``data`` into the folder ``out``.

    Args:
      data: dataset folder.
      out: output folder: absent, empty, or an unfinished ``segment`` output, unless
        ``overwrite`` (:mod:`osteo_jax.data.outdir`).
      source: a train-seg run folder (segmenter prediction), a mask folder name of ``data``
        (``"exact"``, ``"annotator_0"``, ...), or ``"raw"`` (see :data:`SEGMENT_SOURCES`).
      cfg: segment settings (``raw`` uses only ``size``); ``cfg.roi`` names the segments
        (the 7 bones, or regions such as ``"wrist"`` for the crop-based baselines).
      overwrite: replace the segment files of an existing ``out`` (other files stay).
      batch_size: images per segmenter call.
      workers: decoding / cutting threads.
      allow_outside_paths: accept image paths leaving ``data``
        (:mod:`osteo_jax.data.confine`).

    Returns:
      ``out``.

    Raises:
      OutputFolderError: ``out`` holds other files, or segments (without ``overwrite``).
      DatasetError: ``data`` breaks a rule of :func:`~osteo_jax.data.dataset.read_dataset`
        (checked before anything is written).
    """
    data, out = Path(data), check_dir(out, "segment", overwrite=overwrite)
    if not overwrite and (out / SEGMENTS_JSON).exists():
        raise OutputFolderError(f"{out}: holds segments; pass --overwrite to replace them")
    index = read_dataset(data, allow_outside_paths=allow_outside_paths)
    rows = [dataclasses.asdict(r) for r in index.rows]

    by_id = {r.image_id: r for r in index.rows}

    def load(row):
        return segment_intensity(index.read_image(by_id[row["image_id"]])[0], cfg)

    n = len(rows)
    with ThreadPoolExecutor(workers) as pool:
        names = tuple(name for name, _ in ROI_REGIONS[cfg.roi])
        src = resolve_source(source, SourceContext(data, cfg, names, pool, batch_size))
        images = np.zeros((n, len(src.bones), cfg.size, cfg.size), np.float16)
        valid = np.zeros((n, len(src.bones)), bool)
        with tqdm(total=n, desc=f"segments ({src.mode})", unit="img") as bar:
            for start in range(0, n, batch_size):
                chunk = rows[start : start + batch_size]
                for j, (seg, ok) in enumerate(src.cut(chunk, list(pool.map(load, chunk)))):
                    images[start + j], valid[start + j] = seg, ok
                bar.update(len(chunk))
    meta = {
        "source": source,
        "data": str(data),
        "segment": dataclasses.asdict(cfg),
        "bits_stored": index.bits_stored,
        **src.meta,
        "bones": list(src.bones),
    }

    claim = claim_dir(out, "segment", overwrite=overwrite)
    with writing(claim) as tmp:
        np.savez(tmp / SEGMENTS_NPZ, images=images, valid=valid)
        write_csv(
            tmp / SEGMENTS_CSV,
            rows_from(
                {
                    "image_id": [r["image_id"] for r in rows],
                    "subject_id": [r["subject_id"] for r in rows],
                    "label": [r["label"] for r in rows],
                    "t_score": [r["t_score"] for r in rows],
                }
            ),
        )
        meta["n_images"] = n
        meta["valid_fraction"] = {b: float(valid[:, i].mean()) for i, b in enumerate(src.bones)}
        write_json(tmp / SEGMENTS_JSON, meta)
        publish_partial(tmp, out, last=(SEGMENTS_JSON,))
    return out
