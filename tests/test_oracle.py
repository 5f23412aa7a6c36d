"""The memory model against its independent oracle: the real training step (transformers + PEFT +
bitsandbytes + torch.optim) traced on fake CPU tensors.  Every phase peak must agree within 2 %.

Shapes are real model widths and vocabularies with fewer layers, so the matrix runs in about a minute.
The full matrix (48+ configs, 7B shapes, seq 256-8192) is benchmarks/accuracy.py.
"""


import pytest

from tests.configs_2026 import config_path  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from advisor.memory import TrainConfig, estimate  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.verify.dryrun import PHASES, run_dry  # noqa: E402

TOLERANCE = 0.02

CASES = [
    ("llama-3.2-1b", 4, dict(method="full", seq_len=512, micro_batch=2)),
    ("llama-3.2-1b", 4, dict(method="lora", targets=("all-linear",), seq_len=1024)),
    ("llama-3.2-1b", 4, dict(method="lora", targets=("q,v",), rank=8, seq_len=512, micro_batch=2, grad_ckpt=True)),
    ("llama-3.2-1b", 4, dict(method="qlora", targets=("all-linear",), rank=64, seq_len=1024, grad_ckpt=True)),
    ("llama-3.2-1b", 4, dict(method="qlora", targets=("attention",), quant_type="fp4", double_quant=False, seq_len=512)),
    ("qwen2.5-0.5b", 6, dict(method="lora", targets=("all-linear",), seq_len=512, micro_batch=4)),
    ("qwen2.5-0.5b", 6, dict(method="full", seq_len=256, micro_batch=2, grad_ckpt=True, optimizer="sgd")),
    ("qwen3-0.6b", 4, dict(method="lora", targets=("o_proj", "down_proj"), seq_len=512)),
    ("gemma-2-2b", 3, dict(method="lora", targets=("all-linear",), seq_len=512)),  # eager, soft-capped
    ("gemma-2-2b", 3, dict(method="full", attn="flash", seq_len=512, grad_ckpt=True)),
    ("llama-2-7b", 2, dict(method="lora", targets=("all-linear",), train_embeddings=True, seq_len=256)),
    # a tied embedding: PEFT trains two untied copies (embed_tokens and lm_head), each with its own grad and states
    ("llama-3.2-1b", 2, dict(method="lora", targets=("all-linear",), train_embeddings=True, seq_len=512)),
    ("qwen2.5-0.5b", 2, dict(method="qlora", targets=("all-linear",), train_embeddings=True, seq_len=512, grad_ckpt=True)),
    ("tinyllama-1.1b", 3, dict(method="lora", targets=("all-linear",), seq_len=1024, micro_batch=2, attn="eager")),
    # eager attention where its s x s scores outgrow the MLP: the checkpointed forward's softmax working set (16-bit
    # scores, their fp32 copy, the fp32 output) and the softmax backward (two fp32 grads beside the kept output)
    ("llama-2-7b", 2, dict(method="lora", targets=("all-linear",), seq_len=4096, grad_ckpt=True, attn="eager")),
    ("llama-2-7b", 2, dict(method="lora", targets=("all-linear",), seq_len=2048, micro_batch=2, attn="eager")),
    ("llama-3.2-1b", 3, dict(method="qlora", targets=("all-linear",), seq_len=4096, grad_ckpt=True, attn="eager")),
    ("phi-3-mini-4k", 3, dict(method="lora", targets=("all-linear",), seq_len=2048, micro_batch=2)),  # fused, window mask
    ("mistral-7b-v0.1", 2, dict(method="lora", targets=("q,v",), seq_len=4096)),  # window mask: GQA k/v repeated
    ("llama-3.2-1b", 2, dict(method="full", master_weights=True, seq_len=1024, micro_batch=2)),  # autocast
    # 16-bit adapters the optimizer holds: TRL's cast of a 4-bit model's adapters, torchtune's model-dtype adapters
    ("llama-3.2-1b", 4, dict(method="qlora", targets=("all-linear",), rank=64, seq_len=1024, grad_ckpt=True, stack="trl")),
    ("qwen2.5-0.5b", 4, dict(method="lora", targets=("all-linear",), seq_len=512, micro_batch=2, grad_ckpt=True,
                             stack="torchtune")),
    ("qwen2.5-0.5b", 4, dict(method="full", master_weights=True, seq_len=1024, micro_batch=2, grad_ckpt=True)),
    # with the chunked loss the layers set the peak (found by sampling the config space against the oracle):
    # the MLP's input and PEFT's fp32 cast of down's input alive at down_proj, the embedding output the model's
    # forward still holds, the final norm's backward over every saved activation, eager attention's backward
    # after the layer's weight grads exist, Phi-3's 2i-wide gate_up output held through down_proj
    ("tinyllama-1.1b", 3, dict(method="lora", attn="sdpa", seq_len=3000, micro_batch=4, loss="chunked", optimizer="sgd")),
    ("tinyllama-1.1b", 2, dict(method="qlora", attn="sdpa", seq_len=4096, micro_batch=4, loss="chunked")),
    ("tinyllama-1.1b", 3, dict(method="lora", targets=("down_proj",), seq_len=4096, micro_batch=4, loss="chunked",
                               stack="torchtune")),
    ("mistral-7b-v0.1", 1, dict(method="full", attn="eager", seq_len=2048, optimizer="sgd")),
    # Phi-3's fused gate_up under a 4-bit base: its LoRA branch is 2i wide (PEFT's clone of the base output, lora_B's
    # output and its scaled copy) and runs before any act output exists
    pytest.param("phi-3-mini-4k", 3, dict(method="qlora", seq_len=2048, grad_ckpt=True, loss="chunked"),
                 marks=pytest.mark.xfail(strict=True, reason=(
                     "its forward now agrees (-0.0 %); the backward reads 4 % above the oracle, the over-count a 4-bit "
                     "base's checkpointed backward still shows at long sequences (Llama-3.2-1B, 3 layers at 2 x 4096: "
                     "+3.6 %, was +12.5 % before down_proj's 16-bit LoRA grads and its released input were counted), "
                     "on the safe side"))),
    ("phi-3-mini-4k", 3, dict(method="qlora", targets=("gate_up_proj",), seq_len=1024, micro_batch=2, grad_ckpt=True,
                              loss="chunked")),
    # ... and over fp32 adapters, recomputed in the backward: the branch next to PEFT's fp32 cast of the input
    ("phi-3-mini-4k", 3, dict(method="lora", targets=("gate_up_proj",), seq_len=2048, grad_ckpt=True, loss="chunked")),
    # fp32 training: the loss's logits.float() is the same tensor, no copy
    ("qwen2.5-0.5b", 2, dict(method="lora", seq_len=1024, precision="fp32")),
    ("tinyllama-1.1b", 2, dict(method="full", seq_len=512, micro_batch=2, precision="fp32")),
    # the chunked loss as the exported job runs it: TRL's fused LM head, one logits tile at a time
    ("qwen2.5-0.5b", 4, dict(method="lora", seq_len=2048, loss="chunked")),
    ("llama-3.2-1b", 3, dict(method="lora", seq_len=2048, micro_batch=2, grad_ckpt=True, loss="chunked")),
    ("tinyllama-1.1b", 2, dict(method="full", seq_len=1024, micro_batch=2, loss="chunked")),
    ("llama-2-7b", 2, dict(method="lora", seq_len=512, train_embeddings=True, loss="chunked")),
    # PEFT's LoRA dropout: a dropped-out copy of each adapted module's input and its mask (fp32 adapters under
    # autocast, the bitsandbytes branch, 16-bit adapters, and the checkpointed recompute)
    ("llama-3.2-1b", 3, dict(method="lora", seq_len=1024, lora_dropout=0.1)),
    ("llama-3.2-1b", 3, dict(method="qlora", seq_len=1024, lora_dropout=0.1)),
    ("qwen2.5-0.5b", 3, dict(method="lora", seq_len=512, micro_batch=2, stack="torchtune", lora_dropout=0.05)),
    ("qwen2.5-0.5b", 3, dict(method="lora", seq_len=4096, grad_ckpt=True, loss="chunked", lora_dropout=0.05)),
    ("llama-3.2-1b", 3, dict(method="lora", seq_len=2048, micro_batch=2, loss="chunked", lora_dropout=0.05)),
    # LoRA on o_proj of a 4-bit base with the attention not adapted: in layer 0 no grad reaches q, k, v, SDPA keeps
    # nothing, and lora_A keeps o_proj's input itself; under Phi-3's window mask that input is a copy in every layer
    ("llama-3.2-1b", 2, dict(method="qlora", targets=("o_proj", "down_proj"), seq_len=1024)),
    ("phi-3-mini-4k", 2, dict(method="qlora", targets=("o_proj",), seq_len=4096)),
    # MoE with PEFT's LoRA on the fused expert tensors: a merged copy of the expert stack per layer
    ("mixtral-8x7b-v0.1", 2, dict(method="lora", targets=("all-linear",), seq_len=512, optimizer="sgd")),
    ("mixtral-8x7b-v0.1", 3, dict(method="lora", targets=("all-linear",), seq_len=256, grad_ckpt=True, optimizer="sgd")),
    ("mixtral-8x7b-v0.1", 2, dict(method="lora", targets=("attention",), seq_len=1024, optimizer="sgd")),
    # eager attention's probabilities held as the decoder layer's local through its MLP, where nothing saves them (no
    # grad reaches q, k, v in layer 0); Gemma 3's case is in SAFE_SIDE
    ("tinyllama-1.1b", 2, dict(method="lora", seq_len=2048, micro_batch=2, attn="eager", targets=("down_proj",))),
    # k-bit preparation (TrainConfig.kbit_upcast): PEFT's prepare_model_for_kbit_training (fp32 embeddings, norms and
    # lm_head) and TRL 0.7.5-0.25's fp32 norms; the residual stream, the 4-bit layers' outputs and the MLP go fp32
    ("llama-3.2-1b", 2, dict(method="qlora", seq_len=512, kbit_upcast="all")),
    ("llama-3.2-1b", 2, dict(method="qlora", seq_len=2048, grad_ckpt=True, kbit_upcast="norms")),
    ("llama-3.2-1b", 2, dict(method="qlora", seq_len=1024, precision="fp16", kbit_upcast="all")),
    ("tinyllama-1.1b", 2, dict(method="qlora", seq_len=2048, targets=("attention",), lora_dropout=0.05,
                               kbit_upcast="all")),
    ("qwen2.5-0.5b", 2, dict(method="qlora", seq_len=2048, kbit_upcast="all")),  # qkv biases, tied embeddings
    # transformers before 4.49 (loss "shifted"): the fp32 logits shifted into a contiguous copy (none for one sequence)
    ("llama-3.2-1b", 2, dict(method="lora", seq_len=1024, loss="shifted")),
    ("llama-3.2-1b", 2, dict(method="qlora", seq_len=2048, micro_batch=2, grad_ckpt=True, loss="shifted")),
    ("qwen2.5-0.5b", 2, dict(method="full", seq_len=512, micro_batch=2, precision="fp32", loss="shifted")),
    ("gemma-2-2b", 2, dict(method="lora", attn="flash", seq_len=512, micro_batch=2, loss="shifted")),  # soft-capped
    ("qwen3-0.6b", 2, dict(method="qlora", seq_len=2048, loss="chunked", kbit_upcast="all")),  # q/k norms
]

