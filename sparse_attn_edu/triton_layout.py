"""Stage 4's index build: a pattern's compressed layout made by three Triton kernels.

``layout.py`` builds the compressed layout (row and column lists, tile masks) with a few
dozen whole-tensor PyTorch operations. On a GPU each of them is quick, but each costs the
host about 10 microseconds to launch; at n = 32768 they added up to 2-3 ms, as long as a
whole forward and backward pass. Here the same layout comes from three kernels and one
wait for the device, for every pattern that is a union of simple parts
(``patterns.Parts``; Longformer, BigBird, windows, causal and their unions):

    allowed(h, i, j) = offsets(i - j)  or  i in tokens  or  j in tokens
                       or  blocks[h, i // bs, j // bs]

A tile covering queries [qs, qe] and keys [ks, ke] needs no element test to get its kind:

* offsets: the tile holds exactly the offsets [qs - ke, qe - ks]. A prefix sum over all
  2n - 1 offsets counts how many of them are allowed: all of them make every pair allowed
  (full), none of them make this part add nothing.
* tokens: a prefix sum over positions counts the global tokens among the tile's queries
  and among its keys: all queries or all keys global is full, none of either adds nothing.
* blocks, at the layout's own block size (BigBird): one tile is one block, full or empty.

The tile is full when one part fills it, empty when no part touches it, and partial when
exactly one part touches it without filling it. Where two parts touch it without filling
it, their union might still cover it: only those few tiles (a partly global block at the
edge of a window) are tested element by element, as ``layout.py`` refines them.

The kernels (each program owns one row of tiles, or one column):

1. ``_classify_kernel``: the kind of every tile, each row's and column's counts, and every
   partial tile's rank within its row. The host reads the counts (the one wait): they fix
   the list widths, where each row's partial tiles start in ``tile_masks``, and the work
   lists of the attention kernels.
2. ``_lists_kernel``: the row lists and the column lists, full tiles first, as
   ``layout.py`` defines them, plus the coordinates of every partial tile.
3. ``_masks_kernel``: the element mask of every partial tile, from the same parts.
"""

from __future__ import annotations

import numpy as np
import torch

# First: triton_kernels decides between the GPU and the interpreter before triton loads.
from . import triton_kernels as _setup
from .layout import BlockSparseLayout
from .patterns import EMPTY, FULL, PARTIAL, Pattern, _check_positive_int

# isort: split
import triton
import triton.language as tl

UNSURE = 3  # two parts touch the tile without filling it: only an element test can tell
# The kinds as compile-time constants, the only globals a kernel may read.
_EMPTY, _PARTIAL, _FULL, _UNSURE = (tl.constexpr(k) for k in (EMPTY, PARTIAL, FULL, UNSURE))


@triton.jit
def _tile_kinds(r, c, h, offset_prefix, token_prefix, blocks, N, NB, BS,
                HAS_OFFSETS: tl.constexpr, HAS_TOKENS: tl.constexpr,
                HAS_BLOCKS: tl.constexpr):  # fmt: skip
    """Kinds of the tiles (r, c) of layout head h; r or c is a vector of blocks < NB."""
    qs = r * BS
    qe = tl.minimum(qs + BS, N) - 1  # the last block may be short
    ks = c * BS
    ke = tl.minimum(ks + BS, N) - 1
    filled = tl.zeros_like(qs + ks) != 0  # all False, shaped like whichever is a vector
    touched = filled.to(tl.int32)  # how many parts allow some pair of the tile
    if HAS_OFFSETS:
        # offset_prefix[k] = allowed offsets among the k smallest, -(N - 1), ..., k - N.
        lo, hi = qs - ke, qe - ks
        allowed = tl.load(offset_prefix + hi + N) - tl.load(offset_prefix + lo + N - 1)
        filled |= allowed == hi - lo + 1
        touched += (allowed > 0).to(tl.int32)
    if HAS_TOKENS:
        # token_prefix[i] = global tokens before position i.
        in_rows = tl.load(token_prefix + qe + 1) - tl.load(token_prefix + qs)
        in_cols = tl.load(token_prefix + ke + 1) - tl.load(token_prefix + ks)
        filled |= (in_rows == qe - qs + 1) | (in_cols == ke - ks + 1)
        touched += ((in_rows > 0) | (in_cols > 0)).to(tl.int32)
    if HAS_BLOCKS:
        block = tl.load(blocks + (h * NB + r) * NB + c) != 0
        filled |= block
        touched += block.to(tl.int32)
    kind = tl.where(touched == 0, _EMPTY, tl.where(touched == 1, _PARTIAL, _UNSURE))
    return tl.where(filled, _FULL, kind).to(tl.int32)


