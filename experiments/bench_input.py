"""Input-pipeline throughput: images/s through decode + resize + augment + batch.

Reads 1024 x 1024 16-bit PNGs (``runs/data/paper_1024`` if present, else a generated
32-subject folder) through :func:`osteo_jax.data.pipeline.make_loader` at model size 128,
batch 8, with 0 and 2 worker processes. Run with nothing else busy on the machine::

    .venv/bin/python experiments/bench_input.py --images 64 --out runs/bench_input.json

Reports, per worker count, the time to the first batch (includes spawning workers) and the
steady rate over the remaining batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from osteo_jax.data.pipeline import make_loader
from osteo_jax.data.sources import FolderSource

DEFAULT_DATA = Path("runs/data/paper_1024")


def _data_dir(tmp: str) -> Path:
    if (DEFAULT_DATA / "images.csv").exists():
        return DEFAULT_DATA
    from osteo_jax.config import CohortConfig, PhysicsConfig, SynthConfig
    from osteo_jax.data.synth.synthetic import write_dataset

    cfg = SynthConfig(cohort=CohortConfig(n_subjects=32), physics=PhysicsConfig(size=1024))
    return write_dataset(cfg, Path(tmp) / "ds", progress=False)


def bench(src: FolderSource, workers: int, n_images: int, batch: int, seed: int) -> dict:
    n_batches = max(n_images // batch, 2)
    indices = list(range(min(n_batches * batch, len(src))))
    t0 = time.perf_counter()
    it = iter(make_loader(src, batch_size=batch, seed=seed, indices=indices, workers=workers))
    first = next(it)
    t1 = time.perf_counter()
    rest = sum(1 for _ in it)
    t2 = time.perf_counter()
    if hasattr(it, "close"):
        it.close()
    assert first["image"].shape == (batch, src.size, src.size, 1)
    done = (1 + rest) * batch
    return dict(
        workers=workers,
        images=done,
        first_batch_s=round(t1 - t0, 3),
        total_s=round(t2 - t0, 3),
        images_per_s_total=round(done / (t2 - t0), 2),
        images_per_s_steady=round(rest * batch / (t2 - t1), 2) if rest else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        root = _data_dir(tmp)
        src = FolderSource(root, args.size)
        results = []
        for w in args.workers:
            r = bench(src, w, args.images, args.batch, args.seed)
            print(json.dumps(r), flush=True)
            results.append(r)
    report = dict(
        data=str(root),
        n_source=len(src),
        size=args.size,
        batch=args.batch,
        cpus=os.cpu_count(),
        machine=platform.processor() or platform.machine(),
        results=results,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
