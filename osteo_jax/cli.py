"""The ``osteo-jax`` command line.

Subcommands:
  synth    generate a synthetic cohort as a dataset folder
  preview  write a preview figure of a dataset folder
  demo     the main job on the synthetic paper cohort (for now: synth + preview)
  train-seg / eval-seg      train and score the mixture segmenter
  segment                   cut the 7 bone segments of every image (segmenter, mask or raw)
  pretrain                  self-supervised pretraining of the ResNet on segments
  train-cls                 classifier (linear probe or fine-tune) on one split
  evaluate                  the paper's protocol (3 seeds or k folds), baselines, table, ROC
  build-tfds                build a dataset folder into a TFDS ArrayRecord dataset (no TF)
  validate                  check a dataset folder; the first problem is named with file and row

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
    p.add_argument(
        "--format",
        default="png",
        choices=("png", "dicom", "dicom-mono1"),
        help="image files: 16-bit PNG (default), DICOM MONOCHROME2 or MONOCHROME1",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    if default_out is None:
        p.add_argument("--out", required=True, help="output dataset folder")


def cmd_synth(args: argparse.Namespace) -> int:
    """Writes a synthetic dataset folder."""
    from osteo_jax.data.synth.synthetic import write_dataset

    cfg = _synth_config(args)
    t0 = time.perf_counter()
    out = write_dataset(
        cfg, args.out, workers=args.workers, overwrite=args.overwrite, image_format=args.format
    )
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Writes the preview figure of a dataset folder."""
    from osteo_jax.eval.preview import dataset_preview

    fig = dataset_preview(args.data, args.out)
    print(f"preview figure: {fig}")
    return 0


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

    from osteo_jax.pipeline.experiment import demo_config, run_experiment

    cfg = demo_config()
    if args.subjects is not None or args.seed is not None:
        synth = cfg.synth
        cohort = dataclasses.replace(synth.cohort, n_subjects=args.subjects or None)
        synth = dataclasses.replace(synth, cohort=cohort, seed=args.seed or synth.seed)
        cfg = dataclasses.replace(cfg, synth=synth)
    _print_run(run_experiment(cfg, args.out, data=args.data, workers=args.workers))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Probability of osteoporosis and 2MCI, with intervals, for new radiographs."""
    from osteo_jax.pipeline.predict import predict_images

    results = predict_images(
        args.images,
        args.run,
        interval=args.interval,
        figure=args.figure,
        spacing_mm=args.spacing,
    )
    for r in results:
        lo, hi = r["probability_interval"]
        clo, chi = r["2MCI_interval"]
        print(
            f"{r['path']}: p(osteoporosis) = {r['probability']:.3f} "
            f"[{lo:.3f}, {hi:.3f}], 2MCI = {r['2MCI']:.3f} [{clo:.3f}, {chi:.3f}]"
        )
    print("research software trained on synthetic data: not a diagnosis")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        tmp.replace(out)
        print(f"json: {out}")
    if args.figure:
        print(f"figure: {args.figure}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Runs (or resumes) one experiment config end to end on a dataset folder."""
    from osteo_jax.config import ExperimentConfig, load_config
    from osteo_jax.pipeline.experiment import run_experiment

    cfg = load_config(args.config, ExperimentConfig)
    _print_run(run_experiment(cfg, args.out, data=args.data, workers=args.workers))
    return 0


def _seg_train_config(args: argparse.Namespace):
    """SegTrainConfig from --config (JSON or experiments/*.py[:arg]) and the CLI overrides."""
    import dataclasses

    from osteo_jax.config import SegTrainConfig, load_config

    cfg = load_config(args.config, SegTrainConfig) if args.config else SegTrainConfig()
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


