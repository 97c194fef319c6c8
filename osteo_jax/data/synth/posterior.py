"""The exact Bayes posterior of the label given what a synthetic radiograph shows.

The generator (:func:`osteo_jax.data.synth.cohort.sample_cohort`) draws, per subject,

    age a ~ preset's age bins (uniform within a bin),  sex s ~ Bernoulli(female fraction),
    T | a, s ~ N(mu(a, s), 1)                           (latent DXA T-score; label = T <= -2.5),
    the cohort keeps candidates by WHO-category quota  (a reweighting w_k of category k),
    h | T ~ N(r z(T), 1 - r^2),  z(T) = (T - mean T) / sd T    (hand bone-health latent),
    h_b | h ~ N(rho h, 1 - rho^2), b = 1..7                 (per-bone latents),
    ci_b = clip(ci_mean + ci_slope h_b)                     (cortical index, hence W and M),
    porosity_b ~ clip(N(porosity_mean(a, h_b), 0.008^2)),  bvtv_b ~ clip(N(bvtv_mean(a, h_b), ...)),
    hand_scale ~ U(0.9, 1.1) x (1.08 if male),
    and, independent of everything above, the thinning mode, nominal widths and lengths up to
    hand_scale, rotation, finger spread, translation, laterality, annotators and detector noise.

Quantities that change pixels and carry label information, and so enter the image posterior:

* ``ci_b`` of the 7 bones: the outer and medullary widths W, M of every shaft (and the phalanx
  walls, which use the metacarpals' mean ci) are drawn from it. Where ``ci_b`` is not clipped it
  gives ``h_b`` exactly; a clipped one only says that ``h_b`` lies beyond the clip point.
* ``porosity_b`` and ``bvtv_b``: they scale the attenuation of cortex and trabecular bone. Given
  ``h_b`` they measure age (porosity rises 0.0011 a year after 40, BV/TV falls 0.27 x 0.18 over
  40-85, each with noise SD 0.008: about 7 years per measurement, ~2 years from all 14).
* ``hand_scale``: every bone, the soft tissue and the layout scale with it; men's hands are
  1.08 x larger, so a scale above 1.1 (or below 0.972) reveals the sex.

The thinning mode changes pixels but is independent of the label once ``ci`` is known; the
nominal widths and lengths carry nothing beyond ``hand_scale``. So the posterior of the label
given the image's latent quantities is

    P(y = 1 | x) = sum_s int da p(a) p(s) L_age(a) L_sex(s) int_{T <= -2.5} w phi(T - mu) L_T dT
                   / (the same over all T),

with ``L_T(T)`` the likelihood of the bone latents given T (closed form: the unclipped bones'
mean is Gaussian in T; clipped bones add normal-CDF factors, integrated over h by Gauss-Hermite),
``L_age(a)`` that of porosity and BV/TV of the unclipped bones given age (censored normals at the
clips), ``L_sex`` the hand-scale density. Age and T are integrated on grids (0.25 years, 0.05 T
units; the likelihoods are at least ~10 grid steps wide). One simplification, which can only
lower the ceiling and by a negligible amount: a bone whose ``ci`` is clipped (about 1.5 % of
bones) contributes its censored ci but not its porosity and BV/TV, whose means depend on the
unobserved ``h_b``.

:mod:`osteo_jax.data.synth.ceiling` turns these posteriors into the Bayes ceilings (AUCs).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from osteo_jax.config import CohortConfig
from osteo_jax.data.synth import cohort as _c

__all__ = ["posteriors"]

_AGE_STEP = 0.25
_T_STEP = 0.05
_T_RANGE = (-10.0, 6.5)
_GAUSS_HERMITE = 24
_COARSE_T = 4  # clipped bones: their factor is evaluated on every 4th T (0.2 T units)
_VAR_FLOOR = 1e-12
_CHUNK = 4096


def _log_norm_pdf(x: np.ndarray, mean: np.ndarray, sd: float) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd * np.sqrt(2.0 * np.pi))


class _Model:
    """The generator's prior over (age, sex, T) for one cohort config, on grids."""

    def __init__(self, cfg: CohortConfig, t_mean: float, t_sd: float):
        if cfg.preset not in _c._PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {_c.PRESETS}")
        preset = _c._PRESETS[cfg.preset]
        self.cfg = cfg
        self.t_mean, self.t_sd = float(t_mean), float(t_sd)
        bins = np.asarray(preset["age_bins"], np.float64)
        weights = np.asarray(preset["age_weights"], np.float64)
        weights = weights / weights.sum()
        lo, hi = bins.min(), bins.max()
        self.ages = np.arange(lo + _AGE_STEP / 2, hi, _AGE_STEP)
        density = np.zeros_like(self.ages)
        for (b0, b1), wb in zip(bins, weights, strict=True):
            density += np.where((self.ages >= b0) & (self.ages < b1), wb / (b1 - b0), 0.0)
        self.age_prior = density * _AGE_STEP  # [n_a], sums to 1
        female = preset["female_fraction"]
        self.sex_prior = np.array([female, 1.0 - female])  # F, M
        self.ts = np.arange(_T_RANGE[0] + _T_STEP / 2, _T_RANGE[1], _T_STEP)
        self.t_cat = _c.who_category(self.ts)
        self.category_weight = self._category_weights(preset)  # [3]: w_k per WHO category
        # prior[s, a, t] = p(a) p(s) phi(t - mu(a, s)) w(cat t) dt
        mu = np.stack(
            [_c.t_score_mean(self.ages, np.full_like(self.ages, f, bool)) for f in (1, 0)]
        )
        dens = np.exp(_log_norm_pdf(self.ts[None, None, :], mu[:, :, None], 1.0)) * _T_STEP
        self.prior = (
            self.sex_prior[:, None, None]
            * self.age_prior[None, :, None]
            * dens
            * self.category_weight[self.t_cat][None, None, :]
        )

    def _category_weights(self, preset: dict) -> np.ndarray:
        """Quota sampling as a reweighting: w_k = cohort fraction / population fraction of k."""
        fractions = _c._category_fractions(self.cfg, preset)
        pop = np.zeros(3)
        for f, sex_p in ((True, self.sex_prior[0]), (False, self.sex_prior[1])):
            mu = _c.t_score_mean(self.ages, np.full_like(self.ages, f, bool))
            p_op = special.ndtr(_c.T_OSTEOPOROSIS - mu)
            p_pen = special.ndtr(_c.T_NORMAL - mu) - p_op
            pop += sex_p * np.array(
                [(self.age_prior * p).sum() for p in (1.0 - p_op - p_pen, p_pen, p_op)]
            )
        w = np.zeros(3)
        for key, frac in fractions.items():
            cats = [0, 1] if key == -1 else [key]
            w[cats] = frac / pop[cats].sum()
        return w

    # ------------------------------------------------------------------ likelihood terms

    def _bone_terms(self, ci: np.ndarray):
        """``(h_b, observed-exactly mask, clipped-high mask, clipped-low mask)``, ``[n, 7]``."""
        lo, hi = self.cfg.ci_range
        hb = (ci - self.cfg.ci_mean) / self.cfg.ci_slope
        at_hi, at_lo = ci >= hi, ci <= lo
        return hb, ~(at_hi | at_lo), at_hi, at_lo

    def log_lik_t(self, ci: np.ndarray) -> np.ndarray:
        """``[n, n_t]`` log-likelihood of the bone latents (the cortical indices) given T."""
        r, rho = self.cfg.r, self.cfg.bone_coupling
        v0 = max(1.0 - r**2, 0.0)
        s2 = max(1.0 - rho**2, _VAR_FLOOR)
        hb, exact, at_hi, at_lo = self._bone_terms(ci)
        n_u = exact.sum(axis=1).astype(np.float64)[:, None]  # [n, 1]
        mean_u = np.where(exact, hb, 0.0).sum(axis=1)[:, None] / np.maximum(n_u, 1.0)
        z = (self.ts[None, :] - self.t_mean) / self.t_sd  # [1, n_t]
        # Mean of the exactly observed bone latents given T: N(rho r z, rho^2 v0 + s2 / n_u).
        var = rho**2 * v0 + s2 / np.maximum(n_u, 1.0)
        out = np.where(n_u > 0, _log_norm_pdf(mean_u, rho * r * z, np.sqrt(var)), 0.0)
        rows = np.flatnonzero(~exact.all(axis=1))
        if not len(rows):
            return out
        # Clipped bones: E[prod_b P(h_b beyond its clip | h)] over h | T, exact bones
        # ~ N(m_h, v_h) by Gauss-Hermite, on every 4th T and both ends (the factor is smooth
        # in T: it changes over ~1 T unit) and interpolated in log space.
        coarse = np.unique(np.r_[0 : len(self.ts) : _COARSE_T, len(self.ts) - 1])
        tc = self.ts[coarse]
        x, wq = np.polynomial.hermite_e.hermegauss(_GAUSS_HERMITE)
        log_wq = np.log(wq / wq.sum())
        nu, mu = n_u[rows], mean_u[rows]  # [m, 1]
        den = s2 + nu * rho**2 * v0
        v_h = v0 * s2 / den
        m_h = (s2 * r * z[:, coarse] + nu * rho * v0 * mu) / den  # [m, n_tc]
        h = m_h[:, :, None] + np.sqrt(v_h)[:, :, None] * x  # [m, n_tc, q]
        logp = np.zeros_like(h)
        sign = np.where(at_hi[rows], 1.0, -1.0)  # [m, 7]
        for b in range(hb.shape[1]):
            sel = np.flatnonzero(~exact[rows, b])
            if len(sel):
                arg = sign[sel, b, None, None] * (rho * h[sel] - hb[rows[sel], b, None, None])
                logp[sel] += special.log_ndtr(arg / np.sqrt(s2))
        coarse_ll = special.logsumexp(logp + log_wq, axis=2)  # [m, n_tc]
        for j, i in enumerate(rows):
            out[i] += np.interp(self.ts, tc, coarse_ll[j])
        return out

    def log_lik_age(self, ci, porosity, bvtv) -> np.ndarray:
        """``[n, n_a]`` log-likelihood of porosity and BV/TV (exactly observed bones) given age.

        Inside the clips the Gaussian terms are summed through sufficient statistics over the
        bones (their means are affine in one function of age); values at a clip add a tail mass.
        """
        hb, exact, _, _ = self._bone_terms(ci)
        a = self.ages[None, :]  # [1, n_a]
        out = np.zeros((len(ci), len(self.ages)))
        # porosity_b = f(a) + c_b + noise with f = porosity_mean(a, 0) and c_b = -0.02 h_b;
        # bvtv_b = g(a) k_b + noise with g = bvtv_mean(a, 0) and k_b = 1 + 0.08 h_b.
        f = _c.porosity_mean(a, 0.0)
        g = _c.bvtv_mean(a, 0.0)
        c_b = _c.porosity_mean(40.0, hb) - _c.porosity_mean(40.0, 0.0)
        k_b = _c.bvtv_mean(40.0, hb) / _c.bvtv_mean(40.0, 0.0)
        for value, (lo, hi), sd, affine in (
            (porosity, _c.POROSITY_RANGE, _c.POROSITY_SD, "shift"),
            (bvtv, _c.BVTV_RANGE, _c.BVTV_SD, "scale"),
        ):
            inside = exact & (value > lo) & (value < hi)
            m = inside.sum(axis=1)[:, None].astype(np.float64)
            if affine == "shift":  # sum_b (d_b - f)^2, d_b = value - c_b
                d = np.where(inside, value - c_b, 0.0)
                sq = m * f**2 - 2 * f * d.sum(axis=1)[:, None] + (d**2).sum(axis=1)[:, None]
            else:  # sum_b (value_b - g k_b)^2
                vk = np.where(inside, value * k_b, 0.0).sum(axis=1)[:, None]
                kk = np.where(inside, k_b**2, 0.0).sum(axis=1)[:, None]
                vv = np.where(inside, value**2, 0.0).sum(axis=1)[:, None]
                sq = vv - 2 * g * vk + g**2 * kk
            out += -0.5 * sq / sd**2 - m * np.log(sd * np.sqrt(2 * np.pi))
            for clip_value, side in ((lo, -1.0), (hi, 1.0)):
                i, b = np.nonzero(exact & (value <= lo if side < 0 else value >= hi))
                if len(i):
                    base = f if affine == "shift" else g
                    extra = c_b[i, b, None] if affine == "shift" else None
                    mean = base + extra if extra is not None else base * k_b[i, b, None]
                    tail = special.log_ndtr(side * (mean - clip_value) / sd)  # [k, n_a]
                    np.add.at(out, i, tail)
        return out

    def log_lik_sex(self, hand_scale: np.ndarray) -> np.ndarray:
        """``[n, 2]`` log density of the hand scale for a woman and a man."""
        lo, hi = _c.HAND_SCALE_RANGE
        tol = 1e-9
        out = np.full((len(hand_scale), 2), -np.inf)
        for j, k in enumerate((1.0, _c.MALE_HAND_SCALE)):
            inside = (hand_scale >= lo * k - tol) & (hand_scale <= hi * k + tol)
            out[inside, j] = -np.log((hi - lo) * k)
        return out

    # ------------------------------------------------------------------ posteriors

    def clinical(self, age: np.ndarray, female: np.ndarray) -> np.ndarray:
        """P(label | age, sex), in closed form."""
        mu = _c.t_score_mean(age, female)
        w = self.category_weight
        p_op = special.ndtr(_c.T_OSTEOPOROSIS - mu)
        p_pen = special.ndtr(_c.T_NORMAL - mu) - p_op
        num = w[2] * p_op
        return num / (num + w[1] * p_pen + w[0] * (1.0 - p_op - p_pen))

    def image_clinical(self, age, female, log_t) -> np.ndarray:
        """P(label | bone latents, age, sex) on the T grid."""
        mu = _c.t_score_mean(age, female)[:, None]
        log_w = _log_norm_pdf(self.ts[None, :], mu, 1.0) + log_t
        weight = np.exp(log_w - log_w.max(axis=1, keepdims=True))
        weight = weight * self.category_weight[self.t_cat][None, :]
        return weight[:, self.t_cat == 2].sum(axis=1) / weight.sum(axis=1)

    def image(self, log_t, log_age, log_sex) -> np.ndarray:
        """P(label | every label-bearing quantity the image shows), age and sex integrated."""
        lt = np.exp(log_t - log_t.max(axis=1, keepdims=True))
        la = np.exp(log_age - log_age.max(axis=1, keepdims=True))
        ls = np.exp(log_sex - np.max(log_sex, axis=1, keepdims=True))
        op = self.t_cat == 2
        num = np.zeros(len(lt))
        den = np.zeros(len(lt))
        for s in range(2):
            joint = (la @ self.prior[s]) * lt  # [n, n_t]: int da p L_age(a) phi w dT x L_T
            num += ls[:, s] * joint[:, op].sum(axis=1)
            den += ls[:, s] * joint.sum(axis=1)
        return num / den


