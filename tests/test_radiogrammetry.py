import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from osteo_jax.config import BONE_NAMES, CLASS_NAMES, SynthConfig
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort
from osteo_jax.eval.radiogrammetry.hypotheses import (
    measure_hypotheses,
    measure_prediction,
    weighted_spread,
)
from osteo_jax.eval.radiogrammetry.measure import BoneMeasurement, measure_bone, measure_radiograph

MC2, MC3 = CLASS_NAMES.index("MC2"), CLASS_NAMES.index("MC3")
SPACING = 0.2


def _draw_tube(image, labels, label, *, centre, angle_deg, R, r, length, offset=0.0, sub=4):
    """Adds the projection of a tube (outer radius R, canal r shifted by offset; pixels) to a
    supersampled image and writes its label, both in place; returns nothing."""
    h = labels.shape[0]
    a = np.deg2rad(angle_deg)
    u, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    # Sub-pixel centres of pixel k are k + (j + 0.5) / sub - 0.5.
    g = (np.arange(h * sub) + 0.5) / sub - 0.5
    rr, cc = np.meshgrid(g, g, indexing="ij")
    s = (rr - centre[0]) * u[0] + (cc - centre[1]) * u[1]
    t = (rr - centre[0]) * n[0] + (cc - centre[1]) * n[1]
    inside = np.abs(s) < length / 2
    chord_out = 2 * np.sqrt(np.maximum(R**2 - t**2, 0)) * inside
    chord_in = 2 * np.sqrt(np.maximum(r**2 - (t - offset) ** 2, 0)) * inside
    # Cortex bright, canal darker than cortex (marrow replaces bone): in units of 1 / R.
    image += (chord_out - 0.8 * chord_in) / R
    pix = np.arange(h, dtype=np.float64)
    pr, pc = np.meshgrid(pix, pix, indexing="ij")
    ps = (pr - centre[0]) * u[0] + (pc - centre[1]) * u[1]
    pt = (pr - centre[0]) * n[0] + (pc - centre[1]) * n[1]
    labels[(np.abs(pt) < R) & (np.abs(ps) < length / 2)] = label


def _finish(fine, sub=4, blur=0.7, noise=0.0, seed=0):
    h = fine.shape[0] // sub
    img = fine.reshape(h, sub, h, sub).mean(axis=(1, 3)) + 0.2
    img = ndimage.gaussian_filter(img, blur)
    if noise:
        img = img + np.random.default_rng(seed).normal(0, noise, img.shape)
    return img


def tube(angle_deg=0.0, *, size=128, R=12.0, r=5.0, offset=0.0, noise=0.0, blur=0.7):
    fine = np.zeros((size * 4, size * 4))
    labels = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2
    _draw_tube(
        fine, labels, MC2, centre=(c, c), angle_deg=angle_deg, R=R, r=r, length=90.0, offset=offset
    )
    return _finish(fine, blur=blur, noise=noise), labels


@pytest.mark.parametrize(
    "angle, noise, offset",
    [(0.0, 0.0, 0.0), (90.0, 0.0, 1.0), (33.0, 0.01, 1.5), (-61.0, 0.02, 0.0)],
)
def test_tube_matches_closed_form(angle, noise, offset):
    R, r = 12.0, 5.0
    img, labels = tube(angle, R=R, r=r, offset=offset, noise=noise)
    m = measure_bone(img, labels, "MC2", spacing_mm=SPACING)
    assert isinstance(m, BoneMeasurement)
    assert m.valid and m.reason == "ok" and m.n_blocks >= 5
    for v in (m.width_mm, m.medullary_mm, m.cortical_index):
        assert isinstance(v, float) and np.isfinite(v)
    W, M = 2 * R * SPACING, 2 * r * SPACING
    assert abs(m.width_mm - W) < 0.02 * W
    assert abs(m.medullary_mm - M) < 0.02 * W
    assert abs(m.cortical_index - (W - M) / W) < 0.02
    # The long axis is the tube's, up to sign.
    a = np.deg2rad(angle)
    assert abs(abs(m.axis @ np.array([np.cos(a), np.sin(a)])) - 1) < 1e-3


