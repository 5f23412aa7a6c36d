"""Qwen3-Next (model_type qwen3_next): the torch-free reader (transformers' defaults, refusals), exact counts against
transformers and PEFT, and the estimate against the fake-tensor oracle on a four-layer model at real widths."""

import copy
import json

import pytest

from tests.meta_models import meta_model  # noqa: E402
from advisor.errors import ModelConfigError, UsageError
from advisor.memory import TrainConfig, estimate
from advisor.memory.states import param_bytes
from advisor.memory.targets import lora_linears
from advisor.models import count_params, resolve_model
from advisor.models.catalog import catalog_entries
from advisor.models.hf_config import arch_from_config

NAME = "qwen3-next-80b-a3b-thinking"


def _config():
    return copy.deepcopy(next(e["config"] for e in catalog_entries() if e["name"] == NAME))


def test_reader_reads_the_catalog_config():
    arch = resolve_model(NAME)
    assert arch.model_type == "qwen3_next" and arch.num_layers == 48 and arch.hidden_size == 2048
    # full_attention_interval 4: three Gated DeltaNet layers, then one gated full-attention layer
    assert arch.layer_types.count("linear_attention") == 36 and arch.layer_types[3::4] == ("full_attention",) * 12
    la = arch.linear_attention
    assert la.fused_projections and (la.num_key_heads, la.num_value_heads, la.key_head_dim, la.conv_kernel) == (16, 32, 128, 4)
    assert (arch.moe.num_experts, arch.moe.experts_per_token, arch.moe.expert_intermediate_size) == (512, 10, 512)
    # the layer's dense MLP is the shared expert (shared_expert_intermediate_size), not intermediate_size (5120)
    assert arch.intermediate_size == 512 and arch.attn_output_gate and arch.qk_norm and not arch.tie_word_embeddings


def test_linear_layers_have_the_fused_projections():
    specs = {s.name: s for s in lora_linears(resolve_model(NAME), TrainConfig(method="lora", targets=("in_proj_qkvz", "in_proj_ba")))}
    # in_proj_qkvz: 2 x 16 x 128 (q, k) + 2 x 32 x 128 (v, z); in_proj_ba: 2 x 32 value heads
    assert (specs["in_proj_qkvz"].out_features, specs["in_proj_ba"].out_features) == (12_288, 64)
    assert specs["in_proj_qkvz"].kind == "linear_attention"
    with pytest.raises(UsageError, match="in_proj_qkv"):  # Qwen3.5's names are not Qwen3-Next's
        lora_linears(resolve_model(NAME), TrainConfig(method="lora", targets=("in_proj_qkv",)))


def test_missing_layer_types_follow_full_attention_interval():
    cfg = _config()
    cfg["full_attention_interval"] = 2
    assert arch_from_config(cfg, name="q").layer_types[:4] == ("linear_attention", "full_attention") * 2


@pytest.mark.parametrize("key,value,named", [
    ("mlp_only_layers", [1], "mlp_only_layers"),
    ("decoder_sparse_step", 2, "decoder_sparse_step"),
    ("num_experts", 0, "num_experts 0"),
    ("output_router_logits", True, "output_router_logits"),
    ("linear_num_value_heads", 20, "linear_num_value_heads"),
    ("linear_key_head_dim", 64, "linear_key_head_dim"),
    ("norm_topk_prob", "yes", "norm_topk_prob"),
    ("num_experts_per_tok", 600, "num_experts_per_tok"),
    ("layer_types", ["linear_attention"], "layer_types"),
])
def test_what_is_not_modelled_is_refused_by_name(key, value, named):
    cfg = _config()
    cfg[key] = value
    with pytest.raises(ModelConfigError) as err:
        arch_from_config(cfg, name="q")
    assert named in err.value.message and "\n" not in err.value.message


def test_dense_layers_outside_the_model_are_ignored():
    cfg = _config()
    cfg["mlp_only_layers"] = [48, 60]  # Qwen3NextDecoderLayer only asks about indices below num_hidden_layers
    assert arch_from_config(cfg, name="q").moe.num_experts == 512


