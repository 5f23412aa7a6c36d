"""What the training stacks hold beyond the step, checked against the stacks' own accounting: DeepSpeed's
ZeRO model-state estimators (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py)."""

import pytest

from advisor.memory import TrainConfig
from advisor.memory.sharding import per_gpu_states
from advisor.memory.states import optimizer_bytes, param_bytes
from advisor.models import resolve_model

ds2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2", reason="DeepSpeed is not installed")
ds3 = pytest.importorskip("deepspeed.runtime.zero.stage3", reason="DeepSpeed is not installed")

ARCH = resolve_model("llama-2-7b")


def _states(**fields):
    cfg = TrainConfig(method="full", seq_len=512, **fields)
    pb = param_bytes(ARCH, cfg)
    return cfg, pb, per_gpu_states(ARCH, cfg, pb, optimizer_bytes(ARCH, cfg, pb))


def _foreach_temporary(pb, gpus):
    """torch's foreach AdamW keeps one fp32 temporary the size of the rank's partition (not in DeepSpeed's sum)."""
    return 4 * pb.trainable_params // gpus


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("master", [False, True])
def test_zero2_model_states_are_deepspeeds(gpus, master):
    cfg, pb, gpu = _states(zero=2, gpus=gpus, master_weights=master)
    assert cfg.master_weights is False  # DeepSpeed keeps its own fp32 master: the flag means nothing there
    ours = gpu.params + gpu.grads + gpu.states + gpu.step_temporaries - _foreach_temporary(pb, gpus)
    _, expected = ds2.estimate_zero2_model_states_mem_needs(pb.total_params, num_gpus_per_node=gpus, cpu_offload=False)
    assert ours == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
def test_zero2_optimizer_offload_host_ram_is_deepspeeds(gpus):
    _, pb, gpu = _states(zero=2, gpus=gpus, offload="optimizer")
    cpu, gpu_mem = ds2.estimate_zero2_model_states_mem_needs(pb.total_params, num_gpus_per_node=gpus, cpu_offload=True)
    assert gpu.host_ram == pytest.approx(cpu, rel=0.01)
    assert gpu.params + gpu.grads + gpu.states == pytest.approx(gpu_mem, rel=0.01)


@pytest.mark.parametrize("gpus", [2, 4, 8])
@pytest.mark.parametrize("offload", ["none", "optimizer", "params"])
def test_zero3_model_states_and_host_ram_are_deepspeeds(gpus, offload):
    _, pb, gpu = _states(zero=3, gpus=gpus, offload=offload)
    cpu, gpu_mem, _ = ds3.estimate_zero3_model_states_mem_needs(
        pb.total_params, pb.largest_layer_params, num_gpus_per_node=gpus, cpu_offload=offload != "none",
        cpu_offload_params=offload == "params", zero_init=True)
    resident = gpu.params + gpu.grads + gpu.states
    if offload == "none":
        resident += gpu.step_temporaries - _foreach_temporary(pb, gpus)
    # DeepSpeed counts 4 B x the largest layer for what is gathered (our `gathered`, kept apart here).  Its ZeRO-3
    # sum is 18 B per param and rank where the partitions held are 20 B: the 16-bit parameter partition
    # (stage3.py fp16_partitioned_groups_flat, 2 B) next to the 16-bit grads, fp32 master, Adam's m and v and the
    # fp32 grads of the step; with the parameters offloaded that partition is on the host, and the sums agree.
    layers = 4 * pb.largest_layer_params
    fp16_partition = 2 * pb.total_params // gpus if offload == "none" else 0
    assert resident + layers == pytest.approx(gpu_mem + fp16_partition, rel=0.01)
    if offload != "none":
        assert gpu.host_ram == pytest.approx(cpu, rel=0.01)


def test_zero_on_one_gpu_changes_the_estimate():
    """`--zero 2` on one GPU is DeepSpeed's optimizer: 16-bit module, fp32 master and states, fp32 grad partition."""
    from advisor.memory import estimate

    plain = estimate(ARCH, TrainConfig(method="full", seq_len=512, grad_ckpt=True))
    zero2 = estimate(ARCH, TrainConfig(method="full", seq_len=512, grad_ckpt=True, zero=2))
    p = plain.total_params
    # AdamW states go from bf16 (4 B) to fp32 (8 B), plus the 4 B master and the 4 B fp32 grads in the step
    assert zero2.phases.optimizer - plain.phases.optimizer == pytest.approx(12 * p + 2 * p, rel=0.02)


def _ds2_bucket_bytes(elements: int, overlap: bool, contiguous: bool = True) -> int:
    """The buffers DeepSpeed's own ZeRO-2 code allocates at the start of a backward (stage_1_and_2.py
    DeepSpeedZeroOptimizer.setup_buckets), run on a stand-in optimizer with the config's values."""
    import types

    import torch

    bucket = types.SimpleNamespace(buffer=[], index=0)
    opt = types.SimpleNamespace(ready_for_gradients=False, micro_step_id=0, contiguous_gradients=contiguous,
                                overlap_comm=overlap, reduce_bucket_size=elements, ipg_buckets={torch.bfloat16: bucket},
                                _gradient_reduction_buffer_dtype=lambda: torch.bfloat16)
    ds2.DeepSpeedZeroOptimizer.setup_buckets(opt)
    return sum(t.numel() * t.element_size() for t in bucket.buffer)


