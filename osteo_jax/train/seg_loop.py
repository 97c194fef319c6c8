"""The segmenter training loop: epochs, progress bar, validation, checkpoints, resume, JSONL log.

Batches come from :func:`osteo_jax.data.pipeline.make_loader` (grain) over a dataset folder
decoded once into memory, the same folder streamed from disk, or a TFDS build. Resumption is
exact: batch ``b`` of the loader depends only on the seed (not on the worker count), a resumed
run starts the loader at its step, each step's key is ``fold_in(base_key, step)``, and the
checkpoint holds the whole :class:`TrainState`, so a run killed at any point and restarted
continues to the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from osteo_jax.config import SegTrainConfig
from osteo_jax.data.folder import write_json
from osteo_jax.data.inmemory import split_by_subject
from osteo_jax.data.pipeline import make_loader, seg_source
from osteo_jax.train.state import TrainState, create_seg_state, make_segmenter, seg_optimizer
from osteo_jax.train.steps import seg_step

CHECKPOINT_DIR = "checkpoints"
METRICS_LOG = "metrics.jsonl"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with axis ``"data"``."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), ("data",))


class Checkpointer:
    """Orbax checkpoints of a :class:`TrainState` (atomic; latest kept plus ``keep - 1`` more)."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep)
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, state: TrainState) -> None:
        """Saves ``state`` under its step (blocking until written)."""
        tree = flax.serialization.to_state_dict(jax.device_get(state))
        self.manager.save(int(state.step), args=ocp.args.StandardSave(tree), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: TrainState, step: int | None = None) -> TrainState:
        """Restores into the structure of ``template`` (the newest checkpoint by default)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
            flax.serialization.to_state_dict(jax.device_get(template)),
        )
        tree = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return flax.serialization.from_state_dict(template, tree)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def check_finite(metrics: dict[str, float], step: int) -> None:
    """Raises ``FloatingPointError`` naming the first non-finite metric and the step."""
    for name, value in metrics.items():
        if not np.isfinite(value):
            raise FloatingPointError(f"non-finite {name} = {value} at step {step}; stopping")


def write_config(run_dir: Path, cfg, data: str) -> None:
    """Writes ``run_dir/config.json``, or checks that a resumed run has the same config.

    ``max_steps`` may differ (it only stops a run early); any other change raises
    ``ValueError``.
    """

    def plain(x):
        if dataclasses.is_dataclass(x):
            return dataclasses.asdict(x)
        return {k: plain(v) for k, v in x.items()} if isinstance(x, dict) else x

    record = {"data": data, "config": plain(cfg)}
    path = run_dir / "config.json"
    if path.exists():
        old = json.loads(path.read_text())["config"]
        new = json.loads(json.dumps(record["config"]))
        # max_steps only stops a run early; any other change would make a different run.
        old.pop("max_steps", None)
        new.pop("max_steps", None)
        if old != new:
            raise ValueError(
                f"{path}: this run folder was started with a different configuration; use a new "
                "--out folder (or delete it) to train with other settings"
            )
        return
    write_json(path, record)


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
    validate_every: int = 1,
    devices=None,
    stream: bool = False,
    workers: int = 0,
) -> dict:
    """Trains the segmenter on a dataset folder; resumes from ``run_dir``'s latest checkpoint.

    Args:
      data: dataset folder, TFDS build folder (``osteo-jax build-tfds``), already loaded
        :class:`SegArrays`, or a source (:func:`osteo_jax.data.pipeline.seg_source`).
      run_dir: run folder (``config.json``, ``checkpoints/``, ``metrics.jsonl``,
        ``split.json``, ``val_metrics.json``).
      cfg: training configuration.
      evaluate_fn: scores the validation subjects at the end of every ``validate_every``-th
        epoch and at the end of training, called as ``evaluate_fn(model, params, images,
        masks, key, batch_size=..., annotator_names=...)`` with the segmenter's parameters and
        the validation images ``[n, S, S, 1]`` and masks ``[n, M, S, S]``; it returns a flat
        dict of metrics (:func:`osteo_jax.eval.seg_eval.evaluate_segmenter`, which the
        pipeline and the CLI pass). None: no validation.
      progress: show a progress bar.
      log_every: steps between metric lines in ``metrics.jsonl``.
      validate_every: epochs between validations.
      devices: devices of the data-parallel mesh (default: all).
      stream: decode a folder's images from disk at every read instead of once up front (for
        folders larger than memory; same batches either way).
      workers: grain worker processes decoding ahead of the step (same batches for any count;
        useful with ``stream`` or a TFDS build).

    Returns:
      Summary dict: steps, wall time, final training metrics and the last validation metrics.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = seg_source(data, cfg.seg.image_size, cfg.annotators, stream=stream)
    write_config(run_dir, cfg, str(data) if isinstance(data, (str, os.PathLike)) else "<arrays>")
    subject_ids = np.asarray(source.subject_ids)
    train_idx, val_idx = split_by_subject(subject_ids, cfg.val_fraction, cfg.seed)
    (run_dir / "split.json").write_text(
        json.dumps(
            {
                "train": sorted(set(subject_ids[train_idx].tolist())),
                "val": sorted(set(subject_ids[val_idx].tolist())),
            },
            indent=1,
        )
    )

    mesh = data_mesh(devices)
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {n_dev} devices")
    steps_per_epoch = len(train_idx) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_idx)} training images are fewer than one batch ({cfg.batch_size})"
        )
    # The schedule always spans every epoch; max_steps only stops early, so a run resumed with
    # a larger max_steps continues exactly as an uninterrupted run would.
    schedule_steps = cfg.epochs * steps_per_epoch
    total = schedule_steps if cfg.max_steps is None else min(schedule_steps, cfg.max_steps)

    model = make_segmenter(cfg.seg)
    tx = seg_optimizer(cfg, schedule_steps)
    base_key = jax.random.key(cfg.seed)
    init_key, train_key, val_key = jax.random.split(base_key, 3)
    state = create_seg_state(cfg, init_key, tx)
    ckpt = Checkpointer(run_dir / CHECKPOINT_DIR)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)
    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P("data"))
    state = jax.device_put(state, replicated)
    step_fn = jax.jit(functools.partial(seg_step, model=model, tx=tx, ot=cfg.ot), donate_argnums=0)

    start = int(state.step)
    if evaluate_fn is not None and len(val_idx):
        val_images, val_masks = _gather(source, val_idx)
    batches = iter(
        make_loader(
            source,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            indices=train_idx,
            num_epochs=cfg.epochs,
            augment=False,
            start_batch=start,
            workers=workers,
        )
    )
    log = open(run_dir / METRICS_LOG, "a")
    bar = tqdm(total=total, initial=start, desc="train-seg", unit="step", disable=not progress)
    t0 = time.perf_counter()
    metrics_host: dict[str, float] = {}
    val: dict[str, float] = {}
    try:
        for step in range(start, total):
            epoch, within = divmod(step, steps_per_epoch)
            record = next(batches)
            batch = jax.device_put(
                {"image": record["image"], "masks": record["masks"].astype(np.int32)}, sharded
            )
            state, metrics = step_fn(state, batch, train_key)
            done = step + 1
            if done % log_every == 0 or done == total or within == steps_per_epoch - 1:
                metrics_host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(metrics_host, step)
                log.write(
                    json.dumps({"step": done, "epoch": epoch, "split": "train", **metrics_host})
                    + "\n"
                )
                log.flush()
                bar.set_postfix(loss=f"{metrics_host['loss']:.4f}")
            bar.update()
            end_of_epoch = within == steps_per_epoch - 1 or done == total
            if done % cfg.checkpoint_every == 0 or end_of_epoch:
                ckpt.save(state)
            due = (epoch + 1) % validate_every == 0 or done == total
            if evaluate_fn is not None and len(val_idx) and end_of_epoch and due:
                val = evaluate_fn(
                    model,
                    state.params["segmenter"],
                    val_images,
                    val_masks,
                    val_key,
                    batch_size=cfg.batch_size,
                    annotator_names=source.annotators,
                )
                log.write(json.dumps({"step": done, "epoch": epoch, "split": "val", **val}) + "\n")
                log.flush()
                write_json(run_dir / "val_metrics.json", val)
    finally:
        if hasattr(batches, "close"):
            batches.close()
        bar.close()
        log.close()
        ckpt.close()
    return {
        "steps": int(state.step),
        "resumed_from": start,
        "wall_s": time.perf_counter() - t0,
        "train": metrics_host,
        "val": val,
        "state": state,
        "model": model,
    }
