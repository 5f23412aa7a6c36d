"""Read a training config back (axolotl, LLaMA-Factory or TRL YAML, and our own exports) into a
TrainConfig, listing every key that was not understood instead of dropping it silently."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bounded import load_json, load_yaml, read_text, shown
from .context import HF_ATTENTION, HF_OPTIM, ExportError

MAX_FILE_BYTES = 1 << 20  # a training YAML or a DeepSpeed JSON is a few KiB
FIELD = "from_file"  # errors are about the file given to read the settings from

_OPTIM_BACK = {v: k for k, v in HF_OPTIM.items()} | {"adamw_torch_fused": "adamw", "adamw_hf": "adamw",
                                                     "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_32bit": "adamw",
                                                     "adamw": "adamw", "adamw_torch_4bit": None, "lion_8bit": None}
_OPTIM_BACK = {k: v for k, v in _OPTIM_BACK.items() if v is not None}  # what the estimate models; others are refused

# keys that do not change memory (data, logging, schedule): read, never reported as unknown
_IRRELEVANT = {"datasets", "dataset", "template", "output_dir", "num_epochs", "num_train_epochs", "lr_scheduler",
               "lr_scheduler_type", "learning_rate", "warmup_ratio", "warmup_steps", "logging_steps", "stage", "do_train",
               "deepspeed", "fsdp", "lora_modules_to_save", "quantization_method", "save_steps", "seed",
               "fsdp_config", "fsdp_version", "model_quantization_config", "model_quantization_config_kwargs"}


class _File:
    """The settings of one file with typed reads: each value must be what its key holds, or the read is refused
    naming the file, the key, what was expected and what was found (never coerced: '8' is not 8)."""

    def __init__(self, path: Path, data: dict, field: str = FIELD) -> None:
        self.path, self.data, self.field = path, data, field

    def error(self, key: str, expected: str, value: Any) -> ExportError:
        return ExportError(f"{self.path}: {key}: expected {expected}, got {shown(value)}",
                           "fix the value in the file", field=self.field, value=str(self.path))

    def int(self, key: str, low: int, high: int, default: Any = None) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.error(key, f"a whole number from {low:,} to {high:,}", value)
        return value

    def number(self, key: str, low: float, high: float, probability: bool = False) -> Any:
        """A finite number above ``low`` and at most ``high``; a ``probability`` from ``low`` to below ``high``."""
        value = self.data.get(key)
        if value is None:
            return None
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not ((low <= value < high) if probability else (low < value <= high))):
            expected = (f"a dropout probability from {low:g} to below {high:g}" if probability
                        else f"a number above {low:g} and at most {high:g}")
            raise self.error(key, expected, value)
        return value

    def bool(self, key: str, default: Any = None, also: tuple = ()) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool) and value not in also:
            raise self.error(key, "true or false" + "".join(f" or {a!r}" for a in also), value)
        return value

    def str(self, key: str, default: Any = None, choices: tuple | None = None) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip() or len(value) > 4096:
            raise self.error(key, "one of " + ", ".join(map(str, choices)) if choices else "a name", value)
        if choices is not None and value not in choices:
            raise self.error(key, "one of " + ", ".join(map(str, choices)), value)
        return value

    def mapping(self, key: str) -> dict:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, "a mapping of settings", value)
        return value

    def targets(self, key: str, default: Any, everything: tuple[str, ...]) -> tuple[str, ...]:
        """LoRA target modules: a list of module names, or one string (a name, a comma list, or a word in
        ``everything`` meaning all linear layers)."""
        value = self.data.get(key)
        if value is None:
            value = default
        if isinstance(value, str):  # the regex an export writes for a vision-language model's language model
            from ..memory.vision import parse_language_model_targets

            if (inner := parse_language_model_targets(value)) is not None:
                value = list(inner)
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, list) or not names or len(names) > 64:
            raise self.error(key, "a module name, a comma list of them, or a list of names", value)
        cleaned = []
        for name in names:
            if not isinstance(name, str) or not name.strip() or len(name) > 200 or not name.strip().isprintable():
                raise self.error(key, "module names such as q_proj", name)
            cleaned.append(name.strip())
        if any(name in everything for name in cleaned):
            return ("all-linear",)
        return tuple(cleaned)


def _optimizer(file: _File, key: str) -> str:
    name = file.data.get(key)
    if name is None:
        return "adamw"
    if not isinstance(name, str) or name not in _OPTIM_BACK:
        raise ExportError(f"{file.path}: {key}: optimizer {shown(name)} is not one the estimate models",
                          "one of " + ", ".join(sorted(_OPTIM_BACK)), field=FIELD, value=str(file.path))
    return _OPTIM_BACK[name]


@dataclass
class ReadBack:
    model: str
    fields: dict
    format: str
    unknown: list[str] = field(default_factory=list)
    grad_accum: int = 1
    not_modelled: list[str] = field(default_factory=list)  # "key (what it does)" for each of NOT_MODELLED switched on


# Settings that change what a step holds and that the estimate does not model, in any of the three formats: the
# estimate is for the run without them, and the CLI says so beside the number (a plain "not used" note would let it
# pass as exact).  DoRA keeps a weight-sized norm computation per adapted Linear; torch.compile fuses and frees
# differently; activation offloading moves the saved activations to the host; Unsloth replaces the LoRA kernels;
# GaLore / BAdam / APOLLO are other optimizers; sequence / context parallelism splits the activations over GPUs.
NOT_MODELLED = {"peft_use_dora": "DoRA", "use_dora": "DoRA", "torch_compile": "torch.compile",
                "activation_offloading": "activation offloading", "use_unsloth": "Unsloth",
                "unsloth_lora_mlp": "Unsloth's LoRA kernels", "unsloth_lora_qkv": "Unsloth's LoRA kernels",
                "unsloth_lora_o": "Unsloth's LoRA kernels", "use_galore": "GaLore", "use_badam": "BAdam",
                "use_apollo": "APOLLO", "sequence_parallel_degree": "sequence parallelism",
                "context_parallel_size": "context parallelism"}


def _companions(path: Path, file: _File) -> dict:
    """What the file trains with besides its own keys: the DeepSpeed JSON it names and, next to it, the
    accelerate.yaml it is launched with (our exports write both), so a read-back sees ZeRO, FSDP, offload
    and the GPU count the estimate was made for."""
    fields: dict = {}
    ds = file.data.get("deepspeed")
    if ds is not None and not isinstance(ds, (str, dict)):
        raise file.error("deepspeed", "the path of a DeepSpeed JSON", ds)
    if isinstance(ds, str) and ds:
        ds_path = (path.parent / ds) if not Path(ds).is_absolute() else Path(ds)
        fields.update(deepspeed_fields(ds_path))
    accel = path.parent / "accelerate.yaml"
    if accel.is_file() and accel != path:
        where = str(accel)
        text = read_text(accel, MAX_FILE_BYTES, what="accelerate config", hint="fix or remove the accelerate.yaml "
                         "next to the file", error=ExportError, field=FIELD)
        launch = load_yaml(text, where, error=ExportError, field=FIELD) or {}
        if not isinstance(launch, dict):
            raise ExportError(f"{where}: expected a mapping of launch settings", "fix or remove the accelerate.yaml "
                              "next to the file", field=FIELD, value=where)
        accelerate = _File(accel, launch)
        processes = accelerate.int("num_processes", 1, MAX_GPUS)
        if processes is not None:
            fields["gpus"] = processes
        fsdp = accelerate.mapping("fsdp_config")
        if accelerate.str("distributed_type") == "FSDP" and fsdp:
            fields["fsdp"] = True
            if _File(accel, fsdp).bool("fsdp_offload_params", False):
                fields["offload"] = "params"
    return fields


def deepspeed_fields(ds_path: Path, field: str = FIELD,
                     hint: str = "keep ds_config.json next to the YAML that names it") -> dict:
    """The TrainConfig fields a DeepSpeed JSON sets: the ZeRO stage, offload and the gradient buckets."""
    text = read_text(ds_path, MAX_FILE_BYTES, what="DeepSpeed config", hint=hint, error=ExportError, field=field)
    ds = load_json(text, str(ds_path), what="DeepSpeed config", hint=hint, error=ExportError, field=field)
    if not isinstance(ds, dict):
        raise ExportError(f"{ds_path}: expected a JSON object of DeepSpeed settings", hint, field=field,
                          value=str(ds_path))
    zero = ds.get("zero_optimization")
    if zero is None:
        return {}
    config = _File(ds_path, {"zero_optimization": zero}, field)
    zero = config.mapping("zero_optimization")
    settings = _File(ds_path, zero, field)
    stage = settings.int("stage", 0, 3, 0)
    fields: dict = {"zero": stage}
    # the gradient buckets (memory/sharding.py deepspeed_bucket_bytes): "auto" is transformers' hidden_size^2;
    # DeepSpeed's defaults when a key is absent: overlap_comm only for stage 3, contiguous_gradients on
    # (deepspeed/runtime/zero/config.py overlap_comm_valid, contiguous_gradients)
    bucket = zero.get("reduce_bucket_size")
    if bucket is not None and bucket != "auto":
        # JSON writes 5e8 as a float: a whole number of elements either way
        if (isinstance(bucket, bool) or not isinstance(bucket, (int, float)) or not math.isfinite(bucket)
                or bucket != int(bucket) or not 1 <= bucket <= 1 << 40):
            raise settings.error("reduce_bucket_size", '"auto" or a whole number of elements from 1 to 2^40', bucket)
        fields["reduce_bucket_size"] = int(bucket)
    fields["overlap_comm"] = settings.bool("overlap_comm", stage == 3)
    fields["contiguous_gradients"] = settings.bool("contiguous_gradients", True)
    for key, offload in (("offload_param", "params"), ("offload_optimizer", "optimizer")):
        device = settings.mapping(key).get("device")
        if device in ("cpu", "nvme"):
            fields["offload"] = offload
            break
    return fields


def read_config(path: Path) -> ReadBack:
    """An axolotl, LLaMA-Factory or TRL YAML (or one of our exports): bounded in size and shape, every value
    the estimate uses checked for its type and range."""
    where = str(path)
    text = read_text(path, MAX_FILE_BYTES, what="training config", hint="give an axolotl, LLaMA-Factory or TRL YAML",
                     error=ExportError, field=FIELD)
    data = load_yaml(text, where, error=ExportError, field=FIELD)
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a mapping of training settings", "give an axolotl, LLaMA-Factory or TRL YAML",
                          field=FIELD, value=where)
    odd = next((k for k in data if not isinstance(k, str)), None)
    if odd is not None:
        raise ExportError(f"{path}: key {shown(odd)} is not a setting name", "keys are names such as lora_r",
                          field=FIELD, value=where)
    file = _File(path, data)
    if "base_model" in data:
        back = _axolotl(file)
    elif "finetuning_type" in data:
        back = _llamafactory(file)
    elif "model_name_or_path" in data:
        back = _trl(file)
    else:
        raise ExportError(f"{path}: not an axolotl, LLaMA-Factory or TRL config (no base_model / finetuning_type / "
                          "model_name_or_path)", "lora-advisor reads those three formats and its own exports",
                          field=FIELD, value=where)
    back.fields.update(_companions(path, file))
    if back.format == "axolotl" and data.get("fsdp_config") is not None:
        fsdp = file.mapping("fsdp_config")
        back.fields["fsdp"] = True
        if _File(path, fsdp).bool("offload_params", False):
            back.fields["offload"] = "params"
    if back.fields.get("method") == "full" and back.fields.pop("_autocast_fp32_master", False):
        back.fields["master_weights"] = True
    back.fields.pop("_autocast_fp32_master", None)
    if back.fields.get("method") == "full":  # no adapters: a lora_dropout key (or its default) says nothing
        back.fields.pop("lora_dropout", None)
    back.fields.setdefault("stack", {"axolotl": "axolotl", "llamafactory": "llamafactory"}.get(back.format, "auto"))
    return back


def _take(data: dict, used: set, key: str, default=None):
    used.add(key)
    return data.get(key, default)


def _precision(file: _File, used: set) -> str:
    """The 16-bit dtype trained in: autocast flags (bf16 / fp16), or pure 16-bit weights (axolotl
    `bfloat16` / `float16`, LLaMA-Factory `pure_bf16`, TRL `dtype` without autocast)."""
    used.update({"bf16", "fp16", "bfloat16", "float16", "pure_bf16", "dtype"})
    flags = {key: file.bool(key, False, also=("auto",) if key in ("bf16", "fp16") else ()) for key in
             ("bf16", "fp16", "bfloat16", "float16", "pure_bf16")}
    dtype = file.str("dtype", None, ("bfloat16", "float16", "float32", "auto"))
    if flags["bf16"] is True or flags["bf16"] == "auto" or flags["bfloat16"] or flags["pure_bf16"]:
        return "bf16"  # axolotl's `bf16: auto` is bf16 where the GPU has it, as everywhere we plan QLoRA/LoRA
    if flags["fp16"] is True or flags["fp16"] == "auto" or flags["float16"]:
        return "fp16"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "fp32")


def _liger(file: _File, used: set) -> dict:
    """Liger's fused linear cross-entropy, as each framework switches it on: the chunked loss."""
    used.update({"use_liger_kernel", "liger_kernel_config", "enable_liger_kernel", "plugins",
                 "liger_fused_linear_cross_entropy"})
    on = (file.bool("use_liger_kernel", False) or file.bool("enable_liger_kernel", False)
          or file.bool("liger_fused_linear_cross_entropy", False))
    config = file.mapping("liger_kernel_config")
    if on and config.get("fused_linear_cross_entropy") is False:
        on = False
    return {"loss": "chunked" if on else "standard"}


