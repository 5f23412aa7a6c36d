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
