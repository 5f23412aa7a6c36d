"""Exact parameter counts, per module kind, and the Linear layers LoRA can adapt.

The counts are checked in the tests against transformers' own modules built on the meta device, to the
parameter, for every catalog model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .arch import LinearAttention, ModelArch, VisionTower


@dataclass(frozen=True)
class LinearSpec:
    """One kind of nn.Linear inside every decoder layer (HF module name, shapes, bias)."""

    name: str
    in_features: int
    out_features: int
    bias: bool
    per_layer: int = 1  # how many such Linears one layer holds
    lora_rank_multiplier: int = 1  # PEFT's LoRA on fused MoE expert tensors uses rank x experts (x2 for gate_up)
    kind: str | None = None  # the layer kind (ModelArch.layer_types) whose layers hold it; None: every layer

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        return self.per_layer * (self.weight_params + (self.out_features if self.bias else 0))


ATTENTION_NAMES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"})


@lru_cache(maxsize=256)
def layer_linears(arch: ModelArch) -> tuple[LinearSpec, ...]:
    """The nn.Linear modules of one decoder layer, named as transformers names them."""
    return tuple(_layer_linears(arch))


def layers_holding(arch: ModelArch, kind: str | None) -> int:
    """How many of the model's layers hold a tensor of this layer kind (None: all of them)."""
    if kind is None:
        return arch.num_layers
    return sum(1 for t in (arch.layer_types or ())[:arch.num_layers] if t == kind)


def layer_share(arch: ModelArch, spec: "LinearSpec") -> float:
    """The share of the layers that hold this Linear (1.0 unless a hybrid's mixer): per-layer averages."""
    return 1.0 if spec.kind is None else layers_holding(arch, spec.kind) / arch.num_layers


LINEAR_ATTENTION, FULL_ATTENTION, SLIDING_ATTENTION = "linear_attention", "full_attention", "sliding_attention"


def kind_other_numels(arch: ModelArch) -> dict[str, list[int]]:
    """A hybrid model's per-layer tensors that are not nn.Linear and belong to one layer kind only (Qwen3.5,
    modeling_qwen3_5.py): a full-attention layer's q_norm and k_norm (head_dim each); a linear-attention layer's
    depthwise conv1d weight (conv_dim x 1 x kernel, no bias), dt_bias and A_log (one per value head) and the gated
    RMSNorm (one value head wide)."""
    if arch.global_head_dim is not None:
        # Gemma 4 (modeling_gemma4.py Gemma4TextAttention): q_norm and k_norm are one head wide, and a full-attention
        # head is global_head_dim wide; every layer's head_dim-wide pair is counted with the norms (ModelArch.qk_norm),
        # so a full-attention layer holds the difference (the reader refuses a global head narrower than head_dim)
        extra = arch.global_head_dim - arch.head_dim
        return {SLIDING_ATTENTION: [], FULL_ATTENTION: [extra, extra] if extra else []}
    la = arch.linear_attention
    if la is None:
        return {}
    return {FULL_ATTENTION: [arch.head_dim, arch.head_dim] if arch.qk_norm else [],
            LINEAR_ATTENTION: [la.conv_dim * la.conv_kernel, la.num_value_heads, la.num_value_heads, la.value_head_dim]}


def _gemma4_linears(arch: ModelArch) -> list[LinearSpec]:
    """Gemma 4 (modeling_gemma4.py Gemma4TextAttention, Gemma4TextDecoderLayer): sliding layers attend with head_dim
    and num_kv_heads, full-attention layers with global_head_dim and (when set) num_global_key_value_heads, and
    without v_proj under attention_k_eq_v; the dense GeGLU MLP is in every layer, and with enable_moe_block the
    router's nn.Linear (``router.proj``, num_experts outputs) next to the fused experts."""
    h, b = arch.hidden_size, arch.qkv_bias
    gd = arch.global_head_dim or arch.head_dim
    gkv = (arch.global_kv_heads or arch.num_kv_heads) * gd
    q_full = arch.num_heads * gd
    sliding, full = SLIDING_ATTENTION, FULL_ATTENTION
    linears = [LinearSpec("q_proj", h, arch.q_dim, b, kind=sliding), LinearSpec("k_proj", h, arch.kv_dim, b, kind=sliding),
               LinearSpec("v_proj", h, arch.kv_dim, b, kind=sliding), LinearSpec("o_proj", arch.q_dim, h, b, kind=sliding),
               LinearSpec("q_proj", h, q_full, b, kind=full), LinearSpec("k_proj", h, gkv, b, kind=full)]
    if not arch.attention_k_eq_v:
        linears.append(LinearSpec("v_proj", h, gkv, b, kind=full))
    linears.append(LinearSpec("o_proj", q_full, h, b, kind=full))
    i = arch.intermediate_size
    linears += [LinearSpec("gate_proj", h, i, False), LinearSpec("up_proj", h, i, False), LinearSpec("down_proj", i, h, False)]
    if arch.moe is not None:
        linears.append(LinearSpec("proj", h, arch.moe.num_experts, False))  # Gemma4TextRouter.proj
    return linears


