"""TFDS packaging of a dataset folder: built and read back without TensorFlow."""

import importlib.util
import math
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from osteo_jax.config import CohortConfig, PhysicsConfig, SynthConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import (
    IMAGES_CSV,
    SUBJECTS_CSV,
    annotators_of,
    mask_relpath,
    read_csv,
    read_png,
    write_csv,
)
from osteo_jax.data.synth.synthetic import write_dataset
from osteo_jax.data.tfds_builder import MISSING_MASK, OsteoHandXray
from osteo_jax.data.tfds_dataset import build_tfds, load_tfds


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=6), physics=PhysicsConfig(size=64))
    return write_dataset(cfg, tmp_path_factory.mktemp("src") / "ds", workers=1, progress=False)


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfds")
    return out, build_tfds(folder, out)


@pytest.fixture
def edited(folder, tmp_path):
    """A copy of the folder: one mask removed, one subject unlabelled, a split column."""
    src = tmp_path / "edited"
    shutil.copytree(folder, src)
    images = read_csv(src / IMAGES_CSV)
    (src / mask_relpath("annotator_1", images[0]["image_id"])).unlink()
    subjects = read_csv(src / SUBJECTS_CSV)
    subjects[1].update(label="", t_score="")
    for s, split in zip(subjects, ["train", "train", "train", "val", "test", "test"], strict=True):
        s["split"] = split
    write_csv(src / SUBJECTS_CSV, subjects)
    return src


def _text(x):
    return x.decode() if isinstance(x, bytes) else x


def test_tensorflow_is_absent(built):
    assert importlib.util.find_spec("tensorflow") is None
    ds = load_tfds(built[0])
    _ = ds[0]
    assert "tensorflow" not in sys.modules


def test_records_equal_folder(folder, built):
    out, path = built
    assert path == out / "osteo_hand_xray" / "1.0.0"
    ds = load_tfds(out)
    images = read_csv(folder / IMAGES_CSV)
    subjects = {s["subject_id"]: s for s in read_csv(folder / SUBJECTS_CSV)}
    annotators = annotators_of(folder)
    assert len(ds) == len(images) == 6
    assert annotators == ["exact", "annotator_0", "annotator_1", "annotator_2"]
    for i, row in enumerate(images):  # record i = row i of images.csv
        rec = ds[i]
        assert _text(rec["image_id"]) == row["image_id"]
        assert _text(rec["subject_id"]) == row["subject_id"]
        expected = read_png(folder / row["path"])
        assert rec["image"].dtype == np.uint16 and rec["image"].shape == (64, 64)
        assert rec["image"].tobytes() == expected.tobytes()
        assert sorted(rec["masks"]) == sorted(annotators)
        for name in annotators:
            assert rec["has_mask"][name]
            mask = rec["masks"][name]
            assert mask.dtype == np.uint8 and mask.shape == (64, 64)
            np.testing.assert_array_equal(
                mask, read_png(folder / mask_relpath(name, row["image_id"]))
            )
        subj = subjects[row["subject_id"]]
        assert rec["label"] == int(subj["label"])
        assert rec["t_score"] == pytest.approx(float(subj["t_score"]), abs=1e-6)
        assert rec["pixel_spacing_mm"] == pytest.approx(float(row["pixel_spacing_mm"]))
        assert _text(rec["laterality"]) == row["laterality"]
    meta = tfds.builder_from_directory(path).info.metadata
    assert meta["annotators"] == annotators and meta["missing_mask"] == MISSING_MASK


def test_readers_without_the_builder_class(built):
    out, path = built
    by_name = tfds.data_source("osteo_hand_xray", data_dir=out, split="train")
    assert len(by_name) == 6 and _text(by_name[5]["image_id"]) == _text(
        load_tfds(path)[5]["image_id"]
    )
    assert len(load_tfds(out, "train[:50%]")) == 3
    assert set(tfds.builder_from_directory(path).info.splits) == {"train"}


