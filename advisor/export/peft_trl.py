"""A runnable Python script: transformers + PEFT LoraConfig + BitsAndBytesConfig + TRL SFTConfig/SFTTrainer.

The script is the real job, so it trains what was estimated:
- the trainer arguments are built before the model loads: with a ZeRO-3 config they switch on DeepSpeed's
  sharded loading (transformers' HfDeepSpeedConfig -> zero.Init), so no rank ever holds the whole model;
- precision and loss follow the plan (load dtype, bf16/fp16 both written, the standard or the Liger loss);
- several GPUs (or ZeRO/FSDP) get `accelerate launch`; accelerate.yaml and ds_config.json come next to the
  script (launch.companions) and are found through the script's own folder, not the working directory;
- `--synthetic --random-init --max-steps N` checks the plan without downloads, and every optimizer step prints
  one JSON line (the `step` events of `lora-advisor verify`'s worker) on rank 0's stdout.

Current API names: `max_length` (TRL >= 0.16; `max_seq_length` is gone since 0.20), `processing_class`
(not `tokenizer`), `dtype` (not `torch_dtype`).  The config builders are module-level functions, so a test
(or a user) can import the script and build the real objects without training.
"""

from __future__ import annotations

from .context import ExportContext
from .launch import launched_by_accelerate

FILENAME = "train.py"
ACCELERATE_CONFIG = "accelerate.yaml"


def launch_command(ctx: ExportContext) -> str:
    """How to start the script, from its own folder (the header and --help print it).  render_all writes
    accelerate.yaml (and ds_config.json under ZeRO) next to it when this names them."""
    if launched_by_accelerate(ctx.cfg):
        return f"accelerate launch --config_file {ACCELERATE_CONFIG} {FILENAME}"
    return f"python {FILENAME}"


def _requirements(ctx: ExportContext) -> str:
    cfg = ctx.cfg
    names = ["torch", "transformers", "peft", "trl", "accelerate", "datasets"]
    if cfg.zero:
        names.append("deepspeed")
    if cfg.method in ("qlora", "lora8bit"):
        names.append("bitsandbytes")
    if ctx.chunked_loss:
        names[names.index("trl")] = "trl with the fused LM head (trl.trainer.utils.add_fused_lm_head; 1.16 has it)"
    return ", ".join(names)


def _quantization(ctx: ExportContext) -> str:
    cfg = ctx.cfg
    if cfg.method == "qlora":
        storage = ", bnb_4bit_quant_storage=torch.bfloat16" if ctx.quant_storage_bf16 else ""
        return (f"BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type={cfg.quant_type!r}, "
                f"bnb_4bit_use_double_quant={cfg.double_quant}, bnb_4bit_compute_dtype=torch.{ctx.dtype}{storage})")
    if cfg.method == "lora8bit":
        return "BitsAndBytesConfig(load_in_8bit=True)"
    if ctx.arch.checkpoint_quant == "mxfp4":
        # gpt-oss ships MXFP4 experts, which transformers cannot train (Mxfp4HfQuantizer.is_trainable): load them
        # dequantized to bf16, which is what the estimate counts
        return '__import__("transformers").Mxfp4Config(dequantize=True)  # MXFP4 experts loaded as bf16 (trainable)'
    return "None"


def _lora(ctx: ExportContext) -> str:
    cfg = ctx.cfg
    if cfg.method == "full":
        return "None"
    targets = ('"all-linear"' if ctx.all_linear else repr(ctx.target_modules())) if ctx.language_model_regex is None \
        else repr(ctx.language_model_regex)  # a VLM: the language model's Linears only
    saved = 'modules_to_save=["embed_tokens", "lm_head"], ' if cfg.train_embeddings else ""
    return (f"LoraConfig(r={cfg.rank}, lora_alpha={cfg.lora_alpha:g}, lora_dropout={cfg.lora_dropout:g}, "
            f'target_modules={targets}, {saved}task_type="CAUSAL_LM")')


