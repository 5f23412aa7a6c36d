"""Build the model a training run uses, from a ModelArch and a TrainConfig.

The same code builds the model for the real verification run (tensors on the GPU, random values) and for
the fake-tensor dry run (tensors without storage).  The only difference is the ``TensorFactory`` that
materializes the parameters: the model is first built on the ``meta`` device, LoRA/QLoRA applied there
(PEFT cannot wrap fake tensors), then every parameter and buffer is replaced by a real or fake one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..memory.config import TrainConfig
from ..models.arch import ModelArch
from ..models.hf_config import to_hf_config

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# frozen in a VLM (see models/arch.py VisionTower); Gemma 4 names its projector embed_vision (modeling_gemma4.py)
VISION_MODULES = ("vision_tower", "multi_modal_projector", "embed_vision")
ATTN_IMPLEMENTATION = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}

# A function that returns a new tensor of the given shape and dtype on the run's device.
TensorFactory = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def weight_dtype(cfg: TrainConfig) -> torch.dtype:
    if cfg.master_weights:
        return torch.float32
    return DTYPES[cfg.precision]


def autocast_dtype(cfg: TrainConfig, arch: ModelArch | None = None) -> torch.dtype | None:
    """The 16-bit dtype the step runs autocast in: the HF Trainer's bf16 / fp16 flags over fp32 master weights or
    fp32 LoRA adapters; None for pure 16-bit steps.  With ``arch`` (the oracle) the step the estimate models
    (TrainConfig.lora_autocast), without it (a real run) what the trainer does."""
    adapters = cfg.lora_autocast(arch) if arch is not None else cfg.adapters_under_autocast
    return DTYPES[cfg.precision] if cfg.master_weights or adapters else None


def lora_targets(cfg: TrainConfig, arch: ModelArch | None = None) -> list[str] | str:
    """PEFT's target_modules for a preset or a custom list.  For a vision-language model, a regex that keeps
    the adapters in the language model: PEFT matches module names by their last part, so "all-linear" (and a
    plain ["q_proj", "v_proj"]) would also adapt the vision tower's Linears, which share those names."""
    if arch is not None and arch.vision is not None:
        from ..memory.vision import language_model_targets

        return language_model_targets(arch, cfg)
    if cfg.targets == ("all-linear",):
        return "all-linear"
    if cfg.targets == ("attention",):
        return ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"]
    if cfg.targets == ("q,v",):
        return ["q_proj", "v_proj"]
    return list(cfg.targets)


def _hf_config(arch: ModelArch, cfg: TrainConfig, attn_implementation: str):
    from transformers import AutoConfig

    hf_cfg = AutoConfig.for_model(**to_hf_config(arch))
    hf_cfg.use_cache = False
    hf_cfg._attn_implementation = attn_implementation
    return hf_cfg


def _quantize_linears_on_meta(model: nn.Module, cfg: TrainConfig) -> None:
    """Swap the decoder layers' nn.Linear for bitsandbytes 4-bit layers, as transformers does when it
    loads with a BitsAndBytesConfig (embeddings, norms and lm_head stay 16-bit)."""
    import bitsandbytes as bnb

    compute_dtype = DTYPES[cfg.precision]
    # transformers quantizes every nn.Linear but lm_head (and tied / last params), a VLM's vision tower included
    # (quantizers/base.py get_keys_to_not_convert)
    inner = model.model.language_model if hasattr(model.model, "language_model") else model.model
    blocks = list(inner.layers) + [m for n, m in model.named_modules() if n.split(".")[-1] == "vision_tower"]
    for layer in blocks:
        for name, child in list(layer.named_modules()):
            for attr, sub in list(child.named_children()):
                if type(sub) is nn.Linear:
                    q = bnb.nn.Linear4bit(sub.in_features, sub.out_features, bias=sub.bias is not None,
                                          compute_dtype=compute_dtype, compress_statistics=cfg.double_quant,
                                          quant_type=cfg.quant_type, device="meta")
                    q.requires_grad_(False)
                    setattr(child, attr, q)
    model.is_loaded_in_4bit = True


def _upcast_as_kbit_prep(model: nn.Module, cfg: TrainConfig) -> None:
    """What the stack's k-bit preparation leaves in fp32 (TrainConfig.kbit_upcast), before PEFT wraps the model.
    all: PEFT's prepare_model_for_kbit_training casts every fp16/bf16 parameter that is not 4-bit to fp32
    (peft/utils/other.py).  norms: TRL 0.7.5-0.25 under bf16, whose peft_module_casting_to_bf16 puts embeddings and
    lm_head back to bf16 and every module named *norm* to fp32 (trl/trainer/utils.py; v0.25's own prepare upcasts
    only the norms)."""
    for name, module in model.named_modules():
        if cfg.kbit_upcast == "norms" and "norm" not in name.split(".")[-1]:
            continue
        for param in module.parameters(recurse=False):
            if param.dtype in (torch.float16, torch.bfloat16) and param.__class__.__name__ != "Params4bit":
                param.data = param.data.to(torch.float32)


