"""Stage 4's index build: a pattern's compressed layout and the kernels' work, on the GPU.

``layout.py`` builds the compressed layout (row and column lists, tile masks) with a few
dozen whole-tensor PyTorch operations. On a GPU each of them is quick, but each costs the
host about 10 microseconds to launch; at n = 32768 they added up to 2-3 ms, as long as a
whole forward and backward pass. Here the layout, and the work lists of the attention
kernels with it, come from two kernels and one wait for the device, for every pattern that
is a union of simple parts (``patterns.Parts``; Longformer, BigBird, windows, causal and
their unions):

    allowed(h, i, j) = offsets(i - j)  or  i in tokens  or  j in tokens
                       or  blocks[h, i // bs, j // bs]

A tile covering queries [qs, qe] and keys [ks, ke] needs no element test to get its kind:

* offsets: the tile holds exactly the offsets [qs - ke, qe - ks]. Count how many of them
  are allowed: all of them make every pair allowed (full), none of them make this part
  add nothing. When the allowed offsets are one range [lo, hi] (windows, causal, dense and
  their intersections: ``Parts.offset_range``), the count is the overlap of two ranges;
  otherwise (a dilated window) a prefix sum over all 2n - 1 offsets gives it.
* tokens: a binary search in the sorted global tokens counts those among the tile's
  queries and among its keys (consecutive tokens, such as Longformer's first ones: the
  overlap of two ranges): all queries or all keys global is full, none of either adds
  nothing.
* blocks, at the layout's own block size (BigBird): one tile is one block, full or empty.
  A table made by a recipe (``patterns.BlockRecipe``: BigBird's band, global blocks and
  random blocks) goes to the GPU as that recipe: three numbers a row at n = 32768, 6 KB.
  Any other table goes as bits, eight blocks a byte (32 KB there, not 256 KB).

The tile is full when one part fills it, empty when no part touches it, and partial when
exactly one part touches it and none fills it. Where two parts touch it without filling
it, their union might still cover it: only those few tiles (a partly global block at the
edge of a window) are tested element by element, as ``layout.py`` refines them.

The kernels (each program owns one row of tiles, or one column):

1. ``_classify_kernel``: the kind of every tile, each row's and column's counts, and every
   partial tile's rank within its row.
2. ``_lists_kernel``: the row lists and the column lists, full tiles first, as
   ``layout.py`` defines them, and the element masks of the partial tiles (each by its
   row's or its column's program, whichever has fewer). One more program per group of
   lists plans the attention kernels' work (``_plan_lists``): which piece of which list
   each of their programs walks; and adds up the sizes the host needs.

The host launches both without waiting in between. It bounds from the parts alone how
long a list can be and how many partial tiles there can be (``_room_from_parts``; exact
for Longformer's and BigBird's lists, since their global rows list every block),
allocates that much, makes its views of the tables while the kernels run, and then waits
once, for the planner's dozen sizes, to cut every tensor to its true size. The last
planner program writes those sizes straight into pinned host memory, so the wait is for
the kernels alone, with no copy behind them. (Timed statement by statement, waiting for
the counts between the kernels and sizing from them had been a quarter of the build.)

Patterns without parts get their layout from ``layout.py`` and their work from
``plan_work``, which runs the same planner as a kernel of its own.

The GPU's part of a build takes microseconds; the host's part is what counts. So these
kernels specialize on none of their arguments, and after its first launch each starts
straight through its compiled form's C launcher (``_launch``), without Triton's per-launch
work.
"""

from __future__ import annotations

import inspect
import operator
import threading
from typing import NamedTuple

import numpy as np
import torch

# First: triton_kernels decides between the GPU and the interpreter before triton loads.
from . import triton_kernels as _setup
from .layout import BlockSparseLayout
from .patterns import EMPTY, FULL, PARTIAL, BlockRecipe, Parts, Pattern, _check_positive_int

# isort: split
import triton
import triton.language as tl

UNSURE = 3  # two parts touch the tile without filling it: only an element test can tell
# The kinds as compile-time constants, the only globals a kernel may read.
_EMPTY, _PARTIAL, _FULL, _UNSURE = (tl.constexpr(k) for k in (EMPTY, PARTIAL, FULL, UNSURE))
# The rows of counts (4, HEADS, NB), the layout's: entries of each row list, full ones
# among them, entries of each column list, full ones among them (column rows = row rows + 2).
_ROW, _ROW_FULL, _COL, _COL_FULL = (tl.constexpr(k) for k in range(4))
# What the planner reports over all groups of lists (each head's rows, or its columns), the
# numbers the host reads back: sizes (2, SIZES), rows' then columns'. They head `out`,
# followed by a count of the planner programs done (PLANNED); HEADER ints in all.
PIECES, CUT_PIECES, CUT_LISTS, LONGEST, ENTRIES, FULL_ENTRIES, SIZES = range(7)
_PIECES, _CUT_PIECES, _CUT_LISTS, _LONGEST, _ENTRIES, _FULL_ENTRIES, _SIZES = (
    tl.constexpr(k) for k in range(7)
)
PLANNED, HEADER = 2 * SIZES, 2 * SIZES + 1
_PLANNED, _HEADER = tl.constexpr(PLANNED), tl.constexpr(HEADER)
# How the kernels read the offsets part: none, a prefix sum over all offsets, or a range.
NO_OFFSETS, PREFIX, RANGE = 0, 1, 2
_NO_OFFSETS, _PREFIX, _RANGE = (tl.constexpr(k) for k in (NO_OFFSETS, PREFIX, RANGE))
# How they read the global tokens: none, a sorted list, or one run of consecutive ones.
NO_TOKENS, LIST, RUN = 0, 1, 2
_NO_TOKENS, _LIST, _RUN = (tl.constexpr(k) for k in (NO_TOKENS, LIST, RUN))
# How they read the blocks part: none, the table as bits, or the recipe that made it.
NO_BLOCKS, BITS, RECIPE = 0, 1, 2
_NO_BLOCKS, _BITS, _RECIPE = (tl.constexpr(k) for k in (NO_BLOCKS, BITS, RECIPE))


@triton.jit
def _tables(out, HEADS, NB, WIDTH, ITEMS):
    """Pointers to the tables of a build, one after the other in `out`, its one int32
    buffer (``_table_starts`` finds them on the host): sizes (2, SIZES) and the planner
    count, counts (4, HEADS, NB), index and tile (2, HEADS, NB, WIDTH) each, items (2,
    HEADS, ITEMS, 5), merges (2, HEADS, MERGES, 3); the rows' then the columns' of each."""
    counts = out + _HEADER
    index = counts + 4 * HEADS * NB
    tile = index + 2 * HEADS * NB * WIDTH
    items = tile + 2 * HEADS * NB * WIDTH
    return out, counts, index, tile, items, items + 2 * HEADS * ITEMS * 5