GEMMA4 = ("gemma4", "gemma4_text")


def _layer_linears(arch: ModelArch) -> list[LinearSpec]:
    h, q, kv = arch.hidden_size, arch.q_dim, arch.kv_dim
    if arch.model_type in GEMMA4:
        return _gemma4_linears(arch)
    if arch.linear_attention is not None:
        # Qwen3.5: the full-attention layers' q_proj carries the output gate (2 x q), the linear-attention layers
        # their Gated DeltaNet projections; the MLP is in every layer
        la, full, lin = arch.linear_attention, FULL_ATTENTION, LINEAR_ATTENTION
        linears = [LinearSpec("q_proj", h, 2 * q if arch.attn_output_gate else q, arch.qkv_bias, kind=full),
                   LinearSpec("k_proj", h, kv, arch.qkv_bias, kind=full),
                   LinearSpec("v_proj", h, kv, arch.qkv_bias, kind=full),
                   LinearSpec("o_proj", q, h, arch.o_bias, kind=full),
                   *_deltanet_inputs(h, la),
                   LinearSpec("out_proj", la.value_dim, h, False, kind=lin)]
        i = arch.intermediate_size
        if arch.moe is not None:
            # Qwen3.5-MoE: the router (a bare weight, named gate) and the shared expert's gate; the dense MLP below is
            # the shared expert (intermediate_size = shared_expert_intermediate_size), the routed experts are fused
            linears += [LinearSpec("gate", h, arch.moe.num_experts, False), LinearSpec("shared_expert_gate", h, 1, False)]
        return linears + [LinearSpec("gate_proj", h, i, arch.mlp_bias), LinearSpec("up_proj", h, i, arch.mlp_bias),
                          LinearSpec("down_proj", i, h, arch.mlp_bias)]
    if arch.fused_qkv:
        linears = [LinearSpec("qkv_proj", h, q + 2 * kv, arch.qkv_bias)]
    else:
        linears = [
            LinearSpec("q_proj", h, q, arch.qkv_bias),
            LinearSpec("k_proj", h, kv, arch.qkv_bias),
            LinearSpec("v_proj", h, kv, arch.qkv_bias),
        ]
    linears.append(LinearSpec("o_proj", q, h, arch.o_bias))
    if arch.moe is not None:
        # transformers 5 stores Mixtral experts as fused 3-D parameters, not nn.Linear; only the
        # router ("gate") is a Linear that LoRA's all-linear can reach.
        # gpt-oss names it "router" and gives it a bias (GptOssTopKRouter)
        linears.append(LinearSpec("router" if arch.model_type == "gpt_oss" else "gate", h, arch.moe.num_experts,
                                  arch.moe.router_bias))
        return linears
    i = arch.intermediate_size
    if arch.mlp_kind == "gated":
        if arch.fused_gate_up:
            linears.append(LinearSpec("gate_up_proj", h, 2 * i, arch.mlp_bias))
        else:
            linears += [LinearSpec("gate_proj", h, i, arch.mlp_bias), LinearSpec("up_proj", h, i, arch.mlp_bias)]
    else:
        linears.append(LinearSpec("up_proj", h, i, arch.mlp_bias))
    linears.append(LinearSpec("down_proj", i, h, arch.mlp_bias))
    return linears


def _deltanet_inputs(h: int, la: LinearAttention) -> list[LinearSpec]:
    """A Gated DeltaNet's input projections: Qwen3.5's four (modeling_qwen3_5.py), or Qwen3-Next's two fused ones
    (modeling_qwen3_next.py Qwen3NextGatedDeltaNet: in_proj_qkvz h -> 2 key_dim + 2 value_dim, in_proj_ba h -> 2
    value heads; the same outputs, interleaved per key head)."""
    lin = LINEAR_ATTENTION
    if la.fused_projections:
        return [LinearSpec("in_proj_qkvz", h, la.conv_dim + la.value_dim, False, kind=lin),
                LinearSpec("in_proj_ba", h, 2 * la.num_value_heads, False, kind=lin)]
    return [LinearSpec("in_proj_qkv", h, la.conv_dim, False, kind=lin),
            LinearSpec("in_proj_z", h, la.value_dim, False, kind=lin),
            LinearSpec("in_proj_b", h, la.num_value_heads, False, kind=lin),
            LinearSpec("in_proj_a", h, la.num_value_heads, False, kind=lin)]


