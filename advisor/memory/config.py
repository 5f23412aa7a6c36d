"""What a training run is configured to do: the input of the memory model."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from ..models.arch import ModelArch

Method = Literal["full", "lora", "qlora", "lora8bit"]
Precision = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"]
Attention = Literal["auto", "sdpa", "flash", "eager"]
Offload = Literal["none", "optimizer", "params"]
QuantType = Literal["nf4", "fp4", "gptq", "awq"]
# 4-bit bases that come pre-quantized in the checkpoint (GPTQ, AWQ) rather than quantized by bitsandbytes on load
PREQUANTIZED = ("gptq", "awq")
# standard: transformers' ForCausalLMLoss from 4.49 on (fp32 upcast of the logits, labels padded, no logits copy);
# shifted: before 4.49 (loss/loss_utils.py 4.46-4.48, the models' own forward before): the fp32 logits are shifted into
# a contiguous copy, one more tokens x vocab fp32 tensor at the loss; chunked: a fused / tiled cross-entropy.
LossKind = Literal["standard", "shifted", "chunked"]
# The training stack that runs the job: what it allocates beyond the step differs.  transformers = the HF
# Trainer (+ PEFT), which axolotl and LLaMA-Factory sit on; trl = TRL's SFTTrainer, whose loss is its fused
# LM head in tiles whatever the config says (trl/trainer/utils.py add_fused_lm_head); torchtune = its own
# recipes, pure 16-bit (no autocast master copy); its CEWithChunkedOutputLoss still materialises the 16-bit
# logits (only the fp32 upcast is chunked), so it is not the tiled `chunked` loss: --loss standard bounds it.
# DeepSpeed and FSDP are the sharding engines under any of them (zero, fsdp).
Stack = Literal["auto", "transformers", "trl", "axolotl", "llamafactory", "torchtune"]
# How long each batch is.  fixed: every batch holds seq_len tokens per sequence (packed data, or padded to the
# cutoff); variable: unpacked data padded per batch to its longest sequence, the frameworks' default
# (TRL packing=False, LLaMA-Factory packing unset, axolotl sample_packing off).  The step's tensors at the
# longest batch are the same; what differs is the caching allocator's cache (memory/overheads.py).
Lengths = Literal["fixed", "variable"]
# What a k-bit preparation step leaves in fp32 of a bitsandbytes-quantized model (the non-quantized tensors):
# none: current TRL (>= 0.26), axolotl (it casts norms and embeddings back to the 16-bit dtype), LLaMA-Factory;
# norms: TRL 0.7.5-0.25 under bf16 (norms fp32; embeddings and lm_head back to bf16);
# all: PEFT's prepare_model_for_kbit_training as a script calls it (embeddings, norms, lm_head in fp32; biases too, until
# bitsandbytes casts them back at the first forward).
KbitUpcast = Literal["none", "norms", "all"]
STACK_LOSS = {"trl": "chunked"}

TARGET_PRESETS = ("all-linear", "attention", "q,v")


class TrainConfig(BaseModel):
    """One fine-tuning setup.  Field names are the CLI flags without dashes."""

    model_config = ConfigDict(frozen=True)

    method: Method = Field("lora", description="full fine-tuning, LoRA on a 16-bit base, QLoRA (4-bit base), or LoRA on an 8-bit base.")
    precision: Precision = Field("bf16", description="Dtype of the weights and the compute.")
    master_weights: bool = Field(False, description="Full FT only: keep fp32 master weights and train under autocast (mixed precision).")
    rank: int = Field(16, gt=0, le=4096, description="LoRA rank r.")
    alpha: float | None = Field(None, gt=0, le=1e6, allow_inf_nan=False, description="LoRA alpha; 2r when not given.")
    targets: tuple[str, ...] = Field(("all-linear",), description="LoRA target modules: a preset (all-linear, attention, q,v) or HF module names.")
    train_embeddings: bool = Field(False, description="Also train embed_tokens and lm_head in full (PEFT modules_to_save).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description=(
        "LoRA dropout p.  Above 0 PEFT runs lora_A on a dropped-out copy of each adapted module's input "
        "(lora_B(lora_A(dropout(x)))) and keeps that copy and its mask for the backward: memory per adapted "
        "module, not shared between the modules that read one input.  0 (what the exports write) adds nothing."))
    quant_type: QuantType = Field("nf4", description="QLoRA 4-bit base: bitsandbytes nf4 / fp4 (quantized on load), "
                                  "or a pre-quantized GPTQ / AWQ checkpoint (4-bit, group size 128).")
    double_quant: bool = Field(True, description="QLoRA: quantize the quantization constants too.")
    kbit_upcast: KbitUpcast = Field("none", description=(
        "QLoRA (bitsandbytes): what k-bit preparation leaves in fp32.  all = PEFT's prepare_model_for_kbit_training "
        "as a hand-written script calls it (embeddings, norms and lm_head fp32); norms = TRL 0.7.5 to 0.25 "
        "under bf16 (fp32 norms); none = current TRL, axolotl, LLaMA-Factory.  fp32 norms make the residual "
        "stream and the 4-bit layers' outputs fp32 (bitsandbytes returns its input's dtype).  Under DeepSpeed it is "
        "none: the engine casts every parameter back to 16 bit."))
    seq_len: int = Field(2048, gt=0, le=1 << 24, description="Tokens per sequence.")
    micro_batch: int = Field(1, gt=0, le=1 << 16, description="Sequences per forward pass on each GPU.")
    grad_ckpt: bool = Field(False, description="Gradient checkpointing per decoder layer.")
    lengths: Lengths = Field("fixed", description="fixed = every batch at seq_len (packed, or padded to it); "
                             "variable = unpacked data padded per batch to its longest sequence (seq_len is the "
                             "cutoff): the peak is the same at the longest batch, but on a card with room the "
                             "allocator keeps segments of every size it has seen, so reserved memory grows.")
    images_per_sample: int = Field(0, ge=0, le=1024, description="Images in each sequence (vision-language models); "
                                   "their tokens are counted inside seq_len.")
    image_size: int | None = Field(None, gt=0, le=1 << 15, description="Side of the images in pixels; the processor "
                                   "resizes to the tower's own size (Gemma 3: 896), so it only says that there are "
                                   "images (1 per sample unless images_per_sample says more).")
    image_tokens: int | None = Field(None, gt=0, le=1 << 24, description="Image tokens per sequence, given directly "
                                     "(instead of images x the model's tokens per image); inside seq_len.")
    optimizer: Optimizer = "adamw"
    attn: Attention = Field("auto", description="Attention kernel: sdpa/flash keep no s x s matrix, eager does; auto = what transformers picks (sdpa, or eager where sdpa is unsupported).")
    loss: LossKind = Field("standard", description="standard = HF causal-LM loss on fp32 logits (transformers >= "
                           "4.49); shifted = the same before 4.49, which shifts the fp32 logits into a contiguous copy; "
                           "chunked = fused/chunked cross-entropy.")
    gpus: int = Field(1, gt=0, le=1024)
    zero: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage (0 = plain DDP when gpus > 1).")
    fsdp: bool = Field(False, description="FSDP full shard (like ZeRO-3).")
    offload: Offload = Field("none", description="CPU offload of optimizer states, or of states and params.")
    stack: Stack = Field("auto", description="The training stack that runs the job (auto = transformers' Trainer). "
                         "trl always computes a chunked (tiled) loss; torchtune trains pure 16-bit.")
    # DeepSpeed's gradient buffers, as its JSON config sets them (our exported ds_config.json: "auto", overlap on)
    reduce_bucket_size: int | None = Field(None, gt=0, le=1 << 40, description="DeepSpeed zero_optimization."
                                           "reduce_bucket_size in elements; None = \"auto\", which transformers "
                                           "fills with hidden_size^2.")
    overlap_comm: bool = Field(True, description="DeepSpeed zero_optimization.overlap_comm: ZeRO-2 double-buffers "
                               "its gradient bucket.")
    contiguous_gradients: bool = Field(True, description="DeepSpeed zero_optimization.contiguous_gradients: the "
                                       "gradient bucket buffers exist only with it.")

    @model_validator(mode="before")
    @classmethod
    def _stack_decides(cls, data):
        """What the stack does whatever the config says: its loss kernel; and DeepSpeed's ZeRO optimizer, which
        casts the module to 16 bits and keeps its own fp32 master partition (memory/sharding.py), so
        `master_weights` (an fp32 module under autocast) does not exist there."""
        if isinstance(data, dict):
            if data.get("stack") in STACK_LOSS:
                data = {**data, "loss": STACK_LOSS[data["stack"]]}
            if data.get("zero") and data.get("master_weights"):
                data = {**data, "master_weights": False}
            if data.get("zero") and data.get("kbit_upcast", "none") != "none":
                # the DeepSpeed engine casts every floating parameter back to its 16-bit dtype, the upcast ones
                # included (deepspeed/runtime/engine.py _configure_distributed_model -> _cast_module_mixed_precision)
                data = {**data, "kbit_upcast": "none"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.fsdp and self.zero:
            raise ValueError("--fsdp and --zero are two sharding engines; pick one")
        if self.quant_type in PREQUANTIZED and self.method != "qlora":
            raise ValueError(f"--quant {self.quant_type} is a 4-bit base: it goes with --method qlora")
        if self.offload == "params" and not (self.zero == 3 or self.fsdp):
            raise ValueError("--offload params needs --zero 3 or --fsdp (only sharded params can live on the CPU)")
        if self.fsdp and self.offload == "optimizer":
            raise ValueError("FSDP cannot offload only the optimizer states: its CPU offload moves parameters, "
                             "gradients and optimizer states together (offload params), or use ZeRO-2/3 for "
                             "optimizer offload")
        if self.offload != "none" and not (self.zero or self.fsdp):
            raise ValueError("--offload needs --zero 1/2/3 or --fsdp")
        if self.lora_dropout and self.method == "full":
            raise ValueError("--lora-dropout applies to LoRA / QLoRA; full fine-tuning has no adapters")
        if self.master_weights and self.method != "full":
            raise ValueError("--master-weights applies to full fine-tuning only")
        if self.stack == "torchtune" and self.master_weights:
            raise ValueError("torchtune's recipes train pure 16-bit: they keep no fp32 master weights")
        if self.image_tokens is not None and self.image_tokens > self.seq_len:
            raise ValueError(f"{self.image_tokens} image tokens do not fit in a sequence of {self.seq_len} tokens: "
                             "image tokens are part of the sequence (raise --seq-len)")
        if self.method == "qlora" and self.precision == "fp32":
            raise ValueError("--precision fp32 with qlora: 4-bit layers compute in bf16 or fp16")
        if self.kbit_upcast != "none":
            self._kbit_upcast_modelled()
        return self

    def _kbit_upcast_modelled(self) -> None:
        """k-bit preparation is modelled where the oracle traces it: a bitsandbytes 4-bit base under the HF Trainer's
        autocast, one model on each GPU."""
        if self.method != "qlora" or self.quant_type in PREQUANTIZED:
            raise ValueError("--kbit-upcast describes a bitsandbytes 4-bit base (--method qlora, --quant nf4 / fp4): "
                             "PEFT's prepare_model_for_kbit_training skips GPTQ, and an 8-bit or AWQ base with it is "
                             "not modelled")
        if self.fsdp:
            raise ValueError("--kbit-upcast with FSDP is not modelled: the stacks skip k-bit preparation for "
                             "sharded QLoRA (TRL's is_sharded_qlora, axolotl), and FSDP's flat or mixed-precision "
                             "parameters do not keep a mix of fp32 and 16-bit tensors as planned")
        if self.train_embeddings:
            raise ValueError("--kbit-upcast with --train-embeddings is not modelled: PEFT's trained copies of fp32 "
                             "embeddings and lm_head (and TRL's casts of them) are not traced")
        if self.stack == "trl":
            raise ValueError("--kbit-upcast with --stack trl: current TRL (0.26 on: 16-bit adapters, its fused LM head) "
                             "does not upcast; TRL 0.7.5-0.25 kept fp32 adapters and the standard loss, so describe it "
                             "as --stack transformers --kbit-upcast norms")
        if self.stack in ("axolotl", "torchtune") or (self.stack == "llamafactory" and self.kbit_upcast != "norms"):
            raise ValueError(f"--kbit-upcast {self.kbit_upcast} with --stack {self.stack}: axolotl casts the norms and "
                             "embeddings back to the 16-bit dtype after preparing the model, LLaMA-Factory never calls "
                             "prepare_model_for_kbit_training (its upcast_layernorm is norms), torchtune quantizes with "
                             "its own NF4")

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def accumulation(self, effective_batch: int) -> int:
        """Gradient accumulation steps that reach ``effective_batch`` sequences per optimizer step (at least)."""
        return max(1, -(-effective_batch // (self.micro_batch * self.gpus)))

    def step_lengths(self, steps: int, seed: int = 0) -> list[int]:
        """Sequence length of each of ``steps`` steps: seq_len throughout for fixed lengths; for variable
        lengths a seeded draw, uniform in [seq_len / 8, seq_len], whose last step is at the cutoff (a run
        reaches its longest batch sooner or later, and the cache it grows on the way is what varying lengths
        add).  One list for the dry run, the real verify run and the benchmarks, so they replay the same."""
        if self.lengths == "fixed" or steps < 2:
            return [self.seq_len] * steps
        draw = random.Random(seed)
        return [draw.randint(max(1, self.seq_len // 8), self.seq_len) for _ in range(steps - 1)] + [self.seq_len]

    @property
    def tokens(self) -> int:
        """Tokens in one micro batch on one GPU."""
        return self.seq_len * self.micro_batch

    @property
    def has_images(self) -> bool:
        return bool(self.images_per_sample or self.image_size or self.image_tokens)

    @property
    def uses_adapters(self) -> bool:
        return self.method != "full"

    @property
    def under_autocast(self) -> bool:
        """Whether the step's forward runs under torch.autocast.  The HF Trainer's bf16 / fp16 flags are
        accelerate's native AMP (accelerate accelerator.py: ``native_amp`` for bf16/fp16 unless the job runs
        DeepSpeed or Megatron; ``prepare_model`` wraps the forward in autocast), which every HF-based stack sets for
        adapters and for fp32 master weights.  Not under DeepSpeed (its engine casts the module to 16 bit instead),
        torchtune (pure 16-bit recipes), nor in fp32."""
        if self.precision == "fp32" or self.zero or self.stack == "torchtune":
            return False
        return self.master_weights or self.uses_adapters

    @property
    def adapters_under_autocast(self) -> bool:
        """Whether the trainer runs fp32 LoRA adapters under autocast (what the exported job and the real
        verification run do)."""
        return self.under_autocast and self.uses_adapters and not self.adapters_16bit

    def lora_autocast(self, arch: ModelArch) -> bool:
        """Whether the estimate and its oracle model the fp32 adapters under autocast, as the trainer runs them.
        Two exceptions keep PEFT's fp32 branch without autocast, and the range says so (overheads.unchecked_part):
        - a hybrid with linear-attention layers (ModelArch.linear_attention): under autocast the torch fallback of its
          gated delta rule casts every fp32 matmul operand to 16 bit, which is not modelled;
        - FSDP with CPU offload: accelerate's MixedPrecision computes the adapters in 16 bit there, which the sharded
          oracle does not trace; the fp32 terms are the larger of the two.
        (A ZeRO-3 job without a 4-bit base has no autocast at all: DeepSpeed runs none, its adapters stay fp32.)"""
        return self.adapters_under_autocast and not self.fsdp and arch.linear_attention is None

    @property
    def peft_casts_lora_input(self) -> bool:
        """Whether PEFT casts each adapted module's input to the adapters' dtype under autocast as well.
        peft/tuners/lora/layer.py ``Linear.forward`` and gptq.py always do (``x = self._cast_input_dtype(x,
        lora_A.weight.dtype)``); the bitsandbytes layers (bnb.py ``Linear8bitLt`` / ``Linear4bit``) and awq.py only
        outside autocast (``requires_conversion = not torch.is_autocast_enabled()``), so under autocast their
        lora_A takes the 16-bit input itself, one tensor for the modules that read it."""
        if self.method == "lora8bit":
            return False
        return self.method != "qlora" or self.quant_type == "gptq"

    @property
    def adapters_16bit(self) -> bool:
        """Whether the LoRA adapters are 16-bit parameters while the step runs (else fp32: PEFT's
        ``autocast_adapter_dtype=True``).  DeepSpeed casts every floating parameter to its 16-bit dtype
        (deepspeed/runtime/engine.py ``_configure_distributed_model`` -> ``_cast_module_mixed_precision``);
        torchtune builds the adapters inside ``training.set_default_dtype(self._dtype)``; FSDP2's
        MixedPrecisionPolicy all-gathers them as 16-bit tensors (torch _fsdp_param.py
        ``FSDPParam.init_unsharded_param``; accelerate sets param_dtype for LoRA, memory/fsdp.py)."""
        if self.precision == "fp32":
            return False
        if self.zero == 3 and self.method != "qlora" and self.stack != "trl":
            # transformers loads a ZeRO-3 model inside deepspeed.zero.Init (modeling_utils.py get_init_context: not
            # for a quantized model); the engine skips its cast for such a model, so PEFT's fp32 adapters stay fp32
            # (TRL's SFTTrainer passes autocast_adapter_dtype=False there: trl 1.16 sft_trainer.py, "ZeRO-3 + PEFT
            # for non-quantized models", so its adapters are 16-bit from the start)
            return False
        fsdp_mixed = self.fsdp and self.gpus > 1 and self.offload == "none"
        return bool(self.zero) or self.adapters_stored_16bit or fsdp_mixed

    @property
    def adapters_stored_16bit(self) -> bool:
        """Whether the optimizer holds 16-bit adapter parameters (their grads and a torch optimizer's states follow
        that dtype).  torchtune builds them in the model dtype; TRL's SFTTrainer casts a 4-bit / 8-bit model's
        trainable parameters to bf16 (trl 1.16 sft_trainer.py: ``if _is_quantized_model: ... param.data =
        param.data.to(torch.bfloat16)``, the QLoRA paper's recipe).  Not under DeepSpeed (the engine's fp32 master
        partition is what the optimizer steps, memory/sharding.py) nor accelerate's FSDP (it upcasts trainable
        parameters to fp32)."""
        if self.precision == "fp32" or not self.uses_adapters:
            return False
        if self.stack == "torchtune":
            return True
        return self.stack == "trl" and self.method in ("qlora", "lora8bit") and not self.zero and not self.fsdp

    @property
    def sharding(self) -> str:
        if self.fsdp:
            return "fsdp"
        if self.zero:
            return f"zero{self.zero}"
        return "ddp" if self.gpus > 1 else "single"
