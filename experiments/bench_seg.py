"""Benchmark of ``seg_step``: images/s, OT share, compile time, memory, achieved FLOP rate.

Command (CPU, 2 cores, ~2 minutes; run with nothing else busy)::

    .venv/bin/python experiments/bench_seg.py --out runs/bench_seg.json
    .venv/bin/python experiments/bench_seg.py --mode vmap      # the accelerator execution

On a GPU / TPU (``experiments/device_check.sh`` runs this, ~1 minute)::

    .venv/bin/python experiments/bench_seg.py --size 256 --batch 32 --dtype bfloat16 \
        --features 32,64,128,256 --steps 20 --out runs/bench_seg_gpu.json

Default model: K = 4 decoders, S = 4 samples, 128 x 128 input, batch 16, CPU widths
(16, 32, 64, 128). Reports:
  * images per second of the jitted ``seg_step`` after warm-up (median of timed steps);
  * the share of step time in the OT loss: a jitted forward + backward of only the Sinkhorn
    plan + KL on the same [B, N, M] costs, and separately of the soft-IoU cost matrix
    (target: OT <= 5 %);
  * jit compile time; peak memory (XLA's buffer assignment of the step and the process's max
    RSS);
  * achieved FLOP rate = XLA cost analysis of the step / step time, as a share of this
    machine's fp32 matmul rate measured in the same run (numpy 2048^3 SGEMM, best of 5).
    Target >= 12 % on CPU. On a GPU or TPU also the achieved TFLOP/s and the MFU: that rate
    as a share of the device's dense bf16 peak (:data:`BF16_PEAK_TFLOPS`, by device kind;
    "n/a" for a kind not in the table).
"""

from __future__ import annotations

import argparse
import functools
import platform
import resource
import runpy
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from osteo_jax.config import SegConfig, SegTrainConfig
from osteo_jax.losses.costs import soft_iou_cost
from osteo_jax.losses.ot import relaxed_ot_loss
from osteo_jax.models.mixture import resolve_mode
from osteo_jax.train.state import create_seg_state, make_segmenter, seg_optimizer
from osteo_jax.train.steps import seg_step

# Dense (no sparsity) bf16 peak TFLOP/s of one device (one chip; TPU v4 / v5p: one chip of
# 2 TensorCores) by a lower-case substring of jax's device_kind, first match wins (the
# vendors' data sheets; SXM parts for H100 / H200 / A100). T4 and V100 have no bf16 tensor
# cores: their fp16 tensor peak is the ceiling XLA's bf16 can approach.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),
    ("h200", 989.0),
    ("a100", 312.0),
    ("l4", 121.0),
    ("t4", 65.0),
    ("v100", 125.0),
    ("v5 lite", 197.0),  # TPU v5e
    ("v5e", 197.0),
    ("v5p", 459.0),
    ("v5", 459.0),
    ("v6 lite", 918.0),  # TPU v6e (Trillium)
    ("v6e", 918.0),
    ("v4", 275.0),
)