@triton.jit
def _counts_of(counts, which, h, HEADS, NB):
    """Pointer to counts[which, h, 0]: one head's counts of one kind, NB of them."""
    return counts + (which * HEADS + h) * NB


@triton.jit
def _pieces(count, ok, MAX_TILES):
    """How the planner cuts lists of `count` entries (lanes where `ok`): pieces of
    MAX_TILES entries (`whole`), then a shorter one of `rest` entries if any (`short`;
    an empty list gets one empty piece); `pieces` in all, `cut` = pieces if > 1, else 0."""
    whole = count // MAX_TILES
    rest = count - whole * MAX_TILES
    short = ok & ((rest > 0) | (count == 0))
    pieces = whole + short.to(tl.int32)
    return whole, rest, short, pieces, tl.where(pieces > 1, pieces, 0)


# ---- the parts, asked about a range ---------------------------------------------------


@triton.jit
def _offsets_in(offset_prefix, OFF_LO, OFF_HI, lo, hi, N, OFFSETS: tl.constexpr):
    """How many allowed offsets lie in [lo, hi]. OFFSETS == _RANGE: the allowed ones are
    OFF_LO <= d <= OFF_HI, count the overlap. OFFSETS == _PREFIX: offset_prefix[k] counts
    the allowed ones among the k + 1 smallest, -(N - 1), ..., k - (N - 1)."""
    if OFFSETS == _RANGE:
        return tl.maximum(tl.minimum(hi, OFF_HI) - tl.maximum(lo, OFF_LO) + 1, 0)
    else:
        below = tl.load(offset_prefix + lo + N - 2, mask=lo > 1 - N, other=0)
        return tl.load(offset_prefix + hi + N - 1) - below


@triton.jit
def _tokens_below(tokens, NUM_TOKENS, x, TOKEN_STEPS: tl.constexpr):
    """How many global tokens are < x, for each element of x (tokens sorted, distinct).

    A binary search by halving steps: `below` only grows, by 2^s whenever the token that
    many places further is still < x; TOKEN_STEPS = NUM_TOKENS.bit_length() steps.
    """
    below = x * 0
    for s in tl.static_range(TOKEN_STEPS - 1, -1, -1):
        further = below + (1 << s)
        ok = further <= NUM_TOKENS
        token = tl.load(tokens + further - 1, mask=ok, other=0)
        below = tl.where(ok & (token < x), further, below)
    return below


@triton.jit
def _tokens_in(tokens, FIRST_TOKEN, NUM_TOKENS, lo, hi, TOKENS: tl.constexpr,
               TOKEN_STEPS: tl.constexpr):  # fmt: skip
    """How many global tokens lie in [lo, hi]. TOKENS == _RUN: they are the NUM_TOKENS
    positions from FIRST_TOKEN on (Longformer's first tokens), count the overlap. TOKENS ==
    _LIST: search the sorted list `tokens` twice."""
    if TOKENS == _RUN:
        last = FIRST_TOKEN + NUM_TOKENS - 1
        return tl.maximum(tl.minimum(hi, last) - tl.maximum(lo, FIRST_TOKEN) + 1, 0)
    else:
        below_hi = _tokens_below(tokens, NUM_TOKENS, hi + 1, TOKEN_STEPS)
        return below_hi - _tokens_below(tokens, NUM_TOKENS, lo, TOKEN_STEPS)


