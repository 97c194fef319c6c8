"""DICOM / PNG / TIFF reading on real computed radiographs (pydicom-data) and on files made here.

pydicom-data 1.0.0 holds two CR studies, each uncompressed (UNCR), JPEG 2000 lossless (J2KR) and
JPEG 2000 lossy (J2KI): RG1 (chest PA, 1955x1841, 15-bit, MONOCHROME1, PixelSpacing 0\\0) and
RG3 (lower leg, 1760x1760, 10-bit, MONOCHROME1, no spacing, Laterality R). Both carry a window
(RG1 15000/30000, RG3 550/1024). There is no RG2.
"""

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
)

from osteo_jax.data.dicom import PIXEL_RANGE_PERCENTILES, read_dicom, write_dicom
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import write_png16
from osteo_jax.data.imageio import read_image, resample_to_spacing

STUDIES = ("RG1", "RG3")
SYNTAX = {"UNCR": ExplicitVRLittleEndian, "J2KR": JPEG2000Lossless, "J2KI": JPEG2000}
# Measured with pylibjpeg-openjpeg 2.6.0 (display units, [0, 1]):
# RG1 mean 0.0017 / max 0.0134, RG3 mean 0.0008 / max 0.0088.
LOSSY_MEAN_TOL, LOSSY_MAX_TOL = 0.003, 0.02


def _testdata(name):
    path = get_testdata_file(name, download=False)  # never fetch anything at run time
    assert path is not None, f"{name} missing: install pydicom-data"
    return path


@pytest.fixture(scope="module")
def real():
    """All six real files read once: {(study, kind): (image, meta)}."""
    return {
        (s, k): read_dicom(_testdata(f"{s}_{k}.dcm"))
        for s in STUDIES
        for k in ("UNCR", "J2KR", "J2KI")
    }


@pytest.fixture(scope="module")
def rg3_crop_ds():
    """A 40x340 crop of RG3_UNCR (open beam | soft tissue | tibia), as an editable Dataset."""
    ds = pydicom.dcmread(_testdata("RG3_UNCR.dcm"))
    crop = np.ascontiguousarray(ds.pixel_array[380:420, 560:900])
    ds.PixelData = crop.tobytes()
    ds.Rows, ds.Columns = crop.shape
    return ds


@pytest.fixture
def crop(rg3_crop_ds):
    return copy.deepcopy(rg3_crop_ds)


def _save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def _raises_naming(path, fn=read_dicom, match=None):
    with pytest.raises(DatasetError, match=match) as err:
        fn(path)
    assert str(path) in str(err.value)
    return str(err.value)


# ---------------------------------------------------------------- real computed radiographs


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("kind", ["UNCR", "J2KR", "J2KI"])
def test_real_files_decode_with_meta(real, study, kind):
    image, meta = real[study, kind]
    shape = (1955, 1841) if study == "RG1" else (1760, 1760)
    assert image.shape == shape and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert meta["transfer_syntax_uid"] == SYNTAX[kind]
    assert meta["photometric_interpretation"] == "MONOCHROME1" and meta["inverted"]
    assert meta["bits_stored"] == (15 if study == "RG1" else 10)
    assert (meta["rows"], meta["cols"]) == shape
    assert meta["voi"] == "window"
    # RG1 has PixelSpacing 0\0 (unknown), RG3 none at all.
    assert meta["pixel_spacing_mm"] is None and meta["pixel_spacing_source"] is None
    assert meta["laterality"] == (None if study == "RG1" else "R")
    assert meta["sop_instance_uid"].startswith("1.3.6.1.4.1.5962.")


@pytest.mark.parametrize("study", STUDIES)
def test_jpeg2000_lossless_is_identical(real, study):
    np.testing.assert_array_equal(real[study, "J2KR"][0], real[study, "UNCR"][0])


@pytest.mark.parametrize("study", STUDIES)
def test_jpeg2000_lossy_is_close(real, study):
    err = np.abs(real[study, "J2KI"][0].astype(np.float64) - real[study, "UNCR"][0])
    assert 0 < err.max() < LOSSY_MAX_TOL  # lossy really differs, but little
    assert err.mean() < LOSSY_MEAN_TOL