def test_peft_moves_expert_names_to_the_fused_experts():
    """PEFT maps gate_proj + up_proj / down_proj onto the fused expert tensors (rank x experts) and refuses one of the
    fused pair alone; the shared expert, whose Linears share those names, gets no adapter."""
    arch = resolve_model(NAME)
    names = {s.name for s in lora_linears(arch, TrainConfig(method="lora", targets=("gate_proj", "up_proj", "down_proj")))}
    assert names == {"experts.gate_up_proj", "experts.down_proj"}
    with pytest.raises(UsageError, match="up_proj"):
        lora_linears(arch, TrainConfig(method="lora", targets=("gate_proj",)))
    default = {s.name for s in lora_linears(arch, TrainConfig(method="lora"))}
    assert {"gate", "shared_expert_gate", "in_proj_qkvz", "experts.down_proj", "q_proj"} <= default
    assert not default & {"gate_proj", "up_proj", "down_proj"}


def test_estimate_runs_for_the_whole_model():
    est = estimate(resolve_model(NAME), TrainConfig(method="qlora"))
    assert est.total_params == 79_674_391_296
    assert any("Gated DeltaNet" in n for n in est.notes)


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_count_equals_transformers():
    model = meta_model(_config())
    assert type(model).__name__ == "Qwen3NextForCausalLM"
    assert count_params(resolve_model(NAME)).total == sum(p.numel() for p in model.parameters()) == 79_674_391_296


def test_defaults_are_transformers_defaults():
    """A file that leaves everything but the layer count out is read as Qwen3NextConfig fills it in, and counts
    what transformers builds from it."""
    cfg = {"model_type": "qwen3_next", "num_hidden_layers": 4}
    arch = arch_from_config(cfg, name="q")
    hf = transformers.AutoConfig.for_model(**cfg)
    la = arch.linear_attention
    assert (arch.hidden_size, arch.vocab_size, arch.num_heads, arch.num_kv_heads, arch.head_dim) == \
        (hf.hidden_size, hf.vocab_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim)
    assert (la.num_key_heads, la.num_value_heads, la.conv_kernel) == \
        (hf.linear_num_key_heads, hf.linear_num_value_heads, hf.linear_conv_kernel_dim)
    assert (arch.moe.num_experts, arch.moe.experts_per_token, arch.max_position_embeddings) == \
        (hf.num_experts, hf.num_experts_per_tok, hf.max_position_embeddings)
    assert list(arch.layer_types) == hf.layer_types
    assert count_params(arch).total == sum(p.numel() for p in meta_model(cfg).parameters())


@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("gate_proj", "up_proj", "down_proj"),
                                     ("in_proj_qkvz", "in_proj_ba", "out_proj", "shared_expert_gate", "gate")])
def test_lora_params_equal_peft(targets):
    peft = pytest.importorskip("peft")
    from advisor.verify.build import lora_targets

    arch = resolve_model(NAME).model_copy(update={"num_layers": 4})
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    model = meta_model({**json.loads(arch.hf_config_json), "num_hidden_layers": 4})
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg), task_type="CAUSAL_LM"))
    assert param_bytes(arch, cfg).trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_peft_refuses_half_of_the_fused_pair_as_we_do():
    peft = pytest.importorskip("peft")
    model = meta_model({**_config(), "num_hidden_layers": 4})
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="gate_up_proj"):
        peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["gate_proj"], task_type="CAUSAL_LM"))


# The oracle: the real step (transformers' torch fallbacks of the gated delta rule and the conv, PEFT, bitsandbytes) on
# fake tensors; four layers (three linear, one full) at real widths.  QLoRA with the default targets (PEFT's merged
# copies of the 512-expert stacks weigh in), and the mixers' Linears alone under checkpointing, where the fused
# projections' outputs that the mixer holds decide the forward peak.
ORACLE_CASES = [
    dict(method="qlora", seq_len=512, optimizer="sgd"),
    dict(method="lora", targets=("in_proj_qkvz", "in_proj_ba", "out_proj"), seq_len=1024, grad_ckpt=True,
         loss="chunked", optimizer="sgd"),
]


@pytest.mark.parametrize("settings", ORACLE_CASES, ids=["qlora", "mixers-ckpt"])
def test_every_phase_peak_within_two_percent(settings):
    pytest.importorskip("peft")
    from tests.test_oracle import test_every_phase_peak_within_two_percent as check

    check(NAME, 4, settings)
