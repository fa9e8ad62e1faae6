#!/usr/bin/env bash
# On a machine with a CUDA GPU: the correctness tests on CUDA, then the back-end benchmark at
# B ∈ {1, 64, 1024, 16384} in float32 and float64, results written to bench/results/.
#
#     bash bench/gpu.sh [extra bench_backend.py arguments, e.g. --quick]
#
# tests/test_device.py runs the structured executor (generated code, table passes, domain
# guard) on TCOMPILE_TEST_DEVICE and compares it with the float64 module on the CPU;
# test_executor.py's float32/float64 checks run on the CPU beside it. Nothing here asserts a
# time: the numbers go in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to measure')"
mkdir -p bench/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee bench/results/gpu_device.txt
TCOMPILE_TEST_DEVICE=cuda python -m pytest -q -p no:cacheprovider tests/test_device.py \
    2>&1 | tee bench/results/gpu_tests.txt
python bench/bench_backend.py --device cuda --batch 1 64 1024 16384 --rounds 3 \
    --out bench/results/backend_cuda.json "$@" 2>&1 | tee bench/results/backend_cuda.txt