# The attention kernel changes memory (eager keeps s x s scores per head): transformers' attn_implementation (TRL,
# axolotl >= 0.19), LLaMA-Factory's flash_attn (hparams/model_args.py AttentionFunction: disabled is eager), and
# axolotl's older switches.  No key: transformers' own default ("auto").
_ATTN_IMPLEMENTATION = {v: k for k, v in HF_ATTENTION.items()} | {"flash_attention_3": "flash"}
_LLAMAFACTORY_ATTN = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash"}
_AXOLOTL_SWITCHES = (("flash_attention", "flash"), ("sdp_attention", "sdpa"), ("eager_attention", "eager"))


def _attention(file: _File, used: set) -> str:
    used.update({"attn_implementation", "flash_attn"} | {key for key, _ in _AXOLOTL_SWITCHES})
    value = file.data.get("attn_implementation")
    if value is not None:
        # a hub kernel ("kernels-community/vllm-flash-attn3", gpt-oss's sinks) is a FlashAttention build
        if isinstance(value, str) and value not in _ATTN_IMPLEMENTATION and "flash" in value.lower():
            return "flash"
        return _ATTN_IMPLEMENTATION[file.str("attn_implementation", None, tuple(_ATTN_IMPLEMENTATION))]
    if file.data.get("flash_attn") is not None:
        return _LLAMAFACTORY_ATTN[file.str("flash_attn", None, tuple(_LLAMAFACTORY_ATTN))]
    for key, kernel in _AXOLOTL_SWITCHES:
        if file.bool(key, False):
            return kernel
    return "auto"


def _switched_on(value: Any) -> bool:
    """true, a parallel degree above 1, or a setting's own mapping; false, null, 0 and 1 are the plain run."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value > 1
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "none", "null", "0", "1")
    return bool(value)


def _finish(file: _File, used: set, model: str, fields: dict, fmt: str) -> ReadBack:
    on = sorted(k for k in NOT_MODELLED if k not in used and _switched_on(file.data.get(k)))
    unknown = sorted(k for k in file.data if k not in used and k not in _IRRELEVANT and k not in on)
    return ReadBack(model=model, fields={k: v for k, v in fields.items() if v is not None}, format=fmt, unknown=unknown,
                    grad_accum=file.int("gradient_accumulation_steps", 1, MAX_GRAD_ACCUM, 1),
                    not_modelled=[f"{k} ({NOT_MODELLED[k]})" for k in on])


# Where each framework keeps the fields every format has: (rank, alpha, seq_len, micro_batch, optimizer)
_KEYS = {
    "axolotl": ("lora_r", "lora_alpha", "sequence_len", "micro_batch_size", "optimizer"),
    "llamafactory": ("lora_rank", "lora_alpha", "cutoff_len", "per_device_train_batch_size", "optim"),
    "trl": ("lora_r", "lora_alpha", "max_length", "per_device_train_batch_size", "optim"),
}
# Each framework's lora_dropout when the file does not set it: axolotl's LoraConfig schema and LLaMA-Factory's
# FinetuningArguments have 0.0; TRL's ModelConfig (what its sft script passes to get_peft_config) has 0.05
_DROPOUT_DEFAULT = {"axolotl": 0.0, "llamafactory": 0.0, "trl": 0.05}
# The same bounds as the flags (core.MAX_*): a file cannot ask for what a flag cannot
MAX_RANK, MAX_ALPHA, MAX_SEQ_LEN, MAX_MICRO_BATCH, MAX_GRAD_ACCUM, MAX_GPUS = 4096, 1e6, 1 << 24, 1 << 16, 1 << 16, 1024


def _read(file: _File, fmt: str, model_key: str, **specific) -> ReadBack:
    """The shared fields through the format's key names, plus what only this format says."""
    used = specific.pop("_used")
    rank, alpha, seq_len, micro_batch, optimizer = _KEYS[fmt]
    used.update({rank, alpha, seq_len, micro_batch, optimizer, model_key, "gradient_accumulation_steps"})
    model = file.data.get(model_key)
    if not isinstance(model, str) or not model.strip() or len(model) > 4096:
        raise file.error(model_key, "the model's hub id or path", model)
    fields = dict(rank=file.int(rank, 1, MAX_RANK), alpha=file.number(alpha, 0, MAX_ALPHA),
                  seq_len=file.int(seq_len, 1, MAX_SEQ_LEN), micro_batch=file.int(micro_batch, 1, MAX_MICRO_BATCH),
                  precision=_precision(file, used), optimizer=_optimizer(file, optimizer), **_liger(file, used),
                  lora_dropout=_lora_dropout(file, used, _DROPOUT_DEFAULT[fmt]), attn=_attention(file, used),
                  **specific)
    return _finish(file, used, model.strip(), fields, fmt)


def _lora_dropout(file: _File, used: set, default: float) -> float:
    """lora_dropout changes memory (memory/activations.py: a dropped-out copy of the input per adapted module)."""
    used.add("lora_dropout")
    value = file.number("lora_dropout", 0, 1, probability=True)
    return default if value is None else float(value)


# How long each batch is (memory/config.py Lengths), as each framework says it.  Unpacked data padded per
# batch is every framework's default: "variable" unless a key packs the data or pads every batch to the cutoff.
def _axolotl_lengths(file: _File, used: set) -> str:
    """axolotl: sample_packing packs to sequence_len; pad_to_sequence_len pads every batch to it ("constant
    sized buffers", axolotl's config reference)."""
    used.update({"sample_packing", "pad_to_sequence_len"})
    packed = file.bool("sample_packing", False) or file.bool("pad_to_sequence_len", False)
    return "fixed" if packed else "variable"


def _llamafactory_lengths(file: _File, used: set) -> str:
    """LLaMA-Factory: packing (on by default for stage pt, DataArguments.packing) or neat_packing packs to
    cutoff_len."""
    used.update({"packing", "neat_packing"})
    packing = file.bool("packing", None)
    if packing is None:
        packing = file.data.get("stage") == "pt"
    return "fixed" if packing or file.bool("neat_packing", False) else "variable"


