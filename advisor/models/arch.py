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
    layer_types: tuple[str, ...] | None = Field(
        None, description="Per-layer attention kind as transformers names it (full_attention, sliding_attention, "
                          "linear_attention), when the family mixes them (Gemma 3, gpt-oss, Qwen3-Next).")
    hf_config_json: str | None = Field(
        None, description="The config.json (language model part flattened) that builds this model in transformers, "
                          "kept verbatim for families whose config to_hf_config does not write by hand.")
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
