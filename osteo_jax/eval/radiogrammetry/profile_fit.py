"""The projected-tube profile model of a bone's shaft and its least-squares fit.

The measurement site's window is cut into a few blocks along the axis; the intensity profiles
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
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, optimize

__all__ = ["fit_tube_params", "fit_tube_profile"]


def _chord_integral(x: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Antiderivative of the chord 2 sqrt(R^2 - x^2), constant beyond |x| >= R (R > 0)."""
    xc = np.clip(x / radius, -1.0, 1.0)
    return radius**2 * (xc * np.sqrt(1.0 - xc**2) + np.arcsin(xc))


class _ProfileModel:
    """Blurred projection of a tube on a grid of ``n`` samples at ``step`` pixel spacing.

    The chords are box-averaged over fine bins of ``step / _SUB`` pixels, blurred by a Gaussian
    on the fine grid, and averaged back to the samples. Evaluates a batch of parameter vectors
    ``[m, 11]`` at once.
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

    def _samples(self, fine: np.ndarray, sigma: float) -> np.ndarray:
        """Rows on the fine grid blurred by ``sigma`` (pixels) and averaged to the samples."""
        out = ndimage.gaussian_filter1d(fine, sigma / self.h, axis=-1, mode="nearest", truncate=3.0)
        out = out[:, self.margin : self.margin + self.n * self._SUB]
        return out.reshape(-1, self.n, self._SUB).mean(axis=2)

    def _chord_grad(self, centre: float, radius: float):
        """The box-averaged chord and its derivatives in its centre and its radius."""
        h = self.h
        x = self.fine[0] - centre
        hi = np.clip((x + h / 2) / radius, -1.0, 1.0)
        lo = np.clip((x - h / 2) / radius, -1.0, 1.0)
        root_hi, root_lo = np.sqrt(1.0 - hi**2), np.sqrt(1.0 - lo**2)
        asin_hi, asin_lo = np.arcsin(hi), np.arcsin(lo)
        chord = radius**2 * (hi * root_hi + asin_hi - lo * root_lo - asin_lo) / h
        # d/dx of the chord integral is the chord 2 R sqrt(1 - (x/R)^2); d/dR is 2 R arcsin(x/R).
        d_centre = -2.0 * radius * (root_hi - root_lo) / h
        d_radius = 2.0 * radius * (asin_hi - asin_lo) / h
        return chord, d_centre, d_radius

    def jacobian(self, p: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Jacobian ``[n, 11]``, analytic in all parameters but the blur ``sigma``.

        In ``sigma`` it is a forward difference, turned back at the upper bound. The blur is
        linear, so each other column is the blurred derivative of the fine-grid profile; only
        the blur's own width needs a second blur.
        """
        p0, p1, p2, a, b, c, radius, q, v, sigma, k = (float(x) for x in p)
        r = q * radius
        c2 = c + v * (radius - r)
        ch1, ch1_c, ch1_r = self._chord_grad(c, radius)
        ch2, ch2_c, ch2_r = self._chord_grad(c2, r)
        proj = a * ch1 - b * ch2
        x = self.x[0]
        fine = p0 + p1 * x + p2 * x**2 + proj - k * proj**2
        slope = 1.0 - 2.0 * k * proj  # d fine / d proj
        rows = np.stack(
            [
                fine,
                np.ones_like(x),
                x,
                x**2,
                slope * ch1,
                -slope * ch2,
                slope * (a * ch1_c - b * ch2_c),
                slope * (a * ch1_r - b * (ch2_c * v * (1.0 - q) + ch2_r * q)),
                -slope * b * (-ch2_c * v * radius + ch2_r * radius),
                -slope * b * ch2_c * radius * (1.0 - q),
                -(proj**2),
            ]
        )
        f = self._samples(rows, sigma)
        eps = np.sqrt(np.finfo(np.float64).eps) * max(1.0, abs(sigma))
        eps = -eps if sigma + eps > upper[9] else eps
        f_sigma = self._samples(fine[None], sigma + eps)[0]
        jac = np.empty((self.n, 11))
        jac[:, :9] = f[1:10].T
        jac[:, 9] = (f_sigma - f[0]) / eps
        jac[:, 10] = f[10]
        return jac


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


def fit_tube_profile(
    t: np.ndarray,
    y: np.ndarray,
    lo: float,
    hi: float,
    pad: float,
    step: float,
    *,
    start: np.ndarray | None = None,
) -> tuple[float, float, float] | None:
    """Least-squares tube fit of one mean profile across a shaft.

    Args:
      t: ``[n]`` sample positions across the shaft (pixels), evenly spaced by ``step``.
      y: ``[n]`` mean intensity profile, bone bright (NaN where no sample; up to 20 % filled in).
      lo: position of the mask's edge on the low side.
      hi: position of the mask's edge on the high side.
      pad: extent of the profile beyond the mask's edges (pixels).
      step: sample step (pixels).
      start: the parameter vector of a fit of a nearly identical profile (:func:`fit_tube_params`),
        to start from instead of the guess read off the profile (which must still succeed):
        the same minimum in a few iterations, e.g. for the hypotheses of one segmentation.

    Returns:
      ``(R, r, relative residual)``: the outer and medullary radii (pixels) and the fit's RMS
      residual over the profile's contrast; None when the profile cannot be fitted.
    """
    fit = fit_tube_params(t, y, lo, hi, pad, step, start=start)
    return None if fit is None else fit[:3]


def fit_tube_params(
    t: np.ndarray,
    y: np.ndarray,
    lo: float,
    hi: float,
    pad: float,
    step: float,
    *,
    start: np.ndarray | None = None,
) -> tuple[float, float, float, np.ndarray] | None:
    """:func:`fit_tube_profile` with the fitted parameter vector as a fourth element.

    The vector is ``[p0, p1, p2, a, b, c, R, q, v, sigma, k]`` on the profile's own scale
    (grey levels mapped to [0, 1], positions in ``t``'s pixels), what ``start`` takes.
    """
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
    if start is not None:
        p0 = np.asarray(start, np.float64)
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
    return radius, q * radius, rms / max(contrast, 1e-6), res.x
