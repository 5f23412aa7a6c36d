"""Which precision the step really runs in, as the training stack runs it, and what that saves per LoRA module.

The HF Trainer's bf16 / fp16 flags are accelerate's native AMP: the forward runs under torch.autocast (except under
DeepSpeed, whose engine casts the module to 16 bit instead).  PEFT keeps LoRA adapters in fp32 and casts each
module's input to fp32; autocast casts it back to 16 bit for lora_A's matmul and keeps that copy.  The oracle
(tests/test_oracle.py) traces the same step under autocast; these tests pin the contract and the per-module terms.
"""

import itertools

import pytest

from advisor.export.context import ExportContext
from advisor.memory import TrainConfig, estimate
from advisor.memory.activations import layer_plan, layer_saved
from advisor.models import resolve_model

ARCH = resolve_model("llama-3.2-1b")
ALL_LINEAR = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


def _saved(cfg: TrainConfig) -> dict[str, int]:
    saved, _ = layer_saved(ARCH, layer_plan(ARCH, cfg, ALL_LINEAR, "sdpa"), True)
    return saved.items


@pytest.mark.parametrize("method,zero,stack,precision", itertools.product(
    ("lora", "qlora", "full"), (0, 2, 3), ("auto", "trl", "axolotl", "torchtune"), ("bf16", "fp16", "fp32")))
def test_the_estimate_runs_autocast_exactly_when_the_exported_trainer_does(method, zero, stack, precision):
    if method == "qlora" and precision == "fp32":
        pytest.skip("refused combination (4-bit layers compute in 16 bit)")
    cfg = TrainConfig(method=method, zero=zero, stack=stack, precision=precision, gpus=4 if zero == 3 else 1)
    ctx = ExportContext(arch=ARCH, cfg=cfg, estimate=estimate(ARCH, cfg), model_id="m", effective_batch=1)
    # the exported trainer's mixed-precision flag turns on accelerate's autocast, except under DeepSpeed (accelerate
    # accelerator.py: native_amp is never set for DistributedType.DEEPSPEED)
    trainer_autocast = (ctx.bf16 or ctx.fp16) and not zero and stack != "torchtune"
    assert cfg.under_autocast == trainer_autocast


def test_hf_trainer_lora_keeps_one_16bit_input_copy_per_module():
    items = _saved(TrainConfig(method="lora", targets=("all-linear",)))
    h, i = ARCH.hidden_size, ARCH.intermediate_size
    copies = {k: v for k, v in items.items() if "autocast 16-bit copy" in k}
    # q, k, v, o, gate and up read h-wide inputs, down reads the i-wide product; 2 bytes each (bf16)
    assert sum(copies.values()) == 2 * (6 * h + i)
    assert not any("LoRA fp32 input" in k for k in items)


def test_deepspeed_lora_computes_in_16bit_without_copies():
    items = _saved(TrainConfig(method="lora", targets=("all-linear",), zero=2))
    assert not any("autocast" in k or "LoRA fp32 input" in k for k in items)
    # q/k/v share the normed attention input and gate/up the MLP input: lora_A keeps those tensors, no copy
    assert items["attention input: LoRA input"] == 2 * ARCH.hidden_size


def test_torchtunes_16bit_adapters_keep_less_than_the_trainers_per_module_copies():
    # without checkpointing every layer keeps its LoRA inputs: one 16-bit copy per adapted module under the trainer's
    # autocast, none under torchtune (its 16-bit adapters read the base Linear's own input)
    hf = estimate(ARCH, TrainConfig(method="lora", targets=("all-linear",), seq_len=2048, micro_batch=2))
    tt = estimate(ARCH, TrainConfig(method="lora", targets=("all-linear",), seq_len=2048, micro_batch=2,
                                    stack="torchtune"))
    assert hf.phases.backward > tt.phases.backward  # torchtune's 16-bit adapters share the base input


def test_zero3_keeps_peft_fp32_adapters_unless_the_base_is_4bit():
    # transformers builds a ZeRO-3 model inside deepspeed.zero.Init (not a quantized one), and DeepSpeed's engine
    # casts only a model that was not: LoRA keeps PEFT's fp32 adapters and casts each input to fp32 (no autocast)
    lora = _saved(TrainConfig(method="lora", targets=("all-linear",), zero=3, gpus=4))
    assert lora["q_proj: LoRA fp32 input"] == 4 * ARCH.hidden_size
    qlora = _saved(TrainConfig(method="qlora", targets=("all-linear",), zero=3, gpus=4))
    assert not any("LoRA fp32 input" in k or "autocast" in k for k in qlora)


@pytest.mark.parametrize("method", ["qlora", "lora8bit"])
def test_trl_trains_a_quantized_models_adapters_in_bf16_with_bf16_adam_states(method):
    # TRL's SFTTrainer casts a 4-bit / 8-bit model's trainable params to bf16 (trl 1.16 sft_trainer.py); torch's
    # AdamW keeps m and v in the param dtype, so weights, grads and states all halve against PEFT's fp32 adapters
    hf = estimate(ARCH, TrainConfig(method=method, targets=("all-linear",)))
    trl = estimate(ARCH, TrainConfig(method=method, targets=("all-linear",), stack="trl"))
    assert hf.trainable_params == trl.trainable_params
    adapters = hf.trainable_params
    assert TrainConfig(method=method, stack="trl").adapters_stored_16bit
    by_name = {c.name: c.bytes for c in trl.components}
    assert by_name["optimizer_states"] <= 2 * 2 * adapters * 1.01  # m + v in bf16 (allocation rounding aside)
    hf_states = {c.name: c.bytes for c in hf.components}["optimizer_states"]
    assert hf_states == pytest.approx(2 * by_name["optimizer_states"], rel=0.01)


def test_trl_keeps_fp32_adapters_where_deepspeed_or_fsdp_hold_the_master_copy():
    # DeepSpeed steps its own fp32 master partition and accelerate's FSDP upcasts trainable params to fp32
    for sharding in (dict(zero=2), dict(zero=3, gpus=2), dict(fsdp=True, gpus=2)):
        assert not TrainConfig(method="qlora", stack="trl", **sharding).adapters_stored_16bit
    # ZeRO-3 without a 4-bit base: TRL passes autocast_adapter_dtype=False, so the adapters are 16-bit there
    assert TrainConfig(method="lora", stack="trl", zero=3, gpus=2).adapters_16bit
    assert not TrainConfig(method="lora", zero=3, gpus=2).adapters_16bit
    # the HF Trainer (and axolotl, LLaMA-Factory) keep PEFT's fp32 adapters
    for stack in ("auto", "transformers", "axolotl", "llamafactory"):
        assert not TrainConfig(method="qlora", stack=stack).adapters_stored_16bit