def _trl_lengths(file: _File, used: set, max_length: int | None) -> tuple[str, int | None]:
    """TRL: packing packs to max_length; pad_to_multiple_of >= max_length pads every (truncated) batch to one
    length, pad_to_multiple_of itself (SFTConfig; DataCollatorForLanguageModeling).  Returns the lengths and the
    sequence length the batches have when that differs from max_length."""
    used.update({"packing", "pad_to_multiple_of", "padding_free"})
    if file.bool("packing", False):
        return "fixed", None
    multiple = file.data.get("pad_to_multiple_of")
    if isinstance(multiple, str) and multiple.lower() in ("auto", "none", "null"):
        return "variable", None
    multiple = file.int("pad_to_multiple_of", 1, MAX_SEQ_LEN)
    if multiple is not None and max_length is not None and multiple >= max_length:
        return "fixed", multiple if multiple != max_length else None
    return "variable", None


def _quant(file: _File, mapping: dict, key: str, default: str) -> str:
    value = mapping.get(key, default)
    if value not in ("nf4", "fp4"):
        raise file.error(key, "nf4 or fp4", value)
    return value


def _one_quantization(file: _File, load_4bit: bool, load_8bit: bool) -> None:
    """4-bit and 8-bit at once is no job: transformers' BitsAndBytesConfig (and TRL's ModelConfig) refuse it."""
    if load_4bit and load_8bit:
        raise ExportError(f"{file.path}: load_in_4bit and load_in_8bit are both true; a base loads in one of them",
                          "keep load_in_4bit (QLoRA) or load_in_8bit (LoRA on an 8-bit base)", field=FIELD,
                          value=str(file.path))


