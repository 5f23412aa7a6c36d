import json

import pytest

from advisor.errors import ModelConfigError, UnknownModelError
from advisor.models import catalog_names, count_params, nearest_names, resolve_model

REQUIRED = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
            "llama-3.2-1b", "llama-3.2-3b", "mistral-7b-v0.3", "mixtral-8x7b-v0.1", "qwen2.5-0.5b", "qwen2.5-1.5b",
            "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b", "qwen3-8b", "gemma-2-2b",
            "gemma-2-9b", "gemma-2-27b", "phi-3-mini-4k", "phi-3.5-mini", "smollm2-1.7b", "tinyllama-1.1b"]


def test_catalog_has_the_popular_models():
    names = catalog_names()
    assert len(names) >= 25
    assert set(REQUIRED) <= set(names)


@pytest.mark.parametrize("typed", ["Llama-3.1-8B", "llama_3_1_8b", "meta-llama/Llama-3.1-8B", "LLAMA3.1-8b"])
def test_names_match_forgivingly(typed):
    assert resolve_model(typed).name == "llama-3.1-8b"


def test_unknown_name_suggests_three_nearest():
    with pytest.raises(UnknownModelError) as err:
        resolve_model("lama-3.1-8")
    assert "llama-3.1-8b" in err.value.hint
    assert len(nearest_names("qwen-7b")) == 3


def test_gemma_head_dim_differs_from_hidden_over_heads():
    arch = resolve_model("gemma-2-9b")
    assert arch.head_dim == 256 and arch.hidden_size // arch.num_heads != 256
    assert arch.tie_word_embeddings and arch.norms_per_layer == 4


def test_local_config_json_and_directory(tmp_path):
    cfg = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
           "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True,
           "max_position_embeddings": 32768}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    by_dir = resolve_model(str(tmp_path))
    by_file = resolve_model(str(tmp_path / "config.json"))
    assert by_dir == by_file
    assert count_params(by_dir).total == count_params(resolve_model("qwen2.5-0.5b")).total


def test_malformed_config_reports_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "llama",\n  "hidden_size": 4096,,\n}')
    with pytest.raises(ModelConfigError) as err:
        resolve_model(str(path))
    assert "line 3" in err.value.message


def test_unsupported_model_type(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    with pytest.raises(ModelConfigError) as err:
        resolve_model(str(path))
    assert "bert" in err.value.message and "llama" in err.value.hint


def test_missing_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ModelConfigError, match="num_hidden_layers"):
        resolve_model(str(path))


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UnknownModelError) as err:
        resolve_model("some-org/some-model-7b")
    assert "HF_HUB_OFFLINE" in err.value.message


# --- issue 13: the catalog's 2025-2026 entries (sources: advisor/models/SOURCES.md)
ISSUE_13 = ["qwen3-30b-a3b", "qwen3-235b-a22b", "qwen3-next-80b-a3b-thinking", "qwen3.5-27b", "qwen3.5-35b-a3b",
            "qwen3.5-122b-a10b", "qwen3.5-397b-a17b", "gemma-3-4b-it", "gemma-3-27b-it", "gemma-4-26b-a4b",
            "gpt-oss-20b", "gpt-oss-120b", "phi-4"]


def test_catalog_has_the_issue_13_models():
    assert set(ISSUE_13) <= set(catalog_names())


def _catalog_config(name):
    from advisor.models.catalog import catalog_entries

    return next(entry["config"] for entry in catalog_entries() if entry["name"] == name)


@pytest.mark.parametrize("name", catalog_names())
def test_every_catalog_entry_resolves_or_is_refused_by_type(name):
    """An entry resolves (torch-free reader, or the derived path when torch is installed), or, when no reader
    handles its model type, it is refused with a ModelConfigError that names the type and says what to do:
    never a traceback.  A type that a reader handles must resolve."""
    from advisor.models.hf_config import supported_model_types

    config = _catalog_config(name)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    types = {t for t in (config.get("model_type"), text.get("model_type")) if isinstance(t, str)}
    assert types, f"{name}: the catalog entry has no model_type"
    try:
        arch = resolve_model(name)
    except ModelConfigError as err:
        handled = types & set(supported_model_types())
        assert not handled, f"{name}: {sorted(handled)} has a reader, yet the entry was refused: {err.message}"
        assert any(t in err.message for t in types), err.message
        assert err.hint
        return
    assert count_params(arch).total > 0