# The loss, as code in the script.  Standard: transformers' own causal-LM loss on the full fp32 logits (what
# the estimate counts); TRL's SFTTrainer would compute a chunked loss instead and use less memory than planned.
STANDARD_LOSS = '''

class PlannedLossTrainer(SFTTrainer):
    """SFTTrainer with the plan's loss: transformers' causal-LM loss on the full fp32 logits.  TRL's own loss
    is chunked (no full logits), which the memory plan did not assume."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs["use_cache"] = False  # a KV cache is never needed in training, and would hold memory
        return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


TRAINER = PlannedLossTrainer
'''

# Chunked: TRL's own SFT loss, its fused LM head, computes the loss tile by tile and never holds the full
# (batch, seq, vocab) logits (trl/trainer/utils.py add_fused_lm_head).  Liger is not used here: under TRL 1.16
# `use_liger_kernel` refuses Liger's fused cross-entropy and only patches RMSNorm / SwiGLU / RoPE, kernels the
# estimate does not model.  The estimate's chunked term (Liger-style 1024-token chunks) bounds TRL's tiles.
CHUNKED_LOSS = '''

TRAINER = SFTTrainer  # TRL's loss is chunked: no full (batch, seq, vocab) logits, like the plan


def require_chunked_loss():
    """The plan's loss is chunked: never train silently with a TRL whose SFT loss holds the full logits."""
    try:
        from trl.trainer.utils import add_fused_lm_head  # noqa: F401
    except ImportError:
        sys.exit("this plan's chunked loss needs a TRL whose SFTTrainer has the fused LM head: pip install -U trl")
'''


REQUIRE_FLASH = '''

def attention_for(cpu):
    """The plan's FlashAttention-2, or stop with a hint before loading anything (transformers would end in an
    ImportError traceback).  A --cpu smoke run checks the script, not the plan: SDPA there (flash is CUDA only)."""
    if cpu:
        return "sdpa"
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        sys.exit("this plan uses FlashAttention-2 and the flash-attn package is not installed: pip install flash-attn "
                 "(CUDA builds only), or export again with --attn sdpa (lora-advisor estimates that setup too)")
    return ATTENTION
'''


# TRL's SFTTrainer casts the trainable parameters of a 4-bit / 8-bit model to bf16 (trl 1.16 sft_trainer.py,
# "When using QLoRA, the PEFT adapter weights are converted to bf16"); the plan counts PEFT's fp32 adapters
# (autocast_adapter_dtype=True), as the HF Trainer keeps them, so the script puts them back before training.
RESTORE_ADAPTERS = '''

def restore_planned_adapters(model):
    """The plan's fp32 LoRA adapters: TRL's SFTTrainer made a quantized model's trainable parameters bf16."""
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
'''


