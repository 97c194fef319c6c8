"""The ``osteo-jax`` command line.

Subcommands:
  synth    generate a synthetic cohort as a dataset folder
  preview  write a preview figure of a dataset folder
  demo     the main job on the synthetic paper cohort (for now: synth + preview)

Heavy imports happen inside each subcommand so that ``osteo-jax --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _synth_config(args: argparse.Namespace):
    from osteo_jax.config import AnnotatorConfig, CohortConfig, PhysicsConfig, SynthConfig

    return SynthConfig(
        cohort=CohortConfig(
            preset=args.preset, n_subjects=args.subjects, r=args.r, osteopenia=args.osteopenia
        ),
        physics=PhysicsConfig(size=args.size),
        annotators=AnnotatorConfig(n_annotators=args.annotators),
        seed=args.seed,
    )


def _add_synth_args(p: argparse.ArgumentParser, default_out: str | None) -> None:
    p.add_argument(
        "--preset",
        default="paper",
        choices=("paper", "screening"),
        help="cohort preset (default: paper, 192 subjects, 59 osteoporotic)",
    )
    p.add_argument(
        "--subjects", type=int, default=None, help="number of subjects (default: the preset's)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=1024,
        help="image side in pixels over a 204.8 mm field (default 1024 = 0.2 mm)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same files")
    p.add_argument(
        "--r",
        type=float,
        default=0.6,
        help="correlation of the hand-level latent with the T-score (default 0.6)",
    )
    p.add_argument(
        "--osteopenia", default="merge_into_normal", choices=("merge_into_normal", "exclude")
    )
    p.add_argument("--annotators", type=int, default=3, help="annotator masks per image")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: cores)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    if default_out is None:
        p.add_argument("--out", required=True, help="output dataset folder")


def cmd_synth(args: argparse.Namespace) -> int:
    """Writes a synthetic dataset folder."""
    from osteo_jax.data.synthetic import write_dataset

    cfg = _synth_config(args)
    t0 = time.perf_counter()
    out = write_dataset(cfg, args.out, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Writes the preview figure of a dataset folder."""
    from osteo_jax.eval.preview import dataset_preview

    fig = dataset_preview(args.data, args.out)
    print(f"preview figure: {fig}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: synthetic paper cohort, then its preview figure."""
    from osteo_jax.data.synthetic import write_dataset
    from osteo_jax.eval.preview import dataset_preview

    out = Path(args.out)
    data = out / "data"
    cfg = _synth_config(args)
    t0 = time.perf_counter()
    if data.is_dir() and (data / "oracle.json").exists() and not args.overwrite:
        print(f"reusing the dataset in {data} (pass --overwrite to regenerate)")
    else:
        write_dataset(cfg, data, workers=args.workers, overwrite=True)
    fig = dataset_preview(data, out / "preview.png")
    oracle = json.loads((data / "oracle.json").read_text())
    print(
        "SYNTHETIC DATA - method development only, no clinical use.\n"
        f"dataset:        {data}\n"
        f"preview figure: {fig}\n"
        f"subjects:       {oracle['n_subjects']} ({oracle['n_osteoporotic']} osteoporotic)\n"
        f"oracle AUC:     {oracle['oracle_auc']:.3f} this cohort, "
        f"{oracle['oracle_auc_population']:.3f} population (r = {oracle['r']})\n"
        f"wall time:      {time.perf_counter() - t0:.1f} s"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``osteo-jax``."""
    parser = argparse.ArgumentParser(
        prog="osteo-jax",
        description="Osteoporosis screening from hand radiographs (research code; synthetic "
        "default data; no clinical use).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="generate a synthetic cohort as a dataset folder")
    _add_synth_args(p, None)
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("preview", help="preview figure of a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", default=None, help="figure path (default: DATA/preview.png)")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("demo", help="run the main job on the synthetic paper cohort")
    _add_synth_args(p, "runs/demo")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``osteo-jax`` console script."""
    args = build_parser().parse_args(argv)
    from osteo_jax.data.folder import DatasetError

    try:
        return args.func(args)
    except (DatasetError, ValueError) as e:
        print(f"osteo-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
