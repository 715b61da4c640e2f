"""Stage 3: block-sparse attention in plain PyTorch -- compute only the tiles the pattern needs.

Cut the (n, n) score matrix into tiles of ``block_size`` x ``block_size``. For Longformer
(Beltagy et al. 2020) or BigBird (Zaheer et al. 2020) almost every tile is *empty*: no pair
in it may attend. Stage 2 computes those tiles and throws them away; this stage never
touches them. The cost becomes (active tiles) * bs^2 * d, which is O(n * w) for a window w.

Three ideas, in the order the code uses them:

1. **Compressed layout** (``layout.build_layout``): for each query block, the list of key
   blocks it visits, full tiles first, like the rows of a CSR / BSR sparse matrix.
   Full tiles need no element mask; partial tiles (the band's diagonal edges, a global
   column inside a block) use their exact (bs, bs) mask from ``layout.tile_masks``.

2. **Gather**: for query block r and its e-th listed key block c = row_index[r, e], copy
   the key and value block c next to it. q, k and v are only *viewed* as tiles
   (B*H, nb, bs, D) -- no copy of the whole sequence is made -- and each step copies just
   the tiles it needs, so one batched matmul (B*H, R, bs, D) @ (B*H, R, D, C*bs) scores
   R x C tiles in one call, and its result is written straight into the output.
   Query blocks are grouped by how many key blocks they visit (a global row visits all of
   them, a window row a handful), so short rows do not wait for long ones, and each step
   takes as many rows and slots as fit in a fixed budget of scores: the Python loop runs
   (computed tiles) / budget times, never once per tile.

3. **Online softmax** (Milakov & Gimelshein 2018; Dao et al. 2022, FlashAttention):
   the exact softmax over a row whose keys arrive one block at a time.

   For one query row with scores s_j over all its allowed keys,

       out = sum_j exp(s_j - m) v_j / sum_j exp(s_j - m),      m = max_j s_j,

   any m gives the same value (the factor exp(m) cancels); the maximum only keeps exp
   from overflowing. After seeing the key blocks 1..t keep three running quantities:

       m_t   = max of the scores seen so far
       l_t   = sum_{j seen} exp(s_j - m_t)                (the softmax denominator)
       acc_t = sum_{j seen} exp(s_j - m_t) v_j            (the unnormalized output)

   A new block with scores s^(t+1) raises the maximum to m_{t+1} = max(m_t, max s^(t+1)).
   Every old term was computed with exp(. - m_t); multiplying by alpha = exp(m_t - m_{t+1})
   moves it to the new reference:

       l_{t+1}   = alpha * l_t   + sum_j exp(s^(t+1)_j - m_{t+1})
       acc_{t+1} = alpha * acc_t + sum_j exp(s^(t+1)_j - m_{t+1}) v_j

   After the last block, out = acc / l exactly, and log l + m is the row's log-sum-exp:
   the softmax weights are p_ij = exp(s_ij - lse_i), which ``return_weights`` uses.
   A row with no allowed key keeps m = -inf and l = 0; we return zeros for it (as stage 2
   and FlexAttention do) by never letting -inf - (-inf) happen.

Gradients come from autograd through these plain tensor ops. The running maximum is
detached: it is a stability shift that cancels in the result, so it carries no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_mask, check_pattern, check_qkv, default_scale
from .layout import BlockSparseLayout, build_layout
from .patterns import Pattern

# Score elements (B * H * rows * bs * keys) one step may hold: the working set of a step
# (scores, gathered keys and values) stays a few MiB, in cache, while each matmul is large.
STEP_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class BlockWeights:
    """Attention probabilities in compressed form, aligned with ``layout.row_index``.

    ``probs[b, h, r, e]`` (bs, bs) are the weights of query block r against its e-th listed
    key block ``layout.row_index[h, r, e]`` (zero past ``row_count``); ``lse`` (B, H, n)
    is each row's log-sum-exp (-inf for a row with no allowed key). For a (B, H, n, n)
    mask the layout's heads are the B * H (batch, head) pairs and ``probs`` has batch 1.
    """

    probs: torch.Tensor  # (B, H, nb, max_row, bs, bs), or (1, B * H, ...) for a 4-D mask
    lse: torch.Tensor  # (B, H, n)
    layout: BlockSparseLayout

    def to_dense(self) -> torch.Tensor:
        """Scatter the compressed weights into a dense (B, H, n, n) matrix (small n only)."""
        lay, n = self.layout, self.layout.seq_len
        batch, heads, nb, width, bs, _ = self.probs.shape
        index = lay.row_index.long().expand(heads, nb, width)  # (H, nb, max_row)
        listed = torch.arange(width, device=index.device) < lay.row_count.view(-1, nb, 1)
        h, r, e = listed.expand(heads, nb, width).nonzero(as_tuple=True)
        dense = self.probs.new_zeros(batch, heads, nb, nb, bs, bs)
        dense[:, h, r, index[h, r, e]] = self.probs[:, h, r, e]
        dense = dense.transpose(3, 4).reshape(batch, heads, nb * bs, nb * bs)[:, :, :n, :n]
        return dense.reshape(*self.lse.shape, n)


def _row_groups(layout: BlockSparseLayout) -> list[torch.Tensor]:
    """Query blocks grouped so that, within a group, the longest row is < 2x the shortest.

    Padding a group to its longest row wastes less than half its work, and there are at
    most log2(nb) + 2 groups (Longformer: the window rows, and the global row).
    """
    count = layout.host_counts[0].max(0).values  # (nb,) longest row over layout heads
    order = count.argsort(stable=True)
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or count[order[i]] > 2 * max(int(count[order[start]]), 1):
            groups.append(order[start:i])
            start = i
    return groups


def _row_chunks(layout: BlockSparseLayout, batch_heads: int):
    """Yield (query blocks, longest row, slots per step): steps of <= STEP_ELEMENTS scores.

    The number of steps is (computed scores) / STEP_ELEMENTS, so it grows like n * w, and
    each step is small enough to stay in cache: large temporaries would be handed back to
    the operating system on every free and faulted in again, which costs more than the math.
    """
    bs = layout.block_size
    for rows in _row_groups(layout):
        # Rows with no key at all still take one (fully masked) step: zeros, in the graph.
        width = max(int(layout.host_counts[0][:, rows].max()), 1)
        per_row = batch_heads * bs * bs * width  # scores of one query block, all its slots
        for part in rows.split(max(1, STEP_ELEMENTS // per_row)):
            yield part, width, _slot_chunk(batch_heads, len(part), bs, width)


def _tiles(x: torch.Tensor, nb: int, bs: int) -> torch.Tensor:
    """(B, H, N, D) -> (B * H, nb, bs, D) tiles: a view, no copy, when bs divides N."""
    batch, heads, n, dim = x.shape
    if n != nb * bs:  # a short last block: zero-pad N up to nb * bs (the one copy we need)
        x = torch.nn.functional.pad(x, (0, 0, 0, nb * bs - n))
    return x.reshape(batch * heads, nb, bs, dim)


@dataclass(frozen=True)
class _Step:
    """One step: query blocks `rows` against their listed key blocks [first, last)."""

    rows: torch.Tensor  # (R,) query block ids
    first: int
    last: int
    gather: torch.Tensor  # (BH * R * C,) rows of the flat (BH * nb, bs, D) key tiles
    masked_out: torch.Tensor | None  # bool (BH | 1, R, bs, C' * bs), True = not allowed
    masked_from: int  # score column where masking starts: slots before it are all full


def _plan(layout: BlockSparseLayout, batch_heads: int) -> list[list[_Step]]:
    """The steps of every chunk of query blocks; they depend on the layout only, so they
    are built once and cached with it."""
    key = ("blocked", batch_heads, STEP_ELEMENTS)
    if key not in layout.plans:
        layout.plans[key] = [
            [_step(layout, batch_heads, rows, first, min(first + chunk, width))
             for first in range(0, width, chunk)]
            for rows, width, chunk in _row_chunks(layout, batch_heads)
        ]  # fmt: skip
    return layout.plans[key]


def _step(layout: BlockSparseLayout, batch_heads: int, rows, first: int, last: int) -> _Step:
    """Gather index and element mask of slots [first, last) of query blocks `rows`."""
    nb, bs, device = layout.num_blocks, layout.block_size, layout.row_index.device
    rows = rows.to(device)
    index = layout.row_index[:, rows, first:last].long()  # (H', R, C) key block ids
    tile = layout.row_tile[:, rows, first:last].long()  # (H', R, C) partial tile ids or -1
    listed = torch.arange(first, last, device=device) < layout.row_count[:, rows, None]

    # The gather: tile (bh, r, c) is row bh * nb + index of the flat key tiles.
    bh = torch.arange(batch_heads, device=device)
    layout_head = bh % layout.num_layout_heads  # 0 when shared, h (or b * H + h) otherwise
    gather = (bh.view(-1, 1, 1) * nb + index[layout_head]).flatten()

    # Keys past seq_len (a short last block) are never attended, even in a "full" tile.
    key_valid = (torch.arange(nb * bs, device=device) < layout.seq_len).view(nb, bs)
    full = listed & (tile < 0) & key_valid[index].all(-1)  # (H', R, C)
    needs_mask = ~full.flatten(0, 1).all(0)  # (C,) slots where some tile is not full
    if not bool(needs_mask.any()):
        return _Step(rows, first, last, gather, None, 0)  # every tile full: no mask at all
    # Full tiles are listed first, so usually only the last few slots need the mask:
    # keep the mask of slots [j, C) only, and mask just those columns of the scores.
    j = int(needs_mask.int().argmax())
    index, tile, listed = index[..., j:], tile[..., j:], listed[..., j:]
    # Partial tiles take their exact element mask; full or unlisted ones a key mask.
    mask = (key_valid[index] & listed.unsqueeze(-1)).unsqueeze(-2)  # (H', R, C, 1, bs)
    if len(layout.tile_masks):
        element = layout.tile_masks[tile.clamp(min=0)]  # (H', R, C, bs, bs)
        mask = torch.where((tile >= 0).view(*tile.shape, 1, 1), element, mask)
    mask = mask.expand(-1, -1, -1, bs, -1).transpose(2, 3)  # (H', R, bs, C, bs)
    mask = mask.reshape(-1, len(rows), bs, index.shape[-1] * bs)  # the column order of keys
    if 1 < mask.shape[0] < batch_heads:  # per-head layout, batch > 1: repeat it per batch
        mask = mask.repeat(batch_heads // mask.shape[0], 1, 1, 1)
    return _Step(rows, first, last, gather, ~mask, j * bs)


def _gathered(step: _Step, tiles_flat, like: torch.Tensor, dtype) -> torch.Tensor:
    """The step's listed key (or value) tiles: (BH, R, C * bs, D) in `dtype`."""
    batch_heads, rows, _, dim = like.shape
    return tiles_flat.index_select(0, step.gather).view(batch_heads, rows, -1, dim).to(dtype)


