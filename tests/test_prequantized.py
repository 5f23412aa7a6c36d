"""Pre-quantized 4-bit bases (GPTQ, AWQ): the checkpoint's own storage, the export refusal, the range.

The storage oracle is independent of the memory model: the real decoder-layer nn.Linear modules of the model
transformers builds (meta device), each given the buffers AutoGPTQ's QuantLinear / AutoAWQ's WQLinear_GEMM
register for 4 bits and group size 128, written out here from those libraries' constructors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.memory import TrainConfig, estimate
from advisor.memory.states import param_bytes, rounded
from advisor.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]


def _gptq_buffers(i: int, o: int) -> list[int]:
    """AutoGPTQ qlinear_cuda_old.QuantLinear(bits=4, group_size=128): qweight, qzeros, scales, g_idx (bytes)."""
    groups = math.ceil(i / 128)
    return [(i // 32 * 4) * o * 4, groups * (o // 32 * 4) * 4, groups * o * 2, i * 4]


def _awq_buffers(i: int, o: int) -> list[int]:
    """AutoAWQ WQLinear_GEMM(w_bit=4, group_size=128): qweight (i, o/8), qzeros (i/128, o/8) int32, scales fp16."""
    return [i * (o // 8) * 4, (i // 128) * (o // 8) * 4, (i // 128) * o * 2]


@pytest.mark.parametrize("kind,buffers", [("gptq", _gptq_buffers), ("awq", _awq_buffers)])
def test_quantized_storage_is_the_checkpoint_layout(kind, buffers):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from advisor.models.hf_config import to_hf_config

    arch = resolve_model("llama-3.2-1b")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**to_hf_config(arch)))
    expected = sum(rounded(b) for layer in model.model.layers for m in layer.modules()
                   if type(m) is torch.nn.Linear for b in buffers(m.in_features, m.out_features))
    pb = param_bytes(arch, TrainConfig(method="qlora", quant_type=kind))
    assert pb.quantized == expected


def test_gptq_changes_the_estimate_by_the_storage_difference_only():
    arch = resolve_model("llama-3.1-8b")
    nf4, gptq = (estimate(arch, TrainConfig(method="qlora", quant_type=q, double_quant=False, grad_ckpt=True))
                 for q in ("nf4", "gptq"))
    storage = (param_bytes(arch, TrainConfig(method="qlora", quant_type="gptq")).quantized
               - param_bytes(arch, TrainConfig(method="qlora", quant_type="nf4", double_quant=False)).quantized)
    # an fp16 scale and packed zeros per 128-group cost less than bitsandbytes' fp32 absmax per 64-block
    assert storage < 0
    assert gptq.phases.optimizer - nf4.phases.optimizer == storage
    # the kernels are not traced by the oracle: the range says so and is wider above
    assert "GPTQ kernels" in gptq.range_basis
    assert gptq.peak_device_range_bytes[1] - gptq.peak_device_bytes > nf4.peak_device_range_bytes[1] - nf4.peak_device_bytes


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "advisor", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_prequantized_base_is_not_exported(tmp_path):
    out = tmp_path / "job"
    proc = _cli("export", "--model", "llama-3.1-8b", "--method", "qlora", "--quant", "gptq", "--gpu", "4090",
                "--grad-ckpt", "--format", "peft-trl", "-o", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "pre-quantized" in proc.stderr
    assert not out.exists()


def test_gptq_goes_with_qlora_only():
    proc = _cli("estimate", "--model", "llama-3.1-8b", "--method", "lora", "--quant", "awq", "--json")
    assert proc.returncode == 2 and "qlora" in proc.stderr
    ok = _cli("estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--quant", "awq", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["config"]["quant_type"] == "awq"


def test_a_prequantized_base_is_not_verified():
    proc = _cli("verify", "--model", "llama-3.2-1b", "--method", "qlora", "--quant", "gptq", "--dry-run")
    assert proc.returncode == 2 and "bitsandbytes" in proc.stderr and "Traceback" not in proc.stderr