def expert_params_per_layer(arch: ModelArch) -> int:
    """Weights of the routed (and shared) experts of one MoE layer: gate, up and down per expert."""
    if arch.moe is None:
        return 0
    per_expert = 3 * arch.hidden_size * arch.moe.expert_intermediate_size
    if arch.moe.expert_bias:  # gpt-oss: gate_up_proj_bias (2 ie) and down_proj_bias (h) per expert
        per_expert += 2 * arch.moe.expert_intermediate_size + arch.hidden_size
    return (arch.moe.num_experts + arch.moe.shared_experts) * per_expert


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by module kind (whole model)."""

    embedding: int
    attention: int
    mlp: int
    norms: int
    lm_head: int  # 0 when tied to the embedding
    vision: int = 0  # a vision-language model's image tower and projector (frozen, 16-bit)

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head + self.vision

    @property
    def linear_in_layers(self) -> int:
        """Params in the decoder layers' projections: what 4-bit/8-bit quantization replaces."""
        return self.attention + self.mlp


@lru_cache(maxsize=256)
def count_params(arch: ModelArch) -> ParamCounts:
    h, layers = arch.hidden_size, arch.num_layers
    attention = mlp = 0
    for spec in layer_linears(arch):
        n = layers_holding(arch, spec.kind)
        if spec.name in ATTENTION_NAMES or spec.kind is not None:  # a hybrid's token mixers count as attention
            attention += spec.params * n
        else:
            mlp += spec.params * n
    mlp += expert_params_per_layer(arch) * layers
    kind_other = sum(layers_holding(arch, kind) * sum(numels) for kind, numels in kind_other_numels(arch).items())
    qk_norms = 2 * arch.head_dim if arch.qk_norm and arch.linear_attention is None else 0
    norms_per_layer = arch.norms_per_layer * h + qk_norms
    norms_per_layer += arch.num_heads if arch.attention_sinks else 0  # gpt-oss: one sink logit per head
    embedding = arch.vocab_size * h
    return ParamCounts(
        embedding=embedding,
        attention=attention,
        mlp=mlp,
        # + the final norm; shapes a derived model has beyond the modelled ones count as norms (see ModelArch)
        norms=(norms_per_layer + arch.extra_layer_params) * layers + h + arch.extra_params + kind_other,
        lm_head=0 if arch.tie_word_embeddings else embedding,
        vision=sum(vision_tensor_numels(arch.vision)) if arch.vision is not None else 0,
    )


def vision_tensor_numels(v: VisionTower) -> list[int]:
    """Element counts of every tensor of a SigLIP vision tower and the Gemma 3 projector, as transformers builds
    them (transformers/models/siglip/modeling_siglip.py SiglipVisionTransformer; gemma3/modeling_gemma3.py
    Gemma3MultiModalProjector): patch conv (weight, bias), position embedding (one row per patch), per layer two
    LayerNorms (weight, bias), q/k/v/out projections and fc1/fc2 with biases, the post LayerNorm, the optional
    attention-pooling head; the projector's RMSNorm weight and its (vision hidden x text hidden) matrix."""
    if v.model_type == "gemma4_vision":
        return _gemma4_vision_numels(v)
    hv, iv = v.hidden_size, v.intermediate_size
    tensors = [v.num_channels * v.patch_size ** 2 * hv, hv, v.patches_per_image * hv]
    layer = [hv, hv] * 2 + [hv * hv, hv] * 4 + [hv * iv, iv, iv * hv, hv]
    tensors += layer * v.num_layers + [hv, hv]
    if v.use_head:  # SiglipMultiheadAttentionPoolingHead: probe, nn.MultiheadAttention, LayerNorm, MLP
        tensors += [hv, 3 * hv * hv, 3 * hv, hv * hv, hv, hv, hv, hv * iv, iv, iv * hv, hv]
    return tensors + [hv, hv * v.text_hidden_size]


def _gemma4_vision_numels(v: VisionTower) -> list[int]:
    """Gemma 4's vision tower and projector (transformers/models/gemma4/modeling_gemma4.py): Gemma4VisionPatchEmbedder
    (input_proj, 3 * patch^2 -> hidden, no bias; a (2, position_embedding_size, hidden) position table), per
    Gemma4VisionEncoderLayer q/k/v/o (no bias), q_norm and k_norm (head_dim; v_norm has no weight), the gated MLP
    (gate, up, down) and four RMSNorms; no final norm, a parameter-free pooler; Gemma4MultimodalEmbedder's
    projection (vision hidden -> text hidden; its pre-projection norm has no weight).  Clipped-linear bounds and the
    standardize bias/scale are buffers, not parameters."""
    hv, iv = v.hidden_size, v.intermediate_size
    hd = v.head_dim or hv // v.num_heads
    q, kv = v.num_heads * hd, (v.num_kv_heads or v.num_heads) * hd
    tensors = [v.num_channels * v.patch_size ** 2 * hv, 2 * (v.position_embedding_size or 0) * hv]
    layer = [hv * q, hv * kv, hv * kv, q * hv, hd, hd, hv * iv, hv * iv, iv * hv] + [hv] * 4
    return tensors + layer * v.num_layers + [hv * v.text_hidden_size]
