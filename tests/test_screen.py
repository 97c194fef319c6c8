"""``osteo-jax screen``: rows, batching, resume, error rows, JSON Lines and QC on a tiny run."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from osteo_jax.cli import main
from osteo_jax.data.errors import DatasetError
from osteo_jax.pipeline.screen import COLUMNS, screen

SPACING = 204.8 / 192  # the tiny cohort's pixel spacing (mm)
NUMERIC = ("probability", "probability_lo", "probability_hi", "2MCI", "2MCI_lo", "2MCI_hi")


@pytest.fixture(scope="module")
def tiny(tiny_experiment, tmp_path_factory):
    """The tiny run's copy (screen writes its QC calibration there), restored once, and inputs:
    six of the cohort's PNGs in nested folders, one as DICOM too, a corrupt PNG, a chest and
    a lower-leg radiograph (pydicom-data)."""
    from pydicom.data import get_testdata_file

    from osteo_jax.data.dicom import write_dicom
    from osteo_jax.data.folder import read_png

    src, _ = tiny_experiment
    base = tmp_path_factory.mktemp("screen")
    run = base / "run"
    shutil.copytree(src, run)
    images = base / "images"
    pngs = sorted((run / "data" / "images").glob("*.png"))[:6]
    for i, p in enumerate(pngs):
        (images / f"site{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, images / f"site{i % 2}" / p.name)
    write_dicom(
        images / "site0" / "first_as_dicom",
        read_png(pngs[0]),
        pixel_spacing_mm=SPACING,
        bits_stored=12,
    )
    (images / "site1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    others = base / "others"
    others.mkdir()
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        shutil.copy(get_testdata_file(name), others / name)
    from osteo_jax.pipeline.predict import PredictModel

    return PredictModel(run), images, others


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v):
    return float(v) if v != "" else math.nan


def test_rows_errors_and_batching(tiny, tmp_path):
    run, images, _ = tiny
    out3 = tmp_path / "b3.csv"
    s = screen([images], run, out3, batch_size=3, progress=False)
    assert s["images"] == 8 and s["written"] == 8 and s["errors"] == 1
    rows = _rows(out3)
    assert tuple(rows[0]) == COLUMNS
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 1 and bad[0]["path"].endswith("corrupt.png")
    assert "corrupt.png" in bad[0]["error"] and bad[0]["probability"] == ""
    good = [r for r in rows if r["status"] == "ok"]
    assert all(0 <= float(r["probability"]) <= 1 for r in good)
    dcm = next(r for r in good if r["path"].endswith("first_as_dicom"))
    assert dcm["spacing_known"] == "true" and float(dcm["spacing_mm"]) == pytest.approx(SPACING)
    # Batched equals one at a time (tolerance 1e-5: the segmenter's batched convolutions).
    out1 = tmp_path / "b1.csv"
    screen([images], run, out1, batch_size=1, progress=False)
    for a, b in zip(rows, _rows(out1), strict=True):
        assert a["path"] == b["path"] and a["qc_reason"] == b["qc_reason"]
        for k in NUMERIC:
            np.testing.assert_allclose(_num(a[k]), _num(b[k]), atol=1e-5, err_msg=k)
    # predict is the same code path: the same numbers for the good PNGs.
    from osteo_jax.pipeline.predict import predict_images

    paths = [r["path"] for r in good if r["path"].endswith(".png")]
    for r, p in zip(
        [r for r in good if r["path"].endswith(".png")], predict_images(paths, run), strict=True
    ):
        assert float(r["probability"]) == pytest.approx(p["probability"], abs=1e-5)


def test_resume_after_a_partial_write_gives_the_same_file(tiny, tmp_path):
    run, images, _ = tiny
    ref = tmp_path / "ref.csv"
    screen([images], run, ref, batch_size=3, progress=False)
    text = ref.read_text()
    lines = text.splitlines(keepends=True)
    # Killed mid-write: the header, three rows and half of the fourth.
    part = tmp_path / "part.csv"
    part.write_text("".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    s = screen([images], run, part, batch_size=3, progress=False)
    assert s["skipped"] == 3 and s["written"] == 5
    assert part.read_text() == text  # no duplicate, no partial row
    # A complete file: nothing to do, nothing changed.
    s = screen([images], run, part, batch_size=3, progress=False)
    assert s["written"] == 0 and part.read_text() == text


def test_jsonl_is_strict_json_with_the_csv_values(tiny, tmp_path):
    run, images, _ = tiny
    out = tmp_path / "r.jsonl"
    screen([images], run, out, batch_size=4, progress=False)

    def no_nan(name):
        raise AssertionError(f"non-JSON constant {name}")

    records = [json.loads(line, parse_constant=no_nan) for line in out.read_text().splitlines()]
    assert all(tuple(r) == COLUMNS for r in records)
    screen([images], run, tmp_path / "r.csv", batch_size=4, progress=False)
    csv_rows = {r["path"]: r for r in _rows(tmp_path / "r.csv")}
    for r in records:
        c = csv_rows[r["path"]]
        for k in NUMERIC:
            want = _num(c[k])
            assert (r[k] is None) if math.isnan(want) else r[k] == pytest.approx(want)


def test_refuses_an_output_it_did_not_write(tiny, tmp_path):
    run, images, _ = tiny
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="not a results file"):
        screen([images], run, other, progress=False)
    assert other.read_text() == "a,b\n1,2\n"


def test_qc_flags_non_hand_radiographs(tiny, tmp_path):
    run, _, others = tiny
    out = tmp_path / "others.csv"
    screen([others], run, out, progress=False)
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert all(r["qc_flag"] == "true" for r in rows.values())
    assert "DICOM body part 'CHEST'" in rows["RG1_UNCR.dcm"]["qc_reason"]
    # The lower leg's header says EXTREMITY (allowed): the image itself must give it away.
    leg = rows["RG3_UNCR.dcm"]["qc_reason"].split("; ")
    assert [r for r in leg if not r.startswith("spacing unknown")], leg


def test_cli_screen_and_its_errors(tiny, tmp_path, capsys):
    run, images, _ = tiny
    out = tmp_path / "cli.csv"
    args = ["--run", str(run.run), "--out", str(out)]
    assert main(["screen", str(images), *args]) == 0
    assert "8 images: 0 already" in capsys.readouterr().out
    assert main(["screen", str(tmp_path / "nope"), *args]) == 2
    err = capsys.readouterr().err
    assert "nope: no such file or folder" in err and "Traceback" not in err
