"""validate_folder: a valid synthetic folder passes; each broken copy fails with a clear message."""

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteo_jax.config import CohortConfig, PhysicsConfig, SynthConfig
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import write_labels, write_png16
from osteo_jax.data.synth.synthetic import write_dataset
from osteo_jax.data.validate import ValidationReport, validate_folder


@pytest.fixture(scope="module")
def valid_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("valid") / "ds"
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=4), physics=PhysicsConfig(size=64))
    write_dataset(cfg, out, workers=1, progress=False)
    return out


@pytest.fixture
def ds(valid_dir, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(valid_dir, dst)
    return dst


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict], fieldnames=None) -> None:
    fieldnames = fieldnames or list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)


def _edit(csv_path: Path, index: int, **changes) -> None:
    """Sets columns of data row ``index`` (0-based), adding columns as needed."""
    rows = _read(csv_path)
    rows[index].update(changes)
    fields = list(rows[0]) + [k for k in changes if k not in rows[0]]
    for r in rows:
        for k in fields:
            r.setdefault(k, "")
    _write(csv_path, rows, fields)


def _fails(ds: Path, *words: str) -> str:
    with pytest.raises(DatasetError) as e:
        validate_folder(ds)
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_valid_folder_passes_and_is_untouched(ds):
    before = _digest(ds)
    mtimes = {p: p.stat().st_mtime_ns for p in ds.rglob("*")}
    rep = validate_folder(ds)
    assert isinstance(rep, ValidationReport)
    assert (rep.n_subjects, rep.n_images) == (4, 4)
    assert rep.annotators[0] == "exact" and len(rep.annotators) == 4
    assert all(n == 4 for n in rep.masks.values())
    assert rep.warnings == ()
    assert validate_folder(ds, check_images=False).n_images == 4
    assert _digest(ds) == before
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*")} == mtimes


@pytest.mark.parametrize("name", ["subjects.csv", "images.csv"])
def test_missing_csv(ds, name):
    (ds / name).unlink()
    _fails(ds, name, "not found")


@pytest.mark.parametrize(
    ("name", "column"), [("subjects.csv", "subject_id"), ("images.csv", "path")]
)
def test_missing_column(ds, name, column):
    rows = _read(ds / name)
    for r in rows:
        del r[column]
    _write(ds / name, rows)
    _fails(ds, name, "missing required column", column, "line 1")


def test_missing_label_columns(ds):
    rows = _read(ds / "subjects.csv")
    for r in rows:
        del r["label"], r["t_score"]
    _write(ds / "subjects.csv", rows)
    _fails(ds, "subjects.csv", "missing required column", "label")


def test_missing_image_file(ds):
    (ds / "images" / "S0002.png").unlink()
    _fails(ds, "images.csv", "data row 3", "line 4", "S0002.png", "not found")


def test_corrupt_image(ds):
    p = ds / "images" / "S0001.png"
    p.write_bytes(p.read_bytes()[:200])  # truncated PNG
    _fails(ds, "images.csv", "data row 2", "S0001.png", "unreadable")


def test_rgb_image(ds):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ds / "images" / "S0001.png")
    _fails(ds, "S0001.png", "data row 2", "single-channel")


def test_wrong_dimensionality(ds):
    write_png16(ds / "images" / "S0001.png", np.zeros((1, 64), np.uint16))
    _fails(ds, "S0001.png", "data row 2", "dimensionality")


def test_image_over_bits_stored(ds):
    write_png16(ds / "images" / "S0001.png", np.full((64, 64), 60000, np.uint16))
    _fails(ds, "S0001.png", "12-bit range")


def test_mask_shape_mismatch(ds):
    write_labels(ds / "masks" / "annotator_1" / "S0003.png", np.ones((32, 64), np.uint8))
    _fails(ds, "annotator_1/S0003.png", "data row 4", "does not match")


def test_mask_unknown_class(ds):
    m = np.ones((64, 64), np.uint8)
    m[0, 0] = 9
    write_labels(ds / "masks" / "exact" / "S0000.png", m)
    _fails(ds, "exact/S0000.png", "unknown class id", "[9]")


def test_mask_empty(ds):
    write_labels(ds / "masks" / "annotator_0" / "S0002.png", np.zeros((64, 64), np.uint8))
    _fails(ds, "annotator_0/S0002.png", "empty mask")


def test_unknown_subject(ds):
    _edit(ds / "images.csv", 1, subject_id="S9999")
    _fails(ds, "images.csv", "data row 2", "line 3", "unknown subject_id", "S9999")


