"""Which Linear layers LoRA adapts, resolved against the model's real module names."""

from __future__ import annotations

from ..errors import UsageError
from ..models.arch import ModelArch
from ..models.params import ATTENTION_NAMES, GEMMA4, LinearSpec, layer_linears
from .config import TrainConfig

# Names PEFT can adapt outside the decoder layers; we count them as trained in full (modules_to_save).
OUTSIDE_LAYERS = frozenset({"lm_head", "embed_tokens"})


def lora_linears(arch: ModelArch, cfg: TrainConfig) -> list[LinearSpec]:
    """The per-layer Linears that carry a LoRA adapter (empty for full fine-tuning)."""
    chosen = _lora_linears(arch, cfg)
    if cfg.lora_dropout and any(spec.name.startswith("experts.") for spec in chosen):
        # peft/tuners/lora/layer.py ParamWrapper.__init__: "lora.ParamWrapper does not work with lora_dropout != 0"
        raise UsageError(f"{arch.name}: PEFT's LoRA on the fused expert tensors (target_parameters) does not work "
                         f"with lora_dropout {cfg.lora_dropout:g}", "set lora_dropout to 0, or target the attention "
                         "Linears only", field="lora_dropout", value=cfg.lora_dropout)
    return chosen


def _lora_linears(arch: ModelArch, cfg: TrainConfig) -> list[LinearSpec]:
    if not cfg.uses_adapters:
        return []
    linears = list(layer_linears(arch))
    names = {spec.name for spec in linears}
    if cfg.targets == ("all-linear",):
        if arch.model_type in GEMMA4:
            # every nn.Linear of the language model's attention and dense MLP; the router's proj and the fused experts
            # stay frozen (PEFT does not convert gemma4's targets: no MoE entry in transformers' conversion_mapping.py),
            # and for the vision-language model the exports' regex keeps the tower out (vision.language_model_targets)
            return [spec for spec in linears if spec.name != "proj"]
        if arch.moe is not None and arch.model_type == "qwen3_5_moe":
            # every nn.Linear (mixers, shared expert and its gate); the router and the fused experts are bare
            # Parameters, and PEFT does not convert qwen3_5_moe_text's targets (transformers maps it to qwen3_5_text)
            return [spec for spec in linears if spec.name != "gate"]
        if arch.moe is not None and arch.model_type not in PEFT_MOE_CONVERTED:
            # the router and the experts are bare Parameters, which all-linear (nn.Linear only) does not reach
            return [spec for spec in linears if spec.name in ATTENTION_NAMES]
        if arch.moe is not None and arch.model_type in QWEN2_MOE_CONVERTED:
            # PEFT moves the v4 expert names to the fused tensors; a Linear sharing them (Qwen3-Next's shared expert)
            # is left out of target_modules, so it gets no adapter (_convert_peft_config_moe: remaining_target_modules)
            linears = [spec for spec in linears if spec.name not in _QWEN2_MOE_EXPERT_NAMES]
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
    if arch.moe is not None and arch.model_type in QWEN2_MOE_CONVERTED:
        chosen = _qwen2_moe_converted(arch, linears, wanted)
    else:
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
    if cfg.attn == "flash" and arch.model_type == "gemma4":
        raise UsageError("transformers has no FlashAttention-2 path for Gemma 4 with its vision tower "
                         "(Gemma4Model._supports_flash_attn is False: it would drop the bidirectional mask over image "
                         "tokens)", "use sdpa (or eager) attention", field="attn", value="flash")
    if cfg.attn == "flash" and arch.model_type == "gemma4_text" and (arch.global_head_dim or 0) > 256:
        raise UsageError(f"FlashAttention-2 takes heads up to 256 wide; Gemma 4's full-attention layers have "
                         f"{arch.global_head_dim}", "use sdpa (or eager) attention", field="attn", value="flash")
    if cfg.attn == "sdpa" and arch.model_type == "gemma2":
        raise UsageError("transformers has no SDPA path for Gemma 2 (attention soft-capping)",
                         "use flash (FlashAttention-2) or eager attention", field="attn", value="sdpa")
    return cfg.attn


# MoE model types whose experts transformers 5 fused (they were per-expert nn.Linear in v4): PEFT maps their v4
# module targets, all-linear included, onto target_parameters for the fused expert tensors and the router weight
# (peft/utils/transformers_weight_conversion.py _convert_peft_config_moe, via transformers' conversion_mapping).
# gpt-oss was fused from the start: all-linear there adapts the attention Linears only.
PEFT_MOE_CONVERTED = frozenset({"mixtral", "qwen3_moe", "qwen3_next"})
# ... of them, the ones whose custom target lists this module maps as PEFT does (transformers maps qwen3_next to
# qwen2_moe's conversion in conversion_mapping.py; PEFT's _MOE_TARGET_MODULE_MAPPING["qwen2_moe"])
QWEN2_MOE_CONVERTED = frozenset({"qwen3_next"})
_QWEN2_MOE_EXPERT_NAMES = frozenset({"gate_proj", "up_proj", "down_proj"})


def _qwen2_moe_converted(arch: ModelArch, linears: list[LinearSpec], wanted: set[str]) -> list[LinearSpec]:
    """A custom target list as PEFT rewrites it for a qwen2_moe-converted model (peft/utils/
    transformers_weight_conversion.py _convert_peft_config_moe): gate_proj and up_proj (both, or PEFT refuses) become
    the fused experts.gate_up_proj, down_proj the fused experts.down_proj (rank x experts), gate the router weight.
    A Linear whose leaf name is one of those (Qwen3-Next's shared_expert.gate_proj, ...) is no longer targeted."""
    pair = wanted & {"gate_proj", "up_proj"}
    if len(pair) == 1:
        (present,) = pair
        missing = ({"gate_proj", "up_proj"} - pair).pop()
        raise UsageError(f"{arch.name}: PEFT cannot adapt {present} without {missing}: the experts fuse them into "
                         "gate_up_proj", f"name both {present} and {missing}, or neither",
                         field="targets", value=sorted(wanted))
    experts = {spec.name: spec for spec in _moe_expert_adapters(arch)}
    chosen = [spec for spec in linears if spec.name in wanted and spec.name not in _QWEN2_MOE_EXPERT_NAMES]
    if pair:
        chosen.append(experts["experts.gate_up_proj"])
    if "down_proj" in wanted:
        chosen.append(experts["experts.down_proj"])
    return chosen


def _moe_expert_adapters(arch: ModelArch) -> list[LinearSpec]:
    """PEFT (0.21+) also adapts Mixtral's fused expert tensors under all-linear, with a LoRA whose rank
    is r x experts (x2 for the fused gate/up projection)."""
    if arch.moe is None:
        return []
    h, ie, e = arch.hidden_size, arch.moe.expert_intermediate_size, arch.moe.num_experts
    return [LinearSpec("experts.gate_up_proj", h, 2 * ie, False, lora_rank_multiplier=2 * e),
            LinearSpec("experts.down_proj", ie, h, False, lora_rank_multiplier=e)]
