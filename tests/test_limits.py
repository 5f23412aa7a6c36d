"""`lora-advisor limits`: the longest sequence and the largest micro batch that fit.  The search is checked
against a linear scan and against the detailed estimate (not the fast path it searches with)."""

import json
import sys

import pytest

from advisor.cli import main
from advisor.hardware import hardware_for
from advisor.limits import largest_fitting
from advisor.memory import TrainConfig, estimate
from advisor.models import resolve_model
from advisor.report import LimitsReport

CASES = [
    ("llama-3.1-8b", dict(method="qlora", grad_ckpt=True), "4090"),
    ("llama-3.2-1b", dict(method="lora"), "l4"),
    ("qwen2.5-7b", dict(method="lora", grad_ckpt=True, seq_len=4096), "a100-80gb"),
    ("gemma-2-2b", dict(method="full", grad_ckpt=True, seq_len=1024), "a100-40gb"),
]


def _device(arch, cfg, hw, **update):
    return estimate(arch, cfg.model_copy(update=update), hw).peak_device_bytes


@pytest.mark.parametrize("model, fields, gpu", CASES)
@pytest.mark.parametrize("field", ["seq_len", "micro_batch"])
def test_the_answer_is_the_boundary(model, fields, gpu, field):
    arch, hw, cfg = resolve_model(model), hardware_for(gpu), TrainConfig(**fields)
    limit = largest_fitting(arch, cfg, hw, field)
    assert limit.value is not None and not limit.capped
    assert _device(arch, cfg, hw, **{field: limit.value}) <= hw.usable_bytes < _device(arch, cfg, hw, **{field: limit.value + 1})
    assert limit.need_bytes == _device(arch, cfg, hw, **{field: limit.value})
    assert limit.power_of_two <= limit.value < 2 * limit.power_of_two
    assert limit.power_of_two & (limit.power_of_two - 1) == 0


def test_micro_batch_matches_a_linear_scan():
    arch, hw = resolve_model("llama-3.1-8b"), hardware_for("4090")
    cfg = TrainConfig(method="qlora", grad_ckpt=True, seq_len=1024)
    scan = 0
    while _device(arch, cfg, hw, micro_batch=scan + 1) <= hw.usable_bytes:
        scan += 1
    assert scan > 1 and largest_fitting(arch, cfg, hw, "micro_batch").value == scan


def test_a_smaller_card_never_allows_more():
    arch, cfg = resolve_model("llama-3.1-8b"), TrainConfig(method="qlora", grad_ckpt=True)
    values = [largest_fitting(arch, cfg, hardware_for(vram=vram), "seq_len").value for vram in ("16GiB", "24GiB", "48GiB")]
    assert values[0] < values[1] < values[2]


def test_nothing_fits_says_what_one_needs():
    arch, hw = resolve_model("llama-3.1-8b"), hardware_for("4090")
    limit = largest_fitting(arch, TrainConfig(method="full"), hw, "seq_len")
    assert limit.value is None and limit.next_need_bytes > hw.usable_bytes


def test_the_ceiling_is_reported_not_hidden():
    arch, hw = resolve_model("llama-3.2-1b"), hardware_for(vram="8000GiB")
    limit = largest_fitting(arch, TrainConfig(method="qlora", grad_ckpt=True, seq_len=8), hw, "micro_batch")
    assert limit.capped and limit.next_need_bytes is None


def test_cli_json_is_one_valid_document(capsys):
    assert main(["limits", "--json", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt", "--gpu", "4090"]) == 0
    out = capsys.readouterr().out
    report = LimitsReport.model_validate_json(out)
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and report.capacity_bytes == 24 * 2**30
    assert report.longest_seq_len.value > 2048 and report.largest_micro_batch.value >= 2


def test_cli_text_and_errors(capsys):
    assert main(["limits", "--model", "llama-3.1-8b", "--method", "full", "--gpu", "4090"]) == 0
    assert "nothing fits" in capsys.readouterr().out
    for bad in (["--vram", "lots"], ["--gpu", "4090", "--rank", "8,16"], ["--gpu", "4090", "--seq-len", "0"]):
        assert main(["limits", "--model", "llama-3.1-8b", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, bad


def test_without_a_gpu_it_asks_for_one(monkeypatch, capsys):
    from tests.fake_pynvml import make_fake_pynvml

    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([]))
    assert main(["limits", "--model", "llama-3.2-1b"]) == 2
    assert "--gpu" in capsys.readouterr().err


def test_the_detected_gpu_is_the_default(monkeypatch, capsys):
    from tests.fake_pynvml import FakeGpu, GiB, make_fake_pynvml

    monkeypatch.setitem(sys.modules, "pynvml", make_fake_pynvml([FakeGpu(total=24 * GiB, used=4 * GiB)]))
    assert main(["limits", "--json", "--model", "llama-3.2-1b"]) == 0
    report = LimitsReport.model_validate_json(capsys.readouterr().out)
    assert report.capacity_bytes == 20 * GiB and "4090" in report.gpu
