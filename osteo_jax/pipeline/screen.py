"""``osteo-jax screen``: a trained pipeline over a folder of thousands of radiographs.

Opportunistic screening: hand and wrist radiographs a hospital already has, run through the
model in bulk. :func:`screen` finds the images (:func:`osteo_jax.data.discover.find_images`),
decodes them in grain worker processes, runs the segmenter and the classifiers in fixed-size
batches (:func:`osteo_jax.pipeline.predict.analyse_images`: one compile, the last batch
padded) and appends one row per image to a CSV or JSON Lines file as soon as its batch is
done. Every row is written whole and flushed to disk with its batch, so a killed run loses at
most the batch in flight, and running the same command again skips the rows already there.

An unreadable file gets a row with ``status`` ``error`` and the message; every other image
gets its numbers and the quality-control verdict of :mod:`osteo_jax.eval.qc` (``qc_flag``,
``qc_reason``): a flagged image keeps its numbers, marked. The QC thresholds are calibrated on
the run's training cohort once and kept beside the results (``results.csv.qc.json``); the
run folder is only read.

Research software trained on synthetic data: the output is not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from osteo_jax.data.errors import DatasetError
from osteo_jax.data.limits import MAX_IMAGE_PIXELS
from osteo_jax.data.workers import spawn_pool
from osteo_jax.pipeline.predict import PredictModel, training_data_folder

__all__ = [
    "COLUMNS",
    "QC_CALIBRATION_SUFFIX",
    "load_qc_calibration",
    "qc_calibration_path",
    "result_row",
    "screen",
]

#: The results file's columns (CSV header; JSON Lines keys), in order.
COLUMNS = (
    "path",
    "status",
    "error",
    "study_instance_uid",
    "patient_id",
    "probability",
    "probability_lo",
    "probability_hi",
    "probability_models",
    "probability_stacked",
    "2MCI",
    "2MCI_lo",
    "2MCI_hi",
    "spacing_mm",
    "spacing_known",
    "bones_valid",
    "mutual_information",
    "geometry_distance",
    "qc_flag",
    "qc_reason",
)

#: Suffix of the QC calibration kept beside a results file (``results.csv.qc.json``).
QC_CALIBRATION_SUFFIX = ".qc.json"

FORMATS = ("csv", "jsonl")


def result_row(res: dict | None, path: str, meta: dict | None, error: str | None) -> dict:
    """One output row (keys :data:`COLUMNS`) of an analysed image or of a failed file.

    Values are str, float, bool, list or None; never NaN.
    """

    def pair(key):
        v = res.get(key) or [None, None]
        return v[0], v[1]

    meta = meta or {}
    row = dict.fromkeys(COLUMNS)
    row.update(
        path=path,
        status="error" if error else "ok",
        error=error,
        study_instance_uid=meta.get("study_instance_uid"),
        patient_id=meta.get("patient_id"),
    )
    if res is None:
        return row
    lo, hi = pair("probability_interval")
    clo, chi = pair("2MCI_interval")
    reasons = list(res.get("qc_reasons", []))
    if res.get("probability_reason"):
        reasons.append(res["probability_reason"])
    row.update(
        probability=res["probability"],
        probability_lo=lo,
        probability_hi=hi,
        probability_models=res["probability_models"],
        probability_stacked=res.get("probability_stacked"),
        **{"2MCI": res["2MCI"], "2MCI_lo": clo, "2MCI_hi": chi},
        spacing_mm=res["spacing_mm"],
        spacing_known=res["spacing_known"],
        bones_valid=[b for b, v in res["segments_valid"].items() if v],
        mutual_information=res.get("mutual_information"),
        geometry_distance=res.get("geometry_distance"),
        qc_flag=bool(res.get("qc_flag", False)) or res["probability"] is None,
        qc_reason="; ".join(reasons) or None,
    )
    return row


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, list):
        return ";".join(_cell(v) for v in value)
    return str(value)


class _Results:
    """The results file: checked, repaired after a kill, read for the paths done, appended to.

    Only a file this command wrote is touched: one whose header (CSV) or first record (JSON
    Lines) has the screen's columns; anything else is refused, naming the file.
    """

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.done: set[str] = set()
        if path.exists() and path.stat().st_size:
            self._resume()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                if fmt == "csv":
                    csv.writer(f).writerow(COLUMNS)
        self.file = open(path, "a", newline="")

    def _resume(self) -> None:
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a kill mid-write: drop the partial last line
            cut = data.rfind(b"\n") + 1
            data = data[:cut]
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines()
        if self.fmt == "csv":
            rows = list(csv.reader(io.StringIO(text)))
            if not rows or tuple(rows[0]) != COLUMNS:
                raise DatasetError(
                    f"{self.path}: exists and is not a results file of osteo-jax screen (its "
                    "header differs); choose another --out"
                )
            self.done = {r[0] for r in rows[1:] if r}
        else:
            try:
                records = [json.loads(line) for line in lines if line.strip()]
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"{self.path}: exists and is not a JSON Lines results file of osteo-jax "
                    f"screen ({e}); choose another --out"
                ) from e
            if records and tuple(records[0]) != COLUMNS:
                raise DatasetError(
                    f"{self.path}: exists and is not a results file of osteo-jax screen (its "
                    "keys differ); choose another --out"
                )
            self.done = {r["path"] for r in records}
        if len(data) != self.path.stat().st_size:
            with open(self.path, "r+b") as f:  # our own file: cut the partial line
                f.truncate(len(data))

    def write(self, rows: list[dict]) -> None:
        """Appends ``rows`` in one write, flushed and synced to disk."""
        buf = io.StringIO()
        if self.fmt == "csv":
            w = csv.writer(buf)
            for row in rows:
                w.writerow([_cell(row[c]) for c in COLUMNS])
        else:
            from osteo_jax.data.folder import dumps_json

            for row in rows:
                buf.write(dumps_json(row) + "\n")
        self.file.write(buf.getvalue())
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done.update(row["path"] for row in rows)

    def close(self) -> None:
        """Closes the file."""
        self.file.close()


class _Decode:
    """A grain map: path -> decoded record (runs in the worker processes)."""

    def __init__(self, size: int, max_pixels: int | None, bits: int | None = None):
        self.size, self.max_pixels, self.bits = size, max_pixels, bits

    def __call__(self, path: str) -> dict:
        from osteo_jax.data.imageio import read_image
        from osteo_jax.data.inmemory import resize_image

        try:
            if not Path(path).is_file():
                raise DatasetError(f"{path}: file not found")
            image, meta = read_image(
                path, max_pixels=self.max_pixels, default_bits_stored=self.bits
            )
            x = resize_image(image, self.size).astype(np.float32)
        except DatasetError as e:
            return {"path": path, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - any decoder failure becomes the file's error row
            return {"path": path, "error": f"{path}: cannot be read ({type(e).__name__}: {e})"}
        return {"path": path, "image": _Packed(image), "meta": meta, "x": _Packed(x), "error": None}


class _Packed:
    """An array grain passes between processes by pickling, not through shared memory.

    grain moves a worker's numpy arrays through shared-memory segments that are freed
    asynchronously; segments still pending when the command exits (or sent on to the
    analysis workers) are reported as leaked. A few MB an image is cheap to pickle.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _own(record: dict) -> dict:
    """``record`` with its :class:`_Packed` arrays unwrapped."""
    return {k: v.array if isinstance(v, _Packed) else v for k, v in record.items()}