def _axolotl(file: _File) -> ReadBack:
    data = file.data
    used: set = {"load_in_4bit", "load_in_8bit", "bnb_config_kwargs", "adapter", "lora_target_linear",
                 "lora_target_modules", "gradient_checkpointing", "lora_modules_to_save"}
    adapter = file.str("adapter", None, ("lora", "qlora"))
    load_4bit, load_8bit = file.bool("load_in_4bit", False), file.bool("load_in_8bit", False)
    _one_quantization(file, load_4bit, load_8bit)
    if adapter == "qlora" and not load_4bit:  # axolotl's own validation (check_qlora) refuses it
        raise ExportError(f"{file.path}: adapter: qlora needs load_in_4bit: true (axolotl refuses the file without it)",
                          "set load_in_4bit: true, or adapter: lora", field=FIELD, value=str(file.path))
    method = "full" if not adapter else ("qlora" if adapter == "qlora" or load_4bit else "lora")
    if adapter == "lora" and load_8bit:
        method = "lora8bit"
    linear = file.bool("lora_target_linear", False)
    targets = ("all-linear",) if linear else file.targets("lora_target_modules", ["all-linear"], ("all-linear",))
    bnb = file.mapping("bnb_config_kwargs")
    double = bnb.get("bnb_4bit_use_double_quant", True)
    if not isinstance(double, bool):
        raise file.error("bnb_4bit_use_double_quant", "true or false", double)
    # full FT with AMP keeps fp32 master weights only where the stack does: FSDP's upcast or DeepSpeed's optimizer
    master = bool(data.get("bf16") or data.get("fp16")) and bool(data.get("fsdp_config") or data.get("deepspeed"))
    return _read(file, "axolotl", "base_model", _used=used, method=method, targets=targets, _autocast_fp32_master=master,
                 grad_ckpt=bool(file.bool("gradient_checkpointing", False, also=("unsloth", "offload"))),
                 quant_type=_quant(file, bnb, "bnb_4bit_quant_type", "nf4"), double_quant=double,
                 train_embeddings=bool(data.get("lora_modules_to_save")), lengths=_axolotl_lengths(file, used))


