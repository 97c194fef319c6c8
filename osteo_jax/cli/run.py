"""Whole-pipeline commands: demo, predict, screen and run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from osteo_jax.cli.cluster import add_cluster_args
from osteo_jax.cli.data import (
    add_allow_outside_paths,
    add_max_megapixels,
    add_overwrite,
    max_pixels,
    reader_options,
)
from osteo_jax.data.folder import write_json


def _print_run(res: dict) -> None:
    """Headline of a finished :func:`~osteo_jax.pipeline.experiment.run_experiment`."""
    radio = res.get("radiogrammetry", {})
    seg = res.get("seg_val") or {}
    lines = [
        "SYNTHETIC DATA - method development only, no clinical use."
        if (Path(res["data"]) / "oracle.json").exists()
        else "Research software - no clinical use.",
        res.get("table") or "",
    ]
    if seg:
        lines.append(
            f"segmenter (validation): Dice {seg.get('dice/consensus/mean', float('nan')):.3f}, "
            f"GED {seg.get('ged', float('nan')):.3f}"
        )
    if "MC2_r" in radio:
        lines.append(f"2MCI from predicted masks vs truth: r = {radio['MC2_r']:.3f}")
    lines += [
        f"report:    {res.get('report', {}).get('html', '-')}",
        "stages:    " + ", ".join(f"{k} {v:.0f} s" for k, v in res["stages"].items()),
        f"wall time: {res['wall_s']:.0f} s",
    ]
    print("\n".join(lines))


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the whole pipeline on the synthetic paper cohort at demo size."""
    import dataclasses

    from osteo_jax.pipeline.experiment import demo_config

    cfg = demo_config()
    if args.subjects is not None or args.seed is not None:
        synth = cfg.synth
        cohort = dataclasses.replace(synth.cohort, n_subjects=args.subjects or None)
        synth = dataclasses.replace(synth, cohort=cohort, seed=args.seed or synth.seed)
        cfg = dataclasses.replace(cfg, synth=synth)
    _run(cfg, args)
    return 0


def _run(cfg, args: argparse.Namespace) -> None:
    """Runs ``cfg`` into ``--out`` on ``--data`` and prints the headline."""
    from osteo_jax.pipeline.experiment import run_experiment

    opts = reader_options(args)
    _print_run(
        run_experiment(
            cfg, args.out, data=args.data, workers=args.workers, overwrite=args.overwrite, **opts
        )
    )


def _output_file(path: str | None, flag: str, overwrite: bool) -> Path | None:
    """``path`` of ``flag``, checked to be a new file (or, with ``overwrite``, a file)."""
    from osteo_jax.data.outdir import OutputFolderError

    if path is None:
        return None
    out = Path(path)
    if out.is_dir():
        raise OutputFolderError(f"{out}: is a folder; {flag} takes a file name")
    if out.exists() and not overwrite:
        raise OutputFolderError(f"{out}: exists; pass --overwrite to replace it")
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    """Probability of osteoporosis and 2MCI, with intervals, for new radiographs."""
    from osteo_jax.pipeline.predict import predict_images, summary_line

    out = _output_file(args.out, "--out", args.overwrite)
    _output_file(args.figure, "--figure", args.overwrite)
    results = predict_images(
        args.images,
        args.run,
        interval=args.interval,
        figure=args.figure,
        spacing_mm=args.spacing,
        max_pixels=max_pixels(args),
        stacked=not args.no_stacked,
    )
    for r in results:
        print(summary_line(r))
    print("research software trained on synthetic data: not a diagnosis")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, results)
        print(f"json: {out}")
    if args.figure:
        print(f"figure: {args.figure}")
    return 0


