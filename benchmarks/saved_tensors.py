"""Which tensors one decoder layer saves for the backward, on this device: a diagnostic for the oracle.

    python3 benchmarks/saved_tensors.py --device cuda|cpu [--model llama-3.2-3b] [--method qlora] [--seq-len 256]
                                        [--grad-ckpt] [--out FILE]

The fake-tensor oracle traces the step on the CPU; where a kernel saves different tensors on CUDA (a fused
norm, an attention kernel, a bitsandbytes path), the oracle and the estimate read differently from a real
GPU.  This trains one step of the model cut to two layers and lists, per module of the first decoder layer,
the tensors autograd saves (torch.autograd.graph.saved_tensors_hooks: dtype, shape, bytes per token), so the
two devices' lists can be put side by side.  It lists tensors, not storages: Llama-3.2-3B QLoRA read the same
lists on both devices, but on the CPU each adapted module saved its own copy of the input where the GPU shared
one (PEFT's bitsandbytes branch on ``torch.is_autocast_enabled()``; benchmarks/memory_trace.py showed it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def saved_by_module(model_name: str, method: str, seq_len: int, grad_ckpt: bool, device: str) -> list[dict]:
    import torch

    from advisor.memory import TrainConfig
    from advisor.models import resolve_model
    from advisor.verify.build import autocast_dtype, build_on_meta, materialize_random, prepare_quantization

    arch = resolve_model(model_name).model_copy(update={"num_layers": 2})
    cfg = TrainConfig(method=method, seq_len=seq_len, grad_ckpt=grad_ckpt, attn="sdpa")
    torch.manual_seed(0)
    prepare_quantization(cfg)
    model = build_on_meta(arch, cfg)

    materialize_random(model, cfg, device)
    model.train()
    where: list[str] = ["(outside)"]
    rows: list[dict] = []
    layer0 = next(name for name, _ in model.named_modules() if name.endswith("layers.0"))
    for name, module in model.named_modules():
        if name.startswith(layer0):
            module.register_forward_pre_hook(lambda m, a, name=name: where.append(name))  # returns None
            module.register_forward_hook(lambda m, a, o: where.pop() and None)  # None: keep the output

    def pack(tensor):
        if where[-1] != "(outside)" and tensor.is_floating_point():
            per_token = tensor.numel() * tensor.element_size() / seq_len
            rows.append({"module": where[-1][len(layer0):] or "(layer)", "dtype": str(tensor.dtype).split(".")[-1],
                         "shape": list(tensor.shape), "bytes_per_token": per_token,
                         "is_parameter": isinstance(tensor, torch.nn.Parameter)})
        return tensor

    ids = torch.randint(0, arch.vocab_size, (1, seq_len), device=device)
    dtype = autocast_dtype(cfg)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--model", default="llama-3.2-3b")
    parser.add_argument("--method", default="qlora", choices=("lora", "qlora", "full"))
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.seq_len < 1:
        print(f"error: --seq-len {args.seq_len} (hint: a whole number of tokens, 1 or more)", file=sys.stderr)
        return 2
    from advisor.errors import AdvisorError

    try:
        rows = saved_by_module(args.model, args.method, args.seq_len, args.grad_ckpt, args.device)
    except AdvisorError as err:
        print(f"error: {err.message} (hint: {err.hint})", file=sys.stderr)
        return 2

    per_token = sum(r["bytes_per_token"] for r in rows if not r["is_parameter"])
    for row in rows:
        print(f"{row['module']:40s} {row['dtype']:9s} {str(row['shape']):22s} {row['bytes_per_token']:10.0f}"
              + (" (parameter)" if row["is_parameter"] else ""))
    print(f"first layer, saved per token (parameters aside): {per_token:.0f} B")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
