"""Which Linear layers LoRA adapts, resolved against the model's real module names."""

from __future__ import annotations

from ..errors import UsageError
from ..models.arch import ModelArch
from ..models.params import ATTENTION_NAMES, LinearSpec, layer_linears
from .config import TrainConfig

# Names PEFT can adapt outside the decoder layers; we count them as trained in full (modules_to_save).
OUTSIDE_LAYERS = frozenset({"lm_head", "embed_tokens"})


def lora_linears(arch: ModelArch, cfg: TrainConfig) -> list[LinearSpec]:
    """The per-layer Linears that carry a LoRA adapter (empty for full fine-tuning)."""
    if not cfg.uses_adapters:
        return []
    linears = list(layer_linears(arch))
    names = {spec.name for spec in linears}
    if cfg.targets == ("all-linear",):
        if arch.moe is not None and arch.model_type == "qwen3_5_moe":
            # every nn.Linear (mixers, shared expert and its gate); the router and the fused experts are bare
            # Parameters, and PEFT does not convert qwen3_5_moe_text's targets (transformers maps it to qwen3_5_text)
            return [spec for spec in linears if spec.name != "gate"]
        if arch.moe is not None and arch.model_type not in PEFT_MOE_CONVERTED:
            # the router and the experts are bare Parameters, which all-linear (nn.Linear only) does not reach
            return [spec for spec in linears if spec.name in ATTENTION_NAMES]
        return linears + _moe_expert_adapters(arch)
    if cfg.targets == ("attention",):
        return [spec for spec in linears if spec.name in ATTENTION_NAMES]
    wanted = {"q_proj", "v_proj"} if cfg.targets == ("q,v",) else set(cfg.targets)
    unknown = sorted(wanted - names - OUTSIDE_LAYERS)
    if unknown:
        raise UsageError(
            f"{arch.name} has no module named {', '.join(unknown)}",
            f"its layer Linears are {', '.join(sorted(names))} (or use all-linear / attention)",
            field="targets", value=list(cfg.targets),
        )
    chosen = [spec for spec in linears if spec.name in wanted]
    if not chosen:
        raise UsageError("the LoRA targets select no Linear inside the decoder layers",
                         "name at least one of " + ", ".join(sorted(names)), field="targets", value=list(cfg.targets))
    return chosen


NO_SDPA = frozenset({"gemma2", "gpt_oss"})  # model types transformers builds with eager attention by default


def effective_attention(arch: ModelArch, cfg: TrainConfig) -> str:
    """The kernel transformers really runs: 'auto' follows its defaults; Gemma 2 has no SDPA path."""
    if cfg.attn == "auto":
        return "eager" if arch.model_type in NO_SDPA else "sdpa"
    if cfg.attn == "sdpa" and arch.model_type == "gpt_oss":
        raise UsageError("transformers has no SDPA path for gpt-oss (attention sinks; GptOssPreTrainedModel._supports_sdpa "
                         "is False)", "use eager attention, or flash with a kernel that takes sinks (FA3/FA4)",
                         field="attn", value="sdpa")
    if cfg.attn == "flash" and arch.model_type == "gemma3":
        raise UsageError("transformers has no FlashAttention-2 path for Gemma 3 with its vision tower "
                         "(Gemma3ForConditionalGeneration._supports_flash_attn is False: it would drop the bidirectional "
                         "mask over image tokens)", "use sdpa (or eager) attention", field="attn", value="flash")
    if cfg.attn == "sdpa" and arch.model_type == "gemma2":
        raise UsageError("transformers has no SDPA path for Gemma 2 (attention soft-capping)",
                         "use flash (FlashAttention-2) or eager attention", field="attn", value="sdpa")
    return cfg.attn


# MoE model types whose experts transformers 5 fused (they were per-expert nn.Linear in v4): PEFT maps their v4
# module targets, all-linear included, onto target_parameters for the fused expert tensors and the router weight
# (peft/utils/transformers_weight_conversion.py _convert_peft_config_moe, via transformers' conversion_mapping).
# gpt-oss was fused from the start: all-linear there adapts the attention Linears only.
PEFT_MOE_CONVERTED = frozenset({"mixtral", "qwen3_moe"})


def _moe_expert_adapters(arch: ModelArch) -> list[LinearSpec]:
    """PEFT (0.21+) also adapts Mixtral's fused expert tensors under all-linear, with a LoRA whose rank
    is r x experts (x2 for the fused gate/up projection)."""
    if arch.moe is None:
        return []
    h, ie, e = arch.hidden_size, arch.moe.expert_intermediate_size, arch.moe.num_experts
    return [LinearSpec("experts.gate_up_proj", h, 2 * ie, False, lora_rank_multiplier=2 * e),
            LinearSpec("experts.down_proj", ie, h, False, lora_rank_multiplier=e)]
