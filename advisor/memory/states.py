"""Parameters, gradients and optimizer states: what each tensor of the model costs in bytes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..models.arch import ModelArch
from ..models.params import count_params, kind_other_numels, layer_linears, layers_holding, vision_tensor_numels
from .config import PREQUANTIZED, TrainConfig
from .targets import lora_linears

ALLOC_ROUND = 512  # every CUDA allocation is a multiple of 512 B
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def rounded(n_bytes: int) -> int:
    return -(-n_bytes // ALLOC_ROUND) * ALLOC_ROUND


@dataclass(frozen=True)
class ParamBytes:
    """Bytes of the model's tensors on one GPU before sharding, and the counts behind them."""

    frozen_16bit: int  # base weights that do not train, kept in 16 bit (or fp32)
    quantized: int  # 4-bit packed weights and their quantization constants
    trainable: int  # trainable parameters in their own dtype (full weights, LoRA, modules_to_save)
    trainable_params: int
    total_params: int  # the model's own params (adapters excluded)
    adapter_params: int
    trainable_dtype_bytes: int  # bytes per trainable param (for grads and dtype-following states)
    largest_layer_params: int  # the biggest decoder layer, gathered whole under ZeRO-3/FSDP
    layer_linear_params: int = 0  # of it, the Linear weights every layer holds (a GPTQ / AWQ base never gathers them)
    # bytes of ``quantized`` that are not nn.Parameters, so ZeRO-3 and FSDP (which shard and offload parameters only)
    # leave them whole on every GPU: bitsandbytes' quantization constants (the QuantState each Linear4bit keeps on the
    # module, bitsandbytes nn/modules.py Params4bit._quantize / fix_4bit_weight_quant_state_from_module), and a
    # GPTQ / AWQ layer's qweight, qzeros, scales and g_idx (register_buffer in their QuantLinear / WQLinear)
    not_parameters: int = 0

    @property
    def total(self) -> int:
        return self.frozen_16bit + self.quantized + self.trainable


