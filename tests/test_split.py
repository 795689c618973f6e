"""The one balanced split (hpc_fcn/parallel/split.py), for every size and part count up to 32."""
from __future__ import annotations

import pytest

from hpc_fcn.parallel.split import blocks, offsets, shard_range, split_offsets, split_sizes

N = range(0, 33)
K = range(1, 33)


def test_sizes_cover_and_balance():
    for n in N:
        for k in K:
            if n < k:
                with pytest.raises(ValueError, match="a rank would get nothing"):
                    split_sizes(n, k)
                continue
            sizes = split_sizes(n, k)
            assert len(sizes) == k and sum(sizes) == n
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
            assert sizes == sorted(sizes, reverse=True)  # the larger parts come first
            assert sizes.count(n // k + 1) == n % k


def test_ranges_offsets_and_blocks_agree():
    for n in N:
        for k in K:
            parts = blocks(n, k)
            assert [p.stop - p.start for p in parts] == [n // k + (i < n % k) for i in range(k)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))  # contiguous, in order
            if n >= k:
                sizes = split_sizes(n, k)
                assert split_offsets(n, k) == [p.start for p in parts] == offsets(sizes)
                assert [shard_range(n, k, i) for i in range(k)] == [(p.start, p.stop) for p in parts]


def test_empty_parts_only_where_allowed():
    assert blocks(2, 4) == [slice(0, 1), slice(1, 2), slice(2, 2), slice(2, 2)]
    assert offsets([]) == []
    for bad in (0, -1):
        with pytest.raises(ValueError):
            split_sizes(4, bad)
        with pytest.raises(ValueError):
            blocks(4, bad)
