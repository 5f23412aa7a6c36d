"""What every exporter needs: the config, the model id, and the facts for the header comment."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..errors import AdvisorError
from ..memory.config import TrainConfig
from ..memory.result import MemoryEstimate
from ..models.arch import ModelArch
from ..units import GiB

TOOL = "lora-advisor 0.1.0"
HF_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
            "sgd": "sgd", "adafactor": "adafactor"}
# transformers' attn_implementation for each kernel the estimate counts (memory/targets.py effective_attention)
HF_ATTENTION = {"flash": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}
# the lora_dropout most examples and TRL's ModelConfig use: the export header says what it would cost
COMMON_DROPOUT = 0.05
LEARNING_RATE = {"full": 1e-5, "lora": 2e-4, "qlora": 2e-4, "lora8bit": 2e-4}


class ExportError(AdvisorError):
    """A combination the target framework is known to break on, or a file that cannot be written."""


@dataclass(frozen=True)
class ExportContext:
    arch: ModelArch
    cfg: TrainConfig
    estimate: MemoryEstimate
    model_id: str
    effective_batch: int
    gpu_name: str = "unknown GPU"
    capacity_bytes: int | None = None  # one GPU's usable memory, when known
    option: int | None = None  # which option of a plan this is (0 its choice), None when described by hand

    @property
    def grad_accum(self) -> int:
        return self.cfg.accumulation(self.effective_batch)

    @property
    def dtype(self) -> str:
        return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[self.cfg.precision]

    @property
    def hf_optim(self) -> str:
        if self.cfg.fsdp and self.cfg.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
            # bitsandbytes 8-bit states break FSDP's step and state-dict save (bnb#89, LlamaFactory#5619)
            raise ExportError("--optimizer " + self.cfg.optimizer + " with --fsdp: bitsandbytes 8-bit optimizers break under FSDP",
                              "use --optimizer adamw with --fsdp, or --zero 2/3 for 8-bit states")
        return HF_OPTIM[self.cfg.optimizer]

    # ---- precision: what the framework will really do, so the file trains the config that was estimated ----
    @property
    def load_dtype(self) -> str:
        """The dtype the weights are loaded in: fp32 master weights for mixed-precision full fine-tuning,
        else the plan's 16-bit dtype (adapters are fp32 either way: PEFT's autocast_adapter_dtype)."""
        if self.cfg.zero:  # DeepSpeed casts the module to 16 bits itself and keeps its own fp32 master partition
            return self.dtype
        return "float32" if self.cfg.master_weights else self.dtype

    @property
    def autocast(self) -> bool:
        """Whether the trainer runs under autocast (bf16=True / fp16=True).  Pure 16-bit full fine-tuning must
        not: under FSDP, accelerate upcasts every trainable parameter to fp32 whenever mixed_precision != 'no'
        (accelerate utils/fsdp_utils.py fsdp2_prepare_model, accelerator.py prepare_model for FSDP1), which is
        the master-weights estimate, not the pure 16-bit one."""
        if self.cfg.precision == "fp32":
            return False
        # DeepSpeed ZeRO trains 16-bit only through its mixed-precision optimizer (an fp32 master partition)
        return self.cfg.master_weights or self.cfg.method != "full" or bool(self.cfg.zero)

    @property
    def bf16(self) -> bool:
        return self.autocast and self.cfg.precision == "bf16"

    @property
    def fp16(self) -> bool:
        return self.autocast and self.cfg.precision == "fp16"

    @property
    def mixed_precision(self) -> str:
        """accelerate's mixed_precision key, consistent with the trainer's bf16 / fp16 flags."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"

    @property
    def pure_16bit(self) -> bool:
        """Full fine-tuning with 16-bit weights and no autocast (axolotl `bfloat16: true`, LLaMA-Factory `pure_bf16`)."""
        return self.cfg.method == "full" and not self.autocast and self.cfg.precision != "fp32"

    @property
    def chunked_loss(self) -> bool:
        """The chunked cross-entropy: TRL's own tiled LM head (train.py, trl-yaml), Liger's fused linear
        cross-entropy in axolotl and LLaMA-Factory (pip install liger-kernel)."""
        return self.cfg.loss == "chunked"

    @property
    def attention(self) -> str:
        """The attention kernel the estimate counted ('flash', 'sdpa' or 'eager'): 'auto' resolved as transformers
        resolves it (eager for Gemma 2 and gpt-oss, whose classes have no SDPA path), so the file loads the model
        with the kernel the plan's numbers are for."""
        from ..memory.targets import effective_attention

        return effective_attention(self.arch, self.cfg)

    @property
    def attn_implementation(self) -> str:
        """transformers' ``attn_implementation`` for that kernel."""
        return HF_ATTENTION[self.attention]

    @property
    def lr(self) -> float:
        return LEARNING_RATE[self.cfg.method]

    @property
    def all_linear(self) -> bool:
        return self.cfg.targets == ("all-linear",)

    @property
    def language_model_regex(self) -> str | None:
        """A vision-language model's LoRA targets as a regex over module names, keeping the adapters out of the
        vision tower (PEFT's all-linear and plain names would reach it; see memory/vision.py)."""
        from ..memory.vision import language_model_targets

        return language_model_targets(self.arch, self.cfg)

    def target_modules(self) -> list[str]:
        from ..memory.targets import lora_linears

        return [spec.name for spec in lora_linears(self.arch, self.cfg) if "." not in spec.name]

    def check_fsdp(self) -> None:
        """What accelerate's FSDP2 wrap cannot run: PEFT's trained copy of a tied embedding / lm_head sits in two
        FSDP units ("parameter ... shared with a parameter already managed by another FSDP group")."""
        if self.cfg.fsdp and self.cfg.train_embeddings and self.arch.tie_word_embeddings:
            raise ExportError(f"{self.arch.name} ties its embedding and lm_head: training them under FSDP puts one "
                              "parameter in two FSDP units, which accelerate refuses", "train the embeddings without "
                              "FSDP (DeepSpeed ZeRO), or leave them frozen")

    @property
    def quant_storage_bf16(self) -> bool:
        """QLoRA under FSDP or ZeRO-3 needs the 4-bit storage dtype to match the other params (PEFT docs)."""
        return self.cfg.method == "qlora" and (self.cfg.fsdp or self.cfg.zero == 3)

    @property
    def restores_fp32_adapters(self) -> bool:
        """train.py undoes TRL's bf16 cast of a quantized model's adapters unless the plan is TRL's own stack
        (TrainConfig.adapters_stored_16bit says what TRL does)."""
        return self.cfg.method in ("qlora", "lora8bit") and self.cfg.stack != "trl"

    @property
    def fits(self) -> bool | None:
        return None if self.capacity_bytes is None else self.estimate.peak_device_bytes <= self.capacity_bytes

    def header_lines(self) -> list[str]:
        est, cfg = self.estimate, self.cfg
        which = {None: "a configuration given by hand", 0: "the plan's choice"}.get(self.option,
                                                                                 f"the plan's option {self.option}")
        capacity = f" of {self.capacity_bytes / GiB:.2f} GiB usable" if self.capacity_bytes is not None else ""
        lines = [f"Generated by {TOOL} for {self.model_id} on {cfg.gpus}x {self.gpu_name} ({which})",
                 f"predicted peak per GPU: {est.peak_device_bytes / GiB:.2f} GiB device{capacity} "
                 f"({est.peak_allocated_bytes / GiB:.2f} GiB allocated)"]
        if self.fits is False:
            lines.append(f"DOES NOT FIT: needs {est.peak_device_bytes / GiB:.2f} GiB > {self.capacity_bytes / GiB:.2f} GiB "
                         "usable (exported with --allow-no-fit); expect an out-of-memory error")
        lines.append(f"{cfg.method} · seq {cfg.seq_len} · micro batch {cfg.micro_batch} x accumulation "
                     f"{self.grad_accum} x {cfg.gpus} GPU(s) · {self.precision_words} · "
                     f"{'chunked cross-entropy' if self.chunked_loss else 'standard cross-entropy (full fp32 logits)'}"
                     f"{' · ' + cfg.sharding if cfg.sharding not in ('single', 'ddp') else ''}"
                     f"{' · offload ' + cfg.offload if cfg.offload != 'none' else ''}")
        dropout_cost = self.dropout_cost
        if dropout_cost:
            lines.append(f"lora_dropout {cfg.lora_dropout:g} as planned: {COMMON_DROPOUT:g} (TRL's default) would keep a "
                         f"dropped-out copy of each adapted module's input, +{dropout_cost / GiB:.2f} GiB per GPU")
        return lines

    @cached_property  # every file's header says it: one estimate for all of them
    def dropout_cost(self) -> int:
        """What the common lora_dropout would add to this plan's allocated peak, where it is material (1 %): a number
        in the header keeps a user from turning it on by habit (memory/activations.py: copies and masks per module)."""
        from ..memory import estimate

        if not self.cfg.uses_adapters or self.cfg.lora_dropout:
            return 0
        try:
            with_dropout = estimate(self.arch, self.cfg.model_copy(update={"lora_dropout": COMMON_DROPOUT}))
        except AdvisorError:  # PEFT refuses dropout on this model's adapted fused experts: nothing to warn about
            return 0
        extra = with_dropout.peak_allocated_bytes - self.estimate.peak_allocated_bytes
        return extra if extra >= 0.01 * self.estimate.peak_allocated_bytes else 0

    @property
    def precision_words(self) -> str:
        if self.pure_16bit:
            return f"pure {self.cfg.precision} (no autocast)"
        if self.cfg.master_weights:
            return f"fp32 master weights, {self.cfg.precision} autocast"
        if self.cfg.zero and self.autocast:  # the trainer's bf16/fp16 flag: DeepSpeed casts the module, no autocast
            return f"{self.cfg.precision} module, DeepSpeed's fp32 master partition"
        return self.cfg.precision + (" autocast" if self.autocast else "")

    def header(self, prefix: str = "# ") -> str:
        return "".join(f"{prefix}{line}\n" for line in self.header_lines())
