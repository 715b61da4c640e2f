"""Stage 4: block-sparse FlashAttention as fused Triton kernels, forward and backward.

Stage 3 gathered the active tiles with PyTorch ops; here each step becomes one fused GPU
kernel that never writes a score to memory (Dao et al. 2022, "FlashAttention",
arXiv:2205.14135; Dao 2023, "FlashAttention-2", arXiv:2307.08691), restricted to the tiles
a sparse pattern needs (Child et al. 2019, "Sparse Transformers"; Beltagy et al. 2020,
"Longformer"; Zaheer et al. 2020, "Big Bird").

The program grid. One program owns one query block of one (batch, head) and walks only
the key blocks in its row of the compressed layout (``layout.py``): the ``row_full_count``
full tiles first, with no mask at all, then the partial tiles, where the element mask of
``tile_masks`` is loaded and applied. Empty tiles are never visited: that is the saving.

Loading a tile. Every tile a kernel reads -- 64 rows of Q, K, V or dO -- goes through one
helper, ``_load_rows``. On Hopper GPUs (H100, H200) it hands the tile's coordinates to the
tensor memory accelerator (TMA), a copy engine that moves the whole tile into shared memory
by itself while the threads compute, and fills rows past seq_len with zeros. Elsewhere
(older GPUs, rows not 16-byte aligned) every thread computes its addresses and loads its
share: the pointer path. Both read the same tiles. Side by side on an H200 at n = 16384
and 32768, the copy engine took 12-17% off the forward's time and 18-21% off the forward
and backward's (``scripts/tma_side_by_side.py``); on small calls the
descriptors' host cost outweighs that, so those keep the pointer path (``TMA_MIN_PAIRS``).

Online softmax (base 2). For one query row, with scores s_j = scale * q . k_j, we keep a
running max m, a running sum l and an unnormalized output acc. Folding log2(e) into the
scale lets the kernel use exp2, the GPU's native exponential: exp(s) = 2^(s * log2 e).
When a tile brings scores x_j (already times scale * log2 e):

    m' = max(m, max_j x_j)          alpha = 2^(m - m')        p_j = 2^(x_j - m')
    l' = alpha * l + sum_j p_j      acc' = alpha * acc + sum_j p_j v_j

and at the end out = acc / l, LSE = m + log2(l) (saved for the backward pass). Every
rescale by alpha is exact, so the result equals softmax over all allowed keys.
A row with no allowed key keeps m = -inf and l = 0: we write out = 0 and LSE = +inf, so
that the backward's p = 2^(x - LSE) is 0 for it and its gradients are zero, never NaN.

The backward pass recomputes p = 2^(x - LSE) tile by tile instead of storing it, after a
small preprocess delta_i = sum_d dO_id O_id (= sum_j p_ij dp_ij):

    dV_j = sum_i p_ij dO_i       dp_ij = dO_i . v_j       ds_ij = p_ij (dp_ij - delta_i)
    dK_j = scale * sum_i ds_ij q_i                       dQ_i = scale * sum_j ds_ij k_j

dK and dV sum over queries, so their kernel owns one key block and walks the column lists
(the query blocks that visit it); dQ sums over keys, so its kernel owns one query block and
walks the row lists, as the forward does. Two passes, no atomics.

Long lists. Longformer's and BigBird's global rows and columns visit every block: one
program walking such a list alone would finish long after the others. So a list longer
than MAX_TILES_PER_PROGRAM is cut in pieces run by separate programs, whose partial
results a small kernel merges (the same online-softmax update for the output, a plain sum
for the gradients), and programs are launched longest first (Graham's LPT rule).

The index lists and the work lists (which piece of which list each program walks) are
built once per pattern and cached (``kernel_layout``): by two more kernels in
``triton_layout.py`` when the pattern is a union of parts (windows, global tokens,
BigBird's blocks at their own block size); else the index lists by ``layout.py`` and the
work lists by the same planner, run as a kernel of its own.

Without a CUDA device, this module sets ``TRITON_INTERPRET=1`` before any kernel is
defined, so the same kernels run in Triton's interpreter on CPU tensors (slowly: tiny
shapes only).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch

INTERPRETED = not torch.cuda.is_available()
if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
    if "triton" in sys.modules:
        raise RuntimeError(
            "expected sparse_attn_edu.triton_kernels to be imported before triton on a machine "
            "without CUDA (Triton's interpreter mode is fixed when triton is imported), but "
            "triton was imported first; import this module first or set TRITON_INTERPRET=1"
        )
    os.environ["TRITON_INTERPRET"] = "1"  # before `triton.jit` wraps any kernel
if INTERPRETED:
    warnings.warn(
        "sparse_attn_edu.triton_kernels: no CUDA device, running the Triton kernels in the "
        "Triton interpreter on CPU (TRITON_INTERPRET=1); use tiny shapes",
        RuntimeWarning,
        stacklevel=2,
    )

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

if INTERPRETED:
    from triton.runtime import interpreter as _interpreter

    def _patch_lang_tensor(tensor, scope) -> None:
        """Loop bounds read from memory are 1-element arrays in Triton 3.6's interpreter,
        and NumPy 2 refuses int() of those; take the element with .item() instead."""
        _original_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    _original_patch = _interpreter._patch_lang_tensor
    _interpreter._patch_lang_tensor = _patch_lang_tensor

from ._checks import check_pattern, check_qkv, default_scale  # noqa: E402
from .layout import BlockSparseLayout, build_layout  # noqa: E402
from .patterns import Pattern, as_pattern  # noqa: E402

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128


# ---- loading a tile -------------------------------------------------------------------


@triton.jit
def _load_rows(X, bh, bh_offset, first, N,
               HEAD_DIM: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
               TMA: tl.constexpr):  # fmt: skip
    """Rows [first, first + ROWS) of one (batch, head)'s (N, HEAD_DIM) matrix: (ROWS, BLOCK_D),
    zeros past N and past HEAD_DIM.

    With TMA, X is a tensor descriptor and Hopper's tensor memory accelerator copies the
    whole tile into shared memory by itself (out-of-range rows and columns arrive as zeros);
    otherwise every thread computes addresses and loads its share of X, a pointer.
    """
    if TMA:
        tile = X.load([bh, first, 0]).reshape(ROWS, BLOCK_D)
    else:
        rows = first + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_D)
        tile = tl.load(
            X + bh_offset + rows[:, None] * HEAD_DIM + cols[None, :],
            mask=(rows < N)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0,
        )  # fmt: skip
    return tile


# ---- forward ------------------------------------------------------------------------


@triton.jit
def _attend_tiles(
    acc, m_i, l_i, q, K, V, bh, bh_offset, index_ptr, tile_ptr, masks, start, stop,
    qk_scale, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, MASKED: tl.constexpr, EVEN_N: tl.constexpr, PREC: tl.constexpr,
    TMA: tl.constexpr,
):  # fmt: skip
    """Online-softmax update of one query block over list entries [start, stop)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for j in range(start, stop):
        first = tl.load(index_ptr + j) * BLOCK_N  # the key block's first position
        k_ok = first + offs_n < N
        k = _load_rows(K, bh, bh_offset, first, N, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
        x = tl.dot(q, k.T, input_precision=PREC) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            # Partial tile: its element mask (uint8, also 0 past seq_len) says which pairs count.
            tile = tl.load(tile_ptr + j).to(tl.int64)
            allowed = tl.load(masks + tile * (BLOCK_M * BLOCK_N) + offs_m[:, None] * BLOCK_N
                              + offs_n[None, :])  # fmt: skip
            x = tl.where(allowed != 0, x, float("-inf"))
        elif not EVEN_N:
            x = tl.where(k_ok[None, :], x, float("-inf"))  # the short last block
        m_new = tl.maximum(m_i, tl.max(x, 1))  # m' = max(m, max_j x_j)
        # A row with no allowed key so far has m' = -inf: shift by 0 so that 2^(-inf) = 0.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)  # rescales what we summed before
        p = tl.exp2(x - m_shift[:, None])  # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, bh, bh_offset, first, N, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _work_item(tables, ITEMS_AT, H, LAYOUT_HEADS, ITEM_STRIDE):
    """This program's work: a block, its list range [start, stop) and its scratch slot.

    [start, mid) are full tiles and [mid, stop) partial ones (the lists hold full first).
    All five numbers sit side by side in the work list, which starts at `ITEMS_AT` in the
    int32 buffer `tables` (WorkList): one round trip to memory.
    """
    bh = tl.program_id(0)  # batch * H + head
    lh = (bh % H) % LAYOUT_HEADS  # layout head: 0 when all heads share the pattern
    item = tables + ITEMS_AT + lh * ITEM_STRIDE + tl.program_id(1) * 5  # longest first
    block = tl.load(item)
    start = tl.load(item + 1)
    stop = tl.load(item + 2)
    slot = tl.load(item + 3)  # -1: the whole list, write the result; else one piece of it
    mid = tl.load(item + 4)
    return bh, lh, block, start, mid, stop, slot


@triton.jit(do_not_specialize=["ITEMS_AT"])  # an offset: one compiled kernel for all
def _forward_kernel(
    Q, K, V, Out, LSE, OPart, LSEPart,
    tables, index, tile, masks,
    qk_scale, N, H, LAYOUT_HEADS, ITEMS_AT, ITEM_STRIDE, SLOTS, list_stride_h, list_stride_r,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_N: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    bh, lh, row, start, mid, stop, slot = _work_item(tables, ITEMS_AT, H, LAYOUT_HEADS, ITEM_STRIDE)
    list_offset = lh * list_stride_h + row * list_stride_r
    bh_offset = bh.to(tl.int64) * N * HEAD_DIM

    offs_m = row * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions of this block
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = (offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    io_offsets = bh_offset + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = _load_rows(Q, bh, bh_offset, row * BLOCK_M, N, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, m_i, l_i = _attend_tiles(
        acc, m_i, l_i, q, K, V, bh, bh_offset, index + list_offset, tile + list_offset, masks,
        start, mid, qk_scale, N,
        HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, EVEN_N, PREC, TMA,
    )  # fmt: skip
    acc, m_i, l_i = _attend_tiles(
        acc, m_i, l_i, q, K, V, bh, bh_offset, index + list_offset, tile + list_offset, masks,
        mid, stop, qk_scale, N,
        HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, EVEN_N, PREC, TMA,
    )  # fmt: skip

    seen = l_i > 0  # False for a row with no allowed key (so far): its acc is 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = m_i + tl.log2(tl.where(seen, l_i, 1.0))  # log2 units; -inf when nothing seen
    if slot < 0:
        tl.store(Out + io_offsets, out.to(Out.dtype.element_ty), mask=io_mask)
        tl.store(LSE + bh * N + offs_m, tl.where(seen, lse, float("inf")), mask=offs_m < N)
    else:  # one piece of a long row: keep it in fp32 for _merge_rows_kernel
        part = (bh * SLOTS + slot).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(OPart + part[:, None] * BLOCK_D + offs_d[None, :], out)
        tl.store(LSEPart + part, lse)


@triton.jit(do_not_specialize=["MERGES_AT"])
def _merge_rows_kernel(
    Out, LSE, OPart, LSEPart, tables, N, H, LAYOUT_HEADS, MERGES_AT, MERGE_STRIDE, SLOTS,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Join the pieces of a long row: piece p weighs 2^(lse_p - lse), lse = log2 sum 2^lse_p.

    The same online-softmax update as _attend_tiles, one piece instead of one key at a time.
    """
    bh = tl.program_id(0)
    lh = (bh % H) % LAYOUT_HEADS
    merge = tables + MERGES_AT + lh * MERGE_STRIDE + tl.program_id(1) * 3
    row = tl.load(merge)  # -1 pads a head with fewer long rows: it stores nothing
    first = tl.load(merge + 1)
    pieces = tl.load(merge + 2)
    offs_m = row * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for p in range(first, first + pieces):
        part = (bh * SLOTS + p).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        lse_p = tl.load(LSEPart + part)
        m_new = tl.maximum(m_i, lse_p)
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        weight = tl.exp2(lse_p - m_shift)
        out_p = tl.load(OPart + part[:, None] * BLOCK_D + offs_d[None, :])
        acc = acc * alpha[:, None] + out_p * weight[:, None]
        l_i = l_i * alpha + weight
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    m_ok = (offs_m >= 0) & (offs_m < N)
    offsets = bh.to(tl.int64) * N * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(Out + offsets, out.to(Out.dtype.element_ty),
             mask=m_ok[:, None] & (offs_d < HEAD_DIM)[None, :])  # fmt: skip
    tl.store(LSE + bh * N + offs_m, lse, mask=m_ok)


# ---- backward -----------------------------------------------------------------------


@triton.jit
def _delta_kernel(Out, DO, Delta, N, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_D: tl.constexpr):  # fmt: skip
    """delta_i = sum_d dO_id * O_id, the row term of the softmax gradient."""
    bh = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    offsets = bh.to(tl.int64) * N * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + offsets, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + bh * N + offs_m, tl.sum(o * do, 1), mask=offs_m < N)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, Q, DO, LSE, Delta, bh, bh_offset, bh_rows, index_ptr, tile_ptr, masks,
    start, stop, qk_scale, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key block over the query blocks [start, stop) of its column."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for j in range(start, stop):
        first = tl.load(index_ptr + j) * BLOCK_M  # the query block's first position
        queries = first + offs_m  # (BLOCK_M,)
        q_ok = queries < N
        qT = _load_rows(Q, bh, bh_offset, first, N, HEAD_DIM, BLOCK_M, BLOCK_D, TMA).T
        # Rows past seq_len get LSE = +inf, hence p = 0.
        lse = tl.load(LSE + bh_rows + queries, mask=q_ok, other=float("inf"))
        xT = tl.dot(k, qT, input_precision=PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.exp2(xT - lse[None, :])  # the forward's probabilities, recomputed
        if MASKED:
            tile = tl.load(tile_ptr + j).to(tl.int64)
            allowedT = tl.load(masks + tile * (BLOCK_M * BLOCK_N) + offs_m[None, :] * BLOCK_N
                               + offs_n[:, None])  # fmt: skip
            pT = tl.where(allowedT != 0, pT, 0.0)
        do = _load_rows(DO, bh, bh_offset, first, N, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)  # dV_j += p_ij dO_i
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)  # dp_ij = dO_i . v_j
        delta = tl.load(Delta + bh_rows + queries, mask=q_ok, other=0.0)
        dsT = pT * (dpT - delta[None, :])  # ds_ij = p_ij (dp_ij - delta_i)
        dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT), input_precision=PREC)
    return dk, dv


@triton.jit(do_not_specialize=["ITEMS_AT"])  # an offset: one compiled kernel for all
def _dkdv_kernel(
    Q, K, V, DO, LSE, Delta, DK, DV, DKPart, DVPart,
    tables, index, tile, masks,
    scale, qk_scale, N, H, LAYOUT_HEADS, ITEMS_AT, ITEM_STRIDE, SLOTS, list_stride_h,
    list_stride_r,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    bh, lh, col, start, mid, stop, slot = _work_item(tables, ITEMS_AT, H, LAYOUT_HEADS, ITEM_STRIDE)
    list_offset = lh * list_stride_h + col * list_stride_r
    bh_offset = bh.to(tl.int64) * N * HEAD_DIM

    offs_n = col * BLOCK_N + tl.arange(0, BLOCK_N)  # this program's key block
    offs_d = tl.arange(0, BLOCK_D)
    io_mask = (offs_n < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    io_offsets = bh_offset + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
    k = _load_rows(K, bh, bh_offset, col * BLOCK_N, N, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    v = _load_rows(V, bh, bh_offset, col * BLOCK_N, N, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, Q, DO, LSE, Delta, bh, bh_offset, bh * N, index + list_offset,
        tile + list_offset, masks, start, mid, qk_scale, N,
        HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, PREC, TMA,
    )  # fmt: skip
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, Q, DO, LSE, Delta, bh, bh_offset, bh * N, index + list_offset,
        tile + list_offset, masks, mid, stop, qk_scale, N,
        HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, PREC, TMA,
    )  # fmt: skip
    if slot < 0:
        tl.store(DK + io_offsets, (dk * scale).to(DK.dtype.element_ty), mask=io_mask)
        tl.store(DV + io_offsets, dv.to(DV.dtype.element_ty), mask=io_mask)
    else:  # one piece of a long column: _sum_pieces_kernel adds the pieces up
        part = (bh * SLOTS + slot).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(DKPart + part[:, None] * BLOCK_D + offs_d[None, :], dk)
        tl.store(DVPart + part[:, None] * BLOCK_D + offs_d[None, :], dv)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, K, V, bh, bh_offset, index_ptr, tile_ptr, masks, start, stop,
    qk_scale, N,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, MASKED: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query block over the key blocks [start, stop) of its row."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for j in range(start, stop):
        first = tl.load(index_ptr + j) * BLOCK_N
        # Keys past seq_len load as 0: their dp and k are 0, so they add nothing to dQ.
        kT = _load_rows(K, bh, bh_offset, first, N, HEAD_DIM, BLOCK_N, BLOCK_D, TMA).T
        vT = _load_rows(V, bh, bh_offset, first, N, HEAD_DIM, BLOCK_N, BLOCK_D, TMA).T
        x = tl.dot(q, kT, input_precision=PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(x - lse[:, None])
        if MASKED:
            tile = tl.load(tile_ptr + j).to(tl.int64)
            allowed = tl.load(masks + tile * (BLOCK_M * BLOCK_N) + offs_m[:, None] * BLOCK_N
                              + offs_n[None, :])  # fmt: skip
            p = tl.where(allowed != 0, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PREC)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PREC)  # dQ_i += ds_ij k_j
    return dq


@triton.jit(do_not_specialize=["ITEMS_AT"])  # an offset: one compiled kernel for all
def _dq_kernel(
    Q, K, V, DO, LSE, Delta, DQ, DQPart,
    tables, index, tile, masks,
    scale, qk_scale, N, H, LAYOUT_HEADS, ITEMS_AT, ITEM_STRIDE, SLOTS, list_stride_h,
    list_stride_r,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, PREC: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    bh, lh, row, start, mid, stop, slot = _work_item(tables, ITEMS_AT, H, LAYOUT_HEADS, ITEM_STRIDE)
    list_offset = lh * list_stride_h + row * list_stride_r
    bh_offset = bh.to(tl.int64) * N * HEAD_DIM

    offs_m = row * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    io_mask = m_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    io_offsets = bh_offset + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
    q = _load_rows(Q, bh, bh_offset, row * BLOCK_M, N, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    do = _load_rows(DO, bh, bh_offset, row * BLOCK_M, N, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    lse = tl.load(LSE + bh * N + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(Delta + bh * N + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq = _dq_tiles(
        dq, q, do, lse, delta, K, V, bh, bh_offset, index + list_offset, tile + list_offset,
        masks, start, mid, qk_scale, N, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, PREC, TMA,
    )  # fmt: skip
    dq = _dq_tiles(
        dq, q, do, lse, delta, K, V, bh, bh_offset, index + list_offset, tile + list_offset,
        masks, mid, stop, qk_scale, N, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True, PREC, TMA,
    )  # fmt: skip
    if slot < 0:
        tl.store(DQ + io_offsets, (dq * scale).to(DQ.dtype.element_ty), mask=io_mask)
    else:
        part = (bh * SLOTS + slot).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(DQPart + part[:, None] * BLOCK_D + offs_d[None, :], dq)


@triton.jit(do_not_specialize=["MERGES_AT"])
def _sum_pieces_kernel(
    Dst, Part, tables, scale, N, H, LAYOUT_HEADS, MERGES_AT, MERGE_STRIDE, SLOTS,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Gradients are sums over tiles: a block cut in pieces gets scale * sum of its pieces."""
    bh = tl.program_id(0)
    lh = (bh % H) % LAYOUT_HEADS
    merge = tables + MERGES_AT + lh * MERGE_STRIDE + tl.program_id(1) * 3
    block = tl.load(merge)  # -1 pads a head with fewer long lists: it stores nothing
    first = tl.load(merge + 1)
    pieces = tl.load(merge + 2)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    for p in range(first, first + pieces):
        part = (bh * SLOTS + p).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        total += tl.load(Part + part[:, None] * BLOCK_D + offs_d[None, :])
    ok = (offs >= 0) & (offs < N)
    offsets = bh.to(tl.int64) * N * HEAD_DIM + offs[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(Dst + offsets, (total * scale).to(Dst.dtype.element_ty),
             mask=ok[:, None] & (offs_d < HEAD_DIM)[None, :])  # fmt: skip


# ---- host side ----------------------------------------------------------------------

# A program walks at most this many tiles; longer lists (Longformer's global rows and
# columns visit every block) are cut in pieces run by separate programs, then merged.
# On an H200 at n = 16384, 64 beat 32 and 16 (fewer merges) and no cutting at all
# (BigBird forward 0.33 ms against 0.41 ms: one program walking a 256-tile global row
# finished last).
MAX_TILES_PER_PROGRAM = 64


class WorkList(NamedTuple):
    """The programs of one kernel: each walks entries [start, stop) of one block's list.

    The planner's tables lie in `tables`, an int32 buffer the kernels read at offsets:
    items (H', num_items, 5) from `items_at`, one head every `item_stride` ints, and merges
    (H', num_merges, 3) from `merges_at`. ``items`` and ``merges`` are views made when
    asked for: the kernels need only the offsets, and the index build is host time, a
    microsecond or two for each view it does not make.
    """

    tables: torch.Tensor
    heads: int  # H': layout heads
    items_at: int
    item_stride: int
    num_items: int  # I: programs per (batch, head)
    merges_at: int
    merge_stride: int
    num_merges: int  # M: lists cut in pieces, per layout head at most
    num_slots: int  # scratch slots per (batch, head) for the pieces' partial results

    @property
    def items(self) -> torch.Tensor:
        """int32 (H', I, 5): block, start, stop, slot, mid; longest first."""
        shape, strides = (self.heads, self.num_items, 5), (self.item_stride, 5, 1)
        return self.tables.as_strided(shape, strides, self.items_at)

    @property
    def merges(self) -> torch.Tensor:
        """int32 (H', M, 3): block, first slot, pieces, for the blocks cut up."""
        shape, strides = (self.heads, self.num_merges, 3), (self.merge_stride, 3, 1)
        return self.tables.as_strided(shape, strides, self.merges_at)


@dataclass(frozen=True)
class KernelLayout:
    """A BlockSparseLayout plus what the kernels need beside it, built once per pattern."""

    layout: BlockSparseLayout
    rows: WorkList  # forward and dQ programs: query blocks
    cols: WorkList  # dK/dV programs: key blocks
    masks: torch.Tensor  # uint8 (max(T, 1), bs, bs): tile_masks as bytes
    pairs_per_head: int  # (query, key) pairs in the computed tiles, per head (mean)


def kernel_layout(
    pattern: Pattern | torch.Tensor,
    block_size: int,
    device: torch.device | str,
    max_tiles: int = MAX_TILES_PER_PROGRAM,
) -> KernelLayout:
    """The layout of `pattern` with the kernels' work lists and byte masks, cached."""
    pattern = as_pattern(pattern)
    cache = pattern.__dict__.setdefault("_kernel_layout_cache", {})
    device = device if isinstance(device, torch.device) else torch.device(device)
    key = (block_size, device, max_tiles)
    if key not in cache:
        # The layout and the work lists from the pattern's parts, by two Triton kernels
        # (triton_layout.py); for a pattern that is no union of parts, the layout by
        # layout.py's PyTorch operations and the work lists by the same planner.
        with _launching_on(device):
            built = triton_layout.build_from_parts(pattern, block_size, device, max_tiles)
            if built is None:
                layout = build_layout(pattern, block_size, device)
                masks = layout.tile_masks.view(torch.uint8)  # same bytes, a type Triton loads
                if masks.shape[0] == 0:  # no partial tile: a valid pointer for the kernels
                    masks = triton_layout._no_tiles(device, block_size)[1]
                work = triton_layout.plan_work(layout.host_counts, max_tiles, device)
                built = (layout, *work, masks)
        layout, rows, cols, masks = built
        pairs = layout.active_tiles * block_size**2 // layout.num_layout_heads
        cache[key] = KernelLayout(layout, rows, cols, masks, pairs)
    return cache[key]


def _launch_config(kernel: str, block_size: int, head_dim: int) -> dict:
    """num_warps / num_stages of `kernel` (forward, dkdv, dq).

    Timed on an H200 (bf16, block 64, D = 64, n = 16384, Longformer and BigBird): 4 warps
    beat 8 (1.6-1.9x slower) for every kernel; the forward likes 3 stages, the backward 2.
    Programs of 128 queries (two query blocks sharing each key tile, as in the Triton
    tutorial) were slower here: Longformer forward 0.43 ms against 0.39 ms.
    """
    warps = 4 if block_size >= 64 or head_dim > 64 else 2
    return {"num_warps": warps, "num_stages": 3 if kernel == "forward" else 2}


# Tiles come through tensor descriptors (TMA) where the GPU has the copy engine (Hopper and
# newer; the interpreter runs them anywhere) and the call is big enough to pay for them.
# Making and passing the descriptors costs the host about 0.1 ms per forward call on the H200
# machine; below about 2^28 computed (query, key) pairs the kernels finish sooner than that
# and the call waits on the host. Side by side on the H200, BigBird's forward took 0.299 ms
# with descriptors and 0.346 ms without at n = 16384 (3.3e8 pairs with B = 2, H = 16), but
# 0.226 ms against 0.114 ms at n = 4096. USE_TMA = False: always the pointer path.
USE_TMA = True
TMA_MIN_PAIRS = 1 << 28


def _uses_tma(tensors: tuple, pairs: int) -> bool:
    """Whether the kernels read these (batch, heads, n, head_dim) tensors through TMA, for a
    call computing `pairs` (query, key) pairs: a copy engine, a call big enough, and rows
    and base addresses aligned to 16 bytes, as descriptors need."""
    if not USE_TMA or pairs < TMA_MIN_PAIRS:
        return False
    if not INTERPRETED and torch.cuda.get_device_capability(tensors[0].device) < (9, 0):
        return False
    row_bytes = tensors[0].shape[-1] * tensors[0].element_size()
    return row_bytes % 16 == 0 and all(t.data_ptr() % 16 == 0 for t in tensors)


def _tile_sources(tensors: tuple, rows: int, block_d: int, tma: bool) -> tuple:
    """What the kernels load (rows, block_d) tiles from: the tensors themselves (pointer
    path), or a descriptor of each, read as a (batch * heads, n, head_dim) array."""
    if not tma:
        return tensors
    batch, heads, n, head_dim = tensors[0].shape
    shape, strides = [batch * heads, n, head_dim], [n * head_dim, head_dim, 1]
    return tuple(TensorDescriptor(t, shape, strides, [1, rows, block_d]) for t in tensors)


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs get true fp32 products (as torch matmul by default), not TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _list_args(kl: KernelLayout, heads: int, rows: bool) -> tuple[tuple, tuple]:
    """Pointer arguments and sizes shared by the kernels that walk rows (or columns)."""
    layout, work = kl.layout, (kl.rows if rows else kl.cols)
    index = layout.row_index if rows else layout.col_index
    tile = layout.row_tile if rows else layout.col_tile
    pointers = (work.tables, index, tile, kl.masks)
    sizes = (heads, layout.num_layout_heads, work.items_at, work.item_stride)
    sizes += (work.num_slots, index.stride(0), index.stride(1))
    return pointers, sizes


def _scratch(batch_heads: int, work: WorkList, block: int, block_d: int, device) -> torch.Tensor:
    """fp32 partial results of the pieces of cut blocks: (B*H, slots, block, BLOCK_D)."""
    return torch.empty(batch_heads, work.num_slots, block, block_d, device=device)


def _merge(kernel, dst: tuple, parts: tuple, work: WorkList, heads: int, kl, n: int, **kw):
    if work.num_merges:  # some block was cut in pieces
        grid = (dst[0].shape[0] * heads, work.num_merges)
        kernel[grid](*dst, *parts, work.tables, *kw.pop("scale", ()), n, heads,
                     kl.layout.num_layout_heads, work.merges_at, work.merge_stride,
                     work.num_slots, **kw)  # fmt: skip


def _forward(q, k, v, kl: KernelLayout, scale: float):
    batch, heads, n, head_dim = q.shape
    bs, block_d = kl.layout.block_size, _padded(head_dim)
    out = torch.empty_like(q)
    lse = torch.empty(batch * heads, n, dtype=torch.float32, device=q.device)  # log2 units
    out_part = _scratch(batch * heads, kl.rows, bs, block_d, q.device)
    lse_part = torch.empty(out_part.shape[:-1], device=q.device)
    pointers, sizes = _list_args(kl, heads, rows=True)
    tma = _uses_tma((q, k, v), kl.pairs_per_head * batch * heads)
    _forward_kernel[(batch * heads, kl.rows.num_items)](
        *_tile_sources((q, k, v), bs, block_d, tma), out, lse, out_part, lse_part, *pointers,
        scale * LOG2E, n, *sizes, HEAD_DIM=head_dim, BLOCK_M=bs, BLOCK_N=bs, BLOCK_D=block_d,
        EVEN_N=n % bs == 0, PREC=_precision(q.dtype), TMA=tma,
        **_launch_config("forward", bs, head_dim),
    )  # fmt: skip
    _merge(_merge_rows_kernel, (out, lse), (out_part, lse_part), kl.rows, heads, kl, n,
           HEAD_DIM=head_dim, BLOCK_M=bs, BLOCK_D=block_d)  # fmt: skip
    return out, lse


def _backward(q, k, v, out, lse, dout, kl: KernelLayout, scale: float):
    batch, heads, n, head_dim = q.shape
    bs, block_d, prec = kl.layout.block_size, _padded(head_dim), _precision(q.dtype)
    delta = torch.empty_like(lse)
    _delta_kernel[(batch * heads, _cdiv(n, 64))](
        out, dout, delta, n, HEAD_DIM=head_dim, BLOCK_M=64, BLOCK_D=block_d
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    sums = {"HEAD_DIM": head_dim, "BLOCK": bs, "BLOCK_D": block_d}
    tma = _uses_tma((q, k, v, dout), kl.pairs_per_head * batch * heads)
    sources = _tile_sources((q, k, v, dout), bs, block_d, tma)  # what tiles are loaded from

    dk_part = _scratch(batch * heads, kl.cols, bs, block_d, q.device)
    dv_part = torch.empty_like(dk_part)
    pointers, sizes = _list_args(kl, heads, rows=False)
    _dkdv_kernel[(batch * heads, kl.cols.num_items)](
        *sources, lse, delta, dk, dv, dk_part, dv_part, *pointers,
        scale, scale * LOG2E, n, *sizes,
        HEAD_DIM=head_dim, BLOCK_M=bs, BLOCK_N=bs, BLOCK_D=block_d, PREC=prec, TMA=tma,
        **_launch_config("dkdv", bs, head_dim),
    )  # fmt: skip
    _merge(_sum_pieces_kernel, (dk,), (dk_part,), kl.cols, heads, kl, n, scale=(scale,), **sums)
    _merge(_sum_pieces_kernel, (dv,), (dv_part,), kl.cols, heads, kl, n, scale=(1.0,), **sums)

    dq_part = _scratch(batch * heads, kl.rows, bs, block_d, q.device)
    pointers, sizes = _list_args(kl, heads, rows=True)
    _dq_kernel[(batch * heads, kl.rows.num_items)](
        *sources, lse, delta, dq, dq_part, *pointers, scale, scale * LOG2E, n, *sizes,
        HEAD_DIM=head_dim, BLOCK_M=bs, BLOCK_N=bs, BLOCK_D=block_d, PREC=prec, TMA=tma,
        **_launch_config("dq", bs, head_dim),
    )  # fmt: skip
    _merge(_sum_pieces_kernel, (dq,), (dq_part,), kl.rows, heads, kl, n, scale=(scale,), **sums)
    return dq, dk, dv


def _launching_on(device: torch.device):
    """Triton launches on the current CUDA device: make it `device` for the block (tensors
    on cuda:1 while cuda:0 is current would otherwise go to the wrong GPU). Switching costs
    the host microseconds, so only when the device is another one."""
    if device.type != "cuda" or device.index in (None, torch.cuda.current_device()):
        return contextlib.nullcontext()
    return torch.cuda.device(device)


# Host arithmetic in plain Python: triton.cdiv and triton.next_power_of_2 cost the host
# about 5 microseconds a call, and the index build is host time.
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(x: int) -> int:
    return 1 << (x - 1).bit_length()


def _padded(head_dim: int) -> int:
    """tl.dot wants power-of-two tiles of at least 16: pad head_dim (masked loads)."""
    return max(16, _next_power_of_2(head_dim))


class BlockSparseAttention(torch.autograd.Function):
    """Forward and backward through the kernels above; saves O and LSE, never P."""

    @staticmethod
    def forward(ctx, q, k, v, kl: KernelLayout, scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = _forward(q, k, v, kl, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernel_layout, ctx.scale = kl, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        with _launching_on(q.device):
            dq, dk, dv = _backward(q, k, v, out, lse, dout.contiguous(), ctx.kernel_layout,
                                   ctx.scale)  # fmt: skip
        return dq, dk, dv, None, None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | torch.Tensor,
    block_size: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-sparse attention with fused Triton kernels; differentiable in q, k and v.

    q, k, v: (batch, heads, seq_len, head_dim) in float16, bfloat16 or float32, head_dim
    <= 128, on a CUDA device (or on CPU when none exists: the Triton interpreter).
    `pattern`: a Pattern or a bool mask (n, n) / (H, n, n). `block_size` (16, 32, 64 or 128)
    is the layout tile. Returns the output shaped like q; fully masked rows give zeros.
    """
    batch, heads, seq_len, head_dim = check_qkv(q, k, v)
    pattern = check_pattern(pattern, heads, seq_len)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"expected q, k, v in float16, bfloat16 or float32, got {q.dtype}")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"expected head_dim <= {MAX_HEAD_DIM}, got {head_dim}")
    if block_size not in (16, 32, 64, 128):
        raise ValueError(f"expected block_size 16, 32, 64 or 128 (a tl.dot tile), got {block_size}")
    expected = "cpu" if INTERPRETED else "cuda"
    if q.device.type != expected:
        raise ValueError(
            f"expected tensors on {expected} (Triton "
            f"{'interpreter' if INTERPRETED else 'kernels compiled for the GPU'}), "
            f"got {q.device}"
        )
    kl = kernel_layout(pattern, block_size, q.device, MAX_TILES_PER_PROGRAM)
    scale = default_scale(head_dim, scale)
    if INTERPRETED and q.dtype == torch.bfloat16:
        # Triton 3.6's interpreter multiplies bf16 tiles wrongly in tl.dot: use float32 there.
        return BlockSparseAttention.apply(q.float(), k.float(), v.float(), kl, scale).to(q.dtype)
    with _launching_on(q.device):
        return BlockSparseAttention.apply(q, k, v, kl, scale)


# Last: triton_layout imports this module first, and an import inside kernel_layout would
# cost each build microseconds of import machinery.
from . import triton_layout  # noqa: E402
