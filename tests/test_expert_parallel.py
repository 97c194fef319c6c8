"""Expert parallelism: mesh checks, per-leaf state sharding, and (e2e, 4 forced CPU devices in
subprocesses) a ``data x expert`` step and a train-seg run resumed on another mesh, both
against the 1-device run."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from osteo_jax.cli import main
from osteo_jax.cli.train import _seg_train_config, add_train_seg
from osteo_jax.config import OTConfig, SegConfig, SegTrainConfig
from osteo_jax.train.runner import Checkpointer, write_config
from osteo_jax.train.sharding import expert_mesh, is_expert_leaf, state_sharding
from osteo_jax.train.state import create_seg_state, seg_optimizer

# K = 4 decoders, batch 4: splits evenly over every data x expert mesh of 4 devices. 10
# Sinkhorn iterations (not 200) compile faster; the comparison does not depend on them.
TINY = SegTrainConfig(
    model=SegConfig(
        features=(8, 16), num_experts=4, num_samples=2, latent_dim=3, head_hidden=8, image_size=32
    ),
    ot=OTConfig(num_iters=10, gamma_ramp_start=1, gamma_ramp_steps=2),
    batch_size=4,
    epochs=2,
    warmup_steps=1,
    val_fraction=0.0,
    checkpoint_every=1,
)


@pytest.fixture(scope="module")
def state():
    tx = seg_optimizer(TINY, 10)
    return jax.eval_shape(lambda: create_seg_state(TINY, jax.random.key(0), tx))


def test_state_sharding_puts_decoders_and_their_moments_on_the_expert_axis(state):
    mesh = AbstractMesh((2, 2), ("data", "expert"))
    shardings = state_sharding(mesh, state)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    specs = jax.tree.leaves(shardings)
    assert len(flat) == len(specs)
    on_expert = {}
    for (path, leaf), sharding in zip(flat, specs, strict=True):
        name = jax.tree_util.keystr(path)
        if "'decoders'" in name:
            assert sharding.spec == P("expert"), name
            assert leaf.shape[0] == TINY.model.num_experts, name
            on_expert[name] = leaf.shape
        else:
            assert sharding.spec == P(), name
    # Every decoder parameter, and Adam's mu and nu of each, are sharded; nothing else is.
    n_params = len(jax.tree.leaves(state.params["segmenter"]["decoders"]))
    assert n_params > 10
    assert sum(".params[" in k for k in on_expert) == n_params
    assert sum(".mu[" in k for k in on_expert) == n_params
    assert sum(".nu[" in k for k in on_expert) == n_params
    assert len(on_expert) == 3 * n_params
    # The encoder, the router and the Adam count stay replicated.
    assert not any(
        is_expert_leaf(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(state.params["segmenter"]["encoder"])[0]
    )


def test_state_sharding_refuses_a_decoder_axis_the_expert_axis_does_not_split(state):
    with pytest.raises(ValueError, match="divisible by 8"):
        state_sharding(AbstractMesh((1, 8), ("data", "expert")), state)


def test_expert_mesh_shape_and_divisibility_errors():
    mesh = expert_mesh(1, num_experts=4, batch_size=4)
    assert mesh.axis_names == ("data", "expert") and mesh.devices.shape == (1, 1)
    fake = [object()] * 4  # the checks run before any device is used
    with pytest.raises(ValueError, match="does not divide the 4 devices"):
        expert_mesh(3, fake)
    with pytest.raises(ValueError, match="does not divide the 1 devices"):
        expert_mesh(2)
    with pytest.raises(ValueError, match="6 experts .* expert axis of 4"):
        expert_mesh(4, fake, num_experts=6)
    with pytest.raises(ValueError, match="batch_size 6 .* data axis of 4"):
        expert_mesh(1, fake, num_experts=4, batch_size=6)
    with pytest.raises(ValueError, match="expert_parallel must be > 0"):
        SegTrainConfig(expert_parallel=0)


def test_cli_flag_and_a_resumed_run_may_change_only_expert_parallel(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_seg(parser.add_subparsers())
    args = parser.parse_args(["train-seg", "--data", "d", "--out", "o", "--expert-parallel", "2"])
    assert _seg_train_config(args).expert_parallel == 2
    args = parser.parse_args(["train-seg", "--data", "d", "--out", "o"])
    assert _seg_train_config(args).expert_parallel == 1
    write_config(tmp_path, dataclasses.replace(TINY, expert_parallel=2), "d")
    write_config(tmp_path, dataclasses.replace(TINY, expert_parallel=4), "d")  # same run
    with pytest.raises(ValueError, match="different configuration"):
        write_config(tmp_path, dataclasses.replace(TINY, expert_parallel=4, seed=1), "d")
    assert json.loads((tmp_path / "config.json").read_text())["config"]["expert_parallel"] == 2


# ---------------------------------------------------------------- e2e: 4 forced CPU devices

_ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")

# One step of the tiny config from the same state and batch: the plain jitted step on one
# device, then the expert-parallel step (decoders through shard_map, state sharded per leaf,
# kept sharded by out_shardings) on data x expert = 2x2, 1x4 (all experts apart) and 4x1 in
# the unrolled-scan execution, and 2x2 in the vmap execution (the one GPUs and TPUs run).
_STEP_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    sys.path.insert(0, {tests!r})
    from test_expert_parallel import TINY
    from osteo_jax.train import sharding as sh
    from osteo_jax.train.state import create_seg_state, make_segmenter, seg_optimizer
    from osteo_jax.train.steps import seg_step
    assert len(jax.devices()) == 4, jax.devices()
    K, B = TINY.model.num_experts, TINY.batch_size
    model, tx = make_segmenter(TINY.model), seg_optimizer(TINY, 10)
    state0 = create_seg_state(TINY, jax.random.key(0), tx)
    rng = np.random.default_rng(1)
    masks = np.zeros((B, 3, 32, 32), np.int32)
    masks[:, :, 8:24, 10:14] = 4
    masks[:, 1, 8:12, 10:14] = 0
    batch = {{"image": rng.random((B, 32, 32, 1)).astype(np.float32), "masks": masks}}
    one = jax.devices()[0]
    ref, ref_m = jax.jit(functools.partial(seg_step, model=model, tx=tx, ot=TINY.ot))(
        jax.device_put(state0, one), jax.device_put(batch, one), jax.random.key(1))
    ref_leaves = [np.asarray(x) for x in jax.tree.leaves(ref)]
    out = {{"loss": float(ref_m["loss"])}}
    for data, expert, mode in ((2, 2, "scan"), (1, 4, "scan"), (4, 1, "scan"), (2, 2, "vmap")):
        mesh = sh.expert_mesh(expert, num_experts=K, batch_size=B)
        assert mesh.devices.shape == (data, expert)
        shardings = sh.state_sharding(mesh, state0)
        local = []
        mapped = sh.expert_map(mesh)
        def spy(fn, params, *args, mapped=mapped, local=local):
            def inner(p, *a):
                local.append(jax.tree.leaves(p)[0].shape[0])
                return fn(p, *a)
            return mapped(inner, params, *args)
        step = jax.jit(
            functools.partial(
                seg_step, model=model.clone(mode=mode, expert_map=spy), tx=tx, ot=TINY.ot),
            out_shardings=(shardings, NamedSharding(mesh, P())))
        state = jax.device_put(state0, shardings)
        new, m = step(state, jax.device_put(batch, NamedSharding(mesh, P("data"))),
                      jax.random.key(1))
        kernel = new.params["segmenter"]["decoders"]["decoder"]["dec0"]["conv0"]["kernel"]
        mu = new.opt_state["seg"][1][0].mu["decoders"]["decoder"]["dec0"]["conv0"]["kernel"]
        diffs = [float(np.max(np.abs(np.asarray(a) - b)))
                 for a, b in zip(jax.tree.leaves(new), ref_leaves, strict=True)]
        out[f"{{data}}x{{expert}} {{mode}}"] = {{
            "loss": float(m["loss"]),
            "max_diff": max(diffs),
            "decoders_per_device_in_step": local,
            "on_expert": [kernel.sharding.spec == P("expert"), mu.sharding.spec == P("expert")],
            "kernel_shard_k": sorted({{s.data.shape[0] for s in kernel.addressable_shards}}),
            "encoder_replicated": all(x.sharding.spec == P()
                                      for x in jax.tree.leaves(new.params["segmenter"]["encoder"])),
        }}
    print(json.dumps(out))
""")