# Where a layer's working set carries the peak and the estimate takes its moments together: up to 10 % above the
# oracle, never more than 2 % below.  k-bit preparation (the over-count a 4-bit base's checkpointed backward shows,
# larger on the fp32 stream; the 4-bit MLP's 16-bit and fp32 copies taken at one moment), and LoRA dropout's backward.
SAFE_SIDE = [
    # eager attention's probabilities held through the MLP (above); found by the oracle sweep at -15 %, now -1.5 %
    # forward and +4.5 % in dropout's backward
    ("gemma-3-1b-it", 1, dict(method="lora", seq_len=4096, micro_batch=4, attn="eager", optimizer="sgd", stack="trl",
                              targets=("o_proj", "down_proj"), rank=64, lora_dropout=0.05)),
    ("mistral-7b-v0.1", 2, dict(method="qlora", seq_len=2048, loss="chunked", kbit_upcast="norms")),
    ("tinyllama-1.1b", 2, dict(method="qlora", seq_len=2048, micro_batch=2, loss="chunked", kbit_upcast="norms")),
    ("phi-3-mini-4k", 2, dict(method="qlora", seq_len=1024, micro_batch=2, loss="chunked", kbit_upcast="norms")),  # fused
    ("tinyllama-1.1b", 2, dict(method="qlora", seq_len=4096, grad_ckpt=True, loss="chunked", kbit_upcast="norms")),
    ("tinyllama-1.1b", 2, dict(method="qlora", seq_len=4096, grad_ckpt=True, loss="chunked", kbit_upcast="all")),
    ("tinyllama-1.1b", 2, dict(method="qlora", seq_len=2048, grad_ckpt=True, lora_dropout=0.1, loss="chunked",
                               kbit_upcast="norms")),
    ("qwen2.5-0.5b", 2, dict(method="qlora", seq_len=2048, grad_ckpt=True, loss="chunked", kbit_upcast="norms")),
    ("phi-3-mini-4k", 2, dict(method="qlora", seq_len=1024, micro_batch=2, grad_ckpt=True, loss="chunked",
                              kbit_upcast="all")),
]


def _assert_phases_within(name: str, layers: int, settings: dict, low: float, high: float) -> None:
    """Each phase's estimated peak within (low, high) relative to the oracle's for the model cut to ``layers``."""
    arch = resolve_model(name).model_copy(update={"num_layers": layers})
    cfg = TrainConfig(**settings)
    oracle = run_dry(arch, cfg)
    est = estimate(arch, cfg)
    assert oracle.trainable_params == est.trainable_params
    for phase in PHASES:
        measured, predicted = oracle.phase_peaks[phase], getattr(est.phases, phase)
        assert low <= (predicted - measured) / measured <= high, (
            f"{phase}: estimate {predicted / 2**20:.1f} MiB vs oracle {measured / 2**20:.1f} MiB")


@pytest.mark.parametrize("name,layers,settings", CASES,
                         ids=[f"{getattr(c, 'values', c)[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_phase_peak_within_two_percent(name, layers, settings):
    _assert_phases_within(name, layers, settings, -TOLERANCE, TOLERANCE)


@pytest.mark.parametrize("name,layers,settings", SAFE_SIDE,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SAFE_SIDE)])
def test_never_low_at_most_ten_percent_high(name, layers, settings):
    _assert_phases_within(name, layers, settings, -TOLERANCE, 0.10)


# Newer MoE families, from their verbatim config.json (../shared/data/model-configs-2026): real widths, 128 experts
# (Qwen3-MoE) with PEFT's LoRA on the fused expert tensors, fewer layers.  The chunked loss keeps the logits small
# so that the layer terms carry the peak.
MOE_2026_CASES = [
    ("Qwen3-30B-A3B", 2, dict(method="qlora", targets=("all-linear",), seq_len=1024, optimizer="sgd")),
    ("Qwen3-30B-A3B", 4, dict(method="qlora", targets=("all-linear",), seq_len=1024, grad_ckpt=True, loss="chunked",
                              optimizer="sgd")),
    ("Qwen3-30B-A3B", 4, dict(method="lora", targets=("all-linear",), seq_len=1024, loss="chunked", optimizer="sgd")),
    ("Qwen3-30B-A3B", 4, dict(method="lora", targets=("attention",), seq_len=1024, loss="chunked", optimizer="sgd")),
    ("Qwen3-30B-A3B", 3, dict(method="full", seq_len=1024, loss="chunked", optimizer="sgd")),
    ("Qwen3-30B-A3B", 3, dict(method="full", seq_len=512, grad_ckpt=True, optimizer="sgd")),
    ("Qwen3-235B-A22B", 2, dict(method="lora", targets=("all-linear",), seq_len=512, loss="chunked", optimizer="sgd")),
    # gpt-oss: eager attention with sinks (s x (s+1) scores per head), sliding and full layers, a clamped SwiGLU
    # over fused experts with biases; all-linear adapts the attention Linears only
    ("gpt-oss-20b", 2, dict(method="lora", targets=("all-linear",), seq_len=1024, optimizer="sgd")),
    ("gpt-oss-20b", 2, dict(method="qlora", targets=("all-linear",), seq_len=1024, optimizer="sgd")),
    ("gpt-oss-20b", 4, dict(method="lora", targets=("all-linear",), seq_len=1024, grad_ckpt=True, loss="chunked",
                            optimizer="sgd")),
    ("gpt-oss-20b", 3, dict(method="lora", targets=("attention",), seq_len=2048, loss="chunked", optimizer="sgd")),
    ("gpt-oss-20b", 2, dict(method="full", seq_len=2048, loss="chunked", optimizer="sgd")),
    ("gpt-oss-20b", 3, dict(method="full", seq_len=2048, grad_ckpt=True, loss="chunked", optimizer="sgd")),
    ("gpt-oss-120b", 2, dict(method="lora", targets=("q_proj", "v_proj"), seq_len=1024, loss="chunked", optimizer="sgd")),
]


