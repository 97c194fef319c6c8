"""Data commands: synth, preview, build-tfds and validate."""

from __future__ import annotations

import argparse
import time


def _megapixels(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of megapixels, got {text!r}")
    return value


def add_max_megapixels(p: argparse.ArgumentParser) -> None:
    """Adds ``--max-megapixels``, the pixel cap of the image readers, to a command."""
    p.add_argument(
        "--max-megapixels",
        type=_megapixels,
        default=None,
        help="refuse larger images, judged from the file header before decoding "
        "(default: osteo_jax.data.limits.MAX_IMAGE_PIXELS, 50 MP)",
    )


def add_allow_outside_paths(p: argparse.ArgumentParser) -> None:
    """Adds ``--allow-outside-paths`` to a command that reads a dataset folder."""
    p.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="read dataset paths that leave the dataset folder (absolute, '..', symbolic links "
        "resolving outside); refused by default",
    )


def reader_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of the dataset readers from the command's flags."""
    return {"allow_outside_paths": args.allow_outside_paths}


def max_pixels(args: argparse.Namespace) -> int:
    """The pixel cap from ``--max-megapixels``, else the package default."""
    from osteo_jax.data.limits import MAX_IMAGE_PIXELS

    mp = getattr(args, "max_megapixels", None)
    return MAX_IMAGE_PIXELS if mp is None else round(mp * 1e6)


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """Adds ``--overwrite``: start afresh, replacing only the files the command writes."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files this command writes in a non-empty output (others stay); "
        "without it, a folder holding other files is refused and an earlier run resumed",
    )


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
    add_overwrite(p)
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


def cmd_build_tfds(args: argparse.Namespace) -> int:
    """Builds a dataset folder into a TFDS (ArrayRecord) dataset, readable without TensorFlow."""
    from osteo_jax.data.tfds_dataset import build_tfds, load_tfds

    path = build_tfds(args.data, args.out, overwrite=args.overwrite, **reader_options(args))
    n = len(load_tfds(args.out))
    print(f"built {path} ({n} records); read with osteo_jax.data.tfds_dataset.load_tfds")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Checks a dataset folder (tables, paths, images, masks, labels, splits); writes nothing."""
    from osteo_jax.data.validate import validate_folder

    report = validate_folder(
        args.data,
        check_images=not args.tables_only,
        max_pixels=max_pixels(args),
        allow_outside_paths=args.allow_outside_paths,
    )
    print(
        f"{args.data}: OK - {report.n_subjects} subjects, {report.n_images} images, masks "
        + ", ".join(f"{k} {v}" for k, v in report.masks.items())
    )
    for w in report.warnings:
        print(f"warning: {w}")
    return 0


def add_synth(sub) -> None:
    """Adds ``synth`` to the subcommands ``sub``."""
    p = sub.add_parser("synth", help="generate a synthetic cohort as a dataset folder")
    _add_synth_args(p, None)
    p.set_defaults(func=cmd_synth)


def add_preview(sub) -> None:
    """Adds ``preview`` to the subcommands ``sub``."""
    p = sub.add_parser("preview", help="preview figure of a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", default=None, help="figure path (default: DATA/preview.png)")
    p.set_defaults(func=cmd_preview)


def add_build_tfds(sub) -> None:
    """Adds ``build-tfds`` to the subcommands ``sub``."""
    p = sub.add_parser("build-tfds", help="build a TFDS ArrayRecord dataset from a folder")
    p.add_argument("--data", required=True, help="dataset folder (the manual directory)")
    p.add_argument("--out", required=True, help="TFDS data_dir")
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing build")
    add_allow_outside_paths(p)
    p.set_defaults(func=cmd_build_tfds)


def add_validate(sub) -> None:
    """Adds ``validate`` to the subcommands ``sub``."""
    p = sub.add_parser("validate", help="check a dataset folder")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--tables-only", action="store_true", help="do not decode images and masks")
    add_max_megapixels(p)
    add_allow_outside_paths(p)
    p.set_defaults(func=cmd_validate)
