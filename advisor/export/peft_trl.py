"""A runnable Python script: transformers + PEFT LoraConfig + BitsAndBytesConfig + TRL SFTConfig/SFTTrainer.

Current API names: `max_length` (TRL >= 0.16; `max_seq_length` is gone since 0.20), `processing_class`
(not `tokenizer`), `dtype` (not `torch_dtype`).  The config builders are module-level functions, so a test
(or a user) can import the script and build the real objects without training.
"""

from __future__ import annotations

from .context import ExportContext

FILENAME = "train.py"


def render(ctx: ExportContext) -> dict[str, str]:
    cfg = ctx.cfg
    quant = "None"
    if cfg.method == "qlora":
        storage = ", bnb_4bit_quant_storage=torch.bfloat16" if ctx.quant_storage_bf16 else ""
        quant = (f"BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={cfg.quant_type!r}, "
                 f"bnb_4bit_use_double_quant={cfg.double_quant}, bnb_4bit_compute_dtype=torch.{ctx.dtype}{storage})")
    elif cfg.method == "lora8bit":
        quant = "BitsAndBytesConfig(load_in_8bit=True)"
    targets = '"all-linear"' if ctx.all_linear else repr(ctx.target_modules())
    saved = 'modules_to_save=["embed_tokens", "lm_head"], ' if cfg.train_embeddings else ""
    lora = "None" if cfg.method == "full" else (
        f"LoraConfig(r={cfg.rank}, lora_alpha={cfg.lora_alpha:g}, lora_dropout=0.0, target_modules={targets}, "
        f'{saved}task_type="CAUSAL_LM")')
    attn = {"flash": "flash_attention_2", "eager": "eager"}.get(cfg.attn, "sdpa")
    precision = {"bf16": "bf16=True", "fp16": "fp16=True", "fp32": "bf16=False"}[cfg.precision]
    deepspeed = ', deepspeed="ds_config.json"' if cfg.zero else ""
    text = f'''{ctx.header()}"""Fine-tune {ctx.model_id} with the plan above.

    python train.py --dataset NAME_OR_PATH [--output-dir DIR]
"""

import argparse

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import SFTConfig, SFTTrainer

MODEL_ID = {ctx.model_id!r}


def quantization_config():
    return {quant}


def lora_config():
    return {lora}


def training_args(output_dir="outputs"):
    return SFTConfig(
        output_dir=output_dir,
        max_length={cfg.seq_len},
        per_device_train_batch_size={cfg.micro_batch},
        gradient_accumulation_steps={ctx.grad_accum},
        gradient_checkpointing={cfg.grad_ckpt},
        optim={ctx.hf_optim!r},
        {precision},
        learning_rate={ctx.lr:g},
        warmup_steps=0.03,
        lr_scheduler_type="cosine",
        logging_steps=10{deepspeed},
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a Hugging Face dataset id or a local data file")
    parser.add_argument("--output-dir", default="outputs")
    args = parser.parse_args()
    from datasets import load_dataset

    model = AutoModelForCausalLM.from_pretrained(MODEL_ID, dtype=torch.{ctx.dtype}, attn_implementation={attn!r},
                                                 quantization_config=quantization_config())
    trainer = SFTTrainer(model=model, args=training_args(args.output_dir),
                         train_dataset=load_dataset(args.dataset, split="train"),
                         processing_class=AutoTokenizer.from_pretrained(MODEL_ID), peft_config=lora_config())
    trainer.train()


if __name__ == "__main__":
    main()
'''
    return {FILENAME: text}
