"""Bayes ceilings of the synthetic cohort against brute force, calibration and fitted models."""

import dataclasses

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from osteo_jax.config import CohortConfig
from osteo_jax.data.synth.ceiling import (
    CEILING_KEYS,
    ceilings,
    read_ceilings,
    read_posteriors,
    write_ceilings,
)
from osteo_jax.data.synth.cohort import hand_latent_auc, roc_auc, sample_cohort
from osteo_jax.data.synth.posterior import _Model, posteriors

N = 40_000


def _big(cfg: CohortConfig, seed: int = 7):
    cfg = dataclasses.replace(cfg, n_subjects=N)
    cohort = sample_cohort(cfg, seed=seed)
    return cohort, cfg, posteriors(cohort, cfg)


@pytest.fixture(scope="module")
def paper():
    return _big(CohortConfig())


@pytest.fixture(scope="module")
def screening():
    return _big(CohortConfig(preset="screening", r=0.9))


def _image_features(c):
    """Every generated quantity that changes pixels, one column each."""
    cols = {"hand_scale": c.hand_scale}
    for name in ("ci", "porosity", "bvtv", "width", "medullary", "length"):
        arr = getattr(c, name)
        for b in range(arr.shape[1]):
            cols[f"{name}{b}"] = arr[:, b]
    return cols


def test_posteriors_are_probabilities(paper):
    cohort, _, post = paper
    for k in ("image", "clinical", "image_clinical"):
        p = post[k]
        assert p.shape == (N,) and p.dtype == np.float64
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()


@pytest.mark.parametrize("which", ["paper", "screening"])
@pytest.mark.parametrize("kind", ["image", "clinical", "image_clinical"])
def test_posteriors_are_calibrated(which, kind, request):
    """The exact posterior is calibrated: in each decile the label rate equals the mean p."""
    cohort, _, post = request.getfixturevalue(which)
    p, y = post[kind], cohort.label
    assert abs(p.mean() - y.mean()) < 3.5 * np.sqrt(y.mean() * (1 - y.mean()) / N) + 1e-3
    edges = np.quantile(p, np.linspace(0, 1, 11))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for b in range(10):
        sel = idx == b
        if sel.sum() < 200:
            continue
        rate, mean = y[sel].mean(), p[sel].mean()
        se = np.sqrt(max(mean * (1 - mean), 1e-4) / sel.sum())
        assert abs(rate - mean) < 4 * se + 0.005, (kind, b, rate, mean)


@pytest.mark.parametrize("which", ["paper", "screening"])
def test_image_ceiling_beats_every_single_feature_and_the_hand_latent(which, request):
    cohort, cfg, post = request.getfixturevalue(which)
    ceiling = roc_auc(post["image"], cohort.label)
    assert ceiling >= hand_latent_auc(cohort)
    for name, x in _image_features(cohort).items():
        auc = roc_auc(x, cohort.label)
        assert ceiling >= max(auc, 1 - auc), name
    # And the image + clinical ceiling is at least the image and the clinical one.
    assert roc_auc(post["image_clinical"], cohort.label) >= ceiling - 0.002
    assert roc_auc(post["image_clinical"], cohort.label) >= roc_auc(post["clinical"], cohort.label)


def test_image_ceiling_beats_a_logistic_regression_on_the_same_quantities(paper):
    """A model fitted on half the cohort cannot beat the exact posterior on the other half."""
    cohort, _, post = paper
    x = np.column_stack(list(_image_features(cohort).values()))
    y = cohort.label
    half = N // 2
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[:half], y[:half])
    fitted = roc_auc(model.predict_proba(x[half:])[:, 1], y[half:])
    exact = roc_auc(post["image"][half:], y[half:])
    # Monte-Carlo error of an AUC difference on 20,000 paired subjects is ~0.002.
    assert exact >= fitted - 0.003
    assert fitted > 0.8  # the regression found the signal (not a vacuous comparison)


def test_clinical_ceiling_equals_a_brute_force_estimate():
    """Label rate per (2-year age bin, sex) cell as the score: the same AUC within 0.01."""
    cfg = CohortConfig(n_subjects=120_000)
    cohort = sample_cohort(cfg, seed=11)
    model = _Model(cfg, cohort.t_score.mean(), cohort.t_score.std())
    exact = model.clinical(cohort.age, cohort.sex == "F")
    cell = np.floor(cohort.age / 2).astype(int) * 2 + (cohort.sex == "M")
    _, inv = np.unique(cell, return_inverse=True)
    rate = np.bincount(inv, weights=cohort.label) / np.bincount(inv)
    brute = roc_auc(rate[inv], cohort.label)
    assert abs(roc_auc(exact, cohort.label) - brute) < 0.01
    # Cell by cell, the exact posterior matches the observed rate where cells are large.
    counts = np.bincount(inv)
    mean_exact = np.bincount(inv, weights=exact) / counts
    big = counts > 2000
    se = np.sqrt(rate * (1 - rate) / counts)
    assert np.all(np.abs(mean_exact - rate)[big] < 4 * se[big] + 0.01)


def test_at_r_zero_the_image_ceiling_is_what_age_and_sex_leak():
    """With no coupling the bone latents say nothing: image + clinical equals clinical."""
    cohort, cfg, post = _big(CohortConfig(r=0.0), seed=3)
    # Equal up to the T grid's quadrature error (closed form vs grid).
    np.testing.assert_allclose(post["image_clinical"], post["clinical"], atol=2e-4)
    image = roc_auc(post["image"], cohort.label)
    clinical = roc_auc(post["clinical"], cohort.label)
    assert 0.75 < image <= clinical + 0.002  # far above 0.5: the image shows age and sex
    assert abs(hand_latent_auc(cohort) - 0.5) < 0.02


