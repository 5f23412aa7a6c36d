#!/usr/bin/env bash
# Build axolotl's and LLaMA-Factory's pinned environments and run the heavy loader tests against them.
# Usage (from the repo root, with the test env active): tests/heavy_envs.sh [ENV_DIR]   (~3 GB, a few minutes)
set -euo pipefail
envs="${1:-${TMPDIR:-/tmp}/lora-advisor-heavy-envs}"
mkdir -p "$envs"
build() {  # name, then the packages
  local name="$1"; shift
  if [ ! -x "$envs/$name/bin/python" ]; then
    python3 -m venv "$envs/$name"
    "$envs/$name/bin/python" -m pip install -q --upgrade pip
    "$envs/$name/bin/python" -m pip install -q torch==2.13.0
    "$envs/$name/bin/python" -m pip install -q "$@"
  fi
}
# axolotl 0.19.0 pins (see shared/reference/export-formats.md, section 4); --no-deps keeps pip from
# resolving its GPU-only extras
build axolotl transformers==5.16.1 trl==1.9.0 peft==0.20.0 accelerate==1.13.0 datasets pydantic==2.12.5 \
  PyYAML addict fire bitsandbytes pillow
"$envs/axolotl/bin/python" -m pip install -q --no-deps axolotl==0.19.0
build llamafactory transformers==5.6.0 peft==0.18.1 trl==0.24.0 accelerate==1.11.0 datasets==4.0.0 omegaconf matplotlib pyyaml
"$envs/llamafactory/bin/python" -m pip install -q --no-deps llamafactory==0.9.5
AXOLOTL_PYTHON="$envs/axolotl/bin/python" LLAMAFACTORY_PYTHON="$envs/llamafactory/bin/python" \
  python -m pytest -q -m heavy tests/test_framework_loaders.py
