"""The FSDP terms of the memory model against the sharded oracle: one rank of a real FSDP2 job
(torch.distributed.fsdp.fully_shard per decoder layer, then the root) traced on fake CPU tensors under
PyTorch's fake process group.  Every phase peak of the rank must agree within 3 %.

Shapes: TinyLlama's widths (untied embeddings, GQA) and Llama 3.2's (tied, 128k vocabulary) with 3-4 layers,
so the matrix runs in seconds.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch.distributed as dist  # noqa: E402

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from advisor.memory import TrainConfig  # noqa: E402
from advisor.models import resolve_model  # noqa: E402
from advisor.verify.sharded import run_sharded_dry  # noqa: E402


def _arch(name: str, layers: int, **update):
    return resolve_model(name).model_copy(update={"num_layers": layers, **update})


def test_oracle_sees_the_sharding():
    """Sanity of the oracle itself: a rank of 4 holds half the model states of a rank of 2, and the
    all-gathered layer makes the forward peak larger than the sharded states alone."""
    arch = _arch("tinyllama-1.1b", 2)
    two = run_sharded_dry(arch, TrainConfig(method="full", seq_len=128, fsdp=True, gpus=2))
    four = run_sharded_dry(arch, TrainConfig(method="full", seq_len=128, fsdp=True, gpus=4))
    assert abs(two.steady_bytes - 2 * four.steady_bytes) <= 2 * 512 * 64  # rounding of ~64 tensors
    assert four.phase_peaks["forward"] < two.phase_peaks["forward"]
    assert two.phase_peaks["forward"] > two.steady_bytes + 2**20


def test_shards_are_padded_to_the_world_size():
    """FSDP2 pads dim 0 of every parameter to a multiple of the world size: a vocabulary of 32003 rows
    costs each of 4 ranks ceil(32003 / 4) = 8001 rows of embedding and lm_head."""
    base = run_sharded_dry(_arch("tinyllama-1.1b", 1), TrainConfig(method="full", seq_len=64, fsdp=True, gpus=4))
    odd = run_sharded_dry(_arch("tinyllama-1.1b", 1, vocab_size=32003),
                          TrainConfig(method="full", seq_len=64, fsdp=True, gpus=4))
    row = 2048 * 2  # bf16 row of the embedding / lm_head
    assert odd.weights_bytes - base.weights_bytes == 2 * row  # one more row on each of the two matrices


TOLERANCE = 0.03

# (model, layers, arch overrides, settings): full fine-tuning and LoRA, 2 and 4 ranks, with and without
# checkpointing; Llama 3.2's tied 128k embedding; a vocabulary that does not divide by the world size
CASES = [
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=512, gpus=2)),
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=512, gpus=4, grad_ckpt=True)),
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=1024, gpus=4)),
    ("tinyllama-1.1b", 4, {}, dict(method="full", seq_len=1024, gpus=2, grad_ckpt=True, optimizer="sgd")),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", seq_len=512, gpus=2)),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", seq_len=1024, gpus=4)),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", seq_len=1024, gpus=4, grad_ckpt=True)),
    ("tinyllama-1.1b", 4, {}, dict(method="lora", targets=("q,v",), rank=8, seq_len=512, micro_batch=2, gpus=2,
                                   grad_ckpt=True)),
    ("llama-3.2-1b", 3, {}, dict(method="full", seq_len=512, gpus=2)),
    ("llama-3.2-1b", 3, {}, dict(method="lora", seq_len=512, gpus=4, grad_ckpt=True)),
    ("tinyllama-1.1b", 3, {"vocab_size": 32003}, dict(method="full", seq_len=512, gpus=4)),
    ("tinyllama-1.1b", 3, {"vocab_size": 32003}, dict(method="lora", rank=6, seq_len=512, gpus=4)),
]


@pytest.mark.parametrize("name,layers,update,settings", CASES,
                         ids=[f"{n}-{s['method']}-{s['gpus']}gpu-{i}" for i, (n, _, _, s) in enumerate(CASES)])
def test_every_phase_peak_of_a_rank_within_three_percent(name, layers, update, settings):
    from advisor.memory import estimate
    from advisor.verify.dryrun import PHASES

    arch = _arch(name, layers, **update)
    cfg = TrainConfig(fsdp=True, **settings)
    oracle = run_sharded_dry(arch, cfg)
    est = estimate(arch, cfg)
    assert oracle.trainable_params == est.trainable_params
    for phase in PHASES:
        measured, predicted = oracle.phase_peaks[phase], getattr(est.phases, phase)
        assert abs(predicted - measured) / measured <= TOLERANCE, (
            f"{phase}: estimate {predicted / 2**20:.1f} MiB vs oracle {measured / 2**20:.1f} MiB "
            f"(peak at {oracle.peak_ops[phase]})")