def cmd_train_seg(args: argparse.Namespace) -> int:
    """Trains the segmenter on a dataset folder (resuming from the run's latest checkpoint)."""
    from osteo_jax.eval.seg_eval import evaluate_segmenter
    from osteo_jax.train.loop import train_segmenter

    cfg = _seg_train_config(args)
    res = train_segmenter(
        args.data,
        args.out,
        cfg,
        evaluate_fn=evaluate_segmenter,
        stream=args.stream,
        workers=args.workers,
    )
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
    from osteo_jax.pipeline.seg_run import evaluate_run

    res = evaluate_run(args.run, args.data, split=args.split, n_figure=args.figure_images)
    m = res["metrics"]
    print(
        f"{m['n_images']:.0f} images ({args.split}): Dice vs consensus "
        f"{m['dice/consensus/mean']:.3f}, GED {m['ged']:.3f}, HM-IoU {m['hm_iou']:.3f}, "
        f"ECE {m['ece']:.3f}\nmetrics: {res['json']}\nfigure:  {res['figure']}"
    )
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """Cuts the bone segments of every image of a dataset folder."""
    from osteo_jax.config import SegmentConfig
    from osteo_jax.pipeline.extract import extract_segments

    cfg = SegmentConfig(size=args.size, frame=args.frame, roi=args.roi, background=args.background)
    out = extract_segments(
        args.data, args.out, source=args.source, cfg=cfg, overwrite=args.overwrite
    )
    meta = json.loads((out / "segments.json").read_text())
    print(
        f"wrote {meta['n_images']} images' segments to {out}; valid fraction per bone: "
        + ", ".join(f"{k} {v:.2f}" for k, v in meta["valid_fraction"].items())
    )
    return 0


def _protocol_config(args: argparse.Namespace):
    """ProtocolConfig from --config (JSON or experiments/*.py[:arg]) and the CLI overrides."""
    import dataclasses

    from osteo_jax.config import ProtocolConfig, load_config

    cfg = load_config(args.config, ProtocolConfig) if args.config else ProtocolConfig()
    ssl, cls, backbone = cfg.ssl, cfg.cls, cfg.backbone
    method = getattr(args, "method", None)
    if method == "none":
        ssl = None
    elif method is not None:
        ssl = dataclasses.replace(ssl or _default_ssl(), method=method)
    bb_over = {k: v for k, v in dict(depth=args.depth, width=args.width).items() if v is not None}
    if ssl is not None:
        ssl_over = {
            k: v
            for k, v in dict(
                epochs=getattr(args, "ssl_epochs", None),
                batch_size=getattr(args, "ssl_batch_size", None),
                max_steps=getattr(args, "max_steps", None),
            ).items()
            if v is not None
        }
        crops = ssl.crops
        if getattr(args, "crop", None):
            crops = dataclasses.replace(crops, custom=args.crop == "custom")
        ssl = dataclasses.replace(
            ssl, backbone=dataclasses.replace(ssl.backbone, **bb_over), crops=crops, **ssl_over
        )
    backbone = dataclasses.replace(backbone, **bb_over)
    cls_over = {
        k: v
        for k, v in dict(
            mode=getattr(args, "mode", None), epochs=getattr(args, "cls_epochs", None)
        ).items()
        if v is not None
    }
    if getattr(args, "seeds", None):
        cls_over["seeds"] = tuple(int(x) for x in args.seeds.split(","))
    if getattr(args, "folds", None) is not None:
        cls_over["folds"] = args.folds
    cls = dataclasses.replace(cls, **cls_over)
    return dataclasses.replace(cfg, ssl=ssl, cls=cls, backbone=backbone)


def _default_ssl():
    from osteo_jax.config import SSLConfig

    return SSLConfig()


