"""What autograd saves for backward, per decoder layer, per token.

The model follows the data flow of a transformers decoder layer op by op and asks, for every op, which of
its inputs autograd keeps.  PyTorch keeps an input only when it is needed for the gradient of another
input that requires grad, so the answer depends on what requires grad: for LoRA the first layer (fed by a
frozen embedding) saves less than the rest, and a frozen Linear saves nothing for its weight.  Every
number below was checked against the fake-tensor trace of the real step (see tests/test_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from ..models.arch import ModelArch
from .config import TrainConfig

FP32 = 4
# model types whose RMSNorm multiplies by (1 + w) in fp32 before casting back (Gemma, Gemma 2, Gemma 3)
# (Qwen3.5's Qwen3_5RMSNorm does the same, zero-centred weights: output * (1.0 + weight.float()) in fp32)
# (and Qwen3-Next's Qwen3NextRMSNorm, the same code in modeling_qwen3_next.py)
# (Gemma 4's Gemma4RMSNorm multiplies by w, not 1 + w, but in fp32 too: normed_output * self.weight.float())
GEMMA_NORMS = ("gemma", "gemma2", "gemma3", "gemma3_text", "qwen3_5", "qwen3_5_moe", "qwen3_next", "gemma4", "gemma4_text")
# per-layer sliding / global attention (ModelArch.layer_types), one mask per kind (Gemma 3, and Gemma 4:
# modeling_gemma4.py Gemma4TextModel.forward builds a full and a sliding mask)
GEMMA3 = ("gemma3", "gemma3_text", "gemma4", "gemma4_text")
GEMMA4 = ("gemma4", "gemma4_text")


@dataclass
class SavedTensors:
    """Bytes per token that one layer keeps for backward, by the op that keeps them."""

    items: dict[str, int] = field(default_factory=dict)
    scores_bytes: int = 0  # bytes kept per s x s element (eager: per head; SDPA window mask: once)
    scores_per_head: bool = True
    probs_saved: bool = False  # eager attention's 16-bit probabilities are among the saved tensors (v needs a grad)
    layer_bytes: int = 0  # kept once per layer whatever the tokens (PEFT's merged MoE expert weights)
    chunk: int = 0  # tokens per chunk when the layer pads each sequence to whole chunks (Gated DeltaNet: 64)
    padded_bytes: int = 0  # of ``total``, the bytes per token that padding to whole chunks adds for padded positions
    after_attention: int = 0  # of ``total``, the bytes per token kept after the attention (o_proj onward)

    def add(self, name: str, bytes_per_token: int) -> None:
        if bytes_per_token:
            self.items[name] = self.items.get(name, 0) + bytes_per_token

    @property
    def total(self) -> int:
        return sum(self.items.values())


def _rmsnorm(saved: SavedTensors, name: str, width: int, act: int, in_rg: bool, weight_trained: bool,
             gemma_style: bool, rows: int = 1) -> bool:
    """RMSNorm in fp32: pow/mul keep the fp32 input and rsqrt; the weight multiply keeps the normalized
    input when the weight trains.  Returns whether the output requires grad."""
    if in_rg:
        saved.add(f"{name}: fp32 input + rsqrt", FP32 * width + FP32 * rows)
    if weight_trained:
        # Llama casts back to the activation dtype before the weight multiply; Gemma multiplies in fp32.
        saved.add(f"{name}: normalized input", (FP32 if gemma_style else act) * width)
    return in_rg or weight_trained


@dataclass(frozen=True)
class LayerPlan:
    """What trains in a layer: the base weights (full FT) and which Linears carry LoRA."""

    full: bool
    lora: frozenset[str]
    rank: int
    act_bytes: int  # bytes of one activation element (2 for bf16/fp16)
    eager: bool
    autocast: bool = False  # fp32 master weights under autocast: fp32 residual stream, 16-bit matmuls
    adapter_bytes: int = FP32  # dtype LoRA computes in: fp32 (PEFT), 16-bit under FSDP2's param_dtype
    sdpa_masked: bool = False  # SDPA with an explicit (sliding-window) mask
    kv_repeated: bool = False  # ... which cannot use native GQA: k/v repeated to all heads
    linear_mixer: bool = False  # a hybrid's linear-attention layer (Qwen3.5's Gated DeltaNet, ModelArch.linear_attention)
    global_attention: bool = False  # a full-attention layer with its own head width / kv heads (Gemma 4)
    lora_autocast: bool = False  # fp32 adapters run under autocast: the LoRA branch computes in act_bytes
    lora_input_cast: bool = True  # PEFT casts each module's input under autocast too (TrainConfig.peft_casts_lora_input)
    lora_dropout: bool = False  # TrainConfig.lora_dropout > 0: each adapted module drops out its own copy of its input
    # k-bit preparation left the norms fp32 (TrainConfig.kbit_upcast): their outputs, the residual stream, the 4-bit
    # Linears' outputs on them (bitsandbytes' Linear4bit.forward casts its input to the compute dtype and returns
    # ``.to(inp_dtype)``) and the MLP's intermediates are fp32; the attention (SDPA under autocast) stays 16-bit
    fp32_stream: bool = False

    @property
    def lora_copies_input(self) -> bool:
        """Whether each adapted module makes its own copy of its input (PEFT's cast, and autocast's back)."""
        return self.lora_input_cast or not self.lora_autocast


# Linears fed by one tensor (their LoRA branches save it once when they need no cast)
_SHARED_INPUT = {"q_proj": "attention input", "k_proj": "attention input", "v_proj": "attention input",
                 "gate_proj": "MLP input", "up_proj": "MLP input", "in_proj_qkv": "attention input",
                 "in_proj_z": "attention input", "in_proj_b": "attention input", "in_proj_a": "attention input",
                 "in_proj_qkvz": "attention input", "in_proj_ba": "attention input"}


def _linear(saved: SavedTensors, plan: LayerPlan, name: str, in_width: int, in_rg: bool,
            input_already_saved: bool, fp32_input: bool = False) -> bool:
    """A Linear (optionally with LoRA).  Returns whether its output requires grad.  ``fp32_input``: the input is an
    fp32 tensor under autocast (LayerPlan.fp32_stream), which autocast casts to 16 bit for each lora_A anew."""
    if plan.full and plan.autocast:
        saved.add(f"{name}: input (autocast 16-bit copy)", plan.act_bytes * in_width)  # one cast per Linear
    elif plan.full and not input_already_saved:
        saved.add(f"{name}: input", plan.act_bytes * in_width)
    if name in plan.lora:
        # PEFT casts the input to the adapter dtype (fp32) in every LoRA module separately; lora_A keeps
        # that cast, lora_B keeps lora_A's output.
        ad = plan.adapter_bytes
        if plan.lora_dropout:
            # lora_B(lora_A(dropout(x))) with an nn.Dropout per module (peft/tuners/lora/layer.py update_layer: an
            # nn.Identity only at p = 0): dropout makes a new tensor in the dtype it is given (the fp32 cast where
            # PEFT casts, else the 16-bit input) and keeps its mask, one byte per element (CUDA's native_dropout
            # saves a bool mask, and only when its input needs a grad); lora_A keeps the dropped-out tensor, or under
            # autocast its 16-bit cast.  Nothing is shared between the modules that read one input.
            dropped = ad if plan.lora_copies_input else plan.act_bytes
            ad = plan.act_bytes if plan.lora_autocast else dropped
            if in_rg:
                saved.add(f"{name}: LoRA dropout mask", in_width)
            saved.add(f"{name}: LoRA input (dropped out)", ad * in_width)
        elif plan.lora_autocast and not plan.lora_input_cast and not fp32_input:
            # bitsandbytes / AWQ base under autocast: PEFT skips its cast, autocast casts only lora_A's weight,
            # so lora_A keeps the 16-bit input itself, shared like the no-cast case below, and computes in 16 bit
            ad = plan.act_bytes
            if not plan.full and not (input_already_saved and name == "o_proj"):
                saved.items[f"{_SHARED_INPUT.get(name, name)}: LoRA input"] = in_width * ad
        elif plan.lora_autocast:
            # (an fp32 input under a bitsandbytes base: PEFT skips its cast, autocast's cast for lora_A is a copy per
            # module, kept by it: the same bytes)
            # peft/tuners/lora/layer.py Linear.forward: ``x = self._cast_input_dtype(x, lora_A.weight.dtype)`` makes an
            # fp32 copy (kept by nothing), then autocast casts it back to 16 bit for lora_A's matmul, which keeps that
            # cast: one 16-bit copy per adapted module, and lora_A's output in 16 bit
            ad = plan.act_bytes
            saved.add(f"{name}: LoRA input (autocast 16-bit copy)", ad * in_width)
        elif plan.act_bytes == ad:
            # no cast: lora_A saves the Linear's own input, one tensor for the Linears that share it
            if not plan.full and not (input_already_saved and name == "o_proj"):
                shared = _SHARED_INPUT.get(name, name)
                saved.items[f"{shared}: LoRA input"] = in_width * ad
        else:
            saved.add(f"{name}: LoRA fp32 input", ad * in_width)
        saved.add(f"{name}: LoRA A output", ad * plan.rank)
    return in_rg or plan.full or name in plan.lora


@lru_cache(maxsize=4096)
def layer_saved(arch: ModelArch, plan: LayerPlan, in_rg: bool) -> tuple[SavedTensors, bool]:
    """Saved bytes per token of one decoder layer (without checkpointing) and whether its output
    requires grad.  Cached: the planner asks for the same few layer shapes thousands of times (callers
    must not modify the result)."""
    saved = SavedTensors()
    a = plan.act_bytes
    h, q_dim, kv_dim, nq = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.num_heads
    nkv = arch.num_kv_heads
    gemma = arch.model_type in GEMMA_NORMS
    if plan.global_attention:  # Gemma 4's full-attention layers: global_head_dim wide heads, their own kv heads
        gd = arch.global_head_dim or arch.head_dim
        nkv = arch.global_kv_heads or arch.num_kv_heads
        q_dim, kv_dim = nq * gd, nkv * gd

    # --- attention block
    norm_act = FP32 if plan.autocast else a  # under autocast the norms run on the fp32 residual stream
    normed_rg = _rmsnorm(saved, "input norm", h, norm_act, in_rg, plan.full, gemma)
    if plan.full and not plan.autocast:
        saved.add("attention input", a * h)  # one tensor feeds q, k and v
    if plan.linear_mixer:
        o_rg = _gated_deltanet_saved(saved, arch, plan, normed_rg)
        return _mlp_block(saved, arch, plan, in_rg, o_rg, norm_act, gemma)
    f32 = plan.fp32_stream
    if arch.fused_qkv:
        qkv_rg = _linear(saved, plan, "qkv_proj", h, normed_rg, True, f32)
        q_rg = k_rg = v_rg = qkv_rg
    else:
        q_rg = _linear(saved, plan, "q_proj", h, normed_rg, True, f32)
        k_rg = _linear(saved, plan, "k_proj", h, normed_rg, True, f32)
        # Gemma 4's full-attention layers under attention_k_eq_v have no v_proj: the values are k_proj's output
        k_eq_v = plan.global_attention and arch.attention_k_eq_v
        v_rg = k_rg if k_eq_v else _linear(saved, plan, "v_proj", h, normed_rg, True, f32)
    if arch.qk_norm:
        # Qwen3 casts back before the weight; Gemma 3 (q_norm/k_norm are Gemma3RMSNorm) multiplies in fp32
        q_rg = _rmsnorm(saved, "q norm", q_dim, a, q_rg, plan.full, gemma, rows=arch.num_heads)
        k_rg = _rmsnorm(saved, "k norm", kv_dim, a, k_rg, plan.full, gemma, rows=nkv)
    if arch.model_type in GEMMA4:
        # Gemma4TextAttention: v_norm, an RMSNorm without weight, on the values (its own fp32 copy under k_eq_v)
        v_rg = _rmsnorm(saved, "v norm", kv_dim, a, v_rg, False, gemma, rows=nkv)
    attn_rg = q_rg or k_rg or v_rg
    if attn_rg and plan.eager:
        # scores = q @ k^T keeps k (GQA-repeated) for q's grad and q for k's grad; softmax keeps its fp32
        # output, soft-capping its tanh output; probs(16-bit) @ v keeps v (repeated) for the probs' grad
        # and the probs for v's grad.  The s x s terms are per score element (scores_bytes).
        scores_rg = q_rg or k_rg
        saved.add("attention k (repeated)", a * q_dim if q_rg else 0)
        saved.add("attention q", a * q_dim if k_rg else 0)
        saved.add("attention v (repeated)", a * q_dim if scores_rg else 0)
        saved.scores_bytes = (FP32 + (a if arch.attn_logit_softcap else 0) if scores_rg else 0) + (a if v_rg else 0)
        saved.probs_saved = bool(v_rg)
        if arch.attention_sinks:
            # gpt-oss (modeling_gpt_oss.py eager_attention_forward): the sink logits join as one more column, the
            # max is subtracted (its int64 argmax kept) and the softmax runs in the 16-bit dtype; its output is
            # kept once, for its own backward and (as the view probs[..., :-1]) for probs @ v
            scores_rg = scores_rg or plan.full  # the sinks train with the full model
            saved.scores_bytes = a if scores_rg or v_rg else 0
            saved.add("attention sink column of the softmax output", a * nq if saved.scores_bytes else 0)
            saved.add("attention max indices (int64)", 8 * nq if scores_rg else 0)
    elif attn_rg:
        # SDPA/flash keep q, k, v (GQA-sized), the output and the fp32 log-sum-exp per head.
        kv_saved = q_dim if plan.kv_repeated else kv_dim
        saved.add("attention q, k, v", a * (q_dim + 2 * kv_saved))
        if arch.fused_qkv and not plan.fp32_stream:
            # v is a slice of the fused qkv output: keeping v keeps the whole qkv tensor alive (an fp32 output is
            # cast to 16 bit for SDPA: the cast, not the slice, is kept)
            saved.add("fused qkv output (held by v)", a * (q_dim + kv_dim))
        if plan.sdpa_masked:
            # SDPA converts the boolean window mask to a float mask per call and keeps it for backward
            # (an s x s term, added by attention_scores_bytes); its output is then laid out so that
            # o_proj's input is a copy, which o_proj keeps when its weight trains.
            saved.scores_bytes, saved.scores_per_head = a, False
            saved.add("o_proj input (copy)", a * q_dim if plan.full else 0)
        saved.add("attention output + logsumexp", a * q_dim + FP32 * nq)
    if arch.attn_output_gate and (attn_rg or q_rg):
        # Qwen3.5: attn_output.reshape(...).contiguous() * torch.sigmoid(gate): the mul keeps the attention output's
        # copy and the sigmoid output (which the sigmoid's backward reuses); o_proj reads their product, a new tensor
        saved.add("gated attention: output copy + sigmoid(gate)", 2 * a * q_dim)
    through_attention = saved.total
    # o_proj reads the attention output SDPA keeps, unless SDPA keeps nothing (no grad reaches q, k or v: a LoRA branch
    # on o_proj then keeps its input itself), SDPA's output under a window mask is laid out so that o_proj's input is a
    # copy (full FT counts it above; the oracle shows it for Phi-3, not for Mistral's GQA-repeated k/v, where this
    # reads 1 % high), or eager attention / a gated output makes a new tensor
    o_input_saved = (attn_rg and not plan.eager and not arch.attn_output_gate
                     and not (plan.sdpa_masked and not plan.full))
    o_rg = _linear(saved, plan, "o_proj", q_dim, attn_rg, input_already_saved=o_input_saved)
    if gemma and arch.norms_per_layer == 4:
        o_rg = _rmsnorm(saved, "post-attention norm", h, norm_act, o_rg, plan.full, gemma)
    saved, out_rg = _mlp_block(saved, arch, plan, in_rg, o_rg, norm_act, gemma)
    saved.after_attention = saved.total - through_attention
    return saved, out_rg


def _mlp_block(saved: SavedTensors, arch: ModelArch, plan: LayerPlan, in_rg: bool, o_rg: bool, norm_act: int,
               gemma: bool) -> tuple[SavedTensors, bool]:
    a, h = plan.act_bytes, arch.hidden_size
    x2_rg = in_rg or o_rg

    # --- MLP block
    mlp_norm = "pre-feedforward norm" if arch.norms_per_layer == 4 else "post-attention norm"
    normed2_rg = _rmsnorm(saved, mlp_norm, h, norm_act, x2_rg, plan.full, gemma)
    if plan.full and not plan.autocast:
        saved.add("MLP input", a * h)
    if arch.moe is not None and arch.moe.dense_mlp:
        out_rg = _gemma4_moe_block_saved(saved, arch, plan, x2_rg, normed2_rg, norm_act, gemma)
    elif arch.moe is not None:
        out_rg = _moe_saved(saved, arch, plan, normed2_rg)
        if arch.linear_attention is not None:
            # Qwen3.5-MoE's shared expert (a dense MLP of intermediate_size) scaled by sigmoid(shared_expert_gate(x)):
            # the sigmoid keeps its output, the product keeps both factors
            shared_rg = _dense_mlp_saved(saved, arch, plan, normed2_rg)
            gate_rg = _linear(saved, plan, "shared_expert_gate", h, normed2_rg, True)
            saved.add("shared expert: sigmoid(gate)", a if gate_rg or shared_rg else 0)
            saved.add("shared expert: output (for the gate's grad)", a * h if gate_rg else 0)
            out_rg = out_rg or shared_rg or gate_rg
    else:
        out_rg = _dense_mlp_saved(saved, arch, plan, normed2_rg)
    if arch.norms_per_layer == 4:
        out_rg = _rmsnorm(saved, "post-feedforward norm", h, norm_act, out_rg, plan.full, gemma)
    return saved, x2_rg or out_rg


def _gated_deltanet_saved(saved: SavedTensors, arch: ModelArch, plan: LayerPlan, in_rg: bool) -> bool:
    """Qwen3.5's linear-attention mixer as the oracle runs it on CPU: transformers' torch fallbacks
    (modeling_qwen3_5.py Qwen3_5GatedDeltaNet.forward, causal_conv1d_fn, torch_chunk_gated_delta_rule with
    chunks of 64 in fp32, Qwen3_5RMSNormGated), op by op; per token, except the recurrent state each chunk keeps
    (value heads x key dim x value dim, fp32), counted per token as its 1/chunk share.  Linear in the sequence."""
    la = arch.linear_attention
    assert la is not None
    a, h, nv, C = plan.act_bytes, arch.hidden_size, la.num_value_heads, la.chunk_size
    V = la.value_dim  # = num_value_heads x key_head_dim too (the reader requires equal head dims)
    # Qwen3.5's four input Linears, or Qwen3-Next's two fused ones (LinearAttention.fused_projections); the copies
    # that reorder Qwen3-Next's outputs (fix_query_key_value_ordering, the reshapes, the cat) keep nothing
    names = ("in_proj_qkvz", "in_proj_ba") if la.fused_projections else ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")
    rg = any([_linear(saved, plan, name, h, in_rg, True) for name in names]) or plan.full
    if not rg:
        return False
    # the depthwise conv1d keeps its input and its (padded) output, which the SiLU after it keeps too
    saved.add("conv1d input + output (SiLU input)", 2 * a * la.conv_dim)
    saved.add("beta = sigmoid(b) output", a * nv)
    saved.add("softplus(a + dt_bias) input (fp32)", FP32 * nv * (2 if plan.full else 1))  # + its output for A_log
    # torch_chunk_gated_delta_rule, fp32 throughout: q and k repeated to the value heads; kept are the fp32 copies of
    # q, k and v, the l2-normalised k, the scaled q, k * beta, the two triangular solves' outputs (new values,
    # k_cumdecay), the decayed q and k and every chunk's v_new: 11 tensors of value heads x head dim
    saved.add("gated delta rule: 11 fp32 (heads x head dim) tensors", 11 * FP32 * V)
    # of them, F.pad pads to whole chunks all but the fp32 copies of q, k, v and the normalised k
    # (and a padded tail is one more chunk, with its recurrent state)
    saved.chunk = C
    saved.padded_bytes = 7 * FP32 * V + 5 * FP32 * nv * C + 5 * FP32 * nv + FP32 * nv * la.key_head_dim * la.value_head_dim // C
    # the two l2-norm inverses, beta, the exp of the cumulative decay (three uses) and the chunk decay
    saved.add("gated delta rule: fp32 per-head scalars", 6 * FP32 * nv + -(-FP32 * nv // C))
    # the pairwise decay, k_beta @ k^T, the UT system, q @ k^T and the intra-chunk attention (chunk x chunk per head)
    saved.add("gated delta rule: 5 fp32 chunk x chunk tensors", 5 * FP32 * nv * C)
    saved.add("gated delta rule: recurrent state per chunk", FP32 * nv * la.key_head_dim * la.value_head_dim // C)
    # Qwen3_5RMSNormGated: the fp32 input and rsqrt; weight * x in 16 bit (its input when the weight trains);
    # that times silu(z.float()) keeps both, the SiLU its fp32 input
    saved.add("gated RMSNorm: fp32 input + rsqrt", FP32 * V + FP32 * nv)
    saved.add("gated RMSNorm: weight * x, silu(z) in/out", a * V + 2 * FP32 * V + (a * V if plan.full else 0))
    return _linear(saved, plan, "out_proj", V, True, input_already_saved=False)


def _dense_mlp_saved(saved: SavedTensors, arch: ModelArch, plan: LayerPlan, in_rg: bool) -> bool:
    # the intermediates are fp32 where the 4-bit gate / up return fp32 on an fp32 input (LayerPlan.fp32_stream)
    a, i, f32 = (FP32 if plan.fp32_stream else plan.act_bytes), arch.intermediate_size, plan.fp32_stream
    if arch.mlp_kind == "gated":
        if arch.fused_gate_up:
            gate_rg = up_rg = _linear(saved, plan, "gate_up_proj", arch.hidden_size, in_rg, True, f32)
        else:
            gate_rg = _linear(saved, plan, "gate_proj", arch.hidden_size, in_rg, True, f32)
            up_rg = _linear(saved, plan, "up_proj", arch.hidden_size, in_rg, True, f32)
        if gate_rg:
            saved.add("MLP activation input", a * i)  # silu / gelu keep their input
        if up_rg:
            saved.add("MLP activation output", a * i)  # act * up keeps act for up's grad
        if gate_rg:
            saved.add("MLP up output", a * i)  # ... and up for act's grad
        prod_rg = gate_rg or up_rg
    else:
        prod_rg = _linear(saved, plan, "up_proj", arch.hidden_size, in_rg, True, f32)
        if prod_rg:
            saved.add("MLP activation input", a * i)
    return _linear(saved, plan, "down_proj", i, prod_rg, input_already_saved=False, fp32_input=f32)


def _gemma4_moe_block_saved(saved: SavedTensors, arch: ModelArch, plan: LayerPlan, x2_rg: bool, normed2_rg: bool,
                            norm_act: int, gemma: bool) -> bool:
    """Gemma 4's enable_moe_block (modeling_gemma4.py Gemma4TextDecoderLayer.forward, Gemma4TextRouter): the dense MLP
    on the pre-feedforward norm's output, then post_feedforward_layernorm_1; the router on the residual (a
    weightless RMSNorm, times ``scale`` and a constant, ``proj``, an fp32 softmax, top-k renormalised and scaled per
    expert); the experts on pre_feedforward_layernorm_2 of the residual, then post_feedforward_layernorm_2.  Returns
    whether the sum of both branches requires grad."""
    assert arch.moe is not None
    a, h, e, k = plan.act_bytes, arch.hidden_size, arch.moe.num_experts, arch.moe.experts_per_token
    dense_rg = _dense_mlp_saved(saved, arch, plan, normed2_rg)
    dense_rg = _rmsnorm(saved, "post-feedforward norm 1", h, norm_act, dense_rg, plan.full, gemma)
    router_in_rg = _rmsnorm(saved, "router norm", h, norm_act, x2_rg, False, gemma)
    if plan.full:
        # the normed input times ``scale`` keeps the normed input for scale's grad; proj keeps its own input
        saved.add("router: normed input (scale grad) + proj input", 2 * a * h)
    router_rg = router_in_rg or plan.full
    if router_rg:
        # the fp32 softmax keeps its output; top-k its indices (int64); the renormalisation and the per-expert scale
        # keep the k weights (fp32), the gathered scales and the indices of the gather
        saved.add("router softmax (fp32)", FP32 * e)
        saved.add("router top-k: indices, weights, per-expert scales", 8 * k + 3 * FP32 * k)
    experts_in_rg = _rmsnorm(saved, "pre-feedforward norm 2", h, norm_act, x2_rg, plan.full, gemma)
    experts_rg = _moe_saved(saved, arch, plan, experts_in_rg or router_rg)
    experts_rg = _rmsnorm(saved, "post-feedforward norm 2", h, norm_act, experts_rg, plan.full, gemma)
    return dense_rg or experts_rg


def _moe_saved(saved: SavedTensors, arch: ModelArch, plan: LayerPlan, in_rg: bool) -> bool:
    """Mixtral-style top-k MoE: every token runs k experts, so the MLP terms count k times, plus the
    gathered expert inputs and the fp32 router probabilities."""
    assert arch.moe is not None
    a, k, ie, e = plan.act_bytes, arch.moe.experts_per_token, arch.moe.expert_intermediate_size, arch.moe.num_experts
    router_rg = False
    if not arch.moe.dense_mlp:  # Gemma 4's router is counted by _gemma4_moe_block_saved
        router_rg = _linear(saved, plan, "gate", arch.hidden_size, in_rg, True)
    if (in_rg or router_rg) and arch.model_type != "gpt_oss" and not arch.moe.dense_mlp:  # gpt-oss: softmax over k
        saved.add("router softmax (fp32)", FP32 * e)
    # PEFT adapts the fused expert tensors through a parametrization: every forward materialises the
    # merged weight W + B·A of the whole expert stack, and the per-expert matmuls keep views of it for
    # backward, so one full copy of each adapted tensor stays alive per layer (checked by the oracle).
    merged = merged_expert_bytes(arch, plan)
    saved.layer_bytes += merged + expert_factor_cast_bytes(arch, plan)
    expert_weights_train = plan.full or merged > 0
    expert_rg = in_rg or expert_weights_train
    if expert_rg:
        if expert_weights_train:  # a grouped matmul keeps its input only for its weight's gradient
            saved.add("expert inputs (gathered)", a * k * arch.hidden_size)
        if arch.moe.swiglu_limit is not None:
            # gpt-oss's clamped SwiGLU (GptOssExperts._apply_gate): the clamps keep views of the gate_up output
            # (2 ie), then the clamped gate, sigmoid(alpha * gate), their product and up + 1 are kept (ie each)
            saved.add("expert clamped SwiGLU (gate_up out, gate, sigmoid, glu, up + 1)", a * 6 * k * ie)
        else:
            saved.add("expert MLP (act in/out, up)", a * 3 * k * ie)
        if expert_weights_train:
            saved.add("expert down input", a * k * ie)
        saved.add("expert outputs (weighted)", a * k * arch.hidden_size)
    return expert_rg or router_rg


EXPERT_TENSORS = {"experts.gate_up_proj": 2, "experts.down_proj": 1}  # LoRA target name -> ie x h blocks per expert


def _last_merged_expert_bytes(arch: ModelArch, plan: LayerPlan) -> int:
    if arch.moe is None:
        return 0
    block = arch.moe.num_experts * arch.moe.expert_intermediate_size * arch.hidden_size * plan.act_bytes
    for name in ("experts.down_proj", "experts.gate_up_proj"):  # the order backward meets them
        if name in plan.lora:
            return EXPERT_TENSORS[name] * block
    return 0


def expert_factor_cast_bytes(arch: ModelArch, plan: LayerPlan) -> int:
    """PEFT folds W + scaling * lhs @ rhs with one baddbmm after casting both LoRA factors of an adapted expert
    tensor to the weight's dtype (peft/tuners/lora/layer.py ParamWrapper.get_delta_factors, _LoraFactorsProxy);
    the baddbmm keeps both casts for backward.  No copy when the adapters already have the weights' dtype.
    With 128 experts (Qwen3-MoE) that is ~39 MiB per layer at r=16; with Mixtral's 8, ~14 MiB."""
    if arch.moe is None or plan.act_bytes == plan.adapter_bytes:
        return 0
    h, ie, e, r = arch.hidden_size, arch.moe.expert_intermediate_size, arch.moe.num_experts, plan.rank
    params = (2 * e * r * (h + 2 * ie) if "experts.gate_up_proj" in plan.lora else 0) + \
        (e * r * (ie + h) if "experts.down_proj" in plan.lora else 0)
    return params * plan.act_bytes


