"""The stacks on a real GPU: what FSDP and DeepSpeed added on one H200 (benchmarks/results/gpu-h200-2026-12-04c),
against the terms the estimate took from them.  The oracle is the card's own readings, committed with the
commands that made them; the estimate is re-run here from each case's flags."""

import gzip
import json
from pathlib import Path

import pytest

from advisor.core import resolve_model
from advisor.hardware import Hardware
from advisor.memory import TrainConfig, estimate
from advisor.memory.allocator import CachingAllocator
from advisor.memory.overheads import NCCL_FIRST_COMMUNICATOR_BYTES, NCCL_MORE_COMMUNICATOR_BYTES

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-h200-2026-12-04c"
GiB, MiB = 2**30, 2**20
H200 = Hardware(name="NVIDIA H200", memory_bytes=143_771 * MiB, compute_capability=(9, 0))


def _stages() -> dict[str, int]:
    rows = [json.loads(line) for line in (RESULTS / "context.jsonl").read_text().splitlines() if line.strip()]
    return {row["stage"]: row["outside_torch_bytes"] for row in rows}


def test_nccl_communicators_are_the_measured_ones():
    stages = _stages()
    first = stages["NCCL process group, world size 1 (init, eager with device_id)"] - stages["after empty_cache"]
    second = stages["a second group (new_group + all_reduce)"] - stages["all_gather + reduce_scatter"]
    assert first == pytest.approx(NCCL_FIRST_COMMUNICATOR_BYTES, rel=0.01)
    assert second == pytest.approx(NCCL_MORE_COMMUNICATOR_BYTES, rel=0.01)
    # collectives of other kinds on the same communicator add nothing
    assert stages["all_gather + reduce_scatter"] == stages["NCCL process group, world size 1 (init, eager with device_id)"]


def _jobs():
    """(model, flags, the config the run verified, checks by level) of every exported-job case run under FSDP or
    DeepSpeed on the H200."""
    for name in ("results.jsonl", "results-2.jsonl"):
        for line in (RESULTS / name).read_text().splitlines():
            case = json.loads(line)
            checks = {c["phase"]: c["measured_bytes"] for c in case["report"].get("checks", [])}
            if case["runner"] == "job" and "device" in checks:
                yield case["model"], case["flags"], TrainConfig.model_validate(case["report"]["config"]), checks


JOBS = list(_jobs())


def test_every_one_gpu_stack_run_is_read():
    stacks = {("zero" if cfg.zero else "fsdp" if cfg.fsdp else "none", cfg.method) for _, _, cfg, _ in JOBS}
    assert stacks == {("zero", "full"), ("zero", "lora"), ("fsdp", "full"), ("fsdp", "lora")}


@pytest.mark.parametrize("model, flags, cfg, measured", JOBS, ids=[" ".join(j[1][:2] + j[1][-5:-2]) for j in JOBS])
def test_one_gpu_stacks_device_peak_within_three_percent_and_inside_the_range(model, flags, cfg, measured):
    """Before the communicators and ZeRO-2's first-step cache these read -4.9 % to -17.6 % at the device
    level.  The ZeRO-2 full fine-tuning runs set the first-step cache's mechanism (overheads.py), so they are
    not held out; the LoRA and FSDP runs check only the communicators."""
    est = estimate(resolve_model(model), cfg, hardware=H200)
    low, high = est.peak_device_range_bytes
    assert est.peak_allocated_bytes == pytest.approx(measured["allocated"], rel=0.005)
    assert est.peak_device_bytes == pytest.approx(measured["device"], rel=0.03)
    assert low <= measured["device"] <= high


def _replay(events: list[list]) -> CachingAllocator:
    """The recorded alloc / free order through the allocator model; a run of segment frees is one
    empty_cache() (DeepSpeed calls it once while it starts)."""
    allocator, live, freeing = CachingAllocator(), {}, False
    for code, addr, size, *_stream in events:
        if code == "a":
            live[addr] = allocator.malloc(size)
        elif code == "f" and addr in live:
            allocator.free(live.pop(addr))
        elif code == "S" and not freeing:
            allocator.empty_cache()
        freeing = code == "S"
    return allocator


def test_the_allocator_replay_of_a_deepspeed_run_reads_its_reserved_peak():
    """Qwen2.5-0.5B full FT under ZeRO-2: the card reserved 13.486 GiB for 11.106 allocated; the replay of the
    same allocations (one stream modelled; overlap_comm reduces on a second one) must land within 1 %."""
    with gzip.open(RESULTS / "zero2-traces.json.gz", "rt") as handle:
        runs = {run["model"]: run for run in json.load(handle)["runs"]}
    run = runs["qwen2.5-0.5b"]
    replay = _replay(run["events"])
    assert replay.peak_allocated == pytest.approx(run["measured_allocated_bytes"], rel=0.001)
    assert replay.peak_reserved == pytest.approx(run["measured_reserved_bytes"], rel=0.01)
    assert run["measured_reserved_bytes"] - run["measured_allocated_bytes"] > 2 * GiB  # the first step's cache


def test_empty_cache_returns_whole_free_segments_only():
    allocator = CachingAllocator()
    kept, freed = allocator.malloc(30 << 20), allocator.malloc(50 << 20)
    part = allocator.malloc(3 << 20)  # a 20 MiB segment, split: stays while one block lives in it
    other = allocator.malloc(3 << 20)
    allocator.free(freed)
    allocator.free(part)
    before = allocator.reserved
    allocator.empty_cache()
    assert before - allocator.reserved == 50 << 20 and allocator.allocated == (30 << 20) + (3 << 20)
    allocator.free(other)
    allocator.empty_cache()
    assert allocator.reserved == 30 << 20 and kept.allocated


def test_qlora_without_checkpointing_reads_what_the_card_allocated():
    """Llama-3.2-3B QLoRA at 1024 tokens without checkpointing: the H200 allocated 7.121 GiB where the estimate
    and its CPU oracle read 7.773 (+9.2 %) until PEFT's bitsandbytes branch was modelled as it runs on a GPU: under
    autocast lora_A keeps the shared 16-bit input, no copy per adapted module (TrainConfig.peft_casts_lora_input)."""
    for line in (RESULTS / "results.jsonl").read_text().splitlines():
        case = json.loads(line)
        if case["model"] == "llama-3.2-3b" and "qlora" in case["flags"]:
            measured = {c["phase"]: c["measured_bytes"] for c in case["report"]["checks"]}["allocated"]
            est = estimate(resolve_model(case["model"]), TrainConfig.model_validate(case["report"]["config"]),
                           hardware=H200)
            assert est.peak_allocated_bytes == pytest.approx(measured, rel=0.01)
            return
    raise AssertionError("the QLoRA case is not in the results")


def test_the_dry_run_asks_about_autocast_as_the_gpu_would():
    import torch

    from advisor.verify.dryrun import _autocast_asked_as_on_gpu

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled() is False  # without a device the question is about CUDA
        with _autocast_asked_as_on_gpu():
            assert torch.is_autocast_enabled() is True and torch.is_autocast_enabled("cuda") is False
        assert torch.is_autocast_enabled() is False
    with _autocast_asked_as_on_gpu():
        assert torch.is_autocast_enabled() is False
