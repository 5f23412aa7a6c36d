"""The throughput model against published throughput (../shared/data/public-throughput.csv).

    python benchmarks/throughput_accuracy.py            # evaluate advisor/throughput.py's constants, write results
    python benchmarks/throughput_accuracy.py --fit      # refit the four fitted constants on the training rows, print them

Every row that maps onto (architecture, TrainConfig, GPU) is compared; every other row is listed with the reason.

Two kinds of rows:
* **absolute**: the row gives tokens/s per GPU (``tokens_per_s_per_gpu``).  Error = estimate / measured - 1.
* **relative**: the row gives samples/s, minutes per 1k iterations or a run's wall time on a fixed data set
  whose token count is unknown (ms-swift, LitGPT).  Within one group (same source, model, data set and
  length cap) the number is proportional to tokens/s, so these rows only enter the pair ordering.  The
  estimate for them needs a tokens-per-sample figure: ms-swift's data set is described as 3234 +- 2548 tokens
  and samples over max_length are dropped, so a log-normal with that mean and spread truncated at max_length
  gives the mean kept length; LitGPT's Alpaca samples are taken as 256 tokens (truncated to 512 in the
  config hub).  Both are the same for both rows of a pair.

**Held out.**  Rows with ``row_id % 3 == 0`` are never fitted on (a deterministic split across sources,
methods and sizes: every source with three or more mapped rows has some held out), and all relative rows
are held out too (nothing is fitted on them).  The done-when metrics (MAPE <= 20 %, pairs ordered as measured
>= 90 %) are read on the held-out rows.  The fit (a coordinate search in log space) minimises the squared log
error of the training rows, each source weighted equally (MosaicML's 209 rows would otherwise decide
everything); it fits GEMM_EFFICIENCY, ATTENTION_EFFICIENCY, STEP_OVERHEAD_S and HOPPER_PEAK_SHARE, every other
constant of advisor/throughput.py is set by its stated reason.  Caveat: 70 of the 75 held-out absolute rows
are MosaicML's pretraining runs (full training under FSDP); the fine-tuning sources have few absolute rows,
so their per-source lines below say more about fine-tuning than the pooled MAPE does.

Not modelled, so not mapped: torch.compile, Unsloth's kernels, Transformer Engine FP8, tensor / pipeline
parallelism, activation offloading, padding of unpacked variable-length batches larger than one sequence.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import default_path, write_result  # noqa: E402
from advisor import throughput as tp  # noqa: E402
from advisor.memory import TrainConfig  # noqa: E402
from advisor.memory.estimate import peaks  # noqa: E402
from advisor.models import ModelArch, resolve_model  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "public-throughput.csv"
FITTED = ("GEMM_EFFICIENCY", "ATTENTION_EFFICIENCY", "STEP_OVERHEAD_S", "HOPPER_PEAK_SHARE")

GPUS = {"A100": "A100 80GB", "A100-80GB": "A100 80GB", "A100-SXM4-80GB": "A100 80GB", "A100-40GB": "A100 40GB",
        "A100-SXM4-40GB": "A100 40GB", "H100-SXM5-80GB": "H100 SXM", "H100-80GB": "H100 SXM",
        "H100-96GB-HBM2e-500W (Grand Teton)": "H100 SXM", "RTX 4090": "RTX 4090", "A10G": "A10G", "T4": "T4"}
# the bus bandwidth a collective sees over more than one 8-GPU node, GB/s: NCCL's rings cross the network once per
# node and channel, so it is the node's NIC total (1600 Gbps = 200 GB/s, stated for MosaicML's A100 tables;
# 3200 Gbps assumed for their H100 and torchtitan's clusters; 400 Gbps EFA for the HF blog's p4d nodes)
INTER_NODE = {"llmfoundry_mpt A100": 200.0, "llmfoundry_mpt H100": 400.0, "torchtitan_2024": 400.0, "hf_blog_fsdp70b": 50.0}

MPT = {"125m": (12, 768), "350m": (24, 1024), "760m": (24, 1536), "1b": (24, 2048), "3b": (32, 2560), "7b": (32, 4096),
       "13b": (40, 5120), "30b": (48, 7168), "70b": (80, 8192)}
QWEN1 = {"1.8B": 5504, "7B": 11008, "14B": 13696, "72B": 24576}
CATALOG = {"llama-3.1-8b": "llama-3.1-8b", "llama-3.2-3b": "llama-3.2-3b", "llama-3.2-1b": "llama-3.2-1b",
           "llama-2-7b": "llama-2-7b", "llama-2-13b": "llama-2-13b", "llama-2-70b": "llama-2-70b",
           "llama-3.1-70b": "llama-3.1-70b", "llama-3-70b": "llama-3.1-70b", "llama-3-8b": "llama-3.1-8b",
           "llama-3.1-405b": "llama-3.1-405b", "qwen2.5-7b": "qwen2.5-7b", "tiny-llama-1.1b": "tinyllama-1.1b",
           "phi-3-mini-4k-instruct": "phi-3-mini-4k", "gemma-2-2b": "gemma-2-2b", "gemma-2-9b": "gemma-2-9b",
           "mistral-7b-v0.2": "mistral-7b-v0.3"}


def _arch(name: str, layers: int, hidden: int, inter: int, vocab: int, mlp: str = "gated", tie: bool = False,
          fused_qkv: bool = False, qkv_bias: bool = False, head_dim: int = 128) -> ModelArch:
    heads = max(1, hidden // head_dim)
    return ModelArch(name=name, model_type="synthetic", hidden_size=hidden, num_layers=layers, num_heads=heads,
                     num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=inter, vocab_size=vocab,
                     max_position_embeddings=1 << 17, tie_word_embeddings=tie, mlp_kind=mlp, fused_qkv=fused_qkv,
                     qkv_bias=qkv_bias)


def model_for(row: dict) -> tuple[ModelArch | None, str]:
    name = row["model"]
    if m := re.fullmatch(r"MPT-(\w+)", name):
        layers, hidden = MPT[m.group(1)]
        # MPT: LayerNorm, GELU MLP of 4h, tied embeddings, vocab 50368 (llm-foundry's mpt configs)
        return _arch(name, layers, hidden, 4 * hidden, 50368, mlp="plain", tie=True, head_dim=128 if hidden >= 2048 else 64), ""
    if m := re.fullmatch(r"Qwen-([\d.]+B)", name):
        # Qwen (1): fused c_attn with bias, SwiGLU, vocab 151936, untied
        return _arch(name, int(row["n_layers"]), int(row["d_model"]), QWEN1[m.group(1)], 151936, fused_qkv=True,
                     qkv_bias=True), ""
    key = name.lower()
    if key in CATALOG:
        return resolve_model(CATALOG[key]), ""
    return None, f"no architecture for {name} (not in the catalog, no shapes in the row)"


@dataclass
class Case:
    row: dict
    arch: ModelArch
    cfg: TrainConfig
    effective_batch: int
    perf: tp.GpuPerf
    kind: str  # absolute / relative
    measured: float  # tokens/s per GPU (absolute) or a rate proportional to it within `group`
    group: str
    note: str = ""

    @property
    def held_out(self) -> bool:
        return self.kind == "relative" or int(self.row["row_id"]) % 3 == 0

    @property
    def tokens_bucket(self) -> str:
        t = self.cfg.tokens
        return "<=512" if t <= 512 else "513-2k" if t <= 2048 else "2k-8k" if t <= 8192 else ">8k"


def _int(text: str, default: int | None = None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else default


def _unsupported(row: dict) -> str:
    opts = " ".join([row["framework_and_opts"], row["precision"], row["attention_impl"]]).lower()
    if ("compile" in opts and "compile=false" not in opts) or "(..." in opts:  # torchtune's "(... + x)" rows add to compile
        return "torch.compile (not modelled: the estimate is for eager PyTorch)"
    if "unsloth" in opts:
        return "Unsloth's kernels (not modelled)"
    if "fp8" in opts:
        return "FP8 training (not modelled)"
    if re.search(r"\b(tp|pp)=([2-9]|\d\d)", opts):
        return "tensor / pipeline parallelism (not modelled)"
    if "activation offload" in opts:
        return "activation offloading (not modelled)"
    if "HFU" in row["notes"] and ("exceeds" in row["notes"] or "implausibly" in row["notes"]):
        return "the implied utilisation exceeds the GPU's datasheet peak (the source's own note): mis-measured"
    return ""


def _method(row: dict) -> tuple[str, dict]:
    method = row["method"]
    peft = row["peft_config"].lower()
    extra: dict = {}
    if method != "full":
        m = re.search(r"(?:r=|rank |lora_rank |dim )(\d+)", peft)
        extra["rank"] = int(m.group(1)) if m else 8
        if "all linear" in peft or "all-linear" in peft or "*_proj" in peft or "+ mlp" in peft or ", all" in peft:
            extra["targets"] = ("all-linear",)
        elif "q,k,v" in peft or "qkv" in peft:
            extra["targets"] = ("attention",)
        else:
            extra["targets"] = ("q,v",)
    return method, extra


def _mean_kept_length(cap: int, mean: float = 3234.0, sd: float = 2548.0) -> float:
    """Mean of a log-normal (this mean and sd) truncated at ``cap``: ms-swift drops longer samples."""
    s2 = math.log(1 + (sd / mean) ** 2)
    s, mu = math.sqrt(s2), math.log(mean) - s2 / 2
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    return math.exp(mu + s2 / 2) * phi((math.log(cap) - mu - s2) / s) / phi((math.log(cap) - mu) / s)


def map_row(row: dict) -> tuple[Case | None, str]:
    source, rid = row["source_key"], int(row["row_id"])
    if reason := _unsupported(row):
        return None, reason
    gpu = GPUS.get(row["gpu"])
    if gpu is None:
        return None, f"GPU {row['gpu']!r} not in the catalog"
    arch, why = model_for(row)
    if arch is None:
        return None, why
    perf = tp.gpu_perf(gpu)
    method, extra = _method(row)
    n = _int(row["n_gpus"])
    if n is None:
        return None, "GPU count not stated"
    ckpt = row["grad_ckpt"].strip() == "yes"
    if source == "llamafactory_tgs" and not row["grad_ckpt"].strip():
        ckpt = True  # LLaMA-Factory turns gradient checkpointing on unless told not to
    opts = row["framework_and_opts"]
    if arch.fused_qkv and extra.get("targets") == ("q,v",):
        extra["targets"] = ("qkv_proj",)  # q and v live in one fused projection
    fields: dict = dict(method=method, grad_ckpt=ckpt, gpus=n, **extra)
    if row["precision"].startswith("amp") or "mixed" in row["precision"]:
        fields["master_weights"] = method == "full"
    attn = row["attention_impl"].lower()
    if "eager" in attn:
        fields["attn"] = "eager"
    elif "sdpa" in attn or "flash" in attn or "te " in attn:
        fields["attn"] = "flash" if "flash" in attn else "sdpa"
        if arch.model_type == "gemma2" and fields["attn"] == "sdpa":
            fields["attn"] = "eager"  # transformers has no SDPA path for Gemma 2
    if "8bit" in opts.lower() or "8-bit adamw" in opts.lower():
        fields["optimizer"] = "paged_adamw_8bit" if "paged" in opts.lower() else "adamw_8bit"
    if n > 1:
        if "SHARD_GRAD_OP" in opts:
            fields["zero"] = 2
        elif "fsdp" in opts.lower() or "FSDP" in row["precision"]:
            fields["fsdp"] = True
            if "offload=true" in opts.lower() or "OFFLOAD" in opts:
                fields["offload"] = "params"
        elif "device_map" in opts:
            fields["gpus"] = 1  # naive model parallel: the GPUs take turns, one computes at a time
        else:
            return None, "multi-GPU engine not stated"
    if n > 8 and (key := next((k for k in INTER_NODE if (source + " " + gpu).startswith(k)), None)):
        perf = replace(perf, nvlink_gbs=INTER_NODE[key])
    elif n > 8:
        return None, "multi-node job with an unknown interconnect"
    micro = _int(row["micro_batch_per_gpu"])
    accum = _int(row["grad_accum"], 1)
    seq = _int(row["seq_len"])

    if row["tokens_per_s_per_gpu"].strip():
        if source == "torchtune_readme_flags" and "not packed" in opts:
            return None, "unpacked batches padded to the longest sample (padding not modelled)"
        if source == "hf_blog_fsdp70b":
            return None, "the run's hours include evaluation and checkpoint saving"
        if micro is None or seq is None:
            return None, "micro batch or sequence length not stated"
        if "selective" in row["grad_ckpt"]:
            fields["grad_ckpt"] = False  # per-op selective checkpointing saves the matmuls' outputs: little recompute
        cfg = TrainConfig(seq_len=seq, micro_batch=micro, **fields)
        return Case(row, arch, cfg, micro * cfg.gpus * accum, perf, "absolute", float(row["tokens_per_s_per_gpu"]),
                    f"{source}/{row['model']}"), ""

    if source == "ms_swift_benchmark" and seq and micro:
        if micro > 1:
            return None, "micro batch > 1 of variable-length samples: padding to the longest (not modelled)"
        if "gptq" in row["peft_config"] or "int8" in row["peft_config"]:
            return None, "GPTQ / int8 base (not modelled: the planner's quantized base is bitsandbytes NF4)"
        if "ALL" in row["peft_config"]:
            fields["targets"] = ("all-linear",)
        m = re.match(r"\s*([\d.]+)", row["published_value"])
        length = int(_mean_kept_length(seq))
        cfg = TrainConfig(seq_len=length, micro_batch=1, **fields)
        return Case(row, arch, cfg, cfg.gpus * accum, perf, "relative", float(m.group(1)),
                    f"{source}/{row['model']}/max {seq}", f"mean kept length {length}"), ""
    if source in ("litgpt_resource_tables", "litgpt_config_hub") and micro:
        m = re.match(r"\s*([\d.]+)", row["published_value"])
        value = float(m.group(1))
        length = 256
        if source == "litgpt_resource_tables":
            rate = micro / value  # sequences per minute per GPU-set: 1k iterations of `micro` sequences
            rate /= max(1, n)
            group = f"{source}/{row['model']}/{n} GPU"
        else:
            epochs = re.search(r"for (\d+) epoch", row["published_unit"])
            rate = int(epochs.group(1)) / value  # epochs of Alpaca2k per minute
            group = f"{source}/{row['model']}"
        cfg = TrainConfig(seq_len=length, micro_batch=micro, **fields)
        return Case(row, arch, cfg, micro * cfg.gpus * (accum or 1), perf, "relative", rate, group,
                    "Alpaca ~256 tokens/sample assumed"), ""
    return None, row["tokens_per_s_derivation"] or "no tokens/s and no comparable rate"


_PEAKS: dict[int, object] = {}


def estimate(case: Case) -> float:
    """Tokens/s per GPU."""
    est = _PEAKS.get(id(case)) or _PEAKS.setdefault(id(case), peaks(case.arch, case.cfg, None))
    return tp.throughput(case.arch, case.cfg, est, case.effective_batch, case.perf).tokens_per_s / case.cfg.gpus


def _errors(cases: list[Case]) -> list[float]:
    return [estimate(c) / c.measured - 1 for c in cases]


def _summary(errors: list[float]) -> str:
    if not errors:
        return "-"
    return (f"{len(errors)} rows, MAPE {100 * statistics.fmean(abs(e) for e in errors):.1f} %, "
            f"median {100 * statistics.median(errors):+.1f} %")


def pair_ordering(cases: list[Case]) -> tuple[int, int]:
    """Same-model pairs (same group) with measured throughputs >= 3 % apart: how many the estimate orders alike."""
    by_group: dict[str, list[tuple[float, float]]] = {}
    for c in cases:
        by_group.setdefault(c.group, []).append((c.measured, estimate(c)))
    good = total = 0
    for rows in by_group.values():
        for i in range(len(rows)):
            for j in range(i + 1, len(rows)):
                (m1, e1), (m2, e2) = rows[i], rows[j]
                if abs(m1 / m2 - 1) < 0.03:
                    continue  # a tie as measured: no order to get right
                total += 1
                good += (m1 > m2) == (e1 > e2)
    return good, total


def fit(train: list[Case]) -> dict[str, float]:
    """Coordinate search in log space (no SciPy needed): each constant in turn is multiplied by the factor of a
    shrinking set that lowers the loss most; the loss is the squared log error, each source weighted equally."""
    weights: dict[str, float] = {}
    for c in train:
        weights[c.row["source_key"]] = weights.get(c.row["source_key"], 0) + 1

    def loss() -> float:
        return sum(math.log(estimate(c) / c.measured) ** 2 / weights[c.row["source_key"]] for c in train)

    best = loss()
    for step in (1.0, 0.5, 0.25, 0.12, 0.06, 0.03, 0.015):
        improved = True
        while improved:
            improved = False
            for name in FITTED:
                here = getattr(tp, name)
                for factor in (math.exp(step), math.exp(-step)):
                    setattr(tp, name, here * factor)
                    value = loss()
                    if value < best - 1e-9:
                        best, here, improved = value, here * factor, True
                    setattr(tp, name, here)
    return {name: getattr(tp, name) for name in FITTED}


def table(cases: list[Case], key) -> list[str]:
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(key(c), []).append(c)
    return [f"| {name} | {_summary(_errors(group))} |" for name, group in sorted(groups.items())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--fit", action="store_true", help="refit the constants on the training rows and print them")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = list(csv.DictReader(args.csv.open(encoding="utf-8")))
    cases, skipped = [], []
    for row in rows:
        case, why = map_row(row)
        (cases.append(case) if case else skipped.append((row, why)))
    absolute = [c for c in cases if c.kind == "absolute"]
    train = [c for c in absolute if not c.held_out]
    held = [c for c in absolute if c.held_out]
    if args.fit:
        fitted = fit(train)
        for name, value in fitted.items():
            print(f"{name} = {value:.4g}")
    lines = ["## Constants", "", ", ".join(f"{n} = {getattr(tp, n):.4g}" for n in FITTED), ""]
    ho_err, tr_err = _errors(held), _errors(train)
    good, total = pair_ordering(held + [c for c in cases if c.kind == "relative"])
    tgood, ttotal = pair_ordering(train)
    agood, atotal = pair_ordering(cases)
    q = statistics.quantiles([e + 1 for e in ho_err], n=10) if len(ho_err) > 2 else [1, 1]
    lines += ["## Done-when metrics (held-out rows: row_id % 3 == 0 of the absolute rows; all relative rows for pairs)", "",
              f"- held out, absolute: {_summary(ho_err)}",
              f"- held out, pairs ordered as measured: {good} of {total} ({100 * good / max(total, 1):.1f} %)",
              f"- held out, estimate / measured 10th-90th percentile: {q[0]:.2f} - {q[-1]:.2f}",
              f"- training rows: {_summary(tr_err)}; pairs {tgood} of {ttotal} ({100 * tgood / max(ttotal, 1):.1f} %)",
              f"- all mapped rows: {_summary(tr_err + ho_err)}; pairs {agood} of {atotal} ({100 * agood / max(atotal, 1):.1f} %)",
              f"- mapped: {len(absolute)} absolute, {len(cases) - len(absolute)} relative, of {len(rows)} rows", ""]
    lines += ["### Pairs ordered as measured, by source (held-out absolute rows and all relative rows)", "",
              "| source | pairs ordered as measured |", "|---|---|"]
    for source in sorted({c.row["source_key"] for c in cases}):
        subset = [c for c in held + [c for c in cases if c.kind == "relative"] if c.row["source_key"] == source]
        sgood, stotal = pair_ordering(subset)
        if stotal:
            lines.append(f"| {source} | {sgood} of {stotal} ({100 * sgood / stotal:.0f} %) |")
    lines.append("")
    for title, key in (("source", lambda c: c.row["source_key"]), ("method", lambda c: c.cfg.method),
                       ("tokens per micro batch", lambda c: c.tokens_bucket)):
        for name, subset in (("held out", held), ("all absolute", absolute)):
            lines += [f"### By {title}, {name}", "", f"| {title} | error |", "|---|---|", *table(subset, key), ""]
    lines += ["## Absolute rows", "", "| row | held out | source | model | setup | GPU | measured tok/s/GPU | estimate | error % |",
              "|---:|:-:|---|---|---|---|---:|---:|---:|"]
    for c in absolute:
        e = estimate(c)
        lines.append(f"| {c.row['row_id']} | {'yes' if c.held_out else ''} | {c.row['source_key']} | {c.row['model']} | "
                     f"{c.cfg.method} seq {c.cfg.seq_len} mb {c.cfg.micro_batch} x{c.cfg.gpus} {c.cfg.sharding}"
                     f"{' ckpt' if c.cfg.grad_ckpt else ''} | {c.perf.name} | {c.measured:,.0f} | {e:,.0f} | "
                     f"{100 * (e / c.measured - 1):+.1f} |")
    lines += ["", "## Not mapped", "", "| row | source | model | why |", "|---:|---|---|---|"]
    lines += [f"| {r['row_id']} | {r['source_key']} | {r['model']} | {why} |" for r, why in skipped]
    body = "\n".join(lines)
    print("\n".join(lines[:14]))
    if not args.fit:
        path = write_result(args.out or default_path("throughput"), "Throughput estimate against published runs", body,
                            f"; data: {args.csv.name}")
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