@pytest.mark.parametrize("config,layers,settings", MOE_2026_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(MOE_2026_CASES)])
def test_2026_moe_phase_peaks_within_two_percent(config, layers, settings):
    test_every_phase_peak_within_two_percent(str(config_path(config)), layers, settings)


def test_oracle_keeps_dropout_masks_as_a_gpu_does():
    """CUDA's dropout saves a bool mask; the CPU's would save an fp32 noise tensor.  With plain LoRA under autocast
    every adapted module already has its own input copy, so turning dropout on adds exactly the masks: one byte per
    input element of each adapted module whose input needs a grad (layer 0's q/k/v read the frozen embedding's
    output, which does not)."""
    arch = resolve_model("llama-3.2-1b").model_copy(update={"num_layers": 2})
    plain = run_dry(arch, TrainConfig(method="lora", seq_len=512)).phase_peaks
    dropped = run_dry(arch, TrainConfig(method="lora", seq_len=512, lora_dropout=0.1)).phase_peaks
    h, i = arch.hidden_size, arch.intermediate_size
    masks = 512 * ((h + 2 * h + i) + (6 * h + i))  # layer 0: o, gate, up, down; layer 1: all seven
    assert dropped["forward"] - plain["forward"] == masks
    assert dropped["backward"] - plain["backward"] == masks


