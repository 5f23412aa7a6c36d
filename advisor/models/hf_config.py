"""config.json <-> ModelArch.

Defaults follow the transformers config classes of each model_type, so a config.json that leaves a key
out means what transformers would make of it.  ``to_hf_config`` is the inverse, used to build a model
(with random weights) for the verification run and the fake-tensor oracle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ModelConfigError
from .arch import ModelArch, MoE

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral")

# Per model_type: (default tie_word_embeddings, qkv bias rule, norms per layer, default head_dim or None)
_TIED_BY_DEFAULT = {"gemma", "gemma2"}


def _req(cfg: dict[str, Any], key: str, source: str) -> Any:
    if key not in cfg:
        raise ModelConfigError(f"{source}: config.json has no {key!r}", "is this a causal LM config.json from the model's repository?")
    return cfg[key]


def arch_from_config(cfg: dict[str, Any], name: str, source: str | None = None) -> ModelArch:
    """Read a config.json dict.  ``source`` names the file in error messages."""
    source = source or name
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelConfigError(
            f"{source}: model_type {model_type!r} is not supported",
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    hidden = _req(cfg, "hidden_size", source)
    heads = _req(cfg, "num_attention_heads", source)
    default_head_dim = 256 if model_type in ("gemma", "gemma2") else 128 if model_type == "qwen3" else hidden // heads
    head_dim = cfg.get("head_dim") or default_head_dim
    attention_bias = bool(cfg.get("attention_bias", False))
    qkv_bias = True if model_type == "qwen2" else attention_bias and model_type not in ("phi3",)
    o_bias = attention_bias and model_type in ("llama", "qwen3", "gemma", "gemma2")
    activation = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    sliding_window = cfg.get("sliding_window")
    if model_type in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
        sliding_window = None  # their configs carry a window that is off unless use_sliding_window
    if model_type in ("llama", "gemma"):
        sliding_window = None
    moe = None
    if model_type == "mixtral":
        moe = MoE(
            num_experts=_req(cfg, "num_local_experts", source),
            experts_per_token=_req(cfg, "num_experts_per_tok", source),
            expert_intermediate_size=_req(cfg, "intermediate_size", source),
        )
    try:
        return ModelArch(
            name=name,
            model_type=model_type,
            hidden_size=hidden,
            num_layers=_req(cfg, "num_hidden_layers", source),
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            intermediate_size=_req(cfg, "intermediate_size", source),
            vocab_size=_req(cfg, "vocab_size", source),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) and model_type == "llama",
            activation=activation,
            norms_per_layer=4 if model_type == "gemma2" else 2,
            qk_norm=model_type == "qwen3",
            fused_qkv=model_type == "phi3",
            fused_gate_up=model_type == "phi3",
            final_logit_softcap=cfg.get("final_logit_softcapping") if model_type == "gemma2" else None,
            attn_logit_softcap=cfg.get("attn_logit_softcapping") if model_type == "gemma2" else None,
            sliding_window=sliding_window,
            moe=moe,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ModelConfigError(f"{source}: {where}: {first['msg']}", "check the values in config.json") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Load a config.json, reporting a syntax error with its line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{path}: line {exc.lineno}, column {exc.colno}: {exc.msg}", "config.json must be valid JSON") from None
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{path}: expected a JSON object at the top level", "config.json must be a JSON object")
    return cfg


def to_hf_config(arch: ModelArch) -> dict[str, Any]:
    """The config.json that builds this architecture in transformers."""
    cfg: dict[str, Any] = {
        "model_type": arch.model_type,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "intermediate_size": arch.intermediate_size,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "hidden_act": arch.activation,
    }
    if arch.model_type == "llama":
        cfg["attention_bias"] = arch.qkv_bias
        cfg["mlp_bias"] = arch.mlp_bias
    elif arch.model_type in ("qwen3", "gemma", "gemma2"):
        cfg["attention_bias"] = arch.qkv_bias
    if arch.model_type in ("gemma", "gemma2"):
        cfg["hidden_activation"] = arch.activation
    if arch.model_type == "gemma2":
        cfg["final_logit_softcapping"] = arch.final_logit_softcap
        cfg["attn_logit_softcapping"] = arch.attn_logit_softcap
        cfg["query_pre_attn_scalar"] = arch.head_dim
    if arch.model_type in ("mistral", "mixtral", "phi3", "gemma2", "qwen2", "qwen3"):
        cfg["sliding_window"] = arch.sliding_window
        if arch.model_type in ("qwen2", "qwen3"):
            cfg["use_sliding_window"] = arch.sliding_window is not None
    if arch.moe is not None:
        cfg["num_local_experts"] = arch.moe.num_experts
        cfg["num_experts_per_tok"] = arch.moe.experts_per_token
        cfg["intermediate_size"] = arch.moe.expert_intermediate_size
    return cfg