@pytest.mark.parametrize("overlap,contiguous", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_zero2_gradient_bucket_is_deepspeeds_on_any_gpu_count(method, overlap, contiguous):
    """ZeRO-2 allocates its reduce bucket(s) at each backward's start, however few params train and on one GPU
    too; "auto" is transformers' hidden_size^2 (integrations/deepspeed.py trainer_config_finalize)."""
    from advisor.memory import estimate

    def phases(**ds):
        return estimate(ARCH, TrainConfig(method=method, seq_len=512, grad_ckpt=True, zero=2, overlap_comm=overlap,
                                          contiguous_gradients=contiguous, **ds)).phases

    auto, big = phases(), phases(reduce_bucket_size=500_000_000)
    h2 = ARCH.hidden_size**2
    expected = _ds2_bucket_bytes(500_000_000, overlap, contiguous) - _ds2_bucket_bytes(h2, overlap, contiguous)
    assert big.backward - auto.backward == pytest.approx(expected, rel=1e-4)
    assert (big.forward, big.optimizer) == (auto.forward, auto.optimizer)  # freed when the backward ends
    assert (expected > 0) == contiguous
    for gpus in (1, 4):
        cfg = TrainConfig(method=method, zero=2, gpus=gpus, overlap_comm=overlap, contiguous_gradients=contiguous)
        pb = param_bytes(ARCH, cfg)
        assert per_gpu_states(ARCH, cfg, pb, optimizer_bytes(ARCH, cfg, pb)).grad_buckets == pytest.approx(
            _ds2_bucket_bytes(h2, overlap, contiguous), rel=1e-4)


def test_zero3_gradient_bucket_is_held_through_every_phase():
    """ZeRO-3 allocates one reduce_bucket_size buffer when its optimizer is built (stage3.py) and keeps it."""
    from advisor.memory import estimate

    def phases(bucket):
        return estimate(ARCH, TrainConfig(method="lora", seq_len=512, zero=3, gpus=2, reduce_bucket_size=bucket)).phases

    small, big = phases(1_000_000), phases(101_000_000)
    for phase in ("forward", "backward", "optimizer"):
        assert getattr(big, phase) - getattr(small, phase) == pytest.approx(2 * 100_000_000, rel=1e-4)  # one bf16 buffer


# ---- what ZeRO-3 and FSDP cannot shard: quantized tensors that are not nn.Parameters ----
def _quant_state_bytes(state) -> int:
    """Every tensor a bitsandbytes QuantState holds (absmax, code, and the nested state's), as allocations."""
    from advisor.memory.states import rounded

    tensors = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
    return sum(rounded(t.numel() * t.element_size()) for t in tensors)


@pytest.mark.parametrize("double_quant", [True, False])
def test_bnb_quant_state_is_what_stays_whole(double_quant):
    """bitsandbytes keeps each 4-bit weight's QuantState on the module (Params4bit._quantize), not as a Parameter:
    ZeRO-3 and FSDP shard the packed weight and leave the state whole.  The oracle: real quantized weights of one
    Llama-3.2-1B layer, their QuantState tensors summed."""
    torch = pytest.importorskip("torch")
    bnbF = pytest.importorskip("bitsandbytes.functional")
    from advisor.models.params import layer_linears

    arch = resolve_model("llama-3.2-1b")
    cfg = TrainConfig(method="qlora", double_quant=double_quant)
    per_layer = 0
    for spec in layer_linears(arch):
        _, state = bnbF.quantize_4bit(torch.zeros(spec.out_features, spec.in_features, dtype=torch.bfloat16),
                                      blocksize=64, quant_type="nf4", compress_statistics=double_quant)
        per_layer += spec.per_layer * _quant_state_bytes(state)
    assert param_bytes(arch, cfg).not_parameters == arch.num_layers * per_layer


@pytest.mark.parametrize("quant", ["nf4", "gptq"])
@pytest.mark.parametrize("engine", [dict(zero=3), dict(fsdp=True)])
def test_sharding_leaves_what_is_not_a_parameter_whole(quant, engine):
    """From 2 to 4 GPUs a rank's resident parameters shrink by the sharded part only; a GPTQ base (every quantized
    tensor a buffer of its QuantLinear) keeps all of them on every rank; with the parameters offloaded, they stay."""
    arch = resolve_model("llama-2-7b")

    def resident(gpus, offload="none"):
        cfg = TrainConfig(method="qlora", quant_type=quant, gpus=gpus, offload=offload, **engine)
        pb = param_bytes(arch, cfg)
        return pb, per_gpu_states(arch, cfg, pb, optimizer_bytes(arch, cfg, pb)).params

    pb, two = resident(2)
    _, four = resident(4)
    # going from 2 to 4 GPUs frees a quarter of what is sharded: everything but the tensors that are not parameters
    # (whose size the test above checks against bitsandbytes itself); DeepSpeed first casts the fp32 adapters to 16 bits
    module = pb.total - (pb.trainable - 2 * pb.trainable_params if engine.get("zero") else 0)
    assert two - four == pytest.approx((module - pb.not_parameters) / 4, rel=1e-6)
    assert pb.not_parameters == (pb.quantized if quant == "gptq" else pb.not_parameters) > 0
    assert resident(2, "params")[1] == pb.not_parameters
