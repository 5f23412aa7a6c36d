"""Qwen3-Next (model_type qwen3_next): Qwen3.5-MoE's hybrid layout one generation earlier.

transformers 5.25 (models/qwen3_next/modeling_qwen3_next.py) builds, per ``layer_types`` (computed from
``full_attention_interval``, default 4, when the file has none: configuration_qwen3_next.py __post_init__):

* ``linear_attention`` layers: ``Qwen3NextGatedDeltaNet``.  Where Qwen3.5 has four input Linears (in_proj_qkv,
  in_proj_z, in_proj_b, in_proj_a), Qwen3-Next has two: ``in_proj_qkvz`` (h -> 2 key_dim + 2 value_dim) and
  ``in_proj_ba`` (h -> 2 value heads), whose outputs are grouped per key head and pulled apart by
  ``fix_query_key_value_ordering`` (views, then reshape copies of q, k, v, z, b, a and a cat of q, k, v for the
  conv).  The conv1d (no bias), dt_bias, A_log, the gated RMSNorm (one value head wide) and out_proj are Qwen3.5's,
  and so is the torch fallback of the chunked gated delta rule.
* ``full_attention`` layers: ``Qwen3NextAttention``, Qwen3.5's: q_proj 2 x heads x head_dim (the second half a
  sigmoid gate on the attention output), per-head q/k RMSNorm, partial RoPE.
* every RMSNorm but the gated one is ``x * (1 + w)`` in fp32 (Qwen3NextRMSNorm, as Qwen3_5RMSNorm).
* the MLP: ``Qwen3NextSparseMoeBlock`` on layer i when i is not in ``mlp_only_layers`` and
  ``num_experts > 0 and (i + 1) % decoder_sparse_step == 0``, else a dense ``Qwen3NextMLP`` of intermediate_size.
  The sparse block is Qwen3.5-MoE's: a bare router weight (``Qwen3NextTopKRouter``, softmax in fp32, top-k,
  renormalised when ``norm_topk_prob``), fused 3-D experts, a shared expert (an MLP of
  shared_expert_intermediate_size) scaled by sigmoid(``shared_expert_gate``: nn.Linear h -> 1).

Every released checkpoint routes every layer (decoder_sparse_step 1, mlp_only_layers []), so the shared expert
is read as the layer's dense MLP, as for Qwen3.5-MoE; dense layers among the sparse ones, a dense model
(num_experts 0) and the auxiliary router loss (output_router_logits) are refused rather than guessed.  The MTP
head (``mtp.*`` weights in the checkpoint) is not built by transformers (``_keys_to_ignore_on_load_unexpected``).
Defaults are those of ``Qwen3NextConfig`` (configuration_qwen3_next.py).
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import ModelConfigError
from ..arch import ModelArch
from ..hf_config import _bad, _check_fields, _req, build_arch, check_kv_heads
from .qwen3_5 import _LINEAR_INTS, _MOE_INTS, _int, _layer_types, linear_attention, routed_experts

# Qwen3NextConfig's class defaults (transformers 5.25) for the keys a config.json may leave out
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151_936, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 48,
    "num_attention_heads": 16, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 32_768,
    "tie_word_embeddings": False, "attention_bias": False, "head_dim": 256, "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_num_key_heads": 16,
    "linear_num_value_heads": 32, "decoder_sparse_step": 1, "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512, "num_experts_per_tok": 10, "num_experts": 512, "norm_topk_prob": True,
    "output_router_logits": False, "mlp_only_layers": None, "layer_types": None,
}
_ROUTING_KEYS = ("decoder_sparse_step", "mlp_only_layers", "norm_topk_prob", "output_router_logits")
_RELEASED_LAYOUT = "every released Qwen3-Next routes every layer (decoder_sparse_step 1, mlp_only_layers [])"


def _moe_layers(cfg: dict[str, Any], layers: int, source: str) -> None:
    """Refuse a layout with dense MLP layers: Qwen3NextDecoderLayer's choice, made per layer index."""
    experts = cfg["num_experts"]
    if not isinstance(experts, int) or isinstance(experts, bool) or experts < 0:
        raise _bad(source, "num_experts", "a whole number of experts", experts)
    if experts == 0:
        # num_experts 0 makes every layer a dense Qwen3NextMLP of intermediate_size; PEFT would still map the MLP's
        # gate/up/down_proj targets onto (absent) fused experts (transformers maps qwen3_next to qwen2_moe's conversion)
        raise ModelConfigError(f"{source}: num_experts 0 (a dense Qwen3-Next) is not in the torch-free memory model",
                               _RELEASED_LAYOUT, value=source)
    step = cfg["decoder_sparse_step"]
    if not isinstance(step, int) or isinstance(step, bool) or not 1 <= step <= 1_024:
        raise _bad(source, "decoder_sparse_step", "a whole number from 1 to 1,024", step)
    dense = cfg["mlp_only_layers"] or []
    if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
        raise _bad(source, "mlp_only_layers", "a list of layer indices", dense)
    dense_here = sorted(i for i in dense if 0 <= i < layers)
    if step != 1 or dense_here:
        raise ModelConfigError(
            f"{source}: dense MLP layers among the MoE layers (mlp_only_layers {dense_here}, decoder_sparse_step "
            f"{step}) are not in the torch-free memory model", _RELEASED_LAYOUT, value=source)


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    """A qwen3_next config.json as transformers 5.25 builds it for causal-LM training."""
    cfg = {**DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
    _check_fields({k: v for k, v in cfg.items() if k not in _LINEAR_INTS and k not in _MOE_INTS
                   and k not in _ROUTING_KEYS}, source, "qwen3_next")
    hidden = _req(cfg, "hidden_size", source)
    heads = _req(cfg, "num_attention_heads", source)
    kv_heads = _req(cfg, "num_key_value_heads", source)
    check_kv_heads(heads, kv_heads, source)
    layers = _req(cfg, "num_hidden_layers", source)
    _moe_layers(cfg, layers, source)
    norm_topk = cfg["norm_topk_prob"]
    if not isinstance(norm_topk, bool):
        raise _bad(source, "norm_topk_prob", "true or false", norm_topk)
    if cfg["output_router_logits"] is not False:
        # Qwen3NextForCausalLM then keeps every layer's router logits and adds load_balancing_loss_func's aux loss
        raise ModelConfigError(f"{source}: output_router_logits {json.dumps(cfg['output_router_logits'])} (the router's "
                               "auxiliary loss) is not in the torch-free memory model",
                               "the released configs set it to false; so do the usual fine-tuning recipes", value=source)
    return build_arch(
        source,
        name=name,
        model_type="qwen3_next",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=_int(cfg, "head_dim", source),
        # the layer's dense MLP is the sparse block's shared expert (the config's intermediate_size is the width of
        # dense layers, which the refusal above rules out)
        intermediate_size=_int(cfg, "shared_expert_intermediate_size", source),
        vocab_size=_req(cfg, "vocab_size", source),
        max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=cfg["tie_word_embeddings"],
        qkv_bias=cfg["attention_bias"],
        o_bias=cfg["attention_bias"],  # Qwen3NextAttention: o_proj's bias is attention_bias too
        activation=cfg["hidden_act"],
        qk_norm=True,
        layer_types=_layer_types(cfg, layers, source),
        linear_attention=linear_attention(cfg, source, family="Qwen3-Next", fused_projections=True),
        moe=routed_experts(cfg, source, norm_topk_prob=norm_topk),
        attn_output_gate=True,  # Qwen3NextAttention always builds the gated q_proj
        hf_config_json=json.dumps(original),
    )
