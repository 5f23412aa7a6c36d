#!/usr/bin/env bash
# All GPU checks in one run (under 10 minutes): the GPUs as lora-advisor sees them, the CUDA context stage by
# stage (gpu_context.py), and the verification matrix, predicted vs measured (gpu_matrix.py).
# Usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]      (GPU_CHECK_BUDGET_S: start no case after it, 360;
#        GPU_CHECK_TRACE=1: record allocations, benchmarks/memory_trace.py)
#
# The device machines have torch, transformers, peft, accelerate, pyyaml and nvidia-ml-py but no network;
# carry the rest as wheels in .whl/ (see the device tool's README): pydantic, pydantic-core, annotated-types,
# typing-inspection, platformdirs, rule-engine, ply, bitsandbytes, and for the exported train.py: trl,
# datasets, dill, multiprocess (peft and accelerate too, to run the versions the model follows).  Carry
# .gpumodels/<Model>/config.json (copies of shared/data/model-configs) for the offline hub cache.
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}"
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  rm -rf /tmp/site  # a warm machine keeps the last call's installs
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1 HF_HOME="${HF_HOME:-/tmp/lora-advisor-hf}"
{
  nvidia-smi || true
  python3 -c 'import importlib.metadata as m
for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "pyarrow", "fsspec",
             "huggingface_hub", "pydantic", "nvidia-ml-py"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "not installed")'
} > "$out/environment.txt" 2>&1
python3 -m advisor gpus --json > "$out/gpus.json" 2> "$out/gpus.stderr"
dry=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry=1; done
if [[ $dry == 0 && "${GPU_CHECK_CONTEXT:-1}" == 1 ]]; then  # GPU_CHECK_CONTEXT=0: skip the context probe
  python3 benchmarks/gpu_context.py --out "$out/context.jsonl" > /dev/null 2> "$out/context.txt"
  cat "$out/context.txt"
fi
configs=()
[[ -d .gpumodels ]] && configs=(--hf-configs .gpumodels)
trace=()
[[ "${GPU_CHECK_TRACE:-0}" == 1 ]] && trace=(--trace)  # GPU_CHECK_TRACE=1: each case's live set at its peak
python3 benchmarks/gpu_matrix.py --out "$out" --budget-s "${GPU_CHECK_BUDGET_S:-360}" "${configs[@]}" "${trace[@]}" "$@" 2>&1 \
  | tee "$out/matrix.log"
