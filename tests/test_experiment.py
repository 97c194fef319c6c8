"""The whole pipeline on a tiny cohort: run → report → predict (PNG and DICOM), and resume."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.config import (
    BackboneConfig,
    ClsConfig,
    CohortConfig,
    CropConfig,
    ExperimentConfig,
    OTConfig,
    PhysicsConfig,
    ProtocolConfig,
    SegConfig,
    SegmentConfig,
    SegTrainConfig,
    SSLConfig,
    SynthConfig,
)
from osteo_jax.data.errors import DatasetError

# The whole pipeline on a tiny cohort (~70 s before the first test): make e2e, which CI runs.
pytestmark = pytest.mark.e2e

BACKBONE = BackboneConfig(depth=18, width=4)
TINY = ExperimentConfig(
    name="tiny",
    synth=SynthConfig(cohort=CohortConfig(n_subjects=20), physics=PhysicsConfig(size=192)),
    seg=SegTrainConfig(
        model=SegConfig(
            features=(4, 8), num_experts=2, num_samples=2, latent_dim=2, head_hidden=4,
            router_hidden=8, image_size=32,
        ),
        ot=OTConfig(num_iters=20, gamma_ramp_start=2, gamma_ramp_steps=4),
        batch_size=4,
        epochs=2,
        warmup_steps=1,
    ),
    segment=SegmentConfig(size=16),
    protocol=ProtocolConfig(
        ssl=SSLConfig(
            backbone=BACKBONE,
            crops=CropConfig(global_size=12, local_size=8, n_local=2),
            batch_size=16,
            epochs=1,
            warmup_epochs=0.5,
        ),
        cls=ClsConfig(epochs=3, batch_size=16, seeds=(0, 1), bootstrap=50),
        backbone=BACKBONE,
    ),
    report_subjects=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tiny_experiment):
    return tiny_experiment


def test_run_writes_the_report(run):
    out, res = run
    assert set(res["stages"]) >= {
        "synth", "train-seg", "segments", "ssl+classifier", "radiogrammetry", "baselines", "report"
    }  # fmt: skip
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for text in (
        "SYNTHETIC", "Bayes ceiling", "clinical (age, sex)", "radiogrammetry (measured CI)",
        "Bayes posterior: image", "Δ AUC vs clinical", "Per-bone contribution", "Radiogrammetry",
    ):  # fmt: skip
        assert text in md and text in page, text
    assert "oracle" not in md.lower()
    metrics = json.loads((out / "cls" / "cls_metrics.json").read_text())
    assert metrics["table_row"]["model"] == TINY.protocol.name
    assert f"image model: {TINY.protocol.name}" in md
    auc = metrics["summary"]["auc"]["mean"]
    assert f"{auc:.2f} ±" in md  # the table shows the protocol's numbers
    for rel in (
        "figures/dice_per_bone.png", "figures/bone_contribution.png", "cls/roc.png",
        "figures/comparison.png",
    ):  # fmt: skip
        assert (out / rel).stat().st_size > 1000
        assert rel in md and rel in page
    radio = json.loads((out / "radiogrammetry.json").read_text())
    assert radio["summary"]["n_images"] == len(radio["per_image"]) == 20  # every subject


def test_every_row_is_scored_on_the_protocol_test_subjects(run):
    """The baselines and Bayes rows use exactly each seed's test subjects; the ceilings match
    the generator's posteriors on them."""
    from osteo_jax.data.synth.ceiling import read_posteriors
    from osteo_jax.data.synth.cohort import roc_auc

    out, _ = run
    comparison = json.loads((out / "cls" / "comparison.json").read_text())
    post = read_posteriors(out / "data")
    assert {"image model", "clinical (age, sex)", "radiogrammetry (measured CI)"} <= set(
        comparison["rows"]
    )
    for k, seed in enumerate(TINY.protocol.cls.seeds):
        split = json.loads((out / "cls" / f"seed{seed}" / "split.json").read_text())
        for name, row in comparison["rows"].items():
            part = row["per_part"][k]
            assert part["subject_id"] == sorted(split["test"]), name
        bayes = comparison["rows"]["Bayes posterior: image"]["per_part"][k]
        assert bayes["probability"] == [post["image"][s] for s in bayes["subject_id"]]
        if 0 < sum(bayes["label"]) < len(bayes["label"]):
            want = roc_auc(np.array(bayes["probability"]), np.array(bayes["label"]))
            got = comparison["rows"]["Bayes posterior: image"]["summary"]["auc"]["per_seed"][k]
            assert got == pytest.approx(want)
    # 20 subjects: 2 validation subjects per seed are too few to fit the fusion stacker.
    assert "fusion (image + age, sex)" in comparison["skipped"]


