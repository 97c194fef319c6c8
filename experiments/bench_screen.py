r"""Screening throughput and QC flag rates: ``osteo-jax screen`` on synthetic radiographs.

    .venv/bin/python experiments/bench_screen.py --run runs/demo --out runs/bench_screen \
        --sizes 1024 512 --images 48

For each image side in ``--sizes`` a fresh synthetic cohort (another seed than the run's, so
the images are new to the model; DICOM with its pixel spacing, as a hospital export would be)
of ``--images`` radiographs is written under ``OUT`` and screened three ways with the same run
(the same hypotheses and models):

* ``one_at_a_time``: batch 1, decoding in this process: the path ``predict`` took per image
  before batching (one segmenter call, one classifier call per image);
* ``batched``: batch ``--batch-size``, decoding in ``--jobs`` grain worker processes;
* ``batched_no_stacked``: the same without the stacked score (``--no-stacked``: no
  radiogrammetry and porosity of the mixture mean beyond the 2MCI);
* ``batched_2x``: the same over twice the images, to show memory is flat in the image count
  (peak resident memory of the screening process, read from ``/proc``).

With ``--before SRC`` (a checkout of the code before ``screen``, e.g. ``git worktree add
/tmp/before 085eac6``) the old ``predict_images`` also runs on the same images, one at a time
as it did, in a child process started inside that checkout (it reports the package it
imported; another one is an error): today's throughput. ``batched_all_hypotheses`` screens
with every hypothesis cut and measured, also those of weight < 1e-4 that ``screen`` skips, as
``predict`` did: the speed-up at the same hypotheses. Start-up (restoring the run, fitting
the QC calibration) is timed apart from the per-image cost. Then the QC flag rates: on each
synthetic cohort, and on pydicom-data's non-hand radiographs (a chest and a lower-leg CR).
Everything is printed and written to ``OUT/bench_screen.json``.

Measured 2026-12-02 on 2 idle CPU cores with ``runs/demo6`` (the demo run of that day: 3
experts alive, so 12 live hypotheses, 3 times the cutting and 2MCI fits of the run below; with
saved stackers), ``--sizes 1024 512 --images 32``, seconds per image after start-up:

| side | batch 1, 0 jobs | batch 8, 2 jobs | same, ``--no-stacked`` | 64 images | all 16 hyp. |
|---|---|---|---|---|---|
| 1024 (0.2 mm) | 1.940 | 1.116 | 0.960 | 1.215 | 1.499 |
| 512 (0.4 mm) | 1.849 | 1.155 | 0.878 | 0.975 | 1.088 |

The stacked score's measurements (CI of 4 bones, absorptiometry, 4 porosity fits of the
mixture mean) cost 0.16-0.28 s an image in the batched path; the rest of the rise from the
figures below is the third of the hypotheses that are alive now. Figures move by ~0.1-0.2 s
between repeats (512 batched 1.155 against 0.975 on twice the images). Peak memory 1.2-1.3 GB.
QC flags 0 of 64 new synthetic radiographs at each size, and both non-hand CRs.

Measured 2026-12-01 on 2 idle CPU cores with the demo run (K 4 x S 4, one expert alive, so 4
live hypotheses and 12 of weight < 1e-4; 3 seed models), ``--images 48 --before`` a checkout
of 085eac6; seconds per image after start-up (the first batch's compile included in screen's
figures; "96 images": batch 8, 2 jobs on twice the images; peak MB: 48 -> 96 images):

| side | before: 085eac6 predict | batch 1, 0 jobs | batch 8, 2 jobs | 96 images | peak MB |
|---|---|---|---|---|---|
| 1024 (0.2 mm) | 2.179 | 0.588 | 0.379 (5.7x) | 0.370 (5.9x) | 1320 -> 1290 MB |
| 512 (0.4 mm) | 0.883 | 0.490 | 0.294 (3.0x) | 0.240 (3.7x) | 1179 -> 1214 MB |

At the same hypotheses (all 16 cut and measured; 24 images at 1024, batch 8, 2 jobs, measured
before that variant joined this script): 0.655 s per image, 3.3x. On one core
(``taskset -c 0``, the other busy): before 2.112 (1024) and 0.966 (512) s per image, screen
with 0 jobs 0.595 and 0.522. Where the time went: per image the mixture mean's and each live
hypothesis's label map at full resolution, their 7 segments, and the 2MCI profile fits (7
blocks each). Each bone is now handled inside its bounding box (not the whole radiograph), the
profile model has an analytic Jacobian, and each hypothesis's block fits start from the mixture
mean's fit of the same block (~6 model evaluations instead of ~17). The earlier figures of this
docstring (0.83 s "before" at 1024) measured today's ``predict`` path, not 085eac6's: run from
the repository root, ``python -c`` put today's package first on the path. The "<= 2 s per 1024
image" and 3x targets are met; memory stays flat in the number of images. QC flags 0 of 96 new
synthetic radiographs at each size; the chest CR (RG1) is flagged for hand geometry, mutual
information, unknown spacing and its DICOM body part; the lower-leg CR (RG3) for missing bones
(MC3, MC4), mutual information and unknown spacing. Research software, synthetic data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shutil
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _screen_child(queue, inputs, run, out, batch_size, jobs, all_hypotheses=False, stacked=True):
    """One screening in a fresh process (its own peak memory and compile)."""
    from osteo_jax.pipeline import predict
    from osteo_jax.pipeline.screen import screen

    if all_hypotheses:  # every hypothesis cut and measured, as predict did before screen
        predict.MIN_HYPOTHESIS_WEIGHT = 0.0
    t0 = time.perf_counter()
    s = screen(inputs, run, out, batch_size=batch_size, jobs=jobs, progress=False, stacked=stacked)
    s["total_s"] = round(time.perf_counter() - t0, 2)
    s["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    s["s_per_image"] = round(s["wall_s"] / max(s["written"], 1), 3)
    queue.put(s)


def run_screen(inputs, run, out, *, batch_size, jobs, all_hypotheses=False, stacked=True) -> dict:
    """:func:`screen` in a spawned process; its summary with peak memory."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    args = (q, inputs, run, out, batch_size, jobs, all_hypotheses, stacked)
    p = ctx.Process(target=_screen_child, args=args)
    p.start()
    s = q.get()
    p.join()
    return s


