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
``Pattern.block_kinds`` on the target device and cached on the pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .patterns import FULL, PARTIAL, Pattern, as_pattern


@dataclass(frozen=True)
class BlockSparseLayout:
    seq_len: int
    block_size: int
    num_blocks: int
    kinds: torch.Tensor  # int8 (H', nb, nb); H' = 1 when every head shares the pattern
    row_count: torch.Tensor  # int32 (H', nb)
    row_full_count: torch.Tensor  # int32 (H', nb)
    row_index: torch.Tensor  # int32 (H', nb, max_row)
    row_tile: torch.Tensor  # int32 (H', nb, max_row)
    col_count: torch.Tensor  # int32 (H', nb)
    col_full_count: torch.Tensor  # int32 (H', nb)
    col_index: torch.Tensor  # int32 (H', nb, max_col)
    col_tile: torch.Tensor  # int32 (H', nb, max_col)
    tile_masks: torch.Tensor  # bool (T, bs, bs), element masks of partial tiles
    # Work plans a kernel derives from this layout (index lists, masks), kept with it.
    plans: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_layout_heads(self) -> int:
        return self.kinds.shape[0]

    @property
    def active_tiles(self) -> int:
        """Tiles a kernel computes, summed over layout heads."""
        return int(self.row_count.sum())


def _compress(kinds: torch.Tensor, tile_id: torch.Tensor):
    """Per row of `kinds` (H, nb, nb): counts and padded index lists, full tiles first."""
    active = kinds != 0
    full = kinds == FULL
    count = active.sum(-1)  # (H, nb)
    width = max(int(count.max()), 1)
    # Sort key: full tiles first, then partial, then empty; ties keep column order.
    nb = kinds.shape[-1]
    columns = torch.arange(nb, device=kinds.device)
    rank = torch.where(full, 0, torch.where(active, 1, 2)) * nb + columns
    order = rank.argsort(dim=-1)[..., :width]  # (H, nb, width)
    listed = torch.arange(width, device=kinds.device) < count.unsqueeze(-1)
    index = torch.where(listed, order, 0)
    tile = torch.gather(tile_id, -1, index)
    # Padding entries point at block 0 but are not tiles: give them -1 like full tiles.
    tile = torch.where(listed & (torch.gather(kinds, -1, index) == PARTIAL), tile, -1)
    return (
        count.to(torch.int32),
        full.sum(-1).to(torch.int32),
        index.to(torch.int32).contiguous(),
        tile.to(torch.int32).contiguous(),
    )


def build_layout(
    pattern: Pattern | torch.Tensor, block_size: int, device: torch.device | str | None = None
) -> BlockSparseLayout:
    """The compressed layout of `pattern` at `block_size`, on `device`; cached on the pattern."""
    pattern = as_pattern(pattern)
    device = torch.device(device if device is not None else "cpu")
    cache = pattern.__dict__.setdefault("_layout_cache", {})
    key = (block_size, str(device))
    if key in cache:
        return cache[key]

    kinds = pattern.block_kinds(block_size, device)
    kinds = kinds if kinds.dim() == 3 else kinds.unsqueeze(0)  # (H', nb, nb)
    partial = (kinds == PARTIAL).nonzero()  # (T, 3): head, query block, key block
    tile_id = torch.full(kinds.shape, -1, dtype=torch.long, device=device)
    tile_id[partial[:, 0], partial[:, 1], partial[:, 2]] = torch.arange(len(partial), device=device)

    row = _compress(kinds, tile_id)
    col = _compress(kinds.transpose(1, 2), tile_id.transpose(1, 2))
    layout = BlockSparseLayout(
        pattern.seq_len,
        block_size,
        kinds.shape[-1],
        kinds,
        *row,
        *col,
        tile_masks=pattern.tile_masks(partial, block_size),
    )
    cache[key] = layout
    return layout