@triton.jit
def _tile_kinds(r, c, h, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN, NUM_TOKENS,
                blocks, BAND, GLOBAL_BLOCKS, N, NB, BS, TOKEN_STEPS: tl.constexpr,
                OFFSETS: tl.constexpr, TOKENS: tl.constexpr, BLOCKS: tl.constexpr,
                RANDOM: tl.constexpr):  # fmt: skip
    """Kinds of the tiles (r, c) of layout head h; r or c is a vector of blocks < NB."""
    qs = r * BS
    qe = tl.minimum(qs + BS, N) - 1  # the last block may be short
    ks = c * BS
    ke = tl.minimum(ks + BS, N) - 1
    filled = tl.zeros_like(qs + ks) != 0  # all False, shaped like whichever is a vector
    touched = filled.to(tl.int32)  # how many parts allow some pair of the tile
    if OFFSETS != _NO_OFFSETS:
        lo, hi = qs - ke, qe - ks  # the tile's smallest and largest offset i - j
        allowed = _offsets_in(offset_prefix, OFF_LO, OFF_HI, lo, hi, N, OFFSETS)
        filled |= allowed == hi - lo + 1
        touched += (allowed > 0).to(tl.int32)
    if TOKENS != _NO_TOKENS:
        in_rows = _tokens_in(tokens, FIRST_TOKEN, NUM_TOKENS, qs, qe, TOKENS, TOKEN_STEPS)
        in_cols = _tokens_in(tokens, FIRST_TOKEN, NUM_TOKENS, ks, ke, TOKENS, TOKEN_STEPS)
        filled |= (in_rows == qe - qs + 1) | (in_cols == ke - ks + 1)
        touched += ((in_rows > 0) | (in_cols > 0)).to(tl.int32)
    if BLOCKS != _NO_BLOCKS:
        if BLOCKS == _BITS:  # the table's rows as bits (np.packbits: block c in bit 7 - c % 8)
            byte = tl.load(blocks + (h * NB + r) * ((NB + 7) // 8) + c // 8)
            block = ((byte >> (7 - c % 8)) & 1) != 0
        else:  # the recipe: the band, the global blocks, RANDOM listed blocks a row
            block = (tl.abs(r - c) <= BAND) | (r < GLOBAL_BLOCKS) | (c < GLOBAL_BLOCKS)
            for k in tl.static_range(RANDOM):
                block |= tl.load(blocks + (h * NB + r) * RANDOM + k) == c
        filled |= block
        touched += block.to(tl.int32)
    kind = tl.where(touched == 0, _EMPTY, tl.where(touched == 1, _PARTIAL, _UNSURE))
    return tl.where(filled, _FULL, kind).to(tl.int32)


@triton.jit
def _tile_mask(r, c, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN, NUM_TOKENS, N, BS,
               BLOCK_BS: tl.constexpr, TOKEN_STEPS: tl.constexpr,
               OFFSETS: tl.constexpr, TOKENS: tl.constexpr):  # fmt: skip
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
    if OFFSETS != _NO_OFFSETS:
        d = tl.where(inside, i[:, None] - j[None, :], 0)
        allowed |= _offsets_in(offset_prefix, OFF_LO, OFF_HI, d, d, N, OFFSETS) > 0
    if TOKENS != _NO_TOKENS:
        i_global = _tokens_in(tokens, FIRST_TOKEN, NUM_TOKENS, i, i, TOKENS, TOKEN_STEPS) > 0
        j_global = _tokens_in(tokens, FIRST_TOKEN, NUM_TOKENS, j, j, TOKENS, TOKEN_STEPS) > 0
        allowed |= i_global[:, None] | j_global[None, :]
    return allowed & inside


# ---- launching without Triton's per-launch work ----------------------------------------
#
# At every launch, ``kernel[grid](...)`` binds the arguments, works out how each one could
# specialize the kernel (an int equal to 1 becomes a constant, one divisible by 16 or a
# pointer aligned to 16 bytes gives the compiler a hint), looks the result up among the
# compiled versions, and checks that the tl.constexpr globals the kernel read are unchanged:
# about 30 microseconds of host time per launch on the H200 machine, more than these
# kernels take on the GPU. Even the compiled kernel's own launch (``compiled[grid](...)``)
# asks for the current device and stream, launch hooks and scratch memory before its C
# launcher runs: 10-12 microseconds there, against 6-7 for the C launcher alone.
#
# These kernels never specialize on their arguments' values, so each has one compiled
# version per set of constexpr values; the build passes every pointer with a dtype its
# flags fix, and every int within int32 (it checks nb^2 * heads < 2^31). So after its first
# launch a kernel is launched straight through its C launcher (_launch): no hooks, no
# scratch memory, no other compiled version to look for.


def _unspecialized_jit(fn):
    """``triton.jit`` with no runtime argument specialized on its value or alignment."""
    runtime = [name for name, p in inspect.signature(fn).parameters.items()
               if p.annotation not in ("tl.constexpr", tl.constexpr)]  # fmt: skip
    return triton.jit(fn, do_not_specialize=runtime, do_not_specialize_on_alignment=runtime)


_LAUNCHERS: dict[tuple, object] = {}


def _listened(hook) -> bool:
    """Whether a launch hook is set: Triton 3.6 keeps a chain of them, empty by default."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _direct_launcher(compiled, flags: tuple):
    """launch(grid, args) through `compiled`'s C launcher, or through the compiled kernel
    itself where this Triton's launcher is not the one expected (scratch memory needed,
    launch hooks set, another version's internals)."""
    launcher = getattr(compiled, "run", None)
    plain = getattr(launcher, "global_scratch_size", 1) == 0 and not any(
        getattr(launcher, name, True)
        for name in ("profile_scratch_size", "launch_cooperative_grid", "launch_pdl")
    )
    if not (plain and hasattr(launcher, "launch")):
        return lambda grid, args: compiled[grid](*args, *flags)
    c_launch, function, metadata = launcher.launch, compiled.function, compiled.packed_metadata
    hooks = triton.knobs.runtime
    stream_of = torch._C._cuda_getCurrentRawStream

    def launch(grid, args):
        if _listened(hooks.launch_enter_hook) or _listened(hooks.launch_exit_hook):
            compiled[grid](*args, *flags)  # a profiler listens: Triton's own launch calls it
            return
        stream = stream_of(torch.cuda.current_device())
        c_launch(*grid, stream, function, False, False, None, None, metadata, None, None, None,
                 *args, *flags)  # fmt: skip

    return launch


def _launch(kernel, grid: tuple, *args, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)``: on a GPU, after the first launch with these
    constexpr values, straight through the C launcher of the compiled kernel that launch
    returned. For _unspecialized_jit kernels whose constexpr parameters come last, each
    pointer of one dtype and each int within int32 for given constexpr values; grid 3-d."""
    if _setup.INTERPRETED:
        kernel[grid](*args, **constexprs)
        return
    key = (kernel, torch.cuda.current_device(), *constexprs.values())
    launch = _LAUNCHERS.get(key)
    if launch is not None:
        launch(grid, args)
        return
    runtime, constant = kernel.params[: len(args)], kernel.params[len(args) :]
    assert all(p.do_not_specialize and p.do_not_specialize_on_alignment for p in runtime)
    assert all(p.is_constexpr for p in constant) and len(constant) == len(constexprs)
    compiled = kernel[grid](*args, **constexprs)
    _LAUNCHERS[key] = _direct_launcher(compiled, tuple(constexprs[p.name] for p in constant))


# ---- kernel 1: the kind of every tile ---------------------------------------------------


@_unspecialized_jit
def _classify_kernel(kinds, rank, out, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN,
                     NUM_TOKENS, blocks, BAND, GLOBAL_BLOCKS, N, NB, HEADS, BS,
                     BLOCK_BS: tl.constexpr, BLOCK_NB: tl.constexpr, TOKEN_STEPS: tl.constexpr,
                     OFFSETS: tl.constexpr, TOKENS: tl.constexpr, BLOCKS: tl.constexpr,
                     RANDOM: tl.constexpr):  # fmt: skip
    """Program (b, h, 0) classifies row b of head h, program (b, h, 1) column b.

    counts (4, HEADS, NB), in `out` (_tables): row count, row full count, column count,
    column full count; kinds (HEADS, NB, NB) int8; rank (HEADS, NB, NB) int32: the partial
    tiles of a row numbered 0, 1, ... from left to right. Program (0, 0, 0) also zeroes
    the sizes, where the lists kernel's planner adds up, and its count of programs done.
    """
    b, h, column = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    sizes, counts = out, out + _HEADER
    if (b == 0) & (h == 0) & (column == 0):
        fields = tl.arange(0, 16)
        tl.store(sizes + fields, 0, mask=fields < _HEADER)
    other = tl.arange(0, BLOCK_NB)  # the blocks across this row (or down this column)
    ok = other < NB
    # Lanes past NB ask about a real block, so that every load stays in bounds; their
    # kind is set to empty right after.
    clamped = tl.minimum(other, NB - 1)
    if column == 0:
        kind = _tile_kinds(b, clamped, h, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN,
                           NUM_TOKENS, blocks, BAND, GLOBAL_BLOCKS, N, NB, BS, TOKEN_STEPS,
                           OFFSETS, TOKENS, BLOCKS, RANDOM)  # fmt: skip
    else:
        kind = _tile_kinds(clamped, b, h, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN,
                           NUM_TOKENS, blocks, BAND, GLOBAL_BLOCKS, N, NB, BS, TOKEN_STEPS,
                           OFFSETS, TOKENS, BLOCKS, RANDOM)  # fmt: skip
    kind = tl.where(ok, kind, _EMPTY)
    # Unsure tiles are tested element by element, leftmost first, until none is left (by
    # the row's program and again by the column's). For Longformer they are few: where a
    # partly global block meets the window's edge.
    for _ in range(tl.sum((kind == _UNSURE).to(tl.int32), 0)):
        o = tl.min(tl.where(kind == _UNSURE, other, BLOCK_NB), 0)
        r, c = b, o
        if column != 0:
            r, c = o, b
        allowed = _tile_mask(r, c, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN,
                             NUM_TOKENS, N, BS, BLOCK_BS, TOKEN_STEPS, OFFSETS, TOKENS)  # fmt: skip
        pairs = tl.sum(tl.sum(allowed.to(tl.int32), 1), 0)
        area = (tl.minimum(r * BS + BS, N) - r * BS) * (tl.minimum(c * BS + BS, N) - c * BS)
        exact = tl.where(pairs == area, _FULL, tl.where(pairs > 0, _PARTIAL, _EMPTY))
        kind = tl.where(other == o, exact, kind)
    listed = tl.sum((kind != _EMPTY).to(tl.int32), 0)
    full = tl.sum((kind == _FULL).to(tl.int32), 0)
    tl.store(_counts_of(counts, _ROW + 2 * column, h, HEADS, NB) + b, listed)
    tl.store(_counts_of(counts, _ROW_FULL + 2 * column, h, HEADS, NB) + b, full)
    if column == 0:
        row = (h * NB + b) * NB + other
        tl.store(kinds + row, kind.to(tl.int8), mask=ok)
        partial = (kind == _PARTIAL).to(tl.int32)
        tl.store(rank + row, tl.cumsum(partial, 0) - partial, mask=ok)


# ---- kernel 2: the lists, the masks and the attention kernels' work ---------------------


@triton.jit
def _store_item(item, block, start, stop, slot, full_count, mask):
    """Work items, the five numbers triton_kernels._work_item reads: block, start, stop,
    slot and mid (its full tiles are entries [start, mid))."""
    tl.store(item, block, mask=mask)
    tl.store(item + 1, start, mask=mask)
    tl.store(item + 2, stop, mask=mask)
    tl.store(item + 3, slot, mask=mask)
    tl.store(item + 4, tl.minimum(tl.maximum(full_count, start), stop), mask=mask)


@triton.jit
def _plan_lists(items, merges, sizes, list_count, list_full, NB, ITEMS, MERGES, MAX_TILES,
                BLOCK_NB: tl.constexpr):  # fmt: skip
    """The attention kernels' work on one group of NB lists (one head's rows, or columns).

    List b has list_count[b] entries, list_full[b] of them full. It is cut into pieces of
    MAX_TILES entries and a shorter last piece (an empty list gets one piece: its program
    writes zeros). items (ITEMS, 5) gets one piece per program, longest first (Graham's
    LPT rule): all pieces of MAX_TILES entries, list by list, then the shorter ones sorted
    by length; a group with fewer pieces than ITEMS repeats its last, shortest one. A
    list cut in several pieces has them computed into scratch slots numbered 0, 1, ...
    list by list; merges (MERGES, 3) names each such list, its first slot and its number
    of pieces, then pads with list -1 (nothing to merge). Nothing is written past ITEMS or
    MERGES: the host sized them from bounds, and reads in `sizes` what was needed.
    """
    lists = tl.arange(0, BLOCK_NB)
    ok = lists < NB
    count = tl.load(list_count + lists, mask=ok, other=0)
    full_count = tl.load(list_full + lists, mask=ok, other=0)
    whole, rest, short, pieces, cut = _pieces(count, ok, MAX_TILES)
    first_slot = tl.cumsum(cut, 0) - cut

    # The pieces of MAX_TILES entries: list after list, piece after piece.
    first_place = tl.cumsum(whole, 0) - whole  # where each list's first piece goes
    for k in range(tl.max(whole, 0)):
        start = k * MAX_TILES
        slot = tl.where(cut > 0, first_slot + k, -1)
        _store_item(items + (first_place + k) * 5, lists, start, start + MAX_TILES, slot,
                    full_count, (k < whole) & (first_place + k < ITEMS))  # fmt: skip
    # Then the shorter pieces, longest first. One number orders them: a piece of list b
    # with `rest` entries gets key (MAX_TILES - rest) * BLOCK_NB + b, so a longer piece
    # comes first and, among equally long ones, the earlier list. After the sort the k-th
    # key is the k-th piece, and key % BLOCK_NB its list. Lists without a shorter piece get
    # a key larger than any (`none`). int64: MAX_TILES * BLOCK_NB may pass 2^31.
    none = tl.cast(MAX_TILES + 1, tl.int64) * BLOCK_NB
    key = tl.where(short, (MAX_TILES - rest).to(tl.int64) * BLOCK_NB + lists, none)
    key = tl.sort(key, 0)
    place = tl.sum(whole, 0) + lists  # the k-th sorted key: k-th after the whole pieces
    owner = (key % BLOCK_NB).to(tl.int32)  # the list of that piece
    owner_whole = tl.gather(whole, owner, 0)
    owner_slot = tl.gather(first_slot, owner, 0) + owner_whole  # its slot, if cut
    slot = tl.where(tl.gather(cut, owner, 0) > 0, owner_slot, -1)
    _store_item(
        items + place * 5,
        owner,
        owner_whole * MAX_TILES,
        tl.gather(count, owner, 0),
        slot,
        tl.gather(full_count, owner, 0),
        (key < none) & (place < ITEMS),
    )

    # Merges: the lists cut in pieces, in list order.
    is_cut = (cut > 0).to(tl.int32)
    at = tl.cumsum(is_cut, 0) - is_cut
    listed = (cut > 0) & (at < MERGES)
    tl.store(merges + at * 3, lists, mask=listed)
    tl.store(merges + at * 3 + 1, first_slot, mask=listed)
    tl.store(merges + at * 3 + 2, cut, mask=listed)
    for start in range(tl.sum(is_cut, 0), MERGES, BLOCK_NB):
        pad = (start + lists) * 3
        tl.store(merges + pad, -1, mask=start + lists < MERGES)
        tl.store(merges + pad + 1, 0, mask=start + lists < MERGES)
        tl.store(merges + pad + 2, 0, mask=start + lists < MERGES)

    # What the host reads back, over all heads (sizes was zeroed before): the most pieces,
    # scratch slots and cut lists a head needs, the longest list, and all entries.
    # (Relaxed: nothing here waits on them; the host reads them after the kernel ends.)
    size = tl.sum(pieces, 0)
    tl.atomic_max(sizes + _PIECES, size, sem="relaxed")
    tl.atomic_max(sizes + _CUT_PIECES, tl.sum(cut, 0), sem="relaxed")
    tl.atomic_max(sizes + _CUT_LISTS, tl.sum(is_cut, 0), sem="relaxed")
    tl.atomic_max(sizes + _LONGEST, tl.max(count, 0), sem="relaxed")
    tl.atomic_add(sizes + _ENTRIES, tl.sum(count, 0), sem="relaxed")
    tl.atomic_add(sizes + _FULL_ENTRIES, tl.sum(full_count, 0), sem="relaxed")

    # Padding: copies of the last item, once every thread's items are in memory. Its five
    # numbers are read once: a load inside the loop waits on memory at every turn.
    tl.debug_barrier()
    fields = tl.arange(0, 8)
    last = tl.load(items + (size - 1) * 5 + fields, mask=fields < 5)
    for start in range(size, ITEMS, BLOCK_NB):
        place = start + lists
        tl.store(items + place[:, None] * 5 + fields[None, :], last[None, :],
                 mask=(place < ITEMS)[:, None] & (fields < 5)[None, :])  # fmt: skip


@triton.jit
def _plan_group(h, column, out, host_sizes, NB, HEADS, WIDTH, ITEMS, MERGES, MAX_TILES,
                BLOCK_NB: tl.constexpr):  # fmt: skip
    """Plan the work on head h's row lists (column == 0) or on its column lists, from the
    counts in `out` (_tables) as _classify_kernel writes them.

    The last of the 2 * HEADS planner programs to finish copies the sizes they added up
    to `host_sizes` (2, SIZES): host memory that the GPU writes to directly (pinned), so
    the host needs no copy of its own, only to wait for the kernel.
    """
    sizes, counts, _, _, items, merges = _tables(out, HEADS, NB, WIDTH, ITEMS)
    group = column * HEADS + h
    _plan_lists(items + group * ITEMS * 5, merges + group * MERGES * 3, sizes + column * _SIZES,
                _counts_of(counts, _ROW + 2 * column, h, HEADS, NB),
                _counts_of(counts, _ROW_FULL + 2 * column, h, HEADS, NB), NB, ITEMS, MERGES,
                MAX_TILES, BLOCK_NB)  # fmt: skip
    tl.debug_barrier()  # every thread's additions come before this program says it is done
    done = tl.atomic_add(sizes + _PLANNED, 1, sem="acq_rel")  # acquire: sees theirs too
    if done == 2 * HEADS - 1:
        fields = tl.arange(0, 16)
        wanted = fields < 2 * _SIZES
        totals = tl.atomic_add(sizes + fields, 0, mask=wanted, sem="relaxed")  # read in L2
        tl.store(host_sizes + fields, totals, mask=wanted)


@triton.jit
def _write_list(b, h, column, kinds, rank, counts, index, tile, width, masks, MASK_TILES,
                offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN, NUM_TOKENS, N, NB, HEADS, BS,
                BLOCK_NB: tl.constexpr, BLOCK_BS: tl.constexpr, TOKEN_STEPS: tl.constexpr,
                OFFSETS: tl.constexpr, TOKENS: tl.constexpr):  # fmt: skip
    """Row b's list of head h (column == 0) or column b's, and some partial tiles' masks.

    An entry's place is a running count: full tiles take places 0, 1, ... in block order,
    partial tiles follow them. A partial tile (r, c) is tile_masks[tile_base[r] +
    rank[h, r, c]]: row by row, left to right, head after head, as layout.py numbers them.
    """
    other = tl.arange(0, BLOCK_NB)
    ok = other < NB
    rows, cols = b + 0 * other, other
    if column != 0:
        rows, cols = other, b + 0 * other
    # Where each row's partial tiles start: after those of the rows above, and of the
    # heads before (their rows' counts minus full counts).
    head_base = 0
    for earlier in range(h):
        entries = tl.load(_counts_of(counts, _ROW, earlier, HEADS, NB) + other, mask=ok, other=0)
        fulls = tl.load(_counts_of(counts, _ROW_FULL, earlier, HEADS, NB) + other, mask=ok, other=0)
        head_base += tl.sum(entries - fulls, 0)
    partial_rows = tl.load(_counts_of(counts, _ROW, h, HEADS, NB) + other, mask=ok, other=0)
    partial_rows -= tl.load(_counts_of(counts, _ROW_FULL, h, HEADS, NB) + other, mask=ok, other=0)
    tile_base = head_base + tl.cumsum(partial_rows, 0) - partial_rows  # (BLOCK_NB,) per row

    tiles = (h * NB + rows) * NB + cols  # flat (head, row, column) of each tile
    kind = tl.load(kinds + tiles, mask=ok, other=_EMPTY).to(tl.int32)
    full, partial = kind == _FULL, kind == _PARTIAL
    full_count = tl.sum(full.to(tl.int32), 0)
    place = tl.where(full, tl.cumsum(full.to(tl.int32), 0) - 1,
                     full_count + tl.cumsum(partial.to(tl.int32), 0) - 1)  # fmt: skip
    within = tl.load(rank + tiles, mask=partial, other=0)  # place among its row's partial tiles
    tile_id = tl.gather(tile_base, rows, 0) + within
    entry = (h * NB + b) * width + place
    listed = (full | partial) & (place < width)  # never past the width the host allowed
    tl.store(index + entry, other, mask=listed)
    tl.store(tile + entry, tl.where(partial, tile_id, -1), mask=listed)
    # Past the list's end: block 0 and no tile, as padding.
    pad = (other >= tl.sum((full | partial).to(tl.int32), 0)) & (other < width)
    tl.store(index + (h * NB + b) * width + other, 0, mask=pad)
    tl.store(tile + (h * NB + b) * width + other, -1, mask=pad)

    # Each partial tile's element mask, written once: by its row's program or by its
    # column's, whichever has fewer partial tiles (the row on a tie). So no program writes
    # a whole partly global row alone (one global token makes every tile of its row partial).
    partial_cols = tl.load(_counts_of(counts, _COL, h, HEADS, NB) + other, mask=ok, other=0)
    partial_cols -= tl.load(_counts_of(counts, _COL_FULL, h, HEADS, NB) + other, mask=ok, other=0)
    mine = tl.sum(partial.to(tl.int32), 0)  # this row's (or column's) partial tiles
    if column == 0:
        writes = partial & (mine <= partial_cols)
    else:
        writes = partial & (mine < partial_rows)
    a = tl.arange(0, BLOCK_BS)
    inside = (a < BS)[:, None] & (a < BS)[None, :]
    for _ in range(tl.sum(writes.to(tl.int32), 0)):
        o = tl.min(tl.where(writes, other, BLOCK_NB), 0)  # leftmost (topmost) one left
        writes = writes & (other != o)
        r, c = b, o
        if column != 0:
            r, c = o, b
        allowed = _tile_mask(r, c, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN,
                             NUM_TOKENS, N, BS, BLOCK_BS, TOKEN_STEPS, OFFSETS, TOKENS)  # fmt: skip
        t = tl.sum(tl.where(other == o, tile_id, 0), 0).to(tl.int64)  # its place in masks
        tl.store(masks + (t * BS + a[:, None]) * BS + a[None, :], allowed.to(tl.uint8),
                 mask=inside & (t < MASK_TILES))  # fmt: skip


@_unspecialized_jit
def _lists_kernel(kinds, rank, out, host_sizes, masks, offset_prefix, OFF_LO, OFF_HI, tokens,
                  FIRST_TOKEN, NUM_TOKENS, N, NB, HEADS, BS, WIDTH, MASK_TILES, ITEMS, MERGES,
                  MAX_TILES,
                  BLOCK_NB: tl.constexpr, BLOCK_BS: tl.constexpr, TOKEN_STEPS: tl.constexpr,
                  OFFSETS: tl.constexpr, TOKENS: tl.constexpr):  # fmt: skip
    """Program (0, h, 0) plans the work on head h's rows, (0, h, 1) on its columns: first,
    as they take longest. Program (b > 0, h, 0) writes row b - 1's list of head h, (b > 0,
    h, 1) column b - 1's, into `out` (_tables); masks (MASK_TILES, BS, BS) uint8. The
    planner's sizes go to `host_sizes` too (_plan_group).
    """
    b, h, column = tl.program_id(0) - 1, tl.program_id(1), tl.program_id(2)
    if b < 0:
        _plan_group(h, column, out, host_sizes, NB, HEADS, WIDTH, ITEMS, MERGES, MAX_TILES,
                    BLOCK_NB)  # fmt: skip
    else:
        _, counts, index, tile, _, _ = _tables(out, HEADS, NB, WIDTH, ITEMS)
        side = column * HEADS * NB * WIDTH  # the columns' lists follow the rows'
        _write_list(b, h, column, kinds, rank, counts, index + side, tile + side, WIDTH, masks,
                    MASK_TILES, offset_prefix, OFF_LO, OFF_HI, tokens, FIRST_TOKEN, NUM_TOKENS,
                    N, NB, HEADS, BS, BLOCK_NB, BLOCK_BS, TOKEN_STEPS, OFFSETS, TOKENS)  # fmt: skip


@_unspecialized_jit
def _plan_kernel(out, host_sizes, NB, HEADS, ITEMS, MERGES, MAX_TILES,
                 BLOCK_NB: tl.constexpr):  # fmt: skip
    """The planner alone, for a layout built by layout.py: program (0, h, 0) plans head
    h's rows, (0, h, 1) its columns, from the counts in `out` (_tables, no lists)."""
    _plan_group(tl.program_id(1), tl.program_id(2), out, host_sizes, NB, HEADS, 0, ITEMS,
                MERGES, MAX_TILES, BLOCK_NB)  # fmt: skip


