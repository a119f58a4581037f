"""The order in which partial sums are folded (csrc/math/fold.h), checked where the order shows.

Partials of 2^53 and 1.0 give different float64 sums in different orders (2^53 + 1 rounds back to
2^53), so a result equal to the Python mirror below, and unequal to a left-to-right sum, proves the
order. tests/ops/test_cuda_emu.py checks the CUDA finish kernels against the same mirror.
"""
import torch

import l2fast  # noqa: F401  (loads torch.ops.l2fast)

CPU_CHUNK = 1 << 18  # csrc/cpu/chunks.h kChunk
BIG = 2.0**53


def warp_tree(lanes):
    for offset in (16, 8, 4, 2, 1):
        for i in range(offset):
            lanes[i] += lanes[i + offset]
    return lanes[0]


def fold_block_order(values):
    """Thread j of 256 adds values j, j + 256, ...; each warp's tree; warp 0 folds the 8 warp sums."""
    threads = [0.0] * 256
    for k, v in enumerate(values):
        threads[k % 256] += v
    warps = [warp_tree(threads[w * 32 : (w + 1) * 32]) for w in range(8)] + [0.0] * 24
    return warp_tree(warps)


def chunk_pattern(chunks, chunk, dtype=torch.float64):
    """A tensor whose chunk k has |x| sum 2^53 (k = 0) or 1.0: one nonzero at each chunk start (2^53 and
    1.0 are exact in every floating dtype but float16)."""
    x = torch.zeros(chunks * chunk, dtype=dtype)
    x[0] = BIG
    x[chunk::chunk] = 1.0
    return x, [BIG] + [1.0] * (chunks - 1)


def left_to_right(values):
    total = 0.0
    for v in values:
        total += v
    return total


def test_one_warp_folds_at_most_32_values_alike():
    """fold.h's one_warp_folds: for n <= 32 the block order is one warp's tree of the n values, which
    the CUDA finish relies on to fold short tensors with a warp; for n = 65 the orders differ."""
    gen = torch.Generator().manual_seed(0)
    for n in range(1, 33):
        scales = 10.0 ** torch.randint(-8, 9, (n,), generator=gen)  # magnitudes apart, so rounding shows
        values = (torch.randn(n, generator=gen, dtype=torch.float64) * scales).tolist()
        assert fold_block_order(values) == warp_tree(values + [0.0] * (32 - n))
    partials = [BIG] + [1.0] * 64
    lanes = [0.0] * 32
    for k, v in enumerate(partials):
        lanes[k % 32] += v
    assert fold_block_order(partials) != warp_tree(lanes)


def test_cpu_folds_chunk_partials_in_block_order():
    x, partials = chunk_pattern(65, CPU_CHUNK)
    want = fold_block_order(partials)
    assert want != left_to_right(partials)  # the case tells the orders apart
    assert torch.ops.l2fast.l1_norm([x], [1.0], True).item() == want


def test_cpu_folds_tensor_values_in_block_order():
    xs = [torch.tensor([BIG], dtype=torch.float64)] + [torch.ones(1, dtype=torch.float64)] * 300
    values = [BIG] + [1.0] * 300
    want = fold_block_order(values)
    assert want != left_to_right(values)
    assert torch.ops.l2fast.l1_norm(xs, [1.0], False).item() == want
