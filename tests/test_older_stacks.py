"""Settings of older or hand-written stacks: k-bit preparation (TrainConfig.kbit_upcast: what PEFT's
prepare_model_for_kbit_training and TRL 0.7.5-0.25 leave in fp32, against PEFT's own function) and the loss of
transformers before 4.49 (--loss shifted), and how the CLI takes them.  The step's activations are checked against
the oracle in tests/test_oracle.py (its kbit_upcast and shifted cases)."""

import json

import pytest
import torch

from advisor.memory import TrainConfig, estimate
from advisor.memory.states import param_bytes, rounded
from advisor.models import resolve_model
from advisor.verify import build
from tests.test_cli import run as _run  # the CLI as a user runs it: a subprocess


def _quantized_on_meta(name: str, cfg: TrainConfig):
    from transformers import AutoModelForCausalLM

    arch = resolve_model(name).model_copy(update={"num_layers": 2})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build._hf_config(arch, cfg, "sdpa"), dtype=torch.bfloat16)
    build._quantize_linears_on_meta(model, cfg)
    return arch, model


def _float_dtypes(model) -> dict[str, torch.dtype]:
    return {n: p.dtype for n, p in model.named_parameters() if p.__class__.__name__ != "Params4bit"}


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen2.5-0.5b", "qwen3-0.6b", "tinyllama-1.1b"])
def test_all_is_what_peft_prepare_model_for_kbit_training_leaves(name):
    """The oracle's cast (build._upcast_as_kbit_prep) against PEFT's real function on the same meta model, and the
    estimate's frozen bytes against the tensors PEFT leaves (biases aside: bitsandbytes casts them back)."""
    from peft import prepare_model_for_kbit_training

    cfg = TrainConfig(method="qlora", kbit_upcast="all")
    arch, theirs = _quantized_on_meta(name, cfg)
    prepare_model_for_kbit_training(theirs, use_gradient_checkpointing=False)
    _, ours = _quantized_on_meta(name, cfg)
    build._upcast_as_kbit_prep(ours, cfg)
    assert _float_dtypes(ours) == _float_dtypes(theirs)
    assert torch.float32 in _float_dtypes(theirs).values()

    unique = {id(p): p for n, p in theirs.named_parameters()
              if p.__class__.__name__ != "Params4bit" and not n.endswith(".bias")}
    expected = sum(rounded(p.numel() * p.element_size()) for p in unique.values())
    biases = sum(rounded(p.numel() * 2) for n, p in theirs.named_parameters() if n.endswith(".bias"))
    assert param_bytes(arch, cfg).frozen_16bit == expected + biases


def test_norms_is_trls_fp32_norms():
    """TRL 0.9.3-0.24's peft_module_casting_to_bf16 after PEFT's cast: norms fp32, embeddings and lm_head bf16."""
    cfg = TrainConfig(method="qlora", kbit_upcast="norms")
    arch, model = _quantized_on_meta("qwen3-0.6b", cfg)
    build._upcast_as_kbit_prep(model, cfg)
    dtypes = _float_dtypes(model)
    assert all(dt == torch.float32 for n, dt in dtypes.items() if "norm" in n)
    assert all(dt == torch.bfloat16 for n, dt in dtypes.items() if "norm" not in n)
    plain = param_bytes(arch, TrainConfig(method="qlora")).frozen_16bit
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert param_bytes(arch, cfg).frozen_16bit == pytest.approx(plain + 2 * norms, abs=512 * 20)


def test_upcast_raises_the_estimate_by_more_than_the_weights():
    """The fp32 stream costs activations as well as weights: more than the upcast weights alone add."""
    arch = resolve_model("llama-3.1-8b")
    base = TrainConfig(method="qlora", seq_len=2048, grad_ckpt=True)
    peaks = {u: estimate(arch, base.model_copy(update={"kbit_upcast": u})).peak_allocated_bytes
             for u in ("none", "norms", "all")}
    weights = param_bytes(arch, base.model_copy(update={"kbit_upcast": "all"})).frozen_16bit \
        - param_bytes(arch, base).frozen_16bit
    assert peaks["none"] < peaks["norms"] < peaks["all"]
    assert peaks["all"] - peaks["none"] > weights


