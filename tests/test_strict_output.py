"""Every output finite or refused: strict JSON, metrics that refuse bad input, predict's refusal."""

import json
import math

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.config import CLASS_NAMES, CohortConfig, ExperimentConfig, PhysicsConfig, SynthConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import dumps_json, nulls_to_nan, write_json, write_png16
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort
from osteo_jax.eval.cls_metrics import binary_metrics, subject_probabilities
from osteo_jax.eval.cls_stats import summarise_seeds
from osteo_jax.pipeline import predict as predict_mod


def _strict_loads(text):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------- JSON


def test_write_json_is_strict(tmp_path):
    obj = {
        "nan": float("nan"),
        "inf": -math.inf,
        "np32": np.float32("nan"),
        "np64": np.float64(0.25),
        "array": np.array([1.0, np.nan, np.inf]),
        "nested": [{"x": (np.int64(3), float("nan"))}],
        "ok": "text",
    }
    path = tmp_path / "out.json"
    write_json(path, obj)
    back = _strict_loads(path.read_text())
    assert back == {
        "nan": None,
        "inf": None,
        "np32": None,
        "np64": 0.25,
        "array": [1.0, None, None],
        "nested": [{"x": [3, None]}],
        "ok": "text",
    }
    line = dumps_json({"step": 1, "auc": float("nan")})
    assert "\n" not in line and _strict_loads(line) == {"step": 1, "auc": None}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        dumps_json({"x": object()})


# ------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.1, 1.5])
def test_metrics_refuse_bad_probabilities(bad):
    probs, labels = np.array([0.2, bad, 0.8, 0.4]), np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="index 1"):
        binary_metrics(probs, labels)
    with pytest.raises(ValueError, match="seed 0"):
        summarise_seeds([(probs, labels)], n_boot=0)
    seg = np.array([[0.2, 0.3], [bad, 0.5]])
    with pytest.raises(ValueError, match="image 1, segment 0"):
        subject_probabilities(seg, np.ones((2, 2), bool), np.array(["a", "b"]))


def test_metrics_refuse_empty_input():
    with pytest.raises(ValueError, match="empty"):
        binary_metrics(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="empty"):
        subject_probabilities(np.zeros((0, 7)), np.zeros((0, 7), bool), np.array([]))
    with pytest.raises(ValueError, match="no seeds"):
        summarise_seeds([], n_boot=0)
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics(np.array([0.2, 0.7]), np.array([0, 1]), threshold=float("nan"))


def test_invalid_segments_may_hold_nan():
    seg = np.array([[0.2, np.nan], [np.nan, np.nan], [0.6, 0.8]])
    valid = np.array([[True, False], [False, False], [True, True]])
    subjects, probs = subject_probabilities(seg, valid, np.array(["a", "b", "a"]))
    assert subjects.tolist() == ["a", "b"] and probs.dtype == np.float64
    np.testing.assert_allclose(probs, [(0.2 + 0.6 + 0.8) / 3, 0.5])


# ------------------------------------------------------------------------------- predict

N_HYP, SEG_SIZE = 4, 64


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    """One 256 px synthetic hand as a 16-bit PNG, with its exact label map."""
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=2), physics=PhysicsConfig(size=256))
    rad = render_subject(sample_cohort(cfg.cohort, seed=0), 0, cfg)
    path = tmp_path_factory.mktemp("predict") / "hand.png"
    write_png16(path, np.round(np.clip(rad.image, 0, 1) * 65535).astype(np.uint16))
    return path, rad.exact, float(rad.pixel_spacing_mm)


class _StubModel(predict_mod.PredictModel):
    """A PredictModel whose segmenter returns given hypotheses and whose classifier says 0.3."""

    def __init__(self, labels, empty):
        self.cfg = ExperimentConfig()
        self.bones = ("MC2", "MC3")
        step = labels.shape[0] // SEG_SIZE
        small = labels[::step, ::step][:SEG_SIZE, :SEG_SIZE]
        onehot = np.eye(len(CLASS_NAMES), dtype=np.float32)[small]
        background = np.eye(len(CLASS_NAMES), dtype=np.float32)[np.zeros_like(small)]
        self.probs = np.stack([background if h in empty else onehot for h in range(N_HYP)])
        self.weights = np.array([0.4, 0.3, 0.2, 0.1])

    def model_input(self, image):
        return np.zeros((SEG_SIZE, SEG_SIZE), np.float32)

    def segment_batch(self, inputs, batch_size=None):
        n = len(inputs)
        return np.stack([self.probs] * n), np.stack([self.weights] * n)

    def classify(self, segments):
        return np.array([[0.3 if s.valid.any() else np.nan] * 2 for s in segments])


def test_predict_hypothesis_without_segment_is_null_with_reason(hand, tmp_path):
    path, labels, spacing = hand
    model = _StubModel(labels, empty={3})
    (res,) = predict_mod.predict_images([path], model, spacing_mm=spacing)
    assert res["probability"] == pytest.approx(0.3)
    assert [h["probability"] for h in res["hypotheses"]] == [0.3, 0.3, 0.3, None]
    assert res["hypotheses"][3]["probability_reason"] == "no valid bone segment in this hypothesis"
    assert "probability_reason" not in res["hypotheses"][0]
    out = tmp_path / "p.json"
    write_json(out, [res])
    assert _strict_loads(out.read_text())[0]["hypotheses"][3]["probability"] is None
    assert "nan" not in predict_mod.summary_line(res)


def test_predict_refuses_an_image_without_usable_bones(hand, monkeypatch, capsys):
    path, labels, spacing = hand
    model = _StubModel(labels, empty=set(range(N_HYP)))
    with pytest.raises(DatasetError, match="cannot be segmented into usable bones") as err:
        predict_mod.predict_images([path], model, spacing_mm=spacing)
    assert str(err.value).startswith(f"{path}: ")

    # Through the CLI: exit 2, one line naming the file, no 'nan' printed.
    class FromRun(_StubModel):
        def __init__(self, run, stacked=True):
            super().__init__(labels, empty=set(range(N_HYP)))

    monkeypatch.setattr(predict_mod, "PredictModel", FromRun)
    rc = main(["predict", str(path), "--run", "unused", "--spacing", str(spacing)])
    out, err_text = capsys.readouterr()
    assert rc == 2 and "nan" not in out
    lines = err_text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"osteo-jax predict: error: {path}: ")


def test_nulls_to_nan_reads_numeric_records_back(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"auc": {"mean": float("nan"), "ci95": [0.1, float("nan")]}})
    back = nulls_to_nan(json.loads(path.read_text()))
    assert math.isnan(back["auc"]["mean"]) and back["auc"]["ci95"][0] == 0.1
    assert math.isnan(back["auc"]["ci95"][1])
