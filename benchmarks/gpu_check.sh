#!/usr/bin/env bash
# All GPU checks in one run (well under 10 minutes): the GPUs as lora-advisor sees them, and the
# verification matrix (predicted vs measured). Usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]
#
# The device machines have torch, transformers, peft, accelerate, pyyaml and nvidia-ml-py; carry the
# rest as wheels in .whl/ (see the device tool's README): pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions, platformdirs, bitsandbytes, rule-engine (and its ply), and for the
# exported train.py that `verify` runs: trl, datasets with its needs (pyarrow, dill, xxhash, multiprocess,
# fsspec, pandas where absent).
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run]}"
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi || true
  python3 -c 'import torch, transformers, peft; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)'
} > "$out/environment.txt" 2>&1
python3 -m advisor gpus --json > "$out/gpus.json" 2> "$out/gpus.stderr"
python3 benchmarks/gpu_matrix.py --out "$out" --budget-s 420 "$@" 2>&1 | tee "$out/matrix.log"
