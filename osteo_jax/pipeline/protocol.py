"""The paper's evaluation protocol: per seed, split → (pretrain) → classifier → test subjects.

For each seed of ``ClsConfig.seeds``: a subject-wise split stratified by label (80/10/10 by
default; no subject in two splits), self-supervised pretraining on the training subjects'
segments only (never validation or test), the classifier trained on the training subjects and
selected on validation macro-F1, then the validation and test subjects scored. With
``ClsConfig.folds = k`` the parts are the folds of a stratified k-fold instead (every subject
tested once; low-variance estimates on small cohorts). The summary (mean ± std over seeds, or
the pooled folds, and a 95 % interval that covers training randomness as well as test
sampling), the paper-format table, a ROC and a reliability figure are written to the output
folder::

    OUT/seed<k>/ (or fold<i>/) {split.json, ssl/, cls/, val_predictions.csv,
                 test_predictions.csv, test_segments.csv, model.msgpack,
                 aggregate.json (with ClsConfig.aggregate "logistic" or "features")}

A subject's probability is the mean of its segments' or, with ``ClsConfig.aggregate =
"logistic"`` / ``"features"``, a head over the per-bone logits / backbone features fitted on the
part's training subjects (:mod:`osteo_jax.eval.aggregate`). F1, accuracy, sensitivity and
specificity threshold it at 0.5 or at a threshold chosen on the part's validation subjects
(``ClsConfig.threshold``, :mod:`osteo_jax.eval.thresholds`).
    OUT/cls_metrics.json  OUT/table.md  OUT/roc.png  OUT/reliability.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from osteo_jax.config import BackboneConfig, ClsConfig, SSLConfig
from osteo_jax.data.folder import rows_from, write_csv, write_json
from osteo_jax.data.outdir import check_dir
from osteo_jax.data.segments import SegmentSet, load_segments
from osteo_jax.data.splits import stratified_subject_folds, stratified_subject_split
from osteo_jax.eval.aggregate import (
    AGGREGATE_FILE,
    FeatureHead,
    LogisticHead,
    aggregate_subjects,
    fit_feature_head,
    fit_logistic_head,
    load_head,
)
from osteo_jax.eval.cls_figure import reliability_figure, roc_figure
from osteo_jax.eval.cls_metrics import binary_metrics, paper_table, subject_metrics, subject_scores
from osteo_jax.eval.cls_stats import CI_METHOD, FOLD_CI_METHOD, summarise_folds, summarise_seeds
from osteo_jax.eval.thresholds import DEFAULT_THRESHOLD, choose_threshold, threshold_words
from osteo_jax.train import distributed
from osteo_jax.train.cls_loop import predict_segments, segment_features, train_classifier
from osteo_jax.train.ssl_loop import train_ssl

__all__ = [
    "MODEL_FILE",
    "TEST_PREDICTIONS",
    "VAL_PREDICTIONS",
    "classifier_backbone",
    "load_heads",
    "load_models",
    "protocol_parts",
    "run_protocol",
    "save_model",
]

# Per seed: the selected backbone + classifier (the probe's feature scaling folded in).
MODEL_FILE = "model.msgpack"
# Per seed: validation / test subject probabilities (columns subject_id, label, probability).
VAL_PREDICTIONS = "val_predictions.csv"
TEST_PREDICTIONS = "test_predictions.csv"


def save_model(path: str | Path, params: dict) -> None:
    """Writes ``{"backbone", "classifier"}`` of ``params`` atomically (msgpack)."""
    path = Path(path)
    tree = jax.device_get({k: params[k] for k in ("backbone", "classifier")})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(flax.serialization.msgpack_serialize(tree))
    os.replace(tmp, path)


def load_models(out: str | Path) -> tuple[list[dict], BackboneConfig, tuple[str, ...], dict]:
    """The per-seed models of a finished :func:`run_protocol` folder.

    Returns:
      ``(params per seed, backbone config, bones, cls_metrics)``; each params dict holds
      ``backbone`` and ``classifier``, ready for
      :func:`~osteo_jax.train.cls_loop.predict_segments`.

    Raises:
      ValueError: ``out`` is not a finished protocol folder.
    """
    from osteo_jax.config import from_dict

    out = Path(out)
    path = out / "cls_metrics.json"
    if not path.exists():
        raise ValueError(f"{path}: not found; is {out} a finished evaluate / run folder?")
    metrics = json.loads(path.read_text())
    backbone = from_dict(BackboneConfig, metrics["config"]["backbone"])
    bones = tuple(metrics["config"]["cls"]["bones"])
    models = []
    for row in metrics["per_seed"]:
        file = out / row.get("dir", f"seed{row['seed']}") / MODEL_FILE
        if not file.exists():
            raise ValueError(f"{file}: missing (re-run the protocol to write it)")
        models.append(flax.serialization.msgpack_restore(file.read_bytes()))
    return models, backbone, bones, metrics


def load_heads(out: str | Path, metrics: dict) -> list[LogisticHead | FeatureHead | None]:
    """Per part of a finished protocol folder, its saved aggregation head or None (the mean).

    Args:
      out: the protocol folder.
      metrics: its ``cls_metrics.json`` (:func:`load_models` returns it).

    Returns:
      One entry per part, in the order of :func:`load_models`' models.

    Raises:
      ValueError: the run used a fitted head (``aggregate`` "logistic" or "features") and a
        part's head is missing.
    """
    out = Path(out)
    fitted = metrics["config"]["cls"].get("aggregate", "mean") != "mean"
    heads = []
    for row in metrics["per_seed"]:
        file = out / row.get("dir", f"seed{row['seed']}") / AGGREGATE_FILE
        if fitted and not file.exists():
            raise ValueError(f"{file}: missing (re-run the protocol to write it)")
        heads.append(load_head(file) if fitted else None)
    return heads


def classifier_backbone(ssl: SSLConfig | None, backbone: BackboneConfig | None) -> BackboneConfig:
    """The classifier's backbone: ``ssl.backbone`` with pretraining, else ``backbone``.

    With SSL the classifier starts from the pretrained parameters, so it must be the network
    they were trained in: a ``ProtocolConfig.backbone`` that differs (say only
    ``ssl.backbone.width`` or ``ssl.backbone.grey_levels`` was changed) is not used.
    """
    if ssl is not None:
        return ssl.backbone
    return backbone or BackboneConfig()


def protocol_parts(
    subject_ids: np.ndarray, labels: np.ndarray, cls: ClsConfig
) -> list[tuple[str, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The protocol's train/val/test parts: ``[(folder name, seed, (train, val, test))]``.

    ``cls.folds == 0``: the paper's stratified ``cls.split`` once per seed of ``cls.seeds``
    (folders ``seed<k>``). ``cls.folds = k``: stratified k-fold over subjects with the fold
    assignment drawn from ``cls.seeds[0]``, every subject tested exactly once, validation a
    stratified ``split[1] / (split[0] + split[1])`` of the rest (folders ``fold<i>``, seed
    ``cls.seeds[0] + i`` for initialisation and shuffling). Index arrays are image indices.
    """
    if cls.folds:
        seed = cls.seeds[0]
        val_fraction = cls.split[1] / (cls.split[0] + cls.split[1])
        folds = stratified_subject_folds(subject_ids, labels, cls.folds, seed, val_fraction)
        return [(f"fold{i}", seed + i, parts) for i, parts in enumerate(folds)]
    return [
        (f"seed{seed}", seed, stratified_subject_split(subject_ids, labels, tuple(cls.split), seed))
        for seed in cls.seeds
    ]