@triton.jit
def _tile_mask(r, c, offset_prefix, token_prefix, N, BS,
               BLOCK_BS: tl.constexpr, HAS_OFFSETS: tl.constexpr,
               HAS_TOKENS: tl.constexpr):  # fmt: skip
    """Element mask of tile (r, c), (BLOCK_BS, BLOCK_BS), False past N and past BS.

    Only offsets and tokens are tested: at its own size a block is full or empty, so
    blocks never make a tile partial. BLOCK_BS is BS rounded up to a power of two.
    """
    a = tl.arange(0, BLOCK_BS)
    i = r * BS + a  # query positions
    j = c * BS + a  # key positions
    i_ok, j_ok = (a < BS) & (i < N), (a < BS) & (j < N)
    inside = i_ok[:, None] & j_ok[None, :]
    allowed = tl.zeros([BLOCK_BS, BLOCK_BS], dtype=tl.int1)
    if HAS_OFFSETS:
        slot = tl.where(inside, i[:, None] - j[None, :] + N - 1, 0)  # offset's place in prefix
        allowed |= tl.load(offset_prefix + slot + 1) > tl.load(offset_prefix + slot)
    if HAS_TOKENS:
        i_global = tl.load(token_prefix + i + 1, mask=i_ok, other=0) > tl.load(
            token_prefix + i, mask=i_ok, other=0
        )
        j_global = tl.load(token_prefix + j + 1, mask=j_ok, other=0) > tl.load(
            token_prefix + j, mask=j_ok, other=0
        )
        allowed |= i_global[:, None] | j_global[None, :]
    return allowed & inside


@triton.jit
def _classify_kernel(kinds, rank, counts, offset_prefix, token_prefix, blocks, N, NB, HEADS,
                     BS, BLOCK_BS: tl.constexpr, BLOCK_NB: tl.constexpr,
                     HAS_OFFSETS: tl.constexpr, HAS_TOKENS: tl.constexpr,
                     HAS_BLOCKS: tl.constexpr):  # fmt: skip
    """Program (b, h, 0) classifies row b of head h, program (b, h, 1) column b.

    counts (4, HEADS, NB): row count, row full count, column count, column full count;
    kinds (HEADS, NB, NB) int8; rank (HEADS, NB, NB) int32: the partial tiles of a row
    numbered 0, 1, ... from left to right.
    """
    b, h, column = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    other = tl.arange(0, BLOCK_NB)  # the blocks across this row (or down this column)
    ok = other < NB
    clamped = tl.minimum(other, NB - 1)  # past NB: a real block's kind, then dropped
    if column == 0:
        kind = _tile_kinds(b, clamped, h, offset_prefix, token_prefix, blocks, N, NB,
                           BS, HAS_OFFSETS, HAS_TOKENS, HAS_BLOCKS)  # fmt: skip
    else:
        kind = _tile_kinds(clamped, b, h, offset_prefix, token_prefix, blocks, N, NB,
                           BS, HAS_OFFSETS, HAS_TOKENS, HAS_BLOCKS)  # fmt: skip
    kind = tl.where(ok, kind, _EMPTY)
    # Unsure tiles are tested element by element, leftmost first, until none is left (by
    # the row's program and again by the column's). For Longformer they are few: where a
    # partly global block meets the window's edge.
    for _ in range(tl.sum((kind == _UNSURE).to(tl.int32), 0)):
        o = tl.min(tl.where(kind == _UNSURE, other, BLOCK_NB), 0)
        r, c = b, o
        if column != 0:
            r, c = o, b
        allowed = _tile_mask(r, c, offset_prefix, token_prefix, N, BS,
                             BLOCK_BS, HAS_OFFSETS, HAS_TOKENS)  # fmt: skip
        pairs = tl.sum(tl.sum(allowed.to(tl.int32), 1), 0)
        area = (tl.minimum(r * BS + BS, N) - r * BS) * (tl.minimum(c * BS + BS, N) - c * BS)
        exact = tl.where(pairs == area, _FULL, tl.where(pairs > 0, _PARTIAL, _EMPTY))
        kind = tl.where(other == o, exact, kind)
    listed = tl.sum((kind != _EMPTY).to(tl.int32), 0)
    full = tl.sum((kind == _FULL).to(tl.int32), 0)
    slot = counts + (2 * column * HEADS + h) * NB + b
    tl.store(slot, listed)
    tl.store(slot + HEADS * NB, full)
    if column == 0:
        row = (h * NB + b) * NB + other
        tl.store(kinds + row, kind.to(tl.int8), mask=ok)
        partial = (kind == _PARTIAL).to(tl.int32)
        tl.store(rank + row, tl.cumsum(partial, 0) - partial, mask=ok)


