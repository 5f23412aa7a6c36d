"""Calibration points: stored atomically, applied to matching estimates (and said so), corrupt stores ignored."""

import json

import pytest

from advisor.cli import main
from advisor.hardware import hardware_for
from advisor.memory import TrainConfig, estimate
from advisor.models import resolve_model
from advisor.verify.calibration import CalibrationPoint, find_point, load_points, point_from_report, save_point


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_ADVISOR_DATA_DIR", str(tmp_path))
    return tmp_path


def point(**overrides):
    values = dict(gpu_name="RTX 4090", model_family="llama", method="qlora", allocated_ratio=1.02,
                  reserved_over_allocated=1.10, context_bytes=600 * 2**20, measured_at="2026-11-28T00:00:00+00:00")
    return CalibrationPoint(**{**values, **overrides})


def test_saved_point_is_found_for_the_same_setup_only(data_dir):
    save_point(point())
    save_point(point(measured_at="2026-11-29T00:00:00+00:00", allocated_ratio=1.05))
    found, problem = find_point("RTX 4090", "llama", "qlora")
    assert problem is None and found.allocated_ratio == 1.05  # the newest
    assert find_point("RTX 4090", "llama", "lora")[0] is None
    assert find_point("H100 SXM", "llama", "qlora")[0] is None
    assert find_point("NVIDIA GeForce RTX 4090", "llama", "qlora")[0] is not None
    assert not list(data_dir.glob(".calibration-*"))  # no temp file left behind


