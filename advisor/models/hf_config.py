"""config.json <-> ModelArch.

Defaults follow the transformers config classes of each model_type, so a config.json that leaves a key
out means what transformers would make of it.  ``to_hf_config`` is the inverse, used to build a model
(with random weights) for the verification run and the fake-tensor oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..bounded import load_json, read_text, shown
from ..errors import ModelConfigError
from .arch import ModelArch, MoE

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "mixtral")

# Per model_type: (default tie_word_embeddings, qkv bias rule, norms per layer, default head_dim or None)
_TIED_BY_DEFAULT = {"gemma", "gemma2"}


# The config.json fields the advisor reads, each with its type and the range any real model falls in.  A value
# outside it is refused (exit 2, naming the field), never clamped or replaced: 10^6 layers or a 10^7 hidden size
# describe no model and would make the planner run for minutes.
MAX_LAYERS = 1024
_INTS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 65_536),
    "num_hidden_layers": (1, MAX_LAYERS),
    "num_attention_heads": (1, 1_024),
    "num_key_value_heads": (1, 1_024),
    "head_dim": (1, 4_096),
    "intermediate_size": (1, 1 << 20),
    "vocab_size": (1, 1 << 22),
    "max_position_embeddings": (1, 1 << 27),
    "num_local_experts": (2, 4_096),
    "num_experts_per_tok": (1, 4_096),
    "sliding_window": (1, 1 << 27),
}
_FLOATS: dict[str, tuple[float, float]] = {"final_logit_softcapping": (0.0, 1e6), "attn_logit_softcapping": (0.0, 1e6)}
_BOOLS = ("attention_bias", "tie_word_embeddings", "mlp_bias", "use_sliding_window")
_STRS = ("hidden_act", "hidden_activation")
# Fields whose null means "the family's default" (transformers reads them that way)
_NULLABLE = {"head_dim", "num_key_value_heads", "sliding_window", "final_logit_softcapping", "attn_logit_softcapping",
             *_BOOLS, *_STRS}
_HINT = "check the values in config.json (is it the model's own, unedited?)"


def build_arch(source: str, hint: str = _HINT, **fields: Any) -> ModelArch:
    """ModelArch(**fields), a validation error worded as a config error naming the file (one line, a hint)."""
    try:
        return ModelArch(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ModelConfigError(f"{source}: {where}: {first['msg']}", hint, value=source) from None


def _bad(source: str, key: str, expected: str, value: Any) -> ModelConfigError:
    return ModelConfigError(f"{source}: {key}: expected {expected}, got {shown(value)}", _HINT, value=source)


_MOE_KEYS = ("num_local_experts", "num_experts_per_tok")


def _check_fields(cfg: dict[str, Any], source: str, model_type: str) -> None:
    """Every field the advisor reads: its type and range (a string where a number belongs, 0 heads, 1e400)."""
    for key, value in cfg.items():
        if (value is None and key in _NULLABLE) or (key in _MOE_KEYS and model_type != "mixtral"):
            continue
        if key in _INTS:
            low, high = _INTS[key]
            if not isinstance(value, int) or isinstance(value, bool):
                raise _bad(source, key, f"a whole number from {low:,} to {high:,}", value)
            if not low <= value <= high:
                raise _bad(source, key, f"a whole number from {low:,} to {high:,} (what real models have)", value)
        elif key in _FLOATS:
            low, high = _FLOATS[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value <= high:
                raise _bad(source, key, f"a number above {low:g} and at most {high:g}", value)
        elif key in _BOOLS:
            if not isinstance(value, bool):
                raise _bad(source, key, "true or false", value)
        elif key in _STRS:
            if not isinstance(value, str) or not 0 < len(value) <= 64:
                raise _bad(source, key, "an activation name such as \"silu\"", value)


def check_kv_heads(heads: int, kv_heads: int, source: str) -> None:
    """Grouped-query attention: the key/value heads divide the query heads."""
    if kv_heads > heads or heads % kv_heads:
        raise ModelConfigError(f"{source}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}",
                               _HINT, value=source)


def _req(cfg: dict[str, Any], key: str, source: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ModelConfigError(f"{source}: config.json has no {key!r}", "is this a causal LM config.json from the model's repository?",
                               value=source)
    return cfg[key]


def supported_model_types() -> tuple[str, ...]:
    """Every model_type the torch-free memory model reads: the hand-written eight and the families'."""
    from .families import READERS

    return SUPPORTED_MODEL_TYPES + tuple(t for t in READERS if t not in SUPPORTED_MODEL_TYPES)


def arch_from_config(cfg: dict[str, Any], name: str, source: str | None = None) -> ModelArch:
    """Read a config.json dict.  ``source`` names the file in error messages."""
    arch = _read_config(cfg, name, source)
    dropout = _dropout(cfg)
    return arch.model_copy(update={"dropout": dropout}) if dropout else arch


