"""Qwen3-MoE and gpt-oss: the readers against transformers' own config classes and modules (built on the meta
device from the verbatim config.json files, an independent path), and LoRA adapter counts against PEFT."""


import pytest

from tests.configs_2026 import config  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.meta_models import meta_model  # noqa: E402
from advisor.errors import ModelConfigError  # noqa: E402
from advisor.memory import TrainConfig  # noqa: E402
from advisor.memory.states import param_bytes  # noqa: E402
from advisor.models import count_params  # noqa: E402
from advisor.models.hf_config import arch_from_config, to_hf_config  # noqa: E402

QWEN3_MOE = ["Qwen3-30B-A3B", "Qwen3-235B-A22B"]
GPT_OSS = ["gpt-oss-20b", "gpt-oss-120b"]



def _config(name):
    return config(name)


def _meta_model(cfg_dict):
    return meta_model({k: v for k, v in cfg_dict.items() if k != "quantization_config"})  # mxfp4: counted dequantized


@pytest.mark.parametrize("name", QWEN3_MOE + GPT_OSS)
def test_count_equals_transformers(name):
    expected = sum(p.numel() for p in _meta_model(_config(name)).parameters())
    assert count_params(arch_from_config(_config(name), name=name)).total == expected


@pytest.mark.parametrize("name", QWEN3_MOE + GPT_OSS)
@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("q_proj", "o_proj")])
def test_lora_params_equal_peft(name, targets):
    peft = pytest.importorskip("peft")
    from advisor.verify.build import lora_targets

    arch = arch_from_config(_config(name), name=name).model_copy(update={"num_layers": 2})
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    model = _meta_model(to_hf_config(arch))
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg), task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert param_bytes(arch, cfg).trainable_params == trainable


def test_qwen3_moe_defaults_follow_the_config_class():
    """Keys left out mean what Qwen3MoeConfig makes of them (norm_topk_prob False, no head_dim: hidden/heads)."""
    cfg = {k: v for k, v in _config("Qwen3-30B-A3B").items() if k not in ("norm_topk_prob", "head_dim", "num_experts")}
    arch = arch_from_config(cfg, name="x")
    hf = transformers.AutoConfig.for_model(**cfg)
    assert arch.moe.norm_topk_prob is hf.norm_topk_prob is False
    assert arch.moe.num_experts == hf.num_experts == 128
    assert arch.head_dim == 2048 // 32


@pytest.mark.parametrize("key,value", [("num_experts", 0), ("num_experts_per_tok", 999), ("moe_intermediate_size", "768"),
                                       ("mlp_only_layers", [0]), ("decoder_sparse_step", 2), ("norm_topk_prob", "yes"),
                                       ("hidden_size", 10**7)])
def test_qwen3_moe_refuses_what_it_does_not_model(key, value):
    with pytest.raises(ModelConfigError):
        arch_from_config({**_config("Qwen3-30B-A3B"), key: value}, name="x")


def test_gpt_oss_defaults_follow_the_config_class():
    """Keys left out mean what GptOssConfig makes of them: 128 experts, alternating layer types from sliding."""
    cfg = {k: v for k, v in _config("gpt-oss-20b").items() if k not in ("num_local_experts", "layer_types", "head_dim")}
    arch = arch_from_config(cfg, name="x")
    hf = transformers.AutoConfig.for_model(**cfg)
    assert arch.moe.num_experts == hf.num_local_experts == 128
    assert list(arch.layer_types) == hf.layer_types
    assert arch.head_dim == hf.head_dim == 64
    assert count_params(arch).total == sum(p.numel() for p in _meta_model(cfg).parameters())


@pytest.mark.parametrize("key,value", [("num_local_experts", 1), ("num_experts_per_tok", 64), ("swiglu_limit", -1),
                                       ("layer_types", ["full_attention"]), ("layer_types", "sliding"),
                                       ("quantization_config", {"quant_method": "gptq"}), ("head_dim", 0)])
def test_gpt_oss_refuses_what_it_does_not_model(key, value):
    with pytest.raises(ModelConfigError):
        arch_from_config({**_config("gpt-oss-20b"), key: value}, name="x")


def test_gpt_oss_all_linear_is_attention_only_and_sdpa_is_refused():
    from advisor.errors import UsageError
    from advisor.memory import estimate
    from advisor.memory.targets import lora_linears

    arch = arch_from_config(_config("gpt-oss-20b"), name="gpt-oss-20b")
    names = {s.name for s in lora_linears(arch, TrainConfig(method="lora", targets=("all-linear",)))}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with pytest.raises(UsageError):
        estimate(arch, TrainConfig(method="lora", attn="sdpa"))
    notes = " ".join(estimate(arch, TrainConfig(method="lora")).notes)
    assert "MXFP4" in notes and "eager" in notes
