"""Radiogrammetry of one bone, or several bones of one radiograph, located by a label map.

A bone mask holds cortex and medulla together, so the mask only *locates* the bone: its long
axis (principal axis of the component's pixels), its ends, the measurement site (the central
part of a metacarpal; a fixed distance proximal of the distal tip for the radius and ulna), and
a first guess of the width. ``W`` and ``M`` are then read off the radiograph itself, so a mask
predicted at 128 px (one model pixel ~ 1.6 mm at 0.2 mm spacing) still gives sub-pixel widths.
:func:`~osteo_jax.eval.radiogrammetry.profile_fit.fit_tube_profile` fits each block's mean profile
across the shaft; ``W``, ``M`` and the CI are the medians over the blocks that fitted well.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from osteo_jax.config import BONE_NAMES, CLASS_NAMES
from osteo_jax.data.segments import class_boxes, class_component
from osteo_jax.eval.radiogrammetry.profile_fit import fit_tube_params

__all__ = [
    "DEFAULT_BONES",
    "BoneMeasurement",
    "RadiogrammetryConfig",
    "check_bones",
    "block_profile",
    "measure_bone",
    "measure_radiograph",
]

# The bones of the classic radiogrammetry report: 2MCI, MC3 and MC4 cortical index, radius.
DEFAULT_BONES: tuple[str, ...] = ("MC2", "MC3", "MC4", "radius")
_FOREARM = ("radius", "ulna")
_INTERP_ORDER = 3
_METACARPALS = tuple(CLASS_NAMES.index(b) for b in ("MC1", "MC2", "MC3", "MC4", "MC5"))


@dataclasses.dataclass(frozen=True)
class RadiogrammetryConfig:
    """Where and how a bone is measured.

    Attributes:
      mc_window: central fraction of a metacarpal's mask length measured (0.16: from 42 % to
        58 % of the length; the synthetic cortex has full thickness from 30 % to 70 %).
      forearm_window_mm: per forearm bone, the measured stretch of shaft as distances (mm)
        proximal of the distal tip of the mask (the synthetic radius has full-thickness cortex
        from ~1.5 epiphysis lengths, 20-26 mm, and is cut by the image edge ~18 mm further).
      n_blocks: the window is cut into this many blocks along the axis; the profiles of a
        block are averaged and fitted once, and each measure is the median over the blocks.
        Using every profile of the window matters: cortical porosity texture moves a thin
        cortex's fitted edges by a few tenths of a pixel from one millimetre to the next.
      block_mm: minimum length of a block along the axis.
      step_px: sample step across the shaft, pixels.
      pad_mm: profile extent beyond the mask's edges (covers a coarse predicted mask).
      min_area_mm2: a bone whose largest component is smaller is reported missing.
      max_residual: a block fit whose RMS residual exceeds this fraction of the profile's
        bone contrast is rejected.
      min_blocks: fewer good blocks than this and the measurement fails (NaN).
    """

    mc_window: float = 0.16
    forearm_window_mm: tuple[tuple[str, float, float], ...] = (
        ("radius", 24.0, 30.0),
        ("ulna", 19.5, 25.0),
    )
    n_blocks: int = 7
    block_mm: float = 1.0
    step_px: float = 0.5
    pad_mm: float = 2.5
    min_area_mm2: float = 20.0
    max_residual: float = 0.06
    min_blocks: int = 2


@dataclasses.dataclass(frozen=True)
class BoneMeasurement:
    """Radiogrammetry of one bone at its mid-diaphysis site.

    Attributes:
      bone: bone name (``config.BONE_NAMES``).
      width_mm: outer diaphysis width W (NaN when not measured).
      medullary_mm: medullary width M (NaN when not measured).
      cortical_index: (W - M) / W (NaN when not measured).
      valid: True when the three numbers are finite.
      reason: ``"ok"``, ``"missing"`` (no or too small a component), ``"site outside image"``
        or ``"fit failed"``.
      n_blocks: number of block fits that entered the median.
      site: ``[2]`` (row, col) of the window's centre, NaN when missing.
      axis: ``[2]`` unit (row, col) long-axis direction, NaN when missing.
      block_fits: per block that was fitted, ``(block index, (row, col) of the profile's
        origin, (row, col) unit direction of its t axis, fitted parameters)``: what
        :func:`measure_bone`'s ``start`` reads (not part of equality).
    """

    bone: str
    width_mm: float
    medullary_mm: float
    cortical_index: float
    valid: bool
    reason: str
    n_blocks: int
    site: np.ndarray
    axis: np.ndarray
    block_fits: tuple = dataclasses.field(default=(), repr=False, compare=False)


def _failed(bone: str, reason: str, site=None, axis=None, n_blocks: int = 0) -> BoneMeasurement:
    nan2 = np.full(2, np.nan)
    site = nan2 if site is None else site
    axis = nan2 if axis is None else axis
    return BoneMeasurement(bone, math.nan, math.nan, math.nan, False, reason, n_blocks, site, axis)


def _check_inputs(image: np.ndarray, labels: np.ndarray, spacing_mm: float) -> None:
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D [H, W], got shape {image.shape}")
    if labels.shape != image.shape:
        raise ValueError(f"labels {labels.shape} must have the image's shape {image.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer label map, got dtype {labels.dtype}")
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm}")


def check_bones(bones: str | Sequence[str]) -> tuple[str, ...]:
    """Bone names as a tuple, checked against ``config.BONE_NAMES``.

    Args:
      bones: one bone name or a sequence of them.

    Returns:
      The names as a tuple, in the given order.

    Raises:
      ValueError: a name that is not in ``config.BONE_NAMES``.
    """
    if isinstance(bones, str):
        bones = (bones,)
    unknown = [b for b in bones if b not in BONE_NAMES]
    if unknown:
        raise ValueError(f"unknown bone(s) {unknown}; expected names from {BONE_NAMES}")
    return tuple(bones)


def _axis(pts: np.ndarray):
    centre = pts.mean(axis=0)
    cov = np.cov((pts - centre).T)
    _, vecs = np.linalg.eigh(cov)
    u = vecs[:, 1]
    n = np.array([-u[1], u[0]])
    return pts, centre, u, n


def _distal_sign(labels, pts, centre, u, s) -> float:
    """+1 when the distal end of a forearm bone lies at max s along ``u``, else -1."""
    mc = np.isin(labels, _METACARPALS)
    if mc.any():
        target = np.argwhere(mc).mean(axis=0)
        return 1.0 if (target - centre) @ u >= 0 else -1.0
    # No hand: the proximal end is the one cut by the image border.
    h, w = labels.shape
    ends = [pts[np.argmax(s)], pts[np.argmin(s)]]
    border = [min(e[0], e[1], h - 1 - e[0], w - 1 - e[1]) for e in ends]
    return 1.0 if border[0] >= border[1] else -1.0


def block_profile(image, labels, cls, centre, u, n, s0, t_lo, t_hi, pad, block, step):
    """Mean profile across a shaft: ``block`` rows along ``u`` around ``centre + u s0``.

    Samples run along ``n`` from ``t_lo - pad`` to ``t_hi + pad`` (pixels) every ``step``;
    pixels of other classes than ``cls`` and the background are left out. Returns ``(t,
    profile)``, NaN where fewer than half of the rows have a sample.
    """
    t = np.arange(t_lo - pad, t_hi + pad + step / 2, step)
    rows = s0 + np.arange(-(block - 1) / 2, (block - 1) / 2 + 0.5, 1.0)
    pts = (
        centre[:, None, None]
        + u[:, None, None] * rows[None, :, None]
        + n[:, None, None] * t[None, None, :]
    )
    # Cubic-spline interpolation on a crop: bilinear sampling smooths by an amount that depends
    # on where a sample falls between pixel centres, which biases thin cortices.
    lo = np.maximum(np.floor(pts.reshape(2, -1).min(axis=1)).astype(int) - 4, 0)
    hi = np.minimum(np.ceil(pts.reshape(2, -1).max(axis=1)).astype(int) + 5, image.shape)
    crop = image[lo[0] : hi[0], lo[1] : hi[1]]
    local = pts - lo[:, None, None]
    vals = ndimage.map_coordinates(crop, local, order=_INTERP_ORDER, mode="nearest")
    lab = ndimage.map_coordinates(labels, pts, order=0, mode="constant", cval=0)
    vals = np.where((lab == 0) | (lab == cls), vals, np.nan)
    good = np.isfinite(vals)
    count = good.sum(axis=0)
    prof = np.where(
        count >= max(1, rows.size // 2), np.nansum(vals, 0) / np.maximum(count, 1), np.nan
    )
    return t, prof


def measure_bone(
    image: np.ndarray,
    labels: np.ndarray,
    bone: str,
    *,
    spacing_mm: float,
    cfg: RadiogrammetryConfig | None = None,
    boxes: list | None = None,
    start: BoneMeasurement | None = None,
) -> BoneMeasurement:
    """Measures W, M and the cortical index of one bone.

    Args:
      image: ``[H, W]`` radiograph, any affine scale of the log-attenuation display with bone
        bright (stored MONOCHROME2 values, or ``read_image`` output in [0, 1]).
      labels: ``[H, W]`` integer label map with the ids of ``config.CLASS_NAMES``; other
        bones' pixels are left out of this bone's profiles.
      bone: a name of ``config.BONE_NAMES``.
      spacing_mm: pixel spacing (mm).
      cfg: measurement settings (None: the defaults).
      boxes: :func:`~osteo_jax.data.segments.class_boxes` of ``labels``, when the caller
        measures several bones of one map (None: computed here).
      start: a measurement of the same bone on the same radiograph with a nearly identical
        label map (another hypothesis of one segmenter): each block's fit starts from that
        measurement's fit of the same block, moved to this block's frame: ~6 instead of ~17
        model evaluations a block. On 64 predicted label maps of 1024-px synthetic
        radiographs (4 bones each) 99 % of the measurements equal a fit from the profile's
        guess within 0.001 mm; the 2 others were guess-started fits that lost the medulla
        (CI 0.93-0.98 where the mixture mean's was 0.32), which the started fits kept.
        Blocks it did not fit, or an axis turned by more than ~25 degrees, start from the
        profile's guess.

    Returns:
      :class:`BoneMeasurement`; NaN numbers and ``valid=False`` when the bone is missing, its
      site is outside the image, or no profile could be fitted.

    Raises:
      ValueError: unknown bone, mismatched shapes, non-integer labels, bad spacing.
    """
    (bone,) = check_bones(bone)
    cfg = cfg or RadiogrammetryConfig()
    image = np.asarray(image, np.float64)
    labels = np.asarray(labels)
    _check_inputs(image, labels, spacing_mm)
    cls = CLASS_NAMES.index(bone)
    comp = class_component(labels, cls, boxes)
    if comp is None or comp[0].sum() * spacing_mm**2 < cfg.min_area_mm2:
        return _failed(bone, "missing")
    pts = (np.argwhere(comp[0]) + np.asarray(comp[1])).astype(np.float64)
    pts, centre, u, n = _axis(pts)
    s = (pts - centre) @ u
    tt = (pts - centre) @ n
    s_min, s_max = float(s.min()) - 0.5, float(s.max()) + 0.5
    if bone in _FOREARM:
        sign = _distal_sign(labels, pts, centre, u, s)
        tip = s_max if sign > 0 else s_min
        d_lo, d_hi = dict((b, (lo, hi)) for b, lo, hi in cfg.forearm_window_mm)[bone]
        a_, b_ = tip - sign * d_lo / spacing_mm, tip - sign * d_hi / spacing_mm
        w_lo, w_hi = min(a_, b_), max(a_, b_)
    else:
        mid, half = 0.5 * (s_min + s_max), 0.5 * cfg.mc_window * (s_max - s_min)
        w_lo, w_hi = mid - half, mid + half
    site = centre + u * 0.5 * (w_lo + w_hi)
    span = w_hi - w_lo
    block = max(int(round(max(cfg.block_mm / spacing_mm, span / cfg.n_blocks))), 1)
    pad = cfg.pad_mm / spacing_mm
    h, w = image.shape
    results, fits, n_inside = [], [], 0
    starts = {}
    if start is not None and start.block_fits:
        starts = {i: (o, d, p) for i, o, d, p in start.block_fits}
    for i, s0 in enumerate(w_lo + (np.arange(cfg.n_blocks) + 0.5) * span / cfg.n_blocks):
        sel = np.abs(s - s0) <= max(block / 2, 0.75)
        if sel.sum() < 4:
            continue  # the mask does not reach this block (e.g. cut by the image edge)
        t_lo, t_hi = float(np.percentile(tt[sel], 1)) - 0.5, float(np.percentile(tt[sel], 99)) + 0.5
        p = centre + u * s0
        ends = [p + n * (t_lo - pad), p + n * (t_hi + pad)]
        if any(not (0 <= e[0] <= h - 1 and 0 <= e[1] <= w - 1) for e in ends):
            continue
        n_inside += 1
        t, prof = block_profile(
            image, labels, cls, centre, u, n, s0, t_lo, t_hi, pad, block, cfg.step_px
        )
        origin = centre + u * s0
        init = _moved_start(starts.get(i), origin, n)
        fit = fit_tube_params(t, prof, t_lo, t_hi, pad, cfg.step_px, start=init)
        if fit is not None and fit[2] <= cfg.max_residual:
            results.append(fit[:2])
            fits.append((i, origin, n, fit[3]))
    if n_inside == 0:
        return _failed(bone, "site outside image", site, u)
    if len(results) < cfg.min_blocks:
        return _failed(bone, "fit failed", site, u, len(results))
    radii = np.asarray(results)
    width = 2 * float(np.median(radii[:, 0])) * spacing_mm
    medullary = 2 * float(np.median(radii[:, 1])) * spacing_mm
    ci = float(np.median(1.0 - radii[:, 1] / radii[:, 0]))
    return BoneMeasurement(
        bone, width, medullary, ci, True, "ok", len(results), site, u, tuple(fits)
    )


def _moved_start(fit, origin: np.ndarray, n: np.ndarray) -> np.ndarray | None:
    """A block fit's parameters in another frame: its tube centre kept where it was.

    Profiles run along ``n`` from ``origin``; the axis of a start whose direction differs by
    more than ~25 degrees (or flips) is no start.
    """
    if fit is None:
        return None
    o_start, n_start, params = fit
    if float(n_start @ n) < 0.9:
        return None
    moved = np.array(params, np.float64)
    moved[5] = float((o_start + n_start * params[5] - origin) @ n)
    return moved


def measure_radiograph(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    spacing_mm: float,
    bones: tuple[str, ...] = DEFAULT_BONES,
    cfg: RadiogrammetryConfig | None = None,
    start: dict[str, BoneMeasurement] | None = None,
) -> dict[str, BoneMeasurement]:
    """Measures several bones of one radiograph (see :func:`measure_bone`).

    Args:
      image: ``[H, W]`` radiograph, bone bright.
      labels: ``[H, W]`` integer label map (``config.CLASS_NAMES`` ids) at the image's
        resolution; :func:`osteo_jax.data.segments.labels_from_probs` brings a prediction
        made at the model's size back to it.
      spacing_mm: pixel spacing (mm).
      bones: names of ``config.BONE_NAMES`` (default MC2, MC3, MC4, radius).
      cfg: measurement settings (None: the defaults).
      start: measurements of these bones on a nearly identical label map, whose fits seed
        these (:func:`measure_bone`'s ``start``; None: every fit from its own guess).

    Returns:
      ``{bone: BoneMeasurement}`` in the order of ``bones``.
    """
    bones = check_bones(bones)
    image = np.asarray(image, np.float64)
    labels = np.asarray(labels)
    _check_inputs(image, labels, spacing_mm)
    boxes = class_boxes(labels)
    return {
        b: measure_bone(
            image,
            labels,
            b,
            spacing_mm=spacing_mm,
            cfg=cfg,
            boxes=boxes,
            start=(start or {}).get(b),
        )
        for b in bones
    }