@pytest.mark.e2e  # ~50 s on 2 busy cores: four compiles of the tiny step
def test_data_x_expert_step_on_four_devices_equals_the_one_device_step():
    script = _STEP_SCRIPT.format(tests=os.path.dirname(__file__))
    res = subprocess.run(
        [sys.executable, "-c", script], env=_ENV, capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(out)
    assert np.isfinite(out["loss"])
    k = TINY.model.num_experts
    cases = (("2x2 scan", 2), ("1x4 scan", 4), ("4x1 scan", 1), ("2x2 vmap", 2))
    for name, expert in cases:
        got = out[name]
        # Reductions over the batch and the experts are split differently: tolerance 2e-5 on
        # every leaf of the state after a step (parameters move by ~1e-3 in the first step;
        # vmap vs scan differ by up to ~1e-6 on their own).
        np.testing.assert_allclose(got["loss"], out["loss"], rtol=1e-5)
        assert got["max_diff"] < 2e-5, (name, got)
        assert got["decoders_per_device_in_step"] == [k // expert], (name, got)
        assert got["kernel_shard_k"] == [k // expert], (name, got)
        assert got["on_expert"] == [True, True] and got["encoder_replicated"], got


def _train_seg(data: Path, cfg: Path, out: Path, *extra: str, env: dict) -> str:
    args = ["train-seg", "--data", str(data), "--config", str(cfg), "--out", str(out), *extra]
    res = subprocess.run(
        [sys.executable, "-m", "osteo_jax.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, f"{args}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _final_state(run: Path) -> tuple[int, dict]:
    ckpt = Checkpointer(run / "checkpoints")
    try:
        step = ckpt.latest_step()
        tree = ckpt.manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        ckpt.close()
    return step, tree


@pytest.mark.e2e  # ~90 s on 2 busy cores: three CLI runs
def test_train_seg_expert_parallel_resumed_on_another_mesh_matches_one_device(tmp_path):
    data = tmp_path / "data"
    synth = ["--subjects", "8", "--size", "64", "--seed", "1", "--workers", "1"]
    assert main(["synth", *synth, "--out", str(data)]) == 0
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"config": dataclasses.asdict(TINY)}))
    one_device = dict(_ENV, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    ref, run = tmp_path / "ref", tmp_path / "run"
    _train_seg(data, cfg, ref, env=one_device)
    _train_seg(data, cfg, run, "--expert-parallel", "2", "--max-steps", "3", env=_ENV)
    assert _final_state(run)[0] == 3
    stdout = _train_seg(data, cfg, run, "--expert-parallel", "4", env=_ENV)
    assert "(resumed from 3)" in stdout, stdout
    (step, want), (got_step, got) = _final_state(ref), _final_state(run)
    assert got_step == step > 3
    flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
    flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    diffs = {}
    for (path, a), (_, b) in zip(flat_got, flat_want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)
        assert np.all(np.isfinite(a))
        diffs[jax.tree_util.keystr(path)] = float(np.max(np.abs(a - b), initial=0.0))
    worst = max(diffs, key=diffs.get)
    print(f"resumed on 1x4 after 2x2 vs 1 device: max |diff| {diffs[worst]:.3g} at {worst}")
    assert diffs[worst] < 1e-4, (worst, diffs[worst])
    assert any("decoders" in k for k in diffs)


@pytest.mark.parametrize(
    "form, expert, match",
    [("mose", 2, "form 'mose' has none"), ("mixture", 2, "does not divide the 1 devices")],
)
def test_train_segmenter_refuses_expert_parallel_it_cannot_run(form, expert, match, tmp_path):
    from osteo_jax.data.inmemory import SegArrays
    from osteo_jax.train.seg_loop import train_segmenter

    n = 8
    arrays = SegArrays(
        images=np.zeros((n, 32, 32, 1), np.float32),
        masks=np.zeros((n, 1, 32, 32), np.uint8),
        image_ids=np.array([f"I{i}" for i in range(n)]),
        subject_ids=np.array([f"S{i}" for i in range(n)]),
        annotators=("exact",),
    )
    cfg = dataclasses.replace(
        TINY, model=dataclasses.replace(TINY.model, form=form), expert_parallel=expert
    )
    with pytest.raises(ValueError, match=match):
        train_segmenter(arrays, tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed
