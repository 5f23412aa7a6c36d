"""How the app words things for people: configurations, rejections, cards and field errors.

The core hands out data (a TrainConfig, a Rejection with its need in bytes, an AdvisorError with its field);
this module turns it into sentences for this screen.  Nothing here computes a number the core did not give.
"""

from __future__ import annotations

from ..errors import AdvisorError
from ..units import GiB
from ..words import METHOD_WORDS, OPTIMIZER_WORDS, config_words  # noqa: F401 (re-exported)

# How this front end names a request field in an error (the CLI names its flag).
FIELD_LABELS = {"model": "Model", "gpu": "GPU", "vram": "GPU", "gpus": "GPU count", "seq_len": "Sequence length",
                "effective_batch": "Effective batch", "method": "Method", "prefer": "Preference", "lengths": "Batches", "format": "Format",
                "output": "Export path", "option": "Option", "rules": "Rules"}

# The main screen's input that an error about a request field belongs next to.
FIELD_INPUT = {"model": "model", "gpu": "gpu", "vram": "gpu", "gpus": "gpu", "seq_len": "seq_len",
               "effective_batch": "effective_batch", "method": "method", "prefer": "prefer", "lengths": "lengths"}

def error_text(err: AdvisorError) -> tuple[str, str]:
    """(message, hint) worded for this screen: the field's label, never a command-line flag."""
    label = FIELD_LABELS.get(err.field or "")
    message = f"{label}: {err.message}" if label else err.message
    hint = err.hint
    if err.field == "allow_no_fit":
        hint = "pick an option that fits"
    return message, hint


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