def test_oracle_sees_what_the_formula_ignores():
    """Sanity of the oracle itself: checkpointing must cut the traced forward peak, and a longer
    sequence must raise it: it measures the step, it does not echo the model."""
    arch = resolve_model("llama-3.2-1b").model_copy(update={"num_layers": 2})
    base = run_dry(arch, TrainConfig(method="lora", seq_len=512)).phase_peaks
    ckpt = run_dry(arch, TrainConfig(method="lora", seq_len=512, grad_ckpt=True)).phase_peaks
    longer = run_dry(arch, TrainConfig(method="lora", seq_len=1024)).phase_peaks
    assert ckpt["forward"] < base["forward"] < longer["forward"]


# Gemma 3 (issue 13), read from its own config.json (transformers' defaults applied): Gemma3ForConditionalGeneration
# with its SigLIP tower.  Six layers: five sliding (window 1024) and one global, as the model interleaves them.
GEMMA3_CASES = [
    ("gemma-3-4b-it", 6, dict(method="lora", targets=("all-linear",), seq_len=512)),
    ("gemma-3-4b-it", 6, dict(method="full", seq_len=1024, grad_ckpt=True)),
    # seq > window: SDPA gets a mask on the sliding layers only (the global one runs causal, native GQA)
    ("gemma-3-4b-it", 6, dict(method="lora", attn="sdpa", seq_len=2048, loss="chunked")),
    ("gemma-3-4b-it", 6, dict(method="lora", attn="eager", seq_len=1024)),
    # images: one 896 x 896 image (256 tokens inside the sequence); the frozen tower runs without saving, or
    # (gradient checkpointing hooks its patch embeddings) with its checkpoints and backward
    ("gemma-3-4b-it", 6, dict(method="lora", seq_len=1024, image_size=896)),
    ("gemma-3-4b-it", 6, dict(method="lora", seq_len=1024, image_size=896, images_per_sample=2, grad_ckpt=True,
                              loss="chunked")),
    ("gemma-3-4b-it", 2, dict(method="full", seq_len=1024, image_tokens=512, micro_batch=2, grad_ckpt=True)),
    ("gemma-3-27b-it", 6, dict(method="lora", targets=("all-linear",), seq_len=1024)),
]


