"""Qwen3.5 dense (model_type qwen3_5): the torch-free reader, exact counts against transformers and PEFT, and the
estimate's shape (the per-phase accuracy against the oracle is in tests/test_oracle.py)."""

import copy
import json

import pytest

from tests.meta_models import meta_model  # noqa: E402
from advisor.errors import ModelConfigError
from advisor.memory import TrainConfig, estimate
from advisor.models import count_params, resolve_model
from advisor.models.catalog import catalog_entries
from advisor.models.hf_config import arch_from_config


def _config(name="qwen3.5-9b"):
    return copy.deepcopy(next(e["config"] for e in catalog_entries() if e["name"] == name))


def test_reader_reads_both_layer_kinds():
    arch = resolve_model("qwen3.5-27b")
    assert arch.model_type == "qwen3_5" and arch.num_layers == 64
    assert arch.layer_types.count("linear_attention") == 48 and arch.layer_types[3] == "full_attention"
    la = arch.linear_attention
    assert (la.num_key_heads, la.num_value_heads, la.key_head_dim, la.conv_kernel) == (16, 48, 128, 4)
    assert arch.attn_output_gate and arch.vision is None and json.loads(arch.hf_config_json)["model_type"] == "qwen3_5"


def test_missing_layer_types_follow_full_attention_interval():
    cfg = _config()
    del cfg["text_config"]["layer_types"]
    cfg["text_config"]["full_attention_interval"] = 2
    arch = arch_from_config(cfg, name="q")
    assert arch.layer_types[:4] == ("linear_attention", "full_attention") * 2


def test_missing_linear_fields_take_transformers_defaults():
    cfg = _config("qwen3.5-27b")  # 48 value heads in the file; the class default is 32
    for key in ("linear_num_value_heads", "linear_conv_kernel_dim", "head_dim"):
        del cfg["text_config"][key]
    arch = arch_from_config(cfg, name="q")
    assert (arch.linear_attention.num_value_heads, arch.linear_attention.conv_kernel, arch.head_dim) == (32, 4, 256)


@pytest.mark.parametrize("key,value", [("linear_num_value_heads", 0), ("linear_num_value_heads", 20),
                                       ("linear_key_head_dim", 64), ("layer_types", ["linear_attention"]),
                                       ("linear_conv_kernel_dim", "4")])
def test_bad_fields_are_refused(key, value):
    cfg = _config()
    cfg["text_config"][key] = value
    with pytest.raises(ModelConfigError):
        arch_from_config(cfg, name="q")


def test_linear_layers_adapt_their_own_projections():
    from advisor.memory.targets import lora_linears

    names = {s.name: s.kind for s in lora_linears(resolve_model("qwen3.5-9b"), TrainConfig(method="lora"))}
    assert names["in_proj_qkv"] == names["out_proj"] == "linear_attention"
    assert names["q_proj"] == "full_attention" and names["down_proj"] is None


def test_activations_grow_linearly_with_the_sequence():
    arch = resolve_model("qwen3.5-9b")
    acts = [estimate(arch, TrainConfig(method="lora", seq_len=s)).activation_bytes for s in (1024, 2048, 4096)]
    assert abs((acts[2] - acts[1]) - 2 * (acts[1] - acts[0])) <= 0.001 * acts[2]


def test_the_estimate_says_it_models_the_torch_fallback():
    est = estimate(resolve_model("qwen3.5-9b"), TrainConfig(method="lora"))
    assert any("Gated DeltaNet" in n and "upper bound" in n for n in est.notes)


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _meta(name):
    return meta_model(_config(name))


@pytest.mark.parametrize("name", ["qwen3.5-9b", "qwen3.5-27b"])
def test_causal_lm_is_the_text_model_and_counts_match(name):
    model = _meta(name)
    assert type(model).__name__ == "Qwen3_5ForCausalLM"  # no vision tower: the estimate counts the text model
    assert count_params(resolve_model(name)).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("in_proj_qkv", "out_proj", "down_proj")])
def test_lora_params_equal_peft(targets):
    _adapters_equal_peft("qwen3.5-9b", 8, targets)


def test_moe_reader_reads_the_shared_expert_as_the_dense_mlp():
    arch = resolve_model("qwen3.5-35b-a3b")
    assert arch.model_type == "qwen3_5_moe" and arch.moe.num_experts == 256 and arch.moe.experts_per_token == 8
    assert arch.moe.expert_intermediate_size == 512 and arch.intermediate_size == 512 and arch.moe.norm_topk_prob


@pytest.mark.parametrize("name", ["qwen3.5-35b-a3b", "qwen3.5-122b-a10b"])
def test_moe_counts_match_transformers(name):
    model = _meta(name)
    assert type(model).__name__ == "Qwen3_5MoeForCausalLM"
    assert count_params(resolve_model(name)).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("gate_proj", "shared_expert_gate", "in_proj_z")])
def test_moe_lora_params_equal_peft(targets):
    """all-linear reaches every nn.Linear (mixers, shared expert, its gate) but not the router or the fused experts:
    transformers maps qwen3_5_moe_text to qwen3_5_text's conversion, for which PEFT has no MoE target mapping."""
    _adapters_equal_peft("qwen3.5-35b-a3b", 4, targets)


def _adapters_equal_peft(name, layers, targets):
    """Our LoRA parameter count against PEFT's on the text model transformers builds (shortened, meta device)."""
    peft = pytest.importorskip("peft")
    from advisor.memory.states import param_bytes
    from advisor.verify.build import lora_targets

    arch = resolve_model(name).model_copy(update={"num_layers": layers})
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    text = json.loads(arch.hf_config_json)["text_config"]
    text["num_hidden_layers"], text["layer_types"] = layers, text["layer_types"][:layers]
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**text))
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg), task_type="CAUSAL_LM"))
    assert param_bytes(arch, cfg).trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
