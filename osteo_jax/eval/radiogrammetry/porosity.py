"""Cortical porosity of a measured shaft: a Beer-Lambert fit on a calibrated detector.

Radiogrammetry's tube fit (:mod:`~osteo_jax.eval.radiogrammetry.profile_fit`) reads the widths
off a profile in display units, where a thick cortex and a dense one look alike. With the
detector's calibration (the log amplifier's offset and gain, the beam's spectrum and the
attenuation of cortical bone, soft tissue and marrow: what a phantom exposure or a reference
wedge gives) the same profile can be read in path lengths. Across the shaft, per material,

    bone(t)    = cort(t) (1 - p) + f C_r(t - c - d),
    marrow(t)  = (1 - f) C_r(t - c - d),
    soft(t)    = s0 + s1 t + s2 t^2 - C_R(t - c) + p cort(t),
    cort(t)    = C_R(t - c) - C_r(t - c - d),

with ``C_R(x) = 2 sqrt(R^2 - x^2)`` the chord of a cylinder, ``p`` the cortical porosity (the
pores hold soft tissue), ``f`` the bone fraction of the medulla and ``s`` the soft-tissue
envelope. The detector sees ``T = sum_e w_e exp(-(mu_bone,e bone + mu_soft,e soft +
mu_marrow,e marrow))`` blurred by a Gaussian, and stores ``-ln T``. The ten parameters
``(s0, s1, s2, p, f, c, R, r, d, sigma)`` are fitted by least squares to each block's mean
profile of a :class:`~osteo_jax.eval.radiogrammetry.measure.BoneMeasurement` (its tube fit is
the start), and the bone's porosity is the median over its blocks.

Beam hardening is in the model (the spectrum), so a thick cortex does not read as a porous one.
The numbers mean something only for images from the calibrated detector: the synthetic cohort
records its detector in ``dataset.json`` (:func:`calibration_of_dataset`); a real archive needs
a per-device calibration, and without one no porosity is measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy import ndimage, optimize

from osteo_jax.config import CLASS_NAMES
from osteo_jax.eval.radiogrammetry.measure import BoneMeasurement, block_profile

__all__ = [
    "DetectorCalibration",
    "calibration_of_dataset",
    "fit_porosity",
    "measure_porosity",
]

_SUB = 4  # fine samples per profile sample
_MARGIN_MM = 2.0  # fine grid beyond the profile, for the blur
# Bounds of (s0, s1, s2, p, f, c, R, r, d, sigma); positions in mm from the profile's origin.
_P_RANGE = (-0.3, 0.7)
_F_RANGE = (-0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class DetectorCalibration:
    """What turns a stored value into path lengths: the log amplifier and the beam.

    Attributes:
      dn_open: stored value of the open beam.
      dn_per_neper: stored values per unit of ``-ln T``.
      bits_stored: bits of the stored values (``read_image`` divides by ``2**bits - 1``).
      spectrum: relative fluence per energy bin.
      mu_cortical: cortical bone attenuation per bin, cm^-1.
      mu_soft: soft-tissue attenuation per bin, cm^-1.
      mu_adipose: fatty-marrow attenuation per bin, cm^-1.
    """

    dn_open: float
    dn_per_neper: float
    bits_stored: int
    spectrum: tuple[float, ...]
    mu_cortical: tuple[float, ...]
    mu_soft: tuple[float, ...]
    mu_adipose: tuple[float, ...]

    def __post_init__(self):
        n = len(self.spectrum)
        if n == 0 or any(len(x) != n for x in (self.mu_cortical, self.mu_soft, self.mu_adipose)):
            raise ValueError("spectrum and the three attenuation tables need one entry per bin")
        if not self.dn_per_neper > 0 or sum(self.spectrum) <= 0:
            raise ValueError("dn_per_neper and the spectrum's total must be > 0")

    def nepers(self, stored: np.ndarray) -> np.ndarray:
        """``read_image`` output (stored value / (2^bits - 1)) -> ``-ln T``."""
        top = 2**self.bits_stored - 1
        return (np.asarray(stored, np.float64) * top - self.dn_open) / self.dn_per_neper

    def transmission(self, bone_mm, soft_mm, marrow_mm) -> np.ndarray:
        """Fraction of the open beam through the given path lengths (mm), spectrum-weighted.

        The generator's ``data.synth.xray.transmission`` computes the same in float32 in place;
        the fit needs float64 (its forward differences step by ~1e-8), so it is not reused.
        """
        w = np.asarray(self.spectrum, np.float64)
        w = w / w.sum()
        out = 0.0
        for we, mb, ms, ma in zip(w, self.mu_cortical, self.mu_soft, self.mu_adipose, strict=True):
            out = out + we * np.exp((mb * bone_mm + ms * soft_mm + ma * marrow_mm) * -0.1)
        return out


def calibration_of_dataset(meta: Mapping | str | Path) -> DetectorCalibration | None:
    """The detector calibration a synthetic dataset records, or None for any other dataset.

    Args:
      meta: a ``dataset.json``'s content, or its path, or the dataset folder.

    Returns:
      The calibration from ``generator.config.physics`` (with ``bits_stored``), or None when
      the file does not describe one (a real archive, or no ``dataset.json``) or its images
      are not PNGs of the stored values (a DICOM's display window and polarity are read by
      ``read_image``, and the stored scale is not what it returns).
    """
    if not isinstance(meta, Mapping):
        path = Path(meta)
        path = path / "dataset.json" if path.is_dir() else path
        if not path.is_file():
            return None
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    if meta.get("image_format", "png") != "png":
        return None
    physics = ((meta.get("generator") or {}).get("config") or {}).get("physics")
    if not isinstance(physics, Mapping):
        return None
    keys = ("dn_open", "dn_per_neper", "spectrum", "mu_cortical", "mu_soft", "mu_adipose")
    if any(k not in physics for k in keys):
        return None
    return DetectorCalibration(
        dn_open=float(physics["dn_open"]),
        dn_per_neper=float(physics["dn_per_neper"]),
        bits_stored=int(physics.get("bits_stored", meta.get("bits_stored", 16))),
        **{k: tuple(float(v) for v in physics[k]) for k in keys[2:]},
    )


def _chord(x: np.ndarray, radius: float) -> np.ndarray:
    return 2.0 * np.sqrt(np.maximum(radius * radius - x * x, 0.0))


class _ShaftModel:
    """``-ln T`` of a blurred shaft profile sampled at ``t`` (mm), on a 4x finer grid."""

    def __init__(self, t: np.ndarray, calib: DetectorCalibration):
        self.calib = calib
        step = float(t[1] - t[0])
        self.h = step / _SUB
        margin = int(math.ceil(_MARGIN_MM / self.h))
        self.margin = margin
        k = np.arange(t.size * _SUB + 2 * margin) - margin
        self.fine = t[0] + self.h * (k - (_SUB - 1) / 2)
        self.n = t.size

    def batch(self, q: np.ndarray) -> np.ndarray:
        """``[m, 10]`` parameter vectors -> ``[m, n]`` profiles."""
        s0, s1, s2, p, f, c, big, small, d, sigma = (q[:, i : i + 1] for i in range(10))
        x = self.fine[None, :] - c
        outer = _chord(x, big)
        inner = _chord(x - d, small)
        cort = np.maximum(outer - inner, 0.0)
        bone = cort * (1.0 - p) + f * inner
        marrow = (1.0 - f) * inner
        soft = np.maximum(s0 + s1 * x + s2 * x * x - outer + p * cort, 0.0)
        trans = self.calib.transmission(bone, soft, marrow)
        out = np.empty_like(trans)
        for sig in np.unique(sigma):
            rows = sigma[:, 0] == sig
            out[rows] = ndimage.gaussian_filter1d(
                trans[rows], sig / self.h, axis=-1, mode="nearest", truncate=3.0
            )
        out = out[:, self.margin : self.margin + self.n * _SUB].reshape(-1, self.n, _SUB)
        return -np.log(np.maximum(out.mean(axis=2), 1e-12))

    def __call__(self, q: np.ndarray) -> np.ndarray:
        return self.batch(np.asarray(q, np.float64)[None])[0]

    def jacobian(self, q: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """``[n, 10]`` forward differences, all in one batch (turned back at upper bounds)."""
        eps = np.sqrt(np.finfo(np.float64).eps) * np.maximum(1.0, np.abs(q))
        eps = np.where(q + eps > upper, -eps, eps)
        f = self.batch(np.vstack([q, q + np.diag(eps)]))
        return ((f[1:] - f[0]) / eps[:, None]).T


def fit_porosity(
    t_mm: np.ndarray,
    profile: np.ndarray,
    calib: DetectorCalibration,
    *,
    centre_mm: float,
    outer_mm: float,
    inner_mm: float,
    offset_mm: float = 0.0,
    sigma_mm: float = 0.3,
) -> tuple[float, float] | None:
    """Porosity of one mean ``-ln T`` profile across a shaft.

    Args:
      t_mm: ``[n]`` sample positions across the shaft (mm), evenly spaced.
      profile: ``[n]`` ``-ln T`` at ``t_mm`` (:meth:`DetectorCalibration.nepers`); NaN samples
        are left out (at most 20 %).
      calib: the detector's calibration.
      centre_mm: start of the tube's centre (mm, on ``t_mm``'s axis).
      outer_mm: start of the outer radius R.
      inner_mm: start of the medullary radius r.
      offset_mm: start of the medulla's offset d from the centre.
      sigma_mm: start of the detector blur (Gaussian sigma, mm).

    Returns:
      ``(porosity, relative RMS residual)`` (the residual over the profile's range), or None
      when the profile cannot be fitted.
    """
    t_mm = np.asarray(t_mm, np.float64)
    y = np.asarray(profile, np.float64)
    ok = np.isfinite(y)
    if t_mm.size < 8 or ok.sum() < 0.8 * y.size:
        return None
    span = float(np.ptp(y[ok]))
    if span <= 0 or not outer_mm > inner_mm > 0:
        return None
    model = _ShaftModel(t_mm, calib)
    mu_soft = float(np.dot(calib.spectrum, calib.mu_soft) / sum(calib.spectrum)) / 10.0
    edge = float(np.nanmedian(np.r_[y[ok][:3], y[ok][-3:]]))
    q0 = np.array(
        [max(edge / mu_soft + 2 * outer_mm, 1.0), 0.0, 0.0, 0.07, 0.02]
        + [centre_mm, outer_mm, inner_mm, offset_mm, sigma_mm]
    )
    width = float(np.ptp(t_mm))
    lower = np.array(
        [0.0, -np.inf, -np.inf, _P_RANGE[0], _F_RANGE[0], t_mm[0], 0.5 * outer_mm]
        + [0.05, -outer_mm, 0.02]
    )
    upper = np.array(
        [np.inf, np.inf, np.inf, _P_RANGE[1], _F_RANGE[1], t_mm[-1], min(2 * outer_mm, width)]
        + [2 * outer_mm, outer_mm, 2.0]
    )
    q0 = np.clip(q0, lower + 1e-6, upper - 1e-6)
    try:
        res = optimize.least_squares(
            lambda q: (model(q) - y)[ok] / span,
            q0,
            jac=lambda q: model.jacobian(q, upper)[ok] / span,
            bounds=(lower, upper),
            x_scale="jac",
            max_nfev=300,
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    p, big, small = res.x[3], res.x[6], res.x[7]
    if not small < big or not np.all(np.isfinite(res.x)):
        return None
    rms = float(np.sqrt(np.mean(res.fun**2)))
    return float(p), rms


def measure_porosity(
    nepers: np.ndarray,
    labels: np.ndarray,
    measurement: BoneMeasurement,
    calib: DetectorCalibration,
    *,
    spacing_mm: float,
    max_residual: float = 0.03,
    step_px: float = 0.5,
    pad_mm: float = 2.5,
) -> float:
    """Cortical porosity of a bone radiogrammetry measured: the median over its blocks.

    Args:
      nepers: ``[H, W]`` ``-ln T`` of the radiograph (:meth:`DetectorCalibration.nepers` of
        the stored values).
      labels: the label map the bone was measured on (other bones' pixels are left out).
      measurement: :func:`~osteo_jax.eval.radiogrammetry.measure.measure_bone`'s result; each
        of its block fits is refitted here with the physical model.
      calib: the detector's calibration.
      spacing_mm: pixel spacing (mm).
      max_residual: a block whose fit's RMS residual exceeds this fraction of the profile's
        range is left out.
      step_px: sample step across the shaft (pixels).
      pad_mm: profile extent beyond the tube's outer radius.

    Returns:
      The porosity (volume fraction of the cortex), NaN when the bone was not measured or no
      block fitted.
    """
    if not measurement.valid or not measurement.block_fits:
        return float("nan")
    u = np.asarray(measurement.axis, np.float64)
    fits = measurement.block_fits
    origins = np.array([o for _, o, _, _ in fits], np.float64)
    if len(origins) > 1:
        gap = np.median(np.abs(np.diff((origins - origins[0]) @ u)))
        block = max(int(round(gap)), 1)
    else:
        block = max(int(round(1.0 / spacing_mm)), 1)
    cls = CLASS_NAMES.index(measurement.bone)
    params = np.array([p for _, _, _, p in fits], np.float64)
    big = float(np.median(params[:, 6]))
    small = float(np.median(params[:, 7] * params[:, 6]))
    offset = float(np.median(params[:, 8] * params[:, 6] * (1.0 - params[:, 7])))
    sigma = float(np.median(params[:, 9]))
    # One mean profile over the window: each block's profiles centred on its own tube fit.
    profiles = []
    for _, origin, n, p in fits:
        centre = np.asarray(origin, np.float64) + np.asarray(n, np.float64) * float(p[5])
        t, prof = block_profile(
            nepers, labels, cls, centre, u, n, 0.0, -big, big, pad_mm / spacing_mm, block, step_px
        )
        profiles.append(prof)
    stack = np.stack(profiles)
    count = np.isfinite(stack).sum(axis=0)
    prof = np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), np.nan)
    fit = fit_porosity(
        t * spacing_mm,
        prof,
        calib,
        centre_mm=0.0,
        outer_mm=big * spacing_mm,
        inner_mm=small * spacing_mm,
        offset_mm=offset * spacing_mm,
        sigma_mm=sigma * spacing_mm,
    )
    if fit is None or fit[1] > max_residual:
        return float("nan")
    return fit[0]
