"""A configuration in people's words, for every front end: "QLoRA r8, no checkpointing, 8-bit AdamW, chunked loss".

The planner's reasons and suggestions, the CLI's text and the app's lists all name configurations this way.
"""

from __future__ import annotations

METHOD_WORDS = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA", "lora8bit": "LoRA on an 8-bit base"}
OPTIMIZER_WORDS = {"adamw": "AdamW", "adamw_8bit": "8-bit AdamW", "paged_adamw_8bit": "paged 8-bit AdamW",
                   "sgd": "SGD", "adafactor": "Adafactor"}


def config_words(cfg) -> str:
    """"QLoRA r8, no checkpointing, 8-bit AdamW, chunked loss": a configuration as a sentence fragment."""
    method = METHOD_WORDS.get(cfg.method, cfg.method)
    if cfg.method == "full":
        method += (" (fp32 master weights)" if cfg.master_weights else
                   " (16-bit, DeepSpeed's fp32 master)" if cfg.zero and cfg.precision != "fp32" else " (16-bit)")
    parts = [f"{method} r{cfg.rank}" + (f" (dropout {cfg.lora_dropout:g})" if cfg.lora_dropout else "")
             if cfg.uses_adapters else method,
             "checkpointing" if cfg.grad_ckpt else "no checkpointing",
             f"micro batch {cfg.micro_batch}", OPTIMIZER_WORDS.get(cfg.optimizer, cfg.optimizer)]
    if cfg.kbit_upcast != "none":
        parts.append("fp32 norms (k-bit preparation)" if cfg.kbit_upcast == "norms"
                     else "fp32 norms, embeddings and lm_head (prepare_model_for_kbit_training)")
    if cfg.sharding not in ("single",):
        parts.append({"zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp": "FSDP", "ddp": "DDP"}.get(cfg.sharding, cfg.sharding))
    if cfg.offload != "none":
        parts.append({"optimizer": "optimizer offloaded to CPU", "params": "weights and optimizer offloaded to CPU"}
                     .get(cfg.offload, f"offload {cfg.offload}"))
    if cfg.loss == "shifted":
        parts.append("the loss of transformers before 4.49 (a shifted copy of the fp32 logits)")
    if cfg.loss == "chunked":
        parts.append("chunked loss")
    return ", ".join(parts)
