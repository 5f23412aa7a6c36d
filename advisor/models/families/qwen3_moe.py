"""Qwen3-MoE (model_type qwen3_moe): Qwen3's attention (GQA, per-head q/k RMSNorm) with a top-k MoE MLP.

transformers 5.25 (models/qwen3_moe/modeling_qwen3_moe.py) builds every MoE layer as
``Qwen3MoeSparseMoeBlock``: a ``Qwen3MoeTopKRouter`` (``gate``: a bare weight Parameter, num_experts x hidden,
no bias; not an nn.Linear) and ``Qwen3MoeExperts`` (``experts``: fused 3-D Parameters gate_up_proj
(E, 2*moe_intermediate, hidden) and down_proj (E, hidden, moe_intermediate)), exactly Mixtral's layout, so
the memory model's MoE terms apply.  Defaults are those of ``Qwen3MoeConfig`` (configuration_qwen3_moe.py).
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelConfigError
from ..arch import ModelArch, MoE
from ..hf_config import _HINT, _bad, _check_fields, _req, build_arch, check_kv_heads

# Qwen3MoeConfig's class defaults (transformers 5.25) for the keys a config.json may leave out
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 24,
    "num_attention_heads": 32, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32768,
    "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False, "sliding_window": 4096,
    "decoder_sparse_step": 1, "moe_intermediate_size": 768, "num_experts_per_tok": 8, "num_experts": 128,
    "norm_topk_prob": False, "mlp_only_layers": None,
}
_MOE_INTS = {"num_experts": (2, 4_096), "num_experts_per_tok": (1, 4_096), "moe_intermediate_size": (1, 1 << 20),
             "decoder_sparse_step": (1, 1_024)}


def _int_field(cfg: dict[str, Any], key: str, source: str) -> int:
    low, high = _MOE_INTS[key]
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(source, key, f"a whole number from {low:,} to {high:,}", value)
    return value


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    cfg = {**DEFAULTS, **{k: v for k, v in text.items() if v is not None or k in ("sliding_window", "mlp_only_layers")}}
    # num_key_value_heads / head_dim: null means the family's default (transformers reads them that way)
    _check_fields({k: v for k, v in cfg.items() if k not in _MOE_INTS and k != "num_experts_per_tok"}, source, "qwen3_moe")
    hidden = _req(cfg, "hidden_size", source)
    heads = _req(cfg, "num_attention_heads", source)
    kv_heads = cfg.get("num_key_value_heads") or heads
    check_kv_heads(heads, kv_heads, source)
    # Qwen3MoeAttention: getattr(config, "head_dim", hidden_size // num_attention_heads)
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ModelConfigError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                                   f"without head_dim Qwen3-MoE splits the hidden size over the heads; {_HINT}", value=source)
        head_dim = hidden // heads
    experts = _int_field(cfg, "num_experts", source)
    top_k = _int_field(cfg, "num_experts_per_tok", source)
    if top_k > experts:
        raise ModelConfigError(f"{source}: num_experts_per_tok {top_k} is more than num_experts {experts}",
                               "a token is routed to some of the experts, at most all of them", value=source)
    step = _int_field(cfg, "decoder_sparse_step", source)
    dense = cfg.get("mlp_only_layers") or []
    if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
        raise _bad(source, "mlp_only_layers", "a list of layer indices", dense)
    layers = _req(cfg, "num_hidden_layers", source)
    if any(0 <= i < layers for i in dense) or step != 1:
        # Qwen3MoeDecoderLayer builds a dense Qwen3MoeMLP for those layers; no released checkpoint has them
        raise ModelConfigError(
            f"{source}: dense MLP layers among the MoE layers (mlp_only_layers {dense}, decoder_sparse_step {step}) "
            "are not in the torch-free memory model",
            "Qwen3-MoE checkpoints route every layer (mlp_only_layers [], decoder_sparse_step 1)", value=source)
    norm_topk = cfg.get("norm_topk_prob")
    if not isinstance(norm_topk, bool):
        raise _bad(source, "norm_topk_prob", "true or false", norm_topk)
    sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None  # Qwen3MoeConfig.__post_init__
    return build_arch(
        source,
        name=name,
        model_type="qwen3_moe",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_req(cfg, "intermediate_size", source),  # the dense MLP's (unused without dense layers)
        vocab_size=_req(cfg, "vocab_size", source),
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=bool(cfg["tie_word_embeddings"]),
        qkv_bias=bool(cfg["attention_bias"]),
        o_bias=bool(cfg["attention_bias"]),
        activation=cfg["hidden_act"],
        qk_norm=True,
        sliding_window=sliding,
        moe=MoE(num_experts=experts, experts_per_token=top_k,
                expert_intermediate_size=_int_field(cfg, "moe_intermediate_size", source), norm_topk_prob=norm_topk),
        hf_config_json=json.dumps(original),
    )