def merged_expert_bytes(arch: ModelArch, plan: LayerPlan) -> int:
    """One layer's PEFT-merged copies (W + B·A, in the weights' 16-bit dtype) of the adapted expert tensors."""
    if arch.moe is None:
        return 0
    block = arch.moe.num_experts * arch.moe.expert_intermediate_size * arch.hidden_size * plan.act_bytes
    return sum(blocks * block for name, blocks in EXPERT_TENSORS.items() if name in plan.lora)


def chunk_padding_bytes(cfg: TrainConfig, saved: SavedTensors) -> int:
    """What a chunked layer keeps for the positions that pad every sequence to whole chunks (0 when the
    sequence length is a multiple of the chunk)."""
    if not saved.chunk:
        return 0
    pad = -cfg.seq_len % saved.chunk
    return cfg.micro_batch * pad * saved.padded_bytes


def attention_scores_bytes(arch: ModelArch, cfg: TrainConfig, saved: SavedTensors) -> int:
    """s x s tensors kept by one layer for one micro batch: eager attention's scores (per query head),
    or SDPA's float copy of a window mask (one per layer)."""
    heads = arch.num_heads if saved.scores_per_head else 1
    return cfg.micro_batch * heads * cfg.seq_len * cfg.seq_len * saved.scores_bytes