def posteriors(cohort: _c.Cohort, cfg: CohortConfig = CohortConfig()) -> dict[str, np.ndarray]:
    """The exact posterior probability of osteoporosis of every subject of a synthetic cohort.

    Args:
      cohort: a cohort drawn by :func:`~osteo_jax.data.synth.cohort.sample_cohort` with ``cfg``.
      cfg: the cohort configuration it was drawn with (preset, r, couplings, quotas).

    Returns:
      ``{"image", "clinical", "image_clinical"}``, each ``[n]`` P(label = 1 | ...) given the
      image's label-bearing latent quantities, given age and sex, and given both (see the
      module docstring for what enters and why).
    """
    if abs(cfg.r - cohort.r) > 1e-12:
        raise ValueError(f"the cohort was drawn with r = {cohort.r}, the config says {cfg.r}")
    rho, r = cfg.bone_coupling, cfg.r
    # Width (in T units) of the bone latents' likelihood of T when all 7 bones are exact.
    width_t = np.sqrt(rho**2 * (1 - r**2) + (1 - rho**2) / 7) * np.std(cohort.t_score)
    if rho * r > 0 and width_t / (rho * r) < 5 * _T_STEP:
        raise ValueError(
            f"r = {r} and bone_coupling = {rho} pin the T-score down to "
            f"{width_t / (rho * r):.3f}, finer than the integration grid ({_T_STEP}); "
            "every ceiling is ~1 there"
        )
    model = _Model(cfg, np.mean(cohort.t_score), np.std(cohort.t_score))
    female = cohort.sex == "F"
    out = {"image": [], "clinical": [], "image_clinical": []}
    for start in range(0, len(cohort), _CHUNK):
        sl = slice(start, start + _CHUNK)
        log_t = model.log_lik_t(cohort.ci[sl])
        log_age = model.log_lik_age(cohort.ci[sl], cohort.porosity[sl], cohort.bvtv[sl])
        log_sex = model.log_lik_sex(cohort.hand_scale[sl])
        out["image"].append(model.image(log_t, log_age, log_sex))
        out["clinical"].append(model.clinical(cohort.age[sl], female[sl]))
        out["image_clinical"].append(model.image_clinical(cohort.age[sl], female[sl], log_t))
    return {k: np.concatenate(v) for k, v in out.items()}
