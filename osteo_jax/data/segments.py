"""Bone segments: the 7 bones (radius, ulna, MC1-MC5) cut out of a radiograph by a label map.

The classifier never sees the whole hand: it sees one small square image per bone, the bone's
pixels with the background zeroed (PAPER.md section 3). Cutting works at the radiograph's full
resolution from any label map of the same shape: the exact map of the synthetic generator, an
annotator's mask, the argmax of the segmenter's mixture mean, or one hypothesis of the mixture
(:func:`labels_from_probs` brings a prediction made at the model's resolution back to the
image's).

For each bone class: keep the largest connected component (a prediction can leave specks),
flag the bone missing when it is smaller than ``min_area_mm2``, dilate the mask by
``dilate_mm`` so the periosteal edge is kept, then resample the box around it onto a
``size x size`` grid by bilinear interpolation (box-averaged along each axis the box shrinks),
zeroing everything outside the dilated mask. In the ``aligned`` frame the box follows the
bone's principal axis (long axis vertical) and is stretched to fill the square; in the
``box`` frame it is the axis-aligned square bounding box. Bone pixels are kept strictly
positive so that "non-zero" means "bone" for the multi-crop rule of
:mod:`osteo_jax.data.augment`.

Crop-based baselines (the paper's Table 8) use the same machinery with other settings of
:class:`~osteo_jax.config.SegmentConfig`: ``roi`` groups several bones into one box (e.g. the
distal radius and ulna), and ``background="keep"`` resamples the plain radiograph in that box
instead of zeroing what lies outside the mask.

A dataset's segments, one row per radiograph (:class:`SegmentSet`), are kept in a segments
folder (written by :func:`osteo_jax.pipeline.extract.extract_segments`) that
:func:`load_segments` reads::

    segments.npz    images [n, B, S, S] float16 in [0, 1], valid [n, B] bool
    segments.csv    image_id, subject_id, label, t_score (one row per image, same order)
    segments.json   source, bones, segment config, segmenter run and step, dataset path
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from osteo_jax.config import CLASS_NAMES, ROI_REGIONS, SegmentConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import read_csv
from osteo_jax.data.inmemory import normalise

__all__ = [
    "SEGMENTS_CSV",
    "SEGMENTS_JSON",
    "SEGMENTS_NPZ",
    "SegmentSet",
    "Segments",
    "class_boxes",
    "class_component",
    "cut_segments",
    "load_segments",
    "labels_from_probs",
    "segment_masks",
    "segments_from_prediction",
    "segment_intensity",
]

SEGMENTS_NPZ = "segments.npz"
SEGMENTS_CSV = "segments.csv"
SEGMENTS_JSON = "segments.json"

# Smallest value a bone pixel may take, so that "non-zero" means "inside the bone mask".
_BONE_FLOOR = 1.0 / 1024


@dataclasses.dataclass(frozen=True)
class Segments:
    """The bone segments of one radiograph (R = 7 bones, or the regions of ``SegmentConfig.roi``).

    Attributes:
      images: ``[R, size, size]`` float32 in [0, 1]; zero outside the dilated bone mask (with
        ``background="zero"``; outside the image with ``"keep"``), and all zero for a
        missing bone.
      valid: ``[R]`` bool, False where the bone is missing or too small.
      area_mm2: ``[R]`` area of the bone's largest component (before dilation; summed over
        the bones of a region).
      boxes: ``[R, 3, 2]`` float64 affine map of each segment: full-image ``(row, col)`` =
        ``boxes[b, 0] + (i + 0.5) * boxes[b, 1] + (j + 0.5) * boxes[b, 2]`` for segment
        pixel ``(i, j)``, in index coordinates (image pixel ``k`` is centred at ``k``).
    """

    images: np.ndarray
    valid: np.ndarray
    area_mm2: np.ndarray
    boxes: np.ndarray


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (1 + int(np.argmax(sizes)))


def _trimmed(mask: np.ndarray, corner: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """``mask`` cut to its own bounding box, with the box's corner (a non-empty mask)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return box, (corner[0] + int(rows[0]), corner[1] + int(cols[0]))


