"""Gemma 3 (issue 13): the reader applies transformers' defaults, the images flags, and the refusals.  The
memory numbers themselves are checked against the oracle in test_oracle.py / test_sharded_oracle.py, the
parameter counts against transformers and PEFT in test_param_counts.py."""

import json

import pytest

from tests.configs_2026 import config_path  # noqa: E402

from advisor.errors import ModelConfigError, UsageError
from advisor.memory import TrainConfig, estimate
from advisor.models import resolve_model
from advisor.models.hf_config import arch_from_config

G4B = config_path("gemma-3-4b-it")


def _raw():
    return json.loads(G4B.read_text())


def test_the_4b_file_leaves_heads_and_vocab_to_the_config_class():
    arch = resolve_model(str(G4B))
    # Gemma3TextConfig defaults: 8 heads, 4 kv heads, head_dim 256, vocab 262,208, tied embeddings
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.vocab_size) == (8, 4, 256, 262_208)
    assert arch.tie_word_embeddings and arch.qk_norm and arch.norms_per_layer == 4
    assert arch.activation == "gelu_pytorch_tanh" and arch.sliding_window == 1024
    # sliding_window_pattern 6: five sliding layers, then a global one
    assert arch.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    assert arch.layer_types.count("full_attention") == 34 // 6
    v = arch.vision
    assert (v.hidden_size, v.num_layers, v.patch_size, v.image_size, v.tokens_per_image) == (1152, 27, 14, 896, 256)
    assert v.patches_per_image == 4096 and not v.use_head


def test_the_text_config_alone_is_a_text_model():
    raw = _raw()
    arch = arch_from_config({**raw["text_config"], "model_type": "gemma3_text"}, "gemma-3-4b-text")
    assert arch.vision is None and arch.model_type == "gemma3_text"


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["text_config"].update(layer_types=["sliding_attention"] * 3), "layer_types"),
    (lambda c: c["text_config"].update(use_bidirectional_attention=True), "bidirectional"),
    (lambda c: c["vision_config"].update(model_type="clip_vision_model"), "vision_config.model_type"),
    (lambda c: c.update(mm_tokens_per_image=300), "mm_tokens_per_image"),  # 64 x 64 patches pool to 21 x 21
    (lambda c: c["text_config"].update(num_attention_heads=7), "num_attention_heads"),
    (lambda c: c["vision_config"].update(patch_size="14"), "patch_size"),
])
def test_bad_fields_are_refused_by_name(edit, words):
    raw = _raw()
    edit(raw)
    with pytest.raises(ModelConfigError) as err:
        arch_from_config(raw, "edited")
    assert words in str(err.value).lower()


def test_image_tokens_count_inside_the_sequence():
    arch = resolve_model(str(G4B))
    text = estimate(arch, TrainConfig(seq_len=2048))
    image = estimate(arch, TrainConfig(seq_len=2048, image_size=896))
    two = estimate(arch, TrainConfig(seq_len=2048, images_per_sample=2))
    assert image.tokens_per_micro_batch == text.tokens_per_micro_batch == 2048
    assert text.phases.forward < image.phases.forward < two.phases.forward
    assert any("256 image tokens counted inside seq len 2048" in n for n in image.notes)
    # --image-tokens 512 is two images' worth
    tokens = estimate(arch, TrainConfig(seq_len=2048, image_tokens=512))
    assert tokens.phases == two.phases


def test_images_for_a_text_model_and_too_many_tokens_are_refused():
    with pytest.raises(UsageError, match="text-only"):
        estimate(resolve_model("llama-3.2-1b"), TrainConfig(image_size=896))
    from advisor.memory.vision import image_inputs

    with pytest.raises(UsageError, match="do not fit"):
        image_inputs(resolve_model(str(G4B)), TrainConfig(seq_len=512, images_per_sample=3))


def test_flash_attention_is_refused_for_the_vision_model():
    with pytest.raises(UsageError, match="FlashAttention-2"):
        estimate(resolve_model(str(G4B)), TrainConfig(attn="flash"))


def test_cli_exit_codes(capsys):
    from advisor.cli import main

    assert main(["estimate", "--model", "llama-3.2-1b", "--image-size", "896"]) == 2
    assert "text-only" in capsys.readouterr().err
    assert main(["estimate", "--model", str(G4B), "--image-tokens", "4096", "--seq-len", "2048"]) == 2
    assert main(["--json", "estimate", "--model", str(G4B), "--image-size", "896", "--images-per-sample", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any("512 image tokens" in n for n in doc["notes"])
