"""What a CUDA process holds outside PyTorch's allocator, stage by stage, on the real card.

    python3 benchmarks/gpu_context.py [--out FILE]

The memory model's device level is reserved + CUDA context (advisor/memory/overheads.py).  This reads
the context on the card at hand: NVML's used memory of GPU 0 minus what the caching allocator reserved,
after each thing a training step brings in (the bare context, cuBLAS / cuBLASLt handles and workspaces, the
SDPA / flash kernels, autograd's backward thread, the optimizer's foreach kernels).  One JSON object per
stage on stdout (and in FILE), then a table on stderr.  Needs torch with CUDA and nvidia-ml-py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

MiB = 2**20


def distributed_stages(torch, stage) -> None:
    """FSDP and DeepSpeed start a NCCL process group even on one GPU.  On the H200 (2026-12-04c) a job under
    FSDP2 held 545 MiB more outside PyTorch's allocator than the same job without it, and under DeepSpeed
    926 MiB more: these stages say which step of the stack's start-up takes it."""
    import os

    import torch.distributed as dist

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(key, value)
    dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    stage("NCCL process group, world size 1 (init, eager with device_id)")
    flat = torch.ones(1 << 20, device="cuda")
    dist.all_reduce(flat)
    stage("all_reduce")
    out = torch.empty_like(flat)
    dist.all_gather_into_tensor(out, flat)
    dist.reduce_scatter_tensor(out, flat)
    stage("all_gather + reduce_scatter")
    group = dist.new_group([0])
    dist.all_reduce(flat, group=group)
    stage("a second group (new_group + all_reduce)")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        dist.all_reduce(flat)
        (flat[:4096].view(64, 64) @ flat[:4096].view(64, 64)).sum()
    torch.cuda.synchronize()
    stage("a collective and a matmul on a side stream")
    try:
        import deepspeed
    except ImportError:
        return
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.SiLU(), torch.nn.Linear(1024, 1024))
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                    "reduce_bucket_size": 1 << 20}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
    stage("DeepSpeed ZeRO-2 engine (tiny model)")
    loss = engine(torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    stage("DeepSpeed ZeRO-2 step")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON lines here")
    parser.add_argument("--distributed", action="store_true",
                        help="then what a distributed stack adds on one GPU: NCCL's process group and its "
                             "collectives, a second group, a DeepSpeed ZeRO-2 engine (when deepspeed is installed)")
    args = parser.parse_args()
    import pynvml
    import torch

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        print(f"error: no NVIDIA driver here ({exc}) (hint: run this on the GPU machine, e.g. through "
              "benchmarks/gpu_check.sh)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: this torch has no CUDA (hint: a CUDA build of torch, on the GPU machine)", file=sys.stderr)
        return 2
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)  # CUDA device 0 when CUDA_VISIBLE_DEVICES is unset

    def used() -> int:
        time.sleep(0.2)  # NVML's reading trails the driver by a moment
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used

    rows = []
    baseline = used()

    def stage(name: str) -> None:
        torch.cuda.synchronize()
        now = used()
        reserved = torch.cuda.memory_reserved()
        rows.append({"stage": name, "nvml_used_bytes": now, "baseline_bytes": baseline, "reserved_bytes": reserved,
                     "allocated_bytes": torch.cuda.memory_allocated(),
                     "outside_torch_bytes": now - baseline - reserved})

    torch.zeros(1, device="cuda")
    stage("context (first tensor)")
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()
    stage("bf16 matmul (cuBLAS handle + workspace)")
    x = torch.randn(2, 4096, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    torch.nn.functional.linear(x, w.weight).sum().item()
    stage("bf16 batched linear (cuBLASLt)")
    q = torch.randn(1, 32, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    out.sum().backward()
    stage("SDPA forward + backward (flash kernels, autograd thread)")
    model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.SiLU(), torch.nn.Linear(4096, 4096)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(torch.randn(8, 512, 4096, device="cuda")).float().pow(2).mean()
    loss.backward()
    optimizer.step()
    stage("autocast MLP step + AdamW (foreach kernels)")
    del a, x, w, q, out, model, optimizer, loss
    torch.cuda.empty_cache()
    stage("after empty_cache")
    if args.distributed:
        try:
            distributed_stages(torch, stage)
        except Exception as exc:  # keep the stages read so far
            rows.append({"stage": f"stopped: {type(exc).__name__}: {exc}"[:200], "nvml_used_bytes": used(),
                         "baseline_bytes": baseline, "reserved_bytes": torch.cuda.memory_reserved(),
                         "allocated_bytes": torch.cuda.memory_allocated(), "outside_torch_bytes": 0})
    meta = {"gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "driver": pynvml.nvmlSystemGetDriverVersion(), "module_loading": __import__("os").environ.get(
                "CUDA_MODULE_LOADING", "(unset: LAZY by default)")}
    lines = [json.dumps({**row, **meta}) for row in rows]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as handle_out:
            handle_out.write("\n".join(lines) + "\n")
    print(f"{'stage':58} {'used-base MiB':>14} {'reserved MiB':>13} {'outside MiB':>12}", file=sys.stderr)
    for row in rows:
        print(f"{row['stage']:58} {(row['nvml_used_bytes'] - baseline) / MiB:14.0f} {row['reserved_bytes'] / MiB:13.0f} "
              f"{row['outside_torch_bytes'] / MiB:12.0f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