def _split_of(segments, cls, seed: int):
    from osteo_jax.data.splits import stratified_subject_split

    labelled = segments.take(segments.labels >= 0)
    tr, va, te = stratified_subject_split(
        labelled.subject_ids, labelled.labels, tuple(cls.split), seed
    )
    return labelled, tr, va, te


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Self-supervised pretraining on the training subjects of one split (or all segments)."""
    import dataclasses

    from osteo_jax.data.segments import load_segments
    from osteo_jax.train.ssl_loop import train_ssl

    cfg = _protocol_config(args)
    if cfg.ssl is None:
        raise ValueError("pretrain needs an SSL method (got --method none)")
    seg = load_segments(args.segments).select_bones(tuple(cfg.cls.bones))
    if not args.all:
        seg, tr, _, _ = _split_of(seg, cfg.cls, args.split_seed)
        seg = seg.take(tr)
    res = train_ssl(seg, args.out, dataclasses.replace(cfg.ssl, seed=args.split_seed))
    print(
        f"pretrained {res['steps']} steps ({cfg.ssl.method}) in {res['wall_s']:.0f} s; "
        f"final loss {res['train'].get('loss', float('nan')):.4f}; run folder {args.out}"
    )
    return 0


def cmd_train_cls(args: argparse.Namespace) -> int:
    """Trains the classifier on one split; selects on val macro-F1; reports the test subjects."""
    from osteo_jax.data.segments import load_segments
    from osteo_jax.eval.cls_metrics import binary_metrics, subject_metrics, subject_scores
    from osteo_jax.train.cls_loop import predict_segments, train_classifier
    from osteo_jax.train.ssl_loop import restore_ssl_params

    cfg = _protocol_config(args)
    backbone, params = cfg.backbone, None
    if args.ssl_run:
        ssl_params, ssl_cfg = restore_ssl_params(args.ssl_run)
        params, backbone = {"backbone": ssl_params["backbone"]}, ssl_cfg.backbone
    seg = load_segments(args.segments).select_bones(tuple(cfg.cls.bones))
    seg, tr, va, te = _split_of(seg, cfg.cls, args.seed)
    res = train_classifier(
        seg.take(tr),
        seg.take(va),
        args.out,
        cfg.cls,
        evaluate_fn=subject_metrics,
        backbone_cfg=backbone,
        params=params,
        seed=args.seed,
    )
    test = seg.take(te)
    p, y = subject_scores(predict_segments(res["params"], backbone, test), test)
    m = binary_metrics(p, y)
    print(
        f"best epoch {res['best_epoch']} (val macro-F1 {res['val']['f1_macro']:.3f}); test "
        f"subjects ({len(y)}): " + ", ".join(f"{k} {v:.3f}" for k, v in m.items())
    )
    return 0


def _data_of(segments_dir: str) -> Path | None:
    """The dataset folder the segments were cut from, if it is still there."""
    try:
        meta = json.loads((Path(segments_dir) / "segments.json").read_text())
        data = Path(meta["data"])
    except (OSError, KeyError, ValueError):
        return None
    return data if (data / "subjects.csv").exists() else None


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The paper's protocol on a segments folder: table, ROC and reliability figures."""
    from osteo_jax.data.synth.ceiling import read_ceilings
    from osteo_jax.eval.baselines import read_covariates
    from osteo_jax.eval.headline import headline_table
    from osteo_jax.pipeline.comparison import compare_rows
    from osteo_jax.pipeline.protocol import run_protocol

    cfg = _protocol_config(args)
    data = _data_of(args.segments)
    ceilings = read_ceilings(data) if data is not None else None
    if data is not None and cfg.covariates:  # a missing column fails before training
        read_covariates(data, cfg.covariates)
    res = run_protocol(
        args.segments,
        args.out,
        ssl=cfg.ssl,
        cls=cfg.cls,
        backbone=cfg.backbone,
        name=cfg.name,
        ceiling_auc=None if ceilings is None else ceilings["image_ceiling_auc"],
    )
    print("SYNTHETIC DATA - method development only, no clinical use.\n" + res["table"])
    if data is not None:  # the baselines and Bayes posteriors on the same test subjects
        comparison = compare_rows(
            args.out, data, covariates=cfg.covariates, n_boot=cfg.cls.bootstrap
        )
        print(headline_table(comparison))
    print(
        f"wall time {res['wall_s']:.0f} s; results in {args.out} (cls_metrics.json, "
        "table.md, comparison.md, roc.png, reliability.png)"
    )
    return 0


