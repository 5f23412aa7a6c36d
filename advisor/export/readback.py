"""Read a training config back (axolotl, LLaMA-Factory or TRL YAML, and our own exports) into a
TrainConfig, listing every key that was not understood instead of dropping it silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .context import HF_OPTIM, ExportError

_OPTIM_BACK = {v: k for k, v in HF_OPTIM.items()} | {"adamw_torch_fused": "adamw", "adamw_hf": "adamw",
                                                     "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_32bit": "adamw"}

# keys that do not change memory (data, logging, schedule): read, never reported as unknown
_IRRELEVANT = {"datasets", "dataset", "template", "output_dir", "num_epochs", "num_train_epochs", "lr_scheduler",
               "lr_scheduler_type", "learning_rate", "warmup_ratio", "warmup_steps", "logging_steps", "stage", "do_train",
               "deepspeed", "lora_dropout", "flash_attention", "sdp_attention", "flash_attn", "attn_implementation",
               "fsdp", "lora_modules_to_save",
               "upcast_layernorm", "quantization_method", "save_steps", "seed", "fsdp_config", "fsdp_version"}


@dataclass
class ReadBack:
    model: str
    fields: dict
    format: str
    unknown: list[str] = field(default_factory=list)
    grad_accum: int = 1


def read_config(path: Path) -> ReadBack:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror}", "check the path given to --from") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ExportError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML", "check the file") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a mapping of training settings", "give an axolotl, LLaMA-Factory or TRL YAML")
    if "base_model" in data:
        return _axolotl(data)
    if "finetuning_type" in data:
        return _llamafactory(data)
    if "model_name_or_path" in data:
        return _trl(data)
    raise ExportError(f"{path}: not an axolotl, LLaMA-Factory or TRL config (no base_model / finetuning_type / "
                      "model_name_or_path)", "lora-advisor reads those three formats and its own exports")


def _take(data: dict, used: set, key: str, default=None):
    used.add(key)
    return data.get(key, default)


def _precision(data: dict, used: set) -> str:
    used.update({"bf16", "fp16"})
    if _take(data, used, "bf16"):
        return "bf16"
    return "fp16" if _take(data, used, "fp16") else "fp32"


def _finish(data: dict, used: set, model: str, fields: dict, fmt: str) -> ReadBack:
    unknown = sorted(k for k in data if k not in used and k not in _IRRELEVANT)
    return ReadBack(model=model, fields={k: v for k, v in fields.items() if v is not None}, format=fmt, unknown=unknown,
                    grad_accum=int(data.get("gradient_accumulation_steps") or 1))


# Where each framework keeps the fields every format has: (rank, alpha, seq_len, micro_batch, optimizer)
_KEYS = {
    "axolotl": ("lora_r", "lora_alpha", "sequence_len", "micro_batch_size", "optimizer"),
    "llamafactory": ("lora_rank", "lora_alpha", "cutoff_len", "per_device_train_batch_size", "optim"),
    "trl": ("lora_r", "lora_alpha", "max_length", "per_device_train_batch_size", "optim"),
}


def _read(data: dict, fmt: str, model_key: str, **specific) -> ReadBack:
    """The shared fields through the format's key names, plus what only this format says."""
    used = specific.pop("_used")
    rank, alpha, seq_len, micro_batch, optimizer = _KEYS[fmt]
    fields = dict(rank=_take(data, used, rank), alpha=_take(data, used, alpha), seq_len=_take(data, used, seq_len),
                  micro_batch=_take(data, used, micro_batch), precision=_precision(data, used),
                  optimizer=_OPTIM_BACK.get(_take(data, used, optimizer), "adamw"), **specific)
    used.add("gradient_accumulation_steps")
    return _finish(data, used, _take(data, used, model_key), fields, fmt)


def _axolotl(data: dict) -> ReadBack:
    used: set = {"load_in_4bit", "load_in_8bit", "bnb_config_kwargs"}
    adapter = _take(data, used, "adapter")
    method = "full" if not adapter else ("qlora" if adapter == "qlora" or data.get("load_in_4bit") else "lora")
    if adapter == "lora" and data.get("load_in_8bit"):
        method = "lora8bit"
    linear = _take(data, used, "lora_target_linear")
    targets = ("all-linear",) if linear else tuple(_take(data, used, "lora_target_modules") or ("all-linear",))
    bnb = data.get("bnb_config_kwargs") or {}
    return _read(data, "axolotl", "base_model", _used=used, method=method, targets=targets,
                 grad_ckpt=bool(_take(data, used, "gradient_checkpointing")),
                 quant_type=bnb.get("bnb_4bit_quant_type", "nf4"),
                 double_quant=bnb.get("bnb_4bit_use_double_quant", True),
                 train_embeddings=bool(_take(data, used, "lora_modules_to_save")))


def _llamafactory(data: dict) -> ReadBack:
    used: set = set()
    bits = _take(data, used, "quantization_bit")
    full = _take(data, used, "finetuning_type") == "full"
    method = "full" if full else {4: "qlora", 8: "lora8bit"}.get(bits, "lora")
    target = _take(data, used, "lora_target", "all")
    targets = ("all-linear",) if target == "all" else tuple(t.strip() for t in str(target).split(","))
    return _read(data, "llamafactory", "model_name_or_path", _used=used, method=method, targets=targets,
                 grad_ckpt=not _take(data, used, "disable_gradient_checkpointing", False),
                 quant_type=_take(data, used, "quantization_type", "nf4"),
                 double_quant=_take(data, used, "double_quantization", True),
                 train_embeddings=bool(_take(data, used, "additional_target")))


def _trl(data: dict) -> ReadBack:
    used: set = {"dtype", "bnb_4bit_quant_storage"}
    peft = _take(data, used, "use_peft")
    method = "full" if not peft else ("qlora" if _take(data, used, "load_in_4bit") else
                                      "lora8bit" if _take(data, used, "load_in_8bit") else "lora")
    target = _take(data, used, "lora_target_modules", "all-linear")
    targets = ("all-linear",) if target == "all-linear" else tuple(target)
    return _read(data, "trl", "model_name_or_path", _used=used, method=method, targets=targets,
                 grad_ckpt=bool(_take(data, used, "gradient_checkpointing", True)),
                 quant_type=_take(data, used, "bnb_4bit_quant_type", "nf4"),
                 double_quant=_take(data, used, "use_bnb_nested_quant", True),
                 train_embeddings=bool(_take(data, used, "lora_modules_to_save")))
