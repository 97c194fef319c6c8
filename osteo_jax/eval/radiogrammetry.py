"""Radiogrammetry: cortical index of MC2 (2MCI), MC3, MC4 and the radius from a bone label map.

The cortical index of a tubular bone at mid-diaphysis is ``CI = (W - M) / W`` with ``W`` the
outer (periosteal) width and ``M`` the medullary (endosteal) width (Barnett & Nordin 1960; the
2MCI of the second metacarpal: about 0.60 when normal, < 0.50 flags osteoporosis).

A bone mask holds cortex and medulla together, so the mask only *locates* the bone: its long
axis (principal axis of the component's pixels), its ends, the measurement site (the central
part of a metacarpal; a fixed distance proximal of the distal tip for the radius and ulna), and
a first guess of the width. ``W`` and ``M`` are then read off the radiograph itself, so a mask
predicted at 128 px (one model pixel ~ 1.6 mm at 0.2 mm spacing) still gives sub-pixel widths.

Profile model. The site's window is cut into a few blocks along the axis; the intensity profiles
across the shaft (cubic-spline samples every half pixel) are averaged within each block, and
each block's mean profile is fitted by least squares with the projection of a tube
(``DATA_PHYSICS.md``; what :mod:`osteo_jax.data.synth.raster` renders): for a tube of outer radius R
centred at ``c`` and medullary radius ``r`` centred at ``c + d`` the attenuation across the
shaft is, in log (display) units,

    f(t) = G_sigma * [p0 + p1 t + p2 t^2 + h(a C_R(t - c) - b C_r(t - c - d))],
    C_R(x) = 2 sqrt(R^2 - x^2) for |x| < R else 0,     h(P) = P - k P^2,

with ``a`` (cortex minus displaced soft tissue), ``b`` (cortex minus marrow) the projected
contrasts, ``k >= 0`` a beam-hardening curvature, and ``G_sigma`` the detector blur. The chord
``C`` is box-averaged over sub-samples with its closed-form integral
``x sqrt(R^2 - x^2) + R^2 arcsin(x / R)``, so the fit is smooth in R and r. The inner cortical
edges are the cusps of this profile (the projected cortical path peaks where the ray grazes the
medulla), the outer edges its steepest rise and fall; both are found to a fraction of a pixel.
Then ``W = 2R``, ``M = 2r`` and ``CI = 1 - r / R`` (pixel spacing cancels, and so does a small
tilt of the axis), and each quantity is the median over the blocks that fitted well. The model
blurs attenuation where the detector blurs counts before the log; on the synthetic cohort this
leaves W about 0.1 px short and the CI about 0.003 low (``experiments/radiogrammetry.py``).

Segmentation uncertainty: :func:`measure_hypotheses` measures each of the K S hypotheses of a
mixture segmenter and summarises each index by its weighted mean, weighted SD, min / max and a
weighted central interval (:func:`weighted_spread`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage, optimize

from osteo_jax.config import BONE_NAMES, CLASS_NAMES
from osteo_jax.data.segments import labels_from_probs

__all__ = [
    "DEFAULT_BONES",
    "BoneMeasurement",
    "RadiogrammetryConfig",
    "measure_bone",
    "measure_hypotheses",
    "measure_prediction",
    "measure_radiograph",
    "weighted_spread",
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


def _check_bones(bones) -> tuple[str, ...]:
    if isinstance(bones, str):
        bones = (bones,)
    unknown = [b for b in bones if b not in BONE_NAMES]
    if unknown:
        raise ValueError(f"unknown bone(s) {unknown}; expected names from {BONE_NAMES}")
    return tuple(bones)


# ------------------------------------------------------------------------- profile model


def _chord_integral(x: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Antiderivative of the chord 2 sqrt(R^2 - x^2), constant beyond |x| >= R (R > 0)."""
    xc = np.clip(x / radius, -1.0, 1.0)
    return radius**2 * (xc * np.sqrt(1.0 - xc**2) + np.arcsin(xc))


