"""Sparse attention patterns: the one source of truth for every stage.

A :class:`Pattern` is a *description* of which (query, key) pairs may interact, in the
spirit of FlexAttention's ``mask_mod``: it answers the element question for any index
tensors (``p.allows(q_idx, kv_idx, head)``) and it knows its block structure from its
parameters, so ``block_kinds`` at n = 131072 never builds an n x n tensor.

Factories (the papers they come from):

* ``dense``, ``causal``                  -- Vaswani et al. 2017, "Attention Is All You Need"
* ``sliding_window``, ``dilated_window``,
  ``longformer``                         -- Beltagy et al. 2020, "Longformer" (arXiv:2004.05150)
* ``bigbird``                            -- Zaheer et al. 2020, "Big Bird" (arXiv:2007.14062)

How block kinds are found without an n x n tensor:

* Window-like patterns depend only on the offset d = i - j (a Toeplitz mask). A tile
  covering queries [qs, qe] and keys [ks, ke] contains exactly the offsets
  [qs - ke, qe - ks], every one of them; a prefix sum over the 2n - 1 offsets then tells
  whether none, some or all of a tile's offsets are allowed.
* Global tokens are whole rows and columns: a tile is full when its query block or key
  block holds only global tokens, empty when neither holds one.
* BigBird is a mask over blocks of its own size; a tile of any other size covers a
  rectangle of those blocks, summed with a 2-D prefix sum.
* ``p1 | p2`` and ``p1 & p2`` combine kinds tile by tile; where the combination cannot
  tell (two partial tiles), the tile is refined exactly with ``allows``. Those tiles are
  few (the band's edges), so the cost stays O(n * w).

Kinds: 0 = empty (skip), 1 = partial (needs the element mask), 2 = full (no mask needed).

Parts. Most patterns are also a union of three simple parts (``Pattern.parts``): a set of
allowed offsets i - j, a set of global tokens, and a layout of blocks. Window, causal and
dilated patterns are the first, Longformer adds the second, BigBird is the third, and a
union of such patterns is again one (unless both hold a block layout). Stage 4 builds its
index lists on the GPU straight from these parts (``triton_layout.py``); a pattern without
them takes the path above.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

EMPTY, PARTIAL, FULL = 0, 1, 2

# Tiles refined with `allows` per chunk: bounds memory at chunk * block_size^2 booleans.
_REFINE_CHUNK_ELEMENTS = 1 << 24


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected {name} to be a positive int, got {value!r}")
    return value


def _check_even_window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0 or window % 2:
        raise ValueError(
            f"expected window to be an even int > 0 (w/2 keys each side), got {window!r}"
        )
    return window


def _block_bounds(seq_len: int, block_size: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last token index of every block; the last block may be short."""
    starts = torch.arange(0, seq_len, block_size, device=device)
    ends = torch.clamp(starts + block_size - 1, max=seq_len - 1)
    return starts, ends


