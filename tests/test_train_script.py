"""The exported train.py is the real job: it trains on CPU, launches through accelerate, loads under ZeRO-3,
follows the plan's precision and loss, and says how to start it.  The verify launcher reads its events."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from advisor.export import ExportContext, render_all  # noqa: E402
from advisor.memory import TrainConfig, estimate  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.verify.launch import ExportedRun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 128}
STEP_KEYS = {"event", "step", "loss", "seconds", "tokens_per_s"}
CUDA_KEYS = {"allocated_bytes", "reserved_bytes", "peak_allocated_bytes", "peak_reserved_bytes"}


@pytest.fixture()
def tiny_dir(tmp_path):
    path = tmp_path / "tiny-llama"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TINY))
    return path


def export(tiny_dir: Path, out: Path, **config) -> Path:
    """train.py (and its companion files) for the tiny model, written as `lora-advisor export` would."""
    arch = resolve_model(str(tiny_dir / "config.json"))
    cfg = TrainConfig(**{"method": "lora", "precision": "fp32", "seq_len": 32, "micro_batch": 2, **config})
    ctx = ExportContext(arch=arch, cfg=cfg, estimate=estimate(arch, cfg), model_id=str(tiny_dir),
                        effective_batch=cfg.micro_batch * cfg.gpus)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all(ctx, ["peft-trl"]).items():
        (out / name).write_text(text)
    return out


def run(args, cwd, timeout=240, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **env})


def json_lines(stdout: str, kind: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.startswith('{"event"'):
            event = json.loads(line)
            if event["event"] == kind:
                events.append(event)
    return events


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"exported_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_gpu_script_trains_on_cpu(tiny_dir, tmp_path):
    out = export(tiny_dir, tmp_path / "one")
    proc = run(["train.py", "--synthetic", "--random-init", "--max-steps", "2", "--cpu", "--output-dir",
                str(tmp_path / "o")], cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json_lines(proc.stdout, "step")
    assert [s["step"] for s in steps] == [1, 2]
    for step in steps:
        assert set(step) == STEP_KEYS  # no CUDA numbers without CUDA
        assert math.isfinite(step["loss"]) and step["loss"] > 0 and step["seconds"] > 0
    assert json_lines(proc.stdout, "start")[0]["world_size"] == 1


def test_an_unpacked_plan_trains_varying_lengths_and_a_fixed_plan_pads_to_seq_len(tiny_dir, tmp_path):
    """The batch shapes the plan assumed: LENGTHS = 'variable' pads each batch to its longest row (the
    synthetic rows vary, the last at SEQ_LEN); 'fixed' pads every batch to SEQ_LEN through TRL's
    pad_to_multiple_of."""
    unpacked = load_script(export(tiny_dir, tmp_path / "unpacked", lengths="variable") / "train.py")
    rows = unpacked.synthetic_dataset(256, 6)["input_ids"]
    lengths = [len(row) for row in rows]
    assert lengths[-1] == 32 and len(set(lengths)) > 1 and min(lengths) >= 4
    assert unpacked.training_args(use_cpu=True).pad_to_multiple_of is None
    fixed = load_script(export(tiny_dir, tmp_path / "fixed") / "train.py")
    assert {len(row) for row in fixed.synthetic_dataset(256, 6)["input_ids"]} == {32}
    assert fixed.training_args(use_cpu=True).pad_to_multiple_of == 32
    proc = run(["train.py", "--synthetic", "--random-init", "--max-steps", "2", "--cpu", "--output-dir",
                str(tmp_path / "o")], cwd=tmp_path / "unpacked")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s["step"] for s in json_lines(proc.stdout, "step")] == [1, 2]


def test_two_processes_through_accelerate_and_the_verify_launcher(tiny_dir, tmp_path):
    """DDP plan for 2 GPUs: `accelerate launch --config_file accelerate.yaml` starts 2 gloo ranks on the CPU
    (the script's --cpu), and ExportedRun reads rank 0's events and ends with a result."""
    pytest.importorskip("accelerate")
    out = export(tiny_dir, tmp_path / "ddp", gpus=2, micro_batch=1)
    assert (out / "accelerate.yaml").exists()
    run_ = ExportedRun(out, gpus=2, steps=2, extra=("--cpu",))
    assert run_.command[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    events = list(run_.events())
    kinds = [e["event"] for e in events if e["event"] != "sample"]
    assert kinds == ["start", "step", "step", "result"], run_.stderr_tail
    assert events[0]["world_size"] == 2  # two ranks, and only rank 0 prints
    assert events[-1]["steps"] == 2 and events[-1]["mode"] == "cpu"

    from advisor.report import VerifyReport

    arch = resolve_model(str(tiny_dir / "config.json"))
    cfg = TrainConfig(method="lora", precision="fp32", seq_len=32, gpus=2)
    report = VerifyReport.build(arch, cfg, "cpu", estimate(arch, cfg), events)
    assert len(report.steps) == 2 and report.error is None and report.oom is None


DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("train", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
from transformers.integrations import is_deepspeed_zero3_enabled

class Loaded(Exception):
    pass

def record(*args, **kwargs):  # stands in for the load: what would DeepSpeed see now?
    print(json.dumps({"zero3_at_load": is_deepspeed_zero3_enabled()}))
    raise Loaded

script.AutoModelForCausalLM.from_config = script.AutoModelForCausalLM.from_pretrained = record
for flags in (["--synthetic", "--random-init"], ["--dataset", "unused"]):  # from_config, from_pretrained
    try:
        script.main([*flags, *sys.argv[2:]])
    except Loaded:
        pass
"""


def test_zero3_is_on_when_the_model_loads(tiny_dir, tmp_path):
    """Trainer arguments before the model: transformers' HfDeepSpeedConfig is alive at load time, so
    from_pretrained / from_config run under zero.Init.  ds_config.json is found from another cwd."""
    pytest.importorskip("deepspeed")
    out = export(tiny_dir, tmp_path / "z3", gpus=4, zero=3, micro_batch=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = run([str(driver), str(out / "train.py"), "--max-steps", "1", "--cpu"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"zero3')]
    assert seen == [{"zero3_at_load": True}] * 2


def test_header_and_help_give_the_launch_command(tiny_dir, tmp_path, capsys):
    one = (export(tiny_dir, tmp_path / "one") / "train.py").read_text()
    assert "    python train.py --dataset NAME_OR_PATH" in one and "accelerate launch" not in one
    four = export(tiny_dir, tmp_path / "four", gpus=4, zero=3, micro_batch=1)
    text = (four / "train.py").read_text()
    assert "    accelerate launch --config_file accelerate.yaml train.py --dataset NAME_OR_PATH" in text
    assert "deepspeed" in text.split('"""')[1]  # named as a dependency
    assert {p.name for p in four.iterdir()} == {"train.py", "accelerate.yaml", "ds_config.json"}
    script = load_script(four / "train.py")
    with pytest.raises(SystemExit) as done:
        script.parse_args(["--help"])
    assert done.value.code == 0
    assert "accelerate launch --config_file accelerate.yaml train.py --synthetic" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        script.parse_args(["--cpu"])  # no data named: one line with the command
    assert done.value.code == 2
    assert "accelerate launch --config_file accelerate.yaml train.py --dataset" in capsys.readouterr().err


def test_precision_follows_the_plan(tiny_dir, tmp_path):
    """SFTConfig defaults to bf16=True: pure-bf16 full fine-tuning must say bf16=False (no autocast), and
    mixed precision must load fp32 weights and autocast."""
    pure = load_script(export(tiny_dir, tmp_path / "pure", method="full", precision="bf16") / "train.py")
    args = pure.training_args(str(tmp_path / "o"), use_cpu=True)
    assert args.bf16 is False and args.fp16 is False and str(pure.DTYPE) == "torch.bfloat16"
    assert pure.lora_config() is None and args.deepspeed is None
    mixed = load_script(export(tiny_dir, tmp_path / "mixed", method="full", precision="bf16",
                               master_weights=True) / "train.py")
    args = mixed.training_args(str(tmp_path / "o"), use_cpu=True)
    assert args.bf16 is True and str(mixed.DTYPE) == "torch.float32"
    zero3 = load_script(export(tiny_dir, tmp_path / "z", gpus=4, zero=3, micro_batch=1) / "train.py")
    assert zero3.HERE == (tmp_path / "z").resolve()


def test_standard_loss_is_the_models_own_and_chunked_is_trls(tiny_dir, tmp_path):
    standard = load_script(export(tiny_dir, tmp_path / "std") / "train.py")
    # the plan's standard loss is transformers' (full fp32 logits), not TRL's chunked one
    assert issubclass(standard.TRAINER, standard.SFTTrainer)
    assert standard.TRAINER.compute_loss is not standard.SFTTrainer.compute_loss
    assert standard.training_args(str(tmp_path / "o"), use_cpu=True).use_liger_kernel is False

    chunked = load_script(export(tiny_dir, tmp_path / "chunked", loss="chunked") / "train.py")
    # the chunked plan trains with TRL's own tiled loss (never the full logits), and no extra Liger kernels
    assert chunked.TRAINER is chunked.SFTTrainer
    assert chunked.training_args(str(tmp_path / "o"), use_cpu=True).use_liger_kernel is False
    chunked.require_chunked_loss()  # this TRL has the fused LM head: no exit


def test_no_gpu_is_an_error_event_not_a_crash(tiny_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    events = list(ExportedRun(export(tiny_dir, tmp_path / "one"), gpus=1, steps=1).events())
    assert events[-1]["event"] == "error" and "no CUDA GPU" in events[-1]["message"]
    assert "train.py --synthetic" in events[-1]["hint"]


def test_a_failed_launch_names_the_trainings_exception_not_torchruns_banner(tiny_dir, tmp_path):
    """Under accelerate launch (torchrun) a failed job's stderr ends with a banner of '=' and a summary that
    only says the child failed; the error event carries the exception the training process raised."""
    pytest.importorskip("accelerate")
    out = export(tiny_dir, tmp_path / "ddp", gpus=2, micro_batch=1)
    (out / "train.py").write_text("import sys\nraise ValueError('the real reason, from rank ' + '0')\n")
    events = list(ExportedRun(out, gpus=2, steps=1, extra=("--cpu",)).events())
    assert events[-1]["event"] == "error", events[-1]
    assert events[-1]["message"].endswith("exited with code 1: ValueError: the real reason, from rank 0")


def test_the_failure_line_of_a_torchrun_transcript():
    from advisor.verify.launch import failure_line

    transcript = """[rank0]: Traceback (most recent call last):
[rank0]:   File "train.py", line 9, in <module>
[rank0]: deepspeed.runtime.zero.utils.ZeRORuntimeException: stage 3 needs a supported optimizer
E1204 17:20:01.123000 99 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
""".splitlines(keepends=True)
    assert failure_line(transcript) == ("deepspeed.runtime.zero.utils.ZeRORuntimeException: stage 3 needs a "
                                        "supported optimizer")
    assert failure_line(["====\n", "killed by the kernel\n", "----\n"]) == "killed by the kernel"
    assert failure_line(["\n", "=====\n"]) == "no output"


def test_verify_launcher_imports_no_torch():
    code = "import sys, advisor.verify.launch; assert 'torch' not in sys.modules"
    assert run(["-c", code], cwd=ROOT).returncode == 0


def test_a_quantized_plans_adapters_are_put_back_to_fp32_after_trls_cast(tiny_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    # TRL's SFTTrainer makes a 4-bit model's adapters bf16; the plan (the HF Trainer's stack) counts fp32 ones
    script = load_script(export(tiny_dir, tmp_path / "q", method="qlora", precision="bf16") / "train.py")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_dir), dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    for param in model.parameters():
        if param.requires_grad:  # what SFTTrainer.__init__ does to a quantized model
            param.data = param.data.to(torch.bfloat16)
    script.restore_planned_adapters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    assert "restore_planned_adapters(trainer.model)" in (tmp_path / "q" / "train.py").read_text()
    # a TRL plan (trl-yaml's stack) counts TRL's bf16 adapters, and a 16-bit base has nothing to put back
    for name, config in (("t", dict(method="qlora", precision="bf16", stack="trl")), ("l", dict())):
        assert not hasattr(load_script(export(tiny_dir, tmp_path / name, **config) / "train.py"),
                           "restore_planned_adapters")


def test_a_flash_attention_plan_stops_with_a_hint_when_flash_attn_is_missing(tiny_dir, tmp_path, monkeypatch):
    """A plan for FlashAttention-2 on a machine without flash-attn (the lent H200 had none): one line and a hint
    before the model loads, not transformers' ImportError traceback; --cpu still smoke-tests the script."""
    out = export(tiny_dir, tmp_path / "job", attn="flash")
    smoke = run(["train.py", "--cpu", "--synthetic", "--random-init", "--max-steps", "1"], cwd=out)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    assert len(json_lines(smoke.stdout, "step")) == 1
    spec = importlib.util.spec_from_file_location("exported_train", out / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else object())
    with pytest.raises(SystemExit) as stop:
        module.attention_for(cpu=False)
    assert "pip install flash-attn" in str(stop.value) and "--attn sdpa" in str(stop.value)
    assert module.ATTENTION == "flash_attention_2"


def test_an_sdpa_plan_has_no_flash_check(tiny_dir, tmp_path):
    text = (export(tiny_dir, tmp_path / "job", attn="sdpa") / "train.py").read_text()
    assert "attention_for" not in text and "ATTENTION = 'sdpa'" in text