@pytest.mark.parametrize("kind", ["J2KR", "J2KI"])
def test_pinned_jpeg2000_decoder_agrees_with_pillow(kind):
    # pylibjpeg-openjpeg (pinned) is the decoder pydicom uses; Pillow's bundled OpenJPEG is the
    # independent reference.
    path = _testdata(f"RG3_{kind}.dcm")
    ours = pixel_array(path, decoding_plugin="pylibjpeg")
    assert ours.shape == (1760, 1760) and ours.dtype == np.uint16
    np.testing.assert_array_equal(ours, pixel_array(path, decoding_plugin="pillow"))


@pytest.mark.parametrize("study", STUDIES)
def test_monochrome1_display_decreases_with_stored_value(real, study):
    # The definition of MONOCHROME1: a larger stored value displays darker. Inside the window
    # the map is linear, so display and stored values correlate at exactly -1.
    raw = pydicom.dcmread(_testdata(f"{study}_UNCR.dcm")).pixel_array[::7, ::7].astype(float)
    out = real[study, "UNCR"][0][::7, ::7]
    inside = (out > 0.001) & (out < 0.999)
    assert np.corrcoef(raw[inside], out[inside])[0, 1] < -0.999999


def _patch(a, r, c, h=16):
    return a[r - h : r + h, c - h : c + h]


def test_monochrome1_bone_bright_rg3(real):
    # Image corners are no test here: RG3's left and right thirds are collimator-masked,
    # stored 0, and display white like a CR viewer shows them. Instead compare patches in
    # one row across the exposed field, whose stored values match DATA_PHYSICS.md:
    # open beam ~986 DN, soft tissue ~676 DN, tibial shaft ~242 DN.
    raw = pydicom.dcmread(_testdata("RG3_UNCR.dcm")).pixel_array
    out = real["RG3", "UNCR"][0]
    where = {"open_beam": (400, 580), "soft_tissue": (400, 700), "tibia": (400, 875)}
    stored = {k: _patch(raw, *rc).mean() for k, rc in where.items()}
    shown = {k: _patch(out, *rc).mean() for k, rc in where.items()}
    assert 950 < stored["open_beam"] < 1023
    assert 550 < stored["soft_tissue"] < 850
    assert 150 < stored["tibia"] < 470
    assert shown["tibia"] > shown["soft_tissue"] + 0.2 > shown["open_beam"] + 0.4
    assert shown["open_beam"] < 0.1  # the open beam is nearly black


def test_monochrome1_bone_bright_rg1(real):
    # Chest PA: the spine/mediastinum (stored ~3600 DN) attenuates far more than the
    # aerated lung (~14500 DN) and must display brighter.
    raw = pydicom.dcmread(_testdata("RG1_UNCR.dcm")).pixel_array
    out = real["RG1", "UNCR"][0]
    lung, spine = (800, 460), (800, 940)
    assert _patch(raw, *spine).mean() < 5000 < 12000 < _patch(raw, *lung).mean()
    assert _patch(out, *spine).mean() > _patch(out, *lung).mean() + 0.3


