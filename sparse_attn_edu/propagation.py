"""Multi-layer information propagation: why a sparse mask can still see the whole sequence.

One attention layer lets query i read key j only where the mask allows (i, j). Stack L
layers and information hops: j -> k in one layer, k -> i in the next. Every layer also
keeps its own state (the residual path x + attention(x)), so what position i knew after
layer l it still knows after layer l + 1. With A the mask and I the identity,

    reach after L layers  =  (I + A)^L   (boolean matrix power)

and [i, j] is True when information at position j can reach position i. For a per-head
pattern one layer lets i read j when ANY head allows (i, j): the heads are concatenated
and mixed by the output projection, so a path through any head carries information.

What this teaches, with the papers it checks:

* A sliding window of width w grows the receptive field by w/2 per layer on each side, so
  connecting n positions takes ceil((n - 1) / (w / 2)) layers (Longformer, Beltagy et al.
  2020, arXiv:2004.05150, section 3.1: "receptive field of l x w").
* One global token connects everything in 2 layers (in to the hub, out of the hub).
* BigBird's random blocks make the block graph a small world: the layers needed grow
  like log n (Zaheer et al. 2020, arXiv:2007.14062, section 2).

How it stays fast without an n x n x n product. The state is R, one row per receiver i and
one *bit* per source j (64 sources per int64 word), and a layer is R <- R | pull(R) with
pull(R)[i] = OR over the keys k that i reads of R[k]. The pull is worked out from the
pattern's description, not from its mask:

* offset patterns (window, dilated, causal, dense) read the rows i - d for d in an
  arithmetic progression: a sliding OR over rows, built by doubling (log w passes);
* global tokens: a global row ORs every row, and every row ORs the global rows;
* block patterns (BigBird): OR the rows of each key block, then a sparse block product;
* a union pulls through both parts; anything else (intersections, plain bool masks) uses
  its block kinds: full tiles at block level, partial tiles refined element by element.

A window alone even has a closed form: its offsets after L layers are L times as wide.
"""

from __future__ import annotations

import contextlib
import math
import threading

import torch

from . import masked
from .patterns import EMPTY, FULL, BlockPattern, GlobalTokens, OffsetPattern, Pattern, Union
from .patterns import as_pattern as _as_pattern

BITS = 64  # sources packed per int64 word
_GENERIC_BLOCK = 64  # tile size for patterns pulled through their block kinds


# ---- bit packing: one bit per source -------------------------------------------------

# Sources are independent columns: R[:, j] after L layers depends only on where j started.
# So the state is propagated one chunk of sources at a time; a chunk of n rows x 16 words
# stays in cache through every pass of a layer.
CHUNK_WORDS = 16
_SHIFTS = torch.arange(8, dtype=torch.uint8)
_BIT_WEIGHTS = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8)
_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F


def _pack(rows: torch.Tensor) -> torch.Tensor:
    """bool (r, m) -> int64 (r, ceil(m / 64)), bit j of the row set when rows[:, j]."""
    r, m = rows.shape
    words = math.ceil(m / BITS)
    padded = torch.nn.functional.pad(rows, (0, words * BITS - m)).view(r, words * 8, 8)
    packed = (padded.to(torch.uint8) * _BIT_WEIGHTS).sum(-1, dtype=torch.uint8)  # (r, 8w)
    return packed.view(torch.int64)  # (r, words)


def _unpack(packed: torch.Tensor, m: int) -> torch.Tensor:
    """int64 (r, words) -> bool (r, m), the inverse of _pack."""
    as_bytes = packed.contiguous().view(torch.uint8).unsqueeze(-1)  # (r, 8 * words, 1)
    bits = (as_bytes >> _SHIFTS) & 1  # (r, 8 * words, 8), 0 or 1
    return bits.view(torch.bool).flatten(1)[:, :m]


