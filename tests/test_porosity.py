"""Cortical porosity from a Beer-Lambert fit of the shaft profile, on a calibrated detector.

The references are independent of the fit: tubes rendered by the generator's own image
formation (``data.synth.xray``: the spectrum, the detector's blur of counts before the log, the
log amplifier, 12-bit rounding) with a known porosity, and a rendered synthetic subject whose
per-bone porosity the cohort records.
"""

import dataclasses

import numpy as np
import pytest

from osteo_jax.config import BONE_NAMES, CLASS_NAMES, PhysicsConfig, SynthConfig
from osteo_jax.data.synth import xray
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort
from osteo_jax.eval.radiogrammetry.measure import measure_bone, measure_radiograph
from osteo_jax.eval.radiogrammetry.porosity import (
    DetectorCalibration,
    calibration_of_dataset,
    fit_porosity,
    measure_porosity,
)

PHYS = PhysicsConfig()
SPACING = 0.2
MC3 = CLASS_NAMES.index("MC3")


def _meta(physics=PHYS, **kw):
    return {
        "image_format": "png",
        "bits_stored": physics.bits_stored,
        "generator": {"config": {"physics": dataclasses.asdict(physics)}},
    } | kw


CAL = calibration_of_dataset(_meta())


def _tube_image(porosity, outer_mm, inner_mm, *, noise=False, size=96, soft_mm=20.0, seed=0):
    """A vertical shaft (MC3) through soft tissue, rendered by ``xray``; stored values / 4095."""
    sub = 4
    x = ((np.arange(size * sub) + 0.5) / sub - 0.5 - (size - 1) / 2 - 0.3) * SPACING
    outer = 2 * np.sqrt(np.maximum(outer_mm**2 - x**2, 0))
    inner = 2 * np.sqrt(np.maximum(inner_mm**2 - x**2, 0))
    cort = outer - inner
    bone = cort * (1 - porosity)
    soft = soft_mm - outer + porosity * cort
    row = xray.transmission(bone[None], soft[None], inner[None], PHYS)[0]
    row = row.reshape(size, sub).mean(axis=1)  # the detector integrates over its pixel
    phys = dataclasses.replace(PHYS, noise=noise)
    image = xray.expose(np.tile(row, (size, 1)), phys, np.random.default_rng(seed))
    labels = np.zeros((size, size), np.uint8)
    cols = np.abs(np.arange(size) - (size - 1) / 2 - 0.3) * SPACING < outer_mm
    labels[8:-8, cols] = MC3
    return image / (2**PHYS.bits_stored - 1), labels


def _porosity(image, labels):
    m = measure_bone(image, labels, "MC3", spacing_mm=SPACING)
    assert m.valid
    return measure_porosity(CAL.nepers(image), labels, m, CAL, spacing_mm=SPACING)


@pytest.mark.parametrize("outer_mm, inner_mm", [(4.0, 1.6), (3.5, 2.4)])
def test_porosity_of_a_rendered_tube(outer_mm, inner_mm):
    """Thick and thin cortices, low and high porosity: the fit reads the porosity, not the
    thickness (beam hardening makes a thick cortex look less dense per mm)."""
    for p in (0.04, 0.12):
        got = _porosity(*_tube_image(p, outer_mm, inner_mm))
        assert got == pytest.approx(p, abs=0.004)


def test_porosity_with_quantum_noise():
    got = [_porosity(*_tube_image(0.08, 4.0, 1.6, noise=True, seed=s)) for s in range(2)]
    assert np.all(np.abs(np.array(got) - 0.08) < 0.01)


def test_porosity_of_a_generated_subject():
    """A whole synthetic hand at 0.4 mm: its textured pores, trabeculae, overlapping soft tissue
    and the exact label map; the porosity the cohort drew for each bone, within 0.025 (the
    per-bone error on 30 subjects of the 2,000 cohort had SD ~0.009)."""
    cfg = SynthConfig()
    cfg = dataclasses.replace(cfg, physics=dataclasses.replace(cfg.physics, size=512))
    cohort = sample_cohort(cfg.cohort, seed=cfg.seed)
    rg = render_subject(cohort, 1, cfg)
    cal = calibration_of_dataset(_meta(cfg.physics))
    image = rg.image / (2**cfg.physics.bits_stored - 1)
    bones = ("MC2", "MC3", "radius")
    out = measure_radiograph(image, rg.exact, spacing_mm=rg.pixel_spacing_mm, bones=bones)
    nepers = cal.nepers(image)
    for b in bones:
        got = measure_porosity(nepers, rg.exact, out[b], cal, spacing_mm=rg.pixel_spacing_mm)
        assert got == pytest.approx(cohort.porosity[1, BONE_NAMES.index(b)], abs=0.025)


def test_fit_recovers_the_model_it_fits():
    """The noiseless model profile of known parameters is fitted back from a start 10 % off."""
    t = np.arange(-7.0, 7.0, 0.1)
    from osteo_jax.eval.radiogrammetry.porosity import _ShaftModel

    truth = np.array([18.0, 0.1, 0.01, 0.09, 0.03, 0.2, 4.0, 1.7, 0.1, 0.15])
    y = _ShaftModel(t, CAL)(truth)
    p, rms = fit_porosity(
        t, y, CAL, centre_mm=0.0, outer_mm=4.4, inner_mm=1.5, offset_mm=0.0, sigma_mm=0.2
    )
    assert p == pytest.approx(0.09, abs=1e-4) and rms < 1e-4


def test_calibration_matches_the_detector():
    stored = np.array([[0, 200, 1000, 4095]], np.uint16)
    np.testing.assert_allclose(CAL.nepers(stored / 4095.0), xray.to_attenuation(stored, PHYS))
    bone, soft, fat = np.array([3.0]), np.array([15.0]), np.array([1.0])
    np.testing.assert_allclose(
        CAL.transmission(bone, soft, fat), xray.transmission(bone, soft, fat, PHYS), rtol=1e-6
    )


def test_no_calibration_no_porosity(tmp_path):
    assert calibration_of_dataset({"image_format": "png", "bits_stored": 12}) is None
    assert calibration_of_dataset(_meta(image_format="dicom")) is None
    assert calibration_of_dataset(tmp_path) is None  # no dataset.json
    (tmp_path / "dataset.json").write_text(__import__("json").dumps(_meta()))
    assert calibration_of_dataset(tmp_path) == CAL
    image, labels = _tube_image(0.05, 4.0, 1.6)
    missing = measure_bone(image, np.zeros_like(labels), "MC3", spacing_mm=SPACING)
    assert np.isnan(measure_porosity(CAL.nepers(image), labels, missing, CAL, spacing_mm=SPACING))
    with pytest.raises(ValueError, match="one entry per bin"):
        DetectorCalibration(200.0, 800.0, 12, (1.0, 1.0), (1.0,), (1.0,), (1.0,))