# ---------------------------------------------------------------- edited copies of RG3


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(
    "edit, expected, source",
    [
        ({}, None, None),
        ({"PixelSpacing": [0, 0]}, None, None),
        ({"PixelSpacing": [-0.1, 0.1]}, None, None),
        ({"PixelSpacing": "0.1"}, None, None),  # one value: malformed
        ({"PixelSpacing": "nan\\nan"}, None, None),
        ({"PixelSpacing": [0.15, 0.16]}, (0.15, 0.16), "PixelSpacing"),
        ({"ImagerPixelSpacing": [0.1, 0.1]}, (0.1, 0.1), "ImagerPixelSpacing"),
        (
            {"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.2, 0.2]},
            (0.2, 0.2),
            "ImagerPixelSpacing",
        ),
    ],
)
def test_pixel_spacing(crop, tmp_path, edit, expected, source):
    for keyword, value in edit.items():
        setattr(crop, keyword, value)
    image, meta = read_dicom(_save(crop, tmp_path / "x.dcm"))
    assert image.shape == (40, 340)
    assert meta["pixel_spacing_mm"] == expected and meta["pixel_spacing_source"] == source


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_malformed_pixel_spacing_is_none(crop, tmp_path):
    # A DS string that is not a number cannot be assigned through pydicom; write it raw.
    tag = Tag("PixelSpacing")
    crop[tag] = RawDataElement(tag, "DS", 8, b"abc\\def ", 0, False, True)
    _, meta = read_dicom(_save(crop, tmp_path / "x.dcm"))
    assert meta["pixel_spacing_mm"] is None


def _pixel_range_display(raw):
    lo, hi = np.percentile(raw, PIXEL_RANGE_PERCENTILES)
    return np.clip((raw - lo) / (hi - lo), 0, 1)


def test_pixel_range_without_window(crop, tmp_path):
    raw = crop.pixel_array.astype(np.float64)
    del crop.WindowCenter, crop.WindowWidth
    image, meta = read_dicom(_save(crop, tmp_path / "x.dcm"))
    assert meta["voi"] == "pixel_range"
    lo, hi = np.percentile(raw, PIXEL_RANGE_PERCENTILES)
    assert 0 < lo < hi < 1023  # the crop fills only part of the 10-bit range
    np.testing.assert_allclose(image, 1 - _pixel_range_display(raw), atol=1e-6)
    assert image.min() == 0 and image.max() == 1


def test_constant_image_without_window_uses_stored_range(crop, tmp_path):
    crop.PixelData = np.full((crop.Rows, crop.Columns), 300, np.uint16).tobytes()
    del crop.WindowCenter, crop.WindowWidth
    image, meta = read_dicom(_save(crop, tmp_path / "x.dcm"))
    assert meta["voi"] == "stored_range"
    np.testing.assert_allclose(image, 1 - 300 / 1023, atol=1e-7)


def test_rescale_applies_before_window(crop, tmp_path):
    # LINEAR_EXACT in rescaled units 2x: center 1100, width 2048 is the same window as
    # 550 / 1024 in stored units, so the display must not change.
    raw = crop.pixel_array.astype(np.float64)
    crop.VOILUTFunction = "LINEAR_EXACT"
    crop.RescaleSlope, crop.RescaleIntercept = 2, 0
    crop.WindowCenter, crop.WindowWidth = 1100, 2048
    image, _ = read_dicom(_save(crop, tmp_path / "x.dcm"))
    expected = 1 - np.clip((raw - 550) / 1024 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_voi_lut_sequence(crop, tmp_path):
    # A gamma VOI LUT declared 16-bit but holding 12-bit values: the output range is the
    # LUT's own extremes, so its top maps to display 1 (0 after MONOCHROME1 inversion).
    raw = crop.pixel_array.astype(np.int64)
    lut = np.rint(4095 * (np.arange(1024) / 1023) ** 0.5).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [1024, 0, 16])  # ambiguous VRs: name them
    item.add_new("LUTData", "US", lut.tolist())
    crop.VOILUTSequence = [item]
    image, meta = read_dicom(_save(crop, tmp_path / "x.dcm"))
    assert meta["voi"] == "lut"
    np.testing.assert_allclose(image, 1 - lut[raw] / 4095, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("shape", [None, "IDENTITY", "INVERSE"])
def test_inverted_exactly_once(crop, tmp_path, photometric, shape):
    # Rule: invert iff MONOCHROME1 or INVERSE (never twice for MONOCHROME1 + INVERSE).
    raw = crop.pixel_array.astype(np.float64)
    del crop.WindowCenter, crop.WindowWidth
    crop.PhotometricInterpretation = photometric
    if shape is not None:
        crop.PresentationLUTShape = shape
    image, meta = read_dicom(_save(crop, tmp_path / "x.dcm"))
    inverted = photometric == "MONOCHROME1" or shape == "INVERSE"
    assert meta["inverted"] is inverted and meta["presentation_lut_shape"] == shape
    shown = _pixel_range_display(raw)
    np.testing.assert_allclose(image, 1 - shown if inverted else shown, atol=1e-6)


# ---------------------------------------------------------------- write_dicom round trips


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("spacing", [None, 0.2, (0.1, 0.15)])
def test_write_dicom_round_trip(rng, tmp_path, photometric, spacing):
    src = rng.integers(0, 4096, size=(24, 16)).astype(np.uint16)
    src[0, 0], src[0, 1] = 0, 4095
    path = tmp_path / "s0001_L.dcm"
    write_dicom(path, src, photometric=photometric, pixel_spacing_mm=spacing, laterality="L")
    image, meta = read_image(path)
    assert image.shape == src.shape and image.dtype == np.float32
    np.testing.assert_allclose(image, src / 4095, atol=1e-6)
    np.testing.assert_array_equal(np.rint(image * 4095).astype(np.uint16), src)
    assert meta["photometric_interpretation"] == photometric
    assert meta["inverted"] is (photometric == "MONOCHROME1")
    assert meta["bits_stored"] == 12 and meta["laterality"] == "L"
    expected = None if spacing is None else (spacing, spacing) if np.isscalar(spacing) else spacing
    assert meta["pixel_spacing_mm"] == expected
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPClassUID == SecondaryCaptureImageStorage and ds.ConversionType == "SYN"
    stored = ds.pixel_array
    np.testing.assert_array_equal(stored, 4095 - src if photometric == "MONOCHROME1" else src)


def test_write_dicom_is_reproducible(rng, tmp_path):
    src = rng.integers(0, 1024, size=(8, 8)).astype(np.uint16)
    a, b, c = tmp_path / "a.dcm", tmp_path / "b.dcm", tmp_path / "c.dcm"
    write_dicom(a, src, photometric="MONOCHROME1", bits_stored=10, identifier="s7")
    write_dicom(b, src, photometric="MONOCHROME1", bits_stored=10, identifier="s7")
    write_dicom(c, src, photometric="MONOCHROME1", bits_stored=10, identifier="s8")
    assert a.read_bytes() == b.read_bytes()
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in (a, c)]
    assert uids[0] != uids[1] and all(pydicom.uid.UID(u).is_valid for u in uids)


def test_write_dicom_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="exceeds 12 bits"):
        write_dicom(tmp_path / "x.dcm", np.full((4, 4), 4096, np.uint16))


