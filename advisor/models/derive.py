"""The derived path: a model type the torch-free memory model does not know, estimated from the shapes
transformers builds for it.

When torch and transformers are installed, a child process (``python -m advisor.verify.derive``) builds the
model on the meta device and reports every decoder layer's Linear layers and other tensors, the embedding,
the head and what lies outside the layers.  Here those shapes become a ModelArch when the layers follow the
common decoder layout (q/k/v/o attention projections, a gated or plain MLP, the same Linears in every
layer): the Linears and dimensions are read from the real modules, every other tensor (norm weights,
full-width q/k norms, a vision tower) is counted to the parameter, and the activations use the memory
model's generic decoder-layer terms.  ``ModelArch.derived_from`` says so, and the estimate's notes list the
generic parts.  A layout that does not fit (mixture-of-experts, latent attention, linear attention, layers
that differ) is refused with what was found, never guessed.

The parent never imports torch (house rule 1); the child's answer is cached on disk by the config's text
and the transformers version, so a second run costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import re
import subprocess
import sys
from typing import Any

from ..bounded import shown
from ..errors import ModelConfigError
from .arch import ModelArch

CACHE_FORMAT = 2  # bump when advisor/verify/derive.py reports other fields
DERIVE_TIMEOUT_S = 120  # building a 400B model on the meta device takes well under a minute (Qwen3.5-397B: ~10 s)
_MODEL_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ATTENTION = ({"q_proj", "k_proj", "v_proj", "o_proj"}, {"qkv_proj", "o_proj"})
_MLP = ({"gate_proj", "up_proj", "down_proj"}, {"gate_up_proj", "down_proj"}, {"up_proj", "down_proj"})
_HINT = "the torch-free memory model covers " + "{supported}" + "; other layouts are not estimated"


def can_derive() -> bool:
    """torch and transformers are importable (found without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def derived_arch(original: dict[str, Any], model_type: Any, name: str, source: str) -> ModelArch:
    """The ModelArch of an unknown model type from its real shapes, or the refusal."""
    from .hf_config import supported_model_types, unsupported_model_type

    if not isinstance(model_type, str) or not _MODEL_TYPE.fullmatch(model_type) or not can_derive():
        raise unsupported_model_type(model_type, source)
    shapes = _shapes(original, source)
    try:
        try:
            return _arch(shapes, original, name, source)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            # a cache entry that is JSON but not the child's report (edited, damaged): derive afresh, once
            shapes = _shapes(original, source, fresh=True)
            try:
                return _arch(shapes, original, name, source)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                raise ModelConfigError(f"{source}: the shapes transformers reported could not be read "
                                       f"({type(exc).__name__})", "report this, with the config.json",
                                       value=source) from None
    except _NotDecoderLayout as exc:
        raise ModelConfigError(
            f"{source}: model_type {model_type!r} ({shapes.get('model_class')}) has a layout the memory model "
            f"does not estimate: {exc}", _HINT.format(supported=", ".join(supported_model_types())),
            value=source) from None


class _NotDecoderLayout(Exception):
    pass


def _cache_file(original: dict[str, Any]):
    from ..engine.cache import cache_dir

    folder = cache_dir()
    if folder is None:
        return None
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None
    # the child's report format, the transformers version and the config decide the answer
    key = hashlib.sha256((f"{CACHE_FORMAT}:{version}:" + json.dumps(original, sort_keys=True)).encode()).hexdigest()[:32]
    return folder / "derived" / f"{key}.json"


def _shapes(original: dict[str, Any], source: str, fresh: bool = False) -> dict[str, Any]:
    """The child's answer, from the cache when this config was derived before (a refusal is cached too: it
    is as much an answer of this transformers version as the shapes are); ``fresh`` skips the cache."""
    cached = _cache_file(original)
    answer = None
    if cached is not None and cached.is_file() and not fresh:
        try:
            answer = json.loads(cached.read_text(encoding="utf-8"))
            if not isinstance(answer, dict) or not ("shapes" in answer or "error" in answer):
                answer = None
        except (OSError, ValueError):
            answer = None  # a damaged cache entry: derive again
    if answer is None:
        answer = _run_child(original, source)
        if cached is not None:
            _store(cached, json.dumps(answer))
    if "error" in answer:
        raise ModelConfigError(f"{source}: {answer['error']}", answer.get("hint", ""), value=source)
    return answer["shapes"]


def _run_child(original: dict[str, Any], source: str) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, "-m", "advisor.verify.derive"], input=json.dumps(original),
                              capture_output=True, text=True, timeout=DERIVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelConfigError(f"{source}: building the model on the meta device took over {DERIVE_TIMEOUT_S} s",
                               "pass a smaller model's config.json, or a catalog model", value=source) from None
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelConfigError(f"{source}: deriving the model's shapes failed: {tail[:300]}",
                               "check that torch and transformers import cleanly", value=source) from None
    if not isinstance(answer, dict) or not ("shapes" in answer or "error" in answer):
        raise ModelConfigError(f"{source}: deriving the model's shapes gave no answer", "report this", value=source)
    return answer


