"""Cohort sampler: determinism, WHO labels, presets, coupling, geometry, hand-latent AUC."""

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from osteo_jax.config import BONE_NAMES, CohortConfig
from osteo_jax.data.synth.cohort import (
    T_NORMAL,
    T_OSTEOPOROSIS,
    Cohort,
    hand_latent_auc,
    roc_auc,
    sample_cohort,
)

MC2 = BONE_NAMES.index("MC2")


@pytest.fixture(scope="module")
def big():
    return sample_cohort(CohortConfig(n_subjects=5000), seed=11)


def _fields(c: Cohort):
    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}


def test_same_seed_identical_different_seed_different():
    a, b = sample_cohort(seed=3), sample_cohort(seed=3)
    c = sample_cohort(seed=4)
    for name, va in _fields(a).items():
        np.testing.assert_array_equal(va, _fields(b)[name], err_msg=name)
    assert not np.array_equal(a.t_score, c.t_score)
    assert not np.array_equal(a.ci, c.ci)


def test_paper_preset_counts_and_who_cut():
    c = sample_cohort(CohortConfig(preset="paper"), seed=0)
    assert len(c) == 192
    assert int(c.label.sum()) == 59
    assert c.label.dtype == np.int64 and c.t_score.dtype == np.float64
    np.testing.assert_array_equal(c.label, (c.t_score <= T_OSTEOPOROSIS).astype(int))
    expected_who = np.where(c.t_score <= T_OSTEOPOROSIS, 2, np.where(c.t_score < T_NORMAL, 1, 0))
    np.testing.assert_array_equal(c.who, expected_who)
    # The paper's mix: mostly women, ages mostly 40-79.
    assert 0.8 < np.mean(c.sex == "F") < 0.95
    assert np.mean((c.age >= 40) & (c.age < 80)) > 0.85


def test_screening_preset_and_osteopenia_options():
    c = sample_cohort(CohortConfig(preset="screening", n_subjects=500), seed=1)
    assert np.all(c.sex == "F") and c.age.min() >= 50
    assert np.bincount(c.who, minlength=3).tolist() == [150, 250, 100]
    ex = sample_cohort(
        CohortConfig(preset="screening", n_subjects=500, osteopenia="exclude"), seed=1
    )
    assert not np.any(ex.who == 1)
    assert int(ex.label.sum()) == 100
    with pytest.raises(ValueError, match="osteopenia"):
        sample_cohort(CohortConfig(osteopenia="drop"))
    with pytest.raises(ValueError, match="preset"):
        sample_cohort(CohortConfig(preset="nope"))


def test_2mci_class_means_in_data_physics_ranges(big):
    # DATA_PHYSICS.md: 2MCI about 0.60 +- 0.05 when normal, 0.45 +- 0.05 when osteoporotic.
    for j in range(len(BONE_NAMES)):
        normal = big.ci[big.label == 0, j].mean()
        op = big.ci[big.label == 1, j].mean()
        assert 0.55 <= normal <= 0.65, (BONE_NAMES[j], normal)
        assert 0.40 <= op <= 0.50, (BONE_NAMES[j], op)


@pytest.mark.parametrize("r", [0.3, 0.6, 0.9])
def test_hand_latent_correlates_r_with_t_score(r):
    c = sample_cohort(CohortConfig(n_subjects=5000, r=r), seed=5)
    assert abs(np.corrcoef(c.hand_latent, c.t_score)[0, 1] - r) < 0.05
    for j in range(len(BONE_NAMES)):
        assert np.corrcoef(c.ci[:, j], c.hand_latent)[0, 1] > 0.5


def test_geometry_is_consistent(big):
    np.testing.assert_allclose(big.ci, 1 - big.medullary / big.width, atol=1e-12)
    np.testing.assert_allclose(big.wall_radial + big.wall_ulnar, big.width - big.medullary)
    # MC2's radial wall is 10-12 % thicker than its ulnar wall; other bones are symmetric.
    ratio = big.wall_radial / big.wall_ulnar
    assert np.all((ratio[:, MC2] >= 1.10) & (ratio[:, MC2] <= 1.12))
    np.testing.assert_allclose(np.delete(ratio, MC2, axis=1), 1.0)
    # Endosteal thinning keeps W and widens M; the narrow-W mode keeps M and narrows W.
    thin = big.ci[:, MC2] < 0.5
    endo, narrow = thin & ~big.narrow_w, thin & big.narrow_w
    w_norm = big.width[:, MC2] / big.hand_scale
    m_norm = big.medullary[:, MC2] / big.hand_scale
    assert abs(np.corrcoef(big.ci[endo, MC2], w_norm[endo])[0, 1]) < 0.1
    assert np.corrcoef(big.ci[endo, MC2], m_norm[endo])[0, 1] < -0.5
    assert abs(np.corrcoef(big.ci[narrow, MC2], m_norm[narrow])[0, 1]) < 0.15
    assert np.corrcoef(big.ci[narrow, MC2], w_norm[narrow])[0, 1] > 0.5
    assert 0.2 < big.narrow_w.mean() < 0.3
    # Porosity 3-15 %, rising with age and with weak bone; BV/TV 0.10-0.20, falling with age.
    assert big.porosity.min() >= 0.03 and big.porosity.max() <= 0.15
    assert np.corrcoef(big.porosity[:, MC2], big.age)[0, 1] > 0.2
    assert np.corrcoef(big.porosity[:, MC2], big.hand_latent)[0, 1] < -0.2
    assert 0.10 <= np.median(big.bvtv) <= 0.20
    assert np.corrcoef(big.bvtv[:, MC2], big.age)[0, 1] < -0.2


def test_roc_auc_matches_sklearn(rng):
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = rng.integers(0, 2, 300)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    with pytest.raises(ValueError):
        roc_auc(np.zeros(3), np.zeros(3))


@pytest.mark.parametrize("r, lo, hi", [(0.6, 0.77, 0.83), (0.9, 0.93, 0.97)])
def test_hand_latent_auc_matches_the_single_feature_table(r, lo, hi):
    # DATA_PHYSICS.md: one ideal hand feature at 20 % prevalence: AUC 0.80 at r = 0.6, 0.95 at 0.9.
    for preset in ("screening", "paper"):
        cfg = CohortConfig(preset=preset, n_subjects=5000, prevalence=0.2, r=r)
        c = sample_cohort(cfg, seed=2)
        assert c.prevalence == pytest.approx(0.2)
        auc = hand_latent_auc(c)
        assert lo <= auc <= hi, (preset, auc)
        assert auc == pytest.approx(roc_auc_score(c.label, -c.hand_latent), abs=1e-12)
