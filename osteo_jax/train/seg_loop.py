"""The segmenter training loop: its state, batches and validation on :func:`runner.run`.

Batches come from :func:`osteo_jax.data.pipeline.make_loader` (grain) over a dataset folder
decoded once into memory, the same folder streamed from disk, or a TFDS build. Resumption is
exact: batch ``b`` of the loader depends only on the seed (not on the worker count), a resumed
run starts the loader at its step, each step's key is ``fold_in(base_key, step)``, and the
checkpoint holds the whole :class:`TrainState`, so a run killed at any point and restarted
continues to the same parameters as an uninterrupted run. The loop skeleton (resume, metrics,
checkpoints) is :func:`osteo_jax.train.runner.run`'s.

With ``cfg.expert_parallel = E > 1`` the devices form a ``data x expert`` mesh
(:mod:`osteo_jax.train.sharding`): the K decoders, their optimizer moments and their compute
are split over E devices, the batch over the other axis. The checkpoint is the same whatever
the mesh, so a run can resume on another one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from osteo_jax.config import SegTrainConfig
from osteo_jax.data.folder import dumps_json, write_json
from osteo_jax.data.inmemory import split_by_subject
from osteo_jax.data.outdir import check_dir
from osteo_jax.data.pipeline import make_loader, seg_source
from osteo_jax.train import distributed, runner
from osteo_jax.train.runner import Schedule, claim_run_dir, data_mesh
from osteo_jax.train.sharding import expert_map, expert_mesh, state_sharding
from osteo_jax.train.state import (
    TrainState,
    create_seg_state,
    make_segmenter,
    seg_optimizer,
    seg_schedule,
)
from osteo_jax.train.steps import seg_step

__all__ = ["train_segmenter"]


def _gather(source, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(images, masks)`` of records ``idx`` (array slicing when the source holds arrays)."""
    if hasattr(source, "images"):
        return source.images[idx], source.masks[idx]
    records = [source[int(i)] for i in idx]
    return np.stack([r["image"] for r in records]), np.stack([r["masks"] for r in records])


