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
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from osteo_jax.config import ROI_REGIONS, SegmentConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import (
    IMAGES_CSV,
    SUBJECTS_CSV,
    annotators_of,
    ensure_new_dir,
    mask_relpath,
    publish_dir,
    read_csv,
    read_labels,
    rows_from,
    write_csv,
    write_json,
)
from osteo_jax.data.imageio import read_image
from osteo_jax.data.inmemory import normalise, resize_image
from osteo_jax.data.segments import (
    SEGMENTS_CSV,
    SEGMENTS_JSON,
    SEGMENTS_NPZ,
    cut_segments,
    segments_from_prediction,
)

__all__ = ["extract_segments", "subject_labels"]


def subject_labels(root: str | os.PathLike) -> dict[str, tuple[int, float]]:
    """``subject_id -> (label, t_score)`` from a dataset's subjects CSV (-1 / NaN if absent)."""
    path = Path(root) / SUBJECTS_CSV
    if not path.exists():
        raise DatasetError(f"{path}: not found")
    out = {}
    for i, row in enumerate(read_csv(path), start=2):
        label = row.get("label", "")
        t = row.get("t_score", "")
        try:
            out[row["subject_id"]] = (
                int(label) if label not in ("", None) else -1,
                float(t) if t not in ("", None) else float("nan"),
            )
        except (KeyError, ValueError) as err:
            raise DatasetError(f"{path}, row {i}: bad subject_id/label/t_score ({err})") from err
    return out


def _predictor(seg_run: str | os.PathLike):
    from osteo_jax.eval.seg_eval import make_predict_fn
    from osteo_jax.pipeline.seg_run import restore_segmenter

    model, params, cfg, step = restore_segmenter(seg_run)
    predict = make_predict_fn(model)
    return predict, params, cfg, step


def extract_segments(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: str,
    cfg: SegmentConfig = SegmentConfig(),
    overwrite: bool = False,
    batch_size: int = 8,
    workers: int = 4,
) -> Path:
    """Cuts the segments of every image of ``data`` into the folder ``out``.

    Args:
      data: dataset folder.
      out: output folder (absent or empty unless ``overwrite``).
      source: a train-seg run folder (segmenter prediction), a mask folder name of ``data``
        (``"exact"``, ``"annotator_0"``, ...), or ``"raw"``.
      cfg: segment settings (``raw`` uses only ``size``); ``cfg.roi`` names the segments
        (the 7 bones, or regions such as ``"wrist"`` for the crop-based baselines).
      overwrite: replace an existing ``out``.
      batch_size: images per segmenter call.
      workers: decoding / cutting threads.

    Returns:
      ``out``.
    """
    data, out = Path(data), ensure_new_dir(out, overwrite)
    rows = read_csv(data / IMAGES_CSV)
    subjects = subject_labels(data)
    for i, row in enumerate(rows, start=2):
        if row["subject_id"] not in subjects:
            raise DatasetError(
                f"{data / IMAGES_CSV}, row {i}: subject {row['subject_id']!r} not in subjects.csv"
            )
    meta = {"source": source, "data": str(data), "segment": dataclasses.asdict(cfg)}
    mask_sources = annotators_of(data) if (data / "masks").is_dir() else []
    if cfg.roi not in ROI_REGIONS:
        raise ValueError(f"segment roi must be one of {tuple(ROI_REGIONS)}, got {cfg.roi!r}")
    names = tuple(name for name, _ in ROI_REGIONS[cfg.roi])
    if source == "raw":
        bones, mode = ("image",), "raw"
    elif source in mask_sources:
        bones, mode = names, "mask"
    elif (Path(source) / "config.json").exists():
        bones, mode = names, "model"
        predict, params, seg_cfg, step = _predictor(source)
        meta.update(seg_run=str(source), seg_step=step, seg_form=seg_cfg.seg.form)
        key = jax.random.fold_in(jax.random.key(seg_cfg.seed), 11)
    else:
        raise ValueError(
            f"segment source {source!r} is neither 'raw', a mask folder of {data} "
            f"({mask_sources}) nor a train-seg run folder"
        )
    meta["bones"] = list(bones)

    def spacing_of(row):
        value = row.get("pixel_spacing_mm", "")
        return float(value) if value not in ("", None) and float(value) > 0 else None

    def load(row):
        return normalise(read_image(data / row["path"])[0])

    def cut_mask(row, image):
        labels = read_labels(data / mask_relpath(source, row["image_id"]))
        if labels.shape != image.shape:
            raise DatasetError(
                f"{data / mask_relpath(source, row['image_id'])}: mask shape {labels.shape} "
                f"does not match its image {image.shape}"
            )
        return cut_segments(image, labels, spacing_mm=spacing_of(row), cfg=cfg)

    def cut_pred(image, probs, weights, spacing):
        return segments_from_prediction(image, probs, weights, spacing_mm=spacing, cfg=cfg)

    n = len(rows)
    images = np.zeros((n, len(bones), cfg.size, cfg.size), np.float16)
    valid = np.zeros((n, len(bones)), bool)
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=n, desc=f"segments ({mode})", unit="img") as bar,
    ):
        for start in range(0, n, batch_size):
            chunk = rows[start : start + batch_size]
            full = list(pool.map(load, chunk))
            if mode == "raw":
                for j, img in enumerate(full):
                    images[start + j, 0] = resize_image(img, cfg.size)
                    valid[start + j, 0] = True
            elif mode == "mask":
                for j, seg in enumerate(pool.map(cut_mask, chunk, full)):
                    images[start + j], valid[start + j] = seg.images, seg.valid
            else:
                size = seg_cfg.seg.image_size
                x = np.zeros((batch_size, size, size, 1), np.float32)
                for j, img in enumerate(full):
                    x[j, ..., 0] = resize_image(img, size)
                probs, weights = predict(params, x, jax.random.fold_in(key, start))
                probs, weights = np.asarray(probs), np.asarray(weights)
                segs = pool.map(
                    cut_pred,
                    full,
                    probs[: len(chunk)],
                    weights[: len(chunk)],
                    [spacing_of(r) for r in chunk],
                )
                for j, seg in enumerate(segs):
                    images[start + j], valid[start + j] = seg.images, seg.valid
            bar.update(len(chunk))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    np.savez(tmp / SEGMENTS_NPZ, images=images, valid=valid)
    write_csv(
        tmp / SEGMENTS_CSV,
        rows_from(
            {
                "image_id": [r["image_id"] for r in rows],
                "subject_id": [r["subject_id"] for r in rows],
                "label": [subjects[r["subject_id"]][0] for r in rows],
                "t_score": [subjects[r["subject_id"]][1] for r in rows],
            }
        ),
    )
    meta["n_images"] = n
    meta["valid_fraction"] = {b: float(valid[:, i].mean()) for i, b in enumerate(bones)}
    write_json(tmp / SEGMENTS_JSON, meta)
    publish_dir(tmp, out)
    return out