def _kinds(count: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Tile kinds from allowed pairs per tile (`count`) out of `size`: 0, 1 or 2 as int8."""
    return (count > 0).to(torch.int8) + (count == size).to(torch.int8)


@dataclass(frozen=True)
class Parts:
    """A pattern as a union of three simple parts, for patterns that are one:

        allowed(h, i, j) = offsets(i - j)  or  i in tokens  or  j in tokens
                           or  blocks.layout[h, i // b, j // b]      (b = blocks.block_size)

    Each part may be missing (None, or no tokens). Knowing the parts, a tile's kind follows
    from a few prefix sums, with no element test (``triton_layout.py``). When the allowed
    offsets are one range lo <= d <= hi (windows, causal, dense and their intersections),
    `offset_range` says so, and even the prefix sum over the offsets is not needed.
    """

    offsets: Callable | None = None  # int tensor of offsets d = i - j -> bool tensor
    tokens: tuple[int, ...] = ()  # global tokens: their rows and their columns
    blocks: BlockPattern | None = None
    offset_range: tuple[int, int] | None = None  # (lo, hi): offsets(d) is lo <= d <= hi


@dataclass(frozen=True)
class BlockRecipe:
    """How a block table such as BigBird's is made, kept beside it: block (r, c) is on when

        |r - c| <= band  or  r < global_blocks  or  c < global_blocks  or  c in random[h, r]

    (-1 in `random`: no block). A few numbers a row where the table takes nbb, and the form
    in which BigBird and its reference code keep the random blocks: ``triton_layout.py``
    sends these to the GPU rather than the table.
    """

    band: int
    global_blocks: int
    random: torch.Tensor  # int32 (H', nbb, random blocks a row); H' = 1 when heads share it


class Pattern(ABC):
    """Which (query i, key j) pairs attend: a description, materialized only on demand."""

    def __init__(self, seq_len: int, num_heads: int | None = None):
        self.seq_len = _check_positive_int("seq_len", seq_len)
        # None: one mask shared by every head; an int: a mask per head.
        self.num_heads = num_heads
        self._kinds_cache: dict[tuple[int, str], torch.Tensor] = {}
        self._device_copies: dict[tuple[str, str], torch.Tensor] = {}

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        """The tensor attribute `name` on `device`, copied there once and cached."""
        key = (name, str(device))
        if key not in self._device_copies:
            self._device_copies[key] = getattr(self, name).to(device)
        return self._device_copies[key]

    # ---- the element question -------------------------------------------------------
    def allows(self, q_idx, kv_idx, head=0) -> torch.Tensor:
        """Bool tensor, broadcast over the shapes of q_idx, kv_idx (and head)."""
        q_idx, kv_idx = torch.as_tensor(q_idx), torch.as_tensor(kv_idx)
        return self._allows(q_idx, kv_idx, torch.as_tensor(head))

    @abstractmethod
    def _allows(self, q_idx: torch.Tensor, kv_idx: torch.Tensor, head: torch.Tensor):
        """The element predicate on tensors (what allows() and to_mask_mod() wrap)."""

    def to_mask_mod(self) -> Callable:
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` wrapping the same predicate."""

        def mask_mod(b, h, q_idx, kv_idx):
            return self._allows(q_idx, kv_idx, h)

        return mask_mod

    def parts(self) -> Parts | None:
        """This pattern as offsets | global tokens | blocks (``Parts``); None when it is not
        such a union (a bool tensor, an intersection with tokens or blocks in it, or a union
        of two block layouts)."""
        return None

    # ---- materialized views (teaching sizes) ----------------------------------------
    @property
    def mask(self) -> torch.Tensor:
        """Bool (n, n), or (H, n, n) for a per-head pattern. Costs n^2: small n only."""
        n = self.seq_len
        q = torch.arange(n).view(n, 1)
        k = torch.arange(n).view(1, n)
        if self.num_heads is None:
            return self._allows(q, k, torch.tensor(0)).expand(n, n).clone()
        heads = torch.arange(self.num_heads).view(-1, 1, 1)
        return self._allows(q, k, heads).expand(self.num_heads, n, n).clone()

    @property
    def density(self) -> float:
        """Allowed pairs / n^2 (averaged over heads for a per-head pattern)."""
        return self.allowed_pairs() / (self.seq_len**2 * (self.num_heads or 1))

    @property
    def natural_block_size(self) -> int:
        """Tile size at which this pattern's tiles are mostly empty or full (for counting)."""
        return 128

    def allowed_pairs(self, block_size: int | None = None) -> int:
        """Number of allowed (query, key) pairs, summed over heads, from the block kinds."""
        block_size = block_size or self.natural_block_size
        kinds = self._kinds_with_heads(block_size)
        starts, ends = _block_bounds(self.seq_len, block_size)
        sizes = ends - starts + 1
        area = sizes.view(-1, 1) * sizes.view(1, -1)  # (nb, nb) tokens per tile
        total = int((area * (kinds == FULL)).sum())
        partial = (kinds == PARTIAL).nonzero()
        for tile_mask, _ in self._tile_masks(partial, block_size):
            total += int(tile_mask.sum())
        return total

    # ---- block structure ------------------------------------------------------------
    def block_kinds(
        self, block_size: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """int8 (nb, nb) or (H, nb, nb): 0 empty, 1 partial, 2 full; nb = ceil(n / bs).

        Computed from the description (never an n x n tensor) on `device` (default CPU), and
        cached per block size and device.
        """
        block_size = _check_positive_int("block_size", block_size)
        device = torch.device(device if device is not None else "cpu")
        key = (block_size, str(device))
        if key not in self._kinds_cache:
            self._kinds_cache[key] = self._block_kinds(block_size, device).to(torch.int8)
        return self._kinds_cache[key]

    def block_layout(
        self, block_size: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Bool (nb, nb) or (H, nb, nb): True where a tile holds at least one allowed pair."""
        return self.block_kinds(block_size, device) != EMPTY

    def num_blocks(self, block_size: int) -> int:
        return math.ceil(self.seq_len / block_size)

    @abstractmethod
    def _block_kinds(self, block_size: int, device: torch.device) -> torch.Tensor:
        """Tile kinds from the pattern's parameters (never an n x n tensor)."""

    def _kinds_with_heads(self, block_size: int) -> torch.Tensor:
        kinds = self.block_kinds(block_size)
        return kinds if kinds.dim() == 3 else kinds.unsqueeze(0)

    def tile_masks(self, tiles: torch.Tensor, block_size: int) -> torch.Tensor:
        """Bool (T, bs, bs) element masks of the tiles listed as rows (head, qb, kb).

        Positions past seq_len (in a short last block) come out False. The blocked and
        Triton stages apply these only on partial tiles.
        """
        parts = [mask for mask, _ in self._tile_masks(tiles, block_size)] if len(tiles) else []
        if not parts:
            return torch.zeros(0, block_size, block_size, dtype=torch.bool, device=tiles.device)
        return torch.cat(parts)

    def _tile_masks(self, tiles: torch.Tensor, block_size: int):
        """Yield (bool (T, bs, bs) element masks, tiles) for chunks of rows of `tiles`."""
        n = self.seq_len
        offsets = torch.arange(block_size, device=tiles.device)
        chunk = max(1, _REFINE_CHUNK_ELEMENTS // block_size**2)
        for part in tiles.split(chunk):
            head = part[:, 0].view(-1, 1, 1)
            q = (part[:, 1] * block_size).view(-1, 1, 1) + offsets.view(1, -1, 1)
            k = (part[:, 2] * block_size).view(-1, 1, 1) + offsets.view(1, 1, -1)
            inside = (q < n) & (k < n)
            allowed = self._allows(q.clamp(max=n - 1), k.clamp(max=n - 1), head)
            yield allowed & inside, part

    def _refine(self, kinds: torch.Tensor, unsure: torch.Tensor, block_size: int):
        """Replace kinds (a fresh tensor, changed in place) where `unsure` by the exact kind."""
        squeeze = kinds.dim() == 2
        kinds3, unsure3 = (kinds.unsqueeze(0), unsure.unsqueeze(0)) if squeeze else (kinds, unsure)
        tiles = unsure3.nonzero()
        if len(tiles) == 0:
            return kinds
        n = self.seq_len
        offsets = torch.arange(block_size, device=kinds.device)
        for tile_mask, part in self._tile_masks(tiles, block_size):
            q_valid = (part[:, 1:2] * block_size + offsets.view(1, -1)) < n  # (T, bs)
            k_valid = (part[:, 2:3] * block_size + offsets.view(1, -1)) < n
            valid = q_valid.unsqueeze(2) & k_valid.unsqueeze(1)
            exact = _kinds(tile_mask.flatten(1).sum(1), valid.flatten(1).sum(1))
            kinds3[part[:, 0], part[:, 1], part[:, 2]] = exact.to(kinds3.dtype)
        return kinds3.squeeze(0) if squeeze else kinds3

    # ---- composition ----------------------------------------------------------------
    def __or__(self, other: Pattern) -> Pattern:
        return Union(self, other)

    def __and__(self, other: Pattern) -> Pattern:
        return Intersection(self, other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seq_len={self.seq_len})"


class OffsetPattern(Pattern):
    """A mask that depends only on the offset d = i - j (dense, causal, windows)."""

    def __init__(
        self,
        seq_len: int,
        allowed_offset: Callable,
        code: str,
        offset_range: tuple[int, int] | None = None,
    ):
        super().__init__(seq_len)
        self.allowed_offset = allowed_offset  # bool tensor of offsets -> bool tensor
        self.code = code  # the factory call that builds it, for repr and export
        self.offset_range = offset_range  # (lo, hi) when allowed_offset is lo <= d <= hi

    def _allows(self, q_idx, kv_idx, head):
        return self.allowed_offset(q_idx - kv_idx)

    def parts(self) -> Parts:
        return Parts(offsets=self.allowed_offset, offset_range=self.offset_range)

    def allowed_pairs(self, block_size: int | None = None) -> int:
        # Offset d occurs n - |d| times: an O(n) count instead of the tile scan.
        n = self.seq_len
        offsets = torch.arange(-(n - 1), n)
        return int(((n - offsets.abs()) * self.allowed_offset(offsets)).sum())

    def _block_kinds(self, block_size, device):
        n = self.seq_len
        offsets = torch.arange(-n, n, device=device)  # a zero, then all 2n - 1 offsets
        allowed = self.allowed_offset(offsets)
        allowed[0] = False
        prefix = allowed.cumsum(0)  # prefix[m + n] = allowed offsets <= m
        starts, ends = _block_bounds(n, block_size, device)
        lo = starts.view(-1, 1) - ends.view(1, -1)  # smallest offset in tile (qb, kb)
        hi = ends.view(-1, 1) - starts.view(1, -1)  # largest offset
        count = prefix[hi + n] - prefix[lo + (n - 1)]  # allowed offsets in [lo, hi]
        return _kinds(count, hi - lo + 1)

    def __repr__(self):
        return self.code


class GlobalTokens(Pattern):
    """Longformer's global attention: listed tokens attend all keys and are attended by all."""

    # Up to this many runs of consecutive tokens, membership is tested with comparisons;
    # beyond, with a lookup table. Compiled into FlexAttention's kernel, a table lookup made
    # Longformer's forward 8x slower on an H200 (5.2 ms against 0.62 ms at n = 16384).
    MAX_RUNS_COMPARED = 8

    def __init__(self, seq_len: int, tokens: Iterable[int]):
        super().__init__(seq_len)
        tokens = list(tokens)
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < seq_len:
                raise ValueError(f"expected global token indices in [0, {seq_len}), got {t!r}")
        self.tokens = tuple(sorted(set(tokens)))
        self.is_global = torch.zeros(seq_len, dtype=torch.bool)
        self.is_global[list(self.tokens)] = True
        # Runs [start, stop) of consecutive global tokens: range(128) is the single run (0, 128).
        listed = set(self.tokens)
        starts = [t for t in self.tokens if t - 1 not in listed]
        stops = [t + 1 for t in self.tokens if t + 1 not in listed]
        self.runs = tuple(zip(starts, stops, strict=True))

    def _member(self, idx: torch.Tensor) -> torch.Tensor:
        if len(self.runs) > self.MAX_RUNS_COMPARED:
            return self._on("is_global", idx.device)[idx]
        inside = torch.zeros_like(idx, dtype=torch.bool)
        for start, stop in self.runs:
            inside = inside | ((idx >= start) & (idx < stop))
        return inside

    def _allows(self, q_idx, kv_idx, head):
        return self._member(q_idx) | self._member(kv_idx)

    def parts(self) -> Parts:
        return Parts(tokens=self.tokens)

    def _block_kinds(self, block_size, device):
        n = self.seq_len
        nb = self.num_blocks(block_size)
        pad = nb * block_size - n
        padded = torch.nn.functional.pad(self._on("is_global", device).long(), (0, pad))
        count = padded.view(nb, block_size).sum(1)  # global tokens per block
        starts, ends = _block_bounds(n, block_size, device)
        # A tile's kind is the larger of its query block's and its key block's: a block of
        # only global tokens makes a full row (or column), one with some a partial one.
        kind = _kinds(count, ends - starts + 1)  # (nb,)
        return torch.maximum(kind.view(-1, 1), kind.view(1, -1))

    def __repr__(self):
        return f"GlobalTokens({self.seq_len}, {list(self.tokens)})"


class BlockPattern(Pattern):
    """A mask over blocks of its own size (BigBird): pair (i, j) allowed iff its block is."""

    def __init__(self, seq_len: int, block_size: int, layout: torch.Tensor, code: str = "",
                 recipe: BlockRecipe | None = None):  # fmt: skip
        num_heads = layout.shape[0] if layout.dim() == 3 else None
        super().__init__(seq_len, num_heads)
        self.block_size = block_size
        self.layout = layout.bool().contiguous()  # (nbb, nbb) or (H, nbb, nbb), row-major
        self.code = code or f"BlockPattern({seq_len}, {block_size}, layout)"
        # How `layout` was made, when it was (bigbird): it must give exactly `layout`, since
        # the Triton build reads it instead of the table.
        self.recipe = recipe

    @property
    def natural_block_size(self) -> int:
        return self.block_size

    def _allows(self, q_idx, kv_idx, head):
        qb, kb = q_idx // self.block_size, kv_idx // self.block_size
        layout = self._on("layout", q_idx.device)
        if layout.dim() == 2:
            return layout[qb, kb]
        return layout[head, qb, kb]

    def parts(self) -> Parts:
        return Parts(blocks=self)

    def _block_kinds(self, block_size, device):
        layout = self._on("layout", device)
        layout = layout if layout.dim() == 3 else layout.unsqueeze(0)
        if block_size == self.block_size:
            kinds = layout.to(torch.int8) * FULL
        else:
            # Tile (qb, kb) covers own-blocks [q0, q1] x [k0, k1]: count active ones.
            starts, ends = _block_bounds(self.seq_len, block_size, device)
            first, last = starts // self.block_size, ends // self.block_size
            prefix = torch.nn.functional.pad(layout.int().cumsum(1).cumsum(2), (1, 0, 1, 0))
            q0, q1 = first.view(-1, 1), last.view(-1, 1) + 1
            k0, k1 = first.view(1, -1), last.view(1, -1) + 1
            count = prefix[:, q1, k1] - prefix[:, q0, k1] - prefix[:, q1, k0] + prefix[:, q0, k0]
            kinds = _kinds(count, (q1 - q0) * (k1 - k0))
        return kinds if self.layout.dim() == 3 else kinds[0]

    def __repr__(self):
        return self.code


class MaskPattern(Pattern):
    """A plain bool tensor (n, n) or (H, n, n), accepted wherever a Pattern is."""

    def __init__(self, mask: torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"expected a bool mask, got dtype {mask.dtype}")
        if mask.dim() == 4 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.dim() == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.dim() not in (2, 3) or mask.shape[-1] != mask.shape[-2]:
            raise ValueError(
                f"expected a mask of shape (n, n) or (H, n, n), got {tuple(mask.shape)}"
            )
        super().__init__(mask.shape[-1], mask.shape[0] if mask.dim() == 3 else None)
        self.tensor = mask.cpu()

    def _allows(self, q_idx, kv_idx, head):
        tensor = self._on("tensor", q_idx.device)
        if tensor.dim() == 2:
            return tensor[q_idx, kv_idx]
        return tensor[head, q_idx, kv_idx]

    def _block_kinds(self, block_size, device):
        n, nb = self.seq_len, self.num_blocks(block_size)
        pad = nb * block_size - n
        mask = self._on("tensor", device)
        mask = mask if mask.dim() == 3 else mask.unsqueeze(0)
        h = mask.shape[0]
        padded = torch.nn.functional.pad(mask.long(), (0, pad, 0, pad))
        tiles = padded.view(h, nb, block_size, nb, block_size).sum((2, 4))
        starts, ends = _block_bounds(n, block_size, device)
        sizes = ends - starts + 1
        kinds = _kinds(tiles, sizes.view(-1, 1) * sizes.view(1, -1))
        return kinds if self.tensor.dim() == 3 else kinds[0]

    def __repr__(self):
        return f"MaskPattern(shape={tuple(self.tensor.shape)})"


def _combined_heads(a: Pattern, b: Pattern) -> int | None:
    if a.seq_len != b.seq_len:
        raise ValueError(f"expected patterns of the same seq_len, got {a.seq_len} and {b.seq_len}")
    if a.num_heads is not None and b.num_heads is not None and a.num_heads != b.num_heads:
        raise ValueError(
            "expected per-head patterns with the same num_heads, "
            f"got {a.num_heads} and {b.num_heads}"
        )
    return a.num_heads if a.num_heads is not None else b.num_heads


def _joined_range(a: tuple | None, b: tuple | None) -> tuple | None:
    """The union of two offset ranges (lo, hi) when it is one range, else None. A range
    with lo > hi is empty."""
    if a is None or b is None:
        return None
    if a[0] > a[1] or b[0] > b[1]:  # one of them is empty: the other one
        return b if a[0] > a[1] else a
    if max(a[0], b[0]) > min(a[1], b[1]) + 1:  # a gap between them
        return None
    return min(a[0], b[0]), max(a[1], b[1])


class Union(Pattern):
    """p1 | p2: a pair is allowed when either pattern allows it."""

    symbol = "|"

    def __init__(self, a: Pattern, b: Pattern):
        super().__init__(a.seq_len, _combined_heads(a, b))
        self.a, self.b = a, b

    @property
    def natural_block_size(self) -> int:
        return min(self.a.natural_block_size, self.b.natural_block_size)

    def _allows(self, q_idx, kv_idx, head):
        return self.a._allows(q_idx, kv_idx, head) | self.b._allows(q_idx, kv_idx, head)

    def parts(self) -> Parts | None:
        # A union of unions is one: offsets join offsets, tokens join tokens. Two block
        # layouts are not merged (they may use different block sizes).
        pa, pb = self.a.parts(), self.b.parts()
        if pa is None or pb is None or (pa.blocks is not None and pb.blocks is not None):
            return None
        fa, fb = pa.offsets, pb.offsets
        offsets = (lambda d: fa(d) | fb(d)) if fa and fb else fa or fb
        ra, rb = pa.offset_range, pb.offset_range
        offset_range = _joined_range(ra, rb) if fa and fb else (ra if fa else rb)
        tokens = pa.tokens or pb.tokens  # each sorted and distinct: one alone stays as it is
        if pa.tokens and pb.tokens:
            tokens = tuple(sorted(set(pa.tokens) | set(pb.tokens)))
        return Parts(offsets, tokens, pa.blocks or pb.blocks, offset_range)

    def _block_kinds(self, block_size, device):
        ka = self.a.block_kinds(block_size, device)
        kb = self.b.block_kinds(block_size, device)
        ka, kb = torch.broadcast_tensors(ka, kb)
        kinds = torch.maximum(ka, kb)  # full beats partial beats empty
        # Two partial halves can cover a tile completely: check those exactly.
        return self._refine(kinds, (ka == PARTIAL) & (kb == PARTIAL), block_size)

    def __repr__(self):
        return f"({self.a!r} {self.symbol} {self.b!r})"


class Intersection(Union):
    """p1 & p2: a pair is allowed when both patterns allow it."""

    symbol = "&"

    def _allows(self, q_idx, kv_idx, head):
        return self.a._allows(q_idx, kv_idx, head) & self.b._allows(q_idx, kv_idx, head)

    def parts(self) -> Parts | None:
        # Offsets & offsets are offsets (window & causal); with tokens or blocks in either,
        # the intersection is no longer a union of parts.
        pa, pb = self.a.parts(), self.b.parts()
        only_offsets = [p is not None and p.offsets and not p.tokens and p.blocks is None
                        for p in (pa, pb)]  # fmt: skip
        if not all(only_offsets):
            return None
        fa, fb = pa.offsets, pb.offsets
        ra, rb = pa.offset_range, pb.offset_range
        offset_range = (max(ra[0], rb[0]), min(ra[1], rb[1])) if ra and rb else None  # maybe empty
        return Parts(offsets=lambda d: fa(d) & fb(d), offset_range=offset_range)

    def _block_kinds(self, block_size, device):
        ka = self.a.block_kinds(block_size, device)
        kb = self.b.block_kinds(block_size, device)
        ka, kb = torch.broadcast_tensors(ka, kb)
        kinds = torch.minimum(ka, kb)  # empty beats partial beats full
        # Partial & partial may share no pair, or partial & full may be anything in between.
        unsure = (kinds == PARTIAL) & ~((ka == FULL) | (kb == FULL))
        return self._refine(kinds, unsure, block_size)


# ---- factories ----------------------------------------------------------------------


def dense(seq_len: int) -> Pattern:
    """Every query attends every key."""
    return OffsetPattern(
        seq_len,
        lambda d: torch.ones_like(d, dtype=torch.bool),
        f"dense({seq_len})",
        (-(seq_len - 1), seq_len - 1),
    )


def causal(seq_len: int) -> Pattern:
    """Query i attends keys j <= i (autoregressive)."""
    return OffsetPattern(seq_len, lambda d: d >= 0, f"causal({seq_len})", (0, seq_len - 1))


def sliding_window(seq_len: int, window: int) -> Pattern:
    """|i - j| <= window // 2: total width `window` + the token itself, as in Longformer."""
    half = _check_even_window(window) // 2
    return OffsetPattern(
        seq_len,
        lambda d: d.abs() <= half,
        f"sliding_window({seq_len}, window={window})",
        (-half, half),
    )


def dilated_window(seq_len: int, window: int, dilation: int) -> Pattern:
    """window // 2 keys each side, `dilation` apart: |d| <= (w//2)*dilation, d % dilation == 0."""
    half = _check_even_window(window) // 2
    dilation = _check_positive_int("dilation", dilation)
    return OffsetPattern(
        seq_len,
        lambda d: (d.abs() <= half * dilation) & (d % dilation == 0),
        f"dilated_window({seq_len}, window={window}, dilation={dilation})",
        (-half, half) if dilation == 1 else None,
    )


def global_tokens(seq_len: int, tokens: Sequence[int]) -> Pattern:
    """Only the global rows and columns of `tokens` (symmetric global attention)."""
    return GlobalTokens(seq_len, tokens)


def longformer(seq_len: int, window: int, global_tokens: Sequence[int] = (0,)) -> Pattern:
    """Sliding window of total width `window` plus symmetric global tokens (Beltagy et al.)."""
    window_part = sliding_window(seq_len, window)
    if len(global_tokens) == 0:
        return window_part
    return window_part | GlobalTokens(seq_len, global_tokens)


def bigbird(
    seq_len: int,
    block_size: int = 64,
    window_blocks: int = 3,
    global_blocks: int = 2,
    random_blocks: int = 3,
    seed: int = 0,
    num_heads: int | None = None,
) -> Pattern:
    """BigBird's block pattern: window + global + random blocks (Zaheer et al. 2020).

    Tokens are grouped in blocks of `block_size` (the last may be short). A query block sees
    `window_blocks` (odd) blocks centred on itself, the first `global_blocks` blocks are
    global rows and columns, and every other query block gets `random_blocks` key blocks
    drawn without replacement from those it does not already see.
    """
    block_size = _check_positive_int("block_size", block_size)
    window_blocks = _check_positive_int("window_blocks", window_blocks)
    if window_blocks % 2 == 0:
        raise ValueError(
            f"expected window_blocks to be odd (itself + equal sides), got {window_blocks}"
        )
    if num_heads is not None:
        num_heads = _check_positive_int("num_heads", num_heads)
    nbb = math.ceil(seq_len / block_size)
    for name, value in (("global_blocks", global_blocks), ("random_blocks", random_blocks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected {name} to be an int >= 0, got {value!r}")
    if global_blocks > nbb:
        raise ValueError(
            f"expected global_blocks <= {nbb} (the number of blocks of size {block_size} "
            f"in seq_len {seq_len}), got {global_blocks}"
        )

    rows = torch.arange(nbb).view(-1, 1)
    cols = torch.arange(nbb).view(1, -1)
    fixed = (rows - cols).abs() <= window_blocks // 2  # (nbb, nbb) window band
    fixed |= (rows < global_blocks) | (cols < global_blocks)  # global rows and columns
    candidates_per_row = (~fixed).sum(1)
    needs_random = torch.arange(nbb) >= global_blocks
    if random_blocks and needs_random.any():
        fewest = int(candidates_per_row[needs_random].min())
        if random_blocks > fewest:
            raise ValueError(
                f"expected random_blocks <= {fewest} (blocks a query row has left after "
                f"window and global blocks), got {random_blocks}"
            )

    # Random blocks: give every candidate (block not yet seen) a uniform random key and keep
    # the `random_blocks` smallest per row -- a draw without replacement, one head at a time.
    # Kept as indices too (-1 in the global rows, which need none): see BlockRecipe.
    generator = torch.Generator().manual_seed(seed)
    drawn = random_blocks if needs_random.any() else 0
    random = torch.full((num_heads or 1, nbb, drawn), -1, dtype=torch.int32)
    layouts = []
    for head in range(num_heads or 1):
        layout = fixed.clone()
        if drawn:
            keys = torch.rand(nbb, nbb, generator=generator).masked_fill(fixed, 2.0)
            picked = keys.topk(random_blocks, dim=1, largest=False).indices  # (nbb, r)
            chosen = torch.zeros_like(fixed).scatter_(1, picked, True)
            layout |= chosen & needs_random.view(-1, 1)
            random[head, global_blocks:] = picked[global_blocks:].int()
        layouts.append(layout)
    layout = torch.stack(layouts) if num_heads is not None else layouts[0]
    recipe = BlockRecipe(window_blocks // 2, global_blocks, random)
    code = (
        f"bigbird({seq_len}, block_size={block_size}, window_blocks={window_blocks}, "
        f"global_blocks={global_blocks}, random_blocks={random_blocks}, seed={seed}, "
        f"num_heads={num_heads})"
    )
    return BlockPattern(seq_len, block_size, layout, code, recipe)


def as_pattern(pattern_or_mask: Pattern | torch.Tensor) -> Pattern:
    """A Pattern as it is; a bool tensor (n, n) / (H, n, n) wrapped as a MaskPattern."""
    if isinstance(pattern_or_mask, Pattern):
        return pattern_or_mask
    if isinstance(pattern_or_mask, torch.Tensor):
        return MaskPattern(pattern_or_mask)
    raise TypeError(
        f"expected a Pattern or a bool torch.Tensor, got {type(pattern_or_mask).__name__}"
    )
