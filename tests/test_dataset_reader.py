"""One dataset reader: every command refuses what `validate` refuses, before writing anything."""

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.config import CohortConfig, PhysicsConfig, SynthConfig
from osteo_jax.data.dataset import read_dataset
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import read_csv, write_labels
from osteo_jax.data.imageio import read_image
from osteo_jax.data.synth.synthetic import write_dataset


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """4 subjects, 32 px, masks of 'exact' and 3 annotators."""
    cfg = SynthConfig(cohort=CohortConfig(n_subjects=4), physics=PhysicsConfig(size=32))
    return write_dataset(cfg, tmp_path_factory.mktemp("tiny") / "ds", workers=1, progress=False)


@pytest.fixture
def ds(tiny_folder, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_folder, tmp_path / "ds"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict], *, encoding="utf-8", delimiter=",") -> None:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)


def _set_path(ds: Path, index: int, path: str) -> None:
    rows = _rows(ds / "images.csv")
    rows[index]["path"] = path
    _write(ds / "images.csv", rows)


def _outside_copy(ds: Path) -> Path:
    out = ds.parent / "outside.png"
    shutil.copy(ds / "images" / "S0000.png", out)
    return out


def _absolute_path(ds):
    _set_path(ds, 0, str(_outside_copy(ds)))


def _dotdot_path(ds):
    _outside_copy(ds)
    _set_path(ds, 0, "../outside.png")


def _link_outside(ds):
    target = _outside_copy(ds)
    (ds / "images" / "S0000.png").unlink()
    os.symlink(target, ds / "images" / "S0000.png")


def _all_masks_empty(ds):
    for p in (ds / "masks").rglob("*.png"):
        write_labels(p, np.zeros((32, 32), np.uint8))


def _bad_image_id(ds):
    rows = _rows(ds / "images.csv")
    rows[1]["image_id"] = "S0001/x"
    _write(ds / "images.csv", rows)


def _utf16(ds):
    _write(ds / "images.csv", _rows(ds / "images.csv"), encoding="utf-16")


def _semicolons(ds):
    _write(ds / "subjects.csv", _rows(ds / "subjects.csv"), delimiter=";")


def _latin1(ds):
    rows = _rows(ds / "subjects.csv")
    rows[2]["sex"] = "Féminin"
    _write(ds / "subjects.csv", rows, encoding="latin-1")


DEMO = Path(__file__).parents[1] / "experiments" / "demo.py"
BROKEN = {
    "absolute": (_absolute_path, ["images.csv", "data row 1", "absolute path"]),
    "dotdot": (_dotdot_path, ["images.csv", "data row 1", "escapes the dataset root"]),
    "link": (_link_outside, ["data row 1", "images/S0000.png", "symbolic link", "outside"]),
    "empty_masks": (_all_masks_empty, ["S0000.png", "empty mask"]),
    "bad_id": (_bad_image_id, ["images.csv", "data row 2", "not usable as a file name"]),
    "utf16": (_utf16, ["images.csv", "UTF-16", "save it as UTF-8"]),
    "semicolons": (_semicolons, ["subjects.csv", "semicolon-separated"]),
    "latin1": (_latin1, ["subjects.csv", "line 4", "not UTF-8"]),
}


def _commands(ds: Path, out: Path) -> dict[str, list[str]]:
    return {
        "train-seg": ["train-seg", "--data", str(ds), "--out", str(out), "--max-steps", "1"],
        "segment": ["segment", "--data", str(ds), "--source", "raw", "--out", str(out)],
        "build-tfds": ["build-tfds", "--data", str(ds), "--out", str(out)],
        "run": ["run", "--config", str(DEMO), "--data", str(ds), "--out", str(out)],
        "validate": ["validate", "--data", str(ds)],
    }


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("command", ["train-seg", "segment", "build-tfds", "run", "validate"])
def test_every_command_refuses_before_writing(ds, tmp_path, capsys, case, command):
    breaks, words = BROKEN[case]
    breaks(ds)
    out = tmp_path / "out"
    assert main(_commands(ds, out)[command]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"osteo-jax {command}: error: ") and "\n" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_bom_csv_is_accepted_by_every_reader(ds, tmp_path, capsys):
    from osteo_jax.data.pipeline import load_seg_arrays
    from osteo_jax.data.sources import FolderSource
    from osteo_jax.data.tfds_dataset import build_tfds, load_tfds
    from osteo_jax.pipeline.extract import extract_segments

    for name in ("subjects.csv", "images.csv"):
        _write(ds / name, _rows(ds / name), encoding="utf-8-sig")
        assert (ds / name).read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_csv(ds / "images.csv")[0]["image_id"] == "S0000"
    assert len(read_dataset(ds).rows) == 4
    assert len(FolderSource(ds, 16)) == 4
    assert load_seg_arrays(ds, 16, workers=1).images.shape == (4, 16, 16, 1)
    assert len(load_tfds(build_tfds(ds, tmp_path / "tfds"))) == 4
    extract_segments(ds, tmp_path / "seg", source="exact", workers=1)
    assert main(["validate", "--data", str(ds)]) == 0
    assert "OK - 4 subjects, 4 images" in capsys.readouterr().out