# ---------------------------------------------------------------- failures name the file


def test_missing_file(tmp_path):
    for fn in (read_dicom, read_image):
        _raises_naming(tmp_path / "absent.dcm", fn, "file not found")


def test_not_dicom(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("not an image\n" * 20)
    _raises_naming(text, read_dicom, "not a DICOM")
    _raises_naming(text, read_image, "not a DICOM")
    png = tmp_path / "x.png"
    write_png16(png, np.zeros((4, 4), np.uint16))
    _raises_naming(png, read_dicom, "not a DICOM")
    other = tmp_path / "x.bin"
    other.write_bytes(b"\x00" * 200)
    _raises_naming(other, read_image, "unsupported image format")


@pytest.mark.parametrize(
    "name, fraction", [("RG3_UNCR", 0.0001), ("RG3_UNCR", 0.6), ("RG3_J2KR", 0.5)]
)
def test_truncated_real_file(tmp_path, name, fraction):
    data = Path(_testdata(f"{name}.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: int(len(data) * fraction)])  # in the header, in the pixels
    _raises_naming(path, read_dicom)
    _raises_naming(path, read_image)


def test_no_pixel_data(crop, tmp_path):
    del crop.PixelData
    _raises_naming(_save(crop, tmp_path / "x.dcm"), match="no pixel data")


def test_undecodable_jpeg2000(tmp_path):
    ds = pydicom.dcmread(_testdata("RG3_J2KI.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # a J2K header, no image
    _raises_naming(_save(ds, tmp_path / "x.dcm"), match="cannot decode")


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_non_finite_rescale(crop, tmp_path):
    crop.RescaleSlope, crop.RescaleIntercept = "NaN", 0
    _raises_naming(_save(crop, tmp_path / "x.dcm"), match="non-finite")


def _synthetic_ds(arr, photometric, bits):
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.set_pixel_data(arr, photometric, bits)
    return ds


def test_rgb_and_multiframe_dicom(tmp_path):
    rgb = _synthetic_ds(np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    _raises_naming(_save(rgb, tmp_path / "rgb.dcm"), match="not grayscale")
    frames = _synthetic_ds(np.zeros((2, 8, 8), np.uint16), "MONOCHROME2", 12)
    _raises_naming(_save(frames, tmp_path / "frames.dcm"), match="2 frame")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_colour_png(tmp_path, mode):
    path = tmp_path / "colour.png"
    Image.new(mode, (8, 8)).save(path)
    _raises_naming(path, read_image, "single-channel")


def test_multipage_tiff(tmp_path):
    path = tmp_path / "pages.tif"
    pages = [Image.fromarray(np.zeros((8, 8), np.uint16)) for _ in range(2)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    _raises_naming(path, read_image, "2 frames")


def test_non_finite_and_out_of_range_float_tiff(tmp_path):
    arr = np.full((8, 8), 0.5, np.float32)
    arr[3, 3] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(arr).save(path)
    _raises_naming(path, read_image, "non-finite")
    Image.fromarray(np.full((8, 8), 2.0, np.float32)).save(path)
    _raises_naming(path, read_image, r"expected \[0, 1\]")


def test_values_above_bits_stored(tmp_path):
    path = tmp_path / "x.png"
    write_png16(path, np.full((4, 4), 4096, np.uint16))
    _raises_naming(path, lambda p: read_image(p, bits_stored=12), "outside the 12-bit range")


# ---------------------------------------------------------------- PNG and TIFF


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_png_tiff_exact(rng, tmp_path, suffix):
    src = rng.integers(0, 65536, size=(12, 20)).astype(np.uint16)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(src).save(path)
    image, meta = read_image(path)
    assert image.shape == src.shape and image.dtype == np.float32
    assert meta["bits_stored"] == 16 and meta["bits_stored_source"] == "dtype"
    assert meta["pixel_spacing_mm"] is None
    np.testing.assert_array_equal(np.rint(image.astype(np.float64) * 65535).astype(np.uint16), src)


def test_12bit_png_from_dataset_folder(rng, tmp_path):
    src = rng.integers(0, 4096, size=(12, 20)).astype(np.uint16)
    path = tmp_path / "x.png"
    write_png16(path, src)  # no sBIT chunk, as synthetic folders written before it had one
    image, meta = read_image(path, bits_stored=12)
    assert meta["bits_stored_source"] == "argument"
    np.testing.assert_allclose(image, src / 4095, atol=1e-7)
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(src).save(path, pnginfo=info)
    image, meta = read_image(path)
    assert (meta["bits_stored"], meta["bits_stored_source"]) == (12, "sBIT")
    np.testing.assert_allclose(image, src / 4095, atol=1e-7)
    # The generator's writer now says its bit depth itself; the pixels are unchanged.
    write_png16(path, src, bits_stored=12)
    image, meta = read_image(path)
    assert (meta["bits_stored"], meta["bits_stored_source"]) == (12, "sBIT")
    np.testing.assert_allclose(image, src / 4095, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), src)
    with pytest.raises(ValueError, match="does not fit in bits_stored=12"):
        write_png16(path, np.full((2, 2), 4096, np.uint16), bits_stored=12)


def test_8bit_png(rng, tmp_path):
    src = rng.integers(0, 256, size=(8, 8)).astype(np.uint8)
    Image.fromarray(src).save(tmp_path / "x.png")
    image, meta = read_image(tmp_path / "x.png")
    assert meta["bits_stored"] == 8
    np.testing.assert_allclose(image, src / 255, atol=1e-7)


def test_white_is_zero_tiff_is_inverted(rng, tmp_path):
    src = rng.integers(0, 65536, size=(8, 8)).astype(np.uint16)
    path = tmp_path / "wiz.tif"
    Image.fromarray(src).save(path, tiffinfo={262: 0})
    image, meta = read_image(path)
    assert meta["inverted"] and meta["photometric_interpretation"] == "MONOCHROME1"
    np.testing.assert_allclose(image, 1 - src / 65535, atol=1e-7)


# ---------------------------------------------------------------- resampling


def test_resample_halves_and_preserves_mean(rng):
    image = rng.random((64, 48)).astype(np.float32)
    out, info = resample_to_spacing(image, 0.1, 0.2)
    assert out.shape == (32, 24) and out.dtype == np.float32 and np.isfinite(out).all()
    assert info["resampled"] and info["spacing_mm"] == pytest.approx((0.2, 0.2))
    # Area averaging by exactly 2: each output pixel is the mean of a 2x2 block.
    blocks = image.astype(np.float64).reshape(32, 2, 24, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, atol=1e-6)
    assert out.mean() == pytest.approx(image.mean(), rel=1e-6)


def test_resample_anisotropic_and_upsampling(rng):
    image = rng.random((64, 48)).astype(np.float32)
    out, info = resample_to_spacing(image, (0.1, 0.2), 0.2)
    assert out.shape == (32, 48) and info["spacing_mm"] == pytest.approx((0.2, 0.2))
    flat = np.full((16, 16), 0.25, np.float32)
    up, info = resample_to_spacing(flat, 0.2, 0.1)
    assert up.shape == (32, 32) and info["reason"].startswith("bilinear")
    np.testing.assert_allclose(up, 0.25, atol=1e-6)


def test_resample_unknown_spacing_is_unchanged(rng):
    image = rng.random((8, 8)).astype(np.float32)
    out, info = resample_to_spacing(image, None, 0.2)
    assert out is image and not info["resampled"] and "unknown" in info["reason"]
