"""The derived path: a model type outside the torch-free memory model, estimated from the shapes transformers
builds for it (advisor/models/derive.py), checked against the fake-tensor oracle and transformers' own
parameter count; and the refusals when it cannot be derived."""

import json
import subprocess
import sys

import pytest

from advisor.errors import ModelConfigError
from advisor.models import derive, resolve_model
from advisor.models.hf_config import arch_from_config

OLMO3 = {"model_type": "olmo3", "num_hidden_layers": 4, "sliding_window": 256,
         "layer_types": ["sliding_attention"] * 3 + ["full_attention"]}
ERNIE = {"model_type": "ernie4_5", "num_hidden_layers": 3}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_ADVISOR_CACHE_DIR", str(tmp_path / "cache"))


def test_without_torch_the_refusal_names_the_type_and_the_extra(monkeypatch):
    monkeypatch.setattr(derive, "can_derive", lambda: False)
    with pytest.raises(ModelConfigError) as err:
        arch_from_config(OLMO3, name="olmo3")
    assert "'olmo3'" in err.value.message and "verify" in err.value.hint and "llama" in err.value.hint


def test_a_model_type_that_is_no_identifier_is_refused_without_building_anything(monkeypatch):
    monkeypatch.setattr(derive, "_shapes", lambda *a: pytest.fail("must not start transformers"))
    with pytest.raises(ModelConfigError, match="not in the torch-free"):
        arch_from_config({**ERNIE, "model_type": "llama" * 1000}, name="x")


pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from advisor.memory import TrainConfig, estimate  # noqa: E402
from advisor.verify.dryrun import PHASES, run_dry  # noqa: E402


def _meta_params(config: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", [OLMO3, ERNIE], ids=["olmo3", "ernie4_5"])
def test_parameter_count_is_what_transformers_builds(config):
    arch = arch_from_config(config, name=config["model_type"])
    from advisor.models.params import count_params

    assert count_params(arch).total == _meta_params(config)
    assert arch.derived_from and arch.model_type == config["model_type"]


CASES = [
    (OLMO3, dict(method="lora", seq_len=1024)),  # sliding layers past their window: SDPA builds a mask
    (OLMO3, dict(method="full", seq_len=512, grad_ckpt=True, optimizer="sgd")),
    (ERNIE, dict(method="lora", seq_len=1024, micro_batch=2)),  # tied embeddings, GQA
    (ERNIE, dict(method="full", seq_len=512)),
]


@pytest.mark.parametrize("config,settings", CASES, ids=[f"{c['model_type']}-{i}" for i, (c, _) in enumerate(CASES)])
def test_derived_estimate_within_five_percent_of_the_oracle(config, settings):
    arch = arch_from_config(config, name=config["model_type"])
    cfg = TrainConfig(**settings)
    oracle, est = run_dry(arch, cfg), estimate(arch, cfg)
    assert oracle.trainable_params == est.trainable_params
    for phase in PHASES:
        measured, predicted = oracle.phase_peaks[phase], getattr(est.phases, phase)
        assert abs(predicted - measured) / measured <= 0.05, (phase, predicted, measured)
    assert any(note.startswith("derived estimate") for note in est.notes)


def test_a_layout_the_model_cannot_place_is_refused_with_what_was_found():
    with pytest.raises(ModelConfigError) as err:
        arch_from_config({"model_type": "gpt2", "n_layer": 2}, name="gpt2")
    assert "gpt2" in err.value.message and "layout" in err.value.message


def test_cli_estimate_of_a_derived_config_keeps_torch_out_of_the_parent(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(ERNIE))
    code = ("import json, sys; from advisor.cli import main; rc = main(['estimate', '--model', sys.argv[1], '--json']);"
            "sys.stderr.write('TORCH' if 'torch' in sys.modules else 'CLEAN')")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "LORA_ADVISOR_CACHE_DIR": str(tmp_path / "c")})
    doc = json.loads(proc.stdout)
    assert proc.stderr.endswith("CLEAN"), proc.stderr[-500:]
    assert any("derived estimate" in note for note in doc["estimate"]["notes"]) if "estimate" in doc else \
        any("derived estimate" in note for note in doc["notes"])
    assert resolve_model(str(path)).derived_from
