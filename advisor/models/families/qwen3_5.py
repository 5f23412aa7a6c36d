"""Qwen3.5 dense (model_type qwen3_5, a vision-language config whose language model is qwen3_5_text).

transformers 5.25 (models/qwen3_5/modeling_qwen3_5.py): ``layer_types`` mixes ``linear_attention`` layers
(``Qwen3_5GatedDeltaNet``: in_proj_qkv (h -> 2 key_dim + value_dim), in_proj_z (h -> value_dim), in_proj_b and
in_proj_a (h -> value heads), a depthwise causal Conv1d over the qkv channels without bias, dt_bias and A_log (one
per value head), a gated RMSNorm of one value head's width, out_proj (value_dim -> h)) with ``full_attention`` layers
(``Qwen3_5Attention``: q_proj is 2 x heads x head_dim wide, its second half a sigmoid gate on the attention output;
per-head q/k RMSNorm).  Every RMSNorm but the gated one is ``x * (1 + w)`` in fp32 (Qwen3_5RMSNorm).  The
config class computes ``layer_types`` from ``full_attention_interval`` (default 4: three linear layers, then a
full one) when the file has none.

``AutoModelForCausalLM.from_config`` on a qwen3_5 config builds the text-only ``Qwen3_5ForCausalLM`` from its
text_config (models/auto/modeling_auto.py maps qwen3_5 to it): no vision tower is loaded, so the estimate, the
oracle and the exports count the language model only.  The MTP head (``mtp_num_hidden_layers``) is not built.
Defaults are those of ``Qwen3_5TextConfig`` (configuration_qwen3_5.py).
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelConfigError
from ..arch import LinearAttention, ModelArch, MoE
from ..hf_config import (_HINT, _bad, _check_fields, _req, build_arch, check_kv_heads, checked_layer_types,
                         file_bool, periodic_layer_types)

# Qwen3_5TextConfig's class defaults (transformers 5.25) for the keys a config.json may leave out
DEFAULTS: dict[str, Any] = {
    "vocab_size": 248_320, "hidden_size": 4096, "intermediate_size": 12_288, "num_hidden_layers": 32,
    "num_attention_heads": 16, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32_768,
    "tie_word_embeddings": False, "attention_bias": False, "head_dim": 256, "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_num_key_heads": 16,
    "linear_num_value_heads": 32, "layer_types": None,
}
# Qwen3_5MoeTextConfig's (configuration_qwen3_5_moe.py): no dense MLP; a routed MoE and one shared expert per layer
MOE_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in DEFAULTS.items() if k != "intermediate_size"}, "hidden_size": 2048, "num_hidden_layers": 40,
    "num_attention_heads": 16, "num_key_value_heads": 2, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "num_experts_per_tok": 8, "num_experts": 256,
}
_MOE_INTS = {"num_experts": (2, 4_096), "num_experts_per_tok": (1, 4_096), "moe_intermediate_size": (1, 1 << 20),
             "shared_expert_intermediate_size": (1, 1 << 20)}
MOE_TYPES = ("qwen3_5_moe", "qwen3_5_moe_text")
FULL_ATTENTION_INTERVAL = 4  # Qwen3_5TextConfig.__post_init__: kwargs.pop("full_attention_interval", 4)
LAYER_KINDS = ("linear_attention", "full_attention")
_LINEAR_INTS = {"linear_conv_kernel_dim": (1, 64), "linear_key_head_dim": (1, 4_096), "linear_value_head_dim": (1, 4_096),
                "linear_num_key_heads": (1, 1_024), "linear_num_value_heads": (1, 1_024), "head_dim": (1, 4_096)}


def _int(cfg: dict[str, Any], key: str, source: str) -> int:
    low, high = {**_LINEAR_INTS, **_MOE_INTS}[key]
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(source, key, f"a whole number from {low:,} to {high:,}", value)
    return value


def _layer_types(cfg: dict[str, Any], layers: int, source: str) -> tuple[str, ...]:
    given = cfg.get("layer_types")
    if given is None:
        interval = cfg.get("full_attention_interval", FULL_ATTENTION_INTERVAL)
        if not isinstance(interval, int) or isinstance(interval, bool) or not 1 <= interval <= 1_024:
            raise _bad(source, "full_attention_interval", "a whole number from 1 to 1,024", interval)
        return periodic_layer_types(layers, interval, "linear_attention")
    return checked_layer_types(given, layers, LAYER_KINDS, source)


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    """A qwen3_5 (or qwen3_5_text) config.json as transformers 5.25 builds it for causal-LM training."""
    moe_model = text.get("model_type") in MOE_TYPES or original.get("model_type") in MOE_TYPES
    cfg = {**(MOE_DEFAULTS if moe_model else DEFAULTS), **{k: v for k, v in text.items() if v is not None}}
    moe = None
    if moe_model:
        # Qwen3_5MoeSparseMoeBlock: a top-k router (a bare weight, probabilities always renormalised over the k),
        # fused 3-D experts, and a shared expert (a dense MLP of shared_expert_intermediate_size, nn.Linear) whose
        # output a sigmoid of shared_expert_gate (h -> 1) scales; the shared expert is read as the layer's dense MLP
        moe = routed_experts(cfg, source, norm_topk_prob=True)
        cfg["intermediate_size"] = _int(cfg, "shared_expert_intermediate_size", source)
    _check_fields({k: v for k, v in cfg.items() if k not in _LINEAR_INTS and k not in _MOE_INTS}, source,
                  "qwen3_5_moe_text" if moe_model else "qwen3_5_text")
    hidden = _req(cfg, "hidden_size", source)
    heads = _req(cfg, "num_attention_heads", source)
    kv_heads = _req(cfg, "num_key_value_heads", source)
    check_kv_heads(heads, kv_heads, source)
    linear = linear_attention(cfg, source)
    layers = _req(cfg, "num_hidden_layers", source)
    layer_types = _layer_types(cfg, layers, source)
    # the text-only model ties per the text config; the composite file's top-level key is what it was saved with
    tie = file_bool(original, "tie_word_embeddings", cfg["tie_word_embeddings"], source)
    if tie != cfg["tie_word_embeddings"] and "tie_word_embeddings" in text:
        raise ModelConfigError(f"{source}: tie_word_embeddings differs between the file and its text_config",
                               _HINT, value=source)
    return build_arch(
        source,
        name=name,
        model_type="qwen3_5_moe" if moe_model else "qwen3_5",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=_int(cfg, "head_dim", source),
        intermediate_size=_req(cfg, "intermediate_size", source),
        vocab_size=_req(cfg, "vocab_size", source),
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=tie,
        qkv_bias=bool(cfg["attention_bias"]),
        o_bias=bool(cfg["attention_bias"]),
        activation=cfg["hidden_act"],
        qk_norm=True,
        layer_types=layer_types,
        linear_attention=linear,
        moe=moe,
        attn_output_gate=True,  # Qwen3_5Attention always builds the gated q_proj (attn_output_gate is not read)
        hf_config_json=json.dumps(original),
    )


# --- shared with families/qwen3_next.py (Qwen3-Next: the same Gated DeltaNet, gated attention and MoE block)

def linear_attention(cfg: dict[str, Any], source: str, family: str = "Qwen3.5",
                     fused_projections: bool = False) -> LinearAttention:
    """The Gated DeltaNet mixer's shapes from linear_* keys (defaults already applied), with the layouts the memory
    model does not cover refused."""
    linear = LinearAttention(
        num_key_heads=_int(cfg, "linear_num_key_heads", source),
        num_value_heads=_int(cfg, "linear_num_value_heads", source),
        key_head_dim=_int(cfg, "linear_key_head_dim", source),
        value_head_dim=_int(cfg, "linear_value_head_dim", source),
        conv_kernel=_int(cfg, "linear_conv_kernel_dim", source),
        fused_projections=fused_projections,
    )
    if linear.num_value_heads % linear.num_key_heads:
        # torch_chunk_gated_delta_rule repeats each q/k head over num_v_heads // num_k_heads value heads
        raise ModelConfigError(f"{source}: linear_num_value_heads {linear.num_value_heads} is not a multiple of "
                               f"linear_num_key_heads {linear.num_key_heads}", _HINT, value=source)
    if linear.key_head_dim != linear.value_head_dim:
        raise ModelConfigError(f"{source}: linear_key_head_dim {linear.key_head_dim} differs from linear_value_head_dim "
                               f"{linear.value_head_dim}: not in the torch-free memory model",
                               f"every released {family} uses 128 for both", value=source)
    return linear


def routed_experts(cfg: dict[str, Any], source: str, norm_topk_prob: bool) -> MoE:
    """The routed experts of a Qwen3.5-MoE / Qwen3-Next sparse block (the shared expert is the arch's dense MLP)."""
    experts, top_k = _int(cfg, "num_experts", source), _int(cfg, "num_experts_per_tok", source)
    if top_k > experts:
        raise ModelConfigError(f"{source}: num_experts_per_tok {top_k} is more than num_experts {experts}",
                               "a token is routed to some of the experts, at most all of them", value=source)
    return MoE(num_experts=experts, experts_per_token=top_k,
               expert_intermediate_size=_int(cfg, "moe_intermediate_size", source), norm_topk_prob=norm_topk_prob)