def _records(
    paths: list[str], size: int, max_pixels: int | None, jobs: int, bits: int | None = None
):
    """Decoded records of ``paths`` in order (grain; ``jobs`` worker processes)."""
    import grain

    ds = grain.MapDataset.source(paths).map(_Decode(size, max_pixels, bits))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if jobs > 0:
        from osteo_jax.data.pipeline import _mark_flags_parsed

        _mark_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=int(jobs), per_worker_buffer_size=2)
        )
    return it


def qc_calibration_path(out: str | os.PathLike) -> Path:
    """Where ``screen`` keeps the QC calibration of the results file ``out`` (beside it)."""
    out = Path(out)
    return out.with_name(out.name + QC_CALIBRATION_SUFFIX)


def load_qc_calibration(model, path: str | os.PathLike, *, data: str | os.PathLike | None = None):
    """The QC calibration kept at ``path``, or fitted on the training cohort and saved there.

    Fitting segments every image of the run's training dataset folder (the one its segmenter
    was trained on, or ``data``) and calibrates :func:`osteo_jax.eval.qc.calibrate` on them.
    The file lives beside the results (the run folder is only read), so a resumed screening
    reuses it.

    Raises:
      DatasetError: ``path`` exists but is not a calibration, or there is no training data
        folder to fit one on.
    """
    from osteo_jax.data.folder import write_json
    from osteo_jax.data.pipeline import load_seg_arrays
    from osteo_jax.eval.qc import QCCalibration, calibrate, qc_features

    path = Path(path)
    if path.exists() and data is None:
        try:
            return QCCalibration.from_dict(json.loads(path.read_text())["calibration"])
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(
                f"{path}: exists and is not a QC calibration of osteo-jax screen ({e}); "
                "choose another --out"
            ) from e
    folder = Path(data) if data is not None else training_data_folder(model.run)
    if folder is None or not folder.exists():
        raise DatasetError(
            f"{model.run}: its training data folder is not found to calibrate the QC on; "
            "pass --qc-data DATASET_FOLDER (the cohort the run was trained on)"
        )
    arrays = load_seg_arrays(folder, model.image_size)
    feats = []
    for start in range(0, len(arrays.images), 8):  # a batch at a time: memory flat in the cohort
        probs, weights = model.segment_batch(arrays.images[start : start + 8, ..., 0], 8)
        feats += [qc_features(p, w) for p, w in zip(probs, weights, strict=True)]
    calib = calibrate(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"data": str(folder), "calibration": calib.to_dict()})
    return calib