def test_opt_in_lets_an_outside_path_through(ds, tmp_path, capsys):
    from osteo_jax.data.sources import FolderSource

    _absolute_path(ds)
    with pytest.raises(DatasetError, match="absolute path"):
        FolderSource(ds, 16)
    src = FolderSource(ds, 16, allow_outside_paths=True)
    assert src[0]["image"].shape == (16, 16, 1)
    assert main(["validate", "--data", str(ds), "--allow-outside-paths"]) == 0
    out = tmp_path / "seg"
    assert main(["segment", "--data", str(ds), "--source", "raw", "--out", str(out)]) == 2
    argv = ["segment", "--data", str(ds), "--source", "raw", "--out", str(out)]
    assert main([*argv, "--allow-outside-paths"]) == 0
    assert (out / "segments.csv").exists()


def test_link_inside_the_root_is_fine(ds):
    (ds / "images" / "S0000.png").rename(ds / "moved.png")
    os.symlink(ds / "moved.png", ds / "images" / "S0000.png")
    assert len(read_dataset(ds).rows) == 4


def test_images_without_masks_are_named_not_silently_dropped(ds):
    from osteo_jax.data.sources import FolderSource

    for p in (ds / "masks").glob("*/S0001.png"):
        p.unlink()
    src = FolderSource(ds, 16)
    assert len(src) == 3 and src.unlabelled == ("S0001",)


def test_no_masks_at_all_is_refused_for_training(ds):
    from osteo_jax.data.sources import FolderSource

    shutil.rmtree(ds / "masks")
    assert len(read_dataset(ds).rows) == 4  # fine to read (segment --source raw) ...
    with pytest.raises(DatasetError, match="no mask folders found"):
        FolderSource(ds, 16)  # ... not to train a segmenter on


def test_read_dataset_is_cached_until_a_file_changes(ds):
    a = read_dataset(ds)
    assert read_dataset(ds) is a
    write_labels(ds / "masks" / "exact" / "S0002.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match="S0002.png.*empty mask"):
        read_dataset(ds)


def test_stored_grey_levels_read_on_the_folders_bit_depth(tiny_folder, tmp_path):
    """12-bit PNGs are scaled by dataset.json's bits_stored, as their DICOM would be.

    The generator also writes sBIT, so a loose PNG of the folder reads the same on its own.
    """
    from osteo_jax.config import SegmentConfig
    from osteo_jax.data.folder import read_labels, read_png
    from osteo_jax.data.segments import cut_segments, load_segments
    from osteo_jax.pipeline.extract import extract_segments

    index = read_dataset(tiny_folder)
    assert index.bits_stored == 12
    raw = [read_png(index.path(r)).astype(np.float64) for r in index.rows]
    assert max(im.max() for im in raw) > 255  # 12-bit values, stored in 16-bit PNGs
    for row, im in zip(index.rows, raw, strict=True):
        np.testing.assert_allclose(index.read_image(row)[0], im / 4095, rtol=1e-6)
        loose, meta = read_image(index.path(row))
        assert (meta["bits_stored"], meta["bits_stored_source"]) == (12, "sBIT")
        np.testing.assert_allclose(loose, im / 4095, rtol=1e-6)
    cfg = SegmentConfig(size=8, intensity="stored", min_area_mm2=0.0, dilate_mm=0.0)
    seg = load_segments(
        extract_segments(tiny_folder, tmp_path / "seg", source="exact", cfg=cfg, workers=1)
    )
    for k, (row, im) in enumerate(zip(index.rows, raw, strict=True)):
        labels = read_labels(index.mask_path("exact", row.image_id))
        spacing = None if np.isnan(row.pixel_spacing_mm) else row.pixel_spacing_mm
        ref = cut_segments(im / 4095, labels, spacing_mm=spacing, cfg=cfg)
        np.testing.assert_allclose(seg.images[k], ref.images, atol=1e-3)  # float16 storage
    assert seg.valid.any() and seg.images.max() > 0.1  # bone on the 12-bit scale, not /65535
