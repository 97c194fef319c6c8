"""The saved image-only stacker: plain numbers that give scikit-learn's probabilities."""

import json

import numpy as np
import pytest

from osteo_jax.eval.baselines import fit_logistic, predict_probability
from osteo_jax.eval.stacker import ImageStacker, LinearLogistic


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
