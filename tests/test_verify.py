"""The verification run: a child process that streams events; the dry run when there is no GPU."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from advisor.memory import TrainConfig  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.verify.runner import VerifyRun, run_to_end  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 688, "vocab_size": 1024, "max_position_embeddings": 512}


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def test_dry_run_in_the_child_matches_the_estimate(tiny):
    proc = subprocess.run([sys.executable, "-m", "advisor", "verify", "--json", "--dry-run", "--model", str(tiny),
                           "--seq-len", "256", "--method", "lora"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["phase"]: c for c in report["checks"]}
    assert report["mode"] == "dry" and list(checks) == ["forward", "backward", "optimizer", "allocated", "reserved"]
    for phase in ("forward", "backward", "optimizer", "allocated"):
        assert abs(checks[phase]["error_percent"]) <= 2.0
    # the replay through the caching allocator: what torch.cuda.memory_reserved() would read
    assert checks["reserved"]["measured_bytes"] >= checks["allocated"]["measured_bytes"]


def test_cpu_smoke_run_trains(tiny):
    arch = resolve_model(str(tiny))
    events = run_to_end(arch, TrainConfig(method="lora", seq_len=64), "cpu", steps=3)
    steps = [e for e in events if e["event"] == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(s["loss"] == s["loss"] and s["loss"] > 0 for s in steps)  # finite, positive
    assert events[-1]["event"] == "result"


def test_unpacked_data_trains_each_step_at_its_own_length(tiny):
    """--lengths variable: every step is padded to its own batch's longest sequence, the last at the cutoff,
    and the dry run traces the same lengths (so a real run and its replay can be compared step by step)."""
    arch = resolve_model(str(tiny))
    cfg = TrainConfig(method="lora", seq_len=64, lengths="variable")
    steps = [e for e in run_to_end(arch, cfg, "cpu", steps=5) if e["event"] == "step"]
    lengths = [s["seq_len"] for s in steps]
    assert lengths == cfg.step_lengths(5) and lengths[-1] == 64 and len(set(lengths)) > 1
    assert all(8 <= n <= 64 for n in lengths)
    fixed = [e for e in run_to_end(arch, TrainConfig(method="lora", seq_len=64), "cpu", steps=3) if e["event"] == "step"]
    assert [s["seq_len"] for s in fixed] == [64, 64, 64]


def test_cancel_ends_the_child_quickly(tiny):
    arch = resolve_model(str(tiny)).model_copy(update={"num_layers": 8, "hidden_size": 512, "intermediate_size": 2048})
    run = VerifyRun(arch, TrainConfig(method="full", seq_len=512, micro_batch=4), "cpu", steps=10_000)
    events = run.events()
    assert next(events)["event"] == "start"
    started = time.perf_counter()
    run.cancel()
    assert time.perf_counter() - started < 3.0
    rest = list(events)
    assert rest and rest[-1]["event"] == "cancelled"


def test_cuda_without_a_gpu_is_an_error_event_not_a_crash(tiny):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    events = run_to_end(resolve_model(str(tiny)), TrainConfig(method="lora", seq_len=64), "cuda", steps=1)
    assert events[-1]["event"] == "error" and "CUDA" in events[-1]["message"]


def test_verify_parent_never_imports_torch(tiny):
    code = ("import sys, io, contextlib; from advisor.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): rc = main(['verify', '--json', '--dry-run', '--model', {str(tiny)!r}, '--seq-len', '64'])\n"
            "assert rc == 0, rc; assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_steps_of_varying_length_keep_the_tensors_and_grow_the_allocator_cache(tiny):
    """Unpacked data: one traced step per length.  The last step's live tensors and allocated peak are the
    fixed shape's (tensors do not remember earlier steps); the allocator's cache does."""
    from advisor.verify.dryrun import run_dry

    arch = resolve_model(str(tiny))
    cfg = TrainConfig(method="lora", seq_len=256, micro_batch=2, attn="sdpa")
    fixed = run_dry(arch, cfg, workspace_bytes=8 * 2**20)
    varying = run_dry(arch, cfg, workspace_bytes=8 * 2**20, seq_lens=[64, 200, 96, 256])
    assert varying.phase_peaks == fixed.phase_peaks
    assert varying.replayed_peak_allocated == fixed.replayed_peak_allocated
    assert varying.replayed_reserved >= varying.replayed_peak_allocated


def test_a_deepspeed_plans_dry_run_is_shown_but_not_judged(tiny, capsys):
    """The dry run traces the bare step: DeepSpeed's fp32 partitions are not in it, so its numbers would read as
    the estimate's error (+70 % and more on this model).  They are shown, marked, and the verdict judges none."""
    from advisor.cli import main

    assert main(["verify", "--dry-run", "--json", "--model", str(tiny), "--method", "full", "--zero", "2",
                 "--seq-len", "64", "--gpu", "h200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checks"] and not any(check["judged"] for check in report["checks"])
    assert all("DeepSpeed" in check["not_judged_because"] for check in report["checks"])


@pytest.mark.parametrize("stack", [["--zero", "2"], ["--fsdp"], ["--gpus", "2"]])
def test_the_bare_step_refuses_a_stack_it_does_not_run(tiny, capsys, stack):
    from advisor.cli import main

    code = main(["verify", "--model", str(tiny), "--method", "lora", "--gpu", "h200", "--device", "cuda",
                 "--runner", "step", *stack])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--runner job" in err