@pytest.mark.parametrize("name,layers,settings", GEMMA3_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(GEMMA3_CASES)])
def test_gemma3_every_phase_peak_within_two_percent(name, layers, settings):
    test_every_phase_peak_within_two_percent(str(config_path(name)), layers, settings)


# Qwen3.5 dense (issue 13): Gated DeltaNet linear-attention layers interleaved with gated full attention (three linear,
# then one full), from the catalog's verbatim config.json; four layers so both kinds appear.  The oracle runs
# transformers' torch fallbacks of the chunked gated delta rule and the causal conv1d (no fla kernels on CPU).
QWEN3_5_CASES = [
    ("qwen3.5-27b", 4, dict(method="lora", targets=("all-linear",), seq_len=512, loss="chunked", optimizer="sgd")),
    ("qwen3.5-9b", 4, dict(method="lora", targets=("all-linear",), seq_len=1024)),
    ("qwen3.5-9b", 4, dict(method="lora", seq_len=1000, micro_batch=2, loss="chunked", optimizer="sgd")),  # padded chunk
    ("qwen3.5-9b", 4, dict(method="lora", seq_len=2048, grad_ckpt=True, loss="chunked", optimizer="sgd")),
    ("qwen3.5-9b", 4, dict(method="qlora", seq_len=1024, optimizer="sgd")),
    ("qwen3.5-9b", 4, dict(method="lora", targets=("attention",), seq_len=1024, loss="chunked", optimizer="sgd")),
    ("qwen3.5-9b", 4, dict(method="full", seq_len=1024, loss="chunked", optimizer="sgd")),
    ("qwen3.5-9b", 4, dict(method="full", seq_len=1024, grad_ckpt=True, loss="chunked", optimizer="sgd")),
    ("qwen3.5-27b", 4, dict(method="lora", seq_len=1024, attn="eager", loss="chunked", optimizer="sgd")),
    # Qwen3.5-MoE: the same layers with 256 routed experts (fused, not adapted: PEFT does not convert qwen3_5_moe's
    # targets) and a shared expert (nn.Linear, adapted by all-linear) gated by sigmoid(shared_expert_gate)
    ("qwen3.5-35b-a3b", 4, dict(method="lora", seq_len=1024, loss="chunked", optimizer="sgd")),
    ("qwen3.5-35b-a3b", 4, dict(method="lora", targets=("attention",), seq_len=1024, loss="chunked", optimizer="sgd")),
    ("qwen3.5-35b-a3b", 4, dict(method="qlora", seq_len=1024, optimizer="sgd")),
    ("qwen3.5-35b-a3b", 4, dict(method="lora", seq_len=2048, grad_ckpt=True, loss="chunked", optimizer="sgd")),
    ("qwen3.5-35b-a3b", 4, dict(method="full", seq_len=1024, loss="chunked", optimizer="sgd")),
    ("qwen3.5-122b-a10b", 4, dict(method="lora", seq_len=1024, loss="chunked", optimizer="sgd")),
]


@pytest.mark.parametrize("name,layers,settings", QWEN3_5_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(QWEN3_5_CASES)])
def test_qwen3_5_every_phase_peak_within_two_percent(name, layers, settings):
    test_every_phase_peak_within_two_percent(name, layers, settings)
