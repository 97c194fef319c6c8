"""The whole pipeline from one :class:`~osteo_jax.config.ExperimentConfig`: ``osteo-jax run``.

radiographs (a dataset folder, or the synthetic cohort of ``cfg.synth``) → segmenter →
bone segments → the paper's protocol (SSL, linear probe / fine-tuning, 3 seeds) →
radiogrammetry → baselines (clinical, radiogrammetry, fusion; Bayes posteriors on synthetic
data) on the same splits → report. Every stage writes into one folder and is skipped or resumed when
it already ran, so a killed run is restarted with the same command::

    OUT/config.json            the config (a re-run must use the same one)
    OUT/data/                  the synthetic dataset (when no --data is given)
    OUT/seg/                   train-seg run (checkpoints, metrics, val_metrics.json)
    OUT/segments/              bone segments cut from the segmenter's prediction
    OUT/cls/                   run_protocol output (cls_metrics.json, table.md, seed<k>/...)
    OUT/radiogrammetry.json    2MCI etc. measured on predicted masks (every subject)
    OUT/cls/comparison.*       the image model beside the baselines and Bayes posteriors
    OUT/report.md, report.html, figures/
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from osteo_jax.config import ExperimentConfig
from osteo_jax.data.folder import nulls_to_nan, write_json
from osteo_jax.data.outdir import OutputFolderError, check_dir
from osteo_jax.train import distributed

__all__ = ["run_experiment"]


def _image_ceiling(data: Path) -> float | None:
    from osteo_jax.data.synth.ceiling import read_ceilings

    ceilings = read_ceilings(data)
    return None if ceilings is None else ceilings["image_ceiling_auc"]


def _segments_current(seg_dir: Path, seg_run: Path, cfg: ExperimentConfig) -> bool:
    """Whether ``seg_dir`` was cut by the newest checkpoint of ``seg_run`` with ``cfg``."""
    from osteo_jax.train.runner import CHECKPOINT_DIR, Checkpointer

    meta_path = seg_dir / "segments.json"
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    ckpt = Checkpointer(seg_run / CHECKPOINT_DIR)
    step = ckpt.latest_step()
    ckpt.close()
    same_cfg = json.dumps(meta.get("segment")) == json.dumps(dataclasses.asdict(cfg.segment))
    return meta.get("seg_step") == step and same_cfg


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    data: str | Path | None = None,
    progress: bool = True,
    workers: int | None = None,
    report: bool = True,
    overwrite: bool = False,
    allow_outside_paths: bool = False,
) -> dict:
    """Runs (or resumes) the whole pipeline; returns the stage timings and headline figures.

    Args:
      cfg: the experiment.
      out: output folder: absent, empty, or a run of the same config (continued); see
        :mod:`osteo_jax.data.outdir` for what ``overwrite`` may replace.
      data: a dataset folder (``osteo-jax validate`` it first); None synthesises
        ``cfg.synth`` into ``out/data``.
      progress: progress bars.
      workers: processes for rendering the synthetic cohort and for measuring radiogrammetry
        (default: all cores; up to 4 for radiogrammetry).
      report: write ``report.md`` / ``report.html`` at the end.
      overwrite: start afresh, replacing only the files ``run`` writes (others stay).
      allow_outside_paths: accept paths of ``data`` leaving its folder
        (:mod:`osteo_jax.data.confine`).

    In a multi-process run (:mod:`osteo_jax.train.distributed`) every process runs the
    training stages (segmenter, SSL, classifier: each process feeding its block of every
    batch); process 0 alone synthesises the data, cuts the segments, writes the protocol's
    files and runs radiogrammetry, baselines and report while the others wait.

    Returns:
      ``{"out", "data", "wall_s", "stages": {name: seconds}, "summary", "seg_val",
      "radiogrammetry", "report", "table"}`` (also written to ``out/run_summary.json``); on
      processes other than 0 only ``out``, ``data``, ``wall_s``, ``stages``, ``summary`` and
      ``table`` (the protocol's).

    Raises:
      ValueError: no data and no ``cfg.synth``; ``out`` holds a run of another config.
      OutputFolderError: ``out`` holds files ``run`` did not write (and not ``overwrite``).
    """
    from osteo_jax.data.synth.synthetic import write_dataset
    from osteo_jax.train.runner import claim_run_dir

    t0 = time.perf_counter()
    check_dir(out, "run", overwrite=overwrite)
    if data is None and cfg.synth is None:
        raise ValueError("no dataset folder given and the config has no synthetic cohort")
    data = Path(out) / "data" if data is None else Path(data)
    if data != Path(out) / "data":  # the dataset's rules, before anything is written
        from osteo_jax.data.dataset import training_annotators

        training_annotators(data, cfg.seg.annotators, allow_outside_paths=allow_outside_paths)
        _check_covariates(data, cfg)  # fail now, not after hours of training
    try:
        claim = claim_run_dir(out, "run", cfg, str(data), overwrite=overwrite)
    except OutputFolderError:
        raise
    except ValueError as err:
        raise ValueError(
            f"{Path(out) / 'config.json'}: {out} holds an experiment of another configuration; "
            "use a new --out folder, or pass --overwrite to replace its files"
        ) from err
    out = claim.path
    stages: dict[str, float] = {}

    def stage(name: str, t: float) -> None:
        stages[name] = round(time.perf_counter() - t, 1)
        if progress:
            print(f"[{name}] {stages[name]:.1f} s", flush=True)

    with claim.discarded_on_error():
        if data == out / "data":
            t = time.perf_counter()
            if distributed.is_main() and not (data / "dataset.json").exists():
                write_dataset(cfg.synth, data, workers=workers, progress=progress)
            distributed.barrier("osteo_jax:run:synth")
            stage("synth", t)
            _check_covariates(data, cfg)
        return _stages(
            cfg,
            out,
            data,
            claim,
            stage=stage,
            stages=stages,
            t0=t0,
            progress=progress,
            report=report,
            allow_outside_paths=allow_outside_paths,
            jobs=_measure_jobs(workers),
        )


def _check_covariates(data: Path, cfg: ExperimentConfig) -> None:
    """Fails if a covariate column of the protocol is missing from ``data``."""
    if cfg.protocol.covariates:
        from osteo_jax.eval.subject_features import read_covariates

        read_covariates(data, cfg.protocol.covariates)


def _stages(
    cfg, out, data, claim, *, stage, stages, t0, progress, report, allow_outside_paths, jobs
) -> dict:
    """The stages after the data of :func:`run_experiment`, each skipped or resumed if done."""
    from osteo_jax.eval.seg_eval import evaluate_segmenter
    from osteo_jax.pipeline.extract import extract_segments
    from osteo_jax.pipeline.protocol import run_protocol
    from osteo_jax.train.seg_loop import train_segmenter

    t = time.perf_counter()
    seg_run = out / "seg"
    seg = train_segmenter(
        data,
        seg_run,
        cfg.seg,
        evaluate_fn=evaluate_segmenter,
        progress=progress,
        allow_outside_paths=allow_outside_paths,
    )
    stage("train-seg", t)

    t = time.perf_counter()
    seg_dir = out / "segments"
    recut = not _segments_current(seg_dir, seg_run, cfg)
    distributed.barrier("osteo_jax:run:segments-checked")
    if recut and distributed.is_main():
        claim.remove("cls")  # results of older segments are stale
        extract_segments(
            data,
            seg_dir,
            source=str(seg_run),
            cfg=cfg.segment,
            overwrite=True,
            batch_size=cfg.seg.batch_size,  # the validation compile is reused
            allow_outside_paths=allow_outside_paths,
        )
    distributed.barrier("osteo_jax:run:segments")
    stage("segments", t)

    t = time.perf_counter()
    proto = cfg.protocol
    done = out / "cls" / "cls_metrics.json"
    if done.exists():  # finished on these segments (same config, checked above): reuse
        metrics = json.loads(done.read_text())
        result = {
            "summary": nulls_to_nan(metrics["summary"]),
            "table": (out / "cls" / "table.md").read_text(),
        }
    else:
        result = run_protocol(
            seg_dir,
            out / "cls",
            ssl=proto.ssl,
            cls=proto.cls,
            backbone=proto.backbone,
            name=proto.name,
            roi=f"segmentation ({cfg.seg.model.form} K={cfg.seg.model.num_experts} "
            f"S={cfg.seg.model.num_samples})",
            ceiling_auc=_image_ceiling(data),
            progress=progress,
        )
    stage("ssl+classifier", t)
    if not distributed.is_main():  # the rest trains nothing: process 0 alone measures, writes
        distributed.barrier("osteo_jax:run:done")
        return {
            "out": str(out),
            "data": str(data),
            "wall_s": round(time.perf_counter() - t0, 1),
            "stages": stages,
            "summary": result["summary"],
            "table": result["table"],
        }

    t = time.perf_counter()
    from osteo_jax.pipeline.radiogrammetry_run import radiogrammetry_of_run
    from osteo_jax.pipeline.report import write_experiment_report

    radio_path = out / "radiogrammetry.json"
    radio = json.loads(radio_path.read_text()) if radio_path.exists() else {}
    current = radio.get("summary", {})
    if recut or current.get("seg_step") != seg["steps"] or current.get("split") != "all":
        # Every subject (the radiogrammetry baseline is fitted on the protocol's training
        # subjects); the costly spread over hypotheses only on the segmenter's validation ones.
        radio = radiogrammetry_of_run(
            data,
            seg_run,
            radio_path,
            split="all",
            spread_split="val",
            hypotheses=cfg.hypotheses,
            progress=progress,
            jobs=jobs,
        )
    stage("radiogrammetry", t)

    t = time.perf_counter()
    from osteo_jax.pipeline.comparison import compare_rows

    comparison = compare_rows(
        out / "cls",
        data,
        radiogrammetry=radio_path,
        covariates=proto.covariates,
        segments=seg_dir,
        n_boot=proto.cls.bootstrap,
    )
    stage("baselines", t)
    summary = {
        "out": str(out),
        "data": str(data),
        "wall_s": round(time.perf_counter() - t0, 1),
        "stages": stages,
        "summary": result["summary"],
        "comparison": {
            name: {"auc": row["summary"]["auc"], "vs_clinical": comparison["vs_clinical"].get(name)}
            for name, row in comparison["rows"].items()
        },
        "ceilings": comparison["ceilings"],
        "seg_val": seg["val"],
        "radiogrammetry": radio.get("summary", {}),
    }
    write_json(out / "run_summary.json", summary)
    if report:
        t = time.perf_counter()
        summary["report"] = {k: str(v) for k, v in write_experiment_report(out, cfg, data).items()}
        stage("report", t)
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
    from osteo_jax.eval.headline import COMPARISON_MD

    summary["table"] = (out / "cls" / COMPARISON_MD).read_text()
    distributed.barrier("osteo_jax:run:done")
    return summary


def demo_config() -> ExperimentConfig:
    """The demo experiment (``make demo``): the synthetic paper cohort through the pipeline.

    192 subjects rendered at 512 px (0.4 mm); a narrow K=4 x S=4 mixture segmenter at 96 px
    for 24 epochs (at 64 px the metacarpals, ~2.5 px wide, are not told apart) with no expert
    taking more than 0.34 of the annotators' mass (``OTConfig.expert_gamma``: without it one
    expert takes all the mass and the mixture's uncertainty is gone; with it and 12 epochs the
    forced experts are undertrained, ``experiments/seg_experts.py``), scored on its validation
    subjects every 6 epochs (each scoring costs ~1.7 s; training does not depend on it); 32 px
    segments; a width-8 ResNet-18 with 20 SimCLR epochs (320 steps; at 5 its loss hardly moved
    and the probe's AUC was 0.64 +- 0.20 over the seeds against 0.76 +- 0.02) and a 30-epoch linear
    probe over 3 seeds: sized to finish in under 10 minutes on 2 CPU cores. Every other
    experiment changes fields of this or of the defaults.
    """
    from osteo_jax.config import (
        BackboneConfig,
        ClsConfig,
        CropConfig,
        OTConfig,
        PhysicsConfig,
        ProtocolConfig,
        SegConfig,
        SegmentConfig,
        SegTrainConfig,
        SSLConfig,
        SynthConfig,
    )

    backbone = BackboneConfig(depth=18, width=8)
    return ExperimentConfig(
        name="demo (synthetic paper cohort)",
        synth=SynthConfig(physics=PhysicsConfig(size=512)),
        seg=SegTrainConfig(
            model=SegConfig(features=(8, 16, 32, 64), head_hidden=16, image_size=96),
            ot=OTConfig(gamma_ramp_start=60, gamma_ramp_steps=100, expert_gamma=0.34),
            epochs=24,
            warmup_steps=20,
            validate_every=6,
        ),
        segment=SegmentConfig(size=32),
        hypotheses=4,
        protocol=ProtocolConfig(
            name="SimCLR + linear probe",
            ssl=SSLConfig(
                backbone=backbone,
                crops=CropConfig(global_size=28, local_size=14),
                batch_size=64,
                epochs=20,
            ),
            cls=ClsConfig(epochs=30),
            backbone=backbone,
        ),
    )


def _measure_jobs(workers: int | None) -> int:
    """Radiogrammetry's measuring processes: ``workers``, by default the cores (up to 4).

    0 on one core, where a worker would only add its start-up, and where no worker can be
    spawned (:func:`~osteo_jax.data.workers.spawnable`).
    """
    from osteo_jax.data.workers import spawnable

    n = workers if workers is not None else min(os.cpu_count() or 1, 4)
    return n if n > 1 and spawnable() else 0
