"""Bounded memory: images over the pixel cap are refused from their header, before decoding."""

import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from osteo_jax.cli import main
from osteo_jax.data.dicom import read_dicom
from osteo_jax.data.errors import DatasetError
from osteo_jax.data.folder import read_png, write_png16
from osteo_jax.data.imageio import read_image
from osteo_jax.data.limits import MAX_IMAGE_PIXELS
from osteo_jax.data.validate import validate_folder


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(path, width, height):
    """A valid PNG header declaring ``width x height`` 8-bit gray, with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # one scanline; the rest is missing
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
    path.write_bytes(data + _chunk(b"IEND", b""))
    assert path.stat().st_size < 1000
    return path


# 60000^2 exceeds twice Pillow's bomb limit (its error), 12000^2 only the limit (its warning),
# 8000^2 only ours.
@pytest.mark.parametrize("side", [60000, 12000, 8000])
def test_huge_png_header_refused_before_decoding(tmp_path, side):
    path = _png_declaring(tmp_path / "bomb.png", side, side)
    start = time.perf_counter()
    for read in (read_image, read_png):
        with pytest.raises(DatasetError) as err:
            read(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: image of {side} x {side} pixels"), msg
        assert "exceeds the pixel cap of 50.0 MP" in msg and "before decoding" in msg
    assert time.perf_counter() - start < 1.0


def test_cap_is_a_keyword(tmp_path):
    path = tmp_path / "small.png"
    write_png16(path, np.arange(64, dtype=np.uint16).reshape(8, 8))
    with pytest.raises(DatasetError, match="image of 8 x 8 pixels"):
        read_image(path, max_pixels=63)
    image, meta = read_image(path, max_pixels=64)
    assert image.shape == (8, 8) and meta["rows"] == 8
    assert read_png(path, max_pixels=None).shape == (8, 8)
    tiff = tmp_path / "small.tif"
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(tiff)
    with pytest.raises(DatasetError, match=f"{tiff}: image of 16 x 8 pixels"):
        read_image(tiff, max_pixels=100)
    assert MAX_IMAGE_PIXELS == 50_000_000


def test_dicom_rows_columns_checked_before_pixel_data(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    path = tmp_path / "big.dcm"
    ds.Rows = ds.Columns = 9000  # 81 MP declared; the pixel data (64x64) no longer fits
    ds.save_as(path, enforce_file_format=True)
    for read in (read_dicom, read_image):
        with pytest.raises(DatasetError, match=f"{path}: image of 9000 x 9000 pixels"):
            read(path)
    with pytest.raises(DatasetError, match="image of 64 x 64 pixels"):
        read_dicom(get_testdata_file("MR_small.dcm", download=False), max_pixels=1000)


def _folder_with(tmp_path, image_writer):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "subjects.csv").write_text("subject_id,label\nS0,0\n")
    (root / "images.csv").write_text("image_id,subject_id,path\nS0,S0,images/S0.png\n")
    image_writer(root / "images" / "S0.png")
    return root


def test_validate_refuses_huge_png(tmp_path, capsys):
    root = _folder_with(tmp_path, lambda p: _png_declaring(p, 60000, 60000))
    with pytest.raises(DatasetError, match="image of 60000 x 60000 pixels"):
        validate_folder(root)
    assert main(["validate", "--data", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(root / "images" / "S0.png") in err[0] and "60000 x 60000" in err[0]
    assert err[0].startswith("osteo-jax validate: error: ")


def test_validate_max_megapixels_option(tmp_path, capsys):
    root = _folder_with(tmp_path, lambda p: write_png16(p, np.ones((40, 50), np.uint16)))
    assert main(["validate", "--data", str(root), "--max-megapixels", "0.001"]) == 2
    assert "image of 50 x 40 pixels (0.0 MP) exceeds the pixel cap of 0.0 MP" in (
        capsys.readouterr().err
    )
    assert main(["validate", "--data", str(root), "--max-megapixels", "0.002"]) == 0
    with pytest.raises(SystemExit):
        main(["validate", "--data", str(root), "--max-megapixels", "-1"])


def test_validate_cli_memory_stays_low(tmp_path):
    root = _folder_with(tmp_path, lambda p: _png_declaring(p, 60000, 60000))
    # Peak RSS of this process image: VmHWM starts afresh at exec, unlike ru_maxrss, which
    # keeps the forking parent's (pytest's) resident size.
    code = (
        "import sys\n"
        "from osteo_jax.cli import main\n"
        "rc = main(['validate', '--data', sys.argv[1]])\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
        "print(hwm.split()[1])\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "60000 x 60000" in out.stderr
    peak_mb = int(out.stdout.strip()) / 1024  # VmHWM is in kB
    assert peak_mb < 400, peak_mb  # decoding would take 3.6 GB