_BEFORE = """
import glob, json, sys, time
import osteo_jax
from osteo_jax.pipeline.predict import PredictModel, predict_images
paths = sorted(glob.glob(sys.argv[2] + "/*"))
t0 = time.perf_counter(); model = PredictModel(sys.argv[1]); t1 = time.perf_counter()
predict_images(paths[:1], model)  # compiles
t2 = time.perf_counter(); predict_images(paths[1:], model); t3 = time.perf_counter()
print(json.dumps({"startup_s": round(t1 - t0, 2), "first_image_s": round(t2 - t1, 2),
                  "s_per_image": round((t3 - t2) / (len(paths) - 1), 3),
                  "source": osteo_jax.__file__}))
"""


def run_before(src: str, run: str, images: Path) -> dict:
    """The pre-``screen`` ``predict_images`` of checkout ``src`` on ``images`` (child process)."""
    import os
    import subprocess
    import sys

    src = Path(src).absolute()
    env = {**os.environ, "PYTHONPATH": str(src)}
    # Run from inside the checkout: ``python -c`` puts the working directory first on the
    # path, so from this repository's root it would import today's package, not ``src``'s.
    out = subprocess.run(
        [sys.executable, "-c", _BEFORE, str(Path(run).absolute()), str(images.absolute())],
        env=env, cwd=src, capture_output=True, text=True, check=True,
    )  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(res["source"]).is_relative_to(src):
        raise RuntimeError(f"--before {src}: the child imported {res['source']} instead")
    return res