def cmd_build_tfds(args: argparse.Namespace) -> int:
    """Builds a dataset folder into a TFDS (ArrayRecord) dataset, readable without TensorFlow."""
    from osteo_jax.data.tfds_builder import build_tfds, load_tfds

    path = build_tfds(args.data, args.out, overwrite=args.overwrite)
    n = len(load_tfds(args.out))
    print(f"built {path} ({n} records); read with osteo_jax.data.tfds_builder.load_tfds")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Checks a dataset folder (tables, paths, images, masks, labels, splits); writes nothing."""
    from osteo_jax.data.validate import validate_folder

    report = validate_folder(args.data, check_images=not args.tables_only)
    print(
        f"{args.data}: OK - {report.n_subjects} subjects, {report.n_images} images, masks "
        + ", ".join(f"{k} {v}" for k, v in report.masks.items())
    )
    for w in report.warnings:
        print(f"warning: {w}")
    return 0


def _add_protocol_args(p: argparse.ArgumentParser, *, ssl: bool, cls: bool) -> None:
    p.add_argument("--segments", required=True, help="segments folder (osteo-jax segment)")
    p.add_argument("--out", required=True, help="run / output folder (resumes)")
    p.add_argument("--config", default=None, help="JSON or experiments/*.py (ProtocolConfig)")
    p.add_argument("--depth", type=int, default=None, choices=(18, 34, 50))
    p.add_argument("--width", type=int, default=None, help="ResNet base width (default 16)")
    if ssl:
        p.add_argument(
            "--method", default=None, choices=("simclr", "vicreg", "supcon", "swav", "none")
        )
        p.add_argument("--ssl-epochs", type=int, default=None)
        p.add_argument("--ssl-batch-size", type=int, default=None)
        p.add_argument(
            "--crop",
            default=None,
            choices=("custom", "ordinary"),
            help="multi-crop policy (default custom: >= 10 %% bone per crop)",
        )
    if cls:
        p.add_argument("--mode", default=None, choices=("probe", "finetune"))
        p.add_argument("--cls-epochs", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``osteo-jax``."""
    from osteo_jax.config import ROI_REGIONS

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
    p.add_argument("--data", required=True, help="dataset folder or TFDS build folder")
    p.add_argument(
        "--stream",
        action="store_true",
        help="decode images from disk at every read (folders larger than memory)",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="grain decoding processes (same batches for any)"
    )
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
    p = sub.add_parser("segment", help="cut the bone segments of every image")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument(
        "--source",
        required=True,
        help="train-seg run folder, a mask folder name (exact, annotator_0, ...) or raw",
    )
    p.add_argument("--out", required=True, help="segments folder")
    p.add_argument("--size", type=int, default=128, help="segment side (default 128)")
    p.add_argument("--frame", default="aligned", choices=("aligned", "box"))
    p.add_argument(
        "--roi",
        default="bones",
        choices=tuple(ROI_REGIONS),
        help="bones: the 7 bone segments (paper); other regions: crops for the baselines",
    )
    p.add_argument(
        "--background",
        default="zero",
        choices=("zero", "keep"),
        help="zero outside the dilated mask (paper) or keep the radiograph (crop baselines)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_segment)
    p = sub.add_parser("pretrain", help="self-supervised pretraining on segments")
    _add_protocol_args(p, ssl=True, cls=False)
    p.add_argument("--split-seed", type=int, default=0, help="pretrain on this split's train part")
    p.add_argument("--all", action="store_true", help="pretrain on every segment instead")
    p.add_argument("--max-steps", type=int, default=None)
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("train-cls", help="train the classifier on one split")
    _add_protocol_args(p, ssl=False, cls=True)
    p.add_argument("--ssl-run", default=None, help="pretrain run folder (default: random init)")
    p.add_argument("--seed", type=int, default=0, help="split and init seed")
    p.set_defaults(func=cmd_train_cls)
    p = sub.add_parser("evaluate", help="the paper's protocol (3 seeds) on a segments folder")
    _add_protocol_args(p, ssl=True, cls=True)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument(
        "--folds", type=int, default=None, help="k-fold cross-validation over subjects instead"
    )
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("build-tfds", help="build a TFDS ArrayRecord dataset from a folder")
    p.add_argument("--data", required=True, help="dataset folder (the manual directory)")
    p.add_argument("--out", required=True, help="TFDS data_dir")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing build")
    p.set_defaults(func=cmd_build_tfds)
    p = sub.add_parser("validate", help="check a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--tables-only", action="store_true", help="do not decode images and masks")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser(
        "demo", help="the whole pipeline on the synthetic paper cohort (about 10 min on CPU)"
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--data", default=None, help="dataset folder instead of the synthetic one")
    p.add_argument("--subjects", type=int, default=None, help="cohort size (default 192)")
    p.add_argument("--seed", type=int, default=None, help="synthetic cohort seed (default 0)")
    p.add_argument("--workers", type=int, default=None, help="render processes")
    p.set_defaults(func=cmd_demo)
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
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("run", help="run an experiment config end to end (resumes)")
    p.add_argument("--config", required=True, help="experiments/*.py (get_config()) or JSON")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--data", default=None, help="dataset folder (default: the config's synthetic cohort)"
    )
    p.add_argument("--workers", type=int, default=None, help="render processes")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``osteo-jax`` console script."""
    args = build_parser().parse_args(argv)
    from osteo_jax.data.errors import DatasetError

    try:
        return args.func(args)
    except (DatasetError, ValueError) as e:
        print(f"osteo-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
