"""The YAML formats: TRL's CLI (`trl sft --config`), axolotl and LLaMA-Factory.

Key names follow each framework's current version (shared/reference/export-formats.md, section 3).
"""

from __future__ import annotations

import yaml

from .context import ExportContext, ExportError
from .launch import launched_by_accelerate


LIGER_NEEDED = "# needs: pip install liger-kernel (the plan's chunked cross-entropy is Liger's fused linear cross-entropy)\n"
# TRL's SFTTrainer computes its loss with a fused LM head, tile by tile, for every run (trl/trainer/utils.py
# add_fused_lm_head): a trl-yaml file always trains with a chunked loss, and core.render_export estimates it so.
TRL_CHUNKED = ("# loss: TRL's own fused LM head (tiles, never the full logits); estimated as the chunked "
               "cross-entropy, which bounds it\n")


def _dump(ctx: ExportContext, data: dict, run: str, extra: str = "") -> str:
    return ctx.header() + extra + f"# run: {run}\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def run_command(ctx: ExportContext, fmt: str) -> str:
    """The exact command that trains this file, with its companions (accelerate.yaml, ds_config.json)."""
    cfg = ctx.cfg
    several = cfg.gpus > 1
    if fmt == "trl-yaml":
        if launched_by_accelerate(cfg):
            return "accelerate launch --config_file accelerate.yaml -m trl.scripts.sft --config trl_sft.yaml --dataset_name NAME"
        return "trl sft --config trl_sft.yaml --dataset_name NAME"
    if fmt == "axolotl":
        return "axolotl train axolotl.yaml" + (f" --num-processes {cfg.gpus}" if several else "")
    if cfg.fsdp:
        return "accelerate launch --config_file accelerate.yaml -m llamafactory.launcher llamafactory.yaml"
    if several:
        return f"FORCE_TORCHRUN=1 NPROC_PER_NODE={cfg.gpus} llamafactory-cli train llamafactory.yaml"
    return "llamafactory-cli train llamafactory.yaml"


def _axolotl_precision(ctx: ExportContext) -> dict:
    """axolotl loads the weights in the 16-bit dtype whenever bf16 / fp16 is on.  Pure 16-bit: `bfloat16` /
    `float16` (no AMP).  fp32 master weights exist only where the stack keeps them: DeepSpeed's ZeRO
    optimizer, or FSDP's upcast of the trainable parameters under mixed precision."""
    cfg = ctx.cfg
    if ctx.pure_16bit:
        return {"bfloat16": True} if cfg.precision == "bf16" else {"float16": True}
    if cfg.master_weights and not (cfg.zero or cfg.fsdp):
        raise ExportError("axolotl loads the weights in 16 bits when bf16 / fp16 is on: it has no fp32-master "
                          "mixed precision on its own", "use peft-trl, trl-yaml or llamafactory for fp32 master "
                          "weights, or DeepSpeed / FSDP, which keep the fp32 copy")
    return {"bf16": ctx.bf16, "fp16": ctx.fp16}


def _llamafactory_precision(ctx: ExportContext) -> dict:
    """LLaMA-Factory upcasts trainable parameters to fp32 for full fine-tuning unless `pure_bf16` (fp32 master
    weights under bf16 autocast); pure 16-bit is `pure_bf16`, which it refuses under ZeRO-3."""
    cfg = ctx.cfg
    if ctx.pure_16bit:
        if cfg.precision != "bf16":
            raise ExportError("LLaMA-Factory has no pure fp16 training (only pure_bf16)",
                              "use bf16, or fp32 master weights")
        if cfg.zero == 3:
            raise ExportError("LLaMA-Factory refuses pure_bf16 with DeepSpeed ZeRO-3", "use ZeRO-2, or FSDP")
        return {"pure_bf16": True, "bf16": False, "fp16": False}
    return {"bf16": ctx.bf16, "fp16": ctx.fp16}


def _deepspeed_file(ctx: ExportContext) -> dict:
    return {"deepspeed": "ds_config.json"} if ctx.cfg.zero else {}