def layer_plan(arch: ModelArch, cfg: TrainConfig, lora_names: frozenset[str], attn: str,
               layer_type: str | None = None) -> LayerPlan:
    """What one layer trains and how it attends.  ``layer_type`` (a family with per-layer attention kinds,
    ModelArch.layer_types) decides whether SDPA gets a mask on this layer: a sliding layer where the window is
    shorter than the sequence, any layer when image tokens attend both ways (their block mask)."""
    act = FP32 if cfg.precision == "fp32" else 2
    if layer_type is None:
        masked = attn == "sdpa" and attention_masks(arch, cfg, attn)[0] > 0
    else:
        windowed = arch.sliding_window is not None and cfg.seq_len >= arch.sliding_window
        masked = attn == "sdpa" and (_image_block_mask(arch, cfg)
                                     or (windowed and layer_type == "sliding_attention"))
    # 16-bit adapters (DeepSpeed, torchtune, FSDP2's param_dtype: TrainConfig.adapters_16bit): PEFT's cast of the
    # input to the adapter dtype is a no-op and the LoRA branch computes in 16 bit.  fp32 adapters under autocast
    # (the HF Trainer's bf16 / fp16): PEFT casts the input to fp32, autocast casts it back for lora_A's matmul.
    adapter_bytes = act if cfg.adapters_16bit else FP32
    return LayerPlan(full=cfg.method == "full", lora=lora_names, rank=cfg.rank, act_bytes=act, eager=attn == "eager",
                     linear_mixer=layer_type == "linear_attention",
                     global_attention=layer_type == "full_attention" and arch.global_head_dim is not None,
                     autocast=cfg.master_weights, sdpa_masked=masked, kv_repeated=masked and arch.num_kv_heads < arch.num_heads,
                     adapter_bytes=adapter_bytes,
                     lora_autocast=cfg.lora_autocast(arch), lora_input_cast=cfg.peft_casts_lora_input,
                     lora_dropout=cfg.lora_dropout > 0, fp32_stream=cfg.kbit_upcast != "none")