def test_rotation_invariance_and_scale_free():
    ci = [measure_bone(*tube(a), "MC2", spacing_mm=SPACING).cortical_index for a in (0, 17, 45)]
    assert np.ptp(ci) < 0.01
    # An affine change of display units, and another pixel spacing, leave the CI alone.
    img, labels = tube(17)
    m = measure_bone(3.0 * img + 100.0, labels, "MC2", spacing_mm=0.1)
    assert abs(m.cortical_index - ci[1]) < 1e-3
    assert abs(m.width_mm - 24 * 0.1) < 0.02 * 2.4


def test_missing_bone_is_nan_and_flagged():
    img, labels = tube(0)
    out = measure_radiograph(img, labels, spacing_mm=SPACING, bones=("MC2", "MC3", "radius"))
    assert list(out) == ["MC2", "MC3", "radius"]
    assert out["MC2"].valid
    for b in ("MC3", "radius"):
        assert not out[b].valid and out[b].reason == "missing"
        assert np.isnan(out[b].width_mm) and np.isnan(out[b].cortical_index)
    # A speck below the minimum area is missing too.
    speck = np.zeros_like(labels)
    speck[5:8, 5:8] = MC3
    assert measure_bone(img, speck, "MC3", spacing_mm=SPACING).reason == "missing"


def test_bad_input_raises():
    img, labels = tube(0)
    with pytest.raises(ValueError, match="unknown bone"):
        measure_bone(img, labels, "MC9", spacing_mm=SPACING)
    with pytest.raises(ValueError, match="unknown bone"):
        measure_radiograph(img, labels, spacing_mm=SPACING, bones=("MC2", "femur"))
    with pytest.raises(ValueError, match="shape"):
        measure_bone(img, labels[:-1], "MC2", spacing_mm=SPACING)
    with pytest.raises(ValueError, match="2-D"):
        measure_bone(img[None], labels[None], "MC2", spacing_mm=SPACING)
    with pytest.raises(ValueError, match="integer"):
        measure_bone(img, labels.astype(np.float32), "MC2", spacing_mm=SPACING)
    with pytest.raises(ValueError, match="spacing"):
        measure_bone(img, labels, "MC2", spacing_mm=0.0)
    with pytest.raises(ValueError, match="weights"):
        measure_hypotheses(img, labels[None], np.ones(2), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="weights"):
        weighted_spread(np.ones(2), np.array([1.0, -1.0]))


def test_weighted_spread_hand_computed():
    x, w = np.array([0.4, 0.6, 0.5, np.nan]), np.array([2.0, 1.0, 1.0, 4.0])
    s = weighted_spread(x, w, interval=0.9)
    wn = np.array([0.5, 0.25, 0.25])
    mean = float(wn @ x[:3])
    assert s["n_valid"] == 3 and s["weight_valid"] == pytest.approx(0.5)
    assert s["mean"] == pytest.approx(0.475)
    assert s["sd"] == pytest.approx(np.sqrt(wn @ (x[:3] - mean) ** 2))
    assert (s["min"], s["max"]) == (0.4, 0.6)
    # Cumulative weights over sorted values 0.4, 0.5, 0.6: 0.5, 0.75, 1.
    assert (s["lo"], s["hi"]) == (0.4, 0.6)
    assert weighted_spread(x, w, interval=0.4)["hi"] == 0.5
    same = weighted_spread(np.full(5, 0.55), np.arange(1.0, 6.0))
    assert same["sd"] == 0.0 and same["lo"] == same["hi"] == same["mean"] == pytest.approx(0.55)
    none = weighted_spread(np.full(2, np.nan), np.ones(2))
    assert np.isnan(none["mean"]) and none["n_valid"] == 0


