"""The CLI as a user and a script see it: exit codes, one-line errors, the JSON contract."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from advisor.cli import main
from advisor.schema import HERE as SCHEMA_DIR, schema_text

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "advisor", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)


def test_estimate_json_contract():
    proc = run("estimate", "--json", "--model", "llama-3.1-8b", "--method", "qlora", "--seq-len", "2048", "--vram", "24GiB")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document
    assert doc["schema_version"] == 1
    assert doc["model"]["name"] == "llama-3.1-8b" and doc["model"]["params"] == 8_030_261_248
    assert 0 < doc["model"]["trainable_params"] < doc["model"]["params"] // 100
    assert doc["peak_allocated_bytes"] <= doc["peak_reserved_bytes"] <= doc["peak_device_bytes"]
    assert set(doc["phases"]) == {"forward", "backward", "optimizer"}
    names = {c["name"] for c in doc["components"]}
    assert {"weights", "quantized", "adapters", "activations", "logits_loss", "optimizer_states"} <= names
    assert doc["fits"] == (doc["peak_device_bytes"] <= 24 * 2**30)
    assert doc["headroom_bytes"] == 24 * 2**30 - doc["peak_device_bytes"]
    assert proc.stderr == ""


@pytest.mark.parametrize("command", [["estimate", "--json", "--model", "qwen2.5-7b"],
                                     ["--json", "--model", "llama-2-7b", "--gpu", "rtx4090"]])
def test_json_path_never_imports_torch_or_textual(command):
    code = ("import sys, io, contextlib; from advisor.cli import main; "
            "out = io.StringIO()\n"
            f"with contextlib.redirect_stdout(out): rc = main({command!r})\n"
            "assert rc == 0; heavy = [m for m in ('torch', 'textual', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readable_table_and_rank_sweep():
    proc = run("estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--grad-ckpt")
    assert proc.returncode == 0
    assert "saved activations" in proc.stdout and "logits and loss" in proc.stdout and "phase peaks" in proc.stdout
    sweep = run("estimate", "--json", "--model", "llama-3.1-8b", "--method", "lora", "--rank", "4,8,16,32,64")
    rows = json.loads(sweep.stdout)["ranks"]
    assert [r["rank"] for r in rows] == [4, 8, 16, 32, 64]
    params = [r["adapter_params"] for r in rows]
    assert params == [params[0] * k for k in (1, 2, 4, 8, 16)]  # LoRA params are linear in r
    peaks = [r["peak_allocated_bytes"] for r in rows]
    assert peaks == sorted(peaks) and peaks[-1] < 1.2 * peaks[0]  # rank barely moves memory


@pytest.mark.parametrize("args,flag", [
    (["--rank", "0"], "--rank"),
    (["--seq-len", "-1"], "--seq-len"),
    (["--optimizer", "adam9000"], "--optimizer"),
    (["--offload", "optimizer"], "--offload"),
    (["--zero", "3", "--fsdp"], "--fsdp"),
    (["--targets", "q_proj,bogus_proj"], "bogus_proj"),
    (["--vram", "lots"], "lots"),
    (["--method", "qlora", "--precision", "fp32"], "--precision"),
])
def test_bad_flags_exit_2_with_one_line(args, flag, capsys):
    rc = main(["estimate", "--model", "llama-3.1-8b", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "hint:" in err
    assert flag in err
    assert "Traceback" not in err


def test_unknown_model_names_nearest(capsys):
    assert main(["estimate", "--json", "--model", "qwen-2.5-7"]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["error"].startswith("unknown model") and "qwen2.5-7b" in doc["hint"]


def test_bad_flag_for_the_app_exits_2_before_it_starts(capsys):
    # no command opens the interactive app; its flags are checked first
    assert main(["--seq-len", "0"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_models_list():
    proc = run("models", "--json")
    models = json.loads(proc.stdout)["models"]
    assert len(models) >= 25 and any(m["name"] == "gemma-2-27b" for m in models)
    # every entry is listed, torch-free ones with their size, the rest saying estimate derives or refuses them
    by_name = {m["name"]: m for m in models}
    assert by_name["qwen3-30b-a3b"]["estimated"] == "torch-free" and by_name["qwen3-30b-a3b"]["params"] > 30e9
    assert by_name["qwen3-next-80b-a3b-thinking"]["estimated"] == "torch-free"
    assert by_name["nemotron-3-nano-30b-a3b"]["estimated"] == "derived-or-refused" \
        and "params" not in by_name["nemotron-3-nano-30b-a3b"]
    text = run("models")
    assert text.returncode == 0 and "nemotron-3-nano-30b-a3b" in text.stdout and "gpt-oss-20b" in text.stdout


@pytest.mark.parametrize("name", ["limits", "verify", "plan", "estimate", "rank-sweep", "gpus", "error"])
def test_published_schema_is_current(name):
    assert (SCHEMA_DIR / f"{name}.schema.json").read_text() == schema_text(name), \
        "run `python -m advisor.schema` and commit the result"


def test_installed_console_script(tmp_path):
    """The wheel carries its data (catalog, schemas): run the installed script away from the checkout."""
    import shutil

    script = shutil.which("lora-advisor", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("lora-advisor is not installed in this environment")
    proc = subprocess.run([script, "estimate", "--json", "--model", "gemma-2-2b"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"]["name"] == "gemma-2-2b"
