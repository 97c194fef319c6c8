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
    """The tiny run's copy (checked to be left unchanged), restored once, and inputs:
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


@pytest.mark.e2e  # needs the tiny experiment run (~70 s, shared): make e2e
def test_rows_errors_and_batching(tiny, tmp_path):
    run, images, _ = tiny
    out3 = tmp_path / "b3.csv"
    before = sorted(p.relative_to(run.run) for p in run.run.rglob("*"))
    s = screen([images], run, out3, batch_size=3, progress=False)
    assert s["images"] == 8 and s["written"] == 8 and s["errors"] == 1
    # The run folder is only read; the QC calibration is kept beside the results.
    assert sorted(p.relative_to(run.run) for p in run.run.rglob("*")) == before
    assert (tmp_path / "b3.csv.qc.json").is_file()
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
    screen([images], run, out1, batch_size=1, jobs=1, progress=False)  # worker processes too
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


@pytest.mark.e2e  # needs the tiny experiment run (~70 s, shared): make e2e
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


@pytest.mark.e2e  # a subprocess SIGKILLed then re-run (~17 s): make e2e
def test_sigkill_then_rerun_gives_the_uninterrupted_file(tiny, tmp_path):
    """The real CLI in a subprocess, SIGKILLed as soon as its first batch is on disk (its
    decode workers with it), then run again: the same file as one uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run, images, _ = tiny
    many = tmp_path / "many"
    for k in range(3):  # 24 inputs: enough batches of 2 for the kill to land mid-run
        shutil.copytree(images, many / f"copy{k}")
    ref = tmp_path / "ref.csv"
    screen([many], run, ref, batch_size=2, progress=False)
    out = tmp_path / "killed.csv"
    argv = [sys.executable, "-m", "osteo_jax.cli", "screen", str(many), "--run", str(run.run)]
    argv += ["--out", str(out), "--batch-size", "2", "--jobs", "1"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out.exists() and out.read_text().count("\n") >= 3):  # header + a batch
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no batch written after 300 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    written = len(_rows(out))
    assert 0 < written < 24
    s = screen([many], run, out, batch_size=2, progress=False)
    assert s["skipped"] == written and s["written"] == 24 - written
    assert out.read_text() == ref.read_text()


@pytest.mark.e2e  # needs the tiny experiment run (~70 s, shared): make e2e
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


@pytest.mark.e2e  # needs the tiny experiment run (~70 s, shared): make e2e
def test_refuses_an_output_it_did_not_write(tiny, tmp_path):
    run, images, _ = tiny
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="not a results file"):
        screen([images], run, other, progress=False)
    assert other.read_text() == "a,b\n1,2\n"
    # A QC that cannot be calibrated fails before any row, leaving no results file behind.
    fresh = tmp_path / "fresh.csv"
    with pytest.raises(DatasetError, match="training data folder is not found"):
        screen([images], run, fresh, qc_data=tmp_path / "nope", progress=False)
    assert not fresh.exists() and not (tmp_path / "fresh.csv.qc.json").exists()


@pytest.mark.e2e  # needs the tiny experiment run (~70 s, shared): make e2e
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


@pytest.mark.e2e  # needs the tiny experiment run (~70 s, shared): make e2e
def test_cli_screen_and_its_errors(tiny, tmp_path, capsys):
    run, images, _ = tiny
    out = tmp_path / "cli.csv"
    args = ["--run", str(run.run), "--out", str(out)]
    assert main(["screen", str(images), *args]) == 0
    assert "8 images: 0 already" in capsys.readouterr().out
    assert main(["screen", str(tmp_path / "nope"), *args]) == 2
    err = capsys.readouterr().err
    assert "nope: no such file or folder" in err and "Traceback" not in err


def test_light_hypotheses_are_left_out_exactly(small_renders):
    """A hypothesis of weight below MIN_HYPOTHESIS_WEIGHT is not cut or measured: the spread
    equals the one over the other hypotheses alone, and the mixture mean is untouched."""
    from osteo_jax.config import SegmentConfig
    from osteo_jax.eval.radiogrammetry.hypotheses import measure_prediction
    from osteo_jax.pipeline.predict import MIN_HYPOTHESIS_WEIGHT, _cut_and_measure, cut_job

    r = small_renders[0]  # 256 px, 0.8 mm
    image, labels = r.image.astype(np.float32) / 4095, r.exact
    probs = np.stack([np.eye(8, dtype=np.float32)[labels[::4, ::4]]] * 3)
    probs[2] = np.roll(probs[2], 3, axis=0)  # a different, light hypothesis
    w = np.array([0.5, 0.5 - 1e-6, 1e-6])
    assert w[2] < MIN_HYPOTHESIS_WEIGHT
    cfg = SegmentConfig(size=16)
    mean_seg, hyp_segs, kept, mean_m, spread, _ = _cut_and_measure(
        cut_job(image, probs, w, 0.8, cfg, 0.9)
    )
    assert list(kept) == [0, 1] and len(hyp_segs) == 2
    ref_mean, ref_spread = measure_prediction(
        image, probs[:2], w[:2], spacing_mm=0.8, bones=("MC2",)
    )
    assert spread["MC2"]["cortical_index"] == ref_spread["MC2"]["cortical_index"]
    assert mean_m["MC2"].cortical_index == pytest.approx(ref_mean["MC2"].cortical_index)