def trl_yaml(ctx: ExportContext) -> dict[str, str]:
    cfg = ctx.cfg
    data: dict = {"model_name_or_path": ctx.model_id, "dtype": ctx.load_dtype, "output_dir": "outputs",
                  "max_length": cfg.seq_len, "per_device_train_batch_size": cfg.micro_batch,
                  "gradient_accumulation_steps": ctx.grad_accum, "gradient_checkpointing": cfg.grad_ckpt,
                  "optim": ctx.hf_optim, "learning_rate": ctx.lr, "lr_scheduler_type": "cosine", "warmup_steps": 0.03,
                  "bf16": ctx.bf16, "fp16": ctx.fp16,
                  "attn_implementation": ctx.attn_implementation,
                  # the plan's batch lengths: fixed pads every (truncated) batch to max_length; variable leaves
                  # TRL's default, each batch padded to its longest sequence
                  **({"pad_to_multiple_of": cfg.seq_len} if cfg.lengths == "fixed" else {"packing": False})}
    if cfg.method != "full":
        data.update({"use_peft": True, "lora_r": cfg.rank, "lora_alpha": int(cfg.lora_alpha), "lora_dropout": cfg.lora_dropout,
                     "lora_target_modules": ctx.language_model_regex or ("all-linear" if ctx.all_linear
                                                                          else ctx.target_modules())})
        if cfg.train_embeddings:
            data["lora_modules_to_save"] = ["embed_tokens", "lm_head"]
    if cfg.method == "qlora":
        data.update({"load_in_4bit": True, "bnb_4bit_quant_type": cfg.quant_type, "use_bnb_nested_quant": cfg.double_quant})
        if ctx.quant_storage_bf16:
            data["bnb_4bit_quant_storage"] = "bfloat16"
    elif cfg.method == "lora8bit":
        data["load_in_8bit"] = True
    data.update(_deepspeed_file(ctx))
    return {"trl_sft.yaml": _dump(ctx, data, run_command(ctx, "trl-yaml"), TRL_CHUNKED)}