def _part_threshold(rule: str, probs: np.ndarray, labels: np.ndarray, part: str) -> float:
    """:func:`choose_threshold` on a part's validation subjects; 0.5 when they hold one class."""
    if rule != "fixed" and len(np.unique(labels)) < 2:
        print(
            f"protocol: {part} validation subjects hold one class only; threshold "
            f"{DEFAULT_THRESHOLD} instead of the {rule!r} rule"
        )
        return DEFAULT_THRESHOLD
    return choose_threshold(probs, labels, rule)


def _protocol_words(cls: ClsConfig, n_parts: int) -> str:
    if cls.folds:
        return f"{cls.folds}-fold cross-validation over subjects (each tested once)"
    split = "/".join(str(round(100 * f)) for f in cls.split)
    return f"stratified subject-wise {split} split, {n_parts} seeds"


def run_protocol(
    segments: SegmentSet | str | Path,
    out: str | Path,
    *,
    ssl: SSLConfig | None,
    cls: ClsConfig = ClsConfig(),
    backbone: BackboneConfig | None = None,
    name: str = "",
    roi: str = "",
    ceiling_auc: float | None = None,
    ssl_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Runs the protocol and writes its results; every stage resumes from its checkpoints.

    Args:
      segments: a :class:`SegmentSet` or a segments folder (``osteo-jax segment``).
      out: output folder: absent, empty or an earlier protocol's (resumed).
      ssl: pretraining settings, or None for no pretraining (the backbone starts random:
        supervised from scratch with ``cls.mode="finetune"``).
      cls: classifier and protocol settings.
      backbone: the backbone without SSL (default ``BackboneConfig()``). With SSL the
        classifier is always ``ssl.backbone``, the network the pretrained parameters belong to
        (:func:`classifier_backbone`); this argument is then ignored.
      name: model name in the table.
      roi: region-of-interest description in the table (e.g. "segmentation (mixture)").
      ceiling_auc: the synthetic cohort's image Bayes ceiling (``oracle.json``), shown beside
        the table and on the ROC.
      ssl_dir: folder of the pretraining runs, ``ssl_dir/seed<k>`` or ``ssl_dir/fold<i>``
        (default ``out/<part>/ssl``). Rows that share segments, ``cls.bones``, ``cls.split``,
        ``cls.folds`` and ``ssl`` settings can share it: a finished run is restored.
      progress: progress bars.
      overwrite: start afresh in a folder holding other files or an earlier protocol, deleting
        only the protocol's own files (:mod:`osteo_jax.data.outdir`).

    In a multi-process run (:mod:`osteo_jax.train.distributed`) every process trains and
    scores every part; only process 0 writes files.

    Returns:
      ``{"summary", "per_seed", "table", "wall_s"}``.

    Raises:
      OutputFolderError: ``out`` holds files the protocol did not write (and not ``overwrite``).
    """
    t0 = time.perf_counter()
    check_dir(out, "evaluate", overwrite=overwrite)  # refused before the segments are read
    seg = segments if isinstance(segments, SegmentSet) else load_segments(segments)
    seg = seg.select_bones(tuple(cls.bones))
    labelled = np.flatnonzero(seg.labels >= 0)
    if len(labelled) < len(seg):
        print(f"protocol: {len(seg) - len(labelled)} images without a label are left out")
    seg = seg.take(labelled)
    out = distributed.claim_shared_dir(out, "evaluate", overwrite=overwrite).path
    backbone = classifier_backbone(ssl, backbone)
    per_seed, seed_rows, thresholds = [], [], []
    for part, seed, (tr, va, te) in protocol_parts(seg.subject_ids, seg.labels, cls):
        folder = out / part
        distributed.on_main(folder.mkdir, exist_ok=True)
        split = {
            k: sorted(set(seg.subject_ids[i].tolist()))
            for k, i in (("train", tr), ("val", va), ("test", te))
        }
        distributed.on_main(write_json, folder / "split.json", split)
        params = None
        if ssl is not None:
            pre = train_ssl(
                seg.take(tr),
                folder / "ssl" if ssl_dir is None else Path(ssl_dir) / part,
                dataclasses.replace(ssl, seed=seed),
                progress=progress,
            )
            params = {"backbone": pre["state"].params["backbone"]}
        res = train_classifier(
            seg.take(tr),
            seg.take(va),
            folder / "cls",
            cls,
            evaluate_fn=subject_metrics,
            backbone_cfg=backbone,
            params=params,
            seed=seed,
            progress=progress,
        )
        head = None
        if cls.aggregate != "mean":  # fitted on the training subjects' segments
            train_set = seg.take(tr)
            if cls.aggregate == "features":
                head = fit_feature_head(
                    segment_features(res["params"]["backbone"], backbone, train_set),
                    train_set.valid,
                    train_set.subject_ids,
                    train_set.labels,
                    tuple(seg.bones),
                )
            else:
                head = fit_logistic_head(
                    predict_segments(res["params"], backbone, train_set),
                    train_set.valid,
                    train_set.subject_ids,
                    train_set.labels,
                    tuple(seg.bones),
                )
            distributed.on_main(head.save, folder / AGGREGATE_FILE)
        scores = {}
        for file, idx in ((VAL_PREDICTIONS, va), (TEST_PREDICTIONS, te)):
            part_set = seg.take(idx)
            feats = segment_features(res["params"]["backbone"], backbone, part_set)
            probs = predict_segments(
                res["params"], backbone, part_set, features=feats[part_set.valid]
            )
            _, y = subject_scores(probs, part_set)
            _, p = aggregate_subjects(
                probs, part_set.valid, part_set.subject_ids, head, features=feats
            )
            scores[file] = (np.round(p, 6), y)  # the threshold is chosen on what is written
            subjects = np.unique(part_set.subject_ids)
            distributed.on_main(
                write_csv,
                folder / file,
                rows_from({"subject_id": subjects, "label": y, "probability": scores[file][0]}),
            )
        threshold = _part_threshold(cls.threshold, *scores[VAL_PREDICTIONS], part)
        test = part_set  # the test part, written last
        img, bone = np.nonzero(test.valid)
        distributed.on_main(
            write_csv,
            folder / "test_segments.csv",
            rows_from(
                {
                    "image_id": test.image_ids[img],
                    "subject_id": test.subject_ids[img],
                    "label": test.labels[img],
                    "bone": np.asarray(seg.bones)[bone],
                    "probability": np.round(probs[img, bone], 6),
                }
            ),
        )
        distributed.on_main(save_model, folder / MODEL_FILE, res["params"])
        per_seed.append((p, y))
        thresholds.append(threshold)
        seed_rows.append(
            {
                "dir": part,
                "seed": seed,
                "best_epoch": res["best_epoch"],
                "val": res["val"],
                "test": binary_metrics(p, y, threshold),
                "threshold": threshold,
                "n_test_subjects": len(y),
            }
        )
    summarise, ci_method = (
        (summarise_folds, FOLD_CI_METHOD) if cls.folds else (summarise_seeds, CI_METHOD)
    )
    summary = summarise(per_seed, n_boot=cls.bootstrap, thresholds=thresholds)
    row = {
        "model": name or (ssl.method if ssl is not None else "no SSL"),
        "roi": roi or seg.meta.get("source", ""),
        "backbone": backbone.label,
        "summary": summary,
        "image_ceiling_auc": ceiling_auc,
    }
    table = (
        paper_table([row])
        + f"\n{_protocol_words(cls, len(seed_rows))}; 95 % CI: {ci_method}. "
        + f"{threshold_words(cls.threshold)}.\n"
    )
    result = {
        "summary": summary,
        "ci_method": ci_method,
        "threshold_rule": cls.threshold,
        "per_seed": seed_rows,
        "table_row": {k: v for k, v in row.items() if k != "summary"},
        "config": {
            "ssl": dataclasses.asdict(ssl) if ssl is not None else None,
            "cls": dataclasses.asdict(cls),
            "backbone": dataclasses.asdict(backbone),
            "segments": seg.meta,
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if distributed.is_main():  # every process trained and scored; process 0 writes
        write_json(out / "cls_metrics.json", result)
        (out / "table.md").write_text(table)
        roc_figure(per_seed, out / "roc.png", title=row["model"], ceiling_auc=ceiling_auc)
        reliability_figure(per_seed, out / "reliability.png", title=row["model"])
    return {"summary": summary, "per_seed": seed_rows, "table": table, "wall_s": result["wall_s"]}
