"""Synthetic cohort: subjects, latent T-scores, WHO labels, hand-level bone health, bone geometry.

This is the feature half of the generator (no pixels). Everything a radiologist could measure on
the image (cortical thinning, porosity, trabecular loss) is derived from one hand-level
bone-health latent ``h`` that correlates ``r`` with the latent DXA T-score; the osteoporosis
label is the WHO cut on that T-score, never painted on the image. Porosity and trabecular BV/TV
also follow age, and hand size follows sex, so the radiograph shows more than ``h``: the Bayes
ceilings an image classifier is read against are in :mod:`osteo_jax.data.synth.ceiling`.

Numbers follow ``DATA_PHYSICS.md``; see :mod:`osteo_jax.config` for every default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from osteo_jax.config import BONE_NAMES, WHO_CATEGORIES, CohortConfig

# WHO cuts on the T-score: normal T >= -1, osteopenia -2.5 < T < -1, osteoporosis T <= -2.5.
T_NORMAL = -1.0
T_OSTEOPOROSIS = -2.5

# Nominal bone dimensions for a woman of average hand size, in bone order radius, ulna, MC1-MC5:
# length (visible part for radius / ulna) and mid-shaft outer width W, in mm. MC2 is 7-9 mm wide
# and 60-70 mm long, MC4 ~10 % narrower than MC3, MC1 and MC5 shorter and stouter.
NOMINAL_LENGTH_MM = np.array([150.0, 148.0, 44.0, 66.0, 63.0, 56.0, 52.0])
NOMINAL_WIDTH_MM = np.array([15.0, 10.5, 9.0, 8.0, 7.8, 7.0, 7.4])
# Ratio of the radial to the ulnar cortical wall at mid-shaft: MC2's radial wall is 10-12 %
# thicker; the other bones are symmetric.
WALL_RATIO = np.array([1.0, 1.0, 1.0, 1.11, 1.0, 1.0, 1.0])

# Hand size: uniform around the nominal hand, men's hands larger by a fixed factor.
HAND_SCALE_RANGE = (0.9, 1.1)
MALE_HAND_SCALE = 1.08
# Per-bone noise (SD) and physical clips of cortical porosity and trabecular BV/TV around their
# means (porosity_mean, bvtv_mean). These are what let the radiograph show age.
POROSITY_SD = 0.008
POROSITY_RANGE = (0.03, 0.15)
BVTV_SD = 0.008
BVTV_RANGE = (0.08, 0.22)


def porosity_mean(age: np.ndarray, bone_latent: np.ndarray) -> np.ndarray:
    """Mean cortical porosity (3-15 %): rises with age after 40 and with low bone health."""
    return 0.045 + 0.0011 * np.maximum(age - 40.0, 0.0) - 0.02 * bone_latent


def bvtv_mean(age: np.ndarray, bone_latent: np.ndarray) -> np.ndarray:
    """Mean trabecular BV/TV (0.10-0.20 in the metaphyses), falling up to 27 % from 40 to 85."""
    age_loss = 0.27 * np.clip((age - 40.0) / 45.0, 0.0, 1.0)
    return 0.18 * (1.0 - age_loss) * (1.0 + 0.08 * bone_latent)


_PRESETS: Mapping[str, dict] = {
    # Hospital cohort of the paper: 192 subjects, 59 osteoporotic, 169 F / 23 M, ages mostly
    # 40-79 with a peak at 50-59.
    "paper": dict(
        n=192,
        prevalence=59 / 192,
        osteopenia_fraction=None,
        female_fraction=169 / 192,
        age_bins=((20, 40), (40, 50), (50, 60), (60, 70), (70, 80), (80, 90)),
        age_weights=(0.04, 0.17, 0.34, 0.26, 0.16, 0.03),
    ),
    # Population screening of women aged 50+: 20 % osteoporosis, 50 % osteopenia.
    "screening": dict(
        n=1000,
        prevalence=0.20,
        osteopenia_fraction=0.50,
        female_fraction=1.0,
        age_bins=((50, 60), (60, 70), (70, 80), (80, 90)),
        age_weights=(0.35, 0.33, 0.22, 0.10),
    ),
}

PRESETS: tuple[str, ...] = tuple(_PRESETS)


@dataclasses.dataclass(frozen=True)
class Cohort:
    """Per-subject truth of a synthetic cohort, as arrays with a leading subject axis ``n``.

    Bone arrays have shape ``[n, 7]`` in the order of ``config.BONE_NAMES`` (radius, ulna,
    MC1-MC5); lengths are in mm.

    Attributes:
      subject_id: ``[n]`` ids ``S0000``, ``S0001``, ...
      age: ``[n]`` years.
      sex: ``[n]`` ``"F"`` or ``"M"``.
      t_score: ``[n]`` latent DXA T-score.
      who: ``[n]`` index into ``config.WHO_CATEGORIES``.
      label: ``[n]`` 1 = osteoporosis (T <= -2.5), 0 = not.
      hand_latent: ``[n]`` hand-level bone-health latent (SD units, low = weak bone).
      bone_latent: ``[n, 7]`` per-bone latents.
      ci: ``[n, 7]`` cortical index (W - M) / W at mid-shaft (for MC2 this is the 2MCI).
      width: ``[n, 7]`` outer width W.
      medullary: ``[n, 7]`` medullary width M.
      wall_radial: ``[n, 7]`` radial-side cortical wall at mid-shaft.
      wall_ulnar: ``[n, 7]`` ulnar-side cortical wall at mid-shaft.
      porosity: ``[n, 7]`` cortical porosity (volume fraction).
      bvtv: ``[n, 7]`` trabecular bone volume fraction in the metaphyses.
      length: ``[n, 7]`` bone length (visible length for radius and ulna).
      narrow_w: ``[n]`` True where thinning narrows W (normal M) instead of widening M.
      hand_scale: ``[n]`` overall hand size factor.
      rotation_deg: ``[n]`` in-plane rotation of the hand.
      spread: ``[n]`` finger-spread factor (1 = nominal fan).
      finger_jitter_deg: ``[n, 5]`` extra angle per ray (thumb first).
      shift_mm: ``[n, 2]`` translation (x to the right, y towards the fingers).
      laterality: ``[n]`` ``"L"`` or ``"R"``.
      r: the coupling the cohort was drawn with.
    """

    subject_id: np.ndarray
    age: np.ndarray
    sex: np.ndarray
    t_score: np.ndarray
    who: np.ndarray
    label: np.ndarray
    hand_latent: np.ndarray
    bone_latent: np.ndarray
    ci: np.ndarray
    width: np.ndarray
    medullary: np.ndarray
    wall_radial: np.ndarray
    wall_ulnar: np.ndarray
    porosity: np.ndarray
    bvtv: np.ndarray
    length: np.ndarray
    narrow_w: np.ndarray
    hand_scale: np.ndarray
    rotation_deg: np.ndarray
    spread: np.ndarray
    finger_jitter_deg: np.ndarray
    shift_mm: np.ndarray
    laterality: np.ndarray
    r: float

    def __len__(self) -> int:
        return int(self.age.shape[0])

    @property
    def cortical_thickness(self) -> np.ndarray:
        """``[n, 7]`` mean cortical wall thickness (W - M) / 2 in mm."""
        return (self.width - self.medullary) / 2.0

    @property
    def prevalence(self) -> float:
        """Fraction of osteoporotic subjects."""
        return float(np.mean(self.label))


def t_score_mean(age: np.ndarray, female: np.ndarray) -> np.ndarray:
    """Mean latent T-score for an age and sex (the T-score itself has SD 1 around it).

    Women lose cortical bone at about 0.7-0.9 % a year after 45, i.e. about 0.08 T-score units a
    year; men start about 0.3 SD higher (DXR-BMD ~13 % higher) and lose half as fast from 50.
    With these, women aged 50+ come out near 20 % osteoporotic and 50 % osteopenic.
    """
    woman = 0.0 - 0.08 * np.maximum(age - 45.0, 0.0)
    man = 0.3 - 0.04 * np.maximum(age - 50.0, 0.0)
    return np.where(female, woman, man)


def who_category(t_score: np.ndarray) -> np.ndarray:
    """WHO category index (0 normal, 1 osteopenia, 2 osteoporosis) of T-scores."""
    t = np.asarray(t_score)
    return np.where(t <= T_OSTEOPOROSIS, 2, np.where(t < T_NORMAL, 1, 0)).astype(np.int64)


def _quotas(n: int, fractions: Mapping[int, float]) -> dict[int, int]:
    """Integer counts per category summing to n (largest-remainder rounding)."""
    total = sum(fractions.values())
    raw = {k: n * v / total for k, v in fractions.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    return counts


def _category_fractions(cfg: CohortConfig, preset: dict) -> dict[int, float] | None:
    """Target fraction per WHO category, or None for categories that follow the model."""
    prev = preset["prevalence"] if cfg.prevalence is None else cfg.prevalence
    if not 0.0 < prev < 1.0:
        raise ValueError(f"prevalence must be in (0, 1), got {prev}")
    if cfg.osteopenia == "exclude":
        return {2: prev, 0: 1.0 - prev}
    if cfg.osteopenia != "merge_into_normal":
        raise ValueError(
            f"osteopenia must be 'merge_into_normal' or 'exclude', got {cfg.osteopenia!r}"
        )
    frac = (
        preset["osteopenia_fraction"]
        if cfg.osteopenia_fraction is None
        else cfg.osteopenia_fraction
    )
    if frac is None:
        return {2: prev, -1: 1.0 - prev}  # -1: normal or osteopenia, as the model draws them
    if prev + frac >= 1.0:
        raise ValueError(f"prevalence + osteopenia_fraction must be < 1, got {prev} + {frac}")
    return {2: prev, 1: frac, 0: 1.0 - prev - frac}


def _draw_subjects(
    rng: np.random.Generator, cfg: CohortConfig, preset: dict, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quota sampling: draw (age, sex, T) from the population model until each category is full.

    Candidates are accepted in draw order, so within a category the subjects follow the
    population model exactly and the cohort order stays random.
    """
    quotas = _quotas(n, _category_fractions(cfg, preset))
    bins = np.asarray(preset["age_bins"], dtype=np.float64)
    weights = np.asarray(preset["age_weights"], dtype=np.float64)
    taken = {k: 0 for k in quotas}
    ages, females, ts = [], [], []
    for _ in range(200):
        m = 8 * n + 256
        b = rng.choice(len(bins), size=m, p=weights / weights.sum())
        age = rng.uniform(bins[b, 0], bins[b, 1])
        female = rng.random(m) < preset["female_fraction"]
        t = t_score_mean(age, female) + rng.standard_normal(m)
        cat = who_category(t)
        for i in range(m):
            key = 2 if cat[i] == 2 else (-1 if -1 in quotas else int(cat[i]))
            if key in quotas and taken[key] < quotas[key]:
                taken[key] += 1
                ages.append(age[i])
                females.append(female[i])
                ts.append(t[i])
        if all(taken[k] == quotas[k] for k in quotas):
            return np.array(ages), np.array(females), np.array(ts)
    raise RuntimeError(f"could not fill the category quotas {quotas} (filled {taken})")


