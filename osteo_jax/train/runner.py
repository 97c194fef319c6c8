"""The one training loop skeleton, shared by the segmenter, SSL and classifier loops.

A loop builds what is its own (the state, the jitted step, the batches, the validation) and
hands it to :func:`run`, which owns the run folder: it resumes from the newest checkpoint in
``checkpoints/``, replicates the state over the data-parallel mesh and shards each batch along
its ``"data"`` axis, brings the step's metrics to the host at logging points and stops on a
non-finite one, appends them to ``metrics.jsonl`` under a progress bar, validates and
checkpoints at the end of every epoch (and every ``checkpoint_every`` steps), and closes
everything on the way out (the shape of big_vision's and flax ``examples/imagenet``'s
``train.py``).

Resumption is exact when batch ``b`` depends only on the seed, each step's key only on the
step (``fold_in`` inside the step) and the checkpoint holds the whole :class:`TrainState`: a run
killed at any point and restarted ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from osteo_jax.config.precision import resolve_dtypes
from osteo_jax.data.folder import dumps_json, write_json
from osteo_jax.data.outdir import OutputDir
from osteo_jax.train import distributed
from osteo_jax.train.state import TrainState
from osteo_jax.train.tensorboard import TensorBoardLog

__all__ = [
    "CHECKPOINT_DIR",
    "METRICS_LOG",
    "Checkpointer",
    "RunResult",
    "Schedule",
    "check_finite",
    "claim_run_dir",
    "data_mesh",
    "run",
    "write_config",
]

CHECKPOINT_DIR = "checkpoints"
METRICS_LOG = "metrics.jsonl"

StepFn = Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]


def data_mesh(devices=None, *, batch_size: int | None = None) -> Mesh:
    """A 1-D mesh over all (or the given) devices with axis ``"data"``.

    In a multi-process run ``jax.devices()`` lists every process's devices, ordered by
    process, so process ``i``'s devices hold block ``i`` of every batch
    (:func:`osteo_jax.train.distributed.data_shard`).

    Args:
      devices: the mesh's devices (default: all, of every process).
      batch_size: if given, checked to split evenly over the devices.

    Returns:
      The mesh.

    Raises:
      ValueError: ``batch_size`` is not divisible by the number of devices.
    """
    devices = np.asarray(devices if devices is not None else jax.devices()).reshape(-1)
    if batch_size is not None and batch_size % devices.size:
        raise ValueError(f"batch_size {batch_size} is not divisible by {devices.size} devices")
    return Mesh(devices, ("data",))


class Checkpointer:
    """Orbax checkpoints of a :class:`TrainState` (atomic; latest kept plus ``keep - 1`` more).

    The state is brought to the host first (:func:`~osteo_jax.train.distributed.to_host`) and
    saved as plain arrays, so a checkpoint holds no device layout: one written by N processes
    restores under any process count. In a multi-process run every process calls ``save``
    and ``restore`` (orbax coordinates them; process 0 writes) on a folder all of them see.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2, *, local: bool = False):
        """Opens (or creates) the checkpoint folder ``directory``.

        Args:
          directory: the folder of step sub-folders.
          keep: checkpoints kept.
          local: used by this process alone (reading a finished run on process 0 while the
            others wait); the folder must exist. Otherwise, in a multi-process run, every
            process must open, save, restore and close it together.
        """
        options = ocp.CheckpointManagerOptions(max_to_keep=keep)
        if local and jax.process_count() > 1:
            me = jax.process_index()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=False,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"local{me}"
                ),
            )
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, state: TrainState) -> None:
        """Saves ``state`` under its step (blocking until written)."""
        tree = flax.serialization.to_state_dict(distributed.to_host(state))
        self.manager.save(int(state.step), args=ocp.args.StandardSave(tree), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: TrainState, step: int | None = None) -> TrainState:
        """Restores into the structure of ``template`` (the newest checkpoint by default)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
            flax.serialization.to_state_dict(distributed.to_host(template)),
        )
        tree = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return flax.serialization.from_state_dict(template, tree)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _rate(schedule: Callable[[int], object], step: int) -> float:
    """``schedule(step)`` as a float (optax schedules need standard dtype promotion)."""
    with jax.numpy_dtype_promotion("standard"):
        return float(schedule(step))


def check_finite(metrics: dict[str, float], step: int) -> None:
    """Raises ``FloatingPointError`` naming the first non-finite metric and the step."""
    for name, value in metrics.items():
        if not np.isfinite(value):
            raise FloatingPointError(f"non-finite {name} = {value} at step {step}; stopping")


def _plain(x):
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return {k: _plain(v) for k, v in x.items()} if isinstance(x, dict) else x


def _fill_new_fields(old, cfg):
    """``old`` (a recorded config dict) with the fields it lacks taken from ``cfg``'s defaults.

    A folder written before a config field existed records no value for it; the run it holds
    used what is now that field's default, so the field is filled with the default (not with
    ``cfg``'s value): a run resumed with another value still counts as another configuration.
    """
    if isinstance(cfg, dict) and isinstance(old, dict):
        return {k: _fill_new_fields(v, cfg[k]) if k in cfg else v for k, v in old.items()}
    if not (dataclasses.is_dataclass(cfg) and isinstance(old, dict)):
        return old
    out = dict(old)
    for f in dataclasses.fields(cfg):
        if f.name in out:
            out[f.name] = _fill_new_fields(out[f.name], getattr(cfg, f.name))
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(dumps_json(_plain(out)))


def _without(tree, keys: tuple[str, ...]):
    """``tree`` (nested dicts and lists) with the dict entries named ``keys`` removed."""
    if isinstance(tree, dict):
        return {k: _without(v, keys) for k, v in tree.items() if k not in keys}
    if isinstance(tree, list):
        return [_without(v, keys) for v in tree]
    return tree


def _check_config(path: Path, cfg) -> None:
    """Raises ``ValueError`` if ``path`` (a ``config.json``) records another configuration."""
    old = resolve_dtypes(_fill_new_fields(json.loads(path.read_text())["config"], cfg))
    new = resolve_dtypes(json.loads(dumps_json(_plain(cfg))))
    # max_steps only stops a run early (a run's own, not a stage's inside an experiment,
    # whose later stages would be stale); expert_parallel only moves it to another mesh and
    # validate_every only scores it more or less often, at any depth (an experiment's
    # segmenter too); any other change makes another run.
    old.pop("max_steps", None)
    new.pop("max_steps", None)
    old, new = (_without(c, ("expert_parallel", "validate_every")) for c in (old, new))
    if old != new:
        raise ValueError(
            f"{path}: this run folder was started with a different configuration; use a new "
            "--out folder (or delete it) to train with other settings"
        )


def write_config(run_dir: Path, cfg, data: str) -> None:
    """Writes ``run_dir/config.json``, or checks that a resumed run has the same config.

    ``max_steps`` (it only stops a run early) and ``expert_parallel`` (the same run on
    another mesh) may differ, and a ``dtype`` of ``"auto"`` equals the dtype it resolves to
    here (a folder started with ``"float32"`` before ``"auto"`` became the default resumes on a
    CPU). A field the folder's ``config.json`` lacks (added to the config since) counts as its
    default. Any other change raises ``ValueError``.
    """
    path = run_dir / "config.json"
    if path.exists():
        _check_config(path, cfg)
        return
    write_json(path, {"data": data, "config": _plain(cfg)})


def claim_run_dir(
    run_dir: str | os.PathLike, command: str, cfg, data: str, *, overwrite: bool = False
) -> OutputDir:
    """Claims ``run_dir`` for ``command`` and writes (or checks) its ``config.json``.

    A run folder is the command's own (:mod:`osteo_jax.data.outdir`): absent or empty, or a
    run of the same command, resumed if its configuration matches (:func:`write_config`).
    In a multi-process run every process checks the folder and its configuration first (so
    all of them fail alike), then process 0 alone claims and writes it; the others get an
    :class:`OutputDir` that never deletes anything.

    Args:
      run_dir: the run folder.
      command: ``"train-seg"``, ``"pretrain"`` or ``"train-cls"``.
      cfg: the run's configuration (a dataclass or a dict of them).
      data: where the training data came from, recorded in ``config.json``.
      overwrite: start afresh, deleting only the command's own earlier outputs.

    Returns:
      The claimed folder. Claim it once the inputs are known to be usable (data read, schedule
      built), so that a command failing on its input leaves no folder behind.

    Raises:
      OutputFolderError: the folder holds other files; ValueError: another configuration.
    """

    def check(path: Path) -> None:
        if not overwrite and (path / "config.json").exists():
            _check_config(path / "config.json", cfg)

    claim = distributed.claim_shared_dir(run_dir, command, overwrite=overwrite, check=check)
    if distributed.is_main():
        with claim.discarded_on_error():
            write_config(claim.path, cfg, data)
    distributed.barrier(f"osteo_jax:claim:{command}:{claim.path}:config")
    return claim


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A run's length in steps.

    The learning-rate schedule always spans every epoch (``schedule_steps``); ``max_steps``
    only stops early (``total``), so a run resumed with a larger ``max_steps`` continues
    exactly as an uninterrupted run would.
    """

    steps_per_epoch: int
    epochs: int
    max_steps: int | None = None

    @classmethod
    def of(
        cls,
        n_examples: int,
        batch_size: int,
        epochs: int,
        max_steps: int | None = None,
        *,
        what: str = "examples",
    ) -> Schedule:
        """The schedule of ``epochs`` passes over ``n_examples`` in full batches.

        Raises:
          ValueError: fewer examples than one batch (the message calls them ``what``).
        """
        steps_per_epoch = n_examples // batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"{n_examples} {what} are fewer than one batch ({batch_size})")
        return cls(steps_per_epoch, epochs, max_steps)

    @property
    def schedule_steps(self) -> int:
        """Steps of every epoch: the length the optimizer's schedule is built for."""
        return self.epochs * self.steps_per_epoch

    @property
    def total(self) -> int:
        """Steps this invocation trains to (``max_steps`` if it comes first)."""
        full = self.schedule_steps
        return full if self.max_steps is None else min(full, self.max_steps)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run` ends with.

    Attributes:
      state: the final train state (replicated over the mesh, or as ``state_sharding`` places
        it; a host-local copy on every process of a multi-process run).
      start: the step it resumed from (0 for a fresh run).
      train: the last training metrics brought to the host (empty if none was).
      val: the last validation metrics (empty if none).
      wall_s: seconds spent in the loop.
    """

    state: TrainState
    start: int
    train: dict[str, float]
    val: dict[str, float]
    wall_s: float


def run(
    state: TrainState,
    step_fn: StepFn,
    batches: Callable[[int], Iterable[dict]],
    *,
    run_dir: str | os.PathLike,
    schedule: Schedule,
    rng: jax.Array,
    mesh: Mesh,
    state_sharding=None,
    log_every: int | None = None,
    checkpoint_every: int | None = None,
    evaluate_fn: Callable[[TrainState, int], dict[str, float]] | None = None,
    validate_every: int = 1,
    split_lines: bool = False,
    to_batch: Callable[[dict], dict] | None = None,
    desc: str = "train",
    progress: bool = True,
    learning_rate: Callable[[int], object] | None = None,
) -> RunResult:
    """Trains ``state`` with ``step_fn`` to ``schedule.total`` steps, resuming if it can.

    Per step ``done = step + 1`` (the number the log and the checkpoints use): the step runs;
    at every ``log_every``-th step and at the end of each epoch the metrics come to the host,
    are checked to be finite and make a line of ``metrics.jsonl``; at the end of each
    ``validate_every``-th epoch (and of the run) ``evaluate_fn`` scores the state; then the
    state is checkpointed every ``checkpoint_every`` steps and at the end of each epoch.
    Validation comes before the epoch's checkpoint, so a checkpointed epoch has always been
    validated (the classifier's best state depends on it). A run stopped by ``max_steps``
    mid-epoch ends that epoch there.

    Args:
      state: the freshly initialised state; the newest checkpoint in
        ``run_dir/checkpoints`` replaces it if there is one.
      step_fn: jitted ``(state, batch, rng) -> (state, metrics)``, metrics a flat dict of
        scalars holding ``loss``.
      batches: ``batches(start)`` is the host batches from batch ``start`` on (the loader
        started at the resumed step); closed at the end if it has ``close``.
      run_dir: run folder (``checkpoints/``, ``metrics.jsonl``).
      schedule: the run's length.
      rng: the run's base key, passed to every step (which folds the step in).
      mesh: data-parallel mesh: the state is replicated, batches are sharded along ``"data"``.
        In a multi-process run (:mod:`osteo_jax.train.distributed`) it spans every process's
        devices, ``batches`` yields this process's block of each global batch, only process 0
        writes ``metrics.jsonl`` and shows the bar, ``evaluate_fn`` gets a host-local copy
        of the state on every process, and the returned state is host-local too.
      state_sharding: a pytree of ``NamedSharding`` matching the state to place it with
        instead (e.g. :func:`osteo_jax.train.sharding.state_sharding`); None: replicated.
      log_every: steps between metric lines (None: only at the end of each epoch).
      checkpoint_every: steps between checkpoints (None: only at the end of each epoch).
      evaluate_fn: ``evaluate_fn(state, epoch) -> metrics`` (validation), or None.
      validate_every: epochs between validations.
      split_lines: training and validation lines apart, tagged ``"split": "train"`` /
        ``"val"``; otherwise the validation metrics join their epoch's line as ``val_<name>``.
      to_batch: host record -> the step's batch (default: the record itself).
      desc: the progress bar's label.
      progress: show a progress bar.
      learning_rate: the optimizer's schedule, ``step -> rate`` (optax); each training line
        then holds ``lr``, the rate of its step, computed on the host (the step is unchanged).

    Every metrics line also goes to TensorBoard event files in ``run_dir/tensorboard``
    (:mod:`osteo_jax.train.tensorboard`), written by process 0.

    Returns:
      The final state, the resumed-from step, the last metrics and the wall time.

    Raises:
      FloatingPointError: a non-finite metric, naming it and the step.
    """
    run_dir = Path(run_dir)
    per_epoch, total = schedule.steps_per_epoch, schedule.total
    train: dict[str, float] = {}
    val: dict[str, float] = {}
    with contextlib.ExitStack() as closing:
        ckpt = Checkpointer(run_dir / CHECKPOINT_DIR)
        closing.callback(ckpt.close)
        if ckpt.latest_step() is not None:
            state = ckpt.restore(state)
        state = distributed.place(state, state_sharding or NamedSharding(mesh, P()))
        sharded = NamedSharding(mesh, P("data"))
        start = int(state.step)
        records = iter(batches(start))
        if hasattr(records, "close"):
            closing.callback(records.close)
        main = distributed.is_main()
        log = closing.enter_context(
            open(run_dir / METRICS_LOG, "a") if main else contextlib.nullcontext()
        )
        board = TensorBoardLog(run_dir) if main else None
        if board is not None:
            closing.callback(board.close)
        bar = closing.enter_context(
            tqdm(
                total=total, initial=start, desc=desc, unit="step", disable=not (progress and main)
            )
        )
        t0 = time.perf_counter()
        for step in range(start, total):
            epoch, done = step // per_epoch, step + 1
            record = next(records)
            batch = distributed.global_batch(
                record if to_batch is None else to_batch(record), sharded
            )
            state, metrics = step_fn(state, batch, rng)
            end_of_epoch = done % per_epoch == 0 or done == total
            lines = []
            if (log_every and done % log_every == 0) or end_of_epoch:
                train = {k: float(v) for k, v in distributed.to_host(metrics).items()}
                if learning_rate is not None:
                    train["lr"] = _rate(learning_rate, step)
                check_finite(train, done)
                tag = {"split": "train"} if split_lines else {}
                lines.append({"step": done, "epoch": epoch, **tag, **train})
                bar.set_postfix(loss=f"{train['loss']:.4f}")
            due = (epoch + 1) % validate_every == 0 or done == total
            if evaluate_fn is not None and end_of_epoch and due:
                val = evaluate_fn(distributed.to_local(state), epoch)
                if split_lines:
                    lines.append({"step": done, "epoch": epoch, "split": "val", **val})
                else:
                    lines[-1].update({f"val_{k}": v for k, v in val.items()})
            if lines and main:
                log.write("".join(dumps_json(line) + "\n" for line in lines))
                log.flush()
                if board is not None:
                    for line in lines:
                        board.write(line)
                    board.flush()
            bar.update()
            if (checkpoint_every and done % checkpoint_every == 0) or end_of_epoch:
                ckpt.save(state)
    wall = time.perf_counter() - t0
    return RunResult(distributed.to_local(state), start, train, val, wall)
