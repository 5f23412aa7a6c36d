"""Gemma 4 (model_type gemma4, a vision-language model; gemma4_text, its language model alone).

transformers 5.25 (models/gemma4/modeling_gemma4.py, configuration_gemma4.py):

* ``AutoModelForCausalLM.from_config`` builds a gemma4 config as ``Gemma4ForConditionalGeneration``: the language
  model, a ``Gemma4VisionModel`` tower and ``Gemma4MultimodalEmbedder`` (``embed_vision``) when vision_config is set,
  an audio tower when audio_config is set.  As for Gemma 3 (families/gemma3.py) the tower is loaded and frozen and
  LoRA adapts the language model only (PEFT's own default for gemma4 is the regex
  ``.*language_model\\..*\\.(q_proj|v_proj)``, peft/utils/constants.py).
* ``Gemma4TextDecoderLayer``: Gemma 2's four RMSNorms, the norm computed in fp32 and multiplied by ``weight`` (not
  1 + weight) in fp32; ``q_norm``/``k_norm`` one head wide and a weightless ``v_norm``; attention scaling 1.0, no
  attention soft-capping; the layers are sliding (``sliding_window``) or full per ``layer_types``
  (``Gemma4TextConfig.__post_init__``: every 6th layer full when the file has none, and the last layer is forced to
  full).  A full-attention layer has ``global_head_dim``-wide heads (default 512) and, when ``attention_k_eq_v``,
  ``num_global_key_value_heads`` key/value heads and no ``v_proj``: the values are the key projection's output.
* ``enable_moe_block``: the dense GeGLU MLP (intermediate_size) runs on the pre-feedforward norm's output, and
  beside it ``Gemma4TextRouter`` (a weightless RMSNorm of the residual, times ``scale`` (hidden) and
  hidden^-0.5, ``proj`` an nn.Linear to num_experts, fp32 softmax, top_k_experts renormalised, times
  ``per_expert_scale``) and ``Gemma4TextExperts`` (fused 3-D gate_up_proj / down_proj, moe_intermediate_size) on
  ``pre_feedforward_layernorm_2`` of the residual; the two outputs are normed (``post_feedforward_layernorm_1``,
  ``_2``), summed and normed again.
* The final logits are soft-capped (final_logit_softcapping).

Refused, one line each, rather than guessed: per-layer input embeddings (``hidden_size_per_layer_input`` > 0, the
small "E" models), KV-shared layers (``num_kv_shared_layers`` > 0), an audio tower, ``use_bidirectional_attention``
"all" (an encoder), and images (the tower's variable-resolution activations are not modelled yet).
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelConfigError
from ..arch import ModelArch, MoE, VisionTower
from ..hf_config import (_bad, _check_fields, _req, build_arch, check_kv_heads, checked_layer_types, file_bool,
                         periodic_layer_types)
from .gemma3 import _with_defaults

# Gemma4TextConfig's class defaults (transformers 5.25) for the keys a config.json may leave out
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "tie_word_embeddings": True, "attention_bias": False, "sliding_window": 512,
    "final_logit_softcapping": None, "use_bidirectional_attention": None, "hidden_size_per_layer_input": 256,
    "attention_k_eq_v": False, "num_kv_shared_layers": 0, "enable_moe_block": False, "use_double_wide_mlp": False,
    "num_experts": None, "top_k_experts": None, "moe_intermediate_size": None,
}
GLOBAL_HEAD_DIM = 512  # Gemma4TextConfig.__post_init__: kwargs.pop("global_head_dim", 512)
SLIDING_WINDOW_PATTERN = 6  # Gemma4TextConfig.__post_init__: "by default 5:1"
# Gemma4VisionConfig's class defaults
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 16, "num_attention_heads": 12,
    "num_key_value_heads": 12, "head_dim": 64, "pooling_kernel_size": 3, "patch_size": 16,
    "position_embedding_size": 10 * 1024, "attention_bias": False,
}
# Gemma4ImageProcessor.max_soft_tokens: the soft tokens one image becomes by default (the config's
# vision_soft_tokens_per_image says the same for the published model)
SOFT_TOKENS_PER_IMAGE = 280
LAYER_KINDS = ("sliding_attention", "full_attention")
_VISION_INTS = {"hidden_size": (1, 65_536), "intermediate_size": (1, 1 << 20), "num_hidden_layers": (1, 1_024),
                "num_attention_heads": (1, 1_024), "num_key_value_heads": (1, 1_024), "head_dim": (1, 4_096),
                "pooling_kernel_size": (1, 64), "patch_size": (1, 1 << 12), "position_embedding_size": (1, 1 << 20)}
_MOE_INTS = {"num_experts": (2, 4_096), "top_k_experts": (1, 4_096), "moe_intermediate_size": (1, 1 << 20)}


def _refuse(source: str, what: str, hint: str) -> ModelConfigError:
    return ModelConfigError(f"{source}: {what} is not in the torch-free memory model for gemma4", hint, value=source)


def _int(cfg: dict[str, Any], key: str, low: int, high: int, source: str, where: str = "") -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(source, where + key, f"a whole number from {low:,} to {high:,}", value)
    return value


def _layer_types(cfg: dict[str, Any], layers: int, source: str) -> tuple[str, ...]:
    given = cfg.get("layer_types")
    if given is None:
        kinds = periodic_layer_types(layers, SLIDING_WINDOW_PATTERN, "sliding_attention")
    else:
        kinds = checked_layer_types(given, layers, LAYER_KINDS, source)
    return kinds[:-1] + ("full_attention",)  # Gemma4TextConfig.__post_init__ forces the last layer to full attention


def _vision(original: dict[str, Any], text_hidden: int, source: str) -> VisionTower:
    raw = original.get("vision_config")
    if not isinstance(raw, dict):
        raise _bad(source, "vision_config", "an object with the vision tower's fields", raw)
    kind = raw.get("model_type", "gemma4_vision")
    if kind != "gemma4_vision":
        raise _refuse(source, f"vision_config.model_type {kind!r}", "Gemma 4 uses its own tower (gemma4_vision)")
    v = _with_defaults(raw, VISION_DEFAULTS)
    for key, (low, high) in _VISION_INTS.items():
        _int(v, key, low, high, source, "vision_config.")
    if v.get("attention_bias"):
        raise _bad(source, "vision_config.attention_bias", "false (Gemma4VisionAttention builds no biases)", True)
    hv, heads, hd = v["hidden_size"], v["num_attention_heads"], v["head_dim"]
    if heads * hd != hv or v["num_key_value_heads"] != heads:
        # the memory model lays the tower's Linears out as SigLIP's (hidden x hidden attention projections)
        raise _refuse(source, f"a vision tower whose attention width ({heads} x {hd}, {v['num_key_value_heads']} kv heads) "
                              f"differs from its hidden size {hv}", "the published Gemma 4 towers have heads x head_dim = hidden")
    tokens = original.get("vision_soft_tokens_per_image", SOFT_TOKENS_PER_IMAGE)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= 1 << 16:
        raise _bad(source, "vision_soft_tokens_per_image", "a whole number from 1 to 65,536", tokens)
    k, p = v["pooling_kernel_size"], v["patch_size"]
    # Gemma4ImageProcessor (image_processing_gemma4.py get_aspect_ratio_preserving_size): a square image is resized
    # to the largest side that is a multiple of pooling_kernel x patch and patchifies to at most tokens x kernel^2
    side = int((tokens * k * k) ** 0.5) // k * k * p
    return VisionTower(
        model_type=kind, hidden_size=hv, num_layers=v["num_hidden_layers"], num_heads=heads,
        intermediate_size=v["intermediate_size"], patch_size=p, image_size=side, num_channels=3, use_head=False,
        tokens_per_image=tokens, text_hidden_size=text_hidden, head_dim=hd, num_kv_heads=v["num_key_value_heads"],
        position_embedding_size=v["position_embedding_size"], pooling_kernel_size=k,
    )


def _moe(cfg: dict[str, Any], source: str) -> MoE | None:
    if not cfg.get("enable_moe_block"):
        return None
    experts, top_k, inner = (_int(cfg, key, *_MOE_INTS[key], source) for key in _MOE_INTS)
    if top_k > experts:
        raise ModelConfigError(f"{source}: top_k_experts {top_k} is more than num_experts {experts}",
                               "a token is routed to some of the experts, at most all of them", value=source)
    # Gemma4TextRouter renormalises the top-k weights (then scales them per expert); Gemma4TextExperts has no biases
    return MoE(num_experts=experts, experts_per_token=top_k, expert_intermediate_size=inner, norm_topk_prob=True,
               dense_mlp=True)


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    """A gemma4 (vision + language) or gemma4_text config.json as transformers 5.25 builds it."""
    cfg = _with_defaults(text, TEXT_DEFAULTS)
    if cfg.get("hidden_size_per_layer_input"):
        raise _refuse(source, f"per-layer input embeddings (hidden_size_per_layer_input "
                              f"{cfg['hidden_size_per_layer_input']}, the small Gemma 4 'E' models)",
                      "only Gemma 4 configs with hidden_size_per_layer_input 0 are modelled")
    if cfg.get("num_kv_shared_layers"):
        raise _refuse(source, f"KV-shared layers (num_kv_shared_layers {cfg['num_kv_shared_layers']})",
                      "only Gemma 4 configs with num_kv_shared_layers 0 are modelled")
    if original.get("model_type") == "gemma4" and original.get("audio_config") is not None:
        raise _refuse(source, "the audio tower (audio_config)", "only Gemma 4 configs without an audio tower are modelled")
    if cfg.get("use_bidirectional_attention") == "all":
        raise ModelConfigError(f"{source}: use_bidirectional_attention is \"all\" (an encoder, not a causal LM)",
                               "the memory model covers causal language models", value=source)
    for key in ("attention_k_eq_v", "enable_moe_block"):
        if not isinstance(cfg.get(key), bool):
            raise _bad(source, key, "true or false", cfg.get(key))
    cfg["model_type"] = "gemma4_text"
    _check_fields({k: v for k, v in cfg.items() if k not in _MOE_INTS}, source, "gemma4_text")
    hidden, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    check_kv_heads(heads, kv_heads, source)
    head_dim = cfg["head_dim"]
    global_head_dim = text.get("global_head_dim", GLOBAL_HEAD_DIM)
    global_head_dim = GLOBAL_HEAD_DIM if global_head_dim is None else global_head_dim
    if not isinstance(global_head_dim, int) or isinstance(global_head_dim, bool) or not 1 <= global_head_dim <= 4_096:
        raise _bad(source, "global_head_dim", "a whole number from 1 to 4,096", global_head_dim)
    if global_head_dim < head_dim:
        raise _refuse(source, f"global_head_dim {global_head_dim} narrower than head_dim {head_dim}",
                      "Gemma 4's full-attention heads are at least as wide as its sliding ones")
    # Gemma4TextConfig.__post_init__: num_global_key_value_heads applies to the full layers only with attention_k_eq_v
    global_kv = text.get("num_global_key_value_heads") if cfg["attention_k_eq_v"] else None
    if global_kv is not None:
        if not isinstance(global_kv, int) or isinstance(global_kv, bool) or not 1 <= global_kv <= 1_024:
            raise _bad(source, "num_global_key_value_heads", "a whole number from 1 to 1,024", global_kv)
        check_kv_heads(heads, global_kv, source)
    layers = _req(cfg, "num_hidden_layers", source)
    layer_types = _layer_types(cfg, layers, source)
    moe = _moe(cfg, source)
    vision = None
    if original.get("model_type") == "gemma4" and original.get("vision_config") is not None:
        vision = _vision(original, hidden, source)
    multimodal = original.get("model_type") == "gemma4"
    # the composite model ties lm_head to the language model's embedding per Gemma4Config (default True)
    tie = file_bool(original, "tie_word_embeddings", True, source) if multimodal else cfg["tie_word_embeddings"]
    extra = 0
    if moe is not None:
        # post_feedforward_layernorm_1, post_feedforward_layernorm_2, pre_feedforward_layernorm_2 (hidden each), the
        # router's scale (hidden) and per_expert_scale (num_experts); its norm has no weight
        extra = 4 * hidden + moe.num_experts
    return build_arch(
        source,
        name=name,
        model_type="gemma4" if multimodal else "gemma4_text",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=bool(tie),
        qkv_bias=bool(cfg["attention_bias"]),
        o_bias=bool(cfg["attention_bias"]),
        activation=cfg.get("hidden_activation") or "gelu_pytorch_tanh",
        norms_per_layer=4,
        qk_norm=True,
        final_logit_softcap=cfg.get("final_logit_softcapping"),
        sliding_window=cfg["sliding_window"] if "sliding_attention" in layer_types else None,
        layer_types=layer_types,
        global_head_dim=global_head_dim,
        global_kv_heads=global_kv,
        attention_k_eq_v=cfg["attention_k_eq_v"],
        moe=moe,
        extra_layer_params=extra,
        vision=vision,
        hf_config_json=json.dumps(original),
    )