def train_segmenter(
    data,
    run_dir: str | os.PathLike,
    cfg: SegTrainConfig = SegTrainConfig(),
    *,
    evaluate_fn: Callable[..., dict[str, float]] | None = None,
    progress: bool = True,
    log_every: int = 10,
    devices=None,
    stream: bool = False,
    workers: int = 0,
    overwrite: bool = False,
    allow_outside_paths: bool = False,
) -> dict:
    """Trains the segmenter on a dataset folder; resumes from ``run_dir``'s latest checkpoint.

    Args:
      data: dataset folder, TFDS build folder (``osteo-jax build-tfds``), already loaded
        :class:`SegArrays`, or a source (:func:`osteo_jax.data.pipeline.seg_source`).
      run_dir: run folder (``config.json``, ``checkpoints/``, ``metrics.jsonl``,
        ``split.json``, ``val_metrics.json``).
      cfg: training configuration.
      evaluate_fn: scores the validation subjects at the end of every
        ``cfg.validate_every``-th epoch and at the end of training, called as
        ``evaluate_fn(model, params, images, masks, key, batch_size=..., annotator_names=...)``
        with the segmenter's parameters and the validation images ``[n, S, S, 1]`` and masks
        ``[n, M, S, S]``; it returns a flat dict of metrics
        (:func:`osteo_jax.eval.seg_eval.evaluate_segmenter`, which the pipeline and the CLI
        pass). None: no validation.
      progress: show a progress bar.
      log_every: steps between metric lines in ``metrics.jsonl``.
      devices: devices of the mesh (default: all, of every process of a multi-process run:
        :mod:`osteo_jax.train.distributed`): data-parallel, or ``data x expert`` with
        ``cfg.expert_parallel`` devices on the expert axis.
      stream: decode a folder's images from disk at every read instead of once up front (for
        folders larger than memory; same batches either way).
      workers: grain worker processes decoding ahead of the step (same batches for any count;
        useful with ``stream`` or a TFDS build).
      overwrite: start afresh in a folder holding other files or an earlier run, deleting
        only train-seg's own files (:mod:`osteo_jax.data.outdir`).
      allow_outside_paths: accept a folder's paths leaving its root
        (:mod:`osteo_jax.data.confine`).

    Returns:
      Summary dict: steps, wall time, final training metrics and the last validation metrics.
    """
    check_dir(run_dir, "train-seg", overwrite=overwrite)  # refused before the data is read
    # The folder is checked (read_dataset) and, unless streamed, loaded before anything is
    # written: a bad folder leaves no run folder behind.
    source = seg_source(
        data,
        cfg.model.image_size,
        cfg.annotators,
        stream=stream,
        allow_outside_paths=allow_outside_paths,
    )
    if progress and getattr(source, "unlabelled", ()):
        print(
            f"note: {len(source.unlabelled)} image(s) without a mask from {source.annotators} "
            f"are not used to train the segmenter, e.g. {list(source.unlabelled[:3])}"
        )
    subject_ids = np.asarray(source.subject_ids)
    train_idx, val_idx = split_by_subject(subject_ids, cfg.val_fraction, cfg.seed)
    if cfg.expert_parallel > 1:
        if cfg.model.form != "mixture":
            raise ValueError(
                f"expert_parallel {cfg.expert_parallel} needs the mixture form's stacked "
                f"decoders; form {cfg.model.form!r} has none"
            )
        mesh = expert_mesh(
            cfg.expert_parallel,
            devices,
            num_experts=cfg.model.num_experts,
            batch_size=cfg.batch_size,
        )
    else:
        mesh = data_mesh(devices, batch_size=cfg.batch_size)
    schedule = Schedule.of(
        len(train_idx), cfg.batch_size, cfg.epochs, cfg.max_steps, what="training images"
    )
    # The folder is claimed once the data and the schedule are known to be usable.
    origin = str(data) if isinstance(data, (str, os.PathLike)) else "<arrays>"
    run_dir = claim_run_dir(run_dir, "train-seg", cfg, origin, overwrite=overwrite).path
    split = {
        "train": sorted(set(subject_ids[train_idx].tolist())),
        "val": sorted(set(subject_ids[val_idx].tolist())),
    }
    distributed.on_main((run_dir / "split.json").write_text, dumps_json(split, indent=1))

    model = make_segmenter(cfg.model)
    tx = seg_optimizer(cfg, schedule.schedule_steps)
    base_key = jax.random.key(cfg.seed)
    init_key, train_key, val_key = jax.random.split(base_key, 3)
    state = create_seg_state(cfg, init_key, tx)
    if cfg.expert_parallel > 1:
        # The step's decoders run sharded; validation keeps the plain model (any batch size).
        shardings = state_sharding(mesh, state)
        step_model = model.clone(expert_map=expert_map(mesh))
        out_shardings = (shardings, NamedSharding(mesh, P()))
    else:
        shardings, step_model, out_shardings = None, model, None
    step_fn = jax.jit(
        functools.partial(seg_step, model=step_model, tx=tx, ot=cfg.ot),
        donate_argnums=0,
        out_shardings=out_shardings,
    )

    evaluate = None
    if evaluate_fn is not None and len(val_idx):
        val_images, val_masks = _gather(source, val_idx)

        def evaluate(state: TrainState, epoch: int) -> dict[str, float]:
            val = evaluate_fn(
                model,
                state.params["segmenter"],
                val_images,
                val_masks,
                val_key,
                batch_size=cfg.batch_size,
                annotator_names=source.annotators,
            )
            distributed.on_main(write_json, run_dir / "val_metrics.json", val)
            return val

    def batches(start: int):
        return make_loader(
            source,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            indices=train_idx,
            num_epochs=cfg.epochs,
            augment=False,
            start_batch=start,
            workers=workers,
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
        state_sharding=shardings,
        log_every=log_every,
        checkpoint_every=cfg.checkpoint_every,
        evaluate_fn=evaluate,
        validate_every=cfg.validate_every,
        split_lines=True,
        to_batch=lambda r: {"image": r["image"], "masks": r["masks"].astype(np.int32)},
        desc="train-seg",
        progress=progress,
        learning_rate=seg_schedule(cfg, schedule.schedule_steps),
    )
    return {
        "steps": int(res.state.step),
        "resumed_from": res.start,
        "wall_s": res.wall_s,
        "train": res.train,
        "val": res.val,
        "state": res.state,
        "model": model,
    }