def _dropout(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The config's dropout settings that are on (``attention_dropout: 0.1``): the memory model counts no
    dropout, so the estimate says so (their masks add memory while training)."""
    parts = [cfg] + [cfg[k] for k in ("text_config",) if isinstance(cfg.get(k), dict)]
    found = []
    for part in parts:
        for key, value in part.items():
            if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and 0 < value < 1:
                found.append(f"{key} {value:g}")
    return tuple(dict.fromkeys(found))


def _read_config(cfg: dict[str, Any], name: str, source: str | None = None) -> ModelArch:
    from .families import READERS

    source = source or name
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{source}: expected a JSON object at the top level", "config.json must be a JSON object",
                               value=source)
    original = cfg
    if "text_config" in cfg and "hidden_size" not in cfg:
        text_config = cfg["text_config"]
        if not isinstance(text_config, dict):
            raise _bad(source, "text_config", "an object with the language model's fields", text_config)
        cfg = {**text_config, "model_type": text_config.get("model_type", cfg.get("model_type"))}
    model_type = cfg.get("model_type")
    # a family module reads the newer model types (models/families/); it is given the whole file as well,
    # since a vision-language model's tower lives outside text_config
    outer_type = original.get("model_type")
    for key in (outer_type, model_type):
        if isinstance(key, str) and key in READERS:
            return READERS[key](original, cfg, name, source)
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        from .derive import derived_arch

        if isinstance(model_type, str):
            _check_fields(cfg, source, model_type)  # no 10^6 layers reach transformers
        return derived_arch(original, model_type, name, source)  # built by transformers, or refused
    _check_fields(cfg, source, model_type)
    hidden = _req(cfg, "hidden_size", source)
    heads = _req(cfg, "num_attention_heads", source)
    kv_heads = cfg.get("num_key_value_heads") or heads
    check_kv_heads(heads, kv_heads, source)
    if model_type in ("gemma", "gemma2"):
        default_head_dim = 256
    elif model_type == "qwen3":
        default_head_dim = 128
    else:
        default_head_dim = hidden // heads
        if cfg.get("head_dim") is None and hidden % heads:
            raise ModelConfigError(f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                                   f"{model_type} splits the hidden size evenly over the heads; {_HINT}", value=source)
    head_dim = cfg.get("head_dim") if cfg.get("head_dim") is not None else default_head_dim
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
        experts, top_k = _req(cfg, "num_local_experts", source), _req(cfg, "num_experts_per_tok", source)
        if top_k > experts:
            raise ModelConfigError(f"{source}: num_experts_per_tok {top_k} is more than num_local_experts {experts}",
                                   "a token is routed to some of the experts, at most all of them", value=source)
        moe = MoE(
            num_experts=experts,
            experts_per_token=top_k,
            expert_intermediate_size=_req(cfg, "intermediate_size", source),
        )
    return build_arch(
        source, hint="check the values in config.json",
        name=name,
        model_type=model_type,
        hidden_size=hidden,
        num_layers=_req(cfg, "num_hidden_layers", source),
        num_heads=heads,
        num_kv_heads=kv_heads,
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


def file_bool(config: dict[str, Any], key: str, default: bool, source: str) -> bool:
    """A true/false key of the file (a vision-language file's top level, which _check_fields does not read)."""
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise _bad(source, key, "true or false", value)
    return value


def checked_layer_types(given: Any, layers: int, kinds: tuple[str, ...], source: str) -> tuple[str, ...]:
    """A file's ``layer_types``: one of ``kinds`` per layer, refused otherwise (as transformers' config validation)."""
    if not isinstance(given, list) or len(given) != layers or any(not isinstance(t, str) or t not in kinds for t in given):
        raise _bad(source, "layer_types", f"a list of {layers} entries, each one of {', '.join(kinds)}", given)
    return tuple(given)


def periodic_layer_types(layers: int, period: int, kind: str) -> tuple[str, ...]:
    """What config classes compute without ``layer_types``: every ``period``-th layer full attention, the rest ``kind``."""
    return tuple(kind if (i + 1) % period else "full_attention" for i in range(layers))


def unsupported_model_type(model_type: Any, source: str) -> ModelConfigError:
    """The refusal for a model type the torch-free model does not know (the derived path, models/derive.py,
    catches it when torch and transformers are installed)."""
    return ModelConfigError(
        f"{source}: model_type {shown(model_type)} is not in the torch-free memory model",
        f"supported model types: {', '.join(supported_model_types())}; with the verify extra installed "
        "(pip install 'lora-advisor[verify]': torch, transformers) any model type transformers can build is "
        "estimated from its shapes", value=source)


MAX_CONFIG_BYTES = 4 << 20  # the largest real config.json files (big label maps) are a few hundred KiB


def read_config_file(path: Path) -> dict[str, Any]:
    """Load a config.json (a regular UTF-8 file of at most 4 MiB, bounded nesting, finite numbers), reporting a
    syntax error with its line and column."""
    hint = "give the model's config.json (or its directory)"
    text = read_text(path, MAX_CONFIG_BYTES, what="config.json", hint=hint, error=ModelConfigError)
    cfg = load_json(text, str(path), what="config.json", hint="config.json must be valid JSON", error=ModelConfigError)
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{path}: expected a JSON object at the top level", "config.json must be a JSON object",
                               value=str(path))
    return cfg


def to_hf_config(arch: ModelArch) -> dict[str, Any]:
    """The config.json that builds this architecture in transformers."""
    if arch.hf_config_json is not None:
        return verbatim_with_layers(arch)
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


def verbatim_with_layers(arch: ModelArch) -> dict[str, Any]:
    """The model's own config.json with the layer count set to ``arch.num_layers`` (the tests and the oracle
    build shortened models): in text_config when it has one, per-layer lists cut to length."""
    import json

    cfg = json.loads(arch.hf_config_json or "{}")
    text = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg else cfg
    text["num_hidden_layers"] = arch.num_layers
    for key, value in list(text.items()):
        if key.endswith("layer_types") and isinstance(value, list):
            text[key] = value[:arch.num_layers]
    if arch.layer_types is not None and "layer_types" in text:
        text["layer_types"] = list(arch.layer_types[:arch.num_layers])
    return cfg
