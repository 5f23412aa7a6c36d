"""The architecture of a decoder-only transformer, as far as memory depends on it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MlpKind = Literal["gated", "plain"]


class MoE(BaseModel):
    """Mixture-of-experts feed-forward layers (Mixtral style: a router and E expert MLPs per layer)."""

    model_config = ConfigDict(frozen=True)

    num_experts: int = Field(gt=1, description="Routed experts per layer.")
    experts_per_token: int = Field(gt=0, description="Experts each token is sent to (top-k).")
    shared_experts: int = Field(0, ge=0, description="Experts every token goes through.")
    expert_intermediate_size: int = Field(gt=0, description="Inner width of one expert MLP.")
    norm_topk_prob: bool = Field(True, description="The top-k routing weights are renormalised to sum to 1 "
                                                   "(Mixtral always; Qwen3-MoE per config).")
    router_bias: bool = Field(False, description="The router has a bias (gpt-oss).")
    expert_bias: bool = Field(False, description="Each expert's gate_up and down projections have a bias (gpt-oss).")
    swiglu_limit: float | None = Field(None, description="Clamped SwiGLU of gpt-oss's experts: gate clamped above, "
                                                         "up clamped both sides, then (up + 1) * gate * sigmoid(alpha * gate).")
    dense_mlp: bool = Field(False, description="A dense MLP of the model's intermediate_size runs beside the experts "
                                               "on the same input, and their outputs are summed (Gemma 4's "
                                               "enable_moe_block: Gemma4TextDecoderLayer.mlp next to .experts).")


class VisionTower(BaseModel):
    """A vision-language model's image encoder and the projector into the language model (Gemma 3: a SigLIP
    ViT, average-pooled to ``tokens_per_image`` and projected by one matrix after a Gemma RMSNorm).  Frozen by
    default: LoRA adapts the language model only, and full fine-tuning trains the language model."""

    model_config = ConfigDict(frozen=True)

    model_type: str = Field("siglip_vision_model", description="transformers model_type of the tower.")
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    image_size: int = Field(gt=0, description="The side every image is resized to (the processor's size).")
    num_channels: int = Field(3, gt=0)
    use_head: bool = Field(False, description="SigLIP's attention-pooling head (Gemma 3 builds none).")
    tokens_per_image: int = Field(gt=0, description="Language-model tokens one image becomes (mm_tokens_per_image).")
    text_hidden_size: int = Field(gt=0, description="The projector's output width (the language model's hidden size).")
    head_dim: int | None = Field(None, description="Per-head width when the config sets it (Gemma 4's tower); None: "
                                                  "hidden_size / num_heads (SigLIP).")
    num_kv_heads: int | None = Field(None, description="Key/value heads when the config sets them (Gemma 4's tower).")
    position_embedding_size: int | None = Field(
        None, description="Rows of each of the two (x, y) learned position tables of Gemma 4's patch embedder.")
    pooling_kernel_size: int | None = Field(None, description="Gemma 4: patches averaged per side into one soft token.")

    @property
    def patches_per_image(self) -> int:
        """Tokens the tower itself runs on for one image: (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2


class LinearAttention(BaseModel):
    """The Gated DeltaNet token mixer of a hybrid model's linear-attention layers (Qwen3.5:
    transformers' Qwen3_5GatedDeltaNet): in_proj_qkv / in_proj_z / in_proj_b / in_proj_a, a causal depthwise
    conv1d over q, k and v, the chunked gated delta rule, a gated RMSNorm per value head, out_proj."""

    model_config = ConfigDict(frozen=True)

    num_key_heads: int = Field(gt=0)
    num_value_heads: int = Field(gt=0)
    key_head_dim: int = Field(gt=0)
    value_head_dim: int = Field(gt=0)
    conv_kernel: int = Field(gt=0, description="Width of the causal depthwise convolution (linear_conv_kernel_dim).")
    chunk_size: int = Field(64, gt=0, description="Tokens per chunk of the chunked delta rule (torch and fla: 64).")
    fused_projections: bool = Field(
        False, description="Qwen3-Next's layout (modeling_qwen3_next.py Qwen3NextGatedDeltaNet): two input Linears, "
                           "in_proj_qkvz (h -> 2 key_dim + 2 value_dim) and in_proj_ba (h -> 2 value heads), whose "
                           "per-key-head interleaved outputs are split and copied into q, k, v, z, b and a; Qwen3.5 "
                           "has four (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a).")

    @property
    def key_dim(self) -> int:
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.num_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim


class ModelArch(BaseModel):
    """Shapes of a causal LM.  Every field is read from, or defaulted like, the model's config.json."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Catalog name, hub id or path the architecture came from.")
    model_type: str = Field(description="transformers model_type (llama, qwen2, gemma2, ...).")
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0, description="Query heads.")
    num_kv_heads: int = Field(gt=0, description="Key/value heads (< num_heads means GQA).")
    head_dim: int = Field(gt=0, description="Per-head width; Gemma's differs from hidden/heads.")
    intermediate_size: int = Field(gt=0, description="MLP inner width (dense models).")
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    tie_word_embeddings: bool = False
    qkv_bias: bool = Field(False, description="q/k/v projections have a bias (Qwen2).")
    o_bias: bool = Field(False, description="The attention output projection has a bias.")
    mlp_bias: bool = False
    mlp_kind: MlpKind = Field("gated", description="gated = SwiGLU/GeGLU (gate, up, down); plain = up, down.")
    activation: str = Field("silu", description="MLP activation function name from config.json.")
    norms_per_layer: int = Field(2, description="RMSNorms per decoder layer (Gemma 2 has four).")
    qk_norm: bool = Field(False, description="Per-head RMSNorm on q and k (Qwen3).")
    fused_qkv: bool = Field(False, description="One qkv_proj instead of q/k/v (Phi-3).")
    fused_gate_up: bool = Field(False, description="One gate_up_proj instead of gate/up (Phi-3).")
    final_logit_softcap: float | None = Field(None, description="tanh soft-capping of logits (Gemma 2).")
    attn_logit_softcap: float | None = Field(None, description="tanh soft-capping of attention scores.")
    sliding_window: int | None = Field(None, description="Local attention window (Mistral v0.1, Phi-3, Gemma 2's alternate layers).")
    moe: MoE | None = None
    vision: VisionTower | None = Field(None, description="The image encoder and projector of a vision-language model "
                                                            "(frozen; counted in the params, run when a sample has images).")
    attention_sinks: bool = Field(False, description="A learned per-head sink logit joins every softmax (gpt-oss): "
                                                     "num_heads parameters per layer, one more score column.")
    checkpoint_quant: str | None = Field(None, description="How the checkpoint stores its weights when that is not "
                                                           "16-bit (gpt-oss: mxfp4 experts); training loads them "
                                                           "dequantized to 16-bit.")
    layer_types: tuple[str, ...] | None = Field(
        None, description="Per-layer attention kind as transformers names it (full_attention, sliding_attention, "
                          "linear_attention), when the family mixes them (Gemma 3, gpt-oss, Qwen3-Next).")
    linear_attention: LinearAttention | None = Field(
        None, description="The linear-attention (Gated DeltaNet) mixer of the layers layer_types marks "
                          "linear_attention (Qwen3.5).")
    global_head_dim: int | None = Field(None, description="Per-head width of the full_attention layers when it differs "
                                                         "from head_dim (Gemma 4's global_head_dim).")
    global_kv_heads: int | None = Field(None, description="Key/value heads of the full_attention layers when they differ "
                                                         "from num_kv_heads (Gemma 4's num_global_key_value_heads).")
    attention_k_eq_v: bool = Field(False, description="The full_attention layers have no v_proj: the values are the key "
                                                      "projection's output, normed separately (Gemma 4).")
    attn_output_gate: bool = Field(False, description="q_proj is twice as wide and its second half gates the attention "
                                                      "output through a sigmoid (Qwen3.5's full-attention layers).")
    hf_config_json: str | None = Field(
        None, description="The config.json (language model part flattened) that builds this model in transformers, "
                          "kept verbatim for families whose config to_hf_config does not write by hand.")
    extra_layer_params: int = Field(
        0, ge=0, description="Parameters per decoder layer beyond the modelled ones (derived shapes: full-width q/k "
                             "norms, biases of unknown tensors; Gemma 4: its MoE block's three extra norms and the "
                             "router's scale and per-expert scale); counted with the norms (frozen under LoRA, 16-bit).")
    extra_params: int = Field(
        0, ge=0, description="Parameters outside the decoder layers beyond embedding, final norm and lm_head "
                             "(derived shapes: a vision tower, an lm_head bias); counted with the norms.")
    dropout: tuple[str, ...] = Field(
        (), description="Dropout settings the config.json turns on (\"attention_dropout 0.1\"); the memory model "
                        "counts no dropout, so an estimate for such a config says so.")
    derived_from: str | None = Field(
        None, description="Set when the shapes were derived by building an unknown model type on the meta device: "
                          "the estimate uses generic per-module terms, which this names.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelArch":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim
