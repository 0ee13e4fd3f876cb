#!/bin/bash
# Real-GPU checks for tensor-fusion; every step logs to $OUT/log.
cd "$(dirname "$0")"
P=../hal/kernels/tf_kernels.ptx
step() { echo; echo "=== $*"; timeout 120 "$@" 2>&1 | tail -40; echo "rc=${PIPESTATUS[0]}"; }
export TF_BACKEND=cuda
{
step nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv
step ldd ./tensor-fusion
step ./tensor-fusion devices --backend cuda
step ./vector_add $P
step env TF_CONFORMANCE_REAL=1 ./conformance
step ./tensor-fusion run --vram 1GiB -- ./probe_link vram 64
step ./tensor-fusion run --vram 1GiB -- ./probe_procaddr vram 64
step ./tensor-fusion run --vram 1GiB -- ./cudarc_probe vram 64
step ./tensor-fusion run -- ./probe_link busy $P 4 2 1000
step ./tensor-fusion run --compute-percent 30 -- ./probe_link busy $P 5 2 1000
step ./tensor-fusion run --compute-percent 50 -- ./probe_procaddr busy $P 5 2 1000
step ./tensor-fusion run --vram 4GiB -- python3 mem.py
step ./tensor-fusion run -- python3 matmul.py 8 3
step ./tensor-fusion run --compute-percent 30 -- python3 matmul.py 10 4
step ./tensor-fusion bench limiter --backend cuda
} > $OUT/log 2>&1
cat $OUT/log
