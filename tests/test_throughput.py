"""The throughput model (advisor/throughput.py): hand-counted FLOPs for tiny shapes, published behaviour, and one
test per bug of issue 14 (each failed on the single-curve model it replaced)."""

from __future__ import annotations

import json

import pytest

from advisor.memory import TrainConfig
from advisor.memory.estimate import peaks
from advisor.models import ModelArch, resolve_model
from advisor.models.arch import MoE
from advisor.throughput import Job, flops, flops_per_token, gpu_perf, speed, throughput

TINY = ModelArch(name="tiny", model_type="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16,
                 intermediate_size=128, vocab_size=100, max_position_embeddings=4096)
TINY_MOE = ModelArch(name="tiny-moe", model_type="mixtral", hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=4,
                     head_dim=16, intermediate_size=32, vocab_size=100, max_position_embeddings=4096,
                     moe=MoE(num_experts=8, experts_per_token=2, shared_experts=1, expert_intermediate_size=32))
A100 = gpu_perf("A100 80GB")


def _tp(arch, cfg, batch=16, perf=A100):
    return throughput(arch, cfg, peaks(arch, cfg, None), batch, perf)


# ---- FLOPs counted by hand -----------------------------------------------------------------------------------
# TINY, per layer: q, k, v, o 64x64 = 4 x 4096 = 16384 weights; gate, up 64x128 and down 128x64 = 24576;
# 40960 per layer, 81920 for two; LM head 100 x 64 = 6400.  Attention at s = 32, causal: each query sees 16 keys
# on average; QK^T and AV are 2 x 2 x 64 (q_dim) x 16 = 4096 FLOPs per token and layer, 8192 for two layers.
def test_forward_flops_by_hand_causal_attention_is_half_the_square():
    f = flops(TINY, TrainConfig(method="full", seq_len=32))
    assert f.forward == 2 * (81920 + 6400) + 8192  # 184832; the full square would add another 8192
    # backward of full fine-tuning: input and weight gradients (2 x 176640), attention 2.5 x 8192
    assert f.backward == 353280 + 20480
    assert f.recompute == 0


def test_recompute_is_one_more_forward_of_the_layers_not_the_head():
    f = flops(TINY, TrainConfig(method="full", seq_len=32, grad_ckpt=True))
    assert f.recompute == 2 * 81920 + 8192  # 172032: the layers' forward again, not the LM head
    assert flops_per_token(TINY, TrainConfig(method="full", seq_len=32, grad_ckpt=True)) == 184832 + 373760


def test_frozen_base_has_no_weight_gradients():
    # LoRA r=1 on q and v: adapters 2 x 1 x (64 + 64) per adapted Linear = 256, two per layer = 512 per layer
    f = flops(TINY, TrainConfig(method="lora", rank=1, targets=("q,v",), seq_len=32))
    assert f.forward == 184832 + 2 * 512
    # base: input gradient only (176640); attention 20480; adapters twice their forward (2 x 1024)
    assert f.backward == 176640 + 20480 + 2048


def test_moe_discounts_only_the_routed_experts():
    """Bug: the MoE correction discounted shared experts and the router along with the routed experts."""
    # attention 16384 + router 64 x 8 = 512 + (1 shared + 2 of 8 routed) x 3 x 64 x 32 = 18432 -> 35328 per token;
    # head 6400; attention 4 x 64 x 16 = 4096 at s = 32
    f = flops(TINY_MOE, TrainConfig(method="full", seq_len=32))
    assert f.forward == 2 * (35328 + 6400) + 4096
    # backward: input and weight gradients 2 x 2 x 41728 = 166912, attention 2.5 x 4096 = 10240
    assert flops_per_token(TINY_MOE, TrainConfig(method="full", seq_len=32)) == 87552 + 166912 + 10240


