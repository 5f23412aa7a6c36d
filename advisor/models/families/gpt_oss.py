"""gpt-oss (model_type gpt_oss): GQA attention with biases and a learned sink per head, sliding (window 128) and
full attention layers alternating, and a top-k MoE of fused expert tensors with biases and a clamped SwiGLU.

transformers 5.25 (models/gpt_oss/modeling_gpt_oss.py): ``GptOssAttention`` (q/k/v/o nn.Linear with bias,
``sinks`` Parameter (num_heads,)), ``GptOssTopKRouter`` (``mlp.router``: weight (E, hidden) and bias (E,), bare
Parameters, not an nn.Linear), ``GptOssExperts`` (``mlp.experts``: gate_up_proj (E, hidden, 2*inter) interleaved
gate/up, gate_up_proj_bias (E, 2*inter), down_proj (E, inter, hidden), down_proj_bias (E, hidden)).  No SDPA path
(``_supports_sdpa = False``): the default is eager attention.  Defaults are ``GptOssConfig``'s
(configuration_gpt_oss.py).

The released checkpoints store the experts in MXFP4 (``quantization_config.quant_method = "mxfp4"``).  transformers'
``Mxfp4HfQuantizer.is_trainable`` is False: a training run loads them with ``Mxfp4Config(dequantize=True)`` (and
without the triton kernels transformers dequantizes them anyway, ``validate_environment``), so a LoRA or full run
holds bf16 experts.  The reader records the checkpoint format (``ModelArch.checkpoint_quant``) for the estimate's
note; every byte is counted 16-bit.
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelConfigError
from ..arch import ModelArch, MoE
from ..hf_config import (_HINT, _bad, _check_fields, _req, build_arch, check_kv_heads, checked_layer_types,
                         periodic_layer_types)

# GptOssConfig's class defaults (transformers 5.25) for the keys a config.json may leave out
DEFAULTS: dict[str, Any] = {
    "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880, "head_dim": 64, "num_attention_heads": 64,
    "num_key_value_heads": 8, "sliding_window": 128, "tie_word_embeddings": False, "hidden_act": "silu",
    "max_position_embeddings": 131072, "num_local_experts": 128, "num_experts_per_tok": 4, "swiglu_limit": 7.0,
    "attention_bias": True, "layer_types": None,
}
LAYER_TYPES = ("sliding_attention", "full_attention")


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    cfg = {**DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    if text.get("sliding_window", 0) is None:
        cfg["sliding_window"] = None
    if "head_dim" in text and text["head_dim"] is None:  # GptOssConfig.__post_init__: hidden_size // heads
        cfg["head_dim"] = None
    _check_fields({k: v for k, v in cfg.items() if k not in ("num_local_experts", "num_experts_per_tok")}, source,
                  "gpt_oss")
    hidden = _req(cfg, "hidden_size", source)
    heads = _req(cfg, "num_attention_heads", source)
    kv_heads = cfg["num_key_value_heads"] or heads
    if cfg["head_dim"] is None:
        if hidden % heads:
            raise ModelConfigError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                                   f"without head_dim gpt-oss splits the hidden size over the heads; {_HINT}", value=source)
        cfg["head_dim"] = hidden // heads
    check_kv_heads(heads, kv_heads, source)
    experts, top_k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    for key, value, low in (("num_local_experts", experts, 2), ("num_experts_per_tok", top_k, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 4_096:
            raise _bad(source, key, f"a whole number from {low} to 4,096", value)
    if top_k > experts:
        raise ModelConfigError(f"{source}: num_experts_per_tok {top_k} is more than num_local_experts {experts}",
                               "a token is routed to some of the experts, at most all of them", value=source)
    limit = cfg["swiglu_limit"]
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 0 < limit <= 1e6:
        raise _bad(source, "swiglu_limit", "a number above 0 and at most 1e6", limit)
    layers = _req(cfg, "num_hidden_layers", source)
    if cfg["layer_types"] is None:  # GptOssConfig.__post_init__: sliding first, then alternating
        layer_types = periodic_layer_types(layers, 2, "sliding_attention")
    else:
        layer_types = checked_layer_types(cfg["layer_types"], layers, LAYER_TYPES, source)
    window = cfg["sliding_window"] if "sliding_attention" in layer_types else None
    if "sliding_attention" in layer_types and window is None:
        raise ModelConfigError(f"{source}: sliding_attention layers without a sliding_window", _HINT, value=source)
    quant = cfg.get("quantization_config")
    checkpoint_quant = None
    if isinstance(quant, dict) and quant.get("quant_method") == "mxfp4":
        checkpoint_quant = "mxfp4"
    elif quant is not None:
        raise _bad(source, "quantization_config", "the released checkpoints' mxfp4 (or none)", quant)
    return build_arch(
        source,
        name=name,
        model_type="gpt_oss",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=cfg["head_dim"],
        intermediate_size=_req(cfg, "intermediate_size", source),
        vocab_size=_req(cfg, "vocab_size", source),
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
        qkv_bias=bool(cfg["attention_bias"]),
        o_bias=bool(cfg["attention_bias"]),
        activation=cfg["hidden_act"],
        sliding_window=window,
        layer_types=layer_types,
        attention_sinks=True,
        checkpoint_quant=checkpoint_quant,
        moe=MoE(num_experts=experts, experts_per_token=top_k, expert_intermediate_size=cfg["intermediate_size"],
                norm_topk_prob=True, router_bias=True, expert_bias=True, swiglu_limit=float(limit)),
        hf_config_json=json.dumps(original),
    )
