"""PyTorch's CUDA caching allocator, replayed: what `torch.cuda.memory_reserved()` reaches for a sequence of
allocations and frees.

Reserved minus allocated is fragmentation, and it is not a fixed share of the peak: on an H200 the same
Llama-3.2-1B LoRA step held 14 % more than it allocated at 512 tokens with checkpointing and 4 % more in full
fine-tuning (benchmarks/results/gpu-h200-2026-12-04).  It follows from the order and sizes of the step's
allocations, which the oracle (advisor/verify/dryrun.py) traces; this module plays them through the
allocator's rules with its default settings (no ``PYTORCH_CUDA_ALLOC_CONF``), one stream.

The rules, from c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.x):
- a request is rounded up to a multiple of 512 B (``round_size``, kMinBlockSize);
- requests up to 1 MiB (kSmallSize) use the small pool, larger ones the large pool;
- a new segment (cudaMalloc) is 2 MiB for the small pool (kSmallBuffer), 20 MiB for requests under 10 MiB
  (kLargeBuffer, kMinLargeAlloc), else the request rounded up to 2 MiB (kRoundLarge): ``get_allocation_size``;
- a request takes the smallest free block of its pool that fits, lowest address first among equal sizes
  (``get_free_block``: ``pool.blocks.lower_bound`` under BlockComparatorSize);
- the block is split when the rest is at least 512 B (small pool) or more than 1 MiB (large pool):
  ``should_split``; an unsplit rest stays inside the allocated block (and counts as allocated);
- a freed block merges with free neighbours of its own segment (``try_merge_blocks``); segments are never
  returned to the driver without ``empty_cache()`` or an out-of-memory retry.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

MIN_BLOCK = 512
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def round_size(size: int) -> int:
    return MIN_BLOCK if size < MIN_BLOCK else (size + MIN_BLOCK - 1) // MIN_BLOCK * MIN_BLOCK


def allocation_size(size: int) -> int:
    """The segment cudaMalloc'ed for a request no cached block can serve."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return (size + ROUND_LARGE - 1) // ROUND_LARGE * ROUND_LARGE


@dataclass(eq=False)
class _Block:
    addr: int
    size: int
    small: bool
    allocated: bool = False
    prev: "_Block | None" = field(default=None, repr=False)
    next: "_Block | None" = field(default=None, repr=False)


class CachingAllocator:
    """One device, one stream, default settings.  ``malloc(size)`` returns a handle for ``free(handle)``;
    ``allocated`` / ``reserved`` and their peaks read like torch.cuda's statistics."""

    def __init__(self) -> None:
        self._free: dict[bool, list[tuple[int, int, _Block]]] = {True: [], False: []}  # (size, addr) order
        self._next_addr = itertools.count(0x7F0000000000, 1 << 40).__next__  # segments never touch
        self.allocated = self.reserved = 0
        self.peak_allocated = self.peak_reserved = 0

    def reset_peaks(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def malloc(self, size: int) -> _Block:
        size = round_size(size)
        small = size <= SMALL_SIZE
        pool = self._free[small]
        at = bisect.bisect_left(pool, (size, -1))
        if at < len(pool):
            block = pool.pop(at)[2]
        else:
            segment = allocation_size(size)
            block = _Block(self._next_addr(), segment, small)
            self.reserved += segment
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        rest = block.size - size
        if rest >= MIN_BLOCK if small else rest > SMALL_SIZE:
            tail = _Block(block.addr + size, rest, small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = tail
            block.next, block.size = tail, size
            self._insert(tail)
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: _Block) -> None:
        block.allocated = False
        self.allocated -= block.size
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated:
                self._remove(neighbour)
                if neighbour is block.prev:
                    block.addr, block.prev = neighbour.addr, neighbour.prev
                    if neighbour.prev is not None:
                        neighbour.prev.next = block
                else:
                    block.next = neighbour.next
                    if neighbour.next is not None:
                        neighbour.next.prev = block
                block.size += neighbour.size
        self._insert(block)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()``: every cached segment that holds no allocated block goes back to the
        driver (``release_cached_blocks``); a segment with a live block stays whole."""
        for small, pool in self._free.items():
            whole = [entry for entry in pool if entry[2].prev is None and entry[2].next is None]
            self.reserved -= sum(entry[0] for entry in whole)
            self._free[small] = [entry for entry in pool if entry[2].prev is not None or entry[2].next is not None]

    def _insert(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (block.size, block.addr, block))

    def _remove(self, block: _Block) -> None:
        pool = self._free[block.small]
        del pool[bisect.bisect_left(pool, (block.size, block.addr))]