def test_saved_models_reproduce_the_protocol_predictions(run):
    """The per-seed models written by the protocol, restored by predict's loader, give back
    each test segment's probability in test_segments.csv."""
    from osteo_jax.data.segments import load_segments
    from osteo_jax.pipeline.protocol import load_models
    from osteo_jax.train.cls_loop import predict_segments

    out, _ = run
    models, backbone, bones, metrics = load_models(out / "cls")
    assert len(models) == len(TINY.protocol.cls.seeds) and backbone == BACKBONE
    seg = load_segments(out / "segments").select_bones(bones)
    for seed, params in zip(TINY.protocol.cls.seeds, models, strict=True):
        with open(out / "cls" / f"seed{seed}" / "test_segments.csv") as f:
            rows = list(csv.DictReader(f))
        ids = sorted({r["image_id"] for r in rows})
        idx = np.array([int(np.flatnonzero(seg.image_ids == i)[0]) for i in ids])
        probs = predict_segments(params, backbone, seg.take(idx))
        for r in rows:
            k, b = ids.index(r["image_id"]), bones.index(r["bone"])
            assert probs[k, b] == pytest.approx(float(r["probability"]), abs=2e-6)


def test_predict_png_and_dicom_agree_and_bad_file_fails(run, tmp_path, capsys):
    from osteo_jax.data.dicom import write_dicom
    from osteo_jax.data.folder import read_png

    out, _ = run
    png = out / "data" / "images" / "S0000.png"
    dcm = tmp_path / "S0000.dcm"
    write_dicom(dcm, read_png(png), pixel_spacing_mm=204.8 / 192, bits_stored=12)
    res_json, fig = tmp_path / "pred.json", tmp_path / "pred.png"
    argv = ["predict", str(png), str(dcm), "--run", str(out), "--out", str(res_json)]
    assert main([*argv, "--figure", str(fig)]) == 0
    res = json.loads(res_json.read_text())
    assert fig.stat().st_size > 1000 and "not a diagnosis" in capsys.readouterr().out
    for r in res:
        lo, hi = r["probability_interval"]
        assert 0 <= lo <= hi <= 1 and 0 <= r["probability"] <= 1
        w = np.array([h["weight"] for h in r["hypotheses"]])
        assert len(w) == 4 and w.sum() == pytest.approx(1, abs=1e-5)
    # The same pixels as PNG and as DICOM give the same prediction.
    assert res[0]["probability"] == pytest.approx(res[1]["probability"], abs=1e-4)
    assert res[1]["spacing_known"] and not res[0]["spacing_known"]
    # 2 validation subjects a seed: no stacked row, so no stacker, and predict says why.
    assert res[0]["probability_stacked"] is None
    assert "no cls/seed0/stacker.json" in res[0]["probability_stacked_reason"]
    _check_stacked_prediction(out, [png, dcm], tmp_path)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM" + b"\0" * 50)
    assert (
        main(["predict", str(png), str(bad), "--run", str(out), "--out", str(tmp_path / "x.json")])
        == 2
    )
    assert "broken.dcm" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(DatasetError, match="missing.png"):
        from osteo_jax.pipeline.predict import predict_images

        predict_images([tmp_path / "missing.png"], out)


