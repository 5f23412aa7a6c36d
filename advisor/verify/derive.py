"""Child process of the derived path (models/derive.py): build a model type the torch-free memory model does
not know on the meta device and report its shapes as JSON.

stdin: the config.json object.  stdout: one JSON object, either ``{"shapes": {...}}`` or
``{"error": "...", "hint": "..."}``.  Nothing is allocated (meta tensors), so a 400B model takes seconds.
Run as ``python -m advisor.verify.derive``; it imports torch and transformers, which the parent never does.
"""

from __future__ import annotations

import json
import sys


def _decoder_layers(model, num_layers: int):
    """The ModuleList holding the decoder layers: the longest one whose length is the layer count."""
    from torch import nn

    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) == num_layers]
    # a vision tower has its own layer list; the language model's is the one under "language_model" or "model"
    found.sort(key=lambda item: ("vision" in item[0] or "visual" in item[0], len(item[0])))
    return found[0] if found else (None, None)


def _layer_report(layer) -> dict:
    from torch import nn

    linears, others = [], {}
    linear_params = set()
    for name, module in layer.named_modules():
        if type(module) is nn.Linear:
            linears.append({"name": name, "in": module.in_features, "out": module.out_features,
                            "bias": module.bias is not None})
            linear_params.update(id(p) for p in module.parameters(recurse=False))
    for name, param in layer.named_parameters():
        if id(param) not in linear_params:
            others[name] = list(param.shape)
    return {"linears": linears, "others": others}


def shapes(config: dict) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    model_type = config.get("model_type")
    try:
        hf_cfg = AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"})
    except (ValueError, KeyError) as exc:
        raise LookupError(f"transformers does not know model_type {model_type!r} ({exc})") from None
    text = hf_cfg.get_text_config()
    num_layers = text.num_hidden_layers
    model = None
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):  # a VLM may only have the second
        try:
            with torch.device("meta"):
                model = auto.from_config(hf_cfg)
            break
        except ValueError as exc:
            reason = str(exc).splitlines()[0][:200]
    if model is None:
        raise LookupError(f"transformers has no causal LM for model_type {model_type!r} ({reason})")
    where, layers = _decoder_layers(model, num_layers)
    if layers is None:
        raise LookupError(f"no list of {num_layers} decoder layers in {type(model).__name__}")
    per_layer = [_layer_report(layer) for layer in layers]
    in_layers = {id(p) for p in layers.parameters()}
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    embed_params = {id(p) for p in embed.parameters()} if embed is not None else set()
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    outside = {}
    for name, param in model.named_parameters(remove_duplicate=True):
        if id(param) not in in_layers | embed_params | head_params:
            outside[name] = list(param.shape)
    tied = head is not None and embed is not None and head.weight is embed.weight
    return {
        "model_class": type(model).__name__,
        "layers_at": where,
        "text": {key: _attribute(text, key) for key in (
            "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "hidden_act",
            "sliding_window", "layer_types")},
        "embedding": list(embed.weight.shape) if embed is not None else None,
        "lm_head": None if head is None or tied else list(head.weight.shape),
        "lm_head_bias": head is not None and getattr(head, "bias", None) is not None,
        "tied": tied,
        "layers": per_layer,
        "outside": outside,
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def _attribute(config, key: str):
    """A config attribute, None when absent or per-layer only (Gemma 4 raises on the global read)."""
    try:
        return getattr(config, key, None)
    except Exception:
        return None


def main() -> int:
    try:
        config = json.loads(sys.stdin.read())
        out = {"shapes": shapes(config)}
    except LookupError as exc:
        out = {"error": str(exc), "hint": "is this the config.json of a causal language model?"}
    except Exception as exc:  # transformers raises many kinds on a config it cannot build; report, never trace
        out = {"error": f"transformers could not build the model: {type(exc).__name__}: {str(exc)[:300]}",
               "hint": "check the config.json; a newer transformers may know this model type"}
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
