"""The synthetic generator's DICOM output reads back to the same normalised image as its PNG."""

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.data.folder import read_csv
from osteo_jax.data.imageio import read_image
from osteo_jax.data.pipeline import load_seg_arrays

ARGS = ["--subjects", "3", "--size", "64", "--seed", "2", "--workers", "1"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmt")
    out = {}
    for fmt in ("png", "dicom", "dicom-mono1"):
        out[fmt] = root / fmt
        assert main(["synth", *ARGS, "--format", fmt, "--out", str(out[fmt])]) == 0
    return out


@pytest.mark.parametrize("fmt", ["dicom", "dicom-mono1"])
def test_dicom_round_trips_to_the_png_image(folders, fmt):
    png_rows = read_csv(folders["png"] / "images.csv")
    rows = read_csv(folders[fmt] / "images.csv")
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in png_rows]
    for row, png_row in zip(rows, png_rows, strict=True):
        assert row["path"].endswith(".dcm")
        image, meta = read_image(folders[fmt] / row["path"])
        ref, _ = read_image(folders["png"] / png_row["path"], bits_stored=12)
        expected = "MONOCHROME1" if fmt == "dicom-mono1" else "MONOCHROME2"
        assert meta["photometric_interpretation"] == expected
        assert meta["pixel_spacing_mm"] is not None
        np.testing.assert_allclose(image, ref, atol=1e-6)
    # The training loader reads either format to the same arrays.
    a, b = load_seg_arrays(folders["png"], 32), load_seg_arrays(folders[fmt], 32)
    np.testing.assert_allclose(a.images, b.images, atol=1e-5)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_tfds_build_of_a_dicom_folder(folders, tmp_path):
    from osteo_jax.data.tfds_dataset import build_tfds, load_tfds

    build_tfds(folders["dicom-mono1"], tmp_path / "tfds")
    source = load_tfds(tmp_path / "tfds")
    rows = read_csv(folders["dicom-mono1"] / "images.csv")
    assert len(source) == len(rows)
    for record, row in zip(source, rows, strict=True):
        image, _ = read_image(folders["dicom-mono1"] / row["path"])
        assert record["image"].dtype == np.uint16
        np.testing.assert_allclose(record["image"] / 65535.0, image, atol=1e-5)


def test_load_example_and_preview_read_a_dicom_folder(folders, tmp_path):
    from osteo_jax.data.folder import load_example
    from osteo_jax.eval.preview import dataset_preview

    iid = read_csv(folders["dicom-mono1"] / "images.csv")[0]["image_id"]
    ex = load_example(folders["dicom-mono1"], iid)
    ref = load_example(folders["png"], iid)
    assert ex["image"].dtype == np.float32 and ref["image"].dtype == np.uint16
    np.testing.assert_allclose(ex["image"], ref["image"] / 4095.0, atol=1e-6)  # 12 bits stored
    np.testing.assert_array_equal(ex["exact"], ref["exact"])
    assert dataset_preview(folders["dicom-mono1"], tmp_path / "p.png").exists()
