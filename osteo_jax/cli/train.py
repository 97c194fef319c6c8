"""Stage commands: train-seg, eval-seg, segment, pretrain, train-cls and evaluate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from osteo_jax.cli.cluster import add_cluster_args
from osteo_jax.cli.data import add_allow_outside_paths, add_overwrite, reader_options
from osteo_jax.config.choices import AGGREGATES, THRESHOLD_RULES
from osteo_jax.data.outdir import check_dir


def _seg_train_config(args: argparse.Namespace):
    """SegTrainConfig from --config (JSON or experiments/*.py[:arg]) and the CLI overrides."""
    import dataclasses

    from osteo_jax.config import SegTrainConfig, load_config

    cfg = load_config(args.config, SegTrainConfig) if args.config else SegTrainConfig()
    over = {
        k: v
        for k, v in dict(
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_steps=args.max_steps,
            seed=args.seed,
            expert_parallel=args.expert_parallel,
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
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **seg_over))


def cmd_train_seg(args: argparse.Namespace) -> int:
    """Trains the segmenter on a dataset folder (resuming from the run's latest checkpoint)."""
    from osteo_jax.eval.seg_eval import evaluate_segmenter
    from osteo_jax.train.seg_loop import train_segmenter

    cfg = _seg_train_config(args)
    res = train_segmenter(
        args.data,
        args.out,
        cfg,
        evaluate_fn=evaluate_segmenter,
        stream=args.stream,
        workers=args.workers,
        overwrite=args.overwrite,
        **reader_options(args),
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

    opts = reader_options(args)
    res = evaluate_run(args.run, args.data, split=args.split, n_figure=args.figure_images, **opts)
    m = res["metrics"]
    print(
        f"{m['n_images']:.0f} images ({args.split}): Dice vs consensus "
        f"{m['dice/consensus/mean']:.3f}, GED {m['ged']:.3f}, HM-IoU {m['hm_iou']:.3f}, "
        f"ECE {m['ece']:.3f}"
        + (f", experts alive {m['experts_alive']:.0f}" if "experts_alive" in m else "")
        + f"\nmetrics: {res['json']}"
        + (f"\nfigure:  {res['figure']}" if res["figure"] else "")
    )
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """Cuts the bone segments of every image of a dataset folder."""
    from osteo_jax.config import SegmentConfig
    from osteo_jax.pipeline.extract import extract_segments

    cfg = SegmentConfig(size=args.size, frame=args.frame, roi=args.roi, background=args.background)
    out = extract_segments(
        args.data,
        args.out,
        source=args.source,
        cfg=cfg,
        overwrite=args.overwrite,
        **reader_options(args),
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
    for key in ("threshold", "aggregate"):
        if getattr(args, key, None) is not None:
            cls_over[key] = getattr(args, key)
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
    check_dir(args.out, "pretrain", overwrite=args.overwrite)  # before reading the segments
    seg = load_segments(args.segments).select_bones(tuple(cfg.cls.bones))
    if not args.all:
        seg, tr, _, _ = _split_of(seg, cfg.cls, args.split_seed)
        seg = seg.take(tr)
    res = train_ssl(
        seg, args.out, dataclasses.replace(cfg.ssl, seed=args.split_seed), overwrite=args.overwrite
    )
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
    check_dir(args.out, "train-cls", overwrite=args.overwrite)  # before reading the segments
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
        overwrite=args.overwrite,
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
    from osteo_jax.eval.headline import headline_table
    from osteo_jax.eval.subject_features import read_covariates
    from osteo_jax.pipeline.comparison import compare_rows
    from osteo_jax.pipeline.protocol import run_protocol

    cfg = _protocol_config(args)
    check_dir(args.out, "evaluate", overwrite=args.overwrite)  # before reading the segments
    data = _data_of(args.segments)
    if data is not None:  # its tables feed the baselines: the dataset's rules, before writing
        from osteo_jax.data.dataset import read_dataset

        read_dataset(data, images="none", **reader_options(args))
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
        overwrite=args.overwrite,
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


def _add_protocol_args(p: argparse.ArgumentParser, *, ssl: bool, cls: bool) -> None:
    p.add_argument("--segments", required=True, help="segments folder (osteo-jax segment)")
    p.add_argument("--out", required=True, help="run / output folder (resumes)")
    add_overwrite(p)
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


def add_train_seg(sub) -> None:
    """Adds ``train-seg`` to the subcommands ``sub``."""
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
    add_overwrite(p)
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
    p.add_argument(
        "--expert-parallel",
        type=int,
        default=None,
        metavar="E",
        help="split the K decoders over E devices (a data x expert mesh; default 1; "
        "a run may resume with another E)",
    )
    add_allow_outside_paths(p)
    add_cluster_args(p)
    p.set_defaults(func=cmd_train_seg)


def add_eval_seg(sub) -> None:
    """Adds ``eval-seg`` to the subcommands ``sub``."""
    p = sub.add_parser("eval-seg", help="evaluate a trained segmenter")
    p.add_argument("--run", required=True, help="run folder written by train-seg")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument(
        "--figure-images", type=int, default=4, help="images in the figure (0: no figure)"
    )
    add_allow_outside_paths(p)
    p.set_defaults(func=cmd_eval_seg)


def add_segment(sub) -> None:
    """Adds ``segment`` to the subcommands ``sub``."""
    from osteo_jax.config import ROI_REGIONS

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
    add_overwrite(p)
    add_allow_outside_paths(p)
    p.set_defaults(func=cmd_segment)


def add_pretrain(sub) -> None:
    """Adds ``pretrain`` to the subcommands ``sub``."""
    p = sub.add_parser("pretrain", help="self-supervised pretraining on segments")
    _add_protocol_args(p, ssl=True, cls=False)
    p.add_argument("--split-seed", type=int, default=0, help="pretrain on this split's train part")
    p.add_argument("--all", action="store_true", help="pretrain on every segment instead")
    p.add_argument("--max-steps", type=int, default=None)
    add_cluster_args(p)
    p.set_defaults(func=cmd_pretrain)


def add_train_cls(sub) -> None:
    """Adds ``train-cls`` to the subcommands ``sub``."""
    p = sub.add_parser("train-cls", help="train the classifier on one split")
    _add_protocol_args(p, ssl=False, cls=True)
    p.add_argument("--ssl-run", default=None, help="pretrain run folder (default: random init)")
    p.add_argument("--seed", type=int, default=0, help="split and init seed")
    add_cluster_args(p)
    p.set_defaults(func=cmd_train_cls)


def add_evaluate(sub) -> None:
    """Adds ``evaluate`` to the subcommands ``sub``."""
    p = sub.add_parser("evaluate", help="the paper's protocol (3 seeds) on a segments folder")
    _add_protocol_args(p, ssl=True, cls=True)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument(
        "--folds", type=int, default=None, help="k-fold cross-validation over subjects instead"
    )
    p.add_argument(
        "--threshold",
        default=None,
        choices=THRESHOLD_RULES,
        help="decision threshold of F1/accuracy: fixed 0.5 or chosen on validation",
    )
    p.add_argument(
        "--aggregate",
        default=None,
        choices=AGGREGATES,
        help="subject score: mean of segments or a per-bone logistic head",
    )
    add_allow_outside_paths(p)
    p.set_defaults(func=cmd_evaluate)
