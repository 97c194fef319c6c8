"""Compressed DICOM through read_dicom: JPEG Baseline/Extended/Lossless and JPEG-LS (libjpeg).

pydicom's own test files (installed with pydicom and pydicom-data, read offline):
MR_small_jpeg_ls_lossless.dcm (.80) with its uncompressed MR_small.dcm; JPEGLSNearLossless_08 and
_16 (.81); JPEG-LL.dcm and JPGLosslessP14SV1_1s_1f_8b.dcm (.70); JPGExtended.dcm (.51, 12-bit).
pydicom ships no grayscale JPEG Baseline (.50) file and no Process 14 (.57) file, and no
uncompressed twin of its .70 files: those are made here (a Pillow baseline JPEG, and a lossless
JPEG written by :func:`_lossless_jpeg`, which is valid as .57 and as .70).
"""

import struct
from io import BytesIO

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid as ts
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder

from osteo_jax.data.dicom import read_dicom
from osteo_jax.data.errors import DatasetError

SYNTAXES = (
    ts.JPEGBaseline8Bit,
    ts.JPEGExtended12Bit,
    ts.JPEGLossless,
    ts.JPEGLosslessSV1,
    ts.JPEGLSLossless,
    ts.JPEGLSNearLossless,
)


def _testdata(name):
    path = get_testdata_file(name, download=False)  # never fetch anything at run time
    assert path is not None, f"{name} missing: install pydicom-data"
    return path


@pytest.mark.parametrize("uid", SYNTAXES, ids=lambda u: u.name)
def test_pinned_plugins_decode_every_jpeg_syntax(uid):
    decoder = get_decoder(uid)
    assert decoder.is_available, decoder.missing_dependencies
    assert "pylibjpeg" in decoder.available_plugins


def test_jpeg_ls_lossless_is_identical_to_uncompressed():
    ref_path, jls_path = _testdata("MR_small.dcm"), _testdata("MR_small_jpeg_ls_lossless.dcm")
    ref, jls = pydicom.dcmread(ref_path).pixel_array, pydicom.dcmread(jls_path).pixel_array
    assert jls.dtype == ref.dtype == np.int16 and jls.shape == (64, 64)
    assert np.abs(jls.astype(np.int64) - ref).max() == 0
    (a, meta), (b, _) = read_dicom(jls_path), read_dicom(ref_path)
    assert meta["transfer_syntax_uid"] == ts.JPEGLSLossless and meta["voi"] == "window"
    assert a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "name, shape, bits",
    [("JPEGLSNearLossless_08.dcm", (45, 10), 8), ("JPEGLSNearLossless_16.dcm", (50, 10), 16)],
)
def test_jpeg_ls_near_lossless_decodes(name, shape, bits):
    image, meta = read_dicom(_testdata(name))
    assert meta["transfer_syntax_uid"] == ts.JPEGLSNearLossless and meta["bits_stored"] == bits
    assert image.shape == shape and image.dtype == np.float32 and np.isfinite(image).all()
    assert image.min() == 0 and image.max() == 1  # no window: its own pixel range