def _quant4_bytes(n: int, double_quant: bool) -> int:
    """bitsandbytes 4-bit: two weights per byte; one absmax per 64-block, fp32, or with double
    quantization 8-bit absmax plus one fp32 absmax per 256 blocks (and a 256-entry fp32 code table)."""
    return rounded((n + 1) // 2) + _quant4_constants(n, double_quant)


def _quant4_constants(n: int, double_quant: bool) -> int:
    """The QuantState of one bitsandbytes 4-bit weight of n elements: its absmax (and the nested absmax and code),
    and its own copy of the 16-entry fp32 4-bit code (functional.py quantize_4bit: get_4bit_type per call)."""
    blocks = -(-n // 64)
    code = rounded(16 * 4)
    if double_quant:
        return rounded(blocks) + rounded(4 * -(-blocks // 256)) + rounded(256 * 4) + code
    return rounded(4 * blocks) + code


GPTQ_AWQ_GROUP = 128  # the group size of nearly every published GPTQ / AWQ 4-bit checkpoint


def _prequantized_bytes(in_features: int, out_features: int, kind: str) -> int:
    """One Linear of a pre-quantized 4-bit checkpoint, as its loader allocates it (bits 4, group 128).

    GPTQ (AutoGPTQ nn_modules/qlinear/qlinear_cuda_old.py QuantLinear.__init__, the layout every GPTQ kernel
    reads): qweight int32 (in / 8, out), qzeros int32 (ceil(in / g), out / 8), scales fp16 (ceil(in / g), out),
    g_idx int32 (in).  AWQ (AutoAWQ WQLinear_GEMM): qweight int32 (in, out / 8), qzeros int32 (in / g, out / 8),
    scales fp16 (in / g, out); no g_idx.  A bias stays fp16 (counted with the 16-bit tensors)."""
    groups = -(-in_features // GPTQ_AWQ_GROUP)
    packed = rounded(in_features * out_features // 2)
    zeros = rounded(groups * (out_features // 8) * 4)
    scales = rounded(groups * out_features * 2)
    g_idx = rounded(4 * in_features) if kind == "gptq" else 0
    return packed + zeros + scales + g_idx


def _kbit_upcast_bytes(arch: ModelArch, cfg: TrainConfig, wbytes: int) -> int:
    """What k-bit preparation (TrainConfig.kbit_upcast) adds by keeping tensors in fp32 instead of ``wbytes``: the
    norms' weights (all, norms), and the embedding and an untied lm_head (all).  Biases are cast back: bitsandbytes
    (0.50, nn/modules.py Linear4bit.forward) converts a bias to the compute dtype in place at the first forward."""
    if cfg.kbit_upcast == "none":
        return 0
    counts = count_params(arch)
    h = arch.hidden_size
    norms = [h] * (arch.norms_per_layer * arch.num_layers + 1)
    norms += [arch.head_dim] * (2 * arch.num_layers) if arch.qk_norm else []
    cast = norms + ([counts.embedding] + ([counts.lm_head] if counts.lm_head else []) if cfg.kbit_upcast == "all" else [])
    return sum(rounded(4 * n) - rounded(wbytes * n) for n in cast)


def _tensor_numels(arch: ModelArch) -> tuple[list[int], list[int], list[int]]:
    """Element counts of the model's tensors: outside the layers (embedding, final norm, lm_head), the
    16-bit ones inside one layer (norms, biases, MoE experts), and one layer's Linear weights."""
    counts = count_params(arch)
    h = arch.hidden_size
    outside = [counts.embedding, h] + ([counts.lm_head] if counts.lm_head else [])
    in_layer = [h] * arch.norms_per_layer + ([arch.head_dim] * 2 if arch.qk_norm and arch.linear_attention is None else [])
    in_layer += [arch.num_heads] if arch.attention_sinks else []  # gpt-oss's sinks (num_heads,)
    outside += [arch.extra_params] if arch.extra_params else []  # a derived model's other tensors, as one
    in_layer += [arch.extra_layer_params] if arch.extra_layer_params else []
    linears = tuple(spec for spec in layer_linears(arch) if spec.kind is None)  # a hybrid's mixers: _kind_numels
    in_layer += [spec.out_features for spec in linears if spec.bias]
    if arch.moe is not None:
        ie, e = arch.moe.expert_intermediate_size, arch.moe.num_experts + arch.moe.shared_experts
        in_layer += [e * 2 * ie * h, e * h * ie]  # fused gate_up and down expert tensors
        if arch.moe.expert_bias:  # gpt-oss: gate_up_proj_bias (E, 2 ie), down_proj_bias (E, h)
            in_layer += [e * 2 * ie, e * h]
        # the router is a bare weight Parameter (MixtralTopKRouter, Qwen3MoeTopKRouter, GptOssTopKRouter), not an
        # nn.Linear: bitsandbytes (transformers integrations/bitsandbytes.py replace_with_bnb_linear) keeps it 16-bit
        in_layer += [spec.weight_params for spec in linears if spec.name in ROUTER_NAMES]
        linears = tuple(spec for spec in linears if spec.name not in ROUTER_NAMES)
    weights = [spec.weight_params for spec in linears for _ in range(spec.per_layer)]
    return outside, in_layer, weights


def _kind_numels(arch: ModelArch) -> list[tuple[int, list[int], list[int]]]:
    """A hybrid model's (Qwen3.5) tensors that only one layer kind holds: (layers of that kind, its 16-bit
    non-Linear tensors and biases, its Linear weights), per kind."""
    out = []
    for kind, other in kind_other_numels(arch).items():
        specs = [spec for spec in layer_linears(arch) if spec.kind == kind]
        in_layer = list(other) + [spec.out_features for spec in specs if spec.bias]
        out.append((layers_holding(arch, kind), in_layer, [spec.weight_params for spec in specs for _ in range(spec.per_layer)]))
    return out


ROUTER_NAMES = frozenset({"gate", "router"})  # an MoE layer's router, as transformers names it


def vision_linear_rows(arch: ModelArch) -> list[tuple[int, int]]:
    """(weight elements, output rows) of every nn.Linear in the vision tower: q, k, v, out, fc1, fc2 per layer."""
    v = arch.vision
    if v is None:
        return []
    hv, iv = v.hidden_size, v.intermediate_size
    return [(hv * hv, hv)] * 4 * v.num_layers + [(hv * iv, iv), (iv * hv, hv)] * v.num_layers


def _vision_numels(arch: ModelArch) -> tuple[list[int], list[int]]:
    """The tower's and projector's tensors: (its Linear weights, everything else), element counts."""
    if arch.vision is None:
        return [], []
    linear = [n for n, _ in vision_linear_rows(arch)]
    rest = list(vision_tensor_numels(arch.vision))
    for n in linear:
        rest.remove(n)
    return linear, rest


def param_bytes(arch: ModelArch, cfg: TrainConfig) -> ParamBytes:
    """Parameter bytes depend only on the model and the method's fields, not on the batch or the step;
    cached on those fields so the planner's thousands of candidates share them."""
    fields = (arch, cfg.method, cfg.precision, cfg.master_weights, cfg.rank, cfg.alpha, cfg.targets,
              cfg.train_embeddings, cfg.quant_type, cfg.double_quant, cfg.kbit_upcast, cfg.adapters_stored_16bit)
    found = _PARAM_BYTES.get(fields)
    if found is None:  # a config with only these fields set: the cache key of _param_bytes
        if len(_PARAM_BYTES) > 4096:  # bounded like the lru_cache behind it (a long TUI session)
            _PARAM_BYTES.clear()
        key = cfg.model_copy(update={"seq_len": 1, "micro_batch": 1, "grad_ckpt": False, "optimizer": "adamw",
                                     "attn": "auto", "loss": "standard", "gpus": 1, "zero": 0, "fsdp": False,
                                     "offload": "none"})
        found = _PARAM_BYTES[fields] = _param_bytes(arch, key, cfg.adapters_stored_16bit)
    return found


# (arch, the method's fields) -> ParamBytes: cheaper to look up than a model_copy of the config
_PARAM_BYTES: dict[tuple, "ParamBytes"] = {}


@lru_cache(maxsize=1024)
def _param_bytes(arch: ModelArch, cfg: TrainConfig, adapters_stored_16bit: bool) -> ParamBytes:
    """``adapters_stored_16bit``: TrainConfig.adapters_stored_16bit of the whole config (it reads the stack and
    the sharding, which the cache key drops)."""
    counts = count_params(arch)
    wbytes = 4 if cfg.master_weights else DTYPE_BYTES[cfg.precision]
    L = arch.num_layers
    outside, in_layer, weights = _tensor_numels(arch)

    def stored(numels: list[int]) -> int:  # each tensor is its own allocation
        return sum(rounded(n * wbytes) for n in numels)

    kinds = _kind_numels(arch)
    largest_layer = sum(in_layer) + sum(weights) + max((sum(i) + sum(w) for _, i, w in kinds), default=0)

    def kind_stored(part: int) -> int:  # the kind-specific tensors of a hybrid's layers (part 1: non-Linear, 2: weights)
        return sum(entry[0] * stored(entry[part]) for entry in kinds)
    # a vision-language model's tower and projector stay frozen whatever the method (see VisionTower); under
    # a 4-bit/8-bit load transformers quantizes the tower's Linears too (quantizers/base.py
    # get_keys_to_not_convert skips only lm_head, the tied and the last parameters)
    vision_linear, vision_other = _vision_numels(arch)
    quantizing = cfg.method in ("qlora", "lora8bit")
    vision_frozen = stored(vision_other) + (0 if quantizing else stored(vision_linear))
    if cfg.method == "full":
        total = stored(outside) + L * (stored(in_layer) + stored(weights)) + kind_stored(1) + kind_stored(2)
        return ParamBytes(vision_frozen, 0, total, counts.total - counts.vision, counts.total, 0, wbytes, largest_layer)

    lora = lora_linears(arch, cfg)
    def rank(spec) -> int:
        return cfg.rank * spec.lora_rank_multiplier

    adapter_params = sum(layers_holding(arch, s.kind) * rank(s) * (s.in_features + s.out_features) * s.per_layer
                         for s in lora)
    # PEFT keeps adapters in fp32 (autocast_adapter_dtype=True) unless the stack stores them 16-bit
    adapter_dtype = 2 if adapters_stored_16bit else 4
    adapter_bytes = sum(layers_holding(arch, s.kind) * s.per_layer
                        * (rounded(adapter_dtype * rank(s) * s.in_features) + rounded(adapter_dtype * rank(s) * s.out_features))
                        for s in lora)
    copies, copy_params = 0, 0
    if cfg.train_embeddings:
        # PEFT modules_to_save keeps the original frozen module and trains a copy of it: one copy per module named,
        # so a tied model gets two untied trainable copies (LoraConfig.ensure_weight_tying is False by default)
        embed_like = [counts.embedding, counts.lm_head or counts.embedding]
        copies, copy_params = stored(embed_like), sum(embed_like)
    if cfg.method == "qlora" and cfg.quant_type in PREQUANTIZED:
        # the checkpoint quantized every decoder-layer Linear (MoE routers and fused experts aside, as for
        # bitsandbytes); the vision tower of a VLM is left 16-bit by GPTQ/AWQ tooling (its modules_to_not_convert)
        quantized = sum(layers_holding(arch, spec.kind) * spec.per_layer
                        * _prequantized_bytes(spec.in_features, spec.out_features, cfg.quant_type)
                        for spec in layer_linears(arch) if not (arch.moe and spec.name in ROUTER_NAMES))
        frozen = stored(outside) + L * stored(in_layer) + kind_stored(1) + stored(vision_linear)
        not_parameters = quantized  # all of it: the loaders register every quantized tensor as a buffer
    elif cfg.method == "qlora":
        quantized = L * sum(_quant4_bytes(n, cfg.double_quant) for n in weights)
        quantized += sum(n_layers * sum(_quant4_bytes(n, cfg.double_quant) for n in w) for n_layers, _, w in kinds)
        quantized += sum(_quant4_bytes(n, cfg.double_quant) for n in vision_linear)
        not_parameters = L * sum(_quant4_constants(n, cfg.double_quant) for n in weights)
        not_parameters += sum(n_layers * sum(_quant4_constants(n, cfg.double_quant) for n in w) for n_layers, _, w in kinds)
        not_parameters += sum(_quant4_constants(n, cfg.double_quant) for n in vision_linear)
        frozen = stored(outside) + L * stored(in_layer) + kind_stored(1) + _kbit_upcast_bytes(arch, cfg, wbytes)
    elif cfg.method == "lora8bit":
        # LLM.int8: one int8 per weight plus an fp32 scale per output row (SCB)
        quantized = sum(layers_holding(arch, spec.kind) * spec.per_layer
                        * (rounded(spec.weight_params) + rounded(4 * spec.out_features))
                        for spec in layer_linears(arch) if not (arch.moe and spec.name in ROUTER_NAMES))
        quantized += sum(rounded(n) + rounded(4 * out) for n, out in vision_linear_rows(arch))
        frozen = stored(outside) + L * stored(in_layer) + kind_stored(1)
        # the SCB row scales are an attribute of the Int8Params weight (bitsandbytes nn/modules.py), not a Parameter
        not_parameters = sum(layers_holding(arch, spec.kind) * spec.per_layer * rounded(4 * spec.out_features)
                             for spec in layer_linears(arch) if not (arch.moe and spec.name in ROUTER_NAMES))
        not_parameters += sum(rounded(4 * out) for _, out in vision_linear_rows(arch))
    else:
        quantized = not_parameters = 0
        frozen = stored(outside) + L * (stored(in_layer) + stored(weights)) + kind_stored(1) + kind_stored(2)
    return ParamBytes(
        frozen_16bit=frozen + vision_frozen,
        quantized=quantized,
        trainable=adapter_bytes + copies,
        trainable_params=adapter_params + copy_params,
        total_params=counts.total,
        adapter_params=adapter_params,
        trainable_dtype_bytes=adapter_dtype,
        largest_layer_params=largest_layer,
        layer_linear_params=sum(weights),
        not_parameters=not_parameters,
    )


@dataclass(frozen=True)
class OptimizerBytes:
    states: int
    step_temporaries: int
    formula: str


def optimizer_bytes(arch: ModelArch, cfg: TrainConfig, pb: ParamBytes) -> OptimizerBytes:
    """Optimizer states and the extra memory inside ``optimizer.step()``."""
    grads = pb.trainable  # grads have the trainable params' dtype and shapes
    if cfg.optimizer == "adamw":
        # m and v in the param dtype; foreach keeps one temporary (sqrt(v)) the size of all params.
        return OptimizerBytes(2 * grads, grads, "AdamW: m + v in the param dtype; foreach step: +1x params (sqrt(v))")
    if cfg.optimizer == "sgd":
        return OptimizerBytes(grads, 0, "SGD momentum: one buffer in the param dtype")
    if cfg.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        n = pb.trainable_params
        # bitsandbytes: uint8 m and v plus an fp32 absmax per 256-block each (tensors < 4096 elements stay fp32).
        return OptimizerBytes(2 * n + 2 * 4 * -(-n // 256), 0, "8-bit AdamW: 2 B/param + absmax per 256 block")
    # adafactor: factored second moment (rows + cols) for matrices; no first moment by default.
    factored = _adafactor_state_elems(arch, cfg)
    return OptimizerBytes(4 * factored, grads, "Adafactor: row + column second moments in fp32")


def _adafactor_state_elems(arch: ModelArch, cfg: TrainConfig) -> int:
    L = arch.num_layers
    if cfg.method != "full":
        return sum(layers_holding(arch, s.kind) * (2 * cfg.rank * s.lora_rank_multiplier + s.in_features + s.out_features)
                   for s in lora_linears(arch, cfg))
    elems = sum(layers_holding(arch, s.kind) * (s.in_features + s.out_features) for s in layer_linears(arch))
    elems += (arch.vocab_size + arch.hidden_size) * (1 if arch.tie_word_embeddings else 2)
    elems += L * (arch.norms_per_layer * arch.hidden_size + arch.extra_layer_params) + arch.hidden_size + arch.extra_params
    return elems


@dataclass(frozen=True)
class GradientBytes:
    """Gradients as backward creates them: the head's first, then one layer's at a time."""

    head: int  # lm_head (or its partial grad when tied), final norm
    per_layer: int
    total: int
    embedding_transient: int  # extra at the end of backward while the embedding grad is formed


def gradient_timeline(arch: ModelArch, cfg: TrainConfig, pb: ParamBytes) -> GradientBytes:
    L = arch.num_layers
    if cfg.method == "full":
        wbytes = pb.trainable_dtype_bytes
        outside, in_layer, weights = _tensor_numels(arch)
        embedding = rounded(arch.vocab_size * arch.hidden_size * wbytes)
        per_layer = sum(rounded(n * wbytes) for n in in_layer + weights)
        head = embedding + rounded(arch.hidden_size * wbytes)  # lm_head (or tied partial) + final norm
        # Tied: the partial grads from lm_head and from the embedding are summed into a third tensor.
        if arch.tie_word_embeddings:
            transient = 2 * embedding
        else:  # the gradient of the embedding output is still alive while the embedding grad is formed
            transient = rounded(cfg.tokens * wbytes * arch.hidden_size)
        return GradientBytes(head, per_layer, pb.trainable, transient)
    per_layer = (pb.trainable - _copies_bytes(arch, cfg)) // L
    if not cfg.train_embeddings:
        return GradientBytes(0, per_layer, pb.trainable, 0)
    # the lm_head copy's grad first; the embedding copy's at the end, while the embedding output's grad is alive
    head = _copies_bytes(arch, cfg) // 2
    transient = rounded(cfg.tokens * DTYPE_BYTES[cfg.precision] * arch.hidden_size)
    return GradientBytes(head, per_layer, pb.trainable, transient)


def _copies_bytes(arch: ModelArch, cfg: TrainConfig) -> int:
    """modules_to_save copies of embed_tokens and lm_head trained in full (two, tied or not: param_bytes)."""
    if not cfg.train_embeddings:
        return 0
    return 2 * rounded(arch.vocab_size * arch.hidden_size * DTYPE_BYTES[cfg.precision])