def axolotl(ctx: ExportContext) -> dict[str, str]:
    cfg = ctx.cfg
    data: dict = {"base_model": ctx.model_id, "sequence_len": cfg.seq_len, "micro_batch_size": cfg.micro_batch,
                  "gradient_accumulation_steps": ctx.grad_accum, "gradient_checkpointing": cfg.grad_ckpt,
                  "optimizer": ctx.hf_optim, "learning_rate": ctx.lr, "lr_scheduler": "cosine", "warmup_ratio": 0.03,
                  **_axolotl_precision(ctx),
                  # axolotl >= 0.19 takes transformers' name (flash_attention / sdp_attention are deprecated)
                  "attn_implementation": ctx.attn_implementation,
                  # fixed lengths: every batch padded to sequence_len (constant-size buffers); variable: per batch
                  "pad_to_sequence_len": cfg.lengths == "fixed",
                  "num_epochs": 1, "output_dir": "./outputs",
                  "datasets": [{"path": "DATASET", "type": "alpaca"}]}
    if cfg.method != "full":
        data.update({"adapter": "qlora" if cfg.method == "qlora" else "lora", "lora_r": cfg.rank,
                     "lora_alpha": int(cfg.lora_alpha), "lora_dropout": cfg.lora_dropout})
        if ctx.language_model_regex:  # a VLM: axolotl takes a regex string (its Gemma 3 vision examples do)
            data["lora_target_modules"] = ctx.language_model_regex
        elif ctx.all_linear:
            data["lora_target_linear"] = True
        else:
            data["lora_target_modules"] = ctx.target_modules()
        if cfg.train_embeddings:
            data["lora_modules_to_save"] = ["embed_tokens", "lm_head"]
    if cfg.method == "qlora":
        data["load_in_4bit"] = True  # axolotl's validator requires it with adapter: qlora
        if cfg.quant_type != "nf4" or not cfg.double_quant:
            data["bnb_config_kwargs"] = {"bnb_4bit_quant_type": cfg.quant_type,
                                         "bnb_4bit_use_double_quant": cfg.double_quant}
    elif cfg.method == "lora8bit":
        data["load_in_8bit"] = True
    if ctx.arch.checkpoint_quant == "mxfp4":
        # gpt-oss's MXFP4 experts are not trainable in transformers: axolotl's gpt-oss examples load them
        # dequantized to bf16 (transformers.Mxfp4Config(dequantize=True)), which is what the estimate counts
        data.update({"model_quantization_config": "Mxfp4Config", "model_quantization_config_kwargs": {"dequantize": True}})
    if cfg.fsdp:
        ctx.check_fsdp()
        data.update({"fsdp_version": 2, "fsdp_config": {
            "offload_params": cfg.offload == "params", "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT", "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "cpu_ram_efficient_loading": cfg.method != "qlora"}})  # FSDP2 + 4-bit + efficient loading deadlocks
    if ctx.chunked_loss:  # only the fused linear cross-entropy: the kernel the estimate assumes
        data.update({"plugins": ["axolotl.integrations.liger.LigerPlugin"], "liger_fused_linear_cross_entropy": True})
    data.update(_deepspeed_file(ctx))
    return {"axolotl.yaml": _dump(ctx, data, run_command(ctx, "axolotl"), LIGER_NEEDED if ctx.chunked_loss else "")}


def neat_packing_note(ctx: ExportContext) -> str | None:
    """Why the LLaMA-Factory file packs plainly, when it does."""
    if ctx.cfg.lengths != "fixed" or ctx.attention == "flash":
        return None
    return (f"llamafactory.yaml packs without neat_packing: under {ctx.attention} attention LLaMA-Factory's "
            "block-diagonal packing is a micro batch x 1 x L x L mask the estimate does not count, so packed "
            "sequences attend to each other (FlashAttention-2 packs them apart)")


def llamafactory(ctx: ExportContext) -> dict[str, str]:
    cfg = ctx.cfg
    if cfg.method == "full" and cfg.train_embeddings:
        raise ExportError("--train-embeddings applies to adapters", "full fine-tuning trains the embeddings anyway")
    data: dict = {"model_name_or_path": ctx.model_id, "stage": "sft", "do_train": True,
                  "finetuning_type": "full" if cfg.method == "full" else "lora",
                  "dataset": "DATASET", "template": "default", "cutoff_len": cfg.seq_len, "output_dir": "outputs",
                  "per_device_train_batch_size": cfg.micro_batch, "gradient_accumulation_steps": ctx.grad_accum,
                  "learning_rate": ctx.lr, "num_train_epochs": 1.0, "lr_scheduler_type": "cosine",
                  "warmup_ratio": 0.03, "optim": ctx.hf_optim, **_llamafactory_precision(ctx),
                  # LLaMA-Factory's names (hparams/model_args.py AttentionFunction): disabled is transformers' eager
                  "flash_attn": {"flash": "fa2", "eager": "disabled"}.get(ctx.attention, "sdpa"),
                  "disable_gradient_checkpointing": not cfg.grad_ckpt,
                  # LLaMA-Factory cannot pad every batch to cutoff_len: fixed lengths pack to it, without
                  # attention across the packed sequences (neat_packing) under FlashAttention-2; under SDPA or
                  # eager neat packing is a (micro batch, 1, L, L) mask the estimate does not count, so the
                  # sequences are packed plainly (see NEAT_PACKING_NOTE); variable is its default for sft
                  **({"packing": True, "neat_packing": ctx.attention == "flash"} if cfg.lengths == "fixed"
                     else {"packing": False})}
    if ctx.chunked_loss:
        data["enable_liger_kernel"] = True
    if cfg.method != "full":
        data.update({"lora_rank": cfg.rank, "lora_alpha": int(cfg.lora_alpha), "lora_dropout": cfg.lora_dropout,
                     "lora_target": "all" if ctx.all_linear else ",".join(ctx.target_modules())})
        if cfg.train_embeddings:
            data["additional_target"] = "embed_tokens,lm_head"
    if cfg.method == "qlora":
        # no upcast_layernorm (its default, false): fp32 norms would turn a 4-bit model's activations fp32, which
        # the estimate does not count (bitsandbytes' Linear4bit returns its input's dtype)
        data.update({"quantization_bit": 4, "quantization_method": "bnb", "quantization_type": cfg.quant_type,
                     "double_quantization": cfg.double_quant})
    elif cfg.method == "lora8bit":
        data.update({"quantization_bit": 8, "quantization_method": "bnb"})
    data.update(_deepspeed_file(ctx))
    return {"llamafactory.yaml": _dump(ctx, data, run_command(ctx, "llamafactory"), LIGER_NEEDED if ctx.chunked_loss else "")}
