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


def _companions(path: Path, data: dict, used: set) -> dict:
    """What the file trains with besides its own keys: the DeepSpeed JSON it names and, next to it, the
    accelerate.yaml it is launched with (our exports write both), so a read-back sees ZeRO, FSDP, offload
    and the GPU count the estimate was made for."""
    fields: dict = {}
    used.add("deepspeed")
    ds = data.get("deepspeed")
    if isinstance(ds, str) and ds:
        ds_path = (path.parent / ds) if not Path(ds).is_absolute() else Path(ds)
        fields.update(_deepspeed_fields(ds_path))
    accel = path.parent / "accelerate.yaml"
    if accel.is_file() and accel != path:
        try:
            launch = yaml.safe_load(accel.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            launch = {}
        if isinstance(launch, dict):
            if isinstance(launch.get("num_processes"), int) and launch["num_processes"] > 0:
                fields["gpus"] = launch["num_processes"]
            fsdp = launch.get("fsdp_config")
            if launch.get("distributed_type") == "FSDP" and isinstance(fsdp, dict):
                fields["fsdp"] = True
                if fsdp.get("fsdp_offload_params"):
                    fields["offload"] = "params"
    return fields


def _deepspeed_fields(ds_path: Path) -> dict:
    import json

    try:
        ds = json.loads(ds_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the DeepSpeed config {ds_path}: {getattr(exc, 'strerror', None) or exc}",
                          "keep ds_config.json next to the YAML that names it") from None
    zero = ds.get("zero_optimization") if isinstance(ds, dict) else None
    if not isinstance(zero, dict):
        return {}
    fields: dict = {"zero": int(zero.get("stage", 0) or 0)}
    if isinstance(zero.get("offload_param"), dict) and zero["offload_param"].get("device") in ("cpu", "nvme"):
        fields["offload"] = "params"
    elif isinstance(zero.get("offload_optimizer"), dict) and zero["offload_optimizer"].get("device") in ("cpu", "nvme"):
        fields["offload"] = "optimizer"
    return fields


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
        back = _axolotl(data)
    elif "finetuning_type" in data:
        back = _llamafactory(data)
    elif "model_name_or_path" in data:
        back = _trl(data)
    else:
        back = None
    if back is not None:
        used: set = set()
        back.fields.update(_companions(path, data, used))
        if back.format == "axolotl" and isinstance(data.get("fsdp_config"), dict):
            back.fields["fsdp"] = True
            if data["fsdp_config"].get("offload_params"):
                back.fields["offload"] = "params"
        if back.fields.get("method") == "full" and back.fields.pop("_autocast_fp32_master", False):
            back.fields["master_weights"] = True
        back.fields.pop("_autocast_fp32_master", None)
        back.fields.setdefault("stack", {"axolotl": "axolotl", "llamafactory": "llamafactory"}.get(back.format, "auto"))
        return back
    raise ExportError(f"{path}: not an axolotl, LLaMA-Factory or TRL config (no base_model / finetuning_type / "
                      "model_name_or_path)", "lora-advisor reads those three formats and its own exports")


def _take(data: dict, used: set, key: str, default=None):
    used.add(key)
    return data.get(key, default)


def _precision(data: dict, used: set) -> str:
    """The 16-bit dtype trained in: autocast flags (bf16 / fp16), or pure 16-bit weights (axolotl
    `bfloat16` / `float16`, LLaMA-Factory `pure_bf16`, TRL `dtype` without autocast)."""
    used.update({"bf16", "fp16", "bfloat16", "float16", "pure_bf16", "dtype"})
    if data.get("bf16") is True or data.get("bfloat16") is True or data.get("pure_bf16") is True:
        return "bf16"
    if data.get("fp16") is True or data.get("float16") is True:
        return "fp16"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(data.get("dtype"), "fp32")


def _liger(data: dict, used: set) -> dict:
    """Liger's fused linear cross-entropy, as each framework switches it on: the chunked loss."""
    used.update({"use_liger_kernel", "liger_kernel_config", "enable_liger_kernel", "plugins",
                 "liger_fused_linear_cross_entropy"})
    on = (data.get("use_liger_kernel") is True or data.get("enable_liger_kernel") is True
          or data.get("liger_fused_linear_cross_entropy") is True)
    config = data.get("liger_kernel_config")
    if on and isinstance(config, dict) and config.get("fused_linear_cross_entropy") is False:
        on = False
    return {"loss": "chunked" if on else "standard"}


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
                  optimizer=_OPTIM_BACK.get(_take(data, used, optimizer), "adamw"), **_liger(data, used), **specific)
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
    # full FT with AMP keeps fp32 master weights only where the stack does: FSDP's upcast or DeepSpeed's optimizer
    master = bool(data.get("bf16") or data.get("fp16")) and bool(data.get("fsdp_config") or data.get("deepspeed"))
    return _read(data, "axolotl", "base_model", _used=used, method=method, targets=targets, _autocast_fp32_master=master,
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
    # LLaMA-Factory upcasts full fine-tuning's trainable parameters to fp32 unless pure_bf16
    master = bool(data.get("bf16") or data.get("fp16")) and not data.get("pure_bf16")
    return _read(data, "llamafactory", "model_name_or_path", _used=used, method=method, targets=targets,
                 _autocast_fp32_master=master,
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
    master = bool(data.get("bf16") or data.get("fp16")) and data.get("dtype") == "float32"
    back = _read(data, "trl", "model_name_or_path", _used=used, method=method, targets=targets,
                 _autocast_fp32_master=master,
                 grad_ckpt=bool(_take(data, used, "gradient_checkpointing", True)),
                 quant_type=_take(data, used, "bnb_4bit_quant_type", "nf4"),
                 double_quant=_take(data, used, "use_bnb_nested_quant", True),
                 train_embeddings=bool(_take(data, used, "lora_modules_to_save")))
    back.fields["stack"] = "trl"  # its SFTTrainer computes the loss with its fused LM head, whatever the file says
    return back