class _ProfileModel:
    """Blurred projection of a tube on a grid of ``n`` samples at ``step`` pixel spacing.

    The chords are box-averaged over fine bins of ``step / _SUB`` pixels, blurred by a Gaussian
    on the fine grid, and averaged back to the samples. Evaluates a batch of parameter vectors
    ``[m, 11]`` at once (the finite-difference Jacobian is one call).
    """

    _SUB = 4
    _MARGIN = 12

    def __init__(self, t: np.ndarray, step: float):
        self.n = t.size
        self.h = step / self._SUB
        self.margin = self._MARGIN * self._SUB
        idx = np.arange(self.n * self._SUB + 2 * self.margin) - self.margin
        # Sample k is the mean of the fine bins centred on t[k] + h (j - (SUB - 1) / 2).
        self.fine = (t[0] + self.h * (idx - (self._SUB - 1) / 2))[None, :]
        scale = max(float(np.ptp(t)), 1.0)
        self.x = (self.fine - t.mean()) / scale

    def _chord(self, centre: np.ndarray, radius: np.ndarray) -> np.ndarray:
        x = self.fine - centre
        h = self.h
        return (_chord_integral(x + h / 2, radius) - _chord_integral(x - h / 2, radius)) / h

    def batch(self, p: np.ndarray) -> np.ndarray:
        """``[m, 11]`` parameters -> ``[m, n]`` model profiles."""
        p0, p1, p2, a, b, c, radius, q, v, sigma, k = (p[:, i : i + 1] for i in range(11))
        r = q * radius
        proj = a * self._chord(c, radius) - b * self._chord(c + v * (radius - r), r)
        fine = p0 + p1 * self.x + p2 * self.x**2 + proj - k * proj**2
        out = np.empty_like(fine)
        for sig in np.unique(sigma):
            rows = sigma[:, 0] == sig
            out[rows] = ndimage.gaussian_filter1d(
                fine[rows], sig / self.h, axis=-1, mode="nearest", truncate=3.0
            )
        out = out[:, self.margin : self.margin + self.n * self._SUB]
        return out.reshape(-1, self.n, self._SUB).mean(axis=2)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return self.batch(np.asarray(p, np.float64)[None])[0]

    def jacobian(self, p: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Forward-difference Jacobian ``[n, 11]`` (steps turned back at upper bounds)."""
        eps = np.sqrt(np.finfo(np.float64).eps) * np.maximum(1.0, np.abs(p))
        eps = np.where(p + eps > upper, -eps, eps)
        pts = np.concatenate([p[None], p[None] + np.diag(eps)])
        f = self.batch(pts)
        return ((f[1:] - f[0]) / eps[:, None]).T


def _initial_guess(t: np.ndarray, y: np.ndarray, lo: float, hi: float, pad: float):
    """Edges from the profile: steepest rise / fall (outer), the two maxima between (inner)."""
    ys = ndimage.gaussian_filter1d(y, 1.0, mode="nearest")
    g = np.gradient(ys, t)
    mid = 0.5 * (lo + hi)
    left = (t >= lo - pad) & (t <= mid)
    right = (t >= mid) & (t <= hi + pad)
    if left.sum() < 3 or right.sum() < 3:
        return None
    tl = t[left][np.argmax(g[left])]
    tr = t[right][np.argmin(g[right])]
    if tr - tl < 4 * (t[1] - t[0]):
        return None
    inner_l = (t > tl) & (t < 0.5 * (tl + tr))
    inner_r = (t >= 0.5 * (tl + tr)) & (t < tr)
    if inner_l.sum() < 2 or inner_r.sum() < 2:
        return None
    il = t[inner_l][np.argmax(ys[inner_l])]
    ir = t[inner_r][np.argmax(ys[inner_r])]
    c, radius = 0.5 * (tl + tr), 0.5 * (tr - tl)
    r = max(0.5 * (ir - il), 0.1 * radius)
    q = min(r / radius, 0.9)
    d = 0.5 * (il + ir) - c
    v = float(np.clip(d / max(radius - q * radius, 1e-6), -0.8, 0.8))
    outside = (t < tl - 1) | (t > tr + 1)
    bg = float(np.median(ys[outside])) if outside.any() else float(ys.min())
    peak = 0.5 * (np.interp(il, t, ys) + np.interp(ir, t, ys)) - bg
    centre_val = float(np.interp(c, t, ys)) - bg
    chord_peak = 2 * math.sqrt(max(radius**2 - (q * radius) ** 2, 1e-6))
    a = max(peak / chord_peak, 1e-6)
    b = float(np.clip((a * 2 * radius - centre_val) / (2 * q * radius), 0.0, 3 * a))
    return np.array([bg, 0.0, 0.0, a, b, c, radius, q, v, 1.0, 0.0])


def _fit_profile(t: np.ndarray, y: np.ndarray, lo: float, hi: float, pad: float, step: float):
    """Least-squares tube fit of one mean profile; returns (R, r, relative residual) or None."""
    ok = np.isfinite(y)
    if ok.sum() < 0.8 * y.size:
        return None
    y = np.where(ok, y, np.interp(t, t[ok], y[ok]))
    span = float(np.ptp(y))
    if span <= 0:
        return None
    y = (y - y.min()) / span
    p0 = _initial_guess(t, y, lo, hi, pad)
    if p0 is None:
        return None
    model = _ProfileModel(t, step)
    width = float(np.ptp(t))
    inf = np.inf
    lower = np.array([-inf, -inf, -inf, 0.0, 0.0, t[0], 0.5, 0.02, -0.95, 0.2, 0.0])
    upper = np.array([inf, inf, inf, inf, inf, t[-1], width / 2, 0.97, 0.95, 4.0, inf])
    p0 = np.clip(p0, lower + 1e-9, upper - 1e-9)

    def resid(p):
        return (model(p) - y)[ok]

    def jac(p):
        return model.jacobian(p, upper)[ok]

    try:
        res = optimize.least_squares(
            resid,
            p0,
            jac=jac,
            bounds=(lower, upper),
            x_scale="jac",
            loss="soft_l1",
            f_scale=0.02,
            max_nfev=200,
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    radius, q = res.x[6], res.x[7]
    rms = float(np.sqrt(np.mean(res.fun**2)))
    contrast = float(np.ptp(model(res.x)))
    if not res.success and res.status == 0 and rms > 0.05:
        return None
    return radius, q * radius, rms / max(contrast, 1e-6)


# ------------------------------------------------------------------------- one bone


def _axis(mask: np.ndarray):
    pts = np.argwhere(mask).astype(np.float64)
    centre = pts.mean(axis=0)
    cov = np.cov((pts - centre).T)
    _, vecs = np.linalg.eigh(cov)
    u = vecs[:, 1]
    n = np.array([-u[1], u[0]])
    return pts, centre, u, n


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return lab == (1 + int(np.argmax(np.bincount(lab.ravel())[1:])))


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


def _block_profile(image, labels, cls, centre, u, n, s0, t_lo, t_hi, pad, block, step):
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

    Returns:
      :class:`BoneMeasurement`; NaN numbers and ``valid=False`` when the bone is missing, its
      site is outside the image, or no profile could be fitted.

    Raises:
      ValueError: unknown bone, mismatched shapes, non-integer labels, bad spacing.
    """
    (bone,) = _check_bones(bone)
    cfg = cfg or RadiogrammetryConfig()
    image = np.asarray(image, np.float64)
    labels = np.asarray(labels)
    _check_inputs(image, labels, spacing_mm)
    cls = CLASS_NAMES.index(bone)
    mask = labels == cls
    if mask.sum() * spacing_mm**2 < cfg.min_area_mm2:
        return _failed(bone, "missing")
    mask = _largest_component(mask)
    if mask.sum() * spacing_mm**2 < cfg.min_area_mm2:
        return _failed(bone, "missing")
    pts, centre, u, n = _axis(mask)
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
    results, n_inside = [], 0
    for s0 in w_lo + (np.arange(cfg.n_blocks) + 0.5) * span / cfg.n_blocks:
        sel = np.abs(s - s0) <= max(block / 2, 0.75)
        if sel.sum() < 4:
            continue  # the mask does not reach this block (e.g. cut by the image edge)
        t_lo, t_hi = float(np.percentile(tt[sel], 1)) - 0.5, float(np.percentile(tt[sel], 99)) + 0.5
        p = centre + u * s0
        ends = [p + n * (t_lo - pad), p + n * (t_hi + pad)]
        if any(not (0 <= e[0] <= h - 1 and 0 <= e[1] <= w - 1) for e in ends):
            continue
        n_inside += 1
        t, prof = _block_profile(
            image, labels, cls, centre, u, n, s0, t_lo, t_hi, pad, block, cfg.step_px
        )
        fit = _fit_profile(t, prof, t_lo, t_hi, pad, cfg.step_px)
        if fit is not None and fit[2] <= cfg.max_residual:
            results.append(fit[:2])
    if n_inside == 0:
        return _failed(bone, "site outside image", site, u)
    if len(results) < cfg.min_blocks:
        return _failed(bone, "fit failed", site, u, len(results))
    radii = np.asarray(results)
    width = 2 * float(np.median(radii[:, 0])) * spacing_mm
    medullary = 2 * float(np.median(radii[:, 1])) * spacing_mm
    ci = float(np.median(1.0 - radii[:, 1] / radii[:, 0]))
    return BoneMeasurement(bone, width, medullary, ci, True, "ok", len(results), site, u)


def measure_radiograph(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    spacing_mm: float,
    bones: tuple[str, ...] = DEFAULT_BONES,
    cfg: RadiogrammetryConfig | None = None,
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

    Returns:
      ``{bone: BoneMeasurement}`` in the order of ``bones``.
    """
    bones = _check_bones(bones)
    return {b: measure_bone(image, labels, b, spacing_mm=spacing_mm, cfg=cfg) for b in bones}


# ------------------------------------------------------------------------- hypotheses


def weighted_spread(values: np.ndarray, weights: np.ndarray, *, interval: float = 0.9) -> dict:
    """Weighted mean and spread of one quantity over hypotheses, NaN values left out.

    With normalised weights ``w`` over the finite values ``x``: ``mean = sum w x``,
    ``sd = sqrt(sum w (x - mean)^2)`` (the SD of the discrete distribution, no small-sample
    correction), ``min`` / ``max`` over the finite values, and the weighted quantiles
    ``lo``, ``hi`` at ``(1 -/+ interval) / 2``: the smallest value whose cumulative weight
    reaches the level.

    Args:
      values: ``[N]`` values (NaN where the hypothesis failed).
      weights: ``[N]`` non-negative hypothesis weights.
      interval: mass of the central interval ``[lo, hi]``, in (0, 1].

    Returns:
      dict with ``mean``, ``sd``, ``min``, ``max``, ``lo``, ``hi`` (NaN when no value is
      finite), ``n_valid`` and ``weight_valid`` (weight mass of the finite values, before
      normalisation over the total weight).

    Raises:
      ValueError: shapes differ, negative or all-zero weights, interval outside (0, 1].
    """
    x = np.asarray(values, np.float64)
    w = np.asarray(weights, np.float64)
    if x.ndim != 1 or w.shape != x.shape:
        raise ValueError(f"values and weights must be [N] alike, got {x.shape}, {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, with a positive sum")
    if not 0 < interval <= 1:
        raise ValueError(f"interval must lie in (0, 1], got {interval}")
    ok = np.isfinite(x) & (w > 0)
    out = {"n_valid": int(ok.sum()), "weight_valid": float(w[ok].sum() / w.sum())}
    if not ok.any():
        return {**out, **dict.fromkeys(("mean", "sd", "min", "max", "lo", "hi"), math.nan)}
    x, w = x[ok], w[ok] / w[ok].sum()
    mean = float(np.sum(w * x))
    sd = float(np.sqrt(np.sum(w * (x - mean) ** 2)))
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])

    def quantile(level):
        i = int(np.searchsorted(cum, level - 1e-12, side="left"))
        return float(x[order][min(i, x.size - 1)])

    lo, hi = quantile((1 - interval) / 2), quantile((1 + interval) / 2)
    return {
        **out,
        "mean": mean,
        "sd": sd,
        "min": float(x.min()),
        "max": float(x.max()),
        "lo": lo,
        "hi": hi,
    }


def measure_hypotheses(
    image: np.ndarray,
    label_maps: np.ndarray,
    weights: np.ndarray,
    *,
    spacing_mm: float,
    bones: tuple[str, ...] = DEFAULT_BONES,
    cfg: RadiogrammetryConfig | None = None,
    interval: float = 0.9,
) -> dict[str, dict]:
    """Measures every segmentation hypothesis and summarises each index over them.

    Args:
      image: ``[H, W]`` radiograph, bone bright.
      label_maps: ``[N, H, W]`` integer label maps, one per hypothesis, at full resolution.
      weights: ``[N]`` hypothesis weights (the mixture's ``pi_k / S``; normalised here).
      spacing_mm: pixel spacing (mm).
      bones: names of ``config.BONE_NAMES``.
      cfg: measurement settings (None: the defaults).
      interval: mass of the central interval reported (see :func:`weighted_spread`).

    Returns:
      ``{bone: {"width_mm": spread, "medullary_mm": spread, "cortical_index": spread,
      "per_hypothesis": [BoneMeasurement] * N}}`` with ``spread`` the dict of
      :func:`weighted_spread` (a failed hypothesis is left out of the spread).

    Raises:
      ValueError: shapes or weights inconsistent, unknown bone.
    """
    bones = _check_bones(bones)
    label_maps = np.asarray(label_maps)
    weights = np.asarray(weights, np.float64)
    if label_maps.ndim != 3 or weights.shape != label_maps.shape[:1]:
        raise ValueError(
            f"label_maps [N, H, W] and weights [N] expected, got {label_maps.shape}, "
            f"{weights.shape}"
        )
    per = [
        measure_radiograph(image, lm, spacing_mm=spacing_mm, bones=bones, cfg=cfg)
        for lm in label_maps
    ]
    out = {}
    for b in bones:
        ms = [p[b] for p in per]
        out[b] = {
            key: weighted_spread(
                np.array([getattr(m, key) for m in ms]), weights, interval=interval
            )
            for key in ("width_mm", "medullary_mm", "cortical_index")
        }
        out[b]["per_hypothesis"] = ms
    return out


def measure_prediction(
    image: np.ndarray,
    probs: np.ndarray,
    weights: np.ndarray,
    *,
    spacing_mm: float,
    bones: tuple[str, ...] = DEFAULT_BONES,
    cfg: RadiogrammetryConfig | None = None,
    interval: float = 0.9,
) -> tuple[dict[str, BoneMeasurement], dict[str, dict]]:
    """Radiogrammetry from a mixture segmenter's prediction for one radiograph.

    Args:
      image: ``[H, W]`` radiograph, bone bright.
      probs: ``[N, h, h, C]`` class probabilities of the N = K S hypotheses at the model's
        input size (the ``predict`` output of :mod:`osteo_jax.eval.seg_eval` for one image).
      weights: ``[N]`` hypothesis weights.
      spacing_mm: pixel spacing (mm).
      bones: names of ``config.BONE_NAMES``.
      cfg: measurement settings (None: the defaults).
      interval: mass of the central interval of the spread.

    Returns:
      ``(mean_measure, spread)``: the measurement on the argmax of the mixture mean
      ``sum_n w_n probs_n`` (the pipeline's segmentation), and :func:`measure_hypotheses` over
      the N hypotheses.

    Raises:
      ValueError: shapes or weights inconsistent, unknown bone.
    """
    image = np.asarray(image)
    probs = np.asarray(probs, np.float32)
    weights = np.asarray(weights, np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D [H, W], got shape {image.shape}")
    if probs.ndim != 4 or weights.shape != probs.shape[:1]:
        raise ValueError(
            f"probs [N, h, h, C] and weights [N] expected, got {probs.shape}, {weights.shape}"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, with a positive sum")
    w = weights / weights.sum()
    mean_labels = labels_from_probs(np.tensordot(w.astype(np.float32), probs, axes=1), image.shape)
    mean = measure_radiograph(image, mean_labels, spacing_mm=spacing_mm, bones=bones, cfg=cfg)
    maps = np.stack([labels_from_probs(p, image.shape) for p in probs])
    spread = measure_hypotheses(
        image, maps, w, spacing_mm=spacing_mm, bones=bones, cfg=cfg, interval=interval
    )
    return mean, spread