@pytest.mark.parametrize("args", [
    ("--method", "lora"),
    ("--method", "qlora", "--quant", "gptq"),
    ("--method", "qlora", "--fsdp", "--gpus", "2"),
    ("--method", "qlora", "--train-embeddings"),
    ("--method", "qlora", "--stack", "axolotl"),
    ("--method", "qlora", "--stack", "trl"),
    ("--method", "qlora", "--attn", "eager"),
])
def test_unmodelled_combinations_are_refused_in_one_line(args):
    proc = _run("estimate", "--model", "llama-3.1-8b", "--kbit-upcast", "all", *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "kbit-upcast" in proc.stderr and "Traceback" not in proc.stderr


def test_sdpa_under_a_sliding_window_is_refused_and_flash_is_not():
    base = ("estimate", "--model", "mistral-7b-v0.1", "--method", "qlora", "--seq-len", "4096", "--kbit-upcast", "all")
    proc = _run(*base)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "sliding window" in proc.stderr
    assert _run(*base, "--attn", "flash").returncode == 0


@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "gemma-2-2b", "gemma-3-4b-it"])
def test_unmodelled_families_are_refused(model):
    proc = _run("estimate", "--model", model, "--method", "qlora", "--kbit-upcast", "norms")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "dense text decoders" in proc.stderr


def test_estimate_json_carries_the_upcast_and_export_refuses_it(tmp_path):
    proc = _run("estimate", "--json", "--model", "llama-3.1-8b", "--method", "qlora", "--kbit-upcast", "norms")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["kbit_upcast"] == "norms"
    out = tmp_path / "job"
    proc = _run("export", "--model", "llama-3.1-8b", "--method", "qlora", "--kbit-upcast", "all",
                "--format", "peft-trl", "--output", str(out))
    assert proc.returncode == 2 and "prepare_model_for_kbit_training" in proc.stderr
    assert not out.exists()


def test_deepspeed_casts_the_upcast_back():
    """DeepSpeed's engine casts every floating parameter to 16 bit (engine.py _cast_module_mixed_precision): the
    upcast is gone, the estimate is the plain one."""
    arch = resolve_model("llama-3.2-1b")
    plain = TrainConfig(method="qlora", zero=2)
    upcast = TrainConfig(method="qlora", zero=2, kbit_upcast="all")
    assert upcast.kbit_upcast == "none"
    assert estimate(arch, upcast).peak_device_bytes == estimate(arch, plain).peak_device_bytes


def test_plain_qlora_estimate_says_what_prepare_model_for_kbit_training_adds():
    arch = resolve_model("llama-3.1-8b")
    cfg = TrainConfig(method="qlora", seq_len=1024)
    note = next(n for n in estimate(arch, cfg).notes if "prepare_model_for_kbit_training" in n)
    added = estimate(arch, cfg.model_copy(update={"kbit_upcast": "all"})).peak_device_bytes \
        - estimate(arch, cfg).peak_device_bytes
    assert f"+{added / 2**30:.2f} GiB per GPU" in note
    # not where it is not modelled (a MoE), nor where the stack keeps 16-bit norms
    assert not [n for n in estimate(resolve_model("qwen3-30b-a3b"), cfg).notes if "kbit" in n]
    assert not [n for n in estimate(arch, cfg.model_copy(update={"stack": "axolotl"})).notes if "kbit" in n]


def test_shifted_loss_is_refused_by_export_and_named_in_the_estimate(tmp_path):
    """--loss shifted (transformers before 4.49) is an estimate of an older stack: the exported job cannot run it."""
    proc = _run("estimate", "--model", "llama-3.2-1b", "--method", "lora", "--micro-batch", "2", "--loss", "shifted")
    assert proc.returncode == 0 and "transformers < 4.49" in proc.stdout
    out = tmp_path / "job"
    proc = _run("export", "--model", "llama-3.2-1b", "--method", "lora", "--loss", "shifted", "--format", "peft-trl",
                "--output", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "4.49" in proc.stderr and not out.exists()