def _two_tubes():
    """Two parallel tubes with different cortical indices; hypothesis k labels tube k as MC2."""
    size = 128
    fine = np.zeros((size * 4, size * 4))
    maps = np.zeros((2, size, size), np.uint8)
    for k, (col, r) in enumerate(((34.0, 4.0), (94.0, 7.0))):
        scratch = np.zeros_like(maps[0])
        _draw_tube(fine, scratch, MC2, centre=(63.5, col), angle_deg=3.0, R=11.0, r=r, length=90.0)
        maps[k] = scratch
    return _finish(fine), maps, np.array([1 - 4 / 11, 1 - 7 / 11])


def test_hypothesis_spread():
    img, maps, true_ci = _two_tubes()
    w = np.array([0.75, 0.25])
    out = measure_hypotheses(img, maps, w, spacing_mm=SPACING, bones=("MC2",))
    ci = out["MC2"]["cortical_index"]
    per = np.array([m.cortical_index for m in out["MC2"]["per_hypothesis"]])
    np.testing.assert_allclose(per, true_ci, atol=0.02)
    # Two-point distribution: mean = w . x, SD = sqrt(w0 w1) |x0 - x1|.
    assert ci["mean"] == pytest.approx(w @ per)
    assert ci["sd"] == pytest.approx(np.sqrt(w[0] * w[1]) * abs(per[0] - per[1]))
    assert ci["sd"] == pytest.approx(np.sqrt(0.75 * 0.25) * abs(true_ci[0] - true_ci[1]), abs=0.01)
    assert (ci["min"], ci["max"]) == (per.min(), per.max())
    # Identical hypotheses: zero spread, mean = the single measurement.
    same = measure_hypotheses(
        img, np.stack([maps[0]] * 3), np.ones(3), spacing_mm=SPACING, bones=("MC2",)
    )["MC2"]
    assert same["cortical_index"]["sd"] == 0.0 and same["width_mm"]["sd"] == 0.0
    assert same["cortical_index"]["mean"] == pytest.approx(per[0])


def test_prediction_at_model_resolution():
    # Probabilities at 32 px (one model pixel = 4 image pixels) still give sub-pixel widths.
    img, labels = tube(20.0, noise=0.01)
    small = labels[2::4, 2::4]
    onehot = np.eye(len(CLASS_NAMES), dtype=np.float32)[small]
    probs = np.stack([onehot, ndimage.uniform_filter(onehot, (3, 3, 1))])
    mean, spread = measure_prediction(
        img, probs, np.array([0.5, 0.5]), spacing_mm=SPACING, bones=("MC2", "MC4")
    )
    assert mean["MC2"].valid and not mean["MC4"].valid
    assert abs(mean["MC2"].cortical_index - (1 - 5 / 12)) < 0.02
    assert spread["MC2"]["cortical_index"]["n_valid"] == 2
    assert spread["MC2"]["cortical_index"]["sd"] < 0.01
    assert np.isnan(spread["MC4"]["cortical_index"]["mean"])


def test_generator_subject_matches_truth():
    cfg = SynthConfig()
    cfg = dataclasses.replace(cfg, physics=dataclasses.replace(cfg.physics, size=512))
    cohort = sample_cohort(cfg.cohort, seed=cfg.seed)
    rg = render_subject(cohort, 1, cfg)
    out = measure_radiograph(
        rg.image, rg.exact, spacing_mm=rg.pixel_spacing_mm, bones=("MC2", "MC3")
    )
    for b in ("MC2", "MC3"):
        j = BONE_NAMES.index(b)
        assert out[b].valid
        assert abs(out[b].cortical_index - cohort.ci[1, j]) < 0.03
        assert abs(out[b].width_mm - cohort.width[1, j]) < 0.04 * cohort.width[1, j]


