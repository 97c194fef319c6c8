"""Self-supervised pretraining loop: segments in, a pretrained ``backbone`` (and ``ssl_head``) out.

Every valid segment of the given images is one example, read in batches through
:func:`osteo_jax.data.pipeline.make_loader`; the multi-crop views are made inside the jitted
:func:`~osteo_jax.train.steps.ssl_step`. Batch ``b`` depends only on the seed and each step's
key on the step, so a killed run resumes from its newest
checkpoint to the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from osteo_jax.config import SSLConfig
from osteo_jax.data.pipeline import make_loader
from osteo_jax.data.segments import SegmentSet
from osteo_jax.data.sources import ArraySource
from osteo_jax.losses.ssl_methods import ssl_objective
from osteo_jax.train import distributed, runner
from osteo_jax.train.runner import (
    CHECKPOINT_DIR,
    Checkpointer,
    Schedule,
    claim_run_dir,
    data_mesh,
)
from osteo_jax.train.state import (
    TrainState,
    crop_policy,
    init_ssl_params,
    make_backbone,
    make_projector,
    make_prototypes,
    ssl_optimizer,
    ssl_schedule,
)
from osteo_jax.train.steps import ssl_step

__all__ = ["flatten_segments", "restore_ssl_params", "train_ssl"]


def flatten_segments(segments: SegmentSet) -> tuple[np.ndarray, np.ndarray]:
    """``(images [m, S, S], labels [m])`` of every valid segment (image-major order)."""
    img, bone = np.nonzero(segments.valid)
    return segments.images[img, bone], segments.labels[img].astype(np.int32)


@functools.lru_cache(maxsize=8)
def _ssl_step_fn(cfg: SSLConfig, schedule_steps: int):
    """``(tx, jitted ssl_step)``: one compile shared by runs that differ only in seed."""
    tx = ssl_optimizer(cfg, schedule_steps)
    step = functools.partial(
        ssl_step,
        backbone=make_backbone(cfg.backbone),
        projector=make_projector(cfg),
        tx=tx,
        objective=ssl_objective(cfg),
        prototypes=make_prototypes(cfg),
        policy=crop_policy(cfg.crops),
    )
    return tx, jax.jit(step, donate_argnums=0)


def train_ssl(
    segments: SegmentSet,
    run_dir: str | Path,
    cfg: SSLConfig = SSLConfig(),
    *,
    init_params: dict | None = None,
    progress: bool = True,
    log_every: int = 10,
    devices=None,
    overwrite: bool = False,
) -> dict:
    """Pretrains the backbone on ``segments`` (resuming from ``run_dir`` if it has checkpoints).

    Args:
      segments: the training segments (a split's training subjects: never the test ones).
      run_dir: run folder (``config.json``, ``checkpoints/``, ``metrics.jsonl``).
      cfg: SSL settings.
      init_params: other subtrees of the one parameter pytree to carry along unchanged (e.g.
        ``{"segmenter": ...}``).
      progress: show a progress bar.
      log_every: steps between lines of ``metrics.jsonl``.
      devices: devices of the data-parallel mesh (default: all, of every process of a
        multi-process run: :mod:`osteo_jax.train.distributed`).
      overwrite: start afresh in a folder holding other files or an earlier run, deleting
        only pretrain's own files (:mod:`osteo_jax.data.outdir`).

    Returns:
      ``{"state", "steps", "resumed_from", "wall_s", "train"}``.
    """
    images, labels = flatten_segments(segments)
    if images.shape[-1] < cfg.crops.global_size:
        raise ValueError(
            f"segments are {images.shape[-1]} px, smaller than the global crop "
            f"({cfg.crops.global_size} px)"
        )
    data = segments.meta.get("data", "<segments>")
    mesh = data_mesh(devices, batch_size=cfg.batch_size)
    schedule = Schedule.of(len(images), cfg.batch_size, cfg.epochs, cfg.max_steps, what="segments")
    run_dir = claim_run_dir(run_dir, "pretrain", cfg, data, overwrite=overwrite).path
    tx, step_fn = _ssl_step_fn(
        dataclasses.replace(cfg, seed=0, max_steps=None), schedule.schedule_steps
    )
    init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
    params = {**(init_params or {}), **init_ssl_params(cfg, init_key)}
    trained = {k: params[k] for k in ("backbone", "ssl_head")}
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state={"ssl": tx.init(trained)}
    )

    def batches(start: int):
        return make_loader(
            ArraySource(image=images, label=labels),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            num_epochs=cfg.epochs,
            augment=False,  # the multi-crop views are made inside the jitted step
            start_batch=start,
            shard=distributed.data_shard(),
        )

    res = runner.run(
        state,
        step_fn,
        batches,
        run_dir=run_dir,
        schedule=schedule,
        rng=train_key,
        mesh=mesh,
        log_every=log_every,
        checkpoint_every=cfg.checkpoint_every,
        desc=f"pretrain ({cfg.method})",
        progress=progress,
        learning_rate=ssl_schedule(cfg, schedule.schedule_steps),
    )
    return {
        "state": res.state,
        "steps": int(res.state.step),
        "resumed_from": res.start,
        "wall_s": res.wall_s,
        "train": res.train,
    }


def restore_ssl_params(
    run_dir: str | Path, init_params: dict | None = None
) -> tuple[dict, SSLConfig]:
    """``(params, cfg)`` of a pretraining run's newest checkpoint.

    ``init_params`` must name the same extra subtrees the run carried (default none).
    """
    from osteo_jax.config import from_dict

    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise ValueError(f"{path}: not found; is {run_dir} a pretrain run folder?")
    cfg = from_dict(SSLConfig, json.loads(path.read_text())["config"])
    ckpt = Checkpointer(run_dir / CHECKPOINT_DIR)
    step = ckpt.latest_step()
    if step is None:
        raise ValueError(f"{run_dir / CHECKPOINT_DIR}: no checkpoint")
    params = {**(init_params or {}), **init_ssl_params(cfg, jax.random.key(0))}
    trained = {k: params[k] for k in ("backbone", "ssl_head")}
    template = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={"ssl": ssl_optimizer(cfg, max(step, 1)).init(trained)},
    )
    state = ckpt.restore(template, step)
    ckpt.close()
    return state.params, cfg
