"""The file a user trains with is the configuration the estimate was for, over many random configurations:
every YAML an export writes (TRL, axolotl, LLaMA-Factory) reads back, through `estimate --from`, to the
peak its own header quotes.  The header is the estimate of what that format trains (TRL's stack, the
format's loss kernel and packing), so a key written one way and read another shows up as a difference."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advisor import core
from advisor.cli import main
from advisor.errors import AdvisorError

YAMLS = ("trl_sft.yaml", "axolotl.yaml", "llamafactory.yaml")
MODELS = ["llama-3.2-1b", "qwen2.5-0.5b", "gemma-2-2b", "qwen3-30b-a3b", "phi-3-mini-4k", "gemma-3-4b-it",
          "gpt-oss-20b", "qwen3.5-9b", "qwen3-next-80b-a3b-thinking", "mixtral-8x7b-v0.1"]
GPUS = ["4090", "t4", "a100-80gb", "h100"]

configs = st.fixed_dictionaries({
    "method": st.sampled_from(["full", "lora", "qlora", "lora8bit"]),
    "rank": st.sampled_from([8, 16, 64]),
    "targets": st.sampled_from([("all-linear",), ("attention",), ("q_proj", "v_proj")]),
    "seq_len": st.sampled_from([512, 2048, 8192]),
    "micro_batch": st.integers(1, 4),
    "grad_ckpt": st.booleans(),
    "optimizer": st.sampled_from(["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"]),
    "attn": st.sampled_from(["auto", "flash", "sdpa", "eager"]),
    "loss": st.sampled_from(["standard", "chunked"]),
    "lengths": st.sampled_from(["fixed", "variable"]),
    "lora_dropout": st.sampled_from([0.0, 0.05]),
    "double_quant": st.booleans(),
    "quant_type": st.sampled_from(["nf4", "fp4"]),
    "train_embeddings": st.booleans(),
}, optional={"sharding": st.sampled_from([{"zero": 2}, {"zero": 3}, {"fsdp": True}, {"zero": 3, "offload": "optimizer"},
                                          {"zero": 3, "offload": "params"}, {"fsdp": True, "offload": "params"}])})


def _header_peak(text: str) -> str:
    line = next(line for line in text.splitlines() if "predicted peak per GPU" in line)
    return line.split("predicted peak per GPU: ")[1].split(" GiB")[0]


@settings(max_examples=int(os.environ.get("ROUND_TRIP_EXAMPLES", 80)), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(model=st.sampled_from(MODELS), gpu=st.sampled_from(GPUS), gpus=st.sampled_from([1, 2, 4]), fields=configs)
def test_every_yaml_reads_back_to_the_peak_its_header_quotes(tmp_path_factory, capsys, model, gpu, gpus, fields):
    fields = dict(fields)
    if fields["method"] == "full":
        fields.update(targets=("all-linear",), train_embeddings=False, lora_dropout=0.0)
    fields.update(fields.pop("sharding", {}))
    if gpus == 1:
        fields.pop("fsdp", None)
    fields["precision"] = "fp16" if gpu == "t4" else "bf16"
    try:
        sel = core.configure(core.ConfigRequest(model=model, config={**fields, "gpus": gpus},
                                                hardware=core.GpuRequest(gpu=gpu), effective_batch=16,
                                                calibration=False))
        files, _, written = core.render_export(sel, ("all",), allow_no_fit=True)
    except AdvisorError:
        return  # a combination the tool refuses (with its reason: tested elsewhere) writes nothing to read back
    out = tmp_path_factory.mktemp("export")
    for name, text in files.items():
        (out / name).write_text(text)
    for name in YAMLS:
        if name not in files:
            continue
        capsys.readouterr()
        code = main(["estimate", "--json", "--from", str(out / name), "--gpu", gpu, "--gpus", str(gpus),
                     "--no-calibration"])
        captured = capsys.readouterr()
        assert code == 0, (name, fields, captured.err)
        back = json.loads(captured.out)
        assert f"{back['peak_device_bytes'] / 2**30:.2f}" == _header_peak(files[name]), (name, fields, back["config"])
        assert back["config"]["method"] == sel.cfg.method, name
        assert "not modelled" not in captured.err, (name, captured.err)