def build_on_meta(arch: ModelArch, cfg: TrainConfig, attn_implementation: str | None = None) -> nn.Module:
    """The model with LoRA/QLoRA applied and gradient checkpointing set, all on the meta device."""
    from transformers import AutoModelForCausalLM

    if attn_implementation is None:
        from ..memory.targets import effective_attention

        attn_implementation = ATTN_IMPLEMENTATION[effective_attention(arch, cfg)]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_hf_config(arch, cfg, attn_implementation), dtype=weight_dtype(cfg))
    if cfg.method == "qlora":
        _quantize_linears_on_meta(model, cfg)
        if cfg.kbit_upcast != "none":
            _upcast_as_kbit_prep(model, cfg)
    if cfg.method == "full":
        model.requires_grad_(True)
        # a vision-language model trains its language model; the tower and projector stay frozen (VisionTower)
        for name, module in model.named_modules():
            if name.split(".")[-1] in VISION_MODULES:
                module.requires_grad_(False)
    else:
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        lora = LoraConfig(
            r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=lora_targets(cfg, arch),
            modules_to_save=["embed_tokens", "lm_head"] if cfg.train_embeddings else None, task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        if cfg.adapters_16bit:  # DeepSpeed / torchtune: the adapters train in the model's 16-bit dtype
            for param in trainable_parameters(model):
                param.data = param.data.to(DTYPES[cfg.precision])
    model.tiled_loss = cfg.loss == "chunked"  # the step computes the loss as TRL's fused LM head (step.py)
    model.shifted_loss = cfg.loss == "shifted"  # ... or as transformers before 4.49 did
    if cfg.grad_ckpt:
        # transformers' default: non-reentrant checkpointing of every decoder layer (what the HF Trainer uses).
        model.gradient_checkpointing_enable()
    model.train()
    return model


def materialize(model: nn.Module, factory: TensorFactory, cfg: TrainConfig) -> nn.Module:
    """Replace every meta parameter and buffer with a tensor from ``factory``, keeping ties."""
    done: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in done:
                done[id(param)] = _new_param(module, param, factory, cfg)
            module._parameters[name] = done[id(param)]
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                module._buffers[name] = factory(tuple(buf.shape), buf.dtype)
    return model


def materialize_random(model: nn.Module, cfg: TrainConfig, device: str) -> nn.Module:
    """Real tensors on ``device`` with random weights (a run measures memory and speed, not learning):
    normal(0, 0.02) floats, zero integers."""

    def factory(shape, dtype):
        tensor = torch.empty(shape, dtype=dtype, device=device)
        return tensor.normal_(0.0, 0.02) if dtype.is_floating_point else tensor.zero_()

    with torch.no_grad():
        return materialize(model, factory, cfg)


def _new_param(module: nn.Module, param: torch.Tensor, factory: TensorFactory, cfg: TrainConfig) -> nn.Parameter:
    if param.is_meta and _is_4bit(module) and param is module.weight:
        import bitsandbytes.functional as bnbF

        # Quantize a freshly made 16-bit weight, exactly what bitsandbytes does when a Linear4bit moves
        # to the GPU; the packed uint8 weight carries its quant_state like a Params4bit.
        dense = factory((module.out_features, module.in_features), DTYPES[cfg.precision])
        packed, state = bnbF.quantize_4bit(dense, blocksize=64, quant_type=cfg.quant_type,
                                           compress_statistics=cfg.double_quant)
        del dense
        new = nn.Parameter(packed, requires_grad=False)
        new.quant_state = state
        return new
    if not param.is_meta:
        return param
    return nn.Parameter(factory(tuple(param.shape), param.dtype), requires_grad=param.requires_grad)


def prepare_quantization(cfg: TrainConfig) -> None:
    """Build bitsandbytes' quantization maps with real tensors, once, before any fake tensor exists
    (building them is data dependent, which fake tensors cannot do)."""
    if cfg.method == "qlora":
        import bitsandbytes.functional as bnbF

        if "dynamic" not in bnbF.name2qmap:
            bnbF.name2qmap["dynamic"] = bnbF.create_dynamic_map()


def _is_4bit(module: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(module, bnb.nn.Linear4bit)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
