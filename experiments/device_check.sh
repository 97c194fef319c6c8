#!/usr/bin/env bash
# The device check: run it on a machine with an NVIDIA GPU (under 6 minutes in all).
#
#   experiments/device_check.sh          # installs .[cuda12,test] into .venv, then checks
#   experiments/device_check.sh --cpu    # dry run on the CPU: no install, a tiny benchmark
#
# 1. installs the [cuda12] extra (the jax CUDA plugin matching the pinned jax) into .venv
#    (created if missing) and checks that jax now runs on the GPU;
# 2. runs the accelerator tests (tests/test_accelerator.py: vmap == scan on the device, a bf16
#    step finite and close to float32, 1 device vs all devices);
# 3. runs experiments/bench_seg.py at 256 x 256, K 4, S 4, batch 32 in bf16 with the GPU
#    widths (32, 64, 128, 256), printing images/s, the device kind, the achieved TFLOP/s (XLA's
#    cost analysis of the step / step time) and the MFU against the device's bf16 peak.
# PYTHON overrides the interpreter (default .venv/bin/python); results go to runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

cpu=0
case "${1:-}" in
  --cpu) cpu=1 ;;
  "") ;;
  *) echo "usage: $0 [--cpu]" >&2; exit 2 ;;
esac
start=$SECONDS
py="${PYTHON:-.venv/bin/python}"

if [[ $cpu == 0 ]]; then
  if [[ ! -x "$py" ]]; then
    python3 -m venv .venv
    py=.venv/bin/python
  fi
  echo "== installing .[cuda12,test] into $("$py" -c 'import sys; print(sys.prefix)')"
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet -e ".[cuda12,test]"
  "$py" -c 'import jax, sys; b = jax.default_backend(); print("jax", jax.__version__, b, jax.devices())
sys.exit(0 if b == "gpu" else "jax does not see the GPU after installing the [cuda12] extra")'
fi

echo "== accelerator tests ($((SECONDS - start)) s)"
"$py" -m pytest -q -m accelerator tests/test_accelerator.py

echo "== bench_seg ($((SECONDS - start)) s)"
if [[ $cpu == 0 ]]; then
  "$py" experiments/bench_seg.py --size 256 --experts 4 --samples 4 --batch 32 --dtype bfloat16 \
    --features 32,64,128,256 --mode auto --steps 20 --out runs/device_check/bench_seg.json
else
  "$py" experiments/bench_seg.py --size 32 --experts 2 --samples 2 --batch 4 --dtype bfloat16 \
    --features 8,16 --mode auto --steps 2 --out runs/device_check/bench_seg_cpu.json
fi
echo "== device check done in $((SECONDS - start)) s"
