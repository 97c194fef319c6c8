"""Clinical, radiogrammetry and fusion baselines: fitted only where allowed, against sklearn."""

import numpy as np
import pytest
from scipy import optimize
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import write_csv
from osteo_jax.eval.baselines import (
    DEFAULT_C,
    clinical_scores,
    cross_validated_auc,
    fit_logistic,
    fusion_scores,
    predict_probability,
    radiogrammetry_scores,
)
from osteo_jax.eval.subject_features import (
    SubjectFeatures,
    radiogrammetry_features,
    read_covariates,
    read_labels,
)


def make_cohort(tmp_path, n=120, seed=0, noise=4.0):
    """subjects.csv whose label is a noisy threshold of age; a 60/20/20 subject split."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(50, 85, n).round(1)
    sex = np.where(rng.random(n) < 0.7, "F", "M")
    label = (age + rng.normal(0, noise, n) > 70).astype(int)
    ids = [f"S{i:04d}" for i in range(n)]
    rows = [
        dict(subject_id=s, age=a, sex=x, t_score=-1.0, who_category="normal", label=y,
             image_path=f"images/{s}.png", pixel_spacing_mm=0.2, laterality="L")
        for s, a, x, y in zip(ids, age, sex, label, strict=True)
    ]  # fmt: skip
    write_csv(tmp_path / "subjects.csv", rows)
    order = rng.permutation(ids).tolist()
    a, b = int(0.6 * n), int(0.8 * n)
    split = {"train": sorted(order[:a]), "val": sorted(order[a:b]), "test": sorted(order[b:])}
    return rows, split


def with_rows(features, ids, values):
    """``features`` with the rows of ``ids`` replaced by ``values``."""
    x = features.values.copy()
    for s, v in zip(ids, values, strict=True):
        x[list(features.subject_ids).index(s)] = v
    return features._replace(values=x)


@pytest.fixture
def cohort(tmp_path):
    rows, split = make_cohort(tmp_path)
    return tmp_path, read_labels(tmp_path), split


def test_read_covariates_codes_sex_numbers_and_categories(tmp_path):
    write_csv(
        tmp_path / "subjects.csv",
        [dict(subject_id="a", age="61.5", sex="F", who_category="normal", label=0),
         dict(subject_id="b", age="70", sex="M", who_category="osteoporosis", label=1),
         dict(subject_id="c", age="80", sex="f", who_category="osteopenia", label="")],
    )  # fmt: skip
    feats = read_covariates(tmp_path, ("age", "sex", "who_category"))
    assert feats.names == ("age", "sex=M", "who_category=osteopenia", "who_category=osteoporosis")
    assert feats.values.dtype == np.float64 and feats.values.shape == (3, 4)
    np.testing.assert_array_equal(feats.subject_ids, ["a", "b", "c"])
    np.testing.assert_array_equal(feats.values, [[61.5, 0, 0, 0], [70, 1, 0, 1], [80, 0, 1, 0]])
    assert read_labels(tmp_path) == {"a": 0, "b": 1}  # an empty label is left out


def test_missing_column_and_bad_values_are_dataset_errors(tmp_path):
    base = dict(subject_id="S1", age="60", sex="F", label=0)
    write_csv(tmp_path / "subjects.csv", [base])
    with pytest.raises(DatasetError, match=r"'height'.*subjects\.csv|subjects\.csv.*'height'"):
        read_covariates(tmp_path, ("age", "height"))
    for field, value in (("age", "sixty"), ("age", ""), ("sex", "X"), ("age", "nan")):
        write_csv(tmp_path / "subjects.csv", [dict(base, subject_id="S0"), {**base, field: value}])
        with pytest.raises(DatasetError, match=rf"subjects\.csv.*'S1'.*'{field}'") as err:
            read_covariates(tmp_path)
        assert isinstance(err.value, ValueError)


def test_no_test_subject_is_ever_fitted_on(cohort):
    data, labels, split = cohort
    cov = read_covariates(data)
    rng = np.random.default_rng(1)
    image = {s: float(rng.random()) for s in split["val"] + split["test"]}
    radio = SubjectFeatures(cov.subject_ids, rng.normal(0.5, 0.05, (len(cov.subject_ids), 2)),
                            ("MC2_ci", "radius_ci"))  # fmt: skip
    runs = {
        "clinical": lambda lab, c, im, r: clinical_scores(split, lab, c),
        "radiogrammetry": lambda lab, c, im, r: radiogrammetry_scores(split, lab, r, c),
        "fusion": lambda lab, c, im, r: fusion_scores(split, lab, im, c),
    }
    # Adversarial test subjects: flipped labels, absurd covariates and measurements.
    test = split["test"]
    bad_labels = {**labels, **{s: 1 - labels[s] for s in test}}
    bad_cov = with_rows(cov, test, [[1e4, 1.0 - v[1]] for v in cov.rows(test)])
    bad_radio = with_rows(radio, test, np.full((len(test), 2), -50.0))
    bad_image = {**image, **{s: 1.0 - image[s] for s in test}}
    for name, run in runs.items():
        res = run(labels, cov, image, radio)
        assert not set(res.fit_subjects) & set(test), name
        assert res.probabilities.dtype == np.float64 and np.isfinite(res.probabilities).all()
        assert len(res.probabilities) == len(res.subject_ids)
        # Changing only the test subjects' labels changes no prediction at all.
        again = run(bad_labels, cov, image, radio)
        np.testing.assert_array_equal(again.probabilities, res.probabilities)
        # Changing their inputs too leaves the model, hence every other prediction, unchanged.
        adv = run(bad_labels, bad_cov, bad_image, bad_radio)
        np.testing.assert_array_equal(
            adv.model.named_steps["logistic"].coef_, res.model.named_steps["logistic"].coef_
        )
        others = [s for s in res.subject_ids if s not in test]
        np.testing.assert_array_equal(adv.probability(others), res.probability(others))
    # Fusion is fitted on the validation subjects: the train subjects' labels do not matter.
    fus = fusion_scores(split, labels, image, cov)
    assert sorted(fus.fit_subjects) == sorted(split["val"])
    flipped = {**labels, **{s: 1 - labels[s] for s in split["train"]}}
    np.testing.assert_array_equal(
        fusion_scores(split, flipped, image, cov).probabilities, fus.probabilities
    )


def test_clinical_equals_an_independent_logistic_regression(cohort):
    data, labels, split = cohort
    cov = read_covariates(data)
    res = clinical_scores(split, labels, cov)
    assert res.subject_ids == tuple(split["val"] + split["test"])
    assert sorted(res.fit_subjects) == sorted(split["train"])
    x_tr, x_pr = cov.rows(split["train"]), cov.rows(list(res.subject_ids))
    y_tr = np.array([labels[s] for s in split["train"]])
    scaler = StandardScaler().fit(x_tr)
    ref = LogisticRegression(C=DEFAULT_C, tol=1e-10, max_iter=10_000).fit(
        scaler.transform(x_tr), y_tr
    )
    expect = ref.predict_proba(scaler.transform(x_pr))[:, 1]
    np.testing.assert_allclose(res.probabilities, expect, rtol=0, atol=1e-8)
    # And the penalised maximum-likelihood optimum, by scipy from scratch.
    z = (x_tr - x_tr.mean(0)) / x_tr.std(0)
    s = 2 * y_tr - 1

    def objective(theta):
        margin = s * (theta[0] + z @ theta[1:])
        return DEFAULT_C * np.logaddexp(0, -margin).sum() + 0.5 * theta[1:] @ theta[1:]

    theta = optimize.minimize(objective, np.zeros(3), method="BFGS", options={"gtol": 1e-9}).x
    zp = (x_pr - x_tr.mean(0)) / x_tr.std(0)
    np.testing.assert_allclose(
        res.probabilities, 1 / (1 + np.exp(-(theta[0] + zp @ theta[1:]))), atol=1e-5
    )


def test_clinical_learns_an_age_threshold(tmp_path):
    _, split = make_cohort(tmp_path, n=300, seed=3)
    labels = read_labels(tmp_path)
    res = clinical_scores(split, labels, read_covariates(tmp_path))
    test = split["test"]
    auc = roc_auc_score([labels[s] for s in test], res.probability(test))
    assert auc > 0.8
    age_coef = res.model.named_steps["logistic"].coef_[0, 0]
    assert res.feature_names == ("age", "sex=M") and age_coef > 0


def test_radiogrammetry_imputes_with_the_train_median():
    split = {"train": ["a", "b", "c", "d", "e"], "val": ["v"], "test": ["t", "u"]}
    labels = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 0, "v": 1, "t": 0, "u": 1}
    nan = np.nan
    # Train MC2: 0.6, NaN, 0.4, 0.5, 0.7 -> median 0.55; radius: 0.8, 0.9, NaN, 0.7, 0.6 -> 0.75.
    # Validation and test values are extreme: a median over all rows would differ.
    feats = SubjectFeatures(
        np.array(["a", "b", "c", "d", "e", "v", "t"]),
        np.array([[0.6, 0.8], [nan, 0.9], [0.4, nan], [0.5, 0.7], [0.7, 0.6],
                  [0.0, 0.0], [nan, nan]]),
        ("MC2_ci", "radius_ci"),
    )  # fmt: skip
    res = radiogrammetry_scores(split, labels, feats)
    np.testing.assert_allclose(res.model.named_steps["impute"].statistics_, [0.55, 0.75])
    assert res.subject_ids == ("v", "t", "u") and res.fit_subjects == tuple(split["train"])
    filled = np.array([[0.0, 0.0], [0.55, 0.75], [0.55, 0.75]])  # "u" has no measurement
    scaler = StandardScaler().fit(
        np.array([[0.6, 0.8], [0.55, 0.9], [0.4, 0.75], [0.5, 0.7], [0.7, 0.6]])
    )
    np.testing.assert_allclose(
        res.probabilities,
        predict_probability(res.model, filled),
        atol=1e-12,
    )
    np.testing.assert_allclose(res.model.named_steps["scale"].mean_, scaler.mean_, atol=1e-12)
    assert res.probabilities[1] == res.probabilities[2]


def _misleading_validation(seed=0):
    """Two measurements: A knows the label on train and not on val; B the other way round."""
    rng = np.random.default_rng(seed)
    n_tr, n_va = 120, 16
    y_tr, y_va = (np.arange(n_tr) % 3 == 0).astype(int), (np.arange(n_va) % 3 == 0).astype(int)
    a = np.concatenate([y_tr + rng.normal(0, 0.7, n_tr), -y_va + rng.normal(0, 0.3, n_va)])
    b = np.concatenate([0.3 * y_tr + rng.normal(0, 1.0, n_tr), y_va + rng.normal(0, 0.2, n_va)])
    a[3] = np.nan  # a failed measurement, imputed inside every fold
    ids = [f"T{i:03d}" for i in range(n_tr)] + [f"V{i:03d}" for i in range(n_va)]
    split = {"train": ids[:n_tr], "val": ids[n_tr:], "test": []}
    labels = dict(zip(ids, np.concatenate([y_tr, y_va]).tolist(), strict=True))
    feats = [
        SubjectFeatures(np.array(ids), v[:, None], (name,)) for v, name in ((a, "A"), (b, "B"))
    ]
    return split, labels, feats


def test_cross_validated_auc_equals_sklearn_out_of_fold_predictions():
    from sklearn.impute import SimpleImputer
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    split, labels, feats = _misleading_validation()
    y = np.array([labels[s] for s in split["train"]])
    for f in feats:
        res = radiogrammetry_scores(split, labels, f)
        x = f.rows(split["train"])
        model = make_pipeline(
            SimpleImputer(strategy="median"),
            StandardScaler(),
            LogisticRegression(C=DEFAULT_C, tol=1e-10, max_iter=10_000),
        )
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
        assert cross_validated_auc(res) == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    # Fewer than 2 fitting subjects of a class: no folds, NaN.
    tiny = {"train": ["a", "b", "c", "d"], "val": ["v"], "test": []}
    one_pos = {"a": 1, "b": 0, "c": 0, "d": 0, "v": 1}
    x = SubjectFeatures(np.array(["a", "b", "c", "d", "v"]), np.arange(5.0)[:, None], ("A",))
    assert np.isnan(cross_validated_auc(radiogrammetry_scores(tiny, one_pos, x)))


def test_stacked_measurement_is_chosen_by_training_cv_not_validation():
    from osteo_jax.pipeline.comparison import _best_by_training_cv

    split, labels, feats = _misleading_validation()
    a, b = (radiogrammetry_scores(split, labels, f) for f in feats)
    y_va = [labels[s] for s in split["val"]]
    # The 16 validation subjects would pick B; the 120 training subjects' folds pick A.
    assert roc_auc_score(y_va, b.probability(split["val"])) > 0.9
    assert roc_auc_score(y_va, a.probability(split["val"])) < 0.2
    assert cross_validated_auc(a) > cross_validated_auc(b) + 0.1
    assert _best_by_training_cv([a, b]) is a and _best_by_training_cv([b, a]) is a
    twin = radiogrammetry_scores(split, labels, feats[0])  # equal AUCs: the last of equals
    assert _best_by_training_cv([a, twin]) is twin


def test_radiogrammetry_features_average_finite_values_per_subject():
    nan = float("nan")
    radio = {"per_image": [
        {"subject_id": "b", "MC2_ci": 0.5, "MC3_ci": nan, "MC4_ci": 0.4, "radius_ci": nan},
        {"subject_id": "b", "MC2_ci": 0.7, "MC3_ci": nan, "MC4_ci": nan, "radius_ci": 0.8},
        {"subject_id": "a", "MC2_ci": nan, "MC3_ci": 0.3, "MC4_ci": 0.2, "radius_ci": 0.1},
    ]}  # fmt: skip
    feats = radiogrammetry_features(radio)
    assert feats.names == ("MC2_ci", "MC3_ci", "MC4_ci", "radius_ci")
    np.testing.assert_array_equal(feats.subject_ids, ["a", "b"])
    np.testing.assert_allclose(feats.values, [[nan, 0.3, 0.2, 0.1], [0.6, nan, 0.4, 0.8]])
    with pytest.raises(ValueError, match="radius_ci"):
        radiogrammetry_features({"per_image": [{"subject_id": "a", "MC2_ci": 0.5}]})


def test_fusion_with_a_perfect_image_score_beats_clinical(cohort):
    data, labels, split = cohort
    cov = read_covariates(data)
    image = {s: float(labels[s]) for s in split["val"] + split["test"]}
    fus = fusion_scores(split, labels, image, cov)
    clin = clinical_scores(split, labels, cov)
    test = split["test"]
    y = [labels[s] for s in test]
    assert fus.subject_ids == tuple(test) and fus.feature_names == ("image_logit", "age", "sex=M")
    auc_fusion, auc_clinical = (
        roc_auc_score(y, fus.probabilities),
        roc_auc_score(y, clin.probability(test)),
    )
    assert auc_fusion == 1.0 and auc_clinical < 0.99
    assert np.mean(np.abs(fus.probabilities - y)) < np.mean(np.abs(clin.probability(test) - y))


def test_fusion_needs_both_classes_among_validation_subjects(cohort):
    data, labels, split = cohort
    cov = read_covariates(data)
    pos = [s for s in split["val"] if labels[s] == 1]
    lopsided = dict(split, val=[s for s in split["val"] if labels[s] == 0] + pos[:1])
    image = dict.fromkeys(split["val"] + split["test"], 0.5)
    with pytest.raises(ValueError, match="at least 2 of each"):
        fusion_scores(lopsided, labels, image, cov)
    with pytest.raises(ValueError, match="no image score"):
        fusion_scores(split, labels, {}, cov)


def test_fit_logistic_rejects_bad_input():
    x = np.array([[0.0], [1.0], [2.0]])
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        fit_logistic(np.array([[0.0], [np.nan], [2.0]]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="share subjects"):
        clinical_scores({"train": ["a"], "val": ["a"], "test": []}, {}, None)


@pytest.mark.e2e
def test_radiogrammetry_of_run_measures_every_subject_and_spreads_only_val(tmp_path, monkeypatch):
    """split="all" measures the segmenter's train subjects too; the costly 2MCI spread is
    measured on the validation subjects only, over the requested number of hypotheses."""
    import json

    from osteo_jax.config import (
        CohortConfig,
        OTConfig,
        PhysicsConfig,
        SegConfig,
        SegTrainConfig,
        SynthConfig,
    )
    from osteo_jax.data.folder import read_csv
    from osteo_jax.data.synth.synthetic import write_dataset
    from osteo_jax.eval.radiogrammetry.absorptiometry import ABSORPTIOMETRY_KEYS
    from osteo_jax.pipeline import radiogrammetry_run
    from osteo_jax.train.seg_loop import train_segmenter

    synth = SynthConfig(cohort=CohortConfig(n_subjects=6), physics=PhysicsConfig(size=96))
    data = write_dataset(synth, tmp_path / "ds", workers=1, progress=False)
    seg = SegTrainConfig(
        model=SegConfig(features=(4, 8), num_experts=2, num_samples=2, latent_dim=2, head_hidden=4,
                      router_hidden=8, image_size=32),
        ot=OTConfig(num_iters=5), batch_size=2, epochs=1, warmup_steps=1, val_fraction=0.34,
        max_steps=1,
    )  # fmt: skip
    train_segmenter(data, tmp_path / "seg", seg, progress=False)
    parts = json.loads((tmp_path / "seg" / "split.json").read_text())
    part_of = {s: p for p, ids in parts.items() for s in ids}
    calls = []
    real = radiogrammetry_run.measure_hypotheses

    def spy(image, maps, weights, **kw):
        calls.append(len(maps))
        return real(image, maps, weights, **kw)

    monkeypatch.setattr(radiogrammetry_run, "measure_hypotheses", spy)
    out = tmp_path / "radio.json"
    res = radiogrammetry_run.radiogrammetry_of_run(
        data, tmp_path / "seg", out, split="all", hypotheses=3, progress=False
    )
    assert json.loads(out.read_text())["summary"]["split"] == "all"
    images = read_csv(data / "images.csv")
    recs = res["per_image"]
    assert [r["image_id"] for r in recs] == [r["image_id"] for r in images]
    keys = {"image_id", "subject_id", "split", "MC2_ci", "MC3_ci", "MC4_ci", "radius_ci",
            "MC2_ci_sd", "MC2_ci_lo", "MC2_ci_hi", "true_MC2_ci", "t_score",
        *ABSORPTIOMETRY_KEYS, "MC2_porosity", "MC3_porosity", "MC4_porosity",
        "radius_porosity"}  # fmt: skip
    assert all(set(r) == keys for r in recs)
    assert all(r["split"] == part_of[r["subject_id"]] for r in recs)
    n_val = sum(r["split"] == "val" for r in recs)
    assert 0 < n_val < len(recs) and calls == [3] * n_val
    assert all(np.isnan(r["MC2_ci_sd"]) for r in recs if r["split"] != "val")
    s = res["summary"]
    assert s["n_images"] == len(recs) and s["eval_split"] == "val" and s["spread_split"] == "val"
    assert s["n_images_by_split"] == {"train": len(recs) - n_val, "val": n_val}
    feats = radiogrammetry_features(out)
    assert sorted(feats.subject_ids) == sorted(part_of) and feats.values.shape == (6, 4)
    # The default measures the validation subjects only, as before the move.
    calls.clear()
    val = radiogrammetry_run.radiogrammetry_of_run(
        data, tmp_path / "seg", tmp_path / "val.json", hypotheses=0, progress=False
    )
    assert {r["split"] for r in val["per_image"]} == {"val"} and len(val["per_image"]) == n_val
    assert calls == [4] * n_val  # hypotheses=0: all K * S
    # Measured in 2 worker processes (batch 2: one batch measured while the next segments):
    # the same records, in the same order.
    pooled = radiogrammetry_run.radiogrammetry_of_run(
        data, tmp_path / "seg", tmp_path / "pooled.json", split="all", hypotheses=3,
        progress=False, jobs=2,
    )  # fmt: skip
    assert [list(r) for r in pooled["per_image"]] == [list(r) for r in recs]
    for got, want in zip(pooled["per_image"], recs, strict=True):
        np.testing.assert_equal(got, want)  # NaN where NaN
