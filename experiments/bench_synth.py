"""Benchmark of the synthetic cohort generator: subjects per second and the paper preset's ceilings.

Command (about 1 minute on 2 CPU cores; run with nothing else busy, a second CPU-heavy process
halves every figure)::

    .venv/bin/python experiments/bench_synth.py --out runs/bench_synth.json

Measures, at 1024 x 1024 / 0.2 mm:
  * features only: subjects per second of ``sample_cohort`` (5,000 subjects);
  * rendering: seconds per subject in one process (image, exact map, 3 annotator maps);
  * the whole ``osteo-jax synth --preset paper`` (192 subjects, PNG writing included) with all
    cores: wall time and subjects per second. Target: under 40 s. The wall time includes writing
    the Bayes ceilings (``oracle.json``, ``ceiling.csv``), whose population part evaluates
    200,000 feature-only subjects (about 5 s on 2 cores).
Also prints the paper preset's Bayes ceilings, this cohort's and the population's: the image
ceiling (the most an image classifier can reach in expectation), the age + sex ceiling (a
clinical model's) and the image + age + sex ceiling (a fusion model's); and the AUC of the hand
bone-health latent, which describes the generator's coupling ``r`` and is not a ceiling (the
image also shows age and sex).
"""

from __future__ import annotations

import argparse
import os
import platform
import runpy
import tempfile
import time
from pathlib import Path

from osteo_jax.config import CohortConfig, SynthConfig
from osteo_jax.data.synth.ceiling import CEILING_KEYS, read_ceilings
from osteo_jax.data.synth.synthetic import render_subject, sample_cohort, write_dataset

# Prints and writes the result (experiments/_bench.py; experiments is not a package).
_report = runpy.run_path(str(Path(__file__).with_name("_bench.py")))["report"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_synth.json")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = SynthConfig(seed=args.seed)
    t0 = time.perf_counter()
    sample_cohort(CohortConfig(n_subjects=5000), seed=args.seed)
    features_per_s = 5000 / (time.perf_counter() - t0)

    cohort = sample_cohort(cfg.cohort, seed=cfg.seed)
    render_subject(cohort, 0, cfg)  # warm-up (texture tiles, imports)
    t0 = time.perf_counter()
    n_render = 10
    for i in range(n_render):
        render_subject(cohort, i, cfg)
    render_s = (time.perf_counter() - t0) / n_render

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = write_dataset(cfg, Path(tmp) / "paper", workers=args.workers, progress=False)
        wall = time.perf_counter() - t0
        ceilings = read_ceilings(out)

    result = dict(
        machine=dict(cpus=os.cpu_count(), processor=platform.processor() or platform.machine()),
        image_size=cfg.physics.size,
        pixel_spacing_mm=cfg.physics.pixel_spacing_mm,
        features_subjects_per_s=round(features_per_s, 1),
        render_s_per_subject_one_process=round(render_s, 4),
        paper_cohort_subjects=ceilings["n_subjects"],
        paper_cohort_wall_s=round(wall, 2),
        paper_cohort_subjects_per_s=round(ceilings["n_subjects"] / wall, 2),
        target_wall_s=40.0,
        meets_target=wall < 40.0,
        **{f"{key}_paper_cohort": round(ceilings[key], 4) for key in CEILING_KEYS},
        **{f"{key}_population": round(ceilings["population"][key], 4) for key in CEILING_KEYS},
        r=ceilings["r"],
    )
    _report(result, args.out, key_width=40)


if __name__ == "__main__":
    main()
