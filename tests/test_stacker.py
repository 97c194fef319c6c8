"""The saved image-only stacker: plain numbers that give scikit-learn's, and predict applies."""

import json

import numpy as np
import pytest

from osteo_jax.config import BONE_NAMES, CLASS_NAMES, ExperimentConfig, SynthConfig
from osteo_jax.data.folder import write_png16
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort
from osteo_jax.eval.baselines import fit_logistic, predict_probability
from osteo_jax.eval.radiogrammetry.porosity import calibration_of_dataset
from osteo_jax.eval.stacker import ImageStacker, LinearLogistic
from osteo_jax.pipeline.predict import PredictModel, predict_images, summary_line


def _data(seed=0, n=60, d=3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    X = rng.normal(0, 1, (n, d)) + y[:, None] * np.array([1.0, -0.5, 0.0])[:d]
    X[:, -1] *= 10  # scales that differ: the standardisation matters
    return X, y


def test_linear_logistic_equals_sklearn_with_imputation():
    X, y = _data()
    X[[2, 9], 0] = np.nan
    model = fit_logistic(X, y, impute_median=True)
    lin = LinearLogistic.from_pipeline(model, ("a", "b", "c"))
    new = np.random.default_rng(1).normal(0, 1, (20, 3))
    new[[0, 5], [1, 2]] = np.nan
    np.testing.assert_allclose(lin.probability(new), predict_probability(model, new), atol=1e-12)
    np.testing.assert_allclose(lin.median, np.nanmedian(X, axis=0))
    back = LinearLogistic.from_dict(json.loads(json.dumps(lin.as_dict())))
    np.testing.assert_array_equal(back.probability(new), lin.probability(new))


def test_linear_logistic_without_imputer_rejects_nan_and_bad_width():
    X, y = _data(d=2)
    lin = LinearLogistic.from_pipeline(fit_logistic(X, y), ("a", "b"))
    assert lin.median is None
    with pytest.raises(ValueError, match="NaN"):
        lin.probability(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="expected 2 features"):
        lin.probability(np.ones((1, 3)))


def test_image_stacker_is_the_two_regressions_composed(tmp_path):
    X, y = _data()
    meas = fit_logistic(X, y, impute_median=True)
    p_img = np.clip(np.random.default_rng(2).random(len(y)) * 0.5 + 0.4 * y, 0, 1)
    p_img[0] = 0.0  # clipped before the logit
    p_m = predict_probability(meas, X)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    eps = 1e-6
    z = np.column_stack([logit(np.clip(p_img, eps, 1 - eps)), logit(np.clip(p_m, eps, 1 - eps))])
    stack = fit_logistic(z, y)
    stacker = ImageStacker(
        row="radiogrammetry (measured CI)",
        measurement=LinearLogistic.from_pipeline(meas, ("MC2_ci", "radius_ci", "x")),
        stack=LinearLogistic.from_pipeline(stack, ("image_logit", "measurements_logit")),
        eps=eps,
    )
    want = predict_probability(stack, z)
    np.testing.assert_allclose(stacker.probability(p_img, X), want, atol=1e-12)
    stacker.save(tmp_path / "stacker.json")
    assert not list(tmp_path.glob("*.tmp"))
    back = ImageStacker.load(tmp_path / "stacker.json")
    assert back.features == ("MC2_ci", "radius_ci", "x") and back.row == stacker.row
    np.testing.assert_allclose(back.probability(p_img, X), want, atol=1e-12)


def test_malformed_stacker_file_names_the_file(tmp_path):
    bad = tmp_path / "stacker.json"
    bad.write_text('{"row": "r", "measurement": {"names": ["a"]}}')
    with pytest.raises(ValueError, match="stacker.json: not a readable stacker"):
        ImageStacker.load(bad)
    lin = {"names": ["a"], "median": None, "mean": [0], "scale": [1], "coef": [1], "intercept": 0}
    bad.write_text(json.dumps({"row": "r", "measurement": lin, "stack": lin, "eps": 1e-6}))
    with pytest.raises(ValueError, match="2 inputs"):
        ImageStacker.load(bad)
    lin["coef"] = [1, 2]
    bad.write_text(json.dumps({"row": "r", "measurement": lin, "stack": lin, "eps": 1e-6}))
    with pytest.raises(ValueError, match="coef has shape"):
        ImageStacker.load(bad)


class _ExactSegmenter(PredictModel):
    """A PredictModel whose hypotheses are all one exact label map; its 2 models say 0.3."""

    def __init__(self, exact, calibration, stackers):
        self.cfg = ExperimentConfig()
        self.bones = ("MC2", "MC3")
        onehot = np.eye(len(CLASS_NAMES), dtype=np.float32)[exact]
        self.probs, self.weights = np.stack([onehot] * 2), np.array([0.6, 0.4])
        self.calibration, self.stackers = calibration, stackers

    def model_input(self, image):
        return np.zeros((8, 8), np.float32)

    def segment_batch(self, inputs, batch_size=None):
        return np.stack([self.probs] * len(inputs)), np.stack([self.weights] * len(inputs))

    def classify(self, segments):
        return np.array([[0.3 if s.valid.any() else np.nan] * 2 for s in segments])


def test_predict_stacked_score_measures_the_radiograph(tmp_path):
    """predict's stacked score on a whole synthetic hand (0.4 mm, exact masks): the measured
    porosity is the cohort's (within 0.025, as in test_porosity), the score is the stacker's
    composition, and a file not on the detector's bit depth gets no porosity (median)."""
    import dataclasses
    import math

    cfg = SynthConfig()
    cfg = dataclasses.replace(cfg, physics=dataclasses.replace(cfg.physics, size=512))
    cohort = sample_cohort(cfg.cohort, seed=cfg.seed)
    rg = render_subject(cohort, 1, cfg)
    bits = cfg.physics.bits_stored
    calib = calibration_of_dataset(
        {"image_format": "png", "bits_stored": bits,
         "generator": {"config": {"physics": dataclasses.asdict(cfg.physics)}}}
    )  # fmt: skip
    detector, other = tmp_path / "hand12.png", tmp_path / "hand16.png"
    write_png16(detector, rg.image, bits_stored=bits)
    write_png16(other, rg.image.astype(np.uint16) * 16, bits_stored=16)
    names = ("MC2_ci", "MC2_porosity", "radius_porosity")
    measurement = LinearLogistic(names, np.array([0.45, 0.07, 0.07]), np.zeros(3), np.ones(3),
                                 np.array([-3.0, 20.0, 10.0]), 0.2)  # fmt: skip
    stack = LinearLogistic(("image_logit", "measurements_logit"), None, np.zeros(2), np.ones(2),
                           np.array([0.5, 1.5]), -0.1)  # fmt: skip
    model = _ExactSegmenter(rg.exact, calib, [ImageStacker("r", measurement, stack, 1e-6)] * 2)
    res = predict_images([detector, other], model, spacing_mm=rg.pixel_spacing_mm)
    m = res[0]["measurements"]
    for b in ("MC2", "radius"):
        want = cohort.porosity[1, BONE_NAMES.index(b)]
        assert m[f"{b}_porosity"] == pytest.approx(want, abs=0.025)
    assert 0.3 < m["MC2_ci"] < 0.7
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    z = 0.2 - 3.0 * m["MC2_ci"] + 20.0 * m["MC2_porosity"] + 10.0 * m["radius_porosity"]
    want = 1 / (1 + math.exp(-(-0.1 + 0.5 * logit(0.3) + 1.5 * logit(1 / (1 + math.exp(-z))))))
    assert res[0]["probability_stacked"] == pytest.approx(want, rel=1e-9)
    assert res[0]["probability_stacked_models"] == pytest.approx([want, want], rel=1e-9)
    assert "with measurements" in summary_line(res[0])
    # The same pixels at 16 bits: the CI is the same, the porosities are not measured.
    other_m = res[1]["measurements"]
    assert other_m["MC2_ci"] == pytest.approx(m["MC2_ci"], abs=1e-3)
    assert other_m["MC2_porosity"] is None and other_m["radius_porosity"] is None
    model.stackers = None  # a run without stackers: None, and why
    (res,) = predict_images([detector], model, spacing_mm=rg.pixel_spacing_mm)
    assert res["probability_stacked"] is None and res["probability_stacked_reason"]
    assert "with measurements" not in summary_line(res)