# ---- bugs of the single-curve model --------------------------------------------------------------------------
def test_param_offload_traffic_is_added_to_the_collectives():
    """Bug: with several GPUs comm_s = 2 * grads / link overwrote the parameter-offload PCIe term, so the weights'
    trips over PCIe, which happen every micro step, vanished."""
    arch = resolve_model("llama-2-7b")
    base = dict(method="full", seq_len=2048, micro_batch=1, gpus=2, zero=3, grad_ckpt=True)

    def step(batch, **extra):
        return _tp(arch, TrainConfig(**base, **extra), batch=batch)

    # 4 more micro steps (effective batch 16 instead of 8 on 2 GPUs): with the weights offloaded each costs its
    # forward, recompute and backward fetch of every GPU's half of the 16-bit weights over PCIe 4.0 x16 (25 GB/s at
    # best) on top of what the same micro steps cost without offload: 4 x 3 x 6.74e9 x 2 B / 2 / 25e9 = 3.2 s
    extra_with_offload = step(16, offload="params").step_s - step(8, offload="params").step_s
    extra_on_gpu = step(16).step_s - step(8).step_s
    assert extra_with_offload - extra_on_gpu >= 4 * 3 * 6.74e9 * 2 / 2 / 25e9
    offload = step(8, offload="params")
    assert offload.terms["comm_s"] > 0 and offload.terms["offload_s"] > 0


def test_utilisation_is_not_applied_to_the_recompute():
    """Bug: base utilisation figures were MFU but applied to FLOPs that included the recompute, and the reported
    MFU did not move with checkpointing.  MFU counts model FLOPs only, so it falls exactly with tokens/s."""
    arch = resolve_model("llama-3.1-8b")
    plain = _tp(arch, TrainConfig(method="lora", seq_len=2048))
    ckpt = _tp(arch, TrainConfig(method="lora", seq_len=2048, grad_ckpt=True))
    assert ckpt.mfu / plain.mfu == pytest.approx(ckpt.tokens_per_s / plain.tokens_per_s)
    assert ckpt.hfu > ckpt.mfu
    # ms-swift (public-throughput.csv rows 522/523, Qwen-7B LoRA on an A100): checkpointing 4.31 vs 6.19 samples/s
    assert 0.60 <= ckpt.tokens_per_s / plain.tokens_per_s <= 0.80


def test_utilisation_at_short_micro_batches_depends_on_model_size():
    """Bug: the ramp with tokens per micro batch ignored model size (the same 13 % at 256 tokens for 1.8B and 14B)."""
    small, large = resolve_model("qwen2.5-1.5b"), resolve_model("qwen2.5-14b")
    cfg = TrainConfig(method="lora", seq_len=256)
    assert _tp(large, cfg).mfu > 1.3 * _tp(small, cfg).mfu


def test_small_full_finetune_step_has_fixed_costs():
    """Bug: fixed per-step costs were missing.  ms-swift's Qwen-1.8B full fine-tuning (rows 503-505) runs 10.8,
    10.4 and 8.7 samples/s at max length 512, 1024 and 2048: the step time barely follows the tokens."""
    arch = resolve_model("qwen2.5-1.5b")
    short = _tp(arch, TrainConfig(method="full", seq_len=256, master_weights=True))
    long = _tp(arch, TrainConfig(method="full", seq_len=2048, master_weights=True))
    assert long.step_s / short.step_s < 6  # 8x the tokens; measured is flatter still (see the benchmark's results)
    for term in ("optimizer_s", "step_overhead_s", "overhead_s"):  # costs that do not grow with the tokens
        assert short.terms[term] == long.terms[term] > 0


def test_qlora_catches_up_with_lora_at_long_sequences():
    """Bug: the QLoRA penalty was one constant; measured QLoRA catches up with LoRA at 4-8k tokens."""
    arch = resolve_model("llama-2-7b")

    def ratio(seq):
        return _tp(arch, TrainConfig(method="qlora", seq_len=seq)).tokens_per_s / \
            _tp(arch, TrainConfig(method="lora", seq_len=seq)).tokens_per_s

    assert ratio(512) < 0.75  # LitGPT's table (rows 394/395): 2.36 vs 3.68 min per 1k short Alpaca iterations
    assert ratio(8192) > ratio(512) + 0.15
    assert ratio(8192) > 0.85


def test_precision_is_read():
    """Bug: cfg.precision was never read; fp32 got the bf16 peak.  The A100's datasheet: 312 TFLOP/s bf16 tensor,
    19.5 TFLOP/s fp32 (PyTorch leaves TF32 off for matmuls by default)."""
    arch = resolve_model("qwen2.5-1.5b")
    bf16 = _tp(arch, TrainConfig(method="lora", seq_len=2048))
    fp32 = _tp(arch, TrainConfig(method="lora", seq_len=2048, precision="fp32"))
    assert fp32.tokens_per_s < bf16.tokens_per_s / 5


