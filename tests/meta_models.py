"""transformers' own model for a config dict, built on the meta device: the independent oracle of the
parameter and adapter counts (tests import torch and transformers only where they are installed)."""

from __future__ import annotations


def meta_model(cfg_dict: dict):
    """``AutoModelForCausalLM.from_config`` of ``cfg_dict`` on the meta device, its weights tied as
    ``from_pretrained`` ties them."""
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**cfg_dict)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.tie_weights()
    return model