@triton.jit
def _lists_kernel(kinds, rank, tile_base, row_index, row_tile, col_index, col_tile, coords,
                  counts, NB, HEADS, ROW_WIDTH, COL_WIDTH,
                  BLOCK_NB: tl.constexpr):  # fmt: skip
    """Program (b, h, 0) writes row b's list of head h, program (b, h, 1) column b's.

    An entry's place is a running count: full tiles take places 0, 1, ... in block order,
    partial tiles follow them. A partial tile (r, c) is tile_masks[tile_base[h, r] +
    rank[h, r, c]]: row by row, left to right, as layout.py numbers them.
    """
    b, h, column = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    other = tl.arange(0, BLOCK_NB)
    ok = other < NB
    if column == 0:
        rows, cols = b + 0 * other, other
        width, index, tile = ROW_WIDTH, row_index, row_tile
    else:
        rows, cols = other, b + 0 * other
        width, index, tile = COL_WIDTH, col_index, col_tile
    tiles = (h * NB + rows) * NB + cols  # flat (head, row, column) of each tile
    kind = tl.load(kinds + tiles, mask=ok, other=_EMPTY).to(tl.int32)
    full, partial = kind == _FULL, kind == _PARTIAL
    full_count = tl.sum(full.to(tl.int32), 0)
    place = tl.where(full, tl.cumsum(full.to(tl.int32), 0) - 1,
                     full_count + tl.cumsum(partial.to(tl.int32), 0) - 1)  # fmt: skip
    tile_id = tl.load(tile_base + h * NB + rows, mask=partial, other=0)
    tile_id += tl.load(rank + tiles, mask=partial, other=0)
    entry = (h * NB + b) * width + place
    tl.store(index + entry, other, mask=full | partial)
    tl.store(tile + entry, tl.where(partial, tile_id, -1), mask=full | partial)
    # Past the list's end: block 0 and no tile, as padding.
    listed = tl.load(counts + (2 * column * HEADS + h) * NB + b)
    pad = (other >= listed) & (other < width)
    tl.store(index + (h * NB + b) * width + other, 0, mask=pad)
    tl.store(tile + (h * NB + b) * width + other, -1, mask=pad)
    if column == 0:  # each partial tile once: where its row meets its column
        tl.store(coords + 2 * tile_id, rows, mask=partial)
        tl.store(coords + 2 * tile_id + 1, cols, mask=partial)


@triton.jit
def _masks_kernel(masks, coords, offset_prefix, token_prefix, N, BS,
                  BLOCK_BS: tl.constexpr, HAS_OFFSETS: tl.constexpr,
                  HAS_TOKENS: tl.constexpr):  # fmt: skip
    """Program t writes partial tile t's (BS, BS) element mask."""
    t = tl.program_id(0)
    r = tl.load(coords + 2 * t)
    c = tl.load(coords + 2 * t + 1)
    allowed = _tile_mask(r, c, offset_prefix, token_prefix, N, BS,
                         BLOCK_BS, HAS_OFFSETS, HAS_TOKENS)  # fmt: skip
    a = tl.arange(0, BLOCK_BS)
    addr = (t.to(tl.int64) * BS + a[:, None]) * BS + a[None, :]
    tl.store(masks + addr, allowed.to(tl.uint8), mask=(a < BS)[:, None] & (a < BS)[None, :])


