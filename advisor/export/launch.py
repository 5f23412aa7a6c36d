"""Launch configs: DeepSpeed JSON (ZeRO-1/2/3 with the HF Trainer's "auto" values) and accelerate YAML."""

from __future__ import annotations

import json

import yaml

from .context import ExportContext, ExportError

EIGHT_BIT = ("adamw_8bit", "paged_adamw_8bit")


def deepspeed_config(ctx: ExportContext) -> dict:
    cfg = ctx.cfg
    if not cfg.zero:
        raise ExportError("the deepspeed format applies to DeepSpeed ZeRO configurations only",
                          "this configuration uses no ZeRO stage")
    # the gradient buckets the estimate counted (memory/sharding.py deepspeed_bucket_bytes); "auto" = hidden_size^2
    zero: dict = {"stage": cfg.zero, "overlap_comm": cfg.overlap_comm, "contiguous_gradients": cfg.contiguous_gradients,
                  "reduce_bucket_size": cfg.reduce_bucket_size or "auto"}
    if cfg.zero == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     # filled only by accelerate when "auto": give it explicitly (see the reference, rule 6)
                     "stage3_gather_16bit_weights_on_model_save": True})
    config: dict = {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}, "zero_optimization": zero,
                    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
                    "train_micro_batch_size_per_gpu": "auto"}
    if cfg.offload in ("optimizer", "params"):
        if cfg.optimizer in EIGHT_BIT:
            # DeepSpeed forces its own CPU Adam with optimizer offload (zero_force_ds_cpu_optimizer): a bnb
            # optimizer from the Trainer raises ZeRORuntimeException
            raise ExportError(f"--optimizer {cfg.optimizer} with --offload: DeepSpeed replaces the optimizer with "
                              "its CPU Adam when states are offloaded", "use --optimizer adamw with --offload, "
                              "or keep 8-bit states on the GPU without --offload")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                            "weight_decay": "auto"}}
    if cfg.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if cfg.optimizer in EIGHT_BIT:
        config["zero_allow_untested_optimizer"] = True
    return config


def deepspeed(ctx: ExportContext) -> dict[str, str]:
    return {"ds_config.json": json.dumps(deepspeed_config(ctx), indent=2) + "\n"}


def accelerate(ctx: ExportContext) -> dict[str, str]:
    cfg = ctx.cfg
    data: dict = {"compute_environment": "LOCAL_MACHINE", "debug": False, "machine_rank": 0,
                  "main_training_function": "main", "num_machines": 1, "num_processes": cfg.gpus,
                  "rdzv_backend": "static", "same_network": True, "use_cpu": False}
    files = {}
    mixed = ctx.mixed_precision  # the trainer's bf16 / fp16 flags say the same (context.py)
    if cfg.zero:
        # with deepspeed_config_file, accelerate refuses its own mixed_precision / zero_stage / offload keys
        data.update({"distributed_type": "DEEPSPEED",
                     "deepspeed_config": {"deepspeed_config_file": "ds_config.json", "zero3_init_flag": cfg.zero == 3}})
        files.update(deepspeed(ctx))
    elif cfg.fsdp:
        if cfg.optimizer in EIGHT_BIT:
            ctx.hf_optim  # raises the FSDP + 8-bit error
        ctx.check_fsdp()  # (FSDP + optimizer-only offload never gets here: TrainConfig refuses it)
        qlora = cfg.method == "qlora"
        fsdp = {"fsdp_version": 1 if qlora else 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_offload_params": cfg.offload == "params", "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": True, "fsdp_reshard_after_forward": True}
        if qlora:  # PEFT's QLoRA + FSDP recipe: FSDP1, original params off, RAM-efficient loading
            fsdp.update({"fsdp_use_orig_params": False, "fsdp_sharding_strategy": "FULL_SHARD"})
            fsdp.pop("fsdp_reshard_after_forward")
        data.update({"distributed_type": "FSDP", "mixed_precision": mixed, "fsdp_config": fsdp})
    else:
        data.update({"distributed_type": "MULTI_GPU" if cfg.gpus > 1 else "NO", "mixed_precision": mixed})
    files["accelerate.yaml"] = ctx.header() + yaml.safe_dump(data, sort_keys=False)
    return files


# Formats that name a companion file train only with it: they always come with it (identical text, so a
# second format writing the same file never collides).
NEEDS_DEEPSPEED_JSON = ("peft-trl", "trl-yaml", "axolotl", "llamafactory")  # accelerate writes its own
NEEDS_ACCELERATE_YAML = ("peft-trl", "trl-yaml")


def launched_by_accelerate(cfg) -> bool:
    """Several processes, or a sharding engine (DeepSpeed needs its launcher even for one GPU)."""
    return cfg.gpus > 1 or bool(cfg.zero) or cfg.fsdp


def companions(ctx: ExportContext, fmt: str) -> dict[str, str]:
    """The files a format's own file refers to: ds_config.json under ZeRO; accelerate.yaml where the
    launch goes through `accelerate launch --config_file accelerate.yaml` (several GPUs, ZeRO or FSDP, whose
    settings live in that file for TRL and LLaMA-Factory)."""
    cfg = ctx.cfg
    files: dict[str, str] = {}
    if cfg.zero and fmt in NEEDS_DEEPSPEED_JSON:
        files.update(deepspeed(ctx))
    if (fmt in NEEDS_ACCELERATE_YAML and launched_by_accelerate(cfg)) or (fmt == "llamafactory" and cfg.fsdp):
        files.update(accelerate(ctx))
    return files
