"""End to end through the real CLI: `osteo-jax synth` writes the documented folder."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.config import CLASS_NAMES, CohortConfig, PhysicsConfig, SynthConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import load_example, read_labels, read_png
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort

ARGS = ["--preset", "paper", "--subjects", "6", "--size", "128", "--seed", "3"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "paper"
    assert main(["synth", *ARGS, "--out", str(out), "--workers", "2"]) == 0
    return out


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_layout_and_tables(synth_dir):
    subjects = _rows(synth_dir / "subjects.csv")
    assert len(subjects) == 6
    for col in ("subject_id", "age", "sex", "t_score", "label", "image_path", "pixel_spacing_mm"):
        assert col in subjects[0]
    assert sum(int(s["label"]) for s in subjects) == 2  # round(6 * 59 / 192)
    for s in subjects:
        assert int(s["label"]) == int(float(s["t_score"]) <= -2.5)
        assert float(s["pixel_spacing_mm"]) == pytest.approx(1.6)
        assert (synth_dir / s["image_path"]).is_file()
    images = _rows(synth_dir / "images.csv")
    assert [r["image_id"] for r in images] == [s["subject_id"] for s in subjects]
    oracle = json.loads((synth_dir / "oracle.json").read_text())
    for key in ("image_ceiling_auc", "clinical_ceiling_auc", "image_clinical_ceiling_auc"):
        assert 0.5 <= oracle[key] <= 1 and 0.5 <= oracle["population"][key] <= 1
    assert "oracle_auc" not in oracle  # renamed: hand_latent_auc is not a ceiling
    assert len(_rows(synth_dir / "ceiling.csv")) == 6
    assert oracle["r"] == 0.6 and oracle["prevalence"] == pytest.approx(2 / 6)
    meta = json.loads((synth_dir / "dataset.json").read_text())
    assert meta["classes"] == list(CLASS_NAMES)
    assert meta["annotators"] == ["exact", "annotator_0", "annotator_1", "annotator_2"]
    assert len(_rows(synth_dir / "bones.csv")) == 6 * 7
    assert len(_rows(synth_dir / "annotations.csv")) == 6 * 3


def test_files_read_back_to_the_rendered_arrays(synth_dir):
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=6), physics=PhysicsConfig(size=128), seed=3)
    cohort = sample_cohort(cfg.cohort, seed=3)
    for i in (0, 5):
        rad = render_subject(cohort, i, cfg)
        ex = load_example(synth_dir, str(cohort.subject_id[i]))
        assert ex["image"].dtype == np.uint16 and ex["exact"].dtype == np.uint8
        np.testing.assert_array_equal(ex["image"], rad.image)
        np.testing.assert_array_equal(ex["exact"], rad.exact)
        for m in range(3):
            np.testing.assert_array_equal(ex[f"annotator_{m}"], rad.annotators[m])


def test_output_does_not_depend_on_worker_count(synth_dir, tmp_path):
    out = tmp_path / "serial"
    assert main(["synth", *ARGS, "--out", str(out), "--workers", "1"]) == 0
    for rel in ("images/S0004.png", "masks/annotator_1/S0004.png", "subjects.csv", "bones.csv"):
        assert (out / rel).read_bytes() == (synth_dir / rel).read_bytes(), rel


def test_refuses_non_empty_output_and_keeps_its_files(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["synth", *ARGS, "--out", str(out)]) == 2
    assert str(out) in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert not list(tmp_path.glob(".busy.partial-*"))


def test_readers_name_the_file_on_bad_input(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        read_png(bad)
    with pytest.raises(DatasetError, match="not found"):
        read_png(tmp_path / "missing.png")
    from PIL import Image

    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "ids.png")
    with pytest.raises(DatasetError, match="unknown class id 9"):
        read_labels(tmp_path / "ids.png")


def test_preview_and_help(synth_dir, tmp_path):
    fig = tmp_path / "preview.png"
    assert main(["preview", "--data", str(synth_dir), "--out", str(fig)]) == 0
    from PIL import Image

    with Image.open(fig) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 600
        # Not a blank canvas: the radiographs and the histogram put many distinct colours in.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 1000
    res = subprocess.run(
        [sys.executable, "-m", "osteo_jax.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "synth" in res.stdout and "demo" in res.stdout
