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
killed run resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from osteo_jax.config import BackboneConfig, ClsConfig
from osteo_jax.data.augment import CropPolicy
from osteo_jax.data.folder import write_json
from osteo_jax.data.pipeline import ArraySource, make_loader
from osteo_jax.data.segments import SegmentSet
from osteo_jax.train.seg_loop import (
    CHECKPOINT_DIR,
    METRICS_LOG,
    Checkpointer,
    check_finite,
    write_config,
)
from osteo_jax.train.state import (
    TrainState,
    cls_optimizer,
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

    Returns:
      ``{"params": best params, "best_epoch", "val": best val metrics, "wall_s"}``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(
        run_dir, {"cls": cfg, "backbone": backbone_cfg, "seed": seed}, train.meta.get("data", "")
    )
    trainable = cls_trainable(cfg)
    img, bone = _valid_pairs(train)
    labels = train.labels[img].astype(np.int32)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("training segments need labels 0/1 (a subject without a label?)")
    weights = _class_weights(labels, cfg.class_weight)
    batch_size = min(cfg.batch_size, len(labels))
    steps_per_epoch = len(labels) // batch_size
    if steps_per_epoch == 0:
        raise ValueError("no valid training segment")
    total = cfg.epochs * steps_per_epoch

    k_bb, k_cls, k_train = jax.random.split(jax.random.key(seed), 3)
    size = train.images.shape[-1]
    params = dict(params or {})
    if "backbone" not in params:
        params["backbone"] = init_backbone_params(backbone_cfg, k_bb, size)
    dim = make_backbone(backbone_cfg).features_dim
    params["classifier"] = init_classifier_params(dim, k_cls)
    tx, step_fn = _cls_step_fn(cfg, backbone_cfg, total, size)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"cls": tx.init({k: params[k] for k in trainable})},
    )
    ckpt, best_ckpt = Checkpointer(run_dir / CHECKPOINT_DIR), Checkpointer(run_dir / BEST_DIR)
    best_file = run_dir / "best.json"
    best = {"epoch": -1, "f1_macro": -1.0}
    best_state = state
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
        if best_ckpt.latest_step() is not None:
            best_state = best_ckpt.restore(state)
            best = json.loads(best_file.read_text())

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

    start_epoch = int(state.step) // steps_per_epoch
    bar = tqdm(
        total=cfg.epochs,
        initial=start_epoch,
        desc=f"train-cls ({cfg.mode})",
        unit="epoch",
        disable=not progress,
    )
    log = open(run_dir / METRICS_LOG, "a")
    t0 = time.perf_counter()
    batches = iter(
        make_loader(
            ArraySource(**{key_name: train_x}, label=labels, weight=weights),
            batch_size=batch_size,
            seed=seed,
            num_epochs=cfg.epochs,
            augment=False,
            start_batch=start_epoch * steps_per_epoch,
        )
    )
    try:
        for epoch in range(start_epoch, cfg.epochs):
            for _ in range(steps_per_epoch):
                state, metrics = step_fn(state, next(batches), k_train)
            train_m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            check_finite(train_m, int(state.step))
            probs = predict_segments(state.params, backbone_cfg, val, features=val_x)
            val_m = evaluate_fn(probs, val)
            log.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "step": int(state.step),
                        **train_m,
                        **{f"val_{k}": v for k, v in val_m.items()},
                    }
                )
                + "\n"
            )
            log.flush()
            if val_m["f1_macro"] > best["f1_macro"]:
                best = {"epoch": epoch, **val_m}
                best_state = jax.tree.map(jnp.copy, state)  # `state` is donated next step
                # Already there if a kill came before best.json: this rerun recomputed it.
                if int(best_state.step) not in best_ckpt.manager.all_steps():
                    best_ckpt.save(best_state)
                write_json(best_file, best)
            ckpt.save(state)
            bar.set_postfix(loss=f"{train_m['loss']:.3f}", val_f1=f"{val_m['f1_macro']:.2f}")
            bar.update()
    finally:
        bar.close()
        log.close()
        ckpt.close()
        best_ckpt.close()
    best_params = best_state.params
    if probe:
        best_params = {
            **best_params,
            "classifier": fold_standardisation(best_params["classifier"], mu, sd),
        }
    return {
        "params": best_params,
        "best_epoch": best["epoch"],
        "val": best,
        "wall_s": time.perf_counter() - t0,
        "features_dim": dim,
    }