def build_layout_from_parts(
    pattern: Pattern, block_size: int, device: torch.device | str
) -> BlockSparseLayout | None:
    """``layout.build_layout(pattern, block_size, device)`` made by the kernels above (not
    cached: ``triton_kernels.kernel_layout`` caches). None when that one must build it:
    the pattern is no union of parts at this block size, `device` is not where the kernels
    run, or a flat tile index would not fit in int32.
    """
    block_size = _check_positive_int("block_size", block_size)
    device = torch.device(device)
    parts = pattern.parts()
    blocks = parts.blocks if parts is not None else None
    if parts is None or (blocks is not None and blocks.block_size != block_size):
        return None
    if device.type != ("cpu" if _setup.INTERPRETED else "cuda"):
        return None
    n, bs = pattern.seq_len, block_size
    nb = triton.cdiv(n, bs)
    heads = blocks.layout.shape[0] if blocks is not None and blocks.layout.dim() == 3 else 1
    if heads * nb * nb >= 2**31:  # the kernels index tiles with int32
        return None
    dummy = torch.zeros(1, dtype=torch.int32, device=device)  # for a part that is missing

    offset_prefix = dummy
    if parts.offsets is not None:
        allowed = parts.offsets(torch.arange(-(n - 1), n, device=device))  # (2n - 1,)
        offset_prefix = torch.nn.functional.pad(allowed.cumsum(0, dtype=torch.int32), (1, 0))
    token_prefix = dummy
    if parts.tokens:
        marks = np.zeros(n + 1, dtype=np.int32)
        marks[np.asarray(parts.tokens) + 1] = 1
        token_prefix = torch.from_numpy(np.cumsum(marks, dtype=np.int32)).to(device)
    block_bytes = dummy if blocks is None else blocks._on("layout", device).view(torch.uint8)

    kinds = torch.empty(heads, nb, nb, dtype=torch.int8, device=device)
    rank = torch.empty(heads, nb, nb, dtype=torch.int32, device=device)
    counts = torch.empty(4, heads, nb, dtype=torch.int32, device=device)
    has = {"HAS_OFFSETS": parts.offsets is not None, "HAS_TOKENS": bool(parts.tokens)}
    block_nb = max(16, triton.next_power_of_2(nb))
    block_bs = triton.next_power_of_2(bs)
    _classify_kernel[(nb, heads, 2)](
        kinds, rank, counts, offset_prefix, token_prefix, block_bytes, n, nb, heads,
        bs, BLOCK_BS=block_bs, BLOCK_NB=block_nb, HAS_BLOCKS=blocks is not None, **has,
    )  # fmt: skip
    host_counts = counts.cpu()  # the one wait for the device
    partial = (host_counts[0] - host_counts[1]).flatten().numpy()  # (heads * nb,) per row
    num_partial = int(partial.sum())
    # Where each row's partial tiles start in tile_masks: row by row, as layout.py numbers them.
    tile_base = torch.from_numpy((np.cumsum(partial) - partial).astype(np.int32)).to(device)
    max_row, max_col = max(int(host_counts[0].max()), 1), max(int(host_counts[2].max()), 1)

    row_index = torch.empty(heads, nb, max_row, dtype=torch.int32, device=device)
    row_tile = torch.empty_like(row_index)
    col_index = torch.empty(heads, nb, max_col, dtype=torch.int32, device=device)
    col_tile = torch.empty_like(col_index)
    coords = torch.empty(max(num_partial, 1), 2, dtype=torch.int32, device=device)
    _lists_kernel[(nb, heads, 2)](
        kinds, rank, tile_base, row_index, row_tile, col_index, col_tile, coords, counts,
        nb, heads, max_row, max_col, BLOCK_NB=block_nb,
    )  # fmt: skip
    masks = torch.empty(num_partial, bs, bs, dtype=torch.uint8, device=device)
    if num_partial:
        _masks_kernel[(num_partial,)](
            masks, coords, offset_prefix, token_prefix, n, bs, BLOCK_BS=block_bs, **has
        )
    return BlockSparseLayout(
        n, bs, nb, kinds, counts[0], counts[1], row_index, row_tile, counts[2], counts[3],
        col_index, col_tile, tile_masks=masks.view(torch.bool), host_counts=host_counts,
    )  # fmt: skip
