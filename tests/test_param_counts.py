"""Exact parameter counts and LoRA adapter sizes, checked against transformers and PEFT themselves
(models built on the meta device: nothing is allocated)."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from advisor.memory import TrainConfig  # noqa: E402
from advisor.memory.states import param_bytes  # noqa: E402
from advisor.models import count_params, resolve_model  # noqa: E402
from advisor.models.catalog import catalog_entries  # noqa: E402
from advisor.models.hf_config import to_hf_config  # noqa: E402


def _meta_model(arch):
    cfg = transformers.AutoConfig.for_model(**to_hf_config(arch))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.tie_weights()  # transformers 5 does not tie on meta by itself
    return model


@pytest.mark.parametrize("name", [entry["name"] for entry in catalog_entries()])
def test_count_equals_transformers(name):
    entry = next(e for e in catalog_entries() if e["name"] == name)
    # built from the catalog's own config.json values, not from our arch (an independent path)
    cfg = transformers.AutoConfig.for_model(**entry["config"])
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.tie_weights()
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(resolve_model(name)).total == expected


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "gemma-2-2b", "phi-3-mini-4k", "qwen3-8b", "mixtral-8x7b-v0.1"])
@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("o_proj", "down_proj")])
def test_lora_params_equal_peft(name, targets):
    peft = pytest.importorskip("peft")
    arch = resolve_model(name)
    if arch.moe and "down_proj" in targets:
        pytest.skip("Mixtral experts are fused tensors, not Linear layers")
    if arch.fused_qkv and targets == ("attention",):
        targets = ("attention",)
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    from advisor.verify.build import lora_targets

    model = _meta_model(arch)
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert param_bytes(arch, cfg).trainable_params == trainable


def test_frozen_params_are_not_trainable():
    arch = resolve_model("llama-3.1-8b")
    lora = param_bytes(arch, TrainConfig(method="lora", rank=16))
    full = param_bytes(arch, TrainConfig(method="full"))
    assert lora.trainable_params < 0.01 * full.trainable_params
    assert full.trainable_params == count_params(arch).total
