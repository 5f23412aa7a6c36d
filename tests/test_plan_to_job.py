"""One plan from question to training job: what a user exports (or verifies) is the configuration the plan
chose, with its estimate, in every format; what does not fit is not exported silently."""

import ast
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from advisor import core
from advisor.cli import main

ROOT = Path(__file__).resolve().parents[1]
QWEN_4090 = ["--model", "qwen2.5-7b", "--gpu", "4090", "--seq-len", "4096"]
LLAMA70_4XA100 = ["--model", "llama-3.1-70b", "--gpu", "4xa100-80gb"]
YAMLS = ("trl_sft.yaml", "axolotl.yaml", "llamafactory.yaml")


def _export(tmp_path, *flags) -> tuple[int, Path]:
    out = tmp_path / "out"
    return main(["export", *flags, "-o", str(out)]), out


def _header_peak(path: Path) -> str:
    line = next(line for line in path.read_text().splitlines() if "predicted peak per GPU" in line)
    return line.split("predicted peak per GPU: ")[1].split(" GiB")[0]


def _estimate_json(capsys, *flags) -> dict:
    capsys.readouterr()
    assert main(["estimate", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_all_writes_the_plan_and_every_file_reads_back_to_its_header(tmp_path, capsys):
    # the plan for a 7B at 4k tokens on a 4090 chooses the chunked loss; every format must carry it
    result = core.plan(core.PlanRequest(model="qwen2.5-7b", hardware=core.GpuRequest(gpu="4090"), seq_len=4096))
    chosen = result.plan.chosen.config
    assert chosen.loss == "chunked"
    code, out = _export(tmp_path, "--format", "all", *QWEN_4090)
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"train.py", *YAMLS, "accelerate.yaml"}
    assert not (out / "ds_config.json").exists()  # deepspeed does not apply to a single-GPU plain plan: skipped
    assert "skipped deepspeed" in capsys.readouterr().out
    expected = f"{result.plan.estimate.peak_device_bytes / 2**30:.2f}"
    for name in (*YAMLS, "train.py", "accelerate.yaml"):
        assert _header_peak(out / name) == expected, name
    for name in YAMLS:
        doc = _estimate_json(capsys, "--from", str(out / name), "--gpu", "4090")
        assert f"{doc['peak_device_bytes'] / 2**30:.2f}" == expected, name
        assert doc["config"]["loss"] == "chunked" and doc["fits"] is True, name
    assert "fused LM head" in (out / "trl_sft.yaml").read_text()  # TRL's own chunked loss: no Liger key
    axolotl = yaml.safe_load((out / "axolotl.yaml").read_text())
    assert axolotl["liger_fused_linear_cross_entropy"] is True
    assert "axolotl.integrations.liger.LigerPlugin" in axolotl["plugins"]
    assert yaml.safe_load((out / "llamafactory.yaml").read_text())["enable_liger_kernel"] is True
    assert "TRAINER = SFTTrainer" in (out / "train.py").read_text()  # TRL's own tiled loss, not the full logits
    assert "liger-kernel" in (out / "axolotl.yaml").read_text() and "liger-kernel" in (out / "llamafactory.yaml").read_text()


def test_a_trl_yaml_trains_the_chunked_loss_and_says_so(tmp_path, capsys):
    """TRL's SFTTrainer computes its loss in tiles whatever the file says: the trl-yaml of a standard-loss
    config carries the chunked config's estimate, and reads back to it."""
    flags = ["--model", "llama-3.2-1b", "--gpu", "4090", "--method", "lora", "--grad-ckpt", "--seq-len", "4096"]
    code, out = _export(tmp_path, "--format", "trl-yaml,axolotl", *flags)
    assert code == 0
    chunked = _estimate_json(capsys, *flags, "--loss", "chunked")["peak_device_bytes"]
    standard = _estimate_json(capsys, *flags)["peak_device_bytes"]
    assert chunked < standard
    assert _header_peak(out / "trl_sft.yaml") == f"{chunked / 2**30:.2f}"
    assert _header_peak(out / "axolotl.yaml") == f"{standard / 2**30:.2f}"
    back = _estimate_json(capsys, "--from", str(out / "trl_sft.yaml"), "--gpu", "4090")
    assert back["peak_device_bytes"] == chunked


def test_the_70b_export_is_the_plan_and_a_hand_config_that_does_not_fit_writes_nothing(tmp_path, capsys):
    code, out = _export(tmp_path, "--format", "axolotl,accelerate", *LLAMA70_4XA100)
    assert code == 0
    header = (out / "axolotl.yaml").read_text()
    peak = float(_header_peak(out / "axolotl.yaml"))
    assert peak < 80 and "DOES NOT FIT" not in header and "the plan's choice" in header
    capsys.readouterr()
    code, out2 = _export(tmp_path / "b", "--format", "axolotl,accelerate", *LLAMA70_4XA100, "--method", "lora",
                         "--zero", "0")
    err = capsys.readouterr().err
    assert code == 3 and not out2.exists()
    assert "GiB" in err and "--allow-no-fit" in err and err.count("\n") == 1
    code, out3 = _export(tmp_path / "c", "--format", "axolotl", *LLAMA70_4XA100, "--method", "lora", "--zero", "0",
                         "--allow-no-fit")
    assert code == 0 and "DOES NOT FIT" in (out3 / "axolotl.yaml").read_text()


def test_export_plan_option_takes_the_saved_alternative(tmp_path, capsys):
    assert main(["plan", "--json", *QWEN_4090]) == 0
    saved = tmp_path / "plan.json"
    saved.write_text(capsys.readouterr().out)
    doc = json.loads(saved.read_text())
    second = doc["plan"]["alternatives"][1]["config"]
    assert main(["export", "--plan", str(saved), "--option", "2", "--format", "trl-yaml", "-o", str(tmp_path / "o"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["option"] == 2 and report["config"] == second
    data = yaml.safe_load((tmp_path / "o" / "trl_sft.yaml").read_text())
    assert data["per_device_train_batch_size"] == second["micro_batch"]
    assert data["gradient_checkpointing"] == second["grad_ckpt"]
    assert "option 2" in (tmp_path / "o" / "trl_sft.yaml").read_text()
    # an option the plan does not have is refused, naming the range
    assert main(["export", "--plan", str(saved), "--option", "99", "--format", "trl-yaml", "-o", str(tmp_path / "x")]) == 2
    assert "--option" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_plan_export_in_one_call_matches_export(tmp_path, capsys):
    assert main(["plan", *QWEN_4090, "--export", "axolotl", "-o", str(tmp_path / "a")]) == 0
    assert main(["export", *QWEN_4090, "--format", "axolotl", "-o", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "axolotl.yaml").read_text() == (tmp_path / "b" / "axolotl.yaml").read_text()


def test_format_all_skips_with_reasons_and_an_explicit_inapplicable_format_writes_nothing(tmp_path, capsys):
    qlora = ["--model", "llama-3.1-8b", "--gpu", "4090", "--method", "qlora"]
    code, out = _export(tmp_path, "--format", "all", *qlora, "--json")
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and "deepspeed" in doc["skipped"] and "ZeRO" in doc["skipped"]["deepspeed"]
    assert set(doc["formats"]) == {"peft-trl", "trl-yaml", "axolotl", "llamafactory", "accelerate"}
    code, out = _export(tmp_path / "x", "--format", ",".join(core.EXPORT_FORMATS), *qlora)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "deepspeed" in err and "apply" in err


@pytest.mark.parametrize("text", ["", ",", "peft-trl,,axolotl"])
def test_empty_format_names_are_refused(tmp_path, text, capsys):
    code, out = _export(tmp_path, "--format", text, "--model", "llama-3.1-8b", "--gpu", "4090")
    assert code == 2 and not out.exists() and "--format" in capsys.readouterr().err


def test_exported_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        code, out = _export(tmp_path, "--format", "trl-yaml", *QWEN_4090)
    finally:
        os.umask(previous)
    assert code == 0
    assert stat.S_IMODE((out / "trl_sft.yaml").stat().st_mode) == 0o644


def test_fsdp_precision_is_what_the_estimate_assumes(tmp_path, capsys):
    """accelerate upcasts trainable params to fp32 under FSDP whenever mixed_precision != 'no': a pure-bf16
    plan exports mixed_precision 'no' and no autocast; the master-weights plan exports bf16 and loads fp32."""
    flags = ["--model", "llama-3.2-1b", "--gpu", "2xA100-80GB", "--method", "full", "--fsdp", "--grad-ckpt"]
    code, out = _export(tmp_path, "--format", "accelerate,trl-yaml,peft-trl", *flags)
    assert code == 0
    assert yaml.safe_load((out / "accelerate.yaml").read_text())["mixed_precision"] == "no"
    trl = yaml.safe_load((out / "trl_sft.yaml").read_text())
    assert trl["bf16"] is False and trl["fp16"] is False and trl["dtype"] == "bfloat16"
    code, out = _export(tmp_path / "m", "--format", "accelerate,trl-yaml", *flags, "--master-weights")
    assert code == 0
    assert yaml.safe_load((out / "accelerate.yaml").read_text())["mixed_precision"] == "bf16"
    trl = yaml.safe_load((out / "trl_sft.yaml").read_text())
    assert trl["bf16"] is True and trl["dtype"] == "float32"
    pure = _estimate_json(capsys, *flags)["peak_device_bytes"]
    master = _estimate_json(capsys, *flags, "--master-weights")["peak_device_bytes"]
    assert master > pure  # the two exports are estimated as the two different things they are


def test_a_format_that_names_ds_config_brings_it(tmp_path):
    code, out = _export(tmp_path, "--format", "trl-yaml", "--model", "llama-3.1-8b", "--gpu", "2xA100-80GB",
                        "--method", "lora", "--zero", "2")
    assert code == 0
    assert yaml.safe_load((out / "trl_sft.yaml").read_text())["deepspeed"] == "ds_config.json"
    assert json.loads((out / "ds_config.json").read_text())["zero_optimization"]["stage"] == 2
    assert yaml.safe_load((out / "accelerate.yaml").read_text())["num_processes"] == 2


def test_errors_carry_their_field_and_each_front_end_words_it():
    from advisor.errors import AdvisorError
    from advisor.tui.app import error_text

    with pytest.raises(AdvisorError) as caught:
        core.plan(core.PlanRequest(model="llama-3.1-8b", hardware=core.GpuRequest(gpu="lots")))
    err = caught.value
    assert err.field == "gpu" and err.value == "lots" and "--" not in err.message + err.hint
    from advisor.cli import describe_error

    assert describe_error(err).startswith("error: --gpu: ")
    message, hint = error_text(err)
    assert message.startswith("GPU: ") and "--" not in message + hint


@pytest.mark.parametrize("text", ["A100-80GB", "4xA100-80GB", "A100 80GB", "24GiB", "24"])
def test_gpu_field_reads_cards_and_sizes(text):
    hardware, _, source = core.resolve_hardware(core.GpuRequest(gpu=text), detect=None)
    assert hardware is not None and hardware.memory_bytes >= 24 * 2**30
    assert source == ("custom" if text[0:2] == "24" else "catalog")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_front_ends_import_neither_each_other_nor_the_planner():
    cli = _imports(ROOT / "advisor" / "cli.py")
    assert not any("tui.app" in n or n.endswith("planner") for n in cli), cli
    for path in (ROOT / "advisor" / "tui").rglob("*.py"):
        names = _imports(path)
        assert not any(n.endswith("cli") or n.endswith("planner") for n in names), (path, names)


def test_the_stack_is_an_input_and_is_inferred(tmp_path, capsys):
    flags = ["--model", "llama-3.2-1b", "--gpu", "4090", "--seq-len", "4096", "--grad-ckpt"]
    on_trl = _estimate_json(capsys, *flags, "--stack", "trl")
    chunked = _estimate_json(capsys, *flags, "--loss", "chunked")
    plain = _estimate_json(capsys, *flags)
    # TRL computes its loss in tiles whatever --loss says: the same memory as the chunked loss, less than plain
    assert on_trl["config"]["loss"] == "chunked" and on_trl["config"]["stack"] == "trl"
    assert on_trl["peak_device_bytes"] == chunked["peak_device_bytes"] < plain["peak_device_bytes"]
    code, out = _export(tmp_path, "--format", "trl-yaml,axolotl,llamafactory", *flags, "--method", "lora")
    assert code == 0
    for name, stack in (("trl_sft.yaml", "trl"), ("axolotl.yaml", "axolotl"), ("llamafactory.yaml", "llamafactory")):
        assert _estimate_json(capsys, "--from", str(out / name), "--gpu", "4090")["config"]["stack"] == stack
    assert main(["estimate", *flags, "--method", "full", "--master-weights", "--stack", "torchtune"]) == 2
    assert "torchtune" in capsys.readouterr().err


def test_fsdp_cannot_train_a_tied_embedding_and_says_so(tmp_path, capsys):
    """accelerate's FSDP2 wrap refuses a parameter in two units (PEFT's trained copy of a tied embedding)."""
    flags = ["--model", "llama-3.2-1b", "--gpu", "2xA100-80GB", "--method", "lora", "--fsdp", "--train-embeddings"]
    code, out = _export(tmp_path, "--format", "accelerate", *flags)
    assert code == 2 and not out.exists() and "ties its embedding" in capsys.readouterr().err
    code, out = _export(tmp_path / "b", "--format", "all", *flags)
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "no format applies" in err and err.count("ties its embedding") == 1
