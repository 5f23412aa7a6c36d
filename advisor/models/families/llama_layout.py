"""Families whose decoder layer is Llama's in all the memory model sees: OLMo 2 / OLMo 3, SmolLM3, Granite
and ERNIE 4.5 (dense).  (Ministral 8B ships as model_type mistral; transformers 5.25's own "ministral" class
does not build from its defaults, so it is left to the mistral reader.)

Each is read as the Llama it resembles, then given what differs: its model_type, its bias
switch, OLMo's full-width q/k norms (RMSNorm over all heads at once: q_dim + kv_dim weights where Qwen3's
per-head norms have 2 x head_dim), the per-layer sliding/full pattern its config class computes, and the
verbatim file for the oracle.  tests/test_derived.py checks each against the shapes transformers builds
(the derived path) and against the oracle; this reader makes them work without torch, and fast.

Defaults: transformers 5.25 ``models/<type>/configuration_<type>.py`` (the dataclass field defaults), for
the keys a config.json may leave out.
"""

from __future__ import annotations

import json
from typing import Any

from ..arch import ModelArch
from . import READERS

_OLMO = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008,
             vocab_size=50304, max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False)
DEFAULTS: dict[str, dict[str, Any]] = {
    "olmo2": _OLMO,
    "olmo3": {**_OLMO, "sliding_window": 4096},
    "smollm3": dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=4,
                    intermediate_size=11008, vocab_size=128256, max_position_embeddings=32768,
                    tie_word_embeddings=True, attention_bias=False, mlp_bias=False, use_sliding_window=False),
    "granite": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008,
                    vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False, attention_bias=False,
                    mlp_bias=False),
    "ernie4_5": dict(hidden_size=1024, num_hidden_layers=18, num_attention_heads=16, num_key_value_heads=2,
                     head_dim=128, intermediate_size=3072, vocab_size=103424, max_position_embeddings=131072,
                     tie_word_embeddings=True, use_bias=False),
}


LAYER_KINDS = ("full_attention", "sliding_attention")


def _layer_types(model_type: str, cfg: dict[str, Any], layers: int, source: str) -> tuple[str, ...] | None:
    """The per-layer attention kinds: the file's (one per layer, refused otherwise, as transformers' config
    validation does), or as the config class computes them when the file has none."""
    from ..hf_config import checked_layer_types, periodic_layer_types

    given = cfg.get("layer_types")
    if given is not None:
        return checked_layer_types(given, layers, LAYER_KINDS, source)
    if model_type == "olmo3":
        return periodic_layer_types(layers, 4, "sliding_attention")
    if model_type == "smollm3":
        no_rope = cfg.get("no_rope_layers") if isinstance(cfg.get("no_rope_layers"), list) else []
        sliding = bool(cfg.get("use_sliding_window") and cfg.get("sliding_window"))
        return tuple("sliding_attention" if sliding and i < len(no_rope) and not no_rope[i] else "full_attention"
                     for i in range(layers))
    return None


def read(original: dict[str, Any], text: dict[str, Any], name: str, source: str) -> ModelArch:
    from ..hf_config import arch_from_config

    model_type = text["model_type"]
    cfg = {**DEFAULTS[model_type], **{k: v for k, v in text.items() if v is not None}}
    as_llama = {k: v for k, v in cfg.items() if k not in ("layer_types", "use_bias")}
    if model_type == "ernie4_5":  # one switch for every projection's bias (modeling_ernie4_5.py)
        as_llama["attention_bias"] = as_llama["mlp_bias"] = bool(cfg.get("use_bias", False))
    as_llama["model_type"] = "llama"
    base = arch_from_config(as_llama, name=name, source=source)
    layer_types = _layer_types(model_type, cfg, base.num_layers, source)
    sliding = cfg.get("sliding_window") if layer_types and "sliding_attention" in layer_types else None
    update: dict[str, Any] = {"model_type": model_type, "layer_types": layer_types, "sliding_window": sliding,
                              "hf_config_json": json.dumps(original)}
    if model_type in ("olmo2", "olmo3"):
        # Olmo2Attention: q_norm = RMSNorm(num_heads * head_dim), k_norm = RMSNorm(num_kv_heads * head_dim)
        update["qk_norm"] = True
        update["extra_layer_params"] = base.q_dim + base.kv_dim - 2 * base.head_dim
    return base.model_copy(update=update)


for _type in DEFAULTS:
    READERS[_type] = read
