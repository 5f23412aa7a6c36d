"""Gemma 3 (model_type gemma3, a vision-language model; gemma3_text, its language model alone).

transformers 5.25 (models/gemma3/modeling_gemma3.py): every decoder layer has Gemma 2's four RMSNorms
(input, post-attention, pre-feedforward, post-feedforward; ``x * (1 + w)`` computed in fp32), a Gemma-style
per-head RMSNorm on q and k (``q_norm``/``k_norm``, head_dim wide), GeGLU MLP, and attention that is sliding
(``sliding_window``) or global per ``layer_types``, which ``Gemma3TextConfig.__post_init__`` computes from
``sliding_window_pattern`` (default 6: five sliding layers, then one global) when the file has none.  The
embedding is ``Gemma3TextScaledWordEmbedding`` (times sqrt(hidden)), tied to lm_head.

``AutoModelForCausalLM.from_config`` builds a gemma3 config as ``Gemma3ForConditionalGeneration``: the
language model plus a SigLIP vision tower (``SiglipVisionModel``) and ``Gemma3MultiModalProjector`` (an
average pool of the tower's patches down to ``mm_tokens_per_image``, a Gemma RMSNorm, one matrix), so a
text-only fine-tune of gemma-3-4b-it still holds the tower's weights.

Defaults are those of ``Gemma3TextConfig`` / ``Gemma3Config`` (configuration_gemma3.py) and
``SiglipVisionConfig`` (siglip/configuration_siglip.py): the published gemma-3-4b-it config.json leaves
num_attention_heads, num_key_value_heads, head_dim and vocab_size to them.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelConfigError
from ..arch import ModelArch, VisionTower
from ..hf_config import (_HINT, _bad, _check_fields, _req, build_arch, check_kv_heads, checked_layer_types,
                         file_bool, periodic_layer_types)

# Gemma3TextConfig's class defaults (transformers 5.25) for the keys a config.json may leave out
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "tie_word_embeddings": True, "attention_bias": False,
    "sliding_window": 4096, "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "use_bidirectional_attention": False,
}
SLIDING_WINDOW_PATTERN = 6  # Gemma3TextConfig.__post_init__: kwargs.get("sliding_window_pattern", 6)
# SiglipVisionConfig's class defaults
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "vision_use_head": True,
}
MM_TOKENS_PER_IMAGE = 256  # Gemma3Config.mm_tokens_per_image
LAYER_KINDS = ("sliding_attention", "full_attention")
_VISION_INTS = {"hidden_size": (1, 65_536), "intermediate_size": (1, 1 << 20), "num_hidden_layers": (1, 1_024),
                "num_attention_heads": (1, 1_024), "num_channels": (1, 16), "image_size": (1, 1 << 16),
                "patch_size": (1, 1 << 12)}


def _with_defaults(cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The file's keys over the class defaults; a null number means the default too (the class declares
    them ``int``), while a null window or soft-cap stays null (off)."""
    merged = dict(defaults)
    for key, value in cfg.items():
        if value is None and isinstance(defaults.get(key), int) and not isinstance(defaults.get(key), bool):
            continue
        merged[key] = value
    return merged


def _layer_types(text: dict[str, Any], layers: int, source: str) -> tuple[str, ...]:
    given = text.get("layer_types")
    if given is None:
        pattern = text.get("sliding_window_pattern", SLIDING_WINDOW_PATTERN)
        if not isinstance(pattern, int) or isinstance(pattern, bool) or not 1 <= pattern <= 1_024:
            raise _bad(source, "sliding_window_pattern", "a whole number from 1 to 1,024", pattern)
        return periodic_layer_types(layers, pattern, "sliding_attention")
    return checked_layer_types(given, layers, LAYER_KINDS, source)