def _scores(step: _Step, q_rows, k_flat, dtype):
    """Masked scores (BH, R, bs, C * bs) in `dtype` of query blocks against the step's keys."""
    keys = _gathered(step, k_flat, q_rows, q_rows.dtype)
    scores = (q_rows @ keys.transpose(-2, -1)).to(dtype)  # (BH, R, bs, C * bs)
    if step.masked_out is not None:
        # In place on the slots that need it (a view): the full slots are left untouched.
        scores[..., step.masked_from :].masked_fill_(step.masked_out, float("-inf"))
    return scores


def _slot_chunk(batch_heads: int, rows: int, bs: int, width: int) -> int:
    """Key blocks per step: as many as fit in STEP_ELEMENTS scores, at least one."""
    return max(1, min(width, STEP_ELEMENTS // (batch_heads * rows * bs * bs)))


def _chunk_forward(steps: list[_Step], q_rows, k_flat, v_flat, acc_dtype):
    """Online softmax over the steps (key block slots) of one chunk of query blocks."""
    acc = total = row_max = None
    for step in steps:
        scores = _scores(step, q_rows, k_flat, acc_dtype)
        values = _gathered(step, v_flat, q_rows, acc_dtype)  # (BH, R, C * bs, D)
        step_max = scores.detach().amax(-1, keepdim=True)  # (BH, R, bs, 1)
        new_max = step_max if row_max is None else torch.maximum(row_max, step_max)
        # Shift by the new max; a row with nothing allowed yet (max -inf) by a finite number.
        shift = new_max.clamp(min=torch.finfo(acc_dtype).min)
        p = scores.sub_(shift).exp_()  # (BH, R, bs, C * bs); masked pairs: exp(-inf) = 0
        if acc is None:  # first step: nothing to rescale yet
            total, acc = p.sum(-1, keepdim=True), p @ values
        else:
            alpha = torch.exp(row_max - shift)  # moves old terms to the new reference
            total = alpha * total + p.sum(-1, keepdim=True)
            acc = alpha * acc + p @ values  # (BH, R, bs, D)
        row_max = new_max
    # out = acc / l; an empty row has acc = 0 and l = 0: divide by 1 to keep it 0.
    out = acc / torch.where(total > 0, total, torch.ones_like(total))
    lse = row_max + torch.log(total)  # -inf for empty rows
    return out, lse.squeeze(-1)


def _chunk_probs(steps: list[_Step], q_rows, k_flat, lse, acc_dtype):
    """exp(s - lse) for every listed tile of one chunk: (BH, R, width, bs, bs)."""
    bs = q_rows.shape[2]
    lse = lse.clamp(min=torch.finfo(acc_dtype).min).unsqueeze(-1)  # empty rows: p = 0
    parts = []
    for step in steps:
        scores = _scores(step, q_rows, k_flat, acc_dtype)
        p = torch.exp(scores - lse)  # (BH, R, bs, C * bs)
        parts.append(p.unflatten(-1, (-1, bs)).transpose(2, 3))  # (BH, R, C, bs, bs)
    return torch.cat(parts, dim=2)


def _resolve_layout(pattern, batch: int, heads: int, n: int, block_size: int, device):
    """The layout for `pattern`, and whether the batch was folded into the heads."""
    fold = False
    if isinstance(pattern, torch.Tensor):
        mask = check_mask(pattern, batch, heads, n)  # (B|1, H|1, n, n)
        if mask.shape[0] > 1:
            # A mask per batch element: treat (b, h) pairs as B * H heads of one batch.
            pattern = mask.expand(batch, heads, n, n).reshape(batch * heads, n, n)
            fold = True
    pattern = check_pattern(pattern, batch * heads if fold else heads, n)
    return build_layout(pattern, block_size, device), fold


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | torch.Tensor,
    block_size: int = 64,
    scale: float | None = None,
    return_weights: bool = False,
):
    """Exact softmax attention over the pattern's active tiles only.

    q, k, v: (batch, heads, seq_len, head_dim). `pattern`: a Pattern (shared, or per head
    with num_heads == heads) or a bool mask (n, n), (H, n, n) or (B, H, n, n).
    Returns the output shaped like q; with ``return_weights=True`` also a
    :class:`BlockWeights` (compressed probabilities and log-sum-exp; ``.to_dense()``).
    """
    batch, heads, n, dim = check_qkv(q, k, v)
    layout, fold = _resolve_layout(pattern, batch, heads, n, block_size, q.device)
    if fold:  # (B, H, N, D) -> (1, B * H, N, D)
        q, k, v = (t.reshape(1, batch * heads, n, dim) for t in (q, k, v))
    scale = default_scale(dim, scale)
    acc_dtype = torch.promote_types(q.dtype, torch.float32)  # bf16 / fp16 accumulate in fp32

    nb, bs = layout.num_blocks, block_size
    batch_heads = q.shape[0] * q.shape[1]
    q_tiles = _tiles(q, nb, bs)  # (BH, nb, bs, D)
    k_flat = _tiles(k, nb, bs).flatten(0, 1)  # (BH * nb, bs, D): tile bh * nb + c per row
    v_flat = _tiles(v, nb, bs).flatten(0, 1)
    # Every query block belongs to exactly one chunk: each chunk fills its rows in place.
    out = q.new_empty((batch_heads, nb, bs, dim), dtype=acc_dtype)
    if return_weights:
        lse_all = q.new_empty((batch_heads, nb, bs), dtype=acc_dtype)
        width = layout.row_index.shape[-1]
        probs = q.new_zeros((batch_heads, nb, width, bs, bs), dtype=acc_dtype)
    for steps in _plan(layout, batch_heads):
        rows = steps[0].rows
        q_rows = q_tiles.index_select(1, rows) * scale  # (BH, R, bs, D), scale folded in
        chunk_out, lse = _chunk_forward(steps, q_rows, k_flat, v_flat, acc_dtype)
        out.index_copy_(1, rows, chunk_out)
        if return_weights:
            lse_all.index_copy_(1, rows, lse)
            p = _chunk_probs(steps, q_rows, k_flat, lse, acc_dtype)  # (BH, R, C', bs, bs)
            probs[:, rows, : steps[-1].last] = p

    # (BH, nb, bs, D) -> (B, H, N, D): a view, the padding of a short last block dropped.
    out = out.view(batch, heads, nb * bs, dim)[:, :, :n].to(q.dtype)
    if not return_weights:
        return out
    lse = lse_all.view(batch, heads, nb * bs)[:, :, :n]  # (B, H, N)
    probs = probs.view(q.shape[0], q.shape[1], *probs.shape[1:])
    return out, BlockWeights(probs, lse, layout)
