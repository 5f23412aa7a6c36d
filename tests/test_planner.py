"""The planner's decisions follow the numbers: each test asserts a decision and its reason."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advisor.cli import main
from advisor.engine.rules import RuleError, default_rules, load_rules_text, merge
from advisor.hardware import hardware_for
from advisor.models import resolve_model
from advisor.planner import Goals, make_plan

RULES = default_rules()


def plan_for(model, gpu, **goals):
    hw = hardware_for(gpu=gpu)
    return make_plan(resolve_model(model), hw, Goals(gpus=hw.count, **goals), RULES), hw


def test_default_pack_has_twenty_rules_with_unique_ids():
    assert len(RULES) >= 20
    assert len({r.id for r in RULES}) == len(RULES)


def test_llama2_7b_on_a_4090_fits_with_headroom():
    plan, hw = plan_for("llama-2-7b", "rtx4090", seq_len=2048)
    chosen = plan.chosen
    # QLoRA fits 2048 tokens without checkpointing since the LoRA branches are modelled under the trainer's autocast
    # (16-bit input copies, not fp32 ones); either way an adapter method is chosen
    assert chosen.config.method in ("lora", "qlora")
    assert chosen.need_bytes <= 0.9 * hw.usable_bytes
    assert plan.estimate.peak_device_bytes == chosen.need_bytes
    # full fine-tuning was rejected with its number
    full = [r for r in plan.rejected if r.option.startswith("full fine-tuning (16-bit)")]
    assert full and "GiB >" in full[0].reason
    assert len(chosen.reasons) >= 3
    assert chosen.config.micro_batch * chosen.grad_accum == 16


def test_7b_on_one_80gb_card_full_ft_rejected_with_its_number():
    plan, hw = plan_for("llama-2-7b", "a100-80gb", seq_len=2048, method="auto")
    mixed = [r for r in plan.rejected if r.option.startswith("full fine-tuning (fp32 master")]
    # mixed-precision AdamW full FT (16 B/param: ~108 GiB for 7B) cannot fit 80 GB: rejected with its number
    assert mixed and "GiB" in mixed[0].reason
    # whatever is chosen instead fits and says why
    assert plan.chosen is not None and plan.chosen.need_bytes <= hw.usable_bytes
    assert any("fits:" in reason for reason in plan.chosen.reasons)


def test_70b_on_two_80gb_cards_shards():
    plan, hw = plan_for("llama-3.1-70b", "2xA100-80GB", seq_len=2048)
    assert plan.chosen is not None
    cfg = plan.chosen.config
    assert cfg.gpus == 2 and (cfg.method == "qlora" or cfg.sharding in ("zero3", "fsdp"))
    assert plan.chosen.need_bytes <= 0.9 * hw.usable_bytes


def test_1b_on_8gb():
    hw = hardware_for(vram="8GiB")
    plan = make_plan(resolve_model("llama-3.2-1b"), hw, Goals(seq_len=1024), RULES)
    assert plan.chosen is not None and plan.chosen.need_bytes <= 0.9 * hw.usable_bytes


def test_nothing_fits_is_a_clear_answer(capsys):
    hw = hardware_for(vram="4GiB")
    plan = make_plan(resolve_model("llama-3.1-70b"), hw, Goals(seq_len=4096), RULES)
    assert plan.chosen is None and plan.smallest_need_bytes > hw.usable_bytes
    assert plan.what_would_fit and "GiB" in plan.what_would_fit[0]
    assert any(t.kind == "forbid" and t.rule == "must-fit" for t in plan.trace)
    assert main(["plan", "--json", "--model", "llama-3.1-70b", "--vram", "4GiB"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["chosen"] is None and doc["plan"]["smallest_need_bytes"] > 4 * 2**30


def test_pre_ampere_gets_fp16_and_a_warning():
    plan, _ = plan_for("qwen2.5-1.5b", "t4", seq_len=1024)
    assert plan.chosen.config.precision == "fp16"
    assert any("overflow" in w for w in plan.warnings)
    assert any(t.rule == "precision-fp16" for t in plan.trace)


def test_user_rule_forbidding_a_method_is_obeyed():
    extra = load_rules_text("""
rules:
  - id: no-qlora
    when: candidate.method == "qlora"
    forbid: true
    because: "house policy: no 4-bit bases"
  - id: no-lora
    when: candidate.method == "lora"
    forbid: true
    because: "house policy: no 16-bit LoRA either"
