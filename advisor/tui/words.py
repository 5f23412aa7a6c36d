"""How the app words things for people: configurations, rejections, cards and field errors.

The core hands out data (a TrainConfig, a Rejection with its need in bytes, an AdvisorError with its field);
this module turns it into sentences for this screen.  Nothing here computes a number the core did not give.
"""

from __future__ import annotations

from ..errors import AdvisorError
from ..units import GiB

# How this front end names a request field in an error (the CLI names its flag).
FIELD_LABELS = {"model": "Model", "gpu": "GPU", "vram": "GPU", "gpus": "GPU count", "seq_len": "Sequence length",
                "effective_batch": "Effective batch", "method": "Method", "prefer": "Preference", "format": "Format",
                "output": "Export path", "option": "Option", "rules": "Rules"}

# The main screen's input that an error about a request field belongs next to.
FIELD_INPUT = {"model": "model", "gpu": "gpu", "vram": "gpu", "gpus": "gpu", "seq_len": "seq_len",
               "effective_batch": "effective_batch", "method": "method", "prefer": "prefer"}

METHOD_WORDS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA", "lora8bit": "LoRA on an 8-bit base"}
OPTIMIZER_WORDS = {"adamw": "AdamW", "adamw_8bit": "8-bit AdamW", "paged_adamw_8bit": "paged 8-bit AdamW",
                   "sgd": "SGD", "adafactor": "Adafactor"}


def error_text(err: AdvisorError) -> tuple[str, str]:
    """(message, hint) worded for this screen: the field's label, never a command-line flag."""
    label = FIELD_LABELS.get(err.field or "")
    message = f"{label}: {err.message}" if label else err.message
    hint = err.hint
    if err.field == "allow_no_fit":
        hint = "pick an option that fits"
    return message, hint


def config_words(cfg) -> str:
    """"QLoRA r8, no checkpointing, 8-bit AdamW, chunked loss": a configuration as a sentence fragment."""
    method = METHOD_WORDS.get(cfg.method, cfg.method)
    if cfg.method == "full":
        method += " (fp32 master weights)" if cfg.master_weights else " (16-bit)"
    parts = [f"{method} r{cfg.rank}" if cfg.uses_adapters else method,
             "checkpointing" if cfg.grad_ckpt else "no checkpointing",
             f"micro batch {cfg.micro_batch}", OPTIMIZER_WORDS.get(cfg.optimizer, cfg.optimizer)]
    if cfg.sharding not in ("single",):
        parts.append({"zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP", "ddp": "DDP"}.get(cfg.sharding, cfg.sharding))
    if cfg.offload != "none":
        parts.append({"optimizer": "optimizer offloaded to CPU", "params": "weights and optimizer offloaded to CPU"}
                     .get(cfg.offload, f"offload {cfg.offload}"))
    if cfg.loss == "chunked":
        parts.append("chunked loss")
    return ", ".join(parts)


def rejection_words(rejection, capacity: int | None) -> str:
    """"QLoRA r8, no checkpointing, 8-bit AdamW, chunked loss: needs 26.9 GiB of 24.0"."""
    what = config_words(rejection.config) if rejection.config is not None else rejection.option
    if rejection.need_bytes and capacity and rejection.rule == "must-fit":
        return f"{what}: needs {rejection.need_bytes / GiB:.1f} GiB of {capacity / GiB:.1f}"
    return f"{what}: {rejection.reason}"


def card_text(result) -> str:
    """The card a plan is for, confirmed: name, count, memory, bf16 and FlashAttention-2 support."""
    hw = result.hardware
    if hw is None:
        return ""
    count = f"{hw.count} x " if hw.count > 1 else ""
    parts = [f"{count}{hw.name}", f"{hw.memory_bytes / GiB:.1f} GiB"]
    if hw.in_use_bytes:
        parts.append(f"{hw.in_use_bytes / GiB:.1f} GiB used by others")
    cc = hw.compute_capability
    if cc is not None:
        parts.append("bf16 ✓" if cc >= (8, 0) else "bf16 ✗ (fp16)")
        parts.append("FlashAttention-2 ✓" if cc >= (8, 0) else "FlashAttention-2 ✗")
    else:
        parts.append("bf16 / FA2 unknown (a size, not a known card)")
    source = {"detected": "detected", "catalog": "typed card", "custom": "typed size"}.get(result.hardware_source, "")
    return " · ".join(parts) + (f"  ({source})" if source else "")
