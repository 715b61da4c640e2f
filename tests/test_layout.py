"""The compressed block layout against the materialized mask it compresses.

The reference is ``p.mask`` (checked against brute force in test_patterns.py): rebuilding
a dense mask from the row lists (and, separately, from the column lists) must give it back
exactly, and every listed tile's kind must match a tile-by-tile scan of the mask.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_attn_edu import patterns
from sparse_attn_edu.layout import build_layout


def rebuild(layout, lists: str) -> torch.Tensor:
    """Dense (H', n, n) mask from the row (or column) lists, tile masks and full tiles."""
    n, bs, nb = layout.seq_len, layout.block_size, layout.num_blocks
    count = getattr(layout, f"{lists}_count")
    full_count = getattr(layout, f"{lists}_full_count")
    index = getattr(layout, f"{lists}_index")
    tile = getattr(layout, f"{lists}_tile")
    heads = layout.kinds.shape[0]
    dense = torch.zeros(heads, nb * bs, nb * bs, dtype=torch.bool)
    for h in range(heads):
        for a in range(nb):
            listed = [int(c) for c in index[h, a, : count[h, a]]]
            assert len(set(listed)) == len(listed), "a block is listed twice"
            for e, b in enumerate(listed):
                is_full = e < full_count[h, a]
                assert (tile[h, a, e] < 0) == is_full, "full tiles first, partial ones after"
                r, c = (a, b) if lists == "row" else (b, a)
                block = torch.ones(bs, bs, dtype=torch.bool)
                if not is_full:
                    block = layout.tile_masks[tile[h, a, e]]
                dense[h, r * bs : (r + 1) * bs, c * bs : (c + 1) * bs] = block
            assert (tile[h, a, count[h, a] :] == -1).all(), "padding entries are not tiles"
    return dense[:, :n, :n]


def brute_kinds(mask: torch.Tensor, bs: int) -> torch.Tensor:
    n = mask.shape[-1]
    nb = math.ceil(n / bs)
    kinds = torch.zeros(mask.shape[0], nb, nb, dtype=torch.int8)
    for r in range(nb):
        for c in range(nb):
            tile = mask[:, r * bs : (r + 1) * bs, c * bs : (c + 1) * bs].flatten(1)
            kinds[:, r, c] = torch.where(tile.all(1), 2, torch.where(tile.any(1), 1, 0))
    return kinds


def pattern_zoo(n: int, draw) -> list:
    window = draw(st.integers(1, max(1, n // 2))) * 2
    g = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    bb_bs = draw(st.integers(1, max(1, n // 4)))
    nbb = math.ceil(n / bb_bs)
    return [
        patterns.sliding_window(n, window),
        patterns.longformer(n, window, g),
        patterns.dilated_window(n, window, draw(st.integers(1, 3))),
        patterns.causal(n),
        patterns.global_tokens(n, g),
        patterns.bigbird(n, bb_bs, 1, 1, int(nbb >= 4), seed=draw(st.integers(0, 9)), num_heads=2),
        patterns.sliding_window(n, window) & patterns.causal(n),
        patterns.dilated_window(n, window, 2) | patterns.global_tokens(n, g),
        torch.rand(3, n, n, generator=torch.Generator().manual_seed(n)) < 0.3,
    ]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), bs=st.integers(1, 48), data=st.data())
def test_rows_and_columns_rebuild_the_mask(n, bs, data):
    for p in pattern_zoo(n, data.draw):
        p = patterns.as_pattern(p)
        mask = p.mask if p.mask.dim() == 3 else p.mask.unsqueeze(0)
        layout = build_layout(p, bs)
        assert torch.equal(rebuild(layout, "row"), mask), repr(p)
        assert torch.equal(rebuild(layout, "col").expand_as(mask), mask), repr(p)
        assert torch.equal(layout.kinds, brute_kinds(mask, bs)), repr(p)
        counts = [layout.row_count, layout.row_full_count, layout.col_count, layout.col_full_count]
        assert torch.equal(layout.host_counts, torch.stack(counts).cpu()), repr(p)


def test_layout_is_cached_per_block_size():
    p = patterns.longformer(100, 10)
    assert build_layout(p, 16) is build_layout(p, 16)
    assert build_layout(p, 32) is not build_layout(p, 16)


@pytest.mark.parametrize("n", [4096, 16384])
def test_longformer_layout_is_linear_in_n(n):
    # w = 512 at bs = 64: a window row lists at most 10 blocks; only the global row lists nb.
    layout = build_layout(patterns.longformer(n, 512, (0,)), 64)
    nb = n // 64
    assert int(layout.row_count[0, 0]) == nb
    assert int(layout.row_count[0, 1:].max()) <= 10
    assert len(layout.tile_masks) <= 4 * nb
