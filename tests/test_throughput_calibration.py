"""Calibration of tokens/s from a real verify run: stored with the memory figures, applied to later estimates of the
same setup (GPU, model family, method), and said so."""

import json

import pytest

from advisor.cli import main
from advisor.memory import TrainConfig, estimate
from advisor.models import resolve_model
from advisor.throughput import gpu_perf, throughput
from advisor.verify.calibration import CalibrationPoint, point_from_report, save_point


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_ADVISOR_DATA_DIR", str(tmp_path))
    return tmp_path


def test_a_real_run_stores_measured_over_estimated_speed():
    from advisor.report import VerifyReport

    arch, cfg = resolve_model("llama-3.2-1b"), TrainConfig(method="lora", micro_batch=2)
    predicted = estimate(arch, cfg)
    model = throughput(arch, cfg, predicted, 2, gpu_perf("H100 SXM")).tokens_per_s
    # step 1 (optimizer states, warm-up) is slow and left out; the later steps ran at 0.6, 0.5 and 0.7 x the model
    rates = [0.05 * model, 0.6 * model, 0.5 * model, 0.7 * model]
    events = [{"event": "step", "step": i + 1, "loss": 1.0, "seconds": 1.0, "tokens_per_s": rate,
               "peak_allocated_bytes": predicted.peak_allocated_bytes,
               "peak_reserved_bytes": predicted.peak_reserved_bytes} for i, rate in enumerate(rates)]
    report = VerifyReport.build(arch, cfg, "cuda", predicted, events)
    made = point_from_report(report, arch, {"gpu_name": "NVIDIA H100 80GB HBM3"})
    assert made.tokens_per_s_ratio == pytest.approx(0.6)  # the median of the later steps


def test_later_estimates_of_the_same_setup_use_it_and_say_so(capsys):
    args = ["estimate", "--json", "--model", "llama-3.2-1b", "--gpu", "4090", "--method", "lora", "--seq-len", "1024",
            "--dataset-tokens", "10M"]
    assert main([*args, "--no-calibration"]) == 0
    plain = json.loads(capsys.readouterr().out)["speed"]
    save_point(CalibrationPoint(gpu_name="RTX 4090", model_family="llama", method="lora", allocated_ratio=1.0,
                                reserved_over_allocated=1.0, tokens_per_s_ratio=0.5,
                                measured_at="2026-12-04T00:00:00+00:00"))
    assert main(args) == 0
    calibrated = json.loads(capsys.readouterr().out)["speed"]
    assert calibrated["tokens_per_s"] == pytest.approx(plain["tokens_per_s"] / 2)
    assert calibrated["wall_s"] == pytest.approx(plain["wall_s"] * 2)
    assert calibrated["calibrated"] and not plain["calibrated"]
    assert "calibrated" in calibrated["basis"] and "RTX 4090" in calibrated["basis"]
    # a plan over the same GPU and family says it too
    assert main(["plan", "--json", "--model", "llama-3.2-1b", "--gpu", "4090", "--method", "lora"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert any("tokens/s calibrated" in w for w in plan["warnings"])
    assert plan["chosen"]["speed"]["calibrated"]


def test_another_method_is_not_calibrated(capsys):
    save_point(CalibrationPoint(gpu_name="RTX 4090", model_family="llama", method="qlora", allocated_ratio=1.0,
                                reserved_over_allocated=1.0, tokens_per_s_ratio=0.5,
                                measured_at="2026-12-04T00:00:00+00:00"))
    assert main(["estimate", "--json", "--model", "llama-3.2-1b", "--gpu", "4090", "--method", "lora"]) == 0
    assert not json.loads(capsys.readouterr().out)["speed"]["calibrated"]
