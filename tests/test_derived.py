"""Model types beyond the hand-written eight: the derived path (a type no reader knows, estimated from the
shapes transformers builds for it, advisor/models/derive.py) and the Llama-layout family readers
(advisor/models/families/llama_layout.py), each checked against the fake-tensor oracle and transformers' own
parameter count; and the refusals when a model cannot be derived."""

import json
import subprocess
import sys

import pytest

from advisor.errors import ModelConfigError
from advisor.models import derive, resolve_model
from advisor.models.hf_config import arch_from_config

# read by llama_layout.py without torch
OLMO3 = {"model_type": "olmo3", "num_hidden_layers": 4, "sliding_window": 256,
         "layer_types": ["sliding_attention"] * 3 + ["full_attention"]}
ERNIE = {"model_type": "ernie4_5", "num_hidden_layers": 3}
# no reader: the derived path (transformers' defaults for each type: real widths and vocabularies)
HELIUM = {"model_type": "helium", "num_hidden_layers": 3}
GLM4 = {"model_type": "glm4", "num_hidden_layers": 2}  # four norms per layer, fused gate_up_proj
ARCEE = {"model_type": "arcee", "num_hidden_layers": 3}  # plain (ungated) MLP


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory):
    """One derivation per config for the whole module (each costs a child process importing transformers)."""
    import os

    before = os.environ.get("LORA_ADVISOR_CACHE_DIR")
    os.environ["LORA_ADVISOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("derived-cache"))
    yield
    if before is None:
        del os.environ["LORA_ADVISOR_CACHE_DIR"]
    else:
        os.environ["LORA_ADVISOR_CACHE_DIR"] = before


def test_without_torch_the_refusal_names_the_type_and_the_extra(monkeypatch):
    monkeypatch.setattr(derive, "can_derive", lambda: False)
    with pytest.raises(ModelConfigError) as err:
        arch_from_config(HELIUM, name="helium")
    assert "'helium'" in err.value.message and "verify" in err.value.hint and "llama" in err.value.hint


@pytest.mark.parametrize("config", [OLMO3, ERNIE], ids=["olmo3", "ernie4_5"])
def test_llama_layout_families_need_no_torch(monkeypatch, config):
    monkeypatch.setattr(derive, "_shapes", lambda *a: pytest.fail("a family reader must not start transformers"))
    arch = arch_from_config(config, name=config["model_type"])
    assert arch.model_type == config["model_type"] and not arch.derived_from


def test_a_model_type_that_is_no_identifier_is_refused_without_building_anything(monkeypatch):
    monkeypatch.setattr(derive, "_shapes", lambda *a: pytest.fail("must not start transformers"))
    with pytest.raises(ModelConfigError, match="not in the torch-free"):
        arch_from_config({**HELIUM, "model_type": "llama" * 1000}, name="x")


@pytest.mark.parametrize("layer_types", ["sliding", ["sliding_attention"], [1, 2, 3, 4]])
def test_a_llama_layout_config_with_wrong_layer_types_is_refused_by_name(layer_types):
    with pytest.raises(ModelConfigError, match="layer_types"):
        arch_from_config({"model_type": "olmo3", "num_hidden_layers": 4, "layer_types": layer_types}, name="x")


def test_dropout_turned_on_is_named_and_widens_the_range():
    """The memory model counts no dropout: a config that trains with it gets a note and an unchecked range."""
    from advisor.memory import TrainConfig, estimate

    base = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 512, "vocab_size": 1000}
    plain = estimate(arch_from_config(base, name="x"), TrainConfig())
    dropped = estimate(arch_from_config({**base, "attention_dropout": 0.1}, name="x"), TrainConfig())
    assert any("dropout" in note and "attention_dropout 0.1" in note for note in dropped.notes)
    assert not any("dropout" in note for note in plain.notes)
    assert "dropout" in dropped.range_basis
    assert dropped.peak_device_range_bytes[1] - dropped.peak_device_bytes > plain.peak_device_range_bytes[1] - plain.peak_device_bytes


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


@pytest.mark.parametrize("config", [OLMO3, ERNIE, HELIUM, GLM4, ARCEE], ids=lambda c: c["model_type"])
def test_parameter_count_is_what_transformers_builds(config):
    arch = arch_from_config(config, name=config["model_type"])
    from advisor.models.params import count_params

    assert count_params(arch).total == _meta_params(config)
    assert arch.model_type == config["model_type"]