def class_boxes(labels: np.ndarray) -> list[tuple[slice, slice] | None]:
    """Bounding box of each label value: ``boxes[c - 1]`` holds every pixel of class ``c``.

    One pass over the label map (``ndimage.find_objects``); None for a class that is absent.
    """
    labels = np.asarray(labels)
    if labels.size == 0 or not labels.any():
        return []
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer label map, got dtype {labels.dtype}")
    return ndimage.find_objects(labels)


def class_component(
    labels: np.ndarray, cls: int, boxes: list | None = None
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The largest 4-connected component of class ``cls``, within the class's bounding box.

    The same pixels as labelling the whole map (ties to the lower component index), at the
    cost of the box alone: on a 1024-px radiograph a metacarpal's box is ~1 % of the image.

    Args:
      labels: ``[H, W]`` integer label map.
      cls: the class id (> 0).
      boxes: :func:`class_boxes` of ``labels`` when several classes are wanted (else computed).

    Returns:
      ``(mask, (row0, col0))``: the component as a bool mask of the box and the box's corner
      in the map; None when the class is absent.
    """
    boxes = class_boxes(labels) if boxes is None else boxes
    box = boxes[cls - 1] if 0 < cls <= len(boxes) else None
    if box is None:
        return None
    return _largest_component(labels[box] == cls), (box[0].start, box[1].start)


def _frame(mask: np.ndarray, frame: str, margin: float, size: int) -> np.ndarray:
    """Affine ``[3, 2]`` map from segment pixel (i, j) to image (row, col) for a mask."""
    rows, cols = np.nonzero(mask)
    pts = np.stack([rows, cols], axis=1).astype(np.float64)
    if frame == "aligned":
        centre = pts.mean(axis=0)
        cov = np.cov((pts - centre).T)
        _, vecs = np.linalg.eigh(cov)
        u = vecs[:, 1]  # long axis
        if u[0] < 0 or (u[0] == 0 and u[1] < 0):  # point "down" the image, a fixed convention
            u = -u
        v = np.array([-u[1], u[0]])  # then v points right (v[1] = u[0] >= 0)
        pu, pv = (pts - centre) @ u, (pts - centre) @ v
        lo_u, hi_u, lo_v, hi_v = pu.min() - 0.5, pu.max() + 0.5, pv.min() - 0.5, pv.max() + 0.5
        len_u, len_v = hi_u - lo_u, hi_v - lo_v
        lo_u, len_u = lo_u - margin * len_u, len_u * (1 + 2 * margin)
        lo_v, len_v = lo_v - margin * len_v, len_v * (1 + 2 * margin)
        origin = centre + lo_u * u + lo_v * v
        return np.stack([origin, u * len_u / size, v * len_v / size])
    lo, hi = pts.min(axis=0) - 0.5, pts.max(axis=0) + 0.5
    side = float((hi - lo).max()) * (1 + 2 * margin)
    centre = (lo + hi) / 2
    origin = centre - side / 2
    return np.stack([origin, np.array([side / size, 0.0]), np.array([0.0, side / size])])


def _sample(image: np.ndarray, affine: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resamples ``image`` on the segment grid, box-averaging sub-samples along each axis.

    Anti-aliasing is done per segment axis: an axis whose step between segment pixels is
    ``s`` image pixels gets ``ceil(s)`` sub-samples per segment pixel, averaged. In the
    aligned frame a metacarpal is shrunk ~6x along its shaft but magnified across it, so an
    isotropic blur would smear the cortex; this averages along the shaft only.
    """
    steps = np.linalg.norm(affine[1:], axis=1)
    nu, nv = (max(int(np.ceil(st - 1e-6)), 1) for st in steps)
    # Sub-sample centres (i + (a + 0.5) / n) mapped to image index coordinates (image pixel k
    # is centred at k, its edges at k -/+ 0.5, as the box edges in _frame).
    iu = (np.arange(size * nu, dtype=np.float64) + 0.5) / nu
    iv = (np.arange(size * nv, dtype=np.float64) + 0.5) / nv
    coords = (
        affine[0][:, None, None]
        + affine[1][:, None, None] * iu[None, :, None]
        + affine[2][:, None, None] * iv[None, None, :]
    )
    fine = ndimage.map_coordinates(image, coords, order=order, mode="constant", cval=0.0)
    return fine.reshape(size, nu, size, nv).mean(axis=(1, 3))


def segment_intensity(image: np.ndarray, cfg: SegmentConfig = SegmentConfig()) -> np.ndarray:
    """The grey levels segments are cut from (``cfg.intensity``), float32 in [0, 1].

    Args:
      image: ``[H, W]`` radiograph as :func:`~osteo_jax.data.imageio.read_image` returns it.
      cfg: segment settings: ``"percentile"`` applies :func:`~osteo_jax.data.inmemory.normalise`
        (each image's 0.5 / 99.5 percentiles to 0 / 1), ``"stored"`` keeps the values.

    Returns:
      ``[H, W]`` float32.
    """
    if cfg.intensity == "percentile":
        return normalise(image)
    return np.clip(np.asarray(image, np.float32), 0.0, 1.0)


def cut_segments(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    spacing_mm: float | None,
    cfg: SegmentConfig = SegmentConfig(),
) -> Segments:
    """Cuts the 7 bone segments (or the ``cfg.roi`` regions) of one radiograph.

    Args:
      image: ``[H, W]`` radiograph, float in [0, 1] (bone bright, e.g. :func:`normalise`d).
      labels: ``[H, W]`` integer label map with the ids of ``CLASS_NAMES``.
      spacing_mm: pixel spacing; ``None`` (unknown) takes 0.2 mm, the synthetic detector's.
      cfg: segment settings.

    Returns:
      :class:`Segments`.
    """
    image = np.asarray(image, np.float32)
    labels = np.asarray(labels)
    if image.ndim != 2 or labels.shape != image.shape:
        raise ValueError(
            f"image and labels must be the same 2-D shape, got {image.shape} and {labels.shape}"
        )
    regions = ROI_REGIONS[cfg.roi]
    keep = cfg.background == "keep"
    spacing = 0.2 if spacing_mm is None else float(spacing_mm)
    dilate_px = max(int(round(cfg.dilate_mm / spacing)), 0)
    min_px = cfg.min_area_mm2 / spacing**2
    n = len(regions)
    out = np.zeros((n, cfg.size, cfg.size), np.float32)
    valid = np.zeros(n, bool)
    area = np.zeros(n, np.float64)
    boxes = np.zeros((n, 3, 2), np.float64)
    structure = ndimage.generate_binary_structure(2, 1)
    boxes_of = class_boxes(labels)
    for b, (_, bones) in enumerate(regions):
        parts = []  # (component mask of its class box, box corner) of each bone kept
        for name in bones:
            comp = class_component(labels, CLASS_NAMES.index(name), boxes_of)
            if comp is None:
                continue
            n_px = int(comp[0].sum())
            area[b] += n_px * spacing**2
            if n_px >= min_px:
                parts.append(_trimmed(*comp))
        if not parts:
            continue
        # Work in a window around the bone (dilation and blur on the full image are slow).
        rows_lo = min(o[0] for _, o in parts)
        rows_hi = max(o[0] + m.shape[0] - 1 for m, o in parts)
        cols_lo = min(o[1] for _, o in parts)
        cols_hi = max(o[1] + m.shape[1] - 1 for m, o in parts)
        pad = dilate_px + 2
        if keep:  # the window must hold the whole box (margin, square), not only the mask
            extent = max(rows_hi - rows_lo, cols_hi - cols_lo) + 1 + 2 * dilate_px
            pad += int(np.ceil(extent * (0.5 + cfg.margin)))
        r0, c0 = max(rows_lo - pad, 0), max(cols_lo - pad, 0)
        r1, c1 = min(rows_hi + pad + 1, image.shape[0]), min(cols_hi + pad + 1, image.shape[1])
        win_mask = np.zeros((r1 - r0, c1 - c0), bool)
        for m, (o_r, o_c) in parts:
            win_mask[o_r - r0 : o_r - r0 + m.shape[0], o_c - c0 : o_c - c0 + m.shape[1]] |= m
        win_img = image[r0:r1, c0:c1]
        if dilate_px:
            win_mask = ndimage.binary_dilation(win_mask, structure, iterations=dilate_px)
        affine = _frame(win_mask, cfg.frame, cfg.margin, cfg.size)
        # "keep": every pixel of the image is content (> 0), only points off the image are 0.
        support = np.ones_like(win_mask) if keep else win_mask
        src = np.where(support, np.maximum(win_img, _BONE_FLOOR), 0.0).astype(np.float32)
        seg = _sample(src, affine, cfg.size, order=1)
        inside = _sample(support.astype(np.float32), affine, cfg.size, order=1) > 0.5
        out[b] = np.where(inside, np.clip(seg, _BONE_FLOOR, 1.0), 0.0)
        valid[b] = True
        boxes[b] = affine + np.array([[r0, c0], [0.0, 0.0], [0.0, 0.0]])
    return Segments(images=out, valid=valid, area_mm2=area, boxes=boxes)


def segment_masks(segments: Segments) -> np.ndarray:
    """``[R, size, size]`` bool: the pixels of each segment that belong to the dilated bone.

    Only with ``background="zero"``; a ``"keep"`` crop is non-zero wherever it is on the image.
    """
    return segments.images > 0


def labels_from_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label map at an image's full resolution from class probabilities at the model's.

    The segmenter sees the image padded to a square and resized (``data/inmemory.py``); this
    undoes both: each class probability is resized bilinearly to the padded square's side,
    the padding is cut off, and the argmax is taken at full resolution (smoother boundaries
    than upsampling the low-resolution argmax).

    Args:
      probs: ``[h, w, C]`` probabilities (or any per-class scores) of the square model input.
      shape: ``(H, W)`` of the original image.

    Returns:
      ``[H, W]`` uint8 label map.
    """
    probs = np.asarray(probs, np.float32)
    if probs.ndim != 3 or probs.shape[0] != probs.shape[1]:
        raise ValueError(f"probs must be [h, h, C], got {probs.shape}")
    h, w = shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    best = np.zeros((h, w), np.float32)
    arg = np.zeros((h, w), np.uint8)
    better = np.empty((h, w), bool)
    for c in range(probs.shape[-1]):
        up = np.asarray(Image.fromarray(probs[..., c]).resize((side, side), Image.BILINEAR))
        up = up[top : top + h, left : left + w]
        np.greater(up, best, out=better)
        np.copyto(arg, c, where=better)
        np.fmax(best, up, out=best)  # a NaN score never wins
    return arg


def segments_from_prediction(
    image: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    *,
    spacing_mm: float | None,
    cfg: SegmentConfig = SegmentConfig(),
    per_hypothesis: bool = False,
) -> Segments | list[Segments]:
    """Segments cut with a mixture segmenter's prediction for one radiograph.

    Args:
      image: ``[H, W]`` radiograph in [0, 1].
      probs: ``[N, h, h, C]`` class probabilities of the N hypotheses at the model's input.
      weights: ``[N]`` hypothesis weights (sum to 1).
      spacing_mm: pixel spacing of ``image``.
      cfg: segment settings.
      per_hypothesis: False: one :class:`Segments` from the argmax of the mixture mean
        ``sum_n w_n probs_n``; True: one per hypothesis (for uncertainty propagation).

    Returns:
      :class:`Segments`, or a list of N of them.
    """
    probs = np.asarray(probs, np.float32)
    weights = np.asarray(weights, np.float32)
    if probs.ndim != 4 or weights.shape != probs.shape[:1]:
        raise ValueError(
            f"probs [N, h, h, C] and weights [N] expected, got {probs.shape}, {weights.shape}"
        )
    if not per_hypothesis:
        mean = np.tensordot(weights, probs, axes=1)
        labels = labels_from_probs(mean, image.shape)
        return cut_segments(image, labels, spacing_mm=spacing_mm, cfg=cfg)
    return [
        cut_segments(image, labels_from_probs(p, image.shape), spacing_mm=spacing_mm, cfg=cfg)
        for p in probs
    ]


# ----------------------------------------------------------------- a dataset's segments


@dataclasses.dataclass(frozen=True)
class SegmentSet:
    """The segments of a dataset, one row per radiograph.

    Attributes:
      images: ``[n, B, S, S]`` float32 in [0, 1].
      valid: ``[n, B]`` bool.
      image_ids, subject_ids: ``[n]`` str.
      labels: ``[n]`` int (1 = osteoporosis), -1 where unknown.
      t_scores: ``[n]`` float, NaN where unknown.
      bones: names of the B segments.
      meta: contents of ``segments.json``.
    """

    images: np.ndarray
    valid: np.ndarray
    image_ids: np.ndarray
    subject_ids: np.ndarray
    labels: np.ndarray
    t_scores: np.ndarray
    bones: tuple[str, ...]
    meta: dict

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, idx: np.ndarray) -> SegmentSet:
        """The rows ``idx``."""
        return dataclasses.replace(
            self,
            images=self.images[idx],
            valid=self.valid[idx],
            image_ids=self.image_ids[idx],
            subject_ids=self.subject_ids[idx],
            labels=self.labels[idx],
            t_scores=self.t_scores[idx],
        )

    def select_bones(self, bones: tuple[str, ...]) -> SegmentSet:
        """Only the segments named ``bones`` (a raw-image set ignores the selection)."""
        if self.bones == ("image",):
            return self
        missing = [b for b in bones if b not in self.bones]
        if missing:
            raise ValueError(f"bones {missing} not in this segment set ({self.bones})")
        idx = [self.bones.index(b) for b in bones]
        return dataclasses.replace(
            self, images=self.images[:, idx], valid=self.valid[:, idx], bones=tuple(bones)
        )


def load_segments(path: str | os.PathLike) -> SegmentSet:
    """Reads a folder written by :func:`extract_segments`."""
    path = Path(path)
    for name in (SEGMENTS_NPZ, SEGMENTS_CSV, SEGMENTS_JSON):
        if not (path / name).exists():
            raise DatasetError(f"{path / name}: not found; is {path} a segments folder?")
    meta = json.loads((path / SEGMENTS_JSON).read_text())
    with np.load(path / SEGMENTS_NPZ) as z:
        images, valid = z["images"].astype(np.float32), z["valid"]
    rows = read_csv(path / SEGMENTS_CSV)
    if len(rows) != images.shape[0]:
        raise DatasetError(
            f"{path / SEGMENTS_CSV}: {len(rows)} rows but {images.shape[0]} images in the npz"
        )
    return SegmentSet(
        images=images,
        valid=valid,
        image_ids=np.array([r["image_id"] for r in rows]),
        subject_ids=np.array([r["subject_id"] for r in rows]),
        labels=np.array([int(r["label"]) for r in rows]),
        t_scores=np.array([float(r["t_score"]) for r in rows]),
        bones=tuple(meta["bones"]),
        meta=meta,
    )