def test_duplicate_subject(ds):
    _edit(ds / "subjects.csv", 2, subject_id="S0000")
    _fails(ds, "subjects.csv", "data row 3", "duplicate subject_id")


def test_duplicate_image(ds):
    _edit(ds / "images.csv", 3, image_id="S0001")
    _fails(ds, "images.csv", "data row 4", "duplicate image_id")


def test_unknown_label_is_a_warning(ds):
    # One rule for every reader: an unlabelled subject is used for segmentation and left out
    # of classification (label -1), as the TFDS build and the protocol treat it.
    _edit(ds / "subjects.csv", 1, label="", t_score="")
    rep = validate_folder(ds)
    assert any("without label or t_score" in w for w in rep.warnings)


def test_label_from_t_score_only_is_fine(ds):
    _edit(ds / "subjects.csv", 1, label="")
    assert validate_folder(ds, check_images=False).n_subjects == 4


@pytest.mark.parametrize("label", ["2", "-1", "yes", "0.5"])
def test_label_out_of_range(ds, label):
    _edit(ds / "subjects.csv", 0, label=label)
    _fails(ds, "subjects.csv", "data row 1", "out of range")


def test_t_score_not_a_number(ds):
    _edit(ds / "subjects.csv", 0, t_score="low")
    _fails(ds, "subjects.csv", "data row 1", "not a number")


@pytest.mark.parametrize(("label", "t"), [("1", "-1.0"), ("0", "-2.5"), ("0", "-3.1")])
def test_label_contradicts_who(ds, label, t):
    _edit(ds / "subjects.csv", 2, label=label, t_score=t)
    _fails(ds, "subjects.csv", "data row 3", "contradicts the WHO cut")


def test_who_boundary_is_osteoporosis(ds):
    _edit(ds / "subjects.csv", 2, label="1", t_score="-2.5")
    validate_folder(ds, check_images=False)


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("/etc/passwd", "absolute path"),
        ("../outside.png", "escapes the dataset root"),
        ("images/../../outside.png", "escapes the dataset root"),
    ],
)
def test_path_escapes_root(ds, path, word):
    shutil.copy(ds / "images" / "S0000.png", ds.parent / "outside.png")
    _edit(ds / "images.csv", 0, path=path)
    _fails(ds, "images.csv", "data row 1", word)


def test_inner_dotdot_is_fine(ds):
    _edit(ds / "images.csv", 0, path="masks/../images/S0000.png")
    validate_folder(ds, check_images=False)


def test_split_conflict_with_subjects_csv(ds):
    _edit(ds / "subjects.csv", 1, split="train")
    _edit(ds / "images.csv", 1, split="test")
    _fails(ds, "images.csv", "data row 2", "two splits")


def test_split_conflict_between_images(ds):
    rows = _read(ds / "images.csv")
    extra = dict(rows[0], image_id="S0000b", split="val")
    rows[0]["split"] = "train"
    for r in rows[1:]:
        r["split"] = "train"
    _write(ds / "images.csv", [*rows, extra])
    _fails(ds, "images.csv", "data row 5", "two splits", "data row 1")


@pytest.mark.parametrize("name", ["subjects.csv", "images.csv"])
def test_unknown_split(ds, name):
    _edit(ds / name, 0, split="holdout")
    _fails(ds, name, "data row 1", "unknown split")


def test_consistent_splits_pass(ds):
    rows = _read(ds / "images.csv")
    extra = dict(rows[0], image_id="S0000b")
    _write(ds / "images.csv", [*rows, extra])
    for i, s in enumerate(["train", "train", "val", "test", "train"]):
        _edit(ds / "images.csv", i, split=s)
    _edit(ds / "subjects.csv", 0, split="train")
    rep = validate_folder(ds)
    assert rep.n_images == 5
    assert any("also used by" in w for w in rep.warnings)


def test_warnings_orphan_mask_and_subject_without_images(ds):
    rows = _read(ds / "images.csv")
    _write(ds / "images.csv", rows[:3])
    rep = validate_folder(ds)
    assert rep.n_images == 3
    assert rep.masks["exact"] == 3
    assert any("without images" in w for w in rep.warnings)
    assert any("matching no image_id" in w for w in rep.warnings)


def test_validate_cli(tmp_path, capsys):
    from osteo_jax.cli import main

    assert main(["validate", "--data", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
