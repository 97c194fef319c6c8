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


def _seg_train_config(args: argparse.Namespace):
    """SegTrainConfig from --config (a JSON file or an experiments/*.py) and CLI overrides."""
    import dataclasses

    from osteo_jax.config import SegTrainConfig, from_dict

    cfg = SegTrainConfig()
    if args.config:
        cfg = _load_config(args.config, SegTrainConfig, from_dict)
    over = {
        k: v
        for k, v in dict(
            epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed
        ).items()
        if v is not None
    }
    cfg = dataclasses.replace(cfg, **over)
    seg_over = {
        k: v
        for k, v in dict(
            image_size=args.size,
            form=args.form,
            num_experts=args.experts,
            num_samples=args.samples,
            mode=args.mode,
        ).items()
        if v is not None
    }
    return dataclasses.replace(cfg, seg=dataclasses.replace(cfg.seg, **seg_over))


def _load_config(path: str, cls, from_dict):
    """Loads a config: ``.json`` (asdict output) or ``.py`` with ``get_config()``."""
    import importlib.util

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: config file not found")
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return from_dict(cls, data.get("config", data))
    spec = importlib.util.spec_from_file_location(p.stem, p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    if not isinstance(cfg, cls):
        cfg = getattr(cfg, "seg_train", cfg)
    if not isinstance(cfg, cls):
        raise ValueError(
            f"{p}: get_config() returned {type(cfg).__name__}, expected {cls.__name__}"
        )
    return cfg


def cmd_train_seg(args: argparse.Namespace) -> int:
    """Trains the segmenter on a dataset folder (resuming from the run's latest checkpoint)."""
    from osteo_jax.train.loop import train_segmenter

    cfg = _seg_train_config(args)
    res = train_segmenter(args.data, args.out, cfg)
    val = res["val"]
    print(
        f"trained {res['steps']} steps (resumed from {res['resumed_from']}) in "
        f"{res['wall_s']:.0f} s; run folder {args.out}"
    )
    if val:
        print(
            f"validation: Dice vs consensus {val['dice/consensus/mean']:.3f}, "
            f"GED {val['ged']:.3f}, HM-IoU {val['hm_iou']:.3f}, ECE {val['ece']:.3f}"
        )
    return 0


def cmd_eval_seg(args: argparse.Namespace) -> int:
    """Evaluates a trained segmenter; writes seg_metrics.json and a figure into the run."""
    from osteo_jax.eval.seg_run import evaluate_run

    res = evaluate_run(args.run, args.data, split=args.split, n_figure=args.figure_images)
    m = res["metrics"]
    print(
        f"{m['n_images']:.0f} images ({args.split}): Dice vs consensus "
        f"{m['dice/consensus/mean']:.3f}, GED {m['ged']:.3f}, HM-IoU {m['hm_iou']:.3f}, "
        f"ECE {m['ece']:.3f}\nmetrics: {res['json']}\nfigure:  {res['figure']}"
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
    p = sub.add_parser("train-seg", help="train the mixture segmenter on a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="run folder (resumes if it has checkpoints)")
    p.add_argument("--config", default=None, help="JSON config or experiments/*.py")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="input side (default 128)")
    p.add_argument("--form", default=None, choices=("mixture", "mose", "unet"))
    p.add_argument("--experts", type=int, default=None, help="K decoders")
    p.add_argument("--samples", type=int, default=None, help="S latents per decoder")
    p.add_argument("--mode", default=None, choices=("auto", "vmap", "scan"))
    p.set_defaults(func=cmd_train_seg)
    p = sub.add_parser("eval-seg", help="evaluate a trained segmenter")
    p.add_argument("--run", required=True, help="run folder written by train-seg")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument("--figure-images", type=int, default=4)
    p.set_defaults(func=cmd_eval_seg)
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