def attention_masks(arch: ModelArch, cfg: TrainConfig, attn: str) -> tuple[int, int]:
    """(number, bytes) of the dense (b, 1, s, s) masks transformers materializes for one forward.

    Eager attention always needs a float mask in the compute dtype (Gemma 2 a second one for its sliding
    layers); SDPA needs a boolean mask only where a sliding window is shorter than the sequence;
    FlashAttention-2 handles causality and windows in the kernel."""
    s, b = cfg.seq_len, cfg.micro_batch
    windowed = arch.sliding_window is not None and s >= arch.sliding_window
    # Gemma 3 makes one mask per attention kind its layers use (a full and a sliding one), or both, with image
    # tokens (modeling_gemma3.py create_masks_for_vision_model: their block mask joins the causal one)
    kinds = len(set(arch.layer_types[:arch.num_layers])) if arch.layer_types and arch.model_type in GEMMA3 else 1
    if attn == "eager":
        # gpt-oss builds a full and a sliding mask whatever its layers (modeling_gpt_oss.py GptOssModel.forward)
        count = 2 if arch.model_type in ("gemma2", "gpt_oss") else 2 if _image_block_mask(arch, cfg) else kinds
        elem = FP32 if cfg.precision == "fp32" else 2
    elif attn == "sdpa" and _image_block_mask(arch, cfg):
        count, elem = 2, 1
    elif attn == "sdpa" and windowed:
        count, elem = 1, 1
    else:
        return 0, 0
    return count, count * b * s * s * elem