def test_collectives_use_nvlink_when_the_card_has_it():
    arch = resolve_model("llama-2-7b")
    cfg = TrainConfig(method="full", seq_len=2048, gpus=4, fsdp=True, grad_ckpt=True)
    nvlink = _tp(arch, cfg, perf=gpu_perf("A100 80GB"))
    pcie = _tp(arch, cfg, perf=gpu_perf("L40S"))  # no NVLink: peer traffic through the host
    assert nvlink.terms["comm_s"] < pcie.terms["comm_s"]


# ---- time and cost ------------------------------------------------------------------------------------------
def test_job_time_gpu_hours_and_cost_ranges():
    arch = resolve_model("llama-3.1-8b")
    cfg = TrainConfig(method="qlora", seq_len=2048, micro_batch=2, grad_ckpt=True, gpus=2, zero=2)
    tp = _tp(arch, cfg)
    s = speed(tp, 2, 2048, Job(dataset_tokens=50_000_000, epochs=2, price_per_gpu_hour=0.7))
    assert s.wall_s == pytest.approx(100_000_000 / s.tokens_per_s)
    assert s.gpu_hours == pytest.approx(2 * s.wall_s / 3600)
    assert s.cost == pytest.approx(0.7 * s.gpu_hours)
    for value, (low, high) in ((s.wall_s, s.wall_s_range), (s.gpu_hours, s.gpu_hours_range), (s.cost, s.cost_range),
                               (s.tokens_per_s, s.tokens_per_s_range), (s.step_s, s.step_s_range)):
        assert low < value < high
    samples = speed(tp, 2, 2048, Job(samples=1000))
    assert samples.dataset_tokens == 2_048_000 and samples.cost is None


def _cli_json(capsys, argv):
    from advisor.cli import main

    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_plan_json_carries_time_and_cost(capsys):
    code, doc = _cli_json(capsys, ["plan", "--json", "--model", "llama-3.1-8b", "--gpu", "4090", "--dataset-tokens", "50M",
                                   "--epochs", "2", "--price-per-gpu-hour", "0.7"])
    assert code == 0
    s = doc["plan"]["chosen"]["speed"]
    assert s["dataset_tokens"] == 50_000_000 and s["epochs"] == 2
    assert s["cost_range"][0] < s["cost"] < s["cost_range"][1]
    assert s["gpu_hours"] == pytest.approx(100_000_000 / s["tokens_per_s"] / 3600)
    assert all(alt["speed"]["wall_s"] for alt in doc["plan"]["alternatives"])


def test_estimate_json_speed_is_for_the_exact_config(capsys):
    code, doc = _cli_json(capsys, ["estimate", "--json", "--model", "llama-3.2-1b", "--gpu", "a100-80gb", "--method", "lora",
                                   "--seq-len", "1024", "--micro-batch", "2", "--effective-batch", "8", "--samples", "1.2k"])
    assert code == 0
    s = doc["speed"]
    assert s["tokens_per_step"] == 1024 * 2 * 4  # micro batch x seq len x 4 accumulation steps
    assert s["dataset_tokens"] == 1200 * 1024
    assert s["step_s"] == pytest.approx(s["tokens_per_step"] / s["tokens_per_s"])


@pytest.mark.parametrize("flag,value", [("--dataset-tokens", "5Q"), ("--dataset-tokens", "0.5"), ("--epochs", "0"),
                                        ("--epochs", "nan"), ("--price-per-gpu-hour", "-1"), ("--samples", "1e9")])
def test_bad_job_flags_are_one_line_errors(capsys, flag, value):
    from advisor.cli import main

    assert main(["plan", "--model", "llama-3.1-8b", "--gpu", "4090", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


def test_count_suffixes():
    from advisor.cli import _count

    assert _count("50M") == 50_000_000
    assert _count("1.2B") == 1_200_000_000
    assert _count("300k") == 300_000
    assert _count("123456") == 123456
