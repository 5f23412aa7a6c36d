"""Properties any memory model must have, over many random configurations."""

from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.memory import TrainConfig, estimate
from advisor.models import resolve_model

MODELS = ["llama-3.1-8b", "qwen2.5-7b", "gemma-2-9b", "llama-3.2-1b", "phi-3-mini-4k", "qwen3-4b", "mixtral-8x7b-v0.1"]

configs = st.fixed_dictionaries({
    "method": st.sampled_from(["full", "lora", "qlora"]),
    "rank": st.sampled_from([4, 8, 16, 64]),
    "targets": st.sampled_from([("all-linear",), ("attention",)]),
    "seq_len": st.sampled_from([128, 512, 2048, 4096]),
    "micro_batch": st.integers(1, 8),
    "grad_ckpt": st.booleans(),
    "optimizer": st.sampled_from(["adamw", "adamw_8bit", "sgd", "adafactor"]),
    "attn": st.sampled_from(["auto", "flash", "eager"]),
})


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(MODELS), settings_=configs, extra=st.integers(1, 4096))
def test_more_tokens_never_need_less_memory(name, settings_, extra):
    arch = resolve_model(name)
    a = estimate(arch, TrainConfig(**settings_))
    b = estimate(arch, TrainConfig(**{**settings_, "seq_len": settings_["seq_len"] + extra}))
    c = estimate(arch, TrainConfig(**{**settings_, "micro_batch": settings_["micro_batch"] + 1}))
    for phase in ("forward", "backward", "optimizer"):
        assert getattr(b.phases, phase) >= getattr(a.phases, phase)
        assert getattr(c.phases, phase) >= getattr(a.phases, phase)
    assert b.peak_device_bytes >= a.peak_device_bytes


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(MODELS), settings_=configs)
def test_checkpointing_never_needs_more(name, settings_):
    arch = resolve_model(name)
    off = estimate(arch, TrainConfig(**{**settings_, "grad_ckpt": False}))
    on = estimate(arch, TrainConfig(**{**settings_, "grad_ckpt": True}))
    assert on.peak_allocated_bytes <= off.peak_allocated_bytes
    assert on.phases.forward <= off.phases.forward


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(MODELS), rank=st.sampled_from([8, 16, 64]))
def test_qlora_weights_below_lora_below_full(name, rank):
    arch = resolve_model(name)

    def weight_bytes(method):
        est = estimate(arch, TrainConfig(method=method, rank=rank))
        return sum(est.component(n).bytes for n in ("weights", "quantized"))

    assert weight_bytes("qlora") < weight_bytes("lora") <= weight_bytes("full")
    full = estimate(arch, TrainConfig(method="full"))
    lora = estimate(arch, TrainConfig(method="lora", rank=rank))
    assert lora.trainable_params < full.trainable_params
    assert lora.component("optimizer_states").bytes < full.component("optimizer_states").bytes


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(MODELS), method=st.sampled_from(["full", "lora"]), gpus=st.integers(1, 63),
       offload=st.sampled_from(["none", "optimizer"]))
def test_zero3_per_gpu_shrinks_with_more_gpus(name, method, gpus, offload):
    arch = resolve_model(name)
    few = estimate(arch, TrainConfig(method=method, gpus=gpus, zero=3, offload=offload))
    more = estimate(arch, TrainConfig(method=method, gpus=gpus + 1, zero=3, offload=offload))
    assert more.phases.optimizer <= few.phases.optimizer
    assert more.component("weights").bytes <= few.component("weights").bytes
    # activations are per GPU: sharding never shrinks them
    assert more.component("activations").bytes == few.component("activations").bytes


def test_three_levels_are_ordered():
    est = estimate(resolve_model("llama-3.1-8b"), TrainConfig(method="qlora", grad_ckpt=True))
    assert est.phases.backward <= est.peak_allocated_bytes <= est.peak_reserved_bytes <= est.peak_device_bytes