def _image_block_mask(arch: ModelArch, cfg: TrainConfig) -> bool:
    """Image tokens in the batch of a model that lets them attend both ways (Gemma 3's token_type_ids)."""
    return arch.vision is not None and cfg.has_images


@dataclass(frozen=True)
class Transients:
    """Short-lived tensors on top of a layer's saved activations, in bytes for one micro batch.

    forward: the layer's peak while it runs with saving (all its saved tensors are alive by its last op);
    forward_unsaved: its peak while it runs under checkpointing (nothing saved, only the working set);
    backward: the peak of its backward on top of its saved activations and the incoming gradient;
    norm_backward: its end, the input RMSNorm's backward (fp32 temporaries) next to the residual grads.
    """

    forward: int
    forward_unsaved: int
    backward: int
    norm_backward: int
    # the attention's own backward peak above the layer's saved bytes and incoming gradient, reached after the
    # layer's MLP grads exist (gpt-oss's sink softmax, eager attention's softmax; 0 where the MLP is the peak)
    attention_backward: int = 0


def layer_transients(arch: ModelArch, plan: LayerPlan, cfg: TrainConfig, quantized: bool,
                     after_attention: int = 0, probs_saved: bool = True) -> Transients:
    """The MLP is where a layer peaks (it is the widest part), or eager attention's s x s scores at long sequences;
    ``after_attention``: the bytes the layer keeps after its attention (SavedTensors.after_attention x tokens), not
    yet there while the attention runs forward and already released when its backward runs.  The MLP's terms
    follow its data flow:
    ``down(act(gate(x)) * up(x))`` with PEFT's LoRA branch ``result + B(A(x.float())) * scale`` computed
    in fp32 next to the 16-bit base output, and bitsandbytes dequantizing a whole 4-bit weight per matmul."""
    a, h, T = plan.act_bytes, arch.hidden_size, cfg.tokens
    i = arch.moe.expert_intermediate_size if arch.moe else arch.intermediate_size
    lora = plan.lora
    ad = plan.adapter_bytes
    # the LoRA branch's outputs are in the adapter dtype, or 16-bit under autocast; its input cast to fp32 (PEFT)
    # is followed under autocast by the 16-bit copy lora_A's matmul takes (xcast: bytes per input element)
    lc = a if plan.lora_autocast else ad
    xcast = (ad + (a if plan.lora_autocast else 0)) if plan.lora_copies_input else 0
    # k-bit preparation's fp32 stream (LayerPlan.fp32_stream): the residual, the normed inputs, the 4-bit Linears'
    # outputs (m) and the MLP's intermediates are fp32; each 4-bit Linear and each lora_A casts its fp32 input to
    # 16 bit (a copy alive while it runs); the base output, PEFT's clone of it and the sum with the 16-bit LoRA
    # output are fp32 (at the sum: clone, scaled LoRA output and sum alive)
    s = m = FP32 if plan.fp32_stream else a
    if plan.fp32_stream:
        xcast = a
    # PEFT's LoRA dropout (lora_B(lora_A(dropout(x)))): the dropped-out input, in the dtype dropout is given, is
    # alive while lora_A runs; by lora_B and the scaling it is released unless kept (saved tensors count it then).
    # Where lora_B's output and its scaled copy (2 x lc per output element) are smaller, it raises the branch's peak.
    drop = (ad if plan.lora_copies_input else m) if plan.lora_dropout else 0  # (fp32 on an fp32 stream)
    lora_out = max(m + 2 * lc, 2 * m + lc)  # base output + LoRA output + its scaled copy; then the sum, per output
    # bitsandbytes' forward runs a fused 4-bit GEMM; its backward dequantizes the whole weight (bf16).
    fused = arch.fused_gate_up  # Phi-3: one gate_up_proj (2i x h), its output chunked into gate and up views
    dequant = 2 * h * i * (2 if fused else 1) if quantized else 0  # one dequantized MLP weight, independent of tokens
    gated = arch.mlp_kind == "gated"
    up_name = "gate_up_proj" if fused else "up_proj"

    # -- with saving: at up_proj (act is alive, up's LoRA branch computing; act/up outputs and down's
    # cast are not saved yet) and at down_proj (prod alive unless saved, down's LoRA branch computing)
    # (an fp32 stream: a 4-bit up_proj's 16-bit output is alive next to its fp32 cast, the saved one)
    at_up = T * ((m + lc if plan.fp32_stream else ad) * i if up_name in lora else a * i if plan.fp32_stream else 0)
    # on an fp32 stream a 4-bit down_proj casts the fp32 product to 16 bit for its matmul, and its 16-bit output is
    # alive next to its fp32 cast: a moment of its own before the LoRA branch (whose input cast lora_A keeps)
    down_base = a * i + (a + m) * h if plan.fp32_stream and quantized else 0
    if fused and up_name in lora:
        # Phi-3: the 2i-wide gate_up LoRA branch (lora_B output and its scaled copy) next to PEFT's fp32 cast of the
        # input, a local of its forward; the base output, cloned or summed, is the saved gate_up output
        at_up = T * ((ad if plan.lora_copies_input and ad != a else 0) * h + 2 * lc * 2 * i)
    # PEFT's cast of down's input to the fp32 adapters' dtype (x = self._cast_input_dtype(x, lora_A.weight.dtype)) is a
    # local of the LoRA forward until it returns: not saved (lora_A keeps the 16-bit copy under autocast), but alive
    down_cast = ad * i if "down_proj" in lora and ad != a and plan.lora_copies_input else 0
    if down_cast and plan.lora_dropout and plan.lora_autocast:  # dropout's fp32 output (lora_A keeps the 16-bit cast)
        down_cast += max(0, drop * i - 2 * lc * h)
    # the MLP's input (its forward's argument x) is alive until the MLP returns, saved or not (+ a * h)
    at_down = T * (2 * s * h + (0 if plan.full else m * i) + max(lora_out * h if "down_proj" in lora else m * h,
                                                                 down_base) + down_cast)
    forward = max(at_up, at_down)
    sink_scores = sink_tail = sink_extra = moe_bwd = 0
    if arch.attention_sinks and plan.eager:
        # gpt-oss's eager attention (modeling_gpt_oss.py eager_attention_forward): at the max subtraction the
        # scaled, masked scores, their concatenation with the sink column and the difference are alive (one
        # b x heads x s x (s+1) tensor each); the softmax output replaces the concatenation.  With saving, one of
        # them is the kept softmax output and the layer's MoE terms are not saved yet.
        sink_scores = a * cfg.micro_batch * arch.num_heads * cfg.seq_len * (cfg.seq_len + 1)
        moe_later = T * a * arch.moe.experts_per_token * (6 * i + h) if arch.moe and arch.moe.swiglu_limit else 0
        sink_extra = 2 * sink_scores - moe_later
        forward = max(forward, sink_extra)
        sink_tail = 3 * sink_scores + T * 3 * a * arch.q_dim  # + q and the GQA-repeated k and v

    # -- without saving (checkpointed forward): residual + normed input + the MLP working set
    base = T * 2 * s * h
    up_lora = T * (xcast * h + (m + lora_out) * i + max(0, drop * h - 2 * lc * i)) if up_name in lora else T * 2 * m * i
    if fused and up_name in lora:
        # Phi-3's gate_up_proj runs first (no act output alive yet), and its LoRA branch is 2i wide: the base output
        # (cloned by PEFT's bitsandbytes layer), lora_B's output and its scaled copy, 2i each
        up_lora = T * (xcast * h + lora_out * 2 * i + max(0, drop * h - 2 * lc * 2 * i))
    at_mul = T * 3 * m * i if gated else T * 2 * m * i
    down_work = T * (m * i + max(xcast * i + lora_out * h + max(0, drop * i - 2 * lc * h) if "down_proj" in lora
                                 else m * h, down_base))
    if fused:
        # Phi3MLP.forward keeps ``gate`` (a view of the 2i-wide gate_up output) until it returns: that whole output is
        # alive at the product and through down_proj
        at_mul, down_work = T * 4 * m * i, down_work + T * 2 * m * i
    # MoE (transformers' grouped_mm experts, integrations/moe.py grouped_mm_experts_forward): at the un-permute
    # the gathered inputs, the down output, the weighted output and its re-ordered copy (T*k rows each) are alive
    moe_end = T * 4 * a * arch.moe.experts_per_token * h if arch.moe else 0
    # the layer's merged expert weights (and the factor casts they were folded from) exist while it runs, saved or
    # not (they are its weights)
    if arch.moe is not None and arch.moe.dense_mlp:
        # Gemma 4 (modeling_gemma4.py Gemma4TextRouter): the routing weights stay fp32 (fp32 softmax times
        # per_expert_scale), so in grouped_mm_experts_forward the weighted expert outputs and their re-ordered copy are
        # fp32 (T*k rows); at the un-permute they are alive with the gathered inputs and the down output (16-bit), next
        # to the residual, the dense MLP's output and its normed copy (post_feedforward_layernorm_1)
        kh = arch.moe.experts_per_token * h
        gathered = 0 if plan.full else a * kh  # kept for backward anyway when the expert weights train
        moe_end = T * (gathered + a * kh + 2 * FP32 * kh + 3 * a * h)
        forward = max(forward, moe_end)
        # its backward, at the routing-weight product's backward: the fp32 gradient of the weighted outputs (scattered
        # back by the un-permute), its product with the weights (fp32) and that cast to 16 bit, next to the fp32
        # gradient of the experts' output (.to(hidden_states.dtype)) and the branch gradients (16-bit, T rows)
        moe_bwd = T * (2 * FP32 * kh + a * kh + FP32 * h + 2 * a * h)
    # eager attention (transformers' eager_attention_forward): the (b, heads, s, s) scores pass through new tensors
    # op by op.  ``softmax(w, dtype=float32)`` on 16-bit scores first converts them to fp32 (torch SoftMax.cpp: the
    # half_to_float kernel only for fp16 on CUDA), so at the softmax the masked 16-bit scores (still bound to w), their
    # fp32 copy and the fp32 output are alive; ``.to(q.dtype)`` then makes the 16-bit probs.  With saving, the fp32
    # output and the probs are kept (scores_bytes): at the softmax the masked scores and the copy are extra and the
    # probs do not exist yet; without, all of it is working set, next to q and the GQA-repeated k and v.  Its
    # backward, at the softmax's: the fp32 grad (the .to's backward) and the input grad _softmax_backward_data
    # returns (fp32 after the copy, else 16-bit), beside the kept fp32 output (the probs were released by probs @ v's
    # backward); by then the layer's MLP and o_proj grads exist (Transients.attention_backward).
    scores = cfg.micro_batch * arch.num_heads * cfg.seq_len * cfg.seq_len if plan.eager and not arch.attention_sinks \
        else 0
    fp32_copy = FP32 if cfg.precision == "bf16" else 0  # fp16: torch's half-to-float kernel; fp32: nothing to convert
    attn_unsaved = base + T * 3 * a * arch.q_dim + scores * (a + fp32_copy + FP32) if scores else 0
    attn_saved = scores * fp32_copy - after_attention
    attn_backward = scores * (FP32 + (FP32 if fp32_copy else a) - a) - after_attention if scores else 0
    forward = max(forward, attn_saved)
    # the decoder layer keeps eager attention's 16-bit probabilities as a local until it returns (``hidden_states, _ =
    # self.self_attn(...)``: the attention returns its weights): through the MLP they are alive whether saved or not
    # (probs_saved: SavedTensors.probs_saved counts them already)
    held_probs = scores * a
    if not probs_saved:
        forward += held_probs
    forward_unsaved = (base + max(max(up_lora, at_mul, down_work, moe_end) + held_probs, sink_tail)
                       + merged_expert_bytes(arch, plan) + expert_factor_cast_bytes(arch, plan))
    forward_unsaved = max(forward_unsaved, attn_unsaved)
    la = arch.linear_attention
    if la is not None:
        # Qwen3.5's linear-attention layers (the oracle's torch fallback of the chunked gated delta rule): inside the
        # chunk loop the 16-bit conv output (q, k, v) and z, and nine fp32 (value heads x head dim) tensors are alive
        # (v, v * beta, k * beta, the decayed k * beta, the two triangular solves' outputs, the output buffer, the
        # decayed q and k) with three fp32 chunk x chunk tensors per head (pairwise decay, UT system, intra attention)
        mixer = T * (a * la.conv_dim + a * la.value_dim + 9 * FP32 * la.value_dim + 3 * FP32 * la.num_value_heads * la.chunk_size)
        # Qwen3-Next (fused_projections): Qwen3NextGatedDeltaNet.forward holds its locals projected_states_qkvz and
        # projected_states_ba (the two Linears' outputs; q, k, v, z, b and a are reordered copies of them) until it
        # returns, though nothing keeps them for backward (the checkpointed forward's peak rose by exactly that)
        held = T * a * (la.conv_dim + la.value_dim + 2 * la.num_value_heads) if la.fused_projections else 0
        forward_unsaved = max(forward_unsaved, base + mixer + held)
    linear_bwd = 0
    if la is not None:
        # its backward (the chunk loop's, in reverse): the fp32 gradients of the output, v_new, the decayed q and k,
        # the new values and k_cumdecay are alive at once (five of value heads x head dim), with the incoming gradient
        linear_bwd = T * (a * h + 5 * FP32 * la.value_dim)

    # -- backward: the incoming gradient plus, at the MLP, the grads of act and up next to the grad of
    # their product, or down's LoRA grad w.r.t. its fp32 input next to the base grad
    mul_bwd = T * 3 * m * i if gated else T * 2 * m * i
    if arch.moe is not None:  # the experts run T x k rows: the grads of act, up and their product are that tall
        mul_bwd *= arch.moe.experts_per_token
    elif gated and not fused and ("down_proj" in lora or plan.full):
        # by then down_proj's backward has run and released what it kept of its input (the product, or PEFT's
        # 16-bit copy of it), which the layer's saved bytes still count
        mul_bwd -= T * a * i
    # its gradients are in the dtype the branch takes its input in: fp32 after PEFT's cast, else 16 bit (the
    # bitsandbytes branch under autocast, 16-bit adapters)
    gl = ad if plan.lora_copies_input else lc
    down_lora_bwd = T * (m * i + gl * i + gl * h) if "down_proj" in lora else 0
    # (an fp32 stream: the 16-bit grad of the base's input cast, next to its fp32 copy)
    down_q_bwd = dequant + T * (a + (m if plan.fp32_stream else 0)) * i if quantized else 0
    # adapted MoE experts: the backward of the last expert matmul materialises the dense gradient of the
    # merged tensor it read (down_proj's, else gate_up's) before it reaches the LoRA factors
    expert_grad = _last_merged_expert_bytes(arch, plan)
    # gpt-oss's sinks: at the max's backward (a scatter into new zeros) the softmax's input gradient, the zeros
    # and the scattered gradient are alive (b x heads x s x (s+1) each); the layer's softmax output and its MoE
    # terms are already released by then: the same excess over the layer's saved bytes as in the forward
    backward = T * s * h + max(mul_bwd, down_lora_bwd, down_q_bwd, expert_grad, sink_extra, moe_bwd)
    backward = max(backward, linear_bwd)
    # RMSNorm backward in fp32: the upcast grad, and the pow/mean chain's temporaries (four of width h),
    # next to the 16-bit grads of the residual and of the layer input
    norm_backward = T * (4 * FP32 * h + 2 * s * h)
    return Transients(forward, forward_unsaved, backward, norm_backward,
                      attention_backward=max(sink_extra, attn_backward))