def test_estimate_applies_it_and_says_so(data_dir, capsys):
    arch, cfg = resolve_model("llama-3.1-8b"), TrainConfig(method="qlora", grad_ckpt=True)
    plain = estimate(arch, cfg)
    calibrated = estimate(arch, cfg, calibration=point())
    assert calibrated.peak_allocated_bytes == int((plain.peak_allocated_bytes) * 1.02)
    assert calibrated.peak_reserved_bytes == int(calibrated.peak_allocated_bytes * 1.10)
    assert any("calibrated from a real run" in note for note in calibrated.notes)
    save_point(point())
    assert main(["estimate", "--json", "--model", "llama-3.1-8b", "--method", "qlora", "--gpu", "4090"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["calibration"]["gpu_name"] == "RTX 4090"
    assert main(["estimate", "--json", "--model", "llama-3.1-8b", "--method", "qlora", "--gpu", "4090",
                 "--no-calibration"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] is None


def test_corrupt_store_is_reported_and_ignored(data_dir, capsys):
    (data_dir / "calibration.json").write_text("{not json")
    points, problem = load_points()
    assert points == [] and "unreadable" in problem
    assert main(["estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--gpu", "4090"]) == 0
    captured = capsys.readouterr()
    assert "unreadable" in captured.err and "phase peaks" in captured.out
    save_point(point())  # a new point replaces the unreadable store instead of failing
    assert find_point("RTX 4090", "llama", "qlora")[0] is not None


def test_point_from_a_real_run_report():
    from advisor.report import VerifyReport

    arch, cfg = resolve_model("llama-3.2-1b"), TrainConfig(method="lora")
    predicted = estimate(arch, cfg)
    events = [{"event": "step", "step": i, "loss": 1.0, "seconds": 1.0, "tokens_per_s": 1.0,
               "peak_allocated_bytes": int(predicted.peak_allocated_bytes * 1.01),
               "peak_reserved_bytes": int(predicted.peak_allocated_bytes * 1.08)} for i in (1, 2)]
    events.append({"event": "sample", "used_bytes": {"0": int(predicted.peak_allocated_bytes * 1.08) + 700 * 2**20}})
    report = VerifyReport.build(arch, cfg, "cuda", predicted, events)
    made = point_from_report(report, arch, {"gpu_name": "NVIDIA H100 80GB HBM3"})
    assert made.gpu_name == "H100 SXM"  # NVML's name, stored under the catalog's
    assert made.allocated_ratio == pytest.approx(1.01, rel=1e-3)
    assert made.reserved_over_allocated == pytest.approx(1.08 / 1.01, rel=1e-3)
    assert made.context_bytes == pytest.approx(700 * 2**20, rel=1e-3)


def _stack_run(cfg, device_over_reserved):
    from advisor.report import VerifyReport

    arch = resolve_model("llama-3.2-1b")
    predicted = estimate(arch, cfg)
    reserved = int(predicted.peak_allocated_bytes * 1.08)
    events = [{"event": "step", "step": i, "loss": 1.0, "seconds": 1.0, "tokens_per_s": 1.0,
               "peak_allocated_bytes": predicted.peak_allocated_bytes, "peak_reserved_bytes": reserved} for i in (1, 2)]
    events.append({"event": "sample", "used_bytes": {"0": reserved + device_over_reserved}})
    report = VerifyReport.build(arch, cfg, "cuda", predicted, events)
    return point_from_report(report, arch, {"gpu_name": "NVIDIA H200"})


def test_a_stacks_communicators_and_deepspeeds_cache_are_not_calibrated_into_other_plans():
    """Points apply by GPU, family and method, whatever the stack.  On the H200 an FSDP job read 1.294 GiB
    outside the allocator where a plain one read 0.749: the difference is NCCL's communicator, which the
    estimate adds to FSDP plans itself; the stored context is the plain one.  A DeepSpeed run stores nothing:
    its reserved level holds its flat partitions' first-step cache."""
    fsdp = _stack_run(TrainConfig(method="lora", fsdp=True), int(1.294 * 2**30))
    assert fsdp.context_bytes == pytest.approx(int(1.294 * 2**30) - 556 * 2**20)
    assert _stack_run(TrainConfig(method="lora", zero=2), int(1.675 * 2**30)) is None
    plain = _stack_run(TrainConfig(method="lora"), int(0.749 * 2**30))
    assert plain.context_bytes == int(0.749 * 2**30)


def test_plan_and_limits_apply_it_like_the_estimate(data_dir, capsys):
    """The plan is an estimate too: with a stored point its numbers are the calibrated estimate's."""
    from advisor.planner import Plan

    # the method pinned: the point is stored for the plain plan's method, which a faster unpinned choice may leave
    args = ["plan", "--json", "--model", "llama-2-7b", "--gpu", "4090", "--method", "qlora"]
    assert main([*args, "--no-calibration"]) == 0
    plain = Plan.model_validate(json.loads(capsys.readouterr().out)["plan"])
    save_point(point(method=plain.chosen.config.method, allocated_ratio=1.25, context_bytes=2 * 2**30))
    assert main(args) == 0
    calibrated = Plan.model_validate(json.loads(capsys.readouterr().out)["plan"])
    assert any("calibrated from real runs" in w for w in calibrated.warnings)
    cfg = calibrated.chosen.config
    expected = estimate(resolve_model("llama-2-7b"), cfg, hardware_for("4090"),
                        calibration=find_point("RTX 4090", "llama", cfg.method)[0])
    assert calibrated.chosen.need_bytes == expected.peak_device_bytes == calibrated.estimate.peak_device_bytes
    # the chosen config's limits come from the calibrated numbers: a larger measured overhead, a shorter limit
    from advisor.limits import largest_fitting

    arch, hw = resolve_model("llama-2-7b"), hardware_for("4090")
    uncalibrated = largest_fitting(arch, cfg, hw, "seq_len").value
    assert calibrated.chosen_limits.longest_seq_len == largest_fitting(
        arch, cfg, hw, "seq_len", calibration=find_point("RTX 4090", "llama", cfg.method)[0]).value < uncalibrated
    assert main(["limits", "--json", "--model", "llama-2-7b", "--gpu", "4090", "--method", cfg.method]) == 0
    assert any("calibrated" in note for note in json.loads(capsys.readouterr().out)["notes"])


def test_a_plain_runs_point_keeps_deepspeeds_first_step_cache():
    """A point from a run without DeepSpeed scales allocated and sets reserved by its own ratio; a ZeRO-2 plan
    keeps the cache its flat partitions leave beside the first step (overheads.zero_first_step_cache), which the
    plain run could not see: its reserved level stays at least that."""
    arch = resolve_model("qwen2.5-0.5b")
    cfg = TrainConfig(method="full", zero=2, seq_len=1024, grad_ckpt=True)
    plain = estimate(arch, cfg)
    calibrated = estimate(arch, cfg, calibration=point(method="full", allocated_ratio=1.0, reserved_over_allocated=1.03))
    assert plain.peak_reserved_bytes - plain.peak_allocated_bytes > 2 * 2**30
    assert calibrated.peak_reserved_bytes == plain.peak_reserved_bytes