def _check_stacked_prediction(out, paths, tmp_path):
    """Stackers saved in the run (by hand: the tiny run fits none) reach predict's output."""
    from osteo_jax.eval.radiogrammetry.porosity import calibration_of_dataset
    from osteo_jax.eval.stacker import STACKER_FILE, ImageStacker, LinearLogistic
    from osteo_jax.pipeline.predict import PredictModel, predict_images

    names = ("MC2_ci", "radius_ci", "MC2_porosity", "MC2_grey")
    stackers = [
        ImageStacker(
            row="radiogrammetry + porosity (...)",
            measurement=LinearLogistic(
                names, np.array([0.5, 0.4, 0.08, 0.3]), np.array([0.5, 0.4, 0.08, 0.3]),
                np.array([0.1, 0.1, 0.03, 0.1]), np.array([-1.0, -0.5, 2.0, 0.3]), -0.8 + k,
            ),
            stack=LinearLogistic(
                ("image_logit", "measurements_logit"), None, np.zeros(2), np.ones(2),
                np.array([0.4, 1.2]), 0.1 * k,
            ),
            eps=1e-6,
        )
        for k in range(len(TINY.protocol.cls.seeds))
    ]  # fmt: skip
    copy = tmp_path / "run_with_stackers"  # the shared run stays as it is
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report"))
    for st, seed in zip(stackers, TINY.protocol.cls.seeds, strict=True):
        st.save(copy / "cls" / f"seed{seed}" / STACKER_FILE)
    assert PredictModel(copy, stacked=False).stackers is None  # --no-stacked
    model = PredictModel(copy)
    assert model.calibration == calibration_of_dataset(out / "data")
    res = predict_images(paths, model)
    for r in res:
        m = r["measurements"]
        assert set(m) == set(names)
        x = np.array([[np.nan if m[n] is None else m[n] for n in names]])
        p_models = r["probability_models"]
        want = [st.probability([p], x)[0] for st, p in zip(stackers, p_models, strict=True)]
        np.testing.assert_allclose(r["probability_stacked_models"], want, rtol=1e-12)
        assert r["probability_stacked"] == pytest.approx(np.mean(want), abs=1e-12)
        assert 0 < r["probability_stacked"] < 1
    # PNG and its 12-bit DICOM: the same measurements (porosity on both: the detector's depth).
    assert res[0]["measurements"] == pytest.approx(res[1]["measurements"], abs=1e-6)


def test_rerun_resumes_and_refuses_another_config(run):
    from osteo_jax.pipeline.experiment import run_experiment

    out, first = run
    files = ("seg/metrics.jsonl", "segments/segments.npz", "cls/cls_metrics.json",
             "radiogrammetry.json")  # fmt: skip
    before = {f: (out / f).stat().st_mtime_ns for f in files}
    again = run_experiment(TINY, out, workers=1, progress=False, report=False)
    assert again["summary"]["auc"] == first["summary"]["auc"]
    assert {f: (out / f).stat().st_mtime_ns for f in files} == before  # nothing redone
    other = dataclasses.replace(TINY, segment=SegmentConfig(size=24))
    with pytest.raises(ValueError, match="another configuration"):
        run_experiment(other, out, workers=1, progress=False)


def test_png_without_a_bit_depth_is_read_on_the_training_scale(run, tmp_path):
    """Stored grey levels: a loose 12-bit PNG reads like its DICOM, not 16 times darker."""
    from osteo_jax.data.dicom import write_dicom
    from osteo_jax.data.folder import read_png, write_png16
    from osteo_jax.data.imageio import read_image
    from osteo_jax.pipeline.predict import training_bits_stored

    out, _ = run
    assert training_bits_stored(out) == 12  # recorded in segments.json by extract_segments
    synthetic = out / "data" / "images" / "S0000.png"
    raw = read_png(synthetic)
    assert read_image(synthetic)[1]["bits_stored_source"] == "sBIT"  # the generator's says 12
    png = tmp_path / "S0000.png"
    write_png16(png, raw)  # the same pixels from a writer that records no bit depth
    dcm = tmp_path / "S0000.dcm"
    write_dicom(dcm, raw, pixel_spacing_mm=204.8 / 192, bits_stored=12)
    on_training, meta = read_image(png, default_bits_stored=12)
    assert meta["bits_stored_source"] == "default"
    np.testing.assert_allclose(on_training, raw / 4095, rtol=1e-6)
    np.testing.assert_allclose(on_training, read_image(dcm)[0], atol=1e-6)
    np.testing.assert_allclose(on_training, read_image(synthetic)[0], atol=1e-7)
    assert read_image(png)[1]["bits_stored"] == 16  # the file alone does not say
    assert read_image(png, bits_stored=16, default_bits_stored=12)[1]["bits_stored"] == 16