def flag_rate(results: Path) -> dict:
    """Share of screened rows flagged by QC, and the reasons' counts (first words)."""
    import csv

    with open(results, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
    reasons: dict[str, int] = {}
    for r in rows:
        for reason in filter(None, r["qc_reason"].split("; ")):
            key = reason.split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    flagged = sum(r["qc_flag"] == "true" for r in rows)
    return {"images": len(rows), "flagged": flagged, "rate": flagged / max(len(rows), 1),
            "reasons": reasons}  # fmt: skip


def synth(out: Path, size: int, n: int, seed: int) -> Path:
    """A synthetic cohort of ``n`` subjects as DICOM (one image each: first ``n`` kept)."""
    from osteo_jax.cli import main

    if not (out / "images.csv").exists():
        assert (
            main(
                [
                    "synth",
                    "--subjects",
                    str(n),
                    "--size",
                    str(size),
                    "--seed",
                    str(seed),
                    "--format",
                    "dicom",
                    "--out",
                    str(out),
                ]
            )  # fmt: skip
            == 0
        )
    return out / "images"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="experiment folder (e.g. runs/demo)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 512], help="image sides")
    p.add_argument("--images", type=int, default=48, help="subjects per cohort")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=7, help="synthetic cohort seed (not the run's)")
    p.add_argument("--before", default=None, help="checkout of the pre-screen code (baseline)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"run": args.run, "machine": f"{platform.machine()}, {mp.cpu_count()} cores",
              "batch_size": args.batch_size, "jobs": args.jobs, "sizes": {}}  # fmt: skip
    for size in args.sizes:
        cohort = out / f"cohort_{size}"
        images = synth(cohort, size, args.images, args.seed)
        images_2x = synth(out / f"cohort_{size}_2x", size, 2 * args.images, args.seed + 1)
        res = {}
        for name, inputs, bs, jobs, every, stacked in (
            ("one_at_a_time", images, 1, 0, False, True),
            ("batched", images, args.batch_size, args.jobs, False, True),
            ("batched_no_stacked", images, args.batch_size, args.jobs, False, False),
            ("batched_2x", images_2x, args.batch_size, args.jobs, False, True),
            ("batched_all_hypotheses", images, args.batch_size, args.jobs, True, True),
        ):
            csv_path = out / f"screen_{size}_{name}.csv"
            csv_path.unlink(missing_ok=True)  # this script's own output
            res[name] = run_screen(
                [str(inputs)], args.run, csv_path, batch_size=bs, jobs=jobs,
                all_hypotheses=every, stacked=stacked,
            )  # fmt: skip
            print(size, name, json.dumps(res[name]))
        if args.before:
            res["before_predict"] = run_before(args.before, args.run, images)
            for name in ("batched", "batched_2x", "batched_all_hypotheses"):
                res[f"speed_up_vs_before_{name}"] = round(
                    res["before_predict"]["s_per_image"] / res[name]["s_per_image"], 2
                )
            print(size, "before", json.dumps(res["before_predict"]))
        res["speed_up"] = round(
            res["one_at_a_time"]["s_per_image"] / res["batched"]["s_per_image"], 2
        )
        res["qc_synthetic"] = flag_rate(out / f"screen_{size}_batched_2x.csv")
        report["sizes"][str(size)] = res
        print(size, "speed-up", res["speed_up"], "QC", json.dumps(res["qc_synthetic"]))
    from pydicom.data import get_testdata_file

    others = out / "non_hand"
    others.mkdir(exist_ok=True)
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        shutil.copy(get_testdata_file(name), others / name)
    csv_path = out / "screen_non_hand.csv"
    csv_path.unlink(missing_ok=True)
    run_screen([str(others)], args.run, csv_path, batch_size=args.batch_size, jobs=0)
    import csv

    with open(csv_path, newline="") as f:
        report["qc_non_hand"] = {
            Path(r["path"]).name: {"flag": r["qc_flag"], "reason": r["qc_reason"]}
            for r in csv.DictReader(f)
        }
    print("non-hand", json.dumps(report["qc_non_hand"], indent=1))
    (out / "bench_screen.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