def cmd_screen(args: argparse.Namespace) -> int:
    """Screens a folder (or list) of radiographs into a CSV / JSON Lines file, resumably."""
    from osteo_jax.pipeline.screen import screen

    s = screen(
        args.inputs,
        args.run,
        args.out,
        fmt=args.format,
        batch_size=args.batch_size,
        jobs=min(os.cpu_count() or 1, 4) if args.jobs is None else args.jobs,
        interval=args.interval,
        spacing_mm=args.spacing,
        max_pixels=max_pixels(args),
        qc_data=args.qc_data,
        stacked=not args.no_stacked,
    )
    rate = f", {s['images_per_s']:.2f} images/s" if s["images_per_s"] else ""
    print(
        f"{s['images']} images: {s['skipped']} already in {s['out']}, {s['written']} written "
        f"({s['errors']} unreadable, {s['flagged']} flagged by QC){rate}"
    )
    if not s["qc_geometry_check"]:
        print(
            "note: QC geometry check off: the run's segmenter finds every bone in only "
            f"{s['qc_calibration_images']} training images (10 needed to calibrate it)"
        )
    print("research software trained on synthetic data: not a diagnosis")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Runs (or resumes) one experiment config end to end on a dataset folder."""
    from osteo_jax.config import ExperimentConfig, load_config

    _run(load_config(args.config, ExperimentConfig), args)
    return 0


def add_demo(sub) -> None:
    """Adds ``demo`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "demo", help="the whole pipeline on the synthetic paper cohort (about 10 min on CPU)"
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--data", default=None, help="dataset folder instead of the synthetic one")
    p.add_argument("--subjects", type=int, default=None, help="cohort size (default 192)")
    p.add_argument("--seed", type=int, default=None, help="synthetic cohort seed (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that render the cohort and measure radiogrammetry (default: the cores)",
    )
    add_overwrite(p)
    add_allow_outside_paths(p)
    p.set_defaults(func=cmd_demo)


def add_predict(sub) -> None:
    """Adds ``predict`` to the subcommands ``sub``."""
    p = sub.add_parser("predict", help="classify new radiographs (DICOM/PNG/TIFF) with intervals")
    p.add_argument("images", nargs="+", help="radiograph files")
    p.add_argument("--run", required=True, help="experiment folder (osteo-jax run / demo)")
    p.add_argument("--out", default=None, help="JSON output file")
    p.add_argument("--figure", default=None, help="PNG figure of the predictions")
    p.add_argument(
        "--interval", type=float, default=0.9, help="central mass of the intervals (0.9)"
    )
    p.add_argument(
        "--spacing", type=float, default=None, help="pixel spacing (mm) if the file has none"
    )
    add_max_megapixels(p)
    add_no_stacked(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing --out / --figure files"
    )
    p.set_defaults(func=cmd_predict)


def add_no_stacked(p) -> None:
    """``--no-stacked``: skip the image-only stacked score and its measurements."""
    p.add_argument(
        "--no-stacked",
        action="store_true",
        help="skip probability_stacked (image model + measurements) and the radiogrammetry it "
        "measures on each image (~0.5 s an image)",
    )


def add_screen(sub) -> None:
    """Adds ``screen`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "screen",
        help="screen a folder of radiographs into a CSV (batched, resumable, with QC flags)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="folders (recursive; DICOM/PNG/TIFF by content), image files, or .txt lists",
    )
    p.add_argument("--run", required=True, help="experiment folder (osteo-jax run / demo)")
    p.add_argument(
        "--out", required=True, help="results file (.csv, or .jsonl); a rerun skips its rows"
    )
    p.add_argument(
        "--format", choices=("csv", "jsonl"), default=None, help="default: from --out's suffix"
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per segmenter call (8)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="decode and cut worker processes (default: the cores, at most 4; 0: none)",
    )
    p.add_argument(
        "--interval", type=float, default=0.9, help="central mass of the intervals (0.9)"
    )
    p.add_argument(
        "--spacing", type=float, default=None, help="pixel spacing (mm) of files that have none"
    )
    p.add_argument(
        "--qc-data",
        default=None,
        help="training dataset folder to calibrate the QC on (default: the run's own)",
    )
    add_max_megapixels(p)
    add_no_stacked(p)
    p.set_defaults(func=cmd_screen)


def add_run(sub) -> None:
    """Adds ``run`` to the subcommands ``sub``."""
    p = sub.add_parser("run", help="run an experiment config end to end (resumes)")
    p.add_argument("--config", required=True, help="experiments/*.py (get_config()) or JSON")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--data", default=None, help="dataset folder (default: the config's synthetic cohort)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that render the cohort and measure radiogrammetry (default: the cores)",
    )
    add_overwrite(p)
    add_allow_outside_paths(p)
    add_cluster_args(p)
    p.set_defaults(func=cmd_run)