def _vision(original: dict[str, Any], text_hidden: int, source: str) -> VisionTower:
    raw = original.get("vision_config") or {}
    if not isinstance(raw, dict):
        raise _bad(source, "vision_config", "an object with the vision tower's fields", raw)
    kind = raw.get("model_type", "siglip_vision_model")
    if kind != "siglip_vision_model":
        raise ModelConfigError(f"{source}: vision_config.model_type {kind!r} is not modelled for gemma3",
                               "Gemma 3 uses a SigLIP tower (siglip_vision_model)", value=source)
    v = _with_defaults(raw, VISION_DEFAULTS)
    for key, (low, high) in _VISION_INTS.items():
        value = v[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _bad(source, f"vision_config.{key}", f"a whole number from {low:,} to {high:,} (one side, square "
                                                       "images)", value)
    if not isinstance(v["vision_use_head"], bool):
        raise _bad(source, "vision_config.vision_use_head", "true or false", v["vision_use_head"])
    tokens = original.get("mm_tokens_per_image", MM_TOKENS_PER_IMAGE)
    if tokens is None:
        tokens = MM_TOKENS_PER_IMAGE
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= 1 << 16:
        raise _bad(source, "mm_tokens_per_image", "a whole number from 1 to 65,536", tokens)
    # Gemma3MultiModalProjector: patches per side, pooled by kernel = patches // sqrt(tokens) to the tokens
    side = v["image_size"] // v["patch_size"]
    per_side = int(tokens ** 0.5)
    kernel = side // per_side if per_side else 0
    if not kernel or (side // kernel) ** 2 != tokens:
        raise ModelConfigError(
            f"{source}: mm_tokens_per_image {tokens} does not come out of {side}x{side} patches "
            f"(image_size {v['image_size']} / patch_size {v['patch_size']}) by average pooling", _HINT, value=source)
    return VisionTower(
        model_type=kind, hidden_size=v["hidden_size"], num_layers=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"], intermediate_size=v["intermediate_size"], patch_size=v["patch_size"],
        image_size=v["image_size"], num_channels=v["num_channels"], use_head=v["vision_use_head"],
        tokens_per_image=tokens, text_hidden_size=text_hidden,
    )


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    """A gemma3 (vision + language) or gemma3_text config.json as transformers 5.25 builds it."""
    cfg = _with_defaults(text, TEXT_DEFAULTS)
    cfg["model_type"] = "gemma3_text"
    _check_fields(cfg, source, "gemma3_text")
    if cfg.get("use_bidirectional_attention"):
        raise ModelConfigError(f"{source}: use_bidirectional_attention is set (an embedding model, not a causal LM)",
                               "the memory model covers causal language models", value=source)
    hidden, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if hidden % heads:  # Gemma3TextConfig.validate_architecture refuses it too
        raise ModelConfigError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                               f"transformers refuses it for gemma3; {_HINT}", value=source)
    check_kv_heads(heads, kv_heads, source)
    layers = _req(cfg, "num_hidden_layers", source)
    layer_types = _layer_types(cfg, layers, source)
    vision = _vision(original, hidden, source) if original.get("model_type") == "gemma3" else None
    # the composite model ties lm_head to the language model's embedding per Gemma3Config (default True)
    tie = file_bool(original, "tie_word_embeddings", True, source) if vision is not None else cfg["tie_word_embeddings"]
    sliding = cfg.get("sliding_window")
    return build_arch(
        source, hint="check the values in config.json",
        name=name,
        model_type="gemma3" if vision is not None else "gemma3_text",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=cfg["head_dim"],
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=bool(tie),
        qkv_bias=bool(cfg["attention_bias"]),
        o_bias=bool(cfg["attention_bias"]),
        activation=cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh",
        norms_per_layer=4,
        qk_norm=True,
        final_logit_softcap=cfg.get("final_logit_softcapping"),
        attn_logit_softcap=cfg.get("attn_logit_softcapping"),
        sliding_window=sliding if "sliding_attention" in layer_types else None,
        layer_types=layer_types,
        vision=vision,
        hf_config_json=json.dumps(original),
    )