@pytest.mark.parametrize("flip, with_hand", [(False, True), (True, True), (True, False)])
def test_forearm_site_from_distal_tip(flip, with_hand):
    # A radius entering from the image border with its distal tip at row 20; the site is
    # 24-30 mm (48-60 px at 0.5 mm) proximal of the tip, towards the border.
    size, R, r = 128, 12.0, 6.0
    fine = np.zeros((size * 4, size * 4))
    labels = np.zeros((size, size), np.uint8)
    radius = CLASS_NAMES.index("radius")
    _draw_tube(fine, labels, radius, centre=(90.0, 60.0), angle_deg=0.0, R=R, r=r, length=140.0)
    if with_hand:
        labels[2:14, 54:66] = MC3  # the hand lies beyond the distal tip
    img = _finish(fine)
    if flip:
        img, labels = img[::-1].copy(), labels[::-1].copy()
    m = measure_bone(img, labels, "radius", spacing_mm=0.5)
    assert m.valid, m.reason
    assert abs(m.cortical_index - (1 - r / R)) < 0.02
    tip = size - 1 - 20.0 if flip else 20.0
    assert abs(abs(m.site[0] - tip) - 54.0) < 1.0


def test_forearm_site_outside_image():
    size = 128
    fine = np.zeros((size * 4, size * 4))
    labels = np.zeros((size, size), np.uint8)
    radius = CLASS_NAMES.index("radius")
    _draw_tube(
        fine, labels, radius, centre=(160.0, 60.0), angle_deg=0.0, R=12.0, r=6.0, length=150.0
    )
    m = measure_bone(_finish(fine), labels, "radius", spacing_mm=0.5)
    assert not m.valid and m.reason == "site outside image" and np.isnan(m.cortical_index)


def test_profile_jacobian_matches_central_differences():
    """The analytic Jacobian of the tube profile model against central differences."""
    from osteo_jax.eval.radiogrammetry.profile_fit import _ProfileModel

    t = np.arange(-20.0, 20.01, 0.5)
    model = _ProfileModel(t, 0.5)
    upper = np.array([np.inf] * 5 + [t[-1], 20.0, 0.97, 0.95, 4.0, np.inf])
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = np.array(
            [0.1, 0.05, -0.02, 0.03, 0.02, rng.uniform(-3, 3), rng.uniform(6, 12)]
            + [rng.uniform(0.3, 0.8), rng.uniform(-0.5, 0.5), rng.uniform(0.5, 2.0), 0.1]
        )
        jac = model.jacobian(p, upper)
        num = np.empty_like(jac)
        for i in range(11):
            e = 1e-6 * max(1.0, abs(p[i]))
            step = np.zeros(11)
            step[i] = e
            num[:, i] = (model(p + step) - model(p - step)) / (2 * e)
        np.testing.assert_allclose(jac, num, atol=1e-6 * np.abs(num).max())


@pytest.mark.parametrize("angle, noise", [(0.0, 0.0), (33.0, 0.01)])
def test_start_from_a_nearby_measurement(angle, noise):
    """Seeding each block's fit with a measurement of a slightly different mask reaches the
    same widths as fitting from scratch; a start on another bone's axis is ignored."""
    img, labels = tube(angle, noise=noise)
    cold = measure_bone(img, labels, "MC2", spacing_mm=SPACING)
    grown = ndimage.binary_dilation(labels == MC2, iterations=1)
    other = np.where(grown, MC2, 0).astype(np.uint8)
    seed = measure_bone(img, other, "MC2", spacing_mm=SPACING)
    assert len(seed.block_fits) == seed.n_blocks >= 5
    warm = measure_bone(img, labels, "MC2", spacing_mm=SPACING, start=seed)
    assert warm.n_blocks == cold.n_blocks
    for key in ("width_mm", "medullary_mm", "cortical_index"):
        assert abs(getattr(warm, key) - getattr(cold, key)) < 1e-4
    turned = measure_bone(*tube(angle + 90.0, noise=noise), "MC2", spacing_mm=SPACING)
    again = measure_bone(img, labels, "MC2", spacing_mm=SPACING, start=turned)
    assert again.width_mm == cold.width_mm and again.medullary_mm == cold.medullary_mm