def render(ctx: ExportContext) -> dict[str, str]:
    cfg = ctx.cfg
    attn = ctx.attn_implementation
    launch = launch_command(ctx)
    deepspeed = '\n        deepspeed=str(HERE / "ds_config.json"),' if cfg.zero else ""
    engine = (f"DeepSpeed ZeRO-{cfg.zero}" if cfg.zero else "FSDP" if cfg.fsdp
              else "DDP" if cfg.gpus > 1 else "one process")
    beside = ""
    if launched_by_accelerate(cfg):
        beside = f" ({ACCELERATE_CONFIG}{' and ds_config.json' if cfg.zero else ''} sit next to this file)"
    text = f'''{ctx.header()}"""Fine-tune {ctx.model_id}: {cfg.method} on {cfg.gpus} GPU(s), {engine}, as planned above.

Run from this folder{beside}:

    {launch} --dataset NAME_OR_PATH [--output-dir DIR]

Check that the plan fits first, without downloading weights or data (random weights, random tokens):

    {launch} --synthetic --random-init --max-steps 10

Needs {_requirements(ctx)}.
Every optimizer step prints one JSON line on rank 0's stdout: step, loss, seconds, tokens/s, CUDA memory.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, Trainer, TrainerCallback
from trl import SFTConfig, SFTTrainer

MODEL_ID = {ctx.model_id!r}
HERE = Path(__file__).resolve().parent  # config files travel with this script, wherever it is started from
LAUNCH = {launch!r}
DTYPE = torch.{ctx.load_dtype}  # the planned weight dtype (fp32 master weights for mixed-precision full FT)
ATTENTION = {attn!r}
SEQ_LEN = {cfg.seq_len}
LENGTHS = {cfg.lengths!r}  # fixed: every batch padded to SEQ_LEN; variable: each padded to its longest (unpacked)
MICRO_BATCH = {cfg.micro_batch}
GRAD_ACCUM = {ctx.grad_accum}


def quantization_config():
    return {_quantization(ctx)}


def lora_config():
    return {_lora(ctx)}


def training_args(output_dir="outputs", max_steps=-1, use_cpu=False, save=True):
    return SFTConfig(
        output_dir=output_dir,
        save_strategy="steps" if save else "no",  # the Trainer's default: every 500 steps and at the end
        max_length=SEQ_LEN,
        packing=False,
        pad_to_multiple_of=SEQ_LEN if LENGTHS == "fixed" else None,  # the batch shapes the plan assumed
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GRAD_ACCUM,
        gradient_checkpointing={cfg.grad_ckpt},
        optim={ctx.hf_optim!r},
        bf16={ctx.bf16},  # both written: SFTConfig's default is bf16=True
        fp16={ctx.fp16},
        use_liger_kernel=False,  # the chunked loss, when planned, is TRL's own (see TRAINER)
        learning_rate={ctx.lr:g},
        warmup_steps=0.03,
        lr_scheduler_type="cosine",
        logging_steps=1,  # a loss for every optimizer step's JSON line
        max_steps=max_steps,
        use_cpu=use_cpu,{deepspeed}
    )
{STANDARD_LOSS if not ctx.chunked_loss else CHUNKED_LOSS}{RESTORE_ADAPTERS if ctx.restores_fp32_adapters else ""}{REQUIRE_FLASH if attn == "flash_attention_2" else ""}

class StepPrinter(TrainerCallback):
    """One JSON line per optimizer step on rank 0's stdout, with the keys of `lora-advisor verify`'s step events.
    tokens_per_s counts this rank's planned tokens (exact with --synthetic)."""

    def __init__(self):
        self.started, self.seconds, self.memory = 0.0, 0.0, {{}}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print(json.dumps({{"event": "start", "device": args.device.type, "world_size": args.world_size}}),
                  flush=True)

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
            self.memory = {{"allocated_bytes": torch.cuda.memory_allocated(),
                           "reserved_bytes": torch.cuda.memory_reserved(),
                           "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                           "peak_reserved_bytes": torch.cuda.max_memory_reserved()}}
        self.seconds = time.perf_counter() - self.started

    def on_log(self, args, state, control, logs=None, **kwargs):
        # the Trainer logs after on_step_end, with the loss averaged over the step's micro batches and ranks
        if state.is_world_process_zero and logs and "loss" in logs:
            tokens = SEQ_LEN * MICRO_BATCH * GRAD_ACCUM
            print(json.dumps({{"event": "step", "step": state.global_step, "loss": float(logs["loss"]),
                              "seconds": self.seconds, "tokens_per_s": tokens / max(self.seconds, 1e-9),
                              **self.memory}}), flush=True)


def load_model(source, random_init, attention=ATTENTION):
    """The model to train: from a checkpoint, or (--random-init) built from its config with random weights."""
    kwargs = {{"dtype": DTYPE, "attn_implementation": attention}}
    if random_init:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quantization_config(), **kwargs)
    # a vision-language model: the plan trains its language model; the vision tower and projector stay frozen
    # (Gemma 4 names its projector embed_vision)
    for name in ("vision_tower", "multi_modal_projector", "embed_vision"):
        part = getattr(getattr(model, "model", model), name, None)
        if part is not None:
            part.requires_grad_(False)
    return model


def synthetic_dataset(vocab_size, rows):
    """Random token ids of the planned length (variable lengths: each row from SEQ_LEN / 8 to SEQ_LEN, the last
    at SEQ_LEN): measures the plan with no dataset and no tokenizer."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    lengths = [SEQ_LEN] * rows
    if LENGTHS == "variable":
        low = max(1, SEQ_LEN // 8)
        lengths = torch.randint(low, SEQ_LEN + 1, (rows,), generator=generator).tolist()
        lengths[-1] = SEQ_LEN
    ids = [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]
    return Dataset.from_dict({{"input_ids": ids}})


def stand_in_tokenizer():
    """SFTTrainer reads only the pad token from the tokenizer when the data are token ids already."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = Tokenizer(models.WordLevel({{"<pad>": 0}}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=vocab, pad_token="<pad>")


def load_training_data(name):
    from datasets import load_dataset

    path = Path(name)
    if path.is_file():  # a local file: datasets names the builder by the file's format
        builder = {{".csv": "csv", ".parquet": "parquet", ".txt": "text"}}.get(path.suffix, "json")
        return load_dataset(builder, data_files=str(path), split="train")
    return load_dataset(name, split="train")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="a Hugging Face dataset id or a local data file (.jsonl, .csv, .parquet)")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--model", default=MODEL_ID, help="a local model folder, config.json or hub id instead of "
                        "MODEL_ID (same architecture, or the plan does not apply)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps "
                        "(default: the whole dataset; 10 with --synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="random tokens of the planned length and batch, "
                        "no dataset and no tokenizer")
    parser.add_argument("--random-init", action="store_true", help="random weights built from the model's config "
                        "(downloads config.json only)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU: a smoke test of this script, "
                        "not of the plan")
    args = parser.parse_args(argv)
    if not args.dataset and not args.synthetic:
        parser.error(f"name the data: {{LAUNCH}} --dataset NAME_OR_PATH (or --synthetic for random tokens)")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be 1 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
{"    require_chunked_loss()" + chr(10) if ctx.chunked_loss else ""}    if not args.cpu and not torch.cuda.is_available():
        sys.exit(f"no CUDA GPU is visible; this plan is for {cfg.gpus} GPU(s) (--cpu runs a CPU smoke test)")
    if args.random_init and quantization_config() is not None:
        # transformers quantizes while it loads a checkpoint, never in from_config
        sys.exit("--random-init cannot build quantized weights; drop it to load (and download) the checkpoint")
    max_steps = args.max_steps or (10 if args.synthetic else -1)
    # The trainer arguments come before the model: with a ZeRO-3 config they switch on DeepSpeed's sharded
    # loading (zero.Init), so each GPU only ever holds its shard of the weights.
    # A --synthetic run checks the plan: a checkpoint of random tokens' training is only minutes of disk writes.
    training = training_args(args.output_dir, max_steps=max_steps, use_cpu=args.cpu, save=not args.synthetic)
    try:
        model = load_model(args.model, args.random_init{", attention_for(args.cpu)" if attn == "flash_attention_2" else ""})
        if args.synthetic:
            rows = max_steps * MICRO_BATCH * GRAD_ACCUM * training.world_size
            data, tokenizer = synthetic_dataset(model.config.get_text_config().vocab_size, rows), stand_in_tokenizer()
        else:
            data, tokenizer = load_training_data(args.dataset), AutoTokenizer.from_pretrained(args.model)
    except OSError as exc:  # a missing file, a wrong hub id, no network
        sys.exit(f"cannot load {{args.model if not args.dataset else args.model + ' or ' + args.dataset}}: "
                 f"{{str(exc).splitlines()[0]}}")
    trainer = TRAINER(model=model, args=training, train_dataset=data, processing_class=tokenizer,
                      peft_config=lora_config(), callbacks=[StepPrinter()])
{"    restore_planned_adapters(trainer.model)" + chr(10) if ctx.restores_fp32_adapters else ""}    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:
        print(json.dumps({{"event": "oom", "step": trainer.state.global_step + 1,
                          "message": str(exc).splitlines()[0]}}), flush=True)
        sys.exit("out of GPU memory: the plan does not fit (see the estimate in this file's header)")
    # Every rank leaves together and closes the process group itself: a rank that exits while another still
    # writes its checkpoint, or that leaves the group to the interpreter's teardown, can abort the launch.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
'''
    return {FILENAME: text}
