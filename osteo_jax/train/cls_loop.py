"""Segment classifier loop: linear probe on a frozen backbone, or fine-tuning; pick by val macro-F1.

Each valid segment is one training example carrying its subject's label, weighted by inverse
class frequency (``ClsConfig.class_weight``). After every epoch the validation segments'
probabilities are scored by the caller's ``evaluate_fn`` (the pipeline passes
:func:`osteo_jax.eval.cls_metrics.subject_metrics`: subject probability = mean of its segments'
probabilities, class by argmax) and the parameters with the best macro-F1 are kept (the paper's
checkpoint selection). A linear probe
computes the frozen backbone's features once and trains the head on them; fine-tuning runs the
backbone in every step with a random resized crop of each segment.

Both the running state and the best state are checkpointed at the end of every epoch, so a
killed run resumes where it stopped. The loop skeleton is :func:`osteo_jax.train.runner.run`'s,
as for the other loops: parameters replicated over the data-parallel mesh, batches sharded
along its ``"data"`` axis.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from osteo_jax.config import BackboneConfig, ClsConfig
from osteo_jax.data.augment import CropPolicy
from osteo_jax.data.folder import write_json
from osteo_jax.data.pipeline import make_loader
from osteo_jax.data.segments import SegmentSet
from osteo_jax.data.sources import ArraySource
from osteo_jax.train import distributed, runner
from osteo_jax.train.runner import Checkpointer, Schedule, claim_run_dir, data_mesh
from osteo_jax.train.state import (
    TrainState,
    cls_optimizer,
    cls_schedule,
    cls_trainable,
    init_backbone_params,
    init_classifier_params,
    make_backbone,
)
from osteo_jax.train.steps import cls_logits, cls_step

__all__ = [
    "backbone_features",
    "fold_standardisation",
    "predict_segments",
    "segment_features",
    "train_classifier",
]

BEST_DIR = "best"


def _valid_pairs(segments: SegmentSet) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(segments.valid)


@functools.lru_cache(maxsize=16)
def _embed_fn(backbone):
    """Jitted ``(params, x [B, S, S]) -> features``, one per backbone (compiled once)."""
    return jax.jit(lambda p, x: backbone.apply({"params": p}, x[..., None])[0])


@functools.lru_cache(maxsize=16)
def _cls_step_fn(cfg: ClsConfig, backbone_cfg: BackboneConfig, total: int, size: int):
    """``(tx, jitted cls_step)`` for one setting, shared by the protocol's seeds (compiled once)."""
    tx = cls_optimizer(cfg, total)
    augment = None
    if cfg.mode != "probe":
        augment = CropPolicy(
            global_size=size, local_size=size, n_local=0, global_scale=(0.6, 1.0), photometric=None
        )
    step = functools.partial(
        cls_step,
        backbone=make_backbone(backbone_cfg),
        tx=tx,
        trainable=cls_trainable(cfg),
        augment=augment,
    )
    return tx, jax.jit(step, donate_argnums=0)


def backbone_features(
    backbone_params, backbone_cfg: BackboneConfig, images: np.ndarray, batch_size: int = 128
) -> np.ndarray:
    """``[m, D]`` pooled backbone features of segments ``[m, S, S]`` (batched, one compile)."""
    backbone = make_backbone(backbone_cfg)
    embed = _embed_fn(backbone)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(embed(backbone_params, jnp.asarray(chunk)))[: batch_size - pad])
    return np.concatenate(out) if out else np.zeros((0, backbone.features_dim), np.float32)


def segment_features(
    backbone_params, backbone_cfg: BackboneConfig, segments: SegmentSet, batch_size: int = 128
) -> np.ndarray:
    """``[n, B, D]`` pooled backbone features of every valid segment (0 where invalid)."""
    img, bone = _valid_pairs(segments)
    dim = make_backbone(backbone_cfg).features_dim
    out = np.zeros(segments.valid.shape + (dim,), np.float32)
    out[img, bone] = backbone_features(
        backbone_params, backbone_cfg, segments.images[img, bone], batch_size
    )
    return out


