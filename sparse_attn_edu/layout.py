"""Compressed block-sparse layout: which tiles a block kernel visits, as index lists.

A block-sparse kernel never scans the (nb, nb) grid of tiles. Each query block gets the
short list of key blocks it must visit, like the rows of a CSR / BSR sparse matrix
(the same idea as FlexAttention's ``BlockMask`` and the block-sparse kernels of
Child et al. 2019, "Generating Long Sequences with Sparse Transformers"):

    row_count[h, r]          how many key blocks query block r visits
    row_full_count[h, r]     how many of them are full (listed first: run without a mask)
    row_index[h, r, :]       the key block ids, full ones first, padded with 0
    row_tile[h, r, :]        for partial entries, which element mask in `tile_masks`;
                             -1 for full entries and padding

The backward pass of dK and dV walks the transpose -- for each key block, the query blocks
that visit it -- so the same lists are built column-major (``col_*``).

``tile_masks`` (T, bs, bs) holds the exact element mask of the T partial tiles only: for a
band pattern that is O(n * bs) booleans, never n x n. Everything is built from
``Pattern.block_kinds`` on the target device and cached on the pattern. Stage 4 builds the
same layout with two Triton kernels from the pattern's parts (``triton_layout.py``): on a
GPU, each of the operations here costs the host more than its work costs the device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from .patterns import EMPTY, FULL, PARTIAL, Pattern, as_pattern


@dataclass(frozen=True)
class BlockSparseLayout:
    seq_len: int
    block_size: int
    num_blocks: int
    kinds: torch.Tensor  # int8 (H', nb, nb); H' = 1 when every head shares the pattern
    # int32 (4, H', nb): row_count, row_full_count, col_count, col_full_count (below)
    counts: torch.Tensor
    row_index: torch.Tensor  # int32 (H', nb, max_row)
    row_tile: torch.Tensor  # int32 (H', nb, max_row)
    col_index: torch.Tensor  # int32 (H', nb, max_col)
    col_tile: torch.Tensor  # int32 (H', nb, max_col)
    tile_masks: torch.Tensor  # bool (T, bs, bs), element masks of partial tiles
    active_tiles: int  # tiles a kernel computes, over all layout heads: row_count's sum
    # Work plans a kernel derives from this layout (index lists, masks), kept with it.
    plans: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layout_heads(self) -> int:
        return self.kinds.shape[0]

    @functools.cached_property
    def host_counts(self) -> torch.Tensor:
        """The counts on the host, copied when first asked for: where a kernel plans its
        launches without waiting for the device again."""
        return self.counts.cpu()

    # The counts one by one, int32 (H', nb) views: made when asked for (the Triton build
    # makes layouts in microseconds, and four views are a fair part of that).
    row_count = property(lambda self: self.counts[0])
    row_full_count = property(lambda self: self.counts[1])
    col_count = property(lambda self: self.counts[2])
    col_full_count = property(lambda self: self.counts[3])


def _lists(kinds: torch.Tensor, tile_id: torch.Tensor, full_count: torch.Tensor, width: int):
    """Per row of `kinds` (H, nb, nb): the listed blocks and tile ids, full tiles first.

    No sort: an entry's place in its list is a running count along the row -- the number
    of full tiles before it (a full tile), or all full tiles plus the partial ones before
    it (a partial tile). One scatter then writes every entry to its place; empty tiles go
    to a spare last column that is cut off.
    """
    heads, nb, _ = kinds.shape
    full, partial = kinds == FULL, kinds == PARTIAL
    place = torch.where(full, full.cumsum(-1), partial.cumsum(-1) + full_count.unsqueeze(-1))
    place = torch.where(full | partial, place - 1, width)  # (H, nb, nb) list position
    columns = torch.arange(nb, dtype=torch.int32, device=kinds.device).expand_as(place)
    index = torch.zeros(heads, nb, width + 1, dtype=torch.int32, device=kinds.device)
    tile = torch.full_like(index, -1)
    index.scatter_(-1, place, columns)
    tile.scatter_(-1, place, torch.where(partial, tile_id, -1))
    return index[..., :width].contiguous(), tile[..., :width].contiguous()


def build_layout(
    pattern: Pattern | torch.Tensor, block_size: int, device: torch.device | str | None = None
) -> BlockSparseLayout:
    """The compressed layout of `pattern` at `block_size`, on `device`; cached on the pattern.

    Built with a few dozen whole-tensor operations and one device-to-host copy (the counts,
    hence the list widths). On a GPU the cost is the host's dispatch of those operations, a
    few milliseconds on the H200 machine, paid once per pattern (notebook 04 measures it).
    """
    pattern = as_pattern(pattern)
    device = torch.device(device if device is not None else "cpu")
    cache = pattern.__dict__.setdefault("_layout_cache", {})
    key = (block_size, str(device))
    if key in cache:
        return cache[key]

    kinds = pattern.block_kinds(block_size, device)
    kinds = kinds if kinds.dim() == 3 else kinds.unsqueeze(0)  # (H', nb, nb)
    active, full, partial = kinds != EMPTY, kinds == FULL, kinds == PARTIAL
    # Partial tiles numbered in row-major order: tile_id[h, r, c] indexes tile_masks.
    tile_id = (partial.flatten().cumsum(0) - 1).view(kinds.shape).to(torch.int32)
    counts = torch.stack([active.sum(-1), full.sum(-1), active.sum(-2), full.sum(-2)])
    counts = counts.to(torch.int32)  # (4, H', nb): row, row-full, column, column-full counts
    # The one wait for the device: the counts (hence list widths) and the partial tiles.
    host = torch.cat([counts.flatten(), partial.sum(dtype=torch.int32).view(1)]).cpu()
    host_counts, num_partial = host[:-1].view(counts.shape), int(host[-1])
    max_row, max_col = max(int(host_counts[0].max()), 1), max(int(host_counts[2].max()), 1)

    row_index, row_tile = _lists(kinds, tile_id, counts[1], max_row)
    col_index, col_tile = _lists(kinds.transpose(1, 2), tile_id.transpose(1, 2), counts[3], max_col)
    tiles = torch.nonzero_static(partial, size=num_partial)  # (T, 3): head, query, key block
    layout = BlockSparseLayout(
        pattern.seq_len,
        block_size,
        kinds.shape[-1],
        kinds,
        counts,
        row_index,
        row_tile,
        col_index,
        col_tile,
        tile_masks=pattern.tile_masks(tiles, block_size),
        active_tiles=int(host_counts[0].sum()),
    )
    layout.__dict__["host_counts"] = host_counts  # copied already: keep it
    cache[key] = layout
    return layout
