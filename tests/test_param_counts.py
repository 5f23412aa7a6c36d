"""Exact parameter counts and LoRA adapter sizes, checked against transformers and PEFT themselves
(models built on the meta device: nothing is allocated)."""

import pytest

from tests.configs_2026 import config_path  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.meta_models import meta_model  # noqa: E402
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


def _resolved_or_skip(name):
    """A catalog entry as the torch-free reader or the derived path reads it.  An entry whose layout nobody
    models yet is refused with a ModelConfigError (tests/test_models.py checks the refusal is clear): it has
    no count to compare, so it is skipped here, naming why.  Resolving decides this rather than a list of
    model types, so a reader that lands brings its catalog entries into this test by itself."""
    from advisor.errors import ModelConfigError

    try:
        return resolve_model(name)
    except ModelConfigError as exc:
        pytest.skip(f"{name}: not modelled yet ({exc.message})")


@pytest.mark.parametrize("name", [entry["name"] for entry in catalog_entries()])
def test_count_equals_transformers(name):
    arch = _resolved_or_skip(name)
    entry = next(e for e in catalog_entries() if e["name"] == name)
    # built from the catalog's own config.json values, not from our arch (an independent path)
    cfg = transformers.AutoConfig.for_model(**entry["config"])
    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg)
        except ValueError:  # a vision-language model with no causal-LM class (Mistral 3): its own class
            model = transformers.AutoModelForImageTextToText.from_config(cfg)
    model.tie_weights()
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(arch).total == expected


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


# --- Gemma 3 (issue 13): a vision-language model read from its own config.json, tower and projector included
GEMMA3 = ["gemma-3-4b-it", "gemma-3-27b-it"]


def _gemma3_file(name):
    return config_path(name)


@pytest.mark.parametrize("name", GEMMA3)
def test_gemma3_counts_equal_transformers(name):
    """The whole Gemma3ForConditionalGeneration (vision tower + projector + language model), and the language
    model alone (its text_config as a gemma3_text file: Gemma3ForCausalLM), both from the file's own dict."""
    import json

    path = _gemma3_file(name)
    original = json.loads(path.read_text())
    arch = resolve_model(str(path))
    model = meta_model(original)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert count_params(arch).total == sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n)
    assert count_params(arch).vision == vision
    from advisor.models.hf_config import arch_from_config

    text = {**original["text_config"], "model_type": "gemma3_text"}
    text_arch = arch_from_config(text, name + "-text")
    assert text_arch.vision is None and text_arch.model_type == "gemma3_text"
    text_model = meta_model(text)
    assert type(text_model).__name__ == "Gemma3ForCausalLM"
    assert count_params(text_arch).total == sum(p.numel() for p in text_model.parameters())
    assert count_params(text_arch).total == count_params(arch).total - vision


@pytest.mark.parametrize("name", GEMMA3)
@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("q,v",), ("o_proj", "down_proj")])
def test_gemma3_lora_params_equal_peft(name, targets):
    """LoRA on the language model only (the regex build.lora_targets gives PEFT for a VLM)."""
    peft = pytest.importorskip("peft")
    from advisor.verify.build import lora_targets

    arch = resolve_model(str(_gemma3_file(name)))
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    model = meta_model(__import__("json").loads(_gemma3_file(name).read_text()))
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg, arch), task_type="CAUSAL_LM"))
    adapted = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert adapted and not any("vision_tower" in n or "multi_modal_projector" in n for n in adapted)
    assert param_bytes(arch, cfg).trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_peft_all_linear_reaches_the_gemma3_vision_tower():
    """Why the VLM targets are a regex: PEFT's plain "all-linear" also adapts SigLIP's q/k/v/out_proj and fc1/fc2
    (peft/tuners/tuners_utils.py _maybe_include_all_linear_layers collects Linear names model-wide)."""
    peft = pytest.importorskip("peft")
    import json

    model = meta_model(json.loads(_gemma3_file("gemma-3-4b-it").read_text()))
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert any("vision_tower" in n and p.requires_grad for n, p in peft_model.named_parameters())


def test_gemma3_full_fine_tuning_trains_the_language_model_only():
    arch = resolve_model(str(_gemma3_file("gemma-3-4b-it")))
    full = param_bytes(arch, TrainConfig(method="full"))
    assert full.trainable_params == count_params(arch).total - count_params(arch).vision
    assert full.frozen_16bit > 2 * count_params(arch).vision * 0.99


@pytest.mark.parametrize("fmt", ["peft-trl", "trl-yaml", "axolotl"])
def test_gemma3_exports_adapt_the_language_model_only(fmt, tmp_path):
    """The exported job's target_modules, applied by PEFT to the real module tree, adapt what the estimate counts
    (the language model's Linears) and nothing in the vision tower; the file reads back to the same targets."""
    import ast
    import json

    import yaml
    peft = pytest.importorskip("peft")
    from advisor.cli import main

    path = _gemma3_file("gemma-3-4b-it")
    out = tmp_path / "job"
    assert main(["export", "--model", str(path), "--format", fmt, "--method", "lora", "--output", str(out),
                 "--image-size", "896"]) == 0
    (file,) = [f for f in out.iterdir() if f.suffix in (".py", ".yaml") and f.name != "accelerate.yaml"]
    if file.suffix == ".py":
        targets = next(ast.literal_eval(n.value) for n in ast.walk(ast.parse(file.read_text()))
                       if isinstance(n, ast.keyword) and n.arg == "target_modules")
    else:
        targets = yaml.safe_load(file.read_text())["lora_target_modules"]
    model = meta_model(json.loads(path.read_text()))
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=16, target_modules=targets, task_type="CAUSAL_LM"))
    adapted = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert adapted and not any("vision_tower" in n for n in adapted)
    arch = resolve_model(str(path))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == \
        param_bytes(arch, TrainConfig(method="lora", rank=16)).trainable_params


@pytest.mark.parametrize("targets", [("all-linear",), ("attention",), ("o_proj", "down_proj")])
def test_phi4_counts_equal_transformers_and_peft(targets):
    """phi-4 is model_type phi3 (fused qkv_proj / gate_up_proj, GQA 40/10, untied 100,352 vocab)."""
    import json

    peft = pytest.importorskip("peft")
    from advisor.verify.build import lora_targets

    path = _gemma3_file("phi-4")
    arch = resolve_model(str(path))
    model = meta_model(json.loads(path.read_text()))
    assert count_params(arch).total == sum(p.numel() for p in model.parameters()) == 14_659_507_200
    cfg = TrainConfig(method="lora", rank=8, targets=targets)
    model.requires_grad_(False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=lora_targets(cfg), task_type="CAUSAL_LM"))
    assert param_bytes(arch, cfg).trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
