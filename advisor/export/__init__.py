"""Exporters: the chosen config in the files people train with.  Each returns {filename: text}."""

from __future__ import annotations

from typing import Callable

from ..memory.config import PREQUANTIZED
from .context import ExportContext, ExportError
from .launch import accelerate, companions, deepspeed
from .peft_trl import render as peft_trl
from .yaml_formats import axolotl, llamafactory, trl_yaml

FORMATS: dict[str, Callable[[ExportContext], dict[str, str]]] = {
    "peft-trl": peft_trl, "trl-yaml": trl_yaml, "axolotl": axolotl, "llamafactory": llamafactory,
    "accelerate": accelerate, "deepspeed": deepspeed,
}

__all__ = ["FORMATS", "ExportContext", "ExportError", "render_all"]


def render_all(ctx: ExportContext, formats: list[str]) -> dict[str, str]:
    """{filename: text} of every format asked for, each with the companion files it refers to."""
    files: dict[str, str] = {}
    if ctx.cfg.method == "qlora" and ctx.cfg.quant_type in PREQUANTIZED:
        # the base is a pre-quantized checkpoint: a different repository than the model named, which the
        # advisor cannot name; writing the 16-bit repo id with a GPTQ config would train something else
        raise ExportError(f"a {ctx.cfg.quant_type.upper()} base loads from a pre-quantized checkpoint, not from "
                          f"{ctx.model_id}: the files cannot name it",
                          "export the bitsandbytes QLoRA (--quant nf4), or point your framework at the "
                          f"{ctx.cfg.quant_type.upper()} repository yourself")
    for name in formats:
        if name not in FORMATS:
            raise ExportError(f"unknown export format {name!r}", "formats: " + ", ".join(FORMATS))
        files.update(FORMATS[name](ctx))
        files.update(companions(ctx, name))
    return files