def _sources(n: int, first: int, last: int) -> torch.Tensor:
    """Packed start for sources first..last-1: row j holds only its own bit j - first."""
    words = math.ceil((last - first) / BITS)
    state = torch.zeros(n, words * 8, dtype=torch.uint8)
    j = torch.arange(first, last)
    state[j, (j - first) // 8] = _BIT_WEIGHTS[(j - first) % 8]
    return state.view(torch.int64)


def _chunks(n: int):
    """(first, last) source ranges of CHUNK_WORDS * 64 sources each."""
    size = CHUNK_WORDS * BITS
    return [(first, min(n, first + size)) for first in range(0, n, size)]


def _or_rows(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Bitwise OR reduction along `dim` by halving (torch has no OR reduction)."""
    x = x.movedim(dim, 0)
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = torch.cat([x, torch.zeros_like(x[:1])])
        x = x[0::2] | x[1::2]
    return x[0]


def _popcount(packed: torch.Tensor) -> int:
    """Number of set bits, by the classic SWAR steps (pairs, nibbles, then bytes)."""
    x = packed - ((packed >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4  # every byte now holds its own count, 0..8
    return int(((x * 0x0101010101010101) >> 56).sum())  # top byte: the sum of the bytes


# ---- one layer: the pull, from the pattern's description --------------------------------


def _offset_progression(p: OffsetPattern, transpose: bool) -> tuple[int, int, int] | None:
    """(lo, hi, step) when the allowed offsets d = i - j are exactly lo, lo+step, ..., hi."""
    n = p.seq_len
    offsets = torch.arange(-(n - 1), n)
    allowed = offsets[p.allowed_offset(offsets)]
    if transpose:
        allowed = -allowed.flip(0)
    if len(allowed) == 0:
        return None
    if len(allowed) == 1:
        return int(allowed[0]), int(allowed[0]), 1
    steps = allowed.diff()
    if not (steps == steps[0]).all():
        return None
    return int(allowed[0]), int(allowed[-1]), int(steps[0])


def _strided_window_or(state: torch.Tensor, first: int, count: int, step: int) -> torch.Tensor:
    """out[i] = OR over t < count of state[i + first + t * step] (zero rows outside)."""
    n = state.shape[0]
    last = first + (count - 1) * step
    before, after = max(0, -first), max(0, last)
    padded = torch.cat(
        [state.new_zeros(before, state.shape[1]), state, state.new_zeros(after, state.shape[1])]
    )
    # Doubling: span[x] = OR of `width` rows x, x + step, ...; width doubles each pass.
    span, width = padded, 1
    while 2 * width <= count:
        span = span[: len(span) - width * step] | span[width * step :]
        width *= 2
    rest = (count - width) * step  # a second, overlapping span covers the remainder
    window = span[: len(span) - rest] | span[rest:] if rest else span
    start = first + before
    return window[start : start + n]


class _Pull:
    """pull(R)[i] = OR over the keys k that i reads (any head) of R[k]; A^T if transposed."""

    def __init__(self, pattern: Pattern, transpose: bool = False):
        self.n = pattern.seq_len
        self.parts = []  # callables: packed state -> packed contribution
        self._add(pattern, transpose)

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        out = state.clone()  # the residual path: every position keeps what it knew
        for part in self.parts:
            out |= part(state)
        return out

    def _add(self, p: Pattern, transpose: bool) -> None:
        # A union pulls through either part; "any head" distributes over unions too.
        if isinstance(p, Union) and p.symbol == "|":
            self._add(p.a, transpose)
            self._add(p.b, transpose)
            return
        if isinstance(p, OffsetPattern):
            progression = _offset_progression(p, transpose)
            if progression is not None:
                lo, hi, step = progression
                # Rows i - d for d = hi, hi - step, ..., lo: first row i - hi.
                count = (hi - lo) // step + 1
                self.parts.append(lambda s: _strided_window_or(s, -hi, count, step))
                return
        if isinstance(p, GlobalTokens):  # symmetric, so the same transposed
            tokens = torch.tensor(p.tokens, dtype=torch.long)
            if len(tokens):  # no global token: no edge
                self.parts.append(lambda s: self._global(s, tokens))
            return
        if isinstance(p, BlockPattern):
            layout = p.layout if p.layout.dim() == 2 else p.layout.any(0)  # (nbb, nbb)
            self._add_blocks(layout.T if transpose else layout, p.block_size)
            return
        self._add_generic(p, transpose)

    @staticmethod
    def _global(state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        out = _or_rows(state[tokens]).expand_as(state).clone()  # every row reads the hubs
        out[tokens] = _or_rows(state)  # a hub reads every row
        return out

    def _add_blocks(self, layout: torch.Tensor, block_size: int) -> None:
        """Rows of query block I read every key of the blocks K with layout[I, K]."""
        n, nb = self.n, layout.shape[0]
        sparse = layout.float().to_sparse()

        def pull(state: torch.Tensor) -> torch.Tensor:
            padded = torch.nn.functional.pad(state, (0, 0, 0, nb * block_size - n))
            per_block = _or_rows(padded.view(nb, block_size, -1), dim=1)  # (nb, words)
            sources = _unpack(per_block, state.shape[1] * BITS).float()  # (nb, sources)
            hits = torch.sparse.mm(sparse, sources) > 0  # block I reached by source j
            return _pack(hits).repeat_interleave(block_size, 0)[:n]

        if layout.any():
            self.parts.append(pull)

    def _add_generic(self, p: Pattern, transpose: bool) -> None:
        """Any pattern, through its block kinds: full tiles per block, partial per element."""
        n, bs = self.n, min(_GENERIC_BLOCK, self.n)
        kinds = p.block_kinds(bs)
        kinds = kinds if kinds.dim() == 3 else kinds.unsqueeze(0)  # (H, nb, nb)
        full = (kinds == FULL).any(0)  # full in one head: every i in I reads every k in K
        partial = (kinds != EMPTY).any(0) & ~full
        if transpose:
            full, partial = full.T, partial.T
        self._add_blocks(full, bs)
        tiles = partial.nonzero()  # (T, 2) rows (I, K)
        if len(tiles) == 0:
            return
        offsets = torch.arange(bs)
        q = (tiles[:, :1] * bs + offsets).view(-1, bs, 1)  # (T, bs, 1) query of the tile
        k = (tiles[:, 1:] * bs + offsets).view(-1, 1, bs)  # (T, 1, bs)
        inside = (q < n) & (k < n)
        q, k = q.clamp(max=n - 1), k.clamp(max=n - 1)
        heads = range(p.num_heads or 1)
        if transpose:  # A^T[q, k] = A[k, q]
            reads = [p.allows(k, q, h) for h in heads]
        else:
            reads = [p.allows(q, k, h) for h in heads]
        reads = torch.stack(torch.broadcast_tensors(*reads)).any(0) & inside  # (T, bs, bs)

        def pull(state: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(state)
            for row in tiles[:, 0].unique():
                mine = tiles[:, 0] == row
                keys = k[mine, 0, :].flatten()  # (t * bs,) key rows of this query block
                weights = reads[mine].transpose(0, 1).flatten(1).float()  # (bs, t * bs)
                sources = _unpack(state[keys], state.shape[1] * BITS).float()  # (t * bs, .)
                hits = weights @ sources > 0  # (bs, sources)
                rows = q[mine][0, :, 0]
                valid = inside[mine][0, :, 0]
                out[rows[valid]] |= _pack(hits[valid])
            return out

        self.parts.append(pull)


# ---- the public API -------------------------------------------------------------------


def _check_layers(layers: object) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"expected layers to be an int >= 0, got {layers!r}")
    return layers


def _window_closed_form(p: Pattern) -> tuple[int, int, int] | None:
    """(lo, hi, step) of a pure offset pattern whose offsets, with 0, form a progression."""
    if not isinstance(p, OffsetPattern):
        return None
    progression = _offset_progression(p, transpose=False)
    if progression is None:
        return None
    lo, hi, step = progression
    if not lo <= 0 <= hi or (lo % step) != 0:
        return None  # the residual's offset 0 would break the progression
    return lo, hi, step


_threads_lock = threading.Lock()
_threads_users = 0  # calls inside _one_thread right now, across threads
_threads_saved = 1


@contextlib.contextmanager
def _one_thread():
    """Run the chunked bit operations on one thread, then restore the caller's setting.

    Each op touches ~2 MB: handing it to a thread pool costs more in synchronisation than it
    saves (and far more on a busy machine). torch's thread count is global, so nested or
    concurrent callers (the widget's worker thread) share one save and one restore.
    """
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _states(pull: _Pull, start: torch.Tensor, layers: int):
    """Yield the packed state after 0, 1, ..., `layers` layers."""
    state = start
    yield state
    for _ in range(layers):
        state = pull(state)
        yield state


def _offset_band(n: int, lo: int, hi: int, step: int) -> torch.Tensor:
    """bool (n, n) with [i, j] True when i - j is one of lo, lo + step, ..., hi."""
    d = torch.arange(-(n - 1), n)  # every offset i - j, as a Toeplitz generator
    allowed = ((d >= lo) & (d <= hi) & (d % step == 0)).flip(0)  # allowed[n - 1 - d]
    # [i, j] reads allowed[(n - 1 - i) + j]: a strided view (a Hankel matrix) flipped upside down.
    return allowed.as_strided((n, n), (1, 1)).flip(0)


def reachability(pattern: Pattern | torch.Tensor, layers: int) -> torch.Tensor:
    """bool (n, n): [i, j] True when information at j can reach i after `layers` layers.

    Each layer is attention plus the residual path, so position i keeps its own state
    (layers = 0 gives the identity) and the result only grows with `layers`. For a per-head
    pattern a layer lets i read j when ANY head allows (i, j).
    """
    p = _as_pattern(pattern)
    layers = _check_layers(layers)
    n = p.seq_len
    closed = _window_closed_form(p)
    if closed is not None:
        # Offsets lo..hi (step s) per layer, with lo <= 0 <= hi: after L layers the offsets
        # are L*lo..L*hi (step s), reached by a monotone path that never leaves [0, n).
        lo, hi, step = closed
        return _offset_band(n, layers * lo, layers * hi, step)
    pull = _Pull(p)
    out = torch.empty(n, n, dtype=torch.bool)
    with _one_thread():
        for first, last in _chunks(n):
            *_, state = _states(pull, _sources(n, first, last), layers)
            out[:, first:last] = _unpack(state, last - first)
    return out


def layers_to_connect(pattern: Pattern | torch.Tensor) -> int | float:
    """Smallest L with reachability(pattern, L) all True; math.inf if no L ever does.

    Propagates packed chunks of sources (never an n x n tensor): the answer is the largest
    number of layers any source needs to reach every position. A chunk whose state stops
    changing before it is complete never will be: then the answer is math.inf.
    """
    p = _as_pattern(pattern)
    n = p.seq_len
    closed = _window_closed_form(p)
    if closed is not None:
        lo, hi, step = closed
        if n == 1:
            return 0
        if step != 1 or lo == 0 or hi == 0:
            return math.inf  # a dilated or one-sided window never reaches everything
        return max(math.ceil((n - 1) / hi), math.ceil((n - 1) / -lo))
    pull = _Pull(p)
    needed = 0
    with _one_thread():
        for first, last in _chunks(n):
            complete = _pack(torch.ones(1, last - first, dtype=torch.bool))  # (1, words)
            previous = None
            for layer, state in enumerate(_states(pull, _sources(n, first, last), n)):
                if (state == complete).all():
                    needed = max(needed, layer)
                    break
                if previous is not None and torch.equal(state, previous):
                    return math.inf  # a fixed point short of everything: never complete
                previous = state
    return needed


def fraction_reachable(pattern: Pattern | torch.Tensor, max_layers: int) -> torch.Tensor:
    """float64 (max_layers + 1,): fraction of the n^2 pairs (i, j) joined after 0..L layers."""
    p = _as_pattern(pattern)
    max_layers = _check_layers(max_layers)
    n = p.seq_len
    closed = _window_closed_form(p)
    if closed is not None:  # count the pairs at each allowed offset d: n - |d| of them
        lo, hi, step = closed
        d = torch.arange(-(n - 1), n)
        pairs = (n - d.abs()) * (d % step == 0)
        layer = torch.arange(max_layers + 1).view(-1, 1)
        inside = (d >= layer * lo) & (d <= layer * hi)  # (L + 1, 2n - 1)
        return (pairs * inside).sum(1).double() / n**2
    pull = _Pull(p)
    counts = torch.zeros(max_layers + 1, dtype=torch.float64)
    with _one_thread():
        for first, last in _chunks(n):
            for layer, state in enumerate(_states(pull, _sources(n, first, last), max_layers)):
                counts[layer] += _popcount(state)
    return counts / n**2


def receptive_field(pattern: Pattern | torch.Tensor, position: int, layers: int) -> torch.Tensor:
    """bool (layers + 1, n): row l holds the positions j whose information reaches
    `position` after l layers, i.e. row `position` of reachability(pattern, l).

    Computed for one receiver only: propagate one source bit through the transposed
    pattern (A^T), so the cost is O(layers * n), not O(n^2).
    """
    p = _as_pattern(pattern)
    layers = _check_layers(layers)
    n = p.seq_len
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < n:
        raise ValueError(f"expected position to be an int in [0, {n}), got {position!r}")
    pull = _Pull(p, transpose=True)
    start = _sources(n, position, position + 1)  # one source: `position`, as bit 0
    rows = [state[:, 0] & 1 for state in _states(pull, start, layers)]
    return torch.stack(rows).bool()


def influence(
    pattern: Pattern | torch.Tensor,
    layers: int,
    head_dim: int = 4,
    seed: int = 0,
    attention=masked.attention,
) -> torch.Tensor:
    """float64 (n, n): measured sum over features of |d y_i / d x_j| through `layers` layers.

    The stack is x <- x + attention(x W_q, x W_k, x W_v; pattern) W_o with random weights
    (seeded), one head per pattern head (a shared pattern uses one head), computed by one of
    our stages (`attention(q, k, v, pattern)`: masked.attention by default). Where the
    pattern forbids a pair, its weight is exactly 0 and so is every gradient through it:
    the measured influence is exactly zero wherever reachability(pattern, layers) is False.
    """
    p = _as_pattern(pattern)
    layers = _check_layers(layers)
    n, heads = p.seq_len, p.num_heads or 1
    dim = heads * head_dim
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    weights = [
        torch.randn(4, dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
        for _ in range(layers)
    ]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for w in weights:
            q, k, v = ((x @ w[i]).view(1, n, heads, head_dim).transpose(1, 2) for i in range(3))
            out = attention(q, k, v, p)  # (1, H, n, head_dim)
            x = x + out.transpose(1, 2).reshape(n, dim) @ w[3]  # residual path
        return x

    jacobian = torch.autograd.functional.jacobian(forward, x, vectorize=True)  # (n, D, n, D)
    return jacobian.abs().sum((1, 3))