def test_jpeg_lossless_files_decode_with_full_contrast():
    # JPEG-LL.dcm: signed 16 bits stored, no window, values 0..278. Over the stored range
    # [-32768, 32767] it would display within [0.500, 0.505], flat grey; the pixel-range window
    # spans [0, 1].
    image, meta = read_dicom(_testdata("JPEG-LL.dcm"))
    assert meta["transfer_syntax_uid"] == ts.JPEGLosslessSV1 and meta["voi"] == "pixel_range"
    assert image.shape == (1024, 256) and image.min() == 0 and image.max() == 1
    assert image.std() > 0.1
    image8, meta8 = read_dicom(_testdata("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert meta8["transfer_syntax_uid"] == ts.JPEGLosslessSV1 and image8.shape == (768, 1024)
    assert np.isfinite(image8).all() and image8.std() > 0.05


def test_jpeg_extended_12bit_matches_the_lossless_file_of_the_same_scene():
    ext, meta = read_dicom(_testdata("JPGExtended.dcm"))
    ll, _ = read_dicom(_testdata("JPEG-LL.dcm"))
    assert meta["transfer_syntax_uid"] == ts.JPEGExtended12Bit and ext.shape == ll.shape
    assert np.corrcoef(ext.ravel(), ll.ravel())[0, 1] > 0.98


def test_jpeg_lossy_is_refused_with_the_file_named():
    # pydicom's JPEG-lossy.dcm is a known-bad codestream (JPGExtended.dcm is its fixed version).
    path = _testdata("JPEG-lossy.dcm")
    with pytest.raises(DatasetError, match="cannot decode pixel data") as err:
        read_dicom(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------ files made here, exact references


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def _lossless_jpeg(image: np.ndarray, precision: int) -> bytes:
    """A lossless JPEG (ITU T.81 process 14, predictor 1, point transform 0) of ``image``.

    One Huffman table with a 5-bit code for each difference category 0..16 (code = category).
    """
    rows, cols = image.shape
    x = image.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: neighbour above
    pred[1:, 1:] = x[1:, :-1]  # predictor 1: left neighbour
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    bits = []
    for d in diff.tolist():
        ssss = abs(d).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            extra = d if d > 0 else d - 1
            bits.append(format(extra & ((1 << ssss) - 1), f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for b in int(stream, 2).to_bytes(len(stream) // 8, "big"):
        data.append(b)
        if b == 0xFF:
            data.append(0x00)  # byte stuffing
    counts = [0] * 16
    counts[4] = 17  # seventeen 5-bit codes
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xFFC3, struct.pack(">BHHBBBB", precision, rows, cols, 1, 1, 0x11, 0)),
            _segment(0xFFC4, bytes([0x00, *counts, *range(17)])),
            _segment(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0])),
            bytes(data),
            b"\xff\xd9",
        ]
    )


def _dicom(path, stored: np.ndarray, bits: int, uid, frame: bytes | None = None):
    """MONOCHROME2 DICOM of ``stored``, uncompressed or with ``frame`` as its one fragment."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.set_pixel_data(stored, "MONOCHROME2", bits, generate_instance_uid=False)
    if frame is not None:
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = uid
        if uid == ts.JPEGBaseline8Bit:
            ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("uid", [ts.JPEGLossless, ts.JPEGLosslessSV1], ids=lambda u: u.name)
@pytest.mark.parametrize("bits", [10, 16])
def test_jpeg_lossless_is_identical_to_uncompressed(rng, tmp_path, uid, bits):
    ramp = np.add.outer(np.arange(40), 7 * np.arange(48)) % (1 << bits)
    noise = rng.integers(0, 1 << bits, size=(40, 48))
    stored = np.where(rng.random((40, 48)) < 0.3, noise, ramp).astype(np.uint16)
    stored[0, :2] = [0, (1 << bits) - 1]  # extreme differences, category 16 at 16 bits
    frame = _lossless_jpeg(stored, bits)
    lossless = _dicom(tmp_path / "jpeg.dcm", stored, bits, uid, frame)
    reference = _dicom(tmp_path / "unc.dcm", stored, bits, ts.ExplicitVRLittleEndian)
    decoded = pydicom.dcmread(lossless).pixel_array
    assert decoded.dtype == np.uint16 and np.abs(decoded.astype(np.int64) - stored).max() == 0
    (a, meta), (b, _) = read_dicom(lossless), read_dicom(reference)
    assert meta["transfer_syntax_uid"] == uid and a.shape == (40, 48) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_jpeg_baseline_grayscale(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    stored = (128 + 100 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95)
    path = _dicom(tmp_path / "b.dcm", stored, 8, ts.JPEGBaseline8Bit, buf.getvalue())
    decoded = pydicom.dcmread(path).pixel_array.astype(np.int64)
    pillow = np.asarray(Image.open(BytesIO(buf.getvalue())), np.int64)
    assert np.abs(decoded - pillow).max() <= 1  # IDCTs of two decoders may round differently
    assert np.abs(decoded - stored).mean() < 2
    image, meta = read_dicom(path)
    assert meta["transfer_syntax_uid"] == ts.JPEGBaseline8Bit and image.shape == (48, 64)
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
