#!/usr/bin/env bash
# Stage-1 with cached features on one GPU, against the GPU's measured bf16 matmul rate (≤ 8 minutes on an H100/H200).
#
#   bash benchmarks/gpu_stage1.sh                 # one GPU: img/s, MFU, peak memory, cache-teacher img/s
#   DRY_RUN=1 bash benchmarks/gpu_stage1.sh       # CPU dry run: tiny models and data, a few steps (tests use this)
#
# Extra arguments go to benchmarks/_gpu_stage1.py (e.g. --batch-size 1024 --workers 14). Results land in
# benchmarks/results/gpu_stage1.{json,md}. Target: >= 5,000 img/s for the mnv4s-text6 student step.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
[[ -x "$here/../.venv/bin/python" && -z "${PYTHON:-}" ]] && python="$here/../.venv/bin/python"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [[ "${DRY_RUN:-0}" == "1" ]]; then
    exec timeout 120 "$python" "$here/_gpu_stage1.py" --device cpu --tiny "$@"
fi

"$python" - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_stage1.sh needs a CUDA GPU (DRY_RUN=1 for the CPU dry run)"
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
PY
cores="$(nproc)"
workers=$(( cores > 2 ? cores - 2 : 1 ))
exec timeout 480 "$python" "$here/_gpu_stage1.py" --device cuda --workers "$workers" "$@"
