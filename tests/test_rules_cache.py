"""The compiled-rules cache: a hit gives the same rules and plans as compiling, skips rule-engine
entirely, and a bad cache is never an error."""

import json
import subprocess
import sys
from pathlib import Path

from advisor.engine import cache
from advisor.engine.rules import default_rules, load_rules_text
from advisor.hardware import hardware_for
from advisor.models import resolve_model
from advisor.planner import Goals, make_plan

ROOT = Path(__file__).resolve().parents[1]
PACK = (ROOT / "rules" / "default.yaml").read_text()
ARITHMETIC = """rules:
  - id: big-model
    when: model.params_b * 2 > 10
    warn: true
    because: "a big model"
"""


def _fresh(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("LORA_ADVISOR_CACHE_DIR", str(tmp_path))
    return tmp_path


def _plan(rules):
    arch, hw = resolve_model("llama-2-7b"), hardware_for("rtx4090")
    return make_plan(arch, hw, Goals(seq_len=2048), sorted(rules, key=lambda r: r.spec.priority)).model_dump()


def test_a_hit_gives_the_same_rules_and_plan(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    compiled = load_rules_text(PACK, "rules/default.yaml")
    assert len(list(tmp_path.glob("rules-*.json"))) == 1
    hit = load_rules_text(PACK, "rules/default.yaml")
    assert all(rule.compiled is None for rule in hit)  # nothing was parsed
    assert [(r.spec, r.source, r.ir) for r in hit] == [(r.spec, r.source, r.ir) for r in compiled]
    assert _plan(hit) == _plan(compiled)


def test_a_rule_without_fast_path_compiles_on_first_use(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    load_rules_text(ARITHMETIC, "user.yaml")
    (rule,) = load_rules_text(ARITHMETIC, "user.yaml")
    assert rule.ir is None and rule.compiled is None
    arch = resolve_model("llama-3.1-8b")
    plan = make_plan(arch, hardware_for("a100-80gb"), Goals(), sorted([*default_rules(), rule], key=lambda r: r.spec.priority))
    assert "a big model" in plan.warnings and rule.compiled is not None


def test_a_corrupt_or_foreign_cache_is_rebuilt(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    load_rules_text(PACK, "rules/default.yaml")
    (path,) = tmp_path.glob("rules-*.json")
    key = json.loads(path.read_text())["key"]
    for junk in ("{not json", json.dumps({"key": key, "rules": [{"spec": {}}]}), json.dumps([1, 2])):
        path.write_text(junk)
        rules = load_rules_text(PACK, "rules/default.yaml")
        assert len(rules) == len(default_rules()) and all(rule.fast is not None for rule in rules)
        assert json.loads(path.read_text())["rules"][0]["spec"]["id"]  # written afresh


def test_an_unwritable_cache_is_skipped(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LORA_ADVISOR_CACHE_DIR", str(blocker / "cache"))
    assert len(load_rules_text(PACK, "rules/default.yaml")) == len(default_rules())
    monkeypatch.setenv("LORA_ADVISOR_CACHE_DIR", "off")
    assert cache.cache_dir() is None and len(load_rules_text(PACK, "rules/default.yaml")) > 20


def test_a_changed_pack_replaces_its_entry(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    load_rules_text(PACK, "rules/default.yaml")
    changed = PACK.replace("candidate.headroom_frac < 0.20", "candidate.headroom_frac < 0.30")
    assert changed != PACK
    rules = load_rules_text(changed, "rules/default.yaml")
    assert "0.30" in str(next(r.ir for r in rules if r.id == "full-needs-headroom"))
    assert len(list(tmp_path.glob("rules-*.json"))) == 1  # one file per pack source, however often it changes
    again = load_rules_text(changed, "rules/default.yaml")
    assert all(rule.compiled is None for rule in again)  # and the new text is what is cached now


def test_the_second_json_run_never_imports_rule_engine(tmp_path):
    code = ("import sys, io, contextlib; from advisor.cli import main; "
            "out = io.StringIO(); ctx = contextlib.redirect_stdout(out); ctx.__enter__(); "
            "rc = main(['--json', '--model', 'llama-2-7b', '--gpu', 'rtx4090']); ctx.__exit__(None, None, None); "
            "print(rc, 'rule_engine' in sys.modules)")
    env = {"LORA_ADVISOR_CACHE_DIR": str(tmp_path / "cache"), "LORA_ADVISOR_DATA_DIR": str(tmp_path / "data"),
           "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    first, second = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                                    timeout=60) for _ in range(2))
    assert first.stdout.split() == ["0", "True"], first.stderr
    assert second.stdout.split() == ["0", "False"], second.stderr
