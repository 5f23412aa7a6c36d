"""axolotl's and LLaMA-Factory's own loaders on our exports, in their pinned environments.

They pin transformers/trl/peft versions that conflict with each other and with the main test env, so
these tests run each framework's loader in its own interpreter: `tests/heavy_envs.sh` builds the envs and
runs `pytest -m heavy` with AXOLOTL_PYTHON / LLAMAFACTORY_PYTHON set.  Outside that they skip.
"""

import json
import os
import subprocess

import pytest

from advisor.cli import main

pytestmark = pytest.mark.heavy

SCENARIOS = {
    "qlora-8b-24gb": ["--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpu", "4090",
                      "--optimizer", "paged_adamw_8bit", "--micro-batch", "2", "--effective-batch", "16"],
    "lora-70b-4x80gb-zero3": ["--model", "llama-3.1-70b", "--method", "lora", "--grad-ckpt", "--gpu", "4xA100-80GB",
                              "--zero", "3", "--effective-batch", "32"],
}

AXOLOTL_CHECK = """
import sys, json, yaml
from axolotl.utils.dict import DictDefault
from axolotl.utils.config import validate_config
raw = yaml.safe_load(open(sys.argv[1]))
caps = {"bf16": True, "fp8": False, "n_gpu": int(sys.argv[2]), "compute_capability": "sm_89", "n_node": 1}
out = validate_config(DictDefault(raw), capabilities=caps, env_capabilities={"torch_version": "2.13.0"})
print(json.dumps({"dropped": sorted(set(raw) - set(out)), "adapter": out.get("adapter"), "lora_r": out.get("lora_r")}))
"""

LLAMAFACTORY_CHECK = """
import sys, json, yaml
import transformers.training_args as ta
ta.is_torch_bf16_gpu_available = lambda: True  # the config is for a GPU; this host has none
from llamafactory.hparams.parser import get_train_args
raw = yaml.safe_load(open(sys.argv[1]))
raw.pop("deepspeed", None)  # needs a distributed launch (FORCE_TORCHRUN); the DS file is checked elsewhere
model, data, training, finetuning, generating = get_train_args(raw)
print(json.dumps({"finetuning_type": finetuning.finetuning_type, "lora_rank": finetuning.lora_rank,
                  "cutoff_len": data.cutoff_len, "quantization_bit": model.quantization_bit}))
"""


def _run(python_env: str, code: str, *args: str) -> dict:
    python = os.environ.get(python_env)
    if not python:
        pytest.skip(f"{python_env} is not set (tests/heavy_envs.sh builds the env)")
    proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", SCENARIOS)
def test_axolotl_validates_and_drops_nothing(name, tmp_path):
    flags = SCENARIOS[name]
    assert main(["export", *flags, "--format", "axolotl", "-o", str(tmp_path)]) == 0
    gpus = "4" if "4xA100-80GB" in flags else "1"
    result = _run("AXOLOTL_PYTHON", AXOLOTL_CHECK, str(tmp_path / "axolotl.yaml"), gpus)
    assert result["dropped"] == []  # axolotl drops unknown keys silently: none of ours may vanish
    assert result["lora_r"] == 16


@pytest.mark.parametrize("name", SCENARIOS)
def test_llamafactory_parses_strictly(name, tmp_path):
    flags = SCENARIOS[name]
    assert main(["export", *flags, "--format", "llamafactory", "-o", str(tmp_path)]) == 0
    result = _run("LLAMAFACTORY_PYTHON", LLAMAFACTORY_CHECK, str(tmp_path / "llamafactory.yaml"))
    assert result["finetuning_type"] == "lora" and result["lora_rank"] == 16 and result["cutoff_len"] == 2048
    assert result["quantization_bit"] == (4 if "qlora" in flags else None)