def test_missing_masks_unknown_labels_and_folder_splits(edited, tmp_path):
    path = build_tfds(edited, tmp_path / "out")
    ds = load_tfds(path)
    first = ds[0]
    assert not first["has_mask"]["annotator_1"] and first["has_mask"]["annotator_0"]
    missing = first["masks"]["annotator_1"]
    assert missing.dtype == np.uint8 and missing.shape == first["image"].shape
    assert np.all(missing == MISSING_MASK)
    assert ds[1]["label"] == -1 and math.isnan(ds[1]["t_score"])
    assert ds[2]["label"] in (0, 1) and math.isfinite(ds[2]["t_score"])
    splits = tfds.builder_from_directory(path).info.splits
    assert {k: splits[k].num_examples for k in splits} == {
        "train": 6,
        "split_train": 3,
        "split_val": 1,
        "split_test": 2,
    }
    subjects = read_csv(edited / SUBJECTS_CSV)
    for name in ("train", "val", "test"):
        part = load_tfds(path, f"split_{name}")
        want = [s["subject_id"] for s in subjects if s["split"] == name]
        assert [_text(part[i]["subject_id"]) for i in range(len(part))] == want


def test_build_again_is_noop_other_data_refused(folder, edited, built):
    out, path = built
    shard = next(path.glob("*.array_record*"))
    before = shard.stat().st_mtime_ns
    assert build_tfds(folder, out) == path
    assert shard.stat().st_mtime_ns == before
    with pytest.raises(DatasetError, match="other data"):
        build_tfds(edited, out)
    assert shard.stat().st_mtime_ns == before


def test_overwrite_rebuilds(folder, edited, tmp_path):
    out = tmp_path / "out"
    build_tfds(folder, out)
    path = build_tfds(edited, out, overwrite=True)
    assert "split_test" in tfds.builder_from_directory(path).info.splits
    assert load_tfds(out)[1]["label"] == -1


def _no_csv(src):
    (src / SUBJECTS_CSV).unlink()


def _bad_split(src):
    rows = read_csv(src / SUBJECTS_CSV)
    for r in rows:
        r["split"] = "validation"
    write_csv(src / SUBJECTS_CSV, rows)


def _unknown_subject(src):
    rows = read_csv(src / IMAGES_CSV)
    rows[0]["subject_id"] = "nobody"
    write_csv(src / IMAGES_CSV, rows)


def _no_image(src):
    next((src / "images").iterdir()).unlink()


@pytest.mark.parametrize(
    "breaks, message",
    [
        (None, "not a directory"),
        (_no_csv, "subjects.csv: file not found"),
        (_bad_split, "unknown split 'validation'"),
        (_unknown_subject, r"unknown subject_id 'nobody' \(not in subjects.csv\)"),
        (_no_image, "image file .* not found"),
    ],
)
def test_bad_manual_dir(folder, tmp_path, breaks, message):
    src = tmp_path / "src"
    if breaks is not None:
        shutil.copytree(folder, src)
        breaks(src)
    with pytest.raises(DatasetError, match=message):
        build_tfds(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_builder_checks_its_annotators(folder, tmp_path):
    builder = OsteoHandXray(annotators=["exact"], data_dir=tmp_path, file_format="array_record")
    with pytest.raises(DatasetError, match="annotators"):
        builder.download_and_prepare(
            download_dir=tmp_path / "dl",
            download_config=tfds.download.DownloadConfig(manual_dir=folder),
        )
    assert not list((tmp_path / "osteo_hand_xray").glob("1.0.0*"))


def test_load_without_build_raises(tmp_path):
    with pytest.raises(DatasetError, match="run build_tfds"):
        load_tfds(tmp_path)


def test_build_tfds_cli(folder, tmp_path, capsys):
    from osteo_jax.cli import main

    out = tmp_path / "tfds"
    assert main(["build-tfds", "--data", str(folder), "--out", str(out)]) == 0
    assert "6 records" in capsys.readouterr().out
    assert len(load_tfds(out)) == 6
    assert main(["build-tfds", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