# ---- host side ------------------------------------------------------------------------


_PLACEHOLDERS: dict[torch.device, torch.Tensor] = {}


def _placeholder(device: torch.device) -> torch.Tensor:
    """One int32 on `device`, made once: the pointer passed for a part a pattern lacks."""
    if device not in _PLACEHOLDERS:
        _PLACEHOLDERS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _PLACEHOLDERS[device]


_NO_RECIPE = BlockRecipe(0, 0, torch.empty(0, 0, 0, dtype=torch.int32))  # no blocks part
_NO_TILES: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _no_tiles(device: torch.device, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a layout without partial tiles, made once per device and block size: its
    tile_masks, (0, bs, bs) bool, and one zero tile, (1, bs, bs) uint8, a valid pointer for
    the kernels, which never read it."""
    key = (device, block_size)
    if key not in _NO_TILES:
        shape = (block_size, block_size)
        _NO_TILES[key] = (torch.zeros(0, *shape, dtype=torch.bool, device=device),
                          torch.zeros(1, *shape, dtype=torch.uint8, device=device))  # fmt: skip
    return _NO_TILES[key]


def _block_bits(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A block table, (H', nb, nb) or (nb, nb) bool, as bits on `device`: np.packbits along
    each row, block c in bit 7 - c % 8 of byte c // 8."""
    table = table.cpu().numpy()
    if table.shape[-1] % 8 == 0:  # rows of whole bytes: packing the flat array is faster
        bits = np.packbits(table.reshape(-1)).reshape(*table.shape[:-1], -1)
    else:
        bits = np.packbits(table, axis=-1)
    return torch.from_numpy(bits).to(device)


def _pieces_of_at_most(max_tiles: int, nb: int) -> int:
    """`max_tiles`, checked, and no more than nb: no list is longer, so cutting at nb cuts
    nothing, and the planner's numbers stay small."""
    return min(_check_positive_int("max_tiles", max_tiles), nb)


# ---- sizes: bounded before the kernels run, read back after ------------------------------


class _Room(NamedTuple):
    """What the lists kernel may write: entries per list, element masks of partial tiles,
    work items and merges per group of lists (one head's rows, or its columns)."""

    width: int
    partial_tiles: int
    items: int
    merges: int


def _blocks_touched(length: int, bs: int) -> int:
    """The most blocks of size bs that `length` consecutive positions can touch."""
    return (length + 2 * bs - 2) // bs


def _tiles_across(edge: int, bs: int) -> int:
    """The tiles of one row whose offsets hold both edge - 1 and edge: tile (r, r - k) holds
    the offsets k * bs - (bs - 1) ... k * bs + (bs - 1), so one or two of them (none when
    bs = 1)."""
    return (edge + bs - 2) // bs + (bs - 1 - edge) // bs + 1


def _partly_global_blocks(tokens: list, n: int, bs: int) -> int:
    """At most how many blocks hold global tokens and other positions: of a run, the blocks
    of its first and last token; of other lists, one a token, within the blocks spanned."""
    first, last = tokens[0], tokens[-1]
    if last - first + 1 != len(tokens):
        return min(len(tokens), last // bs - first // bs + 1)
    starts_inside = first % bs != 0  # the first token's block holds positions before it
    ends_inside = last + 1 < n and (last + 1) % bs != 0  # the last one's, positions after it
    if first // bs == last // bs:
        return int(starts_inside or ends_inside)
    return starts_inside + ends_inside


def _room_from_parts(parts: Parts, n: int, bs: int, heads: int, max_tiles: int) -> _Room:
    """Bounds of what the lists kernel writes, from the parts alone, so that it can run
    before the host has read the counts. They are tight for Longformer and BigBird, whose
    global rows list every block. Partial tiles of offsets that are no one range (a
    dilated window) get no room: such a pattern is built twice when it has any."""
    nb = -(-n // bs)
    width = partial = 0  # partial: per head
    if parts.offset_range is not None:
        lo, hi = parts.offset_range
        width = _blocks_touched(bs + hi - lo, bs)  # a query block's keys within [lo, hi]
        # Only tiles whose offsets cross an edge of the band are partial for it.
        if lo > 1 - n:
            partial += nb * _tiles_across(lo, bs)
        if hi < n - 1:
            partial += nb * _tiles_across(hi + 1, bs)
    elif parts.offsets is not None:
        width = nb
    if parts.tokens:
        width = nb  # a global token's row lists every block
        partial += 2 * nb * _partly_global_blocks(parts.tokens, n, bs)  # their rows, columns
    if parts.blocks is not None:
        recipe = parts.blocks.recipe
        if recipe is None or recipe.global_blocks or recipe.random.shape[-1]:
            width = nb  # a column may be any row's random block
        else:
            width += 2 * recipe.band + 1
    width = max(1, min(width, nb))
    pieces = -(-width // max_tiles)  # the most a list is cut in
    return _Room(width, heads * min(partial, nb * nb), nb * pieces, nb if pieces > 1 else 0)


def _room_needed(sizes: list) -> _Room:
    """The room the lists kernel needed, from the planner's sizes (rows', columns')."""
    rows, cols = sizes
    return _Room(
        max(rows[LONGEST], cols[LONGEST], 1),
        rows[ENTRIES] - rows[FULL_ENTRIES],
        max(rows[PIECES], cols[PIECES]),
        max(rows[CUT_LISTS], cols[CUT_LISTS]),
    )


class _Starts(NamedTuple):
    """Where each table of a build starts in `out`, its one int32 buffer, and where `out`
    ends: the host's copy of _tables. The sizes start at 0."""

    counts: int
    index: int
    tile: int
    items: int
    merges: int
    end: int


def _table_starts(heads: int, nb: int, room: _Room) -> _Starts:
    counts = HEADER
    index = counts + 4 * heads * nb
    tile = index + 2 * heads * nb * room.width
    items = tile + 2 * heads * nb * room.width
    merges = items + 2 * heads * room.items * 5
    return _Starts(counts, index, tile, items, merges, merges + 2 * heads * room.merges * 3)


# The tensors a build returns are views of `out`, each made by one as_strided call from
# numbers the host has: indexing (out[0, :, :k]) costs the host two or three calls, and
# on the H200 machine the views of the first version of this build took longer than the
# kernels' launches. The work lists are no views at all: the attention kernels read them
# at offsets (triton_kernels.WorkList).


_HOST_SIZES: dict[tuple, tuple[torch.Tensor, np.ndarray]] = {}


def _host_sizes(device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """Where the planner leaves its sizes for the host: (2, SIZES) int32 in host memory,
    pinned on a GPU (the GPU writes it directly), and a NumPy view of it; one per device
    and thread, made once. Set to -1 here: the planner overwrites every size."""
    key = (device, threading.get_ident())
    if key not in _HOST_SIZES:
        buffer = torch.empty(2, SIZES, dtype=torch.int32, pin_memory=device.type == "cuda")
        _HOST_SIZES[key] = (buffer, buffer.numpy())
    buffer, view = _HOST_SIZES[key]
    view.fill(-1)
    return buffer, view


def _read_sizes(device: torch.device, view: np.ndarray) -> list:
    """The planner's sizes, [rows', columns']: a build's one wait, for the kernels."""
    if device.type == "cuda":
        torch.cuda.current_stream().synchronize()  # the stream _launch launched on
    sizes = view.tolist()
    if sizes[0][PIECES] < 1:  # every list has a piece: -1 means no planner wrote them
        raise RuntimeError(f"the index build's planner reported no sizes: {sizes}")
    return sizes


def _work_lists(out: torch.Tensor, at: _Starts, room: _Room, heads: int, sizes: list) -> tuple:
    """triton_kernels.WorkList of the rows and of the columns: where the planner's tables
    lie in `out`, with the sizes it read back."""
    item_stride, merge_stride = room.items * 5, room.merges * 3
    rows, cols = sizes
    return (
        _setup.WorkList(out, heads, at.items, item_stride, rows[PIECES], at.merges,
                        merge_stride, rows[CUT_LISTS], max(rows[CUT_PIECES], 1)),
        _setup.WorkList(out, heads, at.items + heads * item_stride, item_stride, cols[PIECES],
                        at.merges + heads * merge_stride, merge_stride, cols[CUT_LISTS],
                        max(cols[CUT_PIECES], 1)),
    )  # fmt: skip


def plan_work(host_counts: torch.Tensor, max_tiles: int, device) -> tuple:
    """The work lists of the kernels walking rows and of those walking columns, from a
    layout's counts (4, H', nb) on the host (any layout, ``layout.py``'s too):
    ``_plan_lists`` run as a kernel of its own on `device`."""
    _, heads, nb = host_counts.shape
    device = torch.device(device)
    max_tiles = _pieces_of_at_most(max_tiles, nb)
    pieces = -(-max(int(host_counts.max()), 1) // max_tiles)  # the most a list is cut in
    room = _Room(0, 0, nb * pieces, nb if pieces > 1 else 0)  # no lists, only work
    at = _table_starts(heads, nb, room)
    out = torch.empty(at.end, dtype=torch.int32, device=device)
    header_then_counts = torch.cat([host_counts.new_zeros(HEADER), host_counts.flatten()])
    out[: at.index].copy_(header_then_counts)
    host_sizes, view = _host_sizes(device)
    _launch(
        _plan_kernel, (1, heads, 2), out, host_sizes, nb, heads, room.items, room.merges,
        max_tiles, BLOCK_NB=max(16, _setup._next_power_of_2(nb)),
    )  # fmt: skip
    return _work_lists(out, at, room, heads, _read_sizes(device, view))


def build_from_parts(
    pattern: Pattern, block_size: int, device: torch.device | str, max_tiles: int
) -> tuple | None:
    """``layout.build_layout(pattern, block_size, device)`` made by the kernels above, with
    the work lists of the kernels walking rows and columns (``plan_work``) and the tile
    masks as bytes: (layout, rows, cols, masks), masks holding at least one tile. Not
    cached: ``triton_kernels.kernel_layout`` caches. None when layout.py must build it: the
    pattern is no union of parts at this block size, `device` is not where the kernels
    run, or a flat tile index would not fit in int32.
    """
    block_size = _check_positive_int("block_size", block_size)
    device = device if isinstance(device, torch.device) else torch.device(device)
    parts = pattern.parts()
    blocks = parts.blocks if parts is not None else None
    if parts is None or (blocks is not None and blocks.block_size != block_size):
        return None
    if device.type != ("cpu" if _setup.INTERPRETED else "cuda"):
        return None
    n, bs = pattern.seq_len, block_size
    nb = _setup._cdiv(n, bs)
    max_tiles = _pieces_of_at_most(max_tiles, nb)
    heads = blocks.layout.shape[0] if blocks is not None and blocks.layout.dim() == 3 else 1
    if heads * nb * nb >= 2**31:  # the kernels index tiles with int32
        return None

    # What the kernels read of the parts; a part that is missing: a placeholder, never read.
    offset_prefix = tokens = block_data = _placeholder(device)
    offsets, (lo, hi) = NO_OFFSETS, (0, 0)
    if parts.offset_range is not None:  # lo <= d <= hi: two numbers are enough
        offsets, (lo, hi) = RANGE, parts.offset_range
    elif parts.offsets is not None:
        allowed = parts.offsets(torch.arange(-(n - 1), n, device=device))  # (2n - 1,)
        offsets, offset_prefix = PREFIX, allowed.cumsum(0, dtype=torch.int32)
    token_mode, first_token, steps = NO_TOKENS, 0, 0
    if parts.tokens and parts.tokens[-1] - parts.tokens[0] + 1 == len(parts.tokens):
        token_mode, first_token = RUN, parts.tokens[0]  # consecutive: their first is enough
    elif parts.tokens:
        tokens = torch.tensor(parts.tokens, dtype=torch.int32, device=device)  # sorted
        token_mode, steps = LIST, len(parts.tokens).bit_length()
    block_mode, recipe = NO_BLOCKS, _NO_RECIPE
    if blocks is not None and blocks.recipe is not None:  # (H', nb, random blocks) int32
        block_mode, recipe = RECIPE, blocks.recipe
        if recipe.random.numel():
            block_data = recipe.random.to(device, non_blocking=True)  # host memory: staged
    elif blocks is not None:  # (H', nb, ceil(nb / 8)) bytes
        block_mode, block_data = BITS, _block_bits(blocks.layout, device)
    part_args = (offset_prefix, lo, hi, tokens, first_token, len(parts.tokens))
    flags = {"TOKEN_STEPS": steps, "TOKENS": token_mode, "OFFSETS": offsets}
    block_nb = max(16, _setup._next_power_of_2(nb))
    block_bs = _setup._next_power_of_2(bs)

    def run(room: _Room, at: _Starts) -> tuple:
        """Both kernels, back to back, writing within `room` (its tables in `out` as `at`
        says); while they run, the views of what they write, at the room's sizes; then the
        one wait for the device: the planner's sizes. Returns the tensors, the views and
        those sizes."""
        kinds = torch.empty(heads, nb, nb, dtype=torch.int8, device=device)
        rank = torch.empty(heads, nb, nb, dtype=torch.int32, device=device)  # scratch
        out = torch.empty(at.end, dtype=torch.int32, device=device)
        if room.partial_tiles:
            masks = torch.empty(room.partial_tiles, bs, bs, dtype=torch.uint8, device=device)
        else:
            masks = _no_tiles(device, bs)[1]
        _launch(
            _classify_kernel, (nb, heads, 2), kinds, rank, out, *part_args, block_data,
            recipe.band, recipe.global_blocks, n, nb, heads, bs, BLOCK_BS=block_bs,
            BLOCK_NB=block_nb, BLOCKS=block_mode, RANDOM=recipe.random.shape[-1], **flags,
        )  # fmt: skip
        host_sizes, view = _host_sizes(device)
        _launch(
            _lists_kernel, (nb + 1, heads, 2), kinds, rank, out, host_sizes, masks, *part_args,
            n, nb, heads, bs, room.width, room.partial_tiles, room.items, room.merges,
            max_tiles, BLOCK_NB=block_nb, BLOCK_BS=block_bs, **flags,
        )  # fmt: skip
        # The host would otherwise wait idle. The lists take the room's width: Longformer's
        # and BigBird's global rows and columns fill it, other patterns' are cut after.
        width, side = room.width, heads * nb * room.width  # the columns' lists follow the rows'
        starts = (at.index, at.tile, at.index + side, at.tile + side)
        lists = [out.as_strided((heads, nb, width), (nb * width, width, 1), s) for s in starts]
        counts = out.as_strided((4, heads, nb), (heads * nb, nb, 1), at.counts)
        return kinds, out, masks, counts, lists, _read_sizes(device, view)

    room = _room_from_parts(parts, n, bs, heads, max_tiles)
    at = _table_starts(heads, nb, room)
    if at.end >= 2**31:  # the kernels index `out` with int32
        return None
    kinds, out, masks, counts, lists, sizes = run(room, at)
    needed = _room_needed(sizes)
    if any(map(operator.gt, needed, room)):
        # The bounds fell short (only partial tiles can, which live outside `out`): again,
        # with the room it needs.
        room, at = needed, _table_starts(heads, nb, needed)
        kinds, out, masks, counts, lists, sizes = run(room, at)

    row_index, row_tile, col_index, col_tile = lists  # (H', nb, width) each
    rows, cols = sizes
    max_row, max_col = max(rows[LONGEST], 1), max(cols[LONGEST], 1)
    if max_row < room.width:  # no row list fills the room
        row_index, row_tile = row_index[..., :max_row], row_tile[..., :max_row]
    if max_col < room.width:
        col_index, col_tile = col_index[..., :max_col], col_tile[..., :max_col]
    if needed.partial_tiles:
        masks = masks[: needed.partial_tiles]
        tile_masks = masks.view(torch.bool)
    else:
        tile_masks, masks = _no_tiles(device, bs)
    layout = BlockSparseLayout(n, bs, nb, kinds, counts, row_index, row_tile, col_index,
                               col_tile, tile_masks, rows[ENTRIES])  # fmt: skip
    return (layout, *_work_lists(out, at, room, heads, sizes), masks)
