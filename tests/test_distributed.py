"""train/distributed.py and the loader's process shards, in one process (fast).

The 2-process runs themselves are tests/test_multiprocess.py (e2e).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from osteo_jax.cli import build_parser
from osteo_jax.cli.cluster import init_cluster
from osteo_jax.data.pipeline import make_loader
from osteo_jax.data.sources import ArraySource
from osteo_jax.train import distributed
from osteo_jax.train.runner import data_mesh


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, "slurm"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None),  # salloc shell, not a task
        ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1"}, "ompi"),
        ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2"}, "jax"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1234"}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "x"}, None),
    ],
)
def test_cluster_env(env, want):
    assert distributed.cluster_env(env) == want


def test_initialize_single_process_is_a_no_op():
    assert distributed.initialize(environ={}) is False
    assert distributed.initialize("localhost:1", 1, 0, environ={}) is False
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1
    assert distributed.is_main()
    assert distributed.data_shard() == (0, 1)
    assert distributed.on_main(lambda x, y=0: x + y, 2, y=3) == 5
    metrics = {"f1": 1 / 3}
    assert distributed.from_main(metrics) is metrics
    distributed.barrier("no-op")


@pytest.mark.parametrize(
    "flags", [("localhost:1", None, None), (None, 2, 0), ("localhost:1", 2, None)]
)
def test_initialize_needs_all_three_flags(flags):
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize(*flags, environ={})


@pytest.mark.parametrize("num, pid", [(2, 2), (2, -1), (0, 0)])
def test_initialize_rejects_a_process_id_out_of_range(num, pid):
    with pytest.raises(ValueError, match="outside"):
        distributed.initialize("localhost:1", num, pid, environ={})


def test_host_and_placement_helpers_in_one_process():
    mesh = data_mesh(jax.devices()[:1])
    tree = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "n": np.int32(4)}
    host = distributed.to_host(tree)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
    np.testing.assert_array_equal(host["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert host["n"].dtype == np.int32 and host["n"] == 4
    assert distributed.to_local(tree) is tree
    rep = NamedSharding(mesh, P())
    placed = distributed.place(tree, rep)
    assert placed["w"].sharding == rep and placed["w"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(placed["w"]), host["w"])
    per_leaf = distributed.place(tree, {"w": rep, "n": rep})  # a tree of shardings
    assert per_leaf["n"].sharding == rep
    batch = distributed.global_batch(
        {"x": np.ones((4, 2), np.float32)}, NamedSharding(mesh, P("data"))
    )
    assert batch["x"].shape == (4, 2) and batch["x"].sharding.spec == P("data")


def _source(n=23):
    return ArraySource(image=np.arange(n * 2, dtype=np.float32).reshape(n, 2), label=np.arange(n))


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("start", [0, 3])
def test_process_shards_concatenate_to_the_global_batches(count, start):
    kw = dict(batch_size=4, seed=5, num_epochs=2, augment=True, start_batch=start)
    src = ArraySource(
        image=np.random.default_rng(0).random((23, 4, 4, 1), np.float32),
        masks=np.zeros((23, 1, 4, 4), np.uint8),
        label=np.arange(23),
    )
    full = list(make_loader(src, **kw))
    shards = [list(make_loader(src, **kw, shard=(i, count))) for i in range(count)]
    assert len(full) == (2 * 23) // 4 - start
    assert all(len(s) == len(full) for s in shards)
    for b, want in enumerate(full):
        for key in ("image", "label"):  # the flip of each record follows it to its shard
            got = np.concatenate([s[b][key] for s in shards])
            assert got.shape == want[key].shape and got.dtype == want[key].dtype
            np.testing.assert_array_equal(got, want[key])
        # rows [i B / n, (i + 1) B / n) of global batch b
        np.testing.assert_array_equal(shards[-1][b]["label"], want["label"][4 - 4 // count :])


@pytest.mark.parametrize("shard", [(0, 3), (2, 2), (-1, 2)])
def test_bad_shards_raise(shard):
    with pytest.raises(ValueError, match="shard"):
        make_loader(_source(), batch_size=4, seed=0, shard=shard)


@pytest.mark.parametrize("command", ["train-seg", "pretrain", "train-cls"])
def test_cluster_flags_parse_and_default_to_one_process(command):
    base = {
        "train-seg": ["--data", "d", "--out", "o"],
        "pretrain": ["--segments", "s", "--out", "o"],
        "train-cls": ["--segments", "s", "--out", "o"],
    }[command]
    flags = ["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "1"]
    args = build_parser().parse_args([command, *base, *flags])
    assert (args.coordinator, args.num_processes, args.process_id) == ("h:1234", 2, 1)
    plain = build_parser().parse_args([command, *base])
    assert (plain.coordinator, plain.num_processes, plain.process_id) == (None, None, None)
    assert init_cluster(plain) is False  # no flags, no cluster environment here