def screen(
    inputs: list[str | os.PathLike],
    run: str | os.PathLike | PredictModel,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    batch_size: int = 8,
    jobs: int = 0,
    interval: float = 0.9,
    spacing_mm: float | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    qc_data: str | os.PathLike | None = None,
    progress: bool = True,
    stacked: bool = True,
) -> dict:
    """Screens every radiograph named by ``inputs``, appending one row per image to ``out``.

    Args:
      inputs: folders (walked recursively; DICOM, PNG, TIFF by content), image files, or
        ``.txt`` lists of paths (:func:`~osteo_jax.data.discover.find_images`).
      run: a finished experiment folder (``osteo-jax run`` / ``demo``), or its restored
        :class:`~osteo_jax.pipeline.predict.PredictModel` (compiled functions reused).
      out: the results file; rows already in it are skipped (resume).
      fmt: ``"csv"`` or ``"jsonl"`` (default: from ``out``'s suffix, CSV unless ``.jsonl``).
      batch_size: images per segmenter call (fixed; the last batch is padded).
      jobs: worker processes for decoding (grain) and, as many again, for cutting and
        measuring the segments of each batch's images (0: all in this process).
      interval: central mass of the intervals.
      spacing_mm: spacing of files that carry none (else the training spacing, flagged).
      max_pixels: refuse larger images (an error row).
      qc_data: the training dataset folder to calibrate the QC on, when the run's own has
        moved (the calibration is fitted once per results file and kept beside it:
        :func:`qc_calibration_path`).
      progress: show a progress bar.
      stacked: give ``probability_stacked`` (measures each image's radiogrammetry; a
        restored ``run`` keeps its own setting).

    Returns:
      ``{"out", "images", "skipped", "written", "errors", "flagged", "qc_geometry_check",
      "qc_calibration_images", "startup_s", "wall_s", "images_per_s"}`` of this invocation.

    Raises:
      DatasetError: an input is missing, ``out`` is not a results file of this command, or the
        QC cannot be calibrated.
      ValueError: not an experiment folder; bad ``fmt`` or ``batch_size``.
    """
    from tqdm.auto import tqdm

    from osteo_jax.data.discover import find_images
    from osteo_jax.pipeline.predict import analyse_images

    out = Path(out)
    fmt = fmt or ("jsonl" if out.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [str(p) for p in find_images(inputs)]
    t0 = time.perf_counter()
    model = run if isinstance(run, PredictModel) else PredictModel(run, stacked=stacked)
    fresh = not out.exists()
    results = _Results(out, fmt)  # refuses a file it did not write, before anything is written
    try:
        calib = load_qc_calibration(model, qc_calibration_path(out), data=qc_data)
    except BaseException:
        results.close()
        if fresh:  # leave nothing behind for a command that failed on its input
            out.unlink(missing_ok=True)
        raise
    todo = [p for p in paths if p not in results.done]
    summary = {
        "out": str(out),
        "images": len(paths),
        "skipped": len(paths) - len(todo),
        "written": 0,
        "errors": 0,
        "flagged": 0,
        "qc_geometry_check": calib.geometry_threshold is not None,
        "qc_calibration_images": calib.n_images,
    }
    records = _records(todo, model.image_size, max_pixels, jobs, model.bits_stored)
    it = iter(records)
    pool = spawn_pool(jobs) if jobs > 0 and todo else None
    bar = tqdm(total=len(todo), desc="screen", unit="img", disable=not progress)
    t_start = time.perf_counter()
    try:
        for start in range(0, len(todo), batch_size):
            batch = [_own(next(it)) for _ in range(min(batch_size, len(todo) - start))]
            good = [r for r in batch if r["error"] is None]
            analysed = {}
            if good:
                items = [(Path(r["path"]), r["image"], r["meta"]) for r in good]
                xs = np.stack([r["x"] for r in good])
                for r, (res, *_rest) in zip(
                    good,
                    analyse_images(
                        model,
                        items,
                        xs,
                        interval=interval,
                        spacing_mm=spacing_mm,
                        batch_size=batch_size,
                        qc=calib,
                        pool=pool,
                    ),
                    strict=True,
                ):
                    analysed[r["path"]] = res
            rows = [
                result_row(analysed.get(r["path"]), r["path"], r.get("meta"), r["error"])
                for r in batch
            ]
            results.write(rows)
            summary["written"] += len(rows)
            summary["errors"] += sum(r["status"] == "error" for r in rows)
            summary["flagged"] += sum(bool(r["qc_flag"]) for r in rows)
            bar.update(len(batch))
    finally:
        bar.close()
        results.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if hasattr(it, "close"):
            it.close()
    wall = time.perf_counter() - t_start
    summary["startup_s"] = round(t_start - t0, 2)
    summary["wall_s"] = round(wall, 2)
    summary["images_per_s"] = round(summary["written"] / wall, 3) if wall > 0 else None
    return summary
