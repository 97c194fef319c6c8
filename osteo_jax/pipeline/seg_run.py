"""``osteo-jax eval-seg``: restore a train-seg run, score it on a split, draw its figure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from osteo_jax.config import SegTrainConfig, from_dict
from osteo_jax.data.folder import dumps_json
from osteo_jax.data.pipeline import load_seg_arrays
from osteo_jax.eval.seg_eval import evaluate_segmenter, make_predict_fn, predict_batches
from osteo_jax.eval.seg_figure import segmentation_figure
from osteo_jax.models.mixture import Segmenter


def load_run_config(run: str | os.PathLike) -> SegTrainConfig:
    """The :class:`SegTrainConfig` a run was trained with (``RUN/config.json``)."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise ValueError(f"{path}: not found; is {run} a train-seg run folder?")
    return from_dict(SegTrainConfig, json.loads(path.read_text())["config"])


def restore_segmenter(run: str | os.PathLike) -> tuple[Segmenter, dict, SegTrainConfig, int]:
    """Model, segmenter parameters, config and step of a run's newest checkpoint."""
    from osteo_jax.train.runner import CHECKPOINT_DIR, Checkpointer
    from osteo_jax.train.state import create_seg_state, make_segmenter, seg_optimizer

    cfg = load_run_config(run)
    ckpt = Checkpointer(Path(run) / CHECKPOINT_DIR, local=True)  # read on one process
    step = ckpt.latest_step()
    if step is None:
        raise ValueError(f"{Path(run) / CHECKPOINT_DIR}: no checkpoint to evaluate")
    tx = seg_optimizer(cfg, max(step, 1))
    state = ckpt.restore(create_seg_state(cfg, jax.random.key(cfg.seed), tx))
    ckpt.close()
    return make_segmenter(cfg.model), state.params["segmenter"], cfg, step


def evaluate_run(
    run: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "val",
    n_figure: int = 4,
    allow_outside_paths: bool = False,
) -> dict:
    """Scores a run on ``split`` of ``data``; writes ``seg_metrics.json`` and ``seg_figure.png``.

    Returns:
      ``{"metrics": ..., "json": path, "figure": path}`` (figure None when ``n_figure`` is 0).
    """
    if n_figure < 0:
        raise ValueError(f"n_figure must be >= 0, got {n_figure}")
    run = Path(run)
    model, params, cfg, step = restore_segmenter(run)
    arrays = load_seg_arrays(
        data, cfg.model.image_size, cfg.annotators, allow_outside_paths=allow_outside_paths
    )
    if split != "all":
        subjects = set(json.loads((run / "split.json").read_text())[split])
        idx = np.flatnonzero([s in subjects for s in arrays.subject_ids])
        if not len(idx):
            raise ValueError(f"{data}: no image of the run's {split} subjects found")
        arrays = arrays.take(idx)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
    predict = make_predict_fn(model)
    metrics = evaluate_segmenter(
        model,
        params,
        arrays.images,
        arrays.masks,
        key,
        batch_size=cfg.batch_size,
        annotator_names=arrays.annotators,
        predict_fn=predict,
    )
    metrics = {"step": step, "split": split, **metrics}
    out_json = run / "seg_metrics.json"
    out_json.write_text(dumps_json(metrics, indent=1) + "\n")
    if n_figure == 0:
        return {"metrics": metrics, "json": out_json, "figure": None}
    rows = []
    n_fig = min(n_figure, len(arrays))
    for start, probs, weights in predict_batches(
        model, params, arrays.images[:n_fig], key, cfg.batch_size, predict
    ):
        for i in range(probs.shape[0]):
            rows.append(
                dict(
                    image=arrays.images[start + i, ..., 0],
                    probs=probs[i],
                    weights=weights[i],
                    masks=arrays.masks[start + i].astype(np.int64),
                    title=str(arrays.image_ids[start + i]),
                )
            )
    fig = segmentation_figure(rows, run / "seg_figure.png")
    return {"metrics": metrics, "json": out_json, "figure": fig}