LAYOUT_VARIANTS = [
    {"model_type": "olmo2", "num_hidden_layers": 3, "num_key_value_heads": 8},
    {"model_type": "olmo3", "num_hidden_layers": 5, "attention_bias": True},
    {"model_type": "smollm3", "num_hidden_layers": 3},
    {"model_type": "granite", "num_hidden_layers": 2, "attention_bias": True, "mlp_bias": True},
    {"model_type": "ernie4_5", "num_hidden_layers": 3, "use_bias": True},
]


@pytest.mark.parametrize("config", LAYOUT_VARIANTS, ids=lambda c: c["model_type"])
def test_family_reader_matches_the_shapes_transformers_builds(config):
    """The torch-free reader and the derived path (real modules) agree on every shape the estimate reads."""
    read = arch_from_config(config, name="x")
    built = derive._arch(derive._shapes(config, "x"), config, "x", "x")
    fields = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size",
              "tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias", "qk_norm", "sliding_window", "layer_types",
              "extra_layer_params", "extra_params", "norms_per_layer", "mlp_kind")
    assert {f: getattr(read, f) for f in fields} == {f: getattr(built, f) for f in fields}


CASES = [
    (OLMO3, dict(method="lora", seq_len=1024)),  # sliding layers past their window: SDPA builds a mask
    (OLMO3, dict(method="full", seq_len=512, grad_ckpt=True, optimizer="sgd")),
    (ERNIE, dict(method="lora", seq_len=1024, micro_batch=2)),  # tied embeddings, GQA
    (HELIUM, dict(method="lora", seq_len=1024)),
    (GLM4, dict(method="lora", seq_len=1024)),
    (GLM4, dict(method="full", seq_len=512, grad_ckpt=True, optimizer="sgd")),
    (ARCEE, dict(method="lora", seq_len=1024)),
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
    assert any(note.startswith("derived estimate") for note in est.notes) == bool(arch.derived_from)


def test_a_layout_the_model_cannot_place_is_refused_with_what_was_found():
    with pytest.raises(ModelConfigError) as err:
        arch_from_config({"model_type": "gpt2", "n_layer": 2}, name="gpt2")
    assert "gpt2" in err.value.message and "layout" in err.value.message


def test_cli_estimate_of_a_derived_config_keeps_torch_out_of_the_parent(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HELIUM))
    code = ("import json, sys; from advisor.cli import main; rc = main(['estimate', '--model', sys.argv[1], '--json']);"
            "sys.stderr.write('TORCH' if 'torch' in sys.modules else 'CLEAN')")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    doc = json.loads(proc.stdout)
    assert proc.stderr.endswith("CLEAN"), proc.stderr[-500:]
    assert any("derived estimate" in note for note in doc["notes"])
    assert resolve_model(str(path)).derived_from


def test_a_refusal_is_cached_like_the_shapes(monkeypatch):
    """A layout transformers builds but the model refuses is answered from the cache the second time."""
    config = {"model_type": "gpt2", "n_layer": 3}
    with pytest.raises(ModelConfigError):
        arch_from_config(config, name="gpt2")
    monkeypatch.setattr(derive, "_run_child", lambda *a: pytest.fail("derived again"))
    with pytest.raises(ModelConfigError, match="layout"):
        arch_from_config(config, name="gpt2")


def test_a_child_that_takes_too_long_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(derive, "DERIVE_TIMEOUT_S", 0.01)
    with pytest.raises(ModelConfigError, match="meta device took over"):
        arch_from_config({"model_type": "helium", "num_hidden_layers": 5}, name="slow")


def test_out_of_range_fields_are_refused_before_transformers_sees_them(monkeypatch):
    monkeypatch.setattr(derive, "_shapes", lambda *a: pytest.fail("must not start transformers"))
    with pytest.raises(ModelConfigError, match="num_hidden_layers"):
        arch_from_config({"model_type": "helium", "num_hidden_layers": 10**6}, name="huge")


def test_a_cache_entry_that_is_not_the_childs_report_is_derived_afresh():
    import json as _json

    config = {"model_type": "helium", "num_hidden_layers": 2}
    expected = arch_from_config(config, name="h")  # derives and caches
    path = derive._cache_file(config)
    path.write_text(_json.dumps({"shapes": {"text": 1}}))  # valid JSON, wrong structure
    assert arch_from_config(config, name="h") == expected
    assert "layers" in _json.loads(path.read_text())["shapes"]  # the cache holds a real report again