""", "user.yaml")
    hw = hardware_for(gpu="h100")
    plan = make_plan(resolve_model("llama-3.2-1b"), hw, Goals(seq_len=1024), merge(RULES, extra))
    assert plan.chosen.config.method == "full"


def test_user_rule_overrides_by_id():
    extra = load_rules_text("""
rules:
  - id: precision-bf16
    priority: 10
    when: gpu.bf16
    set: {precision: fp16}
    because: "we train in fp16 here"
""", "user.yaml")
    merged = merge(RULES, extra)
    assert len(merged) == len(RULES)
    plan = make_plan(resolve_model("llama-3.2-1b"), hardware_for(gpu="4090"), Goals(seq_len=512), merged)
    assert plan.chosen.config.precision == "fp16"


def test_a_rule_setting_a_precision_some_methods_cannot_use_rejects_those_methods_by_name(capsys, tmp_path):
    """A rule pack that trains in fp32: QLoRA cannot (its 4-bit layers compute in 16 bit), so the plan goes on
    with full and LoRA, and says which rule ruled QLoRA out; asked for QLoRA alone, no plan exists, and the
    answer says so in one line (exit 3) instead of a traceback or a memory verdict."""
    pack = tmp_path / "fp32.yaml"
    pack.write_text("rules:\n  - id: house-fp32\n    priority: 10\n    when: gpu.bf16\n"
                    "    set: {precision: fp32}\n    because: we train in fp32\n")
    rules = merge(RULES, load_rules_text(pack.read_text(), str(pack)))
    hw = hardware_for(gpu="4090")
    plan = make_plan(resolve_model("llama-3.2-1b"), hw, Goals(seq_len=512), rules)
    assert plan.chosen is not None and plan.chosen.config.precision == "fp32"
    qlora = [r for r in plan.rejected if r.option == "qlora"]
    assert len(qlora) == 1 and qlora[0].rule == "house-fp32" and "precision fp32" in qlora[0].reason
    assert any(t.kind == "forbid" and t.rule == "house-fp32" for t in plan.trace)

    only = make_plan(resolve_model("llama-3.2-1b"), hw, Goals(seq_len=512, method="qlora"), rules)
    assert only.chosen is None and only.smallest_need_bytes is None and only.what_would_fit == []
    assert only.no_choice.startswith("no configuration is left")
    assert main(["plan", "-m", "llama-3.2-1b", "--gpu", "4090", "--method", "qlora", "--rules", str(pack)]) == 3
    out = capsys.readouterr().out
    assert "no configuration is left" in out and "house-fp32" not in out and "qlora: no qlora configuration" in out


def test_a_rule_that_forbids_everything_is_not_called_a_memory_problem(capsys, tmp_path):
    pack = tmp_path / "none.yaml"
    pack.write_text("rules:\n  - id: closed\n    when: candidate.micro_batch > 0\n    forbid: true\n"
                    "    because: the cluster is closed this week\n")
    assert main(["plan", "-m", "llama-3.2-1b", "--gpu", "h100", "--rules", str(pack)]) == 3
    out = capsys.readouterr().out
    assert "no candidate passes the rules: the smallest needs" in out and "the cluster is closed" in out
    assert "a GPU with more than" not in out  # a bigger card is no answer to a rule (and was not checked)
    assert main(["export", "-f", "axolotl", "-m", "llama-3.2-1b", "--gpu", "h100", "--rules", str(pack), "-o",
                 str(tmp_path / "x")]) == 3
    assert "no candidate passes the rules" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_what_would_fit_never_suggests_more_gpus_than_a_job_can_have():
    """600 cards that are each too small: doubling them (1200) is past the 1024 a job may have, so the
    suggestions stop there instead of failing validation."""
    hw = hardware_for(vram="4GiB", gpus=600)
    plan = make_plan(resolve_model("llama-3.1-70b"), hw, Goals(seq_len=4096, gpus=600, effective_batch=4096), RULES)
    assert plan.chosen is None
    assert not any(item.startswith(("1200 x", "2400 x")) for item in plan.what_would_fit)


@pytest.mark.parametrize("yaml_text,words", [
    ("rules:\n  - id: x\n    when: gpu.vram_gb < 3\n    warn: true\n    because: b\n", "gpu.vram_gib"),
    ("rules:\n  - id: x\n    when: gpu.name > 3\n    warn: true\n    because: b\n", "compare"),
    ("rules:\n  - id: x\n    when: gpu.bf16 and\n    warn: true\n    because: b\n", "syntax"),
    ("rules:\n  - id: x\n    when: gpu.bf16\n    because: b\n", "exactly one action"),
    ("rules:\n  - id: x\n    when: gpu.bf16\n    warn: true\n    because: 'uses {gpu.vram}'\n", "unknown fact"),
    ("rules:\n  - id: x\n    when: gpu.bf16\n    set: {learning_rate: 1}\n    because: b\n", "learning_rate"),
    ("rules:\n  - id: x\n   when: [\n", "invalid YAML"),
    ("rules:\n  - id: x\n    when: candidate.fits\n    warn: true\n    because: b\n", "unknown fact"),
])
def test_bad_rules_fail_at_load_with_file_line_and_id(yaml_text, words):
    with pytest.raises(RuleError) as err:
        load_rules_text(yaml_text, "mine.yaml")
    assert err.value.message.startswith("mine.yaml:") and words in err.value.message + err.value.hint


def test_rules_cli_error_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    when: gpu.nope\n    warn: true\n    because: b\n")
    assert main(["plan", "--model", "llama-3.2-1b", "--gpu", "4090", "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml:2" in err and "'x'" in err


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_hostile_expressions_never_run_code(expression):
    text = "rules:\n  - id: h\n    when: " + json.dumps(expression) + "\n    warn: true\n    because: b\n"
    try:
        rules = load_rules_text(text, "h.yaml")
    except RuleError:
        return  # rejected at load: fine
    # whatever loaded can only look at facts: evaluating it touches nothing else
    from advisor.planner import gpu_facts, model_facts
    from advisor.engine.facts import GoalFacts

    things = {"gpu": gpu_facts(None), "model": model_facts(resolve_model("llama-3.2-1b")),
              "goals": GoalFacts(512, 16, "auto", "speed", 1)}
    try:
        rules[0].matches(things)
    except Exception as exc:  # a runtime type error is acceptable; running code is not
        assert "rule_engine" in type(exc).__module__


@pytest.mark.parametrize("attack", ["gpu.__class__", "gpu.__init__.__globals__", "model.name.__class__"])
def test_attribute_escapes_are_rejected(attack):
    with pytest.raises(RuleError):
        load_rules_text(f"rules:\n  - id: a\n    when: {attack}\n    warn: true\n    because: b\n", "a.yaml")


@settings(max_examples=25, deadline=None)
@given(model=st.sampled_from(["llama-3.2-1b", "qwen2.5-7b", "llama-3.1-8b", "gemma-2-2b"]),
       gpu=st.sampled_from(["4090", "3090", "a100-80gb", "l4", "t4", "2x4090"]),
       seq=st.sampled_from([512, 2048, 4096]))
def test_chosen_plan_never_exceeds_usable_memory(model, gpu, seq):
    hw = hardware_for(gpu=gpu)
    plan = make_plan(resolve_model(model), hw, Goals(seq_len=seq, gpus=hw.count), RULES)
    if plan.chosen is not None:
        assert plan.estimate.peak_device_bytes <= hw.usable_bytes


def test_top_level_json_is_the_planner(capsys):
    assert main(["--json", "--model", "llama-2-7b", "--gpu", "rtx4090", "--seq-len", "2048"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == 1 and doc["plan"]["chosen"]["config"]["method"] in ("lora", "qlora")
    assert len(doc["plan"]["chosen"]["reasons"]) >= 3
    assert doc["plan"]["candidates_evaluated"] >= 1000


def test_parameter_offload_is_the_last_rung():
    # 8B full fine-tuning cannot hold its 16-bit weights on 24 GB (with the range's high end under the card),
    # even with DeepSpeed's optimizer offload: only ZeRO-3 with the parameters on the CPU fits
    plan, hw = plan_for("llama-3.1-8b", "4090", method="full")
    cfg = plan.chosen.config
    assert cfg.method == "full" and cfg.offload == "params" and cfg.zero == 3
    assert any(t.rule == "planner.last-rung" for t in plan.trace)
    assert any("GiB of CPU RAM" in reason for reason in plan.chosen.reasons)
    assert plan.estimate.host_ram_bytes > 8e9 * 12  # fp32 Adam states and master copies of 8B params
    # its throughput cost is a warning, not a reason for it; so is how little its memory terms are checked
    assert any("offload" in w for w in plan.warnings)
    assert any("least checked" in w for w in plan.warnings)
    assert not any("offload makes" in reason for reason in plan.chosen.reasons)
    # and it is never tried while something else passes
    easy, _ = plan_for("llama-2-7b", "rtx4090")
    assert not any(t.rule == "planner.last-rung" for t in easy.trace)
    assert all(o.config.offload != "params" for o in [easy.chosen, *easy.alternatives])


def test_what_would_fit_suggestions_are_plans():
    # 16 GiB: on 14 no sequence length fits any more once DeepSpeed's two NCCL communicators (measured on an H200,
    # overheads.py) are counted on one GPU; the offloaded ZeRO-3 plans were the only ones left there
    hw = hardware_for(vram="16GiB")
    arch, goals = resolve_model("llama-3.1-70b"), Goals(seq_len=4096)
    plan = make_plan(arch, hw, goals, RULES)
    assert plan.chosen is None and plan.what_would_fit
    card = next(s for s in plan.what_would_fit if s.startswith("1 x "))
    name = card.removeprefix("1 x ").split(" (")[0]
    assert make_plan(arch, hardware_for(name), goals, RULES).chosen is not None
    shorter = next(s for s in plan.what_would_fit if s.startswith("seq len "))
    seq = int(shorter.split()[2].replace(",", ""))
    assert seq < 4096 and make_plan(arch, hw, Goals(seq_len=seq), RULES).chosen is not None


def test_chosen_limits_are_the_limits_of_the_chosen_config():
    from advisor.limits import largest_fitting

    plan, hw = plan_for("qwen2.5-7b", "4090", seq_len=1024)
    arch = resolve_model("qwen2.5-7b")
    assert plan.chosen_limits.longest_seq_len == largest_fitting(arch, plan.chosen.config, hw, "seq_len").value
    assert plan.chosen_limits.largest_micro_batch == largest_fitting(arch, plan.chosen.config, hw, "micro_batch").value
    assert plan.chosen_limits.longest_seq_len >= 1024 and plan.chosen_limits.largest_micro_batch >= plan.chosen.config.micro_batch


def test_offload_must_fit_the_machines_ram(capsys):
    args = ["plan", "--json", "--model", "llama-3.1-8b", "--gpu", "4090", "--method", "full"]
    assert main([*args, "--host-ram", "64GiB"]) == 3  # DeepSpeed's CPU Adam needs 16 B x 1.5 per param: ~180 GiB
    doc = json.loads(capsys.readouterr().out)["plan"]
    assert any(r["rule"] == "offload-needs-host-ram" and "CPU RAM" in r["reason"] for r in doc["rejected"])
    assert main([*args, "--host-ram", "512GiB"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["chosen"]["config"]["offload"] == "params"
    assert main([*args, "--host-ram", "lots"]) == 2


def test_adapter_rules_are_not_reasons_for_a_full_fine_tuning_plan():
    from advisor.planner import settled_for

    full, _ = plan_for("llama-3.2-1b", "a100-80gb", method="full")
    lora, _ = plan_for("llama-3.2-1b", "a100-80gb", method="lora")
    assert full.chosen.config.method == "full" and lora.chosen.config.method == "lora"
    assert not any("LoRA" in s for s in settled_for(full))
    assert any("LoRA on all linear layers" in s for s in settled_for(lora))
    assert any(t.rule == "lora-targets-all-linear" for t in full.trace)  # the trace still has every rule


def test_unknown_host_ram_never_plans_an_offload_beyond_a_large_server():
    """A GPU named, not detected: the host's RAM is unknown, so no plan may need more CPU RAM than a large 8-GPU
    server has (2 TiB).  Full fine-tuning of 405B offloaded needs ~6 TiB (16 B/param of fp32 master + states)."""
    plan, _ = plan_for("llama-3.1-405b", "h100", seq_len=2048)
    chosen = [plan.estimate] if plan.estimate is not None else []
    assert all(est.host_ram_bytes <= 2048 * 2**30 for est in chosen)
    refused = [r for r in plan.rejected if "--host-ram" in r.reason]
    assert refused and all(r.reason.startswith("offload needs") for r in refused)


def test_moe_adapters_under_zero3_carry_the_unverified_warning():
    plan, _ = plan_for("qwen3-30b-a3b", "rtx4090", seq_len=2048)
    cfg = plan.chosen.config
    warned = any("MoE adapters under DeepSpeed ZeRO-3" in w for w in plan.warnings)
    assert warned == (cfg.zero == 3 and cfg.method != "full")
    dense, _ = plan_for("llama-3.1-8b", "rtx4090", seq_len=2048)
    assert not any("MoE adapters" in w for w in dense.warnings)