def _store(path, text: str) -> None:
    """Cache an answer (atomically); a cache that cannot be written only costs time."""
    from ..atomic import write_text_atomic

    try:
        write_text_atomic(path, text, prefix=".derived-")
    except OSError:
        pass


# Module names that give away a mechanism the generic decoder layer does not have
_MECHANISMS = (
    (re.compile(r"linear_attn|gated_delta|\bmamba|mixer\.|ssm"), "linear-attention / state-space layers"),
    (re.compile(r"experts|moe|shared_expert"), "mixture-of-experts layers"),
    (re.compile(r"kv_a_proj|kv_b_proj|q_a_proj"), "multi-head latent attention"),
    (re.compile(r"cross_attn|encoder_attn"), "cross-attention layers"),
)


def _unmodelled_mechanisms(layers: list[dict]) -> list[str]:
    names = {lin["name"] for layer in layers for lin in layer["linears"]}
    names |= {name for layer in layers for name in layer["others"]}
    found = []
    for pattern, what in _MECHANISMS:
        hits = sorted(n for n in names if pattern.search(n.lower()))
        if hits:
            found.append(f"{what} ({', '.join(hits[:3])}{', ...' if len(hits) > 3 else ''})")
    return found


def _difference(first: dict, other: dict) -> str:
    mine = {lin["name"] for lin in first["linears"]} | set(first["others"])
    theirs = {lin["name"] for lin in other["linears"]} | set(other["others"])
    only_first, only_other = sorted(mine - theirs), sorted(theirs - mine)
    if not only_first and not only_other:
        return "same modules, other shapes"
    return ("layer 0 alone has " + (", ".join(only_first[:3]) or "nothing") + "; it alone has "
            + (", ".join(only_other[:3]) or "nothing"))


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _arch(shapes: dict[str, Any], original: dict[str, Any], name: str, source: str) -> ModelArch:
    text = shapes["text"]
    layers = shapes["layers"]
    if not layers:
        raise _NotDecoderLayout("no decoder layers")
    mechanisms = _unmodelled_mechanisms(layers)
    if mechanisms:
        raise _NotDecoderLayout(", ".join(mechanisms))
    signature = [(lin["name"], lin["in"], lin["out"], lin["bias"]) for lin in layers[0]["linears"]]
    for index, layer in enumerate(layers[1:], start=1):
        if [(lin["name"], lin["in"], lin["out"], lin["bias"]) for lin in layer["linears"]] != signature \
                or layer["others"] != layers[0]["others"]:
            raise _NotDecoderLayout(f"layer {index} differs from layer 0 ("
                                    + _difference(layers[0], layer)[:200] + ")")
    by_suffix = {_suffix(lin["name"]): lin for lin in layers[0]["linears"]}
    if len(by_suffix) != len(layers[0]["linears"]):
        raise _NotDecoderLayout("two Linears of one layer share a name ("
                                + ", ".join(lin["name"] for lin in layers[0]["linears"])[:200] + ")")
    names = set(by_suffix)
    attention = next((group for group in _ATTENTION if group <= names), None)
    mlp = next((group for group in _MLP if group <= names - (attention or set())), None)
    unknown = sorted(names - (attention or set()) - (mlp or set()))
    if not names:
        raise _NotDecoderLayout("its layers hold no nn.Linear modules")
    if attention is None or mlp is None or unknown:
        raise _NotDecoderLayout("its layer Linears are " + ", ".join(sorted(names))
                                + " (expected q/k/v/o projections and a gate/up/down MLP)")
    others = layers[0]["others"]
    if any(len(shape) > 1 for shape in others.values()):
        raise _NotDecoderLayout("its layers hold weights outside Linear modules ("
                                + ", ".join(n for n, s in others.items() if len(s) > 1)[:200] + ")")

    vocab, hidden = shapes["embedding"]
    heads = text["num_attention_heads"]
    if "qkv_proj" in by_suffix:
        q_out = by_suffix["o_proj"]["in"]
        kv_out = (by_suffix["qkv_proj"]["out"] - q_out) // 2
    else:
        q_out, kv_out = by_suffix["q_proj"]["out"], by_suffix["k_proj"]["out"]
    if not isinstance(heads, int) or heads <= 0 or q_out % heads:
        raise _NotDecoderLayout(f"q projection width {q_out} does not split over {shown(heads)} heads")
    head_dim = q_out // heads
    if kv_out % head_dim or heads % (kv_out // head_dim or 1) or not kv_out:
        raise _NotDecoderLayout(f"k/v width {kv_out} is not a whole number of {head_dim}-wide heads")
    if "gate_up_proj" in by_suffix:
        inner, gated, fused_mlp = by_suffix["gate_up_proj"]["out"] // 2, True, True
    else:
        inner, gated, fused_mlp = by_suffix["up_proj"]["out"], "gate_proj" in by_suffix, False

    # the tensors that are not Linears: norm weights of width hidden, per-head q/k norms, and the rest
    norm_widths = {n: s[0] for n, s in others.items() if "norm" in n.lower() and n.endswith("weight")}
    layer_norms = sum(1 for n, width in norm_widths.items() if width == hidden and not _is_qk_norm(n))
    qk_norm = any(_is_qk_norm(n) for n in norm_widths)
    other_params = sum(math.prod(s) for s in others.values())
    norms_per_layer = max(layer_norms, 1)  # the activation terms need one norm at least; a layer without is rare
    extra_layer = other_params - norms_per_layer * hidden - (2 * head_dim if qk_norm else 0)
    if extra_layer < 0:
        raise _NotDecoderLayout("its layers hold fewer norm weights than a pre-norm decoder layer")
    layer_types = tuple(text["layer_types"]) if isinstance(text.get("layer_types"), list) else None
    sliding = text.get("sliding_window") if layer_types is None or "sliding_attention" in layer_types else None
    generic = _generic_parts(others, norm_widths, qk_norm, hidden, head_dim, layer_types, shapes, original)
    outside = sum(math.prod(s) for s in shapes["outside"].values())
    extra_outside = outside - hidden + (vocab if shapes.get("lm_head_bias") else 0)
    if extra_outside < 0:
        raise _NotDecoderLayout("it has no final norm after the layers")
    arch = ModelArch(
        name=name, model_type=text.get("model_type") or original.get("model_type"),
        hidden_size=hidden, num_layers=len(layers), num_heads=heads, num_kv_heads=kv_out // head_dim,
        head_dim=head_dim, intermediate_size=inner, vocab_size=vocab,
        max_position_embeddings=text.get("max_position_embeddings") or 4096,
        tie_word_embeddings=bool(shapes["tied"]),
        qkv_bias=by_suffix.get("q_proj", by_suffix.get("qkv_proj"))["bias"], o_bias=by_suffix["o_proj"]["bias"],
        mlp_bias=by_suffix["down_proj"]["bias"], mlp_kind="gated" if gated else "plain",
        activation=str(text.get("hidden_act") or "silu"), norms_per_layer=norms_per_layer,
        qk_norm=qk_norm, fused_qkv="qkv_proj" in by_suffix, fused_gate_up=fused_mlp,
        sliding_window=sliding if isinstance(sliding, int) and sliding > 0 else None,
        layer_types=layer_types, hf_config_json=json.dumps(original),
        extra_layer_params=extra_layer, extra_params=extra_outside,
        derived_from=f"{shapes['model_class']} built on the meta device; generic: " + "; ".join(generic),
    )
    from .params import count_params

    # every tensor is counted to the parameter (what the generic layout does not hold is in the extras)
    if count_params(arch).total != shapes["total_params"]:
        raise _NotDecoderLayout(f"its {shapes['total_params']:,} parameters do not add up from the layer shapes "
                                f"({count_params(arch).total:,})")
    return arch


def _is_qk_norm(name: str) -> bool:
    return bool(re.search(r"(^|\.)(q|k|query|key)_?(layer)?norm", name.lower()))


def _generic_parts(others: dict, norm_widths: dict, qk_norm: bool, hidden: int, head_dim: int,
                   layer_types: tuple | None, shapes: dict, original: dict) -> list[str]:
    parts = ["activations use the generic decoder-layer terms (norm placement as in Llama)"]
    if qk_norm and any(w != head_dim for n, w in norm_widths.items() if _is_qk_norm(n)):
        parts.append("full-width q/k norms counted as per-head norms in the activations")
    rest = [n for n in others if n not in norm_widths or (norm_widths[n] != hidden and not _is_qk_norm(n))]
    if rest:
        parts.append("other layer tensors counted as weights only (" + ", ".join(rest)[:120] + ")")
    if layer_types and len(set(layer_types)) > 1:
        parts.append("sliding and full attention layers share one mask model")
    quant = original.get("quantization_config")
    if isinstance(quant, dict):
        parts.append(f"the checkpoint's {shown(quant.get('quant_method'))} quantization is not modelled "
                     "(weights counted in the training precision)")
    if shapes["outside"] and sum(math.prod(s) for s in shapes["outside"].values()) > hidden:
        parts.append("tensors outside the layers beyond the final norm counted as frozen weights, no activations")
    return parts