def predict_segments(
    params: dict,
    backbone_cfg: BackboneConfig,
    segments: SegmentSet,
    *,
    features: np.ndarray | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """``[n, B]`` probability of osteoporosis per segment (0.5 where a segment is invalid)."""
    img, bone = _valid_pairs(segments)
    if features is None:
        features = backbone_features(
            params["backbone"], backbone_cfg, segments.images[img, bone], batch_size
        )
    logits = cls_logits(
        params, backbone=make_backbone(backbone_cfg), features=jnp.asarray(features)
    )
    probs = np.full(segments.valid.shape, 0.5)
    probs[img, bone] = np.asarray(jax.nn.softmax(logits, axis=-1)[:, 1], np.float64)
    return probs


def fold_standardisation(classifier: dict, mean: np.ndarray, std: np.ndarray) -> dict:
    """Linear-head parameters on raw features equal to ``head((x - mean) / std)``.

    ``W' = W / std[:, None]``, ``b' = b - (mean / std) @ W``.
    """
    kernel = np.asarray(classifier["fc"]["kernel"], np.float64)
    bias = np.asarray(classifier["fc"]["bias"], np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return {
        "fc": {
            "kernel": jnp.asarray(kernel / std[:, None], jnp.float32),
            "bias": jnp.asarray(bias - (mean / std) @ kernel, jnp.float32),
        }
    }


def _class_weights(labels: np.ndarray, mode: str | None) -> np.ndarray:
    if mode is None:
        return np.ones(len(labels), np.float32)
    if mode != "balanced":
        raise ValueError(f"class_weight must be 'balanced' or None, got {mode!r}")
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    w = len(labels) / (2 * np.maximum(counts, 1))
    return w[labels].astype(np.float32)


def train_classifier(
    train: SegmentSet,
    val: SegmentSet,
    run_dir: str | Path,
    cfg: ClsConfig = ClsConfig(),
    *,
    evaluate_fn: Callable[[np.ndarray, SegmentSet], dict[str, float]],
    backbone_cfg: BackboneConfig = BackboneConfig(),
    params: dict | None = None,
    seed: int = 0,
    progress: bool = True,
    devices=None,
    overwrite: bool = False,
) -> dict:
    """Trains the segment classifier; returns the parameters with the best val macro-F1.

    Args:
      train: training segments (labels 0/1).
      val: validation segments (model selection).
      run_dir: run folder (``config.json``, ``checkpoints/``, ``best/``, ``metrics.jsonl``).
      cfg: classifier settings.
      evaluate_fn: ``(segment probabilities [n, B] of val, val) -> metrics`` after every
        epoch; the checkpoint with the best ``f1_macro`` is kept
        (:func:`osteo_jax.eval.cls_metrics.subject_metrics`, which the pipeline and the CLI
        pass).
      backbone_cfg: the backbone's architecture.
      params: the one parameter pytree holding a (pretrained) ``backbone``; None initialises
        the backbone randomly (supervised from scratch with ``mode="finetune"``; with
        ``mode="probe"`` a random-feature baseline).
      seed: initialisation and shuffling.
      progress: show a progress bar.
      devices: devices of the data-parallel mesh (default: all, of every process of a
        multi-process run: :mod:`osteo_jax.train.distributed`).
      overwrite: start afresh in a folder holding other files or an earlier run, deleting
        only train-cls's own files (:mod:`osteo_jax.data.outdir`).

    Returns:
      ``{"params": best params, "best_epoch", "val": best val metrics, "wall_s"}``.
    """
    trainable = cls_trainable(cfg)
    img, bone = _valid_pairs(train)
    labels = train.labels[img].astype(np.int32)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("training segments need labels 0/1 (a subject without a label?)")
    weights = _class_weights(labels, cfg.class_weight)
    if not len(labels):
        raise ValueError("no valid training segment")
    record = {"cls": cfg, "backbone": backbone_cfg, "seed": seed}
    data = train.meta.get("data", "")
    mesh = data_mesh(devices, batch_size=cfg.batch_size)
    # A small training set gives one batch an epoch, cut to split evenly over the devices.
    n_dev = mesh.devices.size
    batch_size = min(cfg.batch_size, len(labels) // n_dev * n_dev) or cfg.batch_size
    schedule = Schedule.of(len(labels), batch_size, cfg.epochs, what="valid training segments")
    run_dir = claim_run_dir(run_dir, "train-cls", record, data, overwrite=overwrite).path

    k_bb, k_cls, k_train = jax.random.split(jax.random.key(seed), 3)
    size = train.images.shape[-1]
    params = dict(params or {})
    if "backbone" not in params:
        params["backbone"] = init_backbone_params(backbone_cfg, k_bb, size)
    dim = make_backbone(backbone_cfg).features_dim
    params["classifier"] = init_classifier_params(dim, k_cls)
    tx, step_fn = _cls_step_fn(cfg, backbone_cfg, schedule.schedule_steps, size)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"cls": tx.init({k: params[k] for k in trainable})},
    )

    probe = cfg.mode == "probe"
    if probe:
        # Standardise the frozen features (train statistics), as linear evaluation usually
        # does (SimCLR's probe: a BatchNorm without affine); the scaling is folded into the
        # linear layer on return, so the returned classifier reads raw features.
        train_x = backbone_features(params["backbone"], backbone_cfg, train.images[img, bone])
        mu, sd = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
        train_x = (train_x - mu) / sd
        vi, vb = _valid_pairs(val)
        val_x = (backbone_features(params["backbone"], backbone_cfg, val.images[vi, vb]) - mu) / sd
    else:
        train_x, val_x = train.images[img, bone], None
    key_name = "features" if probe else "image"

    # The best state so far (by val macro-F1) and its record, both restored on resume.
    best_ckpt, best_file = Checkpointer(run_dir / BEST_DIR), run_dir / "best.json"
    best = {"state": state, "record": {"epoch": -1, "f1_macro": -1.0}}
    if best_ckpt.latest_step() is not None and best_file.exists():
        best["state"] = best_ckpt.restore(state)
        best["record"] = json.loads(best_file.read_text())

    def evaluate(state: TrainState, epoch: int) -> dict[str, float]:
        val_m = evaluate_fn(predict_segments(state.params, backbone_cfg, val, features=val_x), val)
        # Every process saves the best checkpoint (a collective) on process 0's scores.
        val_m = distributed.from_main(val_m)
        if val_m["f1_macro"] > best["record"]["f1_macro"]:
            best["record"] = {"epoch": epoch, **val_m}
            best["state"] = jax.tree.map(jnp.copy, state)  # `state` is donated next step
            # Already there if a kill came before best.json: this rerun recomputed it.
            if int(state.step) not in best_ckpt.manager.all_steps():
                best_ckpt.save(best["state"])
            distributed.on_main(write_json, best_file, best["record"])
        return val_m

    def batches(start: int):
        return make_loader(
            ArraySource(**{key_name: train_x}, label=labels, weight=weights),
            batch_size=batch_size,
            seed=seed,
            num_epochs=cfg.epochs,
            augment=False,
            start_batch=start,
            shard=distributed.data_shard(),
        )

    try:
        res = runner.run(
            state,
            step_fn,
            batches,
            run_dir=run_dir,
            schedule=schedule,
            rng=k_train,
            mesh=mesh,
            evaluate_fn=evaluate,
            desc=f"train-cls ({cfg.mode})",
            progress=progress,
            learning_rate=cls_schedule(cfg, schedule.schedule_steps),
        )
    finally:
        best_ckpt.close()
    best_params = best["state"].params
    if probe:
        best_params = {
            **best_params,
            "classifier": fold_standardisation(best_params["classifier"], mu, sd),
        }
    return {
        "params": best_params,
        "best_epoch": best["record"]["epoch"],
        "val": best["record"],
        "wall_s": res.wall_s,
        "features_dim": dim,
    }
