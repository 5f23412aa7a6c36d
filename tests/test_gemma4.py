"""Gemma 4 (issue 13): the reader applies transformers' defaults and refuses what it does not model; parameter
counts equal transformers' on the meta device, LoRA adapter counts equal PEFT's, and the estimate's phase peaks
agree with the fake-tensor oracle within 2 % on a six-layer 26B-A4B (five sliding layers, then a full one)."""

import json

import pytest

from tests.configs_2026 import config, config_path  # noqa: E402

from tests.meta_models import meta_model  # noqa: E402
from advisor.errors import ModelConfigError, UsageError
from advisor.memory import TrainConfig, estimate
from advisor.models import count_params, resolve_model
from advisor.models.hf_config import arch_from_config

NAME = "gemma-4-26B-A4B"


def _raw():
    return config(NAME)


def test_the_26b_a4b_reads_as_transformers_builds_it():
    arch = resolve_model(str(config_path(NAME)))
    assert arch.model_type == "gemma4" and arch.num_layers == 30 and arch.tie_word_embeddings
    # sliding layers: head_dim 256, 8 kv heads; full layers: global_head_dim 512, 2 kv heads, keys as values
    assert (arch.head_dim, arch.num_kv_heads, arch.global_head_dim, arch.global_kv_heads) == (256, 8, 512, 2)
    assert arch.attention_k_eq_v and arch.sliding_window == 1024 and arch.final_logit_softcap == 30.0
    assert arch.layer_types.count("full_attention") == 5 and arch.layer_types[5] == "full_attention"
    moe = arch.moe
    assert (moe.num_experts, moe.experts_per_token, moe.expert_intermediate_size, moe.dense_mlp) == (128, 8, 704, True)
    assert arch.intermediate_size == 2112  # the dense MLP beside the experts
    v = arch.vision
    assert (v.model_type, v.hidden_size, v.num_layers, v.head_dim, v.tokens_per_image) == ("gemma4_vision", 1152, 27, 72, 280)


def test_defaults_of_the_config_class_apply():
    raw = _raw()
    for key in ("global_head_dim", "layer_types", "sliding_window"):
        raw["text_config"].pop(key)
    arch = arch_from_config(raw, "defaults")
    # Gemma4TextConfig: global_head_dim 512, window 512, every sixth layer full (and the last one forced full)
    assert arch.global_head_dim == 512 and arch.sliding_window == 512
    assert arch.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    raw["text_config"]["layer_types"] = ["sliding_attention"] * 30
    assert arch_from_config(raw, "last").layer_types[-1] == "full_attention"


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["text_config"].update(hidden_size_per_layer_input=256), "per-layer input embeddings"),
    (lambda c: c["text_config"].pop("hidden_size_per_layer_input"), "per-layer input embeddings"),  # default 256
    (lambda c: c["text_config"].update(num_kv_shared_layers=10), "kv-shared layers"),
    (lambda c: c.update(audio_config={"model_type": "gemma4_audio"}), "audio tower"),
    (lambda c: c["text_config"].update(use_bidirectional_attention="all"), "not a causal lm"),
    (lambda c: c["text_config"].update(top_k_experts=200), "top_k_experts"),
    (lambda c: c["vision_config"].update(model_type="siglip_vision_model"), "vision_config.model_type"),
    (lambda c: c["text_config"].update(layer_types=["sliding_attention"] * 3), "layer_types"),
])
def test_unmodelled_mechanisms_and_bad_fields_are_refused_by_name(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ModelConfigError) as err:
        arch_from_config(raw, "edited")
    assert words in str(err.value).lower()


def test_images_and_flash_attention_are_refused():
    arch = resolve_model(str(config_path(NAME)))
    with pytest.raises(UsageError, match="gemma4_vision"):
        estimate(arch, TrainConfig(image_size=768))
    with pytest.raises(UsageError, match="FlashAttention-2"):
        estimate(arch, TrainConfig(attn="flash"))


def test_lora_keeps_router_and_experts_frozen():
    from advisor.memory.targets import lora_linears

    arch = resolve_model(str(config_path(NAME)))
    names = {spec.name for spec in lora_linears(arch, TrainConfig(method="lora"))}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_count_equals_transformers_with_the_tower():
    raw = _raw()
    arch = arch_from_config(raw, "g4")
    model = meta_model(raw)
    assert type(model).__name__ == "Gemma4ForConditionalGeneration"
    assert count_params(arch).total == sum(p.numel() for p in model.parameters()) == 25_805_933_872
    tower = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n or "embed_vision" in n)
    assert count_params(arch).vision == tower


def test_count_equals_transformers_text_only_and_dense():
    raw = _raw()
    text = {**raw["text_config"], "num_hidden_layers": 6, "layer_types": raw["text_config"]["layer_types"][:6]}
    arch = arch_from_config(text, "text")
    assert arch.model_type == "gemma4_text" and arch.vision is None
    assert count_params(arch).total == sum(p.numel() for p in meta_model(text).parameters())
    dense = {**text, "enable_moe_block": False, "attention_k_eq_v": False}
    arch = arch_from_config(dense, "dense")
    assert arch.moe is None
    assert count_params(arch).total == sum(p.numel() for p in meta_model(dense).parameters())


@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("q_proj", "v_proj", "down_proj")])
def test_lora_params_equal_peft(targets):
    peft = pytest.importorskip("peft")
    from advisor.memory.states import param_bytes
    from advisor.models.hf_config import to_hf_config
    from advisor.verify.build import lora_targets

    arch = resolve_model(str(config_path(NAME))).model_copy(update={"num_layers": 6})
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    model = meta_model(to_hf_config(arch))
    model.requires_grad_(False)
    # the regex keeps PEFT out of the vision tower, whose Linears share the language model's names
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg, arch)))
    adapted = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert adapted and all("language_model" in n for n in adapted)
    assert param_bytes(arch, cfg).trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


pytest.importorskip("peft")

from advisor.verify.dryrun import PHASES, run_dry  # noqa: E402

ORACLE_CASES = [
    # chunked loss: the peak is inside the last layer, at the experts' un-permute (fp32 routing weights)
    dict(method="lora", seq_len=2048, loss="chunked", optimizer="sgd"),
    dict(method="qlora", seq_len=1024, grad_ckpt=True, loss="chunked"),
    dict(method="full", seq_len=1024, grad_ckpt=True, optimizer="sgd"),
]


@pytest.mark.parametrize("settings", ORACLE_CASES, ids=[c["method"] for c in ORACLE_CASES])
def test_every_phase_peak_within_two_percent(settings):
    arch = resolve_model(str(config_path(NAME))).model_copy(update={"num_layers": 6})
    cfg = TrainConfig(**settings)
    oracle, est = run_dry(arch, cfg), estimate(arch, cfg)
    assert oracle.trainable_params == est.trainable_params
    for phase in PHASES:
        measured, predicted = oracle.phase_peaks[phase], getattr(est.phases, phase)
        assert abs(predicted - measured) <= 0.02 * measured, (phase, measured, predicted)


def test_cli_estimate_and_models(capsys):
    from advisor.cli import main

    assert main(["--json", "estimate", "--model", "gemma-4-26b-a4b", "--method", "qlora"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["params"] == 25_805_933_872 and doc["model"]["model_type"] == "gemma4"
    assert main(["estimate", "--model", "gemma-4-26b-a4b", "--image-size", "768"]) == 2
    assert "gemma4_vision" in capsys.readouterr().err