def _brute_log_lik_t(model, ci_row, r, rho):
    """log p(cortical indices | T) by dense quadrature over h (no Gaussian algebra)."""
    lo, hi = model.cfg.ci_range
    hb = (ci_row - model.cfg.ci_mean) / model.cfg.ci_slope
    h = np.linspace(-8, 8, 4001)
    s = np.sqrt(1 - rho**2)
    log_bones = np.zeros_like(h)
    for b, v in enumerate(ci_row):
        if v >= hi:
            log_bones += stats.norm.logsf(hb[b], loc=rho * h, scale=s)
        elif v <= lo:
            log_bones += stats.norm.logcdf(hb[b], loc=rho * h, scale=s)
        else:
            log_bones += stats.norm.logpdf(hb[b], loc=rho * h, scale=s)
    z = (model.ts - model.t_mean) / model.t_sd
    prior = stats.norm.logpdf(h[None, :], loc=r * z[:, None], scale=np.sqrt(1 - r**2))
    joint = prior + log_bones[None, :]
    top = joint.max()
    return np.log(np.trapezoid(np.exp(joint - top), h, axis=1)) + top


@pytest.mark.parametrize("r", [0.3, 0.6, 0.9])
def test_bone_likelihood_matches_quadrature_with_and_without_clipping(r):
    cfg = CohortConfig(r=r)
    model = _Model(cfg, t_mean=-1.2, t_sd=1.3)
    rows = np.array(
        [
            [0.50, 0.62, 0.55, 0.58, 0.47, 0.60, 0.52],  # nothing clipped
            [0.80, 0.78, 0.80, 0.74, 0.72, 0.79, 0.80],  # three clipped high
            [0.25, 0.30, 0.33, 0.25, 0.41, 0.36, 0.30],  # two clipped low
        ]
    )
    got = model.log_lik_t(rows)
    for i, row in enumerate(rows):
        want = _brute_log_lik_t(model, row, r, cfg.bone_coupling)
        # Where the likelihood matters (within e^-12 of its peak), equal up to a constant.
        keep = want > want.max() - 12
        diff = (got[i] - want)[keep]
        assert np.ptp(diff) < 2e-3, (i, np.ptp(diff))


def test_age_likelihood_matches_direct_sum_including_clips():
    cfg = CohortConfig()
    model = _Model(cfg, t_mean=-1.2, t_sd=1.3)
    from osteo_jax.data.synth import cohort as c

    ci = np.array([[0.5, 0.6, 0.55, 0.8, 0.47, 0.6, 0.52]])  # MC2 clipped: left out
    porosity = np.array([[0.03, 0.06, 0.07, 0.02, 0.09, 0.15, 0.05]])
    bvtv = np.array([[0.15, 0.14, 0.16, 0.13, 0.08, 0.12, 0.22]])
    got = model.log_lik_age(ci, porosity, bvtv)[0]
    hb = (ci[0] - cfg.ci_mean) / cfg.ci_slope
    want = np.zeros_like(model.ages)
    for b in range(7):
        if b == 3:
            continue
        for value, mean_fn, sd, (lo, hi) in (
            (porosity[0, b], c.porosity_mean, c.POROSITY_SD, c.POROSITY_RANGE),
            (bvtv[0, b], c.bvtv_mean, c.BVTV_SD, c.BVTV_RANGE),
        ):
            mean = mean_fn(model.ages, hb[b])
            if value <= lo:
                want += stats.norm.logcdf(lo, loc=mean, scale=sd)
            elif value >= hi:
                want += stats.norm.logsf(hi, loc=mean, scale=sd)
            else:
                want += stats.norm.logpdf(value, loc=mean, scale=sd)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-6)


def test_hand_scale_reveals_sex_outside_the_overlap():
    model = _Model(CohortConfig(), t_mean=-1.2, t_sd=1.3)
    ll = model.log_lik_sex(np.array([0.91, 1.0, 1.15]))
    assert np.isfinite(ll[0, 0]) and ll[0, 1] == -np.inf  # only a woman's hand is that small
    assert np.isfinite(ll[1]).all()
    assert ll[2, 0] == -np.inf and np.isfinite(ll[2, 1])


def test_osteopenia_excluded_cohort_is_calibrated():
    cohort, _, post = _big(CohortConfig(osteopenia="exclude"), seed=5)
    assert abs(post["image"].mean() - cohort.label.mean()) < 0.01
    assert roc_auc(post["image"], cohort.label) > hand_latent_auc(cohort)


def test_write_and_read_ceilings(tmp_path):
    cfg = CohortConfig(n_subjects=300)
    cohort = sample_cohort(cfg, seed=2)
    record = write_ceilings(tmp_path, cohort, cfg)
    assert set(CEILING_KEYS) <= set(record) and set(CEILING_KEYS) <= set(record["population"])
    assert record["population"]["n_subjects"] >= 200_000
    assert read_ceilings(tmp_path) == record
    post = read_posteriors(tmp_path)
    direct = ceilings(cohort, cfg)
    ids = cohort.subject_id.tolist()
    p = np.array([post["image"][s] for s in ids])
    assert abs(roc_auc(p, cohort.label) - direct["image_ceiling_auc"]) < 1e-4
    assert read_ceilings(tmp_path / "nothing") is None


def test_roc_auc_refuses_nan():
    with pytest.raises(ValueError, match="non-finite"):
        roc_auc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