def _llamafactory(file: _File) -> ReadBack:
    data = file.data
    used: set = {"quantization_bit", "finetuning_type", "lora_target", "disable_gradient_checkpointing",
                 "quantization_type", "double_quantization", "additional_target", "upcast_layernorm"}
    bits = file.int("quantization_bit", 4, 8)
    if bits not in (None, 4, 8):
        raise file.error("quantization_bit", "4 or 8", bits)
    full = file.str("finetuning_type", "lora", ("lora", "full")) == "full"
    if full and bits is not None:  # LLaMA-Factory's argument parser refuses it
        raise ExportError(f"{file.path}: quantization_bit: {bits} with finetuning_type: full (LLaMA-Factory quantizes "
                          "for LoRA only and refuses the file)", "drop quantization_bit, or set finetuning_type: lora",
                          field=FIELD, value=str(file.path))
    method = "full" if full else {4: "qlora", 8: "lora8bit"}.get(bits, "lora")
    # upcast_layernorm casts the norms' weights to fp32 (model_utils/checkpointing.py prepare_model_for_training: 1-D
    # parameters named *norm* / *ln*).  On a 4-bit base every norm's output turns fp32 and bitsandbytes returns each
    # 4-bit Linear's output in its input's dtype: the fp32 stream of TrainConfig.kbit_upcast "norms".  On a 16-bit or
    # 8-bit model the fp32 norms are not modelled.
    upcast = file.bool("upcast_layernorm", False)
    if upcast and method != "qlora":
        raise ExportError(f"{file.path}: upcast_layernorm: true keeps the norms in fp32, which is modelled on a 4-bit "
                          "base only (the estimate would read low here)",
                          "set upcast_layernorm: false (LLaMA-Factory's default) to estimate this file",
                          field=FIELD, value=str(file.path))
    targets = file.targets("lora_target", "all", ("all",))
    # LLaMA-Factory upcasts full fine-tuning's trainable parameters to fp32 unless pure_bf16
    master = bool(data.get("bf16") or data.get("fp16")) and not data.get("pure_bf16")
    back = _read(file, "llamafactory", "model_name_or_path", _used=used, method=method, targets=targets,
                 _autocast_fp32_master=master,
                 grad_ckpt=not file.bool("disable_gradient_checkpointing", False),
                 quant_type=_quant(file, data, "quantization_type", "nf4"),
                 double_quant=file.bool("double_quantization", True),
                 train_embeddings=bool(data.get("additional_target")), lengths=_llamafactory_lengths(file, used),
                 kbit_upcast="norms" if upcast else "none")
    if file.bool("neat_packing", False) and back.fields.get("attn") != "flash":
        # LLaMA-Factory's SFTDataCollatorWith4DAttentionMask: without FlashAttention-2, neat packing's block-diagonal
        # attention is a (micro batch, 1, L, L) mask in the compute dtype, on the GPU for the whole step
        seq, micro = back.fields.get("seq_len") or 2048, back.fields.get("micro_batch") or 1
        size = micro * seq * seq * (4 if back.fields.get("precision") == "fp32" else 2)
        back.not_modelled.append(f"neat_packing without flash_attn: fa2 (a block-diagonal {micro} x 1 x {seq} x {seq} "
                                 f"attention mask, {size / 2**30:.2f} GiB; flash_attn: fa2 packs without it)")
    return back


def _trl(file: _File) -> ReadBack:
    data = file.data
    used: set = {"dtype", "bnb_4bit_quant_storage", "use_peft", "load_in_4bit", "load_in_8bit", "lora_target_modules",
                 "gradient_checkpointing", "bnb_4bit_quant_type", "use_bnb_nested_quant", "lora_modules_to_save"}
    peft = file.bool("use_peft", False)
    _one_quantization(file, file.bool("load_in_4bit", False), file.bool("load_in_8bit", False))
    method = "full" if not peft else ("qlora" if file.bool("load_in_4bit", False) else
                                      "lora8bit" if file.bool("load_in_8bit", False) else "lora")
    targets = file.targets("lora_target_modules", "all-linear", ("all-linear",))
    # TRL's defaults where the file is silent: ModelConfig loads the weights in float32, and SFTConfig turns bf16
    # autocast on unless fp16 is set
    amp = bool(data.get("fp16")) or data.get("bf16", True) is not False
    fp32_weights = data.get("dtype", "float32") == "float32"
    lengths, padded_len = _trl_lengths(file, used, file.int("max_length", 1, MAX_SEQ_LEN))
    back = _read(file, "trl", "model_name_or_path", _used=used, method=method, targets=targets,
                 _autocast_fp32_master=amp and fp32_weights,
                 grad_ckpt=file.bool("gradient_checkpointing", True),
                 quant_type=_quant(file, data, "bnb_4bit_quant_type", "nf4"),
                 double_quant=file.bool("use_bnb_nested_quant", False),  # TRL's ModelConfig default
                 train_embeddings=bool(data.get("lora_modules_to_save")), lengths=lengths)
    if padded_len is not None:  # every batch padded past max_length, to pad_to_multiple_of
        back.fields["seq_len"] = padded_len
    if amp and back.fields["precision"] == "fp32":
        back.fields["precision"] = "fp16" if data.get("fp16") else "bf16"
    if amp and fp32_weights and method == "lora":
        # adapters over an fp32 base under 16-bit autocast is not modelled: fp32 throughout holds the base's
        # 4 bytes a weight, and is on the safe side for the activations autocast keeps in 16 bit
        back.fields["precision"] = "fp32"
    elif amp and fp32_weights and method in ("qlora", "lora8bit"):
        back.not_modelled.append("dtype float32 (TRL's default: the embeddings, norms and lm_head load in fp32, "
                                 "estimated as 16-bit; set dtype: bfloat16)")
    back.fields["stack"] = "trl"  # its SFTTrainer computes the loss with its fused LM head, whatever the file says
    return back