def bf16_peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of a device kind (:data:`BF16_PEAK_TFLOPS`), None if unknown."""
    kind = device_kind.lower()
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in kind), None)


# Prints and writes the result (experiments/_bench.py; experiments is not a package).
_report = runpy.run_path(str(Path(__file__).with_name("_bench.py")))["report"]


def _time(fn, n: int) -> float:
    """Median wall time of n calls of fn (which blocks on its result)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul rate of this machine (numpy / BLAS), GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_time(lambda: a @ b, 1) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_seg.json")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--mode", default="auto", choices=("auto", "vmap", "scan"))
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16"))
    parser.add_argument(
        "--features", default=None, help="U-Net widths, e.g. 32,64,128,256 (default: SegConfig's)"
    )
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    widths = {}
    if args.features is not None:
        widths["features"] = tuple(int(f) for f in args.features.split(","))
    seg = SegConfig(
        **widths,
        image_size=args.size,
        num_experts=args.experts,
        num_samples=args.samples,
        mode=args.mode,
        dtype=args.dtype,
    )
    cfg = SegTrainConfig(model=seg, batch_size=args.batch)
    model = make_segmenter(seg)
    tx = seg_optimizer(cfg, 1000)
    state = create_seg_state(cfg, jax.random.key(0), tx)
    rng = np.random.default_rng(0)
    b, m, s = args.batch, 3, args.size
    batch = {
        "image": jnp.asarray(rng.random((b, s, s, 1)), jnp.float32),
        "masks": jnp.asarray(rng.integers(0, seg.num_classes, (b, m, s, s)), jnp.int32),
    }
    key = jax.random.key(1)

    step = jax.jit(functools.partial(seg_step, model=model, tx=tx, ot=cfg.ot), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan")))
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = int(
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        )

    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    holder = {"state": state}

    def run_step():
        holder["state"], met = compiled(holder["state"], batch, key)
        jax.block_until_ready(met)

    step_s = _time(run_step, args.steps)

    # The OT part alone (forward + backward) on the same shapes.
    n = model.num_hypotheses
    costs = jnp.asarray(rng.random((b, n, m)), jnp.float32)
    alpha = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, n)), jnp.float32))
    ot = cfg.ot

    def ot_only(c, a):
        loss, _ = jax.vmap(
            lambda ci, ai: relaxed_ot_loss(
                cost=ci,
                alpha=ai,
                gamma=jnp.float32(0.5),
                kl_weight=ot.kl_weight,
                epsilon=ot.epsilon,
                num_iters=ot.num_iters,
                epsilon_start=ot.epsilon_start,
            )
        )(c, a)
        return jnp.mean(loss)

    ot_grad = jax.jit(jax.grad(ot_only, argnums=(0, 1)))
    jax.block_until_ready(ot_grad(costs, alpha))
    ot_s = _time(lambda: jax.block_until_ready(ot_grad(costs, alpha)), 20)

    probs = jax.nn.softmax(
        jnp.asarray(rng.standard_normal((b, n, s, s, seg.num_classes)), jnp.float32)
    )

    def iou_only(p):
        return jnp.mean(
            jax.vmap(lambda pi, yi: soft_iou_cost(probs=pi, labels=yi))(p, batch["masks"])
        )

    iou_grad = jax.jit(jax.grad(iou_only))
    jax.block_until_ready(iou_grad(probs))
    iou_s = _time(lambda: jax.block_until_ready(iou_grad(probs)), 5)

    peak = matmul_peak_gflops()
    achieved = flops / step_s / 1e9
    kind = str(jax.devices()[0].device_kind)
    bf16_peak = bf16_peak_tflops(kind) if jax.default_backend() != "cpu" else None
    result = dict(
        device=kind,
        backend=jax.default_backend(),
        processor=platform.processor() or platform.machine(),
        decoder_mode=resolve_mode(args.mode),
        dtype=jnp.dtype(model.dtype).name,  # "auto" resolved
        experts=args.experts,
        samples=args.samples,
        image_size=s,
        batch=b,
        features=list(seg.features),
        compile_s=round(compile_s, 2),
        step_s=round(step_s, 4),
        images_per_s=round(b / step_s, 2),
        ot_fwd_bwd_s=round(ot_s, 5),
        ot_share_of_step=round(ot_s / step_s, 5),
        ot_target_share=0.05,
        soft_iou_cost_fwd_bwd_s=round(iou_s, 4),
        soft_iou_share_of_step=round(iou_s / step_s, 4),
        step_gflop=round(flops / 1e9, 2),
        achieved_gflops=round(achieved, 1),
        achieved_tflops=round(achieved / 1e3, 3),
        device_bf16_peak_tflops=bf16_peak if bf16_peak is not None else "n/a",
        mfu=round(achieved / 1e3 / bf16_peak, 4) if bf16_peak is not None else "n/a",
        machine_fp32_matmul_gflops=round(peak, 1),
        flop_share_of_peak=round(achieved / peak, 4),
        flop_share_target=0.12,
        xla_step_buffers_mib=None if xla_bytes is None else round(xla_bytes / 2**20, 1),
        process_max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    _report(result, args.out, key_width=28)


if __name__ == "__main__":
    main()