def sample_cohort(cfg: CohortConfig = CohortConfig(), seed: int = 0) -> Cohort:
    """Draws the subjects of a synthetic cohort and their true bone features (no rendering).

    Args:
      cfg: cohort configuration (preset, size, coupling ``r``, osteopenia handling).
      seed: the same seed gives the same cohort, bit for bit.

    Returns:
      A :class:`Cohort` with the per-subject truth.
    """
    if cfg.preset not in _PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {PRESETS}")
    if not 0.0 <= cfg.r <= 1.0 or not 0.0 <= cfg.bone_coupling <= 1.0:
        raise ValueError(f"r and bone_coupling must be in [0, 1], got {cfg.r}, {cfg.bone_coupling}")
    preset = _PRESETS[cfg.preset]
    n = preset["n"] if cfg.n_subjects is None else int(cfg.n_subjects)
    if n < 2:
        raise ValueError(f"a cohort needs at least 2 subjects, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x05_7E0]))
    age, female, t = _draw_subjects(rng, cfg, preset, n)

    # Hand-level latent: bivariate normal with the (standardised) T-score, correlation r.
    z = (t - t.mean()) / t.std()
    h = cfg.r * z + np.sqrt(1.0 - cfg.r**2) * rng.standard_normal(n)
    nb = len(BONE_NAMES)
    rho = cfg.bone_coupling
    hb = rho * h[:, None] + np.sqrt(1.0 - rho**2) * rng.standard_normal((n, nb))

    ci = np.clip(cfg.ci_mean + cfg.ci_slope * hb, *cfg.ci_range)
    hand_scale = rng.uniform(*HAND_SCALE_RANGE, n) * np.where(female, 1.0, MALE_HAND_SCALE)
    w_nom = NOMINAL_WIDTH_MM * hand_scale[:, None] * rng.normal(1.0, 0.04, (n, nb))
    length = NOMINAL_LENGTH_MM * hand_scale[:, None] * rng.normal(1.0, 0.03, (n, nb))
    # Osteoporosis thins the cortex from inside (keep W, widen M); about a quarter of subjects
    # instead have a narrower W around a normal M. Both give the nominal bone at ci_reference.
    narrow_w = rng.random(n) < cfg.narrow_w_fraction
    m_nom = w_nom * (1.0 - cfg.ci_reference)
    width = np.where(narrow_w[:, None] & (ci < cfg.ci_reference), m_nom / (1.0 - ci), w_nom)
    medullary = width * (1.0 - ci)
    walls = width - medullary
    wall_radial = walls * WALL_RATIO / (1.0 + WALL_RATIO)
    wall_ulnar = walls - wall_radial

    porosity = np.clip(
        porosity_mean(age[:, None], hb) + rng.normal(0.0, POROSITY_SD, (n, nb)), *POROSITY_RANGE
    )
    bvtv = np.clip(bvtv_mean(age[:, None], hb) + rng.normal(0.0, BVTV_SD, (n, nb)), *BVTV_RANGE)

    return Cohort(
        subject_id=np.array([f"S{i:04d}" for i in range(n)]),
        age=np.round(age, 1),
        sex=np.where(female, "F", "M"),
        t_score=t,
        who=who_category(t),
        label=(t <= T_OSTEOPOROSIS).astype(np.int64),
        hand_latent=h,
        bone_latent=hb,
        ci=ci,
        width=width,
        medullary=medullary,
        wall_radial=wall_radial,
        wall_ulnar=wall_ulnar,
        porosity=porosity,
        bvtv=bvtv,
        length=length,
        narrow_w=narrow_w,
        hand_scale=hand_scale,
        rotation_deg=rng.uniform(-15.0, 15.0, n),
        spread=rng.uniform(0.7, 1.3, n),
        finger_jitter_deg=rng.normal(0.0, 2.0, (n, 5)),
        shift_mm=rng.uniform(-5.0, 5.0, (n, 2)) * np.array([1.0, 0.6]),
        laterality=np.where(rng.random(n) < 0.5, "L", "R"),
        r=float(cfg.r),
    )


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties count one half).

    Args:
      scores: ``[n]`` higher means more likely positive.
      labels: ``[n]`` 0/1.

    Returns:
      The AUC in [0, 1].
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != np.shape(labels) or scores.ndim != 1:
        raise ValueError(
            f"AUC needs equal 1-D scores and labels: {scores.shape}, {np.shape(labels)}"
        )
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(
            f"AUC of non-finite scores: {len(bad)} of {len(scores)} are NaN or infinite "
            f"(first at index {bad[0]})"
        )
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("AUC needs labels 0 or 1")
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative subject")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def hand_latent_auc(cohort: Cohort) -> float:
    """AUC of the hand-level bone-health latent the generator drew, over the cohort.

    Low latent means weak bone, so the score is ``-hand_latent``. This measures the coupling
    ``r``; it is *not* a ceiling for an image classifier, because the image also shows age and
    sex (see :mod:`osteo_jax.data.synth.ceiling` for the Bayes ceilings).
    """
    return roc_auc(-cohort.hand_latent, cohort.label)


def category_names(who: np.ndarray) -> np.ndarray:
    """WHO category names for category indices."""
    return np.asarray(WHO_CATEGORIES)[np.asarray(who)]
